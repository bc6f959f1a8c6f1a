//! `check`, `script`, `build` and `inspect`: the media builder's commands.

use crate::firmware::{Arch, EfiLoader, Firmware};
use crate::fleet::{self, BuildOptions};
use crate::inventory::{Inventory, ServerUrl};
use crate::media::{self, Format};
use crate::script::{self, Medium, ScriptSettings};
use crate::token::Secret;
use anyhow::Context;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

const CSV_HELP: &str = "\
The CSV needs a header row; columns may come in any order:
  hostname  required, unique, RFC 1123            node01
  ip        required, IPv4 with prefix            10.20.0.11/24 (or a netmask column)
  gateway   optional, inside the node's subnet    10.20.0.1
  dns       optional, IPv4                        10.20.0.2
  mac       optional, unique; picks the NIC       52:54:00:12:34:56
  vlan      optional, 1-4094; tags the NIC        120
  server    optional, overrides --server per row  http://10.20.0.5:8080
  profile   optional, install profile for `bootforge serve`
Any other column is kept as a template variable for the boot service.";

/// Validate an inventory without writing anything.
#[derive(Debug, Args)]
#[command(
    long_about = "Validate an inventory without writing anything. Every error is listed as \
FILE:LINE: column COLUMN: what is wrong and what is expected; the exit status is 1 if any.",
    after_help = CSV_HELP
)]
pub struct CheckArgs {
    /// The inventory CSV. Without it, the service database's inventory (--database).
    #[arg(value_name = "NODES.csv", required_unless_present_any = ["database", "state_dir"])]
    pub nodes: Option<PathBuf>,
    #[command(flatten)]
    pub from: super::inventory::DatabaseArgs,
}

/// Print one node's iPXE script, exactly as its media would carry it.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  bootforge script nodes.csv node01 --server http://10.20.0.5:8080"
)]
pub struct ScriptArgs {
    /// The inventory CSV.
    pub nodes: PathBuf,
    /// The node whose script to print.
    pub hostname: String,
    #[command(flatten)]
    pub common: ScriptOptions,
    /// How the medium is attached: cd, usb or esp (decides how BIOS reaches the local disk).
    #[arg(long, default_value = "cd", value_name = "MEDIUM")]
    pub medium: Medium,
}

/// Options that shape every node's script.
#[derive(Debug, Args)]
pub struct ScriptOptions {
    /// The boot service the media ask, e.g. http://10.20.0.5:8080 (a `server` column overrides it per row).
    #[arg(long, value_name = "URL")]
    pub server: Option<ServerUrl>,
    /// Key for node tokens: each script sends token=HMAC-SHA256(key=this file's bytes, hostname).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// Build boot media for every node of an inventory.
#[derive(Debug, Args)]
#[command(
    long_about = "Build boot media for every node of an inventory: DIR/HOSTNAME.iso (hybrid ISO: \
BIOS and UEFI, as CD or USB stick), DIR/HOSTNAME.usb.img (GPT disk, UEFI) and DIR/HOSTNAME.efi.img \
(bare EFI system partition), plus DIR/SHA256SUMS and DIR/manifest.json. The whole inventory is \
validated first, and files appear in DIR only when every node succeeded; a failed run leaves DIR \
as it was. Same inputs and SOURCE_DATE_EPOCH give byte-identical images.",
    after_help = "Examples:\n  bootforge build nodes.csv --server http://10.20.0.5:8080 --out media/\n  \
bootforge build nodes.csv --server http://10.20.0.5:8080 --out media/ --formats iso,usb,efi --arch x86_64,arm64\n  \
bootforge build nodes.csv --server http://10.20.0.5:8080 --out media/ --iso-medium usb   # ISO for USB sticks on BIOS\n  \
cd media && sha256sum -c SHA256SUMS\n  \
bootforge build --database postgres://bootforge@db/bootforge --server http://10.20.0.5:8080 --out media/   # the nodes the service's database holds\n\n\
A CSV named on the command line is the inventory; without one, --database (or BOOTFORGE_DATABASE, \
or --state-dir) names the database whose inventory (`bootforge inventory import`, the console) is built."
)]
pub struct BuildArgs {
    /// The inventory CSV. Without it, the nodes of the service database's inventory
    /// (--database URL, BOOTFORGE_DATABASE, or --state-dir DIR), read as the same CSV.
    #[arg(value_name = "NODES.csv", required_unless_present_any = ["database", "state_dir"])]
    pub nodes: Option<PathBuf>,
    #[command(flatten)]
    pub from: super::inventory::DatabaseArgs,
    #[command(flatten)]
    pub common: ScriptOptions,
    /// Output folder (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Which images to write, comma-separated: iso, usb, efi.
    #[arg(long, value_delimiter = ',', default_value = "iso", value_name = "FORMATS")]
    pub formats: Vec<Format>,
    /// Which UEFI architectures get a loader, comma-separated: x86_64, arm64.
    #[arg(long = "arch", value_delimiter = ',', default_value = "x86_64", value_name = "ARCHES")]
    pub arches: Vec<Arch>,
    /// Use iPXE loaders from this folder instead of the embedded Debian build
    /// (ipxe.lkrn, ipxe-amd64.efi, ipxe-arm64.efi, snponly.efi; each file present replaces the embedded one).
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// UEFI loader: ipxe (iPXE's own NIC drivers) or snponly (the firmware's network driver, for NICs iPXE does not know).
    #[arg(long, default_value = "ipxe", value_name = "LOADER")]
    pub efi_loader: EfiLoader,
    /// How the ISO will be attached on BIOS machines: cd (virtual media, CD drive) or usb (written to a
    /// stick, where the stick becomes drive 0x80 and the local disk 0x81). UEFI is unaffected.
    #[arg(long, default_value = "cd", value_name = "MEDIUM")]
    pub iso_medium: Medium,
    /// The nodes boot in UEFI mode. Needed for an ISO that asks an https:// server: the ISO's
    /// BIOS iPXE trusts only iPXE's own root CA, so its BIOS side then only says why it cannot
    /// ask the service and boots the local disk (see docs/TLS.md).
    #[arg(long)]
    pub uefi_only: bool,
    /// Nodes built in parallel (default: one per core).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
}

/// Show which node, script and firmware an image holds.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  bootforge inspect media/node01.iso")]
pub struct InspectArgs {
    /// An image written by `bootforge build` (.iso, .usb.img or .efi.img).
    pub image: PathBuf,
    /// Print the image's bootforge.json only, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn check(args: CheckArgs) -> anyhow::Result<bool> {
    match super::inventory::load_nodes(args.nodes.as_deref(), &args.from) {
        Ok(inventory) => {
            println!("{}", summary(&inventory));
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}

/// One line describing a valid inventory.
fn summary(inventory: &Inventory) -> String {
    let nodes = inventory.nodes();
    let with_mac = nodes.iter().filter(|n| n.mac.is_some()).count();
    let on_vlan = nodes.iter().filter(|n| n.vlan.is_some()).count();
    let with_profile = nodes.iter().filter(|n| n.profile.is_some()).count();
    format!(
        "{}: {} node{} valid ({with_mac} with MAC, {on_vlan} on a VLAN, {with_profile} with a profile)",
        inventory.source(),
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    )
}

pub fn script(args: ScriptArgs) -> anyhow::Result<()> {
    let inventory = Inventory::load(&args.nodes)?;
    let node = inventory
        .get(&args.hostname)
        .with_context(|| format!("{} has no node named {:?}", inventory.source(), args.hostname))?;
    let secret = load_secret(&args.common)?;
    let server = node.server.as_ref().or(args.common.server.as_ref()).with_context(|| {
        format!(
            "{}:{}: column server: empty and no --server was given",
            inventory.source(),
            node.line
        )
    })?;
    let settings = ScriptSettings {
        server,
        token: secret.map(|s| s.node_token(&node.hostname)),
        medium: args.medium,
    };
    print!("{}", script::node_script(node, &settings));
    Ok(())
}

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let inventory = super::inventory::load_nodes(args.nodes.as_deref(), &args.from)?;
    let firmware = match &args.firmware_dir {
        Some(dir) => Firmware::from_dir(dir, args.efi_loader)?,
        None => Firmware::embedded(args.efi_loader),
    };
    let mut formats = args.formats.clone();
    let mut seen = std::collections::HashSet::new();
    formats.retain(|f| seen.insert(*f));
    let mut arches = args.arches.clone();
    let mut seen = std::collections::HashSet::new();
    arches.retain(|a| seen.insert(*a));
    let options = BuildOptions {
        server: args.common.server.clone(),
        out: args.out.clone(),
        formats,
        arches,
        secret: load_secret(&args.common)?,
        firmware,
        jobs: args.jobs.unwrap_or(0),
        iso_medium: args.iso_medium,
        epoch: source_date_epoch()?,
        progress: std::io::stderr().is_terminal(),
        uefi_only: args.uefi_only,
    };
    let report = fleet::build(&inventory, &options)?;
    println!(
        "built {} image{} for {} node{} into {} ({:.1} MB in {:.2} s, {:.2} s of it flushing to disk)",
        report.files,
        if report.files == 1 { "" } else { "s" },
        report.nodes,
        if report.nodes == 1 { "" } else { "s" },
        args.out.display(),
        report.bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        report.flush.as_secs_f64()
    );
    Ok(())
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let found = media::inspect(&args.image)?;
    if args.json {
        println!("{}", found.info_json.trim_end());
        return Ok(());
    }
    let info: serde_json::Value = serde_json::from_str(&found.info_json)
        .with_context(|| format!("{}: bootforge.json is not valid JSON", args.image.display()))?;
    let field = |k: &str| match &info[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("image:     {} ({} format)", args.image.display(), found.format);
    println!("node:      {}", field("hostname"));
    println!("address:   {}  gateway {}  dns {}", field("ip"), field("gateway"), field("dns"));
    println!("nic:       mac {}  vlan {}", field("mac"), field("vlan"));
    println!("server:    {}", field("server"));
    println!("medium:    {}  (node token: {})", field("medium"), field("token"));
    println!(
        "built by:  bootforge {}  SOURCE_DATE_EPOCH {}",
        field("bootforge"),
        field("source_date_epoch")
    );
    println!("firmware:");
    if let Some(files) = info["firmware"].as_array() {
        for f in files {
            println!(
                "  {:<16} {}  sha256 {}",
                f["name"].as_str().unwrap_or("?"),
                f["origin"].as_str().unwrap_or("?"),
                f["sha256"].as_str().unwrap_or("?")
            );
        }
    }
    println!("files:");
    for (path, size) in &found.files {
        println!("  {path} ({size} bytes)");
    }
    // The ISO's BIOS and UEFI scripts are usually the same text: show each distinct one once.
    let mut shown: Vec<(Vec<&str>, &str)> = Vec::new();
    for (path, text) in &found.scripts {
        match shown.iter_mut().find(|(_, t)| *t == text.as_str()) {
            Some((paths, _)) => paths.push(path),
            None => shown.push((vec![path], text)),
        }
    }
    for (paths, text) in shown {
        println!("\n--- {} ---\n{}", paths.join(", "), text.trim_end());
    }
    Ok(())
}

fn load_secret(options: &ScriptOptions) -> anyhow::Result<Option<Secret>> {
    options.secret_file.as_deref().map(Secret::from_file).transpose()
}

/// `SOURCE_DATE_EPOCH` if set (reproducible builds), else the current time.
fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970")
        }),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}
