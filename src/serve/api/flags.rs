//! `PUT`/`DELETE /hosts/{host}/reimage`: setting and cancelling the reimage flag.

use crate::serve::api::hosts::{host_view, HostView};
use crate::serve::app::change::Change;
use crate::serve::app::guard::{api_host, authorize, rules};
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle;
use crate::serve::domain::lifecycle::Cancel;
use crate::serve::domain::lifecycle::HostState;
use crate::serve::domain::lifecycle::SetFlag;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReimageBody {
    profile: Option<String>,
}

/// `PUT /hosts/{host}/reimage`: sets the flag. Idempotent: a second PUT with the same profile
/// keeps the open install; another profile replaces the flag (and so any open install).
pub(crate) async fn set_flag(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Reimage).await?;
    let by = caller.name.clone();
    let host = api_host(&raw)?;
    let body: ReimageBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        ReimageBody { profile: None }
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request("the body must be JSON like {\"profile\": \"NAME\"}")
        })?
    };
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(&host).ok_or_else(|| {
        HttpError::not_found(format!(
            "{host} is not in the inventory {}; add it there first",
            snap.inventory.source()
        ))
    })?;
    let profile = body.profile.or_else(|| node.profile.clone()).ok_or_else(|| {
        HttpError::bad_request(format!(
            "no profile for {host}: send {{\"profile\": \"NAME\"}} or fill the `profile` column of {}",
            snap.inventory.source()
        ))
    })?;
    if snap.profiles.get(&profile).is_none() {
        let known: Vec<&str> = snap.profiles.names().collect();
        let shown: String = profile.chars().take(64).collect();
        return Err(HttpError::bad_request(format!(
            "unknown profile {shown:?}; known profiles: {}",
            known.join(", ")
        )));
    }
    drop(snap);
    let peer = req.peer;
    let (h, who) = (host.clone(), Actor::from(&caller));
    let (view, changed) = svc
        .change(&host, move |svc, st, now| {
            let id = hex::encode(rand::random::<[u8; 16]>());
            let (outcome, write) =
                lifecycle::set_flag(st, &profile, &who.by, &peer.to_string(), id, now);
            let install = match &outcome {
                SetFlag::Set { install, .. } | SetFlag::Unchanged { install } => install.clone(),
            };
            let record = Event::FlagSet {
                host: h.clone(),
                profile: profile.clone(),
                who: who.clone(),
                peer,
                changed: write,
                install,
                retry: false,
                previous: None,
                why: None,
            };
            let snap = svc.catalog.snapshot();
            let view = host_view(svc, &snap, &h, Ok(&preview(st, write)));
            Ok(Change { value: (view, write), write, record: Some(record) })
        })
        .await?;
    if changed {
        crate::serve::app::metrics::Metrics::inc(&svc.metrics.flags_set);
    }
    tracing::info!(host = %host, by = %by, %peer, "reimage flag set");
    Ok(Reply::json(&view))
}

/// The state as it will be stored: `change` bumps the version when it writes.
fn preview(st: &HostState, write: bool) -> HostState {
    let mut shown = st.clone();
    if write {
        shown.version += 1;
    }
    shown
}

#[derive(Serialize)]
struct CancelView {
    #[serde(flatten)]
    host: HostView,
    was_flagged: bool,
    /// `cancelled`, `window-closed` or `nothing-to-cancel`.
    outcome: &'static str,
}

/// `DELETE /hosts/{host}/reimage`: after it, the host's next boot is local and its configs are
/// 404, whatever the profile; the cancelled install's callback is then ignored.
pub(crate) async fn cancel(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Reimage).await?;
    let host = api_host(&raw)?;
    let h = host.clone();
    let known = svc
        .blocking(move |svc| {
            svc.catalog.snapshot().inventory.get(&h).is_some()
                || svc.store.read_blocking(&h).map_or(true, |s| s.version > 0)
        })
        .await?;
    if !known {
        return Err(HttpError::not_found("this host is not in the inventory and has no state"));
    }
    let (h, peer) = (host.clone(), req.peer);
    let view = svc
        .change(&host, move |svc, st, now| {
            let snap = svc.catalog.snapshot();
            let (outcome, write) = lifecycle::cancel(st, rules(&snap), now);
            let (name, install) = match outcome {
                Cancel::Cancelled { install } => ("cancelled", Some(install)),
                Cancel::WindowClosed { install } => ("window-closed", Some(install)),
                Cancel::NothingToCancel => ("nothing-to-cancel", None),
            };
            let record = Event::FlagCancelled {
                host: h.clone(),
                who: Actor::from(&caller),
                peer,
                outcome: name,
                install,
            };
            let view = CancelView {
                host: host_view(svc, &snap, &h, Ok(&preview(st, write))),
                was_flagged: write,
                outcome: name,
            };
            Ok(Change { value: view, write, record: Some(record) })
        })
        .await?;
    if view.was_flagged {
        crate::serve::app::metrics::Metrics::inc(&svc.metrics.flags_cleared);
    }
    tracing::info!(host = %host, %peer, outcome = view.outcome, "reimage cancel");
    Ok(Reply::json(&view))
}
