//! One BMC's requests: authentication, timeouts, retries with backoff, same-origin redirects,
//! `If-Match`, task monitors, and the BMC's error messages made safe to show.
//!
//! Everything here is about HTTP; what the requests mean is in the parent module.

use super::{untrusted, BmcTarget, ClientOptions, Progress, RedfishError};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};

/// The most a BMC's answer may hold; Redfish resources are a few KiB.
const MAX_BODY: u64 = 4 << 20;
/// The most an answer may hold in a hardware state read ([`Session::for_state`]): those run
/// for every BMC at once, in the background, and need only a System and a virtual CD.
pub(super) const MAX_STATE_BODY: u64 = 256 << 10;
/// Redirects followed for one request (all within the BMC's own origin).
const MAX_REDIRECTS: usize = 3;
/// Longest pause a BMC's `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest message from a BMC kept in an error.
pub(super) const MAX_MESSAGE: usize = 300;

/// Which failures a request may be repeated after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// GET, PATCH and actions whose repetition is harmless (inserting the same image again,
    /// ejecting again): retried after connection errors, timeouts and any 5xx.
    Idempotent,
    /// Actions that must not happen twice (a reset): retried only when the request certainly
    /// did not run: the connection could not be made, or the BMC answered 503 or 429.
    Once,
}

/// A BMC's answer.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    /// The URL that answered (after redirects).
    pub url: String,
    pub etag: Option<String>,
    pub location: Option<String>,
    retry_after: Option<Duration>,
    /// The JSON body; `Null` when empty, a string when not JSON (bounded).
    pub body: Value,
}

/// How one attempt failed.
enum Failure {
    /// No HTTP answer: connect, TLS, DNS, timeout, reset.
    Transport { message: String, tls: bool, sent: bool },
    /// An answer that is not a success (boxed: a reply is large, a failure rare).
    Status(Box<Reply>),
}

/// The requests of one operation on one BMC.
pub(super) struct Session<'a> {
    agent: &'a ureq::Agent,
    opts: &'a ClientOptions,
    target: &'a BmcTarget,
    /// The operation's deadline: no attempt starts after it, and none is given more time
    /// than is left.
    progress: &'a Progress,
    /// `Basic …`: holds the password, so this type has no `Debug`.
    authorization: String,
    /// The most one answer may hold ([`MAX_BODY`] unless [`Session::for_state`]).
    max_body: u64,
}

impl<'a> Session<'a> {
    pub fn new(
        agent: &'a ureq::Agent,
        opts: &'a ClientOptions,
        target: &'a BmcTarget,
        progress: &'a Progress,
    ) -> Self {
        use base64::Engine as _;
        let pair = format!("{}:{}", target.credentials.user, target.credentials.password.expose());
        let authorization =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
        Session { agent, opts, target, progress, authorization, max_body: MAX_BODY }
    }

    /// This session with answers capped at [`MAX_STATE_BODY`]: for the background reads.
    pub fn for_state(self) -> Self {
        Session { max_body: MAX_STATE_BODY, ..self }
    }

    pub fn target(&self) -> &BmcTarget {
        self.target
    }

    /// Resolves a reference from the BMC (`@odata.id`, an action `target`, a `Location`) to a
    /// full URL. An absolute path is joined to the BMC's origin; a full URL must have that same
    /// origin, so the credentials are never sent anywhere else.
    pub fn resolve(&self, reference: &str) -> Result<String, RedfishError> {
        let origin = self.target.url.origin();
        let bad = |why: &str| RedfishError::Protocol {
            url: self.target.url.to_string(),
            message: format!("it pointed to {} ({why})", untrusted(reference, 200)),
        };
        if reference.is_empty()
            || reference.len() > 2048
            || reference.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("not a usable reference"));
        }
        if reference.starts_with('/') && !reference.starts_with("//") {
            return Ok(format!("{origin}{reference}"));
        }
        let lower = reference.to_ascii_lowercase();
        if lower.starts_with(&origin.to_ascii_lowercase())
            && matches!(reference.as_bytes().get(origin.len()), None | Some(b'/'))
        {
            return Ok(format!("{origin}{}", &reference[origin.len()..]));
        }
        Err(bad("outside the BMC's own origin; credentials are sent only there"))
    }

    pub fn get(&self, url: &str) -> Result<Reply, RedfishError> {
        self.send("GET", url, None, None, Retry::Idempotent)
    }

    /// PATCH with `If-Match` when the resource gave an ETag; waits for a task it starts.
    pub fn patch(
        &self,
        url: &str,
        body: &Value,
        etag: Option<&str>,
        what: &str,
    ) -> Result<Reply, RedfishError> {
        let reply = self.send("PATCH", url, Some(body), etag, Retry::Idempotent)?;
        self.finish_task(reply, what)
    }

    /// POST to an action's target; waits for a task it starts.
    pub fn post(
        &self,
        url: &str,
        body: &Value,
        retry: Retry,
        what: &str,
    ) -> Result<Reply, RedfishError> {
        let reply = self.send("POST", url, Some(body), None, retry)?;
        self.finish_task(reply, what)
    }

    /// One request with its retries and redirects.
    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        retry: Retry,
    ) -> Result<Reply, RedfishError> {
        let mut url = url.to_string();
        let mut redirects = 0;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.progress.check(&url)?;
            let failure = match self.once(method, &url, body, if_match) {
                Ok(reply) => return Ok(reply),
                Err(f) => f,
            };
            let (retryable, wait, error) = match failure {
                Failure::Status(reply) if is_redirect(reply.status) => {
                    let follow = matches!(reply.status, 307 | 308) || method == "GET";
                    match reply.location.as_deref() {
                        Some(loc) if follow && redirects < MAX_REDIRECTS => {
                            redirects += 1;
                            url = self.resolve(loc)?;
                            attempt -= 1;
                            continue;
                        }
                        _ => return Err(self.status_error(method, &reply)),
                    }
                }
                Failure::Status(reply) => {
                    let retryable = matches!(
                        (reply.status, retry),
                        (503 | 429, _) | (500..=599, Retry::Idempotent)
                    );
                    (retryable, reply.retry_after, self.status_error(method, &reply))
                }
                Failure::Transport { message, tls: true, .. } => {
                    return Err(RedfishError::Tls { url: url.clone(), message })
                }
                Failure::Transport { message, sent, .. } => (
                    !sent || retry == Retry::Idempotent,
                    None,
                    RedfishError::Unreachable { url: url.clone(), attempts: attempt, message },
                ),
            };
            // A failure at the deadline (a request cut short by it) is the deadline's.
            self.progress.check(&url)?;
            if !retryable || attempt > self.opts.retries {
                return Err(error);
            }
            let mut pause = backoff(self.opts.backoff, attempt).max(wait.unwrap_or_default());
            if let Some(left) = self.progress.left() {
                pause = pause.min(left);
            }
            tracing::debug!(%method, %url, attempt, ?pause, "BMC request failed; retrying: {error}");
            std::thread::sleep(pause);
        }
    }

    /// One attempt, no retry.
    fn once(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, Failure> {
        let mut req = self
            .agent
            .request(method, url)
            .set("Authorization", &self.authorization)
            .set("Accept", "application/json")
            .set("OData-Version", "4.0");
        if let Some(left) = self.progress.left() {
            req = req.timeout(self.opts.timeout.min(left).max(Duration::from_millis(1)));
        }
        if let Some(tag) = if_match {
            req = req.set("If-Match", tag);
        }
        let started = Instant::now();
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // ureq's text starts with the URL, which the error names already.
                let full = t.to_string();
                let mut message =
                    full.strip_prefix(&format!("{url}: ")).unwrap_or(&full).to_string();
                let mut source = std::error::Error::source(&t);
                while let Some(s) = source {
                    let text = s.to_string();
                    if !message.contains(&text) {
                        message = format!("{message}: {text}");
                    }
                    source = s.source();
                }
                let tls = message.contains("certificate") || message.contains("TLS");
                // Only a failure to connect proves the BMC never saw the request.
                let sent =
                    !matches!(t.kind(), ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns);
                tracing::debug!(%method, %url, "BMC request failed: {message}");
                return Err(Failure::Transport { message: untrusted(&message, 400), tls, sent });
            }
        };
        let reply = read_reply(response, self.max_body).map_err(|message| Failure::Transport {
            message,
            tls: false,
            sent: true,
        })?;
        tracing::debug!(%method, %url, status = reply.status, elapsed = ?started.elapsed(), "BMC answered");
        if (200..300).contains(&reply.status) {
            Ok(reply)
        } else {
            Err(Failure::Status(Box::new(reply)))
        }
    }

    fn status_error(&self, method: &str, reply: &Reply) -> RedfishError {
        if reply.status == 401 {
            return RedfishError::Unauthorized {
                url: reply.url.clone(),
                user: untrusted(&self.target.credentials.user, 64),
                from: self
                    .target
                    .credentials
                    .source
                    .clone()
                    .unwrap_or_else(|| "the credentials given".into()),
            };
        }
        RedfishError::Status {
            method: method.to_string(),
            url: reply.url.clone(),
            status: reply.status,
            message: bmc_message(&reply.body),
        }
    }

    /// Waits for the task a `202 Accepted` started, polling its monitor (`Location`, else the
    /// Task's `@odata.id`) until it ends or the task deadline passes. Any other reply is
    /// returned as it is.
    fn finish_task(&self, reply: Reply, what: &str) -> Result<Reply, RedfishError> {
        if reply.status != 202 {
            return Ok(reply);
        }
        let monitor = match reply.location.as_deref().or(reply.body["@odata.id"].as_str()) {
            Some(m) => self.resolve(m)?,
            // Accepted with nothing to follow: the BMC will do it; nothing more to learn.
            None => return Ok(reply),
        };
        let started = Instant::now();
        let mut polled = false;
        let mut pause = reply.retry_after;
        loop {
            let waited = started.elapsed();
            if waited >= self.opts.task_deadline {
                return Err(RedfishError::TaskTimeout {
                    what: what.to_string(),
                    url: monitor,
                    waited,
                });
            }
            self.progress.check(&monitor)?;
            let mut left = self.opts.task_deadline - waited;
            if let Some(overall) = self.progress.left() {
                left = left.min(overall);
            }
            std::thread::sleep(pause.unwrap_or(self.opts.task_poll).min(MAX_RETRY_AFTER).min(left));
            let reply = match self.send("GET", &monitor, None, None, Retry::Idempotent) {
                Ok(r) => r,
                // A finished task's monitor may be gone: that is the end of it.
                Err(RedfishError::Status { status: 404 | 410, .. }) if polled => {
                    return Ok(Reply {
                        status: 204,
                        url: monitor,
                        etag: None,
                        location: None,
                        retry_after: None,
                        body: Value::Null,
                    })
                }
                Err(e) => return Err(e),
            };
            polled = true;
            pause = reply.retry_after;
            if reply.status == 202 {
                continue;
            }
            let Some(state) = reply.body["TaskState"].as_str() else {
                // The monitor answered with the operation's own result.
                return Ok(reply);
            };
            match state {
                "Completed" if reply.body["TaskStatus"].as_str() != Some("Critical") => {
                    return Ok(reply)
                }
                "Completed" | "Exception" | "Killed" | "Cancelled" | "Interrupted" => {
                    return Err(RedfishError::TaskFailed {
                        what: what.to_string(),
                        url: monitor,
                        state: untrusted(state, 40),
                        message: task_messages(&reply.body),
                    })
                }
                _ => continue,
            }
        }
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// `base × 2^(attempt-1)`, at most 10 s, with ±25 % jitter so that many BMCs behind one
/// failing switch are not retried in lock step.
fn backoff(base: Duration, attempt: u32) -> Duration {
    use rand::Rng as _;
    let exp = base.saturating_mul(1 << (attempt - 1).min(10)).min(Duration::from_secs(10));
    exp.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

fn read_reply(response: ureq::Response, max_body: u64) -> Result<Reply, String> {
    let status = response.status();
    let url = response.get_url().to_string();
    let header = |name: &str| response.header(name).map(|v| v.trim().to_string());
    let etag = header("ETag").filter(|t| !t.is_empty() && t.len() <= 256);
    let location = header("Location");
    let retry_after = header("Retry-After")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(max_body + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the answer from {url}: {e}"))?;
    if bytes.len() as u64 > max_body {
        return Err(format!("the answer from {url} is larger than {max_body} bytes"));
    }
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(untrusted(&String::from_utf8_lossy(&bytes), 1000)))
    };
    Ok(Reply { status, url, etag, location, retry_after, body })
}

/// The BMC's own words from an error body: each `@Message.ExtendedInfo[].Message` (joined),
/// else `error.message`, else the text of a non-JSON body; made safe with [`untrusted`].
pub(super) fn bmc_message(body: &Value) -> String {
    let error = &body["error"];
    let extended: Vec<&str> = error["@Message.ExtendedInfo"]
        .as_array()
        .into_iter()
        .chain(body["@Message.ExtendedInfo"].as_array())
        .flatten()
        .filter_map(|m| m["Message"].as_str())
        .filter(|m| !m.trim().is_empty())
        .collect();
    let text = if !extended.is_empty() {
        extended.join("; ")
    } else if let Some(m) = error["message"].as_str() {
        m.to_string()
    } else if let Some(s) = body.as_str() {
        s.to_string()
    } else {
        String::new()
    };
    let text = untrusted(&text, MAX_MESSAGE);
    if text.is_empty() {
        "the BMC gave no message".into()
    } else {
        text
    }
}

/// A failed task's `Messages[].Message`, joined and made safe.
fn task_messages(task: &Value) -> String {
    let text: Vec<&str> = task["Messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["Message"].as_str())
        .collect();
    let text = untrusted(&text.join("; "), MAX_MESSAGE);
    if text.is_empty() {
        "the BMC gave no message".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_prefer_extended_info_then_message_then_text() {
        let body = json!({"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"Message": "first"}, {"MessageId": "x"}, {"Message": "second"}]}});
        assert_eq!(bmc_message(&body), "first; second");
        let body = json!({"error": {"message": "only this", "@Message.ExtendedInfo": [{"MessageId": "x"}]}});
        assert_eq!(bmc_message(&body), "only this");
        assert_eq!(bmc_message(&json!("plain text answer")), "plain text answer");
        assert_eq!(bmc_message(&Value::Null), "the BMC gave no message");
    }

    #[test]
    fn messages_are_bounded_and_lose_control_characters() {
        let evil = format!("line1\r\nline2\u{1b}[31m\u{202e}x{}", "A".repeat(5000));
        let m = bmc_message(&json!({"error": {"message": evil}}));
        assert!(m.starts_with("line1 line2[31mx"), "{m}");
        assert!(m.chars().count() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.ends_with('…'));
        assert!(!m.chars().any(|c| c.is_control()));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=20 {
            let d = backoff(base, attempt);
            let nominal =
                base.saturating_mul(1 << (attempt - 1).min(10)).min(Duration::from_secs(10));
            assert!(d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25), "{attempt}: {d:?}");
        }
    }
}
