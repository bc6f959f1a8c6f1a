//! The audit log: `STATE_DIR/audit.jsonl`, one JSON object per line, append-only.
//!
//! Every flag change (who, when, from which peer address), every refused API call and every boot
//! answer with its reason is recorded. One writer thread per instance appends every record, in
//! the order they were made, in batches of whole lines, each batch one `write(2)` on an `O_APPEND`
//! descriptor, so lines from instances sharing the file never interleave. Records of state
//! changes are `fdatasync`ed *before* the change is written ([`Audit::append_durable`],
//! which waits; several waiting changes share one sync), and a change whose record cannot be
//! written is refused: nothing the service acknowledges is missing from the log. Other records
//! ([`Audit::note`]) never make a request wait.
//!
//! **Refusals are aggregated**, so that the log's growth is bounded whatever clients without
//! credentials send. A refusal is a record anyone can cause at will: `denied`, `login-failed`,
//! `media-denied`, `node-token-denied`, and `boot` answers to unverified requests (see
//! [`Event::refusal`]). The writer keys them by (record kind, peer, route, reason, inventory
//! host), the peer being an IPv4 address or an IPv6 /64 ([`refusal_peer`](crate::serve::domain::event::refusal_peer)): the first of a key
//! in a [`REFUSAL_WINDOW_MS`] window is written in full, as before; the others of that window
//! are only counted, and written as one [`Event::RefusedSummary`] when the window closes.
//!
//! Threat: one client filling the table so that other clients' refusals (a password spray, a
//! node failing its token) lose their peer. So one peer opens at most [`MAX_KEYS_PER_PEER`]
//! keys of each record kind (the first refusal of every kind a peer causes is still written in
//! full); beyond, its refusals are counted under one key per kind that still names it. At most
//! [`MAX_REFUSAL_KEYS`] keys are open at once; refusals of further peers are counted, none
//! written in full, under a key without a peer (one per kind, route and reason, a set fixed by
//! the code), which lists its [`TOP_PEERS`] largest peers. So each window writes at most
//! `2 × MAX_REFUSAL_KEYS` records plus that fixed set, each bounded (a few hundred bytes, a
//! peerless summary about 1 KB): about 25 MB an hour at worst (from more than a dozen peers
//! at once), about 100 KB an hour from one. Individual refusals plus summary counts add up to
//! every refusal made.
//!
//! Shutdown: [`Audit::stopping`] writes every open window and makes the writer write later
//! counts batch by batch; dropping the [`Audit`] waits for the writer, whose exit path writes
//! what is still counted. Only a kill (or crash) loses counts: those of the windows then open.
//!
//! What a record may hold is fixed by [`Event`]: host names only once validated, install ids
//! only in their 32-hex shape, addresses only as parsed addresses, route names instead of request
//! paths, token *names* instead of tokens. No request text reaches the log unparsed, so no
//! secret can, and every record is a few hundred bytes whatever the request held.

use crate::serve::domain::event::{visible_to, Event, PeerCount, Refusal};
use std::net::IpAddr;

use crate::serve::domain::actor::Role;

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    ms: u64,
    #[serde(flatten)]
    event: &'a Event,
}

pub struct Audit {
    path: PathBuf,
    /// Notes go to a writer thread, so no request waits on the disk for one.
    notes: std::sync::mpsc::SyncSender<Note>,
    /// Notes dropped because the writer fell behind by [`NOTE_QUEUE`] records.
    pub dropped: std::sync::atomic::AtomicU64,
    /// The writer thread, joined on drop so that its exit path (which writes the summaries of
    /// every window still open) has run before the process can exit.
    writer: Option<std::thread::JoinHandle<()>>,
}

enum Note {
    Line(Vec<u8>),
    /// A refusal (see [`Event::refusal`]) made at this time: written, or counted, by the writer.
    Refusal(Event, u64),
    /// Closes every refusal window (writing its summary), then answers. With `stopping`, the
    /// writer also writes the counts of every window at the end of each later batch (see
    /// [`Refusals::flush`]): the service is stopping,
    /// and refusals still noted by requests that outlive the stop are written, not held.
    CloseWindows(std::sync::mpsc::Sender<()>, bool),
    /// A record a change depends on: answered once it is written and `fdatasync`ed.
    Durable(Vec<u8>, std::sync::mpsc::Sender<std::io::Result<()>>),
    /// Answered once everything queued before it is written.
    Sync(std::sync::mpsc::Sender<()>),
}

/// Notes waiting for the writer at most; beyond, they are dropped and counted.
const NOTE_QUEUE: usize = 16_384;
/// Largest batch of notes written with one `write(2)`.
const NOTE_BATCH: usize = 64 * 1024;
/// How long a refusal window lasts: the first refusal of a key is written, the rest of the
/// window's are counted into one summary.
pub const REFUSAL_WINDOW_MS: u64 = 60_000;
/// Keys one peer (address, or IPv6 /64) may open per record kind with refusals written in
/// full; its further refusals of that kind are counted under one key per kind (route and
/// reason `None`), never peerless.
pub const MAX_KEYS_PER_PEER: usize = 8;
/// Peers named, with their counts, in a peerless summary.
pub const TOP_PEERS: usize = 16;
/// Refusal keys (kind, peer, route, reason) tracked at once; refusals of further peers are
/// counted under a key without a peer.
pub const MAX_REFUSAL_KEYS: usize = 512;

/// Largest answer of one `/events` page, whatever `limit` asks for.
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// Most log read for one `/events` page (a filtered one reads past what it keeps). The page
/// then ends early with a cursor (`next`, or `before` when paging back), so following cursors
/// still finds every record, and no caller can make one request cost more than this much
/// reading and parsing (tens of milliseconds of CPU, where 64 MiB cost about a second).
pub const MAX_SCAN_BYTES: usize = 4 << 20;

/// One page of `GET /events`, as answered.
#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<Value>,
    /// Oldest-first paging: the offset to ask from next (`since`). Newest-first: where the
    /// scan stopped.
    pub next: u64,
    /// Newest-first paging: the `before` of the next (older) page; absent when the log holds
    /// nothing older. Set also when the page has fewer records than asked because the scan
    /// budget ran out: the records before it are not read yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Bytes of log this page read ([`MAX_SCAN_BYTES`] at most, plus one record).
    pub scanned: u64,
    /// Oldest-first paging: whether the scan reached the end of the log. `false` with few or no
    /// events means the budget ran out: ask again from `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
}

impl Audit {
    pub fn open(state_dir: &Path) -> anyhow::Result<Audit> {
        let path = state_dir.join("audit.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open audit log {}: {e}", path.display()))?;
        let (notes, queue) = std::sync::mpsc::sync_channel(NOTE_QUEUE);
        let shown = path.clone();
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_notes(&file, &shown, &queue))?;
        Ok(Audit { path, notes, dropped: Default::default(), writer: Some(writer) })
    }

    /// Appends a record a change depends on, stamped with the time, and waits until it is
    /// written and synced. An error means the record may be missing: the change is refused.
    pub fn append_durable(&self, event: &Event) -> std::io::Result<()> {
        // Through the writer, like notes, so that this instance's records keep their order.
        let (tx, rx) = std::sync::mpsc::channel();
        self.notes
            .send(Note::Durable(line(event), tx))
            .map_err(|_| std::io::Error::other("the audit writer has stopped"))?;
        rx.recv().unwrap_or_else(|_| Err(std::io::Error::other("the audit writer has stopped")))
    }

    /// Queues a record nothing depends on (boot answers, refusals) for the writer thread, which
    /// appends queued notes in batches. Never waits: if the writer is [`NOTE_QUEUE`] records
    /// behind, the note is dropped and counted (`bootforge_audit_notes_dropped_total`).
    /// Refusals ([`Event::refusal`]) are aggregated by the writer (see the module
    /// documentation).
    pub fn note(&self, event: &Event) {
        let note = match event.refusal() {
            Some(_) => Note::Refusal(event.clone(), crate::serve::util::now_ms()),
            None => Note::Line(line(event)),
        };
        if self.notes.try_send(note).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Closes every open refusal window now: waits until the summaries of refusals counted so
    /// far (and every note queued before) are written. Called at shutdown, so no count is lost.
    pub fn close_windows(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::CloseWindows(tx, false)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// The orderly stop: closes every refusal window now, as [`Audit::close_windows`], and from
    /// then on the writer writes each batch's counts at the end of that batch (windows stay
    /// open, so refusals are still aggregated) instead of holding them to the window's end. So a refusal noted by a request still finishing after the stop
    /// is on disk once its batch is, and nothing counted waits for a window that would close
    /// after the process has exited.
    pub fn stopping(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::CloseWindows(tx, true)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Waits until every note queued so far is written (before reading the log back). Refusals
    /// only counted so far are not: see [`Audit::close_windows`].
    pub fn sync(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.notes.send(Note::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Records from byte offset `since` on, at most `limit` of them, and the offset to ask from
    /// next time. The offset is a cursor that stays valid across instances and restarts because
    /// the file only grows. A `since` inside a line starts at the next whole line.
    /// The page also stops before it would pass `max_bytes` of log text (at least one record is
    /// returned), so no request can make the service build a large answer in memory.
    pub fn read_since(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> std::io::Result<(Vec<Value>, u64)> {
        let page = self.read_page(since, limit, max_bytes, &Default::default(), Role::Admin)?;
        Ok((page.events, page.next))
    }

    /// A page of records from byte offset `since` on (see [`Audit::read_since`]), as `role` may
    /// see them ([`visible_to`]), keeping those `filter` passes: at most `limit` of them and
    /// `max_bytes` of their text, reading at most [`MAX_SCAN_BYTES`] of log (at least one
    /// line). `next` is where to go on; `at_end` whether the log's end was reached.
    pub fn read_page(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
        filter: &crate::serve::domain::query::EventFilter,
        role: Role,
    ) -> std::io::Result<Page> {
        let (mut events, mut bytes, mut scanned) = (Vec::new(), 0usize, 0usize);
        let mut stopped = false;
        let next = self.scan_since(since, |line, offset| {
            let full = events.len() >= limit
                || (bytes + line.len() > max_bytes && !events.is_empty())
                || (scanned + line.len() > MAX_SCAN_BYTES && scanned > 0);
            if full {
                stopped = true;
                return false;
            }
            scanned += line.len();
            if let Ok(mut v) = serde_json::from_slice::<Value>(line) {
                visible_to(role, &mut v);
                if filter.keeps(&v) {
                    bytes += line.len();
                    if let Value::Object(o) = &mut v {
                        o.insert("offset".into(), json!(offset));
                    }
                    events.push(v);
                }
            }
            true
        })?;
        Ok(Page { events, next, before: None, scanned: scanned as u64, at_end: Some(!stopped) })
    }

    /// The newest `limit` records that `filter` passes among those starting before byte
    /// offset `before` (default: the end), newest first, as `role` may see them, reading at
    /// most [`MAX_SCAN_BYTES`] of the log back (the console's audit view pages backwards with
    /// these). `next` is where the scan stopped; `before` the cursor of the next older page.
    pub fn read_newest(
        &self,
        limit: usize,
        before: Option<u64>,
        filter: &crate::serve::domain::query::EventFilter,
        role: Role,
    ) -> std::io::Result<Page> {
        let len = std::fs::metadata(&self.path)?.len();
        let end = before.unwrap_or(len).min(len);
        let start = end.saturating_sub(MAX_SCAN_BYTES as u64);
        let mut kept: std::collections::VecDeque<Value> = Default::default();
        let mut scanned = 0u64;
        let next = self.scan_since(start, |line, offset| {
            if offset >= end {
                return false;
            }
            scanned += line.len() as u64;
            if let Ok(mut v) = serde_json::from_slice::<Value>(line) {
                visible_to(role, &mut v);
                if filter.keeps(&v) {
                    if let Value::Object(o) = &mut v {
                        o.insert("offset".into(), json!(offset));
                    }
                    kept.push_back(v);
                    if kept.len() > limit {
                        kept.pop_front();
                    }
                }
            }
            true
        })?;
        let older = if kept.len() >= limit {
            // A full page: older matches may sit just before its oldest record.
            kept.front().and_then(|v| v["offset"].as_u64())
        } else {
            // The window [start, end) is read; what lies before it is not. A line cut by
            // `start` begins before it, so the next page (offsets below `start`) holds it.
            Some(start)
        };
        let before = older.filter(|&b| b > 0);
        Ok(Page { events: kept.into_iter().rev().collect(), next, before, scanned, at_end: None })
    }

    /// Calls `take(line, offset)` for each whole line from byte offset `since` on, until it
    /// returns `false` (that line is not taken); returns the offset after the last line taken.
    fn scan_since(
        &self,
        since: u64,
        mut take: impl FnMut(&[u8], u64) -> bool,
    ) -> std::io::Result<u64> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        if since >= len {
            return Ok(len.max(since.min(len)));
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
        let mut pos = start;
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = std::io::BufRead::read_until(&mut reader, b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') || !take(&buf, pos) {
                return Ok(pos); // end, a line still being written, or enough
            }
            pos += n as u64;
        }
    }
}

/// Each host's last verified boot answer, as recorded in the shared audit log.
///
/// Boot answers are not written to the per-host state files (a boot storm must not cost a file
/// replacement per request), but every instance appends them to the one audit log. Reading them
/// back from there is what makes instances sharing a state directory agree on `last_boot`. The
/// log is followed incrementally: a look-up reads only what was appended since the previous one.
/// Only verified requests count (a request without the node's token cannot change what the
/// operator sees), and only hosts of the inventory are kept, so memory is bounded by its size.
#[derive(Default)]
pub struct LastBoots {
    /// The offset read up to; held while reading, so refreshes take turns.
    read_to: std::sync::Mutex<u64>,
    /// Held only to look up or merge, never while reading the log.
    boots: std::sync::Mutex<HashMap<String, BootRecord>>,
}

/// A host's last verified boot, as `GET /hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRecord {
    pub at: u64,
    pub peer: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// `install` or `local`.
    pub answer: String,
    pub reason: String,
}

/// The fields of a boot record that [`LastBoots`] keeps, borrowed from the line.
#[derive(serde::Deserialize)]
struct BootLine<'a> {
    ms: u64,
    #[serde(default)]
    verified: bool,
    #[serde(borrow)]
    host: Option<&'a str>,
    peer: Option<&'a str>,
    ip: Option<&'a str>,
    mac: Option<&'a str>,
    answer: Option<&'a str>,
    reason: Option<&'a str>,
}

impl LastBoots {
    /// Reads what was appended to the log since the last refresh. Only boot records are parsed
    /// (others are skipped by a substring test), into borrowed fields: the reload thread runs
    /// this every 100 ms, through boot storms of tens of thousands of records a second.
    pub fn refresh(&self, audit: &Audit, in_inventory: impl Fn(&str) -> bool) {
        audit.sync();
        let mut offset = self.read_to.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen: HashMap<String, BootRecord> = HashMap::new();
        let scanned = audit.scan_since(*offset, |line, _| {
            let Ok(text) = std::str::from_utf8(line) else { return true };
            if !text.contains("\"event\":\"boot\"") || !text.contains("\"verified\":true") {
                return true;
            }
            let Ok(b) = serde_json::from_str::<BootLine>(text) else { return true };
            let Some(host) = b.host.filter(|h| b.verified && in_inventory(h)) else { return true };
            let own = |v: Option<&str>| v.map(str::to_string);
            let record = BootRecord {
                at: b.ms,
                peer: b.peer.unwrap_or_default().to_string(),
                ip: own(b.ip),
                mac: own(b.mac),
                answer: b.answer.unwrap_or_default().to_string(),
                reason: b.reason.unwrap_or_default().to_string(),
            };
            match seen.get_mut(host) {
                Some(slot) => *slot = record,
                None => {
                    seen.insert(host.to_string(), record);
                }
            }
            true
        });
        match scanned {
            Ok(next) => *offset = next,
            Err(e) => tracing::warn!(error = %e, "cannot read the audit log for last boots"),
        }
        let mut boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        boots.retain(|h, _| in_inventory(h));
        boots.extend(seen);
    }

    /// Starts following the log `bytes` before its end instead of at its start, so that a
    /// restart over a log of gigabytes does not spend minutes reading it back: last boots older
    /// than that stretch of the log show again once the host boots again.
    pub fn start_near_end(&self, audit: &Audit, bytes: u64) {
        let len = std::fs::metadata(&audit.path).map_or(0, |m| m.len());
        *self.read_to.lock().unwrap_or_else(|p| p.into_inner()) = len.saturating_sub(bytes);
    }

    /// Every host's last verified boot time, for sorting the fleet.
    pub fn times(&self) -> HashMap<String, u64> {
        let boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        boots.iter().map(|(h, b)| (h.clone(), b.at)).collect()
    }

    /// The host's last verified boot as of the last [`LastBoots::refresh`].
    pub fn get(&self, host: &str) -> Option<BootRecord> {
        self.boots.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned()
    }
}

impl Drop for Audit {
    /// Stops the writer and waits for it: on its way out it writes the summaries of refusals
    /// still counted (see [`write_notes`]), so nothing counted is lost on an orderly stop.
    fn drop(&mut self) {
        // Replacing the sender drops this handle's end of the queue: the writer drains what is
        // queued, closes every window and returns.
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.notes, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One record as a line of JSON.
fn line(event: &Event) -> Vec<u8> {
    line_at(event, crate::serve::util::now_ms())
}

/// One record as a line of JSON, stamped `now`.
fn line_at(event: &Event, now: u64) -> Vec<u8> {
    let line = Line { time: crate::serve::util::rfc3339(now), ms: now, event };
    let mut bytes = serde_json::to_vec(&line).expect("audit records serialise");
    bytes.push(b'\n');
    bytes
}

/// The open refusal windows of the writer thread (see the module documentation). Pure over the
/// times passed in; unit-tested below.
///
/// Bounds: `open` holds at most [`MAX_REFUSAL_KEYS`] keys with a peer, plus the peerless ones
/// (one per kind, route and reason: a set fixed by the code); `per_peer` has an entry only for
/// a peer with an open key; each peerless window lists at most [`TOP_PEERS`] peers.
#[derive(Default)]
pub struct Refusals {
    open: HashMap<Refusal, Counted>,
    /// Keys in the order their windows opened, so in the order they close (windows are all
    /// [`REFUSAL_WINDOW_MS`] long).
    closing: std::collections::VecDeque<(u64, Refusal)>,
    /// Keys written in full open per peer and record kind (to enforce [`MAX_KEYS_PER_PEER`]).
    per_peer: HashMap<(IpAddr, &'static str), usize>,
}

/// One open window: the refusals counted but not written, and when they were made.
#[derive(Debug, Clone)]
struct Counted {
    count: u64,
    first: u64,
    last: u64,
    /// Peerless windows only: the peers counted most (space-saving, [`TOP_PEERS`] at most).
    top: Vec<PeerCount>,
}

impl Counted {
    fn new(now: u64) -> Counted {
        Counted { count: 0, first: now, last: now, top: Vec::new() }
    }

    fn add(&mut self, now: u64) {
        self.count += 1;
        self.first = self.first.min(now);
        self.last = self.last.max(now);
    }

    /// Counts one refusal of `peer` in the top list. Space-saving: when the list is full, a new
    /// peer takes the place of the least counted, inheriting its count, so the list's memory is
    /// fixed and any peer that made more than `count / TOP_PEERS` refusals is in it.
    fn add_peer(&mut self, peer: IpAddr) {
        if let Some(p) = self.top.iter_mut().find(|p| p.peer == peer) {
            p.count += 1;
        } else if self.top.len() < TOP_PEERS {
            self.top.push(PeerCount { peer, count: 1 });
        } else if let Some(least) = self.top.iter_mut().min_by_key(|p| p.count) {
            *least = PeerCount { peer, count: least.count + 1 };
        }
    }
}

impl Refusals {
    /// A refusal made at `now`: `true` if it is to be written in full (the first of its key in
    /// a window), `false` if it was counted.
    pub fn take(&mut self, key: Refusal, now: u64) -> bool {
        if let Some(c) = self.open.get_mut(&key) {
            c.add(now);
            return false;
        }
        let Some(peer) = key.peer else {
            // Keys come from Event::refusal, which always names the peer; count it anyway.
            self.count_under(key, now, None);
            return false;
        };
        let room = self.open.len() < MAX_REFUSAL_KEYS;
        let slot = (peer, key.refused);
        let held = self.per_peer.get(&slot).copied().unwrap_or(0);
        if room && held < MAX_KEYS_PER_PEER {
            self.per_peer.insert(slot, held + 1);
            self.open.insert(key.clone(), Counted::new(now));
            self.closing.push_back((now, key));
            return true;
        }
        // Past its own cap: one key per kind for the peer, so it is still named.
        let wide = Refusal { route: None, reason: None, host: None, ..key.clone() };
        if held >= MAX_KEYS_PER_PEER && (room || self.open.contains_key(&wide)) {
            self.count_under(wide, now, None);
            return false;
        }
        // Too many peers at once: counted without its peer, never written in full; the peer
        // is kept in the window's bounded top list.
        let overflow = Refusal { peer: None, host: None, ..key };
        self.count_under(overflow, now, Some(peer));
        false
    }

    /// Counts a refusal under `key` (opening its window if needed, never written in full).
    fn count_under(&mut self, key: Refusal, now: u64, peer: Option<IpAddr>) {
        let c = match self.open.get_mut(&key) {
            Some(c) => c,
            None => {
                self.closing.push_back((now, key.clone()));
                self.open.entry(key).or_insert_with(|| Counted::new(now))
            }
        };
        c.add(now);
        if let Some(peer) = peer {
            c.add_peer(peer);
        }
    }

    /// Closes the windows opened [`REFUSAL_WINDOW_MS`] before `now` (every window with
    /// `all`), returning the summaries of those that counted refusals.
    pub fn close(&mut self, now: u64, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some((opened, _)) = self.closing.front() {
            if !all && now.saturating_sub(*opened) < REFUSAL_WINDOW_MS {
                break;
            }
            let (_, key) = self.closing.pop_front().expect("front exists");
            let Some(mut c) = self.open.remove(&key) else { continue };
            if let (Some(peer), Some(_)) = (key.peer, key.route) {
                let slot = (peer, key.refused);
                if let Some(held) = self.per_peer.get_mut(&slot) {
                    *held -= 1;
                    if *held == 0 {
                        self.per_peer.remove(&slot);
                    }
                }
            }
            if c.count > 0 {
                c.top.sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
                out.push(Event::RefusedSummary {
                    refused: key.refused,
                    peer: key.peer,
                    route: key.route,
                    reason: key.reason,
                    host: key.host,
                    count: c.count,
                    first_ms: c.first,
                    last_ms: c.last,
                    top_peers: c.top,
                });
            }
        }
        out
    }

    /// Writes the counts of every open window and starts them again from zero, the windows
    /// staying open (so their next refusals are still only counted). Used once the service is
    /// stopping: nothing counted waits for a window to close.
    pub fn flush(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for (key, c) in self.open.iter_mut().filter(|(_, c)| c.count > 0) {
            let mut top = std::mem::take(&mut c.top);
            top.sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
            out.push(Event::RefusedSummary {
                refused: key.refused,
                peer: key.peer,
                route: key.route,
                reason: key.reason,
                host: key.host.clone(),
                count: c.count,
                first_ms: c.first,
                last_ms: c.last,
                top_peers: top,
            });
            c.count = 0;
            c.first = c.last;
        }
        out
    }

    /// How long until the next window closes, if one is open.
    fn next_close(&self, now: u64) -> Option<std::time::Duration> {
        let &(opened, _) = self.closing.front()?;
        let at = opened.saturating_add(REFUSAL_WINDOW_MS);
        Some(std::time::Duration::from_millis(at.saturating_sub(now)))
    }
}

/// The writer thread: appends queued notes, a batch of whole lines per `write(2)` (so lines of
/// instances sharing the file still never interleave), until the [`Audit`] is dropped.
/// Refusals go through [`Refusals`]; the summaries of windows that closed join the next batch.
fn write_notes(file: &File, path: &Path, queue: &std::sync::mpsc::Receiver<Note>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut batch = Vec::with_capacity(NOTE_BATCH);
    let mut synced = Vec::new();
    let mut durable = Vec::new();
    let mut closed = Vec::new();
    let mut refusals = Refusals::default();
    // After a failed or short write the file may end inside a line: start the next batch on a
    // line of its own, so that only the torn line is lost, never a later record.
    let mut torn = false;
    // Set by [`Audit::stopping`]: every batch writes the counts of every window.
    let mut stopping = false;
    loop {
        // Wait for a note, or until the next refusal window closes.
        let mut next = match refusals.next_close(crate::serve::util::now_ms()) {
            None => match queue.recv() {
                Ok(note) => Some(note),
                Err(_) => break, // every Audit handle is gone
            },
            Some(wait) => match queue.recv_timeout(wait) {
                Ok(note) => Some(note),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut close_all = false;
        while let Some(note) = next.take() {
            match note {
                Note::Line(bytes) => batch.extend_from_slice(&bytes),
                Note::Refusal(event, at) => {
                    let key = event.refusal().expect("only refusals are sent as such");
                    if refusals.take(key, at) {
                        batch.extend_from_slice(&line_at(&event, at));
                    }
                }
                Note::Durable(bytes, done) => {
                    batch.extend_from_slice(&bytes);
                    durable.push(done);
                }
                Note::Sync(done) => synced.push(done),
                Note::CloseWindows(done, stop) => {
                    close_all = true;
                    stopping |= stop;
                    closed.push(done);
                }
            }
            if batch.len() < NOTE_BATCH && !close_all {
                next = queue.try_recv().ok();
            }
        }
        for summary in refusals.close(crate::serve::util::now_ms(), close_all) {
            batch.extend_from_slice(&line(&summary));
        }
        if stopping {
            for summary in refusals.flush() {
                batch.extend_from_slice(&line(&summary));
            }
        }
        if batch.is_empty() {
            for done in synced.drain(..).chain(closed.drain(..)) {
                let _ = done.send(());
            }
            continue;
        }
        if torn {
            batch.insert(0, b'\n');
        }
        // One write of whole lines: O_APPEND makes it land at the end in one piece. Records
        // that changes wait for are synced together (a group commit).
        let mut result = match (&*file).write(&batch) {
            Ok(n) if n == batch.len() => Ok(()),
            Ok(n) => {
                Err(std::io::Error::other(format!("short append ({n} of {} bytes)", batch.len())))
            }
            Err(e) => Err(e),
        };
        if result.is_ok() && !durable.is_empty() {
            result = file.sync_data();
        }
        torn = result.is_err();
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e, "cannot append to the audit log");
        }
        batch.clear();
        for done in durable.drain(..) {
            let _ = done.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
            );
        }
        for done in synced.drain(..).chain(closed.drain(..)) {
            let _ = done.send(());
        }
    }
    // The last handle is gone (the Audit was dropped, which waits for this): write what is
    // still counted. This is the exit path that makes an orderly stop lose no count.
    let mut rest = Vec::new();
    for summary in refusals.close(0, true) {
        rest.extend_from_slice(&line(&summary));
    }
    if !rest.is_empty() {
        let _ = (&*file).write_all(&rest);
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
    use crate::serve::domain::actor::{Actor, Via};
    use crate::serve::domain::event::{refusal_peer, LOGIN_FAILED, UNKNOWN_HOST};

    #[test]
    fn append_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let b = Audit::open(dir.path()).unwrap();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..5 {
            let host = format!("h{i}");
            a.note(&Event::Reload {
                who: Actor { by: host.clone(), role: Role::Admin, via: Via::Token },
                peer,
                ok: true,
            });
            a.sync();
            b.append_durable(&Event::Done { host, install: "x".into(), peer }).unwrap();
        }
        let (all, end) = a.read_since(0, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[1]["event"], "done");
        let (page, next) = a.read_since(0, 3, usize::MAX).unwrap();
        assert_eq!(page.len(), 3);
        let (rest, end2) = a.read_since(next, 100, usize::MAX).unwrap();
        assert_eq!(rest.len(), 7);
        assert_eq!(end, end2);
        // A cursor in the middle of a line starts at the next line.
        let (mid, _) = a.read_since(next + 2, 100, usize::MAX).unwrap();
        assert_eq!(mid.len(), 6);
        assert!(a.read_since(end + 50, 10, usize::MAX).unwrap().0.is_empty());
        // A byte budget ends the page early, but never before the first record.
        let (small, cut) = a.read_since(0, 100, 1).unwrap();
        assert_eq!(small.len(), 1);
        assert_eq!(a.read_since(cut, 100, usize::MAX).unwrap().0.len(), 9);
    }

    fn denied(peer: IpAddr, reason: &'static str) -> Event {
        Event::Denied { route: "/hosts", peer, status: 401, reason }
    }

    #[test]
    fn refusals_are_written_once_per_window_and_counted() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let key = denied(p, "missing-token").refusal().unwrap();
        let other = denied(p, "unknown-token").refusal().unwrap();
        assert!(r.take(key.clone(), 1000), "the first is written");
        assert!(!r.take(key.clone(), 1001) && !r.take(key.clone(), 1500));
        assert!(r.take(other, 1600), "another reason is another key");
        assert!(r.close(1000 + REFUSAL_WINDOW_MS - 1, false).is_empty(), "still open");
        let closed = r.close(1000 + REFUSAL_WINDOW_MS, false);
        match closed.as_slice() {
            [Event::RefusedSummary { count: 2, first_ms: 1000, last_ms: 1500, peer, .. }] => {
                assert_eq!(*peer, Some(p))
            }
            other => panic!("{other:?}"),
        }
        // `other` counted nothing beyond its first: no summary when it closes.
        assert!(r.close(u64::MAX, true).is_empty());
        assert!(r.take(key, 2 * REFUSAL_WINDOW_MS), "a new window writes its first again");
        // Records that are not refusals are never aggregated.
        let boot_ok = Event::Done { host: "h".into(), install: "x".into(), peer: p };
        assert!(boot_ok.refusal().is_none());
    }

    #[test]
    fn refusals_of_more_peers_than_tracked_fold_into_one_count_per_reason() {
        let mut r = Refusals::default();
        let mut written = 0;
        for i in 0..(MAX_REFUSAL_KEYS as u32 + 1000) {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..3 {
                written += u64::from(r.take(denied(peer, "missing-token").refusal().unwrap(), 5));
            }
        }
        assert_eq!(written, MAX_REFUSAL_KEYS as u64, "beyond the tracked peers, none in full");
        let closed = r.close(0, true);
        let overflow: Vec<_> = closed
            .iter()
            .filter_map(|e| match e {
                Event::RefusedSummary { peer: None, count, .. } => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(overflow, vec![3000]);
        let top = closed.iter().find_map(|e| match e {
            Event::RefusedSummary { peer: None, top_peers, .. } => Some(top_peers.clone()),
            _ => None,
        });
        assert_eq!(top.unwrap().len(), TOP_PEERS, "the overflow names its top peers, bounded");
        let counted: u64 = closed
            .iter()
            .map(|e| match e {
                Event::RefusedSummary { count, .. } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(written + counted, 3 * (MAX_REFUSAL_KEYS as u64 + 1000), "nothing is lost");
    }

    /// Refusals from every address of one /64, over every route and reason a client can pick.
    fn flood_from_one_prefix(r: &mut Refusals, n: u32) -> u64 {
        let routes = ["/hosts", "/session", "/events", "/inventory", "/bmc", "/metrics"];
        let reasons = ["missing-token", "unknown-token", "bad-csrf", "forbidden", "expired"];
        let mut written = 0;
        for i in 0..n {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            let route = routes[i as usize % routes.len()];
            let reason = reasons[(i as usize / routes.len()) % reasons.len()];
            let e = Event::Denied { route, peer: ip, status: 401, reason };
            written += u64::from(r.take(e.refusal().unwrap(), 5));
        }
        written
    }

    #[test]
    fn a_flood_from_one_prefix_leaves_other_peers_named() {
        let mut r = Refusals::default();
        let written = flood_from_one_prefix(&mut r, 50_000);
        assert_eq!(written, MAX_KEYS_PER_PEER as u64, "one /64 is one peer, capped in keys");
        // Another peer's refusals are still written in full and summarised under its address.
        let other: IpAddr = "198.51.100.4".parse().unwrap();
        let spray =
            Event::LoginFailed { name: None, via: Via::Token, peer: other, reason: "bad-password" };
        assert!(r.take(spray.refusal().unwrap(), 6), "written in full, not peerless");
        assert!(!r.take(spray.refusal().unwrap(), 7));
        let closed = r.close(0, true);
        let peer_of = |e: &Event| match e {
            Event::RefusedSummary { peer, route, count, .. } => (*peer, route.is_none(), *count),
            _ => unreachable!(),
        };
        let prefix: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert!(closed.iter().all(|e| peer_of(e).0.is_some()), "nothing peerless: {closed:?}");
        let named = closed.iter().any(|e| {
            matches!(e, Event::RefusedSummary {
                refused: "login-failed", peer: Some(p), route: Some("/session"), count: 1, ..
            } if *p == other)
        });
        assert!(named, "{closed:?}");
        // The flood past its keys is counted under the /64 and its kind.
        let wide: Vec<_> = closed.iter().map(peer_of).filter(|p| p.1).collect();
        assert_eq!(wide.len(), 1);
        assert_eq!(wide[0].0, Some(prefix));
        let counted: u64 = closed.iter().map(|e| peer_of(e).2).sum();
        assert_eq!(
            written + 1 + counted,
            50_000 + 2,
            "nothing is lost (the spray's first was written)"
        );
        // The table stays bounded: far fewer keys than the flood's addresses.
        assert!(r.open.is_empty() && r.per_peer.is_empty() && r.closing.is_empty());
    }

    #[test]
    fn the_table_stays_bounded_whatever_peers_send() {
        let mut r = Refusals::default();
        for p in 0..2000u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + p));
            for reason in ["missing-token", "unknown-token", "bad-csrf", "forbidden", "expired"] {
                for route in ["/hosts", "/session", "/events"] {
                    r.take(
                        Event::Denied { route, peer, status: 401, reason }.refusal().unwrap(),
                        5,
                    );
                }
            }
        }
        // Full keys plus the fixed set of peerless ones (here 15 route/reason pairs).
        assert!(r.open.len() <= MAX_REFUSAL_KEYS + 15, "{}", r.open.len());
        assert_eq!(r.open.len(), r.closing.len());
        assert!(r.per_peer.len() <= MAX_REFUSAL_KEYS);
        assert!(r.open.values().all(|c| c.top.len() <= TOP_PEERS));
    }

    /// A peer that used up its keys of one kind still has the first refusal of every other kind
    /// written in full (an operator reading the log sees each kind of thing it tried).
    #[test]
    fn a_peers_cap_is_per_kind() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.3".parse().unwrap();
        let reasons = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];
        let written = reasons
            .iter()
            .filter(|&&reason| {
                let e = Event::MediaDenied { host: None, format: "iso", reason, peer: p };
                r.take(e.refusal().unwrap(), 1)
            })
            .count();
        assert_eq!(written, MAX_KEYS_PER_PEER, "one kind is capped");
        assert!(r.take(denied(p, "missing-token").refusal().unwrap(), 2), "another kind is not");
    }

    #[test]
    fn probes_of_two_hosts_from_one_peer_are_both_named() {
        let mut r = Refusals::default();
        let p: IpAddr = "10.0.0.3".parse().unwrap();
        let media = |host: &str| Event::MediaDenied {
            host: Some(host.into()),
            format: "iso",
            reason: "bad-signature",
            peer: p,
        };
        assert!(r.take(media("web-01").refusal().unwrap(), 1));
        assert!(r.take(media("db-01").refusal().unwrap(), 2), "another host: written in full");
        assert!(!r.take(media("db-01").refusal().unwrap(), 3));
        let token = |host: &str| Event::NodeTokenDenied {
            host: Some(host.into()),
            route: "/hosts/{host}/done",
            peer: p,
        };
        assert!(r.take(token("web-01").refusal().unwrap(), 4));
        assert!(r.take(token("db-01").refusal().unwrap(), 5));
        // Names not in the inventory are not keys: one client cannot open a key per name.
        let boot = |host: &str| Event::Boot {
            host: Some(host.into()),
            verified: false,
            answer: "local",
            kind: UNKNOWN_HOST,
            reason: "not in the inventory",
            install: None,
            peer: p,
            ip: None,
            mac: None,
            medium: "iso",
            platform: "efi",
        };
        assert!(r.take(boot("made-up-1").refusal().unwrap(), 6));
        assert!(!r.take(boot("made-up-2").refusal().unwrap(), 7), "the same key");
        let summaries: Vec<_> = r
            .close(0, true)
            .into_iter()
            .filter(|e| matches!(e, Event::RefusedSummary { refused: "media-denied", .. }))
            .collect();
        match summaries.as_slice() {
            [Event::RefusedSummary { host: Some(h), count: 1, .. }] => assert_eq!(h, "db-01"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusal_peers_are_ipv4_or_an_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(refusal_peer(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(refusal_peer(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(refusal_peer(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn refusals_after_the_stop_and_at_drop_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let p: IpAddr = "10.0.0.8".parse().unwrap();
        a.stopping();
        // A request that outlives the stop: its refusals are on disk once its batch is.
        for _ in 0..3 {
            a.note(&denied(p, "missing-token"));
        }
        a.sync();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let counted: Vec<_> = records.iter().filter(|r| r["event"] == "refused-summary").collect();
        assert_eq!(records.len(), 1 + counted.len(), "{records:?}");
        assert_eq!(counted.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), 2);
        // Without a stop, dropping the Audit writes what is counted before drop returns.
        let b = Audit::open(dir.path()).unwrap();
        for _ in 0..3 {
            b.note(&denied(p, "unknown-token"));
        }
        drop(b);
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(text.contains(r#""reason":"unknown-token","count":2"#), "{text}");
    }

    #[test]
    fn the_writer_aggregates_refusals_and_writes_the_rest_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let p: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..5000 {
            a.note(&denied(p, "missing-token"));
            a.note(&Event::MediaDenied { host: None, format: "iso", reason: "unsigned", peer: p });
        }
        a.note(&Event::Done { host: "h".into(), install: "x".into(), peer: p });
        a.sync();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        assert_eq!(records.len(), 3, "one of each refusal, and the other record: {records:?}");
        a.close_windows();
        let (records, _) = a.read_since(0, 100, usize::MAX).unwrap();
        let summaries: Vec<_> =
            records.iter().filter(|r| r["event"] == "refused-summary").collect();
        assert_eq!(summaries.len(), 2, "{records:?}");
        for s in summaries {
            assert_eq!(s["count"], 4999, "{s}");
            assert_eq!(s["peer"], "10.0.0.7");
        }
    }

    /// `n` lines of `filler` records, then return the path (written as the service writes).
    fn big_log(dir: &Path, n: usize) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let mut text = String::new();
        for i in 0..n {
            let e = Event::Done {
                host: format!("filler-{i}"),
                install: "x".into(),
                peer: [10, 0, 0, 1].into(),
            };
            text.push_str(&String::from_utf8(line(&e)).unwrap());
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn pages_read_at_most_the_budget_and_cursors_find_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = big_log(dir.path(), 80_000);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 2 * MAX_SCAN_BYTES as u64, "{len}");
        let a = Audit::open(dir.path()).unwrap();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        a.note(&Event::Done { host: "far".into(), install: "y".into(), peer });
        a.sync();
        let filter = crate::serve::domain::query::EventFilter::parse(|n| {
            (n == "host").then(|| "far".into())
        });
        let first = a.read_page(0, 10, MAX_PAGE_BYTES, &filter, Role::Read).unwrap();
        assert!(first.events.is_empty());
        assert_eq!(first.at_end, Some(false));
        assert!(first.scanned <= MAX_SCAN_BYTES as u64 && first.scanned > 0);
        assert_eq!(first.next, first.scanned);
        let (mut since, mut found, mut pages) = (first.next, Vec::new(), 1);
        loop {
            let page = a.read_page(since, 10, MAX_PAGE_BYTES, &filter, Role::Read).unwrap();
            pages += 1;
            found.extend(page.events);
            since = page.next;
            if page.at_end == Some(true) {
                break;
            }
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["host"], "far");
        assert!(pages >= 3, "{pages}");

        // Newest first: the record at the end comes at once; paging back to the start walks
        // the whole log through `before` cursors, each page within the budget.
        let filler0 = crate::serve::domain::query::EventFilter::parse(|n| {
            (n == "host").then(|| "filler-0".into())
        });
        let (mut before, mut found) = (None, Vec::new());
        for _ in 0..100 {
            let page = a.read_newest(10, before, &filler0, Role::Read).unwrap();
            assert!(page.scanned <= MAX_SCAN_BYTES as u64 + 1024);
            found.extend(page.events);
            match page.before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        assert_eq!(found.len(), 1, "filler-0, the first record, reached by cursors");
        assert_eq!(found[0]["offset"], 0);
    }

    #[test]
    fn refused_login_names_are_for_admin_only() {
        let e = Event::LoginFailed {
            name: Some("hunter2".into()),
            via: Via::LdapSession,
            peer: "10.0.0.1".parse().unwrap(),
            reason: "bad password",
        };
        let v: Value = serde_json::from_slice(&line(&e)).unwrap();
        assert_eq!(v["event"], LOGIN_FAILED, "the tag visible_to looks for");
        for (role, shown) in [(Role::Read, false), (Role::Reimage, false), (Role::Admin, true)] {
            let mut r = v.clone();
            visible_to(role, &mut r);
            assert_eq!(r.get("name").is_some(), shown, "{role:?}");
        }
    }
}
