//! `GET /assets/{path}`: kernels, initrds and ISOs from `--assets DIR`, streamed from disk with
//! `Content-Length` (never chunked encoding, which some firmware HTTP clients handle badly) and
//! single `Range` requests (iPXE and installers resume and probe with them).
//!
//! Path safety is checked twice: the request path may hold only plain components (no `..`, no
//! empty or hidden-dot tricks, no NUL, no backslash), and the file's canonical path (symlinks
//! resolved) must still lie under the canonical assets directory, so a symlink cannot lead out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// Why an asset cannot be served: the status code and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct AssetError {
    pub status: u16,
    pub message: String,
}

fn err(status: u16, message: impl Into<String>) -> AssetError {
    AssetError { status, message: message.into() }
}

/// An open file ready to stream: `(reader limited to the range, length, status, Content-Range)`.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    pub length: u64,
    /// 200 or 206.
    pub status: u16,
    pub content_range: Option<String>,
    pub total: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// Resolves `rel` (already percent-decoded, without the `/assets/` prefix) under `root`.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, AssetError> {
    if rel.is_empty() || rel.contains('\0') || rel.contains('\\') {
        return Err(err(400, "bad asset path"));
    }
    let rel_path = Path::new(rel);
    for c in rel_path.components() {
        match c {
            Component::Normal(_) => {}
            _ => return Err(err(400, "asset paths may not contain `..`, `.` or a leading `/`")),
        }
    }
    let root = root
        .canonicalize()
        .map_err(|e| err(404, format!("the assets directory is not available: {e}")))?;
    let full = root.join(rel_path);
    let canonical = full.canonicalize().map_err(|_| err(404, format!("no asset {rel:?}")))?;
    if !canonical.starts_with(&root) {
        return Err(err(404, format!("no asset {rel:?}")));
    }
    if !canonical.is_file() {
        return Err(err(404, format!("{rel:?} is not a file")));
    }
    Ok(canonical)
}

/// A parsed `Range` header against a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: send the whole file (also for multi-range requests, which RFC 9110 lets
    /// a server answer with the full content).
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N`.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeSpec {
    // The range unit is case-insensitive (RFC 9110 §14.1).
    let Some(spec) = header
        .map(str::trim)
        .and_then(|h| h.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes=")).map(|_| &h[6..]))
    else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeSpec::Full };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeSpec::Full,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) if len > 0 => Some((len.saturating_sub(n), len - 1)),
            Ok(_) => return RangeSpec::Unsatisfiable,
            Err(_) => None,
        },
        (false, _) => {
            match (a.parse::<u64>(), if b.is_empty() { Ok(u64::MAX) } else { b.parse::<u64>() }) {
                (Ok(start), Ok(end)) if start <= end => {
                    if start >= len {
                        return RangeSpec::Unsatisfiable;
                    }
                    Some((start, end.min(len - 1)))
                }
                _ => None,
            }
        }
    };
    match parsed {
        Some((s, e)) => RangeSpec::Part(s, e),
        None => RangeSpec::Full, // a syntactically invalid Range is ignored (RFC 9110 §14.2)
    }
}

/// Opens the asset and positions it for the requested range.
pub fn open(root: &Path, rel: &str, range: Option<&str>) -> Result<Body, AssetError> {
    let path = resolve(root, rel)?;
    let mut file = File::open(&path).map_err(|e| err(404, format!("cannot open {rel:?}: {e}")))?;
    let meta = file.metadata().map_err(|e| err(404, format!("cannot stat {rel:?}: {e}")))?;
    let total = meta.len();
    let modified = meta.modified().ok();
    match parse_range(range, total) {
        RangeSpec::Full => Ok(Body {
            reader: Box::new(file),
            length: total,
            status: 200,
            content_range: None,
            total,
            modified,
        }),
        RangeSpec::Part(start, end) => {
            file.seek(SeekFrom::Start(start)).map_err(|e| err(404, e.to_string()))?;
            let length = end - start + 1;
            Ok(Body {
                reader: Box::new(file.take(length)),
                length,
                status: 206,
                content_range: Some(format!("bytes {start}-{end}/{total}")),
                total,
                modified,
            })
        }
        RangeSpec::Unsatisfiable => {
            Err(AssetError { status: 416, message: format!("bytes */{total}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(parse_range(Some("Bytes=0-3"), 10), Part(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Part(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn traversal_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("assets");
        std::fs::create_dir_all(root.join("k")).unwrap();
        std::fs::write(root.join("k/vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        assert!(resolve(&root, "k/vmlinuz").is_ok());
        assert_eq!(resolve(&root, "../secret").unwrap_err().status, 400);
        assert_eq!(resolve(&root, "/etc/passwd").unwrap_err().status, 400);
        assert_eq!(resolve(&root, "escape").unwrap_err().status, 404);
        assert_eq!(resolve(&root, "k").unwrap_err().status, 404);
    }
}
