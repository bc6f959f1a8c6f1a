//! The console's embedded page (`/ui/`) and the headers every console answer carries.

use crate::serve::web::reply::{HttpError, Payload, Reply};

/// The console's files, embedded at compile time.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
];

/// The policy of the page: its own files only, nothing inline, never framed.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The policy of every other answer: nothing at all may load from it.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the security headers every non-boot answer carries (the page's CSP for `/ui/`).
pub fn harden(mut reply: Reply, page: bool) -> Reply {
    let csp = if page { PAGE_CSP } else { API_CSP };
    reply.headers.push(("Content-Security-Policy", csp.into()));
    reply.headers.push(("X-Content-Type-Options", "nosniff".into()));
    reply.headers.push(("Referrer-Policy", "no-referrer".into()));
    reply.headers.push(("X-Frame-Options", "DENY".into()));
    if !page {
        reply.headers.push(("Cache-Control", "no-store".into()));
    }
    reply
}

/// `GET /ui/{file}`: a file of the page; `/ui` itself redirects to `/ui/`.
pub fn ui_file(file: Option<&str>) -> Result<Reply, HttpError> {
    let Some(file) = file else {
        return Ok(Reply::text("see /ui/\n".into())
            .with_status(308)
            .header("Location", "/ui/".into()));
    };
    let (_, content_type, body) = FILES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| HttpError::not_found("no such file of the console"))?;
    Ok(Reply {
        status: 200,
        content_type,
        body: Payload::Text((*body).to_string()),
        headers: vec![("Cache-Control", "no-cache".into())],
    })
}
