//! Who a connection is, and what it may call.
//!
//! The server decides a connection's [`Peer`] once, when it is accepted (plain TCP
//! or TLS, and which certificate), and serves every request through [`Guarded`],
//! which answers a request the peer may not make with an error reply instead of
//! handing it to the service. The rules are [`authorize`], a pure function of the
//! peer and the request:
//!
//! * a worker (mutual TLS with its certificate) may call the worker methods, and
//!   only as itself: a request's `worker` must be the certificate's worker;
//! * the admin credential may call the admin methods (`submit`, queries, `cancel`,
//!   `retry`, `workers`, `backup`);
//! * TLS without a certificate may only `enrol` (the token is its credential);
//! * plain TCP on a listener that allows it (loopback, or `--insecure`) may call
//!   anything, as before TLS existed; the lease machine still binds each lease to
//!   the worker id that took it;
//! * a refused connection (plain TCP where TLS is required, a certificate this
//!   coordinator does not accept) gets its reason back from every call.

use lem_common::rpc::{CoordinatorRequest, CoordinatorResponse, RpcError, RpcErrorKind};
use lem_common::types::WorkerId;
use tarpc::context::Context;
use tarpc::server::Serve;
use tarpc::ServerError;

/// What a connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Plain TCP where it is allowed.
    Plain,
    /// TLS without a client certificate.
    Anonymous,
    /// Mutual TLS as this worker.
    Worker(WorkerId),
    /// Mutual TLS with the admin credential.
    Admin,
    /// Served nothing; every call answers this reason.
    Refused(String),
}

impl Peer {
    /// Whether the peer proved who it is (or is trusted as plain on loopback):
    /// such connections are not subject to the limits on unauthenticated ones.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Peer::Plain | Peer::Worker(_) | Peer::Admin)
    }

    pub fn describe(&self) -> String {
        match self {
            Peer::Plain => "plain".into(),
            Peer::Anonymous => "tls-anonymous".into(),
            Peer::Worker(w) => format!("worker {w}"),
            Peer::Admin => "admin".into(),
            Peer::Refused(_) => "refused".into(),
        }
    }
}

enum Role {
    /// Needs a worker identity; carries the worker the request speaks for.
    Worker(WorkerId),
    Admin,
    Enrol,
}

fn role(req: &CoordinatorRequest) -> Role {
    use CoordinatorRequest as R;
    match req {
        R::Register { req } => Role::Worker(req.worker.clone()),
        R::Lease { req } => Role::Worker(req.worker.clone()),
        R::Renew { req } => Role::Worker(req.worker.clone()),
        R::Complete { req } => Role::Worker(req.worker.clone()),
        R::Fail { req } => Role::Worker(req.worker.clone()),
        R::Deregister { req } => Role::Worker(req.worker.clone()),
        R::Submit { .. }
        | R::Campaigns {}
        | R::Status { .. }
        | R::Runs { .. }
        | R::Cancel { .. }
        | R::Retry { .. }
        | R::Workers {}
        | R::Backup { .. } => Role::Admin,
        R::Enrol { .. } => Role::Enrol,
    }
}

/// The method's name (`renew`), without tarpc's `Coordinator.` prefix.
pub fn method_name(req: &CoordinatorRequest) -> &str {
    let full = tarpc::RequestName::name(req);
    full.rsplit('.').next().unwrap_or(full)
}

/// Whether `peer` may make `req`; the error says what credential it needs.
pub fn authorize(peer: &Peer, req: &CoordinatorRequest) -> Result<(), RpcError> {
    let method = method_name(req);
    let denied = |m: String| Err(RpcError::new(RpcErrorKind::PermissionDenied, m));
    let unauthenticated = |m: String| Err(RpcError::new(RpcErrorKind::Unauthenticated, m));
    match (peer, role(req)) {
        (Peer::Refused(reason), _) => unauthenticated(reason.clone()),
        (Peer::Plain, _) => Ok(()),
        (_, Role::Enrol) => Ok(()),
        (Peer::Worker(me), Role::Worker(claimed)) if *me == claimed => Ok(()),
        (Peer::Worker(me), Role::Worker(claimed)) => denied(format!(
            "this connection is worker {me}'s, and cannot {method} for worker {claimed}"
        )),
        (Peer::Admin, Role::Admin) => Ok(()),
        (Peer::Worker(me), Role::Admin) => denied(format!(
            "{method} needs the admin credential; this connection is worker {me}'s"
        )),
        (Peer::Admin, Role::Worker(_)) => denied(format!(
            "{method} is a worker's call; the admin credential cannot make it (workers join with `lem-worker join`)"
        )),
        (Peer::Anonymous, Role::Admin) => unauthenticated(format!(
            "{method} needs the admin credential: pass --credentials FILE (a copy of the coordinator's DATA_DIR/tls/admin.pem) or, on the head node, --data-dir DATA_DIR"
        )),
        (Peer::Anonymous, Role::Worker(_)) => unauthenticated(format!(
            "{method} needs a worker certificate: join first with `lem-worker join --coordinator ADDR --token TOKEN --data-dir DIR` (a token comes from `lem-coord token create`)"
        )),
    }
}

/// The reply to `req` that carries `err` (each method has its own reply variant).
pub fn refusal(req: &CoordinatorRequest, err: RpcError) -> CoordinatorResponse {
    use CoordinatorRequest as R;
    use CoordinatorResponse as P;
    match req {
        R::Register { .. } => P::Register(Err(err)),
        R::Lease { .. } => P::Lease(Err(err)),
        R::Renew { .. } => P::Renew(Err(err)),
        R::Complete { .. } => P::Complete(Err(err)),
        R::Fail { .. } => P::Fail(Err(err)),
        R::Deregister { .. } => P::Deregister(Err(err)),
        R::Submit { .. } => P::Submit(Err(err)),
        R::Campaigns {} => P::Campaigns(Err(err)),
        R::Status { .. } => P::Status(Err(err)),
        R::Runs { .. } => P::Runs(Err(err)),
        R::Cancel { .. } => P::Cancel(Err(err)),
        R::Retry { .. } => P::Retry(Err(err)),
        R::Workers {} => P::Workers(Err(err)),
        R::Enrol { .. } => P::Enrol(Err(err)),
        R::Backup { .. } => P::Backup(Err(err)),
    }
}

/// The service behind the rules of [`authorize`] for one connection's peer.
#[derive(Clone)]
pub struct Guarded<S> {
    pub inner: S,
    pub peer: std::sync::Arc<Peer>,
}

impl<S> Serve for Guarded<S>
where
    S: Serve<Req = CoordinatorRequest, Resp = CoordinatorResponse>,
{
    type Req = CoordinatorRequest;
    type Resp = CoordinatorResponse;

    async fn serve(self, ctx: Context, req: CoordinatorRequest) -> Result<Self::Resp, ServerError> {
        if let Err(e) = authorize(&self.peer, &req) {
            let (peer, method) = (self.peer.describe(), method_name(&req));
            // A known peer overstepping is news; strangers knocking are routine.
            if self.peer.is_authenticated() {
                tracing::warn!(%peer, method, error = %e, "call refused");
            } else {
                tracing::info!(%peer, method, error = %e, "call refused");
            }
            return Ok(refusal(&req, e));
        }
        self.inner.serve(ctx, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::rpc::{EnrolRequest, LeaseRequest, RenewRequest};
    use lem_common::types::{CampaignId, FencingToken, RunKey};

    fn w(s: &str) -> WorkerId {
        WorkerId(s.into())
    }

    fn lease_as(worker: &str) -> CoordinatorRequest {
        CoordinatorRequest::Lease {
            req: LeaseRequest {
                worker: w(worker),
                slot: 0,
                wait_ms: 0,
                warm: vec![],
                gpus: 1,
                max_gpus: 0,
                telemetry: vec![],
            },
        }
    }

    fn renew_as(worker: &str) -> CoordinatorRequest {
        CoordinatorRequest::Renew {
            req: RenewRequest {
                worker: w(worker),
                run: RunKey {
                    campaign: CampaignId(1),
                    seq: 0,
                },
                token: FencingToken(1),
                telemetry: vec![],
            },
        }
    }

    fn enrol() -> CoordinatorRequest {
        CoordinatorRequest::Enrol {
            req: EnrolRequest {
                token: String::new(),
                worker: w("a"),
                public_key: vec![],
                proof: vec![],
            },
        }
    }

    fn status() -> CoordinatorRequest {
        CoordinatorRequest::Status {
            campaign: CampaignId(1),
        }
    }

    fn backup() -> CoordinatorRequest {
        CoordinatorRequest::Backup {
            req: lem_common::rpc::BackupRequest {
                path: "/var/backups/m.redb".into(),
            },
        }
    }

    fn kind(r: Result<(), RpcError>) -> Option<RpcErrorKind> {
        r.err().map(|e| e.kind)
    }

    #[test]
    fn each_peer_may_make_only_its_own_calls() {
        use RpcErrorKind::{PermissionDenied as Denied, Unauthenticated as Unauth};
        let a = Peer::Worker(w("a"));
        let refused = Peer::Refused("needs TLS".into());
        let table = [
            (&Peer::Plain, lease_as("a"), None),
            (&Peer::Plain, status(), None),
            (&Peer::Plain, enrol(), None),
            (&a, lease_as("a"), None),
            (&a, renew_as("a"), None),
            (&a, renew_as("b"), Some(Denied)),
            (&a, lease_as("b"), Some(Denied)),
            (&a, status(), Some(Denied)),
            (&a, enrol(), None),
            (&Peer::Admin, status(), None),
            // A backup writes a file on the coordinator's host: the admin's alone.
            (&Peer::Admin, backup(), None),
            (&a, backup(), Some(Denied)),
            (&Peer::Anonymous, backup(), Some(Unauth)),
            (&refused, backup(), Some(Unauth)),
            (&Peer::Admin, lease_as("a"), Some(Denied)),
            (&Peer::Anonymous, enrol(), None),
            (&Peer::Anonymous, status(), Some(Unauth)),
            (&Peer::Anonymous, lease_as("a"), Some(Unauth)),
            (&refused, enrol(), Some(Unauth)),
            (&refused, status(), Some(Unauth)),
        ];
        for (peer, req, want) in table {
            assert_eq!(kind(authorize(peer, &req)), want, "{peer:?} {req:?}");
        }
        let e = authorize(&a, &renew_as("b")).unwrap_err();
        assert_eq!(
            e.message,
            "this connection is worker a's, and cannot renew for worker b"
        );
        let e = authorize(&refused, &status()).unwrap_err();
        assert_eq!(e.message, "needs TLS");
    }

    #[test]
    fn a_refusal_answers_in_the_method_s_own_variant() {
        let err = RpcError::new(RpcErrorKind::Unauthenticated, "x");
        assert!(matches!(
            refusal(&renew_as("a"), err.clone()),
            CoordinatorResponse::Renew(Err(_))
        ));
        assert!(matches!(
            refusal(&status(), err.clone()),
            CoordinatorResponse::Status(Err(_))
        ));
        assert!(matches!(
            refusal(&enrol(), err),
            CoordinatorResponse::Enrol(Err(_))
        ));
    }
}
