//! TLS for the ext-proc port, as the reference EPP serves it: a certificate from `--cert-path`
//! (a directory holding `tls.crt` and `tls.key`, the layout of a Kubernetes TLS Secret), or a
//! self-signed one generated at start (GIE's Envoy configuration does not verify the EPP's
//! certificate). ALPN is h2 (tonic sets it).
use std::path::{Path, PathBuf};

use tonic::transport::{Identity, ServerTlsConfig};

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    SelfSigned,
    /// A directory with `tls.crt` and `tls.key` (PEM).
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// A certificate and its key, PEM-encoded.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    pub fn load(source: &TlsSource) -> Result<Self, TlsError> {
        match source {
            TlsSource::SelfSigned => self_signed(),
            TlsSource::Dir(dir) => Ok(Self {
                cert_pem: read(&dir.join("tls.crt"))?,
                key_pem: read(&dir.join("tls.key"))?,
            }),
        }
    }

    pub fn server_config(&self) -> ServerTlsConfig {
        // tonic's server TLS builds its rustls config from the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|err| TlsError::Read {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

fn self_signed() -> Result<TlsMaterial, TlsError> {
    let mut names = vec!["localhost".to_owned()];
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        names.push(pod);
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|err| TlsError::Generate(err.to_string()))?;
    Ok(TlsMaterial {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
    })
}
