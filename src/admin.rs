//! `mirrorswarm volunteers revoke|drain|resume|release NAME`: an admin changes a volunteer's
//! standing. Through the running server when there is one (it acts at once); otherwise in the
//! database, which the server reads when it starts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

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

pub async fn volunteer_action(data_dir: &Path, action: VolunteerAction) -> Result<()> {
    let (verb, name) = action.parts();
    if let Ok(url) = server::running_server_url(data_dir) {
        let token = server::admin_token(data_dir)?;
        match reqwest::Client::new()
            .post(format!("{url}/admin/volunteers/{name}/{verb}"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    bail!("{verb} {name}: {status}: {}", body.trim());
                }
                println!("{name}: {verb} done (server at {url})");
                return Ok(());
            }
            Err(e) => eprintln!(
                "note: the server at {url} is not reachable ({e}); changing the database only"
            ),
        }
    }
    server::change_stored_volunteer(data_dir, verb, name)
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
    /// Stop taking customers (they get 503; the server is told at once and sends none).
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
