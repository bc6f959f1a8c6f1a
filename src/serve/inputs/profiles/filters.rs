//! The escaping filters templates use (`ipxe`, `shell`, `yaml`, `preseed`, `url`): pure functions
//! that refuse what their place cannot hold.

use minijinja::{ErrorKind, Value};

/// The characters the `ipxe` filter lets through: ASCII letters and digits and `. _ - : / , = + @
/// %`.
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

pub(super) fn refused(message: String) -> minijinja::Error {
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

    pub(super) fn into_value(self) -> Value {
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
