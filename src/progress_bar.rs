//! `prsync pull`'s progress on a terminal: bytes fetched of the total, and the rate.

/// An indicatif bar behind prsync's [`prsync::progress::Progress`].
#[derive(Debug, Default)]
pub struct Bar(std::sync::OnceLock<indicatif::ProgressBar>);

impl prsync::progress::Progress for Bar {
    fn start(&self, bytes: u64) {
        let bar = indicatif::ProgressBar::new(bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let _ = self.0.set(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.0.get() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.get() {
            bar.finish_and_clear();
        }
    }
}
