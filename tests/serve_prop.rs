//! Property test: whatever path and query a client sends, the server answers 2xx or 4xx, keeps
//! serving, and a `/boot/*` answer is the local-boot script unless the host is flagged.

#[path = "serve_support/mod.rs"]
mod support;

use proptest::prelude::*;
use support::*;

/// Sends a raw request line (so any bytes reach the server) and returns (status, body).
fn raw_get(addr: &str, target: &str) -> (u16, String) {
    raw_request(addr, &format!("GET {target} HTTP/1.1\r\nHost: {addr}"))
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("boot".to_string()),
        Just("hosts".to_string()),
        Just("config".to_string()),
        Just("assets".to_string()),
        Just("node01".to_string()),
        Just("node02".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%ff".to_string()),
        Just("reimage".to_string()),
        Just("done".to_string()),
        "[a-zA-Z0-9._~%-]{0,12}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let pair = (
        prop_oneof![
            Just("mac"),
            Just("ip"),
            Just("token"),
            Just("medium"),
            Just("install"),
            Just("since"),
            Just("x")
        ],
        prop_oneof![
            Just("aa:bb:cc:dd:ee:01".to_string()),
            Just("AA-BB-CC-DD-EE-02".to_string()),
            Just("usb".to_string()),
            "[a-zA-Z0-9%:=+._-]{0,20}",
        ],
    )
        .prop_map(|(k, v)| format!("{k}={v}"));
    prop::collection::vec(pair, 0..5).prop_map(|v| v.join("&"))
}

#[test]
fn never_panics_and_boot_is_local_unless_flagged() {
    let mut f = start(false);
    let addr = f.base.trim_start_matches("http://").to_string();
    // node02 is flagged; node01 is not.
    let r = call(
        "PUT",
        &f.url("/hosts/node02/reimage"),
        Some(REIMAGE_TOKEN),
        Some(r#"{"profile":"e2e"}"#),
    );
    assert_eq!(r.status, 200);
    let config =
        ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(segs in prop::collection::vec(segment(), 0..5), q in query(), boot in any::<bool>())| {
        let mut path = String::new();
        if boot {
            path.push_str("/boot");
        }
        for s in &segs {
            path.push('/');
            path.push_str(s);
        }
        if path.is_empty() {
            path.push('/');
        }
        let target = if q.is_empty() { path.clone() } else { format!("{path}?{q}") };
        let (status, body) = raw_get(&addr, &target);
        prop_assert!((200..500).contains(&status) && !(300..400).contains(&status), "{target} -> {status}");
        if path.starts_with("/boot/") {
            prop_assert_eq!(status, 200, "{}", target);
            // The flagged host itself, however the path was generated (`boot` flag or a "boot"
            // segment): the only target that may get its install chain.
            let flagged_host = path == "/boot/node02";
            if !flagged_host {
                prop_assert!(body.starts_with("#!ipxe\necho bootforge: local boot:"), "{target}: {body}");
                prop_assert!(!body.contains("install"), "{target}: {body}");
            }
        }
    });
    assert_eq!(call("GET", &f.url("/healthz"), None, None).status, 200);
    f.stop();
}
