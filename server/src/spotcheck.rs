//! Spot checks: the server fetches a random file, or one piece of a large file, from each
//! volunteer at a steady pace and compares the bytes with what it published. A mismatch
//! quarantines the volunteer (no redirects, persisted across restarts) until it passes again
//! `release_after_passes` checks in a row, the first on the file it failed. A customer proxy's
//! report only makes the server look sooner and more often; it never quarantines by itself,
//! so a false report costs the reporter nothing and the volunteer nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use balance::registry::Part;
use balance::Balancer;
use futures_util::StreamExt;
use rand::Rng;
use sha1::Digest as _;

use crate::locks::{lock, read, write};
use crate::snapshots::Snapshots;
use crate::spot_ledger::SpotChecks;
use crate::store::{Store, VolunteerRecord};

/// What spot checks read and change: the parts of the server's state they need.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub trust: &'a config::TrustConfig,
    /// Files up to this size the server serves itself: checks prefer the others.
    pub direct_max_bytes: u64,
    /// Where the published torrents (their pieces' SHA-1s) are.
    pub data_dir: &'a Path,
    /// Who is up, and where a verdict lands (quarantine, observed speed).
    pub balancer: &'a Balancer,
    pub repos: &'a Snapshots,
    pub spot: &'a SpotChecks,
    /// Where a quarantine is recorded, to outlast a restart.
    pub store: &'a Store,
    /// Enrolled volunteers by id: names for the log, and the quarantine as the admin sees it.
    pub credentials: &'a RwLock<HashMap<String, VolunteerRecord>>,
    /// Counted when a volunteer is newly quarantined.
    pub quarantines: &'a AtomicU64,
}

/// The server's state as spot checks see it.
pub trait Source: Send + Sync + 'static {
    fn spot_parts(&self) -> Parts<'_>;
}

/// Checks of fewer bytes than this say nothing about a volunteer's speed.
const MIN_SPEED_SAMPLE: u64 = 128 * 1024;

/// A volunteer at least this fraction of the median observed speed is not held back. Checks
/// are few and a busy moment slows one down, so only a large gap counts.
const SLOW_FRACTION: f64 = 0.25;

/// Speed samples a volunteer needs before its speed is compared with anyone's.
const MIN_SPEED_SAMPLES: u32 = 3;

/// The share a volunteer gets for being slow never drops below this: it still gets checked
/// and can recover.
const MIN_SPEED_FACTOR: f64 = 0.1;

/// What to fetch, and what the bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub repo: String,
    pub rel: String,
    pub url: String,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The whole file: this size and SHA-256.
    Whole { size: u64, sha256: [u8; 32] },
    /// Bytes `start..start + len` (one BitTorrent piece) with this SHA-1.
    Piece {
        index: u32,
        start: u64,
        len: u64,
        sha1: [u8; 20],
    },
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The bytes matched.
    Pass { bytes: u64, secs: f64 },
    /// The volunteer sent bytes that are not the published ones.
    Mismatch(String),
    /// No answer that says anything about its bytes (unreachable, busy, timed out, missing).
    Inconclusive(String),
}

/// Files a check looks through for one a volunteer holding a small part claims, after its
/// random tries missed.
const PART_WALK: usize = 100_000;

/// One volunteer due for a check.
struct Due {
    id: String,
    url: String,
    /// What it claims to hold: per repository, the generation and the part (`None`: all).
    generations: Vec<(String, u64, Option<Arc<Part>>)>,
    suspect: Option<(String, String)>,
}

/// Run spot checks until the process ends. Does nothing when `trust.spot_check_secs` is 0.
pub async fn run<S: Source>(st: Arc<S>) {
    let cfg = st.spot_parts().trust.clone();
    if cfg.spot_check_secs == 0 {
        tracing::info!("spot checks off (trust.spot_check_secs = 0)");
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.check_timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "spot checks cannot start");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = st.spot_parts().spot.wake.notified() => {}
        }
        let due = due_now(st.spot_parts(), Instant::now());
        let mut checks = tokio::task::JoinSet::new();
        // A bounded number at once: checks must not become a load of their own.
        for d in due.into_iter().take(16) {
            let (st, client) = (st.clone(), client.clone());
            checks.spawn(async move { check_volunteer(st.spot_parts(), &client, d).await });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// Volunteers whose next check is due. The first check of a volunteer comes at a random
/// point of its first period, so a restarted server does not check everyone at once.
fn due_now(st: Parts<'_>, now: Instant) -> Vec<Due> {
    let base = Duration::from_secs(st.trust.spot_check_secs);
    let fast = base / st.trust.suspect_speedup.max(1);
    let reg = st.balancer.registry();
    let mut tracks = lock(&st.spot.tracks);
    let mut due = Vec::new();
    for v in reg.all() {
        if v.stopped || !reg.is_fresh(v, now) {
            continue;
        }
        let tr = tracks.entry(v.id.clone()).or_default();
        let suspicious = tr.suspect.is_some() || reg.is_quarantined(&v.id);
        let period = if suspicious { fast } else { base };
        let last = *tr.last.get_or_insert_with(|| {
            now.checked_sub(period.mul_f64(rand::thread_rng().gen::<f64>()))
                .unwrap_or(now)
        });
        if now.saturating_duration_since(last) >= period {
            tr.last = Some(now);
            due.push(Due {
                id: v.id.clone(),
                url: v.url().to_string(),
                generations: v
                    .generations
                    .with_parts()
                    .map(|(r, g, part)| (r.to_string(), g, part.cloned()))
                    .collect(),
                suspect: tr.suspect.clone(),
            });
        }
    }
    due
}

async fn check_volunteer(st: Parts<'_>, client: &reqwest::Client, d: Due) {
    let Some(target) = pick_target(st, &d) else {
        return;
    };
    let verdict = fetch_and_verify(client, &target).await;
    apply(st, &d.id, &target, verdict).await;
}

/// The suspect file if there is one and the volunteer should hold it, else a random file it
/// claims to hold (its bytes changed no later than the generation it announced, and in its
/// part if it holds one): what it claims is what is checked.
fn pick_target(st: Parts<'_>, d: &Due) -> Option<Target> {
    let claims = |repo: &str, rel: &str, changed_in: u64| {
        d.generations.iter().any(|(r, g, part)| {
            r == repo && changed_in <= *g && part.as_ref().is_none_or(|p| p.selection.holds(rel))
        })
    };
    let mut rng = rand::thread_rng();
    let (repo, rel) = match &d.suspect {
        Some((repo, rel))
            if st.repos.get(repo).map(|s| s.newest()).is_some_and(|s| {
                s.files
                    .get(rel)
                    .is_some_and(|e| claims(repo, rel, e.changed_in))
            }) =>
        {
            (repo.clone(), rel.clone())
        }
        _ => {
            if d.generations.is_empty() {
                return None;
            }
            let (repo, ..) = &d.generations[rng.gen_range(0..d.generations.len())];
            let snap = st.repos.get(repo).map(|s| s.newest())?;
            let n = snap.files.len();
            if n == 0 {
                return None;
            }
            // A few tries for a file it holds that customers are redirected for (larger than
            // what the server serves itself); failing that, any file it holds. A small part
            // may be missed by random tries: then a walk from a random place, bounded.
            let direct = st.direct_max_bytes;
            let mut found = None;
            for _ in 0..16 {
                let (rel, e) = snap.files.nth(rng.gen_range(0..n))?;
                if claims(repo, rel, e.changed_in) {
                    let redirected = e.size > direct;
                    if redirected || found.is_none() {
                        found = Some(rel.to_string());
                    }
                    if redirected {
                        break;
                    }
                }
            }
            if found.is_none() {
                let start = rng.gen_range(0..n);
                found = (start..n)
                    .chain(0..start)
                    .take(PART_WALK)
                    .filter_map(|i| snap.files.nth(i))
                    .find(|(rel, e)| claims(repo, rel, e.changed_in))
                    .map(|(rel, _)| rel.to_string());
            }
            (repo.to_string(), found?)
        }
    };
    let snap = st.repos.get(&repo).map(|s| s.newest())?;
    let entry = snap.files.get(&rel)?;
    let url = crate::urls::volunteer_url(&d.url, &repo, &rel);
    let whole = Expect::Whole {
        size: entry.size,
        sha256: entry.sha256.0,
    };
    // Large files are checked one piece at a time, by the published torrent's SHA-1s; a large
    // file without a torrent (below `torrent_min_bytes`) is checked whole.
    let torrent = (entry.size > st.trust.whole_file_max_bytes)
        .then(|| {
            std::fs::read(crate::publish::artifact_path(
                st.data_dir,
                &entry.sha256.to_hex(),
                "torrent",
            ))
            .ok()
        })
        .flatten()
        .and_then(|t| torrent_pieces(&t));
    let expect = match torrent {
        Some((piece_len, pieces)) => {
            piece_check(&pieces, piece_len, entry.size, &mut rng).unwrap_or(whole)
        }
        None => whole,
    };
    Some(Target {
        repo,
        rel,
        url,
        expect,
    })
}

/// A random piece of a file of `size` bytes, with its SHA-1 from `pieces`.
fn piece_check(pieces: &[u8], piece_len: u64, size: u64, rng: &mut impl Rng) -> Option<Expect> {
    let count = pieces.len() / 20;
    if count == 0 || piece_len == 0 || (count as u64 - 1) * piece_len >= size {
        return None;
    }
    let index = rng.gen_range(0..count);
    let start = index as u64 * piece_len;
    let mut sha1 = [0u8; 20];
    sha1.copy_from_slice(&pieces[index * 20..index * 20 + 20]);
    Some(Expect::Piece {
        index: index as u32,
        start,
        len: piece_len.min(size - start),
        sha1,
    })
}

/// `(piece length, concatenated SHA-1s)` of a published torrent.
fn torrent_pieces(torrent: &[u8]) -> Option<(u64, Vec<u8>)> {
    use bencode::Value;
    let Value::Dict(top) = bencode::decode(torrent).ok()? else {
        return None;
    };
    let Some(Value::Dict(info)) = top.get(b"info".as_slice()) else {
        return None;
    };
    let Some(Value::Int(len)) = info.get(b"piece length".as_slice()) else {
        return None;
    };
    let Some(Value::Bytes(pieces)) = info.get(b"pieces".as_slice()) else {
        return None;
    };
    (*len > 0 && pieces.len() % 20 == 0).then(|| (*len as u64, pieces.clone()))
}

/// Fetch the target and compare. Reads at most the expected number of bytes plus one chunk,
/// whatever the volunteer sends.
pub async fn fetch_and_verify(client: &reqwest::Client, t: &Target) -> Verdict {
    let started = Instant::now();
    let mut req = client.get(&t.url);
    let expected_len = match &t.expect {
        Expect::Whole { size, .. } => *size,
        Expect::Piece { start, len, .. } => {
            req = req.header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", start, start + len - 1),
            );
            *len
        }
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Verdict::Inconclusive(format!("no answer: {e}")),
    };
    let status = resp.status();
    let want = match t.expect {
        Expect::Whole { .. } => reqwest::StatusCode::OK,
        Expect::Piece { .. } => reqwest::StatusCode::PARTIAL_CONTENT,
    };
    if status != want {
        return Verdict::Inconclusive(format!("answered {status}"));
    }
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Verdict::Inconclusive(format!("transfer broke off: {e}")),
        };
        got += chunk.len() as u64;
        if got > expected_len {
            return Verdict::Mismatch(format!("sent more than the {expected_len} bytes published"));
        }
        match t.expect {
            Expect::Whole { .. } => sha256.update(&chunk),
            Expect::Piece { .. } => sha1.update(&chunk),
        }
    }
    if got < expected_len {
        return Verdict::Mismatch(format!("sent {got} of {expected_len} bytes"));
    }
    let ok = match &t.expect {
        Expect::Whole { sha256: want, .. } => sha256.finalize().as_slice() == want,
        Expect::Piece { sha1: want, .. } => sha1.finalize().as_slice() == want,
    };
    if ok {
        Verdict::Pass {
            bytes: got,
            secs: started.elapsed().as_secs_f64(),
        }
    } else {
        Verdict::Mismatch(match &t.expect {
            Expect::Whole { .. } => "SHA-256 differs from the published one".to_string(),
            Expect::Piece { index, .. } => {
                format!("piece {index} differs from the published torrent")
            }
        })
    }
}

/// Compare each volunteer's observed speed with the median of all observed (each after at
/// least `MIN_SPEED_SAMPLES` checks): one that serves the server's checks at under a quarter
/// of the median has its share cut in proportion, whatever load it reports. This is what catches a volunteer that claims to be idle but is slow.
fn update_observed_speeds(st: Parts<'_>) {
    let speeds: Vec<(String, f64)> = lock(&st.spot.tracks)
        .iter()
        .filter(|(_, t)| t.speed_samples >= MIN_SPEED_SAMPLES)
        .filter_map(|(id, t)| Some((id.clone(), t.observed_bps?)))
        .collect();
    if speeds.len() < 2 {
        return;
    }
    let mut sorted: Vec<f64> = speeds.iter().map(|s| s.1).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut reg = st.balancer.registry();
    for (id, bps) in speeds {
        let factor = (bps / (SLOW_FRACTION * median)).clamp(MIN_SPEED_FACTOR, 1.0);
        if factor < 1.0 && reg.observed_speed(&id) >= 1.0 {
            tracing::warn!(volunteer = %id, observed_bps = bps as u64, median_bps = median as u64, "serves far slower than its peers: its share is cut");
        }
        reg.set_observed_speed(&id, factor);
    }
}

/// Act on a verdict: quarantine on a mismatch, count passes towards release.
async fn apply(st: Parts<'_>, id: &str, t: &Target, verdict: Verdict) {
    let name = read(st.credentials)
        .get(id)
        .map_or_else(|| id.to_string(), |c| c.name.clone());
    let quarantined = st.balancer.registry().is_quarantined(id);
    match verdict {
        Verdict::Pass { bytes, secs } => {
            st.spot.passed.fetch_add(1, Ordering::Relaxed);
            let release = {
                let mut tracks = lock(&st.spot.tracks);
                let tr = tracks.entry(id.to_string()).or_default();
                if tr.suspect.as_ref() == Some(&(t.repo.clone(), t.rel.clone())) {
                    tr.suspect = None;
                }
                // Small files measure latency, not bandwidth.
                if bytes >= MIN_SPEED_SAMPLE {
                    let bps = bytes as f64 / secs.max(1e-3);
                    tr.observed_bps = Some(tr.observed_bps.map_or(bps, |o| 0.7 * o + 0.3 * bps));
                    tr.speed_samples = tr.speed_samples.saturating_add(1);
                }
                if quarantined {
                    tr.passes += 1;
                    tr.passes >= st.trust.release_after_passes && tr.suspect.is_none()
                } else {
                    false
                }
            };
            tracing::debug!(volunteer = %name, repo = %t.repo, path = %t.rel, bytes, secs, "spot check passed");
            update_observed_speeds(st);
            if release {
                if let Err(e) = st.store.set_quarantine(id, None).await {
                    tracing::error!(volunteer = %name, error = %e, "cannot record the end of a quarantine");
                    return;
                }
                st.balancer.registry().set_quarantined(id, false);
                if let Some(c) = write(st.credentials).get_mut(id) {
                    c.quarantine = None;
                }
                if let Some(tr) = lock(&st.spot.tracks).get_mut(id) {
                    tr.passes = 0;
                }
                tracing::info!(volunteer = %name, "quarantine lifted: its files match again");
            }
        }
        Verdict::Mismatch(why) => {
            st.spot.failed.fetch_add(1, Ordering::Relaxed);
            let reason = format!("{}/{}: {why}", t.repo, t.rel);
            {
                let mut tracks = lock(&st.spot.tracks);
                let tr = tracks.entry(id.to_string()).or_default();
                tr.passes = 0;
                tr.suspect = Some((t.repo.clone(), t.rel.clone()));
            }
            if let Err(e) = st.store.set_quarantine(id, Some(&reason)).await {
                // Still quarantine in memory: bad bytes must not reach customers.
                tracing::error!(volunteer = %name, error = %e, "cannot record a quarantine");
            }
            if !quarantined {
                st.quarantines.fetch_add(1, Ordering::Relaxed);
            }
            st.balancer.registry().set_quarantined(id, true);
            if let Some(c) = write(st.credentials).get_mut(id) {
                c.quarantine = Some(reason.clone());
            }
            tracing::warn!(volunteer = %name, %reason, "spot check failed: volunteer quarantined, no redirects until it passes again");
        }
        Verdict::Inconclusive(why) => {
            st.spot.inconclusive.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(volunteer = %name, repo = %t.repo, path = %t.rel, %why, "spot check inconclusive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torrent_pieces_are_read_and_malformed_ones_refused() {
        let pieces = vec![7u8; 40];
        let mut t = b"d4:infod12:piece lengthi16384e6:pieces40:".to_vec();
        t.extend_from_slice(&pieces);
        t.extend_from_slice(b"ee");
        assert_eq!(torrent_pieces(&t), Some((16384, pieces)));
        assert_eq!(
            torrent_pieces(b"d4:infod12:piece lengthi0e6:pieces0:ee"),
            None
        );
        assert_eq!(
            torrent_pieces(b"d4:infod12:piece lengthi9e6:pieces3:abcee"),
            None
        );
        assert_eq!(torrent_pieces(b"not bencode"), None);
        assert_eq!(torrent_pieces(b"le"), None);
    }

    /// A real file server on loopback, serving `dir`, like a volunteer does.
    async fn serve_dir(dir: std::path::PathBuf) -> String {
        use axum::http::{HeaderMap, Method, Uri};
        let root = std::sync::Arc::new(fileserve::Root::open(&dir).unwrap());
        let app = axum::Router::new().fallback(move |m: Method, u: Uri, h: HeaderMap| {
            let root = root.clone();
            async move {
                let rel = u.path().trim_start_matches('/');
                let opts = fileserve::ServeOptions::default();
                fileserve::serve_file(&m, &h, &root, rel, &opts).await
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    #[tokio::test]
    async fn whole_files_and_pieces_are_checked_against_the_published_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let url = serve_dir(dir.path().to_path_buf()).await;
        let client = reqwest::Client::new();
        let target = |expect| Target {
            repo: "r".into(),
            rel: "f".into(),
            url: format!("{url}/f"),
            expect,
        };
        let sha256: [u8; 32] = sha2::Sha256::digest(&data).into();
        let whole = Expect::Whole {
            size: data.len() as u64,
            sha256,
        };
        assert!(matches!(
            fetch_and_verify(&client, &target(whole)).await,
            Verdict::Pass { bytes: 100_000, .. }
        ));
        // Pieces of 32 KiB: the last one is short.
        let mut pieces = Vec::new();
        for c in data.chunks(32 * 1024) {
            pieces.extend_from_slice(&sha1::Sha1::digest(c));
        }
        let mut rng = rand::thread_rng();
        for _ in 0..8 {
            let p = piece_check(&pieces, 32 * 1024, data.len() as u64, &mut rng).unwrap();
            assert!(matches!(
                fetch_and_verify(&client, &target(p)).await,
                Verdict::Pass { .. }
            ));
        }
        // The file changes on the "volunteer": both kinds of check see it.
        let mut bad = data.clone();
        bad[40_000] ^= 1;
        std::fs::write(dir.path().join("f"), &bad).unwrap();
        assert!(matches!(
            fetch_and_verify(
                &client,
                &target(Expect::Whole {
                    size: 100_000,
                    sha256
                })
            )
            .await,
            Verdict::Mismatch(_)
        ));
        let piece1 = Expect::Piece {
            index: 1,
            start: 32 * 1024,
            len: 32 * 1024,
            sha1: pieces[20..40].try_into().unwrap(),
        };
        assert!(matches!(
            fetch_and_verify(&client, &target(piece1)).await,
            Verdict::Mismatch(m) if m.contains("piece 1")
        ));
        // A truncated file is a mismatch; a missing one is inconclusive.
        std::fs::write(dir.path().join("f"), &data[..50_000]).unwrap();
        assert!(matches!(
            fetch_and_verify(
                &client,
                &target(Expect::Whole {
                    size: 100_000,
                    sha256
                })
            )
            .await,
            Verdict::Mismatch(_)
        ));
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert!(matches!(
            fetch_and_verify(
                &client,
                &target(Expect::Whole {
                    size: 100_000,
                    sha256
                })
            )
            .await,
            Verdict::Inconclusive(_)
        ));
        // A piece list that does not fit the size is refused.
        assert!(piece_check(&pieces, 32 * 1024, 10, &mut rng).is_none());
    }
}
