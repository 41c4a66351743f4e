//! `lem-worker join`: enrol with a coordinator using a join token, and keep the
//! client certificate it issues in the data dir.
//!
//! The worker makes its own key pair (the private key never leaves this host),
//! connects over TLS trusting only a coordinator whose CA has the fingerprint the
//! token names, proves it holds the key by signing the token and its name, and
//! stores the certificate it gets back, with the key and the CA certificate, in
//! `DATA_DIR/credentials.pem` (mode 0600). Every later start with that data dir
//! speaks mutual TLS as that worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use lem_common::rpc::{enrol_proof_message, EnrolRequest};
use lem_common::token::{hex, JoinToken};
use lem_common::types::WorkerId;
use rcgen::SigningKey as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::tls;
use crate::transport::{self, Endpoint, Security};

/// What `join` did.
pub struct Joined {
    pub worker: WorkerId,
    pub credentials: PathBuf,
    /// The worker this data dir was enrolled as before, if it had joined already.
    pub replaced: Option<Option<WorkerId>>,
}

/// Enrols with the coordinator at `addr` and writes `data_dir/credentials.pem`.
pub async fn join(addr: &str, token: &str, data_dir: &Path, name: &str) -> anyhow::Result<Joined> {
    let token = token.trim();
    let (parsed, _) = JoinToken::parse(token)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let worker = WorkerId(name.to_string());
    let path = data_dir.join(tls::CREDENTIALS_FILE);
    let replaced = path
        .exists()
        .then(|| tls::Credentials::load(&path).ok().and_then(|c| c.worker));

    let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
    let proof = key
        .sign(&enrol_proof_message(token, &worker))
        .context("cannot sign the enrolment proof")?;
    let endpoint = Endpoint {
        addr: addr.to_string(),
        security: Security::Tls(tls::pinned_ca_config(parsed.ca_sha256)),
        credential: None,
    };
    let client = transport::connect(&endpoint).await?;
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = client
        .enrol(
            ctx,
            EnrolRequest {
                token: token.to_string(),
                worker: worker.clone(),
                public_key: key.public_key_raw().to_vec(),
                proof,
            },
        )
        .await
        .map_err(|e| anyhow!("the coordinator at {addr} did not answer the enrolment: {e}"))?
        .map_err(|e| anyhow!("the coordinator at {addr} refused to enrol worker {worker}: {e}"))?;

    // The CA it sent must be the one the token names (the TLS handshake already
    // checked that the coordinator's certificate chains to it).
    let ca = CertificateDer::from_pem_slice(reply.ca_pem.as_bytes())
        .map_err(|e| anyhow!("the coordinator sent a CA certificate that is not PEM: {e}"))?;
    if tls::sha256(ca.as_ref()) != parsed.ca_sha256 {
        bail!(
            "the coordinator sent CA {}, the token names {}: refusing to store it",
            hex(&tls::sha256(ca.as_ref())),
            hex(&parsed.ca_sha256)
        );
    }
    let text = tls::render_credentials(
        &[
            ("lem fleet worker credential", "keep private"),
            ("worker", &worker.0),
            ("coordinator", addr),
        ],
        &reply.certificate_pem,
        &key.serialize_pem(),
        &reply.ca_pem,
    );
    tls::write_private(&path, text.as_bytes())?;
    // Read back what was written, so a damaged file is found now and not at start.
    tls::Credentials::load(&path)?;
    Ok(Joined {
        worker,
        credentials: path,
        replaced,
    })
}
