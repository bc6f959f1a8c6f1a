//! Console sessions shared by replicas: two `serve` processes' worth of service (two
//! [`bootforge::serve::Server`]s, each with its own state folder) on one private PostgreSQL (and
//! one private MariaDB), with directory logins against a real slapd. A login through either is a
//! login on both; a logout, an idle expiry and an admin's `DELETE /sessions?name=` through one
//! hold on the other at its next request.

#[path = "serve_support/mod.rs"]
mod support;

#[path = "console_support/mod.rs"]
mod console_support;

use bootforge::serve::auth::session::Lifetimes;
use console_support::Slapd;
use std::time::{Duration, Instant};
use support::*;

/// Sessions end after this long without a request in these tests.
const IDLE: Duration = Duration::from_millis(3000);

/// `POST /session` with a JSON body through `base`: the answer and the cookie it set.
fn login(base: &str, body: serde_json::Value) -> (Resp, String) {
    let r = call("POST", &format!("{base}/session"), None, Some(&body.to_string()));
    assert_eq!(r.status, 200, "login through {base}: {}", r.body);
    let set = r.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {}", r.body));
    let cookie = set.split(';').next().unwrap().trim().to_string();
    (r, cookie)
}

fn token_login(base: &str, token: &str) -> (Resp, String) {
    login(base, serde_json::json!({ "token": token }))
}

fn directory_login(base: &str, user: &str, password: &str) -> (Resp, String) {
    login(base, serde_json::json!({ "username": user, "password": password }))
}

/// `GET /session` through `base` with `cookie`.
fn who(base: &str, cookie: &str) -> Resp {
    call_h("GET", &format!("{base}/session"), None, None, &[("Cookie", cookie)])
}

/// Two replicas on the database at `url`, directory logins against `slapd`.
struct Replicas {
    a: Fixture,
    b: bootforge::serve::Server,
    b_base: String,
    _b_dir: tempfile::TempDir,
}

fn replicas(url: &str, slapd: &Slapd, life: Lifetimes) -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.database = Some(url.to_string());
    let ldap = dir.path().join("ldap.toml");
    std::fs::write(&ldap, slapd.config(false)).unwrap();
    config.ldap_config = Some(ldap);
    config.sessions = life;
    let a = start_with(dir, config);
    let b_dir = tempfile::tempdir().unwrap();
    let mut config = a.config.clone();
    config.listen = "127.0.0.1:0".into();
    config.state_dir = b_dir.path().join("state");
    let b = bootforge::serve::Server::start(config).unwrap();
    let b_base = format!("http://{}", b.local_addr());
    Replicas { a, b, b_base, _b_dir: b_dir }
}

#[test]
fn sessions_are_shared_by_two_replicas_on_one_postgres() {
    let pg = support::db::Postgres::start();
    sessions_are_shared(&pg.url());
}

#[test]
fn sessions_are_shared_by_two_replicas_on_one_mariadb() {
    let db = support::db::Mariadb::start();
    sessions_are_shared(&db.url());
}

/// While the database is down, a session is never let through unchecked: requests that carry
/// one, logins and logouts get 503 with `Retry-After`; once it is back, the same cookie works
/// again (the session was kept).
#[test]
fn sessions_are_refused_with_503_while_the_database_is_down() {
    let mut pg = support::db::Postgres::start();
    let ldap_dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(ldap_dir.path());
    let Replicas { mut a, b, b_base, _b_dir } = replicas(&pg.url(), &slapd, Lifetimes::default());
    let (_, cookie) = token_login(&a.base, READ_TOKEN);
    assert_eq!(who(&b_base, &cookie).status, 200);
    pg.kill();
    for base in [a.base.as_str(), b_base.as_str()] {
        let r = who(base, &cookie);
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.header("retry-after").is_some());
        let hosts = call_h("GET", &format!("{base}/hosts"), None, None, &[("Cookie", &cookie)]);
        assert_eq!(hosts.status, 503, "{}", hosts.body);
        let body = serde_json::json!({ "token": READ_TOKEN }).to_string();
        let r = call("POST", &format!("{base}/session"), None, Some(&body));
        assert_eq!(r.status, 503, "login: {}", r.body);
        assert!(r.header("set-cookie").is_none(), "no session was opened");
    }
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = who(&b_base, &cookie);
        if r.status == 200 {
            break;
        }
        let late = Instant::now() > deadline;
        assert!(!late, "the session never came back: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(who(&a.base, &cookie).status, 200);
    b.shutdown();
    a.stop();
}

fn sessions_are_shared(url: &str) {
    let ldap_dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(ldap_dir.path());
    let life = Lifetimes { idle_ms: IDLE.as_millis() as u64, absolute_ms: 3_600_000 };
    let Replicas { mut a, b, b_base, _b_dir } = replicas(url, &slapd, life);
    let a_base = a.base.clone();
    let (a_base, b_base) = (a_base.as_str(), b_base.as_str());

    // Logged in through A: the same cookie is the same session on B, with the same CSRF token.
    let (r, cookie) = token_login(a_base, REIMAGE_TOKEN);
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    let on_b = who(b_base, &cookie);
    assert_eq!(on_b.status, 200, "A's login on B: {}", on_b.body);
    assert_eq!(on_b.json()["name"], "ops");
    assert_eq!(on_b.json()["csrf"].as_str(), Some(csrf.as_str()));
    // A change through B with the token A handed out (and refused without it).
    let flag = format!("{b_base}/hosts/node01/reimage");
    let r = call_h("PUT", &flag, None, None, &[("Cookie", &cookie)]);
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    let r = call_h("PUT", &flag, None, None, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)]);
    assert_eq!(r.status, 200, "flag through B with A's session: {}", r.body);

    // Used through A only, the session stays alive past its idle lifetime on B too (its use
    // is recorded in the database, not in A's memory).
    let start = Instant::now();
    while start.elapsed() < IDLE + IDLE / 2 {
        assert_eq!(who(a_base, &cookie).status, 200);
        std::thread::sleep(IDLE / 6);
    }
    assert_eq!(who(b_base, &cookie).status, 200, "kept alive through A, alive on B");

    // Logged out through B: refused on A.
    let out = format!("{b_base}/session");
    let r = call_h("DELETE", &out, None, None, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)]);
    assert_eq!(r.status, 200, "logout through B: {}", r.body);
    assert_eq!(who(a_base, &cookie).status, 401, "logged out on B, refused on A");
    assert_eq!(who(b_base, &cookie).status, 401);

    // An admin on B ends every directory session of a name, including those opened on A.
    let (_, bob_a1) = directory_login(a_base, "bob", "bob-pw");
    let (_, bob_a2) = directory_login(a_base, "bob", "bob-pw");
    let (_, bob_b) = directory_login(b_base, "bob", "bob-pw");
    let (_, carol) = directory_login(a_base, "carol", "carol-pw");
    let (r, alice) = directory_login(b_base, "alice", "alice-pw");
    let alice_csrf = r.json()["csrf"].as_str().unwrap().to_string();
    for c in [&bob_a1, &bob_a2, &bob_b] {
        assert_eq!(who(b_base, c).json()["name"], "bob");
        assert_eq!(who(a_base, c).status, 200);
    }
    let end = format!("{b_base}/sessions?name=BOB");
    let r =
        call_h("DELETE", &end, None, None, &[("Cookie", &alice), ("X-CSRF-Token", &alice_csrf)]);
    assert_eq!((r.status, r.json()["ended"].as_u64()), (200, Some(3)), "{}", r.body);
    for c in [&bob_a1, &bob_a2, &bob_b] {
        assert_eq!(who(a_base, c).status, 401, "ended on B, refused on A");
        assert_eq!(who(b_base, c).status, 401);
    }
    assert_eq!(who(a_base, &carol).status, 200, "carol keeps hers");
    assert_eq!(who(a_base, &alice).status, 200, "alice keeps hers");

    // Idle past their lifetime, sessions are refused by both, each deciding on its own: x is
    // first asked about on A, y on B.
    let (_, x) = token_login(a_base, READ_TOKEN);
    let (_, y) = token_login(b_base, READ_TOKEN);
    assert_eq!((who(b_base, &x).status, who(a_base, &y).status), (200, 200));
    std::thread::sleep(IDLE + Duration::from_millis(300));
    assert_eq!(who(a_base, &x).status, 401, "x idle, refused on A");
    assert_eq!(who(b_base, &y).status, 401, "y idle, refused on B");
    assert_eq!(who(b_base, &x).status, 401, "x idle, refused on B");
    assert_eq!(who(a_base, &y).status, 401, "y idle, refused on A");

    // Every login is in the one audit log, whichever replica took it (records are written
    // off the request path: wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = call("GET", &format!("{a_base}/events?limit=1000"), Some(ADMIN_TOKEN), None);
        let all = events.json()["events"].as_array().unwrap().clone();
        let logins = all.iter().filter(|e| e["event"] == "login").count();
        if logins == 8 {
            break;
        }
        assert!(Instant::now() < deadline, "{logins} logins recorded: {}", events.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    b.shutdown();
    a.stop();
}
