//! TLS for the listeners: rustls with the ring provider, TLS 1.2 and 1.3, ALPN h2 + http/1.1.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not make a server config: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A certificate chain and private key as PEM text: what the agent reads from disk and hands to
/// the proxy process, which reads no files. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsPem {
    pub cert: String,
    /// Zeroed on drop.
    pub key: String,
}

impl Drop for TlsPem {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem(<redacted>)")
    }
}

impl TlsPem {
    /// Reads both files (UTF-8 PEM); the error names the file, never its content.
    pub fn read(cert: &Path, key: &Path) -> Result<TlsPem, TlsError> {
        let cert_text = std::fs::read_to_string(cert).map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
        let key_text = std::fs::read_to_string(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(TlsPem {
            cert: cert_text,
            key: key_text,
        })
    }
}

/// Builds the acceptor from PEM files: a certificate chain (leaf first) and one private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let pem = TlsPem::read(cert, key)?;
    build(&pem, cert, key).map(|(acceptor, _)| acceptor)
}

/// The acceptor and the certificate chain it serves. `cert` and `key` name the PEM's origin in
/// errors.
fn build(
    pem: &TlsPem,
    cert: &Path,
    key: &Path,
) -> Result<(TlsAcceptor, Vec<CertificateDer<'static>>), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    // The key's own error text could quote key material on some paths; keep to the kind.
    let private_key =
        PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".into(),
                rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                _ => "not a valid PEM private key".into(),
            },
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), private_key)
        .map_err(|source| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certs))
}

/// What `TlsFiles::reload` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsReload {
    /// A new certificate chain serves new connections.
    Changed,
    /// The files hold the chain already in use.
    Unchanged,
}

struct Loaded {
    acceptor: TlsAcceptor,
    certs: Vec<CertificateDer<'static>>,
    pem: TlsPem,
}

/// The listeners' TLS certificate and key, replaceable while they run: SIGHUP re-reads the files
/// (a renewed certificate) and new connections get the new chain; open ones keep theirs. In the
/// proxy process the same type holds PEM received from the agent ([`TlsFiles::from_pem`],
/// [`TlsFiles::replace`]); [`TlsFiles::subscribe`] tells the agent when to send a new one.
#[derive(Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<Loaded>>,
    changes: Arc<watch::Sender<u64>>,
}

impl TlsFiles {
    pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
        let pem = TlsPem::read(cert, key)?;
        Self::with(pem, cert, key)
    }

    /// From PEM already in memory (the proxy process); errors name `<received>`.
    pub fn from_pem(pem: TlsPem) -> Result<TlsFiles, TlsError> {
        let received = Path::new(RECEIVED);
        Self::with(pem, received, received)
    }

    fn with(pem: TlsPem, cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
        let (acceptor, certs) = build(&pem, cert, key)?;
        Ok(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Arc::new(RwLock::new(Loaded {
                acceptor,
                certs,
                pem,
            })),
            changes: Arc::new(watch::channel(0).0),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .acceptor
            .clone()
    }

    /// The PEM in use.
    pub fn pem(&self) -> TlsPem {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pem
            .clone()
    }

    /// Ticks on every change of the chain in use.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Re-reads both files. On error the acceptor in use stays.
    pub fn reload(&self) -> Result<TlsReload, TlsError> {
        let pem = TlsPem::read(&self.cert, &self.key)?;
        self.replace(pem)
    }

    /// Serves `pem` to new connections. On error the acceptor in use stays.
    pub fn replace(&self, pem: TlsPem) -> Result<TlsReload, TlsError> {
        let (acceptor, certs) = build(&pem, &self.cert, &self.key)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.certs == certs && current.pem == pem {
            return Ok(TlsReload::Unchanged);
        }
        *current = Loaded {
            acceptor,
            certs,
            pem,
        };
        drop(current);
        self.changes.send_modify(|n| *n += 1);
        Ok(TlsReload::Changed)
    }
}

/// How errors name PEM that came over the agent's channel rather than from a file.
const RECEIVED: &str = "<received from the agent>";
