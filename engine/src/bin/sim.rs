//! `sim`: runs the deterministic simulator over many seeds, or one seed
//! with its event trace.
//!
//! ```text
//! sim --seeds N [--threads T] [--bug NAME]   seeds 0..N; prints the summary line
//! sim --seed S [--bug NAME]                  one seed; prints its event trace
//! ```
//! Exits non-zero when any violation is found.

use std::process::ExitCode;

use engine::sim::{self, Bug};

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim --seeds N [--threads T] [--bug BUG] [--counters] | sim --seed S [--bug BUG]\nBUG: {}",
        Bug::NAMES.join(" | ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut seed = None;
    let mut bug = None;
    let mut verbose = false;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match (args[i].as_str(), value) {
            ("--seeds", Some(v)) => seeds = v.parse::<u64>().ok(),
            ("--seed", Some(v)) => seed = v.parse::<u64>().ok(),
            ("--threads", Some(v)) => threads = v.parse().unwrap_or(threads),
            ("--counters", _) => {
                verbose = true;
                i += 1;
                continue;
            }
            ("--bug", Some(v)) => match Bug::parse(v) {
                Some(b) => bug = Some(b),
                None => return usage(),
            },
            _ => return usage(),
        }
        i += 2;
    }
    if let Some(s) = seed {
        let report = sim::run_seed(s, bug, true);
        for line in &report.trace {
            println!("{line}");
        }
        println!(
            "seed {s}: {} commands committed in {} slots, {} µs simulated, trace hash {:016x}",
            report.commands_committed, report.slots_chosen, report.sim_time_us, report.trace_hash
        );
        for (name, value) in report.stats.counters.iter().filter(|(_, v)| *v > 0) {
            println!("  {name:<36} {value}");
        }
        return match report.violation {
            Some(v) => {
                println!("VIOLATION {}: {}", v.kind.name(), v.detail);
                ExitCode::FAILURE
            }
            None => {
                println!(
                    "sim: 1 seeds, 0 violations, {} commands committed",
                    report.commands_committed
                );
                ExitCode::SUCCESS
            }
        };
    }
    let Some(n) = seeds else {
        return usage();
    };
    let start = std::time::Instant::now();
    let summary = sim::run_seeds(0..n, bug, threads);
    for (s, v) in summary.violations.iter().take(20) {
        println!("seed {s}: {} violation: {}", v.kind.name(), v.detail);
        println!("  replay: make sim SEED={s}");
    }
    let st = &summary.stats;
    eprintln!(
        "{:.1}s: {} events, {} messages ({} dropped), {} crashes, {} partitions, {} fsync failures, {} ops ({} unknown), {} elections won",
        start.elapsed().as_secs_f64(),
        st.events,
        st.messages,
        st.messages_dropped,
        st.crashes,
        st.partitions,
        st.fsync_failures,
        st.ops_completed,
        st.ops_unknown,
        st.elections_won
    );
    eprintln!(
        "  storage: {} write failures, {} bit flips, {} disks wiped, {} logs salvaged, {} starts refused",
        st.storage_failures, st.corruptions, st.wipes, st.salvaged, st.refused_starts
    );
    eprintln!(
        "  checkpoints: {} taken, {} restarts from one, {} installed from a peer; {} configuration changes",
        st.checkpoints_taken, st.checkpoint_restores, st.checkpoint_installs, st.reconfigurations
    );
    eprintln!(
        "  sessions: {} closed, {} commands of closed sessions refused",
        st.sessions_closed, st.closed_session_refusals
    );
    if verbose {
        for (name, value) in st.counters.iter() {
            eprintln!("  {name:<36} {value}");
        }
    }
    println!("{}", summary.line());
    if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
