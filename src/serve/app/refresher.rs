//! The background refresher that fills [`crate::serve::app::hardware`]'s cache: a round every
//! `--bmc-refresh`, `--bmc-refresh-jobs` reads of live BMCs at once and
//! [`crate::serve::app::hardware::SLOW_LANE`] of dead ones, each cut at `--bmc-state-timeout`
//! (see that module for the invariants); and the one-host refresh of
//! `GET /hosts/{host}/hardware?refresh=1` and of power actions, through the same lanes.

use crate::inventory::{BmcUrl, Node};
use crate::redfish::CredentialsFile;
use crate::serve::app::bmc::Use;
use crate::serve::app::hardware::{seen_of, stamp, Lane, ReadError, Skip, Stamp};
use crate::serve::app::service::Service;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a read's caller waits past the timeout for the thread's own answer (every request
/// is cut at the timeout, so it normally comes within it).
pub const GRACE: Duration = Duration::from_millis(500);

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

/// Reads one host's BMC and records the outcome; waits at most the timeout (plus [`GRACE`]).
/// `hold` (the host's [`crate::serve::app::hardware::InFlight`] claim and its lane's slot) lives until the BMC thread ends,
/// however long that is: a caller answered at the timeout frees neither.
async fn read_one<H: Send + 'static>(
    svc: &Arc<Service>,
    file: Option<&CredentialsFile>,
    creds: &Stamp,
    node: &Node,
    bmc_url: &BmcUrl,
    hold: H,
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
                .run_within(Use::Read, bmc_url, hold, hw.timeout, GRACE, move |client, p| {
                    client.hardware_within(&target, p)
                })
                .await;
            match answer {
                Ok(Ok(state)) => Ok(seen_of(&state, &our_bases(svc, node), host)),
                Ok(Err(e)) => {
                    let text = crate::serve::app::bmc::scrub(&e.to_string());
                    tracing::debug!(host, "hardware state: {text}");
                    Err(ReadError::of(&e))
                }
                Err(_) => Err(ReadError::Busy),
            }
        }
    };
    // A read that outlived a change of the row's `bmc` describes another machine: dropped,
    // so it never replaces what was read of the new one.
    let same =
        svc.catalog.snapshot().inventory.get(host).is_some_and(|n| n.bmc.as_ref() == Some(bmc_url));
    if same {
        hw.record(host, bmc_url, result, svc.store.now_ms(), creds);
    }
}

/// The credentials file and its [`Stamp`], or `None` when the service has none or it cannot
/// be read (every read then records [`ReadError::NoCredentials`]).
fn credentials(svc: &Service) -> (Option<CredentialsFile>, Stamp) {
    let Some(bmc) = svc.bmc.as_ref() else {
        return (None, None);
    };
    // The stamp first: a file changed between the two is read again next round.
    let creds = stamp(&bmc.credentials);
    match CredentialsFile::load(&bmc.credentials) {
        Ok(file) => (Some(file), creds),
        Err(e) => {
            tracing::warn!("hardware state: the BMC credentials file cannot be used: {e}");
            (None, creds)
        }
    }
}

/// The lane's semaphore.
fn gate(svc: &Service, lane: Lane) -> Arc<tokio::sync::Semaphore> {
    match lane {
        Lane::Live => svc.hardware.live.clone(),
        Lane::Slow => svc.hardware.slow.clone(),
    }
}

/// One refresh of `host` now (`GET /hosts/{host}/hardware?refresh=1`, after a power action),
/// through the refresher's lanes, so no number of callers reads more BMCs at once than the
/// refresher may; waits at most the timeout. Returns whether the cache now holds a read that
/// ended during the call or (with `recent_ok`: not after a power action, which changes what
/// a read finds) within [`crate::serve::app::hardware::RECENT`] before it: one
/// already under way is waited for rather than started again; a BMC that refused the
/// credentials file as it still is, is not asked (`false`), nor is a host without a `bmc`.
pub async fn refresh_host(svc: &Arc<Service>, host: &str, recent_ok: bool) -> bool {
    let node = svc.catalog.snapshot().inventory.get(host).cloned();
    let Some((node, url)) = node.and_then(|n| n.bmc.clone().map(|b| (n, b))) else {
        return false;
    };
    let hw = &svc.hardware;
    let started = svc.store.now_ms();
    let (file, creds) = credentials(svc);
    let lane = match hw.refresh_lane(host, &url, started, &creds) {
        Ok(lane) => lane,
        Err(Skip::Recent) if recent_ok => return true,
        Err(Skip::Recent) => Lane::Live,
        Err(Skip::Refused) => return false,
    };
    let Some(claim) = hw.claim(host) else {
        // Queued or running already: its outcome is what the caller wants.
        return hw.wait_read(host, started, hw.timeout + GRACE).await;
    };
    let Ok(Ok(slot)) = tokio::time::timeout(hw.timeout, gate(svc, lane).acquire_owned()).await
    else {
        return false;
    };
    read_one(svc, file.as_ref(), &creds, &node, &url, (claim, slot)).await;
    hw.wait_read(host, started, std::time::Duration::ZERO).await
}

/// Starts one round: a read of every inventory row with a `bmc` that is due
/// ([`crate::serve::app::hardware::Hardware::due`]) and has none queued or running, on its
/// lane; the cache loses the hosts that left. Returns once the reads are queued, not done: a
/// stuck BMC never holds up the next round of the others.
fn start_round(svc: &Arc<Service>) {
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
    let (file, creds) = credentials(svc);
    let shared = Arc::new((file, creds));
    let now = svc.store.now_ms();
    for (node, url) in rows {
        let Some(lane) = svc.hardware.due(&node.hostname, &url, now, &shared.1) else {
            continue;
        };
        // Claimed while queued, too: a host waits in the queue once, whatever the rounds.
        let Some(claim) = svc.hardware.claim(&node.hostname) else {
            continue;
        };
        let (svc, shared, gate) = (svc.clone(), shared.clone(), gate(svc, lane));
        tokio::spawn(async move {
            if let Ok(slot) = gate.acquire_owned().await {
                let (file, creds) = &*shared;
                read_one(&svc, file.as_ref(), creds, &node, &url, (claim, slot)).await;
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
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        start_round(&svc);
    }
}
