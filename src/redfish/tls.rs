//! The two TLS configurations a [`super::Client`] holds: one that verifies BMC certificates
//! (Mozilla's roots plus an operator's CA file) and one for hosts marked `insecure-tls`.
//!
//! Both use rustls with the *ring* provider, the same ureq itself is built with, so no second
//! crypto library is compiled in. The `rustls` and `webpki-roots` dependencies are the versions
//! ureq already pulls in; they are named in Cargo.toml only to reach their types.

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// (verifying, not verifying) configurations; `ca_file` adds its certificates to the roots.
pub(super) fn configs(
    ca_file: Option<&Path>,
) -> anyhow::Result<(Arc<ClientConfig>, Arc<ClientConfig>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the BMC CA file {}", path.display()))?;
        let mut added = 0;
        for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert = cert.map_err(|e| {
                anyhow::anyhow!("BMC CA file {}: certificate {}: {e}", path.display(), i + 1)
            })?;
            roots.add(cert).map_err(|e| {
                anyhow::anyhow!(
                    "BMC CA file {}: certificate {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                )
            })?;
            added += 1;
        }
        anyhow::ensure!(
            added > 0,
            "BMC CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    let builder = |p: &Arc<CryptoProvider>| {
        ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .context("the TLS provider offers neither TLS 1.2 nor 1.3")
    };
    let verified = builder(&provider)?.with_root_certificates(roots).with_no_client_auth();
    let insecure = builder(&provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
        .with_no_client_auth();
    Ok((Arc::new(verified), Arc::new(insecure)))
}

/// Accepts any certificate chain and name (the `insecure-tls` option), but still checks that
/// the server holds the key of the certificate it showed, so the session is at least encrypted
/// to whoever answered.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
