//! Media by URL: `/media/{file}` (a node's image, by signed URL) and minting those URLs.

use crate::inventory::parse_hostname;
use crate::serve::app::guard::{api_host, authorize};
use crate::serve::app::media::MediaOptions;
use crate::serve::app::media::Refusal;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::Actor;
use crate::serve::domain::event::Event;
use crate::serve::util::rfc3339;
use crate::serve::web::files::RangeSpec;
use crate::serve::web::reply::{HttpError, Payload, Reply};
use crate::serve::web::request::Req;
use serde::Serialize;
use std::sync::Arc;

/// `GET /media/{host}.{iso,usb.img,efi.img}?OPTIONS&exp=..&sig=..`: a node's image, the bytes
/// `bootforge build` writes for it, by signed URL (see [`crate::serve::app::media`]). Ranges,
/// `HEAD`, `If-Range` and `If-None-Match` are answered as BMCs and `curl -C -` expect.
pub(crate) async fn media(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    file: String,
) -> Result<Reply, HttpError> {
    let no_such = || {
        HttpError::not_found("no such medium; media are HOST.iso, HOST.usb.img and HOST.efi.img")
    };
    let (raw, format) = crate::serve::app::media::parse_file(&file).ok_or_else(no_such)?;
    let host = parse_hostname(raw).map_err(|_| no_such())?;
    let opts = MediaOptions::parse(
        format,
        req.param("arch"),
        req.param("medium"),
        req.param("efi_loader"),
    )
    .map_err(|e| HttpError::bad_request(format!("bad media option {e}")))?;
    let snap = svc.catalog.snapshot();
    // Signed by one replica, checked by any: the database's clock.
    let now = svc.store.now_ms() / 1000;
    if let Err(refusal) =
        svc.media.signer.check(&host, &opts, req.param("exp"), req.param("sig"), now)
    {
        let known = snap.inventory.get(&host).is_some();
        let record = Event::MediaDenied {
            host: known.then(|| host.clone()),
            format: format.as_str(),
            reason: refusal.as_str(),
            peer: req.peer,
        };
        svc.audit.note(&record);
        tracing::debug!(peer = %req.peer, reason = refusal.as_str(), "media URL refused");
        let why = match refusal {
            Refusal::Unsigned => "media URLs must be signed",
            Refusal::Expired => "this media URL has expired",
            Refusal::BadSignature => {
                "this media URL is not valid (altered, or signed by another key)"
            }
        };
        return Err(HttpError::new(
            403,
            format!("{why}; get one from POST /hosts/{{host}}/media-url or `bootforge media-url`"),
        ));
    }
    let node = snap
        .inventory
        .get(&host)
        .cloned()
        .ok_or_else(|| HttpError::not_found(format!("{host} is no longer in the inventory")))?;
    let server = svc.base_for(&node, req.tls).ok_or_else(|| {
        HttpError::internal(format!("{host}: no server URL (the catalog should have refused it)"))
    })?;
    let modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(snap.loaded_at),
    );
    drop(snap);
    let built = svc
        .blocking(move |svc| svc.media.image(&node, &server, svc.secret.as_ref(), &opts))
        .await?
        .map_err(|e| HttpError::internal(format!("building {host}'s {format} image: {e:#}")))?;
    let image = built.image;
    let (len, etag) = (image.len(), image.etag());
    let mut headers = vec![
        ("Accept-Ranges", "bytes".to_string()),
        ("ETag", etag.clone()),
        ("Last-Modified", modified.clone()),
        ("Cache-Control", "private, no-transform".to_string()),
        ("Content-Disposition", format!("attachment; filename=\"{file}\"")),
    ];
    let content_type = match format {
        crate::media::Format::Iso => "application/x-iso9660-image",
        _ => "application/octet-stream",
    };
    if let Some(tags) = &req.if_none_match {
        let matched = tags
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag);
        if matched {
            return Ok(Reply {
                status: 304,
                content_type,
                body: Payload::Text(String::new()),
                headers,
            });
        }
    }
    // A range applies only if the client still has these bytes (RFC 9110 §13.1.5): If-Range
    // must name this (strong) ETag. A date is not enough: two inventories loaded within one
    // second share a Last-Modified but not their bytes.
    let range = match &req.if_range {
        Some(v) if *v != etag => None,
        _ => req.range.as_deref(),
    };
    let (status, start, end) = match crate::serve::web::files::parse_range(range, len) {
        RangeSpec::Full => (200, 0, len),
        RangeSpec::Part(a, z) => {
            headers.push(("Content-Range", format!("bytes {a}-{z}/{len}")));
            (206, a, z + 1)
        }
        RangeSpec::Unsatisfiable => {
            return Err(HttpError::new(416, "the requested range is outside the image")
                .header("Content-Range", format!("bytes */{len}")));
        }
    };
    if start == 0 && req.method == hyper::Method::GET {
        svc.audit.note(&Event::MediaServed {
            host: host.clone(),
            format: format.as_str(),
            peer: req.peer,
            status,
        });
    }
    if req.method == hyper::Method::GET {
        svc.metrics.media_bytes(end - start);
    }
    Ok(Reply {
        status,
        content_type,
        body: Payload::Chunks(Box::new(image.chunks(start, end, MEDIA_CHUNK)), end - start),
        headers,
    })
}

/// The largest buffer handed to hyper at once when streaming an image.
const MEDIA_CHUNK: usize = 256 << 10;

/// The body of `POST /hosts/{host}/media-url`; every field is optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MediaUrlBody {
    format: Option<String>,
    arch: Option<String>,
    medium: Option<String>,
    efi_loader: Option<String>,
    /// Seconds the URL stays valid.
    ttl: Option<u64>,
}

/// What `POST /hosts/{host}/media-url` answers.
#[derive(Serialize)]
pub struct MediaUrl {
    pub host: String,
    pub format: &'static str,
    pub url: String,
    pub expires_at: String,
    pub size: u64,
}

/// `POST /hosts/{host}/media-url` (role reimage): a signed URL of the host's medium.
pub(crate) async fn media_url(
    svc: &Arc<Service>,
    req: &Arc<Req>,
    raw: String,
) -> Result<Reply, HttpError> {
    let who = Actor::from(&authorize(svc, req, crate::serve::app::bmc::MINTS_MEDIA_URLS).await?);
    let host = api_host(&raw)?;
    let body: MediaUrlBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        MediaUrlBody::default()
    } else {
        serde_json::from_slice(&req.body).map_err(|_| {
            HttpError::bad_request(
                "the body must be JSON with any of format (iso, usb, efi), arch (x86_64,arm64), \
                 medium (cd, usb), efi_loader (ipxe, snponly), ttl (seconds)",
            )
        })?
    };
    let format = match body.format.as_deref() {
        None => crate::media::Format::Iso,
        Some(f) => f.parse().map_err(|_| {
            HttpError::bad_request("bad media option format: expected iso, usb or efi")
        })?,
    };
    let opts = MediaOptions::parse(
        format,
        body.arch.as_deref(),
        body.medium.as_deref(),
        body.efi_loader.as_deref(),
    )
    .map_err(|e| HttpError::bad_request(format!("bad media option {e}")))?;
    let ttl = body.ttl.unwrap_or(crate::serve::app::media::DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > crate::serve::app::media::MAX_TTL_SECS {
        return Err(HttpError::bad_request(format!(
            "ttl must be 1 to {} seconds",
            crate::serve::app::media::MAX_TTL_SECS
        )));
    }
    let snap = svc.catalog.snapshot();
    let node = snap.inventory.get(&host).cloned().ok_or_else(|| {
        HttpError::not_found(format!(
            "{host} is not in the inventory {}; add it there first",
            snap.inventory.source()
        ))
    })?;
    drop(snap);
    let base = match &svc.config.media_base_url {
        Some(url) => url.to_string(),
        None => svc
            .base_for(&node, req.tls)
            .ok_or_else(|| HttpError::internal("no base URL"))?
            .to_string(),
    };
    // Built now, so a URL is never handed out for an image that cannot be made.
    let server = svc.base_for(&node, req.tls);
    let o = opts.clone();
    let size = svc
        .blocking(move |svc| {
            let server = server.expect("base_for succeeded");
            svc.media.image(&node, &server, svc.secret.as_ref(), &o).map(|m| m.image.len())
        })
        .await?
        .map_err(|e| HttpError::internal(format!("building {host}'s {format} image: {e:#}")))?;
    let exp = svc.store.now_ms() / 1000 + ttl;
    let url = svc.media.url(&base, &host, &opts, exp);
    svc.audit.note(&Event::MediaUrl {
        host: host.clone(),
        format: format.as_str(),
        who,
        peer: req.peer,
        expires: exp,
    });
    Ok(Reply::json(&MediaUrl {
        host,
        format: format.as_str(),
        url,
        expires_at: rfc3339(exp * 1000),
        size,
    }))
}
