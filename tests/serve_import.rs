//! The move from the old state files into the database, proved on a fixture that the service
//! BEFORE the database wrote (commit 47657cf): `tests/fixtures/import-v0/state/` holds its
//! `hosts/*.json` and `audit.jsonl`, and next to it are that old service's own answers to
//! `GET /hosts`, `GET /hosts/H` and `GET /events?limit=1000`. `scripts/make-import-fixture` says
//! exactly how the fixture was made (the scenario, the configuration, the old binary).
//!
//! Today's `serve`, started over a copy of that folder, imports it and must answer the same
//! `/hosts`, `/hosts/H` and `/events`. The one legitimate difference: `/events` cursors (each
//! record's `offset`, and the page's `next` and `scanned`) were byte offsets into `audit.jsonl`;
//! they are record ids now. Everything else is compared as it was (JSON values, so key order
//! does not matter; the old service printed keys sorted).
//!
//! Also: the old files are renamed aside, never deleted; old files put back make the next start
//! fail ("already holds an import") without touching the database or the files; `bootforge
//! state import --state-dir` gives the same result as the import at start; a corrupt host file
//! makes the import fail naming the file, with nothing imported and nothing renamed.

#[path = "serve_support/mod.rs"]
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/import-v0")
}

fn saved(name: &str) -> Value {
    let path = fixture().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A test folder configured as the fixture's service was (inventory, profiles, tokens, node
/// secret), its state folder a copy of the fixture's.
fn folder() -> (tempfile::TempDir, bootforge::serve::Config) {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), true);
    copy_tree(&fixture().join("state"), &config.state_dir);
    (dir, config)
}

fn get(base: &str, path: &str) -> Value {
    let r = call("GET", &format!("{base}{path}"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// Fields a host view gained after the fixture was recorded (issue 17: the BMC's hardware
/// state and the open install's progress, which depends on the clock): the views must be the
/// old service's in every other field.
const NEWER_HOST_FIELDS: &[&str] = &["hardware", "stalled", "progress_ms", "stall_after_s"];

fn without_newer_fields(mut view: Value) -> Value {
    let mut strip = |host: &mut Value| {
        for field in NEWER_HOST_FIELDS {
            assert!(host.get(field).is_some(), "the view has {field}: {host}");
            host.as_object_mut().unwrap().remove(*field);
        }
    };
    match view.get_mut("hosts").and_then(Value::as_array_mut) {
        Some(hosts) => hosts.iter_mut().for_each(&mut strip),
        None => strip(&mut view),
    }
    view
}

/// `/hosts`, `/hosts/H` and `/events` of the service at `base` are the old service's.
fn assert_answers_as_before(base: &str) {
    assert_eq!(without_newer_fields(get(base, "/hosts")), saved("hosts.json"), "GET /hosts");
    for h in ["node01", "node02", "rocky1", "ubu1", "hv1", "deb1"] {
        let view = without_newer_fields(get(base, &format!("/hosts/{h}")));
        assert_eq!(view, saved(&format!("host-{h}.json")), "{h}");
    }
    let old = saved("events.json");
    let new = get(base, "/events?limit=1000");
    // Cursors were byte offsets into audit.jsonl; they are record ids now (see the module
    // documentation). Every other field, of the page and of each record, is as it was.
    let strip = |page: &Value| {
        let mut page = page.clone();
        let o = page.as_object_mut().unwrap();
        o.remove("next");
        o.remove("scanned");
        for e in o["events"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("offset").expect("each record has its cursor");
        }
        page
    };
    let records = old["events"].as_array().unwrap().len();
    assert!(records >= 25, "the fixture holds a real log ({records} records)");
    assert_eq!(strip(&new), strip(&old), "GET /events");
    let ids: Vec<u64> =
        new["events"].as_array().unwrap().iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "records in the old log's order: {ids:?}");
    assert_eq!(new["next"].as_u64(), Some(ids.last().unwrap() + 1));
    assert_eq!(new["scanned"].as_u64(), Some(records as u64));
    // Paging by the new cursors finds the same records.
    let first = get(base, "/events?limit=10");
    let rest = get(base, &format!("/events?limit=1000&since={}", first["next"]));
    let mut paged = first["events"].as_array().unwrap().clone();
    paged.extend(rest["events"].as_array().unwrap().iter().cloned());
    assert_eq!(&paged, new["events"].as_array().unwrap());
}

/// Every file under `dir`, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else {
            // A database's side files (-wal, -shm) may go while this reads: the store of a
            // failed start closes its connections in the background.
            match std::fs::read(&p) {
                Ok(bytes) => out.push((p.clone(), bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", p.display()),
            }
        }
    }
    out.sort();
    out
}

/// The old files are renamed aside, with their bytes, and gone from their old places.
fn assert_renamed_aside(state: &Path) {
    assert!(!state.join("hosts").exists(), "hosts/ is still there");
    assert!(!state.join("audit.jsonl").exists(), "audit.jsonl is still there");
    let old = fixture().join("state");
    assert_eq!(
        std::fs::read(state.join("audit.jsonl.imported")).unwrap(),
        std::fs::read(old.join("audit.jsonl")).unwrap()
    );
    let kept: Vec<_> = tree(&state.join("hosts.imported"))
        .into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_owned(), b))
        .collect();
    let want: Vec<_> = tree(&old.join("hosts"))
        .into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_owned(), b))
        .collect();
    assert_eq!(kept, want);
}

fn counts(state: &Path) -> (i64, i64, i64) {
    (
        sql_count(state, "SELECT COUNT(*) FROM hosts"),
        sql_count(state, "SELECT COUNT(*) FROM audit"),
        sql_count(state, "SELECT COUNT(*) FROM last_boots"),
    )
}

#[test]
fn a_state_folder_of_the_file_store_imports_to_the_same_answers() {
    let (dir, config) = folder();
    let state = config.state_dir.clone();
    let mut f = start_with(dir, config.clone());
    assert_answers_as_before(&f.base);
    f.stop();
    assert_renamed_aside(&state);
    let hosts = std::fs::read_dir(fixture().join("state/hosts")).unwrap().count() as i64;
    let (h, a, b) = counts(&state);
    assert_eq!(h, hosts);
    assert_eq!(a as usize, saved("events.json")["events"].as_array().unwrap().len());
    assert_eq!(b, 6, "node01, node02, rocky1, ubu1, hv1, hv2 had a verified boot");

    // Old files back in the state folder: the next start refuses them and changes nothing.
    copy_tree(&fixture().join("state/hosts"), &state.join("hosts"));
    std::fs::copy(fixture().join("state/audit.jsonl"), state.join("audit.jsonl")).unwrap();
    let (log, files) = (audit_log(&state), tree(&state));
    let err = match bootforge::serve::Server::start(config.clone()) {
        Ok(_) => panic!("started over old files after an import"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("already holds an import"), "{err}");
    assert!(err.contains("duplicate the audit log"), "the message says why: {err}");
    assert_eq!(audit_log(&state), log, "the audit log changed");
    assert_eq!(counts(&state), (h, a, b));
    let now: Vec<_> = tree(&state).into_iter().filter(|(p, _)| !is_db(p)).collect();
    let before: Vec<_> = files.into_iter().filter(|(p, _)| !is_db(p)).collect();
    assert_eq!(now, before, "the state folder's files changed");
}

/// The database's own files (which SQLite may touch while only reading).
fn is_db(p: &Path) -> bool {
    p.file_name().unwrap().to_string_lossy().starts_with(bootforge::serve::store::SQLITE_FILE)
}

fn state_import(state: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["state", "import", "--state-dir"])
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn state_import_gives_the_same_answers() {
    let (dir, config) = folder();
    let out = state_import(&config.state_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_renamed_aside(&config.state_dir);
    // The service then starts over the database, with nothing left to import.
    let mut f = start_with(dir, config);
    assert_answers_as_before(&f.base);
    f.stop();
}

#[test]
fn a_corrupt_host_file_imports_nothing_and_names_the_file() {
    let (dir, config) = folder();
    let state = config.state_dir.clone();
    let bad = state.join("hosts/rocky1.json");
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap(); // a torn write
    let files = tree(&state);
    let out = state_import(&state);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&bad.display().to_string()), "names the file: {stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    let check_nothing = || {
        assert_eq!(counts(&state), (0, 0, 0), "something was imported");
        let now: Vec<_> = tree(&state).into_iter().filter(|(p, _)| !is_db(p)).collect();
        assert_eq!(now, files, "the old files moved or changed");
    };
    check_nothing();
    // The service's start refuses it the same way.
    let err = match bootforge::serve::Server::start(config) {
        Ok(_) => panic!("started over a corrupt host file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&bad.display().to_string()), "{err}");
    check_nothing();
    drop(dir);
}

/// Old files dropped into the folder of a database already in use (a service started afresh,
/// then an old backup restored next to it) are refused: importing would turn hosts' versions
/// back and mix old records in after new ones. Nothing changes.
#[test]
fn old_files_are_not_imported_over_a_database_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), true);
    let mut f = start_with(dir, config);
    let r = call(
        "PUT",
        &f.url("/hosts/node02/reimage"),
        Some(REIMAGE_TOKEN),
        Some(r#"{"profile":"e2e"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let config = f.config.clone();
    f.stop();
    copy_tree(&fixture().join("state"), &config.state_dir);
    let before = counts(&config.state_dir);
    let err = match bootforge::serve::Server::start(config.clone()) {
        Ok(_) => panic!("started and imported over a database in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("already holds state") && err.contains("Nothing was imported"), "{err}");
    assert_eq!(counts(&config.state_dir), before, "nothing was written");
    assert!(config.state_dir.join("hosts").is_dir(), "the old files stay where they were");
    assert!(config.state_dir.join("audit.jsonl").is_file());
}
