//! The gate's runtime-path workload: what a command costs through
//! everything the lockstep workload (`engine::gate`) leaves out: the
//! client library, the wire between client and replicas and between
//! replicas, the core tasks, the in-process network and the KV store, on
//! the real runtime (an embedded three-replica cluster, in-memory logs).
//!
//! It runs on a current-thread tokio runtime, so under callgrind every
//! task runs on one thread in a repeatable order. It is not exact:
//! timers fire by wall clock (heartbeats, the client's and connections'
//! timers), the election's winner is random, and client ids are fresh.
//! The gate therefore runs it twice, with `RUNTIME_COMMANDS_SHORT` and
//! `RUNTIME_COMMANDS_LONG` commands, and takes the difference of the two
//! instruction counts per extra command: start-up, election and shutdown
//! cancel out, and what is left moved by about 1% between runs (three
//! checks: 16,508-16,555 against a baseline of 16,371, with 10 ms ticks).
//! The allocator is the gate's counting wrapper around the system's, not
//! the binaries' mimalloc.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use engine::client::ClientOptions;
use engine::core::ClusterId;
use engine::embedded::{EmbeddedCluster, EmbeddedOptions};
use engine::kv::{KvOp, KvResult};

/// Commands of the two runs the gate subtracts.
pub const RUNTIME_COMMANDS_SHORT: u64 = 4_096;
pub const RUNTIME_COMMANDS_LONG: u64 = 20_480;

/// Client sessions, and calls in flight per session (closed loop).
const CLIENTS: u64 = 4;
const OUTSTANDING: u64 = 16;
const VALUE_BYTES: usize = 64;
/// Distinct keys written.
const KEYS: u64 = 1000;

/// Keys read back after the puts, evenly spread over those written.
const KEYS_READ_BACK: u64 = 50;

/// What a run did: puts answered `Done`, and keys read back holding the
/// value written.
#[derive(Debug, serde::Serialize)]
pub struct Answered {
    pub answered: u64,
    pub read_back: u64,
}

/// Runs `commands` puts (rounded up to whole rounds of every caller)
/// through an embedded cluster, then reads `KEYS_READ_BACK` keys back
/// (through the log, as a client does). Every call must succeed and each
/// put be answered `Done`: a retry or a timeout would change what is
/// counted, and a lost write would make the figure meaningless.
pub fn run(commands: u64) -> Result<Answered> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(drive(commands))
}

async fn drive(commands: u64) -> Result<Answered> {
    let mut options = EmbeddedOptions::mem(ClusterId(0x6a7f), 3);
    // Ticks (heartbeats, election timers) come by the wall clock, and the
    // long run lasts longer: their work would count per command in
    // proportion to valgrind's speed on the machine. At 100 ms instead of
    // 10 they are a tenth of it (an election still within seconds).
    options.configure = Arc::new(|cfg| cfg.tick = Duration::from_millis(100));
    let cluster = EmbeddedCluster::start(options)
        .await
        .context("starting the embedded cluster")?;
    // Under valgrind everything is ~50 times slower: no attempt may time
    // out (a resend is work the gate would count).
    if cluster.leader(Duration::from_secs(120)).await.is_none() {
        bail!("no leader within 120 s");
    }
    let client_options = ClientOptions {
        attempt_timeout: Duration::from_secs(600),
        deadline: Duration::from_secs(1200),
        outstanding_max: OUTSTANDING as usize,
        ..ClientOptions::default()
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Arc::new(cluster.client(client_options.clone()).await?));
    }
    let callers = CLIENTS * OUTSTANDING;
    let per_caller = commands.div_ceil(callers);
    // The operations, encoded before: what the callers spend is not the
    // runtime path's.
    let value = Bytes::from(vec![0x5a; VALUE_BYTES]);
    let ops: Arc<Vec<Bytes>> = Arc::new(
        (0..KEYS)
            .map(|key| {
                KvOp::Put {
                    key: Bytes::from(format!("key-{key:06}")),
                    value: value.clone(),
                }
                .encode()
            })
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let client = clients[(caller % CLIENTS) as usize].clone();
        let ops = ops.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            for k in 0..per_caller {
                let key = (caller * per_caller + k) % KEYS;
                let r = client.call(ops[key as usize].clone()).await?;
                done += u64::from(KvResult::decode(&r.payload) == Ok(KvResult::Done));
            }
            Ok::<u64, engine::client::ClientError>(done)
        });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        answered += r.context("a caller panicked")??;
    }
    let written = KEYS.min(callers * per_caller);
    let mut read_back = 0;
    for i in 0..KEYS_READ_BACK {
        let key = i * written / KEYS_READ_BACK;
        let get = KvOp::Get {
            key: Bytes::from(format!("key-{key:06}")),
        };
        let r = clients[0].call(get.encode()).await?;
        read_back +=
            u64::from(KvResult::decode(&r.payload) == Ok(KvResult::Value(Some(value.clone()))));
    }
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    cluster.shutdown().await;
    Ok(Answered {
        answered,
        read_back,
    })
}
