//! What handlers answer: a [`Reply`] on success, an [`HttpError`] otherwise. The HTTP adapter
//! ([`crate::serve::web::accept`]) turns both into responses; nothing else builds a status line.

use serde::Serialize;
use std::io::Read;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A successful answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Payload,
    pub headers: Vec<(&'static str, String)>,
}

pub enum Payload {
    Text(String),
    /// A reader and the exact number of bytes it yields (sent as `Content-Length`).
    Stream(Box<dyn Read + Send>, u64),
    /// Buffers already in memory (a node image's template runs and patches), and their total.
    Chunks(Box<dyn Iterator<Item = bytes::Bytes> + Send>, u64),
    /// A payload whose end is reported: [`OnSent`] is called once, when the body has been
    /// handed to the connection whole or the connection dropped it (a client that went away, a
    /// send deadline). Only handlers that record fetches use it; others pay nothing.
    Watched(Box<Payload>, OnSent),
}

/// How a watched body ended: body bytes handed to the connection, and whether that was all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub complete: bool,
}

/// Called once with how a [`Payload::Watched`] body ended. Not called for a `HEAD` answer,
/// which sends no body.
pub type OnSent = Box<dyn FnOnce(Sent) + Send>;

impl Reply {
    pub fn json(value: &impl Serialize) -> Reply {
        let mut body = serde_json::to_string(value).expect("answers serialise");
        body.push('\n');
        Reply { status: 200, content_type: JSON, body: Payload::Text(body), headers: Vec::new() }
    }

    pub fn text(body: String) -> Reply {
        Reply { status: 200, content_type: TEXT, body: Payload::Text(body), headers: Vec::new() }
    }

    /// Calls `on_sent` once the body has been sent or cut (see [`Payload::Watched`]).
    pub fn watched(mut self, on_sent: OnSent) -> Reply {
        let body = std::mem::replace(&mut self.body, Payload::Text(String::new()));
        self.body = Payload::Watched(Box::new(body), on_sent);
        self
    }

    pub fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Every failed request, whatever the route: a status, a message for the caller (answered as
/// `{"error": message}`) and the headers some statuses need.
///
/// A message is shown to whoever sent the request, so it never holds a path on the server, a
/// secret or text of the request; details of server-side failures go to the log
/// ([`HttpError::internal`]).
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), headers: Vec::new() }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(404, message)
    }

    /// 405 with the `Allow` header the route accepts.
    pub fn method_not_allowed(allow: &'static str) -> HttpError {
        HttpError::new(405, format!("method not allowed here; use {allow}"))
            .header("Allow", allow.to_string())
    }

    /// A failure of the server itself: `detail` goes to the log, the caller sees a generic 500.
    pub fn internal(detail: impl std::fmt::Display) -> HttpError {
        tracing::error!("{detail}");
        HttpError::new(500, "internal error; the server log has the details")
    }

    /// The host's state is locked elsewhere for longer than a request may wait.
    pub fn busy() -> HttpError {
        HttpError::new(503, "the host's state is locked by another request or instance; try again")
            .header("Retry-After", "1".into())
    }

    pub fn header(mut self, name: &'static str, value: String) -> HttpError {
        self.headers.push((name, value));
        self
    }

    pub fn into_reply(self) -> Reply {
        let mut body = crate::serve::util::error_json(&self.message);
        body.push('\n');
        Reply {
            status: self.status,
            content_type: JSON,
            body: Payload::Text(body),
            headers: self.headers,
        }
    }
}
