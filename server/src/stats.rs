//! The server's counters as `/api/stats` gives them, and the mirror's: on a database shared
//! with other servers each writes its own with its heartbeat (`follow`), and the mirror's are
//! their sum over the servers alive.

use serde_json::{Map, Value};
use std::sync::atomic::Ordering::Relaxed;

use crate::counters::Outcome;
use crate::state::AppState;

/// This server's counters since it started.
pub fn own(st: &AppState) -> Map<String, Value> {
    let c = &st.counters;
    let fields = [
        ("origin_http_bytes", st.origin_http_bytes.load(Relaxed)),
        (
            "seed_uploaded_bytes",
            st.seed.get().map_or(0, |s| s.uploaded_bytes()),
        ),
        ("spot_checks_passed", st.spot.passed.load(Relaxed)),
        ("spot_checks_failed", st.spot.failed.load(Relaxed)),
        (
            "spot_checks_inconclusive",
            st.spot.inconclusive.load(Relaxed),
        ),
        ("customer_reports", st.spot.reports.load(Relaxed)),
        ("redirects_to_volunteers", c.outcome(Outcome::Volunteer)),
        ("redirected_bytes", c.redirected_bytes.sum()),
        (
            "origin_requests",
            c.outcome(Outcome::OriginSmall)
                + c.outcome(Outcome::OriginNoVolunteer)
                + c.outcome(Outcome::OriginRequested),
        ),
        // Answered 503: the file on disk was not as published and no volunteer held it.
        ("origin_unavailable", c.outcome(Outcome::OriginUnavailable)),
        ("quarantines", c.quarantines.load(Relaxed)),
        ("bounced_requests", c.bounced.load(Relaxed)),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

/// The sum of each numeric counter over `servers` (each one's counters as JSON text); a
/// server's unreadable or missing counters count as none.
pub fn sum<'a>(servers: impl IntoIterator<Item = &'a str>) -> Map<String, Value> {
    let mut total: Map<String, Value> = Map::new();
    for text in servers {
        let Ok(Value::Object(counters)) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        for (k, v) in counters {
            let Some(n) = v.as_u64() else { continue };
            let t = total.entry(k).or_insert(Value::from(0u64));
            *t = Value::from(t.as_u64().unwrap_or(0).saturating_add(n));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirrors_counters_are_the_sum_of_its_servers() {
        let total = sum([
            r#"{"redirects_to_volunteers": 3, "origin_requests": 1}"#,
            r#"{"redirects_to_volunteers": 4, "quarantines": 1, "note": "x"}"#,
            "not json",
            r#"[1, 2]"#,
        ]);
        assert_eq!(
            Value::Object(total),
            serde_json::json!({"redirects_to_volunteers": 7, "origin_requests": 1, "quarantines": 1})
        );
    }
}
