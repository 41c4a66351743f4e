//! The coordinator's read-only HTTP endpoint (`lem-coord start --http ADDR`, default
//! 127.0.0.1:7701; `lem-coord run` on an ephemeral loopback port): `/metrics` for
//! Prometheus, `/` the status page, `/api/status` its data.
//!
//! The status page is one self-contained document (its CSS and script inline, a
//! Content-Security-Policy that allows that script by its hash and no fetch but its
//! own origin's): it asks `/api/status` for the [`Overview`] and then long-polls it
//! (`?since=N`: the answer waits until something changed, up to `wait` seconds),
//! so it follows a campaign without reloading and without asking when nothing moves.
//! Every handler only reads; axum answers anything but GET with 405. Binding, and
//! the loopback rule, are `lem_wire::http`'s (docs/security.md).

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lem_wire::http::{error_reply, fresh, metrics_reply};
use sha2::Digest as _;
use tokio::net::TcpListener;

use crate::overview::{overview, Overview};
use crate::service::Shared;

/// The coordinator's `--http` flag, for messages.
pub const HTTP_FLAG: lem_wire::http::HttpFlag = lem_wire::http::HttpFlag {
    flag: "--http",
    public_flag: "--http-public",
    what: "the status page and metrics (campaign and worker names, progress, failure messages, GPU power)",
};

/// The default of `lem-coord start --http`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7701";

/// Longest a long poll of `/api/status` waits (`wait` is clamped to it).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// A long poll's wait when the request names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(20);

const PAGE_HTML: &str = include_str!("status_page/page.html");
const PAGE_CSS: &str = include_str!("status_page/page.css");
const PAGE_JS: &str = include_str!("status_page/page.js");

/// `'sha256-...'` of `text`, as a Content-Security-Policy source.
fn csp_hash(text: &str) -> String {
    format!(
        "'sha256-{}'",
        crate::report::base64(&sha2::Sha256::digest(text.as_bytes()))
    )
}

/// The status page, and its Content-Security-Policy: the one script and the one
/// stylesheet, by their hashes; fetches to this origin only; nothing else.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let html = PAGE_HTML
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
        .replace("/*STYLE*/", PAGE_CSS)
        .replace("/*SCRIPT*/", PAGE_JS);
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(PAGE_JS),
        csp_hash(PAGE_CSS)
    );
    (html, csp)
});

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn page() -> Response {
    let (html, csp) = &*PAGE;
    let mut r = fresh("text/html; charset=utf-8", html.clone());
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(csp).expect("the policy is ASCII"),
    );
    r
}

/// The overview, read on the blocking pool; an error reply if the manifest cannot
/// be read.
async fn read_overview(shared: Arc<Shared>) -> Result<Overview, Response> {
    match tokio::task::spawn_blocking(move || overview(&shared)).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the manifest: {e}\n"),
        )),
        Err(e) => Err(error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the overview task failed: {e}\n"),
        )),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let o = match read_overview(shared.clone()).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    metrics_reply(crate::metrics::encode(&shared, o))
}

/// What a request to `/api/status` asks: `since=N` (the `changes` of the answer
/// the caller has) to wait for the next change, for up to `wait=S` seconds.
#[derive(Debug, Default, PartialEq)]
pub struct StatusQuery {
    pub since: Option<u64>,
    pub wait: Option<Duration>,
}

impl StatusQuery {
    /// Reads `since` and `wait` from a query string; anything else is ignored.
    pub fn parse(query: Option<&str>) -> StatusQuery {
        let mut q = StatusQuery::default();
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("since", v)) => q.since = v.parse().ok(),
                Some(("wait", v)) => {
                    q.wait = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(|s| Duration::from_secs_f64(s).min(MAX_WAIT))
                }
                _ => {}
            }
        }
        q
    }
}

async fn api_status(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let q = StatusQuery::parse(uri.query());
    if let Some(since) = q.since {
        let mut changes = shared.watch_changes();
        let wait = q.wait.unwrap_or(DEFAULT_WAIT);
        let _ = tokio::time::timeout(wait, changes.wait_for(|n| *n != since)).await;
    }
    match read_overview(shared).await {
        Ok(o) => fresh(
            "application/json",
            serde_json::to_string(&o).expect("the overview serialises"),
        ),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_query_reads_since_and_a_bounded_wait() {
        assert_eq!(StatusQuery::parse(None), StatusQuery::default());
        assert_eq!(
            StatusQuery::parse(Some("since=12&wait=2.5&x=1")),
            StatusQuery {
                since: Some(12),
                wait: Some(Duration::from_millis(2500)),
            }
        );
        assert_eq!(
            StatusQuery::parse(Some("wait=9999&since=x")).wait,
            Some(MAX_WAIT)
        );
        assert_eq!(StatusQuery::parse(Some("wait=-1")).wait, None);
    }

    #[test]
    fn the_page_is_whole_and_its_policy_allows_exactly_its_script_and_style() {
        let (html, csp) = &*PAGE;
        assert!(!html.contains("/*STYLE*/") && !html.contains("/*SCRIPT*/"));
        assert!(html.contains(&format!("<script>{PAGE_JS}</script>")));
        assert!(html.contains(&format!("<style>{PAGE_CSS}</style>")));
        assert!(csp.contains(&format!("script-src {};", csp_hash(PAGE_JS))));
        assert!(csp.contains(&format!("style-src {};", csp_hash(PAGE_CSS))));
        assert!(csp.starts_with("default-src 'none'"));
        // Nothing from elsewhere: no URL but this origin's paths.
        for bad in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
    }
}
