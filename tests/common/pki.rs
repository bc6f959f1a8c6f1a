//! Throwaway private CAs for the TLS tests, made with the `openssl` CLI: a CA, the leaf
//! certificates it signs with the properties that `bootforge tls check` and iPXE care about
//! (key type, subjectAltName, an OCSP responder, validity dates), and the CA as an
//! EFI_SIGNATURE_LIST, the format OVMF reads from fw_cfg `etc/edk2/https/cacerts` into the
//! `TlsCaCertificate` variable that iPXE's EFI builds trust.
//!
//! Shared by both harnesses: `tests/common` (`common::pki`) and `tests/serve_support`
//! (`support::pki`, included by path), so there is one way to make a certificate in the tests.
//! Dates in the past come from `faketime` (Debian package `faketime`), because the OpenSSL of
//! Debian 12 has no option to back-date `x509 -req`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The key of a CA or a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA of this many bits: what iPXE needs.
    Rsa(u32),
    /// ECDSA on P-256: fine for browsers and rustls, refused by iPXE.
    EcP256,
}

impl KeyKind {
    fn newkey_args(self) -> Vec<String> {
        match self {
            KeyKind::Rsa(bits) => vec!["-newkey".into(), format!("rsa:{bits}")],
            KeyKind::EcP256 => vec![
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:prime256v1".into(),
            ],
        }
    }
}

/// What a leaf certificate holds.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The subject's CN.
    pub common_name: String,
    /// subjectAltName entries as OpenSSL writes them: `IP:10.0.2.2`, `DNS:boot.lab`. Empty: no
    /// SAN extension at all.
    pub sans: Vec<String>,
    pub key: KeyKind,
    /// An OCSP responder URL in the Authority Information Access extension.
    pub ocsp: Option<String>,
    /// Sign it as of this date (`faketime` syntax, `2020-01-01`), for certificates that have
    /// already expired; `None`: now.
    pub signed_at: Option<String>,
    /// Days of validity from the signing date.
    pub days: u32,
}

impl LeafSpec {
    /// An RSA-2048 server certificate for `san` (`IP:127.0.0.1`), valid for two days.
    pub fn server(san: &str) -> LeafSpec {
        let cn = san.split_once(':').map_or(san, |(_, v)| v).to_string();
        LeafSpec {
            common_name: cn,
            sans: vec![san.to_string()],
            key: KeyKind::Rsa(2048),
            ocsp: None,
            signed_at: None,
            days: 2,
        }
    }
}

/// A leaf certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf alone.
    pub cert: PathBuf,
    /// The leaf followed by the CA: a full chain, as a server would be given.
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// A private CA in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    issued: std::cell::Cell<u32>,
}

/// Fails the test, naming the Debian package, when `tool` is not on the PATH.
fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "PREREQUISITE MISSING: `{tool}` is not installed (Debian package `{package}`; `scripts/setup --test` installs it)"
    );
}

fn openssl(dir: &Path, args: &[String], faketime: Option<&str>) {
    let mut cmd = match faketime {
        Some(at) => {
            require("faketime", "faketime");
            let mut c = Command::new("faketime");
            c.arg(at).arg("openssl");
            c
        }
        None => Command::new("openssl"),
    };
    let out = cmd.args(args).current_dir(dir).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Pki {
    /// A new CA named `name`, with a key of `key`, valid for 30 days.
    pub fn new(name: &str, key: KeyKind) -> Pki {
        require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let mut args = strings(&["req", "-x509", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"]);
        args.extend(key.newkey_args());
        args.extend(strings(&[
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        openssl(dir.path(), &args, None);
        Pki {
            ca_cert: dir.path().join("ca.pem"),
            ca_key: dir.path().join("ca.key"),
            dir,
            issued: std::cell::Cell::new(0),
        }
    }

    /// An RSA-2048 CA: what every iPXE test needs.
    pub fn rsa(name: &str) -> Pki {
        Pki::new(name, KeyKind::Rsa(2048))
    }

    /// Signs a leaf certificate of `spec`.
    pub fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let dir = self.dir.path();
        let (key, csr, cert, chain, ext) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.pem"),
            format!("leaf{n}-chain.pem"),
            format!("leaf{n}.ext"),
        );
        let mut args = strings(&["req", "-nodes", "-keyout", &key, "-out", &csr]);
        args.extend(spec.key.newkey_args());
        args.extend(strings(&["-subj", &format!("/CN={}", spec.common_name)]));
        openssl(dir, &args, None);
        let mut extensions = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        if !spec.sans.is_empty() {
            extensions += &format!("subjectAltName={}\n", spec.sans.join(","));
        }
        if let Some(url) = &spec.ocsp {
            extensions += &format!("authorityInfoAccess=OCSP;URI:{url}\n");
        }
        std::fs::write(dir.join(&ext), extensions).unwrap();
        let args = strings(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &spec.days.to_string(),
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        openssl(dir, &args, spec.signed_at.as_deref());
        let mut both = std::fs::read(dir.join(&cert)).unwrap();
        both.extend(std::fs::read(&self.ca_cert).unwrap());
        std::fs::write(dir.join(&chain), both).unwrap();
        Leaf { cert: dir.join(cert), chain: dir.join(chain), key: dir.join(key) }
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> Vec<u8> {
        pem_to_der(&std::fs::read_to_string(&self.ca_cert).unwrap())
    }

    /// Writes the CA as an EFI_SIGNATURE_LIST (`ca.esl`) and returns its path: give it to
    /// QEMU as `-fw_cfg name=etc/edk2/https/cacerts,file=PATH`.
    pub fn esl(&self) -> PathBuf {
        let path = self.dir.path().join("ca.esl");
        std::fs::write(&path, signature_list(&self.ca_der())).unwrap();
        path
    }
}

/// The first PEM block of `pem`, decoded.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM body is base64")
}

/// One EFI_SIGNATURE_LIST (UEFI spec, "Signature Database") holding one X.509 certificate:
/// the type GUID EFI_CERT_X509_GUID, the list size, a zero header size, the size of each
/// signature (owner GUID + DER), then the owner GUID and the DER. GUIDs are stored with their
/// first three fields little-endian.
pub fn signature_list(der: &[u8]) -> Vec<u8> {
    // EFI_CERT_X509_GUID a5c059a1-94e4-4aa7-87b5-ab155c2bf072.
    const X509: [u8; 16] = [
        0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0,
        0x72,
    ];
    // Any owner will do; this one reads "bootforge-testCA" in a hex dump.
    const OWNER: [u8; 16] = *b"bootforge-testCA";
    let signature_size = 16 + der.len();
    let list_size = 28 + signature_size;
    let mut out = Vec::with_capacity(list_size);
    out.extend_from_slice(&X509);
    out.extend_from_slice(&(list_size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(signature_size as u32).to_le_bytes());
    out.extend_from_slice(&OWNER);
    out.extend_from_slice(der);
    out
}
