//! `lem-coord`: see [`lem_coord::cli`].

fn main() -> std::process::ExitCode {
    lem_coord::cli::run_main()
}
