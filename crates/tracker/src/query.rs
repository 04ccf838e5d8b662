//! Bounded parsing of raw (still percent-encoded) URL query strings.
//!
//! BitTorrent puts raw binary (`info_hash`, `peer_id`) into query values, so
//! values come back as bytes; only keys must be UTF-8. Every limit here
//! exists so a hostile request costs a small, fixed amount of work.

/// Longest raw query accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// Most `key=value` parameters accepted in one query.
pub const MAX_PARAMS: usize = 64;

/// Why a raw query string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query is {len} bytes, limit is {MAX_QUERY_LEN}")]
    TooLong { len: usize },
    #[error("query has more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("invalid percent escape at offset {offset}")]
    BadEscape { offset: usize },
    #[error("parameter with empty name")]
    EmptyKey,
    #[error("parameter name is not valid UTF-8")]
    KeyNotUtf8,
}

/// Splits `raw` on `&` and percent-decodes each `key=value` pair, keeping
/// order and duplicates. `+` decodes to a space (form encoding). A pair
/// without `=` has an empty value; empty segments (`a=1&&b=2`) are skipped.
pub fn parse_query(raw: &str) -> Result<Vec<(String, Vec<u8>)>, QueryError> {
    if raw.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong { len: raw.len() });
    }
    let mut params = Vec::new();
    let mut offset = 0;
    for segment in raw.split('&') {
        let seg_offset = offset;
        offset += segment.len() + 1;
        if segment.is_empty() {
            continue;
        }
        if params.len() == MAX_PARAMS {
            return Err(QueryError::TooManyParams);
        }
        let (raw_key, raw_value, value_offset) = match segment.split_once('=') {
            Some((k, v)) => (k, v, seg_offset + k.len() + 1),
            None => (segment, "", seg_offset + segment.len()),
        };
        if raw_key.is_empty() {
            return Err(QueryError::EmptyKey);
        }
        let key = percent_decode(raw_key.as_bytes(), seg_offset)?;
        let key = String::from_utf8(key).map_err(|_| QueryError::KeyNotUtf8)?;
        let value = percent_decode(raw_value.as_bytes(), value_offset)?;
        params.push((key, value));
    }
    Ok(params)
}

/// Decodes `%XX` escapes and `+`. `base` is where `input` starts in the
/// whole query, so errors can point at the offending byte.
fn percent_decode(input: &[u8], base: usize) -> Result<Vec<u8>, QueryError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex_val);
                let lo = input.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(QueryError::BadEscape { offset: base + i }),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), so the result is safe as a key or value.
pub fn percent_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Parses a plain decimal `u64` (ASCII digits only: no sign, no spaces,
/// at most 20 digits). Shared by the announce and mirror parsers.
pub fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}
