//! Inventory edits from the console, as a pure core over the CSV's text: add, change or remove
//! one row, touching no other byte of the file.
//!
//! The CSV stays the source of truth. An edit is applied to the file's current text: the row is
//! found by its host name, its bytes (from the start of its record to its line end, quoted
//! newlines included) are replaced or removed, and an added row is appended. Everything else
//! (the header and its column order, comments, other rows and their quoting, a BOM, CRLF line
//! ends) is kept byte for byte. The result is then validated whole by [`Inventory::parse`], the
//! code behind `bootforge check`, before the handler writes anything (see
//! `console::edit_inventory`).

use crate::inventory::Inventory;
use std::collections::BTreeMap;

/// One edit. `fields` maps column names (as in the header, any case) to values; a column not
/// given is left empty on an added row and unchanged on a changed one.
#[derive(Debug, Clone)]
pub enum Edit {
    Add(BTreeMap<String, String>),
    Change { host: String, fields: BTreeMap<String, String> },
    Remove { host: String },
}

/// An edit that cannot even be applied (before validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The file itself cannot be read as CSV with a header (fix it by hand or upload a new one).
    Unreadable(String),
    /// No row has this host name.
    NoSuchHost(String),
    /// A field names a column the header does not have.
    NoSuchColumn(String),
    /// A value holds a character no CSV field of the inventory may (a line break or NUL).
    BadValue { column: String, message: String },
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Unreadable(m) => write!(f, "the inventory cannot be edited: {m}"),
            EditError::NoSuchHost(h) => write!(f, "no row of the inventory has host name {h:?}"),
            EditError::NoSuchColumn(c) => {
                write!(f, "the inventory has no column {c:?}; add columns by uploading a new CSV")
            }
            EditError::BadValue { column, message } => write!(f, "column {column}: {message}"),
        }
    }
}

/// A row of the file as written: where its bytes are, and its fields.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// The line the record starts on, counted as the CSV reader behind `bootforge check` counts
    /// (so errors of the edited row are found by it).
    pub line: u64,
    start: usize,
    end: usize,
    pub fields: Vec<String>,
}

/// The header (lower case, file order) and the data rows of a CSV text.
pub fn rows(text: &str) -> Result<(Vec<String>, Vec<RawRow>), EditError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let lines = crate::inventory::Lines::new(text.as_bytes());
    let mut header = None;
    let mut out = Vec::new();
    for record in csv.records() {
        let record = record.map_err(|e| EditError::Unreadable(e.to_string()))?;
        let pos = record.position().expect("records read from a reader have positions");
        if header.is_none() {
            let names = record
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let f = if i == 0 { f.trim_start_matches('\u{feff}') } else { f };
                    f.trim().to_ascii_lowercase()
                })
                .collect();
            header = Some(names);
            continue;
        }
        // The reader's offset may point at comment or blank lines before the record, or at the
        // `\n` of a CRLF: the inventory's own reckoning finds the record and its line.
        let (start, line) = lines.record(pos);
        let end = record_end(text.as_bytes(), start);
        out.push(RawRow { line, start, end, fields: record.iter().map(str::to_string).collect() });
    }
    let header = header.ok_or_else(|| EditError::Unreadable("the file has no header".into()))?;
    Ok((header, out))
}

/// The byte after the line end of the record starting at `start` (quoted line breaks are inside
/// the record), or the end of the text.
fn record_end(bytes: &[u8], start: usize) -> usize {
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return i + 1,
            _ => {}
        }
    }
    bytes.len()
}

/// Applies `edit` to the CSV `text`. Returns the new text and the line of the edited row in it
/// (`None` for a removal), so errors on that line can be shown next to the form's fields.
pub fn apply(text: &str, edit: &Edit) -> Result<(String, Option<u64>), EditError> {
    let (header, all) = rows(text)?;
    let host_col = header
        .iter()
        .position(|c| c == "hostname")
        .ok_or_else(|| EditError::Unreadable("the header has no hostname column".into()))?;
    let crlf = text.contains("\r\n");
    let find = |host: &str| {
        all.iter()
            .find(|r| r.fields.get(host_col).is_some_and(|h| h.trim().eq_ignore_ascii_case(host)))
            .ok_or_else(|| EditError::NoSuchHost(host.chars().take(64).collect()))
    };
    match edit {
        Edit::Remove { host } => {
            let row = find(host)?;
            Ok((format!("{}{}", &text[..row.start], &text[row.end..]), None))
        }
        Edit::Change { host, fields } => {
            let row = find(host)?;
            let mut values = row.fields.clone();
            values.resize(header.len(), String::new());
            put(&header, &mut values, fields)?;
            let mut line = record(&values, crlf);
            if !text[row.start..row.end].ends_with('\n') {
                line.truncate(line.trim_end_matches(['\r', '\n']).len());
            }
            Ok((format!("{}{line}{}", &text[..row.start], &text[row.end..]), Some(row.line)))
        }
        Edit::Add(fields) => {
            let mut values = vec![String::new(); header.len()];
            put(&header, &mut values, fields)?;
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(if crlf { "\r\n" } else { "\n" });
            }
            out.push_str(&record(&values, crlf));
            let line = self::rows(&out)?.1.last().map(|r| r.line);
            Ok((out, line))
        }
    }
}

/// Puts `fields` into `values` (in header order), refusing unknown columns and values that
/// would break a line.
fn put(
    header: &[String],
    values: &mut [String],
    fields: &BTreeMap<String, String>,
) -> Result<(), EditError> {
    for (name, value) in fields {
        let key = name.trim().to_ascii_lowercase();
        let i = header
            .iter()
            .position(|c| *c == key)
            .ok_or_else(|| EditError::NoSuchColumn(key.chars().take(64).collect()))?;
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

/// A whole inventory text checked by the code behind `bootforge check`: every error with its
/// line and column.
pub fn validate(source: &str, text: &str) -> Result<Inventory, Vec<crate::inventory::FieldError>> {
    match Inventory::parse(source, text.as_bytes()) {
        Ok(inv) => Ok(inv),
        Err(crate::inventory::InventoryError::Invalid(errors)) => Err(errors),
        Err(e) => Err(vec![crate::inventory::FieldError {
            source: source.to_string(),
            line: 0,
            column: "-".into(),
            message: e.to_string(),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn2,10.0.0.2/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n";

    fn f(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_change_touches_only_its_row() {
        let edit = Edit::Change { host: "N2".into(), fields: f(&[("ip", "10.0.0.9/24")]) };
        let (out, line) = apply(CSV, &edit).unwrap();
        assert_eq!(line, rows(CSV).unwrap().1.iter().find(|r| r.fields[0] == "n2").map(|r| r.line));
        assert_eq!(
            out,
            "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn2,10.0.0.9/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n"
        );
    }

    #[test]
    fn add_and_remove_keep_every_other_byte() {
        let (out, line) = apply(
            CSV,
            &Edit::Add(f(&[("hostname", "n4"), ("ip", "10.0.0.4/24"), ("role", "a\"q")])),
        )
        .unwrap();
        assert_eq!(out, format!("{CSV}n4,10.0.0.4/24,,\"a\"\"q\"\r\n"));
        assert_eq!(line, rows(&out).unwrap().1.last().map(|r| r.line));
        let (back, _) = apply(&out, &Edit::Remove { host: "n4".into() }).unwrap();
        assert_eq!(back, CSV);
        let (out, _) = apply(CSV, &Edit::Remove { host: "n2".into() }).unwrap();
        assert_eq!(out, "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.1/24,,\"a,b\"\r\nn3,10.0.0.3/24,,x\r\n");
        // No line end at the end of the file.
        let (out, _) = apply(
            "hostname,ip\nn1,10.0.0.1/24",
            &Edit::Add(f(&[("hostname", "n2"), ("ip", "10.0.0.2/24")])),
        )
        .unwrap();
        assert_eq!(out, "hostname,ip\nn1,10.0.0.1/24\nn2,10.0.0.2/24\n");
        let (out, _) = apply(
            "hostname,ip\nn1,10.0.0.1/24",
            &Edit::Change { host: "n1".into(), fields: f(&[("ip", "10.0.0.3/24")]) },
        )
        .unwrap();
        assert_eq!(out, "hostname,ip\nn1,10.0.0.3/24");
    }

    /// A row right after a comment or a blank line: its own bytes change, not the lines before
    /// it (the CSV reader reports such a record where the skipped lines begin).
    #[test]
    fn rows_after_comments_and_blank_lines_are_found() {
        let edit = Edit::Change { host: "n1".into(), fields: f(&[("ip", "10.0.0.7/24")]) };
        let (out, line) = apply(CSV, &edit).unwrap();
        assert_eq!(
            out,
            "\u{feff}hostname,ip,mac,role\r\n# rack 1\r\nn1,10.0.0.7/24,,\"a,b\"\r\nn2,10.0.0.2/24,,\"multi\r\nline\"\r\nn3,10.0.0.3/24,,x\r\n"
        );
        assert_eq!(line, Some(3));
        let lf = "hostname,ip\nn1,10.0.0.1/24\n\n# two\n\nn2,10.0.0.2/24\n";
        let (out, line) = apply(lf, &Edit::Remove { host: "n2".into() }).unwrap();
        assert_eq!((out.as_str(), line), ("hostname,ip\nn1,10.0.0.1/24\n\n# two\n\n", None));
        let rows = rows(lf).unwrap().1;
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 6]);
    }

    #[test]
    fn bad_edits_are_named() {
        let e = apply(CSV, &Edit::Remove { host: "zz".into() }).unwrap_err();
        assert_eq!(e, EditError::NoSuchHost("zz".into()));
        let e = apply(CSV, &Edit::Add(f(&[("colour", "red")]))).unwrap_err();
        assert_eq!(e, EditError::NoSuchColumn("colour".into()));
        let e = apply(CSV, &Edit::Add(f(&[("role", "a\nb")]))).unwrap_err();
        assert!(matches!(e, EditError::BadValue { .. }));
    }

    #[test]
    fn validation_reports_the_edited_line_and_column() {
        let csv = "hostname,ip,role\n# rack 1\nn1,10.0.0.1/24,\"a,b\"\n";
        let (out, line) =
            apply(csv, &Edit::Add(f(&[("hostname", "n5"), ("ip", "10.0.0.300/24")]))).unwrap();
        let errors = validate("nodes.csv", &out).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((Some(errors[0].line), errors[0].column.as_str()), (line, "ip"));
    }
}
