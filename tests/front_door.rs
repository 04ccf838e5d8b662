//! The front door (issue 36), end to end: HTTPS beside HTTP on the server and volunteers,
//! with a test CA given to curl, wget and apt; customers that came over HTTPS sent only to
//! `https://` URLs; certificates that are expired, of another key or broken refused at start;
//! a certificate reloaded on SIGHUP and when its files change, open connections kept, a
//! broken file leaving the old one in place; and IPv6 beside IPv4 on `::1`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use testcerts::{Ca, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIG_DEB: &str = "pool/main/m/ms-data/ms-data_0.3_all.deb";

/// A test CA and a certificate of it for every loopback name, written under `dir`.
struct Pki {
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn pki(dir: &Path) -> Pki {
    let ca = Ca::new("mirrorswarm test CA");
    let ca_file = ca.write_cert(dir, "ca.pem");
    let (cert, key) = ca.issue(&NAMES, Validity::Current).write(dir, "site");
    Pki { ca_file, cert, key }
}

fn tls_flags(port: u16, pki: &Pki) -> Vec<String> {
    vec![
        "--listen-tls".into(),
        format!("127.0.0.1:{port}"),
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
    ]
}

/// curl with the test CA (if any) and `args`; its output, failing the test if curl fails.
fn curl(ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = run(cmd.args(args));
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `Location` of a HEAD of `url` (None: answered without a redirect).
fn location(ca: Option<&Path>, url: &str, more: &[&str]) -> Option<String> {
    let mut args = vec!["-I", url];
    args.extend_from_slice(more);
    let out = curl(ca, &args);
    header(&String::from_utf8_lossy(&out.stdout), "location")
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

async fn served(v: &Volunteer) -> u64 {
    let j = get_json(&format!("{}/health", v.url)).await;
    j["served_requests"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_customers_are_sent_only_to_https_urls_and_get_exact_bytes() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let pki = pki(root);
    let ca = Some(pki.ca_file.as_path());
    let tls_port = free_port();
    let mut flags = tls_flags(tls_port, &pki);
    flags.extend(["--direct-max-bytes".into(), "1024".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(root, &repo, &flags).await;
    server.publish();
    let https = format!("https://127.0.0.1:{tls_port}");
    let plain = volunteer_listening(root, &server, "plain", &repo, "127.0.0.1:PORT", &[]);
    let secure_port = free_port();
    let secure_flags = tls_flags(secure_port, &pki);
    let secure_flags: Vec<&str> = secure_flags.iter().map(String::as_str).collect();
    let secure = volunteer_listening(
        root,
        &server,
        "secure",
        &repo,
        "127.0.0.1:PORT",
        &secure_flags,
    );
    let secure_url = format!("https://127.0.0.1:{secure_port}");
    for v in [&plain, &secure] {
        server.wait_held(&v.name, 1).await;
    }
    let expected = std::fs::read(repo.join(BIG_DEB)).unwrap();
    let file_https = format!("{https}/debian/{BIG_DEB}");

    // Over HTTPS: always the https volunteer, never an http:// Location.
    for _ in 0..20 {
        let to = location(ca, &file_https, &[]).expect("a redirect");
        assert!(to.starts_with(&format!("{secure_url}/")), "{to}");
    }
    // Over plain HTTP: either volunteer's http:// URL.
    for _ in 0..10 {
        let to = location(ca, &format!("{}/debian/{BIG_DEB}", server.url), &[]).unwrap();
        assert!(
            to.starts_with(&format!("{}/", plain.url))
                || to.starts_with(&format!("{}/", secure.url)),
            "{to}"
        );
    }
    // The alternatives and the Metalink over HTTPS name only https:// URLs, the origin's
    // over HTTPS among them.
    let out = curl(ca, &["-I", "-H", "Want-Digest: sha-256", &file_https]);
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let link = header(&head, "link").unwrap_or_else(|| panic!("no Link: {head}"));
    let named: Vec<&str> = link
        .split('<')
        .skip(1)
        .filter_map(|p| p.split('>').next())
        .collect();
    assert!(named.len() >= 2, "{link}");
    assert!(named.iter().all(|u| u.starts_with("https://")), "{link}");
    assert!(
        named.contains(&format!("{https}/.origin/debian/{BIG_DEB}").as_str()),
        "{link}"
    );
    let out = curl(
        ca,
        &["-H", "Accept: application/metalink4+xml", &file_https],
    );
    let doc = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(doc.contains("<url"), "{doc}");
    assert!(!doc.contains("http://"), "{doc}");
    assert!(doc.contains(&format!("{https}/.origin/")), "{doc}");

    // curl -L over HTTPS: exact bytes, from the https volunteer.
    let before = served(&secure).await;
    let got = root.join("curl.deb");
    let out = curl(
        ca,
        &[
            "-fL",
            "-o",
            got.to_str().unwrap(),
            "-w",
            "%{url_effective}",
            &file_https,
        ],
    );
    let effective = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(effective.starts_with(&secure_url), "{effective}");
    assert_eq!(std::fs::read(&got).unwrap(), expected);
    // A range, through the same redirect.
    let out = curl(ca, &["-fL", "-r", "100-199", &file_https]);
    assert_eq!(out.stdout, expected[100..200]);
    // A small file the origin sends itself, over HTTPS.
    let release = std::fs::read(repo.join("dists/stable/Release")).unwrap();
    let out = curl(
        ca,
        &["-fL", &format!("{https}/debian/dists/stable/Release")],
    );
    assert_eq!(out.stdout, release);

    // wget with the test CA.
    let wget_file = root.join("wget.deb");
    let out = run(Command::new("wget")
        .args([
            "--tries=1",
            "--timeout=20",
            "-O",
            wget_file.to_str().unwrap(),
        ])
        .arg(format!("--ca-certificate={}", pki.ca_file.display()))
        .arg(&file_https));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "wget: {log}");
    assert!(log.contains(&format!("Location: {secure_url}/")), "{log}");
    assert_eq!(std::fs::read(&wget_file).unwrap(), expected);

    // apt with an https:// source and the test CA.
    let apt = Apt::new(&root.join("apt"), &https);
    let ca_opt = format!("Acquire::https::CaInfo={}", pki.ca_file.display());
    apt.run(&["-o", &ca_opt, "update"]);
    apt.run(&["-o", &ca_opt, "download", "ms-data", "ms-hello"]);
    assert_eq!(
        std::fs::read(apt.dir.join("work/ms-data_0.3_all.deb")).unwrap(),
        expected
    );
    assert!(
        served(&secure).await >= before + 3,
        "curl, wget and apt were served by the https volunteer"
    );

    // The verifying proxy serves its customers over HTTPS too.
    let proxy_tls = free_port();
    let mut proxy_args = vec![
        "proxy".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--server".into(),
        server.url.clone(),
        "--cache-dir".into(),
        root.join("proxy-cache").display().to_string(),
    ];
    proxy_args.extend(tls_flags(proxy_tls, &pki));
    let argv: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
    let _proxy = Proc::spawn(&argv, &root.join("proxy.log"));
    let through_proxy = format!("https://127.0.0.1:{proxy_tls}/debian/{BIG_DEB}");
    wait_until(Duration::from_secs(20), "the proxy over HTTPS", || async {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--cacert"])
            .arg(&pki.ca_file)
            .arg(format!("https://127.0.0.1:{proxy_tls}/health"))
            .status()
            .is_ok_and(|s| s.success())
    })
    .await;
    let out = curl(ca, &["-f", &through_proxy]);
    assert_eq!(
        out.stdout, expected,
        "verified bytes through the proxy over HTTPS"
    );

    // With the https volunteer gone, an HTTPS customer goes to the origin over HTTPS.
    let mut secure = secure;
    secure.proc.kill();
    wait_until(
        Duration::from_secs(20),
        "the https volunteer to be dropped",
        || async { location(ca, &file_https, &[]).is_none() },
    )
    .await;
    let out = curl(ca, &["-fL", &file_https]);
    assert_eq!(out.stdout, expected);
}

/// Start `mirrorswarm server` with `args` and wait for it to exit; its stderr.
fn refused(args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!status.success(), "{args:?} started: {err}");
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn expired_mismatched_and_broken_certificates_are_refused_at_start() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let ca = Ca::new("refusals CA");
    let (expired, expired_key) = ca.issue(&NAMES, Validity::Expired).write(root, "expired");
    let (good, _) = ca.issue(&NAMES, Validity::Current).write(root, "good");
    let (_, other_key) = ca.issue(&NAMES, Validity::Current).write(root, "other");
    let broken_key = root.join("broken.key.pem");
    std::fs::write(&broken_key, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    let server = |cert: &Path, key: &Path, more: &[&str]| {
        let data = root.join(format!("data-{}", free_port()));
        let mut args = vec![
            "server".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            data.display().to_string(),
            "--repo".into(),
            format!("debian={}", repo.display()),
            "--listen-tls".into(),
            format!("127.0.0.1:{}", free_port()),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        args.extend(more.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&argv)
    };
    let err = server(&expired, &expired_key, &[]);
    assert!(
        err.contains("expired") && err.contains(&expired.display().to_string()),
        "{err}"
    );
    let err = server(&good, &other_key, &[]);
    assert!(
        err.contains("does not match") && err.contains(&other_key.display().to_string()),
        "{err}"
    );
    let err = server(&good, &broken_key, &[]);
    assert!(err.contains(&broken_key.display().to_string()), "{err}");
    let err = server(
        &good,
        &root.join("good.key.pem"),
        &["--public-tls-url", "https://mirror.example.org:8443"],
    );
    assert!(
        err.contains("mirror.example.org") && err.contains("not valid for"),
        "{err}"
    );
    let err = server(&root.join("missing.pem"), &root.join("good.key.pem"), &[]);
    assert!(err.contains("missing.pem"), "{err}");
    // A key without a listener is a configuration error naming the key.
    let err = refused(&[
        "server",
        "--data-dir",
        root.join("data-x").to_str().unwrap(),
        "--repo",
        &format!("debian={}", repo.display()),
        "--tls-cert",
        good.to_str().unwrap(),
    ]);
    assert!(err.contains("tls.listen"), "{err}");
}

/// A TLS client trusting `ca_pem`.
fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A resumed session is shown no certificate: each connection must see the current one.
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn open(tls: &tokio_rustls::TlsConnector, at: SocketAddr) -> Tls {
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(at.ip().into());
    tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .unwrap()
}

/// The leaf certificate a new connection to `at` is shown.
async fn leaf_at(tls: &tokio_rustls::TlsConnector, at: SocketAddr) -> Vec<u8> {
    let s = open(tls, at).await;
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_of(cert_pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// `GET /health` on an open keep-alive connection; its status line.
async fn health(s: &mut Tls) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The head and a small JSON body: read until the body's length is in.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = header(head, "content-length").unwrap().parse().unwrap();
                if body.len() >= len {
                    return;
                }
            }
        }
    })
    .await
    .expect("an answer in time");
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

/// Write a certificate and key padded to a fixed length, the files' mtimes kept: only a
/// SIGHUP tells the server they changed.
fn write_unnoticed(path: &Path, text: &str) {
    replace_keeping_stat(path, padded(text).as_bytes());
}

fn padded(text: &str) -> String {
    format!("{text}{}", "\n".repeat(4096 - text.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_reloaded_without_dropping_connections_and_a_broken_one_is_not() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let ca = Ca::new("reload CA");
    let first = ca.issue(&NAMES, Validity::Current);
    let cert = root.join("live.crt.pem");
    let key = root.join("live.key.pem");
    std::fs::write(&cert, padded(&first.cert_pem)).unwrap();
    std::fs::write(&key, padded(&first.key_pem)).unwrap();
    let tls_port = free_port();
    let flags = [
        "--listen-tls".to_string(),
        format!("127.0.0.1:{tls_port}"),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(root, &repo, &flags).await;
    let at: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let tls = connector(&ca.cert_pem());
    assert_eq!(leaf_at(&tls, at).await, leaf_of(&first.cert_pem));
    let mut kept = open(&tls, at).await;
    assert!(health(&mut kept).await.contains("200"));

    // SIGHUP: the files changed where their size and mtime do not show it.
    let second = ca.issue(&NAMES, Validity::Current);
    write_unnoticed(&cert, &second.cert_pem);
    write_unnoticed(&key, &second.key_pem);
    let pid = server.proc.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(
        Duration::from_secs(10),
        "the certificate reloaded on SIGHUP",
        || {
            let tls = tls.clone();
            let want = leaf_of(&second.cert_pem);
            async move { leaf_at(&tls, at).await == want }
        },
    )
    .await;
    // The connection opened before goes on.
    assert!(health(&mut kept).await.contains("200"));

    // A broken key: the old certificate stays, and the log says why.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    wait_until(
        Duration::from_secs(20),
        "the broken key to be refused",
        || async { server.proc.log_text().contains("kept the previous one") },
    )
    .await;
    assert_eq!(leaf_at(&tls, at).await, leaf_of(&second.cert_pem));
    assert!(health(&mut kept).await.contains("200"));

    // Files renewed as certbot renews them: seen without a signal.
    let third = ca.issue(&NAMES, Validity::Current);
    std::fs::write(&cert, &third.cert_pem).unwrap();
    std::fs::write(&key, &third.key_pem).unwrap();
    wait_until(Duration::from_secs(20), "the renewed certificate", || {
        let tls = tls.clone();
        let want = leaf_of(&third.cert_pem);
        async move { leaf_at(&tls, at).await == want }
    })
    .await;
    assert!(health(&mut kept).await.contains("200"));
}

/// Whether this machine has an IPv6 loopback.
fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_customers_go_to_ipv6_urls_and_ipv4_ones_never_do() {
    if !has_ipv6() {
        eprintln!("no IPv6 loopback here; nothing to test");
        return;
    }
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // One server on `[::]`: IPv6 and IPv4 on one port.
    let port = free_port();
    let data_dir = root.join("server-data");
    let args = [
        "server".to_string(),
        "--listen".into(),
        format!("[::]:{port}"),
        "--public-url".into(),
        format!("http://127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--repo".into(),
        format!("debian={}", repo.display()),
        "--announce-interval".into(),
        "1".into(),
        "--slow-start-secs".into(),
        "0".into(),
        "--timeout-intervals".into(),
        "3".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server {
        url: format!("http://127.0.0.1:{port}"),
        port,
        data_dir,
        repo_dir: repo.clone(),
        proc: Proc::spawn(&argv, &root.join("server.log")),
        args: args.to_vec(),
    };
    server.wait_healthy().await;
    server.publish();
    // A volunteer on both families, each with its URL; one on IPv4 only.
    let dual = volunteer_listening(
        root,
        &server,
        "dual",
        &repo,
        "[::]:PORT",
        &[
            "--public-url",
            "http://127.0.0.1:PORT",
            "--other-url",
            "http://[::1]:PORT",
        ],
    );
    let v4 = volunteer_listening(root, &server, "v4only", &repo, "127.0.0.1:PORT", &[]);
    for v in [&dual, &v4] {
        server.wait_held(&v.name, 1).await;
    }
    let none = None;
    let over_v6 = format!("http://[::1]:{port}/debian/{BIG_DEB}");
    let over_v4 = format!("http://127.0.0.1:{port}/debian/{BIG_DEB}");
    let dual_v6 = format!("http://[::1]:{}/", dual.port);
    for _ in 0..20 {
        let to = location(none, &over_v6, &[]).expect("a redirect");
        assert!(to.starts_with(&dual_v6), "an IPv6 customer sent to {to}");
        let to = location(none, &over_v4, &[]).expect("a redirect");
        assert!(!to.contains('['), "an IPv4 customer sent to {to}");
    }
    // Exact bytes over IPv6, from the volunteer's IPv6 address.
    let expected = std::fs::read(repo.join(BIG_DEB)).unwrap();
    let out = curl(
        none,
        &["-fL", "-w", "%{url_effective}", "-o", "/dev/null", &over_v6],
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&dual_v6));
    let out = curl(none, &["-fL", &over_v6]);
    assert_eq!(out.stdout, expected);
    // The tracker saw the volunteers by their IPv4 addresses (not `::ffff:` ones).
    let vols = server.volunteers().await;
    assert!(
        vols.iter().all(|v| !v.to_string().contains("::ffff:")),
        "{vols:?}"
    );

    // `systemctl reload` on a server without HTTPS: nothing to read, and it keeps serving.
    let pid = server.proc.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(10), "SIGHUP to be logged", || async {
        server.proc.log_text().contains("nothing to reload")
    })
    .await;
    server.wait_healthy().await;

    // With no volunteer reachable over IPv6, an IPv6 customer goes to one over IPv4 rather
    // than to the origin.
    let mut dual = dual;
    dual.proc.kill();
    wait_until(
        Duration::from_secs(20),
        "an IPv6 customer sent over IPv4",
        || async {
            location(none, &over_v6, &[]).is_some_and(|to| to.starts_with(&format!("{}/", v4.url)))
        },
    )
    .await;
}
