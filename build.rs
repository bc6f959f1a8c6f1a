//! Embeds the pinned firmware payload (vendor/ipxe/) into the binary, so `bootforge` is one
//! self-contained file with no run-time dependency on host tools or packages.
//!
//! Every file is checked against vendor/ipxe/SHA256SUMS before it is embedded: a binary can never
//! carry a loader other than the one that was pinned and tested.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::Path;

/// The files the media writers need, in the order of the pins file.
const PAYLOAD: &[&str] = &[
    "ipxe.lkrn",
    "ipxe-amd64.efi",
    "ipxe-arm64.efi",
    "snponly.efi",
    "isolinux.bin",
    "ldlinux.c32",
    "isohdpfx.bin",
];

fn main() {
    // Read at run time, not baked in with env!, so a worktree or a moved checkout embeds its own files.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("vendor/ipxe");
    let pins_path = dir.join("SHA256SUMS");
    println!("cargo:rerun-if-changed={}", pins_path.display());
    let pins = std::fs::read_to_string(&pins_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", pins_path.display()));

    let mut generated = String::new();
    for name in PAYLOAD {
        let path = dir.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(&path).unwrap_or_else(|_| {
            panic!(
                "\n\nfirmware file {} is missing.\nRun `scripts/fetch-firmware` once: it fetches \
                 Debian's iPXE and ISOLINUX packages and checks them against the pins.\n\n",
                path.display()
            )
        });
        let expected = pins
            .lines()
            .filter_map(|line| line.split_once("  "))
            .find(|(_, file)| file.trim() == *name)
            .map(|(hash, _)| hash.to_string())
            .unwrap_or_else(|| panic!("{name} has no pin in {}", pins_path.display()));
        let actual = hex(&Sha256::digest(&bytes));
        assert!(
            actual == expected,
            "\n\n{} does not match its pin (expected {expected}, found {actual}).\nRun \
             `scripts/fetch-firmware --force` to fetch the pinned version again.\n\n",
            path.display()
        );
        let ident = name.replace(['.', '-'], "_").to_uppercase();
        writeln!(
            generated,
            "/// `{name}`, SHA-256 `{actual}`.\npub const {ident}: &[u8] = include_bytes!({:?});\npub const {ident}_SHA256: &str = {actual:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("firmware_payload.rs");
    std::fs::write(out, generated).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}
