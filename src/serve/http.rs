//! The HTTP adapter: hyper (HTTP/1.1) on tokio, and everything that protects the service from
//! its clients before a handler runs.
//!
//! * **Connections are capped**, in total and per peer address. At the total cap the accept
//!   loop stops accepting (the kernel's backlog holds new connections); a peer over its own cap
//!   is closed at once, so one address cannot take every slot.
//! * **Nothing waits forever.** A request head must arrive within `header_timeout`, which hyper
//!   also applies to an idle keep-alive connection waiting for its next request; a body within
//!   `body_timeout` (408 otherwise); a response that the client stops reading is cut after
//!   `send_timeout` without progress.
//! * **Bodies are bounded** ([`MAX_BODY`], 413 beyond), and only origin-form targets are taken.
//!
//! hyper does the parsing; what it does not do (connection caps, a body deadline, a send
//! deadline) is written here, in a few lines each, because axum and tower-http do not do them
//! either: their limits are per request, not per connection, and `axum::serve` has no cap.
//!
//! Every answer carries `Content-Length`, streams too: firmware HTTP clients handle chunked
//! encoding badly. The `Host` header is never read: see `Config::public_url`.

use super::reply::{HttpError, Payload, Reply};
use super::routes::Route;
use super::Service;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request body accepted (a reimage body is a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of an inventory upload or check (`PUT /inventory`, `POST /inventory/check`):
/// a CSV of tens of thousands of rows.
pub const MAX_UPLOAD: usize = 8 << 20;
/// Query parameters kept per request, and the longest value kept; the rest is ignored.
const MAX_PARAMS: usize = 32;
const MAX_PARAM_LEN: usize = 512;
/// Hops of `X-Forwarded-For` read, from the right, looking for the first that is not a trusted
/// proxy; a chain of more trusted proxies than this is refused. Bounds the work per request
/// whatever the header's length: nothing left of the client's hop is read at all.
pub const MAX_FORWARDED_HOPS: usize = 16;
/// Longest hop text parsed as an address (an IPv6 address with an embedded IPv4 is 45 bytes).
const MAX_HOP_LEN: usize = 64;
/// How long shutdown waits for requests in progress before dropping their connections.
const DRAIN: Duration = Duration::from_secs(5);
/// How much of an oversized body is read and dropped before answering 413.
const DISCARD: usize = 4 << 20;
/// Read size when streaming a file.
const CHUNK: usize = 64 * 1024;

/// Bounds on what clients may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// For a request head, and for an idle keep-alive connection's next request.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// A response not read at all for this long is cut.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_peer: 256,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(15),
            send_timeout: Duration::from_secs(60),
        }
    }
}

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

/// Open connections per peer address, for the per-peer cap.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One slot of [`Peers`], given back when the connection ends.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    /// Counts per address; for IPv6 per /64, which one machine usually holds whole (so it cannot
    /// escape its cap by using more of its own addresses).
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !0u128 << 64).into()),
            },
            v4 => v4,
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot { peers: self.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

type ResBody = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::Either<ChannelBody, IterBody>,
>;

/// Accepts connections until told to stop, then waits (up to [`DRAIN`]) for the requests in
/// progress; idle keep-alive connections are closed at once.
pub async fn serve(
    svc: Arc<Service>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let limits = svc.config.limits.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // half_close: a client that shuts down its sending side after the request (`nc -N`) still
    // gets its answer; the header timeout still bounds such connections.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .half_close(true);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(Peers::default());
    let mut failures = AcceptFailures::default();
    loop {
        // At the cap, wait for a slot before accepting: new connections queue in the kernel.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    failures.record(&e);
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(peer_slot) = peers.take(peer.ip(), limits.max_connections_per_peer) else {
            svc.metrics.refused_connection();
            drop(stream); // over its own cap: closed at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        let io = SendDeadline::new(stream, limits.send_timeout);
        let body_timeout = limits.body_timeout;
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper::service::service_fn(move |req| {
                let svc = svc.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(svc, peer, req, body_timeout).await)
                }
            }),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
            drop((slot, peer_slot));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}: dropping their connections");
    }
}

/// Logs failed accepts at most once a second, with a count, instead of once each.
#[derive(Default)]
struct AcceptFailures {
    last_log: Option<std::time::Instant>,
    since_log: u64,
}

impl AcceptFailures {
    fn record(&mut self, e: &std::io::Error) {
        self.since_log += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(count = self.since_log, "accept failed: {e}");
            self.last_log = Some(std::time::Instant::now());
            self.since_log = 0;
        }
    }
}

/// Answers one request.
async fn handle(
    svc: Arc<Service>,
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
    body_timeout: Duration,
) -> hyper::Response<ResBody> {
    let head = request.method() == hyper::Method::HEAD;
    let reply = match to_req(peer, request, body_timeout, &svc.config.trusted_proxies).await {
        Ok(req) => super::handlers::handle(svc.clone(), req).await,
        Err(e) => e.into_reply(),
    };
    svc.metrics.response(reply.status);
    to_response(reply, head)
}

/// Reduces a request to a [`Req`], or answers it directly (bad target, slow or oversized body).
async fn to_req(
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
    body_timeout: Duration,
    trusted: &[ipnet::IpNet],
) -> Result<Req, HttpError> {
    let (parts, body) = request.into_parts();
    // Only origin-form targets (`/path?query`): absolute-form and `*` are refused.
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() && pq.path().starts_with('/') => pq,
        _ => return Err(HttpError::bad_request("the request target must be an absolute path")),
    };
    // Before the body is read: a request refused for its forwarded address costs nothing more.
    let peer = client_address(peer.ip(), &parts.headers, trusted)?;
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
        session: session_cookie(&parts.headers),
        csrf: header(HeaderName::from_static("x-csrf-token")),
        origin: header(hyper::header::ORIGIN),
        host: header(hyper::header::HOST),
        fetch_site: header(HeaderName::from_static("sec-fetch-site")),
        peer,
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
fn session_cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(super::session::COOKIE_EQ))
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

/// Builds the response. HEAD answers keep `Content-Length` and send no body.
fn to_response(reply: Reply, head: bool) -> hyper::Response<ResBody> {
    let status = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let empty = || http_body_util::Either::Left(http_body_util::Full::new(Bytes::new()));
    let (len, body) = match reply.body {
        Payload::Text(text) if head => (text.len() as u64, empty()),
        Payload::Text(text) => {
            let len = text.len() as u64;
            (len, http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(text))))
        }
        Payload::Stream(_, len) | Payload::Chunks(_, len) if head => (len, empty()),
        Payload::Stream(reader, len) => {
            (len, http_body_util::Either::Right(http_body_util::Either::Left(pump(reader, len))))
        }
        Payload::Chunks(chunks, len) => (
            len,
            http_body_util::Either::Right(http_body_util::Either::Right(IterBody {
                chunks,
                remaining: len,
            })),
        ),
    };
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    // A 304 has no body, and its Content-Length would have to be the full image's: omit it.
    if status != hyper::StatusCode::NOT_MODIFIED {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            headers.append(k, v);
        }
    }
    response
}

/// A body of buffers already in memory: each poll hands hyper the next one, without copying.
pub struct IterBody {
    chunks: Box<dyn Iterator<Item = Bytes> + Send>,
    remaining: u64,
}

impl hyper::body::Body for IterBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(match self.chunks.next() {
            Some(bytes) if bytes.len() as u64 <= self.remaining => {
                self.remaining -= bytes.len() as u64;
                Ok(hyper::body::Frame::data(bytes))
            }
            // Never more or fewer bytes than announced: cut the connection instead.
            _ => Err(std::io::Error::other("the body does not match its announced length")),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// A body fed by [`pump`]: chunks of a file read on the blocking pool.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: u64,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|chunk| {
            chunk.map(|chunk| {
                chunk.map(|bytes| {
                    self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                    hyper::body::Frame::data(bytes)
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// Streams `len` bytes of `reader` without holding the file in memory: each chunk is read on the
/// blocking pool (a thread is held only while reading, not while a slow client drains), and at
/// most two chunks wait in the channel. A reader that ends early fails the body, so the client
/// sees a cut connection rather than a short file.
fn pump(reader: Box<dyn Read + Send>, len: u64) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut reader = reader;
        let mut left = len;
        while left > 0 {
            let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let result = reader.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                (reader, result)
            })
            .await;
            let Ok((r, result)) = read else {
                let _ = tx.send(Err(std::io::Error::other("a file read failed"))).await;
                return;
            };
            reader = r;
            let chunk = match result {
                Ok(buf) if !buf.is_empty() => {
                    left -= buf.len() as u64;
                    Ok(Bytes::from(buf))
                }
                Ok(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than announced",
                )),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return; // the client went away, or the read failed
            }
        }
    });
    ChannelBody { rx, remaining: len }
}

/// A connection whose writes fail once the peer has not taken a single byte for `timeout`, so a
/// client that stops reading a response cannot hold its connection (and its slot) forever.
struct SendDeadline {
    inner: tokio::net::TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SendDeadline {
    fn new(inner: tokio::net::TcpStream, timeout: Duration) -> Self {
        SendDeadline { inner, timeout, stalled: None }
    }

    /// After a write attempt: progress disarms the deadline; a write that would block arms it,
    /// or reports it passed.
    fn track(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Pending => self.poll_stalled(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    /// Called when a write would block: arms the deadline, or reports it passed.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_count_per_address_and_per_ipv6_64() {
        let peers = Arc::new(Peers::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let held = peers.take(a, 2).unwrap();
        let _held2 = peers.take(b, 2).unwrap();
        assert!(peers.take(a, 2).is_none(), "the same /64");
        assert!(peers.take(other, 2).is_some(), "another /64");
        drop(held);
        assert!(peers.take(b, 2).is_some(), "a slot is given back when its connection ends");
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let _v4 = peers.take(v4, 1).unwrap();
        assert!(peers.take("::ffff:10.0.0.1".parse().unwrap(), 1).is_none(), "mapped IPv4");
    }

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
