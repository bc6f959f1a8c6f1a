//! The Redfish test harness (included by `tests/redfish.rs` with `#[path]`, and by
//! `serve_support/mod.rs` as `support::sushy`): a real sushy-tools emulator on a loopback port,
//! a file server for the images it downloads, a recording proxy, and a throwaway CA.
//!
//! * [`Emulator::start`] runs `sushy-emulator --fake` from the virtualenv `scripts/setup --test`
//!   creates (`target/sushy-venv`, or `BOOTFORGE_SUSHY_VENV`), with a config file giving its
//!   fake systems, an htpasswd file (bcrypt, the only format it accepts), its own state folder
//!   (by default it keeps state in a shared `/tmp/sushy-emulator`, which would leak between
//!   tests), and optionally a TLS certificate. It waits until `/redfish/v1/` answers, and kills
//!   the emulator on drop. A missing virtualenv FAILS the test, naming the setup step: a Redfish
//!   test that skips would pass for code nobody ran.
//! * [`ImageServer`]: the fake driver's InsertMedia *downloads* the image URL (sushy-tools'
//!   `StaticDriver.insert_image` fetches it with `requests.get` into a temp file) and fails the
//!   action when it cannot (400 for a 4xx, 502 for a 5xx). So images must really be served;
//!   this server counts the requests for each path.
//! * [`Proxy`]: a pass-through HTTP proxy in front of the emulator that records each request
//!   (method, path, body), for what the emulator does not show back (it always reports
//!   `BootSourceOverrideEnabled: Continuous`, whatever was sent). With [`Proxy::tasks`] it
//!   answers a successful InsertMedia with `202 Accepted` and the emulator's own task
//!   (`/redfish/v1/TaskService/Tasks/42`) as monitor, as BMCs with task support do; and with
//!   [`Proxy::etags`] it gives GETs an `ETag` and refuses a PATCH whose `If-Match` differs
//!   (412). The emulator still does every operation. [`Quirks::delay`] makes it a slow BMC, and
//!   [`Quirks::report_image`] makes it report the mounted URL in another encoding;
//!   [`Quirks::report_json`] makes it report more than the fake driver does;
//!   [`Quirks::no_media_certificates`] hides the virtual CD's Certificates (an older BMC).
//! * [`Ca`]: a private CA and a server certificate for 127.0.0.1, made with the `openssl` CLI.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The sushy-tools version `scripts/setup --test` installs.
pub const SUSHY_TOOLS_VERSION: &str = "2.2.0";

/// The virtualenv holding sushy-tools; fails the test loudly when it is missing.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("BOOTFORGE_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sushy-venv"));
    let bin = dir.join("bin/sushy-emulator");
    if !bin.is_file() {
        panic!(
            "PREREQUISITE MISSING: {} does not exist. Run `scripts/setup --test`: it installs the \
             Debian package `python3-venv`, creates the virtualenv {} and installs \
             sushy-tools=={SUSHY_TOOLS_VERSION} into it with pip. Redfish tests never skip: a \
             client not run against a BMC emulator is not tested.",
            bin.display(),
            dir.display()
        );
    }
    dir
}

/// Fails the test when `cmd` is not on PATH, naming its Debian package.
pub fn require(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join(cmd).is_file());
    if !found {
        panic!(
            "PREREQUISITE MISSING: `{cmd}` is not on PATH. Install the Debian package `{package}` \
             (scripts/setup --test does). Redfish tests never skip."
        );
    }
}

/// A free loopback port for a server a test starts later (the emulator, a proxy, the service).
///
/// Taken below the kernel's ephemeral range (32768-60999 on Linux): ports that `bind(:0)` hands
/// to other tests' listeners and client connections never land there, so the port stays free
/// in the seconds between choosing it and the server binding it (a port from `bind(:0)` was
/// once taken in that gap). Each call of a process takes the next port from a start that
/// depends on the process id; a port something already holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 600 * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One fake system of the emulator.
#[derive(Debug, Clone)]
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
    /// `On` or `Off`.
    pub power: &'static str,
    /// MACs of its network interfaces: the fake driver reports each as an `EthernetInterface`
    /// (`MACAddress`, `PermanentMACAddress`, `Status.State: Enabled`; no `LinkStatus`, no
    /// addresses).
    pub nics: Vec<String>,
}

impl FakeSystem {
    /// System number `i`, with a UUID derived from it.
    pub fn numbered(i: usize, power: &'static str) -> FakeSystem {
        FakeSystem {
            uuid: format!("8f1c2f6e-0000-4000-8000-{i:012}"),
            name: format!("node{i:02}"),
            power,
            nics: Vec::new(),
        }
    }
}

/// How to start an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub systems: Vec<FakeSystem>,
    /// (user, password) pairs for basic authentication.
    pub users: Vec<(String, String)>,
    /// (certificate, key) PEM files: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl EmulatorConfig {
    /// `n` powered-on systems, one user `admin` with password `password`.
    pub fn new(n: usize) -> EmulatorConfig {
        EmulatorConfig {
            systems: (1..=n).map(|i| FakeSystem::numbered(i, "On")).collect(),
            users: vec![("admin".into(), "password".into())],
            tls: None,
        }
    }
}

/// A running `sushy-emulator --fake`.
pub struct Emulator {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub base: String,
    pub port: u16,
    pub systems: Vec<FakeSystem>,
    log: PathBuf,
}

impl Emulator {
    /// Starts an emulator and waits until it answers; fails the test with its log if it does
    /// not.
    pub fn start(config: EmulatorConfig) -> Emulator {
        let mut last = String::new();
        for _ in 0..3 {
            match Emulator::try_start(&config) {
                Ok(e) => return e,
                // Another process took the port between the probe and the bind: try another.
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("sushy-emulator did not start; its log:\n{log}"),
            }
        }
        panic!("sushy-emulator did not start; its log:\n{last}");
    }

    fn try_start(config: &EmulatorConfig) -> Result<Emulator, String> {
        let venv = venv();
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        write_htpasswd(&venv, &config.users, &htpasswd);
        let systems: Vec<String> = config
            .systems
            .iter()
            .map(|s| {
                format!(
                    "{{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'external_notifier': False, 'nics': [{}]}}",
                    s.uuid,
                    s.name,
                    s.power,
                    s.nics.iter().map(|m| format!("{{'mac': '{m}'}}")).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        let port = free_port();
        let mut conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_STATE_DIR = '{state}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{htpasswd}'\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [\n    {systems}\n]\n",
            state = dir.path().join("state").display(),
            htpasswd = htpasswd.display(),
            systems = systems.join(",\n    "),
        );
        if let Some((cert, key)) = &config.tls {
            conf += &format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            );
        }
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new(venv.join("bin/sushy-emulator"));
        cmd.arg("--fake");
        Emulator::launch(cmd, dir, &conf, scheme, port, config.systems.clone())
    }

    /// Waits up to 30 s for the service root; returns the emulator's log if it exits or never
    /// answers.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log_text()));
            }
            // Ready when *this* emulator says it serves and the port answers. A connect alone
            // is not proof: another process may hold the port while this one is still
            // starting (and then fails to bind), and a test would then talk to a stranger.
            if self.log_text().contains("Running on")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("no answer within 30 s:\n{}", self.log_text()))
    }

    /// The emulator's log so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `BASE/redfish/v1/Systems/UUID` of system `i` (0-based).
    pub fn system_url(&self, i: usize) -> String {
        format!("{}/redfish/v1/Systems/{}", self.base, self.systems[i].uuid)
    }
}

/// Writes an htpasswd file of `users` (bcrypt, the only format the emulator accepts).
fn write_htpasswd(venv: &Path, users: &[(String, String)], path: &Path) {
    let mut lines = String::new();
    for (user, password) in users {
        // Cost 4, the least bcrypt allows: the emulator checks the hash on every request.
        let out = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(rounds=4)).decode())",
                password,
            ])
            .output()
            .expect("run the virtualenv's python");
        assert!(out.status.success(), "bcrypt: {}", String::from_utf8_lossy(&out.stderr));
        lines += &format!("{user}:{}", String::from_utf8_lossy(&out.stdout));
    }
    std::fs::write(path, lines).unwrap();
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sushy-emulator log ({}) ---\n{}", self.base, tail(&self.log_text(), 60));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads one HTTP/1.1 request head and its Content-Length body.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<String>, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request_line = line.trim_end().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        headers.push(h);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((request_line, headers, body))
}

/// A loopback HTTP server for the images the emulator downloads. Paths it knows answer 200
/// with their bytes; `/status/NNN/…` answers NNN; anything else 404. Every request is counted.
pub struct ImageServer {
    pub base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl ImageServer {
    pub fn start(files: &[(&str, Vec<u8>)]) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<HashMap<String, Vec<u8>>> =
            Arc::new(files.iter().map(|(p, b)| (p.to_string(), b.clone())).collect());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let files = files.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let Some((line, _, _)) = read_request(&mut reader) else { return };
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    *counter.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                    let (status, body) = if let Some(b) = files.get(&path) {
                        (200, b.clone())
                    } else if let Some(code) = path.strip_prefix("/status/") {
                        (code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(500), b"no".to_vec())
                    } else {
                        (404, b"not found".to_vec())
                    };
                    let mut out = stream;
                    let _ = write!(
                        out,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if !line.starts_with("HEAD ") {
                        let _ = out.write_all(&body);
                    }
                });
            }
        });
        ImageServer { base, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A request the proxy passed on.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<String>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Behaviour the proxy adds in front of the emulator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quirks {
    /// Answer a successful InsertMedia with 202 and the emulator's task 42 as monitor.
    pub tasks: bool,
    /// Give GETs an ETag and answer 412 to a PATCH whose If-Match is not the current one.
    pub etags: bool,
    /// With `etags`: the first PATCH of each resource finds it changed by someone else (its
    /// ETag moves on, 412), as when two clients race.
    pub etag_race: bool,
    /// Hide the System's `VirtualMedia` link, so virtual media are found only through
    /// `Links.ManagedBy` → Manager → `VirtualMedia` (the iDRAC/iLO layout).
    pub manager_media: bool,
    /// Hold every request this long before passing it on: a slow BMC.
    pub delay: Option<Duration>,
    /// Report the virtual CD's `Image` through this function, as BMCs that hand the URL back
    /// percent-encoded or HTML-escaped do (the emulator itself keeps what it was given).
    pub report_image: Option<fn(&str) -> String>,
    /// Change every JSON answer to a GET through this function, as a BMC that reports more than
    /// the fake driver does (link states, addresses, a serial number) would answer.
    pub report_json: Option<fn(&mut serde_json::Value)>,
    /// Hide the virtual media's `Certificates` link and `VerifyCertificate` (VirtualMedia
    /// before 1.4, as most BMCs still are): a BMC that cannot be given a CA through Redfish.
    pub no_media_certificates: bool,
    /// Refuse (400) a PATCH that switches `VerifyCertificate`, after the CA was accepted: a BMC
    /// whose property is read-only, so an enrollment changes its trust and then fails.
    pub refuse_verify: bool,
}

/// A recording HTTP proxy in front of a plain-HTTP emulator (one request per connection).
pub struct Proxy {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    pub fn start(upstream_port: u16, quirks: Quirks) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        // The ETag of a resource changes with every successful PATCH of it.
        let versions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                let versions = versions.clone();
                std::thread::spawn(move || {
                    proxy_one(stream, upstream_port, quirks, &log, &versions);
                });
            }
        });
        Proxy { base, seen }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn proxy_one(
    stream: TcpStream,
    upstream_port: u16,
    quirks: Quirks,
    log: &Mutex<Vec<Seen>>,
    versions: &Mutex<HashMap<String, u32>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    // ureq keeps connections alive: serve requests until the client closes.
    while let Some((line, headers, body)) = read_request(&mut reader) {
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let seen = Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        log.lock().unwrap().push(seen.clone());
        if let Some(pause) = quirks.delay {
            std::thread::sleep(pause);
        }
        let key = path.trim_end_matches('/').to_string();
        let etag = |v: &HashMap<String, u32>| format!("\"v{}\"", v.get(&key).copied().unwrap_or(0));
        if quirks.etags && method == "PATCH" {
            let mut v = versions.lock().unwrap();
            let raced = quirks.etag_race && !v.contains_key(&format!("raced {key}"));
            if raced {
                v.insert(format!("raced {key}"), 0);
                *v.entry(key.clone()).or_insert(0) += 1;
            }
            let current = etag(&v);
            drop(v);
            if raced || seen.header("If-Match").as_deref() != Some(current.as_str()) {
                let msg = r#"{"error":{"code":"Base.1.0.PreconditionFailed","message":"ETag mismatch","@Message.ExtendedInfo":[{"Message":"The ETag supplied did not match the ETag required to change this resource."}]}}"#;
                let _ = write!(
                    out,
                    "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
                    msg.len()
                );
                continue;
            }
        }
        if quirks.refuse_verify && method == "PATCH" && seen.body.contains("VerifyCertificate") {
            let msg = r#"{"error":{"code":"Base.1.0.PropertyNotWritable","message":"VerifyCertificate is read-only"}}"#;
            let _ = write!(
                out,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
                msg.len()
            );
            continue;
        }
        // Forward, one upstream connection per request.
        let mut up = TcpStream::connect(("127.0.0.1", upstream_port)).unwrap();
        let mut head = format!("{line}\r\n");
        for h in &headers {
            if !h.to_ascii_lowercase().starts_with("connection:") {
                head += &format!("{h}\r\n");
            }
        }
        head += "Connection: close\r\n\r\n";
        // The request in one write, then a half-close. The emulator's server (werkzeug), after
        // answering, drains whatever the client sent that the handler did not read, and it
        // reads until EOF; handlers that ignore their body (EjectMedia) leave it there when it
        // arrives while they run. Without the EOF it would never close, and this proxy, which
        // reads the answer to EOF, would wait forever (seen once in CI as a 30 s client
        // timeout).
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        up.write_all(&request).unwrap();
        let _ = up.shutdown(std::net::Shutdown::Write);
        // A safety net: an upstream that still never closes fails the request loudly.
        let _ = up.set_read_timeout(Some(Duration::from_secs(20)));
        let mut answer = Vec::new();
        if let Err(e) = up.read_to_end(&mut answer) {
            panic!("proxy: no complete answer from the emulator for {line}: {e}");
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (resp_head, resp_body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut resp_body = resp_body.to_string();
        let is_system =
            key.strip_prefix("/redfish/v1/Systems/").is_some_and(|id| !id.contains('/'));
        if quirks.manager_media && method == "GET" && is_system {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&resp_body) {
                v.as_object_mut().unwrap().remove("VirtualMedia");
                resp_body = v.to_string();
            }
        }
        let is_media = key.contains("/VirtualMedia/") && !key.contains("/Certificates");
        if quirks.no_media_certificates && method == "GET" && is_media {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&resp_body) {
                if let Some(o) = v.as_object_mut() {
                    o.remove("Certificates");
                    o.remove("VerifyCertificate");
                }
                resp_body = v.to_string();
            }
        }
        if let Some(report) = quirks.report_image.filter(|_| method == "GET") {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&resp_body) {
                if let Some(image) = v.get("Image").and_then(|i| i.as_str()).map(report) {
                    v["Image"] = serde_json::Value::String(image);
                    resp_body = v.to_string();
                }
            }
        }
        if let Some(change) = quirks.report_json.filter(|_| method == "GET") {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&resp_body) {
                change(&mut v);
                resp_body = v.to_string();
            }
        }
        let mut resp_lines = resp_head.lines();
        let mut status_line = resp_lines.next().unwrap_or("HTTP/1.1 502 Bad Gateway").to_string();
        let status: u16 = status_line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut resp_headers: Vec<String> = resp_lines
            .filter(|h| {
                let l = h.to_ascii_lowercase();
                !l.starts_with("connection:") && !l.starts_with("content-length:")
            })
            .map(str::to_string)
            .collect();
        if quirks.etags {
            let mut v = versions.lock().unwrap();
            if method == "PATCH" && (200..300).contains(&status) {
                *v.entry(key.clone()).or_insert(0) += 1;
            }
            if method == "GET" {
                resp_headers.push(format!("ETag: {}", etag(&v)));
            }
        }
        if quirks.tasks
            && method == "POST"
            && path.ends_with("/VirtualMedia.InsertMedia")
            && (200..300).contains(&status)
        {
            status_line = "HTTP/1.1 202 Accepted".into();
            resp_headers.push("Location: /redfish/v1/TaskService/Tasks/42".into());
        }
        let mut reply = format!("{status_line}\r\n");
        for h in resp_headers {
            reply += &format!("{h}\r\n");
        }
        reply += &format!("Content-Length: {}\r\n\r\n", resp_body.len());
        if out.write_all(reply.as_bytes()).is_err() || out.write_all(resp_body.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// A throwaway private CA and a certificate it signed for `127.0.0.1` (as IP SAN), made with
/// the `openssl` CLI.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Ca {
    pub fn new() -> Ca {
        require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bootforge test BMC CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "bmc.key",
            "-out",
            "bmc.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "bmc.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "bmc.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Ca { ca_cert: p("ca.pem"), server_cert: p("bmc.pem"), server_key: p("bmc.key"), dir }
    }
}

// ---------------------------------------------------------------------------------------------
// The libvirt driver (tests/libvirt_e2e.rs): the same emulator, with no `--fake`, but
// `--libvirt-uri URI`, so its Systems are the domains of a real libvirt daemon. Read from
// sushy-tools 2.2.0 (`resources/systems/libvirtdriver.py`, `resources/vmedia.py`):
// * InsertMedia downloads the image (`requests.get`, into a fresh folder under TMPDIR, named
//   after the URL's last path segment), uploads it as volume `NAME-EXT-UUID.img` of the libvirt
//   storage pool `default` (`SUSHY_EMULATOR_STORAGE_POOL`; the daemon must have it), then
//   rewrites the domain: every `device='cdrom'` disk is removed and one `<disk type='file'
//   device='cdrom'>` with that volume as source is added (`hdc` on IDE for an i440fx machine),
//   read-only. EjectMedia removes the cdrom disks and the download; the volume stays.
// * A Boot PATCH with `BootSourceOverrideTarget: Cd` drops `<os><boot dev=…>` and gives the CD
//   `<boot order='1'/>`, the disks that were in the old order the next ones (the libvirt driver
//   ignores `BootSourceOverrideEnabled`: its override is always continuous).
// * `ComputerSystem.Reset` `On` starts an inactive domain; `ForceRestart` destroys and starts.
// Each change is a `defineXML` of the domain: a running domain sees it at its next start.
// ---------------------------------------------------------------------------------------------

/// The libvirt-python version `scripts/setup --test` builds into the virtualenv.
pub const LIBVIRT_PYTHON_VERSION: &str = "9.0.0";

/// The virtualenv, checked to hold the Python `libvirt` module the libvirt driver imports;
/// fails the test loudly, naming the setup step, when it does not.
pub fn libvirt_venv() -> PathBuf {
    let dir = venv();
    let out = Command::new(dir.join("bin/python")).args(["-c", "import libvirt"]).output();
    match out {
        Ok(o) if o.status.success() => dir,
        Ok(o) => panic!(
            "PREREQUISITE MISSING: the virtualenv {} lacks the Python module `libvirt` that \
             sushy-tools' libvirt driver imports ({}). Run `scripts/setup --test`: it installs the \
             Debian packages `libvirt-dev`, `pkg-config`, `python3-dev` and `gcc` and builds \
             libvirt-python=={LIBVIRT_PYTHON_VERSION} into the virtualenv with pip.",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {}/bin/python: {e}", dir.display()),
    }
}

impl Emulator {
    /// Starts `sushy-emulator --libvirt-uri URI`, serving only the domains in `systems` (by
    /// UUID: `SUSHY_EMULATOR_ALLOWED_INSTANCES`), one user `admin` with password `password`.
    /// Images it downloads land in its own folder (`images/` of [`Emulator::dir`]) before it
    /// uploads them into the daemon's pool `default`.
    pub fn start_libvirt(uri: &str, systems: Vec<FakeSystem>) -> Emulator {
        let mut last = String::new();
        for _ in 0..3 {
            match Emulator::try_start_libvirt(uri, &systems) {
                Ok(e) => return e,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => {
                    panic!("sushy-emulator (libvirt driver) did not start; its log:\n{log}")
                }
            }
        }
        panic!("sushy-emulator (libvirt driver) did not start; its log:\n{last}");
    }

    fn try_start_libvirt(uri: &str, systems: &[FakeSystem]) -> Result<Emulator, String> {
        let venv = libvirt_venv();
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        write_htpasswd(&venv, &[("admin".into(), "password".into())], &htpasswd);
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let allowed: Vec<String> = systems.iter().map(|s| format!("'{}'", s.uuid)).collect();
        let port = free_port();
        let conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_STATE_DIR = '{state}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{htpasswd}'\n\
             SUSHY_EMULATOR_ALLOWED_INSTANCES = [{allowed}]\n",
            state = dir.path().join("state").display(),
            htpasswd = htpasswd.display(),
            allowed = allowed.join(", "),
        );
        let mut cmd = Command::new(venv.join("bin/sushy-emulator"));
        cmd.arg("--libvirt-uri").arg(uri).env("TMPDIR", &images);
        Emulator::launch(cmd, dir, &conf, "http", port, systems.to_vec())
    }

    /// Writes `conf` as `dir/emulator.conf`, runs `cmd` (the emulator with its driver's
    /// arguments) with `--config` and its output in `dir/emulator.log`, and waits for it to
    /// answer on `port`; `Err` holds its log.
    fn launch(
        mut cmd: Command,
        dir: tempfile::TempDir,
        conf: &str,
        scheme: &str,
        port: u16,
        systems: Vec<FakeSystem>,
    ) -> Result<Emulator, String> {
        let conf_path = dir.path().join("emulator.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("emulator.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .arg("--config")
            .arg(&conf_path)
            // Unbuffered, so that the "Running on" line the readiness check reads is written
            // when it is printed.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let base = format!("{scheme}://127.0.0.1:{port}");
        let mut emulator = Emulator { child, base, port, systems, log, dir };
        emulator.wait_ready()?;
        Ok(emulator)
    }
}
