//! How a pull reports its progress: a small trait the caller implements (the CLI with a
//! progress bar on a terminal; a daemon not at all), so the library draws nothing itself.

/// Told what a pull will fetch and what has arrived. Called from the pull's task.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// The pull will fetch `bytes` in all (never called when there is nothing to fetch).
    fn start(&self, bytes: u64);
    /// `bytes` more of it are done (arrived, or given over to the next source).
    fn advance(&self, bytes: u64);
    /// The pull ended, done or not.
    fn finish(&self);
}
