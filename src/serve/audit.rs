//! The audit log: `STATE_DIR/audit.jsonl`, one JSON object per line, append-only.
//!
//! Every flag change (who by API token name, when, from which peer address), every refused API
//! call and every boot answer with its reason is recorded. Instances sharing the state directory
//! append to the same file: it is opened with `O_APPEND` and each record is one `write(2)` of a
//! whole line, so lines from different writers never interleave. Records of flag changes are
//! `fdatasync`ed before the API answers; boot answers are not (a boot storm must not wait on the
//! disk, and losing the last few boot records in a crash loses no decision).
//!
//! No secret is ever written here: records hold token *names*, and request targets are never
//! logged (they carry `token=`).

use super::state::BootRecord;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct Audit {
    path: PathBuf,
    file: File,
}

impl Audit {
    pub fn open(state_dir: &Path) -> anyhow::Result<Audit> {
        let path = state_dir.join("audit.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open audit log {}: {e}", path.display()))?;
        Ok(Audit { path, file })
    }

    /// Appends one record: `event` plus `fields`, stamped with the time. `durable` waits for the
    /// disk. A failed append is logged but never fails the request.
    pub fn record(&self, event: &str, fields: Value, durable: bool) {
        let now = super::util::now_ms();
        let mut obj = Map::new();
        obj.insert("time".into(), json!(super::util::rfc3339(now)));
        obj.insert("ms".into(), json!(now));
        obj.insert("event".into(), json!(event));
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        // One write of the whole line: O_APPEND makes it land at the end in one piece.
        let result = (&self.file).write(line.as_bytes()).and_then(|n| {
            if n == line.len() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("short append ({n} of {} bytes)", line.len())))
            }
        });
        let result = result.and_then(|()| if durable { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the audit log");
        }
    }

    /// Records from byte offset `since` on, at most `limit` of them, and the offset to ask from
    /// next time. The offset is a cursor that stays valid across instances and restarts because
    /// the file only grows. A `since` inside a line starts at the next whole line.
    pub fn read_since(&self, since: u64, limit: usize) -> std::io::Result<(Vec<Value>, u64)> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        if since >= len {
            return Ok((Vec::new(), len.max(since.min(len))));
        }
        let start = if since == 0 {
            0
        } else {
            // Start after the newline at or before `since - 1`, unless `since` is a line start.
            file.seek(SeekFrom::Start(since - 1))?;
            let mut b = [0u8; 1];
            file.read_exact(&mut b)?;
            since - 1 + if b[0] == b'\n' { 1 } else { find_newline(&mut file)? }
        };
        file.seek(SeekFrom::Start(start))?;
        let mut events = Vec::new();
        let mut pos = start;
        let mut reader = std::io::BufReader::new(file);
        let mut buf = Vec::new();
        while events.len() < limit {
            buf.clear();
            let n = std::io::BufRead::read_until(&mut reader, b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // end, or a line still being written
            }
            pos += n as u64;
            if let Ok(mut v) = serde_json::from_slice::<Value>(&buf) {
                if let Value::Object(o) = &mut v {
                    o.insert("offset".into(), json!(pos - n as u64));
                }
                events.push(v);
            }
        }
        Ok((events, pos))
    }
}

/// Each host's last boot answer, as recorded in the shared audit log.
///
/// Boot answers are not written to the per-host state files (a boot storm must not cost a file
/// replacement per request), but every instance appends them to the one audit log. Reading them
/// back from there is what makes instances sharing a state directory agree on `last_boot`. The
/// log is followed incrementally: a look-up reads only what was appended since the previous one.
#[derive(Default)]
pub struct LastBoots(std::sync::Mutex<(u64, HashMap<String, BootRecord>)>);

impl LastBoots {
    pub fn get(&self, audit: &Audit, host: &str) -> Option<BootRecord> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (offset, boots) = &mut *guard;
        match audit.read_since(*offset, usize::MAX) {
            Ok((events, next)) => {
                *offset = next;
                for e in events.iter().filter(|e| e["event"] == "boot") {
                    let text = |k: &str| e[k].as_str().map(str::to_string);
                    let Some(host) = text("host").filter(|h| h != "-") else { continue };
                    let record = BootRecord {
                        at: e["ms"].as_u64().unwrap_or(0),
                        peer: text("peer").unwrap_or_default(),
                        ip: text("ip"),
                        mac: text("mac"),
                        answer: text("answer").unwrap_or_default(),
                        reason: text("reason").unwrap_or_default(),
                    };
                    boots.insert(host, record);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the audit log for last boots"),
        }
        boots.get(host).cloned()
    }
}

/// Bytes from `since - 1` to just past the next newline (the file position is at `since`).
fn find_newline(file: &mut File) -> std::io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut skipped = 1u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(skipped);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Ok(skipped + i as u64 + 1);
        }
        skipped += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let b = Audit::open(dir.path()).unwrap();
        for i in 0..5 {
            a.record("x", json!({ "i": i }), false);
            b.record("y", json!({ "i": i }), true);
        }
        let (all, end) = a.read_since(0, 100).unwrap();
        assert_eq!(all.len(), 10);
        let (page, next) = a.read_since(0, 3).unwrap();
        assert_eq!(page.len(), 3);
        let (rest, end2) = a.read_since(next, 100).unwrap();
        assert_eq!(rest.len(), 7);
        assert_eq!(end, end2);
        // A cursor in the middle of a line starts at the next line.
        let (mid, _) = a.read_since(next + 2, 100).unwrap();
        assert_eq!(mid.len(), 6);
        assert!(a.read_since(end + 50, 10).unwrap().0.is_empty());
    }
}
