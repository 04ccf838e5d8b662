//! Bencoded tracker responses: announce (BEP 3/23/7), scrape (BEP 48) and
//! failure.

use std::net::SocketAddr;

use crate::bencode::{encode, Value};
use crate::swarm::{AnnounceOutcome, SwarmStats};

/// Builds an announce response.
///
/// With `compact`, IPv4 peers go into `peers` as 6-byte entries (BEP 23)
/// and IPv6 peers into `peers6` as 18-byte entries (BEP 7; the key is
/// omitted when there are none). Otherwise `peers` is a list of
/// `{ip, port}` dicts; `peer id` is left out because we never need to
/// reveal it. `extra` adds caller-specific keys; if one collides with a
/// standard key, the standard key wins so the response stays valid.
pub fn announce_response(
    interval_secs: u32,
    min_interval_secs: u32,
    outcome: &AnnounceOutcome,
    compact: bool,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut dict: Vec<(&str, Value)> = extra.to_vec();
    dict.push(("interval", Value::Int(i64::from(interval_secs))));
    dict.push(("min interval", Value::Int(i64::from(min_interval_secs))));
    dict.push(("complete", Value::Int(i64::from(outcome.complete))));
    dict.push(("incomplete", Value::Int(i64::from(outcome.incomplete))));
    if compact {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for addr in &outcome.peers {
            match addr {
                SocketAddr::V4(a) => {
                    v4.extend_from_slice(&a.ip().octets());
                    v4.extend_from_slice(&a.port().to_be_bytes());
                }
                SocketAddr::V6(a) => {
                    v6.extend_from_slice(&a.ip().octets());
                    v6.extend_from_slice(&a.port().to_be_bytes());
                }
            }
        }
        dict.push(("peers", Value::Bytes(v4)));
        if !v6.is_empty() {
            dict.push(("peers6", Value::Bytes(v6)));
        }
    } else {
        let peers = outcome
            .peers
            .iter()
            .map(|addr| {
                Value::dict([
                    ("ip", Value::str(&addr.ip().to_string())),
                    ("port", Value::Int(i64::from(addr.port()))),
                ])
            })
            .collect();
        dict.push(("peers", Value::List(peers)));
    }
    // Value::dict keeps the last duplicate, so standard keys (pushed after
    // `extra`) win; the BTreeMap sorts keys as bencode requires.
    encode(&Value::dict(dict))
}

/// A BEP 3 failure response carrying a human-readable reason.
pub fn failure_response(reason: &str) -> Vec<u8> {
    encode(&Value::dict([("failure reason", Value::str(reason))]))
}

/// A BEP 48 scrape response: `files` keyed by the raw 20-byte info_hash.
pub fn scrape_response(files: &[([u8; 20], SwarmStats)]) -> Vec<u8> {
    let files = files.iter().map(|(hash, stats)| {
        (
            hash,
            Value::dict([
                ("complete", Value::Int(i64::from(stats.complete))),
                ("downloaded", Value::Int(i64::from(stats.downloaded))),
                ("incomplete", Value::Int(i64::from(stats.incomplete))),
            ]),
        )
    });
    encode(&Value::dict([("files", Value::dict(files))]))
}
