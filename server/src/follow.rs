//! Following the database: what another server sharing it (a replica), or an admin command
//! beside this one, changed reaches this server. Each kind of durable fact has a revision
//! that every change bumps in its own transaction; PostgreSQL tells every listener at once
//! (NOTIFY), and a poll every second is the backstop for a notification lost to a reconnect
//! and the only way on SQLite. A database that went away changes nothing here: the server
//! goes on with what it last loaded and catches up when it returns.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// How often the revisions are polled.
const POLL: Duration = Duration::from_secs(1);
/// How often a server says it is alive, and reads which others are.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A server not heard from for this long is not told to volunteers.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a tree that lacked files of a loaded generation is looked at again.
const RECHECK: Duration = Duration::from_secs(10);

/// The kinds of fact followed, by their revisions' names.
const VOLUNTEERS: &str = "volunteers";
const GENERATIONS: &str = "generations";

/// Follow the database until the process ends: reload the volunteers (credentials,
/// revocations, drains, quarantines) when their revision moves, and load every generation
/// another server publishes when that of generations does.
pub async fn run(st: Arc<AppState>) {
    let mut seen_volunteers = st.store.revision(VOLUNTEERS).await.ok();
    let mut seen_generations = st.store.revision(GENERATIONS).await.ok();
    let mut listener = None;
    let mut unreachable = false;
    let mut rechecked = tokio::time::Instant::now();
    let mut heartbeat: Option<tokio::time::Instant> = None;
    // Why each repository's last load failed, if it did.
    let mut failing: std::collections::HashMap<String, String> = Default::default();
    loop {
        if st.store.shared() && heartbeat.is_none_or(|h| h.elapsed() >= HEARTBEAT) {
            heartbeat = Some(tokio::time::Instant::now());
            refresh_servers(&st).await;
        }
        if listener.is_none() {
            // Reconnected on each failure: PostgreSQL may have restarted.
            listener = match st.store.listen().await {
                Some(Ok(l)) => Some(l),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cannot listen for the database's changes; polling");
                    None
                }
                None => None,
            };
        }
        match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    r = l.recv() => if r.is_err() { listener = None },
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
        let now = async {
            Ok::<_, crate::store::StoreError>((
                st.store.revision(VOLUNTEERS).await?,
                st.store.revision(GENERATIONS).await?,
            ))
        };
        let (volunteers, generations) = match now.await {
            Ok(r) => r,
            Err(e) => {
                if !unreachable {
                    tracing::warn!(error = %e, "the database is unreachable: volunteers' standing and the generations served stay as last loaded until it returns");
                    unreachable = true;
                }
                continue;
            }
        };
        if unreachable {
            tracing::info!("the database is back");
            unreachable = false;
        }
        if seen_volunteers != Some(volunteers) {
            match st.reload_volunteers().await {
                Ok(()) => {
                    tracing::debug!(
                        revision = volunteers,
                        "volunteers reloaded from the database"
                    );
                    seen_volunteers = Some(volunteers);
                }
                Err(e) => tracing::warn!(error = %e, "cannot reload the volunteers"),
            }
        }
        let lacking = st.repos.all().iter().any(|s| s.not_held > 0);
        if seen_generations != Some(generations) || (lacking && rechecked.elapsed() >= RECHECK) {
            rechecked = tokio::time::Instant::now();
            let mut all = true;
            for name in st.repo_dirs.keys() {
                // On the runtime the server started on, as a publish runs (its seed's).
                let job = {
                    let (st, name) = (st.clone(), name.clone());
                    st.background
                        .clone()
                        .spawn(async move { crate::load_published(&st, &name).await })
                };
                match job.await {
                    Ok(Ok(_)) => {
                        failing.remove(name);
                    }
                    Ok(Err(e)) => {
                        // Said once, and again only when the reason changes: retried every
                        // second until it works.
                        let why = format!("{e:#}");
                        if failing.get(name) != Some(&why) {
                            tracing::warn!(repo = %name, error = %why, "cannot load the generation another server published; serving the one loaded, and trying again each second");
                            failing.insert(name.clone(), why);
                        }
                        all = false;
                    }
                    Err(e) => {
                        tracing::warn!(repo = %name, error = %e, "load task failed");
                        all = false;
                    }
                }
            }
            if all {
                seen_generations = Some(generations);
            }
        }
    }
}

/// Say this server is alive, and keep the list of the mirror's live servers that volunteers
/// are told (empty while this one is alone). A database out of reach keeps the last list.
async fn refresh_servers(st: &AppState) {
    let stats = serde_json::Value::Object(crate::stats::own(st)).to_string();
    if let Err(e) = st.store.heartbeat(&st.public_url, &stats).await {
        tracing::debug!(error = %e, "cannot record this server as alive");
        return;
    }
    match st.store.live_servers(SERVER_TIMEOUT).await {
        Ok(live) => {
            let mut live: Vec<String> = live.into_iter().map(|(u, _)| u).collect();
            if !live.contains(&st.public_url) {
                live.push(st.public_url.clone());
            }
            // Customers are spread over them all (a load balancer, DNS round robin): each
            // redirect here stands for that many until a volunteer's next report.
            st.balancer.registry().set_servers(live.len() as u32);
            let live: Arc<[String]> = if live.len() > 1 {
                live.into()
            } else {
                Arc::from([])
            };
            let mut servers = crate::locks::write(&st.servers);
            if *servers != live {
                tracing::info!(servers = ?live, "the mirror's live servers changed");
                *servers = live;
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the live servers"),
    }
}
