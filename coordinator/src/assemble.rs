//! The coordinator, put together in one place: the manifest's shared state, the RPC
//! listener (plain TCP, mutual TLS or both on one port, within [`Limits`]), the
//! read-only HTTP listener, the files that name the bound addresses, and the stop.
//! `lem-coord start`, `lem-coord run` (its embedded coordinator) and `lem-coord
//! bench leases` all go through [`Setup::bind`], then [`Bound::serve`] (until a
//! shutdown future resolves) or [`Bound::spawn`] (until [`Running::stop`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use lem_common::lease::LeasePolicy;
use lem_wire::http::{HttpBindError, ADDR_FILE};

use crate::group_commit::DEFAULT_MAX_BATCH;
use crate::limits::Limits;
use crate::pki::Pki;
use crate::server::{self, Wire};
use crate::service::Shared;
use crate::store::Store;

/// The file in the coordinator's data dir that holds the bound RPC address (tests
/// and scripts read it, useful with port 0).
pub const RPC_ADDR_FILE: &str = "coordinator.addr";

/// Where plain TCP is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainTcp {
    /// Always (an embedded coordinator on loopback, a bench).
    Served,
    /// Only where the RPC listener is on loopback, unless `insecure` (`lem-coord
    /// start`); elsewhere a plain connection is told to use TLS.
    LoopbackOnly { insecure: bool },
}

/// The read-only HTTP endpoint (`--http`).
#[derive(Clone, Debug)]
pub struct HttpSetup {
    /// `host:port` (port 0 picks one).
    pub addr: String,
    /// `--http-public`: a non-loopback address is allowed (with a warning).
    pub public: bool,
}

/// Everything the coordinator needs before it binds.
pub struct Setup {
    /// The RPC address (`host:port`).
    pub listen: String,
    pub store: Store,
    pub policy: LeasePolicy,
    /// Lease transitions per manifest commit at most.
    pub max_batch: usize,
    /// The coordinator's CA and certificates; `None` for a plain-only coordinator.
    pub pki: Option<Pki>,
    /// Serve mutual TLS (needs `pki`).
    pub tls: bool,
    pub plain: PlainTcp,
    pub limits: Limits,
    pub http: Option<HttpSetup>,
    /// Where the bound addresses are written ([`RPC_ADDR_FILE`], `http.addr`).
    pub addr_dir: PathBuf,
}

impl Setup {
    /// A plain-only coordinator on `listen` with the default policy and limits.
    pub fn plain(listen: &str, store: Store, addr_dir: &Path) -> Setup {
        Setup {
            listen: listen.to_string(),
            store,
            policy: LeasePolicy::default(),
            max_batch: DEFAULT_MAX_BATCH,
            pki: None,
            tls: false,
            plain: PlainTcp::Served,
            limits: Limits::default(),
            http: None,
            addr_dir: addr_dir.to_path_buf(),
        }
    }
}

/// Why the coordinator could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Rpc {
        addr: String,
        source: std::io::Error,
    },
    /// `--http`: taken, or not loopback without `--http-public`.
    #[error(transparent)]
    Http(#[from] HttpBindError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A coordinator whose listeners are bound, not yet serving.
pub struct Bound {
    pub shared: Arc<Shared>,
    /// The RPC listener's address.
    pub addr: SocketAddr,
    /// The HTTP endpoint's address, if served.
    pub http_addr: Option<SocketAddr>,
    /// Plain TCP is served (on loopback, or with `--insecure` elsewhere).
    pub plain_served: bool,
    listener: tokio::net::TcpListener,
    wire: Wire,
}

impl Setup {
    /// Binds the RPC and HTTP listeners, starts the manifest's writer and writes
    /// the bound addresses to [`Setup::addr_dir`].
    pub async fn bind(self) -> Result<Bound, BindError> {
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .map_err(|source| BindError::Rpc {
                addr: self.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BindError::Rpc {
            addr: self.listen.clone(),
            source,
        })?;
        let plain_refused = match self.plain {
            PlainTcp::Served => None,
            PlainTcp::LoopbackOnly { .. } if addr.ip().is_loopback() => None,
            PlainTcp::LoopbackOnly { insecure: true } => {
                eprintln!(
                    "WARNING: --insecure: plain TCP is served on {addr}, which is not loopback; anyone who can reach this port can submit work that GPU hosts run and read every result. Use it only on a network you trust completely."
                );
                None
            }
            PlainTcp::LoopbackOnly { insecure: false } => Some(format!(
                "this coordinator requires TLS on {addr} (it does not listen on loopback): pass --credentials FILE (a copy of its DATA_DIR/tls/admin.pem) or, on the head node, --data-dir DATA_DIR; a worker joins first with `lem-worker join --token TOKEN`"
            )),
        };
        let tls = match (&self.pki, self.tls) {
            (Some(pki), true) => Some(pki.server_config().map_err(anyhow::Error::from)?),
            (None, true) => {
                return Err(anyhow::anyhow!("TLS was asked for without a CA").into());
            }
            (_, false) => None,
        };
        let http = match &self.http {
            Some(h) => {
                let l = lem_wire::http::bind(&crate::http::HTTP_FLAG, &h.addr, h.public).await?;
                let bound = l.local_addr().context("the HTTP listener has no address")?;
                Some((l, bound))
            }
            None => None,
        };
        let plain_served = plain_refused.is_none();
        let shared = Shared::with_max_batch(
            self.store,
            self.policy,
            self.pki.map(Arc::new),
            self.max_batch,
        )
        .map_err(anyhow::Error::from)?;
        // Last, so a file names only a coordinator that is about to serve.
        std::fs::create_dir_all(&self.addr_dir)
            .with_context(|| format!("cannot create {}", self.addr_dir.display()))?;
        write_file(&self.addr_dir.join(RPC_ADDR_FILE), &addr.to_string())?;
        if let Some((_, bound)) = &http {
            write_file(&self.addr_dir.join(ADDR_FILE), &bound.to_string())?;
        }
        let http_addr = http.as_ref().map(|(_, a)| *a);
        Ok(Bound {
            shared,
            addr,
            http_addr,
            plain_served,
            listener,
            wire: Wire {
                tls,
                plain_refused,
                limits: self.limits,
                http: http.map(|(l, _)| l),
            },
        })
    }
}

/// Writes `text` to `path` through a temporary file, so a reader never sees half.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

impl Bound {
    /// Serves until `shutdown` resolves; then stops granting leases, lets the
    /// manifest's writer commit what is queued, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        server::serve(self.listener, self.shared, self.wire, shutdown).await
    }

    /// Serves on a task of its own until [`Running::stop`].
    pub fn spawn(self) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (shared, addr, http_addr) = (self.shared.clone(), self.addr, self.http_addr);
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.await;
        }));
        Running {
            shared,
            addr,
            http_addr,
            stop,
            task,
        }
    }
}

/// A coordinator serving on a task of its own ([`Bound::spawn`]).
pub struct Running {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops it as [`Bound::serve`] does when its shutdown resolves, and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the coordinator's task failed")?
    }
}
