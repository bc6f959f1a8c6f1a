//! Reading an image back: which format it is, its `bootforge.json`, its iPXE scripts and its
//! files. Used by `bootforge inspect` and by the tests, so it reads the images the way firmware
//! does (partition table → ESP, ISO 9660 tree) instead of trusting the writer's layout.

use super::{Format, BIOS_SCRIPT_FILE, EFI_SCRIPT_FILE, INFO_FILE};
use anyhow::{anyhow, bail, Context};
use hadris_fs::sync::Volume;
use hadris_fs::{MountOptions, OpenOptions};
use hadris_part::PartitionKind;
use hadris_storage::{BlockSize, MemDevice};
use std::io::{Cursor, Read};
use std::path::Path;

/// Images bootforge writes are a few MiB; anything far larger is not one of them.
const MAX_IMAGE: u64 = 1 << 30;

const SECTOR: BlockSize = match BlockSize::new(512) {
    Some(size) => size,
    None => panic!("512 is a block size"),
};

/// What an image holds.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub format: Format,
    /// `bootforge.json` as stored.
    pub info_json: String,
    /// Each iPXE script: path inside the image, content. Paths inside the ESP of an ISO are
    /// written `esp:/…`; in `usb` and `efi` images the ESP is the only file system, so `/…`.
    pub scripts: Vec<(String, String)>,
    /// Every file with its size, same path convention, sorted by path.
    pub files: Vec<(String, u64)>,
}

/// Reads any image [`super::write_image`] wrote.
pub fn inspect(path: &Path) -> anyhow::Result<Inspection> {
    let len =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MAX_IMAGE {
        bail!("{}: {len} bytes is far larger than any bootforge image", path.display());
    }
    let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    inspect_bytes(&image).with_context(|| format!("{}", path.display()))
}

/// [`inspect`] on an image in memory.
pub fn inspect_bytes(image: &[u8]) -> anyhow::Result<Inspection> {
    match detect(image)? {
        Format::Iso => inspect_iso(image),
        Format::Usb => {
            let esp = find_esp(image)?;
            let mut found = read_esp(esp, "/")?;
            found.format = Format::Usb;
            Ok(found)
        }
        Format::Efi => read_esp(image, "/"),
    }
}

fn detect(image: &[u8]) -> anyhow::Result<Format> {
    if image.get(0x8001..0x8006) == Some(b"CD001") {
        Ok(Format::Iso)
    } else if image.get(512..520) == Some(b"EFI PART") {
        Ok(Format::Usb)
    } else if image.get(510..512) == Some(&[0x55, 0xAA])
        && (image.get(0x36..0x39) == Some(b"FAT") || image.get(0x52..0x57) == Some(b"FAT32"))
    {
        Ok(Format::Efi)
    } else {
        bail!("not an image bootforge writes (no ISO 9660 volume, GPT or FAT file system)")
    }
}

/// The bytes of the first GPT partition of type EFI System.
fn find_esp(image: &[u8]) -> anyhow::Result<&[u8]> {
    let mut device = MemDevice::new(image, SECTOR);
    let disk =
        hadris_part::sync::read(&mut device).map_err(|e| anyhow!("reading the GPT: {e:?}"))?;
    let esp = disk
        .partitions()
        .find(|p| p.kind() == PartitionKind::Gpt(hadris_part::gpt::types::EFI_SYSTEM))
        .ok_or_else(|| anyhow!("the partition table has no EFI system partition"))?;
    let start = esp.start() * u64::from(esp.block_size().get());
    image
        .get(start as usize..(start + esp.size_bytes()) as usize)
        .ok_or_else(|| anyhow!("the EFI system partition runs past the end of the image"))
}

fn read_esp(esp: &[u8], prefix: &str) -> anyhow::Result<Inspection> {
    let fs = fatfs::FileSystem::new(Cursor::new(esp.to_vec()), fatfs::FsOptions::new())
        .context("the EFI system partition is not a FAT file system")?;
    let mut files = Vec::new();
    let mut info_json = None;
    let mut scripts = Vec::new();
    let mut pending = vec![(String::new(), fs.root_dir())];
    while let Some((dir_path, dir)) = pending.pop() {
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{dir_path}/{name}");
            if entry.is_dir() {
                pending.push((path, entry.to_dir()));
                continue;
            }
            files.push((format!("{prefix}{}", &path[1..]), entry.len()));
            let at_root = dir_path.is_empty();
            if at_root && name.eq_ignore_ascii_case(INFO_FILE) {
                info_json = Some(read_text(entry.to_file(), &path)?);
            } else if at_root && name.eq_ignore_ascii_case(EFI_SCRIPT_FILE) {
                scripts
                    .push((format!("{prefix}{}", &path[1..]), read_text(entry.to_file(), &path)?));
            }
        }
    }
    files.sort();
    Ok(Inspection {
        format: Format::Efi,
        info_json: info_json
            .ok_or_else(|| anyhow!("the EFI system partition has no {INFO_FILE}"))?,
        scripts,
        files,
    })
}

/// A node file's text, without the newlines that pad it to its slot (see [`super::template`]).
fn read_text(mut reader: impl Read, path: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .with_context(|| format!("{path} is not readable UTF-8 text"))?;
    let len = super::template::unpad(&text).len();
    text.truncate(len);
    Ok(text)
}

fn inspect_iso(image: &[u8]) -> anyhow::Result<Inspection> {
    let iso = hadris_iso::sync::IsoFs::mount(MemDevice::new(image, SECTOR), MountOptions::new())
        .map_err(|e| anyhow!("reading the ISO 9660 volume: {e:?}"))?;
    let vol = Volume::new(iso);
    let fs_err = |what: &str, e: &dyn std::fmt::Debug| anyhow!("{what}: {e:?}");
    let mut files = Vec::new();
    let walk = vol.walk("/").map_err(|e| fs_err("listing the ISO", &e))?;
    for entry in walk {
        let entry = entry.map_err(|e| fs_err("listing the ISO", &e))?;
        if entry.entry().file_type().is_dir() {
            continue;
        }
        let path = String::from_utf8_lossy(entry.path()).into_owned();
        let meta = vol.metadata(entry.path()).map_err(|e| fs_err(&path, &e))?;
        files.push((path, meta.len()));
    }
    let read = |path: &str| -> anyhow::Result<String> {
        let file = vol
            .open(path, OpenOptions::new().read())
            .map_err(|e| fs_err(&format!("opening {path} in the ISO"), &e))?;
        read_text(file, path)
    };
    let info_json = read(&format!("/{INFO_FILE}"))?;
    let bios_path = format!("/{BIOS_SCRIPT_FILE}");
    let mut scripts = vec![(bios_path.clone(), read(&bios_path)?)];
    let esp = read_esp(find_esp(image)?, "esp:/").context("the ISO's EFI system partition")?;
    scripts.extend(esp.scripts);
    files.extend(esp.files);
    files.sort();
    Ok(Inspection { format: Format::Iso, info_json, scripts, files })
}
