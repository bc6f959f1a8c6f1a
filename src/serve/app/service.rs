//! The shared state of a running service, and the helper every handler uses to run disk work
//! ([`Service::blocking`]); the other, the single write path ([`Service::change`]), is in
//! [`crate::serve::app::change`].

use crate::inventory::{Node, ServerUrl};
use crate::serve::app::config::Config;
use crate::serve::app::locks::HostLocks;
use crate::serve::web::reply::HttpError;
use crate::token::Secret;
use std::sync::{Arc, Mutex};

/// The shared state of a running service.
pub struct Service {
    pub config: Config,
    pub catalog: crate::serve::inputs::catalog::Catalog,
    /// The database: hosts' states (changed only through the single write path in
    /// [`crate::serve::app::change`]), the audit log and last boots.
    pub store: Arc<crate::serve::store::Store>,
    pub audit: crate::serve::store::audit::Audit,
    pub secret: Option<Secret>,
    pub metrics: crate::serve::app::metrics::Metrics,
    /// Each inventory host's last verified boot, followed from the database.
    pub last_boot: crate::serve::store::audit::LastBoots,
    /// The base URL for nodes without a `server` column (see [`DefaultBase`]).
    pub default_base: DefaultBase,
    /// Templates and the URL key for `/media/`.
    pub media: crate::serve::app::media::Media,
    /// The Redfish client and credentials, when started with `--bmc-credentials`.
    pub bmc: Option<crate::serve::app::bmc::Bmc>,
    /// Each BMC host's live hardware state, kept by the background refresher.
    pub hardware: crate::serve::app::hardware::Hardware,
    /// The console's sessions, failed-login counts, and directory (with `--ldap-config`).
    pub sessions: crate::serve::auth::session::Sessions,
    pub login_limiter: crate::serve::auth::session::LoginLimiter,
    pub directory: Option<crate::serve::auth::ldap::Directory>,
    /// One inventory edit at a time (read, change, validate, write, reload).
    pub inventory_edit: Mutex<()>,
    /// The TLS listener's certificate and key (`--tls-cert`, `--tls-key`), reloaded by the
    /// reload watcher; `None` without `--listen-tls`.
    pub tls: Option<Arc<crate::serve::inputs::certs::ServerCert>>,
    /// When this process started (milliseconds since 1970), for `/status`.
    pub started_at: u64,
    pub(crate) host_locks: HostLocks,
}

impl Service {
    /// How long console sessions last.
    pub fn sessions_life(&self) -> crate::serve::auth::session::Lifetimes {
        self.config.sessions
    }

    /// The base URL that `node` reaches this service at: its row's `server`, else the
    /// service's own. Never `None` for a loaded inventory (the catalog refuses rows without
    /// one when the service has none, see `rows_need_server`).
    ///
    /// `tls`: whether the request being answered came over the TLS listener ([`Req::tls`]),
    /// which picks the service's own address when there is no `--public-url`.
    ///
    /// [`Req::tls`]: crate::serve::web::request::Req::tls
    pub fn base_for(&self, node: &Node, tls: bool) -> Option<ServerUrl> {
        node.server.clone().or_else(|| self.default_base.for_request(tls).cloned())
    }

    /// Runs `work` on the blocking pool: anything that touches the disk or renders.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Arc<Service>) -> T + Send + 'static,
    ) -> Result<T, HttpError> {
        let svc = self.clone();
        tokio::task::spawn_blocking(move || work(&svc))
            .await
            .map_err(|e| HttpError::internal(format!("a handler failed: {e}")))
    }
}

/// The base URL for nodes whose row has no `server`: `--public-url`, else the address of the
/// listener a request came in on (when it is a specific address, not `0.0.0.0`).
///
/// Per listener because both may run at once: a node that reached the plain listener (a BIOS
/// node, whose iPXE cannot trust a private CA) is sent `http://` URLs it can fetch, one that
/// came over TLS `https://` ones. Never from the request's `Host` header: a header anyone can
/// set must not decide where a node sends its token.
#[derive(Debug, Clone, Default)]
pub struct DefaultBase {
    /// `--public-url`: used for every request when given.
    pub public: Option<ServerUrl>,
    /// `http://ADDR` of the plain listener, `https://ADDR` of the TLS one.
    pub plain: Option<ServerUrl>,
    pub tls: Option<ServerUrl>,
}

impl DefaultBase {
    /// For a request that came over TLS (`tls`) or not: `--public-url`, else that listener's
    /// own address, else the other listener's.
    pub fn for_request(&self, tls: bool) -> Option<&ServerUrl> {
        let (mine, other) = if tls { (&self.tls, &self.plain) } else { (&self.plain, &self.tls) };
        self.public.as_ref().or(mine.as_ref()).or(other.as_ref())
    }

    /// Without a request (`/status`, the start-up line): `--public-url`, else the TLS
    /// listener's address, else the plain one's.
    pub fn preferred(&self) -> Option<&ServerUrl> {
        self.for_request(true)
    }
}
