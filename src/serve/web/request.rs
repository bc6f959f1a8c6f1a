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
    /// Whether the request came over the service's own TLS listener. Set by the transport from
    /// the listener that accepted the connection, never from a header: a TLS proxy in front is
    /// `--public-url https://…` or `--console-secure-cookie`.
    pub tls: bool,
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
    tls: bool,
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
    // Before the body is read: a request refused for its forwarded address costs nothing more.
    let peer = client_address(peer.ip(), &parts.headers, &settings.trusted_proxies)?;
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
        peer,
        tls,
        body,
    })
}

/// The client's address. Only when the TCP peer is a trusted proxy is `X-Forwarded-For` read,
/// from the right: each proxy appends the address it was reached from, so hops are walked
/// right to left (across header lines, last line first), trusted proxies are skipped, and the
/// first hop that is not a trusted proxy is the client. Everything left of it is the client's
/// own claim: it is never read, so a client that sends `X-Forwarded-For: x` or a 10 KB header
/// is still counted under the address its proxy appended.
///
/// `Err` when the client's hop itself is malformed, or more than [`MAX_FORWARDED_HOPS`] hops
/// are all trusted proxies. A proxy that appends cannot produce either, so the proxy is
/// misconfigured (it passes a client's header on unchanged): the request is refused rather than
/// attributed to the proxy's address, which for a locked-out client would be a fresh identity
/// with fresh guesses (and would mis-attribute its refusals to the proxy). No header at all
/// leaves the proxy's own address (its health checks); every hop a trusted proxy leaves the
/// leftmost of them.
pub fn client_address(
    peer: IpAddr,
    headers: &hyper::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Result<IpAddr, ForwardedError> {
    let is_trusted = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        trusted.iter().any(|net| net.contains(&ip))
    };
    if trusted.is_empty() || !is_trusted(peer) {
        return Ok(peer);
    }
    let parse = |hop: &[u8]| {
        let hop = hop.trim_ascii();
        if hop.len() > MAX_HOP_LEN {
            return None;
        }
        std::str::from_utf8(hop).ok()?.parse::<IpAddr>().ok()
    };
    let mut leftmost_proxy = None;
    let mut read = 0usize;
    for line in headers.get_all(HeaderName::from_static("x-forwarded-for")).iter().rev() {
        for hop in line.as_bytes().rsplit(|b| *b == b',') {
            read += 1;
            if read > MAX_FORWARDED_HOPS {
                return Err(ForwardedError);
            }
            match parse(hop) {
                Some(ip) if is_trusted(ip) => leftmost_proxy = Some(ip),
                Some(ip) => return Ok(ip),
                None => return Err(ForwardedError),
            }
        }
    }
    Ok(leftmost_proxy.unwrap_or(peer))
}

/// A trusted proxy forwarded an `X-Forwarded-For` whose client hop is not an address (see
/// [`client_address`]).
#[derive(Debug, PartialEq, Eq)]
pub struct ForwardedError;

impl From<ForwardedError> for HttpError {
    fn from(_: ForwardedError) -> Self {
        HttpError::bad_request(
            "the trusted proxy's X-Forwarded-For does not end in the client's address",
        )
    }
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
        let at = |peer: IpAddr, headers: &hyper::HeaderMap| client_address(peer, headers, &trusted);
        // Not from a trusted proxy, or no proxies configured: the header is ignored.
        assert_eq!(at(other, &h(&["10.0.0.1"])), Ok(other));
        assert_eq!(client_address(proxy, &h(&["10.0.0.1"]), &[]), Ok(proxy));
        // From one: the rightmost hop that is not a trusted proxy, across header lines.
        assert_eq!(at(proxy, &h(&["10.0.0.1"])), Ok(ip("10.0.0.1")));
        let chain = h(&["6.6.6.6, 10.0.0.2", "10.9.1.1"]);
        assert_eq!(at(proxy, &chain), Ok(ip("10.0.0.2")), "spoofed left part");
        assert_eq!(at(proxy, &h(&["10.9.3.3"])), Ok(ip("10.9.3.3")), "only proxies: leftmost");
        assert_eq!(at(proxy, &h(&[" 2001:db8::1 "])), Ok(ip("2001:db8::1")));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(at(mapped, &h(&["10.0.0.1"])), Ok(ip("10.0.0.1")));
        assert_eq!(at(proxy, &h(&[])), Ok(proxy), "no header: the proxy itself");
        // Whatever the client wrote left of the hop its proxy appended is never read: garbage,
        // empty hops, a port, bytes that are not UTF-8, or a header of any length.
        for left in ["x", "unknown", "10.0.0.9:5555", "", ",,", "_", "a b"] {
            let forwarded = h(&[&format!("{left}, 10.0.0.1")]);
            assert_eq!(at(proxy, &forwarded), Ok(ip("10.0.0.1")), "{left:?}");
            let forwarded = h(&[left, "10.0.0.1, 10.9.0.5"]);
            assert_eq!(at(proxy, &forwarded), Ok(ip("10.0.0.1")), "{left:?} on its own line");
        }
        let mut binary = hyper::HeaderMap::new();
        binary.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff\xfe, 10.0.0.1").unwrap());
        assert_eq!(at(proxy, &binary), Ok(ip("10.0.0.1")));
        let long = format!("{}, 10.0.0.1", "x".repeat(100_000));
        assert_eq!(at(proxy, &h(&[&long])), Ok(ip("10.0.0.1")), "a long header");
        let many = format!("{}, 10.0.0.1", vec!["10.0.0.7"; 10_000].join(","));
        assert_eq!(at(proxy, &h(&[&many])), Ok(ip("10.0.0.1")), "many hops");
        // The client's own hop malformed, or a chain of proxies too long to walk: refused, never
        // the proxy's address (a fresh identity for a locked-out client).
        for bad in ["10.0.0.1, unknown", "10.0.0.1:5555", "", "10.0.0.1,,10.9.0.1", "_"] {
            assert_eq!(at(proxy, &h(&[bad])), Err(ForwardedError), "{bad:?}");
        }
        let proxies = vec!["10.9.0.1"; MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(at(proxy, &h(&[&format!("10.0.0.1, {proxies}")])), Err(ForwardedError));
        let proxies = vec!["10.9.0.1"; MAX_FORWARDED_HOPS - 1].join(",");
        assert_eq!(at(proxy, &h(&[&format!("10.0.0.1, {proxies}")])), Ok(ip("10.0.0.1")));
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
