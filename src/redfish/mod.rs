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
//!                                           │ 2. eject what is mounted, insert the URL
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
//! 2. **Insert** the URL with `#VirtualMedia.InsertMedia` (`Image`, `Inserted: true`,
//!    `WriteProtected: true`), else by PATCHing those properties (BMCs without the action).
//!    When the action has `@Redfish.ActionInfo`, it is fetched and only the parameters it lists
//!    are sent (some BMCs refuse unknown ones), and a `TransferProtocolType` it requires is set
//!    from the URL's scheme.
//! 3. **Boot override**: for [`BootMode::Once`] and [`BootMode::Continuous`], PATCH the System's
//!    `Boot` with `BootSourceOverrideTarget: "Cd"` and `BootSourceOverrideEnabled`. A target or
//!    mode missing from the BMC's `@Redfish.AllowableValues` fails with the allowed list.
//!    [`BootMode::None`] leaves `Boot` untouched: for machines whose boot order already starts
//!    with the virtual CD (the way bootforge media are meant to stay attached).
//! 4. **Reset**, when asked, with the System's `#ComputerSystem.Reset`: `On` (else `ForceOn`,
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

pub mod credentials;
mod tls;
mod transport;

pub use crate::inventory::BmcUrl;
pub use credentials::{CredentialsError, CredentialsFile, TargetError};

use serde::Serialize;
use serde_json::{json, Value};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use transport::{Retry, Session};

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

/// A Redfish client for any number of BMCs, shared by all threads (`Send + Sync`; cloning is
/// cheap). It holds two connection pools: one that verifies certificates and one for hosts
/// marked `insecure-tls`.
#[derive(Clone)]
pub struct Client {
    verified: ureq::Agent,
    insecure: ureq::Agent,
    opts: ClientOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("opts", &self.opts).finish_non_exhaustive()
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
    /// Time the whole operation took.
    pub elapsed_ms: u64,
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

impl Client {
    /// A client with these options; fails if the CA file cannot be read or holds no
    /// certificate (the message names the file).
    pub fn new(opts: ClientOptions) -> anyhow::Result<Client> {
        let (verified, insecure) = tls::configs(opts.ca_file.as_deref())?;
        let agent = |config| {
            ureq::AgentBuilder::new()
                .timeout_connect(opts.connect_timeout)
                .timeout(opts.timeout)
                // Redirects are followed by the transport, within the BMC's origin only.
                .redirects(0)
                .user_agent(concat!("bootforge/", env!("CARGO_PKG_VERSION")))
                .tls_config(config)
                .build()
        };
        Ok(Client { verified: agent(verified), insecure: agent(insecure), opts })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The requests of one operation on `target`; refused, before anything is sent, for an
    /// `http://` target whose credentials do not allow it.
    fn session<'a>(
        &'a self,
        target: &'a BmcTarget,
        progress: &'a Progress,
    ) -> Result<Session<'a>, RedfishError> {
        if !target.url.is_https() && !target.allow_http {
            return Err(RedfishError::Invalid(format!(
                "the BMC URL {} is plain http://, and its credentials{} do not allow sending \
                 the password in clear text; use https://, or add `allow-http` to the line",
                target.url,
                target.credentials.source.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
            )));
        }
        if !target.url.is_https() {
            tracing::warn!(
                bmc = %target.url,
                "talking to a BMC over http://: its password crosses the network in clear text"
            );
        }
        let agent = match target.tls {
            TlsPolicy::Verify => &self.verified,
            TlsPolicy::Insecure => &self.insecure,
        };
        Ok(Session::new(agent, &self.opts, target, progress))
    }

    /// Mounts `image_url` as the System's virtual CD (ejecting what was there), sets the boot
    /// override per `boot`, and with `reset` resets the System. See the module docs for each
    /// step and the BMC quirks handled.
    pub fn attach(
        &self,
        target: &BmcTarget,
        image_url: &str,
        boot: BootMode,
        reset: bool,
    ) -> Result<AttachReport, RedfishError> {
        self.attach_within(target, image_url, boot, reset, &Progress::unbounded())
    }

    /// [`Client::attach`] within `progress`'s deadline, recording each step in it.
    pub fn attach_within(
        &self,
        target: &BmcTarget,
        image_url: &str,
        boot: BootMode,
        reset: bool,
        progress: &Progress,
    ) -> Result<AttachReport, RedfishError> {
        let started = Instant::now();
        check_image_url(image_url)?;
        let url = &target.url;
        let s = self.session(target, progress)?;
        progress.enter(url, "finding the system")?;
        let system = find_system(&s)?;
        let system_url = system.url.clone();
        progress.enter(url, "finding the virtual CD")?;
        let media = find_cd(&s, &system)?;
        progress.enter(url, "ejecting the medium mounted before")?;
        let ejected = eject(&s, &media)?;
        let media = if ejected.is_some() { media.reload(&s)? } else { media };
        progress.enter(url, "inserting the image")?;
        let inserted_by = insert(&s, &media, image_url)?;
        progress.enter(url, "reading the virtual CD back after inserting the image")?;
        let media_after = media.reload(&s)?;
        let after = media_after.view();
        if after.image.is_none() && after.inserted != Some(true) {
            return Err(RedfishError::Protocol {
                url: media.url.clone(),
                message: format!(
                    "the BMC accepted the image but its virtual CD reads back empty after {inserted_by}"
                ),
            });
        }
        let mut system = system;
        if let Some(enabled) = boot.enabled() {
            progress.enter(url, "setting the boot override (the image is inserted)")?;
            system = set_boot(&s, system, "Cd", enabled)?;
        }
        let reset = if reset {
            progress.enter(url, "resetting the system (the image is inserted, boot set)")?;
            Some(reset_system(&s, system)?)
        } else {
            None
        };
        Ok(AttachReport {
            system: system_url,
            media: media.url.clone(),
            ejected,
            inserted_by,
            boot_override: boot.enabled(),
            reset,
            media_after: after,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Ejects the System's virtual CD and disables the boot override if it points at the CD.
    pub fn detach(&self, target: &BmcTarget) -> Result<DetachReport, RedfishError> {
        self.detach_within(target, &Progress::unbounded())
    }

    /// [`Client::detach`] within `progress`'s deadline, recording each step in it.
    pub fn detach_within(
        &self,
        target: &BmcTarget,
        progress: &Progress,
    ) -> Result<DetachReport, RedfishError> {
        let started = Instant::now();
        let url = &target.url;
        let s = self.session(target, progress)?;
        progress.enter(url, "finding the system")?;
        let system = find_system(&s)?;
        progress.enter(url, "finding the virtual CD")?;
        let media = find_cd(&s, &system)?;
        progress.enter(url, "ejecting the medium")?;
        let ejected = eject(&s, &media)?;
        progress.enter(url, "reading the boot override (the medium is ejected)")?;
        let system = system.reload(&s)?;
        let boot = &system.body["Boot"];
        let override_disabled = boot["BootSourceOverrideTarget"].as_str() == Some("Cd")
            && boot["BootSourceOverrideEnabled"].as_str() != Some("Disabled");
        if override_disabled {
            let allowed = allowable(boot, "BootSourceOverrideTarget");
            // Some BMCs (sushy-tools among them) want a target in every Boot PATCH; `None`
            // ("boot normally") where allowed, else the local disk.
            let target = match allowed {
                Some(list)
                    if !list.iter().any(|v| v == "None") && list.iter().any(|v| v == "Hdd") =>
                {
                    "Hdd"
                }
                _ => "None",
            };
            progress.enter(url, "disabling the boot override (the medium is ejected)")?;
            set_boot(&s, system.clone(), target, "Disabled")?;
        }
        Ok(DetachReport {
            system: system.url.clone(),
            media: media.url.clone(),
            ejected,
            override_disabled,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// What the BMC says about the System's power, boot override and virtual CD.
    pub fn status(&self, target: &BmcTarget) -> Result<BmcView, RedfishError> {
        self.status_within(target, &Progress::unbounded())
    }

    /// [`Client::status`] within `progress`'s deadline.
    pub fn status_within(
        &self,
        target: &BmcTarget,
        progress: &Progress,
    ) -> Result<BmcView, RedfishError> {
        let s = self.session(target, progress)?;
        progress.enter(&target.url, "reading the system")?;
        let system = find_system(&s)?;
        progress.enter(&target.url, "reading the virtual CD")?;
        let media = find_cd(&s, &system)?;
        let boot = &system.body["Boot"];
        Ok(BmcView {
            system: system.url.clone(),
            power_state: text(&system.body["PowerState"]),
            boot: BootView {
                target: text(&boot["BootSourceOverrideTarget"]),
                enabled: text(&boot["BootSourceOverrideEnabled"]),
                mode: text(&boot["BootSourceOverrideMode"]),
            },
            media: media.view(),
        })
    }
}

/// The path part of a URL under the session's origin (for reports that rebuild a URL).
fn path_of<'u>(url: &'u str, s: &Session<'_>) -> &'u str {
    url.strip_prefix(s.target().url.origin()).unwrap_or(url)
}

/// A string property, made safe; empty strings are `None`.
fn text(v: &Value) -> Option<String> {
    v.as_str().map(|t| untrusted(t, 2048)).filter(|t| !t.is_empty())
}

fn check_image_url(url: &str) -> Result<(), RedfishError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let ok = (lower.starts_with("http://") || lower.starts_with("https://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(RedfishError::Invalid(format!(
            "the image URL {:?} is not usable; expected an http:// or https:// URL without spaces, at most 2048 bytes",
            untrusted(url, 200)
        )))
    }
}

/// A resource as read: where, what, and its ETag.
#[derive(Debug, Clone)]
struct Resource {
    url: String,
    body: Value,
    etag: Option<String>,
}

impl Resource {
    fn read(s: &Session<'_>, url: &str) -> Result<Resource, RedfishError> {
        let reply = s.get(url)?;
        if !reply.body.is_object() {
            return Err(RedfishError::Protocol {
                url: reply.url,
                message: "the answer is not a JSON object".into(),
            });
        }
        // Canonical URL: the resource's own @odata.id when it gives one (a System reached by an
        // alias is PATCHed at its real place).
        let url = match reply.body["@odata.id"].as_str() {
            Some(id) => s.resolve(id)?,
            None => reply.url.clone(),
        };
        let etag = reply.etag.or_else(|| reply.body["@odata.etag"].as_str().map(str::to_string));
        Ok(Resource { url, body: reply.body, etag })
    }

    fn reload(&self, s: &Session<'_>) -> Result<Resource, RedfishError> {
        Resource::read(s, &self.url)
    }

    fn link(&self, s: &Session<'_>, name: &str) -> Result<Option<String>, RedfishError> {
        self.body[name]["@odata.id"].as_str().map(|r| s.resolve(r)).transpose()
    }

    fn view(&self) -> MediaView {
        MediaView {
            resource: self.url.clone(),
            image: text(&self.body["Image"]),
            inserted: self.body["Inserted"].as_bool(),
            write_protected: self.body["WriteProtected"].as_bool(),
        }
    }
}

/// The member URLs of a collection, following `Members@odata.nextLink` up to `max` members.
fn members(s: &Session<'_>, url: &str, max: usize) -> Result<Vec<String>, RedfishError> {
    let mut out = Vec::new();
    let mut next = Some(url.to_string());
    let mut pages = 0;
    while let Some(page) = next.take() {
        pages += 1;
        let reply = s.get(&page)?;
        let Some(list) = reply.body["Members"].as_array() else {
            return Err(RedfishError::Protocol {
                url: reply.url,
                message: "the collection has no Members array".into(),
            });
        };
        for m in list {
            if out.len() >= max {
                return Ok(out);
            }
            if let Some(id) = m["@odata.id"].as_str() {
                out.push(s.resolve(id)?);
            }
        }
        if pages < 16 {
            next =
                reply.body["Members@odata.nextLink"].as_str().map(|n| s.resolve(n)).transpose()?;
        }
    }
    Ok(out)
}

fn find_system(s: &Session<'_>) -> Result<Resource, RedfishError> {
    let url = &s.target().url;
    if let Some(path) = url.system_path() {
        return Resource::read(s, &format!("{}{path}", url.origin()));
    }
    let root_url = format!("{}/redfish/v1/", url.origin());
    let root = Resource::read(s, &root_url)?;
    let systems = root.link(s, "Systems")?.ok_or_else(|| RedfishError::Protocol {
        url: root_url.clone(),
        message: "the service root has no Systems collection".into(),
    })?;
    let list = members(s, &systems, 64)?;
    match list.as_slice() {
        [one] => Resource::read(s, one),
        [] => Err(RedfishError::Unsupported {
            url: systems,
            message: "the Systems collection is empty".into(),
        }),
        many => Err(RedfishError::AmbiguousSystem {
            url: url.to_string(),
            count: many.len(),
            members: many
                .iter()
                .take(4)
                .map(|m| untrusted(path_of(m, s), 120))
                .collect::<Vec<_>>()
                .join(", ")
                + if many.len() > 4 { ", …" } else { "" },
            example: untrusted(&many[0], 200),
        }),
    }
}

/// Whether a VirtualMedia resource is a CD drive.
fn is_cd(body: &Value) -> bool {
    let types: Vec<&str> =
        body["MediaTypes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    types.iter().any(|t| t.eq_ignore_ascii_case("CD") || t.eq_ignore_ascii_case("DVD"))
}

/// A device without `MediaTypes` whose Id says CD (older firmware).
fn looks_like_cd(body: &Value) -> bool {
    body["MediaTypes"].as_array().is_none_or(Vec::is_empty)
        && body["Id"].as_str().is_some_and(|id| id.to_ascii_lowercase().contains("cd"))
}

fn find_cd(s: &Session<'_>, system: &Resource) -> Result<Resource, RedfishError> {
    let mut collections = Vec::new();
    if let Some(c) = system.link(s, "VirtualMedia")? {
        collections.push(c);
    }
    let managers: Vec<String> = system.body["Links"]["ManagedBy"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["@odata.id"].as_str())
        .take(4)
        .map(|m| s.resolve(m))
        .collect::<Result<_, _>>()?;
    let mut fallback = None;
    let mut searched = Vec::new();
    let mut next_manager = managers.iter();
    loop {
        let collection = match collections.pop() {
            Some(c) => c,
            None => match next_manager.next() {
                Some(m) => {
                    if let Some(c) = Resource::read(s, m)?.link(s, "VirtualMedia")? {
                        if !searched.contains(&c) {
                            collections.push(c);
                        }
                    }
                    continue;
                }
                None => break,
            },
        };
        for member in members(s, &collection, 16)? {
            let device = Resource::read(s, &member)?;
            if is_cd(&device.body) {
                return Ok(device);
            }
            if fallback.is_none() && looks_like_cd(&device.body) {
                fallback = Some(device);
            }
        }
        searched.push(collection);
    }
    fallback.ok_or_else(|| RedfishError::Unsupported {
        url: system.url.clone(),
        message: if searched.is_empty() {
            "neither the System nor its managers have VirtualMedia; the BMC may need a virtual media licence".into()
        } else {
            format!(
                "no virtual CD (MediaTypes CD or DVD) under {}",
                searched.iter().map(|c| path_of(c, s)).collect::<Vec<_>>().join(", ")
            )
        },
    })
}

/// An action of a resource: its target, and what the BMC says about its parameters.
struct Action {
    target: String,
    /// The action object itself (holds `PARAM@Redfish.AllowableValues`).
    object: Value,
    /// The ActionInfo resource, when the action links one.
    info: Option<Value>,
}

impl Action {
    fn find(
        s: &Session<'_>,
        resource: &Resource,
        name: &str,
    ) -> Result<Option<Action>, RedfishError> {
        let object = &resource.body["Actions"][name];
        let Some(target) = object["target"].as_str() else {
            return Ok(None);
        };
        let target = s.resolve(target)?;
        let info = match object["@Redfish.ActionInfo"].as_str() {
            Some(link) => {
                let url = s.resolve(link)?;
                match s.get(&url) {
                    Ok(reply) => Some(reply.body),
                    // An ActionInfo the BMC links but does not serve tells nothing: go on
                    // without it rather than fail the action.
                    Err(RedfishError::Status { status: 404 | 405 | 501, .. }) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        Ok(Some(Action { target, object: object.clone(), info }))
    }

    fn parameter(&self, name: &str) -> Option<&Value> {
        self.info.as_ref()?["Parameters"].as_array()?.iter().find(|p| p["Name"] == name)
    }

    /// Whether the BMC takes parameter `name`: yes unless an ActionInfo lists others only.
    fn takes(&self, name: &str) -> bool {
        match &self.info {
            Some(info) if info["Parameters"].is_array() => self.parameter(name).is_some(),
            _ => true,
        }
    }

    /// The values allowed for `name`, from the action or its ActionInfo; `None` if not said.
    fn allowed(&self, name: &str) -> Option<Vec<String>> {
        allowable(&self.object, name)
            .or_else(|| strings(self.parameter(name)?.get("AllowableValues")?))
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    Some(v.as_array()?.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// `object["NAME@Redfish.AllowableValues"]`.
fn allowable(object: &Value, name: &str) -> Option<Vec<String>> {
    strings(&object[format!("{name}@Redfish.AllowableValues")])
}

fn shown(list: &[String]) -> String {
    untrusted(&list.join(", "), 200)
}

/// Ejects the CD if it holds anything; returns the image that was there.
fn eject(s: &Session<'_>, media: &Resource) -> Result<Option<String>, RedfishError> {
    let image = text(&media.body["Image"]);
    let inserted = media.body["Inserted"].as_bool() == Some(true);
    if image.is_none() && !inserted {
        return Ok(None);
    }
    match Action::find(s, media, "#VirtualMedia.EjectMedia")? {
        Some(action) => {
            s.post(&action.target, &json!({}), Retry::Idempotent, "EjectMedia")?;
        }
        None => {
            patch_with_etag(
                s,
                media,
                &json!({"Image": null, "Inserted": false}),
                "eject by PATCH",
            )?;
        }
    }
    Ok(Some(image.unwrap_or_else(|| "(a medium without an image URL)".into())))
}

/// Inserts the image; returns how.
fn insert(s: &Session<'_>, media: &Resource, image: &str) -> Result<&'static str, RedfishError> {
    let Some(action) = Action::find(s, media, "#VirtualMedia.InsertMedia")? else {
        patch_with_etag(
            s,
            media,
            &json!({"Image": image, "Inserted": true, "WriteProtected": true}),
            "insert by PATCH",
        )?;
        return Ok("PATCH");
    };
    let mut body = json!({ "Image": image });
    for name in ["Inserted", "WriteProtected"] {
        if action.takes(name) {
            body[name] = Value::Bool(true);
        }
    }
    let required = action.parameter("TransferProtocolType").is_some_and(|p| p["Required"] == true);
    if required {
        let protocol =
            if image.to_ascii_lowercase().starts_with("https:") { "HTTPS" } else { "HTTP" };
        if let Some(allowed) = action.allowed("TransferProtocolType") {
            if !allowed.iter().any(|a| a == protocol) {
                return Err(RedfishError::Unsupported {
                    url: action.target.clone(),
                    message: format!(
                        "InsertMedia does not take {protocol} URLs; it allows {}",
                        shown(&allowed)
                    ),
                });
            }
        }
        body["TransferProtocolType"] = Value::from(protocol);
    }
    s.post(&action.target, &body, Retry::Idempotent, "InsertMedia")?;
    Ok("InsertMedia")
}

/// PATCH with the resource's ETag; on 412 reads it again and retries once.
fn patch_with_etag(
    s: &Session<'_>,
    resource: &Resource,
    body: &Value,
    what: &str,
) -> Result<(), RedfishError> {
    match s.patch(&resource.url, body, resource.etag.as_deref(), what) {
        Err(RedfishError::Status { status: 412, .. }) if resource.etag.is_some() => {
            let fresh = resource.reload(s)?;
            s.patch(&fresh.url, body, fresh.etag.as_deref(), what).map(drop)
        }
        other => other.map(drop),
    }
}

/// Sets the boot override (re-reading the System first for a fresh ETag and the allowed
/// values); returns the System as read before the PATCH.
fn set_boot(
    s: &Session<'_>,
    system: Resource,
    target: &str,
    enabled: &str,
) -> Result<Resource, RedfishError> {
    let system = system.reload(s)?;
    let boot = &system.body["Boot"];
    for (name, value) in
        [("BootSourceOverrideTarget", target), ("BootSourceOverrideEnabled", enabled)]
    {
        if let Some(allowed) = allowable(boot, name) {
            if !allowed.iter().any(|a| a == value) {
                return Err(RedfishError::Unsupported {
                    url: system.url.clone(),
                    message: format!(
                        "{name} {value} is not allowed; the BMC allows {}",
                        shown(&allowed)
                    ),
                });
            }
        }
    }
    let body =
        json!({"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}});
    patch_with_etag(s, &system, &body, "boot override")?;
    Ok(system)
}

/// The reset types to try, best first, for a System in `power_state`.
fn reset_preferences(power_state: Option<&str>) -> &'static [&'static str] {
    match power_state {
        Some("Off" | "PoweringOff") => &["On", "ForceOn", "PowerCycle"],
        _ => &["ForceRestart", "PowerCycle", "GracefulRestart"],
    }
}

fn reset_system(s: &Session<'_>, system: Resource) -> Result<String, RedfishError> {
    let system = system.reload(s)?;
    let action = Action::find(s, &system, "#ComputerSystem.Reset")?.ok_or_else(|| {
        RedfishError::Unsupported {
            url: system.url.clone(),
            message: "the System has no #ComputerSystem.Reset action".into(),
        }
    })?;
    let power = system.body["PowerState"].as_str();
    let preferences = reset_preferences(power);
    let chosen = match action.allowed("ResetType") {
        None => preferences[0].to_string(),
        Some(allowed) => preferences
            .iter()
            .find(|p| allowed.iter().any(|a| a == *p))
            .map(|p| p.to_string())
            .ok_or_else(|| RedfishError::Unsupported {
                url: action.target.clone(),
                message: format!(
                    "no reset type fits a System that is {}: bootforge would use {} and the BMC allows {}",
                    untrusted(power.unwrap_or("in an unknown power state"), 40),
                    preferences.join(", "),
                    shown(&allowed)
                ),
            })?,
    };
    s.post(&action.target, &json!({ "ResetType": chosen }), Retry::Once, "ComputerSystem.Reset")?;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_cleaned_and_bounded() {
        assert_eq!(untrusted("  a\tb\r\n\nc  ", 100), "a b c");
        assert_eq!(untrusted("x\u{1b}[2Jy\u{7f}\u{202e}z\u{200b}", 100), "x[2Jyz");
        assert_eq!(untrusted("abcdef", 4), "abc…");
        assert_eq!(untrusted("abc", 4), "abc");
        let long = untrusted(&"é".repeat(1000), 300);
        assert_eq!(long.chars().count(), 300);
    }

    #[test]
    fn password_debug_is_redacted() {
        let c =
            Credentials { user: "admin".into(), password: Password::new("hunter2"), source: None };
        let shown = format!("{c:?}");
        assert!(shown.contains("admin") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_client_is_shared_across_threads() {
        fn shared<T: Send + Sync + Clone>() {}
        shared::<Client>();
        shared::<BmcTarget>();
    }

    #[test]
    fn reset_types_follow_power_state() {
        assert_eq!(reset_preferences(Some("Off"))[0], "On");
        assert_eq!(reset_preferences(Some("On"))[0], "ForceRestart");
        assert_eq!(reset_preferences(None)[0], "ForceRestart");
    }

    #[test]
    fn cd_devices() {
        assert!(is_cd(&json!({"MediaTypes": ["CD", "DVD"]})));
        assert!(is_cd(&json!({"MediaTypes": ["dvd"]})));
        assert!(!is_cd(&json!({"MediaTypes": ["Floppy", "USBStick"]})));
        assert!(looks_like_cd(&json!({"Id": "CD1"})));
        assert!(looks_like_cd(&json!({"Id": "RemovableCd", "MediaTypes": []})));
        assert!(!looks_like_cd(&json!({"Id": "Floppy1"})));
    }

    #[test]
    fn boot_modes_parse() {
        assert_eq!("once".parse::<BootMode>(), Ok(BootMode::Once));
        assert_eq!("continuous".parse::<BootMode>(), Ok(BootMode::Continuous));
        assert_eq!("none".parse::<BootMode>(), Ok(BootMode::None));
        assert!("Once\n".parse::<BootMode>().unwrap_err().contains("expected continuous"));
    }

    #[test]
    fn image_urls() {
        assert!(check_image_url("https://10.0.0.5:8080/media/node01.iso?exp=1&sig=ab").is_ok());
        assert!(check_image_url("http://h/x.iso").is_ok());
        for bad in ["ftp://h/x.iso", "/x.iso", "http://h/a b.iso", "http://h/\n"] {
            assert!(check_image_url(bad).is_err(), "{bad}");
        }
    }
}
