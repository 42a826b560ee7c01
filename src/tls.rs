//! TLS termination with rustls (ring provider, the one crypto provider in the tree). Owns
//! loading PEM files into a server config and swapping it on reload (SIGHUP), so certificates
//! can be renewed without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    self, pki_types::CertificateDer, pki_types::PrivateKeyDer, pki_types::pem::PemObject,
};

/// Builds a server config from a PEM certificate chain and private key.
///
/// # Errors
/// When a file cannot be read or holds no usable certificate or key, or they do not match.
pub fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading certificates from {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key from {}", key_file.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not form a usable pair")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The current acceptor, replaced on reload.
#[derive(Clone)]
pub struct ReloadableAcceptor {
    current: Arc<RwLock<TlsAcceptor>>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ReloadableAcceptor {
    /// # Errors
    /// As [`server_config`].
    pub fn new(cert_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(cert_file, key_file)?));
        Ok(Self {
            current: Arc::new(RwLock::new(acceptor)),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        })
    }

    pub fn get(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|a| a.clone())
    }

    /// Re-reads the files; on any error the old certificate stays in use.
    pub fn reload(&self) {
        match server_config(&self.cert_file, &self.key_file) {
            Ok(cfg) => {
                if let Ok(mut cur) = self.current.write() {
                    *cur = TlsAcceptor::from(Arc::new(cfg));
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                }
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "TLS reload failed; keeping the current certificate"
            ),
        }
    }
}
