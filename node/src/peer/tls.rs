//! Mutual TLS for node-to-node QUIC: every node presents a certificate signed by the cluster CA
//! and accepts only peers that do too. A node's certificate names its node id (a DNS name), and a
//! node dialing a peer checks that name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN of the cluster protocol; a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"chat-cluster/1";
/// Keepalives let a node notice a peer that vanished (kill -9, partition) within the idle timeout.

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {err}")]
    Pem {
        path: String,
        err: rustls::pki_types::pem::Error,
    },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("quic crypto: {0}")]
    Quic(String),
}

/// The PEM files of one node: the cluster CA and the node's own certificate and key.
pub struct Credentials {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Credentials {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
        let pem = |p: &Path| {
            let path = p.display().to_string();
            move |err| TlsError::Pem { path, err }
        };
        let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            CertificateDer::pem_file_iter(p)
                .map_err(pem(p))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem(p))
        };
        Ok(Credentials {
            ca: certs(ca)?,
            chain: certs(cert)?,
            key: PrivateKeyDer::from_pem_file(key).map_err(pem(key))?,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Link liveness: keep-alives while quiet, and the silence after which a link is closed.
pub fn transport(keep_alive: Duration, idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(idle_timeout.try_into().expect("idle timeout fits")));
    Arc::new(t)
}

/// The transport with `[peer]`'s defaults (`Peers::bind` sets the configured one).
fn default_transport() -> Arc<quinn::TransportConfig> {
    let d = crate::config::PeerSection::default();
    transport(d.keep_alive(), d.idle_timeout())
}

/// Accepts QUIC connections only from peers with a certificate signed by the cluster CA.
pub fn server_config(id: &Credentials) -> Result<quinn::ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&id.ca)?, provider()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(default_transport());
    Ok(cfg)
}

/// Dials peers presenting this node's certificate, trusting only the cluster CA. `identity: None`
/// dials without a client certificate (only tests do that, to see it refused).
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut tls = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain.to_vec(), key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(default_transport());
    Ok(cfg)
}
