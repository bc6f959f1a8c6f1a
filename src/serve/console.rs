//! The operator's console: the page at `/ui/` (embedded in the binary: no CDN, no external font
//! or script), its logins (`/session`), and inventory editing (`/inventory`).
//!
//! The page is static HTML, CSS and vanilla JavaScript that calls the same JSON API as `curl`
//! does; a console session cookie authorizes that API like a token ([`super::session`]). Every
//! console answer carries a strict `Content-Security-Policy` (`default-src 'self'`, no inline
//! script or style, `frame-ancestors 'none'`), `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`; the page holds no secret (the CSRF token is fetched into
//! memory, the session id is an `HttpOnly` cookie) and puts none into a URL.
//!
//! Inventory edits go through [`super::editor`] (one row, every other byte kept), are validated
//! whole by [`crate::inventory::Inventory::parse`] (the code behind `bootforge check`) plus the
//! service's own checks of a reload, and only then written atomically ([`crate::atomic`]) and
//! reloaded. An invalid edit writes nothing and answers 422 with every error by line and column.

use super::audit::Event;
use super::auth::{Actor, Caller, Denied, Role, Via};
use super::editor::{self, Edit};
use super::handlers::authorize;
use super::http::Req;
use super::reply::{HttpError, Payload, Reply};
use super::session;
use super::util::now_ms;
use super::Service;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

/// The console's files, embedded at compile time.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
];

/// The policy of the page: its own files only, nothing inline, never framed.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The policy of every other answer: nothing at all may load from it.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the security headers every non-boot answer carries (the page's CSP for `/ui/`).
pub fn harden(mut reply: Reply, page: bool) -> Reply {
    let csp = if page { PAGE_CSP } else { API_CSP };
    reply.headers.push(("Content-Security-Policy", csp.into()));
    reply.headers.push(("X-Content-Type-Options", "nosniff".into()));
    reply.headers.push(("Referrer-Policy", "no-referrer".into()));
    reply.headers.push(("X-Frame-Options", "DENY".into()));
    if !page {
        reply.headers.push(("Cache-Control", "no-store".into()));
    }
    reply
}

/// `GET /ui/{file}`: a file of the page; `/ui` itself redirects to `/ui/`.
pub fn ui_file(file: Option<&str>) -> Result<Reply, HttpError> {
    let Some(file) = file else {
        return Ok(Reply::text("see /ui/\n".into())
            .with_status(308)
            .header("Location", "/ui/".into()));
    };
    let (_, content_type, body) = FILES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| HttpError::not_found("no such file of the console"))?;
    Ok(Reply {
        status: 200,
        content_type,
        body: Payload::Text((*body).to_string()),
        headers: vec![("Cache-Control", "no-cache".into())],
    })
}

/// Whether session cookies get `Secure`: `--console-secure-cookie`, or an `https://`
/// `--public-url` (the service itself speaks HTTP; TLS is then a proxy's).
pub fn secure(svc: &Service) -> bool {
    svc.config.secure_cookies
        || svc.config.public_url.as_ref().is_some_and(|u| u.as_str().starts_with("https://"))
}

/// The origin a browser on this service has: `Origin` must equal it.
pub fn own_origin(svc: &Service, req: &Req) -> Option<String> {
    let host = req.host.as_deref()?.trim();
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| {
        format!("{}://{}", if secure(svc) { "https" } else { "http" }, host.to_ascii_lowercase())
    })
}

/// What `GET /session` and a login answer: who, with which role, and the CSRF token to send
/// back as `X-CSRF-Token`.
#[derive(Serialize)]
struct Who {
    name: String,
    role: Role,
    via: Via,
    csrf: String,
    /// Whether directory logins are configured (the login form shows them).
    ldap: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `/session`: GET (who am I), POST (log in), DELETE (log out).
pub async fn session(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    match req.method {
        hyper::Method::POST => login(svc, req).await,
        hyper::Method::DELETE => logout(svc, req).await,
        _ => whoami(svc, req).await,
    }
}

async fn whoami(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let Some(id) = req.session.as_deref() else {
        // Not logged in: say so, and whether the form should offer directory logins.
        let body = serde_json::json!({ "error": "not logged in", "ldap": svc.directory.is_some() });
        return Ok(Reply::json(&body).with_status(401));
    };
    let p = presented(svc, req, id);
    match svc.sessions.check(&svc.catalog.tokens(), &p.get(), Role::Read, now_ms()) {
        Ok((c, csrf)) => Ok(Reply::json(&Who {
            name: c.name,
            role: c.role,
            via: c.via,
            csrf,
            ldap: svc.directory.is_some(),
        })),
        Err(_) => {
            let body =
                serde_json::json!({ "error": "not logged in", "ldap": svc.directory.is_some() });
            Ok(Reply::json(&body)
                .with_status(401)
                .header("Set-Cookie", session::clear_cookie(secure(svc))))
        }
    }
}

/// What the session checks need of a request.
pub fn presented<'a>(svc: &Service, req: &'a Req, id: &'a str) -> PresentedOwned<'a> {
    PresentedOwned { req, id, own: own_origin(svc, req) }
}

/// [`session::Presented`] with its own origin string held.
pub struct PresentedOwned<'a> {
    req: &'a Req,
    id: &'a str,
    own: Option<String>,
}

impl PresentedOwned<'_> {
    pub fn get(&self) -> session::Presented<'_> {
        let changes = !matches!(self.req.method, hyper::Method::GET | hyper::Method::HEAD);
        session::Presented {
            id: self.id,
            method: if changes { session::Method::Changes } else { session::Method::Safe },
            csrf: self.req.csrf.as_deref(),
            origin: self.req.origin.as_deref(),
            fetch_site: self.req.fetch_site.as_deref(),
            own_origin: self.own.as_deref(),
        }
    }
}

/// `POST /session`: `{"token": T}` or `{"username": U, "password": P}`. Rate-limited per peer
/// address and per account name, each attempt counted before it is checked;
/// every failure audited (with the login name when it has a name's shape, never the secret).
async fn login(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let peer = req.peer;
    let own = own_origin(svc, req);
    let site = session::Presented {
        id: "",
        method: session::Method::Changes,
        csrf: None,
        origin: req.origin.as_deref(),
        fetch_site: req.fetch_site.as_deref(),
        own_origin: own.as_deref(),
    };
    if let Err(denied) = session::cross_site(&site) {
        return Err(refuse(svc, req, denied));
    }
    let body: LoginBody = serde_json::from_slice(&req.body).map_err(|_| {
        HttpError::bad_request(
            "the body must be JSON: {\"token\": \"…\"} or {\"username\": \"…\", \"password\": \"…\"}",
        )
    })?;
    // ---- login throttle (see `session::LoginLimiter`): the attempt is counted as failed
    // now, before the token is compared or the directory asked; a success refunds it below.
    let account = if body.token.is_none() { body.username.as_deref() } else { None };
    let Ok(attempt) = svc.login_limiter.reserve(peer, account, now_ms()) else {
        let via = if body.token.is_some() { Via::TokenSession } else { Via::LdapSession };
        svc.audit.note(&Event::LoginFailed { name: None, via, peer, reason: "rate-limited" });
        return Err(HttpError::new(
            429,
            "too many failed logins from this address or for this account; wait five minutes",
        )
        .header("Retry-After", (session::LIMIT_WINDOW_MS / 1000).to_string()));
    };
    // ---- end of the login throttle
    let now = now_ms();
    let (opened, caller) = match (body.token, body.username, body.password) {
        (Some(token), None, None) => {
            let tokens = svc.catalog.tokens();
            match tokens.known(Some(token.trim())) {
                Ok(hash) => {
                    let caller = tokens.by_hash(&hash).expect("known");
                    (
                        svc.sessions.open_token(hash, now),
                        Caller { via: Via::TokenSession, ..caller },
                    )
                }
                Err(denied) => {
                    return Err(login_failed(svc, peer, None, Via::TokenSession, denied.kind()));
                }
            }
        }
        (None, Some(user), Some(password)) => {
            let Some(dir) = &svc.directory else {
                return Err(HttpError::new(
                    409,
                    "directory logins are not configured: start the service with --ldap-config FILE",
                ));
            };
            let name = session::login_name(user.trim());
            match dir.login(user.trim(), &password).await {
                Ok(role) => {
                    let shown = name.clone().unwrap_or_else(|| "(unnamed)".into());
                    let caller = Caller { name: shown.clone(), role, via: Via::LdapSession };
                    (svc.sessions.open_directory(shown, role, now), caller)
                }
                Err(e) => {
                    if let super::ldap::LoginError::Unavailable(detail) = &e {
                        tracing::error!("directory login: {detail}");
                    }
                    let status = if matches!(e, super::ldap::LoginError::Unavailable(_)) {
                        502
                    } else {
                        401
                    };
                    let mut err = login_failed(svc, peer, name, Via::LdapSession, e.kind());
                    err.status = status;
                    if status == 502 {
                        err.message =
                            "the directory cannot be reached; the server log says why".into();
                    }
                    return Err(err);
                }
            }
        }
        _ => {
            return Err(HttpError::bad_request(
                "send either {\"token\": \"…\"} or {\"username\": \"…\", \"password\": \"…\"}",
            ))
        }
    };
    svc.login_limiter.refund(attempt); // login throttle: only this attempt, nothing else
    let Ok(opened) = opened else {
        // Sessions per identity are capped (its own oldest ends); this is the whole table full
        // of other identities' live sessions, which a login must not end.
        tracing::warn!(%peer, "console login refused: the session table is full");
        return Err(HttpError::new(
            503,
            "too many console sessions are open (each of many people holds some); try again in a minute",
        )
        .header("Retry-After", "60".into()));
    };
    svc.audit.note(&Event::Login {
        name: caller.name.clone(),
        role: caller.role,
        via: caller.via,
        peer,
    });
    tracing::info!(name = %caller.name, role = caller.role.as_str(), %peer, "console login");
    let cookie = session::set_cookie(&opened.id, secure(svc), svc.sessions_life());
    Ok(Reply::json(&Who {
        name: caller.name,
        role: caller.role,
        via: caller.via,
        csrf: opened.csrf,
        ldap: svc.directory.is_some(),
    })
    .header("Set-Cookie", cookie))
}

/// A failed login (already counted by the throttle before it was checked): audited, answered
/// 401 without saying which part was wrong.
fn login_failed(
    svc: &Service,
    peer: std::net::IpAddr,
    name: Option<String>,
    via: Via,
    reason: &'static str,
) -> HttpError {
    svc.audit.note(&Event::LoginFailed { name, via, peer, reason });
    tracing::warn!(%peer, reason, "console login refused");
    HttpError::new(401, "login refused: check the name and password, or the token")
}

fn refuse(svc: &Service, req: &Req, denied: Denied) -> HttpError {
    let (route, peer, status) = (req.route.name(), req.peer, denied.status());
    svc.audit.note(&Event::Denied { route, peer, status, reason: denied.kind() });
    HttpError::new(status, denied.message())
}

/// `DELETE /session`: ends the session (CSRF-checked like every change).
async fn logout(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Read).await?;
    if let Some(id) = req.session.as_deref() {
        svc.sessions.end(id);
    }
    svc.audit.note(&Event::Logout { who: Actor::from(&caller), peer: req.peer });
    Ok(Reply::json(&serde_json::json!({ "logged_out": true }))
        .header("Set-Cookie", session::clear_cookie(secure(svc))))
}

// ---------------------------------------------------------------------------------------------
// Inventory

/// `GET /inventory` (role admin): the columns and every row as written, for the edit form.
pub async fn inventory(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Admin).await?;
    svc.blocking(|svc| {
        let text = read_inventory(svc)?;
        let (columns, rows) =
            editor::rows(&text).map_err(|e| HttpError::new(409, e.to_string()))?;
        let rows: Vec<_> = rows
            .into_iter()
            .map(|r| {
                let fields: BTreeMap<&str, &str> = columns
                    .iter()
                    .map(String::as_str)
                    .zip(r.fields.iter().map(String::as_str))
                    .collect();
                serde_json::json!({ "line": r.line, "fields": fields })
            })
            .collect();
        Ok(Reply::json(&serde_json::json!({
            "columns": columns,
            "known_columns": crate::inventory::KNOWN_COLUMNS,
            "rows": rows,
            "version": version(&text),
        })))
    })
    .await?
}

/// The inventory's current text.
fn read_inventory(svc: &Service) -> Result<String, HttpError> {
    let path = &svc.config.inventory;
    let bytes = std::fs::read(path)
        .map_err(|e| HttpError::internal(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| HttpError::new(409, "the inventory is not UTF-8; fix it by hand"))
}

/// A short fingerprint of the text, so an edit made against an old version is refused (409).
fn version(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// The body of an edit.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RowBody {
    #[serde(default)]
    fields: BTreeMap<String, String>,
    /// The `version` the form was filled from; when it no longer matches, 409.
    version: Option<String>,
}

/// One error of an invalid inventory, for the page.
#[derive(Serialize)]
struct FieldErrorView {
    line: u64,
    column: String,
    message: String,
    /// Whether the error is on the edited row (shown next to its field).
    on_row: bool,
}

/// `POST /inventory/hosts`, `PUT` and `DELETE /inventory/hosts/{host}` (role admin).
pub async fn edit_row(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    host: Option<String>,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let body: RowBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        RowBody { fields: BTreeMap::new(), version: None }
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request("the body must be JSON: {\"fields\": {\"COLUMN\": \"VALUE\", …}, \"version\": \"…\"}")
        })?
    };
    let (edit, action) = match (host, &req.method) {
        (None, _) => (Edit::Add(body.fields), "add"),
        (Some(h), &hyper::Method::DELETE) => (Edit::Remove { host: h }, "remove"),
        (Some(h), _) => (Edit::Change { host: h, fields: body.fields }, "change"),
    };
    let expected = body.version;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        let text = read_inventory(svc)?;
        if expected.as_deref().is_some_and(|v| v != version(&text)) {
            return Err(HttpError::new(
                409,
                "the inventory changed since the form was opened; reload it and edit again",
            ));
        }
        let (new, line) = editor::apply(&text, &edit).map_err(|e| match e {
            editor::EditError::NoSuchHost(_) => HttpError::not_found(e.to_string()),
            _ => HttpError::bad_request(e.to_string()),
        })?;
        let host = match &edit {
            Edit::Remove { host } | Edit::Change { host, .. } => Some(host.to_ascii_lowercase()),
            Edit::Add(f) => f.get("hostname").map(|h| h.trim().to_ascii_lowercase()),
        };
        replace(svc, &Actor::from(&caller), peer, action, host, &new, line)
    })
    .await?
}

/// `POST /inventory/check` (role admin): validates a CSV body; writes nothing.
pub async fn check_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Admin).await?;
    let text = upload_text(req)?;
    svc.blocking(move |svc| {
        let source = upload_source(svc);
        Ok(match checked(svc, &source, &text, None) {
            Ok(n) => Reply::json(&serde_json::json!({ "valid": true, "nodes": n })),
            Err(errors) => Reply::json(&serde_json::json!({ "valid": false, "errors": errors }))
                .with_status(422),
        })
    })
    .await?
}

/// `PUT /inventory` (role admin): replaces the whole CSV with the body, if it is valid.
pub async fn replace_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let text = upload_text(req)?;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        replace(svc, &Actor::from(&caller), peer, "upload", None, &text, None)
    })
    .await?
}

fn upload_text(req: &Req) -> Result<String, HttpError> {
    String::from_utf8(req.body.to_vec())
        .map_err(|_| HttpError::bad_request("the CSV must be UTF-8"))
}

/// Uploads are named like the file they would replace, so errors read as `bootforge check`'s.
fn upload_source(svc: &Service) -> String {
    svc.config.inventory.file_name().map_or("upload".into(), |n| n.to_string_lossy().into_owned())
}

/// Validates `text` as the inventory: the CSV itself, then what a reload checks (profiles,
/// `server` columns). Errors by line and column; `row` marks those of the edited row.
fn checked(
    svc: &Service,
    source: &str,
    text: &str,
    row: Option<u64>,
) -> Result<usize, Vec<FieldErrorView>> {
    let view = |line: u64, column: String, message: String| FieldErrorView {
        on_row: row == Some(line),
        line,
        column,
        message,
    };
    let inv = editor::validate(source, text).map_err(|errors| {
        errors.into_iter().map(|e| view(e.line, e.column, e.message)).collect::<Vec<_>>()
    })?;
    svc.catalog.check(&inv).map_err(|e| vec![view(0, "-".into(), e)])?;
    Ok(inv.len())
}

/// Validates `new` and, only if it is valid, writes it over the inventory (temp file, fsync,
/// rename, keeping the file's mode), audits the change and reloads.
fn replace(
    svc: &Service,
    who: &Actor,
    peer: std::net::IpAddr,
    action: &'static str,
    host: Option<String>,
    new: &str,
    row: Option<u64>,
) -> Result<Reply, HttpError> {
    let source = upload_source(svc);
    let nodes = match checked(svc, &source, new, row) {
        Ok(n) => n,
        Err(errors) => {
            return Ok(Reply::json(&serde_json::json!({
                "error": "the inventory would not be valid; nothing was written",
                "errors": errors,
            }))
            .with_status(422))
        }
    };
    let record =
        Event::InventoryChanged { who: who.clone(), peer, action, host: host.clone(), nodes };
    svc.audit.append_durable(&record).map_err(|e| {
        tracing::error!(error = %e, "cannot append to the audit log; the inventory edit is refused");
        HttpError::new(500, "the audit log cannot be written, so nothing was changed")
    })?;
    let path = &svc.config.inventory;
    let mode = std::fs::metadata(path).map(|m| m.permissions()).ok();
    crate::atomic::write_with(path, |f| {
        if let Some(mode) = mode {
            f.set_permissions(mode)?;
        }
        f.write_all(new.as_bytes())
    })
    .map_err(|e| HttpError::internal(format!("cannot write {}: {e}", path.display())))?;
    let reloaded = svc.catalog.reload_if_changed(true);
    if reloaded {
        super::metrics::Metrics::inc(&svc.metrics.reloads_ok);
        svc.sweep_orphans();
    }
    tracing::info!(by = %who.by, action, host = host.as_deref().unwrap_or("-"), nodes, "inventory changed from the console");
    let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let text = read_inventory(svc)?;
    Ok(Reply::json(&serde_json::json!({
        "written": true,
        "nodes": nodes,
        "reloaded": reloaded,
        "reload_error": status.last_error,
        "generation": svc.catalog.snapshot().generation,
        "version": version(&text),
    })))
}
