//! `bootforge discover`, end to end: the real binary asks the real service, which reads each
//! row's BMC (the sushy-tools emulator, whose fake systems report their `nics` as Redfish
//! `EthernetInterfaces` and their UUID) and proposes, then with `--apply` writes, each row's
//! boot NIC MAC and UUID. Both inventory homes (the CSV file, the database) are written.
//!
//! What the emulator reports (sushy-tools 2.2.0, fake driver): per NIC `MACAddress` and
//! `PermanentMACAddress`, `Status.State: Enabled`; no `LinkStatus`, `InterfaceEnabled` or
//! addresses; the System's `UUID` but no `SerialNumber`. So here the rule "the one interface
//! enabled" decides, and two NICs are an ambiguity; the address-in-subnet and link rules are
//! unit-tested in `src/serve/domain/discover.rs`.

#[path = "serve_support/bmc.rs"]
mod bmc;
mod common;
#[path = "console_support/mod.rs"]
mod console_support;
#[path = "serve_support/sushy.rs"]
mod sushy;

use bmc::{BmcService as Fixture, ADMIN_TOKEN, READ_TOKEN, REIMAGE_TOKEN};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use sushy::{free_port, Emulator, EmulatorConfig, FakeSystem, Proxy, Quirks};

const HEADER: &str = "hostname,ip,gateway,dns,mac,profile,bmc,uuid,serial\n";

/// An emulator whose system `i` has the NICs `nics[i]`.
fn emulator(nics: &[&[&str]]) -> Emulator {
    let systems = nics
        .iter()
        .enumerate()
        .map(|(i, macs)| FakeSystem {
            nics: macs.iter().map(|m| m.to_string()).collect(),
            ..FakeSystem::numbered(i + 1, "On")
        })
        .collect();
    Emulator::start(EmulatorConfig { systems, ..EmulatorConfig::new(0) })
}

/// A service over `csv` (header included), as a file, or imported into its database.
fn service(csv: &str, database: bool, deadline: Option<Duration>) -> Fixture {
    let csv = csv.to_string();
    Fixture::start_config("", free_port(), None, true, true, move |c, state| {
        if let Some(d) = deadline {
            c.bmc_deadline = d;
        }
        if database {
            let file = state.parent().unwrap().join("import.csv");
            std::fs::write(&file, &csv).unwrap();
            let out = Command::new(common::bootforge_bin())
                .args(["inventory", "import"])
                .arg(&file)
                .arg("--state-dir")
                .arg(state)
                .arg("--profiles")
                .arg(&c.profiles)
                .args(["--public-url", &format!("http://{}", c.listen)])
                .env_remove("BOOTFORGE_DATABASE")
                .output()
                .unwrap();
            assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
            c.inventory = None;
        } else {
            std::fs::write(c.inventory.as_ref().unwrap(), &csv).unwrap();
        }
    })
}

/// Runs `bootforge discover ARGS` with the token `token`: (success, stdout, stderr).
fn discover(f: &Fixture, token: &str, args: &[&str]) -> (bool, String, String) {
    let file = f.dir.path().join("discover-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let out = Command::new(common::bootforge_bin())
        .arg("discover")
        .args(args)
        .args(["--server", &f.base, "--token-file"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn api(method: &str, url: &str, token: &str, body: &str) -> (u16, Value) {
    let req = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(120));
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    (status, serde_json::from_str(&resp.into_string().unwrap()).unwrap_or(Value::Null))
}

/// The inventory as the service has it (`GET /inventory`): host -> column -> value.
fn rows(f: &Fixture) -> std::collections::BTreeMap<String, Value> {
    let (status, inv) = api("GET", &format!("{}/inventory", f.base), ADMIN_TOKEN, "");
    assert_eq!(status, 200, "{inv}");
    inv["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["fields"]["hostname"].as_str().unwrap().to_string(), r["fields"].clone()))
        .collect()
}

/// `inventory-changed` records of the audit log, but the import that set up a database one.
fn inventory_changes(f: &Fixture) -> Vec<Value> {
    f.audit()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "inventory-changed" && e["action"] != "import")
        .collect()
}

fn line_of<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{host}: ")))
        .unwrap_or_else(|| panic!("no line for {host}:\n{out}"))
}

const A: &str = "52:54:00:aa:00:01";
const B1: &str = "52:54:00:bb:00:01";
const B2: &str = "52:54:00:bb:00:02";
const C: &str = "52:54:00:cc:00:01";
const D: &str = "52:54:00:dd:00:01";
const TYPED: &str = "52:54:00:ee:ee:ee";

/// The inventory of the main scenario: a row without MAC and one NIC (filled), one with two
/// NICs (ambiguous), one whose typed MAC the BMC contradicts (kept, unless --overwrite), one
/// whose MAC agrees, and one without a bmc (not asked).
fn scenario(emu: &Emulator) -> String {
    format!(
        "{HEADER}\
         fill,10.9.0.10/24,,,,e2e,{},,\n\
         two,10.9.0.11/24,,,,e2e,{},,\n\
         typed,10.9.0.12/24,,,{TYPED},e2e,{},,\n\
         same,10.9.0.13/24,,,{D},e2e,{},,\n\
         nobmc,10.9.0.14/24,,,,e2e,,,\n",
        emu.system_url(0),
        emu.system_url(1),
        emu.system_url(2),
        emu.system_url(3),
    )
}

fn check_scenario(database: bool) {
    let emu = emulator(&[&[A], &[B1, B2], &[C], &[D]]);
    let csv = scenario(&emu);
    let f = service(&csv, database, None);
    let uuid = |i: usize| emu.systems[i].uuid.clone();

    // A read caller may not drive the BMCs; a reimage caller may look but not apply.
    let (status, _) = api("POST", &format!("{}/discover", f.base), READ_TOKEN, r#"{"all":true}"#);
    assert_eq!(status, 403);
    let (ok, _, err) = discover(&f, REIMAGE_TOKEN, &["--all", "--apply"]);
    assert!(!ok && err.contains("HTTP 403"), "{err}");

    // The proposal: changes nothing.
    let before = rows(&f);
    let (ok, out, err) = discover(&f, REIMAGE_TOKEN, &["--all"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        line_of(&out, "fill")
            .starts_with(&format!("fill: (none) -> {A} (fill: interface {A} is the only one up)")),
        "{out}"
    );
    let two = line_of(&out, "two");
    assert!(two.starts_with("two: (none) -> (none) (ambiguous: 2 interfaces match"), "{two}");
    assert!(two.contains(B1) && two.contains(B2), "names both candidates: {two}");
    assert!(
        line_of(&out, "typed").starts_with(&format!(
            "typed: {TYPED} -> {TYPED} (kept as typed: the BMC proposes {C}"
        )),
        "{out}"
    );
    assert!(line_of(&out, "same").starts_with(&format!("same: {D} -> {D} (unchanged")), "{out}");
    assert!(!out.contains("nobmc"), "--all takes only rows with a bmc:\n{out}");
    assert!(out.contains(&format!("uuid: fill {}", uuid(0))), "{out}");
    assert!(out.contains("would change; nothing was written"), "{out}");
    assert_eq!(rows(&f), before, "a proposal writes nothing");
    assert!(inventory_changes(&f).is_empty());

    // --apply (admin): one edit, audited with who made it.
    let (ok, out, err) = discover(&f, ADMIN_TOKEN, &["--all", "--apply"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("applied: 4 host(s) changed"), "{out}");
    let after = rows(&f);
    assert_eq!(after["fill"]["mac"], A);
    assert_eq!(after["fill"]["uuid"], uuid(0));
    assert_eq!(after["two"]["mac"], "", "an ambiguity writes no MAC");
    assert_eq!(after["two"]["uuid"], uuid(1), "but the UUID is known");
    assert_eq!(after["typed"]["mac"], TYPED, "a typed MAC stays without --overwrite");
    assert_eq!(after["same"]["mac"], D);
    assert_eq!(after["nobmc"], before["nobmc"]);
    let changes = inventory_changes(&f);
    assert_eq!(changes.len(), 1, "one edit: {changes:?}");
    let c = &changes[0];
    assert_eq!(c["action"], "discover");
    assert_eq!(c["by"], "boss");
    assert_eq!(c["hosts"], serde_json::json!(["fill", "two", "typed", "same"]));
    assert_eq!(c["version"].is_u64(), database, "{c}");
    // The service took the new inventory at once.
    let (status, host) = api("GET", &format!("{}/hosts/fill", f.base), READ_TOKEN, "");
    assert_eq!((status, host["mac"].as_str()), (200, Some(A)), "{host}");

    // --overwrite replaces the typed MAC; named hosts only.
    let (ok, out, err) = discover(&f, ADMIN_TOKEN, &["typed", "--apply", "--overwrite"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        line_of(&out, "typed").starts_with(&format!("typed: {TYPED} -> {C} (replace")),
        "{out}"
    );
    assert_eq!(rows(&f)["typed"]["mac"], C);
    assert_eq!(inventory_changes(&f).len(), 2);

    // Again: nothing left to change, nothing written.
    let (ok, out, _) = discover(&f, ADMIN_TOKEN, &["--all", "--apply"]);
    assert!(ok && out.contains("nothing to change"), "{out}");
    assert_eq!(inventory_changes(&f).len(), 2);

    // A stale version is refused, and names why.
    let (status, body) = api(
        "POST",
        &format!("{}/discover", f.base),
        ADMIN_TOKEN,
        r#"{"all": true, "apply": true, "overwrite": true, "version": "1234"}"#,
    );
    assert_eq!(status, 409, "{body}");
    // Unknown and bmc-less hosts, by name: per-host errors.
    let (ok, out, _) = discover(&f, REIMAGE_TOKEN, &["nobmc", "ghost", "fill"]);
    assert!(!ok);
    assert!(line_of(&out, "nobmc").contains("error: the row has no bmc"), "{out}");
    assert!(line_of(&out, "ghost").contains("error: not in the inventory"), "{out}");
    assert!(line_of(&out, "fill").starts_with(&format!("fill: {A} -> {A} (unchanged")), "{out}");
}

#[test]
fn discovery_fills_macs_in_the_inventory_file() {
    check_scenario(false);
}

#[test]
fn discovery_fills_macs_in_the_database_inventory() {
    check_scenario(true);
}

/// A dead BMC and one slower than the deadline each cost only their own row an error; the
/// others are answered, and the whole discovery ends within the deadline (plus a little).
#[test]
fn a_dead_or_slow_bmc_costs_only_its_own_row() {
    let emu = emulator(&[&[A], &[C]]);
    let slow = Proxy::start(
        emu.port,
        Quirks { delay: Some(Duration::from_secs(30)), ..Quirks::default() },
    );
    let slow_url = emu.system_url(1).replace(&emu.base, &slow.base);
    let closed = free_port();
    let csv = format!(
        "{HEADER}ok,10.9.0.10/24,,,,e2e,{},,\n\
         dead,10.9.0.11/24,,,,e2e,http://127.0.0.1:{closed},,\n\
         slow,10.9.0.12/24,,,,e2e,{slow_url},,\n",
        emu.system_url(0)
    );
    let deadline = Duration::from_secs(3);
    let f = service(&csv, false, Some(deadline));
    let started = Instant::now();
    let (ok, out, err) = discover(&f, ADMIN_TOKEN, &["--all", "--apply"]);
    let elapsed = started.elapsed();
    assert!(!ok, "two BMCs failed: the exit status says so\n{out}");
    assert!(err.contains("2 of 3 hosts could not be read"), "{err}");
    assert!(line_of(&out, "ok").starts_with(&format!("ok: (none) -> {A} (fill")), "{out}");
    // Refused connections are retried with backoff until they run out, or the deadline does.
    let dead = line_of(&out, "dead");
    assert!(
        dead.starts_with("dead: error: ")
            && (dead.contains("cannot reach the BMC") || dead.contains("did not finish within")),
        "{out}"
    );
    let slow_line = line_of(&out, "slow");
    assert!(slow_line.contains("error:") && slow_line.contains("did not finish within"), "{out}");
    assert!(
        elapsed < deadline + Duration::from_secs(3),
        "a slow BMC delayed the answer past its deadline: {elapsed:?}"
    );
    eprintln!("discover with a dead and a slow BMC: {:.1}s", elapsed.as_secs_f64());
    // The reachable row was still written.
    assert_eq!(rows(&f)["ok"]["mac"], A);
    assert_eq!(rows(&f)["slow"]["mac"], "");
}

/// An edit made while the BMCs are read is never overwritten: the proposal was made from the
/// row as it was (no MAC: fill), so the apply is refused (409) and writes nothing; the MAC the
/// operator typed meanwhile stays.
#[test]
fn an_edit_made_during_discovery_is_not_overwritten() {
    let emu = emulator(&[&[A]]);
    // Each Redfish request held 1 s: the read takes a few seconds.
    let slow =
        Proxy::start(emu.port, Quirks { delay: Some(Duration::from_secs(1)), ..Quirks::default() });
    let url = emu.system_url(0).replace(&emu.base, &slow.base);
    let csv = format!("{HEADER}one,10.9.0.10/24,,,,e2e,{url},,\nother,10.9.0.11/24,,,,e2e,,,\n");
    let f = service(&csv, false, None);
    let base = f.base.clone();
    let run = std::thread::spawn(move || {
        api("POST", &format!("{base}/discover"), ADMIN_TOKEN, r#"{"all": true, "apply": true}"#)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, inv) = api("GET", &format!("{}/inventory", f.base), ADMIN_TOKEN, "");
    assert_eq!(status, 200);
    // An operator types the MAC of the very row discovery is about to fill.
    let (status, body) = api(
        "PUT",
        &format!("{}/inventory/hosts/one", f.base),
        ADMIN_TOKEN,
        &serde_json::json!({"fields": {"mac": "52:54:00:00:00:99"}, "version": inv["version"]})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = run.join().unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("changed while the BMCs were read"), "{body}");
    let now = rows(&f);
    assert_eq!(now["one"]["mac"], "52:54:00:00:00:99", "the operator's MAC stays");
    assert_eq!(now["one"]["uuid"], "", "discovery wrote nothing");
}

/// Without `uuid`/`serial` columns the MAC is still filled and the UUID reported, not written.
#[test]
fn missing_columns_are_reported_not_added() {
    let emu = emulator(&[&[A]]);
    let csv = format!("hostname,ip,profile,bmc\nn1,10.9.0.10/24,e2e,{}\n", emu.system_url(0));
    let f = service(&csv, false, None);
    let (ok, out, err) = discover(&f, ADMIN_TOKEN, &["n1"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("the inventory has no `mac` column"), "{out}");
    assert!(out.contains("the inventory has no `uuid` column"), "{out}");
    let (ok, out, _) = discover(&f, ADMIN_TOKEN, &["n1", "--apply"]);
    assert!(ok && out.contains("nothing to change"), "{out}");
    let text = std::fs::read_to_string(f.dir.path().join("nodes.csv")).unwrap();
    assert_eq!(text, csv, "the file is untouched");
}

/// What a fuller BMC reports and the fake driver does not: link states, IPv4 addresses and a
/// serial number (with characters a hostile BMC might slip in), added by the proxy.
fn fuller_bmc(v: &mut Value) {
    let id = v["@odata.id"].as_str().unwrap_or("").to_string();
    let nic = |mac: &str| id.ends_with(&format!("/EthernetInterfaces/{mac}"));
    if nic(SUBNET_NIC) {
        v["LinkStatus"] = "LinkUp".into();
        v["IPv4Addresses"] = serde_json::json!([{"Address": "10.9.0.20"}]);
    } else if nic(OTHER_NIC) {
        v["LinkStatus"] = "LinkUp".into();
        v["IPv4Addresses"] = serde_json::json!([{"Address": "192.168.7.7"}]);
    } else if nic(DOWN_NIC) {
        v["LinkStatus"] = "LinkDown".into();
    } else if nic(UP_NIC) {
        v["LinkStatus"] = "LinkUp".into();
    } else if v["@odata.type"].as_str().is_some_and(|t| t.contains("ComputerSystem")) {
        v["SerialNumber"] = "SN-\u{202e}42\n".into();
    }
}

const SUBNET_NIC: &str = "52:54:00:f0:00:01";
const OTHER_NIC: &str = "52:54:00:f0:00:02";
const DOWN_NIC: &str = "52:54:00:f0:00:03";
const UP_NIC: &str = "52:54:00:f0:00:04";

/// Through a BMC that reports links and addresses: the interface with an address in the row's
/// subnet wins over another that is also up; where none has one, the only link up wins over one
/// down; the serial number is cleaned and recorded.
#[test]
fn addresses_and_links_decide_where_the_bmc_reports_them() {
    let emu = emulator(&[&[OTHER_NIC, SUBNET_NIC], &[DOWN_NIC, UP_NIC]]);
    let proxy =
        Proxy::start(emu.port, Quirks { report_json: Some(fuller_bmc), ..Quirks::default() });
    let url = |i: usize| emu.system_url(i).replace(&emu.base, &proxy.base);
    let csv = format!(
        "{HEADER}bysubnet,10.9.0.20/24,,,,e2e,{},,\nbylink,10.9.0.21/24,,,,e2e,{},,\n",
        url(0),
        url(1)
    );
    let f = service(&csv, false, None);
    let (ok, out, err) = discover(&f, ADMIN_TOKEN, &["--all", "--apply"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        line_of(&out, "bysubnet").starts_with(&format!(
            "bysubnet: (none) -> {SUBNET_NIC} (fill: interface {SUBNET_NIC} is the only one with an address in the row's subnet (10.9.0.20))"
        )),
        "{out}"
    );
    assert!(
        line_of(&out, "bylink").starts_with(&format!(
            "bylink: (none) -> {UP_NIC} (fill: interface {UP_NIC} is the only one up)"
        )),
        "{out}"
    );
    let now = rows(&f);
    assert_eq!(now["bysubnet"]["mac"], SUBNET_NIC);
    assert_eq!(now["bylink"]["mac"], UP_NIC);
    assert_eq!(now["bylink"]["serial"], "SN-42", "control and bidi characters are dropped");
}

/// The console's action (admin): Discover shows the proposal and writes nothing; Apply writes
/// it, audited as the logged-in admin.
#[test]
fn the_console_discovers_and_applies() {
    let emu = emulator(&[&[A], &[B1, B2]]);
    let csv = format!(
        "{HEADER}fill,10.9.0.10/24,,,,e2e,{},,\ntwo,10.9.0.11/24,,,,e2e,{},,\n",
        emu.system_url(0),
        emu.system_url(1)
    );
    let f = service(&csv, false, None);
    let b = console_support::Browser::start();
    b.goto(&format!("{}/ui/", f.base));
    b.type_into("#token", ADMIN_TOKEN);
    b.click("#token-submit");
    // Logged in once the fleet lists the hosts.
    b.find("#hosts tbody tr[data-host='fill']");
    b.click("#nav-inventory");
    b.click("#discover-run");
    let shown = b.wait_text("#discover-result", 60, |t| t.contains("would change"));
    assert!(shown.contains(&format!("fill: (none) -> {A} (fill: interface {A}")), "{shown}");
    assert!(shown.contains("two: (none) -> (none) (ambiguous: 2 interfaces match"), "{shown}");
    assert_eq!(rows(&f)["fill"]["mac"], "", "the proposal wrote nothing");
    b.click("#discover-apply");
    let shown =
        b.wait_text("#discover-result", 60, |t| t.contains("applied") || t.contains("refused"));
    assert!(shown.contains("applied: 2 host(s) changed"), "{shown}");
    assert_eq!(rows(&f)["fill"]["mac"], A);
    let changes = inventory_changes(&f);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["by"], "boss");
    assert_eq!(changes[0]["via"], "token-session");
}

/// One host whose discovered MAC another row already has is set aside with the reason; the
/// other hosts of the same `--apply` are written (before, the whole apply failed with 422).
#[test]
fn a_clashing_host_is_set_aside_and_the_others_apply() {
    let emu = emulator(&[&[A], &[C]]);
    let csv = format!(
        "{HEADER}\
         takes,10.9.0.10/24,,,,e2e,{},,\n\
         other,10.9.0.11/24,,,,e2e,{},,\n\
         owner,10.9.0.12/24,,,{A},e2e,,,\n",
        emu.system_url(0),
        emu.system_url(1),
    );
    let f = service(&csv, false, None);
    let (ok, out, _) = discover(&f, REIMAGE_TOKEN, &["--all"]);
    assert!(!ok, "a set-aside host is an error of its line: {out}");
    assert!(
        line_of(&out, "takes").contains(&format!("the MAC {A} would also be owner's")),
        "{out}"
    );
    let (status, body) = api(
        "POST",
        &format!("{}/discover", f.base),
        ADMIN_TOKEN,
        r#"{"all": true, "apply": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true, "{body}");
    let hosts = body["hosts"].as_array().unwrap();
    let takes = hosts.iter().find(|h| h["host"] == "takes").unwrap();
    assert_eq!(takes["changes"], false, "{takes}");
    assert!(takes["error"].as_str().unwrap().contains("would also be owner's"), "{takes}");
    let after = rows(&f);
    assert_eq!(after["takes"]["mac"], "", "the clashing MAC is not written");
    assert_eq!(after["other"]["mac"], C, "the other host is applied");
    assert_eq!(after["owner"]["mac"], A);
    let changes = inventory_changes(&f);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["hosts"], serde_json::json!(["other"]));
}
