//! The fast path on a connection that is a stream, not a socket: TLS.
//!
//! The plain path reads with `recv` and answers with one `send` and `sendfile` straight on
//! the socket; through TLS every byte is encrypted in the process, so here the same heads
//! are parsed and answered by the same [`FastPath`] ([`super::conn::look`]), read and
//! written through the stream, a file body read in chunks and written after it. What the
//! fast path does not take goes to hyper with the bytes read so far, as on the plain path.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};

use super::conn::{look, Buffers, ConnLimits, Served, Step, PACED_CHUNK, READ_CHUNK};
use super::stop::{Stop, StopWatch};
use super::FileBody;

/// Bytes of a file body read and written at a time: a TLS record holds 16 KiB, and four
/// make one write.
const FILE_CHUNK: usize = 64 * 1024;

/// Serve `stream`'s requests on the fast path until the client closes, a limit is hit, the
/// server stops, or a request is not the fast path's (then hyper takes the rest).
pub(crate) async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    fast: &dyn super::FastPath,
    limits: &ConnLimits,
    stop: &std::sync::Arc<Stop>,
) -> Served<S> {
    let mut stop = StopWatch::new(stop.clone());
    let mut bufs = Buffers::take();
    let Buffers { input, out } = &mut bufs;
    let mut waiting_since = Instant::now();
    loop {
        match look(input, peer, true, fast, out) {
            Step::More => {
                if input.len() >= limits.max_header_bytes {
                    let _ = timeout(
                        limits.stall,
                        stream.write_all(
                            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        ),
                    )
                    .await;
                    let _ = timeout(limits.stall, stream.shutdown()).await;
                    return Served::Closed;
                }
                let idle = input.is_empty();
                if idle && stop.is_raised() {
                    return Served::Closed;
                }
                let room = (limits.max_header_bytes - input.len()).clamp(1, READ_CHUNK);
                let deadline = waiting_since + limits.header_timeout;
                let mut room = bytes::BufMut::limit(&mut *input, room);
                let read = tokio::select! {
                    biased;
                    r = stream.read_buf(&mut room) => r,
                    _ = sleep_until(deadline) => {
                        tracing::debug!(%peer, "request head not complete in time; closing");
                        return Served::Closed;
                    }
                    _ = stop.raised(), if idle => return Served::Closed,
                };
                match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                }
            }
            Step::Handover => return Served::Handover(stream, std::mem::take(input)),
            Step::Send {
                consumed,
                at: _,
                close,
                file,
            } => {
                if send(&mut stream, out, limits.stall).await.is_err() {
                    return Served::Closed;
                }
                if let Some(body) = file {
                    if let Err(e) = send_file(&mut stream, body, limits.stall).await {
                        tracing::debug!(%peer, error = %e, "file body not sent whole; closing");
                        return Served::Closed;
                    }
                }
                if close || stop.is_raised() {
                    let _ = timeout(limits.stall, stream.shutdown()).await;
                    return Served::Closed;
                }
                input.drain(..consumed);
                waiting_since = Instant::now();
            }
        }
    }
}

/// Write `buf` and push it out (a TLS stream holds what the socket did not take until it is
/// flushed); a client that takes nothing for `stall` is given up on.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
    stall: Duration,
) -> io::Result<()> {
    match timeout(stall, async {
        stream.write_all(buf).await?;
        stream.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(?stall, "client stopped reading; connection dropped");
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

/// A file body, read in chunks and written through the stream, paced if it has a pace. A
/// file cut short is an error: its length was promised.
async fn send_file<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: FileBody,
    stall: Duration,
) -> io::Result<()> {
    let FileBody {
        file,
        offset,
        len,
        guard,
        pace,
    } = body;
    let _guard = guard;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::other("body range overflows"))?;
    let step = if pace.is_some() {
        FILE_CHUNK.min(PACED_CHUNK)
    } else {
        FILE_CHUNK
    };
    let mut chunk = vec![0u8; step];
    let mut pos = offset;
    while pos < end {
        let want = ((end - pos) as usize).min(step);
        if let Some(p) = &pace {
            p.take(want).await;
        }
        // From the page cache nearly always, as `sendfile` reads: not worth a thread hop.
        let n = file.read_at(&mut chunk[..want], pos)?;
        if n == 0 {
            return Err(io::Error::other("file shorter than its length"));
        }
        send(stream, &chunk[..n], stall).await?;
        pos += n as u64;
    }
    Ok(())
}
