//! Facts of mirrorswarm's HTTP protocol that more than one party reads: the headers the
//! server sends with a redirect and the verifying proxy reads, and the table of a server's
//! own routes that its router and its fast path share.

/// The header that tells a verifying client (`mirrorswarm proxy`) how many bytes to expect
/// after a redirect, so that a lying volunteer cannot make it download without end.
pub const SIZE_HEADER: &str = "x-mirrorswarm-size";

/// The file's SHA-256 as RFC 3230 `Digest` (`sha-256=<base64>`), sent with a redirect when asked.
pub const DIGEST: &str = "digest";

/// The file's SHA-256 as RFC 9530 `Repr-Digest` (`sha-256=:<base64>:`), sent with a redirect when asked.
pub const REPR_DIGEST: &str = "repr-digest";

/// The request header that asks for [`DIGEST`] (RFC 3230).
pub const WANT_DIGEST: &str = "want-digest";

/// The request header that asks for [`REPR_DIGEST`] (RFC 9530).
pub const WANT_REPR_DIGEST: &str = "want-repr-digest";

/// A server's own routes, exact paths and path prefixes, in one table that its router and its
/// fast path both read: the fast path passes these requests to the router and answers every
/// other path as a customer's. A route added to the router but not here would be answered as
/// a customer's download; [`OwnRoutes::checked`] makes that a failure at start.
#[derive(Debug, Clone, Copy)]
pub struct OwnRoutes {
    pub exact: &'static [&'static str],
    pub prefixes: &'static [&'static str],
}

/// The server's own routes; every other path is a customer's.
pub const SERVER_ROUTES: OwnRoutes = OwnRoutes {
    exact: &["/announce", "/scrape", "/health", "/metrics", "/dashboard"],
    prefixes: &["/api/", "/manifests/", "/admin/", "/artifacts/"],
};

/// A volunteer's own pages and admin endpoints; every other path is a customer's.
pub const VOLUNTEER_ROUTES: OwnRoutes = OwnRoutes {
    exact: &["/health", "/metrics", "/status"],
    prefixes: &["/admin/", "/api/"],
};

/// Whether a repository called `name` would be shadowed by a route of the server's or of a
/// volunteer's own (its paths `/<name>/…` answered by the route, not as the repository's).
pub fn reserved_repo_name(name: &str) -> bool {
    [SERVER_ROUTES, VOLUNTEER_ROUTES].iter().any(|r| {
        r.exact.iter().any(|e| e[1..] == *name)
            || r.prefixes.iter().any(|p| p[1..p.len() - 1] == *name)
    })
}

impl OwnRoutes {
    /// Whether `path` is one of these routes rather than a customer's path.
    pub fn contains(&self, path: &str) -> bool {
        self.exact.contains(&path) || self.prefixes.iter().any(|p| path.starts_with(p))
    }

    /// `pattern` (a router's route pattern), checked to be in this table.
    ///
    /// # Panics
    /// When it is not: the router is built once at start, so the mistake shows there and in
    /// every test that starts the server, not as a misrouted request in production.
    pub fn checked<'a>(&self, pattern: &'a str) -> &'a str {
        assert!(
            self.contains(pattern),
            "route {pattern} is not in the fast path's table of own routes"
        );
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: OwnRoutes = OwnRoutes {
        exact: &["/health"],
        prefixes: &["/api/"],
    };

    #[test]
    fn own_routes_are_exact_paths_and_prefixes() {
        assert!(ROUTES.contains("/health"));
        assert!(ROUTES.contains("/api/x"));
        assert!(!ROUTES.contains("/health/x"));
        assert!(!ROUTES.contains("/api"));
        assert!(!ROUTES.contains("/debian/pool/a.deb"));
        assert_eq!(ROUTES.checked("/api/{name}"), "/api/{name}");
    }

    #[test]
    fn repository_names_that_a_route_would_shadow_are_reserved() {
        for name in [
            "announce",
            "scrape",
            "health",
            "api",
            "admin",
            "manifests",
            "artifacts",
            "metrics",
            "dashboard",
            "status",
        ] {
            assert!(reserved_repo_name(name), "{name}");
        }
        for name in ["debian", "apis", "stat", "", "ap"] {
            assert!(!reserved_repo_name(name), "{name}");
        }
    }

    #[test]
    #[should_panic(expected = "not in the fast path's table")]
    fn a_route_missing_from_the_table_fails_at_start() {
        ROUTES.checked("/status");
    }
}
