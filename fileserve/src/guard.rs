//! Tie a value's lifetime to a response body's transmission.
//!
//! The handler returns long before a large file has been sent, so a counter
//! of active downloads cannot be decremented when the handler returns; it
//! must be when the body finishes or is dropped (client went away).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Wrap `resp`'s body so that `guard` is dropped when the body has been
/// fully produced, fails, or is dropped unfinished — whichever comes first.
pub fn with_guard<G: Send + Sync + 'static>(resp: Response, guard: G) -> Response {
    resp.map(|inner| {
        Body::new(GuardedBody {
            inner,
            // Boxed so GuardedBody is Unpin whatever G is, without unsafe
            // pin projection; one allocation per response is negligible.
            guard: Some(Box::new(guard)),
        })
    })
}

/// Like [`with_guard`], and a client that takes nothing for `stall` loses its slot: the body
/// is produced by a task that hands one chunk at a time to the connection and gives up —
/// dropping `guard` and ending the body short, which closes the connection — when the client
/// stops reading. Without this a few clients that never read could hold every slot.
pub fn with_stall_guard<G: Send + 'static>(resp: Response, guard: G, stall: Duration) -> Response {
    resp.map(|body| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(1);
        tokio::spawn(async move {
            let _guard = guard;
            let mut stream = body.into_data_stream();
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                match tokio::time::timeout(stall, tx.send(item)).await {
                    Ok(Ok(())) if !failed => {}
                    Ok(_) => return,
                    Err(_) => {
                        tracing::info!(?stall, "client stopped reading; connection dropped");
                        return;
                    }
                }
            }
        });
        Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    })
}

struct GuardedBody<G> {
    inner: Body,
    guard: Option<Box<G>>,
}

impl<G> HttpBody for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // End of body or an error: nothing more will be sent.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.guard = None,
            // Servers may stop polling once is_end_stream() is true, so
            // release as soon as the last frame has been handed over.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.guard = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts live guards, like the active-connections counter it is for.
    struct Counted(Arc<AtomicUsize>);

    impl Counted {
        fn new(n: &Arc<AtomicUsize>) -> Counted {
            n.fetch_add(1, Ordering::SeqCst);
            Counted(n.clone())
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A body yielding fixed chunks one poll at a time, so tests can stop
    /// part-way through.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunked_response(n: usize) -> Response {
        let chunks = (0..n).map(|i| Bytes::from(vec![i as u8; 4])).collect();
        Response::new(Body::new(Chunks(chunks)))
    }

    #[tokio::test]
    async fn guard_lives_until_body_consumed() {
        let live = Arc::new(AtomicUsize::new(0));
        let resp = with_guard(chunked_response(3), Counted::new(&live));
        assert_eq!(live.load(Ordering::SeqCst), 1);

        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], &[0, 0, 0, 0]);
        assert_eq!(live.load(Ordering::SeqCst), 1, "released too early");

        let mut rest = Vec::new();
        while let Some(frame) = body.frame().await {
            rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(&rest[..], &[1, 1, 1, 1, 2, 2, 2, 2]);
        // Released at end of stream, while the body value still exists
        // (a server may keep it around until the connection is reused).
        assert_eq!(live.load(Ordering::SeqCst), 0);
        drop(body);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn guard_released_with_last_frame_of_sized_body() {
        // A sized body reports is_end_stream() after its last frame, and a
        // server may then never poll again: release right there.
        let live = Arc::new(AtomicUsize::new(0));
        let resp = with_guard(Response::new(Body::from("hello")), Counted::new(&live));
        let mut body = resp.into_body();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"hello");
        assert!(body.is_end_stream());
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn guard_dropped_when_body_dropped_early() {
        let live = Arc::new(AtomicUsize::new(0));
        let resp = with_guard(chunked_response(3), Counted::new(&live));
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(live.load(Ordering::SeqCst), 1);
        drop(body);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn guard_dropped_with_unpolled_response() {
        let live = Arc::new(AtomicUsize::new(0));
        let resp = with_guard(chunked_response(1), Counted::new(&live));
        assert_eq!(live.load(Ordering::SeqCst), 1);
        drop(resp);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn keeps_status_headers_and_size_hint() {
        let mut resp = Response::new(Body::from("hello"));
        *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        resp.headers_mut()
            .insert("x-test", http::HeaderValue::from_static("1"));
        let live = Arc::new(AtomicUsize::new(0));
        let resp = with_guard(resp, Counted::new(&live));
        assert_eq!(resp.status(), http::StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()["x-test"], "1");
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn ten_chunks() -> Response {
        let chunks = (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")));
        Response::new(Body::from_stream(futures_util::stream::iter(chunks)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_loses_its_slot() {
        let live = Arc::new(AtomicUsize::new(1));
        let resp = with_stall_guard(ten_chunks(), Live(live.clone()), Duration::from_secs(5));
        let mut body = resp.into_body();
        assert!(body.frame().await.is_some());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "still within the stall limit"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(live.load(Ordering::SeqCst), 0, "the slot is released");
        let mut rest = 0;
        while let Some(Ok(f)) = body.frame().await {
            rest += f.into_data().map(|d| d.len()).unwrap_or(0);
        }
        assert!(rest < 90, "the body ends short: {rest}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_reading_gets_everything() {
        let live = Arc::new(AtomicUsize::new(1));
        let resp = with_stall_guard(ten_chunks(), Live(live.clone()), Duration::from_secs(5));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 100);
        tokio::task::yield_now().await;
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
