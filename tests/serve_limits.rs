//! Abuse limits of the console and the audit log, over real HTTP against a real service: the
//! login throttle (per address and per account, counted before the directory is asked), sessions
//! per identity, `--trusted-proxy`, the aggregation of refusals in the audit log, and service logs
//! without terminal colour codes when stderr is a file.
//!
//! The slow directory is a real TCP peer that accepts LDAP connections and never answers (what
//! an overloaded or firewalled directory looks like to the service); it counts the connections
//! the service opened, which is how many login attempts reached it.
//!
//! The login limits are run again over the service's own TLS listener (module [`over_tls`]):
//! the peer counted is the TCP peer there too.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::auth::session::{LOGIN_FAILURES, MAX_SESSIONS_PER_IDENTITY};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// `POST /session` with `body`, from `agent` (kept-alive connections), with extra headers.
fn login_with(agent: &ureq::Agent, base: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent.post(&format!("{base}/session")).timeout(Duration::from_secs(20));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.send_string(body), "POST /session")
}

fn token_body(token: &str) -> String {
    serde_json::json!({ "token": token }).to_string()
}

/// The `bf_session` value a login set.
fn cookie_of(r: &Resp) -> String {
    let set = r.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {}", r.body));
    set.split(';').next().unwrap().trim().to_string()
}

/// `GET /session` with a session cookie: the status, and the name it says.
fn whoami(base: &str, cookie: &str) -> (u16, String) {
    let r = call_h("GET", &format!("{base}/session"), None, None, &[("Cookie", cookie)]);
    let name =
        if r.status == 200 { r.json()["name"].as_str().unwrap().to_string() } else { "".into() };
    (r.status, name)
}

fn audit_lines(fx: &Fixture) -> Vec<serde_json::Value> {
    let log = audit_log(&fx.config.state_dir);
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A "directory" that accepts TCP connections and never answers; counts the connections.
struct SilentDirectory {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl SilentDirectory {
    fn start() -> SilentDirectory {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(conn); // never read, never answered, never closed
            }
        });
        SilentDirectory { port, accepted }
    }

    /// An `--ldap-config` pointing at it, with the shortest operation timeout (1 s).
    fn config(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("slow-ldap.toml");
        std::fs::write(
            &path,
            format!(
                "url = \"ldap://127.0.0.1:{}\"\nallow_plain = true\n\
                 bind_dn = \"uid={{user}},ou=people,dc=example,dc=org\"\n\
                 group_base = \"ou=groups,dc=example,dc=org\"\ntimeout_secs = 1\n\n[roles]\n\
                 \"cn=boot-admins,ou=groups,dc=example,dc=org\" = \"admin\"\n",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

#[test]
fn a_valid_token_between_guesses_does_not_reset_the_login_limit() {
    let mut fx = start(false);
    let agent = agent_for(&fx.base);
    let mut statuses = Vec::new();
    for round in 0..4 {
        for i in 0..5 {
            let r = login_with(&agent, &fx.base, &token_body(&format!("guess-{round}-{i}")), &[]);
            statuses.push(r.status);
        }
        // The attacker's own valid read token, between guesses at others' tokens.
        let ok = login_with(&agent, &fx.base, &token_body(READ_TOKEN), &[]);
        assert!(ok.status == 200 || ok.status == 429, "{}", ok.status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused, LOGIN_FAILURES as usize, "only ten guesses are checked: {statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let r = login_with(&agent, &fx.base, &token_body("one-more"), &[]);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    fx.stop();
}

#[test]
fn parallel_directory_guesses_are_counted_before_the_directory_is_asked() {
    let silent = SilentDirectory::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.ldap_config = Some(silent.config(dir.path()));
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let mut fx = start_with(dir, config);
    let burst = |forwarded: &dyn Fn(usize) -> String, user: &dyn Fn(usize) -> String| {
        let barrier = std::sync::Barrier::new(60);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..60)
                .map(|i| {
                    let (barrier, base) = (&barrier, &fx.base);
                    let (xff, user) = (forwarded(i), user(i));
                    s.spawn(move || {
                        let body = serde_json::json!({ "username": user, "password": "guess" })
                            .to_string();
                        barrier.wait();
                        let agent = agent_for(base);
                        login_with(&agent, base, &body, &[("X-Forwarded-For", &xff)]).status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        std::thread::sleep(Duration::from_millis(200));
        statuses
    };
    // 60 guesses at once from one address, at 60 accounts.
    let statuses = burst(&|_| "10.0.0.1".into(), &|i| format!("user{i}"));
    let reached = silent.accepted.load(Ordering::SeqCst);
    assert!(reached <= LOGIN_FAILURES as usize, "{reached} reached the directory: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 60 - reached, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 429 || *s == 502), "{statuses:?}");
    // 60 guesses at once at one account, from 60 addresses (and three spellings of its name).
    let statuses = burst(&|i| format!("10.1.0.{i}"), &|i| {
        ["alice", "ALICE", "alice@corp.example"][i % 3].to_string()
    });
    let reached_alice = silent.accepted.load(Ordering::SeqCst) - reached;
    assert!(reached_alice <= LOGIN_FAILURES as usize, "{reached_alice}: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 60 - reached_alice);
    fx.stop();
}

#[test]
fn twelve_thousand_logins_with_one_token_leave_others_sessions_alone() {
    let mut fx = start(false);
    let agent = agent_for(&fx.base);
    let admin = login_with(&agent, &fx.base, &token_body(ADMIN_TOKEN), &[]);
    assert_eq!(admin.status, 200, "{}", admin.body);
    let admin_cookie = cookie_of(&admin);
    let started = std::time::Instant::now();
    let mut first_read = None;
    for _ in 0..12_000 {
        let r = login_with(&agent, &fx.base, &token_body(READ_TOKEN), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        first_read.get_or_insert_with(|| cookie_of(&r));
    }
    eprintln!("12,000 logins in {:?}", started.elapsed());
    assert_eq!(whoami(&fx.base, &admin_cookie), (200, "root".to_string()), "admin still in");
    // The read token's own oldest sessions ended; it holds no more than its cap.
    assert_eq!(whoami(&fx.base, first_read.as_ref().unwrap()).0, 401);
    let held = fx.server.as_ref().unwrap().service().sessions.len();
    assert_eq!(held, MAX_SESSIONS_PER_IDENTITY + 1);
    fx.stop();
}

#[test]
fn a_trusted_proxys_forwarded_address_is_the_one_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), false);
    config.trusted_proxies = vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()];
    let mut fx = start_with(dir, config);
    let agent = agent_for(&fx.base);
    let login = |body: &str, forwarded: &str| {
        login_with(&agent, &fx.base, body, &[("X-Forwarded-For", forwarded)]).status
    };
    for i in 0..LOGIN_FAILURES {
        assert_eq!(login(&token_body(&format!("bad-{i}")), "10.0.0.1"), 401);
    }
    assert_eq!(login(&token_body(READ_TOKEN), "10.0.0.1"), 429);
    // Another operator behind the same proxy is not locked out.
    assert_eq!(login(&token_body(READ_TOKEN), "10.0.0.2"), 200);
    // A client cannot pick its address by prepending to the header: the proxy appended the
    // address it saw, which is the one counted.
    assert_eq!(login(&token_body(READ_TOKEN), "10.0.0.2, 10.0.0.1"), 429);
    // Nor by writing garbage (or a long header) left of that address: it is never read.
    assert_eq!(login(&token_body(READ_TOKEN), "garbage, 10.0.0.1"), 429);
    let long = format!("{}, 10.0.0.1", "x".repeat(4000));
    assert_eq!(login(&token_body(READ_TOKEN), &long), 429);
    // The client's own hop malformed (a proxy that does not append): refused, not the proxy's
    // own (fresh) address.
    assert_eq!(login(&token_body(READ_TOKEN), "10.0.0.2, bogus"), 400);
    fx.stop();
    let records = audit_lines(&fx);
    let failed_peers: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "login-failed" || r["event"] == "refused-summary")
        .map(|r| r["peer"].as_str().unwrap())
        .collect();
    assert!(!failed_peers.is_empty() && failed_peers.iter().all(|p| *p == "10.0.0.1"));
    let logins: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "login")
        .map(|r| r["peer"].as_str().unwrap())
        .collect();
    assert_eq!(logins, vec!["10.0.0.2"], "the audit names the client");

    // Without --trusted-proxy the header is ignored: everyone is the TCP peer.
    let mut fx = start(false);
    let agent = agent_for(&fx.base);
    for i in 0..LOGIN_FAILURES {
        let h = [("X-Forwarded-For", "10.0.0.1")];
        assert_eq!(login_with(&agent, &fx.base, &token_body(&format!("bad-{i}")), &h).status, 401);
    }
    let h = [("X-Forwarded-For", "10.0.0.2")];
    assert_eq!(login_with(&agent, &fx.base, &token_body(READ_TOKEN), &h).status, 429);
    fx.stop();
    assert!(audit_lines(&fx).iter().all(|r| r["peer"].is_null() || r["peer"] == "127.0.0.1"));
}

/// A request of the flood: method, target, body, bearer token, and the record kind it causes.
type Flood = (&'static str, String, Option<String>, Option<&'static str>, &'static str);

#[test]
fn refusals_without_credentials_grow_the_audit_log_by_a_bounded_amount() {
    let mut fx = start(true);
    let base = fx.base.clone();
    let log = fx.config.state_dir.clone();
    let before = audit_log(&log).len() as u64;
    let kinds: Vec<Flood> = vec![
        ("GET", "/hosts".into(), None, None, "denied"),
        ("GET", "/events".into(), None, Some("not-a-token"), "denied"),
        ("GET", "/media/node01.iso".into(), None, None, "media-denied"),
        (
            "GET",
            format!("/media/node01.iso?exp=9999999999&sig={}", "0".repeat(64)),
            None,
            None,
            "media-denied",
        ),
        ("POST", "/session".into(), Some(token_body("guess")), None, "login-failed"),
        ("GET", boot_url("", "ghost", "aa:bb:cc:dd:ee:99", ""), None, None, "boot"),
        ("GET", boot_url("", "node01", "aa:bb:cc:dd:ee:01", "&token=wrong"), None, None, "boot"),
        ("GET", "/config/node01/install.cfg".into(), None, None, "node-token-denied"),
    ];
    let total = 20_000;
    let mut sent: std::collections::BTreeMap<&str, u64> = Default::default();
    let agent = ureq::AgentBuilder::new().build();
    for i in 0..total {
        let (method, path, body, token, kind) = &kinds[i % kinds.len()];
        let mut req = agent.request(method, &format!("{base}{path}"));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => drop(r.into_string()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
        *sent.entry(kind).or_default() += 1;
    }
    let svc = fx.server.as_ref().unwrap().service().clone();
    svc.audit.sync();
    let during = audit_log(&log).len() as u64 - before;
    fx.stop();
    let after = audit_log(&log).len() as u64 - before;
    eprintln!("{total} refusals: the audit log grew {during} bytes, {after} after shutdown");
    assert_eq!(svc.audit.dropped.load(Ordering::Relaxed), 0, "no note was dropped");
    // Eight kinds of request, nine keys (a login turns rate-limited): at most two records
    // each (the first in full, then one summary), a few hundred bytes apiece.
    assert!(during <= 8 * 1024, "the log grew {during} bytes during the flood");
    assert!(after <= 16 * 1024, "the log grew {after} bytes in all");
    // Every refusal is accounted for: written one by one, or counted in a summary.
    let records = audit_lines(&fx);
    for (kind, n) in &sent {
        let single = records.iter().filter(|r| r["event"] == *kind).count() as u64;
        let summed: u64 = records
            .iter()
            .filter(|r| r["event"] == "refused-summary" && r["refused"] == *kind)
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(single + summed, *n, "{kind}: {single} written + {summed} counted");
    }
    let summary = records.iter().find(|r| r["event"] == "refused-summary").unwrap();
    for field in ["refused", "peer", "route", "reason", "count", "first_ms", "last_ms"] {
        assert!(!summary[field].is_null(), "{field} in {summary}");
    }
}

#[test]
fn service_logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path());
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = support::serve_command(&config)
        .args(["--listen", "127.0.0.1:0", "--trusted-proxy", "10.0.0.0/8"])
        .env_remove("NO_COLOR")
        .env_remove("BOOTFORGE_LOG")
        .stderr(stderr)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read(&stderr_path).unwrap();
        if String::from_utf8_lossy(&text).contains("bootforge serve started") {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited ({status}): {}", String::from_utf8_lossy(&text));
        }
        assert!(std::time::Instant::now() < deadline, "no log line within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let shown = String::from_utf8_lossy(&text);
    assert!(shown.contains("INFO"), "{shown}");
    assert!(!text.contains(&0x1b), "terminal escape codes in a log file:\n{shown:?}");

    // On a terminal (a pseudo-terminal made by `script`), colour is on, unless NO_COLOR is set.
    let script = std::path::Path::new("/usr/bin/script");
    assert!(script.exists(), "script is missing: install the Debian package `bsdutils`");
    let on_a_terminal = |no_color: Option<&str>| {
        let cmd = format!(
            "timeout -s INT 2 '{}' serve --inventory '{}' --profiles '{}' --state-dir '{}' --listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_bootforge"),
            config.inventory.as_ref().unwrap().display(),
            config.profiles.display(),
            config.state_dir.display(),
        );
        let mut c = std::process::Command::new(script);
        c.args(["-qec", &cmd, "/dev/null"]).stdin(std::process::Stdio::null());
        c.env_remove("NO_COLOR").env_remove("BOOTFORGE_LOG");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("bootforge serve started"));
        out.stdout
    };
    assert!(on_a_terminal(None).contains(&0x1b), "a terminal gets colour");
    assert!(!on_a_terminal(Some("1")).contains(&0x1b), "NO_COLOR turns it off");

    // A wrong --trusted-proxy is refused with a message that says what is expected.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["serve", "--inventory", "x", "--profiles", "y", "--state-dir", "z"])
        .args(["--trusted-proxy", "proxy.example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither an IP address") && err.contains("10.0.0.0/24"), "{err}");
}

/// One client holding a /64 (through a trusted proxy here) sent refusals from a new address
/// each time, over several routes: each address was a key, so ~512 requests filled the table
/// and every other client's refusals (a node failing its token) lost their peer and host. Now
/// the /64 is one peer with at most 8 keys: the log grows by a few KB, and another client's
/// probes of two hosts are both written in full, named.
#[test]
fn a_flood_from_one_ipv6_prefix_leaves_other_clients_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.trusted_proxies = vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()];
    let mut fx = start_with(dir, config);
    let log = fx.config.state_dir.clone();
    let before = audit_log(&log).len() as u64;
    let agent = ureq::AgentBuilder::new().build();
    let get = |path: &str, forwarded: &str| {
        let req = agent.get(&format!("{}{path}", fx.base)).set("X-Forwarded-For", forwarded);
        match req.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
            Err(e) => panic!("{path}: {e}"),
        }
    };
    let routes = ["/hosts", "/events", "/inventory", "/hosts/node01", "/status"];
    for i in 0..3000u32 {
        let status = get(routes[i as usize % routes.len()], &format!("2001:db8:7:7::{:x}", i + 1));
        assert!(status == 401 || status == 403, "{status}");
    }
    for host in ["node01", "node02"] {
        assert_eq!(get(&format!("/config/{host}/install.cfg"), "198.51.100.20"), 403);
    }
    let svc = fx.server.as_ref().unwrap().service().clone();
    svc.audit.sync();
    let during = audit_log(&log).len() as u64 - before;
    fx.stop();
    assert!(during <= 6 * 1024, "the log grew {during} bytes during the flood");
    let records = audit_lines(&fx);
    let named: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "node-token-denied" && r["peer"] == "198.51.100.20")
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(named, vec!["node01", "node02"], "both probes in full, named");
    assert!(records.iter().all(|r| r["event"] != "refused-summary" || !r["peer"].is_null()));
    let from_prefix = records.iter().filter(|r| r["event"] == "denied").count();
    assert!(from_prefix <= 8, "{from_prefix} written in full from one /64");
}

/// The login limits again, every request over the service's TLS listener
/// (`support::over_tls`): TLS changes neither who is counted nor how.
mod over_tls {
    use super::support::over_tls;

    #[test]
    fn a_valid_token_between_guesses_does_not_reset_the_login_limit() {
        over_tls(super::a_valid_token_between_guesses_does_not_reset_the_login_limit);
    }

    #[test]
    fn parallel_directory_guesses_are_counted_before_the_directory_is_asked() {
        over_tls(super::parallel_directory_guesses_are_counted_before_the_directory_is_asked);
    }

    #[test]
    fn a_trusted_proxys_forwarded_address_is_the_one_limited() {
        over_tls(super::a_trusted_proxys_forwarded_address_is_the_one_limited);
    }
}
