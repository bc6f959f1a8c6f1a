//! `GET /hosts` and `GET /hosts/{host}`: every inventory host's state, paged, filtered and
//! sorted ([`crate::serve::domain::query`]), or one host's; and the JSON views of a host that
//! [`crate::serve::api::flags`] answers with too.

use crate::serve::app::guard::{api_host, authorize};
use crate::serve::app::progress::stall_of;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::Role;
use crate::serve::domain::lifecycle::EndedInstall;
use crate::serve::domain::lifecycle::Ending;
use crate::serve::domain::lifecycle::Flag;
use crate::serve::domain::lifecycle::HostState;
use crate::serve::domain::lifecycle::Phase;
use crate::serve::domain::query::select;
use crate::serve::domain::query::HostKey;
use crate::serve::domain::query::HostQuery;
use crate::serve::inputs::catalog::Snapshot;
use crate::serve::store::StoreError;
use crate::serve::util::rfc3339;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

/// The JSON view of one host.
#[derive(Serialize)]
pub(crate) struct HostView {
    hostname: String,
    in_inventory: bool,
    ip: Option<String>,
    mac: Option<String>,
    vlan: Option<u16>,
    default_profile: Option<String>,
    /// The row's `bmc` URL (its Redfish root or System).
    bmc: Option<String>,
    flagged: bool,
    profile: Option<String>,
    phase: Option<Phase>,
    flag: Option<FlagView>,
    last_install: Option<EndedView>,
    last_boot: Option<BootView>,
    /// The open install made no progress for longer than its profile's `stall_after`.
    stalled: bool,
    /// The open install's last progress (ms since 1970), and its profile's allowance.
    progress_ms: Option<u64>,
    stall_after_s: Option<u64>,
    version: u64,
    /// Set instead of the state fields when the host's state file cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_error: Option<String>,
    /// Live state from the BMC, from the cache only (`null` for rows without a `bmc`).
    hardware: Option<crate::serve::app::hardware::HardwareView>,
}

#[derive(Serialize)]
struct FlagView {
    profile: String,
    set_by: String,
    set_from: String,
    set_at: String,
    install: InstallView,
}

#[derive(Serialize)]
struct InstallView {
    id: String,
    opened_at: Option<String>,
    answers: u32,
    failures: u32,
    last_failure_at: Option<String>,
    /// What the installer said about its last failure.
    last_failure_reason: Option<String>,
    /// The installer's last `started` report.
    started_at: Option<String>,
}

#[derive(Serialize)]
struct EndedView {
    id: String,
    profile: String,
    opened_at: Option<String>,
    ended_at: String,
    how: Ending,
}

#[derive(Serialize)]
struct BootView {
    time: String,
    peer: String,
    ip: Option<String>,
    mac: Option<String>,
    answer: String,
    reason: String,
}

impl From<&Flag> for FlagView {
    fn from(f: &Flag) -> Self {
        let i = &f.install;
        FlagView {
            profile: f.profile.clone(),
            set_by: f.set_by.clone(),
            set_from: f.set_from.clone(),
            set_at: rfc3339(f.set_at),
            install: InstallView {
                id: i.id.clone(),
                opened_at: i.opened_at.map(rfc3339),
                answers: i.answers,
                failures: i.failures,
                last_failure_at: i.last_failure_at.map(rfc3339),
                last_failure_reason: i.last_failure_reason.clone(),
                started_at: i.started_at.map(rfc3339),
            },
        }
    }
}

impl From<&EndedInstall> for EndedView {
    fn from(e: &EndedInstall) -> Self {
        EndedView {
            id: e.id.clone(),
            profile: e.profile.clone(),
            opened_at: e.opened_at.map(rfc3339),
            ended_at: rfc3339(e.ended_at),
            how: e.how,
        }
    }
}

/// Reads the boots and fetches recorded since the last look (before building views).
pub(crate) fn refresh_last_boots(svc: &Service, snap: &Snapshot) {
    // This process's own boots are stored by the audit writer after they were answered: let it
    // catch up first, so a host's view shows the boot that was just answered.
    svc.audit.sync_within(std::time::Duration::from_millis(500));
    svc.last_boot.refresh(&svc.store, |h| snap.inventory.get(h).is_some());
    svc.last_boot.refresh_fetches(&svc.store, |h| snap.inventory.get(h).is_some());
}

pub(crate) fn host_view(
    svc: &Service,
    snap: &Snapshot,
    host: &str,
    state: Result<&HostState, String>,
) -> HostView {
    let node = snap.inventory.get(host);
    let mut view = HostView {
        hostname: host.to_string(),
        in_inventory: node.is_some(),
        ip: node.map(|n| n.cidr()),
        mac: node.and_then(|n| n.mac.map(|m| m.to_string())),
        vlan: node.and_then(|n| n.vlan),
        default_profile: node.and_then(|n| n.profile.clone()),
        bmc: node.and_then(|n| n.bmc.as_ref().map(|b| b.to_string())),
        flagged: false,
        profile: None,
        phase: None,
        flag: None,
        last_install: None,
        last_boot: None,
        stalled: false,
        progress_ms: None,
        stall_after_s: None,
        version: 0,
        state_error: None,
        hardware: hardware_of(svc, node),
    };
    let st = match state {
        Ok(st) => st,
        Err(e) => {
            view.state_error = Some(e);
            return view;
        }
    };
    let last_boot = svc.last_boot.get(host);
    view.flagged = st.flag.is_some();
    view.profile = st.flag.as_ref().map(|f| f.profile.clone());
    view.phase = Some(st.phase());
    view.flag = st.flag.as_ref().map(FlagView::from);
    view.last_install = st.last_install.as_ref().map(EndedView::from);
    view.last_boot = last_boot.map(|b| BootView {
        time: rfc3339(b.at),
        peer: b.peer,
        ip: b.ip,
        mac: b.mac,
        answer: b.answer,
        reason: b.reason,
    });
    let stall = stall_of(snap, st, svc.last_boot.fetched(host), svc.store.now_ms());
    (view.stalled, view.progress_ms, view.stall_after_s) =
        (stall.stalled, stall.progress_ms, stall.stall_after_s);
    view.version = st.version;
    view
}

/// A row's hardware view, from the cache: never waits on a BMC.
fn hardware_of(
    svc: &Service,
    node: Option<&crate::inventory::Node>,
) -> Option<crate::serve::app::hardware::HardwareView> {
    svc.hardware.view(node?, svc.store.now_ms())
}

#[derive(Serialize)]
struct HostList {
    hosts: Vec<HostView>,
    /// Hosts with stored state that are not in the inventory (flags ended when they left).
    orphans: Vec<HostView>,
}

/// `GET /hosts[?flagged=1]`: every inventory host, each with its state, or with the error that
/// keeps its state file from being read (the others are listed all the same).
pub(crate) async fn list_hosts(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let param = |n: &str| req.param(n).map(str::to_string);
    if HostQuery::wanted(param) {
        let q = HostQuery::parse(param).map_err(HttpError::bad_request)?;
        return svc.blocking(move |svc| host_page(svc, &q)).await?;
    }
    let only_flagged = matches!(req.param("flagged"), Some("1" | "true" | "yes"));
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        refresh_last_boots(svc, &snap);
        let with_state = svc.store.states_blocking()?;
        let read = |host: &str| match with_state.get(host) {
            Some(st) => st.clone(),
            None => Ok(HostState::default()),
        };
        let keep = |st: &Result<HostState, String>| {
            !only_flagged || st.as_ref().map_or(true, |s| s.flag.is_some())
        };
        let mut hosts = Vec::new();
        for node in snap.inventory.nodes() {
            let st = read(&node.hostname);
            if keep(&st) {
                hosts.push(host_view(
                    svc,
                    &snap,
                    &node.hostname,
                    st.as_ref().map_err(Clone::clone),
                ));
            }
        }
        let mut orphans = Vec::new();
        let mut outside: Vec<&String> =
            with_state.keys().filter(|h| snap.inventory.get(h).is_none()).collect();
        outside.sort();
        for host in outside {
            let st = read(host);
            let shown = match &st {
                Ok(s) => {
                    s.flag.is_some()
                        || s.last_install
                            .as_ref()
                            .is_some_and(|e| e.how == Ending::RemovedFromInventory)
                }
                Err(_) => true,
            };
            if shown && keep(&st) {
                orphans.push(host_view(svc, &snap, host, st.as_ref().map_err(Clone::clone)));
            }
        }
        Ok(Reply::json(&HostList { hosts, orphans }))
    })
    .await?
}

/// The paged form of `GET /hosts` (see [`crate::serve::domain::query`]): every inventory host's
/// state is read (hosts without a state file are idle without a read), filtered and sorted on a few
/// fields, and only the page's views are built.
fn host_page(svc: &Service, q: &HostQuery) -> Result<Reply, HttpError> {
    let snap = svc.catalog.snapshot();
    refresh_last_boots(svc, &snap);
    // Shared with the store's last read (see `Store::states_blocking`): nothing is copied.
    let with_state = svc.store.states_blocking()?;
    let nodes = snap.inventory.nodes();
    let states: Vec<Option<&Result<HostState, String>>> =
        nodes.iter().map(|n| with_state.get(&n.hostname)).collect();
    let boots = svc.last_boot.times_of(nodes.iter().map(|n| n.hostname.as_str()));
    let fetched = svc.last_boot.fetched_of(nodes.iter().map(|n| n.hostname.as_str()));
    let now = svc.store.now_ms();
    // MAC addresses are only looked at by the text filter: not formatted for 100,000 hosts
    // otherwise.
    let with_mac = q.text.is_some();
    let keys: Vec<HostKey> = nodes
        .iter()
        .zip(&states)
        .zip(boots)
        .zip(fetched)
        .map(|(((n, st), last_boot), fetched)| {
            let st = st.and_then(|s| s.as_ref().ok());
            let flag = st.and_then(|s| s.flag.as_ref());
            HostKey {
                hostname: &n.hostname,
                ip: n.ip,
                mac: n.mac.filter(|_| with_mac).map(|m| m.to_string()),
                vlan: n.vlan,
                profile: flag.map(|f| f.profile.as_str()).or(n.profile.as_deref()),
                phase: st.map_or(Phase::Idle, HostState::phase),
                stalled: st.is_some_and(|s| stall_of(&snap, s, fetched, now).stalled),
                last_boot,
                install_since: flag.map(|f| f.set_at),
            }
        })
        .collect();
    let (page, matched) = select(&keys, q);
    let mut counts: std::collections::BTreeMap<Phase, usize> = Default::default();
    for k in &keys {
        *counts.entry(k.phase).or_default() += 1;
    }
    let idle = HostState::default();
    let hosts: Vec<HostView> = page
        .into_iter()
        .map(|i| {
            let st = match states[i] {
                Some(Ok(st)) => Ok(st),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(&idle),
            };
            host_view(svc, &snap, &nodes[i].hostname, st)
        })
        .collect();
    Ok(Reply::json(&serde_json::json!({
        "hosts": hosts,
        "total": nodes.len(),
        "matched": matched,
        "offset": q.offset,
        "limit": q.limit,
        "phases": counts,
        "profiles": snap.profiles.names().collect::<Vec<_>>(),
    })))
}

pub(crate) async fn show_host(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let host = api_host(&raw)?;
    svc.blocking(move |svc| {
        let snap = svc.catalog.snapshot();
        refresh_last_boots(svc, &snap);
        let st = match svc.store.read_blocking(&host) {
            Err(e @ (StoreError::Unavailable(_) | StoreError::Busy)) => return Err(e.into()),
            other => other.map_err(|e| e.to_string()),
        };
        if snap.inventory.get(&host).is_none() && st.as_ref().is_ok_and(|s| s.version == 0) {
            return Err(HttpError::not_found("this host is not in the inventory and has no state"));
        }
        Ok(Reply::json(&host_view(svc, &snap, &host, st.as_ref().map_err(Clone::clone))))
    })
    .await?
}
