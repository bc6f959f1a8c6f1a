//! `bootforge tls check` and its use at `serve` start-up: real certificates made by OpenSSL
//! (`support::pki`), judged by the library and through the binary.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::tls::check::{check, Input, Problem, Report};
use std::path::Path;
use std::process::Command;
use support::pki::{KeyKind, Leaf, LeafSpec, Pki};

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Checks `leaf`'s full chain for `url`, with `ca` as --ca when given, at `at`.
fn judge_at(leaf: &Leaf, ca: Option<&Pki>, url: &str, at: i64) -> Report {
    let ca = ca.map(|c| read(&c.ca_cert));
    check(&read(&leaf.chain), ca.as_deref(), &url.parse().unwrap(), at)
}

fn judge(leaf: &Leaf, ca: Option<&Pki>, url: &str) -> Report {
    judge_at(leaf, ca, url, now())
}

fn codes(r: &Report) -> Vec<&'static str> {
    r.problems.iter().map(|p| p.code()).collect()
}

fn text(r: &Report) -> String {
    r.lines().join("\n")
}

const URL: &str = "https://10.0.2.2:8443";

#[test]
fn an_rsa_leaf_under_an_rsa_ca_has_no_problem() {
    let ca = Pki::rsa("boot CA");
    let leaf = ca.leaf(&LeafSpec::server("IP:10.0.2.2"));
    let r = judge(&leaf, Some(&ca), URL);
    assert!(r.problems.is_empty(), "{}", text(&r));
    let all = text(&r);
    assert!(all.contains("ok: the leaf names 10.0.2.2 (subjectAltName IP:10.0.2.2)"), "{all}");
    assert!(all.contains("ok: TLS 1.2 is always on"), "{all}");
    assert!(all.contains("the chain ends at CN=boot CA (certificate 1 of --ca), which"), "{all}");
    // Just issued: a node whose clock is behind would refuse it.
    assert!(
        all.contains("warning: the leaf (CN=10.0.2.2") && all.contains("12.5 hours ago"),
        "{all}"
    );
    // Without --ca: the CA to trust is named.
    let r = judge(&leaf, None, URL);
    assert!(r.problems.is_empty(), "{}", text(&r));
    assert!(text(&r).contains("must trust CN=boot CA"), "{}", text(&r));
    // The leaf alone, under the --ca that issued it.
    let r = check(&read(&leaf.cert), Some(&read(&ca.ca_cert)), &URL.parse().unwrap(), now());
    assert!(r.problems.is_empty(), "{}", text(&r));
    assert!(text(&r).contains("is issued by CN=boot CA (certificate 1 of --ca)"), "{}", text(&r));
    // An http URL: nothing to check.
    let r = judge(&leaf, None, "http://10.0.2.2:8080");
    assert!(r.problems.is_empty() && text(&r).contains("plain http"), "{}", text(&r));
}

#[test]
fn an_ecdsa_leaf_is_a_problem_naming_the_fix() {
    let ca = Pki::rsa("CA");
    let leaf = ca.leaf(&LeafSpec { key: KeyKind::EcP256, ..LeafSpec::server("IP:10.0.2.2") });
    let r = judge(&leaf, Some(&ca), URL);
    assert_eq!(codes(&r), ["not-rsa"], "{}", text(&r));
    let msg = r.problems[0].to_string();
    assert!(msg.contains("the leaf (CN=10.0.2.2, certificate 1 of --cert) has a ECDSA"), "{msg}");
    assert!(
        msg.contains("410de18f") && msg.contains("Fix: issue the certificate with an RSA key"),
        "{msg}"
    );
}

#[test]
fn an_ec_ca_over_an_rsa_leaf_is_a_problem() {
    let ca = Pki::new("ec CA", KeyKind::EcP256);
    let leaf = ca.leaf(&LeafSpec::server("IP:10.0.2.2"));
    let r = judge(&leaf, Some(&ca), URL);
    let c = codes(&r);
    assert!(c.contains(&"not-rsa") && c.contains(&"signature-algorithm"), "{}", text(&r));
    let not_rsa = r.problems.iter().find(|p| p.code() == "not-rsa").unwrap();
    match not_rsa {
        Problem::NotRsa { cert, .. } => {
            assert_eq!((cert.input, cert.position), (Input::Chain, 2));
            assert_eq!(cert.subject, "CN=ec CA");
        }
        other => panic!("{other:?}"),
    }
    assert!(not_rsa.to_string().contains("3c00e183"), "{not_rsa}");
    assert!(text(&r).contains("is signed with ecdsa-with-SHA256"), "{}", text(&r));
}

#[test]
fn names_are_matched_as_ipxe_matches_them() {
    let ca = Pki::rsa("CA");
    // A wrong IP.
    let leaf = ca.leaf(&LeafSpec::server("IP:10.0.2.3"));
    let r = judge(&leaf, Some(&ca), URL);
    assert_eq!(codes(&r), ["name-mismatch"], "{}", text(&r));
    let msg = r.problems[0].to_string();
    assert!(msg.contains("does not name 10.0.2.2") && msg.contains("IP:10.0.2.3"), "{msg}");
    assert!(msg.contains("subjectAltName IP:10.0.2.2"), "{msg}");
    // A DNS name: matches its own host, not another, nor the IP URL.
    let leaf = ca.leaf(&LeafSpec::server("DNS:boot.lab"));
    assert!(judge(&leaf, Some(&ca), "https://boot.lab:8443").problems.is_empty());
    let r = judge(&leaf, Some(&ca), "https://other.lab:8443");
    assert_eq!(codes(&r), ["name-mismatch"], "{}", text(&r));
    assert!(r.problems[0].to_string().contains("subjectAltName DNS:other.lab"));
    assert_eq!(codes(&judge(&leaf, Some(&ca), URL)), ["name-mismatch"]);
    // A wildcard covers one label.
    let leaf = ca.leaf(&LeafSpec::server("DNS:*.lab"));
    assert!(judge(&leaf, Some(&ca), "https://boot.lab").problems.is_empty());
    assert_eq!(codes(&judge(&leaf, Some(&ca), "https://a.boot.lab")), ["name-mismatch"]);
}

#[test]
fn a_cn_without_a_san_works_for_ipxe_with_a_warning() {
    let ca = Pki::rsa("CA");
    let leaf = ca.leaf(&LeafSpec { sans: vec![], ..LeafSpec::server("IP:10.0.2.2") });
    let r = judge(&leaf, Some(&ca), URL);
    assert!(r.problems.is_empty(), "{}", text(&r));
    assert!(
        r.warnings.iter().any(|w| w.contains("only in its CN (10.0.2.2)") && w.contains("rustls")),
        "{}",
        text(&r)
    );
    // A CN naming another host: a problem, listing the CN.
    let r = judge(&leaf, Some(&ca), "https://10.0.2.9");
    assert_eq!(codes(&r), ["name-mismatch"], "{}", text(&r));
    assert!(r.problems[0].to_string().contains("CN=10.0.2.2"));
}

#[test]
fn an_ocsp_responder_is_a_problem() {
    let ca = Pki::rsa("CA");
    let spec =
        LeafSpec { ocsp: Some("http://10.0.2.2:9/ocsp".into()), ..LeafSpec::server("IP:10.0.2.2") };
    let r = judge(&ca.leaf(&spec), Some(&ca), URL);
    assert_eq!(codes(&r), ["ocsp-responder"], "{}", text(&r));
    let msg = r.problems[0].to_string();
    assert!(msg.contains("http://10.0.2.2:9/ocsp") && msg.contains("issue it without"), "{msg}");
}

#[test]
fn validity_dates_are_checked_with_ipxe_clock_margin() {
    let ca = Pki::rsa("CA");
    let expired = ca.leaf(&LeafSpec {
        signed_at: Some("2020-01-01".into()),
        days: 1,
        ..LeafSpec::server("IP:10.0.2.2")
    });
    let r = judge(&expired, Some(&ca), URL);
    assert_eq!(codes(&r), ["expired"], "{}", text(&r));
    assert!(r.problems[0].to_string().contains("expired at 2020-01-02"), "{}", text(&r));
    let future = ca.leaf(&LeafSpec {
        signed_at: Some("2031-01-01".into()),
        days: 5,
        ..LeafSpec::server("IP:10.0.2.2")
    });
    let r = judge(&future, Some(&ca), URL);
    assert_eq!(codes(&r), ["not-yet-valid"], "{}", text(&r));
    assert!(r.problems[0].to_string().contains("not valid before 2031-01-01"), "{}", text(&r));
    // Near the edges, by the clock given: the leaf is valid for 20 days from now.
    let leaf = ca.leaf(&LeafSpec { days: 20, ..LeafSpec::server("IP:10.0.2.2") });
    let t = now();
    let day = 86_400;
    let quiet = judge_at(&leaf, None, URL, t + 2 * day);
    assert!(quiet.problems.is_empty() && quiet.warnings.is_empty(), "{}", text(&quiet));
    let soon = judge_at(&leaf, None, URL, t + 10 * day);
    assert!(soon.problems.is_empty(), "{}", text(&soon));
    assert!(soon.warnings.iter().any(|w| w.contains("less than 14 days")), "{}", text(&soon));
    let edge = judge_at(&leaf, None, URL, t + 20 * day - 3600);
    assert!(edge.warnings.iter().any(|w| w.contains("less than 12.5 hours")), "{}", text(&edge));
    assert_eq!(codes(&judge_at(&leaf, None, URL, t + 21 * day)), ["expired"]);
}

#[test]
fn the_chain_must_be_in_order_and_end_at_the_ca() {
    let ca = Pki::rsa("CA");
    let leaf = ca.leaf(&LeafSpec::server("IP:10.0.2.2"));
    // Another CA: the chain does not end under it.
    let other = Pki::rsa("other CA");
    let r = judge(&leaf, Some(&other), URL);
    assert_eq!(codes(&r), ["not-under-ca"], "{}", text(&r));
    assert!(r.problems[0].to_string().contains("none of the --ca certificates (CN=other CA)"));
    // A CA of the same name but another key: the names line up, the signature does not.
    let twin = Pki::rsa("CA");
    let mut chain = read(&leaf.cert);
    chain.extend(read(&twin.ca_cert));
    let r = check(&chain, None, &URL.parse().unwrap(), now());
    assert_eq!(codes(&r), ["bad-signature"], "{}", text(&r));
    let r = check(&read(&leaf.cert), Some(&read(&twin.ca_cert)), &URL.parse().unwrap(), now());
    assert_eq!(codes(&r), ["not-under-ca"], "{}", text(&r));
    // The CA first, then the leaf.
    let mut reversed = read(&ca.ca_cert);
    reversed.extend(read(&leaf.cert));
    let r = check(&reversed, None, &URL.parse().unwrap(), now());
    assert!(codes(&r).contains(&"chain-order"), "{}", text(&r));
    assert!(text(&r).contains("Fix: order the file leaf first"), "{}", text(&r));
}

fn bootforge(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge")).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_exits_0_1_or_2() {
    let ca = Pki::rsa("CA");
    let good = ca.leaf(&LeafSpec::server("IP:10.0.2.2"));
    let ec = ca.leaf(&LeafSpec { key: KeyKind::EcP256, ..LeafSpec::server("IP:10.0.2.2") });
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let (code, out, err) = bootforge(&[
        os("tls"),
        os("check"),
        os("--cert"),
        good.chain.as_os_str(),
        os("--ca"),
        ca.ca_cert.as_os_str(),
        os("--server"),
        os(URL),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.lines().all(|l| l.starts_with("ok: ") || l.starts_with("warning: ")), "{out}");
    assert!(out.contains("ok: the leaf names 10.0.2.2"), "{out}");
    let (code, out, err) = bootforge(&[
        os("tls"),
        os("check"),
        os("--cert"),
        ec.chain.as_os_str(),
        os("--server"),
        os(URL),
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.lines().next().unwrap().starts_with("problem: the leaf"), "{out}");
    assert!(out.contains("410de18f"), "{out}");
    let (code, out, _) = bootforge(&[
        os("tls"),
        os("check"),
        os("--cert"),
        ec.chain.as_os_str(),
        os("--server"),
        os(URL),
        os("--json"),
    ]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["problems"][0]["code"], "not-rsa", "{out}");
    // Unreadable: a missing file, and a file with no certificate, each named.
    let missing = ca.dir.path().join("nope.pem");
    let (code, _, err) = bootforge(&[
        os("tls"),
        os("check"),
        os("--cert"),
        missing.as_os_str(),
        os("--server"),
        os(URL),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope.pem"), "{err}");
    let (code, _, err) = bootforge(&[
        os("tls"),
        os("check"),
        os("--cert"),
        good.chain.as_os_str(),
        os("--ca"),
        good.key.as_os_str(),
        os("--server"),
        os(URL),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&*good.key.to_string_lossy()) && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[test]
fn serve_warns_at_start_up_when_ipxe_cannot_use_its_certificate() {
    let ca = Pki::rsa("CA");
    let ec = ca.leaf(&LeafSpec { key: KeyKind::EcP256, ..LeafSpec::server("IP:127.0.0.1") });
    let dir = tempfile::tempdir().unwrap();
    let (text, warning) = serve_until_warned(dir.path(), &ec.chain, &ec.key, None);
    assert!(text.contains("bootforge serve started"), "{text}");
    assert!(warning.contains("WARN") && warning.contains("410de18f"), "{warning}");
    assert!(warning.contains("https://127.0.0.1:"), "{warning}");
}

/// A renewal is checked as the start-up pair was: a good RSA pair starts without a warning,
/// and an ECDSA pair written over it is reloaded (it serves browsers) with the same warning.
#[test]
fn serve_warns_again_when_a_reloaded_certificate_stops_ipxe() {
    let ca = Pki::rsa("CA");
    let rsa = ca.leaf(&LeafSpec::server("IP:127.0.0.1"));
    let ec = ca.leaf(&LeafSpec { key: KeyKind::EcP256, ..LeafSpec::server("IP:127.0.0.1") });
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    std::fs::copy(&rsa.chain, &cert).unwrap();
    std::fs::copy(&rsa.key, &key).unwrap();
    let renew = || {
        std::fs::copy(&ec.key, &key).unwrap();
        std::fs::copy(&ec.chain, &cert).unwrap();
    };
    let (text, warning) = serve_until_warned(dir.path(), &cert, &key, Some(&renew));
    let reloaded = text.find("TLS certificate reloaded").unwrap_or_else(|| panic!("{text}"));
    let warned = text.find(&warning).unwrap();
    assert!(reloaded < warned, "the warning came before the reload: {text}");
    assert!(warning.contains("410de18f"), "{warning}");
}

/// Runs serve on the pair until it logs the iPXE warning (after `renew`, once started, when
/// given; no warning may come before it), then stops it: its log and the warning's line.
fn serve_until_warned(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    renew: Option<&dyn Fn()>,
) -> (String, String) {
    const WARNING: &str = "iPXE nodes will not be able to boot over HTTPS";
    let config = support::full_config(dir, false);
    let log = dir.join("serve.log");
    let mut child = support::serve_command(&config)
        .args(["--listen-tls", "127.0.0.1:0", "--tls-cert"])
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut renewed = renew.is_none();
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if text.contains("bootforge serve started") {
            if !renewed {
                assert!(!text.contains(WARNING), "a good pair drew the warning: {text}");
                renew.unwrap()();
                renewed = true;
            } else if text.contains(WARNING) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().ok();
    assert!(still_running, "serve did not keep running: {text}");
    let warning = text
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning in: {text}"))
        .to_string();
    (text, warning)
}
