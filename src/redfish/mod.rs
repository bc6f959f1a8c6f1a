//! Redfish: tell a node's BMC to mount a boot image URL as its virtual CD, and to boot from it.
//!
//! The boot service serves every node's ISO at a signed, expiring URL; this module is the other
//! half of "media by URL": one call makes the node's BMC fetch that URL as a virtual CD, set the
//! next boot (or every boot) to the CD, and optionally reset the machine. It is blocking (on
//! `ureq`), so the service calls it from its blocking pool; one [`Client`] serves every BMC and
//! every thread.
//!
//! ```text
//! inventory `bmc` column ─┐
//! --bmc-credentials FILE ─┴▶ BmcTarget ─▶ Client::attach(target, image URL, BootMode, reset)
//!                                           │ 1. find the System and its virtual CD
//!                                           │ 2. eject what is mounted, (https, with a CA:
//!                                           │    enroll it, verify on), insert the URL
//!                                           │ 3. PATCH Boot: Cd, Once or Continuous
//!                                           └ 4. ComputerSystem.Reset (optional)
//! ```
//!
//! # Finding the System and its virtual CD
//!
//! The inventory's `bmc` value ([`BmcUrl`]) is either the BMC's Redfish root
//! (`https://10.1.0.11`) or a System URL (`https://10.1.0.11/redfish/v1/Systems/1`). With a root,
//! the client reads `/redfish/v1`, then its `Systems` collection, and uses the only member; with
//! none or several (blade chassis, multi-node enclosures) it fails and asks for the System URL.
//!
//! Virtual media hang under the System (`/Systems/ID/VirtualMedia`, newer BMCs and
//! sushy-tools) or under its Manager (`Links.ManagedBy` → Manager → `VirtualMedia`: iDRAC, iLO,
//! most older firmware). The client looks under the System first, then under each manager, and
//! takes the first device whose `MediaTypes` holds `CD` or `DVD`; a device that lists no media
//! types but whose `Id` says CD is taken as a last resort (some older firmware).
//!
//! # What attach does
//!
//! 1. **Eject** whatever the CD holds (when `Inserted` is true or `Image` is set), with the
//!    device's `#VirtualMedia.EjectMedia` action, else by PATCHing `Image: null, Inserted:
//!    false`.
//! 2. **Trust** (an `https://` URL, and a CA given, [`MediaCa`]: `serve --tls-ca`): the CA
//!    certificates are added to the virtual CD's `Certificates` collection unless it already
//!    holds them (compared by DER), and `VerifyCertificate` is set to true, so the BMC checks
//!    the service's certificate when it fetches the image. A device without the collection is
//!    left as it is, with a note in the report. See `trust.rs` for the rules.
//! 3. **Insert** the URL with `#VirtualMedia.InsertMedia` (`Image`, `Inserted: true`,
//!    `WriteProtected: true`), else by PATCHing those properties (BMCs without the action).
//!    When the action has `@Redfish.ActionInfo`, it is fetched and only the parameters it lists
//!    are sent (some BMCs refuse unknown ones), and a `TransferProtocolType` it requires is set
//!    from the URL's scheme.
//! 4. **Boot override**: for [`BootMode::Once`] and [`BootMode::Continuous`], PATCH the System's
//!    `Boot` with `BootSourceOverrideTarget: "Cd"` and `BootSourceOverrideEnabled`. A target or
//!    mode missing from the BMC's `@Redfish.AllowableValues` fails with the allowed list.
//!    [`BootMode::None`] leaves `Boot` untouched: for machines whose boot order already starts
//!    with the virtual CD (the way bootforge media are meant to stay attached).
//! 5. **Reset**, when asked, with the System's `#ComputerSystem.Reset`: `On` (else `ForceOn`,
//!    `PowerCycle`) when the System is off, else `ForceRestart` (else `PowerCycle`,
//!    `GracefulRestart`), each only if the BMC allows it (`ResetType@Redfish.AllowableValues`
//!    or the action's ActionInfo); none allowed fails with the allowed list.
//!
//! Action URLs are always the `target` the resource gives, never built by hand. Detach ejects,
//! then disables the boot override if it still points at the CD (an override to something else
//! was not ours, and stays). That PATCH carries `BootSourceOverrideEnabled: "Disabled"` with a
//! target, since some BMCs (sushy-tools among them) refuse a Boot PATCH without one: `None`
//! where the BMC allows it or lists nothing, else `Hdd`.
//!
//! # Slow and quirky BMCs
//!
//! * Every request has a connect timeout and an overall timeout ([`ClientOptions`]), and a whole
//!   operation may have a deadline ([`Progress`]): no request or retry starts after it, a
//!   request in flight is given only the time left, and the operation fails with
//!   [`RedfishError::Deadline`], naming the step it had reached, so a caller can say what may
//!   be half done.
//! * Connection errors, timeouts and 5xx answers are retried with exponential backoff and
//!   jitter, honouring `Retry-After`; 4xx answers are not (they will not change). A reset is
//!   retried only when it certainly did not run (connection refused, 503, 429), so a machine is
//!   never reset twice.
//! * A `202 Accepted` starts a task: its monitor (`Location`) is polled until the task ends or
//!   [`ClientOptions::task_deadline`] passes; a task ending in `Exception` (or `Killed`,
//!   `Cancelled`) fails with its messages.
//! * A PATCH carries `If-Match` with the resource's `ETag` when it gave one; a `412` (someone
//!   changed it meanwhile) is answered by reading it again and retrying once.
//! * Redirects are followed only within the BMC's origin, by the client itself (a POST is
//!   never turned into a GET), so credentials never leave for another host.
//!
//! # TLS and credentials
//!
//! Certificates are verified by default, against the Mozilla roots plus the CA given with
//! [`ClientOptions::ca_file`] (`--bmc-ca FILE`, PEM). A host can be exempted with the
//! `insecure-tls` option of its credentials-file line ([`TlsPolicy::Insecure`]): the
//! connection is still encrypted, but anyone on the path can read the password. Plain
//! `http://` BMC URLs are refused unless the credentials line says `allow-http`
//! ([`BmcTarget::allow_http`]; for emulators): a client refuses such a target before sending
//! anything, so no `Authorization` header ever leaves in clear text by accident. When allowed,
//! each operation logs a warning that the password crosses the network readable.
//!
//! The password is sent only as HTTP Basic authentication to the BMC's own origin. It never
//! appears in an error, a log line or `Debug` output: [`Password`] redacts itself, and the
//! request state holding the header has no `Debug`. A 401 says which user was refused and which
//! credentials-file line it came from.
//!
//! # Untrusted text
//!
//! Everything the BMC says is untrusted: its messages (`error.@Message.ExtendedInfo[].Message`,
//! else `error.message`) and the values [`Client::status`] reports are stripped of control and
//! bidirectional-formatting characters and bounded in length ([`untrusted`]) before they reach
//! an error, a log or JSON.

mod client;
pub mod credentials;
mod nics;
mod power;
mod tls;
mod transport;
mod trust;

pub use crate::inventory::BmcUrl;
pub use client::Client;
pub use credentials::{CredentialsError, CredentialsFile, TargetError};
pub use nics::{NicReport, SystemNics, MAX_INTERFACES};
pub use power::{BootEnabled, HardwareState, Health, Power, PowerAction};
pub use trust::{Enroll, MediaCa};

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One BMC to act on: where, as whom, and how to trust its certificate.
#[derive(Debug, Clone)]
pub struct BmcTarget {
    pub url: BmcUrl,
    pub credentials: Credentials,
    pub tls: TlsPolicy,
    /// Whether the password may go to an `http://` URL (the `allow-http` credentials option).
    /// Without it, every operation on an `http://` target fails before any request.
    pub allow_http: bool,
}

/// A Redfish user and its password. `Debug` shows the user, never the password.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Password,
    /// Where these came from (`FILE:LINE`), for messages.
    pub source: Option<String>,
}

/// A password that does not show itself: `Debug` prints `<redacted>`, and there is no
/// `Display`. [`Password::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    /// The password itself, for the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Whether a BMC's TLS certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// Verify the chain (Mozilla roots plus `--bmc-ca`) and the host name or IP address.
    #[default]
    Verify,
    /// Accept any certificate (the `insecure-tls` credentials option). Still encrypted, but not
    /// authenticated.
    Insecure,
}

/// What [`Client::attach`] does to the System's boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Boot from the CD at every boot until detached.
    Continuous,
    /// Boot from the CD at the next boot only; the BMC clears the override after it.
    Once,
    /// Leave the boot override as it is; only mount the medium.
    None,
}

impl BootMode {
    /// The `BootSourceOverrideEnabled` value, or `None` for [`BootMode::None`].
    fn enabled(self) -> Option<&'static str> {
        match self {
            BootMode::Continuous => Some("Continuous"),
            BootMode::Once => Some("Once"),
            BootMode::None => None,
        }
    }
}

impl std::str::FromStr for BootMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "continuous" => Ok(BootMode::Continuous),
            "once" => Ok(BootMode::Once),
            "none" => Ok(BootMode::None),
            _ => Err(format!(
                "{:?} is not a boot mode; expected continuous, once or none",
                untrusted(text, 40)
            )),
        }
    }
}

/// How a [`Client`] talks to BMCs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time to establish a TCP connection (and TLS) to a BMC.
    pub connect_timeout: Duration,
    /// Time for one whole request, from connecting to the last byte of the answer. BMCs are
    /// slow: a virtual-media insert can take many seconds while the BMC probes the URL.
    pub timeout: Duration,
    /// Retries after a retryable failure (so `retries + 1` attempts at most).
    pub retries: u32,
    /// First pause between attempts; it doubles with each retry, up to 10 s.
    pub backoff: Duration,
    /// How long a Redfish task (202 + monitor) may run before the operation fails.
    pub task_deadline: Duration,
    /// Pause between polls of a task monitor that gives no `Retry-After`.
    pub task_poll: Duration,
    /// A PEM file of extra CA certificates to trust for BMCs (`--bmc-ca`).
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_millis(500),
            task_deadline: Duration::from_secs(300),
            task_poll: Duration::from_secs(1),
            ca_file: None,
        }
    }
}

/// What [`Client::attach`] did.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// The System acted on.
    pub system: String,
    /// The virtual CD resource used.
    pub media: String,
    /// The image that was ejected first, if one was mounted.
    pub ejected: Option<String>,
    /// `InsertMedia` (the action) or `PATCH` (BMCs without it).
    pub inserted_by: &'static str,
    /// The `BootSourceOverrideEnabled` set with target `Cd`; `None` when left untouched.
    pub boot_override: Option<&'static str>,
    /// The `ResetType` sent, if a reset was asked for.
    pub reset: Option<String>,
    /// The virtual CD as read back afterwards.
    pub media_after: MediaView,
    /// What was done so that the BMC trusts an `https://` image's certificate; `None` for an
    /// `http://` image or when no CA was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_ca: Option<TrustReport>,
    /// Time the whole operation took.
    pub elapsed_ms: u64,
}

/// What attach found and did so that a virtual CD trusts the CA of an `https://` image
/// (`trust.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct TrustReport {
    /// `enrolled` (at least one certificate added), `present` (all were there already) or
    /// `unsupported` (the device has no Certificates collection; nothing was changed).
    pub status: &'static str,
    /// The SHA-256 of each CA certificate (hex).
    pub fingerprints: Vec<String>,
    /// The Certificate resources that hold them, added or found.
    pub certificates: Vec<String>,
    /// How many were added by this call.
    pub added: usize,
    /// Whether this call switched `VerifyCertificate` on.
    pub verify_set: bool,
    /// `VerifyCertificate` as the device reports it afterwards (`None`: it does not say).
    pub verify: Option<bool>,
    /// Why nothing was done, or what the operator should know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TrustReport {
    /// Whether the BMC's trust was changed (a certificate added or verification turned on).
    pub fn changed(&self) -> bool {
        self.added > 0 || self.verify_set
    }

    /// Whether the BMC will check the image's certificate against the enrolled CA.
    pub fn verifying(&self) -> bool {
        self.status != "unsupported" && self.verify == Some(true)
    }
}

/// What [`Client::detach`] did.
#[derive(Debug, Clone, Serialize)]
pub struct DetachReport {
    pub system: String,
    pub media: String,
    /// The image that was ejected; `None` when the CD was already empty.
    pub ejected: Option<String>,
    /// Whether a boot override to the CD was disabled.
    pub override_disabled: bool,
    pub elapsed_ms: u64,
}

/// What a BMC says about a System and its virtual CD ([`Client::status`]). Every text comes from
/// the BMC and has passed through [`untrusted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BmcView {
    /// The System's URL.
    pub system: String,
    /// `On`, `Off`, `PoweringOn`, …
    pub power_state: Option<String>,
    pub boot: BootView,
    pub media: MediaView,
}

/// The System's boot override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootView {
    /// `BootSourceOverrideTarget`: `Cd`, `Hdd`, `Pxe`, `None`, …
    pub target: Option<String>,
    /// `BootSourceOverrideEnabled`: `Once`, `Continuous`, `Disabled`.
    pub enabled: Option<String>,
    /// `BootSourceOverrideMode`: `UEFI` or `Legacy`.
    pub mode: Option<String>,
}

/// A virtual CD device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaView {
    /// The VirtualMedia resource's URL.
    pub resource: String,
    /// The mounted image's URL, `None` when empty.
    pub image: Option<String>,
    pub inserted: Option<bool>,
    pub write_protected: Option<bool>,
}

/// Why a Redfish operation failed. Each message names the BMC URL involved and, where the BMC
/// gave one, its own message (made safe with [`untrusted`]); none holds a password.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    /// No HTTP answer after every attempt: refused, unreachable, timed out.
    #[error("cannot reach the BMC at {url} ({attempts} attempt{}): {message}", if *.attempts == 1 { "" } else { "s" })]
    Unreachable { url: String, attempts: u32, message: String },
    /// The TLS handshake failed, usually an untrusted certificate.
    #[error("TLS with the BMC at {url} failed: {message}; if the BMC's certificate comes from a private CA, give the CA with --bmc-ca FILE, or mark the host `insecure-tls` in the credentials file")]
    Tls { url: String, message: String },
    /// 401: the BMC refused the user and password.
    #[error("the BMC at {url} refused the credentials of user {user:?} (HTTP 401 Unauthorized); check the user and password from {from}")]
    Unauthorized { url: String, user: String, from: String },
    /// Any other unsuccessful answer.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status { method: String, url: String, status: u16, message: String },
    /// The BMC manages several Systems and the inventory gave its root.
    #[error("the BMC at {url} manages {count} systems ({members}); give the full System URL in the inventory's bmc column, such as {example}")]
    AmbiguousSystem { url: String, count: usize, members: String, example: String },
    /// The BMC lacks something attach needs (no virtual CD, `Cd` not an allowed boot target, …).
    #[error("the BMC at {url} cannot do this: {message}")]
    Unsupported { url: String, message: String },
    /// An answer that is not what Redfish promises.
    #[error("the BMC at {url} answered unexpectedly: {message}")]
    Protocol { url: String, message: String },
    /// Inserting an `https://` image failed after the virtual CD was set to verify it against
    /// the CA enrolled from `ca` (`--tls-ca FILE`): most often that CA did not issue the service's
    /// certificate, or the certificate does not name the URL's host.
    #[error("{error}; the BMC checks the image's https certificate against the CA it was given from {ca} (VerifyCertificate is on): if that CA did not issue the service's certificate (--tls-cert), or the certificate does not name the host of the media URL, the BMC cannot fetch the image; give --tls-ca the CA that issued --tls-cert")]
    UntrustedImage { error: Box<RedfishError>, ca: String },
    /// A task ended badly.
    #[error("{what}: the BMC's task {url} ended {state}: {message}")]
    TaskFailed { what: String, url: String, state: String, message: String },
    /// A task outlived [`ClientOptions::task_deadline`].
    #[error("{what}: the BMC's task {url} was still running after {waited:?}")]
    TaskTimeout { what: String, url: String, waited: Duration },
    /// The operation's deadline ([`Progress`]) passed; `step` is the one it had reached, and
    /// what it names may be half done.
    #[error("the BMC at {url} did not finish within {limit:?}: the deadline passed while {step}")]
    Deadline { url: String, step: &'static str, limit: Duration },
    /// The caller's input is unusable (an image URL that is not http(s)).
    #[error("{0}")]
    Invalid(String),
}

/// One operation's deadline and the step it has reached, shared by the thread doing it and
/// the caller waiting for it (who may answer before the thread ends, and can then still say
/// how far it got).
#[derive(Debug)]
pub struct Progress {
    /// When the operation must be over, and how long it was given; `None`: no deadline.
    deadline: Option<(Instant, Duration)>,
    step: std::sync::Mutex<&'static str>,
}

impl Progress {
    /// An operation that must be over within `limit` from now.
    pub fn within(limit: Duration) -> Progress {
        Progress {
            deadline: Some((Instant::now() + limit, limit)),
            step: std::sync::Mutex::new("starting"),
        }
    }

    /// An operation without a deadline of its own (each request still has its timeouts).
    pub fn unbounded() -> Progress {
        Progress { deadline: None, step: std::sync::Mutex::new("starting") }
    }

    /// The step reached, as words that follow "while" (`inserting the image`).
    pub fn step(&self) -> &'static str {
        *self.step.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time the operation was given, if it has a deadline.
    pub fn limit(&self) -> Option<Duration> {
        self.deadline.map(|(_, limit)| limit)
    }

    /// Time left before the deadline (`None`: no deadline).
    pub(crate) fn left(&self) -> Option<Duration> {
        self.deadline.map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    /// Starts `step`: recorded, then refused if the deadline has passed.
    fn enter(&self, url: &BmcUrl, step: &'static str) -> Result<(), RedfishError> {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = step;
        self.check(&url.to_string())
    }

    /// [`RedfishError::Deadline`] if the deadline has passed.
    pub(crate) fn check(&self, url: &str) -> Result<(), RedfishError> {
        match self.deadline {
            Some((at, limit)) if Instant::now() >= at => {
                Err(RedfishError::Deadline { url: url.to_string(), step: self.step(), limit })
            }
            _ => Ok(()),
        }
    }
}

/// Makes text from a BMC (or any untrusted source) safe for logs, errors and JSON: control
/// characters and bidirectional or zero-width formatting characters are dropped, runs of
/// whitespace become one space, and the result is cut to `max` characters (ending in `…` when
/// cut).
pub fn untrusted(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        let formatting = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || formatting {
            continue;
        }
        if count + usize::from(space) + 1 > max.saturating_sub(1) {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}
