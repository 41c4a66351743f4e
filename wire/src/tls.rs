//! The wire's security, shared by both binaries: credential files, TLS client
//! configurations, and how a joining worker trusts a coordinator it has never met.
//!
//! Every certificate comes from the coordinator's private CA (`lem_coord::pki`). The
//! coordinator's certificate is issued to the fixed name [`SERVER_NAME`], whatever
//! address it listens on, so clients check "signed by the CA I was given, issued to
//! `lem-coord`, for server use" and never depend on which host name or address they
//! dialled. A credential file is PEM: the client certificate, its private key, then
//! the CA certificate, with `# key: value` comment lines before them (a worker's
//! says which worker it is). See docs/security.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use lem_common::types::WorkerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The name in the coordinator's certificate; clients verify against it.
pub const SERVER_NAME: &str = "lem-coord";
/// A worker's credential, in its data dir.
pub const CREDENTIALS_FILE: &str = "credentials.pem";

/// The crypto provider everything here uses (ring: no C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// A client credential: certificate, key and the CA that issued both it and the
/// coordinator's certificate.
pub struct Credentials {
    pub path: PathBuf,
    pub certificate: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
    /// The worker this credential belongs to (`# worker:`); none for an admin one.
    pub worker: Option<WorkerId>,
}

impl Credentials {
    /// Reads a credential file; errors name the file and what it lacks.
    pub fn load(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read credentials {}", path.display()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("{}: not a valid PEM file: {e}", path.display()))?;
        if certs.len() != 2 {
            bail!(
                "{}: a credential holds 2 certificates (the client's, then the CA's), this file holds {} (use the admin.pem of the coordinator's data dir, or a worker's credentials.pem)",
                path.display(),
                certs.len()
            );
        }
        let key = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
            anyhow!(
                "{}: no private key in the file ({e}); a credential holds the client's certificate, its key and the CA certificate",
                path.display()
            )
        })?;
        let mut worker = None;
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(name) = line.strip_prefix("# worker:") {
                worker = Some(WorkerId(name.trim().to_string()));
            }
        }
        let mut certs = certs.into_iter();
        Ok(Credentials {
            path: path.to_path_buf(),
            certificate: certs.next().expect("two certificates"),
            ca: certs.next().expect("two certificates"),
            key,
            worker,
        })
    }
}

/// The text of a credential file.
pub fn render_credentials(
    comments: &[(&str, &str)],
    certificate_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> String {
    let mut out = String::new();
    for (k, v) in comments {
        out.push_str(&format!("# {k}: {v}\n"));
    }
    for block in [certificate_pem, key_pem, ca_pem] {
        out.push_str(block.trim_end());
        out.push('\n');
    }
    out
}

/// Writes a secret file readable by its owner only (0600), through a temporary
/// file and a rename, so no reader ever sees half of it.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Mutual TLS with a credential: trust only its CA, present its certificate.
pub fn client_config(creds: &Credentials) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(creds.ca.clone()).map_err(|e| {
        anyhow!(
            "{}: the CA certificate is not usable: {e}",
            creds.path.display()
        )
    })?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![creds.certificate.clone()], creds.key.clone_key())
        .map_err(|e| {
            anyhow!(
                "{}: the certificate and key do not go together: {e}",
                creds.path.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// TLS without a client certificate, trusting a coordinator only if its certificate
/// chains to a CA whose SHA-256 is `ca_sha256` (the one a join token names).
pub fn pinned_ca_config(ca_sha256: [u8; 32]) -> Arc<ClientConfig> {
    let verifier = Arc::new(PinnedCa {
        ca_sha256,
        provider: provider(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Finds, among the certificates the coordinator sent, the CA with the pinned
/// fingerprint, then verifies the coordinator's certificate against it exactly as
/// a configured root would be.
#[derive(Debug)]
struct PinnedCa {
    ca_sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.ca_sha256)
        else {
            let sent: Vec<String> = intermediates
                .iter()
                .map(|c| lem_common::token::hex(&sha256(c.as_ref())))
                .collect();
            return Err(rustls::Error::General(format!(
                "the coordinator's CA is not the one the join token names (token: {}, coordinator sent: [{}]); the token is for another coordinator, or something is in the way",
                lem_common::token::hex(&self.ca_sha256),
                sent.join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("cannot use the pinned CA: {e}")))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_file_round_trips_with_its_worker_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let text = render_credentials(
            &[("worker", "gpu-7"), ("coordinator", "head:7700")],
            &cert.pem(),
            &key.serialize_pem(),
            &ca.pem(),
        );
        let path = dir.path().join(CREDENTIALS_FILE);
        write_private(&path, text.as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let creds = Credentials::load(&path).unwrap();
        assert_eq!(creds.worker, Some(WorkerId("gpu-7".into())));
        assert_eq!(creds.certificate.as_ref(), cert.der().as_ref());
        assert_eq!(creds.ca.as_ref(), ca.der().as_ref());
        client_config(&creds).unwrap();

        // Missing pieces are named.
        let only_certs = format!("{}{}", cert.pem(), ca.pem());
        std::fs::write(&path, only_certs).unwrap();
        let e = Credentials::load(&path).err().unwrap().to_string();
        assert!(e.contains("no private key"), "{e}");
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let e = Credentials::load(&path).err().unwrap().to_string();
        assert!(e.contains("this file holds 1"), "{e}");
        let e = Credentials::load(&dir.path().join("absent.pem"))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("absent.pem"), "{e:#}");
    }
}
