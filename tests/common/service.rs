//! `bootforge serve` as a child process for the tests that boot a machine into a real service
//! (`tests/cycle.rs`, `tests/installer.rs`), and the small helpers around it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bootforge_bin;

/// The SHA-256 of `t` in hex, as a tokens-file line holds an API token.
pub fn sha_hex(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// A port on 127.0.0.1 that was free a moment ago (the media must know the port before the
/// service starts, because `build` bakes `--server` into the ISO).
pub fn free_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    s.local_addr().expect("throwaway address").port()
}

/// Copies the folder `from` to `to` (made if missing), files and subfolders.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy a profile file");
        }
    }
}

/// `bootforge serve` as a child process; stopped by its PID when dropped (also on panic).
pub struct Service {
    child: Option<Child>,
    pub base: String,
    stderr_path: PathBuf,
    /// The service's state folder (its SQLite database holds the audit log).
    pub state_dir: PathBuf,
    /// An API token of role `read` or higher, for [`Service::events`].
    read_token: String,
}

/// What `bootforge serve` is started with. The state folder and the service's stderr go into
/// `dir`.
pub struct ServeInputs<'a> {
    pub dir: &'a Path,
    pub inventory: &'a Path,
    pub profiles: &'a Path,
    pub secret: &'a Path,
    pub tokens: &'a Path,
    /// A token of `tokens` with role `read` or higher.
    pub read_token: &'a str,
    pub assets: Option<&'a Path>,
    pub port: u16,
    /// Also a TLS listener, whose address becomes the `--public-url` the guest is given.
    pub tls: Option<TlsInputs<'a>>,
}

/// `serve --listen-tls 127.0.0.1:PORT --tls-cert CHAIN --tls-key KEY`.
pub struct TlsInputs<'a> {
    pub chain: &'a Path,
    pub key: &'a Path,
    pub port: u16,
}

impl Service {
    /// Starts the service on 127.0.0.1:PORT with `--public-url http://10.0.2.2:PORT` (the host
    /// as a QEMU guest on the user network reaches it) and waits until it answers `/healthz`.
    /// With [`ServeInputs::tls`], a TLS listener too, and the public URL is its https address;
    /// the harness's own requests (API, `/healthz`) keep using the plain listener.
    pub fn start(inputs: &ServeInputs<'_>) -> Service {
        let port = inputs.port;
        let state = inputs.dir.join("state");
        let stderr_path = inputs.dir.join("serve.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create the service log");
        let mut cmd = Command::new(bootforge_bin());
        cmd.arg("serve").arg("--inventory").arg(inputs.inventory);
        cmd.arg("--profiles").arg(inputs.profiles).arg("--state-dir").arg(&state);
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "4"]);
        // The guest reaches the host's loopback at 10.0.2.2 (QEMU user network): the URL the
        // media were built with, and the one rendered URLs must carry.
        match &inputs.tls {
            Some(tls) => {
                cmd.args(["--listen-tls", &format!("127.0.0.1:{}", tls.port)]);
                cmd.arg("--tls-cert").arg(tls.chain).arg("--tls-key").arg(tls.key);
                cmd.args(["--public-url", &format!("https://10.0.2.2:{}", tls.port)]);
            }
            None => {
                cmd.args(["--public-url", &format!("http://10.0.2.2:{port}")]);
            }
        }
        cmd.arg("--secret-file").arg(inputs.secret).arg("--tokens-file").arg(inputs.tokens);
        if let Some(assets) = inputs.assets {
            cmd.arg("--assets").arg(assets);
        }
        cmd.env("BOOTFORGE_LOG", "info");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("start bootforge serve");
        let mut svc = Service {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            stderr_path,
            state_dir: state.clone(),
            read_token: inputs.read_token.to_string(),
        };
        svc.wait_listening();
        svc
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("bootforge serve exited at start ({status})\n{}", self.logs());
            }
            let healthy = ureq::get(&format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok();
            if healthy {
                return;
            }
            if Instant::now() >= deadline {
                panic!("bootforge serve did not answer /healthz within 20 s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One API request with `token`; returns status and parsed JSON body.
    pub fn api(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let result = ureq::request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(10))
            .call();
        let (status, body) = match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}\n{}", self.logs()),
        };
        let json = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("{method} {path}: answer is not JSON ({e}): {body}\n{}", self.logs())
        });
        (status, json)
    }

    /// Every audit record, through `GET /events` (following `next`).
    pub fn events(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut since = 0u64;
        loop {
            let (status, body) =
                self.api("GET", &format!("/events?since={since}"), &self.read_token);
            assert_eq!(status, 200, "GET /events: {body}\n{}", self.logs());
            let events = body["events"].as_array().cloned().unwrap_or_default();
            let next = body["next"].as_u64().expect("next offset");
            if events.is_empty() || next == since {
                return all;
            }
            all.extend(events);
            since = next;
        }
    }

    /// The service's stderr and the audit log as stored, for panic messages (read from the files,
    /// so they are there even if the service died).
    pub fn logs(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let audit = audit_log(&self.state_dir);
        format!(
            "--- bootforge serve stderr ---\n{}\n--- audit log ---\n{}\n--- end of service logs ---",
            stderr.trim_end(),
            audit.trim_end()
        )
    }

    /// Stops the service: SIGTERM to its PID, then SIGKILL if it has not exited after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The audit log of the service whose state folder is `state_dir`, as JSON lines, read from its
/// database while it runs (empty before the service created it).
pub fn audit_log(state_dir: &Path) -> String {
    if !state_dir.join(bootforge::serve::store::SQLITE_FILE).exists() {
        return String::new();
    }
    let url = bootforge::serve::store::Store::default_url(state_dir);
    bootforge::serve::store::audit::dump(&url).unwrap_or_else(|e| format!("(cannot read: {e})"))
}
