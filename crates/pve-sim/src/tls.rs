//! Certificates for the simulator's HTTPS listener.
//!
//! A Proxmox VE host serves the API with `pve-ssl.pem`, a leaf certificate signed by the
//! cluster's own `pve-root-ca.pem`. Users either trust that CA (`ca_file`) or pin the leaf's
//! SHA-256 fingerprint (`fingerprint`), so the simulator reproduces the same two-level chain:
//! a freshly generated CA on every start, and a leaf for `localhost`, `127.0.0.1` and `::1`.

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The generated certificate chain and what a client needs to trust it.
pub(crate) struct SimCerts {
    /// PEM of the CA that signed the server certificate (what a user puts in `ca_file`).
    pub ca_pem: String,
    /// DER of the server (leaf) certificate.
    pub leaf_der: CertificateDer<'static>,
    /// DER (PKCS#8) of the leaf's private key.
    leaf_key_der: Vec<u8>,
}

impl SimCerts {
    /// Generates a new CA and a server certificate signed by it.
    pub fn generate() -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "PVE Simulator Root CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "PVE Cluster Manager CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA certificate")?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().context("generating the server key")?;
        let mut leaf_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .context("building the server certificate parameters")?;
        leaf_params.distinguished_name = rcgen::DistinguishedName::new();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params
            .distinguished_name
            .push(DnType::OrganizationName, "PVE Cluster Node");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .context("signing the server certificate")?;

        Ok(Self {
            ca_pem,
            leaf_der: leaf_cert.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        })
    }

    /// SHA-256 of the leaf certificate, `AB:CD:…` in upper case, as Proxmox shows it.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.leaf_der)
    }

    /// A rustls server configuration with the ring provider chosen explicitly, so the
    /// simulator works whether or not the process installed a default provider.
    ///
    /// No ALPN is offered: pveproxy speaks HTTP/1.x only.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .context("loading the generated server certificate")?;
        Ok(Arc::new(config))
    }
}

/// Formats the SHA-256 digest of a DER certificate as upper-case, colon-separated hex.
pub(crate) fn fingerprint_of(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_32_upper_case_hex_pairs() {
        let certs = SimCerts::generate().expect("certificates");
        let fingerprint = certs.fingerprint();
        let pairs: Vec<&str> = fingerprint.split(':').collect();
        assert_eq!(pairs.len(), 32);
        assert!(pairs.iter().all(|pair| pair.len() == 2
            && pair
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())));
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
