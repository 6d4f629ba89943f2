//! The replicas: started from their media, stepped, synced, crashed,
//! restarted, their disks corrupted or wiped, joiners added.

use rand_core::Rng;
use rustc_hash::FxHashMap;

use super::super::checker::{ViolationKind, violation};
use super::super::disk::{Medium, Opened, SimStorage};
use super::super::workload::SimKv;
use crate::core::{Ballot, EntryWrite, PersistToken, Replica, ReplicaId, Slot, Value};
use crate::state_machine::Executor;
use crate::storage::Storage;

use super::*;

/// One simulated replica with its disk and state machine.
pub struct Node {
    pub id: ReplicaId,
    pub replica: Option<Replica>,
    pub disk: NodeDisk,
    pub executor: Executor<SimKv>,
    pub incarnation: u32,
    /// What the checkers know of its durable state.
    pub seen: Seen,
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
    pub checkpoints: NodeCheckpoints,
    /// The application vetoes this node's candidacies (handed to the
    /// replica before each tick, as the runtime does).
    pub vetoed: bool,
}

/// A node's disk: the open backend while the replica runs, the medium
/// alone while it is down, and whether a sync is scheduled.
pub struct NodeDisk {
    pub open: Option<SimStorage>,
    pub medium: Option<Medium>,
    pub(super) sync_scheduled: bool,
}

/// What the checkers know of a node's durable state.
#[derive(Default)]
pub struct Seen {
    /// Hash chain of this incarnation's applied slots.
    pub(super) chain: u64,
    /// Entries written but not yet synced (the ledger learns them at sync,
    /// or at restart if a crash kept them).
    pub(super) unsynced: Vec<EntryWrite>,
    pub(super) unsynced_promised: Ballot,
    pub(super) unsynced_commit: Slot,
    /// What the checkers know to be durable.
    pub(super) durable_promised: Ballot,
    /// The commit point storage made durable (as far as the checkers know).
    pub durable_commit: Slot,
    /// The running replica was seen retired (checked once, when it retires).
    pub(super) retired: bool,
    pub(super) durable_entries: FxHashMap<Slot, Ballot>,
}

/// A node's checkpoints: the durable ones, oldest first (they survive
/// crashes, not wipes), one being written (lost if the node crashes
/// first), and the applied slot at the last one taken.
#[derive(Default)]
pub struct NodeCheckpoints {
    pub kept: Vec<SimCheckpoint>,
    pub in_flight: bool,
    pub(super) taken: Slot,
}

impl Sim {
    /// Boots node `i` from its medium. A corrupt log is salvaged (the
    /// replica then refuses to promise what it lost until it has learned
    /// it); a wiped or unsalvageable one keeps the replica down for good.
    pub(super) fn start_node(&mut self, i: usize) {
        let config = self.replica_config(i, self.nodes[i].incarnation);
        let medium = self.nodes[i]
            .disk
            .medium
            .take()
            .expect("a down node has a medium");
        let id = self.members[i];
        let (storage, mut state) = match medium.open(CLUSTER, id) {
            Opened::Clean(st, state) => (st, state),
            Opened::Salvaged(st, state, why) => {
                self.stats.salvaged += 1;
                if self.cfg.trace {
                    self.trace.lines.push(format!(
                        "{:>9} node {i} salvages its log: {why}",
                        self.sched.now
                    ));
                }
                (st, state)
            }
            Opened::Refused(medium, why) => {
                self.stats.refused_starts += 1;
                if self.cfg.trace {
                    self.trace.lines.push(format!(
                        "{:>9} node {i} cannot start: {why}",
                        self.sched.now
                    ));
                }
                let node = &mut self.nodes[i];
                node.disk.medium = Some(medium);
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
        let unsynced = node.seen.unsynced.len();
        for w in node.seen.unsynced.drain(..) {
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
        node.seen.unsynced_promised = Ballot::ZERO;
        node.seen.durable_promised = state.promised;
        node.seen.unsynced_commit = Slot::ZERO;
        node.seen.durable_commit = node.seen.durable_commit.max(state.commit);
        node.seen.retired = false;
        node.seen.durable_entries = state.entries.iter().map(|e| (e.slot, e.ballot)).collect();
        for w in &kept {
            if let Err(v) = self.ledger.on_durable_accept(i, w) {
                self.set_violation(v);
            }
        }
        // The newest durable checkpoint, then the log behind it.
        let newest = self.nodes[i].checkpoints.kept.last().cloned();
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
            node.disk.medium = Some(storage.crash(&mut self.sched.rng, None));
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
        node.disk.open = Some(storage);
        node.refused = None;
        node.executor = executor;
        node.checkpoints.taken = node.executor.next_slot();
        node.checkpoints.in_flight = false;
        node.seen.chain = chain;
        node.disk.sync_scheduled = false;
        let phase = self.sched.rng.next_u64() % TICK_US;
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

    /// Feeds an input to a live replica and carries out its outputs.
    pub(super) fn with_replica(&mut self, i: usize, f: impl FnOnce(&mut Replica)) {
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return;
        };
        f(r);
        self.after_step(i);
    }

    /// Drains node `i`'s outputs: persist, send, apply, reply.
    pub(super) fn after_step(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.scratch.out);
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_mut() else {
            self.scratch.out = out;
            return;
        };
        r.check_invariants();
        let retired_now = r.is_retired() && !node.seen.retired;
        node.seen.retired |= retired_now;
        r.drain(&mut out);
        let storage = node
            .disk
            .open
            .as_mut()
            .expect("a running replica has storage");
        let mut write_failed = None;
        let mut wrote = None;
        for req in out.persist.drain(..) {
            node.seen.unsynced.extend(req.entries.iter().cloned());
            if let Some(p) = req.promised {
                node.seen.unsynced_promised = node.seen.unsynced_promised.max(p);
            }
            if let Some(c) = req.commit {
                node.seen.unsynced_commit = node.seen.unsynced_commit.max(c);
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
                    .lines
                    .push(format!("{:>9} node {i} stops: {e}", self.sched.now));
            }
            self.stats.storage_failures += 1;
            r.on_storage_failed();
            out.clear();
            self.scratch.out = out;
            return;
        }
        if let (Some(token), false) = (wrote, node.disk.sync_scheduled) {
            node.disk.sync_scheduled = true;
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
        let mut replies = std::mem::take(&mut self.scratch.replies);
        replies.append(&mut out.replies);
        for a in out.apply.drain(..) {
            let node = &mut self.nodes[i];
            let checked = self
                .ledger
                .check_applied(i, a.slot, &a.value)
                .and_then(|()| {
                    self.checks
                        .chains
                        .extend(i, &mut node.seen.chain, a.slot, &a.value)
                });
            match checked {
                Err(v) => self.set_violation(v),
                Ok(true) => {
                    self.record_execution_order(&a.value);
                    self.checks.applied_values.push(a.value.clone());
                    if let Value::Config(m) = &a.value {
                        // The first change of an epoch in the log is the
                        // one in force (a later one of the same epoch is
                        // stale and ignored alike by every replica).
                        self.checks
                            .config_epochs
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
        self.scratch.replies = replies;
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
        self.scratch.out = out;
        if retired_now && let Err(v) = self.check_release(i) {
            self.set_violation(v);
        }
        self.maybe_checkpoint(i);
    }

    pub(super) fn sync_done(&mut self, i: usize, incarnation: u32, _token: PersistToken) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].replica.is_none() {
            return;
        }
        self.nodes[i].disk.sync_scheduled = false;
        let fail = self.net.faults_on && self.chance(self.cfg.faults.fsync_fail_ppm);
        let node = &mut self.nodes[i];
        let storage = node
            .disk
            .open
            .as_mut()
            .expect("a running replica has storage");
        if fail {
            storage.fail_next_sync();
        }
        match storage.sync() {
            Ok(durable) => {
                // Everything written is durable now: the ledger learns the votes.
                let synced = std::mem::take(&mut node.seen.unsynced);
                node.seen.durable_promised =
                    node.seen.durable_promised.max(node.seen.unsynced_promised);
                node.seen.durable_commit = node.seen.durable_commit.max(node.seen.unsynced_commit);
                for w in &synced {
                    let b = node.seen.durable_entries.entry(w.slot).or_insert(w.ballot);
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
                        .lines
                        .push(format!("{:>9} node {i} stops: {e}", self.sched.now));
                }
                self.with_replica(i, |r| r.on_storage_failed());
            }
        }
    }

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
        node.disk.sync_scheduled = false;
        node.checkpoints.in_flight = false;
        let storage = node
            .disk
            .open
            .take()
            .expect("a running replica has storage");
        node.disk.medium = Some(storage.crash(&mut self.sched.rng, kept_ops));
        if self.cfg.trace {
            let unsynced = self.nodes[i].seen.unsynced.len();
            self.trace.lines.push(format!(
                "{:>9} node {i} crashes with {unsynced} unsynced entries ({kept_ops:?} kept)",
                self.sched.now
            ));
        }
    }

    /// Flips a bit in a record of node `i`'s medium while it is down
    /// (media corruption). Returns whether a record was there to hit.
    pub fn corrupt_disk(&mut self, i: usize) -> bool {
        let Some(medium) = self.nodes[i].disk.medium.as_mut() else {
            return false;
        };
        let hit = medium.corrupt(&mut self.sched.rng);
        if hit {
            self.nodes[i].damaged = true;
            self.stats.corruptions += 1;
            if self.cfg.trace {
                self.trace.lines.push(format!(
                    "{:>9} node {i}: a bit flips on its disk",
                    self.sched.now
                ));
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
        let Some(medium) = self.nodes[i].disk.medium.as_mut() else {
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
        let Some(medium) = node.disk.medium.as_mut() else {
            return;
        };
        medium.wipe();
        node.checkpoints.kept.clear();
        if amnesia {
            *medium = Medium::format(backend, CLUSTER, id);
        }
        node.damaged = true;
        self.stats.wipes += 1;
        if self.cfg.trace {
            self.trace
                .lines
                .push(format!("{:>9} node {i}: its disk is wiped", self.sched.now));
        }
    }

    /// Nodes whose medium was corrupted or wiped.
    pub(super) fn damaged_nodes(&self) -> usize {
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
            self.trace.lines.push(format!(
                "{:>9} node {i} joins, told {members:?}",
                self.sched.now
            ));
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
            self.trace.lines.push(format!(
                "{:>9} node {l} asked to change to {members:?}: {taken}",
                self.sched.now
            ));
        }
        taken
    }
}
