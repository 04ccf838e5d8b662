//! Bencoded tracker responses: announce (BEP 3/23/7), scrape (BEP 48) and
//! failure.

use std::net::SocketAddr;

use crate::swarm::{AnnounceOutcome, SwarmStats};
use bencode::{encode, Value};

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
    if compact && extra.is_empty() {
        return compact_announce_response(interval_secs, min_interval_secs, outcome);
    }
    announce_via_dict(interval_secs, min_interval_secs, outcome, compact, extra)
}

/// Any announce response, built as a dictionary and encoded.
fn announce_via_dict(
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
            push_compact(if addr.is_ipv4() { &mut v4 } else { &mut v6 }, addr);
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

/// The common answer (compact, no extra keys) written straight into one buffer, keys in
/// bencode's sorted order: what nearly every announce gets, so no dictionary is built.
fn compact_announce_response(
    interval_secs: u32,
    min_interval_secs: u32,
    outcome: &AnnounceOutcome,
) -> Vec<u8> {
    let v6 = outcome.peers.iter().filter(|a| a.is_ipv6()).count();
    let v4 = outcome.peers.len() - v6;
    let mut out = Vec::with_capacity(96 + 6 * v4 + 18 * v6);
    out.push(b'd');
    push_int(&mut out, b"8:complete", outcome.complete);
    push_int(&mut out, b"10:incomplete", outcome.incomplete);
    push_int(&mut out, b"8:interval", interval_secs);
    push_int(&mut out, b"12:min interval", min_interval_secs);
    out.extend_from_slice(b"5:peers");
    push_len(&mut out, 6 * v4);
    for a in outcome.peers.iter().filter(|a| a.is_ipv4()) {
        push_compact(&mut out, a);
    }
    if v6 > 0 {
        out.extend_from_slice(b"6:peers6");
        push_len(&mut out, 18 * v6);
        for a in outcome.peers.iter().filter(|a| a.is_ipv6()) {
            push_compact(&mut out, a);
        }
    }
    out.push(b'e');
    out
}

/// A peer as BEP 23/7 pack it: the address's bytes, then the port big-endian (6 bytes for
/// IPv4, 18 for IPv6).
fn push_compact(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// `key` (already a bencoded string) and `i<n>e`.
fn push_int(out: &mut Vec<u8>, key: &[u8], n: u32) {
    out.extend_from_slice(key);
    out.push(b'i');
    push_decimal(out, n as usize);
    out.push(b'e');
}

/// A byte string's length prefix, `<n>:`.
fn push_len(out: &mut Vec<u8>, n: usize) {
    push_decimal(out, n);
    out.push(b':');
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bencode::decode;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn outcome() -> AnnounceOutcome {
        AnnounceOutcome {
            peers: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 6881),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0x1234),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 80),
            ],
            complete: 2,
            incomplete: 5,
        }
    }

    #[test]
    fn compact_exact_bytes() {
        let got = announce_response(1800, 900, &outcome(), true, &[]);
        let mut want =
            b"d8:completei2e10:incompletei5e8:intervali1800e12:min intervali900e5:peers12:"
                .to_vec();
        want.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1, 10, 1, 2, 3, 0, 80]);
        want.extend_from_slice(b"6:peers618:");
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0x12, 0x34]);
        want.push(b'e');
        assert_eq!(got, want);
    }

    #[test]
    fn the_direct_compact_writer_matches_the_encoder() {
        let many: Vec<SocketAddr> = (0..120u16)
            .map(|i| {
                if i % 3 == 0 {
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i)), i)
                } else {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)), i)
                }
            })
            .collect();
        let cases = [
            AnnounceOutcome::default(),
            outcome(),
            AnnounceOutcome {
                peers: many,
                complete: u32::MAX,
                incomplete: 10,
            },
        ];
        for o in &cases {
            for (interval, min) in [(0, 0), (1800, 900), (u32::MAX, 1)] {
                assert_eq!(
                    compact_announce_response(interval, min, o),
                    announce_via_dict(interval, min, o, true, &[]),
                );
            }
        }
    }

    #[test]
    fn compact_without_peers_has_empty_peers_and_no_peers6() {
        let got = announce_response(60, 30, &AnnounceOutcome::default(), true, &[]);
        assert_eq!(
            got,
            b"d8:completei0e10:incompletei0e8:intervali60e12:min intervali30e5:peers0:e".to_vec()
        );
    }

    #[test]
    fn non_compact_lists_ip_and_port() {
        let got = announce_response(60, 30, &outcome(), false, &[]);
        let want = b"d8:completei2e10:incompletei5e8:intervali60e12:min intervali30e5:peersl\
d2:ip9:127.0.0.14:porti6881eed2:ip3:::14:porti4660eed2:ip8:10.1.2.34:porti80eeee";
        assert_eq!(got, want.to_vec());
    }

    #[test]
    fn extra_keys_are_sorted_in_and_cannot_override() {
        let extra = [
            ("ms_generation", Value::Int(42)),
            ("interval", Value::Int(1)),
            ("a", Value::str("x")),
        ];
        let got = announce_response(60, 30, &AnnounceOutcome::default(), true, &extra);
        assert_eq!(
            got,
            b"d1:a1:x8:completei0e10:incompletei0e8:intervali60e12:min intervali30e\
13:ms_generationi42e5:peers0:e"
                .to_vec()
        );
        // The output is canonical bencode.
        assert!(decode(&got).is_ok());
    }

    #[test]
    fn failure_exact_bytes() {
        assert_eq!(
            failure_response("missing info_hash"),
            b"d14:failure reason17:missing info_hashe".to_vec()
        );
    }

    #[test]
    fn scrape_exact_bytes() {
        let stats = SwarmStats {
            complete: 3,
            incomplete: 4,
            downloaded: 9,
        };
        let got = scrape_response(&[([0xbb; 20], SwarmStats::default()), ([0xaa; 20], stats)]);
        let mut want = b"d5:filesd20:".to_vec();
        want.extend_from_slice(&[0xaa; 20]);
        want.extend_from_slice(b"d8:completei3e10:downloadedi9e10:incompletei4ee20:");
        want.extend_from_slice(&[0xbb; 20]);
        want.extend_from_slice(b"d8:completei0e10:downloadedi0e10:incompletei0eeee");
        assert_eq!(got, want);
        assert_eq!(scrape_response(&[]), b"d5:filesdee".to_vec());
    }
}
