//! `paxos-tool`: offline tools for a stopped replica's files.
//!
//! ```text
//! paxos-tool checkpoint FILE --cluster N       verify a checkpoint; print what it holds
//! paxos-tool log --config r1.toml [--entries N] print a replica's log (promise, start, commit, entries)
//! paxos-tool replay --config r1.toml --out DIR  newest checkpoint + the committed log behind it
//!                                              → a newer checkpoint in DIR
//! ```
//! Exit status: 0 good, 1 something does not verify, 2 usage or I/O error.
//! `log` and `replay` recover the log as a restart does (a WAL's torn tail
//! is cut): run them on a stopped replica only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::checkpoint::{CheckpointError, CheckpointStore};
use engine::core::{Apply, ClusterId, ReplicaId, Slot, Value};
use engine::kv::KvStore;
use engine::runtime::file::ReplicaFile;
use engine::state_machine::{Executor, SessionLimits};

#[derive(Parser, Debug)]
#[command(
    name = "paxos-tool",
    about = "Offline tools for a replica's checkpoints and log."
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Verify a checkpoint file and print what it holds.
    Checkpoint {
        file: PathBuf,
        #[arg(long)]
        cluster: u64,
    },
    /// Print a replica's log, found through its configuration file.
    Log {
        #[arg(long)]
        config: PathBuf,
        /// Entries to list (first and last halves).
        #[arg(long, default_value_t = 20)]
        entries: usize,
    },
    /// Apply the committed log behind the newest checkpoint and write the
    /// result as a new checkpoint into `out`.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Args::parse().cmd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paxos-tool: {e}");
            ExitCode::from(2)
        }
    }
}

/// What a verification failure exits with.
fn verdict(e: CheckpointError) -> Result<ExitCode, String> {
    match e {
        CheckpointError::Io { .. } => Err(e.to_string()),
        e => {
            println!("BAD: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Checkpoint { file, cluster } => {
            let dir = file.parent().map(PathBuf::from).unwrap_or_default();
            let store = CheckpointStore {
                dir,
                cluster: ClusterId(cluster),
                replica: ReplicaId(0),
                retain: 1,
                block_bytes: engine::checkpoint::BLOCK_BYTES_DEFAULT,
            };
            let (info, body) = match store.read(&file) {
                Ok(x) => x,
                Err(e) => return verdict(e),
            };
            let mut ex = Executor::new(KvStore::new(), SessionLimits::default(), Slot::ZERO);
            match ex.restore(&body) {
                Ok(()) => {
                    println!(
                        "OK: {}: slot {} (every slot below it applied), {} bytes; KV state: {} keys, {} client sessions",
                        info.path.display(),
                        info.slot.0,
                        info.body_bytes,
                        ex.state_machine().len(),
                        ex.sessions()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!(
                        "BAD: {}: checksums verify but the state does not decode as the KV store: {e}",
                        info.path.display()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Log { config, entries } => {
            let (file, state) = open_log(&config)?;
            println!(
                "replica {} of cluster {}: promised {}, log start {}, commit {}, {} entries{}",
                file.replica_id,
                file.cluster_id,
                state.promised,
                state.log_start.0,
                state.commit.0,
                state.entries.len(),
                match &state.unprovable {
                    Some(u) => format!(", unprovable below {}", u.below.0),
                    None => String::new(),
                }
            );
            let n = state.entries.len();
            for (i, e) in state.entries.iter().enumerate() {
                if i == entries / 2 && n > entries {
                    println!("  ... {} more ...", n - entries);
                }
                if i >= entries / 2 && i < n.saturating_sub(entries - entries / 2) {
                    continue;
                }
                let what = match &e.value {
                    Value::Noop => "no-op".to_string(),
                    v => format!("{} commands", v.command_count()),
                };
                println!("  slot {:>10}  ballot {}  {what}", e.slot.0, e.ballot);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { config, out } => {
            let (file, state) = open_log(&config)?;
            let (cfg, _) = file
                .resolve(&config.display().to_string())
                .map_err(|e| e.to_string())?;
            let ck = cfg
                .checkpoint
                .ok_or("checkpoints are off in this configuration")?;
            let cluster = ClusterId(file.cluster_id);
            let id = ReplicaId(file.replica_id);
            let store = CheckpointStore::open(&ck.dir, cluster, id, ck.retain)
                .map_err(|e| e.to_string())?;
            let (found, skipped) = store.load_newest().map_err(|e| e.to_string())?;
            for e in skipped {
                eprintln!("paxos-tool: skipped: {e}");
            }
            let mut ex = Executor::new(KvStore::new(), SessionLimits::default(), state.log_start);
            if let Some((info, body)) = found {
                ex.restore(&body)
                    .map_err(|e| format!("{}: {e}", info.path.display()))?;
            } else if state.log_start > Slot::ZERO {
                return Err(format!(
                    "the log starts at slot {} and no checkpoint verifies",
                    state.log_start.0
                ));
            }
            let from = ex.next_slot();
            let mut replies = Vec::new();
            for e in &state.entries {
                if e.slot < ex.next_slot() {
                    continue;
                }
                if e.slot >= state.commit || e.slot != ex.next_slot() {
                    break; // not known chosen, or a hole: stop here
                }
                ex.apply(
                    &Apply {
                        slot: e.slot,
                        value: e.value.clone(),
                    },
                    &mut replies,
                );
                replies.clear();
            }
            let to = ex.next_slot();
            let mut body = Vec::new();
            ex.snapshot(&mut body);
            let out_store =
                CheckpointStore::open(&out, cluster, id, usize::MAX).map_err(|e| e.to_string())?;
            let (info, _) = out_store.write(to, &body).map_err(|e| e.to_string())?;
            println!(
                "replayed slots {}..{} onto the checkpoint at {}: wrote {} ({} bytes)",
                from.0,
                to.0,
                from.0,
                info.path.display(),
                info.body_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_log(config: &std::path::Path) -> Result<(ReplicaFile, engine::core::DurableState), String> {
    let file = ReplicaFile::load(config).map_err(|e| e.to_string())?;
    let (_, spec) = file
        .resolve(&config.display().to_string())
        .map_err(|e| e.to_string())?;
    let opened = engine::runtime::open_storage(
        &spec,
        ClusterId(file.cluster_id),
        ReplicaId(file.replica_id),
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok((file, opened.state))
}
