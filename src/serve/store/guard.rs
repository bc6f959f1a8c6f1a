//! The two guards of a SQLite file: one process at a time, and never on a network file system.
//!
//! SQLite is safe for many connections of one process, and its locks would even let a second
//! `serve` share the file; but two services over one file is the replication scheme this store
//! replaced, without the failure handling of a server (see docs/REPLICAS.md). So the store holds
//! an exclusive `flock(2)` on the database file for its whole life, and a second process fails
//! at once with a message that says what to do instead. (`flock` and SQLite's own POSIX locks
//! are independent on Linux, so this lock does not disturb SQLite.)
//!
//! On NFS, SMB and the like, SQLite's locking and its write-ahead log (which needs shared memory
//! between its users) are not reliable: the file can be corrupted. The folder's file system type
//! is checked with `statfs(2)`, and a network one refused with a pointer to PostgreSQL.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The held lock on a SQLite file; released when dropped (the descriptor closes).
pub struct FileGuard {
    _file: File,
}

impl FileGuard {
    /// Checks the folder's file system, then takes the lock without waiting.
    pub fn take(path: &Path) -> anyhow::Result<FileGuard> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Some(fs) = network_fs(dir)? {
            anyhow::bail!(
                "the SQLite database {} is on a network file system ({fs}), where SQLite's locks and write-ahead log are not reliable and the file can be corrupted. Keep it on a local disk (--state-dir), or run the service on PostgreSQL (--database postgres://…, see docs/REPLICAS.md) to share state between machines",
                path.display()
            );
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor we own; released by close when `file` drops.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(FileGuard { _file: file });
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => anyhow::bail!(
                    "the database {} is in use by another bootforge process (a `serve`, or a `state` command). One SQLite file serves one process: stop the other one, or run replicas on PostgreSQL (--database postgres://…, see docs/REPLICAS.md)",
                    path.display()
                ),
                _ => anyhow::bail!("cannot lock the database {}: {err}", path.display()),
            }
        }
    }
}

/// The name of the network file system `dir` is on, if it is on one.
fn network_fs(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| anyhow::anyhow!("the path {} holds a NUL byte", dir.display()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs with a NUL-terminated path and a pointer to a local struct.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot check the file system of {}: {e}", dir.display());
    }
    Ok(network_fs_name(st.f_type as i64))
}

/// Network and cluster file systems by their `statfs` magic number (linux/magic.h and the
/// file systems' own headers).
pub fn network_fs_name(magic: i64) -> Option<&'static str> {
    Some(match magic as u32 {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x00C3_6400 => "CephFS",
        0x0102_1997 => "9p",
        0x5346_414F => "AFS",
        0x6B41_4653 => "AFS (kAFS)",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        0x0BD0_0BD0 => "Lustre",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_at_once_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let held = FileGuard::take(&path).unwrap();
        let err = FileGuard::take(&path).err().expect("refused").to_string();
        assert!(err.contains("in use by another bootforge process"), "{err}");
        assert!(err.contains("PostgreSQL"), "{err}");
        drop(held);
        FileGuard::take(&path).expect("free again once the holder is gone");
    }

    #[test]
    fn network_file_systems_are_known_and_local_ones_pass() {
        assert_eq!(network_fs_name(0x6969), Some("NFS"));
        assert_eq!(network_fs_name(0xFF53_4D42u32 as i64), Some("CIFS"));
        assert_eq!(network_fs_name(0xEF53), None, "ext4");
        assert_eq!(network_fs_name(0x0102_1994), None, "tmpfs");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_fs(dir.path()).unwrap(), None);
    }
}
