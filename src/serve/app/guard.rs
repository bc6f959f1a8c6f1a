//! What every handler checks before acting: the caller's token or session and role, the host
//! name's shape, a node's token.

use crate::inventory::parse_hostname;
use crate::serve::app::service::Service;
use crate::serve::auth::session;
use crate::serve::domain::actor::{Caller, Role};
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::Rules;
use crate::serve::inputs::catalog::Snapshot;
use crate::serve::inputs::profiles::ClearOn;
use crate::serve::web::reply::HttpError;
use crate::serve::web::request::Req;
use std::sync::Arc;

/// Checks the API token against the current tokens file, or, for a request with a console
/// session cookie and no `Authorization`, the session (alive, same site, CSRF token on a
/// change; see [`crate::serve::auth::session`]). A refusal is audited by route and reason (never
/// the token, the cookie or the path).
pub(crate) async fn authorize(
    svc: &Arc<Service>,
    req: &Req,
    need: Role,
) -> Result<Caller, HttpError> {
    let tokens = svc.catalog.tokens();
    let checked = match (&req.authorization, &req.session) {
        (None, Some(id)) => {
            let p = crate::serve::app::guard::presented(svc, req, id);
            svc.sessions.check(&tokens, &p.get(), need, svc.store.now_ms()).await.map(|(c, _)| c)
        }
        _ => tokens.check(req.authorization.as_deref(), need),
    };
    let denied = match checked {
        Ok(caller) => return Ok(caller),
        Err(denied) => denied,
    };
    let (route, peer, status) =
        (req.route.name(), req.peer, crate::serve::app::error::denied_status(&denied));
    let record = Event::Denied { route, peer, status, reason: denied.kind() };
    svc.audit.note(&record);
    tracing::warn!(%peer, route, status, "API request refused: {}", denied.kind());
    Err(HttpError::from(&denied))
}

pub(crate) fn api_host(raw: &str) -> Result<String, HttpError> {
    parse_hostname(raw).map_err(|_| {
        HttpError::bad_request("the host name is not valid: letters, digits, `-` and dots")
    })
}

/// What the lifecycle needs of each profile.
pub(crate) fn rules(snap: &Snapshot) -> impl Fn(&str) -> Option<Rules> + '_ {
    |name| {
        snap.profiles.get(name).map(|p| Rules {
            clear_on_first_answer: p.settings.clear == ClearOn::FirstAnswer,
            repeat_window_ms: p.settings.repeat_window_secs.saturating_mul(1000),
        })
    }
}

/// Whether the request carries `host`'s node token (always true without a secret).
pub(crate) fn node_token_ok(svc: &Service, host: &str, presented: Option<&str>) -> bool {
    match &svc.secret {
        None => true,
        Some(secret) => presented.is_some_and(|t| secret.verify(host, t)),
    }
}

/// Whether the browser reaches the service over TLS, so cookies are `Secure` and the origin is
/// `https://`: the request came over the service's own TLS listener (known from the transport,
/// [`Req::tls`]), or a TLS proxy is in front (`--public-url https://…`,
/// `--console-secure-cookie`).
pub fn secure(svc: &Service, req: &Req) -> bool {
    req.tls
        || svc.config.secure_cookies
        || svc.config.public_url.as_ref().is_some_and(|u| u.as_str().starts_with("https://"))
}

/// The origin a browser on this service has: `Origin` must equal it.
pub fn own_origin(svc: &Service, req: &Req) -> Option<String> {
    let host = req.host.as_deref()?.trim();
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| {
        format!(
            "{}://{}",
            if secure(svc, req) { "https" } else { "http" },
            host.to_ascii_lowercase()
        )
    })
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
