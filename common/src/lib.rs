//! lem-common: the pure core of lem fleet.
//!
//! Everything here is plain data and plain functions: the study model and grid
//! expansion (llem 0.7.0 compatible), the parameter registry, the lease state
//! machine, energy maths, statistics, the harness protocol and the RPC service
//! trait. No module here touches the network, the disk (beyond reading a study
//! file's text), a clock or a GPU: time is always an argument. The coordinator and
//! the worker are the IO edges that drive these functions.

pub mod aggregate;
pub mod compare;
pub mod energy;
pub mod gpus;
pub mod harness;
pub mod idle;
pub mod isolation;
pub mod lease;
pub mod policy;
pub mod pyjson;
pub mod quality;
pub mod result;
pub mod rpc;
pub mod run;
pub mod runner;
pub mod schedule;
pub mod simgpu;
pub mod stats;
pub mod study;
pub mod thermal;
pub mod token;
pub mod types;
pub mod validate;
pub mod value;
pub mod yaml;

pub use value::{Map, Value};

/// The version of the wire protocol between `lem-coord` and `lem-worker`; a worker
/// whose protocol differs is refused at registration with a message naming both, and
/// what changed between them ([`protocol_changes`]).
pub const PROTOCOL_VERSION: u32 = 5;

/// What each protocol version changed that an older peer would misread, by version.
const PROTOCOL_CHANGES: &[(u32, &str)] = &[(
    5,
    "protocol 5 sends the run result nested (energy, baselines, throughput, thermal, window, harness, isolation); a protocol-4 coordinator would read such a result as an empty flat one",
)];

/// The changes between protocols `a` and `b` (either order), oldest first.
pub fn protocol_changes(a: u32, b: u32) -> Vec<&'static str> {
    let (lo, hi) = (a.min(b), a.max(b));
    PROTOCOL_CHANGES
        .iter()
        .filter(|(v, _)| lo < *v && *v <= hi)
        .map(|(_, what)| *what)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_changes_name_what_lies_between_two_versions() {
        assert!(super::protocol_changes(4, 5)[0].contains("nested"));
        assert_eq!(super::protocol_changes(5, 4), super::protocol_changes(4, 5));
        assert!(super::protocol_changes(5, 6).is_empty());
        assert!(super::protocol_changes(5, 5).is_empty());
    }
}
