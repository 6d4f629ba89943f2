//! The lab end to end, as a user runs it: `loadgen run` on committed
//! experiment specs, then the run directory and the trace are read back
//! and checked field by field (not with loadgen's own checker).
//!
//! These use the debug build of `loadgen` and `replica` (`make test`
//! builds both); the figures are not performance figures, only their
//! presence and consistency are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engine::instrumentation::Stage;
use serde_json::Value;
use system_tests::{analysis_binary, loadgen_binary, replica_binary};

/// A scratch directory removed on drop (also when an assertion fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("lab-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `loadgen run experiments/NAME.toml` into `out`, with overrides.
fn run(name: &str, out: &Path, run_id: &str, sets: &[&str]) -> Output {
    run_spec(
        &repo().join("experiments").join(format!("{name}.toml")),
        out,
        run_id,
        sets,
    )
}

/// `loadgen run SPEC` into `out`, with overrides.
fn run_spec(spec: &Path, out: &Path, run_id: &str, sets: &[&str]) -> Output {
    let mut cmd = Command::new(loadgen_binary());
    cmd.arg("run")
        .arg(spec)
        .arg("--results")
        .arg(out.join("results"))
        .arg("--traces")
        .arg(out.join("traces"))
        .arg("--run-id")
        .arg(run_id)
        .arg("--replica-bin")
        .arg(replica_binary());
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.output().expect("loadgen runs")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "loadgen failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {k} in {v}"))
}

/// Checks a latency summary: every quantile present, positive, in order.
fn quantiles_in_order(q: &Value) {
    let qs: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| f(q, k))
        .collect();
    assert!(qs[0] > 0.0, "{q}");
    assert!(
        qs.windows(2).all(|w| w[0] <= w[1]),
        "quantiles out of order: {q}"
    );
}

/// What a Chrome JSON trace holds: slice names per process, flow phases,
/// process names.
struct TraceContent {
    slices: BTreeMap<String, BTreeSet<u64>>,
    flow_phases: BTreeMap<u64, BTreeSet<String>>,
    process_names: BTreeMap<u64, String>,
}

fn read_trace(p: &Path) -> TraceContent {
    let v = read_json(p);
    let events = v["traceEvents"].as_array().expect("a traceEvents array");
    let mut t = TraceContent {
        slices: BTreeMap::new(),
        flow_phases: BTreeMap::new(),
        process_names: BTreeMap::new(),
    };
    for e in events {
        let pid = e["pid"].as_u64().expect("every event has a pid");
        match e["ph"].as_str().expect("every event has a phase") {
            "X" => {
                assert!(e["ts"].is_number() && e["dur"].is_number(), "{e}");
                assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
                t.slices
                    .entry(e["name"].as_str().expect("a named slice").to_string())
                    .or_default()
                    .insert(pid);
            }
            ph @ ("s" | "t" | "f") => {
                let id = e["id"].as_u64().expect("a flow id");
                t.flow_phases.entry(id).or_default().insert(ph.to_string());
            }
            "M" => {
                if e["name"] == "process_name" {
                    t.process_names
                        .insert(pid, e["args"]["name"].as_str().unwrap().to_string());
                }
            }
            other => panic!("unexpected phase {other} in {e}"),
        }
    }
    t
}

/// The README's main command, end to end: the run directory, the summary's
/// figures, and a trace with every stage and linked sampled commands.
#[test]
fn smoke_produces_a_run_directory_a_summary_and_a_complete_trace() {
    let s = Scratch::new("smoke");
    ok(&run("smoke", &s.0, "t1", &["load.duration_s=2"]));
    let dir = s.0.join("results/smoke/t1");
    for f in [
        "config.toml",
        "summary.json",
        "latency.hdr",
        "stages.csv",
        "stage_histograms.json",
        "report.md",
        "trace.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing from {}", dir.display());
    }
    let sum = read_json(&dir.join("summary.json"));
    assert_eq!(sum["experiment"], "smoke");
    assert_eq!(sum["run_id"], "t1");
    assert_eq!(sum["errors"], 0, "{sum}");
    // README's spec fields: `worker_threads` left out of an inproc spec is
    // the whole process's 2, and the run records what it ran.
    assert_eq!(sum["config"]["cluster"]["worker_threads"], 2, "{sum}");
    let ops = f(&sum, "ops");
    assert!(ops > 1000.0, "{sum}");
    let window = f(&sum, "window_s");
    assert!((1.5..4.0).contains(&window), "window {window}");
    let tput = f(&sum, "throughput_ops_s");
    assert!(
        (tput - ops / window).abs() <= 0.01 * tput,
        "throughput {tput} is not ops/window {}",
        ops / window
    );
    quantiles_in_order(&sum["latency_us"]);
    assert_eq!(f(&sum["latency_us"], "count"), ops);
    // Every stage of the table, with counts and quantiles; per command
    // stages count (about) every command.
    for st in Stage::ALL.iter().filter(|s| !s.occasional()) {
        let q = &sum["stages"][st.name()];
        assert!(f(q, "count") > 0.0, "no {} in the summary", st.name());
        quantiles_in_order(q);
    }
    assert!(f(&sum["stages"]["leader.queue"], "count") >= ops);
    // The resolved config is the spec with the override applied.
    assert_eq!(sum["config"]["load"]["duration_s"], 2.0);
    assert_eq!(sum["config"]["cluster"]["mode"], "inproc");
    let config_toml = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config_toml.contains("duration_s = 2.0"), "{config_toml}");
    // stages.csv: a header and rows of known stages.
    let csv = std::fs::read_to_string(dir.join("stages.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "stage")
        .expect("a stage column");
    let names: BTreeSet<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
    let mut rows = 0;
    for l in lines {
        let stage = l.split(',').nth(col).unwrap();
        assert!(names.contains(stage), "unknown stage {stage} in {l}");
        rows += 1;
    }
    assert!(rows > 100, "{rows} rows");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for st in Stage::ALL.iter().filter(|s| !s.occasional()) {
        assert!(
            report.contains(&format!("`{}`", st.name())),
            "report lacks {}",
            st.name()
        );
    }
    // The trace: the file under traces/ and the link in the run directory.
    let trace_file = s.0.join("traces/smoke-t1.json");
    assert!(trace_file.exists());
    assert_eq!(
        std::fs::canonicalize(dir.join("trace.json")).unwrap(),
        std::fs::canonicalize(&trace_file).unwrap()
    );
    let t = read_trace(&trace_file);
    for st in Stage::ALL.iter().filter(|s| !s.occasional()) {
        assert!(
            t.slices.contains_key(st.name()),
            "no {} slice in the trace",
            st.name()
        );
    }
    // One process track for the load generator and one per replica.
    let names: BTreeSet<&str> = t.process_names.values().map(String::as_str).collect();
    assert!(names.iter().any(|n| n.starts_with("loadgen")), "{names:?}");
    for r in 1..=3 {
        assert!(
            names.iter().any(|n| n.starts_with(&format!("replica {r}"))),
            "{names:?}"
        );
    }
    // Replica stages appear on replica tracks, client stages on the loadgen's.
    let loadgen_pid = *t
        .process_names
        .iter()
        .find(|(_, n)| n.starts_with("loadgen"))
        .unwrap()
        .0;
    assert_eq!(t.slices["client.send"], BTreeSet::from([loadgen_pid]));
    assert!(!t.slices["follower.persist"].contains(&loadgen_pid));
    assert!(
        t.slices["follower.persist"].len() >= 2,
        "both followers persist"
    );
    // Sampled commands are linked: flows that start, step and finish.
    let complete = t
        .flow_phases
        .values()
        .filter(|p| p.contains("s") && p.contains("t") && p.contains("f"))
        .count();
    assert!(complete >= 10, "{complete} complete flows");

    // The analysis of the run: a verdict, the path, plots.
    let a = Command::new(analysis_binary())
        .arg("report")
        .arg(&dir)
        .output()
        .unwrap();
    ok(&a);
    let stdout = String::from_utf8_lossy(&a.stdout);
    // One of the verdict's two forms: a segment, or (on a busy machine,
    // e.g. beside another test's cluster) the core-task stalls that most
    // of the slowest commands waited behind; either names its segment.
    let fig = read_json(&dir.join("analysis.json"));
    let kind = fig["bottleneck"]["kind"].as_str().unwrap();
    if kind == "stall" {
        assert!(
            stdout.contains("The tail is core-task stalls: "),
            "{stdout}"
        );
        assert_eq!(fig["bottleneck"]["stage"], "core.stall", "{fig}");
    } else {
        assert!(stdout.contains("The bottleneck is `"), "{stdout}");
        assert!(["queueing", "service"].contains(&kind), "{fig}");
    }
    let seg = fig["bottleneck"]["segment"]
        .as_str()
        .expect("a bottleneck segment");
    // The path's segments add up to each band's end to end.
    for b in fig["bands"].as_array().unwrap() {
        let sum: f64 = b["segments_us"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let e2e = f(b, "e2e_us");
        assert!(
            (sum + f(b, "unaccounted_us") - e2e).abs() < 0.01 * e2e,
            "{b}"
        );
        assert!(b["segments_us"][seg].is_number());
    }
    assert_eq!(fig["bands"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(dir.join("analysis.md")).unwrap();
    for h in [
        "## Stages",
        "## Where a command's time goes",
        "## CPU",
        "plot-stages.svg",
    ] {
        assert!(md.contains(h), "analysis.md lacks {h}");
    }
    for p in ["plot-latency-cdf.svg", "plot-stages.svg"] {
        let svg = std::fs::read_to_string(dir.join(p)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{p}");
    }
    assert!(
        std::fs::read_to_string(dir.join("report.md"))
            .unwrap()
            .contains("[analysis.md](analysis.md)")
    );
    // A baseline of the run, compared with the run: nothing moved.
    let base = s.0.join("smoke.json");
    ok(&Command::new(analysis_binary())
        .arg("baseline")
        .arg(&dir)
        .arg("--out")
        .arg(&base)
        .output()
        .unwrap());
    let c = Command::new(analysis_binary())
        .arg("compare")
        .arg(&base)
        .arg(&dir)
        .arg("--fail-on-regression")
        .output()
        .unwrap();
    ok(&c);
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(out.contains("Nothing moved beyond noise"), "{out}");
    assert!(dir.join("compare.md").exists() && dir.join("compare-stages.svg").exists());
}

/// Replica processes: each reports its lab file, the run stops them all,
/// and nothing is left behind in /dev/shm.
#[test]
fn a_process_cluster_run_reports_every_replica_and_leaves_nothing_running() {
    let s = Scratch::new("proc");
    // The spec without its `worker_threads` line: README's spec fields say
    // a process spec then gives each replica its default, 0 (tokio's
    // current-thread scheduler).
    let text = std::fs::read_to_string(repo().join("experiments/pipelined-nvm.toml")).unwrap();
    assert!(text.contains("\nworker_threads = 0\n"), "{text}");
    let spec = s.0.join("pipelined-nvm.toml");
    std::fs::write(&spec, text.replace("\nworker_threads = 0\n", "\n")).unwrap();
    let o = run_spec(
        &spec,
        &s.0,
        "t2",
        &[
            "load.duration_s=1",
            "load.warmup_s=0.3",
            "load.clients=2",
            "load.outstanding=16",
            "cluster.nvm_bytes=67108864",
        ],
    );
    ok(&o);
    let dir = s.0.join("results/pipelined-nvm/t2");
    let sum = read_json(&dir.join("summary.json"));
    assert_eq!(sum["errors"], 0, "{sum}");
    assert!(f(&sum, "ops") > 100.0, "{sum}");
    assert_eq!(sum["config"]["cluster"]["worker_threads"], 0, "{sum}");
    for r in 1..=3 {
        let file = std::fs::read_to_string(dir.join(format!("replica-{r}.toml"))).unwrap();
        assert!(
            file.lines().any(|l| l.trim() == "worker_threads = 0"),
            "replica {r}'s file: {file}"
        );
    }
    let procs = sum["processes"].as_array().unwrap();
    let replicas: Vec<&Value> = procs.iter().filter(|p| p["role"] != "load").collect();
    assert_eq!(replicas.len(), 3, "{procs:?}");
    assert_eq!(
        replicas.iter().filter(|p| p["role"] == "leader").count(),
        1,
        "{procs:?}"
    );
    // CPU per command, each process's within the measurement (less than
    // its whole run's), adding up to the total.
    let total = f(&sum, "cpu_us_per_command");
    let ops = f(&sum, "ops");
    let mut parts = 0.0;
    for p in procs {
        let measured = f(p, "cpu_measured_s");
        assert!(
            measured > 0.0 && measured <= f(p, "cpu_user_s") + f(p, "cpu_sys_s") + 0.02,
            "{p}"
        );
        assert!(
            (f(p, "cpu_us_per_command") - measured * 1e6 / ops).abs() < 1e-6,
            "{p}"
        );
        parts += f(p, "cpu_us_per_command");
    }
    assert!(
        total > 0.0 && (total - parts).abs() < 1e-6,
        "{total} vs {parts}: {sum}"
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("| CPU measured | CPU / command |"),
        "{report}"
    );
    assert!(
        report.contains(&format!("**{total:.2} µs per command**")),
        "{report}"
    );
    for p in &replicas {
        assert!(f(p, "cpu_user_s") > 0.0 && f(p, "rss_max_mib") > 1.0, "{p}");
        assert!(
            p["flush_mode"].is_string(),
            "an NVM replica names its flush: {p}"
        );
    }
    // Every stage (elections too: the figure reset at warmup keeps them)
    // but the WAL's, as every replica is on NVM.
    for st in Stage::ALL
        .iter()
        .filter(|s| **s != Stage::WalFsync && !s.occasional())
    {
        assert!(
            f(&sum["stages"][st.name()], "count") > 0.0,
            "no {}",
            st.name()
        );
    }
    // No replica of this run is still running, and the NVM files are gone.
    let marker = dir.to_string_lossy().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!cmd.contains(&marker), "left running: {cmd}");
        }
    }
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("paxos-lab-t2-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// README's `checkpoint-tail` pair as written (`make experiment
/// NAME=checkpoint-tail`, then `SET='cluster.checkpoint_every_slots=0'`),
/// shortened to 2 s: the first run's replicas checkpoint every 15,000
/// slots, the second's not at all, and both report the open-loop step with
/// the generator's send lag apart from the latency.
#[test]
fn checkpoint_tail_runs_with_and_without_checkpoints_as_the_readme_says() {
    let s = Scratch::new("ckpt-tail");
    let short = ["load.duration_s=2", "load.warmup_s=0.5"];
    for (id, extra, enabled) in [
        ("on", None, true),
        ("off", Some("cluster.checkpoint_every_slots=0"), false),
    ] {
        let mut sets: Vec<&str> = short.to_vec();
        sets.extend(extra);
        let o = run("checkpoint-tail", &s.0, id, &sets);
        ok(&o);
        let dir = s.0.join("results/checkpoint-tail").join(id);
        let sum = read_json(&dir.join("summary.json"));
        assert_eq!(sum["errors"], 0, "{sum}");
        let steps = sum["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1, "{sum}");
        assert_eq!(f(&steps[0], "offered_ops_s"), 120_000.0);
        let lag = &steps[0]["send_lag_us"];
        assert!(f(lag, "count") > 0.0, "no send lag recorded: {lag}");
        quantiles_in_order(lag);
        for r in 1..=3 {
            let cfg = std::fs::read_to_string(dir.join(format!("replica-{r}.toml"))).unwrap();
            // The replica file's `[checkpoint]` table, a line per key.
            let table: Vec<&str> = cfg
                .lines()
                .skip_while(|l| l.trim() != "[checkpoint]")
                .skip(1)
                .take_while(|l| !l.starts_with('['))
                .collect();
            assert!(
                table.contains(&format!("enabled = {enabled}").as_str()),
                "replica {r}: {table:?}"
            );
            if enabled {
                assert!(
                    table.contains(&"every_slots = 15000"),
                    "replica {r}: {table:?}"
                );
            }
        }
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(
            report.contains("| send lag p50 | send lag p99 |"),
            "{report}"
        );
    }
}

/// README's partition experiment (`make experiment NAME=partition-leader`),
/// shortened: the leader is cut off for 2 s, 1 s in; the report's Fault section
/// gives the window without a success and the failover, the summary has
/// the fault's figures, and the trace and the stage table have the
/// election that followed.
#[test]
fn partition_leader_reports_the_unavailability_window_and_traces_the_election() {
    let s = Scratch::new("partition");
    let o = run(
        "partition-leader",
        &s.0,
        "p1",
        &["load.warmup_s=0.5", "load.duration_s=5", "fault.at_s=1"],
    );
    ok(&o);
    let dir = s.0.join("results/partition-leader/p1");
    let sum = read_json(&dir.join("summary.json"));
    let fault = &sum["fault"];
    assert!(
        fault["what"]
            .as_str()
            .unwrap()
            .contains("cut off from its peers"),
        "{fault}"
    );
    assert!((f(fault, "at_s") - 1.0).abs() < 0.2, "{fault}");
    // The cut stopped every success for a while (the clients' attempts at
    // the old leader wait out their 1 s timeout; an election takes
    // 100-200 ms), and calls succeeded again before the heal.
    let gap = f(fault, "unavailable_ms");
    assert!(gap > 100.0 && gap < 2000.0, "{fault}");
    let failover = f(fault, "first_ok_after_ms");
    assert!(failover > 50.0 && failover < 2000.0, "{fault}");
    assert!(f(&sum, "ops") > 0.0);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("## Fault"), "{report}");
    assert!(report.contains("no call succeeded for"), "{report}");
    assert!(report.contains("(fault)"), "{report}");
    // A new leader was elected: its phase 1 is in the stage table and the
    // trace.
    // The old leader, behind the others' retained log (500 slots) after
    // the heal, catches up by checkpoint: that transfer too.
    let stages = sum["stages"].as_object().unwrap();
    let t = read_trace(Path::new(sum["trace"].as_str().unwrap()));
    for stage in [
        "p1a.send",
        "p1b.recv",
        "leader.recover",
        "catchup.checkpoint",
    ] {
        assert!(stages.contains_key(stage), "no {stage} in {stages:?}");
        assert!(t.slices.contains_key(stage), "no {stage} in the trace");
    }
    // Two replicas led: the one cut off, and the one elected meanwhile.
    let leaders: Vec<u64> = (1..=3)
        .filter(|r| {
            std::fs::read_to_string(dir.join(format!("replica-{r}.log")))
                .unwrap()
                .contains("leading ballot")
        })
        .collect();
    assert!(leaders.len() >= 2, "replicas that led: {leaders:?}");
}

/// A replica that stops (its NVM log fills: no checkpoints yet) fails the
/// run with the replica's own error, instead of a run that looks fine.
#[test]
fn a_replica_that_dies_fails_the_run_with_its_reason() {
    let s = Scratch::new("full");
    let o = run(
        "pipelined-nvm",
        &s.0,
        "t3",
        &[
            "load.duration_s=20",
            "load.warmup_s=0",
            "load.clients=2",
            "load.outstanding=16",
            "cluster.nvm_bytes=1048576",
        ],
    );
    assert!(!o.status.success(), "the run must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exited"), "{err}");
    assert!(
        err.contains("is full"),
        "the replica's reason is shown: {err}"
    );
}

/// README's `inproc-mem` row and its `checkpoint_every_slots` field as
/// written ("a replica on `mem` storage checkpoints into `nvm_dir`"): the
/// spec checkpoints every 4,096 slots; run shortened, with checkpoints
/// every 256 slots (the debug build commits fewer slots) and `nvm_dir` in
/// a scratch directory, every replica writes checkpoints there while the
/// run goes on. Before, replicas on `mem` never checkpointed and their
/// logs kept every slot of the run.
#[test]
fn inproc_mem_replicas_checkpoint_into_nvm_dir_as_the_readme_says() {
    let spec = std::fs::read_to_string(repo().join("experiments/inproc-mem.toml")).unwrap();
    assert!(
        spec.lines()
            .any(|l| l.trim() == "checkpoint_every_slots = 4096"),
        "{spec}"
    );
    assert!(
        spec.lines().any(|l| l.trim() == "storage = \"mem\""),
        "{spec}"
    );
    let s = Scratch::new("inproc-mem");
    let shm = s.0.join("nvm");
    std::fs::create_dir_all(&shm).unwrap();
    let nvm_dir = format!("cluster.nvm_dir={}", shm.display());
    // Watch nvm_dir while the run lasts (the runner removes its scratch
    // directory at the end): which replicas' checkpoint directories held
    // a file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (shm, stop) = (shm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for run in std::fs::read_dir(&shm).into_iter().flatten().flatten() {
                    for r in std::fs::read_dir(run.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        let name = r.file_name().to_string_lossy().into_owned();
                        let holds_one = std::fs::read_dir(r.path())
                            .map(|mut d| d.next().is_some())
                            .unwrap_or(false);
                        if name.ends_with(".checkpoints") && holds_one {
                            seen.insert(name);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            seen
        })
    };
    let o = run(
        "inproc-mem",
        &s.0,
        "ckpt",
        &[
            "load.warmup_s=0.5",
            "load.duration_s=3",
            "cluster.checkpoint_every_slots=256",
            &nvm_dir,
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    ok(&o);
    let sum = read_json(&s.0.join("results/inproc-mem/ckpt/summary.json"));
    assert_eq!(sum["errors"], 0, "{sum}");
    assert_eq!(sum["config"]["cluster"]["storage"], "mem", "{sum}");
    let want: BTreeSet<String> = (1..=3).map(|r| format!("r{r}.checkpoints")).collect();
    assert_eq!(
        seen,
        want,
        "checkpoint directories with a file in {}",
        shm.display()
    );
}
