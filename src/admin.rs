//! The operator's commands against a server: `publish`, `enroll`, `status`, `volunteers`
//! and `volunteers revoke|drain|resume|release NAME`. Each finds the server the same way
//! ([`ServerTarget`]): `--server URL` with the admin token from `--token-file` or the
//! environment, or `--data-dir DIR`, whose running server is found through `server.json`
//! (checked against the data directory's lock, so a stopped server's file misleads no one)
//! and whose `admin.token` is read. Also `volunteer-ctl`, the volunteer admin's controls.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

/// Which server an admin command talks to, and with what token. Flattened into every
/// admin command, so each takes the same flags with the same help.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerTarget {
    /// The server's URL. Admin actions need its admin token: --token-file, or the
    /// MIRRORSWARM_ADMIN_TOKEN environment variable.
    #[arg(long, global = true, conflicts_with = "data_dir")]
    pub server: Option<String>,
    /// The server's data directory: the running server is found through its server.json,
    /// and the admin token read from its admin.token.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// With --server: a file holding the admin token (the server's <data-dir>/admin.token).
    #[arg(long, global = true, requires = "server")]
    pub token_file: Option<PathBuf>,
}

/// The environment variable an admin token may come in.
pub const TOKEN_ENV: &str = "MIRRORSWARM_ADMIN_TOKEN";

impl ServerTarget {
    /// The running server's URL.
    pub fn url(&self) -> Result<String> {
        match (&self.server, &self.data_dir) {
            (Some(s), _) => {
                config::validate_http_url(s).map_err(|e| anyhow::anyhow!("--server: {e}"))?;
                Ok(s.trim_end_matches('/').to_string())
            }
            (None, Some(d)) => server::running_server_url(d),
            (None, None) => bail!("pass --server URL or --data-dir DIR"),
        }
    }

    /// The admin token: from the data directory, `--token-file`, or the environment.
    pub fn token(&self) -> Result<String> {
        if let Some(d) = &self.data_dir {
            return server::admin_token(d);
        }
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the admin token from {}", f.display()))?;
            return Ok(t.trim().to_string());
        }
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => bail!(
                "this needs the server's admin token: pass --token-file FILE (a copy of the server's <data-dir>/admin.token) or set {TOKEN_ENV}, or run it with --data-dir DIR on the server's machine"
            ),
        }
    }

    /// `POST {url}{path}` with the admin token; the reply's body on success.
    async fn post_admin(&self, path: &str, query: &[(&str, String)]) -> Result<String> {
        let url = self.url()?;
        let token = self.token()?;
        let resp = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {url} (is it running?)"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "the server at {url} refused the admin token: {}",
                body.trim()
            );
        }
        if !status.is_success() {
            bail!("{status}: {}", body.trim());
        }
        Ok(body)
    }
}

#[derive(Subcommand, Clone)]
pub enum VolunteerAction {
    /// Revoke NAME's credential for good: its announces are refused, it gets no customers.
    /// It can come back only by enrolling again with a new token.
    Revoke { name: String },
    /// Send NAME no more customers; it keeps announcing and syncing.
    Drain { name: String },
    /// Undo `drain`.
    Resume { name: String },
    /// Lift NAME's quarantine by hand (the server also lifts it once NAME passes its checks
    /// again).
    Release { name: String },
}

impl VolunteerAction {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            VolunteerAction::Revoke { name } => ("revoke", name),
            VolunteerAction::Drain { name } => ("drain", name),
            VolunteerAction::Resume { name } => ("resume", name),
            VolunteerAction::Release { name } => ("release", name),
        }
    }
}

/// `mirrorswarm publish`.
pub async fn publish(target: &ServerTarget, repo: Option<&str>, now: bool) -> Result<()> {
    let mut query: Vec<(&str, String)> =
        repo.map(|r| ("repo", r.to_string())).into_iter().collect();
    if now {
        query.push(("now", "true".into()));
    }
    let body = target
        .post_admin("/admin/publish", &query)
        .await
        .context("publish failed")?;
    let reports: Vec<serde_json::Value> =
        serde_json::from_str(&body).context("unexpected reply")?;
    for r in reports {
        let new = r["new_generation"].as_bool().unwrap_or(false);
        println!(
            "{}: generation {}{} ({} files, {} changed, {} hashed)",
            r["repo"].as_str().unwrap_or("?"),
            r["generation"],
            if new { " (new)" } else { " (unchanged)" },
            r["files"],
            r["changed_files"],
            r["hashed_files"],
        );
        if let Some(line) = staged_line(&r["staged"]) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// A staged generation in one line (from the server's `staged` object), or `None`.
fn staged_line(s: &serde_json::Value) -> Option<String> {
    let g = s.get("generation")?.as_u64()?;
    let live = s["live"].as_u64().unwrap_or(0);
    let left = s["deadline"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(now_secs());
    let spread = match s["spread"].as_f64() {
        Some(x) => format!("{:.0}%", x * 100.0),
        None => "not yet worked out".into(),
    };
    Some(format!(
        "generation {g} staged: volunteers sync it first, customers stay on {live}; spread {spread} of {:.0}% needed, live in {left} s at the latest (`mirrorswarm publish --now` to skip)",
        s["goal"].as_f64().unwrap_or(0.0) * 100.0
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `mirrorswarm enroll`: through the server with `--server`, or with `--data-dir` while a
/// server runs there (its database may be PostgreSQL); with `--data-dir` and none running,
/// in its SQLite database directly.
pub async fn enroll(target: &ServerTarget, name: &str, ttl_hours: u64) -> Result<String> {
    let running = target
        .data_dir
        .as_deref()
        .is_some_and(|d| server::running_server_url(d).is_ok());
    if target.server.is_some() || running {
        let body = target
            .post_admin(
                "/admin/enroll",
                &[
                    ("name", name.to_string()),
                    ("ttl_hours", ttl_hours.to_string()),
                ],
            )
            .await
            .context("enroll failed")?;
        return Ok(body.trim().to_string());
    }
    let Some(dir) = &target.data_dir else {
        bail!("pass --server URL or --data-dir DIR")
    };
    server::DataDir::existing_sqlite(dir)?;
    server::create_enrollment_token(dir, name, ttl_hours * 3600).await
}

/// `mirrorswarm volunteers <verb> NAME`: through the running server (it acts at once);
/// with `--data-dir` and no server running, in the database, which the server reads when it
/// starts.
pub async fn volunteer_action(target: &ServerTarget, action: VolunteerAction) -> Result<()> {
    let (verb, name) = action.parts();
    let running = match (&target.server, &target.data_dir) {
        (Some(_), _) => true,
        (None, Some(d)) => server::running_server_url(d).is_ok(),
        (None, None) => bail!("pass --server URL or --data-dir DIR"),
    };
    if running {
        match target
            .post_admin(&format!("/admin/volunteers/{name}/{verb}"), &[])
            .await
        {
            Ok(_) => {
                println!("{name}: {verb} done (server at {})", target.url()?);
                return Ok(());
            }
            Err(e) if target.server.is_some() => return Err(e.context(format!("{verb} {name}"))),
            Err(e) => eprintln!("note: {e:#}; changing the database only"),
        }
    }
    let Some(dir) = &target.data_dir else {
        bail!("no server to ask")
    };
    change_stored(dir, verb, name).await
}

async fn change_stored(dir: &Path, verb: &str, name: &str) -> Result<()> {
    server::change_stored_volunteer(dir, verb, name)
        .await
        .with_context(|| format!("{verb} {name}"))?;
    println!("{name}: {verb} done in the database (takes effect when the server starts)");
    Ok(())
}

#[derive(clap::Args)]
pub struct VolunteerCtlArgs {
    #[command(subcommand)]
    action: CtlAction,
    /// The volunteer's data directory (holds volunteer.json and control.token).
    #[arg(long, global = true)]
    data_dir: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Clone)]
enum CtlAction {
    /// What the volunteer holds, its limits, and its customers now.
    Status,
    /// Stop taking customers (any still arriving are sent to the origin; the server is told at once and sends none).
    Pause,
    /// Take customers again.
    Resume,
    /// Change limits while it runs (until restart: put them in the TOML to keep them).
    Limits {
        /// Customers at once.
        #[arg(long)]
        max_connections: Option<u32>,
        /// Uplink for customers, bytes/s (0: unlimited).
        #[arg(long)]
        upload_bps: Option<u64>,
    },
}

/// `mirrorswarm volunteer-ctl …`: the volunteer admin's controls.
pub async fn volunteer_ctl(a: VolunteerCtlArgs) -> Result<()> {
    let Some(dir) = a.data_dir else {
        bail!("pass --data-dir DIR (the volunteer's data directory)")
    };
    if config::runlock::running(&dir, volunteer::control::RUN_LOCK) == Some(false) {
        bail!(
            "no volunteer is running on the data directory {} (the last one has stopped)",
            dir.display()
        );
    }
    let info_path = volunteer::control::runtime_path(&dir);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info_path).with_context(|| {
            format!(
                "reading {} (is the volunteer running?)",
                info_path.display()
            )
        })?)
        .with_context(|| format!("parsing {}", info_path.display()))?;
    let url = info["url"]
        .as_str()
        .with_context(|| format!("{} has no url", info_path.display()))?
        .to_string();
    let token_path = volunteer::control::token_path(&dir);
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?;
    let c = reqwest::Client::new();
    let req = match &a.action {
        CtlAction::Status => c.get(format!("{url}/admin/status")),
        CtlAction::Pause => c.post(format!("{url}/admin/pause")),
        CtlAction::Resume => c.post(format!("{url}/admin/resume")),
        CtlAction::Limits {
            max_connections,
            upload_bps,
        } => {
            if max_connections.is_none() && upload_bps.is_none() {
                bail!("pass --max-connections and/or --upload-bps");
            }
            c.post(format!("{url}/admin/limits"))
                .json(&serde_json::json!({
                    "max_connections": max_connections, "upload_bps": upload_bps,
                }))
        }
    };
    let resp = req
        .bearer_auth(token.trim())
        .send()
        .await
        .with_context(|| format!("cannot reach the volunteer at {url} (is it running?)"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {}", body.trim());
    }
    let s: volunteer::control::ControlStatus =
        serde_json::from_str(&body).context("unexpected reply")?;
    println!(
        "{}: {} — {} of {} customers, uplink {}, {} downloads served, {} bytes sent",
        s.name,
        if s.paused { "PAUSED" } else { "serving" },
        s.active_connections,
        s.max_connections,
        if s.upload_bps == 0 {
            "unlimited".to_string()
        } else {
            format!("{} B/s", s.upload_bps)
        },
        s.served_requests,
        s.uploaded_bytes
    );
    println!(
        "{:<16} {:>6} {:>6} {:>8}",
        "REPOSITORY", "HELD", "NEWEST", "MISSING"
    );
    for (repo, (held, latest, missing)) in &s.mirrors {
        println!("{repo:<16} {held:>6} {latest:>6} {missing:>8}");
    }
    if matches!(a.action, CtlAction::Limits { .. }) {
        println!("(until restart: put the new limits in the volunteer's TOML to keep them)");
    }
    Ok(())
}

/// `mirrorswarm status`: the server at a glance.
pub async fn server_status(url: &str) -> Result<()> {
    let c = reqwest::Client::new();
    let get = |p: &str| {
        let c = c.clone();
        let u = format!("{url}{p}");
        async move {
            c.get(&u)
                .send()
                .await
                .with_context(|| format!("cannot reach {u} (is the server running?)"))?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
                .with_context(|| format!("{u}: unexpected reply"))
        }
    };
    let health = get("/health").await?;
    let stats = get("/api/stats").await?;
    let vols = get("/api/volunteers").await?;
    let vols = vols.as_array().cloned().unwrap_or_default();
    let repos: Vec<String> = health["repos"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(r, g)| format!("{r} (generation {g})"))
                .collect()
        })
        .unwrap_or_default();
    let mut by_state = std::collections::BTreeMap::<String, usize>::new();
    for v in &vols {
        *by_state
            .entry(v["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let to_vols = stats["redirected_bytes"].as_u64().unwrap_or(0);
    let origin = stats["origin_http_bytes"].as_u64().unwrap_or(0);
    println!("server        {url}");
    println!("repositories  {}", repos.join(", "));
    if let Some(staged) = health["staged"].as_object() {
        for (repo, s) in staged {
            if let Some(line) = staged_line(s) {
                println!("staged        {repo}: {line}");
            }
        }
    }
    println!(
        "volunteers    {}",
        by_state
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "customers     {} redirected to volunteers, {} served by the origin",
        stats["redirects_to_volunteers"], stats["origin_requests"]
    );
    if let Some(n) = stats["origin_unavailable"].as_u64().filter(|&n| n > 0) {
        println!("not sent      {n} requests for files on disk not as published (503; see the server's log)");
    }
    println!(
        "offload       {} of file bytes went to volunteers ({} B vs {} B from the origin)",
        if to_vols + origin > 0 {
            format!(
                "{:.1} %",
                100.0 * to_vols as f64 / (to_vols + origin) as f64
            )
        } else {
            "–".to_string()
        },
        to_vols,
        origin
    );
    println!(
        "spot checks   {} passed, {} failed, {} inconclusive; {} quarantines; {} customer reports",
        stats["spot_checks_passed"],
        stats["spot_checks_failed"],
        stats["spot_checks_inconclusive"],
        stats["quarantines"],
        stats["customer_reports"]
    );
    Ok(())
}
