//! The single write path: one host's state changed in one database transaction, its audit record
//! with it ([`Service::change`]), and the orphan sweep that uses the same path.

use crate::serve::app::service::Service;
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::HostState;
use crate::serve::web::reply::HttpError;
use std::sync::Arc;
use std::time::Duration;

pub use crate::serve::store::Change;

/// How long a request waits for its turn on a host another request of this process is changing
/// before giving up (a boot then answers local, the API 503).
const LOCK_WAIT: Duration = Duration::from_secs(10);

impl Service {
    /// Read-modify-write of `host`'s state: `change` gets the stored state and the database's
    /// time, and says what to answer, whether to write, and the audit record; the store commits
    /// the state and its record together ([`crate::serve::store::Store::change`]). If another
    /// replica wrote the host first, `change` runs again on its result, so it must depend only
    /// on its arguments and what it captured.
    ///
    /// Requests of this process for one host take turns (an async mutex, so a waiting request
    /// holds no thread): they would only lose races to each other in the database. Nothing
    /// blocks a thread; the transaction runs on the store's runtime.
    pub async fn change<T: Send + 'static>(
        self: &Arc<Self>,
        host: &str,
        change: impl FnMut(&Service, &mut HostState, u64) -> Result<Change<T>, HttpError>
            + Send
            + 'static,
    ) -> Result<T, HttpError> {
        self.change_until(host, None, change).await
    }

    /// [`Service::change`] for a caller that stops waiting at `deadline`: see
    /// [`crate::serve::store::Store::change_until`].
    pub async fn change_until<T: Send + 'static>(
        self: &Arc<Self>,
        host: &str,
        deadline: Option<std::time::Instant>,
        mut change: impl FnMut(&Service, &mut HostState, u64) -> Result<Change<T>, HttpError>
            + Send
            + 'static,
    ) -> Result<T, HttpError> {
        let turn = tokio::time::timeout(LOCK_WAIT, self.host_locks.lock(host));
        let _turn = turn.await.map_err(|_| HttpError::busy())?;
        let svc = self.clone();
        let host_name = host.to_string();
        let outcome = self
            .store
            .change_until(host, deadline, move |st, now| {
                let c = change(&svc, st, now)?;
                if !c.write {
                    if let Some(record) = &c.record {
                        svc.audit.note(record);
                    }
                }
                Ok(c)
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(e) => {
                self.audit.note(&Event::ChangeNotApplied { host: host_name, after: "change" });
                match e {
                    crate::serve::store::StoreError::Database(message) => {
                        tracing::error!(host = %host, "the database refused a change: {message}");
                        Err(HttpError::new(
                            500,
                            "the state database refused the change and its audit record (see the server log); nothing was changed",
                        ))
                    }
                    other => Err(other.into()),
                }
            }
        }
    }

    /// Ends the flags of hosts that left the inventory (see
    /// [`crate::serve::domain::lifecycle::orphan`]). Runs at start-up and after every successful
    /// reload, on a thread that may block.
    ///
    /// Only on SQLite, where this process's inventory is the only one. On a shared database each
    /// replica reads its own copy of the CSV (or reloads the database's inventory a moment after
    /// the others), and copies change one after the other: a replica whose copy lags (not yet updated, or restarted first) would end flags that were set, and
    /// acknowledged, through a replica that already has the host. A flag of a host outside the
    /// inventory decides nothing (boots need an inventory row) and is listed under `orphans` in
    /// `GET /hosts`, where an operator cancels it.
    pub fn sweep_orphans(self: &Arc<Self>) {
        if self.store.engine() != crate::serve::store::engine::Engine::Sqlite {
            return;
        }
        let snap = self.catalog.snapshot();
        let gone: Vec<String> = self
            .store
            .deciding_hosts()
            .into_iter()
            .filter(|h| snap.inventory.get(h).is_none())
            .collect();
        drop(snap);
        for host in gone {
            let svc = self.clone();
            let h = host.clone();
            let result = self.store.wait(async move {
                svc.change(&h, {
                    let h = h.clone();
                    move |svc, st, now| {
                        // The inventory may have changed since the sweep began (a concurrent
                        // reload that re-added the host): check it again in the transaction.
                        if svc.catalog.snapshot().inventory.get(&h).is_some() {
                            return Ok(Change { value: false, write: false, record: None });
                        }
                        let (ended, write) = crate::serve::domain::lifecycle::orphan(st, now);
                        let record =
                            ended.map(|install| Event::FlagOrphaned { host: h.clone(), install });
                        Ok(Change { value: write, write, record })
                    }
                })
                .await
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
