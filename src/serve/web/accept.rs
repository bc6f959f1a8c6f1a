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

/// Accepts connections until told to stop, then waits (up to [`DRAIN`]) for the requests in
/// progress; idle keep-alive connections are closed at once.
pub async fn serve<H: Handler>(
    handler: Arc<H>,
    settings: Settings,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let settings = Arc::new(settings);
    let limits = settings.limits.clone();
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
            handler.refused_connection();
            drop(stream); // over its own cap: closed at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handler, settings) = (handler.clone(), settings.clone());
        let io = SendDeadline::new(stream, limits.send_timeout);
        let body_timeout = limits.body_timeout;
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper::service::service_fn(move |req| {
                let (handler, settings) = (handler.clone(), settings.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(handler, &settings, peer, req, body_timeout).await,
                    )
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
async fn handle<H: Handler>(
    handler: Arc<H>,
    settings: &Settings,
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
    body_timeout: Duration,
) -> hyper::Response<ResBody> {
    let head = request.method() == hyper::Method::HEAD;
    let reply = match to_req(peer, request, body_timeout, settings).await {
        Ok(req) => handler.clone().handle(req).await,
        Err(e) => e.into_reply(),
    };
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
