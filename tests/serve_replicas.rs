//! Replicas and failure (issue 15, section 3), against private PostgreSQL and MariaDB servers
//! (`serve_support::db`): `/healthz` while the database is down and back; a service that starts
//! while its database server is unreachable and recovers without a restart; PostgreSQL
//! `LISTEN/NOTIFY` between replicas (fast, and resynced after the listener loses its
//! connection); and the proofs of the issue: one install for 200 concurrent boots through two
//! replicas, `kill -9` of a replica mid-burst, and the database killed during a boot storm.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::{Config, Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::db::{Mariadb, Postgres};
use support::*;

/// Hosts of the test inventory: h000 … h199, profile e2e, no MAC.
const HOSTS: u32 = 200;
/// What a local boot for the database not answering says on the node's console.
const BUSY: &str = "did not decide in time (busy or unreachable)";
const NOT_FLAGGED: &str = "local boot: not flagged";

/// A folder with the inventory, profiles (plus `e2e-once`, a first-answer profile), tokens and
/// a node secret, shared by every replica of a test.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("hostname,ip,gateway,mac,profile\n");
    for i in 0..HOSTS {
        csv.push_str(&format!("h{i:03},10.1.{}.{}/16,10.1.0.1,,e2e\n", i / 200, i % 200 + 10));
    }
    std::fs::write(dir.path().join("nodes.csv"), csv).unwrap();
    let profiles = profiles_dir(dir.path());
    let once = profiles.join("e2e-once");
    copy_tree(&repo().join("tests/profiles/e2e"), &once);
    std::fs::write(
        once.join("profile.toml"),
        "clear = \"first-answer\"\nrepeat_window_secs = 600\n",
    )
    .unwrap();
    tokens_file(dir.path());
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    dir
}

/// A replica's configuration: the site's inputs, its own state folder, the database `url`.
fn config(site: &Path, url: &str, secret: bool) -> Config {
    let state = tempfile::tempdir().unwrap().keep();
    let mut c = Config::new(site.join("nodes.csv"), site.join("profiles"), state);
    c.listen = "127.0.0.1:0".into();
    c.tokens_file = Some(site.join("tokens"));
    c.database = Some(url.to_string());
    c.workers = 8;
    if secret {
        c.secret_file = Some(site.join("secret"));
    }
    c
}

struct Replica {
    server: Option<Server>,
    base: String,
}

impl Replica {
    fn start(site: &Path, url: &str, secret: bool) -> Replica {
        let server = Server::start(config(site, url, secret)).expect("the replica starts");
        let base = format!("http://{}", server.local_addr());
        Replica { server: Some(server), base }
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    fn boot(&self, host: &str) -> String {
        call("GET", &boot_url(&self.base, host, "", ""), None, None).body
    }
    fn flag(&self, host: &str, profile: &str) -> Resp {
        let body = format!(r#"{{"profile":"{profile}"}}"#);
        call("PUT", &self.url(&format!("/hosts/{host}/reimage")), Some(REIMAGE_TOKEN), Some(&body))
    }
    fn healthz(&self) -> Resp {
        call("GET", &self.url("/healthz"), None, None)
    }
    fn status(&self) -> serde_json::Value {
        call("GET", &self.url("/status"), Some(READ_TOKEN), None).json()
    }
    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every 20 ms until it holds; fails with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn login(r: &Replica) -> Resp {
    call_h(
        "POST",
        &r.url("/session"),
        None,
        Some(&format!(r#"{{"token":"{ADMIN_TOKEN}"}}"#)),
        &[("Content-Type", "application/json")],
    )
}

fn is_install(body: &str) -> bool {
    body.contains("install chain")
}

/// `/healthz` is 503 naming the database while it is down, 200 again once it is back; writes
/// and logins meanwhile are 503 with `Retry-After` at once; unflagged hosts are answered from
/// memory, flagged ones boot local with the reason; all without a restart.
fn healthz_follows(mut kill: impl FnMut(), mut restart: impl FnMut(), url: &str, engine: &str) {
    let site = site();
    let a = Replica::start(site.path(), url, false);
    let h = a.healthz();
    assert_eq!((h.status, h.json()["database"].as_str()), (200, Some("ok")), "{}", h.body);
    assert_eq!(a.status()["database"]["engine"], engine);
    assert_eq!(a.flag("h001", "e2e").status, 200);
    assert!(is_install(&a.boot("h001")));

    kill();
    wait_for("healthz says the database is down", Duration::from_secs(10), || {
        a.healthz().status == 503
    });
    let h = a.healthz();
    assert_eq!(h.json()["database"], "unreachable", "{}", h.body);
    assert!(h.header("Retry-After").is_some());
    assert!(!h.body.contains("127.0.0.1"), "healthz shows no detail: {}", h.body);
    let t = Instant::now();
    let w = a.flag("h002", "e2e");
    assert_eq!(w.status, 503, "{}", w.body);
    assert!(w.header("Retry-After").is_some());
    let l = login(&a);
    assert_eq!(l.status, 503, "{}", l.body);
    assert!(l.header("Retry-After").is_some());
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once, not after a timeout");
    assert!(a.boot("h002").contains(NOT_FLAGGED), "unflagged: answered from memory");
    let b = a.boot("h001");
    assert!(!is_install(&b) && b.contains(BUSY), "flagged: local with the reason: {b}");
    let st = a.status();
    assert_eq!(st["database"]["up"], false);
    assert!(st["database"]["last_error"].is_string(), "{st}");

    restart();
    wait_for("healthz is 200 again", Duration::from_secs(20), || a.healthz().status == 200);
    assert_eq!(a.flag("h002", "e2e").status, 200);
    assert_eq!(login(&a).status, 200);
    assert!(is_install(&a.boot("h001")), "the flag set before the outage still stands");
    assert!(is_install(&a.boot("h002")));
}

#[test]
fn healthz_says_when_postgres_is_down_and_recovers() {
    let pg = std::cell::RefCell::new(Postgres::start());
    let url = pg.borrow().url();
    healthz_follows(|| pg.borrow_mut().kill(), || pg.borrow_mut().start_again(), &url, "postgres");
}

#[test]
fn healthz_says_when_mariadb_is_down_and_recovers() {
    let db = std::cell::RefCell::new(Mariadb::start());
    let url = db.borrow().url();
    healthz_follows(|| db.borrow_mut().kill(), || db.borrow_mut().start_again(), &url, "mysql");
}

/// The service starts while its PostgreSQL server is unreachable, answers every boot local
/// (no install chain without a committed row), writes and logins 503, and once the server
/// answers, migrates and serves without a restart.
#[test]
fn starts_while_postgres_is_unreachable_and_recovers() {
    let mut pg = Postgres::start();
    let url = pg.url();
    // A first replica migrates and flags h001, so the database holds a flag the second one
    // cannot know about while it is down.
    {
        let mut first = Replica::start(site().path(), &url, false);
        assert_eq!(first.flag("h001", "e2e").status, 200);
        first.stop();
    }
    pg.kill();
    let site = site();
    let started = Instant::now();
    let a = Replica::start(site.path(), &url, false);
    assert!(started.elapsed() < Duration::from_secs(10), "started at once");
    assert_eq!(a.healthz().status, 503);
    for host in ["h001", "h002"] {
        let b = a.boot(host);
        assert!(!is_install(&b) && b.contains(BUSY), "{host}: {b}");
    }
    let w = a.flag("h003", "e2e");
    assert_eq!((w.status, w.header("Retry-After").is_some()), (503, true), "{}", w.body);
    assert_eq!(login(&a).status, 503);

    pg.start_again();
    wait_for("the replica follows the database back", Duration::from_secs(20), || {
        a.healthz().status == 200
    });
    assert!(is_install(&a.boot("h001")), "the flag in the database decides");
    assert!(a.boot("h002").contains(NOT_FLAGGED));
    assert_eq!(a.flag("h003", "e2e").status, 200);
    assert!(is_install(&a.boot("h003")));
}

/// A fresh database (never migrated) that is down at start is migrated when it answers.
#[test]
fn starts_before_mariadb_exists_and_migrates_when_it_answers() {
    let mut db = Mariadb::start();
    let url = db.url();
    db.kill();
    let site = site();
    let a = Replica::start(site.path(), &url, false);
    assert_eq!(a.healthz().status, 503);
    db.start_again();
    wait_for("migrated and up", Duration::from_secs(20), || a.healthz().status == 200);
    assert_eq!(a.flag("h004", "e2e").status, 200);
    assert!(is_install(&a.boot("h004")));
}

/// SQLite is local: a real error there still fails the start, at once.
#[test]
fn sqlite_still_fails_at_start_on_a_real_error() {
    let site = site();
    let file = site.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let url = bootforge::serve::store::sqlite_url(&file.join("state.db"));
    let err = Server::start(config(site.path(), &url, false)).err().expect("refused").to_string();
    assert!(err.contains("not-a-folder"), "{err}");
}

/// A wrong password is a configuration error, not an outage: the start fails, naming it.
#[test]
fn a_wrong_password_fails_the_start() {
    let pg = Postgres::start();
    let url = pg.url().replace(pg.password(), "wrong-password");
    let err = Server::start(config(site().path(), &url, false)).err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("password"), "{text}");
    assert!(!text.contains("wrong-password"), "no password in the message: {text}");
}

/// How long after A acknowledged a flag B first answers that host's boot with the install
/// chain.
fn seen_after(a: &Replica, b: &Replica, host: &str) -> Duration {
    assert_eq!(a.flag(host, "e2e").status, 200);
    let acked = Instant::now();
    // No pause between tries: the time measured is B's, not this loop's.
    while !is_install(&b.boot(host)) {
        assert!(acked.elapsed() < Duration::from_secs(5), "B never answered {host}'s install");
    }
    acked.elapsed()
}

/// Rows of `hosts` written behind the service's back (no NOTIFY): only a full read finds them.
fn plant_flag(pg: &Postgres, host: &str, like: &str) {
    pg.sql(&format!(
        "INSERT INTO hosts (name, version, deciding, updated_ms, state) \
         SELECT '{host}', version, 1, updated_ms, state FROM hosts WHERE name = '{like}'"
    ));
}

/// A flag set through replica A is decided by replica B within milliseconds (notified, not
/// found by a poll); after the listener loses its connection, B reads everything again.
#[test]
fn postgres_notifies_other_replicas_at_once_and_resyncs_after_listener_loss() {
    let mut pg = Postgres::start();
    let site = site();
    let a = Replica::start(site.path(), &pg.url(), false);
    let b = Replica::start(site.path(), &pg.url(), false);
    wait_for("B listens", Duration::from_secs(10), || b.status()["database"]["listening"] == true);

    // A flag written behind both replicas' backs (a copy of h009's row) sends no notification:
    // with its listener connected B does not poll (a full read only every 30 s), so it must not
    // see this one until the listener reconnects (below). Polling every 100 ms would find it.
    assert_eq!(a.flag("h009", "e2e").status, 200);
    plant_flag(&pg, "h030", "h009");
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.boot("h030").contains(NOT_FLAGGED), "B polled: it found a flag nobody notified");

    let mut times: Vec<Duration> =
        (10..25).map(|i| seen_after(&a, &b, &format!("h{i:03}"))).collect();
    times.sort();
    let median = times[times.len() / 2];
    eprintln!("B decided A's flags after {times:?} (median {median:?})");
    // Notified: a few milliseconds on an idle machine (the HTTP round trips of a loaded one
    // can add much more, hence the generous bound); that no poll did it, the planted flag
    // above shows.
    assert!(times.iter().all(|t| *t < Duration::from_secs(3)), "{times:?}");
    // ...until the listener loses its connection: B then reads every flagged host again.
    let ended =
        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'");
    assert_eq!(ended.trim(), "t\nt", "both replicas' listeners were connected");
    wait_for("B resyncs after the listener's loss", Duration::from_secs(10), || {
        is_install(&b.boot("h030"))
    });

    // The database killed and started again: B's listener reconnects and resyncs (a flag
    // planted while it was away is found), then notifications are fast again.
    pg.kill();
    pg.start_again();
    plant_flag(&pg, "h031", "h009");
    wait_for("B resyncs after the restart", Duration::from_secs(20), || {
        b.healthz().status == 200 && is_install(&b.boot("h031"))
    });
    wait_for("B listens again, A is up again", Duration::from_secs(20), || {
        b.status()["database"]["listening"] == true && a.healthz().status == 200
    });
    let t = seen_after(&a, &b, "h032");
    assert!(t < Duration::from_secs(3), "notified again after the restart: {t:?}");
}

/// 200 concurrent verified boots (node tokens on) of one flagged first-answer host, through two
/// replicas on one PostgreSQL: exactly one install opened, one audit record of it, and every
/// install chain names that install.
#[test]
fn two_hundred_concurrent_boots_through_two_replicas_open_one_install() {
    let pg = Postgres::start();
    let site = site();
    let a = Replica::start(site.path(), &pg.url(), true);
    let b = Replica::start(site.path(), &pg.url(), true);
    assert_eq!(a.flag("h050", "e2e-once").status, 200);
    wait_for("B knows the flag", Duration::from_secs(5), || {
        b.status()["database"]["listening"] == true
    });
    let secret = bootforge::token::Secret::new(SECRET.to_vec()).unwrap();
    let token = secret.node_token("h050");
    let go = Arc::new(Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let base = if i % 2 == 0 { a.base.clone() } else { b.base.clone() };
            let (go, token) = (go.clone(), token.clone());
            std::thread::spawn(move || {
                go.wait();
                let r = call(
                    "GET",
                    &boot_url(&base, "h050", "", &format!("&token={token}")),
                    None,
                    None,
                );
                assert_eq!(r.status, 200);
                r.body
            })
        })
        .collect();
    let bodies: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ids: std::collections::HashSet<String> =
        bodies.iter().filter(|b| is_install(b)).map(|b| install_id(b)).collect();
    let installs = bodies.iter().filter(|b| is_install(b)).count();
    let busy = bodies.iter().filter(|b| b.contains(BUSY)).count();
    eprintln!("{installs} install chains, {busy} busy, ids {ids:?}");
    assert_eq!(ids.len(), 1, "one install, whichever replica answered: {ids:?}");
    assert!(installs > 0);
    // The row was written twice (the flag, the first answer) whatever the 200 boots did.
    let version = pg.sql("SELECT version FROM hosts WHERE name = 'h050'");
    assert_eq!(version.trim(), "2");
    let log = bootforge::serve::store::audit::dump(&pg.url()).unwrap();
    let opened = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "boot" && r["host"] == "h050" && r["kind"] == "first-answer")
        .collect::<Vec<_>>();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["install"].as_str(), ids.iter().next().map(String::as_str));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real binary, a replica on `url`.
fn spawn_binary(site: &Path, url: &str, port: u16) -> (Child, PathBuf) {
    spawn_binary_with_clock(site, url, port, None)
}

/// [`spawn_binary`], its wall clock moved by `shift` (libfaketime's relative form, e.g. `-8`
/// for eight seconds behind; its monotonic clock, which timers use, left alone).
fn spawn_binary_with_clock(
    site: &Path,
    url: &str,
    port: u16,
    shift: Option<&str>,
) -> (Child, PathBuf) {
    let state = tempfile::tempdir().unwrap().keep();
    let mut cmd = match shift {
        None => Command::new(env!("CARGO_BIN_EXE_bootforge")),
        Some(shift) => {
            support::sushy::require("faketime", "faketime");
            let mut c = Command::new("faketime");
            c.args(["-f", shift, env!("CARGO_BIN_EXE_bootforge")])
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            c
        }
    };
    let mut child = cmd
        .args(["serve", "--inventory"])
        .arg(site.join("nodes.csv"))
        .arg("--profiles")
        .arg(site.join("profiles"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--tokens-file")
        .arg(site.join("tokens"))
        .args(["--database", url, "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bootforge binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("bootforge serve did not start on port {port}");
}

/// `kill -9` of a replica (the real binary) in the middle of a burst of flag changes (each host
/// flagged again and again, its profile alternating, so every call writes): every change it
/// acknowledged is in PostgreSQL with its audit record, as the other replica shows.
#[test]
fn kill_9_of_a_replica_mid_burst_loses_no_acknowledged_change() {
    let pg = Postgres::start();
    let site = site();
    let port = free_port();
    let (mut child, _) = spawn_binary(site.path(), &pg.url(), port);
    let other = Replica::start(site.path(), &pg.url(), false);
    let base = format!("http://127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                // The newest acknowledged version of each host.
                let mut acked = std::collections::HashMap::new();
                let mut failed = 0;
                for round in 0.. {
                    let profile = if round % 2 == 0 { "e2e" } else { "rocky" };
                    for i in (c..HOSTS).step_by(4) {
                        if stop.load(Ordering::Relaxed) || failed > 3 {
                            return acked;
                        }
                        let host = format!("h{i:03}");
                        let r = agent
                            .put(&format!("{base}/hosts/{host}/reimage"))
                            .set("Authorization", &format!("Bearer {REIMAGE_TOKEN}"))
                            .send_string(&format!(r#"{{"profile":"{profile}"}}"#));
                        match r {
                            Ok(resp) if resp.status() == 200 => {
                                let v: serde_json::Value =
                                    serde_json::from_str(&resp.into_string().unwrap()).unwrap();
                                acked.insert(host, v["version"].as_u64().unwrap());
                            }
                            _ => failed += 1,
                        }
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, u64)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let writes: u64 = acked.iter().map(|(_, v)| v).sum();
    assert!(acked.len() == HOSTS as usize && writes > HOSTS as u64, "a burst: {writes} writes");
    // Versions and records from one statement (one snapshot): a COMMIT the killed replica sent
    // just before dying may still be applied by the server after the kill.
    let rows = pg.sql(
        "SELECT h.name, h.version, (SELECT count(*) FROM audit a WHERE a.host = h.name \
         AND a.event = 'flag-set' AND a.record LIKE '%\"changed\":true%') FROM hosts h",
    );
    let stored: std::collections::HashMap<String, (u64, u64)> = rows
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0].to_string(), (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect();
    for (host, version) in &acked {
        let (v, records) = stored[host];
        assert!(v >= *version, "{host}: version {version} was acknowledged, {v} stored");
        assert_eq!(records, v, "{host}: one record per write");
        let r = call("GET", &other.url(&format!("/hosts/{host}")), Some(READ_TOKEN), None).json();
        assert!(r["version"].as_u64().unwrap() >= *version, "{host}: {r}");
        assert_eq!(r["flagged"].as_bool(), Some(true), "{host}");
    }
    eprintln!("{writes} acknowledged changes survived kill -9 of their replica");
}

/// PostgreSQL killed and started again during a boot storm through two replicas: unflagged
/// hosts get no error at all (answered from memory), every install chain handed out belongs to
/// an install committed in the database, and both replicas recover without a restart.
#[test]
fn postgres_killed_during_a_boot_storm() {
    let mut pg = Postgres::start();
    let site = site();
    let a = Replica::start(site.path(), &pg.url(), false);
    let b = Replica::start(site.path(), &pg.url(), false);
    let flagged: Vec<String> = (190..HOSTS).map(|i| format!("h{i:03}")).collect();
    for h in &flagged {
        assert_eq!(a.flag(h, "e2e").status, 200);
    }
    wait_for("B knows the flags", Duration::from_secs(5), || {
        flagged.iter().all(|h| is_install(&b.boot(h)))
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the storm however this test ends (a failed wait must not leave it running).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_storm = StopOnDrop(stop.clone());
    let storm: Vec<_> = (0..8)
        .map(|t| {
            let base = if t % 2 == 0 { a.base.clone() } else { b.base.clone() };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                let (mut unflagged, mut errors, mut chains) = (0u64, Vec::new(), Vec::new());
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let n = i % HOSTS;
                    let host = format!("h{n:03}");
                    i += 8;
                    let r = agent.get(&boot_url(&base, &host, "", "")).call();
                    let body = match r {
                        Ok(r) if r.status() == 200 => r.into_string().unwrap_or_default(),
                        other => {
                            errors.push(format!("{host}: {other:?}"));
                            continue;
                        }
                    };
                    if n < 190 {
                        if !body.contains(NOT_FLAGGED) {
                            errors.push(format!("{host}: {body}"));
                        }
                        unflagged += 1;
                    } else if is_install(&body) {
                        chains.push(install_id(&body));
                    }
                }
                (unflagged, errors, chains)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    pg.kill();
    wait_for("the replicas see the outage", Duration::from_secs(10), || {
        a.healthz().status == 503 && b.healthz().status == 503
    });
    std::thread::sleep(Duration::from_millis(1000));
    pg.start_again();
    wait_for("both recover without a restart", Duration::from_secs(20), || {
        a.healthz().status == 200 && b.healthz().status == 200
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut unflagged, mut errors, mut chains) = (0, Vec::new(), Vec::new());
    for t in storm {
        let (u, e, c) = t.join().unwrap();
        unflagged += u;
        errors.extend(e);
        chains.extend(c);
    }
    eprintln!("{unflagged} unflagged boots, {} install chains", chains.len());
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert!(unflagged > 500, "a storm: {unflagged}");
    // Every install chain's install is committed: its row names it.
    let committed = pg.sql("SELECT state FROM hosts WHERE deciding = 1");
    for id in &chains {
        assert!(committed.contains(id.as_str()), "install {id} was handed out but is not stored");
    }
    // Recovered: writes and flagged boots work on both.
    assert_eq!(b.flag("h100", "e2e").status, 200);
    wait_for("A decides B's new flag", Duration::from_secs(5), || is_install(&a.boot("h100")));
}

impl Replica {
    /// A replica that takes its inventory from the database (`serve` without `--inventory`).
    fn start_on_database_inventory(site: &Path, url: &str) -> Replica {
        let mut c = config(site, url, false);
        c.inventory = None;
        let server = Server::start(c).expect("the replica starts");
        let base = format!("http://{}", server.local_addr());
        Replica { server: Some(server), base }
    }
    fn inventory(&self) -> serde_json::Value {
        let r = call("GET", &self.url("/inventory"), Some(ADMIN_TOKEN), None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
    fn host_status(&self, host: &str) -> u16 {
        call("GET", &self.url(&format!("/hosts/{host}")), Some(READ_TOKEN), None).status
    }
}

/// The inventory in PostgreSQL (`serve` without `--inventory`): replicas started on an empty
/// database know no host; a CSV uploaded through A is served by B; a row added through B is
/// served by A within a second (NOTIFY); an edit against a stale version is refused (409) on
/// either, changing nothing. A replica started with `--inventory FILE` on the same database
/// keeps serving its file, and still refuses console edits.
#[test]
fn postgres_inventory_edited_through_one_replica_is_served_by_the_other() {
    let pg = Postgres::start();
    inventory_edited_through_one_replica_is_served_by_the_other(&pg.url());
}

/// The same on MariaDB, where replicas follow the inventory's version by a query per poll.
#[test]
fn mariadb_inventory_edited_through_one_replica_is_served_by_the_other() {
    let db = Mariadb::start();
    inventory_edited_through_one_replica_is_served_by_the_other(&db.url());
}

fn inventory_edited_through_one_replica_is_served_by_the_other(url: &str) {
    let url = url.to_string();
    let site = site();
    let a = Replica::start_on_database_inventory(site.path(), &url);
    let b = Replica::start_on_database_inventory(site.path(), &url);
    assert_eq!(a.host_status("h001"), 404, "an empty database inventory: no hosts");
    let inv = b.inventory();
    assert_eq!((inv["version"].as_str(), inv["source"].as_str()), (Some("0"), Some("database")));
    assert_eq!(inv["rows"].as_array().map(Vec::len), Some(0));

    // A whole upload through A, against version 0.
    let csv = std::fs::read_to_string(site.path().join("nodes.csv")).unwrap();
    let r = call("PUT", &a.url("/inventory?version=0"), Some(ADMIN_TOKEN), Some(&csv));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "1");
    assert_eq!(a.host_status("h001"), 200, "the writer reloads at once");
    let t = Instant::now();
    wait_for("B serves the uploaded inventory", Duration::from_secs(10), || {
        b.host_status("h199") == 200
    });
    eprintln!("B served the upload after {:?}", t.elapsed());

    // A row added through B, against B's version.
    let version = b.inventory()["version"].as_str().unwrap().to_string();
    assert_eq!(version, "1");
    let body = format!(
        r#"{{"fields": {{"hostname": "new-node", "ip": "10.1.9.9/16", "profile": "e2e"}}, "version": "{version}"}}"#
    );
    let r = call("POST", &b.url("/inventory/hosts"), Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "2");
    let t = Instant::now();
    wait_for("A serves the host added through B", Duration::from_secs(10), || {
        a.host_status("new-node") == 200
    });
    eprintln!("A served the added row after {:?}", t.elapsed());
    assert_eq!(a.flag("new-node", "e2e").status, 200, "and flags it");
    wait_for("B answers the new host's boot with its install", Duration::from_secs(10), || {
        is_install(&b.boot("new-node"))
    });

    // A's form was filled at version 1: its edit is refused, and nothing changes.
    let stale = r#"{"fields": {"ip": "10.1.9.10/16"}, "version": "1"}"#;
    let r = call("PUT", &a.url("/inventory/hosts/h002"), Some(ADMIN_TOKEN), Some(stale));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call("PUT", &b.url("/inventory?version=1"), Some(ADMIN_TOKEN), Some(&csv));
    assert_eq!(r.status, 409, "{}", r.body);
    let inv = a.inventory();
    assert_eq!(inv["version"], "2");
    let rows = inv["rows"].as_array().unwrap();
    assert_eq!(rows.len(), HOSTS as usize + 1);
    assert_eq!(rows[2]["fields"]["ip"], "10.1.0.12/16", "h002 unchanged");
    assert_eq!(rows.last().unwrap()["fields"]["hostname"], "new-node");
    // An invalid edit: 422 with its line and column, nothing changes.
    let bad = r#"{"fields": {"ip": "10.1.9.300/16"}, "version": "2"}"#;
    let r = call("PUT", &b.url("/inventory/hosts/h002"), Some(ADMIN_TOKEN), Some(bad));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["errors"][0]["column"], "ip");
    assert_eq!(a.inventory()["version"], "2");

    // The edits are audited once each, as the console's callers, with the version they made.
    let r = call("GET", &b.url("/events?event=inventory-changed"), Some(READ_TOKEN), None);
    let records = r.json()["events"].as_array().unwrap().clone();
    let mut made: Vec<_> = records
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["version"].as_u64().unwrap()))
        .collect();
    made.sort_by_key(|m| m.1);
    assert_eq!(made, [("upload".to_string(), 1), ("add".to_string(), 2)], "{}", r.body);

    // A replica with --inventory on the same database serves its file, not the database's.
    let c = Replica::start(site.path(), &url, false);
    assert_eq!(c.host_status("h001"), 200);
    let script = c.boot("new-node");
    assert!(script.contains("not in the inventory"), "the file is its inventory: {script}");
    let r = call("POST", &c.url("/inventory/hosts"), Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 409, "file edits stay refused on a shared database: {}", r.body);
    assert_eq!(a.inventory()["version"], "2");
}

/// TLS to PostgreSQL as docs/REPLICAS.md sets it up: `sslmode=verify-full` with the site's CA
/// file. The server accepts TCP connections only over TLS (`hostssl`), so two replicas that
/// start, flag and notify each other spoke TLS on every connection, the listener's included. A
/// certificate from another CA, and a name the certificate does not carry, fail the start with
/// an error that says so (a configuration error, not an outage to wait out).
#[test]
fn postgres_over_tls_with_verify_full() {
    let site_ca = support::sushy::Ca::new();
    let other_ca = support::sushy::Ca::new();
    let mut pg = Postgres::start();
    pg.require_tls(&site_ca.server_cert, &site_ca.server_key);
    let with_ca =
        |ca: &Path| format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), ca.display());

    // Without TLS the server refuses the connection, which is what proves the rest spoke it.
    let plain = format!("{}?sslmode=disable", pg.url());
    let err = Server::start(config(site().path(), &plain, false)).err().expect("refused");
    assert!(err.to_string().contains("no encryption"), "{err}");

    let site = site();
    let url = with_ca(&site_ca.ca_cert);
    let a = Replica::start(site.path(), &url, false);
    let b = Replica::start(site.path(), &url, false);
    wait_for("B listens over TLS", Duration::from_secs(10), || {
        b.status()["database"]["listening"] == true
    });
    let t = seen_after(&a, &b, "h040");
    assert!(t < Duration::from_secs(3), "notified over TLS: {t:?}");
    let ssl = pg.sql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'bootforge' AND s.ssl");
    assert!(ssl.trim().parse::<u32>().unwrap() >= 2, "replicas' connections over TLS: {ssl}");

    for (bad, says) in [
        (with_ca(&other_ca.ca_cert), "BadSignature"),
        (with_ca(&site_ca.ca_cert).replace("127.0.0.1", "localhost"), "not valid for name"),
    ] {
        let text = match Server::start(config(site.path(), &bad, false)) {
            Ok(_) => panic!("{bad}: the replica started"),
            Err(e) => format!("{e:#}"),
        };
        eprintln!("refused: {text}");
        assert!(text.contains("certificate") && text.contains(says), "{bad}: {text}");
        assert!(!text.contains(pg.password()), "no password in the message: {text}");
    }
}

/// Times that decide windows come from the database's clock on every replica, not the
/// machine's: replica B runs with its wall clock 8 s behind (libfaketime). A first-answer
/// install with a 10 s repeat window, answered through A, must be over for B too once the
/// database says 10 s have passed; by its own clock B would still be 2 s inside the window and
/// answer the install chain again (it did before B measured the database's clock).
#[test]
fn replicas_decide_windows_by_the_database_clock() {
    let pg = Postgres::start();
    let site = site();
    let brief = site.path().join("profiles/e2e-brief");
    copy_tree(&repo().join("tests/profiles/e2e"), &brief);
    std::fs::write(
        brief.join("profile.toml"),
        "clear = \"first-answer\"\nrepeat_window_secs = 10\n",
    )
    .unwrap();
    let a = Replica::start(site.path(), &pg.url(), false);
    let port = free_port();
    let (mut child, _) = spawn_binary_with_clock(site.path(), &pg.url(), port, Some("-8"));
    let b = format!("http://127.0.0.1:{port}");
    let b_boot = |host: &str| call("GET", &boot_url(&b, host, "", ""), None, None).body;
    wait_for("B is up", Duration::from_secs(20), || {
        call("GET", &format!("{b}/healthz"), None, None).status == 200
    });
    // The health monitor reads the database's clock at once, then every second.
    std::thread::sleep(Duration::from_secs(2));

    assert_eq!(a.flag("h060", "e2e-brief").status, 200);
    let answered = Instant::now();
    assert!(is_install(&a.boot("h060")), "A opens the install");
    let inside = b_boot("h060");
    assert!(is_install(&inside), "inside the window B answers the install again: {inside}");
    std::thread::sleep(Duration::from_millis(11_500).saturating_sub(answered.elapsed()));
    let after = b_boot("h060");
    assert!(
        after.contains(NOT_FLAGGED),
        "the window is over by the database's clock, B must boot local: {after}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// On PostgreSQL the wait can come after a boot's decision is made: here the host's row is
/// locked by another session for 4 s, so the decision's UPDATE waits past the 3 s deadline and
/// the node boots its disk. The transaction must then roll back, not commit a first-answer
/// install "opened and ended" for a node that never got the chain: the flag stays set.
#[test]
fn a_boot_decision_past_the_deadline_is_rolled_back_on_postgres() {
    let pg = Postgres::start();
    let site = site();
    let a = Replica::start(site.path(), &pg.url(), false);
    assert_eq!(a.flag("h070", "e2e-once").status, 200);
    std::thread::scope(|s| {
        s.spawn(|| {
            pg.sql(
                "BEGIN; SELECT name FROM hosts WHERE name = 'h070' FOR UPDATE; \
                 SELECT pg_sleep(4); COMMIT;",
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let body = a.boot("h070");
        assert!(body.contains(BUSY), "past the deadline the node boots its disk: {body}");
    });
    std::thread::sleep(Duration::from_secs(1));
    let h = call("GET", &a.url("/hosts/h070"), Some(READ_TOKEN), None).json();
    assert_eq!(h["flagged"], true, "the late decision was not committed: {h}");
    assert!(h["flag"]["install"]["opened_at"].is_null(), "no install opened: {h}");
    assert!(is_install(&a.boot("h070")), "the next boot gets the chain");
}
