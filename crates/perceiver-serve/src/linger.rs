//! Lingering close: read and discard what a client still sends after its request was answered
//! without reading the whole body, so that the client reads the answer instead of a reset.
//!
//! A route that refuses a request early (413 for a body over the payload limit, 401, 404, 405)
//! leaves the rest of the body unread. hyper then closes the connection, and a socket closed
//! with unread bytes in its receive buffer, or receiving more, answers with a TCP reset. A client
//! that writes its whole body before it reads (Python's `urllib` and `requests` do) is still
//! writing when the reset comes: it reports "connection reset" and never sees the JSON error,
//! which sits discarded in its receive buffer. nginx's `lingering_close` solves this by reading
//! and discarding for a while before closing; this module's middleware does the same before
//! handing the answer to hyper, within [`LINGER_MAX_BYTES`], [`LINGER_MAX_TIME`] and
//! [`LINGER_IDLE`] (past them the client gets the reset it would have got anyway). A body read
//! to its end also lets the connection stay open for the next request.
//!
//! A client that sent `Expect: 100-continue` and whose body was never read has not sent it
//! (hyper sends `100 Continue` only once the body is read): nothing is drained, the client reads
//! the answer and sends nothing more.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::EXPECT;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// Most bytes of an unread body discarded before the connection is closed anyway.
pub const LINGER_MAX_BYTES: usize = 64 << 20;
/// Longest the discarding lasts in all (nginx's `lingering_time` default).
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(30);
/// Longest the client may stay silent while its body is discarded (nginx's
/// `lingering_timeout` default).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Middleware: runs the request, then, if its body was left unread, discards the rest (within
/// the bounds above) before the answer goes out.
pub(crate) async fn lingering_close(request: Request, next: Next) -> Response {
    let expects_continue = request
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = request.into_parts();
    let (give_back, mut returned) = oneshot::channel();
    let watched = Watched {
        inner: Some(body),
        polled: false,
        give_back: Some(give_back),
    };
    let response = next.run(Request::from_parts(parts, Body::new(watched))).await;
    // A body that already outlasted the body timeout is not waited for again (the 408 closes).
    if response.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
        return response;
    }
    // The request, and with it the body, is dropped once the handler has answered.
    if let Ok(Leftover { body, polled }) = returned.try_recv() {
        if polled || !expects_continue {
            discard(body).await;
        }
    }
    response
}

/// Reads and drops the rest of `body`, within the bounds.
async fn discard(mut body: Body) {
    use axum::body::HttpBody;
    let deadline = tokio::time::Instant::now() + LINGER_MAX_TIME;
    let mut discarded = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let idle = tokio::time::Instant::now() + LINGER_IDLE;
        match tokio::time::timeout_at(deadline.min(idle), next).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, Bytes::len);
                if discarded > LINGER_MAX_BYTES {
                    tracing::debug!("stopped discarding an unread body after {discarded} bytes");
                    return;
                }
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!("the client's body ended in error while discarded: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("the client went silent while its unread body was discarded");
                return;
            }
        }
    }
}

/// What a [`Watched`] body hands back when dropped before its end.
struct Leftover {
    body: Body,
    /// Whether anything read it (then hyper has sent `100 Continue` if it was asked for).
    polled: bool,
}

/// A request body that, dropped before its end, hands itself back to [`lingering_close`].
struct Watched {
    /// `None` once the body has ended.
    inner: Option<Body>,
    polled: bool,
    give_back: Option<oneshot::Sender<Leftover>>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let frame = Pin::new(inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        if let Some(give_back) = self.give_back.take() {
            // The middleware may be gone already (its task cancelled): nothing to do then.
            let _ = give_back.send(Leftover {
                body,
                polled: self.polled,
            });
        }
    }
}
