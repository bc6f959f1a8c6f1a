//! The inventory validator, as a table: good rows parse to the expected values; each bad row is
//! rejected with an error that names the file, the line and the column, and says what is expected.

use bootforge::inventory::{Inventory, InventoryError};

const HEADER: &str = "hostname,ip,gateway,dns,mac,vlan,role";

fn parse(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse("nodes.csv", text.as_bytes())
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(InventoryError::Invalid(list)) => list.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn good_rows() {
    let text = format!(
        "{HEADER}\n\
         node01,10.20.0.11/24,10.20.0.1,10.20.0.2,AA-BB-CC-00-11-22,120,server\n\
         Node02.lab,10.20.0.12/24,,,aabbcc001123,,agent\n\
         node03,192.168.7.9/31,192.168.7.8,,,4094,\n"
    );
    let inv = parse(&text).unwrap();
    assert_eq!(inv.len(), 3);
    let n1 = inv.get("node01").unwrap();
    assert_eq!(n1.line, 2);
    assert_eq!(n1.cidr(), "10.20.0.11/24");
    assert_eq!(n1.netmask().to_string(), "255.255.255.0");
    assert_eq!(n1.mac.unwrap().to_string(), "aa:bb:cc:00:11:22");
    assert_eq!(n1.vlan, Some(120));
    assert_eq!(n1.vars.get("role").map(String::as_str), Some("server"));
    let n2 = inv.get("NODE02.LAB").expect("host names compare case-insensitively");
    assert_eq!(n2.hostname, "node02.lab");
    assert_eq!(n2.gateway, None);
    assert_eq!(n2.mac.unwrap().to_string(), "aa:bb:cc:00:11:23");
    assert_eq!(inv.get("node03").unwrap().prefix, 31, "/31 has no network or broadcast address");
}

#[test]
fn bom_crlf_column_order_and_netmask_column() {
    let text = "\u{feff}mac,netmask,ip,hostname\r\n52:54:00:00:00:01,255.255.252.0,10.1.2.3,n1\r\n";
    let inv = parse(text).unwrap();
    let n = inv.get("n1").unwrap();
    assert_eq!(n.prefix, 22);
    assert_eq!(inv.columns(), ["mac", "netmask", "ip", "hostname"]);
}

#[test]
fn template_vars_hold_every_column() {
    let inv = parse(&format!("{HEADER}\nnode01,10.20.0.11/24,10.20.0.1,,,,server\n")).unwrap();
    let vars = inv.get("node01").unwrap().template_vars();
    assert_eq!(vars["role"], "server");
    assert_eq!(vars["ip"], "10.20.0.11");
    assert_eq!(vars["prefix"], "24");
    assert_eq!(vars["netmask"], "255.255.255.0");
    assert_eq!(vars["gateway"], "10.20.0.1");
    assert_eq!(vars["mac"], "");
}

/// Each bad row, the column its error must name, and a phrase of what is expected.
const BAD_ROWS: &[(&str, &str, &str)] = &[
    ("-bad,10.0.0.5/24,,,,,", "hostname", "RFC 1123"),
    ("under_score,10.0.0.5/24,,,,,", "hostname", "RFC 1123"),
    (",10.0.0.5/24,,,,,", "hostname", "missing"),
    ("n1,,,,,,", "ip", "missing"),
    ("n1,10.0.0.256/24,,,,,", "ip", "not an IPv4 address"),
    ("n1,10.0.0.5,,,,,", "ip", "no prefix"),
    ("n1,10.0.0.5/33,,,,,", "ip", "/1 to /32"),
    ("n1,10.0.0.0/24,,,,,", "ip", "network address"),
    ("n1,10.0.0.255/24,,,,,", "ip", "broadcast address"),
    ("n1,127.0.0.5/8,,,,,", "ip", "unicast"),
    ("n1,10.0.0.5/24,10.0.1.1,,,,", "gateway", "outside the node's subnet"),
    ("n1,10.0.0.5/24,10.0.0.5,,,,", "gateway", "own address"),
    ("n1,10.0.0.5/24,gw,,,,", "gateway", "not an IPv4 address"),
    ("n1,10.0.0.5/24,,8.8.8,,,", "dns", "not an IPv4 address"),
    ("n1,10.0.0.5/24,,,52:54:00:12:34,,", "mac", "six hex pairs"),
    ("n1,10.0.0.5/24,,,zz:54:00:12:34:56,,", "mac", "six hex pairs"),
    ("n1,10.0.0.5/24,,,,0,", "vlan", "1 to 4094"),
    ("n1,10.0.0.5/24,,,,4095,", "vlan", "1 to 4094"),
    ("n1,10.0.0.5/24,,,,x,", "vlan", "1 to 4094"),
    ("n1,10.0.0.5/24,,,,,\"two\nlines\"", "role", "control character"),
    ("n1,10.0.0.5/24,,,,,tab\there", "role", "control character"),
    ("n1,10.0.0.5/24,,,,", "-", "6 fields but the header has 7"),
];

#[test]
fn bad_rows_name_line_and_column() {
    for (row, column, expected) in BAD_ROWS {
        let text = format!("{HEADER}\nok1,10.9.0.5/24,,,,,\n{row}\n");
        let errs = errors(&text);
        let prefix = format!("nodes.csv:3: column {column}: ");
        assert!(
            errs.iter().any(|e| e.starts_with(&prefix) && e.contains(expected)),
            "row {row:?}: expected an error starting {prefix:?} containing {expected:?}, got {errs:#?}"
        );
    }
}

#[test]
fn duplicates_name_the_first_line() {
    let text = format!(
        "{HEADER}\n\
         n1,10.0.0.5/24,,,52:54:00:00:00:01,,\n\
         n2,10.0.0.6/24,,,52-54-00-00-00-01,,\n\
         N1,10.0.0.7/24,,,,,\n\
         n4,10.0.0.5/24,,,,,\n"
    );
    let errs = errors(&text);
    assert!(errs.contains(&"nodes.csv:3: column mac: 52:54:00:00:00:01 is already used on line 2; MACs must be unique".to_string()), "{errs:#?}");
    assert!(
        errs.iter().any(
            |e| e.starts_with("nodes.csv:4: column hostname: \"n1\" is already used on line 2")
        ),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("nodes.csv:5: column ip: 10.0.0.5 is already used on line 2")),
        "{errs:#?}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = format!("{HEADER}\nn1,10.0.0.5,,,xx,9999,\nn2,10.0.0.6/24,1.1.1.1,,,,\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:#?}"); // ip, mac, vlan on line 2; gateway on line 3
}

#[test]
fn header_problems() {
    assert!(errors("ip,gateway\n10.0.0.5/24,\n")[0]
        .contains("column hostname: the header has no `hostname` column"));
    assert!(errors("hostname,ip,ip\n")[0].contains("column ip: this column appears twice"));
    assert!(errors("hostname,ip,bad name\n")[0].contains("not a usable column name"));
    assert!(errors("")[0].contains("the file is empty"));
    assert!(errors("hostname,ip\n")[0].contains("no nodes"));
}

#[test]
fn invalid_utf8_is_named() {
    let mut bytes = b"hostname,ip,role\nn1,10.0.0.5/24,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    let err = Inventory::parse("nodes.csv", bytes.as_slice()).unwrap_err().to_string();
    assert!(err.contains("nodes.csv:2: column role: the value is not valid UTF-8"), "{err}");
}

#[test]
fn comments_and_blank_lines_are_skipped_but_lines_still_count() {
    let text = "# fleet A\nhostname,ip\n\n# rack 1\nn1,10.0.0.5/24\nn2,bad\n";
    let errs = errors(text);
    assert_eq!(errs[0].split(": column").next(), Some("nodes.csv:6"), "{errs:#?}");
}

/// A `server` value with shell or iPXE syntax after an IPv6 literal used to pass (only a `:`
/// after `]` was looked at) and then reached scripts verbatim; the whole row is refused now.
#[test]
fn hostile_server_url_is_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodes.csv");
    std::fs::write(
        &path,
        "hostname,ip,server\n\
         n1,10.0.0.5/24,http://10.0.0.1:8080\n\
         n2,10.0.0.6/24,http://[::1]x;touch PWNED\n\
         n3,10.0.0.7/24,http://[::1]:80x\n",
    )
    .unwrap();
    let err = match Inventory::load(&path) {
        Ok(_) => panic!("accepted a hostile server URL"),
        Err(e) => e.to_string(),
    };
    let source = path.display().to_string();
    assert!(
        err.lines().any(|l| l.starts_with(&format!("{source}:3: column server: "))
            && l.contains("http://[::1]x;touch PWNED")
            && l.contains("expected http://HOST[:PORT][/PATH]")),
        "{err}"
    );
    assert!(err.contains(&format!("{source}:4: column server: ")), "{err}");
    assert!(!err.contains(&format!("{source}:2:")), "the good row is not blamed: {err}");
}

#[test]
fn bmc_column_is_parsed_and_a_bad_one_named_by_file_line_and_column() {
    let inv = parse(
        "hostname,ip,bmc\n\
         n1,10.0.0.5/24,https://10.1.0.11\n\
         n2,10.0.0.6/24,https://bmc2.lab:8443/redfish/v1/Systems/System.Embedded.1/\n\
         n3,10.0.0.7/24,\n",
    )
    .unwrap();
    let n1 = inv.get("n1").unwrap().bmc.clone().unwrap();
    assert_eq!((n1.origin(), n1.system_path()), ("https://10.1.0.11", None));
    let n2 = inv.get("n2").unwrap().bmc.clone().unwrap();
    assert_eq!(n2.system_path(), Some("/redfish/v1/Systems/System.Embedded.1"));
    assert_eq!(n2.host(), "bmc2.lab");
    assert_eq!(inv.get("n3").unwrap().bmc, None, "the column is optional");
    assert_eq!(inv.get("n2").unwrap().template_vars()["bmc"], n2.as_str());
    assert!(!inv.get("n1").unwrap().vars.contains_key("bmc"), "a known column, not a free one");

    let errs = errors(
        "hostname,ip,bmc\n\
         n1,10.0.0.5/24,https://admin:pw@10.1.0.11\n\
         n2,10.0.0.6/24,https://10.1.0.12/redfish/v1/Managers/1\n",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("nodes.csv:2: column bmc: "), "{}", errs[0]);
    assert!(errs[0].contains("--bmc-credentials"), "{}", errs[0]);
    assert!(errs[1].starts_with("nodes.csv:3: column bmc: "), "{}", errs[1]);
    assert!(errs[1].contains("/redfish/v1/Systems/ID"), "{}", errs[1]);
}

/// Errors name the line the row is on, after comment and blank lines, with LF or CRLF endings.
#[test]
fn line_numbers_count_comments_and_blank_lines() {
    for eol in ["\n", "\r\n"] {
        let text = [
            "# fleet",
            "hostname,ip",
            "n1,bad1",
            "# rack 2",
            "",
            "n2,10.0.0.2/24",
            "",
            "n3,bad3",
            "",
        ]
        .join(eol);
        let err = Inventory::parse("x.csv", text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("x.csv:3: column ip: \"bad1\""), "{eol:?}: {err}");
        assert!(err.contains("x.csv:8: column ip: \"bad3\""), "{eol:?}: {err}");
        let ok = text.replace("bad1", "10.0.0.1/24").replace("bad3", "10.0.0.3/24");
        let inv = Inventory::parse("x.csv", ok.as_bytes()).unwrap();
        let lines: Vec<u64> = inv.nodes().iter().map(|n| n.line).collect();
        assert_eq!(lines, vec![3, 6, 8], "{eol:?}");
    }
}
