//! End to end in one process: replicas on the runtime, the in-process
//! network, the client library.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use engine::client::{ClientError, ClientOptions};
use engine::core::{ClusterId, Counter, RoleKind, Slot};
use engine::embedded::{EmbeddedCluster, EmbeddedOptions};
use engine::kv::{KvOp, KvResult};
use engine::runtime::StorageSpec;
use engine::sim::linearizability::{self, HistoryOp};
use engine::storage::nvm::region::FlushMode;

fn put(k: &str, v: &str) -> Bytes {
    KvOp::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
    .encode()
}

fn get(k: &str) -> Bytes {
    KvOp::Get {
        key: Bytes::copy_from_slice(k.as_bytes()),
    }
    .encode()
}

fn result(b: &Bytes) -> KvResult {
    KvResult::decode(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_reads_and_writes() {
    let c = EmbeddedCluster::start(EmbeddedOptions::mem(ClusterId(1), 3))
        .await
        .unwrap();
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let client = c.client(ClientOptions::default()).await.unwrap();
    let w = client.call(put("a", "1")).await.unwrap();
    assert_eq!(result(&w.payload), KvResult::Done);
    let r = client.call(get("a")).await.unwrap();
    assert_eq!(
        result(&r.payload),
        KvResult::Value(Some(Bytes::from_static(b"1")))
    );
    assert!(r.slot > w.slot);
    // A fast read sees this session's write.
    let f = client.fast_read(get("a")).await.unwrap();
    assert_eq!(
        result(&f.payload),
        KvResult::Value(Some(Bytes::from_static(b"1")))
    );
    // A fast read asking for a slot not applied yet is refused as stale.
    let e = client
        .fast_read_at_least(get("a"), Some(Slot(1_000_000)))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Stale { .. }), "{e:?}");
    // The status follows within a tick.
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while c.status(leader).unwrap().commit < Slot(2) {
        assert!(
            std::time::Instant::now() < end,
            "status never showed the commits"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_connection() {
    let c = EmbeddedCluster::start(EmbeddedOptions::mem(ClusterId(2), 3))
        .await
        .unwrap();
    c.leader(Duration::from_secs(5)).await.expect("a leader");
    let client = Arc::new(c.client(ClientOptions::default()).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..500 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .call(put(&format!("k{}", i % 7), &i.to_string()))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(result(&t.await.unwrap().unwrap().payload), KvResult::Done);
    }
    c.shutdown().await;
}

/// Concurrent clients, the leader killed mid-run and restarted: the history
/// is linearizable and the restarted replica catches up from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_history_linearizable() {
    let dir =
        std::path::PathBuf::from(format!("/dev/shm/embedded-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = EmbeddedOptions::mem(ClusterId(3), 3);
    let base = dir.clone();
    opts.storage = Arc::new(move |id| StorageSpec::Nvm {
        path: base.join(format!("r{}", id.0)),
        bytes: 64 * 1024 * 1024,
        flush: FlushMode::detect(),
    });
    let mut c = EmbeddedCluster::start(opts).await.unwrap();
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let stamp = Arc::new(AtomicU64::new(0));
    let history = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let client = c
            .client(ClientOptions {
                attempt_timeout: Duration::from_millis(300),
                ..ClientOptions::default()
            })
            .await
            .unwrap();
        let (stamp, history) = (stamp.clone(), history.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..150u64 {
                let key = format!("k{}", i % 3);
                let (op, bytes) = if i % 2 == 0 {
                    let v = format!("w{w}-{i}");
                    (
                        KvOp::Put {
                            key: Bytes::from(key.clone()),
                            value: Bytes::from(v.clone()),
                        },
                        put(&key, &v),
                    )
                } else {
                    (
                        KvOp::Get {
                            key: Bytes::from(key.clone()),
                        },
                        get(&key),
                    )
                };
                let invoke = stamp.fetch_add(1, Ordering::SeqCst);
                let r = client.call(bytes).await;
                let response = match r {
                    Ok(resp) => Some((stamp.fetch_add(1, Ordering::SeqCst), result(&resp.payload))),
                    Err(ClientError::Timeout) => None,
                    Err(e) => panic!("worker {w}: {e}"),
                };
                history.lock().unwrap().push(HistoryOp {
                    client: w,
                    op,
                    invoke,
                    response,
                    witness: None,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.kill(leader);
    let t = std::time::Instant::now();
    let new = c
        .leader(Duration::from_secs(5))
        .await
        .expect("a new leader");
    assert_ne!(new, leader);
    eprintln!("new leader after {:?}", t.elapsed());
    for w in workers {
        w.await.unwrap();
    }
    c.restart(leader).await.unwrap();
    let target = c.status(new).unwrap().commit;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while c.status(leader).unwrap().applied < target {
        assert!(
            std::time::Instant::now() < end,
            "the restarted replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = history.lock().unwrap().clone();
    assert_eq!(h.len(), 600);
    linearizability::check(&h).unwrap();
    c.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The lab sees every stage of DESIGN.md's table on a live cluster (two
/// replicas on NVM, one on a WAL, so both flush stages occur), and the
/// trace links a sampled command across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_records_every_stage_and_links_sampled_commands() {
    use engine::instrumentation::{Lab, Stage};
    let dir = std::path::PathBuf::from(format!("/dev/shm/embedded-lab-{}", std::process::id()));
    let wal_dir = std::env::temp_dir().join(format!("embedded-lab-wal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&wal_dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(vec![dir.clone(), wal_dir.clone()]);
    let lab = Arc::new(Lab::new(1, 1_000_000));
    let mut opts = EmbeddedOptions::mem(ClusterId(4), 3);
    let (base, wal) = (dir.clone(), wal_dir.clone());
    opts.storage = Arc::new(move |id| {
        if id.0 == 3 {
            StorageSpec::Wal {
                dir: wal.clone(),
                segment_bytes: 8 * 1024 * 1024,
            }
        } else {
            StorageSpec::Nvm {
                path: base.join(format!("r{}", id.0)),
                bytes: 16 * 1024 * 1024,
                flush: FlushMode::detect(),
            }
        }
    });
    let node_lab = lab.clone();
    opts.configure = Arc::new(move |cfg| cfg.lab = Some(node_lab.clone()));
    let c = EmbeddedCluster::start(opts).await.unwrap();
    c.leader(Duration::from_secs(5)).await.expect("a leader");
    let client = Arc::new(
        c.client(ClientOptions {
            lab: Some(lab.clone()),
            ..ClientOptions::default()
        })
        .await
        .unwrap(),
    );
    let mut calls = Vec::new();
    for i in 0..400 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .call(put(&format!("k{}", i % 16), "v"))
                .await
                .unwrap();
        }));
    }
    for t in calls {
        t.await.unwrap();
    }
    // Not `close`: its session close is a command of its own at the
    // leader, and the counts below are the calls'.
    Arc::into_inner(client).unwrap().disconnect().await;
    // Followers persist and the last Accepted arrive after the replies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.shutdown().await;
    let (hist, events) = lab.snapshot();
    for s in Stage::ALL.iter().filter(|s| !s.occasional()) {
        assert!(hist.count(*s) > 0, "no {} recorded", s.name());
        assert!(
            events.iter().any(|e| e.stage == *s),
            "no {} traced",
            s.name()
        );
    }
    // Per command: every call's end to end, once.
    assert_eq!(hist.count(Stage::ClientRecv), 400);
    assert_eq!(hist.count(Stage::LeaderQueue), 400);
    assert_eq!(hist.count(Stage::LeaderReply), 400);
    // A sampled command's flow runs from the load generator through the
    // leader and a follower.
    let flow = events
        .iter()
        .find(|e| e.stage == Stage::FollowerPersist)
        .unwrap()
        .flow;
    assert_ne!(flow, 0);
    let path: std::collections::BTreeSet<_> = events
        .iter()
        .filter(|e| e.flow == flow)
        .map(|e| (e.process, e.stage))
        .collect();
    assert!(
        path.contains(&(0, Stage::ClientSend)) && path.contains(&(0, Stage::ClientRecv)),
        "{path:?}"
    );
    assert!(
        path.iter()
            .filter(|(p, _)| *p != 0)
            .map(|(p, _)| p)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 2,
        "{path:?}"
    );
    for (_, e) in events.iter().map(|e| (e.flow, e)) {
        assert!(e.dur_ns < 10_000_000_000, "implausible duration {e:?}");
    }
}

/// Removes the test's directories even when an assertion fails (an NVM
/// region in /dev/shm otherwise holds memory until reboot).
struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Three replicas on NVM logs of `log_bytes` in a scratch directory
/// (removed when the guard drops), checkpointing every `every_slots`
/// applied slots (2 kept); `tune` adjusts each configuration further.
fn checkpointing_cluster(
    name: &str,
    cluster: u64,
    log_bytes: u64,
    every_slots: u64,
    tune: fn(&mut engine::runtime::NodeConfig),
) -> (EmbeddedOptions, RemoveOnDrop) {
    let dir = std::path::PathBuf::from(format!("/dev/shm/embedded-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = EmbeddedOptions::mem(ClusterId(cluster), 3);
    let base = dir.clone();
    opts.storage = Arc::new(move |id| StorageSpec::Nvm {
        path: base.join(format!("r{}.nvm", id.0)),
        bytes: log_bytes,
        flush: FlushMode::detect(),
    });
    let base = dir.clone();
    opts.configure = Arc::new(move |cfg| {
        cfg.checkpoint = Some(engine::runtime::CheckpointConfig {
            dir: base.join(format!("ckpt-{}", cfg.core.id.0)),
            retain: 2,
            every_slots,
            every_bytes: cfg.core.log_retained_bytes_max / 4,
            every: Duration::from_secs(3600),
        });
        tune(cfg);
    });
    (opts, RemoveOnDrop(vec![dir]))
}

/// Puts `i` in `0..puts` wrote `value(i)` to key `k{i % keys}`: each key
/// holds the value of its last put.
async fn assert_last_puts_hold(
    client: &engine::client::Client,
    keys: u64,
    puts: u64,
    value: impl Fn(u64) -> String,
) {
    for k in 0..keys {
        // The last put to key k: the largest i < puts with i % keys == k.
        let last = k + (puts - 1 - k) / keys * keys;
        let r = client.call(get(&format!("k{k}"))).await.unwrap();
        assert_eq!(
            result(&r.payload),
            KvResult::Value(Some(Bytes::from(value(last)))),
            "key k{k}"
        );
    }
}

/// Kills and restarts every replica, waits for a leader, and connects a client.
async fn restart_all(c: &mut EmbeddedCluster) -> engine::client::Client {
    for id in 1..=3 {
        c.kill(engine::core::ReplicaId(id));
    }
    for id in 1..=3 {
        c.restart(engine::core::ReplicaId(id)).await.unwrap();
    }
    c.leader(Duration::from_secs(5))
        .await
        .expect("a leader after restart");
    c.client(ClientOptions::default()).await.unwrap()
}

/// Checkpoints let the log wrap: a log region far smaller than what is
/// written never fills, and after the whole cluster restarts every replica
/// rebuilds its state from its newest checkpoint plus the log behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_truncate_the_log_and_restore_the_state_after_a_restart() {
    // 1 MiB of log per replica; the workload writes about 4 MiB into each.
    let (opts, _cleanup) = checkpointing_cluster("ckpt", 5, 1 << 20, 64, |_| {});
    let mut c = EmbeddedCluster::start(opts).await.unwrap();
    c.leader(Duration::from_secs(5)).await.expect("a leader");
    let client = Arc::new(c.client(ClientOptions::default()).await.unwrap());
    const KEYS: u64 = 96; // a multiple of the 8 workers: each key has one writer
    const PUTS: u64 = 30_000;
    let value = |i: u64| format!("{i:0>120}");
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            // Each worker owns the keys k ≡ w (mod 8): its writes to a key
            // are in order, so the last one is the final value.
            let mut i = w;
            while i < PUTS {
                let r = client
                    .call(put(&format!("k{}", i % KEYS), &value(i)))
                    .await
                    .unwrap();
                assert_eq!(result(&r.payload), KvResult::Done);
                i += 8;
            }
        }));
    }
    for t in workers {
        t.await.unwrap();
    }
    Arc::into_inner(client).unwrap().close().await;
    for id in 1..=3 {
        let s = c.status(engine::core::ReplicaId(id)).unwrap();
        assert!(!s.stopped, "replica {id} stopped: {s:?}");
        assert!(
            s.checkpoints_written >= 2 && s.checkpoint > Slot::ZERO,
            "replica {id} took no checkpoint: {s:?}"
        );
        assert_eq!(s.checkpoints_failed, 0);
    }
    // Restart the whole cluster from storage and checkpoints.
    let client = restart_all(&mut c).await;
    assert_last_puts_hold(&client, KEYS, PUTS, value).await;
    client.close().await;
    c.shutdown().await;
}

/// A log of large commands stays bounded in memory by bytes, not only by
/// slot count: every `every_bytes` of applied payload a checkpoint is
/// taken, and the slots it covers leave memory once the log holds more
/// than `log_retained_bytes_max`; restarted, the cluster has every value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_in_memory_is_bounded_by_bytes_through_checkpoints() {
    const BYTES_MAX: u64 = 256 << 10;
    // Checkpoints by slot count never come: only the byte trigger works.
    let (opts, _cleanup) = checkpointing_cluster("bytes", 12, 8 << 20, 60_000, |cfg| {
        cfg.core.log_retained_bytes_max = BYTES_MAX;
        cfg.checkpoint.as_mut().unwrap().every_bytes = BYTES_MAX / 4;
    });
    let mut c = EmbeddedCluster::start(opts).await.unwrap();
    c.leader(Duration::from_secs(5)).await.expect("a leader");
    let client = Arc::new(c.client(ClientOptions::default()).await.unwrap());
    // 2,000 puts of 1 KiB values: ~8 times the bound in each log.
    let value = |i: u64| format!("{i:0>1024}");
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            for i in (w..2_000).step_by(8) {
                let r = client
                    .call(put(&format!("k{}", i % 64), &value(i)))
                    .await
                    .unwrap();
                assert_eq!(result(&r.payload), KvResult::Done);
            }
        }));
    }
    for t in workers {
        t.await.unwrap();
    }
    Arc::into_inner(client).unwrap().close().await;
    for id in 1..=3 {
        let s = c.status(engine::core::ReplicaId(id)).unwrap();
        assert!(s.checkpoints_written >= 4, "replica {id}: {s:?}");
        assert!(
            s.counters.get(Counter::LogCompactedByBytes) > 0,
            "replica {id} never compacted by bytes: {s:?}"
        );
        // Within the bound, give or take the window in flight at the last
        // status update.
        assert!(
            s.log_bytes <= BYTES_MAX + (64 << 10),
            "replica {id}: {} bytes",
            s.log_bytes
        );
        assert!(
            s.log_start > Slot::ZERO && s.log_start <= s.checkpoint,
            "{s:?}"
        );
    }
    let client = restart_all(&mut c).await;
    assert_last_puts_hold(&client, 64, 2_000, value).await;
    client.close().await;
    c.shutdown().await;
}

/// A replica that was down while the others wrote far past what their logs
/// keep catches up by fetching a checkpoint from the leader, continues from
/// the log, and then serves fast reads of the latest values.
/// Starts the cluster, waits for a leader, kills a follower (the lagger)
/// and connects a client.
async fn start_with_a_follower_down(
    opts: EmbeddedOptions,
) -> (
    EmbeddedCluster,
    engine::core::ReplicaId,
    engine::core::ReplicaId,
    engine::client::Client,
) {
    let mut c = EmbeddedCluster::start(opts).await.unwrap();
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let lagger = engine::core::ReplicaId(if leader.0 == 3 { 2 } else { 3 });
    c.kill(lagger);
    let client = c.client(ClientOptions::default()).await.unwrap();
    (c, leader, lagger, client)
}

/// Gives every replica of `opts` one lab that traces the rare stages only
/// (no command is sampled).
fn traced_rare_stages(opts: &mut EmbeddedOptions) -> Arc<engine::instrumentation::Lab> {
    let lab = Arc::new(engine::instrumentation::Lab::new(1 << 60, 100_000));
    let (inner, node_lab) = (opts.configure.clone(), lab.clone());
    opts.configure = Arc::new(move |cfg| {
        inner(cfg);
        cfg.lab = Some(node_lab.clone());
    });
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_truncated_log_catches_up_by_checkpoint() {
    // Keep 128 applied slots in memory, checkpoint every 32.
    let (mut opts, _cleanup) = checkpointing_cluster("catchup", 6, 4 << 20, 32, |cfg| {
        cfg.core.log_retained_slots_max = 128;
        cfg.core.promise_lag_slots_max = 128;
    });
    let lab = traced_rare_stages(&mut opts);
    let (mut c, leader, lagger, client) = start_with_a_follower_down(opts).await;
    const KEYS: u64 = 16;
    const PUTS: u64 = 3_000;
    let value = |i: u64| format!("v{i}");
    let mut commit = Slot::ZERO;
    for i in 0..PUTS {
        let r = client
            .call(put(&format!("k{}", i % KEYS), &value(i)))
            .await
            .unwrap();
        assert_eq!(result(&r.payload), KvResult::Done);
        commit = commit.max(r.slot.next());
    }
    assert!(commit.0 > 1_000, "the log moved far past what is retained");
    c.restart(lagger).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.status(lagger).unwrap();
        if s.applied >= commit {
            assert!(!s.stopped);
            // One install brings it within the leader's log (nothing is
            // written meanwhile).
            assert_eq!(s.checkpoints_installed, 1, "{s:?}");
            assert!(s.counters.get(Counter::CheckpointsInstalled) >= 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The leader's status is published every tick: wait for the one that
    // counts the answer it gave.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c
        .status(leader)
        .unwrap()
        .counters
        .get(Counter::CatchupNeedsCheckpoint)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never said a checkpoint was needed: {:?}",
            c.status(leader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More writes: the caught-up replica follows the log again.
    let mut last_slot = Slot::ZERO;
    for i in PUTS..PUTS + 100 {
        let r = client
            .call(put(&format!("k{}", i % KEYS), &value(i)))
            .await
            .unwrap();
        last_slot = last_slot.max(r.slot);
    }
    client.close().await;
    // Fast reads at the caught-up replica see every key's last value.
    let addr = c.addresses()[(lagger.0 - 1) as usize].clone();
    let reader = engine::client::Client::connect(
        c.network.clone(),
        c.cluster(),
        vec![addr],
        ClientOptions::default(),
    )
    .await
    .unwrap();
    // Every write above executed below this slot.
    let min = last_slot.next();
    for k in 0..KEYS {
        let last = k + (PUTS + 100 - 1 - k) / KEYS * KEYS;
        let r = loop {
            match reader
                .fast_read_at_least(get(&format!("k{k}")), Some(min))
                .await
            {
                Err(ClientError::Stale { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                r => break r.unwrap(),
            }
        };
        assert_eq!(
            result(&r.payload),
            KvResult::Value(Some(Bytes::from(value(last)))),
            "key k{k}"
        );
    }
    reader.close().await;
    c.shutdown().await;
    // The catch-up is in the trace: the checkpoint fetch, then the slots
    // fetched from the leader's log, on the lagging replica's track.
    use engine::instrumentation::Stage;
    let (_, events) = lab.snapshot();
    let on_lagger = |stage: Stage| {
        events
            .iter()
            .filter(|e| e.stage == stage && e.process == lagger.0)
            .collect::<Vec<_>>()
    };
    let fetches = on_lagger(Stage::CatchupCheckpoint);
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert!(
        fetches[0].slot > 1_000 && fetches[0].dur_ns > 0,
        "{fetches:?}"
    );
    // Slots between the checkpoint and the leader's commit point, if the
    // checkpoint fell short of it, come by catch-up requests, each a span
    // ending beyond the checkpoint (none when the checkpoint reached the
    // commit point: later slots then arrive as ordinary Accepts).
    let slots = on_lagger(Stage::CatchupSlots);
    assert!(
        slots.iter().all(|e| e.slot > fetches[0].slot),
        "a catch-up span behind the installed checkpoint: {slots:?}"
    );
}

/// A follower that was down while the others wrote less than their logs
/// keep catches up from the leader's log by catch-up requests; the lab
/// traces them as `catchup.slots` spans on its track, the last ending at
/// (or beyond) the commit point it had to reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_catches_up_from_the_log_and_the_trace_shows_it() {
    use engine::instrumentation::Stage;
    // No checkpoint is due: everything the follower missed is in the log.
    let (mut opts, _cleanup) = checkpointing_cluster("catchup-log", 9, 4 << 20, 60_000, |_| {});
    let lab = traced_rare_stages(&mut opts);
    let (mut c, _, lagger, client) = start_with_a_follower_down(opts).await;
    let mut commit = Slot::ZERO;
    for i in 0..300 {
        let r = client.call(put(&format!("k{}", i % 8), "v")).await.unwrap();
        commit = commit.max(r.slot.next());
    }
    client.close().await;
    c.restart(lagger).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.status(lagger).unwrap().applied < commit {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not catch up: {:?}",
            c.status(lagger)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = c.status(lagger).unwrap();
    assert_eq!(s.checkpoints_installed, 0, "caught up from the log: {s:?}");
    c.shutdown().await;
    let (_, events) = lab.snapshot();
    let spans: Vec<_> = events
        .iter()
        .filter(|e| e.stage == Stage::CatchupSlots && e.process == lagger.0)
        .collect();
    assert!(
        spans.iter().any(|e| e.slot >= commit.0 && e.dur_ns > 0),
        "no catch-up span reaching {commit}: {spans:?}"
    );
}

/// What the recording application was told, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Told {
    Secondary,
    Primary,
    /// Primary recovered, with the number of commands executed by then.
    Recovered(u64),
    Shutdown,
}

/// The key-value store, recording every notification and answering the
/// veto and checkpoint questions from switches the test holds.
struct Recorder {
    kv: engine::kv::KvStore,
    executed: u64,
    told: Arc<std::sync::Mutex<Vec<Told>>>,
    veto: Arc<std::sync::atomic::AtomicBool>,
    checkpoint_now: Arc<std::sync::atomic::AtomicBool>,
}

impl engine::state_machine::StateMachine for Recorder {
    fn apply(&mut self, op: &[u8], result: &mut bytes::BytesMut) {
        self.executed += 1;
        self.kv.apply(op, result)
    }
    fn query(&self, query: &[u8], result: &mut bytes::BytesMut) {
        self.kv.query(query, result)
    }
    fn snapshot(&self, out: &mut Vec<u8>) {
        self.kv.snapshot(out)
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), engine::state_machine::SnapshotError> {
        self.kv.restore(snapshot)
    }
    fn checkpoint_requested(&mut self) -> bool {
        self.checkpoint_now.swap(false, Ordering::Relaxed)
    }
    fn became_primary(&mut self) {
        self.told.lock().unwrap().push(Told::Primary);
    }
    fn primary_recovered(&mut self) {
        self.told
            .lock()
            .unwrap()
            .push(Told::Recovered(self.executed));
    }
    fn became_secondary(&mut self) {
        self.told.lock().unwrap().push(Told::Secondary);
    }
    fn shutdown(&mut self) {
        self.told.lock().unwrap().push(Told::Shutdown);
    }
    fn can_become_primary(&mut self) -> bool {
        !self.veto.load(Ordering::Relaxed)
    }
}

/// RSL's state-machine contract end to end: the veto decides who may
/// lead, the primary is told it leads and then that it recovered (with
/// every acknowledged write executed), relinquishing hands leadership to
/// another member, an application-requested checkpoint is taken, and a
/// clean stop is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_is_told_its_role_vetoes_leading_relinquishes_and_asks_for_checkpoints() {
    use engine::core::ReplicaId;
    use std::sync::atomic::AtomicBool;
    // Checkpoints only when asked: the size and time triggers are far off.
    let (mut opts, _cleanup) = checkpointing_cluster("contract", 8, 4 << 20, 60_000, |_| {});
    let told: Vec<_> = (0..3)
        .map(|_| Arc::new(std::sync::Mutex::new(Vec::new())))
        .collect();
    let veto: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let checkpoint_now: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    // Replicas 1 and 2 may not lead.
    veto[0].store(true, Ordering::Relaxed);
    veto[1].store(true, Ordering::Relaxed);
    let (t, v, k) = (told.clone(), veto.clone(), checkpoint_now.clone());
    opts.state_machine = Some(Arc::new(move |id: ReplicaId| {
        let i = (id.0 - 1) as usize;
        Box::new(Recorder {
            kv: engine::kv::KvStore::new(),
            executed: 0,
            told: t[i].clone(),
            veto: v[i].clone(),
            checkpoint_now: k[i].clone(),
        }) as Box<dyn engine::state_machine::StateMachine + Send>
    }));
    let mut c = EmbeddedCluster::start(opts).await.unwrap();
    let first = c.leader(Duration::from_secs(5)).await.expect("a leader");
    assert_eq!(first, ReplicaId(3), "only replica 3 may lead");
    let client = c.client(ClientOptions::default()).await.unwrap();
    for i in 0..20 {
        client.call(put("k", &i.to_string())).await.unwrap();
    }
    // Replica 3 was told: secondary at start, primary, then recovered.
    let wait_told = |i: usize, n: usize| {
        let told = told[i].clone();
        async move {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let t = told.lock().unwrap().clone();
                if t.len() >= n || std::time::Instant::now() > end {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let t3 = wait_told(2, 3).await;
    assert_eq!(&t3[..2], &[Told::Secondary, Told::Primary], "{t3:?}");
    assert!(matches!(t3[2], Told::Recovered(_)), "{t3:?}");
    for t in &told[..2] {
        assert_eq!(*t.lock().unwrap(), vec![Told::Secondary]);
    }
    // An application-requested checkpoint is taken although no trigger is due.
    assert_eq!(c.status(ReplicaId(1)).unwrap().checkpoints_written, 0);
    checkpoint_now[0].store(true, Ordering::Relaxed);
    client.call(put("k", "after")).await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while c.status(ReplicaId(1)).unwrap().checkpoints_written == 0 {
        assert!(
            std::time::Instant::now() < end,
            "the requested checkpoint was never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Leadership moves: 1 and 2 may lead again, 3 may not but keeps leading
    // until it relinquishes; then another member takes over with every
    // acknowledged write executed.
    veto[0].store(false, Ordering::Relaxed);
    veto[1].store(false, Ordering::Relaxed);
    veto[2].store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.status(ReplicaId(3)).unwrap().role, Some(RoleKind::Leader));
    c.relinquish_primary(ReplicaId(3)).await;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let leader = (1..=3)
            .map(ReplicaId)
            .find(|id| c.status(*id).unwrap().role == Some(RoleKind::Leader));
        match leader {
            Some(l) if l != ReplicaId(3) => break l,
            _ => assert!(std::time::Instant::now() < end, "nobody took over"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The client follows the new leader; nothing acknowledged was lost.
    let r = client.call(get("k")).await.unwrap();
    assert_eq!(
        result(&r.payload),
        KvResult::Value(Some(Bytes::from_static(b"after")))
    );
    let t = wait_told((second.0 - 1) as usize, 3).await;
    assert_eq!(&t[..2], &[Told::Secondary, Told::Primary], "{t:?}");
    assert!(
        matches!(t[2], Told::Recovered(n) if n >= 21),
        "recovered before executing the 21 acknowledged writes: {t:?}"
    );
    let t3 = wait_told(2, 4).await;
    assert_eq!(t3[3], Told::Secondary, "{t3:?}");
    assert!(
        !t3[4..].contains(&Told::Primary),
        "led again despite its veto: {t3:?}"
    );
    client.close().await;
    c.stop(second).await.unwrap();
    assert_eq!(
        told[(second.0 - 1) as usize].lock().unwrap().last(),
        Some(&Told::Shutdown)
    );
    c.shutdown().await;
}
