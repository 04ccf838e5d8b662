//! Experiments only: stream every change of this volunteer's connection count to the server's
//! `oracle` policy, which needs exact live load to serve as the bound the real policies are
//! measured against. One UDP datagram per change; losing one only makes the oracle less exact.

use std::net::{SocketAddr, UdpSocket};

pub struct OracleFeed {
    sock: UdpSocket,
    target: SocketAddr,
    id: String,
    sync_conns: u32,
}

impl OracleFeed {
    pub fn new(target: SocketAddr, id: &str, sync_conns: u32) -> std::io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(std::io::Error::other)?;
        let sock = UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        Ok(OracleFeed {
            sock,
            target,
            id: id.to_string(),
            sync_conns,
        })
    }

    pub fn send(&self, customer_conns: u32) {
        let msg = format!("{} {} {}", self.id, customer_conns, self.sync_conns);
        let _ = self.sock.send_to(msg.as_bytes(), self.target);
    }
}
