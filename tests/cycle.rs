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
//! The cycle's pieces (fleet, steps, diagnosis) live in `tests/common/cycle.rs`, shared with
//! the same cycle over HTTPS in `tests/https_boot.rs`. The harness runs one VM at a time per test
//! binary. Failures print the serial console, the service's stderr and the audit log.

mod common;

use common::cycle::{self, brief, diagnose, find_after, Fleet, Wire, OVMF_MENU};
use common::cycle::{
    ARM64_CYCLE_TIMEOUT, BIOS_CYCLE_TIMEOUT, SINGLE_BOOT_TIMEOUT, UEFI_CYCLE_TIMEOUT,
};
use common::*;
use serde_json::Value;
use std::time::Duration;

/// The flagged cycle over plain HTTP (`common::cycle::flagged_cycle` checks every step).
fn flagged_cycle(firmware: Firmware, timeout: Duration) {
    cycle::flagged_cycle(firmware, Wire::Http, timeout);
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
    let run = fleet
        .vm(firmware, &name, true)
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
    let run = fleet
        .vm(Firmware::Bios, "cycle-service-down", true)
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
