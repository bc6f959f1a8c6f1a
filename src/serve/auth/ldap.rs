//! Directory logins for the console: bind to LDAP (Active Directory or OpenLDAP) *as the user*,
//! find the account that bound, look up its groups, and map them to a role.
//!
//! The configuration is a TOML file (`bootforge serve --ldap-config FILE`, see docs/CONSOLE.md):
//!
//! ```toml
//! url = "ldaps://dc1.corp.example:636"      # or ldap://…:389 with starttls = true
//! ca_file = "/etc/bootforge/ldap-ca.pem"   # the directory's CA (else the system's roots)
//! bind_dn = "{user}@corp.example"          # OpenLDAP: "uid={user},ou=people,dc=corp,dc=example"
//! netbios_domain = "CORP"                  # AD: also accept CORP\user
//! user_base = "dc=ad,dc=corp,dc=example"   # where accounts are searched for
//! group_base = "dc=ad,dc=corp,dc=example"
//! group_filter = "(member:1.2.840.113556.1.4.1941:={dn})"   # AD, nested groups
//! lookup_dn = "svc-bootforge@corp.example" # re-checks sessions every recheck_secs
//! lookup_password_file = "/etc/bootforge/ldap-lookup.pw"
//! [roles]
//! "cn=boot-admins,ou=groups,dc=ad,dc=corp,dc=example" = "admin"
//! ```
//!
//! A login is: parse the typed name into one of the accepted forms ([`Directory::bind_name`]:
//! the `bind_dn` template, `user@SUFFIX` when `bind_dn` is `{user}@SUFFIX`, `DOMAIN\user` when
//! `netbios_domain` is set; another domain or suffix is refused before anything is sent);
//! connect (LDAPS, or LDAP then StartTLS; a plain connection only with `allow_plain = true`);
//! simple-bind with that name and the password (an empty password is refused before anything is
//! sent: LDAP treats it as an anonymous bind that "succeeds"); then **find the account that
//! bound** — never "an entry that looks like the typed name": the server's own answer to "Who am
//! I?" (RFC 4532: `dn:DN` from OpenLDAP, `u:DOMAIN\sam` from Active Directory), or, where the
//! server does not implement it (Samba 4), the entry the bind name designates, resolved the way
//! the directory resolves binds (a DN; `userPrincipalName`, then the implicit `sAMAccountName`
//! of a UPN; the `sAMAccountName` of `DOMAIN\sam`). Zero or several entries refuse the login.
//! A UPN's holder is looked for in the whole domain, outside `user_base` and `user_filter`: a
//! holder they exclude refuses the login (falling back to the implicit name would hand over the
//! account of that `sAMAccountName`), and an entry found by the implicit name must accept the
//! same password in a second bind, or it is not the account that bound.
//! Then: a disabled account (Active Directory's `userAccountControl` bit 2) is refused, the
//! account's groups are searched, and its role is the largest its groups map to (none: refused).
//!
//! Invariants: the role and the name recorded for a session come from the one entry of the
//! account that bound, and the name is the entry's `name_attribute` (`sAMAccountName` for Active
//! Directory, `uid` otherwise), never the typed text, so `BOB`, `bob`, `CORP\bob` and
//! `bob@corp.example` are one person in the audit log. A name the service could not record
//! safely (control or bidirectional-override characters, over [`MAX_NAME_CHARS`]) refuses the
//! login rather than being altered.
//!
//! Threats: the login name goes into a DN through [`ldap3::dn_escape`] (RFC 4514) and into
//! filters through [`ldap3::ldap_escape`] (RFC 4515), so `*`, `(`, `,` or NUL in a name never
//! widen a search or change which entry is bound; the password is sent only inside the bind,
//! never logged. The directory's answers are untrusted too: a non-UTF-8 WhoAmI answer or name
//! refuses the login instead of panicking.
//!
//! Re-checks ([`Directory::recheck`]) run as the lookup account (`lookup_dn`, its password in
//! `lookup_password_file`), since the user's password is not kept: they look the session's
//! entry up by DN and answer its current role, or `None` when it is gone, disabled or in no
//! mapped group.
//!
//! Longer than the ~500 lines we aim for, on purpose: one directory conversation (settings,
//! TLS, bind, search, group mapping, re-checks) whose threats are stated once above and read
//! against the code that meets them.

use crate::serve::domain::actor::Role;
use anyhow::Context as _;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest recorded account name, in characters (AD's sAMAccountName holds at most 20; `uid`
/// values are short in practice).
pub const MAX_NAME_CHARS: usize = 64;
/// How often sessions are re-checked unless `recheck_secs` says otherwise: five minutes.
pub const DEFAULT_RECHECK_SECS: u64 = 300;

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
    /// The DN, or for Active Directory the user principal name `{user}@SUFFIX`, to bind as;
    /// `{user}` is the login name (escaped for a DN when the template is a DN).
    pub bind_dn: String,
    /// Where accounts are searched for (needed unless `bind_dn` is a DN template).
    pub user_base: Option<String>,
    /// An extra condition the account's entry must meet, e.g. `(objectClass=user)`. It no
    /// longer finds the entry (that is the bound identity's job), so `{user}` is refused.
    pub user_filter: Option<String>,
    pub group_base: String,
    /// Filter for the user's groups; `{dn}` (the account's DN) and `{user}` (its canonical
    /// name) are escaped for a filter. Default `(member={dn})`.
    pub group_filter: Option<String>,
    /// Active Directory's NetBIOS domain name (`CORP`): `CORP\user` logins are accepted and
    /// bound as typed; another domain is refused. Required when `bind_dn` is not a DN: a
    /// WhoAmI answer `u:DOMAIN\sam` is accepted only when `DOMAIN` is this.
    pub netbios_domain: Option<String>,
    /// The attribute holding the account's canonical name, recorded for the session and in the
    /// audit log. Default `sAMAccountName` when `netbios_domain` is set or `bind_dn` is not a
    /// DN (Active Directory), else `uid`.
    pub name_attribute: Option<String>,
    /// Where the account's groups come from: `member` (default: `group_filter` under
    /// `group_base`) or `token_groups` (Active Directory's `tokenGroups` of the account: every
    /// security group it is in, nested and primary ones included, matched to `roles` by SID).
    #[serde(default)]
    pub group_source: GroupSource,
    /// Seconds between re-checks of a directory session's account and groups. Default 300.
    pub recheck_secs: Option<u64>,
    /// The lookup account re-checks bind as (a DN, or a UPN for Active Directory). Without one,
    /// a directory session lasts at most `recheck_secs` (logging in again is the re-check).
    pub lookup_dn: Option<String>,
    /// File holding the lookup account's password (one line; readable by the service only).
    pub lookup_password_file: Option<PathBuf>,
    /// Seconds for connecting and for each operation. Default 10.
    pub timeout_secs: Option<u64>,
    /// Group DN (compared case-insensitively) → role.
    pub roles: BTreeMap<String, Role>,
}

/// Where an account's groups come from (`group_source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSource {
    /// The groups `group_filter` finds under `group_base`.
    #[default]
    Member,
    /// Active Directory's constructed `tokenGroups` attribute of the account's entry.
    TokenGroups,
}

/// The account a login or a re-check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The canonical name (`name_attribute`), checked by [`recordable_name`].
    pub name: String,
    /// The entry's DN, as the directory spells it; sessions are re-checked by it.
    pub dn: String,
    pub role: Role,
}

/// How the bound account is found when the server does not say (no WhoAmI).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    /// The entry of this DN.
    Dn(String),
    /// A user principal name: the entry with this `userPrincipalName` (anywhere in the
    /// domain; it must also be inside `user_base` and pass `user_filter`), else, when no entry
    /// holds it (AD's implicit UPN), the one whose `sAMAccountName` is the part before `@`,
    /// proven by a second bind.
    Upn(String),
    /// The entry with this `sAMAccountName`.
    Sam(String),
}

/// A loaded configuration, ready to log users in.
pub struct Directory {
    pub config: LdapConfig,
    tls: Arc<rustls::ClientConfig>,
    /// `roles`' keys normalised for comparison.
    roles: Vec<(String, Role)>,
    /// `SUFFIX` of a `{user}@SUFFIX` bind_dn: the only suffix `user@SUFFIX` logins may name.
    upn_suffix: Option<String>,
    name_attribute: String,
    /// The lookup account's password (never logged; the type has no `Debug`).
    lookup_password: Option<String>,
    source: String,
}

/// Why a directory login failed. Only [`LoginError::kind`] reaches the audit log; the detail
/// goes to the server log (it never holds the password).
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (or no such user): the bind was refused.
    BadCredentials,
    /// `DOMAIN\user` or `user@SUFFIX` of a domain or suffix this service does not serve.
    ForeignDomain,
    /// The bind succeeded but the account that bound could not be pinned to exactly one entry,
    /// or its name cannot be recorded (the detail says which).
    Unidentified(String),
    /// The account is disabled.
    Disabled,
    /// The user is in no group that `roles` maps.
    NoRole,
    /// The directory could not be reached or answered an error.
    Unavailable(String),
}

impl LoginError {
    pub fn kind(&self) -> &'static str {
        match self {
            LoginError::BadCredentials => "bad-credentials",
            LoginError::ForeignDomain => "foreign-domain",
            LoginError::Unidentified(_) => "account-unidentified",
            LoginError::Disabled => "account-disabled",
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
        anyhow::ensure!(
            !config.user_filter.as_deref().is_some_and(|f| f.contains("{user}")),
            "{source}: user_filter: no longer finds the account (the account that bound is found by the directory's WhoAmI answer or the bind name), so it cannot contain {{user}}; drop the key, or keep only a condition such as (objectClass=user)"
        );
        let dn_template = is_dn_template(&config.bind_dn);
        anyhow::ensure!(
            dn_template || config.user_base.is_some(),
            "{source}: user_base: needed when bind_dn is not a DN (the account is searched for under it)"
        );
        let upn_suffix = config
            .bind_dn
            .strip_prefix("{user}@")
            .filter(|s| !s.is_empty() && !s.contains(['{', '@', '\\', ',', '=']))
            .map(str::to_string);
        if let Some(d) = &config.netbios_domain {
            anyhow::ensure!(
                !d.is_empty() && d.len() <= 15 && !d.contains(['\\', '@', '.', ' ']),
                "{source}: netbios_domain: {d:?} is not a NetBIOS domain name (e.g. CORP)"
            );
        }
        // Active Directory's WhoAmI answers `u:DOMAIN\\sam`; without our domain's name such an
        // answer cannot be told from another domain's account, so it is required up front.
        anyhow::ensure!(
            dn_template || config.netbios_domain.is_some(),
            "{source}: netbios_domain: needed when bind_dn is not a DN (Active Directory): set it to the domain's NetBIOS name (e.g. CORP), so the directory's answer to \"who am I\" (u:CORP\\name) can be checked to be this domain"
        );
        let ad = config.netbios_domain.is_some() || !dn_template;
        let name_attribute = config
            .name_attribute
            .clone()
            .unwrap_or_else(|| if ad { "sAMAccountName" } else { "uid" }.into());
        anyhow::ensure!(
            !name_attribute.is_empty()
                && name_attribute.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "{source}: name_attribute: {name_attribute:?} is not an attribute name"
        );
        anyhow::ensure!(
            config.recheck_secs.is_none_or(|s| (1..=86_400).contains(&s)),
            "{source}: recheck_secs: between 1 and 86400"
        );
        let lookup_password = match (&config.lookup_dn, &config.lookup_password_file) {
            (None, None) => None,
            (Some(_), Some(file)) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("{source}: lookup_password_file: cannot read {}", file.display())
                })?;
                let pw = text.trim_end_matches(['\n', '\r']).to_string();
                anyhow::ensure!(
                    !pw.is_empty(),
                    "{source}: lookup_password_file: {} is empty (an empty password is an anonymous bind)",
                    file.display()
                );
                Some(pw)
            }
            _ => anyhow::bail!(
                "{source}: lookup_dn and lookup_password_file go together (the lookup account re-checks sessions)"
            ),
        };
        if lookup_password.is_none() {
            tracing::warn!(
                "{source}: no lookup_dn: directory sessions cannot be re-checked, so each lasts at most recheck_secs ({} s); users then log in again",
                config.recheck_secs.unwrap_or(DEFAULT_RECHECK_SECS)
            );
        }
        if config.allow_plain && !tls_url && !config.starttls {
            tracing::warn!("{source}: allow_plain: directory passwords cross the network in clear");
        }
        let tls = tls_config(config.ca_file.as_deref(), &source)?;
        let roles = config.roles.iter().map(|(dn, r)| (normalize_dn(dn), *r)).collect();
        Ok(Directory { config, tls, roles, upn_suffix, name_attribute, lookup_password, source })
    }

    /// Where the configuration came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The login forms this directory accepts, for an error message: `NAME`, `NAME@SUFFIX`,
    /// `DOMAIN\\NAME` as configured.
    pub fn login_forms(&self) -> String {
        let mut forms = vec!["NAME".to_string()];
        if let Some(s) = &self.upn_suffix {
            forms.push(format!("NAME@{s}"));
        }
        if let Some(d) = &self.config.netbios_domain {
            forms.push(format!("{d}\\NAME"));
        }
        forms.join(" or ")
    }

    /// Milliseconds between re-checks of a directory session.
    pub fn recheck_ms(&self) -> u64 {
        self.config.recheck_secs.unwrap_or(DEFAULT_RECHECK_SECS) * 1000
    }

    /// Whether sessions can be re-checked (a lookup account is configured).
    pub fn can_recheck(&self) -> bool {
        self.lookup_password.is_some()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs.unwrap_or(10).clamp(1, 120))
    }

    /// The name to bind with for what the user typed, and how to find the entry it designates.
    /// `user@SUFFIX` and `DOMAIN\user` must name this directory's suffix and domain (compared
    /// case-insensitively); anything else goes through the `bind_dn` template.
    fn bind_name(&self, typed: &str) -> Result<(String, Ident), LoginError> {
        let template = &self.config.bind_dn;
        if let Some((domain, sam)) = typed.split_once('\\') {
            let ours = self.config.netbios_domain.as_deref();
            if !ours.is_some_and(|d| d.eq_ignore_ascii_case(domain)) {
                return Err(LoginError::ForeignDomain);
            }
            if sam.is_empty() || sam.contains(['\\', '@']) {
                return Err(LoginError::BadCredentials);
            }
            return Ok((format!("{}\\{sam}", ours.unwrap_or_default()), Ident::Sam(sam.into())));
        }
        if let Some(suffix) = &self.upn_suffix {
            if let Some((user, theirs)) = typed.rsplit_once('@') {
                if !theirs.eq_ignore_ascii_case(suffix) {
                    return Err(LoginError::ForeignDomain);
                }
                if user.is_empty() || user.contains('@') {
                    return Err(LoginError::BadCredentials);
                }
                let upn = format!("{user}@{suffix}");
                return Ok((upn.clone(), Ident::Upn(upn)));
            }
            let upn = format!("{typed}@{suffix}");
            return Ok((upn.clone(), Ident::Upn(upn)));
        }
        if is_dn_template(template) {
            let dn = template.replace("{user}", &ldap3::dn_escape(typed));
            return Ok((dn.clone(), Ident::Dn(dn)));
        }
        // A template of another shape (`CORP\{user}`): bound as is, found by the typed name.
        if typed.contains(['\\', '@']) {
            return Err(LoginError::BadCredentials);
        }
        Ok((template.replace("{user}", typed), Ident::Sam(typed.into())))
    }

    /// A connection to the directory (TLS as configured), not yet bound.
    async fn connect(&self) -> Result<ldap3::Ldap, LoginError> {
        let c = &self.config;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout())
            .set_starttls(c.starttls)
            .set_config(self.tls.clone());
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &c.url)
            .await
            .map_err(|e| self.unavailable("cannot connect", e))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    fn unavailable(&self, what: &str, e: ldap3::LdapError) -> LoginError {
        LoginError::Unavailable(format!("{}: {what}: {}", self.source, log_safe(&e.to_string())))
    }

    /// Simple-binds `ldap` as `name`; a refused bind is [`LoginError::BadCredentials`].
    async fn bind(&self, ldap: &mut ldap3::Ldap, name: &str, pw: &str) -> Result<(), LoginError> {
        match ldap.with_timeout(self.timeout()).simple_bind(name, pw).await {
            Ok(r) if r.rc == 0 => Ok(()),
            // 49: invalidCredentials (also an unknown user, on purpose indistinguishable);
            // 32 noSuchObject, 50 insufficientAccessRights, 53 unwillingToPerform (AD: must
            // change password, or a disabled account on some versions).
            Ok(r) if matches!(r.rc, 49 | 32 | 50 | 53) => Err(LoginError::BadCredentials),
            Ok(r) => Err(LoginError::Unavailable(format!(
                "{}: bind: the directory answered {} {}",
                self.source,
                r.rc,
                log_safe(&r.text)
            ))),
            Err(e) => Err(self.unavailable("bind", e)),
        }
    }

    /// Logs `user` in: binds as the user, finds the account that bound, its groups and role.
    pub async fn login(&self, user: &str, password: &str) -> Result<Account, LoginError> {
        if user.is_empty() || password.is_empty() || user.len() > 256 || password.len() > 1024 {
            return Err(LoginError::BadCredentials); // an empty password is an anonymous bind
        }
        if user.chars().any(char::is_control) {
            return Err(LoginError::BadCredentials);
        }
        let (bind_name, ident) = self.bind_name(user)?;
        let mut ldap = self.connect().await?;
        let result = async {
            self.bind(&mut ldap, &bind_name, password).await?;
            let ident = self.who_am_i(&mut ldap).await?.unwrap_or(ident);
            let found = self.find(&mut ldap, &ident).await?;
            if found.inferred {
                // The entry was inferred (AD's implicit UPN), not read from the directory's
                // own resolution of the bind: it must take the same password itself, or it
                // is not the account that bound (e.g. the UPN's holder was hidden from the
                // search by access rights, or lives in another domain of the forest).
                match self.bind(&mut ldap, &found.dn, password).await {
                    Ok(()) => {}
                    Err(LoginError::BadCredentials) => {
                        return Err(LoginError::Unidentified(format!(
                            "{}: {:?} refused the password that bound {bind_name:?}: it is not the account that bound",
                            self.source, found.dn
                        )))
                    }
                    Err(e) => return Err(e),
                }
            }
            if found.disabled {
                return Err(LoginError::Disabled);
            }
            let role = self.role_of(&mut ldap, &found.dn, &found.name).await?;
            Ok(Account { name: found.name, dn: found.dn, role: role.ok_or(LoginError::NoRole)? })
        }
        .await;
        let _ = ldap.unbind().await;
        result
    }

    /// Re-checks the account of `dn` as the lookup account: `Ok(Some)` with its current name
    /// and role, `Ok(None)` when the entry is gone, disabled or in no mapped group, `Err` when
    /// the directory cannot say (then nothing should change).
    pub async fn recheck(&self, dn: &str) -> Result<Option<Account>, LoginError> {
        let (Some(lookup), Some(pw)) = (&self.config.lookup_dn, &self.lookup_password) else {
            return Err(LoginError::Unavailable(format!(
                "{}: no lookup_dn: sessions cannot be re-checked",
                self.source
            )));
        };
        let mut ldap = self.connect().await?;
        let result = async {
            match self.bind(&mut ldap, lookup, pw).await {
                Err(LoginError::BadCredentials) => {
                    return Err(LoginError::Unavailable(format!(
                        "{}: lookup_dn: the directory refused the lookup account's bind",
                        self.source
                    )))
                }
                other => other?,
            }
            let found = match self.find(&mut ldap, &Ident::Dn(dn.to_string())).await {
                Ok(f) => f,
                Err(LoginError::Unidentified(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if found.disabled {
                return Ok(None);
            }
            let role = self.role_of(&mut ldap, &found.dn, &found.name).await?;
            Ok(role.map(|role| Account { name: found.name, dn: found.dn, role }))
        }
        .await;
        let _ = ldap.unbind().await;
        result
    }

    /// The server's own answer to "Who am I?" (RFC 4532), when it implements the operation:
    /// `dn:DN` or `u:DOMAIN\sam` (the domain must be ours). `None` when the server does not
    /// implement it (Samba 4 answers protocolError).
    async fn who_am_i(&self, ldap: &mut ldap3::Ldap) -> Result<Option<Ident>, LoginError> {
        let answer = ldap
            .with_timeout(self.timeout())
            .extended(ldap3::exop::WhoAmI)
            .await
            .map_err(|e| self.unavailable("WhoAmI", e))?;
        let (exop, res) = (answer.0, answer.1);
        if res.rc != 0 {
            return Ok(None);
        }
        // Not `WhoAmIResp::parse`: it panics on bytes that are not UTF-8.
        let Some(id) = exop.val.as_deref().and_then(|v| std::str::from_utf8(v).ok()) else {
            return Err(LoginError::Unidentified(format!(
                "{}: the WhoAmI answer is empty or not UTF-8",
                self.source
            )));
        };
        who_am_i_ident(id, self.config.netbios_domain.as_deref()).map(Some).map_err(|e| match e {
            LoginError::Unidentified(d) => {
                LoginError::Unidentified(format!("{}: {d}", self.source))
            }
            e => e,
        })
    }

    /// The one entry `ident` designates, with its canonical name and whether it is disabled.
    ///
    /// A UPN is resolved as Active Directory resolves a bind: the entry holding it *anywhere in
    /// the domain* (searched from the naming context, without `user_filter`), and only when no
    /// entry holds it, the implicit UPN's `sAMAccountName` ([`Found::inferred`]: the caller
    /// proves that entry by binding as it). A holder outside `user_base` or failing
    /// `user_filter` refuses the login: falling back to the `sAMAccountName` would hand over
    /// another account, the very take-over of issue 13.
    async fn find(&self, ldap: &mut ldap3::Ldap, ident: &Ident) -> Result<Found, LoginError> {
        let base = self.config.user_base.as_deref().unwrap_or("");
        let esc = |s: &str| ldap3::ldap_escape(s).into_owned();
        let mut inferred = false;
        let entries = match ident {
            Ident::Dn(dn) => self.search(ldap, dn, Scope::Base, "(objectClass=*)", true).await,
            Ident::Sam(sam) => {
                let filter = format!("(sAMAccountName={})", esc(sam));
                self.search(ldap, base, Scope::Subtree, &filter, true).await
            }
            Ident::Upn(upn) => {
                let filter = format!("(userPrincipalName={})", esc(upn));
                let root = self.naming_context(ldap).await?;
                let holders = self
                    .search(ldap, &root, Scope::Subtree, &filter, false)
                    .await
                    .map_err(|e| self.unavailable("account search", e))?;
                match holders.len() {
                    // AD resolves a UPN no account holds to the sAMAccountName before the `@`.
                    0 => {
                        inferred = true;
                        let sam = upn.rsplit_once('@').map_or(upn.as_str(), |(u, _)| u);
                        let filter = format!("(sAMAccountName={})", esc(sam));
                        self.search(ldap, base, Scope::Subtree, &filter, true).await
                    }
                    1 => {
                        let holder = SearchEntry::construct(holders.into_iter().next().unwrap()).dn;
                        let scoped = self
                            .search(ldap, base, Scope::Subtree, &filter, true)
                            .await
                            .map_err(|e| self.unavailable("account search", e))?;
                        let same = |e: &ldap3::ResultEntry| {
                            normalize_dn(&SearchEntry::construct(e.clone()).dn)
                                == normalize_dn(&holder)
                        };
                        if !(scoped.len() == 1 && same(&scoped[0])) {
                            return Err(LoginError::Unidentified(format!(
                                "{}: the account holding {upn:?} ({holder:?}) is outside user_base or fails user_filter",
                                self.source
                            )));
                        }
                        Ok(scoped)
                    }
                    n => {
                        return Err(LoginError::Unidentified(format!(
                            "{}: {n} entries hold the principal name {upn:?}; exactly one must",
                            self.source
                        )))
                    }
                }
            }
        }
        .map_err(|e| self.unavailable("account search", e))?;
        let entry = match <[_; 1]>::try_from(entries) {
            Ok([one]) => SearchEntry::construct(one),
            Err(v) => {
                return Err(LoginError::Unidentified(format!(
                    "{}: {} entries match the account that bound ({ident:?}); exactly one must",
                    self.source,
                    v.len()
                )))
            }
        };
        let values = |attr: &str| {
            entry
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(attr))
                .flat_map(|(_, v)| v.iter())
                .collect::<Vec<_>>()
        };
        // Exactly one name: several (OpenLDAP's `uid` is multi-valued) would make the recorded
        // name an arbitrary pick among them.
        let name = match values(&self.name_attribute)[..] {
            [one] => one.clone(),
            ref v => {
                return Err(LoginError::Unidentified(format!(
                    "{}: the account's entry {:?} has {} values of {} (name_attribute); exactly one must",
                    self.source,
                    entry.dn,
                    v.len(),
                    self.name_attribute
                )))
            }
        };
        let name = recordable_name(&name).ok_or_else(|| {
            LoginError::Unidentified(format!(
                "{}: the account's {} cannot be recorded (empty, over {MAX_NAME_CHARS} characters, or control, separator or invisible characters)",
                self.source, self.name_attribute
            ))
        })?;
        // Active Directory: ACCOUNTDISABLE (0x2) of userAccountControl.
        let disabled = values("userAccountControl")
            .first()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
            & 2
            != 0;
        Ok(Found { dn: entry.dn, name, disabled, inferred })
    }

    /// The domain's naming context (the root DSE's `defaultNamingContext`), where a principal
    /// name is looked for whatever `user_base` says; `user_base` when the server names none.
    async fn naming_context(&self, ldap: &mut ldap3::Ldap) -> Result<String, LoginError> {
        let values = self.values(ldap, "", "defaultNamingContext").await?;
        let root = values.into_iter().find_map(|v| String::from_utf8(v).ok());
        Ok(root.unwrap_or_else(|| self.config.user_base.clone().unwrap_or_default()))
    }

    /// The entries under `base` matching `filter` (and `user_filter` when `restricted`), with
    /// the attributes [`Directory::find`] reads; a base that does not exist has none.
    async fn search(
        &self,
        ldap: &mut ldap3::Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        restricted: bool,
    ) -> Result<Vec<ldap3::ResultEntry>, ldap3::LdapError> {
        let extra = if restricted { self.config.user_filter.as_deref().unwrap_or("") } else { "" };
        let filter = format!("(&{filter}{extra})");
        let attrs = vec![self.name_attribute.as_str(), "userAccountControl"];
        let r = ldap.with_timeout(self.timeout()).search(base, scope, &filter, attrs).await?;
        if r.1.rc == 32 {
            return Ok(Vec::new()); // noSuchObject
        }
        r.success().map(|(entries, _)| entries)
    }

    /// The largest role of the groups `dn` is a member of (`None`: no mapped group).
    async fn role_of(
        &self,
        ldap: &mut ldap3::Ldap,
        dn: &str,
        name: &str,
    ) -> Result<Option<Role>, LoginError> {
        let c = &self.config;
        if c.group_source == GroupSource::TokenGroups {
            // The SIDs of the account's security groups (nested and primary included), then
            // each mapped group's own SID: a few base-scope reads, no subtree search.
            let token = self.values(ldap, dn, "tokenGroups").await?;
            let mut groups = Vec::new();
            for group in c.roles.keys() {
                let sids = self.values(ldap, group, "objectSid").await?;
                if sids.iter().any(|sid| token.contains(sid)) {
                    groups.push(normalize_dn(group));
                }
            }
            return Ok(role_for(&self.roles, &groups));
        }
        let filter = c
            .group_filter
            .as_deref()
            .unwrap_or("(member={dn})")
            .replace("{dn}", &ldap3::ldap_escape(dn))
            .replace("{user}", &ldap3::ldap_escape(name));
        let (entries, _) = ldap
            .with_timeout(self.timeout())
            .search(&c.group_base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.unavailable("group search", e))?;
        let groups: Vec<String> =
            entries.into_iter().map(|e| normalize_dn(&SearchEntry::construct(e).dn)).collect();
        Ok(role_for(&self.roles, &groups))
    }
}

impl Directory {
    /// The raw values of `attr` of the entry `dn` (none when the entry does not exist).
    /// ldap3 files values that are valid UTF-8 as text and others as bytes; a SID may be
    /// either, so both are taken back as bytes.
    async fn values(
        &self,
        ldap: &mut ldap3::Ldap,
        dn: &str,
        attr: &str,
    ) -> Result<Vec<Vec<u8>>, LoginError> {
        let r = ldap
            .with_timeout(self.timeout())
            .search(dn, Scope::Base, "(objectClass=*)", vec![attr])
            .await
            .map_err(|e| self.unavailable(attr, e))?;
        if r.1.rc == 32 {
            return Ok(Vec::new());
        }
        let (entries, _) = r.success().map_err(|e| self.unavailable(attr, e))?;
        let mut out = Vec::new();
        for e in entries {
            let e = SearchEntry::construct(e);
            for (k, v) in e.attrs {
                if k.eq_ignore_ascii_case(attr) {
                    out.extend(v.into_iter().map(String::into_bytes));
                }
            }
            for (k, v) in e.bin_attrs {
                if k.eq_ignore_ascii_case(attr) {
                    out.extend(v);
                }
            }
        }
        Ok(out)
    }
}

/// What [`Directory::find`] learns of an entry.
struct Found {
    dn: String,
    name: String,
    disabled: bool,
    /// Found by AD's implicit UPN (no entry holds the principal name bound with) rather than
    /// by what the directory resolved: [`Directory::login`] binds as it to prove it.
    inferred: bool,
}

/// The account a WhoAmI answer (RFC 4532) names: `dn:DN`, or Active Directory's
/// `u:DOMAIN\sam`, accepted only when `DOMAIN` is `netbios_domain` (compared
/// case-insensitively). Without `netbios_domain` a `u:` answer cannot be told from another
/// domain's account of the same `sAMAccountName`, so it is not accepted.
fn who_am_i_ident(id: &str, netbios_domain: Option<&str>) -> Result<Ident, LoginError> {
    if let Some(dn) = id.strip_prefix("dn:") {
        return Ok(Ident::Dn(dn.to_string()));
    }
    if let Some((domain, sam)) = id.strip_prefix("u:").and_then(|u| u.split_once('\\')) {
        return match netbios_domain {
            Some(ours) if ours.eq_ignore_ascii_case(domain) && !sam.is_empty() => {
                Ok(Ident::Sam(sam.to_string()))
            }
            Some(_) => Err(LoginError::ForeignDomain),
            None => Err(LoginError::Unidentified(format!(
                "the WhoAmI answer {:?} names a domain, and netbios_domain is not set to check it",
                id.chars().take(80).collect::<String>()
            ))),
        };
    }
    Err(LoginError::Unidentified(format!(
        "the WhoAmI answer {:?} is neither dn: nor u:DOMAIN\\name",
        id.chars().take(80).collect::<String>()
    )))
}

/// Text the directory controls (an error message, a diagnostic), made safe for one log line:
/// control characters, line and paragraph separators and bidirectional controls are written as
/// `\u{…}` escapes, and the text is cut at 300 characters. A server cannot forge log lines.
fn log_safe(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 300 {
            out.push('…');
            break;
        }
        if c.is_control() || invisible_or_separator(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that end a line without being control characters (U+2028, U+2029), that are
/// invisible (Unicode's Default_Ignorable_Code_Point: zero-width and format characters, soft
/// hyphen, variation selectors, tags), or that reorder text (bidirectional controls, which are
/// among the ignorables).
pub(crate) fn invisible_or_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}') || default_ignorable(c)
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt, Unicode 15;
/// stable: no code point has left it). Written out because no well-kept crate exposes this
/// property alone, and the list is short.
pub(crate) fn default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether `bind_dn` is a DN template (`uid={user},ou=…`) rather than a UPN or NT4 name.
fn is_dn_template(bind_dn: &str) -> bool {
    bind_dn.contains('=')
}

/// The directory's name of an account as it may be recorded: 1 to [`MAX_NAME_CHARS`]
/// characters, none of them a control character, a line or paragraph separator (U+2028,
/// U+2029: a line break to some log readers), or an invisible character such as a zero-width
/// space or a bidirectional control (which would let a name look like another in a terminal
/// or the page). Spaces, apostrophes and
/// letters of any script are kept as they are: `jürgen`, `o'brien`, `john smith`. The audit log
/// is JSON (serde escapes quotes); the server log prints names with `{:?}`.
pub fn recordable_name(raw: &str) -> Option<String> {
    let n = raw.chars().count();
    let ok = (1..=MAX_NAME_CHARS).contains(&n)
        && raw.trim() == raw
        && !raw.chars().any(|c| c.is_control() || invisible_or_separator(c));
    ok.then(|| raw.to_string())
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

/// TLS for the directory: its CA file, else Mozilla's roots (see [`crate::cafile`]).
fn tls_config(ca_file: Option<&Path>, source: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    crate::cafile::client_config(
        ca_file,
        &format!("{source}: ca_file"),
        crate::cafile::Trust::FileInstead,
    )
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

    fn ad() -> Directory {
        let text = "url = \"ldaps://dc\"\nbind_dn = \"{user}@corp.example\"\nnetbios_domain = \"CORP\"\nuser_base = \"DC=ad\"\ngroup_base = \"DC=ad\"\n[roles]\n\"cn=a\" = \"read\"\n";
        Directory::new(toml::from_str(text).unwrap(), "ad.toml".into()).unwrap()
    }

    #[test]
    fn the_three_windows_forms_bind_one_account_and_other_domains_are_refused() {
        let d = ad();
        let upn = |s: &str| Ok((s.to_string(), Ident::Upn(s.to_string())));
        assert_eq!(d.bind_name("bob").map_err(|e| e.kind()), upn("bob@corp.example"));
        assert_eq!(d.bind_name("bob@CORP.Example").map_err(|e| e.kind()), upn("bob@corp.example"));
        assert_eq!(
            d.bind_name("corp\\bob").map_err(|e| e.kind()),
            Ok(("CORP\\bob".to_string(), Ident::Sam("bob".into())))
        );
        for foreign in ["bob@evil.example", "EVIL\\bob", "bob@corp.example.evil"] {
            assert!(matches!(d.bind_name(foreign), Err(LoginError::ForeignDomain)), "{foreign}");
        }
        for bad in ["CORP\\", "CORP\\a\\b", "CORP\\a@corp.example", "@corp.example"] {
            assert!(matches!(d.bind_name(bad), Err(LoginError::BadCredentials)), "{bad}");
        }
        assert_eq!(d.name_attribute, "sAMAccountName");
        // OpenLDAP: a DN template; the typed text is escaped into it, `\` is no domain.
        let o = config("").unwrap();
        assert_eq!(o.name_attribute, "uid");
        assert_eq!(
            o.bind_name("a,ou=x").map_err(|e| e.kind()),
            Ok((
                "uid=a\\2cou\\3dx,ou=people,dc=x".into(),
                Ident::Dn("uid=a\\2cou\\3dx,ou=people,dc=x".into())
            ))
        );
        assert!(matches!(o.bind_name("CORP\\alice"), Err(LoginError::ForeignDomain)));
    }

    #[test]
    fn configuration_mistakes_of_the_identity_keys_are_named() {
        let err = config("user_base = \"dc=x\"\nuser_filter = \"(uid={user})\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("user_filter") && err.contains("{user}"), "{err}");
        assert!(config("user_base = \"dc=x\"\nuser_filter = \"(objectClass=person)\"").is_ok());
        let err = config("lookup_dn = \"cn=svc\"").err().unwrap().to_string();
        assert!(err.contains("lookup_password_file"), "{err}");
        let err = config("recheck_secs = 0").err().unwrap().to_string();
        assert!(err.contains("recheck_secs"), "{err}");
        let err = config("name_attribute = \"uid)(x\"").err().unwrap().to_string();
        assert!(err.contains("name_attribute"), "{err}");
        let text = "url = \"ldaps://dc\"\nbind_dn = \"{user}@corp.example\"\ngroup_base = \"DC=ad\"\n[roles]\n\"cn=a\" = \"read\"\n";
        let err = Directory::new(toml::from_str(text).unwrap(), "ad.toml".into()).err().unwrap();
        assert!(err.to_string().contains("user_base"), "{err}");
        let d = config("").unwrap();
        assert_eq!((d.recheck_ms(), d.can_recheck()), (300_000, false));
    }

    #[test]
    fn names_are_recorded_as_the_directory_spells_them_or_not_at_all() {
        for ok in ["alice", "jürgen", "o'brien", "john smith", "Zoë-Ann.Ø_1"] {
            assert_eq!(recordable_name(ok).as_deref(), Some(ok));
        }
        let long = "a".repeat(MAX_NAME_CHARS + 1);
        for bad in [
            "",
            " lead",
            "trail ",
            "a\nb",
            "a\u{1b}[31m",
            "evil\u{202e}nimda",
            "line\u{2028}break",
            "para\u{2029}graph",
            "next\u{85}line",
            "b\u{200b}ob",
            "b\u{ad}ob",
            &long,
        ] {
            assert_eq!(recordable_name(bad), None, "{bad:?}");
        }
        assert!(recordable_name(&"ü".repeat(MAX_NAME_CHARS)).is_some(), "characters, not bytes");
    }

    #[test]
    fn a_whoami_domain_is_accepted_only_when_it_is_ours() {
        let sam = |s: &str| Ok::<_, &str>(Ident::Sam(s.into()));
        let parse = |id: &str, ours| who_am_i_ident(id, ours).map_err(|e| e.kind());
        assert_eq!(parse("u:CORP\\bob", Some("corp")), sam("bob"));
        assert_eq!(parse("u:EVIL\\bob", Some("CORP")), Err("foreign-domain"));
        // Without netbios_domain, another domain's bob cannot be told from ours.
        assert_eq!(parse("u:EVIL\\bob", None), Err("account-unidentified"));
        assert_eq!(parse("u:CORP\\bob", None), Err("account-unidentified"));
        assert_eq!(parse("u:CORP\\", Some("CORP")), Err("foreign-domain"));
        assert_eq!(parse("dn:uid=a,dc=x", None), Ok(Ident::Dn("uid=a,dc=x".into())));
        assert_eq!(parse("u:bob", Some("CORP")), Err("account-unidentified"));
        // And an Active Directory configuration without it does not start.
        let text = "url = \"ldaps://dc\"\nbind_dn = \"{user}@corp.example\"\nuser_base = \"DC=ad\"\ngroup_base = \"DC=ad\"\n[roles]\n\"cn=a\" = \"read\"\n";
        let err = Directory::new(toml::from_str(text).unwrap(), "ad.toml".into()).err().unwrap();
        assert!(err.to_string().starts_with("ad.toml: netbios_domain: needed"), "{err}");
    }

    #[test]
    fn directory_text_cannot_forge_log_lines() {
        let forged = "bad\n2026-01-01 INFO login ok\r\u{2028}x\u{2029}\u{202e}\u{85}";
        let safe = log_safe(forged);
        assert!(!safe.chars().any(|c| c.is_control() || invisible_or_separator(c)), "{safe}");
        assert!(safe.starts_with("bad\\u{a}2026-01-01 INFO login ok\\u{d}\\u{2028}x"), "{safe}");
        assert_eq!(log_safe(&"a".repeat(1000)).chars().count(), 301);
        assert_eq!(
            log_safe("certificate not valid for name \"127.0.0.1\""),
            "certificate not valid for name \"127.0.0.1\""
        );
    }

    #[test]
    fn user_input_is_escaped_for_filters_and_dns() {
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(ldap3::ldap_escape("a\\b\0"), "a\\5cb\\00");
        assert_eq!(ldap3::dn_escape("x,ou=admins"), "x\\2cou\\3dadmins");
        assert_eq!(ldap3::dn_escape(" lead+trail "), "\\20lead\\2btrail\\20");
    }
}
