//! Media attached through BMCs, end to end: `bootforge attach`/`detach` (the real binary) ask
//! the real service, which mints each node's signed `/media/` URL and tells the node's BMC
//! through Redfish; the BMC is the sushy-tools emulator, whose fake driver really downloads the
//! URL it is given. One test then boots, in QEMU, the very ISO the emulator was told to mount.
//!
//! The emulator harness is `tests/serve_support/sushy.rs`, the QEMU harness `tests/common`.
//! Neither skips: a missing emulator or QEMU fails the test and names the setup step.

#[path = "serve_support/bmc.rs"]
mod bmc;
mod common;
#[path = "console_support/mod.rs"]
mod console_support;
#[path = "serve_support/sushy.rs"]
mod sushy;

use bmc::{BmcService as Fixture, ADMIN_TOKEN, READ_TOKEN, REIMAGE_TOKEN};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;
use sushy::{free_port, Emulator, EmulatorConfig, Proxy, Quirks};

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// GET a Redfish resource of the emulator, as its admin.
fn redfish(url: &str) -> Value {
    let auth = format!("Basic {}", base64_admin());
    let resp = ureq::get(url).set("Authorization", &auth).call().unwrap();
    serde_json::from_str(&resp.into_string().unwrap()).unwrap()
}

fn base64_admin() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode("admin:password")
}

/// The emulator's virtual CD of system `i`.
fn cd(emu: &Emulator, i: usize) -> Value {
    redfish(&format!("{}/VirtualMedia/Cd", emu.system_url(i)))
}

fn api(method: &str, url: &str, token: &str, body: &str) -> (u16, Value) {
    let req = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(300));
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    (status, serde_json::from_str(&resp.into_string().unwrap()).unwrap_or(Value::Null))
}

/// The whole path: `bootforge attach` → service → Redfish → the emulator downloads the signed
/// URL; the ISO behind the URL the emulator holds boots in QEMU, configures the node's static
/// address and reaches the service's `/boot`; `bootforge detach` ejects it.
#[test]
fn attach_mount_and_boot_what_the_bmc_was_given() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let port = free_port();
    let row =
        format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,{NODE_MAC},e2e,{}\n", emu.system_url(0));
    let f = Fixture::start(&row, port, Some(&format!("http://10.0.2.2:{port}")), true);

    let (ok, out, err) = f.cli(&["attach", "node01"]);
    assert!(ok, "attach failed:\n{out}\n{err}\n{}", emu.log_text());
    assert!(out.starts_with("node01: ok: ISO attached, boots from CD: Continuous"), "{out}");

    // What the BMC holds: our signed URL, inserted, and a CD boot override.
    let media = cd(&emu, 0);
    let image = media["Image"].as_str().expect("an image is mounted").to_string();
    assert!(image.starts_with(&format!("http://127.0.0.1:{port}/media/node01.iso?")), "{image}");
    assert!(image.contains("&sig="), "{image}");
    assert_eq!(media["Inserted"], true);
    let system = redfish(&emu.system_url(0));
    assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Cd");
    // The emulator fetched the image from the service (its fake driver downloads it). The two
    // records come from different requests and reach the log in either order: wait for both.
    f.audit_with("\"event\":\"media-served\"");
    let log = f.audit_with("\"event\":\"bmc-media\"");
    assert!(
        log.contains("\"event\":\"bmc-media\",\"host\":\"node01\",\"action\":\"attach\""),
        "{log}"
    );
    assert!(
        log.contains("\"event\":\"media-served\",\"host\":\"node01\",\"format\":\"iso\""),
        "{log}"
    );
    let sig = image.rsplit_once("sig=").unwrap().1;
    assert!(!log.contains(sig), "the URL's signature reached the audit log");

    // A read caller sees the BMC's view, with the signature redacted.
    let (status, view) = api("GET", &format!("{}/hosts/node01/media", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{view}");
    let shown = view["bmc"]["media"]["image"].as_str().unwrap();
    assert_eq!(shown, "(hidden) a bootforge iso medium of node01");
    assert_eq!(view["bmc"]["boot"]["target"], "Cd");
    assert!(view["url_expires_at"].as_str().is_some());

    // Boot the bytes behind the mounted URL: the node's static address reaches /boot.
    let iso_bytes = {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut ureq::get(&image).call().unwrap().into_reader(),
            &mut bytes,
        )
        .unwrap();
        bytes
    };
    let vm = Vm::new(Firmware::Bios, "bmc-attached-iso");
    let iso = vm.dir().join("mounted.iso");
    std::fs::write(&iso, &iso_bytes).unwrap();
    let disk = local_disk(vm.dir());
    let run = vm
        .medium(&iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .timeout(Duration::from_secs(150))
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .run();
    let log = f.audit_with("\"event\":\"boot\"");
    let boot = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "boot" && e["host"] == "node01")
        .unwrap_or_else(|| panic!("no /boot from node01\n{}\n{log}", run.report()));
    assert_eq!(boot["ip"], "10.0.2.15", "the static address from the inventory\n{boot}");
    assert_eq!(boot["verified"], true, "token and MAC checked\n{boot}");
    assert_eq!(boot["answer"], "local");
    assert!(
        run.serial.contains(LOCAL_DISK_MARKER),
        "the local disk was not reached\n{}",
        run.report()
    );
    eprintln!(
        "attached ISO ({} bytes, sha256 {}) booted in {:.1}s",
        iso_bytes.len(),
        &sha_hex(&iso_bytes)[..16],
        run.elapsed.as_secs_f64()
    );

    // Detach: ejected, override dropped.
    let (ok, out, err) = f.cli(&["detach", "node01"]);
    assert!(ok, "detach failed:\n{out}\n{err}");
    assert!(out.starts_with("node01: ok: ejected"), "{out}");
    let media = cd(&emu, 0);
    assert_eq!(media["Inserted"], false, "{media}");
    assert!(media["Image"].is_null() || media["Image"] == "", "{media}");
}

/// The console's media buttons in Chromium, as an operator with the reimage role uses them:
/// the ISO button downloads exactly what `bootforge build` writes for the row; Attach, with
/// "once" and a restart chosen in its dialog, leaves the BMC holding our signed URL with a
/// one-time CD override and a reset; Detach ejects it. The page reports each step in the words
/// the CLI uses, and the audit log names the console login.
#[test]
fn the_console_downloads_attaches_and_detaches() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let port = free_port();
    let row =
        format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,{NODE_MAC},e2e,{}\n", emu.system_url(0));
    let f = Fixture::start(&row, port, None, true);
    let b = console_support::Browser::start();
    b.goto(&format!("{}/ui/", f.base));
    b.type_into("#token", REIMAGE_TOKEN);
    b.click("#token-submit");
    let host = "#hosts tr[data-host='node01']";

    // Download: the same bytes as `bootforge build` for this row, secret and epoch.
    b.click(&format!("{host} button.download"));
    let downloaded = b.downloaded("node01.iso", 60);
    b.wait_text("#fleet-msg", 10, |t| t.starts_with("node01: downloading its iso image"));
    let out = f.dir.path().join("built");
    let status = std::process::Command::new(bootforge_bin())
        .arg("build")
        .arg(f.dir.path().join("nodes.csv"))
        .args(["--server", &f.base, "--secret-file"])
        .arg(f.dir.path().join("secret"))
        .arg("--out")
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .status()
        .unwrap();
    assert!(status.success());
    let built = std::fs::read(out.join("node01.iso")).unwrap();
    assert_eq!(downloaded.len(), built.len());
    assert_eq!(sha_hex(&downloaded), sha_hex(&built), "the download is build's ISO");

    // Attach, once, with a restart.
    b.click(&format!("{host} button.media-attach"));
    assert!(b.displayed("#attach-options"), "attach asks how to boot");
    assert_eq!(b.text("#confirm-hosts"), "node01");
    b.click("#attach-boot option[value='once']");
    b.click("#attach-reset");
    b.click("#confirm-ok");
    let msg = b.wait_text("#fleet-msg", 120, |t| t.contains("attached") || t.contains("failed"));
    assert!(
        msg.starts_with(
            "node01: ISO attached, boots from CD: Once, reset (ForceRestart); URL valid until "
        ),
        "{msg}\n{}",
        emu.log_text()
    );
    let media = cd(&emu, 0);
    let image = media["Image"].as_str().expect("an image is mounted");
    assert!(image.starts_with(&format!("http://127.0.0.1:{port}/media/node01.iso?")), "{image}");
    assert_eq!(media["Inserted"], true);
    assert_eq!(redfish(&emu.system_url(0))["Boot"]["BootSourceOverrideTarget"], "Cd");
    let log = f.audit_with("\"action\":\"attach\"");
    let attach = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "bmc-media" && e["action"] == "attach")
        .unwrap_or_else(|| panic!("the attach is audited:\n{log}"));
    assert_eq!(
        (attach["boot"].as_str(), attach["reset"].as_bool(), attach["via"].as_str()),
        (Some("once"), Some(true), Some("token-session")),
        "{attach}"
    );
    assert_eq!(attach["by"], "ops");

    // Detach: no boot options asked, the CD ejected.
    b.click(&format!("{host} button.media-detach"));
    assert!(!b.displayed("#attach-options"));
    b.click("#confirm-ok");
    let msg = b.wait_text("#fleet-msg", 120, |t| t == "node01: ejected" || t.contains("failed"));
    assert_eq!(msg, "node01: ejected");
    let media = cd(&emu, 0);
    assert_eq!(media["Inserted"], false, "{media}");
}

/// Many hosts at once, and the failures an operator meets: a BMC that is down, a host without a
/// `bmc` value, wrong credentials, a `read` token, a service without credentials.
#[test]
fn attach_all_in_parallel_reports_each_host() {
    const N: usize = 50;
    let emu = Emulator::start(EmulatorConfig::new(N));
    let port = free_port();
    let mut rows = String::new();
    for i in 0..N {
        rows += &format!("n{i:02},10.9.0.{}/24,,,,e2e,{}\n", i + 10, emu.system_url(i));
    }
    let closed = free_port(); // nothing listens there
    rows += &format!("down,10.9.0.200/24,,,,e2e,http://127.0.0.1:{closed}\n");
    rows += "nobmc,10.9.0.201/24,,,,e2e,\n";
    let f = Fixture::start(&rows, port, None, true);

    let started = std::time::Instant::now();
    let (ok, out, err) = f.cli(&["attach", "--all", "--boot", "once"]);
    let elapsed = started.elapsed();
    assert!(!ok, "one BMC is down: the exit status must say so\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), N + 1, "one line per host with a bmc value, in order:\n{out}");
    for (i, line) in lines.iter().take(N).enumerate() {
        assert!(
            line.starts_with(&format!("n{i:02}: ok: ISO attached, boots from CD: Once")),
            "{line}"
        );
    }
    assert!(
        lines[N].starts_with("down: FAILED (HTTP 502): down: cannot reach the BMC"),
        "{}",
        lines[N]
    );
    assert!(err.contains("1 of 51 hosts failed"), "{err}");
    eprintln!("attach --all: {N} BMCs (plus one down) in {:.1}s", elapsed.as_secs_f64());
    for i in [0, N / 2, N - 1] {
        let media = cd(&emu, i);
        assert_eq!(media["Inserted"], true);
        assert!(media["Image"].as_str().unwrap().contains(&format!("/media/n{i:02}.iso?")));
    }

    // A named host without a bmc value, and an unknown one: clear messages.
    let (ok, out, _) = f.cli(&["attach", "nobmc", "ghost"]);
    assert!(!ok);
    assert!(
        out.contains("nobmc: FAILED (HTTP 409): nobmc has no BMC: fill the `bmc` column"),
        "{out}"
    );
    assert!(out.contains("ghost: FAILED (HTTP 404)"), "{out}");

    // A read token may look but not attach.
    let (status, _) = api("PUT", &format!("{}/hosts/n00/media", f.base), READ_TOKEN, "{}");
    assert_eq!(status, 403);
    let (status, _) = api(
        "PUT",
        &format!("{}/hosts/n00/media", f.base),
        REIMAGE_TOKEN,
        r#"{"boot": "sometimes"}"#,
    );
    assert_eq!(status, 400);

    let (ok, out, err) = f.cli(&["detach", "n00", "n01"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(cd(&emu, 0)["Inserted"], false);
    assert_eq!(cd(&emu, 2)["Inserted"], true, "detach touched only the hosts named");
}

#[test]
fn wrong_credentials_and_no_credentials_are_explained() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let port = free_port();
    let row = format!("n1,10.9.0.10/24,,,,e2e,{}\n", emu.system_url(0));
    let f = Fixture::start(&row, port, None, true);
    // Change the password file: the credentials are read again for each request.
    std::fs::write(f.dir.path().join("bmc.pass"), "not-the-password\n").unwrap();
    let (ok, out, _) = f.cli(&["attach", "n1"]);
    assert!(!ok);
    assert!(out.contains("refused the credentials of user \"admin\""), "{out}");
    assert!(!out.contains("not-the-password"), "a password reached the output");
    assert_eq!(cd(&emu, 0)["Inserted"], false);
    drop(f);

    let f = Fixture::start(&row, free_port(), None, false);
    let (ok, out, _) = f.cli(&["attach", "n1"]);
    assert!(!ok);
    assert!(out.contains("HTTP 409") && out.contains("--bmc-credentials"), "{out}");
}

/// Without --secret-file, media URLs die with the process: attach refuses rather than leave
/// every BMC with a CD that stops working at the next restart.
#[test]
fn attach_needs_a_lasting_key() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let row = format!("n1,10.9.0.10/24,,,,e2e,{}\n", emu.system_url(0));
    let mut f = Fixture::start_with(&row, free_port(), None, true, false);
    let (ok, out, _) = f.cli(&["attach", "n1"]);
    assert!(!ok);
    assert!(out.contains("HTTP 409") && out.contains("attach needs --secret-file"), "{out}");
    assert_eq!(cd(&emu, 0)["Inserted"], false);
    f.server.take().unwrap().shutdown();
}

/// A credentials file by network: the BMC inside `127.0.0.0/8` gets the password; a row pointed
/// at a name outside every line (as an inventory edit could do) is refused before any
/// connection, so the password never leaves the network. A listener there counts connections.
#[test]
fn a_network_line_keeps_the_password_inside_its_network() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let emu = Emulator::start(EmulatorConfig::new(1));
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let knocks = Arc::new(AtomicUsize::new(0));
    let counted = knocks.clone();
    std::thread::spawn(move || {
        for stream in trap.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let port = free_port();
    let rows = format!(
        "inside,10.9.0.10/24,,,,e2e,{}\noutside,10.9.0.11/24,,,,e2e,http://localhost:{trap_port}\n",
        emu.system_url(0)
    );
    let f = Fixture::start(&rows, port, None, true);
    // The file is read again for every request: narrow it to the loopback network.
    let creds = f.dir.path().join("bmc-credentials");
    let pass = f.dir.path().join("bmc.pass");
    std::fs::write(&creds, format!("127.0.0.0/8 admin {} allow-http\n", pass.display())).unwrap();

    let (ok, out, err) = f.cli(&["attach", "inside", "outside"]);
    assert!(!ok, "one host failed: the exit status says so\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("inside: ok: ISO attached"), "{out}");
    assert!(
        lines[1].starts_with(
            "outside: FAILED (HTTP 409): no line of the BMC credentials file covers outside's BMC (localhost)"
        ),
        "{out}"
    );
    assert_eq!(cd(&emu, 0)["Inserted"], true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(knocks.load(Ordering::SeqCst), 0, "nothing was sent outside the network");
}

/// POST a Redfish action straight to the emulator, as its admin: (status, body).
fn redfish_post(url: &str, body: &Value) -> (u16, String) {
    let auth = format!("Basic {}", base64_admin());
    let req = ureq::post(url).set("Authorization", &auth).set("Content-Type", "application/json");
    match req.send_string(&body.to_string()) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// `text` percent-decoded and HTML-unescaped until it stops changing, lower case: what a
/// determined reader could make of it.
fn fully_decoded(text: &str) -> String {
    let mut current = text.to_lowercase();
    loop {
        let next = percent_encoding::percent_decode_str(&current)
            .decode_utf8_lossy()
            .replace("&amp;", "&")
            .replace("&#x3f;", "?")
            .replace("&#63;", "?")
            .replace("\\u0026", "&")
            .to_lowercase();
        if next == current {
            return current;
        }
        current = next;
    }
}

/// How BMCs hand back the URL they were given, besides verbatim.
fn query_upper(u: &str) -> String {
    let (path, query) = u.split_once('?').unwrap();
    format!("{path}%3F{}", query.replace('&', "%26").replace('=', "%3D"))
}
fn query_lower(u: &str) -> String {
    let (path, query) = u.split_once('?').unwrap();
    format!("{path}%3f{}", query.replace('&', "%26").replace('=', "%3d"))
}
fn query_twice(u: &str) -> String {
    let (path, query) = u.split_once('?').unwrap();
    format!("{path}%253F{}", query.replace('&', "%2526").replace('=', "%253D"))
}
fn html_escaped(u: &str) -> String {
    u.replace('&', "&amp;")
}
fn all_mixed_case(u: &str) -> String {
    // Every character but letters and digits encoded, every other escape in lower case.
    let all = percent_encoding::utf8_percent_encode(u, percent_encoding::NON_ALPHANUMERIC);
    let mut out = String::new();
    for (i, part) in all.to_string().split('%').enumerate() {
        if i > 0 {
            out.push('%');
            out.push_str(&if i % 2 == 0 { part.to_lowercase() } else { part.to_string() });
        } else {
            out.push_str(part);
        }
    }
    out
}
fn verbatim(u: &str) -> String {
    u.to_string()
}

/// Issue 13, bug 7: a `read` caller must never get a signed media URL from the BMC view,
/// whatever encoding the BMC reports it in. A real URL minted by the service is mounted on the
/// emulator directly (which downloads it: it works); the BMC, behind a proxy, reports it back
/// percent-encoded once or twice, in either case, or HTML-escaped. The `read` answer holds no
/// signature and no `/media/` URL in any decoding; `reimage` and `admin`, who could mint the
/// URL themselves, see what the BMC reports.
#[test]
fn a_read_caller_never_gets_a_signed_url_in_any_encoding() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let encodings: [fn(&str) -> String; 6] =
        [verbatim, query_upper, query_lower, query_twice, html_escaped, all_mixed_case];
    let proxies: Vec<Proxy> = encodings
        .iter()
        .map(|&f| Proxy::start(emu.port, Quirks { report_image: Some(f), ..Quirks::default() }))
        .collect();
    let system = emu.system_url(0);
    let system_path = system.strip_prefix(&emu.base).unwrap();
    let rows: String = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| format!("h{i},10.9.0.{}/24,,,,e2e,{}{system_path}\n", 10 + i, p.base))
        .collect();
    let f = Fixture::start(&rows, free_port(), None, true);
    let actions = format!("{system}/VirtualMedia/Cd/Actions/VirtualMedia");

    for (i, encode) in encodings.iter().enumerate() {
        let host = format!("h{i}");
        let (status, minted) =
            api("POST", &format!("{}/hosts/{host}/media-url", f.base), REIMAGE_TOKEN, "{}");
        assert_eq!(status, 200, "{minted}");
        let url = minted["url"].as_str().unwrap().to_string();
        let sig = url.rsplit_once("sig=").unwrap().1.to_lowercase();
        assert_eq!(sig.len(), 64, "{url}");
        redfish_post(&format!("{actions}.EjectMedia"), &serde_json::json!({}));
        let (status, body) = redfish_post(
            &format!("{actions}.InsertMedia"),
            &serde_json::json!({"Image": url, "Inserted": true, "WriteProtected": true}),
        );
        assert!((200..300).contains(&status), "the emulator mounts the URL: {status} {body}");
        let reported = encode(&url);

        let (status, view) = api("GET", &format!("{}/hosts/{host}/media", f.base), READ_TOKEN, "");
        assert_eq!(status, 200, "{view}");
        let text = fully_decoded(&view.to_string());
        assert!(!text.contains(&sig), "encoding {i}: the signature reached a read caller: {view}");
        assert!(!text.contains("sig="), "encoding {i}: {view}");
        assert!(
            !text.contains("/media/"),
            "encoding {i}: a media URL reached a read caller: {view}"
        );
        assert_eq!(
            view["bmc"]["media"]["image"],
            format!("(hidden) a bootforge iso medium of {host}"),
            "encoding {i}: {reported}"
        );
        assert_eq!(view["url_expires_at"], minted["expires_at"], "encoding {i}: {view}");

        // The roles that mint URLs see what the BMC reports, as documented.
        for token in [REIMAGE_TOKEN, ADMIN_TOKEN] {
            let (status, view) = api("GET", &format!("{}/hosts/{host}/media", f.base), token, "");
            assert_eq!(status, 200, "{view}");
            assert_eq!(view["bmc"]["media"]["image"], reported.as_str(), "encoding {i}");
        }
    }
}

/// Issue 13: a credentials line binds a password to addresses, not to a scheme. A row whose
/// `bmc` is `http://` gets no request at all (so no Authorization header crosses the network
/// in clear) unless its line says `allow-http`; the error names the host, the URL and the line.
#[test]
fn plain_http_needs_allow_http_on_the_credentials_line() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks::default());
    let system_path = emu.system_url(0).strip_prefix(&emu.base).unwrap().to_string();
    let bmc_url = format!("{}{system_path}", proxy.base);
    let row = format!("h1,10.9.0.10/24,,,,e2e,{bmc_url}\n");
    let f = Fixture::start(&row, free_port(), None, true);
    let creds = f.dir.path().join("bmc-credentials");
    let pass = f.dir.path().join("bmc.pass");
    // Read again for each request: the line for the loopback address, without the option.
    std::fs::write(&creds, format!("127.0.0.1 admin {}\n", pass.display())).unwrap();

    for (method, token) in [("PUT", REIMAGE_TOKEN), ("DELETE", REIMAGE_TOKEN), ("GET", READ_TOKEN)]
    {
        let (status, body) = api(method, &format!("{}/hosts/h1/media", f.base), token, "");
        assert_eq!(status, 409, "{method}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        for part in ["h1", bmc_url.as_str(), &format!("{}:1", creds.display()), "allow-http"] {
            assert!(error.contains(part), "{method}: the error names {part}: {error}");
        }
    }
    assert!(
        proxy.seen().is_empty(),
        "nothing may reach a BMC over http:// without allow-http: {:?}",
        proxy
            .seen()
            .iter()
            .map(|s| (&s.method, &s.path, s.header("Authorization").is_some()))
            .collect::<Vec<_>>()
    );
    assert_eq!(cd(&emu, 0)["Inserted"], false);

    std::fs::write(&creds, format!("127.0.0.1 admin {} allow-http\n", pass.display())).unwrap();
    let (status, body) = api("PUT", &format!("{}/hosts/h1/media", f.base), REIMAGE_TOKEN, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(cd(&emu, 0)["Inserted"], true);
    assert!(proxy.seen().iter().all(|s| s.header("Authorization").is_some()));
}

/// Issue 13: a slow BMC cannot hold an attach beyond `--bmc-deadline`: the caller gets 504 at
/// the deadline (plus a small margin), naming the host and the step reached, and the attempt
/// is audited as failed.
#[test]
fn a_slow_bmc_is_answered_at_the_deadline() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let slow =
        Proxy::start(emu.port, Quirks { delay: Some(Duration::from_secs(5)), ..Quirks::default() });
    let system_path = emu.system_url(0).strip_prefix(&emu.base).unwrap().to_string();
    let row = format!("slow,10.9.0.10/24,,,,e2e,{}{system_path}\n", slow.base);
    let deadline = Duration::from_secs(2);
    let f = Fixture::start_config(&row, free_port(), None, true, true, |c, _| {
        c.bmc_deadline = deadline;
    });
    let started = std::time::Instant::now();
    let (status, body) = api("PUT", &format!("{}/hosts/slow/media", f.base), REIMAGE_TOKEN, "");
    let elapsed = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(elapsed < deadline + Duration::from_secs(2), "answered after {elapsed:?}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("slow: "), "{error}");
    assert!(error.contains("while finding the system"), "names the step reached: {error}");
    assert!(error.contains("GET /hosts/slow/media"), "says how to look: {error}");
    let log = f.audit_with("\"action\":\"attach\"");
    let record = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "bmc-media" && e["action"] == "attach")
        .unwrap_or_else(|| panic!("the attach is audited:\n{log}"));
    assert_eq!(record["ok"], false, "{record}");
    // Detach and the status read have the same deadline.
    let started = std::time::Instant::now();
    let (status, body) = api("GET", &format!("{}/hosts/slow/media", f.base), READ_TOKEN, "");
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < deadline + Duration::from_secs(2));
}

/// Issue 13: `read` callers cannot take every BMC slot with status reads of slow BMCs: with 64
/// reads held by a slow BMC (as many as there are slots), an attach by `reimage` on another BMC
/// still runs at once.
#[test]
fn status_reads_leave_slots_for_attach() {
    let emu = Emulator::start(EmulatorConfig::new(2));
    let slow = Proxy::start(
        emu.port,
        Quirks { delay: Some(Duration::from_secs(12)), ..Quirks::default() },
    );
    let path = |i: usize| emu.system_url(i).strip_prefix(&emu.base).unwrap().to_string();
    let rows = format!(
        "slow,10.9.0.10/24,,,,e2e,{}{}\nfast,10.9.0.11/24,,,,e2e,{}\n",
        slow.base,
        path(0),
        emu.system_url(1)
    );
    let f = Fixture::start(&rows, free_port(), None, true);
    // Build the ISO once, so the attach below measures slots, not the first build.
    let (status, minted) =
        api("POST", &format!("{}/hosts/fast/media-url", f.base), REIMAGE_TOKEN, "{}");
    assert_eq!(status, 200, "{minted}");
    let resp = ureq::get(minted["url"].as_str().unwrap()).call().unwrap();
    std::io::copy(&mut resp.into_reader(), &mut std::io::sink()).unwrap();

    for _ in 0..64 {
        let url = format!("{}/hosts/slow/media", f.base);
        // Left running: the service may shut down before the slow BMC answers them.
        std::thread::spawn(move || {
            let auth = format!("Bearer {READ_TOKEN}");
            let _ = ureq::get(&url).set("Authorization", &auth).call();
        });
    }
    // Wait until the reads hold their slots: at least the 48 they may have are at the BMC.
    let waited = std::time::Instant::now();
    while slow.seen().len() < 48 {
        assert!(waited.elapsed() < Duration::from_secs(20), "reads: {}", slow.seen().len());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = slow.seen().len();

    let started = std::time::Instant::now();
    let (status, body) = api("PUT", &format!("{}/hosts/fast/media", f.base), REIMAGE_TOKEN, "");
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(elapsed < Duration::from_secs(10), "the attach waited {elapsed:?} for a slot");
    assert_eq!(held, 48, "reads hold at most 48 of the 64 slots");
    assert_eq!(cd(&emu, 1)["Inserted"], true);
}

/// The service's own TLS listener with a private CA (`support::pki`), its minted media URLs on
/// `https://`: the tweak that [`Fixture::start_config`] takes. `ca` is what `--tls-ca` names.
fn over_tls(
    leaf: &common::pki::Leaf,
    ca: &std::path::Path,
    tls_port: u16,
) -> impl FnOnce(&mut bootforge::serve::Config, &std::path::Path) {
    let (chain, key, ca) = (leaf.chain.clone(), leaf.key.clone(), ca.to_path_buf());
    move |c, _| {
        c.listen_tls = Some(format!("127.0.0.1:{tls_port}"));
        c.tls_cert = Some(chain);
        c.tls_key = Some(key);
        c.tls_ca = Some(ca);
        c.media_base_url = Some(format!("https://127.0.0.1:{tls_port}").parse().unwrap());
    }
}

/// The audit records of `kind` for `host`.
fn records(f: &Fixture, kind: &str, host: &str) -> Vec<Value> {
    f.audit()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == kind && e["host"] == host)
        .collect()
}

/// Issue 16: media over https with the operator's private CA. Attach enrolls the CA
/// (`--tls-ca`) in the emulator's virtual CD `Certificates`, turns `VerifyCertificate` on, then
/// inserts: sushy-tools downloads the ISO from `bootforge serve --listen-tls` with exactly the
/// enrolled certificate as its trust. A second attach finds the CA there and adds nothing; the
/// change to the BMC's trust is audited once, with the CA's fingerprint.
#[test]
fn attach_over_https_enrolls_the_service_ca_once_and_the_bmc_verifies_it() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let pki = common::pki::Pki::rsa("bootforge test service CA");
    let leaf = pki.leaf(&common::pki::LeafSpec::server("IP:127.0.0.1"));
    let (port, tls_port) = (free_port(), free_port());
    let row = format!("node01,10.9.0.10/24,,,,e2e,{}\n", emu.system_url(0));
    let f = Fixture::start_config(
        &row,
        port,
        None,
        true,
        true,
        over_tls(&leaf, &pki.ca_cert, tls_port),
    );
    let certificates = format!("{}/VirtualMedia/Cd/Certificates", emu.system_url(0));
    assert_eq!(cd(&emu, 0)["VerifyCertificate"], false, "the emulator starts without checks");
    assert_eq!(redfish(&certificates)["Members"].as_array().unwrap().len(), 0);

    let attach = || api("PUT", &format!("{}/hosts/node01/media", f.base), REIMAGE_TOKEN, "");
    let (status, first) = attach();
    assert_eq!(status, 200, "{first}\n{}", emu.log_text());
    let trust = &first["report"]["media_ca"];
    assert_eq!(trust["status"], "enrolled", "{first}");
    assert_eq!((trust["added"].as_u64(), trust["verify_set"].as_bool()), (Some(1), Some(true)));
    let fingerprint = hex::encode(Sha256::digest(pki.ca_der()));
    assert_eq!(trust["fingerprints"], serde_json::json!([fingerprint]));

    // What the BMC holds: our https URL, verification on, and exactly our CA.
    let media = cd(&emu, 0);
    let image = media["Image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("https://127.0.0.1:{tls_port}/media/node01.iso?")),
        "{image}"
    );
    assert_eq!(
        (media["Inserted"].as_bool(), media["VerifyCertificate"].as_bool()),
        (Some(true), Some(true))
    );
    let members = redfish(&certificates)["Members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1, "{members:?}");
    let held = redfish(&format!("{}{}", emu.base, members[0]["@odata.id"].as_str().unwrap()));
    assert_eq!(held["CertificateType"], "PEM");
    assert_eq!(
        common::pki::pem_to_der(held["CertificateString"].as_str().unwrap()),
        pki.ca_der(),
        "the enrolled certificate is the CA of --tls-ca"
    );
    // The emulator fetched the image from the TLS listener.
    let log = f.audit_with("\"event\":\"media-served\"");
    assert!(log.contains("\"event\":\"media-served\",\"host\":\"node01\""), "{log}");

    // Again: the CA is found (compared by its bytes) and not added twice.
    let (status, second) = attach();
    assert_eq!(status, 200, "{second}\n{}", emu.log_text());
    let trust = &second["report"]["media_ca"];
    assert_eq!(trust["status"], "present", "{second}");
    assert_eq!((trust["added"].as_u64(), trust["verify_set"].as_bool()), (Some(0), Some(false)));
    assert_eq!(redfish(&certificates)["Members"].as_array().unwrap().len(), 1);
    assert_eq!(cd(&emu, 0)["Inserted"], true);

    // Audited: one change of the BMC's trust (who, which CA), and each attach says what it found.
    f.audit_with("\"media_ca\":\"present\"");
    let changes = records(&f, "bmc-trust", "node01");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["certificates"], serde_json::json!([fingerprint]));
    assert_eq!(
        (changes[0]["added"].as_u64(), changes[0]["verify_set"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(changes[0]["by"], "ops");
    let attaches: Vec<_> =
        records(&f, "bmc-media", "node01").iter().map(|e| e["media_ca"].clone()).collect();
    assert_eq!(attaches, [serde_json::json!("enrolled"), serde_json::json!("present")]);
}

/// Issue 16: `--tls-ca` names a CA that did not issue the service's certificate. The BMC is
/// given that CA and checks the download against it, so it cannot fetch the image: the attach
/// fails and says what to fix, the CD stays empty, and the change of the BMC's trust is still
/// audited (it happened).
#[test]
fn attach_with_a_ca_that_did_not_issue_the_service_certificate_fails_clearly() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let issuer = common::pki::Pki::rsa("bootforge test service CA");
    let stranger = common::pki::Pki::rsa("bootforge test other CA");
    let leaf = issuer.leaf(&common::pki::LeafSpec::server("IP:127.0.0.1"));
    let tls_port = free_port();
    let row = format!("node01,10.9.0.10/24,,,,e2e,{}\n", emu.system_url(0));
    let f = Fixture::start_config(
        &row,
        free_port(),
        None,
        true,
        true,
        over_tls(&leaf, &stranger.ca_cert, tls_port),
    );
    let (status, body) = api("PUT", &format!("{}/hosts/node01/media", f.base), REIMAGE_TOKEN, "");
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    for part in [
        "node01: ",
        "the BMC checks the image's https certificate against the CA it was given from --tls-ca",
        &stranger.ca_cert.display().to_string(),
        "give --tls-ca the CA that issued --tls-cert",
    ] {
        assert!(error.contains(part), "the error says {part:?}: {error}");
    }
    let media = cd(&emu, 0);
    assert_eq!(media["Inserted"], false, "{media}");
    assert!(
        emu.log_text().contains("CERTIFICATE_VERIFY_FAILED"),
        "the emulator refused the service's certificate:\n{}",
        emu.log_text()
    );
    f.audit_with("\"event\":\"bmc-media\"");
    assert_eq!(records(&f, "bmc-trust", "node01").len(), 1);
    let attach = &records(&f, "bmc-media", "node01")[0];
    assert_eq!(attach["ok"], false, "{attach}");
}

/// Issue 16: a BMC whose virtual CD has no `Certificates` collection (VirtualMedia before 1.4;
/// the proxy hides it) keeps today's behaviour: the image is inserted without touching the
/// BMC's verification, and the answer carries a note saying why the CA was not enrolled.
#[test]
fn a_bmc_without_media_certificates_attaches_as_before_with_a_note() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks { no_media_certificates: true, ..Quirks::default() });
    let system_path = emu.system_url(0).strip_prefix(&emu.base).unwrap().to_string();
    let pki = common::pki::Pki::rsa("bootforge test service CA");
    let leaf = pki.leaf(&common::pki::LeafSpec::server("IP:127.0.0.1"));
    let tls_port = free_port();
    let row = format!("node01,10.9.0.10/24,,,,e2e,{}{system_path}\n", proxy.base);
    let f = Fixture::start_config(
        &row,
        free_port(),
        None,
        true,
        true,
        over_tls(&leaf, &pki.ca_cert, tls_port),
    );
    let (status, body) = api("PUT", &format!("{}/hosts/node01/media", f.base), REIMAGE_TOKEN, "");
    assert_eq!(status, 200, "{body}\n{}", emu.log_text());
    let trust = &body["report"]["media_ca"];
    assert_eq!(trust["status"], "unsupported", "{body}");
    assert!(trust["note"].as_str().unwrap().contains("has no Certificates collection"), "{body}");
    let media = cd(&emu, 0);
    assert_eq!(
        (media["Inserted"].as_bool(), media["VerifyCertificate"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        !proxy.seen().iter().any(|s| s.path.contains("Certificates")
            || (s.method == "PATCH" && s.path.contains("VirtualMedia"))),
        "nothing was enrolled or switched"
    );
    f.audit_with("\"media_ca\":\"unsupported\"");
    assert!(records(&f, "bmc-trust", "node01").is_empty());
}

/// An enrollment that changes the BMC's trust and then fails (the CA is added, but the BMC
/// refuses to switch `VerifyCertificate` on) is still audited: the BMC now trusts our CA, and
/// the record says so (one certificate added, verification not set), though the attach failed.
#[test]
fn a_trust_change_is_audited_when_a_later_enrollment_step_fails() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks { refuse_verify: true, ..Quirks::default() });
    let system_path = emu.system_url(0).strip_prefix(&emu.base).unwrap().to_string();
    let pki = common::pki::Pki::rsa("bootforge test service CA");
    let leaf = pki.leaf(&common::pki::LeafSpec::server("IP:127.0.0.1"));
    let row = format!("node01,10.9.0.10/24,,,,e2e,{}{system_path}\n", proxy.base);
    let f = Fixture::start_config(
        &row,
        free_port(),
        None,
        true,
        true,
        over_tls(&leaf, &pki.ca_cert, free_port()),
    );
    let (status, body) = api("PUT", &format!("{}/hosts/node01/media", f.base), REIMAGE_TOKEN, "");
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("read-only"), "{body}");
    assert_eq!(cd(&emu, 0)["Inserted"], false);
    f.audit_with("\"event\":\"bmc-media\"");
    let changes = records(&f, "bmc-trust", "node01");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0]["added"].as_u64(), changes[0]["verify_set"].as_bool()),
        (Some(1), Some(false)),
        "{changes:?}"
    );
    assert_eq!(records(&f, "bmc-media", "node01")[0]["ok"], false);
}
