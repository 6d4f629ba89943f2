//! Mutual TLS between replicas and for clients (rustls with the `ring`
//! provider).
//!
//! Every connection is authenticated both ways: the side that connects
//! checks the listener's certificate and presents its own; the listener
//! requires one. A certificate is trusted when it chains to one of the
//! configured CAs (and, on the connecting side, names the host it connects
//! to, or `server_name`), or when its SHA-256 fingerprint is pinned (RSL's
//! thumbprints). Both lists hold several entries at once, so a certificate
//! or a CA is rotated without downtime: trust old and new, roll each
//! replica onto the new identity, then drop the old one.
//!
//! **API Boundary:** [`TlsSettings`] (the `[tls]` section of a replica's
//! file) and [`Tls`], which a [`Network::Tls`](super::net::Network) holds.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {why}")]
    Pem { what: String, why: String },
    #[error("pinned fingerprint {0:?} is not 64 hex digits (a SHA-256)")]
    Fingerprint(String),
    #[error("no trust configured: give `ca` files, `pinned_sha256` fingerprints, or both")]
    NoTrust,
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The `[tls]` section of a replica's file, and the TLS options of the
/// client tools.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This side's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM); a peer's chain must end at one of them.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// SHA-256 fingerprints (hex, `:` allowed) of peer certificates
    /// trusted as they are, with or without a CA.
    #[serde(default)]
    pub pinned_sha256: Vec<String>,
    /// The name a listener's certificate must carry (default: the host of
    /// the address connected to). Not checked for pinned certificates.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Reads the files and builds the TLS configuration.
    pub fn load(&self) -> Result<Tls, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let identity = Identity::from_pem(&read(&self.cert)?, &read(&self.key)?)
            .map_err(|why| pem_error(&self.cert, why))?;
        let mut trust = Trust::default();
        for ca in &self.ca {
            trust
                .add_ca_pem(&read(ca)?)
                .map_err(|why| pem_error(ca, why))?;
        }
        for pin in &self.pinned_sha256 {
            trust.pin_hex(pin)?;
        }
        Tls::new(identity, trust, self.server_name.clone())
    }
}

fn pem_error(path: &Path, why: String) -> TlsError {
    TlsError::Pem {
        what: path.display().to_string(),
        why,
    }
}

/// A certificate chain and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM text: the chain (leaf first) and the key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate in the PEM".into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key PEM: {e}"))?;
        Ok(Identity { chain, key })
    }

    /// The leaf certificate's SHA-256 fingerprint, as `pinned_sha256`
    /// takes it.
    pub fn fingerprint(&self) -> String {
        hex(&fingerprint(&self.chain[0]))
    }
}

/// What a peer's certificate is checked against.
#[derive(Clone, Default)]
pub struct Trust {
    roots: Vec<CertificateDer<'static>>,
    pins: Vec<[u8; 32]>,
}

impl Trust {
    /// Trusts every CA certificate in `pem`.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<(), String> {
        let before = self.roots.len();
        for c in CertificateDer::pem_slice_iter(pem) {
            self.roots
                .push(c.map_err(|e| format!("bad CA certificate PEM: {e}"))?);
        }
        if self.roots.len() == before {
            return Err("no CA certificate in the PEM".into());
        }
        Ok(())
    }

    /// Trusts the certificate whose SHA-256 is `hex` (64 hex digits, `:`
    /// and case ignored).
    pub fn pin_hex(&mut self, text: &str) -> Result<(), TlsError> {
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        let bad = || TlsError::Fingerprint(text.to_string());
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut pin = [0u8; 32];
        for (i, b) in pin.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        self.pins.push(pin);
        Ok(())
    }
}

fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Client and server sides of one identity and one trust.
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
    server_name: Option<ServerName<'static>>,
    fingerprint: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls(identity sha256:{})", self.fingerprint)
    }
}

impl Tls {
    /// Builds both sides: TLS 1.3 and 1.2 with rustls' safe defaults.
    pub fn new(
        identity: Identity,
        trust: Trust,
        server_name: Option<String>,
    ) -> Result<Tls, TlsError> {
        if trust.roots.is_empty() && trust.pins.is_empty() {
            return Err(TlsError::NoTrust);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
        let verifier = Arc::new(Verifier::new(&trust, provider.clone())?);
        let fingerprint = identity.fingerprint();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(rustls_err)?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)
            .map_err(rustls_err)?;
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.clone())
                    .map_err(|_| TlsError::Rustls(format!("{n:?} is not a valid server name")))
            })
            .transpose()?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            server_name,
            fingerprint,
        })
    }

    /// This side's certificate fingerprint (hex SHA-256).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The client side of a handshake over `tcp`, connected to `addr`.
    pub async fn connect(
        &self,
        addr: &str,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_name(addr)?,
        };
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(addr, e))
    }

    /// The server side of a handshake over `tcp`.
    pub async fn accept(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        self.acceptor
            .accept(tcp)
            .await
            .map_err(|e| handshake_error("the connecting side", e))
    }
}

/// The host part of `host:port` (`[v6]:port` too), as a TLS server name.
fn host_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr:?} has no host usable as a TLS server name; set server_name"),
        )
    })
}

/// A failed handshake: `PermissionDenied` when TLS itself refused (a
/// certificate, the protocol: rustls reports `InvalidData`), which retrying
/// will not change; a transport failure (reset, EOF) keeps its kind.
fn handshake_error(with: &str, e: std::io::Error) -> std::io::Error {
    let kind = match e.kind() {
        std::io::ErrorKind::InvalidData => std::io::ErrorKind::PermissionDenied,
        k => k,
    };
    std::io::Error::new(kind, format!("TLS handshake with {with} failed: {e}"))
}

/// Checks a peer's certificate: pinned fingerprints first, then the CAs.
/// One type for both directions, so replicas and clients trust alike.
struct Verifier {
    pins: Vec<[u8; 32]>,
    server: Option<Arc<WebPkiServerVerifier>>,
    client: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Verifier({} pins, CAs: {})",
            self.pins.len(),
            self.server.is_some()
        )
    }
}

impl Verifier {
    fn new(trust: &Trust, provider: Arc<CryptoProvider>) -> Result<Verifier, TlsError> {
        let (mut server, mut client) = (None, None);
        if !trust.roots.is_empty() {
            let mut roots = RootCertStore::empty();
            for r in &trust.roots {
                roots
                    .add(r.clone())
                    .map_err(|e| TlsError::Rustls(format!("a CA certificate: {e}")))?;
            }
            let roots = Arc::new(roots);
            server = Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            );
            client = Some(
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            );
        }
        Ok(Verifier {
            pins: trust.pins.clone(),
            server,
            client,
            provider,
        })
    }

    fn pinned(&self, cert: &CertificateDer<'_>) -> bool {
        !self.pins.is_empty() && self.pins.contains(&fingerprint(cert))
    }

    fn untrusted(&self, cert: &CertificateDer<'_>) -> rustls::Error {
        rustls::Error::General(format!(
            "certificate sha256:{} is not pinned and no CA is configured",
            hex(&fingerprint(cert))
        ))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.server {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(self.untrusted(end_entity)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.client {
            Some(v) => v.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pinned(end_entity) {
            return Ok(ClientCertVerified::assertion());
        }
        match &self.client {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(self.untrusted(end_entity)),
        }
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}
