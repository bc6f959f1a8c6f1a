//! Making a BMC trust the CA behind an `https://` image URL before it fetches the image.
//!
//! A BMC that mounts `https://service/media/node.iso?…` opens a TLS connection to the service
//! and, if it checks certificates at all, needs the CA that issued the service's certificate.
//! Redfish (VirtualMedia 1.4 and later) gives each virtual media device a `Certificates`
//! collection, the certificates it trusts for the image URL, and a `VerifyCertificate` switch.
//! [`ensure`] enrolls the operator's CA there and turns verification on; the insert that
//! follows then makes the BMC check the service's certificate (sushy-tools downloads the image
//! with exactly those certificates as its trust; BMCs do the same when they stream it).
//!
//! # Invariants
//!
//! * Idempotent: a certificate is compared by its DER bytes with every certificate the
//!   collection already holds (the BMC may re-wrap the PEM, add `\r\n` or put several in one
//!   string), and added only when absent. Ten attaches leave one copy.
//! * Nothing is deleted: a certificate bootforge did not add is the operator's. A BMC that holds
//!   only one (sushy-tools answers a second POST with 409) fails the attach with a message
//!   naming the certificate in the way, rather than have bootforge replace someone's trust.
//! * A device without a `Certificates` collection keeps today's behaviour (insert without
//!   touching verification) and the report says so in a note: such BMCs either do not verify
//!   media certificates or take their CAs through a vendor interface.
//! * The POST that adds a certificate is retried only when it certainly did not run
//!   ([`Retry::Once`]): a retried create could add a second copy.

use super::client::{members, Resource};
use super::transport::{Retry, Session};
use super::{untrusted, RedfishError, TrustReport};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Certificates a BMC may already hold for one device, at most (more are not read).
const MAX_EXISTING: usize = 32;

/// The CA certificates a BMC must trust to fetch our `https://` media (`serve --tls-ca`).
#[derive(Debug, Clone)]
pub struct MediaCa {
    certs: Vec<CertificateDer<'static>>,
    /// Where they come from, for messages (`--tls-ca /etc/bootforge/ca.pem`).
    source: String,
}

impl MediaCa {
    /// The certificates of a PEM file; an error names the file and the certificate.
    pub fn load(path: &Path, flag: &str) -> Result<MediaCa, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the CA file {} ({flag}): {e}", path.display()))?;
        MediaCa::from_pem(&pem, &format!("{flag} {}", path.display()))
    }

    /// The certificates of PEM text; `source` names it in messages.
    pub fn from_pem(pem: &[u8], source: &str) -> Result<MediaCa, String> {
        let mut certs = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            certs.push(cert.map_err(|e| format!("{source}: certificate {}: {e}", i + 1))?);
        }
        if certs.is_empty() {
            return Err(format!("{source} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(MediaCa { certs, source: source.to_string() })
    }

    /// Where the certificates come from (`--tls-ca FILE`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The SHA-256 of each certificate (hex), for the audit log and reports.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| hex::encode(Sha256::digest(c.as_ref()))).collect()
    }
}

/// What [`super::Client::attach_within`] needs to make a BMC trust an `https://` image: the
/// CA, and whom to tell the moment the BMC's trust has changed (the audit log, which must
/// record the change even if a later step of the attach fails).
#[derive(Clone, Copy)]
pub struct Enroll<'a> {
    pub ca: &'a MediaCa,
    pub on_change: &'a dyn Fn(&TrustReport),
}

/// `der` as PEM, the one encoding Redfish's `CertificateType: PEM` names.
///
/// By hand: rustls' pki-types only parses PEM, and the format is the base64 of the DER in lines
/// of 64 between two fixed lines (RFC 7468); a crate for these five lines is not worth it.
fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Makes the virtual media device `media` trust `ca` for its image URL and verify it; returns
/// what it did and the device as read afterwards (its ETag may have changed).
///
/// `on_change` is told what changed on the BMC once the steps end, also when a later step
/// failed: a CA added before a refused `VerifyCertificate`, or a deadline, still changed what
/// the BMC trusts, and that must leave its audit record.
pub(super) fn ensure(
    s: &Session<'_>,
    media: Resource,
    ca: &MediaCa,
    on_change: &dyn Fn(&TrustReport),
) -> Result<(TrustReport, Resource), RedfishError> {
    let mut report = TrustReport {
        status: "present",
        fingerprints: ca.fingerprints(),
        certificates: Vec::new(),
        added: 0,
        verify_set: false,
        verify: media.body["VerifyCertificate"].as_bool(),
        note: None,
    };
    let result = steps(s, media, ca, &mut report);
    if report.changed() {
        on_change(&report);
    }
    result.map(|media| (report, media))
}

/// [`ensure`]'s steps, each recorded in `report` as soon as it changed the BMC.
fn steps(
    s: &Session<'_>,
    media: Resource,
    ca: &MediaCa,
    report: &mut TrustReport,
) -> Result<Resource, RedfishError> {
    let Some(collection) = media.link(s, "Certificates")? else {
        report.status = "unsupported";
        report.note = Some(format!(
            "the BMC's virtual CD has no Certificates collection, so bootforge cannot enroll the \
             CA of {}: the BMC fetches the https image with its own trust (many do not check \
             it at all); enroll the CA through the BMC's own interface if it verifies, or hand \
             it an http:// media URL",
            ca.source
        ));
        return Ok(media);
    };
    let listing = s.get(&collection)?;
    if let Some(formats) = listing.body["@Redfish.SupportedCertificates"].as_array() {
        if !formats.iter().any(|f| f == "PEM") {
            report.status = "unsupported";
            report.note = Some(format!(
                "the BMC's virtual CD takes certificates only as {}, not PEM; nothing was enrolled",
                untrusted(&Value::Array(formats.clone()).to_string(), 120)
            ));
            return Ok(media);
        }
    }
    // Every certificate the device trusts now, by DER, with the resource holding it.
    let mut held: Vec<(Vec<u8>, String)> = Vec::new();
    let mut others = Vec::new();
    for member in members(s, &collection, MAX_EXISTING)? {
        let cert = s.get(&member)?;
        let text = cert.body["CertificateString"].as_str().unwrap_or("");
        let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(text.as_bytes())
            .filter_map(Result::ok)
            .map(|d| d.as_ref().to_vec())
            .collect();
        if !ders.iter().any(|d| ca.certs.iter().any(|c| c.as_ref() == d.as_slice())) {
            others.push(member.clone());
        }
        held.extend(ders.into_iter().map(|d| (d, member.clone())));
    }
    for cert in &ca.certs {
        if let Some((_, at)) = held.iter().find(|(d, _)| d.as_slice() == cert.as_ref()) {
            if !report.certificates.contains(at) {
                report.certificates.push(at.clone());
            }
            continue;
        }
        let body = json!({"CertificateString": pem(cert.as_ref()), "CertificateType": "PEM"});
        let reply = match s.post(&collection, &body, Retry::Once, "adding a certificate") {
            Ok(reply) => reply,
            Err(RedfishError::Status { status, message, .. }) if !others.is_empty() => {
                return Err(RedfishError::Unsupported {
                    url: collection.clone(),
                    message: format!(
                        "its virtual CD refused the CA of {} (HTTP {status}: {message}) while it \
                         holds another certificate bootforge did not add ({}); if that one is \
                         stale (an old CA of the service), delete it on the BMC and attach again",
                        ca.source,
                        others.iter().map(|o| untrusted(o, 200)).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        report.added += 1;
        let at = match reply.location.as_deref() {
            Some(l) => s.resolve(l)?,
            None => reply.body["@odata.id"]
                .as_str()
                .map(|id| s.resolve(id))
                .transpose()?
                .unwrap_or_else(|| collection.clone()),
        };
        report.certificates.push(at);
    }
    if report.added > 0 {
        report.status = "enrolled";
    }
    let media = match media.body.get("VerifyCertificate") {
        Some(Value::Bool(true)) => media,
        Some(_) => {
            super::client::patch_with_etag(
                s,
                &media,
                &json!({"VerifyCertificate": true}),
                "turning VerifyCertificate on",
            )?;
            report.verify_set = true;
            media.reload(s)?
        }
        None => {
            report.note = Some(
                "the BMC's virtual CD does not say whether it verifies the image's certificate \
                 (no VerifyCertificate property); the CA is enrolled for when it does"
                    .into(),
            );
            media
        }
    };
    report.verify = media.body["VerifyCertificate"].as_bool();
    if report.verify_set && report.verify != Some(true) {
        return Err(RedfishError::Protocol {
            url: media.url.clone(),
            message: "it accepted VerifyCertificate: true but reads back without it".into(),
        });
    }
    Ok(media)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = pem(&der);
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        let back: Vec<_> =
            CertificateDer::pem_slice_iter(text.as_bytes()).map(|c| c.unwrap()).collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref(), der.as_slice());
    }

    #[test]
    fn a_file_without_certificates_is_named() {
        let e = MediaCa::from_pem(b"not a certificate\n", "--tls-ca /x/ca.pem").unwrap_err();
        assert!(e.contains("--tls-ca /x/ca.pem holds no PEM certificate"), "{e}");
    }
}
