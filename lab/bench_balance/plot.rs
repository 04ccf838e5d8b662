//! PNG plots of the balancing study: the distribution of response times per policy, one
//! chart per load, drawn with plotters.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::world::RunResult;
use super::{Part, Scenario};

/// Where Debian's fonts-dejavu-core puts the font the charts are labelled with.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("MIRRORSWARM_PLOT_FONT").unwrap_or_else(|_| FONT.to_string());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!("cannot read the font {path} ({e}); install fonts-dejavu-core or set MIRRORSWARM_PLOT_FONT")
        })?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
            .map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One chart per load of the side-by-side runs: the fraction of downloads done within each
/// response time, a line per policy. Returns the files written.
pub fn response_time_cdfs(out: &Path, results: &[(Scenario, RunResult)]) -> Result<Vec<PathBuf>> {
    register_font()?;
    let mut loads: Vec<f64> = results
        .iter()
        .filter(|(s, _)| s.part == Part::Policies)
        .map(|(s, _)| s.load)
        .collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let mut files = Vec::new();
    for load in loads {
        // One line per policy: the first seed's runs.
        let first_seed = results.iter().map(|(s, _)| s.seed).min().unwrap_or(0);
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|(s, _)| s.part == Part::Policies && s.load == load && s.seed == first_seed)
            .map(|(_, r)| r)
            .collect();
        let path = out.join(format!("response-times-{:.0}.png", load * 100.0));
        draw_cdf(&path, &format!("{:.0}% load", load * 100.0), &runs)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("drawing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

fn draw_cdf(
    path: &Path,
    title: &str,
    runs: &[&RunResult],
) -> Result<(), Box<dyn std::error::Error>> {
    let xmax = runs.iter().map(|r| r.max).fold(0.1, f64::max) * 1.05;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Customer response times, {title}"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("response time (s)")
        .y_desc("fraction of downloads done")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = r.times.len().max(1) as f64;
        let points = r
            .times
            .iter()
            .enumerate()
            .map(|(k, &t)| (t, (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} (p95 {:.2} s)", r.policy, r.p95))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
