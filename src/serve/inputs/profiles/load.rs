//! Loading the profile folders: settings, templates compiled with the filters, and errors that
//! name file, line and the undefined value.

use super::filters::*;
use crate::inventory::Node;
use crate::script::LocalBoot;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most errors [`Profiles::check_against`] lists; the rest are counted.
pub(super) const MAX_CHECK_ERRORS: usize = 20;

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
    /// `stall_after = "45m"`: an install that began and made no progress (no answer, fetch or
    /// callback) for longer than this is shown as **stalled** ([`DEFAULT_STALL_AFTER_SECS`]
    /// when not set). A number with a unit: `s`, `m`, `h` or `d`.
    #[serde(default = "default_stall", rename = "stall_after", deserialize_with = "de_stall")]
    pub stall_after_secs: u64,
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

/// The default `stall_after`: one hour, longer than a network install usually takes between two
/// steps (a slow mirror's package download is one asset fetch per package).
pub const DEFAULT_STALL_AFTER_SECS: u64 = 3600;

fn default_stall() -> u64 {
    DEFAULT_STALL_AFTER_SECS
}

fn de_stall<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text: String = serde::Deserialize::deserialize(d)?;
    parse_stall_after(&text).map_err(serde::de::Error::custom)
}

/// `stall_after`'s value: a whole number and one unit (`90s`, `45m`, `2h`, `1d`), from one
/// second to 30 days.
pub fn parse_stall_after(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "stall_after = {:?}: expected a whole number and a unit s, m, h or d (like \"45m\"), \
             from 1s to 30d",
            text.chars().take(32).collect::<String>()
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(scale).ok_or_else(bad)?;
    if secs == 0 || secs > 30 * 86_400 {
        return Err(bad());
    }
    Ok(secs)
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
            stall_after_secs: DEFAULT_STALL_AFTER_SECS,
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

/// All profiles of the `--profiles` directory, compiled.
pub struct Profiles {
    dir: PathBuf,
    pub(super) env: Environment<'static>,
    pub(super) profiles: BTreeMap<String, Profile>,
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
    pub(super) fn describe(&self, e: &minijinja::Error) -> String {
        describe(&self.dir, e, &self.sources, None)
    }

    /// [`Profiles::describe`] for an error of a render for `node` with `profile`'s variables,
    /// which lets an undefined value be named exactly.
    pub(super) fn describe_render(
        &self,
        e: &minijinja::Error,
        node: &Node,
        profile: &str,
    ) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_after_takes_a_number_and_a_unit_within_bounds() {
        let ok = [("90s", 90), ("45m", 2700), ("2h", 7200), ("1d", 86_400), ("30d", 2_592_000)];
        for (text, secs) in ok {
            assert_eq!(parse_stall_after(text), Ok(secs), "{text}");
        }
        for bad in
            ["", "45", "m", "0s", "31d", "1.5h", "-1h", "45 m", "45M", "99999999999999999999d"]
        {
            let e = parse_stall_after(bad).unwrap_err();
            assert!(e.starts_with("stall_after = ") && e.contains("\"45m\""), "{bad}: {e}");
        }
        let s: Settings = toml::from_str("stall_after = \"90s\"").unwrap();
        assert_eq!(s.stall_after_secs, 90);
        let s: Settings = toml::from_str("").unwrap();
        assert_eq!(s.stall_after_secs, DEFAULT_STALL_AFTER_SECS);
    }
}
