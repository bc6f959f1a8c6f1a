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
    /// The base URL for nodes without a `server` column: `--public-url`, else the listen
    /// address if it is a specific one.
    pub default_base: Option<ServerUrl>,
    /// Templates and the URL key for `/media/`.
    pub media: crate::serve::app::media::Media,
    /// The Redfish client and credentials, when started with `--bmc-credentials`.
    pub bmc: Option<crate::serve::app::bmc::Bmc>,
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
    pub fn base_for(&self, node: &Node) -> Option<String> {
        node.server.as_ref().or(self.default_base.as_ref()).map(|s| s.to_string())
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
