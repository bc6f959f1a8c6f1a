//! The per-node iPXE script (what runs on the server) and the local-boot script the service
//! answers with. Both are built from validated inventory values only.
//!
//! Injection safety does not rest on escaping: every value written into a script is a type that
//! cannot hold a character iPXE treats specially (`$`, `{`, `}`, spaces, quotes, `#`, `&&`, `||`,
//! new lines). Host names are RFC 1123, addresses are `Ipv4Addr`/[`Mac`], the server is a
//! [`ServerUrl`] and the token is hex. Free template columns never reach the media script.

use crate::inventory::{Node, ServerUrl};
use std::fmt::Write as _;
use std::str::FromStr;

/// How many times the script asks the boot service before it boots the local disk.
pub const ATTEMPTS: u32 = 4;
/// Seconds between attempts.
pub const RETRY_DELAY_SECS: u32 = 5;
/// How long to wait for link on the chosen interface, in milliseconds.
pub const LINK_TIMEOUT_MS: u32 = 20_000;
/// iPXE numbers network devices net0, net1, …; the MAC search looks at this many.
pub const MAX_NICS: u32 = 8;

/// How the bootforge medium is attached, which decides how the local disk is reached on BIOS.
///
/// Under BIOS a CD is not a hard disk, so the machine's own disk is drive `0x80`; a USB stick
/// *is* drive `0x80`, which pushes the machine's disk to `0x81`. Neither iPXE nor ISOLINUX can
/// tell at run time whether the ISO was booted as a CD or as a stick, so the ISO's medium is
/// chosen at build time (`--iso-medium`, default `cd`). UEFI always leaves with `exit`, which
/// hands control back to the firmware's boot order, so the medium does not matter there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    /// Attached as a CD/DVD (BMC virtual media, hypervisor CD drive).
    Cd,
    /// Attached as a USB disk (a stick, a BMC's virtual USB disk).
    Usb,
    /// The bare EFI system partition image (virtual floppy, or copied to an existing ESP).
    Esp,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Cd => "cd",
            Medium::Usb => "usb",
            Medium::Esp => "esp",
        }
    }

    /// The BIOS drive number of the machine's own first disk when booted from this medium.
    pub fn bios_local_drive(self) -> u8 {
        match self {
            Medium::Usb => 0x81,
            Medium::Cd | Medium::Esp => 0x80,
        }
    }
}

impl FromStr for Medium {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cd" => Ok(Medium::Cd),
            "usb" => Ok(Medium::Usb),
            "esp" => Ok(Medium::Esp),
            _ => Err(format!("{s:?} is not a medium; expected cd, usb or esp")),
        }
    }
}

impl std::fmt::Display for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a local boot leaves iPXE. `Auto` follows the platform and medium (see [`Medium`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalBoot {
    #[default]
    Auto,
    /// `exit`: back to the firmware, which tries the next boot option.
    Exit,
    /// `sanboot` this BIOS drive number (on UEFI, `exit` is used instead).
    Drive(u8),
}

impl FromStr for LocalBoot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LocalBoot::Auto),
            "exit" => Ok(LocalBoot::Exit),
            _ => {
                let hex = s
                    .strip_prefix("0x")
                    .ok_or(())
                    .and_then(|h| u8::from_str_radix(h, 16).map_err(|_| ()));
                match hex {
                    Ok(d) if d >= 0x80 => Ok(LocalBoot::Drive(d)),
                    _ => Err(format!(
                        "{s:?} is not a local-boot method; expected auto, exit, or a BIOS drive such as 0x80"
                    )),
                }
            }
        }
    }
}

/// Everything a node's script depends on besides the node itself.
#[derive(Debug, Clone)]
pub struct ScriptSettings<'a> {
    /// The boot service, used unless the row has its own `server`.
    pub server: &'a ServerUrl,
    /// The node token, when the fleet has a secret (see [`crate::token`]).
    pub token: Option<String>,
    pub medium: Medium,
}

/// The script that runs on `node`: bring up its NIC with its static settings, ask the boot
/// service what to do (with retries), and boot the local disk when the service cannot be reached.
pub fn node_script(node: &Node, settings: &ScriptSettings<'_>) -> String {
    let server = node.server.as_ref().unwrap_or(settings.server);
    let mut s = String::new();
    let w = &mut s;
    line(w, "#!ipxe");
    line(
        w,
        &format!("# bootforge {}: boot script for {}", env!("CARGO_PKG_VERSION"), node.hostname),
    );
    line(
        w,
        "# Brings up one NIC with static settings (no DHCP), asks the boot service what to do,",
    );
    line(w, "# and boots the local disk if the service cannot be reached.");
    line(w, "");
    line(w, &format!("set bootforge-host {}", node.hostname));
    line(w, &format!("set bootforge-server {server}"));
    line(w, &format!("set bootforge-medium {}", settings.medium));
    line(
        w,
        &format!(
            "echo bootforge: {} ({}) on ${{platform}}/${{buildarch}}, medium {}",
            node.hostname,
            node.cidr(),
            settings.medium
        ),
    );
    line(w, "");

    // Choose the NIC.
    match node.mac {
        Some(mac) => {
            line(w, "# Find the NIC whose MAC is the one in the inventory.");
            line(w, &format!("set bootforge-mac {mac}"));
            line(w, "set bootforge-idx:int32 0");
            line(w, ":find_nic");
            line(w, "iseq ${net${bootforge-idx}/mac} ${bootforge-mac} && goto found_nic ||");
            line(w, "inc bootforge-idx");
            line(w, &format!("iseq ${{bootforge-idx}} {MAX_NICS} || goto find_nic"));
            line(w, &format!("echo bootforge: no network interface has MAC ${{bootforge-mac}} (looked at net0 to net{})", MAX_NICS - 1));
            line(w, "goto local_boot");
            line(w, ":found_nic");
            line(w, "set bootforge-nic net${bootforge-idx}");
        }
        None => {
            line(w, "# No MAC in the inventory: use the first NIC.");
            line(w, "set bootforge-nic net0");
            line(w, "isset ${net0/mac} || goto no_nic");
        }
    }
    match node.vlan {
        Some(vlan) => {
            line(w, &format!("# Tagged VLAN {vlan} on that NIC."));
            line(w, &format!("vcreate --tag {vlan} ${{bootforge-nic}} || goto net_failed"));
            line(w, &format!("set bootforge-if ${{bootforge-nic}}-{vlan}"));
        }
        None => line(w, "set bootforge-if ${bootforge-nic}"),
    }
    line(w, "echo bootforge: using ${bootforge-if} (MAC ${${bootforge-if}/mac})");
    line(w, "");
    line(w, "# Static address: no DHCP on this network.");
    line(w, &format!("set ${{bootforge-if}}/ip {}", node.ip));
    line(w, &format!("set ${{bootforge-if}}/netmask {}", node.netmask()));
    if let Some(gw) = node.gateway {
        line(w, &format!("set ${{bootforge-if}}/gateway {gw}"));
    }
    if let Some(dns) = node.dns {
        line(w, &format!("set ${{bootforge-if}}/dns {dns}"));
    }
    line(w, "ifopen ${bootforge-if} || goto net_failed");
    line(w, &format!("iflinkwait --timeout {LINK_TIMEOUT_MS} ${{bootforge-if}} || echo bootforge: no link on ${{bootforge-if}} yet, trying anyway"));
    line(w, "");

    // Ask the service.
    let mut url = String::from(
        "${bootforge-server}/boot/${bootforge-host}?mac=${${bootforge-if}/mac}&ip=${${bootforge-if}/ip}\
         &uuid=${uuid}&serial=${serial:uristring}&platform=${platform}&arch=${buildarch}\
         &medium=${bootforge-medium}",
    );
    if let Some(token) = &settings.token {
        debug_assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        line(w, &format!("set bootforge-token {token}"));
        url.push_str("&token=${bootforge-token}");
    }
    line(w, "# Ask the boot service what to do, retry, then fall back to the local disk.");
    line(w, "set bootforge-try:int32 0");
    line(w, ":ask");
    line(w, "inc bootforge-try");
    line(
        w,
        &format!(
            "echo bootforge: asking ${{bootforge-server}} (try ${{bootforge-try}} of {ATTEMPTS})"
        ),
    );
    // --replace: the answer takes over this script, so its own `exit` leaves iPXE (a nested
    // script's `exit` would only return here). A failed download still returns, and retries.
    line(w, &format!("chain --replace --autofree {url} ||"));
    line(w, &format!("iseq ${{bootforge-try}} {ATTEMPTS} && goto unreachable ||"));
    line(w, &format!("sleep {RETRY_DELAY_SECS}"));
    line(w, "goto ask");
    line(w, "");
    line(w, ":unreachable");
    line(w, &format!("echo bootforge: the boot service did not answer after {ATTEMPTS} tries"));
    line(w, "goto local_boot");
    if node.mac.is_none() {
        line(w, ":no_nic");
        line(w, "echo bootforge: no network interface net0 was found");
        line(w, "goto local_boot");
    }
    line(w, ":net_failed");
    line(w, "echo bootforge: could not configure ${bootforge-if}");
    line(w, "");
    line(w, ":local_boot");
    s.push_str(&local_boot_commands(LocalBoot::Auto, settings.medium));
    s
}

/// The commands that leave iPXE for the machine's own disk, for the given medium.
///
/// UEFI: `exit 1` returns to the firmware's boot manager with an error status, so it moves on to
/// the next boot option (the installed OS). A plain `exit` returns EFI_SUCCESS, and edk2-based
/// firmware (OVMF, most vendors') then opens its boot menu and waits instead: seen under QEMU.
/// BIOS: `sanboot` the machine's first disk, whose drive number depends on the medium (see
/// [`Medium`]); if that fails, `exit` lets the BIOS try its next device.
pub fn local_boot_commands(how: LocalBoot, medium: Medium) -> String {
    let mut s = String::new();
    let w = &mut s;
    line(w, "echo bootforge: booting the local disk");
    line(w, "iseq ${platform} efi && exit 1 ||");
    let drive = match how {
        LocalBoot::Exit => None,
        LocalBoot::Drive(d) => Some(d),
        LocalBoot::Auto => Some(medium.bios_local_drive()),
    };
    if let Some(drive) = drive {
        line(w, &format!("sanboot --no-describe --drive {drive:#04x} ||"));
    }
    line(w, "exit");
    s
}

/// A whole local-boot script, as the boot service answers it. `reason` is shown on the console;
/// anything but plain words is dropped from it so it cannot become a command.
pub fn local_boot_script(how: LocalBoot, medium: Medium, reason: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .,:;_-()/".contains(*c))
        .take(200)
        .collect();
    let mut s = String::from("#!ipxe\n");
    line(&mut s, &format!("echo bootforge: local boot: {reason}"));
    s.push_str(&local_boot_commands(how, medium));
    s
}

fn line(s: &mut String, text: &str) {
    writeln!(s, "{text}").expect("writing to a String cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_boot_per_medium() {
        let cd = local_boot_commands(LocalBoot::Auto, Medium::Cd);
        assert!(cd.contains("sanboot --no-describe --drive 0x80"));
        let usb = local_boot_commands(LocalBoot::Auto, Medium::Usb);
        assert!(usb.contains("--drive 0x81"));
        let exit = local_boot_commands(LocalBoot::Exit, Medium::Usb);
        assert!(!exit.contains("sanboot"));
        assert!(exit.ends_with("exit\n"));
        assert!(exit.contains("efi && exit 1 ||"), "UEFI leaves with an error status");
    }

    #[test]
    fn reason_cannot_inject() {
        let s = local_boot_script(LocalBoot::Auto, Medium::Cd, "x\nshell ${a} && reboot");
        let echo = s.lines().nth(1).unwrap();
        assert_eq!(echo, "echo bootforge: local boot: xshell a  reboot");
        assert_eq!(s.lines().count(), 6, "{s}");
    }

    #[test]
    fn local_boot_parse() {
        assert_eq!("0x81".parse::<LocalBoot>(), Ok(LocalBoot::Drive(0x81)));
        assert_eq!("exit".parse::<LocalBoot>(), Ok(LocalBoot::Exit));
        assert!("0x10".parse::<LocalBoot>().is_err());
        assert!("81".parse::<LocalBoot>().is_err());
    }
}
