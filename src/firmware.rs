//! The boot loaders bootforge writes into media: iPXE (BIOS `ipxe.lkrn`, the EFI loaders) and
//! ISOLINUX, which only exists to start `ipxe.lkrn` from an ISO booted by BIOS.
//!
//! By default every file is the pinned Debian build that build.rs embedded. An operator who needs
//! their own iPXE (extra drivers, a different feature set) points [`Firmware::from_dir`] at their
//! build output; each file found there replaces the embedded one, after a structural check, so a
//! file for the wrong architecture is refused at build time instead of failing on a server's
//! console. ISOLINUX always stays the pinned one.

use anyhow::{bail, Context};
use hadris_fs::Content;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

include!(concat!(env!("OUT_DIR"), "/firmware_payload.rs"));

/// Where the embedded iPXE loaders come from (keep in step with scripts/fetch-firmware).
pub const IPXE_ORIGIN: &str = "debian ipxe 1.21.1+git20250501.dad20602+dfsg-1";
/// Where `isolinux.bin` and `isohdpfx.bin` come from.
pub const ISOLINUX_ORIGIN: &str = "debian isolinux 3:6.04~git20190206.bf6db5b4+dfsg1-3.1";
/// Where `ldlinux.c32` comes from.
pub const SYSLINUX_COMMON_ORIGIN: &str =
    "debian syslinux-common 3:6.04~git20190206.bf6db5b4+dfsg1-3.1";

/// A CPU architecture a node's UEFI firmware runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The removable-media file name UEFI looks for on this architecture (UEFI spec §3.5.1.1).
    pub fn efi_boot_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// The PE/COFF machine type of an EFI image built for this architecture.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x8664,
            Arch::Arm64 => 0xAA64,
        }
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!(
                "{s:?} is not an architecture; expected x86_64 (or amd64) or arm64 (or aarch64)"
            )),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which iPXE EFI build boots x86_64 nodes.
///
/// `Ipxe` carries iPXE's own NIC drivers and falls back to the firmware's; `SnpOnly` drives the
/// NIC only through the firmware's Simple Network Protocol, which some machines need because
/// iPXE's native driver and the firmware fight over the card. Debian builds `snponly.efi` for
/// x86_64 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EfiLoader {
    #[default]
    Ipxe,
    SnpOnly,
}

impl EfiLoader {
    pub fn as_str(self) -> &'static str {
        match self {
            EfiLoader::Ipxe => "ipxe",
            EfiLoader::SnpOnly => "snponly",
        }
    }
}

impl FromStr for EfiLoader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipxe" => Ok(EfiLoader::Ipxe),
            "snponly" => Ok(EfiLoader::SnpOnly),
            _ => Err(format!("{s:?} is not an EFI loader; expected ipxe or snponly")),
        }
    }
}

impl fmt::Display for EfiLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One payload file as recorded in `bootforge.json` and shown by `inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirmwareFile {
    /// File name in the payload set (`ipxe-amd64.efi`), not where it lands in an image.
    pub name: String,
    /// `debian ipxe <version>`, `debian isolinux <version>`, or `operator build from <dir>`.
    pub origin: String,
    /// Lower-case hex SHA-256 of the bytes written.
    pub sha256: String,
}

/// One loaded payload file. The bytes are a [`Content`] so every image shares them instead of
/// copying them into its file tree (a `Content` clone is a reference count).
#[derive(Clone, Debug)]
struct Payload {
    name: &'static str,
    content: Content,
    origin: String,
    sha256: String,
}

impl Payload {
    fn embedded(name: &'static str, bytes: &'static [u8], sha256: &str, origin: &str) -> Payload {
        Payload {
            name,
            content: Content::bytes(bytes),
            origin: origin.to_string(),
            sha256: sha256.to_string(),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.content.as_bytes().expect("payload content is held in memory")
    }

    fn file(&self) -> FirmwareFile {
        FirmwareFile {
            name: self.name.to_string(),
            origin: self.origin.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

/// The embedded files, copied into shared buffers once per process.
static EMBEDDED: LazyLock<Firmware> = LazyLock::new(|| Firmware {
    loader: EfiLoader::Ipxe,
    lkrn: Payload::embedded("ipxe.lkrn", IPXE_LKRN, IPXE_LKRN_SHA256, IPXE_ORIGIN),
    amd64: Payload::embedded("ipxe-amd64.efi", IPXE_AMD64_EFI, IPXE_AMD64_EFI_SHA256, IPXE_ORIGIN),
    arm64: Payload::embedded("ipxe-arm64.efi", IPXE_ARM64_EFI, IPXE_ARM64_EFI_SHA256, IPXE_ORIGIN),
    snponly: Payload::embedded("snponly.efi", SNPONLY_EFI, SNPONLY_EFI_SHA256, IPXE_ORIGIN),
    isolinux: Payload::embedded("isolinux.bin", ISOLINUX_BIN, ISOLINUX_BIN_SHA256, ISOLINUX_ORIGIN),
    ldlinux: Payload::embedded(
        "ldlinux.c32",
        LDLINUX_C32,
        LDLINUX_C32_SHA256,
        SYSLINUX_COMMON_ORIGIN,
    ),
    isohdpfx: Payload::embedded("isohdpfx.bin", ISOHDPFX_BIN, ISOHDPFX_BIN_SHA256, ISOLINUX_ORIGIN),
});

/// The loader set one build uses. Cheap to clone and `Sync`, so parallel image writers share one.
#[derive(Clone, Debug)]
pub struct Firmware {
    loader: EfiLoader,
    lkrn: Payload,
    amd64: Payload,
    arm64: Payload,
    snponly: Payload,
    isolinux: Payload,
    ldlinux: Payload,
    isohdpfx: Payload,
}

/// What an operator's file must be, by its name in the build folder.
#[derive(Clone, Copy)]
enum Expect {
    Lkrn,
    Efi(Arch),
}

/// The iPXE files an operator may replace, in the order they are checked.
const OPERATOR_FILES: [(&str, Expect); 4] = [
    ("ipxe.lkrn", Expect::Lkrn),
    ("ipxe-amd64.efi", Expect::Efi(Arch::X86_64)),
    ("ipxe-arm64.efi", Expect::Efi(Arch::Arm64)),
    ("snponly.efi", Expect::Efi(Arch::X86_64)),
];

impl Firmware {
    /// The pinned Debian payload built into this binary.
    pub fn embedded(loader: EfiLoader) -> Firmware {
        Firmware { loader, ..EMBEDDED.clone() }
    }

    /// An operator's own iPXE build: files with the embedded names (`ipxe.lkrn`,
    /// `ipxe-amd64.efi`, `ipxe-arm64.efi`, `snponly.efi`) in `dir`. Each file present replaces
    /// the embedded one once it passes a structural check (EFI files: a PE/COFF EFI application
    /// for the architecture the name says; `ipxe.lkrn`: a Linux boot protocol kernel). A folder
    /// holding none of them is an error, since it almost certainly is the wrong folder.
    pub fn from_dir(dir: &Path, loader: EfiLoader) -> anyhow::Result<Firmware> {
        if !dir.is_dir() {
            bail!("firmware folder {} does not exist or is not a folder", dir.display());
        }
        let mut fw = Firmware::embedded(loader);
        let origin = format!("operator build from {}", dir.display());
        let mut found = 0;
        for (name, expect) in OPERATOR_FILES {
            let path = dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            let problem = match expect {
                Expect::Lkrn => check_lkrn(&bytes),
                Expect::Efi(arch) => check_efi(&bytes, arch),
            };
            if let Err(problem) = problem {
                let wanted = match expect {
                    Expect::Lkrn => "iPXE's BIOS kernel image (bin/ipxe.lkrn)".to_string(),
                    Expect::Efi(arch) => format!(
                        "an EFI application for {arch} (PE machine {:#06x})",
                        arch.pe_machine()
                    ),
                };
                bail!("{}: {problem}; expected {wanted}", path.display());
            }
            let payload = Payload {
                name,
                sha256: hex::encode(Sha256::digest(&bytes)),
                content: Content::bytes(bytes),
                origin: origin.clone(),
            };
            match name {
                "ipxe.lkrn" => fw.lkrn = payload,
                "ipxe-amd64.efi" => fw.amd64 = payload,
                "ipxe-arm64.efi" => fw.arm64 = payload,
                _ => fw.snponly = payload,
            }
            found += 1;
        }
        if found == 0 {
            bail!(
                "firmware folder {} holds none of ipxe.lkrn, ipxe-amd64.efi, ipxe-arm64.efi, \
                 snponly.efi; expected an iPXE build output with at least one of them",
                dir.display()
            );
        }
        Ok(fw)
    }

    /// The EFI loader flavour this set uses.
    pub fn loader(&self) -> EfiLoader {
        self.loader
    }

    /// Whether `ipxe.lkrn` is the operator's own build (`--firmware-dir`) rather than the
    /// embedded Debian one, which trusts only iPXE's own root CA.
    pub fn lkrn_is_operators(&self) -> bool {
        self.lkrn.origin != EMBEDDED.lkrn.origin
    }

    /// iPXE for BIOS, started by ISOLINUX.
    pub fn lkrn(&self) -> &[u8] {
        self.lkrn.bytes()
    }

    /// The EFI loader for `arch`; an error for arm64 with the snponly loader, which Debian does
    /// not build.
    pub fn efi(&self, arch: Arch) -> anyhow::Result<&[u8]> {
        Ok(self.efi_payload(arch)?.bytes())
    }

    pub fn isolinux_bin(&self) -> &[u8] {
        self.isolinux.bytes()
    }

    pub fn ldlinux_c32(&self) -> &[u8] {
        self.ldlinux.bytes()
    }

    pub fn isohdpfx_bin(&self) -> &[u8] {
        self.isohdpfx.bytes()
    }

    /// One entry per payload file this set uses: `ipxe.lkrn`, the EFI loaders of the chosen
    /// flavour, and the ISOLINUX files.
    pub fn versions(&self) -> Vec<FirmwareFile> {
        let mut files = vec![self.lkrn.file()];
        match self.loader {
            EfiLoader::Ipxe => {
                files.push(self.amd64.file());
                files.push(self.arm64.file());
            }
            EfiLoader::SnpOnly => files.push(self.snponly.file()),
        }
        files.extend([self.isolinux.file(), self.ldlinux.file(), self.isohdpfx.file()]);
        files
    }

    /// The payload files one image for `arches` contains, for its `bootforge.json`: the EFI
    /// loaders, and with `bios` the BIOS loader and ISOLINUX files too. Which formats carry the
    /// BIOS files is the media builder's knowledge (`media::Format::carries_bios`), not ours.
    pub fn versions_for(&self, bios: bool, arches: &[Arch]) -> anyhow::Result<Vec<FirmwareFile>> {
        let mut files = Vec::new();
        if bios {
            files.push(self.lkrn.file());
        }
        for arch in Arch::ALL.into_iter().filter(|a| arches.contains(a)) {
            files.push(self.efi_payload(arch)?.file());
        }
        if bios {
            files.extend([self.isolinux.file(), self.ldlinux.file(), self.isohdpfx.file()]);
        }
        Ok(files)
    }

    fn efi_payload(&self, arch: Arch) -> anyhow::Result<&Payload> {
        match (self.loader, arch) {
            (EfiLoader::Ipxe, Arch::X86_64) => Ok(&self.amd64),
            (EfiLoader::Ipxe, Arch::Arm64) => Ok(&self.arm64),
            (EfiLoader::SnpOnly, Arch::X86_64) => Ok(&self.snponly),
            (EfiLoader::SnpOnly, Arch::Arm64) => bail!(
                "the snponly EFI loader exists for x86_64 only; arm64 nodes need the ipxe loader"
            ),
        }
    }

    /// Shared handles on the bytes, for image trees.
    pub(crate) fn lkrn_content(&self) -> &Content {
        &self.lkrn.content
    }
    pub(crate) fn isolinux_content(&self) -> &Content {
        &self.isolinux.content
    }
    pub(crate) fn ldlinux_content(&self) -> &Content {
        &self.ldlinux.content
    }
}

/// Checks the Linux/x86 boot protocol signature `HdrS` at offset 0x202, which ISOLINUX needs to
/// load the file as a kernel.
fn check_lkrn(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(0x202..0x206) {
        Some(b"HdrS") => Ok(()),
        _ => Err("has no Linux boot protocol header (\"HdrS\" at offset 0x202)".into()),
    }
}

/// Checks that `bytes` is a PE/COFF image for `arch` whose subsystem is EFI application.
///
/// Written by hand because it is four fixed-offset reads (DOS header → PE signature → COFF
/// machine → optional header subsystem) and no PE crate is in the dependency tree.
fn check_efi(bytes: &[u8], arch: Arch) -> Result<(), String> {
    const EFI_APPLICATION: u16 = 10;
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if bytes.get(..2) != Some(b"MZ") {
        return Err("is not a PE/COFF image (no MZ header)".into());
    }
    let pe = bytes
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("is truncated before its PE header offset")?;
    if bytes.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err("is not a PE/COFF image (no PE signature)".into());
    }
    let machine = u16_at(pe + 4).ok_or("is truncated in its COFF header")?;
    if machine != arch.pe_machine() {
        let what = match machine {
            0x8664 => " (x86_64)",
            0xAA64 => " (arm64)",
            0x014c => " (i386)",
            0x01c2 | 0x01c4 => " (arm32)",
            0x5064 => " (riscv64)",
            _ => "",
        };
        return Err(format!("is built for PE machine {machine:#06x}{what}"));
    }
    let optional = pe + 24;
    match u16_at(optional) {
        Some(0x10b | 0x20b) => {}
        _ => return Err("has no PE32/PE32+ optional header".into()),
    }
    // The subsystem field sits at the same offset in PE32 and PE32+ optional headers.
    let subsystem = u16_at(optional + 68).ok_or("is truncated in its optional header")?;
    if subsystem != EFI_APPLICATION {
        return Err(format!(
            "has PE subsystem {subsystem}, not {EFI_APPLICATION} (EFI application)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_pass_their_own_checks() {
        check_lkrn(IPXE_LKRN).unwrap();
        check_efi(IPXE_AMD64_EFI, Arch::X86_64).unwrap();
        check_efi(IPXE_ARM64_EFI, Arch::Arm64).unwrap();
        check_efi(SNPONLY_EFI, Arch::X86_64).unwrap();
    }

    #[test]
    fn wrong_machine_and_non_pe_are_refused() {
        let err = check_efi(IPXE_ARM64_EFI, Arch::X86_64).unwrap_err();
        assert!(err.contains("0xaa64") && err.contains("arm64"), "{err}");
        assert!(check_efi(IPXE_LKRN, Arch::X86_64).is_err());
        assert!(check_efi(b"MZ", Arch::X86_64).is_err());
        assert!(check_lkrn(IPXE_AMD64_EFI).is_err());
        assert!(check_lkrn(&[]).is_err());
    }

    #[test]
    fn parsing_and_display() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!(Arch::Arm64.to_string(), "arm64");
        assert!("ppc64".parse::<Arch>().is_err());
        assert_eq!("snponly".parse::<EfiLoader>().unwrap(), EfiLoader::SnpOnly);
        assert!("snp".parse::<EfiLoader>().is_err());
    }

    #[test]
    fn snponly_is_x86_only() {
        let fw = Firmware::embedded(EfiLoader::SnpOnly);
        assert_eq!(fw.efi(Arch::X86_64).unwrap(), SNPONLY_EFI);
        let err = fw.efi(Arch::Arm64).unwrap_err().to_string();
        assert!(err.contains("snponly") && err.contains("arm64"), "{err}");
        let names: Vec<_> = fw.versions().into_iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            ["ipxe.lkrn", "snponly.efi", "isolinux.bin", "ldlinux.c32", "isohdpfx.bin"]
        );
    }

    #[test]
    fn firmware_is_sync_and_send() {
        fn check<T: Send + Sync>() {}
        check::<Firmware>();
    }
}
