//! A stand-in boot service: a tiny HTTP/1.0 listener on 127.0.0.1 that records what the guest
//! asked for and answers from a table of path prefixes.
//!
//! It is deliberately not the real `serve` code: the boot tests check what the *media* send, so
//! the thing on the other end must be simple enough to trust by reading it. QEMU's user-mode
//! network (slirp) forwards the guest's connections to 10.0.2.2 to the host's 127.0.0.1, so the
//! guest reaches this listener as `http://10.0.2.2:PORT` ([`Listener::url_for_guest`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default answer to `/boot/…`: say so on the console and power off, so that QEMU exits as
/// soon as the request has been answered instead of running into its timeout. The second line is
/// there because SeaBIOS's serial mirror flushes lazily: the last line before power-off can be
/// cut short, so the marker must not be the last thing printed.
pub const POWEROFF_SCRIPT: &str =
    "#!ipxe\necho bootforge-test: answered\necho bootforge-test: powering off\npoweroff\n";

/// The console line [`POWEROFF_SCRIPT`] prints.
pub const ANSWERED_MARKER: &str = "bootforge-test: answered";

/// The listener stops accepting on its own after this long, so a test that forgets it (or a
/// leaked thread after a panic) cannot keep a port open for the rest of the run.
const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// One request as the guest sent it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query, e.g. `/boot/node01`.
    pub path: String,
    /// The query, percent-decoded. A repeated key keeps its last value.
    pub query: BTreeMap<String, String>,
    /// The request target exactly as sent (path and query).
    pub target: String,
    /// When it arrived, relative to the listener's start.
    pub after: Duration,
}

impl Request {
    /// The value of query key `key`, or "" when absent (handy in `assert_eq!`).
    pub fn q(&self, key: &str) -> &str {
        self.query.get(key).map_or("", String::as_str)
    }
}

/// What the listener sends back for a path prefix.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn ok(body: &str) -> Answer {
        Answer { status: 200, body: body.to_string() }
    }

    pub fn status(status: u16) -> Answer {
        Answer { status, body: format!("status {status}\n") }
    }
}

struct Shared {
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    routes: Mutex<Vec<(String, Answer)>>,
    stop: AtomicBool,
}

/// A running listener; it stops when dropped.
pub struct Listener {
    port: u16,
    started: Instant,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts a listener that answers `/boot/` with [`POWEROFF_SCRIPT`] and everything else with
    /// 404.
    pub fn start() -> Listener {
        Listener::with_routes(vec![("/boot/".to_string(), Answer::ok(POWEROFF_SCRIPT))])
    }

    /// Starts a listener with its own table of `(path prefix, answer)`; the first matching prefix
    /// wins and an unmatched path gets 404.
    pub fn with_routes(routes: Vec<(String, Answer)>) -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind the test HTTP listener");
        // Non-blocking accept lets the thread notice `stop` and its own deadline.
        socket.set_nonblocking(true).expect("make the listener non-blocking");
        let port = socket.local_addr().expect("listener address").port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            routes: Mutex::new(routes),
            stop: AtomicBool::new(false),
        });
        let started = Instant::now();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("test-http-{port}"))
                .spawn(move || accept_loop(socket, shared, started))
                .expect("spawn the listener thread")
        };
        Listener { port, started, shared, thread: Some(thread) }
    }

    /// Replaces the answer for `prefix` (or adds it in front).
    pub fn set_answer(&self, prefix: &str, answer: Answer) {
        let mut routes = self.shared.routes.lock().unwrap();
        routes.retain(|(p, _)| p != prefix);
        routes.insert(0, (prefix.to_string(), answer));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL as the guest sees it through QEMU's user-mode network.
    pub fn url_for_guest(&self) -> String {
        format!("http://10.0.2.2:{}", self.port)
    }

    /// The base URL as the host sees it.
    pub fn url_for_host(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until some request satisfies `pred` and returns it, or `None` after `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Request) -> bool) -> Option<Request> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.shared.requests.lock().unwrap();
        loop {
            if let Some(r) = requests.iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            requests = self.shared.arrived.wait_timeout(requests, deadline - now).unwrap().0;
        }
    }

    /// Waits for `GET /boot/HOSTNAME`.
    pub fn wait_for_boot(&self, hostname: &str, timeout: Duration) -> Option<Request> {
        let path = format!("/boot/{hostname}");
        self.wait_for(timeout, |r| r.method == "GET" && r.path == path)
    }

    /// The requests as text, one per line, for failure messages.
    pub fn log(&self) -> String {
        let requests = self.requests();
        if requests.is_empty() {
            return format!("(listener on port {} received no requests)", self.port);
        }
        let mut s = String::new();
        for r in requests {
            let _ = writeln!(s, "+{:.1}s {} {}", r.after.as_secs_f64(), r.method, r.target);
        }
        s
    }

    /// Seconds since the listener started, for timing reports.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Returns a guest URL on which nothing listens: a port that was bound and then closed, so the
/// guest's connection is refused (slirp answers with a reset) rather than timing out.
pub fn closed_url_for_guest() -> String {
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    let port = socket.local_addr().expect("throwaway address").port();
    drop(socket);
    format!("http://10.0.2.2:{port}")
}

fn accept_loop(socket: TcpListener, shared: Arc<Shared>, started: Instant) {
    while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < MAX_LIFETIME {
        match socket.accept() {
            Ok((stream, _)) => {
                // Requests are tiny and answered at once; one at a time is plenty.
                if let Err(e) = serve_one(stream, &shared, started) {
                    eprintln!("test listener: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("test listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_one(mut stream: TcpStream, shared: &Shared, started: Instant) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = split_target(&target);

    let answer = shared
        .routes
        .lock()
        .unwrap()
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| Answer::status(404));
    let request = Request { method, path, query, target, after: started.elapsed() };
    shared.requests.lock().unwrap().push(request);
    shared.arrived.notify_all();

    let reason = match answer.status {
        200 => "OK",
        404 => "Not Found",
        _ => "Status",
    };
    let response = format!(
        "HTTP/1.0 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

fn split_target(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    (decode(path), query)
}
