//! What `bootforge serve` is started with: the command line, gathered.

use crate::inventory::ServerUrl;
use std::path::PathBuf;

/// How long boot and refusal records are kept unless `--keep-boot-records` says otherwise.
pub const DEFAULT_KEEP_BOOT_RECORDS: std::time::Duration =
    std::time::Duration::from_secs(90 * 86_400);

/// The default of `serve --bmc-refresh`: time between two rounds of hardware state reads
/// (see [`crate::serve::app::hardware`]).
pub const DEFAULT_BMC_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// The default of `serve --bmc-state-timeout`: the longest one BMC's hardware state read may
/// take.
pub const DEFAULT_BMC_STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The default of `serve --bmc-refresh-jobs`.
pub const DEFAULT_BMC_REFRESH_JOBS: usize = 8;
/// The most `--bmc-refresh-jobs` may be: with the slow lane, the refresher then still leaves
/// most of the BMC read slots to `GET /hosts/{h}/media`.
pub const MAX_BMC_REFRESH_JOBS: usize = 32;
/// The range of a non-zero `--bmc-refresh`, in seconds: shorter rounds would only queue
/// behind each other, longer ones are a refresher nobody wants.
pub const BMC_REFRESH_SECS: std::ops::RangeInclusive<u64> = 5..=86_400;

/// Everything `bootforge serve` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The inventory CSV (`--inventory`): the file is the inventory's source of truth, watched
    /// and reloaded. `None`: the database's inventory is (see
    /// [`crate::serve::store::inventory`] and docs/STATE.md).
    pub inventory: Option<PathBuf>,
    pub profiles: PathBuf,
    pub state_dir: PathBuf,
    /// Where state is kept (`--database`): `None` is SQLite in `state_dir`
    /// ([`crate::serve::store::SQLITE_FILE`]).
    pub database: Option<String>,
    /// How long audit records of boots and refusals are kept (`--keep-boot-records`), and
    /// those of changes and operators' actions (`--keep-change-records`); `None`: for ever.
    pub keep_boot_records: Option<std::time::Duration>,
    pub keep_change_records: Option<std::time::Duration>,
    /// `ADDR:PORT` of the plain HTTP listener; port 0 picks a free port (tests). Empty: no plain
    /// listener (`serve --listen-tls` without `--listen`); then `listen_tls` is required.
    pub listen: String,
    /// `ADDR:PORT` of the TLS listener (`--listen-tls`); needs `tls_cert` and `tls_key`. It
    /// shares the plain listener's connection caps, limits and deadlines.
    pub listen_tls: Option<String>,
    /// The served certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1
    /// RSA or SEC1 EC), reloaded when they change (see [`crate::serve::inputs::certs`]).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that issued `tls_cert` (`--tls-ca`): handed to whoever must
    /// trust the service (BMCs fetching media over https) and used by the certificate checks.
    pub tls_ca: Option<PathBuf>,
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
    /// `SOURCE_DATE_EPOCH` of `/media/` images; `None`:
    /// [`crate::serve::app::media::DEFAULT_EPOCH`].
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
    /// gets 504 naming the step reached. Default [`crate::serve::app::bmc::DEFAULT_DEADLINE`].
    pub bmc_deadline: std::time::Duration,
    /// Time between two background reads of every BMC's hardware state (`--bmc-refresh`);
    /// zero: no background reads. Default [`DEFAULT_BMC_REFRESH`].
    pub bmc_refresh: std::time::Duration,
    /// The longest one hardware state read may take (`--bmc-state-timeout`). Default
    /// [`DEFAULT_BMC_STATE_TIMEOUT`].
    pub bmc_state_timeout: std::time::Duration,
    /// Hardware state reads of live BMCs at once (`--bmc-refresh-jobs`); BMCs whose last read
    /// timed out or found nobody have a lane of their own next to these. Default
    /// [`DEFAULT_BMC_REFRESH_JOBS`].
    pub bmc_refresh_jobs: usize,
    pub limits: crate::serve::web::limits::Limits,
    /// The console's directory logins (`--ldap-config`, TOML; see [`crate::serve::auth::ldap`]).
    pub ldap_config: Option<PathBuf>,
    /// Mark session cookies `Secure` even when `--public-url` is not `https://` (a TLS proxy
    /// in front of a service reached by another name). Requests over the service's own TLS
    /// listener get `Secure` cookies whatever this says.
    pub secure_cookies: bool,
    /// How long console sessions last.
    pub sessions: crate::serve::auth::session::Lifetimes,
    /// Proxies (`--trusted-proxy`) whose `X-Forwarded-For` names the client (see
    /// [`crate::serve::web::request::client_address`]); empty: the header is never read.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Config {
    /// A configuration with the defaults for everything optional.
    /// The database URL in effect: `--database`, else SQLite in the state folder.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => crate::serve::store::Store::default_url(&self.state_dir),
        }
    }

    pub fn new(inventory: PathBuf, profiles: PathBuf, state_dir: PathBuf) -> Config {
        Config {
            inventory: Some(inventory),
            profiles,
            state_dir,
            database: None,
            keep_boot_records: Some(DEFAULT_KEEP_BOOT_RECORDS),
            keep_change_records: None,
            listen: "0.0.0.0:8080".into(),
            listen_tls: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
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
            bmc_deadline: crate::serve::app::bmc::DEFAULT_DEADLINE,
            bmc_refresh: DEFAULT_BMC_REFRESH,
            bmc_state_timeout: DEFAULT_BMC_STATE_TIMEOUT,
            bmc_refresh_jobs: DEFAULT_BMC_REFRESH_JOBS,
            limits: crate::serve::web::limits::Limits::default(),
            ldap_config: None,
            secure_cookies: false,
            sessions: crate::serve::auth::session::Lifetimes::default(),
            trusted_proxies: Vec::new(),
        }
    }
}
