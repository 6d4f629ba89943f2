//! Two runs (or a run and a baseline) side by side: end-to-end and
//! per-stage deltas against their noise, and a sentence naming what moved.

use std::fmt::Write as _;

use serde::Serialize;

use crate::figures::{Figures, fmt_us};
use crate::path::Segment;
use crate::report::STAGE_ORDER;

/// A change smaller than this is never called a change, whatever the noise.
pub const CHANGE_FLOOR: f64 = 0.03;

/// Stages with fewer recorded durations than this are not compared.
pub const STAGE_COUNT_MIN: u64 = 20;

#[derive(Clone, Debug, Serialize)]
pub struct Delta {
    pub figure: String,
    pub a: f64,
    pub b: f64,
    /// `b / a - 1`.
    pub change: f64,
    /// Two standard errors of the change (both runs' noise), relative.
    pub noise: f64,
    /// `up`, `down` or `same` (within noise).
    pub verdict: String,
    /// Whether higher is better (throughput) or worse (latency).
    pub higher_is_better: bool,
}

impl Delta {
    fn new(figure: &str, a: f64, b: f64, na: f64, nb: f64, higher_is_better: bool) -> Delta {
        let change = if a > 0.0 { b / a - 1.0 } else { 0.0 };
        let noise = 2.0 * (na * na + nb * nb).sqrt();
        let verdict = if change.abs() <= noise.max(CHANGE_FLOOR) {
            "same"
        } else if change > 0.0 {
            "up"
        } else {
            "down"
        };
        Delta {
            figure: figure.to_string(),
            a,
            b,
            change,
            noise,
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
}

/// Per-segment change of the slowest commands' path, µs.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentDelta {
    pub segment: String,
    pub a_us: f64,
    pub b_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub deltas: Vec<Delta>,
    pub p99_path: Vec<SegmentDelta>,
    pub sentence: String,
}

impl Comparison {
    pub fn regressions(&self) -> Vec<&Delta> {
        self.deltas.iter().filter(|d| d.worse()).collect()
    }
}

pub fn compare(a: &Figures, b: &Figures) -> Comparison {
    let mut deltas = vec![Delta::new(
        "throughput",
        a.throughput_ops_s,
        b.throughput_ops_s,
        a.noise_of("throughput"),
        b.noise_of("throughput"),
        true,
    )];
    for (k, va, vb) in [
        ("p50", a.latency_us.p50, b.latency_us.p50),
        ("p90", a.latency_us.p90, b.latency_us.p90),
        ("p99", a.latency_us.p99, b.latency_us.p99),
        ("p999", a.latency_us.p999, b.latency_us.p999),
    ] {
        deltas.push(Delta::new(k, va, vb, a.noise_of(k), b.noise_of(k), false));
    }
    for &name in STAGE_ORDER {
        let (Some(sa), Some(sb)) = (a.stages.get(name), b.stages.get(name)) else {
            continue;
        };
        // Too few to say anything (an election's stages: one or two each).
        if sa.count < STAGE_COUNT_MIN || sb.count < STAGE_COUNT_MIN {
            continue;
        }
        for (k, va, vb) in [("p50", sa.p50, sb.p50), ("p99", sa.p99, sb.p99)] {
            let key = format!("stage:{name}:{k}");
            deltas.push(Delta::new(
                &key,
                va,
                vb,
                a.noise_of(&key),
                b.noise_of(&key),
                false,
            ));
        }
    }
    let p99_path: Vec<SegmentDelta> = match (a.band("p99"), b.band("p99")) {
        (Some(pa), Some(pb)) => Segment::ALL
            .iter()
            .map(|s| SegmentDelta {
                segment: s.name().to_string(),
                a_us: pa.segments_us.get(s.name()).copied().unwrap_or(0.0),
                b_us: pb.segments_us.get(s.name()).copied().unwrap_or(0.0),
            })
            .collect(),
        _ => Vec::new(),
    };
    let sentence = sentence(&deltas, &p99_path);
    Comparison {
        a: format!("{} {}", a.experiment, a.run_id),
        b: format!("{} {}", b.experiment, b.run_id),
        deltas,
        p99_path,
        sentence,
    }
}

fn verb(d: &Delta) -> &'static str {
    if d.change > 0.0 { "rose" } else { "fell" }
}

/// "p99 rose 18% (noise ±4%), almost all in `follower.persist`".
fn sentence(deltas: &[Delta], path: &[SegmentDelta]) -> String {
    let get = |f: &str| {
        deltas
            .iter()
            .find(|d| d.figure == f)
            .expect("end-to-end figures")
    };
    let mut parts = Vec::new();
    for f in ["throughput", "p50", "p99"] {
        let d = get(f);
        if d.moved() {
            parts.push(format!(
                "{f} {} {:.0}% (noise ±{:.0}%)",
                verb(d),
                100.0 * d.change.abs(),
                100.0 * d.noise.max(CHANGE_FLOOR)
            ));
        }
    }
    if parts.is_empty() {
        let t = get("throughput");
        let p = get("p99");
        return format!(
            "Nothing moved beyond noise: throughput {:+.1}% (noise ±{:.0}%), p99 {:+.1}% (noise ±{:.0}%).",
            100.0 * t.change,
            100.0 * t.noise.max(CHANGE_FLOOR),
            100.0 * p.change,
            100.0 * p.noise.max(CHANGE_FLOOR)
        );
    }
    let mut s = parts.join(", ");
    // Attribute the tail's change to the path's segments.
    let total: f64 = path.iter().map(|p| p.b_us - p.a_us).sum();
    if total.abs() > 0.0 {
        let mut by: Vec<&SegmentDelta> = path.iter().collect();
        by.sort_by(|x, y| {
            let dx = (x.b_us - x.a_us) * total.signum();
            let dy = (y.b_us - y.a_us) * total.signum();
            dy.total_cmp(&dx)
        });
        let top = by[0];
        let part = (top.b_us - top.a_us) / total;
        let how = if part >= 0.7 {
            "almost all"
        } else if part >= 0.5 {
            "mostly"
        } else {
            "largely"
        };
        let _ = write!(
            s,
            "; the slowest commands' path changed by {}{}, {how} in `{}` ({} → {})",
            if total > 0.0 { "+" } else { "−" },
            fmt_us(total.abs()),
            top.segment,
            fmt_us(top.a_us),
            fmt_us(top.b_us)
        );
        if part < 0.7 && by.len() > 1 {
            let second = by[1];
            let _ = write!(
                s,
                " and `{}` ({} → {})",
                second.segment,
                fmt_us(second.a_us),
                fmt_us(second.b_us)
            );
        }
    }
    let mut out = s;
    if let Some(c) = out.get(..1) {
        out = c.to_uppercase() + &out[1..];
    }
    out + "."
}

pub fn markdown(c: &Comparison) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Comparison: A = {}, B = {}\n", c.a, c.b);
    let _ = writeln!(r, "**{}**\n", c.sentence);
    let _ = writeln!(
        r,
        "Noise is each run's own (bootstrap over its seconds and its sampled durations). Separate \
         runs on a shared machine differ by more than that: for a decision, run A and B back to back \
         twice and compare both pairs.\n"
    );
    let _ = writeln!(r, "| figure | A | B | change | noise (±2σ) | |");
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---|");
    for d in &c.deltas {
        let fmt = |v: f64| {
            if d.figure == "throughput" {
                format!("{v:.0} ops/s")
            } else {
                fmt_us(v)
            }
        };
        let mark = if !d.moved() {
            "".to_string()
        } else if d.worse() {
            "**worse**".to_string()
        } else {
            "better".to_string()
        };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {:+.1}% | ±{:.1}% | {mark} |",
            d.figure,
            fmt(d.a),
            fmt(d.b),
            100.0 * d.change,
            100.0 * d.noise
        );
    }
    if !c.p99_path.is_empty() {
        let _ = writeln!(r, "\n## The slowest commands' path (p99 band), A → B\n");
        let _ = writeln!(r, "| segment | A | B | change |");
        let _ = writeln!(r, "|---|---:|---:|---:|");
        for p in &c.p99_path {
            let _ = writeln!(
                r,
                "| `{}` | {} | {} | {}{} |",
                p.segment,
                fmt_us(p.a_us),
                fmt_us(p.b_us),
                if p.b_us >= p.a_us { "+" } else { "−" },
                fmt_us((p.b_us - p.a_us).abs())
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::StageFigures;
    use crate::path::Band;

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

    #[test]
    fn names_the_stage_that_moved() {
        let a = figs(100_000.0, 1000.0, 200.0);
        let b = figs(99_000.0, 1180.0, 380.0);
        let c = compare(&a, &b);
        assert!(c.sentence.starts_with("P99 rose 18%"), "{}", c.sentence);
        assert!(
            c.sentence.contains("almost all in `follower.persist`"),
            "{}",
            c.sentence
        );
        assert!(!c.deltas[0].moved(), "1% throughput is noise");
        assert_eq!(c.regressions().len(), 3, "p99, p999 and the stage's p99");
    }

    #[test]
    fn noise_hides_small_changes() {
        let a = figs(100_000.0, 1000.0, 200.0);
        let b = figs(102_000.0, 1020.0, 204.0);
        let c = compare(&a, &b);
        assert!(c.sentence.starts_with("Nothing moved"), "{}", c.sentence);
        assert!(c.regressions().is_empty());
    }
}
