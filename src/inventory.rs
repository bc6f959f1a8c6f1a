//! The inventory: a CSV of nodes, validated as a whole into [`Node`]s.
//!
//! Everything downstream (scripts, images, the boot service) trusts a `Node`, so this module is
//! where untrusted text stops. Each field is parsed into a type that can only hold a safe value
//! (an `Ipv4Addr`, a [`Mac`], a checked hostname, a [`ServerUrl`]); free template columns are kept
//! as text but must be printable. Every error names the file, the line and the column, and all of
//! them are reported at once so an operator fixes the file in one pass.
//!
//! Invariants, and the threats they answer:
//!
//! * **One reader.** Every consumer of the CSV (`bootforge check`, the service's loads, the
//!   console's row editor) reads records through [`source_records`], one configuration of the
//!   csv crate, so they agree on where each record starts and ends.
//! * **Bounded messages.** A message quotes a value through [`quoted`]: escaped, and cut to 64
//!   characters, so a hostile value cannot make an error (or a log line built from one) large.
//! * **Bounded reports where the input is hostile.** [`Inventory::check`] keeps only the first
//!   errors (the service keeps [`MAX_REPORTED_ERRORS`]) and counts the rest, so an upload of bad
//!   rows cannot make an answer, or the memory behind it, many times its own size.
//!   [`Inventory::parse`], for the operator's own file, keeps them all.
//!
//! Longer than the ~500 lines we aim for, on purpose: the column table, the parser of each
//! column and the whole-file checks are one source of truth for what a row may hold, and are
//! read together when a column is added.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

/// Columns with a meaning of their own; any other column is a free template variable.
pub const KNOWN_COLUMNS: &[&str] = &[
    "hostname", "ip", "netmask", "gateway", "dns", "mac", "vlan", "server", "profile", "bmc",
    "uuid", "serial",
];

/// The longest value accepted in a free template column.
const MAX_FREE_VALUE: usize = 4096;
/// The longest `serial` accepted (SMBIOS strings are short; BMCs report them as they are).
pub const MAX_SERIAL: usize = 128;

/// One validated row of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The CSV line the row started on, for messages.
    pub line: u64,
    /// RFC 1123 host name, lower case.
    pub hostname: String,
    pub ip: Ipv4Addr,
    /// Prefix length of the node's subnet (from `ip`'s `/NN` or the `netmask` column).
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
    pub mac: Option<Mac>,
    pub vlan: Option<u16>,
    /// Per-row override of `--server`.
    pub server: Option<ServerUrl>,
    /// Install profile used by the boot service.
    pub profile: Option<String>,
    /// The node's BMC, for attaching its medium through Redfish (see [`crate::redfish`]).
    pub bmc: Option<BmcUrl>,
    /// The machine's SMBIOS UUID (`uuid` column, filled by `bootforge discover`): a boot that
    /// reports another is refused, as a wrong MAC is.
    pub uuid: Option<SystemUuid>,
    /// The machine's serial number (`serial` column): printable, at most [`MAX_SERIAL`] bytes.
    pub serial: Option<String>,
    /// Every other column, by header name: free template variables.
    pub vars: BTreeMap<String, String>,
}

impl Node {
    /// The subnet mask for [`Node::prefix`].
    pub fn netmask(&self) -> Ipv4Addr {
        prefix_to_mask(self.prefix)
    }

    /// Address with prefix, as written in the CSV (`10.20.0.11/24`).
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix)
    }

    /// Every value of the row as text, for templates: the known columns in normalised form
    /// (plus `netmask`, `prefix` and `cidr`, derived) and the free columns as written.
    pub fn template_vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.vars.clone();
        let mut put = |k: &str, v: Option<String>| {
            vars.insert(k.to_string(), v.unwrap_or_default());
        };
        put("hostname", Some(self.hostname.clone()));
        put("ip", Some(self.ip.to_string()));
        put("prefix", Some(self.prefix.to_string()));
        put("netmask", Some(self.netmask().to_string()));
        put("cidr", Some(self.cidr()));
        put("gateway", self.gateway.map(|g| g.to_string()));
        put("dns", self.dns.map(|d| d.to_string()));
        put("mac", self.mac.map(|m| m.to_string()));
        put("vlan", self.vlan.map(|v| v.to_string()));
        put("server", self.server.as_ref().map(|s| s.to_string()));
        put("profile", self.profile.clone());
        put("bmc", self.bmc.as_ref().map(|b| b.to_string()));
        put("uuid", self.uuid.map(|u| u.to_string()));
        put("serial", self.serial.clone());
        vars
    }
}

/// A validated inventory, in file order.
#[derive(Debug, Clone)]
pub struct Inventory {
    source: String,
    columns: Vec<String>,
    nodes: Vec<Node>,
    by_hostname: HashMap<String, usize>,
}

impl Inventory {
    /// Reads and validates `path`. Nothing is returned unless every row is valid.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let file = std::fs::File::open(path).map_err(|e| InventoryError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Inventory::parse(&path.display().to_string(), std::io::BufReader::new(file))
    }

    /// Validates CSV text from any reader; `source` names it in error messages. Every error is
    /// returned (this is `bootforge check`, run by an operator on their own file).
    pub fn parse<R: Read>(source: &str, mut reader: R) -> Result<Inventory, InventoryError> {
        let mut text = Vec::new();
        reader.read_to_end(&mut text).map_err(|e| {
            InventoryError::Invalid(vec![FieldError {
                source: source.to_string(),
                line: 0,
                column: "-".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Inventory::check(source, &text, usize::MAX)
            .map_err(|report| InventoryError::Invalid(report.errors))
    }

    /// Validates `text` like [`Inventory::parse`], keeping only the first `keep` errors in file
    /// order (plus their total): what the service answers to an upload, whose errors could
    /// otherwise outgrow the upload many times over.
    pub fn check(source: &str, text: &[u8], keep: usize) -> Result<Inventory, ErrorReport> {
        let mut errors = ErrorReport { errors: Vec::new(), total: 0, keep };
        let mut records = source_records(text);
        let err = |line: u64, column: &str, message: String| FieldError {
            source: source.to_string(),
            line,
            column: column.to_string(),
            message,
        };

        // Header row.
        let header = match records.next() {
            None => {
                errors.push(err(
                    1,
                    "-",
                    "the file is empty; expected a header row such as `hostname,ip,gateway,dns,mac`"
                        .into(),
                ));
                return Err(errors);
            }
            Some(Err(e)) => {
                errors.push(csv_error(source, &e, &records.lines));
                return Err(errors);
            }
            Some(Ok(h)) => h,
        };
        let header_line = header.line;
        let mut columns = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in header.fields.iter().enumerate() {
            let raw = if i == 0 { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
            let name = String::from_utf8_lossy(raw).trim().to_ascii_lowercase();
            if !is_column_name(&name) {
                errors.push(err(
                    header_line,
                    &format!("#{}", i + 1),
                    format!(
                        "header {} is not a usable column name; expected letters, digits, `_` or `-`, starting with a letter",
                        quoted(&name)
                    ),
                ));
            } else if !seen.insert(name.clone()) {
                errors.push(err(
                    header_line,
                    &name,
                    "this column appears twice in the header".into(),
                ));
            }
            columns.push(name);
        }
        for required in ["hostname", "ip"] {
            if !columns.iter().any(|c| c == required) {
                errors.push(err(
                    header_line,
                    required,
                    format!("the header has no `{required}` column; it is required"),
                ));
            }
        }
        if errors.total > 0 {
            return Err(errors);
        }

        let mut nodes = Vec::new();
        let mut by_hostname = HashMap::new();
        let mut by_mac: HashMap<Mac, u64> = HashMap::new();
        let mut by_ip: HashMap<Ipv4Addr, u64> = HashMap::new();
        let mut by_uuid: HashMap<SystemUuid, u64> = HashMap::new();
        while let Some(record) = records.next() {
            let (line, record) = match record {
                Ok(r) => (r.line, r.fields),
                Err(e) => {
                    errors.push(csv_error(source, &e, &records.lines));
                    continue;
                }
            };
            if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                continue; // a blank line with separators only
            }
            if record.len() != columns.len() {
                errors.push(err(
                    line,
                    "-",
                    format!(
                        "the row has {} fields but the header has {} columns; check for a missing or extra comma",
                        record.len(),
                        columns.len()
                    ),
                ));
                continue;
            }
            let mut row = RowParser { source, line, errors: Vec::new() };
            let node = row.parse(&columns, &record);
            if let Some(node) = node {
                let key = node.hostname.clone();
                if let Some(&first) = by_hostname.get(&key) {
                    row.fail(
                        "hostname",
                        format!(
                            "{} is already used on line {}; hostnames must be unique",
                            quoted(&key),
                            nodes.get(first).map_or(0, |n: &Node| n.line)
                        ),
                    );
                }
                if let Some(mac) = node.mac {
                    if let Some(first) = by_mac.insert(mac, line) {
                        row.fail(
                            "mac",
                            format!("{mac} is already used on line {first}; MACs must be unique"),
                        );
                    }
                }
                if let Some(uuid) = node.uuid {
                    if let Some(first) = by_uuid.insert(uuid, line) {
                        row.fail(
                            "uuid",
                            format!("{uuid} is already used on line {first}; UUIDs must be unique"),
                        );
                    }
                }
                if let Some(first) = by_ip.insert(node.ip, line) {
                    row.fail(
                        "ip",
                        format!(
                            "{} is already used on line {first}; addresses must be unique",
                            node.ip
                        ),
                    );
                }
                if row.errors.is_empty() {
                    by_hostname.insert(key, nodes.len());
                    nodes.push(node);
                }
            }
            for e in row.errors.drain(..) {
                errors.push(e);
            }
        }
        if errors.total > 0 {
            return Err(errors);
        }
        if nodes.is_empty() {
            errors.push(err(
                header_line,
                "-",
                "the file has a header but no nodes; add one row per node".into(),
            ));
            return Err(errors);
        }
        Ok(Inventory { source: source.to_string(), columns, nodes, by_hostname })
    }

    /// An inventory of no nodes: what the service holds while the database it takes its
    /// inventory from holds none yet (see `crate::serve::store::inventory`). A CSV cannot be
    /// empty ([`Inventory::check`] refuses a header without rows); this is the one other way in.
    pub fn empty(source: &str) -> Inventory {
        Inventory {
            source: source.to_string(),
            columns: Vec::new(),
            nodes: Vec::new(),
            by_hostname: HashMap::new(),
        }
    }

    /// Where the inventory was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Header names, lower case, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node named `hostname` (compared case-insensitively, as host names are).
    pub fn get(&self, hostname: &str) -> Option<&Node> {
        let key = hostname.to_ascii_lowercase();
        self.by_hostname.get(&key).map(|&i| &self.nodes[i])
    }
}

/// Why an inventory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{}", display_all(.0))]
    Invalid(Vec<FieldError>),
}

fn display_all(errors: &[FieldError]) -> String {
    let mut text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    text.push(format!(
        "{} error{} in {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        errors.first().map_or("the inventory", |e| e.source.as_str())
    ));
    text.join("\n")
}

/// One bad field: `NODES.csv:LINE: column COLUMN: what is wrong and what is expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub source: String,
    pub line: u64,
    pub column: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: column {}: {}", self.source, self.line, self.column, self.message)
    }
}

/// The errors of an invalid inventory, the first `keep` of them in file order, and how many
/// there were in all. The service keeps [`MAX_REPORTED_ERRORS`]: a hostile 8 MiB upload of bad
/// rows then costs a bounded answer, not one a hundred times its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// The first errors, in file order (at most `keep`).
    pub errors: Vec<FieldError>,
    /// Every error found, kept or not.
    pub total: usize,
    keep: usize,
}

impl ErrorReport {
    /// A report of errors found outside the CSV itself (a reload's own checks).
    pub fn of(errors: Vec<FieldError>, keep: usize) -> ErrorReport {
        let mut report = ErrorReport { errors: Vec::new(), total: 0, keep };
        for e in errors {
            report.push(e);
        }
        report
    }

    fn push(&mut self, e: FieldError) {
        self.total += 1;
        if self.errors.len() < self.keep {
            self.errors.push(e);
        }
    }

    /// Whether errors were left out.
    pub fn truncated(&self) -> bool {
        self.total > self.errors.len()
    }
}

/// How many errors the service lists for one upload or edit (the total is always given).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// The most characters of a value quoted in a message.
const MAX_QUOTED: usize = 64;

/// A value for a message: escaped like `{:?}` (quotes, no control character passes), and cut
/// to [`MAX_QUOTED`] characters with `…`, so that no message grows with the value it names.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
    }
}

/// The one CSV reader of the inventory: `bootforge check`, the service's loads and the
/// console's row editor all read records through it, so they cannot disagree on where a record
/// ends (a stray `"` inside an unquoted field, `5" disk`, is text to it).
fn csv_reader(text: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text)
}

/// One record of an inventory text (the header included) as [`csv_reader`] reads it, with
/// where it is in the text.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// The fields, unescaped.
    pub fields: csv::ByteRecord,
    /// The 1-based line the record starts on, counting every line of the file (comments and
    /// blank lines included, which the csv crate's own count leaves out).
    pub line: u64,
    /// The record's first byte (after any comment or blank lines before it).
    pub start: usize,
    /// The byte after the record's line end (quoted line breaks are inside the record), or
    /// the end of the text. `start..end` is exactly the record's bytes.
    pub end: usize,
}

/// The records of `text`, in file order; see [`SourceRecord`].
pub fn source_records(text: &[u8]) -> SourceRecords<'_> {
    SourceRecords {
        text,
        lines: Lines::new(text),
        csv: csv_reader(text),
        done: false,
        size: (0, 0),
    }
}

pub struct SourceRecords<'a> {
    text: &'a [u8],
    lines: Lines<'a>,
    csv: csv::Reader<&'a [u8]>,
    done: bool,
    /// Bytes and fields of the last record: the next one is allocated that size at once (rows
    /// of an inventory are alike), not grown field by field.
    size: (usize, usize),
}

impl Iterator for SourceRecords<'_> {
    type Item = Result<SourceRecord, csv::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut fields = csv::ByteRecord::with_capacity(self.size.0, self.size.1);
        match self.csv.read_byte_record(&mut fields) {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                // Byte records from memory fail only on I/O, which does not recover.
                self.done = true;
                return Some(Err(e));
            }
        }
        self.size = (fields.as_slice().len(), fields.len());
        let reported = fields.position().map_or(0, |p| p.byte() as usize);
        let (start, line) = self.lines.record(reported);
        // The reader stops right after the record's terminator; for CRLF that is after the
        // `\r`, its `\n` being consumed with the next record.
        let mut end = (self.csv.position().byte() as usize).min(self.text.len());
        if end > 0 && self.text[end - 1] == b'\r' && self.text.get(end) == Some(&b'\n') {
            end += 1;
        }
        Some(Ok(SourceRecord { fields, line, start, end: end.max(start) }))
    }
}

/// Where a record really starts in `text`: the csv crate places a record that follows comment
/// or blank lines at the start of those lines, or (after CRLF) on the line break before them.
fn record_start(text: &[u8], reported: usize) -> usize {
    let mut at = reported;
    loop {
        while matches!(text.get(at), Some(b'\r' | b'\n')) {
            at += 1;
        }
        if text.get(at) != Some(&b'#') {
            return at.min(text.len());
        }
        // A comment line: on to the next line.
        at = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i + 1);
    }
}

/// Where each line of the file starts, to turn a record's position into its line number.
struct Lines<'a> {
    text: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text).map(|i| i + 1));
        Lines { text, starts }
    }

    /// The record the reader reported at byte `reported`: its first byte and its 1-based line.
    fn record(&self, reported: usize) -> (usize, u64) {
        let start = record_start(self.text, reported);
        (start, self.starts.partition_point(|&s| s <= start) as u64)
    }
}

fn csv_error(source: &str, e: &csv::Error, lines: &Lines) -> FieldError {
    FieldError {
        source: source.to_string(),
        line: e.position().map_or(0, |p| lines.record(p.byte() as usize).1),
        column: "-".into(),
        message: format!("the CSV cannot be read here: {e}"),
    }
}

fn is_column_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

/// Parses one row, collecting every field error rather than stopping at the first.
struct RowParser<'a> {
    source: &'a str,
    line: u64,
    errors: Vec<FieldError>,
}

impl RowParser<'_> {
    fn fail(&mut self, column: &str, message: String) {
        self.errors.push(FieldError {
            source: self.source.to_string(),
            line: self.line,
            column: column.to_string(),
            message,
        });
    }

    /// Returns the node, or `None` with the reasons in `self.errors`.
    fn parse(&mut self, columns: &[String], record: &csv::ByteRecord) -> Option<Node> {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        for (name, raw) in columns.iter().zip(record.iter()) {
            match std::str::from_utf8(raw) {
                Ok(text) => {
                    fields.insert(name, text.trim().to_string());
                }
                Err(_) => {
                    self.fail(name, "the value is not valid UTF-8; save the file as UTF-8".into())
                }
            }
        }
        let get = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();

        let hostname = match get("hostname") {
            None => {
                self.fail("hostname", "missing; every row needs a host name".into());
                None
            }
            Some(h) => self.check(parse_hostname(&h), "hostname"),
        };
        let (ip, prefix) = match get("ip") {
            None => {
                self.fail(
                    "ip",
                    "missing; expected an IPv4 address with prefix such as 10.20.0.11/24".into(),
                );
                (None, None)
            }
            Some(text) => self.parse_ip(&text, get("netmask")),
        };
        let gateway =
            get("gateway").and_then(|g| self.check(parse_ipv4(&g, "a gateway"), "gateway"));
        let dns = get("dns").and_then(|d| self.check(parse_ipv4(&d, "a DNS server"), "dns"));
        let mac = get("mac").and_then(|m| self.check(m.parse::<Mac>(), "mac"));
        let vlan = get("vlan").and_then(|v| self.check(parse_vlan(&v), "vlan"));
        let server = get("server").and_then(|s| self.check(s.parse::<ServerUrl>(), "server"));
        let profile = get("profile").and_then(|p| self.check(parse_profile(&p), "profile"));
        let bmc = get("bmc").and_then(|b| self.check(b.parse::<BmcUrl>(), "bmc"));
        let uuid = get("uuid").and_then(|u| self.check(u.parse::<SystemUuid>(), "uuid"));
        let serial = get("serial").and_then(|v| self.check(parse_serial(&v), "serial"));

        let mut vars = BTreeMap::new();
        for (name, value) in &fields {
            if KNOWN_COLUMNS.contains(name) {
                continue;
            }
            match check_free_text(value) {
                Ok(()) => {
                    vars.insert(name.to_string(), value.clone());
                }
                Err(message) => self.fail(name, message),
            }
        }

        let (ip, prefix) = (ip?, prefix?);
        if let Some(gw) = gateway {
            if gw == ip {
                self.fail(
                    "gateway",
                    format!("{gw} is the node's own address; expected the router of its subnet"),
                );
            } else if !same_subnet(ip, gw, prefix) {
                self.fail(
                    "gateway",
                    format!("{gw} is outside the node's subnet {}/{prefix}; expected an address in that subnet", network(ip, prefix)),
                );
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        Some(Node {
            line: self.line,
            hostname: hostname?,
            ip,
            prefix,
            gateway,
            dns,
            mac,
            vlan,
            server,
            profile,
            bmc,
            uuid,
            serial,
            vars,
        })
    }

    fn check<T>(&mut self, result: Result<T, String>, column: &str) -> Option<T> {
        result.map_err(|message| self.fail(column, message)).ok()
    }

    fn parse_ip(&mut self, text: &str, netmask: Option<String>) -> (Option<Ipv4Addr>, Option<u8>) {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let Some(ip) = self.check(parse_ipv4(addr_text, "the node's address"), "ip") else {
            return (None, None);
        };
        let from_prefix = match prefix_text {
            None => None,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if (1..=32).contains(&n) => Some(n),
                _ => {
                    self.fail(
                        "ip",
                        format!(
                            "prefix {} is not valid; expected /1 to /32, such as /24",
                            quoted(&format!("/{p}"))
                        ),
                    );
                    return (Some(ip), None);
                }
            },
        };
        let from_mask = match netmask {
            None => None,
            Some(m) => match parse_ipv4(&m, "a netmask").and_then(mask_to_prefix) {
                Ok(n) => Some(n),
                Err(message) => {
                    self.fail("netmask", message);
                    return (Some(ip), None);
                }
            },
        };
        let prefix = match (from_prefix, from_mask) {
            (Some(p), Some(m)) if p != m => {
                self.fail("netmask", format!("{} disagrees with the prefix /{p} in column ip; give one or make them match", prefix_to_mask(m)));
                return (Some(ip), None);
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                self.fail("ip", format!("{text} has no prefix; expected an address with prefix such as {ip}/24, or a netmask column"));
                return (Some(ip), None);
            }
        };
        if prefix <= 30 {
            let host_bits = !u32::from(prefix_to_mask(prefix));
            let host = u32::from(ip) & host_bits;
            if host == 0 {
                self.fail("ip", format!("{ip}/{prefix} is the network address of its subnet; expected a host address"));
            } else if host == host_bits {
                self.fail("ip", format!("{ip}/{prefix} is the broadcast address of its subnet; expected a host address"));
            }
        }
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            self.fail(
                "ip",
                format!("{ip} cannot be a node's address; expected a unicast host address"),
            );
        }
        (Some(ip), Some(prefix))
    }
}

/// Checks an RFC 1123 host name and returns it in lower case.
pub fn parse_hostname(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let expected = "expected an RFC 1123 host name: letters, digits and `-`, labels of 1 to 63 characters separated by dots";
    if lower.is_empty() || lower.len() > 253 {
        return Err(format!("{} is {} characters long; {expected}", quoted(text), text.len()));
    }
    for label in lower.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{} is not a valid host name; {expected}", quoted(text)));
        }
    }
    Ok(lower)
}

fn parse_ipv4(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    Ipv4Addr::from_str(text).map_err(|_| {
        format!(
            "{} is not an IPv4 address; expected {what} in dotted form such as 10.20.0.1",
            quoted(text)
        )
    })
}

fn parse_vlan(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(v) if (1..=4094).contains(&v) => Ok(v),
        _ => Err(format!(
            "{} is not a VLAN ID; expected a whole number from 1 to 4094",
            quoted(text)
        )),
    }
}

/// A profile names a folder of the boot service, so it is a plain file name.
pub fn parse_profile(text: &str) -> Result<String, String> {
    let ok = text.len() <= 64
        && !text.starts_with('.')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("{} is not a profile name; expected letters, digits, `-`, `_` or `.`, as the name of a folder under --profiles", quoted(text)))
    }
}

fn check_free_text(value: &str) -> Result<(), String> {
    if value.len() > MAX_FREE_VALUE {
        return Err(format!(
            "the value is {} bytes long; at most {MAX_FREE_VALUE} are accepted",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the value holds control character U+{:04X}; expected printable text on one line",
            c as u32
        ));
    }
    Ok(())
}

/// A `serial` value: printable text on one line, at most [`MAX_SERIAL`] bytes.
pub fn parse_serial(text: &str) -> Result<String, String> {
    if text.len() > MAX_SERIAL {
        return Err(format!(
            "the serial number is {} bytes long; at most {MAX_SERIAL} are accepted",
            text.len()
        ));
    }
    check_free_text(text)?;
    Ok(text.to_string())
}

fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

fn mask_to_prefix(mask: Ipv4Addr) -> Result<u8, String> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    if bits.count_ones() != prefix || prefix == 0 {
        return Err(format!(
            "{mask} is not a netmask; expected contiguous ones such as 255.255.255.0"
        ));
    }
    Ok(prefix as u8)
}

fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & u32::from(prefix_to_mask(prefix)))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    network(a, prefix) == network(b, prefix)
}

/// An Ethernet MAC address. Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabbccddeeff`
/// (any case); displays lower case with colons, the form iPXE's `${netX/mac}` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{} is not a MAC address; expected six hex pairs as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff", quoted(text))
        };
        let hex: String = if text.len() == 17 {
            let sep = text.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(bad());
            }
            let parts: Vec<&str> = text.split(sep as char).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            parts.concat()
        } else if text.len() == 12 {
            text.to_string()
        } else {
            return Err(bad());
        };
        let mut bytes = [0u8; 6];
        hex::decode_to_slice(&hex, &mut bytes).map_err(|_| bad())?;
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A machine's SMBIOS system UUID, as the `uuid` column, Redfish's `UUID` and iPXE's `${uuid}`
/// give it. Parses the hyphenated form (`8f1c2f6e-0000-4000-8000-000000000001`, any case; also
/// the plain 32 hex digits and the `{…}` and `urn:uuid:` forms) with the uuid crate; displays
/// lower case, hyphenated. Equality is of the 16 bytes, so comparing is case-insensitive. The
/// nil UUID and all-ones (`ffffffff-…`), which firmware reports when it has none, are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemUuid(pub uuid::Uuid);

impl FromStr for SystemUuid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let id = uuid::Uuid::try_parse(text.trim()).map_err(|_| {
            format!(
                "{} is not a UUID; expected 32 hex digits as 8f1c2f6e-0000-4000-8000-000000000001",
                quoted(text)
            )
        })?;
        if id.is_nil() || id.is_max() {
            return Err(format!(
                "{id} is what firmware reports when it has no UUID; leave the column empty instead"
            ));
        }
        Ok(SystemUuid(id))
    }
}

impl SystemUuid {
    /// Whether `sent` (a boot's SMBIOS UUID) names this machine: the same UUID, or the same
    /// with its first three fields byte-swapped. SMBIOS before 2.6 left the byte order of those
    /// fields open, and some firmware and BMCs still read them the other way round, so one
    /// machine can be reported in both forms. The swap cannot make two UUIDs of one fleet
    /// collide by chance (it keeps the random last eight bytes).
    pub fn same_machine(&self, sent: &SystemUuid) -> bool {
        self.0 == sent.0 || self.0 == swapped(sent.0)
    }
}

/// A UUID with its first three fields (4, 2 and 2 bytes) in the other byte order.
fn swapped(id: uuid::Uuid) -> uuid::Uuid {
    let mut b = *id.as_bytes();
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    uuid::Uuid::from_bytes(b)
}

impl fmt::Display for SystemUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl Serialize for SystemUuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The base URL of the boot service, as the media chain to it.
///
/// It goes verbatim into iPXE scripts and installer configurations, so it admits exactly what a
/// URL of this shape needs and nothing else:
///
/// * the scheme `http://` or `https://`, in lower case;
/// * a host: an RFC 1123 host name (see [`parse_hostname`]), an IPv4 address in dotted form, or
///   a bracketed IPv6 address `[fd00::1]` (no zone id);
/// * an optional `:PORT` of 1 to 5 digits, from 1 to 65535;
/// * an optional path starting with `/`, of letters, digits and `- . _ ~ /`, without `//`.
///
/// No user information (`@`), query, fragment, whitespace, `$`, quotes or `&` can pass, and
/// nothing may follow these parts, which is what makes injection into a script impossible. A
/// trailing `/` is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ServerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl FromStr for ServerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{} is not a usable server URL ({why}); expected http://HOST[:PORT][/PATH], such as http://10.20.0.5:8080", quoted(text))
        };
        let path = split_http_url(text, "a user name or password (`@`) is not allowed")
            .map_err(|why| bad(&why))?;
        let path_ok = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
        if !path_ok || path.contains("//") {
            return Err(bad(
                "the path may hold only letters, digits and - . _ ~ /, with no `//`, query or fragment",
            ));
        }
        Ok(ServerUrl(text.trim_end_matches('/').to_string()))
    }
}

/// The checks every URL of the inventory shares (`server`, `bmc`): no whitespace or control
/// character, a lower-case `http://` or `https://`, no user or password (`userinfo_reason` says
/// why, for the column), no query or fragment, a valid `HOST[:PORT]`. Returns the path (from its
/// `/`, or empty); the error is the reason alone, for the caller to wrap.
fn split_http_url<'a>(text: &'a str, userinfo_reason: &str) -> Result<&'a str, String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it holds whitespace or a control character".into());
    }
    let Some(rest) = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://")) else {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Err("the scheme must be written in lower case".into());
        }
        return Err("it must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(userinfo_reason.into());
    }
    if text.contains('?') {
        return Err("a query (`?`) is not allowed".into());
    }
    if text.contains('#') {
        return Err("a fragment (`#`) is not allowed".into());
    }
    check_authority(authority)?;
    Ok(path)
}

/// Checks the `HOST[:PORT]` part of a URL: an RFC 1123 host name, a dotted IPv4 address or a
/// bracketed IPv6 address without zone id, then an optional port from 1 to 65535. The error is
/// the reason alone, for the caller to wrap.
fn check_authority(authority: &str) -> Result<(), &'static str> {
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed `[`")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the part in brackets is not an IPv6 address");
        }
        match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err("only :PORT may follow the `]` of an IPv6 address"),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err("no host");
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            if host.parse::<Ipv4Addr>().is_err() {
                return Err("the host is not a valid IPv4 address");
            }
        } else if parse_hostname(host).is_err() {
            return Err("the host is not a host name, IPv4 address or [IPv6] address");
        }
        port
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u32>() {
            Ok(p) if digits && (1..=65535).contains(&p) => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    Ok(())
}

/// Where a node's BMC answers Redfish: the `bmc` column.
///
/// Two forms are accepted, and nothing else:
///
/// * the BMC's **Redfish root**: `https://10.1.0.11`, `https://bmc1.lab:8443`, with or without
///   a trailing `/redfish/v1` (and `/`). The client then walks `/redfish/v1` to the `Systems`
///   collection and uses its only member; a BMC that manages several systems (a blade chassis,
///   a multi-node enclosure) needs the second form.
/// * a **System URL**: `https://10.1.0.11/redfish/v1/Systems/1`, the resource of one computer
///   system. Its ID is one path segment of letters, digits and `- . _ ~`.
///
/// The scheme is `http://` or `https://` in lower case. `http://` exists for emulators: the BMC's
/// password then crosses the network in clear text. The host is an RFC 1123 host name, a dotted
/// IPv4 address or a bracketed IPv6 address, with an optional port. User information (`@`),
/// queries and fragments are refused: credentials come from the `--bmc-credentials` file, never
/// from the inventory. A trailing `/` is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BmcUrl {
    /// The URL as normalised: no trailing `/`.
    text: String,
    /// Length of `scheme://authority` in `text`.
    origin_len: usize,
    /// Whether `text` names a System rather than the Redfish root.
    system: bool,
}

impl BmcUrl {
    /// The URL as written (without a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `scheme://host[:port]`, the part every Redfish path is joined to.
    pub fn origin(&self) -> &str {
        &self.text[..self.origin_len]
    }

    /// The host as written in the URL, without the port; an IPv6 address keeps its brackets.
    /// This is what a credentials-file line names.
    pub fn host(&self) -> &str {
        let authority = &self.origin()[self.origin().find("://").map_or(0, |i| i + 3)..];
        if authority.starts_with('[') {
            authority.find(']').map_or(authority, |i| &authority[..=i])
        } else {
            authority.split(':').next().unwrap_or(authority)
        }
    }

    /// Whether the BMC is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.text.starts_with("https://")
    }

    /// The System's path (`/redfish/v1/Systems/ID`) when the URL names one; `None` for a root.
    pub fn system_path(&self) -> Option<&str> {
        self.system.then(|| &self.text[self.origin_len..])
    }
}

impl fmt::Display for BmcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for BmcUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl FromStr for BmcUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{} is not a usable BMC URL ({why}); expected the Redfish root https://HOST[:PORT] or a System URL https://HOST[:PORT]/redfish/v1/Systems/ID", quoted(text))
        };
        let path = split_http_url(
            text,
            "a user name or password (`@`) is not allowed; put credentials in the --bmc-credentials file",
        )
        .map_err(|why| bad(&why))?;
        let origin_len = text.len() - path.len();
        let path = path.strip_suffix('/').unwrap_or(path);
        let (path, system) = match path {
            "" | "/redfish/v1" => ("", false),
            p => match p.strip_prefix("/redfish/v1/Systems/") {
                Some(id)
                    if !id.is_empty()
                        && id.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                        })
                        && id != "."
                        && id != ".." =>
                {
                    (p, true)
                }
                _ => {
                    return Err(bad(
                        "the path must be empty, /redfish/v1, or /redfish/v1/Systems/ID with an ID of letters, digits and - . _ ~",
                    ))
                }
            },
        };
        Ok(BmcUrl { text: format!("{}{path}", &text[..origin_len]), origin_len, system })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_normalise() {
        for form in ["AA:bb:CC:dd:ee:01", "aa-bb-cc-dd-ee-01", "AABBCCDDEE01"] {
            assert_eq!(form.parse::<Mac>().unwrap().to_string(), "aa:bb:cc:dd:ee:01");
        }
        for bad in ["aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:01", "gg:bb:cc:dd:ee:01", "aabbccddee0"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_uuid_matches_itself_and_its_mixed_endian_form_only() {
        let row: SystemUuid = "8f1c2f6e-1a2b-4c3d-8e4f-5a6b7c8d9e0f".parse().unwrap();
        let swapped: SystemUuid = "6e2f1c8f-2b1a-3d4c-8e4f-5a6b7c8d9e0f".parse().unwrap();
        let other: SystemUuid = "8f1c2f6e-1a2b-4c3d-8e4f-5a6b7c8d9e00".parse().unwrap();
        assert!(row.same_machine(&row));
        assert!(row.same_machine(&swapped));
        assert!(swapped.same_machine(&row));
        assert!(!row.same_machine(&other));
    }

    #[test]
    fn uuid_and_serial_columns() {
        let u: SystemUuid = "8F1C2F6E-0000-4000-8000-00000000000A".parse().unwrap();
        assert_eq!(u.to_string(), "8f1c2f6e-0000-4000-8000-00000000000a");
        assert_eq!(u, "8f1c2f6e00004000800000000000000a".parse().unwrap(), "compared as bytes");
        for bad in [
            "8f1c2f6e-0000-4000-8000",
            "not-a-uuid",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        ] {
            assert!(bad.parse::<SystemUuid>().is_err(), "{bad}");
        }
        let csv = "hostname,ip,uuid,serial\n\
                   a,10.0.0.1/24,8f1c2f6e-0000-4000-8000-00000000000a,SN 1\n\
                   b,10.0.0.2/24,8F1C2F6E-0000-4000-8000-00000000000A,\n\
                   c,10.0.0.3/24,zz,\n";
        let report = Inventory::check("n.csv", csv.as_bytes(), 100).unwrap_err();
        let found: Vec<(u64, &str, &str)> =
            report.errors.iter().map(|e| (e.line, e.column.as_str(), e.message.as_str())).collect();
        assert_eq!(report.total, 2, "{found:?}");
        assert!(found[0].0 == 3 && found[0].1 == "uuid", "{found:?}");
        assert!(found[0].2.contains("already used on line 2"), "{found:?}");
        assert!(found[1].0 == 4 && found[1].2.contains("is not a UUID"), "{found:?}");
        let long = format!("hostname,ip,serial\na,10.0.0.1/24,{}\n", "s".repeat(MAX_SERIAL + 1));
        let report = Inventory::check("n.csv", long.as_bytes(), 100).unwrap_err();
        assert!(report.errors[0].message.contains("at most 128"), "{:?}", report.errors);
        let ok = Inventory::check("n.csv", b"hostname,ip,uuid,serial\na,10.0.0.1/24,,CZ-1\n", 10)
            .unwrap();
        assert_eq!(ok.nodes()[0].serial.as_deref(), Some("CZ-1"));
        assert_eq!(ok.nodes()[0].uuid, None);
    }

    #[test]
    fn server_urls() {
        for good in [
            "http://10.0.0.1",
            "http://10.0.0.1:8080",
            "https://boot.example.net",
            "https://boot.example.net/bf/",
            "http://[fd00::1]:80",
            "http://[fd00::1]:8080/bf",
            "http://[::1]",
            "http://h:65535/a-b/c_d.e~f",
        ] {
            assert!(good.parse::<ServerUrl>().is_ok(), "{good}");
        }
        assert_eq!("http://h/x/".parse::<ServerUrl>().unwrap().as_str(), "http://h/x");
        assert_eq!("http://h/".parse::<ServerUrl>().unwrap().as_str(), "http://h");
        assert_eq!(
            "http://[fd00::1]:8080/bf".parse::<ServerUrl>().unwrap().as_str(),
            "http://[fd00::1]:8080/bf"
        );
    }

    #[test]
    fn server_urls_refused() {
        // (text, phrase the reason must contain)
        for (bad, why) in [
            ("ftp://h", "must start with http:// or https://"),
            ("HTTP://h", "lower case"),
            ("Https://h", "lower case"),
            ("http://", "no host"),
            ("http://:80", "no host"),
            ("http://h:0", "port"),
            ("http://h:", "port"),
            ("http://h:+80", "port"),
            ("http://h:-80", "port"),
            ("http://h:99999", "port"),
            ("http://h:65536", "port"),
            ("http://h:000080", "port"),
            ("http://h:80:80", "port"),
            ("http://h:8a", "port"),
            ("http://[::1]x ; shell ; #", "whitespace"),
            ("http://[::1]x';touch PWNED;'", "whitespace"),
            ("http://[::1]x';touch${IFS}PWNED;'", "only :PORT may follow"),
            ("http://[::1]x", "only :PORT may follow"),
            ("http://[::1]:80x", "port"),
            ("http://[::1]]", "only :PORT may follow"),
            ("http://[::1", "unclosed"),
            ("http://[::1%eth0]", "not an IPv6 address"),
            ("http://[10.0.0.1]", "not an IPv6 address"),
            ("http://[]", "not an IPv6 address"),
            ("http://h]", "not a host name"),
            ("http://user@h", "`@`"),
            ("http://user:pw@h/x", "`@`"),
            ("http://h#x", "fragment"),
            ("http://h/#x", "fragment"),
            ("http://h?a=b", "query"),
            ("http://h/?a=b", "query"),
            (" http://h", "whitespace"),
            ("http://h ", "whitespace"),
            ("http://h\t", "whitespace"),
            ("http://h/${x}", "the path may hold only"),
            ("http://h/a'b", "the path may hold only"),
            ("http://h//x", "`//`"),
            ("http://a$b", "not a host name"),
            ("http://a_b", "not a host name"),
            ("http://-a", "not a host name"),
            ("http://10.0.0.256", "IPv4"),
            ("http://10.0.0", "IPv4"),
            ("http://h;x", "not a host name"),
        ] {
            let err = bad.parse::<ServerUrl>().expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.contains("expected http://HOST[:PORT][/PATH]"),
                "{bad:?}: the message shows the expected form: {err}"
            );
        }
    }

    #[test]
    fn bmc_urls() {
        for (text, origin, host, system) in [
            ("https://10.1.0.11", "https://10.1.0.11", "10.1.0.11", None),
            ("https://10.1.0.11/", "https://10.1.0.11", "10.1.0.11", None),
            ("https://bmc1.lab:8443/redfish/v1/", "https://bmc1.lab:8443", "bmc1.lab", None),
            ("http://127.0.0.1:8000/redfish/v1", "http://127.0.0.1:8000", "127.0.0.1", None),
            (
                "https://[fd00::11]:443/redfish/v1/Systems/System.Embedded.1",
                "https://[fd00::11]:443",
                "[fd00::11]",
                Some("/redfish/v1/Systems/System.Embedded.1"),
            ),
            ("https://h/redfish/v1/Systems/1/", "https://h", "h", Some("/redfish/v1/Systems/1")),
        ] {
            let url: BmcUrl = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.origin(), origin, "{text}");
            assert_eq!(url.host(), host, "{text}");
            assert_eq!(url.system_path(), system, "{text}");
            assert!(!url.as_str().ends_with('/'), "{text}");
        }
        assert_eq!("https://h/redfish/v1/".parse::<BmcUrl>().unwrap().as_str(), "https://h");
        assert!("https://h".parse::<BmcUrl>().unwrap().is_https());
        assert!(!"http://h".parse::<BmcUrl>().unwrap().is_https());
    }

    #[test]
    fn bmc_urls_refused() {
        for (bad, why) in [
            ("10.1.0.11", "must start with http:// or https://"),
            ("ftp://h", "must start with http:// or https://"),
            ("HTTPS://h", "lower case"),
            ("https://", "no host"),
            ("https://admin:pw@h", "--bmc-credentials"),
            ("https://h?x=1", "query"),
            ("https://h#x", "fragment"),
            ("https://h:0", "port"),
            ("https://h/redfish", "the path must be"),
            ("https://h/redfish/v1/Systems", "the path must be"),
            ("https://h/redfish/v1/Systems/", "the path must be"),
            ("https://h/redfish/v1/Systems/1/Bios", "the path must be"),
            ("https://h/redfish/v1/Systems/..", "the path must be"),
            ("https://h/redfish/v1/Managers/1", "the path must be"),
            ("https://h/redfish/v1/Systems/a%2Fb", "the path must be"),
            ("https://h /x", "whitespace"),
        ] {
            let err = bad.parse::<BmcUrl>().expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains("/redfish/v1/Systems/ID"), "{bad:?}: shows the forms: {err}");
        }
    }

    /// A message quoting a value quotes at most 64 characters of it, escaped.
    #[test]
    fn messages_quote_values_cut_and_escaped() {
        let long = "a\u{1}".repeat(5_000);
        for message in [
            parse_hostname(&long).unwrap_err(),
            parse_ipv4(&long, "x").unwrap_err(),
            long.parse::<Mac>().unwrap_err(),
            long.parse::<ServerUrl>().unwrap_err(),
            long.parse::<BmcUrl>().unwrap_err(),
            parse_profile(&long).unwrap_err(),
            parse_vlan(&long).unwrap_err(),
        ] {
            assert!(message.len() < 400, "{} bytes: {message}", message.len());
            assert!(message.contains("\"a\\u{1}a") && message.contains("…"), "{message}");
            assert!(!message.contains('\u{1}'), "control characters are escaped: {message}");
        }
        let text = format!("hostname,ip\nn1,10.0.0.1/{}\n", "9".repeat(10_000));
        let report = Inventory::check("x.csv", text.as_bytes(), 100).unwrap_err();
        assert!(report.errors[0].message.len() < 200, "{}", report.errors[0].message);
        let header = format!("hostname,ip,{}\nn1,10.0.0.1/24,x\n", "é".repeat(10_000));
        let report = Inventory::check("x.csv", header.as_bytes(), 100).unwrap_err();
        assert!(report.errors[0].message.len() < 300, "{}", report.errors[0].message);
        assert_eq!(quoted("ab"), "\"ab\"");
        assert_eq!(quoted(&"é".repeat(64)), format!("\"{}\"", "é".repeat(64)));
        assert_eq!(quoted(&"é".repeat(65)), format!("\"{}\"…", "é".repeat(64)));
    }

    /// The service keeps the first errors in file order and counts them all; `parse` (the
    /// command line) keeps every one.
    #[test]
    fn error_reports_keep_the_first_and_count_all() {
        let mut text = String::from("hostname,ip\n");
        for i in 0..1000 {
            text.push_str(&format!("bad_{i},10.0.0.300/24\n"));
        }
        let report = Inventory::check("x.csv", text.as_bytes(), 100).unwrap_err();
        assert_eq!((report.errors.len(), report.total), (100, 2000));
        assert!(report.truncated());
        assert_eq!(report.errors[0].line, 2);
        assert!(report.errors.windows(2).all(|w| w[0].line <= w[1].line), "file order");
        match Inventory::parse("x.csv", text.as_bytes()) {
            Err(InventoryError::Invalid(all)) => assert_eq!(all.len(), 2000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 254, 0)), Ok(23));
        assert!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)).is_err());
    }
}
