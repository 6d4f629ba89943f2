//! SVG plots (plotters): latency CDF, per-stage latency bars, the
//! throughput–latency curve; a comparison overlays the baseline.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::figures::Figures;
use crate::report::STAGE_ORDER;

const SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 2] = [RGBColor(0x99, 0x99, 0x99), RGBColor(0x1f, 0x77, 0xb4)];

/// The colour of run `i` of `runs`: blue for the newest (the last run, or
/// every `head:` run of an A/B), grey for what it is compared with.
fn color_of(runs: &[(&str, &Figures)], i: usize) -> RGBColor {
    let ab = runs.iter().any(|(l, _)| l.starts_with("head:"));
    let newest = if ab {
        runs[i].0.starts_with("head:")
    } else {
        i + 1 == runs.len()
    };
    COLORS[usize::from(newest)]
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Draws the legend at `at` and writes the file.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    at: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Latency CDF of each run (log latency axis); the last is drawn on top.
pub fn cdf(path: &Path, runs: &[(&str, &Figures)]) -> Result<()> {
    let pts: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, f)| {
            f.latency_cdf
                .iter()
                .map(|[q, us]| (us.max(1.0), *q))
                .collect()
        })
        .collect();
    let max = pts.iter().flatten().map(|p| p.0).fold(10.0, f64::max);
    let min = pts
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(max, f64::min)
        .max(1.0);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("End-to-end latency CDF", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min * 0.9..max * 1.1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs)")
        .y_desc("fraction of calls")
        .draw()
        .map_err(err)?;
    for (i, ((label, _), p)) in runs.iter().zip(pts).enumerate() {
        let c = color_of(runs, i);
        chart
            .draw_series(LineSeries::new(p, c.stroke_width(2)))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerRight)
}

/// p50 and p99 of each stage as horizontal bars (log scale), one pair of
/// rows per run.
pub fn stage_bars(path: &Path, runs: &[(&str, &Figures)]) -> Result<()> {
    let names: Vec<&str> = STAGE_ORDER
        .iter()
        .copied()
        .filter(|n| runs.iter().any(|(_, f)| f.stages.contains_key(*n)))
        .collect();
    if names.is_empty() {
        return Err(anyhow!("no stage figures (tracing off?)"));
    }
    let max = runs
        .iter()
        .flat_map(|(_, f)| f.stages.values().map(|s| s.p99))
        .fold(10.0, f64::max);
    let root = SVGBackend::new(path, (SIZE.0, 60 + 34 * names.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let rows = names.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Per-stage latency: p50 (dark) and p99 (light)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(140)
        .build_cartesian_2d((0.1..max * 1.5).log_scale(), -0.5..rows - 0.5)
        .map_err(err)?;
    // Row i (top first) is centred on y = rows - 1 - i; its name is drawn
    // in the label area beside it (plotters picks its own tick values).
    chart
        .configure_mesh()
        .x_desc("µs")
        .y_labels(0)
        .disable_y_mesh()
        .draw()
        .map_err(err)?;
    for (i, name) in names.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(1.0, rows - 1.0 - i as f64));
        root.draw(&Text::new(
            name.to_string(),
            (12, py - 7),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(err)?;
    }
    let n = runs.len() as f64;
    for (ri, (label, f)) in runs.iter().enumerate() {
        let c = color_of(runs, ri);
        let mut bars = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let Some(s) = f.stages.get(*name) else {
                continue;
            };
            let top = rows - 1.0 - i as f64 + 0.4 - 0.8 * ri as f64 / n;
            let bottom = top - 0.8 / n;
            bars.push(Rectangle::new(
                [(0.1, bottom), (s.p99.max(0.1), top)],
                c.mix(0.35).filled(),
            ));
            bars.push(Rectangle::new(
                [(0.1, bottom), (s.p50.max(0.1), top)],
                c.filled(),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.filled()));
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerRight)
}

/// Achieved throughput against p50 and p99 latency of an open-loop sweep.
pub fn curve(path: &Path, runs: &[(&str, &Figures)]) -> Result<()> {
    let steps = |f: &Figures| -> Vec<(f64, f64, f64)> {
        f.steps
            .iter()
            .filter(|s| s.offered_ops_s.is_some())
            .map(|s| {
                (
                    s.throughput_ops_s,
                    s.latency_us.p50.max(1.0),
                    s.latency_us.p99.max(1.0),
                )
            })
            .collect()
    };
    let all: Vec<(f64, f64, f64)> = runs.iter().flat_map(|(_, f)| steps(f)).collect();
    if all.is_empty() {
        return Err(anyhow!("no sweep steps"));
    }
    let xmax = all.iter().map(|s| s.0).fold(1.0, f64::max);
    let ymax = all.iter().map(|s| s.2).fold(10.0, f64::max);
    let ymin = all.iter().map(|s| s.1).fold(ymax, f64::min);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput vs latency (open loop)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.05, (ymin * 0.8..ymax * 1.2).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("achieved ops/s")
        .y_desc("latency (µs)")
        .draw()
        .map_err(err)?;
    for (ri, (label, f)) in runs.iter().enumerate() {
        let c = color_of(runs, ri);
        let s = steps(f);
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{label} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.0, p.2)),
                c.mix(0.5).stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{label} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.5).stroke_width(2))
            });
        chart
            .draw_series(s.iter().map(|p| Circle::new((p.0, p.2), 3, c.filled())))
            .map_err(err)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}

/// Draws every plot that applies into `dir`; returns (title, file name).
pub fn all(dir: &Path, prefix: &str, runs: &[(&str, &Figures)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut try_plot = |title: &str, name: &str, f: &dyn Fn(&Path) -> Result<()>| {
        let file = format!("{prefix}{name}.svg");
        match f(&dir.join(&file)) {
            Ok(()) => out.push((title.to_string(), file)),
            Err(e) => tracing_free_warn(&format!("{title}: {e}")),
        }
    };
    if runs.iter().any(|(_, f)| !f.latency_cdf.is_empty()) {
        try_plot("Latency CDF", "latency-cdf", &|p| cdf(p, runs));
    }
    if runs.iter().any(|(_, f)| !f.stages.is_empty()) {
        try_plot("Per-stage latency", "stages", &|p| stage_bars(p, runs));
    }
    if runs
        .iter()
        .any(|(_, f)| f.steps.iter().any(|s| s.offered_ops_s.is_some()))
    {
        try_plot("Throughput vs latency", "curve", &|p| curve(p, runs));
    }
    out
}

fn tracing_free_warn(msg: &str) {
    eprintln!("analysis: no plot: {msg}");
}
