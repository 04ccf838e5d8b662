//! Everything the server's handlers share.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::locks::{read, write};

use balance::Balancer;
use manifest::ServerKey;
use tracker::swarm::Swarms;

use crate::publish::{Publisher, RepoSnapshot};
use crate::store::{Store, VolunteerRecord};

pub struct AppState {
    pub config: config::ServerConfig,
    /// The runtime the server started on, for work that must not run on a serving thread's.
    pub background: tokio::runtime::Handle,
    pub public_url: String,
    /// The `https://` URL customers reach it at, when it serves HTTPS: the origin's URL for a
    /// customer that came over HTTPS.
    pub public_tls_url: Option<String>,
    pub key: Arc<ServerKey>,
    pub store: Store,
    pub publisher: Publisher,
    /// Serialises publishes; the request path never takes it.
    pub publish_lock: tokio::sync::Mutex<()>,
    /// Serialises the making of manifest deltas ([`crate::delta`]): each costs a gigabyte on
    /// a repository of millions of files.
    pub deltas: tokio::sync::Mutex<()>,
    /// Current generation of each repository, swapped whole by a publish.
    pub repos: crate::snapshots::Snapshots,
    pub repo_dirs: BTreeMap<String, PathBuf>,
    /// Mirror info-hash → repository name.
    pub info_hashes: HashMap<[u8; 20], String>,
    /// The volunteers, their load and the policy: who gets a customer.
    pub balancer: Balancer,
    /// Where customers and volunteers are ([`crate::location`]).
    pub location: crate::location::Location,
    pub swarms: Mutex<Swarms>,
    /// The torrents the tracker lists, per repository (refreshed by each publish).
    pub published: Mutex<crate::torrents::PublishedTorrents>,
    /// Enrolled volunteers by id, mirrored from the store.
    pub credentials: RwLock<HashMap<String, VolunteerRecord>>,
    pub admin_token: String,
    /// Bytes of file content the origin sent over HTTP (GET 200/206 bodies).
    pub origin_http_bytes: std::sync::atomic::AtomicU64,
    /// The origin's BitTorrent seed, once started.
    pub seed: tokio::sync::OnceCell<Arc<crate::seed::OriginSeed>>,
    /// Who may download from the origin's seed.
    pub origin_gate: Mutex<crate::origin_gate::OriginGate>,
    /// Counters for `/metrics` and the dashboard.
    pub counters: crate::counters::Counters,
    /// Spot checks of volunteers' bytes, and customers' reports.
    pub spot: crate::spot_ledger::SpotChecks,
    /// Customers' requests per file, decayed ([`crate::popularity`]).
    pub popularity: crate::popularity::Popularity,
    /// What each volunteer holds, in files and bytes, as `/api/volunteers` last found it.
    pub held_totals: crate::held_share::HeldTotals,
    /// Volunteers' budgets as worked out ([`crate::budget`]).
    pub budgets: crate::budget::Budgets,
    /// How far each staged generation spread ([`crate::staging`]).
    pub staging: crate::staging::Progress,
    /// Addresses the origin's seed announced from (so the tracker can hide it): at most
    /// [`crate::tracker_http::MAX_ORIGIN_ADDRS`].
    pub origin_peers: RwLock<std::collections::HashSet<std::net::SocketAddr>>,
    /// The public URLs of the mirror's live servers, when it has more than this one (empty
    /// when alone): told to volunteers at enrollment and in every reply to their announces,
    /// so that each announces to all of them. Kept by [`crate::follow`].
    pub servers: RwLock<Arc<[String]>>,
}

impl crate::spotcheck::Source for AppState {
    fn spot_parts(&self) -> crate::spotcheck::Parts<'_> {
        crate::spotcheck::Parts {
            trust: &self.config.trust,
            direct_max_bytes: self.config.redirect.direct_max_bytes,
            data_dir: &self.config.data_dir,
            balancer: &self.balancer,
            repos: &self.repos,
            spot: &self.spot,
            store: &self.store,
            credentials: &self.credentials,
            quarantines: &self.counters.quarantines,
        }
    }
}

impl AppState {
    /// Where a customer who can follow `reach` reaches this server: over HTTPS if it came
    /// that way (and the server serves HTTPS), else the public URL.
    pub fn base_for(&self, reach: balance::Reach) -> &str {
        match &self.public_tls_url {
            Some(tls) if reach.secure_only() => tls,
            _ => &self.public_url,
        }
    }

    /// The generation of `name` customers are sent to.
    pub fn repo(&self, name: &str) -> Option<Arc<RepoSnapshot>> {
        self.repos.get(name)
    }

    /// The newest generation of `name` published: a staged one if there is one (see
    /// [`crate::staging`]). What volunteers sync, verify and are checked against.
    pub fn newest(&self, name: &str) -> Option<Arc<RepoSnapshot>> {
        self.repos.get(name).map(|s| s.newest())
    }

    /// The generation staged on top of `name`'s live one, if any: its number, since when,
    /// its deadline, and how far it spread as last worked out.
    pub fn staging_of(&self, name: &str) -> Option<serde_json::Value> {
        let live = self.repo(name)?;
        let staged = live.staged.as_ref()?;
        let spread = self
            .staging
            .get(name)
            .filter(|s| s.generation == staged.snap.generation);
        Some(serde_json::json!({
            "generation": staged.snap.generation,
            "live": live.generation,
            "since": staged.since,
            "deadline": staged.deadline,
            "spread": spread.as_ref().map(|s| s.spread),
            "goal": self.config.staging.spread,
            "changed_files": spread.as_ref().map(|s| s.changed_files),
            "changed_bytes": spread.as_ref().map(|s| s.changed_bytes),
            "ready_volunteers": spread.as_ref().map(|s| s.ready_volunteers),
        }))
    }

    pub fn latest_generations(&self) -> BTreeMap<String, u64> {
        self.repos
            .all()
            .into_iter()
            .map(|s| (s.name.clone(), s.generation()))
            .collect()
    }

    /// What `/metrics` reads.
    pub fn metrics_sources(&self) -> crate::metrics::Sources<'_> {
        crate::metrics::Sources {
            counters: &self.counters,
            balancer: &self.balancer,
            swarms: &self.swarms,
            spot: &self.spot,
            credentials: &self.credentials,
            generations: self.latest_generations(),
            origin_http_bytes: self
                .origin_http_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            origin_seed_bytes: self.seed.get().map_or(0, |s| s.uploaded_bytes()),
        }
    }

    pub fn credential(&self, id: &str) -> Option<VolunteerRecord> {
        read(&self.credentials).get(id).cloned()
    }

    /// Reload the enrolled volunteers from the store. A record this server added while the
    /// store was being read (an enrollment just redeemed here) is kept: the read may predate
    /// it, and dropping it would refuse that volunteer's first announces. The only records a
    /// store ever deletes are revoked ones (replaced by a new enrollment of the name), so one
    /// kept that way refuses its announces all the same.
    pub async fn reload_credentials(&self) -> Result<(), crate::store::StoreError> {
        let all = self.store.volunteers().await?;
        let mut map: HashMap<String, VolunteerRecord> =
            all.into_iter().map(|v| (v.id.clone(), v)).collect();
        let mut current = write(&self.credentials);
        for (id, rec) in current.drain() {
            map.entry(id).or_insert(rec);
        }
        *current = map;
        Ok(())
    }

    /// Make the balancer honour a volunteer's standing as the store has it: revoked, gone;
    /// draining; quarantined.
    pub fn apply_standing(&self, rec: &VolunteerRecord) {
        let mut reg = self.balancer.registry();
        if rec.revoked {
            reg.remove(&rec.id);
        }
        reg.set_draining(&rec.id, rec.draining);
        reg.set_quarantined(&rec.id, rec.quarantine.is_some());
    }

    /// Reload every volunteer's record and standing from the store (after another server
    /// sharing it, or an admin command beside this one, changed them).
    pub async fn reload_volunteers(&self) -> Result<(), crate::store::StoreError> {
        self.reload_credentials().await?;
        let creds: Vec<VolunteerRecord> = read(&self.credentials).values().cloned().collect();
        for rec in &creds {
            self.apply_standing(rec);
        }
        Ok(())
    }
}
