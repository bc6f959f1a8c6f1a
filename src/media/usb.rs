//! The `usb` format: a GPT disk (with its protective MBR) holding one EFI system partition.
//!
//! hadris-part lays out the tables in memory and hands back byte runs; this module only orders
//! them with the ESP and fills the gaps with zeros, so the image streams out front to back.

use anyhow::anyhow;
use hadris_part::{gpt::types, Disk, Gpt, GptEntry, PartitionName};
use hadris_storage::BlockSize;
use std::io::Write;

const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB, the alignment partitioning tools use, so the image performs well
/// when written to flash and matches what operators see from `sgdisk` on their own disks.
pub(crate) const ESP_START: u64 = 2048;
/// The GPT's backup copy: a 128-entry array (32 sectors) and the header.
const BACKUP_SECTORS: u64 = 33;

/// The partition table for an ESP of `esp_len` bytes, and the disk's size in sectors.
pub(crate) fn table(hostname: &str, esp_len: u64) -> anyhow::Result<(Disk, u64)> {
    let esp_sectors = esp_len.div_ceil(SECTOR);
    let total = ESP_START + esp_sectors + BACKUP_SECTORS;
    let block = BlockSize::new(512).expect("512 is a valid block size");
    let table_err = |e: hadris_part::TableError| anyhow!("laying out the GPT: {e:?}");
    let mut gpt =
        Gpt::new(super::derived_guid(hostname, "usb disk"), total, block).map_err(table_err)?;
    let entry = GptEntry::new(
        types::EFI_SYSTEM,
        super::derived_guid(hostname, "usb esp"),
        ESP_START,
        esp_sectors,
    )
    .with_name(PartitionName::new("EFI System Partition").map_err(table_err)?);
    gpt.add(entry).map_err(table_err)?;
    Ok((Disk::new(gpt), total))
}

/// Writes the disk image to `out`, front to back, and returns its size in bytes.
pub(crate) fn write<W: Write>(hostname: &str, esp: &[u8], out: &mut W) -> anyhow::Result<u64> {
    let (disk, total) = table(hostname, esp.len() as u64)?;
    let mut runs: Vec<(u64, &[u8])> = Vec::with_capacity(6);
    let table_runs: Vec<_> = disk.runs().collect();
    runs.extend(table_runs.iter().map(|r| (r.lba() * SECTOR, r.bytes())));
    runs.push((ESP_START * SECTOR, esp));
    runs.sort_by_key(|(at, _)| *at);
    let mut pos = 0;
    for (at, bytes) in runs {
        if at < pos {
            return Err(anyhow!("internal error: overlapping runs in the USB image at {at}"));
        }
        super::write_zeros(out, at - pos)?;
        out.write_all(bytes)?;
        pos = at + bytes.len() as u64;
    }
    let end = total * SECTOR;
    super::write_zeros(out, end - pos)?;
    Ok(end)
}
