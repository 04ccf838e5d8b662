//! The first steps every file-serving endpoint takes, shared by origin and volunteers.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A plain-text response: every refusal says why.
pub fn text_response(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Accept GET and HEAD only, then decode the path strictly. The error is the response to send
/// (boxed: it is the cold path, and keeps the `Result` small).
pub fn customer_path(method: &Method, uri: &Uri) -> Result<String, Box<Response>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Err(Box::new(r));
    }
    crate::decode_url_path(uri.path())
        .map_err(|e| Box::new(text_response(e.status(), format!("bad path: {e}"))))
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time (the
/// admin endpoints of the server and of volunteers).
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 11.1): `bearer` and `BEARER` are Bearer.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim_start_matches(' '))
        .is_some_and(|t| {
            t.len() == token.len()
                && t.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0
        })
}

/// The body length a response declares (0 if none): what a server counts as uploaded.
pub fn declared_length(resp: &Response) -> u64 {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            bearer_matches(&h, "s3cret")
        };
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "Bearer S3cret",
            "Basic s3cret",
            "Bearer s3cre",
            "Bearers3cret",
            "s3cret",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn methods_and_paths() {
        let uri: Uri = "/a/%2e%2e/b".parse().unwrap();
        assert_eq!(
            customer_path(&Method::GET, &uri).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let uri: Uri = "/a/b%20c".parse().unwrap();
        assert_eq!(customer_path(&Method::HEAD, &uri).unwrap(), "/a/b c");
        let r = customer_path(&Method::PUT, &uri).unwrap_err();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    }
}
