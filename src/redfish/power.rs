//! A System's live hardware state (power, health, the virtual CD's image, the boot override)
//! and its power actions (`#ComputerSystem.Reset`), for the service's hardware view.
//!
//! Invariants (the BMC's answer is hostile input):
//! * Every enumerated value the BMC reports is mapped onto our own small set ([`Power`],
//!   [`Health`], [`BootEnabled`], and the boot target names of [`boot_target`]); anything
//!   else becomes `unknown`, so no BMC text reaches a caller through these fields.
//! * The one free text kept, the mounted image URL, passes through [`untrusted`] (bounded);
//!   the caller classifies it (ours, other) and never shows it to a `read` caller.
//! * A reset sends only a `ResetType` the BMC allows when it lists them
//!   (`ResetType@Redfish.AllowableValues` or the action's ActionInfo); otherwise it fails
//!   with [`RedfishError::Unsupported`] naming what the BMC allows. A reset is retried only
//!   when it certainly did not run (see the transport).

use super::client::{find_cd, find_system, shown, Action};
use super::transport::Retry;
use super::*;
use serde_json::{json, Value};

/// The System's power state, in our words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Power {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Unknown,
}

impl Power {
    fn of(v: &Value) -> Power {
        match v.as_str() {
            Some("On") => Power::On,
            Some("Off") => Power::Off,
            Some("PoweringOn") => Power::PoweringOn,
            Some("PoweringOff") => Power::PoweringOff,
            _ => Power::Unknown,
        }
    }
}

/// The System's health (the worse of `Status.Health` and `Status.HealthRollup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Ok,
    Warning,
    Critical,
    /// Not reported, or a value Redfish does not define.
    Unknown,
}

impl Health {
    fn of(v: &Value) -> Option<Health> {
        match v.as_str()? {
            "OK" => Some(Health::Ok),
            "Warning" => Some(Health::Warning),
            "Critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

/// `BootSourceOverrideEnabled`, in our words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootEnabled {
    Once,
    Continuous,
    Disabled,
    Unknown,
}

/// The Redfish boot targets we name, and our names for them; any other is `unknown`.
const TARGETS: [(&str, &str); 16] = [
    ("None", "none"),
    ("Pxe", "pxe"),
    ("Floppy", "floppy"),
    ("Cd", "cd"),
    ("Usb", "usb"),
    ("Hdd", "hdd"),
    ("BiosSetup", "bios-setup"),
    ("Utilities", "utilities"),
    ("Diags", "diags"),
    ("UefiShell", "uefi-shell"),
    ("UefiTarget", "uefi-target"),
    ("SDCard", "sd-card"),
    ("UefiHttp", "uefi-http"),
    ("RemoteDrive", "remote-drive"),
    ("UefiBootNext", "uefi-boot-next"),
    ("Recovery", "recovery"),
];

/// Our name of a `BootSourceOverrideTarget` value (`unknown` for anything else).
pub fn boot_target(v: &Value) -> &'static str {
    v.as_str()
        .and_then(|t| TARGETS.iter().find(|(r, _)| *r == t))
        .map_or("unknown", |(_, ours)| ours)
}

/// What [`Client::hardware_within`] read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HardwareState {
    pub power: Power,
    pub health: Health,
    /// `(target, enabled)` of the boot override; `None` when the System reports neither.
    pub boot_override: Option<(&'static str, BootEnabled)>,
    /// The virtual CD's image (cleaned, bounded) and `Inserted`; `None` when the BMC has no
    /// virtual CD we can find (or it could not be read).
    pub media: Option<(Option<String>, Option<bool>)>,
}

/// A power action an operator may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    /// Graceful shutdown (the operating system is asked).
    Off,
    ForceOff,
    /// Graceful restart.
    Restart,
    ForceRestart,
}

impl PowerAction {
    pub const ALL: [PowerAction; 5] = [
        PowerAction::On,
        PowerAction::Off,
        PowerAction::ForceOff,
        PowerAction::Restart,
        PowerAction::ForceRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::ForceOff => "force-off",
            PowerAction::Restart => "restart",
            PowerAction::ForceRestart => "force-restart",
        }
    }

    /// The `ResetType` values that do this, best first.
    fn reset_types(self) -> &'static [&'static str] {
        match self {
            PowerAction::On => &["On", "ForceOn"],
            PowerAction::Off => &["GracefulShutdown"],
            PowerAction::ForceOff => &["ForceOff"],
            PowerAction::Restart => &["GracefulRestart"],
            PowerAction::ForceRestart => &["ForceRestart"],
        }
    }
}

impl std::str::FromStr for PowerAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        PowerAction::ALL.into_iter().find(|a| a.as_str() == text).ok_or_else(|| {
            format!(
                "{:?} is not a power action; expected on, off, force-off, restart or force-restart",
                untrusted(text, 40)
            )
        })
    }
}

impl Client {
    /// The System's power, health, boot override and virtual CD, within `progress`'s deadline.
    /// A BMC without a virtual CD (or whose CD cannot be read) still reports the rest.
    pub fn hardware_within(
        &self,
        target: &BmcTarget,
        progress: &Progress,
    ) -> Result<HardwareState, RedfishError> {
        let s = self.session(target, progress)?.for_state();
        progress.enter(&target.url, "reading the system")?;
        let system = find_system(&s)?;
        progress.enter(&target.url, "reading the virtual CD")?;
        let media = match find_cd(&s, &system) {
            Ok(cd) => {
                let v = cd.view();
                Some((v.image.map(|i| untrusted(&i, 2048)), v.inserted))
            }
            // The rest is worth showing: only a BMC that stopped answering fails the read.
            Err(e @ (RedfishError::Deadline { .. } | RedfishError::Unreachable { .. })) => {
                return Err(e)
            }
            Err(_) => None,
        };
        Ok(state_of(&system.body, media))
    }

    /// Sends `#ComputerSystem.Reset` for `action`; returns the `ResetType` sent.
    pub fn power_within(
        &self,
        target: &BmcTarget,
        action: PowerAction,
        progress: &Progress,
    ) -> Result<&'static str, RedfishError> {
        let s = self.session(target, progress)?;
        progress.enter(&target.url, "reading the system")?;
        let system = find_system(&s)?;
        let reset = Action::find(&s, &system, "#ComputerSystem.Reset")?.ok_or_else(|| {
            RedfishError::Unsupported {
                url: system.url.clone(),
                message: "the System has no #ComputerSystem.Reset action".into(),
            }
        })?;
        let chosen = choose(action, reset.allowed("ResetType").as_deref()).map_err(|allowed| {
            RedfishError::Unsupported {
                url: reset.target.clone(),
                message: format!(
                    "power {} needs ResetType {}, and the BMC allows only {}",
                    action.as_str(),
                    action.reset_types().join(" or "),
                    shown(allowed)
                ),
            }
        })?;
        progress.enter(&target.url, "sending the reset")?;
        s.post(
            &reset.target,
            &json!({ "ResetType": chosen }),
            Retry::Once,
            "ComputerSystem.Reset",
        )?;
        Ok(chosen)
    }
}

/// The first reset type of `action` the BMC allows (any, when it lists none); else the list.
fn choose(action: PowerAction, allowed: Option<&[String]>) -> Result<&'static str, &[String]> {
    let types = action.reset_types();
    match allowed {
        None => Ok(types[0]),
        Some(list) => types.iter().copied().find(|t| list.iter().any(|a| a == t)).ok_or(list),
    }
}

/// The state from a System's body (pure, for tests of hostile answers).
fn state_of(system: &Value, media: Option<(Option<String>, Option<bool>)>) -> HardwareState {
    let status = &system["Status"];
    // Redfish spells it `HealthRollup`; some BMCs (sushy-tools) `HealthRollUp`.
    let health = [&status["Health"], &status["HealthRollup"], &status["HealthRollUp"]]
        .into_iter()
        .filter_map(Health::of)
        .max()
        .unwrap_or(Health::Unknown);
    let boot = &system["Boot"];
    let (target, enabled) = (&boot["BootSourceOverrideTarget"], &boot["BootSourceOverrideEnabled"]);
    let boot_override = (!target.is_null() || !enabled.is_null()).then(|| {
        let enabled = match enabled.as_str() {
            Some("Once") => BootEnabled::Once,
            Some("Continuous") => BootEnabled::Continuous,
            Some("Disabled") => BootEnabled::Disabled,
            _ => BootEnabled::Unknown,
        };
        (boot_target(target), enabled)
    });
    HardwareState { power: Power::of(&system["PowerState"]), health, boot_override, media }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_system_maps_to_our_words() {
        let st = state_of(
            &json!({
                "PowerState": "On\u{202e}",
                "Status": {"Health": "OK", "HealthRollup": "Critical"},
                "Boot": {"BootSourceOverrideTarget": "x".repeat(10_000), "BootSourceOverrideEnabled": 7}
            }),
            None,
        );
        assert_eq!(st.power, Power::Unknown);
        assert_eq!(st.health, Health::Critical);
        assert_eq!(st.boot_override, Some(("unknown", BootEnabled::Unknown)));
        let st = state_of(
            &json!({"PowerState": "PoweringOff", "Status": {"HealthRollUp": "Warning"},
                    "Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}),
            None,
        );
        assert_eq!(st.power, Power::PoweringOff);
        assert_eq!(st.health, Health::Warning);
        assert_eq!(st.boot_override, Some(("cd", BootEnabled::Once)));
        let st = state_of(&json!({"Status": "OK", "Boot": null}), None);
        assert_eq!((st.health, st.boot_override), (Health::Unknown, None));
    }

    #[test]
    fn reset_types_honour_what_the_bmc_allows() {
        assert_eq!(choose(PowerAction::On, None), Ok("On"));
        let only_force = vec!["ForceOn".to_string(), "ForceOff".to_string()];
        assert_eq!(choose(PowerAction::On, Some(&only_force)), Ok("ForceOn"));
        assert_eq!(choose(PowerAction::ForceOff, Some(&only_force)), Ok("ForceOff"));
        assert!(choose(PowerAction::Restart, Some(&only_force)).is_err());
        assert_eq!("force-restart".parse::<PowerAction>(), Ok(PowerAction::ForceRestart));
        assert!("reboot".parse::<PowerAction>().unwrap_err().contains("force-off"));
    }
}
