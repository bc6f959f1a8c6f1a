//! Boot tests: the media `bootforge build` writes, booted in QEMU under SeaBIOS and OVMF.
//!
//! Each test builds media with the real binary, boots them with TCG, and checks what reached the
//! stand-in boot service (or, for the fallback cases, that the machine ended up on its local
//! disk). They never skip: a missing QEMU or OVMF fails the test and names the package.
//!
//! arm64 runs on `qemu-system-aarch64 -M virt` with AAVMF ([`Firmware::UefiArm64`]): the hybrid
//! ISO (built `--arch x86_64,arm64`) as a SCSI CD and as a USB disk, the USB image, the EFI image
//! as a disk, and the fallback with the service down.
//!
//! The harness runs one VM at a time per test binary (TCG keeps a core busy), so the tests may
//! run on parallel threads but their machines queue. Measured VM times on the 2-core build
//! machine: BIOS cases about 2.5 s each, UEFI cases about 10 s, arm64 cases about 10.5 s, BIOS
//! fallbacks about 18 s and UEFI fallbacks about 30 s, arm64's too (the script's four tries with
//! 5 s pauses, then the local disk); the whole file takes about 3.5 minutes.

mod common;

use common::*;
use std::time::Duration;

/// Long enough for OVMF under TCG on a busy machine (about 10 s to iPXE's first request when
/// idle), short enough that a hung VM does not hold the run for long.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// One boot against a listener that answers with a power-off script: builds the media, boots
/// `image` attached as `attach` on `firmware` in a VM that `setup` equips (NICs, SMBIOS fields),
/// and returns the boot request that reached the listener, the run, and a failure context
/// (console and listener log). Fails the test if no request came.
fn boot_request(
    name: &str,
    firmware: Firmware,
    iso_medium: Option<&str>,
    (image, attach): (Image, Attach),
    setup: impl FnOnce(Vm) -> Vm,
) -> (listener::Request, VmRun, String) {
    let listener = Listener::start();
    let media = build_media_for(NODE_CSV, &listener.url_for_guest(), iso_medium, arches(firmware));
    let vm = Vm::new(firmware, name).medium(image.path(&media), attach);
    let run = setup(vm).timeout(BOOT_TIMEOUT).stop_on(ANSWERED_MARKER).run();
    let context = format!("{}\n--- listener ---\n{}", run.report(), listener.log());
    let request = listener
        .wait_for_boot(NODE, Duration::from_secs(1))
        .unwrap_or_else(|| panic!("{name}: no GET /boot/{NODE} reached the listener\n{context}"));
    let (platform, arch) = (firmware.ipxe_platform(), Some(firmware.ipxe_arch()));
    assert_boot_request_from(&request, platform, arch, image.medium(iso_medium), &context);
    (request, run, context)
}

/// The architectures the media of a test on `firmware` are built for: arm64 media are built
/// as the hybrid `x86_64,arm64` a mixed fleet uses, so the arm64 loader is proven to be picked
/// from among two.
fn arches(firmware: Firmware) -> &'static str {
    match firmware {
        Firmware::UefiArm64 => "x86_64,arm64",
        Firmware::Bios | Firmware::Uefi => "x86_64",
    }
}

/// Boots `image` attached as `attach` on `firmware` with node01's NIC and checks the boot
/// request and that the answer ran.
fn boots_and_asks(firmware: Firmware, iso_medium: Option<&str>, image: Image, attach: Attach) {
    let name = format!("{firmware:?}-{image:?}-{attach:?}").to_lowercase();
    let (_, run, context) =
        boot_request(&name, firmware, iso_medium, (image, attach), |vm| vm.nic(NODE_MAC));
    // QEMU exiting by itself with status 0 is the answer's `poweroff`; the console line is the
    // other witness (SeaBIOS may not have flushed it before the power went off).
    let powered_off = run.exit_code() == Some(0) && !run.timed_out;
    assert!(
        run.serial.contains(ANSWERED_MARKER) || powered_off,
        "{name}: the answer was not run (no {ANSWERED_MARKER:?} on the console, no power-off)\n{context}"
    );
    eprintln!("{name}: VM ran {:.1}s", run.elapsed.as_secs_f64());
}

#[derive(Debug, Clone, Copy)]
enum Image {
    Iso,
    Usb,
    Efi,
}

impl Image {
    fn path(self, media: &Media) -> &std::path::Path {
        match self {
            Image::Iso => &media.iso,
            Image::Usb => &media.usb,
            Image::Efi => &media.efi,
        }
    }

    /// The `medium` the image's script reports.
    fn medium(self, iso_medium: Option<&str>) -> &'static str {
        match self {
            Image::Iso if iso_medium == Some("usb") => "usb",
            Image::Iso => "cd",
            Image::Usb => "usb",
            Image::Efi => "esp",
        }
    }
}

#[test]
fn iso_as_bios_cd() {
    boots_and_asks(Firmware::Bios, None, Image::Iso, Attach::Cd);
}

#[test]
fn iso_as_uefi_cd() {
    boots_and_asks(Firmware::Uefi, None, Image::Iso, Attach::Cd);
}

#[test]
fn iso_as_bios_usb() {
    boots_and_asks(Firmware::Bios, Some("usb"), Image::Iso, Attach::Usb);
}

#[test]
fn iso_as_uefi_usb() {
    boots_and_asks(Firmware::Uefi, Some("usb"), Image::Iso, Attach::Usb);
}

#[test]
fn usb_image_on_uefi() {
    boots_and_asks(Firmware::Uefi, None, Image::Usb, Attach::Usb);
}

#[test]
fn efi_image_on_uefi() {
    boots_and_asks(Firmware::Uefi, None, Image::Efi, Attach::Disk);
}

#[test]
fn iso_as_arm64_cd() {
    boots_and_asks(Firmware::UefiArm64, None, Image::Iso, Attach::Cd);
}

#[test]
fn iso_as_arm64_usb() {
    boots_and_asks(Firmware::UefiArm64, Some("usb"), Image::Iso, Attach::Usb);
}

#[test]
fn usb_image_on_arm64() {
    boots_and_asks(Firmware::UefiArm64, None, Image::Usb, Attach::Usb);
}

#[test]
fn efi_image_on_arm64() {
    boots_and_asks(Firmware::UefiArm64, None, Image::Efi, Attach::Disk);
}

/// What OVMF logs when it falls back to its setup menu: no further boot option will be tried.
const OVMF_MENU: &str = "starting Boot0000 \"UiApp\"";

/// Fallback: the service is unreachable, so the script gives up and the machine must reach the
/// local disk, whose marker appears on the console.
fn falls_back(firmware: Firmware, iso_medium: Option<&str>, attach: Attach) {
    let server = closed_url_for_guest();
    let media = build_media_for(NODE_CSV, &server, iso_medium, arches(firmware));
    let name = format!("fallback-{firmware:?}-{attach:?}").to_lowercase();
    let vm = Vm::new(firmware, &name);
    let disk = local_disk(vm.dir());
    let run = vm
        .medium(&media.iso, attach)
        .disk(&disk)
        .nic(NODE_MAC)
        .timeout(BOOT_TIMEOUT)
        .stop_on(LOCAL_DISK_MARKER)
        .stop_on(OVMF_MENU)
        .run();
    let hint = if run.serial.contains(OVMF_MENU) {
        "\nOVMF opened its boot menu (UiApp) when iPXE exited: a UEFI application that returns \
         EFI_SUCCESS makes edk2's boot manager stop and show the menu instead of trying the next \
         boot option. The script must leave with an error status (`exit 1`) on UEFI.\n"
    } else {
        ""
    };
    assert!(
        run.serial.contains(LOCAL_DISK_MARKER),
        "{name}: the machine did not reach the local disk (no {LOCAL_DISK_MARKER:?} on the console; server {server}){hint}\n{}",
        run.report()
    );
    if firmware == Firmware::Bios {
        // The script's own `sanboot` must have reached the disk, not the BIOS moving on to its
        // next boot device after iPXE gave up: under BIOS the drive number depends on how the
        // medium is attached, and that is what this checks.
        let drive = if attach == Attach::Usb { "0x81" } else { "0x80" };
        let sanboot = format!("Booting from SAN device {drive}");
        assert!(
            run.serial.contains(&sanboot),
            "{name}: the local disk was not reached through the script's sanboot (no {sanboot:?})\n{}",
            run.report()
        );
    }
    eprintln!("{name}: local disk reached after {:.1}s", run.elapsed.as_secs_f64());
}

#[test]
fn fallback_bios_cd() {
    falls_back(Firmware::Bios, None, Attach::Cd);
}

#[test]
fn fallback_bios_usb() {
    falls_back(Firmware::Bios, Some("usb"), Attach::Usb);
}

#[test]
fn fallback_uefi_cd() {
    falls_back(Firmware::Uefi, None, Attach::Cd);
}

#[test]
fn fallback_uefi_usb() {
    falls_back(Firmware::Uefi, Some("usb"), Attach::Usb);
}

#[test]
fn fallback_arm64_cd() {
    falls_back(Firmware::UefiArm64, None, Attach::Cd);
}

/// Two NICs, node01's MAC on the second: the script must pick net1 by its MAC, so the request
/// carries that MAC (and the first NIC's MAC appears nowhere in it).
#[test]
fn picks_the_nic_by_mac() {
    const OTHER_MAC: &str = "52:54:00:aa:bb:01";
    let (request, run, context) =
        boot_request("two-nics", Firmware::Bios, None, (Image::Iso, Attach::Cd), |vm| {
            vm.nic(OTHER_MAC).nic(NODE_MAC)
        });
    assert!(!request.target.contains(OTHER_MAC), "the first NIC's MAC leaked\n{context}");
    assert!(run.serial.contains("using net1"), "the script did not choose net1\n{context}");
    eprintln!("two-nics: VM done after {:.1}s", run.elapsed.as_secs_f64());
}

/// The machine's identity reaches the service as text: `uuid` as the usual 8-4-4-4-12 form and
/// `serial` as the SMBIOS string, so the service can match and log them.
#[test]
fn sends_uuid_and_serial_as_text() {
    const UUID: &str = "12345678-9abc-def0-1122-334455667788";
    const SERIAL: &str = "SN-42/x";
    let (request, _, context) =
        boot_request("identity", Firmware::Bios, None, (Image::Iso, Attach::Cd), |vm| {
            vm.nic(NODE_MAC).uuid(UUID).serial_number(SERIAL)
        });
    assert_eq!(request.q("serial"), SERIAL, "serial\n{context}");
    assert_eq!(
        request.q("uuid").to_ascii_lowercase(),
        UUID,
        "uuid: expected the UUID as text; `${{uuid:uristring}}` sends its 16 raw bytes instead, \
         use `${{uuid}}` (hex digits and dashes need no escaping)\n{context}"
    );
}

/// The harness's own listener: query decoding, routes and the 404 default, checked from the
/// host so a boot-test failure is never the listener's.
#[test]
fn harness_listener_records_and_answers() {
    let listener = Listener::start();
    listener.set_answer("/assets/", Answer::ok("asset\n"));
    let base = listener.url_for_host();
    let body =
        ureq::get(&format!("{base}/boot/node01?mac=52:54:00:12:34:56&serial=SN-42%2Fx&empty="))
            .call()
            .expect("GET /boot/")
            .into_string()
            .unwrap();
    assert_eq!(body, listener::POWEROFF_SCRIPT);
    let asset = ureq::get(&format!("{base}/assets/x")).call().unwrap().into_string().unwrap();
    assert_eq!(asset, "asset\n");
    match ureq::get(&format!("{base}/nothing")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("expected 404, got {other:?}"),
    }
    let r = listener.wait_for_boot(NODE, Duration::from_secs(5)).expect("recorded");
    assert_eq!(r.q("mac"), NODE_MAC);
    assert_eq!(r.q("serial"), "SN-42/x");
    assert_eq!(r.query.get("empty").map(String::as_str), Some(""));
    assert_eq!(listener.requests().len(), 3, "{}", listener.log());
}

/// The local disk's BIOS code fits in the FAT boot sector without touching the partition table
/// area (which must stay empty for UEFI to see the whole-disk FAT), and the console cleaner
/// leaves plain text.
#[test]
fn harness_local_disk_and_console() {
    let code = common::disks::bios_boot_code("BOOTFORGE-LOCAL-DISK bios\r\n");
    assert!(0x3e + code.len() <= 0x1be);
    let dir = tempfile::tempdir().unwrap();
    let disk = std::fs::read(local_disk(dir.path())).unwrap();
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
    assert!(disk[0x1be..0x1fe].iter().all(|&b| b == 0), "partition table area not empty");
    assert_eq!(&disk[0x3e..0x3e + code.len()], &code[..]);
    assert_eq!(clean_console(b"\x1b[2J\x1b[01;01Habc\r\nx\x08y"), "abc\ny");
}
