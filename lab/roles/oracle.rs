//! The `oracle`: `feedback` with every sampled volunteer's model corrected by its exact live
//! customer count before each choice, the bound the reported feedback is measured against.
//! Each volunteer streams every change of its count as one UDP datagram,
//! `<volunteer id> <customer conns> <sync conns>`; losing one only makes the oracle less
//! exact.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock, RwLock};

use anyhow::{Context, Result};
use balance::policy::{Candidate, Feedback, Order, Policy};
use rand::RngCore;

/// Volunteers the oracle keeps counts for: anyone can send a datagram, and a map keyed by
/// whatever they send must not grow without end. A study runs a few dozen.
const MAX_VOLUNTEERS: usize = 4096;

type LiveCounts = Arc<RwLock<HashMap<String, u32>>>;

pub struct Oracle {
    feedback: Feedback,
    live: LiveCounts,
}

impl Oracle {
    /// Receive the volunteers' counts on `addr`; `slow_start` as the feedback policy's.
    pub async fn listen(addr: SocketAddr, slow_start: std::time::Duration) -> Result<Oracle> {
        let sock = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("oracle feed on {addr}"))?;
        tracing::info!(%addr, "oracle feed listening");
        let live = LiveCounts::default();
        let counts = live.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                if let Some((id, customers)) = parse(&buf[..n]) {
                    let mut m = counts.write().unwrap_or_else(|e| e.into_inner());
                    if m.len() < MAX_VOLUNTEERS || m.contains_key(id) {
                        m.insert(id.to_string(), customers);
                    }
                }
            }
        });
        Ok(Oracle {
            feedback: Feedback::new(slow_start),
            live,
        })
    }
}

/// `<id> <customer conns> <sync conns>`: the id and the customers. The sync count is checked
/// for form but not used: the oracle corrects the customers only.
fn parse(datagram: &[u8]) -> Option<(&str, u32)> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut parts = text.split_whitespace();
    let (id, cc, sc) = (parts.next()?, parts.next()?, parts.next()?);
    sc.parse::<u32>().ok()?;
    Some((id, cc.parse().ok()?))
}

impl Policy for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn order_into(&self, cands: &[Candidate], bytes: u64, rng: &mut dyn RngCore, out: &mut Order) {
        self.feedback.order_into(cands, bytes, rng, out)
    }
    fn knows_live_customers(&self) -> bool {
        true
    }
    fn live_customers(&self, id: &str) -> Option<u32> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }
}

/// A volunteer's side: one datagram per change of its customer count.
pub struct Feed {
    sock: UdpSocket,
    target: SocketAddr,
    id: OnceLock<String>,
    sync_conns: u32,
}

impl Feed {
    pub fn new(target: SocketAddr, sync_conns: u32) -> Result<Feed> {
        let bind = SocketAddr::new(
            match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            0,
        );
        let sock = UdpSocket::bind(bind).context("oracle feed socket")?;
        sock.set_nonblocking(true)?;
        Ok(Feed {
            sock,
            target,
            id: OnceLock::new(),
            sync_conns,
        })
    }

    /// The volunteer is `id` and serves no one yet.
    pub fn start(&self, id: &str) {
        let _ = self.id.set(id.to_string());
        self.send(0);
    }

    pub fn send(&self, customers: u32) {
        if let Some(id) = self.id.get() {
            let msg = format!("{id} {customers} {}", self.sync_conns);
            let _ = self.sock.send_to(msg.as_bytes(), self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_read_by_form() {
        assert_eq!(parse(b"v-1 3 2"), Some(("v-1", 3)));
        assert_eq!(parse(b"v-1 3"), None);
        assert_eq!(parse(b"v-1 x 2"), None);
        assert_eq!(parse(b"v-1 3 -2"), None);
        assert_eq!(parse(&[0xff, b' ', b'1', b' ', b'2']), None);
    }

    #[tokio::test]
    async fn a_volunteers_feed_reaches_the_oracle_which_knows_only_who_sent() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let oracle = Oracle::listen(addr, Default::default()).await.unwrap();
        assert!(oracle.knows_live_customers());
        let feed = Feed::new(addr, 1).unwrap();
        feed.send(9); // not started: no id yet, nothing sent
        feed.start("v-7");
        feed.send(5);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while oracle.live_customers("v-7") != Some(5) {
            assert!(
                std::time::Instant::now() < deadline,
                "the count never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(oracle.live_customers("v-8"), None);
    }
}
