//! The read-only inputs, inventory, profiles and API tokens, held as one snapshot that is swapped
//! whole.
//!
//! The inventory comes from one of two homes ([`InventorySource`]): the CSV given with
//! `--inventory` (the file is the truth, watched like the other files), or, without it, the
//! database ([`crate::serve::store::inventory`]), which every replica shares: then each poll
//! asks for its version (one small query; on PostgreSQL while its listener is connected, no
//! query at all: the version comes by `NOTIFY`) and a new version is reloaded like a changed
//! file. An empty database inventory gives a service with no hosts (and a warning); a database
//! that does not answer keeps the snapshot it has (none at a start without the database: no
//! hosts until it answers).
//!
//! A database version is *settled* once it was loaded, or refused by the service's own checks
//! ([`check_inventory`]: `server` columns, profile templates): a settled version is not tried
//! again (a bad one would otherwise be re-read and re-refused every poll). A read that fails on
//! the database (a dropped connection, a timeout) settles nothing: it is tried again at a later
//! poll, with a backoff, so a replica never silently keeps an old inventory. A stored inventory
//! refused at start does not stop the service (every replica would then refuse to restart): it
//! starts with no hosts, and shows why in `/status` (`reload.last_error`) until a version that
//! passes arrives. `/status` also shows the version served and the one last seen in the
//! database (`reload.inventory_served_version`, `reload.inventory_database_version`).
//!
//! A watcher thread polls the files' metadata (size, mtime, inode: a `stat` per file, cheap)
//! every [`POLL`], and a SIGHUP or `POST /admin/reload` forces a reload. A reload of the
//! inventory and profiles that fails keeps serving the previous snapshot and logs why, so a
//! half-edited CSV never takes the service down. The tokens file is reloaded on its own and fails
//! closed: removing a token revokes it at the next reload whatever state the other inputs are
//! in, and a tokens file that cannot be loaded refuses every token until it is fixed.

use crate::inventory::{Inventory, MAX_REPORTED_ERRORS};
use crate::serve::auth::tokens::Tokens;
use crate::serve::inputs::profiles::Profiles;
use crate::serve::store::{Store, StoreError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the watcher looks at the files.
pub const POLL: Duration = Duration::from_millis(100);

/// One consistent version of the inputs.
#[derive(Debug)]
pub struct Snapshot {
    pub inventory: Inventory,
    pub profiles: Profiles,
    /// Counts successful loads, starting at 1.
    pub generation: u64,
    pub loaded_at: u64,
    /// How long loading and checking took.
    pub load_ms: f64,
}

/// Outcome of the last reload attempt, for `/healthz`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    pub failures: u64,
    /// Why the tokens file could not be loaded (every API token is refused meanwhile).
    pub tokens_error: Option<String>,
    /// The database inventory's version that the hosts served come from (`None`: the inventory
    /// is a file, or no database version has been loaded yet).
    pub inventory_served_version: Option<u64>,
    /// The database inventory's version as last seen at a poll (`None`: a file, or the
    /// database did not answer). Differs from the served one while a reload is pending, is
    /// being retried, or was refused.
    pub inventory_database_version: Option<u64>,
}

/// A database inventory that the service's checks refuse: the version is settled (not retried),
/// unlike a read that failed on the database.
#[derive(Debug)]
struct Refused {
    version: u64,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Refused {}

/// The first and the longest wait before a database read that failed is tried again.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// When a database read that failed is tried again.
#[derive(Debug)]
struct Retry {
    at: Option<Instant>,
    backoff: Duration,
}

/// (path, size, mtime seconds, mtime nanoseconds, inode) of one watched file.
type FileStamp = (PathBuf, u64, i64, i64, u64);

/// Where the inventory comes from.
#[derive(Clone)]
pub enum InventorySource {
    /// The CSV of `--inventory`.
    File(PathBuf),
    /// The database's inventory (`serve` without `--inventory`).
    Database(Arc<Store>),
}

impl std::fmt::Debug for InventorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InventorySource::File(p) => write!(f, "File({})", p.display()),
            InventorySource::Database(s) => write!(f, "Database({})", s.shown()),
        }
    }
}

impl InventorySource {
    /// How messages name the inventory: the file's path, or `database inventory`.
    pub fn name(&self) -> String {
        match self {
            InventorySource::File(p) => p.display().to_string(),
            InventorySource::Database(_) => DATABASE_SOURCE.to_string(),
        }
    }
}

/// How messages (and `/healthz`'s `inventory`) name the database's inventory.
pub const DATABASE_SOURCE: &str = "database inventory";

/// Where the inputs are, and what they must satisfy.
#[derive(Debug, Clone)]
pub struct Sources {
    pub inventory: InventorySource,
    pub profiles: PathBuf,
    /// `None`: the API is disabled (every API call answers 401).
    pub tokens: Option<PathBuf>,
    /// Whether every node needs its own `server` column (no `--public-url` and no listen address
    /// nodes could use).
    pub rows_need_server: bool,
}

pub struct Catalog {
    sources: Sources,
    current: RwLock<Arc<Snapshot>>,
    fingerprint: Mutex<Vec<FileStamp>>,
    /// The database inventory's last settled version: loaded, or refused by the service's
    /// checks (`None`: a file, or nothing settled yet). A hint that differs from it reloads.
    settled_version: Mutex<Option<u64>>,
    /// When a database read that failed is tried again (see the module doc).
    retry: Mutex<Retry>,
    /// The API tokens, reloaded on their own: a broken inventory edit must not keep a token
    /// that was removed from the tokens file alive, and a tokens file that cannot be loaded
    /// refuses every token ([`Tokens::unusable`]).
    tokens: RwLock<Arc<Tokens>>,
    tokens_stamp: Mutex<Vec<FileStamp>>,
    /// One reload at a time (the watcher, SIGHUP and `POST /admin/reload` may meet).
    reloading: Mutex<()>,
    pub status: Mutex<ReloadStatus>,
}

impl Catalog {
    /// Loads the inputs; any error here stops the start-up.
    pub fn load(sources: Sources) -> anyhow::Result<Catalog> {
        let fingerprint = fingerprint(&sources);
        let tokens_stamp = tokens_fingerprint(&sources);
        let tokens = load_tokens(&sources)?;
        let mut status = ReloadStatus::default();
        let (snap, version) = match load_snapshot(&sources, 1) {
            Ok(loaded) => loaded,
            // The database does not answer at start: no hosts until it does (the next poll that
            // reads a version loads it).
            Err(e) if database_error(&e) => {
                tracing::error!("the database does not answer, so the service starts with no hosts until it does: {e:#}");
                let profiles = Profiles::load(&sources.profiles)?;
                (empty_snapshot(&sources, profiles, 1), None)
            }
            // The stored inventory fails this service's checks: refusing to start would take
            // every replica down at its next restart, so start with no hosts and say why where
            // reload errors show; the next version that passes is loaded.
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                let version = e.downcast_ref::<Refused>().map(|r| r.version);
                tracing::error!("the database inventory is refused, so the service starts with no hosts until a version that passes is stored: {e:#}");
                let profiles = Profiles::load(&sources.profiles)?;
                status.last_attempt_at = Some(crate::serve::util::now_ms());
                status.last_error = Some(format!("{e:#}"));
                status.failures = 1;
                status.inventory_database_version = version;
                (empty_snapshot(&sources, profiles, 1), version)
            }
            Err(e) => return Err(e),
        };
        if status.last_error.is_none() {
            status.inventory_served_version = version;
            status.inventory_database_version = version;
        }
        if let InventorySource::Database(_) = &sources.inventory {
            if snap.inventory.is_empty() && version.is_some() {
                tracing::warn!("the database holds no inventory yet: this service knows no hosts. Fill it with `bootforge inventory import FILE --database URL`, or upload a CSV in the console (Inventory)");
            }
        }
        Ok(Catalog {
            sources,
            current: RwLock::new(Arc::new(snap)),
            fingerprint: Mutex::new(fingerprint),
            settled_version: Mutex::new(version),
            retry: Mutex::new(Retry { at: None, backoff: RETRY_MIN }),
            tokens: RwLock::new(Arc::new(tokens)),
            tokens_stamp: Mutex::new(tokens_stamp),
            reloading: Mutex::new(()),
            status: Mutex::new(status),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the tokens file if it changed (or with `force`), and records the outcome in the
    /// status: a failure stays shown until a later load succeeds.
    fn reload_tokens(&self, force: bool) {
        let now = tokens_fingerprint(&self.sources);
        let mut stamp = self.tokens_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *stamp == now {
            return;
        }
        *stamp = now;
        let (tokens, error) = match load_tokens(&self.sources) {
            Ok(t) => (t, None),
            Err(e) => {
                tracing::error!("the tokens file cannot be loaded, so every API token is refused until it can: {e:#}");
                (Tokens::unusable(), Some(format!("{e:#}")))
            }
        };
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if error.is_some() {
            status.last_attempt_at = Some(crate::serve::util::now_ms());
            status.failures += 1;
        }
        status.tokens_error = error;
    }

    /// Reloads if a file changed (or always, with `force`). Returns whether a new snapshot is in
    /// place.
    pub fn reload_if_changed(&self, force: bool) -> bool {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_tokens(force);
        let now = fingerprint(&self.sources);
        // The database inventory's version, when it is the inventory (`None`: it did not
        // answer, and the snapshot is kept until it does).
        let database = matches!(self.sources.inventory, InventorySource::Database(_));
        let version = match &self.sources.inventory {
            InventorySource::Database(store) => store.inventory_version_hint(),
            InventorySource::File(_) => None,
        };
        if database && version.is_some() {
            self.status.lock().unwrap_or_else(|p| p.into_inner()).inventory_database_version =
                version;
        }
        {
            let mut fp = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
            let settled = *self.settled_version.lock().unwrap_or_else(|p| p.into_inner());
            let moved = version.is_some() && version != settled;
            let waiting = self
                .retry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .at
                .is_some_and(|at| Instant::now() < at);
            if !force && *fp == now && (!moved || waiting) {
                return false;
            }
            *fp = now;
        }
        let generation = self.snapshot().generation + 1;
        let result = load_snapshot(&self.sources, generation);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = Some(crate::serve::util::now_ms());
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        let mut settled = self.settled_version.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            // Loaded: this version is served and settled.
            Ok((_, loaded)) => {
                *settled = *loaded;
                *retry = Retry { at: None, backoff: RETRY_MIN };
            }
            // Refused by the checks: settled, not tried again until another version comes.
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                *settled = e.downcast_ref::<Refused>().map(|r| r.version);
                *retry = Retry { at: None, backoff: RETRY_MIN };
            }
            // The database failed the read: nothing settled; tried again after a backoff.
            Err(e) if database && database_error(e) => {
                retry.at = Some(Instant::now() + retry.backoff);
                retry.backoff = (retry.backoff * 2).min(RETRY_MAX);
            }
            // Anything else (the profiles folder): tried again when a file changes, or when
            // the database's version moves on.
            Err(_) => {
                if version.is_some() {
                    *settled = version;
                }
            }
        }
        drop((retry, settled));
        match result {
            Ok((snap, version)) => {
                if database {
                    status.inventory_served_version = version;
                }
                tracing::info!(
                    generation,
                    nodes = snap.inventory.len(),
                    profiles = snap.profiles.len(),
                    ms = format!("{:.1}", snap.load_ms),
                    "reloaded inventory and profiles"
                );
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
                status.last_error = None;
                true
            }
            Err(e) => {
                tracing::error!(
                    "reload failed, still serving generation {}: {e:#}",
                    generation - 1
                );
                status.last_error = Some(format!("{e:#}"));
                status.failures += 1;
                false
            }
        }
    }

    /// Polls for changes until `stop`; `hup` is set by the SIGHUP handler. `tick` runs after
    /// each poll, told whether a reload succeeded (the service then sweeps flags of hosts that
    /// left the inventory, and rescans the state folder either way).
    pub fn watch(&self, stop: &AtomicBool, hup: &AtomicBool, tick: impl Fn(bool)) {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            let forced = hup.swap(false, Ordering::Relaxed);
            if forced {
                tracing::info!("SIGHUP: reloading inventory, profiles and tokens");
            }
            tick(self.reload_if_changed(forced));
        }
    }
}

impl Catalog {
    /// Checks an inventory the way a reload would, against the profiles loaded now: what the
    /// console runs before it writes an edited CSV, so an edit that a reload would refuse is
    /// never written.
    pub fn check(&self, inv: &Inventory) -> Result<(), String> {
        let snap = self.snapshot();
        check_inventory(&self.sources, inv, &snap.profiles).map_err(|e| format!("{e:#}"))
    }
}

/// Checks an inventory against the profiles in `sources.profiles` the way a reload of the
/// service would: what `bootforge inventory import` runs before it writes, so that an import
/// never stores what every replica would refuse.
pub fn check_offline(sources: &Sources, inv: &Inventory) -> anyhow::Result<()> {
    let profiles = Profiles::load(&sources.profiles)?;
    check_inventory(sources, inv, &profiles)
}

/// Loads the inputs; with the database's inventory, also the version it was read at. A
/// database inventory that fails the checks is a [`Refused`] error; a failed read a
/// [`StoreError`].
fn load_snapshot(sources: &Sources, generation: u64) -> anyhow::Result<(Snapshot, Option<u64>)> {
    let start = Instant::now();
    let (inv, version) = match &sources.inventory {
        InventorySource::File(path) => (Inventory::load(path)?, None),
        InventorySource::Database(store) => {
            let stored = store.inventory_blocking()?;
            let inv = if stored.is_empty() {
                Inventory::empty(DATABASE_SOURCE)
            } else {
                // Written only once valid, so this fails only if the validator grew stricter
                // since (the previous snapshot is then kept, as for a file).
                Inventory::check(DATABASE_SOURCE, stored.csv().as_bytes(), MAX_REPORTED_ERRORS)
                    .map_err(|report| Refused {
                        version: stored.version,
                        message: format!(
                            "the database inventory (version {}) is not valid: {}",
                            stored.version,
                            report
                                .errors
                                .iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    })?
            };
            (inv, Some(stored.version))
        }
    };
    let profiles = Profiles::load(&sources.profiles)?;
    if let Err(e) = check_inventory(sources, &inv, &profiles) {
        return Err(match version {
            Some(version) => Refused {
                version,
                message: format!("{e:#} (database inventory version {version})"),
            }
            .into(),
            None => e,
        });
    }
    let mut snap = empty_snapshot(sources, profiles, generation);
    snap.inventory = inv;
    snap.load_ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((snap, version))
}

fn empty_snapshot(sources: &Sources, profiles: Profiles, generation: u64) -> Snapshot {
    Snapshot {
        inventory: Inventory::empty(&sources.inventory.name()),
        profiles,
        generation,
        loaded_at: crate::serve::util::now_ms(),
        load_ms: 0.0,
    }
}

/// Whether a load failed on the database (it does not answer, or a query failed): such a
/// failure settles nothing and is tried again.
fn database_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StoreError>().is_some()
}

/// What a loaded inventory must satisfy besides its own rules: a base URL for every row, and
/// templates that render for every row of each profile.
fn check_inventory(sources: &Sources, inv: &Inventory, profiles: &Profiles) -> anyhow::Result<()> {
    let profiles_dir = &sources.profiles;
    if sources.rows_need_server {
        let missing: Vec<String> = inv
            .nodes()
            .iter()
            .filter(|n| n.server.is_none())
            .take(5)
            .map(|n| format!("{} (line {})", n.hostname, n.line))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{}: {} {} no `server` column, and the service has no URL of its own to write into their install chains: start it with --public-url http://ADDR:PORT (the --server the media were built with) or listen on a specific address",
            sources.inventory.name(),
            missing.join(", "),
            if missing.len() == 1 { "has" } else { "and others have" }
        );
    }
    let mut unknown: Vec<String> = Vec::new();
    for node in inv.nodes() {
        if let Some(p) = &node.profile {
            if profiles.get(p).is_none() && !unknown.contains(p) {
                unknown.push(p.clone());
            }
        }
    }
    if !unknown.is_empty() {
        // Not fatal: a reimage of such a node is refused with 400 naming the profile.
        tracing::warn!(
            "the inventory names profiles that {} does not have: {}",
            profiles_dir.display(),
            unknown.join(", ")
        );
    }
    profiles.check_inventory(inv).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn load_tokens(sources: &Sources) -> anyhow::Result<Tokens> {
    match &sources.tokens {
        Some(path) => Tokens::load(path),
        None => Ok(Tokens::disabled()),
    }
}

/// The tokens file's stamp (empty without one, or when it cannot be read).
fn tokens_fingerprint(sources: &Sources) -> Vec<FileStamp> {
    let mut out = Vec::new();
    if let Some(p) = &sources.tokens {
        if let Ok(m) = std::fs::metadata(p) {
            out.push((p.clone(), m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
        }
    }
    out
}

/// (path, size, mtime s, mtime ns, inode) of the inventory and every file and folder under the
/// profiles directory.
fn fingerprint(sources: &Sources) -> Vec<FileStamp> {
    let profiles_dir = &sources.profiles;
    let mut out = Vec::new();
    let mut add = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            out.push((p.to_path_buf(), m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
        }
    };
    if let InventorySource::File(inventory) = &sources.inventory {
        add(inventory);
    }
    let mut stack = vec![profiles_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        add(&dir);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    add(&p);
                }
            }
        }
    }
    out.sort();
    out
}
