//! A shim so the end-to-end tests get a real `lem-coord` through CARGO_BIN_EXE_*.

fn main() -> std::process::ExitCode {
    lem_coord::cli::run_main()
}
