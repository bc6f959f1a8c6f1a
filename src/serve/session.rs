//! The console's sessions: who a browser is, for how long, and the checks that keep another site
//! from acting with its cookie.
//!
//! A login (an API token, or a directory account through [`super::ldap`]) opens a session: a
//! random 256-bit id sent once as the `bf_session` cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`,
//! `Secure` when the service is reached over TLS), and a random 256-bit CSRF token that the page
//! fetches from `GET /session` and sends back as `X-CSRF-Token` on every request that changes
//! anything. The service keeps only the SHA-256 of the id, so the table of live sessions holds no
//! usable cookie.
//!
//! A session ends at logout, after [`Lifetimes::idle`] without a request, after
//! [`Lifetimes::absolute`] whatever happens, and, for one opened with an API token, as soon as
//! the token's line leaves the tokens file (the session keeps the token's hash and looks it up
//! on every request, so revoking a token still revokes everything it opened). A session opened with
//! a directory account carries the account's canonical name and entry DN; a background re-check
//! ([`Sessions::due_for_recheck`], [`Sessions::confirm`]) lowers or ends it when the directory no
//! longer grants the role, a session whose role no re-check confirmed in time is refused (so a
//! stopped re-check or a long outage fails closed), and an admin can end every session of a name
//! ([`Sessions::end_name`]). Sessions live in
//! the process: a restart logs everyone out, and instances sharing a state directory do not share
//! them (send a browser to one instance).
//!
//! Everything here is a pure core over a clock passed in (`now`, milliseconds), unit-tested
//! below; the handlers in [`super::console`] wire it to requests.

use super::auth::{Caller, Denied, Role, Tokens, Via};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use subtle_eq::ct_eq;

/// The cookie's name.
pub const COOKIE: &str = "bf_session";
/// `COOKIE=`, to find the cookie in a `Cookie` header.
pub const COOKIE_EQ: &str = "bf_session=";
/// Sessions held at most; beyond, the least recently used one is ended.
const MAX_SESSIONS: usize = 10_000;

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

/// What a session stands for.
#[derive(Debug, Clone)]
enum Holder {
    /// Opened with the API token of this hash: its caller is looked up again on every request.
    Token([u8; 32]),
    /// Opened with a directory account: its canonical name and role, as found at login and
    /// lowered by re-checks.
    Directory(DirectoryHolder),
}

/// A directory session's account and how fresh its role is.
#[derive(Debug, Clone)]
struct DirectoryHolder {
    caller: Caller,
    /// The account's entry, by which re-checks find it.
    dn: String,
    /// When the directory last granted the role (login, then each successful re-check).
    confirmed: u64,
    /// The session is refused once `confirmed` is this old: re-checks did not confirm it (see
    /// [`Sessions::open_directory`]).
    stale_ms: u64,
}

#[derive(Debug, Clone)]
struct Session {
    holder: Holder,
    csrf: [u8; 32],
    created: u64,
    seen: u64,
}

/// A session just opened: the cookie value and the CSRF token, both hex. Handed to the client
/// once, never kept in clear.
pub struct Opened {
    pub id: String,
    pub csrf: String,
}

/// The live sessions.
pub struct Sessions {
    by_id_hash: Mutex<HashMap<[u8; 32], Session>>,
    life: Lifetimes,
}

/// What [`Sessions::confirm`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rechecked {
    /// The names the account's sessions carried.
    pub names: Vec<String>,
    pub lowered: usize,
    pub ended: usize,
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
    pub fn new(life: Lifetimes) -> Sessions {
        Sessions { by_id_hash: Mutex::new(HashMap::new()), life }
    }

    /// Opens a session for a caller authenticated with an API token (by the token's hash).
    pub fn open_token(&self, hash: [u8; 32], now: u64) -> Opened {
        self.open(Holder::Token(hash), now)
    }

    /// Opens a session for a directory account (its canonical name, role and entry). The
    /// session is refused once its role has gone `stale_ms` without being confirmed by
    /// [`Sessions::confirm`]: with a lookup account, a few re-check intervals (an outage of the
    /// directory does not end sessions at once); without one, the re-check interval itself
    /// (logging in again is the re-check).
    pub fn open_directory(
        &self,
        name: String,
        role: Role,
        dn: String,
        stale_ms: u64,
        now: u64,
    ) -> Opened {
        let caller = Caller { name, role, via: Via::LdapSession };
        self.open(Holder::Directory(DirectoryHolder { caller, dn, confirmed: now, stale_ms }), now)
    }

    /// The entries (DNs) of live directory sessions whose role was last confirmed `every_ms`
    /// or longer ago: the accounts to re-check now, each once.
    pub fn due_for_recheck(&self, every_ms: u64, now: u64) -> Vec<String> {
        let map = self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner());
        let mut due: Vec<String> = map
            .values()
            .filter(|s| self.alive(s, now))
            .filter_map(|s| match &s.holder {
                Holder::Directory(d) if now.saturating_sub(d.confirmed) >= every_ms => {
                    Some(d.dn.clone())
                }
                _ => None,
            })
            .collect();
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Applies a re-check of the account of entry `dn` (compared case-insensitively):
    /// `Some(role)` confirms its sessions, lowering a role larger than `role` (a re-check
    /// never raises one); `None` (gone, disabled, in no mapped group) ends them. Returns the
    /// sessions' names and how many were lowered and ended.
    pub fn confirm(&self, dn: &str, role: Option<Role>, now: u64) -> Rechecked {
        let mut map = self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Rechecked::default();
        map.retain(|_, s| {
            let Holder::Directory(d) = &mut s.holder else { return true };
            if !d.dn.eq_ignore_ascii_case(dn) {
                return true;
            }
            if !out.names.contains(&d.caller.name) {
                out.names.push(d.caller.name.clone());
            }
            match role {
                None => {
                    out.ended += 1;
                    false
                }
                Some(r) => {
                    if r < d.caller.role {
                        d.caller.role = r;
                        out.lowered += 1;
                    }
                    d.confirmed = now;
                    true
                }
            }
        });
        out
    }

    /// Ends every directory session of the account named `name` (compared case-insensitively,
    /// as directories compare names). Returns how many.
    pub fn end_name(&self, name: &str) -> usize {
        let mut map = self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, s| match &s.holder {
            Holder::Directory(d) => !d.caller.name.to_lowercase().eq(&name.to_lowercase()),
            Holder::Token(_) => true,
        });
        before - map.len()
    }

    fn open(&self, holder: Holder, now: u64) -> Opened {
        let id: [u8; 32] = rand::random();
        let csrf: [u8; 32] = rand::random();
        let mut map = self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(hash(&id), Session { holder, csrf, created: now, seen: now });
        Opened { id: hex::encode(id), csrf: hex::encode(csrf) }
    }

    fn prune(&self, map: &mut HashMap<[u8; 32], Session>, now: u64) {
        if map.len() >= MAX_SESSIONS / 2 {
            map.retain(|_, s| self.alive(s, now));
        }
    }

    fn alive(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.seen) < self.life.idle_ms
            && now.saturating_sub(s.created) < self.life.absolute_ms
    }

    /// Checks a request that carries a session cookie: the session is alive (it is then marked
    /// used), the request is not from another site, a changing request carries the CSRF token,
    /// and the caller has role `need`. Returns the caller and the CSRF token (hex).
    pub fn check(
        &self,
        tokens: &Tokens,
        p: &Presented,
        need: Role,
        now: u64,
    ) -> Result<(Caller, String), Denied> {
        cross_site(p)?;
        let key = id_hash(p.id).ok_or(Denied::NoSession)?;
        let mut map = self.by_id_hash.lock().unwrap_or_else(|e| e.into_inner());
        let Some(session) = map.get(&key).cloned() else {
            return Err(Denied::NoSession);
        };
        if !self.alive(&session, now) {
            map.remove(&key);
            return Err(Denied::NoSession);
        }
        let caller = match &session.holder {
            Holder::Directory(d) if now.saturating_sub(d.confirmed) >= d.stale_ms => {
                map.remove(&key); // no re-check confirmed the role in time
                return Err(Denied::NoSession);
            }
            Holder::Directory(d) => d.caller.clone(),
            Holder::Token(h) => match tokens.by_hash(h) {
                Some(c) => Caller { via: Via::TokenSession, ..c },
                None => {
                    map.remove(&key); // the token was revoked: so is its session
                    return Err(Denied::NoSession);
                }
            },
        };
        if p.method == Method::Changes {
            let sent = p.csrf.and_then(|t| hex_32(t.trim()));
            if !sent.is_some_and(|t| ct_eq(&t, &session.csrf)) {
                return Err(Denied::Csrf);
            }
        }
        if let Some(s) = map.get_mut(&key) {
            s.seen = now;
        }
        drop(map);
        Ok((caller.at_least(need)?, hex::encode(session.csrf)))
    }

    /// Ends the session `id` (logout). Unknown ids are ignored.
    pub fn end(&self, id: &str) {
        if let Some(key) = id_hash(id) {
            self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }

    /// Sessions held (for tests and `/status`).
    pub fn len(&self) -> usize {
        self.by_id_hash.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

fn hash(id: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(id).into()
}

fn id_hash(id: &str) -> Option<[u8; 32]> {
    hex_32(id).map(|raw| hash(&raw))
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

/// Failed logins allowed per peer address within [`LIMIT_WINDOW_MS`]; then 429 until the
/// window has passed.
pub const LOGIN_FAILURES: u32 = 10;
pub const LIMIT_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Peers tracked at most; beyond, entries whose window has passed are dropped, then the oldest.
const MAX_PEERS: usize = 10_000;

/// Failed logins per peer address (IPv6 per /64), a fixed window each.
#[derive(Default)]
pub struct LoginLimiter {
    peers: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl LoginLimiter {
    /// Whether `peer` may try to log in now.
    pub fn allowed(&self, peer: IpAddr, now: u64) -> bool {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key(peer)) {
            Some(&(start, n)) => now.saturating_sub(start) >= LIMIT_WINDOW_MS || n < LOGIN_FAILURES,
            None => true,
        }
    }

    /// Counts a failed login of `peer`.
    pub fn failed(&self, peer: IpAddr, now: u64) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PEERS {
            map.retain(|_, (start, _)| now.saturating_sub(*start) < LIMIT_WINDOW_MS);
            if map.len() >= MAX_PEERS {
                if let Some(oldest) = map.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(key(peer)).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= LIMIT_WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// A successful login forgets the peer's failures.
    pub fn succeeded(&self, peer: IpAddr) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(peer));
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !0u128 << 64).into()),
        },
        v4 => v4,
    }
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

    #[test]
    fn a_session_needs_its_csrf_token_to_change_anything() {
        let (t, h) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let o = s.open_token(h, 0);
        let (c, csrf) = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Read, 1).unwrap();
        assert_eq!((c.name.as_str(), c.via, csrf.as_str()), ("ops", Via::TokenSession, &*o.csrf));
        let no = s.check(&t, &presented(&o.id, Method::Changes, None), Role::Reimage, 2);
        assert_eq!(no.unwrap_err(), Denied::Csrf);
        let wrong = "0".repeat(64);
        let no = s.check(&t, &presented(&o.id, Method::Changes, Some(&wrong)), Role::Reimage, 2);
        assert_eq!(no.unwrap_err(), Denied::Csrf);
        let yes = s.check(&t, &presented(&o.id, Method::Changes, Some(&o.csrf)), Role::Reimage, 3);
        assert!(yes.is_ok());
        let admin = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Admin, 4);
        assert_eq!(admin.unwrap_err().kind(), "role-too-small");
    }

    #[test]
    fn sessions_expire_idle_and_absolute_and_end_at_logout() {
        let (t, h) = tokens();
        let life = Lifetimes { idle_ms: 100, absolute_ms: 250 };
        let s = Sessions::new(life);
        let o = s.open_token(h, 0);
        let p = presented(&o.id, Method::Safe, None);
        assert!(s.check(&t, &p, Role::Read, 90).is_ok());
        assert!(s.check(&t, &p, Role::Read, 180).is_ok(), "use keeps it alive");
        assert_eq!(s.check(&t, &p, Role::Read, 260).unwrap_err(), Denied::NoSession, "absolute");
        let o = s.open_token(h, 1000);
        let p = presented(&o.id, Method::Safe, None);
        assert_eq!(s.check(&t, &p, Role::Read, 1100).unwrap_err(), Denied::NoSession, "idle");
        let o = s.open_token(h, 2000);
        s.end(&o.id);
        let p = presented(&o.id, Method::Safe, None);
        assert_eq!(s.check(&t, &p, Role::Read, 2001).unwrap_err(), Denied::NoSession, "logout");
        assert_eq!(
            s.check(&t, &presented("zz", Method::Safe, None), Role::Read, 1).unwrap_err(),
            Denied::NoSession
        );
    }

    #[test]
    fn revoking_the_token_ends_its_sessions() {
        let (t, h) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let o = s.open_token(h, 0);
        let p = presented(&o.id, Method::Safe, None);
        let none = Tokens::parse("t", "").unwrap();
        assert_eq!(s.check(&none, &p, Role::Read, 1).unwrap_err(), Denied::NoSession);
        assert_eq!(s.check(&t, &p, Role::Read, 2).unwrap_err(), Denied::NoSession, "for good");
    }

    #[test]
    fn directory_sessions_are_rechecked_lowered_ended_and_go_stale() {
        let (t, _) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let dn = "CN=bob,CN=Users,DC=ad";
        let bob1 = s.open_directory("bob".into(), Role::Admin, dn.into(), 300, 0);
        let bob2 = s.open_directory("bob".into(), Role::Admin, dn.into(), 300, 50);
        let ann = s.open_directory("ann".into(), Role::Read, "CN=ann,DC=ad".into(), 300, 0);
        let p = |o: &Opened| presented(&o.id, Method::Safe, None).id.to_string();
        let check =
            |id: &str, need, now| s.check(&t, &presented(id, Method::Safe, None), need, now);
        assert_eq!(s.due_for_recheck(100, 99), Vec::<String>::new());
        assert_eq!(s.due_for_recheck(100, 150), vec!["CN=ann,DC=ad".to_string(), dn.into()]);
        // A smaller role lowers both of bob's sessions (DNs compared case-insensitively).
        let r = s.confirm("cn=BOB,cn=users,dc=ad", Some(Role::Reimage), 200);
        assert_eq!(r, Rechecked { names: vec!["bob".into()], lowered: 2, ended: 0 });
        assert_eq!(check(&p(&bob1), Role::Read, 210).unwrap().0.role, Role::Reimage);
        assert_eq!(check(&p(&bob2), Role::Admin, 210).unwrap_err().kind(), "role-too-small");
        // A larger one never raises it.
        s.confirm(dn, Some(Role::Admin), 220);
        assert_eq!(check(&p(&bob1), Role::Read, 230).unwrap().0.role, Role::Reimage);
        // ann was not confirmed: 300 ms after login her session is refused, for good.
        assert!(check(&p(&ann), Role::Read, 299).is_ok());
        assert_eq!(check(&p(&ann), Role::Read, 300).unwrap_err(), Denied::NoSession);
        assert_eq!(check(&p(&ann), Role::Read, 301).unwrap_err(), Denied::NoSession);
        // Gone, disabled, or out of the groups: every session of the account ends.
        let r = s.confirm(dn, None, 240);
        assert_eq!(r, Rechecked { names: vec!["bob".into()], lowered: 0, ended: 2 });
        assert_eq!(check(&p(&bob1), Role::Read, 241).unwrap_err(), Denied::NoSession);
        assert!(s.is_empty());
    }

    #[test]
    fn an_admin_ends_every_directory_session_of_a_name() {
        let (t, h) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let dn = || "CN=bob,DC=ad".to_string();
        let a = s.open_directory("bob".into(), Role::Read, dn(), 1000, 0);
        let b = s.open_directory("bob".into(), Role::Read, dn(), 1000, 0);
        let c = s.open_directory("carol".into(), Role::Read, "CN=carol".into(), 1000, 0);
        let tok = s.open_token(h, 0);
        assert_eq!(s.end_name("BOB"), 2);
        assert_eq!(s.end_name("bob"), 0);
        for (o, alive) in [(&a, false), (&b, false), (&c, true), (&tok, true)] {
            let r = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Read, 1);
            assert_eq!(r.is_ok(), alive);
        }
    }

    #[test]
    fn other_sites_are_refused() {
        let (t, h) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let o = s.open_token(h, 0);
        let mut p = presented(&o.id, Method::Changes, Some(&o.csrf));
        p.fetch_site = Some("cross-site");
        assert_eq!(s.check(&t, &p, Role::Read, 1).unwrap_err(), Denied::CrossSite);
        p.fetch_site = Some("same-origin");
        p.origin = Some("http://evil.example");
        assert_eq!(s.check(&t, &p, Role::Read, 1).unwrap_err(), Denied::CrossSite);
        p.origin = Some("http://console:8080");
        assert!(s.check(&t, &p, Role::Read, 1).is_ok());
    }

    #[test]
    fn directory_sessions_keep_their_login() {
        let (t, _) = tokens();
        let s = Sessions::new(Lifetimes::default());
        let o = s.open_directory("alice".into(), Role::Admin, "uid=alice".into(), u64::MAX, 0);
        let (c, _) = s.check(&t, &presented(&o.id, Method::Safe, None), Role::Admin, 1).unwrap();
        assert_eq!((c.name.as_str(), c.role, c.via), ("alice", Role::Admin, Via::LdapSession));
    }

    #[test]
    fn failed_logins_are_limited_per_peer() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..LOGIN_FAILURES {
            assert!(l.allowed(a, 0));
            l.failed(a, 0);
        }
        assert!(!l.allowed(a, 10) && l.allowed(b, 10));
        assert!(l.allowed(a, LIMIT_WINDOW_MS), "the window passes");
        l.succeeded(a);
        assert!(l.allowed(a, 11));
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
