//! The inventory in the database: the "client database" that `serve` without `--inventory`
//! takes its nodes from, that the console edits for every replica at once, and that `bootforge
//! inventory import`/`export` and `bootforge build --database` read and write.
//!
//! The CSV stays the format at every border. A stored inventory is read back as CSV text
//! ([`StoredInventory::csv`], written by the csv crate), and every write starts from CSV text
//! validated whole by [`Inventory::check`], the code behind `bootforge check`: so there is one
//! validator, with its line and column errors, whatever the inventory's home. Rows are kept as
//! one row per node (`inventory_nodes`: the validated host name, its place, and its fields as
//! written in a JSON object, so free template columns survive) and one row of `inventory_meta`
//! (the header, a `version`, and when and by whom it last changed).
//!
//! Invariants:
//! - **Nothing changes unless the whole new inventory is valid.** [`Store::replace_inventory`]
//!   validates before it opens a transaction; an invalid text is [`WriteError::Invalid`] and
//!   the database is not touched.
//! - **No edit is silently overwritten.** Every write names the version it was made against and
//!   is one transaction that first moves `inventory_meta.version` from that version to the next
//!   (compare-and-set): a writer that read an older version gets [`WriteError::Conflict`] and
//!   writes nothing. The meta row's update also locks it, so writers of the inventory take turns
//!   on every engine (SQLite: `BEGIN IMMEDIATE`).
//! - **The audit record commits with the change** ([`Event::InventoryChanged`], built by the
//!   caller from the validated inventory: host names and counts, never a field's value, since
//!   a free column may hold anything), and on PostgreSQL a `NOTIFY` on [`CHANNEL`] with the new
//!   version, delivered to the other replicas when (and only if) it commits.
//! - A row edit of the console is a replace against the version it was read at: the rows are
//!   compared with what is stored and only those that differ are written (a one-row edit writes
//!   one row, and the meta row), so edits stay cheap on a large inventory.
//!
//! What is not kept: comments, blank lines, quoting, a BOM, CRLF line ends and the header's
//! spelling (names are kept lower case, as the validator reads them). An export is the same
//! nodes and columns in the same order, not the same bytes as the file imported.
//!
//! Threats: every value comes from a validated inventory (host names parsed; free values
//! printable and bounded by the validator), statements are constants with bound values, and the
//! `changed_by` column holds the actor's name cut to [`MAX_BY`] characters. A `NOTIFY` payload
//! anyone with database access can send is only a hint to re-read the version.

use super::engine::Engine;
use super::{Store, StoreError};
use crate::inventory::{source_records, ErrorReport, Inventory, MAX_REPORTED_ERRORS};
use crate::serve::domain::event::Event;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// The PostgreSQL channel of inventory changes; the payload is the new version.
pub const CHANNEL: &str = "bootforge_inventory";

/// `changed_by` is cut to this many characters.
pub const MAX_BY: usize = 200;

/// Rows per INSERT statement (PostgreSQL takes at most 65,535 bound values per statement).
const ROWS_PER_STATEMENT: usize = 500;

/// The distance between the places of rows written in one go; rows added later go in between
/// (or after the last) without moving the others.
const GAP: i64 = 1024;

/// The inventory as stored: its header, its rows in order, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInventory {
    /// Column names, lower case, in order.
    pub columns: Vec<String>,
    /// The nodes in order.
    pub rows: Vec<StoredNode>,
    /// 0 until an inventory is first written; one more with every change.
    pub version: u64,
    /// When and by whom it last changed (milliseconds since 1970; the actor's name).
    pub changed_ms: Option<u64>,
    pub changed_by: Option<String>,
}

/// One node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNode {
    /// The validated host name (lower case): the row's key.
    pub hostname: String,
    /// Column -> value as written in the CSV the row came from.
    pub fields: BTreeMap<String, String>,
}

impl StoredInventory {
    /// Whether no inventory has been written yet (or it holds no node).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The inventory as CSV text: the header, then one record per node in order, `\n` line
    /// ends, quoted where needed (a field that would start a comment included). Empty text for
    /// an empty inventory.
    pub fn csv(&self) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            // The inventory's reader takes a line starting with `#` for a comment: such a
            // first field is quoted.
            .comment(Some(b'#'))
            .from_writer(Vec::new());
        w.write_record(&self.columns).expect("writing to memory");
        for row in &self.rows {
            w.write_record(
                self.columns.iter().map(|c| row.fields.get(c).map_or("", String::as_str)),
            )
            .expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("fields are UTF-8")
    }
}

/// Why a write of the inventory did not happen. In every case nothing changed.
#[derive(Debug)]
pub enum WriteError {
    /// The new inventory is not valid: the first [`MAX_REPORTED_ERRORS`] errors by line and
    /// column (of the text given), and their total.
    Invalid(ErrorReport),
    /// The stored inventory is no longer at the version the write was made against.
    Conflict { current: u64 },
    /// The database failed (or is unavailable).
    Store(StoreError),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Invalid(report) => {
                for e in &report.errors {
                    writeln!(f, "{e}")?;
                }
                if report.truncated() {
                    writeln!(f, "… and {} more errors", report.total - report.errors.len())?;
                }
                write!(f, "the inventory is not valid; nothing was changed")
            }
            WriteError::Conflict { current } => write!(
                f,
                "the inventory changed since it was read (it is at version {current} now); read it again and make the change again. Nothing was changed"
            ),
            WriteError::Store(e) => write!(f, "{e}; nothing was changed"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> WriteError {
        WriteError::Store(e)
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> WriteError {
        WriteError::Store(e.into())
    }
}

/// What a write is checked against and recorded as, besides the text itself.
pub struct Replace<'a> {
    /// Names the text in error messages (`nodes.csv`, `upload`).
    pub source: &'a str,
    /// Who writes, for `changed_by` (cut to [`MAX_BY`]).
    pub by: &'a str,
    /// Checks beyond the CSV's own rules (the service's: profiles, `server` columns); its
    /// errors are reported like the validator's.
    pub check: &'a (dyn Fn(&Inventory) -> Result<(), ErrorReport> + Sync),
    /// The audit record of the write, from the validated inventory and the new version.
    pub record: &'a (dyn Fn(&Inventory, u64) -> Event + Sync),
}

/// A committed write.
#[derive(Debug)]
pub struct Written {
    /// The version the inventory is at now.
    pub version: u64,
    /// The inventory written, validated.
    pub inventory: Inventory,
}

impl Store {
    /// The stored inventory. Blocks.
    pub fn inventory_blocking(&self) -> Result<StoredInventory, StoreError> {
        self.available()?;
        let (pool, engine) = (self.reader.clone(), self.engine);
        self.wait(async move { read(engine, &pool).await })
    }

    /// The stored inventory's version: one small query. Blocks.
    pub fn inventory_version_blocking(&self) -> Result<u64, StoreError> {
        self.available()?;
        let pool = self.reader.clone();
        self.wait(async move { version(&pool).await })
    }

    /// The version as this process last heard of it, cheaply: on PostgreSQL while its listener
    /// is connected, what the last `NOTIFY` (or the read after `LISTEN`) said, with no query;
    /// otherwise [`Store::inventory_version_blocking`]. `None` while the database does not
    /// answer. Blocks.
    pub fn inventory_version_hint(&self) -> Option<u64> {
        if self.listening() {
            return Some(self.inventory_heard.load(std::sync::atomic::Ordering::SeqCst));
        }
        self.inventory_version_blocking().ok()
    }

    /// Replaces the stored inventory with `text` if it is valid (the CSV's rules, then
    /// `how.check`) and the stored one is still at version `expect`: one transaction writes the
    /// rows that differ, moves the version on, and inserts `how.record`'s audit record. Blocks.
    pub fn replace_inventory_blocking(
        &self,
        text: &str,
        expect: u64,
        how: &Replace<'_>,
    ) -> Result<Written, WriteError> {
        let inventory = Inventory::check(how.source, text.as_bytes(), MAX_REPORTED_ERRORS)
            .map_err(WriteError::Invalid)?;
        (how.check)(&inventory).map_err(WriteError::Invalid)?;
        let rows = rows_of(text, &inventory);
        let record = (how.record)(&inventory, expect + 1);
        self.available()?;
        let (pool, engine) = (self.writer.clone(), self.engine);
        let columns = inventory.columns().to_vec();
        let by: String = how.by.chars().take(MAX_BY).collect();
        let version =
            self.wait(
                async move { write(engine, &pool, &columns, &rows, expect, &by, &record).await },
            )?;
        Ok(Written { version, inventory })
    }

    /// Whether the database holds an inventory (for the warning of a service started with
    /// `--inventory` over one). Blocks.
    pub fn holds_inventory(&self) -> Result<bool, StoreError> {
        Ok(self.inventory_version_blocking()? > 0)
    }
}

/// Each node's fields as written in `text`, in the inventory's order. `inventory` is `text`
/// validated, so every node is found by the line its record starts on.
fn rows_of(text: &str, inventory: &Inventory) -> Vec<StoredNode> {
    let columns = inventory.columns();
    let mut by_line: HashMap<u64, Vec<String>> = HashMap::with_capacity(inventory.len());
    for record in source_records(text.as_bytes()).skip(1).flatten() {
        let fields =
            record.fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        by_line.insert(record.line, fields);
    }
    inventory
        .nodes()
        .iter()
        .map(|node| {
            let values = by_line.remove(&node.line).unwrap_or_default();
            StoredNode {
                hostname: node.hostname.clone(),
                fields: columns.iter().cloned().zip(values).collect(),
            }
        })
        .collect()
}

pub(crate) async fn version(
    exec: impl sqlx::Executor<'_, Database = sqlx::Any>,
) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT version FROM inventory_meta WHERE id = 1")
        .fetch_one(exec)
        .await?;
    Ok(v.max(0) as u64)
}

pub(crate) async fn read(
    engine: Engine,
    pool: &sqlx::AnyPool,
) -> Result<StoredInventory, StoreError> {
    // One snapshot, so the header and rows are of one version (a writer commits both).
    let mut tx = engine.begin_snapshot(pool).await?;
    let meta = sqlx::query(
        "SELECT version, column_names, changed_ms, changed_by FROM inventory_meta WHERE id = 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    let columns: String = meta.try_get(1)?;
    let columns: Vec<String> = serde_json::from_str(&columns).map_err(|e| {
        StoreError::Database(format!("the stored inventory's header does not parse: {e}"))
    })?;
    let rows = sqlx::query("SELECT hostname, fields FROM inventory_nodes ORDER BY ord")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let rows = rows
        .iter()
        .map(|r| {
            let hostname: String = r.try_get(0)?;
            let fields: String = r.try_get(1)?;
            let fields = serde_json::from_str(&fields).map_err(|e| {
                StoreError::Database(format!(
                    "the stored inventory row of {} does not parse: {e}",
                    crate::inventory::quoted(&hostname)
                ))
            })?;
            Ok(StoredNode { hostname, fields })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(StoredInventory {
        columns,
        rows,
        version: meta.try_get::<i64, _>(0)?.max(0) as u64,
        changed_ms: meta.try_get::<Option<i64>, _>(2)?.map(|v| v.max(0) as u64),
        changed_by: meta.try_get(3)?,
    })
}

/// Writes `inventory` as it is (version, header, rows, last change) into a database that holds
/// none, in the caller's transaction: `state copy`.
pub(crate) async fn put(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    inventory: &StoredInventory,
) -> Result<(), StoreError> {
    sqlx::query(engine.sql(
        "UPDATE inventory_meta SET version = ?, column_names = ?, changed_ms = ?, changed_by = ? \
         WHERE id = 1",
    ))
    .bind(inventory.version as i64)
    .bind(serde_json::to_string(&inventory.columns).expect("names serialise"))
    .bind(inventory.changed_ms.map(|v| v as i64))
    .bind(inventory.changed_by.clone())
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, i64, String)> = inventory
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let fields = serde_json::to_string(&r.fields).expect("text serialises");
            (r.hostname.clone(), i as i64 * GAP, fields)
        })
        .collect();
    insert_rows(engine, conn, &rows).await
}

async fn insert_rows(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    rows: &[(String, i64, String)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        // Built from constants only; every value is bound.
        let mut sql = String::from("INSERT INTO inventory_nodes (hostname, ord, fields) VALUES ");
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
        }
        let mut q = sqlx::query(engine.sql_owned(sql));
        for (h, o, f) in chunk {
            q = q.bind(h.clone()).bind(*o).bind(f.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The body of a replace: see [`Store::replace_inventory_blocking`].
async fn write(
    engine: Engine,
    pool: &sqlx::AnyPool,
    columns: &[String],
    rows: &[StoredNode],
    expect: u64,
    by: &str,
    record: &Event,
) -> Result<u64, WriteError> {
    let mut tx = engine.begin(pool).await?;
    let now = match engine.now_sql() {
        Some(q) => {
            let ms: i64 = sqlx::query_scalar(q).fetch_one(&mut *tx).await?;
            ms.max(0) as u64
        }
        None => crate::serve::util::now_ms(),
    };
    let next = expect + 1;
    let header = serde_json::to_string(columns).expect("names serialise");
    // The compare-and-set, first: it also locks the meta row, so the rows read below are the
    // last committed inventory's and no other writer changes them until this one ends.
    let moved = sqlx::query(engine.sql(
        "UPDATE inventory_meta SET version = ?, column_names = ?, changed_ms = ?, changed_by = ? \
         WHERE id = 1 AND version = ?",
    ))
    .bind(next as i64)
    .bind(header)
    .bind(now as i64)
    .bind(by.to_string())
    .bind(expect as i64)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        let current = version(&mut *tx).await?;
        let _ = tx.rollback().await;
        return Err(WriteError::Conflict { current });
    }
    let stored =
        sqlx::query(engine.current_read("SELECT hostname, ord, fields FROM inventory_nodes"))
            .fetch_all(&mut *tx)
            .await?;
    let mut old: HashMap<String, (i64, String)> = HashMap::with_capacity(stored.len());
    for r in &stored {
        old.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
    }
    let names: Vec<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    let places = places(&names, &old);
    let keep: std::collections::HashSet<&str> = names.iter().copied().collect();
    let gone: Vec<String> = old.keys().filter(|h| !keep.contains(h.as_str())).cloned().collect();
    for chunk in gone.chunks(ROWS_PER_STATEMENT) {
        // Built from constants only; every value is bound.
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!("DELETE FROM inventory_nodes WHERE hostname IN ({marks})");
        let mut q = sqlx::query(engine.sql_owned(sql));
        for h in chunk {
            q = q.bind(h.clone());
        }
        q.execute(&mut *tx).await?;
    }
    let mut added = Vec::new();
    for (row, &ord) in rows.iter().zip(&places) {
        let fields = serde_json::to_string(&row.fields).expect("text serialises");
        match old.get(&row.hostname) {
            Some((o, f)) if *o == ord && *f == fields => {}
            Some(_) => {
                sqlx::query(
                    engine.sql("UPDATE inventory_nodes SET ord = ?, fields = ? WHERE hostname = ?"),
                )
                .bind(ord)
                .bind(fields)
                .bind(row.hostname.clone())
                .execute(&mut *tx)
                .await?;
            }
            None => added.push((row.hostname.clone(), ord, fields)),
        }
    }
    insert_rows(engine, &mut tx, &added).await?;
    super::audit::insert(engine, &mut tx, now, record).await?;
    if engine == Engine::Postgres {
        // Delivered to every listener when (and only if) this transaction commits.
        sqlx::query("SELECT pg_notify($1, $2) IS NULL")
            .bind(CHANNEL)
            .bind(next.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(next)
}

/// The place (`ord`) of each of `names`, in order: a row keeps its stored place where the
/// order allows, new rows go between their neighbours, and only if there is no room is every
/// row given a new place ([`GAP`] apart). So an edit of one row, an added row at the end and a
/// removed row write one row each.
fn places(names: &[&str], old: &HashMap<String, (i64, String)>) -> Vec<i64> {
    let renumber = || (0..names.len() as i64).map(|i| i * GAP).collect();
    // Keep the stored places of the longest run of rows (not necessarily adjacent) whose
    // stored places already rise along the new order; the rest are to fill. (A longest
    // increasing subsequence, O(n log n): moving one row writes that row only.)
    let stored: Vec<Option<i64>> = names.iter().map(|n| old.get(*n).map(|o| o.0)).collect();
    let mut tails: Vec<usize> = Vec::new(); // index of the smallest tail of each run length
    let mut before: Vec<Option<usize>> = vec![None; names.len()];
    for (i, p) in stored.iter().enumerate() {
        let Some(p) = *p else { continue };
        let at = tails.partition_point(|&j| stored[j].is_some_and(|q| q < p));
        before[i] = at.checked_sub(1).map(|k| tails[k]);
        if at == tails.len() {
            tails.push(i);
        } else {
            tails[at] = i;
        }
    }
    let mut out: Vec<Option<i64>> = vec![None; names.len()];
    let mut next = tails.last().copied();
    while let Some(i) = next {
        out[i] = stored[i];
        next = before[i];
    }
    let mut i = 0;
    while i < out.len() {
        if out[i].is_some() {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && out[i].is_none() {
            i += 1;
        }
        let k = (i - start) as i64;
        let lo = start.checked_sub(1).and_then(|j| out[j]);
        let hi = out.get(i).copied().flatten();
        let fill: Vec<i64> = match (lo, hi) {
            (None, None) => return renumber(),
            (Some(lo), None) => (1..=k).map(|j| lo.saturating_add(j * GAP)).collect(),
            (None, Some(hi)) => (0..k).map(|j| hi.saturating_sub((k - j) * GAP)).collect(),
            (Some(lo), Some(hi)) if hi - lo > k => {
                (1..=k).map(|j| lo + (hi - lo) * j / (k + 1)).collect()
            }
            _ => return renumber(),
        };
        for (j, p) in fill.into_iter().enumerate() {
            out[start + j] = Some(p);
        }
    }
    let out: Vec<i64> = out.into_iter().map(|p| p.expect("every place is filled")).collect();
    if out.windows(2).all(|w| w[0] < w[1]) {
        out
    } else {
        renumber()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old(pairs: &[(&str, i64)]) -> HashMap<String, (i64, String)> {
        pairs.iter().map(|(h, p)| (h.to_string(), (*p, String::new()))).collect()
    }

    #[test]
    fn places_move_only_what_they_must() {
        let o = old(&[("a", 0), ("b", 1024), ("c", 2048)]);
        assert_eq!(places(&["a", "b", "c"], &o), vec![0, 1024, 2048]);
        assert_eq!(places(&["a", "c"], &o), vec![0, 2048], "a removal moves nothing");
        assert_eq!(places(&["a", "b", "c", "d"], &o), vec![0, 1024, 2048, 3072]);
        assert_eq!(places(&["a", "x", "b", "c"], &o), vec![0, 512, 1024, 2048]);
        assert_eq!(places(&["x", "a", "b", "c"], &o), vec![-1024, 0, 1024, 2048]);
        // A row moved to the front: it alone gets a new place, before the others.
        assert_eq!(places(&["c", "a", "b"], &o), vec![-1024, 0, 1024]);
        assert_eq!(places(&["b", "c", "a"], &o), vec![1024, 2048, 3072]);
        // No room between neighbours: everything is placed anew.
        let tight = old(&[("a", 0), ("b", 1)]);
        assert_eq!(places(&["a", "x", "b"], &tight), vec![0, 1024, 2048]);
        assert_eq!(places(&["x", "y"], &HashMap::new()), vec![0, 1024]);
    }

    proptest::proptest! {
        /// Whatever the stored places and the new order, the places rise strictly along it,
        /// and at least as many rows keep their place as the longest run that can.
        #[test]
        fn places_always_rise(
            stored in proptest::collection::vec(-5000i64..5000, 0..40),
            order in proptest::collection::vec(0usize..60, 0..60),
        ) {
            let mut seen = std::collections::HashSet::new();
            let names: Vec<String> = order.iter().filter(|i| seen.insert(**i)).map(|i| format!("h{i}")).collect();
            let mut used = std::collections::HashSet::new();
            let old: HashMap<String, (i64, String)> = stored
                .iter()
                .enumerate()
                .filter(|(_, p)| used.insert(**p))
                .map(|(i, p)| (format!("h{i}"), (*p, String::new())))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let out = places(&refs, &old);
            proptest::prop_assert_eq!(out.len(), names.len());
            proptest::prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "{:?}", out);
        }
    }

    #[test]
    fn csv_quotes_what_would_read_as_a_comment() {
        let inv = StoredInventory {
            columns: vec!["note".into(), "hostname".into(), "ip".into()],
            rows: vec![StoredNode {
                hostname: "n1".into(),
                fields: [("note", "#1, \"x\""), ("hostname", "n1"), ("ip", "10.0.0.1/24")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            }],
            version: 1,
            changed_ms: None,
            changed_by: None,
        };
        let text = inv.csv();
        assert_eq!(text, "note,hostname,ip\n\"#1, \"\"x\"\"\",n1,10.0.0.1/24\n");
        let back = Inventory::check("db", text.as_bytes(), 10).unwrap();
        assert_eq!(back.nodes()[0].vars["note"], "#1, \"x\"");
        assert_eq!(rows_of(&text, &back), inv.rows);
    }
}
