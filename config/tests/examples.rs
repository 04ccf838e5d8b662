//! The example configurations in `examples/` parse, and the values they show as defaults are
//! the defaults: the documentation cannot drift from the code.

use mirrorswarm_config::{load_file, ServerConfig, VolunteerConfig};

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn server_example_parses_and_shows_the_defaults() {
    let c: ServerConfig = load_file(&example("server.toml")).unwrap();
    let d = ServerConfig::default();
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.tracker.interval_secs, d.tracker.interval_secs);
    assert_eq!(c.tracker.timeout_intervals, d.tracker.timeout_intervals);
    assert_eq!(c.tracker.torrents, d.tracker.torrents);
    assert_eq!(c.tracker.max_peers_per_swarm, d.tracker.max_peers_per_swarm);
    assert_eq!(c.tracker.max_swarms, d.tracker.max_swarms);
    assert_eq!(
        c.tracker.max_peers_per_address,
        d.tracker.max_peers_per_address
    );
    assert_eq!(
        c.tracker.max_peers_per_prefix,
        d.tracker.max_peers_per_prefix
    );
    assert_eq!(
        c.tracker.max_swarms_per_address,
        d.tracker.max_swarms_per_address
    );
    assert_eq!(
        c.tracker.max_swarms_per_prefix,
        d.tracker.max_swarms_per_prefix
    );
    assert_eq!(c.tracker.announce_rate, d.tracker.announce_rate);
    assert_eq!(c.tracker.announce_burst, d.tracker.announce_burst);
    assert_eq!(c.redirect.policy, d.redirect.policy);
    assert_eq!(c.redirect.direct_max_bytes, d.redirect.direct_max_bytes);
    assert_eq!(c.redirect.alternatives, d.redirect.alternatives);
    assert_eq!(
        c.redirect.connection_window_secs,
        d.redirect.connection_window_secs
    );
    assert_eq!(c.redirect.slow_start_secs, d.redirect.slow_start_secs);
    assert_eq!(c.prsync.torrent_min_bytes, d.prsync.torrent_min_bytes);
    assert_eq!(c.prsync.seed, d.prsync.seed);
    assert_eq!(c.trust.spot_check_secs, d.trust.spot_check_secs);
    assert_eq!(c.trust.suspect_speedup, d.trust.suspect_speedup);
    assert_eq!(c.trust.whole_file_max_bytes, d.trust.whole_file_max_bytes);
    assert_eq!(c.trust.release_after_passes, d.trust.release_after_passes);
    assert_eq!(c.trust.check_timeout_secs, d.trust.check_timeout_secs);
    assert_eq!(c.staging.enabled, d.staging.enabled);
    assert_eq!(c.staging.spread, d.staging.spread);
    assert_eq!(c.staging.deadline_secs, d.staging.deadline_secs);
    assert_eq!(c.location.trusted_proxies, d.location.trusted_proxies);
    assert_eq!(c.location.sites.len(), d.location.sites.len());
    assert_eq!(c.limits.header_timeout_secs, d.limits.header_timeout_secs);
    assert_eq!(c.limits.client_stall_secs, d.limits.client_stall_secs);
    assert_eq!(c.limits.max_connections, d.limits.max_connections);
    assert_eq!(
        c.limits.max_connections_per_ip,
        d.limits.max_connections_per_ip
    );
    assert_eq!(c.repos.len(), 1);
}

#[test]
fn volunteer_example_parses_and_shows_the_defaults() {
    let c: VolunteerConfig = load_file(&example("volunteer.toml")).unwrap();
    let d = VolunteerConfig::default();
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.max_connections, d.max_connections);
    assert_eq!(c.rescan_secs, d.rescan_secs);
    assert_eq!(c.sync, d.sync);
    assert_eq!(c.limits.header_timeout_secs, d.limits.header_timeout_secs);
    assert_eq!(c.limits.client_stall_secs, d.limits.client_stall_secs);
    assert_eq!(c.limits.max_connections, d.limits.max_connections);
    assert_eq!(
        c.limits.max_connections_per_ip,
        d.limits.max_connections_per_ip
    );
    // Valid except for the example directory, which does not exist here.
    let mut c = c;
    let here = std::env::temp_dir();
    for dir in c.mirrors.values_mut() {
        *dir = here.clone();
    }
    assert!(c.validate().is_ok(), "{:?}", c.validate());
}
