//! Free CSV columns reaching the shipped profiles: a hostile value either stops the render (the
//! `ipxe` filter refuses it) or comes out only in escaped form (`shell`, `yaml`). Also the
//! filters on their own, and the load-time check of every node.

use bootforge::inventory::{Inventory, Node};
use bootforge::serve::inputs::profiles::{
    ipxe_arg, parse_url, preseed_value, shell_word, yaml_string, Profiles, RenderContext,
};
use std::path::{Path, PathBuf};

const HEADER: &str = "hostname,ip,gateway,dns,mac,profile,role,install_disk,iface,cluster_token,cluster_vip,join_server,password_hash,ssh_key";

const KEY: &str = "ssh-ed25519 AAAA op";
const HOSTILE_KEY: &str = "ssh-ed25519 AAAA op'; touch /tmp/PWNED; echo '";
const HOSTILE_IFACE: &str = "eth0 ; shell ; #";

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/profiles")
}

fn inventory(rows: &[String]) -> Inventory {
    let text = format!("{HEADER}\n{}\n", rows.join("\n"));
    Inventory::parse("nodes.csv", text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One CSV row; `n` makes the address and MAC unique.
#[allow(clippy::too_many_arguments)]
fn row(
    n: u32,
    profile: &str,
    role: &str,
    disk: &str,
    iface: &str,
    token: &str,
    join: &str,
    hash: &str,
    key: &str,
) -> String {
    let (hi, lo) = (n / 250, n % 250 + 2);
    format!(
        "node{n:02},10.1.{hi}.{lo}/16,10.1.0.1,10.1.0.1,52:54:00:00:{:02x}:{:02x},{profile},{role},{disk},{iface},{token},10.1.0.250,{join},{hash},{key}",
        n / 256,
        n % 256
    )
}

fn normal(n: u32, profile: &str, role: &str) -> String {
    row(
        n,
        profile,
        role,
        "/dev/sda",
        "eno1",
        "tok-123",
        "https://10.1.0.250:443",
        "$6$salt$hash",
        KEY,
    )
}

fn ctx(node: &Node) -> RenderContext<'_> {
    RenderContext {
        node,
        server: "http://10.1.0.5:8080",
        token: Some("0123abcd"),
        install_id: "00ff",
    }
}

/// Every file of the node's profile: (`boot.ipxe` or `config/PATH`, rendered or the error).
fn render_all(profiles: &Profiles, node: &Node) -> Vec<(String, Result<String, String>)> {
    let name = node.profile.as_deref().unwrap();
    let p = profiles.get(name).unwrap();
    std::iter::once("boot.ipxe".to_string())
        .chain(p.config_files.iter().map(|f| format!("config/{f}")))
        .map(|file| {
            let out = profiles.render(name, &file, &ctx(node));
            (file, out)
        })
        .collect()
}

fn get<'a>(files: &'a [(String, Result<String, String>)], file: &str) -> &'a str {
    let (_, out) = files.iter().find(|(f, _)| f == file).unwrap_or_else(|| panic!("no {file}"));
    out.as_deref().unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

/// POSIX shell word splitting of one line (quotes and backslashes; no expansion), enough to see
/// how a shell would cut a rendered command into words. `None` if a quote is left open.
fn shell_split(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('$' | '`' | '"' | '\\') => w.push(c),
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

#[test]
fn hostile_iface_stops_every_boot_script_and_is_quoted_in_configs() {
    let profiles = Profiles::load(&examples()).unwrap();
    let rows: Vec<String> = [
        ("debian", ""),
        ("rocky", ""),
        ("ubuntu", ""),
        ("harvester", "create"),
        ("harvester", "join"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (p, role))| {
        row(
            i as u32 + 1,
            p,
            role,
            "/dev/sda",
            HOSTILE_IFACE,
            "tok",
            "https://10.1.0.250:443",
            "$6$salt$hash",
            KEY,
        )
    })
    .collect();
    let inv = inventory(&rows);
    for node in inv.nodes() {
        let files = render_all(&profiles, node);
        let (_, boot) = &files[0];
        let err = boot.as_ref().expect_err("boot.ipxe must refuse a space in iface");
        let profile = node.profile.as_deref().unwrap();
        assert!(err.contains(&format!("{profile}/boot.ipxe:")), "{err}");
        assert!(err.contains("the `ipxe` filter refused a value of 16 characters"), "{err}");
        assert!(err.contains("a space at position 5"), "{err}");
        assert!(!err.contains("shell ;"), "the value is not echoed: {err}");
        let cfg = |f: &str| get(&files, f);
        match profile {
            "rocky" => {
                let line = line_with(cfg("config/ks.cfg"), "network ");
                assert!(line.contains("--device='eth0 ; shell ; #' --ip=10.1.0.4"), "{line}");
                let words = shell_split(line).unwrap();
                assert!(words.contains(&format!("--device={HOSTILE_IFACE}")), "{words:?}");
            }
            "ubuntu" => {
                let ud = cfg("config/user-data");
                assert!(ud.contains("\n      \"eth0 ; shell ; #\":\n"), "{ud}");
                assert!(ud.contains("\n        set-name: \"eth0 ; shell ; #\"\n"), "{ud}");
            }
            "harvester" => {
                let f = if node.vars["role"] == "create" { "create" } else { "join" };
                let y = cfg(&format!("config/config-{f}.yaml"));
                assert!(y.contains("\n      - name: \"eth0 ; shell ; #\"\n"), "{y}");
            }
            "debian" => {
                // A preseed value is the rest of its line, with no quoting in the format: the
                // value lands as it is, and cannot leave its line (no line breaks in the CSV).
                let p = cfg("config/preseed.cfg");
                assert!(p.contains("\nd-i netcfg/choose_interface select eth0 ; shell ; #\n"));
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn dollar_brace_never_reaches_an_ipxe_line_and_is_quoted_elsewhere() {
    let profiles = Profiles::load(&examples()).unwrap();
    let d = "${x}";
    let mut rows = Vec::new();
    for (i, (p, role)) in
        [("debian", ""), ("rocky", ""), ("ubuntu", ""), ("harvester", "create")].iter().enumerate()
    {
        // In iface: every boot.ipxe refuses it.
        rows.push(row(i as u32 + 1, p, role, d, d, d, d, d, d));
        // In every free column but iface: boot.ipxe renders, and never holds `${`.
        rows.push(row(i as u32 + 11, p, role, d, "eno1", d, d, d, d));
    }
    // harvester's role reaches boot.ipxe too.
    rows.push(row(21, "harvester", d, "/dev/sda", "eno1", "t", "j", "h", KEY));
    let inv = inventory(&rows);
    for node in inv.nodes() {
        let files = render_all(&profiles, node);
        let profile = node.profile.as_deref().unwrap();
        let boot = &files[0].1;
        if node.vars["iface"] == d || node.vars["role"] == d {
            let err = boot.as_ref().expect_err("boot.ipxe must refuse `$`");
            assert!(err.contains("holds `$` at position 1"), "{err}");
            continue;
        }
        let boot = boot.as_ref().unwrap_or_else(|e| panic!("{profile}: {e}"));
        for line in boot.lines() {
            assert!(!line.contains("${"), "{profile}: {line}");
        }
        let cfg = |f: &str| get(&files, f);
        match profile {
            "rocky" => {
                let ks = cfg("config/ks.cfg");
                assert!(ks.contains("\nrootpw --iscrypted '${x}'\n"), "{ks}");
                assert!(ks.contains("\nsshkey --username=root '${x}'\n"), "{ks}");
                assert!(ks.contains("\nignoredisk --only-use='${x}'\n"), "{ks}");
                assert!(ks.contains("--drives='${x}'\n"), "{ks}");
                assert!(ks.contains("\nbootloader --boot-drive='${x}'\n"), "{ks}");
            }
            "ubuntu" => {
                let ud = cfg("config/user-data");
                assert!(ud.contains("\n    password: \"${x}\"\n"), "{ud}");
                assert!(ud.contains("\n      - \"${x}\"\n"), "{ud}");
                assert!(ud.contains("\n        path: \"${x}\"\n"), "{ud}");
            }
            "harvester" => {
                let y = cfg("config/config-create.yaml");
                for want in [
                    "\ntoken: \"${x}\"\n",
                    "\n  password: \"${x}\"\n",
                    "\n    - \"${x}\"\n",
                    "\n  device: \"${x}\"\n",
                ] {
                    assert!(y.contains(want), "{want:?} in\n{y}");
                }
                let j = cfg("config/config-join.yaml");
                assert!(j.contains("\nserver_url: \"${x}\"\n"), "{j}");
            }
            "debian" => {
                let p = cfg("config/preseed.cfg");
                assert!(p.contains("echo '${x}' > /target/home/ops/.ssh/authorized_keys"), "{p}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn quote_in_ssh_key_stays_inside_one_word() {
    let profiles = Profiles::load(&examples()).unwrap();
    let hash = r#"$6$a"b\c"#;
    let rows: Vec<String> = [("debian", ""), ("rocky", ""), ("ubuntu", ""), ("harvester", "join")]
        .iter()
        .enumerate()
        .map(|(i, (p, role))| {
            row(
                i as u32 + 1,
                p,
                role,
                "/dev/sda",
                "eno1",
                "tok",
                "https://10.1.0.250:443",
                &format!("\"{}\"", hash.replace('"', "\"\"")),
                HOSTILE_KEY,
            )
        })
        .collect();
    let inv = inventory(&rows);
    let quoted_key = r#"'ssh-ed25519 AAAA op'\''; touch /tmp/PWNED; echo '\'''"#;
    let yaml_key = r#""ssh-ed25519 AAAA op'; touch /tmp/PWNED; echo '""#;
    for node in inv.nodes() {
        assert_eq!(node.vars["password_hash"], hash);
        let files = render_all(&profiles, node);
        for (file, out) in &files {
            let out = out.as_ref().unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!out.contains("{{"), "{file}");
        }
        let cfg = |f: &str| get(&files, f);
        match node.profile.as_deref().unwrap() {
            "rocky" => {
                let ks = cfg("config/ks.cfg");
                let line = line_with(ks, "sshkey ");
                assert_eq!(line, format!("sshkey --username=root {quoted_key}"));
                assert_eq!(shell_split(line).unwrap(), ["sshkey", "--username=root", HOSTILE_KEY]);
                let line = line_with(ks, "rootpw ");
                assert_eq!(shell_split(line).unwrap(), ["rootpw", "--iscrypted", hash]);
                // %post: every line splits into whole words, with no quote left open.
                let post = ks.split("%post").nth(1).unwrap().split("%end").next().unwrap();
                for line in post.lines().filter(|l| !l.starts_with('#')) {
                    assert!(shell_split(line).is_some(), "{line}");
                }
            }
            "debian" => {
                let p = cfg("config/preseed.cfg");
                let line = line_with(p, "mkdir -p /target/home/ops/.ssh");
                // Without the preseed continuation `\` that ends the line.
                let words = shell_split(line.strip_suffix('\\').unwrap()).unwrap();
                assert_eq!(words[..5], ["mkdir", "-p", "/target/home/ops/.ssh", "&&", "echo"]);
                assert_eq!(words[5], HOSTILE_KEY);
                assert_eq!(words[6..8], [">", "/target/home/ops/.ssh/authorized_keys"]);
                assert!(!words.iter().any(|w| w == "touch"), "{words:?}");
                // The crypted password is a preseed value, not shell: it stays bare.
                assert!(
                    p.contains(&format!("\nd-i passwd/user-password-crypted password {hash}\n"))
                );
            }
            "ubuntu" => {
                let ud = cfg("config/user-data");
                assert!(ud.contains(&format!("\n      - {yaml_key}\n")), "{ud}");
                assert!(ud.contains(r#"    password: "$6$a\"b\\c""#), "{ud}");
            }
            "harvester" => {
                let y = cfg("config/config-join.yaml");
                assert!(y.contains(&format!("\n    - {yaml_key}\n")), "{y}");
                assert!(y.contains(r#"  password: "$6$a\"b\\c""#), "{y}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn normal_values_render_as_before() {
    let profiles = Profiles::load(&examples()).unwrap();
    let rows = [
        normal(1, "rocky", ""),
        normal(2, "debian", ""),
        normal(3, "ubuntu", ""),
        normal(4, "harvester", "create"),
        normal(5, "harvester", "join"),
    ];
    let inv = inventory(&rows);
    let node = |h: &str| inv.get(h).unwrap();
    let files = render_all(&profiles, node("node01"));
    let ks = get(&files, "config/ks.cfg");
    assert!(ks.contains("--device=eno1 --ip=10.1.0.3"), "{ks}");
    assert!(ks.contains("\nrootpw --iscrypted '$6$salt$hash'\n"), "{ks}");
    assert!(ks.contains("\nsshkey --username=root 'ssh-ed25519 AAAA op'\n"), "{ks}");
    assert!(ks.contains("\nignoredisk --only-use=/dev/sda\n"), "{ks}");
    assert!(ks.contains("\nurl --url=http://10.1.0.5:8080/assets/rocky/repo\n"), "{ks}");
    assert!(ks.contains(
        "\ncurl -fsS 'http://10.1.0.5:8080/config/node01/restore-boot-order.sh?token=0123abcd' | sh\n"
    ));
    // Reports: started in %pre, done with retries in %post (never failing it), failed with a
    // reason in %onerror.
    for want in [
        "\n%pre\n# The installer runs: tell the boot service (phase `started`); never fatal.\ncurl -fsS -X POST 'http://10.1.0.5:8080/hosts/node01/started?install=00ff&token=0123abcd' || true\n%end\n",
        "\nfor try in 1 2 3 4 5; do curl -fsS -X POST 'http://10.1.0.5:8080/hosts/node01/done?install=00ff&token=0123abcd' && break; sleep 5; done\ntrue\n%end\n",
        "\nfor try in 1 2 3; do curl -fsS -X POST 'http://10.1.0.5:8080/hosts/node01/failed?install=00ff&token=0123abcd&reason=anaconda%3A%20the%20install%20failed%20%28kickstart%20onerror%29%3B%20see%20%2Ftmp%2Fanaconda.log' && break; sleep 5; done\ntrue\n%end\n",
    ] {
        assert!(ks.contains(want), "{want:?} in\n{ks}");
    }
    let boot = get(&files, "boot.ipxe");
    assert!(boot.contains(" ip=10.1.0.3::10.1.0.1:255.255.0.0:node01:eno1:none "), "{boot}");
    assert!(boot.contains(" BOOTIF=01-52-54-00-00-00-01 "), "{boot}");
    assert!(boot.contains(" inst.text console=ttyS0,115200n8 console=tty0\n"), "{boot}");
    assert!(boot.contains(" inst.repo=http://10.1.0.5:8080/assets/rocky/repo "), "{boot}");

    let files = render_all(&profiles, node("node02"));
    let p = get(&files, "config/preseed.cfg");
    for want in [
        "\nd-i netcfg/choose_interface select eno1\n",
        "\nd-i passwd/user-password-crypted password $6$salt$hash\n",
        "\nd-i partman-auto/disk string /dev/sda\n",
        "\nd-i mirror/http/hostname string 10.1.0.5:8080\n",
        "\n  mkdir -p /target/home/ops/.ssh && echo 'ssh-ed25519 AAAA op' > /target/home/ops/.ssh/authorized_keys && in-target chown -R ops:ops /home/ops/.ssh; \\\n",
        "\n  in-target sh -c \"curl -fsS 'http://10.1.0.5:8080/config/node02/restore-boot-order.sh?token=0123abcd' | sh\"; \\\n",
        "\n  for try in 1 2 3 4 5; do wget -q -O /dev/null 'http://10.1.0.5:8080/hosts/node02/done?install=00ff&token=0123abcd' && break; sleep 5; done; true\n",
        "\nd-i preseed/early_command string \\\n  wget -q -O /dev/null 'http://10.1.0.5:8080/hosts/node02/started?install=00ff&token=0123abcd'; \\\n",
        "\n  wget -q -O /tmp/bootforge-report-failure.sh 'http://10.1.0.5:8080/config/node02/report-failure.sh?token=0123abcd' && (sh /tmp/bootforge-report-failure.sh </dev/null >/dev/null 2>&1 &); \\\n  true\n",
        "\nd-i mirror/protocol string http\n",
        "\nd-i mirror/http/directory string /assets/debian/mirror\n",
        "\nd-i mirror/http/proxy string \n",
    ] {
        assert!(p.contains(want), "{want:?} in\n{p}");
    }
    let boot = get(&files, "boot.ipxe");
    assert!(boot.contains(" interface=eno1 BOOTIF=01-52-54-00-00-00-02 "), "{boot}");
    // The consoles after `---`, which the installer copies to the installed system (issue 18).
    assert!(boot.contains(" --- console=ttyS0,115200n8 console=tty0\n"), "{boot}");
    let watcher = get(&files, "config/report-failure.sh");
    assert!(
        watcher.contains("wget -q -O /dev/null 'http://10.1.0.5:8080/hosts/node02/failed?install=00ff&token=0123abcd'\"&reason=$reason\""),
        "{watcher}"
    );

    let files = render_all(&profiles, node("node03"));
    let ud = get(&files, "config/user-data");
    for want in [
        "\n    password: \"$6$salt$hash\"\n",
        "\n      - \"ssh-ed25519 AAAA op\"\n",
        "\n      \"eno1\":\n",
        "\n        set-name: \"eno1\"\n",
        "\n        path: \"/dev/sda\"\n",
        "\n    - curtin in-target --target=/target -- sh -c \"curl -fsS 'http://10.1.0.5:8080/config/node03/restore-boot-order.sh?token=0123abcd' | sh\" || true\n",
        "\n    - curl -fsS -X POST 'http://10.1.0.5:8080/hosts/node03/started?install=00ff&token=0123abcd' || true\n",
        "\n    - for try in 1 2 3 4 5; do curl -fsS -X POST 'http://10.1.0.5:8080/hosts/node03/done?install=00ff&token=0123abcd' && break; sleep 5; done; true\n",
        "\n    - curl -fsS -X POST 'http://10.1.0.5:8080/hosts/node03/failed?install=00ff&token=0123abcd&reason=subiquity%3A%20the%20install%20failed%20%28error-commands%29%3B%20see%20%2Fvar%2Flog%2Finstaller%2F' || true\n",
    ] {
        assert!(ud.contains(want), "{want:?} in\n{ud}");
    }

    let files = render_all(&profiles, node("node04"));
    let y = get(&files, "config/config-create.yaml");
    for want in [
        "\ntoken: \"tok-123\"\n",
        "\n  device: \"/dev/sda\"\n",
        "\n  vip: \"10.1.0.250\"\n",
        "\n      - name: \"eno1\"\n",
        "\n    - \"curl -fsS 'http://10.1.0.5:8080/config/node04/restore-boot-order.sh?token=0123abcd' | sh\"\n",
        "\n    - event: STARTED\n      method: GET\n      url: \"http://10.1.0.5:8080/hosts/node04/started?install=00ff&token=0123abcd\"\n",
        "\n    - event: FAILED\n      method: GET\n      url: \"http://10.1.0.5:8080/hosts/node04/failed?install=00ff&token=0123abcd&reason=harvester-installer%3A%20the%20install%20failed%20%28FAILED%20webhook%29%3B%20see%20%2Fvar%2Flog%2Fconsole.log\"\n",
    ] {
        assert!(y.contains(want), "{want:?} in\n{y}");
    }
    let boot = get(&files, "boot.ipxe");
    assert!(boot.contains(
        " BOOTIF=01-52-54-00-00-00-04 net.ifnames=1 console=ttyS0,115200n8 console=tty1 "
    ));
    let files = render_all(&profiles, node("node05"));
    let y = get(&files, "config/config-join.yaml");
    assert!(y.contains("\nserver_url: \"https://10.1.0.250:443\"\n"), "{y}");
    assert!(get(&files, "boot.ipxe").contains("/config/node05/config-join.yaml?token=0123abcd"));
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

#[test]
fn preseed_filter() {
    for ok in ["", "eno1", "/dev/disk/by-id/x", "$6$salt$hash", "a b\\c", "a#b"] {
        assert_eq!(preseed_value(ok), Ok(ok), "{ok:?}");
    }
    for bad in ["/dev/sda\\", "a\nd-i x string y", " eno1", "eno1\t", "a\0"] {
        let err = preseed_value(bad).expect_err(bad);
        assert!(err.contains("`preseed` filter"), "{err}");
        assert!(!err.contains("d-i x"), "the value is not echoed: {err}");
    }
}

/// The Debian profile's preseed puts free columns through `preseed`: a disk ending in `\`,
/// which would join the next preseed line to it, stops the render.
#[test]
fn a_trailing_backslash_never_reaches_a_preseed_line() {
    let profiles = Profiles::load(&examples()).unwrap();
    let inv = inventory(&[row(
        7,
        "debian",
        "",
        "/dev/sda\\",
        "eno1",
        "tok-123",
        "https://10.1.0.250:443",
        "$6$salt$hash",
        KEY,
    )]);
    let node = inv.get("node07").unwrap();
    let err = profiles.render("debian", "config/preseed.cfg", &ctx(node)).unwrap_err();
    assert!(err.contains("preseed.cfg") && err.contains("`preseed` filter"), "{err}");
    let err = profiles.check_inventory(&inv).unwrap_err();
    assert!(err.starts_with("nodes.csv:2 (node07): "), "{err}");
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

#[test]
fn check_names_the_row_of_a_bad_value() {
    let profiles = Profiles::load(&examples()).unwrap();
    let mut rows: Vec<String> = (1..=9).map(|n| normal(n, "rocky", "")).collect();
    let good = inventory(&rows);
    profiles.check_against(good.nodes()).unwrap();
    profiles.check_inventory(&good).unwrap();

    // Row 7 (line 8 of the file) gets a space in iface.
    rows[6] = row(7, "rocky", "", "/dev/sda", "eno1 x", "t", "j", "$6$h", KEY);
    let bad = inventory(&rows);
    let err = profiles.check_against(bad.nodes()).unwrap_err();
    let boot = examples().join("rocky/boot.ipxe").display().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("inventory line 8 (node07): {boot}:8: ")), "{err}");
    assert!(err.contains("a space at position 5"), "{err}");
    let err = profiles.check_inventory(&bad).unwrap_err();
    assert!(err.starts_with(&format!("nodes.csv:8 (node07): {boot}:8: ")), "{err}");

    // Many bad rows: the first 20 errors are listed, in file order, and the rest counted.
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_profiles(dir.path());
    let mut text = String::from("hostname,ip,profile,role\n");
    for n in 1..=30 {
        let role = if n == 1 { "ok" } else { "a b" };
        text.push_str(&format!("n{n},10.0.1.{n}/24,tiny,{role}\n"));
    }
    let inv = Inventory::parse("many.csv", text.as_bytes()).unwrap();
    let err = tiny.check_inventory(&inv).unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 21, "{err}");
    assert!(lines[0].starts_with("many.csv:3 (n2): "), "{err}");
    assert!(lines[19].starts_with("many.csv:22 (n21): "), "{err}");
    assert_eq!(lines[20], "… and 9 more errors not listed");
}

/// `node` is a plain map of the row: a column the inventory lacks is still an error under the
/// strict undefined behaviour, filtered or not, and is caught by the load-time check.
#[test]
fn unknown_column_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("boot.ipxe"),
        "#!ipxe\necho {{ node.role }}\necho {{ node.nope | ipxe }}\n",
    )
    .unwrap();
    let profiles = Profiles::load(dir.path()).unwrap();
    let inv =
        Inventory::parse("nodes.csv", "hostname,ip,profile,role\nn1,10.0.0.5/24,p,r\n".as_bytes())
            .unwrap();
    let err = profiles.render("p", "boot.ipxe", &ctx(inv.get("n1").unwrap())).unwrap_err();
    let named = "p/boot.ipxe:3: undefined value in `{{ node.nope | ipxe }}`: `node.nope`: the \
                 inventory has no `nope` column";
    assert!(err.contains(named), "{err}");
    let err = profiles.check_inventory(&inv).unwrap_err();
    assert!(err.starts_with("nodes.csv:2 (n1): ") && err.contains(named), "{err}");
    // Only the undefined one of several names in a tag is named.
    std::fs::write(p.join("boot.ipxe"), "#!ipxe\necho {{ node.role ~ node.gone ~ node.ip }}\n")
        .unwrap();
    let profiles = Profiles::load(dir.path()).unwrap();
    let err = profiles.render("p", "boot.ipxe", &ctx(inv.get("n1").unwrap())).unwrap_err();
    assert!(err.contains(": `node.gone`: the inventory has no `gone` column"), "{err}");
    assert!(!err.contains("`node.role`:") && !err.contains("`node.ip`:"), "{err}");
}

/// `[vars]` in profile.toml: defaults for `vars.NAME`, overridden per node by a non-empty CSV
/// column of the same name; an undeclared one is an error naming it and saying where to declare
/// it.
#[test]
fn profile_vars_have_defaults_and_per_node_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("profile.toml"),
        "[vars]\nconsole = \"ttyS0,115200n8 tty0\"\nmirror = \"\"\n",
    )
    .unwrap();
    std::fs::write(
        p.join("boot.ipxe"),
        "#!ipxe\nkernel k{% for c in vars.console | split %} console={{ c | ipxe }}{% endfor %}\n\
         # {{ vars.mirror or asset_url('debian/mirror') }}\n",
    )
    .unwrap();
    let profiles = Profiles::load(dir.path()).unwrap();
    let inv = Inventory::parse(
        "nodes.csv",
        "hostname,ip,profile,console,mirror\n\
         n1,10.0.0.5/24,p,,\n\
         n2,10.0.0.6/24,p,tty0 ttyS1,https://m.example:8443/deb\n"
            .as_bytes(),
    )
    .unwrap();
    let one = profiles.render("p", "boot.ipxe", &ctx(inv.get("n1").unwrap())).unwrap();
    assert!(one.contains("kernel k console=ttyS0,115200n8 console=tty0\n"), "{one}");
    assert!(one.contains("# http://10.1.0.5:8080/assets/debian/mirror\n"), "{one}");
    let two = profiles.render("p", "boot.ipxe", &ctx(inv.get("n2").unwrap())).unwrap();
    assert!(two.contains("kernel k console=tty0 console=ttyS1\n"), "{two}");
    assert!(two.contains("# https://m.example:8443/deb\n"), "{two}");

    std::fs::write(p.join("boot.ipxe"), "#!ipxe\necho {{ vars.proxy }}\n").unwrap();
    let profiles = Profiles::load(dir.path()).unwrap();
    let err = profiles.render("p", "boot.ipxe", &ctx(inv.get("n1").unwrap())).unwrap_err();
    assert!(err.contains("p/boot.ipxe:2: undefined value in `{{ vars.proxy }}`: `vars.proxy`"));
    assert!(err.contains("`proxy` is not under [vars] in this profile's profile.toml"), "{err}");
}

#[test]
fn url_filter() {
    let u = parse_url("http://10.20.0.5:3142/debian").unwrap();
    assert_eq!(
        (u.scheme.as_str(), u.host.as_str(), u.port, u.hostport.as_str(), u.path.as_str()),
        ("http", "10.20.0.5", Some(3142), "10.20.0.5:3142", "/debian")
    );
    let u = parse_url("HTTPS://mirror.example.net").unwrap();
    assert_eq!((u.scheme.as_str(), u.port, u.path.as_str()), ("https", None, "/"));
    assert_eq!(u.url(), "https://mirror.example.net/");
    let u = parse_url("ftp://[fd00::5]:21/pub/debian/").unwrap();
    assert_eq!((u.host.as_str(), u.hostport.as_str()), ("[fd00::5]", "[fd00::5]:21"));
    for (bad, why) in [
        ("mirror.example.net/debian", "no `://`"),
        ("file:///srv/debian", "scheme \"file\" is not supported"),
        ("http://user:pw@m.example/", "a user name"),
        ("http://m.example:0/", "the port is not a number"),
        ("http://m.example:99999/", "the port is not a number"),
        ("http://m.example:/", "the port is not a number"),
        ("http://m example/", "the host is not"),
        ("http:///debian", "the host is not"),
        ("http://m.example/debian?x=1", "a query"),
        ("http://m.example/debian#x", "a fragment"),
        ("http://m.example/a b", "a space at position 3"),
        ("http://m.example/$(reboot)", "`$` at position 2"),
    ] {
        let err = parse_url(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// A node on a VLAN: iPXE tagged its NIC, so each installer must tag its own too, or its static
/// address lands on the untagged network (Debian's netcfg, dracut's vlan= for Rocky and
/// Harvester), and the installed system keeps the tag.
#[test]
fn vlan_nodes_tag_the_installer_nic_too() {
    let profiles = Profiles::load(&examples()).unwrap();
    let header = "hostname,ip,gateway,dns,mac,vlan,profile,install_disk,password_hash,ssh_key,iface,role,cluster_token,cluster_vip,join_server";
    let text = format!(
        "{header}\n\
         d1,10.1.0.5/24,10.1.0.1,10.1.0.2,52:54:00:00:00:01,130,debian,/dev/sda,x,k,,,,,\n\
         r1,10.1.0.6/24,10.1.0.1,10.1.0.2,,130,rocky,/dev/sda,x,k,eno1,,,,\n\
         h1,10.1.0.7/24,10.1.0.1,10.1.0.2,,130,harvester,/dev/sda,x,k,ens3,create,t,10.1.0.9,\n"
    );
    let inv = Inventory::parse("vlan.csv", text.as_bytes()).unwrap();
    profiles.check_inventory(&inv).unwrap();
    let files = render_all(&profiles, inv.get("d1").unwrap());
    let boot = get(&files, "boot.ipxe");
    assert!(boot.contains(" netcfg/use_vlan=true netcfg/vlan_id=130 "), "{boot}");
    assert!(boot.contains(" interface=auto BOOTIF=01-52-54-00-00-00-01 "), "{boot}");
    let preseed = get(&files, "config/preseed.cfg");
    assert!(
        preseed.contains(
            "\nd-i netcfg/disable_autoconfig boolean true\nd-i netcfg/use_vlan boolean true\nd-i netcfg/vlan_id string 130\nd-i netcfg/get_ipaddress string 10.1.0.5\n"
        ),
        "{preseed}"
    );
    let files = render_all(&profiles, inv.get("r1").unwrap());
    let boot = get(&files, "boot.ipxe");
    assert!(
        boot.contains(" ip=10.1.0.6::10.1.0.1:255.255.255.0:r1:eno1.130:none vlan=eno1.130:eno1 "),
        "{boot}"
    );
    assert!(!boot.contains("BOOTIF="), "no MAC, no BOOTIF: {boot}");
    assert!(get(&files, "config/ks.cfg").contains(" --nameserver=10.1.0.2 --vlanid=130 "));
    let files = render_all(&profiles, inv.get("h1").unwrap());
    assert!(get(&files, "boot.ipxe").contains(":h1:ens3.130:none vlan=ens3.130:ens3 "));
    let y = get(&files, "config/config-create.yaml");
    assert!(
        y.contains("\n    gateway: 10.1.0.1\n    vlan_id: 130\n    default_route: true\n"),
        "{y}"
    );
}

/// The Debian profile's `security` and `updates` variables (issue 18): the default (`on`) writes
/// nothing, so the installer's own defaults apply as before; `off` leaves a source out of
/// apt-setup's services; a URL replaces the source with the site's own mirror of that suite,
/// numbered from local0 without gaps; anything else is refused at load time, naming the row.
#[test]
fn debian_security_and_updates_sources_follow_the_variables() {
    let profiles = Profiles::load(&examples()).unwrap();
    let header =
        "hostname,ip,gateway,dns,mac,profile,install_disk,password_hash,ssh_key,security,updates";
    let text = format!(
        "{header}\n\
         d0,10.1.0.4/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,,\n\
         d1,10.1.0.5/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,off,off\n\
         d2,10.1.0.6/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,off,on\n\
         d3,10.1.0.7/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,http://10.20.0.5/debian-security,off\n\
         d4,10.1.0.8/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,on,https://m.example:8443/debian\n\
         d5,10.1.0.9/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,http://10.20.0.5/debian-security,http://10.20.0.5/debian\n"
    );
    let inv = Inventory::parse("sources.csv", text.as_bytes()).unwrap();
    profiles.check_inventory(&inv).unwrap();
    let preseed = |h: &str| {
        get(&render_all(&profiles, inv.get(h).unwrap()), "config/preseed.cfg").to_string()
    };

    // Default: not a word about apt-setup, as before the variables existed.
    let p = preseed("d0");
    assert!(!p.contains("apt-setup/"), "{p}");
    assert!(
        p.contains("\nd-i mirror/http/proxy string \nd-i passwd/root-login boolean false\n"),
        "{p}"
    );

    let p = preseed("d1");
    assert!(p.contains("\nd-i apt-setup/services-select multiselect \nd-i passwd/"), "{p}");
    assert!(!p.contains("apt-setup/local"), "{p}");
    let p = preseed("d2");
    assert!(p.contains("\nd-i apt-setup/services-select multiselect updates\nd-i passwd/"), "{p}");

    let p = preseed("d3");
    assert!(
        p.contains(
            "\nd-i apt-setup/services-select multiselect \n\
             d-i apt-setup/local0/repository string http://10.20.0.5/debian-security bookworm-security main\n\
             d-i apt-setup/local0/comment string security: the site's own mirror\n\
             d-i apt-setup/local0/source boolean false\nd-i passwd/"
        ),
        "{p}"
    );
    assert!(!p.contains("apt-setup/local1"), "{p}");
    let p = preseed("d4");
    assert!(
        p.contains(
            "\nd-i apt-setup/services-select multiselect security\n\
             d-i apt-setup/local0/repository string https://m.example:8443/debian bookworm-updates main\n"
        ),
        "{p}"
    );
    let p = preseed("d5");
    assert!(
        p.contains(
            "\nd-i apt-setup/services-select multiselect \n\
             d-i apt-setup/local0/repository string http://10.20.0.5/debian-security bookworm-security main\n"
        ),
        "{p}"
    );
    assert!(
        p.contains(
            "\nd-i apt-setup/local1/repository string http://10.20.0.5/debian bookworm-updates main\n\
             d-i apt-setup/local1/comment string updates: the site's own mirror\n"
        ),
        "{p}"
    );

    // Neither `yes` nor a URL with a space or a query gets into the preseed: the load refuses
    // the row.
    for bad in ["yes", "http://10.20.0.5/deb?x=1", "http://h/a b"] {
        let text =
            format!("{header}\nd9,10.1.0.4/24,10.1.0.1,10.1.0.2,,debian,/dev/sda,x,k,{bad},on\n");
        let inv = Inventory::parse("bad.csv", text.as_bytes()).unwrap();
        let err = profiles.check_inventory(&inv).unwrap_err().to_string();
        assert!(err.contains("bad.csv:2 (d9)") && err.contains("preseed.cfg"), "{bad}: {err}");
    }
}

/// Issue 18: the installed system's consoles follow the profile's `console` variable. The
/// Debian installer copies the kernel parameters after `---` to the installed system (its
/// `user-params`, which grub-installer writes into the installed GRUB's kernel command line), so
/// the profile puts the consoles there. This runs the installer's own `user-params`, taken from
/// the netboot initrd (Debian's `debian-installer-12-netboot-amd64`), in its test mode on the
/// rendered kernel line, for the default consoles and for a Serial-over-LAN row.
#[test]
fn debian_installed_system_keeps_the_consoles() {
    const INITRD: &str =
        "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/initrd.gz";
    const PACKAGE: &str = "debian-installer-12-netboot-amd64";
    assert!(
        Path::new(INITRD).is_file(),
        "PREREQUISITE MISSING: {INITRD} does not exist. Install the Debian package `{PACKAGE}` \
         (apt-get install {PACKAGE})."
    );
    let out = std::process::Command::new("zcat").arg(INITRD).output().expect("run zcat (gzip)");
    assert!(out.status.success(), "zcat {INITRD}: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let script = newc_file(&out.stdout, "bin/user-params").expect("bin/user-params in the initrd");
    std::fs::write(dir.path().join("user-params"), script).unwrap();
    let aliases = newc_file(&out.stdout, "etc/preseed_aliases").expect("etc/preseed_aliases");
    std::fs::write(dir.path().join("user-params.aliases"), aliases).unwrap();

    let profiles = Profiles::load(&examples()).unwrap();
    let text = "hostname,ip,gateway,dns,mac,profile,install_disk,password_hash,ssh_key,console\n\
                d1,10.1.0.5/24,10.1.0.1,10.1.0.2,52:54:00:00:00:01,debian,/dev/sda,x,k,\n\
                d2,10.1.0.6/24,10.1.0.1,10.1.0.2,52:54:00:00:00:02,debian,/dev/sda,x,k,tty0 ttyS0,115200n8\n";
    let text = text.replace("tty0 ttyS0,115200n8", "\"tty0 ttyS0,115200n8\"");
    let inv = Inventory::parse("consoles.csv", text.as_bytes()).unwrap();
    for (host, want) in [
        ("d1", ["console=ttyS0,115200n8", "console=tty0"]),
        ("d2", ["console=tty0", "console=ttyS0,115200n8"]),
    ] {
        let files = render_all(&profiles, inv.get(host).unwrap());
        let kernel = line_with(get(&files, "boot.ipxe"), "kernel ");
        // /proc/cmdline: the arguments, without iPXE's `kernel URL`.
        let cmdline = kernel.splitn(3, ' ').nth(2).unwrap();
        std::fs::write(dir.path().join("user-params.in"), format!("{cmdline}\n")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("user-params")
            .env("TESTSUITE", "1")
            .current_dir(dir.path())
            .output()
            .expect("run the installer's user-params");
        assert!(out.status.success(), "user-params: {out:?}");
        let copied = String::from_utf8_lossy(&out.stdout);
        let copied: Vec<&str> = copied.lines().collect();
        assert_eq!(copied, want, "{host}: what the installed system gets from\n{cmdline}");
    }
}

/// The body of the regular file `name` in an uncompressed `newc` cpio archive (an initramfs),
/// or `None`. Hard links in newc keep the data on the last entry of the inode's names, so an
/// empty entry is passed over.
fn newc_file<'a>(archive: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut at = 0;
    while at + 110 <= archive.len() && &archive[at..at + 6] == b"070701" {
        let field = |i: usize| {
            let hex = std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).ok()?;
            usize::from_str_radix(hex, 16).ok()
        };
        let (size, name_len) = (field(6)?, field(11)?);
        let entry = archive.get(at + 110..at + 110 + name_len - 1)?;
        let data = (at + 110 + name_len).next_multiple_of(4);
        if entry == b"TRAILER!!!" {
            return None;
        }
        if entry == name.as_bytes() && size > 0 {
            return archive.get(data..data + size);
        }
        at = (data + size).next_multiple_of(4);
    }
    None
}

/// The bundled examples are one working whole: `bootforge serve --inventory examples/nodes.csv
/// --profiles examples/profiles` must start, so every template of every profile renders for
/// every example row that uses it, and every profile has a row.
#[test]
fn the_bundled_examples_load_together() {
    let profiles = Profiles::load(&examples()).unwrap();
    let csv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/nodes.csv");
    let inv = Inventory::load(&csv).unwrap_or_else(|e| panic!("{e}"));
    profiles.check_inventory(&inv).unwrap_or_else(|e| panic!("{e}"));
    for name in profiles.names() {
        assert!(
            inv.nodes().iter().any(|n| n.profile.as_deref() == Some(name)),
            "examples/nodes.csv has no row for the {name} profile"
        );
    }
}
