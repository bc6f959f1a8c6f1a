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
    line(w, "# Cross-signed certificates are fetched from the service (plain http), never from");
    line(w, "# the public internet (see crosscert_url in src/script.rs).");
    line(w, &format!("set crosscert {}", crosscert_url(server)));
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
    // `${errno}` is saved at once: every later failing command (an `iseq`) overwrites it.
    line(w, &format!("chain --replace --autofree {url} || set bootforge-err ${{errno}}"));
    write_failure_reasons(w);
    line(w, ":retry");
    line(w, &format!("iseq ${{bootforge-try}} {ATTEMPTS} && goto unreachable ||"));
    line(w, &format!("sleep {RETRY_DELAY_SECS}"));
    line(w, "goto ask");
    line(w, "");
    line(w, ":unreachable");
    line(w, &format!("echo bootforge: the boot service did not answer after {ATTEMPTS} tries"));
    line(w, "goto local_boot");
    line(w, "# Why a request failed: one line naming the cause and the fix.");
    for failure in KNOWN_FAILURES {
        line(w, &format!(":fail_{}", failure.label));
        line(w, &format!("echo bootforge: {}", failure.message));
        line(w, if failure.permanent { "goto local_boot" } else { "goto retry" });
    }
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

/// Where the node's iPXE fetches cross-signed certificates (iPXE's `crosscert` setting) when a
/// certificate chain does not validate: the service's own address with `http://`.
///
/// iPXE's default is `http://ca.ipxe.org/auto`, on the public internet: a node would tell it
/// which CA it failed to validate, and without internet access it waits for DNS. The service's
/// https address would be worse: iPXE then validates the same failing certificate again for the
/// nested download, and again for that one's, which (measured) takes about a minute per try
/// and ends in a cancelled download instead of the certificate's own error. Plain http to the
/// service fails at once (a TLS listener drops the plaintext request; a plain listener answers
/// 404, as it serves no cross-signatures), iPXE counts that failure as irrelevant, and the node
/// reports the certificate's real problem.
pub fn crosscert_url(server: &ServerUrl) -> String {
    let rest = server.as_str().strip_prefix("https://").unwrap_or(server.as_str());
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    format!("http://{rest}/crosscert")
}

/// A failure of the request to the boot service that the script explains on the console.
///
/// iPXE reports a failure as a 32-bit error number (`${errno}`, the `https://ipxe.org/XXXXXXXX`
/// in its own message): bits 30-24 the POSIX error, 23-13 the source file, 12-8 a number that
/// tells the errors of one file apart, 7-0 the firmware platform's own status code. The numbers
/// below were read from iPXE's source (`src/crypto/x509.c`, `src/net/tls.c`, `src/net/tcp.c`,
/// `src/net/udp/dns.c`, `src/crypto/asn1.c`, at the commit Debian's build is made from) and
/// checked by booting the shipped EFI build against certificates with each problem (see
/// docs/TLS.md).
pub struct KnownFailure {
    /// The script label the failure jumps to (for permanent ones) and its name in the docs.
    pub label: &'static str,
    /// The error number without the platform byte: `(posix << 24) | file | (uniq << 8)`.
    pub code: u32,
    /// The platform bytes: UEFI (EFI_STATUS low bits with the error bit) and BIOS (PXENV status).
    pub efi: u8,
    pub bios: u8,
    /// Certificate problems do not go away by asking again: the script boots the local disk at
    /// once. Connection problems are retried.
    pub permanent: bool,
    /// The console line: what failed and what to fix. Plain words only (no `$ { } ; & | # " '`).
    pub message: &'static str,
}

impl KnownFailure {
    /// The values `${errno}` shows for this failure, UEFI first.
    pub fn errnos(&self) -> [String; 2] {
        [
            format!("{:#x}", self.code | self.efi as u32),
            format!("{:#x}", self.code | self.bios as u32),
        ]
    }
}

const X509_EACCES: u32 = 0x0216_e000;
const EFI_ACCESS_DENIED: u8 = 0x8f;
const PXE_ACCESS_VIOLATION: u8 = 0x3c;

/// The failures the script names, in the order it tests them.
pub const KNOWN_FAILURES: &[KnownFailure] = &[
    KnownFailure {
        label: "tls_untrusted",
        // x509.c EACCES_USELESS "No usable certificates": nothing in the chain is trusted.
        code: X509_EACCES | 0x0b00,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service certificate is not signed by a CA this machine trusts. Fix: enroll your CA in the firmware TLS CA list (UEFI TlsCaCertificate), see docs/TLS.md",
    },
    KnownFailure {
        label: "tls_untrusted_root",
        // x509.c EACCES_UNTRUSTED "Untrusted root certificate".
        code: X509_EACCES | 0x0600,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service certificate chain ends at a root this machine does not trust. Fix: enroll that CA in the firmware TLS CA list (UEFI TlsCaCertificate), see docs/TLS.md",
    },
    KnownFailure {
        label: "tls_name",
        // x509.c EACCES_WRONG_NAME "Incorrect certificate name".
        code: X509_EACCES | 0x0a00,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service certificate does not name the host of the server URL. Fix: reissue it with that IP or DNS name in subjectAltName (bootforge tls check)",
    },
    KnownFailure {
        label: "tls_clock",
        // x509.c EACCES_EXPIRED "Expired (or not yet valid)", with 12.5 h of leeway.
        code: X509_EACCES | 0x0400,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service certificate is expired or not yet valid by this machine clock. Fix: set the firmware clock to UTC (within 12 h), or renew the certificate",
    },
    KnownFailure {
        label: "tls_ocsp",
        // x509.c EACCES_OCSP_REQUIRED "OCSP check required".
        code: X509_EACCES | 0x0900,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service certificate names an OCSP responder iPXE could not use. Fix: issue it without an OCSP URL (authorityInfoAccess), see bootforge tls check",
    },
    KnownFailure {
        label: "tls_refused",
        // tls.c EPERM_ALERT "Received fatal alert": the server found nothing in common with
        // iPXE (an ECDSA certificate, TLS 1.2 turned off, no AES-GCM or AES-CBC suite).
        code: 0x410d_e100,
        efi: EFI_ACCESS_DENIED,
        bios: PXE_ACCESS_VIOLATION,
        permanent: true,
        message: "TLS: the service refused the handshake. Fix: an RSA certificate (iPXE has no ECDSA) and TLS 1.2 on, see bootforge tls check",
    },
    KnownFailure {
        label: "tls_algorithm",
        // asn1.c ENOTSUP_ALGORITHM: a signature or key algorithm iPXE lacks (an EC CA).
        code: 0x3c00_e100,
        efi: 0x83,
        bios: 0x03,
        permanent: true,
        message: "TLS: the service certificate chain uses an algorithm iPXE lacks (ECDSA). Fix: RSA keys and RSA signatures from the certificate up to the CA",
    },
    KnownFailure {
        label: "tls_cipher",
        // tls.c ENOTSUP_CIPHER "Unsupported cipher".
        code: 0x3c0d_e100,
        efi: 0x83,
        bios: 0x03,
        permanent: true,
        message: "TLS: the service chose a cipher iPXE lacks. Fix: offer ECDHE-RSA-AES-GCM (bootforge serve does)",
    },
    KnownFailure {
        label: "refused",
        // tcp.c ECONNRESET: nothing listens on that port (the connection was reset). An OCSP
        // responder named in the certificate that nothing answers on fails the same way.
        code: 0x0f0a_6000,
        efi: 0x95,
        bios: 0x39,
        permanent: false,
        message: "connection refused. Fix: check the port in the server URL and that bootforge serve listens there (--listen-tls for https)",
    },
    KnownFailure {
        label: "timeout",
        // tcp.c ETIMEDOUT.
        code: 0x4c0a_6000,
        efi: 0x92,
        bios: 0x35,
        permanent: false,
        message: "no answer from the service address (timed out). Fix: check the address, gateway and firewall",
    },
    KnownFailure {
        label: "dns",
        // dns.c ENXIO_NO_RECORD: the host name does not resolve.
        code: 0x3e11_6100,
        efi: 0x8e,
        bios: 0x3b,
        permanent: false,
        message: "the host name of the server URL does not resolve. Fix: check the dns column, or use an IP address",
    },
];

/// After a failed request: a jump to the explanation of each known failure (see
/// [`KNOWN_FAILURES`]), whose line names the cause and the fix; permanent failures then boot the
/// local disk without retrying, the others retry. Any other failure keeps iPXE's own message
/// (printed by `chain` just before) and is retried.
fn write_failure_reasons(w: &mut String) {
    for failure in KNOWN_FAILURES {
        for errno in failure.errnos() {
            line(w, &format!("iseq ${{bootforge-err}} {errno} && goto fail_{} ||", failure.label));
        }
    }
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

/// The BIOS script of an ISO built with `--uefi-only` for an `https://` service: the BIOS iPXE
/// (Debian's `ipxe.lkrn`) trusts only iPXE's own root CA, so instead of a request that can only
/// fail, one line says why and what to do, and the machine boots its local disk.
pub fn bios_cannot_https_script(medium: Medium) -> String {
    let mut s = String::from("#!ipxe\n");
    line(
        &mut s,
        "echo bootforge: this machine booted the medium in BIOS mode, whose iPXE cannot verify the https boot service (built with --uefi-only). Fix: boot it in UEFI mode, or give it an http server (docs/TLS.md)",
    );
    s.push_str(&local_boot_commands(LocalBoot::Auto, medium));
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
