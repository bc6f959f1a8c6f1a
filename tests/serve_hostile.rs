//! Hostile clients against `bootforge serve`, over raw TCP so that any bytes reach the server.
//!
//! What this file proves: a few hundred random malformed requests (odd methods, paths, escapes,
//! headers, framing) never get a 5xx, never echo request text, and change no state without an
//! API token; methods are case-sensitive and `HEAD` ends nothing; no request text reaches a
//! served script or config and no token reaches the audit log or `/events`; slow senders, idle
//! keep-alive connections, a flood from one address and a client that stops reading hold only
//! their own connection and are cut after their limit; oversized bodies get 413. Over TLS: a
//! stalled or trickled handshake holds its slot only until the header timeout, bytes that are
//! not TLS are refused at once and never answered in clear, and the per-peer cap, slow senders
//! and oversized headers are handled as on the plain listener (the two share one cap).

#[path = "serve_support/mod.rs"]
mod support;

use bootforge::serve::web::limits::Limits;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const MAC1: &str = "aa:bb:cc:dd:ee:01";
const MAC2: &str = "aa:bb:cc:dd:ee:02";
/// How long one read may wait before the test calls the server hung.
const HUNG: Duration = Duration::from_secs(10);
/// "Promptly", for a request that normally takes milliseconds.
const PROMPT: Duration = Duration::from_secs(1);
const LOCAL: &str = "#!ipxe\necho bootforge: local boot:";

fn node_token(host: &str) -> String {
    bootforge::token::Secret::new(SECRET.to_vec()).unwrap().node_token(host)
}

/// The plain listener's `ADDR:PORT` (a TLS fixture has one beside its TLS listener).
fn addr(f: &Fixture) -> String {
    f.plain_base.as_deref().unwrap_or(&f.base).trim_start_matches("http://").to_string()
}

/// The TLS listener's `ADDR:PORT`.
fn tls_addr(f: &Fixture) -> String {
    f.base.strip_prefix("https://").expect("a fixture over TLS").to_string()
}

fn limits(header_ms: u64, body_ms: u64, send_ms: u64, per_peer: usize) -> Limits {
    Limits {
        max_connections: 4096,
        max_connections_per_peer: per_peer,
        header_timeout: Duration::from_millis(header_ms),
        body_timeout: Duration::from_millis(body_ms),
        send_timeout: Duration::from_millis(send_ms),
    }
}

/// A server like `support::start(true)` (node tokens on, assets served) with the given limits.
fn start_limited(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.limits = limits;
    start_with(dir, config)
}

fn flag(f: &Fixture, host: &str) -> String {
    let url = f.url(&format!("/hosts/{host}/reimage"));
    let r = call("PUT", &url, Some(REIMAGE_TOKEN), Some(r#"{"profile":"e2e"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["flag"]["install"]["id"].as_str().unwrap().to_string()
}

fn hosts(f: &Fixture) -> serde_json::Value {
    let r = call("GET", &f.url("/hosts"), Some(READ_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn host(f: &Fixture, h: &str) -> serde_json::Value {
    call("GET", &f.url(&format!("/hosts/{h}")), Some(READ_TOKEN), None).json()
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = work();
    (out, t.elapsed())
}

/// Percent-encodes every byte but the unreserved ones.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: any bytes out, one response in (by Content-Length), nothing assumed.

#[derive(Debug)]
struct RawResp {
    status: u16,
    /// Interim (1xx) statuses received before the final one.
    interim: Vec<u16>,
    head: String,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection to the service: plain TCP, or TLS over it (`tls`, after a completed
/// handshake), either way any bytes out.
struct Conn {
    s: TcpStream,
    tls: Option<rustls::ClientConnection>,
    buf: Vec<u8>,
}

impl Conn {
    fn open(f: &Fixture) -> Conn {
        let s = TcpStream::connect(addr(f)).expect("connect");
        s.set_read_timeout(Some(HUNG)).unwrap();
        s.set_write_timeout(Some(HUNG)).unwrap();
        Conn { s, tls: None, buf: Vec::new() }
    }

    /// A connection to the TLS listener, its handshake done (trusting the fixture's CA).
    fn open_tls(f: &Fixture) -> Conn {
        let mut c = Conn::open_tls_with(f, tls_client(f, None));
        c.handshake().expect("TLS handshake");
        c
    }

    /// A TLS connection with `config`, before its handshake.
    fn open_tls_with(f: &Fixture, config: std::sync::Arc<rustls::ClientConfig>) -> Conn {
        let s = TcpStream::connect(tls_addr(f)).expect("connect");
        s.set_read_timeout(Some(HUNG)).unwrap();
        s.set_write_timeout(Some(HUNG)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = rustls::ClientConnection::new(config, name).unwrap();
        Conn { s, tls: Some(tls), buf: Vec::new() }
    }

    fn handshake(&mut self) -> std::io::Result<()> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        while tls.is_handshaking() {
            tls.complete_io(&mut self.s)?;
        }
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.s).write_all(bytes),
            None => self.s.write_all(bytes),
        }
    }

    fn read(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.s).read(chunk),
            None => self.s.read(chunk),
        }
    }

    /// Whether the server still holds the connection open without having sent anything (over
    /// TLS: nothing but TLS's own records, such as session tickets).
    fn open_and_silent(&mut self) -> bool {
        if self.tls.is_none() {
            return open_and_silent(&self.s);
        }
        self.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let open = matches!(self.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
        self.s.set_nonblocking(false).unwrap();
        open
    }

    fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!(
                    "no answer within {HUNG:?} (server hung?); got {:?}",
                    lossy(&self.buf, 300)
                ))
            }
            Err(e) => Err(format!("read failed: {e}; got {:?}", lossy(&self.buf, 300))),
        }
    }

    /// Reads one response; `head_request` when the request was `HEAD` (no body follows).
    fn response(&mut self, head_request: bool) -> Result<RawResp, String> {
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                if self.fill()? == 0 {
                    return Err(format!(
                        "closed without an answer; got {:?}",
                        lossy(&self.buf, 300)
                    ));
                }
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            let status: u16 = head
                .strip_prefix("HTTP/1.")
                .and_then(|h| h.get(2..5))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let mut resp = RawResp { status, interim, head, body: Vec::new() };
            let announced = resp.header("content-length").map(|v| v.parse::<usize>());
            let want = match announced {
                _ if head_request || status == 204 || status == 304 => Some(0),
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => return Err(format!("bad Content-Length in {:?}", resp.head)),
                None => None,
            };
            match want {
                Some(n) => {
                    while self.buf.len() < n {
                        if self.fill()? == 0 {
                            return Err(format!("closed inside the body of {:?}", resp.head));
                        }
                    }
                    resp.body = self.buf.drain(..n).collect();
                }
                None => {
                    while self.fill()? > 0 {}
                    resp.body = std::mem::take(&mut self.buf);
                }
            }
            return Ok(resp);
        }
    }
}

/// One request on a fresh connection. A failed write is ignored: the server may answer (and
/// close) before it has read everything, and that answer is what is checked.
fn exchange(f: &Fixture, request: &[u8], head_request: bool) -> Result<RawResp, String> {
    let mut c = Conn::open(f);
    let _ = c.send(request);
    c.response(head_request)
}

fn get(f: &Fixture, target: &str, host: Option<&str>) -> RawResp {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let req = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    exchange(f, req.as_bytes(), false).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// Whether the server still holds `s` open without having sent anything.
fn open_and_silent(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Waits until the server closes `s` (EOF or reset), keeping what it sent before; `Err` if it
/// is still open at `deadline`.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return Ok(seen),
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("still open; received {:?}", lossy(&seen, 200)))
            }
            Err(_) => return Ok(seen), // reset: closed
        }
    }
}

fn healthz_ok(f: &Fixture) -> bool {
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    exchange(f, req, false).is_ok_and(|r| r.status == 200)
}

// ---------------------------------------------------------------------------------------------
// 1. Random hostile requests.

/// Real routes, the methods each answers (docs/API.md), and whether it needs an API token.
const ROUTES: &[(&str, &[&str], bool)] = &[
    ("/boot/node01", &["GET"], false),
    ("/boot/node02", &["GET"], false),
    ("/boot/node01/x", &["GET"], false),
    ("/hosts/node01/reimage", &["PUT", "DELETE"], true),
    ("/hosts/node02/reimage", &["PUT", "DELETE"], true),
    ("/hosts/node01/done", &["GET", "POST"], false),
    ("/hosts/node02/done", &["GET", "POST"], false),
    ("/hosts/node02/started", &["GET", "POST"], false),
    ("/hosts/node02/failed", &["GET", "POST"], false),
    ("/config/node01/install.cfg", &["GET"], false),
    ("/config/node02/~0123abcd/install.cfg", &["GET"], false),
    ("/config/node01/~0123abcd", &["GET"], false),
    ("/assets/rocky/vmlinuz", &["GET", "HEAD"], false),
    ("/assets/../../nodes.csv", &["GET", "HEAD"], false),
    ("/assets/rocky/%2e%2e/%2e%2e/secret", &["GET", "HEAD"], false),
    ("/events", &["GET", "HEAD"], true),
    ("/admin/reload", &["POST"], true),
    ("/status", &["GET", "HEAD"], true),
    ("/hosts", &["GET", "HEAD"], true),
    ("/hosts/node02", &["GET", "HEAD"], true),
    ("/hosts/node01/hardware", &["GET"], true),
    ("/hosts/node02/power", &["POST"], true),
    ("/healthz", &["GET", "HEAD"], false),
    ("/metrics", &["GET", "HEAD"], false),
];

/// Methods: valid tokens (answered 405 where not allowed) and a few that are not tokens.
const METHODS: &[&str] = &[
    "GET", "GET", "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    "get", "put", "post", "head", "delete", "Get", "pUT", "GETT", "BREW", "M-SEARCH", "PROPFIND",
];
const BAD_METHODS: &[&str] = &["GE(T", "G\x7fT", "", "GET\x00", "GE\"T"];

const SEGMENTS: &[&str] = &[
    "..",
    ".",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "%00",
    "%ff",
    "%fe%ff",
    "%",
    "%zz",
    "%2",
    "~",
    "~zq",
    "",
    "node01",
    "node02",
    "NODE01",
    "n%6fde01",
    "reimage",
    "done",
    "zq${x}",
    "evil$%7Bzqx%7D",
    "%0Aecho%20zq",
    "%0d%0azq",
    "zq;b",
    "zq,b",
    "'zq'",
    "*",
    "\\",
    "%5C",
    "zq\u{e9}",
    "boot",
    "hosts",
    "config",
    "assets",
    "rocky",
    "vmlinuz",
    "~0123abcd",
];

const KEYS: &[&str] = &[
    "mac", "ip", "uuid", "serial", "platform", "arch", "medium", "token", "install", "limit",
    "since", "flagged", "profile", "zq", "", "mac[]", "%6dac",
];

const VALUES: &[&str] = &[
    MAC1,
    MAC2,
    "AA-BB-CC-DD-EE-02",
    "10.0.0.12",
    "999999",
    "-1",
    "0",
    "1",
    "true",
    "00000000000000000000000000000000",
    "${zqx}",
    "%24%7Bzqx%7D",
    "%00zq",
    "%ff%fezq",
    "+zq+",
    "%2Bzq",
    "zq%0Aecho%20pwned",
    "zq%0d%0akernel",
    "usb",
    "efi",
    "cd",
    "pcbios",
    "e2e",
    "zq",
    "%zq",
    "zq=zq",
    "",
];

/// Host header values.
const HOSTS: &[&str] = &[
    "localhost",
    "[::1]x ; zqshell ; #",
    "[::1]x';touch ZQPWNED;'",
    "",
    "zq.example:80",
    "${zqx}",
    "10.0.0.11",
    "[::1]:99999",
];

const EXTRA_HEADERS: &[&str] = &[
    "Authorization: Bearer zqnope",
    "Authorization: Bearer ",
    "Authorization: Bearer",
    "Authorization: Basic cm9vdDpyb290",
    "Authorization: Bearer read-token-012",
    "Authorization: Bearer read-token-01234",
    "Authorization: bearer zqnope",
    "Authorization: Bearer zq zq",
    "Range: bytes=0-0",
    "Range: bytes=99999999999-",
    "Range: bytes=-0",
    "Range: bytes=5-1",
    "Range: bytes=0-1,2-3",
    "Range: zq",
    "Expect: 100-continue",
    "Expect: zq",
    "Connection: close",
    "Connection: keep-alive, Upgrade",
    "Upgrade: h2c",
    "X-Forwarded-For: 10.0.0.11",
    "Forwarded: for=10.0.0.11;host=zq",
    "X-Forwarded-Host: zq.example",
    "Accept-Encoding: gzip",
    "Cookie: zq=1",
    "X-Zq: ${zqx}",
    "Content-Type: application/json",
];

/// Malformed header lines: each makes the request unparseable.
const BAD_HEADERS: &[&str] = &[
    "Bad Name: zq",
    "NoColon",
    "X-Fold: a\r\n zq",
    "X-Nul: a\x00zq",
    ": empty-name",
    "X-Ctl: \x01zq",
];

/// Framing that hyper must refuse or resolve (header lines, body). None of them leaves the
/// server waiting for bytes that never come.
const JUNK_FRAMING: &[(&str, &str)] = &[
    ("Content-Length: abc", "hello"),
    ("Content-Length: -1", ""),
    ("Content-Length: 1, 2", "ab"),
    ("Content-Length: 3\r\nContent-Length: 4", "abcd"),
    ("Content-Length: +5", "hello"),
    ("Content-Length: 0x10", "0123456789abcdef"),
    ("Content-Length: 99999999999999999999999", ""),
    ("Transfer-Encoding: gzip", "hello"),
    ("Transfer-Encoding: chunked, gzip", "hello"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 3", "3\r\nabc\r\n0\r\n\r\n"),
    (
        "Content-Length: 3\r\nTransfer-Encoding: chunked",
        "0\r\n\r\nPUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ),
    ("Content-Length: 0", "POST /admin/reload HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("Transfer-Encoding: chunked", "zz\r\nabc\r\n0\r\n\r\n"),
    ("Transfer-Encoding: chunked", "3;ext=1\r\nabc\r\n0\r\nX-Trailer: zq\r\n\r\n"),
    ("Transfer-Encoding: chunked", "ffffffffffffffffffff\r\n"),
    ("Transfer-Encoding: chunked", "3\r\nabcX\r\n0\r\n\r\n"),
    ("Transfer-Encoding: CHUNKED", "3\r\nabc\r\n0\r\n\r\n"),
    ("Content-Length: 5\r\nContent-Length: 5", "hello"),
    ("Transfer-Encoding: gzip, chunked", "3\r\nabc\r\n0\r\n\r\n"),
];

struct Hostile {
    bytes: Vec<u8>,
    method: String,
    /// The index in [`ROUTES`] when the path is that route's, unchanged.
    route: Option<usize>,
    /// Whether the request is well-formed HTTP/1.x (so its route and method decide the answer).
    clean: bool,
}

fn segment(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.2) {
        let n = rng.gen_range(1..12);
        let chars = b"abcdefghijklmnopqrstuvwxyz0123456789-.~%_";
        (0..n).map(|_| *chars.choose(rng).unwrap() as char).collect()
    } else {
        SEGMENTS.choose(rng).unwrap().to_string()
    }
}

fn mutate(rng: &mut StdRng, path: &str) -> String {
    let mut segs: Vec<String> = path.split('/').skip(1).map(str::to_string).collect();
    match rng.gen_range(0..9) {
        0 => segs.push(segment(rng)),
        1 => {
            let i = rng.gen_range(0..segs.len());
            segs[i] = segment(rng);
        }
        2 => {
            let i = rng.gen_range(0..=segs.len());
            segs.insert(i, segment(rng));
        }
        3 => return format!("{}{path}", ["/", "/.", "/%2e", "//"].choose(rng).unwrap()),
        4 => {
            // Percent-encode one character of the path (routes match undecoded segments).
            let i = rng.gen_range(1..path.len());
            return format!("{}%{:02x}{}", &path[..i], path.as_bytes()[i], &path[i + 1..]);
        }
        5 => segs = (0..rng.gen_range(1..6)).map(|_| segment(rng)).collect(),
        6 => {
            let forms = ["http://zq.example/boot/node01", "*", "", "zq", "http://[::1]/healthz"];
            return forms.choose(rng).unwrap().to_string();
        }
        7 => segs.push("zq".repeat(rng.gen_range(500..35_000))),
        _ => segs.push(format!("{}zq", "%2e%2e%2f".repeat(rng.gen_range(1..20)))),
    }
    format!("/{}", segs.join("/"))
}

fn query(rng: &mut StdRng) -> String {
    let n = if rng.gen_bool(0.1) { rng.gen_range(30..60) } else { rng.gen_range(1..8) };
    let mut pairs = Vec::new();
    for _ in 0..n {
        let k = KEYS.choose(rng).unwrap();
        let v = match rng.gen_range(0..10) {
            0 => "zq".repeat(rng.gen_range(100..3000)),
            1 => enc(&"zq\n".repeat(rng.gen_range(1..50))),
            _ => VALUES.choose(rng).unwrap().to_string(),
        };
        pairs.push(match rng.gen_range(0..12) {
            0 => k.to_string(),
            1 => String::new(),
            2 => format!("{k}=={v}"),
            _ => format!("{k}={v}"),
        });
    }
    pairs.join("&")
}

fn hostile_request(rng: &mut StdRng) -> Hostile {
    let mut clean = true;
    // The boot routes (the first three) are what every machine calls: a quarter of the requests.
    let r = if rng.gen_bool(0.25) { rng.gen_range(0..3) } else { rng.gen_range(0..ROUTES.len()) };
    let (mut target, mut route) = (ROUTES[r].0.to_string(), Some(r));
    let method = match rng.gen_range(0..20) {
        0 => "ZQ".repeat(rng.gen_range(8..2000)),
        1 => {
            clean = false;
            BAD_METHODS.choose(rng).unwrap().to_string()
        }
        2..=7 => ROUTES[r].1.choose(rng).unwrap().to_string(),
        _ => METHODS.choose(rng).unwrap().to_string(),
    };
    if rng.gen_bool(0.4) {
        target = mutate(rng, &target);
        route = None;
    }
    if rng.gen_bool(0.5) {
        target = format!("{target}?{}", query(rng));
    }
    if target.len() > 60_000 {
        clean = false; // hyper may answer 414 before any route
    }
    let version = if rng.gen_bool(0.9) {
        "HTTP/1.1"
    } else {
        let v = *["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "http/1.1", "HTTP/1.1 zq", ""]
            .choose(rng)
            .unwrap();
        clean &= v == "HTTP/1.0";
        v
    };
    let mut lines = Vec::<Vec<u8>>::new();
    match rng.gen_range(0..20) {
        0 => {} // no Host at all
        1 => lines.push(format!("Host: {}", "zq".repeat(4096)).into_bytes()),
        2 => {
            lines.push(b"Host: localhost".to_vec());
            lines.push(format!("Host: {}", HOSTS.choose(rng).unwrap()).into_bytes());
        }
        3 => lines.push(b"Host: \xe9vil-zq.example".to_vec()),
        _ => lines.push(format!("Host: {}", HOSTS.choose(rng).unwrap()).into_bytes()),
    }
    for _ in 0..rng.gen_range(0..4) {
        lines.push(EXTRA_HEADERS.choose(rng).unwrap().as_bytes().to_vec());
    }
    if rng.gen_bool(0.1) {
        let name: String =
            (0..rng.gen_range(1..20)).map(|_| rng.gen_range(b'a'..=b'z') as char).collect();
        lines.push(format!("X-{name}: zq{}", "v".repeat(rng.gen_range(0..8000))).into_bytes());
    }
    if rng.gen_bool(0.05) {
        clean = false;
        lines.push(BAD_HEADERS.choose(rng).unwrap().as_bytes().to_vec());
    }
    if rng.gen_bool(0.02) {
        clean = false; // over hyper's header count
        lines.extend((0..120).map(|i| format!("X-Many-{i}: zq").into_bytes()));
    }
    let body: Vec<u8> = match rng.gen_range(0..10) {
        0..=6 => {
            let len = if rng.gen_bool(0.4) { 0 } else { rng.gen_range(1..300) };
            let body: Vec<u8> = match rng.gen_range(0..3) {
                0 => (0..len).map(|_| rng.gen()).collect(),
                1 => br#"{"profile":"e2e"}"#.to_vec(),
                _ => "zq{\"".repeat(len / 4 + 1).into_bytes(),
            };
            if !body.is_empty() || matches!(method.as_str(), "PUT" | "POST") || rng.gen_bool(0.2) {
                lines.push(format!("Content-Length: {}", body.len()).into_bytes());
            }
            body
        }
        7 => {
            clean &= version == "HTTP/1.1";
            lines.push(b"Transfer-Encoding: chunked".to_vec());
            b"5\r\nzq{\"p\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()
        }
        _ => {
            clean = false;
            let (head, body) = JUNK_FRAMING.choose(rng).unwrap();
            lines.push(head.as_bytes().to_vec());
            body.as_bytes().to_vec()
        }
    };
    lines.shuffle(rng);
    let eol: &[u8] = if rng.gen_bool(0.05) {
        clean = false;
        b"\n"
    } else {
        b"\r\n"
    };
    let mut bytes = format!("{method} {target} {version}").into_bytes();
    bytes.extend_from_slice(eol);
    for l in &lines {
        bytes.extend_from_slice(l);
        bytes.extend_from_slice(eol);
    }
    bytes.extend_from_slice(eol);
    bytes.extend_from_slice(&body);
    Hostile { bytes, method, route, clean }
}

/// Text of the server's own files that no answer may carry.
fn forbidden_in_answers() -> Vec<String> {
    vec![
        "fleet-secret".into(),
        "hostname,ip,gateway".into(),
        sha(READ_TOKEN),
        sha(REIMAGE_TOKEN),
        sha(ADMIN_TOKEN),
        node_token("node01"),
        node_token("node02"),
    ]
}

#[test]
fn random_hostile_requests_get_no_5xx_and_change_nothing() {
    let mut f = start_limited(limits(2000, 2000, 5000, 256));
    let install2 = flag(&f, "node02");
    let before = hosts(&f);
    let seed: u64 =
        std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_b007);
    eprintln!("HOSTILE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let forbidden = forbidden_in_answers();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let (mut checked_405, mut checked_boot, mut checked_401) = (0, 0, 0);
    let started = Instant::now();
    const N: usize = 600;
    for i in 0..N {
        let h = hostile_request(&mut rng);
        let shown = lossy(&h.bytes, 400);
        let resp = exchange(&f, &h.bytes, h.method == "HEAD")
            .unwrap_or_else(|e| panic!("request {i} got no answer ({e}):\n{shown:?}"));
        *statuses.entry(resp.status).or_default() += 1;
        assert!(
            (200..500).contains(&resp.status),
            "request {i}: {} {}\n{shown:?}",
            resp.head,
            resp.text()
        );
        let binary =
            resp.header("content-type").is_some_and(|t| t.starts_with("application/octet"));
        if !binary {
            let answer = format!("{}\n{}", resp.head, resp.text()).to_lowercase();
            assert!(
                !answer.contains("zq"),
                "request {i}: the answer echoes request text:\n{answer}\n{shown:?}"
            );
            for secret in &forbidden {
                assert!(
                    !answer.contains(secret),
                    "request {i}: the answer holds {secret}\n{shown:?}"
                );
            }
        }
        if let (true, Some(r)) = (h.clean, h.route) {
            let (path, allowed, api) = ROUTES[r];
            if !allowed.contains(&h.method.as_str()) {
                assert_eq!(
                    resp.status,
                    405,
                    "request {i}: {} {}\n{shown:?}",
                    resp.head,
                    resp.text()
                );
                let mut allow: Vec<&str> =
                    resp.header("allow").unwrap_or("").split(',').map(str::trim).collect();
                allow.sort();
                let mut want = allowed.to_vec();
                want.sort();
                assert_eq!(allow, want, "request {i}: Allow of {path}");
                checked_405 += 1;
            } else if path.starts_with("/boot/") {
                assert_eq!(resp.status, 200, "request {i}: {}\n{shown:?}", resp.head);
                assert!(resp.text().starts_with(LOCAL), "request {i}: {}\n{shown:?}", resp.text());
                checked_boot += 1;
            } else if api {
                assert_eq!(
                    resp.status,
                    401,
                    "request {i}: {} {}\n{shown:?}",
                    resp.head,
                    resp.text()
                );
                checked_401 += 1;
            }
        }
        if i % 50 == 49 {
            let (ok, took) = timed(|| healthz_ok(&f));
            assert!(ok && took < PROMPT, "after request {i}: /healthz ok={ok} in {took:?}");
        }
    }
    eprintln!(
        "{N} hostile requests in {:?}; statuses {statuses:?}; checked {checked_405} x 405, {checked_boot} local boots, {checked_401} x 401",
        started.elapsed()
    );
    assert!(checked_405 > 50 && checked_boot > 15 && checked_401 >= 5, "too few requests checked");
    assert!(healthz_ok(&f), "the server stopped answering");
    // No request without an API token changed anything: every host's view is as it was.
    let after = hosts(&f);
    assert_eq!(after["hosts"], before["hosts"], "a host's state changed");
    assert_eq!(after["orphans"], serde_json::json!([]));
    let n2 = host(&f, "node02");
    assert_eq!(n2["flagged"], true);
    assert_eq!(n2["flag"]["install"]["id"], install2.as_str());
    assert_eq!(host(&f, "node01")["flagged"], false);
    f.stop();
}

/// Lower-case methods are other methods (405), and `HEAD` (in any case) can neither open nor
/// end an install, even with a valid node token, MAC and install id.
#[test]
fn methods_are_exact_and_head_ends_nothing() {
    let mut f = start(true);
    let install = flag(&f, "node02");
    let tok = node_token("node02");
    let done = format!("/hosts/node02/done?install={install}&token={tok}");
    let failed = format!("/hosts/node02/failed?install={install}&token={tok}");
    let started = format!("/hosts/node02/started?install={install}&token={tok}");
    let boot = format!("/boot/node02?mac={MAC2}&token={tok}&medium=cd");
    for (method, target) in [
        ("HEAD", done.as_str()),
        ("HEAD", failed.as_str()),
        ("HEAD", started.as_str()),
        ("post", started.as_str()),
        ("HEAD", boot.as_str()),
        ("head", done.as_str()),
        ("get", done.as_str()),
        ("post", done.as_str()),
        ("Post", failed.as_str()),
        ("get", boot.as_str()),
        ("Get", boot.as_str()),
        ("put", "/hosts/node01/reimage"),
        ("delete", "/hosts/node02/reimage"),
        ("post", "/admin/reload"),
        ("get", "/healthz"),
        ("get", "/hosts"),
        ("get", "/config/node02/install.cfg"),
        ("get", "/assets/rocky/vmlinuz"),
        ("PUT", done.as_str()),
        ("DELETE", done.as_str()),
        ("GET", "/hosts/node02/reimage"),
    ] {
        let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = exchange(&f, req.as_bytes(), method == "HEAD").unwrap();
        assert_eq!(r.status, 405, "{method} {target}: {} {}", r.head, r.text());
        assert!(r.header("allow").is_some(), "{method} {target}: no Allow");
    }
    let h = host(&f, "node02");
    assert_eq!(h["flagged"], true, "{h}");
    assert_eq!(h["phase"], "pending", "a HEAD or lower-case request opened the install: {h}");
    assert_eq!(h["flag"]["install"]["id"], install.as_str());
    assert_eq!(h["flag"]["install"]["answers"], 0, "{h}");
    assert_eq!(host(&f, "node01")["flagged"], false);
    f.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. No request text in served scripts.

/// Every URL (`scheme://...`) in `text`.
fn urls(text: &str) -> Vec<String> {
    text.match_indices("://")
        .map(|(i, _)| {
            let start = text[..i].rfind(|c: char| !c.is_ascii_alphabetic()).map_or(0, |s| s + 1);
            text[start..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"\"'<>".contains(*c))
                .collect()
        })
        .collect()
}

/// Every URL in `text` that names this service's paths starts with `base/`; with `all`, every
/// URL at all.
fn urls_point_at(text: &str, base: &str, all: bool) {
    let ours = ["/boot/", "/config/", "/hosts/", "/assets/"];
    for url in urls(text) {
        if all || ours.iter().any(|p| url.contains(p)) {
            assert!(
                url.starts_with(&format!("{base}/")),
                "URL {url:?} is not the service's:\n{text}"
            );
        }
    }
}

#[test]
fn no_request_text_reaches_a_script_or_config() {
    let mut f = start(true);
    let tok = node_token("node01");
    let tok2 = node_token("node02");
    flag(&f, "node01");
    let boot =
        format!("/boot/node01?mac={MAC1}&ip=10.0.0.11&platform=pcbios&medium=cd&token={tok}");
    let chain = get(&f, &boot, Some("localhost"));
    assert_eq!(chain.status, 200);
    let chain = chain.text();
    assert!(chain.contains("install chain for node01"), "{chain}");
    urls_point_at(&chain, &f.base, true);
    assert!(urls(&chain).len() >= 3, "{chain}");
    assert!(chain.contains(&format!("{}/config/node01/", f.base)), "{chain}");
    let cfg_target = format!("/config/node01/install.cfg?token={tok}");
    let cfg = get(&f, &cfg_target, Some("localhost"));
    assert_eq!(cfg.status, 200, "{}", cfg.text());
    let cfg = cfg.text();
    // The local answers a request may get instead, each from a clean request.
    let locals: Vec<String> = [
        format!("/boot/node01?mac={MAC1}&token={tok2}"),
        format!("/boot/node01?token={tok}"),
        format!("/boot/node01?mac=aa:bb:cc:dd:ee:99&token={tok}"),
        "/boot/nobody".to_string(),
        "/boot/bad_host".to_string(),
        format!("/boot/node02?mac={MAC2}&token={tok2}"),
    ]
    .iter()
    .map(|t| {
        let r = get(&f, t, Some("localhost"));
        assert!(r.status == 200 && r.text().starts_with(LOCAL), "{t}: {}", r.text());
        r.text()
    })
    .collect();
    for l in &locals {
        assert!(!l.to_lowercase().contains("zq"), "{l}");
    }
    let check = |what: &str, r: &RawResp, expect_chain: Option<bool>| {
        let body = r.text();
        assert_eq!(r.status, 200, "{what}: {} {body}", r.head);
        assert!(!body.to_lowercase().contains("zq"), "{what}: request text in the answer:\n{body}");
        let is_chain = body == chain;
        assert!(
            is_chain || locals.contains(&body),
            "{what}: the answer is neither the install chain nor a fixed local script:\n{body}"
        );
        if let Some(want) = expect_chain {
            assert_eq!(is_chain, want, "{what}:\n{body}");
        }
    };

    let long = "zq".repeat(3000);
    let hostile_values = [
        "${zqx}",
        "${zqx:hex}",
        " ; zqshell ; #",
        "';touch zqpwned;'",
        "\nzq injected\n",
        "zq\r\nchain http://zq.example/x",
        "#!ipxe\nzq",
        "zq`id`$(id)",
        "zq\u{0}nul",
        long.as_str(),
    ];
    let long_host = "zq".repeat(4000);
    let host_headers = [
        "[::1]x ; zqshell ; #",
        "[::1]x';touch ZQPWNED;'",
        "zq.example:80",
        "",
        "${zqx}",
        long_host.as_str(),
    ];
    // Hostile Host headers alone.
    for h in host_headers {
        check(&format!("Host {h:.40}"), &get(&f, &boot, Some(h)), Some(true));
        let r = get(&f, &cfg_target, Some(h));
        assert_eq!((r.status, r.text()), (200, cfg.clone()), "config with Host {h:.40}");
    }
    // Hostile values in every parameter the media send (but the two that decide), with a
    // hostile Host header: still the same install chain.
    let mut n = 0;
    for param in ["ip", "uuid", "serial", "platform", "arch", "medium", "zq"] {
        for v in hostile_values {
            let h = host_headers[n % host_headers.len()];
            n += 1;
            let target = format!("{boot}&{param}={}", enc(v));
            check(&format!("{param}={v:.40}"), &get(&f, &target, Some(h)), Some(true));
            // The same value sent first wins over the real one.
            let target =
                boot.replace(&format!("{param}="), &format!("{param}={}&{param}=", enc(v)));
            check(&format!("{param}={v:.40} first"), &get(&f, &target, Some(h)), Some(true));
        }
    }
    // Everything hostile at once.
    let all: String = ["ip", "uuid", "serial", "platform", "arch", "medium"]
        .iter()
        .zip(hostile_values.iter().cycle())
        .map(|(p, v)| format!("{p}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let target = format!("/boot/node01?{all}&mac={MAC1}&token={tok}");
    check("all hostile", &get(&f, &target, Some(host_headers[0])), Some(true));
    // Hostile `mac` or `token`: a fixed local answer.
    for v in hostile_values {
        let target = format!("/boot/node01?mac={}&token={tok}&medium=cd", enc(v));
        check(&format!("mac={v:.40}"), &get(&f, &target, Some(host_headers[1])), Some(false));
        let target = format!("/boot/node01?mac={MAC1}&token={}&medium=cd", enc(v));
        check(&format!("token={v:.40}"), &get(&f, &target, Some(host_headers[1])), Some(false));
    }
    // The same, raw (unencoded) where the request line allows it: 200 and a fixed answer, or 400.
    for raw in ["${zqx}", "'zq'", "<zq>", "|zq|", "zq\"", "zq%", "zq%0", "zq%0Akernel"] {
        for target in [format!("{boot}&ip={raw}"), format!("/boot/node01?mac={raw}&token={tok}")] {
            let r = get(&f, &target, Some("localhost"));
            if r.status != 400 {
                check(&format!("raw {target:.80}"), &r, None);
            }
        }
    }
    // The requested host's own text is never echoed: invalid, unknown or deeper names.
    let long_name = format!("/boot/{}", "zq".repeat(200));
    for target in [
        "/boot/evil$%7Bzqx%7D",
        "/boot/zqunknown",
        "/boot/zq.example",
        "/boot/node01%0Aecho%20zq",
        "/boot/node01%0d%0azq",
        "/boot/zq%00",
        "/boot/%24%7Bzqx%7D",
        "/boot/node01/zq/x",
        "/boot/node01/%24%7Bzqx%7D",
        long_name.as_str(),
        "/boot/node02?mac=${zqx}",
        "/boot/node02?mac=%24%7Bzqx%7D&token=zq",
        "/boot/zqhost?mac=aa:bb:cc:dd:ee:01&ip=%0Azq",
    ] {
        let r = get(&f, target, Some(host_headers[0]));
        if r.status == 400 && target.contains('{') {
            continue; // a raw `{` may be refused by the request-line parser: fine
        }
        check(target, &r, Some(false));
    }
    // Configs: hostile query values and Host headers change nothing either.
    for v in hostile_values {
        let target = format!(
            "/config/node01/install.cfg?token={tok}&hostname={0}&server={0}&ip={0}",
            enc(v)
        );
        let r = get(&f, &target, Some(host_headers[0]));
        assert_eq!((r.status, r.text()), (200, cfg.clone()), "config with {v:.40}");
        let target = format!("/config/node01/~{tok}/install.cfg?x={}", enc(v));
        let r = get(&f, &target, Some(host_headers[1]));
        assert_eq!((r.status, r.text()), (200, cfg.clone()), "config (token in path) with {v:.40}");
    }
    // The example profiles, whose chains and configs carry URLs of the service: the same
    // answers whatever the Host header and the other parameters say.
    for (h, mac, profile) in [
        ("rocky1", "aa:bb:cc:dd:ee:31", "rocky"),
        ("ubu1", "aa:bb:cc:dd:ee:41", "ubuntu"),
        ("deb1", "aa:bb:cc:dd:ee:51", "debian"),
        ("hv1", "aa:bb:cc:dd:ee:21", "harvester"),
    ] {
        let url = f.url(&format!("/hosts/{h}/reimage"));
        assert_eq!(call("PUT", &url, Some(REIMAGE_TOKEN), None).status, 200);
        let tok = node_token(h);
        let target = format!("/boot/{h}?mac={mac}&ip=10.0.0.9&platform=efi&medium=usb&token={tok}");
        let clean = get(&f, &target, Some("localhost"));
        let clean = clean.text();
        assert!(clean.contains("kernel "), "{h}: {clean}");
        urls_point_at(&clean, &f.base, true);
        for (i, hh) in host_headers.iter().enumerate() {
            let v = enc(hostile_values[i % hostile_values.len()]);
            let t = format!("{target}&uuid={v}&serial={v}&arch={v}");
            let r = get(&f, &t, Some(hh));
            assert_eq!((r.status, r.text()), (200, clean.clone()), "{h} with Host {hh:.40}");
        }
        let dir = repo().join(format!("examples/profiles/{profile}/config"));
        let mut served = 0;
        for file in std::fs::read_dir(dir).unwrap() {
            let file = file.unwrap().file_name().into_string().unwrap();
            let t = format!("/config/{h}/{file}?token={tok}");
            let want = get(&f, &t, Some("localhost"));
            assert!(want.status < 500, "{t}: {} {}", want.head, want.text());
            if want.status == 200 {
                served += 1;
                assert!(!want.text().to_lowercase().contains("zq"));
                urls_point_at(&want.text(), &f.base, false);
            }
            for (i, hh) in host_headers.iter().enumerate() {
                let v = enc(hostile_values[i % hostile_values.len()]);
                let t = format!("/config/{h}/~{tok}/{file}?x={v}&server={v}&host={v}");
                let r = get(&f, &t, Some(hh));
                assert_eq!(
                    (r.status, r.text()),
                    (want.status, want.text()),
                    "{t:.80} Host {hh:.40}"
                );
            }
        }
        assert!(served >= 2, "{h}: only {served} configs served");
    }
    f.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. No token in the audit log or /events.

#[test]
fn no_token_reaches_the_audit_log_or_events() {
    let mut f = start(true);
    let tok = node_token("node01");
    let upper = tok.to_uppercase(); // hex: also a valid spelling of the token
    let wrong = node_token("node02"); // a real token, of another host
    let junk = "0123456789abcdef".repeat(4);
    let api_wrong = "zq-api-token-nope";
    let id = flag(&f, "node01");
    let zero = "0".repeat(32);
    let chain = get(&f, &format!("/boot/node01?token={tok}&mac={MAC1}"), Some("x")).text();
    assert!(chain.contains("install chain for node01"), "{chain}");
    let gets: Vec<(String, Option<&str>, u16)> = vec![
        (format!("/config/node01/~{tok}"), None, 400),
        (format!("/config/node01/~{wrong}"), None, 403),
        (format!("/config/node01/~{junk}/install.cfg"), None, 403),
        (format!("/config/node01/x/~{tok}/f"), None, 403),
        (format!("/config/node01/~{tok}/~{tok}"), None, 400),
        (format!("/config/node01/~{tok}/x/~{tok}"), None, 400),
        (format!("/config/node01/~{tok}/install.cfg"), None, 200),
        (format!("/config/node01/~{upper}/install.cfg"), None, 200),
        (format!("/config/node01/{tok}?token={tok}"), None, 404),
        (format!("/config/node01/~{tok}/{wrong}"), None, 404),
        (format!("/config/node01/install.cfg?token={wrong}"), None, 403),
        (format!("/config/nobody/~{tok}/install.cfg"), None, 403),
        (format!("/config/nobody/install.cfg?token={tok}"), None, 403),
        (format!("/hosts/node01/done?token={tok}&install={zero}"), None, 409),
        (format!("/hosts/node01/done?token={wrong}&install={id}"), None, 403),
        (format!("/hosts/node01/done?token={tok}&install={tok}"), None, 400),
        (format!("/hosts/node01/done?install={id}&token={junk}"), None, 403),
        (format!("/hosts/node01/failed?token={tok}&install={id}"), None, 200),
        (format!("/hosts/nobody/done?token={tok}&install={id}"), None, 403),
        (format!("/boot/node01?token={tok}&mac={MAC1}"), None, 200),
        (format!("/boot/node01?token={wrong}&mac={MAC1}"), None, 200),
        (format!("/boot/node01?token={junk}&mac={MAC1}"), None, 200),
        (format!("/boot/node01?token={tok}&mac={tok}&ip={tok}&uuid={tok}&serial={tok}"), None, 200),
        (format!("/boot/nobody?token={tok}&mac={MAC1}"), None, 200),
        (format!("/boot/node01/~{tok}?token={tok}"), None, 200),
        (format!("/hosts?token={READ_TOKEN}"), None, 401),
        (format!("/events?token={READ_TOKEN}"), Some(api_wrong), 401),
        ("/hosts".to_string(), Some(api_wrong), 401),
        ("/hosts".to_string(), Some(tok.as_str()), 401),
        ("/status".to_string(), Some(wrong.as_str()), 401),
        (format!("/boot/node01?mac={MAC1}&token={tok}"), Some(ADMIN_TOKEN), 200),
    ];
    for (target, bearer, want) in &gets {
        let auth = bearer.map(|b| format!("Authorization: Bearer {b}\r\n")).unwrap_or_default();
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let r = exchange(&f, req.as_bytes(), false).unwrap();
        assert_eq!(r.status, *want, "GET {target}: {}", r.text());
    }
    // API tokens on routes that refuse them (role too small, malformed, wrong method, bad host).
    let api: Vec<(&str, String, String, u16)> = vec![
        ("PUT", "/hosts/node02/reimage".into(), format!("Bearer {READ_TOKEN}"), 403),
        ("DELETE", "/hosts/node01/reimage".into(), format!("Bearer {READ_TOKEN}"), 403),
        ("POST", "/admin/reload".into(), format!("Bearer {REIMAGE_TOKEN}"), 403),
        ("GET", "/events".into(), READ_TOKEN.to_string(), 401),
        ("GET", "/events".into(), format!("Basic {READ_TOKEN}"), 401),
        ("GET", "/hosts".into(), format!("Bearer {READ_TOKEN}x"), 401),
        ("PUT", "/hosts/bad_host!/reimage".into(), format!("Bearer {ADMIN_TOKEN}"), 400),
        ("DELETE", "/hosts/nobody/reimage".into(), format!("Bearer {ADMIN_TOKEN}"), 404),
        ("put", "/hosts/node02/reimage".into(), format!("Bearer {ADMIN_TOKEN}"), 405),
        ("POST", "/hosts/node02/reimage".into(), format!("Bearer {ADMIN_TOKEN}"), 405),
        ("GET", format!("/hosts/{tok}"), format!("Bearer {READ_TOKEN}"), 400),
    ];
    for (method, target, auth, want) in &api {
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = exchange(&f, req.as_bytes(), false).unwrap();
        assert_eq!(r.status, *want, "{method} {target}: {}", r.text());
    }
    // Ask /events first: it waits for the audit writer, so the file is complete afterwards.
    let events = call("GET", &f.url("/events?limit=1000"), Some(READ_TOKEN), None);
    assert_eq!(events.status, 200);
    let log = audit_log(&f.dir.path().join("state"));
    // The requests were recorded (so the log is a real test), by kind.
    for kind in ["node-token-denied", "config", "callback-ignored", "failed", "boot", "denied"] {
        let tag = format!("\"event\":\"{kind}\"");
        assert!(log.contains(&tag), "no {kind} record in the audit log:\n{log}");
    }
    let lines = log.lines().count();
    let listed = events.json()["events"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, lines, "/events lists {listed} records, the log has {lines}");
    let mut secrets = vec![
        tok.clone(),
        wrong.clone(),
        junk.clone(),
        api_wrong.to_string(),
        READ_TOKEN.to_string(),
        REIMAGE_TOKEN.to_string(),
        ADMIN_TOKEN.to_string(),
    ];
    // Pieces of the node tokens too: a cut token is still a leak.
    for t in [&tok, &wrong] {
        secrets.push(t[..16].to_string());
        secrets.push(t[48..].to_string());
    }
    for (name, text) in
        [("audit.jsonl", log.to_lowercase()), ("/events", events.body.to_lowercase())]
    {
        for s in &secrets {
            assert!(!text.contains(&s.to_lowercase()), "{name} holds the token {s}:\n{text}");
        }
    }
    f.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. Slow clients hold only their own connection.

/// A client that sends `head`, then one more byte every 200 ms (up to `drip` bytes) until the
/// server answers or closes: how long it was let drip, and what it received.
fn dripper(
    f: &Fixture,
    head: String,
    drip: usize,
) -> std::thread::JoinHandle<Result<(Duration, Vec<u8>), String>> {
    let addr = addr(f);
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let t = Instant::now();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..drip {
            std::thread::sleep(Duration::from_millis(200));
            s.set_nonblocking(true).unwrap();
            let state = s.read(&mut buf);
            s.set_nonblocking(false).unwrap();
            match state {
                Ok(0) => return Ok((t.elapsed(), seen)),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Ok((t.elapsed(), seen)),
            }
            if seen.is_empty() && s.write_all(b"a").is_err() {
                return Ok((t.elapsed(), seen));
            }
        }
        Err(format!("still open after dripping for {:?}", t.elapsed()))
    })
}

#[test]
fn slow_senders_do_not_stall_others_and_are_cut() {
    let (header, body) = (3000, 3000);
    let mut f = start_limited(limits(header, body, 10_000, 256));
    let t0 = Instant::now();
    let mut bodies: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut c = Conn::open(&f);
            let req = if i % 2 == 0 {
                format!("PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\nContent-Length: 100\r\n\r\n")
            } else {
                format!("GET /boot/node01?mac={MAC1} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            };
            c.send(req.as_bytes()).unwrap();
            c.s
        })
        .collect();
    let mut heads: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = Conn::open(&f);
            c.send(
                format!("GET /boot/node01?mac={MAC1} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes(),
            )
            .unwrap();
            c.s
        })
        .collect();
    // Slowloris: a head or a body that keeps trickling in is cut at its timeout all the same.
    let head_drips: Vec<_> = (0..5)
        .map(|_| dripper(&f, format!("GET /boot/node01?mac={MAC1} HTTP/1.1\r\nX-Drip: "), 60))
        .collect();
    let body_drips: Vec<_> = (0..5)
        .map(|_| {
            let head = format!("PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\nContent-Length: 100\r\n\r\n");
            dripper(&f, head, 100)
        })
        .collect();
    let node01 = boot_url(&f.base, "node01", MAC1, "");
    for _ in 0..5 {
        let (r, took) = timed(|| call("GET", &node01, None, None));
        assert!(r.status == 200 && r.body.starts_with(LOCAL), "{}", r.body);
        assert!(took < PROMPT, "/boot/node01 took {took:?} while 110 clients stall");
        let (r, took) = timed(|| call("GET", &f.url("/healthz"), None, None));
        assert_eq!(r.status, 200);
        assert!(took < PROMPT, "/healthz took {took:?} while 100 clients stall");
    }
    let served = t0.elapsed();
    assert!(served < Duration::from_millis(2000), "10 normal requests took {served:?}");
    // The stalled connections were really held (not dropped) while the others were served.
    for (i, s) in bodies.iter().chain(heads.iter()).enumerate() {
        assert!(open_and_silent(s), "stalled connection {i} was not held after {served:?}");
    }
    // After their timeouts: a 408 (or a plain close) for the missing bodies, a close for the
    // missing heads.
    let deadline = t0 + Duration::from_millis(header.max(body)) + Duration::from_secs(3);
    for (i, s) in bodies.iter_mut().enumerate() {
        let seen = closed_by(s, deadline).unwrap_or_else(|e| panic!("body-stalled {i}: {e}"));
        let text = String::from_utf8_lossy(&seen);
        assert!(seen.is_empty() || text.starts_with("HTTP/1.1 408 "), "body-stalled {i}: {text}");
    }
    for (i, s) in heads.iter_mut().enumerate() {
        let seen = closed_by(s, deadline).unwrap_or_else(|e| panic!("head-stalled {i}: {e}"));
        let text = String::from_utf8_lossy(&seen);
        assert!(seen.is_empty() || text.starts_with("HTTP/1.1 408 "), "head-stalled {i}: {text}");
    }
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for (what, drips, timeout) in [("head", head_drips, header), ("body", body_drips, body)] {
        for d in drips {
            let (took, seen) = d.join().unwrap().unwrap_or_else(|e| panic!("{what} drip: {e}"));
            let text = String::from_utf8_lossy(&seen);
            assert!(seen.is_empty() || text.starts_with("HTTP/1.1 408 "), "{what} drip: {text}");
            let limit = Duration::from_millis(timeout) + Duration::from_millis(1500);
            assert!(took < limit, "a dripping {what} was let run {took:?}");
            *answers.entry(format!("{what} drip: {}", lossy(&seen, 12))).or_default() += 1;
        }
    }
    eprintln!("drips ended: {answers:?}");
    let cut = t0.elapsed();
    assert!(
        cut >= Duration::from_millis(header.min(body)) - Duration::from_millis(500),
        "cut after {cut:?}"
    );
    eprintln!("served others within {served:?}; stalled connections cut after {cut:?}");
    assert!(healthz_ok(&f));
    assert_eq!(host(&f, "node01")["flagged"], false, "a PUT whose body never came set a flag");
    f.stop();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let header = Duration::from_millis(2000);
    let mut f = start_limited(limits(2000, 2000, 10_000, 256));
    let mut c = Conn::open(&f);
    for _ in 0..2 {
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 200, "the connection is kept alive between requests");
    }
    let idle = Instant::now();
    let seen = closed_by(&mut c.s, idle + header + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("the idle connection was not closed: {e}"));
    let took = idle.elapsed();
    assert!(
        seen.is_empty() || lossy(&seen, 20).starts_with("HTTP/1.1 408"),
        "{}",
        lossy(&seen, 300)
    );
    assert!(
        took >= header - Duration::from_millis(500),
        "closed after {took:?}, before its timeout"
    );
    eprintln!("idle keep-alive connection closed after {took:?}");
    f.stop();
}

fn refused_connections(f: &Fixture) -> u64 {
    let m = call("GET", &f.url("/metrics"), None, None).body;
    m.lines()
        .find_map(|l| l.strip_prefix("bootforge_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in\n{m}"))
}

#[test]
fn one_peer_cannot_hold_more_than_its_share() {
    let mut f = start_limited(limits(10_000, 10_000, 10_000, 20));
    let refused_before = refused_connections(&f);
    // That request's connection is closed by the client; the server gives its slot back when
    // it sees the close, a moment later. Wait for that before taking the whole share.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..20).map(|_| Conn::open(&f).s).collect();
    std::thread::sleep(Duration::from_millis(300));
    for (i, s) in held.iter().enumerate() {
        assert!(open_and_silent(s), "connection {i} of 20 (the peer's share) was closed");
    }
    for i in 0..20 {
        let mut extra = Conn::open(&f).s;
        let t = Instant::now();
        let seen = closed_by(&mut extra, t + PROMPT).unwrap_or_else(|e| {
            panic!("extra connection {i} over the cap was not closed at once: {e}")
        });
        assert!(seen.is_empty(), "extra connection {i}: {}", lossy(&seen, 200));
    }
    // The test's own requests come from the same address: refused as well while at the cap.
    let r = exchange(&f, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert!(r.is_err(), "a 21st connection was served: {r:?}");
    drop(held);
    let t = Instant::now();
    while !healthz_ok(&f) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no service 2 s after the idle connections left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("served again {:?} after the idle connections closed", t.elapsed());
    let refused = refused_connections(&f) - refused_before;
    assert!(refused >= 21, "refused connections counted: {refused}");
    f.stop();
}

#[test]
fn a_client_that_stops_reading_is_cut_and_blocks_no_one() {
    stops_reading(false);
}

#[test]
fn a_client_that_stops_reading_over_tls_is_cut_and_blocks_no_one() {
    stops_reading(true);
}

/// A download that its client stops reading (over TLS when `tls`) is cut at the send timeout,
/// and holds up no one meanwhile.
fn stops_reading(tls: bool) {
    let send = Duration::from_millis(2000);
    let limits = limits(10_000, 10_000, 2000, 256);
    let mut f = if tls { start_tls_limited(limits) } else { start_limited(limits) };
    let size: usize = 64 << 20;
    let big = f.config.assets.clone().unwrap().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("disk.img"), vec![7u8; size]).unwrap();
    let mut stalled = if tls { Conn::open_tls(&f) } else { Conn::open(&f) };
    stalled.send(b"GET /assets/big/disk.img HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500)); // the socket buffers fill up
    let vmlinuz: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let (r, took) = timed(|| call("GET", &f.url("/healthz"), None, None));
        assert!(r.status == 200 && took < PROMPT, "/healthz: {} in {took:?}", r.status);
        let (r, took) = timed(|| call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None));
        assert!(r.status == 200 && took < PROMPT, "/boot/node01: {} in {took:?}", r.status);
        let (r, took) = timed(|| {
            let mut c = if tls { Conn::open_tls(&f) } else { Conn::open(&f) };
            c.send(b"GET /assets/rocky/vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            c.response(false).unwrap()
        });
        assert!(r.status == 200 && took < PROMPT, "vmlinuz: {} in {took:?}", r.status);
        assert!(r.body == vmlinuz, "vmlinuz came back different");
    }
    let checked = t0.elapsed();
    assert!(checked < send, "the others were checked only after {checked:?}, not while stalled");
    // Past the send timeout, read as fast as possible: the server must have cut the response,
    // so what arrives is what sat in the socket buffers, then the end.
    let wake = t0 + send + Duration::from_millis(1500);
    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    stalled.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    let ended = loop {
        match stalled.read(&mut chunk) {
            Ok(0) => break "closed",
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the stalled response was not cut: {total} bytes, then still open")
            }
            Err(_) => break "reset",
        }
    };
    assert!(total < size, "the whole {size}-byte file arrived ({total} bytes): nothing was cut");
    eprintln!("stalled download {ended} after {total} bytes");
    assert!(healthz_ok(&f));
    f.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. Oversized bodies.

#[test]
fn oversized_bodies_get_413() {
    let mut f = start_limited(limits(5000, 5000, 10_000, 256));
    let put = |framing: String, body: &[u8]| {
        let mut req = format!(
            "PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\n{framing}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(body);
        let mut c = Conn::open(&f);
        c.send(&req).expect("the server reads (and drops) an oversized body before answering");
        c.response(false).unwrap()
    };
    let sized = |len: usize| put(format!("Content-Length: {len}"), &vec![b'x'; len]);
    let r = sized(100_000);
    assert_eq!(r.status, 413, "{}", r.text());
    // The limit itself: 64 KiB is read (and refused as bad JSON), one byte more is 413.
    let max = bootforge::serve::web::limits::MAX_BODY;
    let r = sized(max);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = sized(max + 1);
    assert_eq!(r.status, 413, "{}", r.text());
    // Chunked, with no length announced.
    let mut chunked = Vec::new();
    for _ in 0..25 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = put("Transfer-Encoding: chunked".into(), &chunked);
    assert_eq!(r.status, 413, "{}", r.text());
    // A huge announced body with `Expect: 100-continue`: 413 at once, never a 100 first.
    let (r, took) = timed(|| {
        let req = format!(
            "PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\n\r\n"
        );
        exchange(&f, req.as_bytes(), false).unwrap()
    });
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.interim.is_empty(), "the server asked for the body first: {:?}", r.interim);
    assert!(took < PROMPT, "413 took {took:?}");
    assert_eq!(host(&f, "node01")["flagged"], false);
    assert!(healthz_ok(&f));
    f.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. TLS: the same limits before, during and after the handshake.

/// A server like [`start_limited`], with a TLS listener beside the plain one (`f.base` is
/// `https://`).
fn start_tls_limited(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = full_config(dir.path(), true);
    config.limits = limits;
    start_tls_with(dir, config)
}

/// A client configuration trusting the fixture's CA, offering only `version` when given.
fn tls_client(
    f: &Fixture,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> std::sync::Arc<rustls::ClientConfig> {
    let roots = bootforge::cafile::roots(
        f.config.tls_ca.as_deref(),
        "test CA",
        bootforge::cafile::Trust::FileInstead,
    )
    .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let versions = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A counter of `/metrics` (asked over the plain listener, which shares the caps: call it
/// when the peer is not at its cap), by its full name and labels.
fn metric(f: &Fixture, name: &str) -> u64 {
    let m = call("GET", &format!("{}/metrics", f.plain_base.as_ref().unwrap()), None, None).body;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
}

fn tls_failures(f: &Fixture, reason: &str) -> u64 {
    metric(f, &format!("bootforge_tls_handshake_failures_total{{reason=\"{reason}\"}}"))
}

/// `GET /healthz` over a new TLS connection: whether it was answered 200 (a refused
/// connection fails its handshake).
fn tls_healthz_ok(f: &Fixture) -> bool {
    let mut c = Conn::open_tls_with(f, tls_client(f, None));
    c.s.set_read_timeout(Some(PROMPT)).unwrap();
    c.handshake().is_ok()
        && c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_ok()
        && c.response(false).is_ok_and(|r| r.status == 200)
}

/// The first flight of a real TLS client (its ClientHello record), as bytes.
fn client_hello(f: &Fixture) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut c = rustls::ClientConnection::new(tls_client(f, None), name).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[test]
fn a_stalled_tls_handshake_holds_its_slot_only_until_the_header_timeout() {
    let header = Duration::from_millis(2000);
    let share = 8;
    let mut f = start_tls_limited(limits(2000, 2000, 10_000, share));
    let (timeouts, refused) = (tls_failures(&f, "timeout"), refused_connections(&f));
    // The counters' own connections are given back when the server sees them close.
    std::thread::sleep(Duration::from_millis(300));
    // The peer's whole share: connections that never send a ClientHello.
    let t0 = Instant::now();
    let mut stalled: Vec<TcpStream> =
        (0..share).map(|_| TcpStream::connect(tls_addr(&f)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for (i, s) in stalled.iter().enumerate() {
        assert!(open_and_silent(s), "stalled handshake {i} was not held");
    }
    // They hold real slots: one more connection, TLS or plain, is over the cap.
    for target in [tls_addr(&f), addr(&f)] {
        let mut extra = TcpStream::connect(&target).unwrap();
        let seen = closed_by(&mut extra, Instant::now() + PROMPT)
            .unwrap_or_else(|e| panic!("a connection over the cap to {target} was held: {e}"));
        assert!(seen.is_empty(), "{}", lossy(&seen, 200));
    }
    // Each stalled handshake is closed at the header timeout, not before.
    for (i, s) in stalled.iter_mut().enumerate() {
        closed_by(s, t0 + header + Duration::from_millis(1500))
            .unwrap_or_else(|e| panic!("stalled handshake {i} outlived the header timeout: {e}"));
    }
    let closed = t0.elapsed();
    assert!(closed >= header - Duration::from_millis(300), "closed after {closed:?}");
    // The slots are given back: a TLS request is served again, at once.
    let t = Instant::now();
    while !tls_healthz_ok(&f) {
        assert!(
            t.elapsed() < PROMPT,
            "no TLS service {:?} after the stalled ones closed",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("stalled handshakes closed after {closed:?}; served again {:?} later", t.elapsed());
    drop(stalled);
    std::thread::sleep(Duration::from_millis(200));
    assert!(tls_failures(&f, "timeout") - timeouts >= share as u64, "timeouts not counted");
    assert!(refused_connections(&f) - refused >= 2, "refusals over the cap not counted");
    f.stop();
}

#[test]
fn a_trickled_client_hello_is_cut_at_the_header_timeout_and_stalls_no_one() {
    let header = Duration::from_millis(2000);
    let mut f = start_tls_limited(limits(2000, 2000, 10_000, 256));
    let timeouts = tls_failures(&f, "timeout");
    let hello = client_hello(&f);
    // A real ClientHello, one byte every 100 ms: it would take far longer than the timeout.
    assert!(hello.len() > 100, "{} bytes", hello.len());
    let trickles: Vec<_> = (0..5)
        .map(|_| {
            let (target, hello) = (tls_addr(&f), hello.clone());
            std::thread::spawn(move || -> Result<(Duration, usize), String> {
                let mut s = TcpStream::connect(target).unwrap();
                let t = Instant::now();
                for (sent, byte) in hello.iter().enumerate() {
                    std::thread::sleep(Duration::from_millis(100));
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 64];
                    let state = s.read(&mut b);
                    s.set_nonblocking(false).unwrap();
                    match state {
                        Ok(0) => return Ok((t.elapsed(), sent)),
                        Ok(_) => {
                            return Err(format!(
                                "the server answered a partial hello after {sent} bytes"
                            ))
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return Ok((t.elapsed(), sent)),
                    }
                    if s.write_all(&[*byte]).is_err() {
                        return Ok((t.elapsed(), sent));
                    }
                }
                Err(format!("the whole hello was let in over {:?}", t.elapsed()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let (r, took) = timed(|| call("GET", &f.url("/healthz"), None, None));
        assert_eq!(r.status, 200);
        assert!(took < PROMPT, "/healthz over TLS took {took:?} while 5 hellos trickle in");
    }
    for t in trickles {
        let (took, sent) = t.join().unwrap().unwrap_or_else(|e| panic!("trickled hello: {e}"));
        assert!(
            took >= header - Duration::from_millis(500)
                && took < header + Duration::from_millis(1500),
            "a trickled hello was cut after {took:?} ({sent} bytes in)"
        );
    }
    assert!(tls_failures(&f, "timeout") - timeouts >= 5);
    f.stop();
}

#[test]
fn bytes_that_are_not_tls_are_refused_at_once_and_never_answered_in_clear() {
    let mut f = start_tls_limited(limits(10_000, 10_000, 10_000, 256));
    let protocol = tls_failures(&f, "protocol");
    let mut rng = StdRng::seed_from_u64(16);
    let random: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain HTTP", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("random bytes", random),
        // A handshake record announcing 65535 bytes, more than TLS allows: refused on its
        // header, not waited for.
        ("an oversized record", vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01]),
        // A TLS 1.0 record carrying an alert: not a ClientHello.
        ("an alert first", vec![0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]),
    ];
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(tls_addr(&f)).unwrap();
        s.write_all(bytes).unwrap();
        let (seen, took) = timed(|| closed_by(&mut s, Instant::now() + PROMPT));
        let seen = seen.unwrap_or_else(|e| panic!("{what}: not closed at once: {e}"));
        assert!(took < PROMPT, "{what}: closed after {took:?}");
        assert!(
            find(&seen, b"HTTP/").is_none(),
            "{what}: answered in clear: {}",
            lossy(&seen, 200)
        );
        // At most a TLS alert record.
        assert!(seen.is_empty() || seen[0] == 0x15, "{what}: {:?}", lossy(&seen, 50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let counted = tls_failures(&f, "protocol") - protocol;
    assert!(counted >= cases.len() as u64, "{counted} protocol failures counted");
    assert!(tls_healthz_ok(&f));
    f.stop();
}

#[test]
fn one_peer_cannot_hold_more_than_its_share_over_tls() {
    let mut f = start_tls_limited(limits(10_000, 10_000, 10_000, 20));
    let refused_before = refused_connections(&f);
    std::thread::sleep(Duration::from_millis(300));
    // Twenty finished handshakes, idle.
    let mut held: Vec<Conn> = (0..20).map(|_| Conn::open_tls(&f)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for (i, c) in held.iter_mut().enumerate() {
        assert!(c.open_and_silent(), "TLS connection {i} of 20 (the peer's share) was closed");
    }
    // The 21st: over TLS its handshake never completes; over plain it is closed at once (the
    // listeners share one cap).
    for i in 0..5 {
        let mut extra = Conn::open_tls_with(&f, tls_client(&f, None));
        extra.s.set_read_timeout(Some(PROMPT)).unwrap();
        let (hs, took) = timed(|| extra.handshake());
        assert!(hs.is_err(), "extra TLS connection {i} over the cap got a handshake");
        assert!(took < PROMPT, "extra TLS connection {i} was held {took:?}");
        let mut plain = TcpStream::connect(addr(&f)).unwrap();
        closed_by(&mut plain, Instant::now() + PROMPT)
            .unwrap_or_else(|e| panic!("a plain connection over the shared cap was held: {e}"));
    }
    drop(held);
    let t = Instant::now();
    while !tls_healthz_ok(&f) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no TLS service 2 s after the idle ones left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused_connections(&f) - refused_before;
    assert!(refused >= 10, "refused connections counted: {refused}");
    f.stop();
}

#[test]
fn slow_senders_over_tls_are_cut_like_plain_ones() {
    let (header, body) = (Duration::from_millis(2000), Duration::from_millis(2000));
    let mut f = start_tls_limited(limits(2000, 2000, 10_000, 256));
    // Slowloris through a finished handshake: a head, or a body, one byte every 200 ms.
    let drips: Vec<_> = (0..6)
        .map(|i| {
            let mut c = Conn::open_tls(&f);
            std::thread::spawn(move || -> Result<(Duration, Vec<u8>), String> {
                let head = if i % 2 == 0 {
                    format!("GET /boot/node01?mac={MAC1} HTTP/1.1\r\nX-Drip: ")
                } else {
                    format!("PUT /hosts/node01/reimage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REIMAGE_TOKEN}\r\nContent-Length: 100\r\n\r\n")
                };
                c.send(head.as_bytes()).unwrap();
                let t = Instant::now();
                for _ in 0..60 {
                    std::thread::sleep(Duration::from_millis(200));
                    c.s.set_nonblocking(true).unwrap();
                    let mut b = vec![0u8; 4096];
                    let state = c.read(&mut b);
                    c.s.set_nonblocking(false).unwrap();
                    match state {
                        Ok(0) => return Ok((t.elapsed(), Vec::new())),
                        Ok(n) => return Ok((t.elapsed(), b[..n].to_vec())),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return Ok((t.elapsed(), Vec::new())),
                    }
                    if c.send(b"a").is_err() {
                        return Ok((t.elapsed(), Vec::new()));
                    }
                }
                Err(format!("still open after dripping for {:?}", t.elapsed()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let (r, took) = timed(|| call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None));
        assert!(r.status == 200 && r.body.starts_with(LOCAL), "{}", r.body);
        assert!(took < PROMPT, "/boot over TLS took {took:?} while 6 clients drip");
    }
    for d in drips {
        let (took, seen) = d.join().unwrap().unwrap_or_else(|e| panic!("TLS drip: {e}"));
        let text = String::from_utf8_lossy(&seen);
        assert!(seen.is_empty() || text.starts_with("HTTP/1.1 408 "), "TLS drip: {text}");
        assert!(took < header.max(body) + Duration::from_millis(1500), "a TLS drip ran {took:?}");
    }
    assert_eq!(host(&f, "node01")["flagged"], false, "a PUT whose body never came set a flag");
    f.stop();
}

#[test]
fn oversized_headers_are_refused_over_both_listeners() {
    let mut f = start_tls_limited(limits(10_000, 10_000, 10_000, 256));
    let huge =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    for tls in [false, true] {
        let mut c = if tls { Conn::open_tls(&f) } else { Conn::open(&f) };
        let _ = c.send(huge.as_bytes()); // the server may close before it has read it all
        let (r, took) = timed(|| c.response(false));
        let over = if tls { "TLS" } else { "plain" };
        match r {
            Ok(r) => assert_eq!(r.status, 431, "{over}: {}", r.text()),
            Err(e) => {
                assert!(e.starts_with("closed") || e.starts_with("read failed"), "{over}: {e}")
            }
        }
        assert!(took < PROMPT, "{over}: refused after {took:?}");
    }
    assert!(healthz_ok(&f) && tls_healthz_ok(&f));
    f.stop();
}
