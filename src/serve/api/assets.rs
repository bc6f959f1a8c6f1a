//! `GET /assets/{path}`: files of `--assets` for installers.
//!
//! A fetch by an inventory host is recorded (an `asset` record, once its body is sent or cut)
//! when it can be attributed: by `?node=HOST&token=TOKEN` in the URL (what the profiles'
//! `node_asset_url(path)` writes) when the token is that host's, else by the peer address
//! being a row's static `ip`. Other fetches are served the same and not recorded. A wrong
//! token is not refused (assets are not secret), only not believed.
//!
//! Only hosts whose state may decide their boot (a flag or an install of theirs is stored: an
//! in-memory check, [`crate::serve::store::Store::may_decide`]) are recorded at all, so that a
//! client at a host's address with nothing to install cannot write audit rows. And only a
//! token-proven fetch counts as an install's progress (`fetch_progress`): anyone can send from
//! an address, so an address-attributed fetch is shown in the timeline but never keeps an
//! install from being stalled.

use crate::serve::app::guard::node_token_ok;
use crate::serve::app::service::Service;
use crate::serve::domain::event::{recorded_file, Event, Fetch};
use crate::serve::web::reply::{HttpError, Payload, Reply, Sent, TEXT};
use crate::serve::web::request::Req;
use std::net::IpAddr;
use std::sync::Arc;

/// The inventory host a fetch is attributed to, and how (`token`, `address`).
fn attribute(svc: &Service, req: &Req) -> Option<(String, &'static str)> {
    let snap = svc.catalog.snapshot();
    // A `node` that is no host name, or whose token is wrong, is passed over, not refused.
    let named = req.param("node").filter(|_| svc.secret.is_some());
    if let Some(host) = named.and_then(|n| crate::serve::app::guard::api_host(n).ok()) {
        if snap.inventory.get(&host).is_some() && node_token_ok(svc, &host, req.param("token")) {
            return Some((host, "token"));
        }
    }
    let peer = match req.peer {
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped()?),
        v4 => v4,
    };
    // One pass over the rows: asset fetches are file reads, far dearer than this.
    let node = snap.inventory.nodes().iter().find(|n| IpAddr::V4(n.ip) == peer)?;
    Some((node.hostname.clone(), "address"))
}

pub(crate) fn asset(
    svc: &Arc<Service>,
    req: &Req,
    rel: Option<String>,
) -> Result<Reply, HttpError> {
    let arrived = std::time::Instant::now();
    let reply = serve(svc, req, rel.clone())?;
    let Some((host, attributed)) = attribute(svc, req) else { return Ok(reply) };
    if !svc.store.may_decide(&host) {
        return Ok(reply);
    }
    let (status, peer, file) = (reply.status, req.peer, recorded_file(&rel.unwrap_or_default()));
    // Weak: a body a client keeps half-read must not keep the service (and its database) alive.
    let audit = Arc::downgrade(svc);
    let on_sent = move |sent: Sent| {
        let fetch = Fetch {
            status,
            bytes: sent.bytes,
            complete: sent.complete,
            fetch_ms: arrived.elapsed().as_millis() as u64,
            attributed,
        };
        if let Some(svc) = audit.upgrade() {
            svc.audit.note(&Event::Asset { host, file, peer, fetch });
        }
    };
    Ok(reply.watched(Box::new(on_sent)))
}

fn serve(svc: &Service, req: &Req, rel: Option<String>) -> Result<Reply, HttpError> {
    let Some(root) = &svc.config.assets else {
        return Err(HttpError::not_found("this server has no --assets directory"));
    };
    let rel = rel.ok_or_else(|| HttpError::bad_request("bad asset path"))?;
    match crate::serve::web::files::open(root, &rel, req.range.as_deref()) {
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

pub(crate) fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("iso") => "application/x-iso9660-image",
        Some("ipxe" | "cfg" | "txt" | "yaml" | "yml" | "ks" | "seed") => TEXT,
        _ => "application/octet-stream",
    }
}
