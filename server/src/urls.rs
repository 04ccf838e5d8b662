//! The URLs the server writes: where a volunteer or the origin serves a repository's path,
//! encoded once per request. Redirects, Metalinks and spot checks all build them here.

/// URL prefix that always serves from the origin, never redirects. Repository names cannot
/// start with `.`, so it cannot clash with one.
pub const ORIGIN_PREFIX: &str = ".origin";

/// `repo/rel` percent-encoded segment by segment, once per request: every URL the answer
/// names ends with it.
pub fn encoded_repo_path(repo: &str, rel: &str) -> String {
    let mut out = String::with_capacity(repo.len() + rel.len() + 8);
    push_encoded_repo_path(&mut out, repo, rel);
    out
}

/// [`encoded_repo_path`] appended to `out`.
pub(crate) fn push_encoded_repo_path(out: &mut String, repo: &str, rel: &str) {
    // Most paths need no escape anywhere: copied whole, not segment by segment.
    if fileserve::needs_no_escape(repo) && fileserve::needs_no_escape(rel) && !repo.contains('/') {
        out.push_str(repo);
        out.push('/');
        out.push_str(rel);
        return;
    }
    fileserve::push_encoded_segment(out, repo);
    for seg in rel.split('/') {
        out.push('/');
        fileserve::push_encoded_segment(out, seg);
    }
}

/// Append `base` (without a trailing slash), `/`, and an encoded path.
pub(crate) fn push_url(out: &mut String, base: &str, encoded: &str) {
    out.push_str(base.trim_end_matches('/'));
    out.push('/');
    out.push_str(encoded);
}

/// Where a volunteer serves `repo/rel`.
pub fn volunteer_url(base: &str, repo: &str, rel: &str) -> String {
    let mut out = String::new();
    push_url(&mut out, base, &encoded_repo_path(repo, rel));
    out
}

/// Where the origin itself serves an encoded path.
pub fn origin_url(public: &str, encoded: &str) -> String {
    let mut out = String::with_capacity(public.len() + encoded.len() + 10);
    push_origin_url(&mut out, public, encoded);
    out
}

/// Append where the origin itself serves an encoded path.
pub(crate) fn push_origin_url(out: &mut String, public: &str, encoded: &str) {
    out.push_str(public);
    out.push('/');
    out.push_str(ORIGIN_PREFIX);
    out.push('/');
    out.push_str(encoded);
}

/// The tracker's announce URL at the server `public` (what torrents and the origin's seed
/// announce to).
pub fn announce_url(public: &str) -> String {
    format!("{}/announce", public.trim_end_matches('/'))
}
