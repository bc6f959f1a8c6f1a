//! `bootforge discover`, the decision: which of a machine's network interfaces (as its BMC
//! reports them) is its boot NIC, and what that changes in its inventory row.
//!
//! Pure: the caller reads the BMC and the row, this module only decides.
//!
//! # The boot NIC
//!
//! 1. An interface whose reported IPv4 address lies in the row's subnet (`ip`'s prefix): if
//!    exactly one has one, it is the boot NIC; if several do, the answer is ambiguous.
//! 2. Otherwise the interface that is up: where interfaces report `LinkStatus`, those with
//!    `LinkUp`; where none do, those not reported disabled (`InterfaceEnabled: false`, or a
//!    `Status.State` such as `Disabled`). Exactly one: the boot NIC; several: ambiguous; none:
//!    "none up".
//!
//! It never guesses: an ambiguity names the candidates, and nothing changes for that host.
//!
//! # What changes in the row
//!
//! A value the row does not have is filled; one it has and that agrees is left alone; one the
//! operator typed that disagrees is kept, and reported, unless the caller asked to overwrite.
//! The same rule holds for the `mac`, `uuid` and `serial` columns.

use crate::inventory::{Mac, SystemUuid};
use serde::Serialize;
use std::net::Ipv4Addr;

/// An interface's link, as far as the BMC says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// `LinkStatus: LinkUp`.
    Up,
    /// No link status reported, and not reported disabled.
    Enabled,
    /// Link down, or the interface disabled.
    Down,
}

/// An interface's [`Link`] from what the BMC reported: `LinkStatus`, `InterfaceEnabled` and
/// `Status.State` (each `None` when not reported).
pub fn link_of(link_status: Option<&str>, enabled: Option<bool>, state: Option<&str>) -> Link {
    let disabled_state = matches!(
        state,
        Some("Disabled" | "StandbyOffline" | "Absent" | "UnavailableOffline" | "Deferring")
    );
    if enabled == Some(false) || disabled_state {
        return Link::Down;
    }
    match link_status {
        Some("LinkUp") => Link::Up,
        Some(_) => Link::Down,
        None => Link::Enabled,
    }
}

/// One interface with a MAC, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// The BMC's id of the interface (already made safe by the caller).
    pub id: String,
    pub mac: Mac,
    pub link: Link,
    /// Whether the BMC reported a `LinkStatus` at all.
    pub link_reported: bool,
    pub ipv4: Vec<Ipv4Addr>,
}

/// Why a boot NIC was chosen, or why none could be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Choice {
    /// The only interface with an address in the row's subnet.
    InSubnet { id: String, mac: Mac, address: Ipv4Addr },
    /// The only interface that is up (or enabled, where no link is reported).
    OnlyUp { id: String, mac: Mac },
    /// Several candidates: which, and by what rule (`address in the subnet`, `link up`,
    /// `enabled`).
    Ambiguous { rule: &'static str, candidates: Vec<(String, Mac)> },
    /// Interfaces, none of them up.
    NoneUp { interfaces: usize },
    /// The BMC reports no interface with a MAC.
    NoInterfaces,
}

impl Choice {
    /// The chosen MAC, if one was.
    pub fn mac(&self) -> Option<Mac> {
        match self {
            Choice::InSubnet { mac, .. } | Choice::OnlyUp { mac, .. } => Some(*mac),
            _ => None,
        }
    }

    /// One line for an operator.
    pub fn describe(&self) -> String {
        match self {
            Choice::InSubnet { id, address, .. } => {
                format!("interface {id} is the only one with an address in the row's subnet ({address})")
            }
            Choice::OnlyUp { id, .. } => format!("interface {id} is the only one up"),
            Choice::Ambiguous { rule, candidates } => format!(
                "ambiguous: {} interfaces match ({rule}): {}; put the right MAC in the row by hand",
                candidates.len(),
                candidates.iter().map(|(id, mac)| format!("{id} {mac}")).collect::<Vec<_>>().join(", ")
            ),
            Choice::NoneUp { interfaces } => format!(
                "none of the {interfaces} interfaces is up (and none has an address in the row's subnet)"
            ),
            Choice::NoInterfaces => "the BMC reports no network interface with a MAC".into(),
        }
    }
}

/// Chooses the boot NIC among `nics` for a row at `ip`/`prefix` (see the module docs).
pub fn choose(nics: &[Nic], ip: Ipv4Addr, prefix: u8) -> Choice {
    if nics.is_empty() {
        return Choice::NoInterfaces;
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let in_subnet = |a: &Ipv4Addr| u32::from(*a) & mask == u32::from(ip) & mask;
    let addressed: Vec<(&Nic, Ipv4Addr)> =
        nics.iter().filter_map(|n| n.ipv4.iter().find(|a| in_subnet(a)).map(|a| (n, *a))).collect();
    match addressed.as_slice() {
        [(nic, address)] => {
            return Choice::InSubnet { id: nic.id.clone(), mac: nic.mac, address: *address }
        }
        [] => {}
        many => {
            return Choice::Ambiguous {
                rule: "address in the subnet",
                candidates: many.iter().map(|(n, _)| (n.id.clone(), n.mac)).collect(),
            }
        }
    }
    // Where any interface reports its link, only a link that is up counts.
    let reported = nics.iter().any(|n| n.link_reported);
    let (wanted, rule) = if reported { (Link::Up, "link up") } else { (Link::Enabled, "enabled") };
    let up: Vec<&Nic> = nics.iter().filter(|n| n.link == wanted).collect();
    match up.as_slice() {
        [one] => Choice::OnlyUp { id: one.id.clone(), mac: one.mac },
        [] => Choice::NoneUp { interfaces: nics.len() },
        many => Choice::Ambiguous {
            rule,
            candidates: many.iter().map(|n| (n.id.clone(), n.mac)).collect(),
        },
    }
}

/// What happens to one column of the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Field<T> {
    /// The row has none: `new` is written.
    Fill { new: T },
    /// The row has the same value.
    Unchanged { value: T },
    /// The row's value differs and the caller asked to overwrite: `new` replaces `old`.
    Replace { old: T, new: T },
    /// The row's value differs and stays (no overwrite asked): `proposed` is not written.
    Keep { old: T, proposed: T },
    /// Nothing was found to propose; the row's value (if any) stays.
    Nothing { old: Option<T> },
}

impl<T: Clone + PartialEq> Field<T> {
    /// The rule of the module docs for one column.
    pub fn decide(old: Option<T>, found: Option<T>, overwrite: bool) -> Field<T> {
        match (old, found) {
            (old, None) => Field::Nothing { old },
            (None, Some(new)) => Field::Fill { new },
            (Some(old), Some(new)) if old == new => Field::Unchanged { value: old },
            (Some(old), Some(new)) if overwrite => Field::Replace { old, new },
            (Some(old), Some(proposed)) => Field::Keep { old, proposed },
        }
    }

    /// The value to write, if this changes the row.
    pub fn write(&self) -> Option<&T> {
        match self {
            Field::Fill { new } | Field::Replace { new, .. } => Some(new),
            _ => None,
        }
    }

    /// The row's value before.
    pub fn old(&self) -> Option<&T> {
        match self {
            Field::Unchanged { value } => Some(value),
            Field::Replace { old, .. } | Field::Keep { old, .. } => Some(old),
            Field::Nothing { old } => old.as_ref(),
            Field::Fill { .. } => None,
        }
    }

    /// The value proposed, whether or not it is written.
    pub fn proposed(&self) -> Option<&T> {
        match self {
            Field::Fill { new } | Field::Replace { new, .. } => Some(new),
            Field::Unchanged { value } => Some(value),
            Field::Keep { proposed, .. } => Some(proposed),
            Field::Nothing { .. } => None,
        }
    }
}

/// What the inventory row of one host has, as discovery needs it.
#[derive(Debug, Clone)]
pub struct Row {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: Option<Mac>,
    pub uuid: Option<SystemUuid>,
    pub serial: Option<String>,
}

/// What the BMC says of the machine, parsed.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub nics: Vec<Nic>,
    pub uuid: Option<SystemUuid>,
    pub serial: Option<String>,
}

/// The proposal for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    pub choice: Choice,
    pub mac: Field<Mac>,
    pub uuid: Field<SystemUuid>,
    pub serial: Field<String>,
}

impl Proposal {
    /// Whether applying it changes the row.
    pub fn changes(&self) -> bool {
        self.mac.write().is_some() || self.uuid.write().is_some() || self.serial.write().is_some()
    }
}

/// The proposal for a row, given what its BMC reports.
pub fn propose(row: &Row, found: &Found, overwrite: bool) -> Proposal {
    let choice = choose(&found.nics, row.ip, row.prefix);
    Proposal {
        mac: Field::decide(row.mac, choice.mac(), overwrite),
        uuid: Field::decide(row.uuid, found.uuid, overwrite),
        serial: Field::decide(row.serial.clone(), found.serial.clone(), overwrite),
        choice,
    }
}

/// One row's identifying values: as the inventory has them, or as a proposal would leave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host: String,
    pub mac: Option<Mac>,
    pub uuid: Option<SystemUuid>,
}

/// The proposals that cannot be applied because the MAC or UUID they write would then belong
/// to two rows (the inventory refuses that), each with the reason; the others can be.
///
/// `rows` are every inventory row as it is; `proposed` the rows a discovery would change, as
/// it would leave them. A proposal set aside leaves its row as it was, which can make another
/// proposal clash (it proposed the value that row keeps), so this repeats until nothing more
/// clashes: at most once per proposal.
pub fn clashes(rows: &[Identity], proposed: &[Identity]) -> Vec<(String, String)> {
    use std::collections::HashMap;
    let mut refused: Vec<(String, String)> = Vec::new();
    loop {
        let applied = |host: &str| {
            !refused.iter().any(|(h, _)| h == host) && proposed.iter().any(|p| p.host == host)
        };
        let after: Vec<&Identity> = rows
            .iter()
            .map(|r| match proposed.iter().find(|p| p.host == r.host) {
                Some(p) if applied(&r.host) => p,
                _ => r,
            })
            .collect();
        let mut macs: HashMap<Mac, Vec<&str>> = HashMap::new();
        let mut uuids: HashMap<SystemUuid, Vec<&str>> = HashMap::new();
        for r in &after {
            if let Some(m) = r.mac {
                macs.entry(m).or_default().push(&r.host);
            }
            if let Some(u) = r.uuid {
                uuids.entry(u).or_default().push(&r.host);
            }
        }
        let mut found = Vec::new();
        for p in proposed.iter().filter(|p| applied(&p.host)) {
            // Only a value the proposal writes can be its fault; one the row already had was
            // unique in the inventory.
            let row = rows.iter().find(|r| r.host == p.host);
            let writes_mac = p.mac.is_some() && row.map(|r| r.mac) != Some(p.mac);
            let writes_uuid = p.uuid.is_some() && row.map(|r| r.uuid) != Some(p.uuid);
            let others = |hosts: &Vec<&str>| -> Vec<String> {
                hosts.iter().filter(|h| **h != p.host).map(|h| h.to_string()).collect()
            };
            if let Some(o) = p
                .mac
                .filter(|_| writes_mac)
                .and_then(|m| macs.get(&m))
                .map(others)
                .filter(|o| !o.is_empty())
            {
                found.push((
                    p.host.clone(),
                    format!(
                        "not applied: the MAC {} would also be {}'s",
                        p.mac.unwrap(),
                        o.join(", ")
                    ),
                ));
            } else if let Some(o) = p
                .uuid
                .filter(|_| writes_uuid)
                .and_then(|u| uuids.get(&u))
                .map(others)
                .filter(|o| !o.is_empty())
            {
                found.push((
                    p.host.clone(),
                    format!(
                        "not applied: the UUID {} would also be {}'s",
                        p.uuid.unwrap(),
                        o.join(", ")
                    ),
                ));
            }
        }
        if found.is_empty() {
            return refused;
        }
        refused.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn nic(last: u8, link: Link, reported: bool, ipv4: &[&str]) -> Nic {
        Nic {
            id: format!("nic{last}"),
            mac: mac(last),
            link,
            link_reported: reported,
            ipv4: ipv4.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

    fn row(mac: Option<Mac>) -> Row {
        Row { ip: IP, prefix: 24, mac, uuid: None, serial: None }
    }

    #[test]
    fn links_from_what_the_bmc_says() {
        assert_eq!(link_of(Some("LinkUp"), Some(true), Some("Enabled")), Link::Up);
        assert_eq!(link_of(Some("LinkDown"), None, None), Link::Down);
        assert_eq!(link_of(Some("NoLink"), None, None), Link::Down);
        assert_eq!(link_of(Some("LinkUp"), Some(false), None), Link::Down);
        assert_eq!(link_of(None, None, Some("Enabled")), Link::Enabled);
        assert_eq!(link_of(None, None, Some("Disabled")), Link::Down);
        assert_eq!(link_of(None, None, None), Link::Enabled);
    }

    #[test]
    fn the_single_interface_up_is_chosen() {
        let nics = [nic(1, Link::Down, true, &[]), nic(2, Link::Up, true, &[])];
        assert_eq!(choose(&nics, IP, 24), Choice::OnlyUp { id: "nic2".into(), mac: mac(2) });
        // Without any link reported, the enabled ones count.
        let nics = [nic(1, Link::Down, false, &[]), nic(2, Link::Enabled, false, &[])];
        assert_eq!(choose(&nics, IP, 24).mac(), Some(mac(2)));
        // Where links are reported, an interface that only says it is enabled does not count.
        let nics = [nic(1, Link::Enabled, false, &[]), nic(2, Link::Up, true, &[])];
        assert_eq!(choose(&nics, IP, 24).mac(), Some(mac(2)));
    }

    #[test]
    fn an_address_in_the_subnet_wins_over_links() {
        let nics =
            [nic(1, Link::Up, true, &["192.168.1.5"]), nic(2, Link::Up, true, &["10.0.0.11"])];
        assert_eq!(
            choose(&nics, IP, 24),
            Choice::InSubnet { id: "nic2".into(), mac: mac(2), address: IP }
        );
        // /16: 10.0.9.9 is in it too, so both match.
        let nics = [nic(1, Link::Up, true, &["10.0.9.9"]), nic(2, Link::Up, true, &["10.0.0.12"])];
        let c = choose(&nics, IP, 16);
        assert!(
            matches!(&c, Choice::Ambiguous { rule: "address in the subnet", candidates } if candidates.len() == 2),
            "{c:?}"
        );
    }

    #[test]
    fn ambiguity_and_none_up_are_stated() {
        let nics = [nic(1, Link::Up, true, &[]), nic(2, Link::Up, true, &[])];
        let c = choose(&nics, IP, 24);
        assert_eq!(c.mac(), None);
        let text = c.describe();
        assert!(text.contains("nic1 52:54:00:00:00:01") && text.contains("nic2"), "{text}");
        assert!(text.contains("link up"), "{text}");
        let nics = [nic(1, Link::Down, true, &[]), nic(2, Link::Down, true, &[])];
        assert_eq!(choose(&nics, IP, 24), Choice::NoneUp { interfaces: 2 });
        assert_eq!(choose(&[], IP, 24), Choice::NoInterfaces);
    }

    #[test]
    fn typed_values_are_kept_unless_overwritten() {
        let found = Found { nics: vec![nic(2, Link::Up, true, &[])], ..Found::default() };
        assert_eq!(propose(&row(None), &found, false).mac, Field::Fill { new: mac(2) });
        assert_eq!(
            propose(&row(Some(mac(2))), &found, false).mac,
            Field::Unchanged { value: mac(2) }
        );
        let kept = propose(&row(Some(mac(9))), &found, false);
        assert_eq!(kept.mac, Field::Keep { old: mac(9), proposed: mac(2) });
        assert!(!kept.changes());
        let replaced = propose(&row(Some(mac(9))), &found, true);
        assert_eq!(replaced.mac, Field::Replace { old: mac(9), new: mac(2) });
        assert!(replaced.changes());
        // Ambiguous: nothing to write, whatever overwrite says.
        let two = Found {
            nics: vec![nic(1, Link::Up, true, &[]), nic(2, Link::Up, true, &[])],
            ..Found::default()
        };
        let p = propose(&row(Some(mac(9))), &two, true);
        assert_eq!(p.mac, Field::Nothing { old: Some(mac(9)) });
        assert!(!p.changes());
    }

    #[test]
    fn uuid_and_serial_follow_the_same_rule() {
        let u: SystemUuid = "8F1C2F6E-0000-4000-8000-000000000001".parse().unwrap();
        let other: SystemUuid = "8f1c2f6e-0000-4000-8000-000000000002".parse().unwrap();
        let found = Found { nics: vec![], uuid: Some(u), serial: Some("SN1".into()) };
        let p = propose(&row(None), &found, false);
        assert_eq!(p.uuid, Field::Fill { new: u });
        assert_eq!(p.serial, Field::Fill { new: "SN1".to_string() });
        assert!(p.changes());
        let mut typed = row(None);
        typed.uuid = Some("8f1c2f6e-0000-4000-8000-000000000001".parse().unwrap());
        assert_eq!(propose(&typed, &found, false).uuid, Field::Unchanged { value: u });
        typed.uuid = Some(other);
        assert_eq!(propose(&typed, &found, false).uuid, Field::Keep { old: other, proposed: u });
        assert_eq!(propose(&typed, &found, true).uuid, Field::Replace { old: other, new: u });
    }

    fn id(host: &str, mac_last: Option<u8>, uuid_last: Option<u8>) -> Identity {
        Identity {
            host: host.into(),
            mac: mac_last.map(mac),
            uuid: uuid_last
                .map(|l| format!("8f1c2f6e-0000-4000-8000-0000000000{l:02x}").parse().unwrap()),
        }
    }

    #[test]
    fn a_proposal_that_would_share_a_value_is_set_aside_and_the_rest_apply() {
        let rows = [id("a", None, None), id("b", Some(2), None), id("c", None, Some(3))];
        // a would take b's MAC; c's UUID is fine; b's new UUID is c's.
        let proposed = [id("a", Some(2), None), id("b", Some(2), Some(3))];
        let out = clashes(&rows, &proposed);
        let hosts: Vec<&str> = out.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["a", "b"], "{out:?}");
        assert!(out[0].1.contains("52:54:00:00:00:02 would also be b's"), "{out:?}");
        assert!(out[1].1.contains("would also be c's"), "{out:?}");
        let fine = [id("a", Some(1), None)];
        assert!(clashes(&rows, &fine).is_empty());
    }

    #[test]
    fn setting_one_aside_can_make_another_clash() {
        // a moves from MAC 1 to 3 (which c, unchanged, has): set aside, a keeps 1, so b's
        // proposal of 1 now clashes too.
        let rows = [id("a", Some(1), None), id("b", None, None), id("c", Some(3), None)];
        let proposed = [id("a", Some(3), None), id("b", Some(1), None)];
        let hosts: Vec<String> = clashes(&rows, &proposed).into_iter().map(|(h, _)| h).collect();
        assert_eq!(hosts, ["a", "b"]);
    }
}
