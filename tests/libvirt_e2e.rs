//! One real machine, driven only through Redfish (issue 7): a libvirt domain for node01, a
//! sushy-tools emulator whose **libvirt driver** is that domain's BMC, the real service and the
//! real `bootforge attach --reset`. The emulator downloads the node's signed ISO, makes it the
//! domain's CD, sets the boot override and powers the domain on; the VM (QEMU TCG, SeaBIOS)
//! boots the ISO, configures the node's static address and reaches the service's `/boot`, whose
//! answer "local" sends it on to a small local disk. `bootforge detach` then ejects the CD.
//!
//! * The libvirt daemon is the test's own: `libvirtd --config FILE` in a private mount namespace
//!   (`unshare --mount`) where `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//!   `/var/cache/libvirt` and `/var/log/libvirt` are bind mounts of folders in a temp dir, with
//!   its sockets in that temp dir too (`qemu+unix:///system?socket=…`). Why the namespace: a
//!   second privileged libvirtd cannot share the system paths (its QEMU driver locks
//!   `/run/libvirt/qemu/driver.pid`, and both daemons would claim the same domains), and those
//!   paths are compiled in. So the test touches neither a system daemon nor its domains, and
//!   its daemon and QEMU die with the test ([`Libvirtd`]'s drop: domains destroyed and
//!   undefined, then the daemon killed by its PID). The harness gives it the storage pool
//!   `default` (a folder of the temp dir) that the libvirt driver uploads inserted images into.
//! * `scripts/setup --test` installs libvirt and does the one-time system preparation (users,
//!   groups, folders, `/etc/libvirt/qemu.conf`); the Python `libvirt` module comes from
//!   libvirt-python built into the sushy-tools virtualenv. Nothing skips: a missing piece fails
//!   the test and names the setup step.
//!
//! Run alone: `cargo test --release --test libvirt_e2e -- --nocapture` (one VM, TCG).

#[path = "serve_support/bmc.rs"]
mod bmc;
mod common;
#[path = "serve_support/sushy.rs"]
mod sushy;

use bmc::BmcService;
use common::{local_disk, LOCAL_DISK_MARKER, NODE_MAC};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sushy::{Emulator, FakeSystem};

// --- a private libvirt daemon ---------------------------------------------------------------

/// The system paths a privileged libvirtd uses, each replaced by a folder of the temp dir.
const PRIVATE_PATHS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// QEMU as root without relabelling (as `scripts/setup --test` configures the system's), no
/// per-domain /dev namespace, and QEMU's output straight to a file (no virtlogd to run).
const QEMU_CONF: &str = "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n\
security_driver = \"none\"\nremember_owner = 0\nnamespaces = []\nstdio_handler = \"file\"\n";

/// A libvirtd of the test's own, killed on drop.
struct Libvirtd {
    child: Child,
    dir: tempfile::TempDir,
    uri: String,
}

impl Libvirtd {
    fn start() -> Libvirtd {
        for (cmd, package) in [
            ("libvirtd", "libvirt-daemon"),
            ("virsh", "libvirt-clients"),
            ("unshare", "util-linux"),
            ("mount", "mount"),
            ("qemu-system-x86_64", "qemu-system-x86"),
        ] {
            sushy::require(cmd, package);
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut script = String::from("set -e\n");
        for (name, target) in PRIVATE_PATHS {
            std::fs::create_dir_all(d.join(name)).unwrap();
            if !Path::new(target).is_dir() {
                panic!(
                    "PREREQUISITE MISSING: {target} does not exist. Run `scripts/setup --test`: \
                     its libvirt block installs libvirt and creates libvirt's folders."
                );
            }
            script += &format!("mount --bind '{}' '{target}'\n", d.join(name).display());
        }
        std::fs::create_dir_all(d.join("sock")).unwrap();
        std::fs::write(d.join("etc/qemu.conf"), QEMU_CONF).unwrap();
        let conf = d.join("etc/libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{sock}\"\nunix_sock_rw_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{log}\"\n",
                sock = d.join("sock").display(),
                log = d.join("libvirtd.log").display(),
            ),
        )
        .unwrap();
        script += &format!(
            "exec libvirtd --config '{}' --pid-file '{}'\n",
            conf.display(),
            d.join("libvirtd.pid").display()
        );
        let out = std::fs::File::create(d.join("libvirtd.out")).unwrap();
        // unshare execs the shell, which execs libvirtd: the child's PID is the daemon's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start libvirtd under unshare");
        let uri = format!("qemu+unix:///system?socket={}", d.join("sock/libvirt-sock").display());
        let mut daemon = Libvirtd { child, dir, uri };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("libvirtd exited with {status} at start:\n{}", daemon.logs());
            }
            if daemon.virsh(&["version"]).0 {
                break;
            }
            if Instant::now() > deadline {
                panic!("libvirtd did not answer within 30 s:\n{}", daemon.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The libvirt driver uploads each inserted image as a volume of the pool `default`
        // (sushy-tools' SUSHY_EMULATOR_STORAGE_POOL) and points the CD-ROM at that volume.
        let pool = daemon.pool_dir();
        std::fs::create_dir_all(&pool).unwrap();
        let pool = pool.to_str().unwrap().to_string();
        daemon.virsh_ok(&["pool-define-as", "default", "dir", "--target", &pool]);
        daemon.virsh_ok(&["pool-start", "default"]);
        daemon
    }

    /// The folder of the storage pool `default`.
    fn pool_dir(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    /// `virsh -c URI ARGS`: (success, stdout, stderr).
    fn virsh(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run virsh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `virsh ARGS`, which must succeed; its stdout.
    fn virsh_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.virsh(args);
        assert!(ok, "virsh {}: {err}{out}\n{}", args.join(" "), self.logs());
        out
    }

    fn state(&self, domain: &str) -> String {
        self.virsh_ok(&["domstate", domain]).trim().to_string()
    }

    /// The daemon's output, its log, and the QEMU logs of its domains.
    fn logs(&self) -> String {
        let d = self.dir.path();
        let mut text = String::new();
        for f in ["libvirtd.out", "libvirtd.log"] {
            text += &format!("--- {f} ---\n{}\n", read_tail(&d.join(f), 40));
        }
        if let Ok(entries) = std::fs::read_dir(d.join("log/qemu")) {
            for e in entries.flatten() {
                text += &format!("--- {} ---\n{}\n", e.path().display(), read_tail(&e.path(), 20));
            }
        }
        text
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // Domains first: libvirtd leaves running QEMUs behind when it stops.
        let (_, names, _) = self.virsh(&["list", "--all", "--name"]);
        for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
            let _ = self.virsh(&["destroy", name]);
            let _ = self.virsh(&["undefine", name]);
        }
        // Any QEMU still recorded in the daemon's run folder, by its PID.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("run/qemu")) {
            for e in entries.flatten().filter(|e| e.path().extension() == Some("pid".as_ref())) {
                let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
                let pid = pid.trim();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if !pid.is_empty() && String::from_utf8_lossy(&cmdline).contains("qemu-system") {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- private libvirtd ({}) ---\n{}", self.uri, self.logs());
        }
    }
}

/// The files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

fn read_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// node01's domain: TCG, 512 MiB, SeaBIOS, an empty IDE CD-ROM drive, the local disk (first in
/// the boot order), slirp networking with the node's MAC, COM1 logged to `serial`. SeaBIOS
/// mirrors its screen (so iPXE's) to COM1 (`etc/sercon-port`), and the local disk's boot code
/// ends QEMU through `isa-debug-exit`: neither has libvirt XML, hence `<qemu:commandline>`.
fn domain_xml(system: &FakeSystem, disk: &Path, serial: &Path, sercon_port: &Path) -> String {
    format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='e1000'/>
    </interface>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=etc/sercon-port,file={sercon}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='isa-debug-exit,iobase=0xf4,iosize=1'/>
  </qemu:commandline>
</domain>
"#,
        name = system.name,
        uuid = system.uuid,
        disk = disk.display(),
        mac = NODE_MAC,
        serial = serial.display(),
        sercon = sercon_port.display(),
    )
}

/// The `<disk device='cdrom'>` elements of a domain's XML.
fn cdroms(xml: &str) -> Vec<String> {
    xml.split("<disk ")
        .skip(1)
        .filter(|d| d.contains("device='cdrom'"))
        .map(|d| d.split("</disk>").next().unwrap_or("").to_string())
        .collect()
}

// --- the service ----------------------------------------------------------------------------

/// The real service for node01 whose `bmc` is `bmc_url`: the node's script asks
/// `http://10.0.2.2:PORT` (slirp's view of the host), the BMC is handed URLs under
/// `http://127.0.0.1:PORT`, and the BMC credentials are admin/password.
fn start_service(bmc_url: &str) -> BmcService {
    let port = sushy::free_port();
    let row = format!("node01,10.0.2.15/24,10.0.2.2,10.0.2.3,{NODE_MAC},e2e,{bmc_url}\n");
    BmcService::start(&row, port, Some(&format!("http://10.0.2.2:{port}")), true)
}

/// GET a Redfish resource of the emulator, as its admin.
fn redfish(url: &str) -> Value {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("admin:password");
    let resp = ureq::get(url).set("Authorization", &format!("Basic {auth}")).call().unwrap();
    serde_json::from_str(&resp.into_string().unwrap()).unwrap()
}

fn download(url: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut ureq::get(url).call().unwrap().into_reader(), &mut bytes)
        .unwrap();
    bytes
}

// --- the test -------------------------------------------------------------------------------

#[test]
fn attach_reset_boots_a_libvirt_domain_through_redfish() {
    let started = Instant::now();
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &'static str, times: &mut Vec<(&str, Duration)>| {
        times.push((what, lap.elapsed()));
        lap = Instant::now();
    };

    let libvirtd = Libvirtd::start();
    mark("private libvirtd up", &mut times);

    // node01's domain, defined and powered off.
    let system = FakeSystem::numbered(1, "Off");
    assert_eq!(system.name, "node01");
    let vm = tempfile::tempdir().unwrap();
    let disk = local_disk(vm.path());
    let serial = vm.path().join("serial.log");
    let sercon_port = vm.path().join("sercon-port");
    std::fs::write(&sercon_port, 0x3f8u16.to_le_bytes()).unwrap();
    let xml_path = vm.path().join("node01.xml");
    std::fs::write(&xml_path, domain_xml(&system, &disk, &serial, &sercon_port)).unwrap();
    libvirtd.virsh_ok(&["define", xml_path.to_str().unwrap()]);
    assert_eq!(libvirtd.state("node01"), "shut off");

    // Its BMC: sushy-tools' libvirt driver on that daemon.
    let emu = Emulator::start_libvirt(&libvirtd.uri, vec![system.clone()]);
    let system_url = emu.system_url(0);
    let before = redfish(&system_url);
    assert_eq!(before["Name"], "node01", "{before}");
    assert_eq!(before["PowerState"], "Off", "{before}");
    mark("domain defined, emulator up", &mut times);

    let svc = start_service(&system_url);
    mark("service up", &mut times);

    // The real CLI: attach, boot from CD, reset (the domain is off, so: power on).
    let (ok, out, err) = svc.cli(&["attach", "node01", "--reset"]);
    assert!(ok, "attach failed:\n{out}\n{err}\n{}\n{}", emu.log_text(), libvirtd.logs());
    assert!(out.starts_with("node01: ok: ISO attached, boots from CD"), "{out}");
    mark("bootforge attach --reset", &mut times);
    assert_eq!(libvirtd.state("node01"), "running", "the reset powered the domain on\n{out}");

    // What the BMC reports: our signed URL, inserted; the boot override Cd; powered on.
    let media = redfish(&format!("{system_url}/VirtualMedia/Cd"));
    let image = media["Image"].as_str().expect("an image is mounted").to_string();
    assert!(image.starts_with(&format!("{}/media/node01.iso?", svc.base)), "{image}");
    assert_eq!(media["Inserted"], true, "{media}");
    let sys = redfish(&system_url);
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
    assert_eq!(sys["PowerState"], "On", "{sys}");

    // What the domain has: one CD-ROM, first in the boot order, whose file holds exactly the
    // bytes behind the signed URL (the emulator downloaded them from the service).
    let xml = libvirtd.virsh_ok(&["dumpxml", "--inactive", "node01"]);
    let cds = cdroms(&xml);
    assert_eq!(cds.len(), 1, "{xml}");
    let source = cds[0]
        .split("<source file='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("the CD-ROM has no file\n{xml}"))
        .to_string();
    let volume = libvirtd.pool_dir().join(format!("node01-iso-{}.img", system.uuid));
    assert_eq!(Path::new(&source), volume, "the image uploaded into the pool\n{xml}");
    assert!(cds[0].contains("<boot order='1'/>"), "CD first in the boot order\n{xml}");
    let mounted = std::fs::read(&source).unwrap();
    let served = download(&image);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    assert_eq!(sha(&mounted), sha(&served), "the CD holds the node's ISO");
    let audit = svc.audit();
    assert!(
        audit.contains("\"event\":\"media-served\",\"host\":\"node01\",\"format\":\"iso\""),
        "{audit}"
    );

    // The VM boots the ISO: node01's static address reaches /boot, verified; "local" sends it
    // to the local disk, whose boot code prints the marker and ends QEMU.
    let deadline = Instant::now() + Duration::from_secs(150);
    let boot = loop {
        if let Some(b) = svc.boot_record("node01") {
            break b;
        }
        if Instant::now() > deadline {
            panic!(
                "no /boot from node01 within 150 s\n--- serial ---\n{}\n{}\n{}",
                read_tail(&serial, 60),
                svc.audit(),
                libvirtd.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    mark("VM booted the ISO to /boot", &mut times);
    assert_eq!(boot["ip"], "10.0.2.15", "the static address from the inventory\n{boot}");
    assert_eq!(boot["verified"], true, "token and MAC checked\n{boot}");
    assert_eq!(boot["answer"], "local", "{boot}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&serial).unwrap_or_default().contains(LOCAL_DISK_MARKER) {
        if Instant::now() > deadline {
            panic!(
                "the local disk was not reached\n--- serial ---\n{}\n{}",
                read_tail(&serial, 60),
                libvirtd.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    mark("local disk reached", &mut times);
    // The disk's code ends QEMU; make sure, whatever the guest did.
    let _ = libvirtd.virsh(&["destroy", "node01"]);

    // Detach: the emulator removes the CD from the domain and deletes its copy.
    let (ok, out, err) = svc.cli(&["detach", "node01"]);
    assert!(ok, "detach failed:\n{out}\n{err}\n{}", emu.log_text());
    assert!(out.starts_with("node01: ok: ejected"), "{out}");
    let media = redfish(&format!("{system_url}/VirtualMedia/Cd"));
    assert_eq!(media["Inserted"], false, "{media}");
    let xml = libvirtd.virsh_ok(&["dumpxml", "--inactive", "node01"]);
    assert!(!xml.contains(&source), "the ISO is still in the domain\n{xml}");
    assert!(cdroms(&xml).iter().all(|cd| !cd.contains("<source")), "{xml}");
    let downloads = walk(&emu.dir.path().join("images"));
    assert!(downloads.is_empty(), "the emulator kept its download: {downloads:?}");
    mark("bootforge detach", &mut times);

    libvirtd.virsh_ok(&["undefine", "node01"]);
    assert_eq!(libvirtd.virsh_ok(&["list", "--all", "--name"]).trim(), "");
    drop(emu);
    drop(libvirtd);
    mark("domain undefined, daemon stopped", &mut times);

    eprintln!("libvirt end-to-end, {} ISO bytes:", served.len());
    for (what, took) in &times {
        eprintln!("  {what:<36} {:>6.1}s", took.as_secs_f64());
    }
    eprintln!("  {:<36} {:>6.1}s", "total", started.elapsed().as_secs_f64());
}
