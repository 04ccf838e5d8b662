//! Where a volunteer's announces go: to every server of the mirror, each of which keeps its
//! own view of the volunteer's load. Until a server names the mirror's servers (`ms_servers`
//! in its reply to an announce, `servers` at enrollment), the ones configured (`--server`,
//! repeatable); from then on the ones named, so that a server added to the mirror is
//! announced to without a restart, and a `--server` that is a load balancer in front of
//! several is not announced to twice (a server refuses a repeated sequence number).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::client::{AnnounceReply, ServerClient};

/// At most this many servers named by a reply are announced to.
pub const MAX_NAMED: usize = 16;

/// One server announced to.
struct Target {
    client: ServerClient,
    /// Its last announce failed: a server that is down is logged once, not every interval.
    failing: AtomicBool,
}

pub struct Servers {
    configured: Vec<String>,
    /// The servers announced to now, and whether they are the ones a server named.
    current: Mutex<(Arc<Vec<Target>>, bool)>,
}

fn targets(urls: &[String]) -> Result<Arc<Vec<Target>>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for u in urls {
        let client = ServerClient::new(u)?;
        if seen.insert(client.base().to_string()) {
            out.push(Target {
                client,
                failing: AtomicBool::new(false),
            });
        }
    }
    Ok(Arc::new(out))
}

/// The servers a reply named, if they are all URLs a volunteer may announce to.
fn acceptable(named: &[String]) -> bool {
    !named.is_empty()
        && named.len() <= MAX_NAMED
        && named.iter().all(|u| {
            reqwest::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some())
        })
}

impl Servers {
    /// `configured`: the `--server`s, the first the one enrolled with; `named`: what the
    /// server said at enrollment (empty if it is alone, or if it said nothing).
    pub fn new(configured: Vec<String>, named: &[String]) -> Result<Servers> {
        let (list, is_named) = match acceptable(named) {
            true => (targets(named)?, true),
            false => (targets(&configured)?, false),
        };
        Ok(Servers {
            configured,
            current: Mutex::new((list, is_named)),
        })
    }

    /// The servers announced to now.
    pub fn urls(&self) -> Vec<String> {
        self.current()
            .iter()
            .map(|t| t.client.base().to_string())
            .collect()
    }

    /// A server the mirror named (by its public URL) whose last announce succeeded, if the
    /// servers named themselves: where a customer this volunteer cannot serve is sent, so
    /// that one server down does not fail those customers.
    pub fn answering_named(&self) -> Option<String> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !current.1 {
            return None;
        }
        current
            .0
            .iter()
            .find(|t| !t.failing.load(Ordering::Relaxed))
            .map(|t| t.client.base().to_string())
    }

    fn current(&self) -> Arc<Vec<Target>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Send the signed announce `q` to every server at once (the same query: each keeps its
    /// own sequence check). The reply is the first answer's (its interval) with the newest
    /// generation any named; an error only if none answered.
    pub async fn announce(&self, q: &str) -> Result<AnnounceReply> {
        let list = self.current();
        let replies = futures_util::future::join_all(list.iter().map(|t| async move {
            let r = t.client.announce(q).await;
            match &r {
                Ok(_) => {
                    if t.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(server = t.client.base(), "server answers announces again");
                    }
                }
                Err(e) => {
                    if !t.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(server = t.client.base(), error = %format!("{e:#}"), "announce to a server of the mirror failed (logged once until it answers again)");
                    }
                }
            }
            r
        }))
        .await;
        let mut first_error = None;
        let mut combined: Option<AnnounceReply> = None;
        let mut named: Vec<String> = Vec::new();
        for r in replies {
            match r {
                Ok(reply) => {
                    for u in reply.servers.iter().flatten() {
                        if !named.contains(u) {
                            named.push(u.clone());
                        }
                    }
                    match &mut combined {
                        None => combined = Some(reply),
                        Some(c) => {
                            c.latest_generation = c.latest_generation.max(reply.latest_generation)
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(reply) = combined else {
            // None answered: back to the configured servers (perhaps a load balancer that
            // knows where the mirror's servers are now).
            self.fall_back();
            return Err(first_error.unwrap_or_else(|| anyhow!("no server to announce to")));
        };
        self.learn(&named);
        Ok(reply)
    }

    /// Announce from now on to the servers `named` (the union of what the servers that
    /// answered named), or, when none named any, to the configured ones.
    fn learn(&self, named: &[String]) {
        if !named.is_empty() && !acceptable(named) {
            tracing::warn!(servers = ?named, "a server named servers a volunteer does not announce to; keeping the ones it has");
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: Vec<String> = match named.is_empty() {
            true => self.configured.clone(),
            false => named.to_vec(),
        };
        let same = current.0.len() == wanted.len()
            && current
                .0
                .iter()
                .zip(&wanted)
                .all(|(t, u)| t.client.base() == u.trim_end_matches('/'));
        if same {
            return;
        }
        match targets(&wanted) {
            Ok(list) => {
                tracing::info!(servers = ?wanted, "announcing to the mirror's servers");
                *current = (list, !named.is_empty());
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot announce to the servers named")
            }
        }
    }

    fn fall_back(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 {
            if let Ok(list) = targets(&self.configured) {
                tracing::warn!(servers = ?self.configured, "no server the mirror named answered; announcing to the configured ones");
                *current = (list, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(s: &[&str]) -> Vec<String> {
        s.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn the_servers_named_replace_the_configured_ones_and_the_configured_come_back() {
        let configured = urls(&["http://lb:8080/", "http://extra:1"]);
        let s = Servers::new(configured.clone(), &[]).unwrap();
        assert_eq!(s.urls(), ["http://lb:8080", "http://extra:1"]);
        s.learn(&urls(&["http://a:1", "http://b:1", "http://a:1/"]));
        assert_eq!(s.urls(), ["http://a:1", "http://b:1"]);
        // None of them answered: the configured ones again.
        s.fall_back();
        assert_eq!(s.urls(), ["http://lb:8080", "http://extra:1"]);
        // Named at enrollment: announced to from the start.
        let s = Servers::new(configured, &urls(&["http://a:1", "http://c:1"])).unwrap();
        assert_eq!(s.urls(), ["http://a:1", "http://c:1"]);
        // Customers it cannot serve go to a server named that answers.
        assert_eq!(s.answering_named().as_deref(), Some("http://a:1"));
        s.current()[0].failing.store(true, Ordering::Relaxed);
        assert_eq!(s.answering_named().as_deref(), Some("http://c:1"));
        // A server alone names none: the configured ones, and bounces to its public URL.
        s.learn(&[]);
        assert_eq!(s.urls(), ["http://lb:8080", "http://extra:1"]);
        assert_eq!(s.answering_named(), None);
    }

    #[test]
    fn servers_named_that_are_no_urls_or_too_many_are_not_announced_to() {
        let s = Servers::new(urls(&["http://a:1"]), &[]).unwrap();
        for bad in [
            urls(&["http://b:1", "file:///etc/passwd"]),
            urls(&["not a url"]),
            (0..=MAX_NAMED).map(|i| format!("http://s{i}:1")).collect(),
        ] {
            s.learn(&bad);
            assert_eq!(s.urls(), ["http://a:1"], "{bad:?}");
        }
        // And not at enrollment either.
        let s = Servers::new(urls(&["http://a:1"]), &urls(&["ftp://b/"])).unwrap();
        assert_eq!(s.urls(), ["http://a:1"]);
    }
}
