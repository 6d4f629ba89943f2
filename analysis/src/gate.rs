//! The regression gate's figures and verdict (no polars: `make gate`
//! builds without it).
//!
//! Three kinds of figure, chosen for what does not flake on a shared 2-core
//! machine (`../shared/design/lab.md`):
//! - **deterministic per committed command**, from the seeded
//!   single-threaded workload `engine::gate`: instructions (callgrind),
//!   allocations and allocated bytes (a counting allocator), messages,
//!   peer and client bytes, flushes, bytes written to the log. They repeat
//!   exactly, so the tolerances are small and only increases fail;
//! - **instructions per command through the runtime path**
//!   (`runtime_instructions`: an embedded cluster on one thread, counted
//!   by callgrind for a short and a long run and differenced): not exact,
//!   since timers fire by the clock, so its tolerance is wider (5%);
//! - **ratios of wall-clock throughput measured in the same run**,
//!   interleaved A B A B (pipelined vs classic, tracing on vs off), with
//!   wide tolerances: a ratio fails only if every pair is below the floor.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A gated figure: its value, and how far it may move (relative) before
/// the gate fails.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Limit {
    pub value: f64,
    /// Deterministic figures: the largest allowed increase (0.03 = +3%).
    /// Ratios: the largest allowed decrease (0.5 = half the baseline).
    pub tolerance: f64,
    /// `per_command` (lower is better) or `ratio` (higher is better).
    pub kind: String,
}

/// `experiments/baselines/gate.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GateBaseline {
    /// Instruction counts move with the compiler: the toolchain and build
    /// profile they were taken with.
    pub toolchain: String,
    pub profile: String,
    pub figures: BTreeMap<String, Limit>,
}

/// What one gate run measured. A ratio may hold one value per A/B pair.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GateMeasured {
    pub toolchain: String,
    pub per_command: BTreeMap<String, f64>,
    pub ratios: BTreeMap<String, Vec<f64>>,
}

/// Default tolerances of the figures the gate knows.
pub fn default_tolerance(name: &str) -> f64 {
    match name {
        "instructions" => 0.02,
        "alloc_bytes" => 0.02,
        // Not exact (timers by wall clock, a random leader): see the gate's
        // runtime workload.
        "runtime_instructions" => 0.05,
        // Fails when tracing costs ~20% more than the baseline's pair.
        "ratio:tracing_on_vs_off" => 0.15,
        n if n.starts_with("ratio:") => 0.5,
        _ => 0.01,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub figure: String,
    pub baseline: f64,
    pub measured: f64,
    pub change: f64,
    pub tolerance: f64,
    pub failed: bool,
    pub note: String,
}

impl Finding {
    /// A baseline figure with no measurement this time.
    fn unmeasured(name: &str, lim: &Limit, failed: bool, note: &str) -> Finding {
        Finding {
            figure: name.to_string(),
            baseline: lim.value,
            measured: f64::NAN,
            change: 0.0,
            tolerance: lim.tolerance,
            failed,
            note: note.to_string(),
        }
    }
}

/// Compares what was measured against the baseline.
pub fn check(base: &GateBaseline, m: &GateMeasured) -> Vec<Finding> {
    let mut out = Vec::new();
    for (name, lim) in &base.figures {
        if lim.kind == "ratio" {
            let Some(vals) = m.ratios.get(name).filter(|v| !v.is_empty()) else {
                out.push(Finding::unmeasured(
                    name,
                    lim,
                    false,
                    "not measured this time (skipped)",
                ));
                continue;
            };
            let floor = lim.value * (1.0 - lim.tolerance);
            let best = vals.iter().copied().fold(f64::MIN, f64::max);
            let failed = vals.iter().all(|v| *v < floor);
            out.push(Finding {
                figure: name.clone(),
                baseline: lim.value,
                measured: best,
                change: best / lim.value - 1.0,
                tolerance: lim.tolerance,
                failed,
                note: format!(
                    "pairs {:?}, floor {floor:.2}{}",
                    vals.iter()
                        .map(|v| (v * 100.0).round() / 100.0)
                        .collect::<Vec<_>>(),
                    if failed { ": every pair below" } else { "" }
                ),
            });
        } else {
            let Some(v) = m.per_command.get(name).copied() else {
                out.push(Finding::unmeasured(
                    name,
                    lim,
                    true,
                    "missing: the gate could not measure it",
                ));
                continue;
            };
            let change = if lim.value > 0.0 {
                v / lim.value - 1.0
            } else if v > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            let failed = change > lim.tolerance;
            let note = if failed {
                "regression".to_string()
            } else if change < -lim.tolerance {
                "improved beyond tolerance: refresh the baseline (make gate-baseline)".to_string()
            } else {
                String::new()
            };
            out.push(Finding {
                figure: name.clone(),
                baseline: lim.value,
                measured: v,
                change,
                tolerance: lim.tolerance,
                failed,
                note,
            });
        }
    }
    out
}

/// A baseline from a measurement, with the default tolerances.
pub fn baseline_of(m: &GateMeasured, profile: &str) -> GateBaseline {
    let mut figures = BTreeMap::new();
    for (k, v) in &m.per_command {
        figures.insert(
            k.clone(),
            Limit {
                value: *v,
                tolerance: default_tolerance(k),
                kind: "per_command".into(),
            },
        );
    }
    for (k, vals) in &m.ratios {
        if vals.is_empty() {
            continue;
        }
        // The lowest pair: a baseline that the machine's noise already
        // reached once.
        let v = vals.iter().copied().fold(f64::MAX, f64::min);
        figures.insert(
            k.clone(),
            Limit {
                value: v,
                tolerance: default_tolerance(k),
                kind: "ratio".into(),
            },
        );
    }
    GateBaseline {
        toolchain: m.toolchain.clone(),
        profile: profile.into(),
        figures,
    }
}

/// The findings as a table, and the verdict line.
pub fn render(findings: &[Finding]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "{:<34} {:>14} {:>14} {:>9} {:>7}  note",
        "figure", "baseline", "measured", "change", "limit"
    );
    for f in findings {
        let _ = writeln!(
            r,
            "{:<34} {:>14.3} {:>14.3} {:>+8.2}% {:>6.0}%  {}{}",
            f.figure,
            f.baseline,
            f.measured,
            100.0 * f.change,
            100.0 * f.tolerance,
            if f.failed { "FAIL " } else { "" },
            f.note
        );
    }
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| f.failed)
        .map(|f| f.figure.as_str())
        .collect();
    if failed.is_empty() {
        let _ = writeln!(r, "gate: PASS ({} figures)", findings.len());
    } else {
        let _ = writeln!(
            r,
            "gate: FAIL: {} regressed beyond tolerance ({})",
            failed.join(", "),
            findings
                .iter()
                .filter(|f| f.failed)
                .map(|f| format!("{} {:+.1}%", f.figure, 100.0 * f.change))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    r
}

/// Parses the instruction total out of a callgrind output file.
pub fn callgrind_total(text: &str) -> Option<u64> {
    let pick = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    pick("totals:").or_else(|| pick("summary:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(instr: f64, allocs: f64, ratio: &[f64]) -> GateMeasured {
        GateMeasured {
            toolchain: "rustc 1.95.0".into(),
            per_command: BTreeMap::from([
                ("instructions".to_string(), instr),
                ("allocations".to_string(), allocs),
            ]),
            ratios: BTreeMap::from([("ratio:pipelined_vs_classic".to_string(), ratio.to_vec())]),
        }
    }

    #[test]
    fn small_increases_pass_and_large_ones_fail() {
        let base = baseline_of(&measured(1000.0, 2.0, &[40.0, 44.0]), "dev");
        assert_eq!(base.figures["ratio:pipelined_vs_classic"].value, 40.0);
        assert!(
            check(&base, &measured(1015.0, 2.0, &[30.0]))
                .iter()
                .all(|f| !f.failed)
        );
        let f = check(&base, &measured(1040.0, 3.0, &[39.0]));
        let failed: Vec<&str> = f
            .iter()
            .filter(|f| f.failed)
            .map(|f| f.figure.as_str())
            .collect();
        assert_eq!(failed, ["allocations", "instructions"]);
        assert!(render(&f).contains("gate: FAIL: allocations, instructions"));
    }

    #[test]
    fn a_ratio_fails_only_when_every_pair_is_below_the_floor() {
        let base = baseline_of(&measured(1000.0, 2.0, &[40.0]), "dev");
        // Floor = 20: one good pair is enough.
        assert!(
            check(&base, &measured(1000.0, 2.0, &[10.0, 25.0]))
                .iter()
                .all(|f| !f.failed)
        );
        let f = check(&base, &measured(1000.0, 2.0, &[10.0, 19.0]));
        assert!(f.iter().any(|f| f.failed && f.figure.starts_with("ratio:")));
    }

    #[test]
    fn a_missing_figure_fails_and_a_skipped_ratio_does_not() {
        let base = baseline_of(&measured(1000.0, 2.0, &[40.0]), "dev");
        let mut m = measured(1000.0, 2.0, &[]);
        m.per_command.remove("instructions");
        let f = check(&base, &m);
        assert!(f.iter().any(|f| f.failed && f.figure == "instructions"));
        assert!(!f.iter().any(|f| f.failed && f.figure.starts_with("ratio:")));
    }

    #[test]
    fn reads_callgrind_totals() {
        let text = "events: Ir\nfn=main\n1 10\nsummary: 123456\ntotals: 120000\n";
        assert_eq!(callgrind_total(text), Some(120000));
        assert_eq!(callgrind_total("summary: 7\n"), Some(7));
        assert_eq!(callgrind_total("nothing"), None);
    }
}
