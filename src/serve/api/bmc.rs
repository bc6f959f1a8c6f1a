//! `PUT`, `DELETE` and `GET /hosts/{host}/media`: the node's BMC mounts (or ejects) the node's
//! boot ISO by signed URL, through Redfish.
//!
//! The service does this work rather than the command line, so that every client (the CLI's
//! `attach`/`detach`, a console, a script with `curl`) goes through one place that holds the BMC
//! passwords, mints the URL, and audits who attached what. The Redfish walk itself is
//! [`crate::redfish`]; this module only gathers its inputs (the row's `bmc` URL, the credentials
//! file's line for it, the signed URL), runs it on the blocking pool, and answers.

use crate::media::Format;
use crate::redfish::{self, BootMode, CredentialsFile};
use crate::serve::app::bmc::{describe, expiry, scrub, shown, Use, ATTACH_TTL_SECS};
use crate::serve::app::guard::{api_host, authorize};
use crate::serve::app::media::MediaOptions;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::util::rfc3339;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

/// The body of `PUT /hosts/{host}/media`; every field is optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    /// `continuous` (default), `once` or `none`.
    boot: Option<String>,
    /// Reset the machine once mounted (default false).
    reset: Option<bool>,
    /// EFI loaders in the ISO (default x86_64) and the UEFI loader flavour (default ipxe).
    arch: Option<String>,
    efi_loader: Option<String>,
    /// Seconds the URL given to the BMC stays valid (default 90 days).
    ttl: Option<u64>,
}

/// What `PUT` and `DELETE` answer.
#[derive(Serialize)]
pub(crate) struct Done<T: Serialize> {
    host: String,
    action: &'static str,
    /// When the URL the BMC now holds stops working (attach only).
    #[serde(skip_serializing_if = "Option::is_none")]
    url_expires_at: Option<String>,
    report: T,
}

/// Everything about a host's BMC a request needs, checked: the row's URL and its credentials.
pub(crate) fn target(
    svc: &Service,
    host: &str,
) -> Result<(redfish::BmcTarget, crate::inventory::Node), HttpError> {
    let bmc = svc.bmc.as_ref().ok_or_else(|| {
        HttpError::new(
            409,
            "this service was started without --bmc-credentials; it cannot talk to BMCs",
        )
    })?;
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(host).cloned().ok_or_else(|| {
        HttpError::not_found(format!(
            "{host} is not in the inventory {}; add it there first",
            snap.inventory.source()
        ))
    })?;
    let url = node.bmc.clone().ok_or_else(|| {
        HttpError::new(
            409,
            format!("{host} has no BMC: fill the `bmc` column of {}", snap.inventory.source()),
        )
    })?;
    let file = CredentialsFile::load(&bmc.credentials).map_err(|e| {
        tracing::error!("the BMC credentials file cannot be used: {e}");
        HttpError::new(503, "the BMC credentials file cannot be used; the server log says why")
    })?;
    let target = file.target(&url).map_err(|e| {
        tracing::warn!(host, "{e}");
        match e {
            redfish::TargetError::NoLine { .. } => HttpError::new(
                409,
                format!("no line of the BMC credentials file covers {host}'s BMC ({})", url.host()),
            ),
            // Names the line (FILE:LINE) so the operator knows what to change; the file's
            // path is no secret from a caller who may attach.
            redfish::TargetError::PlainHttp { .. } => HttpError::new(409, format!("{host}: {e}")),
        }
    })?;
    Ok((target, node))
}

/// The CA a BMC must trust to fetch `url`: for an `https://` media URL, the certificates of
/// `--tls-ca`, read again for each attach (a renewed CA file is used without a restart); `None`
/// for `http://` or without `--tls-ca` (the BMC then checks with its own trust, as before).
fn media_ca(svc: &Service, url: &str) -> Result<Option<redfish::MediaCa>, HttpError> {
    let https = url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"));
    let Some(path) = svc.config.tls_ca.as_ref().filter(|_| https) else {
        return Ok(None);
    };
    redfish::MediaCa::load(path, "--tls-ca").map(Some).map_err(|e| {
        tracing::error!("{e}");
        HttpError::new(503, format!("the BMC cannot be given the service's CA: {e}"))
    })
}

/// A BMC's failure for the caller and the log: its message (already made safe by the Redfish
/// client), with anything shaped like a signature or token, should a BMC echo it, cut out.
/// A passed deadline is a 504 that says what may be half done and how to look.
pub(crate) fn bmc_failure(host: &str, e: &redfish::RedfishError) -> HttpError {
    let text = scrub(&e.to_string());
    tracing::warn!(host, "BMC operation failed: {text}");
    match e {
        redfish::RedfishError::Deadline { .. } => HttpError::new(
            504,
            format!(
                "{host}: {text}; that step and the ones after it may not have happened: see \
                 GET /hosts/{host}/media for what the BMC holds now"
            ),
        ),
        _ => HttpError::new(502, format!("{host}: {text}")),
    }
}

/// `PUT /hosts/{host}/media` (role reimage): mount the host's ISO on its BMC's virtual CD.
pub async fn attach(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let who = Actor::from(&authorize(svc, req, Role::Reimage).await?);
    let host = api_host(&raw)?;
    let body: AttachBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        AttachBody::default()
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request(
                "the body must be JSON with any of boot (continuous, once, none), reset (true, \
                 false), arch (x86_64,arm64), efi_loader (ipxe, snponly), ttl (seconds)",
            )
        })?
    };
    let boot: BootMode = body
        .boot
        .as_deref()
        .unwrap_or("continuous")
        .parse()
        .map_err(|_| HttpError::bad_request("boot must be continuous, once or none"))?;
    let reset = body.reset.unwrap_or(false);
    let opts = MediaOptions::parse(
        Format::Iso,
        body.arch.as_deref(),
        Some("cd"),
        body.efi_loader.as_deref(),
    )
    .map_err(|e| HttpError::bad_request(format!("bad media option {e}")))?;
    let ttl = body.ttl.unwrap_or(ATTACH_TTL_SECS);
    if ttl == 0 || ttl > crate::serve::app::media::MAX_TTL_SECS {
        return Err(HttpError::bad_request(format!(
            "ttl must be 1 to {} seconds",
            crate::serve::app::media::MAX_TTL_SECS
        )));
    }
    if svc.media.signer.ephemeral {
        return Err(HttpError::new(
            409,
            "attach needs --secret-file: without it, media URLs are signed with a key of this \
             process, and every attached BMC would lose its CD when the service restarts",
        ));
    }
    let (target, node) = target(svc, &host)?;
    let base = match &svc.config.media_base_url {
        Some(url) => url.to_string(),
        None => svc
            .base_for(&node, req.tls)
            .ok_or_else(|| HttpError::internal("no base URL"))?
            .to_string(),
    };
    let exp = svc.store.now_ms() / 1000 + ttl;
    let url = svc.media.url(&base, &host, &opts, exp);
    let ca = media_ca(svc, &url)?;
    let h = host.clone();
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let claim = bmc.claim(&host)?;
    let bmc_url = target.url.clone();
    let (service, trusted_by, peer, trusted_host) = (svc.clone(), who, req.peer, host.clone());
    let result = bmc
        .run(Use::Write, &bmc_url, claim, move |client, progress| {
            // Audited the moment the BMC's trust changes, whatever happens after it.
            let on_trust = |t: &redfish::TrustReport| {
                service.audit.note(&Event::BmcTrust {
                    host: trusted_host.clone(),
                    who: trusted_by.clone(),
                    peer,
                    certificates: t.fingerprints.clone(),
                    added: t.added,
                    verify_set: t.verify_set,
                })
            };
            let ca = ca.as_ref().map(|ca| redfish::Enroll { ca, on_change: &on_trust });
            let result = client.attach_within(&target, &url, boot, reset, ca, progress);
            service.hardware.changed(&trusted_host);
            // Audited on the BMC thread: a client that hangs up drops the handler's future,
            // not the attach the BMC is doing.
            service.audit.note(&Event::BmcMedia {
                host: trusted_host,
                action: "attach",
                who: trusted_by,
                peer,
                ok: result.is_ok(),
                boot: Some(boot_name(boot)),
                reset,
                media_ca: result.as_ref().ok().and_then(|r| r.media_ca.as_ref()).map(|t| t.status),
            });
            result
        })
        .await?;
    let mut report = result.map_err(|e| bmc_failure(&h, &e))?;
    report.media_after.image = report.media_after.image.map(|i: String| describe(&i));
    report.ejected = report.ejected.map(|i: String| describe(&i));
    Ok(Reply::json(&Done {
        host,
        action: "attach",
        url_expires_at: Some(rfc3339(exp * 1000)),
        report,
    }))
}

/// `DELETE /hosts/{host}/media` (role reimage): eject the virtual CD and drop a CD boot override.
pub async fn detach(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let who = Actor::from(&authorize(svc, req, Role::Reimage).await?);
    let host = api_host(&raw)?;
    let (target, _) = target(svc, &host)?;
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let claim = bmc.claim(&host)?;
    let bmc_url = target.url.clone();
    let (service, audited_host, peer) = (svc.clone(), host.clone(), req.peer);
    let result = bmc
        .run(Use::Write, &bmc_url, claim, move |client, progress| {
            let result = client.detach_within(&target, progress);
            service.hardware.changed(&audited_host);
            // Audited on the BMC thread (see attach).
            service.audit.note(&Event::BmcMedia {
                host: audited_host,
                action: "detach",
                who,
                peer,
                ok: result.is_ok(),
                boot: None,
                reset: false,
                media_ca: None,
            });
            result
        })
        .await?;
    let mut report = result.map_err(|e| bmc_failure(&host, &e))?;
    report.ejected = report.ejected.map(|i: String| describe(&i));
    Ok(Reply::json(&Done { host, action: "detach", url_expires_at: None, report }))
}

/// `GET /hosts/{host}/media` (role read): the BMC's own view of the virtual CD, the boot
/// override and the power state. A mounted URL is shown as the BMC reports it only to roles
/// that could mint it ([`crate::serve::app::bmc::MINTS_MEDIA_URLS`]); others get a description
/// (`shown`): a `read` caller must not be able to fetch the image, which holds the node's token.
pub async fn show(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    let role = authorize(svc, req, Role::Read).await?.role;
    let host = api_host(&raw)?;
    let (target, _) = target(svc, &host)?;
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let bmc_url = target.url.clone();
    let mut view = bmc
        .run(Use::Read, &bmc_url, (), move |client, progress| {
            client.status_within(&target, progress)
        })
        .await?
        .map_err(|e| bmc_failure(&host, &e))?;
    let expires = view.media.image.as_deref().and_then(expiry);
    view.media.image = view.media.image.map(|i: String| shown(&i, role));
    Ok(Reply::json(&serde_json::json!({
        "host": host,
        "bmc": view,
        "url_expires_at": expires.map(|e| rfc3339(e * 1000)),
    })))
}

fn boot_name(b: BootMode) -> &'static str {
    match b {
        BootMode::Continuous => "continuous",
        BootMode::Once => "once",
        BootMode::None => "none",
    }
}
