//! `analysis`: reports, comparisons and baselines of lab runs.
//!
//! ```text
//! analysis report experiments/results/NAME/RUN
//! analysis compare A B          (A, B: run directories or baseline files)
//! analysis baseline RUN --out experiments/baselines/NAME.json
//! analysis latest experiments/results NAME
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use analysis::figures::{self, Figures};
use analysis::run::{self, Run};
use analysis::{compare, plot, profile, report, samples};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "analysis",
    about = "Reports, comparisons and baselines of lab runs."
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Analyse a run: writes analysis.md, analysis.json and plots into it.
    Report { run: PathBuf },
    /// Compare A (before: a run or a baseline) with B (after).
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Exit 1 when B is worse than A beyond noise.
        #[arg(long)]
        fail_on_regression: bool,
    },
    /// Save a run's figures as a baseline.
    Baseline {
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the newest run directory of an experiment.
    Latest { results: PathBuf, name: String },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("analysis: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    match Args::parse().cmd {
        Cmd::Report { run } => {
            let f = analyse(&run)?;
            let plots = plot::all(&run, "plot-", &[(f.run_id.as_str(), &f)]);
            std::fs::write(run.join("analysis.json"), serde_json::to_vec_pretty(&f)?)?;
            std::fs::write(run.join("analysis.md"), report::markdown(&f, &plots))?;
            link_from_report(&run)?;
            match &f.bottleneck {
                Some(b) => println!("{}", b.sentence),
                None => println!("no bottleneck verdict (no sampled command paths)"),
            }
            println!("analysis: {}", run.join("analysis.md").display());
        }
        Cmd::Compare {
            a,
            b,
            fail_on_regression,
        } => {
            let fa = load(&a)?;
            let fb = load(&b)?;
            let c = compare::compare(&fa, &fb);
            let mut md = compare::markdown(&c);
            if b.is_dir() {
                let la = format!("A: {}", fa.run_id);
                let lb = format!("B: {}", fb.run_id);
                let plots = plot::all(&b, "compare-", &[(la.as_str(), &fa), (lb.as_str(), &fb)]);
                if !plots.is_empty() {
                    md.push_str("\n## Plots (A grey, B blue)\n\n");
                    for (t, file) in &plots {
                        md.push_str(&format!("- [{t}]({file})\n"));
                    }
                }
                std::fs::write(b.join("compare.md"), &md)?;
                std::fs::write(b.join("compare.json"), serde_json::to_vec_pretty(&c)?)?;
            }
            print!("{md}");
            if fail_on_regression && !c.regressions().is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Baseline { run, out } => {
            let mut f = analyse(&run)?;
            f.meta.insert("source".into(), run.display().to_string());
            f.meta.insert(
                "git".into(),
                command_line("git", &["rev-parse", "--short", "HEAD"]),
            );
            f.meta
                .insert("toolchain".into(), command_line("rustc", &["-V"]));
            f.meta.insert(
                "cores".into(),
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .to_string(),
            );
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, serde_json::to_vec_pretty(&f)?)?;
            println!(
                "baseline {}: {:.0} ops/s, p50 {}, p99 {} (from {})",
                out.display(),
                f.throughput_ops_s,
                figures::fmt_us(f.latency_us.p50),
                figures::fmt_us(f.latency_us.p99),
                run.display()
            );
        }
        Cmd::Latest { results, name } => {
            println!("{}", run::latest_run(&results, &name)?.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The figures of a run directory, or of a baseline / analysis file.
fn load(p: &Path) -> Result<Figures> {
    if p.is_dir() {
        return analyse(p);
    }
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a figures file", p.display()))
}

fn analyse(dir: &Path) -> Result<Figures> {
    let run = Run::load(dir)?;
    let s = if run.stages_csv().exists() {
        samples::read(&run.stages_csv())?
    } else {
        samples::Samples::default()
    };
    let bands = analysis::path::standard_bands(&s.flows);
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

/// Adds a pointer to analysis.md at the end of loadgen's report.md, once.
fn link_from_report(dir: &Path) -> Result<()> {
    let p = dir.join("report.md");
    let Ok(mut r) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let line = "\n## Analysis\n\nThe bottleneck, where a command's time goes, and plots: [analysis.md](analysis.md).\n";
    if !r.contains("[analysis.md](analysis.md)") {
        r.push_str(line);
        std::fs::write(&p, r)?;
    }
    Ok(())
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
