//! Inventory edits from the console, as a pure core over the CSV's text: add, change or remove
//! one row, touching no other byte of the file.
//!
//! The CSV stays the source of truth. An edit is applied to the file's current text: the row is
//! found by its host name, its bytes (from the start of its record to its line end, quoted
//! newlines included) are replaced or removed, and an added row is appended. Everything else
//! (the header and its column order, comments, other rows and their quoting, a BOM, CRLF line
//! ends) is kept byte for byte. The result is then validated whole by [`Inventory::check`], the
//! code behind `bootforge check`, before the handler writes anything (see
//! `console::edit_row`).
//!
//! Invariants, and the threats they answer:
//!
//! * **One parser.** Record boundaries come from [`crate::inventory::source_records`], the very
//!   reader `bootforge check` and the service's loads use; this module scans no quote itself.
//!   (A scanner of its own once read the stray `"` of an unquoted `5" disk` as an opening
//!   quote, and removing one host removed three.)
//! * **An edit touches only the row it names.** Every edit is checked after the fact: the new
//!   text is read again and must hold the same header and the same other rows, field by field
//!   and in order, and the named row exactly as intended. Anything else is refused
//!   ([`EditError::WouldTouchOthers`]) and nothing is written.
//! * **Fields are named once.** A column may be given once, after trimming and case folding
//!   (`"hostname"` and `"Hostname "` are the same column); a repeated or unknown column is
//!   refused, so what is written is what the request plainly says.

use crate::inventory::{quoted, source_records, ErrorReport, Inventory};
use serde::de::{Deserializer, MapAccess, Visitor};

/// The fields of an edit, as the request gave them: column name (any case, as in the header)
/// and value, in request order, repeats kept so that [`apply`] can refuse them (a map would
/// silently keep the last of two equal keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of column names and string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    out.push(pair);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(Pairs)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Fields {
        Fields(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// One edit. `fields` names columns (as in the header, any case); a column not given is left
/// empty on an added row and unchanged on a changed one.
#[derive(Debug, Clone)]
pub enum Edit {
    Add(Fields),
    Change { host: String, fields: Fields },
    Remove { host: String },
}

/// An edit that cannot even be applied (before validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The file itself cannot be read as CSV with a header (fix it by hand or upload a new one).
    Unreadable(String),
    /// No row has this host name (quoted and cut, see [`quoted`]).
    NoSuchHost(String),
    /// A field names a column the header does not have (quoted and cut).
    NoSuchColumn(String),
    /// A column is given twice, after trimming and case folding (quoted and cut).
    DuplicateColumn(String),
    /// A value holds a character no CSV field of the inventory may (a line break or NUL).
    BadValue { column: String, message: String },
    /// The edited text would differ from the old in a row the edit does not name (or in the
    /// header). Never expected; refused rather than written.
    WouldTouchOthers(String),
    /// The added or changed row would hold nothing but blanks: the validator skips such a
    /// row, so the edit would write a row that is not a host.
    EmptyRow,
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Unreadable(m) => write!(f, "the inventory cannot be edited: {m}"),
            EditError::NoSuchHost(h) => write!(f, "no row of the inventory has host name {h}"),
            EditError::NoSuchColumn(c) => {
                write!(f, "the inventory has no column {c}; add columns by uploading a new CSV")
            }
            EditError::DuplicateColumn(c) => write!(
                f,
                "column {c} is given more than once (names are compared trimmed and in any case); give each column once"
            ),
            EditError::BadValue { column, message } => write!(f, "column {column}: {message}"),
            EditError::EmptyRow => write!(f, "the row would be empty; give at least its hostname"),
            EditError::WouldTouchOthers(m) => write!(
                f,
                "the edit was refused because it would also change {m}; nothing was written. Edit the file by hand or upload it whole"
            ),
        }
    }
}

/// A row of the file as written: where its bytes are, and its fields.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// The line the record starts on, counted as `bootforge check` counts (so errors of the
    /// edited row are found by it).
    pub line: u64,
    start: usize,
    end: usize,
    pub fields: Vec<String>,
}

/// The header (lower case, file order) and the data rows of a CSV text, as
/// [`source_records`] reads them.
pub fn rows(text: &str) -> Result<(Vec<String>, Vec<RawRow>), EditError> {
    let mut header = None;
    let mut out = Vec::new();
    for record in source_records(text.as_bytes()) {
        let record = record.map_err(|e| EditError::Unreadable(e.to_string()))?;
        let fields = record.fields.iter().map(|f| String::from_utf8_lossy(f).into_owned());
        if header.is_none() {
            let names = fields
                .enumerate()
                .map(|(i, f)| {
                    let f = if i == 0 { f.trim_start_matches('\u{feff}') } else { &f };
                    f.trim().to_ascii_lowercase()
                })
                .collect();
            header = Some(names);
            continue;
        }
        out.push(RawRow {
            line: record.line,
            start: record.start,
            end: record.end,
            fields: fields.collect(),
        });
    }
    let header = header.ok_or_else(|| EditError::Unreadable("the file has no header".into()))?;
    Ok((header, out))
}

/// What an edit made: the new text, the line of the edited row in it (`None` for a removal),
/// and the host name of the row as written or removed (trimmed, lower case; for the audit,
/// which takes the name from the validated row when there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub text: String,
    pub line: Option<u64>,
    pub host: String,
    /// A change that renamed its row: the host name field the row had (as in the file; the
    /// audit validates or quotes it). `None` for adds, removals and changes that keep the name.
    pub renamed_from: Option<String>,
}

/// Applies `edit` to the CSV `text`, then checks that no row but the named one changed.
pub fn apply(text: &str, edit: &Edit) -> Result<Applied, EditError> {
    let (header, all) = rows(text)?;
    let host_col = header
        .iter()
        .position(|c| c == "hostname")
        .ok_or_else(|| EditError::Unreadable("the header has no hostname column".into()))?;
    let crlf = text.contains("\r\n");
    let find = |host: &str| {
        all.iter()
            .position(|r| {
                r.fields.get(host_col).is_some_and(|h| h.trim().eq_ignore_ascii_case(host))
            })
            .ok_or_else(|| EditError::NoSuchHost(quoted(host)))
    };
    let name_of = |values: &[String]| values[host_col].trim().to_ascii_lowercase();
    let (new, expected) = match edit {
        Edit::Remove { host } => {
            let i = find(host)?;
            let row = &all[i];
            let new = format!("{}{}", &text[..row.start], &text[row.end..]);
            (new, Expected::Removed(i))
        }
        Edit::Change { host, fields } => {
            let i = find(host)?;
            let row = &all[i];
            let mut values = row.fields.clone();
            values.resize(header.len(), String::new());
            put(&header, &mut values, fields)?;
            let mut line = record(&values, crlf);
            if !text[row.start..row.end].ends_with('\n') {
                line.truncate(line.trim_end_matches(['\r', '\n']).len());
            }
            let new = format!("{}{line}{}", &text[..row.start], &text[row.end..]);
            (new, Expected::Changed(i, values))
        }
        Edit::Add(fields) => {
            let mut values = vec![String::new(); header.len()];
            put(&header, &mut values, fields)?;
            let mut new = text.to_string();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push_str(if crlf { "\r\n" } else { "\n" });
            }
            new.push_str(&record(&values, crlf));
            (new, Expected::Added(values))
        }
    };
    if let Expected::Changed(_, values) | Expected::Added(values) = &expected {
        // As the validator reads a row: one of blanks only is skipped, not a host.
        if values.iter().all(|v| v.trim().is_empty()) {
            return Err(EditError::EmptyRow);
        }
    }
    let line = verify(&header, &all, &new, &expected)?;
    let host = match &expected {
        Expected::Removed(i) => name_of(&all[*i].fields),
        Expected::Changed(_, values) | Expected::Added(values) => name_of(values),
    };
    let renamed_from = match &expected {
        Expected::Changed(i, _) if name_of(&all[*i].fields) != host => {
            Some(all[*i].fields[host_col].clone())
        }
        _ => None,
    };
    Ok(Applied { text: new, line, host, renamed_from })
}

/// What the rows of the new text must be, against the old.
enum Expected {
    /// The old rows without this one.
    Removed(usize),
    /// The old rows, this one holding these values.
    Changed(usize, Vec<String>),
    /// The old rows, then one holding these values.
    Added(Vec<String>),
}

/// The post-condition of every edit: read `new` again with the inventory's reader and compare
/// it with the old header and rows. Returns the line of the edited row in `new`.
fn verify(
    header: &[String],
    old: &[RawRow],
    new: &str,
    expected: &Expected,
) -> Result<Option<u64>, EditError> {
    let refuse = |what: String| Err(EditError::WouldTouchOthers(what));
    let (new_header, new_rows) = rows(new)?;
    if new_header != header {
        return refuse("the header".into());
    }
    let fields = |rows: &[RawRow]| rows.iter().map(|r| r.fields.clone()).collect::<Vec<_>>();
    let mut want = fields(old);
    let edited = match expected {
        Expected::Removed(i) => {
            want.remove(*i);
            None
        }
        Expected::Changed(i, values) => {
            want[*i] = values.clone();
            Some(*i)
        }
        Expected::Added(values) => {
            want.push(values.clone());
            Some(want.len() - 1)
        }
    };
    let got = fields(&new_rows);
    if got.len() != want.len() {
        return refuse(format!(
            "the number of other rows ({} rows would become {})",
            want.len(),
            got.len()
        ));
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let what = if Some(i) == edited {
            "the edited row beyond its fields".to_string()
        } else {
            format!("the row on line {}", new_rows[i].line)
        };
        return refuse(what);
    }
    Ok(edited.map(|i| new_rows[i].line))
}

/// Puts `fields` into `values` (in header order), refusing unknown or repeated columns and
/// values that would break a line.
fn put(header: &[String], values: &mut [String], fields: &Fields) -> Result<(), EditError> {
    let mut given = vec![false; header.len()];
    for (name, value) in &fields.0 {
        let key = name.trim().to_ascii_lowercase();
        let i = header
            .iter()
            .position(|c| *c == key)
            .ok_or_else(|| EditError::NoSuchColumn(quoted(name)))?;
        if std::mem::replace(&mut given[i], true) {
            return Err(EditError::DuplicateColumn(quoted(&key)));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(EditError::BadValue {
                column: key,
                message: "a value must be one line, without NUL".into(),
            });
        }
        values[i] = value.trim().to_string();
    }
    Ok(())
}

/// One CSV record (quoted where needed), with its line end.
fn record(values: &[String], crlf: bool) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
        .from_writer(Vec::new());
    w.write_record(values).expect("writing to memory");
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("fields are UTF-8")
}

/// A whole inventory text checked by the code behind `bootforge check`: the first
/// [`crate::inventory::MAX_REPORTED_ERRORS`] errors with their line and column, and the total.
pub fn validate(source: &str, text: &str) -> Result<Inventory, ErrorReport> {
    Inventory::check(source, text.as_bytes(), crate::inventory::MAX_REPORTED_ERRORS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn2,10.0.0.2/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n";

    fn f(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_change_touches_only_its_row() {
        let edit = Edit::Change { host: "N2".into(), fields: f(&[("ip", "10.0.0.9/24")]) };
        let Applied { text: out, line, .. } = apply(CSV, &edit).unwrap();
        assert_eq!(line, rows(CSV).unwrap().1.iter().find(|r| r.fields[0] == "n2").map(|r| r.line));
        assert_eq!(
            out,
            "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn2,10.0.0.9/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n"
        );
    }

    #[test]
    fn add_and_remove_keep_every_other_byte() {
        let Applied { text: out, line, .. } = apply(
            CSV,
            &Edit::Add(f(&[("hostname", "n4"), ("ip", "10.0.0.4/24"), ("role", "a\"q")])),
        )
        .unwrap();
        assert_eq!(out, format!("{CSV}n4,10.0.0.4/24,,\"a\"\"q\"\r\n"));
        assert_eq!(line, rows(&out).unwrap().1.last().map(|r| r.line));
        let back = apply(&out, &Edit::Remove { host: "n4".into() }).unwrap().text;
        assert_eq!(back, CSV);
        let out = apply(CSV, &Edit::Remove { host: "n2".into() }).unwrap().text;
        assert_eq!(out, "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn3,10.0.0.3/24,,x\r\n");
        // No line end at the end of the file.
        let out = apply(
            "hostname,ip\nn1,10.0.0.1/24",
            &Edit::Add(f(&[("hostname", "n2"), ("ip", "10.0.0.2/24")])),
        )
        .unwrap()
        .text;
        assert_eq!(out, "hostname,ip\nn1,10.0.0.1/24\nn2,10.0.0.2/24\n");
        let out = apply(
            "hostname,ip\nn1,10.0.0.1/24",
            &Edit::Change { host: "n1".into(), fields: f(&[("ip", "10.0.0.3/24")]) },
        )
        .unwrap()
        .text;
        assert_eq!(out, "hostname,ip\nn1,10.0.0.3/24");
    }

    /// A row right after a comment or a blank line: its own bytes change, not the lines before
    /// it (the CSV reader reports such a record where the skipped lines begin).
    #[test]
    fn rows_after_comments_and_blank_lines_are_found() {
        let edit = Edit::Change { host: "n1".into(), fields: f(&[("ip", "10.0.0.7/24")]) };
        let Applied { text: out, line, .. } = apply(CSV, &edit).unwrap();
        assert_eq!(
            out,
            "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.7/24,,\"a,b\"\r\nn2,10.0.0.2/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n"
        );
        assert_eq!(line, Some(3));
        let lf = "hostname,ip\nn1,10.0.0.1/24\n\n# two\n\nn2,10.0.0.2/24\n";
        let Applied { text: out, line, .. } =
            apply(lf, &Edit::Remove { host: "n2".into() }).unwrap();
        assert_eq!((out.as_str(), line), ("hostname,ip\nn1,10.0.0.1/24\n\n# two\n\n", None));
        let rows = rows(lf).unwrap().1;
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 6]);
    }

    #[test]
    fn bad_edits_are_named() {
        let e = apply(CSV, &Edit::Remove { host: "zz".into() }).unwrap_err();
        assert_eq!(e, EditError::NoSuchHost("\"zz\"".into()));
        let e = apply(CSV, &Edit::Add(f(&[("colour", "red")]))).unwrap_err();
        assert_eq!(e, EditError::NoSuchColumn("\"colour\"".into()));
        let long = "x".repeat(10_000);
        let e = apply(CSV, &Edit::Add(f(&[(long.as_str(), "red")]))).unwrap_err();
        assert!(e.to_string().len() < 200, "a long name is cut: {e}");
        let e = apply(CSV, &Edit::Add(f(&[("role", "a\nb")]))).unwrap_err();
        assert!(matches!(e, EditError::BadValue { .. }));
    }

    #[test]
    fn validation_reports_the_edited_line_and_column() {
        let csv = "hostname,ip,role\n# rack 1\nn1,10.0.0.1/24,\"a,b\"\n";
        let Applied { text: out, line, .. } =
            apply(csv, &Edit::Add(f(&[("hostname", "n5"), ("ip", "10.0.0.300/24")]))).unwrap();
        let errors = validate("nodes.csv", &out).unwrap_err().errors;
        assert_eq!(errors.len(), 1);
        assert_eq!((Some(errors[0].line), errors[0].column.as_str()), (line, "ip"));
    }

    /// A free column holding a stray `"` inside an unquoted field: text to the csv reader (and
    /// so to `bootforge check`), once an opening quote to the editor, which then ran on to the
    /// next `"` and removed or rewrote every row in between.
    const DISK: &str = "hostname,ip,notes\nn1,10.0.0.1/24,5\" disk\nn2,10.0.0.2/24,plain\nn3,10.0.0.3/24,\"a \"\"b\"\"\"\nn4,10.0.0.4/24,2\" ssd\nn5,10.0.0.5/24,x\n";

    fn hosts(text: &str) -> Vec<(String, String)> {
        rows(text)
            .unwrap()
            .1
            .into_iter()
            .map(|r| (r.fields[0].clone(), r.fields[2].clone()))
            .collect()
    }

    #[test]
    fn a_stray_quote_in_a_free_column_bounds_only_its_row() {
        // The validator and the editor see the same five rows.
        assert_eq!(validate("nodes.csv", DISK).unwrap().len(), 5);
        assert_eq!(
            hosts(DISK),
            [
                ("n1", "5\" disk"),
                ("n2", "plain"),
                ("n3", "a \"b\""),
                ("n4", "2\" ssd"),
                ("n5", "x")
            ]
            .map(|(h, n)| (h.to_string(), n.to_string()))
        );
        // Remove: exactly the one row's bytes go.
        for (host, row) in [
            ("n1", "n1,10.0.0.1/24,5\" disk\n"),
            ("n2", "n2,10.0.0.2/24,plain\n"),
            ("n4", "n4,10.0.0.4/24,2\" ssd\n"),
        ] {
            let out = apply(DISK, &Edit::Remove { host: host.into() }).unwrap();
            assert_eq!(out.text, DISK.replacen(row, "", 1), "remove {host}");
            assert_eq!((out.host.as_str(), out.line), (host, None));
            assert_eq!(validate("nodes.csv", &out.text).unwrap().len(), 4);
        }
        // Change the row with the stray quote, and a row after it.
        let out =
            apply(DISK, &Edit::Change { host: "n1".into(), fields: f(&[("ip", "10.0.0.11/24")]) })
                .unwrap();
        assert_eq!(
            out.text,
            DISK.replace("n1,10.0.0.1/24,5\" disk", "n1,10.0.0.11/24,\"5\"\" disk\"")
        );
        assert_eq!(out.line, Some(2));
        let out =
            apply(DISK, &Edit::Change { host: "n2".into(), fields: f(&[("notes", "3\" hdd")]) })
                .unwrap();
        assert_eq!(out.text, DISK.replace("n2,10.0.0.2/24,plain", "n2,10.0.0.2/24,\"3\"\" hdd\""));
        assert_eq!(hosts(&out.text)[1], ("n2".into(), "3\" hdd".into()));
        // Add after it, and with a stray quote of its own; then remove it again.
        let out = apply(
            DISK,
            &Edit::Add(f(&[("hostname", "n6"), ("ip", "10.0.0.6/24"), ("notes", "7\" x")])),
        )
        .unwrap();
        assert_eq!(out.text, format!("{DISK}n6,10.0.0.6/24,\"7\"\" x\"\n"));
        assert_eq!((out.host.as_str(), out.line), ("n6", Some(7)));
        let back = apply(&out.text, &Edit::Remove { host: "n6".into() }).unwrap().text;
        assert_eq!(back, DISK);
        // CRLF, a BOM and no line end at the end.
        let crlf = format!("\u{feff}{}", DISK.replace('\n', "\r\n").trim_end());
        let out = apply(&crlf, &Edit::Remove { host: "n1".into() }).unwrap();
        assert_eq!(out.text, crlf.replacen("n1,10.0.0.1/24,5\" disk\r\n", "", 1));
        let out = apply(&crlf, &Edit::Remove { host: "n5".into() }).unwrap();
        assert_eq!(out.text, crlf.replacen("n5,10.0.0.5/24,x", "", 1));
    }

    /// The post-condition: a text in which the edit would reach another row is refused. (No
    /// edit of `apply` makes one now; `verify` is checked directly on such a text.)
    #[test]
    fn an_edit_that_would_touch_another_row_is_refused() {
        let (header, old) = rows(DISK).unwrap();
        // What the old scanner made of removing n1: n1 to n3's quote gone.
        let bad = "hostname,ip,notes\nn4,10.0.0.4/24,2\" ssd\nn5,10.0.0.5/24,x\n";
        let e = verify(&header, &old, bad, &Expected::Removed(0)).unwrap_err();
        assert!(matches!(e, EditError::WouldTouchOthers(_)), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        // A changed neighbour, same row count.
        let bad = DISK.replace("plain", "plain!");
        let e = verify(&header, &old, &bad, &Expected::Removed(4)).unwrap_err();
        assert!(matches!(e, EditError::WouldTouchOthers(_)), "{e}");
        let values: Vec<String> = ["n1", "10.0.0.9/24", "5\" disk"].map(String::from).to_vec();
        let bad = DISK.replace("10.0.0.1/24", "10.0.0.9/24").replace("plain", "plan");
        let e = verify(&header, &old, &bad, &Expected::Changed(0, values.clone())).unwrap_err();
        assert_eq!(e, EditError::WouldTouchOthers("the row on line 3".into()));
        let good = DISK.replace("10.0.0.1/24", "10.0.0.9/24");
        assert_eq!(verify(&header, &old, &good, &Expected::Changed(0, values)), Ok(Some(2)));
        // A header change.
        let bad = DISK.replace("notes", "note");
        assert!(verify(&header, &old, &bad, &Expected::Removed(0)).is_err());
    }

    /// `{"hostname": "web-01", "hostname ": "backdoor-02"}` wrote backdoor-02 and was audited as
    /// web-01: a column given twice, by any spelling, is refused, and so is an exact repeat
    /// (which a JSON map would have silently collapsed).
    #[test]
    fn a_column_given_twice_is_refused() {
        for pairs in [
            [("hostname", "web-01"), ("hostname ", "backdoor-02")],
            [("hostname", "web-01"), ("HostName", "backdoor-02")],
            [("hostname", "web-01"), ("hostname", "backdoor-02")],
        ] {
            let mut fields = f(&pairs);
            fields.0.push(("ip".into(), "10.0.0.8/24".into()));
            let e = apply(CSV, &Edit::Add(fields.clone())).unwrap_err();
            assert_eq!(e, EditError::DuplicateColumn("\"hostname\"".into()), "{pairs:?}");
            let e = apply(CSV, &Edit::Change { host: "n1".into(), fields }).unwrap_err();
            assert!(matches!(e, EditError::DuplicateColumn(_)), "{pairs:?}");
        }
        let json: Fields =
            serde_json::from_str(r#"{"hostname": "web-01", "hostname": "backdoor-02"}"#).unwrap();
        assert_eq!(json.0.len(), 2, "both keys are kept, to be refused");
        // The host of an add is the one written.
        let out =
            apply(CSV, &Edit::Add(f(&[("HOSTNAME ", " Web-01"), ("ip", "10.0.0.8/24")]))).unwrap();
        assert_eq!(out.host, "web-01");
    }
}
