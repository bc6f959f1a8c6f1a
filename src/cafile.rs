//! The one place a private CA file (PEM) becomes trust for a TLS client: the API clients
//! (`bootforge reimage --ca-file`, …), the Redfish client (`--bmc-ca`) and the console's
//! directory logins (`ca_file`) all build their rustls configuration here, so a CA file is read,
//! checked and reported the same way everywhere. rustls with the *ring* provider, TLS 1.2 and
//! 1.3, like every other TLS connection of bootforge.

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// Which certificates a client trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Mozilla's roots, plus the CA file's certificates when one is given.
    PublicAndFile,
    /// The CA file's certificates alone when one is given, else Mozilla's roots.
    FileInstead,
}

/// The roots for `trust`. `what` names the file in errors (`--ca-file`, `BMC CA file`): an
/// unreadable file, a certificate that does not parse or is not a usable CA, and a file with
/// no certificate at all are each an error naming the file (and the certificate's position).
pub fn roots(ca_file: Option<&Path>, what: &str, trust: Trust) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if ca_file.is_none() || trust == Trust::PublicAndFile {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?;
        let mut added = 0;
        for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert = cert.map_err(|e| {
                anyhow::anyhow!("{what} {}: certificate {}: {e}", path.display(), i + 1)
            })?;
            roots.add(cert).map_err(|e| {
                anyhow::anyhow!(
                    "{what} {}: certificate {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                )
            })?;
            added += 1;
        }
        anyhow::ensure!(
            added > 0,
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(roots)
}

/// A client configuration builder on the *ring* provider with TLS 1.2 and 1.3.
pub fn builder(
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("the TLS provider offers neither TLS 1.2 nor 1.3")
}

/// A verifying client configuration trusting `trust` (see [`roots`]).
pub fn client_config(
    ca_file: Option<&Path>,
    what: &str,
    trust: Trust,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = roots(ca_file, what, trust)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(builder(&provider)?.with_root_certificates(roots).with_no_client_auth()))
}

/// When `error` (anywhere in its chain of sources) is a certificate the client refused, what
/// the operator should do about it; `None` for any other error.
pub fn certificate_hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use rustls::CertificateError as C;
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
            return Some(match why {
                C::UnknownIssuer | C::BadSignature => {
                    "the server's certificate is not trusted: pass --ca-file with the CA certificate (PEM) that issued it"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "the server's certificate does not name the host in --server: use a name or address it lists, or reissue it"
                }
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    "the server's certificate is outside its validity dates (or this machine's clock is wrong)"
                }
                _ => "the server's certificate was refused",
            });
        }
        // io::Error's `source()` skips the error it wraps (it answers that error's source):
        // look inside it explicitly, since TLS clients report rustls errors wrapped that way.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
