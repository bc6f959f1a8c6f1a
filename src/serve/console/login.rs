//! Console logins at `/session`: with an API token or a directory account, rate-limited per
//! address and per account, every failure audited without the secret; who-am-I and logout; and
//! the periodic re-check of directory sessions.

use crate::serve::app::guard::{authorize, own_origin, presented, secure};
use crate::serve::app::service::Service;
use crate::serve::auth::session;
use crate::serve::auth::tokens::Denied;
use crate::serve::domain::actor::{Actor, Caller, Role, Via};
use crate::serve::domain::event::Event;
use crate::serve::util::now_ms;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

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
    let tokens = svc.catalog.tokens();
    match svc.sessions.check(&tokens, &p.get(), Role::Read, svc.store.now_ms()).await {
        Ok((c, csrf)) => Ok(Reply::json(&Who {
            name: c.name,
            role: c.role,
            via: c.via,
            csrf,
            ldap: svc.directory.is_some(),
        })),
        Err(denied @ Denied::SessionsUnavailable) => Err(HttpError::from(&denied)),
        Err(_) => {
            let body =
                serde_json::json!({ "error": "not logged in", "ldap": svc.directory.is_some() });
            Ok(Reply::json(&body)
                .with_status(401)
                .header("Set-Cookie", session::clear_cookie(secure(svc, req))))
        }
    }
}

/// every failure audited (with the login name when it has a name's shape, never the secret).
/// `POST /session`: `{"token": T}` or `{"username": U, "password": P}`. Rate-limited per peer
/// address and per account name, each attempt counted before it is checked;
pub(crate) async fn login(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    // A replica whose database does not answer opens no session (503, `Retry-After`): the load
    // balancer's health check sends the browser to another one.
    svc.store.available()?;
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
    // Sessions expire by the database's clock, which every replica shares.
    let now = svc.store.now_ms();
    let (opened, caller) = match (body.token, body.username, body.password) {
        (Some(token), None, None) => {
            let tokens = svc.catalog.tokens();
            match tokens.known(Some(token.trim())) {
                Ok(hash) => {
                    let caller = tokens.by_hash(&hash).expect("known");
                    (
                        svc.sessions.open_token(hash, now).await,
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
                    let opened = svc
                        .sessions
                        .open_directory(account.name, role, account.dn, stale, now)
                        .await;
                    (opened, caller)
                }
                Err(e) => {
                    match &e {
                        crate::serve::auth::ldap::LoginError::Unavailable(detail) => {
                            tracing::error!("directory login: {detail}")
                        }
                        crate::serve::auth::ldap::LoginError::Unidentified(detail) => {
                            tracing::warn!("directory login: {detail}")
                        }
                        _ => {}
                    }
                    let status =
                        if matches!(e, crate::serve::auth::ldap::LoginError::Unavailable(_)) {
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
                    if matches!(e, crate::serve::auth::ldap::LoginError::ForeignDomain) {
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
    let opened = match opened {
        Ok(opened) => opened,
        // Sessions per identity are capped (its own oldest ends); this is the whole table full
        // of other identities' live sessions, which a login must not end.
        Err(session::NotOpened::Full) => {
            tracing::warn!(%peer, "console login refused: the session table is full");
            return Err(HttpError::new(
                503,
                "too many console sessions are open (each of many people holds some); try again in a minute",
            )
            .header("Retry-After", "60".into()));
        }
        Err(session::NotOpened::Unavailable(detail)) => {
            tracing::error!(%peer, "console login refused: cannot store the session: {detail}");
            return Err(HttpError::new(
                503,
                "the console cannot open a session now: the database does not answer; try again in a few seconds",
            )
            .header("Retry-After", "5".into()));
        }
    };
    svc.audit.note(&Event::Login {
        name: caller.name.clone(),
        role: caller.role,
        via: caller.via,
        peer,
    });
    tracing::info!(name = ?caller.name, role = caller.role.as_str(), %peer, "console login");
    let cookie = session::set_cookie(&opened.id, secure(svc, req), svc.sessions_life());
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
fn directory_stale_ms(dir: &crate::serve::auth::ldap::Directory) -> u64 {
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
        let due = match svc.sessions.due_for_recheck(every, svc.store.now_ms()).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("session re-check: cannot list the sessions due: {e}");
                continue;
            }
        };
        for dn in due {
            let role = match dir.recheck(&dn).await {
                Ok(account) => account.map(|a| a.role),
                Err(e) => {
                    let detail = match &e {
                        crate::serve::auth::ldap::LoginError::Unavailable(d)
                        | crate::serve::auth::ldap::LoginError::Unidentified(d) => d.as_str(),
                        other => other.kind(),
                    };
                    tracing::warn!("session re-check: {detail}; the sessions are kept for now");
                    continue;
                }
            };
            let done = match svc.sessions.confirm(&dn, role, svc.store.now_ms()).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!("session re-check: cannot apply the directory's answer: {e}");
                    continue;
                }
            };
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
    let (route, peer, status) =
        (req.route.name(), req.peer, crate::serve::app::error::denied_status(&denied));
    svc.audit.note(&Event::Denied { route, peer, status, reason: denied.kind() });
    HttpError::from(&denied)
}

/// `DELETE /session`: ends the session (CSRF-checked like every change).
pub(crate) async fn logout(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Read).await?;
    if let Some(id) = req.session.as_deref() {
        svc.sessions.end(id).await.map_err(|e| {
            tracing::error!("console logout: cannot end the session: {e}");
            HttpError::new(503, "the session cannot be ended now: the database does not answer; try again in a few seconds")
                .header("Retry-After", "5".into())
        })?;
    }
    svc.audit.note(&Event::Logout { who: Actor::from(&caller), peer: req.peer });
    Ok(Reply::json(&serde_json::json!({ "logged_out": true }))
        .header("Set-Cookie", session::clear_cookie(secure(svc, req))))
}

/// Removes ended sessions from the database every [`session::EXPIRE_EVERY`], for as long as the
/// service runs. Every replica does it; the deletes are idempotent. (A request finds an ended
/// session refused whether or not this has run: it only keeps the table small.)
pub async fn expire_sessions(svc: Arc<Service>) {
    loop {
        tokio::time::sleep(session::EXPIRE_EVERY).await;
        match svc.sessions.expire(svc.store.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(ended = n, "expired console sessions removed"),
            Err(e) => tracing::warn!("cannot remove expired console sessions: {e}"),
        }
    }
}
