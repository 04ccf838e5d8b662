//! PRsync: volunteers sync repositories from each other with rsync-style reuse of what they
//! already hold and hash-checked BitTorrent pieces, so the origin uploads each new file about
//! once.
//!
//! Code map: [`artifacts`] what the server computes once per file version; [`rollsum`] and
//! [`blockmatch`] reuse of similar local files; [`bt`] librqbit; [`fetch`] verified HTTP
//! fetches; [`batch`] many small files in one request, [`batched`] the pull's stage that fetches
//! them; [`local`] the tree's lock, staging and atomic install; [`tree`] whose a tree is and
//! what a sync may delete; [`pull`] the engine, in stages; [`progress`] how it reports;
//! [`seeder`] seeding what a node holds.

pub mod artifacts;
pub mod batch;
#[cfg(feature = "bittorrent")]
pub mod batched;
pub mod blockmatch;
#[cfg(feature = "bittorrent")]
pub mod bt;
pub mod fetch;
pub mod local;
pub mod progress;
#[cfg(feature = "bittorrent")]
pub mod pull;
#[cfg(feature = "bittorrent")]
pub mod readonly;
pub mod rollsum;
#[cfg(feature = "bittorrent")]
pub mod seeder;
pub mod tree;
