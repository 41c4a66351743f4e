//! lem-coord: the coordinator of a lem fleet.
//!
//! It holds campaigns in a durable manifest ([`store`], redb), serves the RPC API
//! ([`service`], [`server`]) through which workers lease runs and report results,
//! put together in one place ([`assemble`]) for `start`, `run` and `bench`, and
//! carries the command line ([`cli`]) including `run`, which starts an embedded
//! coordinator and local `lem-worker` processes ([`local`]) for a whole campaign
//! on one machine. It speaks the wire of `lem_wire`; it does not link the worker.
//! Beside the RPC port it serves a read-only HTTP endpoint ([`http`]): Prometheus
//! metrics ([`metrics`]) and a status page, both from one [`overview`].
//! The lease rules themselves are pure and live in `lem_common::lease`.

pub mod analysis;
pub mod assemble;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod export;
pub mod group_commit;
pub mod http;
pub mod limits;
pub mod live;
pub mod llem_export;
pub mod local;
pub mod metrics;
pub mod overview;
pub mod parquet_export;
pub mod pki;
pub mod plots;
pub mod report;
pub mod server;
pub mod service;
pub mod slurm;
pub mod store;
pub mod validation;

/// A `--http` value: `None` for `off`.
pub(crate) fn http_flag(value: &str) -> Option<String> {
    lem_wire::http::parse_flag(value).map(String::from)
}
