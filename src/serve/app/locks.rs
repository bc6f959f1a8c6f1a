//! In-process per-host locks, held around a host's change together with the store's own lock
//! (see [`crate::serve::app::change`] for why both).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// In-process per-host locks. Async, so a request waiting for a busy host holds no thread; the
/// map only ever holds inventory hosts (and is pruned of idle entries as it grows).
#[derive(Default)]
pub struct HostLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl HostLocks {
    fn entry(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(host.to_string()).or_default().clone()
    }

    pub async fn lock(&self, host: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(host).lock_owned().await
    }

    pub fn lock_blocking(&self, host: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(host).blocking_lock_owned()
    }
}
