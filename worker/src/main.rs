//! `lem-worker`: see [`lem_worker::cli`].

fn main() -> std::process::ExitCode {
    lem_worker::cli::main_impl()
}
