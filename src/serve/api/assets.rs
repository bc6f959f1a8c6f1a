//! `GET /assets/{path}`: files of `--assets` for installers.

use crate::serve::app::service::Service;
use crate::serve::web::reply::{HttpError, Payload, Reply, TEXT};
use crate::serve::web::request::Req;

pub(crate) fn asset(svc: &Service, req: &Req, rel: Option<String>) -> Result<Reply, HttpError> {
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
