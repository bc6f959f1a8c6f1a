//! `GET /events` against a large audit log (issue 13, on the database since issue 15): each page
//! reads a bounded number of records and says how far it got, following the cursors still finds
//! every record, the indexed filters (`host`, `event`) find a far record at once; and what a
//! refused login typed as its name is shown to `admin` only.
//!
//! The log is written before the service starts by the service's own audit writer
//! ([`Audit`]) into the service's own database, so every record has the real format.

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::domain::actor::Via;
use bootforge::serve::domain::event::Event;
use bootforge::serve::store::audit::{Audit, MAX_SCAN_RECORDS};
use bootforge::serve::store::Store;
use serde_json::Value;
use std::net::IpAddr;
use support::*;

/// What someone typed into the name field of the login form: a password.
const TYPED_NAME: &str = "Correct-Horse-Battery-9";

/// Records in the log besides the two far ones and the refused login.
const FILLER: usize = 100_000;

/// A service whose audit log holds `far-first`'s record, a refused login, 100,000 other
/// records, then `far-last`'s.
fn start_over_a_big_log() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), false);
    let store = std::sync::Arc::new(Store::open(&config.database_url(), None).unwrap());
    let audit = Audit::open(store).unwrap();
    let peer: IpAddr = "10.0.0.7".parse().unwrap();
    let done = |host: String| Event::Done {
        host,
        install: "0".repeat(32),
        peer,
        profile: None,
        duration_ms: None,
    };
    audit.note(&done("far-first".into()));
    audit.note(&Event::LoginFailed {
        name: Some(TYPED_NAME.into()),
        via: Via::LdapSession,
        peer,
        reason: "bad-credentials",
    });
    for i in 0..FILLER {
        audit.note(&done(format!("filler-{i:06}")));
        if i % 4096 == 0 {
            audit.sync();
        }
    }
    audit.note(&done("far-last".into()));
    audit.sync();
    assert_eq!(audit.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(audit); // and the store with it: the service takes the database over
    const { assert!(FILLER > 2 * MAX_SCAN_RECORDS, "the log must span several pages") };
    start_with(dir, config)
}

fn events(f: &Fixture, query: &str, token: &str) -> Value {
    let r = call("GET", &f.url(&format!("/events?{query}")), Some(token), None);
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    r.json()
}

/// A filter the database cannot index (`by`) that matches nothing answers at once with how
/// far it read and a cursor; following the cursors (forwards with `next`, backwards with
/// `before`) walks the whole log, each page within the budget. The indexed filters find the
/// records at the far ends in one page.
#[test]
fn filtered_pages_are_bounded_and_cursors_reach_the_far_end() {
    let f = start_over_a_big_log();
    let budget = MAX_SCAN_RECORDS as u64;

    let first = events(&f, "by=nobody-at-all&limit=10", READ_TOKEN);
    assert_eq!(first["events"].as_array().unwrap().len(), 0, "{first}");
    let scanned = first["scanned"].as_u64().expect("the page says how far it read");
    assert_eq!(scanned, budget, "{first}");
    assert_eq!(first["at_end"], false, "{first}");
    assert_eq!(first["next"].as_u64(), Some(scanned + 1), "record ids count from 1");
    let (mut since, mut pages, mut read) = (first["next"].as_u64().unwrap(), 1, scanned);
    loop {
        let page = events(&f, &format!("by=nobody-at-all&limit=10&since={since}"), READ_TOKEN);
        pages += 1;
        assert!(page["scanned"].as_u64().unwrap() <= budget, "{}", page["scanned"]);
        assert!(page["events"].as_array().unwrap().is_empty());
        read += page["scanned"].as_u64().unwrap();
        since = page["next"].as_u64().unwrap();
        if page["at_end"] == true {
            break;
        }
        assert!(pages < 50, "the cursors do not advance");
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(read, FILLER as u64 + 3, "every record was read once");

    let last = events(&f, "host=far-last&limit=10", READ_TOKEN);
    assert_eq!(last["events"][0]["host"], "far-last", "{last}");
    assert_eq!(last["scanned"], 1, "the index found it without reading the log: {last}");
    assert_eq!(last["at_end"], true);

    // Newest first, as the console pages: `before` leads back to the log's first record.
    let (mut before, mut pages) = (None::<u64>, 0);
    loop {
        let mut query = "order=newest&by=nobody-at-all&limit=10".to_string();
        if let Some(b) = before {
            query += &format!("&before={b}");
        }
        let page = events(&f, &query, READ_TOKEN);
        pages += 1;
        assert!(page["scanned"].as_u64().unwrap() <= budget, "{}", page["scanned"]);
        match page["before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
        assert!(pages < 50, "the cursors do not advance");
    }
    assert!(pages >= 3, "{pages} pages");
    let first = events(&f, "order=newest&host=far-first&limit=10", READ_TOKEN);
    assert_eq!(first["events"][0]["host"], "far-first", "{first}");
    assert_eq!(first["events"][0]["offset"], 1);
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
