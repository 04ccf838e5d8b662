//! Plain HTML directory listings, in the spirit of nginx `autoindex`.
//!
//! File names come from disk and may contain anything a file system allows,
//! so every name is HTML-escaped for display and percent-encoded for links.

use std::fmt::Write as _;

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub is_dir: bool,
    /// Bytes; not shown for directories.
    pub size: u64,
}

/// Width the name column is padded to, as nginx does, for readability in
/// text browsers and `curl`.
const NAME_COLUMN: usize = 50;

/// Render a listing of `entries` (in the given order) for the directory at
/// decoded `url_path`, e.g. `/pool/main/`.
///
/// Links are relative, so the page must be served at a URL ending in `/`
/// (redirect `/dir` to `/dir/` first). A parent link is included unless
/// this is the root.
pub fn render_index(url_path: &str, entries: &[IndexEntry]) -> String {
    let title = format!("Index of {}", escape_html(url_path));
    let mut out = String::with_capacity(256 + entries.len() * 100);
    out.push_str("<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>");
    out.push_str(&title);
    out.push_str("</title></head>\n<body>\n<h1>");
    out.push_str(&title);
    out.push_str("</h1><hr><pre>\n");
    if !matches!(url_path, "" | "/") {
        out.push_str("<a href=\"../\">../</a>\n");
    }
    for entry in entries {
        let slash = if entry.is_dir { "/" } else { "" };
        let shown = format!("{}{slash}", entry.name);
        let pad = NAME_COLUMN.saturating_sub(shown.chars().count()).max(1);
        let size = if entry.is_dir {
            "-".to_owned()
        } else {
            entry.size.to_string()
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "<a href=\"{}{slash}\">{}</a>{:pad$}{size:>20}",
            encode_path_segment(&entry.name),
            escape_html(&shown),
            "",
        );
    }
    out.push_str("</pre><hr></body>\n</html>\n");
    out
}

/// Percent-encode one path segment for use in a relative URL.
///
/// Keeps RFC 3986 unreserved characters and a few sub-delimiters common in
/// package names (`+`, `=`, `@`, ...); encodes everything else, including
/// `/`, `%`, `:` (a leading `name:` would read as a URL scheme) and all
/// characters with HTML meaning, as UTF-8 bytes.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    push_encoded_segment(&mut out, segment);
    out
}

/// Bytes a path segment keeps as they are when encoded.
const fn keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'_' | b'~' | b'+' | b'=' | b'@' | b'!' | b'$' | b','
        )
}

/// [`keeps`] by table, and `/` too: every redirect scans its path with it, a byte at a
/// time, and a load is cheaper than the chain of comparisons.
const KEPT: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b == b'/' {
            IN_PATH
        } else if keeps(b) {
            IN_SEGMENT | IN_PATH
        } else {
            0
        };
        i += 1;
    }
    t
};
/// Kept within a segment.
const IN_SEGMENT: u8 = 1;
/// Kept within a path: what a segment keeps, and `/`.
const IN_PATH: u8 = 2;

fn keep(b: u8) -> bool {
    KEPT[usize::from(b)] & IN_SEGMENT != 0
}

/// Whether a path (segments and the `/` between them) encodes to itself.
pub fn needs_no_escape(path: &str) -> bool {
    path.bytes().all(|b| KEPT[usize::from(b)] & IN_PATH != 0)
}

/// [`encode_path_segment`] appending to `out` (no allocation of its own).
pub fn push_encoded_segment(out: &mut String, segment: &str) {
    // Most names need no escape at all: copy them whole.
    if segment.bytes().all(keep) {
        out.push_str(segment);
        return;
    }
    for &b in segment.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Escape text for HTML element content and double- or single-quoted
/// attribute values.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_what_the_rule_keeps() {
        for b in 0..=255u8 {
            assert_eq!(keep(b), keeps(b), "{b}");
            let one = [b];
            let as_path = std::str::from_utf8(&one).is_ok_and(needs_no_escape);
            assert_eq!(as_path, b.is_ascii() && (b == b'/' || keeps(b)), "{b}");
        }
    }

    fn file(name: &str, size: u64) -> IndexEntry {
        IndexEntry {
            name: name.to_owned(),
            is_dir: false,
            size,
        }
    }

    fn dir(name: &str) -> IndexEntry {
        IndexEntry {
            name: name.to_owned(),
            is_dir: true,
            size: 4096,
        }
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(
            encode_path_segment("hello_1.0-2+b1_all.deb"),
            "hello_1.0-2+b1_all.deb"
        );
        assert_eq!(encode_path_segment("a b"), "a%20b");
        assert_eq!(encode_path_segment("<>&\"'"), "%3C%3E%26%22%27");
        assert_eq!(encode_path_segment("a/b%c?d#e"), "a%2Fb%25c%3Fd%23e");
        assert_eq!(encode_path_segment("c:d"), "c%3Ad");
        assert_eq!(encode_path_segment("été"), "%C3%A9t%C3%A9");
        assert_eq!(encode_path_segment(""), "");
    }

    #[test]
    fn encoded_segments_round_trip_through_decoder() {
        for name in ["a b", "<x>&'\"", "été", "100%", "a:b", "x?y#z", "a+b=c"] {
            let url = format!("/{}", encode_path_segment(name));
            assert_eq!(crate::decode_url_path(&url).unwrap(), format!("/{name}"));
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(escape_html("<>&\"'"), "&lt;&gt;&amp;&quot;&#39;");
        assert_eq!(escape_html("plain"), "plain");
    }

    #[test]
    fn renders_listing() {
        let html = render_index("/pool/main/", &[dir("h"), file("hello_1.0_all.deb", 1234)]);
        assert!(html.starts_with("<!DOCTYPE html>\n"));
        assert!(html.contains("<title>Index of /pool/main/</title>"));
        assert!(html.contains("<h1>Index of /pool/main/</h1>"));
        assert!(html.contains("<a href=\"../\">../</a>\n"));
        let dir_line = html.lines().find(|l| l.contains("href=\"h/\"")).unwrap();
        assert!(dir_line.starts_with("<a href=\"h/\">h/</a>"));
        assert!(dir_line.ends_with(" -"));
        let file_line = html
            .lines()
            .find(|l| l.contains("hello_1.0_all.deb"))
            .unwrap();
        assert!(file_line.starts_with("<a href=\"hello_1.0_all.deb\">hello_1.0_all.deb</a> "));
        assert!(file_line.ends_with(" 1234"));
        // Entries keep the caller's order.
        assert!(html.find("href=\"h/\"").unwrap() < html.find("hello_1.0").unwrap());
    }

    #[test]
    fn root_has_no_parent_link() {
        assert!(!render_index("/", &[]).contains("../"));
        assert!(!render_index("", &[]).contains("../"));
        assert!(render_index("/a/", &[]).contains("href=\"../\""));
    }

    #[test]
    fn escapes_hostile_names_and_path() {
        let html = render_index(
            "/<script>&'\"/",
            &[
                file("<img src=x onerror=\"alert('1')\">&.deb", 1),
                dir("a b"),
            ],
        );
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(html.contains("Index of /&lt;script&gt;&amp;&#39;&quot;/"));
        assert!(html.contains(
            "<a href=\"%3Cimg%20src=x%20onerror=%22alert%28%271%27%29%22%3E%26.deb\">\
             &lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;.deb</a>"
        ));
        assert!(html.contains("<a href=\"a%20b/\">a b/</a>"));
    }

    #[test]
    fn long_names_still_separated_from_size() {
        let long = "x".repeat(80);
        let html = render_index("/", &[file(&long, 7)]);
        let line = html.lines().find(|l| l.contains(&long)).unwrap();
        assert!(line.contains("</a> "));
        assert!(line.ends_with(" 7"));
    }
}
