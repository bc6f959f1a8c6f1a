//! Images from templates: one image per *shape*, and a few kilobytes of patches per node.
//!
//! The images of a fleet differ only in what names the node: its scripts, its `bootforge.json`,
//! the volume labels and FAT serial, and the GPT's GUIDs (with the CRCs over them). Everything
//! else (the firmware, the file system structures, the padding) is the same for every node of a
//! shape, provided the node's files always take the same room. So:
//!
//! * Node files are **padded** with `\n` to whole 2 KiB slots ([`pad`]), the ISO sector and the
//!   FAT cluster size. Scripts and JSON ignore blank lines; [`unpad`] gives the text back.
//! * A [`Template`] is a real image of a shape, written by the ordinary writers for a placeholder
//!   node whose files are unique marker bytes. Building it finds every node-specific place: the
//!   markers (searched for, each must occur exactly once), and the volume descriptors, FAT boot
//!   sector and GPT (parsed from their on-disk structures, as the specifications place them).
//! * A node's image is the template plus its [`NodeImage`] patches. Patches are sorted byte runs,
//!   so any byte range of any node is served straight from the template's memory.
//!
//! The reference writers ([`reference`]) stay the definition of an image: every template checks
//! itself at creation by patching a second, probe node and comparing it with that node's image
//! written in full. `bootforge build` and `bootforge serve` both go through templates, so the
//! bytes a node is served and the bytes a build writes are one code path.
//!
//! Longer than the ~500 lines we aim for, on purpose: the template image and the patches that
//! make it one node's are one layout; the offsets recorded and the bytes patched there must be
//! read together.

use super::{fat_label, volume_label, Format, ImageSpec};
use crate::firmware::{Arch, Firmware};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};

/// Node files are padded to whole multiples of this many bytes.
pub const SLOT: usize = 2048;
/// The placeholder node of every template. Its labels are searched for, so it is a name no
/// firmware file is likely to hold.
const TEMPLATE_HOST: &str = "zq-template-qz";
/// The node a fresh template is checked against.
const PROBE_HOST: &str = "probe-7x";

/// `content` followed by `\n` up to the next whole [`SLOT`] (at least one slot).
pub fn pad(content: &[u8]) -> Vec<u8> {
    let len = content.len().next_multiple_of(SLOT).max(SLOT);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(content);
    out.resize(len, b'\n');
    out
}

/// `content` followed by `\n` up to the whole [`SLOT`] that holds `room` bytes (at least
/// `content` itself).
fn pad_to(content: &[u8], room: usize) -> Vec<u8> {
    let len = room.max(content.len()).next_multiple_of(SLOT).max(SLOT);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(content);
    out.resize(len, b'\n');
    out
}

/// The text [`pad`] was given, when it ended in one `\n` (scripts and `bootforge.json` do):
/// trailing newlines beyond the first are padding.
pub fn unpad(text: &str) -> &str {
    let trimmed = text.trim_end_matches('\n');
    if trimmed.len() < text.len() {
        &text[..trimmed.len() + 1]
    } else {
        text
    }
}

/// What decides an image's layout: everything but the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub format: Format,
    /// EFI loaders, each once, in [`Arch::ALL`] order.
    pub arches: Vec<Arch>,
    pub epoch: u64,
    /// Padded lengths of the node's script and `bootforge.json`.
    pub script_len: usize,
    pub info_len: usize,
}

impl Shape {
    /// The shape of `spec`'s image in `format`; `spec`'s files must already be padded.
    fn of(format: Format, spec: &ImageSpec) -> anyhow::Result<Shape> {
        let padded = |b: &[u8]| !b.is_empty() && b.len().is_multiple_of(SLOT);
        if !padded(spec.efi_script) || !padded(spec.info_json) {
            bail!("internal error: node files must be padded before they go into a template");
        }
        if format == Format::Iso && spec.bios_script.len() != spec.efi_script.len() {
            bail!("internal error: the BIOS and EFI scripts must take the same room");
        }
        Ok(Shape {
            format,
            arches: Arch::ALL.into_iter().filter(|a| spec.arches.contains(a)).collect(),
            epoch: spec.epoch,
            script_len: spec.efi_script.len(),
            info_len: spec.info_json.len(),
        })
    }
}

/// Where a template's node-specific bytes are.
#[derive(Debug, Clone)]
struct Places {
    /// ISO only: `/bios.ipxe` and `/bootforge.json`.
    bios_script: Option<u64>,
    info_iso: Option<u64>,
    /// In the ESP: `autoexec.ipxe` and `bootforge.json`.
    efi_script: u64,
    info_esp: u64,
    /// ISO only: the volume identifiers of the primary and the Joliet descriptor.
    iso_ids: Option<(u64, u64)>,
    /// The ESP's first byte (its FAT boot sector) and its root directory's volume label entry.
    fat_boot: u64,
    fat_label_entry: u64,
    gpt: Option<Gpt>,
}

/// A GPT as found in a template: both headers and both entry arrays.
#[derive(Debug, Clone)]
struct Gpt {
    header: u64,
    backup_header: u64,
    entries: u64,
    backup_entries: u64,
    /// Bytes of the entry array (count × size).
    entries_len: usize,
    entry_size: usize,
    header_size: usize,
    /// Indexes of the entries in use.
    used: Vec<usize>,
    /// Which purpose names the disk's and the partitions' GUIDs derive from.
    purpose: &'static str,
}

/// One shape's image with a placeholder node.
pub struct Template {
    shape: Shape,
    image: Bytes,
    places: Places,
    /// SHA-256 of the template, for validators of the images made from it.
    digest: [u8; 32],
}

/// A node's image: a template and the node's patches, sorted and disjoint.
#[derive(Clone)]
pub struct NodeImage {
    template: Arc<Template>,
    patches: Vec<(u64, Bytes)>,
}

impl Template {
    /// Writes the template of `shape` and checks it against a probe node.
    pub fn build(shape: &Shape, fw: &Firmware) -> anyhow::Result<Template> {
        let markers = Contents::markers(shape, "template");
        let image = reference::write(shape.format, &markers.spec(TEMPLATE_HOST, shape), fw)?;
        let places = Places::find(shape, &image, &markers)?;
        let digest = Sha256::digest(&image).into();
        let template =
            Arc::new(Template { shape: shape.clone(), image: image.into(), places, digest });

        // The check: a probe node patched in must equal the probe node written in full.
        let probe = Contents::markers(shape, "probe");
        let spec = probe.spec(PROBE_HOST, shape);
        let expected = reference::write(shape.format, &spec, fw)?;
        let patched = template.node(&spec)?.to_vec();
        if let Some(at) = expected.iter().zip(&patched).position(|(a, b)| a != b) {
            bail!(
                "internal error: the {} template for {:?} differs from a full image at byte {at}",
                shape.format,
                shape.arches
            );
        }
        if expected.len() != patched.len() {
            bail!("internal error: the {} template has the wrong length", shape.format);
        }
        Ok(Arc::try_unwrap(template).unwrap_or_else(|_| unreachable!("no other owner")))
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn len(&self) -> u64 {
        self.image.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }

    /// `spec`'s image from this template. `spec`'s files must be padded to this shape.
    pub fn node(self: &Arc<Self>, spec: &ImageSpec) -> anyhow::Result<NodeImage> {
        let shape = Shape::of(self.shape.format, spec)?;
        if shape != self.shape {
            bail!("internal error: {} does not have this template's shape", spec.hostname);
        }
        let p = &self.places;
        let mut patches: Vec<(u64, Bytes)> = Vec::with_capacity(16);
        let mut put = |at: u64, bytes: Vec<u8>| patches.push((at, Bytes::from(bytes)));
        if let (Some(bios), Some(info)) = (p.bios_script, p.info_iso) {
            put(bios, spec.bios_script.to_vec());
            put(info, spec.info_json.to_vec());
        }
        put(p.efi_script, spec.efi_script.to_vec());
        put(p.info_esp, spec.info_json.to_vec());
        if let Some((primary, joliet)) = p.iso_ids {
            let (a, j) = iso_ids(spec.hostname);
            put(primary, a.to_vec());
            put(joliet, j.to_vec());
        }
        let (serial, label) = fat_ids(spec.hostname);
        put(p.fat_boot + FAT_SERIAL, serial.to_vec());
        put(p.fat_boot + FAT_LABEL, label.to_vec());
        put(p.fat_label_entry, label.to_vec());
        if let Some(gpt) = &p.gpt {
            for (at, bytes) in gpt.patches(&self.image, spec.hostname) {
                put(at, bytes);
            }
        }
        patches.sort_by_key(|(at, _)| *at);
        for pair in patches.windows(2) {
            if pair[0].0 + pair[0].1.len() as u64 > pair[1].0 {
                bail!("internal error: overlapping patches at byte {}", pair[1].0);
            }
        }
        Ok(NodeImage { template: self.clone(), patches })
    }
}

impl NodeImage {
    pub fn len(&self) -> u64 {
        self.template.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A strong validator: the same for the same bytes, different whenever a byte differs.
    pub fn etag(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.template.digest);
        for (at, bytes) in &self.patches {
            h.update(at.to_le_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        format!("\"{}\"", hex::encode(&h.finalize()[..16]))
    }

    /// The bytes `start..end` as a sequence of shared buffers: runs of the template and of the
    /// patches, none longer than `max`. Nothing is copied.
    pub fn chunks(&self, start: u64, end: u64, max: usize) -> Chunks {
        let end = end.min(self.len());
        let next = self.patches.partition_point(|(at, b)| at + b.len() as u64 <= start);
        Chunks { image: self.clone(), pos: start.min(end), end, next, max: max.max(1) }
    }

    /// Writes the whole image to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<u64> {
        for chunk in self.chunks(0, self.len(), 1 << 20) {
            out.write_all(&chunk)?;
        }
        Ok(self.len())
    }

    /// The whole image in one buffer (tests and the template check).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }
}

/// An iterator over a node image's bytes; see [`NodeImage::chunks`].
pub struct Chunks {
    image: NodeImage,
    pos: u64,
    end: u64,
    /// The first patch that ends after `pos`.
    next: usize,
    max: usize,
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let patches = &self.image.patches;
        let limit = (self.end - self.pos).min(self.max as u64);
        let chunk = match patches.get(self.next) {
            Some((at, bytes)) if *at <= self.pos => {
                let from = (self.pos - at) as usize;
                let n = (bytes.len() - from).min(limit as usize);
                if from + n == bytes.len() {
                    self.next += 1;
                }
                bytes.slice(from..from + n)
            }
            other => {
                let stop = other.map_or(self.end, |(at, _)| (*at).min(self.end));
                let n = (stop - self.pos).min(limit);
                let from = self.pos as usize;
                self.image.template.image.slice(from..from + n as usize)
            }
        };
        self.pos += chunk.len() as u64;
        Some(chunk)
    }
}

/// Templates built so far, shared by the threads of a build or the requests of the service.
/// At most `capacity` are kept (the least recently used goes); a fleet has one or two shapes.
pub struct Templates {
    fw: Firmware,
    capacity: usize,
    map: Mutex<TemplateMap>,
}

/// A template being built or built (or the reason it could not be), shared by its askers.
type Slot = Arc<std::sync::OnceLock<Result<Arc<Template>, String>>>;

#[derive(Default)]
struct TemplateMap {
    tick: u64,
    /// Shape → (last use, slot).
    entries: HashMap<Shape, (u64, Slot)>,
}

impl Templates {
    pub fn new(fw: Firmware, capacity: usize) -> Templates {
        Templates { fw, capacity: capacity.max(1), map: Mutex::new(TemplateMap::default()) }
    }

    pub fn firmware(&self) -> &Firmware {
        &self.fw
    }

    /// How many templates are held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `spec`'s image in `format`. `spec`'s files need not be padded: this pads them.
    pub fn image(&self, format: Format, spec: &ImageSpec) -> anyhow::Result<NodeImage> {
        super::check_spec(spec)?;
        // The ISO's two scripts share one shape, so both take the room of the longer one (they
        // differ only for an https service under --uefi-only: see `fleet::check_bios_https`).
        let room = spec.bios_script.len().max(spec.efi_script.len());
        let bios = pad_to(spec.bios_script, room);
        let efi = pad_to(spec.efi_script, room);
        let info = pad(spec.info_json);
        let padded = ImageSpec { bios_script: &bios, efi_script: &efi, info_json: &info, ..*spec };
        let shape = Shape::of(format, &padded)?;
        // One builder per shape: threads asking for a shape being built wait for it.
        let cell = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.tick += 1;
            let tick = map.tick;
            if !map.entries.contains_key(&shape) && map.entries.len() >= self.capacity {
                let oldest =
                    map.entries.iter().min_by_key(|(_, (t, _))| *t).map(|(s, _)| s.clone());
                if let Some(oldest) = oldest {
                    map.entries.remove(&oldest);
                }
            }
            let entry = map.entries.entry(shape.clone()).or_default();
            entry.0 = tick;
            entry.1.clone()
        };
        let template = cell
            .get_or_init(|| {
                Template::build(&shape, &self.fw).map(Arc::new).map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!(e))?;
        template.node(&padded)
    }
}

/// Node files for a template or a probe: unique marker bytes of the shape's lengths.
struct Contents {
    bios: Vec<u8>,
    efi: Vec<u8>,
    info: Vec<u8>,
}

impl Contents {
    fn markers(shape: &Shape, purpose: &str) -> Contents {
        let fill = |what: &str, len: usize| {
            let mut out = Vec::with_capacity(len + 32);
            let mut counter = 0u64;
            while out.len() < len {
                let block = Sha256::new()
                    .chain_update(b"bootforge template marker\0")
                    .chain_update(purpose.as_bytes())
                    .chain_update(what.as_bytes())
                    .chain_update(counter.to_le_bytes())
                    .finalize();
                out.extend_from_slice(&block);
                counter += 1;
            }
            out.truncate(len);
            out
        };
        Contents {
            bios: fill("bios", shape.script_len),
            efi: fill("efi", shape.script_len),
            info: fill("info", shape.info_len),
        }
    }

    fn spec<'a>(&'a self, hostname: &'a str, shape: &'a Shape) -> ImageSpec<'a> {
        ImageSpec {
            hostname,
            bios_script: &self.bios,
            efi_script: &self.efi,
            // The ISO root and the ESP hold the same `bootforge.json`; the template needs them
            // apart, so the ESP's copy is found inside the ESP (see `Places::find`).
            info_json: &self.info,
            arches: &shape.arches,
            epoch: shape.epoch,
        }
    }
}

// FAT12/16 boot sector fields (Microsoft's FAT specification): the volume serial number and
// label, and the BPB fields that locate the root directory.
const FAT_SERIAL: u64 = 39;
const FAT_LABEL: u64 = 43;

fn fat_ids(hostname: &str) -> ([u8; 4], [u8; 11]) {
    let mut label = [b' '; 11];
    let text = fat_label(hostname);
    label[..text.len()].copy_from_slice(text.as_bytes());
    (super::derived_id(hostname, "fat volume id"), label)
}

/// The primary descriptor's volume identifier (32 d-characters, space padded) and the Joliet
/// one (16 UCS-2 big-endian characters, space padded).
fn iso_ids(hostname: &str) -> ([u8; 32], [u8; 32]) {
    let label = volume_label(hostname);
    let mut primary = [b' '; 32];
    primary[..label.len()].copy_from_slice(label.as_bytes());
    let mut joliet = [0u8; 32];
    for (i, pair) in joliet.chunks_mut(2).enumerate() {
        let c = label.as_bytes().get(i).copied().unwrap_or(b' ');
        pair.copy_from_slice(&[0, c]);
    }
    (primary, joliet)
}

const ISO_SECTOR: u64 = 2048;

impl Places {
    fn find(shape: &Shape, image: &[u8], markers: &Contents) -> anyhow::Result<Places> {
        let once = |what: &str, needle: &[u8], within: std::ops::Range<usize>| {
            let hay = &image[within.clone()];
            let mut found = memchr::memmem::find_iter(hay, needle);
            match (found.next(), found.next()) {
                (Some(at), None) => Ok((within.start + at) as u64),
                (None, _) => Err(anyhow!("internal error: the template's {what} was not found")),
                _ => Err(anyhow!("internal error: the template's {what} is not unique")),
            }
        };
        // The ESP: the one FAT boot sector with the placeholder's serial and label.
        let (serial, label) = fat_ids(TEMPLATE_HOST);
        let mut sector = Vec::with_capacity(15);
        sector.extend_from_slice(&serial);
        sector.extend_from_slice(&label);
        let fat_boot = once("FAT boot sector", &sector, 0..image.len())? - FAT_SERIAL;
        let esp = fat_boot as usize..image.len();
        let bpb = |at: u64, n: usize| {
            let at = (fat_boot + at) as usize;
            image[at..at + n].iter().rev().fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        };
        let (sector_size, reserved, fats, fat_sectors) =
            (bpb(11, 2), bpb(14, 2), bpb(16, 1), bpb(22, 2));
        let root = fat_boot + sector_size * (reserved + fats * fat_sectors);
        let root_len = (bpb(17, 2) * 32) as usize;
        let fat_label_entry =
            once("FAT label entry", &label, root as usize..root as usize + root_len)?;

        let efi_script = once("ESP script", &markers.efi, esp.clone())?;
        let info_esp = once("ESP bootforge.json", &markers.info, esp.clone())?;
        let (mut bios_script, mut info_iso, mut iso_ids_at) = (None, None, None);
        if shape.format == Format::Iso {
            bios_script = Some(once("BIOS script", &markers.bios, 0..image.len())?);
            info_iso = Some(once("ISO bootforge.json", &markers.info, 0..fat_boot as usize)?);
            iso_ids_at = Some(find_iso_ids(image)?);
        }
        let gpt = match shape.format {
            Format::Efi => None,
            Format::Iso => Some(Gpt::find(image, "iso")?),
            Format::Usb => Some(Gpt::find(image, "usb")?),
        };
        Ok(Places {
            bios_script,
            info_iso,
            efi_script,
            info_esp,
            iso_ids: iso_ids_at,
            fat_boot,
            fat_label_entry,
            gpt,
        })
    }
}

/// The volume identifiers of the primary and Joliet descriptors (ECMA-119 §8.4, Joliet: a
/// supplementary descriptor with the escape sequence `%/@`, `%/C` or `%/E`), checked to hold
/// the placeholder's label as [`iso_ids`] encodes it.
fn find_iso_ids(image: &[u8]) -> anyhow::Result<(u64, u64)> {
    let (want_primary, want_joliet) = iso_ids(TEMPLATE_HOST);
    let (mut primary, mut joliet) = (None, None);
    for n in 16..64u64 {
        let at = (n * ISO_SECTOR) as usize;
        let Some(d) = image.get(at..at + ISO_SECTOR as usize) else { break };
        if &d[1..6] != b"CD001" {
            break;
        }
        match d[0] {
            1 => primary = Some(at as u64 + 40),
            2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = Some(at as u64 + 40),
            255 => break,
            _ => {}
        }
    }
    let (Some(p), Some(j)) = (primary, joliet) else {
        bail!("internal error: the template has no primary or no Joliet volume descriptor");
    };
    let at = |o: u64| &image[o as usize..o as usize + 32];
    if at(p) != want_primary || at(j) != want_joliet {
        bail!("internal error: the template's volume identifiers are not encoded as expected");
    }
    Ok((p, j))
}

const GPT_SECTOR: u64 = 512;

impl Gpt {
    /// The GPT at LBA 1 (UEFI specification §5.3) and its backup.
    fn find(image: &[u8], purpose: &'static str) -> anyhow::Result<Gpt> {
        let header = GPT_SECTOR;
        let field = |base: u64, at: u64, n: usize| -> anyhow::Result<u64> {
            let at = (base + at) as usize;
            let bytes = image.get(at..at + n).context("internal error: GPT out of bounds")?;
            Ok(bytes.iter().rev().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
        };
        if image.get(512..520) != Some(b"EFI PART") {
            bail!("internal error: the template has no GPT");
        }
        let header_size = field(header, 12, 4)? as usize;
        let backup_header = field(header, 32, 8)? * GPT_SECTOR;
        let entries = field(header, 72, 8)? * GPT_SECTOR;
        let count = field(header, 80, 4)? as usize;
        let entry_size = field(header, 84, 4)? as usize;
        let backup_entries = field(backup_header, 72, 8)? * GPT_SECTOR;
        if !(92..=512).contains(&header_size) || entry_size < 128 || count > 1024 {
            bail!("internal error: the template's GPT header is not one bootforge writes");
        }
        let entries_len = count * entry_size;
        if image.get(backup_header as usize..backup_header as usize + 8) != Some(b"EFI PART")
            || image.len() < (backup_entries as usize + entries_len)
        {
            bail!("internal error: the template's backup GPT is missing");
        }
        let used = (0..count)
            .filter(|i| {
                let at = entries as usize + i * entry_size;
                image[at..at + 16].iter().any(|b| *b != 0)
            })
            .collect();
        Ok(Gpt {
            header,
            backup_header,
            entries,
            backup_entries,
            entries_len,
            entry_size,
            header_size,
            used,
            purpose,
        })
    }

    /// The bytes that change for `hostname`: the disk GUID, each used partition's GUID and the
    /// CRCs over them, in both copies. The entry array is the same in both, so one CRC serves.
    fn patches(&self, image: &[u8], hostname: &str) -> Vec<(u64, Vec<u8>)> {
        let guid = |what: String| super::derived_guid(hostname, &what).to_bytes();
        // The USB image's purposes predate templates; keeping them keeps its GUIDs.
        let part_purpose = |i: usize| match (self.purpose, i) {
            ("usb", 0) => "usb esp".to_string(),
            (p, i) => format!("{p} partition {i}"),
        };
        let mut array =
            image[self.entries as usize..self.entries as usize + self.entries_len].to_vec();
        let mut out = Vec::new();
        for &i in &self.used {
            let g = guid(part_purpose(i));
            array[i * self.entry_size + 16..i * self.entry_size + 32].copy_from_slice(&g);
            for base in [self.entries, self.backup_entries] {
                out.push((base + (i * self.entry_size) as u64 + 16, g.to_vec()));
            }
        }
        let array_crc = crc32fast::hash(&array);
        for base in [self.header, self.backup_header] {
            let mut h = image[base as usize..base as usize + self.header_size].to_vec();
            h[56..72].copy_from_slice(&guid(format!("{} disk", self.purpose)));
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            h[16..20].fill(0);
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            out.push((base, h));
        }
        out
    }
}

/// The writers that define an image, used whole only for templates and their checks.
pub mod reference {
    use super::*;

    /// `spec`'s image in `format`, written in full into memory; `spec`'s files are taken as
    /// they are (padded or not). The GPT's GUIDs are set as templates set them.
    pub fn write(format: Format, spec: &ImageSpec, fw: &Firmware) -> anyhow::Result<Vec<u8>> {
        let mut out = Cursor::new(Vec::new());
        super::super::write_layout(format, spec, fw, &mut out)?;
        let mut image = out.into_inner();
        let purpose = match format {
            Format::Iso => "iso",
            Format::Usb => "usb",
            Format::Efi => return Ok(image),
        };
        let gpt = Gpt::find(&image, purpose)?;
        for (at, bytes) in gpt.patches(&image, spec.hostname) {
            image[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(image)
    }
}

/// Writes the image of `format` for `spec` to `out` and returns its size: the bytes `build`
/// writes for such a node. For one image; a fleet shares [`Templates`] instead.
pub fn write_image<W: Write>(
    format: Format,
    spec: &ImageSpec,
    fw: &Firmware,
    mut out: W,
) -> anyhow::Result<u64> {
    let image = Templates::new(fw.clone(), 1).image(format, spec)?;
    image.write_to(&mut out)?;
    out.flush()?;
    Ok(image.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::EfiLoader;

    fn spec<'a>(
        host: &'a str,
        script: &'a [u8],
        info: &'a [u8],
        arches: &'a [Arch],
    ) -> ImageSpec<'a> {
        ImageSpec {
            hostname: host,
            bios_script: script,
            efi_script: script,
            info_json: info,
            arches,
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn padding_round_trips() {
        assert_eq!(pad(b"#!ipxe\n").len(), SLOT);
        assert_eq!(pad(&[b'x'; SLOT]).len(), SLOT);
        assert_eq!(pad(&[b'x'; SLOT + 1]).len(), 2 * SLOT);
        let padded = String::from_utf8(pad(b"#!ipxe\necho hi\n")).unwrap();
        assert_eq!(unpad(&padded), "#!ipxe\necho hi\n");
        assert_eq!(unpad("{}"), "{}");
    }

    /// Every format and arch set: template + patches equal the full image, for many nodes,
    /// including names of every length and scripts that need two slots.
    #[test]
    fn templated_images_equal_full_images() {
        let fw = Firmware::embedded(EfiLoader::Ipxe);
        let templates = Templates::new(fw.clone(), 8);
        let long = format!("#!ipxe\n{}\n", "echo long\n".repeat(300));
        let hosts = ["a", "node-01", "db.example.org", &"x".repeat(63), "n-2"];
        for format in Format::ALL {
            for arches in [&[Arch::X86_64][..], &[Arch::X86_64, Arch::Arm64]] {
                for (i, host) in hosts.iter().enumerate() {
                    let script =
                        if i == 1 { long.clone() } else { format!("#!ipxe\necho {host}\n") };
                    let info = format!("{{\"hostname\": \"{host}\"}}\n");
                    let s = spec(host, script.as_bytes(), info.as_bytes(), arches);
                    let got = templates.image(format, &s).unwrap();
                    let (b, e, j) = (pad(s.bios_script), pad(s.efi_script), pad(s.info_json));
                    let full = ImageSpec { bios_script: &b, efi_script: &e, info_json: &j, ..s };
                    let want = reference::write(format, &full, &fw).unwrap();
                    assert!(got.to_vec() == want, "{format} {arches:?} {host}");
                    // Ranges cut anywhere give the same bytes.
                    let len = got.len();
                    for (a, z) in [(0, 1), (511, 1100), (len - 3000, len), (33_000, 40_000)] {
                        let part: Vec<u8> =
                            got.chunks(a, z, 777).flat_map(|c| c.to_vec()).collect();
                        assert!(part == want[a as usize..z as usize], "{format} {a}-{z}");
                    }
                }
            }
        }
        // Two shapes of script length per format and arch set.
        assert_eq!(templates.len(), 8);
    }

    #[test]
    fn nodes_get_their_own_identifiers() {
        let fw = Firmware::embedded(EfiLoader::Ipxe);
        let templates = Templates::new(fw, 2);
        let img = |h: &str| {
            templates.image(Format::Iso, &spec(h, b"#!ipxe\n", b"{}\n", &[Arch::X86_64])).unwrap()
        };
        let (a, b) = (img("node-01"), img("node-02"));
        assert_ne!(a.etag(), b.etag());
        assert_eq!(a.etag(), img("node-01").etag());
        let (a, b) = (a.to_vec(), b.to_vec());
        // Different disk GUIDs, valid CRCs: read back by the GPT reader.
        assert_ne!(a[568..584], b[568..584]);
        assert!(crate::media::inspect_bytes(&a).is_ok());
    }
}
