//! The simulated cluster: replicas, their storage, a faulty network,
//! clients, and the event loop that drives them in simulated time.
//!
//! This file: the [`Sim`] and its event loop. Beside it: `event.rs` (what
//! can happen), `node.rs` (replicas: start, step, crash, restart, disks),
//! `checkpoints.rs`, `net.rs` (the network and the fault schedule),
//! `clients.rs` (clients and the history), `checks.rs` (the checkers run
//! during and after the run), `report.rs` (counts and the seed's report).

mod checkpoints;
mod checks;
mod clients;
mod event;
mod net;
mod node;
mod report;

pub use checkpoints::SimCheckpoint;
pub use node::{Node, NodeCheckpoints, NodeDisk, Seen};
pub use report::{SeedReport, SimStats};

use checkpoints::*;
use clients::*;
use event::*;

use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rustc_hash::FxHashMap;

use super::checker::{ApplyChains, Ledger, Violation};
use super::config::SimConfig;
use super::disk::Medium;
use super::linearizability::HistoryOp;
use super::workload::{OpGenerator, SimKv};
use crate::core::{
    ClientId, ClientReply, ClusterId, CommandRef, Config, Envelope, Membership, Output, Replica,
    ReplicaId, Slot, Value,
};
use crate::state_machine::Executor;

/// Simulated µs per replica tick.
pub const TICK_US: u64 = 1_000;

/// A client gives up on an attempt after this long and tries another replica.
pub const CLIENT_TIMEOUT_US: u64 = 40_000;
/// The cluster id of the simulated cluster; cross-talk uses `FOREIGN_CLUSTER`.
pub const CLUSTER: ClusterId = ClusterId(0xC1);
pub const FOREIGN_CLUSTER: ClusterId = ClusterId(0xF0);

/// Drop a peer message when this returns true (scripted scenarios).
pub type MessageFilter = Box<dyn FnMut(&Envelope) -> bool>;

/// A client request (`request: true`) or response on its way.
#[derive(Clone, Copy, Debug)]
pub struct ClientPacket {
    pub client: usize,
    pub node: usize,
    pub request: bool,
}

/// Drop a client packet when this returns true (scripted scenarios).
pub type ClientFilter = Box<dyn FnMut(ClientPacket) -> bool>;

/// A simulated cluster under a seeded schedule of events. Its state is
/// grouped by concern; each group's code is in the file named beside it.
pub struct Sim {
    pub cfg: SimConfig,
    sched: Schedule,
    /// The replicas (node.rs).
    pub nodes: Vec<Node>,
    members: Vec<ReplicaId>,
    net: Net,
    workload: Workload,
    pub history: Vec<HistoryOp>,
    pub ledger: Ledger,
    checks: Checks,
    trace: Trace,
    pub stats: SimStats,
    scratch: Scratch,
}

/// The event queue and the clock, and the randomness of the schedule.
struct Schedule {
    rng: Xoshiro256PlusPlus,
    now: u64,
    next_seq: u64,
    stamp: u64,
    queue: BinaryHeap<Scheduled>,
}

/// The simulated network: cut links, clogged nodes, the partition under
/// way, whether faults run, and a scenario's message filter (net.rs).
struct Net {
    blocked: Vec<Vec<bool>>,
    clog_us: Vec<u64>,
    partition_id: u64,
    faults_on: bool,
    filter: Option<MessageFilter>,
}

/// The clients, what they run, and a scenario's client packet filter
/// (clients.rs).
struct Workload {
    clients: Vec<SimClient>,
    generator: OpGenerator,
    rng: Xoshiro256PlusPlus,
    filter: Option<ClientFilter>,
    /// The session sequence number of each operation in `history`.
    history_seq: Vec<u64>,
}

/// What the checkers gather as the run goes (checks.rs).
#[derive(Default)]
struct Checks {
    /// `(client, seq)` → position of its execution in the chosen order.
    execution_order: FxHashMap<(u64, u64), u64>,
    chains: ApplyChains,
    /// The value of every slot some replica applied, by slot (for the
    /// replay-from-genesis check).
    applied_values: Vec<Value>,
    /// Each configuration in force: the slot of the change that made it,
    /// and it (for the release check).
    config_epochs: FxHashMap<u64, (Slot, Membership)>,
    violation: Option<Violation>,
}

/// The run's trace: a hash of every event, and the lines kept.
#[derive(Default)]
struct Trace {
    hash: u64,
    lines: Vec<String>,
}

/// Buffers reused from one step to the next.
#[derive(Default)]
struct Scratch {
    out: Output,
    replies: Vec<ClientReply>,
}

/// Simulated time after the clients finish for every member of the
/// configuration in force to catch up and every removed one to retire.
const MEMBERS_SETTLE_US: u64 = 1_000_000;

fn derive(seed: u64, tag: u64) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (seed, tag).hash(&mut h);
    h.finish()
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let n = cfg.replicas as usize;
        let members: Vec<ReplicaId> = (1..=cfg.replicas).map(ReplicaId).collect();
        let bootstrap = cfg.voters();
        assert!(bootstrap <= n);
        let mut sim = Sim {
            sched: Schedule {
                rng: Xoshiro256PlusPlus::seed_from_u64(derive(cfg.seed, 1)),
                now: 0,
                next_seq: 0,
                stamp: 0,
                queue: BinaryHeap::new(),
            },
            nodes: Vec::with_capacity(n),
            net: Net {
                blocked: vec![vec![false; n]; n],
                clog_us: vec![0; n],
                partition_id: 0,
                faults_on: true,
                filter: None,
            },
            workload: Workload {
                clients: (0..cfg.clients)
                    .map(|i| SimClient {
                        id: ClientId(u64::from(i) + 1),
                        generation: 0,
                        next_seq: 1,
                        closing: false,
                        unknown: false,
                        session_used: false,
                        remaining: if cfg.safety_us > 0 { u32::MAX } else { 0 },
                        pending: Vec::new(),
                        guess: i as usize % n,
                    })
                    .collect(),
                generator: OpGenerator::new(cfg.keys),
                rng: Xoshiro256PlusPlus::seed_from_u64(derive(cfg.seed, 2)),
                filter: None,
                history_seq: Vec::new(),
            },
            history: Vec::new(),
            ledger: Ledger::new((1u64 << bootstrap) - 1),
            checks: Checks::default(),
            trace: Trace::default(),
            stats: SimStats::default(),
            scratch: Scratch::default(),
            members,
            cfg,
        };
        for i in 0..n {
            let id = sim.members[i];
            sim.nodes.push(Node {
                id,
                replica: None,
                disk: NodeDisk {
                    open: None,
                    medium: Some(Medium::format(sim.cfg.backend, CLUSTER, id)),
                    sync_scheduled: false,
                },
                executor: Executor::new(SimKv::default(), sim_session_limits(&sim.cfg), Slot::ZERO),
                incarnation: 0,
                seen: Seen::default(),
                refused: None,
                damaged: false,
                dormant: i >= bootstrap,
                join: None,
                checkpoints: NodeCheckpoints::default(),
                vetoed: false,
            });
            if i < bootstrap {
                sim.start_node(i);
            }
        }
        if sim.cfg.safety_us > 0 {
            for c in 0..sim.workload.clients.len() {
                for _ in 0..sim.cfg.client_outstanding_max {
                    let at = sim.sched.rng.next_u64() % 2_000;
                    sim.schedule(at, Event::ClientStart { client: c });
                }
            }
            let f = sim.cfg.faults.clone();
            if f.partition_mean_us > 0 {
                let at = sim.sched.rng.next_u64() % (2 * f.partition_mean_us);
                sim.schedule(at, Event::PartitionStart);
            }
            if f.crash_mean_us > 0 {
                let at = sim.sched.rng.next_u64() % (2 * f.crash_mean_us);
                sim.schedule(
                    at,
                    Event::Crash {
                        node: usize::MAX,
                        scheduled: true,
                    },
                );
            }
            if f.reconfig_mean_us > 0 {
                let at = sim.sched.rng.next_u64() % (2 * f.reconfig_mean_us);
                sim.schedule(at, Event::Reconfigure);
            }
            if f.leadership_mean_us > 0 {
                let at = sim.sched.rng.next_u64() % (2 * f.leadership_mean_us);
                sim.schedule(at, Event::Leadership);
            }
            sim.schedule(sim.cfg.safety_us, Event::Heal);
        }
        sim
    }

    /// The core configuration of node `i` in incarnation `incarnation`.
    pub fn replica_config(&self, i: usize, incarnation: u32) -> Config {
        let bootstrap = self.members[..self.cfg.voters()].to_vec();
        let mut c = Config::new(CLUSTER, self.members[i], bootstrap);
        if let Some((told, epoch)) = &self.nodes[i].join {
            c.members = told.clone();
            c.join = true;
            c.join_epoch = *epoch;
        }
        c.known_replicas = self.members.clone();
        c.window_slots_max = self.cfg.window_slots_max;
        c.batch_commands_max = self.cfg.batch_commands_max;
        c.promise_bytes_max = self.cfg.promise_bytes_max;
        c.log_ahead_slots_max = sim_log_ahead_slots_max(&self.cfg);
        c.promise_lag_slots_max = self.cfg.promise_lag_slots_max;
        c.catchup_slots_max = 16;
        c.log_retained_slots_max = 1 << 20;
        if self.cfg.checkpoint_every_slots > 0 {
            // Compacted well within reach of the checkpoints, so a replica
            // that falls behind must fetch one.
            c.log_retained_slots_max = 3 * self.cfg.checkpoint_every_slots;
            c.promise_lag_slots_max = c.promise_lag_slots_max.min(c.log_retained_slots_max);
            // And by bytes, below the newest checkpoint, often.
            c.log_retained_bytes_max = SIM_LOG_RETAINED_BYTES_MAX;
        }
        c.seed = derive(
            self.cfg.seed,
            100 + (i as u64) * 1000 + u64::from(incarnation),
        );
        c.planted_bug = self.cfg.planted_bug;
        c
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.sched.next_seq += 1;
        self.sched.queue.push(Scheduled {
            time: self.sched.now + delay,
            seq: self.sched.next_seq,
            event,
        });
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.sched.rng.next_u32() % 1_000_000) < ppm
    }

    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.sched.rng.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    fn index(&self, id: ReplicaId) -> usize {
        (id.0 - 1) as usize
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.checks.violation.as_ref()
    }

    pub fn now(&self) -> u64 {
        self.sched.now
    }

    /// Processes the next event; false when none is left.
    pub fn step(&mut self) -> bool {
        let Some(Scheduled { time, event, .. }) = self.sched.queue.pop() else {
            return false;
        };
        self.sched.now = time;
        self.stats.events += 1;
        let mut h = std::hash::DefaultHasher::new();
        (self.trace.hash, time, event.identity()).hash(&mut h);
        self.trace.hash = h.finish();
        if self.cfg.trace {
            self.trace.lines.push(format!("{time:>9} {event:?}"));
        }
        self.handle(event);
        true
    }

    /// Runs until `done` holds, a violation is found, or `deadline_us` passes.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, deadline_us: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while self.checks.violation.is_none() {
            if done(self) {
                return true;
            }
            match self.sched.queue.peek() {
                Some(s) if s.time <= deadline_us => {}
                _ => {
                    self.sched.now = self.sched.now.max(deadline_us);
                    return done(self);
                }
            }
            self.step();
        }
        false
    }

    /// Runs for `us` of simulated time.
    pub fn run_for(&mut self, us: u64) {
        let deadline = self.sched.now + us;
        self.run_until(deadline, |_| false);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::CheckpointDone {
                node,
                incarnation,
                slot,
                frozen,
                chain,
            } => {
                if self.nodes[node].incarnation != incarnation {
                    // It crashed while writing: the checkpoint is lost.
                    return;
                }
                let ckpt = SimCheckpoint {
                    slot,
                    state: frozen.into_bytes().into(),
                    chain,
                };
                self.nodes[node].checkpoints.in_flight = false;
                self.stats.checkpoints_taken += 1;
                self.keep_checkpoint(node, ckpt);
            }
            Event::CheckpointFetch {
                node,
                incarnation,
                from,
                at_least,
            } => self.serve_checkpoint(node, incarnation, from, at_least),
            Event::CheckpointFetched {
                node,
                incarnation,
                ckpt,
            } => self.install_checkpoint(node, incarnation, ckpt),
            Event::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].replica.is_none()
                {
                    return;
                }
                let vetoed = self.nodes[node].vetoed;
                self.with_replica(node, |r| {
                    r.set_lead_vetoed(vetoed);
                    r.on_tick();
                });
                self.schedule(TICK_US, Event::Tick { node, incarnation });
            }
            Event::Deliver { env } => {
                let to = self.index(env.to);
                self.with_replica(to, |r| r.on_message(env));
            }
            Event::Request {
                id,
                node,
                seq,
                ack_below,
                op,
                ..
            } => {
                self.with_replica(node, |r| {
                    r.on_client(CommandRef {
                        client: id,
                        seq,
                        ack_below,
                        op: &op,
                    })
                });
            }
            Event::Response {
                client,
                node,
                reply,
            } => self.client_response(client, node, reply),
            Event::SyncDone {
                node,
                incarnation,
                token,
            } => self.sync_done(node, incarnation, token),
            Event::ClientStart { client } => self.client_start(client),
            Event::ClientRetry {
                client,
                seq,
                attempt,
            }
            | Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => {
                let is_timeout = matches!(event, Event::ClientTimeout { .. });
                let n = self.nodes.len();
                let c = &mut self.workload.clients[client];
                let current = c
                    .pending
                    .iter()
                    .any(|p| p.seq == seq && p.attempt == attempt);
                if current {
                    if is_timeout {
                        c.guess = (c.guess + 1) % n;
                    }
                    self.send_attempt(client, seq);
                }
            }
            Event::Crash { node, scheduled } => {
                if scheduled {
                    let again = Event::Crash {
                        node: usize::MAX,
                        scheduled: true,
                    };
                    if !self.recur(self.cfg.faults.crash_mean_us, again) {
                        return;
                    }
                    let n = self.nodes.len();
                    let victims = if self.chance(self.cfg.faults.power_loss_ppm) {
                        0..n
                    } else {
                        let v = self.sched.rng.next_u64() as usize % n;
                        v..v + 1
                    };
                    for victim in victims {
                        self.crash(victim);
                        // Damage a disk, but never more than a minority of
                        // a configuration (counted over all nodes, so any
                        // configuration of that size has a minority at most):
                        // the others must be able to prove everything chosen.
                        let f = (self.cfg.voters() - 1) / 2;
                        let (corrupt, wipe) =
                            (self.cfg.faults.corrupt_ppm, self.cfg.faults.wipe_ppm);
                        if self.damaged_nodes() < f && !self.nodes[victim].damaged {
                            if self.chance(corrupt) {
                                self.corrupt_disk(victim);
                            } else if self.chance(wipe) {
                                self.wipe_disk(victim);
                            }
                        }
                        let down = self.between(self.cfg.faults.down_us);
                        self.schedule(down, Event::Restart { node: victim });
                    }
                } else {
                    self.crash(node);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::PartitionStart => self.partition_start(),
            Event::PartitionEnd { id } => {
                if id == self.net.partition_id {
                    self.heal_network();
                }
            }
            Event::Heal => self.heal(),
            Event::Reconfigure => self.reconfigure(),
            Event::Leadership => self.leadership_event(),
        }
    }

    /// A recurring fault: while the fault phase lasts, schedules the next
    /// `event` (uniform in `(0, 2 * mean_us]`) and returns true; after it,
    /// returns false (the fault stops recurring).
    fn recur(&mut self, mean_us: u64, event: Event) -> bool {
        if !self.net.faults_on {
            return false;
        }
        let next = self.sched.rng.next_u64() % (2 * mean_us) + 1;
        self.schedule(next, event);
        true
    }

    /// The node that leads the highest ballot, if any.
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((n.replica.as_ref()?.leader_ballot()?, i)))
            .max()
            .map(|(_, i)| i)
    }

    pub fn replica(&self, i: usize) -> Option<&Replica> {
        self.nodes[i].replica.as_ref()
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].replica.is_some()
    }

    /// Log entries node `i` has written and not yet synced: what a crash
    /// now may tear.
    pub fn unsynced_entries(&self, i: usize) -> usize {
        self.nodes[i].seen.unsynced.len()
    }

    /// Whether node `i` is writing a checkpoint (not yet durable).
    pub fn checkpoint_in_flight(&self, i: usize) -> bool {
        self.nodes[i].checkpoints.in_flight
    }
}
