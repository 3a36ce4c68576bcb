//! Optional mutual TLS on the node-report stream (rustls through tonic's `tls-ring`).
//!
//! Both ends take the same three flags: `--tls-cert` (this side's certificate chain, PEM),
//! `--tls-key` (its private key, PEM) and `--tls-ca` (the CA that signed the other side). The
//! EPP requires a client certificate signed by the CA; the agent verifies the EPP's certificate
//! against the CA and the name it dials (`--tls-server-name` overrides it).
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs --tls-cert, --tls-key and --tls-ca together; missing: {0}")]
    Incomplete(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("cannot generate certificates: {0}")]
    Generate(String),
}

/// The TLS flags, for the agent (and the EPP) to flatten.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) this side presents; with --tls-key and --tls-ca turns on mTLS.
    #[arg(long, env = "SWITCHYARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that signed the other side's certificate.
    #[arg(long, env = "SWITCHYARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// `None` when no TLS flag is given; an error naming the missing ones when only some are.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-ca"),
                ]
                .into_iter()
                .filter_map(|(absent, flag)| absent.then_some(flag))
                .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }
}

/// Paths of one side's identity and the CA it trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The PEM contents, checked.
struct Loaded {
    identity: Identity,
    ca: Certificate,
}

impl TlsFiles {
    fn load(&self) -> Result<Loaded, TlsError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        let ca = read(&self.ca)?;
        check_certs(&self.cert, &cert)?;
        check_certs(&self.ca, &ca)?;
        let found_key =
            rustls_pemfile::private_key(&mut key.as_slice()).map_err(|err| TlsError::Pem {
                path: self.key.clone(),
                what: format!("not a PEM private key: {err}"),
            })?;
        if found_key.is_none() {
            return Err(TlsError::Pem {
                path: self.key.clone(),
                what: "no private key (PKCS#8, PKCS#1 or SEC1 PEM block) found".into(),
            });
        }
        Ok(Loaded {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        })
    }

    /// The agent's side: present our certificate, verify the EPP's against the CA and
    /// `server_name` (a DNS name or an IP address).
    pub fn client_config(&self, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
        let loaded = self.load()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(loaded.ca)
            .identity(loaded.identity)
            .domain_name(server_name))
    }

    /// The EPP's side: present our certificate, require a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let loaded = self.load()?;
        Ok(ServerTlsConfig::new()
            .identity(loaded.identity)
            .client_ca_root(loaded.ca)
            .client_auth_optional(false))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_certs(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let mut count = 0;
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        cert.map_err(|err| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad certificate: {err}"),
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PEM certificate found".into(),
        });
    }
    Ok(())
}

/// A throw-away CA with a server and a client certificate, written as PEM files: for tests and
/// for trying mTLS on a laptop. Not for production (keys are written unencrypted).
#[derive(Clone, Debug)]
pub struct DevPki {
    pub ca: PathBuf,
    pub server: TlsFiles,
    pub client: TlsFiles,
}

impl DevPki {
    /// Generates the CA and both certificates into `dir`; the server certificate is valid for
    /// `server_names` (DNS names or IP addresses).
    pub fn generate(dir: &Path, server_names: &[&str]) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let generate = |err: rcgen::Error| TlsError::Generate(err.to_string());
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchyard dev CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(generate)?)
            .map_err(generate)?;
        let write = |name: &str, contents: &str| -> Result<PathBuf, TlsError> {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        let ca_path = write("ca.pem", &ca.pem())?;
        let leaf = |name: &str, sans: Vec<String>| -> Result<TlsFiles, TlsError> {
            let key = KeyPair::generate().map_err(generate)?;
            let mut params = CertificateParams::new(sans).map_err(generate)?;
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).map_err(generate)?;
            Ok(TlsFiles {
                cert: write(&format!("{name}.pem"), &cert.pem())?,
                key: write(&format!("{name}-key.pem"), &key.serialize_pem())?,
                ca: ca_path.clone(),
            })
        };
        let server = leaf(
            "server",
            server_names.iter().map(|name| (*name).to_owned()).collect(),
        )?;
        let client = leaf("client", vec!["switchyard-agent".to_owned()])?;
        Ok(Self {
            ca: ca_path,
            server,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_all_together_or_not_at_all() {
        assert!(TlsArgs::default().files().unwrap().is_none());
        let partial = TlsArgs {
            tls_cert: Some("c.pem".into()),
            ..TlsArgs::default()
        };
        let err = partial.files().unwrap_err().to_string();
        assert!(err.contains("--tls-key, --tls-ca"), "{err}");
    }

    #[test]
    fn generated_files_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
        pki.server.server_config().unwrap();
        pki.client.client_config("localhost").unwrap();

        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, "hello").unwrap();
        let broken = TlsFiles {
            cert: bogus.clone(),
            ..pki.client.clone()
        };
        let err = broken.client_config("localhost").unwrap_err().to_string();
        assert!(
            err.contains("bogus.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = TlsFiles {
            key: dir.path().join("nope.pem"),
            ..pki.client
        };
        let err = missing.server_config().unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
