//! Where state lives: the per-host flag files ([`files`]) and the audit log ([`audit`]).
//!
//! [`HostStore`] is the interface the service's single write path ([`crate::serve::app::change`])
//! uses, and all it uses: a database store implements it and nothing above this folder changes.
//! It is deliberately small: a host's state is read, and written only under that host's lock,
//! whose holder is the only writer (a compare-and-swap on [`HostState::version`] enforced by the
//! lock). Errors are this layer's own [`StoreError`]; the HTTP status they map to is decided in
//! one place above (`app::error`).

pub mod audit;
pub mod files;

use crate::serve::domain::lifecycle::HostState;

/// The longest host name that can have a state file (`NAME.json` and the temporary files of a
/// write must fit in the 255 bytes of a file name).
pub const MAX_STORED_NAME: usize = 200;

/// Errors of the store: I/O, or a file that is not valid JSON (reported with its path). The
/// paths are for the server log and authenticated callers, never for an unauthenticated answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not valid JSON ({message}); fix or remove it")]
    Corrupt { path: String, message: String },
    #[error("host names longer than {MAX_STORED_NAME} characters cannot have state (file names are limited)")]
    NameTooLong,
}

/// A held lock on one host's state: while it lives, no other writer (thread or instance) can
/// change that host.
pub trait Locked {
    /// The host this lock is for.
    fn host(&self) -> &str;
}

/// The per-host state operations of a store.
pub trait HostStore: Send + Sync {
    type Lock: Locked + Send;

    /// Whether `host`'s state may decide a boot (a flag, or an install open): a cheap check from
    /// memory that may err only towards `true`, so the common boot costs no read.
    fn may_decide(&self, host: &str) -> bool;
    /// Follows other instances' writes (the reload thread calls it often); `force` rereads all.
    fn rescan(&self, force: bool);
    /// `host`'s state; the default (no flag) when it has none.
    fn read(&self, host: &str) -> Result<HostState, StoreError>;
    /// Every host that has state.
    fn hosts(&self) -> Vec<String>;
    /// `host`'s lock, or `None` at once when someone else holds it (never waits).
    fn try_lock(&self, host: &str) -> Result<Option<Self::Lock>, StoreError>;
    /// Writes `state` durably (bumping its version and time stamp) before returning.
    fn write(&self, lock: &Self::Lock, state: &mut HostState) -> Result<(), StoreError>;
}
