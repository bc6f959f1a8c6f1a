//! `GET /events`: pages of the audit log.

use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::Role;
use crate::serve::domain::query::EventFilter;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

/// 1 MiB, whatever `limit` asks), with the offset to ask from next. Each page reads at most
/// [`crate::serve::store::audit::MAX_SCAN_BYTES`] of log, whatever the filters: a filter that
/// matches little gets short (even empty) pages with a cursor, and says how much it read
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
                    "{name} must be a whole number (a byte offset from `next` or `before`)"
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
        svc.audit.sync();
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
        let page =
            page.map_err(|e| HttpError::internal(format!("cannot read the audit log: {e}")))?;
        Ok(Reply::json(&page))
    })
    .await?
}
