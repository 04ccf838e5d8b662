//! BEP 3 announce and BEP 48 scrape request parsing.
//!
//! Error messages are short and client-facing: the server sends them back
//! verbatim as the bencoded `failure reason`.

use std::borrow::Cow;

use crate::query::{parse_decimal, parse_query_with_limits, visit_query, QueryError, QueryLimits};

/// Default `numwant` when the client sends none.
pub const DEFAULT_NUMWANT: u32 = 50;
/// Largest `numwant` honoured; bigger requests are clamped, not rejected.
pub const MAX_NUMWANT: u32 = 200;
/// Most `info_hash` parameters accepted in one scrape (BEP 48 guidance:
/// keeps the request under common URL length limits). It also bounds what one scrape costs
/// the tracker (a lookup and 50-odd bytes of answer per hash, under the swarms' lock), so
/// that a scrape is worth about one announce against the per-address rate. Clients with more
/// torrents split their scrapes (`prsync::pull` does).
pub const MAX_SCRAPE_HASHES: usize = 74;

/// The announce `event` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Event {
    /// A regular periodic announce.
    #[default]
    None,
    Started,
    Stopped,
    Completed,
}

/// A validated announce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub compact: bool,
    pub numwant: u32,
    pub key: Option<Vec<u8>>,
    /// Every parameter not listed above (minus ignored address hints), in
    /// request order; mirror extensions (`ms_*`) are read from here.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// Why an announce or scrape request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("malformed query: {0}")]
    Query(#[from] QueryError),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("{0} must be 20 bytes")]
    WrongLength(&'static str),
    #[error("{0} must be a non-negative decimal integer")]
    InvalidNumber(&'static str),
    #[error("port must be between 1 and 65535")]
    InvalidPort,
    #[error("event must be started, stopped, completed or empty")]
    InvalidEvent,
    #[error("compact must be 0 or 1")]
    InvalidCompact,
    #[error("too many info_hash parameters (max {MAX_SCRAPE_HASHES})")]
    TooManyHashes,
}

/// Collects each known parameter at most once.
#[derive(Default)]
struct Known<'a> {
    info_hash: Option<Cow<'a, [u8]>>,
    peer_id: Option<Cow<'a, [u8]>>,
    port: Option<Cow<'a, [u8]>>,
    uploaded: Option<Cow<'a, [u8]>>,
    downloaded: Option<Cow<'a, [u8]>>,
    left: Option<Cow<'a, [u8]>>,
    event: Option<Cow<'a, [u8]>>,
    compact: Option<Cow<'a, [u8]>>,
    numwant: Option<Cow<'a, [u8]>>,
    key: Option<Cow<'a, [u8]>>,
}

/// Parses the raw (percent-encoded) query of an announce request.
pub fn parse_announce(raw_query: &str) -> Result<AnnounceRequest, AnnounceError> {
    let mut known = Known::default();
    let mut extra = Vec::new();
    visit_query(raw_query, QueryLimits::DEFAULT, |name, value| {
        let slot = match name.as_ref() {
            "info_hash" => (&mut known.info_hash, "info_hash"),
            "peer_id" => (&mut known.peer_id, "peer_id"),
            "port" => (&mut known.port, "port"),
            "uploaded" => (&mut known.uploaded, "uploaded"),
            "downloaded" => (&mut known.downloaded, "downloaded"),
            "left" => (&mut known.left, "left"),
            "event" => (&mut known.event, "event"),
            "compact" => (&mut known.compact, "compact"),
            "numwant" => (&mut known.numwant, "numwant"),
            "key" => (&mut known.key, "key"),
            // Client-claimed addresses are ignored: the peer's address always
            // comes from the socket, so nobody can point a swarm at a victim.
            "ip" | "ipv4" | "ipv6" => return Ok(()),
            _ => {
                extra.push((name.into_owned(), value.into_owned()));
                return Ok(());
            }
        };
        let (slot, label) = slot;
        if slot.is_some() {
            return Err(AnnounceError::Duplicate(label));
        }
        *slot = Some(value);
        Ok(())
    })?;

    let info_hash = hash20(known.info_hash, "info_hash")?;
    let peer_id = hash20(known.peer_id, "peer_id")?;
    let port = required_number(known.port, "port")?;
    let port = u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or(AnnounceError::InvalidPort)?;
    let uploaded = required_number(known.uploaded, "uploaded")?;
    let downloaded = required_number(known.downloaded, "downloaded")?;
    let left = required_number(known.left, "left")?;
    let event = match known.event.as_deref() {
        None | Some(b"") => Event::None,
        Some(b"started") => Event::Started,
        Some(b"stopped") => Event::Stopped,
        Some(b"completed") => Event::Completed,
        // BEP 21 partial seeds announce "paused"; for the swarm that is
        // just a regular announce.
        Some(b"paused") => Event::None,
        Some(_) => return Err(AnnounceError::InvalidEvent),
    };
    let compact = match known.compact.as_deref() {
        None | Some(b"1") => true,
        Some(b"0") => false,
        Some(_) => return Err(AnnounceError::InvalidCompact),
    };
    let numwant = match known.numwant {
        None => DEFAULT_NUMWANT,
        Some(v) => {
            let n = parse_decimal(&v).ok_or(AnnounceError::InvalidNumber("numwant"))?;
            u32::try_from(n.min(u64::from(MAX_NUMWANT))).unwrap_or(MAX_NUMWANT)
        }
    };

    Ok(AnnounceRequest {
        info_hash,
        peer_id,
        port,
        uploaded,
        downloaded,
        left,
        event,
        compact,
        numwant,
        key: known.key.map(Cow::into_owned),
        extra,
    })
}

/// Query bounds for scrape: room for [`MAX_SCRAPE_HASHES`] fully escaped
/// hashes (`info_hash=` + 60 bytes + `&` each) plus a few other params.
const SCRAPE_QUERY_LIMITS: QueryLimits = QueryLimits {
    max_len: MAX_SCRAPE_HASHES * 71 + 512,
    max_params: MAX_SCRAPE_HASHES + 8,
};

/// Parses a scrape query: one to [`MAX_SCRAPE_HASHES`] `info_hash`
/// parameters, in request order with duplicates dropped. Other parameters are ignored.
///
/// None is [`AnnounceError::Missing`]: BEP 48 lets a tracker answer it with every swarm, an
/// answer that grows with the tracker (7 MB with 100,000 swarms), so this one does not.
pub fn parse_scrape(raw_query: &str) -> Result<Vec<[u8; 20]>, AnnounceError> {
    let mut hashes: Vec<[u8; 20]> = Vec::new();
    let mut seen = 0usize;
    for (name, value) in parse_query_with_limits(raw_query, SCRAPE_QUERY_LIMITS)? {
        if name != "info_hash" {
            continue;
        }
        // Count duplicates too, so the limit bounds the request, not the result.
        seen += 1;
        if seen > MAX_SCRAPE_HASHES {
            return Err(AnnounceError::TooManyHashes);
        }
        let hash = hash20(Some(Cow::Owned(value)), "info_hash")?;
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
    }
    if hashes.is_empty() {
        return Err(AnnounceError::Missing("info_hash"));
    }
    Ok(hashes)
}

fn hash20(value: Option<Cow<'_, [u8]>>, name: &'static str) -> Result<[u8; 20], AnnounceError> {
    let value = value.ok_or(AnnounceError::Missing(name))?;
    <[u8; 20]>::try_from(value.as_ref()).map_err(|_| AnnounceError::WrongLength(name))
}

fn required_number(value: Option<Cow<'_, [u8]>>, name: &'static str) -> Result<u64, AnnounceError> {
    let value = value.ok_or(AnnounceError::Missing(name))?;
    parse_decimal(&value).ok_or(AnnounceError::InvalidNumber(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::percent_encode;

    const HASH: [u8; 20] = *b"\x00\x01\x02&=%+ abcdefghijkl";
    const PEER: [u8; 20] = *b"-MS0001-\xff\xfe123456789A";

    fn base() -> String {
        format!(
            "info_hash={}&peer_id={}&port=6881&uploaded=10&downloaded=20&left=30",
            percent_encode(&HASH),
            percent_encode(&PEER)
        )
    }

    fn parse_err(q: &str) -> String {
        match parse_announce(q) {
            Ok(r) => panic!("expected error for {q}, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_minimal_with_defaults() {
        let r = parse_announce(&base()).unwrap();
        assert_eq!(
            r,
            AnnounceRequest {
                info_hash: HASH,
                peer_id: PEER,
                port: 6881,
                uploaded: 10,
                downloaded: 20,
                left: 30,
                event: Event::None,
                compact: true,
                numwant: DEFAULT_NUMWANT,
                key: None,
                extra: vec![],
            }
        );
    }

    #[test]
    fn parses_optional_fields_and_extra() {
        let q = format!(
            "{}&event=started&compact=0&numwant=7&key=ab%00&ip=6.6.6.6&ipv6=%3A%3A1&ms_x=1&supportcrypto=1&ms_x=2",
            base()
        );
        let r = parse_announce(&q).unwrap();
        assert_eq!(r.event, Event::Started);
        assert!(!r.compact);
        assert_eq!(r.numwant, 7);
        assert_eq!(r.key, Some(b"ab\x00".to_vec()));
        // `ip`/`ipv6` vanish; unknown params keep order and duplicates.
        assert_eq!(
            r.extra,
            vec![
                ("ms_x".to_string(), b"1".to_vec()),
                ("supportcrypto".to_string(), b"1".to_vec()),
                ("ms_x".to_string(), b"2".to_vec()),
            ]
        );
    }

    #[test]
    fn parses_events() {
        for (raw, ev) in [
            ("", Event::None),
            ("started", Event::Started),
            ("stopped", Event::Stopped),
            ("completed", Event::Completed),
            ("paused", Event::None),
        ] {
            let r = parse_announce(&format!("{}&event={raw}", base())).unwrap();
            assert_eq!(r.event, ev, "event={raw}");
        }
        assert_eq!(
            parse_err(&format!("{}&event=Started", base())),
            "event must be started, stopped, completed or empty"
        );
    }

    #[test]
    fn numwant_is_capped_not_rejected() {
        let n = |v: &str| parse_announce(&format!("{}&numwant={v}", base())).map(|r| r.numwant);
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("200"), Ok(200));
        assert_eq!(n("201"), Ok(MAX_NUMWANT));
        assert_eq!(n("18446744073709551615"), Ok(MAX_NUMWANT));
        assert_eq!(n("-1"), Err(AnnounceError::InvalidNumber("numwant")));
    }

    #[test]
    fn compact_values() {
        let c = |v: &str| parse_announce(&format!("{}&compact={v}", base())).map(|r| r.compact);
        assert_eq!(c("1"), Ok(true));
        assert_eq!(c("0"), Ok(false));
        assert_eq!(c("2"), Err(AnnounceError::InvalidCompact));
        assert_eq!(c(""), Err(AnnounceError::InvalidCompact));
    }

    #[test]
    fn missing_required_params() {
        for name in [
            "info_hash",
            "peer_id",
            "port",
            "uploaded",
            "downloaded",
            "left",
        ] {
            let prefix = format!("{name}=");
            let q = base()
                .split('&')
                .filter(|p| !p.starts_with(&prefix))
                .collect::<Vec<_>>()
                .join("&");
            assert_eq!(parse_err(&q), format!("missing {name}"));
        }
        assert_eq!(parse_err(""), "missing info_hash");
    }

    #[test]
    fn wrong_hash_lengths() {
        let short = base().replace(&percent_encode(&HASH), "abc");
        assert_eq!(parse_err(&short), "info_hash must be 20 bytes");
        let long = base().replace(&percent_encode(&PEER), &"p".repeat(21));
        assert_eq!(parse_err(&long), "peer_id must be 20 bytes");
        // 20 characters of escapes is only 6-7 bytes.
        let escaped = base().replace(&percent_encode(&HASH), "%41%41%41%41%41%41%41");
        assert_eq!(parse_err(&escaped), "info_hash must be 20 bytes");
    }

    #[test]
    fn ports() {
        let p = |v: &str| {
            parse_announce(&base().replace("port=6881", &format!("port={v}"))).map(|r| r.port)
        };
        assert_eq!(p("1"), Ok(1));
        assert_eq!(p("65535"), Ok(65535));
        assert_eq!(p("0"), Err(AnnounceError::InvalidPort));
        assert_eq!(p("65536"), Err(AnnounceError::InvalidPort));
        assert_eq!(p("x"), Err(AnnounceError::InvalidNumber("port")));
        assert_eq!(
            AnnounceError::InvalidPort.to_string(),
            "port must be between 1 and 65535"
        );
    }

    #[test]
    fn bad_numbers() {
        for name in ["uploaded", "downloaded", "left"] {
            let q = base().replace(&format!("{name}="), &format!("{name}=-"));
            assert_eq!(
                parse_err(&q),
                format!("{name} must be a non-negative decimal integer")
            );
        }
        let big = base().replace("left=30", "left=18446744073709551616");
        assert_eq!(
            parse_err(&big),
            "left must be a non-negative decimal integer"
        );
        let max = base().replace("left=30", "left=18446744073709551615");
        assert_eq!(parse_announce(&max).map(|r| r.left), Ok(u64::MAX));
    }

    #[test]
    fn duplicate_known_params_rejected() {
        // base() already holds each of these once.
        for (name, dup) in [("port", "port=1"), ("left", "left=0")] {
            assert_eq!(
                parse_err(&format!("{}&{dup}", base())),
                format!("duplicate {name}")
            );
        }
        let q = format!("{}&info_hash={}", base(), percent_encode(&HASH));
        assert_eq!(parse_err(&q), "duplicate info_hash");
        for (name, dup) in [
            ("event", "event=started"),
            ("compact", "compact=1"),
            ("numwant", "numwant=1"),
            ("key", "key=a"),
        ] {
            let q = format!("{}&{dup}&{dup}", base());
            assert_eq!(parse_err(&q), format!("duplicate {name}"));
        }
        // Repeated ignored params are fine.
        assert!(parse_announce(&format!("{}&ip=1.2.3.4&ip=5.6.7.8", base())).is_ok());
    }

    #[test]
    fn query_errors_surface() {
        assert_eq!(
            parse_err(&format!("{}&x=%G0", base())),
            format!(
                "malformed query: invalid percent escape at offset {}",
                base().len() + 3
            )
        );
    }

    #[test]
    fn scrape_hashes() {
        // No hash is not "every swarm".
        assert_eq!(parse_scrape(""), Err(AnnounceError::Missing("info_hash")));
        assert_eq!(
            parse_scrape("foo=bar"),
            Err(AnnounceError::Missing("info_hash"))
        );
        let h1 = percent_encode(&HASH);
        let h2 = percent_encode(&[7u8; 20]);
        assert_eq!(
            parse_scrape(&format!("info_hash={h2}&info_hash={h1}&info_hash={h2}")),
            Ok(vec![[7u8; 20], HASH])
        );
        assert_eq!(
            parse_scrape("info_hash=short"),
            Err(AnnounceError::WrongLength("info_hash"))
        );
    }

    #[test]
    fn scrape_limit() {
        // Bytes >= 0x80 always need escaping, so each hash is 60 chars.
        let many = |n: u8| {
            (0..n)
                .map(|i| format!("info_hash={}", percent_encode(&[0x80 + i; 20])))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(parse_scrape(&many(74)).map(|v| v.len()), Ok(74));
        assert_eq!(parse_scrape(&many(75)), Err(AnnounceError::TooManyHashes));
        let dupes = vec!["info_hash=aaaaaaaaaaaaaaaaaaaa"; 75].join("&");
        assert_eq!(parse_scrape(&dupes), Err(AnnounceError::TooManyHashes));
        let huge = format!("{}&x={}", many(74), "y".repeat(600));
        assert!(matches!(
            parse_scrape(&huge),
            Err(AnnounceError::Query(QueryError::TooLong { .. }))
        ));
    }
}
