//! The transport's bounds on what clients may hold, each with its reason.

use std::time::Duration;

/// Largest request body accepted (a reimage body is a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of an inventory upload or check (`PUT /inventory`, `POST /inventory/check`):
/// a CSV of tens of thousands of rows.
pub const MAX_UPLOAD: usize = 8 << 20;
/// Query parameters kept per request, and the longest value kept; the rest is ignored.
pub const MAX_PARAMS: usize = 32;
pub const MAX_PARAM_LEN: usize = 512;
/// Hops of `X-Forwarded-For` read, from the right, looking for the first that is not a trusted
/// proxy; a chain of more trusted proxies than this is refused. Bounds the work per request
/// whatever the header's length: nothing left of the client's hop is read at all.
pub const MAX_FORWARDED_HOPS: usize = 16;
/// Longest hop text parsed as an address (an IPv6 address with an embedded IPv4 is 45 bytes).
pub const MAX_HOP_LEN: usize = 64;
/// How long shutdown waits for requests in progress before dropping their connections.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How much of an oversized body is read and dropped before answering 413.
pub const DISCARD: usize = 4 << 20;
/// Read size when streaming a file.
pub const CHUNK: usize = 64 * 1024;

/// Bounds on what clients may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// For a request head, and for an idle keep-alive connection's next request.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// A response not read at all for this long is cut.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_peer: 256,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(15),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// How the transport runs, besides the handler.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// Proxies whose `X-Forwarded-For` names the client (see [`client_address`]).
    ///
    /// [`client_address`]: crate::serve::web::request::client_address
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The session cookie's name followed by `=`: only its value is kept of any `Cookie`.
    pub session_cookie: &'static str,
}
