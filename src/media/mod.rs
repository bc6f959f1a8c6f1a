//! Per-node boot media: the same loaders and a node's scripts, packed three ways.
//!
//! * [`Format::Iso`]: a hybrid ISO 9660 image (Joliet, Rock Ridge) for BMC virtual media and CD
//!   drives, which also boots when written to a USB stick. BIOS boots ISOLINUX, which starts
//!   `ipxe.lkrn` with the BIOS script as its initrd; UEFI boots the EFI system partition image
//!   that El Torito and the partition table both point at.
//! * [`Format::Usb`]: a GPT disk with one EFI system partition, for UEFI machines only.
//! * [`Format::Efi`]: that EFI system partition alone (a FAT "superfloppy"), for virtual floppies
//!   or for copying onto an existing ESP.
//!
//! Every writer is deterministic: dates come from [`ImageSpec::epoch`], and volume ids and GUIDs
//! derive from the hostname, so the same inputs give byte-identical images while two nodes never
//! share an identifier. Images are built in memory (the largest is a few MiB), which keeps the
//! writers free of I/O error paths and lets the fleet build them in parallel.

mod esp;
mod inspect;
mod iso;
pub mod template;
mod usb;

pub use inspect::{inspect, inspect_bytes, Inspection};
pub use template::{write_image, NodeImage, Templates};

use crate::firmware::{Arch, Firmware};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Seek, Write};
use std::str::FromStr;

/// Name of the node description stored in every image, read back by [`inspect`].
pub const INFO_FILE: &str = "bootforge.json";
/// The script iPXE's EFI build runs from the file system it was loaded from.
pub const EFI_SCRIPT_FILE: &str = "autoexec.ipxe";
/// The script ISOLINUX hands `ipxe.lkrn` as its initrd (ISO root).
pub const BIOS_SCRIPT_FILE: &str = "bios.ipxe";

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Iso,
    Usb,
    Efi,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Iso, Format::Usb, Format::Efi];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Iso => "iso",
            Format::Usb => "usb",
            Format::Efi => "efi",
        }
    }

    /// Whether an image of this format carries the BIOS loader (`ipxe.lkrn` and the ISOLINUX
    /// files) besides the EFI ones: only the hybrid ISO boots from a legacy BIOS.
    pub fn carries_bios(self) -> bool {
        self == Format::Iso
    }

    /// The file a node's image of this format is written to: `HOST.iso`, `HOST.usb.img`,
    /// `HOST.efi.img`. Distinct suffixes let all three formats share one output folder.
    pub fn file_name(self, hostname: &str) -> String {
        match self {
            Format::Iso => format!("{hostname}.iso"),
            Format::Usb => format!("{hostname}.usb.img"),
            Format::Efi => format!("{hostname}.efi.img"),
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iso" => Ok(Format::Iso),
            "usb" => Ok(Format::Usb),
            "efi" => Ok(Format::Efi),
            _ => Err(format!("{s:?} is not an image format; expected iso, usb or efi")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one node's image holds besides the firmware.
#[derive(Clone, Copy, Debug)]
pub struct ImageSpec<'a> {
    pub hostname: &'a str,
    /// ISO only: the script ISOLINUX hands `ipxe.lkrn` as its initrd.
    pub bios_script: &'a [u8],
    /// `autoexec.ipxe` at the root of the ESP.
    pub efi_script: &'a [u8],
    /// `bootforge.json`, stored at the ESP root (and the ISO root) so `inspect` can read it.
    pub info_json: &'a [u8],
    /// Which EFI loaders go in `EFI/BOOT` (`BOOTX64.EFI`, `BOOTAA64.EFI`).
    pub arches: &'a [Arch],
    /// `SOURCE_DATE_EPOCH`: every date in the image.
    pub epoch: u64,
}

/// The ISO 9660 volume label for a host: upper case, characters outside the d-characters
/// (`A-Z 0-9 _`) replaced by `_`, at most 32 characters. BMCs and `blkid` show it, so it names
/// the node rather than the tool.
pub fn volume_label(hostname: &str) -> String {
    label(hostname, 32, |c| c.is_ascii_alphanumeric() || c == '_')
}

/// The FAT volume label for a host: upper case, at most 11 characters, `-` kept (FAT allows it),
/// other characters outside `A-Z 0-9 _ -` replaced by `_`.
pub fn fat_label(hostname: &str) -> String {
    label(hostname, 11, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn label(hostname: &str, max: usize, keep: impl Fn(char) -> bool) -> String {
    let label: String = hostname
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| if keep(c) { c } else { '_' })
        .take(max)
        .collect();
    if label.is_empty() {
        "BOOTFORGE".chars().take(max).collect()
    } else {
        label
    }
}

/// `n` bytes derived from the hostname and a purpose, for identifiers that must be stable per
/// node (rebuilding gives the same image) yet differ between nodes (two sticks in one machine
/// never carry the same disk GUID).
pub(crate) fn derived_id<const N: usize>(hostname: &str, purpose: &str) -> [u8; N] {
    let digest = Sha256::new()
        .chain_update(b"bootforge\0")
        .chain_update(purpose.as_bytes())
        .chain_update(b"\0")
        .chain_update(hostname.as_bytes())
        .finalize();
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

/// A derived GUID, marked as an RFC 4122 random (version 4) GUID so tools treat it as ordinary.
pub(crate) fn derived_guid(hostname: &str, purpose: &str) -> hadris_fs::Guid {
    let mut bytes: [u8; 16] = derived_id(hostname, purpose);
    // GPT stores the first three fields little-endian: the version nibble is in byte 7.
    bytes[7] = (bytes[7] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    hadris_fs::Guid::from_bytes(bytes)
}

/// Writes the image of `format` for `spec` to `out` with the writers that define the layout,
/// and returns the number of bytes written. Only templates use this (see [`template`]): the
/// GPT's GUIDs it writes are replaced, and `spec`'s files must be padded for a template.
pub(crate) fn write_layout<W: Write + Seek>(
    format: Format,
    spec: &ImageSpec,
    fw: &Firmware,
    mut out: W,
) -> anyhow::Result<u64> {
    check_spec(spec)?;
    let esp = esp::build(spec, fw).context("building the EFI system partition")?;
    let written = match format {
        Format::Efi => {
            out.write_all(&esp)?;
            esp.len() as u64
        }
        Format::Usb => usb::write(spec.hostname, &esp, &mut out)?,
        Format::Iso => iso::write(spec, fw, esp, &mut out)?,
    };
    out.flush()?;
    Ok(written)
}

fn check_spec(spec: &ImageSpec) -> anyhow::Result<()> {
    if spec.hostname.is_empty() {
        bail!("an image needs a hostname");
    }
    if spec.arches.is_empty() {
        bail!(
            "{}: no EFI architecture selected; every image carries at least one EFI loader",
            spec.hostname
        );
    }
    Ok(())
}

/// The architectures of `spec`, each once, in a fixed order, so the ESP's layout does not
/// depend on how the caller listed them.
fn arches<'a>(spec: &ImageSpec<'a>) -> impl Iterator<Item = Arch> + 'a {
    let wanted = spec.arches;
    Arch::ALL.into_iter().filter(move |a| wanted.contains(a))
}

/// Writes `len` zero bytes; used for the gaps between structures so that no writer has to seek.
fn write_zeros<W: Write>(out: &mut W, mut len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n])?;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_hostname() {
        assert_eq!(volume_label("node-01"), "NODE_01");
        assert_eq!(fat_label("node-01"), "NODE-01");
        assert_eq!(fat_label("a-very-long-hostname"), "A-VERY-LONG");
        assert_eq!(volume_label(&"x".repeat(63)).len(), 32);
        assert_eq!(volume_label("db.example"), "DB_EXAMPLE");
        assert_eq!(volume_label(""), "BOOTFORGE");
    }

    #[test]
    fn formats_parse_and_name_files() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!(Format::Usb.file_name("n1"), "n1.usb.img");
        assert_eq!(Format::Efi.file_name("n1"), "n1.efi.img");
        assert_eq!(Format::Iso.file_name("n1"), "n1.iso");
        assert!("img".parse::<Format>().is_err());
    }

    #[test]
    fn derived_guids_differ_per_host_and_purpose() {
        let a = derived_guid("n1", "disk");
        assert_eq!(a, derived_guid("n1", "disk"));
        assert_ne!(a, derived_guid("n2", "disk"));
        assert_ne!(a, derived_guid("n1", "esp"));
    }
}
