//! Request routing and the handlers of every endpoint (see docs/API.md).
//!
//! Handlers take a [`Req`] (method, decoded path, query, the few headers used, peer, body) and
//! return a [`Reply`]; turning those into HTTP responses happens in `mod.rs`, so the decisions
//! here are plain functions of their inputs plus the state directory.

use super::auth::{Caller, Denied, Role};
use super::profiles::{ClearOn, RenderContext};
use super::state::{BootRecord, EndedInstall, Flag, HostState, Install, Phase, StoreError};
use super::util::{error_json, now_ms, rfc3339};
use super::Service;
use crate::inventory::{parse_hostname, Mac, Node};
use crate::script::{local_boot_script, LocalBoot, Medium};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;

/// Largest request body accepted (a reimage body is a few bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// A request, reduced to what the handlers use.
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub host_header: Option<String>,
    pub peer: String,
    pub body: Vec<u8>,
}

/// What to send back.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Payload,
    pub headers: Vec<(String, String)>,
}

pub enum Payload {
    Text(String),
    Stream(Box<dyn Read + Send>, u64),
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    fn json(status: u16, value: Value) -> Reply {
        let mut body = value.to_string();
        body.push('\n');
        Reply { status, content_type: JSON, body: Payload::Text(body), headers: Vec::new() }
    }
    fn error(status: u16, message: &str) -> Reply {
        let mut body = error_json(message);
        body.push('\n');
        Reply { status, content_type: JSON, body: Payload::Text(body), headers: Vec::new() }
    }
    fn text(status: u16, body: String) -> Reply {
        Reply { status, content_type: TEXT, body: Payload::Text(body), headers: Vec::new() }
    }
    fn header(mut self, name: &str, value: String) -> Reply {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// An API failure: status and message, answered as `{"error": ...}`.
pub struct ApiError(pub u16, pub String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        ApiError(500, format!("{e}"))
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(e.0, &e.1)
    }
}

/// Routes one request. Never panics on any input (the property test holds it to that).
pub fn route(svc: &Service, req: &Req) -> Reply {
    let segments: Vec<&str> = req.path.split('/').skip(1).collect();
    let m = req.method.as_str();
    let allow = |methods: &str, ok: bool, f: &dyn Fn() -> Reply| {
        if ok {
            f()
        } else {
            Reply::error(405, &format!("method {m} is not allowed here; use {methods}"))
                .header("Allow", methods.to_string())
        }
    };
    let get = m == "GET" || m == "HEAD";
    match segments.as_slice() {
        ["healthz"] => allow("GET", get, &|| healthz(svc)),
        ["metrics"] => allow("GET", get, &|| metrics(svc)),
        ["boot", host] => allow("GET", get, &|| boot(svc, req, host)),
        // Anything deeper under /boot/ is still a boot request: answered local, never an error.
        ["boot", _, _, ..] => allow("GET", get, &|| boot(svc, req, "")),
        ["config", host, rest @ ..] if !rest.is_empty() => {
            allow("GET", get, &|| config(svc, req, host, &rest.join("/")))
        }
        ["assets", rest @ ..] if !rest.is_empty() => {
            allow("GET, HEAD", get, &|| assets(svc, req, &rest.join("/")))
        }
        ["hosts"] => allow("GET", get, &|| list_hosts(svc, req)),
        ["hosts", host] => allow("GET", get, &|| show_host(svc, req, host)),
        ["hosts", host, "reimage"] => match m {
            "PUT" => set_flag(svc, req, host),
            "DELETE" => cancel_flag(svc, req, host),
            _ => allow("PUT, DELETE", false, &|| unreachable_reply()),
        },
        ["hosts", host, "done"] => {
            allow("POST, GET", m == "POST" || get, &|| callback(svc, req, host, true))
        }
        ["hosts", host, "failed"] => {
            allow("POST, GET", m == "POST" || get, &|| callback(svc, req, host, false))
        }
        ["events"] => allow("GET", get, &|| events(svc, req)),
        ["admin", "reload"] => allow("POST", m == "POST", &|| reload(svc, req)),
        _ => Reply::error(
            404,
            "no such endpoint; see GET /boot/{host}, /hosts, /hosts/{host}/reimage, /events, /healthz, /metrics",
        ),
    }
}

fn unreachable_reply() -> Reply {
    Reply::error(405, "method not allowed")
}

fn hostname(raw: &str) -> Result<String, ApiError> {
    parse_hostname(raw).map_err(|e| ApiError(400, e))
}

/// Checks the API token, auditing refusals (by reason, never the token).
fn authorize(svc: &Service, req: &Req, need: Role) -> Result<Caller, ApiError> {
    match svc.tokens.check(req.authorization.as_deref(), need) {
        Ok(c) => Ok(c),
        Err(denied) => {
            let (status, message) = match denied {
                Denied::Unauthenticated(m) => (401, m),
                Denied::Forbidden(m) => (403, m),
            };
            svc.audit.record(
                "denied",
                json!({ "method": req.method, "path": req.path, "peer": req.peer, "status": status, "reason": message }),
                false,
            );
            tracing::warn!(peer = %req.peer, path = %req.path, status, "API request refused: {message}");
            Err(ApiError(status, message))
        }
    }
}

fn healthz(svc: &Service) -> Reply {
    let snap = svc.catalog.snapshot();
    let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Reply::json(
        200,
        json!({
            "status": "ok",
            "nodes": snap.inventory.len(),
            "profiles": snap.profiles.names().collect::<Vec<_>>(),
            "generation": snap.generation,
            "loaded_at": rfc3339(snap.loaded_at),
            "load_ms": snap.load_ms,
            "reload": status,
            "api_enabled": svc.tokens.enabled(),
            "node_tokens": svc.secret.is_some(),
        }),
    )
}

fn metrics(svc: &Service) -> Reply {
    let snap = svc.catalog.snapshot();
    let failures = svc.catalog.status.lock().map(|s| s.failures).unwrap_or(0);
    let mut r =
        Reply::text(200, svc.metrics.render(snap.inventory.len(), snap.generation, failures));
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r
}

/// The service's base URL as `node` reaches it: the row's `server`, else `--public-url`, else
/// the `Host` header the node used (which is the media's `--server`).
fn server_for(svc: &Service, req: &Req, node: &Node) -> String {
    if let Some(s) = &node.server {
        return s.to_string();
    }
    if let Some(s) = &svc.config.public_url {
        return s.to_string();
    }
    match req
        .host_header
        .as_deref()
        .map(|h| format!("http://{h}").parse::<crate::inventory::ServerUrl>())
    {
        Some(Ok(url)) => url.to_string(),
        _ => format!("http://{}", svc.local_addr),
    }
}

/// How `node` leaves iPXE for its disk: the node's `local_boot` column, else its profile's
/// setting, else by platform and medium.
fn local_how(svc: &Service, node: Option<&Node>, profile: Option<&str>) -> LocalBoot {
    if let Some(text) = node.and_then(|n| n.vars.get("local_boot")).filter(|t| !t.is_empty()) {
        match text.parse() {
            Ok(how) => return how,
            Err(e) => tracing::warn!("column local_boot: {e}; using auto"),
        }
    }
    let snap = svc.catalog.snapshot();
    profile
        .or_else(|| node.and_then(|n| n.profile.as_deref()))
        .and_then(|p| snap.profiles.get(p))
        .and_then(|p| p.settings.local_boot)
        .unwrap_or(LocalBoot::Auto)
}

/// `GET /boot/{host}`: always 200 with an iPXE script. Only a flagged host whose token and MAC
/// check out gets its install chain; every other case boots the local disk, with the reason on
/// the console and in the audit log.
fn boot(svc: &Service, req: &Req, raw_host: &str) -> Reply {
    let medium =
        req.query.get("medium").and_then(|m| m.parse::<Medium>().ok()).unwrap_or(Medium::Cd);
    let (answer, kind, reason, host, install_id) = decide_boot(svc, req, raw_host);
    let host_label = host.clone().unwrap_or_else(|| "-".into());
    svc.metrics.boot(if answer.is_some() { "install" } else { "local" }, kind);
    let (text, answer_name) = match answer {
        Some(script) => (script, "install"),
        None => {
            let node_snap = svc.catalog.snapshot();
            let node = host.as_deref().and_then(|h| node_snap.inventory.get(h));
            let how = local_how(svc, node, None);
            (local_boot_script(how, medium, &reason), "local")
        }
    };
    // The audit record is also where every instance finds each host's last boot (LastBoots).
    svc.audit.record(
        "boot",
        json!({
            "host": host_label, "answer": answer_name, "kind": kind, "reason": reason,
            "peer": req.peer, "ip": req.query.get("ip"), "mac": req.query.get("mac"),
            "medium": medium.as_str(), "platform": req.query.get("platform"), "install": install_id,
        }),
        false,
    );
    tracing::info!(host = %host_label, answer = answer_name, peer = %req.peer, "boot: {reason}");
    Reply::text(200, text)
}

type Decision = (Option<String>, &'static str, String, Option<String>, Option<String>);

fn decide_boot(svc: &Service, req: &Req, raw_host: &str) -> Decision {
    let local =
        |kind: &'static str, reason: String, host: Option<String>| (None, kind, reason, host, None);
    let Ok(host) = parse_hostname(raw_host) else {
        return local("invalid-host", "invalid host name".into(), None);
    };
    let snap = svc.catalog.snapshot();
    let Some(node) = snap.inventory.get(&host) else {
        return local("unknown-host", format!("{host} is not in the inventory"), Some(host));
    };
    if let Some(secret) = &svc.secret {
        let ok = req.query.get("token").is_some_and(|t| secret.verify(&host, t));
        if !ok {
            return local("bad-token", "missing or wrong node token".into(), Some(host));
        }
    }
    if let Some(expected) = node.mac {
        match req.query.get("mac").map(|m| m.parse::<Mac>()) {
            Some(Ok(sent)) if sent == expected => {}
            Some(Ok(sent)) => {
                return local(
                    "mac-mismatch",
                    format!("MAC {sent} is not the inventory's {expected}"),
                    Some(host),
                )
            }
            _ => {
                return local(
                    "mac-mismatch",
                    format!("no valid MAC sent; the inventory has {expected}"),
                    Some(host),
                )
            }
        }
    }
    let state = match svc.store.read(&host) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return local("state-error", "the flag store cannot be read".into(), Some(host));
        }
    };
    if state.flag.is_none() {
        // Inside the repeat window of a profile that clears on the first answer, the same
        // install goes on (same id, no write).
        if let Some(ended) = repeat_window(&snap, &state) {
            let ctx_server = server_for(svc, req, node);
            let token = svc.secret.as_ref().map(|s| s.node_token(&host));
            let ctx = RenderContext {
                node,
                server: &ctx_server,
                token: token.as_deref(),
                install_id: &ended.id,
            };
            return match snap.profiles.render(&ended.profile, "boot.ipxe", &ctx) {
                Ok(script) => (
                    Some(script),
                    "repeat-window",
                    "install chain again (repeat window)".into(),
                    Some(host),
                    Some(ended.id.clone()),
                ),
                Err(e) => {
                    tracing::error!("{e}");
                    local(
                        "render-error",
                        "the install chain could not be rendered".into(),
                        Some(host),
                    )
                }
            };
        }
        return local("not-flagged", "not flagged for reimage".into(), Some(host));
    }
    // Flagged: open (or continue) the install under the host's lock, so two instances answering
    // at once agree on one install id.
    let server = server_for(svc, req, node);
    let token = svc.secret.as_ref().map(|s| s.node_token(&host));
    let peer = req.peer.clone();
    let (ip, mac) = (req.query.get("ip").cloned(), req.query.get("mac").cloned());
    let result = svc.store.update::<_, ApiError>(&host, |st| {
        let Some(flag) = st.flag.as_mut() else {
            return Ok((Err(("not-flagged", "not flagged for reimage".to_string())), false));
        };
        let Some(profile) = snap.profiles.get(&flag.profile) else {
            return Ok((
                Err(("unknown-profile", format!("profile {} no longer exists", flag.profile))),
                false,
            ));
        };
        let new_install = flag.install.is_none();
        let install = flag.install.get_or_insert_with(|| Install {
            id: new_id(),
            opened_at: now_ms(),
            answers: 0,
            failures: 0,
            last_failure_at: None,
        });
        let ctx = RenderContext {
            node,
            server: &server,
            token: token.as_deref(),
            install_id: &install.id,
        };
        let script = match snap.profiles.render(&profile.name, "boot.ipxe", &ctx) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return Ok((
                    Err(("render-error", "the install chain could not be rendered".to_string())),
                    false,
                ));
            }
        };
        install.answers += 1;
        let id = install.id.clone();
        let reason = if new_install {
            format!("flagged: install {id} opened")
        } else {
            format!("flagged: install {id} continues")
        };
        st.last_boot = Some(BootRecord {
            at: now_ms(),
            peer: peer.clone(),
            ip: ip.clone(),
            mac: mac.clone(),
            answer: "install".into(),
            reason: reason.clone(),
        });
        if st.phase != Phase::Failed {
            st.phase = Phase::Installing;
        }
        let mut cleared = false;
        if profile.settings.clear == ClearOn::FirstAnswer {
            let flag = st.flag.take().expect("flag present");
            st.last_install = Some(EndedInstall {
                id: id.clone(),
                profile: flag.profile,
                opened_at: flag.install.map_or(0, |i| i.opened_at),
                ended_at: now_ms(),
                how: "first-answer".into(),
            });
            st.phase = Phase::Done;
            cleared = true;
        }
        Ok((Ok((script, id, reason, cleared)), true))
    });
    match result {
        Ok(Ok((script, id, reason, cleared))) => {
            if cleared {
                super::metrics::Metrics::inc(&svc.metrics.flags_cleared);
                svc.audit.record(
                    "flag-cleared",
                    json!({ "host": host, "how": "first-answer", "install": id, "peer": req.peer }),
                    true,
                );
            }
            (Some(script), "flagged", reason, Some(host), Some(id))
        }
        Ok(Err((kind, reason))) => local(kind, reason, Some(host)),
        Err(ApiError(_, m)) => {
            tracing::error!("boot of {host}: {m}");
            local("state-error", "the flag store cannot be written".into(), Some(host))
        }
    }
}

/// The ended install whose repeat window is still open, if any.
fn repeat_window<'a>(
    snap: &super::catalog::Snapshot,
    state: &'a HostState,
) -> Option<&'a EndedInstall> {
    let ended = state.last_install.as_ref().filter(|e| e.how == "first-answer")?;
    let profile = snap.profiles.get(&ended.profile)?;
    let window_ms = profile.settings.repeat_window_secs.saturating_mul(1000);
    (now_ms().saturating_sub(ended.ended_at) < window_ms).then_some(ended)
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Checks a node token from the query when a secret is configured.
fn node_token_ok(svc: &Service, req: &Req, host: &str) -> bool {
    match &svc.secret {
        None => true,
        Some(secret) => req.query.get("token").is_some_and(|t| secret.verify(host, t)),
    }
}

/// `GET /config/{host}/{file}`: a profile file rendered for the node, only while flagged (these
/// files hold join tokens and password hashes).
fn config(svc: &Service, req: &Req, raw_host: &str, file: &str) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        let host = hostname(raw_host)?;
        // `/config/{host}/~TOKEN/{file}`: the token as a path segment (see `config_base_url`).
        let (path_token, file) = match file.split_once('/') {
            Some((t, rest)) if t.starts_with('~') => (Some(&t[1..]), rest),
            _ => (None, file),
        };
        if file.split('/').any(|c| c.is_empty() || c == "." || c == "..") || file.contains('\0') {
            return Err(ApiError(400, "bad config file path".into()));
        }
        let token_ok = match (&svc.secret, path_token) {
            (Some(secret), Some(t)) => secret.verify(&host, t),
            _ => node_token_ok(svc, req, &host),
        };
        if !token_ok {
            svc.audit.record(
                "config-denied",
                json!({ "host": host, "file": file, "peer": req.peer }),
                false,
            );
            return Err(ApiError(403, "missing or wrong node token".into()));
        }
        let snap = svc.catalog.snapshot();
        let node = snap
            .inventory
            .get(&host)
            .ok_or_else(|| ApiError(404, format!("{host} is not in the inventory")))?;
        let state = svc.store.read(&host)?;
        let (profile, install_id) = match (&state.flag, repeat_window(&snap, &state)) {
            (Some(flag), _) => (flag.profile.clone(), flag.install.as_ref().map(|i| i.id.clone()).unwrap_or_default()),
            (None, Some(ended)) => (ended.profile.clone(), ended.id.clone()),
            (None, None) => {
                return Err(ApiError(404, format!("{host} is not flagged for reimage; config files are served only during an install")))
            }
        };
        let p = snap
            .profiles
            .get(&profile)
            .ok_or_else(|| ApiError(404, format!("profile {profile} no longer exists")))?;
        if !p.config_files.iter().any(|f| f == file) {
            return Err(ApiError(404, format!("profile {profile} has no config/{file}")));
        }
        let server = server_for(svc, req, node);
        let token = svc.secret.as_ref().map(|s| s.node_token(&host));
        let ctx = RenderContext {
            node,
            server: &server,
            token: token.as_deref(),
            install_id: &install_id,
        };
        let text =
            snap.profiles.render(&profile, &format!("config/{file}"), &ctx).map_err(|e| {
                tracing::error!("{e}");
                ApiError(500, format!("the template could not be rendered: {e}"))
            })?;
        svc.audit.record(
            "config",
            json!({ "host": host, "file": file, "profile": profile, "peer": req.peer }),
            false,
        );
        Ok(Reply::text(200, text))
    })();
    result.unwrap_or_else(Reply::from)
}

fn assets(svc: &Service, req: &Req, rel: &str) -> Reply {
    let Some(root) = &svc.config.assets else {
        return Reply::error(404, "this server has no --assets directory");
    };
    match super::assets::open(root, rel, req.range.as_deref()) {
        Ok(body) => {
            let mut r = Reply {
                status: body.status,
                content_type: content_type(rel),
                body: Payload::Stream(body.reader, body.length),
                headers: vec![("Accept-Ranges".into(), "bytes".into())],
            };
            if let Some(cr) = body.content_range {
                r.headers.push(("Content-Range".into(), cr));
            }
            if let Some(m) = body.modified {
                r.headers.push(("Last-Modified".into(), httpdate::fmt_http_date(m)));
            }
            r
        }
        Err(e) if e.status == 416 => Reply::error(416, "the requested range is outside the file")
            .header("Content-Range", e.message),
        Err(e) => Reply::error(e.status, &e.message),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("iso") => "application/x-iso9660-image",
        Some("ipxe" | "cfg" | "txt" | "yaml" | "yml" | "ks" | "seed") => TEXT,
        _ => "application/octet-stream",
    }
}

/// The JSON view of one host.
fn host_view(svc: &Service, host: &str, node: Option<&Node>, state: &HostState) -> Value {
    let mem = svc.last_boot.get(&svc.audit, host);
    let last_boot = match (mem, state.last_boot.clone()) {
        (Some(a), Some(b)) => Some(if a.at >= b.at { a } else { b }),
        (a, b) => a.or(b),
    };
    let boot = last_boot.map(|b| {
        json!({ "time": rfc3339(b.at), "peer": b.peer, "ip": b.ip, "mac": b.mac, "answer": b.answer, "reason": b.reason })
    });
    json!({
        "hostname": host,
        "in_inventory": node.is_some(),
        "ip": node.map(|n| n.cidr()),
        "mac": node.and_then(|n| n.mac.map(|m| m.to_string())),
        "default_profile": node.and_then(|n| n.profile.clone()),
        "flagged": state.flag.is_some(),
        "profile": state.flag.as_ref().map(|f| f.profile.clone()),
        "phase": state.phase,
        "flag": state.flag.as_ref().map(|f| json!({
            "profile": f.profile, "set_by": f.set_by, "set_from": f.set_from, "set_at": rfc3339(f.set_at),
            "install": f.install.as_ref().map(|i| json!({
                "id": i.id, "opened_at": rfc3339(i.opened_at), "answers": i.answers,
                "failures": i.failures, "last_failure_at": i.last_failure_at.map(rfc3339),
            })),
        })),
        "last_install": state.last_install.as_ref().map(|e| json!({
            "id": e.id, "profile": e.profile, "opened_at": rfc3339(e.opened_at), "ended_at": rfc3339(e.ended_at), "how": e.how,
        })),
        "last_boot": boot,
        "version": state.version,
    })
}

fn list_hosts(svc: &Service, req: &Req) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        authorize(svc, req, Role::Read)?;
        let only_flagged =
            matches!(req.query.get("flagged").map(String::as_str), Some("1" | "true" | "yes"));
        let snap = svc.catalog.snapshot();
        let with_state: std::collections::HashSet<String> = svc.store.hosts().into_iter().collect();
        let mut hosts = Vec::new();
        for node in snap.inventory.nodes() {
            let state = if with_state.contains(&node.hostname) {
                svc.store.read(&node.hostname)?
            } else {
                HostState::default()
            };
            if only_flagged && state.flag.is_none() {
                continue;
            }
            hosts.push(host_view(svc, &node.hostname, Some(node), &state));
        }
        Ok(Reply::json(200, json!({ "hosts": hosts })))
    })();
    result.unwrap_or_else(Reply::from)
}

fn show_host(svc: &Service, req: &Req, raw: &str) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        authorize(svc, req, Role::Read)?;
        let host = hostname(raw)?;
        let snap = svc.catalog.snapshot();
        let node = snap.inventory.get(&host);
        let state = svc.store.read(&host)?;
        if node.is_none() && state.version == 0 {
            return Err(ApiError(404, format!("{host} is not in the inventory and has no state")));
        }
        Ok(Reply::json(200, host_view(svc, &host, node, &state)))
    })();
    result.unwrap_or_else(Reply::from)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReimageBody {
    profile: Option<String>,
}

/// `PUT /hosts/{host}/reimage`: sets the flag. Idempotent: a second PUT with the same profile
/// keeps the open install; another profile replaces the flag (and so any open install).
fn set_flag(svc: &Service, req: &Req, raw: &str) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        let caller = authorize(svc, req, Role::Reimage)?;
        let host = hostname(raw)?;
        let body: ReimageBody = if req.body.iter().all(u8::is_ascii_whitespace) {
            ReimageBody { profile: None }
        } else {
            serde_json::from_slice(&req.body).map_err(|e| {
                ApiError(400, format!("the body must be JSON like {{\"profile\": \"NAME\"}}: {e}"))
            })?
        };
        let snap = svc.catalog.snapshot();
        let node = snap.inventory.get(&host).ok_or_else(|| {
            ApiError(
                404,
                format!(
                    "{host} is not in the inventory {}; add it there first",
                    snap.inventory.source()
                ),
            )
        })?;
        let profile = body.profile.or_else(|| node.profile.clone()).ok_or_else(|| {
            ApiError(400, format!(
                "no profile for {host}: send {{\"profile\": \"NAME\"}} or fill the `profile` column of {}",
                snap.inventory.source()
            ))
        })?;
        if snap.profiles.get(&profile).is_none() {
            let known: Vec<&str> = snap.profiles.names().collect();
            return Err(ApiError(
                400,
                format!("unknown profile {profile:?}; known profiles: {}", known.join(", ")),
            ));
        }
        let peer = req.peer.clone();
        let (state, changed) = svc.store.modify::<ApiError>(&host, |st| {
            if st.flag.as_ref().is_some_and(|f| f.profile == profile) {
                return Ok(false);
            }
            st.flag = Some(Flag {
                profile: profile.clone(),
                set_by: caller.name.clone(),
                set_from: peer.clone(),
                set_at: now_ms(),
                install: None,
            });
            st.phase = Phase::Pending;
            Ok(true)
        })?;
        if changed {
            super::metrics::Metrics::inc(&svc.metrics.flags_set);
        }
        svc.audit.record(
            "flag-set",
            json!({ "host": host, "profile": profile, "by": caller.name, "peer": req.peer, "changed": changed }),
            true,
        );
        tracing::info!(host = %host, profile = %profile, by = %caller.name, peer = %req.peer, "reimage flag set");
        Ok(Reply::json(200, host_view(svc, &host, Some(node), &state)))
    })();
    result.unwrap_or_else(Reply::from)
}

/// `DELETE /hosts/{host}/reimage`: cancels the flag; an open install's callback is then ignored.
fn cancel_flag(svc: &Service, req: &Req, raw: &str) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        let caller = authorize(svc, req, Role::Reimage)?;
        let host = hostname(raw)?;
        let (state, was) = svc.store.modify::<ApiError>(&host, |st| {
            let Some(flag) = st.flag.take() else { return Ok(false) };
            if let Some(i) = flag.install {
                st.last_install = Some(EndedInstall {
                    id: i.id,
                    profile: flag.profile,
                    opened_at: i.opened_at,
                    ended_at: now_ms(),
                    how: "cancelled".into(),
                });
            }
            st.phase = Phase::Idle;
            Ok(true)
        })?;
        if was {
            super::metrics::Metrics::inc(&svc.metrics.flags_cleared);
        }
        svc.audit.record(
            "flag-cancelled",
            json!({ "host": host, "by": caller.name, "peer": req.peer, "was_flagged": was }),
            true,
        );
        tracing::info!(host = %host, by = %caller.name, peer = %req.peer, was_flagged = was, "reimage flag cancelled");
        let snap = svc.catalog.snapshot();
        let mut view = host_view(svc, &host, snap.inventory.get(&host), &state);
        view["was_flagged"] = json!(was);
        Ok(Reply::json(200, view))
    })();
    result.unwrap_or_else(Reply::from)
}

/// `POST|GET /hosts/{host}/done` and `/failed`: the installer's callbacks. Only the open install's
/// id counts; anything else is answered 409 and changes nothing.
fn callback(svc: &Service, req: &Req, raw: &str, done: bool) -> Reply {
    let event = if done { "done" } else { "failed" };
    let result = (|| -> Result<Reply, ApiError> {
        let host = hostname(raw)?;
        if !node_token_ok(svc, req, &host) {
            svc.audit.record(
                &format!("{event}-denied"),
                json!({ "host": host, "peer": req.peer }),
                false,
            );
            return Err(ApiError(403, "missing or wrong node token".into()));
        }
        let id = req.query.get("install").filter(|i| !i.is_empty()).cloned().ok_or_else(|| {
            ApiError(
                400,
                "missing install=ID (the done_url of the install chain carries it)".into(),
            )
        })?;
        let outcome = svc.store.update::<_, ApiError>(&host, |st| {
            let open = st.flag.as_ref().and_then(|f| f.install.as_ref()).map(|i| i.id.clone());
            if open.as_deref() != Some(id.as_str()) {
                return Ok((Err(open.is_some()), false));
            }
            if done {
                let flag = st.flag.take().expect("flag with install");
                let i = flag.install.expect("install");
                st.last_install = Some(EndedInstall {
                    id: i.id,
                    profile: flag.profile,
                    opened_at: i.opened_at,
                    ended_at: now_ms(),
                    how: "done".into(),
                });
                st.phase = Phase::Done;
            } else {
                let i = st.flag.as_mut().and_then(|f| f.install.as_mut()).expect("install");
                i.failures += 1;
                i.last_failure_at = Some(now_ms());
                st.phase = Phase::Failed;
            }
            Ok((Ok(()), true))
        })?;
        match outcome {
            Ok(()) => {
                if done {
                    super::metrics::Metrics::inc(&svc.metrics.installs_done);
                    super::metrics::Metrics::inc(&svc.metrics.flags_cleared);
                } else {
                    super::metrics::Metrics::inc(&svc.metrics.installs_failed);
                }
                svc.audit.record(
                    event,
                    json!({ "host": host, "install": id, "peer": req.peer }),
                    true,
                );
                tracing::info!(host = %host, install = %id, "install {event}");
                Ok(Reply::json(
                    200,
                    json!({ "host": host, "install": id, "result": event, "flagged": !done }),
                ))
            }
            Err(other_open) => {
                svc.audit.record(
                    &format!("{event}-ignored"),
                    json!({ "host": host, "install": id, "peer": req.peer }),
                    false,
                );
                let why = if other_open { "another install is open" } else { "no install is open" };
                Err(ApiError(
                    409,
                    format!(
                        "install {id} is not the open install of {host} ({why}); nothing changed"
                    ),
                ))
            }
        }
    })();
    result.unwrap_or_else(Reply::from)
}

fn events(svc: &Service, req: &Req) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        authorize(svc, req, Role::Read)?;
        let parse = |name: &str, default: u64| -> Result<u64, ApiError> {
            match req.query.get(name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| {
                    ApiError(
                        400,
                        format!("{name} must be a whole number (a byte offset from `next`)"),
                    )
                }),
            }
        };
        let since = parse("since", 0)?;
        let limit = parse("limit", 1000)?.clamp(1, 10_000) as usize;
        let (events, next) = svc
            .audit
            .read_since(since, limit)
            .map_err(|e| ApiError(500, format!("cannot read the audit log: {e}")))?;
        Ok(Reply::json(200, json!({ "events": events, "next": next })))
    })();
    result.unwrap_or_else(Reply::from)
}

fn reload(svc: &Service, req: &Req) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        let caller = authorize(svc, req, Role::Admin)?;
        let ok = svc.catalog.reload_if_changed(true);
        if ok {
            super::metrics::Metrics::inc(&svc.metrics.reloads_ok);
        }
        svc.audit.record("reload", json!({ "by": caller.name, "peer": req.peer, "ok": ok }), false);
        let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let snap = svc.catalog.snapshot();
        let code = if ok { 200 } else { 422 };
        Ok(Reply::json(
            code,
            json!({ "reloaded": ok, "generation": snap.generation, "error": status.last_error }),
        ))
    })();
    result.unwrap_or_else(Reply::from)
}
