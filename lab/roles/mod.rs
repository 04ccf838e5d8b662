//! The product's server and volunteer, run by the lab in its own process with what the
//! product does not ship beside them: the experiment policies (`oracle`, `least-loaded`),
//! the oracle's feed of live counts, and synthetic sync traffic. `bench balance` starts
//! these roles (`mirrorswarm-lab server …`, `mirrorswarm-lab volunteer …`); every flag of the
//! product's roles works here too.

mod least_loaded;
mod oracle;
mod synthetic_sync;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use crate::role_args::{server_config, volunteer_config, ServerArgs, VolunteerArgs};
use crate::shutdown::shutdown_signal;

/// The lab's policies, beside the product's (`--policy` takes either).
const LAB_POLICIES: &[&str] = &["oracle", "least-loaded"];

#[derive(Args)]
pub struct LabServerArgs {
    #[command(flatten)]
    product: ServerArgs,
    /// UDP address where the `oracle` policy receives volunteers' live counts (needed by
    /// `--policy oracle`; the volunteers' `--oracle-feed`).
    #[arg(long)]
    oracle_listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct LabVolunteerArgs {
    #[command(flatten)]
    product: VolunteerArgs,
    /// Synthetic background sync uploads sharing --upload-bps with customers, reported as
    /// sync connections [default: 0].
    #[arg(long, default_value_t = 0)]
    background_sync_conns: u32,
    /// The synthetic sync uploads together want at most this many bytes/s, as real sync
    /// uploads are held back by the receiving volunteers' downlinks [default: whatever the
    /// link gives them].
    #[arg(long)]
    background_sync_bps: Option<u64>,
    /// Send every change of the customer count at once to the server's oracle (UDP address).
    #[arg(long)]
    oracle_feed: Option<SocketAddr>,
}

/// `mirrorswarm-lab server`: the product's server, balancing with a lab policy if named.
pub async fn server(mut a: LabServerArgs) -> Result<()> {
    let lab_policy = a
        .product
        .policy
        .take_if(|p| LAB_POLICIES.contains(&p.as_str()));
    let cfg = server_config(a.product)?;
    let slow_start = std::time::Duration::from_secs(cfg.redirect.slow_start_secs);
    let policy: Option<Box<dyn balance::policy::Policy>> = match lab_policy.as_deref() {
        Some("least-loaded") => Some(Box::new(least_loaded::LeastLoaded)),
        Some("oracle") => {
            let Some(addr) = a.oracle_listen else {
                bail!("--policy oracle needs --oracle-listen ADDR (where the volunteers' --oracle-feed sends)");
            };
            Some(Box::new(oracle::Oracle::listen(addr, slow_start).await?))
        }
        _ => None,
    };
    server::run_with_policy(cfg, policy, shutdown_signal()).await
}

/// `mirrorswarm-lab volunteer`: the product's volunteer, with synthetic sync and the
/// oracle's feed beside it if asked.
pub async fn volunteer(a: LabVolunteerArgs) -> Result<()> {
    let cfg = volunteer_config(a.product)?;
    let sync = synthetic_sync::SyntheticSync::new(a.background_sync_conns, a.background_sync_bps);
    let feed = match a.oracle_feed {
        Some(addr) => Some(oracle::Feed::new(addr, a.background_sync_conns)?),
        None => None,
    };
    let companion: Arc<dyn volunteer::companion::Companion> = Arc::new(Beside { sync, feed });
    volunteer::run_with_companion(cfg, Some(companion), shutdown_signal()).await
}

/// What the lab runs beside a volunteer.
struct Beside {
    sync: synthetic_sync::SyntheticSync,
    feed: Option<oracle::Feed>,
}

impl volunteer::companion::Companion for Beside {
    fn start(&self, volunteer_id: &str, uplink: Option<Arc<volunteer::limit::TokenBucket>>) {
        if let Some(b) = uplink {
            self.sync.start(b);
        }
        if let Some(f) = &self.feed {
            f.start(volunteer_id);
        }
    }
    fn sync_connections(&self) -> u32 {
        self.sync.connections()
    }
    fn sync_uploaded(&self) -> u64 {
        self.sync.uploaded()
    }
    fn customers(&self, n: u32) {
        if let Some(f) = &self.feed {
            f.send(n);
        }
    }
}
