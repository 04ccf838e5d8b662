//! Metalink 4 (RFC 5854) documents: one file, its size and SHA-256, every source by priority.

use manifest::Entry;

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Render a document for the file `name` (its last path segment: clients use it as the output
/// file name) served at each of `urls`, best first.
pub fn render(name: &str, entry: &Entry, urls: &[String]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n",
    );
    s.push_str(&format!("  <file name=\"{}\">\n", xml_escape(name)));
    s.push_str(&format!("    <size>{}</size>\n", entry.size));
    s.push_str(&format!(
        "    <hash type=\"sha-256\">{}</hash>\n",
        entry.sha256.to_hex()
    ));
    for (i, u) in urls.iter().enumerate() {
        s.push_str(&format!(
            "    <url priority=\"{}\">{}</url>\n",
            i + 1,
            xml_escape(u)
        ));
    }
    s.push_str("  </file>\n</metalink>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::Sha256;

    #[test]
    fn renders_sources_in_order_and_escapes() {
        let e = Entry {
            size: 5,
            sha256: Sha256([1; 32]),
            changed_in: 1,
            btih: None,
        };
        let doc = render(
            "a&b.deb",
            &e,
            &["http://v1/x?a=1&b=2".into(), "http://o/x".into()],
        );
        assert!(doc.contains("<file name=\"a&amp;b.deb\">"));
        assert!(doc.contains("<size>5</size>"));
        assert!(doc.contains(&format!(
            "<hash type=\"sha-256\">{}</hash>",
            "01".repeat(32)
        )));
        assert!(doc.contains("<url priority=\"1\">http://v1/x?a=1&amp;b=2</url>"));
        assert!(doc.contains("<url priority=\"2\">http://o/x</url>"));
    }
}
