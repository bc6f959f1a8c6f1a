//! Live hardware state: every inventory host with a `bmc` has its power, health, virtual CD
//! and boot override read from its BMC in the background, and kept here in memory for `/hosts`,
//! `/hosts/{host}` and the console.
//!
//! ```text
//! refresher (every --bmc-refresh SECS) ─▶ at most CONCURRENCY reads at once ─▶ Cache
//!   each read: one BMC thread, cut at --bmc-state-timeout                       │
//! GET /hosts, /hosts/{h}, the console ◀──────────── read the cache only ◀───────┘
//! ```
//!
//! Invariants:
//! * Nobody waits on a BMC to list hosts: views are built from the cache alone
//!   ([`Hardware::view`]). Only an explicit refresh of one host
//!   (`GET /hosts/{host}/hardware?refresh=1`) waits, and at most the per-BMC timeout.
//! * A dead BMC costs one slot of [`CONCURRENCY`] for at most its timeout (plus [`GRACE`]): a
//!   read is cut at the timeout, and a host whose previous read is still queued or running (its thread
//!   not yet ended) is skipped, never read twice at once ([`InFlight`]), so stuck reads do not
//!   pile up.
//! * The cache holds only our own words ([`crate::redfish::HardwareState`] maps every BMC value
//!   onto small enums) and whether the mounted medium is ours: never the image URL (it may be
//!   signed) and never a BMC's message; errors are a short kind ([`ReadError`]).
//! * Hosts that left the inventory, or lost their `bmc`, leave the cache at the next round; a
//!   host whose `bmc` changed starts afresh (the old state was another machine's).
//! * Credentials stay in the service: the credentials file is read for each round, as for
//!   attach.

use crate::inventory::{BmcUrl, Node};
use crate::redfish::{self, BootEnabled, CredentialsFile, HardwareState, Health, Power};
use crate::serve::app::bmc::{decoded, Use};
use crate::serve::app::service::Service;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The default of `serve --bmc-refresh`: seconds between two rounds of reads.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// The default of `serve --bmc-state-timeout`: the longest one host's read may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// BMCs read at once by the refresher.
pub const CONCURRENCY: usize = 8;
/// How long a read's caller waits past the timeout for the thread's own answer (every request
/// is cut at the timeout, so it normally comes within it).
pub const GRACE: Duration = Duration::from_millis(500);

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
struct Seen {
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
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

/// A host's read under way; dropped when the BMC thread ends (it is the thread's `hold`).
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    host: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.host);
    }
}

impl Hardware {
    pub fn new(interval: Duration, timeout: Duration) -> Hardware {
        Hardware {
            interval,
            timeout,
            cache: Mutex::default(),
            in_flight: Arc::default(),
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

    fn record(&self, host: &str, bmc: &BmcUrl, result: Result<Seen, ReadError>, now_ms: u64) {
        let counter = if result.is_ok() { &self.reads_ok } else { &self.reads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.entry(host.to_string()).or_insert_with(|| Entry {
            bmc: bmc.clone(),
            good: None,
            error: None,
        });
        if &entry.bmc != bmc {
            *entry = Entry { bmc: bmc.clone(), good: None, error: None };
        }
        match result {
            Ok(seen) => {
                entry.good = Some((seen, now_ms));
                entry.error = None;
            }
            Err(e) => entry.error = Some(e),
        }
    }

    /// Drops the entries of hosts that are no longer inventory rows with that `bmc`.
    fn prune(&self, keep: &HashMap<&str, &BmcUrl>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|host, e| keep.get(host.as_str()).is_some_and(|b| **b == e.bmc));
    }

    /// Claims `host` for one read; `None` while a read of it still runs.
    fn claim(&self, host: &str) -> Option<InFlight> {
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

/// The base URLs under which a `/media/` image is ours, lower-case without a trailing `/`:
/// `--media-base-url`, `--public-url`, each listener's address, and the row's `server`.
fn our_bases(svc: &Service, node: &Node) -> Vec<String> {
    let c = &svc.config;
    let d = &svc.default_base;
    [c.media_base_url.as_ref(), c.public_url.as_ref(), d.plain.as_ref(), d.tls.as_ref()]
        .into_iter()
        .chain([node.server.as_ref()])
        .flatten()
        .map(|u| u.as_str().trim_end_matches('/').to_ascii_lowercase())
        .collect()
}

/// Whether the virtual CD holds our medium, another, or nothing.
fn medium_of(media: &Option<(Option<String>, Option<bool>)>, bases: &[String]) -> Medium {
    match media {
        None => Medium::Unknown,
        Some((_, Some(false))) | Some((None, None)) => Medium::None,
        Some((None, Some(true))) => Medium::Other,
        Some((Some(image), _)) => {
            // Decoded first: BMCs report the URL percent- or HTML-encoded.
            let ours = decoded(image).is_some_and(|d| {
                let d = d.to_ascii_lowercase();
                bases.iter().any(|b| d.starts_with(&format!("{b}/media/")))
            });
            if ours {
                Medium::Ours
            } else {
                Medium::Other
            }
        }
    }
}

fn seen_of(state: &HardwareState, bases: &[String]) -> Seen {
    Seen {
        power: state.power,
        health: state.health,
        medium: medium_of(&state.media, bases),
        boot_override: state.boot_override,
    }
}

/// Reads one host's BMC (claimed by `claim`, held until the BMC thread ends) and records the
/// outcome; waits at most the timeout (plus [`GRACE`]).
async fn read_one(
    svc: &Arc<Service>,
    file: Option<&CredentialsFile>,
    node: &Node,
    bmc_url: &BmcUrl,
    claim: InFlight,
) {
    let hw = &svc.hardware;
    let host = node.hostname.as_str();
    let result = match (svc.bmc.as_ref(), file.map(|f| f.target(bmc_url))) {
        (None, _) | (_, None) => Err(ReadError::NoCredentials),
        (_, Some(Err(e))) => {
            tracing::debug!(host, "hardware state: {e}");
            Err(ReadError::NoCredentials)
        }
        (Some(bmc), Some(Ok(target))) => {
            let answer = bmc
                .run_within(Use::Read, bmc_url, claim, hw.timeout, GRACE, move |client, p| {
                    client.hardware_within(&target, p)
                })
                .await;
            match answer {
                Ok(Ok(state)) => Ok(seen_of(&state, &our_bases(svc, node))),
                Ok(Err(e)) => {
                    let text = crate::serve::app::bmc::scrub(&e.to_string());
                    tracing::debug!(host, "hardware state: {text}");
                    Err(ReadError::of(&e))
                }
                Err(_) => Err(ReadError::Busy),
            }
        }
    };
    hw.record(host, bmc_url, result, svc.store.now_ms());
}

/// The credentials file, or `None` when the service has none or it cannot be read (every read
/// then records [`ReadError::NoCredentials`]).
fn credentials(svc: &Service) -> Option<CredentialsFile> {
    match CredentialsFile::load(&svc.bmc.as_ref()?.credentials) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!("hardware state: the BMC credentials file cannot be used: {e}");
            None
        }
    }
}

/// One refresh of `host` now (`GET /hosts/{host}/hardware?refresh=1`, after a power action);
/// waits at most the timeout. Does nothing for a host without a `bmc`, or whose read is
/// already queued or running (its outcome will be in the cache).
pub async fn refresh_host(svc: &Arc<Service>, host: &str) {
    let node = svc.catalog.snapshot().inventory.get(host).cloned();
    let Some((node, url)) = node.and_then(|n| n.bmc.clone().map(|b| (n, b))) else {
        return;
    };
    let Some(claim) = svc.hardware.claim(host) else {
        return;
    };
    let file = credentials(svc);
    read_one(svc, file.as_ref(), &node, &url, claim).await;
}

/// Starts one round: a read of every inventory row with a `bmc` that has none queued or
/// running, [`CONCURRENCY`] at a time across rounds (the gate is the refresher's); the cache
/// loses the hosts that left. Returns once the reads are queued, not done: a stuck BMC never
/// holds up the next round of the others.
fn start_round(svc: &Arc<Service>, gate: &Arc<tokio::sync::Semaphore>) {
    let snap = svc.catalog.snapshot();
    let rows: Vec<(Node, BmcUrl)> = snap
        .inventory
        .nodes()
        .iter()
        .filter_map(|n| n.bmc.clone().map(|b| (n.clone(), b)))
        .collect();
    drop(snap);
    {
        let keep: HashMap<&str, &BmcUrl> =
            rows.iter().map(|(n, b)| (n.hostname.as_str(), b)).collect();
        svc.hardware.prune(&keep);
    }
    let file = Arc::new(credentials(svc));
    for (node, url) in rows {
        // Claimed while queued, too: a host waits in the queue once, whatever the rounds.
        let Some(claim) = svc.hardware.claim(&node.hostname) else {
            continue;
        };
        let (svc, file, gate) = (svc.clone(), file.clone(), gate.clone());
        tokio::spawn(async move {
            if let Ok(_slot) = gate.acquire_owned().await {
                read_one(&svc, (*file).as_ref(), &node, &url, claim).await;
            }
        });
    }
}

/// The background refresher: a round at start, then one every `--bmc-refresh`. Never returns;
/// does nothing with `--bmc-refresh 0`.
pub async fn refresher(svc: Arc<Service>) {
    let interval = svc.hardware.interval;
    if interval.is_zero() {
        return;
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        start_round(&svc, &gate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_medium_is_told_from_others() {
        let bases = vec!["http://10.0.0.5:8080".to_string()];
        let m = |image: Option<&str>, inserted: Option<bool>| {
            medium_of(&Some((image.map(str::to_string), inserted)), &bases)
        };
        assert_eq!(
            m(Some("http://10.0.0.5:8080/media/n1.iso?exp=1&sig=ab"), Some(true)),
            Medium::Ours
        );
        assert_eq!(m(Some("HTTP://10.0.0.5:8080%2Fmedia%2Fn1.iso"), Some(true)), Medium::Ours);
        assert_eq!(m(Some("http://10.0.0.6:8080/media/n1.iso"), Some(true)), Medium::Other);
        assert_eq!(m(Some("http://10.0.0.5:8080.evil/media/n1.iso"), Some(true)), Medium::Other);
        assert_eq!(m(Some("http://10.0.0.5:8080/media/n1.iso"), Some(false)), Medium::None);
        assert_eq!(m(None, None), Medium::None);
        assert_eq!(m(None, Some(true)), Medium::Other);
        assert_eq!(medium_of(&None, &bases), Medium::Unknown);
    }

    #[test]
    fn stale_entries() {
        let hw = Hardware::new(Duration::from_secs(60), Duration::from_secs(10));
        let url: BmcUrl = "http://10.1.0.1".parse().unwrap();
        let seen = Seen {
            power: Power::On,
            health: Health::Ok,
            medium: Medium::None,
            boot_override: None,
        };
        let e = Entry { bmc: url.clone(), good: Some((seen, 1_000_000)), error: None };
        assert!(!hw.stale(&e, 1_000_000 + 130_000));
        assert!(hw.stale(&e, 1_000_000 + 131_000));
        assert!(hw.stale(&Entry { error: Some(ReadError::Timeout), ..e.clone() }, 1_000_000));
        assert!(hw.stale(&Entry { good: None, ..e }, 0));
    }
}
