//! Console sessions in the database, so that any replica serves any browser and a logout, an
//! expiry or an admin's "end every session of this name" holds on all of them at once.
//!
//! The checks that decide whether a request may use a session (CSRF, other sites, the token
//! still in the tokens file, roles) are [`crate::serve::auth::session`]'s; this module keeps the
//! rows and does the few things that must be one transaction.
//!
//! Invariants:
//! - **No usable secret is stored.** A row is keyed by the SHA-256 of the cookie's 32 random
//!   bytes; the CSRF token is derived from the cookie by the auth layer and not stored at all.
//!   Reading the table (a backup, a replica's credentials) gives nothing a browser could send.
//! - **Caps are exact across replicas.** Opening a session ([`Store::open_session`]) first
//!   locks the one row of `session_gate`, then drops its identity's ended sessions, its least
//!   recently used one at [`MAX_SESSIONS_PER_IDENTITY`], and refuses ([`Full`]) when the table
//!   holds [`MAX_SESSIONS`] live sessions of other identities; logins are rare (rate-limited,
//!   most of them wait for a directory), so serialising them costs nothing a person notices.
//! - **Use is recorded without a write per request.** [`Store::touch_session`] moves a
//!   session's last use only when the stored one is at least [`touch_gap`] old, so a session
//!   may end up to that much before its idle lifetime after its last request, never after it.
//! - Every time that decides (idle, absolute, a directory role's staleness) is compared with
//!   the caller's clock, passed in as `now` (milliseconds since 1970).
//!
//! Threats: a stolen database dump opens no session (hashes only); one identity logging in
//! thousands of times ends only its own sessions; a table full of live sessions refuses
//! newcomers rather than ending anyone's.

use super::engine::{is_conflict, Engine};
use super::{Store, StoreError};
use crate::serve::domain::actor::Role;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

/// Sessions held at most, of all identities together. When every one is alive, a login of an
/// identity that holds none is refused (503) rather than ending someone else's session.
pub const MAX_SESSIONS: usize = 10_000;
/// Live sessions one identity (an API token, or a directory account) holds at most; its next
/// login ends its own least recently used one. Enough for a person's browsers and tabs.
pub const MAX_SESSIONS_PER_IDENTITY: usize = 20;
/// A session's last use is written at most this often (see [`touch_gap`]).
pub const TOUCH_MS: u64 = 60_000;

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ended after this long without a request (the page's own polling counts as use).
    pub idle_ms: u64,
    /// Ended this long after login, whatever happens.
    pub absolute_ms: u64,
}

impl Default for Lifetimes {
    /// 30 minutes idle, 12 hours in all: a working day at the console, one login.
    fn default() -> Self {
        Lifetimes { idle_ms: 30 * 60 * 1000, absolute_ms: 12 * 3600 * 1000 }
    }
}

impl Lifetimes {
    /// Whether a session opened at `created` and last used at `seen` is alive at `now`.
    pub fn alive(&self, created: u64, seen: u64, now: u64) -> bool {
        now.saturating_sub(seen) < self.idle_ms && now.saturating_sub(created) < self.absolute_ms
    }
}

/// How old a session's recorded last use may grow before a request writes it again: a tenth of
/// the idle lifetime, at most [`TOUCH_MS`] (a minute of a 30-minute session).
pub fn touch_gap(life: Lifetimes) -> u64 {
    (life.idle_ms / 10).min(TOUCH_MS)
}

/// What a session stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Opened with the API token of this hash: its caller is looked up again on every request.
    Token([u8; 32]),
    /// Opened with a directory account.
    Directory(DirectoryHolder),
}

/// A directory session's account and how fresh its role is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryHolder {
    /// The directory's canonical name of the account.
    pub name: String,
    /// Its role, as found at login and lowered by re-checks.
    pub role: Role,
    /// The account's entry, by which re-checks find it.
    pub dn: String,
    /// When the directory last granted the role (login, then each successful re-check).
    pub confirmed: u64,
    /// The session is refused once `confirmed` is this old.
    pub stale_ms: u64,
}

impl Holder {
    /// Whom the session is counted against, as stored (`owner`): the token (by hash), or the
    /// directory entry (its DN, case-folded). Not the account's name: OpenLDAP does not make
    /// `uid` unique, so two accounts may share a name, and one must not use up the other's
    /// sessions.
    fn owner(&self) -> String {
        match self {
            Holder::Token(h) => digest(b"token", h),
            Holder::Directory(d) => dn_owner(&d.dn),
        }
    }
}

fn dn_owner(dn: &str) -> String {
    digest(b"directory", dn.to_lowercase().as_bytes())
}

fn name_key(name: &str) -> String {
    digest(b"name", name.to_lowercase().as_bytes())
}

/// SHA-256 of `kind`, a zero byte and `data`, in hex: fixed-width keys for any text.
fn digest(kind: &[u8], data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(kind);
    h.update([0u8]);
    h.update(data);
    hex::encode(h.finalize())
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Holder,
    pub created: u64,
    pub seen: u64,
}

/// Refused: the table of sessions is full of live sessions of other identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// What [`Store::confirm_sessions`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rechecked {
    /// The names the account's sessions carried.
    pub names: Vec<String>,
    pub lowered: usize,
    pub ended: usize,
}

/// `now - span` as a stored time, which may be before 1970 (nothing is then older than it).
fn before(now: u64, span: u64) -> i64 {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    clamp(now).saturating_sub(clamp(span))
}

fn stored(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn unstored(v: i64) -> u64 {
    v.max(0) as u64
}

const COLUMNS: &str =
    "token_hash, name, role, dn, confirmed_ms, stale_ms, created_ms, seen_ms FROM sessions";

fn record(row: &sqlx::any::AnyRow) -> Result<Record, StoreError> {
    let bad = |what: &str| StoreError::Database(format!("a stored session has {what}"));
    let token: Option<String> = row.try_get(0)?;
    let holder = match token {
        Some(hex_hash) => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(hex_hash.trim(), &mut h)
                .map_err(|_| bad("a token hash that is not 64 hex digits"))?;
            Holder::Token(h)
        }
        None => {
            let role: Option<String> = row.try_get(2)?;
            Holder::Directory(DirectoryHolder {
                name: row.try_get::<Option<String>, _>(1)?.ok_or_else(|| bad("no name"))?,
                role: role
                    .ok_or_else(|| bad("no role"))?
                    .parse()
                    .map_err(|_| bad("an unknown role"))?,
                dn: row.try_get::<Option<String>, _>(3)?.ok_or_else(|| bad("no entry"))?,
                confirmed: unstored(row.try_get::<Option<i64>, _>(4)?.unwrap_or(0)),
                stale_ms: unstored(row.try_get::<Option<i64>, _>(5)?.unwrap_or(0)),
            })
        }
    };
    Ok(Record { holder, created: unstored(row.try_get(6)?), seen: unstored(row.try_get(7)?) })
}

impl Store {
    /// Opens a session keyed by `id_hash` for `holder` at `now`, in one transaction (see the
    /// module documentation): `Ok(Err(Full))` when the table is full of other identities' live
    /// sessions, and then nothing changed.
    pub async fn open_session(
        &self,
        id_hash: [u8; 32],
        holder: Holder,
        life: Lifetimes,
        now: u64,
    ) -> Result<Result<(), Full>, StoreError> {
        let (pool, engine) = (self.writer.clone(), self.engine);
        self.run(async move {
            // A deadlock the engine broke by aborting this login (MariaDB's gap locks against
            // another replica's touch) is tried again; the gate makes it rare.
            let mut pause = std::time::Duration::from_millis(5);
            for _ in 0..5 {
                match open(engine, &pool, id_hash, holder.clone(), life, now).await {
                    Err(e) if is_conflict(&e) => {
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                    done => return done.map_err(StoreError::from),
                }
            }
            Err(StoreError::Busy)
        })
        .await
    }

    /// The session keyed by `id_hash`, alive or not (the caller decides).
    pub async fn session(&self, id_hash: [u8; 32]) -> Result<Option<Record>, StoreError> {
        let (pool, engine) = (self.reader.clone(), self.engine);
        self.run(async move {
            let row = sqlx::query(engine.sql_owned(format!("SELECT {COLUMNS} WHERE id_hash = ?")))
                .bind(hex::encode(id_hash))
                .fetch_optional(&pool)
                .await?;
            row.as_ref().map(record).transpose()
        })
        .await
    }

    /// Records a use of the session at `now` if the stored one is at least `gap` older (the
    /// caller only asks when the record it read says so; the condition makes two replicas'
    /// touches one write, and never moves the last use back).
    pub async fn touch_session(
        &self,
        id_hash: [u8; 32],
        gap: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let (pool, engine) = (self.writer.clone(), self.engine);
        self.run(async move {
            sqlx::query(
                engine.sql("UPDATE sessions SET seen_ms = ? WHERE id_hash = ? AND seen_ms <= ?"),
            )
            .bind(stored(now))
            .bind(hex::encode(id_hash))
            .bind(before(now, gap))
            .execute(&pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Ends the session keyed by `id_hash` (logout, or found dead); unknown keys are ignored.
    pub async fn end_session(&self, id_hash: [u8; 32]) -> Result<(), StoreError> {
        let (pool, engine) = (self.writer.clone(), self.engine);
        self.run(async move {
            sqlx::query(engine.sql("DELETE FROM sessions WHERE id_hash = ?"))
                .bind(hex::encode(id_hash))
                .execute(&pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Ends every directory session whose account is named `name` (compared case-insensitively,
    /// as directories compare names); returns how many.
    pub async fn end_sessions_named(&self, name: &str) -> Result<usize, StoreError> {
        let (pool, engine, key) = (self.writer.clone(), self.engine, name_key(name));
        self.run(async move {
            let done = sqlx::query(engine.sql("DELETE FROM sessions WHERE name_key = ?"))
                .bind(key)
                .execute(&pool)
                .await?;
            Ok(done.rows_affected() as usize)
        })
        .await
    }

    /// Ends every session that is no longer alive at `now`; returns how many. (A session found
    /// dead by a request is ended then; this keeps forgotten ones from piling up.)
    pub async fn expire_sessions(&self, life: Lifetimes, now: u64) -> Result<usize, StoreError> {
        let (pool, engine) = (self.writer.clone(), self.engine);
        self.run(async move {
            let done = sqlx::query(
                engine.sql("DELETE FROM sessions WHERE seen_ms <= ? OR created_ms <= ?"),
            )
            .bind(before(now, life.idle_ms))
            .bind(before(now, life.absolute_ms))
            .execute(&pool)
            .await?;
            Ok(done.rows_affected() as usize)
        })
        .await
    }

    /// The entries (DNs) of live directory sessions whose role was last confirmed `every_ms`
    /// or longer ago: the accounts to re-check now, each once, in order.
    pub async fn sessions_due_for_recheck(
        &self,
        life: Lifetimes,
        every_ms: u64,
        now: u64,
    ) -> Result<Vec<String>, StoreError> {
        let (pool, engine) = (self.reader.clone(), self.engine);
        self.run(async move {
            let rows = sqlx::query(engine.sql(
                "SELECT dn FROM sessions WHERE dn IS NOT NULL AND seen_ms > ? AND created_ms > ? \
                 AND confirmed_ms <= ?",
            ))
            .bind(before(now, life.idle_ms))
            .bind(before(now, life.absolute_ms))
            .bind(before(now, every_ms))
            .fetch_all(&pool)
            .await?;
            let mut due = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
                .collect::<Result<Vec<_>, _>>()?;
            // Sorted here, not by the engine: PostgreSQL's text order follows its locale.
            due.sort_unstable();
            due.dedup();
            Ok(due)
        })
        .await
    }

    /// Applies a re-check of the account of entry `dn` (compared case-insensitively), in one
    /// transaction: `Some(role)` confirms its sessions at `now`, lowering a role larger than
    /// `role` (a re-check never raises one); `None` (gone, disabled, in no mapped group) ends
    /// them.
    pub async fn confirm_sessions(
        &self,
        dn: &str,
        role: Option<Role>,
        now: u64,
    ) -> Result<Rechecked, StoreError> {
        let (pool, engine, owner) = (self.writer.clone(), self.engine, dn_owner(dn));
        self.run(async move {
            let mut tx = engine.begin(&pool).await?;
            let rows = sqlx::query(engine.sql(
                "SELECT id_hash, name, role FROM sessions WHERE owner = ? AND token_hash IS NULL",
            ))
            .bind(owner.clone())
            .fetch_all(&mut *tx)
            .await?;
            let mut out = Rechecked::default();
            for row in &rows {
                let name: Option<String> = row.try_get(1)?;
                if let Some(name) = name.filter(|n| !out.names.contains(n)) {
                    out.names.push(name);
                }
            }
            match role {
                None => {
                    let done = sqlx::query(engine.sql(
                        "DELETE FROM sessions WHERE owner = ? AND token_hash IS NULL",
                    ))
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                    out.ended = done.rows_affected() as usize;
                }
                Some(r) => {
                    for row in &rows {
                        let had: Option<String> = row.try_get(2)?;
                        let had: Option<Role> = had.and_then(|h| h.parse().ok());
                        if had.is_none_or(|h| r < h) {
                            sqlx::query(engine.sql("UPDATE sessions SET role = ? WHERE id_hash = ?"))
                                .bind(r.as_str())
                                .bind(row.try_get::<String, _>(0)?)
                                .execute(&mut *tx)
                                .await?;
                            out.lowered += 1;
                        }
                    }
                    sqlx::query(engine.sql(
                        "UPDATE sessions SET confirmed_ms = ? WHERE owner = ? AND token_hash IS NULL",
                    ))
                    .bind(stored(now))
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// Sessions stored, alive or not yet expired (for `/status`).
    pub async fn count_sessions(&self) -> Result<usize, StoreError> {
        let pool = self.reader.clone();
        self.run(async move {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&pool).await?;
            Ok(unstored(n) as usize)
        })
        .await
    }

    /// [`Store::count_sessions`] from a thread that may block (tests).
    pub fn count_sessions_blocking(&self) -> Result<usize, StoreError> {
        let pool = self.reader.clone();
        self.wait(async move {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&pool).await?;
            Ok(unstored(n) as usize)
        })
    }
}

/// The body of [`Store::open_session`].
async fn open(
    engine: Engine,
    pool: &AnyPool,
    id_hash: [u8; 32],
    holder: Holder,
    life: Lifetimes,
    now: u64,
) -> Result<Result<(), Full>, sqlx::Error> {
    let owner = holder.owner();
    let (idle_before, absolute_before) = (before(now, life.idle_ms), before(now, life.absolute_ms));
    let mut tx = engine.begin(pool).await?;
    // First, before reading anything: one login at a time (on MariaDB this also makes the
    // reads below see every login committed before it).
    sqlx::query(engine.sql("UPDATE session_gate SET logins = logins + 1 WHERE id = ?"))
        .bind(1i32)
        .execute(&mut *tx)
        .await?;
    // The identity's own ended sessions go first.
    sqlx::query(
        engine.sql("DELETE FROM sessions WHERE owner = ? AND (seen_ms <= ? OR created_ms <= ?)"),
    )
    .bind(owner.clone())
    .bind(idle_before)
    .bind(absolute_before)
    .execute(&mut *tx)
    .await?;
    // At its cap, its own least recently used ones.
    let own = sqlx::query(
        engine.sql("SELECT id_hash FROM sessions WHERE owner = ? ORDER BY seen_ms, created_ms"),
    )
    .bind(owner.clone())
    .fetch_all(&mut *tx)
    .await?;
    let mut own: Vec<String> =
        own.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    let surplus = (own.len() + 1).saturating_sub(MAX_SESSIONS_PER_IDENTITY);
    for key in own.drain(..surplus.min(own.len())) {
        delete(engine, &mut tx, &key).await?;
    }
    if count(&mut tx).await? >= MAX_SESSIONS {
        sqlx::query(engine.sql("DELETE FROM sessions WHERE seen_ms <= ? OR created_ms <= ?"))
            .bind(idle_before)
            .bind(absolute_before)
            .execute(&mut *tx)
            .await?;
        if count(&mut tx).await? >= MAX_SESSIONS {
            // Full of live sessions: only the identity's own may make room.
            if own.is_empty() {
                tx.rollback().await?;
                return Ok(Err(Full));
            }
            let oldest = own.remove(0);
            delete(engine, &mut tx, &oldest).await?;
        }
    }
    let (token, dir) = match &holder {
        Holder::Token(h) => (Some(hex::encode(h)), None),
        Holder::Directory(d) => (None, Some(d)),
    };
    sqlx::query(engine.sql(
        "INSERT INTO sessions (id_hash, owner, token_hash, name, name_key, role, dn, \
         confirmed_ms, stale_ms, created_ms, seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(hex::encode(id_hash))
    .bind(owner)
    .bind(token)
    .bind(dir.map(|d| d.name.clone()))
    .bind(dir.map(|d| name_key(&d.name)))
    .bind(dir.map(|d| d.role.as_str().to_string()))
    .bind(dir.map(|d| d.dn.clone()))
    .bind(dir.map(|d| stored(d.confirmed)))
    .bind(dir.map(|d| stored(d.stale_ms)))
    .bind(stored(now))
    .bind(stored(now))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

async fn delete(
    engine: Engine,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(engine.sql("DELETE FROM sessions WHERE id_hash = ?"))
        .bind(key.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn count(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<usize, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&mut **tx).await?;
    Ok(unstored(n) as usize)
}
