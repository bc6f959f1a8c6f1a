//! `GET /events` against a large audit log (issue 13): each page reads a bounded amount of log
//! and says how far it got, following the cursors still finds every record; and what a refused
//! login typed as its name is shown to `admin` only.
//!
//! The log is written before the service starts by the service's own audit writer
//! ([`Audit`]), so every record has the real format.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::domain::actor::Via;
use bootforge::serve::domain::event::Event;
use bootforge::serve::store::audit::{Audit, MAX_SCAN_BYTES};
use serde_json::Value;
use std::net::IpAddr;
use support::*;

/// What someone typed into the name field of the login form: a password.
const TYPED_NAME: &str = "Correct-Horse-Battery-9";

/// A service whose audit log holds `far-first`'s record, a refused login, about 12 MiB of other
/// records, then `far-last`'s.
fn start_over_a_big_log() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false);
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let audit = Audit::open(&config.state_dir).unwrap();
    let peer: IpAddr = "10.0.0.7".parse().unwrap();
    let done = |host: String| Event::Done { host, install: "0".repeat(32), peer };
    audit.note(&done("far-first".into()));
    audit.note(&Event::LoginFailed {
        name: Some(TYPED_NAME.into()),
        via: Via::LdapSession,
        peer,
        reason: "bad-credentials",
    });
    for i in 0..100_000 {
        audit.note(&done(format!("filler-{i:06}")));
        if i % 4096 == 0 {
            audit.sync();
        }
    }
    audit.note(&done("far-last".into()));
    audit.sync();
    assert_eq!(audit.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(audit);
    let size = std::fs::metadata(config.state_dir.join("audit.jsonl")).unwrap().len();
    assert!(size > 2 * MAX_SCAN_BYTES as u64, "the log must span several pages: {size}");
    start_with(dir, config)
}

fn events(f: &Fixture, query: &str, token: &str) -> Value {
    let r = call("GET", &f.url(&format!("/events?{query}")), Some(token), None);
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    r.json()
}

/// A filter that matches nothing near the start answers at once with how far it read and a
/// cursor; following the cursors (forwards with `next`, backwards with `before`) reaches the
/// records at the far ends, each page within the budget.
#[test]
fn filtered_pages_are_bounded_and_cursors_reach_the_far_end() {
    let f = start_over_a_big_log();
    let budget = MAX_SCAN_BYTES as u64 + 1024;

    let first = events(&f, "host=far-last&limit=10", READ_TOKEN);
    assert_eq!(first["events"].as_array().unwrap().len(), 0, "{first}");
    let scanned = first["scanned"].as_u64().expect("the page says how far it read");
    assert!(scanned > 0 && scanned <= budget, "{first}");
    assert_eq!(first["at_end"], false, "{first}");
    assert_eq!(first["next"].as_u64(), Some(scanned), "from 0, next is how far it read");
    let (mut since, mut pages, mut found) = (scanned, 1, Vec::new());
    loop {
        let page = events(&f, &format!("host=far-last&limit=10&since={since}"), READ_TOKEN);
        pages += 1;
        assert!(page["scanned"].as_u64().unwrap() <= budget, "{}", page["scanned"]);
        found.extend(page["events"].as_array().unwrap().iter().cloned());
        since = page["next"].as_u64().unwrap();
        if page["at_end"] == true {
            break;
        }
        assert!(pages < 50, "the cursors do not advance");
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["host"], "far-last");

    // Newest first, as the console pages: `before` leads back to the log's first record.
    let (mut before, mut pages, mut found) = (None::<u64>, 0, Vec::new());
    loop {
        let mut query = "order=newest&host=far-first&limit=10".to_string();
        if let Some(b) = before {
            query += &format!("&before={b}");
        }
        let page = events(&f, &query, READ_TOKEN);
        pages += 1;
        assert!(page["scanned"].as_u64().unwrap() <= budget, "{}", page["scanned"]);
        found.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
        assert!(pages < 50, "the cursors do not advance");
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["host"], "far-first");
    assert_eq!(found[0]["offset"], 0);
}

/// The name a refused login typed is for `admin` only: other roles get the record without
/// it, and cannot find it with a `by` filter either.
#[test]
fn refused_login_names_are_shown_to_admin_only() {
    let f = start_over_a_big_log();
    let failed = |token: &str, filter: &str| -> Vec<Value> {
        let page = events(&f, &format!("limit=10&event=login-failed{filter}"), token);
        page["events"].as_array().unwrap().clone()
    };
    for token in [READ_TOKEN, REIMAGE_TOKEN] {
        let records = failed(token, "");
        assert_eq!(records.len(), 1, "the refusal itself is shown");
        assert_eq!(records[0]["reason"], "bad-credentials");
        assert!(records[0].get("name").is_none(), "{}", records[0]);
        assert!(failed(token, &format!("&by={TYPED_NAME}")).is_empty(), "by= cannot probe it");
        // Nor the unfiltered pages, forwards or backwards.
        for query in ["limit=5", "order=newest&before=4096&limit=5"] {
            let text = events(&f, query, token).to_string();
            assert!(!text.contains(TYPED_NAME), "{query}: {text}");
        }
    }
    let records = failed(ADMIN_TOKEN, "");
    assert_eq!(records[0]["name"], TYPED_NAME);
    assert_eq!(failed(ADMIN_TOKEN, &format!("&by={TYPED_NAME}")).len(), 1);
}
