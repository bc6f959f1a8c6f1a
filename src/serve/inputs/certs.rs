//! The service's own certificate and key (`--tls-cert`, `--tls-key`): loaded at start, where any
//! problem stops the start-up with a message naming the file, and reloaded when either file
//! changes, so a renewal needs no restart.
//!
//! Invariants:
//! * **A pair is checked whole before it serves**: both files read, a certificate chain and a
//!   private key found, the key usable by the *ring* provider (RSA of 2048 bits or more, ECDSA
//!   P-256/P-384, Ed25519) and the key matching the leaf (the first certificate).
//! * **A bad new pair never replaces a good one.** A reload that fails keeps serving the pair
//!   loaded last, and says why in `/status` (`tls.last_error`, naming the file) and the log,
//!   until a later change loads.
//! * **Changed files are read once they have settled** ([`SETTLE`] without a further change),
//!   so a renewal that writes the key and the certificate one after the other, or rewrites a
//!   chain in place, is read whole: no error for a half-done renewal, no chain cut short.
//! * Reloads run one at a time, so a slow one cannot put an older pair back after a newer one.
//! * Handshakes read the pair in place through [`ServerCert`], rustls's certificate resolver:
//!   a reload is one pointer swap, and a handshake in progress keeps the pair it started with.
//!
//! Files are watched like the other inputs: their size, mtime and inode, on the reload
//! watcher's poll (see [`crate::serve::inputs::catalog::POLL`]); a SIGHUP or `POST
//! /admin/reload` also reloads.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// What `/status` shows of the certificate served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// The leaf's subject, as `CN=boot.lab, O=…`.
    pub subject: String,
    pub issuer: String,
    /// The leaf's subjectAltName entries (`DNS:boot.lab`, `IP:10.0.2.2`).
    pub names: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
    pub not_after_unix: i64,
    /// `RSA 2048`, `ECDSA 256`, …
    pub key: String,
    /// Certificates in the chain file, the leaf included.
    pub chain_len: usize,
}

/// What `/status` shows under `tls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertStatus {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate being served.
    pub serving: CertInfo,
    /// When the pair served was loaded (RFC 3339).
    pub loaded_at: String,
    /// Successful loads, the first included.
    pub loads: u64,
    /// Why the last reload failed (naming the file), until a later one succeeds.
    pub last_error: Option<String>,
    /// Failed reloads since the start.
    pub failures: u64,
}

/// (size, mtime s, mtime ns, inode) of one file; all zero for a missing or unreadable one.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        .unwrap_or_default()
}

/// How long changed files must stay unchanged before a reload reads them. Renewal tools write
/// the key and the certificate one after the other, or rewrite a chain file in place; reading
/// in between would load a mismatched pair (an error for nothing) or a chain cut after the
/// leaf (served without its intermediate). Both writes land well within this.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The reload watcher's view of the two files.
#[derive(Debug)]
struct Watch {
    /// Their stamps when the pair was last read (loaded or refused).
    loaded: (Stamp, Stamp),
    /// New stamps seen, and since when they have not changed.
    pending: Option<((Stamp, Stamp), std::time::Instant)>,
}

/// The served pair, rustls's certificate resolver, reloaded in place.
#[derive(Debug)]
pub struct ServerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last loaded and a change waiting to settle; held for a whole reload.
    watch: Mutex<Watch>,
    status: Mutex<CertStatus>,
    /// Run after each successful load, the first included (see [`ServerCert::advise_with`]).
    advice: std::sync::OnceLock<Advice>,
}

/// Advice on a freshly loaded pair: `serve` checks it as iPXE would and logs what would stop
/// nodes (set once the listener's address is known, which is after the first load).
pub struct Advice(pub Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Advice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Advice")
    }
}

impl ServerCert {
    /// Loads the pair; any problem is an error naming the file, for the start-up to stop on.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<ServerCert> {
        let stamps = (stamp(cert_file), stamp(key_file));
        let (key, info) = load_pair(cert_file, key_file)?;
        warn_if_expiring(cert_file, &info);
        Ok(ServerCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
            watch: Mutex::new(Watch { loaded: stamps, pending: None }),
            advice: std::sync::OnceLock::new(),
            status: Mutex::new(CertStatus {
                cert_file: cert_file.to_path_buf(),
                key_file: key_file.to_path_buf(),
                serving: info,
                loaded_at: crate::serve::util::rfc3339(crate::serve::util::now_ms()),
                loads: 1,
                last_error: None,
                failures: 0,
            }),
        })
    }

    /// Sets the advice run now and again after every reload that loads a new pair, so a renewal
    /// that iPXE would refuse (a new name, an ECDSA key) is logged as when the service started.
    pub fn advise_with(&self, advice: Advice) {
        (advice.0)();
        let _ = self.advice.set(advice);
    }

    pub fn status(&self) -> CertStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the pair if either file changed and has then stayed unchanged for [`SETTLE`]
    /// (or at once, with `force`: SIGHUP, `POST /admin/reload`). Returns whether a new pair now
    /// serves; a pair that does not load keeps the old one (see the module doc).
    ///
    /// One reload at a time: the watcher and `/admin/reload` may call this together, and two
    /// loads racing could otherwise swap an older pair back in after a newer one.
    pub fn reload_if_changed(&self, force: bool) -> bool {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        if !force {
            if watch.loaded == now {
                watch.pending = None;
                return false;
            }
            match watch.pending {
                Some((stamps, since)) if stamps == now => {
                    if since.elapsed() < SETTLE {
                        return false;
                    }
                }
                _ => {
                    watch.pending = Some((now, std::time::Instant::now()));
                    return false;
                }
            }
        }
        watch.loaded = now;
        watch.pending = None;
        let loaded = load_pair(&self.cert_file, &self.key_file);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok((key, info)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                tracing::info!(
                    cert = %self.cert_file.display(),
                    subject = %info.subject,
                    names = ?info.names,
                    not_after = %info.not_after,
                    "TLS certificate reloaded"
                );
                warn_if_expiring(&self.cert_file, &info);
                status.serving = info;
                status.loaded_at = crate::serve::util::rfc3339(crate::serve::util::now_ms());
                status.loads += 1;
                status.last_error = None;
                drop(status);
                if let Some(advice) = self.advice.get() {
                    (advice.0)();
                }
                true
            }
            Err(e) => {
                tracing::error!(
                    subject = %status.serving.subject,
                    not_after = %status.serving.not_after,
                    "TLS certificate reload failed, still serving the certificate loaded before: {e:#}"
                );
                status.last_error = Some(format!("{e:#}"));
                status.failures += 1;
                false
            }
        }
    }

    /// A rustls server configuration serving this pair: TLS 1.2 (what iPXE speaks) and 1.3,
    /// the *ring* provider, HTTP/1.1 offered by ALPN, session resumption by tickets.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| anyhow::anyhow!("the TLS provider offers neither TLS 1.2 nor 1.3: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Session tickets (keys of this process, rotated by rustls every 6 hours): a client
        // that comes back resumes without a full handshake, as with nginx's defaults. Clients
        // that do not resume (iPXE) are unaffected.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| anyhow::anyhow!("cannot start TLS session tickets: {e}"))?;
        Ok(Arc::new(config))
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reads and checks a pair: the chain (leaf first) and the key, which must match the leaf.
fn load_pair(cert_file: &Path, key_file: &Path) -> anyhow::Result<(CertifiedKey, CertInfo)> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the TLS {what} file {}: {e}", path.display()))
    };
    let pem = read(cert_file, "certificate")?;
    let mut chain = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        chain.push(cert.map_err(|e| {
            anyhow::anyhow!(
                "TLS certificate file {}: certificate {} is not valid PEM: {e}",
                cert_file.display(),
                i + 1
            )
        })?);
    }
    anyhow::ensure!(
        !chain.is_empty(),
        "TLS certificate file {} holds no certificate (-----BEGIN CERTIFICATE-----){}",
        cert_file.display(),
        if contains(&pem, b"PRIVATE KEY-----") {
            ": it holds a private key; is it the key file?"
        } else {
            ""
        }
    );
    let info = describe(&chain).map_err(|e| {
        anyhow::anyhow!("TLS certificate file {}: the first certificate {e}", cert_file.display())
    })?;
    let pem = read(key_file, "key")?;
    let key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let why = if contains(&pem, b"ENCRYPTED") {
                ": it is encrypted (decrypt it: openssl pkey -in KEY -out PLAIN-KEY)"
            } else if contains(&pem, b"BEGIN CERTIFICATE") {
                ": it holds a certificate; is it the certificate file?"
            } else {
                ""
            };
            anyhow::bail!(
                "TLS key file {} holds no private key (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY){why}",
                key_file.display()
            )
        }
        Err(e) => anyhow::bail!("TLS key file {} is not valid PEM: {e}", key_file.display()),
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        anyhow::anyhow!(
            "TLS key file {}: unsupported key ({e}); use RSA of 2048 bits or more, or ECDSA on P-256 or P-384",
            key_file.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            anyhow::bail!(
                "TLS key file {} does not match the certificate in {} (subject {}): they are not a pair",
                key_file.display(),
                cert_file.display(),
                info.subject
            )
        }
        Err(e) => anyhow::bail!(
            "TLS certificate file {} and key file {}: {e}",
            cert_file.display(),
            key_file.display()
        ),
    }
    Ok((certified, info))
}

/// How long before its expiry a certificate loaded draws a warning.
const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// Logs a warning when the certificate loaded has expired or expires soon: the service serves
/// it all the same (an expired certificate is the operator's to replace), but clients will
/// refuse it.
fn warn_if_expiring(cert_file: &Path, info: &CertInfo) {
    let now = (crate::serve::util::now_ms() / 1000) as i64;
    if info.not_after_unix <= now {
        tracing::warn!(cert = %cert_file.display(), not_after = %info.not_after, "the TLS certificate has expired: clients refuse it until it is renewed");
    } else if info.not_after_unix - now < EXPIRY_WARNING_SECS {
        tracing::warn!(cert = %cert_file.display(), not_after = %info.not_after, "the TLS certificate expires in less than 14 days");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The leaf's subject, names, expiry and key, for `/status` and the log.
fn describe(chain: &[CertificateDer<'_>]) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("is not an X.509 certificate: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => {
                    match (<[u8; 4]>::try_from(*ip), <[u8; 16]>::try_from(*ip)) {
                        (Ok(v4), _) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                        (_, Ok(v6)) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                        _ => "IP:?".to_string(),
                    }
                }
                other => other.to_string(),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("has an unreadable subjectAltName: {e}")),
    };
    let not_after = cert.validity().not_after.timestamp();
    let key = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(k)) => format!("RSA {}", k.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(k)) => format!("ECDSA {}", k.key_size()),
        Ok(_) | Err(_) => cert.public_key().algorithm.algorithm.to_id_string(),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_after: crate::serve::util::rfc3339((not_after.max(0) as u64).saturating_mul(1000)),
        not_after_unix: not_after,
        key,
        chain_len: chain.len(),
    })
}
