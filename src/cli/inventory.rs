//! `bootforge inventory import|export`: the inventory in the service's database, in and out as
//! CSV; and where `check` and `build` read their nodes from (a CSV, or the database; `script`
//! reads only a CSV).
//!
//! An import runs the service's own checks (the `serve` reload's: a `server` column on every
//! row without `--public-url`, every row's profile templates render) against the profiles
//! named, before it writes: the database inventory is every replica's, and one that they refuse
//! would leave each replica that restarts with no hosts.

use crate::inventory::{Inventory, MAX_REPORTED_ERRORS};
use crate::serve::domain::actor::{Actor, Role, Via};
use crate::serve::domain::event::Event;
use crate::serve::inputs::catalog::{check_offline, InventorySource, Sources};
use crate::serve::store::inventory::{Replace, WriteError};
use crate::serve::store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};

const INVENTORY_HELP: &str = "\
Examples:
  # Move the inventory from a file into the database, then start `serve` without --inventory:
  # every replica serves (and the console edits) the database's inventory from then on.
  export BOOTFORGE_DATABASE=postgres://bootforge@db.example/bootforge
  bootforge inventory import nodes.csv --profiles /etc/bootforge/profiles \
      --public-url http://10.20.0.5:8080

  # Replace it later, only if nobody changed it since version 7 (printed by each import and
  # export, and shown in the console): a change made meanwhile is never overwritten.
  bootforge inventory import nodes.csv --profiles /etc/bootforge/profiles --expect-version 7

  # Write it out as CSV (for git, a review, or `bootforge check`):
  bootforge inventory export -o nodes.csv
  bootforge inventory export --state-dir /var/lib/bootforge > nodes.csv

  # Boot media from the database's nodes (the same images as from the CSV):
  bootforge build --database \"$BOOTFORGE_DATABASE\" --server http://10.20.0.5:8080 --out media/

The CSV is validated whole (the rules of `bootforge check`, errors by line and column, then the
checks `serve` runs at each reload, against the --profiles and --public-url given: the same
ones as the service's) before anything is written, and an import is one transaction: on any error nothing changes. Imports
are recorded in the audit log as `inventory-changed` by the local account that ran them.
What a database keeps is the nodes, their columns and their order: not comments, blank lines
or quoting, so an export is the same inventory, not the same bytes. On SQLite, stop `serve`
(or use the console's upload) to import: one process writes a SQLite database at a time.
Passwords in URLs are never printed; prefer BOOTFORGE_DATABASE over the command line.";

/// The inventory in the service's database: import a CSV into it, export it as CSV.
#[derive(clap::Args, Debug)]
#[command(after_help = INVENTORY_HELP)]
pub struct InventoryArgs {
    #[command(subcommand)]
    pub action: InventoryAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum InventoryAction {
    /// Replace the database's inventory with a CSV, validated whole, in one transaction.
    Import {
        /// The inventory CSV (the format `bootforge check` and `build` read).
        #[arg(value_name = "NODES.csv")]
        file: PathBuf,
        #[command(flatten)]
        database: DatabaseArgs,
        /// The profiles folder `serve` is started with (its --profiles). Required: the import
        /// runs the service's own checks (every row's profile templates render), so that it
        /// never stores an inventory that every replica would refuse.
        #[arg(long, value_name = "DIR")]
        profiles: PathBuf,
        /// The base URL `serve` is started with (its --public-url, or `http://ADDR:PORT` of a
        /// specific --listen address). Without it, every row needs its own `server` column, as
        /// `serve` without one requires.
        #[arg(long, value_name = "URL")]
        public_url: Option<crate::inventory::ServerUrl>,
        /// Replace only if the database's inventory is still at this version (from the last
        /// import or export, or the console). Needed once the database holds an inventory.
        #[arg(long, value_name = "N")]
        expect_version: Option<u64>,
    },
    /// Write the database's inventory as CSV, to stdout or to a file (written atomically).
    Export {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Write here instead of stdout: a temporary file beside it, synced, then renamed.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Which database: a URL, or the SQLite database of a state folder.
#[derive(clap::Args, Debug, Default)]
pub struct DatabaseArgs {
    /// The service's database: `sqlite:///PATH`, `postgres://…` or `mysql://…` (as `serve
    /// --database`).
    #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// The service's state folder: its SQLite database (state.db), when no --database is given.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The URL named, if any.
    pub fn url(&self) -> Option<String> {
        match (&self.database, &self.state_dir) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(dir)) => Some(Store::default_url(dir)),
            (None, None) => None,
        }
    }

    fn require(&self) -> anyhow::Result<String> {
        self.url().ok_or_else(|| {
            anyhow::anyhow!("name the database: --database URL (or BOOTFORGE_DATABASE), or --state-dir DIR for the SQLite database of a state folder")
        })
    }
}

pub fn inventory(args: InventoryArgs) -> anyhow::Result<()> {
    match args.action {
        InventoryAction::Import { file, database, profiles, public_url, expect_version } => {
            let url = database.require()?;
            let sources = Sources {
                inventory: InventorySource::File(file.clone()),
                profiles,
                tokens: None,
                rows_need_server: public_url.is_none(),
            };
            import(&file, &url, &sources, expect_version)
        }
        InventoryAction::Export { database, output } => {
            let store = Store::open_reader(&database.require()?)?;
            let stored = store.inventory_blocking()?;
            if stored.is_empty() {
                anyhow::bail!(
                    "the database {} holds no inventory yet (import one with `bootforge inventory import FILE`)",
                    store.shown()
                );
            }
            let text = stored.csv();
            match &output {
                Some(path) => crate::atomic::write_file(path, text.as_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
            }
            eprintln!(
                "exported {} nodes of {} at version {}{}",
                stored.rows.len(),
                store.shown(),
                stored.version,
                output.map(|p| format!(" to {}", p.display())).unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn import(file: &Path, url: &str, sources: &Sources, expect: Option<u64>) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let source = file.display().to_string();
    // Validated before the database is opened: a bad file changes nothing and needs no database.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => anyhow::bail!("{source} is not UTF-8 text; nothing was imported"),
    };
    let inv = match Inventory::check(&source, text.as_bytes(), MAX_REPORTED_ERRORS) {
        Ok(inv) => inv,
        Err(report) => anyhow::bail!("{}", WriteError::Invalid(report)),
    };
    // The service's own checks, as a reload of `serve` runs them.
    if let Err(e) = check_offline(sources, &inv) {
        anyhow::bail!(
            "{e:#}. (`inventory import` checks against the --profiles and --public-url given, as the service would against its own.) Nothing was imported"
        );
    }
    let store = Store::connect(url)?;
    let current = store.inventory_version_blocking()?;
    let expect = match expect {
        Some(v) => v,
        None if current == 0 => 0,
        None => anyhow::bail!(
            "the database {} already holds an inventory (version {current}): replacing it needs --expect-version {current}, after checking that it holds nothing you would lose (`bootforge inventory export`). Nothing was imported",
            store.shown()
        ),
    };
    let who = Actor { by: local_user(), role: Role::Admin, via: Via::Cli };
    let how = Replace {
        source: &source,
        by: &who.by,
        check: &|_| Ok(()), // `check_offline` above ran the service's checks
        record: &|inv, version| Event::InventoryChanged {
            who: who.clone(),
            peer: None,
            action: "import",
            host: None,
            old_host: None,
            hosts: Vec::new(),
            nodes: inv.len(),
            version: Some(version),
        },
    };
    let written = store.replace_inventory_blocking(&text, expect, &how).map_err(|e| match e {
        WriteError::Conflict { current } => anyhow::anyhow!(
            "the database's inventory is at version {current}, not {expect}: someone changed it since. Export it, merge, and import with --expect-version {current}. Nothing was imported"
        ),
        e => anyhow::anyhow!("{e}"),
    })?;
    println!(
        "imported {} nodes from {source} into {}: the inventory is at version {}",
        written.inventory.len(),
        store.shown(),
        written.version
    );
    Ok(())
}

/// The nodes of `check` and `build`: the CSV when one is named, else the database's
/// inventory, rendered to CSV and validated by the same code (one way: CSV → inventory →
/// script → media). Every error is listed, as `bootforge check` lists a file's.
pub fn load_nodes(nodes: Option<&Path>, database: &DatabaseArgs) -> anyhow::Result<Inventory> {
    if let Some(path) = nodes {
        return Ok(Inventory::load(path)?);
    }
    let url = database.url().ok_or_else(|| {
        anyhow::anyhow!("name the inventory: a CSV file, or --database URL (or BOOTFORGE_DATABASE, or --state-dir DIR) for the service database's inventory")
    })?;
    let store = Store::open_reader(&url)?;
    let stored = store.inventory_blocking()?;
    if stored.is_empty() {
        anyhow::bail!(
            "the database {} holds no inventory yet (import one with `bootforge inventory import FILE`)",
            store.shown()
        );
    }
    let source = format!("{} (version {})", store.shown(), stored.version);
    Ok(Inventory::parse(&source, stored.csv().as_bytes())?)
}

/// The name of the local account running this command, for the audit log: the password
/// database's entry of the real user id (not `$USER`, which anyone sets), printable and cut
/// to 64 characters; `uid N` without an entry.
fn local_user() -> String {
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `pwd` and `buf` outlive the call and the name's use below; getpwuid_r writes
    // only into them (the reentrant form: no static buffer shared with other threads).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    let name = if rc == 0 && !found.is_null() && !pwd.pw_name.is_null() {
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned()
    } else {
        String::new()
    };
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    if name.is_empty() {
        format!("uid {uid}")
    } else {
        name
    }
}
