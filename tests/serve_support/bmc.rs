//! The real boot service set up for BMC tests (included with `#[path]` next to `mod common;`):
//! an inventory of rows with a `bmc` column, node and API tokens, and the emulator's
//! credentials; shared by `tests/bmc_attach.rs` and `tests/libvirt_e2e.rs`.
#![allow(dead_code)]

use bootforge::serve::{Config, Server};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub const REIMAGE_TOKEN: &str = "bmc-reimage-token-1234";
pub const READ_TOKEN: &str = "bmc-read-token-5678";
pub const ADMIN_TOKEN: &str = "bmc-admin-token-9012";

/// A service over `rows` (CSV lines after the header `hostname,ip,gateway,dns,mac,profile,bmc`)
/// with node tokens, API tokens and the emulator's credentials. The nodes' scripts ask
/// `public_url`; BMCs are handed URLs under the service's loopback address.
pub struct BmcService {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub base: String,
    pub token_file: PathBuf,
}

impl BmcService {
    pub fn start(rows: &str, port: u16, public_url: Option<&str>, credentials: bool) -> BmcService {
        BmcService::start_with(rows, port, public_url, credentials, true)
    }

    pub fn start_with(
        rows: &str,
        port: u16,
        public_url: Option<&str>,
        credentials: bool,
        secret: bool,
    ) -> BmcService {
        BmcService::start_config(rows, port, public_url, credentials, secret, |_, _| {})
    }

    /// [`BmcService::start_with`], with `tweak` changing the configuration (and writing into
    /// the state folder, the second argument) before the service starts.
    pub fn start_config(
        rows: &str,
        port: u16,
        public_url: Option<&str>,
        credentials: bool,
        secret: bool,
        tweak: impl FnOnce(&mut Config, &std::path::Path),
    ) -> BmcService {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let inventory = d.join("nodes.csv");
        std::fs::write(&inventory, format!("hostname,ip,gateway,dns,mac,profile,bmc\n{rows}"))
            .unwrap();
        let profiles = d.join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        crate::common::copy_tree(
            &crate::common::repo_path("tests/profiles/e2e"),
            &profiles.join("e2e"),
        );
        std::fs::write(d.join("secret"), b"bmc-test-secret\n").unwrap();
        let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        std::fs::write(
            d.join("tokens"),
            format!(
                "ops reimage {}\nviewer read {}\nboss admin {}\n",
                sha(REIMAGE_TOKEN),
                sha(READ_TOKEN),
                sha(ADMIN_TOKEN)
            ),
        )
        .unwrap();
        let mut config = Config::new(inventory, profiles, d.join("state"));
        config.listen = format!("127.0.0.1:{port}");
        config.secret_file = secret.then(|| d.join("secret"));
        config.tokens_file = Some(d.join("tokens"));
        config.workers = 8;
        config.media_epoch = Some(1_700_000_000);
        config.public_url = public_url.map(|u| u.parse().unwrap());
        config.media_base_url = Some(format!("http://127.0.0.1:{port}").parse().unwrap());
        if credentials {
            let pass = d.join("bmc.pass");
            std::fs::write(&pass, "password\n").unwrap();
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
            let creds = d.join("bmc-credentials");
            // The emulator speaks plain HTTP on loopback: the line must allow it.
            std::fs::write(&creds, format!("* admin {} allow-http\n", pass.display())).unwrap();
            std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
            config.bmc_credentials = Some(creds);
        }
        // No background hardware reads unless a test asks for them (tests/bmc_state.rs): tests
        // that count what reached a BMC, or change the credentials file after the start, must
        // see only their own requests.
        config.bmc_refresh = Duration::ZERO;
        tweak(&mut config, &d.join("state"));
        let server = Server::start(config).expect("the service starts");
        let base = format!("http://{}", server.local_addr());
        let token_file = d.join("token");
        std::fs::write(&token_file, format!("{REIMAGE_TOKEN}\n")).unwrap();
        BmcService { dir, server: Some(server), base, token_file }
    }

    /// Runs `bootforge ARGS --server BASE --token-file T`: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(crate::common::bootforge_bin())
            .args(args)
            .args(["--server", &self.base, "--token-file"])
            .arg(&self.token_file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The audit log once it holds `needle` (notes are written by a writer thread).
    pub fn audit_with(&self, needle: &str) -> String {
        for _ in 0..200 {
            let log = self.audit();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.audit()
    }

    /// The audit log as it is now.
    pub fn audit(&self) -> String {
        crate::common::service::audit_log(&self.dir.path().join("state"))
    }

    /// `host`'s first `boot` record, if any.
    pub fn boot_record(&self, host: &str) -> Option<serde_json::Value> {
        self.audit()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "boot" && e["host"] == host)
    }
}

impl Drop for BmcService {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}
