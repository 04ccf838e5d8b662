//! The sync engine: bring a destination tree to the server's newest generation, cheapest
//! source first, and install only what verified.
//!
//! Per file of the new generation: unchanged → nothing; the same bytes elsewhere in the tree →
//! local copy; a large file with a similar local one → first guess from block signatures, then
//! BitTorrent fixes the pieces it got wrong (peers first; the origin seeds too); other large
//! files → BitTorrent; small files → batches, many a request ([`crate::batched`]: volunteers
//! holding them, else the origin), and what no batch brought through the server's redirect.
//! Anything that fails or does not verify falls back to the origin over HTTP. A first fill
//! places small files in the tree as they arrive; otherwise what is fetched is staged and
//! installed at the end.
//!
//! A pull deletes only what a sync put there ([`crate::tree`]): it refuses a tree that holds
//! files the manifest does not list unless told to adopt it, and of the files a generation
//! drops it deletes those an earlier generation listed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use manifest::delta::Delta;
use manifest::record::Record;
use manifest::scan::{hash_file, scan_record, unchanged_since, CachedFile};
use manifest::{Entry, Manifest, SignedManifest};

use crate::blockmatch::{first_guess, BlockSignature};
use crate::bt::{is_origin, Bt, BtConfig};
use crate::fetch::{fetch_verified, FetchError};
use crate::local::{install, InstallError, LockError, StateDir, TreeLock};
use crate::tree::{self, Owner, Standing, TreeError};

/// Exit codes of `mirrorswarm prsync pull` (documented in its --help).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const LOCKED: u8 = 3;
    pub const UNVERIFIED: u8 = 4;
    pub const SERVER: u8 = 5;
    /// The destination holds files mirrorswarm did not put there (`--adopt` takes it over).
    pub const NOT_OWN: u8 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("server: {0}")]
    Server(String),
    #[error("the server has no repository `{repo}`; it publishes: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownRepo { repo: String, known: Vec<String> },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    InTheWay(InstallError),
    #[error("{path}: no source gave bytes matching the signed manifest ({why})")]
    Unverified { path: String, why: String },
    /// The disk is full. What was fetched stays (staged, or on a first fill in place) for
    /// the next pull, which resumes it.
    #[error(
        "no space left on the device of {}: {what}; the {kept} bytes fetched so far are kept \
         for the next pull to resume, in {} (remove that directory to free them) and, on a \
         first fill, as files already in place",
        dest.display(),
        staging.display()
    )]
    NoSpace {
        dest: PathBuf,
        what: String,
        staging: PathBuf,
        kept: u64,
    },
    /// A newer generation came while a torrent of this one made no progress: its files may
    /// be gone from every peer and the origin (a lagging volunteer waited out the whole
    /// stall timeout, then the origin's 404, for a file already replaced). What was fetched
    /// stays staged, and a pull of the newest generation takes it up.
    #[error("generation {generation} was superseded by {newest} while {path} made no progress")]
    Superseded {
        generation: u64,
        newest: u64,
        path: String,
    },
    /// This machine's disk failed while doing `what` (a full disk is [`PullError::NoSpace`]).
    #[error("{what}: {source}")]
    LocalIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The destination could not be scanned.
    #[error("scanning {}: {source}", dest.display())]
    Scan {
        dest: PathBuf,
        #[source]
        source: manifest::ManifestError,
    },
    /// The key pinned in the tree does not parse: the tree's state is damaged.
    #[error("the key pinned in {} is unreadable ({why}); remove the file to pin the server's key again", path.display())]
    PinnedKey { path: PathBuf, why: String },
    /// The HTTP client could not be built.
    #[error("starting the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A task of this pull panicked or was cancelled.
    #[error("a task of this pull failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl PullError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PullError::Locked(LockError::Held(_)) => exit::LOCKED,
            PullError::Server(_) => exit::SERVER,
            PullError::Unverified { .. } => exit::UNVERIFIED,
            PullError::Tree(TreeError::NotOwn { .. } | TreeError::OtherRepo { .. }) => {
                exit::NOT_OWN
            }
            _ => exit::ERROR,
        }
    }
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}

/// A failure of this machine's own disk while `what`: a full disk says so, and how much the
/// staging area holds.
fn local_io(state: &StateDir, dest: &Path, what: String, e: &std::io::Error) -> PullError {
    if is_no_space(e) {
        PullError::NoSpace {
            dest: dest.to_path_buf(),
            what,
            staging: state.staging(),
            kept: tree_bytes(&state.staging()),
        }
    } else {
        PullError::LocalIo {
            what,
            source: std::io::Error::new(e.kind(), e.to_string()),
        }
    }
}

/// Bytes of the files in `dir` and below, the tree's own state aside (the staging area's, or
/// a first fill's tree).
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".mirrorswarm"))
            .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
            .map(|(p, t)| {
                if t.is_dir() {
                    tree_bytes(&p)
                } else if t.is_file() {
                    std::fs::metadata(&p).map_or(0, |m| m.len())
                } else {
                    0
                }
            })
            .sum()
    })
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub server: String,
    pub repo: String,
    pub dest: PathBuf,
    /// The server's key; `None`: fetch it and pin it in the tree on first use.
    pub key: Option<VerifyingKey>,
    /// Give up on a torrent that makes no progress for this long (then: origin over HTTP).
    pub stall: Duration,
    /// Where a temporary BitTorrent session listens, when none is passed in.
    pub bt_listen: SocketAddr,
    /// Told what the pull fetches as it goes (`None`: nothing reports).
    pub progress: Option<std::sync::Arc<dyn crate::progress::Progress>>,
    /// Parallel HTTP fetches.
    pub http_parallel: usize,
    /// After installing, how long to keep seeding while others still download.
    pub linger: Duration,
    /// The newest generation the caller knows of, kept current (a daemon's announces). Once
    /// it passes the one this pull fetches, a torrent with no progress for
    /// [`SUPERSEDED_STALL`] ends the pull ([`PullError::Superseded`]) rather than waiting
    /// out `stall`. `None`: the pull's own generation is the only one it knows.
    pub newest: Option<tokio::sync::watch::Receiver<u64>>,
    /// Take over a tree that holds files the manifest does not list ([`crate::tree`]).
    pub adopt: bool,
    /// Delete files the manifest does not list, whoever put them there.
    pub delete_extraneous: bool,
    /// What of the repository the tree holds (default: everything). Files outside it are
    /// neither fetched nor kept, if a sync put them there.
    pub select: manifest::select::Selection,
    /// The address this machine serves its mirror at (a volunteer's): its own batches are
    /// not asked of itself.
    pub own_url: Option<String>,
    /// Told of the small files this pull writes after checking them
    /// ([`crate::batched::Written`]), for a volunteer answering batches meanwhile.
    pub written: Option<std::sync::Arc<crate::batched::Written>>,
}

/// How long a torrent of a superseded generation may make no progress before the pull
/// gives way to one of the newest.
pub const SUPERSEDED_STALL: Duration = Duration::from_secs(2);

impl PullOptions {
    pub fn new(server: &str, repo: &str, dest: &Path) -> Self {
        PullOptions {
            server: server.trim_end_matches('/').to_string(),
            repo: repo.to_string(),
            dest: dest.to_path_buf(),
            key: None,
            stall: Duration::from_secs(20),
            bt_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            progress: None,
            http_parallel: 4,
            linger: Duration::from_secs(60),
            newest: None,
            adopt: false,
            delete_extraneous: false,
            select: Default::default(),
            own_url: None,
            written: None,
        }
    }
}

/// What a pull did. `speedup` is the paper's measure: repository bytes ÷ bytes transferred.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub generation: u64,
    /// The generation the tree held, when the pull took only the signed changes since it
    /// rather than the whole manifest.
    pub since: Option<u64>,
    pub files: usize,
    pub unchanged_files: usize,
    pub installed_files: usize,
    pub removed_files: usize,
    /// Files the manifest does not list that no sync put there: left alone.
    pub left_alone_files: usize,
    pub repo_bytes: u64,
    pub reused_local_bytes: u64,
    pub from_peers_bytes: u64,
    pub from_origin_bytes: u64,
    pub wall_secs: f64,
}

impl Summary {
    pub fn transferred(&self) -> u64 {
        self.from_peers_bytes + self.from_origin_bytes
    }
    pub fn speedup(&self) -> f64 {
        self.repo_bytes as f64 / self.transferred().max(1) as f64
    }
    pub fn line(&self) -> String {
        let since = match self.since {
            Some(g) => format!(" (the changes since {g})"),
            None => String::new(),
        };
        let left = if self.left_alone_files > 0 {
            format!(", {} not listed left alone", self.left_alone_files)
        } else {
            String::new()
        };
        format!(
            "generation {}{since}: {} files ({} unchanged, {} installed, {} removed{left}); reused locally {} B, from peers {} B, from origin {} B; {:.2} s; speedup {:.1}x",
            self.generation,
            self.files,
            self.unchanged_files,
            self.installed_files,
            self.removed_files,
            self.reused_local_bytes,
            self.from_peers_bytes,
            self.from_origin_bytes,
            self.wall_secs,
            self.speedup()
        )
    }
}

#[derive(serde::Deserialize)]
struct Info {
    public_key: String,
    #[serde(default)]
    seed_port: Option<u16>,
    /// Repository → newest generation.
    #[serde(default)]
    repos: Option<BTreeMap<String, u64>>,
}

struct Ctx<'a> {
    opts: &'a PullOptions,
    http: reqwest::Client,
    state: StateDir,
    origin_seed: Option<SocketAddr>,
    summary: Summary,
    progress: Option<std::sync::Arc<dyn crate::progress::Progress>>,
    /// The BitTorrent session is this pull's own (not a daemon's that keeps seeding).
    own_bt: bool,
    /// Set when a torrent was given up for a newer generation: `(newest, path)`.
    superseded: Option<(u64, String)>,
    /// Contents hashed as they arrived and staged (or placed) only because they matched: not
    /// hashed again before installing.
    verified: std::collections::HashSet<manifest::Sha256>,
    /// Contents a first fill placed straight in the tree, at the path given (verified as
    /// they arrived; installing copies them to any other path that wants them).
    placed: HashMap<manifest::Sha256, String>,
    /// This pull fills an empty tree: small files are placed as they arrive.
    first_fill: bool,
}

/// One distinct content to obtain (several paths may want the same bytes).
struct Job {
    path: String,
    entry: Entry,
}

/// The generation a pull brings the tree to, as the stages need it: the whole manifest, or,
/// on a tree that holds an earlier generation exactly as its scan record says, only the
/// signed changes since ([`fetch_delta`]): for millions of files, kilobytes instead of
/// hundreds of megabytes to fetch, parse and hold.
#[derive(Clone)]
enum Target {
    Whole(std::sync::Arc<Manifest>),
    Since(std::sync::Arc<Delta>),
}

impl Target {
    fn generation(&self) -> u64 {
        match self {
            Target::Whole(m) => m.generation,
            Target::Since(d) => d.to,
        }
    }

    fn files(&self) -> usize {
        match self {
            Target::Whole(m) => m.files.len(),
            Target::Since(d) => d.file_count as usize,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Target::Whole(m) => m.total_bytes(),
            Target::Since(d) => d.total_bytes,
        }
    }

    /// The entries a plan must look at: every file, or those that changed.
    fn entries(&self) -> &BTreeMap<String, Entry> {
        match self {
            Target::Whole(m) => &m.files,
            Target::Since(d) => &d.changed,
        }
    }

    /// Record that this generation is being installed ([`tree::begin_install`]).
    fn begin_install(&self, state: &StateDir) -> Result<(), TreeError> {
        match self {
            Target::Whole(m) => tree::begin_install(state, m),
            Target::Since(d) => tree::begin_install_delta(state, d),
        }
    }
}

/// What a pull will do to a tree, decided before it changes anything; `--dry-run` prints it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub repo: String,
    pub generation: u64,
    pub dest: PathBuf,
    /// `own`, `empty` (to be filled), `copy` (adopted: every file is listed), `adopted`
    /// (holds files the manifest does not list; `--adopt` given).
    pub standing: String,
    /// Files of the generation already in place.
    pub unchanged: usize,
    /// Files to put in place, each with where its bytes come from.
    pub install: Vec<PlannedFile>,
    /// Files the generation dropped that an earlier one listed (or, with
    /// `--delete-extraneous`, any file it does not list).
    pub delete: Vec<String>,
    /// Files the manifest does not list and no sync put there.
    pub left_alone: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedFile {
    pub path: String,
    pub size: u64,
    /// `local copy of P` (identical bytes), `fetch, first guess from P` (similar file),
    /// `fetch`.
    pub source: String,
}

impl Plan {
    /// The dry run's report, one line per file, then a summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "dry run: generation {} of `{}` into {} ({}); nothing was changed",
            self.generation,
            self.repo,
            self.dest.display(),
            self.standing
        )];
        for f in &self.install {
            out.push(format!("install {} ({} B, {})", f.path, f.size, f.source));
        }
        for p in &self.delete {
            out.push(format!("delete  {p}"));
        }
        for p in &self.left_alone {
            out.push(format!("keep    {p} (not listed; not put there by a sync)"));
        }
        let fetch: u64 = self
            .install
            .iter()
            .filter(|f| !f.source.starts_with("local copy"))
            .map(|f| f.size)
            .sum();
        let reuse = self.install.iter().filter(|f| f.source != "fetch").count();
        out.push(format!(
            "would install {} files ({} reusing local bytes; at most {fetch} B to fetch), keep {} unchanged, delete {}, leave {} alone",
            self.install.len(),
            reuse,
            self.unchanged,
            self.delete.len(),
            self.left_alone.len()
        ));
        out
    }
}

/// What the server said before anything local is touched.
struct Prepared {
    http: reqwest::Client,
    info: Info,
    key: VerifyingKey,
    /// The key was offered by the server and is not pinned in the tree yet.
    pin: bool,
    target: Target,
    standing: Standing,
}

async fn prepare(opts: &PullOptions) -> Result<Prepared, PullError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(PullError::Client)?;
    let info: Info = get_json(&http, &format!("{}/api/info", opts.server)).await?;
    if let Some(repos) = &info.repos {
        if !repos.contains_key(&opts.repo) {
            return Err(PullError::UnknownRepo {
                repo: opts.repo.clone(),
                known: repos.keys().cloned().collect(),
            });
        }
    }
    let state = StateDir::new(&opts.dest);
    let (key, pin) = trusted_key(opts, &state, &info)?;
    if let Some((owner, delta)) = fetch_delta(&http, opts, &state, &key).await {
        return Ok(Prepared {
            http,
            info,
            key,
            pin,
            target: Target::Since(std::sync::Arc::new(delta)),
            standing: Standing::Own(owner),
        });
    }
    let manifest = std::sync::Arc::new(fetch_manifest(&http, opts, &key).await?);
    let (dest, repo) = (opts.dest.clone(), opts.repo.clone());
    let m = manifest.clone();
    let standing = blocking(move || tree::standing(&dest, &repo, &m)).await??;
    if let Standing::Foreign(unknown) = &standing {
        if !opts.adopt {
            return Err(TreeError::NotOwn {
                dest: opts.dest.clone(),
                repo: opts.repo.clone(),
                unknown: unknown.clone(),
            }
            .into());
        }
    }
    Ok(Prepared {
        http,
        info,
        key,
        pin,
        target: Target::Whole(manifest),
        standing,
    })
}

fn standing_name(s: &Standing) -> &'static str {
    match s {
        Standing::Own(_) => "a mirrorswarm tree",
        Standing::Empty => "empty: it will be filled",
        Standing::Copy { .. } => "every file in it is listed: it will be adopted",
        Standing::Foreign(_) => "holds files not listed: adopted with --adopt",
    }
}

/// Print nothing, change nothing: what [`pull`] would do to the tree now.
pub async fn dry_run(opts: &PullOptions) -> Result<Plan, PullError> {
    let mut p = prepare(opts).await?;
    let state = StateDir::new(&opts.dest);
    let (local, _) = scan_stage(opts, &state, &mut p).await?;
    let mut plan = make_plan(opts, &state, &p.target, &local)?.0;
    plan.standing = standing_name(&p.standing).to_string();
    Ok(plan)
}

/// What the tree holds now, and whether that differs from its scan record. A pull that
/// fetched only a delta needs the tree to hold the generation it came from exactly as its
/// record says; when it does not, the whole manifest is fetched after all (`p.target`
/// replaced) and the tree scanned.
async fn scan_stage(
    opts: &PullOptions,
    state: &StateDir,
    p: &mut Prepared,
) -> Result<(Record, bool), PullError> {
    if let Target::Since(d) = &p.target {
        let d = d.clone();
        if let Some(record) = unchanged_record(opts, state, d.from).await? {
            if !opts.select.is_everything() {
                // [`fetch_delta`] took a partial tree's delta only with what it held
                // recorded, under the same selection.
                let held = tree::held(state).unwrap_or_default();
                let part = narrowed(&d, &opts.select, &record, &held);
                p.target = Target::Since(std::sync::Arc::new(part));
            }
            return Ok((record, false));
        }
        tracing::info!(
            dest = %opts.dest.display(),
            "the tree changed since its last pull: fetching the whole manifest"
        );
        let m = fetch_manifest(&p.http, opts, &p.key).await?;
        p.target = Target::Whole(std::sync::Arc::new(m));
    }
    scan_local(opts, state).await
}

/// A partial tree's part of a delta: the changes to the paths it holds, and its own files and
/// bytes after them (from what it held, with the sizes its record gives the paths that
/// change or go).
fn narrowed(
    d: &Delta,
    select: &manifest::select::Selection,
    local: &Record,
    held: &tree::Held,
) -> Delta {
    let changed: BTreeMap<String, Entry> = d
        .changed
        .iter()
        .filter(|(p, _)| select.holds(p))
        .map(|(p, e)| (p.clone(), *e))
        .collect();
    let removed: Vec<String> = d
        .removed
        .iter()
        .filter(|p| select.holds(p))
        .cloned()
        .collect();
    let (mut files, mut bytes) = (held.files as i128, held.bytes as i128);
    for (p, e) in &changed {
        match local.get(p) {
            Some(c) => bytes += e.size as i128 - c.size as i128,
            None => {
                files += 1;
                bytes += e.size as i128;
            }
        }
    }
    for c in removed.iter().filter_map(|p| local.get(p)) {
        files -= 1;
        bytes -= c.size as i128;
    }
    Delta {
        delta_of: d.delta_of.clone(),
        from: d.from,
        to: d.to,
        published_at: d.published_at,
        file_count: files.max(0) as u64,
        total_bytes: bytes.max(0) as u64,
        changed,
        removed,
    }
}

/// The tree's scan record, if the tree still holds generation `from` exactly as it says: the
/// generation last installed here is `from`, and every file has the size and mtime
/// recorded (a walk that reads no file).
async fn unchanged_record(
    opts: &PullOptions,
    state: &StateDir,
    from: u64,
) -> Result<Option<Record>, PullError> {
    let (dest, state) = (opts.dest.clone(), StateDir(state.0.clone()));
    let found = blocking(move || {
        if tree::installed_generation(&state) != Some(from) {
            return Ok(None);
        }
        let Some(record) = state.read_scan_record() else {
            return Ok(None);
        };
        let same = unchanged_since(&dest, &record, record.len())?;
        Ok(same.map(|_| record))
    })
    .await?;
    found.map_err(|source| PullError::Scan {
        dest: opts.dest.clone(),
        source,
    })
}

/// What the tree holds now (hashing only what changed since the last scan), and whether that
/// differs from the tree's scan record.
async fn scan_local(opts: &PullOptions, state: &StateDir) -> Result<(Record, bool), PullError> {
    if !opts.dest.exists() {
        return Ok((Record::new(), true));
    }
    let (dest, state) = (opts.dest.clone(), StateDir(state.0.clone()));
    let scanned = blocking(move || {
        let cache = state.read_scan_record().unwrap_or_default();
        let known = cache.len();
        // Nothing hashed and as many files: the same files, each as recorded.
        scan_record(&dest, &cache).map(|(files, s)| {
            let changed = s.hashed > 0 || files.len() != known;
            (files, changed)
        })
    })
    .await?;
    scanned.map_err(|source| PullError::Scan {
        dest: opts.dest.clone(),
        source,
    })
}

/// The plan, and the contents to obtain by network (one job per distinct content).
fn make_plan(
    opts: &PullOptions,
    state: &StateDir,
    target: &Target,
    local: &Record,
) -> Result<(Plan, Vec<Job>), PullError> {
    let mut plan = Plan {
        repo: opts.repo.clone(),
        generation: target.generation(),
        dest: opts.dest.clone(),
        ..Default::default()
    };
    // What is not in place already (of a delta, every other file is).
    let todo: Vec<(&String, &Entry)> = target
        .entries()
        .iter()
        .filter(|(path, e)| {
            !local
                .get(path)
                .is_some_and(|c| c.size == e.size && c.sha256 == e.sha256)
        })
        .collect();
    plan.unchanged = target.files().saturating_sub(todo.len());
    // Identical bytes elsewhere in the tree, looked for only for those.
    let by_sha = local_copies(local, todo.iter().map(|(_, e)| e.sha256));
    let mut jobs: Vec<Job> = Vec::new();
    let mut planned: BTreeSet<manifest::Sha256> = BTreeSet::new();
    for (path, e) in todo {
        let source = if let Some(src) = by_sha.get(&e.sha256) {
            format!("local copy of {src}")
        } else if !planned.contains(&e.sha256) && state.staged(&e.sha256.to_hex()).exists() {
            "staged by an earlier pull".to_string()
        } else if let Some(similar) = e.btih.and_then(|_| find_similar(path, local)) {
            format!("fetch, first guess from {similar}")
        } else {
            "fetch".to_string()
        };
        plan.install.push(PlannedFile {
            path: path.clone(),
            size: e.size,
            source,
        });
        if planned.insert(e.sha256) && !by_sha.contains_key(&e.sha256) {
            jobs.push(Job {
                path: path.clone(),
                entry: *e,
            });
        }
    }
    // What the generation does not list: a sync's own leftovers go; the rest stays unless
    // the admin asked for an exact copy. A delta names what its generation dropped (and is
    // not asked for with --delete-extraneous, which must see every file).
    let dropped: BTreeSet<&str> = match target {
        Target::Whole(m) => local
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !m.files.contains_key(*p))
            .collect(),
        Target::Since(d) => d
            .removed
            .iter()
            .map(String::as_str)
            .filter(|p| local.contains(p))
            .collect(),
    };
    let ours = tree::listed_among(state, &dropped)?;
    for p in dropped {
        if opts.delete_extraneous || ours.contains(p) {
            plan.delete.push(p.to_string());
        } else {
            plan.left_alone.push(p.to_string());
        }
    }
    Ok((plan, jobs))
}

/// Where the tree holds each of the contents `wanted`, if anywhere: one pass over the
/// record, holding only what is wanted.
fn local_copies(
    local: &Record,
    wanted: impl Iterator<Item = manifest::Sha256>,
) -> HashMap<manifest::Sha256, &str> {
    let wanted: std::collections::HashSet<manifest::Sha256> = wanted.collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    local
        .iter()
        .filter(|(_, c)| wanted.contains(&c.sha256))
        .map(|(p, c)| (c.sha256, p))
        .collect()
}

/// Run one pull. `bt`: the caller's BitTorrent session (the volunteer daemon's); otherwise a
/// temporary one is started when some file needs it.
///
/// The stages, each a function below: take the tree ([`take_tree`]), plan ([`make_plan`]),
/// reuse what the tree already holds ([`reuse_local`]), fetch large files by BitTorrent
/// ([`fetch_large`]), small ones in batches ([`fetch_batched`]) and what neither brought
/// over HTTP ([`fetch_http`]), verify what is staged ([`verify_staged`]) and make it durable
/// ([`sync_staging`]), then install and delete ([`install_and_delete`]; nothing to write
/// on a pull with nothing to do).
pub async fn pull(opts: &PullOptions, bt: Option<&Bt>) -> Result<Summary, PullError> {
    let res = pull_stages(opts, bt).await;
    if let Some(p) = &opts.progress {
        p.finish();
    }
    res
}

async fn pull_stages(opts: &PullOptions, bt: Option<&Bt>) -> Result<Summary, PullError> {
    let start = Instant::now();
    let mut p = prepare(opts).await?;
    stage_done("manifest", start);
    let state = StateDir::new(&opts.dest);
    let _lock = take_tree(opts, &state, &p).await?;
    let (local, scan_changed) = scan_stage(opts, &state, &mut p).await?;
    let target = p.target;
    let origin_seed = p
        .info
        .seed_port
        .and_then(|port| server_ip(&opts.server).map(|ip| SocketAddr::new(ip, port)));
    let mut ctx = Ctx {
        opts,
        http: p.http,
        state,
        origin_seed,
        summary: Summary::default(),
        progress: None,
        own_bt: bt.is_none(),
        superseded: None,
        verified: Default::default(),
        placed: HashMap::new(),
        first_fill: matches!(p.standing, Standing::Empty),
    };
    ctx.summary.generation = target.generation();
    ctx.summary.since = match &target {
        Target::Since(d) => Some(d.from),
        Target::Whole(_) => None,
    };
    ctx.summary.files = target.files();
    ctx.summary.repo_bytes = target.bytes();

    let (plan, jobs) = make_plan(opts, &ctx.state, &target, &local)?;
    stage_done("scan and plan", start);
    ctx.summary.unchanged_files = plan.unchanged;
    ctx.summary.left_alone_files = plan.left_alone.len();
    if !plan.left_alone.is_empty() {
        tracing::info!(
            count = plan.left_alone.len(),
            first = %plan.left_alone[0],
            "files the manifest does not list, not put there by a sync: left alone (--delete-extraneous removes them)"
        );
    }
    let wanted = wanted_entries(&plan, &target);
    let local = std::sync::Arc::new(local);
    ctx.summary.reused_local_bytes = reuse_local(
        StateDir::new(&opts.dest),
        opts.dest.clone(),
        wanted.clone(),
        local.clone(),
    )
    .await?;

    // A content left staged by an interrupted run is still a job: a torrent re-checks what
    // is there and fetches only the pieces missing.
    let need: u64 = jobs.iter().map(|j| j.entry.size).sum();
    if need > 0 {
        ctx.progress = opts.progress.clone();
        if let Some(p) = &ctx.progress {
            p.start(need);
        }
    }
    let (torrent_jobs, http_jobs): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.entry.btih.is_some());
    let large = fetch_large(&mut ctx, bt, torrent_jobs, &local).await?;
    stage_done("large files", start);
    let left = fetch_batched(&mut ctx, &target, http_jobs).await?;
    fetch_http(&mut ctx, left, false).await?;
    fetch_http(&mut ctx, large.fallback, true).await?;
    stage_done("small files", start);

    let by_content = by_content(&wanted);
    verify_staged(&mut ctx, &by_content, &wanted).await?;
    sync_staging(&ctx).await?;
    stage_done("verify and sync", start);
    // Nothing to install or delete, the tree as recorded, and this generation the one last
    // installed: nothing to write either (on millions of files, the records alone are
    // hundreds of megabytes).
    let noop = by_content.is_empty()
        && plan.delete.is_empty()
        && !scan_changed
        && tree::installed_generation(&ctx.state) == Some(target.generation())
        && tree::installed_selection(&ctx.state) == opts.select.canonical();
    // From here on the tree changes: the new generation's paths count as put there by a
    // sync even if this pull is killed halfway.
    let installed = if noop {
        Installed {
            installed: 0,
            removed: 0,
        }
    } else {
        let installed = install_and_delete(
            StateDir::new(&opts.dest),
            opts.dest.clone(),
            target,
            by_content,
            std::mem::take(&mut ctx.placed),
            plan.delete,
            local,
        )
        .await?;
        // After the generation's own record: killed between the two, the next pull finds a
        // selection other than its own and takes the whole manifest.
        let state = StateDir::new(&opts.dest);
        let held = tree::Held {
            selection: opts.select.canonical(),
            files: ctx.summary.files as u64,
            bytes: ctx.summary.repo_bytes,
        };
        blocking(move || tree::record_held(&state, &held)).await??;
        installed
    };
    ctx.summary.installed_files = installed.installed;
    ctx.summary.removed_files = installed.removed;
    stage_done("install", start);
    if let Some(bt) = &large.own_bt {
        linger_and_leave(&ctx, bt, &large.seeded).await;
    }
    drop(large.own_bt);
    let state = StateDir::new(&opts.dest);
    blocking(move || clean_staging(&state)).await?;
    ctx.summary.wall_secs = start.elapsed().as_secs_f64();
    Ok(ctx.summary)
}

/// Log a stage's end, with the pull's time so far (`RUST_LOG=mirrorswarm_prsync=debug`).
fn stage_done(stage: &str, start: Instant) {
    tracing::debug!(
        stage,
        secs = format!("{:.2}", start.elapsed().as_secs_f64()),
        "pull stage done"
    );
}

/// Make the tree ready and this pull's: the staging directory, the tree's lock (held until
/// the returned guard drops), the tree claimed as its repository's (filled, or adopted as
/// the plan allowed), the server's key pinned on first use.
async fn take_tree(
    opts: &PullOptions,
    state: &StateDir,
    p: &Prepared,
) -> Result<TreeLock, PullError> {
    let staging = state.staging();
    let made = blocking(move || std::fs::create_dir_all(&staging)).await?;
    made.map_err(|e| {
        local_io(
            state,
            &opts.dest,
            format!("creating {}", state.staging().display()),
            &e,
        )
    })?;
    let lock = TreeLock::acquire(&state.lock())?;
    let adopted = match &p.standing {
        Standing::Own(_) => None,
        Standing::Empty => Some(false),
        Standing::Copy { files } => {
            tracing::info!(dest = %opts.dest.display(), files, "adopting a tree whose every file the manifest lists");
            Some(true)
        }
        Standing::Foreign(unknown) => {
            tracing::warn!(dest = %opts.dest.display(), unlisted = unknown.count, first = %unknown, delete_extraneous = opts.delete_extraneous, "adopting a tree that holds files the manifest does not list (--adopt)");
            Some(true)
        }
    };
    let dir = state.0.clone();
    let owner = adopted.map(|adopted| Owner {
        repo: opts.repo.clone(),
        server_key: hex::encode(p.key.as_bytes()),
        adopted,
    });
    let pin = p.pin.then(|| p.info.public_key.clone());
    let (dest, pin_file) = (opts.dest.clone(), state.server_key());
    blocking(move || -> Result<(), PullError> {
        let state = StateDir(dir);
        if let Some(owner) = owner {
            tree::claim(&state, &owner)?;
        }
        if let Some(key) = pin {
            std::fs::write(&pin_file, key).map_err(|e| {
                local_io(
                    &state,
                    &dest,
                    format!("pinning the key in {}", pin_file.display()),
                    &e,
                )
            })?;
        }
        Ok(())
    })
    .await??;
    Ok(lock)
}

/// The entries a plan installs, by path.
fn wanted_entries(plan: &Plan, target: &Target) -> BTreeMap<String, Entry> {
    plan.install
        .iter()
        .filter_map(|f| Some((f.path.clone(), *target.entries().get(&f.path)?)))
        .collect()
}

/// The wanted paths grouped by content: each content is fetched, verified and staged once,
/// then installed at every path that wants it.
fn by_content(wanted: &BTreeMap<String, Entry>) -> HashMap<manifest::Sha256, Vec<String>> {
    let mut out: HashMap<manifest::Sha256, Vec<String>> = HashMap::new();
    for (path, e) in wanted {
        out.entry(e.sha256).or_default().push(path.clone());
    }
    out
}

/// Stage the wanted contents the tree already holds at another path (a moved or copied
/// file), once each: they need no fetch. Returns the bytes so reused.
async fn reuse_local(
    state: StateDir,
    dest: PathBuf,
    wanted: BTreeMap<String, Entry>,
    local: std::sync::Arc<Record>,
) -> Result<u64, PullError> {
    blocking(move || {
        let by_sha = local_copies(&local, wanted.values().map(|e| e.sha256));
        let mut copied: BTreeSet<manifest::Sha256> = BTreeSet::new();
        let mut reused = 0;
        for (path, e) in &wanted {
            let Some(src) = by_sha.get(&e.sha256) else {
                continue;
            };
            let staged = state.staged(&e.sha256.to_hex());
            if !copied.insert(e.sha256) || staged.exists() {
                continue;
            }
            std::fs::copy(dest.join(src), &staged).map_err(|err| {
                local_io(&state, &dest, format!("copying {src} for {path}"), &err)
            })?;
            reused += e.size;
            tracing::debug!(path, from = %src, "identical bytes found locally");
        }
        Ok(reused)
    })
    .await?
}

/// What [`fetch_large`] leaves to the next stages.
struct Large {
    /// Files BitTorrent could not bring: the origin over HTTP.
    fallback: Vec<Job>,
    /// Torrents completed here, to seed while others finish.
    seeded: Vec<[u8; 20]>,
    /// The session this pull started itself (none when the caller passed one).
    own_bt: Option<Bt>,
}

/// Fetch the large files (those with a torrent) over BitTorrent: the caller's session, or
/// one of this pull's own; without one, everything goes to HTTP.
async fn fetch_large(
    ctx: &mut Ctx<'_>,
    bt: Option<&Bt>,
    jobs: Vec<Job>,
    local: &Record,
) -> Result<Large, PullError> {
    let mut own_bt = None;
    if bt.is_none() && !jobs.is_empty() {
        match Bt::start(BtConfig {
            listen: ctx.opts.bt_listen,
            upload_bps: None,
            peer_id: None,
            dir: ctx.state.0.join("bt"),
        })
        .await
        {
            Ok(b) => own_bt = Some(b),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no BitTorrent; fetching over HTTP")
            }
        }
    }
    let Some(session) = bt.or(own_bt.as_ref()) else {
        return Ok(Large {
            fallback: jobs,
            seeded: Vec::new(),
            own_bt,
        });
    };
    let (fallback, seeded) = fetch_torrents(ctx, session, jobs, local).await;
    if let Some((newest, path)) = ctx.superseded.take() {
        // What finished stays staged for the next pull; this session's torrents end here.
        for btih in &seeded {
            session.remove(*btih).await;
        }
        return Err(PullError::Superseded {
            generation: ctx.summary.generation,
            newest,
            path,
        });
    }
    Ok(Large {
        fallback,
        seeded,
        own_bt,
    })
}

/// The contents whose staged bytes do not hash to what the manifest says (or are missing).
/// Hashed on every core, a file to a thread at a time (the large files a torrent brought are
/// most of this pull's reading).
async fn unverified(
    state: &StateDir,
    by_content: &HashMap<manifest::Sha256, Vec<String>>,
) -> Result<Vec<manifest::Sha256>, PullError> {
    let staged: Vec<_> = by_content
        .keys()
        .map(|sha| (*sha, state.staged(&sha.to_hex())))
        .collect();
    blocking(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(staged.len());
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut bad = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((sha, path)) = staged.get(i) else {
                                return bad;
                            };
                            if !hash_file(path).is_ok_and(|h| h == *sha) {
                                bad.push(*sha);
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                // A worker that panicked must not pass its files as verified.
                .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    })
    .await
}

/// Check every staged content not checked as it arrived (BitTorrent's, and what an earlier
/// pull staged) against the manifest; one that does not match is dropped and fetched again
/// from the origin (which [`fetch_http`] verifies as it goes).
async fn verify_staged(
    ctx: &mut Ctx<'_>,
    by_content: &HashMap<manifest::Sha256, Vec<String>>,
    wanted: &BTreeMap<String, Entry>,
) -> Result<(), PullError> {
    let unchecked: HashMap<manifest::Sha256, Vec<String>> = by_content
        .iter()
        .filter(|(sha, _)| !ctx.verified.contains(sha))
        .map(|(sha, paths)| (*sha, paths.clone()))
        .collect();
    for sha in unverified(&ctx.state, &unchecked).await? {
        let staged = ctx.state.staged(&sha.to_hex());
        let _ = std::fs::remove_file(&staged);
        let Some(path) = by_content.get(&sha).and_then(|p| p.first()).cloned() else {
            continue;
        };
        let Some(&entry) = wanted.get(&path) else {
            continue;
        };
        tracing::warn!(
            path,
            "staged bytes did not verify; fetching from the origin"
        );
        fetch_http(ctx, vec![Job { path, entry }], true).await?;
    }
    Ok(())
}

/// What [`install_and_delete`] did.
#[derive(Debug, PartialEq, Eq)]
struct Installed {
    installed: usize,
    removed: usize,
}

/// Install every verified content at each path that wants it (from the staging area, or
/// from where a first fill placed it: [`Ctx::placed`]), remove what the generation
/// dropped of what a sync put there (`delete`), and record the tree's new scan cache.
async fn install_and_delete(
    state: StateDir,
    dest: PathBuf,
    target: Target,
    by_content: HashMap<manifest::Sha256, Vec<String>>,
    placed: HashMap<manifest::Sha256, String>,
    delete: Vec<String>,
    local: std::sync::Arc<Record>,
) -> Result<Installed, PullError> {
    blocking(move || {
        target.begin_install(&state)?;
        let dropped: BTreeSet<&str> = delete.iter().map(String::as_str).collect();
        let removable = |p: &str| dropped.contains(p);
        // What changed in the record: installed paths with what they hold now, deleted ones.
        let mut changes: BTreeMap<String, Option<CachedFile>> = BTreeMap::new();
        let mut done = Installed {
            installed: 0,
            removed: 0,
        };
        for (sha, paths) in &by_content {
            // A content a first fill placed is copied from where it was placed.
            let at = placed.get(sha);
            let source = match at {
                Some(p) => dest.join(p),
                None => state.staged(&sha.to_hex()),
            };
            for (i, path) in paths.iter().enumerate() {
                let keep = at.is_some() || i + 1 < paths.len();
                let installed = if at == Some(path) {
                    Ok(())
                } else {
                    install(&source, &dest, path, keep, &removable)
                };
                match installed {
                    Ok(()) => {}
                    Err(e @ InstallError::InTheWay { .. }) => return Err(PullError::InTheWay(e)),
                    Err(InstallError::Io(e)) => {
                        return Err(local_io(&state, &dest, format!("installing {path}"), &e))
                    }
                }
                if let Ok(meta) = std::fs::metadata(dest.join(path)) {
                    let (size, mtime_ns) = manifest::scan::stat_key(&meta);
                    changes.insert(
                        path.clone(),
                        Some(CachedFile {
                            size,
                            mtime_ns,
                            sha256: *sha,
                        }),
                    );
                }
                done.installed += 1;
            }
        }
        for path in &delete {
            match std::fs::remove_file(dest.join(path)) {
                Ok(()) => done.removed += 1,
                // Already gone (removed as something in the way of a new file).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot remove a file the generation dropped")
                }
            }
            changes.insert(path.clone(), None);
            remove_empty_parents(&dest, path);
        }
        tree::finish_install(&state, target.generation())?;
        if let Err(e) = state.write_scan_record(&local, &changes) {
            // The next pull scans every file afresh: slower, nothing lost.
            tracing::warn!(error = %e, "cannot write the tree's scan record");
        }
        Ok(done)
    })
    .await?
}

/// An error and every cause under it, `: `-separated: reqwest's own says only "error sending
/// request", while the reason (refused, a certificate not trusted) is a cause below.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, PullError> {
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| PullError::Server(format!("cannot reach {url}: {}", with_causes(&e))))?;
    if !r.status().is_success() {
        return Err(PullError::Server(format!("{url}: HTTP {}", r.status())));
    }
    r.json()
        .await
        .map_err(|e| PullError::Server(format!("{url}: {e}")))
}

/// The key manifests must be signed with: the caller's, the one pinned in the tree, or (on
/// first use) the one the server offers, with `true`: pin it once the tree is ours.
fn trusted_key(
    opts: &PullOptions,
    state: &StateDir,
    info: &Info,
) -> Result<(VerifyingKey, bool), PullError> {
    if let Some(k) = opts.key {
        return Ok((k, false));
    }
    let offered = manifest::signing::parse_public_key(&info.public_key)
        .map_err(|e| PullError::Server(e.to_string()))?;
    match std::fs::read_to_string(state.server_key()) {
        Ok(pinned) => {
            let pinned = manifest::signing::parse_public_key(pinned.trim()).map_err(|e| {
                PullError::PinnedKey {
                    path: state.server_key(),
                    why: e.to_string(),
                }
            })?;
            if pinned != offered {
                return Err(PullError::Server(format!(
                    "the server's signing key changed since this tree was first synced (pinned in {}); refusing",
                    state.server_key().display()
                )));
            }
            Ok((pinned, false))
        }
        Err(_) => Ok((offered, true)),
    }
}

/// The newest signed manifest, verified, as this pull sees it: of a partial tree, only the
/// paths its selection holds.
async fn fetch_manifest(
    http: &reqwest::Client,
    opts: &PullOptions,
    key: &VerifyingKey,
) -> Result<Manifest, PullError> {
    let url = format!("{}/manifests/{}/latest", opts.server, opts.repo);
    let r = http
        .get(&url)
        .send()
        .await
        .map_err(|e| PullError::Server(format!("cannot reach {url}: {}", with_causes(&e))))?;
    if !r.status().is_success() {
        return Err(PullError::Server(format!("{url}: HTTP {}", r.status())));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| PullError::Server(e.to_string()))?;
    let mut manifest = SignedManifest::verify_expected(&body, key, &opts.repo, None)
        .map_err(|e| PullError::Server(format!("manifest: {e}")))?;
    if !opts.select.is_everything() {
        // A partial mirror: what it does not hold is, to it, not listed.
        manifest.files.retain(|p, _| opts.select.holds(p));
    }
    Ok(manifest)
}

/// On a tree this repository's syncs filled, whose last installed generation and scan record
/// say what it holds: the signed changes from that generation to the newest, instead of the
/// whole manifest. `None` (and the whole manifest) whenever one of those is missing, the
/// admin asked for `--delete-extraneous` (which must see every file the manifest does not
/// list), or the server has no delta to give (an older server, a generation no longer kept).
async fn fetch_delta(
    http: &reqwest::Client,
    opts: &PullOptions,
    state: &StateDir,
    key: &VerifyingKey,
) -> Option<(Owner, Delta)> {
    if opts.delete_extraneous {
        return None;
    }
    let owner = tree::owner(state)
        .ok()
        .flatten()
        .filter(|o| o.repo == opts.repo)?;
    let from = tree::installed_generation(state)?;
    if !state.scan_record().exists() || !state.listed().exists() {
        return None;
    }
    // The changes are of the whole repository: they say what a partial tree lacks only if
    // it holds the same part as it did ([`narrowed`] then takes its part of them).
    if tree::installed_selection(state) != opts.select.canonical() {
        return None;
    }
    let url = format!(
        "{}/manifests/{}/latest?since={from}",
        opts.server, opts.repo
    );
    let body = match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.ok()?,
        Ok(r) => {
            tracing::debug!(url, status = %r.status(), "no delta: fetching the whole manifest");
            return None;
        }
        Err(e) => {
            tracing::debug!(url, error = %e, "no delta: fetching the whole manifest");
            return None;
        }
    };
    match Delta::verify_expected(&body, key, &opts.repo, from) {
        Ok(d) => {
            tracing::debug!(
                from,
                to = d.to,
                changed = d.changed.len(),
                removed = d.removed.len(),
                "manifest delta"
            );
            Some((owner, d))
        }
        Err(e) => {
            tracing::warn!(url, error = %e, "a manifest delta that does not verify: fetching the whole manifest");
            None
        }
    }
}

fn server_ip(server: &str) -> Option<std::net::IpAddr> {
    let rest = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("https://"))?;
    let hostport = rest.split('/').next()?;
    let with_port = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    with_port.to_socket_addrs().ok()?.next().map(|a| a.ip())
}

/// A manifest path as a URL path, each segment percent-encoded.
pub(crate) fn encode_rel(rel: &str) -> String {
    rel.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Fetch small files in batches ([`crate::batched`]): volunteers first, then the origin.
/// Returns what no batch brought (and files too large for a batch), for [`fetch_http`]. A
/// content an interrupted pull already staged is not fetched again ([`verify_staged`]
/// checks it).
async fn fetch_batched(
    ctx: &mut Ctx<'_>,
    target: &Target,
    jobs: Vec<Job>,
) -> Result<Vec<Job>, PullError> {
    let (batchable, mut left): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| j.entry.size <= crate::batch::MAX_FILE_BYTES);
    let state = StateDir(ctx.state.0.clone());
    let (staged, batchable): (Vec<Job>, Vec<Job>) = blocking(move || {
        batchable.into_iter().partition(|j| {
            std::fs::metadata(state.staged(&j.entry.sha256.to_hex()))
                .is_ok_and(|m| m.is_file() && m.len() == j.entry.size)
        })
    })
    .await?;
    if let Some(p) = &ctx.progress {
        p.advance(staged.iter().map(|j| j.entry.size).sum());
    }
    if ctx.first_fill && !batchable.is_empty() {
        // Files placed in the tree from now on count as put there by a sync, even if this
        // pull is killed halfway.
        let (state, t) = (StateDir(ctx.state.0.clone()), target.clone());
        blocking(move || t.begin_install(&state)).await??;
    }
    let b = crate::batched::Batched {
        place_in: ctx.first_fill.then(|| ctx.opts.dest.clone()),
        own_url: ctx.opts.own_url.as_deref(),
        written: ctx.opts.written.clone(),
        http: &ctx.http,
        server: &ctx.opts.server,
        repo: &ctx.opts.repo,
        state: &ctx.state,
        parallel: ctx.opts.http_parallel,
        progress: ctx.progress.clone(),
    };
    let jobs = batchable.into_iter().map(|j| (j.path, j.entry)).collect();
    let out = crate::batched::fetch(&b, jobs).await.map_err(|e| {
        let mut err = local_io(
            &ctx.state,
            &ctx.opts.dest,
            format!("writing {}", e.path),
            &e.error,
        );
        if let (PullError::NoSpace { kept, .. }, true) = (&mut err, ctx.first_fill) {
            *kept += tree_bytes(&ctx.opts.dest);
        }
        err
    })?;
    ctx.summary.from_peers_bytes += out.from_peers;
    ctx.summary.from_origin_bytes += out.from_origin;
    ctx.verified.extend(out.verified);
    ctx.placed.extend(out.placed);
    left.extend(
        out.left
            .into_iter()
            .map(|(path, entry)| Job { path, entry }),
    );
    Ok(left)
}

/// Make what is staged durable with one `syncfs` rather than an `fsync` per file: a
/// batch's files are written without one, and installing them renames them into the tree.
async fn sync_staging(ctx: &Ctx<'_>) -> Result<(), PullError> {
    let staging = ctx.state.staging();
    let res = blocking(move || -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&staging)?;
        // SAFETY: syncfs takes a file descriptor this function owns for the call's length.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
    .await?;
    res.map_err(|e| {
        local_io(
            &ctx.state,
            &ctx.opts.dest,
            format!("syncing {}", ctx.state.staging().display()),
            &e,
        )
    })
}

/// Fetch over HTTP: through the server's redirect (peers first), or straight from the origin.
/// Each URL names the generation pulled: a server staging it still sends customers the one
/// before, and answers for this one only when asked so.
async fn fetch_http(ctx: &mut Ctx<'_>, jobs: Vec<Job>, origin_only: bool) -> Result<(), PullError> {
    let opts = ctx.opts;
    let generation = ctx.summary.generation;
    let mut pending = jobs.into_iter();
    let mut set = tokio::task::JoinSet::new();
    loop {
        while set.len() < opts.http_parallel.max(1) {
            let Some(job) = pending.next() else { break };
            let http = ctx.http.clone();
            let server = opts.server.clone();
            let repo = opts.repo.clone();
            let sha = job.entry.sha256.to_hex();
            let part = ctx.state.partial(&sha);
            let staged = ctx.state.staged(&sha);
            set.spawn(async move {
                let rel = encode_rel(&job.path);
                let via_peer = format!("{server}/{repo}/{rel}?generation={generation}");
                let origin = format!("{server}/.origin/{repo}/{rel}?generation={generation}");
                let mut tries: Vec<&str> = Vec::new();
                if !origin_only {
                    tries.push(&via_peer);
                }
                tries.push(&origin);
                let mut last: Option<FetchError> = None;
                for url in tries {
                    match fetch_verified(&http, url, &server, &job.entry, &part, &staged).await {
                        Ok(f) => return (job, Ok(f)),
                        // This machine's disk, not the source: no other source helps.
                        Err(FetchError::Io(e)) => return (job, Err(FetchError::Io(e))),
                        Err(e) => {
                            tracing::warn!(path = %job.path, error = %e, "fetch failed");
                            last = Some(e);
                        }
                    }
                }
                (job, Err(last.unwrap_or(FetchError::NoSource)))
            });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (job, res) = done?;
        match res {
            Ok(f) => {
                ctx.verified.insert(job.entry.sha256);
                if f.from_peer {
                    ctx.summary.from_peers_bytes += f.bytes;
                } else {
                    ctx.summary.from_origin_bytes += f.bytes;
                }
                if let Some(p) = &ctx.progress {
                    p.advance(job.entry.size);
                }
            }
            Err(FetchError::Io(e)) => {
                return Err(local_io(
                    &ctx.state,
                    &opts.dest,
                    format!("writing {}", job.path),
                    &e,
                ))
            }
            Err(e) => {
                return Err(PullError::Unverified {
                    path: job.path,
                    why: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// A local file that probably shares most blocks with `path`'s new version: the old version
/// at the same path, or the same package with another version in the same directory.
fn find_similar(path: &str, local: &Record) -> Option<String> {
    if local.contains(path) {
        return Some(path.to_string());
    }
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let stem = package_stem(name);
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    local
        .iter()
        .filter(|(p, _)| {
            let (d, n) = p.rsplit_once('/').unwrap_or(("", p));
            d == dir && package_stem(n) == stem && n.rsplit_once('.').map(|(_, e)| e) == ext
        })
        .max_by_key(|(_, c)| c.size)
        .map(|(p, _)| p.to_string())
}

/// `hello_2.10-3_amd64.deb` → `hello`; `requests-2.31.0-py3-none-any.whl` → `requests`.
fn package_stem(name: &str) -> &str {
    if let Some((stem, _)) = name.split_once('_') {
        return stem;
    }
    let bytes = name.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i - 1] == b'-' && bytes[i].is_ascii_digit() {
            return &name[..i - 1];
        }
    }
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// Torrents: first guess from a similar local file, then librqbit fetches what is wrong.
/// Returns the jobs that must fall back to HTTP.
async fn fetch_torrents(
    ctx: &mut Ctx<'_>,
    bt: &Bt,
    jobs: Vec<Job>,
    local: &Record,
) -> (Vec<Job>, Vec<[u8; 20]>) {
    let opts = ctx.opts;
    let tracker = format!("{}/announce", opts.server);
    let mut running = Vec::new();
    let mut fallback = Vec::new();
    // Fetch and check each torrent; build first guesses in parallel (they are CPU-bound).
    let mut prepared = Vec::new();
    let mut guesses = tokio::task::JoinSet::new();
    for job in jobs {
        let sha = job.entry.sha256.to_hex();
        let Some(btih) = job.entry.btih else {
            fallback.push(job);
            continue;
        };
        let url = format!("{}/artifacts/{sha}.torrent", opts.server);
        let torrent = match get_bytes(&ctx.http, &url).await {
            Some(t) if crate::artifacts::torrent_info_hash(&t).is_ok_and(|h| h == btih.0) => t,
            _ => {
                tracing::warn!(path = %job.path, "torrent missing or not the one the manifest names");
                fallback.push(job);
                continue;
            }
        };
        let staged = ctx.state.staged(&sha);
        let similar = (!staged.exists())
            .then(|| find_similar(&job.path, local))
            .flatten();
        if let Some(similar) = similar {
            let url = format!("{}/artifacts/{sha}.sig", opts.server);
            match get_bytes(&ctx.http, &url)
                .await
                .map(|b| BlockSignature::parse(&b, job.entry.size))
            {
                Some(Ok(sig)) => {
                    let old = opts.dest.join(&similar);
                    let path = job.path.clone();
                    guesses
                        .spawn_blocking(move || (path, similar, first_guess(&sig, &old, &staged)));
                }
                Some(Err(e)) => {
                    tracing::warn!(path = %job.path, error = %e, "refusing a bad block signature")
                }
                None => tracing::debug!(path = %job.path, "no block signature"),
            }
        }
        prepared.push((job, torrent, btih));
    }
    while let Some(res) = guesses.join_next().await {
        match res {
            Ok((path, from, Ok(st))) => {
                tracing::info!(
                    path,
                    from,
                    matched = st.matched_bytes,
                    "first guess from a similar local file"
                );
                ctx.summary.reused_local_bytes += st.matched_bytes;
            }
            Ok((path, _, Err(e))) => tracing::warn!(path, error = %e, "first guess failed"),
            Err(e) => tracing::warn!(error = %e, "first guess task failed"),
        }
    }
    for (job, torrent, btih) in prepared {
        match bt.add(torrent, &ctx.state.staging(), &tracker).await {
            Ok(h) => running.push((job, h, btih.0)),
            Err(e) => {
                tracing::warn!(path = %job.path, error = %format!("{e:#}"), "cannot add torrent");
                fallback.push(job);
            }
        }
    }
    // Keep every torrent until all are done: what we finished, others may still need.
    let mut done = Vec::new();
    let generation = ctx.summary.generation;
    let newer = || {
        opts.newest
            .as_ref()
            .map(|n| *n.borrow())
            .filter(|&n| n > generation)
    };
    let give_up = |quiet: Duration| quiet >= SUPERSEDED_STALL && newer().is_some();
    for (job, handle, btih) in running {
        if ctx.superseded.is_some() {
            bt.remove(btih).await;
            continue;
        }
        let got = bt
            .wait(
                &handle,
                opts.stall,
                Duration::from_secs(24 * 3600),
                &give_up,
            )
            .await;
        for (peer, bytes) in &got.per_peer {
            if is_origin(peer, ctx.origin_seed) {
                ctx.summary.from_origin_bytes += bytes;
            } else {
                ctx.summary.from_peers_bytes += bytes;
            }
        }
        if let Some(p) = &ctx.progress {
            p.advance(job.entry.size);
        }
        if got.finished {
            done.push(btih);
        } else if got.given_up {
            let newest = newer().unwrap_or(generation);
            tracing::info!(path = %job.path, generation, newest, "generation superseded while its torrent made no progress; giving way to the newest");
            bt.remove(btih).await;
            ctx.superseded = Some((newest, job.path));
        } else {
            tracing::warn!(path = %job.path, "BitTorrent stalled; fetching from the origin");
            bt.remove(btih).await;
            fallback.push(job);
        }
    }
    if !ctx.own_bt {
        // A daemon's session: it re-adds what it holds as read-only seeds after installing.
        for btih in &done {
            bt.remove(*btih).await;
        }
        done.clear();
    }
    (fallback, done)
}

/// After installing, keep seeding what we fetched while other downloaders still need it
/// (at most `linger`): leaving at once would take pieces away from the swarm and send the
/// others back to the origin. Then leave the swarms and tell the tracker.
async fn linger_and_leave(ctx: &Ctx<'_>, bt: &Bt, torrents: &[[u8; 20]]) {
    if torrents.is_empty() {
        return;
    }
    let tracker = format!("{}/announce", ctx.opts.server);
    bt.announce_completed(&tracker, torrents).await;
    let deadline = Instant::now() + ctx.opts.linger;
    let scrapes = scrape_urls(&ctx.opts.server, torrents);
    while Instant::now() < deadline {
        let mut leechers = 0;
        for scrape in &scrapes {
            leechers += match get_bytes(&ctx.http, scrape)
                .await
                .map(|b| bencode::decode(&b))
            {
                Some(Ok(v)) => v
                    .get("files")
                    .and_then(|f| f.as_dict())
                    .map(|f| {
                        f.values()
                            .filter_map(|s| s.get("incomplete")?.as_int())
                            .sum::<i64>()
                    })
                    .unwrap_or(0),
                _ => 0,
            };
            if leechers > 0 {
                break;
            }
        }
        if leechers == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for btih in torrents {
        bt.remove(*btih).await;
    }
    bt.announce_stopped(&tracker, torrents).await;
}

/// Scrape URLs for `torrents`, each naming at most [`tracker::announce::MAX_SCRAPE_HASHES`]
/// (the tracker refuses more in one): a pull of hundreds of large files scrapes in a few.
fn scrape_urls(server: &str, torrents: &[[u8; 20]]) -> Vec<String> {
    torrents
        .chunks(tracker::announce::MAX_SCRAPE_HASHES)
        .map(|chunk| {
            let query = chunk
                .iter()
                .map(|h| format!("info_hash={}", tracker::query::percent_encode(h)))
                .collect::<Vec<_>>()
                .join("&");
            format!("{server}/scrape?{query}")
        })
        .collect()
}

async fn get_bytes(http: &reqwest::Client, url: &str) -> Option<Bytes> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.bytes().await.ok()
}

fn remove_empty_parents(dest: &Path, rel: &str) {
    let mut p = Path::new(rel).parent();
    while let Some(dir) = p {
        if dir.as_os_str().is_empty() || std::fs::remove_dir(dest.join(dir)).is_err() {
            break;
        }
        p = dir.parent();
    }
}

/// Leftovers of earlier runs for contents no longer wanted.
fn clean_staging(state: &StateDir) {
    if let Ok(rd) = std::fs::read_dir(state.staging()) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pull seeding hundreds of torrents scrapes them all, in scrapes the tracker takes
    /// (it used to send one, refused past 74 hashes, and stopped lingering at once).
    #[test]
    fn scrapes_are_split_to_what_the_tracker_takes() {
        let torrents: Vec<[u8; 20]> = (0..300u16)
            .map(|i| {
                let mut h = [0x80u8; 20];
                h[..2].copy_from_slice(&i.to_be_bytes());
                h
            })
            .collect();
        let urls = scrape_urls("http://s", &torrents);
        assert_eq!(urls.len(), 5);
        let mut asked = Vec::new();
        for u in &urls {
            let query = u.strip_prefix("http://s/scrape?").unwrap();
            asked.extend(tracker::announce::parse_scrape(query).unwrap());
        }
        assert_eq!(asked, torrents);
    }

    #[test]
    fn package_stems() {
        assert_eq!(package_stem("hello_2.10-3_amd64.deb"), "hello");
        assert_eq!(package_stem("requests-2.31.0-py3-none-any.whl"), "requests");
        assert_eq!(package_stem("image.iso"), "image");
    }

    #[test]
    fn similar_files_by_path_then_package_name() {
        let c = |size| CachedFile {
            size,
            mtime_ns: 0,
            sha256: manifest::Sha256([0; 32]),
        };
        let local = Record::from_map(
            &[
                ("pool/h/hello_1.0_all.deb".to_string(), c(10)),
                ("pool/h/other_1.0_all.deb".to_string(), c(10)),
                ("img/disk.img".to_string(), c(10)),
            ]
            .into(),
        );
        assert_eq!(
            find_similar("img/disk.img", &local).as_deref(),
            Some("img/disk.img")
        );
        assert_eq!(
            find_similar("pool/h/hello_1.1_all.deb", &local).as_deref(),
            Some("pool/h/hello_1.0_all.deb")
        );
        assert_eq!(find_similar("pool/x/hello_1.1_all.deb", &local), None);
    }

    /// A tree at `dest` with `files` (path → bytes), its state directory made, and what a
    /// scan of it would cache.
    fn tree_with(dest: &Path, files: &[(&str, &[u8])]) -> (StateDir, Record) {
        let state = StateDir::new(dest);
        std::fs::create_dir_all(state.staging()).unwrap();
        let mut cache = manifest::scan::ScanCache::new();
        for (rel, bytes) in files {
            let p = dest.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            let (size, mtime_ns) = manifest::scan::stat_key(&std::fs::metadata(&p).unwrap());
            cache.insert(
                rel.to_string(),
                CachedFile {
                    size,
                    mtime_ns,
                    sha256: hash_file(&p).unwrap(),
                },
            );
        }
        (state, Record::from_map(&cache))
    }

    fn entry(bytes: &[u8]) -> Entry {
        use sha2::Digest as _;
        Entry {
            size: bytes.len() as u64,
            sha256: manifest::Sha256(sha2::Sha256::digest(bytes).into()),
            changed_in: 1,
            btih: None,
        }
    }

    fn manifest_of(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            repo: "r".into(),
            generation: 2,
            published_at: 0,
            files: files
                .iter()
                .map(|(p, b)| (p.to_string(), entry(b)))
                .collect(),
        }
    }

    #[test]
    fn the_plan_keeps_reuses_fetches_and_deletes_only_what_a_sync_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (state, local) = tree_with(
            dir.path(),
            &[
                ("same", b"same"),
                ("old/moved", b"moved"),
                ("ours", b"x"),
                ("notes.txt", b"n"),
            ],
        );
        // An earlier generation listed `ours` and `old/moved`; `notes.txt` is the admin's.
        std::fs::write(state.listed(), "ours\nold/moved\n").unwrap();
        let m = manifest_of(&[
            ("same", b"same"),
            ("new/moved", b"moved"),
            ("fresh", b"fresh"),
        ]);
        let opts = PullOptions::new("http://s", "r", dir.path());
        let whole = Target::Whole(std::sync::Arc::new(m));
        let (plan, jobs) = make_plan(&opts, &state, &whole, &local).unwrap();
        assert_eq!(plan.unchanged, 1);
        let install: Vec<_> = plan
            .install
            .iter()
            .map(|f| (f.path.as_str(), f.source.as_str()))
            .collect();
        assert_eq!(
            install,
            [("fresh", "fetch"), ("new/moved", "local copy of old/moved")]
        );
        assert_eq!(
            jobs.iter().map(|j| j.path.as_str()).collect::<Vec<_>>(),
            ["fresh"]
        );
        assert_eq!(plan.delete, ["old/moved", "ours"]);
        assert_eq!(plan.left_alone, ["notes.txt"]);

        // The same generation known by its changes since the one the tree holds: the same
        // plan, except that a file no generation listed is not looked at.
        let Target::Whole(m) = &whole else {
            unreachable!()
        };
        let before = manifest_of(&[("same", b"same"), ("old/moved", b"moved"), ("ours", b"x")]);
        let since = Target::Since(std::sync::Arc::new(Delta::between(&before, m)));
        let (delta_plan, delta_jobs) = make_plan(&opts, &state, &since, &local).unwrap();
        assert_eq!(delta_plan.unchanged, 1);
        assert_eq!(delta_plan.generation, plan.generation);
        let delta_install: Vec<_> = delta_plan
            .install
            .iter()
            .map(|f| (f.path.as_str(), f.source.as_str()))
            .collect();
        assert_eq!(delta_install, install);
        assert_eq!(
            delta_jobs
                .iter()
                .map(|j| j.path.as_str())
                .collect::<Vec<_>>(),
            ["fresh"]
        );
        assert_eq!(delta_plan.delete, ["old/moved", "ours"]);
        assert!(delta_plan.left_alone.is_empty());
    }

    #[tokio::test]
    async fn reuse_stages_each_content_the_tree_holds_once() {
        let dir = tempfile::tempdir().unwrap();
        let (state, local) = tree_with(dir.path(), &[("a", b"hello")]);
        let wanted: BTreeMap<String, Entry> = [
            ("b".to_string(), entry(b"hello")),
            ("c".to_string(), entry(b"hello")),
            ("d".to_string(), entry(b"elsewhere")),
        ]
        .into();
        let reused = reuse_local(
            StateDir::new(dir.path()),
            dir.path().to_path_buf(),
            wanted,
            std::sync::Arc::new(local),
        )
        .await
        .unwrap();
        assert_eq!(reused, 5);
        let staged = state.staged(&entry(b"hello").sha256.to_hex());
        assert_eq!(std::fs::read(staged).unwrap(), b"hello");
        assert!(!state.staged(&entry(b"elsewhere").sha256.to_hex()).exists());
    }

    #[tokio::test]
    async fn staged_bytes_that_do_not_hash_to_the_manifest_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = tree_with(dir.path(), &[]);
        let (good, bad, missing) = (entry(b"good"), entry(b"bad"), entry(b"missing"));
        std::fs::write(state.staged(&good.sha256.to_hex()), b"good").unwrap();
        std::fs::write(state.staged(&bad.sha256.to_hex()), b"not bad").unwrap();
        let by_content: HashMap<_, _> = [
            (good.sha256, vec!["g".to_string()]),
            (bad.sha256, vec!["b".to_string()]),
            (missing.sha256, vec!["m".to_string()]),
        ]
        .into();
        let mut found = unverified(&state, &by_content).await.unwrap();
        found.sort();
        let mut expect = vec![bad.sha256, missing.sha256];
        expect.sort();
        assert_eq!(found, expect);
    }

    #[tokio::test]
    async fn install_puts_a_content_at_every_path_and_deletes_only_the_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (state, local) = tree_with(dir.path(), &[("gone/old", b"old"), ("keep", b"k")]);
        let e = entry(b"new bytes");
        std::fs::write(state.staged(&e.sha256.to_hex()), b"new bytes").unwrap();
        let m = manifest_of(&[
            ("x/one", b"new bytes"),
            ("two", b"new bytes"),
            ("keep", b"k"),
        ]);
        let by_content: HashMap<_, _> =
            [(e.sha256, vec!["x/one".to_string(), "two".to_string()])].into();
        let done = install_and_delete(
            StateDir::new(dir.path()),
            dir.path().to_path_buf(),
            Target::Whole(std::sync::Arc::new(m)),
            by_content,
            HashMap::new(),
            vec!["gone/old".to_string()],
            std::sync::Arc::new(local),
        )
        .await
        .unwrap();
        assert_eq!(
            done,
            Installed {
                installed: 2,
                removed: 1
            }
        );
        assert_eq!(
            std::fs::read(dir.path().join("x/one")).unwrap(),
            b"new bytes"
        );
        assert_eq!(std::fs::read(dir.path().join("two")).unwrap(), b"new bytes");
        assert!(
            !dir.path().join("gone").exists(),
            "an emptied directory goes with its file"
        );
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"k");
        // The new generation's paths are what a sync put there now.
        let listed = std::fs::read_to_string(state.listed()).unwrap();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ["keep", "two", "x/one"]);
        // The scan record knows the installed files, and not the removed one.
        let record = state.read_scan_record().unwrap();
        assert!(record.contains("two") && record.contains("keep") && !record.contains("gone/old"));
    }
}
