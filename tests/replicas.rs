//! Servers sharing one PostgreSQL database are replicas of one mirror: what an admin or a
//! volunteer's enrollment changes on one is honoured by the others, and a server with
//! another signing key is refused. Real servers, a real PostgreSQL cluster of the test's own.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PACKAGE: &str = "debian/pool/main/m/ms-hello/ms-hello_1.0_all.deb";

/// Where `server` sends a customer for [`PACKAGE`]: the volunteer's URL, or the origin.
async fn sent_to(server: &Server) -> String {
    let r = http()
        .get(format!("{}/{PACKAGE}", server.url))
        .send()
        .await
        .unwrap();
    match r.headers().get("location") {
        Some(l) => l.to_str().unwrap().to_string(),
        None => format!("served {}", r.status()),
    }
}

async fn admin(server: &Server, path: &str) -> reqwest::Response {
    let token = std::fs::read_to_string(server.data_dir.join("admin.token")).unwrap();
    http()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
}

/// `POST /admin/enroll` for a volunteer called `name`.
async fn enroll_on(server: &Server, name: &str) -> (reqwest::StatusCode, String) {
    let r = admin(server, &format!("/admin/enroll?name={name}&ttl_hours=1")).await;
    (r.status(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_volunteers_tokens_and_standing_ride_out_the_database_and_refuse_a_stranger()
{
    let mut cluster = pgtest::Cluster::start();
    let url = cluster.create_database("mirror");
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let db = ["--database", url.as_str(), "--direct-max-bytes", "0"];
    for r in ["a", "b"] {
        std::fs::create_dir_all(root.join(r)).unwrap();
    }
    let a = start_server(&root.join("a"), &repo, &db).await;
    // A replica signs with the mirror's key: copied, as an operator would.
    let b_data = root.join("b").join("server-data");
    std::fs::create_dir_all(&b_data).unwrap();
    std::fs::copy(a.data_dir.join("server.key"), b_data.join("server.key")).unwrap();
    let b = start_server(&root.join("b"), &repo, &db).await;

    // A server with a key of its own is refused at start, saying why.
    let stranger = std::process::Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(root.join("c"))
        .arg("--repo")
        .arg(format!("debian={}", repo.display()))
        .args(["--database", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&stranger.stderr);
    assert!(!stranger.status.success(), "{err}");
    assert!(err.contains("must share its key"), "{err}");

    // A volunteer enrolled through A (its token in the shared database) announces to A and
    // to B (`--server A --server B`); B knows its credential from the database, takes its
    // announces, and sends customers to it as A does.
    let mirror = root.join("v1").join("debian");
    copy_tree(&repo, &mirror);
    let token = a.enroll("v1");
    let port = free_port();
    let mut args = volunteer_args(&a, &token, port, &root.join("v1/data"), &mirror);
    args.extend(["--server".to_string(), b.url.clone()]);
    let _v = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("v1.log"),
    );
    let v_url = format!("http://127.0.0.1:{port}");
    a.wait_held("v1", 1).await;
    b.wait_held("v1", 1).await;
    assert!(sent_to(&a).await.starts_with(&v_url));
    assert!(sent_to(&b).await.starts_with(&v_url));

    // A token made on A works on B, once, and then on neither.
    let token = a.enroll("v2");
    assert!(b.redeem(&token).await.is_success());
    assert_eq!(a.redeem(&token).await, reqwest::StatusCode::FORBIDDEN);
    assert_eq!(b.redeem(&token).await, reqwest::StatusCode::FORBIDDEN);

    // PostgreSQL stops: customers are still sent to the volunteer, whose announces A still
    // takes (three intervals pass); what needs the database is refused with a 503 naming
    // it. Back, it all works again without restarting a server.
    cluster.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sent_to(&a).await.starts_with(&v_url));
    assert_eq!(a.held("v1").await, Some(1));
    let (status, body) = enroll_on(&a, "v3").await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("unavailable") && body.contains(&format!("127.0.0.1:{}", cluster.port())),
        "{body}"
    );
    cluster.restart();
    wait_until(
        Duration::from_secs(15),
        "enrollment to work again",
        || async { enroll_on(&a, "v3").await.0.is_success() },
    )
    .await;

    // Drained on B: A stops sending it customers; resumed on B: A sends them again.
    let started = Instant::now();
    assert!(admin(&b, "/admin/volunteers/v1/drain")
        .await
        .status()
        .is_success());
    wait_until(Duration::from_secs(2), "A to honour B's drain", || async {
        !sent_to(&a).await.starts_with(&v_url)
    })
    .await;
    eprintln!("drain on B honoured by A after {:?}", started.elapsed());
    assert!(admin(&b, "/admin/volunteers/v1/resume")
        .await
        .status()
        .is_success());
    wait_until(Duration::from_secs(5), "A to honour B's resume", || async {
        sent_to(&a).await.starts_with(&v_url)
    })
    .await;

    // Revoked on B: A stops choosing it within 2 s (B at once), and both refuse its
    // announces from then on.
    let started = Instant::now();
    assert!(admin(&b, "/admin/volunteers/v1/revoke")
        .await
        .status()
        .is_success());
    wait_until(
        Duration::from_secs(2),
        "A to honour B's revocation",
        || async { !sent_to(&a).await.starts_with(&v_url) },
    )
    .await;
    eprintln!(
        "revocation on B honoured by A after {:?}",
        started.elapsed()
    );
    assert!(!sent_to(&b).await.starts_with(&v_url));
    assert_eq!(a.volunteer("v1").await["state"], "revoked");
    assert_eq!(b.volunteer("v1").await["state"], "revoked");
    drop((a, b));
    drop(cluster);
}

/// `migrate-store`: a mirror that began on SQLite moves to PostgreSQL with its volunteers
/// and restarts there; never while its server runs, never into a database that holds any.
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_mirror_moves_to_postgresql_with_its_volunteers() {
    let cluster = pgtest::Cluster::start();
    let url = cluster.create_database("moved");
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let mut server = start_server(root, &repo, &[]).await;
    // One volunteer enrolled, and one token not yet used.
    assert!(server.redeem(&server.enroll("m1")).await.is_success());
    let waiting = server.enroll("m2");
    let migrate = |data_dir: &std::path::Path| {
        std::process::Command::new(BIN)
            .arg("migrate-store")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--to", &url])
            .output()
            .unwrap()
    };
    let out = migrate(&server.data_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stop it first"),
        "{err}"
    );
    server.proc.terminate();
    let out = migrate(&server.data_dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("moved 1 volunteers, 2 enrollment tokens"),
        "{said}"
    );
    // Again: the target holds it all now, and is left alone.
    let out = migrate(&server.data_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already holds"),
        "{err}"
    );
    // The server restarts on PostgreSQL, and the volunteer's token works there.
    server.args.extend(["--database".to_string(), url.clone()]);
    server.restart();
    server.wait_healthy().await;
    // The token made before the move works after it, once.
    assert!(server.redeem(&waiting).await.is_success());
    assert_eq!(
        server.redeem(&waiting).await,
        reqwest::StatusCode::FORBIDDEN
    );
    let names: Vec<String> = server
        .volunteers()
        .await
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["m1", "m2"]);
    drop(server);
    drop(cluster);
}

/// The generation `server` serves of `debian`, as `/api/info` says.
async fn generation(server: &Server) -> Option<u64> {
    let r = http()
        .get(format!("{}/api/info", server.url))
        .send()
        .await
        .ok()?;
    r.json::<serde_json::Value>().await.ok()?["repos"]["debian"].as_u64()
}

/// What `server` answers for `debian/<path>`: the status, and the body if 200.
async fn fetch(server: &Server, path: &str) -> (reqwest::StatusCode, Vec<u8>) {
    let r = http()
        .get(format!("{}/debian/{path}", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.bytes().await.unwrap_or_default().to_vec())
}

/// A server of the mirror on `db`, with `tree` its own copy of the repository, signing with
/// `key` (copied from the first, as an operator would).
async fn start_replica(
    root: &std::path::Path,
    tree: &std::path::Path,
    key: Option<&std::path::Path>,
    db: &[&str],
) -> Server {
    std::fs::create_dir_all(root).unwrap();
    if let Some(key) = key {
        let data = root.join("server-data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
    }
    start_server(root, tree, db).await
}

/// Publishing on one replica is serving on all: the others load the generation from the
/// database within a second, each indexing its own copy of the tree against the signed
/// manifest; a file a replica's copy lacks is never sent by its origin (other bytes), until
/// the copy holds it; a replica restarted catches up from the database before it answers,
/// and does not publish its own older tree over the newer generation.
#[tokio::test(flavor = "multi_thread")]
async fn a_generation_published_on_one_replica_is_served_by_all() {
    let cluster = pgtest::Cluster::start();
    let url = cluster.create_database("mirror");
    let tmp = TestDir::new();
    let root = tmp.path();
    let trees = ["a", "b", "c"].map(|r| root.join(r).join("tree"));
    sample_repo(&trees[0]);
    copy_tree(&trees[0], &trees[1]);
    copy_tree(&trees[0], &trees[2]);
    let db = ["--database", url.as_str(), "--direct-max-bytes", "0"];
    let a = start_replica(&root.join("a"), &trees[0], None, &db).await;
    let key = a.data_dir.join("server.key");
    let b = start_replica(&root.join("b"), &trees[1], Some(&key), &db).await;
    let mut c = start_replica(&root.join("c"), &trees[2], Some(&key), &db).await;
    for s in [&a, &b, &c] {
        assert_eq!(generation(s).await, Some(1));
    }

    // A release written to every replica's tree, and one more file only to A's; published
    // on A.
    let new = b"the new release\n".repeat(100);
    let only_a = b"written to A only\n".repeat(10);
    for t in &trees {
        std::fs::write(t.join("new.txt"), &new).unwrap();
    }
    std::fs::write(trees[0].join("only-a.txt"), &only_a).unwrap();
    a.publish();
    let published = Instant::now();
    for s in [&b, &c] {
        wait_until(
            Duration::from_secs(5),
            "a replica to load generation 2",
            || async { generation(s).await == Some(2) },
        )
        .await;
    }
    eprintln!(
        "generation 2 served by B and C {:?} after publish returned",
        published.elapsed()
    );
    // Every replica is an origin for what its tree holds as published, and for nothing else.
    for s in [&a, &b, &c] {
        assert_eq!(
            fetch(s, "new.txt").await,
            (reqwest::StatusCode::OK, new.clone())
        );
        let manifest = http()
            .get(format!("{}/manifests/debian/2", s.url))
            .send()
            .await
            .unwrap();
        assert!(manifest.status().is_success());
    }
    assert_eq!(
        fetch(&a, "only-a.txt").await,
        (reqwest::StatusCode::OK, only_a.clone())
    );
    assert_eq!(
        fetch(&b, "only-a.txt").await.0,
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    // B's tree filled from A by PRsync, every file checked against the signed manifest (as
    // the operator's guide says): B finds the file there and sends it.
    let pull = run(std::process::Command::new(BIN)
        .args([
            "prsync",
            "pull",
            "--server",
            &a.url,
            "--repo",
            "debian",
            "--linger-secs",
            "0",
        ])
        .args(["--bt-listen", "127.0.0.1:0", "--dest"])
        .arg(&trees[1]));
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    assert_eq!(std::fs::read(trees[1].join("only-a.txt")).unwrap(), only_a);
    let filled = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "B to find the file in its tree",
        || async { fetch(&b, "only-a.txt").await == (reqwest::StatusCode::OK, only_a.clone()) },
    )
    .await;
    eprintln!(
        "B sends the file {:?} after its tree was filled",
        filled.elapsed()
    );

    // C dies; A publishes generation 3 (new.txt changed, in A's tree alone). C restarted
    // serves generation 3 from its first answer, with its older new.txt not sent, and has
    // not published its tree as generation 4.
    c.proc.kill();
    let newer = b"the newer release\n".repeat(100);
    std::fs::write(trees[0].join("new.txt"), &newer).unwrap();
    a.publish();
    c.restart();
    c.wait_healthy().await;
    assert_eq!(generation(&c).await, Some(3));
    assert_eq!(
        fetch(&c, "new.txt").await.0,
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        fetch(&c, "only-a.txt").await.0,
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    for s in [&a, &b] {
        wait_until(
            Duration::from_secs(5),
            "generation 3 everywhere",
            || async { generation(s).await == Some(3) },
        )
        .await;
    }
    assert_eq!(
        fetch(&a, "new.txt").await,
        (reqwest::StatusCode::OK, newer.clone())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(generation(&a).await, Some(3), "C published its older tree");

    // The mirror's statistics are its servers' counters summed (each writes its own every
    // few seconds), on whichever server is asked.
    let stats = |s: &Server| {
        let u = format!("{}/api/stats", s.url);
        async move {
            let r = http().get(u).send().await.unwrap();
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    wait_until(
        Duration::from_secs(15),
        "the mirror's statistics",
        || async {
            let mut own = 0;
            for s in [&a, &b, &c] {
                own += stats(s).await["origin_requests"].as_u64().unwrap();
            }
            own > 0 && stats(&b).await["mirror"]["origin_requests"].as_u64() == Some(own)
        },
    )
    .await;
    assert_eq!(stats(&c).await["servers"].as_array().unwrap().len(), 3);
    drop((a, b, c));
    drop(cluster);
}

/// A volunteer told of one server learns the mirror's others from it (at enrollment and in
/// each reply to its announces) and announces to each: to one started after it, without a
/// restart, and on to the rest when one is killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_volunteer_learns_every_server_of_the_mirror_and_announces_to_each() {
    let cluster = pgtest::Cluster::start();
    let url = cluster.create_database("mirror");
    let tmp = TestDir::new();
    let root = tmp.path();
    let tree = root.join("tree");
    sample_repo(&tree);
    let db = ["--database", url.as_str(), "--direct-max-bytes", "0"];
    let mut a = start_replica(&root.join("a"), &tree, None, &db).await;
    let key = a.data_dir.join("server.key");
    let b = start_replica(&root.join("b"), &tree, Some(&key), &db).await;

    // Enrolled on B, told of B alone.
    let mirror = root.join("v1").join("debian");
    copy_tree(&tree, &mirror);
    let token = b.enroll("v1");
    let port = free_port();
    let args = volunteer_args(&b, &token, port, &root.join("v1/data"), &mirror);
    let v = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("v1.log"),
    );
    b.wait_held("v1", 1).await;
    a.wait_held("v1", 1).await;

    // A third server joins the mirror: the volunteer announces to it too.
    let c = start_replica(&root.join("c"), &tree, Some(&key), &db).await;
    let joined = Instant::now();
    c.wait_held("v1", 1).await;
    eprintln!(
        "a server started {:?} ago gets the volunteer's announces",
        joined.elapsed()
    );

    // A killed: B and C go on hearing from it (several intervals pass).
    a.proc.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.held("v1").await, Some(1), "{}", dump_logs(&[&v]));
    assert_eq!(c.held("v1").await, Some(1), "{}", dump_logs(&[&v]));
    drop((a, b, c, v));
    drop(cluster);
}

/// HAProxy in front of the mirror's servers, as the operator's guide shows it: health checks
/// on `/health`, a connection refused or dropped retried on another server.
struct Haproxy {
    url: String,
    _proc: Proc,
}

impl Haproxy {
    async fn start(dir: &std::path::Path, servers: &[&Server]) -> Haproxy {
        let port = free_port();
        let backends: String = servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("    server s{i} 127.0.0.1:{} check\n", s.port))
            .collect();
        let cfg = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
             \x20   retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response response-timeout\n\
             frontend mirror\n    bind 127.0.0.1:{port}\n    default_backend servers\n\
             backend servers\n    balance roundrobin\n    option httpchk GET /health\n    http-check expect status 200\n\
             \x20   default-server inter 500ms fall 2 rise 2\n{backends}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let proc = Proc::spawn_of(
            "haproxy",
            &["-db", "-f", path.to_str().unwrap()],
            &dir.join("haproxy.log"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/health");
        wait_until(Duration::from_secs(15), "HAProxy to answer", || async {
            http()
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Haproxy { url, _proc: proc }
    }
}

/// Three servers behind HAProxy, three volunteers announcing to all: apt, curl and wget get
/// the exact bytes through it; one server killed with SIGKILL in the middle of a stream of
/// customers fails none of them (a response it was sending at that moment is cut, and the
/// customer's one retry gets it); restarted, it serves the generation published meanwhile.
/// PostgreSQL stopped for 30 s stops no customer and no announce, only what needs it.
#[tokio::test(flavor = "multi_thread")]
async fn behind_haproxy_losing_a_server_or_the_database_costs_no_download() {
    let mut cluster = pgtest::Cluster::start();
    let url = cluster.create_database("mirror");
    let tmp = TestDir::new();
    let root = tmp.path();
    let tree = root.join("tree");
    let layout = sample_repo(&tree);
    let db = ["--database", url.as_str()];
    let a = start_replica(&root.join("a"), &tree, None, &db).await;
    let key = a.data_dir.join("server.key");
    let mut b = start_replica(&root.join("b"), &tree, Some(&key), &db).await;
    let c = start_replica(&root.join("c"), &tree, Some(&key), &db).await;
    let mut volunteers = Vec::new();
    for name in ["v1", "v2", "v3"] {
        let mirror = root.join(name).join("debian");
        copy_tree(&tree, &mirror);
        let token = a.enroll(name);
        let args = volunteer_args(
            &a,
            &token,
            free_port(),
            &root.join(name).join("data"),
            &mirror,
        );
        volunteers.push(Proc::spawn(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &root.join(format!("{name}.log")),
        ));
    }
    for s in [&a, &b, &c] {
        for name in ["v1", "v2", "v3"] {
            s.wait_held(name, 1).await;
        }
    }
    let lb = Haproxy::start(root, &[&a, &b, &c]).await;

    // Real customers through HAProxy.
    let deb = &layout.deb_paths[0];
    let expected = std::fs::read(tree.join(deb)).unwrap();
    let out = run(std::process::Command::new("curl")
        .args(["-fsSL", "--max-time", "20"])
        .arg(format!("{}/debian/{deb}", lb.url)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, expected);
    let got = root.join("wget.deb");
    let out = run(std::process::Command::new("wget")
        .args(["-q", "--timeout=20", "--tries=1", "-O"])
        .arg(&got)
        .arg(format!("{}/debian/{deb}", lb.url)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&got).unwrap(), expected);
    let apt = Apt::new(&root.join("apt"), &lb.url);
    apt.run(&["update"]);
    apt.run(&["download", "ms-data"]);
    let data_deb = layout
        .deb_paths
        .iter()
        .find(|p| p.contains("ms-data"))
        .unwrap();
    assert_eq!(
        std::fs::read(
            apt.dir
                .join("work")
                .join(data_deb.rsplit('/').next().unwrap())
        )
        .unwrap(),
        std::fs::read(tree.join(data_deb)).unwrap()
    );

    // Four customers downloading one after another, for 3 s after B is killed.
    const AT_MOST: usize = 5_000;
    let customer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (customer, done, stop) = (customer.clone(), done.clone(), stop.clone());
            let (expected, target) = (expected.clone(), format!("{}/debian/{deb}", lb.url));
            tokio::spawn(async move {
                let (mut failures, mut cut) = (Vec::new(), 0);
                for _ in 0..AT_MOST {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // A response B was sending when it was killed is cut mid-body: no proxy
                    // can save bytes already on their way, so the customer asks again once,
                    // as apt and curl --retry do. Anything else, or a second failure, fails.
                    let mut failed = None;
                    for attempt in 0..2 {
                        failed = match customer.get(&target).send().await {
                            Ok(r) if r.status().is_success() => match r.bytes().await {
                                Ok(b) if b[..] == expected[..] => None,
                                Ok(b) => Some(format!("{} wrong bytes", b.len())),
                                Err(e) if attempt == 0 => {
                                    cut += 1;
                                    eprintln!("a response cut mid-body ({e}); asking again");
                                    continue;
                                }
                                Err(e) => Some(format!("body: {e}")),
                            },
                            Ok(r) => Some(format!("status {}", r.status())),
                            Err(e) => Some(format!("{e}")),
                        };
                        break;
                    }
                    failures.extend(failed);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // At most one response per customer was in flight from B when it died.
                if cut > 1 {
                    failures.push(format!("{cut} responses cut mid-body"));
                }
                failures
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), "customers under way", || async {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 100
    })
    .await;
    b.proc.kill();
    let at_kill = done.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    let total = done.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{total} downloads, {} after B was killed", total - at_kill);
    assert!(
        total - at_kill >= 100,
        "too few downloads after the kill to tell"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} downloads failed: {failures:?}",
        failures.len()
    );

    // A new generation published while B is down; B restarted serves it from its first
    // answer, and customers through HAProxy get its bytes whichever server answers.
    let new = b"published while a server was down\n".repeat(50);
    std::fs::write(tree.join("new.txt"), &new).unwrap();
    a.publish();
    b.restart();
    b.wait_healthy().await;
    assert_eq!(generation(&b).await, Some(2));
    for _ in 0..12 {
        let r = customer
            .get(format!("{}/debian/new.txt", lb.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(r.bytes().await.unwrap()[..], new[..]);
    }

    // PostgreSQL stopped for 30 s: customers are still served and announces still taken
    // everywhere; enrolling and publishing fail saying the database is unavailable. Back,
    // both work again without restarting any server.
    cluster.stop();
    let stopped = Instant::now();
    let enroll = cli(&["enroll", "--name", "v4", "--data-dir"], &c.data_dir);
    assert!(!enroll.status.success());
    let err = String::from_utf8_lossy(&enroll.stderr);
    assert!(
        err.contains("database") && err.contains("unavailable"),
        "{err}"
    );
    std::fs::write(tree.join("newer.txt"), b"published after the outage\n").unwrap();
    let publish = cli(&["publish", "--data-dir"], &a.data_dir);
    assert!(!publish.status.success());
    let err = String::from_utf8_lossy(&publish.stderr);
    assert!(
        err.contains("database") && err.contains("unavailable"),
        "{err}"
    );
    while stopped.elapsed() < Duration::from_secs(30) {
        let r = customer
            .get(format!("{}/debian/{deb}", lb.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(r.bytes().await.unwrap()[..], expected[..]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for s in [&a, &b, &c] {
        for name in ["v1", "v2", "v3"] {
            assert_eq!(s.held(name).await, Some(1), "{name} on {}", s.url);
        }
    }
    cluster.restart();
    wait_until(
        Duration::from_secs(30),
        "enrollment to work again",
        || async {
            cli(&["enroll", "--name", "v4", "--data-dir"], &c.data_dir)
                .status
                .success()
        },
    )
    .await;
    let publish = cli(&["publish", "--data-dir"], &a.data_dir);
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    for s in [&a, &b, &c] {
        wait_until(
            Duration::from_secs(5),
            "generation 3 everywhere",
            || async { generation(s).await == Some(3) },
        )
        .await;
    }
    drop((lb, a, b, c, volunteers));
    drop(cluster);
}

/// `mirrorswarm ARGS DIR`: an admin command run as the operator would.
fn cli(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    run(std::process::Command::new(BIN).args(args).arg(dir))
}
