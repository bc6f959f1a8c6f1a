//! The flag store: one JSON file per host under `STATE_DIR/hosts/`, the only state that matters.
//!
//! Several instances may share the state directory (NFS, CephFS behind a load balancer), so
//! nothing here is cached: every decision reads the host's file, and every change is a
//! read-modify-write under an exclusive lock on the host's lock file, so two instances changing
//! the same host serialise and the second sees the first's result (a compare-and-swap on
//! [`HostState::version`], enforced by the lock rather than by retrying).
//!
//! Locking uses `flock(2)` on `HOST.lock`, always tried without waiting ([`Store::try_lock`]): a
//! request that finds the lock taken gives its thread back and tries again a little later, so a
//! lock held by another instance (or a slow NFS server) delays that host's requests and no one
//! else's. Linux turns `flock` on NFS into POSIX byte-range locks, which the NFS lock manager
//! enforces across clients but which do not exclude threads of one process; the service holds a
//! per-host in-process lock as well (`Service::change`). Lock files are never deleted, because
//! deleting a lock file while another process waits on it breaks the exclusion.
//!
//! A write is a temporary file, `fsync`, `rename` over `HOST.json`, then `fsync` of the directory
//! ([`crate::atomic::write_file`]), all before the API answers: a `kill -9` or a power cut after
//! the answer cannot lose the change, and a crash before it leaves the old file intact.

use super::lifecycle::HostState;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors of the store: I/O, or a file that is not valid JSON (reported with its path). The
/// paths are for the server log and authenticated callers, never for an unauthenticated answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not valid JSON ({message}); fix or remove it")]
    Corrupt { path: String, message: String },
}

/// The per-host flag files of one state directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) `STATE_DIR/hosts` and checks it is writable, so a read-only mount is
    /// reported at start-up rather than at the first reimage.
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        let dir = state_dir.join("hosts");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create state directory {}: {e}", dir.display()))?;
        let probe = dir.join(".write-test");
        crate::atomic::write_file(&probe, b"ok").map_err(|e| {
            anyhow::anyhow!("state directory {} is not writable: {e}", dir.display())
        })?;
        let _ = std::fs::remove_file(&probe);
        Ok(Store { dir })
    }

    fn path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// Reads a host's state without a lock (files are replaced by rename, so a reader sees a
    /// whole old or a whole new version). A host never flagged has the default state. `host`
    /// must be a validated host name of the inventory (it becomes a file name).
    pub fn read(&self, host: &str) -> Result<HostState, StoreError> {
        let path = self.path(host);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(HostState::default()),
            Err(e) => Err(StoreError::Io { path: path.display().to_string(), source: e }),
        }
    }

    /// Host names that have a state file, for listings.
    pub fn hosts(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter(|h| !h.starts_with('.'))
            .collect()
    }

    /// Takes the host's cross-process lock if it is free, without waiting: `Ok(None)` means
    /// another holder has it. Callers wait *between* tries (asynchronously, see
    /// `Service::change`), so a lock held elsewhere never parks a thread. Exclusion between
    /// threads of this process is the caller's job too: on NFS, Linux turns `flock` into POSIX
    /// locks, which do not exclude them.
    pub fn try_lock(&self, host: &str) -> Result<Option<HostLock>, StoreError> {
        self.lock_with(host, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Takes the host's lock, waiting as long as it takes. Only for threads that may block
    /// (the reload thread's orphan sweep, tests), never for a request.
    pub fn lock_blocking(&self, host: &str) -> Result<HostLock, StoreError> {
        Ok(self.lock_with(host, libc::LOCK_EX)?.expect("a blocking flock returns with the lock"))
    }

    fn lock_with(&self, host: &str, op: libc::c_int) -> Result<Option<HostLock>, StoreError> {
        let path = self.dir.join(format!("{host}.lock"));
        let io = |e| StoreError::Io { path: path.display().to_string(), source: e };
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor we own; released by close when `file` drops.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(Some(HostLock { file, host: host.to_string() }));
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(io(err)),
            }
        }
    }

    /// Replaces the host's file durably (temp file, fsync, rename, fsync of the folder) while
    /// `lock` is held, bumping the version.
    pub fn write(&self, lock: &HostLock, state: &mut HostState) -> Result<(), StoreError> {
        state.version += 1;
        state.updated_at = super::util::now_ms();
        let path = self.path(&lock.host);
        let mut bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        bytes.push(b'\n');
        crate::atomic::write_file(&path, &bytes)
            .map_err(|e| StoreError::Io { path: path.display().to_string(), source: e })
    }
}

/// Holds a host's lock; dropping it closes the lock file, which releases the `flock`. Lock
/// files are never deleted: deleting one that another process waits on breaks the exclusion.
pub struct HostLock {
    #[allow(dead_code)] // held for its descriptor
    file: File,
    host: String,
}

impl HostLock {
    pub fn host(&self) -> &str {
        &self.host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_durable_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read("n1").unwrap(), HostState::default());
        let lock = store.lock_blocking("n1").unwrap();
        let mut st = store.read("n1").unwrap();
        st.last_boot = None;
        store.write(&lock, &mut st).unwrap();
        drop(lock);
        let other = Store::open(dir.path()).unwrap();
        assert_eq!(other.read("n1").unwrap().version, 1);
        assert_eq!(other.hosts(), vec!["n1".to_string()]);
    }

    #[test]
    fn a_held_lock_is_reported_busy_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        let held = a.try_lock("h").unwrap().expect("free");
        assert!(b.try_lock("h").unwrap().is_none(), "held by another descriptor");
        assert!(b.try_lock("other").unwrap().is_some(), "other hosts are not affected");
        drop(held);
        assert!(b.try_lock("h").unwrap().is_some());
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("hosts/bad.json"), "{").unwrap();
        let err = store.read("bad").unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("not valid JSON"), "{err}");
    }
}
