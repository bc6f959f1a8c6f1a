//! Directory logins for the console: bind to LDAP (Active Directory or OpenLDAP) *as the user*,
//! look up the user's groups, and map them to a role.
//!
//! The configuration is a TOML file (`bootforge serve --ldap-config FILE`, see docs/CONSOLE.md):
//!
//! ```toml
//! url = "ldaps://dc1.corp.example:636"      # or ldap://…:389 with starttls = true
//! starttls = false
//! ca_file = "/etc/bootforge/ldap-ca.pem"   # the directory's CA (else the system's roots)
//! bind_dn = "uid={user},ou=people,dc=corp,dc=example"   # AD: "{user}@corp.example"
//! user_base = "ou=people,dc=corp,dc=example"           # optional: find the user's entry
//! user_filter = "(uid={user})"                          # AD: "(sAMAccountName={user})"
//! group_base = "ou=groups,dc=corp,dc=example"
//! group_filter = "(member={dn})"            # AD nested: "(member:1.2.840.113556.1.4.1941:={dn})"
//! [roles]
//! "cn=boot-admins,ou=groups,dc=corp,dc=example" = "admin"
//! ```
//!
//! A login is: connect (LDAPS, or LDAP then StartTLS; a plain connection only with
//! `allow_plain = true`, which the service warns about), simple-bind with the user's own DN and
//! password (an empty password is refused before anything is sent: LDAP treats it as an
//! anonymous bind that "succeeds"), optionally search for the user's entry to learn its DN, then
//! search the groups whose member it is. The user's role is the largest of its groups' roles; a
//! user in no mapped group cannot log in. No service account is needed.
//!
//! The login name goes into a DN through [`ldap3::dn_escape`] (RFC 4514) and into filters through
//! [`ldap3::ldap_escape`] (RFC 4515), so `*`, `(`, `,` or NUL in a name never widen a search or
//! change which entry is bound; the password is sent only inside the bind, never logged.

use super::auth::Role;
use anyhow::Context as _;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The `--ldap-config` file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://HOST[:PORT]` or `ldap://HOST[:PORT]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    /// Allow binding over `ldap://` without StartTLS: the password crosses the network in clear.
    #[serde(default)]
    pub allow_plain: bool,
    /// PEM CA certificates the directory's certificate must chain to; without it, the system's
    /// usual roots (Mozilla's).
    pub ca_file: Option<PathBuf>,
    /// The DN (or, for Active Directory, the user principal name) to bind as; `{user}` is the
    /// login name, escaped for a DN.
    pub bind_dn: String,
    /// Where to search for the user's own entry (its DN is then the group search's `{dn}`).
    pub user_base: Option<String>,
    /// Filter for the user's entry; `{user}` is escaped for a filter. Default `(uid={user})`.
    pub user_filter: Option<String>,
    pub group_base: String,
    /// Filter for the user's groups; `{dn}` (the user's DN) and `{user}` are escaped for a
    /// filter. Default `(member={dn})`.
    pub group_filter: Option<String>,
    /// Seconds for connecting and for each operation. Default 10.
    pub timeout_secs: Option<u64>,
    /// Group DN (compared case-insensitively) → role.
    pub roles: BTreeMap<String, Role>,
}

/// A loaded configuration, ready to log users in.
pub struct Directory {
    pub config: LdapConfig,
    tls: Arc<rustls::ClientConfig>,
    /// `roles`' keys normalised for comparison.
    roles: Vec<(String, Role)>,
    source: String,
}

/// Why a directory login failed. Only [`LoginError::kind`] reaches the audit log; the detail
/// goes to the server log (it never holds the password).
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (or no such user): the bind was refused.
    BadCredentials,
    /// The user is in no group that `roles` maps.
    NoRole,
    /// The directory could not be reached or answered an error.
    Unavailable(String),
}

impl LoginError {
    pub fn kind(&self) -> &'static str {
        match self {
            LoginError::BadCredentials => "bad-credentials",
            LoginError::NoRole => "no-role",
            LoginError::Unavailable(_) => "directory-unavailable",
        }
    }
}

impl Directory {
    /// Reads and checks the configuration file; every problem names the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<Directory> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the LDAP config {source}"))?;
        let config: LdapConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        Directory::new(config, source)
    }

    pub fn new(config: LdapConfig, source: String) -> anyhow::Result<Directory> {
        let url = config.url.to_ascii_lowercase();
        let tls_url = url.starts_with("ldaps://");
        anyhow::ensure!(
            tls_url || url.starts_with("ldap://"),
            "{source}: url: {:?} must start with ldaps:// or ldap://",
            config.url
        );
        anyhow::ensure!(
            !(tls_url && config.starttls),
            "{source}: starttls: an ldaps:// URL is already TLS; set starttls = false"
        );
        anyhow::ensure!(
            tls_url || config.starttls || config.allow_plain,
            "{source}: url: {} would send passwords in clear; use ldaps://, set starttls = true, or (only on a trusted network) allow_plain = true",
            config.url
        );
        anyhow::ensure!(
            config.bind_dn.contains("{user}"),
            "{source}: bind_dn: must contain {{user}} (e.g. uid={{user}},ou=people,dc=example,dc=org, or {{user}}@corp.example for Active Directory)"
        );
        anyhow::ensure!(
            !config.roles.is_empty(),
            "{source}: roles: map at least one group DN to read, reimage or admin"
        );
        if config.allow_plain && !tls_url && !config.starttls {
            tracing::warn!("{source}: allow_plain: directory passwords cross the network in clear");
        }
        let tls = tls_config(config.ca_file.as_deref(), &source)?;
        let roles = config.roles.iter().map(|(dn, r)| (normalize_dn(dn), *r)).collect();
        Ok(Directory { config, tls, roles, source })
    }

    /// Where the configuration came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Logs `user` in: binds as the user, finds its groups, maps them to a role. Returns the
    /// role, or why not.
    pub async fn login(&self, user: &str, password: &str) -> Result<Role, LoginError> {
        if user.is_empty() || password.is_empty() || user.len() > 256 || password.len() > 1024 {
            return Err(LoginError::BadCredentials); // an empty password is an anonymous bind
        }
        let c = &self.config;
        let timeout = Duration::from_secs(c.timeout_secs.unwrap_or(10).clamp(1, 120));
        let settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(c.starttls)
            .set_config(self.tls.clone());
        let unavailable = |what: &str, e: ldap3::LdapError| {
            LoginError::Unavailable(format!("{}: {what}: {e}", self.source))
        };
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &c.url)
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        ldap3::drive!(conn);
        let bind_dn = c.bind_dn.replace("{user}", &ldap3::dn_escape(user));
        let bound = ldap.with_timeout(timeout).simple_bind(&bind_dn, password).await;
        match bound {
            Ok(r) if r.rc == 0 => {}
            // 49: invalidCredentials (also an unknown user, on purpose indistinguishable).
            Ok(r) if r.rc == 49 || r.rc == 32 || r.rc == 50 => {
                let _ = ldap.unbind().await;
                return Err(LoginError::BadCredentials);
            }
            Ok(r) => {
                let _ = ldap.unbind().await;
                return Err(LoginError::Unavailable(format!(
                    "{}: bind: the directory answered {} {}",
                    self.source, r.rc, r.text
                )));
            }
            Err(e) => return Err(unavailable("bind", e)),
        }
        let result = self.role_of(&mut ldap, user, &bind_dn, timeout).await;
        let _ = ldap.unbind().await;
        result
    }

    /// As the bound user: its DN (searched for when `user_base` is set), its groups, its role.
    async fn role_of(
        &self,
        ldap: &mut ldap3::Ldap,
        user: &str,
        bind_dn: &str,
        timeout: Duration,
    ) -> Result<Role, LoginError> {
        let c = &self.config;
        let failed = |what: &str, e: ldap3::LdapError| {
            LoginError::Unavailable(format!("{}: {what}: {e}", self.source))
        };
        let user_f = ldap3::ldap_escape(user);
        let dn = match &c.user_base {
            None => bind_dn.to_string(),
            Some(base) => {
                let filter =
                    c.user_filter.as_deref().unwrap_or("(uid={user})").replace("{user}", &user_f);
                let (entries, _) = ldap
                    .with_timeout(timeout)
                    .search(base, Scope::Subtree, &filter, vec!["1.1"])
                    .await
                    .and_then(|r| r.success())
                    .map_err(|e| failed("user search", e))?;
                match entries.as_slice() {
                    [one] => SearchEntry::construct(one.clone()).dn,
                    [] => return Err(LoginError::NoRole),
                    _ => {
                        return Err(LoginError::Unavailable(format!(
                            "{}: user_filter: several entries match one login name",
                            self.source
                        )))
                    }
                }
            }
        };
        let filter = c
            .group_filter
            .as_deref()
            .unwrap_or("(member={dn})")
            .replace("{dn}", &ldap3::ldap_escape(&dn))
            .replace("{user}", &user_f);
        let (entries, _) = ldap
            .with_timeout(timeout)
            .search(&c.group_base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| failed("group search", e))?;
        let groups: Vec<String> =
            entries.into_iter().map(|e| normalize_dn(&SearchEntry::construct(e).dn)).collect();
        role_for(&self.roles, &groups).ok_or(LoginError::NoRole)
    }
}

/// The largest role any of `groups` maps to.
fn role_for(roles: &[(String, Role)], groups: &[String]) -> Option<Role> {
    roles.iter().filter(|(dn, _)| groups.iter().any(|g| g == dn)).map(|(_, r)| *r).max()
}

/// A DN for comparison: lower case, without spaces around `,` and `=`.
fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            let (a, v) = rdn.split_once('=').unwrap_or((rdn, ""));
            format!("{}={}", a.trim(), v.trim())
        })
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// TLS for the directory: its CA file, else Mozilla's roots; *ring*, TLS 1.2 and 1.3.
fn tls_config(ca_file: Option<&Path>, source: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("{source}: ca_file: cannot read {}", path.display()))?;
            for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!(
                        "{source}: ca_file {}: certificate {}: {e}",
                        path.display(),
                        i + 1
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!(
                        "{source}: ca_file {}: certificate {}: {e}",
                        path.display(),
                        i + 1
                    )
                })?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "{source}: ca_file {} holds no PEM certificate",
                path.display()
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("the TLS provider offers neither TLS 1.2 nor 1.3")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> anyhow::Result<Directory> {
        let text = format!(
            "url = \"ldaps://dir:636\"\nbind_dn = \"uid={{user}},ou=people,dc=x\"\ngroup_base = \"dc=x\"\n{extra}\n[roles]\n\"cn=Ops, ou=groups,dc=x\" = \"reimage\"\n\"cn=root,ou=groups,dc=x\" = \"admin\"\n"
        );
        let config: LdapConfig = toml::from_str(&text)?;
        Directory::new(config, "ldap.toml".into())
    }

    #[test]
    fn plain_binds_are_refused_unless_allowed() {
        assert!(config("").is_ok());
        let plain = |extra: &str| {
            let text = format!(
                "url = \"ldap://dir\"\nbind_dn = \"uid={{user}}\"\ngroup_base = \"dc=x\"\n{extra}\n[roles]\n\"cn=a\" = \"read\"\n"
            );
            Directory::new(toml::from_str(&text).unwrap(), "ldap.toml".into())
        };
        let err = plain("").err().unwrap().to_string();
        assert!(err.contains("ldap.toml: url:") && err.contains("clear"), "{err}");
        assert!(plain("starttls = true").is_ok());
        assert!(plain("allow_plain = true").is_ok());
        let err = config("starttls = true").err().unwrap().to_string();
        assert!(err.contains("starttls"), "{err}");
    }

    #[test]
    fn unknown_fields_and_roles_are_named() {
        let err = config("colour = 1").err().unwrap().to_string();
        assert!(err.contains("colour"), "{err}");
        let text = "url = \"ldaps://d\"\nbind_dn = \"uid={user}\"\ngroup_base = \"x\"\n[roles]\n\"cn=a\" = \"root\"\n";
        let err = toml::from_str::<LdapConfig>(text).unwrap_err().to_string();
        assert!(err.contains("not a role"), "{err}");
    }

    #[test]
    fn the_largest_role_of_the_users_groups_wins() {
        let d = config("").unwrap();
        let g = |list: &[&str]| list.iter().map(|s| normalize_dn(s)).collect::<Vec<_>>();
        assert_eq!(role_for(&d.roles, &g(&["CN=ops,OU=Groups,DC=x"])), Some(Role::Reimage));
        assert_eq!(
            role_for(&d.roles, &g(&["cn=ops,ou=groups,dc=x", "cn=root,ou=groups,dc=x"])),
            Some(Role::Admin)
        );
        assert_eq!(role_for(&d.roles, &g(&["cn=other,dc=x"])), None);
    }

    #[test]
    fn user_input_is_escaped_for_filters_and_dns() {
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(ldap3::ldap_escape("a\\b\0"), "a\\5cb\\00");
        assert_eq!(ldap3::dn_escape("x,ou=admins"), "x\\2cou\\3dadmins");
        assert_eq!(ldap3::dn_escape(" lead+trail "), "\\20lead\\2btrail\\20");
    }
}
