//! The private database servers of the test harness (`serve_support::db`), driven through the
//! databases' own command-line clients over TCP with the password: a committed row survives
//! SIGKILL and a restart over the same data, authentication is real, durability settings are
//! on, and two servers in one test process keep apart.

#[path = "serve_support/mod.rs"]
mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;
use support::db::{Mariadb, Postgres, DATABASE, USER};

/// The parent pid and the state letter of a process, from `/proc/PID/stat`.
fn parent_and_state(pid: u32) -> (u32, char) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing paren.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next().unwrap().chars().next().unwrap();
    (fields.next().unwrap().parse().unwrap(), state)
}

/// Whether a MariaDB server sends its greeting within a second of a TCP connection.
fn greets(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(1))
}

/// Fails unless `out` is a failed login (the server is up, the credentials are refused).
fn assert_refused(out: std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: logged in; stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("password authentication failed") || stderr.contains("Access denied"),
        "{what}: failed, but not for the credentials: {stderr}"
    );
}

#[test]
fn postgres_keeps_a_committed_row_across_sigkill_and_restart() {
    let mut pg = Postgres::start();
    let (parent, _) = parent_and_state(pg.pid().unwrap());
    assert_eq!(parent, std::process::id(), "the postmaster is not the test's child");
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}", pg.password(), pg.port())
    );
    assert_eq!(pg.sql("SHOW fsync").trim(), "on");
    assert_eq!(pg.sql("SHOW synchronous_commit").trim(), "on");
    assert_eq!(pg.sql("SHOW listen_addresses").trim(), "127.0.0.1");
    assert_eq!(
        pg.sql("SELECT current_user || ' ' || current_database()").trim(),
        format!("{USER} {DATABASE}")
    );
    assert_refused(pg.try_sql("wrong-password", "SELECT 1"), "postgres, wrong password");

    pg.sql("CREATE TABLE t (id integer PRIMARY KEY, note text NOT NULL)");
    pg.sql("INSERT INTO t VALUES (1, 'before the kill')");
    pg.kill();
    assert!(!pg.is_running());
    assert!(
        !pg.try_sql(pg.password(), "SELECT 1").status.success(),
        "postgres still answers after kill"
    );

    pg.start_again();
    assert_eq!(pg.sql("SELECT id, note FROM t").trim(), "1|before the kill");
    // The server recovered from a crash, not from a clean shutdown.
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(
        log.contains("was interrupted") || log.contains("not properly shut down"),
        "no crash recovery in the log:\n{log}"
    );
    // And it still takes writes.
    pg.sql("INSERT INTO t VALUES (2, 'after the restart')");
    assert_eq!(pg.sql("SELECT count(*) FROM t").trim(), "2");
}

#[test]
fn mariadb_keeps_a_committed_row_across_sigkill_and_restart() {
    let mut db = Mariadb::start();
    let (parent, _) = parent_and_state(db.pid().unwrap());
    assert_eq!(parent, std::process::id(), "mariadbd is not the test's child");
    assert_eq!(
        db.url(),
        format!("mysql://{USER}:{}@127.0.0.1:{}/{DATABASE}", db.password(), db.port())
    );
    assert_eq!(
        db.sql("SELECT @@innodb_flush_log_at_trx_commit, @@bind_address").trim(),
        "1\t127.0.0.1"
    );
    assert_eq!(db.sql("SELECT CURRENT_USER(), DATABASE()").trim(), format!("{USER}@%\t{DATABASE}"));
    assert_refused(db.try_sql("wrong-password", "SELECT 1"), "mariadb, wrong password");
    // The bootstrap's password-less root accounts for TCP are gone.
    assert_refused(db.tcp_sql("root", "", "SELECT 1"), "mariadb, root over TCP");

    db.sql("CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(64) NOT NULL) ENGINE=InnoDB");
    db.sql("INSERT INTO t VALUES (1, 'before the kill')");
    db.kill();
    assert!(!db.is_running());
    assert!(
        !db.try_sql(db.password(), "SELECT 1").status.success(),
        "mariadb still answers after kill"
    );

    db.start_again();
    assert_eq!(db.sql("SELECT id, note FROM t").trim(), "1\tbefore the kill");
    let log = std::fs::read_to_string(db.log_path()).unwrap();
    assert!(log.contains("Starting crash recovery"), "no crash recovery in the log:\n{log}");
    db.sql("INSERT INTO t VALUES (2, 'after the restart')");
    assert_eq!(db.sql("SELECT COUNT(*) FROM t").trim(), "2");
}

#[test]
fn two_postgres_servers_in_one_process_keep_apart() {
    let a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.password(), b.password());
    a.sql("CREATE TABLE only_in_a (x integer)");
    assert_eq!(b.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").trim(), "0");
    assert_eq!(a.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").trim(), "1");
    // Each server takes only its own password.
    assert_refused(b.try_sql(a.password(), "SELECT 1"), "b with a's password");
}

#[test]
fn a_paused_server_answers_nothing_until_resumed() {
    let db = Mariadb::start();
    assert!(greets(db.port()));
    db.pause();
    assert_eq!(parent_and_state(db.pid().unwrap()).1, 'T');
    assert!(!greets(db.port()), "a paused mariadbd answered");
    db.resume();
    assert!(greets(db.port()));
    assert_eq!(db.sql("SELECT 1").trim(), "1");

    let pg = Postgres::start();
    pg.pause();
    assert_eq!(parent_and_state(pg.pid().unwrap()).1, 'T');
    pg.resume();
    assert_eq!(pg.sql("SELECT 1").trim(), "1");
}
