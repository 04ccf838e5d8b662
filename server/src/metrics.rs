//! `GET /metrics`: Prometheus text exposition. The request path only bumps relaxed atomic
//! counters; per-volunteer and per-repository gauges are read from the registry at scrape
//! time, so scraping costs the request path nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use balance::Balancer;
use tracker::swarm::Swarms;

use crate::counters::{Counters, OUTCOMES};
use crate::locks::{lock, read};
use crate::spot_ledger::SpotChecks;
use crate::store::VolunteerRecord;

/// What `/metrics` reports on: the parts of the server's state it reads.
pub struct Sources<'a> {
    pub counters: &'a Counters,
    pub balancer: &'a Balancer,
    pub swarms: &'a Mutex<Swarms>,
    pub spot: &'a SpotChecks,
    /// Enrolled volunteers by id (their names label the per-volunteer gauges).
    pub credentials: &'a RwLock<HashMap<String, VolunteerRecord>>,
    /// The newest published generation of each repository.
    pub generations: BTreeMap<String, u64>,
    /// File bytes the origin served over HTTP, and uploaded as a BitTorrent seed.
    pub origin_http_bytes: u64,
    pub origin_seed_bytes: u64,
}

/// A label value, escaped as the exposition format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The embedded tracker: what its bounds refused, and what it holds.
fn tracker_metrics(st: &Sources, out: &mut String) {
    let (r, swarms, peers, listed, trusted) = {
        let s = lock(st.swarms);
        (
            s.refusals(),
            s.swarm_count(),
            s.peer_count(),
            s.listed_count(),
            s.trusted_count(),
        )
    };
    header(
        out,
        "mirrorswarm_tracker_refused_total",
        "counter",
        "Plain BitTorrent announces (and scrapes, for rate) the tracker refused, by reason.",
    );
    for (reason, n) in [
        ("rate", r.rate),
        ("unknown_torrent", r.unknown_torrent),
        ("too_many_torrents", r.too_many_swarms),
        ("torrents_per_source", r.source_swarms),
        ("peers_per_source", r.source_peers),
        ("swarm_full", r.swarm_full),
        ("peer_id_taken", r.peer_id_taken),
    ] {
        let _ = writeln!(
            out,
            "mirrorswarm_tracker_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let rows: [(&str, &str, &str, u64); 5] = [
        (
            "mirrorswarm_tracker_evicted_total",
            "counter",
            "Anonymous peers that gave their place in a full swarm to a volunteer's or the origin's.",
            r.evicted,
        ),
        (
            "mirrorswarm_tracker_swarms",
            "gauge",
            "Swarms the tracker holds.",
            swarms as u64,
        ),
        (
            "mirrorswarm_tracker_peers",
            "gauge",
            "Peers the tracker holds, in all swarms.",
            peers as u64,
        ),
        (
            "mirrorswarm_tracker_listed_torrents",
            "gauge",
            "Torrents the tracker lists: the published ones and the repositories' swarms.",
            listed as u64,
        ),
        (
            "mirrorswarm_tracker_trusted_addresses",
            "gauge",
            "Addresses enrolled volunteers announced from within the peer TTL.",
            trusted as u64,
        ),
    ];
    for (name, kind, help, v) in rows {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
}

pub fn render(st: &Sources) -> String {
    let c = st.counters;
    let mut out = String::with_capacity(4096);
    let policy = label(st.balancer.policy().name());
    header(
        &mut out,
        "mirrorswarm_requests_total",
        "counter",
        "Customer file requests by outcome.",
    );
    for (o, name) in OUTCOMES {
        let _ = writeln!(
            out,
            "mirrorswarm_requests_total{{policy=\"{policy}\",outcome=\"{name}\"}} {}",
            c.outcome(o)
        );
    }
    let simple: [(&str, &str, &str, u64); 10] = [
        (
            "mirrorswarm_redirected_bytes_total",
            "counter",
            "Bytes of the files customers were redirected to volunteers for.",
            c.redirected_bytes.sum(),
        ),
        (
            "mirrorswarm_origin_http_bytes_total",
            "counter",
            "File bytes the origin served over HTTP.",
            st.origin_http_bytes,
        ),
        (
            "mirrorswarm_origin_seed_bytes_total",
            "counter",
            "Bytes the origin uploaded as a BitTorrent seed (sync traffic from the origin).",
            st.origin_seed_bytes,
        ),
        (
            "mirrorswarm_announces_accepted_total",
            "counter",
            "Authenticated mirror announces accepted.",
            c.announces_ok.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_announces_refused_total",
            "counter",
            "Mirror announces refused (bad signature, replay, revoked, malformed).",
            c.announces_refused.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_bounced_requests_total",
            "counter",
            "Customers a volunteer sent back to the origin because it could not serve the file (changed on disk, missing, paused or full).",
            c.bounced.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_quarantines_total",
            "counter",
            "Times a volunteer was quarantined by a failed spot check.",
            c.quarantines.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_verification_failures_total",
            "counter",
            "Spot checks that found bytes not matching the published hashes.",
            st.spot.failed.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_spot_checks_passed_total",
            "counter",
            "Spot checks whose bytes matched.",
            st.spot.passed.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_customer_reports_total",
            "counter",
            "Reports of bad bytes from customers' proxies.",
            st.spot.reports.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, v) in simple {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    tracker_metrics(st, &mut out);

    header(
        &mut out,
        "mirrorswarm_repo_generation",
        "gauge",
        "Newest published generation.",
    );
    for (repo, g) in &st.generations {
        let _ = writeln!(
            out,
            "mirrorswarm_repo_generation{{repo=\"{}\"}} {g}",
            label(repo)
        );
    }

    // Per volunteer, from the registry (names from the credentials).
    let names: HashMap<String, String> = read(st.credentials)
        .values()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    let reg = st.balancer.registry();
    let now = Instant::now();
    let gauges: [(&str, &str, &str); 8] = [
        (
            "mirrorswarm_volunteer_up",
            "gauge",
            "1 if its last announce is recent and it has not stopped.",
        ),
        (
            "mirrorswarm_volunteer_customer_connections",
            "gauge",
            "Customer connections it last reported.",
        ),
        (
            "mirrorswarm_volunteer_sync_connections",
            "gauge",
            "Sync connections it last reported.",
        ),
        (
            "mirrorswarm_volunteer_capacity",
            "gauge",
            "Concurrent customers it accepts.",
        ),
        (
            "mirrorswarm_volunteer_sync_bytes_per_second",
            "gauge",
            "Sync upload rate it last reported.",
        ),
        (
            "mirrorswarm_volunteer_quarantined",
            "gauge",
            "1 while quarantined.",
        ),
        (
            "mirrorswarm_volunteer_redirects_total",
            "counter",
            "Customers redirected to it.",
        ),
        (
            "mirrorswarm_volunteer_redirected_bytes_total",
            "counter",
            "Bytes of the files customers were redirected to it for.",
        ),
    ];
    let mut vols: Vec<_> = reg.all().collect();
    vols.sort_by(|a, b| a.id.cmp(&b.id));
    for (i, (name, kind, help)) in gauges.iter().enumerate() {
        header(&mut out, name, kind, help);
        for v in &vols {
            let who = label(names.get(&v.id).map_or(&v.id, |n| n));
            let value = match i {
                0 => u64::from(!v.stopped && reg.is_fresh(v, now)),
                1 => u64::from(v.load.customer_conns),
                2 => u64::from(v.load.sync_conns),
                3 => u64::from(v.load.capacity),
                4 => v.load.sync_bps,
                5 => u64::from(reg.is_quarantined(&v.id)),
                6 => v.issued_total,
                _ => v.issued_bytes,
            };
            let _ = writeln!(out, "{name}{{volunteer=\"{who}\"}} {value}");
        }
    }
    header(
        &mut out,
        "mirrorswarm_volunteer_generation",
        "gauge",
        "Generation it fully holds, per repository.",
    );
    for v in &vols {
        let who = label(names.get(&v.id).map_or(&v.id, |n| n));
        let mut gens: Vec<_> = v.generations.iter().collect();
        gens.sort();
        for (repo, g) in gens {
            let _ = writeln!(
                out,
                "mirrorswarm_volunteer_generation{{volunteer=\"{who}\",repo=\"{}\"}} {g}",
                label(repo)
            );
        }
    }
    out
}

/// `/metrics`' answer: [`render`] in Prometheus' text format.
pub fn response(st: &Sources) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(st),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use balance::registry::Registry;
    use std::time::Duration;

    /// The exposition from the parts alone: no server, no store.
    #[test]
    fn render_reads_only_the_parts_it_is_given() {
        let mut reg = Registry::new(Duration::from_secs(60));
        let report = tracker::mirror::MirrorReport {
            volunteer: "v-1".into(),
            seq: 1,
            generation: 3,
            customer_conns: 2,
            sync_conns: 1,
            upload_bps: 0,
            capacity: 8,
            url: "http://v1.test".into(),
            sync_bps: 0,
            link_bps: 0,
            paused: false,
            part: String::new(),
            nets: String::new(),
            private: false,
            other_urls: Vec::new(),
        };
        reg.report("debian", &report, false, Instant::now())
            .unwrap();
        let balancer = Balancer::new(
            reg,
            balance::policy::by_name("feedback", Duration::ZERO).unwrap(),
        );
        let counters = Counters::default();
        counters.quarantines.fetch_add(2, Ordering::Relaxed);
        let swarms = Mutex::new(Swarms::new(Default::default()));
        let spot = SpotChecks::default();
        let record = VolunteerRecord {
            id: "v-1".into(),
            name: "alice \"the\" mirror".into(),
            secret: vec![],
            url: "http://v1.test".into(),
            enrolled_at: 0,
            revoked: false,
            draining: false,
            quarantine: None,
        };
        let credentials = RwLock::new(HashMap::from([("v-1".to_string(), record)]));
        let text = render(&Sources {
            counters: &counters,
            balancer: &balancer,
            swarms: &swarms,
            spot: &spot,
            credentials: &credentials,
            generations: BTreeMap::from([("debian".to_string(), 4)]),
            origin_http_bytes: 1234,
            origin_seed_bytes: 56,
        });
        for line in [
            "mirrorswarm_origin_http_bytes_total 1234",
            "mirrorswarm_origin_seed_bytes_total 56",
            "mirrorswarm_quarantines_total 2",
            "mirrorswarm_repo_generation{repo=\"debian\"} 4",
            "mirrorswarm_volunteer_customer_connections{volunteer=\"alice \\\"the\\\" mirror\"} 2",
            "mirrorswarm_volunteer_generation{volunteer=\"alice \\\"the\\\" mirror\",repo=\"debian\"} 3",
            "mirrorswarm_requests_total{policy=\"feedback\",outcome=\"volunteer\"} 0",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }
}
