//! Accepting connections as plain sockets, not yet the runtime's.
//!
//! Tokio's `TcpListener::accept` registers every new socket with the reactor at once: an
//! `epoll_ctl` to add it, another to remove it, and a readiness event in between, for each
//! connection. A BitTorrent client (or wget) makes a connection per request, and with
//! `TCP_DEFER_ACCEPT` its request is already readable when it is accepted, so the fast path
//! can answer it and close it before the runtime ever hears of it ([`crate::fast`]). Only a
//! connection that has to wait for something is registered, by the caller.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A listening socket whose readiness the runtime watches; the accepted sockets are not
/// registered.
pub(crate) struct Acceptor(AsyncFd<std::net::TcpListener>);

impl Acceptor {
    /// Watch `listener` (made non-blocking here). Must be called on a runtime.
    pub(crate) fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: a `std::net::TcpListener` owns its descriptor, keeps it open until it is
        // dropped (with the `AsyncFd`), and always returns that one from `as_raw_fd`.
        let fd = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        Ok(Acceptor(fd.map_err(io::Error::from)?))
    }

    /// The next connection, non-blocking and close-on-exec, with its peer's address.
    pub(crate) async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            // The wait counts against the task's cooperative budget, so a flood of
            // connections cannot keep the accepting task from yielding to the others.
            let mut ready = self.0.readable().await?;
            match ready.try_io(|l| accept_nonblocking(l.get_ref())) {
                Ok(accepted) => return accepted,
                // Drained: the readiness is cleared, and the next wait is a real one.
                Err(_would_block) => continue,
            }
        }
    }
}

/// One `accept4(2)`: the new socket comes non-blocking (no `fcntl` after) and close-on-exec.
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value of the type.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the call; `addr` and `len` are valid for writes of
    // the size given.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = socket_addr(&addr)?;
    Ok((stream, peer))
}

/// The address in a `sockaddr_storage` the kernel filled in for a TCP socket.
fn socket_addr(addr: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            // An IPv4 client of a dual-stack listener (`[::]`) comes as `::ffff:a.b.c.d`: it
            // is that IPv4 address to everything after (the tracker's compact peers, the
            // per-address caps, where a customer is and which URLs it can reach).
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Ok(SocketAddr::V4(SocketAddrV4::new(v4, port)));
            }
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        family => Err(io::Error::other(format!(
            "accepted a socket of address family {family}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_with_the_peers_address_on_v4_and_v6() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(local) else {
                continue; // no IPv6 loopback here
            };
            let addr = listener.local_addr().unwrap();
            let acceptor = Acceptor::new(listener).unwrap();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = acceptor.accept().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert_eq!(stream.peer_addr().unwrap(), peer);
            // Non-blocking: a read with nothing sent says so rather than waiting.
            let mut buf = [0u8; 8];
            let err = (&stream).read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        }
    }

    #[tokio::test]
    async fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = listener.local_addr().unwrap().port();
        let acceptor = Acceptor::new(listener).unwrap();
        let Ok(client) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return; // an IPv6-only listener (net.ipv6.bindv6only=1)
        };
        let (_stream, peer) = acceptor.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(peer.is_ipv4(), "{peer}");
    }

    use std::io::Read;
}
