//! `POST /discover`: each chosen row's BMC is asked for its machine's network interfaces, UUID
//! and serial number; the answer proposes, per host, the boot NIC's MAC (old -> new) and the
//! UUID and serial, and with `apply` writes them as one inventory edit.
//!
//! Roles: a proposal needs `reimage` (it reads every chosen BMC with the service's
//! credentials, as attaching media does, and shows MACs, UUIDs and serial numbers); `apply`
//! needs `admin`, like every other inventory edit.
//!
//! Invariants:
//! * **Nothing is guessed.** The decision is [`crate::serve::domain::discover`]'s: an ambiguous
//!   or silent BMC changes nothing for its host, and says why.
//! * **A typed value stays.** A `mac`, `uuid` or `serial` the row has and the BMC contradicts
//!   is kept unless the request says `overwrite`.
//! * **One validated edit, never over another's.** The inventory is read (with its version)
//!   before the BMCs are; an apply re-reads it under the edit lock and is refused (409) if its
//!   version moved meanwhile (or differs from the `version` the request names), so a
//!   concurrent edit is never overwritten. The edit is made row by row with the console's
//!   editor (every other byte kept), validated whole, written once (file: atomically; database:
//!   one transaction against the version) and audited once: `inventory-changed`, action
//!   `discover`, by whom, with the rows it changed.
//! * **Bounded answers.** Host names in the request are validated; BMC texts were made safe by
//!   the Redfish client; a column the inventory lacks is not added but reported.

use crate::inventory::{parse_hostname, BmcUrl, Inventory, Mac, SystemUuid};
use crate::redfish::NicReport;
use crate::serve::app::discover::{read_all, Read};
use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::console::editor::{self, Edit, Fields};
use crate::serve::console::inventory::{
    edits_allowed, read_inventory, replace, require_version, upload_source, Change,
};
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::discover::{clashes, propose, Field, Identity, Proposal, Row};
use crate::serve::web::reply::{HttpError, Payload, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

/// Hosts one request may name.
const MAX_HOSTS: usize = 10_000;

/// The body of `POST /discover`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Body {
    /// Host names to discover; or `all`.
    #[serde(default)]
    hosts: Vec<String>,
    /// Every row with a `bmc`.
    #[serde(default)]
    all: bool,
    /// Write the proposal (role admin).
    #[serde(default)]
    apply: bool,
    /// Replace values the row has that the BMC contradicts.
    #[serde(default)]
    overwrite: bool,
    /// The inventory version the caller saw; an apply is refused if it moved.
    version: Option<String>,
}

/// One host's line of the answer.
#[derive(Serialize)]
struct HostResult {
    host: String,
    /// The row's MAC before, and after (when applied, or were it applied).
    old_mac: Option<Mac>,
    new_mac: Option<Mac>,
    /// One line: what happens and why.
    summary: String,
    /// Whether the row changes (or changed, with `apply`).
    changes: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    proposal: Option<Proposal>,
    /// As the BMC reported them (made safe, bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    reported_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported_serial: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<NicReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl HostResult {
    fn failed(host: String, old_mac: Option<Mac>, error: String) -> HostResult {
        HostResult {
            host,
            old_mac,
            new_mac: old_mac,
            summary: format!("error: {error}"),
            changes: false,
            proposal: None,
            reported_uuid: None,
            reported_serial: None,
            interfaces: Vec::new(),
            notes: Vec::new(),
            error: Some(error),
        }
    }
}

/// `POST /discover` (role reimage; with `apply`, admin).
pub async fn discover(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let body: Body = if req.body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request(
                "the body must be JSON: {\"hosts\": [\"HOST\", …]} or {\"all\": true}, with \
                 optional \"apply\", \"overwrite\" (true or false) and \"version\"",
            )
        })?
    };
    let caller = authorize(svc, req, if body.apply { Role::Admin } else { Role::Reimage }).await?;
    if body.apply {
        edits_allowed(svc)?;
    }
    let named = named_hosts(&body)?;
    // The inventory and its version, before any BMC is read.
    let (inv, version) = svc
        .blocking(|svc| -> Result<(Inventory, String), HttpError> {
            let current = read_inventory(svc)?;
            let inv = editor::validate(&upload_source(svc), &current.text).map_err(|r| {
                HttpError::new(
                    409,
                    format!(
                        "the inventory is not valid ({} errors, the first: {}); fix it first",
                        r.total,
                        r.errors.first().map(ToString::to_string).unwrap_or_default()
                    ),
                )
            })?;
            Ok((inv, current.version))
        })
        .await??;
    if let Some(v) = &body.version {
        if *v != version {
            return Err(HttpError::new(
                409,
                "the inventory changed since the version given; run discovery again",
            ));
        }
    }
    // The rows to read, in inventory order (or as named), and those that cannot be read.
    let mut results: Vec<Option<HostResult>> = Vec::new();
    let mut to_read: Vec<(String, BmcUrl)> = Vec::new();
    let mut slot_of: Vec<usize> = Vec::new();
    let hosts: Vec<String> = match &named {
        Some(list) => list.clone(),
        None => {
            inv.nodes().iter().filter(|n| n.bmc.is_some()).map(|n| n.hostname.clone()).collect()
        }
    };
    for host in hosts {
        match inv.get(&host) {
            None => {
                results.push(Some(HostResult::failed(host, None, "not in the inventory".into())))
            }
            Some(node) => match &node.bmc {
                None => results.push(Some(HostResult::failed(
                    host,
                    node.mac,
                    "the row has no bmc; fill its `bmc` column".into(),
                ))),
                Some(url) => {
                    slot_of.push(results.len());
                    results.push(None);
                    to_read.push((host, url.clone()));
                }
            },
        }
    }
    let reads = read_all(svc, to_read).await?;
    let columns = inv.columns().to_vec();
    for (slot, read) in slot_of.into_iter().zip(reads) {
        let node = inv.get(&read.host).expect("chosen from this inventory");
        let row = Row {
            ip: node.ip,
            prefix: node.prefix,
            mac: node.mac,
            uuid: node.uuid,
            serial: node.serial.clone(),
        };
        results[slot] = Some(result_of(read, &row, &columns, body.overwrite));
    }
    let mut results: Vec<HostResult> = results.into_iter().flatten().collect();
    set_aside_clashes(&inv, &mut results);

    if !body.apply || !results.iter().any(|r| r.changes) {
        return Ok(Reply::json(&serde_json::json!({
            "applied": false,
            "written": false,
            "version": version,
            "hosts": results,
        })));
    }
    let who = Actor::from(&caller);
    let peer = req.peer;
    let edits: Vec<(String, Fields)> = results
        .iter()
        .filter(|r| r.changes)
        .filter_map(|r| Some((r.host.clone(), fields(r.proposal.as_ref()?, &columns))))
        .collect();
    let reply = svc
        .blocking(move |svc| -> Result<Reply, HttpError> {
            let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
            let current = read_inventory(svc)?;
            require_version(Some(&version), &current).map_err(|_| {
                HttpError::new(
                    409,
                    "the inventory changed while the BMCs were read; nothing was written, run discovery again",
                )
            })?;
            let mut text = current.text.clone();
            let mut hosts = Vec::new();
            for (host, fields) in &edits {
                let edit = Edit::Change { host: host.clone(), fields: fields.clone() };
                text = editor::apply(&text, &edit)
                    .map_err(|e| HttpError::new(409, format!("{host}: {e}")))?
                    .text;
                hosts.push(host.clone());
            }
            let change =
                Change { action: "discover", removed: None, renamed_from: None, hosts };
            replace(svc, &who, peer, change, &text, None, &current)
        })
        .await??;
    // The write's own answer (version, reload, or the 422 of an invalid result), with the
    // hosts added.
    let Payload::Text(written) = &reply.body else {
        return Err(HttpError::internal("the inventory write answered unexpectedly"));
    };
    let mut answer: serde_json::Value = serde_json::from_str(written)
        .map_err(|_| HttpError::internal("the inventory write answered unexpectedly"))?;
    let ok = reply.status == 200;
    if !ok {
        for r in &mut results {
            r.changes = false;
        }
    }
    answer["applied"] = ok.into();
    answer["hosts"] = serde_json::to_value(&results).expect("plain data serializes");
    Ok(Reply::json(&answer).with_status(reply.status))
}

/// Marks the results whose MAC or UUID would then be another row's as not changing, with the
/// reason ([`clashes`]): the inventory refuses a value on two rows, and one such host must not
/// keep the others from being applied.
fn set_aside_clashes(inv: &Inventory, results: &mut [HostResult]) {
    let rows: Vec<Identity> = inv
        .nodes()
        .iter()
        .map(|n| Identity { host: n.hostname.clone(), mac: n.mac, uuid: n.uuid })
        .collect();
    let proposed: Vec<Identity> = results
        .iter()
        .filter(|r| r.changes)
        .filter_map(|r| {
            let p = r.proposal.as_ref()?;
            let row = rows.iter().find(|i| i.host == r.host)?;
            Some(Identity {
                host: r.host.clone(),
                mac: p.mac.write().copied().or(row.mac),
                uuid: p.uuid.write().copied().or(row.uuid),
            })
        })
        .collect();
    for (host, why) in clashes(&rows, &proposed) {
        if let Some(r) = results.iter_mut().find(|r| r.host == host) {
            r.changes = false;
            r.new_mac = r.old_mac;
            r.summary = format!("{why}; {}", r.summary);
            r.error = Some(why);
        }
    }
}

/// The hosts a request names (validated, without repeats), or `None` for `all`.
fn named_hosts(body: &Body) -> Result<Option<Vec<String>>, HttpError> {
    match (body.all, body.hosts.is_empty()) {
        (true, true) => return Ok(None),
        (true, false) => {
            return Err(HttpError::bad_request("give either `hosts` or `all`, not both"))
        }
        (false, true) => {
            return Err(HttpError::bad_request(
                "name the hosts to discover (`hosts`), or ask for `all` rows with a bmc",
            ))
        }
        (false, false) => {}
    }
    if body.hosts.len() > MAX_HOSTS {
        return Err(HttpError::bad_request(format!("at most {MAX_HOSTS} hosts per request")));
    }
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for h in &body.hosts {
        let name = parse_hostname(h).map_err(HttpError::bad_request)?;
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(Some(out))
}

/// The columns an applied proposal writes, among those the inventory has.
fn fields(p: &Proposal, columns: &[String]) -> Fields {
    let has = |c: &str| columns.iter().any(|k| k == c);
    let mut out = Vec::new();
    if let (Some(m), true) = (p.mac.write(), has("mac")) {
        out.push(("mac".to_string(), m.to_string()));
    }
    if let (Some(u), true) = (p.uuid.write(), has("uuid")) {
        out.push(("uuid".to_string(), u.to_string()));
    }
    if let (Some(s), true) = (p.serial.write(), has("serial")) {
        out.push(("serial".to_string(), s.clone()));
    }
    Fields(out)
}

/// One host's result from its BMC's answer.
fn result_of(read: Read, row: &Row, columns: &[String], overwrite: bool) -> HostResult {
    let (found, nics) = match read.result {
        Ok(r) => r,
        Err(e) => return HostResult::failed(read.host, row.mac, e),
    };
    let mut p = propose(row, &found, overwrite);
    let mut notes = Vec::new();
    // A value the inventory has no column for is reported, not written.
    for (column, writes) in [
        ("mac", p.mac.write().is_some()),
        ("uuid", p.uuid.write().is_some()),
        ("serial", p.serial.write().is_some()),
    ] {
        if writes && !columns.iter().any(|c| c == column) {
            notes.push(format!(
                "the inventory has no `{column}` column, so the {column} found is not recorded; add the column (empty) to record it"
            ));
            match column {
                "mac" => p.mac = Field::Nothing { old: None },
                "uuid" => p.uuid = Field::Nothing { old: None },
                _ => p.serial = Field::Nothing { old: None },
            }
        }
    }
    if nics.uuid.is_some() && found.uuid.is_none() {
        notes.push("the BMC's UUID is not a usable UUID; not recorded".into());
    }
    if nics.truncated {
        notes.push(format!(
            "the BMC lists more than {} interfaces; only the first were considered",
            crate::redfish::MAX_INTERFACES
        ));
    }
    for (what, field) in [("uuid", uuid_line(&p.uuid)), ("serial", serial_line(&p.serial))] {
        if let Some(line) = field {
            notes.push(format!("{what}: {line}"));
        }
    }
    let summary = match &p.mac {
        Field::Fill { .. } => format!("fill: {}", p.choice.describe()),
        Field::Unchanged { .. } => format!("unchanged: {}", p.choice.describe()),
        Field::Replace { .. } => format!("replace (overwrite): {}", p.choice.describe()),
        Field::Keep { proposed, .. } => format!(
            "kept as typed: the BMC proposes {proposed} ({}); --overwrite replaces it",
            p.choice.describe()
        ),
        Field::Nothing { .. } => p.choice.describe(),
    };
    let new_mac = p.mac.write().copied().or(row.mac);
    HostResult {
        host: read.host,
        old_mac: row.mac,
        new_mac,
        summary,
        changes: p.changes(),
        reported_uuid: nics.uuid.clone(),
        reported_serial: nics.serial.clone(),
        interfaces: nics.interfaces,
        notes,
        error: None,
        proposal: Some(p),
    }
}

fn uuid_line(f: &Field<SystemUuid>) -> Option<String> {
    match f {
        Field::Fill { new } => Some(format!("fill {new}")),
        Field::Replace { old, new } => Some(format!("replace {old} with {new}")),
        Field::Keep { old, proposed } => Some(format!(
            "the row has {old}, the BMC reports {proposed}; kept (--overwrite replaces it)"
        )),
        _ => None,
    }
}

fn serial_line(f: &Field<String>) -> Option<String> {
    match f {
        Field::Fill { new } => Some(format!("fill {new:?}")),
        Field::Replace { old, new } => Some(format!("replace {old:?} with {new:?}")),
        Field::Keep { old, proposed } => Some(format!(
            "the row has {old:?}, the BMC reports {proposed:?}; kept (--overwrite replaces it)"
        )),
        _ => None,
    }
}
