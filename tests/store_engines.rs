//! One conformance suite for the state store (`bootforge::serve::store`), run on all three
//! engines: SQLite in a temporary folder, and a private PostgreSQL and MariaDB server each
//! (`serve_support::db`, the test's own child processes). Every check is written once, as a
//! function of the database it runs on, and called per engine by one `#[test]` per engine (a
//! server starts once per engine; the checks use host names of their own, so they share it).
//!
//! What the store promises, checked here through its library API only:
//! - a change commits its state and its audit record together: a closure that errs, or an audit
//!   insert that fails, commits neither;
//! - the version is a compare-and-set: two stores on one database (two replicas) changing one
//!   host concurrently end with exactly the writes they acknowledged, the version counting every
//!   one; a first-answer install answered 200 times at once is opened once, with one record; a
//!   change that lost the race runs its closure again on the winner's state;
//! - `may_decide` is exact for a store's own writes and follows the other store after `rescan`;
//! - audit pages by cursor, forwards and backwards, with the indexed filters;
//! - last boots: the newest verified boot wins, in memory and in the engine's upsert (MariaDB's
//!   `ON DUPLICATE KEY UPDATE` especially), whatever order the rows come in;
//! - the time a change sees, stores and stamps its record with is the database's clock;
//! - `state copy` from SQLite to PostgreSQL and to MariaDB moves identical hosts, last boots and
//!   audit records (in order, with their times), and refuses a target that is not empty,
//!   changing nothing.
//!
//! SQLite allows one store per file (its guard), so there the two-store checks run with one
//! store, whose writes the single writer connection serialises.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::domain::actor::{Actor, Role, Via};
use bootforge::serve::domain::event::Event;
use bootforge::serve::domain::lifecycle::{self, BootAnswer, HostState, InstallKind, Rules};
use bootforge::serve::domain::query::EventFilter;
use bootforge::serve::store::audit::{self, Audit, LastBoots, MAX_PAGE_BYTES};
use bootforge::serve::store::{import, Change, Store, StoreError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::db::{Mariadb, Postgres};

const PEER: &str = "10.9.8.7";
/// The first-answer profile of these checks, and its repeat window.
const FIRST_ANSWER: &str = "fa";
const WINDOW_MS: u64 = 600_000;

fn peer() -> IpAddr {
    PEER.parse().unwrap()
}

fn rules(profile: &str) -> Option<Rules> {
    Some(Rules {
        clear_on_first_answer: profile == FIRST_ANSWER,
        repeat_window_ms: if profile == FIRST_ANSWER { WINDOW_MS } else { 0 },
    })
}

fn ops() -> Actor {
    Actor { by: "ops".into(), role: Role::Reimage, via: Via::Token }
}

/// A fresh install id (32 hex digits), unique in this process.
fn new_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(1);
    format!(
        "{:032x}",
        N.fetch_add(1, Ordering::Relaxed) as u128 * 7919 + rand::random::<u32>() as u128
    )
}

fn boot(host: &str, verified: bool, answer: &'static str, install: Option<String>) -> Event {
    Event::Boot {
        host: Some(host.into()),
        verified,
        answer,
        kind: "x",
        reason: "r",
        install,
        peer: peer(),
        ip: None,
        mac: None,
        medium: "cd",
        platform: "pcbios",
        uuid: None,
        expected_uuid: None,
    }
}

/// The test's own runtime, for awaiting the store's async calls.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `set_flag` with its record, as `PUT /hosts/H/reimage` runs it.
fn set_change(
    host: &str,
    profile: &str,
) -> impl FnMut(&mut HostState, u64) -> Result<Change<String>, String> + Send + 'static {
    let (host, profile) = (host.to_string(), profile.to_string());
    move |st, now| {
        let (outcome, write) = lifecycle::set_flag(st, &profile, "ops", PEER, new_id(), now);
        let install = match outcome {
            lifecycle::SetFlag::Set { install, .. } | lifecycle::SetFlag::Unchanged { install } => {
                install
            }
        };
        let record = Event::FlagSet {
            host: host.clone(),
            profile: profile.clone(),
            who: ops(),
            peer: peer(),
            changed: write,
            install: install.clone(),
            retry: false,
            previous: None,
            why: None,
        };
        Ok(Change { value: install, write, record: Some(record) })
    }
}

fn set_flag(store: &Arc<Store>, host: &str, profile: &str) -> String {
    rt().block_on(store.change(host, set_change(host, profile))).unwrap().unwrap()
}

/// Runs `sql` on the database at `url` behind the store's back.
fn sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let (url, sql) = (url.to_string(), sql.to_string());
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// The `last_boots` table: host → (ms, record as JSON).
fn fetch_rows(url: &str) -> BTreeMap<String, i64> {
    use sqlx::{Connection, Row};
    let url = url.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let rows =
            sqlx::query("SELECT host, ms FROM fetch_progress").fetch_all(&mut conn).await.unwrap();
        rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect()
    })
}

fn last_boot_rows(url: &str) -> BTreeMap<String, (i64, Value)> {
    use sqlx::{Connection, Row};
    let url = url.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let rows = sqlx::query("SELECT host, ms, record FROM last_boots")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let record: String = r.get(2);
                (
                    r.get::<String, _>(0),
                    (r.get::<i64, _>(1), serde_json::from_str(&record).unwrap()),
                )
            })
            .collect()
    })
}

/// The database's clock in milliseconds (the process's for SQLite, whose clock is the machine's).
fn db_clock(url: &str) -> u64 {
    use sqlx::Connection;
    let q = if url.starts_with("postgres") {
        "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)"
    } else if url.starts_with("mysql") {
        "SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)"
    } else {
        return bootforge::serve::util::now_ms();
    };
    let url = url.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, i64>(q).fetch_one(&mut conn).await.unwrap() as u64
    })
}

/// Every audit record of `host`, oldest first (paged through `read_page` with a host filter).
fn records_of(audit: &Audit, host: &str) -> Vec<Value> {
    let filter = EventFilter::parse(|n| (n == "host").then(|| host.to_string()));
    let (mut out, mut since) = (Vec::new(), 0);
    loop {
        let page = audit.read_page(since, 1000, MAX_PAGE_BYTES, &filter, Role::Admin).unwrap();
        out.extend(page.events);
        since = page.next;
        if page.at_end == Some(true) {
            return out;
        }
    }
}

/// The database's stores: `a` and, on the servers, a second one (another replica); on SQLite
/// `b` is `a` (one store per file).
struct Db {
    url: String,
    a: Arc<Store>,
    b: Arc<Store>,
    audit: Audit,
    two: bool,
}

impl Db {
    fn open(url: &str) -> Db {
        let a = Arc::new(Store::open(url, None).unwrap());
        let two = !url.starts_with("sqlite");
        let b = if two { Arc::new(Store::open(url, None).unwrap()) } else { a.clone() };
        let audit = Audit::open(a.clone()).unwrap();
        Db { url: url.to_string(), a, b, audit, two }
    }
}

/// A change commits its state and its audit record together, or neither.
fn check_commit_together(db: &Db) {
    let host = "c-commit";
    let install = set_flag(&db.a, host, "rocky");
    let st = db.a.read_blocking(host).unwrap();
    assert_eq!((st.version, st.flag.as_ref().map(|f| f.install.id.clone())), (1, Some(install)));
    let recs = records_of(&db.audit, host);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["event"], "flag-set");
    assert_eq!(recs[0]["ms"].as_u64(), Some(st.updated_at), "the record has the change's time");

    // An error from the closure rolls back: no state, no record.
    let r = rt().block_on(db.a.change(host, |st: &mut HostState, now| {
        lifecycle::cancel(st, rules, now);
        Err::<Change<()>, _>("refused".to_string())
    }));
    assert_eq!(r.unwrap().unwrap_err(), "refused");
    // Nothing written: the record of a change that does not write is not the store's to insert.
    let r = rt().block_on(db.a.change(host, move |_st: &mut HostState, _now| {
        let record = Event::Done {
            host: host.into(),
            install: new_id(),
            peer: peer(),
            profile: None,
            duration_ms: None,
        };
        Ok::<_, String>(Change { value: 7, write: false, record: Some(record) })
    }));
    assert_eq!(r.unwrap().unwrap(), 7);
    assert_eq!(db.a.read_blocking(host).unwrap(), st);
    assert_eq!(records_of(&db.audit, host).len(), 1);

    // The audit insert fails (its table is gone): the state is not written either.
    sql(&db.url, "ALTER TABLE audit RENAME TO audit_away");
    let r = rt().block_on(db.a.change(host, move |st: &mut HostState, now| {
        let (_, write) = lifecycle::cancel(st, rules, now);
        let record = Event::FlagCancelled {
            host: host.into(),
            who: ops(),
            peer: peer(),
            outcome: "cancelled",
            install: None,
        };
        Ok::<_, String>(Change { value: (), write, record: Some(record) })
    }));
    sql(&db.url, "ALTER TABLE audit_away RENAME TO audit");
    assert!(matches!(r, Err(StoreError::Database(_))), "{:?}", r.map(|_| ()));
    assert_eq!(db.a.read_blocking(host).unwrap(), st, "state written without its record");
    assert_eq!(db.b.read_blocking(host).unwrap(), st);
    assert_eq!(records_of(&db.audit, host).len(), 1);
    assert!(db.a.may_decide(host), "still flagged");
}

/// A change that loses the race runs again on the winner's state: for a first write (the
/// unique key) and for an update (the version). Needs two stores.
fn check_lost_race_reruns(db: &Db) {
    let host = "c-race";
    // In the first run of A's closure (its transaction open, the row read), B writes and commits.
    let race = |first_profile: &'static str, b_writes: fn(Arc<Store>, String)| {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<HostState>::new()));
        let (b, s2) = (db.b.clone(), seen.clone());
        let mut inner = set_change(host, first_profile);
        let r = rt().block_on(db.a.change(host, move |st: &mut HostState, now| {
            let first = s2.lock().unwrap().is_empty();
            s2.lock().unwrap().push(st.clone());
            if first {
                let (b, h) = (b.clone(), host.to_string());
                std::thread::spawn(move || b_writes(b, h)).join().unwrap();
            }
            inner(st, now)
        }));
        let install = r.unwrap().unwrap();
        let seen = seen.lock().unwrap().clone();
        (install, seen)
    };
    fn b_sets(b: Arc<Store>, host: String) {
        rt().block_on(b.change(&host, set_change(&host, "ubuntu"))).unwrap().unwrap();
    }
    // A first write: A read no row, B inserted it first.
    let (install, seen) = race("rocky", b_sets);
    assert_eq!(seen.len(), 2, "the closure ran again after losing: {seen:?}");
    assert_eq!(seen[0], HostState::default());
    assert_eq!(seen[1].version, 1);
    assert_eq!(seen[1].flag.as_ref().unwrap().profile, "ubuntu", "it ran on B's state");
    let st = db.b.read_blocking(host).unwrap();
    assert_eq!(st.version, 2);
    assert_eq!(st.flag.as_ref().unwrap().install.id, install);
    assert_eq!(st.flag.as_ref().unwrap().profile, "rocky");
    // An update: A read version 2, B wrote version 3 first.
    fn b_cancels(b: Arc<Store>, host: String) {
        rt().block_on(b.change(&host, |st: &mut HostState, now| {
            let (_, write) = lifecycle::cancel(st, rules, now);
            Ok::<_, String>(Change { value: (), write, record: None })
        }))
        .unwrap()
        .unwrap();
    }
    let (install, seen) = race("debian", b_cancels);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].version, seen[1].version), (2, 3));
    assert!(seen[0].flag.is_some() && seen[1].flag.is_none(), "it ran on B's cancel");
    let st = db.a.read_blocking(host).unwrap();
    assert_eq!((st.version, st.flag.as_ref().map(|f| f.install.id.as_str())), (4, Some(&*install)));
    assert_eq!(st.last_install.as_ref().unwrap().how, lifecycle::Ending::Cancelled);
    let recs: Vec<_> = records_of(&db.audit, host).iter().map(|r| r["profile"].clone()).collect();
    assert_eq!(recs, ["ubuntu", "rocky", "debian"], "one record per committed write, in order");
}

/// 200 set/cancel toggles of one host at once, half through each store: exactly the
/// acknowledged writes are committed, each with its record, and the version counts them.
fn check_toggle_burst(db: &Db) {
    let host = "c-burst";
    let runs = Arc::new(AtomicUsize::new(0));
    let rt = rt();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = if i % 2 == 0 { db.a.clone() } else { db.b.clone() };
            let runs = runs.clone();
            rt.spawn(async move {
                store
                    .change(host, move |st: &mut HostState, now| {
                        runs.fetch_add(1, Ordering::Relaxed);
                        let record = if st.flag.is_some() {
                            let (_, w) = lifecycle::cancel(st, rules, now);
                            assert!(w);
                            Event::FlagCancelled {
                                host: host.into(),
                                who: ops(),
                                peer: peer(),
                                outcome: "cancelled",
                                install: None,
                            }
                        } else {
                            let id = new_id();
                            let (_, w) =
                                lifecycle::set_flag(st, "rocky", "ops", PEER, id.clone(), now);
                            assert!(w);
                            let who = ops();
                            Event::FlagSet {
                                host: host.into(),
                                profile: "rocky".into(),
                                who,
                                peer: peer(),
                                changed: true,
                                install: id,
                                retry: false,
                                previous: None,
                                why: None,
                            }
                        };
                        Ok::<_, String>(Change {
                            value: st.version + 1,
                            write: true,
                            record: Some(record),
                        })
                    })
                    .await
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match rt.block_on(t).unwrap() {
            Ok(v) => acked.push(v.unwrap()),
            // Not acknowledged: must not be committed either.
            Err(StoreError::Busy | StoreError::Unavailable(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let n = acked.len() as u64;
    assert!(n >= 100, "only {n} of 200 changes went through ({refused} busy)");
    acked.sort_unstable();
    assert_eq!(acked, (1..=n).collect::<Vec<_>>(), "each acknowledged write has its own version");
    let st = db.b.read_blocking(host).unwrap();
    assert_eq!(st.version, n, "the version counts every acknowledged write");
    assert_eq!(st.flag.is_some(), n % 2 == 1);
    let recs = records_of(&db.audit, host);
    assert_eq!(recs.len() as u64, n, "one record per acknowledged write");
    for (i, r) in recs.iter().enumerate() {
        let want = if i % 2 == 0 { "flag-set" } else { "flag-cancelled" };
        assert_eq!(r["event"], want, "record {i}: records alternate in commit order");
    }
    let runs = runs.load(Ordering::Relaxed) as u64;
    assert!(runs >= n);
    if db.two {
        assert!(runs > n, "two stores racing on one row never lost a race?");
    }
}

/// 200 verified boots at once of a host flagged with a first-answer profile, across both
/// stores: one install opened, with one record and one last boot; every answer the same install.
fn check_first_answer_burst(db: &Db) {
    let host = "c-first";
    let install = set_flag(&db.a, host, FIRST_ANSWER);
    db.b.rescan();
    let rt = rt();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = if i % 2 == 0 { db.a.clone() } else { db.b.clone() };
            rt.spawn(async move {
                store
                    .change(host, move |st: &mut HostState, now| {
                        let (answer, write) = lifecycle::answer_boot(st, rules, now);
                        let BootAnswer::Install { id, kind, .. } = answer.clone() else {
                            panic!("{answer:?}")
                        };
                        let record = write.then(|| boot(host, true, "install", Some(id)));
                        Ok::<_, String>(Change { value: (answer, kind), write, record })
                    })
                    .await
            })
        })
        .collect();
    let mut kinds = BTreeMap::new();
    for t in tasks {
        let (answer, kind) = rt.block_on(t).unwrap().expect("every boot is answered").unwrap();
        let BootAnswer::Install { id, .. } = answer else { unreachable!() };
        assert_eq!(id, install);
        *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
    }
    let want = BTreeMap::from([
        (format!("{:?}", InstallKind::OpenedAndEnded), 1),
        (format!("{:?}", InstallKind::RepeatWindow), 199),
    ]);
    assert_eq!(kinds, want);
    let st = db.a.read_blocking(host).unwrap();
    assert_eq!(st.version, 2, "the flag, and the one answer that opened and ended the install");
    assert!(st.flag.is_none());
    assert_eq!(st.last_install.as_ref().unwrap().how, lifecycle::Ending::FirstAnswer);
    let boots: Vec<_> =
        records_of(&db.audit, host).into_iter().filter(|r| r["event"] == "boot").collect();
    assert_eq!(boots.len(), 1, "one record for the one install opened: {boots:?}");
    let rows = last_boot_rows(&db.url);
    assert_eq!(rows[host].0 as u64, st.updated_at, "its last boot, committed with it");
    assert_eq!(rows[host].1["install"], install.as_str());
}

/// `may_decide` is exact for a store's own commits and follows the other's: on PostgreSQL at
/// once (its `NOTIFY`), on MariaDB after a `rescan` (the reload thread polls).
fn check_may_decide(db: &Db) {
    let host = "c-decide";
    let notified = db.url.starts_with("postgres");
    // The other store's view, within `limit` on PostgreSQL (no rescan), else after a rescan.
    let b_sees = |want: bool| {
        if notified {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while db.b.may_decide(host) != want && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        } else {
            db.b.rescan();
        }
        db.b.may_decide(host) == want
    };
    assert!(!db.a.may_decide(host) && !db.b.may_decide(host));
    set_flag(&db.a, host, "rocky");
    assert!(db.a.may_decide(host), "its own flag, at once");
    if db.two && !notified {
        assert!(!db.b.may_decide(host), "B has not looked yet");
    }
    assert!(b_sees(true), "B follows A's flag");
    rt().block_on(db.a.change(host, |st: &mut HostState, now| {
        let (_, write) = lifecycle::cancel(st, rules, now);
        Ok::<_, String>(Change { value: (), write, record: None })
    }))
    .unwrap()
    .unwrap();
    assert!(!db.a.may_decide(host), "its own cancel, at once");
    if db.two && !notified {
        assert!(db.b.may_decide(host), "B errs towards true until it rescans");
    }
    assert!(b_sees(false), "B follows A's cancel");
    db.b.rescan();
    assert!(!db.b.may_decide(host));
    // A first-answer install whose window is open decides boots (its repeat answers).
    let h2 = "c-decide-window";
    set_flag(&db.b, h2, FIRST_ANSWER);
    rt().block_on(db.b.change(h2, |st: &mut HostState, now| {
        let (_, write) = lifecycle::answer_boot(st, rules, now);
        Ok::<_, String>(Change { value: (), write, record: None })
    }))
    .unwrap()
    .unwrap();
    db.a.rescan();
    assert!(db.a.may_decide(h2) && db.b.may_decide(h2));
    assert!(db.a.read_blocking(h2).unwrap().flag.is_none());
}

/// The `now` a change sees is the database's clock, and it is what the state and its record
/// store.
fn check_clock(db: &Db) {
    let host = "c-clock";
    let before = db_clock(&db.url);
    let seen = rt()
        .block_on(db.b.change(host, set_change(host, "rocky")))
        .map(|_| ())
        .and_then(|_| Ok(db.b.read_blocking(host)?.updated_at))
        .unwrap();
    let after = db_clock(&db.url);
    assert!(
        before.saturating_sub(5) <= seen && seen <= after + 5,
        "the change's time {seen} is not the database's ({before}..{after})"
    );
    let recs = records_of(&db.audit, host);
    assert_eq!(recs[0]["ms"].as_u64(), Some(seen));
    assert_eq!(recs[0]["time"].as_str().unwrap(), bootforge::serve::util::rfc3339(seen));
}

/// Audit pages by cursor, oldest first and newest first, with and without filters.
fn check_audit_paging(db: &Db) {
    let a = &db.audit;
    let start = a.read_newest(1, None, &EventFilter::default(), Role::Admin).unwrap();
    let start = start.events.first().map_or(0, |e| e["offset"].as_u64().unwrap() + 1);
    let mut made = Vec::new();
    for i in 0..30 {
        let host = format!("P-{}", i % 3);
        let install = new_id();
        let e = if i % 4 == 0 {
            Event::Started { host, install, peer: peer() }
        } else {
            Event::Done { host, install, peer: peer(), profile: None, duration_ms: None }
        };
        made.push(serde_json::to_value(&e).unwrap());
        a.note(&e);
    }
    a.sync();
    let strip = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().unwrap();
        for k in ["offset", "time", "ms"] {
            o.remove(k);
        }
        v
    };
    // Oldest first, no filter, 7 at a time from the cursor before them.
    let (mut since, mut all) = (start, Vec::new());
    loop {
        let page =
            a.read_page(since, 7, MAX_PAGE_BYTES, &EventFilter::default(), Role::Admin).unwrap();
        assert!(page.events.len() <= 7);
        all.extend(page.events);
        since = page.next;
        if page.at_end == Some(true) {
            break;
        }
    }
    assert_eq!(all.iter().map(strip).collect::<Vec<_>>(), made, "every record once, in order");
    let offsets: Vec<u64> = all.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    // A filter (the host case-insensitively, and the event), 3 at a time.
    let filter = |host: &'static str, event: Option<&'static str>| {
        EventFilter::parse(move |n| match n {
            "host" => Some(host.to_string()),
            "event" => event.map(str::to_string),
            _ => None,
        })
    };
    let want: Vec<Value> = made.iter().filter(|m| m["host"] == "P-1").cloned().collect();
    let (mut since, mut got, mut pages) = (0, Vec::new(), 0);
    loop {
        let page = a.read_page(since, 3, MAX_PAGE_BYTES, &filter("p-1", None), Role::Read).unwrap();
        pages += 1;
        got.extend(page.events);
        since = page.next;
        if page.at_end == Some(true) {
            break;
        }
    }
    assert_eq!(got.iter().map(strip).collect::<Vec<_>>(), want);
    assert_eq!(pages, 4, "10 records, 3 a page: the fourth page reaches the end");
    // Newest first through `before` cursors: the same records reversed.
    let (mut before, mut back) = (None, Vec::new());
    loop {
        let page = a.read_newest(3, before, &filter("P-1", None), Role::Read).unwrap();
        assert!(page.events.len() <= 3);
        back.extend(page.events);
        match page.before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    back.reverse();
    assert_eq!(back, got, "backwards, the same records");
    // Both filters: host and event.
    let want: Vec<Value> =
        made.iter().filter(|m| m["host"] == "P-2" && m["event"] == "started").cloned().collect();
    assert!(!want.is_empty());
    let page =
        a.read_page(0, 100, MAX_PAGE_BYTES, &filter("p-2", Some("started")), Role::Read).unwrap();
    assert_eq!(page.events.iter().map(strip).collect::<Vec<_>>(), want);
    let newest = a.read_newest(1, None, &filter("p-2", Some("started")), Role::Read).unwrap();
    assert_eq!(strip(&newest.events[0]), *want.last().unwrap());
    assert!(newest.before.is_some(), "older ones remain");
    // Past the end: nothing, at the end.
    let end =
        a.read_page(since + 1000, 10, MAX_PAGE_BYTES, &filter("p-1", None), Role::Read).unwrap();
    assert!(end.events.is_empty() && end.at_end == Some(true));
}

/// Last boots: the newest verified boot wins, in memory and in the table, whichever order the
/// writes come in; unverified boots never count.
fn check_last_boots(db: &Db) {
    let a = &db.audit;
    a.note(&boot("lb-a", true, "install", None));
    a.note(&boot("lb-a", true, "local", None));
    a.note(&boot("lb-a", false, "install", None));
    a.note(&boot("lb-gone", true, "local", None));
    a.sync();
    let lb = LastBoots::default();
    lb.refresh(&db.b, |h| h.starts_with("lb-a"));
    assert_eq!(lb.get("lb-a").unwrap().answer, "local", "the newest verified one");
    assert!(lb.get("lb-gone").is_none(), "hosts outside the inventory are not kept");
    // The table's upsert: a row newer than the boot being written stays as it is.
    let future = bootforge::serve::util::now_ms() as i64 + 86_400_000;
    sql(
        &db.url,
        &format!(
            "UPDATE last_boots SET ms = {future}, record = '{{\"ms\":{future},\"answer\":\"later\"}}' WHERE host = 'lb-a'"
        ),
    );
    a.note(&boot("lb-a", true, "install", None));
    a.sync();
    let rows = last_boot_rows(&db.url);
    assert_eq!(rows["lb-a"].0, future, "an older boot replaced a newer one's time");
    assert_eq!(rows["lb-a"].1["answer"], "later", "an older boot replaced a newer one's record");
    // And an older row gives way, time and record together.
    sql(&db.url, "UPDATE last_boots SET ms = 1 WHERE host = 'lb-a'");
    let t0 = bootforge::serve::util::now_ms() as i64;
    a.note(&boot("lb-a", true, "install", Some(new_id())));
    a.sync();
    let rows = last_boot_rows(&db.url);
    assert!(rows["lb-a"].0 >= t0, "{:?}", rows["lb-a"]);
    assert_eq!(rows["lb-a"].1["answer"], "install");
    assert_eq!(rows["lb-a"].1["ms"].as_i64(), Some(rows["lb-a"].0), "record and time agree");
    let lb = LastBoots::default();
    lb.refresh(&db.a, |h| h == "lb-a");
    let got = lb.get("lb-a").unwrap();
    assert_eq!((got.at as i64, got.answer.as_str()), (rows["lb-a"].0, "install"));
    assert_eq!(got.peer, PEER);
}

/// Every check, on the database at `url`.
fn conformance(url: &str) {
    let db = Db::open(url);
    check_commit_together(&db);
    if db.two {
        check_lost_race_reruns(&db);
        check_may_decide_out_of_order(&db);
    }
    check_toggle_burst(&db);
    check_first_answer_burst(&db);
    check_may_decide(&db);
    check_may_decide_while_rescanning(&db);
    check_clock(&db);
    check_audit_paging(&db);
    check_last_boots(&db);
    check_states_and_a_corrupt_row(&db);
    check_inventory(&db);
    if db.two {
        check_cursor_waits_for_a_transaction_in_flight(&db);
    }
}

/// A SQLite state as a service leaves it: hosts in every phase, boots (verified or not), a
/// refusal, records of changes and notes.
fn fill_sqlite(dir: &std::path::Path) -> String {
    // Imported first: the old service's state folder of tests/serve_import.rs.
    support::copy_tree(&support::repo().join("tests/fixtures/import-v0/state"), dir);
    let url = Store::default_url(dir);
    let store = Arc::new(Store::open(&url, Some(dir)).unwrap());
    assert!(dir.join("audit.jsonl.imported").exists());
    let audit = Audit::open(store.clone()).unwrap();
    let boot_change = |host: &'static str| {
        rt().block_on(store.change(host, move |st: &mut HostState, now| {
            let (answer, write) = lifecycle::answer_boot(st, rules, now);
            let id = match answer {
                BootAnswer::Install { id, .. } => Some(id),
                BootAnswer::Local(_) => None,
            };
            let record = write.then(|| boot(host, true, "install", id.clone()));
            Ok::<_, String>(Change { value: id, write, record })
        }))
        .unwrap()
        .unwrap()
    };
    set_flag(&store, "copy-pending", "rocky");
    set_flag(&store, "copy-done", "ubuntu");
    let id = boot_change("copy-done").unwrap();
    rt().block_on(store.change("copy-done", move |st: &mut HostState, now| {
        let (_, write) = lifecycle::finish(st, &id, rules, now);
        Ok::<_, String>(Change { value: (), write, record: None })
    }))
    .unwrap()
    .unwrap();
    set_flag(&store, "copy-failed", "debian");
    let id = boot_change("copy-failed").unwrap();
    rt().block_on(store.change("copy-failed", move |st: &mut HostState, now| {
        let reason = lifecycle::failure_reason("disk \"sda\" not found\n");
        let (_, write) = lifecycle::fail(st, &id, reason.clone(), now);
        let record = Event::Failed {
            host: "copy-failed".into(),
            install: id.clone(),
            peer: peer(),
            reason,
            profile: None,
            duration_ms: None,
        };
        Ok::<_, String>(Change { value: (), write, record: Some(record) })
    }))
    .unwrap()
    .unwrap();
    set_flag(&store, "copy-first", FIRST_ANSWER);
    boot_change("copy-first");
    for i in 0..50 {
        audit.note(&boot("copy-pending", i % 3 != 0, "local", None));
    }
    audit.note(&Event::Denied {
        route: "/hosts",
        peer: peer(),
        status: 401,
        reason: "missing-token",
    });
    audit.note(&Event::Login {
        name: "ops".into(),
        role: Role::Reimage,
        via: Via::Token,
        peer: peer(),
    });
    audit.sync();
    drop(audit);
    url
}

/// `state copy` from a filled SQLite database to the (empty) server at `to_url`.
fn check_copy_from_sqlite(to_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let from_url = fill_sqlite(dir.path());
    assert_eq!(replace(&Store::connect(&from_url).unwrap(), INVENTORY, 0).unwrap(), 1);
    let to = Store::connect(to_url).unwrap();
    // A source whose log holds a record that does not parse: refused, naming it, and the target
    // stays empty (so the copy below may fill it).
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_url = fill_sqlite(bad_dir.path());
    sql(&bad_url, "UPDATE audit SET record = '{\"event\": \"bo' WHERE id = 3");
    let bad = Store::open_reader(&bad_url).unwrap();
    let err = import::copy(&bad, &to, |_| {}).unwrap_err().to_string();
    assert!(err.contains("audit record 3 ") && err.contains("nothing was copied"), "{err}");
    assert!(to.states_blocking().unwrap().is_empty(), "a failed copy left hosts behind");
    assert!(audit::export(&to, 0, 10).unwrap().0.is_empty(), "a failed copy left records");
    assert!(last_boot_rows(to_url).is_empty());
    sql(&from_url, "INSERT INTO fetch_progress (host, ms) VALUES ('c-commit', 1765000000123)");
    let from = Store::open_reader(&from_url).unwrap();
    let mut progress = 0;
    let moved = import::copy(&from, &to, |n| progress = n).unwrap();
    assert_eq!(
        fetch_rows(to_url),
        fetch_rows(&from_url),
        "each host's last fetch, so a fetching install does not look stalled on the copy"
    );
    assert_eq!(fetch_rows(to_url).get("c-commit"), Some(&1765000000123));
    let export = |s: &Store| -> Vec<Value> {
        let (lines, _) = audit::export(s, 0, 1_000_000).unwrap();
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (states, records) = (from.states_blocking().unwrap(), export(&from));
    assert_eq!(states.len(), 4 + 6, "four hosts, and the six of the imported folder");
    assert!(records.len() > 40, "{}", records.len());
    assert_eq!(moved.hosts, states.len());
    assert_eq!((moved.records, progress), (records.len(), records.len() as u64));
    assert_eq!(to.states_blocking().unwrap(), states, "the hosts, versions and times included");
    assert_eq!(export(&to), records, "the audit log, in order, with its times");
    let boots = last_boot_rows(&from_url);
    assert_eq!(boots.len(), 4 + 6, "{boots:?}");
    assert_eq!(moved.last_boots, boots.len());
    assert_eq!(last_boot_rows(to_url), boots);
    let inventory = from.inventory_blocking().unwrap();
    assert_eq!((inventory.version, moved.inventory_nodes), (1, 3));
    assert_eq!(to.inventory_blocking().unwrap(), inventory, "the inventory, its version included");
    // A second copy is refused: the target is not empty, and nothing changes.
    let err = import::copy(&from, &to, |_| {}).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(to.states_blocking().unwrap(), states);
    assert_eq!(export(&to), records);
    assert_eq!(last_boot_rows(to_url), boots);
    // The copy of a database filled from old files refuses those files again, changing nothing.
    let again = tempfile::tempdir().unwrap();
    support::copy_tree(&support::repo().join("tests/fixtures/import-v0/state"), again.path());
    let err = import::import(&to, again.path()).unwrap_err().to_string();
    assert!(err.contains("already holds an import"), "{err}");
    assert!(again.path().join("audit.jsonl").exists() && again.path().join("hosts").is_dir());
    assert_eq!(export(&to), records);
    assert_eq!(to.inventory_blocking().unwrap(), inventory);
    // The conformance checks that follow start from an empty inventory.
    sql(
        to_url,
        "DELETE FROM inventory_nodes; UPDATE inventory_meta SET version = 0, column_names = '[]'",
    );
}

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::default_url(dir.path());
    conformance(&url);
    // The next store over the file finds which hosts decide boots in the database.
    let store = Store::open(&url, None).unwrap();
    for (host, decides) in
        [("c-commit", true), ("c-first", true), ("c-decide-window", true), ("c-decide", false)]
    {
        assert_eq!(store.may_decide(host), decides, "{host}");
    }
}

#[test]
fn postgres_conforms() {
    let pg = Postgres::start();
    check_copy_from_sqlite(&pg.url());
    conformance(&pg.url());
}

#[test]
fn mariadb_conforms() {
    let db = Mariadb::start();
    check_copy_from_sqlite(&db.url());
    conformance(&db.url());
}

/// `may_decide` stays exact for a store's own commits while it rescans (as the reload thread
/// does every 100 ms): a rescan that read the table before a flag committed must not drop it.
fn check_may_decide_while_rescanning(db: &Db) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scans = Arc::new(AtomicUsize::new(0));
    let rescans = {
        let (a, stop, scans) = (db.a.clone(), stop.clone(), scans.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                a.rescan();
                scans.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let rt = rt();
    let mut missed = Vec::new();
    for i in 0..300 {
        let host = format!("c-scan-{i}");
        rt.block_on(db.a.change(&host, set_change(&host, "rocky"))).unwrap().unwrap();
        if !db.a.may_decide(&host) {
            missed.push(host);
        }
    }
    stop.store(true, Ordering::Relaxed);
    rescans.join().unwrap();
    assert!(scans.load(Ordering::Relaxed) > 10);
    assert!(missed.is_empty(), "flags this store committed, answered local: {missed:?}");
}

/// Two changes of one host in one store, the second ending first: a cancel that found nothing
/// to do must not make the host look undecided while a flag is about to commit, nor after.
/// (Needs a server: on SQLite the first change holds the only write connection.)
fn check_may_decide_out_of_order(db: &Db) {
    let host = "c-order";
    let (inside, wait_inside) = std::sync::mpsc::channel::<()>();
    let (release, wait_release) = std::sync::mpsc::channel::<()>();
    let wait_release = std::sync::Mutex::new(Some(wait_release));
    let rt = rt();
    let mut set = set_change(host, "rocky");
    let flag = rt.spawn({
        let a = db.a.clone();
        async move {
            a.change(host, move |st: &mut HostState, now| {
                // The first run holds its transaction open (row read, not written) until released.
                if let Some(w) = wait_release.lock().unwrap().take() {
                    inside.send(()).unwrap();
                    w.recv().unwrap();
                }
                set(st, now)
            })
            .await
        }
    });
    wait_inside.recv().unwrap();
    let cancel = rt.block_on(db.a.change(host, |st: &mut HostState, now| {
        let (outcome, write) = lifecycle::cancel(st, rules, now);
        Ok::<_, String>(Change { value: outcome, write, record: None })
    }));
    assert_eq!(cancel.unwrap().unwrap(), lifecycle::Cancel::NothingToCancel);
    release.send(()).unwrap();
    rt.block_on(flag).unwrap().unwrap().unwrap();
    assert!(db.a.read_blocking(host).unwrap().flag.is_some());
    assert!(db.a.may_decide(host), "this store's own flag, committed, looks undecided");
}

/// `states_blocking` lists every host, a row that does not parse as its own error; reading or
/// changing that host fails and writes nothing.
fn check_states_and_a_corrupt_row(db: &Db) {
    let host = "c-corrupt";
    set_flag(&db.a, host, "rocky");
    set_flag(&db.a, "c-sound", "debian");
    let before = records_of(&db.audit, host).len();
    sql(&db.url, "UPDATE hosts SET state = '{\"version\": 1, \"fl' WHERE name = 'c-corrupt'");
    let states = db.b.states_blocking().unwrap();
    let err = states[host].as_ref().unwrap_err();
    assert!(err.contains(host), "{err}");
    assert_eq!(states["c-sound"].as_ref().unwrap().flag.as_ref().unwrap().profile, "debian");
    assert!(matches!(db.b.read_blocking(host), Err(StoreError::Database(_))));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = rt().block_on(db.a.change(host, {
        let runs = runs.clone();
        move |st: &mut HostState, now| {
            runs.fetch_add(1, Ordering::Relaxed);
            let (_, write) = lifecycle::cancel(st, rules, now);
            Ok::<_, String>(Change { value: (), write, record: None })
        }
    }));
    assert!(matches!(r, Err(StoreError::Database(_))), "{:?}", r.map(|_| ()));
    assert_eq!(runs.load(Ordering::Relaxed), 0, "the closure ran on a state that does not parse");
    assert_eq!(records_of(&db.audit, host).len(), before);
    assert!(db.a.may_decide(host), "an unreadable row may decide: it is checked, and fails");
    // Put right, so that a later store over the database sees a sound table.
    sql(&db.url, "DELETE FROM hosts WHERE name = 'c-corrupt'");
}

/// An inventory with what CSV makes hard: a quoted comma and quotes, a free value starting with
/// `#` (a comment to the reader if written bare), a comment line, and an empty field.
const INVENTORY: &str = "hostname,ip,mac,notes\nn1,10.1.0.1/24,52:54:00:00:01:01,\"rack 1, \"\"top\"\"\"\n# a comment\nn2,10.1.0.2/24,,#2 spare\nN3,10.1.0.3/24,,plain\n";

fn inventory_record(inv: &bootforge::inventory::Inventory, version: u64) -> Event {
    Event::InventoryChanged {
        who: Actor { by: "ops".into(), role: Role::Admin, via: Via::Token },
        peer: Some(peer()),
        action: "upload",
        host: None,
        old_host: None,
        hosts: Vec::new(),
        nodes: inv.len(),
        version: Some(version),
    }
}

fn no_check(_: &bootforge::inventory::Inventory) -> Result<(), bootforge::inventory::ErrorReport> {
    Ok(())
}

fn replace(
    store: &Store,
    text: &str,
    expect: u64,
) -> Result<u64, bootforge::serve::store::inventory::WriteError> {
    let how = bootforge::serve::store::inventory::Replace {
        source: "nodes.csv",
        by: "ops",
        check: &no_check,
        record: &inventory_record,
    };
    store.replace_inventory_blocking(text, expect, &how).map(|w| w.version)
}

/// Each node's values as the templates see them (the validated form), in order.
fn nodes_of(text: &str) -> Vec<BTreeMap<String, String>> {
    let inv = bootforge::inventory::Inventory::check("x", text.as_bytes(), 100).unwrap();
    inv.nodes().iter().map(|n| n.template_vars()).collect()
}

/// The `inventory-changed` records after the first `skip` of them.
fn inventory_records(db: &Db, skip: usize) -> Vec<Value> {
    let (lines, _) = audit::export(&db.a, 0, 1_000_000).unwrap();
    lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "inventory-changed")
        .skip(skip)
        .collect()
}

/// The inventory in the database: a replace of a valid CSV is seen by the other store, reads
/// back as the same nodes, and is audited; a stale version is a conflict and an invalid CSV is
/// refused with line/column errors, neither changing anything; a console row edit (read at a
/// version, edit the text, replace against that version) changes only its row; of two writers
/// against one version exactly one wins.
fn check_inventory(db: &Db) {
    use bootforge::serve::console::editor::{self, Edit, Fields};
    use bootforge::serve::store::inventory::WriteError;
    // (A copied database's record of its source's inventory comes before these.)
    let base = inventory_records(db, 0).len();
    let empty = db.a.inventory_blocking().unwrap();
    assert_eq!((empty.version, empty.rows.len(), empty.csv()), (0, 0, String::new()));
    assert_eq!(replace(&db.a, INVENTORY, 0).unwrap(), 1);
    let got = db.b.inventory_blocking().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.changed_by.as_deref(), Some("ops"));
    assert_eq!(got.columns, ["hostname", "ip", "mac", "notes"]);
    let names: Vec<_> = got.rows.iter().map(|r| r.hostname.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "validated names, in order");
    assert_eq!(got.rows[0].fields["notes"], "rack 1, \"top\"");
    assert_eq!(got.rows[1].fields["notes"], "#2 spare", "a free value starting with #");
    assert_eq!(got.rows[2].fields["hostname"], "N3", "fields as written");
    assert_eq!(nodes_of(&got.csv()), nodes_of(INVENTORY), "the CSV read back is the same nodes");
    assert_eq!(db.b.inventory_version_blocking().unwrap(), 1);
    let records = inventory_records(db, base);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0]["version"].as_u64(), records[0]["nodes"].as_u64()), (Some(1), Some(3)));
    assert!(!records[0].to_string().contains("rack"), "no field value in the audit record");

    // A stale version: a conflict naming the current one; nothing changes.
    let other = INVENTORY.replace("plain", "changed");
    match replace(&db.b, &other, 0) {
        Err(WriteError::Conflict { current: 1 }) => {}
        e => panic!("expected a conflict at version 1, got {e:?}"),
    }
    assert_eq!(db.a.inventory_blocking().unwrap(), got);

    // Invalid, against the right version: every error by line and column; nothing changes.
    let bad = "hostname,ip,notes\nn1,10.1.0.1/24,x\nn2,10.1.0.300/24,y\nbad_name,10.1.0.4/24,z\n";
    match replace(&db.a, bad, 1) {
        Err(WriteError::Invalid(report)) => {
            let at: Vec<_> = report.errors.iter().map(|e| (e.line, e.column.as_str())).collect();
            assert_eq!(at, [(3, "ip"), (4, "hostname")], "{report:?}");
            assert_eq!(report.errors[0].source, "nodes.csv");
        }
        e => panic!("expected line/column errors, got {e:?}"),
    }
    assert_eq!(db.b.inventory_blocking().unwrap(), got);
    assert_eq!(inventory_records(db, base).len(), 1, "nothing audited for a refused write");

    // A row edit as the console makes it: only that row changes, the others keep their values.
    let current = db.b.inventory_blocking().unwrap();
    let fields: Fields = [("ip", "10.1.0.22/24")].into_iter().collect();
    let applied =
        editor::apply(&current.csv(), &Edit::Change { host: "n2".into(), fields }).unwrap();
    assert_eq!(replace(&db.b, &applied.text, current.version).unwrap(), 2);
    let after = db.a.inventory_blocking().unwrap();
    assert_eq!(after.rows[1].fields["ip"], "10.1.0.22/24");
    assert_eq!((&after.rows[0], &after.rows[2]), (&got.rows[0], &got.rows[2]));
    // Add at the end, remove in the middle, rename: the order follows the text.
    let add: Fields = [("hostname", "n4"), ("ip", "10.1.0.4/24")].into_iter().collect();
    let text = editor::apply(&after.csv(), &Edit::Add(add)).unwrap().text;
    let text = editor::apply(&text, &Edit::Remove { host: "n2".into() }).unwrap().text;
    let rename: Fields = [("hostname", "n0")].into_iter().collect();
    let text =
        editor::apply(&text, &Edit::Change { host: "n1".into(), fields: rename }).unwrap().text;
    assert_eq!(replace(&db.a, &text, 2).unwrap(), 3);
    let after = db.b.inventory_blocking().unwrap();
    let names: Vec<_> = after.rows.iter().map(|r| r.hostname.as_str()).collect();
    assert_eq!(names, ["n0", "n3", "n4"]);
    assert_eq!(nodes_of(&after.csv()), nodes_of(&text));

    // Two writers against one version (two replicas): exactly one commits.
    let texts = [INVENTORY.replace("plain", "by-a"), INVENTORY.replace("plain", "by-b")];
    let results: Vec<_> = std::thread::scope(|s| {
        let a = s.spawn(|| replace(&db.a, &texts[0], 3));
        let b = s.spawn(|| replace(&db.b, &texts[1], 3));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(results.iter().any(|r| matches!(r, Err(WriteError::Conflict { current: 4 }))));
    let last = db.a.inventory_blocking().unwrap();
    assert_eq!(last.version, 4);
    let winner = if results[0].is_ok() { "by-a" } else { "by-b" };
    assert_eq!(last.rows[2].fields["notes"], winner);
    let records = inventory_records(db, base);
    let versions: Vec<_> = records.iter().map(|r| r["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4], "one record per committed write");
}

/// On the servers, transactions commit in any order, so a record id may be visible before a
/// smaller one that a transaction still holds. A reader following the log by cursor (`/events
/// ?after=`, `bootforge audit export --follow`) must stop before such a gap and see both once it
/// commits; a gap that stays (a rolled-back insert) is passed after `SETTLE_MS`.
fn check_cursor_waits_for_a_transaction_in_flight(db: &Db) {
    use sqlx::{Connection, Row};
    let tail = |since: u64| {
        let page =
            db.audit.read_page(since, 1000, MAX_PAGE_BYTES, &Default::default(), Role::Admin);
        let page = page.unwrap();
        let hosts: Vec<String> =
            page.events.iter().map(|e| e["host"].as_str().unwrap_or("").to_string()).collect();
        (hosts, page.next)
    };
    let exported = |since: u64| {
        let (lines, next) = audit::export(&db.a, since, 1000).unwrap();
        let hosts: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["host"].as_str().unwrap_or("").to_string()
            })
            .collect();
        (hosts, next)
    };
    set_flag(&db.a, "c-gap-0", "rocky");
    // Past the settling time, so the records so far are all settled.
    std::thread::sleep(std::time::Duration::from_millis(audit::SETTLE_MS as u64 + 500));
    let (_, start) = tail(0);
    let (_, start_export) = exported(0);
    assert_eq!(start, start_export);

    let runtime = rt();
    let url = db.url.clone();
    // A transaction that takes the next id and holds it while a later record commits.
    let mut conn = runtime.block_on(async {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&url).await.unwrap()
    });
    let record: String = runtime.block_on(async {
        let row = sqlx::query("SELECT record FROM audit ORDER BY id DESC LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        row.get::<String, _>(0).replace("c-gap-0", "c-gap-held")
    });
    let insert = if url.starts_with("postgres") {
        "INSERT INTO audit (ms, event, host, record) VALUES ($1, 'flag-set', 'c-gap-held', $2)"
    } else {
        "INSERT INTO audit (ms, event, host, record) VALUES (?, 'flag-set', 'c-gap-held', ?)"
    };
    let open = |conn: &mut sqlx::AnyConnection| {
        runtime.block_on(async {
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            sqlx::query(insert)
                .bind(bootforge::serve::util::now_ms() as i64)
                .bind(record.clone())
                .execute(&mut *conn)
                .await
                .unwrap();
        })
    };
    open(&mut conn);
    set_flag(&db.b, "c-gap-1", "rocky");
    for (what, (hosts, next)) in [("read_page", tail(start)), ("export", exported(start))] {
        assert!(hosts.is_empty(), "{what} went past a transaction in flight: {hosts:?}");
        assert_eq!(next, start, "{what}");
    }
    runtime.block_on(async { sqlx::query("COMMIT").execute(&mut conn).await.unwrap() });
    for (what, (hosts, _)) in [("read_page", tail(start)), ("export", exported(start))] {
        assert_eq!(hosts, ["c-gap-held", "c-gap-1"], "{what}");
    }

    // A rolled-back insert leaves a gap for good: held back for the settling time, then passed.
    let (_, start) = tail(start);
    open(&mut conn);
    runtime.block_on(async { sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap() });
    set_flag(&db.a, "c-gap-2", "rocky");
    assert_eq!(tail(start).0, Vec::<String>::new(), "a fresh gap is waited on");
    std::thread::sleep(std::time::Duration::from_millis(audit::SETTLE_MS as u64 + 500));
    assert_eq!(tail(start).0, ["c-gap-2"], "a settled gap is passed");
    assert_eq!(exported(start).0, ["c-gap-2"]);
}
