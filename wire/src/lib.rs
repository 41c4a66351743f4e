//! lem-wire: what `lem-coord` and `lem-worker` both speak, and nothing else of
//! either. The coordinator depends on this crate, not on the worker, so its binary
//! carries neither NVML nor the lease loop.
//!
//! - [`frame`]: the length-delimited JSON frames tarpc's messages travel in;
//! - [`transport`]: connecting and serving them over plain TCP or mutual TLS
//!   ([`transport::Endpoint`]), with the frame size and deadline limits;
//! - [`tls`]: certificates, pinned CAs and a worker's `credentials.pem`;
//! - [`join`]: a worker's enrolment with a join token;
//! - [`http`]: binding the read-only HTTP endpoint under the loopback rule, and its
//!   replies; [`metrics`]: the Prometheus encoding helpers both `/metrics` use;
//! - [`otel`]: the log and trace subscriber both install (OpenTelemetry spans,
//!   exported over OTLP when asked);
//! - [`clock`]: wall-clock milliseconds, the one timestamp both sides write.

pub mod clock;
pub mod frame;
pub mod http;
pub mod join;
pub mod metrics;
pub mod otel;
pub mod tls;
pub mod transport;
