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
    /// Worker threads answering requests.
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
pub struct Server {
    service: Arc<Service>,
    http: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads the inputs (failing with a clear message on any error), binds, and starts the
    /// workers and the reload watcher. Returns once the server accepts connections.
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
        let http = tiny_http::Server::http(&config.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let local_addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("{} is not an IP address", config.listen))?;
        let snap = catalog.snapshot();
        tracing::info!(
            listen = %local_addr,
            nodes = snap.inventory.len(),
            profiles = ?snap.profiles.names().collect::<Vec<_>>(),
            node_tokens = secret.is_some(),
            "bootforge serve started"
        );
        let workers = config.workers.max(1);
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
        let http = Arc::new(http);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..workers {
            let (svc, http, stop) = (service.clone(), http.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("serve-{i}"))
                    .spawn(move || worker(&svc, &http, &stop))?,
            );
        }
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
        Ok(Server { service, http, stop, threads })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting, lets the workers finish their current request, and joins them.
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
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.threads.len() {
            self.http.unblock();
        }
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

/// One worker: takes requests off tiny_http's queue until told to stop. tiny_http reads requests
/// on its own connection threads, so a slow client occupies at most the worker answering it.
fn worker(svc: &Service, http: &tiny_http::Server, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match http.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(request)) => handle(svc, request),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(svc: &Service, mut request: tiny_http::Request) {
    let reply = match to_req(&mut request) {
        Ok(req) => {
            // A panic in a handler must not take a worker down, nor leave the client hanging.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                router::route(svc, &req)
            })) {
                Ok(reply) => reply,
                Err(_) => {
                    tracing::error!(path = %req.path, "handler panicked");
                    Reply {
                        status: 500,
                        content_type: "application/json",
                        body: Payload::Text(util::error_json("internal error; see the server log")),
                        headers: Vec::new(),
                    }
                }
            }
        }
        Err(reply) => reply,
    };
    svc.metrics.response(reply.status);
    let mut headers =
        vec![tiny_http::Header::from_bytes("Content-Type", reply.content_type)
            .expect("static header")];
    for (k, v) in &reply.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            headers.push(h);
        }
    }
    let status = tiny_http::StatusCode(reply.status);
    let result = match reply.body {
        Payload::Text(text) => {
            let len = text.len();
            request.respond(tiny_http::Response::new(
                status,
                headers,
                std::io::Cursor::new(text.into_bytes()),
                Some(len),
                None,
            ))
        }
        // tiny_http switches to chunked encoding above 32 KiB unless the threshold is raised;
        // firmware HTTP clients want a plain Content-Length for kernels and ISOs.
        Payload::Stream(reader, len) => request.respond(
            tiny_http::Response::new(status, headers, reader, usize::try_from(len).ok(), None)
                .with_chunked_threshold(usize::MAX),
        ),
    };
    if let Err(e) = result {
        tracing::debug!("client went away: {e}");
    }
}

/// Reduces a tiny_http request to a [`Req`], or answers it directly (bad target, oversized body).
fn to_req(request: &mut tiny_http::Request) -> Result<Req, Reply> {
    let bad = |status: u16, msg: &str| Reply {
        status,
        content_type: "application/json",
        body: Payload::Text(util::error_json(msg)),
        headers: Vec::new(),
    };
    let Some((path, query)) = util::split_target(request.url()) else {
        return Err(bad(400, "the request path is not valid UTF-8 after percent-decoding"));
    };
    if !path.starts_with('/') {
        return Err(bad(400, "the request target must be an absolute path"));
    }
    fn header(request: &tiny_http::Request, name: &'static str) -> Option<String> {
        request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().to_string())
    }
    let authorization = header(request, "Authorization");
    let range = header(request, "Range");
    let host_header = header(request, "Host");
    let peer = request.remote_addr().map_or_else(|| "-".to_string(), |a| a.ip().to_string());
    if request.body_length().is_some_and(|n| n > router::MAX_BODY) {
        return Err(bad(413, &format!("the body is larger than {} bytes", router::MAX_BODY)));
    }
    let mut body = Vec::new();
    if let Err(e) = request.as_reader().take(router::MAX_BODY as u64 + 1).read_to_end(&mut body) {
        return Err(bad(400, &format!("cannot read the body: {e}")));
    }
    if body.len() > router::MAX_BODY {
        return Err(bad(413, &format!("the body is larger than {} bytes", router::MAX_BODY)));
    }
    Ok(Req {
        method: request.method().as_str().to_ascii_uppercase(),
        path,
        query,
        authorization,
        range,
        host_header,
        peer,
        body,
    })
}
