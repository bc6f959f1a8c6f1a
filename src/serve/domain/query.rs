//! Server-side filtering, sorting and paging of `GET /hosts` and `GET /events`, as pure
//! functions: the console asks for one page of 10,000 hosts, never for all of them.
//!
//! `GET /hosts?phase=&profile=&q=&sort=&order=&offset=&limit=`: `phase` is one of the
//! [`Phase`] names, `profile` the flag's profile or else the row's, `q` a case-insensitive
//! substring of host name, address, MAC or VLAN; `sort` one of `hostname` (default), `ip`,
//! `phase`, `profile`, `last-boot`, `install-age`; `order` `asc` (default) or `desc`.
//! Unknown values are a 400 naming the parameter.

use crate::serve::domain::lifecycle::Phase;
use std::cmp::Ordering;
use std::net::Ipv4Addr;

/// Largest page of hosts.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Hostname,
    Ip,
    Phase,
    Profile,
    LastBoot,
    /// When the current install began (the flag's time): oldest first in `asc`.
    InstallAge,
}

/// A parsed host query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostQuery {
    pub phase: Option<Phase>,
    /// `phase=stalled`: only hosts whose open install is stalled (whatever their phase).
    pub stalled: bool,
    pub profile: Option<String>,
    /// Lower case.
    pub text: Option<String>,
    pub sort: SortKey,
    pub desc: bool,
    pub offset: usize,
    pub limit: usize,
}

impl HostQuery {
    /// Whether the request asks for the paged form at all (otherwise `/hosts` answers as before:
    /// every host).
    pub fn wanted(param: impl Fn(&str) -> Option<String>) -> bool {
        ["phase", "profile", "q", "sort", "order", "offset", "limit"]
            .iter()
            .any(|p| param(p).is_some())
    }

    pub fn parse(param: impl Fn(&str) -> Option<String>) -> Result<HostQuery, String> {
        let stalled = param("phase").as_deref() == Some("stalled");
        let phase = match param("phase").filter(|p| !p.is_empty() && !stalled) {
            None => None,
            Some(p) => {
                Some(serde_json::from_value(serde_json::Value::String(p)).map_err(|_| {
                    "phase must be idle, pending, installing, started, failed, done or stalled"
                        .to_string()
                })?)
            }
        };
        let sort = match param("sort").as_deref().unwrap_or("hostname") {
            "" | "hostname" => SortKey::Hostname,
            "ip" => SortKey::Ip,
            "phase" => SortKey::Phase,
            "profile" => SortKey::Profile,
            "last-boot" => SortKey::LastBoot,
            "install-age" => SortKey::InstallAge,
            _ => {
                return Err(
                    "sort must be hostname, ip, phase, profile, last-boot or install-age".into()
                )
            }
        };
        let desc = match param("order").as_deref().unwrap_or("asc") {
            "" | "asc" => false,
            "desc" => true,
            _ => return Err("order must be asc or desc".into()),
        };
        let number = |name: &str, default: usize| match param(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| format!("{name} must be a whole number")),
        };
        Ok(HostQuery {
            phase,
            stalled,
            profile: param("profile").filter(|p| !p.is_empty()),
            text: param("q").map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty()),
            sort,
            desc,
            offset: number("offset", 0)?,
            limit: number("limit", 100)?.clamp(1, MAX_LIMIT),
        })
    }
}

/// What filtering and sorting look at, for one host.
#[derive(Debug, Clone)]
pub struct HostKey<'a> {
    pub hostname: &'a str,
    pub ip: Ipv4Addr,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    /// The flag's profile, else the row's.
    pub profile: Option<&'a str>,
    pub phase: Phase,
    /// Whether its open install is stalled (see `HostState::stalled`).
    pub stalled: bool,
    pub last_boot: Option<u64>,
    pub install_since: Option<u64>,
}

/// A page: the indices of `keys` to show, in order, and how many matched in all.
///
/// The order is the sort key, then the host name (ascending, except for `sort=hostname` in
/// `desc`). Sorted in two passes: by name, then stably by the sort key alone, which gives the
/// same order as one sort on both and compares strings only once per pair in the first pass
/// (a fleet is usually listed in name order already, which that pass finds in one sweep).
pub fn select(keys: &[HostKey], q: &HostQuery) -> (Vec<usize>, usize) {
    let mut hits: Vec<usize> = (0..keys.len()).filter(|&i| matches(&keys[i], q)).collect();
    let names_desc = q.desc && q.sort == SortKey::Hostname;
    hits.sort_by(|&a, &b| {
        let by_name = keys[a].hostname.cmp(keys[b].hostname);
        if names_desc {
            by_name.reverse()
        } else {
            by_name
        }
    });
    let primary = |a: &HostKey, b: &HostKey| -> Ordering {
        match q.sort {
            SortKey::Hostname => Ordering::Equal,
            SortKey::Ip => a.ip.cmp(&b.ip),
            SortKey::Phase => phase_rank(a.phase).cmp(&phase_rank(b.phase)),
            SortKey::Profile => a.profile.cmp(&b.profile),
            // Oldest first in `asc`; hosts never booted / not installing last in either order.
            SortKey::LastBoot => none_last(a.last_boot, b.last_boot, q.desc),
            SortKey::InstallAge => none_last(a.install_since, b.install_since, !q.desc),
        }
    };
    match q.sort {
        SortKey::Hostname => {}
        SortKey::LastBoot | SortKey::InstallAge => {
            hits.sort_by(|&a, &b| primary(&keys[a], &keys[b]))
        }
        _ if q.desc => hits.sort_by(|&a, &b| primary(&keys[b], &keys[a])),
        _ => hits.sort_by(|&a, &b| primary(&keys[a], &keys[b])),
    }
    let matched = hits.len();
    let page = hits.into_iter().skip(q.offset).take(q.limit).collect();
    (page, matched)
}

/// Compares two optional times, newest first when `newest_first`, hosts without one last.
fn none_last(a: Option<u64>, b: Option<u64>, newest_first: bool) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) if newest_first => y.cmp(&x),
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Phases in the order an operator cares about: trouble first.
fn phase_rank(p: Phase) -> u8 {
    match p {
        Phase::Failed => 0,
        Phase::Installing => 1,
        Phase::Started => 2,
        Phase::Pending => 3,
        Phase::Done => 4,
        Phase::Idle => 5,
    }
}

fn matches(k: &HostKey, q: &HostQuery) -> bool {
    if q.phase.is_some_and(|p| p != k.phase) || (q.stalled && !k.stalled) {
        return false;
    }
    if let Some(p) = &q.profile {
        if k.profile != Some(p.as_str()) {
            return false;
        }
    }
    let Some(t) = &q.text else { return true };
    k.hostname.contains(t.as_str())
        || contains_ip(k.ip, t)
        || k.mac.as_deref().is_some_and(|m| m.contains(t.as_str()))
        || k.vlan.is_some_and(|v| v.to_string() == *t)
}

/// Whether `ip`'s dotted form contains `t`, formatted on the stack (this runs for every host
/// of the fleet on a text search).
fn contains_ip(ip: Ipv4Addr, t: &str) -> bool {
    use std::io::Write;
    let mut buf = [0u8; 15]; // "255.255.255.255"
    let mut w = &mut buf[..];
    let [a, b, c, d] = ip.octets();
    write!(w, "{a}.{b}.{c}.{d}").expect("an IPv4 address fits in 15 bytes");
    let n = 15 - w.len();
    std::str::from_utf8(&buf[..n]).is_ok_and(|s| s.contains(t))
}

/// Filters of `GET /events`: `host`, `event` (e.g. `flag-set`), `by` (a caller's name). Matched
/// against the parsed record's fields, exactly (host case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub host: Option<String>,
    pub event: Option<String>,
    pub by: Option<String>,
}

impl EventFilter {
    pub fn parse(param: impl Fn(&str) -> Option<String>) -> EventFilter {
        let get = |n: &str| param(n).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        EventFilter {
            host: get("host").map(|h| h.to_lowercase()),
            event: get("event"),
            by: get("by"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.event.is_none() && self.by.is_none()
    }

    /// Whether a record passes. `by` matches the record's `by` (actions) or `name` (logins).
    pub fn keeps(&self, record: &serde_json::Value) -> bool {
        let field = |k: &str| record.get(k).and_then(|v| v.as_str());
        self.host
            .as_deref()
            .is_none_or(|h| field("host").is_some_and(|x| x.eq_ignore_ascii_case(h)))
            && self.event.as_deref().is_none_or(|e| field("event") == Some(e))
            && self.by.as_deref().is_none_or(|b| field("by") == Some(b) || field("name") == Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        h: &'static str,
        last: u8,
        phase: Phase,
        profile: Option<&'static str>,
    ) -> HostKey<'static> {
        HostKey {
            hostname: h,
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: None,
            vlan: Some(120),
            profile,
            phase,
            // The filter's test host: stalled whatever its phase.
            stalled: h == "a",
            last_boot: Some(u64::from(last)),
            install_since: None,
        }
    }

    fn q(pairs: &[(&str, &str)]) -> HostQuery {
        HostQuery::parse(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
            .unwrap()
    }

    #[test]
    fn filters_sorts_and_pages() {
        let keys = vec![
            key("b", 3, Phase::Idle, Some("rocky")),
            key("a", 2, Phase::Failed, Some("debian")),
            key("c", 1, Phase::Pending, Some("rocky")),
        ];
        assert_eq!(select(&keys, &q(&[])), (vec![1, 0, 2], 3));
        assert_eq!(select(&keys, &q(&[("sort", "ip")])).0, vec![2, 1, 0]);
        assert_eq!(select(&keys, &q(&[("sort", "hostname"), ("order", "desc")])).0, vec![2, 0, 1]);
        assert_eq!(select(&keys, &q(&[("sort", "phase")])).0, vec![1, 2, 0]);
        assert_eq!(select(&keys, &q(&[("sort", "last-boot")])).0, vec![2, 1, 0], "oldest first");
        let newest = q(&[("sort", "last-boot"), ("order", "desc")]);
        assert_eq!(select(&keys, &newest).0, vec![0, 1, 2]);
        assert_eq!(select(&keys, &q(&[("profile", "rocky")])), (vec![0, 2], 2));
        assert_eq!(select(&keys, &q(&[("phase", "failed")])), (vec![1], 1));
        assert_eq!(select(&keys, &q(&[("phase", "stalled")])), (vec![1], 1));
        assert_eq!(select(&keys, &q(&[("q", "10.0.0.3")])), (vec![0], 1));
        assert_eq!(select(&keys, &q(&[("q", "120")])).1, 3, "VLAN");
        assert_eq!(select(&keys, &q(&[("offset", "1"), ("limit", "1")])), (vec![0], 3));
    }

    /// The two-pass sort gives exactly the order of one sort on (key, then name), for every
    /// key and order, with many ties (as a fleet of idle hosts has).
    #[test]
    fn two_pass_sort_is_one_sort_on_key_then_name() {
        let phases = [Phase::Idle, Phase::Pending, Phase::Failed, Phase::Done];
        let names: Vec<String> = (0..200).map(|i| format!("h{:03}", (i * 37) % 200)).collect();
        let keys: Vec<HostKey> = names
            .iter()
            .enumerate()
            .map(|(i, n)| HostKey {
                hostname: n,
                ip: Ipv4Addr::new(10, 0, (i % 3) as u8, (i % 7) as u8),
                mac: None,
                vlan: None,
                profile: [None, Some("a"), Some("b")][i % 3],
                phase: phases[i % 4],
                stalled: false,
                last_boot: (i % 5 != 0).then_some((i % 11) as u64),
                install_since: (i % 4 != 0).then_some((i % 13) as u64),
            })
            .collect();
        for sort in ["hostname", "ip", "phase", "profile", "last-boot", "install-age"] {
            for order in ["asc", "desc"] {
                let query = q(&[("sort", sort), ("order", order), ("limit", "1000")]);
                let mut want: Vec<usize> = (0..keys.len()).collect();
                want.sort_by(|&a, &b| {
                    let (a, b) = (&keys[a], &keys[b]);
                    let primary = match query.sort {
                        SortKey::Hostname => Ordering::Equal,
                        SortKey::Ip => a.ip.cmp(&b.ip),
                        SortKey::Phase => phase_rank(a.phase).cmp(&phase_rank(b.phase)),
                        SortKey::Profile => a.profile.cmp(&b.profile),
                        SortKey::LastBoot => none_last(a.last_boot, b.last_boot, query.desc),
                        SortKey::InstallAge => {
                            none_last(a.install_since, b.install_since, !query.desc)
                        }
                    };
                    let primary = match query.sort {
                        SortKey::LastBoot | SortKey::InstallAge => primary,
                        _ if query.desc => primary.reverse(),
                        _ => primary,
                    };
                    let by_name = a.hostname.cmp(b.hostname);
                    primary.then(if query.desc && query.sort == SortKey::Hostname {
                        by_name.reverse()
                    } else {
                        by_name
                    })
                });
                assert_eq!(select(&keys, &query).0, want, "sort={sort} order={order}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad =
            |k: &str, v: &str| HostQuery::parse(|n| (n == k).then(|| v.to_string())).unwrap_err();
        assert!(bad("phase", "asleep").starts_with("phase"));
        assert!(bad("sort", "mood").starts_with("sort"));
        assert!(bad("offset", "-1").starts_with("offset"));
        assert_eq!(q(&[("limit", "999999")]).limit, MAX_LIMIT);
    }

    #[test]
    fn event_filters() {
        let f = EventFilter::parse(|n| match n {
            "host" => Some("N1".into()),
            "by" => Some("alice".into()),
            _ => None,
        });
        let rec = serde_json::json!({"event": "flag-set", "host": "n1", "by": "alice"});
        assert!(f.keeps(&rec));
        assert!(!f.keeps(&serde_json::json!({"event": "flag-set", "host": "n2", "by": "alice"})));
        assert!(EventFilter::default().keeps(&rec));
    }
}
