//! Live hardware state and power actions, end to end: the real service's background refresher
//! reads each row's BMC (the sushy-tools emulator, its fake driver) into the cache that `/hosts`
//! shows; power actions go through the service to the emulator and are audited; and BMCs that
//! never answer, or refuse connections, slow nothing else.
//!
//! What the emulator reports (sushy-tools 2.2.0, fake driver): `PowerState`, `Status.Health`
//! and `HealthRollUp` `OK`, a boot override always `Continuous` with the boot device as target
//! (`Hdd` until set), and the virtual CD. Its power changes are not immediate: a reset is
//! applied 1 to 11 seconds later (a restart shows `Off` until then), so the tests poll.

#[path = "serve_support/bmc.rs"]
mod bmc;
mod common;
#[path = "console_support/mod.rs"]
mod console_support;
#[path = "serve_support/sushy.rs"]
mod sushy;

use bmc::{BmcService as Fixture, READ_TOKEN, REIMAGE_TOKEN};
use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};
use sushy::{free_port, Emulator, EmulatorConfig, FakeSystem, ImageServer, Proxy, Quirks};

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

/// A service over `rows` whose refresher runs every `refresh` with a per-BMC `timeout`.
fn service(rows: &str, refresh: Duration, timeout: Duration) -> Fixture {
    Fixture::start_config(rows, free_port(), None, true, true, move |c, _| {
        c.bmc_refresh = refresh;
        c.bmc_state_timeout = timeout;
    })
}

/// `GET /hosts` (unpaged): host name -> its `hardware` field.
fn hardware(f: &Fixture) -> std::collections::BTreeMap<String, Value> {
    let (status, v) = api("GET", &format!("{}/hosts", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hostname"].as_str().unwrap().to_string(), h["hardware"].clone()))
        .collect()
}

/// Polls `what` every 200 ms until it returns `Some`, failing after `limit` with `context`.
fn until<T>(
    limit: Duration,
    context: impl Fn() -> String,
    mut what: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = what() {
            return t;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /hosts/{host}/hardware?refresh=1`: the state read now.
fn read_now(f: &Fixture, host: &str) -> Value {
    let (status, v) =
        api("GET", &format!("{}/hosts/{host}/hardware?refresh=1", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    v["hardware"].clone()
}

fn power(f: &Fixture, host: &str, token: &str, action: &str) -> (u16, Value) {
    api(
        "POST",
        &format!("{}/hosts/{host}/power", f.base),
        token,
        &serde_json::json!({ "action": action }).to_string(),
    )
}

/// The refresher fills `/hosts` (power, health, boot override, medium; `null` for a row
/// without a bmc); after an attach the medium is ours; power off, on and restart change the
/// emulator's power state, are audited, and are refused to role read; `bootforge power` works.
#[test]
fn state_appears_and_power_actions_change_it() {
    let emu = Emulator::start(EmulatorConfig {
        systems: vec![FakeSystem::numbered(1, "On"), FakeSystem::numbered(2, "Off")],
        ..EmulatorConfig::new(0)
    });
    let rows = format!(
        "node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{}\n\
         node02,10.0.2.16/24,10.0.2.2,10.0.2.3,,e2e,{}\n\
         node03,10.0.2.17/24,10.0.2.2,10.0.2.3,,e2e,\n",
        emu.system_url(0),
        emu.system_url(1)
    );
    let f = service(&rows, Duration::from_secs(1), Duration::from_secs(10));

    let hw = until(
        Duration::from_secs(30),
        || format!("{:?}", hardware(&f)),
        || {
            let hw = hardware(&f);
            (hw["node01"]["checked_ms"].is_u64() && hw["node02"]["checked_ms"].is_u64())
                .then_some(hw)
        },
    );
    let one = &hw["node01"];
    assert_eq!(one["power"], "on", "{one}");
    assert_eq!(one["health"], "ok", "{one}");
    assert_eq!(one["medium"], "none", "{one}");
    assert_eq!(one["boot_override"]["target"], "hdd", "{one}");
    assert_eq!(one["boot_override"]["enabled"], "continuous", "{one}");
    assert_eq!(one["stale"], false, "{one}");
    assert_eq!(one["error"], Value::Null, "{one}");
    assert_eq!(hw["node02"]["power"], "off");
    assert_eq!(hw["node03"], Value::Null, "a row without a bmc has no hardware");
    let (_, single) = api("GET", &format!("{}/hosts/node01", f.base), READ_TOKEN, "");
    assert_eq!(single["hardware"]["power"], "on", "{single}");

    // Attach: the CD holds our medium and the override points at it.
    let (status, v) =
        api("PUT", &format!("{}/hosts/node01/media", f.base), REIMAGE_TOKEN, r#"{"boot":"once"}"#);
    assert_eq!(status, 200, "{v}\n{}", emu.log_text());
    let now = read_now(&f, "node01");
    assert_eq!(now["medium"], "ours", "{now}");
    assert_eq!(now["boot_override"]["target"], "cd", "{now}");
    let listed = until(Duration::from_secs(10), String::new, || {
        let h = hardware(&f)["node01"].clone();
        (h["medium"] == "ours").then_some(h)
    });
    assert_eq!(listed["boot_override"]["target"], "cd");

    // Role read may not; bad bodies change nothing.
    let (status, v) = power(&f, "node01", READ_TOKEN, "off");
    assert_eq!(status, 403, "{v}");
    for body in [r#"{"action":"reboot"}"#, r#"{"action":"off","x":1}"#, "off", ""] {
        let (status, v) =
            api("POST", &format!("{}/hosts/node01/power", f.base), REIMAGE_TOKEN, body);
        assert_eq!(status, 400, "{body}: {v}");
    }
    let (status, v) = power(&f, "node03", REIMAGE_TOKEN, "on");
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no BMC"), "{v}");

    let system = |i: usize| -> Value {
        let auth = format!("Basic {}", {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode("admin:password")
        });
        let r = ureq::get(&emu.system_url(i)).set("Authorization", &auth).call().unwrap();
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    };
    for (action, reset_type, after) in [
        ("off", "GracefulShutdown", "Off"),
        ("on", "On", "On"),
        ("force-off", "ForceOff", "Off"),
        ("restart", "GracefulRestart", "On"),
    ] {
        let (status, v) = power(&f, "node01", REIMAGE_TOKEN, action);
        assert_eq!(status, 200, "{action}: {v}");
        assert_eq!(v["reset_type"], reset_type, "{v}");
        until(
            Duration::from_secs(20),
            || format!("{action}: {}", system(0)),
            || (system(0)["PowerState"] == after).then_some(()),
        );
        let ours = until(
            Duration::from_secs(20),
            || format!("{:?}", read_now(&f, "node01")),
            || {
                let h = read_now(&f, "node01");
                (h["power"] == after.to_lowercase()).then_some(h)
            },
        );
        assert_eq!(ours["stale"], false);
        if action == "force-off" {
            power(&f, "node01", REIMAGE_TOKEN, "on");
            until(Duration::from_secs(20), String::new, || {
                (system(0)["PowerState"] == "On").then_some(())
            });
        }
    }
    let log = f.audit_with("\"action\":\"restart\"");
    let records: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "bmc-power")
        .collect();
    let actions: Vec<&str> = records.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["off", "on", "force-off", "on", "restart"], "{records:?}");
    for r in &records {
        assert_eq!(r["host"], "node01");
        assert_eq!(r["ok"], true);
        assert_eq!(r["by"], "ops", "{r}");
    }
    assert!(!log.contains("password"), "no secret in the audit log");

    // The command line, through the service.
    let (ok, out, err) = f.cli(&["power", "node02", "on"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.starts_with("node02: ok: on sent (ResetType On)"), "{out}");
    until(
        Duration::from_secs(20),
        || format!("{}", system(1)),
        || (system(1)["PowerState"] == "On").then_some(()),
    );
    let (ok, out, _) = f.cli(&["power", "node03", "off"]);
    assert!(!ok && out.contains("node03: FAILED (HTTP 409)"), "{out}");
    let (ok, _, err) = f.cli(&["power", "node02", "reboot"]);
    assert!(!ok && err.contains("not a power action"), "{err}");

    let metrics = ureq::get(&format!("{}/metrics", f.base)).call().unwrap().into_string().unwrap();
    let ok_reads = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bootforge_bmc_state_reads_total{outcome=\"ok\"} "))
        .expect("the reads counter");
    assert!(ok_reads.parse::<u64>().unwrap() > 2, "{metrics}");
    assert!(metrics.contains("bootforge_bmc_state_stale_hosts 0"), "{metrics}");
}

/// A BMC whose System answers hostile values (long, control characters, unknown enums): every
/// field is one of our words, nothing of the BMC's text comes through.
#[test]
fn a_hostile_bmc_answer_is_bounded() {
    fn hostile(v: &mut Value) {
        if v["@odata.type"].as_str().is_some_and(|t| t.contains("ComputerSystem")) {
            v["PowerState"] = Value::from(format!("On\u{1b}[2J{}", "x".repeat(100_000)));
            v["Status"] =
                serde_json::json!({"Health": "<script>alert(1)</script>", "HealthRollUp": 7});
            v["Boot"] = serde_json::json!({
                "BootSourceOverrideTarget": "Cd\u{202e}",
                "BootSourceOverrideEnabled": ["Once"],
            });
        }
    }
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks { report_json: Some(hostile), ..Quirks::default() });
    let url = emu.system_url(0).replace(&emu.base, &proxy.base);
    let rows = format!("evil,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{url}\n");
    let f = service(&rows, Duration::ZERO, Duration::from_secs(10));
    // With --bmc-refresh 0 nothing is read until asked.
    let before = hardware(&f)["evil"].clone();
    assert_eq!(before["checked_ms"], Value::Null, "{before}");
    assert_eq!(before["stale"], true, "{before}");
    let hw = read_now(&f, "evil");
    assert_eq!(hw["power"], "unknown", "{hw}");
    assert_eq!(hw["health"], "unknown", "{hw}");
    assert_eq!(hw["boot_override"], serde_json::json!({"target": "unknown", "enabled": "unknown"}));
    assert_eq!(hw["medium"], "none", "{hw}");
    assert_eq!(hw["error"], Value::Null);
    let text = serde_json::to_string(&hardware(&f)).unwrap();
    assert!(text.len() < 1000 && !text.contains("script") && !text.contains("xxxx"), "{text}");
}

/// A listener that accepts connections and never answers (a hung BMC); keeps them open.
fn black_hole() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let mut s = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
            held.push(stream);
        }
    });
    (format!("http://{addr}/redfish/v1/Systems/1"), handle)
}

/// A BMC that accepts and never answers, and one that refuses connections: `/hosts` keeps
/// answering at once while their reads are stuck, the healthy BMC's state keeps refreshing
/// meanwhile, and each dead one ends up with its error and `stale`.
#[test]
fn dead_bmcs_slow_nothing() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let (hung, _hole) = black_hole();
    let refused = format!("http://127.0.0.1:{}/redfish/v1/Systems/1", {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let rows = format!(
        "good,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{}\n\
         hung,10.0.2.16/24,10.0.2.2,10.0.2.3,,e2e,{hung}\n\
         refused,10.0.2.17/24,10.0.2.2,10.0.2.3,,e2e,{refused}\n",
        emu.system_url(0)
    );
    let timeout = Duration::from_secs(8);
    let started = Instant::now();
    let f = service(&rows, Duration::from_secs(1), timeout);

    // While the hung BMC's first read is stuck (it cannot end before the timeout), /hosts
    // answers at once and the good BMC is read again and again.
    let mut slowest = Duration::ZERO;
    let mut good_reads = std::collections::BTreeSet::new();
    let mut calls = 0;
    while started.elapsed() < timeout - Duration::from_secs(1) {
        let t = Instant::now();
        let hw = hardware(&f);
        slowest = slowest.max(t.elapsed());
        calls += 1;
        assert_eq!(hw["hung"]["checked_ms"], Value::Null, "{:?}", hw["hung"]);
        assert_eq!(hw["hung"]["error"], Value::Null, "still stuck: {:?}", hw["hung"]);
        if let Some(ms) = hw["good"]["checked_ms"].as_u64() {
            assert_eq!(hw["good"]["power"], "on");
            good_reads.insert(ms);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "/hosts: {calls} calls during the stuck read, slowest {slowest:?}; good read {} times",
        good_reads.len()
    );
    assert!(slowest < Duration::from_secs(1), "/hosts took {slowest:?} with a hung BMC");
    assert!(good_reads.len() >= 3, "the good BMC was read {} times", good_reads.len());

    let hw = until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || {
            let hw = hardware(&f);
            (hw["hung"]["error"].is_string() && hw["refused"]["error"].is_string()).then_some(hw)
        },
    );
    assert!(started.elapsed() >= timeout, "a hung read ended before its timeout");
    assert_eq!(hw["hung"]["error"], "timeout", "{:?}", hw["hung"]);
    assert_eq!(hw["hung"]["stale"], true);
    assert_eq!(hw["hung"]["power"], "unknown");
    assert_eq!(hw["refused"]["error"], "unreachable", "{:?}", hw["refused"]);
    assert_eq!(hw["refused"]["stale"], true);
    assert_eq!(hw["good"]["stale"], false);

    // A manual refresh of the hung host waits at most the timeout (and a bit).
    let t = Instant::now();
    let (status, v) =
        api("GET", &format!("{}/hosts/hung/hardware?refresh=1", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    assert!(t.elapsed() < timeout + Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(v["hardware"]["error"], "timeout", "{v}");

    let metrics = ureq::get(&format!("{}/metrics", f.base)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("bootforge_bmc_state_stale_hosts 2"), "{metrics}");
}

/// The console: the fleet table's Hardware column shows what the refresher read (power, health,
/// medium, boot override), a row without a bmc shows a dash, and role reimage's Power… button
/// asks for the action in its confirmation, sends it, and the column follows the new state.
#[test]
fn the_console_shows_hardware_and_powers_off() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let rows = format!(
        "node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{}\n\
         node02,10.0.2.16/24,10.0.2.2,10.0.2.3,,e2e,\n",
        emu.system_url(0)
    );
    let f = service(&rows, Duration::from_secs(1), Duration::from_secs(10));
    let b = console_support::Browser::start();
    b.goto(&format!("{}/ui/", f.base));
    b.type_into("#token", REIMAGE_TOKEN);
    b.click("#token-submit");
    let cell = "#hosts tr[data-host='node01'] td.hw";
    let first = |t: &str| t.lines().next().unwrap_or_default().trim().to_string();
    let text = b.wait_text(cell, 30, |t| first(t) == "on");
    assert!(text.contains("health ok"), "{text}");
    assert!(text.contains("no medium, boot hdd (continuous)"), "{text}");
    assert_eq!(b.text("#hosts tr[data-host='node02'] td.hw"), "—");
    assert!(b.all("#hosts tr[data-host='node02'] button.power").is_empty());

    b.click("#hosts tr[data-host='node01'] button.power");
    assert!(b.displayed("#power-options"), "the confirmation asks for the action");
    assert!(!b.displayed("#attach-options"));
    assert_eq!(b.text("#confirm-hosts"), "node01");
    b.click("#power-action option[value='force-off']");
    b.click("#confirm-ok");
    let msg = b.wait_text("#fleet-msg", 60, |t| t.contains("sent") || t.contains("failed"));
    assert_eq!(msg, "node01: force-off sent (ForceOff)");
    b.wait_text(cell, 40, |t| first(t) == "off");
    let log = f.audit_with("\"event\":\"bmc-power\"");
    assert!(log.contains("\"action\":\"force-off\""), "{log}");
}

/// The audit records of `event` in `log`.
fn records(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == event)
        .collect()
}

/// A caller that hangs up while a (slow) BMC is being powered off: the reset still reaches the
/// BMC, and it is still audited (the record is written by the BMC thread, not the handler the
/// hang-up drops).
#[test]
fn a_power_action_whose_caller_hangs_up_is_audited() {
    let emu = Emulator::start(EmulatorConfig::new(1));
    let slow = Quirks { delay: Some(Duration::from_millis(1500)), ..Quirks::default() };
    let proxy = Proxy::start(emu.port, slow);
    let url = emu.system_url(0).replace(&emu.base, &proxy.base);
    let rows = format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{url}\n");
    let f = service(&rows, Duration::ZERO, Duration::from_secs(10));
    let hung_up = ureq::post(&format!("{}/hosts/node01/power", f.base))
        .set("Authorization", &format!("Bearer {REIMAGE_TOKEN}"))
        .timeout(Duration::from_millis(700))
        .send_string(r#"{"action":"force-off"}"#);
    assert!(hung_up.is_err(), "the BMC answers slower than the caller waits: {hung_up:?}");
    let posted = until(
        Duration::from_secs(30),
        || format!("{:?}", proxy.seen()),
        || proxy.seen().into_iter().find(|s| s.method == "POST"),
    );
    assert!(posted.path.ends_with("ComputerSystem.Reset"), "{posted:?}");
    let log = f.audit_with("\"event\":\"bmc-power\"");
    let power = records(&log, "bmc-power");
    assert_eq!(power.len(), 1, "{log}");
    assert_eq!(power[0]["action"], "force-off");
    assert_eq!(power[0]["ok"], true, "{log}");
}

/// A BMC that allows only some reset types: a refused action answers 409, is audited as
/// `not-allowed`, and sends the BMC nothing.
#[test]
fn a_reset_type_the_bmc_refuses_is_not_sent() {
    fn on_only(v: &mut Value) {
        if let Some(reset) = v.pointer_mut("/Actions/#ComputerSystem.Reset") {
            reset["ResetType@Redfish.AllowableValues"] = serde_json::json!(["On"]);
        }
    }
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks { report_json: Some(on_only), ..Quirks::default() });
    let url = emu.system_url(0).replace(&emu.base, &proxy.base);
    let rows = format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{url}\n");
    let f = service(&rows, Duration::ZERO, Duration::from_secs(10));
    let (status, v) = power(&f, "node01", REIMAGE_TOKEN, "force-off");
    assert_eq!(status, 409, "{v}");
    assert!(proxy.seen().iter().all(|s| s.method == "GET"), "{:?}", proxy.seen());
    let log = f.audit_with("\"event\":\"bmc-power\"");
    let power = records(&log, "bmc-power");
    assert_eq!(power.len(), 1, "{log}");
    assert_eq!(power[0]["ok"], false, "{log}");
    assert_eq!(power[0]["error"], "not-allowed", "{log}");
}

/// A BMC that refuses the credentials is asked once, not every round (BMCs lock accounts out),
/// not even by `?refresh=1`, until the credentials file changes; a foreign image shows `other`.
#[test]
fn refused_credentials_are_not_retried_until_the_file_changes() {
    let emu = Emulator::start(EmulatorConfig {
        users: vec![("admin".into(), "not-the-password".into())],
        ..EmulatorConfig::new(1)
    });
    let proxy = Proxy::start(emu.port, Quirks::default());
    let url = emu.system_url(0).replace(&emu.base, &proxy.base);
    let rows = format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{url}\n");
    let f = service(&rows, Duration::from_secs(1), Duration::from_secs(10));
    let hw = until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || {
            let h = hardware(&f)["node01"].clone();
            (h["error"] == "auth").then_some(h)
        },
    );
    assert_eq!(hw["stale"], true, "{hw}");
    let asked = proxy.seen().len();
    assert!(asked > 0);
    // Five rounds and an explicit refresh later: not one more request.
    std::thread::sleep(Duration::from_secs(5));
    let (status, v) =
        api("GET", &format!("{}/hosts/node01/hardware?refresh=1", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], false, "{v}");
    assert_eq!(proxy.seen().len(), asked, "{:?}", proxy.seen());

    // The operator fixes the password: a new password file, named by the credentials file.
    let dir = f.dir.path();
    let pass = dir.join("bmc-new.pass");
    std::fs::write(&pass, "not-the-password\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("bmc-credentials"), format!("* admin {} allow-http\n", pass.display()))
        .unwrap();
    let hw = until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || {
            let h = hardware(&f)["node01"].clone();
            h["checked_ms"].is_u64().then_some(h)
        },
    );
    assert_eq!(hw["error"], Value::Null, "{hw}");
    assert_eq!(hw["power"], "on", "{hw}");

    // Someone else's image in the CD: `other`, never `ours`.
    let images = ImageServer::start(&[("/media/node01.iso", b"not ours".to_vec())]);
    let media = format!("{}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", emu.system_url(0));
    let body = serde_json::json!({"Image": images.url("/media/node01.iso"), "Inserted": true});
    let inserted = ureq::post(&media)
        .set("Authorization", &format!("Basic {}", base64_admin()))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    assert!(inserted.is_ok(), "{inserted:?}\n{}", emu.log_text());
    // A change made behind the service's back shows at the next round.
    until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || (hardware(&f)["node01"]["medium"] == "other").then_some(()),
    );
}

/// `admin:not-the-password` in base64, for talking to the emulator directly.
fn base64_admin() -> String {
    "YWRtaW46bm90LXRoZS1wYXNzd29yZA==".into()
}

/// A BMC whose System answer is huge: the background read refuses it past 256 KiB (reads run
/// for every BMC at once), while the operator's status read (`GET /hosts/{h}/media`, up to
/// 4 MiB) still works.
#[test]
fn a_huge_state_answer_is_refused() {
    fn huge(v: &mut Value) {
        if v["@odata.type"].as_str().is_some_and(|t| t.contains("ComputerSystem")) {
            v["Oem"] = Value::from("x".repeat(300 << 10));
        }
    }
    let emu = Emulator::start(EmulatorConfig::new(1));
    let proxy = Proxy::start(emu.port, Quirks { report_json: Some(huge), ..Quirks::default() });
    let url = emu.system_url(0).replace(&emu.base, &proxy.base);
    let rows = format!("big,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{url}\n");
    let f = service(&rows, Duration::ZERO, Duration::from_secs(10));
    let hw = read_now(&f, "big");
    assert_eq!(hw["checked_ms"], Value::Null, "{hw}");
    assert!(hw["error"].is_string(), "{hw}");
    let (status, v) = api("GET", &format!("{}/hosts/big/media", f.base), READ_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bmc"]["power_state"], "On", "{v}");
}

/// An inventory reload that points a row at another BMC: the old machine's state is never shown
/// for it, and the new one's appears at the next round.
#[test]
fn a_changed_bmc_starts_afresh_after_a_reload() {
    let emu = Emulator::start(EmulatorConfig {
        systems: vec![FakeSystem::numbered(1, "On"), FakeSystem::numbered(2, "Off")],
        ..EmulatorConfig::new(0)
    });
    let row =
        |i: usize| format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,,e2e,{}\n", emu.system_url(i));
    let f = service(&row(0), Duration::from_secs(1), Duration::from_secs(10));
    until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || (hardware(&f)["node01"]["power"] == "on").then_some(()),
    );
    std::fs::write(
        f.dir.path().join("nodes.csv"),
        format!("hostname,ip,gateway,dns,mac,profile,bmc\n{}", row(1)),
    )
    .unwrap();
    let (status, v) = api("POST", &format!("{}/admin/reload", f.base), bmc::ADMIN_TOKEN, "");
    assert_eq!(status, 200, "{v}");
    let first = hardware(&f)["node01"].clone();
    assert_ne!(first["power"], "on", "the old BMC's state shown for the new one: {first}");
    until(
        Duration::from_secs(20),
        || format!("{:?}", hardware(&f)),
        || (hardware(&f)["node01"]["power"] == "off").then_some(()),
    );
}
