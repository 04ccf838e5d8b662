//! The hot path: plain HTTP/1.1 `GET` and `HEAD` requests answered without the full stack.
//!
//! Nearly every request a mirror sees is one of three: a customer's download redirected by
//! the server, a BitTorrent announce, a file sent by a volunteer. Through hyper and axum each
//! cost several allocations, a header map, routing and a body stream (a task and a channel
//! per file, for the stall guard), more than the system calls the answer needs. Here a
//! connection's requests are parsed in place (`httparse`, the parser hyper uses), handed to a
//! [`FastPath`] as borrowed bytes, and answered from one reused buffer in one write; a file's
//! body goes out with `sendfile`.
//!
//! Anything else is not this module's business: a request with a body, an unusual header, a
//! route the [`FastPath`] does not know, or a malformed head is passed, with the bytes read
//! so far, to hyper, which serves the rest of that connection as it always did. So the fast
//! path can stay small and the full stack keeps every edge case.
//!
//! A connection's first request is answered by the accepting thread before the socket is
//! registered with the runtime (`answer_first`). A keep-alive connection that then waits for
//! its next request is parked in the thread's own epoll set (`parked`), and the accepting
//! thread answers its requests the same way (`answer_next`); a connection with more to do
//! goes on in a task of its own (`serve_connection`).
//!
//! A TLS connection has no socket to `recv` and `sendfile` on: its requests are read and
//! answered the same way through the TLS stream, in its task (`stream`).
//!
//! The limits of [`crate::listen`] hold here too: the header deadline, the head size bound,
//! and a client that stops reading loses its connection (and its download slot) after the
//! stall time.

mod conn;
mod date;
mod parked;
#[cfg(any(test, feature = "replay"))]
pub mod replay;
mod rewind;
mod stop;
mod stream;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use conn::{answer_first, serve_connection, ConnLimits, First, Served, Start};
pub(crate) use parked::{Parked, Unparked};
pub(crate) use rewind::Rewind;
pub(crate) use stop::Stop;
pub(crate) use stream::serve_stream;

/// The methods the fast path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// One parsed request, borrowed from the connection's buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// The request target as sent: an origin-form path (it starts with `/`), maybe a query.
    pub target: &'a str,
    pub peer: SocketAddr,
    /// It came over TLS (a [`crate::listen::serve_tls`] listener).
    pub secure: bool,
    /// When its head was complete: the one clock reading a fast answer needs.
    pub received: std::time::Instant,
    headers: &'a [httparse::Header<'a>],
}

impl<'a> Request<'a> {
    /// The target's path, still percent-encoded.
    pub fn path(&self) -> &'a str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    /// The raw query string, if the target has one.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// Every value of the headers called `name`.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// A response being written into the connection's output buffer.
pub struct Reply<'b> {
    out: &'b mut Vec<u8>,
    head_only: bool,
    close: bool,
    /// The request's [`Request::received`], for the `date` header.
    at: std::time::Instant,
}

impl<'b> Reply<'b> {
    pub(crate) fn new(
        out: &'b mut Vec<u8>,
        head_only: bool,
        close: bool,
        at: std::time::Instant,
    ) -> Self {
        out.clear();
        Reply {
            out,
            head_only,
            close,
            at,
        }
    }

    /// The status line and the headers every answer carries (`date`, and `connection:
    /// close` when the connection ends after it). Call once, first.
    pub fn status(&mut self, code: u16, reason: &str) {
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(reason.as_bytes());
        self.out.extend_from_slice(b"\r\ndate: ");
        date::with_now(self.at, |d| self.out.extend_from_slice(d));
        self.out.extend_from_slice(b"\r\n");
        if self.close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
    }

    /// One header. Names are lowercase, as hyper sends them; values must be valid header
    /// values (the caller built them from checked parts).
    pub fn header(&mut self, name: &str, value: &[u8]) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A header whose value is a number.
    pub fn header_u64(&mut self, name: &str, value: u64) {
        self.header(name, itoa::Buffer::new().format(value).as_bytes());
    }

    /// End the head with the body's length and append the body (unless this is a `HEAD`).
    pub fn body(&mut self, body: &[u8]) {
        self.end_head(body.len() as u64);
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// End the head of an answer whose `len` body bytes the connection sends from a file.
    pub fn end_head(&mut self, len: u64) {
        self.header_u64("content-length", len);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Whether the body is to be left out (a `HEAD` request).
    pub fn head_only(&self) -> bool {
        self.head_only
    }
}

/// What a [`FastPath`] made of a request.
pub enum Answer {
    /// The whole answer is in the [`Reply`].
    Done,
    /// The head is in the [`Reply`]; the body is a stretch of a file.
    File(FileBody),
    /// Not a request for the fast path: the full router answers it (anything written to the
    /// [`Reply`] is discarded).
    Pass,
}

/// A body sent from an open file with `sendfile`.
pub struct FileBody {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
    /// Kept alive until the body is sent or the client is gone (a download slot).
    pub guard: Box<dyn Send>,
    /// Paces the body (an uplink limit): each chunk waits for this first.
    pub pace: Option<Arc<dyn Pace>>,
}

/// A rate limit a file body is sent under.
pub trait Pace: Send + Sync {
    /// Wait until `n` more bytes may be sent.
    fn take(&self, n: usize) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A server's answers to the requests it can make without its router.
pub trait FastPath: Send + Sync + 'static {
    fn answer(&self, req: &Request<'_>, reply: &mut Reply<'_>) -> Answer;
}
