//! UEFI nodes boot over HTTPS from `bootforge serve --listen-tls` itself, with a private CA.
//!
//! The medium is the bootforge ISO built for `https://10.0.2.2:PORT` (`--uefi-only`), the
//! service's certificate is an RSA leaf of a throwaway CA (`common::pki`) whose SAN is
//! `IP:10.0.2.2`, the address the guest reaches the host at. The CA reaches OVMF as QEMU does it
//! for UEFI HTTPS Boot: fw_cfg `etc/edk2/https/cacerts` holds an EFI_SIGNATURE_LIST that OVMF
//! copies into the `TlsCaCertificate` variable, which Debian's iPXE EFI build trusts.
//!
//! * With the CA (x86_64 with OVMF, and arm64 with AAVMF, which reads the same fw_cfg file):
//!   the node's request is answered over TLS (the service's local-boot answer runs
//!   and the machine reaches its local disk), and the audit log has the request.
//! * Without the CA: the console shows the script's one-line TLS reason, and the machine boots
//!   its local disk at once: no retries, no loop.
//! * The capture of the node's traffic with the CA holds TLS records to the service and neither
//!   the node token nor a boot request in clear.

mod common;

use common::pki::{LeafSpec, Pki};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const READ_TOKEN: &str = "https-read-token-71c3";
const SECRET: &[u8] = b"https-boot-test-fleet-secret\n";
/// One UEFI boot to the first request and on to the local disk (OVMF under TCG: about 10 s to
/// start), as tests/cycle.rs allows a single boot.
const SINGLE_BOOT_TIMEOUT: Duration = Duration::from_secs(150);
const CSV: &str =
    "hostname,ip,gateway,dns,mac\nnode01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56\n";

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    iso: PathBuf,
    service: Service,
    service_tls_port: u16,
}

/// The CA, the service with its TLS listener, and node01's ISO asking it over https (the hybrid
/// x86_64+arm64 ISO for an arm64 machine).
fn setup(firmware: Firmware) -> Setup {
    let dir = tempfile::Builder::new().prefix("bootforge-https-").tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::rsa("bootforge https-boot test CA");
    let leaf = pki.leaf(&LeafSpec::server("IP:10.0.2.2"));
    let (port, tls_port) = (free_port(), free_port());
    let inventory = d.join("nodes.csv");
    std::fs::write(&inventory, CSV).unwrap();
    let secret = d.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let tokens = d.join("tokens");
    std::fs::write(&tokens, format!("# NAME ROLE SHA256\nviewer read {}\n", sha_hex(READ_TOKEN)))
        .unwrap();
    let profiles = d.join("profiles");
    copy_tree(&repo_path("tests/profiles/e2e"), &profiles.join("e2e"));
    let out = d.join("out");
    let mut cmd = Command::new(bootforge_bin());
    cmd.arg("build").arg(&inventory).args(["--server", &format!("https://10.0.2.2:{tls_port}")]);
    cmd.arg("--secret-file").arg(&secret).arg("--out").arg(&out);
    cmd.args(["--formats", "iso", "--uefi-only"]);
    if firmware == Firmware::UefiArm64 {
        cmd.args(["--arch", "x86_64,arm64"]);
    }
    run_ok(&mut cmd);
    let service = Service::start(&ServeInputs {
        dir: d,
        inventory: &inventory,
        profiles: &profiles,
        secret: &secret,
        tokens: &tokens,
        read_token: READ_TOKEN,
        assets: None,
        port,
        tls: Some(TlsInputs { chain: &leaf.chain, key: &leaf.key, port: tls_port }),
    });
    Setup { iso: out.join("node01.iso"), dir, pki, service, service_tls_port: tls_port }
}

fn uefi_vm(firmware: Firmware, name: &str, iso: &Path, ca: Option<&Path>) -> VmRun {
    uefi_vm_capturing(firmware, name, iso, ca, None)
}

/// [`uefi_vm`], recording the NIC's frames to `capture` when given.
fn uefi_vm_capturing(
    firmware: Firmware,
    name: &str,
    iso: &Path,
    ca: Option<&Path>,
    capture: Option<&Path>,
) -> VmRun {
    let vm = Vm::new(firmware, name);
    let disk = local_disk(vm.dir());
    let vm = match capture {
        Some(file) => vm.capture_net(file),
        None => vm,
    };
    let mut vm = vm
        .medium(iso, Attach::Cd)
        .disk(&disk)
        .nic(NODE_MAC)
        .timeout(SINGLE_BOOT_TIMEOUT)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "));
    if let Some(esl) = ca {
        let arg = format!("name=etc/edk2/https/cacerts,file={}", esl.display());
        vm = vm.qemu_args(&["-fw_cfg", &arg]);
    }
    vm.run()
}

/// The CA in TlsCaCertificate: iPXE verifies the service's certificate and the service's
/// answer (local boot: node01 is not flagged) runs.
#[test]
fn uefi_with_the_ca_boots_over_https() {
    with_the_ca_boots_over_https(Firmware::Uefi);
}

/// The same on arm64: AAVMF (Debian's qemu-efi-aarch64 2022.11) fills TlsCaCertificate from
/// the same fw_cfg file, and the arm64 iPXE trusts it.
#[test]
fn arm64_with_the_ca_boots_over_https() {
    with_the_ca_boots_over_https(Firmware::UefiArm64);
}

fn with_the_ca_boots_over_https(firmware: Firmware) {
    let s = setup(firmware);
    let name = format!("https-with-ca-{firmware:?}").to_lowercase();
    let capture = s.dir.path().join("node.pcap");
    let run = uefi_vm_capturing(firmware, &name, &s.iso, Some(&s.pki.esl()), Some(&capture));
    let events = s.service.events();
    let context = format!("{}\n{}\n--- /events ---\n{events:#?}", run.report(), s.service.logs());
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

    // On the wire: TLS records to the service's port, and the node token nowhere in clear
    // (it is in every boot request's query).
    let token = bootforge::token::Secret::new(SECRET.to_vec()).unwrap().node_token("node01");
    let (frames, _) = pcap::read_ipv4(&capture);
    let tls_port: u16 = s.service_tls_port;
    let to_service: Vec<&pcap::Frame> =
        frames.iter().filter(|f| f.protocol == 6 && f.dst_port == tls_port).collect();
    assert!(
        to_service.iter().any(|f| f.payload.len() > 5 && f.payload[0] == 0x16 && f.payload[1] == 3),
        "no TLS handshake record to port {tls_port} in the capture ({} frames)\n{context}",
        frames.len()
    );
    assert!(
        to_service.iter().any(|f| f.payload.first() == Some(&0x17)),
        "no TLS application-data record to port {tls_port} in the capture\n{context}"
    );
    for f in &frames {
        let clear = String::from_utf8_lossy(&f.payload);
        assert!(!clear.contains(&token), "the node token in clear: {}\n{context}", f.summary());
        assert!(!clear.contains("/boot/node01"), "a boot request in clear: {}", f.summary());
    }
    eprintln!("{name}: local disk after {:.1}s", run.elapsed.as_secs_f64());
    drop(s.dir);
}

/// No CA: the script names the problem in one line and boots the local disk at once.
#[test]
fn uefi_without_the_ca_says_why_and_boots_local() {
    let s = setup(Firmware::Uefi);
    let run = uefi_vm(Firmware::Uefi, "https-without-ca", &s.iso, None);
    let context = format!("{}\n{}", run.report(), s.service.logs());
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
