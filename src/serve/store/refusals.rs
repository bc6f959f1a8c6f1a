//! Refusal windows: how the audit writer keeps what anyone can cause at will from filling the
//! log. Pure over the times passed in, so unit-tested here; [`crate::serve::store::audit`] owns
//! the writer that uses it.
//!
//! A refusal is a record any client can cause: `denied`, `login-failed`, `media-denied`,
//! `node-token-denied`, and `boot` answers to unverified requests (see [`Event::refusal`]).
//! They are keyed by (record kind, peer, route, reason, inventory host), the peer being an IPv4
//! address or an IPv6 /64 ([`refusal_peer`](crate::serve::domain::event::refusal_peer)): the
//! first of a key in a [`REFUSAL_WINDOW_MS`] window is written in full; the others of that
//! window are only counted, and written as one [`Event::RefusedSummary`] when it closes.
//!
//! Threat: one client filling the table so that other clients' refusals (a password spray, a
//! node failing its token) lose their peer. So one peer opens at most [`MAX_KEYS_PER_PEER`]
//! keys of each record kind (the first refusal of every kind a peer causes is still written in
//! full); beyond, its refusals are counted under one key per kind that still names it. At most
//! [`MAX_REFUSAL_KEYS`] keys are open at once; refusals of further peers are counted, none
//! written in full, under a key without a peer (one per kind, route and reason, a set fixed by
//! the code), which lists its [`TOP_PEERS`] largest peers. So each window writes at most
//! `2 × MAX_REFUSAL_KEYS` records plus that fixed set, each bounded (a few hundred bytes, a
//! peerless summary about 1 KB). Individual refusals plus summary counts add up to every
//! refusal made.

use crate::serve::domain::event::{Event, PeerCount, Refusal};
use std::collections::HashMap;
use std::net::IpAddr;

/// How long a refusal window lasts: the first refusal of a key is written, the rest of the
/// window's are counted into one summary.
pub const REFUSAL_WINDOW_MS: u64 = 60_000;
/// Keys one peer (address, or IPv6 /64) may open per record kind with refusals written in
/// full; its further refusals of that kind are counted under one key per kind (route and
/// reason `None`), never peerless.
pub const MAX_KEYS_PER_PEER: usize = 8;
/// Peers named, with their counts, in a peerless summary.
pub const TOP_PEERS: usize = 16;
/// Refusal keys (kind, peer, route, reason) tracked at once; refusals of further peers are
/// counted under a key without a peer.
pub const MAX_REFUSAL_KEYS: usize = 512;

/// The open refusal windows of the writer thread (see the module documentation). Pure over the
/// times passed in; unit-tested below.
///
/// Bounds: `open` holds at most [`MAX_REFUSAL_KEYS`] keys with a peer, plus the peerless ones
/// (one per kind, route and reason: a set fixed by the code); `per_peer` has an entry only for
/// a peer with an open key; each peerless window lists at most [`TOP_PEERS`] peers.
#[derive(Default)]
pub struct Refusals {
    open: HashMap<Refusal, Counted>,
    /// Keys in the order their windows opened, so in the order they close (windows are all
    /// [`REFUSAL_WINDOW_MS`] long).
    closing: std::collections::VecDeque<(u64, Refusal)>,
    /// Keys written in full open per peer and record kind (to enforce [`MAX_KEYS_PER_PEER`]).
    per_peer: HashMap<(IpAddr, &'static str), usize>,
}

/// One open window: the refusals counted but not written, and when they were made.
#[derive(Debug, Clone)]
struct Counted {
    count: u64,
    first: u64,
    last: u64,
    /// Peerless windows only: the peers counted most (space-saving, [`TOP_PEERS`] at most).
    top: Vec<PeerCount>,
}

impl Counted {
    fn new(now: u64) -> Counted {
        Counted { count: 0, first: now, last: now, top: Vec::new() }
    }

    fn add(&mut self, now: u64) {
        self.count += 1;
        self.first = self.first.min(now);
        self.last = self.last.max(now);
    }

    /// Counts one refusal of `peer` in the top list. Space-saving: when the list is full, a new
    /// peer takes the place of the least counted, inheriting its count, so the list's memory is
    /// fixed and any peer that made more than `count / TOP_PEERS` refusals is in it.
    fn add_peer(&mut self, peer: IpAddr) {
        if let Some(p) = self.top.iter_mut().find(|p| p.peer == peer) {
            p.count += 1;
        } else if self.top.len() < TOP_PEERS {
            self.top.push(PeerCount { peer, count: 1 });
        } else if let Some(least) = self.top.iter_mut().min_by_key(|p| p.count) {
            *least = PeerCount { peer, count: least.count + 1 };
        }
    }
}

impl Refusals {
    /// A refusal made at `now`: `true` if it is to be written in full (the first of its key in
    /// a window), `false` if it was counted.
    pub fn take(&mut self, key: Refusal, now: u64) -> bool {
        if let Some(c) = self.open.get_mut(&key) {
            c.add(now);
            return false;
        }
        let Some(peer) = key.peer else {
            // Keys come from Event::refusal, which always names the peer; count it anyway.
            self.count_under(key, now, None);
            return false;
        };
        let room = self.open.len() < MAX_REFUSAL_KEYS;
        let slot = (peer, key.refused);
        let held = self.per_peer.get(&slot).copied().unwrap_or(0);
        if room && held < MAX_KEYS_PER_PEER {
            self.per_peer.insert(slot, held + 1);
            self.open.insert(key.clone(), Counted::new(now));
            self.closing.push_back((now, key));
            return true;
        }
        // Past its own cap: one key per kind for the peer, so it is still named.
        let wide = Refusal { route: None, reason: None, host: None, ..key.clone() };
        if held >= MAX_KEYS_PER_PEER && (room || self.open.contains_key(&wide)) {
            self.count_under(wide, now, None);
            return false;
        }
        // Too many peers at once: counted without its peer, never written in full; the peer
        // is kept in the window's bounded top list.
        let overflow = Refusal { peer: None, host: None, ..key };
        self.count_under(overflow, now, Some(peer));
        false
    }

    /// Counts a refusal under `key` (opening its window if needed, never written in full).
    fn count_under(&mut self, key: Refusal, now: u64, peer: Option<IpAddr>) {
        let c = match self.open.get_mut(&key) {
            Some(c) => c,
            None => {
                self.closing.push_back((now, key.clone()));
                self.open.entry(key).or_insert_with(|| Counted::new(now))
            }
        };
        c.add(now);
        if let Some(peer) = peer {
            c.add_peer(peer);
        }
    }

    /// Closes the windows opened [`REFUSAL_WINDOW_MS`] before `now` (every window with
    /// `all`), returning the summaries of those that counted refusals.
    pub fn close(&mut self, now: u64, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some((opened, _)) = self.closing.front() {
            if !all && now.saturating_sub(*opened) < REFUSAL_WINDOW_MS {
                break;
            }
            let (_, key) = self.closing.pop_front().expect("front exists");
            let Some(mut c) = self.open.remove(&key) else { continue };
            if let (Some(peer), Some(_)) = (key.peer, key.route) {
                let slot = (peer, key.refused);
                if let Some(held) = self.per_peer.get_mut(&slot) {
                    *held -= 1;
                    if *held == 0 {
                        self.per_peer.remove(&slot);
                    }
                }
            }
            if c.count > 0 {
                c.top.sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
                out.push(Event::RefusedSummary {
                    refused: key.refused,
                    peer: key.peer,
                    route: key.route,
                    reason: key.reason,
                    host: key.host,
                    count: c.count,
                    first_ms: c.first,
                    last_ms: c.last,
                    top_peers: c.top,
                });
            }
        }
        out
    }

    /// Writes the counts of every open window and starts them again from zero, the windows
    /// staying open (so their next refusals are still only counted). Used once the service is
    /// stopping: nothing counted waits for a window to close.
    pub fn flush(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for (key, c) in self.open.iter_mut().filter(|(_, c)| c.count > 0) {
            let mut top = std::mem::take(&mut c.top);
            top.sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
            out.push(Event::RefusedSummary {
                refused: key.refused,
                peer: key.peer,
                route: key.route,
                reason: key.reason,
                host: key.host.clone(),
                count: c.count,
                first_ms: c.first,
                last_ms: c.last,
                top_peers: top,
            });
            c.count = 0;
            c.first = c.last;
        }
        out
    }

    /// How long until the next window closes, if one is open.
    pub fn next_close(&self, now: u64) -> Option<std::time::Duration> {
        let &(opened, _) = self.closing.front()?;
        let at = opened.saturating_add(REFUSAL_WINDOW_MS);
        Some(std::time::Duration::from_millis(at.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::domain::actor::Via;
    use crate::serve::domain::event::{refusal_peer, UNKNOWN_HOST};

    fn denied(peer: IpAddr, reason: &'static str) -> Event {
        Event::Denied { route: "/hosts", peer, status: 401, reason }
    }

    #[test]
    fn refusals_are_written_once_per_window_and_counted() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let key = denied(p, "missing-token").refusal().unwrap();
        let other = denied(p, "unknown-token").refusal().unwrap();
        assert!(r.take(key.clone(), 1000), "the first is written");
        assert!(!r.take(key.clone(), 1001) && !r.take(key.clone(), 1500));
        assert!(r.take(other, 1600), "another reason is another key");
        assert!(r.close(1000 + REFUSAL_WINDOW_MS - 1, false).is_empty(), "still open");
        let closed = r.close(1000 + REFUSAL_WINDOW_MS, false);
        match closed.as_slice() {
            [Event::RefusedSummary { count: 2, first_ms: 1000, last_ms: 1500, peer, .. }] => {
                assert_eq!(*peer, Some(p))
            }
            other => panic!("{other:?}"),
        }
        // `other` counted nothing beyond its first: no summary when it closes.
        assert!(r.close(u64::MAX, true).is_empty());
        assert!(r.take(key, 2 * REFUSAL_WINDOW_MS), "a new window writes its first again");
        // Records that are not refusals are never aggregated.
        let boot_ok = Event::Done {
            host: "h".into(),
            install: "x".into(),
            peer: p,
            profile: None,
            duration_ms: None,
        };
        assert!(boot_ok.refusal().is_none());
    }

    #[test]
    fn refusals_of_more_peers_than_tracked_fold_into_one_count_per_reason() {
        let mut r = Refusals::default();
        let mut written = 0;
        for i in 0..(MAX_REFUSAL_KEYS as u32 + 1000) {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..3 {
                written += u64::from(r.take(denied(peer, "missing-token").refusal().unwrap(), 5));
            }
        }
        assert_eq!(written, MAX_REFUSAL_KEYS as u64, "beyond the tracked peers, none in full");
        let closed = r.close(0, true);
        let overflow: Vec<_> = closed
            .iter()
            .filter_map(|e| match e {
                Event::RefusedSummary { peer: None, count, .. } => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(overflow, vec![3000]);
        let top = closed.iter().find_map(|e| match e {
            Event::RefusedSummary { peer: None, top_peers, .. } => Some(top_peers.clone()),
            _ => None,
        });
        assert_eq!(top.unwrap().len(), TOP_PEERS, "the overflow names its top peers, bounded");
        let counted: u64 = closed
            .iter()
            .map(|e| match e {
                Event::RefusedSummary { count, .. } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(written + counted, 3 * (MAX_REFUSAL_KEYS as u64 + 1000), "nothing is lost");
    }

    /// Refusals from every address of one /64, over every route and reason a client can pick.
    fn flood_from_one_prefix(r: &mut Refusals, n: u32) -> u64 {
        let routes = ["/hosts", "/session", "/events", "/inventory", "/bmc", "/metrics"];
        let reasons = ["missing-token", "unknown-token", "bad-csrf", "forbidden", "expired"];
        let mut written = 0;
        for i in 0..n {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            let route = routes[i as usize % routes.len()];
            let reason = reasons[(i as usize / routes.len()) % reasons.len()];
            let e = Event::Denied { route, peer: ip, status: 401, reason };
            written += u64::from(r.take(e.refusal().unwrap(), 5));
        }
        written
    }

    #[test]
    fn a_flood_from_one_prefix_leaves_other_peers_named() {
        let mut r = Refusals::default();
        let written = flood_from_one_prefix(&mut r, 50_000);
        assert_eq!(written, MAX_KEYS_PER_PEER as u64, "one /64 is one peer, capped in keys");
        // Another peer's refusals are still written in full and summarised under its address.
        let other: IpAddr = "198.51.100.4".parse().unwrap();
        let spray =
            Event::LoginFailed { name: None, via: Via::Token, peer: other, reason: "bad-password" };
        assert!(r.take(spray.refusal().unwrap(), 6), "written in full, not peerless");
        assert!(!r.take(spray.refusal().unwrap(), 7));
        let closed = r.close(0, true);
        let peer_of = |e: &Event| match e {
            Event::RefusedSummary { peer, route, count, .. } => (*peer, route.is_none(), *count),
            _ => unreachable!(),
        };
        let prefix: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert!(closed.iter().all(|e| peer_of(e).0.is_some()), "nothing peerless: {closed:?}");
        let named = closed.iter().any(|e| {
            matches!(e, Event::RefusedSummary {
                refused: "login-failed", peer: Some(p), route: Some("/session"), count: 1, ..
            } if *p == other)
        });
        assert!(named, "{closed:?}");
        // The flood past its keys is counted under the /64 and its kind.
        let wide: Vec<_> = closed.iter().map(peer_of).filter(|p| p.1).collect();
        assert_eq!(wide.len(), 1);
        assert_eq!(wide[0].0, Some(prefix));
        let counted: u64 = closed.iter().map(|e| peer_of(e).2).sum();
        assert_eq!(
            written + 1 + counted,
            50_000 + 2,
            "nothing is lost (the spray's first was written)"
        );
        // The table stays bounded: far fewer keys than the flood's addresses.
        assert!(r.open.is_empty() && r.per_peer.is_empty() && r.closing.is_empty());
    }

    #[test]
    fn the_table_stays_bounded_whatever_peers_send() {
        let mut r = Refusals::default();
        for p in 0..2000u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + p));
            for reason in ["missing-token", "unknown-token", "bad-csrf", "forbidden", "expired"] {
                for route in ["/hosts", "/session", "/events"] {
                    r.take(
                        Event::Denied { route, peer, status: 401, reason }.refusal().unwrap(),
                        5,
                    );
                }
            }
        }
        // Full keys plus the fixed set of peerless ones (here 15 route/reason pairs).
        assert!(r.open.len() <= MAX_REFUSAL_KEYS + 15, "{}", r.open.len());
        assert_eq!(r.open.len(), r.closing.len());
        assert!(r.per_peer.len() <= MAX_REFUSAL_KEYS);
        assert!(r.open.values().all(|c| c.top.len() <= TOP_PEERS));
    }

    /// A peer that used up its keys of one kind still has the first refusal of every other kind
    /// written in full (an operator reading the log sees each kind of thing it tried).
    #[test]
    fn a_peers_cap_is_per_kind() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.3".parse().unwrap();
        let reasons = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];
        let written = reasons
            .iter()
            .filter(|&&reason| {
                let e = Event::MediaDenied { host: None, format: "iso", reason, peer: p };
                r.take(e.refusal().unwrap(), 1)
            })
            .count();
        assert_eq!(written, MAX_KEYS_PER_PEER, "one kind is capped");
        assert!(r.take(denied(p, "missing-token").refusal().unwrap(), 2), "another kind is not");
    }

    #[test]
    fn probes_of_two_hosts_from_one_peer_are_both_named() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.3".parse().unwrap();
        let media = |host: &str| Event::MediaDenied {
            host: Some(host.into()),
            format: "iso",
            reason: "bad-signature",
            peer: p,
        };
        assert!(r.take(media("web-01").refusal().unwrap(), 1));
        assert!(r.take(media("db-01").refusal().unwrap(), 2), "another host: written in full");
        assert!(!r.take(media("db-01").refusal().unwrap(), 3));
        let token = |host: &str| Event::NodeTokenDenied {
            host: Some(host.into()),
            route: "/hosts/{host}/done",
            peer: p,
        };
        assert!(r.take(token("web-01").refusal().unwrap(), 4));
        assert!(r.take(token("db-01").refusal().unwrap(), 5));
        // Names not in the inventory are not keys: one client cannot open a key per name.
        let boot = |host: &str| Event::Boot {
            host: Some(host.into()),
            verified: false,
            answer: "local",
            kind: UNKNOWN_HOST,
            reason: "not in the inventory",
            install: None,
            peer: p,
            ip: None,
            mac: None,
            medium: "iso",
            platform: "efi",
            uuid: None,
            expected_uuid: None,
        };
        assert!(r.take(boot("made-up-1").refusal().unwrap(), 6));
        assert!(!r.take(boot("made-up-2").refusal().unwrap(), 7), "the same key");
        let summaries: Vec<_> = r
            .close(0, true)
            .into_iter()
            .filter(|e| matches!(e, Event::RefusedSummary { refused: "media-denied", .. }))
            .collect();
        match summaries.as_slice() {
            [Event::RefusedSummary { host: Some(h), count: 1, .. }] => assert_eq!(h, "db-01"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusal_peers_are_ipv4_or_an_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(refusal_peer(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(refusal_peer(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(refusal_peer(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
    }
}
