//! The EFI system partition every format carries: a FAT12/16 file system holding
//! `EFI/BOOT/BOOT{X64,AA64}.EFI`, `autoexec.ipxe` and `bootforge.json`.
//!
//! It is sized to fit its files with 2 KiB clusters and nothing more: El Torito counts the boot
//! image in 512-byte sectors in 16 bits, so a UEFI CD boot image must stay under 32 MiB, and a
//! small image keeps the ISO and the write to a stick small.

use super::{arches, fat_label, ImageSpec, EFI_SCRIPT_FILE, INFO_FILE};
use crate::firmware::Firmware;
use anyhow::{anyhow, bail, Context};
use std::cell::Cell;
use std::io::{Cursor, Write};

const SECTOR: u64 = 512;
const CLUSTER: u64 = 2048;
/// fatfs's default, and what every FAT driver expects of a FAT12/16 root directory.
const ROOT_ENTRIES: u64 = 512;
/// El Torito's 16-bit sector count limit, in bytes.
pub(crate) const MAX_ESP: u64 = 0xFFFF * SECTOR;

thread_local! {
    /// The date fatfs stamps on entries. fatfs only takes a `&'static` time provider, so the
    /// per-image epoch reaches it through this thread-local, set for the duration of one build.
    static FAT_NOW: Cell<fatfs::DateTime> = const { Cell::new(FAT_MIN) };
}

const FAT_MIN: fatfs::DateTime = fatfs::DateTime {
    date: fatfs::Date { year: 1980, month: 1, day: 1 },
    time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 },
};

#[derive(Debug)]
struct EpochClock;

impl fatfs::TimeProvider for EpochClock {
    fn get_current_date(&self) -> fatfs::Date {
        FAT_NOW.with(|now| now.get().date)
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        FAT_NOW.with(|now| now.get())
    }
}

static EPOCH_CLOCK: EpochClock = EpochClock;

/// `epoch` as a FAT date. FAT counts from 1980 to 2107 in two-second steps; dates outside that
/// range are clamped, so `SOURCE_DATE_EPOCH=0` still builds.
fn fat_time(epoch: u64) -> anyhow::Result<fatfs::DateTime> {
    let seconds = i64::try_from(epoch).map_err(|_| anyhow!("epoch {epoch} is out of range"))?;
    let time = hadris_fs::DateTime::from_unix_seconds(seconds)
        .map_err(|e| anyhow!("epoch {epoch} is out of range: {e:?}"))?;
    let (date, clock) = time.to_civil_utc();
    if date.year() < 1980 {
        return Ok(FAT_MIN);
    }
    if date.year() > 2107 {
        return Ok(fatfs::DateTime {
            date: fatfs::Date { year: 2107, month: 12, day: 31 },
            time: fatfs::Time { hour: 23, min: 59, sec: 58, millis: 0 },
        });
    }
    Ok(fatfs::DateTime {
        date: fatfs::Date {
            year: date.year() as u16,
            month: date.month().into(),
            day: date.day().into(),
        },
        time: fatfs::Time {
            hour: clock.hour().into(),
            min: clock.minute().into(),
            sec: clock.second().into(),
            millis: 0,
        },
    })
}

/// The files of the ESP, in the order they are written.
fn files<'a>(spec: &ImageSpec<'a>, fw: &'a Firmware) -> anyhow::Result<Vec<(String, &'a [u8])>> {
    let mut files = Vec::with_capacity(4);
    for arch in arches(spec) {
        files.push((format!("EFI/BOOT/{}", arch.efi_boot_name()), fw.efi(arch)?));
    }
    files.push((EFI_SCRIPT_FILE.to_string(), spec.efi_script));
    files.push((INFO_FILE.to_string(), spec.info_json));
    Ok(files)
}

/// Sectors for a volume holding files of `sizes` in two directories, with `slack` spare
/// clusters. The FAT is sized as FAT16 (two bytes an entry), an upper bound for FAT12.
fn sectors_for(sizes: impl Iterator<Item = u64>, slack: u64) -> u64 {
    let dirs = 2; // EFI and EFI/BOOT, one cluster each
    let clusters = sizes.map(|s| s.div_ceil(CLUSTER)).sum::<u64>() + dirs + slack;
    let fat_sectors = ((clusters + 2) * 2).div_ceil(SECTOR);
    let root_sectors = ROOT_ENTRIES * 32 / SECTOR;
    let sectors = 1 + 2 * fat_sectors + root_sectors + clusters * (CLUSTER / SECTOR);
    // Whole 2 KiB blocks, so the ESP fills ISO sectors exactly.
    sectors.next_multiple_of(CLUSTER / SECTOR)
}

/// Builds the ESP image for `spec`.
pub(crate) fn build(spec: &ImageSpec, fw: &Firmware) -> anyhow::Result<Vec<u8>> {
    let files = files(spec, fw)?;
    let now = fat_time(spec.epoch)?;
    let previous = FAT_NOW.with(|cell| cell.replace(now));
    let result = (|| {
        // fatfs's geometry can leave a cluster or two fewer than the estimate; grow and retry
        // rather than pad every image.
        let mut last_err = None;
        for slack in [0, 4, 32] {
            let sectors = sectors_for(files.iter().map(|(_, b)| b.len() as u64), slack);
            if sectors * SECTOR > MAX_ESP {
                bail!(
                    "the EFI system partition would need {} KiB, more than the {} KiB El Torito \
                     can boot; the EFI loaders are too large",
                    sectors * SECTOR / 1024,
                    MAX_ESP / 1024
                );
            }
            match fill(spec.hostname, sectors, &files) {
                Ok(image) => return Ok(image),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    })();
    FAT_NOW.with(|cell| cell.set(previous));
    result
}

fn fill(hostname: &str, sectors: u64, files: &[(String, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; (sectors * SECTOR) as usize]);
    let mut label = [b' '; 11];
    let text = fat_label(hostname);
    label[..text.len()].copy_from_slice(text.as_bytes());
    let options = fatfs::FormatVolumeOptions::new()
        .bytes_per_cluster(CLUSTER as u32)
        .total_sectors(sectors as u32)
        .max_root_dir_entries(ROOT_ENTRIES as u16)
        .volume_id(u32::from_le_bytes(super::derived_id(hostname, "fat volume id")))
        .volume_label(label);
    fatfs::format_volume(&mut disk, options).context("formatting FAT")?;
    {
        let fs = fatfs::FileSystem::new(
            &mut disk,
            fatfs::FsOptions::new().time_provider(&EPOCH_CLOCK).update_accessed_date(false),
        )
        .context("mounting the new FAT volume")?;
        let root = fs.root_dir();
        for (path, bytes) in files {
            let (dir, name) = match path.rsplit_once('/') {
                Some((dir, name)) => {
                    let mut at = root.clone();
                    for part in dir.split('/') {
                        at = match at.open_dir(part) {
                            Ok(d) => d,
                            Err(_) => at.create_dir(part)?,
                        };
                    }
                    (at, name)
                }
                None => (root.clone(), path.as_str()),
            };
            let mut file = dir.create_file(name)?;
            file.truncate()?;
            file.write_all(bytes)
                .with_context(|| format!("writing {path} ({} bytes)", bytes.len()))?;
        }
        drop(root);
        fs.unmount().context("closing the FAT volume")?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{Arch, EfiLoader};

    fn spec(arches: &[Arch]) -> ImageSpec<'_> {
        ImageSpec {
            hostname: "node-01",
            bios_script: b"#!ipxe\n",
            efi_script: b"#!ipxe\necho efi\n",
            info_json: b"{}",
            arches,
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn fits_tightly_and_stays_fat12_or_16() {
        let fw = Firmware::embedded(EfiLoader::Ipxe);
        for arches in [&[Arch::X86_64][..], &[Arch::Arm64], &[Arch::X86_64, Arch::Arm64]] {
            let image = build(&spec(arches), &fw).unwrap();
            let payload: usize = arches.iter().map(|a| fw.efi(*a).unwrap().len()).sum();
            assert!(image.len() < payload + 64 * 1024, "{} for {payload}", image.len());
            assert_eq!(image.len() % 2048, 0);
            let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
            assert_ne!(fs.fat_type(), fatfs::FatType::Fat32);
        }
    }

    #[test]
    fn fat_dates_clamp() {
        assert_eq!(fat_time(0).unwrap(), FAT_MIN);
        let t = fat_time(1_700_000_000).unwrap(); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
    }
}
