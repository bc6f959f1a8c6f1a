//! Moving state in: the one-time import of an old state folder (per-host JSON files under
//! `hosts/` and the `audit.jsonl` log), and `state copy` from one database to another (SQLite to
//! PostgreSQL, when a site outgrows one machine).
//!
//! Both are all-or-nothing: everything is read and checked first where it fits (host files), and
//! written in one transaction on the target, so a failure (a corrupt file, the database going
//! away) leaves the target as it was. After a committed import the old files are renamed aside
//! (`hosts.imported/`, `audit.jsonl.imported`), never deleted, and the database records the
//! import in `meta`: a state folder that shows old files again after that is refused at start
//! rather than imported twice (which would duplicate the audit log).

use super::engine::Engine;
use super::{audit, hosts, Store, StoreError};
use crate::serve::domain::lifecycle::HostState;
use serde_json::Value;
use sqlx::Row;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The `meta` row that records an import.
const IMPORTED: &str = "imported-from-files";
/// Audit records inserted per statement batch while importing or copying.
const CHUNK: usize = 2000;

/// What an import or a copy moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    pub hosts: usize,
    pub records: usize,
    pub last_boots: usize,
    /// Nodes of the database's inventory (`state copy`).
    pub inventory_nodes: usize,
    /// Lines of the old log that were not whole JSON records (a torn last line).
    pub skipped_lines: usize,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} host states, {} audit records, {} last boots",
            self.hosts, self.records, self.last_boots
        )?;
        if self.inventory_nodes > 0 {
            write!(f, ", an inventory of {} nodes", self.inventory_nodes)?;
        }
        if self.skipped_lines > 0 {
            write!(f, " ({} log lines that were not whole records skipped)", self.skipped_lines)?;
        }
        Ok(())
    }
}

/// The old files of a state folder, if it has any.
struct OldFiles {
    hosts_dir: Option<PathBuf>,
    log: Option<PathBuf>,
}

fn old_files(state_dir: &Path) -> OldFiles {
    let hosts_dir = state_dir.join("hosts");
    let has_json = std::fs::read_dir(&hosts_dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".json"))
    });
    let log = state_dir.join("audit.jsonl");
    OldFiles {
        hosts_dir: (has_json || hosts_dir.is_dir()).then_some(hosts_dir),
        log: log.is_file().then_some(log),
    }
}

/// Whether `state_dir` holds old files to import.
pub(crate) fn has_old_files(state_dir: &Path) -> bool {
    let old = old_files(state_dir);
    old.hosts_dir.is_some() || old.log.is_some()
}

/// At start-up: imports `state_dir`'s old files into `store` if there are any, and says what
/// it moved. Refuses (an error) if the database already holds an import.
pub fn import_if_present(store: &Store, state_dir: &Path) -> anyhow::Result<Option<String>> {
    let old = old_files(state_dir);
    if old.hosts_dir.is_none() && old.log.is_none() {
        return Ok(None);
    }
    let moved = import(store, state_dir)?;
    Ok(Some(format!(
        "imported the state folder {} into the database {}: {moved}; the old files are kept as hosts.imported/ and audit.jsonl.imported",
        state_dir.display(),
        store.shown()
    )))
}

/// Imports `state_dir`'s old files into `store` in one transaction, then renames them aside.
pub fn import(store: &Store, state_dir: &Path) -> anyhow::Result<Moved> {
    let old = old_files(state_dir);
    if old.hosts_dir.is_none() && old.log.is_none() {
        anyhow::bail!(
            "{} holds no old state (no hosts/ folder, no audit.jsonl): nothing to import",
            state_dir.display()
        );
    }
    if let Some(when) = store.wait(meta(store.engine, store.reader.clone(), IMPORTED))? {
        anyhow::bail!(
            "{} holds old state files (hosts/ or audit.jsonl), but the database {} already holds an import ({when}). Importing again would duplicate the audit log: move those files out of the state folder (they were renamed aside after the first import)",
            state_dir.display(),
            store.shown()
        );
    }
    // Host files first, all of them, so a corrupt one stops everything before any write.
    let mut states = Vec::new();
    if let Some(dir) = &old.hosts_dir {
        for entry in std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(host) = name.strip_suffix(".json") else { continue };
            if host.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let st: HostState = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid state file ({e}); fix or remove it, then start again (nothing was imported)",
                    path.display()
                )
            })?;
            states.push((host.to_string(), st));
        }
    }
    states.sort_by(|a, b| a.0.cmp(&b.0));
    let log = old.log.clone();
    let stamp = format!(
        "{} from {}",
        crate::serve::util::rfc3339(crate::serve::util::now_ms()),
        state_dir.display()
    );
    let (engine, pool) = (store.engine, store.writer.clone());
    let shown = store.shown().to_string();
    let dir_shown = state_dir.display().to_string();
    let moved = store.wait(async move {
        let mut tx = engine.begin(&pool).await?;
        // The import's mark first: two imports at once then collide on it, and the second
        // fails before it writes anything.
        set_meta(engine, &mut tx, IMPORTED, &stamp).await?;
        // Only into a database that holds nothing yet: old files over live state would turn
        // hosts' versions back and lose every flag set since (replicas already serving).
        let held: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM hosts) + (SELECT COUNT(*) FROM audit)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if held > 0 {
            return Err(StoreError::Database(format!(
                "{dir_shown} holds old state files (hosts/ or audit.jsonl), but the database {shown} already holds state ({held} rows); importing would overwrite hosts changed since and mix old records in after new ones. Nothing was imported: move those files out of the state folder, or import them into a new, empty database"
            )));
        }
        let mut moved = Moved { hosts: states.len(), ..Moved::default() };
        for (host, st) in &states {
            hosts::put(engine, &mut tx, host, st).await?;
        }
        if let Some(log) = log {
            let (records, boots, skipped) = read_log(&log, engine, &mut tx).await?;
            moved.records = records;
            moved.skipped_lines = skipped;
            moved.last_boots = boots.len();
            for (host, (ms, record)) in boots {
                audit::put_last_boot(engine, &mut tx, &host, ms, &record).await?;
            }
        }
        set_meta(engine, &mut tx, IMPORTED, &format!("{stamp}: {moved}")).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(moved)
    })?;
    // Committed: the files move aside. A crash before this leaves them in place and the next
    // start refuses them (see the module documentation), with a message saying what to do.
    if let Some(dir) = &old.hosts_dir {
        rename_aside(dir, &state_dir.join("hosts.imported"))?;
    }
    if let Some(log) = &old.log {
        rename_aside(log, &state_dir.join("audit.jsonl.imported"))?;
    }
    Ok(moved)
}

/// Renames `from` to `to`, or to `to.N` if that is taken.
fn rename_aside(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut target = to.to_path_buf();
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.{n}", to.display()));
        n += 1;
    }
    std::fs::rename(from, &target).map_err(|e| {
        anyhow::anyhow!(
            "imported, but cannot rename {} aside to {}: {e}; move it yourself before the next start",
            from.display(),
            target.display()
        )
    })
}

/// Inserts the old log's records in order, and returns (records, last verified boot per host,
/// lines skipped).
type Boots = std::collections::HashMap<String, (u64, String)>;
async fn read_log(
    log: &Path,
    engine: Engine,
    tx: &mut sqlx::AnyConnection,
) -> Result<(usize, Boots, usize), StoreError> {
    let file = std::fs::File::open(log)
        .map_err(|e| StoreError::Database(format!("cannot read {}: {e}", log.display())))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut count, mut skipped, mut boots) = (0usize, 0usize, Boots::new());
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::Database(format!("cannot read {}: {e}", log.display())))?;
        if n == 0 {
            break;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            skipped += usize::from(!line.iter().all(u8::is_ascii_whitespace));
            continue;
        };
        if !v.is_object() {
            skipped += 1;
            continue;
        }
        if v["event"] == "boot" && v["verified"] == true {
            if let (Some(host), Some(ms)) = (v["host"].as_str(), v["ms"].as_u64()) {
                if boots.get(host).is_none_or(|(at, _)| *at <= ms) {
                    boots.insert(host.to_string(), (ms, v.to_string()));
                }
            }
        }
        chunk.push(v);
        if chunk.len() >= CHUNK {
            audit::insert_stored(engine, tx, &chunk).await?;
            count += chunk.len();
            chunk.clear();
        }
    }
    audit::insert_stored(engine, tx, &chunk).await?;
    count += chunk.len();
    Ok((count, boots, skipped))
}

async fn meta(
    engine: Engine,
    pool: sqlx::AnyPool,
    name: &'static str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(engine.sql("SELECT value FROM meta WHERE name = ?"))
        .bind(name)
        .fetch_optional(&pool)
        .await?;
    Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
}

async fn set_meta(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    name: &'static str,
    value: &str,
) -> Result<(), StoreError> {
    sqlx::query(engine.sql("DELETE FROM meta WHERE name = ?"))
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::query(engine.sql("INSERT INTO meta (name, value) VALUES (?, ?)"))
        .bind(name)
        .bind(value.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Copies everything `from` holds into `to`, which must hold nothing yet (no host, no record):
/// in one transaction on `to`, audit records in their order with their times. `progress` is
/// called with the records copied so far.
pub fn copy(from: &Store, to: &Store, mut progress: impl FnMut(u64)) -> anyhow::Result<Moved> {
    let tpool = to.reader.clone();
    let held = to.wait(async move {
        let h: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosts").fetch_one(&tpool).await?;
        let a: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit").fetch_one(&tpool).await?;
        Ok::<_, StoreError>((h, a))
    })?;
    if held != (0, 0) {
        anyhow::bail!(
            "the target database {} is not empty ({} host states, {} audit records): `state copy` only fills a new database, so that nothing is merged or overwritten",
            to.shown(),
            held.0,
            held.1
        );
    }
    if to.inventory_version_blocking()? > 0 {
        anyhow::bail!(
            "the target database {} already holds an inventory: `state copy` only fills a new database, so that nothing is merged or overwritten",
            to.shown()
        );
    }
    // The source's inventory, whole, as of one moment (a database this version has not migrated
    // yet has none: its inventory table does not exist).
    let inventory = match from.inventory_blocking() {
        Ok(inv) => Some(inv).filter(|i| i.version > 0),
        Err(StoreError::Database(e)) if from.inventory_version_blocking().is_err() => {
            tracing::debug!("the source has no inventory table: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut states = Vec::new();
    for (host, st) in from.states_blocking()?.iter() {
        let (host, st) = (host.clone(), st.clone());
        let st = st.map_err(|e| {
            anyhow::anyhow!("{e}: fix that row in {} first (nothing was copied)", from.shown())
        })?;
        states.push((host, st));
    }
    let fpool = from.reader.clone();
    let boots: Vec<(String, i64, String)> = from.wait(async move {
        let rows = sqlx::query("SELECT host, ms, record FROM last_boots").fetch_all(&fpool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    })?;
    // Each host's last fetch: without it, an install that is fetching right now would look
    // stalled on the copy until its next step. A source from before migration 0005 has none.
    let fpool = from.reader.clone();
    let fetched: Vec<(String, i64)> = from
        .wait(async move {
            let rows = sqlx::query("SELECT host, ms FROM fetch_progress").fetch_all(&fpool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
        .unwrap_or_else(|e| {
            tracing::debug!("the source has no fetch_progress table: {e}");
            Vec::new()
        });
    let (engine, pool) = (to.engine, to.writer.clone());
    // The open transaction lives on this thread between the steps below. If a step fails, it
    // is dropped here, and dropping it (a rollback, the connection's return to its pool) needs
    // its runtime's context: without this, a failed copy panicked instead of rolling back.
    let _in_runtime = to.rt().enter();
    let mut tx = to.wait(async move { engine.begin(&pool).await.map_err(StoreError::from) })?;
    let mut moved = Moved {
        hosts: states.len(),
        last_boots: boots.len(),
        inventory_nodes: inventory.as_ref().map_or(0, |i| i.rows.len()),
        ..Moved::default()
    };
    let mut names = states;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    tx = to.wait(async move {
        for (host, st) in &names {
            hosts::put(engine, &mut tx, host, st).await?;
        }
        for (host, ms, record) in &boots {
            audit::put_last_boot(engine, &mut tx, host, *ms as u64, record).await?;
        }
        for (host, ms) in &fetched {
            audit::put_fetch_progress(engine, &mut tx, host, *ms as u64).await?;
        }
        if let Some(inventory) = &inventory {
            super::inventory::put(engine, &mut tx, inventory).await?;
        }
        Ok::<_, StoreError>(tx)
    })?;
    // The log in pages, oldest first, each page inserted in the same open transaction.
    let mut since = 0u64;
    loop {
        let (fe, fpool) = (from.engine, from.reader.clone());
        let page: Vec<(i64, String)> = from.wait(async move {
            let rows = sqlx::query(
                fe.sql("SELECT id, record FROM audit WHERE id >= ? ORDER BY id LIMIT 5000"),
            )
            .bind(since as i64)
            .fetch_all(&fpool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })?;
        let Some(&(last, _)) = page.last() else { break };
        since = last as u64 + 1;
        // A record that does not parse stops the copy (the transaction is never committed)
        // rather than going missing from the copy unnoticed.
        let records = page
            .iter()
            .map(|(id, r)| {
                serde_json::from_str::<Value>(r).map_err(|e| {
                    anyhow::anyhow!(
                        "audit record {id} of {} is not a JSON record ({e}); nothing was copied",
                        from.shown()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<Value>>>()?;
        moved.records += records.len();
        tx = to.wait(async move {
            audit::insert_stored(engine, &mut tx, &records).await?;
            Ok::<_, StoreError>(tx)
        })?;
        progress(moved.records as u64);
    }
    let stamp = format!(
        "{} from {}: {moved}",
        crate::serve::util::rfc3339(crate::serve::util::now_ms()),
        from.shown()
    );
    // A database filled from old state files stays one: its copy refuses them too (importing
    // them again would duplicate the audit log it was copied with).
    let imported = from.wait(meta(from.engine, from.reader.clone(), IMPORTED))?;
    to.wait(async move {
        if let Some(imported) = imported {
            set_meta(engine, &mut tx, IMPORTED, &imported).await?;
        }
        set_meta(engine, &mut tx, "copied-from", &stamp).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    })?;
    Ok(moved)
}
