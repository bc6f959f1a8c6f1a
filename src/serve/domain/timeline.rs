//! Every install's timeline: a host's audit records in, the `GET /hosts/{host}/timeline` answer
//! out (its JSON shape is docs/API.md's).
//!
//! Pure: the records are given (oldest first, as the store read them), with what the host's
//! state says now about its open install ([`Open`]) and each profile's stall allowance. Records
//! are tied to installs by the install id they carry; the two kinds that carry none are placed
//! by time: an asset fetch belongs to the install open when it was made (or, after a
//! first-answer install ended at its answer, to that install until the next boot), and a local
//! boot answer after an install ended is that install's `next-boot` (its first only).
//!
//! Invariants: at most `limit` installs (newest first), at most [`MAX_STEPS`] steps per install
//! of which at most [`MAX_ASSET_STEPS`] asset fetches; what is folded away is counted in
//! `steps_omitted`. Every string shown comes from a record the service wrote itself (bounded
//! by [`crate::serve::domain::event::Event`]'s field types).

use crate::serve::domain::lifecycle::Millis;
use serde::{Deserialize, Serialize};

/// Most steps shown per install; beyond, the middle ones are folded away.
pub const MAX_STEPS: usize = 200;
/// Most asset fetches shown per install (an installer fetching a package mirror makes
/// thousands); the rest are folded away.
pub const MAX_ASSET_STEPS: usize = 40;
/// Installs shown when the caller does not ask, and at most.
pub const DEFAULT_INSTALLS: usize = 20;
pub const MAX_INSTALLS: usize = 100;

/// The fields of a stored audit record that the timeline reads (every other field is ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Record {
    pub ms: Millis,
    pub event: String,
    pub install: Option<String>,
    pub profile: Option<String>,
    pub by: Option<String>,
    pub via: Option<String>,
    pub peer: Option<String>,
    pub verified: Option<bool>,
    pub answer: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub medium: Option<String>,
    pub file: Option<String>,
    pub status: Option<u16>,
    pub bytes: Option<u64>,
    pub complete: Option<bool>,
    pub fetch_ms: Option<u64>,
    pub attributed: Option<String>,
    pub changed: Option<bool>,
    pub retry: Option<bool>,
    pub duration_ms: Option<u64>,
}

/// What the host's state says now about its open install (the current flag's).
#[derive(Debug, Clone)]
pub struct Open {
    pub install: String,
    pub profile: String,
    /// `pending`, `installing`, `started` or `failed` (the host's phase).
    pub state: &'static str,
    pub stalled: bool,
    /// The install's last progress (see `HostState::progress_at`).
    pub progress_ms: Option<Millis>,
}

/// The answer of `GET /hosts/{host}/timeline`.
#[derive(Debug, Serialize)]
pub struct Timeline {
    pub host: String,
    pub now_ms: Millis,
    pub installs: Vec<InstallLine>,
}

/// One install attempt.
#[derive(Debug, Serialize)]
pub struct InstallLine {
    pub install: String,
    pub profile: Option<String>,
    /// `pending|installing|started|failed|stalled|done|cancelled|replaced|removed`, or
    /// `unknown` for an install whose ending record is no longer kept.
    pub state: &'static str,
    pub open: bool,
    pub stalled: bool,
    pub stall_after_s: Option<u64>,
    pub progress_ms: Option<Millis>,
    pub duration_ms: Option<u64>,
    pub steps: Vec<Step>,
    pub steps_omitted: u64,
}

/// One step of an install; fields that do not apply to its kind are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    pub ms: Millis,
    pub step: &'static str,
    pub since_prev_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// `flagged` steps of `POST /hosts/{host}/retry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
}

/// An install as it is gathered.
struct Building {
    id: String,
    profile: Option<String>,
    steps: Vec<Step>,
    /// The ending state and its time, once a record ended it.
    ended: Option<(&'static str, Millis)>,
    duration_ms: Option<u64>,
    next_boot: bool,
}

impl Building {
    fn first_answer_or_flag(&self) -> Option<Millis> {
        let answer =
            self.steps.iter().find(|s| s.step == "boot" && s.answer.as_deref() == Some("install"));
        answer.or_else(|| self.steps.first()).map(|s| s.ms)
    }
}

struct Gather {
    installs: Vec<Building>,
    /// The install open per the records (flag set, not ended).
    current: Option<usize>,
}

impl Gather {
    fn index(&mut self, id: &str, profile: Option<&String>) -> usize {
        if let Some(i) = self.installs.iter().rposition(|b| b.id == id) {
            if self.installs[i].profile.is_none() {
                self.installs[i].profile = profile.cloned();
            }
            return i;
        }
        self.installs.push(Building {
            id: id.to_string(),
            profile: profile.cloned(),
            steps: Vec::new(),
            ended: None,
            duration_ms: None,
            next_boot: false,
        });
        self.installs.len() - 1
    }

    fn end(&mut self, i: usize, state: &'static str, ms: Millis) {
        let b = &mut self.installs[i];
        if b.ended.is_none() {
            b.ended = Some((state, ms));
        }
        if self.current == Some(i) {
            self.current = None;
        }
    }

    /// The install a record without an id, made at `at`, belongs to: the open one, else the
    /// last one if it has not had its next boot yet (a first-answer install's fetches come
    /// after its end) and ended at most its profile's `stall_after` before `at` (a next boot
    /// may never come: a node that boots from its disk without asking the service).
    fn by_time(&self, at: Millis, stall_after_s: &impl Fn(&str) -> Option<u64>) -> Option<usize> {
        self.current.or_else(|| {
            let last = self.installs.len().checked_sub(1)?;
            let b = &self.installs[last];
            let allowance = b.profile.as_deref().and_then(stall_after_s);
            let recent = match (b.ended, allowance) {
                (Some((_, end)), Some(s)) => at.saturating_sub(end) <= s.saturating_mul(1000),
                _ => true,
            };
            (!b.next_boot && recent).then_some(last)
        })
    }
}

/// When the record's step happened: a fetch is stored once its body has been sent, so its
/// step is placed at the request's arrival (its time less `fetch_ms`), where the node made it.
fn at(r: &Record) -> Millis {
    match r.event.as_str() {
        "config" | "asset" => r.ms.saturating_sub(r.fetch_ms.unwrap_or(0)),
        _ => r.ms,
    }
}

/// The natural order of steps made in the same millisecond: a node flags, boots into the
/// chain, fetches, reports; a boot outside an install (the next boot) comes after its end.
fn rank(r: &Record) -> u8 {
    match r.event.as_str() {
        "flag-set" => 0,
        "boot" if r.install.is_some() => 1,
        "config" => 2,
        "asset" => 3,
        "started" => 4,
        "failed" => 5,
        "done" | "flag-cancelled" | "flag-orphaned" => 6,
        _ => 7,
    }
}

fn step(r: &Record, kind: &'static str) -> Step {
    Step { ms: at(r), step: kind, ..Default::default() }
}

fn fetch_step(r: &Record, kind: &'static str) -> Step {
    Step {
        file: r.file.clone(),
        status: r.status,
        bytes: r.bytes,
        complete: r.complete,
        fetch_ms: r.fetch_ms,
        attributed: r.attributed.clone(),
        peer: r.peer.clone(),
        ..step(r, kind)
    }
}

fn actor_step(r: &Record, kind: &'static str) -> Step {
    Step { by: r.by.clone(), via: r.via.clone(), peer: r.peer.clone(), ..step(r, kind) }
}

/// Builds the timeline of `host` from its records (in the store's order; sorted by time here). `stall_after_s` gives a
/// profile's allowance; `limit` is clamped to `1..=MAX_INSTALLS`.
pub fn build(
    host: &str,
    records: &[Record],
    open: Option<&Open>,
    stall_after_s: impl Fn(&str) -> Option<u64>,
    now: Millis,
    limit: usize,
) -> Timeline {
    // By when each step happened (a fetch at its arrival, see [`at`]), then by the steps'
    // natural order, then the store's: notes (fetches, boots) are written by the audit writer
    // a moment after changes committed next to them, so ids alone may put a fetch after the
    // callback that followed it.
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (at(r), rank(r)));
    let mut g = Gather { installs: Vec::new(), current: None };
    for r in sorted {
        let id = r.install.as_deref();
        match r.event.as_str() {
            "flag-set" => {
                let Some(id) = id else { continue };
                if r.changed == Some(false) {
                    continue; // the same profile again: the open install goes on
                }
                if let Some(c) = g.current.filter(|&c| g.installs[c].id != id) {
                    g.installs[c].steps.push(step(r, "replaced"));
                    g.end(c, "replaced", r.ms);
                }
                let i = g.index(id, r.profile.as_ref());
                let mut s = actor_step(r, "flagged");
                s.retry = r.retry.filter(|&x| x);
                g.installs[i].steps.push(s);
                g.current = Some(i);
            }
            "boot" => {
                if r.verified != Some(true) {
                    continue; // not proven to be this host's request
                }
                let mut s = step(r, "boot");
                s.answer = r.answer.clone();
                s.reason = r.reason.clone();
                s.medium = r.medium.clone();
                s.peer = r.peer.clone();
                match id {
                    Some(id) => {
                        let i = g.index(id, None);
                        g.installs[i].steps.push(s);
                        if r.kind.as_deref() == Some("first-answer") {
                            g.end(i, "done", r.ms);
                        }
                    }
                    None => match g.current {
                        Some(c) => g.installs[c].steps.push(s),
                        None => {
                            if let Some(last) = g.installs.last_mut().filter(|b| !b.next_boot) {
                                s.step = "next-boot";
                                last.steps.push(s);
                                last.next_boot = true;
                            }
                        }
                    },
                }
            }
            "config" => {
                let i = match id {
                    Some(id) => Some(g.index(id, r.profile.as_ref())),
                    None => g.by_time(at(r), &stall_after_s),
                };
                if let Some(i) = i {
                    g.installs[i].steps.push(fetch_step(r, "config"));
                }
            }
            "asset" => {
                if let Some(i) = g.by_time(at(r), &stall_after_s) {
                    g.installs[i].steps.push(fetch_step(r, "asset"));
                }
            }
            "started" | "failed" | "done" => {
                let Some(id) = id else { continue };
                let i = g.index(id, r.profile.as_ref());
                let kind = match r.event.as_str() {
                    "started" => "started",
                    "failed" => "failed",
                    _ => "done",
                };
                let mut s = step(r, kind);
                s.peer = r.peer.clone();
                if kind == "failed" {
                    s.failure = r.reason.clone();
                }
                g.installs[i].steps.push(s);
                if kind == "done" {
                    g.installs[i].duration_ms = r.duration_ms;
                    g.end(i, "done", r.ms);
                }
            }
            "flag-cancelled" => {
                let Some(id) = id else { continue };
                let i = g.index(id, None);
                g.installs[i].steps.push(actor_step(r, "cancelled"));
                g.end(i, "cancelled", r.ms);
            }
            "flag-orphaned" => {
                let Some(id) = id else { continue };
                let i = g.index(id, None);
                g.installs[i].steps.push(step(r, "removed"));
                g.end(i, "removed", r.ms);
            }
            _ => {}
        }
    }
    let limit = limit.clamp(1, MAX_INSTALLS);
    let installs =
        g.installs.into_iter().rev().take(limit).map(|b| finish(b, open, &stall_after_s)).collect();
    Timeline { host: host.to_string(), now_ms: now, installs }
}

fn finish(
    b: Building,
    open: Option<&Open>,
    stall_after_s: &impl Fn(&str) -> Option<u64>,
) -> InstallLine {
    let open = open.filter(|o| o.install == b.id);
    let profile = b.profile.clone().or_else(|| open.map(|o| o.profile.clone()));
    let last_step = b.steps.iter().filter(|s| s.step != "next-boot").map(|s| s.ms).max();
    let (state, stalled, progress_ms) = match (open, b.ended) {
        (Some(o), _) => {
            let state = if o.stalled { "stalled" } else { o.state };
            (state, o.stalled, o.progress_ms.max(last_step))
        }
        (None, Some((state, _))) => (state, false, last_step),
        (None, None) => ("unknown", false, last_step),
    };
    let duration_ms = match b.ended {
        Some(("done", at)) => {
            b.duration_ms.or_else(|| b.first_answer_or_flag().map(|t| at.saturating_sub(t)))
        }
        _ => None,
    };
    let (steps, steps_omitted) = fold(b.steps);
    InstallLine {
        install: b.id,
        stall_after_s: profile.as_deref().and_then(stall_after_s),
        profile,
        state,
        open: open.is_some(),
        stalled,
        progress_ms,
        duration_ms,
        steps,
        steps_omitted,
    }
}

/// Keeps [`MAX_ASSET_STEPS`] asset fetches (the first half and the newest half: how the
/// install began and where it is now) and at most [`MAX_STEPS`] steps (the first and last
/// halves), then sets each step's `since_prev_ms`.
fn fold(steps: Vec<Step>) -> (Vec<Step>, u64) {
    let total = steps.len();
    let all_assets = steps.iter().filter(|s| s.step == "asset").count();
    let (head, tail_from) = (MAX_ASSET_STEPS / 2, all_assets.saturating_sub(MAX_ASSET_STEPS / 2));
    let mut assets = 0;
    let mut kept: Vec<Step> = steps
        .into_iter()
        .filter(|s| {
            if s.step != "asset" {
                return true;
            }
            assets += 1;
            assets <= head || assets > tail_from
        })
        .collect();
    if kept.len() > MAX_STEPS {
        let tail = kept.split_off(kept.len() - MAX_STEPS / 2);
        kept.truncate(MAX_STEPS / 2);
        kept.extend(tail);
    }
    let omitted = (total - kept.len()) as u64;
    let mut prev: Option<Millis> = None;
    for s in &mut kept {
        s.since_prev_ms = prev.map(|p| s.ms.saturating_sub(p));
        prev = Some(s.ms);
    }
    (kept, omitted)
}

/// `/fleet/stats`'s `days`: default and most.
pub const DEFAULT_DAYS: u64 = 14;
pub const MAX_DAYS: u64 = 90;
const DAY_MS: Millis = 86_400_000;

/// The answer of `GET /fleet/stats`.
#[derive(Debug, Serialize)]
pub struct FleetStats {
    pub now_ms: Millis,
    pub day_start_ms: Millis,
    pub in_progress: u64,
    pub stalled: u64,
    pub today: DayCounts,
    pub profiles: Vec<ProfileStats>,
    pub series: Vec<DayStats>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct DayCounts {
    pub done: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ProfileStats {
    pub profile: String,
    pub done: u64,
    pub failed: u64,
    /// Durations (first answer, or the flag, to `done`) of the window's done installs.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DayStats {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub start_ms: Millis,
    pub done: u64,
    pub failed: u64,
}

/// Figures of the `days` (UTC days, today included) up to `now` from the `done` and `failed`
/// records in that window (any order). A failed install counts once per day and once in its
/// profile's figures however often its installer reported failure. Percentiles are nearest-rank.
/// `in_progress` and `stalled` come from the hosts' states.
pub fn fleet_stats(
    records: &[Record],
    now: Millis,
    days: u64,
    in_progress: u64,
    stalled: u64,
) -> FleetStats {
    let days = days.clamp(1, MAX_DAYS);
    let day_start = now - now % DAY_MS;
    let first = day_start.saturating_sub((days - 1) * DAY_MS);
    let mut series: Vec<DayStats> = (0..days)
        .map(|d| {
            let start_ms = first + d * DAY_MS;
            DayStats { day: civil_day(start_ms), start_ms, done: 0, failed: 0 }
        })
        .collect();
    let mut profiles: std::collections::BTreeMap<String, (u64, u64, Vec<u64>)> = Default::default();
    let mut failed_seen: std::collections::HashSet<(&str, Millis)> = Default::default();
    let mut failed_in_profile: std::collections::HashSet<&str> = Default::default();
    for r in records.iter().filter(|r| r.ms >= first && r.ms <= now) {
        let day = ((r.ms - first) / DAY_MS) as usize;
        // A record without a profile (written before records carried one) counts in the
        // series but in no profile's figures: no made-up name that a real profile could have.
        let profile = r.profile.clone();
        let install = r.install.as_deref().unwrap_or("");
        match r.event.as_str() {
            "done" => {
                series[day].done += 1;
                if let Some(profile) = profile {
                    let p = profiles.entry(profile).or_default();
                    p.0 += 1;
                    p.2.extend(r.duration_ms);
                }
            }
            "failed" => {
                if failed_seen.insert((install, series[day].start_ms)) {
                    series[day].failed += 1;
                }
                if let Some(profile) = profile.filter(|_| failed_in_profile.insert(install)) {
                    profiles.entry(profile).or_default().1 += 1;
                }
            }
            _ => {}
        }
    }
    let today = series
        .last()
        .map_or_else(DayCounts::default, |d| DayCounts { done: d.done, failed: d.failed });
    let profiles = profiles
        .into_iter()
        .map(|(profile, (done, failed, mut durations))| {
            durations.sort_unstable();
            ProfileStats {
                profile,
                done,
                failed,
                p50_ms: percentile(&durations, 50),
                p95_ms: percentile(&durations, 95),
            }
        })
        .collect();
    FleetStats {
        now_ms: now,
        day_start_ms: day_start,
        in_progress,
        stalled,
        today,
        profiles,
        series,
    }
}

/// The nearest-rank `p`th percentile of sorted `values`.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// `YYYY-MM-DD` of the UTC day holding `ms`: the date part of the service's one time format.
fn civil_day(ms: Millis) -> String {
    crate::serve::util::rfc3339(ms)[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn rec(v: serde_json::Value) -> Record {
        serde_json::from_value(v).unwrap()
    }

    fn allowance(p: &str) -> Option<u64> {
        (p == "debian").then_some(3600)
    }

    fn cycle() -> Vec<Record> {
        vec![
            rec(json!({"ms": 1000, "event": "flag-set", "install": A, "profile": "debian",
                "by": "alice", "via": "token", "peer": "10.0.0.9", "changed": true})),
            rec(json!({"ms": 2000, "event": "boot", "verified": true, "install": A,
                "answer": "install", "kind": "opened", "reason": "flagged", "medium": "iso",
                "peer": "10.0.0.5"})),
            rec(json!({"ms": 2500, "event": "boot", "verified": false, "install": null,
                "answer": "local", "reason": "wrong-mac"})),
            rec(json!({"ms": 3000, "event": "config", "install": A, "profile": "debian",
                "file": "preseed.cfg", "status": 200, "bytes": 512, "complete": true,
                "fetch_ms": 3, "attributed": "token", "peer": "10.0.0.5"})),
            rec(json!({"ms": 3500, "event": "asset", "file": "debian/linux", "status": 200,
                "bytes": 9000, "complete": true, "fetch_ms": 40, "attributed": "address"})),
            rec(json!({"ms": 4000, "event": "started", "install": A})),
            rec(json!({"ms": 9000, "event": "done", "install": A, "profile": "debian",
                "duration_ms": 7000})),
            rec(json!({"ms": 9500, "event": "boot", "verified": true, "install": null,
                "answer": "local", "reason": "not-flagged"})),
            rec(json!({"ms": 9600, "event": "boot", "verified": true, "install": null,
                "answer": "local", "reason": "not-flagged"})),
        ]
    }

    #[test]
    fn a_full_cycle_is_one_install_with_every_step_in_order() {
        let t = build("n1", &cycle(), None, allowance, 10_000, 20);
        assert_eq!(t.installs.len(), 1);
        let i = &t.installs[0];
        assert_eq!((i.install.as_str(), i.state, i.open), (A, "done", false));
        assert_eq!(i.profile.as_deref(), Some("debian"));
        assert_eq!(
            (i.duration_ms, i.stall_after_s, i.progress_ms),
            (Some(7000), Some(3600), Some(9000))
        );
        let kinds: Vec<&str> = i.steps.iter().map(|s| s.step).collect();
        assert_eq!(kinds, ["flagged", "boot", "config", "asset", "started", "done", "next-boot"]);
        let gaps: Vec<Option<u64>> = i.steps.iter().map(|s| s.since_prev_ms).collect();
        assert_eq!(
            gaps,
            [None, Some(1000), Some(997), Some(463), Some(540), Some(5000), Some(500)]
        );
        assert_eq!(i.steps[0].by.as_deref(), Some("alice"));
        assert_eq!(i.steps[2].bytes, Some(512));
        assert_eq!(i.steps[3].attributed.as_deref(), Some("address"));
        let v = serde_json::to_value(&t).unwrap();
        assert!(v["installs"][0]["steps"][0].get("file").is_none(), "absent when not relevant");
    }

    #[test]
    fn fetches_are_placed_at_their_arrival_and_ties_follow_the_natural_order() {
        // In the store's order: the fetches' records are written when their bodies end,
        // after the callbacks the node sent once it had read them.
        let records = vec![
            rec(json!({"ms": 1000, "event": "flag-set", "install": A, "profile": "debian",
                "changed": true})),
            rec(json!({"ms": 1000, "event": "boot", "verified": true, "install": A,
                "answer": "install", "kind": "opened"})),
            rec(json!({"ms": 1001, "event": "started", "install": A})),
            rec(json!({"ms": 1002, "event": "done", "install": A, "profile": "debian"})),
            rec(json!({"ms": 1003, "event": "config", "install": A, "file": "preseed.cfg",
                "fetch_ms": 3})),
            rec(json!({"ms": 1004, "event": "asset", "file": "linux", "fetch_ms": 3})),
        ];
        let t = build("n1", &records, None, allowance, 2000, 20);
        let i = &t.installs[0];
        let kinds: Vec<&str> = i.steps.iter().map(|s| s.step).collect();
        assert_eq!(kinds, ["flagged", "boot", "config", "asset", "started", "done"]);
        let ms: Vec<Millis> = i.steps.iter().map(|s| s.ms).collect();
        assert_eq!(ms, [1000, 1000, 1000, 1001, 1001, 1002]);
        assert_eq!(i.steps[2].fetch_ms, Some(3), "the fetch's duration is kept");
    }

    #[test]
    fn fetches_long_after_an_ended_install_are_not_its_own() {
        let mut r = cycle()[..7].to_vec(); // up to `done` at 9000, no next boot
        r.push(rec(json!({"ms": 9000 + 3_600_000, "event": "asset", "file": "late/1"})));
        r.push(rec(json!({"ms": 9001 + 3_600_000, "event": "asset", "file": "late/2"})));
        let t = build("n1", &r, None, allowance, 10_000_000, 20);
        let files: Vec<Option<&str>> = t.installs[0]
            .steps
            .iter()
            .filter(|s| s.step == "asset")
            .map(|s| s.file.as_deref())
            .collect();
        assert_eq!(files, [Some("debian/linux"), Some("late/1")], "within stall_after only");
    }

    #[test]
    fn replaced_failed_and_open_installs() {
        let mut r = cycle()[..2].to_vec();
        r.push(rec(json!({"ms": 2100, "event": "failed", "install": A, "reason": "no disk"})));
        r.push(rec(json!({"ms": 2200, "event": "flag-set", "install": B, "profile": "rocky",
            "changed": true, "retry": true})));
        r.push(rec(json!({"ms": 2300, "event": "flag-set", "install": B, "profile": "rocky",
            "changed": false})));
        r.push(rec(json!({"ms": 2400, "event": "boot", "verified": true, "install": B,
            "answer": "install"})));
        let open = Open {
            install: B.into(),
            profile: "rocky".into(),
            state: "installing",
            stalled: true,
            progress_ms: Some(2400),
        };
        let t = build("n1", &r, Some(&open), allowance, 99_000, 20);
        let (b, a) = (&t.installs[0], &t.installs[1]);
        assert_eq!((b.state, b.open, b.stalled, b.stall_after_s), ("stalled", true, true, None));
        assert_eq!(b.steps.len(), 2, "the unchanged flag-set is no step");
        assert_eq!(b.steps[0].retry, Some(true));
        assert_eq!((a.state, a.duration_ms), ("replaced", None));
        assert_eq!(a.steps[2].failure.as_deref(), Some("no disk"));
        assert_eq!(a.steps.last().unwrap().step, "replaced");
        assert_eq!(build("n1", &r, Some(&open), allowance, 99_000, 1).installs.len(), 1);
    }

    #[test]
    fn many_asset_fetches_are_folded_and_counted() {
        let mut r = cycle()[..2].to_vec();
        for n in 0..5000u64 {
            r.push(rec(json!({"ms": 3000 + n, "event": "asset", "file": "m/p"})));
        }
        let t = build("n1", &r, None, allowance, 10_000, 20);
        let i = &t.installs[0];
        assert_eq!(i.steps.len(), 2 + MAX_ASSET_STEPS);
        assert_eq!(i.steps_omitted, 5000 - MAX_ASSET_STEPS as u64);
        // The first half and the newest half: how it began and where it is now.
        let half = MAX_ASSET_STEPS as u64 / 2;
        let ms: Vec<Millis> = i.steps[2..].iter().map(|s| s.ms).collect();
        let expect: Vec<Millis> = (3000..3000 + half).chain(8000 - half..8000).collect();
        assert_eq!(ms, expect);
        assert_eq!(i.state, "unknown", "neither open nor ended per what is kept");
        for n in 0..500u64 {
            r.push(rec(json!({"ms": 9000 + n, "event": "failed", "install": A})));
        }
        let t = build("n1", &r, None, allowance, 10_000, 20);
        assert_eq!(t.installs[0].steps.len(), MAX_STEPS);
    }

    #[test]
    fn fleet_figures_count_days_profiles_and_percentiles() {
        let day = DAY_MS;
        let now = 20_000 * day + 3_600_000; // 2024-10-04 01:00 UTC
        assert_eq!(civil_day(now), "2024-10-04");
        assert_eq!(civil_day(0), "1970-01-01");
        let mut r = Vec::new();
        for (n, d) in [(1u64, 100u64), (2, 200), (3, 300), (4, 400), (5, 10_000)] {
            r.push(rec(json!({"ms": now - n, "event": "done", "profile": "debian",
                "install": format!("{n}"), "duration_ms": d})));
        }
        // One install failing twice today counts once; another failed yesterday.
        for ms in [now - 10, now - 20] {
            r.push(rec(json!({"ms": ms, "event": "failed", "profile": "rocky", "install": "f"})));
        }
        r.push(rec(
            json!({"ms": now - day, "event": "failed", "profile": "rocky", "install": "g"}),
        ));
        r.push(rec(json!({"ms": now - 30 * day, "event": "done", "profile": "old"})));
        let s = fleet_stats(&r, now, 14, 3, 1);
        assert_eq!(s.day_start_ms, 20_000 * day);
        assert_eq!(s.today, DayCounts { done: 5, failed: 1 });
        assert_eq!((s.in_progress, s.stalled), (3, 1));
        assert_eq!(s.series.len(), 14);
        assert_eq!(s.series[13].day, "2024-10-04");
        assert_eq!((s.series[12].done, s.series[12].failed), (0, 1));
        assert_eq!(
            s.profiles,
            [
                ProfileStats {
                    profile: "debian".into(),
                    done: 5,
                    failed: 0,
                    p50_ms: Some(300),
                    p95_ms: Some(10_000)
                },
                ProfileStats {
                    profile: "rocky".into(),
                    done: 0,
                    failed: 2,
                    p50_ms: None,
                    p95_ms: None
                },
            ]
        );
        assert_eq!(fleet_stats(&r, now, 0, 0, 0).series.len(), 1, "clamped");
    }

    #[test]
    fn a_first_answer_install_ends_at_its_answer_and_keeps_its_fetches() {
        let r = vec![
            rec(json!({"ms": 1, "event": "flag-set", "install": A, "changed": true})),
            rec(json!({"ms": 2, "event": "boot", "verified": true, "install": A,
                "answer": "install", "kind": "first-answer"})),
            rec(json!({"ms": 3, "event": "asset", "file": "x"})),
            rec(json!({"ms": 4, "event": "boot", "verified": true, "answer": "local"})),
            rec(json!({"ms": 5, "event": "asset", "file": "y"})),
        ];
        let t = build("n1", &r, None, allowance, 10, 20);
        let kinds: Vec<&str> = t.installs[0].steps.iter().map(|s| s.step).collect();
        assert_eq!(kinds, ["flagged", "boot", "asset", "next-boot"]);
        assert_eq!((t.installs[0].state, t.installs[0].duration_ms), ("done", Some(0)));
    }
}
