//! The handlers of every endpoint (see docs/API.md). Each one is thin: it authorizes, gathers
//! what the request proved (validated host, node token, MAC), calls one transition of the
//! [`lifecycle`] core through [`Service::change`], and turns the outcome into an answer and an
//! audit [`Event`]. Work that touches the disk or renders runs on the blocking pool
//! ([`Service::blocking`]); only answers built from memory (health, metrics, refusals by route
//! or method) stay on the connection's task.

use super::assets::RangeSpec;
use super::audit::Event;
use super::auth::{Actor, Caller, Role};
use super::catalog::Snapshot;
use super::http::Req;
use super::lifecycle::{
    self, BootAnswer, Callback, Cancel, EndedInstall, Ending, Flag, HostState, InstallKind,
    NoInstall, Phase, Rules, SetFlag,
};
use super::media::{MediaOptions, Refusal};
use super::profiles::{ClearOn, RenderContext};
use super::query::{select, EventFilter, HostKey, HostQuery};
use super::reply::{HttpError, Payload, Reply, TEXT};
use super::routes::Route;
use super::util::{now_ms, rfc3339};
use super::{Change, Service};
use crate::inventory::{parse_hostname, Mac, Node};
use crate::script::{local_boot_script, LocalBoot, Medium};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Answers one request.
pub async fn handle(svc: Arc<Service>, req: Req) -> Reply {
    if !req.route.allows(req.method.as_str()) {
        let e = match req.route {
            Route::NotFound => HttpError::not_found(
                "no such endpoint; see GET /boot/{host}, /hosts, /hosts/{host}/reimage, /events, /status, /healthz, /metrics",
            ),
            _ => HttpError::method_not_allowed(req.route.allow()),
        };
        return e.into_reply();
    }
    let req = Arc::new(req);
    let console = !matches!(
        req.route,
        Route::Boot(_)
            | Route::BootOther
            | Route::Config { .. }
            | Route::Asset(_)
            | Route::Media(_)
    );
    let page = matches!(req.route, Route::Ui(_));
    let result = match req.route.clone() {
        Route::Healthz => Ok(healthz(&svc)),
        Route::Metrics => Ok(metrics(&svc)),
        Route::Status => status(&svc, &req).await,
        Route::Boot(host) => Ok(boot(&svc, &req, Some(host)).await),
        Route::BootOther => Ok(boot(&svc, &req, None).await),
        Route::Config { host, token, file } => {
            let r = req.clone();
            svc.blocking(move |svc| config(svc, &r, &host, token.as_deref(), file))
                .await
                .and_then(|r| r)
        }
        Route::Asset(path) => {
            let r = req.clone();
            svc.blocking(move |svc| asset(svc, &r, path)).await.and_then(|r| r)
        }
        Route::Media(file) => media(&svc, &req, file).await,
        Route::MediaUrl(host) => media_url(&svc, &req, host).await,
        Route::BmcMedia(host) if req.method == hyper::Method::PUT => {
            super::bmc::attach(&svc, &req, host).await
        }
        Route::BmcMedia(host) if req.method == hyper::Method::DELETE => {
            super::bmc::detach(&svc, &req, host).await
        }
        Route::BmcMedia(host) => super::bmc::show(&svc, &req, host).await,
        Route::Hosts => list_hosts(&svc, &req).await,
        Route::Host(host) => show_host(&svc, &req, host).await,
        Route::Reimage(host) if req.method == hyper::Method::PUT => {
            set_flag(&svc, &req, host).await
        }
        Route::Reimage(host) => cancel(&svc, &req, host).await,
        Route::Done(host) => callback(&svc, &req, host, Which::Done).await,
        Route::Started(host) => callback(&svc, &req, host, Which::Started).await,
        Route::Failed(host) => callback(&svc, &req, host, Which::Failed).await,
        Route::Events => events(&svc, &req).await,
        Route::Reload => reload(&svc, &req).await,
        Route::Ui(file) => super::console::ui_file(file.as_deref()),
        Route::Session => super::console::session(&svc, &req).await,
        Route::Sessions => super::console::end_sessions(&svc, &req).await,
        Route::Inventory if req.method == hyper::Method::PUT => {
            super::console::replace_upload(&svc, &req).await
        }
        Route::Inventory => super::console::inventory(&svc, &req).await,
        Route::InventoryCheck => super::console::check_upload(&svc, &req).await,
        Route::InventoryRows => super::console::edit_row(&svc, &req, None).await,
        Route::InventoryRow(host) => super::console::edit_row(&svc, &req, Some(host)).await,
        Route::NotFound => unreachable!("answered above: no method is allowed"),
    };
    let reply = result.unwrap_or_else(HttpError::into_reply);
    if console {
        return super::console::harden(reply, page);
    }
    reply
}

/// Checks the API token against the current tokens file, or, for a request with a console
/// session cookie and no `Authorization`, the session (alive, same site, CSRF token on a
/// change; see [`super::session`]). A refusal is audited by route and reason (never the token,
/// the cookie or the path).
pub(super) async fn authorize(
    svc: &Arc<Service>,
    req: &Req,
    need: Role,
) -> Result<Caller, HttpError> {
    let tokens = svc.catalog.tokens();
    let checked = match (&req.authorization, &req.session) {
        (None, Some(id)) => {
            let p = super::console::presented(svc, req, id);
            svc.sessions.check(&tokens, &p.get(), need, now_ms()).map(|(c, _)| c)
        }
        _ => tokens.check(req.authorization.as_deref(), need),
    };
    let denied = match checked {
        Ok(caller) => return Ok(caller),
        Err(denied) => denied,
    };
    let (route, peer, status) = (req.route.name(), req.peer, denied.status());
    let record = Event::Denied { route, peer, status, reason: denied.kind() };
    svc.audit.note(&record);
    tracing::warn!(%peer, route, status, "API request refused: {}", denied.kind());
    Err(HttpError::new(status, denied.message()))
}

pub(super) fn api_host(raw: &str) -> Result<String, HttpError> {
    parse_hostname(raw).map_err(|_| {
        HttpError::bad_request("the host name is not valid: letters, digits, `-` and dots")
    })
}

/// What the lifecycle needs of each profile.
fn rules(snap: &Snapshot) -> impl Fn(&str) -> Option<Rules> + '_ {
    |name| {
        snap.profiles.get(name).map(|p| Rules {
            clear_on_first_answer: p.settings.clear == ClearOn::FirstAnswer,
            repeat_window_ms: p.settings.repeat_window_secs.saturating_mul(1000),
        })
    }
}

/// Whether the request carries `host`'s node token (always true without a secret).
fn node_token_ok(svc: &Service, host: &str, presented: Option<&str>) -> bool {
    match &svc.secret {
        None => true,
        Some(secret) => presented.is_some_and(|t| secret.verify(host, t)),
    }
}

// ---------------------------------------------------------------------------------------------
// Health, status, metrics

/// `GET /healthz`: for load balancers, without a token; says nothing about the inputs.
fn healthz(svc: &Service) -> Reply {
    Reply::json(&serde_json::json!({
        "status": "ok",
        "generation": svc.catalog.snapshot().generation,
    }))
}

/// `GET /status` (role read): the inputs, reload errors and versions.
async fn status(svc: &Arc<Service>, req: &Req) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let snap = svc.catalog.snapshot();
    let reload = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Reply::json(&serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "nodes": snap.inventory.len(),
        "inventory": snap.inventory.source(),
        "profiles": snap.profiles.names().collect::<Vec<_>>(),
        "generation": snap.generation,
        "loaded_at": rfc3339(snap.loaded_at),
        "load_ms": snap.load_ms,
        "reload": reload,
        "api_enabled": svc.catalog.tokens().enabled(),
        "node_tokens": svc.secret.is_some(),
        "base_url": svc.default_base.as_ref().map(|u| u.to_string()),
        "media_templates": svc.media.templates(),
        "media_epoch": svc.media.epoch,
        "started_at": rfc3339(svc.started_at),
        "uptime_secs": now_ms().saturating_sub(svc.started_at) / 1000,
        "firmware": svc.media.firmware_versions(),
        "ldap": svc.directory.as_ref().map(|d| d.source().to_string()),
        "sessions": svc.sessions.len(),
    })))
}

fn metrics(svc: &Service) -> Reply {
    let snap = svc.catalog.snapshot();
    let failures = svc.catalog.status.lock().map(|s| s.failures).unwrap_or(0);
    let dropped = svc.audit.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let mut r =
        Reply::text(svc.metrics.render(snap.inventory.len(), snap.generation, failures, dropped));
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r
}

// ---------------------------------------------------------------------------------------------
// Boot

/// What a boot request says about itself, parsed: nothing else of it is used or recorded.
struct BootQuery {
    medium: Medium,
    platform: &'static str,
    ip: Option<Ipv4Addr>,
    mac: Option<Mac>,
}

impl BootQuery {
    fn parse(req: &Req) -> BootQuery {
        BootQuery {
            medium: req.param("medium").and_then(|m| m.parse().ok()).unwrap_or(Medium::Cd),
            platform: match req.param("platform") {
                Some("pcbios") => "pcbios",
                Some("efi") => "efi",
                Some(_) => "other",
                None => "-",
            },
            ip: req.param("ip").and_then(|i| i.parse().ok()),
            mac: req.param("mac").and_then(|m| m.parse().ok()),
        }
    }
}

/// Why a boot is answered local. The text is echoed on the node's console: fixed strings only,
/// never anything from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    InvalidHost,
    UnknownHost,
    BadToken,
    MacMismatch,
    NoMac,
    NoInstall(NoInstall),
    RenderError,
    StateError,
    StateBusy,
}

impl Local {
    fn kind(self) -> &'static str {
        match self {
            Local::InvalidHost => "invalid-host",
            Local::UnknownHost => super::audit::UNKNOWN_HOST,
            Local::BadToken => "bad-token",
            Local::MacMismatch | Local::NoMac => "mac-mismatch",
            Local::NoInstall(NoInstall::NotFlagged) => "not-flagged",
            Local::NoInstall(NoInstall::UnknownProfile) => "unknown-profile",
            Local::RenderError => "render-error",
            Local::StateError => "state-error",
            Local::StateBusy => "state-busy",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Local::InvalidHost => "the host name asked for is not valid",
            Local::UnknownHost => "this host is not in the inventory",
            Local::BadToken => "missing or wrong node token",
            Local::MacMismatch => "the MAC sent is not the inventory's MAC for this host",
            Local::NoMac => "no valid MAC sent; the inventory has one for this host",
            Local::NoInstall(NoInstall::NotFlagged) => "not flagged for reimage",
            Local::NoInstall(NoInstall::UnknownProfile) => "the flag's profile is not loaded",
            Local::RenderError => "the install chain could not be rendered",
            Local::StateError => "the flag store cannot be read or written",
            Local::StateBusy => "the host's state is locked elsewhere",
        }
    }

    /// Whether the request was proven to come from the host's medium.
    fn verified(self) -> bool {
        !matches!(
            self,
            Local::InvalidHost
                | Local::UnknownHost
                | Local::BadToken
                | Local::MacMismatch
                | Local::NoMac
        )
    }
}

/// Checks that the request comes from `raw`'s medium: a valid inventory host, its node token
/// (with a secret), and its MAC (when the inventory has one).
fn verify<'a>(
    svc: &Service,
    snap: &'a Snapshot,
    req: &Req,
    q: &BootQuery,
    raw: Option<&str>,
) -> Result<&'a Node, (Local, Option<String>)> {
    let host = raw.and_then(|r| parse_hostname(r).ok()).ok_or((Local::InvalidHost, None))?;
    let Some(node) = snap.inventory.get(&host) else {
        return Err((Local::UnknownHost, Some(host)));
    };
    if !node_token_ok(svc, &host, req.param("token")) {
        return Err((Local::BadToken, Some(host)));
    }
    match (node.mac, q.mac) {
        (None, _) => Ok(node),
        (Some(expected), Some(sent)) if expected == sent => Ok(node),
        (Some(_), Some(_)) => Err((Local::MacMismatch, Some(host))),
        (Some(_), None) => Err((Local::NoMac, Some(host))),
    }
}

/// What the first (lock-free) look at a boot found.
enum BootStep {
    Answered(Reply),
    /// The host's state must change (an install opens or continues): retry under its lock.
    Change(String),
}

/// `GET /boot/{host}`: always 200 with an iPXE script. Only a verified request of a flagged host
/// gets its install chain; everything else boots the local disk, with the reason on the console
/// and in the audit log. Most boots (not flagged) are answered from memory with one audit note;
/// a host whose file may decide reads it, and only an answer that changes it takes its lock.
async fn boot(svc: &Arc<Service>, req: &Arc<Req>, raw: Option<String>) -> Reply {
    // On the connection's task: verifying is CPU work and `may_decide` a look-up in memory, so
    // an unflagged host (almost every boot) is answered without a thread hand-off or a read.
    let q = BootQuery::parse(req);
    let snap = svc.catalog.snapshot();
    let host = match verify(svc, &snap, req, &q, raw.as_deref()) {
        Err((why, host)) => {
            // A refused request of an inventory host (a wrong token or MAC) still boots that
            // host's disk its own way: the row's `local_boot` is configuration, not request text.
            let node = host.as_deref().and_then(|h| snap.inventory.get(h));
            return boot_local(svc, req, &q, host.as_deref(), node, why);
        }
        Ok(node) if !svc.store.may_decide(&node.hostname) => {
            let why = Local::NoInstall(NoInstall::NotFlagged);
            return boot_local(svc, req, &q, Some(&node.hostname), Some(node), why);
        }
        Ok(node) => node.hostname.clone(),
    };
    drop(snap);
    let r = req.clone();
    let first = svc.blocking(move |svc| boot_look(svc, &r, host)).await;
    let host = match first {
        Ok(BootStep::Answered(reply)) => return reply,
        Ok(BootStep::Change(host)) => host,
        Err(_) => return boot_failed(svc, req, Local::StateError),
    };
    let r = req.clone();
    let changed = svc
        .change(&host.clone(), move |svc, st| {
            let snap = svc.catalog.snapshot();
            let q = BootQuery::parse(&r);
            let Some(node) = snap.inventory.get(&host) else {
                let reply = boot_local(svc, &r, &q, Some(&host), None, Local::UnknownHost);
                return Ok(Change { value: reply, write: false, record: None });
            };
            let (answer, write) = lifecycle::answer_boot(st, rules(&snap), now_ms());
            Ok(boot_answer(svc, &snap, &r, &q, node, answer, write))
        })
        .await;
    match changed {
        Ok(reply) => reply,
        Err(e) if e.status == 503 => boot_failed(svc, req, Local::StateBusy),
        Err(_) => boot_failed(svc, req, Local::StateError),
    }
}

/// The lock-free look at a verified host's state: answer, unless the state must change.
fn boot_look(svc: &Service, req: &Req, host: String) -> BootStep {
    let q = BootQuery::parse(req);
    let snap = svc.catalog.snapshot();
    // The inventory may have been reloaded since the request was verified.
    let Some(node) = snap.inventory.get(&host) else {
        return BootStep::Answered(boot_local(svc, req, &q, Some(&host), None, Local::UnknownHost));
    };
    let mut st = match svc.store.read(&host) {
        Ok(st) => st,
        Err(e) => {
            tracing::error!("{e}");
            let why = Local::StateError;
            return BootStep::Answered(boot_local(svc, req, &q, Some(&host), Some(node), why));
        }
    };
    let (answer, write) = lifecycle::answer_boot(&mut st, rules(&snap), now_ms());
    if write {
        return BootStep::Change(node.hostname.clone());
    }
    let Change { value, record, .. } = boot_answer(svc, &snap, req, &q, node, answer, false);
    if let Some(record) = record {
        svc.audit.note(&record);
    }
    BootStep::Answered(value)
}

/// Turns the lifecycle's answer into the script and the audit record.
fn boot_answer(
    svc: &Service,
    snap: &Snapshot,
    req: &Req,
    q: &BootQuery,
    node: &Node,
    answer: BootAnswer,
    write: bool,
) -> Change<Reply> {
    let host = node.hostname.as_str();
    let (profile, id, kind) = match answer {
        BootAnswer::Install { profile, id, kind } => (profile, id, kind),
        BootAnswer::Local(no) => {
            let record = boot_event(
                req,
                q,
                Some(host),
                true,
                "local",
                Local::NoInstall(no).kind(),
                Local::NoInstall(no).text(),
                None,
            );
            let reply = local_script(snap, q, Some(node), Local::NoInstall(no));
            svc.metrics.boot("local", Local::NoInstall(no).kind());
            return Change { value: reply, write: false, record: Some(record) };
        }
    };
    let script = match render(svc, snap, node, &profile, "boot.ipxe", &id) {
        Ok(script) => script,
        Err(e) => {
            tracing::error!(host, "{e}");
            let why = Local::RenderError;
            let record =
                boot_event(req, q, Some(host), true, "local", why.kind(), why.text(), None);
            svc.metrics.boot("local", why.kind());
            return Change {
                value: local_script(snap, q, Some(node), why),
                write: false,
                record: Some(record),
            };
        }
    };
    let reason = match kind {
        InstallKind::Opened => "flagged: install opened",
        InstallKind::Continues => "flagged: install continues",
        InstallKind::OpenedAndEnded => "flagged: install opened, flag cleared at first answer",
        InstallKind::RepeatWindow => "install chain again (repeat window)",
    };
    svc.metrics.boot(
        "install",
        if kind == InstallKind::RepeatWindow { "repeat-window" } else { "flagged" },
    );
    if kind == InstallKind::OpenedAndEnded {
        super::metrics::Metrics::inc(&svc.metrics.flags_cleared);
    }
    tracing::info!(host, install = %id, "boot: {reason}");
    let record = boot_event(req, q, Some(host), true, "install", kind.as_str(), reason, Some(&id));
    Change { value: Reply::text(script), write, record: Some(record) }
}

/// A local answer with its audit note, for a request refused before any state was read.
fn boot_local(
    svc: &Service,
    req: &Req,
    q: &BootQuery,
    host: Option<&str>,
    node: Option<&Node>,
    why: Local,
) -> Reply {
    svc.audit.note(&boot_event(
        req,
        q,
        host,
        why.verified(),
        "local",
        why.kind(),
        why.text(),
        None,
    ));
    svc.metrics.boot("local", why.kind());
    tracing::debug!(host = host.unwrap_or("-"), "boot: local: {}", why.text());
    local_script(&svc.catalog.snapshot(), q, node, why)
}

/// The local answer for a boot whose state could not be read or changed.
fn boot_failed(svc: &Service, req: &Req, why: Local) -> Reply {
    let q = BootQuery::parse(req);
    let host = match &req.route {
        Route::Boot(h) => parse_hostname(h).ok(),
        _ => None,
    };
    let snap = svc.catalog.snapshot();
    let node = host.as_deref().and_then(|h| snap.inventory.get(h));
    boot_local(svc, req, &q, host.as_deref(), node, why)
}

/// The local-boot script: how to leave iPXE comes from the node's `local_boot` column, else its
/// profile's setting, else the platform and medium.
fn local_script(snap: &Snapshot, q: &BootQuery, node: Option<&Node>, why: Local) -> Reply {
    let column = node.and_then(|n| n.vars.get("local_boot")).filter(|t| !t.is_empty());
    let how = match column.map(|t| t.parse::<LocalBoot>()) {
        Some(Ok(how)) => how,
        _ => node
            .and_then(|n| n.profile.as_deref())
            .and_then(|p| snap.profiles.get(p))
            .and_then(|p| p.settings.local_boot)
            .unwrap_or(LocalBoot::Auto),
    };
    Reply::text(local_boot_script(how, q.medium, why.text()))
}

#[allow(clippy::too_many_arguments)]
fn boot_event(
    req: &Req,
    q: &BootQuery,
    host: Option<&str>,
    verified: bool,
    answer: &'static str,
    kind: &'static str,
    reason: &'static str,
    install: Option<&str>,
) -> Event {
    Event::Boot {
        host: host.map(str::to_string),
        verified,
        answer,
        kind,
        reason,
        install: install.map(str::to_string),
        peer: req.peer,
        ip: q.ip,
        mac: q.mac,
        medium: q.medium.as_str(),
        platform: q.platform,
    }
}

/// Renders `file` of `profile` for `node` within install `id`.
fn render(
    svc: &Service,
    snap: &Snapshot,
    node: &Node,
    profile: &str,
    file: &str,
    id: &str,
) -> Result<String, String> {
    let server = svc.base_for(node).ok_or("no base URL for this node")?;
    let token = svc.secret.as_ref().map(|s| s.node_token(&node.hostname));
    let ctx = RenderContext { node, server: &server, token: token.as_deref(), install_id: id };
    snap.profiles.render(profile, file, &ctx)
}

// ---------------------------------------------------------------------------------------------
// Installer side: configs, callbacks, assets

/// `GET /config/{host}[/~TOKEN]/{file}`: a profile file rendered for the node, only while an
/// install is active (these files hold join tokens and password hashes).
fn config(
    svc: &Service,
    req: &Req,
    raw_host: &str,
    path_token: Option<&str>,
    file: Option<String>,
) -> Result<Reply, HttpError> {
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
    let st = svc.store.read(&host)?;
    let rules = rules(&snap);
    let Some((profile, id)) = st.active_install(rules, now_ms()) else {
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
    let text = render(svc, &snap, node, profile, &format!("config/{file}"), id)
        .map_err(|e| HttpError::internal(format!("{host}: {e}")))?;
    let profile = profile.to_string();
    svc.audit.note(&Event::Config { host, file, profile, peer: req.peer });
    Ok(Reply::text(text))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
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
async fn callback(
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
        .change(&host, move |svc, st| {
            let snap = svc.catalog.snapshot();
            let (outcome, write) = match which {
                Which::Done => lifecycle::finish(st, &i, rules(&snap), now_ms()),
                Which::Started => lifecycle::start(st, &i, now_ms()),
                Which::Failed => lifecycle::fail(st, &i, reason.clone(), now_ms()),
            };
            let record = match (outcome, which) {
                (Callback::Accepted, Which::Done) => Event::Done { host: h, install: i, peer },
                (Callback::Accepted, Which::Started) => {
                    Event::Started { host: h, install: i, peer }
                }
                (Callback::Accepted, Which::Failed) => {
                    Event::Failed { host: h, install: i, peer, reason }
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
                    super::metrics::Metrics::inc(&m.installs_done);
                    super::metrics::Metrics::inc(&m.flags_cleared);
                }
                Which::Started => {}
                Which::Failed => super::metrics::Metrics::inc(&m.installs_failed),
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

fn asset(svc: &Service, req: &Req, rel: Option<String>) -> Result<Reply, HttpError> {
    let Some(root) = &svc.config.assets else {
        return Err(HttpError::not_found("this server has no --assets directory"));
    };
    let rel = rel.ok_or_else(|| HttpError::bad_request("bad asset path"))?;
    match super::assets::open(root, &rel, req.range.as_deref()) {
        Ok(body) => {
            let mut r = Reply {
                status: body.status,
                content_type: content_type(&rel),
                body: Payload::Stream(body.reader, body.length),
                headers: vec![("Accept-Ranges", "bytes".into())],
            };
            if let Some(cr) = body.content_range {
                r.headers.push(("Content-Range", cr));
            }
            if let Some(m) = body.modified {
                r.headers.push(("Last-Modified", httpdate::fmt_http_date(m)));
            }
            Ok(r)
        }
        Err(e) if e.status == 416 => {
            Err(HttpError::new(416, "the requested range is outside the file")
                .header("Content-Range", e.message))
        }
        Err(e) if e.status == 400 => Err(HttpError::bad_request("bad asset path")),
        Err(_) => Err(HttpError::not_found("no such asset")),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("iso") => "application/x-iso9660-image",
        Some("ipxe" | "cfg" | "txt" | "yaml" | "yml" | "ks" | "seed") => TEXT,
        _ => "application/octet-stream",
    }
}

// ---------------------------------------------------------------------------------------------
// Media by URL

/// `GET /media/{host}.{iso,usb.img,efi.img}?OPTIONS&exp=..&sig=..`: a node's image, the bytes
/// `bootforge build` writes for it, by signed URL (see [`super::media`]). Ranges, `HEAD`,
/// `If-Range` and `If-None-Match` are answered as BMCs and `curl -C -` expect.
async fn media(svc: &Arc<Service>, req: &Arc<Req>, file: String) -> Result<Reply, HttpError> {
    let no_such = || {
        HttpError::not_found("no such medium; media are HOST.iso, HOST.usb.img and HOST.efi.img")
    };
    let (raw, format) = super::media::parse_file(&file).ok_or_else(no_such)?;
    let host = parse_hostname(raw).map_err(|_| no_such())?;
    let opts = MediaOptions::parse(
        format,
        req.param("arch"),
        req.param("medium"),
        req.param("efi_loader"),
    )
    .map_err(|e| HttpError::bad_request(format!("bad media option {e}")))?;
    let snap = svc.catalog.snapshot();
    let now = now_ms() / 1000;
    if let Err(refusal) =
        svc.media.signer.check(&host, &opts, req.param("exp"), req.param("sig"), now)
    {
        let known = snap.inventory.get(&host).is_some();
        let record = Event::MediaDenied {
            host: known.then(|| host.clone()),
            format: format.as_str(),
            reason: refusal.as_str(),
            peer: req.peer,
        };
        svc.audit.note(&record);
        tracing::debug!(peer = %req.peer, reason = refusal.as_str(), "media URL refused");
        let why = match refusal {
            Refusal::Unsigned => "media URLs must be signed",
            Refusal::Expired => "this media URL has expired",
            Refusal::BadSignature => {
                "this media URL is not valid (altered, or signed by another key)"
            }
        };
        return Err(HttpError::new(
            403,
            format!("{why}; get one from POST /hosts/{{host}}/media-url or `bootforge media-url`"),
        ));
    }
    let node = snap
        .inventory
        .get(&host)
        .cloned()
        .ok_or_else(|| HttpError::not_found(format!("{host} is no longer in the inventory")))?;
    let server = node.server.clone().or_else(|| svc.default_base.clone()).ok_or_else(|| {
        HttpError::internal(format!("{host}: no server URL (the catalog should have refused it)"))
    })?;
    let modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(snap.loaded_at),
    );
    drop(snap);
    let built = svc
        .blocking(move |svc| svc.media.image(&node, &server, svc.secret.as_ref(), &opts))
        .await?
        .map_err(|e| HttpError::internal(format!("building {host}'s {format} image: {e:#}")))?;
    let image = built.image;
    let (len, etag) = (image.len(), image.etag());
    let mut headers = vec![
        ("Accept-Ranges", "bytes".to_string()),
        ("ETag", etag.clone()),
        ("Last-Modified", modified.clone()),
        ("Cache-Control", "private, no-transform".to_string()),
        ("Content-Disposition", format!("attachment; filename=\"{file}\"")),
    ];
    let content_type = match format {
        crate::media::Format::Iso => "application/x-iso9660-image",
        _ => "application/octet-stream",
    };
    if let Some(tags) = &req.if_none_match {
        let matched = tags
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag);
        if matched {
            return Ok(Reply {
                status: 304,
                content_type,
                body: Payload::Text(String::new()),
                headers,
            });
        }
    }
    // A range applies only if the client still has these bytes (RFC 9110 §13.1.5): If-Range
    // must name this (strong) ETag. A date is not enough: two inventories loaded within one
    // second share a Last-Modified but not their bytes.
    let range = match &req.if_range {
        Some(v) if *v != etag => None,
        _ => req.range.as_deref(),
    };
    let (status, start, end) = match super::assets::parse_range(range, len) {
        RangeSpec::Full => (200, 0, len),
        RangeSpec::Part(a, z) => {
            headers.push(("Content-Range", format!("bytes {a}-{z}/{len}")));
            (206, a, z + 1)
        }
        RangeSpec::Unsatisfiable => {
            return Err(HttpError::new(416, "the requested range is outside the image")
                .header("Content-Range", format!("bytes */{len}")));
        }
    };
    if start == 0 && req.method == hyper::Method::GET {
        svc.audit.note(&Event::MediaServed {
            host: host.clone(),
            format: format.as_str(),
            peer: req.peer,
            status,
        });
    }
    if req.method == hyper::Method::GET {
        svc.metrics.media_bytes(end - start);
    }
    Ok(Reply {
        status,
        content_type,
        body: Payload::Chunks(Box::new(image.chunks(start, end, MEDIA_CHUNK)), end - start),
        headers,
    })
}

/// The largest buffer handed to hyper at once when streaming an image.
const MEDIA_CHUNK: usize = 256 << 10;

/// The body of `POST /hosts/{host}/media-url`; every field is optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MediaUrlBody {
    format: Option<String>,
    arch: Option<String>,
    medium: Option<String>,
    efi_loader: Option<String>,
    /// Seconds the URL stays valid.
    ttl: Option<u64>,
}

/// What `POST /hosts/{host}/media-url` answers.
#[derive(Serialize)]
pub struct MediaUrl {
    pub host: String,
    pub format: &'static str,
    pub url: String,
    pub expires_at: String,
    pub size: u64,
}

/// `POST /hosts/{host}/media-url` (role reimage): a signed URL of the host's medium.
async fn media_url(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let who = Actor::from(&authorize(svc, req, super::bmc::MINTS_MEDIA_URLS).await?);
    let host = api_host(&raw)?;
    let body: MediaUrlBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        MediaUrlBody::default()
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request(
                "the body must be JSON with any of format (iso, usb, efi), arch (x86_64,arm64), \
                 medium (cd, usb), efi_loader (ipxe, snponly), ttl (seconds)",
            )
        })?
    };
    let format = match body.format.as_deref() {
        None => crate::media::Format::Iso,
        Some(f) => f.parse().map_err(|_| {
            HttpError::bad_request("bad media option format: expected iso, usb or efi")
        })?,
    };
    let opts = MediaOptions::parse(
        format,
        body.arch.as_deref(),
        body.medium.as_deref(),
        body.efi_loader.as_deref(),
    )
    .map_err(|e| HttpError::bad_request(format!("bad media option {e}")))?;
    let ttl = body.ttl.unwrap_or(super::media::DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > super::media::MAX_TTL_SECS {
        return Err(HttpError::bad_request(format!(
            "ttl must be 1 to {} seconds",
            super::media::MAX_TTL_SECS
        )));
    }
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(&host).cloned().ok_or_else(|| {
        HttpError::not_found(format!(
            "{host} is not in the inventory {}; add it there first",
            snap.inventory.source()
        ))
    })?;
    drop(snap);
    let base = match &svc.config.media_base_url {
        Some(url) => url.to_string(),
        None => svc.base_for(&node).ok_or_else(|| HttpError::internal("no base URL"))?,
    };
    // Built now, so a URL is never handed out for an image that cannot be made.
    let server = node.server.clone().or_else(|| svc.default_base.clone());
    let o = opts.clone();
    let size = svc
        .blocking(move |svc| {
            let server = server.expect("base_for succeeded");
            svc.media.image(&node, &server, svc.secret.as_ref(), &o).map(|m| m.image.len())
        })
        .await?
        .map_err(|e| HttpError::internal(format!("building {host}'s {format} image: {e:#}")))?;
    let exp = now_ms() / 1000 + ttl;
    let url = svc.media.url(&base, &host, &opts, exp);
    svc.audit.note(&Event::MediaUrl {
        host: host.clone(),
        format: format.as_str(),
        who,
        peer: req.peer,
        expires: exp,
    });
    Ok(Reply::json(&MediaUrl {
        host,
        format: format.as_str(),
        url,
        expires_at: rfc3339(exp * 1000),
        size,
    }))
}

// ---------------------------------------------------------------------------------------------
// Operator API

/// The JSON view of one host.
#[derive(Serialize)]
struct HostView {
    hostname: String,
    in_inventory: bool,
    ip: Option<String>,
    mac: Option<String>,
    vlan: Option<u16>,
    default_profile: Option<String>,
    /// The row's `bmc` URL (its Redfish root or System).
    bmc: Option<String>,
    flagged: bool,
    profile: Option<String>,
    phase: Option<Phase>,
    flag: Option<FlagView>,
    last_install: Option<EndedView>,
    last_boot: Option<BootView>,
    version: u64,
    /// Set instead of the state fields when the host's state file cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_error: Option<String>,
}

#[derive(Serialize)]
struct FlagView {
    profile: String,
    set_by: String,
    set_from: String,
    set_at: String,
    install: InstallView,
}

#[derive(Serialize)]
struct InstallView {
    id: String,
    opened_at: Option<String>,
    answers: u32,
    failures: u32,
    last_failure_at: Option<String>,
    /// What the installer said about its last failure.
    last_failure_reason: Option<String>,
    /// The installer's last `started` report.
    started_at: Option<String>,
}

#[derive(Serialize)]
struct EndedView {
    id: String,
    profile: String,
    opened_at: Option<String>,
    ended_at: String,
    how: Ending,
}

#[derive(Serialize)]
struct BootView {
    time: String,
    peer: String,
    ip: Option<String>,
    mac: Option<String>,
    answer: String,
    reason: String,
}

impl From<&Flag> for FlagView {
    fn from(f: &Flag) -> Self {
        let i = &f.install;
        FlagView {
            profile: f.profile.clone(),
            set_by: f.set_by.clone(),
            set_from: f.set_from.clone(),
            set_at: rfc3339(f.set_at),
            install: InstallView {
                id: i.id.clone(),
                opened_at: i.opened_at.map(rfc3339),
                answers: i.answers,
                failures: i.failures,
                last_failure_at: i.last_failure_at.map(rfc3339),
                last_failure_reason: i.last_failure_reason.clone(),
                started_at: i.started_at.map(rfc3339),
            },
        }
    }
}

impl From<&EndedInstall> for EndedView {
    fn from(e: &EndedInstall) -> Self {
        EndedView {
            id: e.id.clone(),
            profile: e.profile.clone(),
            opened_at: e.opened_at.map(rfc3339),
            ended_at: rfc3339(e.ended_at),
            how: e.how,
        }
    }
}

/// Reads the boots appended to the audit log since the last look (before building views).
fn refresh_last_boots(svc: &Service, snap: &Snapshot) {
    svc.last_boot.refresh(&svc.audit, |h| snap.inventory.get(h).is_some());
}

fn host_view(
    svc: &Service,
    snap: &Snapshot,
    host: &str,
    state: Result<&HostState, String>,
) -> HostView {
    let node = snap.inventory.get(host);
    let mut view = HostView {
        hostname: host.to_string(),
        in_inventory: node.is_some(),
        ip: node.map(|n| n.cidr()),
        mac: node.and_then(|n| n.mac.map(|m| m.to_string())),
        vlan: node.and_then(|n| n.vlan),
        default_profile: node.and_then(|n| n.profile.clone()),
        bmc: node.and_then(|n| n.bmc.as_ref().map(|b| b.to_string())),
        flagged: false,
        profile: None,
        phase: None,
        flag: None,
        last_install: None,
        last_boot: None,
        version: 0,
        state_error: None,
    };
    let st = match state {
        Ok(st) => st,
        Err(e) => {
            view.state_error = Some(e);
            return view;
        }
    };
    let last_boot = svc.last_boot.get(host);
    view.flagged = st.flag.is_some();
    view.profile = st.flag.as_ref().map(|f| f.profile.clone());
    view.phase = Some(st.phase());
    view.flag = st.flag.as_ref().map(FlagView::from);
    view.last_install = st.last_install.as_ref().map(EndedView::from);
    view.last_boot = last_boot.map(|b| BootView {
        time: rfc3339(b.at),
        peer: b.peer,
        ip: b.ip,
        mac: b.mac,
        answer: b.answer,
        reason: b.reason,
    });
    view.version = st.version;
    view
}

#[derive(Serialize)]
struct HostList {
    hosts: Vec<HostView>,
    /// Hosts with stored state that are not in the inventory (flags ended when they left).
    orphans: Vec<HostView>,
}

/// `GET /hosts[?flagged=1]`: every inventory host, each with its state, or with the error that
/// keeps its state file from being read (the others are listed all the same).
async fn list_hosts(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let param = |n: &str| req.param(n).map(str::to_string);
    if HostQuery::wanted(param) {
        let q = HostQuery::parse(param).map_err(HttpError::bad_request)?;
        return svc.blocking(move |svc| host_page(svc, &q)).await;
    }
    let only_flagged = matches!(req.param("flagged"), Some("1" | "true" | "yes"));
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        refresh_last_boots(svc, &snap);
        let with_state: std::collections::HashSet<String> = svc.store.hosts().into_iter().collect();
        let read = |host: &str| match with_state.contains(host) {
            true => svc.store.read(host).map_err(|e| e.to_string()),
            false => Ok(HostState::default()),
        };
        let keep = |st: &Result<HostState, String>| {
            !only_flagged || st.as_ref().map_or(true, |s| s.flag.is_some())
        };
        let mut hosts = Vec::new();
        for node in snap.inventory.nodes() {
            let st = read(&node.hostname);
            if keep(&st) {
                hosts.push(host_view(
                    svc,
                    &snap,
                    &node.hostname,
                    st.as_ref().map_err(Clone::clone),
                ));
            }
        }
        let mut orphans = Vec::new();
        let mut outside: Vec<&String> =
            with_state.iter().filter(|h| snap.inventory.get(h).is_none()).collect();
        outside.sort();
        for host in outside {
            let st = read(host);
            let shown = match &st {
                Ok(s) => {
                    s.flag.is_some()
                        || s.last_install
                            .as_ref()
                            .is_some_and(|e| e.how == Ending::RemovedFromInventory)
                }
                Err(_) => true,
            };
            if shown && keep(&st) {
                orphans.push(host_view(svc, &snap, host, st.as_ref().map_err(Clone::clone)));
            }
        }
        Reply::json(&HostList { hosts, orphans })
    })
    .await
}

/// The paged form of `GET /hosts` (see [`super::query`]): every inventory host's state is
/// read (hosts without a state file are idle without a read), filtered and sorted on a few
/// fields, and only the page's views are built.
fn host_page(svc: &Service, q: &HostQuery) -> Reply {
    let snap = svc.catalog.snapshot();
    refresh_last_boots(svc, &snap);
    let with_state: std::collections::HashSet<String> = svc.store.hosts().into_iter().collect();
    let nodes = snap.inventory.nodes();
    let states: Vec<Result<HostState, String>> = nodes
        .iter()
        .map(|n| match with_state.contains(&n.hostname) {
            true => svc.store.read(&n.hostname).map_err(|e| e.to_string()),
            false => Ok(HostState::default()),
        })
        .collect();
    let boots = svc.last_boot.times();
    let keys: Vec<HostKey> = nodes
        .iter()
        .zip(&states)
        .map(|(n, st)| {
            let st = st.as_ref().ok();
            let flag = st.and_then(|s| s.flag.as_ref());
            HostKey {
                hostname: &n.hostname,
                ip: n.ip,
                mac: n.mac.map(|m| m.to_string()),
                vlan: n.vlan,
                profile: flag.map(|f| f.profile.as_str()).or(n.profile.as_deref()),
                phase: st.map_or(Phase::Idle, HostState::phase),
                last_boot: boots.get(&n.hostname).copied(),
                install_since: flag.map(|f| f.set_at),
            }
        })
        .collect();
    let (page, matched) = select(&keys, q);
    let mut counts: std::collections::BTreeMap<Phase, usize> = Default::default();
    for k in &keys {
        *counts.entry(k.phase).or_default() += 1;
    }
    let hosts: Vec<HostView> = page
        .into_iter()
        .map(|i| {
            host_view(svc, &snap, &nodes[i].hostname, states[i].as_ref().map_err(Clone::clone))
        })
        .collect();
    Reply::json(&serde_json::json!({
        "hosts": hosts,
        "total": nodes.len(),
        "matched": matched,
        "offset": q.offset,
        "limit": q.limit,
        "phases": counts,
        "profiles": snap.profiles.names().collect::<Vec<_>>(),
    }))
}

async fn show_host(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let host = api_host(&raw)?;
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        refresh_last_boots(svc, &snap);
        let st = svc.store.read(&host).map_err(|e| e.to_string());
        if snap.inventory.get(&host).is_none() && st.as_ref().is_ok_and(|s| s.version == 0) {
            return Err(HttpError::not_found("this host is not in the inventory and has no state"));
        }
        Ok(Reply::json(&host_view(svc, &snap, &host, st.as_ref().map_err(Clone::clone))))
    })
    .await?
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReimageBody {
    profile: Option<String>,
}

/// `PUT /hosts/{host}/reimage`: sets the flag. Idempotent: a second PUT with the same profile
/// keeps the open install; another profile replaces the flag (and so any open install).
async fn set_flag(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
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
        .change(&host, move |svc, st| {
            let id = hex::encode(rand::random::<[u8; 16]>());
            let (outcome, write) =
                lifecycle::set_flag(st, &profile, &who.by, &peer.to_string(), id, now_ms());
            let install = match &outcome {
                SetFlag::Set { install, .. } | SetFlag::Unchanged { install } => install.clone(),
            };
            let record = Event::FlagSet {
                host: h.clone(),
                profile: profile.clone(),
                who,
                peer,
                changed: write,
                install,
            };
            let snap = svc.catalog.snapshot();
            let view = host_view(svc, &snap, &h, Ok(&preview(st, write)));
            Ok(Change { value: (view, write), write, record: Some(record) })
        })
        .await?;
    if changed {
        super::metrics::Metrics::inc(&svc.metrics.flags_set);
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
async fn cancel(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Reimage).await?;
    let host = api_host(&raw)?;
    let h = host.clone();
    let known = svc
        .blocking(move |svc| {
            svc.catalog.snapshot().inventory.get(&h).is_some()
                || svc.store.read(&h).map_or(true, |s| s.version > 0)
        })
        .await?;
    if !known {
        return Err(HttpError::not_found("this host is not in the inventory and has no state"));
    }
    let (h, peer) = (host.clone(), req.peer);
    let view = svc
        .change(&host, move |svc, st| {
            let snap = svc.catalog.snapshot();
            let (outcome, write) = lifecycle::cancel(st, rules(&snap), now_ms());
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
        super::metrics::Metrics::inc(&svc.metrics.flags_cleared);
    }
    tracing::info!(host = %host, %peer, outcome = view.outcome, "reimage cancel");
    Ok(Reply::json(&view))
}

/// `GET /events?since=OFFSET&limit=N`: a page of the audit log (at most 1,000 records and about
/// 1 MiB, whatever `limit` asks), with the offset to ask from next. Each page reads at most
/// [`super::audit::MAX_SCAN_BYTES`] of log, whatever the filters: a filter that matches little
/// gets short (even empty) pages with a cursor, and says how much it read (`scanned`), so the
/// cost of a request is bounded and following the cursors still finds everything. Records are
/// shown as the caller's role may see them ([`super::audit::visible_to`]) before any filter
/// looks at them.
async fn events(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let role = authorize(svc, req, Role::Read).await?.role;
    let parse = |name: &str, default: u64| -> Result<u64, HttpError> {
        match req.param(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                HttpError::bad_request(format!(
                    "{name} must be a whole number (a byte offset from `next` or `before`)"
                ))
            }),
        }
    };
    let since = parse("since", 0)?;
    let limit = parse("limit", 1000)?.clamp(1, 1000) as usize;
    let filter = EventFilter::parse(|n| req.param(n).map(str::to_string));
    let newest = matches!(req.param("order"), Some("newest"));
    let before = match req.param("before") {
        None | Some("") => None,
        Some(_) => Some(parse("before", 0)?),
    };
    svc.blocking(move |svc| {
        svc.audit.sync();
        let page = if newest {
            svc.audit.read_newest(limit, before, &filter, role)
        } else {
            svc.audit.read_page(since, limit, super::audit::MAX_PAGE_BYTES, &filter, role)
        };
        let page =
            page.map_err(|e| HttpError::internal(format!("cannot read the audit log: {e}")))?;
        Ok(Reply::json(&page))
    })
    .await?
}

/// `POST /admin/reload`: reloads inventory, profiles and tokens now (422 with the error if they
/// are invalid; the old ones stay), then ends flags of hosts that left the inventory.
async fn reload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let reloaded = svc.catalog.reload_if_changed(true);
        if reloaded {
            super::metrics::Metrics::inc(&svc.metrics.reloads_ok);
            svc.sweep_orphans();
        }
        let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ok = reloaded && status.tokens_error.is_none();
        svc.audit.note(&Event::Reload { who: Actor::from(&caller), peer, ok });
        let generation = svc.catalog.snapshot().generation;
        let error = status.last_error.or(status.tokens_error);
        let body = serde_json::json!({ "reloaded": ok, "generation": generation, "error": error });
        Reply::json(&body).with_status(if ok { 200 } else { 422 })
    })
    .await
}
