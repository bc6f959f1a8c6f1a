//! The Redfish client the service holds for `/hosts/{host}/media`: credentials, TLS roots, and
//! slots that bound how many BMC operations run at once (see [`crate::serve::api::bmc`]).

use crate::media::Format;
use crate::redfish::{self, CredentialsFile, Progress};
use crate::serve::domain::actor::Role;
use crate::serve::web::reply::HttpError;
use std::path::PathBuf;
use std::sync::Arc;

/// How long a URL handed to a BMC lives when the request does not say: BMCs read attached media
/// at every boot, so it must outlive the attachment. `attach` again to renew it.
pub const ATTACH_TTL_SECS: u64 = 90 * 24 * 3600;

/// BMC operations running at once, at most; more wait their turn, up to [`SLOT_WAIT`].
const BMC_SLOTS: usize = 64;
/// Slots only attach and detach may use: status reads (role `read`) hold at most
/// `BMC_SLOTS - WRITER_SLOTS`, so however many reads a caller keeps open against slow BMCs, an
/// operator's attach still finds a slot.
const WRITER_SLOTS: usize = 16;
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the caller keeps waiting after the deadline for the operation's own answer. Every
/// request of the operation is cut at the deadline, so it normally ends within it; this covers
/// what no timeout bounds (a name lookup). After it, the caller is answered from the step the
/// operation reached, and the thread finishes on its own, starting no further request.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// The default of `serve --bmc-deadline`: the longest a whole attach, detach or status read may
/// take, slot wait included. A healthy BMC needs seconds (an insert with a task monitor, a
/// minute at worst); one that takes longer is stuck, and its operator should hear so rather
/// than watch a request that never ends.
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Which slots an operation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A status read: only the shared slots, never the [`WRITER_SLOTS`].
    Read,
    /// Attach or detach: any slot.
    Write,
}

/// What the service needs for Redfish: one client for every BMC, and the credentials file.
pub struct Bmc {
    client: redfish::Client,
    pub(crate) credentials: PathBuf,
    /// Bounds the threads BMC operations run on (see [`Bmc::run`]).
    slots: Arc<tokio::sync::Semaphore>,
    /// The share of `slots` reads may hold: a read takes one of these first.
    read_slots: Arc<tokio::sync::Semaphore>,
    /// The deadline of each operation (`--bmc-deadline`).
    deadline: std::time::Duration,
    /// Hosts with an attach or detach under way: one at a time per host, so two operators (or
    /// a host named twice) never interleave eject, insert and reset on one machine.
    busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A host's claim on its BMC, released when dropped.
pub(crate) struct Claim {
    busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    host: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.host);
    }
}

impl Bmc {
    /// Loads the credentials file once (so a bad one fails the start, naming its lines) and
    /// builds the client. The file is read again for every request, so a password change or a
    /// removed line takes effect without a restart.
    pub fn new(
        credentials: PathBuf,
        ca_file: Option<PathBuf>,
        deadline: std::time::Duration,
    ) -> anyhow::Result<Bmc> {
        let file = CredentialsFile::load(&credentials).map_err(|e| anyhow::anyhow!("{e}"))?;
        if file.has_catch_all() {
            tracing::warn!(
                file = %credentials.display(),
                "the `*` line sends its password to any BMC the inventory names, and whoever \
                 edits the inventory chooses those; a network (10.1.0.0/16) or domain \
                 (*.bmc.example) line keeps it inside the management network"
            );
        }
        let client =
            redfish::Client::new(redfish::ClientOptions { ca_file, ..Default::default() })?;
        Ok(Bmc {
            client,
            credentials,
            slots: Arc::new(tokio::sync::Semaphore::new(BMC_SLOTS)),
            read_slots: Arc::new(tokio::sync::Semaphore::new(BMC_SLOTS - WRITER_SLOTS)),
            deadline,
            busy: Arc::default(),
        })
    }

    /// Claims `host` for one attach or detach; 409 while another runs.
    pub(crate) fn claim(&self, host: &str) -> Result<Claim, HttpError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(host.to_string()) {
            return Err(HttpError::new(
                409,
                format!(
                    "an attach, detach or power action on {host} is already running; wait for it"
                ),
            ));
        }
        Ok(Claim { busy: self.busy.clone(), host: host.to_string() })
    }

    /// Runs a Redfish operation on a thread of its own, never on the service's blocking pool,
    /// within the deadline (`--bmc-deadline`), which counts from the call: slot wait included.
    ///
    /// A BMC can take a minute, and while it works it downloads the node's image from this very
    /// service, whose `/media/` handler needs the blocking pool: were the operations on that
    /// pool, enough parallel attaches would hold every one of its threads waiting for BMCs that
    /// wait for us. So each operation gets its own thread, and [`BMC_SLOTS`] bounds how many;
    /// reads ([`Use::Read`]) may hold all but [`WRITER_SLOTS`] of them.
    ///
    /// `hold` lives as long as the thread (a host's [`Claim`]): a caller answered at the
    /// deadline does not free the host while the BMC may still be working on it.
    pub(crate) async fn run<T: Send + 'static, H: Send + 'static>(
        &self,
        kind: Use,
        bmc_url: &redfish::BmcUrl,
        hold: H,
        work: impl FnOnce(&redfish::Client, &Progress) -> Result<T, redfish::RedfishError>
            + Send
            + 'static,
    ) -> Result<Result<T, redfish::RedfishError>, HttpError> {
        self.run_within(kind, bmc_url, hold, self.deadline, DEADLINE_GRACE, work).await
    }

    /// [`Bmc::run`] with a deadline of its own (`--bmc-state-timeout` for hardware reads) and
    /// the time the caller keeps waiting after it (`grace`).
    pub(crate) async fn run_within<T: Send + 'static, H: Send + 'static>(
        &self,
        kind: Use,
        bmc_url: &redfish::BmcUrl,
        hold: H,
        deadline: std::time::Duration,
        grace: std::time::Duration,
        work: impl FnOnce(&redfish::Client, &Progress) -> Result<T, redfish::RedfishError>
            + Send
            + 'static,
    ) -> Result<Result<T, redfish::RedfishError>, HttpError> {
        let progress = Arc::new(Progress::within(deadline));
        let busy = || {
            HttpError::new(503, "every BMC slot is busy; try again shortly")
                .header("Retry-After", "5".into())
        };
        let wait = SLOT_WAIT.min(deadline);
        let started = tokio::time::Instant::now();
        let read_slot = match kind {
            Use::Read => Some(
                tokio::time::timeout(wait, self.read_slots.clone().acquire_owned())
                    .await
                    .map_err(|_| busy())?
                    .map_err(|_| busy())?,
            ),
            Use::Write => None,
        };
        let slot = tokio::time::timeout(
            wait.saturating_sub(started.elapsed()),
            self.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
        let client = self.client.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = progress.clone();
        std::thread::Builder::new()
            .name("bmc".into())
            .spawn(move || {
                // The slots and the claim live as long as the thread, whether or not anyone
                // still waits for the answer: a caller that hangs up (or is answered at the
                // deadline) does not free a slot or a host a BMC still holds.
                let _held = (slot, read_slot, hold);
                let result = work(&client, &shared);
                match tx.send(result) {
                    Ok(()) => {}
                    Err(Ok(_)) => tracing::warn!(
                        "a BMC operation succeeded after its caller had been answered"
                    ),
                    Err(Err(e)) => tracing::warn!(
                        "a BMC operation failed after its caller had been answered: {}",
                        scrub(&e.to_string())
                    ),
                }
            })
            .map_err(|e| HttpError::internal(format!("cannot start a BMC thread: {e}")))?;
        let limit = deadline.saturating_sub(started.elapsed()) + grace;
        match tokio::time::timeout(limit, rx).await {
            Ok(answer) => answer.map_err(|_| HttpError::internal("a BMC operation panicked")),
            // The thread has not ended: answer from the step it reached.
            Err(_) => Ok(Err(redfish::RedfishError::Deadline {
                url: bmc_url.to_string(),
                step: progress.step(),
                limit: deadline,
            })),
        }
    }
}

/// The role that may mint media URLs (`POST /hosts/{h}/media-url`, attach), and so the least
/// role that may see one a BMC holds. One fact, used by the handlers that mint and by
/// [`shown`]: a role below it never receives a signed URL, in any encoding.
pub const MINTS_MEDIA_URLS: Role = Role::Reimage;

/// An image URL a BMC reports, as a caller of `role` may see it.
///
/// # Threat
///
/// The image behind one of our media URLs holds the node's token, so a signed URL is as good as
/// the token; a `read` caller must never receive one. What the BMC reports is not what we gave
/// it: BMCs hand the URL back percent-encoded (`%3F` for `?`, once or twice), HTML-escaped
/// (`&amp;`), in mixed case, or in forms nobody has seen yet. So nothing is decided by looking
/// for a literal `?`: the text is decoded to a fixed point first ([`decoded`]), and anything that
/// looks like ours, or like a signed or secret-bearing URL at all, in the raw *or* the decoded
/// text, is replaced by a description built only from checked pieces (host name, format,
/// expiry). The raw string reaches roles below [`MINTS_MEDIA_URLS`] only when it is a plain
/// foreign URL with nothing suspicious in it; the roles that mint also see our own URLs as
/// reported, but a foreign URL only under the same rule. When in doubt, hidden.
pub(crate) fn shown(image: &str, role: Role) -> String {
    // Roles that mint our URLs may see ours; a foreign signed URL (someone's pre-signed
    // download) is nobody's to read here.
    if role >= MINTS_MEDIA_URLS && decoded(image).is_some_and(|d| is_ours(&d)) {
        return image.to_string();
    }
    describe(image)
}

/// The description of an image URL that any role may see (see [`shown`]): never the URL itself
/// when it might be signed.
pub(crate) fn describe(image: &str) -> String {
    let decoded = decoded(image);
    match decoded.as_deref() {
        Some(text) if !suspicious(image) && !suspicious(text) => image.to_string(),
        Some(text) if is_ours(text) => match medium(text) {
            Some((host, format)) => format!("(hidden) a bootforge {format} medium of {host}"),
            None => "(hidden) a bootforge medium".to_string(),
        },
        _ => "(hidden) an image URL that may be signed".to_string(),
    }
}

/// Whether decoded text names one of our media: a `/media/` path.
fn is_ours(decoded: &str) -> bool {
    decoded.to_ascii_lowercase().contains("/media/")
}

/// Whether text might carry a signature or a secret, or be one of ours: a query or fragment of
/// any kind, a `/media/` path, a signature or expiry parameter, user information, or a long
/// run of hex digits (our signatures and node tokens are 64).
fn suspicious(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let after_scheme = lower.split_once("://").map_or(lower.as_str(), |(_, rest)| rest);
    lower.contains('?')
        || lower.contains('#')
        || lower.contains('%')
        || lower.contains('&')
        || lower.contains('\\')
        || after_scheme.contains('@')
        || ["media", "sig", "exp=", "token"].iter().any(|w| lower.contains(w))
        || longest_hex_run(&lower) >= 32
}

fn longest_hex_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0)
}

/// `text` decoded repeatedly (percent-encoding, the HTML character references a BMC might use,
/// and `\uXXXX` escapes) until it stops changing; `None` when it still changes after a few
/// rounds (nobody encodes a URL eight times but someone hiding it).
///
/// Written here rather than with an HTML-entity crate: only the characters that can spell a
/// URL's delimiters matter, the decoding serves detection, never display, and what this
/// misses is caught by [`suspicious`] on the raw text (`&`, `%`, `\` there already hide it).
pub(crate) fn decoded(text: &str) -> Option<String> {
    let mut current = text.to_string();
    for _ in 0..8 {
        let next = percent_encoding::percent_decode_str(&current).decode_utf8_lossy().into_owned();
        let next = unescape_references(&next);
        if next == current {
            return Some(current);
        }
        current = next;
    }
    None
}

/// HTML character references (`&amp;`, `&quest;`, `&#63;`, `&#x3F;`, …) and `\uXXXX` escapes
/// decoded; anything else kept as it is.
fn unescape_references(text: &str) -> String {
    const NAMED: [(&str, char); 8] = [
        ("amp", '&'),
        ("quest", '?'),
        ("equals", '='),
        ("sol", '/'),
        ("num", '#'),
        ("percnt", '%'),
        ("colon", ':'),
        ("period", '.'),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['&', '\\']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let (decoded, used) = if let Some(after) = rest.strip_prefix('&') {
            let name = after.find(';').filter(|&e| e <= 11).map(|e| &after[..e]);
            let c = name.and_then(|n| {
                let lower = n.to_ascii_lowercase();
                if let Some(hex) = lower.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                } else if let Some(dec) = lower.strip_prefix('#') {
                    dec.parse().ok().and_then(char::from_u32)
                } else {
                    NAMED.iter().find(|(k, _)| *k == lower).map(|(_, c)| *c)
                }
            });
            match (c, name) {
                // `&`, the name, `;`.
                (Some(c), Some(n)) => (c, n.len() + 2),
                _ => ('&', 1),
            }
        } else {
            let c = rest
                .get(1..6)
                .filter(|u| u.starts_with(['u', 'U']))
                .and_then(|u| u32::from_str_radix(&u[1..], 16).ok())
                .and_then(char::from_u32);
            match c {
                Some(c) => (c, 6),
                None => ('\\', 1),
            }
        };
        out.push(decoded);
        rest = &rest[used..];
    }
    out.push_str(rest);
    out
}

/// The host and format of one of our media URLs, from its decoded text: the file name after
/// `/media/`, checked to be `HOST.iso`, `HOST.usb.img` or `HOST.efi.img` with a valid host name.
fn medium(decoded: &str) -> Option<(String, &'static str)> {
    let lower = decoded.to_ascii_lowercase();
    let at = lower.rfind("/media/")? + "/media/".len();
    let file = lower[at..].split(['?', '&', '#', ';', '/', ' ']).next()?;
    Format::ALL.iter().find_map(|&format| {
        let suffix = format.file_name("");
        let host = file.strip_suffix(suffix.as_str())?;
        let host = crate::inventory::parse_hostname(host).ok()?;
        Some((host, format.as_str()))
    })
}

/// A BMC's message made safe for any caller: BMC messages may echo the URL they were given, in
/// any encoding. The text is decoded to a fixed point first (as in [`describe`]), made safe
/// again (decoding can reveal control characters), and every run of 32 or more hex digits (a
/// URL signature, a node token; Redfish ids and UUIDs have shorter runs) is hidden. A message
/// that never stops decoding is not shown at all.
pub(crate) fn scrub(text: &str) -> String {
    let Some(plain) = decoded(text) else {
        return "(the BMC's message is hidden: it could not be decoded safely)".into();
    };
    let plain = redfish::untrusted(&plain, 2000);
    let mut out = String::with_capacity(plain.len());
    let mut run = String::new();
    for c in plain.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 32 {
            out.push_str("<redacted>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The `exp` of one of our media URLs, in whatever encoding the BMC reports it.
pub(crate) fn expiry(url: &str) -> Option<u64> {
    let text = decoded(url)?.to_ascii_lowercase();
    if !is_ours(&text) {
        return None;
    }
    let digits = text.split(['?', '&']).find_map(|p| p.strip_prefix("exp="))?;
    let digits: String = digits.chars().take_while(char::is_ascii_digit).take(12).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Our URL as BMCs report it back: literal, percent-encoded once or twice, in either case,
    /// HTML-escaped, `\u` escaped, mixed.
    fn encodings() -> Vec<String> {
        let q = format!("arch=x86_64&medium=cd&exp=1800000000&sig={SIG}");
        let base = "http://10.1.0.5:8080/media/node01.iso";
        let pct = |t: &str, upper: bool| {
            let e = percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
            if upper {
                e
            } else {
                e.to_lowercase()
            }
        };
        vec![
            format!("{base}?{q}"),
            format!("{base}%3F{}", q.replace('&', "%26").replace('=', "%3D")),
            format!("{base}%3f{}", q.replace('&', "%26").replace('=', "%3d")),
            format!("{base}%253F{}", q.replace('&', "%2526").replace('=', "%253D")),
            format!("{base}?{}", q.replace('&', "&amp;")),
            format!("{base}&#x3F;{}", q.replace('&', "&#38;")),
            format!("{base}\\u003F{q}"),
            pct(&format!("{base}?{q}"), true),
            pct(&pct(&format!("{base}?{q}"), false), true),
            format!("HTTP://10.1.0.5:8080/MEDIA/node01.iso%3F{}", q.to_uppercase()),
        ]
    }

    #[test]
    fn signed_urls_are_hidden_in_every_encoding() {
        for url in encodings() {
            let out = shown(&url, Role::Read);
            assert_eq!(out, "(hidden) a bootforge iso medium of node01", "{url}");
            assert_eq!(expiry(&url), Some(1_800_000_000), "{url}");
            // The roles that mint URLs see what the BMC reports.
            assert_eq!(shown(&url, Role::Reimage), url);
            assert_eq!(shown(&url, Role::Admin), url);
        }
        // A foreign image without anything secret-shaped is shown; anything else is hidden.
        assert_eq!(describe("http://files.lab/rocky-9.iso"), "http://files.lab/rocky-9.iso");
        assert!(
            shown("http://files.lab/r.iso?X-Amz-Signature=1", Role::Admin).starts_with("(hidden)")
        );
        for hidden in [
            "http://files.lab/rocky.iso?token=abc",
            "http://user:pw@files.lab/rocky.iso",
            &format!("http://files.lab/{SIG}.iso"),
            "http://files.lab/x.iso%253Fa",
            &format!("http://a/%{}", "25".repeat(20)),
        ] {
            assert!(describe(hidden).starts_with("(hidden)"), "{hidden}");
        }
        assert_eq!(describe("http://s/media/x;y.iso?sig=1"), "(hidden) a bootforge medium");
        assert_eq!(expiry("http://other/x.iso?exp=5"), None);
    }

    #[test]
    fn failures_are_scrubbed() {
        let sig = "a1".repeat(32);
        assert_eq!(scrub(&format!("bad image {sig}: no")), "bad image <redacted>: no");
        assert_eq!(scrub(&format!("%3Dsig%3D{}", sig.to_uppercase())), "=sig=<redacted>");
        // Every character encoded, twice: still found.
        let each: String = sig.bytes().map(|b| format!("%25{b:02X}")).collect();
        assert_eq!(scrub(&format!("bad image ?sig={each} x")), "bad image ?sig=<redacted> x");
        assert_eq!(scrub("HTTP 400: abc 12"), "HTTP 400: abc 12");
    }
}
