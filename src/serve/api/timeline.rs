//! Every install's timeline and the fleet's figures: `GET /hosts/{host}/timeline`, `GET
//! /fleet/stats`, and `POST /hosts/{host}/retry` for a failed or stalled install.
//!
//! Reads are bounded: a timeline reads the host's newest records through the `host` index
//! ([`crate::serve::store::audit::MAX_TIMELINE_RECORDS`] at most), the figures the window's
//! `done` and `failed` records ([`crate::serve::store::audit::MAX_STATS_RECORDS`] at most).
//! Whether an install is stalled is decided from the host's state and its last fetch
//! (`fetch_progress`, followed into memory with the last boots), never by scanning the log.

use crate::serve::api::hosts::{host_view, refresh_last_boots};
use crate::serve::app::change::Change;
use crate::serve::app::guard::{api_host, authorize};
use crate::serve::app::progress::{in_progress, stall_of};
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::{self, Phase, Retry};
use crate::serve::domain::timeline::{self, Open, Record};
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Pending => "pending",
        Phase::Installing => "installing",
        Phase::Started => "started",
        Phase::Failed => "failed",
        Phase::Done => "done",
    }
}

/// `GET /hosts/{host}/timeline[?limit=N]`: the host's newest installs, each with its steps.
pub(crate) async fn timeline(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let host = api_host(&raw)?;
    let limit = match req.param("limit") {
        None => timeline::DEFAULT_INSTALLS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=timeline::MAX_INSTALLS).contains(n))
            .ok_or_else(|| HttpError::bad_request("limit must be a whole number from 1 to 100"))?,
    };
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        if snap.inventory.get(&host).is_none() {
            return Err(HttpError::not_found("this host is not in the inventory"));
        }
        refresh_last_boots(svc, &snap);
        let st = svc.store.read_blocking(&host)?;
        let now = svc.store.now_ms();
        let stall = stall_of(&snap, &st, svc.last_boot.fetched(&host), now);
        let open = st.flag.as_ref().map(|f| Open {
            install: f.install.id.clone(),
            profile: f.profile.clone(),
            state: phase_name(st.phase()),
            stalled: stall.stalled,
            progress_ms: stall.progress_ms,
        });
        let records: Vec<Record> = svc
            .audit
            .host_records(&host, crate::serve::store::audit::MAX_TIMELINE_RECORDS)?
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        let allowance = |p: &str| snap.profiles.get(p).map(|p| p.settings.stall_after_secs);
        let t = timeline::build(&host, &records, open.as_ref(), allowance, now, limit);
        Ok(Reply::json(&t))
    })
    .await?
}

/// `GET /fleet/stats[?days=N]`: installs in progress and stalled now, done and failed today,
/// duration percentiles per profile and a per-day series over the window.
pub(crate) async fn fleet_stats(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let days = match req.param("days") {
        None => timeline::DEFAULT_DAYS,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=timeline::MAX_DAYS).contains(n))
            .ok_or_else(|| HttpError::bad_request("days must be a whole number from 1 to 90"))?,
    };
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        refresh_last_boots(svc, &snap);
        let now = svc.store.now_ms();
        let (mut progressing, mut stalled) = (0, 0);
        let states = svc.store.states_blocking()?;
        for node in snap.inventory.nodes() {
            let Some(Ok(st)) = states.get(&node.hostname) else { continue };
            if in_progress(st) {
                progressing += 1;
            }
            if stall_of(&snap, st, svc.last_boot.fetched(&node.hostname), now).stalled {
                stalled += 1;
            }
        }
        let day_ms = 86_400_000;
        let since = (now - now % day_ms).saturating_sub((days - 1) * day_ms);
        let records: Vec<Record> = svc
            .audit
            .outcomes_since(since)?
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        let stats = timeline::fleet_stats(&records, now, days, progressing, stalled);
        Ok(Reply::json(&stats))
    })
    .await?
}

/// `POST /hosts/{host}/retry`: a failed or stalled install is replaced by a new one of the same
/// profile (a new install id), through the single write path, audited as a `flag-set` with
/// `retry: true`. 409 when the install is neither failed nor stalled.
pub(crate) async fn retry(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Reimage).await?;
    let host = api_host(&raw)?;
    retry_body(&req.body)?;
    let h = host.clone();
    let fetched = svc
        .blocking(move |svc| {
            let snap = svc.catalog.snapshot();
            if snap.inventory.get(&h).is_none() {
                return Err(HttpError::not_found("this host is not in the inventory"));
            }
            svc.last_boot.refresh_fetches(&svc.store, |x| snap.inventory.get(x).is_some());
            Ok(svc.last_boot.fetched(&h))
        })
        .await??;
    let peer = req.peer;
    let (h, who) = (host.clone(), Actor::from(&caller));
    let view = svc
        .change(&host, move |svc, st, now| {
            let snap = svc.catalog.snapshot();
            let stalled = stall_of(&snap, st, fetched, now).stalled;
            // A new install of a profile no longer loaded would only answer local boots.
            if let Some(f) = st.flag.as_ref().filter(|f| snap.profiles.get(&f.profile).is_none()) {
                return Err(HttpError::new(
                    409,
                    format!("the install's profile {:?} is not loaded; nothing changed", f.profile),
                ));
            }
            let why = if st.phase() == Phase::Failed { "failed" } else { "stalled" };
            let id = hex::encode(rand::random::<[u8; 16]>());
            let (outcome, write) =
                lifecycle::retry(st, stalled, &who.by, &peer.to_string(), id, now);
            let Retry::Retried { install, profile, previous } = outcome else {
                return Err(HttpError::new(
                    409,
                    "the host's install is neither failed nor stalled; nothing changed",
                ));
            };
            let record = Event::FlagSet {
                host: h.clone(),
                profile,
                who: who.clone(),
                peer,
                changed: true,
                install,
                retry: true,
                previous: Some(previous),
                why: Some(why),
            };
            let mut shown = st.clone();
            shown.version += 1;
            let view = host_view(svc, &snap, &h, Ok(&shown));
            Ok(Change { value: view, write, record: Some(record) })
        })
        .await?;
    crate::serve::app::metrics::Metrics::inc(&svc.metrics.flags_set);
    tracing::info!(host = %host, %peer, "install retried");
    Ok(Reply::json(&view))
}

/// A retry takes nothing: no body, or an empty JSON object. Anything else is refused (400)
/// rather than ignored, so a caller who believes it can pick a profile here learns it cannot
/// (a new profile is a new flag: `PUT /hosts/{host}/reimage`).
fn retry_body(body: &[u8]) -> Result<(), HttpError> {
    if body.trim_ascii().is_empty() {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(fields) if fields.is_empty() => Ok(()),
        Ok(fields) => Err(HttpError::bad_request(format!(
            "a retry takes no fields (got {}); it keeps the install's profile, and a flag with another profile is PUT /hosts/{{host}}/reimage",
            fields
                .keys()
                .take(3)
                .map(|k| format!("{:?}", k.chars().take(40).collect::<String>()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Err(_) => Err(HttpError::bad_request("the body of a retry must be empty or {}")),
    }
}

#[cfg(test)]
mod tests {
    use super::retry_body;

    #[test]
    fn a_retry_takes_no_fields() {
        assert!(retry_body(b"").is_ok());
        assert!(retry_body(b" {} ").is_ok());
        let e = retry_body(br#"{"profile": "rocky"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("\"profile\""), "{}", e.message);
        assert_eq!(retry_body(b"[1]").unwrap_err().status, 400);
    }
}
