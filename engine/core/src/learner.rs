//! The learner: which slots are chosen, in-order hand-out for apply, and
//! catch-up of chosen values a follower lacks.

use super::config::Membership;
use super::counters::Counter;
use super::log::Log;
use super::message::{CatchupRequest, CheckpointNeeded, Nack, NackReason};
use super::output::{Apply, FetchCheckpoint};
use super::replica::{CatchupAsk, Replica, Role, Shared};
use super::types::{Ballot, ReplicaId, Slot};
use super::value::Value;

/// How many slots below the commit point `check_invariants` inspects
/// (the full log would make a per-step check quadratic in a long run).
const INVARIANT_WINDOW_SLOTS_MAX: u64 = 256;

/// Commit point and apply cursor.
#[derive(Debug)]
pub(crate) struct Learner {
    /// Invariant: every slot below `commit` is chosen, and each one still in
    /// memory holds the chosen value. Never decreases.
    pub commit: Slot,
    /// Every slot below `applied` was handed out for apply exactly once.
    /// Invariant: `log.start <= applied <= commit`.
    pub applied: Slot,
}

impl Learner {
    pub fn new(start: Slot, commit: Slot) -> Learner {
        assert!(start <= commit);
        Learner {
            commit,
            applied: start,
        }
    }

    pub fn check_invariants(&self, log: &Log) {
        assert!(self.applied <= self.commit, "applied beyond commit");
        assert!(log.start() <= self.applied, "compacted an unapplied slot");
        assert!(
            self.commit <= log.end().max(log.start()),
            "commit beyond the log"
        );
        let from = log.start().max(Slot(
            self.commit.0.saturating_sub(INVARIANT_WINDOW_SLOTS_MAX),
        ));
        for s in from.0..self.commit.0 {
            assert!(
                log.get(Slot(s)).is_some(),
                "committed slot {s} has no entry"
            );
        }
    }
}

/// Slots the in-memory log forgets per apply round beyond those the round
/// applied: compaction is spread over rounds (see `emit_applies`).
pub const COMPACT_STEP_SLOTS_MAX: u64 = 1024;

impl Shared {
    /// Marks `n` more slots chosen (the leader's path) and hands them out.
    pub fn commit_next(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.learner.commit = self.learner.commit.plus(n);
        self.counters.add(Counter::SlotsCommitted, n);
        if self
            .unprovable
            .is_some_and(|u| self.learner.commit >= u.below)
        {
            // Every possibly lost entry is now known chosen: repaired.
            self.unprovable = None;
            self.counters.bump(Counter::UnprovableRepaired);
        }
        self.emit_applies();
    }

    /// Hands out every committed slot not yet applied, in order, and
    /// compacts the in-memory log behind the retention window.
    pub fn emit_applies(&mut self) {
        let from = self.learner.applied;
        while self.learner.applied < self.learner.commit {
            let slot = self.learner.applied;
            let e = self
                .acceptor
                .log
                .get(slot)
                .expect("a committed slot has an entry");
            let value = e.value.clone();
            if let Value::Config(m) = &value {
                // Chosen: it governs every slot after this one.
                self.switch_membership(m, slot.next(), false);
            }
            self.out.apply.push(Apply { slot, value });
            self.learner.applied = slot.next();
        }
        let l = &mut self.learner;
        debug_assert_eq!(l.applied, l.commit);
        // Slots forgotten in this round at most: freeing an entry is a free
        // of its batch, and 1/8 of a 65,536-slot window at once held the
        // replica's loop for milliseconds. At least what this round
        // applied, so the log never grows past its bounds by more than one
        // round's slots.
        let step = COMPACT_STEP_SLOTS_MAX + l.applied.since(from);
        let retained = self.config.log_retained_slots_max;
        // Compact once 1/8 of the window over, so it is not done per slot.
        let start = self.acceptor.log.start();
        if l.applied.since(start) > retained + retained / 8 {
            let to = Slot(l.applied.0 - retained).min(start.plus(step));
            self.acceptor.log.compact_below(to);
        }
        // By bytes, in steps of 1/8 too, never past a durable checkpoint.
        let bytes_max = self.config.log_retained_bytes_max;
        if self.acceptor.log.bytes() > bytes_max {
            let start = self.acceptor.log.start();
            let below = l.applied.min(self.checkpointed).min(start.plus(step));
            self.acceptor
                .log
                .compact_to_bytes(bytes_max - bytes_max / 8, below);
            if self.acceptor.log.start() > start {
                self.counters.bump(Counter::LogCompactedByBytes);
            }
        }
    }
}

impl Replica {
    /// Commit or Heartbeat from a leader: follow it and learn its commit point.
    pub(crate) fn on_commit(
        &mut self,
        from: ReplicaId,
        ballot: Ballot,
        commit: Slot,
        heartbeat: bool,
    ) {
        let promised = self.s.acceptor.promised;
        if ballot < promised && heartbeat && self.released_by(commit) {
            // Released by a leader below our promise (we promised a
            // candidate that never won): we know everything it knows
            // chosen, so no change on the way adds us back. Behind it, we
            // Nack: a leader releasing us re-elects above our promise (see
            // `on_nack`) and can then teach us (simulator seed 14572).
            self.retire();
            return;
        }
        if ballot < promised {
            self.s.counters.bump(Counter::IgnoreCommitStale);
            let nack = Nack {
                ballot,
                reason: NackReason::Superseded,
                promised,
                commit: self.s.learner.commit,
            };
            self.s.out.send_now(from, nack);
            return;
        }
        if ballot > promised {
            // A leader we never promised to won elsewhere: follow it.
            self.s.promise(ballot);
            self.step_down_if_superseded(Some(from));
        }
        self.follow(from);
        self.learn_commit(from, ballot, commit);
        if heartbeat && self.released_by(commit) {
            // Released by a leader of the configuration that removed it
            // (the change may have been learned from this very heartbeat).
            self.retire();
            return;
        }
        if heartbeat {
            let reply = self.s.heartbeat_reply(ballot);
            self.s.out.send_now(from, reply);
        }
    }

    /// Whether a heartbeat carrying the commit point `commit` releases this
    /// replica: it departs, the heartbeat's leader
    /// knows the change that removed it chosen, and it has itself learned
    /// every slot that leader knows chosen. (Behind it, a later change it
    /// has not learned yet may have added it back, and the heartbeat would
    /// be a member's.)
    fn released_by(&mut self, commit: Slot) -> bool {
        if !self.is_departing() || commit < self.s.membership.from {
            return false;
        }
        if self.s.learner.commit >= commit {
            return true;
        }
        // Behind it: released once it has learned up to there (it may
        // never catch up with a leader under load), unless a change on the
        // way adds it back (then it no longer departs).
        let at = self
            .s
            .membership
            .release_at
            .map_or(commit, |a| a.min(commit));
        self.s.membership.release_at = Some(at);
        false
    }

    /// After an input: a departing replica released at a commit point it
    /// has now reached, still departing, retires.
    pub(crate) fn retire_if_released(&mut self) {
        if let Some(at) = self.s.membership.release_at
            && !self.retired
            && self.s.learner.commit >= at
        {
            self.s.membership.release_at = None;
            if self.is_departing() {
                self.retire();
            }
        }
    }

    /// Records that `from` leads the promised ballot and resets the election
    /// timer. A candidate that has not yet promised its own ballot gives up:
    /// the leader it would replace is alive.
    /// Precondition: the message from `from` carried the promised ballot.
    pub(crate) fn follow(&mut self, from: ReplicaId) {
        debug_assert_eq!(self.s.acceptor.promised.replica, from);
        // Following a leader above the lost ballots does not repair lost
        // entries: that leader re-proposes what it recovered, but until a
        // quorum has it, a later phase 1 whose quorum holds this replica may
        // need this replica's report of the lost slots (simulator seed 3555:
        // a value chosen by this replica and the leader, then lost here to a
        // flipped bit, was replaced by a no-op once this replica, "repaired"
        // by following a leader that had not yet re-proposed it to anyone,
        // stood for election with the one other member that never had it).
        // Only learning every lost slot as chosen repairs (`commit_next`,
        // `install_checkpoint`).
        match &mut self.role {
            Role::Follower(f) => {
                f.leader = Some(from);
                f.election_elapsed = 0;
            }
            Role::Candidate(c) => {
                // A self-promised candidate refuses every lower ballot, and
                // step_down_if_superseded removed it for a higher one.
                assert!(
                    c.ballot > self.s.acceptor.promised,
                    "self-promised candidate follows"
                );
                self.s.counters.bump(Counter::ElectionsAbandoned);
                // A fresh follower's election clock starts at zero.
                self.become_follower(Some(from));
            }
            // step_down_if_superseded ran first: a leader of a lower ballot
            // is gone; one of an equal ballot is `from` itself.
            Role::Leader(_) => unreachable!("follow while leading"),
        }
    }

    /// The leader of `ballot` says every slot below `hint` is chosen. Marks
    /// chosen each next slot whose entry was accepted in that very ballot
    /// (the leader proposes one value per slot per ballot, so it is the
    /// chosen one); asks for the rest.
    pub(crate) fn learn_commit(&mut self, from: ReplicaId, ballot: Ballot, hint: Slot) {
        let s = &mut self.s;
        if s.config.join && s.membership.join_from.is_none() {
            s.membership.join_from = Some(hint);
        }
        let before = s.learner.commit;
        let mut commit = before;
        while commit < hint {
            match s.acceptor.log.get(commit) {
                Some(e) if e.ballot == ballot => commit = commit.next(),
                _ => break,
            }
        }
        s.commit_next(commit.since(before));
        if commit < hint
            && ballot == s.acceptor.promised
            && let Role::Follower(f) = &mut self.role
        {
            request_catchup(f, s, from, ballot, hint);
        }
    }
}

impl Replica {
    /// The leader no longer holds the slots this follower asked for: ask
    /// the driver to fetch a checkpoint from it. Every ask is answered by
    /// at most one fetch at a time (the driver's), and asks repeat only as
    /// catch-up requests do (every `retransmit_ticks`).
    pub(crate) fn on_checkpoint_needed(&mut self, from: ReplicaId, m: CheckpointNeeded) {
        let s = &mut self.s;
        let following = matches!(&self.role, Role::Follower(f) if f.leader == Some(from));
        if !following || m.ballot != s.acceptor.promised || m.log_start <= s.learner.commit {
            s.counters.bump(Counter::IgnoreCheckpointNeededStale);
            return;
        }
        s.counters.bump(Counter::CheckpointFetches);
        s.out.fetch_checkpoint = Some(FetchCheckpoint {
            from,
            at_least: m.log_start,
        });
    }

    /// The driver installed a checkpoint of every slot below `slot` into
    /// the state machine (and made it durable): the replica continues from
    /// there. Returns false, changing nothing, unless this replica follows
    /// and `slot` is beyond its commit point; the driver must then not have
    /// restored the state (it checks [`Replica::commit`] first).
    ///
    /// Entries accepted at or beyond `slot` stay; everything below goes.
    /// Postcondition: `log.start == applied == commit == slot`.
    pub fn install_checkpoint(&mut self, slot: Slot, membership: Option<&Membership>) -> bool {
        let s = &mut self.s;
        let Role::Follower(f) = &mut self.role else {
            s.counters.bump(Counter::CheckpointInstallsRefused);
            return false;
        };
        if self.stopped || slot <= s.learner.commit {
            s.counters.bump(Counter::CheckpointInstallsRefused);
            return false;
        }
        // Applies handed out but not drained would run on the new state.
        assert!(s.out.apply.is_empty(), "install with applies pending");
        s.acceptor.log.compact_below(slot);
        s.learner.commit = slot;
        s.learner.applied = slot;
        s.checkpointed = s.checkpointed.max(slot);
        if s.unprovable.is_some_and(|u| u.below <= slot) {
            // What corruption lost lies below the checkpoint: chosen, and
            // now known through it.
            s.unprovable = None;
            s.counters.bump(Counter::UnprovableRepaired);
        }
        f.catchup = None;
        if let Some(m) = membership
            && (!s.membership.known || m.epoch() > s.membership.epoch)
        {
            // The checkpoint's state includes configuration changes this
            // replica never applied: take the newest as if applied.
            s.switch_membership(m, slot, true);
        }
        s.counters.bump(Counter::CheckpointsInstalled);
        assert_eq!(s.acceptor.log.start(), slot);
        s.learner.check_invariants(&s.acceptor.log);
        self.after_membership_switch();
        self.retire_if_released();
        true
    }
}

/// Asks the leader for chosen slots `[commit, hint)` unless a request for
/// them is outstanding and not yet due for a retry.
fn request_catchup(
    f: &mut super::replica::Follower,
    s: &mut Shared,
    leader: ReplicaId,
    ballot: Ballot,
    hint: Slot,
) {
    let from = s.learner.commit;
    let due = match f.catchup {
        None => true,
        Some(ask) => {
            from >= ask.to || s.tick >= ask.sent_tick + u64::from(s.config.retransmit_ticks)
        }
    };
    if !due {
        return;
    }
    let to = hint.min(from.plus(s.config.catchup_slots_max));
    f.catchup = Some(CatchupAsk {
        to,
        sent_tick: s.tick,
        leader,
        ballot,
    });
    s.counters.bump(Counter::CatchupRequests);
    s.out.send_now(leader, CatchupRequest { ballot, from, to });
}

/// On a tick: asks again for slots still missing from an unanswered
/// catch-up request, of the same replica in the same ballot, once a
/// retransmission timeout has passed. (Requests go out when a message of
/// the leader shows slots missing; a former leader that handed over to a
/// new configuration sends no more, so a lost request or answer must not
/// leave the new members without the change.)
pub(crate) fn retry_catchup(f: &mut super::replica::Follower, s: &mut Shared) {
    let Some(ask) = f.catchup else {
        return;
    };
    let due = s.tick >= ask.sent_tick + u64::from(s.config.retransmit_ticks);
    if !due || s.learner.commit >= ask.to || ask.ballot != s.acceptor.promised {
        return;
    }
    s.counters.bump(Counter::CatchupRetransmits);
    let hint = ask.to;
    f.catchup = None;
    request_catchup(f, s, ask.leader, ask.ballot, hint);
}
