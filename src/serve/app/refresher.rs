//! The background refresher that fills [`crate::serve::app::hardware`]'s cache: a round every
//! `--bmc-refresh`, [`CONCURRENCY`] reads at once, each cut at `--bmc-state-timeout` (see that
//! module for the invariants); and the one-host refresh of `GET /hosts/{host}/hardware?refresh=1`
//! and of power actions.

use crate::inventory::{BmcUrl, Node};
use crate::redfish::CredentialsFile;
use crate::serve::app::bmc::Use;
use crate::serve::app::hardware::{seen_of, InFlight, ReadError};
use crate::serve::app::service::Service;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// BMCs read at once by the refresher.
pub const CONCURRENCY: usize = 8;
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
