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
//! A third run (`debian_installer_missing_udeb_bios_cd`, issue 18) gives the installer a mirror
//! that has the release but lacks one of the installer's components (see [`test_mirror`]): the
//! installer stops at "Download installer components", and the watcher must report `failed`
//! naming that udeb.
//!
//! Two UEFI runs (`debian_boot_order_*`, issue 18) boot from OVMF's own boot order, with no
//! `bootindex`, and play the end of an install in the installer (see [`boot_order`]): with the
//! profile's restore-boot-order.sh the next boot asks the service again; without it the
//! firmware boots the "installed" OS directly.
//!
//! The VM stops as soon as the `failed` record is in the service's audit log; the checks read
//! `/events`, `GET /hosts/node01`, the capture and the serial console. The node's `console`
//! column puts the installer's screens on the serial port (`tty0 ttyS0,…`: the last console
//! shows them), which proves that per-node override as well.
//!
//! Measured on the 2-core build machine (TCG): BIOS about 76 s from power-on to the `failed`
//! report (the 49 MB of kernel and initrd over iPXE's HTTP, the kernel's start, the installer
//! up to its mirror check), UEFI about 93 s; the missing-udeb run about 100 s (the component
//! download comes after the mirror check); the boot-order runs about 90 s each (up to 140 s
//! when the machine is busy).

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

/// What the installer finds on its mirror, and so which failure the watcher must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mirror {
    /// No mirror at all: choose-mirror's "Bad archive mirror".
    Absent,
    /// A signed mirror whose installer-component index lists a udeb the pool lacks
    /// ([`MISSING_UDEB`]): anna's "package retrieval failed".
    MissingUdeb,
}

/// Writes node01's inventory, secret and tokens into `dir`, copies the shipped `debian` profile
/// (a private copy, so an edit cannot reload under the test) and lets `edit` change the copy,
/// builds node01's ISO, starts `bootforge serve` with `assets`, and flags node01. Returns the
/// service, the open install's id and the ISO.
fn serve_and_flag(
    dir: &Path,
    assets: &Path,
    edit: impl FnOnce(&Path),
) -> (Service, String, PathBuf) {
    let inventory = dir.join("nodes.csv");
    std::fs::write(&inventory, INSTALLER_CSV).expect("write nodes.csv");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let tokens = dir.join("tokens");
    let lines =
        format!("viewer read {}\nops reimage {}\n", sha_hex(READ_TOKEN), sha_hex(REIMAGE_TOKEN));
    std::fs::write(&tokens, lines).expect("write the tokens file");
    let profiles = dir.join("profiles");
    copy_tree(&repo_path("examples/profiles/debian"), &profiles.join("debian"));
    edit(&profiles.join("debian"));

    let port = free_port();
    let out = dir.join("out");
    let mut cmd = Command::new(bootforge_bin());
    cmd.arg("build").arg(&inventory).args(["--server", &format!("http://10.0.2.2:{port}")]);
    cmd.arg("--secret-file").arg(&secret).arg("--out").arg(&out).args(["--formats", "iso"]);
    run_ok(&mut cmd);
    let service = Service::start(&ServeInputs {
        dir,
        inventory: &inventory,
        profiles: &profiles,
        secret: &secret,
        tokens: &tokens,
        read_token: READ_TOKEN,
        assets: Some(assets),
        port,
        tls: None,
    });
    let (status, flagged) = service.api("PUT", "/hosts/node01/reimage", REIMAGE_TOKEN);
    assert_eq!(status, 200, "PUT /hosts/node01/reimage: {flagged}\n{}", service.logs());
    let id = flagged["flag"]["install"]["id"].as_str().expect("install id").to_string();
    (service, id, out.join("node01.iso"))
}

fn debian_installer(firmware: Firmware, mirror: Mirror) {
    let name = format!("debian-installer-{firmware:?}-{mirror:?}").to_lowercase();
    require_for(firmware);
    let dir = tempfile::Builder::new().prefix("bootforge-installer-").tempdir().expect("temp dir");
    let assets = installer_assets(dir.path());
    if mirror == Mirror::MissingUdeb {
        test_mirror::missing_udeb(dir.path(), &assets);
    }
    // The shipped profile, unchanged.
    let (service, id, iso) = serve_and_flag(dir.path(), &assets, |_| {});

    let state = service.state_dir.clone();
    let capture = dir.path().join("node01.pcap");
    let vm = Vm::new(firmware, &name);
    let disk = vm.dir().join("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(1 << 30)).expect("create the install disk");
    let vm = vm
        .medium(&iso, Attach::Cd)
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
    match mirror {
        Mirror::Absent => assert!(
            reason.starts_with(MIRROR_REASON) && reason.contains("bookworm"),
            "{name}: the failure reason {reason:?} should start with {MIRROR_REASON:?} and name \
             the release the mirror lacks\n{context}"
        ),
        Mirror::MissingUdeb => assert_eq!(
            reason,
            format!(
                "anna: package retrieval failed: {MISSING_UDEB} (Download installer components)"
            ),
            "{name}: the failure reason should name the component the mirror lacks\n{context}"
        ),
    }

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
    // The dialog the installer waits at: net-retriever's, after anna's failed download.
    let dialog = match mirror {
        Mirror::Absent => "Bad archive mirror",
        Mirror::MissingUdeb => "Downloading a file failed",
    };
    for want in [
        "BOOTIF=01-52-54-00-12-34-56",
        "interface=auto",
        "netcfg/disable_autoconfig=true",
        "netcfg/get_ipaddress=10.0.2.15",
        // After `---`, where the installer copies them to the installed system (issue 18),
        // and the installer still shows its screens on the last one (the dialog below).
        "--- console=tty0 console=ttyS0,115200n8",
        dialog,
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
    debian_installer(Firmware::Bios, Mirror::Absent);
}

#[test]
fn debian_installer_uefi_cd() {
    debian_installer(Firmware::Uefi, Mirror::Absent);
}

/// Issue 18: a mirror without one of the installer's components. The installer stops at
/// "Download installer components" (net-retriever's "Downloading a file failed" dialog) and
/// the watcher reports `failed` naming the missing udeb, instead of `started` for ever.
#[test]
fn debian_installer_missing_udeb_bios_cd() {
    debian_installer(Firmware::Bios, Mirror::MissingUdeb);
}

/// The udeb the test mirror's index lists but its pool lacks.
const MISSING_UDEB: &str = "bootforge-test-missing";

/// A Debian mirror for the installer's component download, made by the test: a signed
/// `dists/bookworm/Release`, the `main/debian-installer/binary-amd64/Packages` index anna reads,
/// and a pool holding every udeb it lists but [`MISSING_UDEB`].
///
/// There is no Debian archive here, and a real one's signature is Debian's. So the test signs
/// its own Release with a throwaway key (gpg) and puts that key where the installer's
/// net-retriever looks for the archive keyring (`/usr/share/keyrings/archive.gpg`), in a second
/// cpio archive appended to the installer's initrd: Linux unpacks concatenated initramfs
/// archives in order, later files replacing earlier ones. Everything else about the installer
/// is Debian's, unchanged; its signature check stays on.
mod test_mirror {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Builds the mirror under `assets/debian/mirror/` (the profile's default `mirror`) and
    /// replaces `assets/debian/initrd.gz` with the installer's initrd plus the test key.
    pub fn missing_udeb(work: &Path, assets: &Path) {
        require_cmd("gpg", "gnupg");
        require_cmd("gpgconf", "gnupg");
        require_cmd("dpkg-deb", "dpkg");
        let kernel = kernel_release(&assets.join("debian/linux"));
        let mirror = assets.join("debian/mirror");
        let dists = mirror.join("dists/bookworm");
        let index_dir = dists.join("main/debian-installer/binary-amd64");
        std::fs::create_dir_all(&index_dir).expect("mkdir the mirror's index folder");
        std::fs::create_dir_all(dists.join("main/binary-amd64")).expect("mkdir binary-amd64");

        // One udeb that is there: built for the installer's running kernel, because anna asks
        // whether to go on without kernel modules (a dialog of its own) when the archive has
        // none for it. And the one that is not.
        let present = format!("bootforge-test-modules-{kernel}-di");
        let present_file = format!("pool/main/b/bootforge-test/{present}_1.0_amd64.udeb");
        let udeb = build_udeb(work, &present, "1.0", "amd64");
        let pool = mirror.join(&present_file);
        std::fs::create_dir_all(pool.parent().unwrap()).expect("mkdir the pool");
        std::fs::write(&pool, &udeb).expect("write the udeb");
        let missing_file = format!("pool/main/b/bootforge-test/{MISSING_UDEB}_1.0_all.udeb");
        let never_served = b"this udeb is listed but not on the mirror";
        let packages = format!(
            "{}\n{}",
            stanza(&present, "amd64", Some(&kernel), &present_file, &udeb),
            stanza(MISSING_UDEB, "all", None, &missing_file, never_served)
        );
        std::fs::write(index_dir.join("Packages"), &packages).expect("write Packages");
        let arch_release = "Archive: stable\nComponent: main\nArchitecture: amd64\n";
        std::fs::write(dists.join("main/binary-amd64/Release"), arch_release)
            .expect("write the arch Release");
        let sums = [
            ("main/debian-installer/binary-amd64/Packages", packages.as_bytes()),
            ("main/binary-amd64/Release", arch_release.as_bytes()),
        ]
        .iter()
        .map(|(f, b)| format!(" {} {} {f}\n", hex::encode(Sha256::digest(b)), b.len()))
        .collect::<String>();
        let release = format!(
            "Origin: bootforge test\nLabel: bootforge test\nSuite: stable\nCodename: bookworm\n\
             Date: Sat, 10 Jun 2023 09:00:00 UTC\nArchitectures: amd64\nComponents: main\n\
             Description: a test mirror missing one installer component\nSHA256:\n{sums}"
        );
        std::fs::write(dists.join("Release"), &release).expect("write Release");

        let keyring = sign(work, &dists.join("Release"), &dists.join("Release.gpg"));
        let archive = newc_archive(&[("usr/share/keyrings/archive.gpg", 0o100644, &keyring)]);
        append_to_initrd(&assets.join("debian/initrd.gz"), &archive);
    }

    /// The kernel release (`uname -r`) of a bzImage: the x86 boot protocol's setup header
    /// holds, at 0x20E, the offset (less 0x200) of a NUL-terminated version string whose first
    /// word is the release.
    fn kernel_release(bzimage: &Path) -> String {
        let image = std::fs::read(bzimage).expect("read the installer's kernel");
        let at = u16::from_le_bytes([image[0x20e], image[0x20f]]) as usize + 0x200;
        let text = &image[at..image[at..].iter().position(|&b| b == 0).map_or(at, |n| at + n)];
        let release = String::from_utf8_lossy(text).split(' ').next().unwrap_or("").to_string();
        assert!(
            release.starts_with(|c: char| c.is_ascii_digit()) && release.contains('-'),
            "cannot read the kernel release from {}: {release:?}",
            bzimage.display()
        );
        release
    }

    /// One Packages stanza, as anna reads it (its SHA256 checks the download).
    fn stanza(package: &str, arch: &str, kernel: Option<&str>, file: &str, body: &[u8]) -> String {
        let kernel = kernel.map(|k| format!("Kernel-Version: {k}\n")).unwrap_or_default();
        format!(
            "Package: {package}\nVersion: 1.0\nArchitecture: {arch}\nPriority: standard\n\
             Section: debian-installer\nMaintainer: bootforge tests <tests@example.invalid>\n\
             {kernel}Filename: {file}\nSize: {}\nSHA256: {}\nDescription: bootforge test udeb\n",
            body.len(),
            hex::encode(Sha256::digest(body))
        )
    }

    /// An empty udeb (a .deb with only its control file), built by `dpkg-deb`.
    fn build_udeb(work: &Path, package: &str, version: &str, arch: &str) -> Vec<u8> {
        let root = work.join(format!("udeb-{package}"));
        std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir DEBIAN");
        let control = format!(
            "Package: {package}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: bootforge tests <tests@example.invalid>\nDescription: bootforge test udeb\n"
        );
        std::fs::write(root.join("DEBIAN/control"), control).expect("write control");
        let out = work.join(format!("{package}.udeb"));
        let mut cmd = Command::new("dpkg-deb");
        cmd.args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&out);
        run_ok(&mut cmd);
        std::fs::read(&out).expect("read the udeb")
    }

    /// Signs `file` (a detached binary signature to `signature`) with a new throwaway key in a
    /// private GnuPG home, and returns that key as a keyring `gpgv` reads. The key's agent is
    /// stopped before returning.
    fn sign(work: &Path, file: &Path, signature: &Path) -> Vec<u8> {
        let home = work.join("gnupg");
        std::fs::create_dir_all(&home).expect("mkdir the GnuPG home");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let gpg = |args: &[&str]| {
            let mut cmd = Command::new("gpg");
            cmd.arg("--homedir").arg(&home).args(["--batch", "--quiet", "--no-tty"]);
            cmd.args(["--pinentry-mode", "loopback", "--passphrase", ""]).args(args);
            cmd
        };
        // Stops the agent gpg starts for this home, also when a step below panics.
        struct StopAgent<'a>(&'a Path);
        impl Drop for StopAgent<'_> {
            fn drop(&mut self) {
                let _ = Command::new("gpgconf")
                    .arg("--homedir")
                    .arg(self.0)
                    .args(["--kill", "all"])
                    .status();
            }
        }
        let _agent = StopAgent(&home);
        run_ok(&mut gpg(&["--quick-gen-key", "bootforge test mirror", "ed25519", "sign", "never"]));
        let mut cmd = gpg(&["--detach-sign", "--output"]);
        cmd.arg(signature).arg(file);
        run_ok(&mut cmd);
        let out = gpg(&["--export"]).output().expect("gpg --export");
        assert!(out.status.success() && !out.stdout.is_empty(), "gpg --export: {out:?}");
        out.stdout
    }
}

/// A `newc` cpio archive (the initramfs format) of `(name, mode, body)` entries (directories with
/// an empty body), then the trailer. Written by hand: it is a fixed header per entry, and no
/// crate in the tree writes cpio.
fn newc_archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, body: &[u8]) {
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields =
            [ino, mode, 0, 0, nlink, 0, body.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend(b"070701");
        for f in fields {
            out.extend(format!("{f:08X}").as_bytes());
        }
        out.extend(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(body);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    for (n, (name, mode, body)) in entries.iter().enumerate() {
        entry(&mut out, 0x4000 + n as u32, *mode, name, body);
    }
    entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

/// Replaces `initrd` (maybe a hard link to the package's file: a new file is written) with
/// itself followed by `archive`. A plain cpio archive after a compressed one must start on a
/// 4-byte boundary; the kernel skips the zero padding, unpacks the archives in order, and a
/// later file replaces an earlier one.
fn append_to_initrd(initrd: &Path, archive: &[u8]) {
    let mut image = std::fs::read(initrd).expect("read the installer's initrd");
    std::fs::remove_file(initrd).expect("unlink the initrd copy");
    image.resize(image.len().next_multiple_of(4), 0);
    image.extend(archive);
    std::fs::write(initrd, image).expect("write the extended initrd");
}

/// Fails the test naming the Debian package when `cmd` is not on PATH.
fn require_cmd(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(cmd).is_file());
    assert!(
        found,
        "PREREQUISITE MISSING: `{cmd}` is not on PATH. Install the Debian package `{package}` \
         (apt-get install {package}). Boot tests never skip."
    );
}

/// What the installed system's loader prints in the boot-order tests (see [`boot_order`]).
const INSTALLED_MARKER: &str = "BOOTFORGE-INSTALLED-DEBIAN";

/// Issue 18: after an install, UEFI must come back to the bootforge medium (and so to the
/// service) even though the installer put the new OS first in the firmware's boot order. The
/// machine boots from OVMF's own boot order ([`Vm::firmware_boot_order`]), the variable store
/// kept across the guest's reboot; see [`boot_order`] for what plays the install.
#[test]
fn debian_boot_order_restored_uefi_cd() {
    boot_order(true);
}

/// The same without the profile's restore step: the firmware then boots the "installed" OS
/// directly and never asks the service again. This is the harness's proof that the test above
/// can fail, and the guard against `bootindex` (which made OVMF put the CD first on every boot,
/// restored or not) creeping back into these tests.
#[test]
fn debian_boot_order_lost_without_restore_uefi_cd() {
    boot_order(false);
}

/// One flagged UEFI boot into the Debian installer whose preseed plays the end of an install
/// in the installer itself, instead of installing for half an hour under TCG from a full mirror
/// this machine does not have:
///
/// 1. what grub-install does to the firmware: `efibootmgr -c` registers "debian"
///    (`\EFI\debian\grubx64.efi` on the disk's ESP) and puts it first in `BootOrder`;
/// 2. with `restore`, the profile's step, as the shipped preseed's late_command does it: fetch
///    the profile's `restore-boot-order.sh`, unchanged, and run it;
/// 3. report `done` and reboot.
///
/// The installer lacks efibootmgr, its libraries, the efivarfs and virtio disk modules (it loads
/// those from the mirror later) and `paste`; they come
/// from Debian's bookworm packages (scripts/fetch-installer-extras, run by `scripts/setup
/// --test`) in a cpio archive appended to the initrd, under `/bootforge/`. The "installed OS"
/// is the vendored iPXE as `\EFI\debian\grubx64.efi`, whose `autoexec.ipxe` prints
/// [`INSTALLED_MARKER`] and powers off.
///
/// After the reboot the firmware follows its own boot order: with the restore the medium runs
/// first, asks the service (the flag was cleared by `done`: answer `local`) and exits, and the
/// firmware goes on to "debian"; without it "debian" runs at once and the service hears nothing.
fn boot_order(restore: bool) {
    let name = format!("debian-boot-order-{}", if restore { "restored" } else { "lost" });
    require_for(Firmware::Uefi);
    require_cmd("dpkg-deb", "dpkg");
    require_cmd("sgdisk", "gdisk");
    let dir = tempfile::Builder::new().prefix("bootforge-installer-").tempdir().expect("temp dir");
    let assets = installer_assets(dir.path());
    append_to_initrd(&assets.join("debian/initrd.gz"), &installer_extras(dir.path()));
    let (service, id, iso) = serve_and_flag(dir.path(), &assets, |profile| {
        std::fs::write(profile.join("config/preseed.cfg"), end_of_install_preseed(restore))
            .expect("write the test preseed");
    });

    let vm = Vm::new(Firmware::Uefi, &name);
    let disk = vm.dir().join("disk.img");
    installed_disk(dir.path(), &disk);
    let run = vm
        .firmware_boot_order()
        .allow_reboot()
        .medium(&iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .memory_mb(1024)
        .timeout(BOOT_ORDER_TIMEOUT)
        .stop_on(INSTALLED_MARKER)
        .run();
    let events = service.events();
    let node: Vec<&Value> = events.iter().filter(|e| e["host"] == "node01").collect();
    let brief: Vec<String> = node
        .iter()
        .map(|e| format!("{} {} answer={}", e["time"], e["event"], e["answer"]))
        .collect();
    let context = format!(
        "{}\n{}\n--- /events (node01) ---\n{}",
        run.report(),
        service.logs(),
        brief.join("\n")
    );

    let done = node
        .iter()
        .position(|e| e["event"] == "done" && e["install"] == id.as_str())
        .unwrap_or_else(|| panic!("{name}: the install never reported done\n{context}"));
    assert!(
        node[..done].iter().any(|e| e["event"] == "boot" && e["answer"] == "install"),
        "{name}: no install-chain answer before done\n{context}"
    );
    // The boot order as the played install left it, printed by the test preseed.
    let serial = run.serial.as_str();
    assert!(
        serial.contains("bootforge-test: grub-install's step done")
            && serial.contains("BootOrder: "),
        "{name}: efibootmgr did not run in the installer\n{context}"
    );
    // Its autoexec.ipxe powers the machine off, often before the harness reads the console.
    assert!(serial.contains(INSTALLED_MARKER), "{name}: the installed OS never booted\n{context}");
    assert!(!run.timed_out, "{name}: timed out\n{context}");
    let asked_again = node[done..].iter().any(|e| e["event"] == "boot" && e["answer"] == "local");
    if restore {
        assert!(
            serial.contains("restore-boot-order: medium entry Boot"),
            "{name}: the profile's restore-boot-order.sh did not restore\n{context}"
        );
        assert!(
            asked_again,
            "{name}: after the install the machine did not ask the service again: the \
             firmware's boot order no longer starts with the bootforge medium\n{context}"
        );
    } else {
        assert!(
            !asked_again,
            "{name}: without the restore the machine still asked the service; the firmware \
             must have been told the boot order (bootindex?), so these tests cannot see a lost \
             boot order\n{context}"
        );
    }
    eprintln!("{name}: VM {:.1}s", run.elapsed.as_secs_f64());
}

/// Two boots of OVMF, the 49 MB installer over iPXE's HTTP and the installer up to its early
/// command; bounds a slow shared machine and a hang.
const BOOT_ORDER_TIMEOUT: Duration = Duration::from_secs(420);

/// The test preseed: everything before the mirror as in the shipped one is not needed; the
/// early command plays the end of an install (see [`boot_order`]). Its output goes to the
/// serial console for the checks.
fn end_of_install_preseed(restore: bool) -> String {
    // As the shipped preseed's late_command runs it (there: in-target with curl).
    let restore = if restore {
        "wget -q -O - {{ config_url('restore-boot-order.sh') | shell }} | sh >/dev/ttyS0 2>&1; \\\n  "
    } else {
        ""
    };
    format!(
        "# bootforge test: the end of an install, played by the installer (tests/installer.rs).\n\
         d-i preseed/early_command string \\\n  \
         wget -q -O /dev/null {{{{ started_url | shell }}}}; \\\n  \
         insmod /bootforge/efivarfs.ko; mount -t efivarfs efivarfs /sys/firmware/efi/efivars; \\\n  \
         modprobe virtio_pci; insmod /bootforge/virtio_blk.ko; udevadm settle; \\\n  \
         export PATH=/bootforge:$PATH LD_LIBRARY_PATH=/bootforge/lib; \\\n  \
         efibootmgr -q -c -d /dev/vda -p 1 -L debian -l '\\EFI\\debian\\grubx64.efi' >/dev/ttyS0 2>&1; \\\n  \
         echo \"bootforge-test: grub-install's step done\" >/dev/ttyS0; efibootmgr >/dev/ttyS0 2>&1; \\\n  \
         {restore}efibootmgr >/dev/ttyS0 2>&1; \\\n  \
         wget -q -O /dev/null {{{{ done_url | shell }}}}; \\\n  \
         reboot\n"
    )
}

/// The cpio archive of what the installer needs for [`end_of_install_preseed`], from the
/// packages scripts/fetch-installer-extras fetched: `/bootforge/` with efibootmgr, `paste`,
/// `efivarfs.ko`, `virtio_blk.ko` (the disk) and `lib/` with efibootmgr's libraries.
fn installer_extras(work: &Path) -> Vec<u8> {
    let from = std::env::var_os("BOOTFORGE_INSTALLER_EXTRAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("target/installer-extras"));
    let debs: Vec<PathBuf> = std::fs::read_dir(&from)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "deb" || x == "udeb"))
        .collect();
    let abi = std::fs::read_to_string(from.join("ABI")).unwrap_or_default();
    assert!(
        debs.len() >= 7 && !abi.trim().is_empty(),
        "PREREQUISITE MISSING: {} lacks the packages the boot-order test adds to the installer; \
         run scripts/fetch-installer-extras (scripts/setup --test runs it). Boot tests never skip.",
        from.display()
    );
    let x = work.join("extras");
    for deb in &debs {
        run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x));
    }
    let read = |rel: &str| -> Vec<u8> {
        std::fs::read(x.join(rel)).unwrap_or_else(|e| panic!("{rel} in the extras: {e}"))
    };
    let files: Vec<(String, u32, Vec<u8>)> = vec![
        ("bootforge/efibootmgr".into(), 0o100755, read("bin/efibootmgr")),
        ("bootforge/paste".into(), 0o100755, read("usr/bin/paste")),
        (
            "bootforge/virtio_blk.ko".into(),
            0o100644,
            read(&format!("lib/modules/{}/kernel/drivers/block/virtio_blk.ko", abi.trim())),
        ),
        (
            "bootforge/efivarfs.ko".into(),
            0o100644,
            read(&format!("lib/modules/{}/kernel/fs/efivarfs/efivarfs.ko", abi.trim())),
        ),
        (
            "bootforge/lib/libefiboot.so.1".into(),
            0o100644,
            read("usr/lib/x86_64-linux-gnu/libefiboot.so.1"),
        ),
        (
            "bootforge/lib/libefivar.so.1".into(),
            0o100644,
            read("usr/lib/x86_64-linux-gnu/libefivar.so.1"),
        ),
        (
            "bootforge/lib/libpopt.so.0".into(),
            0o100644,
            read("usr/lib/x86_64-linux-gnu/libpopt.so.0"),
        ),
    ];
    let mut entries: Vec<(&str, u32, &[u8])> =
        vec![("bootforge", 0o040755, &[]), ("bootforge/lib", 0o040755, &[])];
    entries.extend(files.iter().map(|(n, m, b)| (n.as_str(), *m, b.as_slice())));
    newc_archive(&entries)
}

/// The disk of the "installed" machine: GPT with one EFI system partition holding the vendored
/// iPXE as `\EFI\debian\grubx64.efi` (what grub-install registers) and an `autoexec.ipxe` that
/// prints [`INSTALLED_MARKER`] and powers off. There is no `\EFI\BOOT\BOOTX64.EFI`, so the
/// firmware boots it only through the "debian" entry.
fn installed_disk(work: &Path, disk: &Path) {
    const MIB: u64 = 1 << 20;
    let esp = work.join("esp.img");
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&esp)
            .expect("create the ESP image");
        f.set_len(62 * MIB).expect("size the ESP");
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat16)
                .volume_label(*b"ESP        "),
        )
        .expect("format the ESP");
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).expect("open the ESP");
        let root = fs.root_dir();
        let debian = root.create_dir("EFI").and_then(|d| d.create_dir("debian")).expect("mkdir");
        let ipxe = std::fs::read(repo_path("vendor/ipxe/ipxe-amd64.efi"))
            .expect("read vendor/ipxe/ipxe-amd64.efi");
        let put = |dir: &fatfs::Dir<'_, &mut std::fs::File>, name: &str, body: &[u8]| {
            use std::io::Write;
            let mut file = dir.create_file(name).expect("create a file on the ESP");
            file.truncate().expect("truncate");
            file.write_all(body).expect("write a file on the ESP");
        };
        put(&debian, "grubx64.efi", &ipxe);
        put(
            &root,
            "autoexec.ipxe",
            format!("#!ipxe\necho {INSTALLED_MARKER}\npoweroff\n").as_bytes(),
        );
    }
    let mut image = vec![0u8; MIB as usize];
    image.extend(std::fs::read(&esp).expect("read the ESP image"));
    image.resize(64 * MIB as usize, 0);
    std::fs::write(disk, image).expect("write the disk");
    run_ok(
        Command::new("sgdisk").args(["-n", "1:2048:+62M", "-t", "1:ef00", "-c", "1:ESP"]).arg(disk),
    );
}
