//! The install lifecycle: what a host's stored state means, and every way it may change.
//!
//! This module is the service's core and the only place that decides whether a machine installs.
//! It is pure: each transition is a function of a [`HostState`], the profile's [`Rules`] and the
//! current time, returning an outcome enum and whether the state changed. Nothing here reads a
//! file, a clock or a request; the handlers gather those, call one transition under the host's
//! lock, and write the result (see [`crate::serve::store::files`] for storage, and
//! the handlers in [`crate::serve::api`]).
//!
//! ```text
//!            PUT (set_flag)                 boot (answer_boot)              done (finish)
//!   idle ───────────────────▶ pending ─────────────────────────▶ installing ──────────────▶ done
//!    ▲                           │                                 │  ▲  │  ▲
//!    │                           │              started (start)    ▼  │  │  │ done (finish)
//!    │                           │                              started ─┼──┘
//!    │                           │                                 │     │ failed (fail),
//!    │      DELETE (cancel)      │                                 ▼     │ next boot retries
//!    └───────────────────────────┴──────────────────────────────  failed ┘
//! ```
//!
//! `installing`, `started` and `failed` are all "flagged, install open"; which one the operator
//! sees is whichever of the last answer, the installer's last `started` and its last `failed`
//! came last (see [`HostState::phase`]).
//!
//! A flag carries its install id from the moment it is set, so every rendered config (even one
//! fetched while the flag is pending) carries a callback that can succeed. Profiles that cannot
//! call back (`clear = "first-answer"`) end the install at the first answer but keep serving the
//! same install for a bounded *repeat window*; a cancel closes that window too.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// How far in the future a stored time stamp may lie and still be trusted (clocks of instances
/// sharing a state directory differ a little). Anything later is treated as corrupt.
pub const CLOCK_SKEW_MS: Millis = 5_000;

/// What the operator sees of a host; derived from the state, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not flagged: boots its local disk.
    Idle,
    /// Flagged; no install chain served yet.
    Pending,
    /// Flagged; the install chain has been served.
    Installing,
    /// Flagged; the installer itself reported that it runs (its `started` callback) since the
    /// last answer: the kernel booted, its network came up and it reached the service.
    Started,
    /// Flagged; the installer reported a failure since the last answer (the next boot retries).
    Failed,
    /// The last install finished (callback, or ended by its first answer); boots local.
    Done,
}

/// A standing reimage request and the install it leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub profile: String,
    /// Name of the API token (or login) that set it.
    pub set_by: String,
    /// Peer address of the request that set it.
    pub set_from: String,
    pub set_at: Millis,
    /// The install this flag leads to; its id exists from the moment the flag is set.
    #[serde(deserialize_with = "install_or_legacy_none")]
    pub install: Install,
}

/// One install: every install-chain answer for the same flag belongs to it. A machine asks
/// `/boot` more than once during one install (iPXE retries, a medium booted again at the
/// installer's reboot), so they all share one id and whichever run finishes may call back. A
/// new flag gets a new id, so a late or replayed callback of an earlier install changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// 128 random bits as 32 lower-case hex digits; carried in the done and failed URLs.
    pub id: String,
    /// The first install-chain answer; `None` while the flag is pending.
    #[serde(default)]
    pub opened_at: Option<Millis>,
    #[serde(default)]
    pub last_answer_at: Option<Millis>,
    /// Install-chain answers served.
    #[serde(default)]
    pub answers: u32,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_failure_at: Option<Millis>,
    /// The installer's last `started` callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    /// What the installer said about its last failure ([`failure_reason`]), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
}

/// Why an install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// The installer called its done URL.
    Done,
    /// The profile clears on the first answer; the repeat window follows.
    FirstAnswer,
    /// An operator cancelled it.
    Cancelled,
    /// An operator set a flag with another profile.
    Replaced,
    /// The host left the inventory while flagged.
    RemovedFromInventory,
}

/// The most recent install that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedInstall {
    pub id: String,
    pub profile: String,
    #[serde(default)]
    pub opened_at: Option<Millis>,
    pub ended_at: Millis,
    pub how: Ending,
    /// For a first-answer install: its repeat window is over for good (it expired, or its end
    /// time could not be trusted), whatever the clock says later.
    #[serde(default)]
    pub window_closed: bool,
}

/// The content of `hosts/HOST.json`: the only state that decides anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostState {
    /// Bumped by every write; lets a reader tell two versions apart.
    pub version: u64,
    pub updated_at: Millis,
    pub flag: Option<Flag>,
    pub last_install: Option<EndedInstall>,
}

/// What a profile's settings mean to the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The first install-chain answer ends the install (installers that cannot call back).
    pub clear_on_first_answer: bool,
    /// With `clear_on_first_answer`: how long the ended install is still served.
    pub repeat_window_ms: Millis,
}

/// Outcome of [`set_flag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetFlag {
    /// A new flag stands; `replaced` is the install it superseded, if any.
    Set { install: String, replaced: Option<String> },
    /// The same profile was already flagged: the open install goes on.
    Unchanged { install: String },
}

/// Outcome of [`cancel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// A flag was removed (pending or installing).
    Cancelled { install: String },
    /// No flag, but a first-answer install was still being served; its window is closed.
    WindowClosed { install: String },
    /// Nothing to cancel.
    NothingToCancel,
}

/// Why a verified boot of an inventory host is not answered with an install chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoInstall {
    NotFlagged,
    /// The flag names a profile that is no longer loaded.
    UnknownProfile,
}

/// Outcome of [`answer_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAnswer {
    /// Serve `profile`'s install chain for install `id`.
    Install {
        profile: String,
        id: String,
        kind: InstallKind,
    },
    Local(NoInstall),
}

/// Which install-chain answer this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallKind {
    /// The first answer for the flag: the install opens.
    Opened,
    /// A later answer for the same flag.
    Continues,
    /// The first answer of a first-answer profile: the install opens and ends at once.
    OpenedAndEnded,
    /// Inside the repeat window of an ended first-answer install (no write).
    RepeatWindow,
}

impl Install {
    /// An install that has not begun: no answer, callback or failure yet.
    pub fn pending(id: String) -> Install {
        Install {
            id,
            opened_at: None,
            last_answer_at: None,
            answers: 0,
            failures: 0,
            last_failure_at: None,
            started_at: None,
            last_failure_reason: None,
        }
    }
}

impl InstallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallKind::Opened => "opened",
            InstallKind::Continues => "continues",
            InstallKind::OpenedAndEnded => "first-answer",
            InstallKind::RepeatWindow => "repeat-window",
        }
    }
}

/// Outcome of [`finish`], [`start`] and [`fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Accepted,
    /// The id is not the open install's; `other_open` says whether another one is open.
    NotOpen {
        other_open: bool,
    },
}

impl HostState {
    /// The phase the operator sees.
    ///
    /// For a flag, the latest of the last install-chain answer, the installer's last `started`
    /// and its last `failed` decides (a failure wins a tie, then `started`): an answer after a
    /// failure is the retry, a `started` after it is the retry's installer running.
    pub fn phase(&self) -> Phase {
        match &self.flag {
            Some(flag) => {
                let install = &flag.install;
                let latest = [
                    (install.last_failure_at, Phase::Failed),
                    (install.started_at, Phase::Started),
                    (install.last_answer_at, Phase::Installing),
                ]
                .into_iter()
                .filter_map(|(at, phase)| at.map(|at| (at, phase)))
                // max_by_key keeps the last of equal keys: reverse so the first listed wins ties.
                .rev()
                .max_by_key(|&(at, _)| at);
                latest.map_or(Phase::Pending, |(_, phase)| phase)
            }
            None => match self.last_install.as_ref().map(|e| e.how) {
                Some(Ending::Done | Ending::FirstAnswer) => Phase::Done,
                _ => Phase::Idle,
            },
        }
    }

    /// The install whose configs may be served now: the flag's, or an ended first-answer
    /// install inside its window. `(profile, install id)`.
    pub fn active_install(
        &self,
        rules: impl Fn(&str) -> Option<Rules>,
        now: Millis,
    ) -> Option<(&str, &str)> {
        if let Some(flag) = &self.flag {
            return Some((&flag.profile, &flag.install.id));
        }
        self.open_window(&rules, now).map(|e| (e.profile.as_str(), e.id.as_str()))
    }

    /// The ended first-answer install whose repeat window is open at `now`, if any. The window
    /// is bounded whatever the stored time says: a stamp further in the future than
    /// [`CLOCK_SKEW_MS`] closes it instead of keeping it open until the clock catches up.
    fn open_window(
        &self,
        rules: &impl Fn(&str) -> Option<Rules>,
        now: Millis,
    ) -> Option<&EndedInstall> {
        let ended = self.unclosed_window()?;
        let window = rules(&ended.profile)?.repeat_window_ms;
        let trusted = ended.ended_at <= now.saturating_add(CLOCK_SKEW_MS);
        (trusted && now.saturating_sub(ended.ended_at) < window).then_some(ended)
    }

    /// A first-answer install whose window has not been closed for good (it may be open, over,
    /// or waiting for a clock to catch up with an untrusted end time).
    pub fn unclosed_window(&self) -> Option<&EndedInstall> {
        self.last_install.as_ref().filter(|e| e.how == Ending::FirstAnswer && !e.window_closed)
    }

    /// Closes a window that is not open now, so it can never open later. Returns whether it
    /// changed anything.
    fn close_window(&mut self) -> bool {
        match self.last_install.as_mut() {
            Some(e) if e.how == Ending::FirstAnswer && !e.window_closed => {
                e.window_closed = true;
                true
            }
            _ => false,
        }
    }

    fn end_flag(&mut self, how: Ending, now: Millis) -> Option<String> {
        let flag = self.flag.take()?;
        let id = flag.install.id.clone();
        self.last_install = Some(EndedInstall {
            id: flag.install.id,
            profile: flag.profile,
            opened_at: flag.install.opened_at,
            ended_at: now,
            how,
            window_closed: false,
        });
        Some(id)
    }
}

/// `PUT /hosts/H/reimage`. The same profile again keeps the standing flag and its install;
/// another profile replaces it (the old install ends as [`Ending::Replaced`]). A new flag also
/// supersedes any repeat window, because `last_install` no longer describes a first answer.
pub fn set_flag(
    st: &mut HostState,
    profile: &str,
    set_by: &str,
    set_from: &str,
    new_id: String,
    now: Millis,
) -> (SetFlag, bool) {
    if let Some(flag) = st.flag.as_ref().filter(|f| f.profile == profile) {
        return (SetFlag::Unchanged { install: flag.install.id.clone() }, false);
    }
    let replaced = st.end_flag(Ending::Replaced, now);
    if replaced.is_none() && st.last_install.as_ref().is_some_and(|e| e.how == Ending::FirstAnswer)
    {
        // A window of an earlier install must not come back after this flag is cancelled.
        if let Some(e) = st.last_install.as_mut() {
            e.how = Ending::Replaced;
        }
    }
    st.flag = Some(Flag {
        profile: profile.to_string(),
        set_by: set_by.to_string(),
        set_from: set_from.to_string(),
        set_at: now,
        install: Install::pending(new_id.clone()),
    });
    (SetFlag::Set { install: new_id, replaced }, true)
}

/// `DELETE /hosts/H/reimage`: after it, the host's next boot is local and its configs are gone,
/// whatever the profile: a standing flag is removed, and an open repeat window is closed.
pub fn cancel(
    st: &mut HostState,
    rules: impl Fn(&str) -> Option<Rules>,
    now: Millis,
) -> (Cancel, bool) {
    if let Some(install) = st.end_flag(Ending::Cancelled, now) {
        return (Cancel::Cancelled { install }, true);
    }
    if st.open_window(&rules, now).is_some() {
        let ended = st.last_install.as_mut().expect("an open window has an ended install");
        ended.how = Ending::Cancelled;
        ended.ended_at = now;
        return (Cancel::WindowClosed { install: ended.id.clone() }, true);
    }
    // A window that is not open now (over, or with an end time ahead of this clock) is closed
    // for good, so that it cannot open once the clock catches up.
    let closed = st.close_window();
    (Cancel::NothingToCancel, closed)
}

/// A verified boot of an inventory host. Flagged: serve the install chain, opening the install
/// at the first answer (and ending it at once for first-answer profiles). Not flagged: the
/// repeat window's install chain, or local. The `bool` says whether `st` changed.
pub fn answer_boot(
    st: &mut HostState,
    rules: impl Fn(&str) -> Option<Rules>,
    now: Millis,
) -> (BootAnswer, bool) {
    let Some(flag) = st.flag.as_mut() else {
        return match st.open_window(&rules, now) {
            Some(e) => (
                BootAnswer::Install {
                    profile: e.profile.clone(),
                    id: e.id.clone(),
                    kind: InstallKind::RepeatWindow,
                },
                false,
            ),
            // A window that is over, or whose end time lies ahead of this clock, is closed for
            // good by this answer: it can never open again, and the host's boots stop needing
            // its file (see `Store::may_decide`).
            None => {
                let closed = st.close_window();
                (BootAnswer::Local(NoInstall::NotFlagged), closed)
            }
        };
    };
    let Some(rules) = rules(&flag.profile) else {
        return (BootAnswer::Local(NoInstall::UnknownProfile), false);
    };
    let install = &mut flag.install;
    let first = install.opened_at.is_none();
    install.opened_at.get_or_insert(now);
    install.last_answer_at = Some(now);
    install.answers = install.answers.saturating_add(1);
    let (profile, id) = (flag.profile.clone(), install.id.clone());
    let kind = if rules.clear_on_first_answer {
        st.end_flag(Ending::FirstAnswer, now);
        InstallKind::OpenedAndEnded
    } else if first {
        InstallKind::Opened
    } else {
        InstallKind::Continues
    };
    (BootAnswer::Install { profile, id, kind }, true)
}

/// The installer's `done` for install `id`: ends the install, so the next boot is local. Also
/// accepted inside a first-answer install's window (it closes the window).
pub fn finish(
    st: &mut HostState,
    id: &str,
    rules: impl Fn(&str) -> Option<Rules>,
    now: Millis,
) -> (Callback, bool) {
    match &st.flag {
        Some(flag) if flag.install.id == id => {
            st.end_flag(Ending::Done, now);
            (Callback::Accepted, true)
        }
        Some(_) => (Callback::NotOpen { other_open: true }, false),
        None => match st.open_window(&rules, now) {
            Some(e) if e.id == id => {
                let ended = st.last_install.as_mut().expect("window has an ended install");
                ended.how = Ending::Done;
                ended.ended_at = now;
                (Callback::Accepted, true)
            }
            _ => (Callback::NotOpen { other_open: false }, false),
        },
    }
}

/// The installer's `started` for install `id`: it runs and reached the service (the phase
/// becomes [`Phase::Started`]). Only a standing flag's install counts; a first-answer install
/// has already ended and has nothing to record.
pub fn start(st: &mut HostState, id: &str, now: Millis) -> (Callback, bool) {
    match st.flag.as_mut() {
        Some(flag) if flag.install.id == id => {
            flag.install.started_at = Some(now);
            (Callback::Accepted, true)
        }
        Some(_) => (Callback::NotOpen { other_open: true }, false),
        None => (Callback::NotOpen { other_open: false }, false),
    }
}

/// The installer's `failed` for install `id`, with what it said about the failure (already
/// cleaned by [`failure_reason`]): counts the failure, keeps the reason (or forgets the previous
/// one when none is given) and keeps the flag, so the next boot installs again with the same id.
pub fn fail(st: &mut HostState, id: &str, reason: Option<String>, now: Millis) -> (Callback, bool) {
    match st.flag.as_mut() {
        Some(flag) if flag.install.id == id => {
            flag.install.failures = flag.install.failures.saturating_add(1);
            flag.install.last_failure_at = Some(now);
            flag.install.last_failure_reason = reason;
            (Callback::Accepted, true)
        }
        Some(_) => (Callback::NotOpen { other_open: true }, false),
        None => (Callback::NotOpen { other_open: false }, false),
    }
}

/// The host left the inventory: a standing flag ends, so that re-adding the host later does not
/// silently resume an install nobody asked for any more. Returns the ended install's id.
pub fn orphan(st: &mut HostState, now: Millis) -> (Option<String>, bool) {
    let ended = st.end_flag(Ending::RemovedFromInventory, now);
    let closed = st.close_window();
    let changed = ended.is_some() || closed;
    (ended, changed)
}

/// Outcome of [`retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// A new install of the same profile stands; `previous` ended as [`Ending::Replaced`].
    Retried { install: String, previous: String, profile: String },
    /// The host's install is neither failed nor stalled (or there is none): nothing changed.
    NotRetryable,
}

impl HostState {
    /// When the open install last made progress, as far as the state knows: the flag, the
    /// first install-chain answer, `started` or `failed`, or `fetched` (the host's last config
    /// or token-proven asset fetch, kept outside the state) when it is not older than the flag.
    /// `None` without a flag.
    ///
    /// Only the *first* answer counts: a later one means the node booted into the chain again,
    /// which is what an installer that crashes and reboots does. Counting every answer would
    /// keep such a boot loop from ever being stalled.
    pub fn progress_at(&self, fetched: Option<Millis>) -> Option<Millis> {
        let flag = self.flag.as_ref()?;
        let i = &flag.install;
        let fetched = fetched.filter(|&f| f >= flag.set_at);
        [Some(flag.set_at), i.opened_at, i.started_at, i.last_failure_at, fetched]
            .into_iter()
            .flatten()
            .max()
    }

    /// Whether the open install is **stalled**: it has begun (an install chain was answered)
    /// and is neither ended nor failed, and made no progress ([`HostState::progress_at`]) for
    /// longer than `stall_after_ms`. A pending flag is not stalled: its host may simply not have
    /// been switched on yet. A failed install is shown as failed, which says more.
    pub fn stalled(&self, stall_after_ms: Millis, fetched: Option<Millis>, now: Millis) -> bool {
        let begun = matches!(self.phase(), Phase::Installing | Phase::Started);
        begun && self.progress_at(fetched).is_some_and(|at| now.saturating_sub(at) > stall_after_ms)
    }
}

/// `POST /hosts/H/retry`: a failed or `stalled` install is replaced by a new one of the same
/// profile (a new id, so a late callback of the old one changes nothing), pending until the
/// host's next boot. Anything else is [`Retry::NotRetryable`] and changes nothing.
pub fn retry(
    st: &mut HostState,
    stalled: bool,
    set_by: &str,
    set_from: &str,
    new_id: String,
    now: Millis,
) -> (Retry, bool) {
    let retryable = st.flag.is_some() && (st.phase() == Phase::Failed || stalled);
    if !retryable {
        return (Retry::NotRetryable, false);
    }
    let profile = st.flag.as_ref().expect("checked above").profile.clone();
    let previous = st.end_flag(Ending::Replaced, now).expect("checked above");
    st.flag = Some(Flag {
        profile: profile.clone(),
        set_by: set_by.to_string(),
        set_from: set_from.to_string(),
        set_at: now,
        install: Install::pending(new_id.clone()),
    });
    (Retry::Retried { install: new_id, previous, profile }, true)
}

/// The longest failure reason kept, in characters; the rest is cut off (and an ellipsis put on).
pub const MAX_REASON_CHARS: usize = 200;

/// An installer's failure reason (`failed?reason=…`) as it is stored, shown and audited: at most
/// [`MAX_REASON_CHARS`] characters of printable ASCII, each run of anything else (line breaks,
/// controls, non-ASCII) one space, trimmed. `None` when nothing printable is left. The installer
/// is the node itself, which holds its node token, so the text is trusted to be *its* words but
/// not to be well-formed: it is bounded and made one plain line, never refused, because losing a
/// failure report would hide the failure.
pub fn failure_reason(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut blank = false;
    for c in raw.chars() {
        if c.is_ascii_graphic() {
            if blank && !out.is_empty() {
                out.push(' ');
            }
            blank = false;
            if out.chars().count() == MAX_REASON_CHARS {
                out.push('…');
                break;
            }
            out.push(c);
        } else {
            blank = true;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `text` has the shape of an install id (32 lower-case hex digits), so that nothing
/// else from a request is ever compared, stored or logged as one.
pub fn is_install_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Flags written by bootforge 0.1 had no install until the first answer (`"install": null`).
/// Such a flag gets an id derived from what was stored, so every reader agrees on it.
fn install_or_legacy_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Install, D::Error> {
    let install: Option<Install> = Option::deserialize(d)?;
    Ok(install.unwrap_or_else(|| Install::pending("0".repeat(32))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID1: &str = "11111111111111111111111111111111";
    const ID2: &str = "22222222222222222222222222222222";
    const WINDOW: Millis = 600_000;

    fn callback(_: &str) -> Option<Rules> {
        Some(Rules { clear_on_first_answer: false, repeat_window_ms: WINDOW })
    }
    fn first_answer(_: &str) -> Option<Rules> {
        Some(Rules { clear_on_first_answer: true, repeat_window_ms: WINDOW })
    }
    fn no_profiles(_: &str) -> Option<Rules> {
        None
    }

    fn flagged(now: Millis) -> HostState {
        let mut st = HostState::default();
        let (out, changed) = set_flag(&mut st, "p", "ops", "10.0.0.9", ID1.into(), now);
        assert!(changed);
        assert_eq!(out, SetFlag::Set { install: ID1.into(), replaced: None });
        st
    }

    fn install_id(answer: &BootAnswer) -> Option<&str> {
        match answer {
            BootAnswer::Install { id, .. } => Some(id),
            BootAnswer::Local(_) => None,
        }
    }

    #[test]
    fn only_failed_or_stalled_installs_are_retried_with_a_new_id() {
        let mut st = flagged(1);
        // Pending: not retryable, nothing changes.
        assert_eq!(retry(&mut st, false, "ops", "x", ID2.into(), 2), (Retry::NotRetryable, false));
        answer_boot(&mut st, callback, 10);
        assert!(!st.stalled(100, None, 110), "exactly the allowance is not over it");
        assert!(st.stalled(100, None, 111));
        assert!(!st.stalled(100, Some(50), 120), "a fetch is progress");
        assert!(st.stalled(100, Some(0), 120), "a fetch before the flag is not");
        assert_eq!(st.progress_at(Some(50)), Some(50));
        let before = st.clone();
        assert_eq!(retry(&mut st, false, "ops", "x", ID2.into(), 20), (Retry::NotRetryable, false));
        assert_eq!(st, before);
        fail(&mut st, ID1, Some("disk".into()), 30);
        let (out, changed) = retry(&mut st, false, "ops", "10.0.0.2", ID2.into(), 40);
        assert!(changed);
        assert_eq!(
            out,
            Retry::Retried { install: ID2.into(), previous: ID1.into(), profile: "p".into() }
        );
        assert_eq!(st.phase(), Phase::Pending);
        assert_eq!(st.last_install.as_ref().map(|e| e.how), Some(Ending::Replaced));
        assert_eq!(start(&mut st, ID1, 41), (Callback::NotOpen { other_open: true }, false));
        // Stalled (as the caller decides from the profile's allowance) is retryable too.
        answer_boot(&mut st, callback, 50);
        let (out, _) = retry(&mut st, true, "ops", "x", ID1.into(), 60);
        assert!(matches!(out, Retry::Retried { .. }));
        assert!(!st.stalled(1, None, 10_000), "pending again");
        let mut idle = HostState::default();
        assert_eq!(retry(&mut idle, true, "ops", "x", ID1.into(), 1), (Retry::NotRetryable, false));
    }

    #[test]
    fn a_boot_loop_is_no_progress_and_stalls() {
        let mut st = flagged(1);
        answer_boot(&mut st, callback, 10);
        // The installer crashes and the node boots into the chain again, and again.
        for now in [80, 150, 220] {
            let (answer, _) = answer_boot(&mut st, callback, now);
            assert_eq!(install_id(&answer), Some(ID1));
        }
        assert_eq!(st.progress_at(None), Some(10), "the first answer only");
        assert!(st.stalled(100, None, 221), "answered 4 times, no progress since 10");
        start(&mut st, ID1, 230);
        assert!(!st.stalled(100, None, 300), "started is progress");
    }

    #[test]
    fn a_new_host_is_idle_and_boots_local() {
        let mut st = HostState::default();
        assert_eq!(st.phase(), Phase::Idle);
        assert_eq!(
            answer_boot(&mut st, callback, 1),
            (BootAnswer::Local(NoInstall::NotFlagged), false)
        );
        assert_eq!(st.active_install(callback, 1), None);
    }

    #[test]
    fn the_install_id_exists_from_the_moment_the_flag_is_set() {
        let st = flagged(1);
        assert_eq!(st.phase(), Phase::Pending);
        // A config fetched while pending renders a done URL with this id, so the callback works.
        assert_eq!(st.active_install(callback, 2), Some(("p", ID1)));
        let mut st2 = st.clone();
        assert_eq!(finish(&mut st2, ID1, callback, 3), (Callback::Accepted, true));
        assert_eq!(st2.phase(), Phase::Done);
    }

    #[test]
    fn same_profile_again_keeps_the_install_another_replaces_it() {
        let mut st = flagged(1);
        answer_boot(&mut st, callback, 2);
        let (out, changed) = set_flag(&mut st, "p", "ops", "x", ID2.into(), 3);
        assert_eq!((out, changed), (SetFlag::Unchanged { install: ID1.into() }, false));
        let (out, _) = set_flag(&mut st, "q", "ops", "x", ID2.into(), 4);
        assert_eq!(out, SetFlag::Set { install: ID2.into(), replaced: Some(ID1.into()) });
        assert_eq!(st.last_install.as_ref().unwrap().how, Ending::Replaced);
        // The replaced install's callback changes nothing.
        assert_eq!(
            finish(&mut st, ID1, callback, 5),
            (Callback::NotOpen { other_open: true }, false)
        );
    }

    #[test]
    fn answers_open_then_continue_one_install() {
        let mut st = flagged(1);
        let (a, changed) = answer_boot(&mut st, callback, 2);
        assert!(changed);
        assert_eq!(
            a,
            BootAnswer::Install { profile: "p".into(), id: ID1.into(), kind: InstallKind::Opened }
        );
        assert_eq!(st.phase(), Phase::Installing);
        let (a, _) = answer_boot(&mut st, callback, 3);
        assert_eq!(
            a,
            BootAnswer::Install {
                profile: "p".into(),
                id: ID1.into(),
                kind: InstallKind::Continues
            }
        );
        let install = &st.flag.as_ref().unwrap().install;
        assert_eq!((install.opened_at, install.answers), (Some(2), 2));
    }

    #[test]
    fn failure_keeps_the_flag_and_the_next_answer_retries() {
        let mut st = flagged(1);
        answer_boot(&mut st, callback, 2);
        assert_eq!(fail(&mut st, ID2, None, 3), (Callback::NotOpen { other_open: true }, false));
        assert_eq!(fail(&mut st, ID1, None, 3), (Callback::Accepted, true));
        assert_eq!(st.phase(), Phase::Failed);
        let (a, _) = answer_boot(&mut st, callback, 4);
        assert_eq!(install_id(&a), Some(ID1));
        assert_eq!(st.phase(), Phase::Installing);
        assert_eq!(finish(&mut st, ID1, callback, 5), (Callback::Accepted, true));
        assert_eq!((st.phase(), st.flag.is_none()), (Phase::Done, true));
        // Replayed: nothing changes.
        assert_eq!(
            finish(&mut st, ID1, callback, 6),
            (Callback::NotOpen { other_open: false }, false)
        );
        assert_eq!(answer_boot(&mut st, callback, 7).0, BootAnswer::Local(NoInstall::NotFlagged));
    }

    /// The installer's own reports: `started` shows it runs, a `failed` after it shows the
    /// failure and its reason, the next answer (the retry) shows `installing` again, and its
    /// `started` shows the retry running; the reason stays until the next failure replaces it.
    #[test]
    fn started_and_failed_reports_follow_the_installer() {
        let mut st = flagged(1);
        assert_eq!(start(&mut st, ID2, 2), (Callback::NotOpen { other_open: true }, false));
        answer_boot(&mut st, callback, 2);
        assert_eq!(st.phase(), Phase::Installing);
        assert_eq!(start(&mut st, ID1, 3), (Callback::Accepted, true));
        assert_eq!(st.phase(), Phase::Started);
        let reason = failure_reason("choose-mirror: Bad archive mirror");
        assert_eq!(fail(&mut st, ID1, reason.clone(), 4), (Callback::Accepted, true));
        assert_eq!(st.phase(), Phase::Failed);
        let install = &st.flag.as_ref().unwrap().install;
        assert_eq!((install.failures, install.last_failure_reason.clone()), (1, reason.clone()));
        // A failure in the same millisecond as `started` still shows as the failure.
        let mut tie = st.clone();
        start(&mut tie, ID1, 4);
        assert_eq!(tie.phase(), Phase::Failed);
        answer_boot(&mut st, callback, 5);
        assert_eq!(st.phase(), Phase::Installing, "the retry's answer");
        start(&mut st, ID1, 6);
        assert_eq!(st.phase(), Phase::Started, "the retry's installer runs");
        assert_eq!(st.flag.as_ref().unwrap().install.last_failure_reason, reason);
        assert_eq!(finish(&mut st, ID1, callback, 7), (Callback::Accepted, true));
        assert_eq!(st.phase(), Phase::Done);
        assert_eq!(start(&mut st, ID1, 8), (Callback::NotOpen { other_open: false }, false));
    }

    #[test]
    fn failure_reasons_are_one_bounded_printable_line() {
        assert_eq!(failure_reason("  a\tb\r\n\u{7f}c  ").as_deref(), Some("a b c"));
        assert_eq!(failure_reason("Bad archive mirror").as_deref(), Some("Bad archive mirror"));
        assert_eq!(failure_reason("\u{1b}[31m").as_deref(), Some("[31m"));
        assert_eq!(failure_reason("é\n\t "), None);
        assert_eq!(failure_reason(""), None);
        let long = failure_reason(&"x".repeat(5000)).unwrap();
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(failure_reason(&"x".repeat(MAX_REASON_CHARS)).unwrap().len(), MAX_REASON_CHARS);
    }

    #[test]
    fn cancel_ends_a_pending_or_open_install() {
        let mut st = flagged(1);
        assert_eq!(cancel(&mut st, callback, 2), (Cancel::Cancelled { install: ID1.into() }, true));
        assert_eq!(st.phase(), Phase::Idle);
        assert_eq!(cancel(&mut st, callback, 3), (Cancel::NothingToCancel, false));
        assert_eq!(finish(&mut st, ID1, callback, 4).0, Callback::NotOpen { other_open: false });
        assert_eq!(st.active_install(callback, 4), None);
    }

    /// Bug 2: with a first-answer profile, a DELETE after the first answer must stop the repeat
    /// window; before, it answered "was not flagged" and the window kept installing.
    #[test]
    fn cancel_closes_the_repeat_window_of_a_first_answer_install() {
        let mut st = flagged(1);
        let (a, _) = answer_boot(&mut st, first_answer, 2);
        assert_eq!(
            a,
            BootAnswer::Install {
                profile: "p".into(),
                id: ID1.into(),
                kind: InstallKind::OpenedAndEnded
            }
        );
        assert!(st.flag.is_none());
        assert_eq!(st.phase(), Phase::Done);
        let (a, changed) = answer_boot(&mut st, first_answer, 3);
        assert_eq!((install_id(&a), changed), (Some(ID1), false), "window serves the same install");
        assert_eq!(
            cancel(&mut st, first_answer, 4),
            (Cancel::WindowClosed { install: ID1.into() }, true)
        );
        assert_eq!(
            answer_boot(&mut st, first_answer, 5).0,
            BootAnswer::Local(NoInstall::NotFlagged)
        );
        assert_eq!(st.active_install(first_answer, 5), None, "configs are gone");
    }

    /// Bug 2, second shape: PUT, then DELETE, while an earlier install's window is open.
    #[test]
    fn put_then_delete_does_not_leave_an_earlier_window_installing() {
        let mut st = flagged(1);
        answer_boot(&mut st, first_answer, 2);
        set_flag(&mut st, "p", "ops", "x", ID2.into(), 3);
        assert_eq!(cancel(&mut st, first_answer, 4).0, Cancel::Cancelled { install: ID2.into() });
        assert_eq!(
            answer_boot(&mut st, first_answer, 5).0,
            BootAnswer::Local(NoInstall::NotFlagged)
        );
        assert_eq!(st.active_install(first_answer, 5), None);
    }

    #[test]
    fn the_window_ends_on_time_and_a_future_stamp_does_not_extend_it() {
        let local = BootAnswer::Local(NoInstall::NotFlagged);
        let mut st = flagged(1);
        answer_boot(&mut st, first_answer, 1_000);
        assert!(st.active_install(first_answer, 1_000 + WINDOW - 1).is_some());
        assert!(st.active_install(first_answer, 1_000 + WINDOW).is_none());
        // An expired window is closed for good by the next boot, which then needs no file.
        let mut expired = st.clone();
        assert_eq!(answer_boot(&mut expired, first_answer, 1_000 + WINDOW), (local.clone(), true));
        assert!(expired.unclosed_window().is_none());
        // A little skew between instances is tolerated, and still bounded by the window.
        st.last_install.as_mut().unwrap().ended_at = 1_000 + CLOCK_SKEW_MS;
        assert!(st.active_install(first_answer, 1_000).is_some());
        assert!(st.active_install(first_answer, 1_000 + CLOCK_SKEW_MS + WINDOW).is_none());
        // A stored end a day ahead of the clock (clock stepped back, or a tampered file): the
        // first boot closes the window for good, so it does not open when the clock catches up.
        let day = 86_400_000;
        st.last_install.as_mut().unwrap().ended_at = 1_000 + day;
        assert!(st.active_install(first_answer, 1_000).is_none());
        assert_eq!(answer_boot(&mut st, first_answer, 1_000), (local.clone(), true));
        assert!(st.active_install(first_answer, 1_000 + day).is_none());
        assert_eq!(answer_boot(&mut st, first_answer, 1_000 + day).0, local);
        // So do a cancel and the orphan sweep.
        let mut ahead = flagged(1);
        answer_boot(&mut ahead, first_answer, 1_000 + day);
        assert_eq!(
            cancel(&mut ahead.clone(), first_answer, 1_000),
            (Cancel::NothingToCancel, true)
        );
        assert_eq!(orphan(&mut ahead, 1_000), (None, true));
        assert!(ahead.active_install(first_answer, 1_000 + day).is_none());
    }

    #[test]
    fn done_inside_the_window_closes_it() {
        let mut st = flagged(1);
        answer_boot(&mut st, first_answer, 2);
        assert_eq!(
            finish(&mut st, ID2, first_answer, 3).0,
            Callback::NotOpen { other_open: false }
        );
        assert_eq!(finish(&mut st, ID1, first_answer, 3), (Callback::Accepted, true));
        assert_eq!(st.active_install(first_answer, 4), None);
    }

    #[test]
    fn a_flag_for_a_vanished_profile_boots_local_and_changes_nothing() {
        let mut st = flagged(1);
        let before = st.clone();
        assert_eq!(
            answer_boot(&mut st, no_profiles, 2),
            (BootAnswer::Local(NoInstall::UnknownProfile), false)
        );
        assert_eq!(st, before);
    }

    #[test]
    fn an_orphaned_flag_ends_and_does_not_resume() {
        let mut st = flagged(1);
        answer_boot(&mut st, callback, 2);
        assert_eq!(orphan(&mut st, 3), (Some(ID1.into()), true));
        assert_eq!(st.last_install.as_ref().unwrap().how, Ending::RemovedFromInventory);
        assert_eq!(answer_boot(&mut st, callback, 4).0, BootAnswer::Local(NoInstall::NotFlagged));
        assert_eq!(orphan(&mut st, 5), (None, false));
    }

    #[test]
    fn install_ids_are_32_hex_digits() {
        assert!(is_install_id(ID1));
        assert!(!is_install_id(&ID1[1..]));
        assert!(!is_install_id("1111111111111111111111111111111G"));
        assert!(!is_install_id(&"A".repeat(32)));
    }

    #[test]
    fn state_files_of_the_previous_version_are_read() {
        let old = r#"{"version":3,"updated_at":5,"phase":"pending",
            "flag":{"profile":"p","set_by":"ops","set_from":"1.2.3.4","set_at":4,"install":null},
            "last_install":{"id":"ab","profile":"p","opened_at":1,"ended_at":2,"how":"first-answer"},
            "last_boot":null}"#;
        let st: HostState = serde_json::from_str(old).unwrap();
        assert_eq!(st.phase(), Phase::Pending);
        assert!(is_install_id(&st.flag.as_ref().unwrap().install.id));
        assert_eq!(st.last_install.unwrap().how, Ending::FirstAnswer);
    }
}
