//! Install profiles: `--profiles DIR/NAME/` folders of minijinja templates.
//!
//! * `boot.ipxe`: the install chain, answered to `/boot/{host}` while the host is flagged;
//! * `config/**`: each file served rendered at `/config/{host}/{path}` while flagged;
//! * `profile.toml` (optional): [`Settings`].
//!
//! Every template is compiled when the profiles are loaded, so a syntax error stops the start (or
//! is reported by a reload, which keeps the old profiles) with file and line. Rendering is strict:
//! a misspelt variable is an error, not an empty string that would produce a broken installer
//! configuration. Templates see `node` (every CSV column, [`crate::inventory::Node::template_vars`]),
//! `server`, `token`, `hostname`, `install_id`, `done_url`, `failed_url`, `config_base_url`, and
//! the functions
//! `config_url(file)` and `asset_url(path)`.
//!
//! # Escaping
//!
//! Nothing is escaped by default. The known columns (`hostname`, `ip`, `netmask`, `prefix`,
//! `cidr`, `gateway`, `dns`, `mac`, `vlan`, `server`, `profile`) and the URLs built by the service
//! are validated into forms that are safe anywhere in these formats, but every other column is
//! free text (printable, one line) and must go through the filter of the place it lands in:
//!
//! * `{{ node.iface | ipxe }}`: a value inside one argument of an iPXE command line, such as a
//!   kernel parameter. iPXE has no escape, so the filter refuses (the render fails) any value
//!   holding a character outside [`IPXE_SAFE`]; see [`ipxe_arg`].
//! * `{{ node.ssh_key | shell }}`: one word of a POSIX shell command line (kickstart `%post`,
//!   a kickstart option line, preseed `late_command`, cloud-init `late-commands`). The value is
//!   single-quoted when it holds anything but a few safe characters; line breaks and NULs are
//!   refused. See [`shell_word`]. Write no quotes around it.
//! * `{{ node.password_hash | yaml }}`: a YAML scalar (a value, a list item or a mapping key),
//!   written as a double-quoted string. See [`yaml_string`]. Write no quotes around it.
//! * `{{ node.install_disk | preseed }}`: the value of a debian-installer preseed line, which
//!   has no quoting: the filter refuses what would change the line. See [`preseed_value`].
//!
//! [`Profiles::check_against`] renders every template for every node at load time, so a value
//! that a filter refuses stops the load (or the reload) with the CSV line and host name, instead
//! of failing that node's install later.

use crate::inventory::{Inventory, Node};
use crate::script::LocalBoot;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most errors [`Profiles::check_against`] lists; the rest are counted.
const MAX_CHECK_ERRORS: usize = 20;

/// When the flag is cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClearOn {
    /// The installer calls the done URL (the default, and the safe choice).
    Callback,
    /// The first install-chain answer clears it, for installers that cannot call back.
    FirstAnswer,
}

/// `profile.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Shown in `GET /hosts` and logs.
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_clear")]
    pub clear: ClearOn,
    /// With `clear = "first-answer"`: for this long after the first answer, further `/boot`
    /// requests of the same host still get the install chain (same install id), because a
    /// machine asks more than once during one install.
    #[serde(default = "default_window")]
    pub repeat_window_secs: u64,
    /// How hosts using this profile leave iPXE for their disk: auto, exit or 0x80….
    #[serde(default, deserialize_with = "de_local_boot")]
    pub local_boot: Option<LocalBoot>,
}

fn default_clear() -> ClearOn {
    ClearOn::Callback
}
fn default_window() -> u64 {
    600
}

fn de_local_boot<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LocalBoot>, D::Error> {
    let text: String = serde::Deserialize::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            description: String::new(),
            clear: ClearOn::Callback,
            repeat_window_secs: default_window(),
            local_boot: None,
        }
    }
}

/// One loaded profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub settings: Settings,
    /// Paths under `config/`, with `/` separators.
    pub config_files: Vec<String>,
}

/// What a render needs besides the node.
pub struct RenderContext<'a> {
    pub node: &'a Node,
    /// Base URL of this service as the node reaches it.
    pub server: &'a str,
    /// The node token, when a secret is configured.
    pub token: Option<&'a str>,
    /// The open install's id (empty when rendering outside an install, e.g. the start-up check).
    pub install_id: &'a str,
}

/// All profiles of the `--profiles` directory, compiled.
pub struct Profiles {
    dir: PathBuf,
    env: Environment<'static>,
    profiles: BTreeMap<String, Profile>,
}

impl std::fmt::Debug for Profiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiles")
            .field("dir", &self.dir)
            .field("profiles", &self.profiles)
            .finish()
    }
}

impl Profiles {
    /// Loads and compiles every profile; all errors are collected into one message.
    pub fn load(dir: &Path) -> anyhow::Result<Profiles> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_filter("ipxe", |v: Cow<'_, str>| ipxe_arg(&v).map(str::to_string).map_err(refused));
        env.add_filter("shell", |v: Cow<'_, str>| shell_word(&v).map_err(refused));
        env.add_filter("yaml", |v: Cow<'_, str>| yaml_string(&v));
        env.add_filter("preseed", |v: Cow<'_, str>| {
            preseed_value(&v).map(str::to_string).map_err(refused)
        });
        let mut profiles = BTreeMap::new();
        let mut errors = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            anyhow::anyhow!("cannot read profiles directory {}: {e}", dir.display())
        })?;
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') {
                continue;
            }
            if let Err(e) = crate::inventory::parse_profile(&name) {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
            match load_one(&mut env, &path, &name) {
                Ok(p) => {
                    profiles.insert(name, p);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if profiles.is_empty() && errors.is_empty() {
            errors.push(format!(
                "{} holds no profile; expected one folder per profile with a boot.ipxe",
                dir.display()
            ));
        }
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("\n"));
        Ok(Profiles { dir: dir.to_path_buf(), env, profiles })
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Renders `file` (`boot.ipxe` or `config/PATH`) of `profile` for a node. The error names the
    /// template file and line.
    pub fn render(
        &self,
        profile: &str,
        file: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<String, String> {
        let name = format!("{profile}/{file}");
        let template = self.env.get_template(&name).map_err(|e| self.describe(&e))?;
        template.render(context(ctx)).map_err(|e| self.describe(&e))
    }

    /// Renders every template of every profile for every node that uses it, so a template that
    /// refers to a missing column, or a value that a filter refuses (see the module
    /// documentation), fails at load time instead of at a node's boot. Each error starts with
    /// `inventory line LINE (HOST): `; [`Profiles::check_inventory`] names the file as well.
    pub fn check_against(&self, nodes: &[Node]) -> Result<(), String> {
        self.check(nodes, |node| format!("inventory line {} ({})", node.line, node.hostname))
    }

    /// [`Profiles::check_against`] with errors starting `NODES.csv:LINE (HOST): `.
    pub fn check_inventory(&self, inventory: &Inventory) -> Result<(), String> {
        let source = inventory.source();
        self.check(inventory.nodes(), |node| format!("{source}:{} ({})", node.line, node.hostname))
    }

    /// Renders in parallel on rayon's pool: at every reload, 10,000 nodes take about half the
    /// time on two cores that they take on one.
    fn check(&self, nodes: &[Node], origin: impl Fn(&Node) -> String + Sync) -> Result<(), String> {
        use rayon::prelude::*;
        let mut errors = Vec::new();
        for p in self.profiles.values() {
            let files: Vec<_> = std::iter::once("boot.ipxe".to_string())
                .chain(p.config_files.iter().map(|f| format!("config/{f}")))
                .map(|file| self.env.get_template(&format!("{}/{file}", p.name)))
                .collect();
            let users: Vec<&Node> =
                nodes.iter().filter(|n| n.profile.as_deref() == Some(&p.name)).collect();
            let found: Vec<Vec<String>> = users
                .par_iter()
                .map(|node| {
                    let ctx = context(&RenderContext {
                        node,
                        server: "http://bootforge.invalid:8080",
                        token: Some("0"),
                        install_id: "check",
                    });
                    let mut mine = Vec::new();
                    for template in &files {
                        let result =
                            template.as_ref().map_err(|e| self.describe(e)).and_then(|t| {
                                t.render_captured_to(&ctx, std::io::sink())
                                    .map(drop)
                                    .map_err(|e| self.describe(&e))
                            });
                        if let Err(e) = result {
                            mine.push(format!("{}: {e}", origin(node)));
                        }
                    }
                    mine
                })
                .collect();
            errors.extend(found.into_iter().flatten());
        }
        if errors.len() > MAX_CHECK_ERRORS {
            let more = errors.len() - MAX_CHECK_ERRORS;
            errors.truncate(MAX_CHECK_ERRORS);
            errors.push(format!("… and {more} more errors not listed"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn describe(&self, e: &minijinja::Error) -> String {
        describe(&self.dir, e)
    }
}

fn describe(dir: &Path, e: &minijinja::Error) -> String {
    let file =
        e.name().map_or_else(|| dir.display().to_string(), |n| dir.join(n).display().to_string());
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    match e.line() {
        Some(line) => format!("{file}:{line}: {}{detail}", e.kind()),
        None => format!("{file}: {}{detail}", e.kind()),
    }
}

fn load_one(
    env: &mut Environment<'static>,
    path: &Path,
    name: &str,
) -> Result<Profile, Vec<String>> {
    let mut errors = Vec::new();
    let settings = match std::fs::read_to_string(path.join("profile.toml")) {
        Ok(text) => toml::from_str::<Settings>(&text).unwrap_or_else(|e| {
            errors.push(format!("{}: {e}", path.join("profile.toml").display()));
            Settings::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
        Err(e) => {
            errors.push(format!("{}: {e}", path.join("profile.toml").display()));
            Settings::default()
        }
    };
    let mut add = |env: &mut Environment<'static>, rel: &str, file: &Path| {
        match std::fs::read_to_string(file) {
            Ok(src) => {
                if let Err(e) = env.add_template_owned(format!("{name}/{rel}"), src) {
                    errors.push(describe(path.parent().unwrap_or(path), &e));
                }
            }
            Err(e) => errors.push(format!("{}: {e}", file.display())),
        }
    };
    let boot = path.join("boot.ipxe");
    if boot.is_file() {
        add(env, "boot.ipxe", &boot);
    } else {
        return Err(vec![format!(
            "{}: missing; every profile needs a boot.ipxe install-chain template",
            boot.display()
        )]);
    }
    let mut config_files = Vec::new();
    let config_dir = path.join("config");
    if config_dir.is_dir() {
        let mut stack = vec![config_dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.filter_map(|e| e.ok()) {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.is_file() {
                    let rel = p.strip_prefix(&config_dir).expect("under config/");
                    let Some(rel) = rel.to_str().map(|s| s.replace('\\', "/")) else { continue };
                    add(env, &format!("config/{rel}"), &p);
                    config_files.push(rel);
                }
            }
        }
    }
    config_files.sort();
    if errors.is_empty() {
        Ok(Profile { name: name.to_string(), settings, config_files })
    } else {
        Err(errors)
    }
}

/// The characters the `ipxe` filter lets through: ASCII letters and digits and `. _ - : / , = + @ %`.
///
/// iPXE reads a script line as whitespace-separated tokens (spaces and tabs); a token `;`, `||`
/// or `&&` ends a command, a token starting with `#` starts a comment, and `${...}` inside a token
/// is replaced by a setting, which may itself hold spaces or any of these. iPXE has no quoting or
/// escape character, so nothing can make those characters safe: whitespace, `$`, `{`, `}`, `;`,
/// `|`, `&` and `#` are refused. Quotes and `\` are refused too, whatever an iPXE build makes of
/// them: the Linux kernel, which receives the `kernel` line's arguments, groups words in double
/// quotes, and installers parse their own parameters further. Non-ASCII text is refused because
/// no kernel parameter or device name needs it. The punctuation kept is what kernel parameters,
/// device names and addresses use (`console=ttyS0,115200n8`, `eth0.120`, `ip=...:...`,
/// `/dev/disk/by-id/...`, `user@host`, `+`, `%` of percent-encoding) and means nothing to iPXE's
/// command line; a value is never the first word of a line, so a `:` cannot make it a label.
/// `?`, `~`, `*` and the like are left out although they mean nothing to iPXE either, because a
/// free value has no use for them in an iPXE line.
pub const IPXE_SAFE: &str = ". _ - : / , = + @ %";

/// A character that is safe in an iPXE argument ([`IPXE_SAFE`]) and in an unquoted shell word
/// (the same set as Python's `shlex.quote` leaves alone).
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '_' | '-' | ':' | '/' | ',' | '=' | '+' | '@' | '%')
}

/// Names a refused character for an error message, without showing the rest of the value.
fn char_class(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\t' => "a tab".into(),
        '\n' | '\r' => "a line break".into(),
        '\0' => "a NUL".into(),
        '`' => "a backquote".into(),
        '\'' => "a single quote (`'`)".into(),
        '"' => "a double quote (`\"`)".into(),
        c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
        c if c.is_whitespace() => format!("whitespace (U+{:04X})", c as u32),
        c if !c.is_ascii() => format!("a non-ASCII character (U+{:04X})", c as u32),
        c => format!("`{c}`"),
    }
}

fn refusal(filter: &str, value: &str, at: usize, c: char, rule: &str) -> String {
    format!(
        "the `{filter}` filter refused a value of {} characters: it holds {} at position {}; {rule}",
        value.chars().count(),
        char_class(c),
        value[..at].chars().count() + 1
    )
}

fn refused(message: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message)
}

/// The `ipxe` filter: returns `value` unchanged when every character is in [`IPXE_SAFE`] (or the
/// value is empty), and otherwise an error naming the first refused character and its position,
/// never the value itself (it may be long, or a secret).
pub fn ipxe_arg(value: &str) -> Result<&str, String> {
    match value.char_indices().find(|&(_, c)| !plain(c)) {
        None => Ok(value),
        Some((at, c)) => Err(refusal(
            "ipxe",
            value,
            at,
            c,
            &format!("a value in an iPXE command line may hold only ASCII letters, digits and {IPXE_SAFE}, because iPXE has no way to escape the others"),
        )),
    }
}

/// The `shell` filter: `value` as one POSIX shell word. A value of letters, digits and
/// `. _ - : / , = + @ %` is written as it is; any other (or empty) value is put in single quotes,
/// inside which only `'` is special, written `'\''`. A line break (`\n`, `\r`) or NUL is refused
/// rather than quoted: installers join or split lines before a shell sees them (preseed
/// continuation lines, kickstart, YAML folding), and a NUL ends a C string.
pub fn shell_word(value: &str) -> Result<String, String> {
    if let Some((at, c)) = value.char_indices().find(|&(_, c)| matches!(c, '\n' | '\r' | '\0')) {
        return Err(refusal(
            "shell",
            value,
            at,
            c,
            "a value in a shell command line must be one line without NULs",
        ));
    }
    if !value.is_empty() && value.chars().all(plain) {
        return Ok(value.to_string());
    }
    Ok(format!("'{}'", value.replace('\'', "'\\''")))
}

/// The `preseed` filter: `value` as the value of a debian-installer preseed line (`d-i KEY TYPE
/// VALUE`), which is everything to the end of the line, unquoted. There is nothing to escape, so
/// the filter refuses what would change the line's meaning: a line break or NUL, a trailing `\`
/// (it joins the next line to this one), and leading or trailing blanks (dropped by the parser,
/// so the value would not be what the CSV says).
pub fn preseed_value(value: &str) -> Result<&str, String> {
    let bad = value.char_indices().find(|&(_, c)| matches!(c, '\n' | '\r' | '\0'));
    if let Some((at, c)) = bad {
        let rule = "a preseed value must be one line without NULs";
        return Err(refusal("preseed", value, at, c, rule));
    }
    if value.ends_with('\\') {
        let at = value.len() - 1;
        let rule = "a preseed value may not end in `\\`, which would join the next line to it";
        return Err(refusal("preseed", value, at, '\\', rule));
    }
    if value.trim() != value {
        let (at, c) = value.char_indices().find(|(_, c)| c.is_whitespace()).expect("a blank");
        let rule = "a preseed value may not begin or end with blanks";
        return Err(refusal("preseed", value, at, c, rule));
    }
    Ok(value)
}

/// The `yaml` filter: `value` as a YAML double-quoted scalar. Ordinary text comes out exactly as
/// its JSON string encoding (`"`, `\` and control characters escaped, other text as it is),
/// which is valid YAML; the characters YAML reads as line breaks or does not print (DEL, C1
/// controls, U+2028, U+2029, U+FEFF, U+FFFE, U+FFFF) are escaped as `\uXXXX` as well. Never
/// fails.
pub fn yaml_string(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The template context; see the module documentation.
fn context(ctx: &RenderContext<'_>) -> Value {
    let server = ctx.server.to_string();
    let host = super::util::encode(&ctx.node.hostname);
    let token_q = ctx.token.map(|t| format!("token={t}"));
    let with_token = |base: String, extra: Option<String>| {
        let parts: Vec<String> = extra.into_iter().chain(token_q.clone()).collect();
        if parts.is_empty() {
            base
        } else {
            format!("{base}?{}", parts.join("&"))
        }
    };
    let install = Some(format!("install={}", ctx.install_id));
    let done_url = with_token(format!("{server}/hosts/{host}/done"), install.clone());
    let failed_url = with_token(format!("{server}/hosts/{host}/failed"), install);
    let config_base = format!("{server}/config/{host}/");
    let token_for_config = token_q.clone();
    let config_url = Value::from_function(move |file: String| {
        let url =
            format!("{config_base}{}", super::util::encode_path(file.trim_start_matches('/')));
        match &token_for_config {
            Some(t) => format!("{url}?{t}"),
            None => url,
        }
    });
    // For installers that append file names to a base URL (cloud-init's nocloud `s=`), the
    // token travels as a `~TOKEN` path segment instead of a query.
    let config_base_url = match ctx.token {
        Some(t) => format!("{server}/config/{host}/~{t}/"),
        None => format!("{server}/config/{host}/"),
    };
    let asset_base = format!("{server}/assets/");
    let asset_url = Value::from_function(move |path: String| {
        format!("{asset_base}{}", super::util::encode_path(path.trim_start_matches('/')))
    });
    minijinja::context! {
        node => Value::from(ctx.node.template_vars()),
        hostname => ctx.node.hostname.clone(),
        server => server,
        token => ctx.token.unwrap_or(""),
        install_id => ctx.install_id,
        done_url => done_url,
        failed_url => failed_url,
        config_url => config_url,
        config_base_url => config_base_url,
        asset_url => asset_url,
    }
}
