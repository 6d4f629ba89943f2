//! `analysis`: reports, comparisons and baselines of lab runs.
//!
//! ```text
//! analysis report experiments/results/NAME/RUN
//! analysis compare A B          (A, B: run directories or baseline files)
//! analysis ab --base A1 A2 --head B1 B2 [--out DIR]   (pairs run back to back)
//! analysis baseline RUN --out experiments/baselines/NAME.json
//! analysis latest experiments/results NAME
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use analysis::figures::{self, Figures};
use analysis::run;
use analysis::{analyse, compare, load, plot, report};
use anyhow::Result;
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
    /// Compare pairs of runs taken back to back (`make ab`): the i-th base
    /// run with the i-th head run. Writes compare.md, compare.json and
    /// plots into --out.
    Ab {
        #[arg(long, num_args = 1.., required = true)]
        base: Vec<PathBuf>,
        #[arg(long, num_args = 1.., required = true)]
        head: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
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
            let md = if b.is_dir() {
                let la = format!("A: {}", fa.run_id);
                let lb = format!("B: {}", fb.run_id);
                let runs = [(la.as_str(), &fa), (lb.as_str(), &fb)];
                write_comparison(&b, &c, &runs, "A grey, B blue")?
            } else {
                compare::markdown(&c)
            };
            print!("{md}");
            if fail_on_regression && !c.regressions().is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Ab { base, head, out } => {
            anyhow::ensure!(
                base.len() == head.len(),
                "{} base runs and {} head runs: pairs need as many of each",
                base.len(),
                head.len()
            );
            let fa = base.iter().map(|p| load(p)).collect::<Result<Vec<_>>>()?;
            let fb = head.iter().map(|p| load(p)).collect::<Result<Vec<_>>>()?;
            let pairs: Vec<(&Figures, &Figures)> = fa.iter().zip(&fb).collect();
            let c = compare::compare_pairs(&pairs);
            if let Some(out) = &out {
                std::fs::create_dir_all(out)?;
                let labels: Vec<String> = fa
                    .iter()
                    .map(|f| format!("base: {}", f.run_id))
                    .chain(fb.iter().map(|f| format!("head: {}", f.run_id)))
                    .collect();
                let runs: Vec<(&str, &Figures)> = labels
                    .iter()
                    .map(String::as_str)
                    .zip(fa.iter().chain(&fb))
                    .collect();
                write_comparison(out, &c, &runs, "base runs grey, head runs blue")?;
            }
            println!("{}", c.sentence);
            if let Some(out) = &out {
                println!("compare: {}", out.join("compare.md").display());
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

/// Writes `compare.md` (with overlay plots of `runs`) and `compare.json`
/// into `dir`; returns the markdown.
fn write_comparison(
    dir: &Path,
    c: &compare::Comparison,
    runs: &[(&str, &Figures)],
    legend: &str,
) -> Result<String> {
    let mut md = compare::markdown(c);
    let plots = plot::all(dir, "compare-", runs);
    if !plots.is_empty() {
        md.push_str(&format!("\n## Plots ({legend})\n\n"));
        for (t, file) in &plots {
            md.push_str(&format!("- [{t}]({file})\n"));
        }
    }
    std::fs::write(dir.join("compare.md"), &md)?;
    std::fs::write(dir.join("compare.json"), serde_json::to_vec_pretty(c)?)?;
    Ok(md)
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
