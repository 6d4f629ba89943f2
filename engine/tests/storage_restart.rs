//! A replica restarted on each real backend (mem, the WAL on real files,
//! the NVM log on a mapped `/dev/shm` file with CPU cache-line flushes and
//! with msync) finds every slot it acknowledged and its promised ballot.
//!
//! Three replicas run in lockstep; the one under test writes through the
//! backend and syncs after each drain, as the runtime will. Every Accepted
//! it sends and every ballot it promises is recorded; then the process
//! "dies" (the replica and the storage object are dropped, files closed),
//! the storage is reopened from its path, and recovery must hold them all.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use engine::core::{
    Ballot, ClientId, ClusterId, CommandRef, Config, DurableState, Message, Output, Replica,
    ReplicaId, Slot,
};
use engine::storage::mem::{CrashKeep, MemStorage};
use engine::storage::nvm::region::{FlushMode, MmapRegion};
use engine::storage::nvm::{AREA_OFFSET, NvmLog};
use engine::storage::wal::Wal;
use engine::storage::wal::file::StdDir;
use engine::storage::{Storage, StorageError};

const CLUSTER: ClusterId = ClusterId(77);

fn config(id: u32) -> Config {
    let members: Vec<ReplicaId> = (1..=3).map(ReplicaId).collect();
    let mut c = Config::new(CLUSTER, ReplicaId(id), members);
    c.election_ticks = if id == 1 { 3 } else { 1000 };
    c.heartbeat_ticks = 1;
    c.window_slots_max = 8;
    c.batch_commands_max = 4;
    c
}

/// What the replica under test claimed durable.
#[derive(Default)]
struct Claims {
    /// (slot, ballot) it acknowledged with Accepted.
    accepted: Vec<(Slot, Ballot)>,
    /// Highest ballot it promised (Promise sent) or led.
    promised: Ballot,
    /// Slots it committed (applied).
    committed: Slot,
}

/// Runs the cluster with replica `under_test` on `storage` until `commands`
/// commands committed; returns what it claimed.
#[allow(clippy::needless_range_loop)]
fn run(under_test: usize, storage: &mut dyn Storage, commands: u64) -> Claims {
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|id| Replica::new(config(id)).unwrap())
        .collect();
    let mut claims = Claims::default();
    let mut out = Output::default();
    let mut queue = VecDeque::new();
    let mut committed = 0u64;
    let mut seq = 1u64;
    let mut ticks = 0;
    while committed < commands {
        if replicas[0].is_leader() {
            for _ in 0..6 {
                replicas[0].on_client(CommandRef {
                    client: ClientId(1),
                    seq,
                    ack_below: seq,
                    op: b"put k v",
                });
                seq += 1;
            }
        } else {
            replicas[0].on_tick();
            ticks += 1;
            assert!(ticks < 100, "no leader");
        }
        for _ in 0..20 {
            for i in 0..3 {
                loop {
                    replicas[i].drain(&mut out);
                    if out.is_empty() {
                        break;
                    }
                    let token = out.persist.last().map(|p| p.token);
                    if i == under_test {
                        for req in out.persist.drain(..) {
                            storage.write(req).unwrap();
                        }
                        for env in &out.send {
                            match &env.msg {
                                Message::Accepted(a) => {
                                    for s in a.first.0..a.end.0 {
                                        claims.accepted.push((Slot(s), a.ballot));
                                    }
                                }
                                Message::Promise(p) => {
                                    claims.promised = claims.promised.max(p.ballot)
                                }
                                _ => {}
                            }
                        }
                        if let Some(b) = replicas[i].leader_ballot() {
                            claims.promised = claims.promised.max(b);
                        }
                        claims.committed = replicas[i].commit();
                    }
                    if i == 0 {
                        committed += out
                            .apply
                            .iter()
                            .map(|a| u64::from(a.value.command_count()))
                            .sum::<u64>();
                    }
                    queue.extend(out.send.drain(..));
                    out.clear();
                    match token {
                        Some(t) if i == under_test => {
                            let durable = storage.sync().unwrap();
                            assert_eq!(durable, t);
                            replicas[i].on_persisted(durable);
                        }
                        Some(t) => replicas[i].on_persisted(t),
                        None => break,
                    }
                }
            }
            while let Some(env) = queue.pop_front() {
                let to = (env.to.0 - 1) as usize;
                replicas[to].on_message(env);
            }
        }
    }
    assert!(
        !claims.accepted.is_empty() || under_test == 0,
        "the replica under test acknowledged nothing"
    );
    claims
}

/// Recovery must hold every acknowledged slot (in that ballot or a later
/// one), the promise, and every committed slot; the replica restarts on it.
fn check(state: DurableState, claims: &Claims, id: u32) {
    for (slot, ballot) in &claims.accepted {
        let e = state.entries.iter().find(|e| e.slot == *slot);
        assert!(
            e.is_some_and(|e| e.ballot >= *ballot),
            "acknowledged {slot} {ballot} missing after restart"
        );
    }
    assert!(
        state.promised >= claims.promised,
        "promise {} lost (recovered {})",
        claims.promised,
        state.promised
    );
    let r = Replica::recover(config(id), state).unwrap();
    assert!(r.promised() >= claims.promised);
    r.check_invariants();
    for s in 0..claims.committed.0 {
        assert!(
            r.entry(Slot(s)).is_some(),
            "committed s{s} missing after restart"
        );
    }
}

fn scratch(name: &str, base: &Path) -> PathBuf {
    let p = base.join(format!("restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn restart_on_mem() {
    for under_test in [0usize, 1] {
        let mut mem = MemStorage::formatted();
        let claims = run(under_test, &mut mem, 300);
        mem.crash(CrashKeep { kept_ops: 0 }, |_| {});
        check(mem.recover().unwrap(), &claims, under_test as u32 + 1);
    }
}

#[test]
fn restart_on_wal() {
    for under_test in [0usize, 1] {
        let path = scratch(&format!("wal{under_test}"), &std::env::temp_dir());
        let id = ReplicaId(under_test as u32 + 1);
        let claims = {
            let mut wal = Wal::format(StdDir::new(&path).unwrap(), CLUSTER, id, 64 * 1024).unwrap();
            run(under_test, &mut wal, 2000)
        };
        let mut wal = Wal::open(StdDir::new(&path).unwrap(), CLUSTER, id, 64 * 1024);
        assert!(wal.segment_names().is_empty());
        check(wal.recover().unwrap(), &claims, id.0);
        assert!(wal.segment_names().len() > 1, "the run rolled segments");
        std::fs::remove_dir_all(&path).unwrap();
    }
}

#[test]
fn restart_on_nvm_with_every_flush_mode() {
    let mut modes = vec![FlushMode::detect(), FlushMode::Msync];
    modes.dedup();
    for mode in modes {
        for under_test in [0usize, 1] {
            let path = scratch(&format!("nvm-{mode}-{under_test}"), Path::new("/dev/shm"));
            let id = ReplicaId(under_test as u32 + 1);
            let len = AREA_OFFSET + 4 * 1024 * 1024;
            let claims = {
                let region = MmapRegion::open(&path, len, true, mode).unwrap();
                let mut log = NvmLog::format(region, CLUSTER, id).unwrap();
                assert_eq!(log.flush_mode(), mode);
                let claims = run(under_test, &mut log, 2000);
                assert!(log.stats().flushes > 0 && log.stats().units > 0);
                claims
            };
            let region = MmapRegion::open(&path, len, false, mode).unwrap();
            let mut log = NvmLog::open(region, CLUSTER, id).unwrap();
            check(log.recover().unwrap(), &claims, id.0);
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn a_replica_without_its_log_refuses_to_start() {
    // Amnesia guard: a missing NVM file or an empty WAL directory is not an
    // empty log; the replica may have promised things it no longer knows.
    let path = scratch("missing", Path::new("/dev/shm"));
    assert!(MmapRegion::open(&path, 8192, false, FlushMode::Msync).is_err());
    let dir = scratch("empty-wal", &std::env::temp_dir());
    let r = Wal::open(StdDir::new(&dir).unwrap(), CLUSTER, ReplicaId(1), 64 * 1024).recover();
    assert!(matches!(r, Err(StorageError::NotFormatted { .. })), "{r:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
