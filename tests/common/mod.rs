//! The QEMU boot-test harness, shared by every test file that boots media (`mod common;`).
//!
//! Pieces:
//! * [`require`] and friends: prerequisites. A missing one FAILS the test and names the Debian
//!   package; a boot test that skips silently would report success for media nobody booted.
//! * [`listener`]: a stand-in boot service that records requests.
//! * [`disks`]: the "local disk" a fallback ends on, for BIOS and UEFI alike.
//! * [`Vm`]: one QEMU machine (TCG only: KVM is not available where these run), with a hard
//!   timeout, serial console captured to a file, and the process killed on drop.
//! * [`build_media`]: runs the real `bootforge build`.
//! * [`cycle`]: the flagged reimage cycle against a real `bootforge serve`, over HTTP or HTTPS
//!   (`tests/cycle.rs`, `tests/https_boot.rs`).
//!
//! Set `BOOTFORGE_TEST_SHOW_CONSOLE=1` (with `--nocapture`) to print every VM's console and
//! command line, also when the test passes, and `BOOTFORGE_TEST_KEEP=1` to keep each VM's temp
//! dir (raw serial log, OVMF variables, local disk) for rerunning the printed command by hand.
//!
//! Console capture: OVMF and iPXE-on-UEFI write their console to COM1 by themselves. SeaBIOS does
//! not; it mirrors the text screen to a serial port only when fw_cfg `etc/sercon-port` holds the
//! port number as a *binary* integer (a `string=` value is ignored), so the builder writes a
//! two-byte file for it. QEMU warns that the name lacks the `opt/` prefix; SeaBIOS reads exactly
//! that name, so the warning is expected.

#![allow(dead_code)]

pub mod cycle;
pub mod disks;
pub mod listener;
pub mod pcap;
pub mod pki;
pub mod service;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use disks::{local_disk, LOCAL_DISK_MARKER};
// Not every test file uses every item.
#[allow(unused_imports)]
pub use listener::{closed_url_for_guest, Answer, Listener, Request, ANSWERED_MARKER};
#[allow(unused_imports)]
pub use service::{copy_tree, free_port, sha_hex, ServeInputs, Service, TlsInputs};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// QEMU for the arm64 machines ([`Firmware::UefiArm64`]).
pub const QEMU_ARM64: &str = "qemu-system-aarch64";
/// AAVMF, edk2 for arm64 (Debian's `qemu-efi-aarch64`): code and the pristine variable store
/// each VM gets a writable copy of. Both are 64 MiB pflash images.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The node every boot test uses. Its address is slirp's default guest address, so the guest's
/// view of the network matches what QEMU's user-mode stack expects.
pub const NODE: &str = "node01";
pub const NODE_IP: &str = "10.0.2.15";
pub const NODE_MAC: &str = "52:54:00:12:34:56";
/// A one-node inventory for [`NODE`]: slirp's gateway and DNS, no VLAN.
pub const NODE_CSV: &str =
    "hostname,ip,gateway,dns,mac,vlan\nnode01,10.0.2.15/24,10.0.2.2,10.0.2.3,52:54:00:12:34:56,\n";

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Checks that `cmd` is on PATH and returns its full path; otherwise fails the test, naming the
/// Debian package that provides it.
pub fn require(cmd: &str) -> PathBuf {
    let package = match cmd {
        QEMU => "qemu-system-x86",
        QEMU_ARM64 => "qemu-system-arm",
        "xorriso" => "xorriso",
        "mcopy" | "mformat" => "mtools",
        _ => "(unknown package)",
    };
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => panic!(
            "PREREQUISITE MISSING: `{cmd}` is not on PATH. Install the Debian package `{package}` \
             (apt-get install {package}). Boot tests never skip: media that were not booted are \
             not tested."
        ),
    }
}

/// Checks that `path` exists; otherwise fails the test, naming `package`.
pub fn require_file(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if !p.is_file() {
        panic!(
            "PREREQUISITE MISSING: {path} does not exist. Install the Debian package `{package}` \
             (apt-get install {package}). Boot tests never skip."
        );
    }
    p
}

/// Everything a VM of this firmware needs.
pub fn require_for(firmware: Firmware) {
    require(firmware.qemu());
    match firmware {
        Firmware::Bios => {}
        Firmware::Uefi => {
            require_file(OVMF_CODE, "ovmf");
            require_file(OVMF_VARS, "ovmf");
        }
        Firmware::UefiArm64 => {
            require_file(AAVMF_CODE, "qemu-efi-aarch64");
            require_file(AAVMF_VARS, "qemu-efi-aarch64");
        }
    }
}

/// The bootforge binary Cargo built for this test run.
pub fn bootforge_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_bootforge"));
    if !p.is_file() {
        panic!("PREREQUISITE MISSING: the bootforge binary {} was not built", p.display());
    }
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF from the `ovmf` package, with a fresh copy of its variable store per VM.
    Uefi,
    /// An arm64 machine: `qemu-system-aarch64 -M virt -cpu cortex-a57` with AAVMF (the
    /// `qemu-efi-aarch64` package), again with a fresh copy of its variable store per VM. Its
    /// CD is a SCSI CD on virtio-scsi and its NICs are virtio (the `virt` board has no IDE, and
    /// Debian's arm64 iPXE drives virtio-net).
    UefiArm64,
}

impl Firmware {
    /// What iPXE's `${platform}` says on this firmware.
    pub fn ipxe_platform(self) -> &'static str {
        match self {
            Firmware::Bios => "pcbios",
            Firmware::Uefi | Firmware::UefiArm64 => "efi",
        }
    }

    /// What iPXE's `${buildarch}` says on this firmware (the request's `arch=`).
    pub fn ipxe_arch(self) -> &'static str {
        match self {
            Firmware::Bios => "i386",
            Firmware::Uefi => "x86_64",
            Firmware::UefiArm64 => "arm64",
        }
    }

    /// The `--arch` media must be built with to boot on this firmware.
    pub fn build_arch(self) -> &'static str {
        match self {
            Firmware::Bios | Firmware::Uefi => "x86_64",
            Firmware::UefiArm64 => "arm64",
        }
    }

    /// The QEMU binary that emulates this machine.
    pub fn qemu(self) -> &'static str {
        match self {
            Firmware::Bios | Firmware::Uefi => QEMU,
            Firmware::UefiArm64 => QEMU_ARM64,
        }
    }

    /// Whether this is a UEFI machine (local boot leaves iPXE with `exit 1`).
    pub fn is_uefi(self) -> bool {
        self != Firmware::Bios
    }
}

/// How an image is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A CD-ROM drive: `ide-cd` on the second IDE bus on x86, `scsi-cd` on a virtio-scsi
    /// controller on arm64.
    Cd,
    /// A USB mass-storage stick on an xHCI controller, flagged removable. SeaBIOS then numbers it
    /// as a hard disk, in boot order, and OVMF treats it as a removable disk.
    Usb,
    /// A fixed virtio disk: the machine's own "local disk" (or the EFI image as a disk).
    Disk,
}

struct Drive {
    path: PathBuf,
    attach: Attach,
    readonly: bool,
}

/// A QEMU machine to boot. On BIOS and arm64, drives boot in the order they were added (each
/// gets the next `bootindex`), so add the medium under test first and the local disk after it.
/// x86 UEFI machines boot in OVMF's own order ([`Vm::firmware_boot_order`]), which on a fresh
/// variable store is the CD first, then the other drives, then the NIC (the boot tests that add
/// a medium and then the local disk pass unchanged on it).
pub struct Vm {
    firmware: Firmware,
    name: String,
    drives: Vec<Drive>,
    macs: Vec<String>,
    timeout: Duration,
    stop_on: Vec<String>,
    memory_mb: u32,
    reboot: bool,
    uuid: Option<String>,
    serial_number: Option<String>,
    extra: Vec<String>,
    stop_when: Option<Box<dyn Fn() -> bool>>,
    capture: Option<PathBuf>,
    firmware_order: bool,
    dir: tempfile::TempDir,
}

/// What a VM did.
#[derive(Debug)]
pub struct VmRun {
    /// The serial console, with ANSI escapes and carriage returns removed.
    pub serial: String,
    /// QEMU's exit status; `None` if the harness killed it.
    pub status: Option<ExitStatus>,
    /// The VM was killed because the timeout passed.
    pub timed_out: bool,
    /// The VM was stopped because a `stop_on` text appeared.
    pub stopped_on: Option<String>,
    pub elapsed: Duration,
    /// QEMU's own stderr (warnings, errors).
    pub stderr: String,
    /// The command line, for reproducing by hand.
    pub command: String,
}

impl VmRun {
    /// Human-readable account for a panic message.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "QEMU: status {:?}, timed out: {}, stopped on: {:?}, after {:.1}s",
            self.status.and_then(|s| s.code()),
            self.timed_out,
            self.stopped_on,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "command: {}", self.command);
        if !self.stderr.trim().is_empty() {
            let _ = writeln!(s, "--- QEMU stderr ---\n{}", self.stderr.trim_end());
        }
        let _ = writeln!(s, "--- serial console ---\n{}\n--- end of serial ---", self.serial);
        s
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl Vm {
    pub fn new(firmware: Firmware, name: &str) -> Vm {
        require_for(firmware);
        Vm {
            firmware,
            name: name.to_string(),
            drives: Vec::new(),
            macs: Vec::new(),
            timeout: Duration::from_secs(120),
            stop_on: Vec::new(),
            // AAVMF needs more than OVMF: with 256 MiB it stops before its boot manager.
            memory_mb: if firmware == Firmware::UefiArm64 { 512 } else { 256 },
            reboot: false,
            uuid: None,
            serial_number: None,
            extra: Vec::new(),
            stop_when: None,
            capture: None,
            // x86 UEFI machines boot from OVMF's own order (see `firmware_boot_order`).
            firmware_order: firmware == Firmware::Uefi,
            dir: tempfile::Builder::new()
                .prefix(&format!("bootforge-vm-{name}-"))
                .tempdir()
                .expect("VM temp dir"),
        }
    }

    /// Attaches `image` read-only (the medium under test; QEMU never writes to it).
    pub fn medium(mut self, image: &Path, attach: Attach) -> Vm {
        self.drives.push(Drive { path: image.to_path_buf(), attach, readonly: true });
        self
    }

    /// Attaches `image` as a writable fixed disk.
    pub fn disk(mut self, image: &Path) -> Vm {
        self.drives.push(Drive {
            path: image.to_path_buf(),
            attach: Attach::Disk,
            readonly: false,
        });
        self
    }

    /// Sets the guest's memory (default 256 MiB, 512 MiB on arm64); a real installer needs more.
    pub fn memory_mb(mut self, mb: u32) -> Vm {
        self.memory_mb = mb;
        self
    }

    /// Adds a NIC (e1000 on slirp, virtio-net on arm64) with this MAC. NICs get PCI slots in the order they are added,
    /// so the first is iPXE's net0, the second net1, and so on.
    pub fn nic(mut self, mac: &str) -> Vm {
        self.macs.push(mac.to_string());
        self
    }

    /// Kills the VM after `timeout` (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Vm {
        self.timeout = timeout;
        self
    }

    /// Stops the VM as soon as the serial console contains `text`.
    pub fn stop_on(mut self, text: &str) -> Vm {
        self.stop_on.push(text.to_string());
        self
    }

    /// Lets a guest reboot restart the machine. By default the VM runs with `-no-reboot`, so a
    /// reset (a triple fault, a firmware giving up, a script's `reboot`) ends QEMU instead of
    /// looping through the boot again until the timeout; a test of a reboot cycle turns it off.
    pub fn allow_reboot(mut self) -> Vm {
        self.reboot = true;
        self
    }

    /// The machine's SMBIOS system UUID (iPXE's `${uuid}`). Without it QEMU reports all zeros.
    pub fn uuid(mut self, uuid: &str) -> Vm {
        self.uuid = Some(uuid.to_string());
        self
    }

    /// The machine's SMBIOS serial number (iPXE's `${serial}`). Must not contain a comma.
    pub fn serial_number(mut self, serial: &str) -> Vm {
        assert!(!serial.contains(','), "QEMU's -smbios option cannot take a comma here");
        self.serial_number = Some(serial.to_string());
        self
    }

    /// Stops the VM as soon as `done` returns true (asked every 100 ms with the console check),
    /// for ends that show outside the guest, such as a record in the service's audit log.
    pub fn stop_when(mut self, done: impl Fn() -> bool + 'static) -> Vm {
        self.stop_when = Some(Box::new(done));
        self
    }

    /// Records every frame of the first NIC, both ways, to `file` (QEMU's `filter-dump`, a
    /// pcap file; read it with [`pcap::read_ipv4`]), to check what the guest put on the wire.
    /// The file is the caller's: it outlives the VM's temp dir.
    pub fn capture_net(mut self, file: &Path) -> Vm {
        self.capture = Some(file.to_path_buf());
        self
    }

    /// Boots from the firmware's own boot order, as a real machine does: no `bootindex` on any
    /// device. The default for [`Firmware::Uefi`] (issue 18); SeaBIOS keeps no order of its own,
    /// and arm64 (AAVMF) still gets `bootindex`. With `bootindex`, QEMU hands OVMF an order of its own and OVMF rewrites
    /// `BootOrder` in its variable store to match on every boot, which hides any change a guest
    /// makes to it (grub-install putting the new OS first, and a profile's
    /// restore-boot-order.sh undoing that). Without it, OVMF 2022.11 (Debian bookworm) builds
    /// `BootOrder` on the first boot from a fresh variable store with the CD first (checked:
    /// "UEFI QEMU DVD-ROM" is Boot0001, then the disks, then the NIC's PXE), and from then on
    /// follows the store, which persists across the guest's reboots within one run.
    pub fn firmware_boot_order(mut self) -> Vm {
        assert!(self.firmware.is_uefi(), "only UEFI firmware keeps a boot order of its own");
        self.firmware_order = true;
        self
    }

    /// Appends raw QEMU arguments (for a one-off device or option the builder does not model).
    pub fn qemu_args(mut self, args: &[&str]) -> Vm {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The VM's temp dir (serial log, variable store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let dir = self.dir.path();
        let arm64 = self.firmware == Firmware::UefiArm64;
        let mut cmd = Command::new(self.firmware.qemu());
        cmd.args(["-name", &self.name]);
        if arm64 {
            cmd.args(["-machine", "virt", "-cpu", "cortex-a57", "-accel", "tcg"]);
        } else {
            cmd.args(["-machine", "pc", "-accel", "tcg"]);
        }
        cmd.args(["-m", &self.memory_mb.to_string(), "-display", "none"]);
        if !self.reboot {
            cmd.arg("-no-reboot");
        }
        cmd.args(["-nodefaults", "-no-user-config"]);
        if !arm64 {
            // The `virt` board has no VGA; AAVMF's console is the PL011 serial port.
            cmd.args(["-vga", "std"]);
        }
        cmd.arg("-serial").arg(format!("file:{}", dir.join("serial.log").display()));
        let pflash = |cmd: &mut Command, code: &str, vars_template: &str, vars_name: &str| {
            let vars = dir.join(vars_name);
            std::fs::copy(vars_template, &vars).expect("copy the UEFI variable store");
            cmd.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"));
            cmd.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        };
        match self.firmware {
            Firmware::Bios => {
                let port = dir.join("sercon-port");
                std::fs::write(&port, 0x3f8u16.to_le_bytes()).expect("write sercon port");
                cmd.arg("-fw_cfg").arg(format!("name=etc/sercon-port,file={}", port.display()));
                cmd.arg("-device")
                    .arg(format!("isa-debug-exit,iobase={:#x},iosize=1", disks::DEBUG_EXIT_PORT));
            }
            Firmware::Uefi => pflash(&mut cmd, OVMF_CODE, OVMF_VARS, "OVMF_VARS.fd"),
            Firmware::UefiArm64 => pflash(&mut cmd, AAVMF_CODE, AAVMF_VARS, "AAVMF_VARS.fd"),
        }
        if self.drives.iter().any(|d| d.attach == Attach::Usb) {
            cmd.args(["-device", "qemu-xhci,id=xhci,addr=0x08"]);
        }
        if arm64 && self.drives.iter().any(|d| d.attach == Attach::Cd) {
            cmd.args(["-device", "virtio-scsi-pci,id=scsi,addr=0x09"]);
        }
        // -nodefaults removed the default IDE CD; the PIIX IDE controller itself stays.
        let mut ide_cd_bus = 1;
        let mut scsi_lun = 0;
        for (i, d) in self.drives.iter().enumerate() {
            let id = format!("drive{i}");
            let ro = if d.readonly { ",readonly=on" } else { "" };
            let media = if d.attach == Attach::Cd { ",media=cdrom" } else { "" };
            cmd.arg("-drive")
                .arg(format!("if=none,id={id},format=raw{ro}{media},file={}", d.path.display()));
            let device = match d.attach {
                Attach::Cd if arm64 => {
                    scsi_lun += 1;
                    format!("scsi-cd,bus=scsi.0,drive={id},lun={}", scsi_lun - 1)
                }
                Attach::Cd => {
                    let bus = ide_cd_bus;
                    ide_cd_bus = 1 - ide_cd_bus;
                    format!("ide-cd,drive={id},bus=ide.{bus}")
                }
                Attach::Usb => format!("usb-storage,bus=xhci.0,drive={id},removable=on"),
                Attach::Disk => format!("virtio-blk-pci,drive={id},addr={:#x}", 0x10 + i),
            };
            if self.firmware_order {
                cmd.arg("-device").arg(device);
            } else {
                cmd.arg("-device").arg(format!("{device},bootindex={i}"));
            }
        }
        let nic = if arm64 { "virtio-net-pci" } else { "e1000" };
        for (i, mac) in self.macs.iter().enumerate() {
            cmd.arg("-netdev").arg(format!("user,id=net{i}"));
            // Fixed, increasing PCI slots pin the order iPXE numbers the NICs in.
            cmd.arg("-device").arg(format!("{nic},netdev=net{i},mac={mac},addr={:#x}", 0x18 + i));
        }
        if let Some(file) = self.capture.as_ref().filter(|_| !self.macs.is_empty()) {
            cmd.arg("-object")
                .arg(format!("filter-dump,id=dump0,netdev=net0,file={}", file.display()));
        }
        if let Some(uuid) = &self.uuid {
            cmd.args(["-uuid", uuid]);
        }
        if let Some(serial) = &self.serial_number {
            cmd.arg("-smbios").arg(format!("type=1,serial={serial}"));
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Boots the VM and waits until QEMU exits, a `stop_on` text appears, or the timeout passes.
    ///
    /// Within one test binary VMs run one at a time (the tests themselves may run on parallel
    /// threads): TCG keeps a core busy per VM, and two firmwares competing for two shared cores
    /// makes every boot slower and the timeouts meaningless. The timeout starts once this VM's
    /// turn has come.
    pub fn run(self) -> VmRun {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cmd = self.command();
        let command = format!("{cmd:?}").replace('"', "");
        let serial_path = self.dir.path().join("serial.log");
        let stderr_path = self.dir.path().join("qemu.stderr");
        let stderr_file = std::fs::File::create(&stderr_path).expect("create QEMU stderr file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr_file);
        let started = Instant::now();
        let child =
            cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.firmware.qemu()));
        let mut guard = KillOnDrop(Some(child));

        let mut timed_out = false;
        let mut stopped_on = None;
        let status = loop {
            let child = guard.0.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("wait for QEMU") {
                break Some(status);
            }
            if !self.stop_on.is_empty() {
                let serial = clean_console(&std::fs::read(&serial_path).unwrap_or_default());
                if let Some(t) = self.stop_on.iter().find(|t| serial.contains(t.as_str())) {
                    stopped_on = Some(t.clone());
                    break None;
                }
            }
            if self.stop_when.as_ref().is_some_and(|done| done()) {
                stopped_on = Some("(stop_when condition)".to_string());
                break None;
            }
            if started.elapsed() >= self.timeout {
                timed_out = true;
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(guard); // kills QEMU if it is still running
        let elapsed = started.elapsed();
        let serial = clean_console(&std::fs::read(&serial_path).unwrap_or_default());
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let run = VmRun { serial, status, timed_out, stopped_on, elapsed, stderr, command };
        // A passing test shows nothing; to read a VM's console anyway, run with this set (and
        // `--nocapture`).
        if std::env::var_os("BOOTFORGE_TEST_SHOW_CONSOLE").is_some() {
            eprintln!("=== VM {} ===\n{}", self.name, run.report());
        }
        // The temp dir (raw serial log, variable store, local disk) is deleted with the VM
        // unless asked to keep it, so the command line in a report can be rerun by hand.
        if std::env::var_os("BOOTFORGE_TEST_KEEP").is_some() {
            let kept = self.dir.keep();
            eprintln!("VM {}: kept {}", self.name, kept.display());
        }
        run
    }
}

/// Owns the QEMU process and kills it (by its PID, via `Child::kill`) when dropped, so a panic
/// in a test never leaves a VM running.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Turns the raw console bytes into plain text: ANSI escape sequences (firmware menus and iPXE
/// colours), carriage returns and backspaces go, so `contains` works on what a person would read.
pub fn clean_console(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // ESC [ params final, or ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            '\u{8}' => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The media `bootforge build` wrote for one node.
pub struct Media {
    pub dir: tempfile::TempDir,
    pub iso: PathBuf,
    pub usb: PathBuf,
    pub efi: PathBuf,
}

/// Runs a command (a `bootforge` invocation) and fails the test with its output if it fails.
/// Returns that output, for later messages about what the command made.
pub fn run_ok(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let said = format!(
        "{cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "command failed:\n{said}");
    said
}

/// Runs `bootforge build NODES.csv --server SERVER --out DIR --formats iso,usb,efi
/// [--iso-medium MEDIUM]` for `csv`, and fails the test with bootforge's output if it fails or
/// an image is missing.
pub fn build_media(csv: &str, server: &str, iso_medium: Option<&str>) -> Media {
    build_media_for(csv, server, iso_medium, "x86_64")
}

/// [`build_media`] with `--arch ARCHES` (`x86_64`, `arm64` or `x86_64,arm64`).
pub fn build_media_for(csv: &str, server: &str, iso_medium: Option<&str>, arches: &str) -> Media {
    let dir = tempfile::Builder::new().prefix("bootforge-media-").tempdir().expect("temp dir");
    let nodes = dir.path().join("nodes.csv");
    std::fs::write(&nodes, csv).expect("write nodes.csv");
    let out = dir.path().join("out");
    let mut cmd = Command::new(bootforge_bin());
    cmd.arg("build").arg(&nodes).args(["--server", server]).arg("--out").arg(&out);
    cmd.args(["--formats", "iso,usb,efi", "--arch", arches]);
    if let Some(m) = iso_medium {
        cmd.args(["--iso-medium", m]);
    }
    let said = run_ok(&mut cmd);
    let media = Media {
        iso: out.join(format!("{NODE}.iso")),
        usb: out.join(format!("{NODE}.usb.img")),
        efi: out.join(format!("{NODE}.efi.img")),
        dir,
    };
    for p in [&media.iso, &media.usb, &media.efi] {
        assert!(p.is_file(), "bootforge build did not write {}:\n{said}", p.display());
    }
    media
}

/// Asserts that `request` is node01's boot request from `platform` on `medium`, with the
/// node's address and MAC.
pub fn assert_boot_request(request: &Request, platform: &str, medium: &str, context: &str) {
    assert_boot_request_from(request, platform, None, medium, context)
}

/// [`assert_boot_request`], also checking the request's `arch` when `arch` is given.
pub fn assert_boot_request_from(
    request: &Request,
    platform: &str,
    arch: Option<&str>,
    medium: &str,
    context: &str,
) {
    let arch = arch.map(|a| ("arch", request.q("arch"), a));
    let problems: Vec<String> = [
        ("method", request.method.as_str(), "GET"),
        ("path", request.path.as_str(), "/boot/node01"),
        ("ip", request.q("ip"), NODE_IP),
        ("mac", request.q("mac"), NODE_MAC),
        ("platform", request.q("platform"), platform),
        ("medium", request.q("medium"), medium),
    ]
    .into_iter()
    .chain(arch)
    .filter(|(_, got, want)| got != want)
    .map(|(what, got, want)| format!("{what}: got {got:?}, expected {want:?}"))
    .collect();
    assert!(
        problems.is_empty(),
        "boot request {} is wrong:\n{}\n{context}",
        request.target,
        problems.join("\n")
    );
}
