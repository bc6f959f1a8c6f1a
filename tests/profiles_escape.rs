//! The template filters `ipxe`, `shell` and `yaml`, on their own and inside a template.

use bootforge::inventory::{Inventory, Node};
use bootforge::serve::profiles::{ipxe_arg, shell_word, yaml_string, Profiles, RenderContext};
use std::path::Path;

fn ctx(node: &Node) -> RenderContext<'_> {
    RenderContext {
        node,
        server: "http://10.1.0.5:8080",
        token: Some("0123abcd"),
        install_id: "00ff",
    }
}

#[test]
fn ipxe_filter() {
    for ok in ["", "eth0", "eth0.120", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "a=b,c:d+e@f%20"] {
        assert_eq!(ipxe_arg(ok), Ok(ok));
    }
    for (bad, class) in [
        ("eth0 x", "a space at position 5"),
        ("a\tb", "a tab at position 2"),
        ("${x}", "`$` at position 1"),
        ("a{b", "`{` at position 2"),
        ("a}", "`}` at position 2"),
        ("x;y", "`;` at position 2"),
        ("a||b", "`|` at position 2"),
        ("a&&b", "`&` at position 2"),
        ("#x", "`#` at position 1"),
        ("it's", "a single quote (`'`) at position 3"),
        ("\"q\"", "a double quote (`\"`) at position 1"),
        ("a\\b", "`\\` at position 2"),
        ("`id`", "a backquote at position 1"),
        ("a?b", "`?` at position 2"),
        ("a~b", "`~` at position 2"),
        ("é", "a non-ASCII character (U+00E9) at position 1"),
        ("ab\u{a0}", "whitespace (U+00A0) at position 3"),
        ("a\nb", "a line break at position 2"),
        ("a\u{7f}", "a control character (U+007F) at position 2"),
    ] {
        let err = ipxe_arg(bad).expect_err(bad);
        assert!(err.contains(class), "{bad:?}: {err}");
        let n = bad.chars().count();
        assert!(err.starts_with(&format!("the `ipxe` filter refused a value of {n} characters")));
        assert!(err.contains(". _ - : / , = + @ %"), "{err}");
    }
    let secret = "hunter2 is my password";
    let err = ipxe_arg(secret).unwrap_err();
    assert!(!err.contains("hunter2") && !err.contains("password"), "{err}");
}

#[test]
fn shell_filter() {
    for (value, quoted) in [
        ("eno1", "eno1"),
        ("/dev/sda", "/dev/sda"),
        ("a=b,c:d+e@f%", "a=b,c:d+e@f%"),
        ("", "''"),
        ("a b", "'a b'"),
        ("$6$salt$hash", "'$6$salt$hash'"),
        ("it's", r"'it'\''s'"),
        ("'", r"''\'''"),
        ("~root", "'~root'"),
        ("a\\b\"c`d`$(e)*?[x]!{y};|&<>#", "'a\\b\"c`d`$(e)*?[x]!{y};|&<>#'"),
        ("a\tb", "'a\tb'"),
    ] {
        assert_eq!(shell_word(value).as_deref(), Ok(quoted), "{value:?}");
    }
    for (bad, class) in
        [("a\nb", "a line break at position 2"), ("a\rb", "a line break"), ("\0", "a NUL")]
    {
        let err = shell_word(bad).expect_err(bad);
        assert!(err.contains(class) && err.contains("`shell` filter"), "{err}");
    }
    // A real shell gives back exactly the value.
    for value in [
        "plain",
        "",
        "a b",
        "it's",
        "''",
        "'\\''",
        "$(touch PWNED)",
        "`id`",
        "${x} ; #",
        "é\u{a0}!*",
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {}", shell_word(value).unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
    }
}

#[test]
fn yaml_filter() {
    assert_eq!(yaml_string("eno1"), "\"eno1\"");
    assert_eq!(yaml_string(""), "\"\"");
    assert_eq!(yaml_string("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(yaml_string("x: y # z"), "\"x: y # z\"");
    assert_eq!(yaml_string("a\nb\tc"), r#""a\nb\tc""#);
    assert_eq!(yaml_string("\u{7f}\u{85}\u{2028}\u{feff}"), r#""\u007f\u0085\u2028\ufeff""#);
    assert_eq!(yaml_string("é ü"), "\"é ü\"");
    // The output is a JSON string as well, which decodes back to the value.
    for value in [
        "",
        "eno1",
        "a\"b\\c",
        "${x}",
        "'; touch x; '",
        "\u{1}\u{1f}\u{7f}\u{9f}\u{2029}",
        "- [a]: {b}",
    ] {
        assert_eq!(serde_json::from_str::<String>(&yaml_string(value)).unwrap(), value);
    }
}

/// A throwaway profile whose boot.ipxe puts `node.role` through the `ipxe` filter on line 3.
fn tiny_profiles(dir: &Path) -> Profiles {
    let p = dir.join("tiny");
    std::fs::create_dir_all(p.join("config")).unwrap();
    std::fs::write(
        p.join("boot.ipxe"),
        "#!ipxe\n# {{ hostname }}\nkernel {{ asset_url('k') }} role={{ node.role | ipxe }}\nboot\n",
    )
    .unwrap();
    std::fs::write(p.join("config/post.sh"), "echo {{ node.role | shell }}\n").unwrap();
    std::fs::write(p.join("config/c.yaml"), "role: {{ node.role | yaml }}\n").unwrap();
    Profiles::load(dir).unwrap()
}

#[test]
fn filters_in_templates() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tiny_profiles(dir.path());
    let inv = Inventory::parse(
        "nodes.csv",
        "hostname,ip,profile,role\nn1,10.0.0.5/24,tiny,hunter2 secret\nn2,10.0.0.6/24,tiny,worker\n"
            .as_bytes(),
    )
    .unwrap();
    let bad = inv.get("n1").unwrap();
    let err = profiles.render("tiny", "boot.ipxe", &ctx(bad)).unwrap_err();
    let file = dir.path().join("tiny/boot.ipxe").display().to_string();
    assert!(err.starts_with(&format!("{file}:3: ")), "{err}");
    assert!(err.contains("refused a value of 14 characters: it holds a space at position 8"));
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(
        profiles.render("tiny", "config/post.sh", &ctx(bad)).unwrap(),
        "echo 'hunter2 secret'\n"
    );
    assert_eq!(
        profiles.render("tiny", "config/c.yaml", &ctx(bad)).unwrap(),
        "role: \"hunter2 secret\"\n"
    );
    let good = inv.get("n2").unwrap();
    let boot = profiles.render("tiny", "boot.ipxe", &ctx(good)).unwrap();
    assert!(boot.contains(" role=worker\n"), "{boot}");
}
