//! What one simulated run looks like: cluster shape, workload and faults,
//! all drawn from one seed.

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::disk::Backend;
use crate::core::PlantedBug;

/// Faults of one run. Probabilities are parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Each replica-to-replica message is lost.
    pub drop_ppm: u32,
    /// Each message is delivered twice.
    pub dup_ppm: u32,
    /// Base one-way delay range, µs.
    pub delay_us: (u64, u64),
    /// A message gets an extra delay of up to `reorder_us` (reordering).
    pub reorder_ppm: u32,
    pub reorder_us: u64,
    /// Mean time between partition events, µs (0: none). Kinds: split
    /// in two, one-way links, an isolated node, a clogged node.
    pub partition_mean_us: u64,
    pub partition_us: (u64, u64),
    /// Mean time between crashes, µs (0: none). A crash loses unsynced
    /// writes except a random prefix (torn tail).
    pub crash_mean_us: u64,
    pub down_us: (u64, u64),
    /// A crash takes down every replica at once (power loss).
    pub power_loss_ppm: u32,
    /// Each sync fails with EIO (the replica stops).
    pub fsync_fail_ppm: u32,
    /// Each message is also replayed with another cluster's id.
    pub crosstalk_ppm: u32,
    /// Each client request or response is lost.
    pub client_drop_ppm: u32,
    /// Each client request is delivered twice (a replayed packet).
    pub client_dup_ppm: u32,
    /// At a crash, a bit of a record on the replica's disk flips (a
    /// minority of replicas at most).
    pub corrupt_ppm: u32,
    /// At a crash, the replica's disk is replaced by a blank one (a
    /// minority at most, counting corrupted ones).
    pub wipe_ppm: u32,
    /// Mean time between configuration changes (0: none): each picks a
    /// random configuration of three, starts its new members as joiners
    /// and asks the leader for it.
    pub reconfig_mean_us: u64,
    /// Mean time between leadership events (0: none): the leader
    /// relinquishes, or the application's veto on leading is turned on or
    /// off at a node (a minority vetoed at most; all lifted at heal).
    pub leadership_mean_us: u64,
}

impl FaultPlan {
    /// A network with ordinary latency and no faults.
    pub fn none() -> FaultPlan {
        FaultPlan {
            drop_ppm: 0,
            dup_ppm: 0,
            delay_us: (50, 300),
            reorder_ppm: 0,
            reorder_us: 0,
            partition_mean_us: 0,
            partition_us: (0, 0),
            crash_mean_us: 0,
            down_us: (0, 0),
            power_loss_ppm: 0,
            fsync_fail_ppm: 0,
            crosstalk_ppm: 0,
            client_drop_ppm: 0,
            client_dup_ppm: 0,
            corrupt_ppm: 0,
            wipe_ppm: 0,
            reconfig_mean_us: 0,
            leadership_mean_us: 0,
        }
    }

    /// A random mix of faults.
    pub fn draw(rng: &mut Xoshiro256PlusPlus) -> FaultPlan {
        let mut p = FaultPlan::none();
        let mut chance = |pct: u32| rng.next_u32() % 100 < pct;
        let (drop, dup, reorder, part, crash, fsync, xtalk, cdrop) = (
            chance(60),
            chance(40),
            chance(60),
            chance(50),
            chance(50),
            chance(15),
            chance(15),
            chance(40),
        );
        if drop {
            p.drop_ppm = 1_000 + rng.next_u32() % 80_000;
        }
        if dup {
            p.dup_ppm = 1_000 + rng.next_u32() % 30_000;
        }
        if reorder {
            p.reorder_ppm = 10_000 + rng.next_u32() % 200_000;
            p.reorder_us = 500 + rng.next_u64() % 5_000;
        }
        if part {
            p.partition_mean_us = 20_000 + rng.next_u64() % 60_000;
            p.partition_us = (5_000, 10_000 + rng.next_u64() % 60_000);
        }
        if crash {
            p.crash_mean_us = 20_000 + rng.next_u64() % 80_000;
            p.down_us = (1_000, 5_000 + rng.next_u64() % 50_000);
            p.power_loss_ppm = [0, 50_000, 200_000][rng.next_u32() as usize % 3];
            p.corrupt_ppm = [0, 100_000, 400_000][rng.next_u32() as usize % 3];
            p.wipe_ppm = [0, 0, 100_000][rng.next_u32() as usize % 3];
        }
        if fsync {
            p.fsync_fail_ppm = 500 + rng.next_u32() % 5_000;
        }
        if xtalk {
            p.crosstalk_ppm = 5_000 + rng.next_u32() % 50_000;
        }
        if cdrop {
            p.client_drop_ppm = 1_000 + rng.next_u32() % 50_000;
            p.client_dup_ppm = rng.next_u32() % 50_000;
        }
        p
    }
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes in the simulation.
    pub replicas: u32,
    /// How many of them (the first ones) form the bootstrap configuration;
    /// the rest are spares a test adds by a configuration change. 0: all.
    pub bootstrap_members: u32,
    pub clients: u32,
    /// Commands each client keeps in flight (pipelined sessions: they may
    /// complete, and be retried, out of order).
    pub client_outstanding_max: u32,
    pub keys: u32,
    pub window_slots_max: u32,
    pub batch_commands_max: u32,
    /// Smaller than default so multi-chunk promises happen.
    pub promise_bytes_max: u64,
    /// Small in some seeds so lagging candidates are refused.
    pub promise_lag_slots_max: u64,
    pub faults: FaultPlan,
    /// Length of the fault phase, µs; 0 for scripted runs (no phases, no
    /// automatic clients).
    pub safety_us: u64,
    /// After the faults heal, each client must finish `liveness_ops` more
    /// operations within this bound, µs.
    pub liveness_us: u64,
    pub liveness_ops: u32,
    pub planted_bug: Option<PlantedBug>,
    /// The storage backend every replica uses.
    pub backend: Backend,
    /// Planted bug (simulator side): a replica that salvaged a corrupt log
    /// starts as if nothing had been lost.
    pub forget_unprovable: bool,
    /// Planted bug (simulator side): a replica whose disk was wiped
    /// restarts on a freshly formatted one, as if new.
    pub amnesia_restart: bool,
    /// Replicas checkpoint their state every this many applied slots
    /// (durably after a simulated write delay; the newest two are kept and
    /// the log is truncated behind the older), restart from their newest
    /// checkpoint, and fetch a peer's when they fall behind its log. 0: off.
    pub checkpoint_every_slots: u64,
    /// Planted bug (simulator side): the log is truncated when a
    /// checkpoint is taken, before it is durable.
    pub truncate_before_checkpoint_durable: bool,
    /// Planted bug (simulator side): a closed session leaves no tombstone,
    /// so a stale copy of one of its answered commands executes again.
    pub forget_closed_sessions: bool,
    /// Keep a printable trace of every event.
    pub trace: bool,
}

impl SimConfig {
    /// How many nodes form the bootstrap configuration.
    pub fn voters(&self) -> usize {
        match self.bootstrap_members {
            0 => self.replicas as usize,
            k => k as usize,
        }
    }

    /// Everything drawn from `seed`: cluster size, window, batching, faults.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_c0f1_9000_0000);
        let replicas = if rng.next_u32() % 4 == 0 { 5 } else { 3 };
        let window_slots_max = match rng.next_u32() % 4 {
            0 => 1,
            1 => 4,
            _ => 1 + rng.next_u32() % 32,
        };
        let batch_commands_max = match rng.next_u32() % 3 {
            0 => 1,
            _ => 1 + rng.next_u32() % 16,
        };
        let backend = [Backend::Mem, Backend::Wal, Backend::Nvm][rng.next_u32() as usize % 3];
        let mut cfg = SimConfig {
            seed,
            replicas,
            bootstrap_members: 0,
            backend,
            forget_unprovable: false,
            amnesia_restart: false,
            clients: 2 + rng.next_u32() % 7,
            client_outstanding_max: [1, 1, 2, 4][rng.next_u32() as usize % 4],
            keys: 1 + rng.next_u32() % 4,
            window_slots_max,
            batch_commands_max,
            promise_bytes_max: 64 + rng.next_u64() % 2048,
            promise_lag_slots_max: [4, 32, 256][rng.next_u32() as usize % 3],
            faults: FaultPlan::draw(&mut rng),
            safety_us: 150_000 + rng.next_u64() % 150_000,
            liveness_us: 3_000_000,
            liveness_ops: 3,
            planted_bug: None,
            checkpoint_every_slots: 0,
            truncate_before_checkpoint_durable: false,
            forget_closed_sessions: false,
            trace: false,
        };
        // Drawn last, so the draws above stay what they were.
        if replicas == 5 && rng.next_u32() % 3 == 0 {
            // Three of the five vote at a time, and the configuration walks.
            cfg.bootstrap_members = 3;
            cfg.faults.reconfig_mean_us = 20_000 + rng.next_u64() % 60_000;
        }
        if rng.next_u32() % 3 == 0 {
            // Checkpoints, log truncation, restarts from a checkpoint and
            // installs from peers, under every fault.
            cfg.checkpoint_every_slots = 4 + rng.next_u64() % 29;
        }
        if rng.next_u32() % 4 == 0 {
            // The application relinquishes leadership and vetoes candidacies.
            cfg.faults.leadership_mean_us = 10_000 + rng.next_u64() % 40_000;
        }
        cfg
    }

    /// A fault-free configuration for scripted scenarios: no automatic
    /// clients, no phases; the test drives everything.
    pub fn scripted(seed: u64, replicas: u32) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            bootstrap_members: 0,
            backend: Backend::Mem,
            forget_unprovable: false,
            amnesia_restart: false,
            clients: 4,
            client_outstanding_max: 1,
            keys: 2,
            window_slots_max: 8,
            batch_commands_max: 4,
            promise_bytes_max: 4096,
            promise_lag_slots_max: 256,
            faults: FaultPlan::none(),
            safety_us: 0,
            liveness_us: 0,
            liveness_ops: 0,
            planted_bug: None,
            checkpoint_every_slots: 0,
            truncate_before_checkpoint_durable: false,
            forget_closed_sessions: false,
            trace: false,
        }
    }
}
