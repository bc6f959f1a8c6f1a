//! `GET /events`: pages of the audit log.

use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::Role;
use crate::serve::domain::query::EventFilter;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

/// `GET /events`: a page of audit records, oldest first from `since` or newest first with
/// `order=newest` (at most `limit`, 1000, and 1 MiB, whatever `limit` asks), with the cursor to ask from next. Each page reads at most
/// [`crate::serve::store::audit::MAX_SCAN_RECORDS`] records, whatever the filters (`host` and
/// `event` are matched by the database's indexes; `by` is matched on what was read): a filter
/// that matches little gets short (even empty) pages with a cursor, and says how much it read
/// (`scanned`), so the cost of a request is bounded and following the cursors still finds
/// everything. Records are shown as the caller's role may see them
/// ([`crate::serve::domain::event::visible_to`]) before any filter looks at them.
pub(crate) async fn events(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let role = authorize(svc, req, Role::Read).await?.role;
    let parse = |name: &str, default: u64| -> Result<u64, HttpError> {
        match req.param(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                HttpError::bad_request(format!(
                    "{name} must be a whole number (a cursor from `next` or `before`)"
                ))
            }),
        }
    };
    let since = parse("since", 0)?;
    let limit = parse("limit", 1000)?.clamp(1, 1000) as usize;
    let filter = EventFilter::parse(|n| req.param(n).map(str::to_string));
    let newest = matches!(req.param("order"), Some("newest"));
    let before = match req.param("before") {
        None | Some("") => None,
        Some(_) => Some(parse("before", 0)?),
    };
    svc.blocking(move |svc| {
        svc.audit.sync_within(std::time::Duration::from_secs(1));
        let page = if newest {
            svc.audit.read_newest(limit, before, &filter, role)
        } else {
            svc.audit.read_page(
                since,
                limit,
                crate::serve::store::audit::MAX_PAGE_BYTES,
                &filter,
                role,
            )
        };
        let page = page?;
        Ok(Reply::json(&page))
    })
    .await?
}
