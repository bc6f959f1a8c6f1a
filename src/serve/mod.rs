//! The boot decision service (`bootforge serve`) and its client (`bootforge reimage`).
//!
//! Every boot medium asks `GET /boot/{host}?mac=..&ip=..&medium=..[&token=..]` at every boot. The
//! answer is always a 200 iPXE script: the host's install chain if, and only if, an operator
//! flagged it for reimage (and the node's token and MAC check out), otherwise the local-boot
//! script. The installer then fetches its rendered config from `/config/{host}/{file}` and calls
//! `/hosts/{host}/done`, which clears the flag, so the next boot is local again.
//!
//! The service is layered like the media builder, one way:
//!
//! ```text
//! http (hyper adapter: limits, timeouts, parsing)  ─▶  routes (path → Route)
//!   ─▶ handlers (thin: authorize, gather, call the core, audit, answer)
//!     ─▶ lifecycle (pure transitions over HostState)   ─▶ state (per-host files) + audit (log)
//! ```
//!
//! The process holds nothing that matters: the inventory, profiles and API tokens are files it
//! reloads when they change ([`catalog`]), flags are per-host files in `--state-dir` written
//! durably under a lock ([`state`]), and the audit log is an append-only file there ([`audit`]).
//! Any number of instances can share one state directory and restart at any moment.

pub mod assets;
pub mod audit;
pub mod auth;
pub mod bmc;
pub mod catalog;
pub mod client;
pub mod console;
pub mod editor;
pub mod handlers;
pub mod http;
pub mod ldap;
pub mod lifecycle;
pub mod media;
pub mod metrics;
pub mod profiles;
pub mod query;
pub mod reply;
pub mod routes;
pub mod session;
pub mod state;
pub mod util;

use crate::inventory::{Node, ServerUrl};
use crate::token::Secret;
use audit::Event;
use lifecycle::HostState;
use reply::HttpError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Base URL written into rendered templates for nodes whose row has no `server`. Without
    /// it, the listen address when it is a specific one. Never the request's `Host` header: a
    /// header anyone can set must not decide where a node sends its token.
    pub public_url: Option<ServerUrl>,
    /// Threads for work that may block (the state directory, fsync, renders, file reads).
    pub workers: usize,
    /// iPXE loaders for `/media/` images instead of the embedded ones (`build --firmware-dir`).
    pub firmware_dir: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH` of `/media/` images; `None`: [`media::DEFAULT_EPOCH`].
    pub media_epoch: Option<u64>,
    /// The base of minted `/media/` URLs: where BMCs reach this service, which is often another
    /// network (the management one) than the nodes'. `None`: the node's own base URL.
    pub media_base_url: Option<ServerUrl>,
    /// The BMC credentials file (see `redfish::credentials`); without it, `/hosts/{h}/media`
    /// answers 409.
    pub bmc_credentials: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for BMCs.
    pub bmc_ca: Option<PathBuf>,
    /// The longest one BMC operation (attach, detach, status) may take; after it the caller
    /// gets 504 naming the step reached. Default [`bmc::DEFAULT_DEADLINE`].
    pub bmc_deadline: std::time::Duration,
    pub limits: http::Limits,
    /// The console's directory logins (`--ldap-config`, TOML; see [`ldap`]).
    pub ldap_config: Option<PathBuf>,
    /// Mark session cookies `Secure` even when `--public-url` is not `https://` (a TLS proxy
    /// in front of a service reached by another name).
    pub secure_cookies: bool,
    /// How long console sessions last.
    pub sessions: session::Lifetimes,
    /// Proxies (`--trusted-proxy`) whose `X-Forwarded-For` names the client (see
    /// [`http::client_address`]); empty: the header is never read.
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
            firmware_dir: None,
            media_epoch: None,
            media_base_url: None,
            bmc_credentials: None,
            bmc_ca: None,
            bmc_deadline: bmc::DEFAULT_DEADLINE,
            limits: http::Limits::default(),
            ldap_config: None,
            secure_cookies: false,
            sessions: session::Lifetimes::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The shared state of a running service.
pub struct Service {
    pub config: Config,
    pub catalog: catalog::Catalog,
    pub store: state::Store,
    pub audit: audit::Audit,
    pub secret: Option<Secret>,
    pub metrics: metrics::Metrics,
    /// Each inventory host's last verified boot, followed from the shared audit log.
    pub last_boot: audit::LastBoots,
    /// The base URL for nodes without a `server` column: `--public-url`, else the listen
    /// address if it is a specific one.
    pub default_base: Option<ServerUrl>,
    /// Templates and the URL key for `/media/`.
    pub media: media::Media,
    /// The Redfish client and credentials, when started with `--bmc-credentials`.
    pub bmc: Option<bmc::Bmc>,
    /// The console's sessions, failed-login counts, and directory (with `--ldap-config`).
    pub sessions: session::Sessions,
    pub login_limiter: session::LoginLimiter,
    pub directory: Option<ldap::Directory>,
    /// One inventory edit at a time (read, change, validate, write, reload).
    pub inventory_edit: Mutex<()>,
    /// When this process started (milliseconds since 1970), for `/status`.
    pub started_at: u64,
    host_locks: HostLocks,
}

/// How long a request waits for a host's lock held by someone else before giving up (a boot
/// then answers local, the API 503).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A state change computed under the host's lock: the value for the caller, whether to write the
/// state, and the audit record. When `write` is set the record is appended durably *before*
/// the state is written, and a record that cannot be written refuses the change; otherwise the
/// record (if any) is appended as a plain note.
pub struct Change<T> {
    pub value: T,
    pub write: bool,
    pub record: Option<Event>,
}

impl Service {
    /// How long console sessions last.
    pub fn sessions_life(&self) -> session::Lifetimes {
        self.config.sessions
    }

    /// The base URL that `node` reaches this service at: its row's `server`, else the
    /// service's own. Never `None` for a loaded inventory (the catalog refuses rows without
    /// one when the service has none, see `rows_need_server`).
    pub fn base_for(&self, node: &Node) -> Option<String> {
        node.server.as_ref().or(self.default_base.as_ref()).map(|s| s.to_string())
    }

    /// Runs `work` on the blocking pool: anything that touches the disk or renders.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Service) -> T + Send + 'static,
    ) -> Result<T, HttpError> {
        let svc = self.clone();
        tokio::task::spawn_blocking(move || work(&svc))
            .await
            .map_err(|e| HttpError::internal(format!("a handler failed: {e}")))
    }

    /// Read-modify-write of `host`'s state. The host must be validated and (for anything a node
    /// can trigger) in the inventory, because its lock file is created here.
    ///
    /// Waiting for the lock never parks a thread: the in-process lock is an async mutex, and the
    /// cross-process `flock` is tried without blocking and retried after a short async sleep. So
    /// a host whose lock is held elsewhere delays its own requests only (up to [`LOCK_WAIT`],
    /// then [`HttpError::busy`]). The change itself (read, audit append, fsyncs) runs on the
    /// blocking pool.
    pub async fn change<T: Send + 'static>(
        self: &Arc<Self>,
        host: &str,
        change: impl FnOnce(&Service, &mut HostState) -> Result<Change<T>, HttpError> + Send + 'static,
    ) -> Result<T, HttpError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let local = tokio::time::timeout_at(deadline, self.host_locks.lock(host));
        let local = local.await.map_err(|_| HttpError::busy())?;
        let mut pause = Duration::from_millis(2);
        // The in-process lock travels with the change into the blocking task and is released
        // there, after the write: if the client goes away and this future is dropped, the
        // change still running cannot overlap another one of this process (on NFS, `flock`
        // does not exclude them).
        let mut pending = Some((change, local));
        loop {
            let (change, local) = pending.take().expect("the change is handed back while busy");
            let host = host.to_string();
            let attempt = self
                .blocking(move |svc| match svc.store.try_lock(&host) {
                    Ok(Some(lock)) => {
                        let result = svc.apply(&lock, change);
                        drop((lock, local));
                        Ok(result)
                    }
                    Ok(None) => Err((change, local)),
                    Err(e) => Ok(Err(e.into())),
                })
                .await?;
            match attempt {
                Ok(result) => return result,
                Err(handed_back) => pending = Some(handed_back),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(HttpError::busy());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The body of [`Service::change`] once the locks are held (also used by the orphan sweep).
    fn apply<T>(
        &self,
        lock: &state::HostLock,
        change: impl FnOnce(&Service, &mut HostState) -> Result<Change<T>, HttpError>,
    ) -> Result<T, HttpError> {
        let mut state = self.store.read(lock.host())?;
        let Change { value, write, record } = change(self, &mut state)?;
        if !write {
            if let Some(record) = &record {
                self.audit.note(record);
            }
            return Ok(value);
        }
        if let Some(record) = &record {
            self.audit.append_durable(record).map_err(|e| {
                tracing::error!(error = %e, "cannot append to the audit log; the change is refused");
                HttpError::new(500, "the audit log cannot be written, so nothing was changed")
            })?;
        }
        if let Err(e) = self.store.write(lock, &mut state) {
            let after = record.as_ref().map_or("change", |_| "audited change");
            self.audit.note(&Event::ChangeNotApplied { host: lock.host().to_string(), after });
            return Err(e.into());
        }
        Ok(value)
    }

    /// Ends the flags of hosts that left the inventory (see [`lifecycle::orphan`]). Runs at
    /// start-up and after every successful reload, on a thread that may block.
    pub fn sweep_orphans(&self) {
        let snap = self.catalog.snapshot();
        for host in self.store.hosts() {
            if snap.inventory.get(&host).is_some() {
                continue;
            }
            match self.store.read(&host) {
                Ok(st) if st.flag.is_none() && st.unclosed_window().is_none() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("orphan sweep: {e}");
                    continue;
                }
            }
            let _local = self.host_locks.lock_blocking(&host);
            // Like a request, never wait for a lock held elsewhere for long: the reload thread
            // must go on. A host skipped now is swept at the next reload.
            let mut lock = None;
            for _ in 0..20 {
                match self.store.try_lock(&host) {
                    Ok(Some(l)) => {
                        lock = Some(l);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => {
                        tracing::warn!("orphan sweep: {e}");
                        break;
                    }
                }
            }
            let Some(lock) = lock else {
                tracing::warn!(host = %host, "orphan sweep: the host's lock is held elsewhere; trying again at the next reload");
                continue;
            };
            let result = self.apply(&lock, |svc, st| {
                // The inventory may have changed since the sweep began (a concurrent reload
                // that re-added the host): check it again under the lock.
                if svc.catalog.snapshot().inventory.get(&host).is_some() {
                    return Ok(Change { value: false, write: false, record: None });
                }
                let (ended, write) = lifecycle::orphan(st, util::now_ms());
                let record =
                    ended.map(|install| Event::FlagOrphaned { host: host.clone(), install });
                Ok(Change { value: write, write, record })
            });
            match result {
                Ok(true) => {
                    tracing::warn!(host = %host, "{host} left the inventory while flagged: its flag is ended, and re-adding the host will not resume it")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(host = %host, "orphan sweep: {}", e.message),
            }
        }
    }
}

/// Descriptors kept free of connections, for the state folder, the audit log, assets and the
/// listener itself.
const FD_RESERVE: u64 = 256;

/// Raises the soft limit on open files to the hard limit and returns a connection cap that fits
/// under it: a cap above the limit would let idle connections exhaust the descriptors, and then
/// every accept, state read and audit write fails.
fn fit_descriptors(wanted: usize) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let room =
        usize::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX).max(16);
    if wanted > room {
        tracing::warn!(
            wanted,
            open_files_limit = lim.rlim_cur,
            "--max-connections is above what the open-files limit allows; using {room}"
        );
        return room;
    }
    wanted
}

/// In-process per-host locks. Async, so a request waiting for a busy host holds no thread; the
/// map only ever holds inventory hosts (and is pruned of idle entries as it grows).
#[derive(Default)]
struct HostLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl HostLocks {
    fn entry(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(host.to_string()).or_default().clone()
    }

    async fn lock(&self, host: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(host).lock_owned().await
    }

    fn lock_blocking(&self, host: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(host).blocking_lock_owned()
    }
}

/// A running server: its address, and how to stop it.
pub struct Server {
    service: Arc<Service>,
    local_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the accept loop to stop; it then drains the open connections.
    stop_accepting: Option<tokio::sync::oneshot::Sender<()>>,
    accept: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads the inputs (failing with a clear message on any error), binds, and starts the
    /// runtime and the reload watcher. Returns once the server accepts connections.
    pub fn start(mut config: Config) -> anyhow::Result<Server> {
        config.limits.max_connections = fit_descriptors(config.limits.max_connections);
        let listener = std::net::TcpListener::bind(&config.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let default_base = match &config.public_url {
            Some(url) => Some(url.clone()),
            None if local_addr.ip().is_unspecified() => None,
            None => {
                Some(format!("http://{local_addr}").parse().map_err(|e| anyhow::anyhow!("{e}"))?)
            }
        };
        let catalog = catalog::Catalog::load(catalog::Sources {
            inventory: config.inventory.clone(),
            profiles: config.profiles.clone(),
            tokens: config.tokens_file.clone(),
            rows_need_server: default_base.is_none(),
        })?;
        let store = state::Store::open(&config.state_dir)?;
        let audit = audit::Audit::open(&config.state_dir)?;
        if config.tokens_file.is_none() {
            tracing::warn!(
                "no --tokens-file: the API (/hosts, /events, reimage) refuses every request with 401; boot answers, callbacks, assets, /healthz and /metrics still work"
            );
        }
        let secret = config.secret_file.as_deref().map(Secret::from_file).transpose()?;
        let signer = media::Signer::new(secret.as_ref())?;
        if signer.ephemeral {
            tracing::warn!(
                "no --secret-file: media URLs are signed with a key of this process only; they stop working when it restarts and other instances refuse them"
            );
        }
        let epoch = config.media_epoch.unwrap_or(media::DEFAULT_EPOCH);
        let media = media::Media::new(config.firmware_dir.as_deref(), epoch, signer)?;
        let bmc = match &config.bmc_credentials {
            Some(file) => {
                Some(bmc::Bmc::new(file.clone(), config.bmc_ca.clone(), config.bmc_deadline)?)
            }
            None => None,
        };
        let directory = config.ldap_config.as_deref().map(ldap::Directory::load).transpose()?;
        let snap = catalog.snapshot();
        tracing::info!(
            listen = %local_addr,
            nodes = snap.inventory.len(),
            profiles = ?snap.profiles.names().collect::<Vec<_>>(),
            node_tokens = secret.is_some(),
            base_url = ?default_base.as_ref().map(|u| u.to_string()),
            "bootforge serve started"
        );
        drop(snap);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("serve")
            .max_blocking_threads(config.workers.max(1))
            .enable_io()
            .enable_time()
            .build()?;
        let sessions = session::Sessions::new(config.sessions);
        let service = Arc::new(Service {
            config,
            catalog,
            store,
            audit,
            secret,
            metrics: metrics::Metrics::default(),
            last_boot: audit::LastBoots::default(),
            default_base,
            media,
            bmc,
            sessions,
            login_limiter: session::LoginLimiter::default(),
            directory,
            inventory_edit: Mutex::new(()),
            started_at: util::now_ms(),
            host_locks: HostLocks::default(),
        });
        service.sweep_orphans();
        // About 200,000 boot records: the last boot of every host of a fleet that boots daily.
        service.last_boot.start_near_end(&service.audit, 64 << 20);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let accept = runtime.spawn(http::serve(service.clone(), listener, stop_rx));
        // Directory sessions' re-checks (a no-op without a lookup account); dropped with the
        // runtime at shutdown.
        runtime.spawn(console::recheck_sessions(service.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        // SIGHUP forces a reload; registering only sets a flag, so it is safe in any thread.
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()) {
            tracing::warn!("cannot watch SIGHUP ({e}); changes are still picked up by polling");
        }
        let reload = {
            let (svc, stop) = (service.clone(), stop.clone());
            std::thread::Builder::new().name("reload".into()).spawn(move || {
                svc.catalog.watch(&stop, &hup, |reloaded| {
                    if reloaded {
                        svc.sweep_orphans();
                    }
                    svc.store.rescan(false);
                    let snap = svc.catalog.snapshot();
                    svc.last_boot.refresh(&svc.audit, |h| snap.inventory.get(h).is_some());
                });
            })?
        };
        Ok(Server {
            service,
            local_addr,
            runtime: Some(runtime),
            stop_accepting: Some(stop_tx),
            accept: Some(accept),
            stop,
            threads: vec![reload],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        // Refusals still only counted are written now, and those noted by anything that
        // outlives the stop are written batch by batch (the rest when the Audit is dropped).
        self.service.audit.stopping();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
