//! `GET /<repo>/<path>?mirrorlist`: why a customer goes where it goes. For the asking
//! address (or, for an admin with the token, `?ip=`): where the customer was placed, every
//! volunteer with its tier, modelled wait and load, and its rank or why it was left out. An
//! HTML page for a browser, JSON for `Accept: application/json`. Nothing is counted: asking
//! sends no one anywhere.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use balance::{Considered, Customer, PathFacts, Verdict};
use fileserve::text_response as text;
use serde_json::{json, Value};

use crate::state::AppState;

/// The query parameter that asks for the list (`?mirrorlist`).
pub const PARAM: &str = "mirrorlist";

/// Whether a query asks for the mirror list.
pub fn asked(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == PARAM || kv.starts_with("mirrorlist="))
    })
}

/// The `ip=` an admin asks about, if any.
fn asked_ip(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("ip="))
}

/// What the list is about: the file and the choice's facts.
pub struct Subject<'a> {
    pub facts: PathFacts<'a>,
    pub size: u64,
    pub generation: u64,
    /// Where a customer's request for it is answered when no volunteer is chosen.
    pub origin: String,
    /// Small files are sent by the origin itself, whoever could serve them.
    pub origin_sends_it: bool,
}

/// The answer to `?mirrorlist` for `customer` (the connection's), or the `?ip=` an admin
/// named.
pub fn answer(
    st: &AppState,
    subject: &Subject<'_>,
    customer: Customer,
    query: &str,
    headers: &HeaderMap,
) -> Response {
    let (customer, via) = match asked_ip(query) {
        None => (customer, "connection"),
        Some(ip) => {
            if let Err(r) = crate::api::require_admin(st, headers) {
                return *r;
            }
            let Ok(addr) = ip.parse::<IpAddr>() else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("ip={ip} is not an IPv4 or IPv6 address\n"),
                );
            };
            let secure = customer.reach.secure_only();
            (
                st.location.customer_at(addr.to_canonical(), secure),
                "ip parameter",
            )
        }
    };
    let seen = st
        .balancer
        .explain(subject.facts, subject.size, Some(&customer), Instant::now());
    let doc = document(st, subject, &customer, via, &seen);
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(16).any(|w| w == b"application/json"));
    let mut r = if wants_json {
        axum::Json(doc).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html(&doc),
        )
            .into_response()
    };
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

fn document(
    st: &AppState,
    subject: &Subject<'_>,
    c: &Customer,
    via: &str,
    seen: &[Considered],
) -> Value {
    let p = &c.place;
    let code = |b: [u8; 2]| String::from_utf8_lossy(&b).into_owned();
    let volunteers: Vec<Value> = seen
        .iter()
        .map(|v| {
            let (verdict, reason) = match v.verdict {
                Verdict::Ranked(0) => ("chosen".to_string(), reason_ranked(v, seen)),
                Verdict::Ranked(n) => (format!("alternative {n}"), reason_ranked(v, seen)),
                Verdict::NoRoom => (
                    "no room".to_string(),
                    format!(
                        "its modelled customers fill its capacity ({} connections)",
                        v.load.capacity
                    ),
                ),
                Verdict::Excluded(e) => ("excluded".to_string(), e.to_string()),
            };
            json!({
                "id": v.id,
                "name": st.credential(&v.id).map(|c| c.name),
                "url": v.url,
                "tier": v.tier.map(|t| t.name()),
                "wait_ms": v.wait.map(|w| (w * 1e4).round() / 10.0),
                "extra_round_trips_ms": (v.extra * 1e4).round() / 10.0,
                "customers": v.load.customer_conns,
                "capacity": v.load.capacity,
                "sync_connections": v.load.sync_conns,
                "uplink_bps": v.load.link_bps,
                "verdict": verdict,
                "reason": reason,
            })
        })
        .collect();
    let answer = if subject.origin_sends_it {
        "the origin sends this file itself (it is small)".to_string()
    } else {
        match seen.iter().find(|v| v.verdict == Verdict::Ranked(0)) {
            Some(v) => format!("redirect to {}", v.id),
            None => "the origin: no volunteer may serve it now".to_string(),
        }
    };
    json!({
        "repo": subject.facts.repo,
        "path": subject.facts.rel,
        "generation": subject.generation,
        "size": subject.size,
        "customer": {
            "address": c.addr.to_string(),
            "from": via,
            "site": p.site.map(|s| st.location.site_name(s).to_string()),
            "region": p.region.map(|r| st.location.region_name(r).to_string()),
            "asn": p.asn,
            "country": p.country.map(code),
        },
        "policy": st.balancer.policy().name(),
        "answer": answer,
        "volunteers": volunteers,
        "origin": subject.origin,
    })
}

/// Why a ranked volunteer stands where it does, against the one ranked first.
fn reason_ranked(v: &Considered, seen: &[Considered]) -> String {
    let tier = v
        .tier
        .map_or("any".to_string(), |t| format!("{} tier", t.name()));
    let wait = v
        .wait
        .map_or("no modelled wait (uplink undeclared)".to_string(), |w| {
            format!("modelled wait {:.1} ms", w * 1e3)
        });
    let extra = if v.extra > 0.0 {
        format!(", plus {:.1} ms of extra round trips", v.extra * 1e3)
    } else {
        String::new()
    };
    let first = seen.iter().find(|o| o.verdict == Verdict::Ranked(0));
    let why = match (v.verdict, first) {
        (Verdict::Ranked(0), _) => "",
        (_, Some(f)) if f.tier < v.tier => "; a nearer tier comes first",
        (_, Some(f)) if f.tier > v.tier => {
            "; a farther tier comes first: its wait with the round trips is shorter"
        }
        _ => "; the policy ranks it after those before it",
    };
    format!("{tier}, {wait}{extra}{why}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The document as a page: the customer, then one row per volunteer.
fn html(doc: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "–".to_string(),
        Value::String(t) => escape(t),
        other => escape(&other.to_string()),
    };
    let c = &doc["customer"];
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mirror list: {path}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head><body>\
         <h1>{repo}/{path}</h1><p>generation {gen}, {size} bytes. Policy <b>{policy}</b>. \
         Answer: <b>{answer}</b>.</p><h2>Customer</h2><p>{addr} (from the {from}): site {site}, \
         region {region}, AS {asn}, country {country}.</p><h2>Volunteers</h2><table><tr>\
         <th>volunteer</th><th>tier</th><th>wait (ms)</th><th>extra round trips (ms)</th>\
         <th>customers / capacity</th><th>verdict</th><th>why</th></tr>",
        repo = s(&doc["repo"]),
        path = s(&doc["path"]),
        gen = s(&doc["generation"]),
        size = s(&doc["size"]),
        policy = s(&doc["policy"]),
        answer = s(&doc["answer"]),
        addr = s(&c["address"]),
        from = s(&c["from"]),
        site = s(&c["site"]),
        region = s(&c["region"]),
        asn = s(&c["asn"]),
        country = s(&c["country"]),
    );
    for v in doc["volunteers"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "<tr><td><a href=\"{url}\">{name}</a> ({id})</td><td>{tier}</td><td>{wait}</td><td>{extra}</td>\
             <td>{cc} / {cap}</td><td>{verdict}</td><td>{reason}</td></tr>",
            url = s(&v["url"]),
            id = s(&v["id"]),
            name = s(&v["name"]),
            tier = s(&v["tier"]),
            wait = s(&v["wait_ms"]),
            extra = s(&v["extra_round_trips_ms"]),
            cc = s(&v["customers"]),
            cap = s(&v["capacity"]),
            verdict = s(&v["verdict"]),
            reason = s(&v["reason"]),
        );
    }
    let _ = writeln!(
        out,
        "</table><p>Last resort: <a href=\"{o}\">{o}</a></p></body></html>",
        o = s(&doc["origin"])
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_asked_by_its_parameter_alone() {
        assert!(asked(Some("mirrorlist")));
        assert!(asked(Some("ip=10.0.0.1&mirrorlist")));
        assert!(asked(Some("mirrorlist=1")));
        assert!(!asked(Some("generation=3")));
        assert!(!asked(Some("mirrorlistx")));
        assert!(!asked(None));
        assert_eq!(asked_ip("mirrorlist&ip=10.0.0.1"), Some("10.0.0.1"));
    }

    #[test]
    fn html_escapes_what_volunteers_wrote() {
        let doc = json!({"repo": "r", "path": "<p>", "customer": {},
            "volunteers": [{"id": "v", "url": "http://x/\"><script>", "reason": "a & b"}]});
        let page = html(&doc);
        assert!(
            !page.contains("<script>") && page.contains("&lt;p&gt;") && page.contains("a &amp; b")
        );
    }
}
