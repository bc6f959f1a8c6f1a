//! Start-up and shutdown: load the inputs (and the TLS certificate), bind ([`Server::start`], or
//! take a bound listener: [`Server::run`]), run the accept loop and the reload watcher (which
//! also reloads the certificate) until told to stop
//! ([`Server::shutdown`], or SIGTERM/SIGINT with [`Server::run_until_signalled`]), then stop
//! accepting, let requests in progress finish, and join every thread.

use crate::serve::app::config::Config;
use crate::serve::app::locks::HostLocks;
use crate::serve::app::service::Service;
use crate::token::Secret;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// Binds `addr` (`ADDR:PORT`), naming it in the error.
fn bind(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// A running server: its addresses, and how to stop it.
pub struct Server {
    service: Arc<Service>,
    local_addr: SocketAddr,
    local_tls_addr: Option<SocketAddr>,
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
    ///
    /// Listens on `config.listen` (plain HTTP; none when it is empty) and `config.listen_tls`
    /// (TLS, with `tls_cert` and `tls_key`).
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let plain = match config.listen.is_empty() {
            true => None,
            false => Some(bind(&config.listen)?),
        };
        Server::start_on(plain, config)
    }

    /// [`Server::start`] on a listener the caller bound (mini-redis's `run(listener, …)`
    /// shape): everything but the bind. `config.listen` is then only informative; a TLS
    /// listener (`config.listen_tls`) is still bound here. It runs until
    /// [`Server::shutdown`] (or [`Server::run_until_signalled`]).
    pub fn run(listener: std::net::TcpListener, config: Config) -> anyhow::Result<Server> {
        Server::start_on(Some(listener), config)
    }

    fn start_on(
        plain: Option<std::net::TcpListener>,
        mut config: Config,
    ) -> anyhow::Result<Server> {
        config.limits.max_connections = fit_descriptors(config.limits.max_connections);
        // The certificate first: a bad pair stops the start-up before the TLS listener is bound
        // or the database opened, with a message naming the file.
        let tls_cert = match (&config.listen_tls, &config.tls_cert, &config.tls_key) {
            (Some(_), Some(cert), Some(key)) => {
                Some(Arc::new(crate::serve::inputs::certs::ServerCert::load(cert, key)?))
            }
            (Some(addr), _, _) => {
                anyhow::bail!("--listen-tls {addr} needs --tls-cert FILE and --tls-key FILE")
            }
            (None, Some(_), _) | (None, _, Some(_)) => anyhow::bail!(
                "--tls-cert and --tls-key are for --listen-tls ADDR:PORT, which is not given"
            ),
            (None, None, None) => None,
        };
        anyhow::ensure!(
            plain.is_some() || tls_cert.is_some(),
            "nothing to listen on: give --listen ADDR:PORT, --listen-tls ADDR:PORT, or both"
        );
        let tls_listener = match &config.listen_tls {
            Some(addr) if tls_cert.is_some() => Some(bind(addr)?),
            _ => None,
        };
        let local_tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let local_plain_addr = plain.as_ref().map(|l| l.local_addr()).transpose()?;
        if let (Some(served), Some(cert), Some(addr)) =
            (&tls_cert, &config.tls_cert, local_tls_addr)
        {
            let (cert, ca, url) = (cert.clone(), config.tls_ca.clone(), config.public_url.clone());
            served.advise_with(crate::serve::inputs::certs::Advice(Box::new(move || {
                warn_if_ipxe_cannot_boot(&cert, ca.as_deref(), &url, addr)
            })));
        }
        let local_addr =
            local_plain_addr.or(local_tls_addr).expect("a listener exists: checked above");
        // Without --public-url, the service's own address of the listener a request came in on,
        // when it is a specific one (see `DefaultBase`).
        let own = |scheme: &str, a: &Option<SocketAddr>| {
            a.filter(|a| !a.ip().is_unspecified())
                .map(|a| format!("{scheme}://{a}").parse::<crate::inventory::ServerUrl>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        let default_base = crate::serve::app::service::DefaultBase {
            public: config.public_url.clone(),
            plain: own("http", &local_plain_addr)?,
            tls: own("https", &local_tls_addr)?,
        };
        use crate::serve::inputs::catalog::{Catalog, InventorySource, Sources};
        let sources = |inventory| Sources {
            inventory,
            profiles: config.profiles.clone(),
            tokens: config.tokens_file.clone(),
            rows_need_server: default_base.preferred().is_none(),
        };
        let open_store = || -> anyhow::Result<Arc<crate::serve::store::Store>> {
            std::fs::create_dir_all(&config.state_dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the state folder {}: {e}",
                    config.state_dir.display()
                )
            })?;
            Ok(Arc::new(crate::serve::store::Store::open(
                &config.database_url(),
                Some(&config.state_dir),
            )?))
        };
        // The inventory's home decides the order: a file is loaded (and refused if invalid)
        // before the database is touched; the database's inventory needs the store first.
        let (catalog, store) = match &config.inventory {
            Some(file) => {
                let catalog = Catalog::load(sources(InventorySource::File(file.clone())))?;
                let store = open_store()?;
                if store.holds_inventory().unwrap_or(false) {
                    tracing::warn!(
                        inventory = %file.display(),
                        database = %store.shown(),
                        "the database holds an inventory, which this service ignores: it was started with --inventory, so that file is its inventory. Start it without --inventory to serve the database's (see docs/STATE.md)"
                    );
                }
                (catalog, store)
            }
            None => {
                let store = open_store()?;
                (Catalog::load(sources(InventorySource::Database(store.clone())))?, store)
            }
        };
        let audit = crate::serve::store::audit::Audit::open(store.clone())?;
        if config.tokens_file.is_none() {
            tracing::warn!(
                "no --tokens-file: the API (/hosts, /events, reimage) refuses every request with 401; boot answers, callbacks, assets, /healthz and /metrics still work"
            );
        }
        let secret = config.secret_file.as_deref().map(Secret::from_file).transpose()?;
        let signer = crate::serve::app::media::Signer::new(secret.as_ref())?;
        if signer.ephemeral {
            tracing::warn!(
                "no --secret-file: media URLs are signed with a key of this process only; they stop working when it restarts and other instances refuse them"
            );
        }
        let epoch = config.media_epoch.unwrap_or(crate::serve::app::media::DEFAULT_EPOCH);
        let media =
            crate::serve::app::media::Media::new(config.firmware_dir.as_deref(), epoch, signer)?;
        let bmc = match &config.bmc_credentials {
            Some(file) => Some(crate::serve::app::bmc::Bmc::new(
                file.clone(),
                config.bmc_ca.clone(),
                config.bmc_deadline,
            )?),
            None => None,
        };
        let directory = config
            .ldap_config
            .as_deref()
            .map(crate::serve::auth::ldap::Directory::load)
            .transpose()?;
        let snap = catalog.snapshot();
        tracing::info!(
            listen = ?local_plain_addr,
            listen_tls = ?local_tls_addr,
            certificate = ?tls_cert.as_ref().map(|c| {
                let s = c.status().serving;
                format!("{} ({}), valid until {}", s.subject, s.names.join(", "), s.not_after)
            }),
            nodes = snap.inventory.len(),
            profiles = ?snap.profiles.names().collect::<Vec<_>>(),
            node_tokens = secret.is_some(),
            database = %store.shown(),
            base_url = ?default_base.preferred().map(|u| u.to_string()),
            "bootforge serve started"
        );
        drop(snap);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("serve")
            .max_blocking_threads(config.workers.max(1))
            .enable_io()
            .enable_time()
            .build()?;
        let sessions = crate::serve::auth::session::Sessions::new(store.clone(), config.sessions);
        let hardware = crate::serve::app::hardware::Hardware::new(
            config.bmc_refresh,
            config.bmc_state_timeout,
            config.bmc_refresh_jobs,
        );
        let service = Arc::new(Service {
            config,
            catalog,
            store,
            audit,
            secret,
            metrics: crate::serve::app::metrics::Metrics::default(),
            last_boot: crate::serve::store::audit::LastBoots::default(),
            default_base,
            media,
            bmc,
            hardware,
            sessions,
            login_limiter: crate::serve::auth::session::LoginLimiter::default(),
            directory,
            tls: tls_cert.clone(),
            inventory_edit: Mutex::new(()),
            started_at: crate::serve::util::now_ms(),
            host_locks: HostLocks::default(),
        });
        service.sweep_orphans();
        {
            let snap = service.catalog.snapshot();
            service.last_boot.refresh(&service.store, |h| snap.inventory.get(h).is_some());
        }
        let listeners = {
            let _guard = runtime.enter();
            let tokio_listener = |l: std::net::TcpListener| -> std::io::Result<_> {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            };
            crate::serve::web::accept::Listeners {
                plain: plain.map(tokio_listener).transpose()?,
                tls: match (tls_listener, &tls_cert) {
                    (Some(l), Some(cert)) => Some((tokio_listener(l)?, cert.server_config()?)),
                    _ => None,
                },
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let accept = runtime.spawn(crate::serve::web::accept::serve(
            service.clone(),
            crate::serve::web::limits::Settings {
                limits: service.config.limits.clone(),
                trusted_proxies: service.config.trusted_proxies.clone(),
                session_cookie: crate::serve::auth::session::COOKIE_EQ,
            },
            listeners,
            stop_rx,
        ));
        // Directory sessions' re-checks (a no-op without a lookup account); dropped with the
        // runtime at shutdown.
        runtime.spawn(crate::serve::console::login::recheck_sessions(service.clone()));
        runtime.spawn(crate::serve::console::login::expire_sessions(service.clone()));
        // BMC hardware state (a no-op with --bmc-refresh 0); dropped with the runtime.
        runtime.spawn(crate::serve::app::refresher::refresher(service.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        // SIGHUP forces a reload; registering only sets a flag, so it is safe in any thread.
        // The certificate has a flag of its own: the catalog's watcher consumes `hup`.
        let hup_tls = Arc::new(AtomicBool::new(false));
        for flag in [&hup, &hup_tls] {
            if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone()) {
                tracing::warn!("cannot watch SIGHUP ({e}); changes are still picked up by polling");
            }
        }
        let reload = {
            let (svc, stop) = (service.clone(), stop.clone());
            std::thread::Builder::new().name("reload".into()).spawn(move || {
                // Last boots are for the operator's eyes: once a second is fresh enough here
                // (the fleet view refreshes them itself), and keeps a boot storm's upserts
                // from being read back ten times a second.
                let boots_read = std::cell::Cell::new(std::time::Instant::now());
                // Whether the orphan sweep has run on a deciding set read from the database
                // (it has not if the service started while the database was down).
                let swept = std::cell::Cell::new(svc.store.deciding_known());
                svc.catalog.watch(&stop, &hup, |reloaded| {
                    if let Some(cert) = &svc.tls {
                        cert.reload_if_changed(hup_tls.swap(false, Ordering::Relaxed));
                    }
                    if reloaded || (!swept.get() && svc.store.deciding_known()) {
                        swept.set(svc.store.deciding_known());
                        svc.sweep_orphans();
                    }
                    svc.store.poll();
                    if boots_read.get().elapsed() >= Duration::from_secs(1) {
                        boots_read.set(std::time::Instant::now());
                        let snap = svc.catalog.snapshot();
                        svc.last_boot.refresh(&svc.store, |h| snap.inventory.get(h).is_some());
                    }
                });
            })?
        };
        // Retention on a thread of its own: the first run after importing a large old log may
        // delete millions of records, which must not hold up the reload thread's polling.
        let retention = {
            let (svc, stop) = (service.clone(), stop.clone());
            std::thread::Builder::new().name("retention".into()).spawn(move || {
                let mut last: Option<std::time::Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    // Every minute, 10 s of deleting at most (so a stop never waits long, and a
                    // large backlog goes in steps); not while the database is down.
                    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                    if due && svc.store.available().is_ok() {
                        last = Some(std::time::Instant::now());
                        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
                        match crate::serve::store::audit::prune(
                            &svc.store,
                            svc.store.now_ms(),
                            ms(svc.config.keep_boot_records),
                            ms(svc.config.keep_change_records),
                            Duration::from_secs(10),
                        ) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(records = n, "expired audit records deleted"),
                            Err(e) => tracing::warn!("cannot delete expired audit records: {e}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })?
        };
        Ok(Server {
            service,
            local_addr,
            local_tls_addr,
            runtime: Some(runtime),
            stop_accepting: Some(stop_tx),
            accept: Some(accept),
            stop,
            threads: vec![reload, retention],
        })
    }

    /// The plain listener's address; without one, the TLS listener's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address (`--listen-tls`), if there is one.
    pub fn local_tls_addr(&self) -> Option<SocketAddr> {
        self.local_tls_addr
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

/// Runs `bootforge tls check` on the served certificate for the URL nodes use (`--public-url`,
/// else the TLS listener's own address) and logs each problem as a warning; at the start and
/// after each reload that loads a new pair. It never stops the start: an ECDSA certificate, say, is fine for the console's browsers, only not for iPXE.
fn warn_if_ipxe_cannot_boot(
    cert: &std::path::Path,
    ca: Option<&std::path::Path>,
    public_url: &Option<crate::inventory::ServerUrl>,
    tls_addr: SocketAddr,
) {
    let url = match public_url {
        Some(u) => u.clone(),
        None if tls_addr.ip().is_unspecified() => {
            tracing::info!("the TLS listener has no specific address and --public-url is not given: the certificate's name is not checked for iPXE nodes");
            return;
        }
        None => match format!("https://{tls_addr}").parse() {
            Ok(u) => u,
            Err(_) => return,
        },
    };
    // The files were just loaded by `ServerCert`; a failure to read them again (a race
    // with a renewal) only skips this advice.
    let (Ok(chain), ca) = (std::fs::read(cert), ca.map(std::fs::read).transpose()) else {
        return;
    };
    let Ok(ca) = ca else { return };
    let now = (crate::serve::util::now_ms() / 1000) as i64;
    let report = crate::tls::check::check(&chain, ca.as_deref(), &url, now);
    for problem in &report.problems {
        tracing::warn!(url = %url, "iPXE nodes will not be able to boot over HTTPS: {problem}");
    }
}
