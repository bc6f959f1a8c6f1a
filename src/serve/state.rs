//! The flag store: one JSON file per host under `STATE_DIR/hosts/`, the only state that matters.
//!
//! Several instances may share the state directory (NFS, CephFS behind a load balancer), so
//! nothing here is cached: every decision reads the host's file, and every change is a
//! read-modify-write under an exclusive lock on the host's lock file, so two instances changing
//! the same host serialise and the second sees the first's result (a compare-and-swap on
//! [`HostState::version`], enforced by the lock rather than by retrying).
//!
//! Locking uses `flock(2)` on `HOST.lock`. Linux turns `flock` on NFS into POSIX byte-range locks,
//! which the NFS lock manager enforces across clients; POSIX locks do not exclude other threads of
//! the same process, so a per-process mutex stripe is held as well. Lock files are never deleted,
//! because deleting a lock file while another process waits on it breaks the exclusion.
//!
//! A write is a temporary file, `fsync`, `rename` over `HOST.json`, then `fsync` of the directory
//! ([`crate::atomic::write_file`]), all before the API answers: a `kill -9` or a power cut after
//! the answer cannot lose the change, and a crash before it leaves the old file intact.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Where a host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not flagged: boots its local disk.
    #[default]
    Idle,
    /// Flagged; no install chain served yet.
    Pending,
    /// Flagged; the install chain has been served at least once.
    Installing,
    /// Flagged; the installer reported a failure (the next boot tries again).
    Failed,
    /// The last install finished (callback, or cleared on first answer); boots local.
    Done,
}

/// A standing reimage request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub profile: String,
    /// API token name that set it.
    pub set_by: String,
    /// Peer address of the request that set it.
    pub set_from: String,
    pub set_at: u64,
    /// Opened by the first install-chain answer for this flag; see [`Install`].
    #[serde(default)]
    pub install: Option<Install>,
}

/// One install: opened by the first install-chain answer of a flag, and shared by every later
/// answer for the same flag. A machine asks `/boot` more than once during one install (iPXE
/// retries, firmware that boots the medium again on the installer's reboot, an installer that
/// restarts), and all of those belong to the same install, so they all get the same id and the
/// callback of whichever run finishes is accepted. A new flag (a new `PUT`) opens a new install
/// with a new id, so a late or replayed callback from an earlier install changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// 128 random bits, hex; carried in the done and failed URLs.
    pub id: String,
    pub opened_at: u64,
    /// How many install-chain answers were served for it.
    pub answers: u32,
    pub failures: u32,
    pub last_failure_at: Option<u64>,
}

/// The most recent install that ended, kept for `GET /hosts/{h}` and for the repeat window of
/// profiles that clear the flag on the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedInstall {
    pub id: String,
    pub profile: String,
    pub opened_at: u64,
    pub ended_at: u64,
    /// `done` (callback), `first-answer` (profile clears on first answer) or `cancelled`.
    pub how: String,
}

/// What the service saw at a host's last boot request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    pub at: u64,
    pub peer: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// `install` or `local`.
    pub answer: String,
    pub reason: String,
}

/// The content of `hosts/HOST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostState {
    /// Bumped by every write; lets a reader tell two versions apart.
    pub version: u64,
    pub updated_at: u64,
    pub phase: Phase,
    pub flag: Option<Flag>,
    pub last_install: Option<EndedInstall>,
    /// The last boot request that changed this file (install-chain answers do).
    pub last_boot: Option<BootRecord>,
}

/// Errors of the store: I/O, or a file that is not valid JSON (reported with its path).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not valid JSON ({message}); fix or remove it")]
    Corrupt { path: String, message: String },
}

const STRIPES: usize = 64;

/// The per-host flag files of one state directory.
pub struct Store {
    dir: PathBuf,
    stripes: Vec<Mutex<()>>,
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
        Ok(Store { dir, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() })
    }

    fn path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// Reads a host's state; a host never flagged has the default state. `host` must be a
    /// validated host name (it becomes a file name).
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

    /// Read-modify-write of one host under its lock. `change` gets the current state and returns
    /// its result plus whether to write; on `true` the version is bumped and the file replaced
    /// durably before this returns. An error from `change` writes nothing.
    pub fn update<T, E: From<StoreError>>(
        &self,
        host: &str,
        change: impl FnOnce(&mut HostState) -> Result<(T, bool), E>,
    ) -> Result<T, E> {
        self.update_and_read(host, change).map(|(value, _)| value)
    }

    /// Like [`Store::update`] for changes whose caller answers with the host's new state: returns
    /// whether `change` wrote, and the state as stored afterwards (version already bumped).
    pub fn modify<E: From<StoreError>>(
        &self,
        host: &str,
        change: impl FnOnce(&mut HostState) -> Result<bool, E>,
    ) -> Result<(HostState, bool), E> {
        self.update_and_read(host, |st| change(st).map(|write| (write, write)))
            .map(|(written, state)| (state, written))
    }

    fn update_and_read<T, E: From<StoreError>>(
        &self,
        host: &str,
        change: impl FnOnce(&mut HostState) -> Result<(T, bool), E>,
    ) -> Result<(T, HostState), E> {
        let _guard = self.lock(host)?;
        let mut state = self.read(host)?;
        let (value, write) = change(&mut state)?;
        if write {
            state.version += 1;
            state.updated_at = super::util::now_ms();
            let path = self.path(host);
            let mut bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
            bytes.push(b'\n');
            crate::atomic::write_file(&path, &bytes)
                .map_err(|e| StoreError::Io { path: path.display().to_string(), source: e })?;
        }
        Ok((value, state))
    }

    fn lock(&self, host: &str) -> Result<HostLock<'_>, StoreError> {
        let stripe = host.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let guard = self.stripes[stripe % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(format!("{host}.lock"));
        let io = |e| StoreError::Io { path: path.display().to_string(), source: e };
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor we own; released by close when `file` drops.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(io(err));
            }
        }
        Ok(HostLock { _file: file, _guard: guard })
    }
}

/// Holds a host's lock; dropping it closes the lock file, which releases the `flock`.
struct HostLock<'a> {
    _file: File,
    _guard: MutexGuard<'a, ()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_durable_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read("n1").unwrap(), HostState::default());
        store
            .update::<_, StoreError>("n1", |s| {
                s.phase = Phase::Pending;
                Ok(((), true))
            })
            .unwrap();
        let other = Store::open(dir.path()).unwrap();
        let s = other.read("n1").unwrap();
        assert_eq!((s.version, s.phase), (1, Phase::Pending));
        assert_eq!(other.hosts(), vec!["n1".to_string()]);
    }

    #[test]
    fn concurrent_updates_do_not_lose_increments() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let b = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        s.update::<_, StoreError>("h", |_| Ok(((), true))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.read("h").unwrap().version, 40);
    }
}
