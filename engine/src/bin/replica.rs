//! `replica`: one replica of a cluster, serving the KV store.
//!
//! ```text
//! replica --config replica.toml [--bootstrap] [--chrome-trace FILE]
//!         [--lab-out FILE [--lab-sample-every N]] [--profile-out FILE] [--null-server]
//! replica --config replica.toml --status [--json]
//! replica --config replica.toml --change 1,2,4 [--change-timeout-s S]
//! ```
//! The `--lab-*`, `--profile-out` and `--null-server` flags are for the
//! experiment runner (`make experiment`): per-stage figures and a trace
//! written at exit, a flamegraph, and the no-replication ceiling server.
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`);
//! `--chrome-trace FILE` also records the replica's spans and events
//! (elections, checkpoints, catch-up, role changes, peer connections) as a
//! Chrome JSON trace (tracing-chrome), complete when it stops. SIGTERM or
//! SIGINT stops it cleanly (what it wrote is synced). With `--lab-out`,
//! SIGUSR1 resets the lab's figures (the runner's end of warmup). Exit codes: 0 after a
//! clean stop (or, 2 s after a configuration change removed it, a
//! retirement), 1 when storage fails (the replica stopped to stay safe),
//! 2 for a bad configuration or a log it cannot open.

/// mimalloc, not glibc's malloc, which gives freed pages back to the
/// kernel and faults them in again (experiments/RESULTS.md, issue 26).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use engine::core::Counter;
use engine::instrumentation::{Lab, LabFile, ProcessUsage, TRACE_EVENTS_MAX};
use engine::kv::KvStore;
use engine::runtime::file::{CONFIG_HELP, EXAMPLE, ReplicaFile};
use engine::runtime::{self, NodeError};
use engine::transport::net::Network;

#[derive(Parser, Debug)]
#[command(
    name = "replica",
    about = "One replica of a Multi-Paxos replicated key-value store.",
    long_about = "One replica of a Multi-Paxos replicated key-value store: it elects a leader with \
                  its peers, replicates commands with pipelining and batching, persists them to \
                  its log (nvm, wal or mem) and serves clients on the same port as its peers.",
    after_long_help = CONFIG_HELP
)]
struct Args {
    /// The replica's TOML configuration (see below for every setting).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "example_config"
    )]
    config: Option<PathBuf>,

    /// Create this replica's log: for a brand-new replica only. Refuses to
    /// overwrite an existing log; without it, a missing log is an error (a
    /// replica that lost its disk must not rejoin under its old identity).
    #[arg(long)]
    bootstrap: bool,

    /// Print a complete example configuration and exit.
    #[arg(long)]
    example_config: bool,

    /// Record this replica's own spans and events at INFO and above
    /// (elections, checkpoints, log catch-up, checkpoint fetches, role
    /// changes, peer connections) to FILE as a Chrome JSON trace: open it
    /// at https://ui.perfetto.dev. Buffered, and complete when the replica
    /// stops (SIGTERM); a replica killed with SIGKILL leaves the file cut
    /// short. Nothing per command.
    #[arg(long, value_name = "FILE")]
    chrome_trace: Option<PathBuf>,

    /// Measure every stage of every command (the lab) and write the
    /// figures, the trace and this process's CPU and memory use to FILE
    /// (JSON) when the replica stops.
    #[arg(long, value_name = "FILE")]
    lab_out: Option<PathBuf>,

    /// With --lab-out: trace one command in N (chosen by a hash of the
    /// command id, the same on every replica); 0: figures only, no trace.
    #[arg(long, value_name = "N", default_value_t = 0)]
    lab_sample_every: u64,

    /// Sample this process with pprof and write a flamegraph (SVG) to FILE
    /// when it stops (needs a build with the `profiling` feature).
    #[arg(long, value_name = "FILE")]
    profile_out: Option<PathBuf>,

    /// Answer every command at once from the state machine, without the
    /// log or replication: the lab's `null` server, measuring the ceiling
    /// of the client path. Never for a real deployment.
    #[arg(long)]
    null_server: bool,

    /// Do not run a replica: ask every member listed in --config for its
    /// status (commit, applied, role, leader, checkpoint, peers, storage)
    /// and print it.
    #[arg(long)]
    status: bool,

    /// With --status: print JSON (one object per member) instead of text.
    #[arg(long, requires = "status")]
    json: bool,

    /// Do not run a replica: ask the cluster (through the replicas listed in
    /// --config) to change its voting members to these ids, e.g. `1,2,4`,
    /// and wait until the change is in force. Replicas being added must be
    /// listed in every file (`spare = true` until added) and running with
    /// `join = true`; a removed replica exits once the change is in force.
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        conflicts_with = "status"
    )]
    change: Option<Vec<u32>>,

    /// Testing only: run with one of the simulator's planted protocol bugs
    /// (e.g. `quorum-too-small`), so a soak can show that it catches one.
    /// Never in a deployment.
    #[arg(long, value_name = "NAME", hide = true)]
    plant_bug: Option<String>,

    /// With --change: how long to wait for the outcome.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        requires = "change"
    )]
    change_timeout_s: u64,
}

/// How long the process waits at exit for the runtime's tasks (and
/// blocking work) to end after the replica stopped.
const RUNTIME_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    if args.example_config {
        print!("{EXAMPLE}");
        return ExitCode::SUCCESS;
    }
    let chrome_guard = match init_tracing(args.chrome_trace.as_deref()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    let code = serve(args);
    // The Chrome trace is complete once every span closed (the runtime is
    // gone) and the guard is dropped.
    drop(chrome_guard);
    code
}

/// Logs to stderr (`RUST_LOG`), and with `chrome_trace` the spans and
/// events at INFO and above to that file; the guard completes the file
/// when dropped.
fn init_tracing(
    chrome_trace: Option<&std::path::Path>,
) -> Result<Option<tracing_chrome::FlushGuard>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    let (chrome, guard) = match chrome_trace {
        None => (None, None),
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| format!("--chrome-trace {}: {e}", path.display()))?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(file)
                .trace_style(tracing_chrome::TraceStyle::Async)
                .include_args(true)
                .name_fn(Box::new(|e| match e {
                    // An event is named by its message ("leading"), not by
                    // its file and line.
                    tracing_chrome::EventOrSpan::Event(ev) => {
                        let mut m = Message(String::new());
                        ev.record(&mut m);
                        if m.0.is_empty() {
                            ev.metadata().name().to_string()
                        } else {
                            m.0
                        }
                    }
                    tracing_chrome::EventOrSpan::Span(s) => s.name().to_string(),
                }))
                .build();
            let layer = layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            (Some(layer), Some(guard))
        }
    };
    tracing_subscriber::registry().with(fmt).with(chrome).init();
    Ok(guard)
}

/// An event's `message` field.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

fn serve(args: Args) -> ExitCode {
    let path = args.config.expect("clap requires --config");
    let shown = path.display().to_string();
    let file = match ReplicaFile::load(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    let network = match file.network(&shown) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    if args.status {
        return print_status(&file, &network, args.json);
    }
    if let Some(members) = &args.change {
        return change(&file, &network, members, args.change_timeout_s);
    }
    let (mut cfg, spec) = match file.resolve(&shown) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    if args.lab_out.is_some() {
        cfg.lab = Some(Arc::new(Lab::new(args.lab_sample_every, TRACE_EVENTS_MAX)));
        // Peak heap apart from the NVM file's pages, for the report.
        engine::instrumentation::sample_memory();
    }
    cfg.null_server = args.null_server;
    if let Some(name) = &args.plant_bug {
        match engine::sim::Bug::parse(name) {
            Some(engine::sim::Bug::Core(bug)) => {
                tracing::error!(
                    ?bug,
                    "running with a PLANTED BUG (--plant-bug): testing only"
                );
                cfg.core.planted_bug = Some(bug);
            }
            _ => {
                eprintln!("replica: --plant-bug {name}: not a planted protocol bug");
                return ExitCode::from(2);
            }
        }
    }
    let profiler = match &args.profile_out {
        None => None,
        Some(out) => match Profiler::start(out.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("replica: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut builder = if file.worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(file.worker_threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let code = rt.block_on(run(cfg, network, spec, args.bootstrap, args.lab_out));
    // Every task (and the spans it holds) ends before the trace does; work
    // that does not end within the bound is left to the process's exit
    // (once seen: a retired replica logged "stopped" and stayed up 13 s,
    // in the membership walk test), and said so. On the current-thread
    // scheduler the tasks are dropped at once: only `spawn_blocking` work
    // (a checkpoint file being read or installed) can outlast the bound.
    let ending = std::time::Instant::now();
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
    if ending.elapsed() >= RUNTIME_SHUTDOWN_WAIT {
        eprintln!(
            "replica: tasks still running {:?} after the replica stopped: exiting without them",
            RUNTIME_SHUTDOWN_WAIT
        );
    }
    if let Some(p) = profiler
        && let Err(e) = p.finish()
    {
        eprintln!("replica: {e}");
    }
    code
}

async fn run(
    cfg: runtime::NodeConfig,
    network: Network,
    spec: runtime::StorageSpec,
    bootstrap: bool,
    lab_out: Option<PathBuf>,
) -> ExitCode {
    let lab = cfg.lab.clone();
    let (cluster, id) = (cfg.core.cluster, cfg.core.id);
    let opened = match runtime::open_storage(&spec, cluster, id, bootstrap) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        cluster = cluster.0,
        replica = %id,
        storage = spec.name(),
        listen = %cfg.listen,
        entries = opened.state.entries.len(),
        promised = %opened.state.promised,
        "starting"
    );
    let flush_mode = opened.flush_mode.clone();
    let node = match runtime::start(
        cfg,
        network,
        opened.storage,
        opened.state,
        KvStore::new(),
        opened.sync_thread,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %node.listen_addr(), "serving");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("replica: cannot handle SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    let mut usr1 =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("replica: cannot handle SIGUSR1: {e}");
                return ExitCode::from(2);
            }
        };
    let stop = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = tokio::signal::ctrl_c() => break true,
            end = wait_for_end(&node) => match end {
                End::Stopped => break false,
                End::Retired => {
                    let s = node.status();
                    tracing::info!(
                        epoch = s.epoch,
                        members = ?s.members,
                        "removed from the configuration: exiting"
                    );
                    break true;
                }
            },
            // The experiment runner's "warmup is over": start measuring afresh.
            _ = usr1.recv() => {
                if let Some(lab) = &lab {
                    lab.reset();
                    tracing::debug!("lab figures reset");
                }
            }
        }
    };
    let last = node.status();
    let result = if stop {
        tracing::info!("stopping");
        node.shutdown().await
    } else {
        node.join().await
    };
    if let (Some(lab), Some(out)) = (lab, lab_out) {
        let (hist, events) = lab.snapshot();
        let file = LabFile {
            process: id.0,
            name: format!("replica {}", id.0),
            role: last
                .role
                .map_or("stopped".to_string(), |r| format!("{r:?}").to_lowercase()),
            slots_proposed: last.counters.get(Counter::SlotsProposed),
            histograms: hist.encode(),
            events,
            events_dropped: lab.dropped_events(),
            usage: ProcessUsage::now(),
            flush_mode,
        };
        let written = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&out, bytes));
        if let Err(e) = written {
            eprintln!(
                "replica: cannot write the lab figures to {}: {e}",
                out.display()
            );
        }
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ NodeError::Storage(_)) => {
            eprintln!("replica: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("replica: {e}");
            ExitCode::from(2)
        }
    }
}

/// How long a removed replica keeps running: it answers clients `NotLeader`
/// (and the operator's change request, when it led) before it goes.
const RETIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a replica ends on its own.
enum End {
    /// Storage failed: it stopped to stay safe.
    Stopped,
    /// A configuration change removed it (`RETIRED_GRACE` ago).
    Retired,
}

/// Resolves when the node stops on its own (a storage failure), or
/// `RETIRED_GRACE` after a configuration change removed it.
async fn wait_for_end(node: &runtime::NodeHandle) -> End {
    loop {
        let s = node.status();
        if s.stopped {
            return End::Stopped;
        }
        if s.retired {
            tokio::time::sleep(RETIRED_GRACE).await;
            return End::Retired;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `replica --change`: asks the cluster for a new configuration and waits.
fn change(file: &ReplicaFile, network: &Network, members: &[u32], timeout_s: u64) -> ExitCode {
    use engine::runtime::admin::ConfigOutcome;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let addresses: Vec<(u32, String)> = file
        .members
        .iter()
        .map(|m| (m.id, m.address.clone()))
        .collect();
    let r = rt.block_on(engine::client::change_config(
        network,
        engine::core::ClusterId(file.cluster_id),
        &addresses,
        members,
        std::time::Duration::from_secs(timeout_s),
    ));
    match r {
        Ok(reply) if reply.outcome == ConfigOutcome::Done => {
            let ids: Vec<String> = reply.members.iter().map(u32::to_string).collect();
            println!(
                "configuration epoch {}: members {}",
                reply.epoch,
                ids.join(",")
            );
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprintln!(
                "replica: configuration change {:?}: {} (epoch {} in force, leader {:?})",
                reply.outcome, reply.message, reply.epoch, reply.leader
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("replica: configuration change: {e}");
            ExitCode::from(1)
        }
    }
}

/// pprof sampling of this process, written at the end as a flamegraph, its
/// folded stacks and its hottest frames (`engine::instrumentation::profile`).
#[cfg(feature = "profiling")]
struct Profiler {
    inner: engine::instrumentation::profile::Profiler,
    out: PathBuf,
}

#[cfg(feature = "profiling")]
impl Profiler {
    fn start(out: PathBuf) -> Result<Profiler, String> {
        let inner = engine::instrumentation::profile::Profiler::start()?;
        Ok(Profiler { inner, out })
    }

    fn finish(self) -> Result<(), String> {
        self.inner.finish(&self.out)
    }
}

#[cfg(not(feature = "profiling"))]
struct Profiler;

#[cfg(not(feature = "profiling"))]
impl Profiler {
    fn start(_: PathBuf) -> Result<Profiler, String> {
        Err(
            "--profile-out needs a replica built with the `profiling` feature \
             (make experiment builds one)"
                .into(),
        )
    }

    fn finish(self) -> Result<(), String> {
        Ok(())
    }
}

/// The leader's view of each member, then every replica's statistics.
fn print_health(reports: &[(u32, String, Result<runtime::StatusReport, String>)]) {
    let ok = || reports.iter().filter_map(|(_, _, r)| r.as_ref().ok());
    if let Some(l) = ok().find(|s| s.role == "leader") {
        println!();
        println!("health as the leader ({}) sees it:", l.id);
        println!(
            "{:>3} {:>5} {:>9} {:>10} {:>8} {:>11} {:>7}",
            "id", "link", "heard_ms", "commit", "lag", "outstanding", "queued"
        );
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for p in &l.peers {
            println!(
                "{:>3} {:>5} {:>9} {:>10} {:>8} {:>11} {:>7}",
                p.id,
                if p.connected { "up" } else { "down" },
                opt(p.heard_ms_ago),
                opt(p.commit),
                opt(p.lag_slots),
                opt(p.outstanding_slots.map(u64::from)),
                p.queued_frames
            );
        }
    }
    println!();
    println!(
        "{:>3} {:>10} {:>10} {:>6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>13} {:>15}",
        "id",
        "slots",
        "commands",
        "dups",
        "sessions",
        "log_writes",
        "log_MiB",
        "flushes",
        "flush_ms",
        "elections",
        "leaderless_ms",
        "leader_heard_ms"
    );
    for s in ok() {
        println!(
            "{:>3} {:>10} {:>10} {:>6} {:>8} {:>10} {:>9.1} {:>9} {:>9.1} {:>9} {:>13} {:>15}",
            s.id,
            s.slots_applied,
            s.commands_executed,
            s.duplicates_answered,
            s.sessions,
            s.log_writes,
            s.storage_bytes as f64 / (1u64 << 20) as f64,
            s.storage_flushes,
            s.storage_flush_ms,
            format!("{}/{}", s.elections_won, s.elections_started),
            s.leaderless_ms,
            s.leader_heard_ms_ago
                .map_or("-".to_string(), |v| v.to_string()),
        );
    }
}

/// `replica --status`: every member's status report.
fn print_status(file: &ReplicaFile, network: &Network, json: bool) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let cluster = engine::core::ClusterId(file.cluster_id);
    let reports: Vec<(u32, String, Result<runtime::StatusReport, String>)> = rt.block_on(async {
        let mut out = Vec::new();
        for m in &file.members {
            let r = engine::client::fetch_status(
                network,
                cluster,
                &m.address,
                std::time::Duration::from_secs(2),
            )
            .await
            .map_err(|e| e.to_string());
            out.push((m.id, m.address.clone(), r));
        }
        out
    });
    // The configuration as the replica that knows the newest one says
    // (none answering: the file's bootstrap configuration).
    let newest = reports
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .max_by_key(|s| s.epoch);
    let voters: Vec<u32> =
        newest.map_or_else(|| file.bootstrap_members().collect(), |s| s.voters.clone());
    if json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|(id, addr, r)| match r {
                Ok(s) => serde_json::to_value(s).expect("serializes"),
                Err(e) => serde_json::json!({"id": id, "address": addr, "error": e}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
    } else {
        if let Some(s) = newest {
            let ids: Vec<String> = s.voters.iter().map(u32::to_string).collect();
            println!("configuration epoch {}: members {}", s.epoch, ids.join(","));
        }
        println!(
            "{:>3} {:<22} {:<9} {:>6} {:>10} {:>10} {:>5} {:>10} {:>7} {:>6}  links (+ up, - down, :queued)",
            "id",
            "address",
            "role",
            "leader",
            "commit",
            "applied",
            "lag",
            "checkpoint",
            "clients",
            "queued"
        );
        let commit_max = reports
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok().map(|s| s.commit))
            .max()
            .unwrap_or(0);
        for (id, addr, r) in &reports {
            match r {
                Ok(s) => println!(
                    "{:>3} {:<22} {:<9} {:>6} {:>10} {:>10} {:>5} {:>10} {:>7} {:>6}  {}{}",
                    id,
                    addr,
                    if s.retired {
                        "retired"
                    } else if s.departing {
                        "departing"
                    } else if !s.voters.contains(id) {
                        "joining"
                    } else {
                        s.role.as_str()
                    },
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit,
                    s.applied,
                    commit_max.saturating_sub(s.applied),
                    s.checkpoint,
                    s.client_connections,
                    s.queued_commands,
                    s.peers
                        .iter()
                        .map(|p| {
                            let up = if p.connected { "+" } else { "-" };
                            match p.queued_frames {
                                0 => format!("{}{up}", p.id),
                                q => format!("{}{up}:{q}", p.id),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    if s.stopped { "  STOPPED" } else { "" }
                ),
                Err(e) => {
                    let what = if voters.contains(id) {
                        "unreachable"
                    } else {
                        "not a member, unreachable"
                    };
                    println!("{id:>3} {addr:<22} {what}: {e}")
                }
            }
        }
        print_health(&reports);
    }
    // Healthy when every voting member answers (spares and removed replicas
    // may be down).
    if reports
        .iter()
        .all(|(id, _, r)| r.is_ok() || !voters.contains(id))
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
