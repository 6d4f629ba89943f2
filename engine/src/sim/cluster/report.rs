//! What a run counted, and the seed's report.

use super::super::checker::{Violation, ViolationKind, violation};
use crate::core::{Counter, Counters};

use super::*;

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

impl Sim {
    /// Runs a seeded run to its end: the safety phase, the heal, and the
    /// liveness phase; then the final checks.
    pub fn run_to_end(mut self) -> SeedReport {
        let deadline = self.cfg.safety_us + self.cfg.liveness_us;
        let safety = self.cfg.safety_us;
        let done = self.run_until(deadline, |s| s.sched.now > safety && s.clients_done());
        if !done && self.checks.violation.is_none() {
            let detail = self.stuck_report();
            self.set_violation(violation(ViolationKind::Liveness, detail));
        }
        if done && self.checks.violation.is_none() {
            // Liveness per replica, not only per client: within a further
            // second every member of the configuration in force runs, is
            // in it and has caught up; every replica a change removed has
            // retired (a quorum serving clients hides the others).
            let end = self.sched.now + MEMBERS_SETTLE_US;
            let settled = self.run_until(end, |s| s.members_settled().is_ok());
            if !settled
                && self.checks.violation.is_none()
                && let Err(why) = self.members_settled()
            {
                let detail = format!("{why};{}", self.stuck_report());
                self.set_violation(violation(ViolationKind::Liveness, detail));
            }
        }
        if self.checks.violation.is_none()
            && let Err(v) = self.check_final()
        {
            self.set_violation(v);
        }
        self.report()
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
            violation: self.checks.violation,
            commands_committed: self.ledger.commands_chosen(),
            slots_chosen: self.ledger.slots_chosen(),
            sim_time_us: self.sched.now,
            trace_hash: self.trace.hash,
            trace: self.trace.lines,
            stats: self.stats,
        }
    }
}
