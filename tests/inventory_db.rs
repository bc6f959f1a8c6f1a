//! The inventory in the service's database, from the command line: `bootforge inventory import`
//! and `export` (a round trip; bad input and stale versions change nothing), and `bootforge build`
//! and `check` taking their nodes from the database, with the same result as from the CSV.

use std::path::Path;
use std::process::{Command, Output};

/// Free columns, an empty field, a quoted comma: what must survive the database.
const NODES: &str = "hostname,ip,gateway,dns,mac,vlan,profile,notes\n\
node01,10.20.0.11/24,10.20.0.1,10.20.0.2,52:54:00:12:34:56,,harvester,\"rack 1, top\"\n\
node02,10.20.0.12/24,10.20.0.1,,52:54:00:12:34:57,120,harvester,\n\
node03,10.20.0.13/24,,,,,,3rd\n";

/// The profiles and base URL imports are checked against (as `serve` would check them).
const PROFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles");
const URL: &str = "http://10.20.0.5:8080";

fn bootforge(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("BOOTFORGE_DATABASE")
        .output()
        .expect("the bootforge binary runs")
}

/// `bootforge inventory import FILE` into `d/st`, with the example profiles and a public URL
/// (the service's checks pass), then `extra`.
fn import(d: &Path, file: &str, extra: &[&str]) -> Output {
    let args = ["inventory", "import", file, "--state-dir", "st", "--profiles", PROFILES];
    bootforge(&[&args[..], &["--public-url", URL], extra].concat(), d)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bootforge failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got success: {out:?}");
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn export(dir: &Path) -> String {
    ok(&bootforge(&["inventory", "export", "--state-dir", "st"], dir))
}

#[test]
fn import_then_export_round_trips_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("nodes.csv"), NODES).unwrap();
    // Nothing to export from a database without an inventory.
    let err = failed(&bootforge(&["inventory", "export", "--state-dir", "st"], d));
    assert!(err.contains("no database at"), "{err}");
    let out = ok(&import(d, "nodes.csv", &[]));
    assert!(out.contains("imported 3 nodes") && out.contains("version 1"), "{out}");
    assert_eq!(export(d), NODES, "the same text, as this file has no comment or odd quoting");
    // -o writes a file (and nothing to stdout); the version is said on stderr.
    let out = bootforge(&["inventory", "export", "--state-dir", "st", "-o", "out.csv"], d);
    assert_eq!(ok(&out), "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 1"), "{out:?}");
    assert_eq!(std::fs::read_to_string(d.join("out.csv")).unwrap(), NODES);
    // BOOTFORGE_DATABASE names the database as --database does.
    let url = format!("sqlite://{}", d.join("st/state.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["inventory", "export"])
        .env("BOOTFORGE_DATABASE", &url)
        .output()
        .unwrap();
    assert_eq!(ok(&out), NODES);

    // A database that holds an inventory is replaced only against its version.
    let changed = NODES.replace("rack 1, top", "rack 2, low");
    std::fs::write(d.join("changed.csv"), &changed).unwrap();
    let err = failed(&import(d, "changed.csv", &[]));
    assert!(err.contains("--expect-version 1"), "{err}");
    let err = failed(&import(d, "changed.csv", &["--expect-version", "0"]));
    assert!(err.contains("at version 1, not 0") && err.contains("Nothing was imported"), "{err}");
    assert_eq!(export(d), NODES);

    // An invalid file: every error by line and column; nothing changes.
    let bad = NODES.replace("10.20.0.12/24", "10.20.0.300/24").replace("node03", "node_03");
    std::fs::write(d.join("bad.csv"), bad).unwrap();
    let err = failed(&import(d, "bad.csv", &["--expect-version", "1"]));
    assert!(err.contains("bad.csv:3: column ip"), "{err}");
    assert!(err.contains("bad.csv:4: column hostname"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(export(d), NODES);

    let out = ok(&import(d, "changed.csv", &["--expect-version", "1"]));
    assert!(out.contains("version 2"), "{out}");
    assert_eq!(export(d), changed);

    // Each import is audited as the local account, through the CLI, without field values.
    let log = ok(&bootforge(&["audit", "export", "--state-dir", "st"], d));
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["event"] == "inventory-changed")
        .collect();
    assert_eq!(records.len(), 2, "{log}");
    for (r, version) in records.iter().zip([1, 2]) {
        assert_eq!((r["via"].as_str(), r["action"].as_str()), (Some("cli"), Some("import")));
        assert_eq!((r["version"].as_u64(), r["nodes"].as_u64()), (Some(version), Some(3)));
        assert!(r["by"].as_str().is_some_and(|b| !b.is_empty()), "{r}");
    }
    assert!(!log.contains("rack"), "no field value in the audit log");
}

#[test]
fn build_and_check_from_the_database_match_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("nodes.csv"), NODES).unwrap();
    std::fs::write(d.join("secret"), b"fleet-secret\n").unwrap();
    let err = failed(&bootforge(&["build", "--server", "http://10.20.0.5:8080", "--out", "x"], d));
    assert!(err.contains("NODES.csv") || err.contains("--database"), "{err}");
    let err = failed(&bootforge(&["check", "--state-dir", "st"], d));
    assert!(err.contains("no database at"), "{err}");
    // An invalid file is refused before the database is even opened.
    std::fs::write(d.join("bad.csv"), "hostname,ip\nn1,10.0.0.300/24\n").unwrap();
    let err = failed(&import(d, "bad.csv", &[]));
    assert!(err.contains("bad.csv:2: column ip"), "{err}");
    assert!(!d.join("st").exists());
    ok(&import(d, "nodes.csv", &[]));
    let out = ok(&bootforge(&["check", "--state-dir", "st"], d));
    assert!(out.contains("3 nodes valid (2 with MAC, 1 on a VLAN, 2 with a profile)"), "{out}");

    let common = ["--server", "http://10.20.0.5:8080", "--secret-file", "secret"];
    let common = [&common[..], &["--formats", "efi,usb"]].concat();
    ok(&bootforge(&[&["build", "nodes.csv", "--out", "from-csv"], &common[..]].concat(), d));
    let from_db = [&["build", "--state-dir", "st", "--out", "from-db"], &common[..]].concat();
    ok(&bootforge(&from_db, d));
    let files = |sub: &str| -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(d.join(sub))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        out.sort();
        out
    };
    let (csv, db) = (files("from-csv"), files("from-db"));
    let names: Vec<_> = db.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"node03.usb.img") && names.contains(&"manifest.json"), "{names:?}");
    assert!(csv == db, "the same images, sums and manifest, byte for byte");
    // And the scripts inside them are the CSV's (the images carry each node's script).
    let a = ok(&bootforge(&["inspect", "from-db/node02.efi.img"], d));
    let b = ok(&bootforge(
        &[
            "script",
            "nodes.csv",
            "node02",
            "--secret-file",
            "secret",
            "--server",
            "http://10.20.0.5:8080",
            "--medium",
            "esp",
        ],
        d,
    ));
    assert!(a.contains(b.trim_end()), "inspect:\n{a}\nscript:\n{b}");
}

/// Starts `bootforge serve ARGS` in `dir` until it logs that it started (or 20 s pass), stops
/// it, and returns what it logged.
fn serve_log(dir: &Path, args: &[&str]) -> String {
    let log = dir.join(format!("serve-{}.log", rand_suffix()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("BOOTFORGE_DATABASE")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("bootforge serve started") || std::time::Instant::now() > deadline {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited with {status}: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("bootforge serve started"), "{text}");
    text
}

fn rand_suffix() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `serve` without `--inventory` serves the database's nodes (none, with a warning, while it
/// holds none); with `--inventory FILE` it serves the file and says once that it ignores the
/// database's inventory.
#[test]
fn serve_takes_its_inventory_from_the_database_unless_given_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("nodes.csv"), NODES).unwrap();
    std::fs::write(d.join("two.csv"), NODES.lines().take(3).collect::<Vec<_>>().join("\n"))
        .unwrap();
    let profiles = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles");
    let db = ["--profiles", profiles, "--state-dir", "st"];
    let log = serve_log(d, &db);
    assert!(log.contains("nodes=0"), "{log}");
    assert!(log.contains("the database holds no inventory yet"), "{log}");
    ok(&import(d, "two.csv", &[]));
    let log = serve_log(d, &db);
    assert!(log.contains("nodes=2"), "{log}");
    assert!(!log.contains("ignores"), "{log}");
    let file = [&db[..], &["--inventory", "nodes.csv"]].concat();
    let log = serve_log(d, &file);
    assert!(log.contains("nodes=3"), "the file is the inventory: {log}");
    assert_eq!(
        log.matches("the database holds an inventory, which this service ignores").count(),
        1,
        "{log}"
    );
}

/// `inventory import` runs the checks `serve` runs at start and at each reload (a `server`
/// column on every row when there is no `--public-url`), so it never stores an inventory that
/// every replica then refuses; and it needs `--profiles` to run them.
#[test]
fn import_runs_the_service_checks_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("n.csv"), "hostname,ip\nn1,10.0.0.11/24\n").unwrap();
    let base = ["inventory", "import", "n.csv", "--state-dir", "st"];
    let err = failed(&bootforge(&base, d));
    assert!(err.contains("--profiles"), "{err}");
    let err = failed(&bootforge(&[&base[..], &["--profiles", PROFILES]].concat(), d));
    assert!(err.contains("n1 (line 2) has no `server` column"), "{err}");
    assert!(err.contains("Nothing was imported"), "{err}");
    let out = bootforge(&["inventory", "export", "--state-dir", "st"], d);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && !stdout.contains("n1"), "nothing was written: {out:?}");
    // With the URL the service would use, the same file is fine.
    ok(&bootforge(&[&base[..], &["--profiles", PROFILES, "--public-url", URL]].concat(), d));
    assert_eq!(export(d), "hostname,ip\nn1,10.0.0.11/24\n");
}
