//! The three engines behind one store: which one a `--database` URL names, how to connect to it
//! (SQLite's durability settings, pool sizes), its migrations, and the few places where their SQL
//! differs. Everything else in the store is written once, in the SQL the three share, with `?`
//! placeholders ([`Engine::sql`] numbers them for PostgreSQL).
//!
//! Engine-specific facts live here and in `migrations/ENGINE/`, nowhere else:
//! - placeholders (`?` or `$n`);
//! - the clock of record ([`Engine::now_sql`]): PostgreSQL's and MariaDB's own, so replicas agree
//!   on every time that decides a window; SQLite is one machine, whose clock it is;
//! - the "newer boot wins" upsert of `last_boots` ([`Engine::upsert_last_boot`]);
//! - which errors mean "someone else wrote first" ([`is_conflict`]);
//! - reading one moment ([`Engine::begin_snapshot`]) or the latest commit
//!   ([`Engine::current_read`]) inside a transaction.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, SqlSafeStr, SqlStr};
use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

/// A database engine the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
    Mysql,
}

/// Connections one replica opens to PostgreSQL or MariaDB at most (see docs/REPLICAS.md for
/// sizing `max_connections`). SQLite has one writer and [`SQLITE_READERS`] readers.
pub const POOL_SIZE: u32 = 16;
/// Read connections to a SQLite file (WAL lets them read while the one writer writes).
pub const SQLITE_READERS: u32 = 4;
/// How long a statement waits for SQLite's lock, and a caller for a pooled connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl Engine {
    /// The engine a URL names: `sqlite:`, `postgres://` (or `postgresql://`), `mysql://` (or
    /// `mariadb://`, which sqlx knows as `mysql`).
    pub fn of(url: &str) -> Result<Engine, String> {
        let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Ok(Engine::Sqlite),
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            "mysql" | "mariadb" => Ok(Engine::Mysql),
            _ => Err(format!(
                "--database must start with sqlite:, postgres:// or mysql:// (MariaDB); got a URL of scheme {:?}. SQL Server is not supported (see docs/STATE.md)",
                scheme.chars().take(20).collect::<String>()
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    /// `sql` (written with `?` placeholders) in this engine's syntax. The store's statements
    /// are constants of this crate: nothing from a request is ever part of them (values are
    /// bound), which is what makes the `AssertSqlSafe` true.
    pub fn sql(self, sql: &'static str) -> SqlStr {
        match self {
            Engine::Postgres => self.sql_owned(sql.to_string()),
            _ => sql.into_sql_str(),
        }
    }

    /// [`Engine::sql`] for a statement the store assembled from its own constants (a
    /// multi-row insert, optional filters): never from request text.
    pub fn sql_owned(self, sql: String) -> SqlStr {
        match self {
            Engine::Postgres => {
                let mut out = String::with_capacity(sql.len() + 16);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                AssertSqlSafe(out).into_sql_str()
            }
            _ => AssertSqlSafe(sql).into_sql_str(),
        }
    }

    /// A query returning the database's clock as milliseconds since 1970 (a BIGINT), or `None`
    /// for SQLite, where the process's clock is the machine's and a round trip would add nothing.
    /// The database's clock in milliseconds as an SQL expression (`None` for SQLite).
    pub fn now_ms_expr(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => None,
            Engine::Postgres => {
                Some("CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)")
            }
            Engine::Mysql => Some("CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)"),
        }
    }

    pub fn now_sql(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => None,
            Engine::Postgres => {
                Some("SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)")
            }
            Engine::Mysql => Some("SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)"),
        }
    }

    /// A one-row summary of the `hosts` table: rows, and the sums of their versions and update
    /// times, each a BIGINT (see [`super::hosts::Fingerprint`]).
    pub fn hosts_fingerprint_sql(self) -> &'static str {
        match self {
            Engine::Sqlite | Engine::Postgres => {
                "SELECT COUNT(*), CAST(COALESCE(SUM(version), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(updated_ms), 0) AS BIGINT) FROM hosts"
            }
            // MariaDB casts to SIGNED, not BIGINT.
            Engine::Mysql => {
                "SELECT COUNT(*), CAST(COALESCE(SUM(version), 0) AS SIGNED), \
                 CAST(COALESCE(SUM(updated_ms), 0) AS SIGNED) FROM hosts"
            }
        }
    }

    /// Records a host's boot unless a newer one is recorded: binds (host, ms, record).
    pub fn upsert_last_boot(self) -> &'static str {
        match self {
            Engine::Sqlite | Engine::Postgres => {
                "INSERT INTO last_boots (host, ms, record) VALUES (?, ?, ?) \
                 ON CONFLICT (host) DO UPDATE SET ms = excluded.ms, record = excluded.record \
                 WHERE excluded.ms >= last_boots.ms"
            }
            // MariaDB has no `AS alias` for the new row; `VALUES(col)` names it. Assignments
            // run left to right, so `record` is decided on the old `ms`.
            Engine::Mysql => {
                "INSERT INTO last_boots (host, ms, record) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE record = IF(VALUES(ms) >= ms, VALUES(record), record), \
                 ms = GREATEST(VALUES(ms), ms)"
            }
        }
    }

    /// Records a host's last fetch unless a newer one is recorded: binds (host, ms).
    pub fn upsert_fetch_progress(self) -> &'static str {
        match self {
            Engine::Sqlite | Engine::Postgres => {
                "INSERT INTO fetch_progress (host, ms) VALUES (?, ?) \
                 ON CONFLICT (host) DO UPDATE SET ms = excluded.ms \
                 WHERE excluded.ms > fetch_progress.ms"
            }
            Engine::Mysql => {
                "INSERT INTO fetch_progress (host, ms) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE ms = GREATEST(VALUES(ms), ms)"
            }
        }
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a transaction that read first and then asks for the lock while another
    /// process holds it is refused at once (SQLite's deadlock rule), where one that asks first
    /// waits for it (`busy_timeout`).
    pub async fn begin(
        self,
        pool: &AnyPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self {
            Engine::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
            _ => pool.begin().await,
        }
    }

    /// Begins a read-only transaction whose statements all see one moment (a header and the
    /// rows of one version). PostgreSQL's default (READ COMMITTED) reads each statement anew, so
    /// it is asked for REPEATABLE READ. MariaDB's default is REPEATABLE READ, but a server may
    /// be set to READ COMMITTED (common on Galera clusters), so it is asked for explicitly:
    /// `SET TRANSACTION` (no `SESSION`) applies to the next transaction only, which the same
    /// round trip then starts with its snapshot taken at once, so the pooled connection goes
    /// back with the server's own default. SQLite's reads always see one moment.
    pub async fn begin_snapshot(
        self,
        pool: &AnyPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self {
            Engine::Postgres => pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ").await,
            Engine::Mysql => {
                pool.begin_with(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                     START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                )
                .await
            }
            Engine::Sqlite => pool.begin().await,
        }
    }

    /// `sql` (a SELECT in a write transaction that has locked what guards these rows) as a read
    /// of the latest committed rows. MariaDB's REPEATABLE READ would otherwise answer from the
    /// snapshot of the transaction's first read, which may predate a commit it then waited for;
    /// PostgreSQL (READ COMMITTED) reads each statement anew, and SQLite has one writer.
    pub fn current_read(self, sql: &'static str) -> SqlStr {
        match self {
            Engine::Mysql => self.sql_owned(format!("{sql} FOR UPDATE")),
            _ => self.sql(sql),
        }
    }

    /// This engine's migrations, embedded in the binary. sqlx records them in
    /// `_sqlx_migrations` with a checksum, and takes a lock on PostgreSQL and MariaDB while it
    /// runs them, so replicas starting together migrate once.
    pub fn migrator(self) -> Migrator {
        let files: &[(i64, &str, &'static str)] = match self {
            Engine::Sqlite => &[
                (1, "state", include_str!("migrations/sqlite/0001_state.sql")),
                (2, "sessions", include_str!("migrations/sqlite/0002_sessions.sql")),
                (3, "inventory", include_str!("migrations/sqlite/0003_inventory.sql")),
                (5, "fetch_progress", include_str!("migrations/sqlite/0005_fetch_progress.sql")),
            ],
            Engine::Postgres => &[
                (1, "state", include_str!("migrations/postgres/0001_state.sql")),
                (2, "sessions", include_str!("migrations/postgres/0002_sessions.sql")),
                (3, "inventory", include_str!("migrations/postgres/0003_inventory.sql")),
                (4, "audit_settle", include_str!("migrations/postgres/0004_audit_settle.sql")),
                (5, "fetch_progress", include_str!("migrations/postgres/0005_fetch_progress.sql")),
            ],
            Engine::Mysql => &[
                (1, "state", include_str!("migrations/mysql/0001_state.sql")),
                (2, "sessions", include_str!("migrations/mysql/0002_sessions.sql")),
                (3, "inventory", include_str!("migrations/mysql/0003_inventory.sql")),
                (4, "audit_settle", include_str!("migrations/mysql/0004_audit_settle.sql")),
                (5, "fetch_progress", include_str!("migrations/mysql/0005_fetch_progress.sql")),
            ],
        };
        Migrator::with_migrations(
            files
                .iter()
                .map(|&(version, name, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    }

    /// A URL's connection options (the drivers installed).
    pub fn options(self, url: &str) -> anyhow::Result<AnyConnectOptions> {
        sqlx::any::install_default_drivers();
        AnyConnectOptions::from_str(url).map_err(|e| anyhow::anyhow!("--database: {e}"))
    }

    /// The pool of a database server, connecting on demand (the service starts while the
    /// server is unreachable; see [`super::health`]). Call within the store's runtime.
    pub fn connect_lazy(self, options: AnyConnectOptions) -> (AnyPool, AnyPool) {
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        (pool.clone(), pool)
    }

    /// Opens the pools: one for writes and one for reads. On SQLite the writer is a single
    /// connection (SQLite has one writer at a time anyway; one connection means a transaction
    /// never finds the file locked by a sibling), the readers a few; on the servers both are the
    /// same pool of [`POOL_SIZE`].
    pub async fn connect(self, url: &str) -> Result<(AnyPool, AnyPool), sqlx::Error> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url)?;
        match self {
            Engine::Sqlite => {
                let writer = sqlite_pool(1).connect_with(options.clone()).await?;
                let readers = sqlite_pool(SQLITE_READERS).connect_with(options).await?;
                Ok((writer, readers))
            }
            _ => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                Ok((pool.clone(), pool))
            }
        }
    }
}

/// A SQLite pool whose connections wait for the lock instead of failing, use the write-ahead
/// log (readers never block the writer), and sync every commit (`synchronous=FULL`: a change the
/// service acknowledged survives a power cut, not only a crash).
///
/// `synchronous=FULL` is what makes an acknowledged change durable: in WAL mode, `NORMAL` syncs
/// the log only at checkpoints, so the last commits before a power cut would be lost although
/// their callers were answered. Group commit ([`super::group`]) is what keeps this affordable:
/// one sync acknowledges every change committed together.
///
/// No test before each acquire: the connection is a file handle in this process, not a socket
/// that may have died, and the test is one more round trip to SQLite's worker thread for every
/// query.
fn sqlite_pool(size: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
}

/// Whether `e` means another writer got there first: a unique key taken (two first writes of one
/// host), or a serialization failure or deadlock the engine resolved by aborting us. The caller
/// runs its change again on what is now stored.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || matches!(
                    db.code().as_deref(),
                    // serialization_failure (PostgreSQL; also MariaDB's deadlock), and
                    // PostgreSQL's deadlock_detected. (sqlx reports SQLSTATEs for both.)
                    Some("40001") | Some("40P01")
                )
        }
        _ => false,
    }
}

/// Whether `e` is the database being unreachable or too busy to answer now (as opposed to a bad
/// statement or a constraint): the service then answers 503 and the caller tries again later.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // SQLite: SQLITE_BUSY and SQLITE_LOCKED and their extended codes (another process
            // holds the file's write lock past busy_timeout).
            Some("5" | "6" | "261" | "262" | "517" | "773")
            // PostgreSQL: lock_not_available, query_canceled (statement timeout),
            // admin_shutdown, crash_shutdown, cannot_connect_now.
            | Some("55P03" | "57014" | "57P01" | "57P02" | "57P03")
            // MariaDB (SQLSTATE): too many connections, communication link failure.
            | Some("08004" | "08S01")
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_engine() {
        assert_eq!(Engine::of("sqlite:///var/lib/b/state.db").unwrap(), Engine::Sqlite);
        assert_eq!(Engine::of("postgres://u@h/db").unwrap(), Engine::Postgres);
        assert_eq!(Engine::of("postgresql://u@h/db").unwrap(), Engine::Postgres);
        assert_eq!(Engine::of("mysql://u@h/db").unwrap(), Engine::Mysql);
        let err = Engine::of("sqlserver://u:secret@h/db").unwrap_err();
        assert!(err.contains("SQL Server") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let q = "UPDATE hosts SET version = ? WHERE name = ? AND version = ?";
        assert_eq!(
            Engine::Postgres.sql(q).as_str(),
            "UPDATE hosts SET version = $1 WHERE name = $2 AND version = $3"
        );
        assert_eq!(Engine::Mysql.sql(q).as_str(), q);
        assert_eq!(Engine::Sqlite.sql(q).as_str(), q);
    }
}
