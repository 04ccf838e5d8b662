//! Keep-alive connections between requests, waited for together in one epoll set per
//! serving thread.
//!
//! A connection that had answered and waited for its next request used to wait in a task of
//! its own, and each request then cost the runtime a wake, a schedule, a poll and the task's
//! state changes: some 7 % of the server's time per redirect on all cores, by perf. Parked
//! here, an idle connection is a socket in this thread's own epoll set and a slot. The
//! accept loop, woken once for a batch of ready sockets, answers each one's request on the
//! spot ([`answer_next`]), as it answers a connection's first ([`super::answer_first`]).
//! A connection left with something to wait for (half a head, an answer the socket did not
//! take whole, a file body, a request for the full router) leaves the set for a task, as
//! before, and stays there. Idle connections past their header timeout are closed by a
//! sweep once a second; all of them when the server stops.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::conn::{answer_next, First, Idle, Start};
use super::FastPath;

/// Ready sockets taken from the set at a time; with more ready, the set stays readable and
/// the accept loop comes back after a turn of its other work.
const BATCH: usize = 64;

/// One parked connection, with what the caller keeps alongside it (its admission).
struct Slot<H> {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    idle: Idle,
    held: H,
}

/// A connection that left the set to go on in a task.
pub(crate) struct Unparked<H> {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) start: Start,
    pub(crate) held: H,
}

/// The idle keep-alive connections of one serving thread.
pub(crate) struct Parked<H> {
    epoll: AsyncFd<OwnedFd>,
    slots: Vec<Option<Slot<H>>>,
    /// Empty slots, to reuse before growing.
    free: Vec<usize>,
    events: Vec<libc::epoll_event>,
}

impl<H> Parked<H> {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` keeps its descriptor open until it is dropped (with the
        // `AsyncFd`), and always returns that one from `as_raw_fd`.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Parked {
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; BATCH],
        })
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Park an idle connection until its socket has something to read. Given back, to go on
    /// in a task, if the set cannot take it.
    pub(crate) fn park(
        &mut self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        idle: Idle,
        held: H,
    ) -> Result<(), Box<Unparked<H>>> {
        let key = self.free.last().copied().unwrap_or(self.slots.len());
        // Level-triggered: a socket with bytes left after a turn is reported again.
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key as u64,
        };
        // SAFETY: both descriptors are open; `ev` is valid for the call.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            return Err(Box::new(Unparked {
                stream,
                peer,
                start: idle.into_start(),
                held,
            }));
        }
        let slot = Some(Slot {
            stream,
            peer,
            idle,
            held,
        });
        if key == self.slots.len() {
            self.slots.push(slot);
        } else {
            self.free.pop();
            self.slots[key] = slot;
        }
        Ok(())
    }

    /// Wait until parked sockets are readable, then answer the request each one holds. Those
    /// that must go on in a task are put in `out`; those the client closed are closed.
    /// Cancel-safe: nothing is taken from the set before the wait is over.
    pub(crate) async fn serve_ready(
        &mut self,
        fast: &dyn FastPath,
        out: &mut Vec<Unparked<H>>,
    ) -> io::Result<()> {
        let mut guard = self.epoll.readable().await?;
        let epfd = guard.get_inner().as_raw_fd();
        // SAFETY: `events` has room for `BATCH` entries.
        let n = unsafe { libc::epoll_wait(epfd, self.events.as_mut_ptr(), BATCH as i32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n < BATCH {
            // All there was: wait for the next readiness. (The runtime's tick keeps a
            // readiness that arrived meanwhile.)
            guard.clear_ready();
        }
        for i in 0..n {
            let key = self.events[i].u64 as usize;
            let Some(Slot {
                stream,
                peer,
                idle,
                held,
            }) = self.slots.get_mut(key).and_then(Option::take)
            else {
                continue;
            };
            match answer_next(&stream, peer, fast, idle) {
                // Closing the socket takes it out of the set.
                First::Finished => self.free.push(key),
                First::Idle(idle) => {
                    self.slots[key] = Some(Slot {
                        stream,
                        peer,
                        idle,
                        held,
                    })
                }
                First::Continue(start) => {
                    remove(epfd, &stream);
                    self.free.push(key);
                    out.push(Unparked {
                        stream,
                        peer,
                        start,
                        held,
                    });
                }
            }
        }
        Ok(())
    }

    /// Close the connections whose next head has been due for `timeout` at `now`.
    pub(crate) fn sweep(&mut self, now: Instant, timeout: Duration) {
        for (key, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if now.saturating_duration_since(s.idle.since) < timeout {
                continue;
            }
            tracing::debug!(peer = %s.peer, "keep-alive connection sent no request in time; closing");
            *slot = None;
            self.free.push(key);
        }
    }
}

/// Take `stream` out of the set `epfd` (it goes on registered with the runtime instead).
fn remove(epfd: RawFd, stream: &std::net::TcpStream) {
    // SAFETY: both descriptors are open; a null event is allowed for a removal.
    unsafe {
        libc::epoll_ctl(
            epfd,
            libc::EPOLL_CTL_DEL,
            stream.as_raw_fd(),
            std::ptr::null_mut(),
        );
    }
}
