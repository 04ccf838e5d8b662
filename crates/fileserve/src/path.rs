//! Turning hostile request paths into files under a served root.
//!
//! Two layers, both strict: [`decode_url_path`] rejects anything ambiguous in
//! the URL itself (rather than normalising it, so that one file has exactly
//! one URL and caches/digests cannot be confused), and [`safe_join`] checks
//! the components again and resolves symlinks so that nothing on disk can
//! lead a request outside the root.

use std::io;
use std::path::{Component, Path, PathBuf};

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
    /// A relative path given to [`safe_join`] starts with `/`.
    #[error("path must be relative")]
    Absolute,
    /// Nothing exists at the path (or a non-directory is used as one).
    #[error("not found")]
    NotFound,
    /// The path resolves (through symlinks) to somewhere outside the root.
    #[error("path leads outside the served root")]
    OutsideRoot,
    /// The served root itself cannot be resolved: a configuration problem.
    #[error("cannot resolve served root: {0}")]
    Root(#[source] io::Error),
    /// Any other I/O failure while resolving the path (e.g. permissions).
    #[error("cannot resolve path: {0}")]
    Io(#[source] io::Error),
}

impl PathError {
    /// The HTTP status a handler should answer with.
    ///
    /// Outside-root is reported as 404, like a missing file, so that probing
    /// cannot tell which paths exist outside the root.
    pub fn status(&self) -> StatusCode {
        match self {
            PathError::InvalidEscape
            | PathError::InvalidUtf8
            | PathError::ControlChar
            | PathError::Backslash
            | PathError::EncodedSlash
            | PathError::DotSegment
            | PathError::EmptySegment
            | PathError::Absolute => StatusCode::BAD_REQUEST,
            PathError::NotFound | PathError::OutsideRoot => StatusCode::NOT_FOUND,
            PathError::Root(_) | PathError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
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

/// Join a decoded relative path onto `root`, refusing anything that escapes
/// it, including through symlinks.
///
/// `rel` is like `pool/main/h/hello_1.0_all.deb`; empty means the root, and
/// one trailing `/` is tolerated so a decoded directory URL can be passed
/// with only its leading `/` stripped.
///
/// Returns the canonical (symlink-free) path, so that the file opened later
/// is the one that was checked. Note that its file name is the symlink
/// target's, not the requested one.
/// Join a path that a scan of `root` listed (a published manifest's key, or a volunteer's
/// verified file) without resolving it again. The scan followed a symbolic link only to a
/// regular file inside the root and never descended into a linked directory, and a request
/// is answered only for a listed key, so a customer's path cannot leave the root; resolving
/// every component per request (`realpath`) cost more than the rest of serving a small file.
/// The segments are still checked, so a bad key fails closed.
pub fn join_listed(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    if rel.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut joined = root.to_path_buf();
    for seg in rel.split('/') {
        check_segment(seg)?;
        joined.push(seg);
    }
    Ok(joined)
}

pub fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    if rel.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    let mut joined = root.to_path_buf();
    if !rel.is_empty() {
        for seg in rel.split('/') {
            check_segment(seg)?;
            // Belt and braces: let std agree that this is one plain name
            // (catches platform prefixes and anything check_segment missed).
            let mut comps = Path::new(seg).components();
            match (comps.next(), comps.next()) {
                (Some(Component::Normal(_)), None) => {}
                _ => return Err(PathError::DotSegment),
            }
            joined.push(seg);
        }
    }

    let root_canon = std::fs::canonicalize(root).map_err(PathError::Root)?;
    let canon = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => PathError::NotFound,
        _ => PathError::Io(e),
    })?;
    if !canon.starts_with(&root_canon) {
        return Err(PathError::OutsideRoot);
    }
    Ok(canon)
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

    #[test]
    fn join_listed_fails_closed_on_bad_keys() {
        let root = Path::new("/srv/repo");
        assert_eq!(
            join_listed(root, "pool/a b.deb").unwrap(),
            Path::new("/srv/repo/pool/a b.deb")
        );
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a\\b",
            "a\0b",
            "",
        ] {
            assert!(join_listed(root, bad).is_err(), "{bad:?}");
        }
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
        assert_eq!(PathError::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(PathError::OutsideRoot.status(), StatusCode::NOT_FOUND);
        let io = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            PathError::Io(io).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/pool/main")).unwrap();
        std::fs::write(dir.path().join("root/pool/main/a.deb"), b"deb").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        dir
    }

    #[test]
    fn safe_join_finds_files_and_root() {
        let dir = tree();
        let root = dir.path().join("root");
        let canon_root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(
            safe_join(&root, "pool/main/a.deb").unwrap(),
            canon_root.join("pool/main/a.deb")
        );
        assert_eq!(safe_join(&root, "").unwrap(), canon_root);
        assert_eq!(safe_join(&root, "pool/").unwrap(), canon_root.join("pool"));
    }

    #[test]
    fn safe_join_rejects_bad_components() {
        let dir = tree();
        let root = dir.path().join("root");
        let cases = [
            ("../secret", PathError::DotSegment),
            ("pool/../../secret", PathError::DotSegment),
            ("./pool", PathError::DotSegment),
            ("/etc/passwd", PathError::Absolute),
            ("pool//main", PathError::EmptySegment),
            ("pool/a\0b", PathError::ControlChar),
            ("pool\\main", PathError::Backslash),
            ("pool/main/a.deb//", PathError::EmptySegment),
        ];
        for (rel, want) in cases {
            let err = safe_join(&root, rel).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&err),
                std::mem::discriminant(&want),
                "{rel:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn safe_join_missing_is_not_found() {
        let dir = tree();
        let root = dir.path().join("root");
        assert!(matches!(
            safe_join(&root, "pool/nope.deb"),
            Err(PathError::NotFound)
        ));
        // A file used as a directory.
        assert!(matches!(
            safe_join(&root, "pool/main/a.deb/x"),
            Err(PathError::NotFound)
        ));
        assert!(matches!(
            safe_join(&dir.path().join("no-root"), "x"),
            Err(PathError::Root(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn safe_join_refuses_symlinks_out_of_root() {
        let dir = tree();
        let root = dir.path().join("root");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("pool/up")).unwrap();
        assert!(matches!(
            safe_join(&root, "leak"),
            Err(PathError::OutsideRoot)
        ));
        assert!(matches!(
            safe_join(&root, "pool/up/secret"),
            Err(PathError::OutsideRoot)
        ));
        // A sibling directory whose name merely starts with the root's name
        // is still outside (component-wise comparison, not string prefix).
        std::fs::create_dir(dir.path().join("root2")).unwrap();
        std::fs::write(dir.path().join("root2/x"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("root2/x"), root.join("sib")).unwrap();
        assert!(matches!(
            safe_join(&root, "sib"),
            Err(PathError::OutsideRoot)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn safe_join_allows_symlinks_inside_root() {
        let dir = tree();
        let root = dir.path().join("root");
        std::os::unix::fs::symlink("pool/main/a.deb", root.join("latest.deb")).unwrap();
        let got = safe_join(&root, "latest.deb").unwrap();
        assert_eq!(
            got,
            std::fs::canonicalize(&root)
                .unwrap()
                .join("pool/main/a.deb")
        );
        // The root itself may be reached through a symlink.
        std::os::unix::fs::symlink(&root, dir.path().join("root-link")).unwrap();
        assert!(safe_join(&dir.path().join("root-link"), "pool/main/a.deb").is_ok());
    }
}
