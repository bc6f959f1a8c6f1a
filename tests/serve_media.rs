//! `GET /media/{host}.*` and `POST /hosts/{host}/media-url`: a node's medium by signed URL,
//! byte-identical to `bootforge build`'s, with the HTTP that BMCs and `curl -C -` rely on.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::media::Format;
use bootforge::serve::app::media::{MediaOptions, Signer};
use bootforge::token::Secret;
use sha2::{Digest, Sha256};
use std::process::Command;
use support::*;

const EPOCH: u64 = 1_700_000_000;

/// A server with node tokens, API tokens and a fixed media epoch.
fn start_media() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.media_epoch = Some(EPOCH);
    start_with(dir, config)
}

/// Mints a URL through the API; `body` holds the options.
fn mint(f: &Fixture, host: &str, body: &str) -> String {
    let r =
        call("POST", &f.url(&format!("/hosts/{host}/media-url")), Some(REIMAGE_TOKEN), Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.json()["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&f.base), "{url}");
    url
}

/// An answer: status, headers, body bytes.
struct Got {
    headers: Vec<(String, String)>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET with headers; status, headers and the body's bytes.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Got, Vec<u8>) {
    get_m("GET", url, headers)
}

fn get_m(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, Got, Vec<u8>) {
    let mut req = ureq::request(method, url).timeout(std::time::Duration::from_secs(60));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = resp.status();
    let kept = resp
        .headers_names()
        .iter()
        .map(|n| (n.clone(), resp.header(n).unwrap_or("").to_string()))
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, Got { headers: kept }, body)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The audit log once it holds `needle` (notes are written by a writer thread), or after 10 s.
fn audit_with(f: &Fixture, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = audit_log(&f.dir.path().join("state"));
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn served_media_are_the_bytes_build_writes() {
    let f = start_media();
    let secret = f.config.secret_file.clone().unwrap();
    let inv = f.config.inventory.clone().unwrap();
    // Two option sets: build's defaults, and every option changed.
    let cases: [(&[&str], &str); 2] = [
        (&[], r#"{}"#),
        (
            &["--arch", "x86_64,arm64", "--iso-medium", "usb"],
            r#"{"arch": "arm64,x86_64", "medium": "usb"}"#,
        ),
    ];
    for (i, (build_args, options)) in cases.iter().enumerate() {
        let out = f.dir.path().join(format!("built-{i}"));
        let status = Command::new(env!("CARGO_BIN_EXE_bootforge"))
            .args(["build", inv.to_str().unwrap(), "--server", &f.base, "--secret-file"])
            .arg(&secret)
            .args(["--out", out.to_str().unwrap(), "--formats", "iso,usb,efi"])
            .args(*build_args)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        for host in ["node01", "hv1", "deb1"] {
            for (format, name) in [("iso", "iso"), ("usb", "usb.img"), ("efi", "efi.img")] {
                let body = options.replace('{', &format!("{{\"format\": \"{format}\", "));
                let body = body.replace(", }", "}");
                let url = mint(&f, host, &body);
                let (status, _, bytes) = get(&url, &[]);
                assert_eq!(status, 200, "{url}");
                let built = std::fs::read(out.join(format!("{host}.{name}"))).unwrap();
                assert_eq!(bytes.len(), built.len(), "{host}.{name} case {i}");
                assert_eq!(sha256(&bytes), sha256(&built), "{host}.{name} case {i}");
            }
        }
    }
    // The snponly loader too.
    let out = f.dir.path().join("built-snp");
    let status = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["build", inv.to_str().unwrap(), "--server", &f.base, "--secret-file"])
        .arg(&secret)
        .args(["--out", out.to_str().unwrap(), "--efi-loader", "snponly"])
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (_, _, bytes) = get(&mint(&f, "node02", r#"{"efi_loader": "snponly"}"#), &[]);
    assert_eq!(sha256(&bytes), sha256(&std::fs::read(out.join("node02.iso")).unwrap()));
}

#[test]
fn ranges_heads_and_validators_behave_as_bmcs_and_curl_expect() {
    let f = start_media();
    let url = mint(&f, "node01", "{}");
    let (status, resp, whole) = get(&url, &[]);
    assert_eq!(status, 200);
    let len = whole.len();
    assert!(len > 1 << 20);
    assert_eq!(resp.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    assert_eq!(resp.header("content-disposition"), Some("attachment; filename=\"node01.iso\""));
    assert!(resp.header("last-modified").is_some());
    let etag = resp.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");

    // HEAD: the same headers, no body.
    let (status, resp, body) = get_m("HEAD", &url, &[]);
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(resp.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(resp.header("etag"), Some(etag.as_str()));

    // Single ranges: 206 with Content-Range, and the exact bytes.
    for (spec, a, z) in
        [("bytes=0-0", 0, 0), ("bytes=100-70000", 100, 70000), ("bytes=-500", len - 500, len - 1)]
    {
        let (status, resp, body) = get(&url, &[("Range", spec)]);
        assert_eq!(status, 206, "{spec}");
        assert_eq!(resp.header("content-range"), Some(format!("bytes {a}-{z}/{len}").as_str()));
        assert_eq!(body, whole[a..=z], "{spec}");
    }
    let (status, resp, _) = get(&url, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(status, 416);
    assert_eq!(resp.header("content-range"), Some(format!("bytes */{len}").as_str()));
    // Several ranges at once: the whole image (RFC 9110 lets a server ignore Range).
    let (status, _, body) = get(&url, &[("Range", "bytes=0-1,5-9")]);
    assert_eq!((status, body.len()), (200, len));

    // If-None-Match: 304 without a body; If-Range: the range only while the ETag matches.
    let (status, _, body) = get(&url, &[("If-None-Match", &etag)]);
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, body) = get(&url, &[("Range", "bytes=10-19"), ("If-Range", &etag)]);
    assert_eq!((status, body.as_slice()), (206, &whole[10..20]));
    let (status, _, body) = get(&url, &[("Range", "bytes=10-19"), ("If-Range", "\"stale\"")]);
    assert_eq!((status, body.len()), (200, len));
    // A date is never enough for If-Range here (two loads within a second share one).
    let modified = get_m("HEAD", &url, &[]).1.header("last-modified").unwrap().to_string();
    let (status, _, body) = get(&url, &[("Range", "bytes=10-19"), ("If-Range", &modified)]);
    assert_eq!((status, body.len()), (200, len));
    // The range unit is case-insensitive.
    let (status, _, body) = get(&url, &[("Range", "Bytes=10-19")]);
    assert_eq!((status, body.as_slice()), (206, &whole[10..20]));

    // Another node's image differs, and so does its validator.
    let (_, other, _) = get_m("HEAD", &mint(&f, "node02", "{}"), &[]);
    assert_ne!(other.header("etag"), Some(etag.as_str()));

    // curl resumes a cut download with `-C -` and ends with the same bytes.
    let file = f.dir.path().join("node01.iso");
    let run = |args: &[&str]| {
        let out =
            Command::new("curl").args(args).output().expect("curl runs (Debian package curl)");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["-fsS", "-r", "0-999999", "-o", file.to_str().unwrap(), &url]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1_000_000);
    run(&["-fsS", "-C", "-", "-o", file.to_str().unwrap(), &url]);
    assert_eq!(sha256(&std::fs::read(&file).unwrap()), sha256(&whole));
}

#[test]
fn urls_must_be_signed_unexpired_and_unaltered() {
    let f = start_media();
    let url = mint(&f, "node01", "{}");
    let (path, query) = url.split_once('?').unwrap();
    let sig = query.rsplit_once("sig=").unwrap().1.to_string();
    let exp = query.split('&').find_map(|p| p.strip_prefix("exp=")).unwrap().to_string();
    assert_eq!(get(&url, &[("Range", "bytes=0-9")]).0, 206);

    let refused = |u: &str| {
        let (status, _, body) = get(u, &[]);
        assert_eq!(status, 403, "{u}");
        String::from_utf8(body).unwrap()
    };
    // Unsigned, another host, other options, another expiry, a forged signature.
    assert!(refused(path).contains("must be signed"));
    refused(&url.replace("/media/node01.iso", "/media/node02.iso"));
    refused(&url.replace("/media/node01.iso", "/media/node01.usb.img"));
    refused(&url.replace("medium=cd", "medium=usb"));
    refused(
        &url.replace(&format!("exp={exp}"), &format!("exp={}", exp.parse::<u64>().unwrap() + 1)),
    );
    refused(&url.replace(&sig, &"0".repeat(64)));
    // Expired: signed with the service's key (derived from the node secret) an hour ago.
    let signer = Signer::new(Some(&Secret::new(SECRET.to_vec()).unwrap())).unwrap();
    let past =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            - 3600;
    let opts = MediaOptions::new(Format::Iso);
    let old =
        format!("{path}?{}&exp={past}&sig={}", opts.query(), signer.sign("node01", &opts, past));
    assert!(refused(&old).contains("expired"));
    // A validly signed URL of a host that is not (or no longer) in the inventory: 404.
    let later = past + 7200;
    let ghost = format!(
        "{}/media/ghost.iso?{}&exp={later}&sig={}",
        f.base,
        opts.query(),
        signer.sign("ghost", &opts, later)
    );
    assert_eq!(get(&ghost, &[]).0, 404);

    // Every refusal is audited by reason, without the signature.
    let log = audit_with(&f, "\"reason\":\"expired\"");
    for reason in ["unsigned", "bad-signature", "expired"] {
        assert!(log.contains(&format!("\"reason\":\"{reason}\"")), "{reason}: {log}");
    }
    assert!(log.contains("\"event\":\"media-denied\""));
    assert!(log.contains("\"event\":\"media-url\""));
    assert!(
        !log.contains(&sig) && !log.contains(&"0".repeat(64)),
        "a signature reached the audit log"
    );

    // Minting: reimage role, known host, valid options and ttl.
    let mint_as = |token: Option<&str>, host: &str, body: &str| {
        call("POST", &f.url(&format!("/hosts/{host}/media-url")), token, Some(body)).status
    };
    assert_eq!(mint_as(None, "node01", "{}"), 401);
    assert_eq!(mint_as(Some(READ_TOKEN), "node01", "{}"), 403);
    assert_eq!(mint_as(Some(ADMIN_TOKEN), "node01", "{}"), 200);
    assert_eq!(mint_as(Some(REIMAGE_TOKEN), "nope", "{}"), 404);
    assert_eq!(mint_as(Some(REIMAGE_TOKEN), "node01", r#"{"ttl": 0}"#), 400);
    assert_eq!(mint_as(Some(REIMAGE_TOKEN), "node01", r#"{"format": "vhd"}"#), 400);
    assert_eq!(
        mint_as(Some(REIMAGE_TOKEN), "node01", r#"{"arch": "arm64", "efi_loader": "snponly"}"#),
        400
    );
    assert_eq!(mint_as(Some(REIMAGE_TOKEN), "node01", r#"{"colour": "red"}"#), 400);
    let r = call(
        "POST",
        &f.url("/hosts/node01/media-url"),
        Some(REIMAGE_TOKEN),
        Some(r#"{"ttl": 60}"#),
    );
    let v = r.json();
    assert_eq!(v["host"], "node01");
    assert!(v["size"].as_u64().unwrap() > 1 << 20);
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn the_cli_prints_a_working_url() {
    let f = start_media();
    let token = f.dir.path().join("token");
    std::fs::write(&token, format!("{REIMAGE_TOKEN}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["media-url", "node02", "--format", "efi", "--ttl", "600", "--server", &f.base])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(url.contains("/media/node02.efi.img?"), "{url}");
    let (status, _, body) = get(&url, &[]);
    assert_eq!(status, 200);
    assert_eq!(&body[510..512], &[0x55, 0xAA]);
    // A host that is not in the inventory: the server's message, and a failing exit status.
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["media-url", "nope", "--server", &f.base])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the inventory"));
}

/// BMCs often reach the service at another address (the management network) than the nodes:
/// `--media-base-url` sets the minted URLs' base, and leaves the image's own server URL alone.
#[test]
fn media_urls_can_name_the_bmc_side_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.media_epoch = Some(EPOCH);
    config.media_base_url = Some("http://192.0.2.7:8080".parse().unwrap());
    let f = start_with(dir, config);
    let r = call("POST", &f.url("/hosts/node01/media-url"), Some(REIMAGE_TOKEN), Some("{}"));
    let url = r.json()["url"].as_str().unwrap().to_string();
    let rest = url.strip_prefix("http://192.0.2.7:8080").expect("the media base");
    let (status, _, bytes) = get(&f.url(rest), &[]);
    assert_eq!(status, 200);
    // The node's script still asks the node-side address (the listen address here).
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&format!("set bootforge-server {}", f.base)), "server URL in the image");
    assert!(!text.contains("192.0.2.7"));
}
