//! The coordinator's server loop: accepts connections on a bound listener, decides
//! who each one is, serves the RPC service on it within limits, and sweeps expired
//! leases, until the shutdown future resolves.
//!
//! The listener is bound by the caller ([`crate::assemble`], which puts the
//! coordinator together for every command that serves); the loop itself never
//! binds or picks addresses.
//!
//! One port speaks both plain TCP and TLS: the first byte of a TLS connection is
//! 0x16 (a handshake record), which as the first byte of a plain frame's 4-byte
//! length would announce a frame of at least 352 MiB, far past the frame limit, so
//! peeking at one byte tells them apart. Plain TCP is served only where [`Wire`]
//! allows it (a loopback listener, or `--insecure`); elsewhere a plain connection
//! gets a reply saying TLS is required. Everything an unauthenticated peer can
//! make the server hold is bounded (docs/security.md): the number of such
//! connections, their lifetime, their frame size, the time to finish a handshake,
//! and, for every connection, the time a frame may take to arrive once begun.
//!
//! Beside the RPC port it serves the read-only HTTP endpoint (`/metrics`, the status
//! page; `crate::http`) on the listener [`Wire::http`] carries, until the same
//! shutdown. Every request is timed per method here ([`crate::metrics::Timed`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lem_common::rpc::Coordinator;
use tarpc::server::{BaseChannel, Channel};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{Guarded, Peer};
use crate::clock::now_ms;
use crate::limits::Limits;
use crate::metrics::Timed;
use crate::pki::ClientCert;
use crate::service::{CoordService, Shared};
use lem_wire::transport::{self, FrameDeadline, MAX_FRAME_BYTES};

/// How often the sweeper looks for expired leases.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a listener speaks.
pub struct Wire {
    /// TLS for this listener; `None` serves plain TCP only (`lem-coord run`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `None`: plain TCP is served. `Some(reason)`: plain connections are answered
    /// with this reason and nothing else.
    pub plain_refused: Option<String>,
    pub limits: Limits,
    /// The read-only HTTP endpoint's listener (`--http`); `None`: not served.
    pub http: Option<TcpListener>,
}

/// Serves until `shutdown` resolves; then stops granting leases and returns.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut wire: Wire,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sweeper = {
        let shared = shared.clone();
        tokio::spawn(async move { sweep_loop(shared).await })
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = wire.http.take().map(|l| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = http_stopped.await;
            };
            if let Err(e) = crate::http::serve(l, shared, stopped).await {
                tracing::error!(error = %e, "the HTTP endpoint stopped");
            }
        })
    });
    let wire = Arc::new(wire);
    let all = Arc::new(Semaphore::new(wire.limits.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(wire.limits.max_unauthenticated));
    let mut last_full_warning: Option<tokio::time::Instant> = None;
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
                let permits = all
                    .clone()
                    .try_acquire_owned()
                    .ok()
                    .zip(unauthenticated.clone().try_acquire_owned().ok());
                let Some((permit, pre_auth)) = permits else {
                    // Closing at once keeps the kernel's backlog from filling too.
                    if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        last_full_warning = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            %peer,
                            open = wire.limits.max_connections - all.available_permits(),
                            unauthenticated = wire.limits.max_unauthenticated - unauthenticated.available_permits(),
                            "connection limit reached; closing new connections"
                        );
                    }
                    continue;
                };
                let (shared, wire) = (shared.clone(), wire.clone());
                tokio::spawn(async move {
                    handle_connection(stream, peer, shared, wire, pre_auth).await;
                    drop(permit);
                });
            }
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    shared.work_available.notify_waiters();
    sweeper.abort();
    if let Some(mut http) = http {
        // Long polls of the status page would hold a graceful stop for their wait.
        let _ = stop_http.send(());
        if tokio::time::timeout(Duration::from_secs(1), &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
    }
    // Let the writer commit what is queued and stop, so the store closes cleanly.
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || s.commits.stop()).await;
    Ok(())
}

/// Tells plain from TLS, finds out who the peer is, and serves it.
async fn handle_connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    wire: Arc<Wire>,
    pre_auth: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let limits = &wire.limits;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "no first byte in time; closed");
            return;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let peer = match &wire.plain_refused {
            None => Peer::Plain,
            Some(reason) => Peer::Refused(reason.clone()),
        };
        serve_connection(stream, addr, peer, shared, limits, pre_auth).await;
        return;
    }
    let Some(tls) = &wire.tls else {
        tracing::warn!(%addr, "a TLS client on a plain-only listener; closed");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "TLS handshake not finished in time; closed");
            return;
        }
    };
    let peer = identify(&shared, stream.get_ref().1.peer_certificates()).await;
    serve_connection(stream, addr, peer, shared, limits, pre_auth).await;
}

/// Who a TLS peer is, from the certificate it presented.
async fn identify(
    shared: &Arc<Shared>,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Peer {
    let Some(pki) = &shared.pki else {
        return Peer::Refused("this coordinator has no CA".into());
    };
    match pki.classify(certs) {
        ClientCert::None => Peer::Anonymous,
        ClientCert::Admin => Peer::Admin,
        ClientCert::Refused(reason) => Peer::Refused(reason),
        ClientCert::Issued(digest) => {
            let s = shared.clone();
            let found = tokio::task::spawn_blocking(move || s.store.enrolled_worker(&digest)).await;
            match found {
                Ok(Ok(Some(worker))) => Peer::Worker(worker),
                Ok(Ok(None)) => Peer::Refused(
                    "this client certificate is not enrolled here any more (its worker joined again and got a new one): join again with `lem-worker join`, or use the data dir that joined last".into(),
                ),
                Ok(Err(e)) => Peer::Refused(format!("cannot look up the certificate: {e}")),
                Err(e) => Peer::Refused(format!("cannot look up the certificate: {e}")),
            }
        }
    }
}

/// Serves the RPC service to `peer` over `stream` until it closes (or, for an
/// unauthenticated peer, until its lifetime ends).
async fn serve_connection<S>(
    stream: S,
    addr: SocketAddr,
    peer: Peer,
    shared: Arc<Shared>,
    limits: &Limits,
    pre_auth: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let authenticated = peer.is_authenticated();
    // An authenticated connection no longer counts against the unauthenticated limit.
    let pre_auth = (!authenticated).then_some(pre_auth);
    let max_frame = if authenticated {
        MAX_FRAME_BYTES
    } else {
        limits.unauthenticated_frame
    };
    tracing::debug!(%addr, peer = %peer.describe(), "connection opened");
    let transport =
        transport::server_transport(FrameDeadline::new(stream, limits.frame), max_frame);
    let service = Timed {
        rpc_seconds: shared.metrics.rpc_seconds.clone(),
        inner: Guarded {
            inner: CoordService { shared }.serve(),
            peer: Arc::new(peer),
        },
    };
    let channel = BaseChannel::with_defaults(transport)
        .execute(service)
        .for_each(|fut| async move {
            tokio::spawn(fut);
        });
    if authenticated {
        channel.await;
    } else if tokio::time::timeout(limits.unauthenticated_lifetime, channel)
        .await
        .is_err()
    {
        tracing::debug!(%addr, "unauthenticated connection reached its lifetime; closed");
    }
    drop(pre_auth);
    tracing::debug!(%addr, "connection closed");
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
                shared.metrics.leases_expired.inc_by(n as u64);
                shared.note_change();
                shared.work_available.notify_waiters();
            }
            Ok(Err(e)) => tracing::error!(error = %e, "lease sweep failed"),
            Err(e) => tracing::error!(error = %e, "lease sweep task failed"),
        }
    }
}
