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
//! `vars` (the profile's variables, [`Settings::vars`], each overridden by the node's non-empty
//! CSV column of the same name), `server`, `token`, `hostname`, `install_id`, `done_url`,
//! `started_url`, `failed_url`, `config_base_url`, and the functions `config_url(file)`,
//! `asset_url(path)` and `failed_url_with(reason)`. An undefined value is an error that names
//! the variable and its tag (``undefined value in `{{ node.iface | ipxe }}`: `node.iface`: the
//! inventory has no `iface` column…``).
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
//! * `{{ vars.mirror | url }}`: not an escape but a parse: the value must be an `http`, `https`
//!   or `ftp` URL of safe characters, and the result has its parts (`scheme`, `host`, `port`,
//!   `hostport`, `path`, `url`) for installers that take them separately. See [`parse_url`].
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
    /// `[vars]`: the profile's variables and their defaults (`mirror = "…"`), seen by templates
    /// as `vars.NAME`. A node's CSV column of the same name, when not empty, overrides the
    /// default for that node. Values are free text, like free columns: filter them.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
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
            vars: BTreeMap::new(),
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
    /// Every template's text by template name, to quote the expression an error is about.
    sources: Sources,
}

/// Template sources by template name (`PROFILE/FILE`).
type Sources = BTreeMap<String, String>;

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
        env.add_filter("url", |v: Cow<'_, str>| {
            parse_url(&v).map(UrlParts::into_value).map_err(refused)
        });
        let mut sources = Sources::new();
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
            match load_one(&mut env, &mut sources, &path, &name) {
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
        Ok(Profiles { dir: dir.to_path_buf(), env, profiles, sources })
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
        let vars = self.profiles.get(profile).map(|p| &p.settings.vars);
        template.render(context(ctx, vars)).map_err(|e| self.describe_render(&e, ctx.node, profile))
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
                    let render = RenderContext {
                        node,
                        server: "http://bootforge.invalid:8080",
                        token: Some("0"),
                        install_id: "check",
                    };
                    let ctx = context(&render, Some(&p.settings.vars));
                    let mut mine = Vec::new();
                    for template in &files {
                        let result =
                            template.as_ref().map_err(|e| self.describe(e)).and_then(|t| {
                                t.render_captured_to(&ctx, std::io::sink())
                                    .map(drop)
                                    .map_err(|e| self.describe_render(&e, node, &p.name))
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
        describe(&self.dir, e, &self.sources, None)
    }

    /// [`Profiles::describe`] for an error of a render for `node` with `profile`'s variables,
    /// which lets an undefined value be named exactly.
    fn describe_render(&self, e: &minijinja::Error, node: &Node, profile: &str) -> String {
        let columns = node.template_vars();
        let vars = self.profiles.get(profile).map(|p| &p.settings.vars);
        let names = Names { node: &columns, vars };
        describe(&self.dir, e, &self.sources, Some(&names))
    }
}

/// An error as `DIR/PROFILE/FILE:LINE: what`; see [`describe_undefined`] for undefined values.
fn describe(dir: &Path, e: &minijinja::Error, sources: &Sources, names: Option<&Names>) -> String {
    let file =
        e.name().map_or_else(|| dir.display().to_string(), |n| dir.join(n).display().to_string());
    let mut detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    if e.kind() == ErrorKind::UndefinedError {
        let tag = e
            .name()
            .and_then(|n| sources.get(n))
            .zip(e.range())
            .and_then(|(src, range)| enclosing_tag(src, range));
        if let Some(tag) = tag {
            detail = format!("{}{detail}", describe_undefined(&tag, names));
        }
    }
    match e.line() {
        Some(line) => format!("{file}:{line}: {}{detail}", e.kind()),
        None => format!("{file}: {}{detail}", e.kind()),
    }
}

/// The names a render could see: the node's columns and the profile's `[vars]`.
struct Names<'a> {
    node: &'a BTreeMap<String, String>,
    vars: Option<&'a BTreeMap<String, String>>,
}

/// The `{{ … }}` or `{% … %}` tag around `range` of `src`, on one line.
fn enclosing_tag(src: &str, range: std::ops::Range<usize>) -> Option<String> {
    let before = src.get(..range.start)?;
    let open = before.rfind("{{").into_iter().chain(before.rfind("{%")).max()?;
    let after = src.get(range.end..)?;
    let close = after.find("}}").into_iter().chain(after.find("%}")).min()? + range.end + 2;
    let tag = src.get(open..close)?;
    Some(tag.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// ` `node.iface` in `{{ node.iface | ipxe }}`: the inventory has no `iface` column…`: which
/// `node.NAME` or `vars.NAME` of the failing tag is undefined for this node, and where such a
/// value comes from. Without `names` (an error outside a render) every such name in the tag is
/// listed as a candidate.
fn describe_undefined(tag: &str, names: Option<&Names>) -> String {
    let mut missing = Vec::new();
    for (prefix, kind) in [("node.", "node"), ("vars.", "vars")] {
        for (at, _) in tag.match_indices(prefix) {
            if tag[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let rest = &tag[at + prefix.len()..];
            let end =
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let name = &rest[..end];
            let defined = names.map(|n| match kind {
                "node" => n.node.contains_key(name),
                _ => n.vars.is_some_and(|v| v.contains_key(name)),
            });
            if !name.is_empty() && defined != Some(true) && !missing.contains(&(kind, name)) {
                missing.push((kind, name));
            }
        }
    }
    let hints: Vec<String> = missing
        .iter()
        .map(|(kind, name)| match *kind {
            "node" => format!(
                "`node.{name}`: the inventory has no `{name}` column; add it, with a value for \
                 every node of this profile"
            ),
            _ => format!(
                "`vars.{name}`: `{name}` is not under [vars] in this profile's profile.toml; \
                 declare it there with a default (a CSV column `{name}` overrides it per node)"
            ),
        })
        .collect();
    match hints.is_empty() {
        true => format!(" in `{tag}`"),
        false => format!(" in `{tag}`: {}", hints.join("; ")),
    }
}

fn load_one(
    env: &mut Environment<'static>,
    sources: &mut Sources,
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
                let template = format!("{name}/{rel}");
                sources.insert(template.clone(), src.clone());
                if let Err(e) = env.add_template_owned(template, src) {
                    errors.push(describe(path.parent().unwrap_or(path), &e, sources, None));
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

/// A URL taken apart by [`parse_url`] (the `url` filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// `http`, `https` or `ftp`, lower case.
    pub scheme: String,
    /// A DNS name, an IPv4 address or a bracketed IPv6 address.
    pub host: String,
    pub port: Option<u16>,
    /// `host` or `host:port`, as installers that ask for a "hostname" want it.
    pub hostport: String,
    /// Begins with `/`; `/` when the URL has none.
    pub path: String,
}

impl UrlParts {
    /// The whole URL again, normalised (lower-case scheme).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.hostport, self.path)
    }

    fn into_value(self) -> Value {
        let port = self.port.map(|p| p.to_string()).unwrap_or_default();
        let url = self.url();
        minijinja::context! {
            scheme => self.scheme,
            host => self.host,
            port => port,
            hostport => self.hostport,
            path => self.path,
            url => url,
        }
    }
}

/// The `url` filter: `text` must be `SCHEME://HOST[:PORT][/PATH]` with scheme `http`, `https`
/// or `ftp`, a host of letters, digits, `.` and `-` (or a bracketed IPv6 address), and a path of
/// letters, digits and `/ . _ - ~ % + @ : , =`. Those characters are safe unquoted in an iPXE
/// argument, a shell word and a preseed value, so the parts may go anywhere. User names,
/// queries and fragments are refused: no installer mirror or proxy needs them. The error says
/// what is wrong without repeating the value.
pub fn parse_url(text: &str) -> Result<UrlParts, String> {
    let shape = "expected SCHEME://HOST[:PORT][/PATH] with scheme http, https or ftp";
    let (scheme, rest) =
        text.split_once("://").ok_or_else(|| format!("the `url` filter: no `://`; {shape}"))?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "ftp") {
        return Err(format!("the `url` filter: scheme {scheme:?} is not supported; {shape}"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("the `url` filter: a user name (`user@`) is not supported; put credentials in the proxy or mirror itself".into());
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && !host.starts_with(['.', '-'])
    };
    if !host_ok {
        return Err(format!("the `url` filter: the host is not a DNS name, an IPv4 address or a bracketed IPv6 address; {shape}"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => {
                return Err(format!(
                    "the `url` filter: the port is not a number from 1 to 65535; {shape}"
                ))
            }
        },
    };
    let path_char = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '/' | '.' | '_' | '-' | '~' | '%' | '+' | '@' | ':' | ',' | '=')
    };
    if let Some((at, c)) = path.char_indices().find(|&(_, c)| !path_char(c)) {
        let what = match c {
            '?' => "a query (`?`) is not supported".to_string(),
            '#' => "a fragment (`#`) is not supported".to_string(),
            c => format!("the path holds {} at position {}", char_class(c), at + 1),
        };
        return Err(format!(
            "the `url` filter: {what}; the path may hold letters, digits and / . _ - ~ % + @ : , ="
        ));
    }
    let hostport = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(UrlParts { scheme, host: host.to_string(), port, hostport, path: path.to_string() })
}

/// What `failed_url_with(reason)` percent-encodes: everything but letters, digits and `- . _ ~`
/// (RFC 3986's unreserved characters), so the URL stays one word for iPXE, a shell and YAML.
const REASON_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The template context; see the module documentation. `vars` are the profile's variables
/// (none when the profile is not loaded, which a render then reports as undefined).
fn context(ctx: &RenderContext<'_>, vars: Option<&BTreeMap<String, String>>) -> Value {
    let server = ctx.server.to_string();
    let host = crate::serve::util::encode(&ctx.node.hostname);
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
    let started_url = with_token(format!("{server}/hosts/{host}/started"), install.clone());
    let failed_url = with_token(format!("{server}/hosts/{host}/failed"), install);
    let failed_base = failed_url.clone();
    // `failed_url` with `&reason=TEXT`, percent-encoded so it is one safe word in any format.
    let failed_url_with = Value::from_function(move |reason: String| {
        let encoded = percent_encoding::utf8_percent_encode(&reason, REASON_ENCODE);
        format!("{failed_base}&reason={encoded}")
    });
    let node_vars = ctx.node.template_vars();
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .flatten()
        .map(|(name, default)| {
            let value = ctx.node.vars.get(name).filter(|v| !v.is_empty()).unwrap_or(default);
            (name.clone(), value.clone())
        })
        .collect();
    let config_base = format!("{server}/config/{host}/");
    let token_for_config = token_q.clone();
    let config_url = Value::from_function(move |file: String| {
        let url = format!(
            "{config_base}{}",
            crate::serve::util::encode_path(file.trim_start_matches('/'))
        );
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
        format!("{asset_base}{}", crate::serve::util::encode_path(path.trim_start_matches('/')))
    });
    minijinja::context! {
        node => Value::from(node_vars),
        vars => Value::from(vars),
        hostname => ctx.node.hostname.clone(),
        server => server,
        token => ctx.token.unwrap_or(""),
        install_id => ctx.install_id,
        done_url => done_url,
        started_url => started_url,
        failed_url => failed_url,
        failed_url_with => failed_url_with,
        config_url => config_url,
        config_base_url => config_base_url,
        asset_url => asset_url,
    }
}
