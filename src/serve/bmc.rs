//! `PUT`, `DELETE` and `GET /hosts/{host}/media`: the node's BMC mounts (or ejects) the node's
//! boot ISO by signed URL, through Redfish.
//!
//! The service does this work rather than the command line, so that every client (the CLI's
//! `attach`/`detach`, a console, a script with `curl`) goes through one place that holds the BMC
//! passwords, mints the URL, and audits who attached what. The Redfish walk itself is
//! [`crate::redfish`]; this module only gathers its inputs (the row's `bmc` URL, the credentials
//! file's line for it, the signed URL), runs it on the blocking pool, and answers.

use super::audit::Event;
use super::auth::{Actor, Role};
use super::handlers::{api_host, authorize};
use super::http::Req;
use super::media::MediaOptions;
use super::reply::{HttpError, Reply};
use super::util::{now_ms, rfc3339};
use super::Service;
use crate::media::Format;
use crate::redfish::{self, BootMode, CredentialsFile};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// How long a URL handed to a BMC lives when the request does not say: BMCs read attached media
/// at every boot, so it must outlive the attachment. `attach` again to renew it.
pub const ATTACH_TTL_SECS: u64 = 90 * 24 * 3600;

/// BMC operations running at once, at most; more wait their turn, up to [`SLOT_WAIT`].
const BMC_SLOTS: usize = 64;
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the service needs for Redfish: one client for every BMC, and the credentials file.
pub struct Bmc {
    client: redfish::Client,
    credentials: PathBuf,
    /// Bounds the threads BMC operations run on (see [`Bmc::run`]).
    slots: Arc<tokio::sync::Semaphore>,
    /// Hosts with an attach or detach under way: one at a time per host, so two operators (or
    /// a host named twice) never interleave eject, insert and reset on one machine.
    busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A host's claim on its BMC, released when dropped.
struct Claim {
    busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    host: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.host);
    }
}

impl Bmc {
    /// Loads the credentials file once (so a bad one fails the start, naming its lines) and
    /// builds the client. The file is read again for every request, so a password change or a
    /// removed line takes effect without a restart.
    pub fn new(credentials: PathBuf, ca_file: Option<PathBuf>) -> anyhow::Result<Bmc> {
        let file = CredentialsFile::load(&credentials).map_err(|e| anyhow::anyhow!("{e}"))?;
        if file.has_catch_all() {
            tracing::warn!(
                file = %credentials.display(),
                "the `*` line sends its password to any BMC the inventory names, and whoever \
                 edits the inventory chooses those; a network (10.1.0.0/16) or domain \
                 (*.bmc.example) line keeps it inside the management network"
            );
        }
        let client =
            redfish::Client::new(redfish::ClientOptions { ca_file, ..Default::default() })?;
        Ok(Bmc {
            client,
            credentials,
            slots: Arc::new(tokio::sync::Semaphore::new(BMC_SLOTS)),
            busy: Arc::default(),
        })
    }

    /// Claims `host` for one attach or detach; 409 while another runs.
    fn claim(&self, host: &str) -> Result<Claim, HttpError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(host.to_string()) {
            return Err(HttpError::new(
                409,
                format!("an attach or detach of {host} is already running; wait for it"),
            ));
        }
        Ok(Claim { busy: self.busy.clone(), host: host.to_string() })
    }

    /// Runs a Redfish operation on a thread of its own, never on the service's blocking pool.
    ///
    /// A BMC can take a minute, and while it works it downloads the node's image from this very
    /// service, whose `/media/` handler needs the blocking pool: were the operations on that
    /// pool, enough parallel attaches would hold every one of its threads waiting for BMCs that
    /// wait for us. So each operation gets its own thread, and [`BMC_SLOTS`] bounds how many.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redfish::Client) -> T + Send + 'static,
    ) -> Result<T, HttpError> {
        let busy = || {
            HttpError::new(503, "every BMC slot is busy; try again shortly")
                .header("Retry-After", "5".into())
        };
        let slot = tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let client = self.client.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("bmc".into())
            .spawn(move || {
                // The slot lives as long as the thread, whether or not anyone still waits for
                // the answer: a caller that hangs up does not free a slot a BMC still holds.
                let _slot = slot;
                let _ = tx.send(work(&client));
            })
            .map_err(|e| HttpError::internal(format!("cannot start a BMC thread: {e}")))?;
        rx.await.map_err(|_| HttpError::internal("a BMC operation panicked"))
    }
}

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
struct Done<T: Serialize> {
    host: String,
    action: &'static str,
    /// When the URL the BMC now holds stops working (attach only).
    #[serde(skip_serializing_if = "Option::is_none")]
    url_expires_at: Option<String>,
    report: T,
}

/// Everything about a host's BMC a request needs, checked: the row's URL and its credentials.
fn target(
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
        tracing::warn!("{e}");
        HttpError::new(
            409,
            format!("no line of the BMC credentials file covers {host}'s BMC ({})", url.host()),
        )
    })?;
    Ok((target, node))
}

/// A BMC's failure for the caller and the log: its message (already made safe by the Redfish
/// client), with anything shaped like a signature or token, should a BMC echo it, cut out.
fn bmc_failure(host: &str, e: &redfish::RedfishError) -> HttpError {
    let text = scrub(&e.to_string());
    tracing::warn!(host, "BMC operation failed: {text}");
    HttpError::new(502, format!("{host}: {text}"))
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
    if ttl == 0 || ttl > super::media::MAX_TTL_SECS {
        return Err(HttpError::bad_request(format!(
            "ttl must be 1 to {} seconds",
            super::media::MAX_TTL_SECS
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
        None => svc.base_for(&node).ok_or_else(|| HttpError::internal("no base URL"))?,
    };
    let exp = now_ms() / 1000 + ttl;
    let url = svc.media.url(&base, &host, &opts, exp);
    let h = host.clone();
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let _busy = bmc.claim(&host)?;
    let result = bmc.run(move |client| client.attach(&target, &url, boot, reset)).await?;
    svc.audit.note(&Event::BmcMedia {
        host: host.clone(),
        action: "attach",
        who,
        peer: req.peer,
        ok: result.is_ok(),
        boot: Some(boot_name(boot)),
        reset,
    });
    let mut report = result.map_err(|e| bmc_failure(&h, &e))?;
    report.media_after.image = report.media_after.image.map(|i: String| redact(&i));
    report.ejected = report.ejected.map(|i: String| redact(&i));
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
    let _busy = bmc.claim(&host)?;
    let result = bmc.run(move |client| client.detach(&target)).await?;
    svc.audit.note(&Event::BmcMedia {
        host: host.clone(),
        action: "detach",
        who,
        peer: req.peer,
        ok: result.is_ok(),
        boot: None,
        reset: false,
    });
    let mut report = result.map_err(|e| bmc_failure(&host, &e))?;
    report.ejected = report.ejected.map(|i: String| redact(&i));
    Ok(Reply::json(&Done { host, action: "detach", url_expires_at: None, report }))
}

/// `GET /hosts/{host}/media` (role read): the BMC's own view of the virtual CD, the boot
/// override and the power state. The signature of a mounted URL is not shown: a `read` caller
/// must not be able to fetch the image, which holds the node's token.
pub async fn show(svc: &Arc<Service>, req: &Arc<Req>, raw: String) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let host = api_host(&raw)?;
    let (target, _) = target(svc, &host)?;
    let bmc = svc.bmc.as_ref().expect("checked by target()");
    let mut view =
        bmc.run(move |client| client.status(&target)).await?.map_err(|e| bmc_failure(&host, &e))?;
    let expires = view.media.image.as_deref().and_then(expiry);
    view.media.image = view.media.image.map(|i: String| redact(&i));
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

/// An image URL as a `read` caller may see it: without its query, which holds the signature
/// (in whatever encoding a BMC reports it back).
fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((path, _)) => format!("{path}?(signed query hidden)"),
        None => url.to_string(),
    }
}

/// `text` with every run of 64 or more hex digits (a URL signature, a node token) hidden: BMC
/// messages may echo the URL they were given.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 64 {
            out.push_str("<redacted>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The `exp` of one of our media URLs.
fn expiry(url: &str) -> Option<u64> {
    url.split(['?', '&']).find_map(|p| p.strip_prefix("exp="))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_redacted_and_expiry_read() {
        let u = "http://s/media/n.iso?arch=x86_64&exp=123&sig=abcdef";
        assert_eq!(redact(u), "http://s/media/n.iso?(signed query hidden)");
        assert_eq!(redact("http://s/x.iso"), "http://s/x.iso");
        assert_eq!(expiry(u), Some(123));
        assert_eq!(expiry("http://other/x.iso"), None);
        let sig = "a1".repeat(32);
        assert_eq!(scrub(&format!("bad image {sig}: no")), "bad image <redacted>: no");
        assert_eq!(scrub(&format!("%3Dsig%3D{}", sig.to_uppercase())), "%3Dsig%<redacted>");
        assert_eq!(scrub("HTTP 400: abc 12"), "HTTP 400: abc 12");
    }
}
