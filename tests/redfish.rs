//! The Redfish client against a real BMC emulator (sushy-tools' `sushy-emulator --fake`, from
//! the virtualenv `scripts/setup --test` makes): attach, re-attach, detach, boot override modes,
//! reset, the root and System URL forms, a BMC that is down or silent, wrong credentials, TLS
//! with a private CA, and 50 BMCs at once. No test skips: without the emulator they fail and
//! say which setup step is missing. See `serve_support/sushy.rs` for the harness.

#[path = "serve_support/sushy.rs"]
mod sushy;

use bootforge::inventory::Inventory;
use bootforge::redfish::{
    BmcTarget, BmcUrl, BootMode, Client, ClientOptions, Credentials, CredentialsFile, Password,
    RedfishError, TlsPolicy,
};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use sushy::{Ca, Emulator, EmulatorConfig, FakeSystem, ImageServer, Proxy, Quirks};

const PASSWORD: &str = "password";

/// Options that keep failing tests short: quick backoff and task polls.
fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        retries: 2,
        backoff: Duration::from_millis(100),
        task_deadline: Duration::from_secs(30),
        task_poll: Duration::from_millis(200),
        ca_file: None,
    }
}

fn client() -> Client {
    Client::new(options()).unwrap()
}

fn target(url: &str) -> BmcTarget {
    target_as(url, "admin", PASSWORD)
}

fn target_as(url: &str, user: &str, password: &str) -> BmcTarget {
    BmcTarget {
        url: url.parse::<BmcUrl>().unwrap_or_else(|e| panic!("{e}")),
        credentials: Credentials {
            user: user.into(),
            password: Password::new(password),
            source: Some("test credentials".into()),
        },
        tls: TlsPolicy::Verify,
        // The emulator of most tests speaks plain HTTP on loopback, as a credentials line with
        // `allow-http` allows.
        allow_http: true,
    }
}

/// A GET straight to the emulator, bypassing the client under test.
fn raw_get(emu: &Emulator, path: &str) -> Value {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    let text = ureq::get(&format!("{}{path}", emu.base))
        .set("Authorization", &format!("Basic {auth}"))
        .timeout(Duration::from_secs(20))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .into_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn iso(tag: u8) -> Vec<u8> {
    (0..65_536u32).map(|i| (i as u8) ^ tag).collect()
}

fn images() -> ImageServer {
    ImageServer::start(&[("/media/node01.iso", iso(1)), ("/media/node01-v2.iso", iso(2))])
}

fn private_file(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The whole path an operator takes: an inventory row's `bmc` column and a credentials file
/// give the target; attach, re-attach over a mounted image, detach, detach again.
#[test]
fn attach_reattach_detach_from_inventory_and_credentials_file() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let inv = Inventory::parse(
        "nodes.csv",
        format!("hostname,ip,bmc\nnode01,10.0.0.11/24,{}\n", emu.base).as_bytes(),
    )
    .unwrap();
    let bmc = inv.get("node01").unwrap().bmc.clone().expect("bmc column parsed");
    private_file(&dir.path().join("bmc.pass"), &format!("{PASSWORD}\n"));
    private_file(
        &dir.path().join("creds"),
        // The emulator speaks plain HTTP: its line must allow it.
        "# test\n127.0.0.1 admin bmc.pass allow-http\n* nobody env:UNUSED_BUT_SET_IN_TEST\n",
    );
    let file = CredentialsFile::load_with_env(&dir.path().join("creds"), |n| {
        (n == "UNUSED_BUT_SET_IN_TEST").then(|| "x".to_string())
    })
    .unwrap();
    let t = file.target(&bmc).unwrap();
    assert_eq!(t.credentials.user, "admin", "the host's own line wins over `*`");
    let c = client();

    let first = img.url("/media/node01.iso");
    let report = c.attach(&t, &first, BootMode::Continuous, false).unwrap();
    println!("attach: {}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.system, emu.system_url(0), "the only System of the root");
    assert!(report.media.starts_with(&format!("{}/VirtualMedia/", emu.system_url(0))));
    assert_eq!(report.ejected, None, "nothing was mounted");
    assert_eq!(report.inserted_by, "InsertMedia");
    assert_eq!(report.boot_override, Some("Continuous"));
    assert_eq!(report.reset, None);
    assert_eq!(report.media_after.image.as_deref(), Some(first.as_str()));
    assert_eq!(report.media_after.inserted, Some(true));
    assert_eq!(img.hits("/media/node01.iso"), 1, "the emulator fetched the image once");

    let view = c.status(&t).unwrap();
    assert_eq!(view.media.image.as_deref(), Some(first.as_str()));
    assert_eq!(view.media.inserted, Some(true));
    assert_eq!(view.media.write_protected, Some(true));
    assert_eq!(view.boot.target.as_deref(), Some("Cd"));
    assert_eq!(view.boot.enabled.as_deref(), Some("Continuous"));
    let raw = raw_get(&emu, &format!("/redfish/v1/Systems/{}", emu.systems[0].uuid));
    assert_eq!(raw["Boot"]["BootSourceOverrideTarget"], "Cd");
    let media_path = report.media.strip_prefix(&emu.base).unwrap().to_string();
    assert_eq!(raw_get(&emu, &media_path)["Image"], first.as_str());

    // Re-attach: the mounted image is ejected first, then the new one inserted.
    let second = img.url("/media/node01-v2.iso");
    let report = c.attach(&t, &second, BootMode::Continuous, false).unwrap();
    assert_eq!(report.ejected.as_deref(), Some(first.as_str()));
    assert_eq!(report.media_after.image.as_deref(), Some(second.as_str()));
    assert_eq!(raw_get(&emu, &media_path)["Image"], second.as_str());
    assert_eq!(img.hits("/media/node01-v2.iso"), 1);

    let report = c.detach(&t).unwrap();
    assert_eq!(report.ejected.as_deref(), Some(second.as_str()));
    assert!(report.override_disabled, "the override pointed at the CD");
    let raw_media = raw_get(&emu, &media_path);
    assert_eq!(raw_media["Inserted"], false);
    assert_eq!(raw_media["Image"], "");
    let view = c.status(&t).unwrap();
    assert_eq!(view.media.image, None);
    assert_eq!(view.media.inserted, Some(false));
    // sushy-tools wants a target in every Boot PATCH and has no `None`: detach sends `Hdd`.
    assert_eq!(view.boot.target.as_deref(), Some("Hdd"));

    let again = c.detach(&t).unwrap();
    assert_eq!(again.ejected, None, "nothing left to eject");
    assert!(!again.override_disabled, "an override that is not ours stays");
}

/// A root with several Systems fails and asks for the System URL; the System URL works, also
/// by the System's name (the emulator redirects it to the UUID, within its own origin).
#[test]
fn root_with_several_systems_asks_for_the_system_url() {
    let emu = Emulator::start(EmulatorConfig::new(3));
    let img = images();
    let c = client();
    let err = c.status(&target(&emu.base)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RedfishError::AmbiguousSystem { count: 3, .. }), "{err:?}");
    assert!(text.contains("manages 3 systems"), "{text}");
    assert!(text.contains("give the full System URL"), "{text}");
    assert!(text.contains(&format!("{}/redfish/v1/Systems/", emu.base)), "an example: {text}");

    // A System URL that does not exist: the BMC's own message.
    let err = c.status(&target(&format!("{}/redfish/v1/Systems/nope", emu.base))).unwrap_err();
    assert!(matches!(err, RedfishError::Status { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("Fake system nope was not found"), "{err}");

    let second = emu.system_url(1);
    let report =
        c.attach(&target(&second), &img.url("/media/node01.iso"), BootMode::Once, false).unwrap();
    assert_eq!(report.system, second);
    // Only system 2 got the image.
    for i in [0, 2] {
        let v = c.status(&target(&emu.system_url(i))).unwrap();
        assert_eq!(v.media.image, None, "system {i} untouched");
    }

    let by_name = format!("{}/redfish/v1/Systems/{}", emu.base, emu.systems[2].name);
    let report =
        c.attach(&target(&by_name), &img.url("/media/node01.iso"), BootMode::Once, false).unwrap();
    assert_eq!(report.system, emu.system_url(2), "the canonical URL, after the redirect");
    assert_eq!(
        c.status(&target(&emu.system_url(2))).unwrap().media.image.as_deref(),
        Some(img.url("/media/node01.iso").as_str())
    );
}

/// `Once` and `Continuous` are what the client sends (seen by a recording proxy in front of the
/// emulator); the emulator itself always reports `Continuous`, which status reports as it is.
/// `None` sends no Boot PATCH at all. Requests go in order: eject, insert, boot, reset; and to
/// the action targets the resources name.
#[test]
fn once_continuous_and_none_and_the_order_of_requests() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let img = images();
    let proxy = Proxy::start(emu.port, Quirks::default());
    let t = target(&format!("{}/redfish/v1/Systems/{}", proxy.base, emu.systems[0].uuid));
    let c = client();
    let image = img.url("/media/node01.iso");

    for (mode, sent) in [(BootMode::Once, "Once"), (BootMode::Continuous, "Continuous")] {
        proxy.clear();
        c.attach(&t, &image, mode, false).unwrap();
        let patches: Vec<_> = proxy.seen().into_iter().filter(|s| s.method == "PATCH").collect();
        assert_eq!(patches.len(), 1, "{patches:?}");
        let body: Value = serde_json::from_str(&patches[0].body).unwrap();
        assert_eq!(body["Boot"]["BootSourceOverrideEnabled"], sent);
        assert_eq!(body["Boot"]["BootSourceOverrideTarget"], "Cd");
        let view = c.status(&t).unwrap();
        assert_eq!(view.boot.target.as_deref(), Some("Cd"));
        // The fake driver ignores BootSourceOverrideEnabled and always says Continuous; status
        // reports the BMC's word, not what was sent.
        assert_eq!(view.boot.enabled.as_deref(), Some("Continuous"));
        let raw = raw_get(&emu, &format!("/redfish/v1/Systems/{}", emu.systems[0].uuid));
        assert_eq!(raw["Boot"]["BootSourceOverrideEnabled"], "Continuous");
    }

    proxy.clear();
    let report = c.attach(&t, &image, BootMode::None, true).unwrap();
    assert_eq!(report.boot_override, None);
    let seen = proxy.seen();
    assert!(seen.iter().all(|s| s.method != "PATCH"), "BootMode::None leaves Boot alone");
    let posts: Vec<&str> =
        seen.iter().filter(|s| s.method == "POST").map(|s| s.path.as_str()).collect();
    let uuid = &emu.systems[0].uuid;
    assert_eq!(
        posts,
        [
            format!("/redfish/v1/Systems/{uuid}/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia"),
            format!("/redfish/v1/Systems/{uuid}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia"),
            format!("/redfish/v1/Systems/{uuid}/Actions/ComputerSystem.Reset"),
        ]
    );
    let insert = seen.iter().find(|s| s.path.ends_with("InsertMedia")).unwrap();
    let body: Value = serde_json::from_str(&insert.body).unwrap();
    assert_eq!(body["Image"], image.as_str());
    assert_eq!(body["Inserted"], true);
    assert_eq!(body["WriteProtected"], true);
    for s in &seen {
        assert!(s.header("Authorization").unwrap().starts_with("Basic "), "{s:?}");
        assert!(!s.body.contains(PASSWORD), "the password only in the header: {s:?}");
    }
}

/// Reset: `ForceRestart` for a running System (the fake driver shows it Off right after, then
/// On again), `On` for one that is off (it comes on within the emulator's random 1-11 s).
#[test]
fn reset_restarts_a_running_system_and_powers_on_a_stopped_one() {
    let emu = Emulator::start(EmulatorConfig {
        systems: vec![FakeSystem::numbered(1, "On"), FakeSystem::numbered(2, "Off")],
        ..EmulatorConfig::new(0)
    });
    let img = images();
    let c = client();
    let (on, off) = (target(&emu.system_url(0)), target(&emu.system_url(1)));
    let image = img.url("/media/node01.iso");

    let report = c.attach(&on, &image, BootMode::Once, true).unwrap();
    assert_eq!(report.reset.as_deref(), Some("ForceRestart"));
    let power = c.status(&on).unwrap().power_state;
    assert_eq!(power.as_deref(), Some("Off"), "a restart in progress reads Off at first");

    assert_eq!(c.status(&off).unwrap().power_state.as_deref(), Some("Off"));
    let report = c.attach(&off, &image, BootMode::Once, true).unwrap();
    assert_eq!(report.reset.as_deref(), Some("On"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if c.status(&off).unwrap().power_state.as_deref() == Some("On") {
            break;
        }
        assert!(Instant::now() < deadline, "the stopped System never came on");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A BMC that refuses connections, and one that accepts and never answers: clear errors, in
/// bounded time, after the configured retries.
#[test]
fn a_bmc_that_is_down_or_silent_fails_clearly_in_bounded_time() {
    let port = sushy::free_port();
    let c = client();
    let started = Instant::now();
    let err = c.status(&target(&format!("http://127.0.0.1:{port}"))).unwrap_err();
    let elapsed = started.elapsed();
    let text = err.to_string();
    println!("refused after {elapsed:?}: {text}");
    assert!(matches!(err, RedfishError::Unreachable { attempts: 3, .. }), "{err:?}");
    assert!(text.contains(&format!("cannot reach the BMC at http://127.0.0.1:{port}/")), "{text}");
    assert!(text.contains("3 attempts"), "{text}");
    assert!(elapsed < Duration::from_secs(3), "2 retries at 100 ms backoff: {elapsed:?}");

    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let quick =
        Client::new(ClientOptions { timeout: Duration::from_secs(1), retries: 1, ..options() })
            .unwrap();
    let started = Instant::now();
    let err = quick.status(&target(&url)).unwrap_err();
    let elapsed = started.elapsed();
    println!("silent after {elapsed:?}: {err}");
    assert!(matches!(err, RedfishError::Unreachable { attempts: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(elapsed >= Duration::from_secs(2), "two attempts of 1 s: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// A wrong password: a 401 that names the user and where the credentials came from, never the
/// password, in Display and Debug alike; and it is not retried.
#[test]
fn wrong_credentials_give_a_clear_401_without_the_password() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks::default());
    let secret = "s3cret-Wr0ng-pa55";
    let t = target_as(&emu.system_url(0).replace(&emu.base, &proxy.base), "admin", secret);
    let err = client().status(&t).unwrap_err();
    let (text, debug) = (err.to_string(), format!("{err:?}"));
    println!("{text}");
    assert!(matches!(err, RedfishError::Unauthorized { .. }), "{debug}");
    assert!(text.contains("refused the credentials of user \"admin\""), "{text}");
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("test credentials"), "names the source: {text}");
    assert!(!text.contains(secret) && !debug.contains(secret), "{text} / {debug}");
    assert_eq!(proxy.seen().len(), 1, "a 401 is not retried");

    // Unknown user: the same.
    let err = client().status(&target_as(&emu.system_url(0), "ghost", secret)).unwrap_err();
    assert!(err.to_string().contains("\"ghost\""), "{err}");
}

/// The BMC's own message reaches the error; a 5xx is retried and a 4xx is not. The emulator
/// answers 502 when the image server fails with a 5xx, and 400 when it answers 404: the image
/// server counts the emulator's download attempts.
#[test]
fn bmc_messages_surface_and_only_5xx_is_retried() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let img = images();
    let c = client();
    let t = target(&emu.system_url(0));

    let err = c.attach(&t, &img.url("/status/500/x.iso"), BootMode::Once, false).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, RedfishError::Status { status: 502, .. }), "{err:?}");
    assert!(text.contains("Cannot download virtual media: got error 500"), "{text}");
    assert!(text.contains("InsertMedia"), "names the action's URL: {text}");
    assert_eq!(img.hits("/status/500/x.iso"), 3, "1 attempt + 2 retries");

    let err = c.attach(&t, &img.url("/missing.iso"), BootMode::Once, false).unwrap_err();
    assert!(matches!(err, RedfishError::Status { status: 400, .. }), "{err:?}");
    assert!(err.to_string().contains("got error 404"), "{err}");
    assert_eq!(img.hits("/missing.iso"), 1, "a 4xx is not retried");

    let err = c.attach(&t, "ftp://h/x.iso", BootMode::Once, false).unwrap_err();
    assert!(matches!(err, RedfishError::Invalid(_)), "{err:?}");
}

/// BMCs that answer InsertMedia with a task (202 + monitor) and that demand If-Match: the
/// client polls the monitor to completion and sends the resource's ETag (the proxy adds both in
/// front of the emulator, which does the work).
#[test]
fn task_monitors_and_etags() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let img = images();
    let proxy = Proxy::start(emu.port, Quirks { tasks: true, etags: true, ..Quirks::default() });
    let t = target(&emu.system_url(0).replace(&emu.base, &proxy.base));
    let c = client();
    let image = img.url("/media/node01.iso");
    for round in 0..2 {
        proxy.clear();
        let report = c.attach(&t, &image, BootMode::Continuous, false).unwrap();
        assert_eq!(report.media_after.image.as_deref(), Some(image.as_str()), "round {round}");
        let seen = proxy.seen();
        assert!(
            seen.iter().any(|s| s.method == "GET" && s.path == "/redfish/v1/TaskService/Tasks/42"),
            "the task monitor was polled: {seen:?}"
        );
        let patch = seen.iter().find(|s| s.method == "PATCH").expect("a Boot PATCH");
        assert_eq!(patch.header("If-Match").as_deref(), Some(format!("\"v{round}\"").as_str()));
    }
    assert_eq!(c.status(&t).unwrap().boot.target.as_deref(), Some("Cd"));

    // Someone else changes the System between our GET and our PATCH: 412, read again, retry.
    let proxy =
        Proxy::start(emu.port, Quirks { etags: true, etag_race: true, ..Quirks::default() });
    let t = target(&emu.system_url(0).replace(&emu.base, &proxy.base));
    c.attach(&t, &image, BootMode::Once, false).unwrap();
    let patches: Vec<_> = proxy.seen().into_iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 2, "one refused with 412, one retried: {patches:?}");
    assert_eq!(patches[0].header("If-Match").as_deref(), Some("\"v0\""));
    assert_eq!(patches[1].header("If-Match").as_deref(), Some("\"v1\""), "the fresh ETag");
}

/// Virtual media found through the System's manager (`Links.ManagedBy` → Manager →
/// `VirtualMedia`) when the System does not link them, as on iDRAC and iLO.
#[test]
fn virtual_media_under_the_manager() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let img = images();
    let proxy = Proxy::start(emu.port, Quirks { manager_media: true, ..Quirks::default() });
    let t = target(&emu.system_url(0).replace(&emu.base, &proxy.base));
    let c = client();
    let report = c.attach(&t, &img.url("/media/node01.iso"), BootMode::Once, false).unwrap();
    assert_eq!(report.media_after.image, Some(img.url("/media/node01.iso")));
    let seen = proxy.seen();
    let system = seen.iter().find(|s| s.path.starts_with("/redfish/v1/Systems/")).unwrap();
    assert!(!system.path.contains("VirtualMedia"), "the System was read first: {system:?}");
    assert!(
        seen.iter().any(|s| s.method == "GET" && s.path.starts_with("/redfish/v1/Managers/")),
        "the manager was read: {seen:?}"
    );
}

/// TLS: the emulator's certificate comes from a private CA. Refused without the CA, accepted
/// with `ca_file`, and accepted with `insecure-tls` alone.
#[test]
fn tls_with_a_private_ca() {
    let ca = Ca::new();
    let emu = Emulator::start(EmulatorConfig {
        tls: Some((ca.server_cert.clone(), ca.server_key.clone())),
        ..EmulatorConfig::new(1)
    });
    assert!(emu.base.starts_with("https://"));
    let img = images();
    let t = target(&emu.system_url(0));

    let err = client().status(&t).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, RedfishError::Tls { .. }), "{err:?}");
    assert!(text.contains("--bmc-ca") && text.contains("insecure-tls"), "{text}");

    let with_ca =
        Client::new(ClientOptions { ca_file: Some(ca.ca_cert.clone()), ..options() }).unwrap();
    let report = with_ca.attach(&t, &img.url("/media/node01.iso"), BootMode::Once, false).unwrap();
    assert_eq!(report.media_after.inserted, Some(true));

    let insecure = BmcTarget { tls: TlsPolicy::Insecure, ..t.clone() };
    assert_eq!(
        client().status(&insecure).unwrap().media.image.as_deref(),
        Some(img.url("/media/node01.iso").as_str())
    );

    // A CA file that holds no certificate is refused up front, naming the file.
    let bad = ca.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let err = Client::new(ClientOptions { ca_file: Some(bad.clone()), ..options() }).unwrap_err();
    assert!(err.to_string().contains(&bad.display().to_string()), "{err}");
}

/// 50 BMCs at once (50 fake systems of one emulator), each attached from its own thread as the
/// service's blocking pool would: all succeed and each System holds its own image.
#[test]
fn fifty_hosts_in_parallel() {
    const N: usize = 50;
    let emu = Emulator::start(EmulatorConfig::new(N));
    let files: Vec<(String, Vec<u8>)> =
        (0..N).map(|i| (format!("/media/node{i:02}.iso"), iso(i as u8))).collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let img = ImageServer::start(&refs);
    let c = client();
    let started = Instant::now();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (c, emu, img) = (&c, &emu, &img);
                scope.spawn(move || {
                    let t = target(&emu.system_url(i));
                    let began = Instant::now();
                    let r = c.attach(
                        &t,
                        &img.url(&format!("/media/node{i:02}.iso")),
                        BootMode::Once,
                        false,
                    );
                    (r, began.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let mut slowest = Duration::ZERO;
    for (i, (r, took)) in results.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("system {i}: {e}"));
        assert_eq!(r.system, emu.system_url(i));
        slowest = slowest.max(*took);
    }
    println!(
        "{N} attaches in parallel: {:.2} s in all, slowest {:.2} s ({:.0} ms per host)",
        elapsed.as_secs_f64(),
        slowest.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / N as f64
    );
    for i in 0..N {
        let v = c.status(&target(&emu.system_url(i))).unwrap();
        assert_eq!(v.media.image, Some(img.url(&format!("/media/node{i:02}.iso"))), "system {i}");
        assert_eq!(img.hits(&format!("/media/node{i:02}.iso")), 1, "system {i}");
    }
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}
