//! A shim so the end-to-end tests get a real `lem-worker` through CARGO_BIN_EXE_*.

fn main() -> std::process::ExitCode {
    lem_worker::cli::main_impl()
}
