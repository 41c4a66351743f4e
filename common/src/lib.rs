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
pub mod isolation;
pub mod lease;
pub mod policy;
pub mod pyjson;
pub mod quality;
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
/// whose protocol differs is refused at registration with a message naming both.
pub const PROTOCOL_VERSION: u32 = 4;
