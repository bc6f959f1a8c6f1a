//! Structure of the images `write_image` produces, checked with tools that share no code with
//! the writers: xorriso (El Torito, ISO tree, MBR/GPT of the hybrid ISO), sgdisk/sfdisk (GPT of
//! the usb image), mtools (the FAT ESPs and the scripts in them).
//!
//! QEMU/OVMF boots El Torito even from a USB disk, so a boot test cannot catch a missing GPT or
//! MBR ESP entry; these checks can. The tools are required: a missing one fails the test and
//! names the Debian package to install.

use bootforge::firmware::{Arch, EfiLoader, Firmware};
use bootforge::inventory::{Inventory, ServerUrl};
use bootforge::media::template::pad;
use bootforge::media::{self, Format, ImageSpec};
use bootforge::script::{node_script, Medium, ScriptSettings};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: u64 = 1_700_000_000;
const HOST: &str = "rack1-node07";

/// Runs a tool and returns its stdout; panics with the Debian package name when it is missing.
fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}); install the Debian package `{package}` (apt-get install {package})")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

fn xorriso(iso: &Path, args: &[&str]) -> String {
    let mut all = vec!["-indev", iso.to_str().unwrap()];
    all.extend_from_slice(args);
    // xorriso reports on stdout when asked for `plain` reports; keep its chatter out.
    let out = Command::new("xorriso").args(&all).output().unwrap_or_else(|e| {
        panic!("cannot run xorriso ({e}); install the Debian package `xorriso`")
    });
    assert!(out.status.success(), "xorriso {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn mtools(tool: &str, image: &Path, offset: u64, path: &str) -> String {
    let target = format!("{}@@{offset}", image.display());
    run(tool, "mtools", &["-i", &target, path])
}

struct Sample {
    bios: String,
    efi: String,
    info: String,
}

/// Node files take whole 2 KiB slots in every image (see `media::template`).
fn padded(text: &str) -> String {
    String::from_utf8(pad(text.as_bytes())).unwrap()
}

fn sample() -> Sample {
    let csv = format!(
        "hostname,ip,gateway,dns,mac\n{HOST},10.20.0.17/24,10.20.0.1,10.20.0.2,52:54:00:12:34:56\n"
    );
    let inventory = Inventory::parse("sample.csv", csv.as_bytes()).expect("valid inventory");
    let node = &inventory.nodes()[0];
    let server: ServerUrl = "http://10.20.0.5:8080".parse().unwrap();
    let script =
        |medium| node_script(node, &ScriptSettings { server: &server, token: None, medium });
    Sample {
        bios: script(Medium::Cd),
        efi: script(Medium::Esp),
        info: format!("{{\"hostname\":\"{HOST}\",\"source_date_epoch\":{EPOCH}}}\n"),
    }
}

fn spec<'a>(s: &'a Sample, arches: &'a [Arch], epoch: u64) -> ImageSpec<'a> {
    ImageSpec {
        hostname: HOST,
        bios_script: s.bios.as_bytes(),
        efi_script: s.efi.as_bytes(),
        info_json: s.info.as_bytes(),
        arches,
        epoch,
    }
}

fn image(format: Format, spec: &ImageSpec, fw: &Firmware) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let n = media::write_image(format, spec, fw, &mut out).expect("image is written");
    let bytes = out.into_inner();
    assert_eq!(n, bytes.len() as u64, "returned size matches bytes written");
    bytes
}

/// Writes the image to a temporary file (kept in BOOTFORGE_KEEP_IMAGES if set, for looking at).
fn image_file(format: Format, spec: &ImageSpec, fw: &Firmware) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format.file_name(spec.hostname));
    let bytes = image(format, spec, fw);
    std::fs::write(&path, &bytes).unwrap();
    if let Some(keep) = std::env::var_os("BOOTFORGE_KEEP_IMAGES") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(Path::new(&keep).join(format.file_name(spec.hostname)), &bytes).unwrap();
    }
    (dir, path)
}

/// Fields of the xorriso report line starting with `prefix` (after the colon), per line.
fn report_lines<'a>(report: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split_once(':').unwrap().1.split_whitespace().collect())
        .collect()
}

#[test]
fn iso_has_bios_and_uefi_el_torito_entries_and_hybrid_tables() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::Ipxe);
    let arches = [Arch::X86_64, Arch::Arm64];
    let (_dir, iso) = image_file(Format::Iso, &spec(&s, &arches, EPOCH), &fw);
    let report = xorriso(&iso, &["-report_el_torito", "plain", "-report_system_area", "plain"]);

    // El Torito: BIOS entry 1 (no emulation, load size 4, boot info table), UEFI entry 2.
    let imgs = report_lines(&report, "El Torito boot img");
    assert_eq!(imgs.len(), 2, "two boot entries:\n{report}");
    assert_eq!(imgs[0][..5], ["1", "BIOS", "y", "none", "0x0000"], "{report}");
    assert_eq!(imgs[0][6], "4", "BIOS load size 4:\n{report}");
    assert_eq!(imgs[1][..4], ["2", "UEFI", "y", "none"], "{report}");
    let uefi_sectors: u64 = imgs[1][6].parse().unwrap();
    let uefi_lba: u64 = imgs[1][7].parse().unwrap();
    let paths = report_lines(&report, "El Torito img path");
    assert_eq!(paths[0], ["1", "/isolinux/isolinux.bin"], "{report}");
    let opts = report_lines(&report, "El Torito img opts");
    assert!(opts[0].contains(&"boot-info-table"), "boot info table:\n{report}");
    assert!(report.contains("El Torito cat path : /isolinux/boot.cat"), "{report}");

    // The hybrid MBR: isohybrid boot code with the ESP (0xEF) and the ISO (bootable) mirrored.
    assert!(report.contains("System area summary: MBR isohybrid"), "{report}");
    assert!(report.contains("GPT"), "{report}");
    let mbr = report_lines(&report, "MBR partition      ");
    let esp_mbr = mbr.iter().find(|p| p[2] == "0xef").expect("MBR ESP entry");
    assert!(mbr.iter().any(|p| p[1] == "0x80"), "a bootable MBR entry:\n{report}");
    let esp_start_512: u64 = esp_mbr[3].parse().unwrap();
    let esp_blocks_512: u64 = esp_mbr[4].parse().unwrap();

    // The GPT: an ESP entry (type C12A7328-…, as xorriso prints the on-disk bytes).
    let types = report_lines(&report, "GPT type GUID");
    let ranges = report_lines(&report, "GPT start and size");
    let esp_index = types
        .iter()
        .position(|t| t[1] == "28732ac11ff8d211ba4b00a0c93ec93b")
        .expect("GPT ESP entry");
    let gpt_esp: Vec<u64> = ranges[esp_index][1..].iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(gpt_esp, [esp_start_512, esp_blocks_512], "GPT and MBR agree on the ESP");

    // The UEFI El Torito entry covers the whole ESP, which the partitions point at.
    assert_eq!(uefi_lba * 4, esp_start_512, "El Torito UEFI image is the partitioned ESP");
    assert_eq!(uefi_sectors, esp_blocks_512, "UEFI entry's sector count covers the whole ESP");
    assert!(esp_blocks_512 * 512 < 32 << 20, "ESP under 32 MiB");

    // The isohybrid MBR carries isolinux.bin's address (in 512-byte sectors) at byte 432.
    let bytes = std::fs::read(&iso).unwrap();
    let bios_lba: u64 = imgs[0][7].parse().unwrap();
    assert_eq!(&bytes[..432], fw.isohdpfx_bin(), "isohdpfx.bin boot code");
    assert_eq!(u64::from_le_bytes(bytes[432..440].try_into().unwrap()), bios_lba * 4);
    // sfdisk reads the same GPT independently.
    let json = run("sfdisk", "fdisk", &["-J", iso.to_str().unwrap()]);
    assert!(json.contains("\"label\": \"gpt\""), "{json}");
    assert!(json.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{json}");

    // The ISO tree (Rock Ridge names) and the ISOLINUX configuration.
    let listing = xorriso(&iso, &["-find", "/", "-type", "f", "-exec", "lsdl"]);
    for f in [
        "/isolinux/isolinux.bin",
        "/isolinux/ldlinux.c32",
        "/isolinux/isolinux.cfg",
        "/ipxe.lkrn",
        "/bios.ipxe",
        "/bootforge.json",
    ] {
        assert!(listing.contains(&format!("'{f}'")), "{f} in the ISO:\n{listing}");
    }
    let extract = tempfile::tempdir().unwrap();
    let get = |iso_path: &str| {
        let to = extract.path().join(iso_path.trim_start_matches('/').replace('/', "_"));
        xorriso(&iso, &["-osirrox", "on", "-extract", iso_path, to.to_str().unwrap()]);
        std::fs::read(to).unwrap()
    };
    let cfg = String::from_utf8(get("/isolinux/isolinux.cfg")).unwrap();
    assert!(cfg.contains("KERNEL /ipxe.lkrn"), "{cfg}");
    assert!(cfg.contains("APPEND initrd=/bios.ipxe"), "{cfg}");
    assert_eq!(get("/bios.ipxe"), pad(s.bios.as_bytes()));
    assert_eq!(get("/bootforge.json"), pad(s.info.as_bytes()));
    assert_eq!(get("/ipxe.lkrn"), fw.lkrn());
    assert_eq!(get("/isolinux/ldlinux.c32"), fw.ldlinux_c32());

    // The ESP, read with mtools at the partition's offset.
    let off = esp_start_512 * 512;
    let boot = mtools("mdir", &iso, off, "::/EFI/BOOT");
    assert!(boot.contains("BOOTX64  EFI") && boot.contains("BOOTAA64 EFI"), "{boot}");
    assert_eq!(mtools("mtype", &iso, off, "::/autoexec.ipxe"), padded(&s.efi));
    assert_eq!(mtools("mtype", &iso, off, "::/bootforge.json"), padded(&s.info));

    // The volume label follows the hostname.
    let pvd = &bytes[0x8000 + 40..0x8000 + 72];
    assert_eq!(String::from_utf8_lossy(pvd).trim_end(), media::volume_label(HOST));
}

#[test]
fn usb_is_a_gpt_disk_with_one_esp() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::Ipxe);
    let (_dir, usb) = image_file(Format::Usb, &spec(&s, &[Arch::X86_64], EPOCH), &fw);
    let p = run("sgdisk", "gdisk", &["-p", usb.to_str().unwrap()]);
    let rows: Vec<Vec<&str>> = p
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| !r.is_empty())
        .collect();
    assert_eq!(rows.len(), 1, "one partition:\n{p}");
    assert_eq!(rows[0][5], "EF00", "ESP type:\n{p}");
    let verify = run("sgdisk", "gdisk", &["-v", usb.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");

    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", "fdisk", &["-J", usb.to_str().unwrap()])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let start = parts[0]["start"].as_u64().unwrap();
    assert_eq!(start, 2048, "ESP aligned at 1 MiB");

    // The protective MBR: one 0xEE entry.
    let bytes = std::fs::read(&usb).unwrap();
    assert_eq!(bytes[446 + 4], 0xEE);
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);

    let off = start * 512;
    let boot = mtools("mdir", &usb, off, "::/EFI/BOOT");
    assert!(boot.contains("BOOTX64  EFI") && !boot.contains("BOOTAA64"), "{boot}");
    assert_eq!(mtools("mtype", &usb, off, "::/autoexec.ipxe"), padded(&s.efi));
    assert_eq!(mtools("mtype", &usb, off, "::/bootforge.json"), padded(&s.info));
}

#[test]
fn efi_is_a_fat_superfloppy() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::Ipxe);
    let (_dir, efi) = image_file(Format::Efi, &spec(&s, &[Arch::Arm64], EPOCH), &fw);
    let root = mtools("mdir", &efi, 0, "::/");
    assert!(root.contains(&media::fat_label(HOST)), "label:\n{root}");
    let boot = mtools("mdir", &efi, 0, "::/EFI/BOOT");
    assert!(boot.contains("BOOTAA64 EFI") && !boot.contains("BOOTX64"), "{boot}");
    assert_eq!(mtools("mtype", &efi, 0, "::/autoexec.ipxe"), padded(&s.efi));
    assert_eq!(mtools("mtype", &efi, 0, "::/bootforge.json"), padded(&s.info));
    let bytes = std::fs::read(&efi).unwrap();
    let fat = &bytes[0x36..0x3B];
    assert!(
        fat == b"FAT12" || fat == b"FAT16",
        "FAT12/16, found {:?}",
        String::from_utf8_lossy(fat)
    );
}

#[test]
fn images_are_reproducible_and_dated_by_the_epoch() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::Ipxe);
    let arches = [Arch::X86_64, Arch::Arm64];
    for format in Format::ALL {
        let a = image(format, &spec(&s, &arches, EPOCH), &fw);
        let b = image(format, &spec(&s, &arches, EPOCH), &fw);
        assert!(a == b, "{format}: same inputs give the same bytes");
        let later = image(format, &spec(&s, &arches, EPOCH + 86_400), &fw);
        assert!(a != later, "{format}: a different epoch changes the image");
        let mut other = spec(&s, &arches, EPOCH);
        other.hostname = "rack1-node08";
        assert!(a != image(format, &other, &fw), "{format}: another host, another image");
    }
}

#[test]
fn inspect_reads_back_every_format() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::Ipxe);
    for format in Format::ALL {
        let (_dir, path) = image_file(format, &spec(&s, &[Arch::X86_64], EPOCH), &fw);
        let found = media::inspect(&path).unwrap();
        assert_eq!(found.format, format);
        assert_eq!(found.info_json, s.info);
        let script = |p: &str| found.scripts.iter().find(|(path, _)| path == p).map(|(_, t)| t);
        match format {
            Format::Iso => {
                assert_eq!(script("/bios.ipxe"), Some(&s.bios), "{:?}", found.scripts);
                assert_eq!(script("esp:/autoexec.ipxe"), Some(&s.efi), "{:?}", found.scripts);
                assert!(found.files.contains(&("/ipxe.lkrn".into(), fw.lkrn().len() as u64)));
            }
            Format::Usb | Format::Efi => {
                assert_eq!(found.scripts.len(), 1, "{:?}", found.scripts);
                assert_eq!(script("/autoexec.ipxe"), Some(&s.efi));
            }
        }
        let efi_path = if format == Format::Iso {
            "esp:/EFI/BOOT/BOOTX64.EFI"
        } else {
            "/EFI/BOOT/BOOTX64.EFI"
        };
        let size = fw.efi(Arch::X86_64).unwrap().len() as u64;
        assert!(found.files.contains(&(efi_path.into(), size)), "{format}: {:?}", found.files);
    }
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0u8; 70_000]).unwrap();
    let err = media::inspect(junk.path()).unwrap_err();
    assert!(format!("{err:#}").contains("not an image bootforge writes"), "{err:#}");
}

#[test]
fn snponly_loader_is_x86_only() {
    let s = sample();
    let fw = Firmware::embedded(EfiLoader::SnpOnly);
    let bytes = image(Format::Efi, &spec(&s, &[Arch::X86_64], EPOCH), &fw);
    let found = media::inspect_bytes(&bytes).unwrap();
    let size = fw.efi(Arch::X86_64).unwrap().len() as u64;
    assert!(found.files.contains(&("/EFI/BOOT/BOOTX64.EFI".into(), size)));
    let err = media::write_image(
        Format::Efi,
        &spec(&s, &[Arch::Arm64], EPOCH),
        &fw,
        Cursor::new(Vec::new()),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("snponly"), "{err:#}");
}

#[test]
fn operator_firmware_is_checked_file_by_file() {
    let embedded = Firmware::embedded(EfiLoader::Ipxe);
    let dir = tempfile::tempdir().unwrap();
    // A copy of the embedded files is accepted and used.
    std::fs::write(dir.path().join("ipxe.lkrn"), embedded.lkrn()).unwrap();
    std::fs::write(dir.path().join("ipxe-amd64.efi"), embedded.efi(Arch::X86_64).unwrap()).unwrap();
    std::fs::write(dir.path().join("ipxe-arm64.efi"), embedded.efi(Arch::Arm64).unwrap()).unwrap();
    let fw = Firmware::from_dir(dir.path(), EfiLoader::Ipxe).unwrap();
    assert_eq!(fw.lkrn(), embedded.lkrn());
    let versions = fw.versions();
    let lkrn = versions.iter().find(|f| f.name == "ipxe.lkrn").unwrap();
    assert!(lkrn.origin.starts_with("operator build from "), "{lkrn:?}");
    assert_eq!(lkrn.sha256, bootforge::firmware::IPXE_LKRN_SHA256);
    let isolinux = versions.iter().find(|f| f.name == "isolinux.bin").unwrap();
    assert!(isolinux.origin.starts_with("debian isolinux 3:6.04"), "{isolinux:?}");

    // An arm64 loader named as the amd64 one is refused, naming the file and the expectation.
    std::fs::write(dir.path().join("ipxe-amd64.efi"), embedded.efi(Arch::Arm64).unwrap()).unwrap();
    let err = Firmware::from_dir(dir.path(), EfiLoader::Ipxe).unwrap_err().to_string();
    assert!(err.contains("ipxe-amd64.efi") && err.contains("x86_64"), "{err}");
    assert!(err.contains("0xaa64"), "{err}");
    std::fs::remove_file(dir.path().join("ipxe-amd64.efi")).unwrap();

    // Something that is not a Linux-boot-protocol kernel is refused as ipxe.lkrn.
    std::fs::write(dir.path().join("ipxe.lkrn"), b"#!ipxe\necho not a kernel\n").unwrap();
    let err = Firmware::from_dir(dir.path(), EfiLoader::Ipxe).unwrap_err().to_string();
    assert!(err.contains("ipxe.lkrn") && err.contains("HdrS"), "{err}");

    // A folder without any iPXE file is the wrong folder.
    let empty = tempfile::tempdir().unwrap();
    let err = Firmware::from_dir(empty.path(), EfiLoader::Ipxe).unwrap_err().to_string();
    assert!(err.contains("holds none of"), "{err}");
}
