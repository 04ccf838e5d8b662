//! Turning hostile request paths into plain relative ones.
//!
//! Two layers, both strict: [`decode_url_path`] rejects anything ambiguous in
//! the URL itself (rather than normalising it, so that one file has exactly
//! one URL and caches/digests cannot be confused), and the file is then opened
//! by [`crate::Root`], which checks the segments again and lets the kernel
//! refuse any resolution that leaves the served directory, whatever is on disk
//! at that moment. (A path checked first and opened by name later would follow
//! whatever the name meant by then.)

use http::StatusCode;

/// Why a request path was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape in path")]
    InvalidEscape,
    /// The decoded bytes are not UTF-8.
    #[error("path is not valid UTF-8")]
    InvalidUtf8,
    /// NUL, or another control character (C0, DEL, C1).
    #[error("path contains a NUL or control character")]
    ControlChar,
    /// Backslashes are path separators on some systems; never accept them.
    #[error("path contains a backslash")]
    Backslash,
    /// `%2F` would make a segment look like two; it is ambiguous.
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    /// A `.` or `..` segment, literal or percent-encoded.
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    /// `//` somewhere in the path.
    #[error("path contains an empty segment")]
    EmptySegment,
}

impl PathError {
    /// The HTTP status a handler should answer with: every one is the request's fault.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Percent-decode a URL path (without query string), rejecting anything
/// ambiguous instead of normalising it.
///
/// The output keeps the input's shape: a leading `/` stays, and a single
/// trailing `/` (a directory URL) stays. `""` and `"/"` are accepted as the
/// root.
pub fn decode_url_path(raw: &str) -> Result<String, PathError> {
    decode_url_path_cow(raw).map(std::borrow::Cow::into_owned)
}

/// [`decode_url_path`], borrowing `raw` when it has nothing to decode (the usual case on the
/// request path, which then allocates nothing); the same checks either way.
pub fn decode_url_path_cow(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let (lead, body) = match raw.strip_prefix('/') {
        Some(rest) => ("/", rest),
        None => ("", raw),
    };
    if body.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let (body, trail) = match body.strip_suffix('/') {
        Some(rest) => (rest, "/"),
        None => (body, ""),
    };
    // After removing one trailing slash there must be at least one real
    // segment; "//" would otherwise slip through as "/".
    if body.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if let Some(checked) = check_plain_ascii(body) {
        return checked.map(|()| std::borrow::Cow::Borrowed(raw));
    }
    if !body.contains('%') {
        for seg in body.split('/') {
            check_segment(seg)?;
        }
        return Ok(std::borrow::Cow::Borrowed(raw));
    }

    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(lead.as_bytes());
    for (i, seg) in body.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        let start = out.len();
        decode_segment(seg, &mut out)?;
        let text = std::str::from_utf8(&out[start..]).map_err(|_| PathError::InvalidUtf8)?;
        check_segment(text)?;
    }
    out.extend_from_slice(trail.as_bytes());
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| PathError::InvalidUtf8)
}

/// The checks of [`check_segment`] on every segment of `body` in one pass over its bytes,
/// for the usual path: ASCII with no escape. `None` for anything else (an escape, a
/// multi-byte character), which takes the general way.
fn check_plain_ascii(body: &str) -> Option<Result<(), PathError>> {
    let bytes = body.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                if let Err(e) = check_segment_shape(&bytes[start..i]) {
                    return Some(Err(e));
                }
                start = i + 1;
            }
            b'%' | 0x80..=0xff => return None,
            b'\\' => return Some(Err(PathError::Backslash)),
            c if c.is_ascii_control() => return Some(Err(PathError::ControlChar)),
            _ => {}
        }
    }
    Some(check_segment_shape(&bytes[start..]))
}

/// The checks of a segment that are not about its characters.
fn check_segment_shape(seg: &[u8]) -> Result<(), PathError> {
    match seg {
        b"" => Err(PathError::EmptySegment),
        b"." | b".." => Err(PathError::DotSegment),
        _ => Ok(()),
    }
}

/// Decode one segment (contains no literal `/`) onto `out`.
fn decode_segment(seg: &str, out: &mut Vec<u8>) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidEscape);
            };
            let decoded = hi << 4 | lo;
            if decoded == b'/' {
                return Err(PathError::EncodedSlash);
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

/// Checks shared by both layers, applied to an already-decoded segment.
fn check_segment(seg: &str) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    for c in seg.chars() {
        if c.is_control() {
            return Err(PathError::ControlChar);
        }
        if c == '\\' {
            return Err(PathError::Backslash);
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_pass_check_agrees_with_the_segment_by_segment_one() {
        // Every string of up to five characters over an alphabet with each case in it.
        let alphabet = ['a', '/', '.', '\\', '\u{1}', '\u{7f}', 'é', '%'];
        let mut strings = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            strings = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(strings.iter().cloned());
        }
        let mut fast = 0;
        for body in &all {
            let general = body.split('/').try_for_each(check_segment);
            match check_plain_ascii(body) {
                Some(r) => {
                    fast += 1;
                    assert_eq!(format!("{r:?}"), format!("{general:?}"), "{body:?}");
                }
                None => assert!(body.contains('%') || !body.is_ascii(), "{body:?}"),
            }
        }
        assert!(
            fast > 10_000,
            "the one-pass check took {fast} of {}",
            all.len()
        );
    }

    fn decode_err(raw: &str) -> PathError {
        match decode_url_path(raw) {
            Ok(s) => panic!("{raw:?} decoded to {s:?}, expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn decodes_plain_and_escaped_paths() {
        assert_eq!(
            decode_url_path("/pool/main/h/hello_1.0_all.deb").unwrap(),
            "/pool/main/h/hello_1.0_all.deb"
        );
        assert_eq!(decode_url_path("/a%20b/c%2Bd").unwrap(), "/a b/c+d");
        assert_eq!(decode_url_path("/%C3%A9t%c3%a9").unwrap(), "/été");
        assert_eq!(decode_url_path("/dists/stable/").unwrap(), "/dists/stable/");
        assert_eq!(decode_url_path("/").unwrap(), "/");
        assert_eq!(decode_url_path("").unwrap(), "");
        assert_eq!(decode_url_path("rel/x").unwrap(), "rel/x");
        // Dots inside names are fine; only whole-segment dots are not.
        assert_eq!(
            decode_url_path("/.well-known/a..b").unwrap(),
            "/.well-known/a..b"
        );
        assert_eq!(decode_url_path("/...").unwrap(), "/...");
    }

    #[test]
    fn rejects_dot_segments() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../b",
            "/a/./b",
            "/.",
            "/a/..",
            "/a/../",
            "/%2e%2e/etc",
            "/%2E%2E",
            "/.%2e/x",
            "/%2e/x",
            "..",
        ] {
            assert!(matches!(decode_err(raw), PathError::DotSegment), "{raw}");
        }
    }

    #[test]
    fn rejects_encoded_slash_and_backslash() {
        assert!(matches!(decode_err("/a%2Fb"), PathError::EncodedSlash));
        assert!(matches!(decode_err("/a%2fb"), PathError::EncodedSlash));
        assert!(matches!(
            decode_err("/..%2F..%2Fetc"),
            PathError::EncodedSlash
        ));
        assert!(matches!(decode_err("/a\\b"), PathError::Backslash));
        assert!(matches!(decode_err("/a%5Cb"), PathError::Backslash));
        assert!(matches!(
            decode_err("/..%5c..%5cwin.ini"),
            PathError::Backslash
        ));
    }

    #[test]
    fn rejects_nul_and_control_chars() {
        assert!(matches!(decode_err("/a%00.deb"), PathError::ControlChar));
        assert!(matches!(decode_err("/a\0b"), PathError::ControlChar));
        assert!(matches!(decode_err("/a%0Ab"), PathError::ControlChar));
        assert!(matches!(
            decode_err("/a%0d%0aSet-Cookie"),
            PathError::ControlChar
        ));
        assert!(matches!(decode_err("/a%7Fb"), PathError::ControlChar));
        // U+0085 (NEL), a C1 control, encoded as UTF-8.
        assert!(matches!(decode_err("/a%C2%85b"), PathError::ControlChar));
    }

    #[test]
    fn rejects_bad_escapes_and_utf8() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%2g", "/%%41", "/a%+1"] {
            assert!(matches!(decode_err(raw), PathError::InvalidEscape), "{raw}");
        }
        assert!(matches!(decode_err("/%FF"), PathError::InvalidUtf8));
        assert!(matches!(decode_err("/%C3"), PathError::InvalidUtf8));
        // Overlong encoding of '/' must not sneak a slash in.
        assert!(matches!(decode_err("/a%C0%AFb"), PathError::InvalidUtf8));
    }

    #[test]
    fn rejects_empty_segments() {
        for raw in ["//", "//a", "/a//b", "/a//", "a//b", "/a/b//"] {
            assert!(matches!(decode_err(raw), PathError::EmptySegment), "{raw}");
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(PathError::DotSegment.status(), StatusCode::BAD_REQUEST);
        assert_eq!(PathError::InvalidEscape.status(), StatusCode::BAD_REQUEST);
    }
}
