//! The BMC credentials file (`serve --bmc-credentials FILE`): which user and password, and which
//! TLS policy, to use for each BMC.
//!
//! # Format
//!
//! One line per BMC, fields separated by spaces or tabs; `#` starts a comment line and blank
//! lines are ignored:
//!
//! ```text
//! # BMC          USER    PASSWORD-SOURCE                 [OPTIONS]
//! 10.1.0.11      admin   /etc/bootforge/bmc/node01.pass
//! bmc7.lab       root    env:BMC7_PASSWORD               insecure-tls
//! 127.0.0.1      admin   env:EMULATOR_PASSWORD           allow-http
//! [fd00::21]     admin   file:/etc/bootforge/bmc/v6.pass
//! 10.1.0.0/16    admin   /etc/bootforge/bmc/rack.pass
//! *.bmc.lab      admin   /etc/bootforge/bmc/lab.pass
//! ```
//!
//! * **BMC** says which BMCs the line is for, by the host of the inventory's `bmc` URL:
//!   * a host exactly as written there, without the port (an IPv6 address keeps its brackets),
//!     compared case-insensitively;
//!   * a network, `10.1.0.0/16` or `fd00:10::/48`: every BMC whose URL holds an address in it;
//!   * a domain, `*.bmc.lab`: every BMC whose URL holds a name ending in `.bmc.lab`;
//!   * `*`: every BMC. It sends its password to whatever host the inventory's `bmc` column
//!     names, and the inventory can be edited from the console; prefer a network or a domain,
//!     which keep passwords inside the management network whatever a row says.
//!
//!   The most specific line wins, whatever the order: the host's own line, then the narrowest
//!   network or the longest domain, then `*`. Each pattern may appear once.
//! * **USER** is the Redfish user name (HTTP Basic authentication), printable, without `:`.
//! * **PASSWORD-SOURCE** says where the password is; the password itself is never in this file:
//!   * `env:NAME`: the environment variable `NAME` of the process (letters, digits, `_`);
//!   * `file:PATH` or a plain `PATH`: the first line of that file, without its line ending. A
//!     relative path is taken from the folder holding the credentials file.
//! * **OPTIONS**, any of:
//!   * `insecure-tls`: do not verify this BMC's TLS certificate. For BMCs that still carry their
//!     factory self-signed certificate. Prefer giving their CA with `--bmc-ca FILE`: without
//!     verification anyone on the path can read the password.
//!   * `allow-http`: let this line's password go to `http://` BMC URLs, in clear text. Without
//!     it, a `bmc` URL with `http://` is refused before any request is made, naming the host,
//!     the URL and the line: the line binds a password to addresses, and an inventory edit
//!     that only changes `https` to `http` must not make it cross the network readable. For
//!     emulators on loopback and labs; never for a real management network.
//!
//! Passwords are read, and every line checked, when the file is loaded, so a missing password
//! file or variable fails the load (at start-up or reload) rather than the first attach.
//!
//! # Permissions
//!
//! Like ssh with its keys, the credentials file and every password file are refused when their
//! group or others may read or write them (any bit of `0o077`): `chmod 600` them. The message
//! names the file and its mode.
//!
//! # Errors
//!
//! Every error names `FILE:LINE` and says what is expected; all lines are checked and all errors
//! are reported at once. No error, log line or `Debug` output holds a password.

use super::{BmcTarget, Credentials, Password, TlsPolicy};
use crate::inventory::BmcUrl;
use ipnet::IpNet;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A loaded credentials file.
#[derive(Debug, Clone)]
pub struct CredentialsFile {
    path: PathBuf,
    /// By host, lower case.
    hosts: HashMap<String, Entry>,
    /// Network lines, narrowest first.
    networks: Vec<(IpNet, Entry)>,
    /// Domain lines by suffix (`.bmc.lab`, lower case), longest first.
    domains: Vec<(String, Entry)>,
    /// The `*` line.
    default: Option<Entry>,
}

/// Which BMCs a line is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pattern {
    /// One host, lower case, as a `bmc` URL holds it.
    Host(String),
    /// Every address in a network.
    Network(IpNet),
    /// Every name ending in this suffix, which starts with `.`.
    Domain(String),
    /// `*`.
    Any,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Host(h) => f.write_str(h),
            Pattern::Network(n) => write!(f, "{n}"),
            Pattern::Domain(d) => write!(f, "*{d}"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

/// One line's credentials and TLS policy.
#[derive(Debug, Clone)]
struct Entry {
    credentials: Credentials,
    tls: TlsPolicy,
    /// The `allow-http` option.
    allow_http: bool,
}

/// Why [`CredentialsFile::target`] gives no target for a BMC URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No line covers the URL's host.
    #[error("{file} has no line for BMC host {host}: no line names it, no network or domain line holds it, and there is no `*` line; add `{host} USER PASSWORD-SOURCE`")]
    NoLine { file: String, host: String },
    /// The URL is `http://` and its line does not say `allow-http`.
    #[error("the BMC URL {url} of host {host} is plain http://, and its credentials line {line} does not allow sending the password in clear text; use https://, or add the option `allow-http` to that line")]
    PlainHttp { host: String, url: String, line: String },
}

/// Why a credentials file cannot be used: one message per problem, each starting `FILE:LINE:`
/// (or `FILE:` for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsError(pub Vec<String>);

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for CredentialsError {}

impl CredentialsFile {
    /// Reads and checks `path`, reading every password it points to, with the process's
    /// environment for `env:` sources.
    pub fn load(path: &Path) -> Result<CredentialsFile, CredentialsError> {
        CredentialsFile::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`CredentialsFile::load`] with `env` standing in for the environment.
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<CredentialsFile, CredentialsError> {
        let shown = path.display().to_string();
        check_private(path).map_err(|m| CredentialsError(vec![format!("{shown}: {m}")]))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| CredentialsError(vec![format!("{shown}: cannot read: {e}")]))?;
        let folder = path.parent().unwrap_or(Path::new("."));

        let mut errors = Vec::new();
        // Each pattern once: the line that first gave it.
        let mut seen: HashMap<Pattern, usize> = HashMap::new();
        let mut file = CredentialsFile {
            path: path.to_path_buf(),
            hosts: HashMap::new(),
            networks: Vec::new(),
            domains: Vec::new(),
            default: None,
        };
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{shown}:{number}");
            let (pattern, entry) = match parse_line(line, &at, folder, &env) {
                Ok(parsed) => parsed,
                Err(message) => {
                    errors.push(format!("{at}: {message}"));
                    continue;
                }
            };
            if let Some(first) = seen.get(&pattern) {
                errors.push(format!(
                    "{at}: `{pattern}` already has a line ({shown}:{first}); give each one line"
                ));
                continue;
            }
            seen.insert(pattern.clone(), number);
            match pattern {
                Pattern::Host(h) => {
                    file.hosts.insert(h, entry);
                }
                Pattern::Network(n) => file.networks.push((n, entry)),
                Pattern::Domain(d) => file.domains.push((d, entry)),
                Pattern::Any => file.default = Some(entry),
            }
        }
        if !errors.is_empty() {
            return Err(CredentialsError(errors));
        }
        file.networks.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        file.domains.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        Ok(file)
    }

    /// Where the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file has a `*` line, which sends a password to any host a `bmc` URL names.
    pub fn has_catch_all(&self) -> bool {
        self.default.is_some()
    }

    /// The credentials and TLS policy for `url`'s host: its own line, else the narrowest
    /// network holding its address or the longest domain ending its name, else the `*` line.
    pub fn lookup(&self, url: &BmcUrl) -> Option<(&Credentials, TlsPolicy)> {
        self.entry(url).map(|e| (&e.credentials, e.tls))
    }

    /// The line for `url`'s host (see [`CredentialsFile::lookup`]).
    fn entry(&self, url: &BmcUrl) -> Option<&Entry> {
        let host = url.host().to_ascii_lowercase();
        let address = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        self.hosts
            .get(&host)
            .or_else(|| match address {
                Some(ip) => self.networks.iter().find(|(n, _)| n.contains(&ip)).map(|(_, e)| e),
                None => {
                    self.domains.iter().find(|(d, _)| host.ends_with(d.as_str())).map(|(_, e)| e)
                }
            })
            .or(self.default.as_ref())
    }

    /// A ready [`BmcTarget`] for `url`, or an error saying that no line covers its host, or
    /// that the URL is plain `http://` and its line lacks `allow-http`.
    pub fn target(&self, url: &BmcUrl) -> Result<BmcTarget, TargetError> {
        let entry = self.entry(url).ok_or_else(|| TargetError::NoLine {
            file: self.path.display().to_string(),
            host: url.host().to_string(),
        })?;
        if !url.is_https() && !entry.allow_http {
            return Err(TargetError::PlainHttp {
                host: url.host().to_string(),
                url: url.to_string(),
                line: entry.credentials.source.clone().unwrap_or_default(),
            });
        }
        Ok(BmcTarget {
            url: url.clone(),
            credentials: entry.credentials.clone(),
            tls: entry.tls,
            allow_http: entry.allow_http,
        })
    }
}

/// Parses one non-comment line into (the BMCs it is for, entry).
fn parse_line(
    line: &str,
    at: &str,
    folder: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(Pattern, Entry), String> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.len() < 3 {
        return Err(format!(
            "the line has {} field{}; expected `BMC USER PASSWORD-SOURCE [OPTIONS]`",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        ));
    }
    let pattern = parse_pattern(fields[0])?;
    let user = fields[1];
    if user.contains(':') || user.chars().any(char::is_control) || user.len() > 256 {
        return Err(format!(
            "user {:?} cannot be sent by HTTP Basic authentication; expected printable text without `:`",
            super::untrusted(user, 64)
        ));
    }
    let password = read_password(fields[2], folder, env)?;
    let mut tls = TlsPolicy::Verify;
    let mut allow_http = false;
    for option in &fields[3..] {
        match *option {
            "insecure-tls" => tls = TlsPolicy::Insecure,
            "allow-http" => allow_http = true,
            other => {
                return Err(format!(
                    "unknown option {:?}; expected `insecure-tls` or `allow-http`",
                    super::untrusted(other, 64)
                ))
            }
        }
    }
    let credentials =
        Credentials { user: user.to_string(), password, source: Some(at.to_string()) };
    Ok((pattern, Entry { credentials, tls, allow_http }))
}

/// A line's first field: `*`, a network, `*.domain`, or a host as a `bmc` URL would hold it.
fn parse_pattern(text: &str) -> Result<Pattern, String> {
    let shown = super::untrusted(text, 64);
    if text == "*" {
        return Ok(Pattern::Any);
    }
    if text.contains('/') && !text.contains("://") {
        let net: IpNet = text.parse().map_err(|_| {
            format!("{shown:?} is not a network; expected an address and a prefix length, like 10.1.0.0/16 or fd00:10::/48")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "network {shown} has bits set after its /{}; did you mean {}?",
                net.prefix_len(),
                net.trunc()
            ));
        }
        return Ok(Pattern::Network(net));
    }
    if let Some(domain) = text.strip_prefix("*.") {
        return match parse_host(domain) {
            Ok(d) if d.parse::<IpAddr>().is_err() && !d.starts_with('[') => {
                Ok(Pattern::Domain(format!(".{d}")))
            }
            _ => Err(format!(
                "{shown:?} is not a domain pattern; expected `*.` and a DNS name, like *.bmc.lab"
            )),
        };
    }
    parse_host(text).map(Pattern::Host)
}

/// A host as a `bmc` URL would hold it, lower case.
fn parse_host(text: &str) -> Result<String, String> {
    let url = format!("https://{text}");
    match url.parse::<BmcUrl>() {
        Ok(u) if u.host() == text && u.origin() == url => Ok(text.to_ascii_lowercase()),
        _ => Err(format!(
            "{:?} is not a host name, IPv4 address, [IPv6] address, network or *.domain; expected which BMCs the line is for: the host of an inventory bmc URL (no scheme, port or path), 10.1.0.0/16, *.bmc.lab or `*`",
            super::untrusted(text, 64)
        )),
    }
}

fn read_password(
    source: &str,
    folder: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Password, String> {
    let password = if let Some(name) = source.strip_prefix("env:") {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(format!(
                "{:?} is not an environment variable name; expected env:NAME with letters, digits and `_`",
                super::untrusted(source, 64)
            ));
        }
        match env(name) {
            Some(v) if !v.is_empty() => v,
            Some(_) => return Err(format!("environment variable {name} is empty")),
            None => return Err(format!("environment variable {name} is not set")),
        }
    } else {
        let path = Path::new(source.strip_prefix("file:").unwrap_or(source));
        let path = if path.is_absolute() { path.to_path_buf() } else { folder.join(path) };
        let shown = path.display();
        check_private(&path).map_err(|m| format!("password file {shown}: {m}"))?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read password file {shown}: {e}"))?;
        let first = text.lines().next().unwrap_or("").to_string();
        if first.is_empty() {
            return Err(format!(
                "password file {shown} is empty; expected the password on its first line"
            ));
        }
        first
    };
    if password.chars().any(char::is_control) {
        return Err(
            "the password holds a control character; HTTP Basic authentication cannot carry it"
                .into(),
        );
    }
    Ok(Password::new(password))
}

/// Refuses a file that its group or others may read or write, as ssh does with keys.
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets its group or others read or write it, and it holds secrets; run chmod 600 on it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "BMC_PW" => Some("from-env".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn most_specific_line_wins_and_passwords_are_read() {
        let dir = tempfile::tempdir().unwrap();
        private(&dir.path().join("default.pass"), "default-pw\nsecond line ignored\n");
        private(&dir.path().join("n1.pass"), "n1-pw\r\n");
        let creds = dir.path().join("creds");
        private(
            &creds,
            "# comment\n\n*  admin  default.pass\n10.1.0.11\troot\tfile:n1.pass\n  BMC7.lab admin env:BMC_PW insecure-tls\n[fd00::1] v6 env:BMC_PW\n",
        );
        let file = CredentialsFile::load_with_env(&creds, env).unwrap();
        let get = |url: &str| {
            let t = file.target(&url.parse().unwrap()).unwrap();
            (t.credentials.user.clone(), t.credentials.password.expose().to_string(), t.tls)
        };
        assert_eq!(get("https://10.1.0.11"), ("root".into(), "n1-pw".into(), TlsPolicy::Verify));
        assert_eq!(
            get("https://bmc7.LAB:8443/redfish/v1/Systems/1"),
            ("admin".into(), "from-env".into(), TlsPolicy::Insecure)
        );
        assert_eq!(get("https://[fd00::1]").0, "v6");
        assert_eq!(
            get("https://10.1.0.12"),
            ("admin".into(), "default-pw".into(), TlsPolicy::Verify)
        );
        let t = file.target(&"https://10.1.0.11".parse().unwrap()).unwrap();
        assert_eq!(t.credentials.source.as_deref(), Some(&*format!("{}:4", creds.display())));
        let debug = format!("{file:?} {t:?}");
        for pw in ["n1-pw", "from-env", "default-pw"] {
            assert!(!debug.contains(pw), "Debug shows a password: {debug}");
        }
    }

    #[test]
    fn no_default_names_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        private(&creds, "10.1.0.11 root env:BMC_PW\n");
        let file = CredentialsFile::load_with_env(&creds, env).unwrap();
        let err = file.target(&"https://10.9.9.9".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("no line for BMC host 10.9.9.9"), "{err}");
    }

    /// Networks and domains: the host's own line, then the narrowest network or the longest
    /// domain, then `*`; whatever the order of the lines.
    #[test]
    fn networks_and_domains_are_ranked_by_how_narrow_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        private(
            &creds,
            "* any env:BMC_PW\n10.0.0.0/8 wide env:BMC_PW\n10.1.0.0/16 rack env:BMC_PW\n\
             10.1.0.11 own env:BMC_PW\nfd00::/16 v6wide env:BMC_PW\nfd00:10::/48 v6 env:BMC_PW\n\
             *.lab lab env:BMC_PW\n*.bmc.lab bmc env:BMC_PW\n",
        );
        let file = CredentialsFile::load_with_env(&creds, env).unwrap();
        assert!(file.has_catch_all());
        let user = |url: &str| file.target(&url.parse().unwrap()).unwrap().credentials.user;
        assert_eq!(user("https://10.1.0.11"), "own");
        assert_eq!(user("https://10.1.7.1:8443"), "rack");
        assert_eq!(user("https://10.200.0.1"), "wide");
        assert_eq!(user("https://192.0.2.1"), "any");
        assert_eq!(user("https://[fd00:10::5]"), "v6");
        assert_eq!(user("https://[fd00:11::5]"), "v6wide");
        assert_eq!(user("https://r1.BMC.lab"), "bmc");
        assert_eq!(user("https://r1.other.lab"), "lab");
        // A suffix matches at a dot only, and a name is never matched by a network.
        assert_eq!(user("https://evilbmc.lab.example"), "any");
        assert_eq!(user("https://notbmc.lab"), "lab");

        private(&creds, "10.1.0.0/16 rack env:BMC_PW\n*.bmc.lab bmc env:BMC_PW\n");
        let file = CredentialsFile::load_with_env(&creds, env).unwrap();
        assert!(!file.has_catch_all());
        let err = file.target(&"https://attacker.example".parse().unwrap()).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("no line for BMC host attacker.example"), "{err}");
        assert!(file.target(&"https://10.2.0.1".parse().unwrap()).is_err());
    }

    /// A line binds a password to addresses, not to a scheme: `http://` needs `allow-http`.
    #[test]
    fn plain_http_needs_allow_http() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        private(&creds, "10.1.0.0/16 rack env:BMC_PW\n127.0.0.1 emu env:BMC_PW allow-http\n");
        let file = CredentialsFile::load_with_env(&creds, env).unwrap();
        assert!(file.target(&"https://10.1.0.11".parse().unwrap()).is_ok());
        let err = file.target(&"http://10.1.0.11:8000".parse().unwrap()).unwrap_err();
        assert_eq!(
            err,
            TargetError::PlainHttp {
                host: "10.1.0.11".into(),
                url: "http://10.1.0.11:8000".into(),
                line: format!("{}:1", creds.display()),
            }
        );
        let text = err.to_string();
        assert!(text.contains("allow-http") && text.contains("10.1.0.11:8000"), "{text}");
        let t = file.target(&"http://127.0.0.1:8000".parse().unwrap()).unwrap();
        assert!(t.allow_http);
        assert_eq!(t.credentials.user, "emu");
    }

    #[test]
    fn every_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        private(&dir.path().join("empty.pass"), "\n");
        std::fs::write(dir.path().join("open.pass"), "pw\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("open.pass"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let creds = dir.path().join("creds");
        private(
            &creds,
            "10.1.0.11 root\n\
             h1 us:er env:BMC_PW\n\
             h2 root env:NOPE\n\
             h3 root env:EMPTY\n\
             h4 root env:9X\n\
             h5 root missing.pass\n\
             h6 root empty.pass\n\
             h7 root open.pass\n\
             h8 root env:BMC_PW verify-nothing\n\
             https://h9 root env:BMC_PW\n\
             h10:443 root env:BMC_PW\n\
             *  root env:BMC_PW\n\
             *  root env:BMC_PW\n\
             H11 root env:BMC_PW\n\
             h11 root env:BMC_PW\n\
             10.1.0.5/16 root env:BMC_PW\n\
             10.1.0.0/33 root env:BMC_PW\n\
             *.10.1.0.1 root env:BMC_PW\n\
             *.bmc..lab root env:BMC_PW\n\
             10.1.0.0/16 root env:BMC_PW\n\
             10.1.0.0/16 root env:BMC_PW\n\
             *.Bmc.lab root env:BMC_PW\n\
             *.bmc.lab root env:BMC_PW\n",
        );
        let err = CredentialsFile::load_with_env(&creds, env).unwrap_err();
        let c = creds.display();
        let expect = [
            (1, "expected `BMC USER PASSWORD-SOURCE [OPTIONS]`"),
            (2, "without `:`"),
            (3, "NOPE is not set"),
            (4, "EMPTY is empty"),
            (5, "not an environment variable name"),
            (6, "missing.pass: cannot read"),
            (7, "is empty; expected the password on its first line"),
            (8, "mode 0644"),
            (9, "unknown option \"verify-nothing\""),
            (10, "not a host name"),
            (11, "not a host name"),
            (13, "`*` already has a line (FILE:12)"),
            (15, "`h11` already has a line"),
            (16, "network 10.1.0.5/16 has bits set after its /16; did you mean 10.1.0.0/16?"),
            (17, "is not a network; expected an address and a prefix length"),
            (18, "is not a domain pattern"),
            (19, "is not a domain pattern"),
            (21, "`10.1.0.0/16` already has a line"),
            (23, "`*.bmc.lab` already has a line"),
        ];
        assert_eq!(err.0.len(), expect.len(), "{err}");
        for ((line, phrase), message) in expect.iter().zip(&err.0) {
            assert!(message.starts_with(&format!("{c}:{line}: ")), "{message}");
            let phrase = phrase.replace("FILE", &c.to_string());
            assert!(message.contains(&phrase), "line {line}: {message}");
        }
        assert!(err.0[7].contains("open.pass"), "names the password file: {}", err.0[7]);
    }

    #[test]
    fn an_open_credentials_file_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        private(&creds, "* root env:BMC_PW\n");
        for mode in [0o640, 0o604, 0o620, 0o660] {
            std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = CredentialsFile::load_with_env(&creds, env).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: mode {mode:04o}", creds.display())), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(CredentialsFile::load_with_env(&creds, env).is_ok());
    }
}
