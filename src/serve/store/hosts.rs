//! Hosts' states: reading them, and changing one in a transaction ([`Store::change`]).
//!
//! A host's row holds its [`HostState`] as JSON, its version (the compare-and-set key), and
//! `deciding`: whether the state can make a boot anything but local (a flag, or a first-answer
//! install whose repeat window may be open). Hosts without a row have the default state.
//!
//! [`Store::may_decide`] answers from memory, so a boot storm of unflagged hosts costs no query:
//! the set of deciding hosts is exact for this process's own commits (a host joins it before its
//! change commits) and follows other replicas' commits through [`Store::rescan`], which the
//! reload thread runs every 100 ms. It errs only towards `true`: a `true` is always checked
//! against the row itself.

use super::engine::{is_conflict, Engine};
use super::{Change, Store, StoreError, MAX_STORED_NAME};
use crate::serve::domain::lifecycle::HostState;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a host this process made deciding stays in the set whatever a rescan read (a
/// rescan's query runs in well under this).
const RECENT: Duration = Duration::from_secs(2);

/// How many times a change is run again after losing a race before it gives up ([`StoreError::Busy`]).
const MAX_ATTEMPTS: usize = 20;

/// Whether a state can make a boot anything but local.
pub fn decides(st: &HostState) -> bool {
    st.flag.is_some() || st.unclosed_window().is_some()
}

fn parse(name: &str, json: &str) -> Result<HostState, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::Database(format!("the stored state of {name} does not parse: {e}"))
    })
}

/// One host's row, read inside `exec`'s transaction or pool.
async fn read_row(
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
        let (pool, engine, host) = (self.reader.clone(), self.engine, host.to_string());
        self.run(async move { Ok(read_row(engine, &pool, &host).await?.unwrap_or_default()) }).await
    }

    /// [`Store::read`] from a thread that may block.
    pub fn read_blocking(&self, host: &str) -> Result<HostState, StoreError> {
        if host.len() > MAX_STORED_NAME {
            return Ok(HostState::default());
        }
        let (pool, engine, host) = (self.reader.clone(), self.engine, host.to_string());
        self.wait(async move { Ok(read_row(engine, &pool, &host).await?.unwrap_or_default()) })
    }

    /// Every stored state, by host (one query, for the fleet view); a row that does not parse
    /// is reported as its own error, the others are listed all the same. Blocks.
    pub fn states_blocking(&self) -> Result<States, StoreError> {
        let pool = self.reader.clone();
        self.wait(async move { all_states(&pool).await })
    }

    /// Whether `host`'s state may decide its boot: `false` means the boot is local without a
    /// query (see the module documentation).
    pub fn may_decide(&self, host: &str) -> bool {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).contains(host)
    }

    /// Hosts whose state may decide a boot (the orphan sweep's candidates).
    pub fn deciding_hosts(&self) -> Vec<String> {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Re-reads which hosts may decide a boot, to follow other replicas' commits. On error the
    /// set is kept (it only ever errs towards `true` for this process's own changes; another
    /// replica's new flag waits for the database to answer again).
    pub fn rescan(&self) {
        let (pool, engine) = (self.reader.clone(), self.engine);
        let names = self.wait(async move {
            let rows = sqlx::query(engine.sql("SELECT name FROM hosts WHERE deciding = ?"))
                .bind(1i32)
                .fetch_all(&pool)
                .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
                .collect::<Result<HashSet<String>, _>>()
        });
        match names {
            Ok(mut names) => {
                // The query may have run just before one of this process's own commits: keep
                // the hosts those made deciding for a while, so an acknowledged flag is never
                // dropped from the set until the next rescan.
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                recent.retain(|_, at| at.elapsed() < RECENT);
                names.extend(recent.keys().cloned());
                drop(recent);
                *self.deciding.write().unwrap_or_else(|p| p.into_inner()) = names;
            }
            Err(e) => tracing::warn!("cannot read which hosts are flagged: {e}"),
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
        if host.len() > MAX_STORED_NAME {
            return Err(StoreError::NameTooLong);
        }
        // Joins the deciding set before the commit, so no reader of this process can miss it;
        // left again below if the state that committed cannot decide a boot.
        self.deciding.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_string());
        let (pool, engine, name) = (self.writer.clone(), self.engine, host.to_string());
        let result = self.run(transact(pool, engine, name, change)).await;
        let keep = match &result {
            Ok((_, Some(decides))) => *decides,
            // Nothing written (or unknown): what the database holds decides.
            _ => match self.read(host).await {
                Ok(st) => decides(&st),
                Err(_) => true,
            },
        };
        if keep {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.insert(host.to_string(), std::time::Instant::now());
        } else {
            self.deciding.write().unwrap_or_else(|p| p.into_inner()).remove(host);
        }
        result.map(|(value, _)| value)
    }
}

/// Every stored state by host, each parsed or the reason it does not parse.
pub type States = HashMap<String, Result<HostState, String>>;

async fn all_states(pool: &AnyPool) -> Result<States, StoreError> {
    let rows = sqlx::query("SELECT name, state FROM hosts").fetch_all(pool).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0)?;
        let st = parse(&name, &r.try_get::<String, _>(1)?).map_err(|e| e.to_string());
        out.insert(name, st);
    }
    Ok(out)
}

/// The body of [`Store::change`]: returns the caller's value and, when a state was written,
/// whether it decides boots.
async fn transact<T, E>(
    pool: AnyPool,
    engine: Engine,
    host: String,
    mut change: impl FnMut(&mut HostState, u64) -> Result<Change<T>, E>,
) -> Result<(Result<T, E>, Option<bool>), StoreError> {
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
        let json = serde_json::to_string(&st).expect("state serialises");
        let d = decides(&st);
        let written = if existed {
            sqlx::query(engine.sql(
                "UPDATE hosts SET version = ?, deciding = ?, updated_ms = ?, state = ? \
                 WHERE name = ? AND version = ?",
            ))
            .bind(st.version as i64)
            .bind(i32::from(d))
            .bind(now as i64)
            .bind(json)
            .bind(host.clone())
            .bind(read_version as i64)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected() == 1)
        } else {
            sqlx::query(engine.sql(
                "INSERT INTO hosts (name, version, deciding, updated_ms, state) VALUES (?, ?, ?, ?, ?)",
            ))
            .bind(host.clone())
            .bind(st.version as i64)
            .bind(i32::from(d))
            .bind(now as i64)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map(|_| true)
        };
        let won = match written {
            Ok(won) => won,
            Err(e) if is_conflict(&e) => false,
            Err(e) => return Err(e.into()),
        };
        if won {
            if let Some(record) = &record {
                super::audit::insert(engine, &mut tx, now, record).await?;
            }
            match tx.commit().await {
                Ok(()) => return Ok((Ok(value), Some(d))),
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
    sqlx::query(engine.sql(
        "INSERT INTO hosts (name, version, deciding, updated_ms, state) VALUES (?, ?, ?, ?, ?)",
    ))
    .bind(host.to_string())
    .bind(st.version as i64)
    .bind(i32::from(decides(st)))
    .bind(st.updated_at as i64)
    .bind(serde_json::to_string(st).expect("state serialises"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
