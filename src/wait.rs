//! Waiting for a process's JSON endpoint to say something (the demo's and the lab's).

use std::time::Duration;

use anyhow::{bail, Result};

/// Poll a JSON endpoint until `pred` holds (30 s at most).
pub async fn wait_until<F: Fn(&serde_json::Value) -> bool>(
    url: &str,
    pred: F,
    what: &str,
) -> Result<()> {
    wait_until_within(url, pred, what, Duration::from_secs(30)).await
}

/// [`wait_until`] with a chosen bound.
pub async fn wait_until_within<F: Fn(&serde_json::Value) -> bool>(
    url: &str,
    pred: F,
    what: &str,
    within: Duration,
) -> Result<()> {
    let polls = within.as_millis().div_ceil(100).max(1);
    for _ in 0..polls {
        if let Ok(r) = reqwest::get(url).await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if pred(&v) {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out waiting for {what} ({} s)", within.as_secs())
}
