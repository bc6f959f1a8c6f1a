//! The boot decision service (`bootforge serve`) and its client (`bootforge reimage`).
//!
//! Every boot medium asks `GET /boot/{host}?mac=..&ip=..&medium=..[&token=..]` at every boot. The
//! answer is always a 200 iPXE script: the host's install chain if, and only if, an operator
//! flagged it for reimage (and the node's token and MAC check out), otherwise the local-boot
//! script. The installer then fetches its rendered config from `/config/{host}/{file}` and calls
//! `/hosts/{host}/done`, which clears the flag, so the next boot is local again.
//!
//! The process holds nothing that matters: the inventory and profiles are files it reloads when
//! they change ([`catalog`]), flags are per-host files in `--state-dir` written durably under a
//! lock ([`state`]), and the audit log is an append-only file there ([`audit`]). Any number of
//! instances can share one state directory and restart at any moment.
//!
//! Modules: [`router`] (endpoints), [`state`] (flag store), [`audit`], [`auth`] (API tokens),
//! [`profiles`] (templates), [`catalog`] (inputs and reload), [`assets`] (file serving with
//! ranges), [`metrics`], [`client`] (the `reimage` command).

pub mod assets;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod client;
pub mod metrics;
pub mod profiles;
pub mod router;
pub mod state;
pub mod util;

use crate::inventory::ServerUrl;
use crate::token::Secret;
use bytes::Bytes;
use router::{Payload, Reply, Req};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Everything `bootforge serve` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub inventory: PathBuf,
    pub profiles: PathBuf,
    pub state_dir: PathBuf,
    /// `ADDR:PORT`; port 0 picks a free port (tests).
    pub listen: String,
    pub assets: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
    /// Base URL put into rendered templates when the node's row has no `server`; by default the
    /// `Host` header of the request, i.e. the URL the node's medium used.
    pub public_url: Option<ServerUrl>,
    /// Handlers running at once on the blocking pool (API, flag changes, config renders, file
    /// reads); connections and boot answers run on one async thread per core.
    pub workers: usize,
}

impl Config {
    /// A configuration with the defaults for everything optional.
    pub fn new(inventory: PathBuf, profiles: PathBuf, state_dir: PathBuf) -> Config {
        Config {
            inventory,
            profiles,
            state_dir,
            listen: "0.0.0.0:8080".into(),
            assets: None,
            secret_file: None,
            tokens_file: None,
            public_url: None,
            workers: 16,
        }
    }
}

/// The shared state of a running service, used by every worker.
pub struct Service {
    pub config: Config,
    pub catalog: catalog::Catalog,
    pub store: state::Store,
    pub audit: audit::Audit,
    pub tokens: auth::Tokens,
    pub secret: Option<Secret>,
    pub metrics: metrics::Metrics,
    /// Each host's last boot answer, followed from the shared audit log.
    pub last_boot: audit::LastBoots,
    pub local_addr: SocketAddr,
}

/// A running server: its address, and how to stop it.
///
/// The transport is hyper (HTTP/1.1) on a multi-thread tokio runtime: each connection is one
/// task that parses its requests and writes the answers itself, so a boot request costs no
/// thread hand-off. Handlers that may block on the disk for long (flag changes fsync, config
/// renders, the API) run on tokio's blocking pool, so a slow fsync never stalls other
/// connections; see [`runs_inline`].
pub struct Server {
    service: Arc<Service>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the accept loop to stop; it then drains the open connections.
    stop_accepting: Option<tokio::sync::oneshot::Sender<()>>,
    accept: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How long shutdown waits for requests in progress before dropping their connections.
const DRAIN: Duration = Duration::from_secs(5);
/// A connection that has not sent a whole request head within this time is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size when streaming a file.
const CHUNK: usize = 64 * 1024;
/// How much of an oversized request body is read and dropped before answering 413.
const DISCARD: usize = 4 << 20;

impl Server {
    /// Loads the inputs (failing with a clear message on any error), binds, and starts the
    /// runtime and the reload watcher. Returns once the server accepts connections.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let catalog = catalog::Catalog::load(&config.inventory, &config.profiles)?;
        let store = state::Store::open(&config.state_dir)?;
        let audit = audit::Audit::open(&config.state_dir)?;
        let tokens = match &config.tokens_file {
            Some(path) => auth::Tokens::load(path)?,
            None => {
                tracing::warn!(
                    "no --tokens-file: the API (/hosts, /events, reimage) refuses every request with 401; boot answers, callbacks, assets, /healthz and /metrics still work"
                );
                auth::Tokens::disabled()
            }
        };
        let secret = config.secret_file.as_deref().map(Secret::from_file).transpose()?;
        let listener = std::net::TcpListener::bind(&config.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let snap = catalog.snapshot();
        tracing::info!(
            listen = %local_addr,
            nodes = snap.inventory.len(),
            profiles = ?snap.profiles.names().collect::<Vec<_>>(),
            node_tokens = secret.is_some(),
            "bootforge serve started"
        );
        // --workers bounds the handlers running at once (the blocking pool); the connections
        // themselves run on one async thread per core.
        let workers = config.workers.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("serve")
            .max_blocking_threads(workers)
            .enable_io()
            .enable_time()
            .build()?;
        let service = Arc::new(Service {
            config,
            catalog,
            store,
            audit,
            tokens,
            secret,
            metrics: metrics::Metrics::default(),
            last_boot: audit::LastBoots::default(),
            local_addr,
        });
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let accept = runtime.spawn(accept_loop(service.clone(), listener, stop_rx));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let hup = Arc::new(AtomicBool::new(false));
        // SIGHUP forces a reload; registering only sets a flag, so it is safe in any thread.
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()) {
            tracing::warn!("cannot watch SIGHUP ({e}); changes are still picked up by polling");
        }
        {
            let (svc, stop) = (service.clone(), stop.clone());
            threads.push(std::thread::Builder::new().name("reload".into()).spawn(move || {
                svc.catalog.watch(&stop, &hup);
            })?);
        }
        Ok(Server {
            service,
            runtime: Some(runtime),
            stop_accepting: Some(stop_tx),
            accept: Some(accept),
            stop,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting, lets requests in progress finish (up to 5 s), closes idle connections,
    /// and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    /// Blocks until SIGINT or SIGTERM, then shuts down.
    pub fn run_until_signalled(self) -> anyhow::Result<()> {
        let term = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
        while !term.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::info!("signal received: stopping");
        self.shutdown();
        Ok(())
    }

    fn stop_threads(&mut self) {
        if let Some(tx) = self.stop_accepting.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            if let Some(accept) = self.accept.take() {
                let _ = runtime.block_on(accept);
            }
            tracing::debug!("connections drained");
            runtime.shutdown_timeout(Duration::from_secs(1));
            tracing::debug!("runtime stopped");
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

type ResBody = http_body_util::Either<http_body_util::Full<Bytes>, ChannelBody>;

/// Accepts connections until told to stop, then waits (up to [`DRAIN`]) for the requests in
/// progress; idle keep-alive connections are closed at once.
async fn accept_loop(
    svc: Arc<Service>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper::service::service_fn(move |req| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(svc, peer, req).await) }
            }),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}: dropping their connections");
    }
}

/// Whether a request is answered on the connection's task rather than on the blocking pool:
/// only boot answers, which read the page cache and append one line to the audit log without
/// fsync. Everything else may fsync, render templates or read big files.
fn runs_inline(req: &Req) -> bool {
    (req.method == "GET" || req.method == "HEAD") && req.path.starts_with("/boot/")
}

/// Answers one request: reduces it to a [`Req`], routes it (catching panics) and turns the
/// [`Reply`] into a response.
async fn handle(
    svc: Arc<Service>,
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<ResBody> {
    let head = request.method() == hyper::Method::HEAD;
    let reply = match to_req(peer, request).await {
        Ok(req) => {
            if runs_inline(&req) {
                route_caught(&svc, &req)
            } else {
                let svc = svc.clone();
                match tokio::task::spawn_blocking(move || route_caught(&svc, &req)).await {
                    Ok(reply) => reply,
                    Err(_) => internal_error(),
                }
            }
        }
        Err(reply) => reply,
    };
    svc.metrics.response(reply.status);
    to_response(reply, head)
}

/// Routes, turning a panic in a handler into a 500 (the connection and the server go on).
fn route_caught(svc: &Service, req: &Req) -> Reply {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| router::route(svc, req))) {
        Ok(reply) => reply,
        Err(_) => {
            tracing::error!(path = %req.path, "handler panicked");
            internal_error()
        }
    }
}

fn internal_error() -> Reply {
    Reply {
        status: 500,
        content_type: "application/json",
        body: Payload::Text(util::error_json("internal error; see the server log")),
        headers: Vec::new(),
    }
}

/// Builds the response. Every answer carries `Content-Length` (streams too: firmware HTTP
/// clients handle chunked encoding badly); HEAD answers keep it and send no body.
fn to_response(reply: Reply, head: bool) -> hyper::Response<ResBody> {
    use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
    let status = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let (len, body) = match reply.body {
        Payload::Text(text) => {
            let len = text.len() as u64;
            let bytes = if head { Bytes::new() } else { Bytes::from(text) };
            (len, http_body_util::Either::Left(http_body_util::Full::new(bytes)))
        }
        Payload::Stream(_, len) if head => {
            (len, http_body_util::Either::Left(http_body_util::Full::new(Bytes::new())))
        }
        Payload::Stream(reader, len) => (len, http_body_util::Either::Right(pump(reader, len))),
    };
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    response
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
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
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
            let (r, result) = match read {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
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

/// Reduces a request to a [`Req`], or answers it directly (bad target, oversized body).
async fn to_req(
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Req, Reply> {
    use http_body_util::BodyExt;
    let bad = |status: u16, msg: &str| Reply {
        status,
        content_type: "application/json",
        body: Payload::Text(util::error_json(msg)),
        headers: Vec::new(),
    };
    let (parts, body) = request.into_parts();
    // Only origin-form targets (`/path?query`), as before: absolute-form and `*` are refused.
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() => pq.as_str(),
        _ => return Err(bad(400, "the request target must be an absolute path")),
    };
    let Some((path, query)) = util::split_target(target) else {
        return Err(bad(400, "the request path is not valid UTF-8 after percent-decoding"));
    };
    if !path.starts_with('/') {
        return Err(bad(400, "the request target must be an absolute path"));
    }
    let header = |name: hyper::header::HeaderName| {
        parts.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let authorization = header(hyper::header::AUTHORIZATION);
    let range = header(hyper::header::RANGE);
    let host_header = header(hyper::header::HOST);
    let too_big = || bad(413, &format!("the body is larger than {} bytes", router::MAX_BODY));
    let announced =
        header(hyper::header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    let mut over = announced.is_some_and(|n| n > router::MAX_BODY as u64);
    if over && parts.headers.contains_key(hyper::header::EXPECT) {
        return Err(too_big()); // the client waits for 100-continue: it has sent nothing yet
    }
    // Read the body; past the limit, keep reading (up to DISCARD) and drop it, so that a client
    // that writes its whole body before reading gets the 413 instead of a broken pipe.
    let mut body_stream = body;
    let mut body = Vec::new();
    let mut discarded = 0usize;
    while let Some(frame) = body_stream.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
            Err(e) => return Err(bad(400, &format!("cannot read the body: {e}"))),
        };
        if !over && body.len() + data.len() > router::MAX_BODY {
            over = true;
            discarded = body.len();
            body = Vec::new();
        }
        if over {
            discarded += data.len();
            if discarded > DISCARD {
                break; // answered now; hyper closes the connection after the answer
            }
        } else {
            body.extend_from_slice(&data);
        }
    }
    if over {
        return Err(too_big());
    }
    Ok(Req {
        method: parts.method.as_str().to_ascii_uppercase(),
        path,
        query,
        authorization,
        range,
        host_header,
        peer: peer.ip().to_string(),
        body,
    })
}
