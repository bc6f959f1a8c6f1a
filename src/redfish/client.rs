//! The Redfish walk: a [`Client`] finds a BMC's system and virtual CD and attaches, ejects or
//! reads them (see the module documentation of [`crate::redfish`] for the rules it follows).
//!
//! Longer than the ~500 lines we aim for, on purpose: the walk is one sequence (system, virtual
//! CD, insert, boot override, reset), read top to bottom against the Redfish rules in
//! [`crate::redfish`]; splitting it would separate each step from the checks of its answer.

use super::transport::{Retry, Session};
use super::*;
use serde_json::{json, Value};
use std::fmt;
use std::time::Instant;

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
    pub(super) fn session<'a>(
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
        self.attach_within(target, image_url, boot, reset, None, &Progress::unbounded())
    }

    /// [`Client::attach`] within `progress`'s deadline, recording each step in it.
    ///
    /// With `ca`, for an `https://` image: before inserting, the virtual CD is made to trust
    /// its CA certificates and to verify the image's certificate ([`trust::ensure`]), and its
    /// `on_change` is told when that changed the BMC, even if a later step of the enrollment
    /// fails (for an audit record that must not depend on the steps after it). A failed insert then says which CA the BMC checked
    /// against. `ca` is ignored for `http://` images.
    pub fn attach_within(
        &self,
        target: &BmcTarget,
        image_url: &str,
        boot: BootMode,
        reset: bool,
        ca: Option<Enroll<'_>>,
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
        let https = image_url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        let (media_ca, media) = match ca.filter(|_| https) {
            Some(enroll) => {
                progress.enter(url, "enrolling the service's CA on the virtual CD")?;
                let (report, media) = trust::ensure(&s, media, enroll.ca, enroll.on_change)?;
                (Some(report), media)
            }
            None => (None, media),
        };
        progress.enter(url, "inserting the image")?;
        let inserted_by = insert(&s, &media, image_url).map_err(|e| match (&media_ca, e) {
            (Some(t), e @ (RedfishError::Status { .. } | RedfishError::TaskFailed { .. }))
                if t.verifying() =>
            {
                RedfishError::UntrustedImage {
                    error: Box::new(e),
                    ca: ca.map(|e| e.ca.source().to_string()).unwrap_or_default(),
                }
            }
            (_, e) => e,
        })?;
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
            media_ca,
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
pub(super) fn text(v: &Value) -> Option<String> {
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
pub(super) struct Resource {
    pub(super) url: String,
    pub(super) body: Value,
    pub(super) etag: Option<String>,
}

impl Resource {
    pub(super) fn read(s: &Session<'_>, url: &str) -> Result<Resource, RedfishError> {
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

    pub(super) fn reload(&self, s: &Session<'_>) -> Result<Resource, RedfishError> {
        Resource::read(s, &self.url)
    }

    pub(super) fn link(&self, s: &Session<'_>, name: &str) -> Result<Option<String>, RedfishError> {
        self.body[name]["@odata.id"].as_str().map(|r| s.resolve(r)).transpose()
    }

    pub(super) fn view(&self) -> MediaView {
        MediaView {
            resource: self.url.clone(),
            image: text(&self.body["Image"]),
            inserted: self.body["Inserted"].as_bool(),
            write_protected: self.body["WriteProtected"].as_bool(),
        }
    }
}

/// The member URLs of a collection, following `Members@odata.nextLink` up to `max` members.
pub(super) fn members(s: &Session<'_>, url: &str, max: usize) -> Result<Vec<String>, RedfishError> {
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

pub(super) fn find_system(s: &Session<'_>) -> Result<Resource, RedfishError> {
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

pub(super) fn find_cd(s: &Session<'_>, system: &Resource) -> Result<Resource, RedfishError> {
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
pub(super) struct Action {
    pub(super) target: String,
    /// The action object itself (holds `PARAM@Redfish.AllowableValues`).
    object: Value,
    /// The ActionInfo resource, when the action links one.
    info: Option<Value>,
}

impl Action {
    pub(super) fn find(
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
    pub(super) fn allowed(&self, name: &str) -> Option<Vec<String>> {
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

pub(super) fn shown(list: &[String]) -> String {
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
pub(super) fn patch_with_etag(
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
