//! The Debian package, end to end on this machine (root, as CI runs): `packaging/build-deb.sh`
//! builds it from this build's binary; `dpkg -i` installs it; the installed units pass
//! `systemd-analyze verify`; each unit's `ExecStart` runs as the unit's user (the
//! `mirrorswarm` system user the package made; `nobody` for the proxy's dynamic user) and the
//! service answers; `dpkg --purge` leaves nothing of it but the system user, as Debian policy
//! keeps. Refuses to run where mirrorswarm is installed already.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `dpkg --purge mirrorswarm` when dropped: the machine is left as found, also on failure.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "mirrorswarm"])
            .output();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `ExecStart=` command of an installed unit, its words (none of ours quote).
fn exec_start(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/lib/systemd/system/{unit}")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
    line.split_whitespace().map(String::from).collect()
}

/// `argv` run as `user` and `group`, as systemd's `User=` and `Group=` would.
fn run_as((user, group): (&str, &str), argv: &[String], log: &Path) -> Proc {
    let mut args = vec![
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--init-groups".to_string(),
        "--".to_string(),
    ];
    args.extend(argv.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn_of("setpriv", &args, log)
}

/// The system user and group the package makes.
const PACKAGE_USER: (&str, &str) = ("mirrorswarm", "mirrorswarm");

/// Wait (at most 60 s) until `url` answers 200; else fail with the processes' logs.
async fn answers(url: &str, what: &str, procs: &[Proc]) {
    let client = http();
    let up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        up.is_ok(),
        "{what} did not answer:\n{}",
        dump_logs(&procs.iter().collect::<Vec<_>>())
    );
}

fn chown(path: &Path, user: &str) {
    ok(Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_installs_runs_each_service_as_its_user_and_purges_clean() {
    assert!(
        ok(Command::new("id").arg("-u")).trim() == "0",
        "installing a package needs root (CI runs as root)"
    );
    let status = Command::new("dpkg")
        .args(["-s", "mirrorswarm"])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "mirrorswarm is installed on this machine already; this test would remove it"
    );
    let dir = TestDir::new();
    let root = dir.path();
    // The package's user must reach the test's files.
    ok(Command::new("chmod").arg("755").arg(root));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let deb = ok(Command::new("bash")
        .arg(&script)
        .arg(BIN)
        .arg(root.join("out")));
    let deb = deb.trim();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{deb}"
    );

    ok(Command::new("dpkg").args(["-i", deb]));
    let _installed = Installed;
    for path in [
        "/usr/bin/mirrorswarm",
        "/lib/systemd/system/mirrorswarm-server.service",
        "/lib/systemd/system/mirrorswarm-volunteer.service",
        "/lib/systemd/system/mirrorswarm-proxy.service",
        "/etc/mirrorswarm/server.toml",
        "/etc/mirrorswarm/volunteer.toml",
        "/etc/mirrorswarm/proxy.toml",
        "/usr/share/man/man1/mirrorswarm.1.gz",
        "/usr/share/man/man1/mirrorswarm-server.1.gz",
        "/usr/share/bash-completion/completions/mirrorswarm",
        "/usr/share/zsh/vendor-completions/_mirrorswarm",
        "/usr/share/fish/vendor_completions.d/mirrorswarm.fish",
        "/usr/share/doc/mirrorswarm/operator.md",
    ] {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "mirrorswarm"]));
    assert!(
        conffiles.contains("/etc/mirrorswarm/server.toml")
            && conffiles.contains("/etc/mirrorswarm/volunteer.toml")
            && conffiles.contains("/etc/mirrorswarm/proxy.toml"),
        "{conffiles}"
    );
    ok(Command::new("getent").args(["passwd", "mirrorswarm"]));
    for unit in ["server", "volunteer", "proxy"] {
        let text =
            std::fs::read_to_string(format!("/lib/systemd/system/mirrorswarm-{unit}.service"))
                .unwrap();
        // Hardened: a read-only system but for what it writes, no new privileges; the
        // package's binary.
        for key in [
            "ProtectSystem=strict",
            "NoNewPrivileges=true",
            "ExecStart=/usr/bin/mirrorswarm ",
        ] {
            assert!(text.contains(key), "mirrorswarm-{unit}.service lacks {key}");
        }
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args([
            "/lib/systemd/system/mirrorswarm-server.service",
            "/lib/systemd/system/mirrorswarm-volunteer.service",
            "/lib/systemd/system/mirrorswarm-proxy.service",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(!said.lines().any(|l| l.contains("mirrorswarm-")), "{said}");

    // The server, as the admin would run it: /etc/mirrorswarm/server.toml edited, the unit's
    // command as the unit's user.
    let repo = root.join("repo");
    sample_repo(&repo);
    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        "/etc/mirrorswarm/server.toml",
        format!(
            "listen = \"127.0.0.1:{port}\"\n[repos]\ndebian = \"{}\"\n[tracker]\ninterval_secs = 1\n",
            repo.display()
        ),
    )
    .unwrap();
    let mut procs = Vec::new();
    procs.push(run_as(
        PACKAGE_USER,
        &exec_start("mirrorswarm-server.service"),
        &root.join("server.log"),
    ));
    answers(&format!("{server_url}/health"), "the server", &procs).await;

    // A volunteer, enrolled by the admin on the server's machine, as the package's user.
    let token = ok(Command::new("setpriv")
        .args([
            "--reuid=mirrorswarm",
            "--regid=mirrorswarm",
            "--init-groups",
            "--",
        ])
        .args([
            "/usr/bin/mirrorswarm",
            "enroll",
            "--data-dir",
            "/var/lib/mirrorswarm",
            "--name",
            "packaged",
        ]));
    let token = token.lines().last().unwrap_or_default().trim().to_string();
    let mirror = root.join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    chown(&mirror, "mirrorswarm");
    // What the unit's StateDirectory= would make.
    std::fs::create_dir_all("/var/lib/mirrorswarm-volunteer").unwrap();
    chown(Path::new("/var/lib/mirrorswarm-volunteer"), "mirrorswarm");
    let vport = free_port();
    std::fs::write(
        "/etc/mirrorswarm/volunteer.toml",
        format!(
            "server = \"{server_url}\"\ntoken = \"{token}\"\nlisten = \"127.0.0.1:{vport}\"\n[mirrors]\ndebian = \"{}\"\n",
            mirror.display()
        ),
    )
    .unwrap();
    procs.push(run_as(
        PACKAGE_USER,
        &exec_start("mirrorswarm-volunteer.service"),
        &root.join("volunteer.log"),
    ));
    answers(
        &format!("http://127.0.0.1:{vport}/status"),
        "the volunteer",
        &procs,
    )
    .await;

    // The proxy, configured in /etc/mirrorswarm/proxy.toml, as a dynamic user would run it
    // (`nobody` stands for no one in particular): a file through it comes out whole.
    std::fs::create_dir_all("/var/cache/mirrorswarm-proxy").unwrap();
    chown(Path::new("/var/cache/mirrorswarm-proxy"), "nobody");
    let pport = free_port();
    std::fs::write(
        "/etc/mirrorswarm/proxy.toml",
        format!("server = \"{server_url}\"\nlisten = \"127.0.0.1:{pport}\"\n"),
    )
    .unwrap();
    procs.push(run_as(
        ("nobody", "nogroup"),
        &exec_start("mirrorswarm-proxy.service"),
        &root.join("proxy.log"),
    ));
    let proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{pport}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let file = format!("{server_url}/debian/big/a.bin");
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(r) = proxy.get(&file).send().await {
                if r.status().is_success() {
                    return r.bytes().await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the proxy did not answer:\n{}",
            dump_logs(&procs.iter().collect::<Vec<_>>())
        )
    });
    assert_eq!(
        &got[..],
        &std::fs::read(repo.join("big/a.bin")).unwrap()[..]
    );

    for p in &mut procs {
        p.terminate();
    }
    drop(_installed);
    for gone in [
        "/usr/bin/mirrorswarm",
        "/lib/systemd/system/mirrorswarm-server.service",
        "/etc/mirrorswarm",
        "/var/lib/mirrorswarm",
        "/var/lib/mirrorswarm-volunteer",
        "/var/cache/mirrorswarm-proxy",
        "/usr/share/man/man1/mirrorswarm.1.gz",
        "/usr/share/doc/mirrorswarm",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}
