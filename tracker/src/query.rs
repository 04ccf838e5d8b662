//! Bounded parsing of raw (still percent-encoded) URL query strings.
//!
//! BitTorrent puts raw binary (`info_hash`, `peer_id`) into query values, so
//! values come back as bytes; only keys must be UTF-8. Every limit here
//! exists so a hostile request costs a small, fixed amount of work.

use std::borrow::Cow;

/// Longest raw query accepted by [`parse_query`], in bytes: a volunteer's announce with the
/// longest part it may hold (`mirror::MAX_PART_LEN`, every byte escaped) and the longest URL.
pub const MAX_QUERY_LEN: usize = 8192;
/// Most `key=value` parameters accepted by [`parse_query`].
pub const MAX_PARAMS: usize = 64;

/// Bounds for [`parse_query_with_limits`], for the rare request (a
/// multi-hash scrape) that legitimately needs more than the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    pub max_len: usize,
    pub max_params: usize,
}

impl QueryLimits {
    pub const DEFAULT: QueryLimits = QueryLimits {
        max_len: MAX_QUERY_LEN,
        max_params: MAX_PARAMS,
    };
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a raw query string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query is {len} bytes, limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("query has more than {max} parameters")]
    TooManyParams { max: usize },
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
    parse_query_with_limits(raw, QueryLimits::DEFAULT)
}

/// [`parse_query`] with caller-chosen bounds.
pub fn parse_query_with_limits(
    raw: &str,
    limits: QueryLimits,
) -> Result<Vec<(String, Vec<u8>)>, QueryError> {
    let mut params = Vec::new();
    visit_query(raw, limits, |key, value| {
        params.push((key.into_owned(), value.into_owned()));
        Ok(())
    })?;
    Ok(params)
}

/// [`parse_query_with_limits`] handing each pair to `visit` as it is decoded, borrowed from
/// `raw` where it has nothing to decode: an announce's dozen parameters then cost no
/// allocation. `visit` may stop the walk with an error of its own.
pub fn visit_query<'a, E: From<QueryError>>(
    raw: &'a str,
    limits: QueryLimits,
    mut visit: impl FnMut(Cow<'a, str>, Cow<'a, [u8]>) -> Result<(), E>,
) -> Result<(), E> {
    if raw.len() > limits.max_len {
        return Err(QueryError::TooLong {
            len: raw.len(),
            max: limits.max_len,
        }
        .into());
    }
    let mut count = 0;
    let bytes = raw.as_bytes();
    let mut next = 0;
    // The segments between `&`s, as `raw.split('&')` gives them, found by a plain byte scan:
    // the segments are a few dozen bytes, shorter than `str::split`'s searcher pays off on.
    while next <= bytes.len() {
        let seg_offset = next;
        let end = bytes[seg_offset..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(bytes.len(), |i| seg_offset + i);
        next = end + 1;
        // Both ends are at an ASCII `&` or an end of `raw`, so on character boundaries.
        let segment = &raw[seg_offset..end];
        if segment.is_empty() {
            continue;
        }
        if count >= limits.max_params {
            return Err(QueryError::TooManyParams {
                max: limits.max_params,
            }
            .into());
        }
        count += 1;
        let (raw_key, raw_value, value_offset) =
            match segment.as_bytes().iter().position(|&b| b == b'=') {
                Some(i) => (&segment[..i], &segment[i + 1..], seg_offset + i + 1),
                None => (segment, "", seg_offset + segment.len()),
            };
        if raw_key.is_empty() {
            return Err(QueryError::EmptyKey.into());
        }
        let key = match percent_decode(raw_key.as_bytes(), seg_offset)? {
            Cow::Borrowed(_) => Cow::Borrowed(raw_key),
            Cow::Owned(k) => Cow::Owned(String::from_utf8(k).map_err(|_| QueryError::KeyNotUtf8)?),
        };
        let value = percent_decode(raw_value.as_bytes(), value_offset)?;
        visit(key, value)?;
    }
    Ok(())
}

/// Decodes `%XX` escapes and `+`. `base` is where `input` starts in the
/// whole query, so errors can point at the offending byte.
fn percent_decode(input: &[u8], base: usize) -> Result<Cow<'_, [u8]>, QueryError> {
    if !input.iter().any(|&b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(input));
    }
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
    Ok(Cow::Owned(out))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &str) -> Vec<(String, Vec<u8>)> {
        parse_query(raw).unwrap()
    }

    #[test]
    fn parses_pairs_in_order_with_duplicates() {
        assert_eq!(
            pairs("a=1&b=&c&a=2"),
            vec![
                ("a".to_string(), b"1".to_vec()),
                ("b".to_string(), b"".to_vec()),
                ("c".to_string(), b"".to_vec()),
                ("a".to_string(), b"2".to_vec()),
            ]
        );
        assert_eq!(pairs(""), vec![]);
        assert_eq!(pairs("&&a=1&"), vec![("a".to_string(), b"1".to_vec())]);
        // Only the first '=' splits.
        assert_eq!(pairs("k=a=b"), vec![("k".to_string(), b"a=b".to_vec())]);
    }

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(
            pairs("info%5fhash=%00%FF%ab+x%2B"),
            vec![(
                "info_hash".to_string(),
                vec![0x00, 0xff, 0xab, b' ', b'x', b'+']
            )]
        );
        assert_eq!(pairs("a+b=1"), vec![("a b".to_string(), b"1".to_vec())]);
    }

    #[test]
    fn rejects_bad_escapes() {
        assert_eq!(parse_query("a=%"), Err(QueryError::BadEscape { offset: 2 }));
        assert_eq!(
            parse_query("a=%4"),
            Err(QueryError::BadEscape { offset: 2 })
        );
        assert_eq!(
            parse_query("x=1&a=%4g"),
            Err(QueryError::BadEscape { offset: 6 })
        );
        assert_eq!(
            parse_query("%zz=1"),
            Err(QueryError::BadEscape { offset: 0 })
        );
        assert_eq!(
            parse_query("a=1%"),
            Err(QueryError::BadEscape { offset: 3 })
        );
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(parse_query("=1"), Err(QueryError::EmptyKey));
        assert_eq!(parse_query("a=1&=2"), Err(QueryError::EmptyKey));
        assert_eq!(parse_query("%ff=1"), Err(QueryError::KeyNotUtf8));
        // Values may be arbitrary bytes.
        assert_eq!(pairs("k=%ff"), vec![("k".to_string(), vec![0xff])]);
    }

    #[test]
    fn enforces_length_limit() {
        let at_limit = format!("k={}", "v".repeat(MAX_QUERY_LEN - 2));
        assert_eq!(pairs(&at_limit).len(), 1);
        let over = format!("k={}", "v".repeat(MAX_QUERY_LEN - 1));
        assert_eq!(
            parse_query(&over),
            Err(QueryError::TooLong {
                len: MAX_QUERY_LEN + 1,
                max: MAX_QUERY_LEN
            })
        );
    }

    #[test]
    fn enforces_param_limit() {
        let at_limit = vec!["a=1"; MAX_PARAMS].join("&");
        assert_eq!(pairs(&at_limit).len(), MAX_PARAMS);
        let over = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(
            parse_query(&over),
            Err(QueryError::TooManyParams { max: MAX_PARAMS })
        );
        // Empty segments are free but still bounded by the length limit.
        let sparse = format!("{}a=1", "&".repeat(1000));
        assert_eq!(pairs(&sparse).len(), 1);
    }

    #[test]
    fn custom_limits() {
        let limits = QueryLimits {
            max_len: 7,
            max_params: 2,
        };
        assert_eq!(
            parse_query_with_limits("a=1&b=2", limits).map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(
            parse_query_with_limits("a=1&b=22", limits),
            Err(QueryError::TooLong { len: 8, max: 7 })
        );
        assert_eq!(
            parse_query_with_limits("a&b&c", limits),
            Err(QueryError::TooManyParams { max: 2 })
        );
        assert_eq!(
            QueryError::TooManyParams { max: 2 }.to_string(),
            "query has more than 2 parameters"
        );
    }

    #[test]
    fn percent_encode_keeps_unreserved_only() {
        assert_eq!(percent_encode(b"AZaz09-._~"), "AZaz09-._~");
        assert_eq!(
            percent_encode(b" +&=%/\x00\xff"),
            "%20%2B%26%3D%25%2F%00%FF"
        );
        assert_eq!(percent_encode(b""), "");
    }

    #[test]
    fn percent_encode_round_trips_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let raw = format!("k={}", percent_encode(&all));
        assert_eq!(pairs(&raw), vec![("k".to_string(), all)]);
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"007"), Some(7));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"000000000000000000001"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b" 1"), None);
        assert_eq!(parse_decimal(b"1e3"), None);
    }
}
