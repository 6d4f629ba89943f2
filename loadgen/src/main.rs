//! `loadgen`: the lab's load generator and experiment runner.
//!
//! ```text
//! loadgen run experiments/smoke.toml [--set load.clients=8] ...
//! loadgen check-trace traces/smoke-RUN.json
//! ```
//! `run` starts the experiment's cluster (in-process or replica processes),
//! waits for a leader, drives the load, stops everything (also on error or
//! Ctrl-C) and writes `experiments/results/NAME/RUN/` and the trace. See
//! the README's "Running an experiment".

/// mimalloc, not glibc's malloc, which gives freed pages back to the
/// kernel and faults them in again (experiments/RESULTS.md, issue 26).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod driver;
mod results;
mod spec;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use engine::client::ClientOptions;
use engine::instrumentation::{Lab, ProcessUsage, Stage};

use crate::spec::{CutKind, FaultKind, Mode, Spec};
use engine::instrumentation::summary::RunFault;
use loadgen::faultnet::LinkFault;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator and experiment runner of the Paxos lab."
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run an experiment: start its cluster, drive the load, write the results.
    Run {
        /// The experiment's spec (experiments/NAME.toml).
        spec: PathBuf,
        /// Override a field of the spec: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Where run directories go (NAME/RUN/ under it).
        #[arg(long, default_value = "experiments/results")]
        results: PathBuf,
        /// Where traces go (NAME-RUN.json).
        #[arg(long, default_value = "traces")]
        traces: PathBuf,
        /// The replica binary for process mode (default: next to loadgen).
        #[arg(long)]
        replica_bin: Option<PathBuf>,
        /// Name the run directory (default: a UTC timestamp).
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Check that a trace parses as Chrome JSON and list its stage names.
    CheckTrace {
        trace: PathBuf,
        /// Fail unless every stage of DESIGN.md's table occurs.
        #[arg(long)]
        all_stages: bool,
    },
}

/// The load generator's and the replicas' worker threads in one process
/// (inproc mode), when the spec sets none.
const INPROC_WORKER_THREADS_DEFAULT: usize = 2;

/// When this process started (the span of its CPU figures).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match args.cmd {
        Cmd::Run {
            spec,
            sets,
            results,
            traces,
            replica_bin,
            run_id,
        } => run(&spec, &sets, &results, &traces, replica_bin, run_id),
        Cmd::CheckTrace { trace, all_stages } => check_trace(&trace, all_stages),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run(
    spec_path: &Path,
    sets: &[String],
    results: &Path,
    traces: &Path,
    replica_bin: Option<PathBuf>,
    run_id: Option<String>,
) -> Result<ExitCode> {
    let mut spec = Spec::load(spec_path)?.with_overrides(sets)?;
    // The scheduler that runs is recorded with the run (config.toml), set
    // or not.
    spec.cluster.worker_threads = Some(match spec.cluster.mode {
        // A pool of at least one: the load generator's runtime is a pool.
        Mode::Inproc => spec
            .cluster
            .worker_threads
            .unwrap_or(INPROC_WORKER_THREADS_DEFAULT)
            .max(1),
        Mode::Process => spec
            .cluster
            .worker_threads
            .unwrap_or(engine::runtime::file::WORKER_THREADS_DEFAULT),
    });
    let name = spec_path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the spec's file name names the experiment")?
        .to_string();
    let base = run_id.unwrap_or_else(timestamp);
    let mut run_id = base.clone();
    let mut n = 2;
    while results.join(&name).join(&run_id).exists() {
        run_id = format!("{base}-{n}");
        n += 1;
    }
    let run_dir = results.join(&name).join(&run_id);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let replica_bin = match replica_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("loadgen's directory")?
            .join("replica"),
    };
    let threads = match spec.cluster.mode {
        // The replicas run here too: the spec's thread count (resolved
        // above) is the process's.
        Mode::Inproc => spec.cluster.worker_threads.expect("resolved above"),
        Mode::Process => spec.load.threads.max(1),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    eprintln!(
        "loadgen: experiment {name}, run {run_id} -> {}",
        run_dir.display()
    );
    let summary = rt.block_on(run_experiment(
        &spec,
        &name,
        &run_id,
        &run_dir,
        traces,
        &replica_bin,
    ));
    let summary =
        summary.with_context(|| format!("the run's files so far are in {}", run_dir.display()))?;
    println!(
        "{name} {run_id}: {:.0} ops/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, {} errors",
        summary.throughput_ops_s,
        summary.latency_us.p50,
        summary.latency_us.p99,
        summary.latency_us.p999,
        summary.errors
    );
    println!("report: {}", run_dir.join("report.md").display());
    if let Some(t) = &summary.trace {
        println!("trace:  {t} (open at https://ui.perfetto.dev)");
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_experiment(
    spec: &Spec,
    name: &str,
    run_id: &str,
    run_dir: &Path,
    traces: &Path,
    replica_bin: &Path,
) -> Result<results::Summary> {
    let lab = spec
        .trace
        .enabled
        .then(|| Arc::new(Lab::new(spec.trace.sample_every, spec.trace.events_max)));
    let profile_here = spec.profile.enabled && spec.cluster.mode == Mode::Inproc;
    let profile_replicas = spec.profile.enabled && spec.cluster.mode == Mode::Process;
    if spec.profile.enabled && !cfg!(feature = "profiling") {
        bail!(
            "[profile] enabled needs loadgen built with the `profiling` feature (make experiment builds it)"
        );
    }
    engine::instrumentation::sample_memory();
    let profiler = if profile_here {
        Some(profiler::Profiler::start()?)
    } else {
        None
    };
    let inproc_lab = if spec.cluster.mode == Mode::Inproc {
        lab.clone()
    } else {
        None
    };
    let mut cluster = cluster::Cluster::start(
        spec,
        run_id,
        run_dir,
        inproc_lab,
        replica_bin,
        profile_replicas,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("loadgen: interrupted; stopping the cluster");
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let died = Arc::new(AtomicBool::new(false));
    let watch = cluster.watch(died.clone(), stop.clone());
    let outcome = drive(spec, &mut cluster, lab.clone(), stop.clone()).await;
    // The fault network, if any, stays up (healed) until the replicas stop.
    interrupted.abort();
    if let Some(w) = watch {
        w.abort();
    }
    // A replica that died mid-run fails the run (with its log's end): the
    // figures would describe a smaller cluster than the spec.
    let dead = if died.load(Ordering::Relaxed) {
        cluster.check_alive().err()
    } else {
        None
    };
    // Let the replicas record the last acknowledgments, then stop them
    // whatever happened.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.leader();
    let reports = cluster.stop().await?;
    if let Some(e) = dead {
        return Err(e.context("a replica died during the run"));
    }
    let (steps, fault, cpu_measured) = outcome?;
    let flamegraph = match profiler {
        Some(p) => {
            let out = run_dir.join("flamegraph.svg");
            p.finish(&out)?;
            Some(out)
        }
        None => None,
    };
    let leader = leader
        .or_else(|| reports.iter().find(|r| r.role == "leader").map(|r| r.id))
        .or_else(|| {
            reports
                .iter()
                .filter(|r| r.id != 0)
                .max_by_key(|r| r.file.slots_proposed)
                .filter(|r| r.file.slots_proposed > 0)
                .map(|r| r.id)
        })
        .unwrap_or(0);
    let flamegraph = flamegraph.or_else(|| {
        if !profile_replicas || leader == 0 {
            return None;
        }
        let from = run_dir.join(format!("flamegraph-{leader}.svg"));
        let to = run_dir.join("flamegraph.svg");
        for ext in ["folded", "top.md"] {
            let _ = std::fs::copy(from.with_extension(ext), to.with_extension(ext));
        }
        std::fs::copy(&from, &to).ok().map(|_| to)
    });
    let loadgen_lab = match (&lab, spec.cluster.mode) {
        (Some(lab), Mode::Process) => {
            let (h, e) = lab.snapshot();
            Some((h, e, lab.dropped_events()))
        }
        _ => None,
    };
    let data = results::RunData {
        name,
        run_id,
        spec,
        steps: &steps,
        reports: &reports,
        loadgen_lab,
        usage: results::RunUsage {
            loadgen: ProcessUsage::now(),
            windows: cpu_measured,
        },
        leader,
        interrupted: stop.load(Ordering::Relaxed) && !died.load(Ordering::Relaxed),
        flamegraph,
        wall_s: STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64()),
        fault,
    };
    results::write(run_dir, traces, &data)
}

/// Waits for the cluster, connects the clients and runs every step.
async fn drive(
    spec: &Spec,
    cluster: &mut cluster::Cluster,
    lab: Option<Arc<Lab>>,
    stop: Arc<AtomicBool>,
) -> Result<(
    Vec<driver::StepResult>,
    Option<RunFault>,
    results::CpuWindows,
)> {
    cluster.wait_ready(Duration::from_secs(30)).await?;
    // CPU per process over each step's measurement: read at the end of
    // its warmup and when it ends.
    let cpu = Arc::new(cluster.cpu_probe());
    let cpu_start: Arc<std::sync::Mutex<Vec<(u32, f64)>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..spec.load.clients {
        let c = cluster
            .client(ClientOptions {
                outstanding_max: spec.load.outstanding as usize + 16,
                deadline: Duration::from_millis(spec.load.deadline_ms),
                lab: lab.clone(),
                ..ClientOptions::default()
            })
            .await?;
        clients.push(Arc::new(c));
    }
    let mut steps = Vec::new();
    let mut fault = None;
    let mut windows = results::CpuWindows::default();
    let all = spec.steps();
    for (i, offered) in all.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let label = match offered {
            Some(r) if all.len() > 1 => format!("step {}/{} at {r:.0}/s", i + 1, all.len()),
            Some(r) => format!("open loop at {r:.0}/s"),
            None => "closed loop".to_string(),
        };
        // The figures cover the measurement, not the warmup (of the first
        // step: a sweep's stage figures span all its steps); the CPU
        // window is each step's own.
        let reset = (i == 0).then(|| (cluster.figure_reset(), lab.clone()));
        let on_measure = {
            let (cpu, cpu_start) = (cpu.clone(), cpu_start.clone());
            Some(Box::new(move || {
                *cpu_start.lock().expect("cpu") = cpu();
                if let Some((replicas, lab)) = reset {
                    replicas();
                    if let Some(l) = lab {
                        l.reset();
                    }
                }
            }) as Box<dyn FnOnce() + Send>)
        };
        let availability =
            (i == 0 && spec.fault.kind != FaultKind::None).then(driver::Availability::new);
        let step = driver::run_step(
            &clients,
            &spec.load,
            *offered,
            &label,
            stop.clone(),
            on_measure,
            availability.clone(),
        );
        let s = match &availability {
            Some(a) => {
                let (s, what) = tokio::join!(step, inject(cluster, spec, a.clone()));
                fault = Some(fault_figures(spec, &s, what?, a));
                s
            }
            None => step.await,
        };
        if all.len() > 1 {
            eprintln!(
                "loadgen: {label}: {:.0} ops/s, p50 {:.0} µs, p99 {:.0} µs",
                s.throughput(),
                s.latency.value_at_quantile(0.5) as f64 / 1000.0,
                s.latency.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
        // An empty start: the step stopped before its warmup ended.
        let start = std::mem::take(&mut *cpu_start.lock().expect("cpu"));
        windows.add(&start, &cpu());
        steps.push(s);
    }
    for c in clients {
        if let Some(c) = Arc::into_inner(c) {
            c.close().await;
        }
    }
    Ok((steps, fault, windows))
}

/// The `[fault]`: at `at_s` into the measurement, cuts the leader off
/// through the fault network; `for_s` later, heals every link. Returns
/// what it did.
async fn inject(
    cluster: &cluster::Cluster,
    spec: &Spec,
    availability: Arc<driver::Availability>,
) -> Result<String> {
    let f = &spec.fault;
    tokio::time::sleep(Duration::from_secs_f64(spec.load.warmup_s + f.at_s)).await;
    let (net, _) = cluster
        .net
        .as_ref()
        .context("a [fault] without a fault network")?;
    let leader = cluster
        .leader_by_status()
        .await
        .context("no leader to cut off")?;
    let (cut, how) = match f.cut {
        CutKind::Blackhole => (LinkFault::BLACKHOLE, "black hole"),
        CutKind::Refuse => (LinkFault::REFUSE, "connections refused"),
    };
    let what = match f.kind {
        FaultKind::IsolateLeader => {
            net.isolate(leader, cut);
            format!(
                "leader r{leader} cut off from its peers both ways ({how}; its clients still reach it)"
            )
        }
        FaultKind::MuteLeader => {
            net.mute(leader, cut);
            format!("leader r{leader}'s messages to its peers dropped ({how}; theirs to it arrive)")
        }
        FaultKind::None => unreachable!("no fault to inject"),
    };
    availability.cut();
    eprintln!("loadgen: {what}, for {} s", f.for_s);
    tokio::time::sleep(Duration::from_secs_f64(f.for_s)).await;
    net.heal();
    eprintln!("loadgen: healed");
    Ok(what)
}

/// The fault's figures from the step it fell in.
fn fault_figures(
    spec: &Spec,
    step: &driver::StepResult,
    what: String,
    availability: &driver::Availability,
) -> RunFault {
    let measured_from = availability.started() + Duration::from_secs_f64(spec.load.warmup_s);
    let a = availability.figures(measured_from);
    RunFault {
        what,
        at_s: a.cut_s.unwrap_or(spec.fault.at_s),
        for_s: spec.fault.for_s,
        unavailable_ms: a.unavailable_ms,
        unavailable_from_s: a.unavailable_from_s,
        first_ok_after_ms: a.first_ok_after_cut_ms,
        per_second: step
            .intervals
            .iter()
            .filter(|(since, ..)| *since + 1e-3 >= spec.load.warmup_s)
            .map(|(since, len, h)| {
                (
                    since - spec.load.warmup_s,
                    h.len() as f64 / len,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                )
            })
            .collect(),
    }
}

fn check_trace(path: &Path, all_stages: bool) -> Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).context("not JSON")?;
    let events = v
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .context("no traceEvents array: not a Chrome JSON trace")?;
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    let mut flows = 0;
    for e in events {
        let ph = e
            .get("ph")
            .and_then(|p| p.as_str())
            .context("an event without ph")?;
        match ph {
            "X" => {
                for k in ["ts", "dur", "pid", "tid"] {
                    if e.get(k).is_none() {
                        bail!("a complete event without {k}: {e}");
                    }
                }
                let n = e
                    .get("name")
                    .and_then(|n| n.as_str())
                    .context("a slice without a name")?;
                *names.entry(n.to_string()).or_default() += 1;
            }
            "s" | "t" | "f" => flows += 1,
            "M" => {}
            other => bail!("unexpected phase {other}"),
        }
    }
    for (n, c) in &names {
        println!("{n:20} {c}");
    }
    println!("flow events: {flows}");
    let missing: Vec<&str> = Stage::ALL
        .iter()
        .filter(|s| !s.occasional())
        .map(|s| s.name())
        .filter(|n| !names.contains_key(*n))
        .collect();
    if all_stages && !missing.is_empty() {
        bail!("stages missing from the trace: {}", missing.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "profiling")]
mod profiler {
    use std::path::Path;

    use anyhow::{Result, anyhow};

    /// pprof sampling of this whole process: the flamegraph, its folded
    /// stacks and its hottest frames (`engine::instrumentation::profile`).
    pub struct Profiler(engine::instrumentation::profile::Profiler);

    impl Profiler {
        pub fn start() -> Result<Profiler> {
            engine::instrumentation::profile::Profiler::start()
                .map(Profiler)
                .map_err(|e| anyhow!(e))
        }

        pub fn finish(self, out: &Path) -> Result<()> {
            self.0.finish(out).map_err(|e| anyhow!(e))
        }
    }
}

#[cfg(not(feature = "profiling"))]
mod profiler {
    use std::path::Path;

    use anyhow::{Result, bail};

    pub struct Profiler;

    impl Profiler {
        pub fn start() -> Result<Profiler> {
            bail!("built without the `profiling` feature")
        }

        pub fn finish(self, _: &Path) -> Result<()> {
            Ok(())
        }
    }
}
