//! `bootforge build`: media for a whole fleet, written all-or-nothing.
//!
//! Every node's images are built in memory by the worker that owns the node, hashed, and written
//! into a staging folder inside the output folder. Only when every node has succeeded are the
//! files renamed into place (images first, then `SHA256SUMS` and `manifest.json`), so a failed run
//! leaves an existing output folder exactly as it was. Memory stays flat as the fleet grows: a
//! worker holds one image at a time and the fleet's results are only small manifest entries.

use crate::firmware::{Arch, Firmware, FirmwareFile};
use crate::inventory::{Inventory, Node, ServerUrl};
use crate::media::{self, Format, ImageSpec};
use crate::script::{self, Medium, ScriptSettings};
use crate::token::Secret;
use anyhow::{bail, Context};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything `build` needs besides the inventory.
pub struct BuildOptions {
    /// Default boot service for rows without a `server` column value.
    pub server: Option<ServerUrl>,
    pub out: PathBuf,
    pub formats: Vec<Format>,
    pub arches: Vec<Arch>,
    pub secret: Option<Secret>,
    pub firmware: Firmware,
    /// Worker threads; 0 means one per core.
    pub jobs: usize,
    /// How the ISO will be attached, which decides the BIOS local-boot drive (see [`Medium`]).
    pub iso_medium: Medium,
    /// Seconds since 1970 for every date inside the images (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// The nodes boot in UEFI mode: an ISO may ask an `https://` service although its BIOS
    /// iPXE could not; its BIOS script then says so and boots the local disk.
    pub uefi_only: bool,
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub nodes: usize,
    pub files: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent flushing the images to stable storage (bound by the disk).
    pub flush: Duration,
}

/// The network identity of a node, as recorded in the manifest and inside each image.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub hostname: String,
    /// Address with prefix.
    pub ip: String,
    pub gateway: Option<String>,
    pub dns: Option<String>,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    /// The boot service the node's script asks.
    pub server: String,
}

impl NodeSummary {
    fn new(node: &Node, server: &ServerUrl) -> Self {
        NodeSummary {
            hostname: node.hostname.clone(),
            ip: node.cidr(),
            gateway: node.gateway.map(|g| g.to_string()),
            dns: node.dns.map(|d| d.to_string()),
            mac: node.mac.map(|m| m.to_string()),
            vlan: node.vlan,
            server: server.to_string(),
        }
    }
}

/// One node's entry in `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestNode<'a> {
    #[serde(flatten)]
    pub node: NodeSummary,
    pub files: Vec<ManifestFile>,
    /// File name → SHA-256 of each firmware file inside this node's images (shared by all).
    pub firmware: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestFile {
    pub format: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// How the medium's script believes it is attached (`cd`, `usb`, `esp`).
    pub medium: Medium,
    pub script_sha256: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    bootforge: &'static str,
    source_date_epoch: u64,
    formats: Vec<String>,
    arches: Vec<String>,
    firmware: &'a [FirmwareFile],
}

/// What is stored as `bootforge.json` inside each image, for `bootforge inspect`.
#[derive(Serialize)]
struct ImageInfo<'a> {
    bootforge: &'static str,
    #[serde(flatten)]
    node: &'a NodeSummary,
    format: String,
    medium: Medium,
    token: bool,
    script_sha256: String,
    source_date_epoch: u64,
    /// The payload files this image contains.
    firmware: &'a [FirmwareFile],
}

/// Refuses to build BIOS-capable media (the ISO) that would ask an `https://` service with the
/// embedded `ipxe.lkrn`: that build trusts only iPXE's own root CA (no firmware variable, no
/// `set trust` at run time), so such a node could never reach the service and would boot its
/// local disk every time. UEFI-only formats are fine (their iPXE trusts the firmware's
/// `TlsCaCertificate`), and so is an operator's `ipxe.lkrn` from `--firmware-dir`, presumably
/// built with `TRUST=` their CA. Every offending row is named, as the other inventory errors are.
fn check_bios_https(inventory: &Inventory, opts: &BuildOptions) -> anyhow::Result<()> {
    if !opts.formats.iter().any(|f| f.carries_bios())
        || opts.firmware.lkrn_is_operators()
        || opts.uefi_only
    {
        return Ok(());
    }
    let is_https = |s: &ServerUrl| s.as_str().starts_with("https://");
    let mut problems: Vec<String> = inventory
        .nodes()
        .iter()
        .filter_map(|n| n.server.as_ref().filter(|s| is_https(s)).map(|s| (n, s)))
        .map(|(n, s)| format!("{}:{}: column server: {s} is https", inventory.source(), n.line))
        .collect();
    let default_used = inventory.nodes().iter().any(|n| n.server.is_none());
    if let Some(server) = opts.server.as_ref().filter(|s| is_https(s) && default_used) {
        problems.insert(0, format!("--server {server} is https"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "{}\n\
         the ISO also boots BIOS machines, and its BIOS iPXE (ipxe.lkrn) trusts only iPXE's own \
         root CA, so a BIOS node could never reach an https:// service and would always boot its \
         local disk. Choose one:\n\
         \x20 * --uefi-only: the nodes boot in UEFI mode; the ISO is built, and its BIOS side \
         only prints why it cannot ask the service and boots the local disk\n\
         \x20 * UEFI-only formats: --formats usb,efi (UEFI iPXE trusts the CA in the firmware's \
         TlsCaCertificate; see docs/TLS.md)\n\
         \x20 * an http:// server for the BIOS nodes: their rows' server column, with \
         bootforge serve --listen beside --listen-tls\n\
         \x20 * your own iPXE with your CA built in: make bin/ipxe.lkrn TRUST=ca.pem, then \
         --firmware-dir DIR holding that ipxe.lkrn",
        problems.join("\n")
    );
}

/// Builds every node's media into `opts.out`. Nothing in `opts.out` changes unless all succeed.
pub fn build(inventory: &Inventory, opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let started = Instant::now();
    if opts.formats.is_empty() {
        bail!("no formats asked for; give --formats with one or more of iso, usb, efi");
    }
    for arch in &opts.arches {
        opts.firmware.efi(*arch)?;
    }
    let missing_server: Vec<String> = inventory
        .nodes()
        .iter()
        .filter(|n| n.server.is_none() && opts.server.is_none())
        .map(|n| {
            format!(
                "{}:{}: column server: empty and no --server was given",
                inventory.source(),
                n.line
            )
        })
        .collect();
    if !missing_server.is_empty() {
        bail!("{}\ngive --server URL, or a server for every row", missing_server.join("\n"));
    }
    check_bios_https(inventory, opts)?;

    // The output folder: create it if needed, and remember to remove it again on failure.
    let created_out = !opts.out.exists();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create output folder {}", opts.out.display()))?;
    let result = build_into(inventory, opts, started);
    if result.is_err() && created_out {
        let _ = std::fs::remove_dir_all(&opts.out);
    }
    result
}

fn build_into(
    inventory: &Inventory,
    opts: &BuildOptions,
    started: Instant,
) -> anyhow::Result<BuildReport> {
    let staging = tempfile::Builder::new()
        .prefix(".bootforge-staging-")
        .tempdir_in(&opts.out)
        .with_context(|| format!("cannot create a staging folder in {}", opts.out.display()))?;
    let image_firmware = opts
        .formats
        .iter()
        .map(|&f| Ok((f, opts.firmware.versions_for(f.carries_bios(), &opts.arches)?)))
        .collect::<anyhow::Result<HashMap<Format, Vec<FirmwareFile>>>>()?;
    // The fleet's firmware: every payload file some image of this build contains, each once.
    let mut firmware_files: Vec<FirmwareFile> = Vec::new();
    for format in &opts.formats {
        for file in &image_firmware[format] {
            if !firmware_files.iter().any(|f| f.name == file.name) {
                firmware_files.push(file.clone());
            }
        }
    }
    let firmware_map: BTreeMap<String, String> =
        firmware_files.iter().map(|f| (f.name.clone(), f.sha256.clone())).collect();

    // One template per shape (format, arches, room the node's files take), built once and shared.
    let templates = media::Templates::new(opts.firmware.clone(), 16);
    let bar = progress_bar(inventory.len() as u64, opts.progress);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs)
        .thread_name(|i| format!("build-{i}"))
        .build()
        .context("cannot start the worker threads")?;

    // Checksums and manifest are written as the nodes complete, a chunk at a time and in
    // inventory order, so nothing per node is kept once its chunk is written: memory stays flat
    // whatever the fleet's size.
    let mut sums = ManifestWriter::create(staging.path(), opts, &firmware_files)?;
    let chunk = pool.current_num_threads() * 16;
    let (mut files, mut bytes) = (0, 0);
    for nodes in inventory.nodes().chunks(chunk) {
        let built: Vec<ManifestNode> = pool.install(|| {
            nodes
                .par_iter()
                .map(|node| {
                    let entry = build_node(node, opts, &templates, staging.path(), &firmware_map)
                        .with_context(|| {
                            format!("{}:{}: node {}", inventory.source(), node.line, node.hostname)
                        });
                    bar.inc(1);
                    entry
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        for node in &built {
            sums.add(node)?;
            files += node.files.len();
            bytes += node.files.iter().map(|f| f.size).sum::<u64>();
        }
    }
    sums.finish()?;
    bar.finish_and_clear();

    // Make the staged bytes durable with one filesystem-wide flush, rather than one fsync per
    // image, before any of them replaces a file the operator may rely on.
    let flush_started = Instant::now();
    sync_filesystem(staging.path())?;
    let flush = flush_started.elapsed();
    let image_files = || {
        inventory.nodes().iter().flat_map(|n| opts.formats.iter().map(|f| f.file_name(&n.hostname)))
    };
    check_targets(&opts.out, image_files())?;
    for file in image_files() {
        publish(staging.path(), &opts.out, &file)?;
    }
    publish(staging.path(), &opts.out, "SHA256SUMS")?;
    publish(staging.path(), &opts.out, "manifest.json")?;
    crate::atomic::sync_dir(&opts.out)?;
    Ok(BuildReport { nodes: inventory.len(), files, bytes, elapsed: started.elapsed(), flush })
}

/// Writes `SHA256SUMS` and `manifest.json` into the staging folder one node at a time.
///
/// The manifest is one JSON document: the fleet-wide fields pretty-printed by serde_json, then a
/// `nodes` array with one node per line (compact, so a node is one `grep` away), closed by
/// [`ManifestWriter::finish`]. Assembling the array by hand is what lets it be streamed.
struct ManifestWriter {
    sums: std::io::BufWriter<std::fs::File>,
    manifest: std::io::BufWriter<std::fs::File>,
    first: bool,
}

impl ManifestWriter {
    fn create(
        staging: &Path,
        opts: &BuildOptions,
        firmware: &[FirmwareFile],
    ) -> anyhow::Result<Self> {
        let header = Manifest {
            bootforge: env!("CARGO_PKG_VERSION"),
            source_date_epoch: opts.epoch,
            formats: opts.formats.iter().map(ToString::to_string).collect(),
            arches: opts.arches.iter().map(ToString::to_string).collect(),
            firmware,
        };
        let text = serde_json::to_string_pretty(&header)?;
        let open = text.strip_suffix("\n}").or_else(|| text.strip_suffix('}')).unwrap_or(&text);
        let mut manifest =
            std::io::BufWriter::new(std::fs::File::create(staging.join("manifest.json"))?);
        write!(manifest, "{open},\n  \"nodes\": [")?;
        let sums = std::io::BufWriter::new(std::fs::File::create(staging.join("SHA256SUMS"))?);
        Ok(ManifestWriter { sums, manifest, first: true })
    }

    fn add(&mut self, node: &ManifestNode) -> anyhow::Result<()> {
        for f in &node.files {
            writeln!(self.sums, "{}  {}", f.sha256, f.file)?;
        }
        let sep = if self.first { "" } else { "," };
        self.first = false;
        write!(self.manifest, "{sep}\n    ")?;
        serde_json::to_writer(&mut self.manifest, node)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        writeln!(self.manifest, "\n  ]\n}}")?;
        self.manifest.flush()?;
        self.sums.flush()?;
        Ok(())
    }
}

/// One node's image of one format, made from the shape's template, and what the manifest says
/// of it. `build` and the service's `GET /media/` both come here, so a served image and a built
/// one are the same bytes by construction.
pub struct NodeMedium {
    pub image: media::NodeImage,
    pub medium: Medium,
    pub script_sha256: String,
}

/// What decides a node's image besides its row: `build`'s options, or a `/media/` URL's.
pub struct ImageOptions<'a> {
    pub format: Format,
    pub arches: &'a [Arch],
    /// How an ISO will be attached (USB and EFI images know theirs).
    pub iso_medium: Medium,
    pub epoch: u64,
}

/// `node`'s image for `opts`, asking `server`, with the node's token when there is a secret.
pub fn node_medium(
    templates: &media::Templates,
    node: &Node,
    server: &ServerUrl,
    secret: Option<&Secret>,
    opts: &ImageOptions,
) -> anyhow::Result<NodeMedium> {
    let format = opts.format;
    let medium = match format {
        Format::Iso => opts.iso_medium,
        Format::Usb => Medium::Usb,
        Format::Efi => Medium::Esp,
    };
    let token = secret.map(|s| s.node_token(&node.hostname));
    let summary = NodeSummary::new(node, server);
    let settings = ScriptSettings { server, token: token.clone(), medium };
    let node_script = script::node_script(node, &settings);
    let script_sha256 = hex::encode(Sha256::digest(node_script.as_bytes()));
    // The embedded BIOS iPXE cannot verify an https service (see `check_bios_https`, which let
    // this build through only with --uefi-only): its script says so instead of failing.
    let bios_script = if format.carries_bios()
        && server.as_str().starts_with("https://")
        && !templates.firmware().lkrn_is_operators()
    {
        script::bios_cannot_https_script(medium)
    } else {
        node_script.clone()
    };
    let firmware = templates.firmware().versions_for(format.carries_bios(), opts.arches)?;
    let info = ImageInfo {
        bootforge: env!("CARGO_PKG_VERSION"),
        node: &summary,
        format: format.to_string(),
        medium,
        token: token.is_some(),
        script_sha256: script_sha256.clone(),
        source_date_epoch: opts.epoch,
        firmware: &firmware,
    };
    let mut info_json = serde_json::to_vec_pretty(&info)?;
    info_json.push(b'\n');
    let spec = ImageSpec {
        hostname: &node.hostname,
        bios_script: bios_script.as_bytes(),
        efi_script: node_script.as_bytes(),
        info_json: &info_json,
        arches: opts.arches,
        epoch: opts.epoch,
    };
    let image = templates.image(format, &spec)?;
    Ok(NodeMedium { image, medium, script_sha256 })
}

/// Builds, hashes and stages one node's images.
fn build_node<'a>(
    node: &Node,
    opts: &BuildOptions,
    templates: &media::Templates,
    staging: &Path,
    firmware_map: &'a BTreeMap<String, String>,
) -> anyhow::Result<ManifestNode<'a>> {
    let server = node.server.as_ref().or(opts.server.as_ref()).expect("checked before the build");
    let summary = NodeSummary::new(node, server);
    let mut files = Vec::with_capacity(opts.formats.len());
    for &format in &opts.formats {
        let options = ImageOptions {
            format,
            arches: &opts.arches,
            iso_medium: opts.iso_medium,
            epoch: opts.epoch,
        };
        let built = node_medium(templates, node, server, opts.secret.as_ref(), &options)
            .with_context(|| format!("cannot build the {format} image"))?;
        let file = format.file_name(&node.hostname);
        let path = staging.join(&file);
        let out = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {file} in the staging folder"))?;
        // Straight to the file, hashed on the way: no copy of the image in memory.
        let mut writer = HashingWriter::new(std::io::BufWriter::with_capacity(256 << 10, out));
        built.image.write_to(&mut writer).with_context(|| format!("cannot write {file}"))?;
        let (size, sha256) = writer.finish().with_context(|| format!("cannot write {file}"))?;
        files.push(ManifestFile {
            format: format.to_string(),
            size,
            sha256,
            file,
            medium: built.medium,
            script_sha256: built.script_sha256,
        });
    }
    Ok(ManifestNode { node: summary, files, firmware: firmware_map })
}

/// Refuses, before anything moves, a target that a rename could not replace (a folder, say), so
/// publishing cannot stop half way for a reason known in advance.
fn check_targets(out: &Path, files: impl Iterator<Item = String>) -> anyhow::Result<()> {
    for file in files.chain(["SHA256SUMS".to_string(), "manifest.json".to_string()]) {
        let target = out.join(&file);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !meta.is_file() {
                bail!(
                    "{} exists and is not a regular file; move it away and build again (nothing was changed)",
                    target.display()
                );
            }
        }
    }
    Ok(())
}

/// Passes bytes through to a file while hashing them, so an image is hashed as it is written.
struct HashingWriter<W: std::io::Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// Flushes and returns the size and lower-case hex SHA-256 of everything written.
    fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn publish(staging: &Path, out: &Path, file: &str) -> anyhow::Result<()> {
    std::fs::rename(staging.join(file), out.join(file))
        .with_context(|| format!("cannot move {file} into {}", out.display()))
}

/// Flushes the filesystem holding `dir` (Linux `syncfs`): one call instead of an fsync per image.
fn sync_filesystem(dir: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot flush the staged files in {}", dir.display()));
    }
    Ok(())
}

fn progress_bar(len: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} building [{bar:40}] {pos}/{len} nodes, {per_sec}, ETA {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar
}
