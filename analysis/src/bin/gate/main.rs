//! `gate`: the lab's regression gate (`make gate`).
//!
//! ```text
//! gate check [--baseline experiments/baselines/gate.json] [--skip-ratios] [--skip-runtime]
//! gate save  [--baseline ...]                      (make gate-baseline)
//! gate workload [--plant-slowdown] [--commands N]  (one measurement, JSON)
//! gate runtime [--commands N]                      (the runtime path once)
//! ```
//! See `analysis::gate` for what is gated and why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use analysis::gate::{self, GateBaseline, GateMeasured};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use engine::gate::{GateSpec, GateWorkload};

mod runtime;

/// The runtime path's instructions per command (see `runtime`).
const RUNTIME_FIGURE: &str = "runtime_instructions";

/// Counts allocations (the gate's "allocations per command").
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
#[command(name = "gate", about = "The lab's regression gate.")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    #[arg(long, default_value = "experiments/baselines/gate.json")]
    baseline: PathBuf,
    /// Only the deterministic figures (no wall-clock ratios).
    #[arg(long)]
    skip_ratios: bool,
    /// Without the runtime path's instructions (two runs under callgrind).
    #[arg(long)]
    skip_runtime: bool,
    /// Test-only: plant one extra allocation and copy per command.
    #[arg(long)]
    plant_slowdown: bool,
    /// Commands of the deterministic workload.
    #[arg(long, default_value_t = GateSpec::default().commands)]
    commands: u64,
    /// The loadgen binary for the ratios (default: next to this one).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// The replica binary for the ratios (default: next to this one).
    #[arg(long)]
    replica: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure and compare with the baseline; exit 1 on a regression.
    Check(Opts),
    /// Measure and write the baseline.
    Save(Opts),
    /// Run the deterministic workload once and print its counts (JSON).
    Workload {
        #[arg(long)]
        plant_slowdown: bool,
        #[arg(long, default_value_t = GateSpec::default().commands)]
        commands: u64,
    },
    /// Run the runtime-path workload once (an embedded cluster, puts
    /// through the client library) and print how many were answered.
    Runtime {
        #[arg(long, default_value_t = runtime::RUNTIME_COMMANDS_SHORT)]
        commands: u64,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    match Args::parse().cmd {
        Cmd::Workload {
            plant_slowdown,
            commands,
        } => {
            let m = workload(plant_slowdown, commands)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Runtime { commands } => {
            let answered = runtime::run(commands)?;
            println!("{}", serde_json::to_string(&answered)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check(o) => {
            let bytes = std::fs::read(&o.baseline).with_context(|| {
                format!(
                    "cannot read the baseline {} (make gate-baseline writes it)",
                    o.baseline.display()
                )
            })?;
            let mut base: GateBaseline = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a gate baseline", o.baseline.display()))?;
            if o.skip_runtime && base.figures.remove(RUNTIME_FIGURE).is_some() {
                eprintln!("gate: {RUNTIME_FIGURE} skipped (--skip-runtime)");
            }
            let m = measure(&o)?;
            if base.toolchain != m.toolchain {
                eprintln!(
                    "gate: warning: the baseline was taken with {:?}, this is {:?}; instruction counts move with the compiler (make gate-baseline)",
                    base.toolchain, m.toolchain
                );
            }
            let findings = gate::check(&base, &m);
            print!("{}", gate::render(&findings));
            Ok(if findings.iter().any(|f| f.failed) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Save(o) => {
            if o.skip_runtime {
                bail!(
                    "save measures every figure: --skip-runtime would drop {RUNTIME_FIGURE} from the baseline"
                );
            }
            let m = measure(&o)?;
            let base = gate::baseline_of(&m, profile());
            if let Some(d) = o.baseline.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&o.baseline, serde_json::to_vec_pretty(&base)?)?;
            print!(
                "{}",
                gate::render(&gate::check(&base, &m)).replace("gate: PASS", "gate: baseline saved")
            );
            println!("wrote {}", o.baseline.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
}

/// The deterministic workload in this process: counts per command.
fn workload(plant_slowdown: bool, commands: u64) -> Result<GateMeasured> {
    let spec = GateSpec {
        commands,
        planted_slowdown: plant_slowdown,
        ..GateSpec::default()
    };
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let mut w = GateWorkload::new(spec, &dir).context("setting up the gate workload")?;
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    let c = w.run();
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    let n = c.commands as f64;
    let mut m = GateMeasured {
        toolchain: toolchain(),
        ..GateMeasured::default()
    };
    for (k, v) in [
        ("allocations", (a1 - a0) as f64),
        ("alloc_bytes", (b1 - b0) as f64),
        ("messages", c.messages as f64),
        ("peer_bytes", c.peer_bytes as f64),
        ("client_bytes", c.client_bytes as f64),
        ("flushes", c.flushes as f64),
        ("storage_bytes", c.storage_bytes as f64),
    ] {
        m.per_command.insert(k.to_string(), v / n);
    }
    m.per_command.insert("commands".into(), n);
    Ok(m)
}

fn toolchain() -> String {
    Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Every figure: the workload here, its instructions under callgrind, and
/// (unless skipped) the ratios.
fn measure(o: &Opts) -> Result<GateMeasured> {
    let mut m = workload(o.plant_slowdown, o.commands)?;
    let commands = m.per_command.remove("commands").unwrap_or(1.0);
    let instr = instructions(o.plant_slowdown, o.commands)?;
    m.per_command
        .insert("instructions".into(), instr as f64 / commands);
    if !o.skip_runtime {
        m.per_command
            .insert(RUNTIME_FIGURE.into(), runtime_instructions()?);
    }
    if !o.skip_ratios {
        m.ratios = ratios(o)?;
    }
    Ok(m)
}

/// Instructions of the measured rounds, counted by callgrind.
fn instructions(plant_slowdown: bool, commands: u64) -> Result<u64> {
    let mut args = vec![
        "workload".to_string(),
        "--commands".into(),
        commands.to_string(),
    ];
    if plant_slowdown {
        args.push("--plant-slowdown".into());
    }
    callgrind(Some("*gate_measured_rounds*"), &args)
}

/// Instructions per command of the runtime path: the whole process
/// (every thread) counted for a short and a long run, and the difference
/// divided by the commands between them (see `runtime`'s comment).
fn runtime_instructions() -> Result<f64> {
    let run = |n: u64| {
        callgrind(
            None,
            &["runtime".into(), "--commands".into(), n.to_string()],
        )
    };
    let short = run(runtime::RUNTIME_COMMANDS_SHORT)?;
    let long = run(runtime::RUNTIME_COMMANDS_LONG)?;
    if long <= short {
        bail!("the runtime path's long run counted {long} instructions, the short one {short}");
    }
    let extra = runtime::RUNTIME_COMMANDS_LONG - runtime::RUNTIME_COMMANDS_SHORT;
    eprintln!("gate: runtime path: {short} instructions for the short run, {long} for the long");
    Ok((long - short) as f64 / extra as f64)
}

/// Runs this binary with `args` under callgrind; the instructions counted
/// (only inside functions matching `toggle`, when given).
fn callgrind(toggle: Option<&str>, args: &[String]) -> Result<u64> {
    let me = std::env::current_exe()?;
    let out = std::env::temp_dir().join(format!("gate-callgrind-{}.out", std::process::id()));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    if let Some(t) = toggle {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    cmd.arg(&me).args(args);
    let r = cmd.output().map_err(|e| {
        anyhow::anyhow!(
            "cannot run valgrind ({e}): install it (`make gate` does: apt-get install valgrind)"
        )
    })?;
    if !r.status.success() {
        bail!(
            "valgrind failed ({}): {}",
            r.status,
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let text = std::fs::read_to_string(&out).context("reading callgrind's output")?;
    let _ = std::fs::remove_file(&out);
    let total = gate::callgrind_total(&text).context("no total in callgrind's output")?;
    if total == 0 {
        bail!("callgrind counted nothing (the toggled symbol not found?): {args:?}");
    }
    Ok(total)
}

/// Same-run throughput ratios, interleaved A B A B.
fn ratios(o: &Opts) -> Result<std::collections::BTreeMap<String, Vec<f64>>> {
    let dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let loadgen = o.loadgen.clone().unwrap_or_else(|| dir.join("loadgen"));
    let replica = o.replica.clone().unwrap_or_else(|| dir.join("replica"));
    for b in [&loadgen, &replica] {
        if !b.exists() {
            bail!(
                "{} is missing: build it (`cargo build -p engine -p loadgen --bin replica --bin loadgen`)",
                b.display()
            );
        }
    }
    let scratch = std::env::temp_dir().join(format!("gate-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut out = std::collections::BTreeMap::new();
    // Classic mode on the same NVM log as the pipelined run: the ratio
    // measures pipelining and batching, not this machine's fsync.
    type Side<'a> = (&'a str, &'a [&'a str]);
    let pairs: [(&str, Side, Side); 2] = [
        (
            "ratio:pipelined_vs_classic_nvm",
            ("pipelined-nvm", &[]),
            ("classic", &["cluster.storage=nvm"]),
        ),
        (
            "ratio:tracing_on_vs_off",
            ("tracing-on", &[]),
            ("tracing-off", &[]),
        ),
    ];
    let mut n = 0;
    let mut run = |(spec, sets): (&str, &[&str])| -> Result<f64> {
        n += 1;
        let r = Command::new(&loadgen)
            .arg("run")
            .arg(format!("experiments/{spec}.toml"))
            .args(["--results"])
            .arg(scratch.join("results"))
            .arg("--traces")
            .arg(scratch.join("traces"))
            .arg("--replica-bin")
            .arg(&replica)
            .arg("--run-id")
            .arg(format!("gate-{n}"))
            .args(["--set", "load.warmup_s=0.5", "--set", "load.duration_s=2"])
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .output()
            .with_context(|| format!("running {}", loadgen.display()))?;
        if !r.status.success() {
            bail!(
                "experiment {spec} failed: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(
            scratch
                .join("results")
                .join(spec)
                .join(format!("gate-{n}"))
                .join("summary.json"),
        )?)?;
        let t = s["throughput_ops_s"].as_f64().context("no throughput")?;
        eprintln!("gate: {spec}: {t:.0} ops/s");
        Ok(t)
    };
    for (name, a, b) in pairs {
        let mut v = Vec::new();
        for _ in 0..2 {
            let ta = run(a)?;
            let tb = run(b)?;
            v.push(if tb > 0.0 { ta / tb } else { 0.0 });
        }
        out.insert(name.to_string(), v);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(out)
}
