//! The verdict of a comparison: the cause it names (a stage that moved
//! beyond its own noise, work before waiting), the sentence, and the
//! markdown report.

use std::fmt::Write as _;

use crate::figures::fmt_us;
use crate::path::Segment;

use super::*;

/// The stage figure that explains the change: among the stage figures
/// that moved by at least `CAUSE_US_MIN`, the one furthest beyond its
/// noise, work before waiting (unless the waiting moved far more), then
/// the innermost stage that carries most of it (a flush inside a persist).
pub(super) fn cause(deltas: &[Delta]) -> Option<&Delta> {
    // The direction end to end (+1: slower); a cause moved the same way.
    let e2e = |f: &str| deltas.iter().find(|d| d.figure == f && d.moved());
    let direction = match (e2e("p50"), e2e("p99"), e2e("throughput")) {
        (Some(d), ..) | (None, Some(d), _) => d.change.signum(),
        (None, None, Some(t)) => -t.change.signum(),
        // More CPU per command: a stage that takes longer.
        (None, None, None) => e2e("cpu_us_per_command").map_or(0.0, |c| c.change.signum()),
    };
    let candidates: Vec<&Delta> = deltas
        .iter()
        .filter(|d| {
            d.moved()
                && d.abs_change().abs() >= CAUSE_US_MIN
                // Beyond its noise in µs too (moved is judged relative).
                && d.score() >= 1.0
                // Not the end to end itself, nor stalls (a stall's length
                // is not time per command; the bottleneck report has them).
                && d.stage().is_some_and(|s| s != "client.recv" && s != "core.stall")
                && (direction == 0.0 || d.change.signum() == direction)
                // With nothing moved end to end, only a stage far beyond
                // its noise is named: ~30 stage figures are compared, and
                // at a 95% level one of them would move by chance.
                && (direction != 0.0
                    || (d.figure.ends_with(":p50")
                        && (d.score() >= NAMED_ALONE_SCORE
                            || (d.score() >= 2.0 && d.change.abs() >= NAMED_ALONE_CHANGE))))
        })
        .collect();
    // Effect against noise and what it explains: how far beyond its noise
    // (up to SCORE_CAP, past which it is certain) times the time it adds.
    // A stage 20× beyond its noise by 3 µs does not outrank one 8× beyond
    // by 40 µs.
    let weight = |d: &Delta| d.score().min(SCORE_CAP) * d.abs_change().abs();
    // A stage's median before its tail: steadier, and what most commands
    // pay. The tail's figures only when no median moved.
    let any_p50 = candidates.iter().any(|d| d.figure.ends_with(":p50"));
    let best = |work: bool| {
        candidates
            .iter()
            .copied()
            .filter(|d| !any_p50 || d.figure.ends_with(":p50"))
            .filter(|d| SERVICE_STAGES.contains(&d.stage().unwrap_or("")) == work)
            .max_by(|x, y| weight(x).total_cmp(&weight(y)))
    };
    let mut top = match (best(true), best(false)) {
        (Some(w), Some(q)) if q.abs_change().abs() > QUEUE_OVER_WORK * w.abs_change().abs() => q,
        (Some(w), _) => w,
        (None, q) => q?,
    };
    // Down to the innermost stage that carries at least half of its
    // container's change (same quantile, same direction): a flush inside
    // a persist inside the wait for a quorum.
    let quantile = top.figure.rsplit(':').next().unwrap_or("p50").to_string();
    'inward: loop {
        let stage = top.stage().unwrap_or("").to_string();
        for (inner, containers) in INSIDE {
            if !containers.contains(&stage.as_str()) {
                continue;
            }
            if let Some(d) = candidates
                .iter()
                .find(|d| d.figure == format!("stage:{inner}:{quantile}"))
                && d.abs_change() * top.abs_change() > 0.0
                && d.abs_change().abs() >= 0.5 * top.abs_change().abs()
            {
                top = d;
                continue 'inward;
            }
        }
        return Some(top);
    }
}

/// "−28% (noise ±64%)", or with `bare` "−28% ±64%".
pub(super) fn pct(d: &Delta, bare: bool) -> String {
    let c = 100.0 * d.change;
    let n = 100.0 * d.noise.max(CHANGE_FLOOR);
    let sign = if c < 0.0 { "−" } else { "+" };
    if bare {
        format!("{sign}{:.0}% ±{n:.0}%", c.abs())
    } else {
        format!("{sign}{:.0}% (noise ±{n:.0}%)", c.abs())
    }
}

/// The segments of the path a stage's time lies in.
pub(super) fn segments_of(stage: &str) -> Vec<&'static str> {
    match stage {
        // A flush is inside whichever persist is on the path.
        "nvm.flush" | "wal.fsync" => vec!["follower.persist", "leader.persist"],
        // The quorum's wait is the Accept's trip, the persist and the
        // Accepted's trip back, then the core's notice.
        "leader.quorum" => vec![
            "accept.transit",
            "follower.persist",
            "accepted.transit",
            "commit.wait",
        ],
        _ => Segment::ALL
            .iter()
            .filter(|seg| seg.stage() == Some(stage))
            .map(|seg| seg.name())
            .collect(),
    }
}

/// "73", "2.4": how many times beyond its noise.
pub(super) fn times(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

pub(super) fn signed_us(us: f64) -> String {
    format!("{}{}", if us >= 0.0 { "+" } else { "−" }, fmt_us(us.abs()))
}

/// The headline: what moved end to end, its cause, what it explains.
pub(super) fn sentence(
    deltas: &[Delta],
    cause: Option<&Delta>,
    p50_path: &[SegmentDelta],
    p99_path: &[SegmentDelta],
    pairs: usize,
    across_sittings: bool,
) -> String {
    let get = |f: &str| deltas.iter().find(|d| d.figure == f);
    let names = [
        ("throughput", "throughput"),
        ("p50", "p50"),
        ("p99", "p99"),
        ("cpu_us_per_command", "CPU per command"),
    ];
    let mut moved = Vec::new();
    let mut all = Vec::new();
    let (mut better, mut worse) = (false, false);
    for (f, name) in names {
        let Some(d) = get(f) else { continue };
        all.push(format!("{name} {}", pct(d, true)));
        if d.moved() {
            moved.push(format!("{name} {}", pct(d, false)));
            if d.worse() {
                worse = true;
            } else {
                better = true;
            }
        }
    }
    let stages = deltas.iter().filter(|d| d.stage().is_some()).count();
    let stages_moved = deltas
        .iter()
        .filter(|d| d.stage().is_some() && d.moved())
        .count();
    let mut s = String::new();
    if across_sittings {
        s.push_str(
            "Across sittings (against a committed baseline; the same code differs by up to 30% \
             between sittings on a shared machine, so `make ab` decides): ",
        );
    }
    if pairs > 1 {
        let _ = write!(s, "{pairs} pairs back to back. ");
    }
    if moved.is_empty() {
        let _ = write!(
            s,
            "Nothing moved beyond noise end to end ({})",
            all.join(", ")
        );
    } else {
        let cpu_only = moved.len() == 1 && get("cpu_us_per_command").is_some_and(Delta::moved);
        let how = match (better, worse, cpu_only) {
            (_, true, true) => "More CPU",
            (true, _, true) => "Less CPU",
            (true, false, _) => "Faster",
            (false, true, _) => "Slower",
            _ => "Changed",
        };
        let _ = write!(s, "{how}: {}", moved.join(", "));
    }
    match cause {
        Some(c) => {
            let stage = c.stage().unwrap_or("?");
            let quantile = c.figure.rsplit(':').next().unwrap_or("p50");
            let _ = write!(
                s,
                "{} `{stage}` {quantile} {} → {} ({} {}, {}× its noise)",
                if moved.is_empty() {
                    "; one stage did:"
                } else {
                    ". The cause:"
                },
                fmt_us(c.a),
                fmt_us(c.b),
                signed_us(c.abs_change()),
                unit_of(stage),
                times(c.score()),
            );
            // What it accounts for on the median command's path.
            let segs = segments_of(stage);
            if let Some(e2e) = p50_path.first().filter(|e| e.moved) {
                let part: f64 = p50_path
                    .iter()
                    .filter(|p| segs.contains(&p.segment.as_str()))
                    .map(SegmentDelta::change_us)
                    .sum();
                if part * e2e.change_us() > 0.0 {
                    let _ = write!(
                        s,
                        "; on the median command's path it is {} of {}",
                        signed_us(part),
                        signed_us(e2e.change_us())
                    );
                } else if let Some(top) = top_moved(p50_path) {
                    let _ = write!(
                        s,
                        "; the median command's path changed by {}, most in `{}` ({})",
                        signed_us(e2e.change_us()),
                        top.segment,
                        signed_us(top.change_us())
                    );
                }
            }
        }
        None if !moved.is_empty() => {
            if let Some(top) = top_moved(p50_path) {
                let _ = write!(
                    s,
                    ". No stage stands out; the median command's path moved most in `{}` ({})",
                    top.segment,
                    signed_us(top.change_us())
                );
            } else {
                s.push_str(". No stage or path segment stands out");
            }
        }
        None if stages_moved == 0 => s.push_str("; no stage moved beyond its own noise"),
        None => {
            let _ = write!(
                s,
                "; no stage stands out ({stages_moved} of {stages} stage figures moved beyond \
                 their noise, as some do by chance)"
            );
        }
    }
    // The tail's path, only where it moved far beyond the band's own
    // noise.
    if let Some(top) = p99_path
        .iter()
        .skip(1)
        .filter(|t| t.moved && t.change_us().abs() >= TAIL_SCORE * t.noise_us)
        .max_by(|x, y| x.change_us().abs().total_cmp(&y.change_us().abs()))
    {
        let _ = write!(
            s,
            ". In the slowest 1.5%: `{}` {} (noise ±{})",
            top.segment,
            signed_us(top.change_us()),
            fmt_us(top.noise_us)
        );
    }
    s + "."
}

/// The segment (not the band's end to end) that moved most, if any did.
pub(super) fn top_moved(path: &[SegmentDelta]) -> Option<&SegmentDelta> {
    path.iter()
        .skip(1)
        .filter(|p| p.moved)
        .max_by(|x, y| x.change_us().abs().total_cmp(&y.change_us().abs()))
}

pub fn markdown(c: &Comparison) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Comparison: A = {}, B = {}\n", c.a, c.b);
    let _ = writeln!(r, "**{}**\n", c.sentence);
    if c.pairs > 1 {
        let _ = writeln!(
            r,
            "{} pairs, A and B interleaved on one machine. A figure's A and B are the means over \
             the pairs; its change is the mean of the pairs' changes; its noise is the larger of \
             the runs' own (two standard errors), how much runs of one build differ (the A runs \
             among themselves and the B runs among themselves) and, end to end, how much the \
             pairs' changes differ, each a 95% half-width with Student's t; it moved only if \
             every pair agrees on the direction.\n",
            c.pairs
        );
    } else if c.across_sittings {
        let _ = writeln!(
            r,
            "A is a committed baseline: another sitting. On a shared machine the same code differs \
             by up to 30% between sittings, more than one run's noise: `make ab BASE=<rev> \
             NAME=<experiment>` runs both builds back to back and decides.\n"
        );
    } else {
        let _ = writeln!(
            r,
            "Noise is each run's own (bootstrap over its seconds and its sampled durations; CPU \
             per command assumed ±{:.1}% per run). Separate runs on a shared machine differ by \
             more than that: for a decision, `make ab` runs A and B back to back in pairs.\n",
            100.0 * CPU_RUN_NOISE
        );
    }
    let _ = writeln!(r, "| figure | A | B | change | noise | pairs | |");
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---|---|");
    for d in &c.deltas {
        let fmt = |v: f64| match d.figure.as_str() {
            "throughput" => format!("{v:.0} ops/s"),
            "cpu_us_per_command" => format!("{v:.2} µs"),
            _ => fmt_us(v),
        };
        let mark = if c.cause.as_deref() == Some(d.figure.as_str()) {
            "**cause**".to_string()
        } else if !d.moved() {
            "".to_string()
        } else if d.worse() {
            "**worse**".to_string()
        } else {
            "better".to_string()
        };
        let pairs = d
            .pairs
            .iter()
            .map(|p| format!("{:+.1}%", 100.0 * p))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            r,
            "| {} | {} | {} | {:+.1}% | ±{:.1}% | {pairs} | {mark} |",
            d.figure,
            fmt(d.a),
            fmt(d.b),
            100.0 * d.change,
            100.0 * d.noise
        );
    }
    for (title, path) in [
        ("around the median (p50 band)", &c.p50_path),
        ("of the slowest 1.5% (p99 band)", &c.p99_path),
    ] {
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(r, "\n## The path {title}, A → B\n");
        let _ = writeln!(r, "| segment | A | B | change | noise | |");
        let _ = writeln!(r, "|---|---:|---:|---:|---:|---|");
        for p in path {
            let _ = writeln!(
                r,
                "| `{}` | {} | {} | {} | ±{} | {} |",
                p.segment,
                fmt_us(p.a_us),
                fmt_us(p.b_us),
                signed_us(p.change_us()),
                fmt_us(p.noise_us),
                if p.moved { "moved" } else { "" }
            );
        }
    }
    r
}
