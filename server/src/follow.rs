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

/// Reload the volunteers (credentials, revocations, drains, quarantines) whenever their
/// revision moves. Runs until the process ends.
pub async fn volunteers(st: Arc<AppState>) {
    let mut seen = st.store.revision("volunteers").await.ok();
    let mut listener = None;
    let mut unreachable = false;
    loop {
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
        let now = match st.store.revision("volunteers").await {
            Ok(r) => r,
            Err(e) => {
                if !unreachable {
                    tracing::warn!(error = %e, "the database is unreachable: volunteers' standing stays as last loaded until it returns");
                    unreachable = true;
                }
                continue;
            }
        };
        if unreachable {
            tracing::info!("the database is back");
            unreachable = false;
        }
        if seen == Some(now) {
            continue;
        }
        match st.reload_volunteers().await {
            Ok(()) => {
                tracing::debug!(revision = now, "volunteers reloaded from the database");
                seen = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload the volunteers"),
        }
    }
}
