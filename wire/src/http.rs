//! The read-only HTTP endpoint of both binaries (`lem-coord start --http`,
//! `lem-worker --http`): binding it under the loopback rule, and the replies both
//! serve the same way. What each serves is its own (`lem_coord::http`,
//! `lem_worker::http`).
//!
//! What it serves is read-only and unauthenticated (docs/security.md): no call
//! changes anything, and it answers only GET. It listens on loopback unless the
//! operator says otherwise with the `--http-public` flag, and then a warning says
//! who can read what.

use std::net::SocketAddr;
use std::path::Path;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// The content type of `/metrics`: what prometheus-client writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The file in the data dir that holds the bound HTTP address (useful with port 0).
pub const ADDR_FILE: &str = "http.addr";

/// Why the HTTP endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HttpBindError {
    #[error("cannot listen on {addr} for {flag} (the read-only status page and /metrics): {source}; pass another {flag} ADDR, or {flag} off")]
    Unavailable {
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{flag} {addr} is not a loopback address: what it serves is read-only but unauthenticated, so anyone who can reach the port would read {what}; pass {public_flag} to serve it there anyway (docs/security.md), or listen on 127.0.0.1")]
    NotLoopback {
        flag: &'static str,
        public_flag: &'static str,
        addr: SocketAddr,
        what: &'static str,
    },
}

/// A `--http` value: `None` for `off`.
pub fn parse_flag(value: &str) -> Option<&str> {
    let v = value.trim();
    (!v.eq_ignore_ascii_case("off") && !v.is_empty()).then_some(v)
}

/// What `--http` serves and how to name it in messages.
pub struct HttpFlag {
    /// The flag (`--http`).
    pub flag: &'static str,
    /// The flag that allows a non-loopback address (`--http-public`).
    pub public_flag: &'static str,
    /// What a stranger would read there, for the error and the warning.
    pub what: &'static str,
}

/// Binds `addr` for `flag`. A non-loopback address is refused unless `public`;
/// with it, a loud warning goes to stderr.
pub async fn bind(f: &HttpFlag, addr: &str, public: bool) -> Result<TcpListener, HttpBindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpBindError::Unavailable {
            flag: f.flag,
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpBindError::Unavailable {
            flag: f.flag,
            addr: addr.to_string(),
            source,
        })?;
    if !bound.ip().is_loopback() {
        if !public {
            return Err(HttpBindError::NotLoopback {
                flag: f.flag,
                public_flag: f.public_flag,
                addr: bound,
                what: f.what,
            });
        }
        eprintln!(
            "WARNING: {}: {} is served on {bound}, which is not loopback, without authentication: anyone who can reach this port reads {}. Serve it only on a network you trust, or put an authenticating proxy in front.",
            f.public_flag, f.flag, f.what
        );
    }
    Ok(listener)
}

/// Writes `addr` to `dir/http.addr` (through a temporary file, so a reader never
/// sees half an address).
pub fn write_addr_file(dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = dir.join(format!("{ADDR_FILE}.tmp"));
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(tmp, dir.join(ADDR_FILE))
}

/// A reply that no cache keeps, with `content_type`.
pub fn fresh(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The reply to a scrape.
pub fn metrics_reply(text: String) -> Response {
    fresh(OPENMETRICS, text)
}

/// A plain-text error reply.
pub fn error_reply(status: StatusCode, message: String) -> Response {
    (status, fresh("text/plain; charset=utf-8", message)).into_response()
}
