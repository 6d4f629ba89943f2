//! The figures of one run (`analysis.json`, and the format of a baseline):
//! end to end, per stage, where the time goes, the bottleneck, and the
//! noise of each figure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::path::{Band, Nature, Segment};
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
