//! UEFI nodes boot over HTTPS from `bootforge serve --listen-tls` itself, with a private CA.
//!
//! The medium is the bootforge ISO built for `https://10.0.2.2:PORT` (`--uefi-only`), the
//! service's certificate is an RSA leaf of a throwaway CA (`common::pki`) whose SAN is
//! `IP:10.0.2.2`, the address the guest reaches the host at. The CA reaches OVMF as QEMU does it
//! for UEFI HTTPS Boot: fw_cfg `etc/edk2/https/cacerts` holds an EFI_SIGNATURE_LIST that OVMF
//! copies into the `TlsCaCertificate` variable, which Debian's iPXE EFI build trusts. The fleet,
//! the service and the cycle's checks are `tests/common/cycle.rs`'s, the same as
//! `tests/cycle.rs` runs over plain HTTP.
//!
//! * x86_64 (OVMF) with the CA: the full reimage cycle over HTTPS (flag, install chain, config,
//!   done, reboot, local-boot answer, local disk), every step checked as over HTTP; the capture
//!   of the whole cycle holds TLS records to the TLS listener, nothing to the plain listener,
//!   and neither the node token nor a request path in clear.
//! * arm64 (AAVMF, which reads the same fw_cfg file) with the CA: the unflagged boot is answered
//!   over TLS and the machine reaches its local disk; its capture is checked the same way.
//! * Without the CA: the console shows the script's one-line TLS reason, and the machine boots
//!   its local disk at once: no retries, no loop.

mod common;

use common::cycle::{self, brief, Fleet, Wire, SINGLE_BOOT_TIMEOUT, UEFI_CYCLE_TIMEOUT};
use common::*;
use serde_json::Value;

/// The whole flagged cycle over HTTPS on x86_64 UEFI, and its capture.
#[test]
fn uefi_flagged_cycle_over_https() {
    let c = cycle::flagged_cycle(Firmware::Uefi, Wire::Https, UEFI_CYCLE_TIMEOUT);
    assert!(!c.run.serial.contains("bootforge: TLS:"), "a TLS failure was reported\n{}", c.context);
    let tls = c.fleet.tls.as_ref().expect("an HTTPS fleet");
    let capture = c.capture.as_ref().expect("the cycle's capture");
    cycle::assert_only_tls_on_the_wire(
        capture,
        tls.port,
        Some(c.plain_port),
        &c.fleet.node_token(),
        &c.context,
    );
}

/// arm64: AAVMF (Debian's qemu-efi-aarch64 2022.11) fills TlsCaCertificate from the same fw_cfg
/// file, and the arm64 iPXE trusts it: the service's answer (local boot: node01 is not flagged)
/// runs.
#[test]
fn arm64_with_the_ca_boots_over_https() {
    let firmware = Firmware::UefiArm64;
    let fleet = Fleet::build_https(firmware);
    let port = free_port();
    let service = fleet.serve(port);
    let name = "https-with-ca-arm64";
    let capture = fleet.dir.path().join("node.pcap");
    let run = fleet
        .vm(firmware, name, true)
        .capture_net(&capture)
        .timeout(SINGLE_BOOT_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .run();
    let events = service.events();
    let context =
        format!("{}\n{}\n--- /events ---\n{}", run.report(), service.logs(), brief(&events));
    assert!(
        run.serial.contains("bootforge: local boot: not flagged for reimage"),
        "the service's answer did not run on the node\n{context}"
    );
    assert!(run.serial.contains(&format!("{LOCAL_DISK_MARKER} efi")), "no local disk\n{context}");
    assert!(!run.serial.contains("bootforge: TLS:"), "a TLS failure was reported\n{context}");
    let boots: Vec<&Value> =
        events.iter().filter(|e| e["event"] == "boot" && e["host"] == "node01").collect();
    assert_eq!(boots.len(), 1, "expected one /boot request\n{context}");
    assert_eq!(boots[0]["answer"], "local", "{context}");
    assert_eq!(boots[0]["platform"], "efi", "{context}");
    let tls = fleet.tls.as_ref().expect("an HTTPS fleet");
    cycle::assert_only_tls_on_the_wire(
        &capture,
        tls.port,
        Some(port),
        &fleet.node_token(),
        &context,
    );
    eprintln!("{name}: local disk after {:.1}s", run.elapsed.as_secs_f64());
}

/// No CA: the script names the problem in one line and boots the local disk at once.
#[test]
fn uefi_without_the_ca_says_why_and_boots_local() {
    let fleet = Fleet::build_https(Firmware::Uefi);
    let service = fleet.serve(free_port());
    let run = fleet
        .vm(Firmware::Uefi, "https-without-ca", false)
        .timeout(SINGLE_BOOT_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .run();
    let context = format!("{}\n{}", run.report(), service.logs());
    let failure = bootforge::script::KNOWN_FAILURES
        .iter()
        .find(|f| f.label == "tls_untrusted")
        .expect("the untrusted-certificate failure");
    let serial = run.serial.replace('\n', "");
    let said = format!("bootforge: {}", failure.message);
    let at = serial.find(&said).unwrap_or_else(|| panic!("no {said:?} on the console\n{context}"));
    assert!(
        serial[at..].contains(&format!("{LOCAL_DISK_MARKER} efi")),
        "the local disk was not booted after the TLS line\n{context}"
    );
    assert!(!serial.contains("(try 2 of"), "a certificate failure was retried\n{context}");
    assert!(!run.timed_out, "timed out\n{context}");
    eprintln!("https-without-ca: local disk after {:.1}s", run.elapsed.as_secs_f64());
}
