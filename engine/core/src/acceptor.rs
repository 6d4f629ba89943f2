//! The acceptor: promises (phase 1b) and accepts (phase 2b).
//!
//! Every state change is written to the outbox before the reply that
//! reports it, and replies go through `send_after_persist`, so nothing is
//! acknowledged before it is durable.

use super::counters::Counter;
use super::log::Entry;
use super::message::{Accept, Nack, NackReason, Prepare, Promise, PromiseEntry};
use super::output::accepted_one;
use super::replica::Replica;
use super::types::{Ballot, ReplicaId, Slot};

impl Replica {
    /// Phase 1a: promise `m.ballot` unless a higher ballot was promised or
    /// the candidate lags too far behind to lead.
    pub(crate) fn on_prepare(&mut self, from: ReplicaId, m: Prepare) {
        let promised = self.s.acceptor.promised;
        let commit = self.s.learner.commit;
        if m.ballot < promised {
            self.s.counters.bump(Counter::IgnorePrepareStale);
            self.nack(from, m.ballot, NackReason::Superseded);
            return;
        }
        if self.s.unprovable.is_some_and(|u| m.from < u.below) {
            self.s.counters.bump(Counter::IgnorePrepareUnprovable);
            self.nack(from, m.ballot, NackReason::Unprovable);
            return;
        }
        // A departing replica promises however far behind the candidate is
        // (while it can report from there): it cannot stand itself, and
        // the candidate may be the only one left able to choose the change
        // that removed it again (simulator seed 764).
        let too_far = commit.since(m.from) > self.s.config.promise_lag_slots_max;
        let lagging = (too_far && !self.is_departing()) || m.from < self.s.acceptor.log.start();
        if lagging {
            self.s.counters.bump(Counter::IgnorePrepareLagging);
            self.nack(from, m.ballot, NackReason::Lagging);
            return;
        }
        if m.ballot > promised && self.hears_live_leader(m.ballot.replica) {
            self.s.counters.bump(Counter::IgnorePrepareLeaderAlive);
            self.nack(from, m.ballot, NackReason::LeaderAlive);
            return;
        }
        if m.ballot > promised {
            self.s.promise(m.ballot);
            self.step_down_if_superseded(None);
            if let super::replica::Role::Follower(f) = &mut self.role {
                // Give the candidate time to win before competing with it.
                f.leader = None;
                f.election_elapsed = 0;
            }
        }
        let promise = self.promise_chunk(m.ballot, m.from);
        // Postcondition: we promised exactly the ballot we report.
        assert_eq!(self.s.acceptor.promised, m.ballot);
        self.s.out.send_after_persist(from, promise);
    }

    /// Whether this replica leads, or heard from its leader within the
    /// shortest election timeout. Such a replica promises no new ballot, so
    /// a replica cut off from a working leader cannot depose it (partial
    /// connectivity); once the leader is silent for a timeout, it does.
    fn hears_live_leader(&self, candidate: ReplicaId) -> bool {
        match &self.role {
            super::replica::Role::Leader(_) => true,
            super::replica::Role::Follower(f) => {
                // The leader itself running phase 1 again (after a
                // configuration change) deposes nobody.
                f.leader.is_some_and(|l| l != candidate)
                    && f.election_elapsed < self.s.config.election_ticks
            }
            super::replica::Role::Candidate(_) => false,
        }
    }

    /// The entries from `from` on, up to `promise_bytes_max` of payload.
    fn promise_chunk(&self, ballot: Ballot, from: Slot) -> Promise {
        let bytes_max = self.s.config.promise_bytes_max;
        let mut bytes = 0u64;
        let mut entries = Vec::new();
        let mut more = None;
        for (slot, e) in self.s.acceptor.log.iter_from(from) {
            let len = e.value.payload_len() as u64;
            if !entries.is_empty() && bytes + len > bytes_max {
                more = Some(slot);
                break;
            }
            bytes += len;
            entries.push(PromiseEntry {
                slot,
                ballot: e.ballot,
                value: e.value.clone(),
            });
        }
        Promise {
            ballot,
            entries,
            commit: self.s.learner.commit,
            more,
        }
    }

    /// Phase 2a: accept `m.value` in `m.slot` unless a higher ballot was promised.
    pub(crate) fn on_accept(&mut self, from: ReplicaId, m: Accept) {
        let promised = self.s.acceptor.promised;
        if m.ballot < promised {
            self.s.counters.bump(Counter::IgnoreAcceptStale);
            self.nack(from, m.ballot, NackReason::Superseded);
            return;
        }
        if m.ballot > promised {
            self.s.promise(m.ballot);
            self.step_down_if_superseded(Some(from));
        }
        self.follow(from);
        self.accept(from, m.ballot, m.slot, m.value);
        self.learn_commit(from, m.ballot, m.commit);
        // Postcondition: we follow the Accept's ballot, nothing higher.
        assert_eq!(self.s.acceptor.promised, m.ballot);
    }

    /// Stores `value` as accepted in `slot` at `ballot` and acknowledges it
    /// once durable. Precondition: `ballot == promised`.
    fn accept(
        &mut self,
        leader: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        value: super::value::Value,
    ) {
        let s = &mut self.s;
        assert_eq!(
            ballot, s.acceptor.promised,
            "accept outside the promised ballot"
        );
        let commit = s.learner.commit;
        let log = &mut s.acceptor.log;
        if slot < log.start() {
            // Applied and compacted: chosen long ago, and a leader proposes
            // only the chosen value in a chosen slot. Acknowledge.
            s.out.send_after_persist(leader, accepted_one(ballot, slot));
            return;
        }
        if slot >= commit.plus(s.config.log_ahead_slots_max) {
            s.counters.bump(Counter::IgnoreAcceptBeyondLogAhead);
            return;
        }
        if let Some(e) = log.get(slot) {
            if slot < commit && e.value != value {
                s.counters.bump(Counter::IgnoreAcceptConflictsCommitted);
                return;
            }
            if e.ballot == ballot {
                if e.value != value {
                    s.counters.bump(Counter::IgnoreAcceptConflict);
                    return;
                }
                // A retransmission of what we hold: acknowledge again.
                s.out.send_after_persist(leader, accepted_one(ballot, slot));
                return;
            }
        }
        s.out.write_entry(slot, ballot, value.clone());
        log.put(slot, Entry { ballot, value });
        debug_assert!(log.get(slot).is_some_and(|e| e.ballot == ballot));
        s.out.send_after_persist(leader, accepted_one(ballot, slot));
    }

    /// Refuses `ballot` to `to`, reporting the promised ballot and commit point.
    pub(crate) fn nack(&mut self, to: ReplicaId, ballot: Ballot, reason: NackReason) {
        let nack = Nack {
            ballot,
            reason,
            promised: self.s.acceptor.promised,
            commit: self.s.learner.commit,
        };
        self.s.out.send_now(to, nack);
    }
}
