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
//! * **TLS is the same connection with a handshake first** ([`Listeners`]): a plain and a TLS
//!   listener share the caps, limits and deadlines, and the handshake must finish within
//!   `header_timeout` like a request head. Each request knows which listener it came over
//!   ([`Req::tls`]), from the transport, never from a header; answers over TLS carry [`HSTS`].
//!
//! hyper does the parsing; what it does not do (connection caps, a body deadline, a send
//! deadline) is written here, in a few lines each, because axum and tower-http do not do them
//! either: their limits are per request, not per connection, and `axum::serve` has no cap.
//!
//! Every answer carries `Content-Length`, streams too: firmware HTTP clients handle chunked
//! encoding badly. The `Host` header is never read: see `Config::public_url`.

use crate::serve::web::body::{to_response, ResBody, SendDeadline};
use crate::serve::web::limits::*;
use crate::serve::web::request::{to_req, Req};

use crate::serve::web::reply::Reply;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the accept loop hands each request to: the transport knows nothing else of what is
/// behind it. Dispatch is static (a generic, not a boxed trait object), so the boot path pays
/// no indirection for it.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(self: Arc<Self>, req: Req) -> impl Future<Output = Reply> + Send;
    /// A connection was closed at once: its peer is over its own cap.
    fn refused_connection(&self) {}
    /// An answer of `status` is about to be sent.
    fn answered(&self, _status: u16) {}
    /// A TLS handshake finished, with protocol `version` (`1.2`, `1.3`).
    fn tls_handshake(&self, _version: &'static str) {}
    /// A TLS handshake failed; the connection is closed.
    fn tls_handshake_failed(&self, _why: HandshakeFailure) {}
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

/// What the accept loop listens on: plain HTTP, TLS, or both. Both share one set of connection
/// caps (total and per peer), limits and deadlines.
pub struct Listeners {
    pub plain: Option<tokio::net::TcpListener>,
    /// The TLS listener and its configuration (whose certificate resolver may swap the served
    /// pair at any time: see [`crate::serve::inputs::certs`]).
    pub tls: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
}

/// `Strict-Transport-Security` on every answer over TLS: a browser that has reached the service
/// over TLS once uses only TLS to that host name for a year. No `includeSubDomains`: the
/// service does not speak for the other hosts of its domain.
pub const HSTS: &str = "max-age=31536000";

/// Why a TLS handshake failed: the `reason` label of `bootforge_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the header timeout (a stalled or trickled handshake).
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// The client refused the certificate (an alert such as unknown_ca or bad_certificate):
    /// it does not trust the CA, or the name or dates do not fit.
    Untrusted,
    /// Anything else: bytes that are not TLS, no version or cipher in common, ….
    Protocol,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Untrusted,
        HandshakeFailure::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Untrusted => "untrusted",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    /// Classifies the error tokio-rustls returned (a rustls error is carried inside it).
    fn of(e: &std::io::Error) -> HandshakeFailure {
        use rustls::AlertDescription as A;
        use std::io::ErrorKind as K;
        if matches!(
            e.kind(),
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
        ) {
            return HandshakeFailure::Closed;
        }
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied,
            )) => HandshakeFailure::Untrusted,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// Accepts connections until told to stop, then waits (up to [`DRAIN`]) for the requests in
/// progress; idle keep-alive connections, and TLS handshakes not finished yet, are closed at
/// once.
///
/// A TLS connection takes its slots (total and per peer) when it is accepted, before its
/// handshake, which must finish within `header_timeout`: a client that connects and never
/// completes the handshake, or trickles it byte by byte, holds its slot no longer than one that
/// never sends a request head. The handshake runs on the connection's own task, so a slow one
/// delays no other accept. Then hyper applies `header_timeout` to the first request head as on
/// a plain connection.
pub async fn serve<H: Handler>(
    handler: Arc<H>,
    settings: Settings,
    listeners: Listeners,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let settings = Arc::new(settings);
    let limits = settings.limits.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Tells handshakes in progress to give up at shutdown (they are not connections hyper's
    // graceful shutdown can close yet).
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    // half_close: a client that shuts down its sending side after the request (`nc -N`) still
    // gets its answer; the header timeout still bounds such connections.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .half_close(true);
    let acceptor =
        listeners.tls.as_ref().map(|(_, config)| tokio_rustls::TlsAcceptor::from(config.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(Peers::default());
    let mut failures = AcceptFailures::default();
    loop {
        // At the cap, wait for a slot before accepting: new connections queue in the kernel.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        // Either listener; when both have connections waiting, select! picks at random, so
        // neither starves the other.
        let (accepted, tls) = tokio::select! {
            a = accept_on(listeners.plain.as_ref()) => (a, false),
            a = accept_on(listeners.tls.as_ref().map(|(l, _)| l)) => (a, true),
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                failures.record(&e);
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(peer_slot) = peers.take(peer.ip(), limits.max_connections_per_peer) else {
            handler.refused_connection();
            drop(stream); // over its own cap: closed at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = SendDeadline::new(stream, limits.send_timeout);
        let conn = Conn {
            http: http.clone(),
            handler: handler.clone(),
            settings: settings.clone(),
            peer,
            watcher: graceful.watcher(),
        };
        match (tls, &acceptor) {
            (true, Some(acceptor)) => {
                let handshake = acceptor.accept(io);
                let mut stopping = stopping.subscribe();
                let header_timeout = limits.header_timeout;
                tokio::spawn(async move {
                    let outcome = tokio::select! {
                        done = tokio::time::timeout(header_timeout, handshake) => done,
                        _ = stopping.changed() => return,
                    };
                    let failed = |why: HandshakeFailure, detail: &dyn std::fmt::Display| {
                        tracing::debug!(
                            "TLS handshake with {peer} failed ({}): {detail}",
                            why.label()
                        );
                        conn.handler.tls_handshake_failed(why);
                    };
                    match outcome {
                        Ok(Ok(stream)) => {
                            let version = match stream.get_ref().1.protocol_version() {
                                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                                _ => "other",
                            };
                            conn.handler.tls_handshake(version);
                            conn.run(stream, true).await;
                        }
                        Ok(Err(e)) => failed(HandshakeFailure::of(&e), &e),
                        Err(_) => failed(HandshakeFailure::Timeout, &"not finished in time"),
                    }
                    drop((slot, peer_slot));
                });
            }
            _ => {
                tokio::spawn(async move {
                    conn.run(io, false).await;
                    drop((slot, peer_slot));
                });
            }
        }
    }
    drop(listeners);
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}: dropping their connections");
    }
}

/// The next connection on `listener`; never, without one.
async fn accept_on(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One accepted connection, before its transport (plain or TLS) is known to hyper.
struct Conn<H> {
    http: hyper::server::conn::http1::Builder,
    handler: Arc<H>,
    settings: Arc<Settings>,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
}

impl<H: Handler> Conn<H> {
    /// Serves the connection's requests until it ends; `tls`: it came over the TLS listener.
    async fn run<I>(self, io: I, tls: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { http, handler, settings, peer, watcher } = self;
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper::service::service_fn(move |req| {
                let (handler, settings) = (handler.clone(), settings.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(handler, &settings, peer, tls, req).await,
                    )
                }
            }),
        );
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!("connection from {peer} ended: {e}");
        }
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

/// Answers one request; over TLS with [`HSTS`].
async fn handle<H: Handler>(
    handler: Arc<H>,
    settings: &Settings,
    peer: SocketAddr,
    tls: bool,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<ResBody> {
    let head = request.method() == hyper::Method::HEAD;
    let body_timeout = settings.limits.body_timeout;
    let mut reply = match to_req(peer, tls, request, body_timeout, settings).await {
        Ok(req) => handler.clone().handle(req).await,
        Err(e) => e.into_reply(),
    };
    if tls {
        reply.headers.push(("Strict-Transport-Security", HSTS.to_string()));
    }
    handler.answered(reply.status);
    to_response(reply, head)
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
}
