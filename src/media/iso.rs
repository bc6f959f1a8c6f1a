//! The `iso` format: one file that boots BIOS and UEFI, from a CD drive or a USB stick.
//!
//! Layout (ISO 9660 + Joliet + Rock Ridge, level 2 names):
//!
//! ```text
//! /isolinux/isolinux.bin   El Torito BIOS entry, load size 4, boot info table
//! /isolinux/ldlinux.c32    loaded by isolinux.bin from its own folder
//! /isolinux/isolinux.cfg   KERNEL /ipxe.lkrn, APPEND initrd=/bios.ipxe
//! /isolinux/boot.cat       El Torito catalog
//! /ipxe.lkrn  /bios.ipxe  /bootforge.json
//! (no path)                the ESP, appended: El Torito UEFI entry and GPT/MBR ESP partition
//! ```
//!
//! ISOLINUX 6.04 reads its configuration only from fixed paths (`/boot/isolinux`, `/isolinux`,
//! the root …), never from the folder of whichever `isolinux.bin` ran, which is why the files
//! live in `/isolinux`. Every structure (catalog, boot info table, isohybrid MBR with the
//! isolinux.bin address, GPT with hybrid MBR) is written by hadris-iso.

use super::{ImageSpec, BIOS_SCRIPT_FILE, INFO_FILE};
use crate::firmware::Firmware;
use anyhow::anyhow;
use hadris_fs::{Content, Node, Tree};
use hadris_iso::{
    AppendedPartition, BootEntry, BootInfo, ElTorito, Hybrid, IsoId, IsoLevel, IsoOptions,
};
use std::io::Write;

pub(crate) const ISOLINUX_DIR: &str = "isolinux";

/// The ISOLINUX configuration: boot `ipxe.lkrn` at once, with the BIOS script as its initrd,
/// which iPXE runs as its script. Absolute paths, because ISOLINUX's working folder is that of
/// the configuration file.
/// The same for every node, so that it is part of the template (see [`super::template`]).
pub(crate) fn isolinux_cfg() -> String {
    format!(
        "# bootforge: BIOS boot through iPXE\n\
         DEFAULT bootforge\n\
         PROMPT 0\n\
         TIMEOUT 0\n\
         LABEL bootforge\n\
         \x20 KERNEL /ipxe.lkrn\n\
         \x20 APPEND initrd=/{BIOS_SCRIPT_FILE}\n"
    )
}

fn tree(spec: &ImageSpec, fw: &Firmware) -> Result<Tree, hadris_fs::PathError> {
    let mut tree = Tree::new();
    tree.insert(ISOLINUX_DIR, Node::dir())?;
    let file = |c: &Content| Node::file(c.clone());
    tree.insert("isolinux/isolinux.bin", file(fw.isolinux_content()))?;
    tree.insert("isolinux/ldlinux.c32", file(fw.ldlinux_content()))?;
    tree.insert("isolinux/isolinux.cfg", Node::file(Content::bytes(isolinux_cfg())))?;
    tree.insert("ipxe.lkrn", file(fw.lkrn_content()))?;
    tree.insert(BIOS_SCRIPT_FILE, Node::file(Content::bytes(spec.bios_script)))?;
    tree.insert(INFO_FILE, Node::file(Content::bytes(spec.info_json)))?;
    Ok(tree)
}

pub(crate) fn options(spec: &ImageSpec, fw: &Firmware, esp: Vec<u8>) -> anyhow::Result<IsoOptions> {
    let time = hadris_fs::DateTime::from_unix_seconds(
        i64::try_from(spec.epoch).map_err(|_| anyhow!("epoch {} is out of range", spec.epoch))?,
    )
    .map_err(|e| anyhow!("epoch {} is out of range: {e:?}", spec.epoch))?;
    let el_torito = ElTorito::new()
        // Load size 4 (one CD sector) is what BIOSes handle; isolinux.bin loads the rest itself,
        // checking it against the boot info table, which must therefore be written.
        .with_entry(
            BootEntry::bios("isolinux/isolinux.bin")
                .with_load_size(4)
                .with_boot_info(BootInfo::Table),
        )
        // No load size: hadris counts the whole ESP, which UEFI needs to find the FAT.
        .with_entry(BootEntry::uefi_appended(0))
        .with_catalog_path("isolinux/boot.cat");
    let hybrid = Hybrid::gpt_hybrid_mbr()
        .with_bootstrap(fw.isohdpfx_bin())
        .with_appended(AppendedPartition::esp(Content::bytes(esp)));
    Ok(IsoOptions::new()
        .with_id(IsoId::Volume, &super::volume_label(spec.hostname))
        .with_id(IsoId::Application, "BOOTFORGE")
        .with_level(IsoLevel::L2)
        .with_joliet()
        .with_rock_ridge()
        .with_time(time)
        // The GUIDs hadris draws from its seed are replaced per node (`template::Gpt`), so the
        // seed is fixed: the template then depends on nothing of the node's.
        .with_seed(u64::from_le_bytes(super::derived_id("", "iso guid seed")))
        .with_el_torito(el_torito)
        .with_hybrid(hybrid))
}

thread_local! {
    /// The image is assembled in memory; reusing the buffer per thread keeps a fleet build from
    /// allocating and zeroing a fresh multi-MiB vector per node.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn write<W: Write>(
    spec: &ImageSpec,
    fw: &Firmware,
    esp: Vec<u8>,
    out: &mut W,
) -> anyhow::Result<u64> {
    let tree = tree(spec, fw).map_err(|e| anyhow!("building the ISO tree: {e}"))?;
    let options = options(spec, fw, esp)?;
    SCRATCH.with(|scratch| {
        let mut buf = scratch.take();
        buf.clear();
        let result = hadris_iso::sync::write(&mut buf, &tree, &options)
            .map_err(|e| anyhow!("writing the ISO image: {e}"))
            .and_then(|report| {
                if let Some(w) = report.warnings().first() {
                    return Err(anyhow!("writing the ISO image: {w}"));
                }
                Ok(report.size())
            })
            .and_then(|size| {
                if buf.len() as u64 != size {
                    return Err(anyhow!(
                        "internal error: the ISO writer produced {} bytes, planned {size}",
                        buf.len()
                    ));
                }
                out.write_all(&buf)?;
                Ok(size)
            });
        // Keep the buffer for the next image unless it grew unusually large.
        if buf.capacity() <= 64 << 20 {
            scratch.replace(buf);
        }
        result
    })
}
