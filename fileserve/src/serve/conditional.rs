//! Validators (ETag, Last-Modified) and the conditional request headers that
//! test them: `If-None-Match`, `If-Modified-Since`, `If-Range`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE};
use http::{HeaderMap, HeaderValue};
use httpdate::HttpDate;

/// First second of year 10000: `HttpDate` cannot represent it (and panics).
const HTTPDATE_LIMIT_SECS: u64 = 253_402_300_800;

/// An entity tag: opaque value without quotes, plus weakness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ETag {
    pub(crate) weak: bool,
    pub(crate) opaque: String,
}

impl ETag {
    /// A strong tag from a caller-supplied value, if it is made only of
    /// characters allowed inside an entity tag (RFC 9110 `etagc`, minus
    /// obs-text). Anything else is refused rather than sent malformed.
    pub(crate) fn strong(value: &str) -> Option<ETag> {
        let ok = value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b));
        ok.then(|| ETag {
            weak: false,
            opaque: value.to_owned(),
        })
    }

    /// A weak tag from size and modification time: good enough to detect
    /// changes on one machine, but not byte-identity across machines.
    pub(crate) fn weak_from(len: u64, mtime: SystemTime) -> Option<ETag> {
        let since = mtime.duration_since(UNIX_EPOCH).ok()?;
        Some(ETag {
            weak: true,
            opaque: format!("{len:x}-{:x}.{:x}", since.as_secs(), since.subsec_nanos()),
        })
    }

    pub(crate) fn header_value(&self) -> Option<HeaderValue> {
        let text = if self.weak {
            format!("W/\"{}\"", self.opaque)
        } else {
            format!("\"{}\"", self.opaque)
        };
        HeaderValue::from_str(&text).ok()
    }
}

/// What the conditional headers are compared against.
#[derive(Debug, Clone, Default)]
pub(crate) struct Validators {
    pub(crate) etag: Option<ETag>,
    pub(crate) last_modified: Option<HttpDate>,
}

/// Convert an mtime to an HTTP date, if it is representable.
///
/// Disk timestamps are outside input: a pre-1970 or far-future mtime would
/// make `HttpDate::from` panic, so such files simply get no Last-Modified.
pub(crate) fn http_date(mtime: SystemTime) -> Option<HttpDate> {
    let secs = mtime.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < HTTPDATE_LIMIT_SECS).then(|| HttpDate::from(mtime))
}

/// Whether a GET/HEAD should be answered with 304 Not Modified
/// (RFC 9110 §13.2.2 steps 3 and 4).
pub(crate) fn not_modified(headers: &HeaderMap, v: &Validators) -> bool {
    let mut inm = headers.get_all(IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        // If-Modified-Since must be ignored when If-None-Match is present.
        return inm.any(|value| none_match_hits(value, v.etag.as_ref()));
    }
    let (Some(ims), Some(lm)) = (headers.get(IF_MODIFIED_SINCE), v.last_modified) else {
        return false;
    };
    match ims
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<HttpDate>().ok())
    {
        Some(since) => lm <= since,
        // An unparsable date is ignored, as RFC 9110 requires.
        None => false,
    }
}

/// One `If-None-Match` line: `*`, or a list compared weakly.
fn none_match_hits(value: &HeaderValue, ours: Option<&ETag>) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if text.trim() == "*" {
        // The file exists (we only get here for one), so `*` matches.
        return true;
    }
    let Some(ours) = ours else {
        return false;
    };
    match parse_etag_list(text) {
        Some(tags) => tags.iter().any(|t| t.opaque == ours.opaque),
        None => false,
    }
}

/// Whether the `Range` header may be honoured given `If-Range`
/// (RFC 9110 §13.1.5). Without `If-Range` it always may.
pub(crate) fn if_range_allows(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') || text.starts_with("W/") {
        // Strong comparison: both tags must be strong and identical.
        let Some(mut tags) = parse_etag_list(text) else {
            return false;
        };
        let (Some(theirs), None, Some(ours)) = (tags.pop(), tags.pop(), v.etag.as_ref()) else {
            return false;
        };
        return !theirs.weak && !ours.weak && theirs.opaque == ours.opaque;
    }
    match (text.parse::<HttpDate>(), v.last_modified) {
        (Ok(date), Some(lm)) => date == lm,
        _ => false,
    }
}

/// Parse a comma-separated list of entity tags. `None` if malformed.
///
/// Hand-written because `,` is legal inside a quoted tag, so a naive split
/// on commas would be wrong.
fn parse_etag_list(text: &str) -> Option<Vec<ETag>> {
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let inner = after.strip_prefix('"')?;
        let close = inner.find('"')?;
        tags.push(ETag {
            weak,
            opaque: inner[..close].to_owned(),
        });
        rest = &inner[close + 1..];
        // A tag must be followed by a separator or the end.
        let next = rest.trim_start_matches([' ', '\t']);
        if !(next.is_empty() || next.starts_with(',')) {
            return None;
        }
    }
    (!tags.is_empty()).then_some(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn strong(s: &str) -> ETag {
        ETag::strong(s).unwrap()
    }

    #[test]
    fn parses_etag_lists() {
        let tags = parse_etag_list(r#""a", W/"b" ,"c,d""#).unwrap();
        let got: Vec<(bool, &str)> = tags.iter().map(|t| (t.weak, t.opaque.as_str())).collect();
        assert_eq!(got, vec![(false, "a"), (true, "b"), (false, "c,d")]);
        assert_eq!(parse_etag_list(r#""""#).unwrap()[0].opaque, "");
        assert!(parse_etag_list("abc").is_none());
        assert!(parse_etag_list(r#""abc"#).is_none());
        assert!(parse_etag_list(r#""a"x"#).is_none());
        assert!(parse_etag_list("").is_none());
        assert!(parse_etag_list(" , ").is_none());
    }

    #[test]
    fn strong_etag_rejects_bad_chars() {
        assert!(ETag::strong("abc123").is_some());
        assert!(ETag::strong("a\"b").is_none());
        assert!(ETag::strong("a b").is_none());
        assert!(ETag::strong("a\nb").is_none());
    }

    #[test]
    fn http_date_bounds() {
        assert!(http_date(UNIX_EPOCH - Duration::from_secs(1)).is_none());
        assert!(http_date(UNIX_EPOCH + Duration::from_secs(HTTPDATE_LIMIT_SECS)).is_none());
        assert!(http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)).is_some());
    }

    fn hdrs(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_range_requires_strong_match() {
        let v = Validators {
            etag: Some(strong("abc")),
            last_modified: None,
        };
        assert!(if_range_allows(&hdrs(&[]), &v));
        assert!(if_range_allows(&hdrs(&[(IF_RANGE, "\"abc\"")]), &v));
        assert!(!if_range_allows(&hdrs(&[(IF_RANGE, "W/\"abc\"")]), &v));
        assert!(!if_range_allows(&hdrs(&[(IF_RANGE, "\"abd\"")]), &v));
        assert!(!if_range_allows(
            &hdrs(&[(IF_RANGE, "\"abc\", \"abc\"")]),
            &v
        ));
        assert!(!if_range_allows(&hdrs(&[(IF_RANGE, "garbage")]), &v));
        let weak = Validators {
            etag: ETag::weak_from(1, UNIX_EPOCH + Duration::from_secs(5)),
            last_modified: None,
        };
        let tag = weak.etag.as_ref().unwrap().header_value().unwrap();
        let tag = tag.to_str().unwrap();
        assert!(!if_range_allows(&hdrs(&[(IF_RANGE, tag)]), &weak));
    }
}
