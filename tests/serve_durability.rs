//! Durability and replicas: the real binary is killed with SIGKILL in the middle of a burst of
//! flag changes, and every change it acknowledged must survive the restart; two replicas on one
//! PostgreSQL (and on one MariaDB) must agree; a second service on one SQLite file is refused.

#[path = "serve_support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// 200 hosts, all with the e2e profile.
fn big_inventory() -> String {
    let mut s = String::from("hostname,ip,gateway,mac,profile\n");
    for i in 0..200u32 {
        s.push_str(&format!("h{i:03},10.1.{}.{}/16,10.1.0.1,,e2e\n", i / 200, i % 200 + 10));
    }
    s
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["serve", "--inventory"])
        .arg(dir.join("nodes.csv"))
        .arg("--profiles")
        .arg(dir.join("profiles"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--tokens-file")
        .arg(dir.join("tokens"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bootforge binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("bootforge serve did not start on port {port}");
}

#[test]
fn sigkill_during_a_burst_loses_no_acknowledged_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nodes.csv"), big_inventory()).unwrap();
    profiles_dir(dir.path());
    tokens_file(dir.path());
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");

    // Four clients flag hosts as fast as they can; each remembers what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                let mut acked = Vec::new();
                for i in (c..200).step_by(4) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let host = format!("h{i:03}");
                    let r = agent
                        .put(&format!("{base}/hosts/{host}/reimage"))
                        .set("Authorization", &format!("Bearer {REIMAGE_TOKEN}"))
                        .call();
                    if let Ok(resp) = r {
                        if resp.status() == 200 {
                            acked.push(host);
                        }
                    }
                }
                acked
            })
        })
        .collect();
    // Kill it while the burst runs.
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(
        !acked.is_empty(),
        "the burst should have had some acknowledged changes before the kill"
    );

    let port2 = free_port();
    let mut child2 = spawn(dir.path(), port2);
    let base2 = format!("http://127.0.0.1:{port2}");
    for host in &acked {
        let r = call("GET", &format!("{base2}/hosts/{host}"), Some(READ_TOKEN), None);
        assert_eq!(r.json()["flagged"].as_bool(), Some(true), "{host} was acknowledged but lost");
    }
    // No torn state file: every host answers with valid JSON.
    let all = call("GET", &format!("{base2}/hosts"), Some(READ_TOKEN), None);
    assert_eq!(all.status, 200, "{}", all.body);
    eprintln!("{} acknowledged flags survived SIGKILL", acked.len());
    let _ = child2.kill();
    let _ = child2.wait();
}

#[test]
fn a_second_service_on_one_sqlite_file_is_refused_at_once() {
    let mut a = start(false);
    let mut config = a.config.clone();
    config.listen = "127.0.0.1:0".into();
    let started = Instant::now();
    let err = bootforge::serve::Server::start(config).err().expect("refused").to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after a wait");
    assert!(err.contains("in use by another bootforge process"), "{err}");
    assert!(err.contains("PostgreSQL"), "the message points at replicas done right: {err}");
    // The first one is untouched.
    assert_eq!(call("PUT", &a.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    a.stop();
}

#[test]
fn two_replicas_on_one_postgres_agree() {
    let pg = support::db::Postgres::start();
    replicas_agree(&pg.url());
}

#[test]
fn two_replicas_on_one_mariadb_agree() {
    let db = support::db::Mariadb::start();
    replicas_agree(&db.url());
}

/// Two services, each with its own state folder, on the database at `url`.
fn replicas_agree(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.database = Some(url.to_string());
    let mut a = start_with(dir, config);
    let other = tempfile::tempdir().unwrap();
    let mut config = a.config.clone();
    config.listen = "127.0.0.1:0".into();
    config.state_dir = other.path().join("state");
    let b = bootforge::serve::Server::start(config).unwrap();
    let bbase = format!("http://{}", b.local_addr());

    // Each replica reads its own inventory file: the console does not edit it (it would change
    // one replica's copy only).
    let r = call("DELETE", &a.url("/inventory/hosts/node02"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("replicas"), "{}", r.body);

    // Set on one, read on the other.
    assert_eq!(call("PUT", &a.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    let seen = call("GET", &format!("{bbase}/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(seen["flagged"].as_bool(), Some(true));
    // Boot through B opens the install; a second boot through A continues the same install.
    // B learns of A's flag at its next look at the database (every 100 ms); until then it may
    // only err towards a local boot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let chain_b = loop {
        let body =
            call("GET", &boot_url(&bbase, "node01", "aa:bb:cc:dd:ee:01", ""), None, None).body;
        if body.contains("install chain") {
            break body;
        }
        assert!(body.contains("local boot: not flagged"), "{body}");
        assert!(std::time::Instant::now() < deadline, "B never saw A's flag");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let id_b = install_id(&chain_b);
    let id_a = install_id(
        &call("GET", &boot_url(&a.base, "node01", "aa:bb:cc:dd:ee:01", ""), None, None).body,
    );
    assert_eq!(id_a, id_b);
    // Done through A, B boots local.
    assert_eq!(
        call("POST", &a.url(&format!("/hosts/node01/done?install={id_a}")), None, None).status,
        200
    );
    let body = call("GET", &boot_url(&bbase, "node01", "aa:bb:cc:dd:ee:01", ""), None, None).body;
    assert!(body.contains("local boot"), "{body}");
    // Both replicas report that last boot (answered by B) alike. Boot records reach the
    // database through B's writer thread after the answer went out (a boot never waits for
    // the log), so A may see it a moment later: wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let (va, vb) = loop {
        let va = call("GET", &a.url("/hosts/node01"), Some(READ_TOKEN), None).json();
        let vb = call("GET", &format!("{bbase}/hosts/node01"), Some(READ_TOKEN), None).json();
        // Equal, not only both local: the install chain's wait loop above may have left
        // earlier local boots (answered before B saw the flag) for A to show a moment longer.
        if va["last_boot"]["answer"] == "local" && va["last_boot"] == vb["last_boot"] {
            break (va, vb);
        }
        assert!(std::time::Instant::now() < deadline, "A never saw B's boot: {va}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(va["last_boot"], vb["last_boot"]);

    // Concurrent conflicting changes (set/cancel/set with another profile) through both
    // instances: the end state is one of the written states, the version counts every write,
    // and both instances report the same.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 { a.base.clone() } else { bbase.clone() };
            std::thread::spawn(move || {
                for j in 0..10 {
                    let url = format!("{base}/hosts/node02/reimage");
                    match (i + j) % 3 {
                        0 => call("PUT", &url, Some(REIMAGE_TOKEN), Some(r#"{"profile":"rocky"}"#)),
                        1 => call("PUT", &url, Some(REIMAGE_TOKEN), Some(r#"{"profile":"e2e"}"#)),
                        _ => call("DELETE", &url, Some(REIMAGE_TOKEN), None),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let va = call("GET", &a.url("/hosts/node02"), Some(READ_TOKEN), None).json();
    let vb = call("GET", &format!("{bbase}/hosts/node02"), Some(READ_TOKEN), None).json();
    assert_eq!(va["version"], vb["version"]);
    assert_eq!(va["flag"], vb["flag"]);
    assert_eq!(va["phase"], vb["phase"]);
    let flagged = va["flagged"].as_bool().unwrap();
    assert_eq!(flagged, va["phase"] == "pending", "{va}");
    // The audit log holds every change of node02 made through either replica: as many
    // `flag-set`/`flag-cancelled` records that changed something as versions.
    b.shutdown();
    a.stop();
    let log = bootforge::serve::store::audit::dump(url).unwrap();
    let changes = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["host"] == "node02")
        .filter(|r| {
            (r["event"] == "flag-set" && r["changed"] == true)
                || (r["event"] == "flag-cancelled" && r["outcome"] != "nothing-to-cancel")
        })
        .count();
    assert_eq!(changes as u64, va["version"].as_u64().unwrap(), "one record per write");
}
