//! The lab's analysis: reads run directories that `loadgen` wrote and
//! turns them into reports (where the time goes, the bottleneck),
//! comparisons against baselines with a noise estimate, plots, and the
//! regression gate's verdict.
//!
//! polars (feature `polars`, on by default) reads the sampled stage events;
//! the gate ([`gate`]) needs none of it and builds without it.

pub mod compare;
pub mod figures;
pub mod gate;
pub mod path;
pub mod plot;
pub mod profile;
pub mod report;
pub mod run;
#[cfg(feature = "polars")]
pub mod samples;
pub mod stats;

#[cfg(feature = "polars")]
use std::path::Path;

#[cfg(feature = "polars")]
use anyhow::{Context, Result};

#[cfg(feature = "polars")]
use crate::{figures::Figures, run::Run};

/// The figures of a run directory (analysed), or of a baseline or
/// `analysis.json` file (read).
#[cfg(feature = "polars")]
pub fn load(p: &Path) -> Result<Figures> {
    if p.is_dir() {
        return analyse(p);
    }
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a figures file", p.display()))
}

/// Analyses a run directory: its summary, its intervals and its sampled
/// events (polars).
#[cfg(feature = "polars")]
pub fn analyse(dir: &Path) -> Result<Figures> {
    let run = Run::load(dir)?;
    let s = if run.stages_csv().exists() {
        samples::read(&run.stages_csv())?
    } else {
        samples::Samples::default()
    };
    let bands = path::standard_bands(&s.flows);
    let top = std::fs::read_to_string(dir.join("flamegraph.svg"))
        .map(|svg| profile::top_frames(&svg, 12))
        .unwrap_or_default();
    let stalls = figures::stall_figures(&s.flows, &s.stalls);
    Ok(figures::build(
        &run,
        &s.per_stage,
        bands,
        s.flows.len(),
        top,
        stalls,
    ))
}
