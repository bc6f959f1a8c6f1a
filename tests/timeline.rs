//! Every install's timeline, stalled installs, retry and the fleet's figures (issue 17, part 3),
//! against a real server on a loopback port, driven with the requests a node makes (its token,
//! its MAC; asset fetches attributed by token and by the peer address being the row's `ip`).
//!
//! Node addresses cannot be loopback ones (the inventory refuses them), so the test client
//! reaches the service as a trusted proxy (`--trusted-proxy 127.0.0.1`) and names the node's
//! address in `X-Forwarded-For`: the service's client address is then the node's, exactly as
//! behind a real proxy.

#[path = "serve_support/mod.rs"]
mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

const MAC1: &str = "aa:bb:cc:dd:ee:01";
/// A row whose fetches are attributed by address: requests [`from_lo1`] come from its `ip`.
const LOOP_ROW: &str = "lo1,10.0.9.5/24,10.0.9.1,10.0.9.1,aa:bb:cc:dd:ee:61,e2e,,,,,,,,,\n";
const LOOP_MAC: &str = "aa:bb:cc:dd:ee:61";
const LO1_IP: &str = "10.0.9.5";

/// A GET whose client address, for the service, is lo1's (forwarded by the trusted proxy).
fn from_lo1(url: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("X-Forwarded-For", LO1_IP)];
    headers.extend_from_slice(extra);
    call_h("GET", url, None, None, &headers)
}

/// A server with node tokens, the test inventory plus [`LOOP_ROW`], and the e2e profile's
/// `stall_after` set to `stall_after` (when given).
fn start_timeline(stall_after: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    std::fs::write(dir.path().join("nodes.csv"), format!("{INVENTORY}{LOOP_ROW}")).unwrap();
    if let Some(s) = stall_after {
        let toml = dir.path().join("profiles/e2e/profile.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, format!("{text}stall_after = \"{s}\"\n")).unwrap();
    }
    start_with(dir, config)
}

fn token(host: &str) -> String {
    bootforge::token::Secret::new(SECRET.to_vec()).unwrap().node_token(host)
}

/// The host's timeline, asked until `done` says it is complete (fetch records are written once
/// their body has been sent, a moment after the client has read it), for at most 10 s.
fn timeline_until(f: &Fixture, host: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call("GET", &f.url(&format!("/hosts/{host}/timeline")), Some(READ_TOKEN), None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kinds(install: &Value) -> Vec<String> {
    install["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().into())
        .collect()
}

fn step<'a>(install: &'a Value, kind: &str) -> &'a Value {
    install["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == kind)
        .unwrap_or_else(|| panic!("no {kind} step in {install}"))
}

#[test]
fn a_node_install_shows_every_step_with_sizes_status_and_attribution() {
    let mut f = start_timeline(None);
    let tok = token("node01");
    let b = f.base.clone();
    let r = call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let chain = call("GET", &boot_url(&b, "node01", MAC1, &format!("&token={tok}")), None, None);
    assert!(chain.body.contains("install chain"), "{}", chain.body);
    let id = install_id(&chain.body);
    let cfg = call("GET", &f.url(&format!("/config/node01/install.cfg?token={tok}")), None, None);
    assert_eq!(cfg.status, 200);
    // By token: the node names itself in the URL (what `node_asset_url` writes).
    let asset =
        call("GET", &f.url(&format!("/assets/rocky/vmlinuz?node=node01&token={tok}")), None, None);
    assert_eq!((asset.status, asset.header("content-length")), (200, Some("100000")));
    let started = format!("/hosts/node01/started?install={id}&token={tok}");
    assert_eq!(call("POST", &f.url(&started), None, None).status, 200);
    std::thread::sleep(Duration::from_millis(20));
    let done = format!("/hosts/node01/done?install={id}&token={tok}");
    assert_eq!(call("POST", &f.url(&done), None, None).status, 200);
    let next = call("GET", &boot_url(&b, "node01", MAC1, &format!("&token={tok}")), None, None);
    assert!(next.body.contains("local boot"), "{}", next.body);

    let t = timeline_until(&f, "node01", |v| {
        v["installs"][0]["steps"].as_array().is_some_and(|s| s.len() >= 7)
    });
    assert_eq!(t["host"], "node01");
    assert!(t["now_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let i = &t["installs"][0];
    assert_eq!(i["install"], id.as_str());
    assert_eq!((i["profile"].as_str(), i["state"].as_str()), (Some("e2e"), Some("done")));
    assert_eq!((i["open"].as_bool(), i["stalled"].as_bool()), (Some(false), Some(false)));
    assert_eq!(i["stall_after_s"], 3600, "the default allowance");
    assert_eq!(kinds(i), ["flagged", "boot", "config", "asset", "started", "done", "next-boot"]);
    let flagged = step(i, "flagged");
    assert_eq!((flagged["by"].as_str(), flagged["via"].as_str()), (Some("ops"), Some("token")));
    assert!(flagged["since_prev_ms"].is_null());
    let boot = step(i, "boot");
    assert_eq!((boot["answer"].as_str(), boot["medium"].as_str()), (Some("install"), Some("cd")));
    let c = step(i, "config");
    assert_eq!(c["file"], "install.cfg");
    assert_eq!(
        (c["status"].as_u64(), c["bytes"].as_u64()),
        (Some(200), Some(cfg.body.len() as u64))
    );
    assert_eq!(c["attributed"], "token");
    assert!(c["fetch_ms"].is_u64());
    let a = step(i, "asset");
    assert_eq!(
        (a["file"].as_str(), a["status"].as_u64(), a["bytes"].as_u64()),
        (Some("rocky/vmlinuz"), Some(200), Some(100_000))
    );
    assert_eq!((a["attributed"].as_str(), a["complete"].as_bool()), (Some("token"), Some(true)));
    assert_eq!(step(i, "next-boot")["answer"], "local");
    // Each step's gap is the time since the one before.
    let steps = i["steps"].as_array().unwrap();
    for w in steps.windows(2) {
        let gap = w[1]["ms"].as_u64().unwrap() - w[0]["ms"].as_u64().unwrap();
        assert_eq!(w[1]["since_prev_ms"].as_u64(), Some(gap), "{w:?}");
    }
    let answered = boot["ms"].as_u64().unwrap();
    let ended = step(i, "done")["ms"].as_u64().unwrap();
    assert_eq!(i["duration_ms"].as_u64(), Some(ended - answered), "first answer to done");
    assert_eq!(i["progress_ms"].as_u64(), Some(ended));
    // The token never reaches the log; the role and host checks hold.
    assert!(!audit_log(&f.dir.path().join("state")).contains(&tok));
    assert_eq!(call("GET", &f.url("/hosts/node01/timeline"), None, None).status, 401);
    assert_eq!(call("GET", &f.url("/hosts/nobody/timeline"), Some(READ_TOKEN), None).status, 404);
    for bad in ["0", "101", "x"] {
        let url = f.url(&format!("/hosts/node01/timeline?limit={bad}"));
        assert_eq!(call("GET", &url, Some(READ_TOKEN), None).status, 400, "{bad}");
    }
    f.stop();
}

#[test]
fn address_attribution_failure_reason_retry_and_fleet_stats() {
    let mut f = start_timeline(None);
    let tok = token("lo1");
    let b = f.base.clone();
    // Without an install of its own, a client at lo1's address writes nothing to the audit log.
    let r = from_lo1(&f.url("/assets/rocky/vmlinuz"), &[]);
    assert_eq!(r.status, 200);
    call("PUT", &f.url("/hosts/lo1/reimage"), Some(REIMAGE_TOKEN), None);
    let chain = call("GET", &boot_url(&b, "lo1", LOOP_MAC, &format!("&token={tok}")), None, None);
    let id = install_id(&chain.body);
    std::thread::sleep(Duration::from_millis(30));
    // No token in the URL: the client address is lo1's static one. A range: 206.
    let r = from_lo1(&f.url("/assets/rocky/vmlinuz"), &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, r.body.len()), (206, 100));
    let t = timeline_until(&f, "lo1", |v| {
        v["installs"][0]["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["step"] == "asset"))
    });
    // Shown, but not progress: anyone can send from an address.
    let answered = step(&t["installs"][0], "boot")["ms"].as_u64();
    let h = call("GET", &f.url("/hosts/lo1"), Some(READ_TOKEN), None).json();
    assert_eq!(h["progress_ms"].as_u64(), answered, "{h}");
    let log = audit_log(&f.dir.path().join("state"));
    let assets: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "asset")
        .collect();
    assert_eq!(assets.len(), 1, "only the fetch during the install: {log}");
    assert_eq!(assets[0]["bytes"], 100, "{log}");
    let failed = format!("/hosts/lo1/failed?install={id}&token={tok}&reason=disk%0Afull");
    assert_eq!(call("POST", &f.url(&failed), None, None).status, 200);
    let t = timeline_until(&f, "lo1", |v| {
        v["installs"][0]["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["step"] == "asset"))
    });
    let i = &t["installs"][0];
    assert_eq!((i["state"].as_str(), i["open"].as_bool()), (Some("failed"), Some(true)));
    let a = step(i, "asset");
    assert_eq!((a["attributed"].as_str(), a["status"].as_u64()), (Some("address"), Some(206)));
    assert_eq!(a["bytes"], 100);
    assert_eq!(step(i, "failed")["failure"], "disk full");

    // Retry: role reimage only; a new install of the same profile, audited.
    assert_eq!(call("POST", &f.url("/hosts/lo1/retry"), Some(READ_TOKEN), None).status, 403);
    // A retry keeps the profile: a body that asks for another is refused, and changes nothing.
    let r =
        call("POST", &f.url("/hosts/lo1/retry"), Some(REIMAGE_TOKEN), Some(r#"{"profile":"x"}"#));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("takes no fields") && r.body.contains("profile"), "{}", r.body);
    let r = call("POST", &f.url("/hosts/lo1/retry"), Some(REIMAGE_TOKEN), Some("{}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let new_id = v["flag"]["install"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    assert_eq!((v["profile"].as_str(), v["phase"].as_str()), (Some("e2e"), Some("pending")));
    let r = call("POST", &f.url("/hosts/lo1/retry"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.status, 409, "pending is not retryable: {}", r.body);
    assert_eq!(call("POST", &f.url("/hosts/nobody/retry"), Some(REIMAGE_TOKEN), None).status, 404);
    let log = audit_log(&f.dir.path().join("state"));
    let retried: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "flag-set" && r["retry"] == true)
        .collect();
    assert_eq!(retried.len(), 1, "{log}");
    assert_eq!(
        (retried[0]["install"].as_str(), retried[0]["by"].as_str()),
        (Some(&*new_id), Some("ops"))
    );
    assert_eq!(
        (retried[0]["previous"].as_str(), retried[0]["why"].as_str()),
        (Some(&*id), Some("failed"))
    );
    let t = timeline_until(&f, "lo1", |_| true);
    assert_eq!(t["installs"][0]["install"], new_id.as_str());
    assert_eq!(t["installs"][0]["steps"][0]["retry"], true);
    assert_eq!(t["installs"][1]["state"], "replaced");

    // The retry installs and finishes; the old id's callback changes nothing.
    let chain = call("GET", &boot_url(&b, "lo1", LOOP_MAC, &format!("&token={tok}")), None, None);
    assert_eq!(install_id(&chain.body), new_id);
    let old_done = format!("/hosts/lo1/done?install={id}&token={tok}");
    assert_eq!(call("POST", &f.url(&old_done), None, None).status, 409);
    std::thread::sleep(Duration::from_millis(30));
    let done = format!("/hosts/lo1/done?install={new_id}&token={tok}");
    assert_eq!(call("POST", &f.url(&done), None, None).status, 200);

    let s = call("GET", &f.url("/fleet/stats"), Some(READ_TOKEN), None);
    assert_eq!(s.status, 200, "{}", s.body);
    let s = s.json();
    assert_eq!((s["today"]["done"].as_u64(), s["today"]["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!((s["in_progress"].as_u64(), s["stalled"].as_u64()), (Some(0), Some(0)));
    let day = 86_400_000;
    assert_eq!(s["day_start_ms"].as_u64().unwrap() % day, 0);
    assert_eq!(s["series"].as_array().unwrap().len(), 14);
    let p = &s["profiles"][0];
    assert_eq!(
        (p["profile"].as_str(), p["done"].as_u64(), p["failed"].as_u64()),
        (Some("e2e"), Some(1), Some(1))
    );
    let d = p["p50_ms"].as_u64().unwrap();
    assert!((30..10_000).contains(&d), "{d}");
    assert_eq!(p["p95_ms"].as_u64(), Some(d));
    let t = timeline_until(&f, "lo1", |_| true);
    assert_eq!(t["installs"][0]["duration_ms"].as_u64(), Some(d), "the record's duration");
    let s3 = call("GET", &f.url("/fleet/stats?days=3"), Some(READ_TOKEN), None).json();
    assert_eq!(s3["series"].as_array().unwrap().len(), 3);
    for bad in ["0", "91", "x"] {
        let url = f.url(&format!("/fleet/stats?days={bad}"));
        assert_eq!(call("GET", &url, Some(READ_TOKEN), None).status, 400, "{bad}");
    }
    assert_eq!(call("GET", &f.url("/fleet/stats"), None, None).status, 401);
    f.stop();
}

#[test]
fn an_install_without_progress_is_stalled_in_hosts_and_metrics_and_retried() {
    let mut f = start_timeline(Some("2s"));
    let tok = token("node01");
    let b = f.base.clone();
    call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    // Pending is not stalled (the host may not have been switched on yet), nor retryable.
    std::thread::sleep(Duration::from_millis(2200));
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!((h["stalled"].as_bool(), h["stall_after_s"].as_u64()), (Some(false), Some(2)));
    let chain = call("GET", &boot_url(&b, "node01", MAC1, &format!("&token={tok}")), None, None);
    let id = install_id(&chain.body);
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(h["stalled"], false);
    assert_eq!(call("POST", &f.url("/hosts/node01/retry"), Some(REIMAGE_TOKEN), None).status, 409);
    // A config fetch is progress: it moves the last progress time on.
    std::thread::sleep(Duration::from_millis(1500));
    let cfg = call("GET", &f.url(&format!("/config/node01/install.cfg?token={tok}")), None, None);
    assert_eq!(cfg.status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(h["stalled"], false, "the fetch 1 s ago is progress: {h}");
    let progress = h["progress_ms"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(h["stalled"], true, "{h}");
    assert_eq!(h["progress_ms"].as_u64(), Some(progress));
    let list = call("GET", &f.url("/hosts?phase=stalled"), Some(READ_TOKEN), None);
    assert_eq!(list.status, 200, "{}", list.body);
    let names: Vec<Value> =
        list.json()["hosts"].as_array().unwrap().iter().map(|h| h["hostname"].clone()).collect();
    assert_eq!(names, [Value::from("node01")]);
    let all = call("GET", &f.url("/hosts"), Some(READ_TOKEN), None).json();
    let node01 = all["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostname"] == "node01")
        .unwrap()
        .clone();
    assert_eq!(node01["stalled"], true);
    let metrics = call("GET", &f.url("/metrics"), None, None).body;
    assert!(metrics.contains("bootforge_installs_stalled{profile=\"e2e\"} 1\n"), "{metrics}");
    assert!(metrics.contains("bootforge_installs_in_progress{profile=\"e2e\"} 1\n"), "{metrics}");
    assert!(metrics.contains("bootforge_installs_stalled{profile=\"debian\"} 0\n"), "{metrics}");
    let stats = call("GET", &f.url("/fleet/stats"), Some(READ_TOKEN), None).json();
    assert_eq!((stats["in_progress"].as_u64(), stats["stalled"].as_u64()), (Some(1), Some(1)));
    let t = timeline_until(&f, "node01", |_| true);
    assert_eq!(
        (t["installs"][0]["state"].as_str(), t["installs"][0]["stalled"].as_bool()),
        (Some("stalled"), Some(true))
    );
    // Retry re-flags it with a new id: pending, no longer stalled.
    let r = call("POST", &f.url("/hosts/node01/retry"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_ne!(v["flag"]["install"]["id"].as_str(), Some(id.as_str()));
    let log = audit_log(&f.dir.path().join("state"));
    let retried = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "flag-set" && r["retry"] == true)
        .unwrap();
    assert_eq!(
        (retried["previous"].as_str(), retried["why"].as_str()),
        (Some(&*id), Some("stalled"))
    );
    assert_eq!((v["stalled"].as_bool(), v["phase"].as_str()), (Some(false), Some("pending")));
    // The gauges are computed at most every 5 s (a scrape needs no login and must not query
    // the database each time): the next scrape still says 1, a later one 0.
    let metrics = call("GET", &f.url("/metrics"), None, None).body;
    assert!(metrics.contains("bootforge_installs_stalled{profile=\"e2e\"} 1\n"), "{metrics}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = call("GET", &f.url("/metrics"), None, None).body;
        if metrics.contains("bootforge_installs_stalled{profile=\"e2e\"} 0\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(250));
    }
    f.stop();
}

#[test]
fn a_bad_stall_after_is_a_load_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false);
    let toml = dir.path().join("profiles/e2e/profile.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}stall_after = \"soon\"\n")).unwrap();
    let err = match bootforge::serve::Server::start(config) {
        Ok(_) => panic!("a profile with stall_after = \"soon\" loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("e2e/profile.toml") && err.contains("stall_after"), "{err}");
}

#[test]
fn hostile_asset_paths_and_queries_never_reach_a_record_unbounded() {
    let mut f = start_timeline(None);
    let assets = f.dir.path().join("assets");
    // A real file under a path longer than a record keeps.
    let deep: Vec<String> = (0..5).map(|i| format!("{i}{}", "d".repeat(59))).collect();
    let dir = deep.iter().fold(assets.clone(), |p, d| p.join(d));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.bin"), b"x").unwrap();
    let rel = format!("{}/f.bin", deep.join("/"));
    assert!(rel.len() > 300);
    call("PUT", &f.url("/hosts/lo1/reimage"), Some(REIMAGE_TOKEN), None);
    let junk = "node=%3Cscript%3E%0A&token=AAAA%22%7D&x=".to_string() + &"j".repeat(3000);
    let r = from_lo1(&f.url(&format!("/assets/{rel}?{junk}")), &[]);
    assert_eq!(r.status, 200);
    // Junk paths are refused by the route or not found: never recorded.
    for bad in ["/assets/%2e%2e/nodes.csv", "/assets/~tok/x", "/assets/missing%0Afile"] {
        assert!(matches!(from_lo1(&f.url(bad), &[]).status, 400 | 404), "{bad}");
    }
    // Another node's token in the query does not move the fetch to that node.
    let wrong = token("node02");
    let url = f.url(&format!("/assets/rocky/vmlinuz?node=node01&token={wrong}"));
    assert_eq!(from_lo1(&url, &[]).status, 200);
    let t = timeline_until(&f, "lo1", |v| {
        v["installs"][0]["steps"]
            .as_array()
            .is_some_and(|s| s.iter().filter(|s| s["step"] == "asset").count() >= 2)
    });
    let assets: Vec<&Value> = t["installs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "asset")
        .collect();
    assert_eq!(assets.len(), 2, "{t}");
    let file = assets[0]["file"].as_str().unwrap();
    assert_eq!(file.chars().count(), 201, "{file}");
    assert!(file.ends_with('…') && rel.starts_with(file.trim_end_matches('…')));
    assert!(assets.iter().all(|a| a["attributed"] == "address"));
    let log = audit_log(&f.dir.path().join("state"));
    for needle in ["<script>", "jjjj", "AAAA", &wrong, "missing"] {
        assert!(!log.contains(needle), "{needle} reached the log");
    }
    let node01 = timeline_until(&f, "node01", |_| true);
    assert_eq!(node01["installs"].as_array().unwrap().len(), 0, "{node01}");
    f.stop();
}
