//! Reading what a BMC knows of a System's network interfaces, and its identity: the
//! `EthernetInterfaces` collection with each member's MAC addresses, link and enabled state and
//! IPv4 addresses, and the System's `UUID` and `SerialNumber` (for `bootforge discover`).
//!
//! Read only: nothing is PATCHed or POSTed. The walk reuses [`Client`]'s session (deadline, TLS
//! policy, credentials, origin-only redirects) and its System lookup.
//!
//! Invariants (the BMC's answer is hostile input):
//! * At most [`MAX_INTERFACES`] members are read, and at most [`MAX_ADDRESSES`] addresses of
//!   each; a collection that lists more is cut, and [`SystemNics::truncated`] says so.
//! * A MAC is kept only when it parses as a MAC ([`Mac`]); the text of one that does not is
//!   kept only as a bounded, cleaned note. Addresses are kept only when they parse as IPv4.
//! * Every other text (ids, states, the UUID and serial as reported) passes through
//!   [`untrusted`] with a small bound before it reaches anyone.

use super::client::{find_system, members, text, Resource};
use super::*;
use crate::inventory::Mac;
use serde_json::Value;
use std::net::Ipv4Addr;

/// Interfaces read per System, at most.
pub const MAX_INTERFACES: usize = 32;
/// IPv4 addresses kept per interface, at most.
pub const MAX_ADDRESSES: usize = 8;
/// The bound of short texts a BMC reports (ids, states).
const SHORT: usize = 64;

/// One interface as the BMC reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicReport {
    /// The member's `Id` (cleaned, bounded), else the last part of its URL.
    pub id: String,
    /// `MACAddress` (the one in use), else `PermanentMACAddress`, when it is a MAC.
    pub mac: Option<Mac>,
    /// `PermanentMACAddress`, when it is a MAC and differs from `mac`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permanent_mac: Option<Mac>,
    /// `LinkStatus`: `LinkUp`, `LinkDown`, `NoLink`; `None` when not reported.
    pub link_status: Option<String>,
    /// `InterfaceEnabled`, when reported.
    pub interface_enabled: Option<bool>,
    /// `Status.State`: `Enabled`, `Disabled`, `StandbyOffline`, …
    pub state: Option<String>,
    /// `IPv4Addresses[].Address` that parse as IPv4.
    pub ipv4: Vec<Ipv4Addr>,
    /// Why the interface has no MAC, when its text was not one (cleaned, bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A System's identity and interfaces ([`Client::nics`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemNics {
    /// The System's URL.
    pub system: String,
    /// `UUID` as reported (cleaned, bounded; the caller parses it).
    pub uuid: Option<String>,
    /// `SerialNumber` as reported (cleaned, bounded).
    pub serial: Option<String>,
    pub interfaces: Vec<NicReport>,
    /// Whether the BMC listed more than [`MAX_INTERFACES`] interfaces.
    pub truncated: bool,
}

impl Client {
    /// The System's UUID, serial number and network interfaces.
    pub fn nics(&self, target: &BmcTarget) -> Result<SystemNics, RedfishError> {
        self.nics_within(target, &Progress::unbounded())
    }

    /// [`Client::nics`] within `progress`'s deadline.
    pub fn nics_within(
        &self,
        target: &BmcTarget,
        progress: &Progress,
    ) -> Result<SystemNics, RedfishError> {
        let s = self.session(target, progress)?;
        progress.enter(&target.url, "reading the system")?;
        let system = find_system(&s)?;
        let Some(collection) = system.link(&s, "EthernetInterfaces")? else {
            return Err(RedfishError::Unsupported {
                url: system.url.clone(),
                message: "the System has no EthernetInterfaces collection".into(),
            });
        };
        progress.enter(&target.url, "reading the network interfaces")?;
        let list = members(&s, &collection, MAX_INTERFACES + 1)?;
        let truncated = list.len() > MAX_INTERFACES;
        let mut interfaces = Vec::new();
        for member in list.iter().take(MAX_INTERFACES) {
            let nic = Resource::read(&s, member)?;
            interfaces.push(interface(&nic.url, &nic.body));
        }
        Ok(SystemNics {
            system: system.url.clone(),
            uuid: bounded(&system.body["UUID"], SHORT),
            serial: bounded(&system.body["SerialNumber"], 128),
            interfaces,
            truncated,
        })
    }
}

fn bounded(v: &Value, max: usize) -> Option<String> {
    text(v).map(|t| untrusted(&t, max))
}

/// One `EthernetInterface` resource, read defensively.
fn interface(url: &str, body: &Value) -> NicReport {
    let id = bounded(&body["Id"], SHORT).unwrap_or_else(|| {
        untrusted(url.rsplit('/').find(|p| !p.is_empty()).unwrap_or("?"), SHORT)
    });
    let parse = |name: &str| -> (Option<Mac>, Option<String>) {
        match body[name].as_str().map(str::trim).filter(|t| !t.is_empty()) {
            None => (None, None),
            Some(t) => match t.parse::<Mac>() {
                Ok(m) => (Some(m), None),
                Err(_) => (None, Some(format!("{name} {:?} is not a MAC", untrusted(t, 40)))),
            },
        }
    };
    let (current, bad_current) = parse("MACAddress");
    let (permanent, bad_permanent) = parse("PermanentMACAddress");
    let mac = current.or(permanent);
    let ipv4 = body["IPv4Addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["Address"].as_str()?.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_unspecified())
        .take(MAX_ADDRESSES)
        .collect();
    NicReport {
        id,
        mac,
        permanent_mac: permanent.filter(|p| Some(*p) != mac),
        link_status: bounded(&body["LinkStatus"], SHORT),
        interface_enabled: body["InterfaceEnabled"].as_bool(),
        state: bounded(&body["Status"]["State"], SHORT),
        ipv4,
        note: if mac.is_none() { bad_current.or(bad_permanent) } else { None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_interface_is_read_defensively() {
        let nic = interface(
            "https://b/redfish/v1/Systems/1/EthernetInterfaces/NIC.1",
            &json!({
                "Id": "NIC.1\u{202e}",
                "MACAddress": "AA-BB-CC-DD-EE-01",
                "PermanentMACAddress": "aa:bb:cc:dd:ee:02",
                "LinkStatus": "LinkUp",
                "InterfaceEnabled": true,
                "Status": {"State": "Enabled"},
                "IPv4Addresses": [{"Address": "10.0.0.5"}, {"Address": "nope"}, {"Address": "0.0.0.0"}]
            }),
        );
        assert_eq!(nic.id, "NIC.1");
        assert_eq!(nic.mac, Some("aa:bb:cc:dd:ee:01".parse().unwrap()));
        assert_eq!(nic.permanent_mac, Some("aa:bb:cc:dd:ee:02".parse().unwrap()));
        assert_eq!(nic.link_status.as_deref(), Some("LinkUp"));
        assert_eq!(nic.ipv4, vec![Ipv4Addr::new(10, 0, 0, 5)]);

        let odd = interface(
            "https://b/redfish/v1/Systems/1/EthernetInterfaces/7",
            &json!({"MACAddress": format!("{}\n", "x".repeat(500)), "IPv4Addresses": "no"}),
        );
        assert_eq!(odd.id, "7");
        assert_eq!(odd.mac, None);
        let note = odd.note.unwrap();
        assert!(note.len() < 80 && !note.contains('\n'), "{note}");
        assert!(odd.ipv4.is_empty());
        // Only the permanent address: it is the MAC.
        let only = interface("u/1", &json!({"PermanentMACAddress": "aabbccddee03"}));
        assert_eq!(only.mac, Some("aa:bb:cc:dd:ee:03".parse().unwrap()));
        assert_eq!(only.permanent_mac, None);
    }
}
