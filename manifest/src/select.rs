//! Which files of a repository a partial mirror holds: include and exclude patterns over
//! manifest paths, as a volunteer admin writes them (`pool/main/**`, `**/*_arm64.deb`).
//!
//! A path is held when it matches an include (or there are none) and no exclude. Repository
//! metadata is held whatever the patterns say (apt's `dists/`, dnf's `repodata/`): a
//! customer's `apt-get update` must find it on any volunteer that holds part of the
//! repository.
//!
//! Patterns match whole paths, segment by segment: `*` is any run of characters within one
//! segment, `?` one character, and a segment `**` any number of whole segments (none
//! included). Nothing else is special.

/// Paths held whatever the patterns say.
const METADATA: [&str; 2] = ["dists/**", "**/repodata/**"];

/// A pattern that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pattern `{pattern}`: {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: &'static str,
}

/// One pattern, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<String>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, PatternError> {
        let bad = |why| PatternError {
            pattern: text.to_string(),
            why,
        };
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if text.starts_with('/') {
            return Err(bad(
                "patterns are relative to the repository: no leading `/`",
            ));
        }
        let segments: Vec<String> = text.split('/').map(str::to_string).collect();
        for s in &segments {
            if s.is_empty() {
                return Err(bad("an empty segment (`//` or a trailing `/`)"));
            }
            if s == "." || s == ".." {
                return Err(bad("`.` and `..` name no file of a repository"));
            }
            if s.contains("**") && s != "**" {
                return Err(bad("`**` must be a whole segment (`a/**/b`, not `a**`)"));
            }
            if s.contains('\0') || s.contains('\\') {
                return Err(bad("NUL and backslash are not allowed"));
            }
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match_segments(&self.segments, Some(path))
    }
}

/// A path's first segment, and the rest if any.
fn split(p: &str) -> (&str, Option<&str>) {
    match p.split_once('/') {
        Some((first, more)) => (first, Some(more)),
        None => (p, None),
    }
}

/// Whether `pattern`'s segments match the path's remaining segments (`None`: none remain).
/// Walks the path in place, allocating nothing: the server asks this of a partial
/// volunteer on the redirect path.
fn match_segments(pattern: &[String], path: Option<&str>) -> bool {
    match pattern.split_first() {
        None => path.is_none(),
        Some((seg, rest)) if seg == "**" => {
            let mut at = path;
            loop {
                if match_segments(rest, at) {
                    return true;
                }
                match at {
                    Some(p) => at = split(p).1,
                    None => return false,
                }
            }
        }
        Some((seg, rest)) => path.is_some_and(|p| {
            let (first, more) = split(p);
            match_segment(seg.as_bytes(), first.as_bytes()) && match_segments(rest, more)
        }),
    }
}

/// `*` and `?` within one segment (bytes: manifest paths are UTF-8, and `?` is one byte of
/// it; patterns name ASCII in practice).
fn match_segment(pattern: &[u8], name: &[u8]) -> bool {
    // The usual two-pointer match with one star to backtrack to.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What a partial mirror holds of its repository.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Selection {
    /// From the admin's patterns; an error names the first that is not one.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, PatternError> {
        let parse = |v: &[String]| -> Result<Vec<Pattern>, PatternError> {
            v.iter().map(|p| Pattern::parse(p)).collect()
        };
        Ok(Selection {
            include: parse(include)?,
            exclude: parse(exclude)?,
        })
    }

    /// Everything: no pattern at all.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the mirror holds `path`.
    pub fn holds(&self, path: &str) -> bool {
        if is_metadata(path) {
            return true;
        }
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(path)))
            && !self.exclude.iter().any(|p| p.matches(path))
    }

    /// The patterns as one line each (`+ pattern`, `- pattern`): what a tree records of the
    /// selection its last pull installed, compared with the next pull's.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for (sign, ps) in [('+', &self.include), ('-', &self.exclude)] {
            for p in ps {
                out.push(sign);
                out.push(' ');
                out.push_str(&p.text);
                out.push('\n');
            }
        }
        out
    }
}

/// Longest selection a volunteer may announce ([`Selection::canonical`]'s text, bytes): the
/// announce carries it every time (as `ms_part`, whose bound, `tracker::mirror::MAX_PART_LEN`,
/// is the same), and the server parses it when it changes.
pub const MAX_CANONICAL_LEN: usize = 2048;

impl std::str::FromStr for Selection {
    type Err = PatternError;

    /// Reads [`Selection::canonical`]'s text back: one pattern a line, `+ ` to include,
    /// `- ` to exclude. Anything else, or more than [`MAX_CANONICAL_LEN`] bytes, is refused.
    fn from_str(text: &str) -> Result<Selection, PatternError> {
        let bad = |line: &str, why| PatternError {
            pattern: line.to_string(),
            why,
        };
        if text.len() > MAX_CANONICAL_LEN {
            return Err(bad("", "a selection of more than 2048 bytes"));
        }
        let mut sel = Selection::default();
        for line in text.lines() {
            let (list, pattern) = if let Some(p) = line.strip_prefix("+ ") {
                (&mut sel.include, p)
            } else if let Some(p) = line.strip_prefix("- ") {
                (&mut sel.exclude, p)
            } else {
                return Err(bad(line, "a line must start with `+ ` or `- `"));
            };
            list.push(Pattern::parse(pattern)?);
        }
        Ok(sel)
    }
}

/// Repository metadata: held by every mirror that holds any of the repository.
pub fn is_metadata(path: &str) -> bool {
    static PATTERNS: std::sync::LazyLock<Vec<Pattern>> = std::sync::LazyLock::new(|| {
        METADATA
            .iter()
            .map(|m| Pattern::parse(m).expect("the metadata patterns parse"))
            .collect()
    });
    PATTERNS.iter().any(|p| p.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(include: &[&str], exclude: &[&str]) -> Selection {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Selection::new(&s(include), &s(exclude)).unwrap()
    }

    #[test]
    fn segments_stars_and_double_stars() {
        let p = |t: &str| Pattern::parse(t).unwrap();
        assert!(p("pool/main/**").matches("pool/main/h/hello_1.0_amd64.deb"));
        assert!(!p("pool/main/**").matches("pool/contrib/x.deb"));
        assert!(p("**/*_arm64.deb").matches("pool/main/h/hello_1.0_arm64.deb"));
        assert!(p("**/*_arm64.deb").matches("x_arm64.deb"));
        assert!(!p("**/*_arm64.deb").matches("pool/x_arm64.deb.sig"));
        assert!(p("big/?.bin").matches("big/a.bin"));
        assert!(!p("big/?.bin").matches("big/ab.bin"));
        assert!(!p("big/*").matches("big/a/b"), "`*` stays within a segment");
        assert!(p("a/**/z").matches("a/z") && p("a/**/z").matches("a/b/c/z"));
        assert!(p("*a*b*").matches("xxaxxbxx") && !p("*a*b*").matches("xxbxxaxx"));
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        for bad in ["", "/pool/**", "pool//x", "pool/", "a/../b", "a**", "a\\b"] {
            let e = Selection::new(&[bad.to_string()], &[]).unwrap_err();
            assert_eq!(e.pattern, bad);
        }
    }

    #[test]
    fn includes_excludes_and_metadata_always() {
        let s = sel(&["pool/main/**"], &["**/*_arm64.deb"]);
        assert!(s.holds("pool/main/h/hello_1.0_amd64.deb"));
        assert!(!s.holds("pool/main/h/hello_1.0_arm64.deb"));
        assert!(!s.holds("pool/contrib/x_amd64.deb"));
        assert!(s.holds("dists/stable/Release"));
        assert!(s.holds("fedora/39/x86_64/repodata/repomd.xml"));
        // Excludes alone: everything else.
        let s = sel(&[], &["big/**"]);
        assert!(s.holds("pool/x") && !s.holds("big/a.bin"));
        assert!(sel(&[], &[]).is_everything() && sel(&[], &[]).holds("anything"));
        assert_eq!(sel(&["a/**"], &["b"]).canonical(), "+ a/**\n- b\n");
    }

    #[test]
    fn the_canonical_text_reads_back_and_anything_else_is_refused() {
        let s = sel(&["pool/main/**", "big/?.bin"], &["**/*_arm64.deb"]);
        assert_eq!(s.canonical().parse::<Selection>().unwrap(), s);
        assert_eq!("".parse::<Selection>().unwrap(), Selection::default());
        for bad in ["pool/**\n", "+pool/**\n", "+ /abs\n", "* x\n"] {
            assert!(bad.parse::<Selection>().is_err(), "{bad:?} was taken");
        }
        let long = "+ a\n".repeat(MAX_CANONICAL_LEN / 4 + 1);
        assert!(long.parse::<Selection>().is_err());
    }
}
