//! The console tests' outside world (included with `#[path]`): a real OpenLDAP `slapd` with a
//! throwaway CA, and headless Chromium driven through `chromedriver` or headless Firefox ESR
//! through `geckodriver` (WebDriver).
//!
//! Both run as child processes of the test on free loopback ports, with generated
//! configurations in a temporary folder, and are killed when their handle drops. A missing tool
//! fails the test and names the Debian package that has it; nothing is skipped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails loudly when `tool` is missing, naming its Debian package.
pub fn need(tool: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(tool);
    assert!(
        path.exists(),
        "{tool} is missing: install the Debian package `{package}` (scripts/setup --test does)"
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 20 s");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A killed-on-drop child process.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Users of the test directory: (uid, password, group).
pub const USERS: &[(&str, &str, &str)] = &[
    ("alice", "alice-pw", "boot-admins"),
    ("bob", "bob-pw", "boot-ops"),
    ("carol", "carol-pw", "boot-viewers"),
    ("dave", "dave-pw", "staff"),
];

/// A running slapd: `ldap://` (StartTLS offered) and `ldaps://` on loopback, its CA.
pub struct Slapd {
    _proc: Proc,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    pub ca: PathBuf,
}

impl Slapd {
    /// Generates a CA and a server certificate for 127.0.0.1/localhost with `openssl`, a
    /// `slapd.conf` with an MDB database loaded by `slapadd`, and starts slapd in the
    /// foreground as this (unprivileged) user. The system's slapd service is not used.
    pub fn start(dir: &Path) -> Slapd {
        Slapd::start_with(dir, true)
    }

    /// As [`Slapd::start`], with a server certificate that has a subjectAltName or (`san`
    /// false) only a subject CN, as Samba's self-made certificate has.
    pub fn start_with(dir: &Path, san: bool) -> Slapd {
        let slapd = need("/usr/sbin/slapd", "slapd");
        let slapadd = need("/usr/sbin/slapadd", "slapd");
        let openssl = need("/usr/bin/openssl", "openssl");
        let d = dir.join("ldap");
        std::fs::create_dir_all(d.join("db")).unwrap();
        let p = |n: &str| d.join(n).display().to_string();
        run(Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bootforge test CA",
            ])
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem")]));
        run(Command::new(&openssl)
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"])
            .args(["-keyout", &p("server.key"), "-out", &p("server.csr")]));
        std::fs::write(
            d.join("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n{}",
                if san { "subjectAltName=DNS:localhost,IP:127.0.0.1\n" } else { "" }
            ),
        )
        .unwrap();
        run(Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-in", &p("server.csr"), "-CA", &p("ca.pem")])
            .args([
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("server.pem"),
                "-extfile",
                &p("ext.cnf"),
            ]));
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\npidfile {pid}\nmodulepath /usr/lib/ldap\n\
             moduleload back_mdb\nTLSCACertificateFile {ca}\nTLSCertificateFile {cert}\n\
             TLSCertificateKeyFile {key}\ndatabase mdb\nmaxsize 10485760\nsuffix \"dc=example,dc=org\"\n\
             rootdn \"cn=admin,dc=example,dc=org\"\nrootpw unused-{rand}\ndirectory {db}\n\
             access to attrs=userPassword by anonymous auth by self read by * none\n\
             access to * by users read by * none\n",
            pid = p("slapd.pid"),
            ca = p("ca.pem"),
            cert = p("server.pem"),
            key = p("server.key"),
            db = p("db"),
            rand = std::process::id(),
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let mut ldif = String::from(
            "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n\n\
             dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,dc=example,dc=org\nobjectClass: organizationalUnit\nou: groups\n\n",
        );
        for (uid, pw, _) in USERS {
            ldif += &format!(
                "dn: uid={uid},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n\n"
            );
        }
        // Two uid values on one entry (OpenLDAP allows it): its name is ambiguous, one of the
        // values is another account's.
        ldif += "dn: uid=twin,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: twin\nuid: bob\ncn: twin\nsn: twin\nuserPassword: twin-pw\n\n";
        for group in ["boot-admins", "boot-ops", "boot-viewers", "staff"] {
            ldif += &format!("dn: cn={group},ou=groups,dc=example,dc=org\nobjectClass: groupOfNames\ncn: {group}\n");
            for (uid, _, g) in USERS.iter().filter(|u| u.2 == group) {
                let _ = g;
                ldif += &format!("member: uid={uid},ou=people,dc=example,dc=org\n");
            }
            ldif += "\n";
        }
        std::fs::write(d.join("data.ldif"), ldif).unwrap();
        run(Command::new(&slapadd).args(["-f", &p("slapd.conf"), "-l", &p("data.ldif")]));
        let (ldap_port, ldaps_port) = (free_port(), free_port());
        let urls = format!("ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/");
        let mut child = Command::new(&slapd)
            .args(["-f", &p("slapd.conf"), "-h", &urls, "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slapd starts");
        wait_for_port(ldap_port, "slapd", &mut child);
        wait_for_port(ldaps_port, "slapd", &mut child);
        Slapd { _proc: Proc(child), ldap_port, ldaps_port, ca: d.join("ca.pem") }
    }

    /// A `--ldap-config` for this directory: over LDAPS, or over LDAP with StartTLS.
    pub fn config(&self, starttls: bool) -> String {
        let url = if starttls {
            format!("ldap://127.0.0.1:{}", self.ldap_port)
        } else {
            format!("ldaps://127.0.0.1:{}", self.ldaps_port)
        };
        format!(
            "url = \"{url}\"\nstarttls = {starttls}\nca_file = \"{}\"\n\
             bind_dn = \"uid={{user}},ou=people,dc=example,dc=org\"\n\
             group_base = \"ou=groups,dc=example,dc=org\"\ngroup_filter = \"(member={{dn}})\"\n\
             timeout_secs = 5\n\n[roles]\n\
             \"cn=boot-admins,ou=groups,dc=example,dc=org\" = \"admin\"\n\
             \"cn=boot-ops,ou=groups,dc=example,dc=org\" = \"reimage\"\n\
             \"cn=boot-viewers,ou=groups,dc=example,dc=org\" = \"read\"\n",
            self.ca.display()
        )
    }
}

/// Headless Chromium through chromedriver, and the tokio runtime fantoccini needs.
pub struct Browser {
    pub client: fantoccini::Client,
    pub rt: tokio::runtime::Runtime,
    _driver: Proc,
    /// The browser's throwaway profile; Chromium downloads into its `downloads` folder.
    profile: tempfile::TempDir,
}

/// Makes an NSS certificate database in `dir` (created) that trusts `ca` (PEM) to identify web
/// servers, with `certutil` (Debian `libnss3-tools`).
///
/// Why a real certificate database rather than a browser switch: both browsers read their
/// trust from NSS on Linux (Chromium from `$HOME/.pki/nssdb`, Firefox from its profile's
/// `cert9.db`), so a CA put there is trusted exactly as an operator's enterprise CA would be,
/// and every check (chain, name, validity, key usage) still runs. Switches such as Chromium's
/// `--ignore-certificate-errors` or a Firefox exception would pass a test against any
/// certificate at all, and prove nothing about ours.
pub fn trust_ca(dir: &Path, ca: &Path) {
    let certutil = need("/usr/bin/certutil", "libnss3-tools");
    std::fs::create_dir_all(dir).unwrap();
    let db = format!("sql:{}", dir.display());
    run(Command::new(&certutil).args(["-N", "--empty-password", "-d", &db]));
    run(Command::new(&certutil)
        .args(["-A", "-n", "bootforge test CA", "-t", "C,,", "-d", &db, "-i"])
        .arg(ca));
}

impl Browser {
    pub fn start() -> Browser {
        Browser::start_trusting(None)
    }

    /// Headless Chromium that trusts `ca` (PEM), if given, as its users' own CA: an NSS
    /// database in a throwaway `HOME` (see [`trust_ca`]).
    pub fn start_trusting(ca: Option<&Path>) -> Browser {
        let chromium = need("/usr/bin/chromium", "chromium");
        let driver = need("/usr/bin/chromedriver", "chromium-driver");
        let port = free_port();
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Command::new(driver);
        if let Some(ca) = ca {
            // Chromium finds the user's NSS database under $HOME; chromedriver starts it with
            // its own environment.
            let home = profile.path().join("home");
            trust_ca(&home.join(".pki/nssdb"), ca);
            driver.env("HOME", &home);
        }
        let mut child = driver
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        wait_for_port(port, "chromedriver", &mut child);
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        // Downloads land in the profile's `downloads` folder, without a prompt.
        let prefs = serde_json::json!({
            "download.default_directory": profile.path().join("downloads"),
            "download.prompt_for_download": false,
        });
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args, "prefs": prefs }),
        );
        Browser::connect(port, caps, child, profile, "Chromium")
    }

    /// A WebDriver session on the driver at `port`, which owns `child` and `profile`.
    fn connect(
        port: u16,
        caps: serde_json::Map<String, serde_json::Value>,
        child: Child,
        profile: tempfile::TempDir,
        what: &str,
    ) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = rt
            .block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| panic!("a WebDriver session with {what}: {e}"));
        Browser { client, rt, _driver: Proc(child), profile }
    }

    /// Headless Firefox ESR (Debian `firefox-esr`) through geckodriver, which Debian does not
    /// package: `scripts/setup --test` installs it with `cargo install geckodriver`.
    pub fn start_firefox() -> Browser {
        Browser::start_firefox_trusting(None)
    }

    /// Headless Firefox that trusts `ca` (PEM), if given: its profile's own NSS database
    /// (`cert9.db`, see [`trust_ca`]).
    pub fn start_firefox_trusting(ca: Option<&Path>) -> Browser {
        let firefox = need("/usr/bin/firefox-esr", "firefox-esr");
        let driver = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
            .map(|d| d.join("geckodriver"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "geckodriver is missing: `scripts/setup --test` installs it with `cargo \
                     install geckodriver` (Debian has no package for it)"
                )
            });
        let port = free_port();
        let mut child = Command::new(driver)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("geckodriver starts");
        wait_for_port(port, "geckodriver", &mut child);
        let profile = tempfile::tempdir().unwrap();
        if let Some(ca) = ca {
            trust_ca(profile.path(), ca);
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "moz:firefoxOptions".into(),
            serde_json::json!({
                "binary": firefox,
                "args": ["-headless", "-width", "1400", "-height", "900", "-profile", profile.path()],
                // No update checks, telemetry or captive-portal probes on a closed network.
                "prefs": {
                    "app.update.enabled": false,
                    "network.captive-portal-service.enabled": false,
                    "datareporting.policy.dataSubmissionEnabled": false,
                    "toolkit.telemetry.enabled": false,
                    "browser.shell.checkDefaultBrowser": false
                }
            }),
        );
        Browser::connect(port, caps, child, profile, "Firefox")
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.client.goto(url)).unwrap();
    }

    /// Waits (up to 15 s) for an element.
    pub fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(
                self.client
                    .wait()
                    .at_most(Duration::from_secs(15))
                    .for_element(fantoccini::Locator::Css(css)),
            )
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub fn all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.rt.block_on(self.client.find_all(fantoccini::Locator::Css(css))).unwrap()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.rt.block_on(e.click()).unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.rt.block_on(async {
            e.clear().await.unwrap();
            e.send_keys(text).await.unwrap();
        });
    }

    /// Chooses `file` in the file input `css` (WebDriver types the path into it).
    pub fn choose_file(&self, css: &str, file: &Path) {
        let e = self.find(css);
        self.rt
            .block_on(e.send_keys(&file.display().to_string()))
            .unwrap_or_else(|e| panic!("choose {} in {css}: {e}", file.display()));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.rt.block_on(e.text()).unwrap()
    }

    pub fn displayed(&self, css: &str) -> bool {
        self.all(css).iter().any(|e| self.rt.block_on(e.is_displayed()).unwrap_or(false))
    }

    /// Runs JavaScript in the page (a returned promise is awaited).
    pub fn js(&self, script: &str) -> serde_json::Value {
        self.rt.block_on(self.client.execute(script, vec![])).unwrap()
    }

    /// Waits (up to `secs`) until `css`'s text satisfies `ok`; returns the text.
    pub fn wait_text(&self, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self
                .all(css)
                .first()
                .map(|e| self.rt.block_on(e.text()).unwrap_or_default())
                .unwrap_or_default();
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css}: still {text:?} after {secs} s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (up to `secs`) for Chromium to finish downloading `name` and returns its bytes.
    pub fn downloaded(&self, name: &str, secs: u64) -> Vec<u8> {
        let dir = self.profile.path().join("downloads");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let busy = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"))
                })
                .unwrap_or(false);
            if !busy {
                if let Ok(bytes) = std::fs::read(dir.join(name)) {
                    return bytes;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no download {name} in {} after {secs} s",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot of the page as `docs/NAME` in the repository.
    pub fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.client.screenshot()).unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
        std::fs::write(&path, png).unwrap();
    }

    /// The value of the session cookie (HttpOnly: only WebDriver sees it).
    pub fn session_cookie(&self) -> String {
        let cookies = self.rt.block_on(self.client.get_all_cookies()).unwrap();
        cookies
            .iter()
            .find(|c| c.name() == "bf_session")
            .expect("a session cookie")
            .value()
            .to_string()
    }

    /// Whether the browser holds the session cookie as `Secure` (sent over https only).
    pub fn session_cookie_is_secure(&self) -> bool {
        let cookies = self.rt.block_on(self.client.get_all_cookies()).unwrap();
        let cookie = cookies.iter().find(|c| c.name() == "bf_session").expect("a session cookie");
        cookie.secure() == Some(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.rt.block_on(client.close());
    }
}

/// The Active Directory of the tests: realm `AD.CORP.EXAMPLE`, NetBIOS domain `CORP`, users'
/// principal names in the alternative suffix `corp.example` (as organisations whose AD domain
/// differs from their mail domain have them).
pub const AD_BASE: &str = "DC=ad,DC=corp,DC=example";
pub const AD_ADMIN_PW: &str = "Adm1n-Pass!bootforge";

/// Users of the test AD: (sAMAccountName, password, groups, userPrincipalName). Roles:
/// BootAdmins admin, BootOps reimage, BootRead read; Nested is a member of BootOps only.
/// `ann`'s principal name `x@corp.example` has the `sAMAccountName` of another account, `x`,
/// an admin: the shape of issue 13's role take-over.
pub const AD_USERS: &[(&str, &str, &[&str], &str)] = &[
    ("ann", "Ann-Pass1!a", &["BootRead"], "x@corp.example"),
    ("x", "Xx-Pass1!xx", &["BootAdmins"], "x@ad.corp.example"),
    ("bob", "Bob-Pass1!b", &["BootOps"], "bob@corp.example"),
    ("carol", "Carol-Pass1!c", &["Nested"], "carol@corp.example"),
    ("dave", "Dave-Pass1!d", &["BootAdmins"], "dave@corp.example"),
    ("erin", "Erin-Pass1!e", &["BootOps"], "erin@corp.example"),
    ("frank", "Frank-Pass1!f", &["BootOps"], "frank@corp.example"),
    ("gina", "Gina-Pass1!g", &["BootAdmins", "BootRead"], "gina@corp.example"),
    ("jürgen", "Jurgen-Pass1!j", &["BootRead"], "juergen@corp.example"),
    ("o'brien", "Obrien-Pass1!o", &["BootRead"], "obrien@corp.example"),
    ("john smith", "John-Pass1!js", &["BootRead"], "john.smith@corp.example"),
    ("svc-lookup", "Lookup-Pass1!l", &[], "svc-lookup@corp.example"),
];

/// A running Samba 4 Active Directory domain controller, only its LDAP service, on its own
/// loopback address, with a certificate (subjectAltName IP and DNS) from a throwaway CA.
pub struct Samba {
    proc: Option<Proc>,
    pub dir: PathBuf,
    pub ip: std::net::Ipv4Addr,
    pub ca: PathBuf,
    /// Seconds `samba-tool domain provision` took.
    pub provision_secs: f64,
}

impl Samba {
    /// Provisions a domain in `dir` (`samba-tool domain provision`, no DNS, RFC 2307), makes
    /// the users and groups of [`AD_USERS`] with `samba-tool` before the server starts, starts
    /// `samba -i -M single` in the foreground as a child of the test, then sets the principal
    /// names over LDAPS (samba-tool refuses a UPN suffix the forest does not list; the
    /// directory itself takes it, as Windows does). Listens on 127.0.0.N: a free address of
    /// 127/8 (Linux routes all of it to `lo`), chosen from the process id.
    pub fn start(dir: &Path) -> Samba {
        let samba = need("/usr/sbin/samba", "samba");
        let tool = need("/usr/bin/samba-tool", "samba-common-bin");
        let openssl = need("/usr/bin/openssl", "openssl");
        need("/usr/bin/ldapmodify", "ldap-utils");
        let d = dir.join("samba");
        std::fs::create_dir_all(d.join("tls")).unwrap();
        let ip = (0..200u32)
            .map(|i| std::net::Ipv4Addr::new(127, 0, 0, (2 + (std::process::id() + i) % 250) as u8))
            .find(|ip| {
                TcpListener::bind((*ip, 636)).is_ok() && TcpListener::bind((*ip, 389)).is_ok()
            })
            .expect("a free loopback address for the domain controller (samba binds ports 389 and 636: run the test as root, as CI does)");
        let p = |n: &str| d.join(n).display().to_string();
        // The CA and the DC's certificate, with the subjectAltName rustls needs.
        run(Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=bootforge test AD CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .args(["-keyout", &p("tls/ca.key"), "-out", &p("tls/ca.pem")]));
        run(Command::new(&openssl)
            .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-subj", "/CN=dc1.ad.corp.example"])
            .args(["-keyout", &p("tls/dc.key"), "-out", &p("tls/dc.csr")]));
        std::fs::write(
            d.join("tls/ext.cnf"),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip},DNS:dc1.ad.corp.example\n"),
        )
        .unwrap();
        run(Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-in", &p("tls/dc.csr"), "-CA", &p("tls/ca.pem")])
            .args(["-CAkey", &p("tls/ca.key"), "-CAcreateserial", "-out", &p("tls/dc.pem")])
            .args(["-extfile", &p("tls/ext.cnf")]));
        let dc = d.join("dc");
        let started = Instant::now();
        let opt = |o: String| format!("--option={o}");
        run(Command::new(&tool)
            .args(["domain", "provision", "--targetdir", &dc.display().to_string()])
            .args(["--realm", "AD.CORP.EXAMPLE", "--domain", "CORP", "--host-name", "dc1"])
            .args(["--adminpass", AD_ADMIN_PW, "--server-role", "dc", "--dns-backend", "NONE"])
            .arg("--use-rfc2307")
            .arg(opt("bind interfaces only = yes".into()))
            // An address of 127/8 that is not lo's own: "ADDR/8" makes Samba take it as is.
            .arg(opt(format!("interfaces = {ip}/8")))
            .arg(opt("server services = ldap".into()))
            .arg(opt(format!("log file = {}", p("samba.log"))))
            .arg(opt(format!("pid directory = {}", p("pid"))))
            .arg(opt(format!("tls keyfile = {}", p("tls/dc.key"))))
            .arg(opt(format!("tls certfile = {}", p("tls/dc.pem"))))
            .arg(opt(format!("tls cafile = {}", p("tls/ca.pem")))));
        let provision_secs = started.elapsed().as_secs_f64();
        let sam = format!("{}/private/sam.ldb", dc.display());
        let st = |args: &[&str]| {
            run(Command::new(&tool).args(args).args(["-H", &sam]));
        };
        for group in ["BootAdmins", "BootOps", "BootRead", "Nested"] {
            st(&["group", "add", group]);
        }
        st(&["group", "addmembers", "BootOps", "Nested"]);
        for (user, pw, groups, _) in AD_USERS {
            st(&["user", "create", user, pw]);
            for g in *groups {
                st(&["group", "addmembers", g, user]);
            }
        }
        st(&["user", "disable", "dave"]);
        let child = Command::new(&samba)
            .args(["-i", "-M", "single", "-s", &format!("{}/etc/smb.conf", dc.display())])
            .stdout(Stdio::from(std::fs::File::create(d.join("samba.out")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(d.join("samba.err")).unwrap()))
            .spawn()
            .expect("samba starts");
        let mut samba = Samba {
            proc: Some(Proc(child)),
            dir: d.clone(),
            ip,
            ca: d.join("tls/ca.pem"),
            provision_secs,
        };
        samba.wait_listening();
        let mut ldif = String::new();
        for (user, _, _, upn) in AD_USERS.iter().filter(|u| !u.3.ends_with("@ad.corp.example")) {
            ldif += &format!(
                "dn: CN={},CN=Users,{AD_BASE}\nchangetype: modify\nreplace: userPrincipalName\nuserPrincipalName: {upn}\n\n",
                ldap_dn_value(user)
            );
        }
        samba.modify(&ldif);
        samba
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let child = &mut self.proc.as_mut().unwrap().0;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((self.ip, 636)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "samba exited before listening: {status}: {}",
                    std::fs::read_to_string(self.dir.join("samba.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("samba did not listen on {}:636 within 60 s", self.ip);
    }

    /// Applies an LDIF of changes as the domain's Administrator, over LDAPS.
    pub fn modify(&self, ldif: &str) {
        use std::io::Write as _;
        let mut child = Command::new("/usr/bin/ldapmodify")
            .args(["-x", "-H", &format!("ldaps://{}", self.ip)])
            .args(["-D", "Administrator@ad.corp.example", "-w", AD_ADMIN_PW])
            .env("LDAPTLS_CACERT", &self.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapmodify runs");
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The DN of a user made by [`Samba::start`].
    pub fn user_dn(user: &str) -> String {
        format!("CN={},CN=Users,{AD_BASE}", ldap_dn_value(user))
    }

    /// The documented Active Directory `--ldap-config` (docs/CONSOLE.md), for this DC, with
    /// `extra` lines (e.g. the lookup account) before the roles.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "url = \"ldaps://{ip}\"\nca_file = \"{ca}\"\nbind_dn = \"{{user}}@corp.example\"\n\
             netbios_domain = \"CORP\"\nuser_base = \"{AD_BASE}\"\ngroup_base = \"{AD_BASE}\"\n\
             group_filter = \"(member:1.2.840.113556.1.4.1941:={{dn}})\"\ntimeout_secs = 5\n{extra}\n\
             [roles]\n\"CN=BootAdmins,CN=Users,{AD_BASE}\" = \"admin\"\n\
             \"CN=BootOps,CN=Users,{AD_BASE}\" = \"reimage\"\n\
             \"CN=BootRead,CN=Users,{AD_BASE}\" = \"read\"\n",
            ip = self.ip,
            ca = self.ca.display(),
        )
    }
}

/// `value` escaped for an RDN value (the few characters our test names need).
fn ldap_dn_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace(',', "\\,").replace('+', "\\+").replace('"', "\\\"")
}

impl Drop for Samba {
    fn drop(&mut self) {
        drop(self.proc.take());
    }
}
