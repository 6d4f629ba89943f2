//! Runs side by side: one run against another (or a baseline), or pairs
//! of runs taken back to back (A B A B, `make ab`). End-to-end, CPU,
//! per-stage and path figures, each change against its noise, and a
//! verdict that names the cause: the stage whose change is largest
//! against its own noise (work before waiting: a queue grows because
//! something after it slowed), with the time it adds, and how much of the
//! median command's path change it accounts for. The tail's path is named
//! only where it moved beyond the band's own noise.

mod verdict;

pub use verdict::markdown;
use verdict::*;

use serde::Serialize;

use crate::figures::Figures;
use crate::path::{Band, Segment};
use crate::report::STAGE_ORDER;

/// A relative change smaller than this is never called a change, whatever
/// the noise.
pub const CHANGE_FLOOR: f64 = 0.03;

/// Stages with fewer recorded durations than this are not compared.
pub const STAGE_COUNT_MIN: u64 = 20;

/// The relative standard error assumed for one run's CPU (the processes'
/// CPU over the run: one number, no bootstrap of its own); CPU per
/// command adds the command count's (the throughput's) noise to it.
/// Pairs measure their spread too.
pub const CPU_RUN_NOISE: f64 = 0.025;

/// A stage or path segment is named as a cause only if it changed by at
/// least this much per unit (µs).
pub const CAUSE_US_MIN: f64 = 2.0;

/// The relative noise assumed for a figure a run has no estimate of (a
/// stage with under 20 sampled durations, a run of one second, an old
/// baseline): wide, so nothing is named on it but a large change.
pub const UNKNOWN_NOISE: f64 = 0.25;

/// A figure's noise in `f`, or `UNKNOWN_NOISE`.
fn noise_in(f: &Figures, figure: &str) -> f64 {
    f.noise.get(figure).copied().unwrap_or(UNKNOWN_NOISE)
}

/// Stages that are work (a flush, executing), not waiting. When work and
/// waiting both moved, the work is the cause: a queue before it grew
/// because it slowed.
const SERVICE_STAGES: &[&str] = &[
    "nvm.flush",
    "wal.fsync",
    "leader.persist",
    "follower.persist",
    "leader.apply",
];

/// Stages inside others: a flush is part of each persist. The innermost
/// that carries most of its container's change is named.
const INSIDE: &[(&str, &[&str])] = &[
    ("nvm.flush", &["leader.persist", "follower.persist"]),
    ("wal.fsync", &["leader.persist", "follower.persist"]),
    // The wait for a quorum is the Accept's trip, the follower's persist
    // and the Accepted's trip back.
    ("p2a.send", &["leader.quorum"]),
    ("follower.persist", &["leader.quorum"]),
    ("p2b.recv", &["leader.quorum"]),
];

/// A stage that moved while nothing moved end to end is named only at
/// its median and this many times beyond its noise; a segment of the
/// tail's path, likewise. Some 30 stage figures and 26 segments are
/// compared, each at a 95% level: a few would move by chance, and a
/// stage's p99 or the tail band (a few dozen commands, some behind a rare
/// stall) most often.
const NAMED_ALONE_SCORE: f64 = 3.5;
/// ... or twice beyond it and by half its value or more (a fixed delay
/// that doubles a small stage).
const NAMED_ALONE_CHANGE: f64 = 0.5;

/// A segment of the tail's path (the slowest 1.5%: a few dozen commands,
/// some behind a rare stall) is named only this many times beyond its
/// noise.
const TAIL_SCORE: f64 = 2.0;

/// Beyond this many times its noise a change is certain: ranking causes
/// then goes by the time they add.
const SCORE_CAP: f64 = 10.0;

/// A waiting stage whose change is this many times the best working
/// stage's (µs) is named instead of it.
const QUEUE_OVER_WORK: f64 = 4.0;

/// One pair's values of a figure: A, B, and each one's noise (relative
/// for figures, a standard error in µs for path segments).
type Pair = (f64, f64, f64, f64);

/// What a stage's duration is counted per (for "+40 µs per flush").
fn unit_of(stage: &str) -> &'static str {
    match stage {
        "nvm.flush" | "wal.fsync" => "per flush",
        "leader.batch" | "leader.persist" | "leader.quorum" | "leader.apply" => "per slot",
        "p2a.send" | "p2b.recv" | "follower.persist" => "per follower and slot",
        "core.stall" => "per stall",
        _ => "per command",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Delta {
    pub figure: String,
    /// The mean over the pairs of A's and of B's value.
    pub a: f64,
    pub b: f64,
    /// `b / a - 1`, the mean of the pairs' changes.
    pub change: f64,
    /// The change's noise, relative: the larger of the runs' own (two
    /// standard errors) and, with pairs, how much runs of one build differ
    /// (a 95% half-width with Student's t).
    pub noise: f64,
    /// Each pair's change.
    pub pairs: Vec<f64>,
    /// The same in the figure's unit (µs): a fixed delay added to a stage
    /// is a steadier absolute change than a relative one when the base
    /// varies. The cause is ranked by it.
    pub noise_abs: f64,
    /// `up`, `down` or `same` (within noise, under the floor, or pairs
    /// that disagree on the direction).
    pub verdict: String,
    /// Whether higher is better (throughput) or worse (latency).
    pub higher_is_better: bool,
}

/// The two-sided 95% quantile of Student's t with `dof` degrees of
/// freedom: with two or three pairs the spread is estimated from very
/// few runs, and 2σ would call noise a change.
fn t95(dof: usize) -> f64 {
    const T: [f64; 12] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
    ];
    match dof {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        d => 1.96 + 2.4 / d as f64,
    }
}

/// The noise (a 95% half-width) of the mean change B − A over pairs, from
/// how much runs of the same build differ: the A runs among themselves and
/// the B runs among themselves (pooled, 2(n−1) degrees of freedom). With
/// `relative`, each run is taken relative to its side's mean. `None` with
/// one pair.
fn run_to_run_noise(pairs: &[Pair], relative: bool) -> Option<f64> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let mean = |side: &dyn Fn(&Pair) -> f64| pairs.iter().map(side).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(&|p| p.0), mean(&|p| p.1));
    let dev = |v: f64, m: f64| {
        if relative {
            if m > 0.0 { v / m - 1.0 } else { 0.0 }
        } else {
            v - m
        }
    };
    let ss: f64 = pairs
        .iter()
        .map(|p| dev(p.0, ma).powi(2) + dev(p.1, mb).powi(2))
        .sum();
    let dof = 2 * (n - 1);
    let sd = (ss / dof as f64).sqrt();
    Some(t95(dof) * sd * (2.0 / n as f64).sqrt())
}

/// The 95% half-width of the mean of the pairs' changes (a paired t-test;
/// 0 with one pair).
fn paired_noise(changes: &[f64]) -> f64 {
    let n = changes.len();
    if n < 2 {
        return 0.0;
    }
    let m = changes.iter().sum::<f64>() / n as f64;
    let var = changes.iter().map(|c| (c - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    t95(n - 1) * (var / n as f64).sqrt()
}

/// The runs' own noise (two standard errors per pair), averaged down over
/// the pairs.
fn own_noise(own: &[f64]) -> f64 {
    let n = own.len() as f64;
    (own.iter().map(|o| o * o).sum::<f64>() / n).sqrt() / n.sqrt()
}

/// Whether the pairs agree on the direction of `mean`.
fn agree(changes: &[f64], mean: f64) -> bool {
    changes.iter().all(|c| c.signum() == mean.signum())
}

impl Delta {
    /// From each pair's (A, B, A's relative noise, B's relative noise).
    fn from_pairs(figure: &str, pairs: &[Pair], higher_is_better: bool) -> Delta {
        let n = pairs.len() as f64;
        let changes: Vec<f64> = pairs
            .iter()
            .map(|(a, b, ..)| if *a > 0.0 { b / a - 1.0 } else { 0.0 })
            .collect();
        let own: Vec<f64> = pairs
            .iter()
            .map(|(_, _, na, nb)| 2.0 * (na * na + nb * nb).sqrt())
            .collect();
        let change = changes.iter().sum::<f64>() / n;
        let mut noise = own_noise(&own).max(run_to_run_noise(pairs, true).unwrap_or(0.0));
        // End to end, also the paired test: the spread of the pairs'
        // changes with Student's t at n − 1 degrees of freedom. A machine
        // whose speed moves over the minutes moves every figure of the runs
        // it slows: two runs of one side can agree while the sides differ
        // by 15% (same code, 2026-12-04). With two pairs this is wide
        // (t = 12.7): the end to end then moves only when the pairs agree
        // closely, and the stages carry the verdict.
        if !figure.starts_with("stage:") {
            noise = noise.max(paired_noise(&changes));
        }
        let abs_own: Vec<f64> = pairs
            .iter()
            .map(|(a, b, na, nb)| 2.0 * ((na * a).powi(2) + (nb * b).powi(2)).sqrt())
            .collect();
        let noise_abs = own_noise(&abs_own).max(run_to_run_noise(pairs, false).unwrap_or(0.0));
        let verdict = if change.abs() <= noise.max(CHANGE_FLOOR) || !agree(&changes, change) {
            "same"
        } else if change > 0.0 {
            "up"
        } else {
            "down"
        };
        Delta {
            figure: figure.to_string(),
            a: pairs.iter().map(|p| p.0).sum::<f64>() / n,
            b: pairs.iter().map(|p| p.1).sum::<f64>() / n,
            change,
            noise,
            pairs: changes,
            noise_abs,
            verdict: verdict.to_string(),
            higher_is_better,
        }
    }

    pub fn moved(&self) -> bool {
        self.verdict != "same"
    }

    /// Moved in the bad direction.
    pub fn worse(&self) -> bool {
        self.moved() && ((self.change > 0.0) != self.higher_is_better)
    }

    /// The change in the figure's own unit (µs for latencies).
    pub fn abs_change(&self) -> f64 {
        self.b - self.a
    }

    /// Change over noise, in the figure's unit: how far beyond its noise
    /// it moved.
    pub fn score(&self) -> f64 {
        self.abs_change().abs() / self.noise_abs.max(CHANGE_FLOOR * self.a.abs()).max(1e-9)
    }

    /// The stage a `stage:NAME:pK` figure is of.
    pub fn stage(&self) -> Option<&str> {
        self.figure
            .strip_prefix("stage:")?
            .rsplit_once(':')
            .map(|x| x.0)
    }
}

/// One segment of a band's path (the commands around p50, or the slowest
/// 1.5%), A → B, µs, with the band's own noise.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentDelta {
    pub segment: String,
    pub a_us: f64,
    pub b_us: f64,
    /// The change's noise, µs: the band's own (each segment's spread over
    /// its commands, two standard errors) or, with pairs, how much runs of
    /// one build differ and how much the pairs' changes differ (Student's
    /// t).
    pub noise_us: f64,
    pub moved: bool,
}

impl SegmentDelta {
    fn from_pairs(segment: &str, pairs: &[Pair]) -> SegmentDelta {
        let n = pairs.len() as f64;
        let changes: Vec<f64> = pairs.iter().map(|(a, b, ..)| b - a).collect();
        let own: Vec<f64> = pairs
            .iter()
            .map(|(_, _, sa, sb)| 2.0 * (sa * sa + sb * sb).sqrt())
            .collect();
        let change = changes.iter().sum::<f64>() / n;
        // The paths are end-to-end figures too: a drifting machine moves
        // every segment of the runs it slows (see `Delta::from_pairs`).
        let noise_us = own_noise(&own)
            .max(run_to_run_noise(pairs, false).unwrap_or(0.0))
            .max(paired_noise(&changes));
        SegmentDelta {
            segment: segment.to_string(),
            a_us: pairs.iter().map(|p| p.0).sum::<f64>() / n,
            b_us: pairs.iter().map(|p| p.1).sum::<f64>() / n,
            noise_us,
            moved: change.abs() > noise_us.max(CAUSE_US_MIN) && agree(&changes, change),
        }
    }

    pub fn change_us(&self) -> f64 {
        self.b_us - self.a_us
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// Pairs of runs compared (1: a single run each side).
    pub pairs: usize,
    /// A (or B) is a committed baseline, from another sitting.
    pub across_sittings: bool,
    pub deltas: Vec<Delta>,
    /// The path of the commands around the median (`Band` "p50"); the
    /// first entry is the band's mean end to end.
    pub p50_path: Vec<SegmentDelta>,
    /// The same for the slowest 1.5%.
    pub p99_path: Vec<SegmentDelta>,
    /// The stage named as the cause, when one is.
    pub cause: Option<String>,
    pub sentence: String,
}

impl Comparison {
    pub fn regressions(&self) -> Vec<&Delta> {
        self.deltas.iter().filter(|d| d.worse()).collect()
    }

    pub fn get(&self, figure: &str) -> Option<&Delta> {
        self.deltas.iter().find(|d| d.figure == figure)
    }
}

/// CPU per committed command, µs, over every process: within the
/// measurement when the run measured it, else (older runs) the whole
/// run's CPU over the measured commands.
pub fn cpu_us_per_command(f: &Figures) -> Option<f64> {
    if f.cpu.us_per_command > 0.0 {
        return Some(f.cpu.us_per_command);
    }
    whole_run_cpu_us_per_command(f)
}

/// The whole run's CPU (startup, warmup and stop included) over the
/// measured commands, µs.
fn whole_run_cpu_us_per_command(f: &Figures) -> Option<f64> {
    (f.cpu.cpu_s > 0.0 && f.ops > 0).then(|| f.cpu.cpu_s * 1e6 / f.ops as f64)
}

/// One run against another.
pub fn compare(a: &Figures, b: &Figures) -> Comparison {
    compare_pairs(&[(a, b)])
}

/// Pairs of runs (A, B) taken back to back: each figure's change is the
/// mean of the pairs' changes, its noise the larger of the runs' own and
/// the spread between the pairs, and it moved only if every pair agrees
/// on the direction.
pub fn compare_pairs(pairs: &[(&Figures, &Figures)]) -> Comparison {
    assert!(!pairs.is_empty(), "a comparison needs a pair");
    let mut deltas = Vec::new();
    // Every pair's value of a figure, or None if a run lacks it.
    let collect = |get: &dyn Fn(&Figures) -> Option<(f64, f64)>| -> Option<Vec<Pair>> {
        pairs
            .iter()
            .map(|(a, b)| {
                let (va, na) = get(a)?;
                let (vb, nb) = get(b)?;
                Some((va, vb, na, nb))
            })
            .collect()
    };
    if let Some(v) = collect(&|f| Some((f.throughput_ops_s, noise_in(f, "throughput")))) {
        deltas.push(Delta::from_pairs("throughput", &v, true));
    }
    for k in ["p50", "p90", "p99", "p999"] {
        let get = |f: &Figures| {
            let q = &f.latency_us;
            let v = match k {
                "p50" => q.p50,
                "p90" => q.p90,
                "p99" => q.p99,
                _ => q.p999,
            };
            Some((v, noise_in(f, k)))
        };
        if let Some(v) = collect(&get) {
            deltas.push(Delta::from_pairs(k, &v, false));
        }
    }
    // Its own noise: the CPU's (assumed) and the command count's, which
    // is the throughput's (a saturated closed loop's CPU per command is
    // the inverse of its throughput, and as noisy).
    let cpu_noise = |f: &Figures| CPU_RUN_NOISE.hypot(noise_in(f, "throughput"));
    // One kind of figure for every run: the measurement's only when all
    // have it (a run from before it was recorded has the whole run's:
    // 20-22% more on inproc-mem and pipelined-nvm, which would read as a
    // change).
    let all_measured = pairs
        .iter()
        .all(|(a, b)| a.cpu.us_per_command > 0.0 && b.cpu.us_per_command > 0.0);
    let cpu_of = |f: &Figures| {
        if all_measured {
            cpu_us_per_command(f)
        } else {
            whole_run_cpu_us_per_command(f)
        }
    };
    if let Some(v) = collect(&|f| cpu_of(f).map(|c| (c, cpu_noise(f)))) {
        deltas.push(Delta::from_pairs("cpu_us_per_command", &v, false));
    }
    for &name in STAGE_ORDER {
        for k in ["p50", "p99"] {
            let key = format!("stage:{name}:{k}");
            let get = |f: &Figures| {
                let s = f.stages.get(name)?;
                // Too few to say anything (an election's stages: one or two).
                if s.count < STAGE_COUNT_MIN {
                    return None;
                }
                Some((if k == "p50" { s.p50 } else { s.p99 }, noise_in(f, &key)))
            };
            if let Some(v) = collect(&get) {
                deltas.push(Delta::from_pairs(&key, &v, false));
            }
        }
    }
    let path = |at: &str| -> Vec<SegmentDelta> {
        let bands: Option<Vec<(&Band, &Band)>> = pairs
            .iter()
            .map(|(a, b)| Some((a.band(at)?, b.band(at)?)))
            .collect();
        let Some(bands) = bands else {
            return Vec::new();
        };
        // A band from before the analysis kept its noise: assume a
        // quarter of each value (nothing is named on it but a big change).
        let se =
            |b: &Band, seg: &str, v: f64| b.segments_se_us.get(seg).copied().unwrap_or(0.25 * v);
        let mut out = vec![SegmentDelta::from_pairs(
            "end to end",
            &bands
                .iter()
                .map(|(a, b)| {
                    let sa = if a.segments_se_us.is_empty() {
                        0.25 * a.e2e_us
                    } else {
                        a.e2e_se_us
                    };
                    let sb = if b.segments_se_us.is_empty() {
                        0.25 * b.e2e_us
                    } else {
                        b.e2e_se_us
                    };
                    (a.e2e_us, b.e2e_us, sa, sb)
                })
                .collect::<Vec<_>>(),
        )];
        for seg in Segment::ALL {
            let n = seg.name();
            let v: Vec<Pair> = bands
                .iter()
                .map(|(a, b)| {
                    let va = a.segments_us.get(n).copied().unwrap_or(0.0);
                    let vb = b.segments_us.get(n).copied().unwrap_or(0.0);
                    (va, vb, se(a, n, va), se(b, n, vb))
                })
                .collect();
            out.push(SegmentDelta::from_pairs(n, &v));
        }
        out
    };
    let p50_path = path("p50");
    let p99_path = path("p99");
    let across_sittings = pairs
        .iter()
        .any(|(a, b)| a.meta.contains_key("source") || b.meta.contains_key("source"));
    let cause = cause(&deltas);
    let cause_figure = cause.map(|c| c.figure.clone());
    let sentence = sentence(
        &deltas,
        cause,
        &p50_path,
        &p99_path,
        pairs.len(),
        across_sittings,
    );
    let label = |f: &Figures| format!("{} {}", f.experiment, f.run_id);
    let (a, b) = if pairs.len() == 1 {
        (label(pairs[0].0), label(pairs[0].1))
    } else {
        let runs = |side: &dyn Fn(&(&Figures, &Figures)) -> String| {
            pairs.iter().map(side).collect::<Vec<_>>().join(", ")
        };
        (runs(&|p| label(p.0)), runs(&|p| label(p.1)))
    };
    Comparison {
        a,
        b,
        pairs: pairs.len(),
        across_sittings,
        deltas,
        p50_path,
        p99_path,
        cause: cause_figure,
        sentence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::StageFigures;
    use crate::path::Band;

    #[test]
    fn cpu_per_command_is_the_measured_window_when_there_is_one() {
        let mut f = Figures {
            ops: 1_000_000,
            ..Figures::default()
        };
        f.cpu.cpu_s = 8.0;
        // An older run: the whole run's CPU over the measured commands.
        assert_eq!(cpu_us_per_command(&f), Some(8.0));
        f.cpu.us_per_command = 5.5;
        assert_eq!(cpu_us_per_command(&f), Some(5.5));
        assert_eq!(cpu_us_per_command(&Figures::default()), None);
        // Against an older run, both sides use the whole run's figure.
        let mut old = f.clone();
        old.cpu.us_per_command = 0.0;
        let c = compare(&old, &f);
        let d = c.get("cpu_us_per_command").expect("a CPU figure");
        assert_eq!((d.a, d.b), (8.0, 8.0), "{d:?}");
    }

    fn figs(tput: f64, p99: f64, follower_us: f64) -> Figures {
        let mut f = Figures {
            experiment: "x".into(),
            throughput_ops_s: tput,
            ..Figures::default()
        };
        f.latency_us.p50 = 500.0;
        f.latency_us.p90 = 800.0;
        f.latency_us.p99 = p99;
        f.latency_us.p999 = p99 * 2.0;
        f.noise.insert("throughput".into(), 0.01);
        f.noise.insert("p99".into(), 0.02);
        f.noise.insert("stage:follower.persist:p50".into(), 0.02);
        f.noise.insert("stage:follower.persist:p99".into(), 0.05);
        f.stages.insert(
            "follower.persist".into(),
            StageFigures {
                count: 1000,
                p50: 100.0,
                p99: follower_us,
                ..StageFigures::default()
            },
        );
        let mut b = Band {
            at: "p99".into(),
            e2e_us: p99,
            ..Band::default()
        };
        b.segments_us.insert("follower.persist".into(), follower_us);
        b.segments_us
            .insert("leader.queue".into(), p99 - follower_us);
        f.bands.push(b);
        f
    }

    /// A figure set with a stage at p50 = `p50_us` (noise 2%).
    fn with_stage(mut f: Figures, name: &str, p50_us: f64) -> Figures {
        f.stages.insert(
            name.into(),
            StageFigures {
                count: 1000,
                p50: p50_us,
                p99: p50_us * 3.0,
                ..StageFigures::default()
            },
        );
        f.noise.insert(format!("stage:{name}:p50"), 0.02);
        f.noise.insert(format!("stage:{name}:p99"), 0.05);
        f
    }

    #[test]
    fn names_the_stage_that_moved() {
        let a = figs(100_000.0, 1000.0, 200.0);
        let b = figs(99_000.0, 1180.0, 380.0);
        let c = compare(&a, &b);
        assert!(c.sentence.starts_with("Slower: p99 +18%"), "{}", c.sentence);
        assert_eq!(c.cause.as_deref(), Some("stage:follower.persist:p99"));
        assert!(
            c.sentence
                .contains("`follower.persist` p99 200 µs → 380 µs (+180 µs per follower and slot"),
            "{}",
            c.sentence
        );
        assert!(!c.deltas[0].moved(), "1% throughput is noise");
        // p99 and the stage's p99; p99.9 has no noise estimate here, so
        // it is taken as wide (UNKNOWN_NOISE) and does not move.
        assert_eq!(c.regressions().len(), 2, "p99 and the stage's p99");
    }

    #[test]
    fn noise_hides_small_changes() {
        let a = figs(100_000.0, 1000.0, 200.0);
        let b = figs(102_000.0, 1020.0, 204.0);
        let c = compare(&a, &b);
        assert!(c.sentence.starts_with("Nothing moved"), "{}", c.sentence);
        assert!(c.regressions().is_empty());
        assert_eq!(c.cause, None);
    }

    /// Work before waiting: the apply slowed by 40 µs and the queue before
    /// it grew by 60 µs; the apply is the cause. A queue that grew far
    /// more than any work (a lock, a wake-up) is named itself.
    #[test]
    fn the_work_that_slowed_is_named_before_the_queue_that_grew() {
        let base = |apply: f64, queue: f64| {
            let f = with_stage(figs(100_000.0, 1000.0, 200.0), "leader.apply", apply);
            let mut f = with_stage(f, "leader.queue", queue);
            f.latency_us.p50 = 500.0 + apply + queue;
            f.noise.insert("p50".into(), 0.01);
            f
        };
        let c = compare(&base(20.0, 10.0), &base(60.0, 70.0));
        assert_eq!(
            c.cause.as_deref(),
            Some("stage:leader.apply:p50"),
            "{}",
            c.sentence
        );
        let c = compare(&base(20.0, 10.0), &base(25.0, 400.0));
        assert_eq!(
            c.cause.as_deref(),
            Some("stage:leader.queue:p50"),
            "{}",
            c.sentence
        );
    }

    /// A flush inside a persist inside the wait for a quorum: the
    /// innermost that carries the change is named.
    #[test]
    fn the_innermost_stage_that_carries_the_change_is_named() {
        let run = |flush: f64| {
            let mut f = figs(100_000.0, 1000.0, 200.0);
            for (name, v) in [
                ("nvm.flush", flush),
                ("follower.persist", 10.0 + flush),
                ("leader.quorum", 100.0 + flush),
            ] {
                f = with_stage(f, name, v);
            }
            f.latency_us.p50 = 500.0 + flush;
            f.noise.insert("p50".into(), 0.01);
            f
        };
        let c = compare(&run(2.0), &run(42.0));
        assert_eq!(
            c.cause.as_deref(),
            Some("stage:nvm.flush:p50"),
            "{}",
            c.sentence
        );
        assert!(c.sentence.contains("per flush"), "{}", c.sentence);
    }

    /// Pairs that disagree on the direction did not move, however large
    /// each pair's change; two runs of a build that differ a lot make the
    /// noise wide (Student's t with two degrees of freedom).
    #[test]
    fn pairs_must_agree_and_their_spread_is_noise() {
        let t = |tput: f64| figs(tput, 1000.0, 200.0);
        let (a1, b1, a2, b2) = (t(100_000.0), t(120_000.0), t(100_000.0), t(80_000.0));
        let c = compare_pairs(&[(&a1, &b1), (&a2, &b2)]);
        assert!(!c.get("throughput").unwrap().moved(), "{}", c.sentence);
        let (a1, b1, a2, b2) = (t(100_000.0), t(90_000.0), t(130_000.0), t(117_000.0));
        let c = compare_pairs(&[(&a1, &b1), (&a2, &b2)]);
        let d = c.get("throughput").unwrap();
        assert!((d.change + 0.10).abs() < 1e-9, "{d:?}");
        assert!(!d.moved(), "−10% while one build ran 100K and 130K: {d:?}");
        let (a1, b1, a2, b2) = (t(100_000.0), t(90_000.0), t(101_000.0), t(91_000.0));
        let c = compare_pairs(&[(&a1, &b1), (&a2, &b2)]);
        assert!(c.get("throughput").unwrap().moved(), "{}", c.sentence);
        assert!(
            c.sentence
                .starts_with("2 pairs back to back. Slower: throughput −10%"),
            "{}",
            c.sentence
        );
    }

    #[test]
    fn a_baseline_says_it_crosses_sittings() {
        let mut a = figs(100_000.0, 1000.0, 200.0);
        a.meta
            .insert("source".into(), "experiments/results/x/1".into());
        let b = figs(70_000.0, 1000.0, 200.0);
        let c = compare(&a, &b);
        assert!(c.across_sittings);
        assert!(c.sentence.starts_with("Across sittings"), "{}", c.sentence);
        assert!(markdown(&c).contains("make ab BASE="), "{}", markdown(&c));
    }
}
