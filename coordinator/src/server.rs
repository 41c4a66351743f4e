//! The coordinator's server loop: accepts connections on a bound listener, serves
//! the RPC service on each, and sweeps expired leases, until the shutdown future
//! resolves.
//!
//! The listener is bound by the caller so tests can bind port 0 and read the port
//! back; the loop itself never binds or picks addresses.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lem_common::rpc::Coordinator;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;

use crate::service::{now_ms, CoordService, Shared};
use lem_worker::transport;

/// How often the sweeper looks for expired leases.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Serves until `shutdown` resolves; then stops granting leases and returns.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sweeper = {
        let shared = shared.clone();
        tokio::spawn(async move { sweep_loop(shared).await })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let transport = transport::server_transport(stream);
                let service = CoordService { shared: shared.clone() };
                tokio::spawn(async move {
                    tracing::debug!(%peer, "connection opened");
                    BaseChannel::with_defaults(transport)
                        .execute(service.serve())
                        .for_each(|fut| async move {
                            tokio::spawn(fut);
                        })
                        .await;
                    tracing::debug!(%peer, "connection closed");
                });
            }
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    shared.work_available.notify_waiters();
    sweeper.abort();
    Ok(())
}

async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let res =
            tokio::task::spawn_blocking(move || s.store.expire_leases(now_ms(), &s.policy)).await;
        match res {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::warn!(n, "expired leases returned to pending");
                shared.work_available.notify_waiters();
            }
            Ok(Err(e)) => tracing::error!(error = %e, "lease sweep failed"),
            Err(e) => tracing::error!(error = %e, "lease sweep task failed"),
        }
    }
}
