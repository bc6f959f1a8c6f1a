//! The installer's side: its rendered configs and its `started`/`done`/`failed` callbacks.

use crate::serve::api::boot::render;
use crate::serve::app::change::Change;
use crate::serve::app::guard::{api_host, node_token_ok, rules};
use crate::serve::app::service::Service;
use crate::serve::domain::event::{Event, Fetch};
use crate::serve::domain::lifecycle;
use crate::serve::domain::lifecycle::Callback;
use crate::serve::web::reply::{HttpError, Reply, Sent};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

/// `GET /config/{host}[/~TOKEN]/{file}`: a profile file rendered for the node, only while an
/// install is active (these files hold join tokens and password hashes).
pub(crate) fn config(
    svc: &Arc<Service>,
    req: &Req,
    raw_host: &str,
    path_token: Option<&str>,
    file: Option<String>,
) -> Result<Reply, HttpError> {
    let arrived = std::time::Instant::now();
    let host = api_host(raw_host)?;
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(&host);
    // The token before the inventory, so that strangers learn nothing about which hosts exist.
    if !node_token_ok(svc, &host, path_token.or(req.param("token"))) {
        let host = node.map(|n| n.hostname.clone());
        svc.audit.note(&Event::NodeTokenDenied { host, route: req.route.name(), peer: req.peer });
        return Err(HttpError::new(403, "missing or wrong node token"));
    }
    let node = node.ok_or_else(|| HttpError::not_found("this host is not in the inventory"))?;
    let file = file.ok_or_else(|| HttpError::bad_request("bad config file path"))?;
    let st = svc.store.read_blocking(&host)?;
    let rules = rules(&snap);
    let Some((profile, id)) = st.active_install(rules, svc.store.now_ms()) else {
        return Err(HttpError::not_found(
            "this host has no install in progress; config files are served only during one",
        ));
    };
    let p = snap
        .profiles
        .get(profile)
        .ok_or_else(|| HttpError::not_found("the install's profile is not loaded"))?;
    if !p.config_files.contains(&file) {
        return Err(HttpError::not_found("the install's profile has no such config file"));
    }
    let text = render(svc, &snap, node, profile, &format!("config/{file}"), id, req.tls)
        .map_err(|e| HttpError::internal(format!("{host}: {e}")))?;
    // Recorded once the body is sent (or cut), with what was sent and how long it took.
    let (profile, install, peer) = (profile.to_string(), Some(id.to_string()), req.peer);
    // The node proved its token; without a secret the path's host name is all there is.
    let attributed = if svc.secret.is_some() { "token" } else { "path" };
    // Weak: a body a client keeps half-read must not keep the service (and its database) alive.
    let audit = Arc::downgrade(svc);
    let on_sent = move |sent: Sent| {
        let fetch = Fetch {
            status: 200,
            bytes: sent.bytes,
            complete: sent.complete,
            fetch_ms: arrived.elapsed().as_millis() as u64,
            attributed,
        };
        let record = Event::Config { host, file, profile, peer, install, fetch };
        if let Some(svc) = audit.upgrade() {
            svc.audit.note(&record);
        }
    };
    Ok(Reply::text(text).watched(Box::new(on_sent)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Done,
    Started,
    Failed,
}

#[derive(Serialize)]
struct CallbackView<'a> {
    host: &'a str,
    install: &'a str,
    result: &'static str,
    flagged: bool,
}

/// `POST|GET /hosts/{host}/done`, `/started` and `/failed[?reason=TEXT]`: the installer's
/// callbacks. Only the open install's id counts; anything else is answered 409 and changes
/// nothing. A host outside the inventory is answered 404 before anything is stored (no lock file
/// per invented name).
pub(crate) async fn callback(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
    which: Which,
) -> Result<Reply, HttpError> {
    let name = match which {
        Which::Done => "done",
        Which::Started => "started",
        Which::Failed => "failed",
    };
    let host = api_host(&raw)?;
    let snap = svc.catalog.snapshot();
    let in_inventory = snap.inventory.get(&host).is_some();
    if !node_token_ok(svc, &host, req.param("token")) {
        let record = Event::NodeTokenDenied {
            host: in_inventory.then(|| host.clone()),
            route: req.route.name(),
            peer: req.peer,
        };
        svc.audit.note(&record);
        return Err(HttpError::new(403, "missing or wrong node token"));
    }
    if !in_inventory {
        return Err(HttpError::not_found("this host is not in the inventory"));
    }
    let id = req
        .param("install")
        .filter(|i| lifecycle::is_install_id(i))
        .map(str::to_string)
        .ok_or_else(|| {
            HttpError::bad_request(
                "missing or malformed install=ID (the done_url of the install chain carries it)",
            )
        })?;
    drop(snap);
    let reason = req.param("reason").and_then(lifecycle::failure_reason);
    let (h, i, peer) = (host.clone(), id.clone(), req.peer);
    let outcome = svc
        .change(&host, move |svc, st, now| {
            let snap = svc.catalog.snapshot();
            // What `/fleet/stats` needs, taken before the transition ends the install: its
            // profile, and its start (first answer, else the flag).
            let (profile, begun) = match (&st.flag, &st.last_install) {
                (Some(f), _) if f.install.id == i => {
                    (Some(f.profile.clone()), Some(f.install.opened_at.unwrap_or(f.set_at)))
                }
                (None, Some(e)) if e.id == i => (Some(e.profile.clone()), e.opened_at),
                _ => (None, None),
            };
            let duration_ms = begun.map(|b| now.saturating_sub(b));
            let (outcome, write) = match which {
                Which::Done => lifecycle::finish(st, &i, rules(&snap), now),
                Which::Started => lifecycle::start(st, &i, now),
                Which::Failed => lifecycle::fail(st, &i, reason.clone(), now),
            };
            let (h, i, reason) = (h.clone(), i.clone(), reason.clone());
            let record = match (outcome, which) {
                (Callback::Accepted, Which::Done) => {
                    Event::Done { host: h, install: i, peer, profile, duration_ms }
                }
                (Callback::Accepted, Which::Started) => {
                    Event::Started { host: h, install: i, peer }
                }
                (Callback::Accepted, Which::Failed) => {
                    Event::Failed { host: h, install: i, peer, reason, profile, duration_ms }
                }
                (Callback::NotOpen { .. }, _) => {
                    Event::CallbackIgnored { host: h, callback: name, install: Some(i), peer }
                }
            };
            Ok(Change { value: outcome, write, record: Some(record) })
        })
        .await?;
    match outcome {
        Callback::Accepted => {
            let m = &svc.metrics;
            match which {
                Which::Done => {
                    crate::serve::app::metrics::Metrics::inc(&m.installs_done);
                    crate::serve::app::metrics::Metrics::inc(&m.flags_cleared);
                }
                Which::Started => {}
                Which::Failed => crate::serve::app::metrics::Metrics::inc(&m.installs_failed),
            }
            tracing::info!(host = %host, install = %id, "install {name}");
            let flagged = which != Which::Done;
            Ok(Reply::json(&CallbackView { host: &host, install: &id, result: name, flagged }))
        }
        Callback::NotOpen { other_open } => {
            let why = if other_open { "another install is open" } else { "no install is open" };
            Err(HttpError::new(
                409,
                format!("install {id} is not the open install of {host} ({why}); nothing changed"),
            ))
        }
    }
}
