//! How `serve` follows the database's inventory when a version cannot be used: one its checks
//! refuse (at start: it starts with no hosts and says why; later: it keeps what it serves), a
//! read that fails on the database (tried again, not dropped), a forged `NOTIFY` (a wake-up, not
//! a version), and MariaDB's snapshot read under a READ-COMMITTED server.

#[path = "serve_support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::db::{Mariadb, Postgres};
use support::*;

/// Rows without a `server` column: fine for a service with a URL of its own, refused by one
/// without (listening on every address, no `--public-url`).
const NO_SERVER: &str = "hostname,ip\nn1,10.0.0.11/24\nn2,10.0.0.12/24\n";
/// The same nodes and one more, each naming its server.
const WITH_SERVER: &str = "hostname,ip,server\n\
n1,10.0.0.11/24,http://10.0.0.5:8080\n\
n2,10.0.0.12/24,http://10.0.0.5:8080\n\
n3,10.0.0.13/24,http://10.0.0.5:8080\n";

fn profiles() -> String {
    repo().join("tests/profiles").display().to_string()
}

/// `bootforge inventory import FILE --database URL ARGS`; panics unless it succeeds.
fn import(dir: &Path, csv: &str, url: &str, args: &[&str]) {
    let file = dir.join(format!("import-{}.csv", sha(csv)));
    std::fs::write(&file, csv).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["inventory", "import"])
        .arg(&file)
        .args(["--database", url, "--profiles", &profiles()])
        .args(args)
        .env_remove("BOOTFORGE_DATABASE")
        .output()
        .unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A service over the database `url` (its inventory: no `--inventory`), with the API tokens.
fn config(
    dir: &Path,
    url: &str,
    listen: &str,
    public_url: Option<&str>,
) -> bootforge::serve::Config {
    let mut config = full_config(dir, false);
    config.inventory = None;
    config.database = Some(url.to_string());
    config.listen = listen.into();
    config.public_url = public_url.map(|u| u.parse().unwrap());
    config
}

/// `GET /status` as JSON.
fn status(base: &str) -> serde_json::Value {
    let r = call("GET", &format!("{base}/status"), Some(READ_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits up to 10 s for `want` to hold of `/status`.
fn wait_status(base: &str, what: &str, want: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(base);
        if want(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: /status is {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stored inventory that the service's checks refuse does not stop `serve` (every replica
/// would then refuse to restart): it starts with no hosts, shows why in `/status`, and loads
/// the next version that passes.
#[test]
fn a_refused_stored_inventory_starts_with_no_hosts_until_a_good_version() {
    // PostgreSQL: the import runs next to the service (one process per SQLite file).
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Valid for a service with a URL of its own; this one has none.
    import(d, NO_SERVER, &url, &["--public-url", "http://10.0.0.5:8080"]);
    let server = bootforge::serve::Server::start(config(d, &url, "0.0.0.0:0", None))
        .expect("serve starts although the stored inventory is refused");
    let base = format!("http://127.0.0.1:{}", server.local_addr().port());
    let s = status(&base);
    assert_eq!(s["nodes"], 0, "{s:#}");
    let error = s["reload"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("n1 (line 2)") && error.contains("server"), "{s:#}");
    assert_eq!(s["reload"]["inventory_served_version"], serde_json::Value::Null, "{s:#}");
    assert_eq!(s["reload"]["inventory_database_version"], 1, "{s:#}");

    import(d, WITH_SERVER, &url, &["--expect-version", "1"]);
    wait_status(&base, "the good version is loaded", |s| {
        s["nodes"] == 3 && s["reload"]["inventory_served_version"] == 2
    });
    assert_eq!(status(&base)["reload"]["last_error"], serde_json::Value::Null);
    server.shutdown();
}

/// A reload that fails on the database is tried again: the replica does not silently keep the
/// old inventory, and `/status` shows the served version behind the database's meanwhile.
#[test]
fn a_reload_that_fails_on_the_database_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let url = bootforge::serve::store::Store::default_url(&state);
    std::fs::create_dir_all(&state).unwrap();
    import(d, WITH_SERVER, &url, &[]);
    let server = bootforge::serve::Server::start(config(d, &url, "127.0.0.1:0", None)).unwrap();
    let base = format!("http://{}", server.local_addr());
    assert_eq!(status(&base)["nodes"], 3);
    // Version 2 drops n3, and its rows cannot be read (a failing query, as a dropped
    // connection or a timeout would be): one transaction, so the service sees both at once.
    sql_on_state(
        &state,
        "BEGIN; DELETE FROM inventory_nodes WHERE hostname = 'n3'; \
         UPDATE inventory_meta SET version = 2 WHERE id = 1; \
         ALTER TABLE inventory_nodes RENAME TO inventory_nodes_away; COMMIT;",
    );
    wait_status(&base, "the failed read is shown", |s| {
        s["reload"]["failures"].as_u64().unwrap_or(0) >= 1
            && s["reload"]["inventory_database_version"] == 2
    });
    let s = status(&base);
    assert_eq!(
        (s["nodes"].clone(), s["reload"]["inventory_served_version"].clone()),
        (3.into(), 1.into()),
        "{s:#}"
    );
    // The database is back: the next tries load version 2.
    sql_on_state(&state, "ALTER TABLE inventory_nodes_away RENAME TO inventory_nodes");
    wait_status(&base, "version 2 is loaded once readable", |s| {
        s["nodes"] == 2 && s["reload"]["inventory_served_version"] == 2
    });
    server.shutdown();
}

/// `NOTIFY bootforge_inventory, '999999'` from anyone who can log in is a wake-up, not a
/// version: the service reads the version, loads nothing new, and does not reload again and
/// again (it once took the payload's maximum and reloaded every 100 ms for ever).
#[test]
fn a_forged_inventory_notify_does_not_loop_reloads() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    import(d, WITH_SERVER, &pg.url(), &[]);
    let server =
        bootforge::serve::Server::start(config(d, &pg.url(), "127.0.0.1:0", None)).unwrap();
    let base = format!("http://{}", server.local_addr());
    wait_status(&base, "the listener is connected", |s| s["database"]["listening"] == true);
    let before = status(&base)["generation"].as_u64().unwrap();
    pg.sql("NOTIFY bootforge_inventory, '999999'");
    std::thread::sleep(Duration::from_millis(1500));
    let s = status(&base);
    assert_eq!(s["reload"]["inventory_database_version"], 1, "{s:#}");
    let after = s["generation"].as_u64().unwrap();
    assert!(after <= before + 1, "reloaded {} times after one forged NOTIFY", after - before);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(status(&base)["generation"].as_u64().unwrap(), after, "still reloading");
    // A real change still arrives.
    import(
        d,
        NO_SERVER,
        &pg.url(),
        &["--public-url", "http://10.0.0.5:8080", "--expect-version", "1"],
    );
    wait_status(&base, "a real change is loaded", |s| s["nodes"] == 2);
    server.shutdown();
}

/// The inventory's snapshot read on a MariaDB server set to READ COMMITTED (as Galera sites
/// often are) still sees one moment: a commit made between its statements is not seen.
#[test]
fn mariadb_snapshot_reads_see_one_moment_under_read_committed() {
    let db = Mariadb::start();
    db.sql("SET GLOBAL tx_isolation = 'READ-COMMITTED'");
    let store = bootforge::serve::store::Store::connect(&db.url()).unwrap();
    drop(store); // migrated
    let url = db.url();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
        let engine = bootforge::serve::store::engine::Engine::Mysql;
        let version = "SELECT version FROM inventory_meta WHERE id = 1";
        let mut tx = engine.begin_snapshot(&pool).await.unwrap();
        let first: i64 = sqlx::query_scalar(version).fetch_one(&mut *tx).await.unwrap();
        sqlx::query("UPDATE inventory_meta SET version = version + 1 WHERE id = 1")
            .execute(&pool)
            .await
            .unwrap();
        let second: i64 = sqlx::query_scalar(version).fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(first, second, "the snapshot saw a commit made after it began");
        // The connection went back with the server's own isolation level.
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(pool.acquire().await.unwrap());
        }
        for c in &mut conns {
            let level: String = sqlx::query_scalar("SELECT CAST(@@session.tx_isolation AS CHAR)")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(level, "READ-COMMITTED");
        }
    });
}
