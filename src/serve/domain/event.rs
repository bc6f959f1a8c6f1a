//! The audit records: a typed enum whose field types bound what a record may hold.
//!
//! Host names only once validated, install ids only in their 32-hex shape, addresses only as
//! parsed addresses, route names instead of request paths, token *names* instead of tokens: no
//! request text reaches a record unparsed, so no secret can, and every record is a few hundred
//! bytes whatever the request held. Writing them is [`crate::serve::store::audit`]'s job.

use crate::inventory::{Mac, SystemUuid};
use crate::serve::domain::actor::Actor;
use crate::serve::domain::actor::Role;
use crate::serve::domain::actor::Via;
use serde::Serialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

/// One audit record. Field types are what bounds them: see the module documentation.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A `/boot` answer. `host` is the validated name asked for; `verified` says whether the
    /// request proved to be that inventory host's (token and MAC), the only kind that may
    /// update what the operator sees as its last boot.
    Boot {
        host: Option<String>,
        verified: bool,
        answer: &'static str,
        kind: &'static str,
        reason: &'static str,
        install: Option<String>,
        peer: IpAddr,
        ip: Option<Ipv4Addr>,
        mac: Option<Mac>,
        medium: &'static str,
        platform: &'static str,
        /// A `uuid-mismatch` refusal only: the SMBIOS UUID sent (canonical when it parsed, else
        /// the text quoted and cut to 64 characters; `(none sent)`) and the inventory's.
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_uuid: Option<SystemUuid>,
    },
    FlagSet {
        host: String,
        profile: String,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        changed: bool,
        install: String,
        /// Set by `POST /hosts/{host}/retry`: a new install of a failed or stalled one.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
        /// A retry's: the install it replaced.
        #[serde(skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
        /// A retry's: why that install was retried, `failed` or `stalled`.
        #[serde(skip_serializing_if = "Option::is_none")]
        why: Option<&'static str>,
    },
    FlagCancelled {
        host: String,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        outcome: &'static str,
        install: Option<String>,
    },
    /// A standing flag ended because its host left the inventory.
    FlagOrphaned { host: String, install: String },
    /// The installer's `done`. `profile` and `duration_ms` (first answer, or the flag when
    /// nothing was answered, to this callback) are what `/fleet/stats` reads, so figures need
    /// only these records.
    Done {
        host: String,
        install: String,
        peer: IpAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// The installer reported that it runs (`/hosts/{host}/started`).
    Started { host: String, install: String, peer: IpAddr },
    /// The installer reported a failure; `reason` is its text cleaned by
    /// [`crate::serve::domain::lifecycle::failure_reason`] (one printable line, bounded).
    Failed {
        host: String,
        install: String,
        peer: IpAddr,
        reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// A callback for an install that is not open (late, replayed, cancelled): nothing changed.
    CallbackIgnored { host: String, callback: &'static str, install: Option<String>, peer: IpAddr },
    /// A callback or config request without a valid node token.
    /// `host` only when it is an inventory host: invented names are not recorded.
    NodeTokenDenied { host: Option<String>, route: &'static str, peer: IpAddr },
    /// A rendered config file served to its node, recorded once its body was sent (or cut):
    /// `status`, `bytes` sent, `fetch_ms` from the handler's start to the body's end. `file` is one of
    /// the profile's config file names (checked before serving), `install` the install it was
    /// rendered for.
    Config {
        host: String,
        file: String,
        profile: String,
        peer: IpAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        install: Option<String>,
        #[serde(flatten)]
        fetch: Fetch,
    },
    /// A file of `--assets` fetched by an inventory host, recorded once its body was sent (or
    /// cut). Only attributed fetches are recorded: by the node's token in the URL
    /// (`attributed: token`) or by the peer address being the host's static `ip` (`address`).
    /// `file` is the path under `--assets`, cut to [`MAX_FILE_CHARS`] characters.
    Asset {
        host: String,
        file: String,
        peer: IpAddr,
        #[serde(flatten)]
        fetch: Fetch,
    },
    /// A `/media/` URL refused: unsigned, expired or altered. `host` only for inventory hosts;
    /// the signature itself is never recorded.
    MediaDenied { host: Option<String>, format: &'static str, reason: &'static str, peer: IpAddr },
    /// A medium read from its start (a BMC mounting it, a download).
    MediaServed { host: String, format: &'static str, peer: IpAddr, status: u16 },
    /// A signed media URL handed out; `expires` in seconds since 1970.
    MediaUrl {
        host: String,
        format: &'static str,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        expires: u64,
    },
    /// A BMC told to mount (`attach`) or eject (`detach`) the host's medium, and whether it did.
    BmcMedia {
        host: String,
        action: &'static str,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        ok: bool,
        boot: Option<&'static str>,
        reset: bool,
        /// For an `https://` image: whether the BMC trusts the service's CA (`enrolled`,
        /// `present`, `unsupported`: see [`crate::redfish::TrustReport::status`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        media_ca: Option<&'static str>,
    },
    /// A BMC made to trust the service's CA for its virtual CD's `https://` image (during an
    /// attach, before the insert, so written even if the attach fails later): the SHA-256 of
    /// each CA certificate, how many the BMC did not hold before, and whether its
    /// `VerifyCertificate` was switched on.
    BmcTrust {
        host: String,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        certificates: Vec<String>,
        added: usize,
        verify_set: bool,
    },
    /// A power action sent to a host's BMC (`POST /hosts/{host}/power`): `action` is one of
    /// `on`, `off`, `force-off`, `restart`, `force-restart`; `reset_type` the Redfish
    /// `ResetType` sent (absent when none was); `error` a short kind (`timeout`, `unreachable`,
    /// `auth`, `not-allowed`, …), never the BMC's own text.
    BmcPower {
        host: String,
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        action: &'static str,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reset_type: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'static str>,
    },
    /// An API request refused for its API token.
    Denied { route: &'static str, peer: IpAddr, status: u16, reason: &'static str },
    Reload {
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
        ok: bool,
    },
    /// A console login. `name` is the token's name or the directory login name.
    Login { name: String, role: Role, via: Via, peer: IpAddr },
    /// A refused console login, never with the password or token. `name` is the directory
    /// login name asked for, only when it has the shape of one (see `session::login_name`).
    LoginFailed { name: Option<String>, via: Via, peer: IpAddr, reason: &'static str },
    Logout {
        #[serde(flatten)]
        who: Actor,
        peer: IpAddr,
    },
    /// Directory sessions of the account `name` (its canonical name, checked by
    /// `ldap::recordable_name`) ended: by an admin (`reason` `admin`, with who and from where),
    /// or because a re-check found the account gone, disabled or out of the mapped groups
    /// (`recheck`).
    SessionsEnded {
        name: String,
        ended: usize,
        reason: &'static str,
        #[serde(flatten)]
        who: Option<Actor>,
        peer: Option<IpAddr>,
    },
    /// The inventory replaced from the console, by `bootforge discover --apply` or by `bootforge
    /// inventory import`: `action` is `add`, `change`, `remove`, `upload`, `discover` or `import`; `host` the row's host name; `old_host`
    /// (changes that rename the row only) the name it had; `nodes` the number of rows after the
    /// change; `version` the database inventory's version after it (`serve` without
    /// `--inventory`; absent for the file). `peer` is `null` for a command run on a machine
    /// (`via: cli`). No field value of a row is recorded: a free column may hold anything.
    InventoryChanged {
        #[serde(flatten)]
        who: Actor,
        peer: Option<IpAddr>,
        action: &'static str,
        host: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_host: Option<String>,
        /// `discover` only: the rows it changed (validated host names).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<String>,
        nodes: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// A change whose audit record was written but whose state write failed afterwards.
    ChangeNotApplied { host: String, after: &'static str },
    /// Refusals of one kind, peer, route and reason that were counted but not written one by
    /// one (see the module documentation). `refused` is their record kind (`denied`,
    /// `media-denied`, …); `peer` is `None` for refusals of peers beyond the
    /// [`MAX_REFUSAL_KEYS`](crate::serve::store::refusals::MAX_REFUSAL_KEYS) tracked at once. `count` is the number of refusals not written one
    /// by one; `first_ms` is when the window opened (the refusal written in full, if any) and
    /// `last_ms` when the last one counted was made.
    ///
    /// `peer` is an IPv4 address or, for IPv6, the first address of the /64 the refusals came
    /// from. `route` and `reason` are `null` in the summary of a peer that opened more than
    /// [`MAX_KEYS_PER_PEER`](crate::serve::store::refusals::MAX_KEYS_PER_PEER) keys (its further refusals of that kind, whatever route or reason);
    /// `host` is the inventory host asked for (boot, node-token and media refusals). The
    /// summary without a peer lists in `top_peers` (at most [`TOP_PEERS`](crate::serve::store::refusals::TOP_PEERS)) the peers that
    /// refused most in it, with their counts (space-saving counts: each is at most the smallest
    /// listed count too high).
    RefusedSummary {
        refused: &'static str,
        peer: Option<IpAddr>,
        route: Option<&'static str>,
        reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        count: u64,
        first_ms: u64,
        last_ms: u64,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        top_peers: Vec<PeerCount>,
    },
}

/// How a file fetch went, measured when its body was sent or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fetch {
    pub status: u16,
    /// Body bytes sent (fewer than the file's length when the client went away).
    pub bytes: u64,
    /// Whether every byte of the body was sent.
    pub complete: bool,
    /// From the handler's start (the request read) to the body's end, in milliseconds.
    pub fetch_ms: u64,
    /// How the fetch was tied to its host: `token` (its node token), `address` (the peer is
    /// its row's static `ip`), or `path` (a config fetch of a service without node tokens).
    pub attributed: &'static str,
}

/// The longest asset path recorded, in characters (paths are validated by the route first).
pub const MAX_FILE_CHARS: usize = 200;

/// An asset path as recorded: at most [`MAX_FILE_CHARS`] characters, with an ellipsis when cut,
/// and every control or bidirectional-formatting character as `?`. The route lets such
/// characters through (a file may be named so), but a record read in a terminal or the console
/// must not be able to move the cursor or reverse the text around it.
pub fn recorded_file(path: &str) -> String {
    let shown = |c: char| {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            '?'
        } else {
            c
        }
    };
    let mut out: String = path.chars().take(MAX_FILE_CHARS).map(shown).collect();
    if path.chars().nth(MAX_FILE_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod recorded_file_tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_not_recorded_and_length_is_bounded() {
        assert_eq!(recorded_file("debian/linux"), "debian/linux");
        assert_eq!(recorded_file("a\u{1b}[2Jb\nc\u{202e}d\u{2066}"), "a?[2Jb?c?d?");
        let long = "x".repeat(MAX_FILE_CHARS + 5);
        let cut = recorded_file(&long);
        assert_eq!(cut.chars().count(), MAX_FILE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(recorded_file(&"y".repeat(MAX_FILE_CHARS)).chars().count(), MAX_FILE_CHARS);
    }
}

/// A peer and the refusals counted for it, in a peerless [`Event::RefusedSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerCount {
    pub peer: IpAddr,
    pub count: u64,
}

/// What refusals are aggregated by: their record kind, peer (see [`refusal_peer`]; `None`: the
/// overflow of peers beyond [`MAX_REFUSAL_KEYS`](crate::serve::store::refusals::MAX_REFUSAL_KEYS)), route, reason and, for refusals that name an
/// inventory host, that host. `route`/`reason` are `None` in the key of a peer past its
/// [`MAX_KEYS_PER_PEER`](crate::serve::store::refusals::MAX_KEYS_PER_PEER).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refusal {
    pub refused: &'static str,
    pub peer: Option<IpAddr>,
    pub route: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub host: Option<String>,
}

/// The `kind` of a boot record whose host is not in the inventory (its `host` is the name asked
/// for, so not bounded by the inventory).
pub const UNKNOWN_HOST: &str = "unknown-host";

/// The address refusals are counted under: an IPv4 address as it is (an IPv4-mapped IPv6 one
/// as IPv4), an IPv6 address as the first address of its /64. One site holds a whole /64, so
/// keying each of its 2^64 addresses apart would let one client open every key.
pub fn refusal_peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
        v4 => v4,
    }
}

/// Record kinds kept for the shorter retention period (`--keep-boot-records`): the high-volume
/// records of boots and of what anyone can cause (boot answers, config and media fetches,
/// refusals and their summaries). Every other kind is a change or an operator's action, kept
/// for `--keep-change-records`. (Tested against every kind in the store's retention test.)
pub const BOOT_RECORD_KINDS: &[&str] = &[
    "boot",
    "config",
    "asset",
    "media-served",
    "media-denied",
    "node-token-denied",
    "denied",
    "login-failed",
    "refused-summary",
];

impl Event {
    /// The aggregation key of a refusal: a record a client without credentials can cause at
    /// will. `None` for every other record (those are written one by one, as they are bounded
    /// by what credentials or inventory hosts allow).
    ///
    /// Host names are part of the key where the record names one (they are recorded only once
    /// validated against the inventory, so their number is bounded by it), so probes of two
    /// hosts from one peer are each written in full. Login names are not (anyone can type any).
    pub fn refusal(&self) -> Option<Refusal> {
        let (refused, peer, route, reason, host) = match self {
            // An `unknown-host` boot names a host the client made up (valid in shape, not in
            // the inventory): never a key, or one client could open a key per name.
            Event::Boot { verified: false, kind, peer, host, .. } => {
                let host = if *kind == UNKNOWN_HOST { &None } else { host };
                ("boot", *peer, "/boot/{host}", *kind, host)
            }
            Event::NodeTokenDenied { route, peer, host } => {
                ("node-token-denied", *peer, *route, "node-token", host)
            }
            Event::MediaDenied { reason, peer, host, .. } => {
                ("media-denied", *peer, "/media/{file}", *reason, host)
            }
            Event::Denied { route, peer, reason, .. } => ("denied", *peer, *route, *reason, &None),
            Event::LoginFailed { peer, reason, .. } => {
                ("login-failed", *peer, "/session", *reason, &None)
            }
            _ => return None,
        };
        Some(Refusal {
            refused,
            peer: Some(refusal_peer(peer)),
            route: Some(route),
            reason: Some(reason),
            host: host.clone(),
        })
    }
}

/// The `event` tag of [`Event::LoginFailed`] records, as they are read back (a unit test holds
/// it to the enum's serialization).
pub const LOGIN_FAILED: &str = "login-failed";

/// What a caller of `role` may see of a record read back, changed in place.
///
/// A refused login's `name` is whatever was typed in the name field, and people type passwords
/// there: only `admin` sees it; for other roles the field is removed *before* filters look at
/// the record, so a `by=` filter cannot probe for it either.
pub fn visible_to(role: Role, record: &mut Value) {
    if role >= Role::Admin {
        return;
    }
    if let Value::Object(o) = record {
        if o.get("event").and_then(Value::as_str) == Some(LOGIN_FAILED) {
            o.remove("name");
        }
    }
}
