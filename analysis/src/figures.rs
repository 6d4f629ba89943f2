//! The figures of one run (`analysis.json`, and the format of a baseline):
//! end to end, per stage, where the time goes, the bottleneck, and the
//! noise of each figure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::path::{Band, FlowTimes, Nature, Segment};
use crate::profile::Frame;
use crate::run::{Quantiles, Run, Step};
pub use engine::instrumentation::summary::fmt_us;

/// One stage of DESIGN.md's table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StageFigures {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Share of end-to-end latency of commands around p50 / p99 spent in
    /// this stage's part of the path (0 for stages off the path).
    pub share_p50: f64,
    pub share_p99: f64,
}

/// CPU use over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Cpu {
    pub cores: usize,
    pub wall_s: f64,
    /// CPU seconds of every process.
    pub cpu_s: f64,
    /// `cpu_s / (wall_s × cores)`.
    pub busy: f64,
    /// The process that used most, and its CPU seconds.
    pub top_process: String,
    pub top_process_cpu_s: f64,
    /// CPU of every process within the measurement per committed command,
    /// µs (0: a run from before it was measured).
    pub us_per_command: f64,
    /// Each process's share of it: (name, µs per command).
    pub per_process_us: Vec<(String, f64)>,
}

/// The verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Bottleneck {
    /// The path segment that dominates the tail.
    pub segment: String,
    /// Its stage in DESIGN.md's table.
    pub stage: String,
    pub share_p99: f64,
    pub share_p50: f64,
    /// `queueing` or `service`.
    pub kind: String,
    pub evidence: Vec<String>,
    pub sentence: String,
}

/// A turn of a replica's core task that took long (`core.stall`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stall {
    pub process: u32,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Core-task stalls (`core.stall`) and the slowest commands they held up.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StallFigures {
    /// Stalls traced (every one, while the trace buffer had room).
    pub count: usize,
    pub longest_us: f64,
    /// The lab's process number of the longest.
    pub longest_process: u32,
    /// The slowest sampled commands looked at (1%, at least 5) ...
    pub slowest: usize,
    /// ... and how many of them were in flight during a stall.
    pub slowest_behind_stall: usize,
    /// The share of every sampled command in flight during a stall: what
    /// chance alone gives the slowest (the base rate).
    pub all_behind_stall: f64,
}

impl StallFigures {
    /// Stalls make the tail: most of the slowest commands waited behind
    /// one, at least twice as often as commands at large did.
    pub fn make_the_tail(&self) -> bool {
        let slowest = self.slowest_behind_stall as f64 / self.slowest.max(1) as f64;
        self.slowest > 0 && slowest > 0.5 && slowest >= 2.0 * self.all_behind_stall
    }
}

/// The stalls, and how many of the slowest sampled commands were in
/// flight (called, not yet answered) while one ran.
pub fn stall_figures(flows: &[FlowTimes], stalls: &[Stall]) -> Option<StallFigures> {
    let longest = stalls.iter().max_by_key(|s| s.end_ns - s.start_ns)?;
    let mut by_latency: Vec<&FlowTimes> = flows.iter().collect();
    by_latency.sort_by_key(|f| std::cmp::Reverse(f.answered - f.call));
    let slowest = (flows.len() / 100).max(5).min(flows.len());
    let behind = |f: &&&FlowTimes| {
        stalls
            .iter()
            .any(|s| s.start_ns < f.answered && s.end_ns > f.call)
    };
    let all = by_latency.iter().filter(behind).count();
    Some(StallFigures {
        count: stalls.len(),
        longest_us: (longest.end_ns - longest.start_ns) as f64 / 1000.0,
        longest_process: longest.process,
        slowest,
        slowest_behind_stall: by_latency[..slowest].iter().filter(behind).count(),
        all_behind_stall: all as f64 / flows.len().max(1) as f64,
    })
}

/// Everything the reports and comparisons use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Figures {
    pub experiment: String,
    pub run_id: String,
    pub run_dir: String,
    pub mode: String,
    pub throughput_ops_s: f64,
    /// Operations per second of each measured second.
    pub throughput_per_s: Vec<f64>,
    pub latency_us: Quantiles,
    /// (quantile, µs) points of the end-to-end latency distribution.
    pub latency_cdf: Vec<[f64; 2]>,
    pub ops: u64,
    pub errors: u64,
    pub stages: BTreeMap<String, StageFigures>,
    /// Where the time goes around p50 and p99.
    pub bands: Vec<Band>,
    pub sampled_commands: usize,
    pub cpu: Cpu,
    pub bottleneck: Option<Bottleneck>,
    /// Core-task stalls, when the run had any.
    pub stalls: Option<StallFigures>,
    pub steps: Vec<Step>,
    pub profile_top: Vec<Frame>,
    /// Relative noise (bootstrap standard error / value) per figure name
    /// (`throughput`, `p50`, `p99`, `stage:<name>:p50`, ...).
    pub noise: BTreeMap<String, f64>,
    /// Little's law check of a closed loop: in flight / mean latency.
    pub littles_law_ops_s: Option<f64>,
    /// For a baseline: where and when it was taken (source run, git
    /// revision, toolchain, machine).
    pub meta: BTreeMap<String, String>,
}

impl Figures {
    pub fn band(&self, at: &str) -> Option<&Band> {
        self.bands.iter().find(|b| b.at == at)
    }

    pub fn noise_of(&self, figure: &str) -> f64 {
        self.noise.get(figure).copied().unwrap_or(0.0)
    }
}

/// Builds the figures of `run` from its summary, its intervals and (with
/// polars) its sampled events.
pub fn build(
    run: &Run,
    stage_samples: &BTreeMap<String, Vec<f64>>,
    bands: Vec<Band>,
    sampled_commands: usize,
    profile_top: Vec<Frame>,
    stalls: Option<StallFigures>,
) -> Figures {
    let s = &run.summary;
    let mut stages = BTreeMap::new();
    for (name, q) in &s.stages {
        let mut f = StageFigures {
            count: q.count,
            p50: q.p50,
            p90: q.p90,
            p99: q.p99,
            p999: q.p999,
            max: q.max,
            ..StageFigures::default()
        };
        for b in &bands {
            let share: f64 = Segment::ALL
                .iter()
                .filter(|seg| seg.stage() == Some(name.as_str()))
                .map(|seg| b.share(seg.name()))
                .sum();
            match b.at.as_str() {
                "p50" => f.share_p50 = share,
                "p99" => f.share_p99 = share,
                _ => {}
            }
        }
        stages.insert(name.clone(), f);
    }
    let cpu = cpu_of(run);
    let throughput_per_s = run.throughput_per_interval();
    let mut noise = BTreeMap::new();
    let mut rng = crate::stats::Rng::new(0x5eed);
    if let Some(n) = crate::stats::bootstrap_mean_rel(&throughput_per_s, &mut rng) {
        noise.insert("throughput".to_string(), n);
    }
    for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        if let Some(n) = crate::stats::bootstrap_intervals_rel(&run.intervals, q, &mut rng) {
            noise.insert(k.to_string(), n);
        }
    }
    for (name, v) in stage_samples {
        for (k, q) in [("p50", 0.5), ("p99", 0.99)] {
            if let Some(n) = crate::stats::bootstrap_quantile_rel(v, q, &mut rng) {
                noise.insert(format!("stage:{name}:{k}"), n);
            }
        }
    }
    let littles_law_ops_s = (run.load_mode() == "closed" && s.latency_us.mean > 0.0)
        .then(|| run.in_flight().map(|n| n / (s.latency_us.mean / 1e6)))
        .flatten();
    let mut f = Figures {
        experiment: s.experiment.clone(),
        run_id: s.run_id.clone(),
        run_dir: run.dir.display().to_string(),
        mode: run.load_mode(),
        throughput_ops_s: s.throughput_ops_s,
        throughput_per_s,
        latency_us: s.latency_us.clone(),
        latency_cdf: cdf_of(run),
        ops: s.ops,
        errors: s.errors,
        stages,
        sampled_commands,
        bands,
        cpu,
        bottleneck: None,
        stalls,
        steps: s.steps.clone(),
        profile_top,
        noise,
        littles_law_ops_s,
        meta: BTreeMap::new(),
    };
    f.bottleneck = bottleneck(&f);
    f
}

fn cdf_of(run: &Run) -> Vec<[f64; 2]> {
    let Some(first) = run.intervals.first() else {
        return Vec::new();
    };
    let mut h = first.histogram.clone();
    h.reset();
    for i in &run.intervals {
        let _ = h.add(&i.histogram);
    }
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (0..50).map(|i| f64::from(i) / 50.0).collect();
    qs.extend([0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0]);
    qs.iter()
        .map(|q| [*q, h.value_at_quantile(*q) as f64 / 1000.0])
        .collect()
}

fn cpu_of(run: &Run) -> Cpu {
    let s = &run.summary;
    let cores = s.cores.max(1);
    let cpu_s = run.cpu_s();
    let top = s
        .processes
        .iter()
        .max_by(|a, b| (a.cpu_user_s + a.cpu_sys_s).total_cmp(&(b.cpu_user_s + b.cpu_sys_s)));
    Cpu {
        cores,
        wall_s: s.wall_s,
        cpu_s,
        busy: if s.wall_s > 0.0 {
            cpu_s / (s.wall_s * cores as f64)
        } else {
            0.0
        },
        top_process: top.map(|p| p.name.clone()).unwrap_or_default(),
        top_process_cpu_s: top.map_or(0.0, |p| p.cpu_user_s + p.cpu_sys_s),
        us_per_command: s.cpu_us_per_command,
        per_process_us: s
            .processes
            .iter()
            .filter(|p| p.cpu_measured_s > 0.0)
            .map(|p| (p.name.clone(), p.cpu_us_per_command))
            .collect(),
    }
}

/// Names the segment that dominates the tail, and says whether it is
/// waiting or working, with the figures that show it.
pub fn bottleneck(f: &Figures) -> Option<Bottleneck> {
    let p99 = f.band("p99")?;
    let (seg_name, us) = p99.dominant()?;
    let seg = Segment::from_name(seg_name)?;
    let share_p99 = p99.share(seg_name);
    let share_p50 = f.band("p50").map_or(0.0, |b| b.share(seg_name));
    let mut evidence = vec![format!(
        "`{seg_name}` ({}) takes {:.0}% of the slowest commands' latency ({} of {}) and {:.0}% at the median",
        seg.meaning(),
        100.0 * share_p99,
        fmt_us(us),
        fmt_us(p99.e2e_us),
        100.0 * share_p50
    )];
    let flush = ["nvm.flush", "wal.fsync"]
        .iter()
        .filter_map(|n| f.stages.get(*n).map(|s| (*n, s)))
        .max_by_key(|(_, s)| s.count);
    let mut kind = seg.nature();
    if matches!(seg, Segment::FollowerPersist | Segment::LeaderPersist) {
        let stage = seg.stage().and_then(|n| f.stages.get(n));
        if let (Some((fname, fl)), Some(st), Some(stage_name)) = (flush, stage, seg.stage()) {
            let service = (fl.p50 / st.p50.max(1e-9)).min(1.0);
            evidence.push(format!(
                "a flush (`{fname}`) takes {} at p50 while `{}` lasts {} at p50: {:.0}% of the stage is the flush itself",
                fmt_us(fl.p50),
                stage_name,
                fmt_us(st.p50),
                100.0 * service
            ));
            if service < 0.5 {
                kind = Nature::Queueing;
                evidence.push(
                    "so the persist is mostly waiting for its replica's event loop, not flushing"
                        .to_string(),
                );
            }
        }
    }
    if matches!(seg, Segment::NetRequest | Segment::NetReply) {
        evidence.push(
            "it is a hand-off between processes: the socket, the receiving task's wake-up and decode; \
             no stage measures it alone, so it shows as the gap between the sender's and the receiver's stages"
                .to_string(),
        );
    }
    if f.cpu.busy > 0.0 {
        evidence.push(format!(
            "the processes used {:.1} CPU-seconds in {:.1} s on {} cores: {:.0}% busy (most: {}, {:.1} s)",
            f.cpu.cpu_s,
            f.cpu.wall_s,
            f.cpu.cores,
            100.0 * f.cpu.busy.min(1.0),
            f.cpu.top_process,
            f.cpu.top_process_cpu_s
        ));
        if f.cpu.busy >= 0.85 && kind == Nature::Queueing {
            evidence.push("the CPU is saturated: queueing here is waiting for a core".to_string());
        }
    }
    if let Some(top) = f.profile_top.first() {
        evidence.push(format!(
            "the leader's profile spends most self time in `{}` ({:.1}%)",
            top.name, top.self_pct
        ));
    }
    let kind_s = match kind {
        Nature::Queueing => "queueing",
        Nature::Service => "service",
    };
    if let Some(st) = &f.stalls {
        let stall = format!(
            "the replicas' core tasks stalled {} times for {} µs or more (longest {}, process {}): \
             {} of the {} slowest sampled commands were in flight during one, against {:.0}% of all",
            st.count,
            engine::instrumentation::STALL_NS_MIN / 1000,
            fmt_us(st.longest_us),
            st.longest_process,
            st.slowest_behind_stall,
            st.slowest,
            100.0 * st.all_behind_stall
        );
        // Stalls make the tail when most of the slowest commands waited
        // behind one, well above chance: then they are the verdict,
        // whatever segment they fell in.
        if st.make_the_tail() {
            evidence.insert(0, stall);
            return Some(Bottleneck {
                segment: seg_name.to_string(),
                stage: "core.stall".to_string(),
                share_p99,
                share_p50,
                kind: "stall".to_string(),
                evidence,
                sentence: format!(
                    "The tail is core-task stalls: {} of the {} slowest sampled commands waited \
                     behind one (longest {}; `core.stall` in the trace shows each).",
                    st.slowest_behind_stall,
                    st.slowest,
                    fmt_us(st.longest_us)
                ),
            });
        }
        evidence.push(stall);
    }
    let stage = seg
        .stage()
        .map_or("between stages".to_string(), |s| format!("stage `{s}`"));
    let sentence = format!(
        "The bottleneck is `{seg_name}` ({stage}): {:.0}% of p99-band latency, {:.0}% at p50; it is {} ({}).",
        100.0 * share_p99,
        100.0 * share_p50,
        kind_s,
        match kind {
            Nature::Queueing => "time spent waiting, not working",
            Nature::Service => "time spent doing the work",
        }
    );
    Some(Bottleneck {
        segment: seg_name.to_string(),
        stage: seg.stage().unwrap_or("").to_string(),
        share_p99,
        share_p50,
        kind: kind_s.to_string(),
        evidence,
        sentence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command called at `call` that took `took` ns (its stages evenly
    /// spread; only the call and the answer matter to stalls).
    fn flow(call: i64, took: i64) -> FlowTimes {
        let at = |k: i64| call + took * k / 12;
        FlowTimes {
            call,
            sent: at(1),
            queued: at(2),
            taken: at(3),
            sealed: at(4),
            leader_durable: at(5),
            follower_got: at(6),
            follower_durable: at(7),
            first_accepted: at(8),
            committed: at(9),
            applied: at(10),
            replied: at(11),
            answered: call + took,
        }
    }

    fn figures(flows: &[FlowTimes], stalls: &[Stall]) -> Figures {
        Figures {
            bands: crate::path::standard_bands(flows),
            stalls: stall_figures(flows, stalls),
            ..Figures::default()
        }
    }

    /// 1,000 commands of 100 µs, one every 10 µs, and 10 slow ones of 5
    /// ms; `stall_at`: where a 4 ms stall of process 2 starts.
    fn run(stall_at: i64) -> (Vec<FlowTimes>, Vec<Stall>) {
        let mut flows: Vec<FlowTimes> = (0..1000).map(|i| flow(i * 10_000, 100_000)).collect();
        flows.extend((0..10).map(|i| flow(3_000_000 + i * 1000, 5_000_000)));
        let stalls = vec![Stall {
            process: 2,
            start_ns: stall_at,
            end_ns: stall_at + 4_000_000,
        }];
        (flows, stalls)
    }

    #[test]
    fn the_verdict_names_stalls_when_the_slowest_commands_waited_behind_one() {
        let (flows, stalls) = run(3_500_000);
        let f = figures(&flows, &stalls);
        let st = f.stalls.as_ref().unwrap();
        assert_eq!((st.count, st.longest_process), (1, 2));
        assert_eq!(st.slowest, 10);
        assert_eq!(st.slowest_behind_stall, 10);
        assert_eq!(st.longest_us, 4000.0);
        let b = bottleneck(&f).unwrap();
        assert_eq!(b.stage, "core.stall");
        assert!(
            b.sentence
                .starts_with("The tail is core-task stalls: 10 of the 10 slowest"),
            "{}",
            b.sentence
        );
    }

    #[test]
    fn stalls_everyone_waits_behind_are_not_the_verdict() {
        // A stall over the whole run: every command, slow or not, was in
        // flight during it, so it tells the slowest apart from nothing.
        let (flows, _) = run(0);
        let stalls = [Stall {
            process: 1,
            start_ns: 0,
            end_ns: 100_000_000,
        }];
        let f = figures(&flows, &stalls);
        let st = f.stalls.as_ref().unwrap();
        assert_eq!((st.slowest_behind_stall, st.all_behind_stall), (10, 1.0));
        assert!(!st.make_the_tail());
        assert_ne!(bottleneck(&f).unwrap().stage, "core.stall");
    }

    #[test]
    fn a_stall_away_from_the_slowest_commands_is_evidence_not_the_verdict() {
        // Long after every command was answered.
        let (flows, stalls) = run(50_000_000);
        let f = figures(&flows, &stalls);
        assert_eq!(f.stalls.as_ref().unwrap().slowest_behind_stall, 0);
        let b = bottleneck(&f).unwrap();
        assert_ne!(b.stage, "core.stall");
        assert!(
            b.evidence.iter().any(|e| e.contains("0 of the 10 slowest")),
            "{:?}",
            b.evidence
        );
        // And no stall, no word of them.
        let f = figures(&flows, &[]);
        assert!(f.stalls.is_none());
        assert!(
            !bottleneck(&f)
                .unwrap()
                .evidence
                .iter()
                .any(|e| e.contains("stalled"))
        );
    }
}
