//! Checkpoints in the simulator: taken, kept, served to a peer, installed,
//! and the log truncated behind them.

use std::rc::Rc;

use super::super::config::SimConfig;
use super::super::workload::SimKv;
use crate::core::Slot;
use crate::state_machine::{Executor, SessionLimits};
use crate::storage::Storage;

use super::*;

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
    pub(super) fn executor(&self, limits: SessionLimits) -> Executor<SimKv> {
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
pub(super) fn sim_session_limits(cfg: &SimConfig) -> SessionLimits {
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

pub(super) fn sim_log_ahead_slots_max(cfg: &SimConfig) -> u64 {
    64.max(u64::from(cfg.window_slots_max))
}

/// One in this many of a client's starts, with nothing in flight during
/// the fault phase, closes its session instead (the client goes on under
/// a new id).
pub(super) const SESSION_CLOSE_ONE_IN: u32 = 8;

/// Checkpoints each node keeps (the log is truncated behind the oldest).
pub(super) const CHECKPOINTS_RETAINED: usize = 2;

/// The simulated replicas' `log_retained_bytes_max` when they checkpoint:
/// small, so compaction by bytes happens under every fault schedule.
pub(super) const SIM_LOG_RETAINED_BYTES_MAX: u64 = 4096;

impl Sim {
    /// Takes a checkpoint of node `i`'s state every `checkpoint_every_slots`
    /// applied slots, one at a time; it is durable after a write delay.
    pub(super) fn maybe_checkpoint(&mut self, i: usize) {
        let every = self.cfg.checkpoint_every_slots;
        let node = &mut self.nodes[i];
        let applied = node.executor.next_slot();
        if every == 0
            || node.checkpoints.in_flight
            || node.replica.is_none()
            || applied.since(node.checkpoints.taken) < every
        {
            return;
        }
        // Frozen now, serialized when the write completes, after the
        // commands applied meanwhile (as the runtime's checkpoint thread).
        let frozen = node.executor.freeze();
        let chain = node.seen.chain;
        node.checkpoints.in_flight = true;
        node.checkpoints.taken = applied;
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
    pub(super) fn truncate_log(&mut self, i: usize, slot: Slot) {
        if let Some(st) = self.nodes[i].disk.open.as_mut()
            && let Err(e) = st.truncate_below(slot)
            && self.cfg.trace
        {
            self.trace.lines.push(format!(
                "{:>9} node {i} cannot truncate: {e}",
                self.sched.now
            ));
        }
    }

    /// Keeps `ckpt` among node `i`'s durable checkpoints (the newest
    /// `CHECKPOINTS_RETAINED`) and truncates the log behind the oldest.
    pub(super) fn keep_checkpoint(&mut self, i: usize, ckpt: SimCheckpoint) {
        let node = &mut self.nodes[i];
        node.checkpoints.kept.retain(|c| c.slot != ckpt.slot);
        node.checkpoints.kept.push(ckpt);
        node.checkpoints.kept.sort_by_key(|c| c.slot);
        let excess = node
            .checkpoints
            .kept
            .len()
            .saturating_sub(CHECKPOINTS_RETAINED);
        node.checkpoints.kept.drain(..excess);
        let oldest = node.checkpoints.kept[0].slot;
        let newest = node.checkpoints.kept[node.checkpoints.kept.len() - 1].slot;
        if let Some(r) = &mut node.replica {
            r.checkpoint_saved(newest.min(r.applied()));
        }
        self.truncate_log(i, oldest);
    }

    /// Node `from` answers a checkpoint fetch with its newest durable one
    /// at or beyond `at_least` (nothing if it is down or has none: the
    /// asking replica asks again).
    pub(super) fn serve_checkpoint(
        &mut self,
        node: usize,
        incarnation: u32,
        from: usize,
        at_least: Slot,
    ) {
        if self.nodes[from].replica.is_none() {
            return;
        }
        let Some(ckpt) = self.nodes[from]
            .checkpoints
            .kept
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
    pub(super) fn install_checkpoint(&mut self, i: usize, incarnation: u32, ckpt: SimCheckpoint) {
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
            self.trace.lines.push(format!(
                "{:>9} node {i} installs a checkpoint at {slot}",
                self.sched.now
            ));
        }
        let node = &mut self.nodes[i];
        node.executor = executor;
        node.seen.chain = ckpt.chain;
        node.checkpoints.taken = slot;
        self.keep_checkpoint(i, ckpt);
        self.after_step(i);
    }
}
