//! One connection on the fast path: read a head, answer it or hand the connection to hyper,
//! and again, until the client closes, a limit is hit, or the server stops.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::stop::{Stop, StopWatch};
use super::wire::{AsyncWire, Wire};
use super::{Answer, FastPath, FileBody, Method, Reply, Request};

/// Headers a fast request may have; one with more goes to hyper (which allows 100).
pub(super) const MAX_HEADERS: usize = 32;

/// Bytes read from the socket at a time.
pub(super) const READ_CHUNK: usize = 4096;

/// Bytes handed to one `sendfile` call without an uplink limit: the kernel sends what the
/// socket takes and says how much.
const SENDFILE_MAX: usize = 16 << 20;

/// Bytes a paced body waits for at a time: one turn on a shared link, as in the full path.
pub(super) const PACED_CHUNK: usize = 64 * 1024;

/// The limits a connection is held to.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// A request head must be complete this long after the server starts waiting for it.
    pub header_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// A client that takes no bytes for this long is dropped.
    pub stall: Duration,
}

/// How a connection left the fast path.
pub(crate) enum Served<S> {
    /// It is finished: the client closed it, a limit was hit, or the server is stopping.
    Closed,
    /// The rest is hyper's: the connection and what was read of it but not answered.
    Handover(S, Vec<u8>),
}

/// What to do after looking at the buffered input.
pub(super) enum Step {
    /// No complete head yet.
    More,
    /// Answered: send `out` (and the file body), then drop `consumed` bytes of input.
    Send {
        consumed: usize,
        /// When the head was complete.
        at: std::time::Instant,
        close: bool,
        file: Option<FileBody>,
    },
    Handover,
}

/// Why reading stopped.
enum ReadEnd {
    Eof,
    TimedOut,
    Stopping,
    Failed,
}

/// What became of a request answered on a plain socket: a connection's first, as it was
/// accepted, or a parked keep-alive connection's next.
pub(crate) enum First {
    /// The connection is done with: answered and closed at the client's wish, or the client
    /// left or failed.
    Finished,
    /// Answered whole, nothing more read, the socket read dry: it waits for its next
    /// request and may be parked (see [`super::Parked`]) instead of given a task.
    Idle(Idle),
    /// The connection goes on, in a task of its own, from here.
    Continue(Start),
}

/// Where a connection's task takes over from [`answer_on`].
pub(crate) struct Start {
    bufs: Buffers,
    /// An answer made but not yet wholly sent (what is left of it is in `bufs.out`), or one
    /// with a file body to send.
    pending: Option<Step>,
    /// Whether an answer has gone out on the connection already.
    answered: bool,
    /// When the server started waiting for the next request's head.
    waiting_since: std::time::Instant,
    /// Whether Nagle's delay is off already.
    nodelay: bool,
}

/// A keep-alive connection between requests: answered, nothing buffered.
pub(crate) struct Idle {
    bufs: Buffers,
    /// Since when its next head is awaited (it is due a header timeout later).
    pub(crate) since: std::time::Instant,
    nodelay: bool,
}

impl Idle {
    /// The same connection, to go on in a task.
    pub(crate) fn into_start(self) -> Start {
        Start {
            bufs: self.bufs,
            pending: None,
            answered: true,
            waiting_since: self.since,
            nodelay: self.nodelay,
        }
    }
}

/// Read and answer a connection's first request on the accepting thread, before the
/// runtime knows of the socket (see [`crate::accept`]): with deferred accepts the request is
/// nearly always there already, and a client that makes a connection per request (an
/// announce, a wget) is then served with no task, no timer and no reactor registration.
/// Whatever has to wait (a head not yet whole, a client not taking the answer, a file body)
/// or is not the fast path's goes on in the connection's task, from where this left off.
pub(crate) fn answer_first(stream: &impl Wire, peer: SocketAddr, fast: &dyn FastPath) -> First {
    answer_on(stream, peer, fast, Buffers::take(), None)
}

/// [`answer_first`] for a parked keep-alive connection whose socket became readable: its
/// next request, answered the same way.
pub(crate) fn answer_next(
    stream: &impl Wire,
    peer: SocketAddr,
    fast: &dyn FastPath,
    idle: Idle,
) -> First {
    let Idle {
        bufs,
        since,
        nodelay,
    } = idle;
    answer_on(stream, peer, fast, bufs, Some((since, nodelay)))
}

/// Read what the socket has and answer the request it holds. `idle`: for a connection that
/// has answered before, since when it waits and whether Nagle's delay is off.
fn answer_on(
    stream: &impl Wire,
    peer: SocketAddr,
    fast: &dyn FastPath,
    mut bufs: Buffers,
    idle: Option<(std::time::Instant, bool)>,
) -> First {
    let answered = idle.is_some();
    let mut nodelay = idle.is_some_and(|(_, off)| off);
    let room = READ_CHUNK;
    let read = stream.recv_now(&mut bufs.input, room);
    // Waiting for (the rest of) a head: a new connection from now, a parked one since it
    // was parked.
    let waiting = |bufs: Buffers| {
        let since = idle.map_or_else(std::time::Instant::now, |(t, _)| t);
        between_requests(bufs, answered, since, nodelay, true)
    };
    let read_dry = match read {
        Ok(0) => return First::Finished,
        Ok(n) => n < room,
        Err(e) if not_yet(&e) => return waiting(bufs),
        Err(_) => return First::Finished,
    };
    let step = look(&bufs.input, peer, false, fast, &mut bufs.out);
    match step {
        Step::Send {
            consumed,
            at,
            close,
            file: None,
        } => {
            // A second answer on a connection must not wait behind the first one's
            // unacknowledged bytes (see `serve_connection`).
            if answered && !nodelay {
                stream.nodelay();
                nodelay = true;
            }
            let out = &mut bufs.out;
            // An answer the connection closes after is sent with MSG_MORE: the kernel holds
            // it, and the close that follows at once puts the FIN on the same segment and
            // sends both, where a plain send went out alone and the FIN after it. One
            // segment fewer is one trip fewer through both ends' TCP stacks per announce.
            let hold = if close { libc::MSG_MORE } else { 0 };
            let sent = match stream.send_now(out, libc::MSG_NOSIGNAL | hold) {
                Ok(n) => n,
                Err(e) if not_yet(&e) => 0,
                Err(_) => return First::Finished,
            };
            if sent < out.len() {
                // The task sends the rest once the client takes it.
                out.drain(..sent);
                return First::Continue(Start {
                    bufs,
                    pending: Some(step),
                    answered,
                    waiting_since: at,
                    nodelay,
                });
            }
            if close {
                return First::Finished;
            }
            out.clear();
            bufs.input.drain(..consumed);
            between_requests(bufs, true, at, nodelay, read_dry)
        }
        Step::Send { at, .. } => First::Continue(Start {
            bufs,
            pending: Some(step),
            answered,
            waiting_since: at,
            nodelay,
        }),
        // Straight to hyper: asked again in the task, the fast path would do its work twice.
        Step::Handover => First::Continue(Start {
            bufs,
            pending: Some(step),
            answered,
            waiting_since: std::time::Instant::now(),
            nodelay,
        }),
        Step::More => waiting(bufs),
    }
}

/// A connection waiting for a head since `since`: idle, to be parked, if it has answered,
/// holds nothing unanswered and its socket was read dry (`dry`); else its task's start.
fn between_requests(
    bufs: Buffers,
    answered: bool,
    since: std::time::Instant,
    nodelay: bool,
    dry: bool,
) -> First {
    if answered && dry && bufs.input.is_empty() {
        return First::Idle(Idle {
            bufs,
            since,
            nodelay,
        });
    }
    First::Continue(Start {
        bufs,
        pending: None,
        answered,
        waiting_since: since,
        nodelay,
    })
}

/// A failed system call that only means "not now": nothing to read or no room to write yet,
/// or a signal came first.
fn not_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

pub(crate) async fn serve_connection<S: AsyncWire>(
    stream: S,
    peer: SocketAddr,
    fast: &dyn FastPath,
    limits: &ConnLimits,
    stop: &std::sync::Arc<Stop>,
    start: Start,
) -> Served<S> {
    let mut stop = StopWatch::new(stop.clone());
    let Start {
        mut bufs,
        mut pending,
        mut answered,
        waiting_since,
        mut nodelay,
    } = start;
    let Buffers { input, out } = &mut bufs;
    // When the server started waiting for the request it waits for: its head is due a
    // header timeout later. The timer behind that deadline is armed lazily (see
    // `read_more`), so a busy connection neither re-arms one nor computes a deadline per
    // request.
    let mut waiting_since = Instant::from_std(waiting_since);
    let timer = sleep_until(waiting_since + limits.header_timeout);
    tokio::pin!(timer);
    // Whether Nagle's delay is off (see `listen`) is in `nodelay`: turned off before any
    // write that could wait behind an earlier one's unacknowledged bytes.
    loop {
        let step = match pending.take() {
            Some(step) => step,
            None => look(input, peer, false, fast, out),
        };
        match step {
            Step::More => {
                if input.len() >= limits.max_header_bytes {
                    out.clear();
                    out.extend_from_slice(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    let _ = write_all(&stream, out, false, limits.stall).await;
                    return Served::Closed;
                }
                match read_more(
                    &stream,
                    input,
                    limits.max_header_bytes,
                    (waiting_since, limits.header_timeout),
                    timer.as_mut(),
                    &mut stop,
                )
                .await
                {
                    Ok(()) => {}
                    Err(ReadEnd::TimedOut) => {
                        tracing::debug!(%peer, "request head not complete in time; closing");
                        return Served::Closed;
                    }
                    Err(ReadEnd::Eof | ReadEnd::Stopping | ReadEnd::Failed) => {
                        return Served::Closed
                    }
                }
            }
            Step::Handover => return Served::Handover(stream, std::mem::take(input)),
            Step::Send {
                consumed,
                at,
                close,
                file,
            } => {
                // A head with a body behind it is sent with MSG_MORE: the kernel holds it
                // for the body's first bytes and sends both in one segment, not two
                // (perf: each segment on loopback is a trip through the whole stack).
                let more = file.as_ref().is_some_and(|b| b.len > 0);
                if !nodelay && (answered || more) {
                    stream.nodelay();
                    nodelay = true;
                }
                answered = true;
                // The last answer before a close is held the same way: the close then sends
                // it with the FIN in one segment (see `answer_first`).
                let last = close && file.is_none();
                if write_all(&stream, out, more || last, limits.stall)
                    .await
                    .is_err()
                {
                    return Served::Closed;
                }
                // The next head's deadline counts from when this answer was sent. For an
                // answer written at once that is the request's own clock reading (a few
                // microseconds earlier, one clock read fewer per request); a file body may
                // take minutes, so the clock is read again after it.
                let mut sent = at;
                if let Some(body) = file {
                    if let Err(e) = send_file(&stream, body, limits.stall).await {
                        tracing::debug!(%peer, error = %e, "file body not sent whole; closing");
                        return Served::Closed;
                    }
                    sent = std::time::Instant::now();
                }
                if close || stop.is_raised() {
                    return Served::Closed;
                }
                input.drain(..consumed);
                waiting_since = Instant::from_std(sent);
            }
        }
    }
}

/// A connection's input and output buffers, kept per thread between connections: with a
/// connection per announce (as BitTorrent clients make them), allocating and freeing them,
/// larger than what the allocator caches per thread, was a tenth of an announce's own time.
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) input: Vec<u8>,
    pub(super) out: Vec<u8>,
}

/// Buffers a thread keeps at most, and the largest it keeps (one grown for a long head is
/// let go).
const POOLED: usize = 256;
const POOLED_MAX_BYTES: usize = 64 * 1024;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers {
    pub(super) fn take() -> Buffers {
        let pooled = POOL.with(|p| p.borrow_mut().pop());
        pooled.unwrap_or_else(|| Buffers {
            input: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
        })
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        let keep = |v: &Vec<u8>| (1..=POOLED_MAX_BYTES).contains(&v.capacity());
        if !keep(&self.input) || !keep(&self.out) {
            return;
        }
        // `try_with`: a connection ending while its thread exits finds the pool gone. What
        // is not pooled is freed as usual once this returns.
        let _ = POOL.try_with(|p| {
            let Ok(mut p) = p.try_borrow_mut() else {
                return;
            };
            if p.len() < POOLED {
                let mut bufs = std::mem::take(self);
                bufs.input.clear();
                bufs.out.clear();
                p.push(bufs);
            }
        });
    }
}

/// Parse the head at the start of `input`, if it is complete, and answer it. `secure`: the
/// connection is TLS.
pub(super) fn look(
    input: &[u8],
    peer: SocketAddr,
    secure: bool,
    fast: &dyn FastPath,
    out: &mut Vec<u8>,
) -> Step {
    if input.is_empty() {
        return Step::More;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::More,
        // Malformed, or too many headers: hyper answers these as it always has.
        Err(_) => return Step::Handover,
    };
    let Some((method, target, close)) = simple(&req) else {
        return Step::Handover;
    };
    let at = std::time::Instant::now();
    let request = Request {
        method,
        target,
        peer,
        secure,
        received: at,
        headers: req.headers,
    };
    let mut reply = Reply::new(out, method == Method::Head, close, at);
    match fast.answer(&request, &mut reply) {
        Answer::Done => Step::Send {
            consumed,
            at,
            close,
            file: None,
        },
        Answer::File(body) => Step::Send {
            consumed,
            at,
            close,
            file: (method == Method::Get && body.len > 0).then_some(body),
        },
        Answer::Pass => Step::Handover,
    }
}

/// A request the fast path may take: HTTP/1.1 `GET` or `HEAD` of an origin-form target,
/// without a body, an `Expect` or an upgrade. Returns its method, target, and whether the
/// client asked to close the connection after it.
pub(super) fn simple<'a>(req: &httparse::Request<'_, 'a>) -> Option<(Method, &'a str, bool)> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return None,
    };
    let target = req.path?;
    if !target.starts_with('/') {
        return None;
    }
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        }
    }
    Some((method, target, close))
}

/// Read more of a request head into `input`, by the header deadline. While nothing of the
/// next request has arrived, the server stopping ends the wait too.
async fn read_more(
    stream: &impl AsyncWire,
    input: &mut Vec<u8>,
    max: usize,
    (since, header_timeout): (Instant, Duration),
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    stop: &mut StopWatch,
) -> Result<(), ReadEnd> {
    let idle = input.is_empty();
    if idle && stop.is_raised() {
        return Err(ReadEnd::Stopping);
    }
    loop {
        let room = (max - input.len().min(max)).clamp(1, READ_CHUNK);
        input.reserve(room);
        match stream.try_read(input, room) {
            Ok(0) => return Err(ReadEnd::Eof),
            Ok(n) => {
                if n < room {
                    // A short read took all there was. Say so, so that the next read waits
                    // for the socket to be readable instead of trying a `recv` that can only
                    // fail (one wasted system call per request on a keep-alive connection).
                    stream.read_dry();
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(ReadEnd::Failed),
        }
        // In this order, not at random: the socket is what is nearly always ready, and the
        // draw cost a random number per request.
        tokio::select! {
            biased;
            // `poll_read_ready` keeps the one waker in the socket's reader slot; the
            // `readable()` future linked itself into the socket's waiter list and out again,
            // a lock each way, on every request.
            r = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => {
                if r.is_err() {
                    return Err(ReadEnd::Failed);
                }
            }
            _ = &mut timer => {
                // The timer may be left from an earlier request's deadline: re-arm it for
                // this one's, and only give up once this one has passed.
                let deadline = since + header_timeout;
                if Instant::now() >= deadline {
                    return Err(ReadEnd::TimedOut);
                }
                timer.as_mut().reset(deadline);
            }
            _ = stop.raised(), if idle => return Err(ReadEnd::Stopping),
        }
    }
}

/// Write all of `buf`, flagged MSG_MORE if `more` (a body follows at once); a client that
/// takes nothing for `stall` is given up on.
async fn write_all(
    stream: &impl AsyncWire,
    mut buf: &[u8],
    more: bool,
    stall: Duration,
) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    while !buf.is_empty() {
        match stream.try_send(buf, flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, stall).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn writable(stream: &impl AsyncWire, stall: Duration) -> io::Result<()> {
    match tokio::time::timeout(stall, stream.writable()).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(?stall, "client stopped reading; connection dropped");
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

/// Send a file body with `sendfile`, paced if it has a pace. A file cut short is an error:
/// the length was promised, so the connection is closed rather than the body left short
/// and the next response taken for its end.
async fn send_file(stream: &impl AsyncWire, body: FileBody, stall: Duration) -> io::Result<()> {
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
    let mut pos = offset;
    while pos < end {
        let mut chunk = (end - pos).min(SENDFILE_MAX as u64) as usize;
        if let Some(p) = &pace {
            chunk = chunk.min(PACED_CHUNK);
            p.take(chunk).await;
        }
        let chunk_end = pos + chunk as u64;
        while pos < chunk_end {
            let want = (chunk_end - pos) as usize;
            let sent = stream.try_sendfile(&file, pos, want);
            match sent {
                Ok(0) => return Err(io::Error::other("file shorter than its length")),
                Ok(n) => pos += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, stall).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Option<(Method, String, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        simple(&req).map(|(m, t, c)| (m, t.to_string(), c))
    }

    #[test]
    fn buffers_come_back_empty_and_the_pool_stays_bounded() {
        std::thread::spawn(|| {
            let mut b = Buffers::take();
            b.input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            b.out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let ptr = b.input.as_ptr();
            drop(b);
            let again = Buffers::take();
            assert_eq!(again.input.as_ptr(), ptr, "the same buffer, reused");
            assert!(again.input.is_empty() && again.out.is_empty());
            drop(again);
            // A buffer grown past the limit is let go, not kept.
            let mut big = Buffers::take();
            big.input.reserve(POOLED_MAX_BYTES * 2);
            drop(big);
            assert_eq!(POOL.with(|p| p.borrow().len()), 0);
            let many: Vec<Buffers> = (0..POOLED + 10).map(|_| Buffers::take()).collect();
            drop(many);
            assert_eq!(POOL.with(|p| p.borrow().len()), POOLED);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn only_plain_gets_and_heads_are_simple() {
        assert_eq!(
            parse(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some((Method::Get, "/a?b".into(), false))
        );
        assert_eq!(
            parse(b"HEAD /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"),
            Some((Method::Head, "/a".into(), true))
        );
        assert!(parse(b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        for raw in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ] {
            assert_eq!(parse(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }
}
