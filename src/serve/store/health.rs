//! Whether the database answers, for `/healthz`, and the gate that makes every operation fail at
//! once (503, or a local boot) while it does not, instead of each waiting out a connection
//! timeout. Also the start without the database: migrations run when it first answers.
//!
//! PostgreSQL and MariaDB only: a SQLite file is local, so it is always "up" (a real error there
//! fails the start, or the operation, as before).
//!
//! The monitor ([`monitor`]) holds one connection of its own, outside the pools, and runs
//! `SELECT 1` on it with a short timeout every [`UP_PERIOD`]; while that fails it reconnects
//! with a backoff from [`MIN_BACKOFF`] to [`MAX_BACKOFF`]. Its own connection means a pool
//! exhausted by a burst of work is not mistaken for a database that is down, and `/healthz` (which
//! anyone may call) costs no query: it reads [`Health`].
//!
//! Invariants:
//! - The gate opens only once the migrations have run and the set of deciding hosts has been
//!   read (so a boot is never answered from a set that was never loaded; see
//!   [`super::hosts`]), and again after every outage only once that set has been read anew.
//! - Every down transition bumps [`Health::outages`], which the PostgreSQL listener watches to
//!   reconnect and resync (its own connection may look alive to it while the server is hung).

use super::engine::Engine;
use super::hosts::{scan_deciding, SharedDeciding};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyPool, Connection};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Between health checks while the database answers.
pub const UP_PERIOD: Duration = Duration::from_secs(1);
/// How long a health check (or a connection attempt of the monitor) may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The backoff between reconnection attempts while the database does not answer.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// The longest clock reading round trip whose offset is kept (see [`check`]).
const MAX_CLOCK_ROUND_TRIP_MS: i64 = 200;

/// What `Retry-After` says to callers refused while the database is down.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The database's health as last checked.
#[derive(Default)]
pub struct Health {
    up: AtomicBool,
    /// Since when (ms since 1970) the state is what it is.
    since_ms: AtomicU64,
    /// The last failure, for `/status` and the log (never a password: sqlx does not put the
    /// URL in its errors, and connection errors name host and port at most).
    last_error: Mutex<Option<String>>,
    /// Down transitions so far; the listener reconnects on each.
    outages: tokio::sync::watch::Sender<u64>,
    /// Asks the monitor to check now (an operation just failed as unavailable).
    wake: tokio::sync::Notify,
    /// The database's clock minus this machine's, in milliseconds, as the last check measured
    /// it (0 until then, and for SQLite): see [`Health::now_ms`].
    offset_ms: AtomicI64,
    /// Whether the offset was measured at least once.
    clock_measured: AtomicBool,
}

/// [`Health`] as shown by `/healthz` and `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    pub up: bool,
    pub since_ms: u64,
    pub error: Option<String>,
    /// The database's clock minus this machine's, as last measured (ms; 0 for SQLite).
    pub clock_offset_ms: i64,
}

impl Health {
    pub(crate) fn new(up: bool) -> Health {
        let h = Health::default();
        h.up.store(up, Ordering::SeqCst);
        h.since_ms.store(crate::serve::util::now_ms(), Ordering::Relaxed);
        h
    }

    /// The database's clock, read from this machine's plus the offset the monitor measures
    /// every second (the round trip halved), so that every replica decides windows (a
    /// session's expiry, an install's repeat window, a signed URL's lifetime) by one clock
    /// without a query per decision. Changes take the database's clock in their transaction.
    pub fn now_ms(&self) -> u64 {
        let local = crate::serve::util::now_ms() as i64;
        local.saturating_add(self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn shown(&self) -> Shown {
        Shown {
            up: self.is_up(),
            since_ms: self.since_ms.load(Ordering::Relaxed),
            error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            clock_offset_ms: self.offset_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn outages(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outages.subscribe()
    }

    /// An operation found the database unavailable: check now rather than at the next period.
    pub(crate) fn suspect(&self) {
        self.wake.notify_one();
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.since_ms.store(crate::serve::util::now_ms(), Ordering::Relaxed);
        }
    }

    /// Marks the database down (a bounded reason kept for `/status`); whether it was up.
    fn set_down(&self, reason: &str) -> bool {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(reason.chars().take(300).collect());
        let was_up = self.up.swap(false, Ordering::SeqCst);
        if was_up {
            self.since_ms.store(crate::serve::util::now_ms(), Ordering::Relaxed);
            self.outages.send_modify(|n| *n += 1);
        }
        was_up
    }
}

/// What the monitor needs of the store.
pub(crate) struct Watched {
    pub engine: Engine,
    pub options: AnyConnectOptions,
    pub writer: AnyPool,
    pub deciding: SharedDeciding,
    pub health: Arc<Health>,
    /// Whether the migrations have run (at start, or by this monitor).
    pub migrated: Arc<AtomicBool>,
    pub shown: String,
}

/// One check on the monitor's own connection, (re)connecting first if it has none: it reads
/// the database's clock, and keeps its offset from this machine's when the round trip was short
/// enough to trust (a slow answer says little about when the clock was read).
async fn check(
    engine: Engine,
    health: &Health,
    options: &AnyConnectOptions,
    conn: &mut Option<sqlx::AnyConnection>,
) -> Result<(), String> {
    if conn.is_none() {
        let c = tokio::time::timeout(CHECK_TIMEOUT, sqlx::AnyConnection::connect_with(options))
            .await
            .map_err(|_| format!("no connection within {CHECK_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let clock = engine.now_sql().unwrap_or("SELECT 0");
    // The round trip is timed on the monotonic clock (a step of the wall clock during the
    // query must not pass for a short trip); the wall clock is read once, at the send.
    let (sent, started) = (crate::serve::util::now_ms() as i64, std::time::Instant::now());
    let r =
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query_scalar::<_, i64>(clock).fetch_one(&mut *c))
            .await;
    match r {
        Ok(Ok(db_ms)) => {
            let trip = started.elapsed().as_millis() as i64;
            // A slow trip says little about when the clock was read; the first one is still
            // better than none.
            let first = !health.clock_measured.swap(true, Ordering::Relaxed);
            if engine.now_sql().is_some() && (trip <= MAX_CLOCK_ROUND_TRIP_MS || first) {
                health.offset_ms.store(db_ms - (sent + trip / 2), Ordering::Relaxed);
            }
            Ok(())
        }
        Ok(Err(e)) => {
            *conn = None;
            Err(e.to_string())
        }
        Err(_) => {
            *conn = None;
            Err(format!("no answer to a ping within {CHECK_TIMEOUT:?}"))
        }
    }
}

/// Runs for the store's life (on its runtime; dropped with it). See the module documentation.
pub(crate) async fn monitor(w: Watched) {
    let mut conn: Option<sqlx::AnyConnection> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = match check(w.engine, &w.health, &w.options, &mut conn).await {
            Err(e) => Err(e),
            Ok(()) => bring_up(&w).await,
        };
        let pause = match result {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                UP_PERIOD
            }
            Err(e) => {
                if w.health.set_down(&e) {
                    tracing::error!(database = %w.shown, "the database does not answer: {e}; boots of flagged hosts answer local, API writes and logins 503, until it does");
                }
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = w.health.wake.notified() => {}
        }
    }
}

/// After a check that passed: migrates if that is still to do, and if the gate is closed, reads
/// the deciding set anew and opens it.
async fn bring_up(w: &Watched) -> Result<(), String> {
    if !w.migrated.load(Ordering::SeqCst) {
        w.engine.migrator().run(&w.writer).await.map_err(|e| {
            tracing::error!(database = %w.shown, "cannot bring the database to this version's schema: {e}");
            format!("migrations: {e}")
        })?;
        w.migrated.store(true, Ordering::SeqCst);
        tracing::info!(database = %w.shown, "the database answers: schema ready");
    }
    if !w.health.is_up() {
        let scan = scan_deciding(w.engine, &w.writer).await.map_err(|e| e.to_string())?;
        w.deciding.write().unwrap_or_else(|p| p.into_inner()).replace(scan);
        w.health.set_up();
        tracing::warn!(database = %w.shown, "the database answers again; flagged hosts re-read");
    }
    Ok(())
}

/// Whether a failed first connection means "not reachable now" (start anyway and retry) rather
/// than a configuration error (wrong password, no such database, a TLS certificate that does
/// not verify), which fails the start.
pub(crate) fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        // A TLS handshake that fails verification (wrong CA, a name the certificate does not
        // carry, an expired certificate) comes back as an I/O error of kind `InvalidData`
        // from rustls: a configuration error, which waiting does not cure.
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // PostgreSQL: cannot_connect_now (starting up, recovering), admin/crash shutdown,
            // too_many_connections; MariaDB: too many connections.
            Some("57P03" | "57P01" | "57P02" | "53300" | "08004")
        ),
        _ => false,
    }
}
