//! PRsync: volunteers sync repositories from each other with rsync-style reuse of what they
//! already hold and hash-checked BitTorrent pieces, so the origin uploads each new file about
//! once.

pub mod artifacts;
pub mod blockmatch;
pub mod rollsum;
