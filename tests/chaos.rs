//! Chaos: a server, three syncing volunteers, a standalone pull and a customer loop, while
//! at random moments (from a printed seed) a volunteer is killed and restarted, a pull is
//! killed, the operator republishes, and a file on a volunteer's disk is changed. At the
//! end every customer download had published bytes, every tree holds exactly the newest
//! generation (nothing the manifest does not list), and nothing outside the trees changed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long the chaos lasts.
const CHAOS: Duration = Duration::from_secs(60);

/// A customer's download: the path, and the SHA-256 of what it got or why it failed.
type Download = (String, Result<String, String>);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every regular file under `root` (mirrorswarm's state aside), with its bytes' SHA-256.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel.starts_with(".mirrorswarm") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, sha256_hex(&std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

/// Path → SHA-256 of a generation, from the server's signed manifest (read as JSON; the
/// signature is the volunteers' business, tested elsewhere).
async fn generation(server: &Server, g: u64) -> BTreeMap<String, String> {
    let body = http()
        .get(format!("{}/manifests/debian/{g}", server.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let env: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let payload = env["payload"].as_str().expect("signed manifest payload");
    let m: serde_json::Value = serde_json::from_str(payload).unwrap();
    m["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, e)| (p.clone(), e["sha256"].as_str().unwrap().to_string()))
        .collect()
}

async fn latest_generation(server: &Server) -> u64 {
    let v = get_json(&format!("{}/api/info", server.url)).await;
    v["repos"]["debian"].as_u64().unwrap()
}

fn syncing_args(
    server: &Server,
    token: &str,
    port: u16,
    data: &Path,
    mirror: &Path,
) -> Vec<String> {
    volunteer_args(server, token, port, data, mirror)
        .into_iter()
        .filter(|a| a != "--no-sync")
        .collect()
}

fn spawn(args: &[String], log: &Path) -> Proc {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&argv, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_lost_while_volunteers_pulls_and_disks_misbehave() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let tmp = TestDir::new();
    let root = tmp.path().to_path_buf();
    let repo = root.join("repo");
    sample_repo(&repo);
    std::fs::create_dir_all(repo.join("img")).unwrap();
    std::fs::write(repo.join("img/disk.img"), noise(seed, 2 << 20)).unwrap();
    // Files beside the trees that nothing may touch.
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"not a mirror's").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link-to-outside")).unwrap();
    let outside_before = tree(&outside);

    let server = start_server(&root, &repo, &["--direct-max-bytes", "1024"]).await;
    let mut vols: Vec<(String, Vec<String>, PathBuf, Proc)> = Vec::new();
    for i in 1..=3 {
        let name = format!("v{i}");
        let mirror = root.join(&name).join("debian");
        // One starts with no mirror directory at all, the others from a copy (as with
        // rsync).
        std::fs::create_dir_all(root.join(&name)).unwrap();
        if i > 1 {
            copy_tree(&repo, &mirror);
        }
        let token = server.enroll(&name);
        let args = syncing_args(
            &server,
            &token,
            free_port(),
            &root.join(&name).join("data"),
            &mirror,
        );
        let p = spawn(&args, &root.join(format!("{name}.log")));
        vols.push((name, args, mirror, p));
    }
    for (name, ..) in &vols {
        server.wait_held(name, 1).await;
    }

    // The customer loop: curl through the server, as many downloads as fit, each checked
    // later against every published generation.
    let stop = Arc::new(AtomicBool::new(false));
    let downloads: Arc<Mutex<Vec<Download>>> = Default::default();
    let customer = {
        let (stop, downloads, url, root) = (
            stop.clone(),
            downloads.clone(),
            server.url.clone(),
            root.clone(),
        );
        let paths = tree(&repo).into_keys().collect::<Vec<_>>();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                let path = &paths[(i as usize * 7919) % paths.len()];
                i += 1;
                let out = root.join("customer.bin");
                let o = Command::new("curl")
                    .args([
                        "-fsSL",
                        "--max-time",
                        "20",
                        "--retry",
                        "4",
                        "--retry-all-errors",
                    ])
                    .args(["--retry-delay", "1", "-o", out.to_str().unwrap()])
                    .arg(format!("{url}/debian/{path}"))
                    .stderr(Stdio::piped())
                    .output()
                    .unwrap();
                let r = if o.status.success() {
                    Ok(sha256_hex(&std::fs::read(&out).unwrap()))
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).to_string())
                };
                downloads.lock().unwrap().push((path.clone(), r));
            }
        })
    };

    // The chaos.
    let pull_tree = root.join("pulled");
    let start = Instant::now();
    let mut events = Vec::new();
    let mut next_extra = 0u64;
    let mut pulls = Vec::new();
    while start.elapsed() < CHAOS {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
        match rng.below(4) {
            0 => {
                let i = rng.below(3) as usize;
                let (name, args, _, p) = &mut vols[i];
                p.kill();
                tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
                *p = spawn(args, &root.join(format!("{name}.{}.log", events.len())));
                events.push(format!("kill -9 and restart {name}"));
            }
            1 => {
                let mut p = Proc::spawn(
                    &[
                        "prsync",
                        "pull",
                        "--server",
                        &server.url,
                        "--repo",
                        "debian",
                        "--dest",
                        pull_tree.to_str().unwrap(),
                        "--linger-secs",
                        "0",
                    ],
                    &root.join(format!("pull.{}.log", events.len())),
                );
                tokio::time::sleep(Duration::from_millis(rng.below(2000))).await;
                p.kill();
                pulls.push(p);
                events.push("kill -9 a pull".into());
            }
            2 => {
                // The operator changes a file, adds one and drops an older addition.
                std::fs::write(repo.join("big/a.bin"), noise(rng.next(), 300_000)).unwrap();
                std::fs::create_dir_all(repo.join("extra")).unwrap();
                std::fs::write(
                    repo.join(format!("extra/new-{next_extra}.bin")),
                    noise(rng.next(), 50_000 + rng.below(100_000) as usize),
                )
                .unwrap();
                if next_extra >= 2 {
                    let _ = std::fs::remove_file(
                        repo.join(format!("extra/new-{}.bin", next_extra - 2)),
                    );
                }
                next_extra += 1;
                let out = server.publish();
                events.push(format!("republish: {}", out.trim()));
            }
            _ => {
                let i = rng.below(3) as usize;
                let (name, _, mirror, _) = &vols[i];
                let files: Vec<String> = tree(mirror).into_keys().collect();
                if files.is_empty() {
                    continue;
                }
                let f = &files[rng.below(files.len() as u64) as usize];
                let p = mirror.join(f);
                if let Ok(mut b) = std::fs::read(&p) {
                    if !b.is_empty() {
                        let at = rng.below(b.len() as u64) as usize;
                        b[at] ^= 0x5a;
                        let _ = std::fs::write(&p, &b);
                        events.push(format!("change a byte of {f} on {name}"));
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    customer.join().unwrap();
    println!("{} chaos events:\n  {}", events.len(), events.join("\n  "));

    // Every download had the bytes of some published generation of its path.
    let latest = latest_generation(&server).await;
    let mut published: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for g in 1..=latest {
        for (p, sha) in generation(&server, g).await {
            published.entry(p).or_default().insert(sha);
        }
    }
    let downloads = std::mem::take(&mut *downloads.lock().unwrap());
    let failed: Vec<_> = downloads.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "downloads failed: {failed:?}");
    for (path, r) in downloads.iter() {
        let sha = r.as_ref().unwrap();
        assert!(
            published.get(path).is_some_and(|s| s.contains(sha)),
            "{path} was downloaded with bytes no generation published"
        );
    }
    println!(
        "{} customer downloads, all with published bytes",
        downloads.len()
    );
    assert!(downloads.len() >= 20, "the customer loop hardly ran");

    // Once things settle, every tree is the newest generation exactly.
    let newest = generation(&server, latest).await;
    // (A byte changed in the last second is noticed at the next rescan and synced back.)
    for (name, _, mirror, _) in &vols {
        let what = format!("{name} to hold generation {latest}, file for file");
        wait_until(Duration::from_secs(90), &what, || async {
            server.held(name).await == Some(latest) && tree(mirror) == newest
        })
        .await;
    }
    let o = Command::new(BIN)
        .args([
            "prsync",
            "pull",
            "--server",
            &server.url,
            "--repo",
            "debian",
        ])
        .args(["--dest", pull_tree.to_str().unwrap(), "--linger-secs", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        tree(&pull_tree),
        newest,
        "the pulled tree is not generation {latest}"
    );
    assert_eq!(
        tree(&outside),
        outside_before,
        "something outside the trees changed"
    );
    drop(vols);
    drop(pulls);
}
