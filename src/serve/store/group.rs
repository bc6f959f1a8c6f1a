//! Group commit for SQLite: changes that arrive together share one transaction, so one sync of
//! the write-ahead log acknowledges all of them.
//!
//! SQLite has one writer, and with `synchronous=FULL` every commit waits for an `fsync` of the
//! log (see [`super::engine`]). Committed one by one, changes queue behind each other's syncs,
//! where the old state files let eight changes of different hosts sync in parallel. Here a single
//! writer task takes every [`Store::change`](super::Store::change) queued when it becomes free
//! (up to [`MAX_BATCH`]) and runs them in order inside one `BEGIN IMMEDIATE … COMMIT`:
//!
//! - each change is the same read → lifecycle function → compare-and-set → audit insert as on the
//!   servers (see [`super::hosts`]), but batched: one read of every host of the batch, the
//!   functions in order in memory, one write of every changed row (each under its
//!   compare-and-set), one insert of every audit record (`together`). The cost that mattered
//!   was less the sync than the round trip to SQLite's worker thread for every statement;
//! - if any of those statements fails, the transaction is rolled back and the batch runs again
//!   change by change, each change's writes inside a `SAVEPOINT` (`one_by_one`): the change
//!   whose write or audit record fails is answered with that error, the others commit;
//! - a later change of a host in the batch sees what an earlier one wrote, so two changes of one
//!   host in a batch behave as if committed one after the other;
//! - no caller is answered before the `COMMIT` returned, i.e. before the log was synced: an
//!   acknowledged change is durable, with its audit record, exactly as before. A failed `BEGIN`
//!   or `COMMIT` fails every change of the batch (none was acknowledged, none is stored);
//! - the audit writer's batches of notes ([`Group::notes`]) join the same transactions, instead
//!   of taking the one writer connection for a sync of their own between the changes' commits.
//!
//! The lifecycle function runs on the writer task while the transaction is open, as it did on the
//! store's runtime before: it must be quick and must not wait. A panic in one is caught and
//! answered as that change's error; the writer and the batch go on.
//!
//! PostgreSQL and MariaDB do not go through here: each change has its own pooled connection and
//! the server already groups concurrent commits' log flushes.

use super::audit::{Boots, Stored};
use super::engine::Engine;
use super::hosts::{decides, parse, read_row, write_row};
use super::{Change, StoreError};
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::HostState;
use sqlx::{AnyPool, Row as _};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Changes committed in one transaction at most (a bound on how long the first of them waits for
/// the last; each is a handful of statements on the one connection).
pub const MAX_BATCH: usize = 64;

/// Changes waiting for the writer at most; a caller beyond waits for room (no change is lost or
/// refused for it).
const QUEUE: usize = 1024;

/// How many times a change re-reads its row after its compare-and-set found it changed. Within
/// the writer's transaction nothing else can write the row (SQLite has one writer and this
/// transaction holds its lock since `BEGIN IMMEDIATE`), so this is a guard, not a path.
const MAX_ATTEMPTS: usize = 3;

/// What a queued change's lifecycle function decided.
enum Step {
    /// Write the state it left, with this audit record.
    Write(Option<Event>),
    /// Write nothing (the function said so, or refused with an error for its caller).
    Nothing,
}

/// The lifecycle function with its caller's types erased: its value (or error) goes to a slot
/// the caller holds.
type Run = Box<dyn FnMut(&mut HostState, u64) -> Step + Send>;

/// What the writer answers a change: the version the host's row is at after the batch's commit
/// and whether that state decides boots (whether this change wrote or not).
type Done = Result<(u64, bool), StoreError>;

struct Job {
    work: Work,
    done: oneshot::Sender<Done>,
}

/// What a queued job does.
enum Work {
    /// A change of one host's state (its answer: the row's version, whether it decides).
    Change { host: String, run: Run },
    /// A batch of the audit writer's notes (see [`super::audit`]): they share the batch's
    /// commit instead of taking the one writer connection for a sync of their own.
    Notes { rows: Vec<Stored>, boots: Boots },
}

/// The queue to the SQLite writer task.
pub struct Group {
    queue: mpsc::Sender<Job>,
    /// Transactions the writer ran (batches), for tests and the curious.
    transactions: Arc<AtomicU64>,
}

impl Group {
    /// Starts the writer task on the current runtime (the store's).
    pub fn start(engine: Engine, pool: AnyPool) -> Group {
        let (queue, rx) = mpsc::channel(QUEUE);
        let transactions = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(engine, pool, rx, transactions.clone()));
        Group { queue, transactions }
    }

    /// How many batches the writer has run.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Queues a change of `host` and waits until the transaction it was committed in (or
    /// failed in) is over. As [`super::Store::change`], with the row's version and whether it
    /// decides boots.
    pub async fn change<T, E>(
        &self,
        host: &str,
        mut change: impl FnMut(&mut HostState, u64) -> Result<Change<T>, E> + Send + 'static,
    ) -> Result<(Result<T, E>, (u64, bool)), StoreError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let slot: Arc<Mutex<Option<Result<T, E>>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let run: Run = Box::new(move |st, now| {
            let (value, step) = match change(st, now) {
                Ok(Change { value, write: true, record }) => (Ok(value), Step::Write(record)),
                Ok(Change { value, write: false, .. }) => (Ok(value), Step::Nothing),
                Err(e) => (Err(e), Step::Nothing),
            };
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
            step
        });
        let (done, answer) = oneshot::channel();
        let work = Work::Change { host: host.to_string(), run };
        self.queue.send(Job { work, done }).await.map_err(|_| stopped())?;
        let at = answer.await.map_err(|_| stopped())??;
        let value = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| StoreError::Database("a change ended without its value".into()))?;
        Ok((value, at))
    }
}

impl Group {
    /// Inserts a batch of audit notes (and the last boots it holds) in the next transaction,
    /// and waits for its commit.
    pub(crate) async fn notes(&self, rows: Vec<Stored>, boots: Boots) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let work = Work::Notes { rows, boots };
        self.queue.send(Job { work, done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map(|_| ())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped (the service is shutting down)".into())
}

/// The same error again, for each change of a batch that failed as a whole.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Database(m) => StoreError::Database(m.clone()),
        StoreError::NameTooLong => StoreError::NameTooLong,
        StoreError::Busy => StoreError::Busy,
    }
}

/// The writer task: a batch per transaction, until every [`Group`] is dropped.
async fn writer(
    engine: Engine,
    pool: AnyPool,
    mut rx: mpsc::Receiver<Job>,
    transactions: Arc<AtomicU64>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        transactions.fetch_add(1, Ordering::Relaxed);
        let answers = commit_batch(engine, &pool, &mut batch).await;
        for (job, answer) in batch.drain(..).zip(answers) {
            // A caller that stopped waiting (its request was dropped) finds its change committed
            // all the same, as a dropped request did before.
            let _ = job.done.send(answer);
        }
    }
}

/// Runs `batch` in one transaction; one answer per job, in order. None is final before the
/// commit: if it fails, every job gets its error (none was acknowledged, nothing is stored).
///
/// First the fast way ([`together`]): a handful of statements for the whole batch. If one of them
/// fails before the commit, the transaction is rolled back and the batch runs again change by
/// change ([`one_by_one`]), so that only the change whose write fails is refused.
async fn commit_batch(engine: Engine, pool: &AnyPool, batch: &mut [Job]) -> Vec<Done> {
    let n = batch.len();
    let all_fail = |e: &StoreError| (0..n).map(|_| Err(again(e))).collect::<Vec<_>>();
    match together(engine, pool, batch).await {
        Ok(answers) => answers,
        Err(Failed::Commit(e)) => all_fail(&e),
        Err(Failed::Before(e)) => {
            tracing::warn!(
                "a group of {n} changes failed before its commit ({e}); trying them one by one"
            );
            one_by_one(engine, pool, batch).await
        }
    }
}

/// How [`together`] failed.
enum Failed {
    /// Before the commit: nothing is stored, the batch may run again.
    Before(StoreError),
    /// `BEGIN` or `COMMIT` failed: nothing is stored, every change of the batch is refused.
    Commit(StoreError),
}

/// A host's row as the batch sees it: as read, then as the batch's earlier changes left it.
struct Row {
    /// The version read at the start of the batch (0: there was no row).
    read_version: u64,
    existed: bool,
    state: Result<HostState, String>,
    written: bool,
}

/// The whole batch in five statements: `BEGIN IMMEDIATE`; one read of every host of the batch;
/// the lifecycle functions in order, in memory (a later change of a host sees what an earlier one
/// left); one write of every changed host (with a compare-and-set on the version read); one
/// insert of every audit record, in the order of the changes; `COMMIT`.
async fn together(engine: Engine, pool: &AnyPool, batch: &mut [Job]) -> Result<Vec<Done>, Failed> {
    let mut tx = engine.begin(pool).await.map_err(|e| Failed::Commit(e.into()))?;
    let hosts: Vec<String> = batch
        .iter()
        .filter_map(|j| match &j.work {
            Work::Change { host, .. } => Some(host.clone()),
            Work::Notes { .. } => None,
        })
        .collect();
    let mut rows = read_rows(engine, &mut tx, hosts).await.map_err(Failed::Before)?;
    let mut answers = Vec::with_capacity(batch.len());
    let mut records: Vec<(u64, Event)> = Vec::new();
    let mut notes: Vec<(&[Stored], &Boots)> = Vec::new();
    for job in batch.iter_mut() {
        let (host, run) = match &mut job.work {
            Work::Change { host, run } => (host, run),
            Work::Notes { rows, boots } => {
                notes.push((rows, boots));
                answers.push(Ok((0, false)));
                continue;
            }
        };
        let row = rows.get_mut(host.as_str()).expect("every host of the batch was read");
        let mut st = match &row.state {
            Ok(st) => st.clone(),
            Err(e) => {
                answers.push(Err(StoreError::Database(e.clone())));
                continue;
            }
        };
        let now = crate::serve::util::now_ms();
        let before = (st.version, decides(&st));
        match run_change(host, run, &mut st, now) {
            Err(e) => answers.push(Err(e)),
            Ok(Step::Nothing) => answers.push(Ok(before)), // what is stored decides
            Ok(Step::Write(record)) => {
                st.version = before.0 + 1;
                st.updated_at = now;
                answers.push(Ok((st.version, decides(&st))));
                if let Some(record) = record {
                    records.push((now, record));
                }
                row.state = Ok(st);
                row.written = true;
            }
        }
    }
    write_rows(engine, &mut tx, &rows).await.map_err(Failed::Before)?;
    let events: Vec<(u64, &Event)> = records.iter().map(|(now, e)| (*now, e)).collect();
    super::audit::insert_many(engine, &mut tx, &events).await.map_err(Failed::Before)?;
    for (rows, boots) in notes {
        super::audit::insert_notes(engine, &mut tx, rows, boots).await.map_err(Failed::Before)?;
    }
    tx.commit().await.map_err(|e| Failed::Commit(e.into()))?;
    Ok(answers)
}

/// Runs a change's lifecycle function, a panic caught as its error.
fn run_change(host: &str, run: &mut Run, st: &mut HostState, now: u64) -> Result<Step, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| run(st, now))).map_err(|_| {
        tracing::error!(host = %host.escape_debug(), "a state change panicked; nothing of it was written");
        StoreError::Database("the state change failed (see the server log)".into())
    })
}

/// The rows of every host of the batch, in one query.
async fn read_rows(
    engine: Engine,
    tx: &mut sqlx::AnyConnection,
    hosts: Vec<String>,
) -> Result<HashMap<String, Row>, StoreError> {
    let mut rows: HashMap<String, Row> = HashMap::with_capacity(hosts.len());
    for host in hosts {
        rows.entry(host).or_insert(Row {
            read_version: 0,
            existed: false,
            state: Ok(HostState::default()),
            written: false,
        });
    }
    // Built from constants only; every name is bound.
    let mut sql = String::from("SELECT name, state FROM hosts WHERE name IN (");
    for i in 0..rows.len() {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
    }
    sql.push(')');
    let mut q = sqlx::query(engine.sql_owned(sql));
    for name in rows.keys() {
        q = q.bind(name.clone());
    }
    for r in q.fetch_all(&mut *tx).await? {
        let name: String = r.try_get(0)?;
        let Some(row) = rows.get_mut(&name) else { continue };
        row.existed = true;
        row.state = parse(&name, &r.try_get::<String, _>(1)?).map_err(|e| e.to_string());
        row.read_version = row.state.as_ref().map_or(0, |st| st.version);
    }
    Ok(rows)
}

/// Writes every row the batch changed in one statement, each under a compare-and-set on the
/// version read (or on there being no row). Within the batch's transaction nothing else can
/// write (SQLite has one writer, and `BEGIN IMMEDIATE` took its lock before the read), so a
/// row that fails its compare-and-set means something unexpected: the batch is then refused here
/// and runs again change by change.
async fn write_rows(
    engine: Engine,
    tx: &mut sqlx::AnyConnection,
    rows: &HashMap<String, Row>,
) -> Result<(), StoreError> {
    let written: Vec<(&String, &Row, &HostState)> = rows
        .iter()
        .filter(|(_, r)| r.written)
        .filter_map(|(h, r)| r.state.as_ref().ok().map(|st| (h, r, st)))
        .collect();
    if written.is_empty() {
        return Ok(());
    }
    // SQLite's upsert; `expected` is the version read, -1 for a host that had no row (so an
    // existing row never matches). Built from constants only; every value is bound.
    let mut sql =
        String::from("WITH v (name, version, deciding, updated_ms, state, expected) AS (VALUES ");
    for i in 0..written.len() {
        sql.push_str(if i == 0 { "(?, ?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?, ?)" });
    }
    sql.push_str(
        ") INSERT INTO hosts (name, version, deciding, updated_ms, state) \
         SELECT name, version, deciding, updated_ms, state FROM v WHERE true \
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
         deciding = excluded.deciding, updated_ms = excluded.updated_ms, state = excluded.state \
         WHERE hosts.version = (SELECT expected FROM v WHERE v.name = excluded.name)",
    );
    let mut q = sqlx::query(engine.sql_owned(sql));
    for (host, row, st) in &written {
        let expected = if row.existed { row.read_version as i64 } else { -1 };
        q = q
            .bind((*host).clone())
            .bind(st.version as i64)
            .bind(i32::from(decides(st)))
            .bind(st.updated_at as i64)
            .bind(serde_json::to_string(st).expect("state serialises"))
            .bind(expected);
    }
    let done = q.execute(&mut *tx).await?.rows_affected();
    if done != written.len() as u64 {
        return Err(StoreError::Database(format!(
            "{} of {} rows were not the ones read",
            written.len() as u64 - done.min(written.len() as u64),
            written.len()
        )));
    }
    Ok(())
}

/// The batch change by change, each change's writes inside a savepoint, in one transaction: a
/// change whose write fails is rolled back alone and answered with its error.
async fn one_by_one(engine: Engine, pool: &AnyPool, batch: &mut [Job]) -> Vec<Done> {
    let n = batch.len();
    let all_fail = |e: StoreError| (0..n).map(|_| Err(again(&e))).collect::<Vec<_>>();
    let mut tx = match engine.begin(pool).await {
        Ok(tx) => tx,
        Err(e) => return all_fail(e.into()),
    };
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch.iter_mut() {
        match one(engine, &mut tx, job).await {
            Ok(answer) => answers.push(answer),
            // A savepoint could not be released or rolled back to: what the transaction holds
            // is unknown, so none of it may commit (dropping `tx` rolls it back).
            Err(e) => {
                drop(tx);
                return all_fail(e);
            }
        }
    }
    if let Err(e) = tx.commit().await {
        return all_fail(e.into());
    }
    answers
}

/// One change inside the batch's transaction: its own answer, or `Err` if the transaction can no
/// longer be trusted.
async fn one(
    engine: Engine,
    tx: &mut sqlx::AnyConnection,
    job: &mut Job,
) -> Result<Done, StoreError> {
    let (host, run) = match &mut job.work {
        Work::Change { host, run } => (host.as_str(), run),
        Work::Notes { rows, boots } => {
            sqlx::query("SAVEPOINT bf_change").execute(&mut *tx).await?;
            let written = super::audit::insert_notes(engine, tx, rows, boots).await;
            if written.is_err() {
                sqlx::query("ROLLBACK TO bf_change").execute(&mut *tx).await?;
            }
            sqlx::query("RELEASE bf_change").execute(&mut *tx).await?;
            return Ok(written.map(|()| (0, false)));
        }
    };
    for _ in 0..MAX_ATTEMPTS {
        let now = crate::serve::util::now_ms();
        let stored = match read_row(engine, &mut *tx, host).await {
            Ok(stored) => stored,
            Err(e) => return Ok(Err(e)), // a failed read wrote nothing
        };
        let existed = stored.is_some();
        let mut st = stored.unwrap_or_default();
        let read_version = st.version;
        let before = (read_version, decides(&st));
        let step = match run_change(host, run, &mut st, now) {
            Ok(step) => step,
            Err(e) => return Ok(Err(e)),
        };
        let Step::Write(record) = step else {
            return Ok(Ok(before)); // nothing written: what is stored decides
        };
        st.version = read_version + 1;
        st.updated_at = now;
        let d = decides(&st);
        // The change's writes are undone alone if one of them fails, not the batch.
        sqlx::query("SAVEPOINT bf_change").execute(&mut *tx).await?;
        let written =
            write_row(engine, tx, host, &st, existed, read_version, record.as_ref()).await;
        if let Ok(true) = written {
            sqlx::query("RELEASE bf_change").execute(&mut *tx).await?;
            return Ok(Ok((st.version, d)));
        }
        sqlx::query("ROLLBACK TO bf_change").execute(&mut *tx).await?;
        sqlx::query("RELEASE bf_change").execute(&mut *tx).await?;
        if let Err(e) = written {
            return Ok(Err(e));
        }
        // The row was not the one read: read it again and run the function on it.
    }
    Ok(Err(StoreError::Busy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::store::Store;

    fn store(dir: &std::path::Path) -> Arc<Store> {
        Arc::new(Store::open(&Store::default_url(dir), None).unwrap())
    }

    fn note(host: &str) -> Event {
        Event::ChangeNotApplied { host: host.to_string(), after: "test" }
    }

    /// `SELECT COUNT(*)` of `sql` (a constant of this test) with one bound host.
    fn count(store: &Store, sql: &'static str, host: &str) -> i64 {
        let (pool, host) = (store.reader.clone(), host.to_string());
        store
            .wait(async move { sqlx::query_scalar(sql).bind(host).fetch_one(&pool).await.unwrap() })
    }

    fn version(store: &Store, host: &str) -> i64 {
        let (pool, host) = (store.reader.clone(), host.to_string());
        store.wait(async move {
            sqlx::query_scalar::<_, i64>("SELECT version FROM hosts WHERE name = ?")
                .bind(host)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .unwrap_or(0)
        })
    }

    /// Many changes at once, of many hosts and of one host: they share transactions (fewer
    /// than the changes), every acknowledged change is stored with its audit record, changes of
    /// one host apply one after the other, and of 50 "first one wins" changes exactly one wins.
    #[test]
    fn concurrent_changes_share_commits_and_each_is_stored_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).build().unwrap();
        let (hosts, per_host, racers) = (20, 10, 50);
        let wins = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..hosts * per_host {
                let (store, host) = (store.clone(), format!("h{:02}", i % hosts));
                tasks.spawn(async move {
                    let h = host.clone();
                    let r = store
                        .change(&host, move |_, _| {
                            Ok::<_, ()>(Change {
                                value: false,
                                write: true,
                                record: Some(note(&h)),
                            })
                        })
                        .await;
                    r.unwrap().unwrap()
                });
            }
            for _ in 0..racers {
                let store = store.clone();
                tasks.spawn(async move {
                    let r = store
                        .change("first", |st, _| {
                            let first = st.version == 0;
                            let record = first.then(|| note("first"));
                            Ok::<_, ()>(Change { value: first, write: first, record })
                        })
                        .await;
                    r.unwrap().unwrap()
                });
            }
            let mut wins = 0;
            while let Some(won) = tasks.join_next().await {
                wins += usize::from(won.unwrap());
            }
            wins
        });
        assert_eq!(wins, 1, "exactly one first answer");
        for i in 0..hosts {
            let host = format!("h{i:02}");
            assert_eq!(version(&store, &host), per_host as i64, "{host}: every change applied");
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM audit WHERE host = ?", &host),
                per_host as i64,
                "{host}: one record per change"
            );
        }
        assert_eq!(version(&store, "first"), 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM audit WHERE host = ?", "first"), 1);
        let changes = (hosts * per_host + racers) as u64;
        let transactions = store.group.as_ref().unwrap().transactions();
        assert!(transactions < changes, "{changes} changes in {transactions} transactions");
    }

    fn job(host: &str, write: bool) -> (Job, oneshot::Receiver<Done>) {
        let (done, answer) = oneshot::channel();
        let h = host.to_string();
        let run: Run = Box::new(move |_, _| match write {
            true => Step::Write(Some(note(&h))),
            false => Step::Nothing,
        });
        (Job { work: Work::Change { host: host.to_string(), run }, done }, answer)
    }

    /// One batch: a change whose audit record the database refuses fails alone (the batch
    /// runs again change by change), a later change of a host sees the earlier one's write, and
    /// a change that writes nothing is answered with what is stored.
    #[test]
    fn a_change_that_fails_in_a_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (engine, pool) = (store.engine, store.writer.clone());
        store.wait(async {
            sqlx::query(
                "CREATE TRIGGER full BEFORE INSERT ON audit WHEN NEW.host = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
            )
            .execute(&pool)
            .await
            .unwrap();
        });
        // Without the failing change: the fast way, two changes of one host in order.
        let (mut batch, _answers): (Vec<_>, Vec<_>) =
            [job("a", true), job("a", true), job("b", false)].into_iter().unzip();
        let got = store.wait(together(engine, &pool, &mut batch)).ok().expect("one transaction");
        assert_eq!(
            got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [(1, false), (2, false), (0, false)]
        );
        // With it: the others still commit.
        let (mut batch, _answers): (Vec<_>, Vec<_>) =
            [job("a", true), job("bad", true), job("a", true), job("c", false)].into_iter().unzip();
        let got = store.wait(commit_batch(engine, &pool, &mut batch));
        assert_eq!(got[0].as_ref().unwrap(), &(3, false));
        assert!(
            matches!(&got[1], Err(StoreError::Database(m)) if m.contains("disk full")),
            "{:?}",
            got[1]
        );
        assert_eq!(got[2].as_ref().unwrap(), &(4, false));
        assert_eq!(got[3].as_ref().unwrap(), &(0, false));
        assert_eq!(version(&store, "a"), 4);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM audit WHERE host = ?", "a"), 4);
        assert_eq!(version(&store, "bad"), 0, "no row without its record");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM audit WHERE host = ?", "bad"), 0);
    }
}
