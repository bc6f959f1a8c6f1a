//! Every node's boot medium by URL: `GET /media/{host}.iso`, `.usb.img`, `.efi.img`.
//!
//! A BMC mounts virtual media from a URL and reads it in ranges, again at every boot, and it
//! cannot send an `Authorization` header. So the URL carries its own credential: an expiry and
//! an HMAC over everything that decides the bytes (host, format, options, expiry), minted by an
//! authenticated API call (`POST /hosts/{host}/media-url`). Altering any of them, or waiting
//! past the expiry, makes the URL worthless.
//!
//! No image is built per request. The bytes are those `bootforge build` writes for the same
//! row, secret, server URL, options and `SOURCE_DATE_EPOCH`, made the same way: the shape's
//! template (built once, kept in memory) plus the node's patches (see `media::template`), so
//! any range of any node is served from memory, without copying, at any fleet size.

use crate::firmware::{Arch, EfiLoader, Firmware};
use crate::fleet::{self, ImageOptions, NodeMedium};
use crate::inventory::{Node, ServerUrl};
use crate::media::{Format, Templates};
use crate::script::Medium;
use crate::token::Secret;

/// The longest a minted URL may live (a BMC re-reads attached media at every boot, so attached
/// media need a long life; re-attaching mints a fresh URL).
pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;
/// The life of a URL when the caller does not say.
pub const DEFAULT_TTL_SECS: u64 = 7 * 24 * 3600;
/// The date of served images when `SOURCE_DATE_EPOCH` is not set (2023-11-14 22:13:20 UTC): a
/// fixed one, so every restart and every instance serves the same bytes and validators.
pub const DEFAULT_EPOCH: u64 = 1_700_000_000;
/// Templates kept per loader flavour (a fleet uses one or two shapes per format).
const TEMPLATES_KEPT: usize = 16;

/// What decides a node's image besides its row, as a `/media/` URL's query says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOptions {
    pub format: Format,
    /// Each once, in [`Arch::ALL`] order.
    pub arches: Vec<Arch>,
    /// How an ISO is attached (`cd` or `usb`); `build --iso-medium`.
    pub medium: Medium,
    pub loader: EfiLoader,
}

impl MediaOptions {
    /// `build`'s defaults for `format`.
    pub fn new(format: Format) -> MediaOptions {
        MediaOptions {
            format,
            arches: vec![Arch::X86_64],
            medium: Medium::Cd,
            loader: EfiLoader::Ipxe,
        }
    }

    /// Options from query values (`arch`, `medium`, `efi_loader`); absent ones take `build`'s
    /// defaults. The message names the parameter.
    pub fn parse(
        format: Format,
        arch: Option<&str>,
        medium: Option<&str>,
        loader: Option<&str>,
    ) -> Result<MediaOptions, String> {
        let mut opts = MediaOptions::new(format);
        if let Some(list) = arch {
            let mut arches = Vec::new();
            for a in list.split(',') {
                arches.push(a.parse::<Arch>().map_err(|e| format!("arch: {e}"))?);
            }
            opts.arches = Arch::ALL.into_iter().filter(|a| arches.contains(a)).collect();
            if opts.arches.is_empty() {
                return Err("arch: give one or more of x86_64, arm64".into());
            }
        }
        if let Some(m) = medium {
            opts.medium = match m {
                "cd" => Medium::Cd,
                "usb" => Medium::Usb,
                _ => return Err(format!("medium: {m:?} is not cd or usb")),
            };
        }
        if let Some(l) = loader {
            opts.loader = l.parse().map_err(|e| format!("efi_loader: {e}"))?;
            if opts.loader == EfiLoader::SnpOnly && opts.arches.contains(&Arch::Arm64) {
                return Err("efi_loader: snponly exists for x86_64 only".into());
            }
        }
        Ok(opts)
    }

    /// The options as a query, in one canonical order: what the signature covers.
    pub fn query(&self) -> String {
        let arches: Vec<&str> = self.arches.iter().map(|a| a.as_str()).collect();
        format!(
            "arch={}&medium={}&efi_loader={}",
            arches.join(","),
            self.medium.as_str(),
            self.loader.as_str()
        )
    }
}

/// `HOST.iso`, `HOST.usb.img` or `HOST.efi.img` → the host (not yet validated) and format.
pub fn parse_file(name: &str) -> Option<(&str, Format)> {
    [(".usb.img", Format::Usb), (".efi.img", Format::Efi), (".iso", Format::Iso)]
        .into_iter()
        .find_map(|(suffix, f)| name.strip_suffix(suffix).map(|h| (h, f)))
        .filter(|(h, _)| !h.is_empty())
}

/// Why a `/media/` URL was refused (answered 403, audited by this name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    Expired,
    BadSignature,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Expired => "expired",
            Refusal::BadSignature => "bad-signature",
        }
    }
}

/// Mints and checks media URL signatures.
pub struct Signer {
    key: Secret,
    /// Whether the key is the process's own (no `--secret-file`): URLs die with the process.
    pub ephemeral: bool,
}

impl Signer {
    /// A key derived from the node secret (so every instance sharing it accepts the others'
    /// URLs), or a random one when there is none.
    pub fn new(secret: Option<&Secret>) -> anyhow::Result<Signer> {
        match secret {
            Some(s) => Ok(Signer { key: s.derive("media-url"), ephemeral: false }),
            None => {
                let bytes: [u8; 32] = rand::random();
                Ok(Signer { key: Secret::new(bytes.to_vec())?, ephemeral: true })
            }
        }
    }

    fn message(host: &str, opts: &MediaOptions, exp: u64) -> String {
        format!("bootforge media v1\n{host}\n{}\n{}\n{exp}", opts.format, opts.query())
    }

    pub fn sign(&self, host: &str, opts: &MediaOptions, exp: u64) -> String {
        self.key.node_token(&Self::message(host, opts, exp))
    }

    /// Checks `exp` and `sig` as a URL presents them, at `now` (seconds).
    pub fn check(
        &self,
        host: &str,
        opts: &MediaOptions,
        exp: Option<&str>,
        sig: Option<&str>,
        now: u64,
    ) -> Result<(), Refusal> {
        let (Some(exp), Some(sig)) = (exp, sig) else { return Err(Refusal::Unsigned) };
        let exp: u64 = exp.parse().map_err(|_| Refusal::BadSignature)?;
        if !self.key.verify(&Self::message(host, opts, exp), sig) {
            return Err(Refusal::BadSignature);
        }
        if exp <= now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// What the service needs to serve media: templates per loader flavour, the epoch and the key.
pub struct Media {
    pub signer: Signer,
    /// `SOURCE_DATE_EPOCH` of every served image.
    pub epoch: u64,
    ipxe: Templates,
    snponly: Templates,
    /// The payload files of both loader flavours, with their origins and SHA-256 pins.
    firmware: Vec<crate::firmware::FirmwareFile>,
}

impl Media {
    pub fn new(
        firmware_dir: Option<&std::path::Path>,
        epoch: u64,
        signer: Signer,
    ) -> anyhow::Result<Media> {
        let fw = |loader| match firmware_dir {
            Some(dir) => Firmware::from_dir(dir, loader),
            None => Ok(Firmware::embedded(loader)),
        };
        let (ipxe, snponly) = (fw(EfiLoader::Ipxe)?, fw(EfiLoader::SnpOnly)?);
        let mut firmware = ipxe.versions();
        for f in snponly.versions() {
            if !firmware.iter().any(|g| g.name == f.name) {
                firmware.push(f);
            }
        }
        Ok(Media {
            signer,
            epoch,
            ipxe: Templates::new(ipxe, TEMPLATES_KEPT),
            snponly: Templates::new(snponly, TEMPLATES_KEPT),
            firmware,
        })
    }

    /// The signed URL of `host`'s medium under `base`.
    pub fn url(&self, base: &str, host: &str, opts: &MediaOptions, exp: u64) -> String {
        let sig = self.signer.sign(host, opts, exp);
        let file = opts.format.file_name(host);
        format!(
            "{}/media/{}?{}&exp={exp}&sig={sig}",
            base.trim_end_matches('/'),
            crate::serve::util::encode(&file),
            opts.query()
        )
    }

    /// `node`'s image: a template (built on first use) and the node's patches.
    pub fn image(
        &self,
        node: &Node,
        server: &ServerUrl,
        secret: Option<&Secret>,
        opts: &MediaOptions,
    ) -> anyhow::Result<NodeMedium> {
        let templates = match opts.loader {
            EfiLoader::Ipxe => &self.ipxe,
            EfiLoader::SnpOnly => &self.snponly,
        };
        let options = ImageOptions {
            format: opts.format,
            arches: &opts.arches,
            iso_medium: opts.medium,
            epoch: self.epoch,
        };
        fleet::node_medium(templates, node, server, secret, &options)
    }

    /// The firmware payload files and their pins, for `/status`.
    pub fn firmware_versions(&self) -> &[crate::firmware::FirmwareFile] {
        &self.firmware
    }

    /// Templates held, for `/status`.
    pub fn templates(&self) -> usize {
        self.ipxe.len() + self.snponly.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_options_parse() {
        assert_eq!(parse_file("n1.iso"), Some(("n1", Format::Iso)));
        assert_eq!(parse_file("n1.usb.img"), Some(("n1", Format::Usb)));
        assert_eq!(parse_file("n1.efi.img"), Some(("n1", Format::Efi)));
        assert_eq!(parse_file(".iso"), None);
        assert_eq!(parse_file("n1.img"), None);
        let o = MediaOptions::parse(Format::Iso, Some("arm64,x86_64"), Some("usb"), None).unwrap();
        assert_eq!(o.arches, vec![Arch::X86_64, Arch::Arm64]);
        assert_eq!(o.query(), "arch=x86_64,arm64&medium=usb&efi_loader=ipxe");
        assert!(MediaOptions::parse(Format::Iso, Some("mips"), None, None)
            .unwrap_err()
            .starts_with("arch:"));
        assert!(MediaOptions::parse(Format::Iso, None, Some("esp"), None).is_err());
        assert!(MediaOptions::parse(Format::Iso, Some("arm64"), None, Some("snponly")).is_err());
    }

    #[test]
    fn signatures_cover_host_options_and_expiry() {
        let secret = Secret::new(b"k".to_vec()).unwrap();
        let s = Signer::new(Some(&secret)).unwrap();
        let o = MediaOptions::new(Format::Iso);
        let sig = s.sign("n1", &o, 2000);
        let check = |h: &str, o: &MediaOptions, exp: &str, sig: &str, now| {
            s.check(h, o, Some(exp), Some(sig), now)
        };
        assert_eq!(check("n1", &o, "2000", &sig, 1000), Ok(()));
        assert_eq!(check("n1", &o, "2000", &sig, 2000), Err(Refusal::Expired));
        assert_eq!(check("n2", &o, "2000", &sig, 1000), Err(Refusal::BadSignature));
        assert_eq!(check("n1", &o, "2001", &sig, 1000), Err(Refusal::BadSignature));
        let usb = MediaOptions { medium: Medium::Usb, ..o.clone() };
        assert_eq!(check("n1", &usb, "2000", &sig, 1000), Err(Refusal::BadSignature));
        let efi = MediaOptions::new(Format::Efi);
        assert_eq!(check("n1", &efi, "2000", &sig, 1000), Err(Refusal::BadSignature));
        assert_eq!(s.check("n1", &o, None, Some(&sig), 1000), Err(Refusal::Unsigned));
        // The media key is not the node-token key.
        assert_ne!(sig, secret.node_token("n1"));
        assert!(!secret.verify(&Signer::message("n1", &o, 2000), &sig));
    }
}
