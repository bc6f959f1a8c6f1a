//! The flagged reimage cycle as a reusable piece, over plain HTTP or over HTTPS: the fleet's
//! inputs and media ([`Fleet`]), the cycle itself ([`flagged_cycle`]: flag → install chain →
//! config → done → reboot → local boot, checked on the audit log, the host view and the serial
//! console) and the console diagnosis ([`diagnose`]). `tests/cycle.rs` runs it over HTTP on
//! each firmware, `tests/https_boot.rs` over HTTPS with a private CA.
//!
//! Over HTTPS ([`Wire::Https`]) the fleet has a throwaway RSA CA and a leaf whose SAN is
//! `IP:10.0.2.2` (the host as the guest reaches it); the media are built for
//! `https://10.0.2.2:TLS_PORT` with `--uefi-only`; the service gets `--listen-tls` and an https
//! `--public-url`, so everything rendered for the node (install chain, config, `done`) points at
//! the TLS listener; the VM gets the CA in fw_cfg `etc/edk2/https/cacerts` (OVMF/AAVMF copy it
//! into `TlsCaCertificate`, which Debian's iPXE EFI builds trust) and its NIC is captured.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::pki::{Leaf, LeafSpec, Pki};
use super::*;

pub const READ_TOKEN: &str = "cycle-read-token-5f1e";
pub const REIMAGE_TOKEN: &str = "cycle-reimage-token-9a27";
pub const SECRET: &[u8] = b"cycle-test-fleet-secret\n";

/// node01 as the harness's boot tests know it (slirp's guest address, gateway and DNS), with the
/// e2e test profile.
const CYCLE_CSV: &str = "hostname,ip,gateway,dns,mac,profile\n\
                         node01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56,e2e\n";

/// A BIOS cycle is two boots of the CD plus the local disk; under TCG on a busy machine that is
/// well under a minute, so this only bounds a hang.
pub const BIOS_CYCLE_TIMEOUT: Duration = Duration::from_secs(240);
/// OVMF is much slower to start under TCG (about 10 s idle per boot).
pub const UEFI_CYCLE_TIMEOUT: Duration = Duration::from_secs(360);
/// AAVMF under TCG: about 10 s per boot to the first request, like OVMF; the cycle measured
/// about 30 s.
pub const ARM64_CYCLE_TIMEOUT: Duration = Duration::from_secs(240);
/// A single boot (unflagged, or service down: 4 tries 5 s apart).
pub const SINGLE_BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// What OVMF logs when it falls back to its setup menu: no further boot option will be tried.
pub const OVMF_MENU: &str = "starting Boot0000 \"UiApp\"";

/// How the node reaches the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http,
    /// UEFI only: the BIOS iPXE trusts only iPXE's own root.
    Https,
}

/// The fleet's private CA and the service's certificate, for [`Wire::Https`].
pub struct FleetTls {
    pub pki: Pki,
    pub leaf: Leaf,
    /// The CA as an EFI_SIGNATURE_LIST, for fw_cfg `etc/edk2/https/cacerts`.
    pub esl: PathBuf,
    /// The service's TLS listener (127.0.0.1 on the host, 10.0.2.2 for the guest).
    pub port: u16,
}

/// Inputs of one cycle: inventory, secret, tokens, profiles, the node's ISO, and for HTTPS the
/// CA and the TLS port.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub inventory: PathBuf,
    pub secret: PathBuf,
    pub tokens: PathBuf,
    pub profiles: PathBuf,
    pub iso: PathBuf,
    pub tls: Option<FleetTls>,
}

impl Fleet {
    /// Writes the inputs and runs `bootforge build` for `server` (the URL as the guest sees it),
    /// BIOS-capable media.
    pub fn build(server: &str) -> Fleet {
        Fleet::build_for(server, Firmware::Bios)
    }

    /// [`Fleet::build`] with media that boot on `firmware`: an arm64 machine gets the hybrid
    /// `--arch x86_64,arm64` ISO a mixed fleet would use.
    pub fn build_for(server: &str, firmware: Firmware) -> Fleet {
        Fleet::build_with(server, firmware, None)
    }

    /// A fleet whose node asks the service over HTTPS (`--uefi-only` media for
    /// `https://10.0.2.2:TLS_PORT`), with a fresh RSA CA and a leaf for `IP:10.0.2.2`.
    pub fn build_https(firmware: Firmware) -> Fleet {
        assert!(firmware.is_uefi(), "HTTPS media boot on UEFI only");
        let pki = Pki::rsa("bootforge cycle test CA");
        let leaf = pki.leaf(&LeafSpec::server("IP:10.0.2.2"));
        let esl = pki.esl();
        let port = free_port();
        let tls = FleetTls { pki, leaf, esl, port };
        Fleet::build_with(&format!("https://10.0.2.2:{port}"), firmware, Some(tls))
    }

    fn build_with(server: &str, firmware: Firmware, tls: Option<FleetTls>) -> Fleet {
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
        if tls.is_some() {
            cmd.arg("--uefi-only");
        }
        let said = run_ok(&mut cmd);
        let iso = out.join(format!("{NODE}.iso"));
        assert!(iso.is_file(), "bootforge build did not write {}:\n{said}", iso.display());
        Fleet { dir, inventory, secret, tokens, profiles, iso, tls }
    }

    /// `bootforge serve` for this fleet on `port` (plain: the harness's own API requests), plus
    /// the TLS listener the node asks for an HTTPS fleet.
    pub fn serve(&self, port: u16) -> Service {
        Service::start(&ServeInputs {
            dir: self.dir.path(),
            inventory: &self.inventory,
            profiles: &self.profiles,
            secret: &self.secret,
            tokens: &self.tokens,
            read_token: READ_TOKEN,
            assets: None,
            port,
            tls: self.tls.as_ref().map(|t| TlsInputs {
                chain: &t.leaf.chain,
                key: &t.leaf.key,
                port: t.port,
            }),
        })
    }

    /// A VM for this fleet's node: its ISO as a CD, the local test disk, node01's MAC, and for
    /// an HTTPS fleet the CA in fw_cfg (unless `with_ca` is false).
    pub fn vm(&self, firmware: Firmware, name: &str, with_ca: bool) -> Vm {
        let vm = Vm::new(firmware, name);
        let disk = local_disk(vm.dir());
        let mut vm = vm.medium(&self.iso, Attach::Cd).disk(&disk).nic(NODE_MAC);
        if let Some(tls) = self.tls.as_ref().filter(|_| with_ca) {
            let arg = format!("name=etc/edk2/https/cacerts,file={}", tls.esl.display());
            vm = vm.qemu_args(&["-fw_cfg", &arg]);
        }
        vm
    }

    /// node01's token, as every boot request of its medium carries it.
    pub fn node_token(&self) -> String {
        bootforge::token::Secret::new(SECRET.to_vec()).expect("the secret").node_token(NODE)
    }
}

/// Position of `needle` in `hay` at or after `from`, for ordering checks on the console.
pub fn find_after(hay: &str, needle: &str, from: usize) -> Option<usize> {
    hay.get(from..)?.find(needle).map(|i| i + from)
}

/// The audit records, one line each, for messages.
pub fn brief(events: &[Value]) -> String {
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
pub fn diagnose(serial: &str) -> String {
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

/// What a passed [`flagged_cycle`] leaves for further checks.
pub struct Cycle {
    pub fleet: Fleet,
    pub service: Service,
    pub run: VmRun,
    /// The service's plain listener (the harness's API requests; an HTTPS node must not use it).
    pub plain_port: u16,
    /// The NIC's frames of the whole cycle (HTTPS fleets only; in the fleet's temp dir).
    pub capture: Option<PathBuf>,
    /// Console, service logs and audit records, for panic messages.
    pub context: String,
}

/// The flagged cycle on `firmware` over `wire`: flag → install chain → config → done → reboot →
/// local boot, every step checked on the audit log, the host view and the console.
pub fn flagged_cycle(firmware: Firmware, wire: Wire, timeout: Duration) -> Cycle {
    let name = format!("cycle-{firmware:?}-{wire:?}").to_lowercase();
    let port = free_port();
    let fleet = match wire {
        Wire::Http => Fleet::build_for(&format!("http://10.0.2.2:{port}"), firmware),
        Wire::Https => Fleet::build_https(firmware),
    };
    let service = fleet.serve(port);

    // The operator's one request.
    let (status, flagged) = service.api("PUT", "/hosts/node01/reimage", REIMAGE_TOKEN);
    assert_eq!(status, 200, "PUT /hosts/node01/reimage: {flagged}\n{}", service.logs());
    assert_eq!(flagged["flagged"], true, "PUT did not flag: {flagged}");
    assert_eq!(flagged["profile"], "e2e", "PUT chose another profile: {flagged}");

    // Without -no-reboot: the install chain's `reboot` restarts the machine, which boots the CD
    // again. The BIOS local disk ends QEMU through isa-debug-exit, the UEFI one powers off.
    let capture = fleet.tls.as_ref().map(|_| fleet.dir.path().join("cycle.pcap"));
    let mut vm = fleet.vm(firmware, &name, true);
    if let Some(file) = &capture {
        vm = vm.capture_net(file);
    }
    let run = vm
        .allow_reboot()
        .timeout(timeout)
        .stop_on(&format!("{LOCAL_DISK_MARKER} "))
        .stop_on(OVMF_MENU)
        .run();
    let events = service.events();
    let (status, host) = service.api("GET", "/hosts/node01", READ_TOKEN);
    let context = format!(
        "{}{}\n{}\n--- /events ---\n{}\n--- GET /hosts/node01 ({status}) ---\n{host:#}",
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
    Cycle { fleet, service, run, plain_port: port, capture, context }
}

/// The capture `file` of a node asking the service at TLS port `tls_port`: TLS records (a
/// handshake and application data) went to that port, the node `token` is in no frame's payload
/// in clear, nor is a request line for node01's paths, and no TCP payload went to `plain_port`
/// (the service's plain listener, which an HTTPS node must never use).
pub fn assert_only_tls_on_the_wire(
    file: &Path,
    tls_port: u16,
    plain_port: Option<u16>,
    token: &str,
    context: &str,
) {
    let (frames, _) = pcap::read_ipv4(file);
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
    if let Some(plain) = plain_port {
        let plain_frames: Vec<String> = frames
            .iter()
            .filter(|f| f.protocol == 6 && f.dst_port == plain && !f.payload.is_empty())
            .map(|f| f.summary())
            .collect();
        assert!(
            plain_frames.is_empty(),
            "the node used the plain listener {plain}: {plain_frames:#?}\n{context}"
        );
    }
    for f in &frames {
        let clear = String::from_utf8_lossy(&f.payload);
        assert!(!clear.contains(token), "the node token in clear: {}\n{context}", f.summary());
        for path in ["/boot/node01", "/config/node01", "/hosts/node01"] {
            assert!(!clear.contains(path), "{path} in clear: {}\n{context}", f.summary());
        }
    }
}
