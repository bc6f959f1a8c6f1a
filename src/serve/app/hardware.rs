//! Live hardware state: the cache and its views. Every inventory host with a `bmc` has its
//! power, health, virtual CD and boot override read from its BMC in the background (by
//! [`crate::serve::app::refresher`]) and kept here in memory for `/hosts`, `/hosts/{host}` and
//! the console.
//!
//! ```text
//! refresher (every --bmc-refresh SECS) ─┬▶ live lane: --bmc-refresh-jobs at once ─▶ Cache
//!   each read: one BMC thread,          └▶ slow lane: SLOW_LANE at once, backed off  │
//!   cut at --bmc-state-timeout                                                       │
//! GET /hosts, /hosts/{h}, the console ◀──────────── read the cache only ◀────────────┘
//! ```
//!
//! Invariants:
//! * Nobody waits on a BMC to list hosts: views are built from the cache alone
//!   ([`Hardware::view`]). Only an explicit refresh of one host
//!   (`GET /hosts/{host}/hardware?refresh=1`) waits, and at most the per-BMC timeout.
//! * A lane's slot is held as long as the read's BMC thread lives, not only as long as someone
//!   waits for it: "N at a time" counts threads, so stuck reads never pile up past the lanes.
//!   A host whose previous read is still queued or running is never read twice at once
//!   ([`InFlight`]).
//! * Dead BMCs never hold up live ones: a host whose last read timed out or found nobody is
//!   read on the slow lane ([`SLOW_LANE`] at once), after a wait that doubles with each
//!   failure in a row (up to [`MAX_BACKOFF`]); the live lane stays for the others.
//! * A BMC that refused the credentials is not asked again (BMCs lock accounts out after a few
//!   failed logins) until the credentials file changes (its size or modification time).
//! * The cache holds only our own words ([`crate::redfish::HardwareState`] maps every BMC value
//!   onto small enums) and whether the mounted medium is ours: never the image URL (it may be
//!   signed) and never a BMC's message; errors are a short kind ([`ReadError`]).
//! * Hosts that left the inventory, or lost their `bmc`, leave the cache at the next round; a
//!   host whose `bmc` changed starts afresh (the old state was another machine's).
//! * Credentials stay in the service: the credentials file is read for each round, as for
//!   attach.

use crate::inventory::{BmcUrl, Node};
use crate::redfish::{self, BootEnabled, HardwareState, Health, Power};
use crate::serve::app::bmc::decoded;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether the BMC's virtual CD holds our medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Medium {
    /// An image under one of this service's `/media/` URLs.
    Ours,
    /// Something else is mounted.
    Other,
    /// Nothing is mounted.
    None,
    /// Not known: no virtual CD found, or not read yet.
    Unknown,
}

/// Why a host's last read failed: a short kind, never the BMC's text (the log has that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadError {
    /// No answer within `--bmc-state-timeout`.
    Timeout,
    /// Connection refused, reset, or no route.
    Unreachable,
    /// The BMC refused the credentials.
    Auth,
    /// The TLS handshake failed (an untrusted certificate).
    Tls,
    /// No line of the credentials file covers the BMC, or the service has no credentials file.
    NoCredentials,
    /// The BMC answered with an HTTP error.
    BmcError,
    /// The BMC's answers are not what Redfish promises (several systems, no system, garbage).
    Protocol,
    /// The BMC refuses the operation (a reset type it does not allow, no reset action).
    NotAllowed,
    /// Every BMC slot of the service was busy.
    Busy,
}

impl ReadError {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadError::Timeout => "timeout",
            ReadError::Unreachable => "unreachable",
            ReadError::Auth => "auth",
            ReadError::Tls => "tls",
            ReadError::NoCredentials => "no-credentials",
            ReadError::BmcError => "bmc-error",
            ReadError::Protocol => "protocol",
            ReadError::NotAllowed => "not-allowed",
            ReadError::Busy => "busy",
        }
    }

    /// The kind of a Redfish failure.
    pub fn of(e: &redfish::RedfishError) -> ReadError {
        use redfish::RedfishError as E;
        match e {
            E::Deadline { .. } | E::TaskTimeout { .. } => ReadError::Timeout,
            E::Unreachable { message, .. } if message.contains("timed out") => ReadError::Timeout,
            E::Unreachable { .. } => ReadError::Unreachable,
            E::Tls { .. } => ReadError::Tls,
            E::Unauthorized { .. } | E::Status { status: 401 | 403, .. } => ReadError::Auth,
            E::Status { .. } | E::TaskFailed { .. } => ReadError::BmcError,
            E::Unsupported { .. } => ReadError::NotAllowed,
            E::Invalid(_) => ReadError::NoCredentials,
            E::AmbiguousSystem { .. } | E::Protocol { .. } | E::UntrustedImage { .. } => {
                ReadError::Protocol
            }
        }
    }
}

/// What was read of a host, in our words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    power: Power,
    health: Health,
    medium: Medium,
    boot_override: Option<(&'static str, BootEnabled)>,
}

/// One host's cache entry.
#[derive(Debug, Clone)]
struct Entry {
    /// The BMC it was read from (a changed `bmc` column starts a new entry).
    bmc: BmcUrl,
    /// The last good read and when (ms since 1970).
    good: Option<(Seen, u64)>,
    /// The last read's failure; `None` when it succeeded.
    error: Option<ReadError>,
    /// Timeouts and unreachables in a row (the slow lane's back-off).
    failures: u32,
    /// When the last read ended (ms since 1970).
    tried_ms: u64,
    /// The credentials file as it was when the BMC refused it (see [`Stamp`]).
    refused: Option<Stamp>,
}

/// The credentials file's size and modification time, or `None` when it cannot be read: a
/// BMC that refused the credentials is asked again only once this changes.
pub(crate) type Stamp = Option<(u64, std::time::SystemTime)>;

/// The [`Stamp`] of the credentials file at `path`.
pub(crate) fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Reads of BMCs whose last read timed out or found nobody, at once (the slow lane).
pub const SLOW_LANE: usize = 2;
/// The longest a dead BMC waits between two reads (the back-off doubles up to it).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A read that ended this recently counts as fresh for `?refresh=1`: a caller (or many) asking
/// again at once gets it rather than another read of the BMC.
pub const RECENT: Duration = Duration::from_secs(5);

/// Why `?refresh=1` did not read the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The BMC refused the credentials file as it still is.
    Refused,
    /// A read ended within [`RECENT`].
    Recent,
}

/// The lane a read goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Live,
    Slow,
}

/// The `hardware` field of a host's view (`null` for rows without a `bmc`).
#[derive(Debug, Clone, Serialize)]
pub struct HardwareView {
    pub power: Power,
    pub health: Health,
    pub medium: Medium,
    pub boot_override: Option<OverrideView>,
    /// When the state shown was read (ms since 1970); `null`: never.
    pub checked_ms: Option<u64>,
    /// Whether the state shown may be out of date: never read, the last read failed, or older
    /// than two refresh intervals.
    pub stale: bool,
    pub error: Option<ReadError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverrideView {
    pub target: &'static str,
    pub enabled: BootEnabled,
}

/// The cache and the refresher's settings and counts.
pub struct Hardware {
    /// `--bmc-refresh` (zero: no background refresh).
    pub interval: Duration,
    /// `--bmc-state-timeout`.
    pub timeout: Duration,
    cache: Mutex<HashMap<String, Entry>>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// The live lane (`--bmc-refresh-jobs`) and the slow lane ([`SLOW_LANE`]): every read,
    /// the refresher's and `?refresh=1`'s, takes a slot of one and holds it until its BMC
    /// thread ends.
    pub(crate) live: Arc<tokio::sync::Semaphore>,
    pub(crate) slow: Arc<tokio::sync::Semaphore>,
    /// Bumped at every read recorded: `?refresh=1` waits on it for a read already under way.
    recorded: tokio::sync::watch::Sender<u64>,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

/// A host's read under way; dropped when the BMC thread ends (it is the thread's `hold`).
pub(crate) struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    host: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.host);
    }
}

impl Hardware {
    pub fn new(interval: Duration, timeout: Duration, jobs: usize) -> Hardware {
        Hardware {
            interval,
            timeout,
            cache: Mutex::default(),
            in_flight: Arc::default(),
            live: Arc::new(tokio::sync::Semaphore::new(jobs.max(1))),
            slow: Arc::new(tokio::sync::Semaphore::new(SLOW_LANE)),
            recorded: tokio::sync::watch::Sender::new(0),
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
        }
    }

    fn stale(&self, e: &Entry, now_ms: u64) -> bool {
        let old = |at: u64| {
            let limit = (self.interval * 2 + self.timeout).as_millis() as u64;
            !self.interval.is_zero() && now_ms.saturating_sub(at) > limit
        };
        e.error.is_some() || e.good.is_none_or(|(_, at)| old(at))
    }

    /// The view of `node`'s hardware from the cache alone; `None` for a row without a `bmc`.
    pub fn view(&self, node: &Node, now_ms: u64) -> Option<HardwareView> {
        let bmc = node.bmc.as_ref()?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(&node.hostname).filter(|e| &e.bmc == bmc);
        let seen = entry.and_then(|e| e.good);
        Some(HardwareView {
            power: seen.map_or(Power::Unknown, |(s, _)| s.power),
            health: seen.map_or(Health::Unknown, |(s, _)| s.health),
            medium: seen.map_or(Medium::Unknown, |(s, _)| s.medium),
            boot_override: seen
                .and_then(|(s, _)| s.boot_override)
                .map(|(target, enabled)| OverrideView { target, enabled }),
            checked_ms: seen.map(|(_, at)| at),
            stale: entry.is_none_or(|e| self.stale(e, now_ms)),
            error: entry.and_then(|e| e.error),
        })
    }

    /// The back-off after `failures` timeouts or unreachables in a row: one interval, doubled
    /// for each further failure, at most [`MAX_BACKOFF`] (but never below one interval).
    fn backoff(&self, failures: u32) -> Duration {
        let base = if self.interval.is_zero() { self.timeout } else { self.interval };
        let doubled = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
        doubled.min(MAX_BACKOFF.max(base))
    }

    /// Whether and on which lane the refresher reads `host` (at `bmc`) in the round starting
    /// at `now_ms`; `None`: not this round (backing off, or the BMC refused the credentials
    /// file as it still is, `creds`).
    pub(crate) fn due(&self, host: &str, bmc: &BmcUrl, now_ms: u64, creds: &Stamp) -> Option<Lane> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = cache.get(host).filter(|e| &e.bmc == bmc) else {
            return Some(Lane::Live);
        };
        match e.error {
            Some(ReadError::Auth) if e.refused.as_ref() == Some(creds) => None,
            Some(ReadError::Timeout | ReadError::Unreachable) => {
                // Half an interval of slack: a read ends up to a timeout after its round began.
                let due = e.tried_ms + self.backoff(e.failures).as_millis() as u64;
                let slack = (self.interval / 2).as_millis() as u64;
                (now_ms + slack >= due).then_some(Lane::Slow)
            }
            _ => Some(Lane::Live),
        }
    }

    /// What `?refresh=1` does for `host`: `None` when it must not read the BMC (the BMC
    /// refused the credentials file as it still is) or needs not (a read ended within
    /// [`RECENT`]); else the lane, whatever the back-off (someone asked).
    pub(crate) fn refresh_lane(
        &self,
        host: &str,
        bmc: &BmcUrl,
        now_ms: u64,
        creds: &Stamp,
    ) -> Result<Lane, Skip> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = cache.get(host).filter(|e| &e.bmc == bmc) else {
            return Ok(Lane::Live);
        };
        match e.error {
            Some(ReadError::Auth) if e.refused.as_ref() == Some(creds) => Err(Skip::Refused),
            _ if now_ms.saturating_sub(e.tried_ms) < RECENT.as_millis() as u64 => Err(Skip::Recent),
            Some(ReadError::Timeout | ReadError::Unreachable) => Ok(Lane::Slow),
            _ => Ok(Lane::Live),
        }
    }

    /// Forgets when `host` was last read, after an attach, detach or power action changed what
    /// a read finds: the next `?refresh=1` reads the BMC rather than answer from a read that
    /// ended [`RECENT`]ly, and a backed-off host is due again.
    pub(crate) fn changed(&self, host: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cache.get_mut(host) {
            e.tried_ms = 0;
        }
    }

    /// Waits until a read of `host` ends after `since_ms` (one already under way), at most
    /// `limit`; whether one did.
    pub(crate) async fn wait_read(&self, host: &str, since_ms: u64, limit: Duration) -> bool {
        let mut rx = self.recorded.subscribe();
        let done = || {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(host).is_some_and(|e| e.tried_ms >= since_ms)
        };
        let wait = async {
            loop {
                if done() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    pub(crate) fn record(
        &self,
        host: &str,
        bmc: &BmcUrl,
        result: Result<Seen, ReadError>,
        now_ms: u64,
        creds: &Stamp,
    ) {
        let counter = if result.is_ok() { &self.reads_ok } else { &self.reads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || Entry {
            bmc: bmc.clone(),
            good: None,
            error: None,
            failures: 0,
            tried_ms: 0,
            refused: None,
        };
        let entry = cache.entry(host.to_string()).or_insert_with(fresh);
        if &entry.bmc != bmc {
            *entry = fresh();
        }
        entry.tried_ms = now_ms;
        entry.refused = None;
        match result {
            Ok(seen) => {
                entry.good = Some((seen, now_ms));
                entry.error = None;
                entry.failures = 0;
            }
            Err(e) => {
                entry.error = Some(e);
                match e {
                    ReadError::Timeout | ReadError::Unreachable => {
                        entry.failures = entry.failures.saturating_add(1)
                    }
                    ReadError::Auth => {
                        entry.refused = Some(*creds);
                        entry.failures = 0;
                    }
                    _ => entry.failures = 0,
                }
            }
        }
        drop(cache);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Drops the entries of hosts that are no longer inventory rows with that `bmc`.
    pub(crate) fn prune(&self, keep: &HashMap<&str, &BmcUrl>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|host, e| keep.get(host.as_str()).is_some_and(|b| **b == e.bmc));
    }

    /// Claims `host` for one read; `None` while a read of it still runs.
    pub(crate) fn claim(&self, host: &str) -> Option<InFlight> {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(host.to_string())
            .then(|| InFlight { set: self.in_flight.clone(), host: host.to_string() })
    }

    /// The `/metrics` lines: reads by outcome, and the hosts whose state is stale now.
    pub fn metrics(&self, nodes: &[Node], now_ms: u64) -> String {
        let stale = nodes.iter().filter_map(|n| self.view(n, now_ms)).filter(|v| v.stale).count();
        format!(
            "# HELP bootforge_bmc_state_reads_total Hardware state reads of BMCs, by outcome.\n\
             # TYPE bootforge_bmc_state_reads_total counter\n\
             bootforge_bmc_state_reads_total{{outcome=\"ok\"}} {}\n\
             bootforge_bmc_state_reads_total{{outcome=\"failed\"}} {}\n\
             # HELP bootforge_bmc_state_stale_hosts Hosts with a bmc whose hardware state is stale (never read, last read failed, or too old).\n\
             # TYPE bootforge_bmc_state_stale_hosts gauge\n\
             bootforge_bmc_state_stale_hosts {stale}\n",
            self.reads_ok.load(Ordering::Relaxed),
            self.reads_failed.load(Ordering::Relaxed),
        )
    }
}

/// A URL cut into what decides whether it is ours: scheme, host and port (the scheme's default
/// port filled in), and path, all lower-case; `None` for anything that is not plain
/// `http(s)://host[:port]/path` (user information, a bad port).
fn url_parts(url: &str) -> Option<(String, String, u16, String)> {
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    Some((scheme.to_string(), host.to_string(), port, path.to_string()))
}

/// Whether the virtual CD holds our medium for `host`, another, or nothing.
///
/// Ours means exactly: the reported URL, decoded (BMCs hand it back percent- or HTML-encoded),
/// has the scheme, host and port of one of `bases` and the path `BASE-PATH/media/HOST.EXT` of
/// *this* host (another node's medium is `other`); and its `/media/` is literal in what the BMC
/// reports, since a BMC fetches `%2Fmedia%2F` as it stands, which is not our path.
pub(crate) fn medium_of(
    media: &Option<(Option<String>, Option<bool>)>,
    bases: &[String],
    host: &str,
) -> Medium {
    match media {
        None => Medium::Unknown,
        Some((_, Some(false))) | Some((None, None)) => Medium::None,
        Some((None, Some(true))) => Medium::Other,
        Some((Some(image), _)) => {
            let literal = image.to_ascii_lowercase().contains("/media/");
            let ours = literal
                && decoded(image).and_then(|d| url_parts(&d)).is_some_and(|(s, h, p, path)| {
                    bases.iter().filter_map(|b| url_parts(b)).any(|(bs, bh, bp, bpath)| {
                        let dir = format!("{}/media/", bpath.trim_end_matches('/'));
                        bs == s
                            && bh == h
                            && bp == p
                            && path.strip_prefix(&dir).is_some_and(|file| {
                                crate::media::Format::ALL
                                    .iter()
                                    .any(|f| file == f.file_name(&host.to_ascii_lowercase()))
                            })
                    })
                });
            if ours {
                Medium::Ours
            } else {
                Medium::Other
            }
        }
    }
}

pub(crate) fn seen_of(state: &HardwareState, bases: &[String], host: &str) -> Seen {
    Seen {
        power: state.power,
        health: state.health,
        medium: medium_of(&state.media, bases, host),
        boot_override: state.boot_override,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_bmcs_back_off_and_refused_credentials_are_not_retried() {
        let hw = Hardware::new(Duration::from_secs(60), Duration::from_secs(10), 8);
        let url: BmcUrl = "http://10.1.0.1".parse().unwrap();
        let creds: Stamp = Some((10, std::time::SystemTime::UNIX_EPOCH));
        let min = 60_000;
        assert_eq!(hw.due("a", &url, 0, &creds), Some(Lane::Live));
        // Three timeouts in a row: the next read waits four intervals, on the slow lane.
        for i in 0..3 {
            hw.record("a", &url, Err(ReadError::Timeout), 1_000_000 + i, &creds);
        }
        assert_eq!(hw.due("a", &url, 1_000_000 + 3 * min, &creds), None);
        assert_eq!(hw.due("a", &url, 1_000_000 + 4 * min, &creds), Some(Lane::Slow));
        for i in 0..40 {
            hw.record("a", &url, Err(ReadError::Unreachable), i, &creds);
        }
        assert_eq!(hw.backoff(41), MAX_BACKOFF);
        hw.record(
            "a",
            &url,
            Ok(Seen {
                power: Power::On,
                health: Health::Ok,
                medium: Medium::None,
                boot_override: None,
            }),
            5,
            &creds,
        );
        assert_eq!(hw.due("a", &url, 6, &creds), Some(Lane::Live));
        // Refused: never again until the file changes.
        hw.record("b", &url, Err(ReadError::Auth), 0, &creds);
        assert_eq!(hw.due("b", &url, u64::MAX / 2, &creds), None);
        assert_eq!(hw.refresh_lane("b", &url, u64::MAX / 2, &creds), Err(Skip::Refused));
        let changed: Stamp = Some((11, std::time::SystemTime::UNIX_EPOCH));
        assert_eq!(hw.due("b", &url, 1, &changed), Some(Lane::Live));
        // A read that just ended answers ?refresh=1 by itself.
        hw.record("c", &url, Err(ReadError::BmcError), 1_000, &creds);
        assert_eq!(hw.refresh_lane("c", &url, 2_000, &creds), Err(Skip::Recent));
        assert_eq!(hw.refresh_lane("c", &url, 7_000, &creds), Ok(Lane::Live));
    }

    #[test]
    fn our_medium_is_told_from_others() {
        let bases = vec!["http://10.0.0.5:8080".to_string(), "https://boot.lab/pxe/".to_string()];
        let m = |image: Option<&str>, inserted: Option<bool>| {
            medium_of(&Some((image.map(str::to_string), inserted)), &bases, "n1")
        };
        let ours = |image: &str| m(Some(image), Some(true));
        assert_eq!(ours("http://10.0.0.5:8080/media/n1.iso?exp=1&sig=ab"), Medium::Ours);
        assert_eq!(ours("HTTP://10.0.0.5:8080/MEDIA/n1.iso%3Fexp%3D1"), Medium::Ours);
        assert_eq!(ours("https://boot.lab:443/pxe/media/n1.usb.img"), Medium::Ours);
        assert_eq!(ours("https://boot.lab/pxe/media/n1.efi.img?sig=1"), Medium::Ours);
        // Fetched literally by the BMC: not our path.
        assert_eq!(ours("HTTP://10.0.0.5:8080%2Fmedia%2Fn1.iso"), Medium::Other);
        // Another node's medium, another server, another port or scheme, a look-alike host.
        assert_eq!(ours("http://10.0.0.5:8080/media/n2.iso"), Medium::Other);
        assert_eq!(ours("http://10.0.0.6:8080/media/n1.iso"), Medium::Other);
        assert_eq!(ours("http://10.0.0.5/media/n1.iso"), Medium::Other);
        assert_eq!(ours("https://10.0.0.5:8080/media/n1.iso"), Medium::Other);
        assert_eq!(ours("http://10.0.0.5:8080.evil/media/n1.iso"), Medium::Other);
        assert_eq!(ours("http://u@10.0.0.5:8080/media/n1.iso"), Medium::Other);
        assert_eq!(ours("http://10.0.0.5:8080/x/media/n1.iso"), Medium::Other);
        assert_eq!(ours("https://boot.lab/media/n1.iso"), Medium::Other);
        assert_eq!(ours("http://10.0.0.5:8080/media/n1.iso.bak"), Medium::Other);
        assert_eq!(m(Some("http://10.0.0.5:8080/media/n1.iso"), Some(false)), Medium::None);
        assert_eq!(m(None, None), Medium::None);
        assert_eq!(m(None, Some(true)), Medium::Other);
        assert_eq!(medium_of(&None, &bases, "n1"), Medium::Unknown);
    }

    #[test]
    fn stale_entries() {
        let hw = Hardware::new(Duration::from_secs(60), Duration::from_secs(10), 8);
        let url: BmcUrl = "http://10.1.0.1".parse().unwrap();
        let seen = Seen {
            power: Power::On,
            health: Health::Ok,
            medium: Medium::None,
            boot_override: None,
        };
        let e = Entry {
            bmc: url.clone(),
            good: Some((seen, 1_000_000)),
            error: None,
            failures: 0,
            tried_ms: 1_000_000,
            refused: None,
        };
        assert!(!hw.stale(&e, 1_000_000 + 130_000));
        assert!(hw.stale(&e, 1_000_000 + 131_000));
        assert!(hw.stale(&Entry { error: Some(ReadError::Timeout), ..e.clone() }, 1_000_000));
        assert!(hw.stale(&Entry { good: None, ..e }, 0));
    }
}
