//! The audit log: the `audit` table, one row per record, its JSON as `/events` shows it.
//!
//! Every flag change (who, when, from which peer address), every refused API call and every boot
//! answer with its reason is recorded. Records of state changes are inserted in the change's own
//! transaction ([`insert`], from [`crate::serve::store::Store::change`]): no change commits
//! without its record, and no record without its change. Records nothing depends on
//! ([`Audit::note`]: boot answers, refusals, logins) go to one writer thread per process, which
//! inserts them in batches, one transaction each, in the order they were made; a note never
//! makes a request wait, and if the writer falls [`NOTE_QUEUE`] records behind (the database is
//! slow or down) further notes are dropped and counted (`bootforge_audit_notes_dropped_total`).
//!
//! **Refusals are aggregated** by the writer through [`Refusals`] (see
//! [`crate::serve::store::refusals`]), so that the log's growth is bounded whatever clients
//! without credentials send.
//!
//! **Last boots.** The writer also keeps `last_boots`, each inventory host's last *verified*
//! boot answer (a request without the node's token cannot change what the operator sees), newer
//! wins; [`LastBoots`] follows that table into memory for the fleet view.
//!
//! Shutdown: [`Audit::stopping`] writes every open window and makes the writer write later
//! counts batch by batch; dropping the [`Audit`] waits for the writer, whose exit path writes
//! what is still counted. Only a kill (or crash) loses counts: those of the windows then open.
//!
//! What a record may hold is fixed by [`Event`]: host names only once validated, install ids
//! only in their 32-hex shape, addresses only as parsed addresses, route names instead of request
//! paths, token *names* instead of tokens. No request text reaches the log unparsed, so no
//! secret can, and every record is a few hundred bytes whatever the request held.

use super::engine::Engine;
use super::refusals::Refusals;
use super::{Store, StoreError};
use crate::serve::domain::actor::Role;
use crate::serve::domain::event::{visible_to, Event};
use crate::serve::domain::query::EventFilter;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

/// A record as stored and shown: its time twice (readable, and for sorting) and its fields.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    ms: u64,
    #[serde(flatten)]
    event: &'a Event,
}

/// One row of the `audit` table, ready to insert.
#[derive(Clone)]
pub(crate) struct Stored {
    ms: u64,
    event: String,
    host: Option<String>,
    record: String,
}

/// The indexed fields of a record, read back from its JSON.
#[derive(serde::Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow, default)]
    host: Option<std::borrow::Cow<'a, str>>,
}

impl Stored {
    /// The record's JSON keeps the field order of [`Event`] (time, ms, event, then its fields),
    /// as `audit.jsonl` had it, so `bootforge audit export` writes the lines log shippers know.
    fn of(event: &Event, ms: u64) -> Stored {
        let line = Line { time: crate::serve::util::rfc3339(ms), ms, event };
        let record = serde_json::to_string(&line).expect("audit records serialise");
        let keys: Keys = serde_json::from_str(&record).expect("a record has an event tag");
        Stored {
            ms,
            event: keys.event.to_string(),
            // Stored lower-case for the `host` filter, which matches case-insensitively.
            host: keys.host.map(|h| h.to_ascii_lowercase()),
            record,
        }
    }
}

/// Inserts `event`, made at `now`, in the caller's transaction (and, for a verified boot, its
/// host's last boot).
pub(crate) async fn insert(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    now: u64,
    event: &Event,
) -> Result<(), StoreError> {
    let row = Stored::of(event, now);
    if let Some(host) = verified_boot(event) {
        put_last_boot(engine, conn, host, now, &row.record).await?;
    }
    insert_rows(engine, conn, &[row]).await
}

/// [`insert`] for several records, each made at its own time, in order: one statement for the
/// records (SQLite's group commit, see [`super::group`]).
pub(crate) async fn insert_many(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    events: &[(u64, &Event)],
) -> Result<(), StoreError> {
    let rows: Vec<Stored> = events.iter().map(|&(now, e)| Stored::of(e, now)).collect();
    for (&(now, event), row) in events.iter().zip(&rows) {
        if let Some(host) = verified_boot(event) {
            put_last_boot(engine, conn, host, now, &row.record).await?;
        }
    }
    insert_rows(engine, conn, &rows).await
}

/// Rows per INSERT statement (PostgreSQL takes at most 65,535 bound values per statement).
const ROWS_PER_INSERT: usize = 500;

async fn insert_rows(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    rows: &[Stored],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        // The statement is built from constants only; every value is bound.
        let mut sql = String::from("INSERT INTO audit (ms, event, host, record) VALUES ");
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
        }
        let sql = engine.sql_owned(sql);
        let mut q = sqlx::query(sql);
        for r in chunk {
            q = q
                .bind(r.ms as i64)
                .bind(r.event.clone())
                .bind(r.host.clone())
                .bind(r.record.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub struct Audit {
    store: Arc<Store>,
    /// Notes go to a writer thread, so no request waits on the database for one.
    notes: std::sync::mpsc::SyncSender<Note>,
    /// Notes dropped because the writer fell behind by [`NOTE_QUEUE`] records.
    pub dropped: std::sync::atomic::AtomicU64,
    /// The writer thread, joined on drop so that its exit path (which writes the summaries of
    /// every window still open) has run before the process can exit.
    writer: Option<std::thread::JoinHandle<()>>,
}

enum Note {
    Record(Event, u64),
    /// A refusal (see [`Event::refusal`]) made at this time: written, or counted, by the writer.
    Refusal(Event, u64),
    /// Closes every refusal window (writing its summary), then answers. With `stopping`, the
    /// writer also writes the counts of every window at the end of each later batch (see
    /// [`Refusals::flush`]): the service is stopping, and refusals still noted by requests that
    /// outlive the stop are written, not held.
    CloseWindows(std::sync::mpsc::Sender<()>, bool),
    /// Answered once everything queued before it is written.
    Sync(std::sync::mpsc::Sender<()>),
}

/// Notes waiting for the writer at most; beyond, they are dropped and counted.
const NOTE_QUEUE: usize = 16_384;
/// Most notes inserted in one transaction.
const NOTE_BATCH: usize = 4096;

/// Largest answer of one `/events` page, whatever `limit` asks for.
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// Most records read for one `/events` page (a filter on `by` reads past what it keeps; `host`
/// and `event` are indexed and cost nothing extra). The page then ends early with a cursor
/// (`next`, or `before` when paging back), so following cursors still finds every record, and no
/// caller can make one request cost more than this much reading and parsing.
pub const MAX_SCAN_RECORDS: usize = 20_000;

/// One page of `GET /events`, as answered.
#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<Value>,
    /// Oldest-first paging: the cursor to ask from next (`since`). Newest-first: where the
    /// scan stopped.
    pub next: u64,
    /// Newest-first paging: the `before` of the next (older) page; absent when the log holds
    /// nothing older. Set also when the page has fewer records than asked because the scan
    /// budget ran out: the records before it are not read yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Records this page read ([`MAX_SCAN_RECORDS`] at most).
    pub scanned: u64,
    /// Oldest-first paging: whether the scan reached the end of the log. `false` with few or no
    /// events means the budget ran out: ask again from `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
}

impl Audit {
    pub fn open(store: Arc<Store>) -> anyhow::Result<Audit> {
        let (notes, queue) = std::sync::mpsc::sync_channel(NOTE_QUEUE);
        let writer_store = store.clone();
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_notes(&writer_store, &queue))?;
        Ok(Audit { store, notes, dropped: Default::default(), writer: Some(writer) })
    }

    /// Inserts a record a change outside the host states depends on (an inventory edit), stamped
    /// with the time, and waits until it is committed. An error means the record is missing:
    /// the change is refused. Blocks: call it from a thread that may.
    pub fn append_durable(&self, event: &Event) -> Result<(), StoreError> {
        let row = Stored::of(event, self.store.now_ms());
        let (pool, engine) = (self.store.writer.clone(), self.store.engine);
        self.store.wait(async move {
            let mut tx = engine.begin(&pool).await?;
            insert_rows(engine, &mut tx, &[row]).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Queues a record nothing depends on (boot answers, refusals) for the writer thread, which
    /// inserts queued notes in batches. Never waits: if the writer is [`NOTE_QUEUE`] records
    /// behind, the note is dropped and counted. Refusals ([`Event::refusal`]) are aggregated by
    /// the writer (see the module documentation).
    pub fn note(&self, event: &Event) {
        let now = self.store.now_ms();
        let note = match event.refusal() {
            Some(_) => Note::Refusal(event.clone(), now),
            None => Note::Record(event.clone(), now),
        };
        if self.notes.try_send(note).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Closes every open refusal window now: waits until the summaries of refusals counted so
    /// far (and every note queued before) are written. Called at shutdown, so no count is lost.
    pub fn close_windows(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::CloseWindows(tx, false)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// The orderly stop: closes every refusal window now, as [`Audit::close_windows`], and from
    /// then on the writer writes each batch's counts at the end of that batch (windows stay
    /// open, so refusals are still aggregated) instead of holding them to the window's end.
    pub fn stopping(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::CloseWindows(tx, true)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Waits until every note queued so far is written (before reading the log back). Refusals
    /// only counted so far are not: see [`Audit::close_windows`].
    pub fn sync(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// [`Audit::sync`], waiting at most `limit`: for reads that show notes (the fleet view,
    /// `/events`), which must not hang behind a writer the database keeps waiting. Returns
    /// whether the notes were written in time.
    pub fn sync_within(&self, limit: std::time::Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.try_send(Note::Sync(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(limit).is_ok()
    }

    /// Records from cursor `since` on (oldest first), at most `limit` of them and `max_bytes`
    /// of their text (at least one), and the cursor to ask from next time. Cursors are record
    /// ids: valid across replicas and restarts.
    pub fn read_since(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let page = self.read_page(since, limit, max_bytes, &Default::default(), Role::Admin)?;
        Ok((page.events, page.next))
    }

    /// A page of records from cursor `since` on, as `role` may see them ([`visible_to`]),
    /// keeping those `filter` passes: at most `limit` of them and `max_bytes` of their text,
    /// reading at most [`MAX_SCAN_RECORDS`]. `next` is where to go on; `at_end` whether the
    /// log's end was reached. Blocks.
    pub fn read_page(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
        filter: &EventFilter,
        role: Role,
    ) -> Result<Page, StoreError> {
        let fetch = fetch_size(limit, filter);
        let rows = self.scan(Scan::After(since), filter, fetch)?;
        let read = rows.len();
        let (mut events, mut bytes, mut scanned) = (Vec::new(), 0usize, 0usize);
        let mut next = since;
        let mut stopped = false;
        for (id, record) in rows {
            if events.len() >= limit || (bytes + record.len() > max_bytes && !events.is_empty()) {
                stopped = true;
                break;
            }
            scanned += 1;
            next = id + 1;
            if let Some(v) = shown(id, &record, role, filter) {
                bytes += record.len();
                events.push(v);
            }
        }
        // A full scan that was not cut by the page's own limits may still have more behind it.
        let at_end = !stopped && read < fetch;
        Ok(Page { events, next, before: None, scanned: scanned as u64, at_end: Some(at_end) })
    }

    /// The newest `limit` records that `filter` passes among those before cursor `before`
    /// (default: the end), newest first, as `role` may see them, reading at most
    /// [`MAX_SCAN_RECORDS`] (the console's audit view pages backwards with these). `before` is
    /// the cursor of the next older page. Blocks.
    pub fn read_newest(
        &self,
        limit: usize,
        before: Option<u64>,
        filter: &EventFilter,
        role: Role,
    ) -> Result<Page, StoreError> {
        let fetch = fetch_size(limit, filter);
        let rows = self.scan(Scan::Before(before), filter, fetch)?;
        let read = rows.len();
        let (mut events, mut scanned, mut oldest) = (Vec::new(), 0u64, None);
        for (id, record) in rows {
            if events.len() >= limit {
                break;
            }
            scanned += 1;
            oldest = Some(id);
            if let Some(v) = shown(id, &record, role, filter) {
                events.push(v);
            }
        }
        let next = before.unwrap_or(u64::MAX).min(oldest.unwrap_or(0));
        // More may lie before the oldest record read if the page or the scan budget filled up.
        let more = events.len() >= limit || read >= fetch;
        let before = if more { oldest.filter(|&b| b > 0) } else { None };
        Ok(Page { events, next, before, scanned, at_end: None })
    }

    /// Up to `fetch` rows after (inclusive) or before (exclusive) a cursor, with
    /// the indexed filters applied by the database.
    fn scan(
        &self,
        from: Scan,
        filter: &EventFilter,
        fetch: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let (pool, engine) = (self.store.reader.clone(), self.store.engine);
        let (host, event) = (filter.host.clone(), filter.event.clone());
        self.store.wait(async move {
            let (cmp, order, cursor) = match from {
                Scan::After(since) => (">=", "ASC", since.min(i64::MAX as u64) as i64),
                Scan::Before(b) => {
                    ("<", "DESC", b.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64)
                }
            };
            let below = match from {
                Scan::After(_) => settled(engine, &pool, cursor).await?,
                Scan::Before(_) => None,
            };
            // Built from constants only; every value is bound.
            let mut sql = format!("SELECT id, record FROM audit WHERE id {cmp} ?");
            if below.is_some() {
                sql.push_str(" AND id < ?");
            }
            if host.is_some() {
                sql.push_str(" AND host = ?");
            }
            if event.is_some() {
                sql.push_str(" AND event = ?");
            }
            sql.push_str(&format!(" ORDER BY id {order} LIMIT {fetch}"));
            let sql = engine.sql_owned(sql);
            let mut q = sqlx::query(sql).bind(cursor);
            if let Some(b) = below {
                q = q.bind(b);
            }
            if let Some(h) = host {
                q = q.bind(h.to_ascii_lowercase());
            }
            if let Some(e) = event {
                q = q.bind(e);
            }
            let rows = q.fetch_all(&pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)? as u64, r.try_get::<String, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        })
    }
}

/// How long a reader that follows the log by cursor waits for a gap in the record ids to fill.
///
/// On SQLite one writer commits at a time, so ids appear in commit order. PostgreSQL and
/// MariaDB hand out ids when a row is inserted, and transactions commit in any order: id 41 may
/// be visible while the transaction that took id 40 is still running. A reader that went on
/// past 41 would never see 40. So a reader stops before the first missing id whose next record
/// was inserted less than this long ago (on the database's clock, `stored_ms`): a transaction
/// still in flight fills it in well under that (ours run a few statements, none waiting on
/// anything but the database), and a gap that stays (a rolled-back insert) is passed once it is
/// that old. Readers of the newest records (the console) are not held back. What this cannot
/// cover: a transaction that commits more than this long after taking its id (a database that
/// stalls for seconds between the insert and the commit); its record can be passed.
pub const SETTLE_MS: i64 = 5_000;

/// The most recent ids [`settled`] looks at; past them a page stops where it stopped looking.
const RECENT_IDS: usize = 20_000;

/// The id a cursor read from `since` must stay below (`None`: no limit, on SQLite), per
/// [`SETTLE_MS`]: the newest id when this ran, plus one (so a record inserted between this and
/// the page's own query waits for the next page, whose look covers it), or the first missing id
/// followed by a recent record. Two indexed queries on the servers: the highest id, then the
/// ids of records inserted in the last [`SETTLE_MS`] (at most [`RECENT_IDS`] of them).
async fn settled(
    engine: Engine,
    pool: &sqlx::AnyPool,
    since: i64,
) -> Result<Option<i64>, StoreError> {
    let Some(now) = engine.now_ms_expr() else {
        return Ok(None);
    };
    // Ids start at 1 on both servers: a cursor of 0 has no record 0 to wait for.
    let since = since.max(1);
    // First the highest id: any id below it was taken before this query, so a gap below it is
    // either in the recent ids read next or settled.
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM audit").fetch_one(pool).await?;
    let Some(max) = max.filter(|&m| m >= since) else {
        return Ok(Some(since));
    };
    let sql = format!(
        "SELECT id FROM audit WHERE stored_ms >= {now} - {SETTLE_MS} AND id >= ? AND id <= ? \
         ORDER BY id LIMIT {RECENT_IDS}"
    );
    let recent: Vec<i64> =
        sqlx::query_scalar(engine.sql_owned(sql)).bind(since).bind(max).fetch_all(pool).await?;
    let Some(&first) = recent.first() else {
        return Ok(Some(max + 1));
    };
    if first > since {
        // Whether the id just before the first recent record exists (older records are settled).
        let before: Option<i64> =
            sqlx::query_scalar(engine.sql("SELECT id FROM audit WHERE id = ?"))
                .bind(first - 1)
                .fetch_optional(pool)
                .await?;
        if before.is_none() {
            return Ok(Some(first - 1));
        }
    }
    if let Some(w) = recent.windows(2).find(|w| w[1] != w[0] + 1) {
        return Ok(Some(w[0] + 1));
    }
    let last = *recent.last().expect("not empty");
    Ok(Some(if recent.len() >= RECENT_IDS { last + 1 } else { max + 1 }))
}

/// Rows a page asks the database for: one more than the page holds when the database applies
/// every filter (the extra row says whether more follow), the scan budget when `by` is matched
/// here on what was read.
fn fetch_size(limit: usize, filter: &EventFilter) -> usize {
    match filter.by {
        Some(_) => MAX_SCAN_RECORDS,
        None => limit.saturating_add(1).min(MAX_SCAN_RECORDS),
    }
}

enum Scan {
    After(u64),
    Before(Option<u64>),
}

/// A stored record as `role` may see it, with its cursor as `offset`, if `filter` keeps it.
fn shown(id: u64, record: &str, role: Role, filter: &EventFilter) -> Option<Value> {
    let mut v: Value = serde_json::from_str(record).ok()?;
    visible_to(role, &mut v);
    if !filter.keeps(&v) {
        return None;
    }
    if let Value::Object(o) = &mut v {
        o.insert("offset".into(), json!(id));
    }
    Some(v)
}

impl Drop for Audit {
    /// Stops the writer and waits for it: on its way out it writes the summaries of refusals
    /// still counted (see [`write_notes`]), so nothing counted is lost on an orderly stop.
    fn drop(&mut self) {
        // Replacing the sender drops this handle's end of the queue: the writer drains what is
        // queued, closes every window and returns.
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.notes, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A verified boot of a named host: what `last_boots` keeps.
fn verified_boot(event: &Event) -> Option<&str> {
    match event {
        Event::Boot { verified: true, host: Some(h), .. } => Some(h),
        _ => None,
    }
}

/// What a batch of notes updates besides the log: each host's last verified boot (time,
/// record) and last config or asset fetch (time).
#[derive(Clone, Default)]
pub(crate) struct Boots {
    /// Both sorted: replicas upsert the last-boot and `fetch_progress` rows in the same order,
    /// so two batches cannot each hold a row the other waits for (a deadlock on PostgreSQL or
    /// MariaDB).
    last: std::collections::BTreeMap<String, (u64, String)>,
    fetched: std::collections::BTreeMap<String, u64>,
}

impl Boots {
    /// Notes what `event`, stored as `row` at `at`, updates.
    fn note(&mut self, event: &Event, at: u64, row: &Stored) {
        if let Some(host) = verified_boot(event) {
            self.last.insert(host.to_string(), (at, row.record.clone()));
        }
        if let Some(host) = fetch_of(event) {
            let ms = self.fetched.entry(host.to_string()).or_default();
            *ms = (*ms).max(at);
        }
    }
}

/// The host of a config or token-proven asset fetch record: what `fetch_progress` keeps.
/// An asset fetch attributed by address alone is not progress: any client that can send from
/// the host's address could otherwise keep its install from ever being stalled.
fn fetch_of(event: &Event) -> Option<&str> {
    match event {
        Event::Config { host, .. } => Some(host),
        Event::Asset { host, fetch, .. } if fetch.attributed == "token" => Some(host),
        _ => None,
    }
}

/// Inserts one batch (and the last boots it holds) in one transaction.
async fn write_batch(
    engine: Engine,
    pool: sqlx::AnyPool,
    rows: Vec<Stored>,
    boots: Boots,
) -> Result<(), StoreError> {
    let mut tx = engine.begin(&pool).await?;
    insert_notes(engine, &mut tx, &rows, &boots).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts a batch of notes and its last boots in the caller's transaction.
pub(crate) async fn insert_notes(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    rows: &[Stored],
    boots: &Boots,
) -> Result<(), StoreError> {
    insert_rows(engine, conn, rows).await?;
    for (host, (ms, record)) in &boots.last {
        put_last_boot(engine, conn, host, *ms, record).await?;
    }
    for (host, ms) in &boots.fetched {
        put_fetch_progress(engine, conn, host, *ms).await?;
    }
    Ok(())
}

/// Records `host`'s last fetch at `ms` unless a later one is recorded (newer wins).
pub(crate) async fn put_fetch_progress(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    host: &str,
    ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(engine.sql(engine.upsert_fetch_progress()))
        .bind(host.to_string())
        .bind(ms as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How long the writer keeps trying a batch while the database is unavailable before it gives
/// the batch up (notes queued meanwhile wait in the queue, then are dropped and counted).
const NOTE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Inserts one batch, trying again every second while the database is unavailable (down,
/// locked), for up to [`NOTE_RETRY`].
fn store_batch(store: &Store, rows: Vec<Stored>, boots: Boots) {
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        let (engine, pool) = (store.engine, store.writer.clone());
        let (r, b) = (rows.clone(), boots.clone());
        // On SQLite, through the group writer: the notes share the commit (and its sync) of the
        // changes committed with them, instead of taking the one writer connection for a
        // commit of their own.
        let written = match &store.group {
            Some(group) => store.wait(group.notes(r, b)),
            None => store.wait(write_batch(engine, pool, r, b)),
        };
        match written {
            Ok(()) => return,
            Err(StoreError::Unavailable(e)) if started.elapsed() < NOTE_RETRY => {
                if !logged {
                    tracing::warn!(error = %e, "cannot store audit notes now; trying again every second");
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(error = %e, notes = rows.len(), "cannot store audit notes; this batch is lost");
                return;
            }
        }
    }
}

/// The writer thread: inserts queued notes, a batch per transaction, until the [`Audit`] is
/// dropped. Refusals go through [`Refusals`]; the summaries of windows that closed join the next
/// batch. A batch the database refuses is logged and dropped (notes are not worth blocking the
/// service for; changes' records never come this way).
fn write_notes(store: &Store, queue: &std::sync::mpsc::Receiver<Note>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut batch: Vec<Stored> = Vec::new();
    let mut boots = Boots::default();
    let mut synced = Vec::new();
    let mut closed = Vec::new();
    let mut refusals = Refusals::default();
    // Set by [`Audit::stopping`]: every batch writes the counts of every window.
    let mut stopping = false;
    let now = crate::serve::util::now_ms;
    let push = |batch: &mut Vec<Stored>, boots: &mut Boots, e: &Event, at| {
        let row = Stored::of(e, at);
        boots.note(e, at, &row);
        batch.push(row);
    };
    loop {
        // Wait for a note, or until the next refusal window closes.
        let mut next = match refusals.next_close(now()) {
            None => match queue.recv() {
                Ok(note) => Some(note),
                Err(_) => break, // every Audit handle is gone
            },
            Some(wait) => match queue.recv_timeout(wait) {
                Ok(note) => Some(note),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut close_all = false;
        while let Some(note) = next.take() {
            match note {
                Note::Record(event, at) => push(&mut batch, &mut boots, &event, at),
                Note::Refusal(event, at) => {
                    let key = event.refusal().expect("only refusals are sent as such");
                    if refusals.take(key, at) {
                        push(&mut batch, &mut boots, &event, at);
                    }
                }
                Note::Sync(done) => synced.push(done),
                Note::CloseWindows(done, stop) => {
                    close_all = true;
                    stopping |= stop;
                    closed.push(done);
                }
            }
            if batch.len() < NOTE_BATCH && !close_all {
                next = queue.try_recv().ok();
            }
        }
        for summary in refusals.close(now(), close_all) {
            push(&mut batch, &mut boots, &summary, now());
        }
        if stopping {
            for summary in refusals.flush() {
                push(&mut batch, &mut boots, &summary, now());
            }
        }
        if !batch.is_empty() {
            let rows = std::mem::take(&mut batch);
            let b = std::mem::take(&mut boots);
            store_batch(store, rows, b);
        }
        for done in synced.drain(..).chain(closed.drain(..)) {
            let _ = done.send(());
        }
    }
    // The last handle is gone (the Audit was dropped, which waits for this): write what is
    // still counted. This is the exit path that makes an orderly stop lose no count.
    for summary in refusals.close(0, true) {
        push(&mut batch, &mut boots, &summary, now());
    }
    if !batch.is_empty() {
        store_batch(store, batch, boots);
    }
}

/// Each inventory host's last verified boot answer, followed from `last_boots` into memory, so
/// the fleet view costs no query for it. Only hosts of the inventory are kept, so memory is
/// bounded by its size.
#[derive(Default)]
pub struct LastBoots {
    /// The newest boot time seen; held while refreshing, so refreshes take turns.
    seen_to: std::sync::Mutex<u64>,
    boots: std::sync::Mutex<HashMap<String, BootRecord>>,
    /// Each inventory host's last config or asset fetch (`fetch_progress`), followed the same
    /// way: the progress of an open install that its state does not record.
    fetched_to: std::sync::Mutex<u64>,
    fetched: std::sync::Mutex<HashMap<String, u64>>,
}

/// A host's last verified boot, as `GET /hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRecord {
    pub at: u64,
    pub peer: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// `install` or `local`.
    pub answer: String,
    pub reason: String,
}

/// The fields of a boot record that [`LastBoots`] keeps.
#[derive(serde::Deserialize)]
struct BootLine {
    ms: u64,
    peer: Option<String>,
    ip: Option<String>,
    mac: Option<String>,
    answer: Option<String>,
    reason: Option<String>,
}

/// Replicas' clocks and commit order may differ by this much: a refresh re-reads this far back.
const BOOT_SKEW_MS: u64 = 60_000;

impl LastBoots {
    /// Reads the boots recorded since the last refresh (less [`BOOT_SKEW_MS`]). Blocks.
    pub fn refresh(&self, store: &Store, in_inventory: impl Fn(&str) -> bool) {
        if store.available().is_err() {
            return; // kept as they are; the reload thread must not wait on a database that is down
        }
        let mut seen_to = self.seen_to.lock().unwrap_or_else(|p| p.into_inner());
        let since = seen_to.saturating_sub(BOOT_SKEW_MS) as i64;
        let (pool, engine) = (store.reader.clone(), store.engine);
        let rows = store.wait(async move {
            let rows = sqlx::query(engine.sql("SELECT host, record FROM last_boots WHERE ms >= ?"))
                .bind(since)
                .fetch_all(&pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot read last boots: {e}");
                return;
            }
        };
        let mut boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        boots.retain(|h, _| in_inventory(h));
        for (host, record) in rows {
            let Ok(b) = serde_json::from_str::<BootLine>(&record) else { continue };
            *seen_to = (*seen_to).max(b.ms);
            if !in_inventory(&host) {
                continue;
            }
            let record = BootRecord {
                at: b.ms,
                peer: b.peer.unwrap_or_default(),
                ip: b.ip,
                mac: b.mac,
                answer: b.answer.unwrap_or_default(),
                reason: b.reason.unwrap_or_default(),
            };
            if boots.get(&host).is_none_or(|old| old.at <= record.at) {
                boots.insert(host, record);
            }
        }
    }

    /// Each of `hosts`' last verified boot time, in order, for sorting the fleet (one look under
    /// the lock, no copy of the map).
    pub fn times_of<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Vec<Option<u64>> {
        let boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        hosts.into_iter().map(|h| boots.get(h).map(|b| b.at)).collect()
    }

    /// The host's last verified boot as of the last [`LastBoots::refresh`].
    pub fn get(&self, host: &str) -> Option<BootRecord> {
        self.boots.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned()
    }

    /// Reads the fetches recorded since the last look (less [`BOOT_SKEW_MS`]): one indexed
    /// query, whatever the number of hosts. Blocks.
    pub fn refresh_fetches(&self, store: &Store, in_inventory: impl Fn(&str) -> bool) {
        if store.available().is_err() {
            return;
        }
        let mut seen_to = self.fetched_to.lock().unwrap_or_else(|p| p.into_inner());
        let since = seen_to.saturating_sub(BOOT_SKEW_MS) as i64;
        let (pool, engine) = (store.reader.clone(), store.engine);
        let rows = store.wait(async move {
            let rows = sqlx::query(engine.sql("SELECT host, ms FROM fetch_progress WHERE ms >= ?"))
                .bind(since)
                .fetch_all(&pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)? as u64)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot read fetch progress: {e}");
                return;
            }
        };
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched.retain(|h, _| in_inventory(h));
        for (host, ms) in rows {
            *seen_to = (*seen_to).max(ms);
            if in_inventory(&host) {
                let at = fetched.entry(host).or_default();
                *at = (*at).max(ms);
            }
        }
    }

    /// The host's last config or asset fetch as of the last [`LastBoots::refresh_fetches`].
    pub fn fetched(&self, host: &str) -> Option<u64> {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).get(host).copied()
    }

    /// Each of `hosts`' last fetch, in order (one look under the lock).
    pub fn fetched_of<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Vec<Option<u64>> {
        let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        hosts.into_iter().map(|h| fetched.get(h).copied()).collect()
    }
}

/// Most records read for one host's timeline (newest first, through the `host` index).
pub const MAX_TIMELINE_RECORDS: usize = 20_000;
/// Most `done` and `failed` records read for `/fleet/stats` (newest first).
pub const MAX_STATS_RECORDS: usize = 200_000;

impl Audit {
    /// The newest `max` records of `host` (at most [`MAX_TIMELINE_RECORDS`]), oldest first, as
    /// stored. Blocks.
    pub fn host_records(&self, host: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let (pool, engine) = (self.store.reader.clone(), self.store.engine);
        let host = host.to_ascii_lowercase();
        let max = max.min(MAX_TIMELINE_RECORDS) as i64;
        let mut rows = self.store.wait(async move {
            let sql = "SELECT record FROM audit WHERE host = ? ORDER BY id DESC LIMIT ?";
            sqlx::query_scalar::<_, String>(engine.sql(sql))
                .bind(host)
                .bind(max)
                .fetch_all(&pool)
                .await
                .map_err(StoreError::from)
        })?;
        rows.reverse();
        Ok(rows)
    }

    /// The `done` and `failed` records made at or after `since_ms`, newest first, at most
    /// [`MAX_STATS_RECORDS`], as stored. Blocks.
    pub fn outcomes_since(&self, since_ms: u64) -> Result<Vec<String>, StoreError> {
        let (pool, engine) = (self.store.reader.clone(), self.store.engine);
        let since = since_ms.min(i64::MAX as u64) as i64;
        self.store.wait(async move {
            let sql = format!(
                "SELECT record FROM audit WHERE event IN ('done', 'failed') AND ms >= ? \
                 ORDER BY id DESC LIMIT {MAX_STATS_RECORDS}"
            );
            sqlx::query_scalar::<_, String>(engine.sql_owned(sql))
                .bind(since)
                .fetch_all(&pool)
                .await
                .map_err(StoreError::from)
        })
    }
}

/// Up to `limit` stored records from cursor `since` on, as stored (one JSON object each, the
/// shape of the old `audit.jsonl` lines), and the cursor after them: `bootforge audit export`.
pub fn export(store: &Store, since: u64, limit: usize) -> Result<(Vec<String>, u64), StoreError> {
    let (pool, engine) = (store.reader.clone(), store.engine);
    let rows = store.wait(async move {
        let since = since.min(i64::MAX as u64) as i64;
        let below = settled(engine, &pool, since).await?.unwrap_or(i64::MAX);
        let rows = sqlx::query(
            engine.sql("SELECT id, record FROM audit WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"),
        )
        .bind(since)
        .bind(below)
        .bind(limit as i64)
        .fetch_all(&pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)? as u64, r.try_get::<String, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    })?;
    let next = rows.last().map_or(since, |(id, _)| id + 1);
    Ok((rows.into_iter().map(|(_, r)| r).collect(), next))
}

/// Deletes records older than their retention period: `keep_boots` for the kinds of
/// [`BOOT_RECORD_KINDS`](crate::serve::domain::event::BOOT_RECORD_KINDS), `keep_changes` for
/// the others (`None`: kept for ever), times in milliseconds since 1970 measured from `now`.
/// Deletes in slices of ids between the oldest and the newest expired record, one short
/// transaction each, so the writer and changes are never held up for long, and stops after
/// `budget` (the next call goes on where it stopped). Returns the number deleted. Blocks.
pub fn prune(
    store: &Store,
    now: u64,
    keep_boots: Option<u64>,
    keep_changes: Option<u64>,
    budget: std::time::Duration,
) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    use crate::serve::domain::event::BOOT_RECORD_KINDS;
    let mut deleted = 0;
    for (keep, boots) in [(keep_boots, true), (keep_changes, false)] {
        let Some(keep) = keep else { continue };
        let cutoff = now.saturating_sub(keep) as i64;
        let (pool, engine) = (store.writer.clone(), store.engine);
        deleted += store.wait(async move {
            // The kinds are constants of this crate: safe to write into the statement.
            let kinds =
                BOOT_RECORD_KINDS.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
            let not = if boots { "" } else { "NOT " };
            let which = format!("ms < ? AND event {not}IN ({kinds})");
            let range = format!("SELECT MIN(id), MAX(id) FROM audit WHERE {which}");
            let row = sqlx::query(engine.sql_owned(range)).bind(cutoff).fetch_one(&pool).await?;
            let (Some(low), Some(high)) =
                (row.try_get::<Option<i64>, _>(0)?, row.try_get::<Option<i64>, _>(1)?)
            else {
                return Ok(0);
            };
            let sql = format!("DELETE FROM audit WHERE id >= ? AND id < ? AND {which}");
            let (mut from, mut n) = (low, 0u64);
            while from <= high && started.elapsed() < budget {
                let to = from + 10_000;
                let mut tx = engine.begin(&pool).await?;
                let r = sqlx::query(engine.sql_owned(sql.clone()))
                    .bind(from)
                    .bind(to)
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n += r.rows_affected();
                from = to;
            }
            Ok::<_, StoreError>(n)
        })?;
    }
    Ok(deleted)
}

/// Every record of the database at `url` as JSON lines (the old `audit.jsonl`'s text), read
/// next to a running service: for tests and small tools. Large logs: [`export`] in pages.
pub fn dump(url: &str) -> anyhow::Result<String> {
    let store = Store::open_reader(url)?;
    let (mut text, mut since) = (String::new(), 0);
    loop {
        let (lines, next) = export(&store, since, 5000)?;
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        if lines.len() < 5000 {
            return Ok(text);
        }
        since = next;
    }
}

/// Writes imported records as they were (their times included), in order: for the import from
/// the old `audit.jsonl` and for `state copy`, inside their transaction. `records` are JSON
/// objects as stored (`time`, `ms`, `event`, …).
pub(crate) async fn insert_stored(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    records: &[Value],
) -> Result<(), StoreError> {
    let rows: Vec<Stored> = records
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if let Value::Object(o) = &mut v {
                o.remove("offset");
            }
            Stored {
                ms: v["ms"].as_u64().unwrap_or(0),
                event: v["event"].as_str().unwrap_or("").chars().take(64).collect(),
                host: v["host"].as_str().map(str::to_ascii_lowercase),
                record: v.to_string(),
            }
        })
        .collect();
    insert_rows(engine, conn, &rows).await
}

/// Records a host's last boot as it was (import and copy).
pub(crate) async fn put_last_boot(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    host: &str,
    ms: u64,
    record: &str,
) -> Result<(), StoreError> {
    sqlx::query(engine.sql(engine.upsert_last_boot()))
        .bind(host.to_string())
        .bind(ms as i64)
        .bind(record.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::domain::actor::{Actor, Via};
    use crate::serve::domain::event::LOGIN_FAILED;
    use std::net::IpAddr;

    fn store(dir: &std::path::Path) -> Arc<Store> {
        Arc::new(Store::open(&Store::default_url(dir), None).unwrap())
    }

    fn denied(peer: IpAddr, reason: &'static str) -> Event {
        Event::Denied { route: "/hosts", peer, status: 401, reason }
    }

    #[test]
    fn append_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(store(dir.path())).unwrap();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..5 {
            let host = format!("h{i}");
            a.note(&Event::Reload {
                who: Actor { by: host.clone(), role: Role::Admin, via: Via::Token },
                peer,
                ok: true,
            });
            a.sync();
            a.append_durable(&Event::Done {
                host,
                install: "x".into(),
                peer,
                profile: None,
                duration_ms: None,
            })
            .unwrap();
        }
        let (all, end) = a.read_since(0, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[1]["event"], "done");
        let (page, next) = a.read_since(0, 3, usize::MAX).unwrap();
        assert_eq!(page.len(), 3);
        let (rest, end2) = a.read_since(next, 100, usize::MAX).unwrap();
        assert_eq!(rest.len(), 7);
        assert_eq!(end, end2);
        assert!(a.read_since(end + 50, 10, usize::MAX).unwrap().0.is_empty());
        // A byte budget ends the page early, but never before the first record.
        let (small, cut) = a.read_since(0, 100, 1).unwrap();
        assert_eq!(small.len(), 1);
        assert_eq!(a.read_since(cut, 100, usize::MAX).unwrap().0.len(), 9);
    }

    #[test]
    fn refusals_after_the_stop_and_at_drop_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Audit::open(s.clone()).unwrap();
        let p: IpAddr = "10.0.0.8".parse().unwrap();
        a.stopping();
        // A request that outlives the stop: its refusals are stored once its batch is.
        for _ in 0..3 {
            a.note(&denied(p, "missing-token"));
        }
        a.sync();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let counted: Vec<_> = records.iter().filter(|r| r["event"] == "refused-summary").collect();
        assert_eq!(records.len(), 1 + counted.len(), "{records:?}");
        assert_eq!(counted.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), 2);
        // Without a stop, dropping the Audit writes what is counted before drop returns.
        let b = Audit::open(s.clone()).unwrap();
        for _ in 0..3 {
            b.note(&denied(p, "unknown-token"));
        }
        drop(b);
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let last = records.last().unwrap();
        assert_eq!(
            (last["reason"].as_str(), last["count"].as_u64()),
            (Some("unknown-token"), Some(2))
        );
    }

    #[test]
    fn the_writer_aggregates_refusals_and_writes_the_rest_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(store(dir.path())).unwrap();
        let p: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..5000 {
            a.note(&denied(p, "missing-token"));
            a.note(&Event::MediaDenied { host: None, format: "iso", reason: "unsigned", peer: p });
        }
        a.note(&Event::Done {
            host: "h".into(),
            install: "x".into(),
            peer: p,
            profile: None,
            duration_ms: None,
        });
        a.sync();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        assert_eq!(records.len(), 3, "one of each refusal, and the other record: {records:?}");
        a.close_windows();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let summaries: Vec<_> =
            records.iter().filter(|r| r["event"] == "refused-summary").collect();
        assert_eq!(summaries.len(), 2, "{records:?}");
        for s in summaries {
            assert_eq!(s["count"], 4999, "{s}");
            assert_eq!(s["peer"], "10.0.0.7");
        }
    }

    #[test]
    fn pages_read_at_most_the_budget_and_cursors_find_everything() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(store(dir.path())).unwrap();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let n = MAX_SCAN_RECORDS * 2 + 500;
        for i in 0..n {
            let e = Event::Done {
                host: format!("filler-{i}"),
                install: "x".into(),
                peer,
                profile: None,
                duration_ms: None,
            };
            while a.notes.try_send(Note::Record(e.clone(), 1)).is_err() {
                a.sync();
            }
        }
        a.note(&Event::Done {
            host: "far".into(),
            install: "y".into(),
            peer,
            profile: None,
            duration_ms: None,
        });
        a.sync();
        // `by` is filtered in memory: its pages read the budget and go on with a cursor.
        let filter = EventFilter::parse(|n| (n == "by").then(|| "nobody".into()));
        let first = a.read_page(0, 10, MAX_PAGE_BYTES, &filter, Role::Read).unwrap();
        assert!(first.events.is_empty());
        assert_eq!(first.at_end, Some(false));
        assert_eq!(first.scanned, MAX_SCAN_RECORDS as u64);
        let (mut since, mut pages) = (first.next, 1);
        loop {
            let page = a.read_page(since, 10, MAX_PAGE_BYTES, &filter, Role::Read).unwrap();
            pages += 1;
            assert!(page.scanned <= MAX_SCAN_RECORDS as u64);
            since = page.next;
            if page.at_end == Some(true) {
                break;
            }
        }
        assert_eq!(pages, 3);
        // `host` is indexed: the one record far down the log comes at once.
        let far = EventFilter::parse(|n| (n == "host").then(|| "FAR".into()));
        let page = a.read_page(0, 10, MAX_PAGE_BYTES, &far, Role::Read).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.at_end, Some(true));
        // Newest first, paging back to the start through `before` cursors.
        let filler0 = EventFilter::parse(|n| (n == "by").then(|| "nobody".into()));
        let (mut before, mut reads) = (None, 0);
        loop {
            let page = a.read_newest(10, before, &filler0, Role::Read).unwrap();
            reads += 1;
            assert!(page.scanned <= MAX_SCAN_RECORDS as u64);
            match page.before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        assert_eq!(reads, 3);
        let first = a.read_newest(1, None, &Default::default(), Role::Read).unwrap();
        assert_eq!(first.events[0]["host"], "far");
    }

    #[test]
    fn refused_login_names_are_for_admin_only() {
        let e = Event::LoginFailed {
            name: Some("hunter2".into()),
            via: Via::LdapSession,
            peer: "10.0.0.1".parse().unwrap(),
            reason: "bad password",
        };
        let v: Value = serde_json::from_str(&Stored::of(&e, 5).record).unwrap();
        assert_eq!(v["event"], LOGIN_FAILED, "the tag visible_to looks for");
        for (role, shown) in [(Role::Read, false), (Role::Reimage, false), (Role::Admin, true)] {
            let mut r = v.clone();
            visible_to(role, &mut r);
            assert_eq!(r.get("name").is_some(), shown, "{role:?}");
        }
    }

    const BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

    #[test]
    fn retention_keeps_changes_longer_than_boot_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Audit::open(s.clone()).unwrap();
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let day = 86_400_000u64;
        let boot = Event::Boot {
            host: Some("n1".into()),
            verified: true,
            answer: "local",
            kind: "x",
            reason: "r",
            install: None,
            peer,
            ip: None,
            mac: None,
            medium: "iso",
            platform: "efi",
            uuid: None,
            expected_uuid: None,
        };
        let done = Event::Done {
            host: "n1".into(),
            install: "x".into(),
            peer,
            profile: None,
            duration_ms: None,
        };
        for (e, age) in [(&boot, 40), (&done, 40), (&boot, 10), (&done, 400), (&boot, 1)] {
            a.notes.send(Note::Record(e.clone(), 1_000 * day - age * day)).unwrap();
        }
        a.sync();
        let deleted = prune(&s, 1_000 * day, Some(30 * day), Some(365 * day), BUDGET).unwrap();
        assert_eq!(deleted, 2, "the 40-day boot and the 400-day done");
        let (left, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let ages: Vec<(String, u64)> = left
            .iter()
            .map(|r| {
                (
                    r["event"].as_str().unwrap().to_string(),
                    (1_000 * day - r["ms"].as_u64().unwrap()) / day,
                )
            })
            .collect();
        assert_eq!(ages, [("done".into(), 40), ("boot".into(), 10), ("boot".into(), 1)]);
        // Without a period nothing of that class goes.
        assert_eq!(prune(&s, 1_000 * day, None, None, BUDGET).unwrap(), 0);
        assert_eq!(prune(&s, 2_000 * day, Some(1), None, BUDGET).unwrap(), 2);
    }

    #[test]
    fn every_record_kind_is_classified_once() {
        use crate::serve::domain::event::BOOT_RECORD_KINDS;
        // Kinds a refusal can have are all boot records (they are what anyone can cause).
        for kind in ["boot", "media-denied", "node-token-denied", "denied", "login-failed"] {
            assert!(BOOT_RECORD_KINDS.contains(&kind), "{kind}");
        }
        let changes = [
            "flag-set",
            "flag-cancelled",
            "done",
            "failed",
            "started",
            "login",
            "inventory-changed",
            "bmc-media",
            "bmc-trust",
            "bmc-power",
        ];
        for kind in changes {
            assert!(!BOOT_RECORD_KINDS.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn last_boots_keep_the_newest_verified_boot_of_inventory_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Audit::open(s.clone()).unwrap();
        let boot = |host: &str, verified: bool, answer: &'static str| Event::Boot {
            host: Some(host.into()),
            verified,
            answer,
            kind: "x",
            reason: "r",
            install: None,
            peer: "10.0.0.5".parse().unwrap(),
            ip: None,
            mac: None,
            medium: "iso",
            platform: "efi",
            uuid: None,
            expected_uuid: None,
        };
        a.note(&boot("n1", true, "install"));
        a.note(&boot("n1", true, "local"));
        a.note(&boot("n1", false, "install"));
        a.note(&boot("gone", true, "local"));
        a.sync();
        let lb = LastBoots::default();
        lb.refresh(&s, |h| h != "gone");
        assert_eq!(lb.get("n1").unwrap().answer, "local", "the newest verified one");
        assert!(lb.get("gone").is_none());
    }
}
