//! Optional TLS on the one port (`https://` and `wss://` without a proxy):
//! loads a PEM certificate chain and private key into a rustls acceptor.
//!
//! Only the `ring` crypto provider is compiled in (no aws-lc-rs, so no cmake
//! or C toolchain), and it is passed explicitly rather than installed as the
//! process default. Every loading problem is a [`TlsError`] that names the
//! file and what is wrong with it, so `serve` can refuse to start with a
//! message the operator can act on.

use crate::config::Config;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why the TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("could not read the TLS {what} file {}: {source}", path.display())]
    Read {
        /// Which file: `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("the TLS {what} file {} is not valid PEM: {reason}", path.display())]
    Pem {
        /// Which file: `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error(
        "the TLS certificate file {} holds no certificate (expected one or more \
         \"-----BEGIN CERTIFICATE-----\" blocks, the server's own first)",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key this server can read.
    #[error(
        "the TLS private key file {} holds no private key (expected a PKCS#8 \
         \"BEGIN PRIVATE KEY\", an RSA \"BEGIN RSA PRIVATE KEY\" or an EC \
         \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds an encrypted key, which needs a passphrase.
    #[error(
        "the TLS private key file {} is encrypted; serve needs it unencrypted \
         (for example: openssl pkey -in {} -out plain.key)",
        path.display(),
        path.display()
    )]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("TLS needs both tls_cert and tls_key, but only {set} is set")]
    Incomplete {
        /// The one that is set.
        set: &'static str,
    },
    /// rustls refused the pair: an unsupported key type, a key that does
    /// not belong to the certificate, or a certificate it cannot parse.
    #[error(
        "the TLS certificate {} and private key {} cannot be used together: {source}",
        cert.display(),
        key.display()
    )]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// The acceptor for `config`'s `tls_cert` and `tls_key`, or `None` when
/// TLS is off (neither is set). One without the other is an error here
/// too, not plain HTTP, even if [`Config::validate`] was skipped.
pub fn from_config(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => acceptor(cert, key).map(Some),
        (Some(_), None) => Err(TlsError::Incomplete { set: "tls_cert" }),
        (None, Some(_)) => Err(TlsError::Incomplete { set: "tls_key" }),
        (None, None) => Ok(None),
    }
}

/// Loads a PEM certificate chain (the server's certificate first, then any
/// intermediates) and its PEM private key (PKCS#8, RSA PKCS#1 or EC SEC1)
/// into an acceptor that speaks TLS 1.2 and 1.3 with ALPN `http/1.1`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = load_chain(cert)?;
    let private_key = load_key(key)?;
    let rejected = |source| TlsError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rejected)?;
    // Only HTTP/1.1 is served (WebSocket upgrades need it); saying so lets
    // clients that offer h2 fall back during the handshake.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

const CERTIFICATE: &str = "certificate";
const PRIVATE_KEY: &str = "private key";

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(CERTIFICATE, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(CERTIFICATE, path, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(PRIVATE_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound if contains(&pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            TlsError::EncryptedKey {
                path: path.to_path_buf(),
            }
        }
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => pem_error(PRIVATE_KEY, path, &other),
    })
}

/// A readable reason for a PEM syntax error (the crate's own `Display`
/// prints the offending lines as byte arrays).
fn pem_error(what: &'static str, path: &Path, error: &pem::Error) -> TlsError {
    let reason = match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("a {label} block has no \"-----END {label}-----\" line")
        }
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed BEGIN line \"{}\"",
            String::from_utf8_lossy(line).trim()
        ),
        pem::Error::Base64Decode(e) => format!("a block's base64 does not decode: {e}"),
        other => other.to_string(),
    };
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn refused(cert: &Path, key: &Path) -> TlsError {
        match acceptor(cert, key) {
            Ok(_) => panic!("{} with {} was accepted", cert.display(), key.display()),
            Err(e) => e,
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tls")
            .join(name)
    }

    #[test]
    fn loads_pkcs8_sec1_and_rsa_keys() {
        acceptor(&fixture("localhost.crt"), &fixture("localhost.key")).unwrap();
        acceptor(&fixture("localhost.crt"), &fixture("localhost-sec1.key")).unwrap();
        acceptor(&fixture("rsa.crt"), &fixture("rsa.key")).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = refused(&fixture("nope.crt"), &fixture("localhost.key"));
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: CERTIFICATE,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }

    #[test]
    fn swapped_files_say_what_is_missing() {
        let err = refused(&fixture("localhost.key"), &fixture("localhost.key"));
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = refused(&fixture("localhost.crt"), &fixture("localhost.crt"));
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("localhost.crt"), "{err}");
    }

    #[test]
    fn a_key_from_another_pair_is_refused() {
        let err = refused(&fixture("localhost.crt"), &fixture("rsa.key"));
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");
    }

    #[test]
    fn broken_pem_and_encrypted_keys_are_explained() {
        let dir = std::env::temp_dir().join(format!("switchboard-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let broken = dir.join("broken.crt");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let err = refused(&broken, &fixture("localhost.key"));
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("END CERTIFICATE"), "{err}");
        let encrypted = dir.join("encrypted.key");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = refused(&fixture("localhost.crt"), &encrypted);
        assert!(matches!(err, TlsError::EncryptedKey { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
