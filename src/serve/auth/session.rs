//! The console's sessions: who a browser is, for how long, and the checks that keep another site
//! from acting with its cookie.
//!
//! A login (an API token, or a directory account through [`crate::serve::auth::ldap`]) opens a
//! session: a random 256-bit id sent once as the `bf_session` cookie (`HttpOnly`,
//! `SameSite=Strict`, `Path=/`, `Secure` when the service is reached over TLS), and a CSRF token
//! that the page fetches from `GET /session` and sends back as `X-CSRF-Token` on every request
//! that changes anything. The CSRF token is the SHA-256 of a fixed label and the id
//! ([`csrf_of`]): as unguessable as the id to anyone without the cookie, and never stored. The
//! database keeps only the SHA-256 of the id ([`crate::serve::store::sessions`]), so the table
//! of live sessions holds no usable cookie and no CSRF token.
//!
//! Sessions live in the service's database, so every replica on one database serves every
//! browser: a login through one is valid on all, and a logout, an expiry, a re-check's verdict
//! or an admin's `DELETE /sessions?name=` through one holds on all at the next request. A
//! restart logs nobody out.
//!
//! A session ends at logout, after [`Lifetimes::idle_ms`] without a request (measured to within
//! [`crate::serve::store::sessions::touch_gap`], which is what spares a write per request), after
//! [`Lifetimes::absolute_ms`] whatever happens, and, for one opened with an API token, as soon
//! as the token's line leaves the tokens file (the session keeps the token's hash and looks it
//! up on every request, so revoking a token still revokes everything it opened). A session
//! opened with a directory account carries the account's canonical name and entry DN; a
//! background re-check ([`Sessions::due_for_recheck`], [`Sessions::confirm`]) lowers or ends it
//! when the directory no longer grants the role, a session whose role no re-check confirmed in
//! time is refused (so a stopped re-check or a long outage fails closed), and an admin can end
//! every session of a name ([`Sessions::end_name`]). A session that cannot be checked because
//! the database does not answer is refused with 503 ([`Denied::SessionsUnavailable`]), never
//! let through.
//!
//! Abuse bounds: an identity holds at most [`MAX_SESSIONS_PER_IDENTITY`] sessions and no login
//! ends another identity's session (enforced in the store's transaction); failed logins are
//! limited per address and per account name, counted before they are checked, in memory an
//! attacker cannot flush ([`LoginLimiter`]).
//!
//! The decisions take the clock as an argument (`now`, milliseconds), so the unit tests below
//! drive them over a SQLite store; the handlers in [`crate::serve::console::login`] wire them to
//! requests.

use crate::serve::auth::tokens::Denied;
use crate::serve::auth::tokens::Tokens;
use crate::serve::domain::actor::{Caller, Role, Via};
use crate::serve::store::sessions::{touch_gap, DirectoryHolder, Holder};
use crate::serve::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use subtle_eq::ct_eq;

pub use crate::serve::store::sessions::{
    Full, Lifetimes, Rechecked, MAX_SESSIONS, MAX_SESSIONS_PER_IDENTITY,
};

/// The cookie's name.
pub const COOKIE: &str = "bf_session";
/// `COOKIE=`, to find the cookie in a `Cookie` header.
pub const COOKIE_EQ: &str = "bf_session=";

/// A session just opened: the cookie value and the CSRF token, both hex. Handed to the client
/// once, never kept.
pub struct Opened {
    pub id: String,
    pub csrf: String,
}

/// Why a login opened no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOpened {
    /// The table is full of other identities' live sessions ([`MAX_SESSIONS`]).
    Full,
    /// The database did not take the session (its error, for the server log).
    Unavailable(String),
}

/// The console's sessions, kept in the service's database (see the module documentation).
pub struct Sessions {
    store: Arc<Store>,
    life: Lifetimes,
}

/// A session request's method, as far as CSRF is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET and HEAD: change nothing, need no CSRF token.
    Safe,
    /// Everything else: needs the session's CSRF token.
    Changes,
}

/// What a request sent that the session checks look at.
pub struct Presented<'a> {
    pub id: &'a str,
    pub method: Method,
    pub csrf: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    /// The origin the browser should be on (`http://HOST[:PORT]` from the request's `Host`);
    /// `None` when the request had no usable `Host`.
    pub own_origin: Option<&'a str>,
}

impl Sessions {
    pub fn new(store: Arc<Store>, life: Lifetimes) -> Sessions {
        Sessions { store, life }
    }

    /// How long sessions last.
    pub fn life(&self) -> Lifetimes {
        self.life
    }

    /// Opens a session for a caller authenticated with an API token (by the token's hash).
    pub async fn open_token(&self, hash: [u8; 32], now: u64) -> Result<Opened, NotOpened> {
        self.open(Holder::Token(hash), now).await
    }

    /// Opens a session for a directory account (its canonical name, role and entry). The
    /// session is refused once its role has gone `stale_ms` without being confirmed by
    /// [`Sessions::confirm`]: with a lookup account, a few re-check intervals (an outage of the
    /// directory does not end sessions at once); without one, the re-check interval itself
    /// (logging in again is the re-check).
    pub async fn open_directory(
        &self,
        name: String,
        role: Role,
        dn: String,
        stale_ms: u64,
        now: u64,
    ) -> Result<Opened, NotOpened> {
        let holder = DirectoryHolder { name, role, dn, confirmed: now, stale_ms };
        self.open(Holder::Directory(holder), now).await
    }

    /// The entries (DNs) of live directory sessions whose role was last confirmed `every_ms`
    /// or longer ago: the accounts to re-check now, each once.
    pub async fn due_for_recheck(
        &self,
        every_ms: u64,
        now: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.store.sessions_due_for_recheck(self.life, every_ms, now).await
    }

    /// Applies a re-check of the account of entry `dn` (compared case-insensitively):
    /// `Some(role)` confirms its sessions, lowering a role larger than `role` (a re-check
    /// never raises one); `None` (gone, disabled, in no mapped group) ends them. Returns the
    /// sessions' names and how many were lowered and ended.
    pub async fn confirm(
        &self,
        dn: &str,
        role: Option<Role>,
        now: u64,
    ) -> Result<Rechecked, StoreError> {
        self.store.confirm_sessions(dn, role, now).await
    }

    /// Ends every directory session whose account is named `name` (compared
    /// case-insensitively, as directories compare names), on every replica. Where several
    /// accounts share the name (OpenLDAP does not make `uid` unique), all of them are logged
    /// out: ending too many is the safe side. Returns how many.
    pub async fn end_name(&self, name: &str) -> Result<usize, StoreError> {
        self.store.end_sessions_named(name).await
    }

    async fn open(&self, holder: Holder, now: u64) -> Result<Opened, NotOpened> {
        let id: [u8; 32] = rand::random();
        match self.store.open_session(hash(&id), holder, self.life, now).await {
            Ok(Ok(())) => Ok(Opened { id: hex::encode(id), csrf: hex::encode(csrf_of(&id)) }),
            Ok(Err(Full)) => Err(NotOpened::Full),
            Err(e) => Err(NotOpened::Unavailable(e.to_string())),
        }
    }

    /// Checks a request that carries a session cookie: the session is alive (its use is then
    /// recorded, see [`touch_gap`]), the request is not from another site, a changing request
    /// carries the CSRF token, and the caller has role `need`. Returns the caller and the CSRF
    /// token (hex). A session found ended is removed from the database.
    pub async fn check(
        &self,
        tokens: &Tokens,
        p: &Presented<'_>,
        need: Role,
        now: u64,
    ) -> Result<(Caller, String), Denied> {
        cross_site(p)?;
        let raw = hex_32(p.id).ok_or(Denied::NoSession)?;
        let key = hash(&raw);
        let unavailable = |e: StoreError| {
            tracing::error!("cannot check a console session: {e}");
            Denied::SessionsUnavailable
        };
        let Some(session) = self.store.session(key).await.map_err(unavailable)? else {
            return Err(Denied::NoSession);
        };
        let caller = match &session.holder {
            _ if !self.life.alive(session.created, session.seen, now) => None,
            // No re-check confirmed the role in time.
            Holder::Directory(d) if now.saturating_sub(d.confirmed) >= d.stale_ms => None,
            Holder::Directory(d) => {
                Some(Caller { name: d.name.clone(), role: d.role, via: Via::LdapSession })
            }
            // The token was revoked: so is its session.
            Holder::Token(h) => tokens.by_hash(h).map(|c| Caller { via: Via::TokenSession, ..c }),
        };
        let Some(caller) = caller else {
            self.store.end_session(key).await.map_err(unavailable)?;
            return Err(Denied::NoSession);
        };
        let csrf = csrf_of(&raw);
        if p.method == Method::Changes {
            let sent = p.csrf.and_then(|t| hex_32(t.trim()));
            if !sent.is_some_and(|t| ct_eq(&t, &csrf)) {
                return Err(Denied::Csrf);
            }
        }
        let gap = touch_gap(self.life);
        if now.saturating_sub(session.seen) >= gap {
            if let Err(e) = self.store.touch_session(key, gap, now).await {
                // The session was just read, so it is valid; its last use is recorded at the
                // next request that reaches the database.
                tracing::warn!("cannot record a console session's use: {e}");
            }
        }
        Ok((caller.at_least(need)?, hex::encode(csrf)))
    }

    /// Ends the session `id` (logout), on every replica. Unknown ids are ignored.
    pub async fn end(&self, id: &str) -> Result<(), StoreError> {
        match hex_32(id) {
            Some(raw) => self.store.end_session(hash(&raw)).await,
            None => Ok(()),
        }
    }

    /// Removes every session that has ended by time ([`Store::expire_sessions`]; run every
    /// [`EXPIRE_EVERY`] by `console::login::expire_sessions`).
    pub async fn expire(&self, now: u64) -> Result<usize, StoreError> {
        self.store.expire_sessions(self.life, now).await
    }

    /// Sessions stored (for `/status`).
    pub async fn count(&self) -> Result<usize, StoreError> {
        self.store.count_sessions().await
    }

    /// Sessions stored, from a thread that may block (tests; panics if the database does not
    /// answer).
    pub fn len(&self) -> usize {
        self.store.count_sessions_blocking().expect("count the sessions")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often ended sessions are removed from the database (by every replica; see
/// `console::login::expire_sessions`).
pub const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Refuses a request the browser marks as coming from another site: `Sec-Fetch-Site` other
/// than `same-origin` (or `none`, a typed address), or an `Origin` that is not the service's own.
/// Browsers that send neither are covered by `SameSite=Strict` and the CSRF token.
pub fn cross_site(p: &Presented) -> Result<(), Denied> {
    if let Some(site) = p.fetch_site {
        if !matches!(site.trim(), "same-origin" | "none") {
            return Err(Denied::CrossSite);
        }
    }
    if let Some(origin) = p.origin {
        if p.own_origin.is_none_or(|own| !origin.trim().eq_ignore_ascii_case(own)) {
            return Err(Denied::CrossSite);
        }
    }
    Ok(())
}

/// The key a session is stored under: the SHA-256 of its id.
fn hash(id: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(id).into()
}

/// A session's CSRF token: the SHA-256 of a label and its id. Another hash of the id than the
/// stored key (the label differs), so the stored key does not give it away.
pub fn csrf_of(id: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"bootforge console csrf\0");
    h.update(id);
    h.finalize().into()
}

fn hex_32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The `Set-Cookie` value that opens a session (`secure` when the service is reached over TLS).
pub fn set_cookie(id: &str, secure: bool, life: Lifetimes) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        life.absolute_ms / 1000,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie (logout).
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A directory login name as it may be recorded: 1 to 64 characters of letters, digits and
/// `. _ - @`. Anything else is still tried against the directory (escaped), but is audited as
/// no name at all, so no request text of another shape reaches the log.
pub fn login_name(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b));
    ok.then(|| raw.to_string())
}

/// Failed logins allowed per address (and per account name) within [`LIMIT_WINDOW_MS`]; then
/// 429 until the window has passed.
pub const LOGIN_FAILURES: u32 = 10;
pub const LIMIT_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Addresses (and, separately, account names) tracked at most. See [`LoginLimiter`] for what
/// happens when a table is full.
pub const MAX_TRACKED: usize = 10_000;
/// Failures allowed per window, all together, to addresses or names that found their table full
/// of live entries (see [`LoginLimiter`]).
pub const OVERFLOW_FAILURES: u32 = 10 * LOGIN_FAILURES;
/// Longest account key kept, in bytes.
pub const MAX_ACCOUNT_KEY: usize = 64;

/// The login throttle: failed logins counted per peer address (IPv6 per /64) and per account
/// name, in a fixed window each.
///
/// Invariants, and the attacks they answer:
///
/// * **An attempt is counted before it is checked.** [`LoginLimiter::reserve`] counts a login as
///   failed *before* the token is compared or the directory asked, under one lock, and refuses
///   (429) once either the address or the account has [`LOGIN_FAILURES`] in its window. So
///   parallel guesses cannot all pass the check while the directory is still thinking: at most
///   `LOGIN_FAILURES` attempts per address and per account reach it per window.
/// * **Success refunds its own attempt, nothing else.** [`LoginLimiter::refund`] takes back the
///   one failure a successful login reserved. It never clears other failures, so a valid (say
///   `read`) token interleaved with guesses does not reset the count.
/// * **Per account too.** Directory logins also count against the account name (see
///   [`account_key`]), so guesses at one account from many addresses are bounded. The price is
///   that anyone can lock an account out of the console for one window; the window is short,
///   and API tokens are not affected. Token logins have no account before the check, so they
///   count per address only.
/// * **Memory an attacker cannot flush.** Each table holds at most [`MAX_TRACKED`] keys. Entries
///   leave only when their window has passed (or a refund brings them back to zero): a live
///   entry, locked or not, is never evicted to make room. When a table is full of live entries,
///   every key not in it shares one overflow window of [`OVERFLOW_FAILURES`] failures. An
///   attacker who fills a table (10,000 addresses failing within five minutes) thus gains at
///   most that shared budget, never a fresh count for an address or a name it had locked; the
///   cost falls on newcomers, who may see 429 until the window passes, while everyone already
///   in the table keeps their own count. Refusing newcomers is the safe side: the alternative,
///   forgetting someone, is what let a locked address guess again.
///
/// The core is pure over a clock passed in (`now`, milliseconds), unit-tested below.
#[derive(Default)]
pub struct LoginLimiter {
    tables: Mutex<(Windows<IpAddr>, Windows<String>)>,
}

/// A fixed window of failures.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: u64,
    failures: u32,
}

impl Window {
    /// The window as of `now`: a passed one starts over.
    fn current(self, now: u64) -> Window {
        if now.saturating_sub(self.start) >= LIMIT_WINDOW_MS {
            Window { start: now, failures: 0 }
        } else {
            self
        }
    }
}

/// Where an attempt was counted: a key of the table, or the shared overflow window.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot<K> {
    Key(K),
    Overflow,
}

/// One table of windows, with its overflow window.
struct Windows<K> {
    windows: HashMap<K, Window>,
    overflow: Window,
    /// When expired entries were last dropped, so a full table is swept at most once a second.
    swept: u64,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Windows { windows: HashMap::new(), overflow: Window::default(), swept: 0 }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    /// Where `key` is counted as of `now`, and its current window.
    fn slot(&mut self, key: &K, now: u64) -> (Slot<K>, Window) {
        if let Some(w) = self.windows.get(key) {
            return (Slot::Key(key.clone()), w.current(now));
        }
        if self.windows.len() >= MAX_TRACKED && now.saturating_sub(self.swept) >= 1000 {
            self.swept = now;
            self.windows.retain(|_, w| now.saturating_sub(w.start) < LIMIT_WINDOW_MS);
        }
        if self.windows.len() >= MAX_TRACKED {
            return (Slot::Overflow, self.overflow.current(now));
        }
        (Slot::Key(key.clone()), Window { start: now, failures: 0 })
    }

    fn limit(slot: &Slot<K>) -> u32 {
        match slot {
            Slot::Key(_) => LOGIN_FAILURES,
            Slot::Overflow => OVERFLOW_FAILURES,
        }
    }

    fn store(&mut self, slot: &Slot<K>, w: Window) {
        match slot {
            Slot::Key(k) => {
                self.windows.insert(k.clone(), w);
            }
            Slot::Overflow => self.overflow = w,
        }
    }

    /// Takes back one failure counted in the window that started at `start`.
    fn refund(&mut self, slot: &Slot<K>, start: u64) {
        match slot {
            Slot::Key(k) => {
                if let Some(w) = self.windows.get_mut(k) {
                    if w.start == start {
                        w.failures = w.failures.saturating_sub(1);
                        if w.failures == 0 {
                            self.windows.remove(k);
                        }
                    }
                }
            }
            Slot::Overflow => {
                if self.overflow.start == start {
                    self.overflow.failures = self.overflow.failures.saturating_sub(1);
                }
            }
        }
    }
}

/// A login attempt counted as failed by [`LoginLimiter::reserve`]; hand it to
/// [`LoginLimiter::refund`] if the login succeeds.
#[derive(Debug)]
#[must_use = "a successful login refunds its attempt"]
pub struct Attempt {
    addr: (Slot<IpAddr>, u64),
    account: Option<(Slot<String>, u64)>,
}

/// Refused: too many failed logins; try again after [`LIMIT_WINDOW_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited;

impl LoginLimiter {
    /// Counts a login attempt of `peer` (and of the directory `account`, when it names one) as
    /// failed, before it is checked; refused when either already has its failures.
    pub fn reserve(
        &self,
        peer: IpAddr,
        account: Option<&str>,
        now: u64,
    ) -> Result<Attempt, Limited> {
        let mut guard = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let (addrs, accounts) = &mut *guard;
        let (a_slot, a_win) = addrs.slot(&addr_key(peer), now);
        if a_win.failures >= Windows::limit(&a_slot) {
            return Err(Limited);
        }
        let account = match account.map(account_key) {
            Some(key) => {
                let (slot, win) = accounts.slot(&key, now);
                if win.failures >= Windows::limit(&slot) {
                    return Err(Limited);
                }
                Some((slot, win))
            }
            None => None,
        };
        let a_win = Window { failures: a_win.failures + 1, ..a_win };
        addrs.store(&a_slot, a_win);
        let account = account.map(|(slot, win)| {
            let win = Window { failures: win.failures + 1, ..win };
            accounts.store(&slot, win);
            (slot, win.start)
        });
        Ok(Attempt { addr: (a_slot, a_win.start), account })
    }

    /// A successful login: takes back the one failure its [`LoginLimiter::reserve`] counted.
    /// Other failures stay.
    pub fn refund(&self, attempt: Attempt) {
        let mut guard = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let (addrs, accounts) = &mut *guard;
        addrs.refund(&attempt.addr.0, attempt.addr.1);
        if let Some((slot, start)) = &attempt.account {
            accounts.refund(slot, *start);
        }
    }

    /// Addresses and account names tracked (for tests).
    pub fn tracked(&self) -> (usize, usize) {
        let guard = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0.windows.len(), guard.1.windows.len())
    }
}

/// The address a failure is counted against: IPv4 as is (IPv4-mapped IPv6 too), IPv6 per /64,
/// which one machine usually holds whole.
fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !0u128 << 64).into()),
        },
        v4 => v4,
    }
}

/// The account a directory login is counted against, so that every spelling a directory may
/// bind as one account shares one count. The name is put in Unicode compatibility form (NFKC:
/// fullwidth `ａ`, mathematical `𝐛`, circled `ⓑ` become `a`, `b`, `b`, as OpenLDAP and Active
/// Directory fold them when matching names), stripped of invisible characters (soft hyphen,
/// zero-width and other Default_Ignorable code points, which directories ignore when matching),
/// lower-cased, trimmed, without a `DOMAIN\` prefix or an `@domain` suffix (so `bob`,
/// `CORP\bob` and `bob@corp.example` share one count), and cut at [`MAX_ACCOUNT_KEY`] bytes.
/// Not the directory's canonical name (that is only known after asking it); names that fold
/// to one key merely share a count, which errs on the side of limiting.
pub fn account_key(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let folded: String = raw
        .nfkc()
        .filter(|c| !super::ldap::default_ignorable(*c))
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .nfkc()
        .collect();
    let mut name = folded.trim();
    if let Some((_, user)) = name.rsplit_once('\\') {
        name = user;
    }
    if let Some((user, _)) = name.split_once('@') {
        name = user;
    }
    let mut key = String::new();
    for c in name.trim().chars() {
        if key.len() + c.len_utf8() > MAX_ACCOUNT_KEY {
            break;
        }
        key.push(c);
    }
    key
}

/// Constant-time comparison of equal-length byte strings.
mod subtle_eq {
    pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (Tokens, [u8; 32]) {
        let hash: [u8; 32] = Sha256::digest(b"tok").into();
        let t = Tokens::parse("t", &format!("ops reimage {}\n", hex::encode(hash))).unwrap();
        (t, hash)
    }

    fn presented<'a>(id: &'a str, method: Method, csrf: Option<&'a str>) -> Presented<'a> {
        Presented {
            id,
            method,
            csrf,
            origin: None,
            fetch_site: None,
            own_origin: Some("http://console:8080"),
        }
    }

    /// A session table over a fresh SQLite store (the folder lives as long as the table).
    fn sessions(life: Lifetimes) -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let url = Store::default_url(dir.path());
        let store = Arc::new(Store::open(&url, None).unwrap());
        (dir, Sessions::new(store, life))
    }

    /// Runs a test's async body.
    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn a_session_needs_its_csrf_token_to_change_anything() {
        let (t, h) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            let (c, csrf) = s.check(&t, &p, Role::Read, 1).await.unwrap();
            assert_eq!(
                (c.name.as_str(), c.via, csrf.as_str()),
                ("ops", Via::TokenSession, &*o.csrf)
            );
            let no = s.check(&t, &presented(&o.id, Method::Changes, None), Role::Reimage, 2).await;
            assert_eq!(no.unwrap_err(), Denied::Csrf);
            let wrong = "0".repeat(64);
            let p = presented(&o.id, Method::Changes, Some(&wrong));
            assert_eq!(s.check(&t, &p, Role::Reimage, 2).await.unwrap_err(), Denied::Csrf);
            // Another session's token is not this one's.
            let other = s.open_token(h, 2).await.unwrap();
            let p = presented(&o.id, Method::Changes, Some(&other.csrf));
            assert_eq!(s.check(&t, &p, Role::Reimage, 2).await.unwrap_err(), Denied::Csrf);
            let p = presented(&o.id, Method::Changes, Some(&o.csrf));
            assert!(s.check(&t, &p, Role::Reimage, 3).await.is_ok());
            let admin = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Admin, 4).await;
            assert_eq!(admin.unwrap_err().kind(), "role-too-small");
        });
    }

    #[test]
    fn sessions_expire_idle_and_absolute_and_end_at_logout() {
        let (t, h) = tokens();
        let life = Lifetimes { idle_ms: 100, absolute_ms: 250 };
        let (_dir, s) = sessions(life);
        run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            assert!(s.check(&t, &p, Role::Read, 90).await.is_ok());
            assert!(s.check(&t, &p, Role::Read, 180).await.is_ok(), "use keeps it alive");
            let r = s.check(&t, &p, Role::Read, 260).await;
            assert_eq!(r.unwrap_err(), Denied::NoSession, "absolute");
            let o = s.open_token(h, 1000).await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            assert_eq!(
                s.check(&t, &p, Role::Read, 1100).await.unwrap_err(),
                Denied::NoSession,
                "idle"
            );
            let o = s.open_token(h, 2000).await.unwrap();
            s.end(&o.id).await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            let r = s.check(&t, &p, Role::Read, 2001).await;
            assert_eq!(r.unwrap_err(), Denied::NoSession, "logout");
            let r = s.check(&t, &presented("zz", Method::Safe, None), Role::Read, 1).await;
            assert_eq!(r.unwrap_err(), Denied::NoSession);
        });
        // Ended sessions were removed when they were found ended.
        assert!(s.is_empty());
    }

    #[test]
    fn use_is_written_once_a_gap_not_on_every_request() {
        let (t, h) = tokens();
        let life = Lifetimes::default();
        let gap = touch_gap(life);
        assert_eq!(gap, 60_000, "a minute of a 30-minute session");
        let (_dir, s) = sessions(life);
        run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let key = hash(&hex_32(&o.id).unwrap());
            let p = presented(&o.id, Method::Safe, None);
            for now in [1, 1000, gap - 1] {
                s.check(&t, &p, Role::Read, now).await.unwrap();
                assert_eq!(s.store.session(key).await.unwrap().unwrap().seen, 0, "at {now}");
            }
            s.check(&t, &p, Role::Read, gap).await.unwrap();
            assert_eq!(s.store.session(key).await.unwrap().unwrap().seen, gap);
            // Used only within the gaps, it stays alive past the idle lifetime of its login.
            let mut now = gap;
            while now < 3 * life.idle_ms {
                now += gap / 2;
                assert!(s.check(&t, &p, Role::Read, now).await.is_ok(), "at {now}");
            }
            // A touch never moves the last use back.
            s.store.touch_session(key, 0, 5).await.unwrap();
            assert!(s.store.session(key).await.unwrap().unwrap().seen > 5);
        });
    }

    #[test]
    fn the_database_holds_neither_the_cookie_nor_the_csrf_token() {
        let (t, h) = tokens();
        let (dir, s) = sessions(Lifetimes::default());
        let (o, d) = run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let d = s.open_directory("bob".into(), Role::Read, "uid=bob".into(), 1000, 0);
            let d = d.await.unwrap();
            s.check(&t, &presented(&o.id, Method::Safe, None), Role::Read, 1).await.unwrap();
            (o, d)
        });
        drop(s); // closes the database
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(text.contains(&hex::encode(hash(&hex_32(&o.id).unwrap()))), "sessions are stored");
        for secret in [&o.id, &o.csrf, &d.id, &d.csrf] {
            assert!(!text.contains(secret.as_str()), "a secret is stored in clear");
        }
    }

    #[test]
    fn ended_sessions_are_removed_from_the_database() {
        let (t, h) = tokens();
        let life = Lifetimes { idle_ms: 100, absolute_ms: 250 };
        let (_dir, s) = sessions(life);
        run(async {
            let a = s.open_token(h, 0).await.unwrap();
            let b = s.open_directory("bob".into(), Role::Read, "uid=bob".into(), 1000, 60);
            let b = b.await.unwrap();
            assert_eq!(s.expire(99).await.unwrap(), 0);
            assert_eq!(s.expire(100).await.unwrap(), 1, "a: idle");
            assert_eq!(s.count().await.unwrap(), 1);
            let p = presented(&b.id, Method::Safe, None);
            for now in [90, 180, 240] {
                assert!(s.check(&t, &p, Role::Read, now).await.is_ok(), "at {now}");
            }
            assert_eq!(s.expire(309).await.unwrap(), 0);
            assert_eq!(s.expire(310).await.unwrap(), 1, "b: absolute, although used");
            let p = presented(&a.id, Method::Safe, None);
            assert_eq!(s.check(&t, &p, Role::Read, 1).await.unwrap_err(), Denied::NoSession);
        });
        assert!(s.is_empty());
    }

    #[test]
    fn revoking_the_token_ends_its_sessions() {
        let (t, h) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            let none = Tokens::parse("t", "").unwrap();
            assert_eq!(s.check(&none, &p, Role::Read, 1).await.unwrap_err(), Denied::NoSession);
            let r = s.check(&t, &p, Role::Read, 2).await;
            assert_eq!(r.unwrap_err(), Denied::NoSession, "for good");
        });
    }

    #[test]
    fn directory_sessions_are_rechecked_lowered_ended_and_go_stale() {
        let (t, _) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        let dn = "CN=bob,CN=Users,DC=ad";
        run(async {
            let bob1 =
                s.open_directory("bob".into(), Role::Admin, dn.into(), 300, 0).await.unwrap();
            let bob2 =
                s.open_directory("bob".into(), Role::Admin, dn.into(), 300, 50).await.unwrap();
            let ann = s.open_directory("ann".into(), Role::Read, "CN=ann,DC=ad".into(), 300, 0);
            let ann = ann.await.unwrap();
            let check = |id: String, need, now| {
                let t = &t;
                let s = &s;
                async move { s.check(t, &presented(&id, Method::Safe, None), need, now).await }
            };
            assert_eq!(s.due_for_recheck(100, 99).await.unwrap(), Vec::<String>::new());
            assert_eq!(
                s.due_for_recheck(100, 150).await.unwrap(),
                vec!["CN=ann,DC=ad".to_string(), dn.into()]
            );
            // A smaller role lowers both of bob's sessions (DNs compared case-insensitively).
            let r = s.confirm("cn=BOB,cn=users,dc=ad", Some(Role::Reimage), 200).await.unwrap();
            assert_eq!(r, Rechecked { names: vec!["bob".into()], lowered: 2, ended: 0 });
            assert_eq!(
                check(bob1.id.clone(), Role::Read, 210).await.unwrap().0.role,
                Role::Reimage
            );
            let r = check(bob2.id.clone(), Role::Admin, 210).await;
            assert_eq!(r.unwrap_err().kind(), "role-too-small");
            // A larger one never raises it.
            s.confirm(dn, Some(Role::Admin), 220).await.unwrap();
            assert_eq!(
                check(bob1.id.clone(), Role::Read, 230).await.unwrap().0.role,
                Role::Reimage
            );
            // ann was not confirmed: 300 ms after login her session is refused, for good.
            assert!(check(ann.id.clone(), Role::Read, 299).await.is_ok());
            assert_eq!(
                check(ann.id.clone(), Role::Read, 300).await.unwrap_err(),
                Denied::NoSession
            );
            assert_eq!(
                check(ann.id.clone(), Role::Read, 301).await.unwrap_err(),
                Denied::NoSession
            );
            // Gone, disabled, or out of the groups: every session of the account ends.
            let r = s.confirm(dn, None, 240).await.unwrap();
            assert_eq!(r, Rechecked { names: vec!["bob".into()], lowered: 0, ended: 2 });
            assert_eq!(
                check(bob1.id.clone(), Role::Read, 241).await.unwrap_err(),
                Denied::NoSession
            );
        });
        assert!(s.is_empty());
    }

    #[test]
    fn an_admin_ends_every_directory_session_of_a_name() {
        let (t, h) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        let dn = || "CN=bob,DC=ad".to_string();
        run(async {
            let a = s.open_directory("bob".into(), Role::Read, dn(), 1000, 0).await.unwrap();
            let b = s.open_directory("bob".into(), Role::Read, dn(), 1000, 0).await.unwrap();
            let c = s.open_directory("carol".into(), Role::Read, "CN=carol".into(), 1000, 0);
            let c = c.await.unwrap();
            let tok = s.open_token(h, 0).await.unwrap();
            // Another entry with the same uid (OpenLDAP does not make it unique): ended too.
            let other = s.open_directory("Bob".into(), Role::Read, "uid=bob,ou=x".into(), 1000, 0);
            let other = other.await.unwrap();
            assert_eq!(s.end_name("BOB").await.unwrap(), 3);
            assert_eq!(s.end_name("bob").await.unwrap(), 0);
            for (o, alive) in [(&a, false), (&b, false), (&other, false), (&c, true), (&tok, true)]
            {
                let r = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Read, 1).await;
                assert_eq!(r.is_ok(), alive);
            }
        });
    }

    #[test]
    fn other_sites_are_refused() {
        let (t, h) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        run(async {
            let o = s.open_token(h, 0).await.unwrap();
            let mut p = presented(&o.id, Method::Changes, Some(&o.csrf));
            p.fetch_site = Some("cross-site");
            assert_eq!(s.check(&t, &p, Role::Read, 1).await.unwrap_err(), Denied::CrossSite);
            p.fetch_site = Some("same-origin");
            p.origin = Some("http://evil.example");
            assert_eq!(s.check(&t, &p, Role::Read, 1).await.unwrap_err(), Denied::CrossSite);
            p.origin = Some("http://console:8080");
            assert!(s.check(&t, &p, Role::Read, 1).await.is_ok());
        });
    }

    #[test]
    fn directory_sessions_keep_their_login() {
        let (t, _) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        run(async {
            let o = s.open_directory("alice".into(), Role::Admin, "uid=alice".into(), u64::MAX, 0);
            let o = o.await.unwrap();
            let p = presented(&o.id, Method::Safe, None);
            let (c, _) = s.check(&t, &p, Role::Admin, 1).await.unwrap();
            assert_eq!((c.name.as_str(), c.role, c.via), ("alice", Role::Admin, Via::LdapSession));
        });
    }

    const T0: u64 = 1_000_000;

    #[test]
    fn attempts_are_counted_before_they_are_checked_per_address_and_account() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Ten attempts in flight at once (none answered yet): the eleventh is refused.
        let held: Vec<Attempt> =
            (0..LOGIN_FAILURES).map(|_| l.reserve(a, None, T0).unwrap()).collect();
        assert_eq!(l.reserve(a, None, T0 + 1).unwrap_err(), Limited);
        assert!(l.reserve(b, None, T0 + 1).is_ok(), "another address is not affected");
        // One of them succeeds: only its own attempt is refunded, the nine others stay.
        let mut held = held.into_iter();
        l.refund(held.next().unwrap());
        let again = l.reserve(a, None, T0 + 2).unwrap();
        assert_eq!(l.reserve(a, None, T0 + 2).unwrap_err(), Limited, "success clears nothing");
        l.refund(again);
        assert!(l.reserve(a, None, T0 + LIMIT_WINDOW_MS).is_ok(), "the window passes");
    }

    #[test]
    fn a_valid_login_between_guesses_does_not_reset_the_count() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let mut refused = 0;
        for i in 0..100u64 {
            if i % 3 == 0 {
                if let Ok(ok) = l.reserve(a, None, T0 + i) {
                    l.refund(ok); // the valid read token
                }
            } else if l.reserve(a, None, T0 + i).is_err() {
                refused += 1;
            }
        }
        let guesses = (0..100).filter(|i| i % 3 != 0).count();
        assert_eq!(refused, guesses - LOGIN_FAILURES as usize, "all after the tenth are refused");
    }

    #[test]
    fn an_account_is_limited_across_addresses_and_name_forms() {
        let l = LoginLimiter::default();
        for i in 0..LOGIN_FAILURES {
            let peer = IpAddr::from([10, 1, 0, i as u8]);
            let name = ["alice", "ALICE", "corp\\alice", "alice@corp.example", " ａｌｉｃｅ "]
                [i as usize % 5];
            let _ = l.reserve(peer, Some(name), T0).unwrap();
        }
        let fresh: IpAddr = "10.2.0.1".parse().unwrap();
        assert_eq!(l.reserve(fresh, Some("Alice"), T0 + 1).unwrap_err(), Limited);
        assert!(l.reserve(fresh, Some("bob"), T0 + 1).is_ok(), "another account");
        assert!(l.reserve(fresh, None, T0 + 1).is_ok(), "a token login has no account");
        assert_eq!(account_key(&"é".repeat(100)).len(), MAX_ACCOUNT_KEY);
        assert_eq!(account_key("  CORP\\Bob "), "bob");
    }

    #[test]
    fn spellings_a_directory_folds_to_one_name_share_one_count() {
        // Mathematical bold, circled, fullwidth, soft hyphen, zero-width space and joiner,
        // word joiner, a variation selector, fullwidth `＼` and `＠`: each binds as bob in a
        // directory that matches names by compatibility form and ignores invisible characters.
        for spelling in [
            "\u{1d41b}ob",
            "\u{24d1}ob",
            "\u{24b7}OB",
            "\u{ff42}\u{ff4f}\u{ff42}",
            "b\u{ad}ob",
            "b\u{200b}o\u{200d}b",
            "\u{2060}bob\u{feff}",
            "bo\u{fe0f}b",
            "CORP\u{ff3c}bob",
            "bob\u{ff20}corp.example",
        ] {
            assert_eq!(account_key(spelling), "bob", "{spelling:?}");
        }
        let l = LoginLimiter::default();
        let spellings = ["bob", "\u{1d41b}ob", "\u{24d1}ob", "b\u{ad}ob", "BOB"];
        for i in 0..LOGIN_FAILURES {
            let peer = IpAddr::from([10, 3, 0, i as u8]);
            let _ = l.reserve(peer, Some(spellings[i as usize % 5]), T0).unwrap();
        }
        let fresh: IpAddr = "10.4.0.1".parse().unwrap();
        assert_eq!(l.reserve(fresh, Some("b\u{200b}ob"), T0 + 1).unwrap_err(), Limited);
        assert!(l.reserve(fresh, Some("rob"), T0 + 1).is_ok(), "another account");
    }

    #[test]
    fn a_locked_address_stays_locked_when_ten_thousand_others_fail() {
        let l = LoginLimiter::default();
        let locked: IpAddr = "2001:db8:aa::1".parse().unwrap();
        for _ in 0..LOGIN_FAILURES {
            let _ = l.reserve(locked, None, T0).unwrap();
        }
        // Another address of the same /64 is the same machine.
        let same64: IpAddr = "2001:db8:aa::ffff:2".parse().unwrap();
        assert_eq!(l.reserve(same64, None, T0).unwrap_err(), Limited);
        // 12,000 other /64s fail once each within the window, then try the locked one's
        // names again.
        let mut refused_newcomers = 0;
        for i in 0..12_000u128 {
            let ip = std::net::Ipv6Addr::from((0x2001_0db8_0001u128 << 80) | (i << 64) | 1);
            if l.reserve(IpAddr::V6(ip), None, T0 + 10 + i as u64).is_err() {
                refused_newcomers += 1;
            }
            assert_eq!(
                l.reserve(locked, None, T0 + 10 + i as u64).unwrap_err(),
                Limited,
                "after {i} others"
            );
        }
        assert!(l.tracked().0 <= MAX_TRACKED, "memory stays bounded");
        // Past the table's size, newcomers share one small budget instead of evicting anyone.
        assert!(refused_newcomers >= 12_000 - MAX_TRACKED - OVERFLOW_FAILURES as usize);
        // Once the window has passed, the locked address may try again, and newcomers too.
        let later = T0 + 20_000 + LIMIT_WINDOW_MS;
        assert!(l.reserve(locked, None, later).is_ok());
        assert!(l.reserve("2001:db8:ff::1".parse().unwrap(), None, later + 1000).is_ok());
    }

    #[test]
    fn an_identity_holds_a_bounded_number_of_sessions_and_cannot_end_anothers() {
        let (t, h) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        let dir = |name: &str, role, dn: &str, now| {
            s.open_directory(name.into(), role, dn.into(), u64::MAX, now)
        };
        run(async {
            let alice = dir("alice", Role::Admin, "uid=x", 0).await.unwrap();
            let mut last = Vec::new();
            for i in 0..3 * MAX_SESSIONS_PER_IDENTITY as u64 {
                last.push(s.open_token(h, 1 + i).await.unwrap());
            }
            assert_eq!(s.count().await.unwrap(), MAX_SESSIONS_PER_IDENTITY + 1);
            let p = presented(&alice.id, Method::Safe, None);
            assert!(s.check(&t, &p, Role::Admin, 100).await.is_ok(), "alice keeps her session");
            // The token's newest sessions live; its oldest ended.
            let newest = presented(&last.last().unwrap().id, Method::Safe, None);
            assert!(s.check(&t, &newest, Role::Read, 101).await.is_ok());
            let oldest = presented(&last[0].id, Method::Safe, None);
            assert_eq!(s.check(&t, &oldest, Role::Read, 102).await.unwrap_err(), Denied::NoSession);
            // Another entry of the same name is another identity: it cannot use up alice's
            // sessions (OpenLDAP does not make uid unique).
            for i in 0..2 * MAX_SESSIONS_PER_IDENTITY as u64 {
                dir("alice", Role::Read, "uid=alice,ou=y", 150 + i).await.unwrap();
            }
            assert!(s.check(&t, &p, Role::Admin, 199).await.is_ok(), "alice keeps her session");
            // The same entry in another case is the same identity.
            for i in 0..MAX_SESSIONS_PER_IDENTITY as u64 {
                dir("ALICE", Role::Admin, "UID=X", 200 + i).await.unwrap();
            }
            assert_eq!(s.check(&t, &p, Role::Admin, 300).await.unwrap_err(), Denied::NoSession);
        });
    }

    #[test]
    fn a_table_full_of_live_sessions_refuses_newcomers_without_ending_anyone() {
        let (t, _) = tokens();
        let (_dir, s) = sessions(Lifetimes::default());
        let dir = |name: &str, dn: &str, now| {
            s.open_directory(name.into(), Role::Read, dn.into(), u64::MAX, now)
        };
        run(async {
            let first = dir("user-0", "uid=user-0", 0).await.unwrap();
            for i in 1..MAX_SESSIONS as u64 {
                let name = format!("user-{}", i / MAX_SESSIONS_PER_IDENTITY as u64 + 1);
                dir(&name, &format!("uid={name}"), i).await.unwrap();
            }
            assert_eq!(s.count().await.unwrap(), MAX_SESSIONS);
            assert_eq!(dir("newcomer", "uid=new", 20_000).await.err(), Some(NotOpened::Full));
            let p = presented(&first.id, Method::Safe, None);
            assert!(s.check(&t, &p, Role::Read, 20_001).await.is_ok());
            // An identity with a session of its own gives that up instead.
            assert!(dir("user-0", "uid=user-0", 20_002).await.is_ok());
            assert_eq!(s.count().await.unwrap(), MAX_SESSIONS);
            // Once sessions have ended (idle), there is room again.
            let later = 20_002 + Lifetimes::default().idle_ms;
            assert!(dir("newcomer", "uid=new", later).await.is_ok());
        });
    }

    #[test]
    fn cookies_and_names() {
        let c = set_cookie("ab", true, Lifetimes::default());
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        assert!(!set_cookie("ab", false, Lifetimes::default()).contains("Secure"));
        assert_eq!(login_name("alice.b@corp"), Some("alice.b@corp".into()));
        assert_eq!(login_name("a*)(uid=*"), None);
        assert_eq!(login_name(""), None);
    }
}
