//! `GET /boot/{host}`: the one endpoint every node asks at every boot.

use crate::inventory::{parse_hostname, quoted, Mac, Node, SystemUuid};
use crate::script::{local_boot_script, LocalBoot, Medium};
use crate::serve::app::change::Change;
use crate::serve::app::guard::{node_token_ok, rules};
use crate::serve::app::service::Service;
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle;
use crate::serve::domain::lifecycle::BootAnswer;
use crate::serve::domain::lifecycle::InstallKind;
use crate::serve::domain::lifecycle::NoInstall;
use crate::serve::inputs::catalog::Snapshot;
use crate::serve::inputs::profiles::RenderContext;
use crate::serve::web::reply::Reply;
use crate::serve::web::request::Req;
use crate::serve::web::routes::Route;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What a boot request says about itself, parsed: nothing else of it is used or recorded.
struct BootQuery {
    medium: Medium,
    platform: &'static str,
    ip: Option<Ipv4Addr>,
    mac: Option<Mac>,
    /// The SMBIOS UUID sent (`uuid`): parsed, or else the text as sent (escaped and cut by
    /// [`quoted`], for a refusal to show); `None` when not sent or empty.
    uuid: Option<Result<SystemUuid, String>>,
}

impl BootQuery {
    fn parse(req: &Req) -> BootQuery {
        BootQuery {
            medium: req.param("medium").and_then(|m| m.parse().ok()).unwrap_or(Medium::Cd),
            platform: match req.param("platform") {
                Some("pcbios") => "pcbios",
                Some("efi") => "efi",
                Some(_) => "other",
                None => "-",
            },
            ip: req.param("ip").and_then(|i| i.parse().ok()),
            mac: req.param("mac").and_then(|m| m.parse().ok()),
            uuid: req
                .param("uuid")
                .filter(|u| !u.trim().is_empty())
                .map(|u| u.parse::<SystemUuid>().map_err(|_| quoted(u))),
        }
    }
}

/// Why a boot is answered local. The text is echoed on the node's console: fixed strings only,
/// never anything from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    InvalidHost,
    UnknownHost,
    BadToken,
    MacMismatch,
    NoMac,
    UuidMismatch,
    NoUuid,
    NoInstall(NoInstall),
    RenderError,
    StateError,
    StateBusy,
}

impl Local {
    fn kind(self) -> &'static str {
        match self {
            Local::InvalidHost => "invalid-host",
            Local::UnknownHost => crate::serve::domain::event::UNKNOWN_HOST,
            Local::BadToken => "bad-token",
            Local::MacMismatch | Local::NoMac => "mac-mismatch",
            Local::UuidMismatch | Local::NoUuid => UUID_MISMATCH,
            Local::NoInstall(NoInstall::NotFlagged) => "not-flagged",
            Local::NoInstall(NoInstall::UnknownProfile) => "unknown-profile",
            Local::RenderError => "render-error",
            Local::StateError => "state-error",
            Local::StateBusy => "state-busy",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Local::InvalidHost => "the host name asked for is not valid",
            Local::UnknownHost => "this host is not in the inventory",
            Local::BadToken => "missing or wrong node token",
            Local::MacMismatch => "the MAC sent is not the inventory's MAC for this host",
            Local::NoMac => "no valid MAC sent; the inventory has one for this host",
            Local::UuidMismatch => "the SMBIOS UUID sent is not the inventory's UUID for this host",
            Local::NoUuid => "no valid SMBIOS UUID sent; the inventory has one for this host",
            Local::NoInstall(NoInstall::NotFlagged) => "not flagged for reimage",
            Local::NoInstall(NoInstall::UnknownProfile) => "the flag's profile is not loaded",
            Local::RenderError => "the install chain could not be rendered",
            Local::StateError => "the flag store cannot be read or written",
            Local::StateBusy => "the state database did not decide in time (busy or unreachable)",
        }
    }

    /// Whether the request was proven to come from the host's medium.
    fn verified(self) -> bool {
        !matches!(
            self,
            Local::InvalidHost
                | Local::UnknownHost
                | Local::BadToken
                | Local::MacMismatch
                | Local::NoMac
                | Local::UuidMismatch
                | Local::NoUuid
        )
    }
}

/// The `kind` of a boot refused for its SMBIOS UUID; its record names the UUID expected and the
/// one sent.
pub(crate) const UUID_MISMATCH: &str = "uuid-mismatch";

/// Checks that the request comes from `raw`'s medium: a valid inventory host, its node token
/// (with a secret), its MAC (when the inventory has one) and its SMBIOS UUID (when the
/// inventory has one; compared as 16 bytes, so in any case).
fn verify<'a>(
    svc: &Service,
    snap: &'a Snapshot,
    req: &Req,
    q: &BootQuery,
    raw: Option<&str>,
) -> Result<&'a Node, (Local, Option<String>)> {
    let host = raw.and_then(|r| parse_hostname(r).ok()).ok_or((Local::InvalidHost, None))?;
    let Some(node) = snap.inventory.get(&host) else {
        return Err((Local::UnknownHost, Some(host)));
    };
    if !node_token_ok(svc, &host, req.param("token")) {
        return Err((Local::BadToken, Some(host)));
    }
    match (node.mac, q.mac) {
        (None, _) => {}
        (Some(expected), Some(sent)) if expected == sent => {}
        (Some(_), Some(_)) => return Err((Local::MacMismatch, Some(host))),
        (Some(_), None) => return Err((Local::NoMac, Some(host))),
    }
    match (node.uuid, &q.uuid) {
        (None, _) => Ok(node),
        (Some(expected), Some(Ok(sent))) if expected.same_machine(sent) => Ok(node),
        (Some(_), Some(_)) => Err((Local::UuidMismatch, Some(host))),
        (Some(_), None) => Err((Local::NoUuid, Some(host))),
    }
}

/// What the first (lock-free) look at a boot found.
enum BootStep {
    Answered(Reply),
    /// The host's state must change (an install opens or continues): retry under its lock.
    Change(String),
}

/// `GET /boot/{host}`: always 200 with an iPXE script. Only a verified request of a flagged host
/// gets its install chain; everything else boots the local disk, with the reason on the console
/// and in the audit log. Most boots (not flagged) are answered from memory with one audit note;
/// a host whose file may decide reads it, and only an answer that changes it takes its lock.
/// How long a flagged host's boot waits for its decision to commit before it boots the local
/// disk instead (with reason `state-busy`).
pub const BOOT_DECISION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

pub(crate) async fn boot(svc: &Arc<Service>, req: &Arc<Req>, raw: Option<String>) -> Reply {
    // On the connection's task: verifying is CPU work and `may_decide` a look-up in memory, so
    // an unflagged host (almost every boot) is answered without a thread hand-off or a read.
    let q = BootQuery::parse(req);
    let snap = svc.catalog.snapshot();
    let host = match verify(svc, &snap, req, &q, raw.as_deref()) {
        Err((why, host)) => {
            // A refused request of an inventory host (a wrong token or MAC) still boots that
            // host's disk its own way: the row's `local_boot` is configuration, not request text.
            let node = host.as_deref().and_then(|h| snap.inventory.get(h));
            return boot_local(svc, req, &q, host.as_deref(), node, why);
        }
        Ok(node) if !svc.store.may_decide(&node.hostname) => {
            let why = Local::NoInstall(NoInstall::NotFlagged);
            return boot_local(svc, req, &q, Some(&node.hostname), Some(node), why);
        }
        Ok(node) => node.hostname.clone(),
    };
    drop(snap);
    // The deadline covers the look as well as the change: a database that stops answering
    // mid-request must not hold the node past it.
    let deadline = tokio::time::Instant::now() + BOOT_DECISION_DEADLINE;
    let r = req.clone();
    let first = svc.blocking(move |svc| boot_look(svc, &r, host));
    let host = match tokio::time::timeout_at(deadline, first).await {
        Ok(Ok(BootStep::Answered(reply))) => return reply,
        Ok(Ok(BootStep::Change(host))) => host,
        Ok(Err(_)) => return boot_failed(svc, req, Local::StateError),
        Err(_) => return boot_failed(svc, req, Local::StateBusy),
    };
    let r = req.clone();
    let name = host.clone();
    let too_late = deadline.into_std();
    let changed = svc.change_until(&name, Some(too_late), move |svc, st, now| {
        let snap = svc.catalog.snapshot();
        let q = BootQuery::parse(&r);
        // Past the deadline the node has been told to boot its disk: a decision made now
        // (a first-answer install opened and its flag ended) would never reach it. Write
        // nothing; the flag waits for the next boot. (The timeout below has answered, with its
        // audit note, so this reply is only a placeholder that nobody reads.)
        if std::time::Instant::now() >= too_late {
            let reply = local_script(&snap, &q, snap.inventory.get(&host), Local::StateBusy);
            return Ok(Change { value: reply, write: false, record: None });
        }
        let Some(node) = snap.inventory.get(&host) else {
            let reply = boot_local(svc, &r, &q, Some(&host), None, Local::UnknownHost);
            return Ok(Change { value: reply, write: false, record: None });
        };
        let (answer, write) = lifecycle::answer_boot(st, rules(&snap), now);
        Ok(boot_answer(svc, &snap, &r, &q, node, answer, write))
    });
    // A node waits for its answer at the firmware's prompt: past the deadline it boots its
    // disk, saying why. The change runs on in the store, but writes nothing once the deadline
    // has passed (above); only a commit already sent when the deadline struck can still land,
    // and then the node's next boot continues the install this one opened (a first-answer
    // install: within its repeat window).
    match tokio::time::timeout_at(deadline, changed).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.status == 503 => boot_failed(svc, req, Local::StateBusy),
        Ok(Err(_)) => boot_failed(svc, req, Local::StateError),
        Err(_) => boot_failed(svc, req, Local::StateBusy),
    }
}

/// The lock-free look at a verified host's state: answer, unless the state must change.
fn boot_look(svc: &Service, req: &Req, host: String) -> BootStep {
    let q = BootQuery::parse(req);
    let snap = svc.catalog.snapshot();
    // The inventory may have been reloaded since the request was verified.
    let Some(node) = snap.inventory.get(&host) else {
        return BootStep::Answered(boot_local(svc, req, &q, Some(&host), None, Local::UnknownHost));
    };
    let mut st = match svc.store.read_blocking(&host) {
        Ok(st) => st,
        Err(e) => {
            // An outage is logged once, by the store's health monitor, not once per boot.
            let why = match e {
                crate::serve::store::StoreError::Unavailable(_) => Local::StateBusy,
                e => {
                    tracing::error!("{e}");
                    Local::StateError
                }
            };
            return BootStep::Answered(boot_local(svc, req, &q, Some(&host), Some(node), why));
        }
    };
    let (answer, write) = lifecycle::answer_boot(&mut st, rules(&snap), svc.store.now_ms());
    if write {
        return BootStep::Change(node.hostname.clone());
    }
    let Change { value, record, .. } = boot_answer(svc, &snap, req, &q, node, answer, false);
    if let Some(record) = record {
        svc.audit.note(&record);
    }
    BootStep::Answered(value)
}

/// Turns the lifecycle's answer into the script and the audit record.
fn boot_answer(
    svc: &Service,
    snap: &Snapshot,
    req: &Req,
    q: &BootQuery,
    node: &Node,
    answer: BootAnswer,
    write: bool,
) -> Change<Reply> {
    let host = node.hostname.as_str();
    let (profile, id, kind) = match answer {
        BootAnswer::Install { profile, id, kind } => (profile, id, kind),
        BootAnswer::Local(no) => {
            let record = boot_event(
                req,
                q,
                Some(host),
                true,
                "local",
                Local::NoInstall(no).kind(),
                Local::NoInstall(no).text(),
                None,
            );
            let reply = local_script(snap, q, Some(node), Local::NoInstall(no));
            svc.metrics.boot("local", Local::NoInstall(no).kind());
            return Change { value: reply, write: false, record: Some(record) };
        }
    };
    let script = match render(svc, snap, node, &profile, "boot.ipxe", &id, req.tls) {
        Ok(script) => script,
        Err(e) => {
            tracing::error!(host, "{e}");
            let why = Local::RenderError;
            let record =
                boot_event(req, q, Some(host), true, "local", why.kind(), why.text(), None);
            svc.metrics.boot("local", why.kind());
            return Change {
                value: local_script(snap, q, Some(node), why),
                write: false,
                record: Some(record),
            };
        }
    };
    let reason = match kind {
        InstallKind::Opened => "flagged: install opened",
        InstallKind::Continues => "flagged: install continues",
        InstallKind::OpenedAndEnded => "flagged: install opened, flag cleared at first answer",
        InstallKind::RepeatWindow => "install chain again (repeat window)",
    };
    svc.metrics.boot(
        "install",
        if kind == InstallKind::RepeatWindow { "repeat-window" } else { "flagged" },
    );
    if kind == InstallKind::OpenedAndEnded {
        crate::serve::app::metrics::Metrics::inc(&svc.metrics.flags_cleared);
    }
    tracing::info!(host, install = %id, "boot: {reason}");
    let record = boot_event(req, q, Some(host), true, "install", kind.as_str(), reason, Some(&id));
    Change { value: Reply::text(script), write, record: Some(record) }
}

/// A local answer with its audit note, for a request refused before any state was read.
fn boot_local(
    svc: &Service,
    req: &Req,
    q: &BootQuery,
    host: Option<&str>,
    node: Option<&Node>,
    why: Local,
) -> Reply {
    let mut record =
        boot_event(req, q, host, why.verified(), "local", why.kind(), why.text(), None);
    // A UUID refusal says which: the inventory's UUID and what was sent (parsed, or quoted and
    // cut), so the console's audit view shows both.
    if let (Local::UuidMismatch | Local::NoUuid, Event::Boot { uuid, expected_uuid, .. }) =
        (why, &mut record)
    {
        *expected_uuid = node.and_then(|n| n.uuid);
        *uuid = Some(match &q.uuid {
            Some(Ok(sent)) => sent.to_string(),
            Some(Err(text)) => text.clone(),
            None => "(none sent)".to_string(),
        });
    }
    svc.audit.note(&record);
    svc.metrics.boot("local", why.kind());
    tracing::debug!(host = host.unwrap_or("-"), "boot: local: {}", why.text());
    local_script(&svc.catalog.snapshot(), q, node, why)
}

/// The local answer for a boot whose state could not be read or changed.
fn boot_failed(svc: &Service, req: &Req, why: Local) -> Reply {
    let q = BootQuery::parse(req);
    let host = match &req.route {
        Route::Boot(h) => parse_hostname(h).ok(),
        _ => None,
    };
    let snap = svc.catalog.snapshot();
    let node = host.as_deref().and_then(|h| snap.inventory.get(h));
    boot_local(svc, req, &q, host.as_deref(), node, why)
}

/// The local-boot script: how to leave iPXE comes from the node's `local_boot` column, else its
/// profile's setting, else the platform and medium.
fn local_script(snap: &Snapshot, q: &BootQuery, node: Option<&Node>, why: Local) -> Reply {
    let column = node.and_then(|n| n.vars.get("local_boot")).filter(|t| !t.is_empty());
    let how = match column.map(|t| t.parse::<LocalBoot>()) {
        Some(Ok(how)) => how,
        _ => node
            .and_then(|n| n.profile.as_deref())
            .and_then(|p| snap.profiles.get(p))
            .and_then(|p| p.settings.local_boot)
            .unwrap_or(LocalBoot::Auto),
    };
    Reply::text(local_boot_script(how, q.medium, why.text()))
}

#[allow(clippy::too_many_arguments)]
fn boot_event(
    req: &Req,
    q: &BootQuery,
    host: Option<&str>,
    verified: bool,
    answer: &'static str,
    kind: &'static str,
    reason: &'static str,
    install: Option<&str>,
) -> Event {
    Event::Boot {
        host: host.map(str::to_string),
        verified,
        answer,
        kind,
        reason,
        install: install.map(str::to_string),
        peer: req.peer,
        ip: q.ip,
        mac: q.mac,
        medium: q.medium.as_str(),
        platform: q.platform,
        uuid: None,
        expected_uuid: None,
    }
}

/// Renders `file` of `profile` for `node` within install `id`; `tls`: whether the request came
/// over TLS (see [`Service::base_for`]).
pub(crate) fn render(
    svc: &Service,
    snap: &Snapshot,
    node: &Node,
    profile: &str,
    file: &str,
    id: &str,
    tls: bool,
) -> Result<String, String> {
    let server = svc.base_for(node, tls).ok_or("no base URL for this node")?.to_string();
    let token = svc.secret.as_ref().map(|s| s.node_token(&node.hostname));
    let ctx = RenderContext { node, server: &server, token: token.as_deref(), install_id: id };
    snap.profiles.render(profile, file, &ctx)
}
