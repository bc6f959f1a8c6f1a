//! Replacing the inventory by upload (`POST /inventory/check`, `PUT /inventory`, role admin):
//! every error is reported by line and column before anything is replaced, and an invalid or
//! refused upload leaves the CSV byte-identical.

#[path = "serve_support/mod.rs"]
mod support;

use support::*;

#[test]
fn uploads_are_checked_whole_and_replace_only_when_valid() {
    let mut f = start(false);
    let csv_path = f.config.inventory.clone();
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
    let r = call("PUT", &f.url("/inventory"), Some(ADMIN_TOKEN), Some(bad));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("nothing was written"), "{}", r.body);
    assert_eq!(std::fs::read(&csv_path).unwrap(), before);
    assert_eq!(call("GET", &f.url("/hosts/n9a"), Some(READ_TOKEN), None).status, 404);

    // Only admins may replace or check it.
    let good = bad.replace("10.0.9.300", "10.0.9.2").replace("zz:zz", "");
    for token in [READ_TOKEN, REIMAGE_TOKEN] {
        assert_eq!(call("PUT", &f.url("/inventory"), Some(token), Some(&good)).status, 403);
        assert_eq!(call("POST", &f.url("/inventory/check"), Some(token), Some(&good)).status, 403);
    }
    assert_eq!(std::fs::read(&csv_path).unwrap(), before);

    // A valid upload replaces the file byte for byte and is served at once.
    let r = call("POST", &f.url("/inventory/check"), Some(ADMIN_TOKEN), Some(&good));
    assert_eq!((r.status, r.json()["nodes"].as_u64()), (200, Some(3)), "{}", r.body);
    let r = call("PUT", &f.url("/inventory"), Some(ADMIN_TOKEN), Some(&good));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), good);
    assert_eq!(call("GET", &f.url("/hosts/n9b"), Some(READ_TOKEN), None).status, 200);
    assert_eq!(call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).status, 404);
    f.stop();
}
