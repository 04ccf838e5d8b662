//! The socket under a fast-path connection, as the few calls the connection makes of it.
//!
//! A TCP stream in the server; in the fuzzer and the connection tests a scripted one
//! ([`super::replay`]), so the same connection code runs on bytes split, pipelined and
//! half-closed at will, with no socket. Generic, not `dyn`: the server's code is the same
//! machine code as when it called the stream directly.

use std::io;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};

use tokio::io::Interest;

/// What [`super::conn::answer_first`] does with a socket the runtime does not know yet:
/// one read, one write, without waiting.
pub(crate) trait Wire {
    /// One `recv(2)` of at most `max` bytes into `buf`'s spare room: `Ok(0)` at the end of
    /// the client's sending, `WouldBlock` if nothing is there.
    fn recv_now(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// One `send(2)` with `flags`.
    fn send_now(&self, buf: &[u8], flags: libc::c_int) -> io::Result<usize>;
    /// Turn Nagle's delay off.
    fn nodelay(&self);
}

/// What a connection's task does with its socket.
pub(crate) trait AsyncWire {
    /// One read of at most `max` bytes into `buf` (as [`Wire::recv_now`]).
    fn try_read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// A short read took all there was: the next read should wait for readiness.
    fn read_dry(&self);
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// One `send(2)` with `flags`, if the socket has room (`WouldBlock` if not).
    fn try_send(&self, buf: &[u8], flags: libc::c_int) -> io::Result<usize>;
    /// One `sendfile(2)` of at most `len` bytes of `file` from `pos`, if there is room.
    fn try_sendfile(&self, file: &std::fs::File, pos: u64, len: usize) -> io::Result<usize>;
    /// Until the socket has room to write.
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    fn nodelay(&self);
}

impl Wire for std::net::TcpStream {
    fn recv_now(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        recv(self, buf, max)
    }
    fn send_now(&self, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
        send(self, buf, flags)
    }
    fn nodelay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl AsyncWire for tokio::net::TcpStream {
    fn try_read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        // Straight into the buffer's spare room: nothing zeroed, nothing copied.
        self.try_read_buf(&mut bytes::BufMut::limit(&mut *buf, max))
    }
    fn read_dry(&self) {
        // Clears the readiness tokio holds, so the next read waits for a new readiness
        // event instead of trying a `recv` that can only fail. Data arriving meanwhile
        // raises a new event, so none is missed.
        let _ = self.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
    fn try_send(&self, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
        self.try_io(Interest::WRITABLE, || send(self, buf, flags))
    }
    fn try_sendfile(&self, file: &std::fs::File, pos: u64, len: usize) -> io::Result<usize> {
        self.try_io(Interest::WRITABLE, || sendfile(self, file, pos, len))
    }
    async fn writable(&self) -> io::Result<()> {
        tokio::net::TcpStream::writable(self).await
    }
    fn nodelay(&self) {
        let _ = self.set_nodelay(true);
    }
}

fn recv(stream: &impl AsRawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(max);
    // SAFETY: the descriptor is open for the call and `spare` is valid for writes of
    // `room` bytes.
    let n = unsafe { libc::recv(stream.as_raw_fd(), spare.as_mut_ptr().cast(), room, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote `n` bytes (at most `room`) into the spare room.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// One `send(2)` of `buf`.
fn send(stream: &impl AsRawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the descriptor is open for the call and `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `sendfile(2)` of at most `len` bytes of `file` from `pos` to the socket.
fn sendfile(
    stream: &impl AsRawFd,
    file: &std::fs::File,
    pos: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(pos).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: both descriptors are open for the duration of the call, and `off` is a valid
    // pointer to an off_t the kernel may update.
    let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
