//! `make soak`: replica processes behind a fault network, a concurrent KV
//! workload, and a nemesis that partitions, crashes and pauses replicas
//! for SECONDS; then a heal, final reads, and the history checked.
//!
//! ```text
//! soak [--seconds 120] [--replicas 3|5] [--storage nvm|wal] [--clients 6]
//!      [--seed N] [--plant-bug NAME]
//! ```
//! Ends with one line, `soak: N ops (ok O, failed F, unknown U), K faults
//! (P partitions, C crashes, S pauses), longest unavailability T ms,
//! linearizable`, and exits 0 only when the history is linearizable and
//! every fast read kept its session guarantee. Every replica it started
//! is gone when it exits, also on Ctrl-C or SIGTERM (and, by
//! `PR_SET_PDEATHSIG`, when it is killed).

mod checks;
mod nemesis;

use checks::*;
use nemesis::*;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use engine::client::{Client, ClientError, ClientOptions};
use engine::core::Slot;
use engine::kv::{KvOp, KvResult};
use engine::sim::linearizability::{self, HistoryOp};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use system_tests::{ProcCluster, id};

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Replica processes under partitions, crashes and pauses, checked for linearizability."
)]
struct Args {
    /// How long the nemesis runs.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Replica processes (3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Their log: nvm or wal.
    #[arg(long, default_value = "nvm")]
    storage: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: u64,
    /// Seed of the nemesis and the workload (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Run every replica with this planted protocol bug (e.g.
    /// `quorum-too-small`): the soak must then fail.
    #[arg(long)]
    plant_bug: Option<String>,
}

/// Keys of the workload: enough that each key's history stays small for
/// the checker, few enough that operations on a key overlap.
const KEYS: u64 = 16;
/// Client options: a long deadline, so an operation caught by a fault
/// retries through it and ends with a known outcome.
fn client_options() -> ClientOptions {
    ClientOptions {
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// What a client saw, with wall-clock times for the availability figures.
struct Record {
    history: Vec<HistoryOp>,
    /// (invoked, completed, is a write) of every operation through the
    /// log that succeeded (fast reads, served by any replica, do not show
    /// whether the cluster is available).
    oks: Vec<(Instant, Instant, bool)>,
    fast_reads: Vec<FastReadRecord>,
    ok: u64,
    failed: u64,
    unknown: u64,
    stale: u64,
}

struct FastReadRecord {
    client: u64,
    /// When it returned (the history's logical clock).
    returned: u64,
    key: Bytes,
    /// The highest slot this client had seen executed when it asked.
    session: Slot,
    /// The replica's applied point in the answer, and the value.
    applied: Slot,
    value: Option<Bytes>,
}

/// One operation's slot, if it executed (for the fast-read check).
struct Executed {
    op: KvOp,
    slot: Option<Slot>,
    result: Option<KvResult>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !matches!(args.replicas, 3 | 5) || !matches!(args.storage.as_str(), "nvm" | "wal") {
        eprintln!("soak: --replicas is 3 or 5, --storage nvm or wal");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            code = soak(args) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("soak: interrupted; stopping every replica");
                ExitCode::from(130)
            }
            _ = term.recv() => {
                eprintln!("soak: terminated; stopping every replica");
                ExitCode::from(143)
            }
        }
    })
    // The cluster (and with it every replica) is dropped with the soak's
    // future, on both paths.
}

async fn soak(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let n = args.replicas as usize;
    let mut c = ProcCluster::new("soak", 0x50a4_0000 + (seed & 0xffff), args.replicas);
    c.storage = if args.storage == "wal" { "wal" } else { "nvm" };
    // Checkpoints and truncation happen, and a replica away for a few
    // seconds catches up by checkpoint.
    c.checkpoint_every_slots = 1000;
    c.log_retained_slots_max = Some(2000);
    if let Some(bug) = &args.plant_bug {
        for a in c.replica_args.iter_mut() {
            a.extend(["--plant-bug".to_string(), bug.clone()]);
        }
    }
    c.behind_faultnet().await;
    c.start_all();
    eprintln!(
        "soak: seed {seed}, {n} replicas on {}, {} clients, {} s{}; logs in {}",
        args.storage,
        args.clients,
        args.seconds,
        args.plant_bug
            .as_ref()
            .map(|b| format!(", planted bug {b}"))
            .unwrap_or_default(),
        c.dir.display()
    );
    let start = Instant::now();
    c.leader(Duration::from_secs(10)).await;

    let stamp = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let client = c.client(client_options()).await;
        workers.push(tokio::spawn(worker(
            w,
            client,
            seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            stamp.clone(),
            stop.clone(),
        )));
    }

    let faults = nemesis(&mut c, seed, start, Duration::from_secs(args.seconds)).await;
    let nemesis_end = Instant::now();
    // Healed and whole: let the workload run on a little, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for w in workers {
        records.push(w.await.expect("a worker"));
    }
    // Final reads of every key, after everything else returned.
    let reader = c.client(client_options()).await;
    let mut finals = Vec::new();
    for k in 0..KEYS {
        let key = key(k);
        let invoke = stamp.fetch_add(1, Ordering::SeqCst);
        let r = reader.call(KvOp::Get { key: key.clone() }.encode()).await;
        let (response, witness) = match r {
            Ok(r) => (
                Some((
                    stamp.fetch_add(1, Ordering::SeqCst),
                    KvResult::decode(&r.payload).expect("a KV result"),
                )),
                Some(r.slot.0),
            ),
            Err(e) => {
                eprintln!("soak: the final read of {key:?} failed: {e}");
                (None, None)
            }
        };
        finals.push(HistoryOp {
            client: u64::MAX,
            op: KvOp::Get { key },
            invoke,
            response,
            witness,
        });
    }
    let finals_ok = finals.iter().all(|o| o.response.is_some());
    // Every replica ran to the end (one that died on a contract assert,
    // or of a bug, would otherwise go unnoticed); then they stop.
    let dead: Vec<usize> = (0..n).filter(|&i| !c.alive(i)).collect();
    for i in &dead {
        eprintln!(
            "soak: replica {} died; the end of its log:\n{}",
            id(*i),
            tail(&c.log(*i), 15)
        );
    }
    for i in 0..n {
        c.kill(i);
    }

    // Figures.
    let (mut ok, mut failed, mut unknown, mut stale) = (0, 0, 0, 0);
    let mut history = finals;
    let mut oks = Vec::new();
    let mut fast = Vec::new();
    for r in records {
        ok += r.ok;
        failed += r.failed;
        unknown += r.unknown;
        stale += r.stale;
        history.extend(r.history);
        oks.extend(r.oks);
        fast.extend(r.fast_reads);
    }
    // A fast read answered `Stale` was refused: it failed, definitely.
    let failed = failed + stale;
    let total = ok + failed + unknown;
    let count = |k| faults.iter().filter(|f| f.kind == k).count();
    let (longest, gap_from) = longest_gap(&oks, start + Duration::from_secs(1), nemesis_end);
    let during = faults
        .iter()
        .rev()
        .find(|f| f.at <= gap_from + Duration::from_millis(100))
        .map_or("no fault", |f| f.what.as_str());
    eprintln!(
        "soak: the longest unavailability, {} ms, began at {:.1} s (the last fault before it: {during})",
        longest.as_millis(),
        gap_from.duration_since(start).as_secs_f64()
    );
    let failovers = failover_times(&faults, &oks);
    for (what, t) in &failovers {
        eprintln!(
            "soak: failover: {what}: a write acknowledged {} ms after",
            t.as_millis()
        );
    }
    let probes: Vec<Duration> = faults.iter().filter_map(|f| f.probe).collect();
    let leader_faults = faults.iter().filter(|f| f.leader).count();
    for (what, figures) in [
        (
            "the workload's first write invoked after it acknowledged",
            failovers.iter().map(|f| f.1).collect::<Vec<_>>(),
        ),
        (
            "a fresh client's write to the other replicas acknowledged",
            probes,
        ),
    ] {
        eprintln!(
            "soak: failover (leader cut off, crashed or paused -> {what}): {}",
            median_max(figures, leader_faults)
        );
    }
    let fast_violations = check_fast_reads(&history, &fast);
    for v in fast_violations.iter().take(5) {
        eprintln!("soak: fast read broke its guarantee: {v}");
    }
    // On a thread of its own (the search recurses per operation, so it
    // gets a stack to match), awaited so Ctrl-C still ends the soak.
    let checked = {
        let h = history.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || {
                let _ = tx.send(linearizability::check(&h));
            })
            .expect("a checker thread");
        rx.await.expect("the checker")
    };
    let verdict = match &checked {
        Ok(()) if fast_violations.is_empty() => "linearizable".to_string(),
        Ok(()) => format!(
            "NOT linearizable ({} fast reads broke their session guarantee)",
            fast_violations.len()
        ),
        Err(e) if e.detail.starts_with("search gave up") => {
            format!("undecided (key {:?}: {})", e.key, e.detail)
        }
        Err(e) => {
            eprintln!(
                "soak: key {:?} ({} operations) is not linearizable:{}",
                e.key, e.ops, e.detail
            );
            "NOT linearizable".to_string()
        }
    };
    if !finals_ok {
        eprintln!("soak: some final read did not complete after the heal");
    }
    println!(
        "soak: {total} ops (ok {ok}, failed {failed}, unknown {unknown}), {} faults ({} partitions, {} crashes, {} pauses), longest unavailability {} ms, {verdict}",
        faults.len(),
        count(FaultKind::Partition),
        count(FaultKind::Crash),
        count(FaultKind::Pause),
        longest.as_millis(),
    );
    eprintln!("soak: {stale} of the failed were fast reads answered stale (refused)");
    if verdict == "linearizable" && finals_ok && dead.is_empty() {
        ExitCode::SUCCESS
    } else {
        // What was checked, for a closer look (one operation per line).
        let mut dump = String::new();
        for o in &history {
            dump.push_str(&format!("{o:?}\n"));
        }
        for r in &fast {
            dump.push_str(&format!(
                "FastRead {{ client: {}, returned: {}, key: {:?}, session: {}, applied: {}, value: {:?} }}\n",
                r.client, r.returned, r.key, r.session.0, r.applied.0, r.value
            ));
        }
        let _ = std::fs::write(c.dir.join("history.txt"), dump);
        eprintln!(
            "soak: the history is in {}",
            c.dir.join("history.txt").display()
        );
        eprintln!("soak: seed {seed}");
        c.keep_files();
        ExitCode::FAILURE
    }
}

/// "median M ms, max X ms over N of K" of `figures`.
fn median_max(mut figures: Vec<Duration>, of: usize) -> String {
    if figures.is_empty() {
        return format!("none of {of}");
    }
    figures.sort();
    format!(
        "median {} ms, max {} ms, over {} of {of}",
        figures[figures.len() / 2].as_millis(),
        figures[figures.len() - 1].as_millis(),
        figures.len()
    )
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn key(k: u64) -> Bytes {
    Bytes::from(format!("key{k}"))
}

/// One client: a random mix of puts, log reads, deletes, compare-and-swaps
/// and fast reads, one at a time, until `stop`.
async fn worker(
    w: u64,
    client: Client,
    seed: u64,
    stamp: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Record {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut rec = Record {
        history: Vec::new(),
        oks: Vec::new(),
        fast_reads: Vec::new(),
        ok: 0,
        failed: 0,
        unknown: 0,
        stale: 0,
    };
    // The last value this client saw per key (what its CAS expects).
    let mut seen: HashMap<u64, Option<Bytes>> = HashMap::new();
    let mut session = Slot::ZERO;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let k = rng.next_u64() % KEYS;
        let key = key(k);
        let value = Bytes::from(format!("c{w}-{n}"));
        let pick = rng.next_u64() % 100;
        if pick < 15 {
            match client
                .fast_read(KvOp::Get { key: key.clone() }.encode())
                .await
            {
                Ok(r) => {
                    rec.ok += 1;
                    let value = match KvResult::decode(&r.payload) {
                        Ok(KvResult::Value(v)) => v,
                        other => panic!("a fast read answered {other:?}"),
                    };
                    rec.fast_reads.push(FastReadRecord {
                        client: w,
                        returned: stamp.fetch_add(1, Ordering::SeqCst),
                        key,
                        session,
                        applied: r.slot,
                        value,
                    });
                }
                Err(ClientError::Stale { .. }) => rec.stale += 1,
                Err(ClientError::Timeout) => rec.unknown += 1,
                Err(e) => {
                    rec.failed += 1;
                    tracing_note(w, &e);
                }
            }
            continue;
        }
        let op = match pick {
            15..50 => KvOp::Put {
                key: key.clone(),
                value,
            },
            50..75 => KvOp::Get { key: key.clone() },
            75..85 => KvOp::Delete { key: key.clone() },
            _ => KvOp::Cas {
                key: key.clone(),
                expected: seen.get(&k).cloned().flatten(),
                new: value,
            },
        };
        let asked = Instant::now();
        let invoke = stamp.fetch_add(1, Ordering::SeqCst);
        let out = client.call(op.encode()).await;
        let response = match out {
            Ok(r) => {
                rec.ok += 1;
                session = session.max(r.slot);
                let result = KvResult::decode(&r.payload).expect("a KV result");
                match &result {
                    KvResult::Value(v) => {
                        seen.insert(k, v.clone());
                    }
                    KvResult::Cas(Err(v)) => {
                        seen.insert(k, v.clone());
                    }
                    _ => {}
                }
                rec.oks.push((asked, Instant::now(), !op.is_read()));
                Some((stamp.fetch_add(1, Ordering::SeqCst), result, r.slot))
            }
            // A session evicted from the replicas' table: the command may
            // have executed before (the client says so: unknown outcome).
            Err(ClientError::Timeout | ClientError::SessionExpired) => {
                rec.unknown += 1;
                None
            }
            Err(e) => {
                // Refused (never proposed): it did not execute.
                rec.failed += 1;
                tracing_note(w, &e);
                continue;
            }
        };
        rec.history.push(HistoryOp {
            client: w,
            op,
            invoke,
            witness: response.as_ref().map(|(_, _, s)| s.0),
            response: response.map(|(t, r, _)| (t, r)),
        });
    }
    client.disconnect().await;
    rec
}

/// A refusal worth seeing once (not per operation).
fn tracing_note(w: u64, e: &ClientError) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let kind = format!("{e}").chars().take(40).collect::<String>();
    let mut seen = SEEN.lock().expect("notes");
    if seen.len() < 8 && !seen.contains(&kind) {
        eprintln!("soak: client {w}: {e}");
        seen.push(kind);
    }
}
