//! A request reduced to what handlers use ([`Req`]): origin-form target, bounded body and
//! query, the client's address (trusting `X-Forwarded-For` only from `--trusted-proxy`).

use crate::serve::web::limits::*;
use crate::serve::web::reply::HttpError;

use crate::serve::web::routes::Route;
use bytes::Bytes;
use hyper::header::{HeaderName, CONTENT_LENGTH};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A request, reduced to what the handlers use.
pub struct Req {
    pub method: hyper::Method,
    pub route: Route,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
    /// The console's session cookie (`bf_session`), when the request carries one.
    pub session: Option<String>,
    /// `X-CSRF-Token`: the console's synchronizer token, for state-changing requests.
    pub csrf: Option<String>,
    /// `Origin` and `Sec-Fetch-Site`, checked on session requests when the browser sends them.
    pub origin: Option<String>,
    /// `Host`: read only to compare with `Origin` (a browser sets both; a page of another site
    /// cannot). Never written into anything.
    pub host: Option<String>,
    pub fetch_site: Option<String>,
    /// The client's address: the TCP peer's, or, when that peer is a trusted proxy
    /// (`--trusted-proxy`), the one it forwarded (see [`client_address`]). The login limiter,
    /// the audit log and the server log all use this one.
    pub peer: IpAddr,
    pub body: Bytes,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// Reduces a request to a [`Req`], or answers it directly (bad target, slow or oversized body).
pub(crate) async fn to_req(
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
    body_timeout: Duration,
    settings: &Settings,
) -> Result<Req, HttpError> {
    let (parts, body) = request.into_parts();
    // Only origin-form targets (`/path?query`): absolute-form and `*` are refused.
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() && pq.path().starts_with('/') => pq,
        _ => return Err(HttpError::bad_request("the request target must be an absolute path")),
    };
    let header = |name: HeaderName| {
        parts.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let route = Route::parse(target.path());
    let limit = match route {
        Route::Inventory | Route::InventoryCheck => MAX_UPLOAD,
        _ => MAX_BODY,
    };
    let too_big = || {
        HttpError::new(413, format!("the body is larger than {limit} bytes"))
            .header("Connection", "close".into())
    };
    let announced =
        parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let over = announced.is_some_and(|n| n > limit as u64);
    if over && parts.headers.contains_key(hyper::header::EXPECT) {
        return Err(too_big()); // the client waits for 100-continue: it has sent nothing yet
    }
    let body = match tokio::time::timeout(body_timeout, read_body(body, over, limit)).await {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => return Err(too_big()),
        Ok(Err(())) => return Err(HttpError::bad_request("the body could not be read")),
        Err(_) => {
            return Err(HttpError::new(408, "the body did not arrive in time")
                .header("Connection", "close".into()))
        }
    };
    Ok(Req {
        method: parts.method,
        route,
        query: parse_query(target.query().unwrap_or("")),
        authorization: header(hyper::header::AUTHORIZATION),
        range: header(hyper::header::RANGE),
        if_range: header(hyper::header::IF_RANGE),
        if_none_match: header(hyper::header::IF_NONE_MATCH),
        session: session_cookie(&parts.headers, settings.session_cookie),
        csrf: header(HeaderName::from_static("x-csrf-token")),
        origin: header(hyper::header::ORIGIN),
        host: header(hyper::header::HOST),
        fetch_site: header(HeaderName::from_static("sec-fetch-site")),
        peer: client_address(peer.ip(), &parts.headers, &settings.trusted_proxies),
        body,
    })
}

/// The client's address. Only when the TCP peer is a trusted proxy is `X-Forwarded-For` read:
/// the rightmost address in it that is not itself a trusted proxy (each proxy appends the
/// address it was reached from, so entries to the left of that one are the client's own claims
/// and cannot be believed). A header that is malformed (anything but comma-separated IP
/// addresses), longer than [`MAX_FORWARDED`], or absent leaves the peer's own address: a proxy
/// that forwards garbage is not trusted for that request.
pub fn client_address(
    peer: IpAddr,
    headers: &hyper::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        trusted.iter().any(|net| net.contains(&ip))
    };
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut total = 0usize;
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(HeaderName::from_static("x-forwarded-for")) {
        total += value.len() + 1;
        if total > MAX_FORWARDED {
            return peer;
        }
        let Ok(text) = value.to_str() else { return peer };
        for item in text.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer,
            }
        }
    }
    // Right to left: the first hop that is not a trusted proxy is the client; when every hop
    // is one, the leftmost is as far as the chain goes.
    hops.iter().rev().find(|ip| !is_trusted(**ip)).or(hops.first()).copied().unwrap_or(peer)
}

/// The value of the `bf_session` cookie, from any `Cookie` header; only a value of the shape the
/// service hands out (64 hex digits) is kept, so nothing else of a cookie ever reaches a handler.
fn session_cookie(headers: &hyper::HeaderMap, name_eq: &str) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(name_eq))
        .find(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// Reads a body of at most `limit` bytes; `None` if it is larger. Past the limit it keeps
/// reading (up to [`DISCARD`]) and drops what it reads, so that a client that writes its whole
/// body before reading gets the 413 rather than a connection reset.
async fn read_body(
    mut body: hyper::body::Incoming,
    mut over: bool,
    limit: usize,
) -> Result<Option<Bytes>, ()> {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else { continue }; // trailers
        seen += data.len();
        over |= seen > limit;
        if over {
            kept = Vec::new();
            if seen > DISCARD {
                break; // hyper closes the connection after the answer
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    Ok((!over).then(|| Bytes::from(kept)))
}

/// Query parameters, percent-decoded (`+` is a space); the first value of a name wins. At most
/// [`MAX_PARAMS`] names are kept and values are cut at [`MAX_PARAM_LEN`] bytes, so no query can
/// make a handler hold or pass on much text.
fn parse_query(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut text = percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned();
        if text.len() > MAX_PARAM_LEN {
            let mut cut = MAX_PARAM_LEN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text
    };
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()).take(MAX_PARAMS) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.entry(decode(k)).or_insert_with(|| decode(v));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn forwarded_addresses_are_taken_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> =
            vec!["127.0.0.1/32".parse().unwrap(), "10.9.0.0/16".parse().unwrap()];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let h = |values: &[&str]| {
            let mut m = hyper::HeaderMap::new();
            for v in values {
                m.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not from a trusted proxy, or no proxies configured: the header is ignored.
        assert_eq!(client_address(other, &h(&["10.0.0.1"]), &trusted), other);
        assert_eq!(client_address(proxy, &h(&["10.0.0.1"]), &[]), proxy);
        // From one: the rightmost hop that is not a trusted proxy, across header lines.
        assert_eq!(client_address(proxy, &h(&["10.0.0.1"]), &trusted), ip("10.0.0.1"));
        let chain = h(&["6.6.6.6, 10.0.0.2", "10.9.1.1"]);
        assert_eq!(client_address(proxy, &chain, &trusted), ip("10.0.0.2"), "spoofed left part");
        assert_eq!(client_address(proxy, &h(&["10.9.3.3"]), &trusted), ip("10.9.3.3"));
        assert_eq!(client_address(proxy, &h(&[" 2001:db8::1 "]), &trusted), ip("2001:db8::1"));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(client_address(mapped, &h(&["10.0.0.1"]), &trusted), ip("10.0.0.1"));
        // Malformed, too long or absent: the proxy's own address.
        for bad in ["10.0.0.1, unknown", "10.0.0.1:5555", "", "10.0.0.1,,10.0.0.2", "_"] {
            assert_eq!(client_address(proxy, &h(&[bad]), &trusted), proxy, "{bad:?}");
        }
        let long = vec!["10.0.0.1"; 200].join(",");
        assert_eq!(client_address(proxy, &h(&[&long]), &trusted), proxy);
        assert_eq!(client_address(proxy, &h(&[]), &trusted), proxy);
    }

    #[test]
    fn queries_are_decoded_and_bounded() {
        let q = parse_query("mac=aa-bb&x&token=a+b&mac=zz&long=".to_string().as_str());
        assert_eq!((q["mac"].as_str(), q["x"].as_str(), q["token"].as_str()), ("aa-bb", "", "a b"));
        let long = format!("v={}", "é".repeat(1000));
        assert!(parse_query(&long)["v"].len() <= MAX_PARAM_LEN);
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_query(&many.join("&")).len(), MAX_PARAMS);
    }
}
