//! The worker's read-only HTTP endpoint (`lem-worker --http ADDR`): its Prometheus
//! metrics. Binding it under the loopback rule and the replies are the wire crate's
//! ([`lem_wire::http`]), shared with `lem-coord`.

use std::sync::Arc;

use lem_wire::http::{fresh, metrics_reply};
use tokio::net::TcpListener;

use crate::metrics::WorkerMetrics;

pub use lem_wire::http::{bind, parse_flag, write_addr_file, HttpBindError, HttpFlag, ADDR_FILE};

/// Serves the worker's `/metrics` on `listener` until the task is dropped.
pub async fn serve_worker(
    listener: TcpListener,
    metrics: Arc<WorkerMetrics>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<WorkerMetrics>>| async move {
                    metrics_reply(m.encode())
                },
            ),
        )
        .route(
            "/",
            get(|| async {
                fresh(
                    "text/plain; charset=utf-8",
                    "lem-worker: Prometheus metrics at /metrics (docs/observability.md)\n",
                )
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app).await
}
