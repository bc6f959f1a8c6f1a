//! `bootforge serve --listen-tls`: the service's own TLS listener, against real TLS clients.
//!
//! What this file proves: RSA and ECDSA pairs (PKCS#8, PKCS#1 and SEC1 keys) serve TLS 1.2 and
//! TLS 1.3 clients, which resume their sessions when they come back; a bad pair stops the start-up with an error naming the file (missing,
//! no certificate, no key, a key of another certificate, an unsupported key), from the library
//! and from the command line; a renewed pair is served without a restart, a bad replacement
//! keeps the old one serving and says why in `/status`; over TLS the session cookie is `Secure`
//! and answers carry HSTS, over the plain listener beside it neither (whatever the headers
//! say); URLs handed to nodes and BMCs are `https://` when the service is; and the API clients
//! take `https://` with `--ca-file`, and say to pass it when the certificate is not trusted.
//! The hostile side of TLS (stalled and trickled handshakes, caps, slow senders) is in
//! tests/serve_hostile.rs; the API tests run over TLS in tests/serve_api.rs.

#[path = "serve_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pki::{KeyKind, LeafSpec, Pki};
use support::*;

const MAC1: &str = "aa:bb:cc:dd:ee:01";

/// A verifying client configuration trusting `ca` (PEM), offering `versions`.
fn client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let roots =
        bootforge::cafile::roots(Some(ca), "test CA", bootforge::cafile::Trust::FileInstead)
            .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// What one TLS connection saw: the protocol version, the leaf certificate the server showed
/// (DER) and the answer to `GET /healthz`.
struct Seen {
    version: rustls::ProtocolVersion,
    kind: rustls::HandshakeKind,
    leaf: Vec<u8>,
    answer: String,
}

/// `GET /healthz` over a new TLS connection to `addr` with `config`.
fn handshake(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Seen, String> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    Ok(Seen {
        version: conn.protocol_version().ok_or("no version")?,
        kind: conn.handshake_kind().ok_or("no handshake")?,
        leaf: conn.peer_certificates().ok_or("no certificate")?[0].to_vec(),
        answer: String::from_utf8_lossy(&answer).into_owned(),
    })
}

fn tls_addr(f: &Fixture) -> String {
    f.base.strip_prefix("https://").unwrap().to_string()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    support::pki::pem_to_der(&std::fs::read_to_string(pem_file).unwrap())
}

/// A configuration over `dir` with a TLS listener for `leaf` (chain and key files).
fn config_with(dir: &Path, cert: &Path, key: &Path) -> bootforge::serve::Config {
    let mut config = full_config(dir, false);
    config.listen_tls = Some("127.0.0.1:0".into());
    config.tls_cert = Some(cert.to_path_buf());
    config.tls_key = Some(key.to_path_buf());
    config
}

/// Starts a server with `cert` and `key`, trusting `ca` for its https:// address.
fn start_pair(cert: &Path, key: &Path, ca: &Path) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), cert, key);
    config.tls_ca = Some(ca.to_path_buf());
    let server = bootforge::serve::Server::start(config.clone()).expect("server starts");
    let tls = server.local_tls_addr().unwrap();
    trust(&tls.to_string(), ca);
    Fixture {
        dir,
        base: format!("https://{tls}"),
        plain_base: Some(format!("http://{}", server.local_addr())),
        server: Some(server),
        config,
        pki: None,
    }
}

/// The key in `key` rewritten in OpenSSL's traditional format (PKCS#1 for RSA, SEC1 for EC).
fn traditional(key: &Path) -> PathBuf {
    let out = key.with_extension("trad.pem");
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(key)
        .arg("-out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

#[test]
fn rsa_and_ecdsa_pairs_serve_tls_1_2_and_1_3_clients() {
    let rsa = Pki::rsa("rsa CA");
    let ec = Pki::new("ec CA", KeyKind::EcP256);
    let rsa_leaf = rsa.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let ec_leaf = ec.leaf(&LeafSpec { key: KeyKind::EcP256, ..LeafSpec::server("IP:127.0.0.1") });
    let rsa_pkcs1 = traditional(&rsa_leaf.key);
    let ec_sec1 = traditional(&ec_leaf.key);
    assert!(std::fs::read_to_string(&rsa_pkcs1).unwrap().contains("BEGIN RSA PRIVATE KEY"));
    assert!(std::fs::read_to_string(&ec_sec1).unwrap().contains("BEGIN EC PRIVATE KEY"));
    let cases = [
        ("RSA, PKCS#8 key", &rsa_leaf.chain, &rsa_leaf.key, &rsa.ca_cert, &rsa_leaf.cert),
        ("RSA, PKCS#1 key", &rsa_leaf.chain, &rsa_pkcs1, &rsa.ca_cert, &rsa_leaf.cert),
        ("ECDSA, PKCS#8 key", &ec_leaf.chain, &ec_leaf.key, &ec.ca_cert, &ec_leaf.cert),
        ("ECDSA, SEC1 key", &ec_leaf.chain, &ec_sec1, &ec.ca_cert, &ec_leaf.cert),
    ];
    for (what, cert, key, ca, leaf) in cases {
        let mut f = start_pair(cert, key, ca);
        for (version, wanted) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let config = client(ca, &[version]);
            let seen = handshake(&tls_addr(&f), config.clone())
                .unwrap_or_else(|e| panic!("{what}, {wanted:?}: {e}"));
            assert_eq!(seen.version, wanted, "{what}");
            assert_eq!(seen.kind, rustls::HandshakeKind::Full, "{what}");
            // The same client again resumes its session instead of a full handshake.
            let again = handshake(&tls_addr(&f), config).unwrap();
            assert_eq!(again.kind, rustls::HandshakeKind::Resumed, "{what}, {wanted:?}");
            assert_eq!(seen.leaf, der_of(leaf), "{what}: another certificate was served");
            assert!(seen.answer.starts_with("HTTP/1.1 200 "), "{what}: {}", seen.answer);
        }
        let m = call("GET", &f.url("/metrics"), None, None).body;
        for v in ["1.2", "1.3"] {
            let line = format!("bootforge_tls_handshakes_total{{version=\"{v}\"}} ");
            let n: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{what}: no {line} in\n{m}"));
            assert!(n >= 1, "{what}: {line}{n}");
        }
        f.stop();
    }
}

/// What the iPXE we ship offers and rustls can meet (checked by booting it against nginx
/// restricted to one suite and group at a time, docs/TLS.md): TLS 1.2, ECDHE with RSA
/// signatures, AES-GCM, and X25519, P-256 or P-384. iPXE has no ChaCha20 and no TLS 1.3, so
/// the service must keep offering exactly this; each combination alone must handshake.
#[test]
fn every_suite_and_group_ipxe_speaks_is_served() {
    use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
    let ca = Pki::rsa("CA");
    let leaf = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let mut f = start_pair(&leaf.chain, &leaf.key, &ca.ca_cert);
    let roots = bootforge::cafile::roots(
        Some(&ca.ca_cert),
        "test CA",
        bootforge::cafile::Trust::FileInstead,
    )
    .unwrap();
    for suite in [
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ] {
        for group in [kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1] {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                kx_groups: vec![group],
                ..default_provider()
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let what = format!("{:?} with {:?}", suite.suite(), group.name());
            let seen = handshake(&tls_addr(&f), Arc::new(config))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(seen.version, rustls::ProtocolVersion::TLSv1_2, "{what}");
            assert!(seen.answer.starts_with("HTTP/1.1 200 "), "{what}: {}", seen.answer);
        }
    }
    f.stop();
}

#[test]
fn a_bad_pair_stops_the_start_naming_the_file() {
    let ca = Pki::rsa("CA");
    let one = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let two = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let weak = ca.leaf(&LeafSpec { key: KeyKind::Rsa(1024), ..LeafSpec::server("IP:127.0.0.1") });
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not PEM at all\n").unwrap();
    let encrypted = dir.path().join("encrypted.pem");
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&one.key)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success());
    let show = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, &Path, &Path, Vec<String>)> = vec![
        ("a missing certificate", &missing, &one.key, vec![show(&missing), "cannot read".into()]),
        ("a missing key", &one.chain, &missing, vec![show(&missing), "cannot read".into()]),
        (
            "no certificate in the PEM",
            &empty,
            &one.key,
            vec![show(&empty), "no certificate".into()],
        ),
        (
            "a key where the certificate goes",
            &one.key,
            &one.key,
            vec![show(&one.key), "is it the key file".into()],
        ),
        ("no key in the PEM", &one.chain, &empty, vec![show(&empty), "no private key".into()]),
        ("an encrypted key", &one.chain, &encrypted, vec![show(&encrypted), "encrypted".into()]),
        (
            "the key of another certificate",
            &one.chain,
            &two.key,
            vec![show(&two.key), show(&one.chain), "does not match".into()],
        ),
        (
            "an unsupported key (RSA 1024)",
            &weak.chain,
            &weak.key,
            vec![show(&weak.key), "unsupported key".into()],
        ),
    ];
    for (what, cert, key, wanted) in cases {
        let d = tempfile::tempdir().unwrap();
        let err = match bootforge::serve::Server::start(config_with(d.path(), cert, key)) {
            Ok(_) => panic!("{what}: the server started"),
            Err(e) => format!("{e:#}"),
        };
        for w in &wanted {
            assert!(err.contains(w.as_str()), "{what}: {w:?} not in: {err}");
        }
        // Nothing was started: no database created.
        assert!(!d.path().join("state").exists(), "{what}: the state folder was created");
    }
    // The command line says the same, and exits non-zero.
    let d = tempfile::tempdir().unwrap();
    let config = full_config(d.path(), false);
    let out = support::serve_command(&config)
        .args(["--listen-tls", "127.0.0.1:0", "--tls-cert"])
        .arg(&one.chain)
        .arg("--tls-key")
        .arg(&two.key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started with a mismatched pair");
    assert!(err.contains(&show(&two.key)) && err.contains("does not match"), "{err}");
    // --listen-tls needs both files.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["serve", "--profiles", "p", "--state-dir", "s", "--listen-tls", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-cert"), "{err}");
}

/// Replaces `to` with `from`'s bytes the way renewal tools do: a new file renamed over it.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Waits (up to 5 s) until `done` holds, returning how long it took.
fn within(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !done() {
        // Reloads wait for changed files to settle (certs::SETTLE, 2 s), then poll; 10 s is
        // room for a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

#[test]
fn a_renewed_pair_is_served_without_a_restart_and_a_bad_one_keeps_the_old() {
    let ca = Pki::rsa("CA");
    let first = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let renewed = ca.leaf(&LeafSpec {
        common_name: "renewed".into(),
        sans: vec!["IP:127.0.0.1".into(), "DNS:boot.lab".into()],
        ..LeafSpec::server("IP:127.0.0.1")
    });
    let other = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    // The service's own copies, replaced in place.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.chain, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let mut f = start_pair(&cert, &key, &ca.ca_cert);
    let served =
        || handshake(&tls_addr(&f), client(&ca.ca_cert, &[&rustls::version::TLS13])).unwrap().leaf;
    let status = || call("GET", &f.url("/status"), Some(READ_TOKEN), None).json()["tls"].clone();
    assert_eq!(served(), der_of(&first.cert));
    let s = status();
    assert_eq!(s["serving"]["subject"], "CN=127.0.0.1", "{s}");
    assert_eq!(s["serving"]["names"], serde_json::json!(["IP:127.0.0.1"]), "{s}");
    assert_eq!(s["serving"]["key"], "RSA 2048", "{s}");
    assert!(s["serving"]["not_after"].as_str().unwrap().ends_with('Z'), "{s}");
    assert_eq!((s["loads"].as_u64(), s["last_error"].is_null()), (Some(1), true), "{s}");

    // A renewal: the key, then the certificate.
    replace(&renewed.key, &key);
    replace(&renewed.chain, &cert);
    let took = within("the renewed certificate served", || served() == der_of(&renewed.cert));
    eprintln!("renewed certificate served {took:?} after the files were replaced");
    let s = status();
    assert_eq!(s["serving"]["subject"], "CN=renewed", "{s}");
    assert_eq!(s["serving"]["names"], serde_json::json!(["IP:127.0.0.1", "DNS:boot.lab"]));
    assert!(s["last_error"].is_null(), "{s}");

    // A bad replacement (a certificate without its key): the renewed pair keeps serving, and
    // /status says why, naming the files.
    replace(&other.chain, &cert);
    within("the error shown", || status()["last_error"].is_string());
    let s = status();
    let error = s["last_error"].as_str().unwrap();
    assert!(error.contains(&key.display().to_string()) && error.contains("does not match"), "{s}");
    assert_eq!(s["serving"]["subject"], "CN=renewed", "{s}");
    assert!(s["failures"].as_u64().unwrap() >= 1, "{s}");
    for _ in 0..3 {
        assert_eq!(served(), der_of(&renewed.cert), "a bad pair replaced a good one");
    }
    // Garbage in the certificate file: the same.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .unwrap();
    within("the new error shown", || {
        status()["last_error"].as_str().is_some_and(|e| {
            e.contains(&cert.display().to_string()) && e.contains("is not valid PEM")
        })
    });
    assert_eq!(served(), der_of(&renewed.cert));
    // POST /admin/reload reports it too.
    let r = call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains(&cert.display().to_string()),
        "{}",
        r.body
    );
    // The matching key arrives: served, and the error cleared.
    replace(&other.chain, &cert);
    replace(&other.key, &key);
    within("the fixed pair served", || served() == der_of(&other.cert));
    assert!(status()["last_error"].is_null());
    f.stop();
}

/// `POST /session` with an API token over `base`, with extra headers: the `Set-Cookie` and
/// `Strict-Transport-Security` it answered.
fn login(base: &str, headers: &[(&str, &str)]) -> (Option<String>, Option<String>) {
    let body = serde_json::json!({ "token": ADMIN_TOKEN }).to_string();
    let r = call_h("POST", &format!("{base}/session"), None, Some(&body), headers);
    assert_eq!(r.status, 200, "{base}: {}", r.body);
    (
        r.header("set-cookie").map(String::from),
        r.header("strict-transport-security").map(String::from),
    )
}

#[test]
fn over_tls_the_cookie_is_secure_and_answers_carry_hsts_and_not_over_plain() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false);
    let mut f = start_tls_with(dir, config);
    let plain = f.plain_base.clone().unwrap();
    let (cookie, hsts) = login(&f.base, &[]);
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    assert_eq!(hsts.as_deref(), Some("max-age=31536000"));
    // Every answer over TLS, errors and node answers included.
    for path in ["/healthz", "/nope", &format!("/boot/node01?mac={MAC1}")] {
        let r = call("GET", &f.url(path), None, None);
        assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"), "{path}");
    }
    // The plain listener beside it: neither, whatever a client claims in its headers.
    for headers in [&[][..], &[("X-Forwarded-Proto", "https"), ("Forwarded", "proto=https")][..]] {
        let (cookie, hsts) = login(&plain, headers);
        let cookie = cookie.expect("a session cookie");
        assert!(!cookie.contains("Secure"), "plain HTTP with {headers:?}: {cookie}");
        assert!(hsts.is_none(), "HSTS over plain HTTP");
    }
    f.stop();
}

#[test]
fn urls_for_nodes_and_bmcs_are_https_when_the_service_is() {
    // 1. No --public-url: the TLS listener's address is the default base.
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.media_epoch = Some(1_700_000_000);
    let mut f = start_tls_with(dir, config);
    let body = r#"{"format":"iso"}"#;
    let r = call("POST", &f.url("/hosts/node01/media-url"), Some(REIMAGE_TOKEN), Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.json()["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/media/", f.base)), "{url}");
    // The signed URL works over TLS.
    assert_eq!(call("HEAD", &url, None, None).status, 200);
    assert_eq!(call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    let chain = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(chain.contains(&format!("{}/", f.base)), "{chain}");
    assert!(!chain.contains("http://"), "a plain URL in the install chain: {chain}");
    // An installer's config: its callbacks and assets over TLS too.
    assert_eq!(call("PUT", &f.url("/hosts/rocky1/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    let ks = call("GET", &f.url("/config/rocky1/ks.cfg"), None, None);
    assert_eq!(ks.status, 200, "{}", ks.body);
    assert!(ks.body.contains(&format!("{}/hosts/rocky1/done", f.base)), "{}", ks.body);
    assert!(!ks.body.contains("http://"), "{}", ks.body);
    let status = call("GET", &f.url("/status"), Some(READ_TOKEN), None).json();
    assert_eq!(status["base_url"], f.base, "{status}");
    f.stop();

    // 2. --public-url https (a proxy, or another name): on the plain listener too.
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.public_url = Some("https://boot.lab:8443".parse().unwrap());
    let mut f = start_with(dir, config);
    let r = call("POST", &f.url("/hosts/node01/media-url"), Some(REIMAGE_TOKEN), Some(body));
    let url = r.json()["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://boot.lab:8443/media/"), "{url}");
    assert_eq!(call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    let chain = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(chain.contains("https://boot.lab:8443/"), "{chain}");
    assert!(!chain.contains("http://"), "{chain}");
    f.stop();

    // 3. A row's own `server`.
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    let inv = config.inventory.clone().unwrap();
    let csv = std::fs::read_to_string(&inv).unwrap();
    let mut lines = csv.lines();
    let mut out = format!("{},server\n", lines.next().unwrap());
    for l in lines {
        let server = if l.starts_with("node01,") { "https://10.9.9.9:8443" } else { "" };
        out += &format!("{l},{server}\n");
    }
    std::fs::write(&inv, out).unwrap();
    config.public_url = Some("http://plain.lab:8080".parse().unwrap());
    let mut f = start_with(dir, config);
    assert_eq!(call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    let chain = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(chain.contains("https://10.9.9.9:8443/"), "{chain}");
    assert!(!chain.contains("http://"), "{chain}");
    let r = call("POST", &f.url("/hosts/node01/media-url"), Some(REIMAGE_TOKEN), Some(body));
    assert!(
        r.json()["url"].as_str().unwrap().starts_with("https://10.9.9.9:8443/media/"),
        "{}",
        r.body
    );
    f.stop();
}

/// Runs `bootforge ARGS` and returns (success, stdout, stderr).
fn bootforge(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_bootforge")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn clients_take_https_with_a_ca_file_and_say_to_pass_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false);
    let mut f = start_tls_with(dir, config);
    let token = f.dir.path().join("token");
    std::fs::write(&token, format!("{REIMAGE_TOKEN}\n")).unwrap();
    let ca = f.config.tls_ca.clone().unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    let common = [os("--server"), os(&f.base), os("--token-file"), token.clone().into_os_string()];
    let with_ca = [os("--ca-file"), ca.clone().into_os_string()];
    let args = |first: &[&str], ca: bool| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = first.iter().map(|s| os(s)).collect();
        v.extend(common.iter().cloned());
        if ca {
            v.extend(with_ca.iter().cloned());
        }
        v
    };
    let run = |a: Vec<std::ffi::OsString>| {
        bootforge(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    };
    // Without --ca-file, every client refuses the private CA and says what to do.
    for first in [
        &["reimage", "node01"][..],
        &["media-url", "node01"],
        &["attach", "--all"],
        &["detach", "node01"],
    ] {
        let (ok, out, err) = run(args(first, false));
        assert!(!ok, "{first:?} trusted a private CA: {out}");
        let text = format!("{out}{err}");
        assert!(text.contains("pass --ca-file"), "{first:?}: {text}");
    }
    assert_eq!(
        call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json()["flagged"],
        false
    );
    // The service saw them refuse its certificate.
    // (Each alert is counted on the connection's own task, which may run a moment after the
    // client has exited: poll.)
    let untrusted = || -> u64 {
        let m = call("GET", &f.url("/metrics"), None, None).body;
        m.lines()
            .find_map(|l| {
                l.strip_prefix("bootforge_tls_handshake_failures_total{reason=\"untrusted\"} ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no untrusted counter in\n{m}"))
    };
    within("4 refusals of the certificate counted", || untrusted() >= 4);
    // With it, they work.
    let (ok, out, err) = run(args(&["reimage", "node01"], true));
    assert!(ok && out.contains("node01: flagged"), "{out}{err}");
    let (ok, out, err) = run(args(&["media-url", "node01"], true));
    assert!(ok && out.starts_with(&format!("{}/media/node01", f.base)), "{out}{err}");
    // attach reaches the service (which has no BMC credentials: its own error, not TLS's).
    let (ok, out, err) = run(args(&["attach", "node01"], true));
    assert!(!ok && out.contains("node01: FAILED (HTTP 409)"), "{out}{err}");
    // A CA file that is not one is named.
    let bad = f.dir.path().join("bad-ca.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let mut a = args(&["reimage", "node01"], false);
    a.extend([os("--ca-file"), bad.clone().into_os_string()]);
    let (ok, _, err) = run(a);
    assert!(
        !ok && err.contains(&bad.display().to_string()) && err.contains("no PEM certificate"),
        "{err}"
    );
    f.stop();
}

#[test]
fn a_stop_does_not_wait_for_handshakes_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false); // the default 15 s header timeout
    let mut f = start_tls_with(dir, config);
    let stalled: Vec<_> =
        (0..5).map(|_| std::net::TcpStream::connect(tls_addr(&f)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    f.stop();
    let took = t.elapsed();
    // The drain waits up to 5 s for requests in progress; a stop that waited for the stalled
    // handshakes would take at least that. 4 s leaves a loaded machine room to join threads.
    assert!(took < Duration::from_secs(4), "the stop waited {took:?} for stalled handshakes");
    drop(stalled);
}
