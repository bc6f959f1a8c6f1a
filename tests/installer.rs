//! The real Debian installer, driven by the shipped `examples/profiles/debian` profile, under
//! QEMU (TCG) with the real binaries.
//!
//! `bootforge build` writes node01's ISO (with a node token), `bootforge serve` runs with the
//! shipped profile, unchanged, and `--assets` holding the installer's kernel and initrd from
//! Debian's `debian-installer-12-netboot-amd64` package; an operator flags the host, and the
//! machine boots its medium as a CD:
//!
//! 1. the medium asks `/boot` and gets the profile's install chain, which loads the installer;
//! 2. the installer configures the node's **static** address from the kernel line (no DHCP frame
//!    may appear on the wire: the NIC's traffic is captured with QEMU's `filter-dump`), fetches
//!    its per-node preseed from the service (from 10.0.2.15, the inventory's address) and reports
//!    `started` from its early command;
//! 3. there is no Debian mirror here (the profile's default `mirror` is the service's
//!    `assets/debian/mirror/`, which the test leaves empty), so the installer stops at "Bad
//!    archive mirror", and the profile's failure watcher reports `failed` with that reason.
//!
//! The VM stops as soon as the `failed` record is in the service's audit log; the checks read
//! `/events`, `GET /hosts/node01`, the capture and the serial console. The node's `console`
//! column puts the installer's screens on the serial port (`tty0 ttyS0,…`: the last console
//! shows them), which proves that per-node override as well.
//!
//! Measured on the 2-core build machine (TCG): BIOS about 76 s from power-on to the `failed`
//! report (the 49 MB of kernel and initrd over iPXE's HTTP, the kernel's start, the installer
//! up to its mirror check), UEFI about 93 s.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where Debian's `debian-installer-12-netboot-amd64` package puts the installer's kernel and
/// initrd (the text frontend; the same files as the netboot tarball's debian-installer/amd64/).
const INSTALLER_DIR: &str = "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";
const INSTALLER_PACKAGE: &str = "debian-installer-12-netboot-amd64";

const READ_TOKEN: &str = "installer-read-token-41d0";
const REIMAGE_TOKEN: &str = "installer-reimage-token-7c3e";
const SECRET: &[u8] = b"installer-test-fleet-secret\n";

/// node01 on slirp's network with the debian profile and the columns the profile needs; the
/// `console` column overrides the profile's default so the installer's screens reach ttyS0.
const INSTALLER_CSV: &str = "hostname,ip,gateway,dns,mac,profile,install_disk,password_hash,ssh_key,console\n\
     node01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56,debian,/dev/vda,!,ssh-ed25519 AAAAC3Nz ops@example,\"tty0 ttyS0,115200n8\"\n";

/// About 76 s (BIOS) and 93 s (UEFI) measured; this bounds a slow, shared machine, and a hang.
const INSTALLER_TIMEOUT: Duration = Duration::from_secs(240);

/// What the profile's watcher reports for a mirror without the release.
const MIRROR_REASON: &str = "choose-mirror: Bad archive mirror";

/// Copies the installer's kernel and initrd into `assets/debian/`, as the profile's boot.ipxe
/// lists them; fails the test naming the package when they are missing.
fn installer_assets(dir: &Path) -> PathBuf {
    let assets = dir.join("assets");
    std::fs::create_dir_all(assets.join("debian")).expect("mkdir assets/debian");
    for (file, asset) in [("linux", "linux"), ("initrd.gz", "initrd.gz")] {
        let from = require_file(&format!("{INSTALLER_DIR}/{file}"), INSTALLER_PACKAGE);
        let to = assets.join("debian").join(asset);
        // A hard link when the temp dir shares the file system, else a copy (49 MB).
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).expect("copy the installer into assets");
        }
    }
    assets
}

fn debian_installer(firmware: Firmware) {
    let name = format!("debian-installer-{firmware:?}").to_lowercase();
    require_for(firmware);
    let dir = tempfile::Builder::new().prefix("bootforge-installer-").tempdir().expect("temp dir");
    let assets = installer_assets(dir.path());
    let inventory = dir.path().join("nodes.csv");
    std::fs::write(&inventory, INSTALLER_CSV).expect("write nodes.csv");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let tokens = dir.path().join("tokens");
    let lines =
        format!("viewer read {}\nops reimage {}\n", sha_hex(READ_TOKEN), sha_hex(REIMAGE_TOKEN));
    std::fs::write(&tokens, lines).expect("write the tokens file");
    // The shipped profile, unchanged (a private copy, so an edit cannot reload under the test).
    let profiles = dir.path().join("profiles");
    copy_tree(&repo_path("examples/profiles/debian"), &profiles.join("debian"));

    let port = free_port();
    let out = dir.path().join("out");
    let mut cmd = Command::new(bootforge_bin());
    cmd.arg("build").arg(&inventory).args(["--server", &format!("http://10.0.2.2:{port}")]);
    cmd.arg("--secret-file").arg(&secret).arg("--out").arg(&out).args(["--formats", "iso"]);
    run_ok(&mut cmd);
    let service = Service::start(&ServeInputs {
        dir: dir.path(),
        inventory: &inventory,
        profiles: &profiles,
        secret: &secret,
        tokens: &tokens,
        read_token: READ_TOKEN,
        assets: Some(&assets),
        port,
    });
    let (status, flagged) = service.api("PUT", "/hosts/node01/reimage", REIMAGE_TOKEN);
    assert_eq!(status, 200, "PUT /hosts/node01/reimage: {flagged}\n{}", service.logs());
    let id = flagged["flag"]["install"]["id"].as_str().expect("install id").to_string();

    let state = service.state_dir.clone();
    let capture = dir.path().join("node01.pcap");
    let vm = Vm::new(firmware, &name);
    let disk = vm.dir().join("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(1 << 30)).expect("create the install disk");
    let vm = vm
        .medium(&out.join("node01.iso"), Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .memory_mb(1024)
        .capture_net(&capture)
        .timeout(INSTALLER_TIMEOUT)
        .stop_when(move || common::service::audit_log(&state).contains("\"event\":\"failed\""));
    let run = vm.run();
    let events = service.events();
    let (status, host) = service.api("GET", "/hosts/node01", READ_TOKEN);
    let node_events: Vec<&Value> = events.iter().filter(|e| e["host"] == "node01").collect();
    let brief: Vec<String> = node_events
        .iter()
        .map(|e| {
            let what = ["answer", "kind", "file", "install", "reason"]
                .iter()
                .filter(|k| !e[**k].is_null())
                .map(|k| format!("{k}={}", e[*k]))
                .collect::<Vec<_>>();
            format!("{} {} {}", e["time"].as_str().unwrap_or("?"), e["event"], what.join(" "))
        })
        .collect();
    let context = format!(
        "{}\n{}\n--- /events (node01) ---\n{}\n--- GET /hosts/node01 ({status}) ---\n{host:#}",
        run.report(),
        service.logs(),
        brief.join("\n")
    );

    // --- the service's audit log: the installer's steps, in order, for this install ---
    let pos = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        node_events
            .iter()
            .position(|e| pred(e))
            .unwrap_or_else(|| panic!("{name}: no audit record for: {what}\n{context}"))
    };
    let answered = pos("install-chain answer", &|e| {
        e["event"] == "boot" && e["answer"] == "install" && e["install"] == id.as_str()
    });
    let preseed =
        pos("preseed.cfg fetched", &|e| e["event"] == "config" && e["file"] == "preseed.cfg");
    let started = pos("started reported", &|e| e["event"] == "started" && e["install"] == id);
    let watcher = pos("report-failure.sh fetched", &|e| {
        e["event"] == "config" && e["file"] == "report-failure.sh"
    });
    let failed = pos("failed reported", &|e| e["event"] == "failed" && e["install"] == id);
    assert!(
        answered < preseed && preseed < started && started < watcher && watcher < failed,
        "{name}: the installer's records are out of order\n{context}"
    );
    let refused: Vec<&&Value> = node_events
        .iter()
        .filter(|e| {
            e["event"].as_str().is_some_and(|k| k.ends_with("-denied") || k.ends_with("-ignored"))
        })
        .collect();
    assert!(refused.is_empty(), "{name}: requests were refused: {refused:?}\n{context}");
    let reason = node_events[failed]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(MIRROR_REASON) && reason.contains("bookworm"),
        "{name}: the failure reason {reason:?} should start with {MIRROR_REASON:?} and name the \
         release the mirror lacks\n{context}"
    );

    // --- what the operator sees: failed, with the reason; the flag stays for a retry ---
    assert_eq!(status, 200, "GET /hosts/node01\n{context}");
    assert_eq!(host["phase"], "failed", "{name}: phase\n{context}");
    assert_eq!(host["flagged"], true, "{name}: a failure keeps the flag\n{context}");
    let install = &host["flag"]["install"];
    assert_eq!(install["failures"], 1, "{name}: failures\n{context}");
    assert_eq!(install["last_failure_reason"], reason, "{name}: reason shown\n{context}");
    assert!(install["started_at"].is_string(), "{name}: started_at\n{context}");

    // --- the wire: static address, no DHCP ---
    let (frames, _) = pcap::read_ipv4(&capture);
    let dhcp: Vec<String> = frames.iter().filter(|f| f.is_dhcp()).map(|f| f.summary()).collect();
    assert!(dhcp.is_empty(), "{name}: DHCP on the wire:\n{}\n{context}", dhcp.join("\n"));
    // The installer (not iPXE, which never asks for a config) fetched its preseed from the
    // inventory's address and MAC.
    let fetch = frames
        .iter()
        .find(|f| f.payload.starts_with(b"GET /config/node01/preseed.cfg"))
        .unwrap_or_else(|| {
            panic!(
                "{name}: the preseed request is not in the capture ({} frames)\n{context}",
                frames.len()
            )
        });
    assert_eq!(fetch.src.to_string(), NODE_IP, "{name}: preseed fetched from\n{context}");
    assert_eq!(fetch.src_mac, NODE_MAC, "{name}: preseed fetched by the NIC\n{context}");

    // --- the console: the kernel line the profile rendered, and the installer's screen ---
    let serial = run.serial.replace('\n', "");
    for want in [
        "BOOTIF=01-52-54-00-12-34-56",
        "interface=auto",
        "netcfg/disable_autoconfig=true",
        "netcfg/get_ipaddress=10.0.2.15",
        "console=tty0 console=ttyS0,115200n8",
        "Bad archive mirror",
    ] {
        assert!(serial.contains(want), "{name}: {want:?} is not on the console\n{context}");
    }
    assert!(!run.timed_out, "{name}: timed out\n{context}");
    let ms = |i: usize| node_events[i]["ms"].as_u64().unwrap_or(0);
    eprintln!(
        "{name}: chain → preseed {:.1}s → started {:.1}s → failed {:.1}s; VM {:.1}s",
        (ms(preseed) - ms(answered)) as f64 / 1000.0,
        (ms(started) - ms(preseed)) as f64 / 1000.0,
        (ms(failed) - ms(started)) as f64 / 1000.0,
        run.elapsed.as_secs_f64()
    );
}

#[test]
fn debian_installer_bios_cd() {
    debian_installer(Firmware::Bios);
}

#[test]
fn debian_installer_uefi_cd() {
    debian_installer(Firmware::Uefi);
}
