//! Whether a host's open install is **stalled**, for the fleet view, the timeline, retry and
//! `/metrics`: from its state and its last fetch (followed in memory by
//! [`crate::serve::store::audit::LastBoots`]), with its profile's `stall_after`. No query.

use crate::serve::domain::lifecycle::{HostState, Phase};
use crate::serve::inputs::catalog::Snapshot;

/// What the fleet view shows of a host's open install.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stall {
    pub stalled: bool,
    /// The open install's last progress.
    pub progress_ms: Option<u64>,
    /// Its profile's `stall_after`, in seconds.
    pub stall_after_s: Option<u64>,
}

/// The open install's [`Stall`]: `fetched` is the host's last config or asset fetch.
pub fn stall_of(snap: &Snapshot, st: &HostState, fetched: Option<u64>, now: u64) -> Stall {
    let Some(flag) = &st.flag else { return Stall::default() };
    let stall_after_s = snap.profiles.get(&flag.profile).map(|p| p.settings.stall_after_secs);
    let stalled = stall_after_s.is_some_and(|s| st.stalled(s.saturating_mul(1000), fetched, now));
    Stall { stalled, progress_ms: st.progress_at(fetched), stall_after_s }
}

/// Whether the host's install has begun and not ended: what `in_progress` counts.
pub fn in_progress(st: &HostState) -> bool {
    matches!(st.phase(), Phase::Installing | Phase::Started | Phase::Failed)
}
