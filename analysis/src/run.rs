//! One run directory as `loadgen` wrote it: `summary.json`, `latency.hdr`
//! (one HdrHistogram per second), `stages.csv` (sampled stage events) and
//! `flamegraph.svg` when profiled.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

pub use engine::instrumentation::summary::{Quantiles, RunProcess as Process, RunStep as Step};

/// `summary.json` with its spec as JSON (the shared definition).
pub type Summary = engine::instrumentation::summary::RunSummary;

/// One second (one interval) of end-to-end latency.
#[derive(Clone, Debug)]
pub struct Interval {
    /// The sweep step it belongs to.
    pub step: usize,
    pub duration_s: f64,
    pub histogram: Histogram<u64>,
}

/// A loaded run.
pub struct Run {
    pub dir: PathBuf,
    pub summary: Summary,
    pub intervals: Vec<Interval>,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Run> {
        let sp = dir.join("summary.json");
        let bytes = std::fs::read(&sp).with_context(|| {
            format!(
                "cannot read {} (is {} a run directory?)",
                sp.display(),
                dir.display()
            )
        })?;
        let summary: Summary = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a run summary", sp.display()))?;
        let hp = dir.join("latency.hdr");
        let intervals = if hp.exists() {
            read_intervals(&hp)?
        } else {
            Vec::new()
        };
        Ok(Run {
            dir: dir.to_path_buf(),
            summary,
            intervals,
        })
    }

    pub fn stages_csv(&self) -> PathBuf {
        self.dir.join("stages.csv")
    }

    /// Operations per second of each measured interval. Intervals shorter
    /// than 0.2 s, and a first interval holding under 1% of the busiest
    /// (the calls that straddle the end of warmup), are left out.
    pub fn throughput_per_interval(&self) -> Vec<f64> {
        let busiest = self
            .intervals
            .iter()
            .map(|i| i.histogram.len())
            .max()
            .unwrap_or(0);
        self.intervals
            .iter()
            .enumerate()
            .filter(|(k, i)| i.duration_s > 0.2 && !(*k == 0 && i.histogram.len() * 100 < busiest))
            .map(|(_, i)| i.histogram.len() as f64 / i.duration_s)
            .collect()
    }

    /// CPU seconds of every process together.
    pub fn cpu_s(&self) -> f64 {
        self.summary
            .processes
            .iter()
            .map(|p| p.cpu_user_s + p.cpu_sys_s)
            .sum()
    }

    /// The open-loop mode of the spec (`closed` when absent).
    pub fn load_mode(&self) -> String {
        self.summary.config["load"]["mode"]
            .as_str()
            .unwrap_or("closed")
            .to_string()
    }

    /// Calls in flight in a closed loop (clients × outstanding).
    pub fn in_flight(&self) -> Option<f64> {
        let l = &self.summary.config["load"];
        Some(l["clients"].as_f64()? * l["outstanding"].as_f64()?)
    }
}

/// Reads an HdrHistogram interval log (V2 + deflate, base64).
pub fn read_intervals(path: &Path) -> Result<Vec<Interval>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&text) {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        if let LogEntry::Interval(i) = entry {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .with_context(|| format!("{}: bad base64", path.display()))?;
            let histogram: Histogram<u64> = de
                .deserialize(&mut &raw[..])
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
            let step = i
                .tag()
                .and_then(|t| t.as_str().strip_prefix("step"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            out.push(Interval {
                step,
                duration_s: i.duration().as_secs_f64(),
                histogram,
            });
        }
    }
    if out.is_empty() {
        bail!("{} holds no interval", path.display());
    }
    Ok(out)
}

/// The newest run directory of experiment `name` under `results`.
pub fn latest_run(results: &Path, name: &str) -> Result<PathBuf> {
    let dir = results.join(name);
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no runs of {name} in {} (run `make experiment NAME={name}` first)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("summary.json").exists())
        // `make ab`'s runs (ab-STAMP-base-1, ...) are half of another
        // revision's build: never "the latest run" of a baseline or compare.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ab-"))
        })
        .collect();
    // Run ids are UTC timestamps by default: sort by modification time, as
    // a --run-id may be anything.
    runs.sort_by_key(|p| {
        std::fs::metadata(p.join("summary.json"))
            .and_then(|m| m.modified())
            .ok()
    });
    runs.pop()
        .with_context(|| format!("no finished run of {name} in {}", dir.display()))
}
