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
