//! Parsing of the `Range` request header (RFC 9110 §14.2), single ranges only.

/// What to send for a `Range` header, given the representation length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Ignore the header and send the whole file with 200: the header was
    /// malformed, asked for several ranges (which RFC 9110 lets us ignore,
    /// and which nothing in our audience needs), or cannot be expressed.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial(u64, u64),
    /// Syntactically valid but outside the file: 416.
    Unsatisfiable,
}

/// Parse a `Range` header value against a representation of `len` bytes.
///
/// Accepts `bytes=a-b`, `bytes=a-` and `bytes=-n`; the unit is
/// case-insensitive and whitespace around the unit, `=` and the range is
/// tolerated, but not inside it. Numbers too large for `u64` saturate, which
/// gives the right answer (a huge start is unsatisfiable, a huge end or
/// suffix means "to the end").
pub fn parse_range(header: &str, len: u64) -> RangeOutcome {
    let Some((unit, spec)) = header.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Full;
    }
    let spec = spec.trim_matches(|c| c == ' ' || c == '\t');
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeOutcome::Full;
    };

    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = parse_digits(last) else {
            return RangeOutcome::Full;
        };
        if n == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        if len == 0 {
            // RFC 9110 calls this satisfiable, but a 206 for zero bytes has
            // no valid Content-Range; the full (empty) 200 is equivalent.
            return RangeOutcome::Full;
        }
        return RangeOutcome::Partial(len.saturating_sub(n), len - 1);
    }

    let Some(start) = parse_digits(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(end) if end >= start => Some(end),
            // Malformed, or last < first, which RFC 9110 calls invalid.
            _ => return RangeOutcome::Full,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeOutcome::Partial(start, end)
}

/// ASCII digits only (no sign, no spaces), saturating at `u64::MAX`.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::RangeOutcome::{Full, Partial, Unsatisfiable};
    use super::*;

    #[test]
    fn simple_ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Partial(0, 0));
        assert_eq!(parse_range("bytes=0-9", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=2-5", 10), Partial(2, 5));
        assert_eq!(parse_range("bytes=9-9", 10), Partial(9, 9));
        assert_eq!(parse_range("bytes=3-", 10), Partial(3, 9));
        assert_eq!(parse_range("bytes=0-", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=-3", 10), Partial(7, 9));
        assert_eq!(parse_range("bytes=-10", 10), Partial(0, 9));
    }

    #[test]
    fn end_past_length_is_clamped() {
        assert_eq!(parse_range("bytes=5-100", 10), Partial(5, 9));
        assert_eq!(parse_range("bytes=0-10", 10), Partial(0, 9));
    }

    #[test]
    fn suffix_larger_than_length_is_whole_file() {
        assert_eq!(parse_range("bytes=-11", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=-1000000", 10), Partial(0, 9));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 0), Unsatisfiable);
    }

    #[test]
    fn zero_length_suffix_sends_full() {
        assert_eq!(parse_range("bytes=-5", 0), Full);
    }

    #[test]
    fn start_after_end_is_ignored() {
        assert_eq!(parse_range("bytes=5-4", 10), Full);
        assert_eq!(parse_range("bytes=20-4", 10), Full);
    }

    #[test]
    fn overflowing_numbers_saturate() {
        let huge = "99999999999999999999999999";
        assert_eq!(parse_range(&format!("bytes={huge}-"), 10), Unsatisfiable);
        assert_eq!(parse_range(&format!("bytes=0-{huge}"), 10), Partial(0, 9));
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 10), Partial(0, 9));
        assert_eq!(
            parse_range(&format!("bytes={huge}-{huge}"), 10),
            Unsatisfiable
        );
        let max = u64::MAX;
        assert_eq!(
            parse_range(&format!("bytes=0-{max}"), max),
            Partial(0, max - 1)
        );
    }

    #[test]
    fn whitespace() {
        assert_eq!(parse_range(" bytes = 2-5 ", 10), Partial(2, 5));
        assert_eq!(parse_range("bytes=\t-3", 10), Partial(7, 9));
        assert_eq!(parse_range("bytes=2 -5", 10), Full);
        assert_eq!(parse_range("bytes=2- 5", 10), Full);
        assert_eq!(parse_range("bytes=- 3", 10), Full);
    }

    #[test]
    fn unit_is_case_insensitive() {
        assert_eq!(parse_range("BYTES=1-2", 10), Partial(1, 2));
        assert_eq!(parse_range("Bytes=1-2", 10), Partial(1, 2));
    }

    #[test]
    fn malformed_is_ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=-+3",
            "bytes=0x1-2",
            "items=0-1",
            "bytes 0-1",
            "=0-1",
            "bytes=１-2",
        ] {
            assert_eq!(parse_range(h, 10), Full, "{h:?}");
        }
    }

    #[test]
    fn multiple_ranges_are_ignored() {
        assert_eq!(parse_range("bytes=0-1,5-6", 10), Full);
        assert_eq!(parse_range("bytes=0-1, 5-6", 10), Full);
        assert_eq!(parse_range("bytes=0-1,", 10), Full);
        assert_eq!(parse_range("bytes=20-30,40-50", 10), Full);
    }
}
