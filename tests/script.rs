//! The per-node iPXE script: golden files for representative nodes, and a property test that any
//! field values either fail validation or yield a script with exactly the expected commands.
//!
//! Regenerate the golden files after an intended change with `BLESS=1 cargo test --test script`,
//! and review the diff: the script is the product.

use bootforge::inventory::{Inventory, ServerUrl};
use bootforge::script::{node_script, Medium, ScriptSettings};
use bootforge::token::Secret;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const NODES: &str = "hostname,ip,gateway,dns,mac,vlan,role\n\
node01,10.20.0.11/24,10.20.0.1,10.20.0.2,52:54:00:12:34:56,,server\n\
node02,10.20.0.12/24,10.20.0.1,,,120,agent\n\
node03,10.30.0.7/16,,,aa-bb-cc-dd-ee-03,300,\n";

fn server() -> ServerUrl {
    "http://10.20.0.5:8080".parse().unwrap()
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with BLESS=1 to create it", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file (BLESS=1 to update)");
}

#[test]
fn golden_scripts() {
    let inv = Inventory::parse("nodes.csv", NODES.as_bytes()).unwrap();
    let server = server();
    let secret = Secret::new(b"golden-test-secret".to_vec()).unwrap();
    let cases = [
        ("node01", Medium::Cd, None, "node01-cd.ipxe"),
        ("node02", Medium::Usb, Some(&secret), "node02-usb-token.ipxe"),
        ("node03", Medium::Esp, None, "node03-esp-vlan.ipxe"),
    ];
    for (host, medium, secret, file) in cases {
        let node = inv.get(host).unwrap();
        let settings =
            ScriptSettings { server: &server, token: secret.map(|s| s.node_token(host)), medium };
        check_golden(file, &node_script(node, &settings));
    }
}

/// Expansions a script may contain: iPXE's own settings and the script's `bootforge-*` variables.
fn allowed_expansion(name: &str) -> bool {
    name.starts_with("bootforge-")
        || name.starts_with("net${bootforge-idx}")
        || name.starts_with("${bootforge-if}/")
        || name == "net0/mac"
        || matches!(name, "platform" | "buildarch" | "uuid" | "serial:uristring" | "errno")
}

/// Every `${...}` in `line`, outermost names (nested ones included as written).
fn expansions(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'$' && bytes[i + 1] == b'{' {
            let mut depth = 0;
            let start = i + 2;
            let mut j = i;
            while j < bytes.len() {
                if bytes[j] == b'{' {
                    depth += 1;
                } else if bytes[j] == b'}' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                j += 1;
            }
            found.push(line[start..j.min(line.len())].to_string());
            i = j;
        }
        i += 1;
    }
    found
}

const HOSTILE: &[&str] = &[
    "${net0/mac}",
    "x && shell",
    "a || reboot",
    "a;b",
    "a\nchain http://evil/",
    "#x",
    "\"q\"",
    "http://h/${x}",
    "http://h/ x",
    "http://h/#a",
    "10.0.0.9/24\nshell",
    "node\r01",
    "x y",
];

/// Field values: mostly well-formed (so most rows are accepted and their scripts checked), some
/// random printable text, some known-hostile strings.
fn field(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => proptest::sample::select(valid).prop_map(str::to_string),
        1 => "[a-z0-9.:/-]{0,12}",
        1 => "[ -~]{0,16}",
        1 => proptest::sample::select(HOSTILE).prop_map(str::to_string),
    ]
}

fn csv_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Checks one row: rejected, or its script has exactly the reference commands. Returns whether the
/// row was accepted.
fn row_is_rejected_or_harmless(values: &[String; 8]) -> Result<bool, TestCaseError> {
    let row = values.iter().map(|v| csv_field(v)).collect::<Vec<_>>().join(",");
    let text = format!("hostname,ip,gateway,dns,mac,vlan,server,note\n{row}\n");
    let Ok(inv) = Inventory::parse("p.csv", text.as_bytes()) else { return Ok(false) };
    let node = &inv.nodes()[0];
    let default_server = server();
    let settings = ScriptSettings {
        server: &default_server,
        token: Some("00ff".repeat(16)),
        medium: Medium::Cd,
    };
    let script = node_script(node, &settings);

    // The same shape of node with harmless values gives the reference script; the hostile one
    // must have the same number of lines and the same command on every line.
    let mut reference = node.clone();
    reference.hostname = "ref".into();
    reference.server = None;
    let expected = node_script(&reference, &settings);
    prop_assert_eq!(script.lines().count(), expected.lines().count(), "{}", script);
    for (got, want) in script.lines().zip(expected.lines()) {
        prop_assert_eq!(got.split(' ').next(), want.split(' ').next(), "{}", script);
        prop_assert_eq!(got.matches("&&").count(), want.matches("&&").count());
        prop_assert_eq!(got.matches("||").count(), want.matches("||").count());
        for name in expansions(got) {
            prop_assert!(allowed_expansion(&name), "unexpected ${{{}}} in {:?}", name, got);
        }
        prop_assert!(!got.contains(';') && !got.contains('"') && !got.contains('\''), "{:?}", got);
    }
    // Free template columns never reach the media script.
    let free = values[7].trim();
    if free.len() >= 6 {
        prop_assert!(!script.contains(free));
    }
    Ok(true)
}

#[test]
fn hostile_fields_are_rejected_or_harmless() {
    let row = (
        field(&["node01", "a.b-c", "X1"]),
        field(&["10.0.0.9/24", "172.16.5.4/16"]),
        field(&["", "10.0.0.1", "172.16.0.1"]),
        field(&["", "10.0.0.2"]),
        field(&["", "52:54:00:aa:bb:cc", "52-54-00-aa-bb-cd"]),
        field(&["", "1", "4094"]),
        field(&["", "http://10.0.0.5:8080", "https://boot.lab/x"]),
        "[ -~]{0,24}",
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| [a, b, c, d, e, f, g, h]);
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig { cases: 3000, ..ProptestConfig::default() });
    runner
        .run(&row, |values| {
            if row_is_rejected_or_harmless(&values)? {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    // The property is only meaningful if many random rows were accepted and their scripts checked.
    let accepted = accepted.into_inner();
    assert!(accepted > 300, "only {accepted} of 3000 random rows were accepted");
}

#[test]
fn each_hostile_value_in_each_field() {
    let valid = ["n1", "10.0.0.9/24", "10.0.0.1", "10.0.0.2", "52:54:00:aa:bb:cc", "7", "", "ok"];
    for column in 0..valid.len() {
        for hostile in HOSTILE {
            let mut values = valid.map(str::to_string);
            values[column] = hostile.to_string();
            row_is_rejected_or_harmless(&values)
                .unwrap_or_else(|e| panic!("column {column}, value {hostile:?}: {e}"));
        }
    }
}

/// The script explains each failure iPXE reports when asking an https service, by the error
/// numbers measured with the shipped EFI build (docs/TLS.md, "What the node prints"), and points
/// iPXE's cross-signing downloads at the service over plain http.
#[test]
fn https_script_names_tls_failures() {
    use bootforge::script::KNOWN_FAILURES;
    let inv = Inventory::parse("nodes.csv", NODES.as_bytes()).unwrap();
    let server: ServerUrl = "https://boot.lab:8443/bf".parse().unwrap();
    let settings = ScriptSettings { server: &server, token: None, medium: Medium::Cd };
    let script = node_script(inv.get("node01").unwrap(), &settings);
    assert!(script.contains("\nset crosscert http://boot.lab:8443/bf/crosscert\n"), "{script}");
    assert!(!script.contains("ca.ipxe.org"));
    // Measured on the console of OVMF + ipxe-amd64.efi (1.21.1+git20250501.dad20602).
    for (errno, label) in [
        ("0x216eb8f", "tls_untrusted"),
        ("0x216ea8f", "tls_name"),
        ("0x216e48f", "tls_clock"),
        ("0x410de18f", "tls_refused"),
        ("0x3c00e183", "tls_algorithm"),
        ("0xf0a6095", "refused"),
        ("0x4c0a6092", "timeout"),
        ("0x3e11618e", "dns"),
    ] {
        let jump = format!("iseq ${{bootforge-err}} {errno} && goto fail_{label} ||\n");
        assert!(script.contains(&jump), "no {jump:?} in\n{script}");
    }
    let lines: Vec<&str> = script.lines().collect();
    for failure in KNOWN_FAILURES {
        for errno in failure.errnos() {
            assert!(script.contains(&format!(" {errno} && goto fail_{} ||", failure.label)));
        }
        let at = lines.iter().position(|l| *l == format!(":fail_{}", failure.label)).unwrap();
        assert_eq!(lines[at + 1], format!("echo bootforge: {}", failure.message));
        let next = if failure.permanent { "goto local_boot" } else { "goto retry" };
        assert_eq!(lines[at + 2], next, "after the message of {}", failure.label);
        assert!(
            !failure.message.contains(['$', '{', '}', ';', '&', '|', '#', '"', '\'', '\n']),
            "{}",
            failure.message
        );
    }
    // The error number is saved by the same line as the request: any later failing command
    // (the `iseq`s) would overwrite `${errno}`.
    assert!(script.contains("&medium=${bootforge-medium} || set bootforge-err ${errno}\n"));
}
