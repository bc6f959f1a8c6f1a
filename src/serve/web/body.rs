//! Responses: `Content-Length` always, bodies streamed from memory or a reader, and a send
//! deadline on the connection.

use crate::serve::web::limits::*;

use crate::serve::web::reply::{OnSent, Payload, Sent};

use crate::serve::web::reply::Reply;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) type ResBody = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::Either<ChannelBody, IterBody>,
>;

/// Builds the response. HEAD answers keep `Content-Length` and send no body.
pub(crate) fn to_response(reply: Reply, head: bool) -> hyper::Response<ResBody> {
    let status = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let empty = || http_body_util::Either::Left(http_body_util::Full::new(Bytes::new()));
    let (payload, watch) = match reply.body {
        // A HEAD answer sends no body: nothing to report, the callback is dropped uncalled.
        Payload::Watched(inner, _) if head => (*inner, None),
        // A text body becomes one chunk, so the same body type reports its end.
        Payload::Watched(inner, on_sent) => match *inner {
            Payload::Text(text) => {
                let len = text.len() as u64;
                let chunk = Bytes::from(text);
                (Payload::Chunks(Box::new(std::iter::once(chunk)), len), Some(on_sent))
            }
            other => (other, Some(on_sent)),
        },
        other => (other, None),
    };
    let watch = watch.map(|on_sent| Watch { on_sent: Some(on_sent), sent: 0 });
    let (len, body) = match payload {
        // Nested watches are not made by any handler; the inner one is dropped uncalled.
        Payload::Watched(..) => (0, empty()),
        Payload::Text(text) if head => (text.len() as u64, empty()),
        Payload::Text(text) => {
            let len = text.len() as u64;
            (len, http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(text))))
        }
        Payload::Stream(_, len) | Payload::Chunks(_, len) if head => (len, empty()),
        Payload::Stream(reader, len) => {
            let mut body = pump(reader, len);
            body.watch = watch;
            (len, http_body_util::Either::Right(http_body_util::Either::Left(body)))
        }
        Payload::Chunks(chunks, len) => (
            len,
            http_body_util::Either::Right(http_body_util::Either::Right(IterBody {
                chunks,
                remaining: len,
                watch,
            })),
        ),
    };
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    // A 304 has no body, and its Content-Length would have to be the full image's: omit it.
    if status != hyper::StatusCode::NOT_MODIFIED {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            headers.append(k, v);
        }
    }
    response
}

/// The end of a watched body ([`Payload::Watched`]): counts what was handed to the
/// connection, and reports it once, when the body is dropped (hyper drops it after its last
/// frame, or when the connection ends early). A plain struct in the body, not a wrapper type:
/// bodies without a watch carry a `None` and pay one branch per frame.
struct Watch {
    on_sent: Option<OnSent>,
    sent: u64,
}

impl Watch {
    fn end(&mut self, complete: bool) {
        if let Some(on_sent) = self.on_sent.take() {
            on_sent(Sent { bytes: self.sent, complete });
        }
    }
}

/// A body of buffers already in memory: each poll hands hyper the next one, without copying.
pub struct IterBody {
    chunks: Box<dyn Iterator<Item = Bytes> + Send>,
    remaining: u64,
    watch: Option<Watch>,
}

impl Drop for IterBody {
    fn drop(&mut self) {
        let complete = self.remaining == 0;
        if let Some(w) = &mut self.watch {
            w.end(complete);
        }
    }
}

impl hyper::body::Body for IterBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(match self.chunks.next() {
            Some(bytes) if bytes.len() as u64 <= self.remaining => {
                self.remaining -= bytes.len() as u64;
                if let Some(w) = &mut self.watch {
                    w.sent += bytes.len() as u64;
                }
                Ok(hyper::body::Frame::data(bytes))
            }
            // Never more or fewer bytes than announced: cut the connection instead.
            _ => Err(std::io::Error::other("the body does not match its announced length")),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// A body fed by [`pump`]: chunks of a file read on the blocking pool.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: u64,
    watch: Option<Watch>,
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        let complete = self.remaining == 0;
        if let Some(w) = &mut self.watch {
            w.end(complete);
        }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|chunk| {
            chunk.map(|chunk| {
                chunk.map(|bytes| {
                    self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                    if let Some(w) = &mut self.watch {
                        w.sent += bytes.len() as u64;
                    }
                    hyper::body::Frame::data(bytes)
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// Streams `len` bytes of `reader` without holding the file in memory: each chunk is read on the
/// blocking pool (a thread is held only while reading, not while a slow client drains), and at
/// most two chunks wait in the channel. A reader that ends early fails the body, so the client
/// sees a cut connection rather than a short file.
fn pump(reader: Box<dyn Read + Send>, len: u64) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut reader = reader;
        let mut left = len;
        while left > 0 {
            let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let result = reader.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                (reader, result)
            })
            .await;
            let Ok((r, result)) = read else {
                let _ = tx.send(Err(std::io::Error::other("a file read failed"))).await;
                return;
            };
            reader = r;
            let chunk = match result {
                Ok(buf) if !buf.is_empty() => {
                    left -= buf.len() as u64;
                    Ok(Bytes::from(buf))
                }
                Ok(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than announced",
                )),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return; // the client went away, or the read failed
            }
        }
    });
    ChannelBody { rx, remaining: len, watch: None }
}

/// A connection whose writes fail once the peer has not taken a single byte for `timeout`, so a
/// client that stops reading a response cannot hold its connection (and its slot) forever.
pub(crate) struct SendDeadline {
    inner: tokio::net::TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SendDeadline {
    pub(crate) fn new(inner: tokio::net::TcpStream, timeout: Duration) -> Self {
        SendDeadline { inner, timeout, stalled: None }
    }

    /// After a write attempt: progress disarms the deadline; a write that would block arms it,
    /// or reports it passed.
    fn track(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Pending => self.poll_stalled(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    /// Called when a write would block: arms the deadline, or reports it passed.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    fn watched(text: &str, head: bool) -> (hyper::Response<ResBody>, Arc<Mutex<Vec<Sent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let reply =
            Reply::text(text.into()).watched(Box::new(move |sent| s.lock().unwrap().push(sent)));
        (to_response(reply, head), seen)
    }

    #[test]
    fn a_watched_body_reports_once_what_was_sent_and_whether_all_was() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (response, seen) = watched("hello", false);
        assert_eq!(response.headers()[CONTENT_LENGTH], "5");
        let body = rt.block_on(response.into_body().collect()).unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(*seen.lock().unwrap(), [Sent { bytes: 5, complete: true }]);
        // Cut before a byte went: reported as such.
        let (response, seen) = watched("hello", false);
        drop(response);
        assert_eq!(*seen.lock().unwrap(), [Sent { bytes: 0, complete: false }]);
        // HEAD sends no body: nothing to report.
        let (response, seen) = watched("hello", true);
        assert_eq!(response.headers()[CONTENT_LENGTH], "5");
        drop(response);
        assert!(seen.lock().unwrap().is_empty());
    }
}
