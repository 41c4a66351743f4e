//! lem-coord: the coordinator of a lem fleet.
//!
//! It holds campaigns in a durable manifest ([`store`], redb), serves the RPC API
//! ([`service`], [`server`]) through which workers lease runs and report results,
//! and carries the command line ([`cli`]) including `run`, which starts an
//! embedded coordinator and local workers for a whole campaign on one machine.
//! The lease rules themselves are pure and live in `lem_common::lease`.

pub mod analysis;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod export;
pub mod group_commit;
pub mod live;
pub mod llem_export;
pub mod parquet_export;
pub mod pki;
pub mod plots;
pub mod report;
pub mod server;
pub mod service;
pub mod store;
pub mod validation;
