//! `bootforge check`, `script`, `build` and `inspect` as an operator runs them: the binary, real
//! files, exit codes and messages. Covers determinism and the all-or-nothing output folder.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

const NODES: &str = "hostname,ip,gateway,dns,mac,vlan,profile,role\n\
node01,10.20.0.11/24,10.20.0.1,10.20.0.2,52:54:00:12:34:56,,harvester,create\n\
node02,10.20.0.12/24,10.20.0.1,,52-54-00-12-34-57,120,harvester,join\n\
node03,10.20.0.13/24,,,,,,\n";

fn bootforge(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("the bootforge binary runs")
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
    assert!(!out.status.success(), "expected failure, got success: {:?}", out);
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// File name → SHA-256 of every file in `dir` (recursively, hidden ones included).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if path.is_dir() {
                files.insert(name + "/", String::new());
                stack.push(path);
            } else {
                files.insert(name, hex::encode(Sha256::digest(std::fs::read(&path).unwrap())));
            }
        }
    }
    files
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nodes.csv"), NODES).unwrap();
    dir
}

const SERVER: &str = "http://10.20.0.5:8080";

#[test]
fn check_reports_every_error_or_one_line() {
    let dir = setup();
    let out = ok(&bootforge(&["check", "nodes.csv"], dir.path()));
    assert_eq!(out.trim(), "nodes.csv: 3 nodes valid (2 with MAC, 1 on a VLAN, 2 with a profile)");

    std::fs::write(
        dir.path().join("bad.csv"),
        "hostname,ip,gateway\nok,10.0.0.5/24,10.0.0.1\nbad host,10.0.0.6/24,10.9.0.1\n",
    )
    .unwrap();
    let err = failed(&bootforge(&["check", "bad.csv"], dir.path()));
    assert!(
        err.contains("bad.csv:3: column hostname: \"bad host\" is not a valid host name"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv:3: column gateway: 10.9.0.1 is outside the node's subnet"),
        "{err}"
    );
    assert!(err.contains("2 errors in bad.csv"), "{err}");
}

#[test]
fn script_prints_the_node_script() {
    let dir = setup();
    let out = ok(&bootforge(&["script", "nodes.csv", "NODE02", "--server", SERVER], dir.path()));
    assert!(out.starts_with("#!ipxe\n"));
    assert!(out.contains("vcreate --tag 120 ${bootforge-nic}"));
    assert!(out.contains("set bootforge-mac 52:54:00:12:34:57"));
    let err = failed(&bootforge(&["script", "nodes.csv", "nope", "--server", SERVER], dir.path()));
    assert!(err.contains("has no node named \"nope\""), "{err}");
    let err = failed(&bootforge(&["script", "nodes.csv", "node01"], dir.path()));
    assert!(err.contains("nodes.csv:2: column server: empty and no --server was given"), "{err}");
    let err = failed(&bootforge(
        &["script", "nodes.csv", "node01", "--server", "http://h/$x"],
        dir.path(),
    ));
    assert!(err.contains("not a usable server URL"), "{err}");
}

#[test]
fn build_writes_images_sums_and_manifest() {
    let dir = setup();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"fleet secret").unwrap();
    let out = ok(&bootforge(
        &[
            "build",
            "nodes.csv",
            "--server",
            SERVER,
            "--out",
            "media",
            "--formats",
            "iso,usb,efi",
            "--arch",
            "x86_64,arm64",
            "--secret-file",
            "secret",
            "--jobs",
            "2",
        ],
        dir.path(),
    ));
    assert!(out.starts_with("built 9 images for 3 nodes into media"), "{out}");
    let media = dir.path().join("media");
    let names: Vec<String> = snapshot(&media).into_keys().collect();
    let mut expected = vec!["SHA256SUMS".to_string(), "manifest.json".to_string()];
    for host in ["node01", "node02", "node03"] {
        for suffix in ["iso", "usb.img", "efi.img"] {
            expected.push(format!("{host}.{suffix}"));
        }
    }
    expected.sort();
    assert_eq!(names, expected, "no staging folder or stray file is left");

    let check =
        Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&media).output().unwrap();
    assert!(check.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&check.stdout));
    assert_eq!(String::from_utf8_lossy(&check.stdout).matches(": OK").count(), 9);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(media.join("manifest.json")).unwrap()).unwrap();
    let node2 = &manifest["nodes"][1];
    assert_eq!(node2["hostname"], "node02");
    assert_eq!(node2["ip"], "10.20.0.12/24");
    assert_eq!(node2["mac"], "52:54:00:12:34:57");
    assert_eq!(node2["vlan"], 120);
    let iso = &node2["files"][0];
    assert_eq!(iso["file"], "node02.iso");
    assert_eq!(iso["medium"], "cd");
    let bytes = std::fs::read(media.join("node02.iso")).unwrap();
    assert_eq!(iso["size"], bytes.len());
    assert_eq!(iso["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(node2["files"][1]["medium"], "usb");
    assert_eq!(node2["files"][2]["medium"], "esp");
    assert!(node2["firmware"]["ipxe-arm64.efi"].as_str().unwrap().len() == 64);

    // The script inside the image is the one `script` prints, and its hash is in the manifest.
    let script = ok(&bootforge(
        &["script", "nodes.csv", "node02", "--server", SERVER, "--secret-file", "secret"],
        dir.path(),
    ));
    assert!(script.contains("set bootforge-token "), "a secret adds the node token");
    assert_eq!(iso["script_sha256"], hex::encode(Sha256::digest(script.as_bytes())));

    let shown = ok(&bootforge(&["inspect", "media/node02.iso"], dir.path()));
    assert!(shown.contains("node:      node02"), "{shown}");
    assert!(shown.contains("nic:       mac 52:54:00:12:34:57  vlan 120"), "{shown}");
    assert!(shown.contains(&script.trim_end().to_string()), "inspect shows the script:\n{shown}");
    assert!(shown.contains("debian ipxe 1.21.1+git20250501.dad20602+dfsg-1"), "{shown}");
    let json = ok(&bootforge(&["inspect", "--json", "media/node03.efi.img"], dir.path()));
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["hostname"], "node03");
    assert_eq!(info["medium"], "esp");
}

#[test]
fn same_inputs_give_identical_bytes() {
    let dir = setup();
    for out in ["a", "b"] {
        ok(&bootforge(
            &["build", "nodes.csv", "--server", SERVER, "--out", out, "--formats", "iso,usb,efi"],
            dir.path(),
        ));
    }
    let (a, b) = (snapshot(&dir.path().join("a")), snapshot(&dir.path().join("b")));
    assert_eq!(a.len(), 11);
    assert_eq!(a, b, "two builds of the same input differ");
    // A different epoch must change the images (dates are really taken from it).
    let out = Command::new(env!("CARGO_BIN_EXE_bootforge"))
        .args(["build", "nodes.csv", "--server", SERVER, "--out", "c"])
        .current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .output()
        .unwrap();
    ok(&out);
    let c = snapshot(&dir.path().join("c"));
    assert_ne!(a["node01.iso"], c["node01.iso"]);
}

#[test]
fn a_failed_build_changes_nothing() {
    let dir = setup();
    let media = dir.path().join("media");
    ok(&bootforge(&["build", "nodes.csv", "--server", SERVER, "--out", "media"], dir.path()));
    std::fs::write(media.join("notes.txt"), "operator's own file").unwrap();
    let before = snapshot(&media);

    // 1. Invalid inventory: refused before anything is written.
    std::fs::write(dir.path().join("bad.csv"), format!("{NODES}node04,10.20.0.300/24,,,,,,\n"))
        .unwrap();
    let err =
        failed(&bootforge(&["build", "bad.csv", "--server", SERVER, "--out", "media"], dir.path()));
    assert!(err.contains("bad.csv:5: column ip:"), "{err}");
    assert_eq!(snapshot(&media), before);

    // 2. A failure found only after every image was built (a folder where node02.iso goes):
    //    the new images of node01 must not have replaced the old ones.
    std::fs::remove_file(media.join("node02.iso")).unwrap();
    std::fs::create_dir(media.join("node02.iso")).unwrap();
    let before = snapshot(&media);
    let err = failed(&bootforge(
        &["build", "nodes.csv", "--server", "http://10.20.0.6:8080", "--out", "media"],
        dir.path(),
    ));
    assert!(err.contains("node02.iso exists and is not a regular file"), "{err}");
    assert_eq!(snapshot(&media), before, "a failed build left changes behind");

    // 3. Bad firmware folder: refused, and a new output folder is not even created.
    let fw = dir.path().join("fw");
    std::fs::create_dir(&fw).unwrap();
    std::fs::write(fw.join("ipxe.lkrn"), b"not a kernel").unwrap();
    let err = failed(&bootforge(
        &["build", "nodes.csv", "--server", SERVER, "--out", "fresh", "--firmware-dir", "fw"],
        dir.path(),
    ));
    assert!(err.contains("ipxe.lkrn"), "{err}");
    assert!(!dir.path().join("fresh").exists());

    // 4. Rows without a server and no --server: every such row is named.
    let err = failed(&bootforge(&["build", "nodes.csv", "--out", "fresh"], dir.path()));
    assert!(
        err.contains("nodes.csv:2: column server") && err.contains("nodes.csv:4: column server"),
        "{err}"
    );
    assert!(!dir.path().join("fresh").exists());
}

/// An https:// service and media that also boot BIOS machines (the ISO): refused, naming each
/// row (or --server) and the ways out, because the ISO's BIOS iPXE trusts only iPXE's own root
/// and such a node could never reach the service. UEFI-only formats, an operator's own
/// ipxe.lkrn, and rows that ask an http server instead are built.
#[test]
fn https_server_refuses_bios_media_it_cannot_serve() {
    let dir = setup();
    let https = "https://10.20.0.5:8443";
    let err =
        failed(&bootforge(&["build", "nodes.csv", "--server", https, "--out", "m1"], dir.path()));
    assert!(err.contains(&format!("--server {https} is https")), "{err}");
    for choice in ["--uefi-only", "--formats usb,efi", "--listen", "TRUST=", "--firmware-dir"] {
        assert!(err.contains(choice), "the error names the choice {choice:?}: {err}");
    }
    assert!(!dir.path().join("m1").exists(), "a refused build creates nothing");

    // UEFI-only formats: built.
    ok(&bootforge(
        &["build", "nodes.csv", "--server", https, "--out", "m2", "--formats", "usb,efi"],
        dir.path(),
    ));
    assert!(dir.path().join("m2/node01.usb.img").is_file());

    // Per-row servers: only the https rows are named; --server then is unused and not named.
    let rows = "hostname,ip,server\n\
                n1,10.20.0.11/24,http://10.20.0.5:8080\n\
                n2,10.20.0.12/24,https://10.20.0.5:8443\n\
                n3,10.20.0.13/24,http://10.20.0.5:8080\n";
    std::fs::write(dir.path().join("rows.csv"), rows).unwrap();
    let err =
        failed(&bootforge(&["build", "rows.csv", "--server", https, "--out", "m3"], dir.path()));
    assert!(err.contains("rows.csv:3: column server: https://10.20.0.5:8443 is https"), "{err}");
    assert!(!err.contains("rows.csv:2:") && !err.contains("rows.csv:4:"), "{err}");
    assert!(!err.contains("--server https"), "every row has its own server: {err}");
    let http_rows = rows.replace("https://10.20.0.5:8443", "http://10.20.0.5:8080");
    std::fs::write(dir.path().join("rows.csv"), http_rows).unwrap();
    ok(&bootforge(&["build", "rows.csv", "--server", https, "--out", "m3"], dir.path()));

    // --uefi-only: the ISO is built; its UEFI script asks the https service, its BIOS script
    // only says why it cannot and boots the local disk.
    ok(&bootforge(
        &["build", "nodes.csv", "--server", https, "--out", "m5", "--uefi-only"],
        dir.path(),
    ));
    let shown = ok(&bootforge(&["inspect", "m5/node01.iso"], dir.path()));
    assert!(shown.contains(&format!("set bootforge-server {https}")), "{shown}");
    assert!(shown.contains("booted the medium in BIOS mode, whose iPXE cannot verify"), "{shown}");

    // An operator's own ipxe.lkrn (built with TRUST= their CA): the ISO is built.
    let fw = dir.path().join("fw");
    std::fs::create_dir(&fw).unwrap();
    let lkrn = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/ipxe/ipxe.lkrn");
    std::fs::copy(lkrn, fw.join("ipxe.lkrn")).unwrap();
    ok(&bootforge(
        &["build", "nodes.csv", "--server", https, "--out", "m4", "--firmware-dir", "fw"],
        dir.path(),
    ));
    assert!(dir.path().join("m4/node01.iso").is_file());
}
