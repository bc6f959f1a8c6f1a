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

use super::{HostStore, StoreError, MAX_STORED_NAME};
use crate::serve::domain::lifecycle::HostState;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// The per-host flag files of one state directory.
pub struct Store {
    dir: PathBuf,
    /// Hosts whose file may decide a boot: see [`Store::may_decide`].
    deciding: RwLock<HashSet<String>>,
    scan: Mutex<Scan>,
}

/// What the last scan of the folder saw: the folder's stamp, and each file's.
#[derive(Default)]
struct Scan {
    dir: Option<Stamp>,
    files: HashMap<String, Stamp>,
    full_at: Option<Instant>,
}

/// (mtime seconds, mtime nanoseconds, size, inode).
type Stamp = (i64, i64, u64, u64);

/// A full rescan happens at least this often, whatever the folder's stamp says.
const FULL_SCAN: Duration = Duration::from_secs(5);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (m.mtime(), m.mtime_nsec(), m.len(), m.ino())
}

/// Whether a stored state can make a boot anything but local: a standing flag, or a
/// first-answer install whose repeat window may still be open. Unreadable files count too (the
/// boot then reads the file, and says why it boots local).
fn decides(state: Option<&HostState>) -> bool {
    state.is_none_or(|st| st.flag.is_some() || st.unclosed_window().is_some())
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
        let store = Store { dir, deciding: RwLock::default(), scan: Mutex::default() };
        store.rescan(true);
        Ok(store)
    }

    fn path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// Takes the host's lock, waiting as long as it takes (tests; the service never waits so).
    #[cfg(test)]
    pub fn lock_blocking(&self, host: &str) -> Result<HostLock, StoreError> {
        Ok(self.lock_with(host, libc::LOCK_EX)?.expect("a blocking flock returns with the lock"))
    }

    fn lock_with(&self, host: &str, op: libc::c_int) -> Result<Option<HostLock>, StoreError> {
        if host.len() > MAX_STORED_NAME {
            return Err(StoreError::NameTooLong);
        }
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
}

impl HostStore for Store {
    type Lock = HostLock;

    /// Whether `host`'s file may decide its boot. `false` means the boot is local without
    /// reading the file, which is how a boot storm of unflagged hosts costs no disk access.
    ///
    /// The set is exact for this instance's own writes ([`Store::write`] updates it) and follows
    /// other instances' writes through [`Store::rescan`], run every 100 ms by the reload thread.
    /// So a flag set through another instance takes effect here within about that long (on NFS,
    /// within the client's attribute cache time for directories). It can err only towards a
    /// local boot: a `true` is always checked against the file itself, under the host's lock.
    fn may_decide(&self, host: &str) -> bool {
        self.deciding.read().unwrap_or_else(|p| p.into_inner()).contains(host)
    }

    /// Re-reads the files that changed since the last scan, if the folder changed (a write is a
    /// rename into it), or all of them every [`FULL_SCAN`] or when `force`d.
    fn rescan(&self, force: bool) {
        let mut scan = self.scan.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::fs::metadata(&self.dir).ok().map(|m| stamp(&m));
        let due = scan.full_at.is_none_or(|t| t.elapsed() >= FULL_SCAN);
        if !force && !due && dir.is_some() && dir == scan.dir {
            return;
        }
        scan.dir = dir;
        scan.full_at = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut seen = HashMap::with_capacity(scan.files.len());
        let mut changed = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(host) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if host.starts_with('.') {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let st = stamp(&meta);
            if scan.files.get(host) != Some(&st) {
                changed.push(host.to_string());
            }
            seen.insert(host.to_string(), st);
        }
        let gone: Vec<String> =
            scan.files.keys().filter(|h| !seen.contains_key(*h)).cloned().collect();
        scan.files = seen;
        drop(scan);
        let mut updates: Vec<(String, bool)> = changed
            .into_iter()
            .map(|h| {
                let d = decides(self.read(&h).ok().as_ref());
                (h, d)
            })
            .collect();
        updates.extend(gone.into_iter().map(|h| (h, false)));
        if updates.is_empty() {
            return;
        }
        let mut deciding = self.deciding.write().unwrap_or_else(|p| p.into_inner());
        for (host, d) in updates {
            if d {
                deciding.insert(host);
            } else {
                deciding.remove(&host);
            }
        }
    }

    /// Reads a host's state without a lock (files are replaced by rename, so a reader sees a
    /// whole old or a whole new version). A host never flagged has the default state. `host`
    /// must be a validated host name of the inventory (it becomes a file name).
    fn read(&self, host: &str) -> Result<HostState, StoreError> {
        if host.len() > MAX_STORED_NAME {
            return Ok(HostState::default()); // such a host can never have been written
        }
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
    fn hosts(&self) -> Vec<String> {
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
    fn try_lock(&self, host: &str) -> Result<Option<HostLock>, StoreError> {
        self.lock_with(host, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Replaces the host's file durably (temp file, fsync, rename, fsync of the folder) while
    /// `lock` is held, bumping the version.
    fn write(&self, lock: &HostLock, state: &mut HostState) -> Result<(), StoreError> {
        state.version += 1;
        state.updated_at = crate::serve::util::now_ms();
        let path = self.path(&lock.host);
        let mut bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        bytes.push(b'\n');
        // Counted as deciding before the write lands, so no reader can miss it.
        let mut deciding = self.deciding.write().unwrap_or_else(|p| p.into_inner());
        deciding.insert(lock.host.clone());
        drop(deciding);
        crate::atomic::write_file(&path, &bytes)
            .map_err(|e| StoreError::Io { path: path.display().to_string(), source: e })?;
        if !decides(Some(state)) {
            self.deciding.write().unwrap_or_else(|p| p.into_inner()).remove(&lock.host);
        }
        Ok(())
    }
}

/// Holds a host's lock; dropping it closes the lock file, which releases the `flock`. Lock
/// files are never deleted: deleting one that another process waits on breaks the exclusion.
pub struct HostLock {
    #[allow(dead_code)] // held for its descriptor
    file: File,
    host: String,
}

impl super::Locked for HostLock {
    fn host(&self) -> &str {
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
    fn only_files_that_can_decide_a_boot_are_watched() {
        use crate::serve::domain::lifecycle::cancel;
        use crate::serve::domain::lifecycle::set_flag;
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        let lock = a.lock_blocking("h").unwrap();
        let mut st = a.read("h").unwrap();
        set_flag(&mut st, "p", "ops", "x", "1".repeat(32), 1);
        a.write(&lock, &mut st).unwrap();
        assert!(a.may_decide("h"), "own writes count at once");
        assert!(!b.may_decide("h"), "another instance sees it at its next scan");
        b.rescan(false);
        assert!(b.may_decide("h"));
        cancel(&mut st, |_| None, 2);
        a.write(&lock, &mut st).unwrap();
        assert!(!a.may_decide("h"));
        b.rescan(true);
        assert!(!b.may_decide("h"));
        std::fs::write(dir.path().join("hosts/bad.json"), "{").unwrap();
        b.rescan(true);
        assert!(b.may_decide("bad"), "an unreadable file is read at boot, to say why");
        // A new store starts from the files.
        assert!(Store::open(dir.path()).unwrap().may_decide("bad"));
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
