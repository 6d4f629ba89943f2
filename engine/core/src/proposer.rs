//! The proposer's handlers on the replica: standing for election,
//! promises and acceptances, leadership gained and lost, catch-up served.
//! The roles' state is in `candidate.rs` and `leader.rs`.

use std::collections::{BTreeMap, VecDeque};

use super::config::PlantedBug;
use super::counters::Counter;
use super::message::{
    Accept, Accepted, CatchupRequest, CheckpointNeeded, Heartbeat, HeartbeatReply, Nack,
    NackReason, Prepare, Promise,
};
use super::quorum::QuorumSet;
use super::replica::{Replica, Role, Shared};
use super::types::{Ballot, ReplicaId, Slot};
use super::value::Value;

use super::candidate::Candidate;
use super::leader::{ClientQueue, Leader, Peer};

impl Replica {
    /// Starts (or restarts) a candidacy in a ballot above every one seen.
    pub(crate) fn start_election(&mut self) {
        let s = &mut self.s;
        assert!(
            s.membership.may_campaign(),
            "a candidacy outside the configuration"
        );
        if s.config.join && s.membership.join_from.is_none() {
            // Standing before it heard any leader: a member in force, so a
            // removal chosen from here on is its own (see `join_from`).
            s.membership.join_from = Some(s.learner.commit);
        }
        let round = s.round_seen.max(s.acceptor.promised.round) + 1;
        s.round_seen = round;
        let ballot = Ballot::new(round, s.config.id);
        let from = s.learner.commit;
        let mut candidate = Candidate {
            ballot,
            self_token: None,
            from,
            self_counts: s.unprovable.is_none(),
            promised: QuorumSet::EMPTY,
            refused: QuorumSet::EMPTY,
            asked_from: vec![from; s.membership.members.len()],
            merged: BTreeMap::new(),
            elapsed: 0,
            timeout: s.election_timeout(),
        };
        candidate.promise_self_when_due(s);
        for (i, peer) in s.membership.members.iter().enumerate() {
            if Some(i) != s.membership.self_index {
                s.out.send_now(*peer, Prepare { ballot, from });
            }
        }
        s.counters.bump(Counter::ElectionsStarted);
        if s.unprovable.is_some() {
            s.counters.bump(Counter::ElectionsUnprovable);
        }
        if let Role::Leader(l) = std::mem::replace(&mut self.role, Role::Candidate(candidate)) {
            l.abandon(&mut self.s, None);
        }
    }

    pub(crate) fn on_promise(&mut self, from: ReplicaId, from_index: usize, m: Promise) {
        let Role::Candidate(c) = &mut self.role else {
            self.s.counters.bump(Counter::IgnorePromiseStale);
            return;
        };
        if m.ballot != c.ballot {
            self.s.counters.bump(Counter::IgnorePromiseStale);
            return;
        }
        if c.promised.contains(from_index) {
            self.s.counters.bump(Counter::IgnorePromiseDuplicate);
            return;
        }
        for e in m.entries {
            c.merge(e.slot, e.ballot, e.value);
        }
        if let Some(next) = m.more {
            if next > c.asked_from[from_index] {
                c.asked_from[from_index] = next;
                self.s.counters.bump(Counter::PromiseChunks);
                let prepare = Prepare {
                    ballot: c.ballot,
                    from: next,
                };
                self.s.out.send_now(from, prepare);
            }
            return;
        }
        c.promised.insert(from_index);
        c.promise_self_when_due(&mut self.s);
        if c.won(&self.s) {
            self.become_leader();
        }
    }

    /// Phase 1 is done: re-propose the highest-ballot value of every open
    /// slot (a no-op where none was reported) and start leading.
    pub(crate) fn become_leader(&mut self) {
        let s = &mut self.s;
        let timeout = s.election_timeout();
        let Role::Candidate(c) = std::mem::replace(
            &mut self.role,
            Role::Follower(super::replica::Follower::new(None, timeout)),
        ) else {
            unreachable!("become_leader outside candidacy");
        };
        assert!(
            c.won(s),
            "leading without a quorum including our own durable promise"
        );
        let commit = s.learner.commit;
        let mut end = c
            .merged
            .keys()
            .next_back()
            .map_or(commit, |s| s.next())
            .max(commit);
        // Phase 1 ran in the configuration in force at our commit point,
        // which governs the slots up to and including the first change
        // reported beyond it, and no further: stop recovery there. Once
        // that change is chosen we run phase 1 again among its members.
        if let Some((&slot, _)) = c
            .merged
            .range(commit..)
            .find(|(_, (_, v))| matches!(v, Value::Config(_)))
            .filter(|_| !s.config.bug(PlantedBug::RecoverPastChange))
        {
            end = end.min(slot.next());
        }
        let skip = s.config.bug(PlantedBug::SkipAdoption);
        let recovery: VecDeque<Value> = (commit.0..end.0)
            .map(|slot| match c.merged.get(&Slot(slot)) {
                Some((_, v)) if !skip => v.clone(),
                _ => Value::Noop,
            })
            .collect();
        let peer = Peer {
            last_heard: s.tick,
            commit_sent: commit,
            reported: None,
        };
        s.counters.bump(Counter::ElectionsWon);
        self.role = Role::Leader(Leader {
            ballot: c.ballot,
            next_slot: commit,
            inflight: VecDeque::new(),
            self_acked: commit,
            recovery_end: end,
            recovery,
            queue: ClientQueue::default(),
            pending: None,
            config_slot: None,
            peers: vec![peer; s.membership.members.len()],
            heartbeat_elapsed: 0,
        });
        // Assert leadership at once so other candidates stand down.
        for (i, peer) in s.membership.members.iter().enumerate() {
            if Some(i) != s.membership.self_index {
                s.out.send_now(
                    *peer,
                    Heartbeat {
                        ballot: c.ballot,
                        commit,
                    },
                );
            }
        }
    }

    pub(crate) fn on_accepted(&mut self, from_index: usize, m: Accepted) {
        match &mut self.role {
            Role::Leader(l) if l.ballot == m.ballot => l.on_accepted(&mut self.s, from_index, m),
            _ => self.s.counters.bump(Counter::IgnoreAcceptedStale),
        }
    }

    /// A heartbeat reply, from a member (`from_index`) or from outside the
    /// configuration (a joiner of a pending change, or ignored).
    pub(crate) fn on_heartbeat_reply(
        &mut self,
        from: ReplicaId,
        from_index: Option<usize>,
        m: HeartbeatReply,
    ) {
        match &mut self.role {
            Role::Leader(l) if l.ballot == m.ballot => {
                if !l.on_heartbeat_reply(&self.s, from, from_index, m.commit) {
                    self.s.note_leaving(from);
                }
            }
            // Not a member and not a joiner, in any ballot: a replica a
            // change removed asks to be released (see `Replica::on_tick`).
            // A follower notes it too: it may lead next.
            Role::Leader(l) if from_index.is_none() && !l.is_joiner(from) => {
                self.s.note_leaving(from);
            }
            Role::Follower(_) | Role::Candidate(_) if from_index.is_none() => {
                self.s.note_leaving(from);
            }
            _ => self.s.counters.bump(Counter::IgnoreHeartbeatReplyStale),
        }
    }

    /// A follower asks for chosen slots it lacks. The leader of the ballot
    /// serves them; so does its former leader while it still holds that
    /// ballot as its promise (it stepped down or departs: the members of
    /// a new configuration it handed over to may still lack the change,
    /// and no one else can teach them in that ballot). Every slot below
    /// its commit point holds the chosen value, the only value it ever
    /// proposed there in its ballot.
    pub(crate) fn on_catchup_request(&mut self, from: ReplicaId, m: CatchupRequest) {
        match &mut self.role {
            Role::Leader(l) if l.ballot == m.ballot => {
                if let Some(i) = self.s.membership.index_of(from) {
                    l.peers[i].last_heard = self.s.tick;
                }
                serve_catchup(&mut self.s, m.ballot, from, m)
            }
            Role::Follower(_)
                if m.ballot == self.s.acceptor.promised && m.ballot.replica == self.s.config.id =>
            {
                self.s.counters.bump(Counter::CatchupServedAfterLeading);
                serve_catchup(&mut self.s, m.ballot, from, m)
            }
            _ => self.s.counters.bump(Counter::IgnoreCatchupStale),
        }
    }

    /// A removed member we release refuses our heartbeat: it promised a
    /// higher ballot (a candidate's that never won), so it cannot learn
    /// from us up to the release point. A leader steps down; the next
    /// election goes above that promise (`round_seen`), and its leader can
    /// teach the member and release it (simulator seed 14572).
    pub(crate) fn on_nack_from_leaving(&mut self, m: Nack) {
        self.s.round_seen = self.s.round_seen.max(m.promised.round);
        let superseded = m.reason == NackReason::Superseded && m.promised > m.ballot;
        if !superseded || self.leader_ballot() != Some(m.ballot) {
            self.s.counters.bump(Counter::IgnoreNackStale);
            return;
        }
        self.s.counters.bump(Counter::StepDownsForRelease);
        self.become_follower(None);
    }

    /// A refusal of our ballot: a higher ballot exists, or we lag too far to lead.
    pub(crate) fn on_nack(&mut self, from_index: usize, m: Nack) {
        self.s.round_seen = self.s.round_seen.max(m.promised.round);
        let mine = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate(c) => Some(c.ballot),
            Role::Follower(_) => None,
        };
        if mine != Some(m.ballot) {
            self.s.counters.bump(Counter::IgnoreNackStale);
            return;
        }
        match m.reason {
            NackReason::Unprovable => {
                // That acceptor cannot help; the others may still form a quorum.
                self.s.counters.bump(Counter::IgnoreNackStale);
            }
            NackReason::Superseded => {
                if m.promised <= m.ballot {
                    self.s.counters.bump(Counter::IgnoreNackStale);
                    return;
                }
                self.s.counters.bump(Counter::StepDownsSuperseded);
                self.become_follower(Some(m.promised.replica).filter(|r| *r != self.s.config.id));
            }
            NackReason::LeaderAlive => {
                let Role::Candidate(c) = &mut self.role else {
                    self.s.counters.bump(Counter::IgnoreNackStale);
                    return;
                };
                // Give up only once enough members refuse that no quorum is
                // left; a minority that still hears the old leader does not
                // stop the others from electing a new one.
                c.refused.insert(from_index);
                let n = self.s.membership.members.len();
                if c.refused.count() <= n - self.s.membership.quorum {
                    return;
                }
                self.s.counters.bump(Counter::ElectionsLeaderAlive);
                let hint = Some(m.promised.replica).filter(|r| *r != self.s.config.id);
                self.become_follower(hint);
            }
            NackReason::Lagging => {
                if self.is_leader() {
                    // Leadership was granted by a quorum; one lagging report
                    // from a delayed Prepare does not undo it.
                    self.s.counters.bump(Counter::IgnoreNackStale);
                    return;
                }
                self.s.counters.bump(Counter::ElectionsLagging);
                self.become_follower(None);
                // Let an up-to-date replica win: wait twice as long.
                if let Role::Follower(f) = &mut self.role {
                    f.election_timeout *= 2;
                }
            }
        }
    }
}

/// Serves chosen slots to a follower that lacks them, as Accepts in
/// `ballot` (ours: we lead it or led it).
fn serve_catchup(s: &mut Shared, ballot: Ballot, from: ReplicaId, m: CatchupRequest) {
    let commit = s.learner.commit;
    let to =
        m.to.min(commit)
            .min(m.from.plus(s.config.catchup_slots_max));
    let log_start = s.acceptor.log.start();
    if m.from < log_start {
        // Compacted away: the follower needs a checkpoint (the newest
        // one is at or beyond the log start: checkpoints are taken more
        // often than the log is compacted).
        s.counters.bump(Counter::CatchupNeedsCheckpoint);
        s.out.send_now(from, CheckpointNeeded { ballot, log_start });
        return;
    }
    for slot in m.from.0..to.0 {
        // Every committed slot from the log start on has its entry
        // (it was applied from it).
        let Some(e) = s.acceptor.log.get(Slot(slot)) else {
            debug_assert!(false, "committed slot {slot} without an entry");
            return;
        };
        let accept = Accept {
            ballot,
            slot: Slot(slot),
            value: e.value.clone(),
            commit,
        };
        s.counters.bump(Counter::CatchupSlotsServed);
        s.out.send_now(from, accept);
    }
}
