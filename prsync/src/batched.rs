//! The pull's stage for small files: fetched in batches ([`crate::batch`]), many files a
//! request, several batches in flight, from volunteers first and from the origin for the
//! rest.
//!
//! The server names the volunteers to ask (`GET /api/sources/<repo>`): those holding the
//! newest generation, then those still filling (they answer from what their own pull has
//! staged). The batches are taken in a random order, so volunteers filling at the same time
//! each fetch different files from the origin first and then find the rest at each other.
//! Each batch asks up to [`PEERS_PER_BATCH`] volunteers, each for what the ones before
//! lacked, then the origin. Every file is checked against the signed manifest as it arrives
//! and staged (named by its SHA-256) only if it matches. A volunteer that sends a wrong byte
//! is dropped for the rest of the pull and reported to the server (`/api/report`, which
//! checks it); one whose answer breaks off is dropped for the pull too. What no batch
//! brought is left to the per-file HTTP stage.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use manifest::select::Selection;
use manifest::{Entry, Sha256};

use crate::batch::{read_answer, AnswerError, Got, Wanted};
use crate::local::StateDir;
use crate::progress::Progress;

/// Most files in one batch.
pub const BATCH_FILES: usize = 512;
/// Most bytes in one batch (a batch's files are held in memory until written).
pub const BATCH_BYTES: u64 = 4 << 20;
/// Volunteers one batch asks before the origin.
pub const PEERS_PER_BATCH: usize = 3;
/// How often a filling volunteer is asked which batches it has.
pub const HAVE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How often the server is asked again which volunteers to ask.
pub const SOURCES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What this process's pulls wrote after checking it against the signed manifest, until the
/// pull's files are verified otherwise (the caller clears it then). A volunteer answering a
/// peer's batch sends these without hashing them again; anything else not verified it hashes.
#[derive(Debug, Default)]
pub struct Written {
    placed: Mutex<std::collections::HashMap<String, Sha256>>,
    staged: Mutex<HashSet<Sha256>>,
    /// Batches whose every file was written ([`chunk_key`]): what this volunteer tells its
    /// peers it has (`GET /api/have/<repo>`), as BitTorrent peers tell theirs pieces.
    batches: Mutex<HashSet<String>>,
}

impl Written {
    /// Whether `path` in the tree was placed by a pull with the content `sha`.
    pub fn placed(&self, path: &str, sha: &Sha256) -> bool {
        lock(&self.placed).get(path) == Some(sha)
    }
    /// Whether the content `sha` was staged by a pull.
    pub fn staged(&self, sha: &Sha256) -> bool {
        lock(&self.staged).contains(sha)
    }
    /// The batches written whole.
    pub fn batches(&self) -> Vec<String> {
        lock(&self.batches).iter().cloned().collect()
    }
    pub fn clear(&self) {
        lock(&self.placed).clear();
        lock(&self.staged).clear();
        lock(&self.batches).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the stage needs of the pull.
pub struct Batched<'a> {
    pub http: &'a reqwest::Client,
    pub server: &'a str,
    pub repo: &'a str,
    pub state: &'a StateDir,
    pub parallel: usize,
    pub progress: Option<Arc<dyn Progress>>,
    /// A first fill's tree: files are placed there as they arrive (written once, in their
    /// own directories, as rsync does) rather than staged and renamed in at the end. The
    /// caller has recorded the generation's paths as the sync's before ([`crate::tree`]).
    pub place_in: Option<std::path::PathBuf>,
    /// This volunteer's own address, when the pull is a volunteer's: not asked.
    pub own_url: Option<&'a str>,
    /// Told of every file written (a volunteer's, which answers batches meanwhile).
    pub written: Option<Arc<Written>>,
}

/// What the stage did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub from_peers: u64,
    pub from_origin: u64,
    /// Contents checked against the manifest as they arrived and staged: no need to hash
    /// them again before installing.
    pub verified: HashSet<Sha256>,
    /// Contents placed in the tree ([`Batched::place_in`]), at the path given.
    pub placed: Vec<(Sha256, String)>,
    /// Files no batch brought, for the per-file stage.
    pub left: Vec<(String, Entry)>,
    /// Volunteers dropped for this pull.
    pub dropped: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Sources {
    sources: Vec<Source>,
}

#[derive(serde::Deserialize)]
struct Source {
    url: String,
    #[serde(default)]
    held: u64,
    #[serde(default)]
    part: String,
}

/// A volunteer to ask, with the generation it fully holds (0: filling), and the part it
/// holds if it holds one.
#[derive(Debug, Clone)]
struct Peer {
    url: String,
    held: u64,
    part: Option<Selection>,
}

impl Peer {
    /// Whether it holds every path of `todo` (a volunteer holding part of the repository
    /// is asked only for its part).
    fn holds_all(&self, todo: &[(String, Entry)]) -> bool {
        self.part
            .as_ref()
            .is_none_or(|s| todo.iter().all(|(p, _)| s.holds(p)))
    }
}

/// A failure of this machine's own disk: no other source helps.
#[derive(Debug)]
pub struct LocalIo {
    pub path: String,
    pub error: std::io::Error,
}

/// Fetch `jobs` in batches.
pub async fn fetch(b: &Batched<'_>, jobs: Vec<(String, Entry)>) -> Result<Outcome, LocalIo> {
    let mut out = Outcome::default();
    if jobs.is_empty() {
        return Ok(out);
    }
    let shared = Arc::new(Shared {
        dead: Mutex::new(HashSet::new()),
        writer: Mutex::new(()),
        dirs: Mutex::new(HashSet::new()),
        have: Default::default(),
        peers: std::sync::RwLock::new(peers(b).await),
    });
    let mut asked_at = std::time::Instant::now();
    let mut have_at = asked_at - HAVE_EVERY;
    let mut chunks = chunk(jobs);
    shuffle(&mut chunks);
    let mut pending = chunks.into_iter().enumerate();
    let mut set = tokio::task::JoinSet::new();
    loop {
        if asked_at.elapsed() >= SOURCES_EVERY {
            // Volunteers that started filling since (they announce as they start) help too.
            let now = peers(b).await;
            *shared.peers.write().unwrap_or_else(|e| e.into_inner()) = now;
            asked_at = std::time::Instant::now();
        }
        if have_at.elapsed() >= HAVE_EVERY {
            ask_have(b, &shared).await;
            have_at = std::time::Instant::now();
        }
        while set.len() < b.parallel.max(1) {
            let Some((i, chunk)) = pending.next() else {
                break;
            };
            let task = Task {
                http: b.http.clone(),
                server: b.server.to_string(),
                repo: b.repo.to_string(),
                staging: StateDir(b.state.0.clone()),
                place_in: b.place_in.clone(),
                written: b.written.clone(),
                shared: shared.clone(),
                progress: b.progress.clone(),
            };
            set.spawn(async move { task.run(i, chunk).await });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let done = match done {
            Ok(d) => d?,
            Err(e) => {
                return Err(LocalIo {
                    path: String::new(),
                    error: std::io::Error::other(format!("a batch task failed: {e}")),
                })
            }
        };
        out.from_peers += done.from_peers;
        out.from_origin += done.from_origin;
        out.verified.extend(done.verified);
        out.placed.extend(done.placed);
        out.left.extend(done.left);
    }
    out.dropped = lock(&shared.dead).iter().cloned().collect();
    Ok(out)
}

/// The volunteers the server names, this one aside (none when it names none or cannot be
/// asked: the origin then answers every batch).
async fn peers(b: &Batched<'_>) -> Vec<Peer> {
    let url = format!("{}/api/sources/{}", b.server, b.repo);
    let got = async {
        let r = b.http.get(&url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json::<Sources>().await.ok()
    }
    .await;
    match got {
        Some(s) => s
            .sources
            .into_iter()
            .filter_map(|s| {
                let part = match s.part.as_str() {
                    "" => None,
                    text => match text.parse::<Selection>() {
                        Ok(sel) => Some(sel),
                        Err(e) => {
                            tracing::debug!(url = s.url, error = %e, "a source's part is not one; not asked");
                            return None;
                        }
                    },
                };
                Some(Peer {
                    url: s.url.trim_end_matches('/').to_string(),
                    held: s.held,
                    part,
                })
            })
            .filter(|p| Some(p.url.as_str()) != b.own_url.map(|o| o.trim_end_matches('/')))
            .collect(),
        None => {
            tracing::debug!(url, "no sources named; batches go to the origin");
            Vec::new()
        }
    }
}

/// Ask each filling volunteer which batches it has (`GET /api/have/<repo>`); one that does
/// not answer is not asked for batches until it does.
async fn ask_have(b: &Batched<'_>, shared: &Shared) {
    let filling: Vec<String> = shared
        .peers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|p| p.held == 0 && shared.alive(&p.url))
        .map(|p| p.url.clone())
        .collect();
    let asks = filling.into_iter().map(|url| async move {
        let got = async {
            let r = b
                .http
                .get(format!("{url}/api/have/{}", b.repo))
                .timeout(std::time::Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<Vec<String>>().await.ok()
        }
        .await;
        (
            url,
            got.unwrap_or_default().into_iter().collect::<HashSet<_>>(),
        )
    });
    let got = futures_util::future::join_all(asks).await;
    let mut have = shared.have.write().unwrap_or_else(|e| e.into_inner());
    for (url, set) in got {
        have.insert(url, set);
    }
}

/// Jobs in path order, cut into batches of at most [`BATCH_FILES`] files and
/// [`BATCH_BYTES`] bytes.
fn chunk(mut jobs: Vec<(String, Entry)>) -> Vec<Vec<(String, Entry)>> {
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let mut cur: Vec<(String, Entry)> = Vec::new();
    let mut bytes = 0u64;
    for job in jobs {
        if !cur.is_empty() && (cur.len() >= BATCH_FILES || bytes + job.1.size > BATCH_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += job.1.size;
        cur.push(job);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Fisher–Yates with a seed from the process's hasher keys (random per process).
fn shuffle<T>(v: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(v.len());
    let mut x = h.finish() | 1;
    for i in (1..v.len()).rev() {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

struct Shared {
    peers: std::sync::RwLock<Vec<Peer>>,
    /// Volunteers dropped for this pull.
    dead: Mutex<HashSet<String>>,
    /// Held while writing to the staging area.
    writer: Mutex<()>,
    /// Directories of the tree known to be directories (a first fill's).
    dirs: Mutex<HashSet<String>>,
    /// What each filling peer said it has ([`Written::batches`]), asked every
    /// [`HAVE_EVERY`].
    have: std::sync::RwLock<std::collections::HashMap<String, HashSet<String>>>,
}

impl Shared {
    /// Whether `peer` said it has the batch `key`.
    fn has(&self, peer: &str, key: &str) -> bool {
        self.have
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .is_some_and(|h| h.contains(key))
    }

    fn alive(&self, peer: &str) -> bool {
        !lock(&self.dead).contains(peer)
    }
    fn drop_peer(&self, peer: &str) {
        lock(&self.dead).insert(peer.to_string());
    }
}

struct Task {
    http: reqwest::Client,
    server: String,
    repo: String,
    staging: StateDir,
    place_in: Option<std::path::PathBuf>,
    written: Option<Arc<Written>>,
    shared: Arc<Shared>,
    progress: Option<Arc<dyn Progress>>,
}

#[derive(Default)]
struct Done {
    from_peers: u64,
    from_origin: u64,
    verified: Vec<Sha256>,
    placed: Vec<(Sha256, String)>,
    left: Vec<(String, Entry)>,
}

/// Files an answer brought and that verified: their index in the batch, and their bytes.
type Arrived = Vec<(usize, Vec<u8>)>;

impl Task {
    /// One batch: up to [`PEERS_PER_BATCH`] live volunteers (starting at a different one for
    /// each batch, so the load spreads), then the origin, each asked for what is still
    /// missing.
    async fn run(self, i: usize, mut todo: Vec<(String, Entry)>) -> Result<Done, LocalIo> {
        let mut done = Done::default();
        // Ask only who has the batch: a volunteer holding a generation in which none of its
        // files changed since, or one filling that said it has it. Nobody: the origin.
        let key = chunk_key(&todo);
        let need = todo.iter().map(|(_, e)| e.changed_in).max().unwrap_or(0);
        let peers: Vec<String> = {
            let all = self.shared.peers.read().unwrap_or_else(|e| e.into_inner());
            let n = all.len();
            (0..n)
                .map(|k| &all[(i + k) % n])
                .filter(|p| self.shared.alive(&p.url) && p.holds_all(&todo))
                .filter(|p| (p.held > 0 && p.held >= need) || self.shared.has(&p.url, &key))
                .map(|p| p.url.clone())
                .take(PEERS_PER_BATCH)
                .collect()
        };
        for peer in peers {
            if todo.is_empty() {
                break;
            }
            if !self.shared.alive(&peer) {
                continue;
            }
            let (arrived, failed) = self.ask(&peer, &todo).await;
            if let Some(why) = failed {
                self.give_up_on(&peer, &todo, &why).await;
            }
            let got = indexes(&arrived);
            done.from_peers += self.stage(&todo, arrived, &mut done.placed).await?;
            done.verified.extend(got.iter().map(|&k| todo[k].1.sha256));
            todo = remaining(todo, &got);
        }
        if !todo.is_empty() {
            let (arrived, failed) = self.ask(&self.server, &todo).await;
            if let Some(why) = failed {
                tracing::warn!(error = %why, files = todo.len() - arrived.len(), "a batch from the origin failed; its files go one by one");
            }
            let got = indexes(&arrived);
            done.from_origin += self.stage(&todo, arrived, &mut done.placed).await?;
            done.verified.extend(got.iter().map(|&k| todo[k].1.sha256));
            todo = remaining(todo, &got);
        }
        if todo.is_empty() {
            if let Some(w) = &self.written {
                lock(&w.batches).insert(key);
            }
        }
        done.left = todo;
        Ok(done)
    }

    /// Ask `base` for `todo`: the files it sent that verified, and why its answer failed,
    /// if it did.
    async fn ask(&self, base: &str, todo: &[(String, Entry)]) -> (Arrived, Option<Failure>) {
        let items: Vec<Wanted> = todo
            .iter()
            .map(|(p, e)| Wanted {
                path: p.clone(),
                sha256: e.sha256,
                size: e.size,
            })
            .collect();
        let body = crate::batch::Request {
            items: items
                .iter()
                .map(|w| crate::batch::Item {
                    path: w.path.clone(),
                    sha256: w.sha256.to_hex(),
                    size: w.size,
                })
                .collect(),
        };
        let url = format!("{base}/api/batch/{}", self.repo);
        let resp = match self.http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                return (
                    Vec::new(),
                    Some(Failure::Refused(format!("HTTP {}", r.status()))),
                )
            }
            Err(e) => return (Vec::new(), Some(Failure::Refused(e.to_string()))),
        };
        let mut arrived = Vec::new();
        let res = read_answer(resp, &items, &mut |g| {
            if let Got::File(k, bytes) = g {
                arrived.push((k, bytes));
            }
        })
        .await;
        (arrived, res.err().map(Failure::Answer))
    }

    /// Write what arrived: placed in the tree on a first fill (what cannot be placed, for
    /// something in the way, is staged instead: installing decides about it), else to the
    /// staging area. Returns the bytes; `placed` is told what went into the tree.
    ///
    /// Staged files are written in place, not through a `.part` renamed: a directory
    /// operation fewer a file. A peer that asks for one half written gets `N` for its size,
    /// or bytes it hashes before sending; a pull killed halfway finds it of another size, or
    /// hashes it before installing.
    async fn stage(
        &self,
        todo: &[(String, Entry)],
        arrived: Arrived,
        placed: &mut Vec<(Sha256, String)>,
    ) -> Result<u64, LocalIo> {
        if arrived.is_empty() {
            return Ok(0);
        }
        let writes: Vec<(String, Sha256, Vec<u8>)> = arrived
            .into_iter()
            .map(|(k, bytes)| (todo[k].0.clone(), todo[k].1.sha256, bytes))
            .collect();
        let staging = StateDir(self.staging.0.clone());
        let place_in = self.place_in.clone();
        let written = self.written.clone();
        let progress = self.progress.clone();
        let shared = self.shared.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut bytes = 0;
            let mut now_placed = Vec::new();
            let mut to_stage = Vec::new();
            for (path, sha, data) in writes {
                let put = match &place_in {
                    Some(tree) => {
                        place(tree, &path, &data, &shared.dirs).map_err(|error| LocalIo {
                            path: path.clone(),
                            error,
                        })?
                    }
                    None => false,
                };
                bytes += data.len() as u64;
                if put {
                    if let Some(w) = &written {
                        lock(&w.placed).insert(path.clone(), sha);
                    }
                    now_placed.push((sha, path));
                    if let Some(p) = &progress {
                        p.advance(data.len() as u64);
                    }
                } else {
                    to_stage.push((path, sha, data));
                }
            }
            if !to_stage.is_empty() {
                // One writer at a time: creating files in one directory from several
                // threads spins on its lock and costs more than it saves.
                let _one = lock(&shared.writer);
                for (path, sha, data) in to_stage {
                    std::fs::write(staging.staged(&sha.to_hex()), &data)
                        .map_err(|error| LocalIo { path, error })?;
                    if let Some(w) = &written {
                        lock(&w.staged).insert(sha);
                    }
                    if let Some(p) = &progress {
                        p.advance(data.len() as u64);
                    }
                }
            }
            Ok((bytes, now_placed))
        })
        .await;
        let (bytes, now_placed) = res.unwrap_or_else(|e| {
            Err(LocalIo {
                path: String::new(),
                error: std::io::Error::other(format!("staging a batch: {e}")),
            })
        })?;
        placed.extend(now_placed);
        Ok(bytes)
    }

    /// Drop `peer` for the rest of this pull; if it sent a wrong file, tell the server,
    /// which checks it (and quarantines it if its bytes are wrong).
    async fn give_up_on(&self, peer: &str, todo: &[(String, Entry)], why: &Failure) {
        self.shared.drop_peer(peer);
        match why {
            Failure::Answer(AnswerError::Lied { index, path, why }) => {
                tracing::warn!(peer, path, error = %why, "a volunteer sent a wrong file in a batch; dropped for this pull and reported");
                let url = format!("{peer}/{}/{}", self.repo, crate::pull::encode_rel(path));
                let report = serde_json::json!({
                    "url": url,
                    "reason": format!("batch item {index}: {why}"),
                });
                let _ = self
                    .http
                    .post(format!("{}/api/report", self.server))
                    .json(&report)
                    .send()
                    .await;
            }
            other => {
                tracing::warn!(peer, files = todo.len(), error = %other, "a volunteer's batch failed; dropped for this pull, its files asked elsewhere")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    /// No answer, or not a batch answer.
    #[error("{0}")]
    Refused(String),
    /// The answer failed part way.
    #[error(transparent)]
    Answer(AnswerError),
}

/// Put `data` at `rel` in a first fill's `tree`, making its directories: `false` when
/// something is in the way (a file or link where a directory belongs, anything at the file's
/// place), which is never followed or replaced here.
fn place(
    tree: &std::path::Path,
    rel: &str,
    data: &[u8],
    dirs: &Mutex<HashSet<String>>,
) -> std::io::Result<bool> {
    use std::io::Write;
    if let Some((parent, _)) = rel.rsplit_once('/') {
        let known = lock(dirs).contains(parent);
        if !known {
            let mut sofar = String::new();
            for comp in parent.split('/') {
                if !sofar.is_empty() {
                    sofar.push('/');
                }
                sofar.push_str(comp);
                let p = tree.join(&sofar);
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !std::fs::symlink_metadata(&p)?.is_dir() {
                            return Ok(false);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            lock(dirs).insert(parent.to_string());
        }
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tree.join(rel))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Err(e) = f.write_all(data) {
        // Not half a file left in the tree (a full disk, most likely).
        let _ = std::fs::remove_file(tree.join(rel));
        return Err(e);
    }
    Ok(true)
}

/// A batch's name among volunteers filling from the same manifest (they cut the same
/// batches): its first path and its number of files.
fn chunk_key(batch: &[(String, Entry)]) -> String {
    format!(
        "{}+{}",
        batch.first().map_or("", |(p, _)| p.as_str()),
        batch.len()
    )
}

fn indexes(arrived: &Arrived) -> Vec<usize> {
    arrived.iter().map(|(k, _)| *k).collect()
}

/// `todo` without the files at `got`.
fn remaining(todo: Vec<(String, Entry)>, got: &[usize]) -> Vec<(String, Entry)> {
    let got: HashSet<usize> = got.iter().copied().collect();
    todo.into_iter()
        .enumerate()
        .filter(|(k, _)| !got.contains(k))
        .map(|(_, j)| j)
        .collect()
}

#[cfg(test)]
mod tests {
    //! The stage against real HTTP on loopback: an origin that answers honestly, and peers
    //! that lie, break off, or vanish mid-answer.

    use super::*;
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::routing::{get, post};
    use std::collections::BTreeMap;

    /// How a hostile peer answers a batch.
    #[derive(Clone, Copy, PartialEq)]
    enum Peer {
        /// The first file right, the second with one byte changed, then the rest right.
        Corrupt,
        /// The first file right, then the answer ends (no end mark).
        Truncated,
        /// The first file right, then the connection breaks mid-file.
        Vanishes,
        /// Everything right.
        Honest,
    }

    type Files = Arc<BTreeMap<String, Vec<u8>>>;

    struct World {
        files: Files,
        reports: Mutex<Vec<String>>,
        peers: Vec<String>,
    }

    fn entry(bytes: &[u8]) -> Entry {
        Entry {
            size: bytes.len() as u64,
            sha256: crate::batch::sha256_of(bytes),
            changed_in: 1,
            btih: None,
        }
    }

    fn frame(out: &mut Vec<u8>, bytes: &[u8]) {
        out.push(b'F');
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    /// A peer answering as `how`.
    async fn peer(files: Files, how: Peer) -> String {
        let answer = move |State(files): State<Files>, body: Bytes| async move {
            let items = crate::batch::parse_request(&body).unwrap();
            let mut out = Vec::new();
            for (k, it) in items.iter().enumerate() {
                let mut bytes = files[&it.path].clone();
                if k == 1 {
                    match how {
                        Peer::Corrupt => bytes[0] ^= 1,
                        Peer::Truncated => break,
                        Peer::Vanishes => {
                            out.extend_from_slice(b"F\0\0");
                            let head = Bytes::from(out);
                            // What was sent reaches the puller before the connection breaks.
                            let s = futures_util::StreamExt::then(
                                futures_util::stream::iter(vec![
                                    Ok(head),
                                    Err(std::io::Error::other("the peer vanished")),
                                ]),
                                |item| async move {
                                    if item.is_err() {
                                        tokio::time::sleep(std::time::Duration::from_millis(200))
                                            .await;
                                    }
                                    item
                                },
                            );
                            return Body::from_stream(s);
                        }
                        Peer::Honest => {}
                    }
                }
                frame(&mut out, &bytes);
            }
            if how == Peer::Honest || how == Peer::Corrupt {
                out.push(b'E');
            }
            Body::from(out)
        };
        serve(
            axum::Router::new()
                .route("/api/batch/r", post(answer))
                .with_state(files),
        )
        .await
    }

    /// The origin: names the peers, answers batches honestly, takes reports.
    async fn origin(world: Arc<World>) -> String {
        let sources = |State(w): State<Arc<World>>| async move {
            let s: Vec<_> = w
                .peers
                .iter()
                .map(|u| serde_json::json!({"url": u, "held": 1}))
                .collect();
            axum::Json(serde_json::json!({"generation": 1, "sources": s}))
        };
        let batch = |State(w): State<Arc<World>>, body: Bytes| async move {
            let items = crate::batch::parse_request(&body).unwrap();
            let mut out = Vec::new();
            for it in &items {
                frame(&mut out, &w.files[&it.path]);
            }
            out.push(b'E');
            Body::from(out)
        };
        let report = |State(w): State<Arc<World>>, body: Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            w.reports
                .lock()
                .unwrap()
                .push(v["url"].as_str().unwrap().to_string());
            "ok"
        };
        serve(
            axum::Router::new()
                .route("/api/sources/r", get(sources))
                .route("/api/batch/r", post(batch))
                .route("/api/report", post(report))
                .with_state(world),
        )
        .await
    }

    /// Pull every file with one peer behaving as `how`; returns what the stage did, what
    /// the origin was told, and the peer's address.
    async fn pull_with(how: Peer) -> (Outcome, Vec<String>, String) {
        let files: Files = Arc::new(
            (0..20)
                .map(|i| {
                    (
                        format!("d/f{i:02}"),
                        format!("file {i} ").repeat(i + 1).into_bytes(),
                    )
                })
                .collect(),
        );
        let bad = peer(files.clone(), how).await;
        let world = Arc::new(World {
            files,
            reports: Mutex::new(Vec::new()),
            peers: vec![bad.clone()],
        });
        let server = origin(world.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.staging()).unwrap();
        let http = reqwest::Client::new();
        let b = Batched {
            http: &http,
            server: &server,
            repo: "r",
            state: &state,
            parallel: 1,
            progress: None,
            place_in: None,
            own_url: None,
            written: None,
        };
        let jobs = world
            .files
            .iter()
            .map(|(p, bytes)| (p.clone(), entry(bytes)))
            .collect();
        let out = fetch(&b, jobs).await.unwrap();
        // Whatever the peer did, every file is staged with exactly the signed bytes.
        assert!(out.left.is_empty(), "{:?}", out.left);
        for bytes in world.files.values() {
            let staged = state.staged(&crate::batch::sha256_of(bytes).to_hex());
            assert_eq!(&std::fs::read(staged).unwrap(), bytes);
        }
        let reports = world.reports.lock().unwrap().clone();
        (out, reports, bad)
    }

    fn size_of(name: &str) -> u64 {
        let i: usize = name[3..].parse().unwrap();
        (format!("file {i} ").len() * (i + 1)) as u64
    }

    #[tokio::test]
    async fn an_honest_peer_gives_everything_and_the_origin_nothing() {
        let (out, reports, _) = pull_with(Peer::Honest).await;
        assert_eq!(out.from_origin, 0);
        assert_eq!(
            out.from_peers,
            (0..20).map(|i| size_of(&format!("d/f{i:02}"))).sum::<u64>()
        );
        assert!(out.dropped.is_empty() && reports.is_empty());
    }

    #[tokio::test]
    async fn a_peer_sending_a_wrong_file_is_dropped_reported_and_the_file_comes_from_the_origin() {
        let (out, reports, bad) = pull_with(Peer::Corrupt).await;
        assert_eq!(out.dropped, vec![bad.clone()]);
        assert_eq!(reports, vec![format!("{bad}/r/d/f01")]);
        // What came before the wrong file was kept; the rest came from the origin.
        assert_eq!(out.from_peers, size_of("d/f00"));
        assert!(out.from_origin > 0);
    }

    #[tokio::test]
    async fn a_truncated_answer_keeps_what_arrived_and_the_rest_comes_from_the_origin() {
        let (out, reports, bad) = pull_with(Peer::Truncated).await;
        assert_eq!(out.dropped, vec![bad]);
        assert!(reports.is_empty(), "a cut answer is no lie: {reports:?}");
        assert_eq!(out.from_peers, size_of("d/f00"));
    }

    #[tokio::test]
    async fn a_peer_vanishing_mid_file_costs_only_that_batch_s_rest() {
        let (out, reports, bad) = pull_with(Peer::Vanishes).await;
        assert_eq!(out.dropped, vec![bad]);
        assert!(reports.is_empty());
        assert_eq!(out.from_peers, size_of("d/f00"));
    }
}
