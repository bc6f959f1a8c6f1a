//! The two TLS configurations a [`super::Client`] holds: one that verifies BMC certificates
//! (Mozilla's roots plus an operator's CA file) and one for hosts marked `insecure-tls`.
//!
//! Both use rustls with the *ring* provider, the same ureq itself is built with, so no second
//! crypto library is compiled in. The `rustls` and `webpki-roots` dependencies are the versions
//! ureq already pulls in; they are named in Cargo.toml only to reach their types.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// (verifying, not verifying) configurations; `ca_file` adds its certificates to the roots
/// (read and checked by [`crate::cafile`], as every CA file is).
pub(super) fn configs(
    ca_file: Option<&Path>,
) -> anyhow::Result<(Arc<ClientConfig>, Arc<ClientConfig>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = crate::cafile::roots(ca_file, "BMC CA file", crate::cafile::Trust::PublicAndFile)?;
    let verified =
        crate::cafile::builder(&provider)?.with_root_certificates(roots).with_no_client_auth();
    let insecure = crate::cafile::builder(&provider)?
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
