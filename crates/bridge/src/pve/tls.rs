//! The rustls configuration for talking to pveproxy.
//!
//! Proxmox ships a self-signed cluster CA (`pve-root-ca.pem`) and per-node certificates
//! signed by it, so out of the box no public root trusts a Proxmox host. Three ways to trust
//! one, strongest intent first:
//! - `fingerprint`: pin the SHA-256 of the server's leaf certificate (what the Proxmox GUI
//!   shows). Accepted regardless of CA and hostname, because pinning is exactly "this
//!   certificate and no other"; handshake signatures are still verified, so a peer must own
//!   the pinned certificate's key.
//! - `tls_verify = false`: accept any certificate (insecure; warned about once).
//! - default: public web roots (the set reqwest's `rustls-tls` uses) plus every certificate
//!   in `ca_file` as an extra root, with normal hostname checks.
//!
//! Every config is built on the ring provider explicitly, so nothing depends on a
//! process-wide default provider being installed.
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::error::PveError;
use crate::config::ProxmoxConfig;
pub(crate) use crate::types::format_fingerprint;

/// Builds the client TLS configuration for `cfg` (see the module docs for the precedence).
pub(crate) fn client_config(cfg: &ProxmoxConfig) -> Result<rustls::ClientConfig, PveError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PveError::Config {
            message: format!("TLS setup failed: {e}"),
        })?;

    if let Some(expected) = cfg.fingerprint {
        if !cfg.tls_verify || cfg.ca_file.is_some() {
            info!("Proxmox certificate pinned by fingerprint; tls_verify and ca_file are not used");
        }
        let verifier = LeafCertificate {
            pinned: Some(expected),
            algorithms: provider.signature_verification_algorithms,
        };
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }

    if !cfg.tls_verify {
        warn!(
            "tls_verify = false: the Proxmox certificate is not checked, so anyone on the network path \
             can read the API token; set `fingerprint` or `ca_file` instead"
        );
        let verifier = LeafCertificate {
            pinned: None,
            algorithms: provider.signature_verification_algorithms,
        };
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }

    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca_file) = &cfg.ca_file {
        ca_file
            .add_to(&mut roots)
            .map_err(|message| PveError::Config { message })?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Checks the leaf certificate against a pin (`fingerprint`), or not at all
/// (`tls_verify = false`). Either way handshake signatures are still checked, which costs
/// nothing and keeps a peer without the certificate's key from completing the handshake.
#[derive(Debug)]
struct LeafCertificate {
    /// SHA-256 of the only certificate accepted; `None` accepts any.
    pinned: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The handshake error for a pin mismatch; names the presented fingerprint so the user can
/// compare it with the GUI and fix the config.
#[derive(Debug)]
struct FingerprintMismatch {
    presented: String,
}

impl fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server certificate fingerprint {} does not match the configured fingerprint",
            self.presented
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

impl ServerCertVerifier for LeafCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let presented = Sha256::digest(end_entity.as_ref());
        if presented.as_slice() == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(FingerprintMismatch {
                    presented: format_fingerprint(&presented),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    use crate::config::{ApiToken, Secret};
    use crate::types::{CaBundle, CaError};

    fn config_with_ca(ca_file: Option<CaBundle>) -> ProxmoxConfig {
        ProxmoxConfig {
            urls: vec![crate::types::ProxmoxUrl::parse("https://pve.example:8006").unwrap()],
            token: ApiToken {
                user: "u@pve".into(),
                token_id: "t".into(),
                secret: Secret::new("x"),
            },
            tls_verify: true,
            ca_file,
            fingerprint: None,
            name: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn fingerprints_print_as_colon_separated_uppercase_hex() {
        assert_eq!(format_fingerprint(&[0xAB, 0x01, 0xFF]), "AB:01:FF");
    }

    #[test]
    fn a_ca_file_whose_certificate_is_not_x509_is_an_error_naming_the_key_and_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----"
        )
        .unwrap();
        let bundle = CaBundle::read("proxmox.ca_file", file.path()).unwrap();
        let err = client_config(&config_with_ca(Some(bundle))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxmox.ca_file"), "{text}");
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(matches!(err, PveError::Config { .. }));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_before_any_tls_setup() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        )
        .unwrap();
        assert_eq!(
            CaBundle::read("proxmox.ca_file", file.path()),
            Err(CaError::NoCertificate)
        );
    }
}
