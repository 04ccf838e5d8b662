//! One publisher of a repository at a time among servers sharing a database: a lease in the
//! store ([`Store::lease_publish`]), renewed while the publish runs and given back when it
//! ends, which lapses by itself if its holder dies mid-publish.

use std::time::Duration;

use crate::store::Store;
#[cfg(doc)]
use crate::store::StoreError;

/// How long a lease lasts unless renewed: a holder that died blocks publishing this long.
const TTL: Duration = Duration::from_secs(60);
/// How often the holder renews it.
const RENEW: Duration = Duration::from_secs(15);

/// Another server is publishing the repository.
#[derive(Debug, thiserror::Error)]
#[error("`{repo}` is being published by {holder} (a server sharing the database); try again when it finishes")]
pub struct PublishBusy {
    pub repo: String,
    pub holder: String,
}

/// A held lease; renewed in the background until [`Self::release`] or drop.
pub struct PublishLease {
    store: Store,
    repo: String,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

impl PublishLease {
    /// Take the lease on `repo` for `holder` (this server's public URL); the error is a
    /// [`PublishBusy`] naming who has it, or the store's [`StoreError`].
    pub async fn take(store: &Store, repo: &str, holder: &str) -> anyhow::Result<PublishLease> {
        if let Some(other) = store.lease_publish(repo, holder, TTL).await? {
            return Err(PublishBusy {
                repo: repo.to_string(),
                holder: other,
            }
            .into());
        }
        let renew = {
            let (store, repo, holder) = (store.clone(), repo.to_string(), holder.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW).await;
                    match store.lease_publish(&repo, &holder, TTL).await {
                        Ok(None) => {}
                        Ok(Some(other)) => {
                            tracing::error!(
                                repo,
                                other,
                                "the publish lease lapsed and another server took it"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(repo, error = %e, "cannot renew the publish lease")
                        }
                    }
                }
            })
        };
        Ok(PublishLease {
            store: store.clone(),
            repo: repo.to_string(),
            holder: holder.to_string(),
            renew,
        })
    }

    /// Give it back (a failure only leaves it to lapse).
    pub async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.store.release_publish(&self.repo, &self.holder).await {
            tracing::warn!(repo = %self.repo, error = %e, "cannot give the publish lease back; it lapses by itself");
        }
    }
}

impl Drop for PublishLease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
