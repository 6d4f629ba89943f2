//! The simulated cluster: replicas, their storage, a faulty network,
//! clients, and the event loop that drives them in simulated time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use bytes::Bytes;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::checker::{ApplyChains, Ledger, Violation, ViolationKind, violation};
use super::config::SimConfig;
use super::linearizability::{self, HistoryOp};
use super::workload::{OpGenerator, SimKv, encode_op};
use rustc_hash::FxHashMap;

use super::disk::{Medium, Opened, SimStorage};
use crate::core::{
    Apply, ClientId, ClientReply, ClusterId, CommandRef, Config, Counter, Counters, Envelope,
    Message, Output, PersistToken, ProposeError, Replica, ReplicaId, Slot, Value,
};
use crate::core::{Ballot, EntryWrite, Membership};
use crate::kv::{KvOp, KvResult};
use crate::state_machine::{Executor, FrozenExecutor, SESSION_CLOSE_SEQ, SessionLimits};
use crate::storage::Storage;

/// Simulated µs per replica tick.
pub const TICK_US: u64 = 1_000;
/// A client gives up on an attempt after this long and tries another replica.
pub const CLIENT_TIMEOUT_US: u64 = 40_000;
/// The cluster id of the simulated cluster; cross-talk uses `FOREIGN_CLUSTER`.
pub const CLUSTER: ClusterId = ClusterId(0xC1);
pub const FOREIGN_CLUSTER: ClusterId = ClusterId(0xF0);

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        incarnation: u32,
    },
    Deliver {
        env: Envelope,
    },
    Request {
        client: usize,
        /// The client's id when it sent this (a client that closed its
        /// session has a new one).
        id: ClientId,
        node: usize,
        seq: u64,
        ack_below: u64,
        op: Bytes,
    },
    Response {
        client: usize,
        node: usize,
        reply: ClientReply,
    },
    SyncDone {
        node: usize,
        incarnation: u32,
        token: PersistToken,
    },
    ClientStart {
        client: usize,
    },
    ClientRetry {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    Crash {
        node: usize,
        scheduled: bool,
    },
    Restart {
        node: usize,
    },
    PartitionStart,
    PartitionEnd {
        id: u64,
    },
    Heal,
    Reconfigure,
    /// The leader relinquishes, or a node's veto on leading flips.
    Leadership,
    /// A checkpoint node `node` took is durable (unless it crashed since).
    CheckpointDone {
        node: usize,
        incarnation: u32,
        slot: Slot,
        frozen: FrozenExecutor,
        chain: u64,
    },
    /// Node `node` asks node `from` for a checkpoint at or beyond `at_least`.
    CheckpointFetch {
        node: usize,
        incarnation: u32,
        from: usize,
        at_least: Slot,
    },
    /// The checkpoint node `node` fetched has arrived.
    CheckpointFetched {
        node: usize,
        incarnation: u32,
        ckpt: SimCheckpoint,
    },
}

/// A durable checkpoint of a simulated replica: the executor's snapshot
/// of every slot below `slot`, and the apply chain's value there.
#[derive(Clone, Debug)]
pub struct SimCheckpoint {
    pub slot: Slot,
    pub state: Rc<[u8]>,
    pub chain: u64,
}

impl SimCheckpoint {
    /// An executor holding this checkpoint's state.
    fn executor(&self, limits: SessionLimits) -> Executor<SimKv> {
        let mut e = Executor::new(SimKv::default(), limits, Slot::ZERO);
        e.restore(&self.state)
            .expect("a simulated checkpoint restores");
        e
    }
}

/// The simulated replicas' session table: closed sessions are remembered
/// for twice their `log_ahead_slots_max` only (not the default 4,096
/// slots), so tombstones expire in a run and the bound they rest on (a
/// stale copy of an answered command is chosen within a leader's window of
/// the close) is what the simulator checks.
fn sim_session_limits(cfg: &SimConfig) -> SessionLimits {
    SessionLimits {
        // The planted bug: a tombstone gone as soon as it is made.
        closed_session_slots: if cfg.forget_closed_sessions {
            0
        } else {
            2 * sim_log_ahead_slots_max(cfg)
        },
        ..SessionLimits::default()
    }
}

fn sim_log_ahead_slots_max(cfg: &SimConfig) -> u64 {
    64.max(u64::from(cfg.window_slots_max))
}

/// One in this many of a client's starts, with nothing in flight during
/// the fault phase, closes its session instead (the client goes on under
/// a new id).
const SESSION_CLOSE_ONE_IN: u32 = 8;

/// Checkpoints each node keeps (the log is truncated behind the oldest).
const CHECKPOINTS_RETAINED: usize = 2;
/// The simulated replicas' `log_retained_bytes_max` when they checkpoint:
/// small, so compaction by bytes happens under every fault schedule.
const SIM_LOG_RETAINED_BYTES_MAX: u64 = 4096;

impl Event {
    /// Fields that identify the event, folded into the trace hash.
    fn identity(&self) -> (u8, u64, u64, u64) {
        match self {
            Event::Tick { node, incarnation } => (0, *node as u64, u64::from(*incarnation), 0),
            Event::Deliver { env } => {
                let m = &env.msg;
                let kind = m.kind().len() as u64 ^ (m.kind().as_bytes()[0] as u64) << 8;
                (
                    1,
                    u64::from(env.from.0) << 32 | u64::from(env.to.0),
                    kind,
                    m.ballot().round,
                )
            }
            Event::Request {
                client, node, seq, ..
            } => (2, *client as u64, *node as u64, *seq),
            Event::Response {
                client,
                node,
                reply,
            } => (3, *client as u64, *node as u64, reply.seq),
            Event::SyncDone { node, token, .. } => (4, *node as u64, token.0, 0),
            Event::ClientStart { client } => (5, *client as u64, 0, 0),
            Event::ClientRetry {
                client,
                seq,
                attempt,
            } => (6, *client as u64, *seq, u64::from(*attempt)),
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => (7, *client as u64, *seq, u64::from(*attempt)),
            Event::Crash { node, .. } => (8, *node as u64, 0, 0),
            Event::Restart { node } => (9, *node as u64, 0, 0),
            Event::PartitionStart => (10, 0, 0, 0),
            Event::PartitionEnd { id } => (11, *id, 0, 0),
            Event::Heal => (12, 0, 0, 0),
            Event::Reconfigure => (13, 0, 0, 0),
            Event::Leadership => (17, 0, 0, 0),
            Event::CheckpointDone { node, slot, .. } => (14, *node as u64, slot.0, 0),
            Event::CheckpointFetch { node, from, .. } => (15, *node as u64, *from as u64, 0),
            Event::CheckpointFetched { node, ckpt, .. } => (16, *node as u64, ckpt.slot.0, 0),
        }
    }
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops the earliest.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// One simulated replica with its disk and state machine.
pub struct Node {
    pub id: ReplicaId,
    pub replica: Option<Replica>,
    /// The open backend while the replica runs.
    pub storage: Option<SimStorage>,
    /// The medium alone while the replica is down.
    pub medium: Option<Medium>,
    pub executor: Executor<SimKv>,
    pub incarnation: u32,
    sync_scheduled: bool,
    /// Hash chain of this incarnation's applied slots.
    chain: u64,
    /// Entries written but not yet synced (the ledger learns them at sync,
    /// or at restart if a crash kept them).
    unsynced: Vec<EntryWrite>,
    unsynced_promised: Ballot,
    unsynced_commit: Slot,
    /// What the checkers know to be durable.
    durable_promised: Ballot,
    /// The commit point storage made durable (as far as the checkers know).
    durable_commit: Slot,
    /// The running replica was seen retired (checked once, when it retires).
    retired_seen: bool,
    durable_entries: FxHashMap<Slot, Ballot>,
    /// Why the replica cannot start (wiped or unsalvageable storage).
    pub refused: Option<String>,
    /// Its medium was corrupted or wiped during the run.
    pub damaged: bool,
    /// Not yet started: a spare outside the bootstrap configuration,
    /// waiting to be added (`start_joiner`).
    pub dormant: bool,
    /// Started as a joiner told this configuration and the epoch of the
    /// change that adds it (see `Config::join`).
    pub join: Option<(Vec<ReplicaId>, u64)>,
    /// Durable checkpoints, oldest first (survive crashes, not wipes).
    pub checkpoints: Vec<SimCheckpoint>,
    /// The application vetoes this node's candidacies (handed to the
    /// replica before each tick, as the runtime does).
    pub vetoed: bool,
    /// A checkpoint is being written (lost if the node crashes first).
    checkpoint_in_flight: bool,
    /// Applied slot at the last checkpoint taken.
    checkpoint_taken: Slot,
}

struct Pending {
    seq: u64,
    bytes: Bytes,
    history: usize,
    target: usize,
    attempt: u32,
}

struct SimClient {
    /// `index + 1`, plus the session's generation in the high 32 bits: a
    /// client that closed its session goes on as a new one.
    id: ClientId,
    generation: u32,
    /// Each session numbers its commands from 1, as `Client` does;
    /// attempt numbers are apart per session (`generation << 16`), so a
    /// stale timer of an earlier session's command matches nothing.
    next_seq: u64,

    /// A session close is in flight: nothing else starts.
    closing: bool,
    /// An operation ended with an unknown outcome: the session is never
    /// closed (as `Client::close`).
    unknown: bool,
    /// An operation of this session was answered: there is a session to
    /// close.
    session_used: bool,
    /// Operations still to start (`u32::MAX`: keep going).
    remaining: u32,
    /// Operations in flight, oldest first (at most `client_outstanding_max`).
    pending: Vec<Pending>,
    /// The replica the next attempt goes to.
    guess: usize,
}

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub events: u64,
    pub messages: u64,
    pub messages_dropped: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub fsync_failures: u64,
    pub ops_completed: u64,
    pub ops_unknown: u64,
    pub elections_won: u64,
    /// Write errors (a full log) that stopped a replica.
    pub storage_failures: u64,
    /// Bits flipped on a disk; disks wiped.
    pub corruptions: u64,
    pub wipes: u64,
    /// Restarts that salvaged a corrupt log; restarts refused (wiped or
    /// unsalvageable storage).
    pub salvaged: u64,
    pub refused_starts: u64,
    /// Unsynced log writes a crash lost (the torn part of a tail).
    pub unsynced_lost: u64,
    /// Configuration changes a leader took (random ones, in chaos runs).
    pub reconfigurations: u64,
    /// Sessions the clients closed, and commands of closed sessions a
    /// replica refused (stale copies the tombstone stopped; counted per
    /// replica that applied one).
    pub sessions_closed: u64,
    pub closed_session_refusals: u64,
    /// Checkpoints made durable; restarts from one; installs from a peer.
    pub checkpoints_taken: u64,
    pub checkpoint_restores: u64,
    pub checkpoint_installs: u64,
    /// Core counters summed over every replica incarnation (coverage marks).
    pub counters: Counters,
}

impl SimStats {
    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &SimStats) {
        self.events += other.events;
        self.messages += other.messages;
        self.messages_dropped += other.messages_dropped;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.partitions += other.partitions;
        self.fsync_failures += other.fsync_failures;
        self.ops_completed += other.ops_completed;
        self.ops_unknown += other.ops_unknown;
        self.elections_won += other.elections_won;
        self.storage_failures += other.storage_failures;
        self.corruptions += other.corruptions;
        self.wipes += other.wipes;
        self.reconfigurations += other.reconfigurations;
        self.sessions_closed += other.sessions_closed;
        self.closed_session_refusals += other.closed_session_refusals;
        self.checkpoints_taken += other.checkpoints_taken;
        self.checkpoint_restores += other.checkpoint_restores;
        self.checkpoint_installs += other.checkpoint_installs;
        self.salvaged += other.salvaged;
        self.refused_starts += other.refused_starts;
        self.unsynced_lost += other.unsynced_lost;
        self.counters.merge(&other.counters);
    }
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub violation: Option<Violation>,
    pub commands_committed: u64,
    pub slots_chosen: usize,
    pub sim_time_us: u64,
    /// Hash of every event in order: equal for equal runs.
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub stats: SimStats,
}

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

/// A simulated cluster under a seeded schedule of events.
pub struct Sim {
    pub cfg: SimConfig,
    rng: Xoshiro256PlusPlus,
    workload_rng: Xoshiro256PlusPlus,
    now: u64,
    next_seq: u64,
    stamp: u64,
    queue: BinaryHeap<Scheduled>,
    pub nodes: Vec<Node>,
    members: Vec<ReplicaId>,
    blocked: Vec<Vec<bool>>,
    clog_us: Vec<u64>,
    partition_id: u64,
    faults_on: bool,
    filter: Option<MessageFilter>,
    client_filter: Option<ClientFilter>,
    clients: Vec<SimClient>,
    generator: OpGenerator,
    pub history: Vec<HistoryOp>,
    /// The session sequence number of each operation in `history`.
    history_seq: Vec<u64>,
    /// `(client, seq)` → position of its execution in the chosen order.
    execution_order: FxHashMap<(u64, u64), u64>,
    pub ledger: Ledger,
    chains: ApplyChains,
    /// The value of every slot some replica applied, by slot (for the
    /// replay-from-genesis check).
    applied_values: Vec<Value>,
    /// Each configuration in force: the slot of the change that made it,
    /// and it (for the release check).
    config_epochs: FxHashMap<u64, (Slot, Membership)>,
    violation: Option<Violation>,
    trace_hash: u64,
    trace: Vec<String>,
    pub stats: SimStats,
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
            rng: Xoshiro256PlusPlus::seed_from_u64(derive(cfg.seed, 1)),
            workload_rng: Xoshiro256PlusPlus::seed_from_u64(derive(cfg.seed, 2)),
            now: 0,
            next_seq: 0,
            stamp: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::with_capacity(n),
            blocked: vec![vec![false; n]; n],
            clog_us: vec![0; n],
            partition_id: 0,
            faults_on: true,
            filter: None,
            client_filter: None,
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
            history: Vec::new(),
            history_seq: Vec::new(),
            execution_order: FxHashMap::default(),
            ledger: Ledger::new((1u64 << bootstrap) - 1),
            chains: ApplyChains::default(),
            applied_values: Vec::new(),
            config_epochs: FxHashMap::default(),
            violation: None,
            trace_hash: 0,
            trace: Vec::new(),
            stats: SimStats::default(),
            out: Output::default(),
            replies: Vec::new(),
            members,
            cfg,
        };
        for i in 0..n {
            let id = sim.members[i];
            sim.nodes.push(Node {
                id,
                replica: None,
                storage: None,
                medium: Some(Medium::format(sim.cfg.backend, CLUSTER, id)),
                executor: Executor::new(SimKv::default(), sim_session_limits(&sim.cfg), Slot::ZERO),
                incarnation: 0,
                sync_scheduled: false,
                chain: 0,
                unsynced: Vec::new(),
                unsynced_promised: Ballot::ZERO,
                durable_promised: Ballot::ZERO,
                unsynced_commit: Slot::ZERO,
                durable_commit: Slot::ZERO,
                retired_seen: false,
                durable_entries: FxHashMap::default(),
                refused: None,
                damaged: false,
                dormant: i >= bootstrap,
                join: None,
                checkpoints: Vec::new(),
                vetoed: false,
                checkpoint_in_flight: false,
                checkpoint_taken: Slot::ZERO,
            });
            if i < bootstrap {
                sim.start_node(i);
            }
        }
        if sim.cfg.safety_us > 0 {
            for c in 0..sim.clients.len() {
                for _ in 0..sim.cfg.client_outstanding_max {
                    let at = sim.rng.next_u64() % 2_000;
                    sim.schedule(at, Event::ClientStart { client: c });
                }
            }
            let f = sim.cfg.faults.clone();
            if f.partition_mean_us > 0 {
                let at = sim.rng.next_u64() % (2 * f.partition_mean_us);
                sim.schedule(at, Event::PartitionStart);
            }
            if f.crash_mean_us > 0 {
                let at = sim.rng.next_u64() % (2 * f.crash_mean_us);
                sim.schedule(
                    at,
                    Event::Crash {
                        node: usize::MAX,
                        scheduled: true,
                    },
                );
            }
            if f.reconfig_mean_us > 0 {
                let at = sim.rng.next_u64() % (2 * f.reconfig_mean_us);
                sim.schedule(at, Event::Reconfigure);
            }
            if f.leadership_mean_us > 0 {
                let at = sim.rng.next_u64() % (2 * f.leadership_mean_us);
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

    /// Boots node `i` from its medium. A corrupt log is salvaged (the
    /// replica then refuses to promise what it lost until it has learned
    /// it); a wiped or unsalvageable one keeps the replica down for good.
    fn start_node(&mut self, i: usize) {
        let config = self.replica_config(i, self.nodes[i].incarnation);
        let medium = self.nodes[i]
            .medium
            .take()
            .expect("a down node has a medium");
        let id = self.members[i];
        let (storage, mut state) = match medium.open(CLUSTER, id) {
            Opened::Clean(st, state) => (st, state),
            Opened::Salvaged(st, state, why) => {
                self.stats.salvaged += 1;
                if self.cfg.trace {
                    self.trace
                        .push(format!("{:>9} node {i} salvages its log: {why}", self.now));
                }
                (st, state)
            }
            Opened::Refused(medium, why) => {
                self.stats.refused_starts += 1;
                if self.cfg.trace {
                    self.trace
                        .push(format!("{:>9} node {i} cannot start: {why}", self.now));
                }
                let node = &mut self.nodes[i];
                node.medium = Some(medium);
                node.refused = Some(why.to_string());
                return;
            }
        };
        if self.cfg.forget_unprovable {
            // Planted bug: start as if nothing had been lost.
            state.unprovable = None;
        }
        // What a crash kept of the unsynced writes is durable now.
        let node = &mut self.nodes[i];
        let mut kept = Vec::new();
        let unsynced = node.unsynced.len();
        for w in node.unsynced.drain(..) {
            if state
                .entries
                .iter()
                .any(|e| e.slot == w.slot && e.ballot == w.ballot && e.value == w.value)
            {
                kept.push(w);
            }
        }
        self.stats.unsynced_lost += (unsynced - kept.len()) as u64;
        let node = &mut self.nodes[i];
        node.unsynced_promised = Ballot::ZERO;
        node.durable_promised = state.promised;
        node.unsynced_commit = Slot::ZERO;
        node.durable_commit = node.durable_commit.max(state.commit);
        node.retired_seen = false;
        node.durable_entries = state.entries.iter().map(|e| (e.slot, e.ballot)).collect();
        for w in &kept {
            if let Err(v) = self.ledger.on_durable_accept(i, w) {
                self.set_violation(v);
            }
        }
        // The newest durable checkpoint, then the log behind it.
        let newest = self.nodes[i].checkpoints.last().cloned();
        let covered = newest.as_ref().map_or(Slot::ZERO, |c| c.slot);
        if state.log_start > covered {
            let v = violation(
                ViolationKind::SlotsLost,
                format!(
                    "node {i}'s log starts at {} beyond its newest checkpoint ({covered}): \
                     the slots between are lost",
                    state.log_start
                ),
            );
            self.set_violation(v);
            // The runtime refuses to start such a replica; so does this.
            self.stats.refused_starts += 1;
            let node = &mut self.nodes[i];
            node.medium = Some(storage.crash(&mut self.rng, None));
            node.refused = Some("its log starts beyond its newest checkpoint".into());
            return;
        }
        let (executor, chain) = match newest {
            Some(ck) => {
                let executor = ck.executor(sim_session_limits(&self.cfg));
                state.entries.retain(|e| e.slot >= ck.slot);
                state.log_start = ck.slot;
                state.commit = state.commit.max(ck.slot);
                state.membership = executor.membership().cloned();
                self.stats.checkpoint_restores += 1;
                (executor, ck.chain)
            }
            None => {
                let start = state.log_start;
                (
                    Executor::new(SimKv::default(), sim_session_limits(&self.cfg), start),
                    0,
                )
            }
        };
        let replica = Replica::recover(config, state).expect("valid simulated config");
        let node = &mut self.nodes[i];
        node.replica = Some(replica);
        node.storage = Some(storage);
        node.refused = None;
        node.executor = executor;
        node.checkpoint_taken = node.executor.next_slot();
        node.checkpoint_in_flight = false;
        node.chain = chain;
        node.sync_scheduled = false;
        let phase = self.rng.next_u64() % TICK_US;
        let incarnation = node.incarnation;
        self.schedule(
            phase + 1,
            Event::Tick {
                node: i,
                incarnation,
            },
        );
        self.after_step(i);
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.next_seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.next_seq,
            event,
        });
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.rng.next_u32() % 1_000_000) < ppm
    }

    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.rng.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    fn latency(&mut self, from: usize) -> u64 {
        let f = &self.cfg.faults;
        let (base, reorder_ppm, reorder_us) = (f.delay_us, f.reorder_ppm, f.reorder_us);
        let mut d = self.between(base);
        if self.faults_on {
            if self.chance(reorder_ppm) {
                d += self.rng.next_u64() % (reorder_us + 1);
            }
            d += self.clog_us.get(from).copied().unwrap_or(0);
        }
        d
    }

    fn index(&self, id: ReplicaId) -> usize {
        (id.0 - 1) as usize
    }

    fn set_violation(&mut self, v: Violation) {
        if self.violation.is_none() {
            if self.cfg.trace {
                self.trace.push(format!(
                    "{:>9} VIOLATION {:?}: {}",
                    self.now, v.kind, v.detail
                ));
            }
            self.violation = Some(v);
        }
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    // ---- the event loop ----

    /// Processes the next event; false when none is left.
    pub fn step(&mut self) -> bool {
        let Some(Scheduled { time, event, .. }) = self.queue.pop() else {
            return false;
        };
        self.now = time;
        self.stats.events += 1;
        let mut h = std::hash::DefaultHasher::new();
        (self.trace_hash, time, event.identity()).hash(&mut h);
        self.trace_hash = h.finish();
        if self.cfg.trace {
            self.trace.push(format!("{time:>9} {event:?}"));
        }
        self.handle(event);
        true
    }

    /// Runs until `done` holds, a violation is found, or `deadline_us` passes.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, deadline_us: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while self.violation.is_none() {
            if done(self) {
                return true;
            }
            match self.queue.peek() {
                Some(s) if s.time <= deadline_us => {}
                _ => {
                    self.now = self.now.max(deadline_us);
                    return done(self);
                }
            }
            self.step();
        }
        false
    }

    /// Runs for `us` of simulated time.
    pub fn run_for(&mut self, us: u64) {
        let deadline = self.now + us;
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
                self.nodes[node].checkpoint_in_flight = false;
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
                let c = &mut self.clients[client];
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
                        let v = self.rng.next_u64() as usize % n;
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
                if id == self.partition_id {
                    self.heal_network();
                }
            }
            Event::Heal => self.heal(),
            Event::Reconfigure => self.reconfigure(),
            Event::Leadership => self.leadership_event(),
        }
    }

    /// Feeds an input to a live replica and carries out its outputs.
    fn with_replica(&mut self, i: usize, f: impl FnOnce(&mut Replica)) {
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return;
        };
        f(r);
        self.after_step(i);
    }

    /// Drains node `i`'s outputs: persist, send, apply, reply.
    fn after_step(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.out);
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_mut() else {
            self.out = out;
            return;
        };
        r.check_invariants();
        let retired_now = r.is_retired() && !node.retired_seen;
        node.retired_seen |= retired_now;
        r.drain(&mut out);
        let storage = node
            .storage
            .as_mut()
            .expect("a running replica has storage");
        let mut write_failed = None;
        let mut wrote = None;
        for req in out.persist.drain(..) {
            node.unsynced.extend(req.entries.iter().cloned());
            if let Some(p) = req.promised {
                node.unsynced_promised = node.unsynced_promised.max(p);
            }
            if let Some(c) = req.commit {
                node.unsynced_commit = node.unsynced_commit.max(c);
            }
            wrote = Some(req.token);
            if let Err(e) = storage.write(req) {
                write_failed = Some(e);
                break;
            }
        }
        if let Some(e) = write_failed {
            // A write error (a full log) stops the replica, like a failed sync.
            if self.cfg.trace {
                self.trace
                    .push(format!("{:>9} node {i} stops: {e}", self.now));
            }
            self.stats.storage_failures += 1;
            r.on_storage_failed();
            out.clear();
            self.out = out;
            return;
        }
        if let (Some(token), false) = (wrote, node.sync_scheduled) {
            node.sync_scheduled = true;
            let incarnation = node.incarnation;
            let d = self.between((10, 250));
            self.schedule(
                d,
                Event::SyncDone {
                    node: i,
                    incarnation,
                    token,
                },
            );
        }
        for env in out.send.drain(..) {
            self.send_peer(env);
        }
        let mut replies = std::mem::take(&mut self.replies);
        replies.append(&mut out.replies);
        for a in out.apply.drain(..) {
            let node = &mut self.nodes[i];
            let checked = self
                .ledger
                .check_applied(i, a.slot, &a.value)
                .and_then(|()| self.chains.extend(i, &mut node.chain, a.slot, &a.value));
            match checked {
                Err(v) => self.set_violation(v),
                Ok(true) => {
                    self.record_execution_order(&a.value);
                    self.applied_values.push(a.value.clone());
                    if let Value::Config(m) = &a.value {
                        // The first change of an epoch in the log is the
                        // one in force (a later one of the same epoch is
                        // stale and ignored alike by every replica).
                        self.config_epochs
                            .entry(m.epoch())
                            .or_insert_with(|| (a.slot, (**m).clone()));
                    }
                }
                Ok(false) => {}
            }
            let node = &mut self.nodes[i];
            node.executor.apply(&a, &mut replies);
            node.executor.check_invariants();
            if let Some((c, s)) = node.executor.state_machine().duplicate {
                let v = violation(
                    ViolationKind::ExactlyOnce,
                    format!("node {i} executed client {c} seq {s} twice"),
                );
                self.set_violation(v);
            }
        }
        for reply in replies.drain(..) {
            self.route_reply(i, reply);
        }
        self.replies = replies;
        if let Some(f) = out.fetch_checkpoint.take() {
            let from = self.index(f.from);
            let d = self.latency(i);
            let incarnation = self.nodes[i].incarnation;
            self.schedule(
                d,
                Event::CheckpointFetch {
                    node: i,
                    incarnation,
                    from,
                    at_least: f.at_least,
                },
            );
        }
        self.out = out;
        if retired_now && let Err(v) = self.check_release(i) {
            self.set_violation(v);
        }
        self.maybe_checkpoint(i);
    }

    /// Takes a checkpoint of node `i`'s state every `checkpoint_every_slots`
    /// applied slots, one at a time; it is durable after a write delay.
    fn maybe_checkpoint(&mut self, i: usize) {
        let every = self.cfg.checkpoint_every_slots;
        let node = &mut self.nodes[i];
        let applied = node.executor.next_slot();
        if every == 0
            || node.checkpoint_in_flight
            || node.replica.is_none()
            || applied.since(node.checkpoint_taken) < every
        {
            return;
        }
        // Frozen now, serialized when the write completes, after the
        // commands applied meanwhile (as the runtime's checkpoint thread).
        let frozen = node.executor.freeze();
        let chain = node.chain;
        node.checkpoint_in_flight = true;
        node.checkpoint_taken = applied;
        let incarnation = node.incarnation;
        if self.cfg.truncate_before_checkpoint_durable {
            // Planted bug: the log goes before the checkpoint is durable.
            self.truncate_log(i, applied);
        }
        let d = self.between((100, 3_000));
        self.schedule(
            d,
            Event::CheckpointDone {
                node: i,
                incarnation,
                slot: applied,
                frozen,
                chain,
            },
        );
    }

    /// Truncates node `i`'s durable log below `slot`.
    fn truncate_log(&mut self, i: usize, slot: Slot) {
        if let Some(st) = self.nodes[i].storage.as_mut()
            && let Err(e) = st.truncate_below(slot)
            && self.cfg.trace
        {
            self.trace
                .push(format!("{:>9} node {i} cannot truncate: {e}", self.now));
        }
    }

    /// Keeps `ckpt` among node `i`'s durable checkpoints (the newest
    /// `CHECKPOINTS_RETAINED`) and truncates the log behind the oldest.
    fn keep_checkpoint(&mut self, i: usize, ckpt: SimCheckpoint) {
        let node = &mut self.nodes[i];
        node.checkpoints.retain(|c| c.slot != ckpt.slot);
        node.checkpoints.push(ckpt);
        node.checkpoints.sort_by_key(|c| c.slot);
        let excess = node.checkpoints.len().saturating_sub(CHECKPOINTS_RETAINED);
        node.checkpoints.drain(..excess);
        let oldest = node.checkpoints[0].slot;
        let newest = node.checkpoints[node.checkpoints.len() - 1].slot;
        if let Some(r) = &mut node.replica {
            r.checkpoint_saved(newest.min(r.applied()));
        }
        self.truncate_log(i, oldest);
    }

    /// Node `from` answers a checkpoint fetch with its newest durable one
    /// at or beyond `at_least` (nothing if it is down or has none: the
    /// asking replica asks again).
    fn serve_checkpoint(&mut self, node: usize, incarnation: u32, from: usize, at_least: Slot) {
        if self.nodes[from].replica.is_none() {
            return;
        }
        let Some(ckpt) = self.nodes[from]
            .checkpoints
            .last()
            .filter(|c| c.slot >= at_least)
            .cloned()
        else {
            return;
        };
        let d = self.latency(from) + self.between((100, 2_000));
        self.schedule(
            d,
            Event::CheckpointFetched {
                node,
                incarnation,
                ckpt,
            },
        );
    }

    /// A fetched checkpoint arrives: it is kept durably, the executor
    /// restored from it, and the replica continues from its slot (unless
    /// it has meanwhile reached it).
    fn install_checkpoint(&mut self, i: usize, incarnation: u32, ckpt: SimCheckpoint) {
        let node = &self.nodes[i];
        let Some(r) = node.replica.as_ref() else {
            return;
        };
        if node.incarnation != incarnation || r.commit() >= ckpt.slot {
            return;
        }
        let executor = ckpt.executor(sim_session_limits(&self.cfg));
        let slot = ckpt.slot;
        let membership = executor.membership().cloned();
        let r = self.nodes[i].replica.as_mut().expect("running");
        if !r.install_checkpoint(slot, membership.as_ref()) {
            return;
        }
        self.stats.checkpoint_installs += 1;
        if self.cfg.trace {
            self.trace.push(format!(
                "{:>9} node {i} installs a checkpoint at {slot}",
                self.now
            ));
        }
        let node = &mut self.nodes[i];
        node.executor = executor;
        node.chain = ckpt.chain;
        node.checkpoint_taken = slot;
        self.keep_checkpoint(i, ckpt);
        self.after_step(i);
    }

    /// A Promise or Accepted may leave only once what it reports is durable.
    fn check_durable_before_send(&self, from: usize, env: &Envelope) -> Result<(), Violation> {
        let node = &self.nodes[from];
        let durable = |slot: Slot, ballot: Ballot| {
            node.durable_entries
                .get(&slot)
                .is_some_and(|b| *b >= ballot)
        };
        let fail = |what: String| {
            Err(violation(
                ViolationKind::AckBeforeDurable,
                format!(
                    "node {from} sent {} to {} before {what} was durable",
                    env.msg.kind(),
                    env.to
                ),
            ))
        };
        match &env.msg {
            Message::Promise(p) => {
                if node.durable_promised < p.ballot {
                    return fail(format!("its promise of {}", p.ballot));
                }
                for e in &p.entries {
                    if !durable(e.slot, e.ballot) {
                        return fail(format!("{} {}", e.slot, e.ballot));
                    }
                }
            }
            Message::Accepted(a) => {
                // A slot it has applied is chosen: the core acknowledges
                // a re-sent Accept for it below its log start without
                // storing it, and that vote cannot change what is chosen.
                let applied = node.executor.next_slot();
                for slot in a.first.0.max(applied.0)..a.end.0 {
                    if !durable(Slot(slot), a.ballot) {
                        return fail(format!("s{slot} {}", a.ballot));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The first time any replica applies a slot, its commands' first
    /// occurrences are executions: their order is the witness handed to the
    /// linearizability checker (verified there, not trusted).
    fn record_execution_order(&mut self, value: &Value) {
        if let Value::Batch(b) = value {
            for cmd in b.iter() {
                let next = self.execution_order.len() as u64;
                self.execution_order
                    .entry((cmd.client.0, cmd.seq))
                    .or_insert(next);
            }
        }
    }

    fn send_peer(&mut self, env: Envelope) {
        self.stats.messages += 1;
        let (from, to) = (self.index(env.from), self.index(env.to));
        if let Err(v) = self.check_durable_before_send(from, &env) {
            self.set_violation(v);
        }
        if let Some(f) = self.filter.as_mut()
            && f(&env)
        {
            self.stats.messages_dropped += 1;
            return;
        }
        if self.faults_on {
            let f = &self.cfg.faults;
            let (drop, dup, xtalk) = (f.drop_ppm, f.dup_ppm, f.crosstalk_ppm);
            if self.blocked[from][to] || self.chance(drop) {
                self.stats.messages_dropped += 1;
                return;
            }
            if self.chance(dup) {
                let d = self.latency(from);
                self.schedule(d, Event::Deliver { env: env.clone() });
            }
            if self.chance(xtalk) {
                let mut foreign = env.clone();
                foreign.cluster = FOREIGN_CLUSTER;
                let d = self.latency(from);
                self.schedule(d, Event::Deliver { env: foreign });
            }
        }
        let d = self.latency(from);
        self.schedule(d, Event::Deliver { env });
    }

    fn sync_done(&mut self, i: usize, incarnation: u32, _token: PersistToken) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].replica.is_none() {
            return;
        }
        self.nodes[i].sync_scheduled = false;
        let fail = self.faults_on && self.chance(self.cfg.faults.fsync_fail_ppm);
        let node = &mut self.nodes[i];
        let storage = node
            .storage
            .as_mut()
            .expect("a running replica has storage");
        if fail {
            storage.fail_next_sync();
        }
        match storage.sync() {
            Ok(durable) => {
                // Everything written is durable now: the ledger learns the votes.
                let synced = std::mem::take(&mut node.unsynced);
                node.durable_promised = node.durable_promised.max(node.unsynced_promised);
                node.durable_commit = node.durable_commit.max(node.unsynced_commit);
                for w in &synced {
                    let b = node.durable_entries.entry(w.slot).or_insert(w.ballot);
                    *b = (*b).max(w.ballot);
                }
                for w in &synced {
                    if let Err(v) = self.ledger.on_durable_accept(i, w) {
                        self.set_violation(v);
                    }
                }
                self.with_replica(i, |r| r.on_persisted(durable));
            }
            Err(e) => {
                self.stats.fsync_failures += 1;
                if self.cfg.trace {
                    self.trace
                        .push(format!("{:>9} node {i} stops: {e}", self.now));
                }
                self.with_replica(i, |r| r.on_storage_failed());
            }
        }
    }

    // ---- clients ----

    fn client_start(&mut self, c: usize) {
        let client = &mut self.clients[c];
        let full = client.pending.len() >= self.cfg.client_outstanding_max as usize;
        if full || client.remaining == 0 || client.closing {
            return;
        }

        let may_close = self.faults_on
            && client.pending.is_empty()
            && client.session_used
            && !client.unknown
            && client.generation < u32::from(u16::MAX);
        if may_close && self.rng.next_u32().is_multiple_of(SESSION_CLOSE_ONE_IN) {
            self.begin_close(c);
            return;
        }
        let client = &mut self.clients[c];
        if client.remaining != u32::MAX {
            client.remaining -= 1;
        }
        let op = self
            .generator
            .next(&mut self.workload_rng, client.id.0, client.next_seq);
        self.begin_op(c, op);
    }

    /// Client `c` ends its session: a close command, like any other until
    /// answered (then the client goes on under a new id).
    fn begin_close(&mut self, c: usize) {
        let client = &mut self.clients[c];
        debug_assert!(client.pending.is_empty() && !client.closing);
        client.closing = true;
        client.pending.push(Pending {
            seq: SESSION_CLOSE_SEQ,
            bytes: Bytes::new(),
            history: usize::MAX,
            target: client.guess,
            // Every close has seq 0: its attempts are numbered apart from
            // an earlier close's, whose timers may still fire.
            attempt: client.generation << 16,
        });
        self.send_attempt(c, SESSION_CLOSE_SEQ);
    }

    /// Client `c`'s close was answered: its session is over everywhere it
    /// will be applied; it starts afresh under a new id.
    fn finish_close(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.pending.retain(|p| p.seq != SESSION_CLOSE_SEQ);
        debug_assert!(client.pending.is_empty());
        client.closing = false;
        client.session_used = false;
        // Numbered from 1 again, as `Client` does (a replica refuses a
        // session it does not hold whose client says it had commands
        // answered).
        client.next_seq = 1;
        client.generation += 1;
        client.id = ClientId((u64::from(client.generation) << 32) | (c as u64 + 1));
        self.stats.sessions_closed += 1;
        for _ in 0..self.cfg.client_outstanding_max {
            let think = self.rng.next_u64() % 300;
            self.schedule(think, Event::ClientStart { client: c });
        }
    }

    /// Starts `op` as client `c`'s next command.
    fn begin_op(&mut self, c: usize, op: KvOp) {
        self.stamp += 1;
        let client = &mut self.clients[c];
        let seq = client.next_seq;
        client.next_seq += 1;
        let bytes = encode_op(client.id.0, seq, &op);
        self.history.push(HistoryOp {
            client: client.id.0,
            op,
            invoke: self.stamp,
            response: None,
            witness: None,
        });
        self.history_seq.push(seq);
        client.pending.push(Pending {
            seq,
            bytes,
            history: self.history.len() - 1,
            target: client.guess,
            attempt: client.generation << 16,
        });
        self.send_attempt(c, seq);
    }

    /// Sends (again) client `c`'s command `seq` to the replica it believes leads.
    fn send_attempt(&mut self, c: usize, seq: u64) {
        let client = &mut self.clients[c];
        let guess = client.guess;
        // Every answer below the oldest command in flight was received
        // (before any was, the first seq, as `Client` sends).
        let ack_below = if client.session_used {
            client.pending.first().map_or(seq, |p| p.seq)
        } else {
            crate::state_machine::FIRST_SEQ
        };
        let p = client
            .pending
            .iter_mut()
            .find(|p| p.seq == seq)
            .expect("attempt without an operation");
        p.attempt += 1;
        p.target = guess;
        let (op, attempt, id) = (p.bytes.clone(), p.attempt, client.id);
        self.schedule(
            CLIENT_TIMEOUT_US,
            Event::ClientTimeout {
                client: c,
                seq,
                attempt,
            },
        );
        let packet = ClientPacket {
            client: c,
            node: guess,
            request: true,
        };
        if self.drop_client_packet(packet) {
            return;
        }
        let copies = if self.faults_on && self.chance(self.cfg.faults.client_dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.between((20, 200));
            let op = op.clone();
            self.schedule(
                d,
                Event::Request {
                    client: c,
                    id,
                    node: guess,
                    seq,
                    ack_below,
                    op,
                },
            );
        }
    }

    fn drop_client_packet(&mut self, packet: ClientPacket) -> bool {
        if let Some(f) = self.client_filter.as_mut()
            && f(packet)
        {
            return true;
        }
        self.faults_on && self.chance(self.cfg.faults.client_drop_ppm)
    }

    /// A replica produced `reply`; only the replica the client's current
    /// attempt went to answers it (it holds the connection).
    fn route_reply(&mut self, node: usize, reply: ClientReply) {
        let Some(c) = ((reply.client.0 & 0xffff_ffff) as usize).checked_sub(1) else {
            return;
        };
        let Some(client) = self.clients.get(c) else {
            return;
        };
        if client.id != reply.client {
            // For a session the client closed: nobody listens.
            if reply.result == Err(ProposeError::SessionExpired) {
                self.stats.closed_session_refusals += 1;
            }
            return;
        }
        let for_us = client
            .pending
            .iter()
            .any(|p| p.seq == reply.seq && p.target == node);
        if !for_us
            || self.drop_client_packet(ClientPacket {
                client: c,
                node,
                request: false,
            })
        {
            return;
        }
        let d = self.between((20, 200));
        self.schedule(
            d,
            Event::Response {
                client: c,
                node,
                reply,
            },
        );
    }

    fn client_response(&mut self, c: usize, node: usize, reply: ClientReply) {
        let n = self.nodes.len();
        let client = &mut self.clients[c];
        if client.id != reply.client {
            // For a session closed since it was sent.
            return;
        }
        let Some(p) = client.pending.iter().find(|p| p.seq == reply.seq) else {
            return;
        };
        if p.target != node {
            return;
        }
        let (seq, attempt, h) = (p.seq, p.attempt, p.history);
        match reply.result {
            Ok(_) if seq == SESSION_CLOSE_SEQ => self.finish_close(c),
            Ok(bytes) => {
                let Ok(result) = KvResult::decode(&bytes) else {
                    let v = violation(
                        ViolationKind::Protocol,
                        format!("undecodable result {bytes:?}"),
                    );
                    self.set_violation(v);
                    return;
                };
                self.stamp += 1;
                self.history[h].response = Some((self.stamp, result));
                self.finish_op(c, seq, true);
            }
            Err(ProposeError::NotLeader { hint }) => {
                // No hint: probably an election; wait a little longer.
                let (guess, wait) = match hint {
                    Some(id) if (id.0 as usize) >= 1 && (id.0 as usize) <= n => {
                        (id.0 as usize - 1, 300)
                    }
                    _ => ((client.guess + 1) % n, 1_000),
                };
                client.guess = guess;
                let retry = Event::ClientRetry {
                    client: c,
                    seq,
                    attempt,
                };
                self.schedule(wait, retry);
            }
            Err(ProposeError::Busy) => {
                let retry = Event::ClientRetry {
                    client: c,
                    seq,
                    attempt,
                };
                self.schedule(2_000, retry);
            }
            Err(ProposeError::SessionExpired) => self.finish_op(c, seq, false),
            Err(ProposeError::Invalid(why)) => {
                let v = violation(
                    ViolationKind::Protocol,
                    format!("valid request refused: {why}"),
                );
                self.set_violation(v);
            }
        }
    }

    fn finish_op(&mut self, c: usize, seq: u64, known: bool) {
        let client = &mut self.clients[c];
        client.pending.retain(|p| p.seq != seq);
        if known {
            client.session_used = true;
            self.stats.ops_completed += 1;
        } else {
            client.unknown = true;
            self.stats.ops_unknown += 1;
        }
        if client.remaining > 0 {
            let think = self.rng.next_u64() % 300;
            self.schedule(think, Event::ClientStart { client: c });
        }
    }

    // ---- faults ----

    /// Crashes node `i`: memory is lost, unsynced writes are lost except a
    /// random prefix (the torn tail of an in-order log).
    pub fn crash(&mut self, i: usize) {
        self.crash_with(i, None);
    }

    /// Crashes node `i` keeping the first `kept_ops` unsynced writes
    /// (`None`: a random number of them).
    pub fn crash_with(&mut self, i: usize, kept_ops: Option<usize>) {
        if self.nodes[i].replica.is_none() {
            return;
        }
        self.stats.crashes += 1;
        let node = &mut self.nodes[i];
        if let Some(r) = &node.replica {
            self.stats.counters.merge(r.counters());
        }
        node.replica = None;
        node.incarnation += 1;
        node.sync_scheduled = false;
        node.checkpoint_in_flight = false;
        let storage = node.storage.take().expect("a running replica has storage");
        node.medium = Some(storage.crash(&mut self.rng, kept_ops));
        if self.cfg.trace {
            let unsynced = self.nodes[i].unsynced.len();
            self.trace.push(format!(
                "{:>9} node {i} crashes with {unsynced} unsynced entries ({kept_ops:?} kept)",
                self.now
            ));
        }
    }

    /// Flips a bit in a record of node `i`'s medium while it is down
    /// (media corruption). Returns whether a record was there to hit.
    pub fn corrupt_disk(&mut self, i: usize) -> bool {
        let Some(medium) = self.nodes[i].medium.as_mut() else {
            return false;
        };
        let hit = medium.corrupt(&mut self.rng);
        if hit {
            self.nodes[i].damaged = true;
            self.stats.corruptions += 1;
            if self.cfg.trace {
                self.trace
                    .push(format!("{:>9} node {i}: a bit flips on its disk", self.now));
            }
        }
        hit
    }

    /// Flips a bit inside the durable copy of `value` on node `i`'s medium
    /// while it is down. Returns whether the value was found there.
    pub fn corrupt_value(&mut self, i: usize, value: &Value) -> bool {
        let Value::Batch(b) = value else {
            return false;
        };
        let Some(medium) = self.nodes[i].medium.as_mut() else {
            return false;
        };
        let hit = medium.corrupt_pattern(b.bytes());
        if hit {
            self.nodes[i].damaged = true;
            self.stats.corruptions += 1;
        }
        hit
    }

    /// Replaces node `i`'s medium with a blank one while it is down (a
    /// replaced disk). With `amnesia_restart` (a planted bug) the blank
    /// medium is formatted, so the replica restarts as if new.
    pub fn wipe_disk(&mut self, i: usize) {
        let backend = self.cfg.backend;
        let amnesia = self.cfg.amnesia_restart;
        let id = self.members[i];
        let node = &mut self.nodes[i];
        let Some(medium) = node.medium.as_mut() else {
            return;
        };
        medium.wipe();
        node.checkpoints.clear();
        if amnesia {
            *medium = Medium::format(backend, CLUSTER, id);
        }
        node.damaged = true;
        self.stats.wipes += 1;
        if self.cfg.trace {
            self.trace
                .push(format!("{:>9} node {i}: its disk is wiped", self.now));
        }
    }

    /// Nodes whose medium was corrupted or wiped.
    fn damaged_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.damaged).count()
    }

    /// Restarts node `i` from its durable state (a stopped replica is
    /// crashed first).
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i]
            .replica
            .as_ref()
            .is_some_and(|r| r.is_stopped())
        {
            self.crash(i);
        }
        if self.nodes[i].replica.is_some() || self.nodes[i].dormant {
            return;
        }
        self.stats.restarts += 1;
        self.start_node(i);
    }

    /// Starts node `i` as a replica joining `members` (its ids are node
    /// indices): a dormant spare for the first time, or a removed replica
    /// coming back with its old disk (it is stopped first).
    pub fn start_joiner(&mut self, i: usize, members: &[usize]) {
        if self.nodes[i].replica.is_some() {
            self.crash(i);
        }
        // As an operator starts it (README): `join = true` and the new
        // configuration, no `join_epoch`; the replica works out which
        // change adds it.
        let node = &mut self.nodes[i];
        node.dormant = false;
        node.join = Some((members.iter().map(|m| self.members[*m]).collect(), 0));
        if self.cfg.trace {
            self.trace
                .push(format!("{:>9} node {i} joins, told {members:?}", self.now));
        }
        self.start_node(i);
    }

    /// Asks the current leader to change the configuration to `members`
    /// (node indices). Returns whether a leader took the request.
    pub fn change_config(&mut self, members: &[usize]) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let ids: Vec<ReplicaId> = members.iter().map(|m| self.members[*m]).collect();
        let mut taken = false;
        self.with_replica(l, |r| taken = r.propose_config(ids).is_ok());
        if self.cfg.trace {
            self.trace.push(format!(
                "{:>9} node {l} asked to change to {members:?}: {taken}",
                self.now
            ));
        }
        taken
    }

    /// Whether node `i` is writing a checkpoint (not yet durable).
    pub fn checkpoint_in_flight(&self, i: usize) -> bool {
        self.nodes[i].checkpoint_in_flight
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].replica.is_some()
    }

    /// Log entries node `i` has written and not yet synced: what a crash
    /// now may tear.
    pub fn unsynced_entries(&self, i: usize) -> usize {
        self.nodes[i].unsynced.len()
    }

    fn partition_start(&mut self) {
        if !self.recur(self.cfg.faults.partition_mean_us, Event::PartitionStart) {
            return;
        }
        self.heal_network();
        self.stats.partitions += 1;
        self.partition_id += 1;
        let n = self.nodes.len();
        match self.rng.next_u32() % 4 {
            0 => {
                // Split in two.
                let side: Vec<bool> = (0..n)
                    .map(|_| self.rng.next_u32().is_multiple_of(2))
                    .collect();
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
            }
            1 => {
                // Some one-way links.
                for _ in 0..1 + self.rng.next_u32() % n as u32 {
                    let a = self.rng.next_u64() as usize % n;
                    let b = self.rng.next_u64() as usize % n;
                    self.blocked[a][b] = true;
                }
            }
            2 => {
                // Isolate one node, often the leader.
                let victim = match self.leader() {
                    Some(l) if self.rng.next_u32().is_multiple_of(2) => l,
                    _ => self.rng.next_u64() as usize % n,
                };
                self.isolate(victim);
            }
            _ => {
                // Clog one node's outgoing links.
                let victim = self.rng.next_u64() as usize % n;
                self.clog_us[victim] = 2_000 + self.rng.next_u64() % 20_000;
            }
        }
        let d = self.between(self.cfg.faults.partition_us);
        let id = self.partition_id;
        self.schedule(d, Event::PartitionEnd { id });
    }

    /// Blocks every link to and from node `i`.
    pub fn isolate(&mut self, i: usize) {
        let n = self.nodes.len();
        for j in 0..n {
            self.blocked[i][j] = j != i;
            self.blocked[j][i] = j != i;
        }
        self.faults_on = true;
    }

    /// Blocks (or unblocks) the one-way link `from → to`.
    pub fn set_blocked(&mut self, from: usize, to: usize, blocked: bool) {
        self.blocked[from][to] = blocked;
        if blocked {
            self.faults_on = true;
        }
    }

    /// Removes every partition and clog.
    pub fn heal_network(&mut self) {
        for row in &mut self.blocked {
            row.fill(false);
        }
        self.clog_us.fill(0);
    }

    /// Drops every peer message for which `filter` returns true.
    pub fn set_filter(&mut self, filter: MessageFilter) {
        self.filter = Some(filter);
    }

    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Drops every client packet for which `filter` returns true.
    pub fn set_client_filter(&mut self, filter: ClientFilter) {
        self.client_filter = Some(filter);
    }

    pub fn clear_client_filter(&mut self) {
        self.client_filter = None;
    }

    /// Delivers a crafted message after `delay_us` (a forged or foreign peer).
    pub fn inject(&mut self, env: Envelope, delay_us: u64) {
        self.schedule(delay_us, Event::Deliver { env });
    }

    /// A recurring fault: while the fault phase lasts, schedules the next
    /// `event` (uniform in `(0, 2 * mean_us]`) and returns true; after it,
    /// returns false (the fault stops recurring).
    fn recur(&mut self, mean_us: u64, event: Event) -> bool {
        if !self.faults_on {
            return false;
        }
        let next = self.rng.next_u64() % (2 * mean_us) + 1;
        self.schedule(next, event);
        true
    }

    /// A random configuration change during the fault phase: three
    /// distinct nodes; those not running as members start as joiners.
    fn reconfigure(&mut self) {
        if !self.recur(self.cfg.faults.reconfig_mean_us, Event::Reconfigure) {
            return;
        }
        let n = self.nodes.len();
        let Some(leader) = self.leader() else {
            return;
        };
        // Half the changes may remove the leader, checkpoints on or off: a
        // removed leader (and every removed member) departs, voting on
        // until a leader of the new configuration releases it, so a crash
        // during the hand-off cannot leave the new members not knowing the
        // change with no old quorum left to choose it again; and it serves
        // catch-up in its ballot to members that lack the change.
        let mut target: Vec<usize> = Vec::with_capacity(3);
        if self.rng.next_u32().is_multiple_of(2) {
            target.push(leader);
        }
        while target.len() < 3 {
            let m = self.rng.next_u64() as usize % n;
            if !target.contains(&m) {
                target.push(m);
            }
        }
        target.sort_unstable();
        let in_force: Vec<ReplicaId> = self
            .replica(leader)
            .map(|r| r.membership().1.to_vec())
            .unwrap_or_default();
        for &m in &target {
            // A removed replica comes back as a joiner, departing or
            // retired alike (as an operator restarts it with `join`): a
            // departing one left as it is would take the new leader's
            // heartbeats for its release and retire. Removed as the
            // leader (and `--status`) says, whatever the replica itself
            // has learned yet.
            let outside = self.nodes[m].dormant
                || !in_force.contains(&self.members[m])
                || self.nodes[m]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.is_retired() || r.is_departing());
            if outside {
                self.start_joiner(m, &target);
            }
        }
        if self.change_config(&target) {
            self.stats.reconfigurations += 1;
        }
    }

    /// A random leadership event during the fault phase: the leader
    /// relinquishes (and holds off for three election timeouts), or a
    /// node's veto on leading flips (a minority of nodes vetoed at most).
    fn leadership_event(&mut self) {
        if !self.recur(self.cfg.faults.leadership_mean_us, Event::Leadership) {
            return;
        }
        if self.rng.next_u32().is_multiple_of(2) {
            if let Some(leader) = self.leader() {
                self.with_replica(leader, |r| {
                    r.relinquish();
                });
            }
            return;
        }
        let n = self.nodes.len();
        let i = self.rng.next_u64() as usize % n;
        let vetoed = self.nodes.iter().filter(|n| n.vetoed).count();
        if self.nodes[i].vetoed || vetoed < (self.cfg.voters() - 1) / 2 {
            self.nodes[i].vetoed = !self.nodes[i].vetoed;
        }
    }

    /// End of the safety phase: faults stop, partitions heal, every
    /// crashed or stopped replica restarts, and each client owes
    /// `liveness_ops` more operations.
    fn heal(&mut self) {
        self.faults_on = false;
        self.heal_network();
        for n in &mut self.nodes {
            n.vetoed = false;
        }
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        for c in 0..self.clients.len() {
            self.clients[c].remaining = self.cfg.liveness_ops;
            let free = self.cfg.client_outstanding_max as usize - self.clients[c].pending.len();
            for _ in 0..free {
                self.schedule(1, Event::ClientStart { client: c });
            }
        }
    }

    // ---- scripted control and views ----

    /// Starts `op` as client `c`'s next command now (scripted scenarios).
    pub fn submit(&mut self, c: usize, op: KvOp) {
        self.begin_op(c, op);
    }

    /// Client `c` ends its session now (it must have nothing in flight);
    /// once answered, it goes on under a new id (scripted scenarios).
    pub fn close_session(&mut self, c: usize) {
        assert!(
            self.clients[c].pending.is_empty(),
            "a close with commands in flight"
        );
        self.begin_close(c);
    }

    /// Client `c`'s current id (a new one after each closed session).
    pub fn client_id(&self, c: usize) -> ClientId {
        self.clients[c].id
    }

    /// Whether client `c` has no operation in flight.
    pub fn client_idle(&self, c: usize) -> bool {
        self.clients[c].pending.is_empty()
    }

    /// Points client `c`'s next attempt at node `i`.
    pub fn aim_client(&mut self, c: usize, i: usize) {
        self.clients[c].guess = i;
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

    /// Whether every client finished its owed operations.
    pub fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.remaining == 0 && c.pending.is_empty())
    }

    /// Runs a seeded run to its end: the safety phase, the heal, and the
    /// liveness phase; then the final checks.
    pub fn run_to_end(mut self) -> SeedReport {
        let deadline = self.cfg.safety_us + self.cfg.liveness_us;
        let safety = self.cfg.safety_us;
        let done = self.run_until(deadline, |s| s.now > safety && s.clients_done());
        if !done && self.violation.is_none() {
            let detail = self.stuck_report();
            self.set_violation(violation(ViolationKind::Liveness, detail));
        }
        if done && self.violation.is_none() {
            // Liveness per replica, not only per client: within a further
            // second every member of the configuration in force runs, is
            // in it and has caught up; every replica a change removed has
            // retired (a quorum serving clients hides the others).
            let end = self.now + MEMBERS_SETTLE_US;
            let settled = self.run_until(end, |s| s.members_settled().is_ok());
            if !settled
                && self.violation.is_none()
                && let Err(why) = self.members_settled()
            {
                let detail = format!("{why};{}", self.stuck_report());
                self.set_violation(violation(ViolationKind::Liveness, detail));
            }
        }
        if self.violation.is_none()
            && let Err(v) = self.check_final()
        {
            self.set_violation(v);
        }
        self.report()
    }

    /// Checks that hold at the end of a run: the history is linearizable and
    /// every acknowledged command is in a chosen slot.
    pub fn check_final(&self) -> Result<(), Violation> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        for (client, seq) in self.acknowledged() {
            if !self.ledger.is_command_chosen(client, seq) {
                return Err(violation(
                    ViolationKind::LostAcknowledged,
                    format!(
                        "client {} seq {seq} acknowledged but never chosen",
                        client.0
                    ),
                ));
            }
        }
        self.check_state_replays()?;
        let mut history = self.history.clone();
        for (op, seq) in history.iter_mut().zip(&self.history_seq) {
            op.witness = self.execution_order.get(&(op.client, *seq)).copied();
        }
        linearizability::check(&history).map_err(|e| {
            violation(
                ViolationKind::Linearizability,
                format!("key {:?} ({} ops):{}", e.key, e.ops, e.detail),
            )
        })
    }

    /// Every running replica's state equals the chosen log replayed from
    /// genesis to its apply point, whatever checkpoints it took, restored
    /// or installed on the way.
    fn check_state_replays(&self) -> Result<(), Violation> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.replica.is_none() {
                continue;
            }
            let upto = node.executor.next_slot().0 as usize;
            let mut replay =
                Executor::new(SimKv::default(), sim_session_limits(&self.cfg), Slot::ZERO);
            let mut replies = Vec::new();
            for (slot, value) in self.applied_values[..upto].iter().enumerate() {
                let a = Apply {
                    slot: Slot(slot as u64),
                    value: value.clone(),
                };
                replay.apply(&a, &mut replies);
                replies.clear();
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            node.executor.snapshot(&mut a);
            replay.snapshot(&mut b);
            if a != b {
                return Err(violation(
                    ViolationKind::StateDiverged,
                    format!(
                        "node {i}'s state at slot {upto} differs from replaying the chosen log \
                         ({} checkpoints kept, {} restores, {} installs in the run)",
                        node.checkpoints.len(),
                        self.stats.checkpoint_restores,
                        self.stats.checkpoint_installs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `(client, seq)` of every acknowledged operation. A client's n-th
    /// operation has seq n (each `begin_op` takes the next seq).
    fn acknowledged(&self) -> Vec<(ClientId, u64)> {
        self.history
            .iter()
            .zip(&self.history_seq)
            .filter(|(op, _)| op.response.is_some())
            .map(|(op, seq)| (ClientId(op.client), *seq))
            .collect()
    }

    /// Whether every member of the newest configuration any running
    /// replica knows is running, knows it, and has committed as far as the
    /// furthest replica; and whether every running replica outside it that
    /// was ever a member has retired. (A replica that cannot start, its
    /// disk wiped or unsalvageable, is the operator's to replace; a joiner
    /// whose change was never made stays a joiner.)
    fn members_settled(&self) -> Result<(), String> {
        let running = || {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((i, n.replica.as_ref()?)))
        };
        let Some((epoch, members)) = running()
            .filter(|(_, r)| r.membership_known())
            .map(|(_, r)| r.membership())
            .max_by_key(|(e, _)| *e)
            .map(|(e, m)| (e, m.to_vec()))
        else {
            return Ok(());
        };
        let commit = running()
            .map(|(_, r)| r.commit())
            .max()
            .unwrap_or(Slot::ZERO);
        for id in &members {
            let i = self.index(*id);
            if self.nodes[i].refused.is_some() {
                continue;
            }
            let Some(r) = self.nodes[i].replica.as_ref() else {
                return Err(format!(" member n{i} of epoch {epoch} is down"));
            };
            if r.is_retired() || r.membership().0 != epoch || r.commit() < commit {
                return Err(format!(
                    " member n{i} of epoch {epoch} retired {} epoch {} commit {} (furthest {commit})",
                    r.is_retired(),
                    r.membership().0,
                    r.commit()
                ));
            }
        }
        for (i, r) in running() {
            if !members.contains(&r.id()) && r.is_departing() {
                return Err(format!(" n{i}, removed, never released"));
            }
        }
        Ok(())
    }

    /// Node `i` just retired: some configuration at or after the one it
    /// knows removed it must be established, a quorum of its members
    /// having durably committed past the change that made it.
    fn check_release(&self, i: usize) -> Result<(), Violation> {
        let Some(r) = self.nodes[i].replica.as_ref() else {
            return Ok(());
        };
        let epoch = r.membership().0;
        let established =
            self.config_epochs
                .iter()
                .filter(|(e, _)| **e >= epoch)
                .any(|(_, (slot, m))| {
                    let durable = m
                        .members()
                        .iter()
                        .filter(|id| self.nodes[self.index(**id)].durable_commit > *slot)
                        .count();
                    durable >= m.quorum()
                });
        if established {
            return Ok(());
        }
        Err(violation(
            ViolationKind::PrematureRelease,
            format!(
                "node {i} retired at epoch {epoch} before any configuration since was established (durable commits: {:?})",
                self.nodes
                    .iter()
                    .map(|n| n.durable_commit.0)
                    .collect::<Vec<_>>()
            ),
        ))
    }

    fn stuck_report(&self) -> String {
        let mut s = format!("clients not done {}µs after heal;", self.cfg.liveness_us);
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.replica {
                Some(r) => s.push_str(&format!(
                    " n{i}:{:?} promised {} commit {} stopped {} retired {} epoch {} members {:?} known {};",
                    r.role(),
                    r.promised(),
                    r.commit(),
                    r.is_stopped(),
                    r.is_retired(),
                    r.membership().0,
                    r.membership().1.iter().map(|m| m.0 - 1).collect::<Vec<_>>(),
                    r.membership_known(),
                )),
                None => s.push_str(&format!(" n{i}:down;")),
            }
        }
        s
    }

    /// The run's report (without running further).
    pub fn report(mut self) -> SeedReport {
        for n in &self.nodes {
            if let Some(r) = &n.replica {
                self.stats.counters.merge(r.counters());
            }
        }
        self.stats.elections_won = self.stats.counters.get(Counter::ElectionsWon);
        SeedReport {
            seed: self.cfg.seed,
            violation: self.violation,
            commands_committed: self.ledger.commands_chosen(),
            slots_chosen: self.ledger.slots_chosen(),
            sim_time_us: self.now,
            trace_hash: self.trace_hash,
            trace: self.trace,
            stats: self.stats,
        }
    }
}
