//! Inventory editing from the console: the CSV, one row, or a whole upload; checked whole,
//! written atomically, reloaded.
//!
//! Two homes, one API ([`Home`]): with `serve --inventory FILE` the file is edited (on a single
//! service; with a shared database, edits are refused with 409, since every replica has its own
//! copy of the file); without `--inventory`, the database's inventory is, by one transaction
//! that every replica sees ([`crate::serve::store::inventory`]). The answers are the same in both:
//! a `version` to send back, 409 when it is stale, 422 with errors by line and column.
//!
//! Inventory edits go through [`crate::serve::console::editor`] (one row, every other byte kept),
//! are validated whole by [`crate::inventory::Inventory::check`] (the code behind `bootforge
//! check`) plus the service's own checks of a reload, and only then written atomically
//! ([`crate::atomic`]) and reloaded. An invalid edit writes nothing and answers 422 with its errors
//! by line and column (the first [`crate::inventory::MAX_REPORTED_ERRORS`], with their total).
//! Every change names the inventory `version` it was made against (428 without one, 409 when the
//! file has changed since), so no change silently undoes another.

use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::console::editor::{self, Edit};
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

/// `GET /inventory` (role admin): the columns and every row as written, for the edit form.
pub async fn inventory(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Admin).await?;
    svc.blocking(|svc| {
        let current = read_inventory(svc)?;
        let (columns, rows) = if current.text.is_empty() && home(svc) == Home::Database {
            (Vec::new(), Vec::new()) // no inventory in the database yet: upload one
        } else {
            editor::rows(&current.text).map_err(|e| HttpError::new(409, e.to_string()))?
        };
        let rows: Vec<_> = rows
            .into_iter()
            .map(|r| {
                let fields: BTreeMap<&str, &str> = columns
                    .iter()
                    .map(String::as_str)
                    .zip(r.fields.iter().map(String::as_str))
                    .collect();
                serde_json::json!({ "line": r.line, "fields": fields })
            })
            .collect();
        Ok(Reply::json(&serde_json::json!({
            "columns": columns,
            "known_columns": crate::inventory::KNOWN_COLUMNS,
            "rows": rows,
            "version": current.version,
            "source": home(svc).name(),
        })))
    })
    .await?
}

/// Where the inventory the console edits lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// `--inventory FILE`: the file.
    File,
    /// No `--inventory`: the database, shared by every replica.
    Database,
}

impl Home {
    /// As `GET /inventory` names it (`file` or `database`).
    fn name(self) -> &'static str {
        match self {
            Home::File => "file",
            Home::Database => "database",
        }
    }
}

fn home(svc: &Service) -> Home {
    match svc.config.inventory {
        Some(_) => Home::File,
        None => Home::Database,
    }
}

/// The inventory's current text, and the version a change must name.
pub(crate) struct Current {
    pub(crate) text: String,
    pub(crate) version: String,
}

pub(crate) fn read_inventory(svc: &Service) -> Result<Current, HttpError> {
    match &svc.config.inventory {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| HttpError::internal(format!("cannot read {}: {e}", path.display())))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| HttpError::new(409, "the inventory is not UTF-8; fix it by hand"))?;
            Ok(Current { version: version(&text), text })
        }
        None => {
            let stored = svc.store.inventory_blocking()?;
            Ok(Current { text: stored.csv(), version: stored.version.to_string() })
        }
    }
}

/// A short fingerprint of the file's text, so an edit made against an old version is refused
/// (409). The database's inventory has a version counter of its own, shown as a number.
pub(crate) fn version(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// Every change of the inventory is conditional: it names the `version` (from `GET /inventory`
/// or `POST /inventory/check`) the operator saw. Without one the change could silently undo
/// another made meanwhile, so it is refused (428); a version that is no longer the file's is a
/// conflict (409). Called with the edit lock held.
pub(crate) fn require_version(expected: Option<&str>, current: &Current) -> Result<(), HttpError> {
    match expected {
        None => Err(HttpError::new(
            428,
            "this change must name the inventory version it was made against: send the `version` from GET /inventory (or POST /inventory/check)",
        )),
        Some(v) if v != current.version => Err(HttpError::new(
            409,
            "the inventory changed since it was loaded; reload it and make the change again",
        )),
        Some(_) => Ok(()),
    }
}

/// The version a request names: its `version` query parameter, or for a row edit the body's
/// `version` field (both given must agree).
fn requested_version(req: &Req, body: Option<String>) -> Result<Option<String>, HttpError> {
    match (req.param("version").map(str::to_string), body) {
        (Some(q), Some(b)) if q != b => Err(HttpError::bad_request(
            "the `version` query parameter and the body's `version` differ; send one",
        )),
        (q, b) => Ok(q.or(b)),
    }
}

/// The body of a row edit. `fields` keeps every key as sent (see [`editor::Fields`]), so a
/// repeated column is refused rather than silently taken once.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RowBody {
    #[serde(default)]
    fields: editor::Fields,
    /// The `version` the form was filled from; when it no longer matches, 409.
    version: Option<String>,
}

/// One error of an invalid inventory, for the page.
#[derive(Serialize)]
struct FieldErrorView {
    line: u64,
    column: String,
    message: String,
    /// Whether the error is on the edited row (shown next to its field).
    on_row: bool,
}

/// The errors of an invalid inventory as answered: the first
/// [`crate::inventory::MAX_REPORTED_ERRORS`] in file order, their total, and a note when some
/// were left out.
#[derive(Serialize)]
struct ErrorsView {
    errors: Vec<FieldErrorView>,
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl ErrorsView {
    fn new(report: crate::inventory::ErrorReport, row: Option<u64>) -> ErrorsView {
        let note = report.truncated().then(|| {
            format!(
                "only the first {} of {} errors are listed; fix them and check again",
                report.errors.len(),
                report.total
            )
        });
        let errors = report
            .errors
            .into_iter()
            .map(|e| FieldErrorView {
                on_row: row == Some(e.line),
                line: e.line,
                column: e.column,
                message: e.message,
            })
            .collect();
        ErrorsView { errors, total: report.total, note }
    }

    /// The view as a JSON object, for the answer to add its own fields to.
    fn into_json(self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

/// Refuses edits of an inventory file on a shared database (see the body).
pub(crate) fn edits_allowed(svc: &Service) -> Result<(), HttpError> {
    // With replicas (a shared database) and `--inventory`, each replica reads its own copy of
    // the file: an edit here would change one replica's copy and be lost or contradicted by the
    // others'. Their file is the source of truth, kept in step by configuration management. The
    // database's inventory (no `--inventory`) is the one every replica shares and edits.
    if home(svc) == Home::File && svc.store.engine() != crate::serve::store::engine::Engine::Sqlite
    {
        return Err(HttpError::new(
            409,
            "this service runs on a shared database (replicas) with --inventory: the inventory file is kept by configuration management on every replica, so it is not edited here. Keep the inventory in the database instead (bootforge inventory import, then start without --inventory) to edit it from any replica; see docs/STATE.md",
        ));
    }
    Ok(())
}

/// `POST /inventory/hosts`, `PUT` and `DELETE /inventory/hosts/{host}` (role admin).
pub async fn edit_row(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    host: Option<String>,
) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    edits_allowed(svc)?;
    let body: RowBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        RowBody { fields: editor::Fields::default(), version: None }
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request("the body must be JSON: {\"fields\": {\"COLUMN\": \"VALUE\", …}, \"version\": \"…\"}")
        })?
    };
    let expected = requested_version(req, body.version)?;
    let (edit, action) = match (host, &req.method) {
        (None, _) => (Edit::Add(body.fields), "add"),
        (Some(h), &hyper::Method::DELETE) => (Edit::Remove { host: h }, "remove"),
        (Some(h), _) => (Edit::Change { host: h, fields: body.fields }, "change"),
    };
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = read_inventory(svc)?;
        require_version(expected.as_deref(), &current)?;
        let applied = editor::apply(&current.text, &edit).map_err(|e| match e {
            editor::EditError::NoSuchHost(_) => HttpError::not_found(e.to_string()),
            editor::EditError::WouldTouchOthers(_) => HttpError::new(409, e.to_string()),
            _ => HttpError::bad_request(e.to_string()),
        })?;
        let change = Change {
            action,
            removed: (action == "remove").then_some(applied.host),
            renamed_from: applied.renamed_from,
            hosts: Vec::new(),
        };
        replace(svc, &Actor::from(&caller), peer, change, &applied.text, applied.line, &current)
    })
    .await?
}

/// `POST /inventory/check` (role admin): validates a CSV body; writes nothing. Answers the
/// current file's `version` too: the one a `PUT /inventory` of this body must name.
pub async fn check_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Admin).await?;
    let text = upload_text(req)?;
    svc.blocking(move |svc| {
        let source = upload_source(svc);
        let current = read_inventory(svc).map(|c| c.version).ok();
        Ok(match checked(svc, &source, &text) {
            Ok(inv) => Reply::json(
                &serde_json::json!({ "valid": true, "nodes": inv.len(), "version": current }),
            ),
            Err(report) => {
                let mut body = ErrorsView::new(report, None).into_json();
                body["valid"] = false.into();
                body["version"] = current.into();
                Reply::json(&body).with_status(422)
            }
        })
    })
    .await?
}

/// `PUT /inventory?version=V` (role admin): replaces the whole CSV with the body, if it is
/// valid and the file is still at version `V`.
pub async fn replace_upload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    edits_allowed(svc)?;
    let expected = requested_version(req, None)?;
    let text = upload_text(req)?;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let _one = svc.inventory_edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = read_inventory(svc)?;
        require_version(expected.as_deref(), &current)?;
        let change =
            Change { action: "upload", removed: None, renamed_from: None, hosts: Vec::new() };
        replace(svc, &Actor::from(&caller), peer, change, &text, None, &current)
    })
    .await?
}

fn upload_text(req: &Req) -> Result<String, HttpError> {
    String::from_utf8(req.body.to_vec())
        .map_err(|_| HttpError::bad_request("the CSV must be UTF-8"))
}

/// Uploads are named like the file they would replace, so errors read as `bootforge check`'s
/// (`upload` for the database's inventory).
pub(crate) fn upload_source(svc: &Service) -> String {
    svc.config
        .inventory
        .as_deref()
        .and_then(|p| p.file_name())
        .map_or("upload".into(), |n| n.to_string_lossy().into_owned())
}

/// Validates `text` as the inventory: the CSV itself, then what a reload checks (profiles,
/// `server` columns). At most [`crate::inventory::MAX_REPORTED_ERRORS`] errors are kept.
pub(crate) fn checked(
    svc: &Service,
    source: &str,
    text: &str,
) -> Result<crate::inventory::Inventory, crate::inventory::ErrorReport> {
    let inv = editor::validate(source, text)?;
    svc.catalog.check(&inv).map_err(|e| {
        let error = crate::inventory::FieldError {
            source: source.to_string(),
            line: 0,
            column: "-".into(),
            message: e,
        };
        crate::inventory::ErrorReport::of(vec![error], crate::inventory::MAX_REPORTED_ERRORS)
    })?;
    Ok(inv)
}

/// What a write changes, for its audit record.
pub(crate) struct Change {
    /// `add`, `change`, `remove`, `upload` or `discover`.
    pub(crate) action: &'static str,
    /// For a removal, the host name of the row removed, as the file had it.
    pub(crate) removed: Option<String>,
    /// For a change that renamed its row, the name the row had, as the file had it.
    pub(crate) renamed_from: Option<String>,
    /// For a change of several rows (`discover`), their validated host names.
    pub(crate) hosts: Vec<String>,
}

/// Validates `new` and, only if it is valid, writes it over the inventory and reloads: the file
/// (temp file, fsync, rename, keeping the file's mode; the audit record first), or the
/// database's inventory (one transaction with its audit record, against `current`'s version).
///
/// The audit record names what was written, never what was asked: the host of an added or
/// changed row is the validated row's own name (found by its line in the new text), that of a
/// removed row the name its row had; both are bounded (a host name is at most 253 characters,
/// and a removed row's odd name is quoted and cut, see [`crate::inventory::quoted`]).
pub(crate) fn replace(
    svc: &Arc<Service>,
    who: &Actor,
    peer: std::net::IpAddr,
    change: Change,
    new: &str,
    row: Option<u64>,
    current: &Current,
) -> Result<Reply, HttpError> {
    let action = change.action;
    let source = upload_source(svc);
    let inv = match checked(svc, &source, new) {
        Ok(inv) => inv,
        Err(report) => return Ok(invalid(report, row)),
    };
    let nodes = inv.len();
    let host = match (row, change.removed) {
        (Some(line), _) => {
            let node = inv.nodes().iter().find(|n| n.line == line).ok_or_else(|| {
                HttpError::internal("the edited row is not in the validated inventory")
            })?;
            Some(node.hostname.clone())
        }
        (None, Some(removed)) => Some(match crate::inventory::parse_hostname(&removed) {
            Ok(name) => name,
            Err(_) => crate::inventory::quoted(&removed),
        }),
        (None, None) => None,
    };
    // A renamed row's old name, as a removed row's: validated, or quoted and cut.
    let old_host = change.renamed_from.map(|old| {
        crate::inventory::parse_hostname(&old).unwrap_or_else(|_| crate::inventory::quoted(&old))
    });
    let record = |version: Option<u64>| Event::InventoryChanged {
        who: who.clone(),
        peer: Some(peer),
        action,
        host: host.clone(),
        old_host: old_host.clone(),
        hosts: change.hosts.clone(),
        nodes,
        version,
    };
    let version = match &svc.config.inventory {
        Some(path) => {
            svc.audit.append_durable(&record(None)).map_err(|e| {
                tracing::error!(error = %e, "cannot append to the audit log; the inventory edit is refused");
                HttpError::new(500, "the audit log cannot be written, so nothing was changed")
            })?;
            let mode = std::fs::metadata(path).map(|m| m.permissions()).ok();
            crate::atomic::write_with(path, |f| {
                if let Some(mode) = mode {
                    f.set_permissions(mode)?;
                }
                f.write_all(new.as_bytes())
            })
            .map_err(|e| HttpError::internal(format!("cannot write {}: {e}", path.display())))?;
            version(new)
        }
        None => {
            // Checked against the version `current` was read at: a change another replica
            // committed since is a conflict, never overwritten.
            let expect: u64 = current.version.parse().map_err(|_| {
                HttpError::internal("the database inventory's version is not a number")
            })?;
            let how = crate::serve::store::inventory::Replace {
                source: &source,
                by: &who.by,
                check: &|_| Ok(()), // `checked` above ran the service's checks
                record: &|_, v| record(Some(v)),
            };
            use crate::serve::store::inventory::WriteError;
            match svc.store.replace_inventory_blocking(new, expect, &how) {
                Ok(written) => written.version.to_string(),
                Err(WriteError::Invalid(report)) => return Ok(invalid(report, row)),
                Err(WriteError::Conflict { .. }) => {
                    return Err(HttpError::new(
                        409,
                        "the inventory changed since it was loaded; reload it and make the change again",
                    ))
                }
                Err(WriteError::Store(e)) => return Err(e.into()),
            }
        }
    };
    let reloaded = svc.catalog.reload_if_changed(true);
    if reloaded {
        crate::serve::app::metrics::Metrics::inc(&svc.metrics.reloads_ok);
        svc.sweep_orphans();
    }
    tracing::info!(by = %who.by, action, host = host.as_deref().unwrap_or("-"), nodes, "inventory changed from the console");
    let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Reply::json(&serde_json::json!({
        "written": true,
        "nodes": nodes,
        "reloaded": reloaded,
        "reload_error": status.last_error,
        "generation": svc.catalog.snapshot().generation,
        "version": version,
    })))
}

/// The 422 answer of an inventory that would not be valid.
fn invalid(report: crate::inventory::ErrorReport, row: Option<u64>) -> Reply {
    let mut body = ErrorsView::new(report, row).into_json();
    body["error"] = "the inventory would not be valid; nothing was written".into();
    Reply::json(&body).with_status(422)
}
