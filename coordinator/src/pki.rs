//! The coordinator's private CA, made in `DATA_DIR/tls/` on first start and reused
//! after (docs/security.md).
//!
//! Files, all mode 0600 in a 0700 directory:
//! * `ca.pem`, `ca.key`: the CA. Its SHA-256 is what join tokens pin.
//! * `server.pem`, `server.key`: the coordinator's certificate, issued to the fixed
//!   name `lem-coord` (see `lem_wire::tls`), so it does not depend on addresses.
//! * `token.key`: the secret join tokens are signed with.
//! * `admin.pem`: the admin credential (certificate, key, CA) for the CLI.
//!
//! The directory is made whole in `tls.tmp` and renamed into place, so a crash
//! during the first start never leaves half a CA behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lem_common::token::{hex, unhex, JoinToken, TokenError};
use lem_common::types::{format_utc_ms, WorkerId};
use lem_wire::tls::{self, write_private};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsName, RootCertStore, ServerConfig};

pub const TLS_DIR: &str = "tls";
pub const ADMIN_CREDENTIALS: &str = "admin.pem";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const TOKEN_KEY: &str = "token.key";
const ALL_FILES: [&str; 6] = [
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    TOKEN_KEY,
    ADMIN_CREDENTIALS,
];
/// Certificates are valid this long; a worker renews its own by joining again.
const VALIDITY_YEARS: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("no CA in {dir}: start the coordinator once with this --data-dir (it makes its CA on first start), or pass the data dir it uses")]
    Absent { dir: String },
    #[error("{path} is missing but {dir} exists: restore it from a backup, or remove {dir} to make a new CA (every worker must then join again and admin.pem copies are void)")]
    Missing { path: String, dir: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "cannot write {path}: {reason} (make the data dir writable, or choose another --data-dir)"
    )]
    Write { path: String, reason: String },
    #[error("cannot make a certificate: {0}")]
    Certificate(String),
}

/// The CA and everything made from it.
pub struct Pki {
    pub dir: PathBuf,
    ca_key: KeyPair,
    pub ca_pem: String,
    pub ca_sha256: [u8; 32],
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    token_secret: Vec<u8>,
    /// SHA-256 of the admin credential's certificate.
    pub admin_sha256: [u8; 32],
    /// Checks a client certificate against this CA (for [`Pki::classify`]).
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// What the certificate a client presented makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate.
    None,
    /// The admin credential.
    Admin,
    /// Issued by this CA; the store says which worker (if any) it currently belongs to.
    Issued([u8; 32]),
    /// Not acceptable; the reason says what to use instead.
    Refused(String),
}

impl Pki {
    /// The admin credential's path in a coordinator data dir.
    pub fn admin_credentials_path(data_dir: &Path) -> PathBuf {
        data_dir.join(TLS_DIR).join(ADMIN_CREDENTIALS)
    }

    /// Loads `data_dir/tls`, making it first if it does not exist; says whether it
    /// made it.
    pub fn load_or_create(data_dir: &Path) -> Result<(Pki, bool), PkiError> {
        let dir = data_dir.join(TLS_DIR);
        if dir.exists() {
            return Ok((Pki::load(data_dir)?, false));
        }
        create(data_dir)?;
        Ok((Pki::load(data_dir)?, true))
    }

    /// Loads an existing `data_dir/tls` (for `lem-coord token create`, which runs
    /// beside a live coordinator).
    pub fn load(data_dir: &Path) -> Result<Pki, PkiError> {
        let dir = data_dir.join(TLS_DIR);
        let shown = dir.display().to_string();
        if !dir.exists() {
            return Err(PkiError::Absent { dir: shown });
        }
        for f in ALL_FILES {
            if !dir.join(f).exists() {
                return Err(PkiError::Missing {
                    path: dir.join(f).display().to_string(),
                    dir: shown,
                });
            }
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| PkiError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let invalid = |name: &str, reason: String| PkiError::Invalid {
            path: dir.join(name).display().to_string(),
            reason,
        };
        let ca_key = KeyPair::from_pem(&read(CA_KEY)?)
            .map_err(|e| invalid(CA_KEY, format!("not a private key: {e}")))?;
        let ca_pem = read(CA_CERT)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| invalid(CA_CERT, format!("not a PEM certificate: {e}")))?;
        let server_der = CertificateDer::from_pem_slice(read(SERVER_CERT)?.as_bytes())
            .map_err(|e| invalid(SERVER_CERT, format!("not a PEM certificate: {e}")))?;
        let server_key = PrivateKeyDer::from_pem_slice(read(SERVER_KEY)?.as_bytes())
            .map_err(|e| invalid(SERVER_KEY, format!("not a private key: {e}")))?;
        let token_secret = unhex(read(TOKEN_KEY)?.trim())
            .filter(|s| s.len() >= 32)
            .ok_or_else(|| invalid(TOKEN_KEY, "not 64 hex digits".into()))?;
        let admin = tls::Credentials::load(&dir.join(ADMIN_CREDENTIALS))
            .map_err(|e| invalid(ADMIN_CREDENTIALS, format!("{e:#}")))?;
        let ca_sha256 = tls::sha256(ca_der.as_ref());
        let client_verifier =
            client_verifier(&ca_der).map_err(|reason| invalid(CA_CERT, reason))?;
        Ok(Pki {
            client_verifier,
            dir,
            ca_key,
            ca_pem,
            ca_sha256,
            server_chain: vec![server_der, ca_der],
            server_key,
            token_secret,
            admin_sha256: tls::sha256(admin.certificate.as_ref()),
        })
    }

    /// A join token valid for `ttl_s` from `now_s`.
    pub fn create_token(&self, ttl_s: u64, now_s: u64) -> String {
        let mut nonce = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .expect("the system random source works");
        JoinToken {
            ca_sha256: self.ca_sha256,
            expires_at_s: now_s.saturating_add(ttl_s),
            nonce,
        }
        .sign(&self.token_secret)
    }

    pub fn verify_token(&self, text: &str, now_s: u64) -> Result<JoinToken, TokenError> {
        JoinToken::verify(text, &self.token_secret, &self.ca_sha256, now_s)
    }

    /// Issues a worker's client certificate for `public_key` (uncompressed P-256);
    /// returns it as PEM with its SHA-256.
    pub fn issue_worker_certificate(
        &self,
        worker: &WorkerId,
        public_key: &[u8],
    ) -> Result<(String, [u8; 32]), PkiError> {
        let mut params = leaf_params(&worker.0, ExtendedKeyUsagePurpose::ClientAuth);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "worker");
        let cert = params
            .signed_by(&RawP256(public_key.to_vec()), &self.issuer())
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        Ok((cert.pem(), tls::sha256(cert.der())))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(&self.ca_key), &self.ca_key)
    }

    /// The TLS configuration of the listener: this CA's server certificate, and
    /// client certificates asked for but not required (see [`AnyClientCert`]).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let verifier = Arc::new(AnyClientCert {
            inner: self.client_verifier.clone(),
        });
        let config = ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(|e| PkiError::Invalid {
                path: self.dir.join(SERVER_KEY).display().to_string(),
                reason: format!("the server certificate and key do not go together: {e}"),
            })?;
        Ok(Arc::new(config))
    }

    /// Classifies the certificates a client presented in a finished handshake.
    pub fn classify(&self, peer: Option<&[CertificateDer<'static>]>) -> ClientCert {
        let Some((leaf, intermediates)) = peer.and_then(|c| c.split_first()) else {
            return ClientCert::None;
        };
        let verdict = self
            .client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now());
        if let Err(e) = verdict {
            return ClientCert::Refused(format!(
                "the client certificate was not accepted ({e}); use a credential of this coordinator: a worker's DATA_DIR/credentials.pem from `lem-worker join`, or its admin.pem"
            ));
        }
        let digest = tls::sha256(leaf.as_ref());
        if digest == self.admin_sha256 {
            ClientCert::Admin
        } else {
            ClientCert::Issued(digest)
        }
    }
}

/// A verifier of client certificates issued by `ca` (none required).
fn client_verifier(ca: &CertificateDer<'static>) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())
}

/// Makes `data_dir/tls` whole in a temporary directory, then renames it into place.
fn create(data_dir: &Path) -> Result<(), PkiError> {
    let dir = data_dir.join(TLS_DIR);
    let tmp = data_dir.join(format!("{TLS_DIR}.tmp"));
    let write_err = |path: &Path, e: &dyn std::fmt::Display| PkiError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let cert_err = |e: rcgen::Error| PkiError::Certificate(e.to_string());
    let _ = std::fs::remove_dir_all(&tmp);
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| write_err(&tmp, &e))?;
    }
    let put = |name: &str, text: &str| {
        write_private(&tmp.join(name), text.as_bytes())
            .map_err(|e| write_err(&tmp.join(name), &format!("{e:#}")))
    };
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let ca = ca_params(&ca_key).self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params(&ca_key), &ca_key);
    put(CA_KEY, &ca_key.serialize_pem())?;
    put(CA_CERT, &ca.pem())?;

    let server_key = KeyPair::generate().map_err(cert_err)?;
    let mut server = leaf_params(tls::SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth);
    server.subject_alt_names = vec![rcgen::SanType::DnsName(
        tls::SERVER_NAME.try_into().map_err(cert_err)?,
    )];
    let server = server.signed_by(&server_key, &issuer).map_err(cert_err)?;
    put(SERVER_KEY, &server_key.serialize_pem())?;
    put(SERVER_CERT, &server.pem())?;

    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| PkiError::Certificate("the system random source failed".into()))?;
    put(TOKEN_KEY, &format!("{}\n", hex(&secret)))?;

    let admin_key = KeyPair::generate().map_err(cert_err)?;
    let mut admin = leaf_params("lem fleet admin", ExtendedKeyUsagePurpose::ClientAuth);
    admin
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "admin");
    let admin = admin.signed_by(&admin_key, &issuer).map_err(cert_err)?;
    put(
        ADMIN_CREDENTIALS,
        &tls::render_credentials(
            &[(
                "lem fleet admin credential",
                "keep private; elsewhere pass a copy with --credentials FILE",
            )],
            &admin.pem(),
            &admin_key.serialize_pem(),
            &ca.pem(),
        ),
    )?;
    std::fs::rename(&tmp, &dir).map_err(|e| write_err(&dir, &e))?;
    Ok(())
}

/// The CA's parameters, a function of its key alone, so the issuer can be rebuilt
/// on every start without parsing the certificate back.
fn ca_params(ca_key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = hex(&tls::sha256(ca_key.public_key_raw()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "lem fleet");
    dn.push(DnType::CommonName, format!("lem fleet CA {}", &id[..16]));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

fn leaf_params(common_name: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "lem fleet");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    params
}

/// Valid from yesterday (the clocks of hosts differ) for [`VALIDITY_YEARS`].
fn set_validity(params: &mut CertificateParams) {
    let day = format_utc_ms(crate::clock::now_ms().saturating_sub(86_400_000));
    let y: i32 = day[0..4].parse().unwrap_or(2026);
    let m: u8 = day[5..7].parse().unwrap_or(1);
    let d: u8 = day[8..10].parse::<u8>().unwrap_or(1).min(28);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + VALIDITY_YEARS, m, d);
}

/// A worker's public key as it came over the wire: an uncompressed P-256 point.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Asks every client for a certificate and lets the handshake finish whatever it
/// presents, as long as it proves it holds the certificate's key (the handshake
/// signature is still verified). The certificate itself is judged afterwards by
/// [`Pki::classify`], so a client with the wrong certificate gets an RPC error that
/// says so instead of a bare TLS alert; and nothing is served before that.
#[derive(Debug)]
struct AnyClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[TlsName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_judges_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, created) = Pki::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (again, created) = Pki::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(pki.ca_sha256, again.ca_sha256, "reused, not remade");
        pki.server_config().unwrap();

        // Tokens from this CA verify; the time is the caller's.
        let token = pki.create_token(60, 1_000);
        assert_eq!(
            again.verify_token(&token, 1_059).unwrap().expires_at_s,
            1_060
        );
        assert!(again.verify_token(&token, 1_060).is_err());

        // A worker certificate issued to a fresh key is "issued", the admin's is
        // "admin", and the same from another CA is refused.
        let key = KeyPair::generate().unwrap();
        let (pem, digest) = pki
            .issue_worker_certificate(&WorkerId("w1".into()), key.public_key_raw())
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(tls::sha256(der.as_ref()), digest);
        assert_eq!(
            again.classify(Some(std::slice::from_ref(&der))),
            ClientCert::Issued(digest)
        );
        let admin = tls::Credentials::load(&Pki::admin_credentials_path(dir.path())).unwrap();
        assert_eq!(
            pki.classify(Some(std::slice::from_ref(&admin.certificate))),
            ClientCert::Admin
        );
        assert_eq!(pki.classify(None), ClientCert::None);
        let other_dir = tempfile::tempdir().unwrap();
        let (other, _) = Pki::load_or_create(other_dir.path()).unwrap();
        assert_ne!(other.ca_sha256, pki.ca_sha256);
        let ClientCert::Refused(why) = other.classify(Some(std::slice::from_ref(&der))) else {
            panic!("another CA's certificate must be refused")
        };
        assert!(why.contains("UnknownIssuer"), "{why}");
    }

    #[test]
    fn a_missing_file_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = Pki::load(dir.path()).err().unwrap().to_string();
        assert!(e.starts_with("no CA in"), "{e}");
        Pki::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("tls/token.key")).unwrap();
        let e = Pki::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(e.contains("token.key is missing"), "{e}");
        assert!(e.contains("every worker must then join again"), "{e}");
        std::fs::write(dir.path().join("tls/token.key"), "not hex\n").unwrap();
        let e = Pki::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("token.key: not 64 hex digits"), "{e}");
    }
}
