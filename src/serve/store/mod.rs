//! Where state lives: one database, through [`Store`]. SQLite in the state folder by default,
//! PostgreSQL or MariaDB for replicas ([`engine`]); the hosts' states ([`hosts`]), the audit log
//! ([`audit`]), each host's last verified boot, and the one-time move from the old files
//! ([`import`]).
//!
//! The store's interface is made of domain operations, not key-value calls. Above all,
//! [`Store::change`]: one transaction that reads a host's row, applies a pure lifecycle function
//! to it, writes it back only if its version is still the one read (compare-and-set), inserts the
//! audit record, and commits; a conflict (another replica wrote first) runs the function again
//! on what is now stored. Nothing above this folder sees SQL, a pool or an engine.
//!
//! Invariants:
//! - A change the service acknowledges is committed, with its audit record, before the answer
//!   goes out (SQLite syncs every commit; the servers do by default).
//! - No row changes without its audit record, and no audit record of a change exists without
//!   the change: they commit together.
//! - [`Store::may_decide`] errs only towards `true` (see [`hosts`]).
//!
//! **Replicas and failure** (PostgreSQL, MariaDB): the service starts while the database is
//! unreachable and migrates when it answers ([`health`]); while it does not answer, a gate
//! ([`Store::available`]) makes every operation fail at once as [`StoreError::Unavailable`]
//! (the API answers 503 with `Retry-After`, a flagged host's boot answers local, unflagged hosts
//! are answered from memory as always), and `/healthz` says so. On PostgreSQL, other replicas'
//! changes arrive by `LISTEN/NOTIFY` ([`listen`]).
//!
//! The database is reached from its own small runtime ([`Store::run`] from async code,
//! [`Store::wait`] from threads that may block), so the audit writer and the reload thread keep
//! working while the service's runtime starts or stops, and a slow database parks none of the
//! service's connection threads.

pub mod audit;
pub mod engine;
pub mod group;
pub mod guard;
pub mod health;
pub mod hosts;
pub mod import;
pub mod inventory;
pub mod listen;
pub mod refusals;
pub mod sessions;

use crate::serve::domain::event::Event;
use engine::Engine;
use sqlx::AnyPool;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The longest host name that can have state (the key columns are 255 bytes on every engine).
pub const MAX_STORED_NAME: usize = 200;

/// The file of the default SQLite database in `--state-dir`.
pub const SQLITE_FILE: &str = "state.db";

/// Errors of the store. Their text names the engine's problem for the server log and
/// authenticated callers; never a password (URLs are shown without theirs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now (down, pool exhausted, network): retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else the engine refused, or a stored record that does not parse.
    #[error("database error: {0}")]
    Database(String),
    #[error("host names longer than {MAX_STORED_NAME} characters cannot have state")]
    NameTooLong,
    /// Another writer kept winning the race for this host's row.
    #[error("the host's state kept changing under this change; try again")]
    Busy,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if engine::is_unavailable(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// A state change computed by a lifecycle function on the stored state: the value for the
/// caller, whether to write the state, and the audit record. With `write`, the record is
/// inserted in the change's transaction; without, it is queued as a plain note by the caller.
pub struct Change<T> {
    pub value: T,
    pub write: bool,
    pub record: Option<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    /// Write, and start even if a database server does not answer yet (`serve`).
    Serve,
}

/// How long the first connection at start may take before the service starts without the
/// database (PostgreSQL and MariaDB; see [`health`]).
const FIRST_CONTACT: std::time::Duration = std::time::Duration::from_secs(3);

/// The service's state in one database.
pub struct Store {
    engine: Engine,
    /// Writes (on SQLite a single connection) and reads (the same pool on the servers).
    writer: AnyPool,
    reader: AnyPool,
    /// SQLite's group writer, which commits the changes queued together in one transaction
    /// (see [`group`]); `None` on the servers and for read-only stores.
    group: Option<group::Group>,
    /// The last full read of the hosts' states (see [`Store::states_blocking`]).
    states: std::sync::Mutex<Option<hosts::StatesRead>>,
    /// Hosts whose state may decide a boot: see [`Store::may_decide`].
    deciding: hosts::SharedDeciding,
    /// Whether the database answers (always for SQLite): see [`health`].
    health: Arc<health::Health>,
    /// Whether the PostgreSQL listener is connected and resynced: see [`listen`].
    listening: Arc<AtomicBool>,
    /// The inventory's version as the listener last heard it (see
    /// [`Store::inventory_version_hint`]).
    inventory_heard: Arc<std::sync::atomic::AtomicU64>,
    /// The runtime every query runs on (see the module documentation). `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Held for the store's life: the lock that keeps a second `serve` off a SQLite file.
    _guard: Option<guard::FileGuard>,
    /// The database as shown in logs and errors: its engine and where, never a password.
    shown: String,
}

impl Store {
    /// The default database: SQLite in `state_dir`.
    pub fn default_url(state_dir: &Path) -> String {
        sqlite_url(&state_dir.join(SQLITE_FILE))
    }

    /// Opens the database `url` (creating a SQLite file and its folder), takes the SQLite
    /// guards, runs the migrations, and moves an old state folder's files in if `state_dir`
    /// has them (see [`import`]). A PostgreSQL or MariaDB server that does not answer (as
    /// opposed to one that refuses the login) is not an error: the store opens without it and
    /// follows it from then on (see [`health`]), unless there are old files to import.
    pub fn open(url: &str, state_dir: Option<&Path>) -> anyhow::Result<Store> {
        let store = Store::connect_as(url, Access::Serve)?;
        if !store.health.is_up() {
            if let Some(dir) = state_dir.filter(|d| import::has_old_files(d)) {
                anyhow::bail!(
                    "{} holds old state files to import, and the database {} does not answer: start the service once the database is reachable",
                    dir.display(),
                    store.shown
                );
            }
            return Ok(store);
        }
        if let Some(dir) = state_dir {
            if let Some(summary) = import::import_if_present(&store, dir)? {
                tracing::warn!("{summary}");
            }
        }
        store.rescan();
        Ok(store)
    }

    /// [`Store::open`] without the import: for `bootforge state` commands.
    pub fn connect(url: &str) -> anyhow::Result<Store> {
        Store::connect_as(url, Access::Write)
    }

    /// A store that only reads, for `bootforge audit export` and `state copy --from`: it takes
    /// no guard, so it works next to a running `serve` (SQLite's write-ahead log lets readers of
    /// other processes read while the service writes), and it never migrates: a database this
    /// version does not know is refused.
    pub fn open_reader(url: &str) -> anyhow::Result<Store> {
        Store::connect_as(url, Access::Read)
    }

    fn connect_as(url: &str, access: Access) -> anyhow::Result<Store> {
        let engine = Engine::of(url).map_err(anyhow::Error::msg)?;
        let shown = shown_url(url);
        let guard = match engine {
            Engine::Sqlite if access == Access::Read => {
                let path = sqlite_path(url)?;
                if !path.is_file() {
                    anyhow::bail!("there is no database at {} (nothing to read)", path.display());
                }
                None
            }
            Engine::Sqlite => {
                let path = sqlite_path(url)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("cannot create the folder of {}: {e}", path.display())
                    })?;
                }
                Some(guard::FileGuard::take(&path)?)
            }
            _ => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("db")
            .enable_all()
            .build()?;
        let url_owned = match access {
            Access::Write | Access::Serve => sqlite_create(url, engine),
            Access::Read => url.to_string(),
        };
        let lazy = access == Access::Serve && engine != Engine::Sqlite;
        let mut up = true;
        let (writer, reader) = if lazy {
            // Tried once, briefly, to tell "not there now" from a configuration error (which
            // fails the start): the pools connect on demand.
            let options = engine.options(&url_owned)?;
            let first = runtime.block_on(async {
                use sqlx::Connection;
                tokio::time::timeout(FIRST_CONTACT, sqlx::AnyConnection::connect_with(&options))
                    .await
            });
            match first {
                Ok(Ok(conn)) => drop(conn),
                Ok(Err(e)) if health::unreachable(&e) => {
                    tracing::error!(database = %shown, "the database does not answer ({e}); starting without it: boots of flagged hosts answer local, API writes and logins 503, until it does");
                    up = false;
                }
                Err(_) => {
                    tracing::error!(database = %shown, "the database did not answer within {FIRST_CONTACT:?}; starting without it: boots of flagged hosts answer local, API writes and logins 503, until it does");
                    up = false;
                }
                Ok(Err(e)) => {
                    anyhow::bail!("cannot open the database {shown}: {e}{}", tls_hint(&e))
                }
            }
            let _guard = runtime.enter();
            engine.connect_lazy(options)
        } else {
            runtime.block_on(engine.connect(&url_owned)).map_err(|e| {
                anyhow::anyhow!("cannot open the database {shown}: {e}{}", tls_hint(&e))
            })?
        };
        match access {
            Access::Write | Access::Serve if up => {
                runtime.block_on(engine.migrator().run(&writer)).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot bring the database {shown} to this version's schema: {e}"
                    )
                })?
            }
            Access::Write | Access::Serve => {}
            Access::Read => {
                let known = engine.migrator().iter().map(|m| m.version).max().unwrap_or(0);
                let pool = reader.clone();
                let applied: Option<i64> = runtime
                    .block_on(async move {
                        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                            .fetch_one(&pool)
                            .await
                    })
                    .map_err(|e| {
                        anyhow::anyhow!("{shown} is not a bootforge database (or not one this version can read): {e}")
                    })?;
                if applied.unwrap_or(0) > known {
                    anyhow::bail!("{shown} was written by a newer bootforge (schema {}, this one knows {known}); use that version", applied.unwrap_or(0));
                }
            }
        }
        let group = (engine == Engine::Sqlite && access != Access::Read).then(|| {
            let _guard = runtime.enter();
            group::Group::start(engine, writer.clone())
        });
        let deciding = hosts::SharedDeciding::default();
        let health = Arc::new(health::Health::new(up));
        let listening = Arc::new(AtomicBool::new(false));
        let inventory_heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if lazy {
            runtime.spawn(health::monitor(health::Watched {
                engine,
                options: engine.options(&url_owned)?,
                writer: writer.clone(),
                deciding: deciding.clone(),
                health: health.clone(),
                migrated: Arc::new(AtomicBool::new(up)),
                shown: shown.clone(),
            }));
            if engine == Engine::Postgres {
                let options =
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url_owned)
                        .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
                runtime.spawn(listen::run(listen::Listener {
                    options,
                    reader: reader.clone(),
                    deciding: deciding.clone(),
                    health: health.clone(),
                    listening: listening.clone(),
                    inventory_heard: inventory_heard.clone(),
                    shown: shown.clone(),
                }));
            }
        }
        Ok(Store {
            engine,
            writer,
            reader,
            group,
            states: Default::default(),
            deciding,
            health,
            listening,
            inventory_heard,
            runtime: Some(runtime),
            _guard: guard,
            shown,
        })
    }

    /// `Err(Unavailable)` at once while the database does not answer (see [`health`]); every
    /// operation of a request starts with it, so none waits out a connection timeout.
    pub fn available(&self) -> Result<(), StoreError> {
        if self.health.is_up() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "it did not answer the last health check (see /status)".into(),
            ))
        }
    }

    /// Whether the database answers, since when, and the last failure.
    pub fn health(&self) -> health::Shown {
        self.health.shown()
    }

    /// The database's clock in milliseconds since 1970, without a query (see
    /// [`health::Health::now_ms`]; this machine's for SQLite). Every decision about a window
    /// that is not made inside a change's transaction uses it.
    pub fn now_ms(&self) -> u64 {
        self.health.now_ms()
    }

    /// Whether the PostgreSQL listener is connected (always `false` on the other engines).
    pub fn listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The engine, for `/status` and the logs.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The database as it may be shown (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the store's runtime lives as long as the store")
    }

    /// Runs `work` on the store's runtime and waits for it asynchronously.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let result = self
            .rt()
            .spawn(work)
            .await
            .map_err(|e| StoreError::Database(format!("a database task failed: {e}")))?;
        if let Err(StoreError::Unavailable(_)) = &result {
            self.health.suspect();
        }
        result
    }

    /// Runs `work` on the store's runtime and blocks this thread until it is done. Only for
    /// threads that may block (the audit writer, the reload thread, the blocking pool).
    pub fn wait<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        // Not a spawn: the future runs on this thread, its sockets driven by the store's
        // runtime (allowed on any thread outside an async context, the blocking pool included).
        self.rt().handle().block_on(work)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which must not happen on an async thread:
        // let them finish in the background instead (the pools close with the process).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What to check when the TLS handshake with the database failed verification (rustls names
/// the failure tersely, e.g. `BadSignature` for a certificate from another CA).
fn tls_hint(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            " (TLS: the server's certificate must be signed by the CA in `sslrootcert` and carry the URL's host name or address in its subjectAltName; see docs/REPLICAS.md)"
        }
        _ => "",
    }
}

/// A SQLite URL for a file path (percent-encoding what sqlx would otherwise read as syntax).
pub fn sqlite_url(path: &Path) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'.').remove(b'-').remove(b'_');
    let text = path.to_string_lossy();
    format!("sqlite://{}", percent_encoding::utf8_percent_encode(&text, KEEP))
}

/// The file a `sqlite:` URL names (refusing in-memory databases: state must outlive the
/// process).
pub fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("not a sqlite: URL"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        anyhow::bail!("--database {url}: an in-memory SQLite database would lose every flag at exit; name a file (sqlite:///var/lib/bootforge/state.db)");
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| anyhow::anyhow!("--database: the SQLite path is not valid UTF-8"))?;
    Ok(PathBuf::from(decoded.as_ref()))
}

/// SQLite creates its file only when asked (`mode=rwc`).
fn sqlite_create(url: &str, engine: Engine) -> String {
    if engine != Engine::Sqlite || url.contains("mode=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

/// `url` without its password (and without query parameters, which may hold key file paths
/// but never need showing).
pub fn shown_url(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.split('?').next().unwrap_or(url).to_string();
    };
    // The credentials end at the last `@` (a password may hold `?`, `/` or `#` unencoded, which
    // a URL parser would misread); without one there are none.
    let rest = &url[s + 3..];
    let (user, host) = match rest.rfind('@') {
        Some(at) => (rest[..at].split(':').next().unwrap_or(""), &rest[at + 1..]),
        None => ("", rest),
    };
    let host = host.split('?').next().unwrap_or(host);
    match user.is_empty() {
        true => format!("{}://{host}", &url[..s]),
        false => format!("{}://{user}@{host}", &url[..s]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            shown_url("postgres://bf:s3cr%40t@db.example:5432/bf?sslmode=verify-full"),
            "postgres://bf@db.example:5432/bf"
        );
        assert_eq!(shown_url("mysql://bf@db/bf"), "mysql://bf@db/bf");
        assert_eq!(shown_url("postgres://bf:pa?ss/w#rd@db/bf?x=1"), "postgres://bf@db/bf");
        assert_eq!(shown_url("sqlite:///var/lib/b/state.db"), "sqlite:///var/lib/b/state.db");
    }

    #[test]
    fn sqlite_urls_round_trip_odd_paths() {
        let p = Path::new("/tmp/a b/#x?y%/state.db");
        assert_eq!(sqlite_path(&sqlite_url(p)).unwrap(), p);
        assert!(sqlite_path("sqlite::memory:").is_err());
    }
}
