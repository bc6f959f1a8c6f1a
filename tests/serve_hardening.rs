//! Regression tests for the hardening of `bootforge serve` (issue 6): one test per defect found
//! by the adversarial review, each of which failed against the service before the change.

#[path = "serve_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

const MAC1: &str = "aa:bb:cc:dd:ee:01";
const MAC2: &str = "aa:bb:cc:dd:ee:02";

fn node_token(host: &str) -> String {
    bootforge::token::Secret::new(SECRET.to_vec()).unwrap().node_token(host)
}

/// A GET with a raw `Host` header (any bytes).
fn get_with_host(base: &str, target: &str, host: &str) -> (u16, String) {
    raw_request(
        base.trim_start_matches("http://"),
        &format!("GET {target} HTTP/1.1\r\nHost: {host}"),
    )
}

fn audit_log(f: &Fixture) -> String {
    // Notes are written by a writer thread; /events waits for it, so ask there first.
    call("GET", &f.url("/events?limit=1"), Some(READ_TOKEN), None);
    support::audit_log(&f.dir.path().join("state"))
}

fn host(f: &Fixture, h: &str) -> serde_json::Value {
    call("GET", &f.url(&format!("/hosts/{h}")), Some(READ_TOKEN), None).json()
}

fn flag(f: &Fixture, h: &str, profile: &str) {
    let body = format!(r#"{{"profile":"{profile}"}}"#);
    let r = call("PUT", &f.url(&format!("/hosts/{h}/reimage")), Some(REIMAGE_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
}

fn is_local(body: &str) -> bool {
    body.starts_with("#!ipxe\necho bootforge: local boot:")
}

/// A fixture whose profiles also hold `e2e-once`: the e2e profile clearing on first answer.
fn start_with_first_answer_profile() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path());
    let once = config.profiles.join("e2e-once");
    copy_tree(&repo().join("tests/profiles/e2e"), &once);
    std::fs::write(
        once.join("profile.toml"),
        "clear = \"first-answer\"\nrepeat_window_secs = 600\n",
    )
    .unwrap();
    config.tokens_file = Some(tokens_file(dir.path()));
    start_with(dir, config)
}

/// Bug 1: the Host header decided the base URL of rendered templates, and `[::1]x ; shell ; #`
/// passed as a server URL. Rendered URLs now come from the configuration only.
#[test]
fn a_hostile_host_header_reaches_no_script_or_config() {
    let mut f = start(true);
    flag(&f, "rocky1", "rocky");
    let tok = node_token("rocky1");
    let target = format!(
        "/boot/rocky1?mac=aa:bb:cc:dd:ee:31&ip=10.0.0.31&platform=pcbios&medium=cd&token={tok}"
    );
    for hostile in ["[::1]x ; shell ; #", "[::1]x';touch PWNED;'", "evil.example:80"] {
        let (status, chain) = get_with_host(&f.base, &target, hostile);
        assert_eq!(status, 200);
        assert!(chain.contains("kernel "), "{chain}");
        assert!(!chain.contains("shell") && !chain.contains("PWNED") && !chain.contains("evil"));
        assert!(chain.contains(&format!("{}/assets/rocky/vmlinuz", f.base)), "{chain}");
        let (status, ks) =
            get_with_host(&f.base, &format!("/config/rocky1/ks.cfg?token={tok}"), hostile);
        assert_eq!(status, 200, "{ks}");
        assert!(!ks.contains("PWNED") && !ks.contains("shell") && !ks.contains("evil"), "{ks}");
        assert!(ks.contains(&format!("{}/hosts/rocky1/done?install=", f.base)), "{ks}");
    }
    f.stop();
}

/// Bug 2: with a first-answer profile, DELETE after the first answer said "was not flagged"
/// and the repeat window kept serving the install chain and configs.
#[test]
fn cancel_stops_a_first_answer_install() {
    let mut f = start_with_first_answer_profile();
    let boot = |f: &Fixture| call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    flag(&f, "node01", "e2e-once");
    assert!(boot(&f).contains("install chain"));
    assert!(boot(&f).contains("install chain"), "the repeat window serves it again");
    let r = call("DELETE", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("window-closed")),
        "{}",
        r.body
    );
    assert!(is_local(&boot(&f)), "after a DELETE the next boot is local");
    assert_eq!(call("GET", &f.url("/config/node01/install.cfg"), None, None).status, 404);

    // PUT then DELETE while an earlier install's window is open: local too.
    flag(&f, "node01", "e2e-once");
    assert!(boot(&f).contains("install chain"));
    flag(&f, "node01", "e2e");
    let r = call("DELETE", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.json()["outcome"], "cancelled");
    assert!(is_local(&boot(&f)));
    assert_eq!(call("GET", &f.url("/config/node01/install.cfg"), None, None).status, 404);
    f.stop();
}

/// Bug 3: a held `HOST.lock` (another instance, slow NFS) froze every connection. With the
/// database the same threat is a writer that holds the database's lock: it delays only the
/// boots that need a decision written, which answer local ("did not decide in time") at the
/// deadline; unflagged boots, reads and health checks go on at once, and API writes get 503 with
/// Retry-After rather than hanging.
#[test]
fn a_held_database_lock_delays_only_flagged_boots() {
    let mut f = start(false);
    flag(&f, "node01", "e2e");
    let lock = hold_write_lock(&f.config.state_dir);
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            let url = boot_url(&f.base, "node01", MAC1, "");
            std::thread::spawn(move || {
                let t = Instant::now();
                (call("GET", &url, None, None).body, t.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(call("GET", &f.url("/healthz"), None, None).status, 200);
        let r = call("GET", &boot_url(&f.base, "node02", MAC2, ""), None, None);
        assert!(is_local(&r.body));
        let h = call("GET", &f.url("/hosts/node02"), Some(READ_TOKEN), None);
        assert_eq!(h.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "other clients waited {:?}", t.elapsed());
    }
    for t in stuck {
        let (body, waited) = t.join().unwrap();
        assert!(body.contains("did not decide in time"), "{body}");
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(8), "{waited:?}");
    }
    let body = r#"{"profile":"e2e"}"#;
    let r = call("PUT", &f.url("/hosts/node02/reimage"), Some(REIMAGE_TOKEN), Some(body));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("retry-after")),
        "{:?}",
        r.headers
    );
    drop(lock);
    assert!(call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None)
        .body
        .contains("install chain"));
    f.stop();
}

/// A flagged first-answer host whose decision waits past the deadline (the database's write
/// lock held for 4 s) boots its disk, and the decision is not written behind its back once the
/// lock is free: the flag is still set, no install was opened, and the next boot gets the chain.
/// (Written late, the install would be "opened and ended" for a node that never got it.)
#[test]
fn a_decision_past_the_boot_deadline_is_not_written_later() {
    let mut f = start_with_first_answer_profile();
    flag(&f, "node01", "e2e-once");
    let lock = hold_write_lock(&f.config.state_dir);
    let url = boot_url(&f.base, "node01", MAC1, "");
    let stuck = std::thread::spawn(move || call("GET", &url, None, None).body);
    std::thread::sleep(Duration::from_secs(4));
    drop(lock);
    let body = stuck.join().unwrap();
    assert!(body.contains("did not decide in time"), "{body}");
    // The late change has the lock now; give it time to run.
    std::thread::sleep(Duration::from_millis(1500));
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(h["flagged"], true, "the flag waits for a boot that gets the chain: {h}");
    assert!(h["flag"]["install"]["opened_at"].is_null(), "no install opened: {h}");
    let next = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(next.contains("install chain"), "{next}");
    f.stop();
}

/// Bug 4: `/config/H/~TOKEN` and `/config/H/x/~TOKEN/f` put the token into the audit log as
/// the file name, readable by the `read` role through /events.
#[test]
fn no_request_shape_puts_a_node_token_in_the_audit_log() {
    let mut f = start(true);
    flag(&f, "node01", "e2e");
    let tok = node_token("node01");
    let wrong = node_token("node02");
    for t in [&tok, &wrong] {
        for path in [
            format!("/config/node01/~{t}"),
            format!("/config/node01/x/~{t}/install.cfg"),
            format!("/config/node01/~{t}/~{t}"),
            format!("/config/node01/~{t}/install.cfg"),
            format!("/config/node01/install.cfg?token={t}"),
            format!("/hosts/node01/done?token={t}&install={t}"),
            format!("/hosts/node01/failed?install=x&token={t}"),
            format!("/boot/node01?mac={MAC1}&token={t}"),
            format!("/boot/{t}?token={t}"),
            format!("/hosts/{t}"),
        ] {
            let r = call("GET", &f.url(&path), None, None);
            assert!(r.status < 500, "{path}: {}", r.status);
        }
    }
    let log = audit_log(&f);
    let events = call("GET", &f.url("/events?limit=1000"), Some(READ_TOKEN), None).body;
    for t in [&tok, &wrong] {
        assert!(!log.contains(t.as_str()), "a node token reached the audit log");
        assert!(!events.contains(t.as_str()), "a node token reached /events");
    }
    f.stop();
}

/// An unauthenticated request adds one bounded record, whatever it carries; `/events` pages
/// are bounded whatever `limit` asks.
#[test]
fn what_a_request_can_make_the_service_store_is_bounded() {
    let mut f = start(false);
    let big = "9".repeat(30_000);
    let before = audit_log(&f).len();
    let r =
        call("GET", &f.url(&format!("/boot/node01?mac={MAC1}&ip={big}&serial={big}")), None, None);
    assert!(is_local(&r.body));
    let r = call("GET", &f.url(&format!("/boot/{}?ip={big}", "a".repeat(250))), None, None);
    assert!(is_local(&r.body));
    let grown = audit_log(&f).len() - before;
    assert!(grown < 1_200, "two boot records took {grown} bytes");
    for _ in 0..1_500 {
        call("GET", &boot_url(&f.base, "node02", MAC2, ""), None, None);
    }
    let page = call("GET", &f.url("/events?limit=10000"), Some(READ_TOKEN), None);
    assert!(page.json()["events"].as_array().unwrap().len() <= 1_000);
    assert!(page.body.len() < 1_200_000);
    f.stop();
}

/// `last_boot` showed the last boot request for the name, verified or not; only a request with
/// the node's token (and MAC) may change it.
#[test]
fn only_verified_boots_update_last_boot() {
    let mut f = start(true);
    let tok = node_token("node01");
    call("GET", &boot_url(&f.base, "node01", MAC1, &format!("&token={tok}")), None, None);
    let seen = host(&f, "node01")["last_boot"].clone();
    assert_eq!(seen["answer"], "local", "{seen}");
    std::thread::sleep(Duration::from_millis(20));
    call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None);
    call(
        "GET",
        &boot_url(&f.base, "node01", MAC1, &format!("&token={}", node_token("x"))),
        None,
        None,
    );
    call(
        "GET",
        &boot_url(&f.base, "node01", "aa:bb:cc:dd:ee:99", &format!("&token={tok}")),
        None,
        None,
    );
    assert_eq!(host(&f, "node01")["last_boot"], seen, "unverified boots must not change it");
    f.stop();
}

/// A refused boot of an inventory host (wrong MAC or token) still leaves iPXE the host's own
/// way: deb1's row says `local_boot = 0x81`.
#[test]
fn a_refused_boot_still_uses_the_rows_local_boot() {
    let mut f = start(true);
    let tok = node_token("deb1");
    for extra in [String::new(), format!("&token={tok}")] {
        let r = call("GET", &boot_url(&f.base, "deb1", "aa:bb:cc:dd:ee:99", &extra), None, None);
        assert!(is_local(&r.body) && r.body.contains("--drive 0x81"), "{}", r.body);
    }
    f.stop();
}

/// Without a secret, `done` for invented names created a lock file per name (now: a row).
#[test]
fn callbacks_for_hosts_outside_the_inventory_store_nothing() {
    let mut f = start(false);
    let id = "0".repeat(32);
    for name in ["ghost1", "ghost2", "a-b-c"] {
        for cb in ["done", "started", "failed"] {
            let r = call("POST", &f.url(&format!("/hosts/{name}/{cb}?install={id}")), None, None);
            assert_eq!(r.status, 404, "{}", r.body);
        }
    }
    assert_eq!(sql_count(&f.config.state_dir, "SELECT COUNT(*) FROM hosts"), 0, "no row made");
    f.stop();
}

/// A flag change answered 200 could be missing from the audit log. Now a change and its record
/// commit together: a record the database refuses refuses the change, and nothing changes.
#[test]
fn a_change_that_cannot_be_audited_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path());
    config.tokens_file = Some(tokens_file(dir.path()));
    let mut f = start_with(dir, config);
    // Every insert into the audit table fails, as a full disk would fail it.
    sql_on_state(
        &f.config.state_dir,
        "CREATE TRIGGER full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    let r = call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("nothing was changed"), "{}", r.body);
    let h = host(&f, "node01");
    assert_eq!((h["flagged"].as_bool(), h["version"].as_u64()), (Some(false), Some(0)), "{h}");
    assert!(is_local(&call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body));
    f.stop();
}

/// One corrupt host file turned `GET /hosts` into a 500 for all hosts; and 500 bodies showed
/// absolute paths.
#[test]
fn a_corrupt_host_file_is_reported_in_place() {
    let mut f = start(false);
    flag(&f, "node01", "e2e");
    flag(&f, "node02", "e2e");
    sql_on_state(
        &f.config.state_dir,
        "UPDATE hosts SET state = '{ not json' WHERE name = 'node01'",
    );
    let r = call("GET", &f.url("/hosts"), Some(READ_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let hosts = r.json()["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 7);
    let bad = hosts.iter().find(|h| h["hostname"] == "node01").unwrap();
    assert!(bad["state_error"].as_str().unwrap().contains("does not parse"), "{bad}");
    let good = hosts.iter().find(|h| h["hostname"] == "node02").unwrap();
    assert_eq!(good["flagged"], true);
    // The node's boot is local, saying why; the installer's config fetch is a generic 500.
    let b = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(is_local(&b) && b.contains("flag store"), "{b}");
    let r = call("GET", &f.url("/config/node01/install.cfg"), None, None);
    assert_eq!(r.status, 500);
    let tmp = f.dir.path().display().to_string();
    assert!(!r.body.contains(&tmp) && !r.body.contains("node01.json"), "{}", r.body);
    let h = call("GET", &f.url("/healthz"), None, None).body;
    assert!(!h.contains(&tmp) && !h.contains("nodes.csv"), "{h}");
    f.stop();
}

fn wait_generation(f: &Fixture, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let g = call("GET", &f.url("/healthz"), None, None).json()["generation"].as_u64().unwrap();
        if g > above {
            return;
        }
        assert!(Instant::now() < deadline, "no reload");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn generation(f: &Fixture) -> u64 {
    call("GET", &f.url("/healthz"), None, None).json()["generation"].as_u64().unwrap()
}

/// A flag outlived its host's removal from the inventory, vanished from `?flagged=1`, and the
/// old install resumed when the host came back.
#[test]
fn a_flag_of_a_removed_host_is_shown_and_never_resumes() {
    let mut f = start(false);
    let inv = f.config.inventory.clone().unwrap();
    let row = "node09,10.0.0.19/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:09,e2e,,,,,,,,,\n";
    let g = generation(&f);
    std::fs::write(&inv, format!("{INVENTORY}{row}")).unwrap();
    wait_generation(&f, g);
    flag(&f, "node09", "e2e");
    let chain = call("GET", &boot_url(&f.base, "node09", "aa:bb:cc:dd:ee:09", ""), None, None);
    assert!(chain.body.contains("install chain"));
    let g = generation(&f);
    std::fs::write(&inv, INVENTORY).unwrap();
    wait_generation(&f, g);
    // The sweep runs right after the reload: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let orphan = loop {
        let list = call("GET", &f.url("/hosts"), Some(READ_TOKEN), None).json();
        let found =
            list["orphans"].as_array().unwrap().iter().find(|h| h["hostname"] == "node09").cloned();
        match found {
            Some(o) if o["last_install"]["how"] == "removed-from-inventory" => break o,
            other => assert!(Instant::now() < deadline, "no orphan shown: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(orphan["in_inventory"], false, "{orphan}");
    assert!(audit_log(&f).contains("\"event\":\"flag-orphaned\""));
    let g = generation(&f);
    std::fs::write(&inv, format!("{INVENTORY}{row}")).unwrap();
    wait_generation(&f, g);
    let b = call("GET", &boot_url(&f.base, "node09", "aa:bb:cc:dd:ee:09", ""), None, None).body;
    assert!(is_local(&b), "re-adding the host must not resume its old install: {b}");
    assert_eq!(host(&f, "node09")["phase"], "idle");
    f.stop();
}

/// The tokens file was read at start-up only: a removed token kept working after a reload.
#[test]
fn removing_a_token_revokes_it_at_the_next_reload() {
    let mut f = start(false);
    assert_eq!(call("GET", &f.url("/hosts"), Some(READ_TOKEN), None).status, 200);
    let tokens = f.config.tokens_file.clone().unwrap();
    let kept = format!("ops reimage {}\nroot admin {}\n", sha(REIMAGE_TOKEN), sha(ADMIN_TOKEN));
    std::fs::write(&tokens, kept).unwrap();
    let r = call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(call("GET", &f.url("/hosts"), Some(READ_TOKEN), None).status, 401);
    assert_eq!(call("GET", &f.url("/hosts"), Some(REIMAGE_TOKEN), None).status, 200);
    f.stop();
}

/// A tokens file that cannot be loaded refuses every token (fails closed), and a broken
/// inventory edit does not delay a revocation.
#[test]
fn a_broken_tokens_file_fails_closed() {
    let mut f = start(false);
    let tokens = f.config.tokens_file.clone().unwrap();
    let inv = f.config.inventory.clone().unwrap();
    // A half-edited inventory and a revoked read token at once: the revocation still holds.
    std::fs::write(&inv, "hostname,ip\nbroken,not-an-ip\n").unwrap();
    let kept = format!("ops reimage {}\nroot admin {}\n", sha(REIMAGE_TOKEN), sha(ADMIN_TOKEN));
    std::fs::write(&tokens, kept).unwrap();
    let r = call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 422, "the inventory is broken: {}", r.body);
    assert_eq!(call("GET", &f.url("/hosts"), Some(READ_TOKEN), None).status, 401);
    // An unreadable tokens file refuses every token, until it is fixed.
    std::fs::write(&tokens, "this is not a tokens file\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while call("GET", &f.url("/hosts"), Some(ADMIN_TOKEN), None).status != 401 {
        assert!(Instant::now() < deadline, "the admin token still works");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = call("GET", &f.url("/hosts"), Some(ADMIN_TOKEN), None);
    assert!(r.json()["error"].as_str().unwrap().contains("tokens file"), "{}", r.body);
    std::fs::remove_file(&tokens).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call("GET", &f.url("/hosts"), Some(ADMIN_TOKEN), None).status, 401);
    std::fs::write(&tokens, format!("root admin {}\n", sha(ADMIN_TOKEN))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while call("GET", &f.url("/hosts"), Some(ADMIN_TOKEN), None).status == 401 {
        assert!(Instant::now() < deadline, "a fixed tokens file is not picked up");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.stop();
}

/// A valid but very long host name (253 characters) made `DELETE` answer 500: its state file
/// name does not fit. Such names cannot have state; the API says so.
#[test]
fn a_host_name_too_long_for_a_file_name_is_not_a_server_error() {
    let mut f = start(false);
    let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
    assert_eq!(long.len(), 253);
    for (method, path) in [
        ("DELETE", format!("/hosts/{long}/reimage")),
        ("PUT", format!("/hosts/{long}/reimage")),
        ("GET", format!("/hosts/{long}")),
    ] {
        let r = call(method, &f.url(&path), Some(ADMIN_TOKEN), None);
        assert!((400..500).contains(&r.status), "{method} {}: {}", r.status, r.body);
    }
    let r =
        call("POST", &f.url(&format!("/hosts/{long}/done?install={}", "0".repeat(32))), None, None);
    assert_eq!(r.status, 404);
    f.stop();
}

/// A client that shuts down its sending side after the request (`nc -N`) still gets its
/// answer (found by the hostile suite: the change was made, and no answer came).
#[test]
fn a_half_closed_client_gets_its_answer() {
    use std::io::{Read, Write};
    let mut f = start(false);
    let addr = f.base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(host(&f, "node01")["flagged"], true);
    f.stop();
}

/// The repeat window trusted the stored end time: a stamp a day ahead kept an install live.
#[test]
fn a_future_end_time_does_not_keep_a_window_open() {
    let mut f = start_with_first_answer_profile();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let ahead = now.as_millis() as u64 + 86_400_000;
    let state = format!(
        r#"{{"version":1,"updated_at":{ahead},"flag":null,"last_boot":null,
        "last_install":{{"id":"{}","profile":"e2e-once","opened_at":{ahead},"ended_at":{ahead},"how":"first-answer"}}}}"#,
        "1".repeat(32)
    );
    sql_on_state(
        &f.config.state_dir,
        &format!("INSERT INTO hosts (name, version, deciding, updated_ms, state) VALUES ('node01', 1, 1, {ahead}, '{state}')"),
    );
    std::thread::sleep(Duration::from_millis(300)); // the deciding set's rescan
    let b = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    assert!(is_local(&b), "{b}");
    assert_eq!(call("GET", &f.url("/config/node01/install.cfg"), None, None).status, 404);
    f.stop();
}

/// Free CSV columns reached `boot.ipxe` unescaped. Shipped profiles put them through the `ipxe`
/// filter, which refuses iPXE syntax: such a row fails the (re)load, naming it, and the old
/// inventory stays.
#[test]
fn ipxe_syntax_in_a_csv_column_is_refused_at_load() {
    let mut f = start(false);
    let inv = f.config.inventory.clone().unwrap();
    let bad = INVENTORY.replace(
        "rocky1,10.0.0.31/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:31,rocky,,sda,eno1,",
        "rocky1,10.0.0.31/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:31,rocky,,sda,eth0 ; shell ; #,",
    );
    assert_ne!(bad, INVENTORY);
    std::fs::write(&inv, bad).unwrap();
    let r = call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 422, "{}", r.body);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("nodes.csv:6 (rocky1)"), "{err}");
    assert!(!err.contains("shell"), "the error names the character, not the value: {err}");
    flag(&f, "rocky1", "rocky");
    let chain = call("GET", &boot_url(&f.base, "rocky1", "aa:bb:cc:dd:ee:31", ""), None, None);
    assert!(chain.body.contains(":eno1:none"), "{}", chain.body);
    f.stop();
}

/// `%2F` was decoded before the path was split, lower-case methods were accepted, and `HEAD`
/// on `done` ended an install.
#[test]
fn paths_split_before_decoding_and_methods_are_exact() {
    let mut f = start(false);
    let r = call("PUT", &f.url("/hosts/node01%2Freimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.status, 405, "{}", r.body);
    let r = call("GET", &f.url("/hosts/node01%2Freimage"), Some(READ_TOKEN), None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(call("put", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 405);
    assert_eq!(host(&f, "node01")["flagged"], false);
    flag(&f, "node01", "e2e");
    let chain = call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body;
    let id = install_id(&chain);
    let r = call("HEAD", &f.url(&format!("/hosts/node01/done?install={id}")), None, None);
    assert_eq!(r.status, 405);
    assert_eq!(call("HEAD", &boot_url(&f.base, "node01", MAC1, ""), None, None).status, 405);
    assert_eq!(host(&f, "node01")["flagged"], true, "HEAD changed nothing");
    assert_eq!(
        call("get", &f.url(&format!("/hosts/node01/done?install={id}")), None, None).status,
        405
    );
    assert_eq!(host(&f, "node01")["flagged"], true);
    f.stop();
}

/// A config fetched while the flag was pending rendered `done_url` with an empty install id.
#[test]
fn a_config_fetched_while_pending_carries_a_working_callback() {
    let mut f = start(false);
    flag(&f, "node01", "e2e");
    assert_eq!(host(&f, "node01")["phase"], "pending");
    let cfg = call("GET", &f.url("/config/node01/install.cfg"), None, None).body;
    let id = install_id(&cfg);
    assert_eq!(id.len(), 32, "{cfg}");
    assert_eq!(host(&f, "node01")["flag"]["install"]["id"], id.as_str());
    let r = call("POST", &f.url(&format!("/hosts/node01/done?install={id}")), None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(host(&f, "node01")["phase"], "done");
    f.stop();
}

/// `/healthz` (no token) showed absolute paths and CSV fragments; details moved to `/status`.
#[test]
fn details_are_for_authenticated_callers() {
    let mut f = start(false);
    let inv = f.config.inventory.clone().unwrap();
    std::fs::write(&inv, "hostname,ip\nbroken,not-an-ip\n").unwrap();
    call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    let h = call("GET", &f.url("/healthz"), None, None);
    assert_eq!(h.status, 200);
    let tmp = f.dir.path().display().to_string();
    assert!(!h.body.contains(&tmp) && !h.body.contains("not-an-ip"), "{}", h.body);
    assert_eq!(call("GET", &f.url("/status"), None, None).status, 401);
    let s = call("GET", &f.url("/status"), Some(READ_TOKEN), None).json();
    assert!(s["reload"]["last_error"].as_str().unwrap().contains("not-an-ip"), "{s}");
    f.stop();
}
