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
//! whole by [`crate::inventory::Inventory::check`] (the code behind `bootforge check`) plus the
//! service's own checks of a reload, and only then written atomically ([`crate::atomic`]) and
//! reloaded. An invalid edit writes nothing and answers 422 with its errors by line and column
//! (the first [`crate::inventory::MAX_REPORTED_ERRORS`], with their total). Every change names
//! the inventory `version` it was made against (428 without one, 409 when the file has changed
//! since), so no change silently undoes another.

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
                // The session and the audit carry the directory's name of the account that
                // bound, never the typed text (see `ldap`).
                Ok(account) => {
                    let role = account.role;
                    let caller = Caller { name: account.name.clone(), role, via: Via::LdapSession };
                    let stale = directory_stale_ms(dir);
                    let opened =
                        svc.sessions.open_directory(account.name, role, account.dn, stale, now);
                    (opened, caller)
                }
                Err(e) => {
                    match &e {
                        super::ldap::LoginError::Unavailable(detail) => {
                            tracing::error!("directory login: {detail}")
                        }
                        super::ldap::LoginError::Unidentified(detail) => {
                            tracing::warn!("directory login: {detail}")
                        }
                        _ => {}
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
                    if matches!(e, super::ldap::LoginError::ForeignDomain) {
                        // Nothing was sent to the directory: saying why reveals no password.
                        err.message = format!(
                            "login refused: that domain is not this service's; log in as {}",
                            dir.login_forms()
                        );
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
    tracing::info!(name = ?caller.name, role = caller.role.as_str(), %peer, "console login");
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

/// How long a directory session's role stays good without a re-check confirming it: three
/// re-check intervals with a lookup account (two rounds may fail, e.g. during a directory
/// outage, before anyone is logged out), one without (no re-check runs: logging in again is it).
fn directory_stale_ms(dir: &super::ldap::Directory) -> u64 {
    if dir.can_recheck() {
        dir.recheck_ms().saturating_mul(3)
    } else {
        dir.recheck_ms()
    }
}

/// Re-checks directory sessions off the request path, for as long as the service runs: every
/// few seconds, the accounts whose role was last confirmed a re-check interval ago are looked up
/// as the lookup account, one at a time, each bounded by the directory's timeout. An account
/// gone, disabled or out of the mapped groups loses its sessions (audited `sessions-ended`,
/// reason `recheck`); a smaller role lowers them; a directory that cannot answer changes
/// nothing (the sessions go stale after [`directory_stale_ms`]).
pub async fn recheck_sessions(svc: Arc<Service>) {
    let Some(dir) = svc.directory.as_ref() else { return };
    if !dir.can_recheck() {
        return;
    }
    let every = dir.recheck_ms();
    let tick = std::time::Duration::from_millis((every / 4).clamp(500, 30_000));
    loop {
        tokio::time::sleep(tick).await;
        for dn in svc.sessions.due_for_recheck(every, now_ms()) {
            let role = match dir.recheck(&dn).await {
                Ok(account) => account.map(|a| a.role),
                Err(e) => {
                    let detail = match &e {
                        super::ldap::LoginError::Unavailable(d)
                        | super::ldap::LoginError::Unidentified(d) => d.as_str(),
                        other => other.kind(),
                    };
                    tracing::warn!("session re-check: {detail}; the sessions are kept for now");
                    continue;
                }
            };
            let done = svc.sessions.confirm(&dn, role, now_ms());
            for name in &done.names {
                if done.ended > 0 {
                    svc.audit.note(&Event::SessionsEnded {
                        name: name.clone(),
                        ended: done.ended,
                        reason: "recheck",
                        who: None,
                        peer: None,
                    });
                    tracing::info!(name = ?name, ended = done.ended, "directory sessions ended: the account no longer grants a role");
                } else if done.lowered > 0 {
                    tracing::info!(name = ?name, lowered = done.lowered, role = ?role, "directory sessions' role lowered by a re-check");
                }
            }
        }
    }
}

/// `DELETE /sessions?name=NAME` (role admin, CSRF-checked like every change): ends every
/// directory session of that account name (case-insensitive), audited with who asked.
pub async fn end_sessions(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let Some(name) = req.param("name").and_then(super::ldap::recordable_name) else {
        return Err(HttpError::bad_request(
            "name a directory account: DELETE /sessions?name=NAME (1 to 64 characters, no control characters)",
        ));
    };
    let ended = svc.sessions.end_name(&name);
    svc.audit.note(&Event::SessionsEnded {
        name: name.clone(),
        ended,
        reason: "admin",
        who: Some(Actor::from(&caller)),
        peer: Some(req.peer),
    });
    tracing::info!(name = ?name, ended, by = ?caller.name, "directory sessions ended by an admin");
    Ok(Reply::json(&serde_json::json!({ "name": name, "ended": ended })))
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

/// Every change of the inventory is conditional: it names the `version` (from `GET /inventory`
/// or `POST /inventory/check`) the operator saw. Without one the change could silently undo
/// another made meanwhile, so it is refused (428); a version that is no longer the file's is a
/// conflict (409). Called with the edit lock held.
fn require_version(expected: Option<&str>, text: &str) -> Result<(), HttpError> {
    match expected {
        None => Err(HttpError::new(
            428,
            "this change must name the inventory version it was made against: send the `version` from GET /inventory (or POST /inventory/check)",
        )),
        Some(v) if v != version(text) => Err(HttpError::new(
            409,
            "the inventory changed since it was loaded; reload it and make the change again",
        )),
        Some(_) => Ok(()),
    }
}

/// The version a request names: its `version` query parameter, or for a row edit the body's
/// `version` field (both given must agree).
fn requested_version(req: &Req, body: Option<String>) -> Result<Option<String>, HttpError> {
    match (req.param("version").map(str::to_string), body) {
        (Some(q), Some(b)) if q != b => Err(HttpError::bad_request(
            "the `version` query parameter and the body's `version` differ; send one",
        )),
        (q, b) => Ok(q.or(b)),
    }
}

/// The body of a row edit. `fields` keeps every key as sent (see [`editor::Fields`]), so a
/// repeated column is refused rather than silently taken once.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RowBody {
    #[serde(default)]
    fields: editor::Fields,
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

/// The errors of an invalid inventory as answered: the first
/// [`crate::inventory::MAX_REPORTED_ERRORS`] in file order, their total, and a note when some
/// were left out.
#[derive(Serialize)]
struct ErrorsView {
    errors: Vec<FieldErrorView>,
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl ErrorsView {
    fn new(report: crate::inventory::ErrorReport, row: Option<u64>) -> ErrorsView {
        let note = report.truncated().then(|| {
            format!(
                "only the first {} of {} errors are listed; fix them and check again",
                report.errors.len(),
                report.total
            )
        });
        let errors = report
            .errors
            .into_iter()
            .map(|e| FieldErrorView {
                on_row: row == Some(e.line),
                line: e.line,
                column: e.column,
                message: e.message,
            })
            .collect();
        ErrorsView { errors, total: report.total, note }
    }

    /// The view as a JSON object, for the answer to add its own fields to.
    fn into_json(self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

/// `POST /inventory/hosts`, `PUT` and `DELETE /inventory/hosts/{host}` (role admin).
pub async fn edit_row(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    host: Option<String>,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let body: RowBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        RowBody { fields: editor::Fields::default(), version: None }
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request("the body must be JSON: {\"fields\": {\"COLUMN\": \"VALUE\", …}, \"version\": \"…\"}")
        })?
    };
    let expected = requested_version(req, body.version)?;
    let (edit, action) = match (host, &req.method) {
        (None, _) => (Edit::Add(body.fields), "add"),
        (Some(h), &hyper::Method::DELETE) => (Edit::Remove { host: h }, "remove"),
        (Some(h), _) => (Edit::Change { host: h, fields: body.fields }, "change"),
    };
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        let text = read_inventory(svc)?;
        require_version(expected.as_deref(), &text)?;
        let applied = editor::apply(&text, &edit).map_err(|e| match e {
            editor::EditError::NoSuchHost(_) => HttpError::not_found(e.to_string()),
            editor::EditError::WouldTouchOthers(_) => HttpError::new(409, e.to_string()),
            _ => HttpError::bad_request(e.to_string()),
        })?;
        let change = Change {
            action,
            removed: (action == "remove").then_some(applied.host),
            renamed_from: applied.renamed_from,
        };
        replace(svc, &Actor::from(&caller), peer, change, &applied.text, applied.line)
    })
    .await?
}

/// `POST /inventory/check` (role admin): validates a CSV body; writes nothing. Answers the
/// current file's `version` too: the one a `PUT /inventory` of this body must name.
pub async fn check_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Admin).await?;
    let text = upload_text(req)?;
    svc.blocking(move |svc| {
        let source = upload_source(svc);
        let current = read_inventory(svc).map(|t| version(&t)).ok();
        Ok(match checked(svc, &source, &text) {
            Ok(inv) => Reply::json(
                &serde_json::json!({ "valid": true, "nodes": inv.len(), "version": current }),
            ),
            Err(report) => {
                let mut body = ErrorsView::new(report, None).into_json();
                body["valid"] = false.into();
                body["version"] = current.into();
                Reply::json(&body).with_status(422)
            }
        })
    })
    .await?
}

/// `PUT /inventory?version=V` (role admin): replaces the whole CSV with the body, if it is
/// valid and the file is still at version `V`.
pub async fn replace_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let expected = requested_version(req, None)?;
    let text = upload_text(req)?;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        require_version(expected.as_deref(), &read_inventory(svc)?)?;
        let change = Change { action: "upload", removed: None, renamed_from: None };
        replace(svc, &Actor::from(&caller), peer, change, &text, None)
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
/// `server` columns). At most [`crate::inventory::MAX_REPORTED_ERRORS`] errors are kept.
fn checked(
    svc: &Service,
    source: &str,
    text: &str,
) -> Result<crate::inventory::Inventory, crate::inventory::ErrorReport> {
    let inv = editor::validate(source, text)?;
    svc.catalog.check(&inv).map_err(|e| {
        let error = crate::inventory::FieldError {
            source: source.to_string(),
            line: 0,
            column: "-".into(),
            message: e,
        };
        crate::inventory::ErrorReport::of(vec![error], crate::inventory::MAX_REPORTED_ERRORS)
    })?;
    Ok(inv)
}

/// What a write changes, for its audit record.
struct Change {
    /// `add`, `change`, `remove` or `upload`.
    action: &'static str,
    /// For a removal, the host name of the row removed, as the file had it.
    removed: Option<String>,
    /// For a change that renamed its row, the name the row had, as the file had it.
    renamed_from: Option<String>,
}

/// Validates `new` and, only if it is valid, writes it over the inventory (temp file, fsync,
/// rename, keeping the file's mode), audits the change and reloads.
///
/// The audit record names what was written, never what was asked: the host of an added or
/// changed row is the validated row's own name (found by its line in the new text), that of a
/// removed row the name its row had; both are bounded (a host name is at most 253 characters,
/// and a removed row's odd name is quoted and cut, see [`crate::inventory::quoted`]).
fn replace(
    svc: &Service,
    who: &Actor,
    peer: std::net::IpAddr,
    change: Change,
    new: &str,
    row: Option<u64>,
) -> Result<Reply, HttpError> {
    let action = change.action;
    let source = upload_source(svc);
    let inv = match checked(svc, &source, new) {
        Ok(inv) => inv,
        Err(report) => {
            let mut body = ErrorsView::new(report, row).into_json();
            body["error"] = "the inventory would not be valid; nothing was written".into();
            return Ok(Reply::json(&body).with_status(422));
        }
    };
    let nodes = inv.len();
    let host = match (row, change.removed) {
        (Some(line), _) => {
            let node = inv.nodes().iter().find(|n| n.line == line).ok_or_else(|| {
                HttpError::internal("the edited row is not in the validated inventory")
            })?;
            Some(node.hostname.clone())
        }
        (None, Some(removed)) => Some(match crate::inventory::parse_hostname(&removed) {
            Ok(name) => name,
            Err(_) => crate::inventory::quoted(&removed),
        }),
        (None, None) => None,
    };
    // A renamed row's old name, as a removed row's: validated, or quoted and cut.
    let old_host = change.renamed_from.map(|old| {
        crate::inventory::parse_hostname(&old).unwrap_or_else(|_| crate::inventory::quoted(&old))
    });
    let record = Event::InventoryChanged {
        who: who.clone(),
        peer,
        action,
        host: host.clone(),
        old_host,
        nodes,
    };
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
