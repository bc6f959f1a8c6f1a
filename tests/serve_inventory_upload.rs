//! Changing the inventory over HTTP (role admin): replacing it by upload (`POST
//! /inventory/check`, `PUT /inventory`) and editing one row (`/inventory/hosts`). Every error is
//! reported by line and column (the first 100, with their total) before anything is replaced;
//! every change names the version it was made against; an invalid or refused change leaves the
//! CSV byte-identical; a row edit touches no other row; the audit names what was written.

#[path = "serve_support/mod.rs"]
mod support;

use support::*;

#[test]
fn uploads_are_checked_whole_and_replace_only_when_valid() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let before = std::fs::read(&csv_path).unwrap();
    // Two bad rows, after a comment: both reported, each on its own line and column.
    let bad = "hostname,ip,mac,profile\n# rack 9\nn9a,10.0.9.1/24,,e2e\nn9b,10.0.9.300/24,,e2e\nn9c,10.0.9.3/24,zz:zz,e2e\n";
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(bad));
    assert_eq!(r.status, 422, "{}", r.body);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    let at: Vec<(u64, String)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(at, vec![(4, "ip".to_string()), (5, "mac".to_string())], "{}", r.body);
    assert_eq!(std::fs::read(&csv_path).unwrap(), before, "a check writes nothing");

    // The same upload as a replacement: refused, nothing written, the old inventory still served.
    let put = f.url(&format!("/inventory?version={}", version(&f)));
    let r = call("PUT", &put, Some(ADMIN_TOKEN), Some(bad));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("nothing was written"), "{}", r.body);
    assert_eq!(std::fs::read(&csv_path).unwrap(), before);
    assert_eq!(call("GET", &f.url("/hosts/n9a"), Some(READ_TOKEN), None).status, 404);

    // Only admins may replace or check it.
    let good = bad.replace("10.0.9.300", "10.0.9.2").replace("zz:zz", "");
    for token in [READ_TOKEN, REIMAGE_TOKEN] {
        assert_eq!(call("PUT", &put, Some(token), Some(&good)).status, 403);
        assert_eq!(call("POST", &f.url("/inventory/check"), Some(token), Some(&good)).status, 403);
    }
    assert_eq!(std::fs::read(&csv_path).unwrap(), before);

    // A valid upload replaces the file byte for byte and is served at once.
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(&good));
    assert_eq!((r.status, r.json()["nodes"].as_u64()), (200, Some(3)), "{}", r.body);
    let checked_against = r.json()["version"].as_str().unwrap().to_string();
    let put = f.url(&format!("/inventory?version={checked_against}"));
    let r = call("PUT", &put, Some(ADMIN_TOKEN), Some(&good));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), good);
    assert_eq!(call("GET", &f.url("/hosts/n9b"), Some(READ_TOKEN), None).status, 200);
    assert_eq!(call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).status, 404);
    f.stop();
}

/// The version of the inventory as `GET /inventory` answers it.
fn version(f: &Fixture) -> String {
    let r = call("GET", &f.url("/inventory"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["version"].as_str().unwrap().to_string()
}

fn audit_log(f: &Fixture) -> String {
    // Notes are written by a writer thread; /events waits for it, so ask there first.
    call("GET", &f.url("/events?limit=1"), Some(READ_TOKEN), None);
    support::audit_log(&f.dir.path().join("state"))
}

/// The audit records of inventory changes, as written (one JSON line each).
fn inventory_records(f: &Fixture) -> Vec<String> {
    audit_log(f).lines().filter(|l| l.contains("\"inventory-changed\"")).map(String::from).collect()
}

/// A free column holding a stray `"` inside an unquoted field (`5" disk`) is plain text to the
/// csv reader and `bootforge check`; the console's editor once read it as an opening quote, so
/// removing node02 removed every row up to the next `"` (here node01, flagged for reimage, and
/// two more) while the audit said "remove node02".
#[test]
fn removing_a_host_next_to_a_stray_quote_removes_only_its_row() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let mut lines: Vec<String> = INVENTORY.lines().map(String::from).collect();
    // node02 first, with `5" disk`; then node01 (to be flagged); rocky1 gets `2" ssd`.
    lines.swap(1, 2);
    lines[1] = lines[1].replacen(",,,,,,,,,,", ",,5\" disk,,,,,,,,", 1);
    let rocky = lines.iter().position(|l| l.starts_with("rocky1,")).unwrap();
    lines[rocky] = lines[rocky].replace(",sda,", ",2\" ssd,");
    let csv = lines.join("\n") + "\n";
    assert!(csv.contains("node02,10.0.0.12/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:02,,5\" disk,"));
    let g = generation(&f);
    std::fs::write(&csv_path, &csv).unwrap();
    let r = call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(generation(&f) > g, "the new inventory is loaded");
    assert_eq!(call("GET", &f.url("/hosts/rocky1"), Some(READ_TOKEN), None).status, 200);
    let body = r#"{"profile":"e2e"}"#;
    let r = call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    let node01 = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(
        (node01["flagged"].as_bool(), node01["phase"].as_str()),
        (Some(true), Some("pending"))
    );

    let url = f.url(&format!("/inventory/hosts/node02?version={}", version(&f)));
    let r = call("DELETE", &url, Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let row = "node02,10.0.0.12/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:02,,5\" disk,,,,,,,,\n";
    assert!(csv.contains(row));
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), csv.replacen(row, "", 1));
    assert_eq!(r.json()["nodes"], 6, "{}", r.body);
    for kept in ["node01", "hv1", "hv2", "rocky1", "ubu1", "deb1"] {
        assert_eq!(
            call("GET", &f.url(&format!("/hosts/{kept}")), Some(READ_TOKEN), None).status,
            200,
            "{kept}"
        );
    }
    assert_eq!(call("GET", &f.url("/hosts/node02"), Some(READ_TOKEN), None).status, 404);
    let after = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(after["flagged"], node01["flagged"], "{after}");
    assert_eq!(after["phase"], node01["phase"], "{after}");
    assert!(node01["flag"].is_object(), "{node01}");
    assert_eq!(after["flag"], node01["flag"], "the flag and its install id stay: {after}");
    let log = audit_log(&f);
    assert!(!log.contains("flag-orphaned"), "no flag was ended: {log}");
    let records = inventory_records(&f);
    assert_eq!(records.len(), 1, "{records:?}");
    let record: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(
        (record["action"].as_str(), record["host"].as_str()),
        (Some("remove"), Some("node02"))
    );
    assert_eq!(record["nodes"], 6);
    f.stop();
}

fn generation(f: &Fixture) -> u64 {
    call("GET", &f.url("/healthz"), None, None).json()["generation"].as_u64().unwrap()
}

/// `{"hostname": "web-01", "hostname ": "backdoor-02"}` added backdoor-02 and was audited as
/// web-01, and a huge value made a 60 KB audit record. A column given twice (by any spelling,
/// or exactly) or unknown is refused with its name, cut; the audit names the row as written and
/// stays small.
#[test]
fn an_added_row_is_refused_when_ambiguous_and_audited_as_written() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let before = std::fs::read(&csv_path).unwrap();
    let v = version(&f);
    let add = f.url("/inventory/hosts");
    for body in [
        format!(
            r#"{{"fields": {{"hostname": "web-01", "hostname ": "backdoor-02", "ip": "10.0.0.61/24"}}, "version": "{v}"}}"#
        ),
        format!(
            r#"{{"fields": {{"hostname": "web-01", "HOSTNAME": "backdoor-02", "ip": "10.0.0.61/24"}}, "version": "{v}"}}"#
        ),
        format!(
            r#"{{"fields": {{"hostname": "web-01", "hostname": "backdoor-02", "ip": "10.0.0.61/24"}}, "version": "{v}"}}"#
        ),
        format!(
            r#"{{"fields": {{"hostname": "backdoor-02", "ip": "10.0.0.61/24", "ip ": "10.0.0.62/24"}}, "version": "{v}"}}"#
        ),
    ] {
        let r = call("POST", &add, Some(ADMIN_TOKEN), Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains("more than once"), "{}", r.body);
    }
    let r = call(
        "PUT",
        &f.url("/inventory/hosts/node02"),
        Some(ADMIN_TOKEN),
        Some(&format!(
            r#"{{"fields": {{"ip": "10.0.0.62/24", "IP": "10.0.0.63/24"}}, "version": "{v}"}}"#
        )),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // An unknown column, named (and cut when long).
    let long = "k".repeat(10_000);
    let body = format!(
        r#"{{"fields": {{"hostname": "web-01", "ip": "10.0.0.61/24", "{long}": "x"}}, "version": "{v}"}}"#
    );
    let r = call("POST", &add, Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.len() < 400 && r.body.contains("has no column \\\"kkkk"), "{}", r.body);
    // A 60 KB value: refused by validation, in a short answer.
    let huge = "v".repeat(60_000);
    let body = format!(
        r#"{{"fields": {{"hostname": "web-01", "ip": "10.0.0.61/24", "role": "{huge}"}}, "version": "{v}"}}"#
    );
    let r = call("POST", &add, Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 422, "{}", &r.body[..r.body.len().min(500)]);
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    assert_eq!(std::fs::read(&csv_path).unwrap(), before, "nothing was written");
    assert!(inventory_records(&f).is_empty(), "nothing was audited");

    // Valid, with long values in other columns: audited as the row written, in a small record.
    let ssh = "s".repeat(4000);
    let body = format!(
        r#"{{"fields": {{" HostName": " Web-01 ", "ip": "10.0.0.61/24", "ssh_key": "{ssh}", "role": "{ssh}"}}, "version": "{v}"}}"#
    );
    let r = call("POST", &add, Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(call("GET", &f.url("/hosts/web-01"), Some(READ_TOKEN), None).status, 200);
    let written = std::fs::read_to_string(&csv_path).unwrap();
    assert!(
        written.ends_with(&format!("Web-01,10.0.0.61/24,,,,,{ssh},,,,,,,{ssh},\n")),
        "the row as given: {}",
        &written[written.len().saturating_sub(9000)..].replace(&ssh, "<S>")
    );
    let records = inventory_records(&f);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].len() < 1024, "{} bytes: {}", records[0].len(), records[0]);
    let record: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!((record["action"].as_str(), record["host"].as_str()), (Some("add"), Some("web-01")));
    f.stop();
}

/// A 3 MB CSV of bad rows answered 324 MB: the answer lists the first 100 errors in file
/// order, with the total and a note, and quotes no value longer than 64 characters.
#[test]
fn error_lists_are_capped_with_their_total() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let before = std::fs::read(&csv_path).unwrap();
    let mut bad = String::from("hostname,ip,mac\n");
    let mut rows = 0;
    while bad.len() < 3_000_000 {
        bad.push_str(&format!("bad_{rows},10.0.{}.300/24,zz\n", rows % 250));
        rows += 1;
    }
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(&bad));
    assert_eq!(r.status, 422);
    assert!(r.body.len() < 64 * 1024, "{} bytes", r.body.len());
    let json = r.json();
    assert_eq!(json["total"].as_u64(), Some(3 * rows), "three errors a row");
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 100);
    assert_eq!((errors[0]["line"].as_u64(), errors[99]["line"].as_u64()), (Some(2), Some(35)));
    assert!(json["note"].as_str().unwrap().contains("first 100 of"), "{}", json["note"]);
    // The same as a replacement (with its version): refused in as short an answer.
    let put = f.url(&format!("/inventory?version={}", version(&f)));
    let r = call("PUT", &put, Some(ADMIN_TOKEN), Some(&bad));
    assert_eq!(r.status, 422);
    assert!(r.body.len() < 64 * 1024, "{} bytes", r.body.len());
    assert_eq!(r.json()["total"].as_u64(), Some(3 * rows));
    assert_eq!(std::fs::read(&csv_path).unwrap(), before);
    // A 10,000-character value is quoted cut.
    let long = format!("hostname,ip,mac\nn1,10.0.0.1/24,{}\n", "a".repeat(10_000));
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(&long));
    assert_eq!(r.status, 422);
    let json = r.json();
    assert_eq!(json["total"], 1);
    assert!(json["note"].is_null(), "nothing left out: {json}");
    let message = json["errors"][0]["message"].as_str().unwrap();
    assert!(message.len() < 300 && message.contains("aaaa\"…"), "{message}");
    f.stop();
}

/// Every change names the version it was made against: none is 428, a stale one 409, and a
/// replacement checked before a row edit cannot silently undo it.
#[test]
fn changes_without_a_current_version_are_refused() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let before = std::fs::read_to_string(&csv_path).unwrap();
    let good = before.replace("node02,10.0.0.12/24", "node02,10.0.0.92/24");

    // No version at all: 428, nothing written.
    let r = call("PUT", &f.url("/inventory"), Some(ADMIN_TOKEN), Some(&good));
    assert_eq!(r.status, 428, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("version"), "{}", r.body);
    let edits = [
        ("POST", "/inventory/hosts", r#"{"fields": {"hostname": "n7", "ip": "10.0.0.77/24"}}"#),
        ("PUT", "/inventory/hosts/node02", r#"{"fields": {"ip": "10.0.0.78/24"}}"#),
        ("DELETE", "/inventory/hosts/node02", ""),
    ];
    for (method, path, body) in edits {
        let r = call(method, &f.url(path), Some(ADMIN_TOKEN), Some(body));
        assert_eq!(r.status, 428, "{method} {path}: {}", r.body);
    }
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), before);

    // The operator checks a file against version v; a row edit lands meanwhile; the
    // replacement made against v is refused and the row edit survives.
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(&good));
    assert_eq!(r.status, 200, "{}", r.body);
    let checked = r.json()["version"].as_str().unwrap().to_string();
    assert_eq!(checked, version(&f));
    let body = format!(r#"{{"fields": {{"ip": "10.0.0.79/24"}}, "version": "{checked}"}}"#);
    let r = call("PUT", &f.url("/inventory/hosts/hv1"), Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let edited = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(edited, before.replace("hv1,10.0.0.21/24", "hv1,10.0.0.79/24"));
    let r = call(
        "PUT",
        &f.url(&format!("/inventory?version={checked}")),
        Some(ADMIN_TOKEN),
        Some(&good),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), edited, "the row edit survives");
    // Row edits against the old version: 409 too.
    for (method, path, body) in edits {
        let url = f.url(&format!("{path}?version={checked}"));
        assert_eq!(
            call(method, &url, Some(ADMIN_TOKEN), Some(body)).status,
            409,
            "{method} {path}"
        );
    }
    // A version in the body and another in the query: refused.
    let url = f.url(&format!("/inventory/hosts/node02?version={checked}"));
    let body = format!(r#"{{"fields": {{"ip": "10.0.0.78/24"}}, "version": "{}"}}"#, version(&f));
    assert_eq!(call("PUT", &url, Some(ADMIN_TOKEN), Some(&body)).status, 400);
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), edited);
    // With the current version the replacement goes through.
    let r = call(
        "PUT",
        &f.url(&format!("/inventory?version={}", version(&f))),
        Some(ADMIN_TOKEN),
        Some(&good),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), good);
    f.stop();
}

/// An add with no values (`{}`, or blanks only), or a change that blanks every column of a
/// row, passed validation (the validator skips a blank row) and then failed to find the row
/// it wrote: 500. It is refused with 400 and changes nothing.
#[test]
fn an_edit_that_would_leave_an_empty_row_is_refused() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone().unwrap();
    let before = std::fs::read(&csv_path).unwrap();
    let r = call("GET", &f.url("/inventory"), Some(ADMIN_TOKEN), None);
    let (v, columns) = (r.json()["version"].clone(), r.json()["columns"].clone());
    assert!(columns.as_array().is_some_and(|c| !c.is_empty()), "{}", r.body);
    let blanks: serde_json::Map<String, serde_json::Value> = columns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c.as_str().unwrap().to_string(), serde_json::Value::from(" ")))
        .collect();
    let add = f.url("/inventory/hosts");
    for (method, url, fields) in [
        ("POST", add.clone(), serde_json::json!({})),
        ("POST", add.clone(), serde_json::json!({"hostname": "  ", "ip": ""})),
        ("PUT", f.url("/inventory/hosts/node02"), serde_json::Value::Object(blanks)),
    ] {
        let body = serde_json::json!({ "fields": fields, "version": v }).to_string();
        let r = call(method, &url, Some(ADMIN_TOKEN), Some(&body));
        assert_eq!(r.status, 400, "{method} {body}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("the row would be empty"),
            "{}",
            r.body
        );
    }
    assert_eq!(std::fs::read(&csv_path).unwrap(), before, "nothing was written");
    assert!(inventory_records(&f).is_empty(), "nothing was audited");
    f.stop();
}

/// A change that renames `node02` was audited under its new name only: the name it had is
/// now recorded too (`old_host`), and only for changes that rename.
#[test]
fn a_rename_is_audited_with_the_old_name() {
    let mut f = start(false);
    let url = f.url("/inventory/hosts/node02");
    let body =
        format!(r#"{{"fields": {{"hostname": "Backdoor-02"}}, "version": "{}"}}"#, version(&f));
    let r = call("PUT", &url, Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = format!(r#"{{"fields": {{"role": "x"}}, "version": "{}"}}"#, version(&f));
    let r = call("PUT", &f.url("/inventory/hosts/backdoor-02"), Some(ADMIN_TOKEN), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let records: Vec<serde_json::Value> =
        inventory_records(&f).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["action"], "change");
    assert_eq!(records[0]["host"], "backdoor-02");
    assert_eq!(records[0]["old_host"], "node02", "{}", records[0]);
    assert!(records[1].get("old_host").is_none(), "no rename: {}", records[1]);
    f.stop();
}
