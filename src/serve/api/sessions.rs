//! `DELETE /sessions?name=NAME`: an admin ends every directory session of an account.

use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

/// `DELETE /sessions?name=NAME` (role admin, CSRF-checked like every change): ends every
/// directory session of that account name (case-insensitive), audited with who asked.
pub async fn end_sessions(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let Some(name) = req.param("name").and_then(crate::serve::auth::ldap::recordable_name) else {
        return Err(HttpError::bad_request(
            "name a directory account: DELETE /sessions?name=NAME (1 to 64 characters, no control characters)",
        ));
    };
    let ended = svc.sessions.end_name(&name).await.map_err(|e| {
        tracing::error!("cannot end directory sessions: {e}");
        HttpError::new(503, "the sessions cannot be ended now: the database does not answer; try again in a few seconds")
            .header("Retry-After", "5".into())
    })?;
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
