//! The whole reimage cycle under QEMU (TCG), with the real binaries: `bootforge build` writes the
//! node's ISO (with a node token), `bootforge serve` runs as a child process, an operator flags
//! the host with one `PUT`, and the machine boots its medium as a CD:
//!
//! 1. the first boot asks `/boot`, gets the e2e profile's install chain, fetches its config, calls
//!    `done` (which clears the flag) and runs `reboot`;
//! 2. QEMU restarts the machine (these VMs run with the harness's [`Vm::allow_reboot`], i.e.
//!    without `-no-reboot`), the medium asks `/boot` again, gets the local-boot script and boots
//!    the harness's local test disk, whose marker appears on the serial console.
//!
//! The checks read the service's audit log (`GET /events`), the host view (`GET /hosts/node01`)
//! and the serial console. Also covered: an unflagged host boots local at once, and a medium whose
//! service is down gives up after its retries and boots local.
//!
//! The flagged cycle and the unflagged local boot also run on arm64 (AAVMF, the hybrid
//! x86_64+arm64 ISO as a SCSI CD). Measured VM times on the 2-core build machine: BIOS cycle
//! about 8 s, UEFI about 30 s, arm64 about 25 s; an unflagged local boot about 2 s (BIOS) and
//! 15 s (arm64).
//!
//! The harness runs one VM at a time per test binary. Failures print the serial console, the
//! service's stderr and the audit log.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const READ_TOKEN: &str = "cycle-read-token-5f1e";
const REIMAGE_TOKEN: &str = "cycle-reimage-token-9a27";
const SECRET: &[u8] = b"cycle-test-fleet-secret\n";

/// node01 as the harness's boot tests know it (slirp's guest address, gateway and DNS), with the
/// e2e test profile.
const CYCLE_CSV: &str = "hostname,ip,gateway,dns,mac,profile\n\
                         node01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56,e2e\n";

/// A BIOS cycle is two boots of the CD plus the local disk; under TCG on a busy machine that is
/// well under a minute, so this only bounds a hang.
const BIOS_CYCLE_TIMEOUT: Duration = Duration::from_secs(240);
/// OVMF is much slower to start under TCG (about 10 s idle per boot).
const UEFI_CYCLE_TIMEOUT: Duration = Duration::from_secs(360);
/// AAVMF under TCG: about 10 s per boot to the first request, like OVMF; the cycle measured
/// about 30 s.
const ARM64_CYCLE_TIMEOUT: Duration = Duration::from_secs(240);
/// A single boot (unflagged, or service down: 4 tries 5 s apart).
const SINGLE_BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// What OVMF logs when it falls back to its setup menu: no further boot option will be tried.
const OVMF_MENU: &str = "starting Boot0000 \"UiApp\"";

/// Inputs of one cycle: inventory, secret, tokens, profiles, and the node's ISO.
struct Fleet {
    dir: tempfile::TempDir,
    inventory: PathBuf,
    secret: PathBuf,
    tokens: PathBuf,
    profiles: PathBuf,
    iso: PathBuf,
}

impl Fleet {
    /// Writes the inputs and runs `bootforge build` for `server` (the URL as the guest sees it).
    fn build(server: &str) -> Fleet {
        Fleet::build_for(server, Firmware::Bios)
    }

    /// [`Fleet::build`] with media that boot on `firmware`: an arm64 machine gets the hybrid
    /// `--arch x86_64,arm64` ISO a mixed fleet would use.
    fn build_for(server: &str, firmware: Firmware) -> Fleet {
        let dir = tempfile::Builder::new().prefix("bootforge-cycle-").tempdir().expect("temp dir");
        let inventory = dir.path().join("nodes.csv");
        std::fs::write(&inventory, CYCLE_CSV).expect("write nodes.csv");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).expect("write the secret");
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "# NAME ROLE SHA256\nviewer read {}\nops reimage {}\n",
                sha_hex(READ_TOKEN),
                sha_hex(REIMAGE_TOKEN)
            ),
        )
        .expect("write the tokens file");
        // A private copy of the test profile, so a concurrent edit cannot reload under the test.
        let profiles = dir.path().join("profiles");
        copy_tree(&repo_path("tests/profiles/e2e"), &profiles.join("e2e"));

        let out = dir.path().join("out");
        let mut cmd = Command::new(bootforge_bin());
        cmd.arg("build").arg(&inventory).args(["--server", server]);
        cmd.arg("--secret-file").arg(&secret).arg("--out").arg(&out).args(["--formats", "iso"]);
        if firmware == Firmware::UefiArm64 {
            cmd.args(["--arch", "x86_64,arm64"]);
        }
        let said = run_ok(&mut cmd);
        let iso = out.join(format!("{NODE}.iso"));
        assert!(iso.is_file(), "bootforge build did not write {}:\n{said}", iso.display());
        Fleet { dir, inventory, secret, tokens, profiles, iso }
    }

    /// `bootforge serve` for this fleet on `port`.
    fn serve(&self, port: u16) -> Service {
        Service::start(&ServeInputs {
            dir: self.dir.path(),
            inventory: &self.inventory,
            profiles: &self.profiles,
            secret: &self.secret,
            tokens: &self.tokens,
            read_token: READ_TOKEN,
            assets: None,
            port,
            tls: None,
        })
    }
}

/// Position of `needle` in `hay` at or after `from`, for ordering checks on the console.
fn find_after(hay: &str, needle: &str, from: usize) -> Option<usize> {
    hay.get(from..)?.find(needle).map(|i| i + from)
}

/// The audit records about node01, one line each, for messages.
fn brief(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} answer={} kind={} install={} file={} reason={}",
                e["time"].as_str().unwrap_or("?"),
                e["event"].as_str().unwrap_or("?"),
                e["answer"],
                e["kind"],
                e["install"],
                e["file"],
                e["reason"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Known ways the local boot goes wrong, recognised on the console, explained for the panic
/// message (empty when none applies).
fn diagnose(serial: &str) -> String {
    let mut hints = String::new();
    let answered_local = serial.find("bootforge: local boot:");
    if answered_local.is_some_and(|at| find_after(serial, "(try 2 of", at).is_some()) {
        hints.push_str(
            "\nDIAGNOSIS: the service answered with the local-boot script, that script returned \
             to the medium's script (a nested script's `exit` only ends itself), and the medium \
             asked /boot again as if the service had not answered, ATTEMPTS times, before its \
             own local boot: each local boot then costs several /boot answers (audit log, \
             metrics) and the retry sleeps. src/script.rs `node_script` must let the answer \
             replace the media script (`chain --replace`), so the answer's `exit` leaves iPXE.\n",
        );
    }
    if serial.contains(OVMF_MENU) {
        hints.push_str(
            "\nDIAGNOSIS: OVMF opened its boot menu (UiApp) when iPXE exited: src/script.rs \
             `local_boot_commands` leaves with `exit` (status 0) on UEFI, and a boot option that \
             returns EFI_SUCCESS makes edk2's boot manager stop and show the menu instead of \
             trying the next boot option (the local disk). It must leave with an error status \
             (`exit 1`).\n",
        );
    }
    hints
}

/// The flagged cycle on `firmware`: flag → install chain → config → done → reboot → local boot.
fn flagged_cycle(firmware: Firmware, timeout: Duration) {
    let name = format!("cycle-{firmware:?}").to_lowercase();
    let port = free_port();
    let guest_url = format!("http://10.0.2.2:{port}");
    let fleet = Fleet::build_for(&guest_url, firmware);
    let service = fleet.serve(port);

    // The operator's one request.
    let (status, flagged) = service.api("PUT", "/hosts/node01/reimage", REIMAGE_TOKEN);
    assert_eq!(status, 200, "PUT /hosts/node01/reimage: {flagged}\n{}", service.logs());
    assert_eq!(flagged["flagged"], true, "PUT did not flag: {flagged}");
    assert_eq!(flagged["profile"], "e2e", "PUT chose another profile: {flagged}");

    // Without -no-reboot: the install chain's `reboot` restarts the machine, which boots the CD
    // again. The BIOS local disk ends QEMU through isa-debug-exit, the UEFI one powers off.
    let vm = Vm::new(firmware, &name);
    let disk = local_disk(vm.dir());
    let run = vm
        .medium(&fleet.iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .allow_reboot()
        .timeout(timeout)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .stop_on(OVMF_MENU)
        .run();
    let events = service.events();
    let (status, host) = service.api("GET", "/hosts/node01", READ_TOKEN);
    let context = format!(
        "{}{}\n{}\n--- /events (node01) ---\n{}\n--- GET /hosts/node01 ({status}) ---\n{host:#}",
        diagnose(&run.serial),
        run.report(),
        service.logs(),
        brief(&events)
    );
    assert_eq!(status, 200, "GET /hosts/node01 failed\n{context}");

    // --- audit log: the order of what happened ---
    let node_events: Vec<&Value> = events.iter().filter(|e| e["host"] == "node01").collect();
    let pos = |pred: &dyn Fn(&Value) -> bool| node_events.iter().position(|e| pred(e));
    let refused: Vec<&&Value> = node_events
        .iter()
        .filter(|e| {
            e["event"].as_str().is_some_and(|k| k.ends_with("-denied") || k.ends_with("-ignored"))
        })
        .collect();
    assert!(refused.is_empty(), "{name}: requests were refused or ignored: {refused:?}\n{context}");
    let installs: Vec<&&Value> =
        node_events.iter().filter(|e| e["event"] == "boot" && e["answer"] == "install").collect();
    assert_eq!(
        installs.len(),
        1,
        "{name}: expected exactly one install-chain answer for node01\n{context}"
    );
    let install = installs[0];
    let id = install["install"].as_str().filter(|i| !i.is_empty()).unwrap_or_else(|| {
        panic!("{name}: the install-chain answer has no install id: {install}\n{context}")
    });
    assert_eq!(install["kind"], "opened", "{name}: install answer kind\n{context}");
    assert_eq!(install["mac"], NODE_MAC, "{name}: the boot request's MAC\n{context}");
    assert_eq!(install["ip"], NODE_IP, "{name}: the boot request's IP\n{context}");
    assert_eq!(install["medium"], "cd", "{name}: the boot request's medium\n{context}");
    assert_eq!(
        install["platform"],
        firmware.ipxe_platform(),
        "{name}: the boot request's platform\n{context}"
    );

    let set_at = pos(&|e| e["event"] == "flag-set" && e["changed"] == true);
    let install_at = pos(&|e| e["event"] == "boot" && e["answer"] == "install");
    let config_at = pos(&|e| e["event"] == "config" && e["file"] == "install.cfg");
    let done_at = pos(&|e| e["event"] == "done" && e["install"] == id);
    let local_at =
        pos(&|e| e["event"] == "boot" && e["answer"] == "local" && e["kind"] == "not-flagged");
    let order = [
        ("flag-set by PUT", set_at),
        ("install-chain answer", install_at),
        ("config install.cfg fetched", config_at),
        ("done accepted", done_at),
        ("local-boot answer (not flagged)", local_at),
    ];
    let mut last = None;
    for (what, at) in order {
        let at = at.unwrap_or_else(|| panic!("{name}: no audit record for: {what}\n{context}"));
        assert!(
            last.is_none_or(|l| at > l),
            "{name}: audit record \"{what}\" is out of order\n{context}"
        );
        last = Some(at);
    }
    let local_boots =
        node_events.iter().filter(|e| e["event"] == "boot" && e["answer"] == "local").count();
    assert_eq!(local_boots, 1, "{name}: expected one local-boot answer after done\n{context}");

    // --- host view: flag cleared by `done`, the install ended, the last boot was local ---
    assert_eq!(host["flagged"], false, "{name}: node01 is still flagged\n{context}");
    assert_eq!(host["phase"], "done", "{name}: phase\n{context}");
    assert_eq!(host["last_install"]["id"], id, "{name}: last_install.id\n{context}");
    assert_eq!(host["last_install"]["how"], "done", "{name}: last_install.how\n{context}");
    assert_eq!(host["last_boot"]["answer"], "local", "{name}: last_boot.answer\n{context}");

    // --- serial console: install chain, reboot, local boot, local disk, in that order ---
    // iPXE wraps its console at 80 columns (the install id can be split over two lines), so the
    // order is checked on the text without line breaks. The last line before the reboot
    // ("install done, rebooting") is not checked: SeaBIOS's serial mirror flushes lazily and
    // the reset can cut it short; the `done` request line before it is the witness instead.
    let serial: String = run.serial.replace('\n', "");
    let medium_line = "bootforge: node01 (10.0.2.15/24) on";
    let steps = [
        medium_line.to_string(),
        format!("bootforge-e2e: install chain for node01 (install {id})"),
        "/config/node01/install.cfg... ok".to_string(),
        "/hosts/node01/done... ok".to_string(),
        medium_line.to_string(),
        "bootforge: local boot: not flagged for reimage".to_string(),
        LOCAL_DISK_MARKER.to_string(),
    ];
    let mut from = 0;
    for step in &steps {
        from = find_after(&serial, step, from).unwrap_or_else(|| {
            panic!("{name}: the console lacks {step:?} (after the previous step)\n{context}")
        }) + step.len();
    }
    assert!(
        !serial.contains("bootforge-e2e: install failed"),
        "{name}: the install chain took its failure path\n{context}"
    );
    // The medium ran twice: once before the reboot, once after.
    let medium_runs = serial.matches(medium_line).count();
    assert_eq!(medium_runs, 2, "{name}: the medium's script ran {medium_runs} times\n{context}");
    assert!(!run.timed_out, "{name}: timed out\n{context}");

    let install_s = |e: &Value| e["ms"].as_u64().unwrap_or(0);
    eprintln!(
        "{name}: install {id}; install chain → done {:.1}s, done → local boot {:.1}s; VM {:.1}s",
        (install_s(node_events[done_at.unwrap()]) - install_s(node_events[install_at.unwrap()]))
            as f64
            / 1000.0,
        (install_s(node_events[local_at.unwrap()]) - install_s(node_events[done_at.unwrap()]))
            as f64
            / 1000.0,
        run.elapsed.as_secs_f64()
    );
}

#[test]
fn flagged_cycle_bios_cd() {
    flagged_cycle(Firmware::Bios, BIOS_CYCLE_TIMEOUT);
}

#[test]
fn flagged_cycle_uefi_cd() {
    flagged_cycle(Firmware::Uefi, UEFI_CYCLE_TIMEOUT);
}

/// The same cycle on an arm64 machine (AAVMF), from the hybrid x86_64+arm64 ISO as a SCSI CD.
#[test]
fn flagged_cycle_arm64_cd() {
    flagged_cycle(Firmware::UefiArm64, ARM64_CYCLE_TIMEOUT);
}

/// No flag: the first (and only) /boot answer is local boot, and the machine reaches its disk.
/// The harness's [`Vm`] keeps `-no-reboot`, so a reboot here would end the VM without the marker.
#[test]
fn unflagged_boots_local_bios_cd() {
    unflagged_boots_local(Firmware::Bios);
}

/// The same on arm64: the answered `exit 1` must make AAVMF try the local disk's BOOTAA64.EFI.
#[test]
fn unflagged_boots_local_arm64_cd() {
    unflagged_boots_local(Firmware::UefiArm64);
}

fn unflagged_boots_local(firmware: Firmware) {
    let port = free_port();
    let fleet = Fleet::build_for(&format!("http://10.0.2.2:{port}"), firmware);
    let service = fleet.serve(port);
    let name = format!("cycle-unflagged-{firmware:?}").to_lowercase();
    let vm = Vm::new(firmware, &name);
    let disk = local_disk(vm.dir());
    let run = vm
        .medium(&fleet.iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .timeout(SINGLE_BOOT_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .stop_on(OVMF_MENU)
        .run();
    let events = service.events();
    let context = format!(
        "{}{}\n{}\n--- /events ---\n{}",
        diagnose(&run.serial),
        run.report(),
        service.logs(),
        brief(&events)
    );
    let boots: Vec<&Value> =
        events.iter().filter(|e| e["event"] == "boot" && e["host"] == "node01").collect();
    assert_eq!(boots.len(), 1, "{name}: expected one /boot answer\n{context}");
    assert_eq!(boots[0]["answer"], "local", "{name}: answer\n{context}");
    assert_eq!(boots[0]["kind"], "not-flagged", "{name}: reason kind\n{context}");
    assert_eq!(boots[0]["platform"], firmware.ipxe_platform(), "{name}: platform\n{context}");
    assert!(
        run.serial.contains("bootforge: local boot: not flagged for reimage"),
        "{name}: the local-boot answer did not run\n{context}"
    );
    // The disk's marker names the path that reached it: its boot sector, or its EFI loader.
    let marker = format!("{LOCAL_DISK_MARKER} {}", if firmware.is_uefi() { "efi" } else { "bios" });
    assert!(run.serial.contains(&marker), "{name}: {marker:?} not on the console\n{context}");
    eprintln!("{name}: local disk after {:.1}s", run.elapsed.as_secs_f64());
}

/// The service is down (the port is closed): the medium's retries run out and it boots the
/// local disk by itself.
#[test]
fn service_down_boots_local_bios_cd() {
    let server = closed_url_for_guest();
    let fleet = Fleet::build(&server);
    let vm = Vm::new(Firmware::Bios, "cycle-service-down");
    let disk = local_disk(vm.dir());
    let run = vm
        .medium(&fleet.iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .timeout(SINGLE_BOOT_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .run();
    let context = format!("server {server}\n{}", run.report());
    let gave_up = format!(
        "bootforge: the boot service did not answer after {} tries",
        bootforge::script::ATTEMPTS
    );
    let at = run
        .serial
        .find(&gave_up)
        .unwrap_or_else(|| panic!("service-down: the retries did not run out\n{context}"));
    assert!(
        find_after(&run.serial, LOCAL_DISK_MARKER, at).is_some(),
        "service-down: the local disk was not reached after the retries\n{context}"
    );
    eprintln!("service-down: local disk after {:.1}s", run.elapsed.as_secs_f64());
}

/// Issue 17: where the inventory knows a node's SMBIOS UUID, a boot that reports another is
/// refused like a wrong MAC (local boot, a `uuid-mismatch` refusal naming the UUID expected and
/// the one sent); the right UUID, in any case, is accepted. QEMU's `-uuid` sets the UUID iPXE
/// sends as `${uuid}`.
#[test]
fn wrong_uuid_is_refused_bios_cd() {
    const EXPECTED: &str = "0F1C2F6E-AAAA-4BBB-8CCC-0123456789AB";
    const WRONG: &str = "0f1c2f6e-aaaa-4bbb-8ccc-ffffffffffff";
    let port = free_port();
    let fleet = Fleet::build(&format!("http://10.0.2.2:{port}"));
    // The row learns its UUID (as `bootforge discover` records it; upper case on purpose).
    std::fs::write(
        &fleet.inventory,
        format!(
            "hostname,ip,gateway,dns,mac,profile,uuid\n\
             node01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56,e2e,{EXPECTED}\n"
        ),
    )
    .unwrap();
    let service = fleet.serve(port);
    let boot = |name: &str, uuid: &str| {
        let vm = Vm::new(Firmware::Bios, name);
        let disk = local_disk(vm.dir());
        vm.medium(&fleet.iso, Attach::Cd)
            .disk(&disk)
            .nic(NODE_MAC)
            .uuid(uuid)
            .timeout(SINGLE_BOOT_TIMEOUT)
            .stop_on(&format!("{LOCAL_DISK_MARKER} "))
            .run()
    };
    let run = boot("cycle-wrong-uuid", WRONG);
    let events = service.events();
    let context =
        format!("{}\n{}\n--- /events ---\n{}", run.report(), service.logs(), brief(&events));
    let boots: Vec<&Value> =
        events.iter().filter(|e| e["event"] == "boot" && e["host"] == "node01").collect();
    assert_eq!(boots.len(), 1, "one /boot answer\n{context}");
    let refusal = boots[0];
    assert_eq!(refusal["answer"], "local", "{context}");
    assert_eq!(refusal["kind"], "uuid-mismatch", "{context}");
    assert_eq!(refusal["verified"], false, "{context}");
    assert_eq!(refusal["uuid"], WRONG, "the refusal names the UUID sent\n{context}");
    assert_eq!(
        refusal["expected_uuid"],
        EXPECTED.to_ascii_lowercase(),
        "and the one expected\n{context}"
    );
    assert!(
        // (The script's echo drops the apostrophe; the console wraps at 80 columns.)
        run.serial.contains("bootforge: local boot: the SMBIOS UUID sent is not the inventory"),
        "the node's console says why\n{context}"
    );
    assert!(run.serial.contains(LOCAL_DISK_MARKER), "the refused node boots its disk\n{context}");

    // The right machine, its UUID in lower case: accepted (not flagged, so local, verified).
    let run = boot("cycle-right-uuid", &EXPECTED.to_ascii_lowercase());
    let events = service.events();
    let context = format!("{}\n--- /events ---\n{}", run.report(), brief(&events));
    let last = events
        .iter()
        .rev()
        .find(|e| e["event"] == "boot" && e["host"] == "node01")
        .unwrap_or_else(|| panic!("a second boot record\n{context}"));
    assert_eq!(last["kind"], "not-flagged", "the UUID matched in any case\n{context}");
    assert_eq!(last["verified"], true, "{context}");
    assert!(last.get("expected_uuid").is_none(), "{context}");
}
