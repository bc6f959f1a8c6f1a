//! Helpers shared by the `serve_*` tests (included with `#[path]`): a real server on a loopback
//! port over a temporary state directory, and a small HTTP client that never treats a status as
//! an error. Submodules: [`db`], private PostgreSQL and MariaDB servers; [`sushy`], the Redfish
//! emulator harness, whose [`sushy::free_port`] `db` uses (a test crate that includes this
//! module takes the emulator harness from here, as `support::sushy`, not with its own `#[path]`
//! copy, so that one port counter serves the whole test process).
#![allow(dead_code)]

pub mod db;
/// Private CAs and certificates for TLS tests, shared with the boot harness (`tests/common`).
#[path = "../common/pki.rs"]
pub mod pki;
pub mod sushy;

use bootforge::serve::{Config, Server};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const READ_TOKEN: &str = "read-token-0123";
pub const REIMAGE_TOKEN: &str = "reimage-token-4567";
pub const ADMIN_TOKEN: &str = "admin-token-89ab";
pub const SECRET: &[u8] = b"fleet-secret\n";

/// Inventory covering every example profile and the e2e test profile.
pub const INVENTORY: &str = "\
hostname,ip,gateway,dns,mac,profile,role,install_disk,iface,cluster_token,cluster_vip,join_server,password_hash,ssh_key,local_boot
node01,10.0.0.11/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:01,e2e,,,,,,,,,
node02,10.0.0.12/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:02,,,,,,,,,,
hv1,10.0.0.21/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:21,harvester,create,/dev/sda,eno1,tok-123,10.0.0.20,,$6$salt$hash,ssh-ed25519 AAAA op,
hv2,10.0.0.22/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:22,harvester,join,/dev/nvme0n1,eno1,tok-123,,https://10.0.0.20:443,$6$salt$hash,ssh-ed25519 AAAA op,
rocky1,10.0.0.31/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:31,rocky,,sda,eno1,,,,$6$salt$hash,ssh-ed25519 AAAA op,
ubu1,10.0.0.41/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:41,ubuntu,,/dev/sda,eno1,,,,$6$salt$hash,ssh-ed25519 AAAA op,
deb1,10.0.0.51/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:51,debian,,/dev/sda,eno1,,,,$6$salt$hash,ssh-ed25519 AAAA op,0x81
";

/// The audit log of the service whose state folder is `state_dir`, as JSON lines (what
/// `audit.jsonl` held before the database), read from its SQLite database while it runs.
/// Empty when the service has not created its database yet.
pub fn audit_log(state_dir: &Path) -> String {
    let url = bootforge::serve::store::Store::default_url(state_dir);
    if !state_dir.join(bootforge::serve::store::SQLITE_FILE).exists() {
        return String::new();
    }
    bootforge::serve::store::audit::dump(&url).expect("read the audit log from the database")
}

/// A connection of its own to the service's SQLite database at `url` (not through the store,
/// whose guard would refuse a second opener).
async fn state_db(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.expect("open the state database")
}

/// Runs SQL on the SQLite database of the service whose state folder is `state_dir`, behind the
/// service's back (a corrupt row, a table that refuses writes): for tests of how it copes.
/// SQLite's own locking makes this safe next to the running service.
pub fn sql_on_state(state_dir: &Path, statement: &str) {
    let url = bootforge::serve::store::Store::default_url(state_dir);
    let statement = statement.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut conn = state_db(&url).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    });
}

/// A count (or any one integer) from the service's SQLite database, read behind its back.
pub fn sql_count(state_dir: &Path, query: &str) -> i64 {
    let url = bootforge::serve::store::Store::default_url(state_dir);
    let query = query.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut conn = state_db(&url).await;
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(query.clone()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    })
}

/// Holds the write lock of the service's SQLite database (an open `BEGIN IMMEDIATE`) until
/// dropped: every write of the service waits, as behind a stuck writer.
pub struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn hold_write_lock(state_dir: &Path) -> WriteLock {
    let url = bootforge::serve::store::Store::default_url(state_dir);
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut conn = state_db(&url).await;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
            held.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || wait.recv()).await;
            sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
        });
    });
    is_held.recv().expect("the write lock is taken");
    WriteLock { release: Some(release), thread: Some(thread) }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A profiles folder holding the shipped examples plus the e2e test profile.
pub fn profiles_dir(dir: &Path) -> PathBuf {
    let out = dir.join("profiles");
    copy_tree(&repo().join("examples/profiles"), &out);
    copy_tree(&repo().join("tests/profiles/e2e"), &out.join("e2e"));
    out
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

pub fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

pub fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# name role sha256\nviewer read {}\nops reimage {}\nroot admin {}\n",
            sha(READ_TOKEN),
            sha(REIMAGE_TOKEN),
            sha(ADMIN_TOKEN)
        ),
    )
    .unwrap();
    path
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    /// Where the tests talk to the service: `https://…` for a fixture over TLS.
    pub base: String,
    pub config: Config,
    /// Over TLS: the private CA that issued the service's certificate (`config.tls_ca` is its
    /// PEM; behind a mutex so that a fixture can still be shared between threads), and the
    /// plain listener's base beside the TLS one.
    pub pki: Option<std::sync::Mutex<pki::Pki>>,
    pub plain_base: Option<String>,
}

impl Fixture {
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A configuration over `dir`: the test inventory and profiles written there, a loopback port,
/// no tokens file and no secret.
pub fn base_config(dir: &Path) -> Config {
    let inv = dir.join("nodes.csv");
    std::fs::write(&inv, INVENTORY).unwrap();
    let profiles = profiles_dir(dir);
    let mut config = Config::new(inv, profiles, dir.join("state"));
    config.listen = "127.0.0.1:0".into();
    config
}

/// Starts a server; `secret` turns node tokens on.
pub fn start(secret: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path(), secret);
    start_with(dir, config)
}

/// [`base_config`] plus an assets folder (`rocky/vmlinuz`, 100,000 bytes), the API tokens file,
/// four workers, and with `secret` a node secret.
pub fn full_config(dir: &Path, secret: bool) -> Config {
    let mut config = base_config(dir);
    let assets = dir.join("assets");
    std::fs::create_dir_all(assets.join("rocky")).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(assets.join("rocky/vmlinuz"), &data).unwrap();
    config.assets = Some(assets);
    config.tokens_file = Some(tokens_file(dir));
    config.workers = 4;
    if secret {
        let s = dir.join("secret");
        std::fs::write(&s, SECRET).unwrap();
        config.secret_file = Some(s);
    }
    config
}

/// Starts a server on `config`; over TLS (see [`over_tls`]) with [`tls_config`] added.
pub fn start_with(dir: tempfile::TempDir, config: Config) -> Fixture {
    if OVER_TLS.with(|t| t.get()) {
        return start_tls_with(dir, config);
    }
    let server = Server::start(config.clone()).expect("server starts");
    let base = format!("http://{}", server.local_addr());
    Fixture { dir, server: Some(server), base, config, pki: None, plain_base: None }
}

/// Starts a server on `config` with a TLS listener beside the plain one ([`tls_config`]):
/// `base` is the TLS listener's `https://` address, `plain_base` the plain one's. [`call`]
/// trusts the fixture's CA for its address.
pub fn start_tls_with(dir: tempfile::TempDir, mut config: Config) -> Fixture {
    let pki = tls_config(&mut config, &pki::LeafSpec::server("IP:127.0.0.1"));
    let server = Server::start(config.clone()).expect("server starts over TLS");
    let tls = server.local_tls_addr().expect("a TLS listener");
    let base = format!("https://{tls}");
    trust(&tls.to_string(), &pki.ca_cert);
    let plain_base = Some(format!("http://{}", server.local_addr()));
    Fixture {
        dir,
        server: Some(server),
        base,
        config,
        pki: Some(std::sync::Mutex::new(pki)),
        plain_base,
    }
}

/// Adds a TLS listener on a free loopback port to `config`, with a certificate of `leaf`
/// issued by a new private CA (RSA); returns the CA.
pub fn tls_config(config: &mut Config, leaf: &pki::LeafSpec) -> pki::Pki {
    let ca = pki::Pki::rsa("bootforge test CA");
    let issued = ca.leaf(leaf);
    config.listen_tls = Some("127.0.0.1:0".into());
    config.tls_cert = Some(issued.chain);
    config.tls_key = Some(issued.key);
    config.tls_ca = Some(ca.ca_cert.clone());
    TLS_STARTED.with(|n| n.set(n.get() + 1));
    ca
}

thread_local! {
    /// Whether [`start_with`] starts its servers over TLS: set by [`over_tls`] for the test
    /// running on this thread (every test has a thread of its own).
    static OVER_TLS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Configurations given a TLS listener on this thread ([`tls_config`]), for [`over_tls`] to
    /// check that its test used one.
    static TLS_STARTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `test` with every fixture it starts ([`start`], [`start_with`]) serving over TLS: a
/// second run of a test written for plain HTTP, for a test module `over_tls` (see
/// tests/serve_api.rs).
pub fn over_tls(test: fn()) {
    OVER_TLS.with(|t| t.set(true));
    test();
    assert!(
        TLS_STARTED.with(|n| n.get()) > 0,
        "the test started no fixture over TLS: it ran over plain HTTP only"
    );
}

/// Whether fixtures on this thread serve over TLS.
pub fn running_over_tls() -> bool {
    OVER_TLS.with(|t| t.get())
}

/// Client configurations for the `https://` addresses of the TLS fixtures, each trusting its
/// fixture's CA.
static TRUSTED: std::sync::Mutex<Vec<(String, std::sync::Arc<rustls::ClientConfig>)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes [`call`] (and [`agent_for`]) trust the CA in `ca` (PEM) for `authority`
/// (`127.0.0.1:PORT`), through the same code the clients use for `--ca-file`.
pub fn trust(authority: &str, ca: &Path) {
    let config = bootforge::cafile::client_config(
        Some(ca),
        "test CA",
        bootforge::cafile::Trust::FileInstead,
    )
    .expect("the test CA loads");
    let mut trusted = TRUSTED.lock().unwrap_or_else(|p| p.into_inner());
    trusted.retain(|(a, _)| a != authority);
    trusted.push((authority.to_string(), config));
}

/// An agent for `url`: for `https://`, one that trusts the CA of the fixture serving it.
pub fn agent_for(url: &str) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new();
    let Some(rest) = url.strip_prefix("https://") else { return builder.build() };
    let authority = rest.split('/').next().unwrap_or(rest);
    let trusted = TRUSTED.lock().unwrap_or_else(|p| p.into_inner());
    let config = trusted
        .iter()
        .find(|(a, _)| a == authority)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| panic!("no TLS fixture serves {url}"));
    builder.tls_config(config).build()
}

pub struct Resp {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request; any status is returned, never an error.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Resp {
    call_h(method, url, token, body, &[])
}

pub fn call_h(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = agent_for(url).request(method, url).timeout(std::time::Duration::from_secs(20));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    answer(result, &format!("{method} {url}"))
}

/// The answer to a request sent with ureq, whatever its status; a transport error panics,
/// naming the request (`what`).
pub fn answer(result: Result<ureq::Response, ureq::Error>, what: &str) -> Resp {
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{what}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    Resp { status, body: String::from_utf8_lossy(&bytes).into_owned(), headers }
}

/// Sends `head` (a request line and headers, without the blank line; any bytes) on a new
/// connection with `Connection: close`, and returns (status, body); status 0 if none came.
pub fn raw_request(addr: &str, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(s, "{head}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The boot query the media send for `host` (MAC from the inventory).
pub fn boot_url(base: &str, host: &str, mac: &str, extra: &str) -> String {
    format!("{base}/boot/{host}?mac={mac}&ip=10.0.0.1&uuid=x&serial=y&platform=pcbios&arch=x86_64&medium=cd{extra}")
}

/// Pulls `install=ID` out of an install chain.
pub fn install_id(script: &str) -> String {
    let i = script.find("install=").expect("install id in script") + "install=".len();
    script[i..].chars().take_while(|c| c.is_ascii_hexdigit()).collect()
}

/// `bootforge serve` (the binary) over `config`'s inventory, profiles and state folder; the
/// caller adds listeners, certificates and how to run it.
pub fn serve_command(config: &Config) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bootforge"));
    cmd.arg("serve")
        .arg("--inventory")
        .arg(config.inventory.as_ref().expect("a file inventory"))
        .arg("--profiles")
        .arg(&config.profiles)
        .arg("--state-dir")
        .arg(&config.state_dir);
    cmd
}
