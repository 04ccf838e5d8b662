//! BEP 3 announce and BEP 48 scrape request parsing.
//!
//! Error messages are short and client-facing: the server sends them back
//! verbatim as the bencoded `failure reason`.

use crate::query::{parse_decimal, parse_query, QueryError};

/// Default `numwant` when the client sends none.
pub const DEFAULT_NUMWANT: u32 = 50;
/// Largest `numwant` honoured; bigger requests are clamped, not rejected.
pub const MAX_NUMWANT: u32 = 200;
/// Most `info_hash` parameters accepted in one scrape (BEP 48 guidance:
/// keeps the request under common URL length limits).
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
struct Known {
    info_hash: Option<Vec<u8>>,
    peer_id: Option<Vec<u8>>,
    port: Option<Vec<u8>>,
    uploaded: Option<Vec<u8>>,
    downloaded: Option<Vec<u8>>,
    left: Option<Vec<u8>>,
    event: Option<Vec<u8>>,
    compact: Option<Vec<u8>>,
    numwant: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

/// Parses the raw (percent-encoded) query of an announce request.
pub fn parse_announce(raw_query: &str) -> Result<AnnounceRequest, AnnounceError> {
    let mut known = Known::default();
    let mut extra = Vec::new();
    for (name, value) in parse_query(raw_query)? {
        let slot = match name.as_str() {
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
            "ip" | "ipv4" | "ipv6" => continue,
            _ => {
                extra.push((name, value));
                continue;
            }
        };
        let (slot, label) = slot;
        if slot.is_some() {
            return Err(AnnounceError::Duplicate(label));
        }
        *slot = Some(value);
    }

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
        key: known.key,
        extra,
    })
}

/// Parses a scrape query: zero to [`MAX_SCRAPE_HASHES`] `info_hash`
/// parameters, in request order with duplicates dropped. Empty means
/// "all swarms". Other parameters are ignored.
pub fn parse_scrape(raw_query: &str) -> Result<Vec<[u8; 20]>, AnnounceError> {
    let mut hashes: Vec<[u8; 20]> = Vec::new();
    let mut seen = 0usize;
    for (name, value) in parse_query(raw_query)? {
        if name != "info_hash" {
            continue;
        }
        // Count duplicates too, so the limit bounds the request, not the result.
        seen += 1;
        if seen > MAX_SCRAPE_HASHES {
            return Err(AnnounceError::TooManyHashes);
        }
        let hash = hash20(Some(value), "info_hash")?;
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
    }
    Ok(hashes)
}

fn hash20(value: Option<Vec<u8>>, name: &'static str) -> Result<[u8; 20], AnnounceError> {
    let value = value.ok_or(AnnounceError::Missing(name))?;
    <[u8; 20]>::try_from(value.as_slice()).map_err(|_| AnnounceError::WrongLength(name))
}

fn required_number(value: Option<Vec<u8>>, name: &'static str) -> Result<u64, AnnounceError> {
    let value = value.ok_or(AnnounceError::Missing(name))?;
    parse_decimal(&value).ok_or(AnnounceError::InvalidNumber(name))
}
