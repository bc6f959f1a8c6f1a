//! The single write path: read-modify-write of one host's state under its locks, audit record
//! first ([`Service::change`]), and the orphan sweep that uses the same path.

use crate::serve::app::service::Service;
use crate::serve::domain::event::Event;
use crate::serve::domain::lifecycle::HostState;
use crate::serve::store::HostStore;
use crate::serve::store::Locked;
use crate::serve::web::reply::HttpError;
use std::sync::Arc;
use std::time::Duration;

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
        lock: &crate::serve::store::files::HostLock,
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

    /// Ends the flags of hosts that left the inventory (see
    /// [`crate::serve::domain::lifecycle::orphan`]). Runs at start-up and after every successful
    /// reload, on a thread that may block.
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
                let (ended, write) =
                    crate::serve::domain::lifecycle::orphan(st, crate::serve::util::now_ms());
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
