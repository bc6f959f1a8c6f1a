//! Hosts' states: reading them, and changing one in a transaction ([`Store::change`]).
//!
//! A host's row holds its [`HostState`] as JSON, its version (the compare-and-set key), and
//! `deciding`: whether the state can make a boot anything but local (a flag, or a first-answer
//! install whose repeat window may be open). Hosts without a row have the default state.
//!
//! [`Store::may_decide`] answers from memory, so a boot storm of unflagged hosts costs no query:
//! the set of deciding hosts ([`Deciding`]) is exact for this process's own commits (a host joins
//! it before its change commits) and follows other replicas' commits: on PostgreSQL at once,
//! through the `NOTIFY` every change sends in its own transaction (see [`super::listen`]), on
//! MariaDB through [`Store::poll`], which the reload thread runs every 100 ms. It errs only
//! towards `true`: a `true` is always checked against the row itself. Until the set has been
//! read once (the service started while the database was down) every host "may decide", so its
//! boot asks the database, which then answers local with a stated reason.
//!
//! Each piece of news about a host carries the version it was written at, and news older than
//! what is known of that host is ignored: a notification delayed behind this process's own
//! later commit (or a full read) cannot take a flagged host out of the set.

use super::engine::{is_conflict, Engine};
use super::{Change, Store, StoreError, MAX_STORED_NAME};
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::HostState;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The PostgreSQL channel every committed host change is announced on; the payload is
/// [`News::payload`].
pub const CHANNEL: &str = "bootforge_hosts";

/// With the PostgreSQL listener connected, how often a full read of the deciding set is still
/// made (a safety net for a listener connection that died without anyone noticing).
pub const LISTENING_RESCAN: Duration = Duration::from_secs(30);

/// The hosts whose state may decide a boot, as this process knows them.
#[derive(Default)]
pub struct Deciding {
    hosts: HashSet<String>,
    /// The newest version known of each host in `hosts`, and of hosts this process or a
    /// notification recently said no longer decide (dropped at the next full read).
    versions: HashMap<String, u64>,
    /// Whether a full read has succeeded yet.
    known: bool,
    /// When the last full read succeeded.
    scanned: Option<Instant>,
    /// The hosts table's [`Fingerprint`] taken just before the last full read: while it is the
    /// same, no row changed since, and [`Store::poll`] need not read the set again.
    scanned_at: Option<Fingerprint>,
    /// Hosts this process's own commits made deciding, with when: a full read whose query ran
    /// before such a commit must not drop them (kept for [`RECENT`]).
    recent: HashMap<String, Instant>,
}

pub type SharedDeciding = Arc<RwLock<Deciding>>;

/// One host's news: it was written at `version`, and decides boots or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct News {
    pub host: String,
    pub version: u64,
    pub decides: bool,
}

impl News {
    /// The `NOTIFY` payload: `VERSION DECIDES HOST` (`DECIDES` is 0 or 1).
    pub fn payload(&self) -> String {
        format!("{} {} {}", self.version, u8::from(self.decides), self.host)
    }

    /// A payload back; `None` if it is not one this service sends.
    pub fn parse(payload: &str) -> Option<News> {
        let mut parts = payload.splitn(3, ' ');
        let version = parts.next()?.parse().ok()?;
        let decides = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let host = parts.next()?;
        if host.is_empty() || host.len() > MAX_STORED_NAME || host.chars().any(char::is_control) {
            return None;
        }
        Some(News { host: host.to_string(), version, decides })
    }
}

impl Deciding {
    /// Whether `host` may decide its boot (everyone, until the set was read once).
    pub fn may_decide(&self, host: &str) -> bool {
        !self.known || self.hosts.contains(host)
    }

    pub fn known(&self) -> bool {
        self.known
    }

    /// A host is about to be changed by this process: it may decide until the change says.
    pub fn joining(&mut self, host: &str) {
        self.hosts.insert(host.to_string());
    }

    /// This process committed `news`: as [`Deciding::learn`], and a host it made deciding stays
    /// so through full reads for [`RECENT`].
    pub fn committed(&mut self, news: News) {
        if news.decides {
            self.recent.insert(news.host.clone(), Instant::now());
        }
        self.learn(news);
    }

    /// Applies news, unless something newer is known of the host (the same version again is
    /// the same state: applied, which also takes out a host that joined for a change that
    /// wrote nothing). A host news made deciding stays so through full reads for [`RECENT`]:
    /// a full read whose query ran before the news was committed must not drop it (until the
    /// next full read, 30 s away while the listener is connected).
    pub fn learn(&mut self, news: News) {
        if self.versions.get(&news.host).is_some_and(|&v| v > news.version) {
            return;
        }
        if news.decides {
            self.hosts.insert(news.host.clone());
            self.recent.insert(news.host.clone(), Instant::now());
        } else {
            self.hosts.remove(&news.host);
            self.recent.remove(&news.host);
        }
        self.versions.insert(news.host, news.version);
    }

    /// Replaces everything with a full read (deciding hosts and their versions).
    pub fn replace(&mut self, scan: Vec<(String, u64)>) {
        self.versions = scan.iter().cloned().collect();
        self.hosts = scan.into_iter().map(|(h, _)| h).collect();
        // The query may have run just before one of this process's own commits: an
        // acknowledged flag is never dropped from the set until the next read.
        self.recent.retain(|_, at| at.elapsed() < RECENT);
        self.hosts.extend(self.recent.keys().cloned());
        self.known = true;
        self.scanned = Some(Instant::now());
        self.scanned_at = None; // unknown here: the caller that took one sets it
    }

    fn scanned_within(&self, d: Duration) -> bool {
        self.scanned.is_some_and(|t| t.elapsed() < d)
    }
}

/// A full read of the deciding hosts and their versions.
pub(crate) async fn scan_deciding(
    engine: Engine,
    pool: &AnyPool,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = sqlx::query(engine.sql("SELECT name, version FROM hosts WHERE deciding = ?"))
        .bind(1i32)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?.max(0) as u64)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// How long a host this process made deciding stays in the set whatever a rescan read (a
/// rescan's query runs in well under this).
const RECENT: Duration = Duration::from_secs(2);

/// How many times a change is run again after losing a race before it gives up ([`StoreError::Busy`]).
const MAX_ATTEMPTS: usize = 20;

/// Whether a state can make a boot anything but local.
pub fn decides(st: &HostState) -> bool {
    st.flag.is_some() || st.unclosed_window().is_some()
}

pub(crate) fn parse(name: &str, json: &str) -> Result<HostState, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::Database(format!("the stored state of {name} does not parse: {e}"))
    })
}

/// One host's row, read inside `exec`'s transaction or pool.
pub(crate) async fn read_row(
    engine: Engine,
    exec: impl sqlx::Executor<'_, Database = sqlx::Any>,
    host: &str,
) -> Result<Option<HostState>, StoreError> {
    let row = sqlx::query(engine.sql("SELECT state FROM hosts WHERE name = ?"))
        .bind(host.to_string())
        .fetch_optional(exec)
        .await?;
    row.map(|r| parse(host, &r.try_get::<String, _>(0)?)).transpose()
}

impl Store {
    /// `host`'s state; the default (never flagged) when it has none.
    pub async fn read(&self, host: &str) -> Result<HostState, StoreError> {
        if host.len() > MAX_STORED_NAME {
            return Ok(HostState::default()); // such a host can never have been written
        }
        self.available()?;
        let (pool, engine, host) = (self.reader.clone(), self.engine, host.to_string());
        self.run(async move { Ok(read_row(engine, &pool, &host).await?.unwrap_or_default()) }).await
    }

    /// [`Store::read`] from a thread that may block.
    pub fn read_blocking(&self, host: &str) -> Result<HostState, StoreError> {
        if host.len() > MAX_STORED_NAME {
            return Ok(HostState::default());
        }
        self.available()?;
        let (pool, engine, host) = (self.reader.clone(), self.engine, host.to_string());
        self.wait(async move { Ok(read_row(engine, &pool, &host).await?.unwrap_or_default()) })
    }

    /// Every stored state, by host (for the fleet view); a row that does not parse is reported as
    /// its own error, the others are listed all the same. Blocks.
    ///
    /// Answered from the last read while the table's [`Fingerprint`] (one query of one row) is
    /// the same, so the fleet page of a large fleet does not read and parse every row on every
    /// request; otherwise every row is read again, and only rows whose version, time or length
    /// changed are parsed again. Never staler than the fingerprint query, which runs on every
    /// call: a change committed by any replica before it is seen.
    pub fn states_blocking(&self) -> Result<Arc<States>, StoreError> {
        self.available()?;
        let (pool, engine) = (self.reader.clone(), self.engine);
        let mut cache = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let cached = cache.clone();
        let fresh = self.wait(async move {
            let now = fingerprint(engine, &pool).await?;
            match cached {
                Some(c) if c.fingerprint == now => Ok(c),
                old => all_states(&pool, old.as_ref()).await,
            }
        })?;
        let states = fresh.states.clone();
        *cache = Some(fresh);
        Ok(states)
    }

    /// Whether `host`'s state may decide its boot: `false` means the boot is local without a
    /// query (see the module documentation).
    pub fn may_decide(&self, host: &str) -> bool {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).may_decide(host)
    }

    /// Whether the deciding set has been read at least once (it has not if the service started
    /// while the database was down).
    pub fn deciding_known(&self) -> bool {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).known()
    }

    /// Hosts whose state may decide a boot (the orphan sweep's candidates).
    pub fn deciding_hosts(&self) -> Vec<String> {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).hosts.iter().cloned().collect()
    }

    /// The reload thread's look at other replicas' commits, every 100 ms: a full read of the
    /// deciding set ([`Store::rescan`]), except on PostgreSQL while its listener is connected,
    /// where notifications keep the set current and a full read is made only every
    /// [`LISTENING_RESCAN`]. Otherwise the full read is skipped while the hosts table's
    /// [`Fingerprint`] (one row) is the one taken before the last full read, i.e. while no row
    /// changed (still made every [`LISTENING_RESCAN`], as a safety net): reading 10,000 flagged
    /// hosts ten times a second cost a large share of a core.
    pub fn poll(&self) {
        let listening = self.listening.load(std::sync::atomic::Ordering::SeqCst);
        let (recent, last) = {
            let d = self.deciding.read().unwrap_or_else(|p| p.into_inner());
            (d.scanned_within(LISTENING_RESCAN), d.scanned_at)
        };
        if recent && listening {
            return;
        }
        if recent && last.is_some() && self.available().is_ok() {
            let (pool, engine) = (self.reader.clone(), self.engine);
            if let Ok(now) = self.wait(async move { fingerprint(engine, &pool).await }) {
                if Some(now) == last {
                    return;
                }
            }
        }
        self.rescan();
    }

    /// Re-reads which hosts may decide a boot, to follow other replicas' commits. On error the
    /// set is kept (it only ever errs towards `true` for this process's own changes; another
    /// replica's new flag waits for the database to answer again).
    pub fn rescan(&self) {
        if self.available().is_err() {
            return; // the monitor re-reads the set when the database is back
        }
        let (pool, engine) = (self.reader.clone(), self.engine);
        // The fingerprint first: a commit between the two makes the next poll read again.
        let read = self.wait(async move {
            let before = fingerprint(engine, &pool).await?;
            Ok::<_, StoreError>((before, scan_deciding(engine, &pool).await?))
        });
        match read {
            Ok((before, scan)) => {
                let mut d = self.deciding.write().unwrap_or_else(|p| p.into_inner());
                d.replace(scan);
                d.scanned_at = Some(before);
            }
            Err(e) => {
                tracing::warn!("cannot read which hosts are flagged: {e}");
                if matches!(e, StoreError::Unavailable(_)) {
                    self.health.suspect();
                }
            }
        }
    }

    /// Changes `host`'s state in one transaction: reads its row, runs `change` on it (with the
    /// database's time), and if `change` says `write`, stores the result under a compare-and-set
    /// on the version read and inserts its audit record, then commits. If another writer
    /// committed first, `change` runs again on what it wrote (so it must be a function of the
    /// state and the time, as the lifecycle's are). An `Err` from `change` rolls back and is
    /// passed through as `Ok(Err(_))`.
    ///
    /// `change` runs on the store's runtime while the transaction is open: it must be quick and
    /// must not wait on anything.
    pub async fn change<T, E>(
        &self,
        host: &str,
        change: impl FnMut(&mut HostState, u64) -> Result<Change<T>, E> + Send + 'static,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.change_until(host, None, change).await
    }

    /// [`Store::change`] for a caller that stops waiting at `deadline` (a node's boot): on
    /// PostgreSQL and MariaDB the transaction is rolled back rather than committed once the
    /// deadline has passed (`Err(Busy)`), so a decision nobody received is not written. The
    /// COMMIT itself, sent before the deadline, can still land after it. On SQLite the group
    /// writer takes the file's lock before any change runs, so a change that checks the
    /// deadline itself (first thing) needs no more.
    pub async fn change_until<T, E>(
        &self,
        host: &str,
        deadline: Option<std::time::Instant>,
        change: impl FnMut(&mut HostState, u64) -> Result<Change<T>, E> + Send + 'static,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        if host.len() > MAX_STORED_NAME {
            return Err(StoreError::NameTooLong);
        }
        self.available()?;
        // Joins the deciding set before the commit, so no reader of this process can miss it;
        // left again below if the state that committed cannot decide a boot.
        self.deciding.write().unwrap_or_else(|p| p.into_inner()).joining(host);
        let result = match &self.group {
            // SQLite: through the group writer, whose answer always says what is stored.
            Some(group) => {
                let queued = group.change(host, change);
                let result = queued.await.map(|(value, at)| (value, Some(at)));
                if let Err(StoreError::Unavailable(_)) = &result {
                    self.health.suspect();
                }
                result
            }
            None => {
                let (pool, engine, name) = (self.writer.clone(), self.engine, host.to_string());
                self.run(transact(pool, engine, name, deadline, change)).await
            }
        };
        let news = match &result {
            Ok((_, Some((version, decides)))) => {
                Some(News { host: host.to_string(), version: *version, decides: *decides })
            }
            // Nothing written (or unknown): what the database holds decides; unknown stays in.
            _ => match self.read(host).await {
                Ok(st) => Some(News {
                    host: host.to_string(),
                    version: st.version,
                    decides: decides(&st),
                }),
                Err(_) => None,
            },
        };
        if let Some(news) = news {
            self.deciding.write().unwrap_or_else(|p| p.into_inner()).committed(news);
        }
        result.map(|(value, _)| value)
    }
}

/// Every stored state by host, each parsed or the reason it does not parse.
pub type States = HashMap<String, Result<HostState, String>>;

/// A summary of the whole `hosts` table that changes with every committed change: the number
/// of rows and the sums of their versions and update times.
///
/// Why it is enough to tell "nothing changed": every write through the store adds one to its
/// row's version (so the sum of versions grows with each commit, on every replica), and no row
/// is deleted while the service runs (`state import` and `state copy` only fill an empty
/// database). The times are there for rows rewritten behind the store's back; such an edit
/// that keeps both a row's version and its time is not seen until the next change (the state's
/// length was summed too at first: that read every state and cost more than the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    rows: i64,
    versions: i64,
    times: i64,
}

impl Fingerprint {
    fn add(&mut self, version: i64, time: i64) {
        self.rows += 1;
        self.versions = self.versions.wrapping_add(version);
        self.times = self.times.wrapping_add(time);
    }
}

/// The table's fingerprint now.
pub(crate) async fn fingerprint(engine: Engine, pool: &AnyPool) -> Result<Fingerprint, StoreError> {
    let r = sqlx::query(engine.hosts_fingerprint_sql()).fetch_one(pool).await?;
    Ok(Fingerprint { rows: r.try_get(0)?, versions: r.try_get(1)?, times: r.try_get(2)? })
}

/// The last full read of the hosts' states, with the fingerprint of the rows it read and what
/// each row's state was parsed from (version, time, length in bytes).
#[derive(Clone)]
pub struct StatesRead {
    fingerprint: Fingerprint,
    states: Arc<States>,
    parsed_from: Arc<HashMap<String, (i64, i64, usize)>>,
}

/// Reads every row; a row whose version, time and length are those of `old`'s is not parsed
/// again. The fingerprint is summed from the rows read, so it describes exactly this read.
async fn all_states(pool: &AnyPool, old: Option<&StatesRead>) -> Result<StatesRead, StoreError> {
    let rows =
        sqlx::query("SELECT name, version, updated_ms, state FROM hosts").fetch_all(pool).await?;
    let mut fingerprint = Fingerprint::default();
    let mut states = HashMap::with_capacity(rows.len());
    let mut parsed_from = HashMap::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0)?;
        let text: &str = r.try_get(3)?;
        let key: (i64, i64, usize) = (r.try_get(1)?, r.try_get(2)?, text.len());
        fingerprint.add(key.0, key.1);
        let kept = old
            .filter(|o| o.parsed_from.get(&name) == Some(&key))
            .and_then(|o| o.states.get(&name).cloned());
        let st = match kept {
            Some(st) => st,
            None => parse(&name, text).map_err(|e| e.to_string()),
        };
        parsed_from.insert(name.clone(), key);
        states.insert(name, st);
    }
    Ok(StatesRead { fingerprint, states: Arc::new(states), parsed_from: Arc::new(parsed_from) })
}

/// The body of [`Store::change`]: returns the caller's value and, when a state was written,
/// its version and whether it decides boots.
async fn transact<T, E>(
    pool: AnyPool,
    engine: Engine,
    host: String,
    deadline: Option<std::time::Instant>,
    mut change: impl FnMut(&mut HostState, u64) -> Result<Change<T>, E>,
) -> Result<(Result<T, E>, Option<(u64, bool)>), StoreError> {
    let mut pause = Duration::from_millis(2);
    for _ in 0..MAX_ATTEMPTS {
        let mut tx = engine.begin(&pool).await?;
        let now = match engine.now_sql() {
            Some(q) => {
                let ms: i64 = sqlx::query_scalar(q).fetch_one(&mut *tx).await?;
                ms.max(0) as u64
            }
            None => crate::serve::util::now_ms(),
        };
        let stored = read_row(engine, &mut *tx, &host).await?;
        let existed = stored.is_some();
        let mut st = stored.unwrap_or_default();
        let read_version = st.version;
        let Change { value, write, record } = match change(&mut st, now) {
            Ok(c) => c,
            Err(e) => {
                tx.rollback().await?;
                return Ok((Err(e), None));
            }
        };
        if !write {
            tx.rollback().await?;
            return Ok((Ok(value), None));
        }
        st.version = read_version + 1;
        st.updated_at = now;
        let d = decides(&st);
        let won =
            write_row(engine, &mut tx, &host, &st, existed, read_version, record.as_ref()).await?;
        if won {
            if engine == Engine::Postgres {
                // Delivered to every listener when (and only if) this transaction commits, in
                // commit order. `IS NULL`: pg_notify returns void, which no driver decodes.
                let news = News { host: host.clone(), version: st.version, decides: d };
                sqlx::query("SELECT pg_notify($1, $2) IS NULL")
                    .bind(CHANNEL)
                    .bind(news.payload())
                    .execute(&mut *tx)
                    .await?;
            }
            // The caller stopped waiting (the row lock or the inserts took too long): nobody
            // will act on this decision, so it must not be stored.
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                tx.rollback().await?;
                return Err(StoreError::Busy);
            }
            match tx.commit().await {
                Ok(()) => return Ok((Ok(value), Some((st.version, d)))),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let _ = tx.rollback().await;
        }
        // Lost the race: another writer committed this host first. Run again on its result.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Err(StoreError::Busy)
}

/// Writes `state` for `host` as it is (its version and time included), replacing any row: for
/// the import from files and `state copy`, inside their transaction.
pub(crate) async fn put(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    host: &str,
    st: &HostState,
) -> Result<(), StoreError> {
    sqlx::query(engine.sql("DELETE FROM hosts WHERE name = ?"))
        .bind(host.to_string())
        .execute(&mut *conn)
        .await?;
    insert_row(engine, conn, host, st).await?;
    Ok(())
}

/// Inserts the row of `host` holding `st` (no row of that name may exist).
async fn insert_row(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    host: &str,
    st: &HostState,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    sqlx::query(engine.sql(
        "INSERT INTO hosts (name, version, deciding, updated_ms, state) VALUES (?, ?, ?, ?, ?)",
    ))
    .bind(host.to_string())
    .bind(st.version as i64)
    .bind(i32::from(decides(st)))
    .bind(st.updated_at as i64)
    .bind(serde_json::to_string(st).expect("state serialises"))
    .execute(&mut *conn)
    .await
}

/// Stores `st` under a compare-and-set on `read_version`, and its audit record. `Ok(false)`: the
/// row was not the one read.
pub(super) async fn write_row(
    engine: Engine,
    tx: &mut sqlx::AnyConnection,
    host: &str,
    st: &HostState,
    existed: bool,
    read_version: u64,
    record: Option<&Event>,
) -> Result<bool, StoreError> {
    let written = if existed {
        sqlx::query(engine.sql(
            "UPDATE hosts SET version = ?, deciding = ?, updated_ms = ?, state = ? \
             WHERE name = ? AND version = ?",
        ))
        .bind(st.version as i64)
        .bind(i32::from(decides(st)))
        .bind(st.updated_at as i64)
        .bind(serde_json::to_string(st).expect("state serialises"))
        .bind(host.to_string())
        .bind(read_version as i64)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected() == 1)
    } else {
        insert_row(engine, tx, host, st).await.map(|_| true)
    };
    match written {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) if is_conflict(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    if let Some(record) = record {
        super::audit::insert(engine, tx, st.updated_at, record).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(host: &str, version: u64, decides: bool) -> News {
        News { host: host.into(), version, decides }
    }

    /// The fleet's cached read is never staler than the database: a change through the store,
    /// and a row written behind its back (as another replica's commit looks from here), are
    /// both seen by the next read; an unchanged table is answered from the cache.
    #[test]
    fn the_states_cache_follows_every_commit() {
        use crate::serve::domain::event::Event;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::default_url(dir.path()), None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let set = |host: &'static str| {
            rt.block_on(store.change(host, move |st, now| {
                st.flag = None;
                st.updated_at = now;
                let record = Event::ChangeNotApplied { host: host.into(), after: "test" };
                Ok::<_, ()>(Change { value: (), write: true, record: Some(record) })
            }))
            .unwrap()
            .unwrap()
        };
        set("a");
        let first = store.states_blocking().unwrap();
        assert_eq!(first["a"].as_ref().unwrap().version, 1);
        let again = store.states_blocking().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "nothing changed: the same read");
        set("a");
        set("b");
        let next = store.states_blocking().unwrap();
        assert_eq!(next["a"].as_ref().unwrap().version, 2);
        assert_eq!(next["b"].as_ref().unwrap().version, 1);
        // Another writer's commit (as a replica's would be): version bumped, state replaced.
        let pool = store.writer.clone();
        store.wait(async move {
            sqlx::query("UPDATE hosts SET version = 3, state = '{ not json' WHERE name = 'b'")
                .execute(&pool)
                .await
                .unwrap()
        });
        let seen = store.states_blocking().unwrap();
        assert!(seen["b"].as_ref().unwrap_err().contains("does not parse"), "{:?}", seen["b"]);
        assert_eq!(seen["a"].as_ref().unwrap().version, 2);
    }

    #[test]
    fn payloads_round_trip_and_foreign_ones_are_refused() {
        let n = news("node-01.example", 42, true);
        assert_eq!(News::parse(&n.payload()), Some(n));
        for bad in
            ["", "x 1 h", "1 2 h", "1 1 ", "1 1", "1 1 a\nb", &format!("1 0 {}", "a".repeat(201))]
        {
            assert_eq!(News::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn older_news_never_undoes_newer() {
        let mut d = Deciding::default();
        assert!(d.may_decide("a"), "everyone may decide until the set is read");
        d.replace(vec![("a".into(), 3)]);
        assert!(d.may_decide("a") && !d.may_decide("b"));
        // A notification delayed behind a full read or a newer commit changes nothing.
        d.learn(news("a", 2, false));
        assert!(d.may_decide("a"));
        d.learn(news("a", 4, false));
        assert!(!d.may_decide("a"));
        d.learn(news("a", 3, true));
        assert!(!d.may_decide("a"));
        // A host that joined for a change that wrote nothing leaves on the same version.
        d.joining("a");
        d.learn(news("a", 4, false));
        assert!(!d.may_decide("a"));
        d.learn(news("b", 1, true));
        assert!(d.may_decide("b"));
        // A full read whose query ran before this process's own commit keeps that host...
        d.committed(news("c", 1, true));
        d.replace(vec![]);
        assert!(d.may_decide("c"));
        // ...until newer news says it no longer decides.
        d.learn(news("c", 2, false));
        d.replace(vec![]);
        assert!(!d.may_decide("c"));
    }
}
