//! `analysis.md`: the report for people (the JSON is [`Figures`] itself).

use std::fmt::Write as _;

use crate::figures::{Figures, fmt_us};
use crate::path::Segment;

/// The stages of DESIGN.md's table, in table order.
pub const STAGE_ORDER: &[&str] = engine::instrumentation::Stage::NAMES;

pub fn markdown(f: &Figures, plots: &[(String, String)]) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Analysis of `{}` run {}\n", f.experiment, f.run_id);
    if let Some(b) = &f.bottleneck {
        let _ = writeln!(r, "**{}**\n", b.sentence);
        for e in &b.evidence {
            let _ = writeln!(r, "- {e}");
        }
        r.push('\n');
    } else {
        let _ = writeln!(
            r,
            "No bottleneck verdict: the run has no sampled command with a complete path (tracing off, or too short).\n"
        );
    }
    let _ = writeln!(r, "## Throughput and latency\n");
    let _ = writeln!(
        r,
        "| ops/s | ± noise | ops | errors | p50 | p90 | p99 | p99.9 | max |"
    );
    let _ = writeln!(r, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        r,
        "| {:.0} | {:.1}% | {} | {} | {} |\n",
        f.throughput_ops_s,
        100.0 * f.noise_of("throughput"),
        f.ops,
        f.errors,
        f.latency_us.cells()
    );
    if let Some(ll) = f.littles_law_ops_s {
        let _ = writeln!(
            r,
            "Closed loop: calls in flight / mean latency = {ll:.0} ops/s (Little's law) vs {:.0} measured: {}.\n",
            f.throughput_ops_s,
            if (ll / f.throughput_ops_s - 1.0).abs() < 0.1 {
                "consistent, the load generator kept its calls in flight"
            } else {
                "apart: the load generator did not keep every call in flight (it is a bottleneck itself)"
            }
        );
    }
    if !f.steps.is_empty() && f.steps.iter().any(|s| s.offered_ops_s.is_some()) {
        let _ = writeln!(r, "### Throughput–latency curve\n");
        let _ = writeln!(r, "| offered | achieved | p50 | p99 | unsent |");
        let _ = writeln!(r, "|---:|---:|---:|---:|---:|");
        for s in &f.steps {
            let _ = writeln!(
                r,
                "| {:.0} | {:.0} | {} | {} | {} |",
                s.offered_ops_s.unwrap_or(0.0),
                s.throughput_ops_s,
                fmt_us(s.latency_us.p50),
                fmt_us(s.latency_us.p99),
                s.unsent
            );
        }
        if let Some(k) = knee(f) {
            let _ = writeln!(r, "\n{k}");
        }
        r.push('\n');
    }
    let _ = writeln!(r, "## Stages\n");
    let _ = writeln!(
        r,
        "Quantiles over every command, batch or flush (all processes). `share` columns: the part of \
         end-to-end latency this stage's segments of the path take, for sampled commands around the \
         median and in the slowest 1.5% (stages off the path, or overlapping it, show —).\n"
    );
    let _ = writeln!(
        r,
        "| stage | count | p50 | p90 | p99 | p99.9 | max | share p50 | share p99 |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &name in STAGE_ORDER {
        let Some(s) = f.stages.get(name) else {
            continue;
        };
        let on_path =
            Segment::ALL.iter().any(|seg| seg.stage() == Some(name)) && !f.bands.is_empty();
        let share = |v: f64| {
            if on_path {
                format!("{:.0}%", 100.0 * v)
            } else {
                "—".to_string()
            }
        };
        let _ = writeln!(
            r,
            "| `{name}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.count,
            fmt_us(s.p50),
            fmt_us(s.p90),
            fmt_us(s.p99),
            fmt_us(s.p999),
            fmt_us(s.max),
            share(s.share_p50),
            share(s.share_p99)
        );
    }
    if !f.bands.is_empty() {
        let _ = writeln!(
            r,
            "\n## Where a command's time goes\n\nThe path of {} sampled commands cut into consecutive segments \
             (mean per band; they add up to the band's end-to-end latency).\n",
            f.sampled_commands
        );
        let mut head = "| segment | kind | what |".to_string();
        let mut rule = "|---|---|---|".to_string();
        for b in &f.bands {
            let _ = write!(
                head,
                " {} ({} cmds, {}) | share |",
                b.at,
                b.commands,
                fmt_us(b.e2e_us)
            );
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(r, "{head}\n{rule}");
        for seg in Segment::ALL {
            let mut row = format!(
                "| `{}` | {} | {} |",
                seg.name(),
                match seg.nature() {
                    crate::path::Nature::Queueing => "queueing",
                    crate::path::Nature::Service => "service",
                },
                seg.meaning()
            );
            for b in &f.bands {
                let us = b.segments_us.get(seg.name()).copied().unwrap_or(0.0);
                let _ = write!(
                    row,
                    " {} | {:.0}% |",
                    fmt_us(us),
                    100.0 * b.share(seg.name())
                );
            }
            let _ = writeln!(r, "{row}");
        }
    }
    let _ = writeln!(r, "\n## CPU\n");
    if f.cpu.wall_s <= 0.0 {
        let _ = writeln!(
            r,
            "Not recorded (a run from before `wall_s` was in summary.json)."
        );
    } else {
        let _ = writeln!(
            r,
            "{:.1} CPU-seconds over {:.1} s on {} cores ({:.0}% busy); most in {} ({:.1} s).",
            f.cpu.cpu_s,
            f.cpu.wall_s,
            f.cpu.cores,
            100.0 * f.cpu.busy,
            f.cpu.top_process,
            f.cpu.top_process_cpu_s
        );
    }
    if f.cpu.us_per_command > 0.0 {
        let each: Vec<String> = f
            .cpu
            .per_process_us
            .iter()
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        let _ = writeln!(
            r,
            "\n**CPU per command: {:.2} µs** over every process within the measurement (user + system, the warmup excluded); by process: {}.",
            f.cpu.us_per_command,
            each.join(", ")
        );
    }
    if !f.profile_top.is_empty() {
        let _ = writeln!(r, "\n## Profile: top frames of the leader (self time)\n");
        let _ = writeln!(r, "| function | self | total |");
        let _ = writeln!(r, "|---|---:|---:|");
        for fr in &f.profile_top {
            let _ = writeln!(
                r,
                "| `{}` | {:.1}% | {:.1}% |",
                fr.name.replace('|', "\\|"),
                fr.self_pct,
                fr.total_pct
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(r, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(r, "- [{title}]({file})");
        }
    }
    r
}

/// The highest offered step the cluster kept up with (achieved ≥ 97% of
/// offered, nothing unsent), and the first it did not.
pub fn knee(f: &Figures) -> Option<String> {
    let kept = |s: &crate::run::Step| {
        s.offered_ops_s
            .is_some_and(|o| s.throughput_ops_s >= 0.97 * o && s.unsent == 0)
    };
    let last_ok = f.steps.iter().rfind(|s| kept(s))?;
    let first_bad = f.steps.iter().find(|s| !kept(s));
    Some(match first_bad {
        Some(b) => format!(
            "Sustains {:.0} ops/s with p99 {}; at {:.0} offered it achieves {:.0} and p99 reaches {}: saturated.",
            last_ok.throughput_ops_s,
            fmt_us(last_ok.latency_us.p99),
            b.offered_ops_s.unwrap_or(0.0),
            b.throughput_ops_s,
            fmt_us(b.latency_us.p99)
        ),
        None => format!(
            "Keeps up with every offered rate, up to {:.0} ops/s (p99 {}).",
            last_ok.throughput_ops_s,
            fmt_us(last_ok.latency_us.p99)
        ),
    })
}
