//! A run's outputs: `experiments/results/NAME/RUN/` and the trace.
//!
//! - `config.toml`: the resolved spec (every field), and the run's facts;
//! - `summary.json`: the machine-readable figures (see [`Summary`]);
//! - `latency.hdr`: HdrHistogram interval log of end-to-end latency (ns),
//!   one histogram per second, tagged with the step;
//! - `stages.csv`: every traced (sampled) interval, one row each;
//! - `stage_histograms.json`: every stage's full histogram (ns, V2 deflate,
//!   base64), for the analysis tools;
//! - `report.md`: for people;
//! - `trace.json` → `traces/NAME-RUN.json` (Chrome JSON; open it at
//!   ui.perfetto.dev);
//! - `flamegraph.svg` when profiled, with `flamegraph.folded` (its stacks) and
//!   `flamegraph.top.md` (the hottest frames; the report shows the first rows).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use engine::instrumentation::summary::{
    Quantiles, RunFault, RunProcess, RunStep, RunSummary, fmt_us,
};
use engine::instrumentation::{
    ProcessUsage, Stage, StageHistograms, TraceEvent, write_chrome_trace,
};

use crate::cluster::ProcessReport;
use crate::driver::StepResult;
use crate::spec::Spec;

/// `summary.json`: the shared definition, with the typed spec as `config`.
pub type Summary = RunSummary<Spec>;

/// Everything a run measured, before it is written.
pub struct RunData<'a> {
    pub name: &'a str,
    pub run_id: &'a str,
    pub spec: &'a Spec,
    pub steps: &'a [StepResult],
    pub reports: &'a [ProcessReport],
    /// The load generator's own recordings (process mode; in-process runs
    /// share one lab, reported with the replicas).
    pub loadgen_lab: Option<(StageHistograms, Vec<TraceEvent>, u64)>,
    pub usage: RunUsage,
    pub leader: u32,
    pub interrupted: bool,
    pub flamegraph: Option<PathBuf>,
    pub wall_s: f64,
    pub fault: Option<RunFault>,
}

/// What the processes used.
pub struct RunUsage {
    /// The load generator's whole run (in-process: the cluster's too).
    pub loadgen: ProcessUsage,
    /// CPU within each step's measurement.
    pub windows: CpuWindows,
}

/// CPU seconds within the steps' measurements: each process's sum over
/// the steps (id 0: the load generator), and each step's sum over the
/// processes (0 for a step stopped before its warmup ended).
#[derive(Clone, Debug, Default)]
pub struct CpuWindows {
    pub by_process: Vec<(u32, f64)>,
    pub by_step: Vec<f64>,
}

impl CpuWindows {
    /// Adds one step's window: readings at its start and end (an empty
    /// start: never measured).
    pub fn add(&mut self, start: &[(u32, f64)], end: &[(u32, f64)]) {
        let mut step = 0.0;
        for (id, e) in end {
            let Some((_, s)) = start.iter().find(|(i, _)| i == id) else {
                continue;
            };
            let used = (e - s).max(0.0);
            step += used;
            match self.by_process.iter_mut().find(|(i, _)| i == id) {
                Some((_, total)) => *total += used,
                None => self.by_process.push((*id, used)),
            }
        }
        self.by_step.push(step);
    }
}

/// Writes the run directory and the trace; returns the summary.
pub fn write(run_dir: &Path, traces_dir: &Path, d: &RunData<'_>) -> Result<Summary> {
    // Merge every process's figures.
    let mut hist = StageHistograms::default();
    let mut events: Vec<TraceEvent> = Vec::new();
    let mut dropped = 0;
    for r in d.reports {
        let h = StageHistograms::decode(&r.file.histograms)
            .map_err(|e| anyhow::anyhow!("replica {}: {e}", r.id))?;
        hist.merge(&h);
        events.extend(r.file.events.iter().copied());
        dropped += r.file.events_dropped;
    }
    if let Some((h, ev, dr)) = &d.loadgen_lab {
        hist.merge(h);
        events.extend(ev.iter().copied());
        dropped += dr;
    }
    let mut latency = crate::driver::latency_histogram();
    let mut errors_by_kind = BTreeMap::new();
    let (mut ops, mut window_s) = (0, 0.0);
    let mut steps = Vec::new();
    for s in d.steps {
        latency.add(&s.latency).expect("same bounds");
        ops += s.ops;
        window_s += s.window_s;
        for (k, v) in &s.errors {
            *errors_by_kind.entry(k.clone()).or_default() += v;
        }
        steps.push(RunStep {
            offered_ops_s: s.offered,
            unsent: s.unsent,
            throughput_ops_s: s.throughput(),
            ops: s.ops,
            errors: s.errors.values().sum(),
            window_s: s.window_s,
            latency_us: Quantiles::of(&s.latency),
            send_lag_us: Quantiles::of(&s.send_lag),
            cpu_us_per_command: match d.usage.windows.by_step.get(steps.len()) {
                Some(cpu_s) if s.ops > 0 => cpu_s * 1e6 / s.ops as f64,
                _ => 0.0,
            },
        });
    }
    let stages: BTreeMap<String, Quantiles> = Stage::ALL
        .iter()
        .filter_map(|s| {
            hist.get(*s)
                .map(|h| (s.name().to_string(), Quantiles::of(h)))
        })
        .collect();
    // Processes, and their CPU within the steps' measurements per command
    // those committed.
    let measured_cpu = |id: u32| {
        d.usage
            .windows
            .by_process
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(0.0, |(_, s)| *s)
    };
    let per_command = |cpu_s: f64| {
        if ops > 0 {
            cpu_s * 1e6 / ops as f64
        } else {
            0.0
        }
    };
    let mut processes = vec![RunProcess {
        name: if d.spec.cluster.mode == crate::spec::Mode::Inproc {
            "loadgen + replicas (one process)".into()
        } else {
            "loadgen".into()
        },
        role: "load".into(),
        cpu_user_s: d.usage.loadgen.user_s,
        cpu_sys_s: d.usage.loadgen.sys_s,
        rss_max_mib: d.usage.loadgen.max_rss_mib,
        anon_max_mib: d.usage.loadgen.max_anon_mib,
        shmem_max_mib: d.usage.loadgen.max_shmem_mib,
        flush_mode: None,
        cpu_measured_s: measured_cpu(0),
        cpu_us_per_command: per_command(measured_cpu(0)),
    }];
    let mut replica_rss = None::<f64>;
    for r in d
        .reports
        .iter()
        .filter(|r| r.id != 0 && r.file.usage != ProcessUsage::default())
    {
        replica_rss = Some(replica_rss.unwrap_or(0.0).max(r.file.usage.max_rss_mib));
        processes.push(RunProcess {
            name: r.file.name.clone(),
            role: r.role.clone(),
            cpu_user_s: r.file.usage.user_s,
            cpu_sys_s: r.file.usage.sys_s,
            rss_max_mib: r.file.usage.max_rss_mib,
            anon_max_mib: r.file.usage.max_anon_mib,
            shmem_max_mib: r.file.usage.max_shmem_mib,
            flush_mode: r.file.flush_mode.clone(),
            cpu_measured_s: measured_cpu(r.id),
            cpu_us_per_command: per_command(measured_cpu(r.id)),
        });
    }
    // A replica without a lab file (tracing off) still has its CPU row:
    // the total counts it.
    for (id, _) in d.usage.windows.by_process.iter().filter(|(id, _)| *id != 0) {
        let name = format!("replica {id}");
        if !processes.iter().any(|p| p.name == name) {
            processes.push(RunProcess {
                name,
                role: "replica".into(),
                cpu_measured_s: measured_cpu(*id),
                cpu_us_per_command: per_command(measured_cpu(*id)),
                ..RunProcess::default()
            });
        }
    }
    // The trace.
    let trace = if d.spec.trace.enabled && d.spec.trace.sample_every != 0 {
        std::fs::create_dir_all(traces_dir)
            .with_context(|| format!("cannot create {}", traces_dir.display()))?;
        let path = traces_dir.join(format!("{}-{}.json", d.name, d.run_id));
        let mut names = vec![(0u32, "loadgen".to_string())];
        for id in 1..=d.spec.replica_count() {
            let role = if id == d.leader { " (leader)" } else { "" };
            names.push((id, format!("replica {id}{role}")));
        }
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        write_chrome_trace(&events, &names, std::io::BufWriter::new(f))?;
        let link = run_dir.join("trace.json");
        let _ = std::fs::remove_file(&link);
        let target = pathdiff(&path, run_dir);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
        Some(path.display().to_string())
    } else {
        None
    };
    let flamegraph = d
        .flamegraph
        .as_ref()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string());
    let summary = Summary {
        experiment: d.name.to_string(),
        run_id: d.run_id.to_string(),
        description: d.spec.description.clone(),
        throughput_ops_s: if window_s > 0.0 {
            ops as f64 / window_s
        } else {
            0.0
        },
        latency_us: Quantiles::of(&latency),
        ops,
        cpu_us_per_command: per_command(d.usage.windows.by_step.iter().sum()),
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        window_s,
        steps,
        stages,
        leader: d.leader,
        processes,
        replica_rss_max_mib: replica_rss,
        trace,
        trace_events: events.len(),
        trace_events_dropped: dropped,
        flamegraph,
        interrupted: d.interrupted,
        wall_s: d.wall_s,
        fault: d.fault.clone(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        config: d.spec.clone(),
    };
    // Files.
    let cfg = format!(
        "# Resolved spec of experiment {} run {} (every field, defaults included).\n{}",
        d.name,
        d.run_id,
        toml::to_string(d.spec)?
    );
    std::fs::write(run_dir.join("config.toml"), cfg)?;
    std::fs::write(
        run_dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    write_hdr_log(&run_dir.join("latency.hdr"), d.steps)?;
    write_stage_csv(&run_dir.join("stages.csv"), &events)?;
    let encoded: BTreeMap<String, String> = hist.encode().into_iter().collect();
    std::fs::write(
        run_dir.join("stage_histograms.json"),
        serde_json::to_vec_pretty(&encoded)?,
    )?;
    std::fs::write(run_dir.join("report.md"), report(&summary))?;
    Ok(summary)
}

/// `to` relative to directory `from` (both under the same root).
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let to = std::path::absolute(to).unwrap_or_else(|_| to.to_path_buf());
    let from = std::path::absolute(from).unwrap_or_else(|_| from.to_path_buf());
    let common = to
        .components()
        .zip(from.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut p = PathBuf::new();
    for _ in from.components().skip(common) {
        p.push("..");
    }
    for c in to.components().skip(common) {
        p.push(c);
    }
    p
}

fn write_hdr_log(path: &Path, steps: &[StepResult]) -> Result<()> {
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("end-to-end latency of successful calls, nanoseconds; tag = step")
            .with_start_time(std::time::SystemTime::now())
            .begin_log_with(&mut out, &mut ser)?;
        let mut offset = 0.0;
        for (i, s) in steps.iter().enumerate() {
            let tag = format!("step{i}");
            let mut last = 0.0;
            for (since, len, h) in &s.intervals {
                w.write_histogram(
                    h,
                    std::time::Duration::from_secs_f64(offset + since),
                    std::time::Duration::from_secs_f64(*len),
                    Tag::new(&tag),
                )
                .map_err(|e| anyhow::anyhow!("latency.hdr: {e}"))?;
                last = since + len;
            }
            offset += last;
        }
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn write_stage_csv(path: &Path, events: &[TraceEvent]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "stage,process,start_ns,dur_ns,slot,flow")?;
    let mut sorted: Vec<&TraceEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.start_ns, e.process));
    for e in sorted {
        writeln!(
            f,
            "{},{},{},{},{},{}",
            e.stage.name(),
            e.process,
            e.start_ns,
            e.dur_ns,
            e.slot,
            e.flow
        )?;
    }
    f.flush()?;
    Ok(())
}

/// `report.md`.
/// Rows of the hottest frames the report shows (the profile's `top.md` has more).
const HOT_FRAMES: usize = 12;

pub fn report(s: &Summary) -> String {
    let c = &s.config;
    let mut r = String::new();
    let _ = writeln!(r, "# Experiment `{}`, run {}\n", s.experiment, s.run_id);
    if !s.description.is_empty() {
        let _ = writeln!(r, "{}\n", s.description);
    }
    if s.interrupted {
        let _ = writeln!(
            r,
            "**Interrupted (Ctrl-C): the figures cover part of the run.**\n"
        );
    }
    let storage = match &c.cluster.storage {
        crate::spec::StorageChoice::All(b) => b.name().to_string(),
        crate::spec::StorageChoice::PerReplica(v) => {
            v.iter().map(|b| b.name()).collect::<Vec<_>>().join("/")
        }
    };
    let server = match c.cluster.server {
        crate::spec::Server::Paxos => format!(
            "{} replicas, {:?}, storage {storage}, window {}, batch ≤ {} commands",
            c.cluster.replicas, c.cluster.mode, c.cluster.window, c.cluster.batch_commands_max
        ),
        crate::spec::Server::Null => {
            format!("null server ({:?}): no log, no replication", c.cluster.mode)
        }
    };
    let load = match c.load.mode {
        crate::spec::LoadMode::Closed => format!(
            "closed loop, {} clients × {} outstanding",
            c.load.clients, c.load.outstanding
        ),
        crate::spec::LoadMode::Open => format!(
            "open loop, {} clients (≤ {} outstanding each)",
            c.load.clients, c.load.outstanding
        ),
    };
    let _ = writeln!(r, "- cluster: {server}");
    let _ = writeln!(
        r,
        "- load: {load}, {} B values, {:.0}% reads, {} keys {:?}; warmup {} s, measured {:.1} s",
        c.load.value_bytes,
        c.load.read_ratio * 100.0,
        c.load.keys,
        c.load.distribution,
        c.load.warmup_s,
        s.window_s
    );
    if s.leader != 0 {
        let _ = writeln!(r, "- leader at the end: replica {}", s.leader);
    }
    let _ = writeln!(r, "\n## Throughput and latency\n");
    let _ = writeln!(
        r,
        "| ops/s | ops | errors | p50 | p90 | p99 | p99.9 | max |"
    );
    let _ = writeln!(r, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        r,
        "| {:.0} | {} | {} | {} |",
        s.throughput_ops_s,
        s.ops,
        s.errors,
        s.latency_us.cells()
    );
    if !s.errors_by_kind.is_empty() {
        let _ = writeln!(r, "\nErrors: {:?}", s.errors_by_kind);
    }
    if let Some(f) = &s.fault {
        fault_section(&mut r, f, &s.errors_by_kind);
    }
    if s.steps.len() > 1 || s.steps.iter().any(|st| st.offered_ops_s.is_some()) {
        let _ = writeln!(
            r,
            "\n## Offered load vs achieved (open loop; latency from the intended start of a call \
             already due when a worker took it, from its send otherwise; `unsent`: calls due that \
             never went out because every worker was still waiting; `send lag`: how late the \
             generator's own timer sent the calls it waited for, not counted in the latency)\n"
        );
        let _ = writeln!(
            r,
            "| offered ops/s | achieved ops/s | unsent | errors | p50 | p99 | p99.9 | max | send lag p50 | send lag p99 | CPU / command |"
        );
        let _ = writeln!(
            r,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for st in &s.steps {
            let _ = writeln!(
                r,
                "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                st.offered_ops_s.unwrap_or(0.0),
                st.throughput_ops_s,
                st.unsent,
                st.errors,
                fmt_us(st.latency_us.p50),
                fmt_us(st.latency_us.p99),
                fmt_us(st.latency_us.p999),
                fmt_us(st.latency_us.max),
                fmt_us(st.send_lag_us.p50),
                fmt_us(st.send_lag_us.p99),
                if st.cpu_us_per_command > 0.0 {
                    format!("{:.2} µs", st.cpu_us_per_command)
                } else {
                    "—".into()
                }
            );
        }
    }
    let _ = writeln!(r, "\n## Stages\n");
    if s.stages.is_empty() {
        let _ = writeln!(
            r,
            "Instrumentation off (`[trace] enabled = false`): no per-stage figures."
        );
    } else {
        let _ = writeln!(
            r,
            "Durations per stage (DESIGN.md, \"One write, stage by stage\"), over every process. \
             Counts: per command for `client.*`, `leader.queue`, `leader.reply`; per slot (batch) \
             for `leader.batch`, `leader.persist`, `leader.quorum`, `leader.apply`; per follower \
             and slot for `p2a.send`, `p2b.recv`, `follower.persist`; per flush for `nvm.flush`, \
             `wal.fsync`; per election for `p1a.send`, `p1b.recv`, `leader.recover`; per \
             catch-up request for `catchup.slots` and per checkpoint fetched for \
             `catchup.checkpoint` (a run without a lagging replica has none); per core-task turn \
             of {} µs or more for `core.stall` (a run without a stall has none).\n",
            engine::instrumentation::STALL_NS_MIN / 1000
        );
        let _ = writeln!(r, "| # | stage | count | p50 | p90 | p99 | p99.9 | max |");
        let _ = writeln!(r, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for (i, st) in Stage::ALL.iter().enumerate() {
            if let Some(q) = s.stages.get(st.name()) {
                let _ = writeln!(
                    r,
                    "| {} | `{}` | {} | {} |",
                    i + 1,
                    st.name(),
                    q.count,
                    q.cells()
                );
            }
        }
    }
    let _ = writeln!(r, "\n## Processes\n");
    let _ = writeln!(
        r,
        "| process | role | CPU user | CPU sys | CPU measured | CPU / command | peak RSS | peak heap (anon) | peak NVM pages (shm) | flush |"
    );
    let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let mib = |v: f64| {
        if v > 0.0 {
            format!("{v:.0} MiB")
        } else {
            "—".into()
        }
    };
    for p in &s.processes {
        let _ = writeln!(
            r,
            "| {} | {} | {:.2} s | {:.2} s | {} | {} | {:.0} MiB | {} | {} | {} |",
            p.name,
            p.role,
            p.cpu_user_s,
            p.cpu_sys_s,
            if p.cpu_measured_s > 0.0 {
                format!("{:.2} s", p.cpu_measured_s)
            } else {
                "—".into()
            },
            if p.cpu_us_per_command > 0.0 {
                format!("{:.2} µs", p.cpu_us_per_command)
            } else {
                "—".into()
            },
            p.rss_max_mib,
            mib(p.anon_max_mib),
            mib(p.shmem_max_mib),
            p.flush_mode.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        r,
        "\nCPU measured: user + system within the measurement (the warmup excluded); \
         CPU / command: that over the {} commands it committed; all processes: {}. \
         Peak RSS is the kernel's high-water mark: heap plus the touched pages of the \
         emulated NVM file (on /dev/shm; on a real persistent-memory device they are not DRAM). \
         The heap and NVM columns are peaks sampled every {} ms.",
        s.ops,
        if s.cpu_us_per_command > 0.0 {
            format!("**{:.2} µs per command**", s.cpu_us_per_command)
        } else {
            "not measured (the run stopped before its warmup ended)".to_string()
        },
        engine::instrumentation::MEMORY_SAMPLE_PERIOD.as_millis()
    );
    let top_path = s
        .flamegraph
        .as_ref()
        .map(|f| Path::new(f).with_extension("top.md"));
    if let Some((path, top)) = top_path
        .as_ref()
        .and_then(|p| Some((p, std::fs::read_to_string(p).ok()?)))
    {
        // The header and first rows of two tables: the innermost frames, and
        // the project's own frames they were called from.
        let table = |title: &str| {
            let rows: Vec<&str> = top
                .lines()
                .skip_while(|l| !l.starts_with(title))
                .take(2 + HOT_FRAMES)
                .collect();
            rows.join("\n")
        };
        let _ = writeln!(
            r,
            "\n## Hot frames\n\nWhere the profiled process spent its CPU in user space ({}; \
             samples inside libc, system calls and the kernel are not counted; every table, with \
             inclusive figures, is in `{}`). By innermost frame:\n\n{}\n\nCharged to the \
             innermost frame of this project's code:\n\n{}",
            top.lines().next().unwrap_or(""),
            path.display(),
            table("| self"),
            table("| project"),
        );
    }
    let _ = writeln!(r, "\n## Files\n");
    if let Some(t) = &s.trace {
        let _ = writeln!(
            r,
            "- trace: `{t}` ({} events{}): open <https://ui.perfetto.dev>, \"Open trace file\", pick it. \
             One process track per replica and one for the load generator; a sampled command's \
             slices are linked by flow arrows (select a slice, follow \"Flow events\").",
            s.trace_events,
            if s.trace_events_dropped > 0 {
                format!(", {} dropped at the bound", s.trace_events_dropped)
            } else {
                String::new()
            }
        );
    }
    if let Some(f) = &s.flamegraph {
        let _ = writeln!(r, "- flamegraph: `{f}`");
    }
    let _ = writeln!(
        r,
        "- `summary.json` (these figures), `latency.hdr` (HdrHistogram interval log), `stages.csv` \
         (traced intervals), `stage_histograms.json` (full per-stage histograms), `config.toml` \
         (the resolved spec)"
    );
    r
}

/// The report's section on an injected fault: the window without a
/// success, the failover as clients saw it, their errors, and the
/// throughput second by second.
fn fault_section(r: &mut String, f: &RunFault, errors: &BTreeMap<String, u64>) {
    let _ = writeln!(r, "\n## Fault\n");
    let _ = writeln!(
        r,
        "At {:.2} s into the measurement, for {:.1} s: {}.\n",
        f.at_s, f.for_s, f.what
    );
    let _ = writeln!(
        r,
        "- Unavailable: no call succeeded for {:.0} ms, from {:.2} s.",
        f.unavailable_ms, f.unavailable_from_s
    );
    match f.first_ok_after_ms {
        Some(ms) => {
            let _ = writeln!(
                r,
                "- Failover as clients saw it: the first call started after the cut succeeded {ms:.0} ms after it."
            );
        }
        None => {
            let _ = writeln!(r, "- No call started after the cut succeeded.");
        }
    }
    let _ = writeln!(
        r,
        "- What the clients saw: {}. A call that timed out may have executed; the client retried it on another replica (the session table answers a retry of an executed command).",
        if errors.is_empty() {
            "no errors (every call was retried to success within its deadline)".to_string()
        } else {
            format!("{errors:?}")
        }
    );
    let _ = writeln!(
        r,
        "- The election's spans (`p1a.send`, `p1b.recv`, `leader.recover`) are in the stage table and the trace.\n"
    );
    let _ = writeln!(r, "| from (s) | ops/s | p99 |");
    let _ = writeln!(r, "|---:|---:|---:|");
    for (i, (t, ops, p99)) in f.per_second.iter().enumerate() {
        let until = f.per_second.get(i + 1).map_or(t + 1.0, |n| n.0);
        // 10 ms of slack: the cut is measured (3.0004 s), the rows are
        // whole seconds.
        let mark = if until > f.at_s + 0.01 && *t + 0.01 < f.at_s + f.for_s {
            " (fault)"
        } else {
            ""
        };
        let p99 = if *ops > 0.0 {
            fmt_us(*p99)
        } else {
            "-".to_string()
        };
        let _ = writeln!(r, "| {t:.2}{mark} | {ops:.0} | {p99} |");
    }
}

#[cfg(test)]
mod cpu_window_tests {
    use super::CpuWindows;

    #[test]
    fn windows_sum_by_process_and_by_step_and_skip_unmeasured_steps() {
        let mut w = CpuWindows::default();
        w.add(&[(0, 1.0), (1, 2.0)], &[(0, 1.5), (1, 3.0)]);
        // A step stopped before its warmup ended: no start reading.
        w.add(&[], &[(0, 9.0), (1, 9.0)]);
        // A process read only at the end (not at the start) is left out.
        w.add(&[(0, 2.0)], &[(0, 2.25), (1, 4.0)]);
        assert_eq!(w.by_process, vec![(0, 0.75), (1, 1.0)]);
        assert_eq!(w.by_step, vec![1.5, 0.0, 0.25]);
    }
}
