//! Issue 17, section 3, in a real browser: every install's timeline, stalled installs, retry and
//! the fleet figures, as the console shows them.
//!
//! One test, one QEMU boot cycle (BIOS under TCG, the fastest): the operator flags node01 in the
//! console with the `timeline` test profile (tests/profiles/timeline: its config, one asset under
//! `--assets`, `started`, `done`, reboot) and a real node does the cycle up to its local disk.
//! The host page (reached by clicking the host's name, `#host/node01`) then shows each step with
//! its time, the time since the previous one, and the fetches' file, status, size and how the
//! service attributed them, and the same page is reloaded from its address. Meanwhile node02,
//! whose profile allows 3 s without progress, was flagged and answered by plain HTTP requests as
//! its medium makes them, and then went quiet: it shows **stalled** in the fleet table (and under
//! the phase filter `stalled`) and on its host page, and the page's Retry re-flags it with a new
//! install id, audited. The fleet figures above the table count both.
//!
//! Screenshots: `docs/console-host.png` (node01's host page) and `docs/console-figures.png` (the
//! fleet view with its figures and a stalled host).

mod common;

#[path = "console_support/mod.rs"]
mod console_support;

use common::cycle::{brief, Fleet, BIOS_CYCLE_TIMEOUT, READ_TOKEN, REIMAGE_TOKEN, SECRET};
use common::*;
use console_support::Browser;
use serde_json::Value;
use std::time::{Duration, Instant};

/// node02: a second host of the fleet (no VM boots it; the test speaks for it).
const NODE2_ROW: &str = "node02,10.0.2.16/24,10.0.2.2,10.0.2.3,52:54:00:12:34:57,stall\n";
const NODE2_MAC: &str = "52:54:00:12:34:57";
/// The `stall` profile's allowance (the `timeline` profile's with a short `stall_after`).
const STALL_AFTER: Duration = Duration::from_secs(3);
/// The asset the `timeline` profile fetches, and its size.
const ASSET: &str = "timeline/payload.bin";
const ASSET_LEN: usize = 5000;

/// One request with an optional bearer token and JSON body: (status, body).
fn send(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut r = ureq::request(method, &format!("{base}{path}")).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Waits (up to `secs`) until the page's `script` returns a value `ok` accepts; returns it.
fn wait_js(b: &Browser, script: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = b.js(script);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{script}: still {v} after {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The newest install card's steps on the host page: (step, since-previous text, details).
fn page_steps(b: &Browser) -> Vec<(String, String, String)> {
    let v =
        b.js("return [...document.querySelectorAll('#host-installs .install:first-child tr.step')]
           .map(r => [r.dataset.step, r.querySelector('.since').textContent,
                      r.querySelector('.details').textContent])");
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (s(0), s(1), s(2))
        })
        .collect()
}

/// The running service and the fleet it serves (the service first: it stops before the fleet's
/// folder goes).
struct Setup {
    service: Service,
    fleet: Fleet,
    base: String,
}

/// node01's ISO (built for the guest's view of a fresh port), the fleet's profiles (e2e from
/// `Fleet`, `timeline`, and `stall`: the same with a 3 s allowance), node02 in the inventory,
/// the asset, and the service over them.
fn setup() -> Setup {
    let port = free_port();
    let fleet = Fleet::build(&format!("http://10.0.2.2:{port}"));
    // The fleet's profiles: e2e (from Fleet), `timeline`, and `stall`, the same with 3 s.
    copy_tree(&repo_path("tests/profiles/timeline"), &fleet.profiles.join("timeline"));
    let stall = fleet.profiles.join("stall");
    copy_tree(&repo_path("tests/profiles/timeline"), &stall);
    let toml = std::fs::read_to_string(stall.join("profile.toml")).unwrap();
    let short = toml.replace("stall_after = \"10m\"", "stall_after = \"3s\"");
    assert_ne!(toml, short, "the timeline profile's stall_after line");
    std::fs::write(stall.join("profile.toml"), short).unwrap();
    let mut csv = std::fs::read_to_string(&fleet.inventory).unwrap();
    csv.push_str(NODE2_ROW);
    std::fs::write(&fleet.inventory, csv).unwrap();
    let assets = fleet.dir.path().join("assets");
    std::fs::create_dir_all(assets.join("timeline")).unwrap();
    let payload: Vec<u8> = (0..ASSET_LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(assets.join(ASSET), &payload).unwrap();
    let service = Service::start(&ServeInputs {
        dir: fleet.dir.path(),
        inventory: &fleet.inventory,
        profiles: &fleet.profiles,
        secret: &fleet.secret,
        tokens: &fleet.tokens,
        read_token: READ_TOKEN,
        assets: Some(&assets),
        port,
        tls: None,
    });
    let base = service.base.clone();

    Setup { service, fleet, base }
}

/// The host page shows node01's newest install as `timeline` (its API answer) has it: every
/// step in order with the time since the previous one, and the fetches' file, status, size and
/// attribution.
fn check_host_page(b: &Browser, timeline: &Value) {
    let install = &timeline["installs"][0];
    let api_step = |name: &str| {
        install["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step: {timeline:#}"))
            .clone()
    };
    let config_bytes = api_step("config")["bytes"].as_u64().filter(|n| *n > 0).expect("bytes");
    let asset_by = api_step("asset")["attributed"].as_str().expect("attributed").to_string();
    let steps = page_steps(b);
    let names: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        ["flagged", "boot", "config", "asset", "started", "done", "next-boot"],
        "{steps:#?}\n{timeline:#}"
    );
    let details = |name: &str| steps.iter().find(|s| s.0 == name).unwrap().2.clone();
    let flagged = details("flagged");
    assert!(flagged.contains("by ops") && flagged.contains("profile timeline"), "{flagged}");
    assert!(details("boot").contains("answer: install"), "{}", details("boot"));
    let config = details("config");
    for part in ["install.cfg", "HTTP 200", &format!("{config_bytes} B"), "by token"] {
        assert!(config.contains(part), "config step lacks {part:?}: {config}");
    }
    let asset = details("asset");
    for part in [ASSET, "HTTP 200", &format!("{ASSET_LEN} B"), &format!("by {asset_by}")] {
        assert!(asset.contains(part), "asset step lacks {part:?}: {asset}");
    }
    assert!(details("done").contains("install took"), "{}", details("done"));
    assert!(details("next-boot").contains("answer: local"), "{}", details("next-boot"));
    // The time since the previous step: none for the first, "+…" for every other.
    assert_eq!(steps[0].1, "");
    assert!(steps[1..].iter().all(|s| s.1.starts_with('+')), "{steps:#?}");
    let head = b.text("#host-installs .install:first-child .install-head");
    assert!(head.contains(install["install"].as_str().unwrap()) && head.contains("done"), "{head}");
}

/// node01's timeline as the service has it, checked for what the page must then show.
fn node01_timeline(service: &Service, context: &dyn Fn() -> String) -> Value {
    let (status, timeline) = service.api("GET", "/hosts/node01/timeline", READ_TOKEN);
    assert_eq!(status, 200, "{timeline}");
    let install = &timeline["installs"][0];
    assert_eq!(install["state"], "done", "{timeline:#}\n{}", context());
    let step = |name: &str| {
        install["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step: {timeline:#}\n{}", context()))
            .clone()
    };
    let config = step("config");
    assert_eq!(
        (config["file"].as_str(), config["status"].as_u64()),
        (Some("install.cfg"), Some(200)),
        "{timeline:#}"
    );
    let asset = step("asset");
    assert_eq!(
        (asset["file"].as_str(), asset["status"].as_u64(), asset["bytes"].as_u64()),
        (Some(ASSET), Some(200), Some(ASSET_LEN as u64)),
        "{timeline:#}"
    );
    // The profile fetches it with `node_asset_url`: the node's token ties it to node01 (the
    // request itself comes from 127.0.0.1, not the row's address).
    assert_eq!(asset["attributed"], "token", "{timeline:#}");
    timeline
}

#[test]
fn the_host_page_walks_a_real_install_and_a_stalled_install_is_retried() {
    require_for(Firmware::Bios);
    let Setup { service, fleet, base } = setup();
    let b = Browser::start();
    b.goto(&format!("{base}/ui/"));
    b.type_into("#token", REIMAGE_TOKEN);
    b.click("#token-submit");
    b.find("#hosts tbody tr[data-host='node01']");

    // The operator flags node01 with the timeline profile, in the console.
    b.click("#hosts tr[data-host='node01'] input.sel");
    b.click("#sel-profile option[value='timeline']");
    b.click("#sel-reimage");
    assert!(b.text("#confirm-text").contains("with profile timeline"));
    b.click("#confirm-ok");
    b.wait_text("#hosts tr[data-host='node01'] .phase", 10, |t| t == "pending");

    // node02: flagged through the API, its medium asks /boot (as a node does: MAC, token) and
    // gets the install chain; then nothing more comes from it.
    let (status, body) = send(
        &base,
        "PUT",
        "/hosts/node02/reimage",
        Some(REIMAGE_TOKEN),
        Some(r#"{"profile":"stall"}"#),
    );
    assert_eq!(status, 200, "flag node02: {body}");
    let token2 = bootforge::token::Secret::new(SECRET.to_vec()).unwrap().node_token("node02");
    let boot2 = format!(
        "/boot/node02?mac={NODE2_MAC}&ip=10.0.2.16&platform=pcbios&arch=x86_64&medium=cd&token={token2}"
    );
    let (status, script) = send(&base, "GET", &boot2, None, None);
    assert_eq!(status, 200, "{script}");
    let at = script.find("install=").unwrap_or_else(|| panic!("no install chain: {script}"));
    let stalled_id: String =
        script[at + 8..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    let answered = Instant::now();

    // node01's real install: boot, config, asset, started, done, reboot, local boot.
    let run = fleet
        .vm(Firmware::Bios, "console-timeline", true)
        .allow_reboot()
        .timeout(BIOS_CYCLE_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .run();
    let context = || {
        format!(
            "{}\n{}\n--- /events ---\n{}",
            run.report(),
            service.logs(),
            brief(&service.events())
        )
    };
    assert!(run.serial.contains(LOCAL_DISK_MARKER), "node01 did not reach its disk\n{}", context());
    assert!(!run.serial.contains("install failed"), "the chain failed\n{}", context());

    // What the service recorded (the page must show the same).
    let timeline = node01_timeline(&service, &context);

    // The host page, reached from the fleet table.
    b.click("#hosts tr[data-host='node01'] a.host-link");
    b.wait_text("#host-installs .install", 15, |t| t.contains("next-boot"));
    assert_eq!(b.js("return location.hash"), "#host/node01");
    assert_eq!(b.text("#host-name"), "node01");
    check_host_page(&b, &timeline);
    // The screenshot shows the steps (the facts above them fill the first screen).
    b.js("document.querySelector('#host-installs').scrollIntoView()");
    b.screenshot("console-host.png");
    // The page has an address: loading it anew shows the same.
    b.goto(&format!("{base}/ui/#host/node01"));
    b.wait_text("#host-installs .install", 15, |t| t.contains("next-boot"));
    check_host_page(&b, &timeline);

    // node02 has made no progress for longer than its profile allows.
    if let Some(rest) = (STALL_AFTER + Duration::from_secs(1)).checked_sub(answered.elapsed()) {
        std::thread::sleep(rest);
    }
    b.click("#host-back");
    b.wait_text("#hosts tr[data-host='node02'] .badge-stalled", 15, |t| t == "stalled");
    assert!(b.all("#hosts tr[data-host='node01'] .badge-stalled").is_empty());
    b.find("#hosts tr[data-host='node02'] button.retry");
    assert!(b.all("#hosts tr[data-host='node01'] button.retry").is_empty());
    // The fleet figures: node01 done today, node02 stalled, as /fleet/stats says.
    let (status, stats) = service.api("GET", "/fleet/stats", READ_TOKEN);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (stats["today"]["done"].as_u64(), stats["stalled"].as_u64()),
        (Some(1), Some(1)),
        "{stats:#}"
    );
    b.wait_text("#fig-stalled", 15, |t| t == "1");
    assert_eq!(b.text("#fig-done-today"), "1");
    assert_eq!(b.text("#fig-failed-today"), stats["today"]["failed"].to_string());
    assert_eq!(b.text("#fig-in-progress"), stats["in_progress"].to_string());
    let cells = b.js(
        "return [...document.querySelector('#fig-profiles tr[data-profile=timeline]').cells].map(c => c.textContent)",
    );
    let cells: Vec<&str> = cells.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cells[..3], ["timeline", "1", "0"], "{cells:?}");
    assert!(
        cells[3..].iter().all(|c| c.ends_with(" s") || c.ends_with(" ms")),
        "p50, p95: {cells:?}"
    );
    let bars = b.js(
        "return [...document.querySelectorAll('#fig-chart svg g.bar')].map(g => g.querySelector('title').textContent)",
    );
    let bars: Vec<&str> = bars.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(bars.len(), stats["series"].as_array().unwrap().len(), "{bars:?}");
    let today = stats["series"].as_array().unwrap().last().unwrap()["day"].as_str().unwrap();
    assert_eq!(bars.last().copied(), Some(format!("{today}: 1 done, 0 failed").as_str()));
    b.screenshot("console-figures.png");
    // The phase filter `stalled` lists node02 alone.
    b.click("#f-phase option[value='stalled']");
    wait_js(
        &b,
        "return [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.host)",
        10,
        |v| v == &serde_json::json!(["node02"]),
    );

    // node02's host page: stalled, and Retry re-flags it.
    b.click("#hosts tr[data-host='node02'] a.host-link");
    b.wait_text("#host-phase", 10, |t| t.contains("stalled"));
    let first = "return document.querySelector('#host-installs .install')?.dataset.install";
    wait_js(&b, first, 10, |v| v == stalled_id.as_str());
    assert!(b.text("#host-installs .install:first-child .install-head").contains("stalled"));
    b.click("#host-retry");
    assert!(b.text("#confirm-text").contains("new install id"));
    b.click("#confirm-ok");
    let new_id =
        wait_js(&b, first, 10, |v| v.as_str().is_some_and(|s| !s.is_empty() && s != stalled_id));
    let new_id = new_id.as_str().unwrap();
    let (_, host) = service.api("GET", "/hosts/node02", READ_TOKEN);
    assert_eq!(host["flag"]["install"]["id"], new_id, "{host:#}");
    assert_eq!(host["flag"]["profile"], "stall", "the same profile: {host:#}");
    // The stalled install is still listed, below the new one.
    wait_js(
        &b,
        "return [...document.querySelectorAll('#host-installs .install')].map(c => c.dataset.install)",
        10,
        |v| v == &serde_json::json!([new_id, stalled_id]),
    );
    let events = service.events();
    let retried = events
        .iter()
        .find(|e| {
            e["host"] == "node02"
                && (e["event"] == "install-retried"
                    || (e["event"] == "flag-set" && e["retry"] == true))
        })
        .unwrap_or_else(|| panic!("the retry is audited:\n{}", brief(&events)));
    assert_eq!(
        (retried["by"].as_str(), retried["role"].as_str()),
        (Some("ops"), Some("reimage")),
        "{retried}"
    );
}

/// The host page in Firefox, without a VM: node01's steps made by plain HTTP requests exactly
/// as its medium and the `timeline` chain make them (the chain's own URLs, taken from the
/// script the service answers), then the page read as in Chromium.
#[test]
fn the_host_page_in_firefox() {
    let Setup { service, fleet, base } = setup();
    let (status, body) = send(
        &base,
        "PUT",
        "/hosts/node01/reimage",
        Some(REIMAGE_TOKEN),
        Some(r#"{"profile":"timeline"}"#),
    );
    assert_eq!(status, 200, "flag node01: {body}");
    let boot = format!(
        "/boot/node01?mac={NODE_MAC}&ip={NODE_IP}&platform=pcbios&arch=x86_64&medium=cd&token={}",
        fleet.node_token()
    );
    let (status, chain) = send(&base, "GET", &boot, None, None);
    assert_eq!(status, 200, "{chain}");
    // The chain's fetches in order (config, asset, started, done), as the guest would address
    // them (10.0.2.2 is this host's loopback to a QEMU guest).
    let guest = base.replace("127.0.0.1", "10.0.2.2");
    let urls: Vec<&str> = chain
        .lines()
        .filter(|l| l.starts_with("imgfetch --name tl-"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(urls.len(), 4, "the timeline chain's fetches:\n{chain}");
    for url in urls {
        let path = url.strip_prefix(&guest).unwrap_or_else(|| panic!("{url} is not {guest}"));
        let (status, answer) = send(&base, "GET", path, None, None);
        assert_eq!(status, 200, "{path}: {answer}");
        // A node takes milliseconds between steps (iPXE under QEMU: 8 ms and more). The
        // timeline orders steps by their millisecond, and a fetch is recorded once its body
        // has gone, a moment after a callback in the same millisecond may be: back-to-back
        // requests from here could swap in the timeline (seen: `started` before `config`).
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, local) = send(&base, "GET", &boot, None, None);
    assert_eq!(status, 200, "{local}");
    assert!(local.contains("local boot"), "the next boot is local: {local}");
    let context = || format!("{}\n--- /events ---\n{}", service.logs(), brief(&service.events()));
    let timeline = node01_timeline(&service, &context);

    let b = Browser::start_firefox();
    b.goto(&format!("{base}/ui/"));
    b.type_into("#token", READ_TOKEN);
    b.click("#token-submit");
    b.find("#hosts tbody tr[data-host='node01']");
    b.goto(&format!("{base}/ui/#host/node01"));
    b.wait_text("#host-installs .install", 15, |t| t.contains("next-boot"));
    check_host_page(&b, &timeline);
    // A read login sees no Retry, whatever the install's state.
    assert!(!b.displayed("#host-retry"));
}
