//! Does a certificate chain suit the iPXE that bootforge ships?
//!
//! The rules are those measured with Debian's iPXE build (docs/TLS.md, "The certificate
//! profile iPXE needs"): TLS 1.2 only; RSA keys only, for the leaf and every CA above it; RSA
//! PKCS#1 v1.5 signatures with SHA-1 or SHA-2; the URL's host named by the certificate; no OCSP
//! responder (iPXE then insists on asking it); valid by the node's clock, which iPXE allows to
//! be 12.5 hours off either way.
//!
//! The name rule is iPXE's own `x509_check_name`: the subject's CN is compared first, then each
//! subjectAltName; a DNS name (the CN counts as one) matches when it is byte for byte the URL's
//! host (case matters), or when it starts with `*.` and the rest equals the host minus its first
//! label; an IP entry matches when the host is an address of the same family with the same
//! bytes. A match through the CN alone is a warning, since browsers and rustls ignore the CN.
//!
//! Invariant: [`check`] reads nothing but its arguments; parsing failures become
//! [`Problem::Unreadable`], which the command line turns into exit status 2.

use std::fmt;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::public_key::PublicKey;

use crate::inventory::ServerUrl;

/// iPXE's allowance for a node's clock being wrong, either way (`X509_ERROR_MARGIN_TIME`).
pub const CLOCK_SKEW_SECS: i64 = 12 * 3600 + 1800;
/// How long before its expiry a certificate draws a warning.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;
/// The smallest RSA key accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// Which input a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `--cert`: the chain the service sends (leaf first).
    Chain,
    /// `--ca`: the CA certificate(s) the nodes trust.
    Ca,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Input::Chain => "--cert",
            Input::Ca => "--ca",
        })
    }
}

/// One certificate, named for a reader: where it stands and its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub input: Input,
    /// 1-based position in its file.
    pub position: usize,
    pub subject: String,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.input, self.position) {
            (Input::Chain, 1) => write!(f, "the leaf ({}, certificate 1 of --cert)", self.subject),
            (input, n) => write!(f, "{} (certificate {n} of {input})", self.subject),
        }
    }
}

/// Something that stops iPXE from booting over HTTPS with this certificate. Each message names
/// the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A file holds no certificate, or one that does not parse.
    Unreadable {
        input: Input,
        why: String,
    },
    /// A key that is not RSA. `leaf`: iPXE finds no cipher suite (error 410de18f); a CA: iPXE
    /// cannot check what it signed (error 3c00e183).
    NotRsa {
        cert: Named,
        key: String,
    },
    RsaTooSmall {
        cert: Named,
        bits: usize,
    },
    /// A signature algorithm iPXE does not verify.
    Signature {
        cert: Named,
        algorithm: String,
    },
    /// The URL's host is not among the certificate's names.
    NameMismatch {
        host: String,
        names: Vec<String>,
    },
    /// An OCSP responder in Authority Information Access.
    Ocsp {
        cert: Named,
        url: String,
    },
    Expired {
        cert: Named,
        not_after: String,
    },
    NotYetValid {
        cert: Named,
        not_before: String,
    },
    /// Certificate `cert` is not issued by the one after it.
    NotIssuedByNext {
        cert: Named,
        issuer: String,
        next: Named,
    },
    /// Names match but the signature does not verify with the next certificate's key.
    BadSignature {
        cert: Named,
        next: Named,
        why: String,
    },
    /// With `--ca`: the chain does not end at (or under) any of them.
    NotUnderCa {
        last_issuer: String,
        cas: Vec<String>,
    },
}

impl Problem {
    /// A short stable name, for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Unreadable { .. } => "unreadable",
            Problem::NotRsa { .. } => "not-rsa",
            Problem::RsaTooSmall { .. } => "rsa-too-small",
            Problem::Signature { .. } => "signature-algorithm",
            Problem::NameMismatch { .. } => "name-mismatch",
            Problem::Ocsp { .. } => "ocsp-responder",
            Problem::Expired { .. } => "expired",
            Problem::NotYetValid { .. } => "not-yet-valid",
            Problem::NotIssuedByNext { .. } => "chain-order",
            Problem::BadSignature { .. } => "bad-signature",
            Problem::NotUnderCa { .. } => "not-under-ca",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable { input, why } => write!(f, "{input}: {why}"),
            Problem::NotRsa { cert, key } if cert.input == Input::Chain && cert.position == 1 => write!(
                f,
                "{cert} has a {key} key; iPXE speaks RSA only, so the handshake ends in the server's fatal alert (iPXE error 410de18f). Fix: issue the certificate with an RSA key of 2048 bits or more"
            ),
            Problem::NotRsa { cert, key } => write!(
                f,
                "{cert} has a {key} key; iPXE cannot check the signatures it makes (iPXE error 3c00e183). Fix: use a CA with an RSA key (2048 bits or more) for every certificate up to the root"
            ),
            Problem::RsaTooSmall { cert, bits } => write!(
                f,
                "{cert} has an RSA key of {bits} bits. Fix: reissue it with {MIN_RSA_BITS} bits or more"
            ),
            Problem::Signature { cert, algorithm } => write!(
                f,
                "{cert} is signed with {algorithm}, which iPXE does not verify. Fix: have its issuer sign it with sha256WithRSAEncryption (RSA PKCS#1 v1.5; not RSA-PSS, not ECDSA)"
            ),
            Problem::NameMismatch { host, names } => write!(
                f,
                "the certificate does not name {host}, the host of the server URL (it names: {}). Fix: reissue it with subjectAltName {}",
                if names.is_empty() { "nothing".to_string() } else { names.join(", ") },
                if host.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{host}")
                } else {
                    format!("DNS:{host}")
                }
            ),
            Problem::Ocsp { cert, url } => write!(
                f,
                "{cert} names the OCSP responder {url}; iPXE then insists on asking it and fails the boot when it cannot. Fix: issue it without an OCSP responder (no authorityInfoAccess OCSP entry)"
            ),
            Problem::Expired { cert, not_after } => write!(
                f,
                "{cert} expired at {not_after}. Fix: renew it"
            ),
            Problem::NotYetValid { cert, not_before } => write!(
                f,
                "{cert} is not valid before {not_before}. Fix: check the issuing machine's clock, or wait"
            ),
            Problem::NotIssuedByNext { cert, issuer, next } => write!(
                f,
                "{cert} is issued by {issuer}, but the next certificate is {next}. Fix: order the file leaf first, then each issuer after what it issued"
            ),
            Problem::BadSignature { cert, next, why } => write!(
                f,
                "{cert} names {next} as its issuer, but its signature does not verify with that certificate's key ({why}). Fix: put the certificate that really issued it after it"
            ),
            Problem::NotUnderCa { last_issuer, cas } => write!(
                f,
                "the chain ends at a certificate issued by {last_issuer}, which is none of the --ca certificates ({}). Fix: give the CA that issued the chain, or append the missing intermediates to --cert",
                cas.join(", ")
            ),
        }
    }
}

/// What a check found: problems (iPXE fails), warnings (it may fail, or others will), facts.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
    pub facts: Vec<String>,
}

impl Report {
    /// Whether an input could not be read (exit status 2).
    pub fn unreadable(&self) -> bool {
        self.problems.iter().any(|p| matches!(p, Problem::Unreadable { .. }))
    }

    /// The report as lines: `problem: …`, then `warning: …`, then `ok: …`.
    pub fn lines(&self) -> Vec<String> {
        let problems = self.problems.iter().map(|p| format!("problem: {p}"));
        let warnings = self.warnings.iter().map(|w| format!("warning: {w}"));
        let facts = self.facts.iter().map(|f| format!("ok: {f}"));
        problems.chain(warnings).chain(facts).collect()
    }

    /// The report for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "problems": self.problems.iter()
                .map(|p| serde_json::json!({"code": p.code(), "message": p.to_string()}))
                .collect::<Vec<_>>(),
            "warnings": self.warnings,
            "facts": self.facts,
        })
    }
}

/// The certificates (DER) of a PEM file, in order; an error names what is wrong.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| format!("PEM block {} is unreadable: {e}", i + 1))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(out)
}

/// The host of a server URL, without brackets for IPv6. `ServerUrl` has already refused user
/// information, so the authority is `HOST[:PORT]`.
fn host_of(url: &ServerUrl) -> &str {
    let rest = url.as_str().split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// iPXE's `x509_check_dnsname`: exact bytes, or `*.REST` matching the host minus its first label.
fn dns_name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host.split_once('.').is_some_and(|(_, tail)| tail == rest),
        None => pattern == host,
    }
}

fn rfc3339(t: i64) -> String {
    crate::serve::util::rfc3339((t.max(0) as u64).saturating_mul(1000))
}

fn key_of(cert: &X509Certificate<'_>) -> Result<usize, String> {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(k)) => Ok(k.key_size()),
        Ok(PublicKey::EC(k)) => Err(format!("ECDSA ({} bits)", k.key_size())),
        _ => Err(cert.public_key().algorithm.algorithm.to_id_string()),
    }
}

/// The signature algorithms iPXE verifies: PKCS#1 v1.5 with SHA-1, SHA-224, SHA-256, SHA-384
/// and SHA-512.
fn ipxe_verifies(oid: &str) -> Option<&'static str> {
    match oid {
        "1.2.840.113549.1.1.5" => Some("sha1WithRSAEncryption"),
        "1.2.840.113549.1.1.14" => Some("sha224WithRSAEncryption"),
        "1.2.840.113549.1.1.11" => Some("sha256WithRSAEncryption"),
        "1.2.840.113549.1.1.12" => Some("sha384WithRSAEncryption"),
        "1.2.840.113549.1.1.13" => Some("sha512WithRSAEncryption"),
        _ => None,
    }
}

fn algorithm_name(oid: &str) -> String {
    let known = match oid {
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.3.101.112" => "Ed25519",
        _ => return format!("the algorithm {oid}"),
    };
    known.to_string()
}

fn ocsp_urls(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for desc in &aia.accessdescs {
                if desc.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1" {
                    out.push(match &desc.access_location {
                        GeneralName::URI(u) => u.to_string(),
                        other => other.to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Checks the chain `chain_pem` (leaf first, then intermediates) for iPXE booting from
/// `server`, at unix time `now`. `ca_pem`: the CA certificate(s) the nodes trust.
pub fn check(chain_pem: &[u8], ca_pem: Option<&[u8]>, server: &ServerUrl, now: i64) -> Report {
    let mut report = Report::default();
    if !server.as_str().starts_with("https://") {
        report
            .facts
            .push(format!("{server} is plain http: nodes use no certificate, nothing to check"));
        return report;
    }
    let chain_der = match pem_certificates(chain_pem) {
        Ok(c) => c,
        Err(why) => {
            report.problems.push(Problem::Unreadable { input: Input::Chain, why });
            return report;
        }
    };
    let ca_der = match ca_pem.map(pem_certificates).transpose() {
        Ok(c) => c,
        Err(why) => {
            report.problems.push(Problem::Unreadable { input: Input::Ca, why });
            return report;
        }
    };
    let chain = match parse(Input::Chain, &chain_der) {
        Ok(c) => c,
        Err(p) => {
            report.problems.push(p);
            return report;
        }
    };
    let cas = match ca_der.as_deref().map(|d| parse(Input::Ca, d)).transpose() {
        Ok(c) => c,
        Err(p) => {
            report.problems.push(p);
            return report;
        }
    };
    let named = |input: Input, i: usize, c: &X509Certificate<'_>| Named {
        input,
        position: i + 1,
        subject: c.subject().to_string(),
    };
    report.facts.push(
        "TLS 1.2 is always on in `bootforge serve` (iPXE has no TLS 1.3), with ECDHE-RSA AES-GCM suites iPXE takes".into(),
    );

    // Keys, signatures, OCSP and validity of every certificate the service sends.
    for (i, cert) in chain.iter().enumerate() {
        let who = named(Input::Chain, i, cert);
        check_key(&mut report, &who, cert);
        let sig = cert.signature_algorithm.algorithm.to_id_string();
        if ipxe_verifies(&sig).is_none() {
            report
                .problems
                .push(Problem::Signature { cert: who.clone(), algorithm: algorithm_name(&sig) });
        }
        for url in ocsp_urls(cert) {
            report.problems.push(Problem::Ocsp { cert: who.clone(), url });
        }
        check_validity(&mut report, &who, cert, now);
    }

    // The name, on the leaf.
    check_name(&mut report, &chain[0], host_of(server));

    // The order: each certificate issued by the next.
    for (i, pair) in chain.windows(2).enumerate() {
        let (cert, next) = (&pair[0], &pair[1]);
        let (who, next_who) = (named(Input::Chain, i, cert), named(Input::Chain, i + 1, next));
        if cert.issuer().as_raw() != next.subject().as_raw() {
            report.problems.push(Problem::NotIssuedByNext {
                cert: who,
                issuer: cert.issuer().to_string(),
                next: next_who,
            });
        } else if let Err(e) = cert.verify_signature(Some(next.public_key())) {
            report.problems.push(Problem::BadSignature {
                cert: who,
                next: next_who,
                why: e.to_string(),
            });
        }
    }
    let last = chain.last().expect("pem_certificates returns at least one");
    let last_who = named(Input::Chain, chain.len() - 1, last);

    // The anchor: the --ca certificate the chain ends at or under.
    match &cas {
        None => {
            let root = if last.subject().as_raw() == last.issuer().as_raw() {
                format!("{} (the chain's own last certificate, self-signed)", last.subject())
            } else {
                last.issuer().to_string()
            };
            report.facts.push(format!(
                "no --ca given: the nodes' firmware must trust {root} (UEFI variable TlsCaCertificate; see docs/TLS.md)"
            ));
        }
        Some(cas) => {
            let last_der = chain_der.last().expect("at least one");
            let equal = ca_der.as_deref().unwrap_or_default().iter().position(|d| d == last_der);
            let issuer = cas.iter().position(|ca| {
                last.issuer().as_raw() == ca.subject().as_raw()
                    && last.verify_signature(Some(ca.public_key())).is_ok()
            });
            match (equal, issuer) {
                (Some(i), _) => report.facts.push(format!(
                    "the chain ends at {}, which the nodes must trust",
                    named(Input::Ca, i, &cas[i])
                )),
                (None, Some(i)) => {
                    let who = named(Input::Ca, i, &cas[i]);
                    check_key(&mut report, &who, &cas[i]);
                    check_validity(&mut report, &who, &cas[i], now);
                    report
                        .facts
                        .push(format!("{last_who} is issued by {who}, which the nodes must trust"));
                }
                (None, None) => report.problems.push(Problem::NotUnderCa {
                    last_issuer: last.issuer().to_string(),
                    cas: cas.iter().map(|c| c.subject().to_string()).collect(),
                }),
            }
        }
    }
    if report.problems.is_empty() {
        report.facts.push(format!(
            "{} certificate(s), every key RSA of {MIN_RSA_BITS} bits or more, signed with RSA PKCS#1, no OCSP responder",
            chain.len()
        ));
    }
    report
}

fn parse(input: Input, ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, Problem> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der).map(|(_, c)| c).map_err(|e| {
                Problem::Unreadable {
                    input,
                    why: format!("certificate {} is not X.509: {e}", i + 1),
                }
            })
        })
        .collect()
}

fn check_key(report: &mut Report, who: &Named, cert: &X509Certificate<'_>) {
    match key_of(cert) {
        Ok(bits) if bits < MIN_RSA_BITS => {
            report.problems.push(Problem::RsaTooSmall { cert: who.clone(), bits })
        }
        Ok(_) => {}
        Err(key) => report.problems.push(Problem::NotRsa { cert: who.clone(), key }),
    }
}

fn check_validity(report: &mut Report, who: &Named, cert: &X509Certificate<'_>, now: i64) {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now > not_after {
        report.problems.push(Problem::Expired { cert: who.clone(), not_after: rfc3339(not_after) });
    } else if now < not_before {
        report
            .problems
            .push(Problem::NotYetValid { cert: who.clone(), not_before: rfc3339(not_before) });
    } else if now - not_before < CLOCK_SKEW_SECS {
        report.warnings.push(format!(
            "{who} became valid at {}, less than 12.5 hours ago: a node whose clock is behind by more than that refuses it",
            rfc3339(not_before)
        ));
    } else if not_after - now < CLOCK_SKEW_SECS {
        report.warnings.push(format!(
            "{who} expires at {}, in less than 12.5 hours (a node whose clock is ahead refuses it sooner): renew it now",
            rfc3339(not_after)
        ));
    } else if not_after - now < EXPIRY_WARNING_SECS {
        report.warnings.push(format!(
            "{who} expires at {}, in less than 14 days: renew it",
            rfc3339(not_after)
        ));
    }
}

fn check_name(report: &mut Report, leaf: &X509Certificate<'_>, host: &str) {
    let ip = host.parse::<std::net::IpAddr>().ok();
    let cn: Vec<String> = leaf
        .subject()
        .iter_common_name()
        .filter_map(|c| c.as_str().ok().map(str::to_string))
        .collect();
    let mut names = Vec::new();
    let mut san_match = None;
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    names.push(format!("DNS:{d}"));
                    if dns_name_matches(d, host) {
                        san_match.get_or_insert(format!("DNS:{d}"));
                    }
                }
                GeneralName::IPAddress(bytes) => {
                    let addr = match (<[u8; 4]>::try_from(*bytes), <[u8; 16]>::try_from(*bytes)) {
                        (Ok(v4), _) => Some(std::net::IpAddr::from(v4)),
                        (_, Ok(v6)) => Some(std::net::IpAddr::from(v6)),
                        _ => None,
                    };
                    let shown = addr.map_or("IP:?".to_string(), |a| format!("IP:{a}"));
                    if addr.is_some() && addr == ip {
                        san_match.get_or_insert(shown.clone());
                    }
                    names.push(shown);
                }
                other => names.push(other.to_string()),
            }
        }
    }
    let cn_match = cn.first().filter(|c| dns_name_matches(c, host));
    match (san_match, cn_match) {
        (Some(m), _) => report.facts.push(format!("the leaf names {host} (subjectAltName {m})")),
        (None, Some(c)) => {
            report.facts.push(format!("iPXE takes the leaf for {host} through its CN {c}"));
            report.warnings.push(format!(
                "the leaf names {host} only in its CN ({c}), not in a subjectAltName: iPXE accepts it, but browsers and rustls (bootforge's own clients) ignore the CN. Add subjectAltName {}",
                if ip.is_some() { format!("IP:{host}") } else { format!("DNS:{host}") }
            ));
        }
        (None, None) => {
            let mut all: Vec<String> = cn.iter().map(|c| format!("CN={c}")).collect();
            all.extend(names);
            report.problems.push(Problem::NameMismatch { host: host.to_string(), names: all });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_match_as_ipxe_does() {
        assert!(dns_name_matches("boot.lab", "boot.lab"));
        assert!(!dns_name_matches("Boot.lab", "boot.lab"), "iPXE compares bytes");
        assert!(dns_name_matches("*.lab", "boot.lab"));
        assert!(!dns_name_matches("*.lab", "a.boot.lab"), "one label only");
        assert!(!dns_name_matches("*.lab", "lab"));
        assert!(!dns_name_matches("*.boot.lab", "boot.lab"));
    }

    #[test]
    fn hosts_come_out_of_urls() {
        let h = |u: &str| host_of(&u.parse().unwrap()).to_string();
        assert_eq!(h("https://10.0.2.2:8443/x"), "10.0.2.2");
        assert_eq!(h("https://boot.lab"), "boot.lab");
        assert_eq!(h("https://[fd00::1]:8443"), "fd00::1");
    }
}
