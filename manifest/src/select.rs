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

use std::collections::HashSet;
use std::sync::Arc;

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

/// A disk budget filled by popularity: of the files the patterns choose, the most asked
/// for that fit (`crate::popularity::fill_budget`), by the signed popularity of one
/// generation.
#[derive(Debug, Clone)]
pub struct Budget {
    pub bytes: u64,
    /// The generation whose popularity chose the files (0: none yet).
    pub from: u64,
    /// The files chosen, once they are known: until then only the metadata is held.
    chosen: Option<Arc<HashSet<String>>>,
}

/// Two budgets are the same if of the same size and chosen by the same generation's
/// popularity: the files follow from those.
impl PartialEq for Budget {
    fn eq(&self, other: &Budget) -> bool {
        (self.bytes, self.from) == (other.bytes, other.from)
    }
}

impl Eq for Budget {}

/// What a partial mirror holds of its repository.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    budget: Option<Budget>,
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
            budget: None,
        })
    }

    /// The same patterns, within a disk budget of `bytes` filled by popularity (no files
    /// chosen yet).
    pub fn with_budget(mut self, bytes: u64) -> Selection {
        self.budget = Some(Budget {
            bytes,
            from: 0,
            chosen: None,
        });
        self
    }

    /// The budget, if there is one.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// Whether it has a budget whose files are not known yet.
    pub fn is_unchosen(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.chosen.is_none())
    }

    /// The same, its budget's files `chosen` by the popularity of generation `from`.
    pub fn chosen_by(&self, from: u64, chosen: HashSet<String>) -> Selection {
        let mut s = self.clone();
        if let Some(b) = &mut s.budget {
            b.from = from;
            b.chosen = Some(Arc::new(chosen));
        }
        s
    }

    /// Everything: no pattern and no budget.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.budget.is_none()
    }

    /// Whether the mirror holds `path`.
    pub fn holds(&self, path: &str) -> bool {
        if is_metadata(path) {
            return true;
        }
        self.patterns_hold(path)
            && self
                .budget
                .as_ref()
                .is_none_or(|b| b.chosen.as_ref().is_some_and(|c| c.contains(path)))
    }

    /// Whether the patterns choose `path`, whatever a budget says.
    pub fn patterns_hold(&self, path: &str) -> bool {
        is_metadata(path)
            || ((self.include.is_empty() || self.include.iter().any(|p| p.matches(path)))
                && !self.exclude.iter().any(|p| p.matches(path)))
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
        if let Some(b) = &self.budget {
            out.push_str(&format!("$ budget {}", b.bytes));
            if b.from > 0 {
                out.push_str(&format!(" @ {}", b.from));
            }
            out.push('\n');
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
    /// `- ` to exclude, and a budget as `$ budget <bytes>[ @ <generation>]` (its files not
    /// chosen yet). Anything else, or more than [`MAX_CANONICAL_LEN`] bytes, is refused.
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
            if let Some(b) = line.strip_prefix("$ budget ") {
                let (bytes, from) = match b.split_once(" @ ") {
                    Some((n, g)) => (n.parse::<u64>(), g.parse::<u64>()),
                    None => (b.parse::<u64>(), Ok(0)),
                };
                let (Ok(bytes), Ok(from)) = (bytes, from) else {
                    return Err(bad(line, "a budget is `$ budget <bytes>[ @ <generation>]`"));
                };
                if sel.budget.is_some() {
                    return Err(bad(line, "one budget"));
                }
                sel.budget = Some(Budget {
                    bytes,
                    from,
                    chosen: None,
                });
                continue;
            }
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
    fn a_budget_holds_its_chosen_files_and_until_they_are_chosen_only_the_metadata() {
        let b = sel(&["pool/**"], &[]).with_budget(100);
        assert!(!b.is_everything() && b.is_unchosen());
        assert!(b.holds("dists/stable/Release"));
        assert!(!b.holds("pool/a") && b.patterns_hold("pool/a"));
        let c = b.chosen_by(2, ["pool/a".to_string(), "big/x".to_string()].into());
        assert!(c.holds("pool/a") && !c.holds("pool/b"));
        assert!(!c.holds("big/x"), "the patterns still decide first");
    }

    #[test]
    fn the_canonical_text_reads_back_and_anything_else_is_refused() {
        let s = sel(&["pool/main/**", "big/?.bin"], &["**/*_arm64.deb"]);
        assert_eq!(s.canonical().parse::<Selection>().unwrap(), s);
        assert_eq!("".parse::<Selection>().unwrap(), Selection::default());
        for bad in ["pool/**\n", "+pool/**\n", "+ /abs\n", "* x\n"] {
            assert!(bad.parse::<Selection>().is_err(), "{bad:?} was taken");
        }
        let b = sel(&["pool/**"], &[]).with_budget(1000);
        assert_eq!(b.canonical(), "+ pool/**\n$ budget 1000\n");
        assert_eq!(b.canonical().parse::<Selection>().unwrap(), b);
        let chosen = b.chosen_by(4, ["pool/a".to_string()].into());
        assert_eq!(chosen.canonical(), "+ pool/**\n$ budget 1000 @ 4\n");
        let read: Selection = chosen.canonical().parse().unwrap();
        assert_eq!(read, chosen);
        assert!(read.is_unchosen() && !chosen.is_unchosen());
        for bad in [
            "$ budget x\n",
            "$ budget 1 @ y\n",
            "$ budget 1\n$ budget 2\n",
        ] {
            assert!(bad.parse::<Selection>().is_err(), "{bad:?} was taken");
        }
        let long = "+ a\n".repeat(MAX_CANONICAL_LEN / 4 + 1);
        assert!(long.parse::<Selection>().is_err());
    }
}
