//! `GET /hosts/{host}/hardware` and `POST /hosts/{host}/power`: a host's live hardware state
//! as the background refresher last read it ([`crate::serve::app::hardware`]), and power
//! actions through its BMC.
//!
//! The read answers from the cache; only `?refresh=1` reads the BMC first, waiting at most
//! `--bmc-state-timeout`, through the refresher's lanes (so role `read` cannot read more BMCs
//! at once than the refresher does), and says with `refreshed` whether what it shows was read
//! during the request (or the last 5 s). A power action is one `#ComputerSystem.Reset` with the reset type the
//! action names (and the BMC allows), run like attach (the host claimed, so it never
//! interleaves with an attach or detach of the same machine), audited as `bmc-power` whatever
//! the outcome, and followed by a fresh read of the host's state in the background.

use crate::redfish::{PowerAction, RedfishError};
use crate::serve::api::bmc::{bmc_failure, target};
use crate::serve::app::bmc::{scrub, Use};
use crate::serve::app::guard::{api_host, authorize};
use crate::serve::app::hardware::ReadError;
use crate::serve::app::refresher as hardware;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

/// The body of `POST /hosts/{host}/power`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    action: String,
}

/// The inventory row of `host`, which must have a `bmc`.
fn node_with_bmc(svc: &Service, host: &str) -> Result<crate::inventory::Node, HttpError> {
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(host).cloned().ok_or_else(|| {
        HttpError::not_found(format!("{host} is not in the inventory {}", snap.inventory.source()))
    })?;
    if node.bmc.is_none() {
        return Err(HttpError::new(
            409,
            format!("{host} has no BMC: fill the `bmc` column of {}", snap.inventory.source()),
        ));
    }
    Ok(node)
}

/// `GET /hosts/{host}/hardware[?refresh=1]` (role read).
pub async fn show(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let host = api_host(&raw)?;
    let refresh = match req.param("refresh") {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(_) => return Err(HttpError::bad_request("refresh must be 1 or 0")),
    };
    node_with_bmc(svc, &host)?;
    let refreshed = match refresh {
        true => Some(hardware::refresh_host(svc, &host, true).await),
        false => None,
    };
    // The row again: it may have changed while the BMC was read.
    let node = node_with_bmc(svc, &host)?;
    let mut body = serde_json::json!({
        "host": host,
        "hardware": svc.hardware.view(&node, svc.store.now_ms()),
    });
    if let Some(refreshed) = refreshed {
        body["refreshed"] = refreshed.into();
    }
    Ok(Reply::json(&body))
}

/// `POST /hosts/{host}/power` (role reimage), body `{"action": "on|off|force-off|restart|force-restart"}`.
pub async fn power(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let who = Actor::from(&authorize(svc, req, Role::Reimage).await?);
    let host = api_host(&raw)?;
    let body: PowerBody = serde_json::from_slice(&req.body).map_err(|_| {
        HttpError::bad_request(
            "the body must be JSON {\"action\": ...} with action on, off, force-off, restart or force-restart",
        )
    })?;
    let action: PowerAction = body.action.parse().map_err(HttpError::bad_request)?;
    let (target, _) = target(svc, &host)?;
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let claim = bmc.claim(&host)?;
    let bmc_url = target.url.clone();
    let (service, audited_host, peer) = (svc.clone(), host.clone(), req.peer);
    let result = bmc
        .run(Use::Write, &bmc_url, claim, move |client, progress| {
            let result = client.power_within(&target, action, progress);
            service.hardware.changed(&audited_host);
            // Audited on the BMC thread, not by the handler: a client that hangs up drops the
            // handler's future, but the reset has been sent all the same.
            service.audit.note(&Event::BmcPower {
                host: audited_host,
                who,
                peer,
                action: action.as_str(),
                ok: result.is_ok(),
                reset_type: result.as_ref().ok().copied(),
                error: result.as_ref().err().map(|e| ReadError::of(e).as_str()),
            });
            result
        })
        .await?;
    // The new state is read in the background: the answer does not wait for it.
    {
        let (svc, host) = (svc.clone(), host.clone());
        tokio::spawn(async move { hardware::refresh_host(&svc, &host, false).await });
    }
    let reset_type = match result {
        Ok(t) => t,
        Err(e @ RedfishError::Unsupported { .. }) => {
            let text = scrub(&e.to_string());
            tracing::warn!(host, "power {}: {text}", action.as_str());
            return Err(HttpError::new(409, format!("{host}: {text}")));
        }
        Err(e) => return Err(bmc_failure(&host, &e)),
    };
    Ok(Reply::json(&serde_json::json!({
        "host": host,
        "action": action.as_str(),
        "reset_type": reset_type,
    })))
}
