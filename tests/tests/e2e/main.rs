//! End-to-end tests: real processes on loopback. One binary, one module per area.

mod bad_input;
mod flow;

pub const COORD: &str = env!("CARGO_BIN_EXE_lem-coord-shim");
pub const WORKER: &str = env!("CARGO_BIN_EXE_lem-worker-shim");
