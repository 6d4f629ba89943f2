//! The leader: phase 2, pipelined (a window of slots in flight) and
//! batched (client commands queued and cut into batches), heartbeats,
//! configuration changes, peer health.

use std::collections::VecDeque;

use super::config::Membership;
use super::config::PlantedBug;
use super::counters::Counter;
use super::log::Entry;
use super::message::{Accept, Accepted, Commit, Heartbeat};
use super::output::{ClientReply, ProposeError};
use super::quorum::QuorumSet;
use super::replica::Shared;
use super::types::{Ballot, PersistToken, ReplicaId, Slot};
use super::value::{Batch, BatchBuilder, COMMAND_HEADER_BYTES, CommandRef, Value};

/// One proposed, not yet committed slot.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// The persist request holding our own accept of it.
    pub(crate) token: PersistToken,
    /// Members whose accept is durable.
    pub(crate) acks: QuorumSet,
    /// When the Accept last went out (for retransmission).
    pub(crate) sent_tick: u64,
}

/// What the leader knows of one peer.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) last_heard: u64,
    /// The commit point carried by the last message sent to it.
    pub(crate) commit_sent: Slot,
    /// Its last heartbeat reply in our ballot.
    pub(crate) reported: Option<Reported>,
}

/// What a leader knows of one member's health (for status reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    pub id: ReplicaId,
    /// Ticks since any message of it arrived in this ballot.
    pub heard_ticks_ago: u64,
    /// The commit point its last heartbeat reply carried (`None`: no
    /// reply yet in this ballot).
    pub commit: Option<Slot>,
    /// Proposed slots, not yet chosen, it has not acknowledged.
    pub outstanding: u32,
}

/// A heartbeat reply: when it came and the commit point it carried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reported {
    pub(crate) tick: u64,
    pub(crate) commit: Slot,
}

impl Reported {
    /// Heard within an election timeout, at most `catchup_slots_max`
    /// behind our commit point.
    pub(crate) fn caught_up(r: Option<Reported>, s: &Shared) -> bool {
        r.is_some_and(|r| {
            s.tick - r.tick <= u64::from(s.config.election_ticks)
                && r.commit.plus(s.config.catchup_slots_max) >= s.learner.commit
        })
    }
}

/// A configuration change asked for and not yet proposed.
#[derive(Debug)]
pub(crate) struct PendingChange {
    pub(crate) membership: Membership,
    /// The tick it was asked for (dropped after `config_wait_ticks_max`).
    pub(crate) since: u64,
    /// Its members outside the current configuration (they follow our
    /// heartbeats and catch up before it is proposed), and their replies.
    pub(crate) joiners: Vec<(ReplicaId, Option<Reported>)>,
}

/// Client commands waiting for a slot, already encoded into batches.
#[derive(Debug, Default)]
pub(crate) struct ClientQueue {
    pub(crate) open: Option<BatchBuilder>,
    pub(crate) sealed: VecDeque<Batch>,
    pub(crate) commands: u32,
    pub(crate) bytes: u64,
    /// Size of the last sealed batch, to size the next buffer.
    pub(crate) last_batch_bytes: usize,
}

impl ClientQueue {
    pub(crate) fn push(&mut self, s: &Shared, cmd: CommandRef<'_>) -> Result<(), ProposeError> {
        let c = &s.config;
        let len = COMMAND_HEADER_BYTES + cmd.op.len();
        if self.commands >= c.queue_commands_max || self.bytes + len as u64 > c.queue_bytes_max {
            return Err(ProposeError::Busy);
        }
        if let Some(open) = &self.open {
            let full = open.len() >= c.batch_commands_max
                || open.encoded_len() + len > c.batch_bytes_max as usize;
            if full {
                self.seal_open();
            }
        }
        let hint = self.last_batch_bytes.max(len);
        let open = self
            .open
            .get_or_insert_with(|| BatchBuilder::with_capacity(hint));
        open.push(cmd.client, cmd.seq, cmd.ack_below, cmd.op);
        self.commands += 1;
        self.bytes += len as u64;
        Ok(())
    }

    pub(crate) fn seal_open(&mut self) {
        if let Some(open) = self.open.take() {
            let batch = open.finish();
            self.last_batch_bytes = batch.bytes().len();
            self.sealed.push_back(batch);
        }
    }

    /// The next batch to propose, if any command waits.
    pub(crate) fn take(&mut self) -> Option<Batch> {
        if self.sealed.is_empty() {
            self.seal_open();
        }
        let batch = self.sealed.pop_front()?;
        self.commands -= batch.len();
        self.bytes -= (batch.bytes().len() - super::value::BATCH_HEADER_BYTES) as u64;
        Some(batch)
    }

    /// Every queued command's `(client, seq)`, emptying the queue.
    pub(crate) fn abandon(&mut self, mut each: impl FnMut(super::types::ClientId, u64)) {
        self.seal_open();
        for batch in self.sealed.drain(..) {
            for c in batch.iter() {
                each(c.client, c.seq);
            }
        }
        self.commands = 0;
        self.bytes = 0;
    }
}

/// The leader of `ballot`.
#[derive(Debug)]
pub(crate) struct Leader {
    pub ballot: Ballot,
    /// Next slot to propose.
    /// Invariant: `next_slot == commit + inflight.len()` and
    /// `inflight.len() <= window_slots_max`.
    pub(crate) next_slot: Slot,
    /// Slots `[commit, next_slot)`, proposed and not yet committed.
    pub(crate) inflight: VecDeque<InFlight>,
    /// Every in-flight slot below this has our own (durable) vote.
    pub(crate) self_acked: Slot,
    /// Values phase 1 decided for the slots from `next_slot` on; proposed
    /// before any client command.
    pub(crate) recovery: VecDeque<Value>,
    /// The slot after the last value phase 1 handed over (observability:
    /// the lab's `leader.recover` ends when the commit point reaches it).
    pub recovery_end: Slot,
    pub(crate) queue: ClientQueue,
    /// A configuration change asked for and not yet proposed. It is
    /// proposed (after the recovered values, before client commands) once
    /// a quorum of its members is caught up; client commands keep flowing
    /// meanwhile.
    /// (Boxed: rare, and the leader stays small.)
    pub(crate) pending: Option<Box<PendingChange>>,
    /// The slot of a proposed configuration change not yet chosen. While
    /// set, nothing is proposed after it: the slots after it belong to the
    /// new configuration, whose phase 1 has not run.
    /// Invariant: when set, it is the last proposed slot.
    pub(crate) config_slot: Option<Slot>,
    /// By member index (our own entry unused).
    pub(crate) peers: Vec<Peer>,
    pub(crate) heartbeat_elapsed: u32,
}

impl Leader {
    /// Queues a client command for the next batch.
    pub fn queue_client(
        &mut self,
        s: &mut Shared,
        cmd: CommandRef<'_>,
    ) -> Result<(), ProposeError> {
        if s.config.planted_slowdown {
            std::hint::black_box(cmd.op.to_vec());
        }
        let r = self.queue.push(s, cmd);
        s.counters.bump(match r {
            Ok(()) => Counter::ClientQueued,
            Err(_) => Counter::ClientBusy,
        });
        r
    }

    /// Whether `id` joins in the pending configuration change.
    pub(crate) fn is_joiner(&self, id: ReplicaId) -> bool {
        self.pending
            .iter()
            .flat_map(|p| p.joiners.iter())
            .any(|(j, _)| *j == id)
    }

    pub fn queued_commands(&self) -> u32 {
        self.queue.commands
    }

    /// Queues a configuration change. `Busy` while another one is asked
    /// for, recovered or proposed and not yet chosen.
    pub fn queue_config(&mut self, s: &mut Shared, m: Membership) -> Result<(), ProposeError> {
        let recovering_one = matches!(self.recovery.back(), Some(Value::Config(_)));
        if self.pending.is_some() || self.config_slot.is_some() || recovering_one {
            s.counters.bump(Counter::ClientBusy);
            return Err(ProposeError::Busy);
        }
        // Precondition: no change between the commit point and here, so
        // the new epoch follows the one in force.
        assert_eq!(m.epoch(), s.membership.epoch + 1);
        let joiners = m
            .members()
            .iter()
            .filter(|id| !s.membership.members.contains(id))
            .map(|id| (*id, None))
            .collect();
        self.pending = Some(Box::new(PendingChange {
            membership: m,
            since: s.tick,
            joiners,
        }));
        Ok(())
    }

    /// Whether a quorum of the pending change's members is caught up (see
    /// [`Reported::caught_up`]): a new configuration of replicas still far
    /// behind could not commit, and its joiners could learn from no one.
    pub(crate) fn quorum_caught_up(&self, s: &Shared, p: &PendingChange) -> bool {
        let current = (0..s.membership.members.len())
            .filter(|i| {
                Some(*i) != s.membership.self_index
                    && p.membership.contains(s.membership.members[*i])
            })
            .filter(|i| Reported::caught_up(self.peers[*i].reported, s));
        let joiners = p.joiners.iter().filter(|(_, r)| Reported::caught_up(*r, s));
        let me = usize::from(p.membership.contains(s.config.id));
        me + current.count() + joiners.count() >= p.membership.quorum()
    }

    /// A heartbeat reply in our ballot, from member `from_index` or (`None`)
    /// from a joiner of the pending change. Returns whether it counted.
    pub(crate) fn on_heartbeat_reply(
        &mut self,
        s: &Shared,
        from: ReplicaId,
        from_index: Option<usize>,
        commit: Slot,
    ) -> bool {
        let slot = match from_index {
            Some(i) => {
                self.peers[i].last_heard = s.tick;
                &mut self.peers[i].reported
            }
            None => match self
                .pending
                .iter_mut()
                .flat_map(|p| p.joiners.iter_mut())
                .find(|(id, _)| *id == from)
            {
                Some((_, r)) => r,
                None => return false,
            },
        };
        let commit = slot.map_or(commit, |r| r.commit.max(commit));
        *slot = Some(Reported {
            tick: s.tick,
            commit,
        });
        true
    }

    /// Proposes phase-1 values, then a configuration change, then client
    /// batches, while the window has room and no change is in flight.
    pub fn propose_ready(&mut self, s: &mut Shared) {
        let window = u64::from(s.config.window_slots_max);
        let barrier = !s.config.bug(PlantedBug::ProposePastChange);
        while self.inflight.len() < window as usize && (self.config_slot.is_none() || !barrier) {
            let ready = self
                .pending
                .as_ref()
                .is_some_and(|p| self.recovery.is_empty() && self.quorum_caught_up(s, p));
            let recovered = !self.recovery.is_empty();
            let value = match self.recovery.pop_front() {
                Some(v) => v,
                None if ready => {
                    s.counters.bump(Counter::ConfigChangesProposed);
                    Value::Config(Box::new(self.pending.take().expect("ready").membership))
                }
                None => match self.queue.take() {
                    Some(b) => Value::Batch(b),
                    None => break,
                },
            };
            let past_change = recovered && s.config.bug(PlantedBug::RecoverPastChange);
            if matches!(value, Value::Config(_)) && self.config_slot.is_none() && !past_change {
                self.config_slot = Some(self.next_slot);
            }
            self.propose(s, value);
        }
    }

    /// Accepts `value` in the next slot ourselves and sends it to every peer.
    /// Precondition: the window has room.
    pub(crate) fn propose(&mut self, s: &mut Shared, value: Value) {
        assert!(
            self.inflight.len() < s.config.window_slots_max as usize,
            "proposal beyond the window"
        );
        let slot = self.next_slot;
        self.next_slot = slot.next();
        let ballot = self.ballot;
        let token = s.out.write_entry(slot, ballot, value.clone());
        let mut acks = QuorumSet::EMPTY;
        if s.config.bug(PlantedBug::SelfAckBeforePersist) {
            acks.insert(s.me());
        }
        self.inflight.push_back(InFlight {
            token,
            acks,
            sent_tick: s.tick,
        });
        let commit = s.learner.commit;
        let accept = |value: &Value| Accept {
            ballot,
            slot,
            value: value.clone(),
            commit,
        };
        for i in 0..s.membership.members.len() {
            if Some(i) == s.membership.self_index {
                continue;
            }
            let peer = s.membership.members[i];
            self.peers[i].commit_sent = commit;
            s.out.send_now(peer, accept(&value));
        }
        if let Value::Config(m) = &value {
            // The joining members hold the change too (their votes do not
            // count), so the Commit that follows teaches them it is chosen
            // even if no continuing member is left to.
            for id in m.members() {
                if !s.membership.members.contains(id) {
                    s.out.send_now(*id, accept(&value));
                }
            }
        }
        s.acceptor.log.put(slot, Entry { ballot, value });
        s.counters.bump(Counter::SlotsProposed);
    }

    /// Our own writes up to the durable token count as our votes.
    pub fn on_persisted(&mut self, s: &mut Shared) {
        let durable = s.out.durable();
        let commit = s.learner.commit;
        self.self_acked = self.self_acked.max(commit);
        while self.self_acked < self.next_slot {
            let f = &mut self.inflight[self.self_acked.since(commit) as usize];
            if f.token > durable {
                break;
            }
            f.acks.insert(s.me());
            self.self_acked = self.self_acked.next();
        }
        self.advance_commit(s);
    }

    pub(crate) fn on_accepted(&mut self, s: &mut Shared, from_index: usize, m: Accepted) {
        self.peers[from_index].last_heard = s.tick;
        let commit = s.learner.commit;
        if m.end > self.next_slot || m.first >= m.end {
            s.counters.bump(Counter::IgnoreAcceptedOutsideWindow);
            return;
        }
        let first = m.first.max(commit);
        let end = m.end;
        if first >= end {
            s.counters.bump(Counter::AcceptedAfterCommit);
            return;
        }
        for slot in first.0..end.0 {
            self.inflight[(slot - commit.0) as usize]
                .acks
                .insert(from_index);
        }
        self.advance_commit(s);
    }

    /// Commits the longest prefix of in-flight slots that have a quorum.
    pub(crate) fn advance_commit(&mut self, s: &mut Shared) {
        let mut n = 0;
        while let Some(f) = self.inflight.front() {
            if f.acks.count() < s.membership.quorum {
                break;
            }
            self.inflight.pop_front();
            n += 1;
        }
        s.commit_next(n);
        if self.config_slot.is_some_and(|c| c < s.learner.commit) {
            // Chosen: it took effect (and this leader runs phase 1 again
            // or departs before the input returns), or it was stale and
            // changed nothing (proposing goes on).
            self.config_slot = None;
        }
        // Postcondition: the window starts at the commit point, and every
        // committed slot was handed out for apply.
        assert_eq!(
            self.next_slot,
            s.learner.commit.plus(self.inflight.len() as u64)
        );
        assert_eq!(s.learner.applied, s.learner.commit);
    }

    /// Heartbeats, idle commits, retransmissions, and the quorum check.
    /// Returns false when no quorum was heard from within an election timeout.
    pub fn on_tick(&mut self, s: &mut Shared) -> bool {
        let commit = s.learner.commit;
        let ballot = self.ballot;
        self.heartbeat_elapsed += 1;
        let heartbeat = self.heartbeat_elapsed >= s.config.heartbeat_ticks;
        if heartbeat {
            self.heartbeat_elapsed = 0;
        }
        for i in 0..s.membership.members.len() {
            if Some(i) == s.membership.self_index {
                continue;
            }
            let peer = s.membership.members[i];
            if heartbeat {
                self.peers[i].commit_sent = commit;
                s.out.send_now(peer, Heartbeat { ballot, commit });
            } else if self.peers[i].commit_sent < commit {
                // No Accept carried the commit point during the last tick.
                self.peers[i].commit_sent = commit;
                s.out.send_now(peer, Commit { ballot, commit });
            }
        }
        if heartbeat && !s.membership.leaving.is_empty() {
            // Our own commit point counts toward releasing them once durable.
            s.out.write_commit(commit);
        }
        if heartbeat && (self.established(s) || s.config.bug(PlantedBug::ReleaseEarly)) {
            // Members a change removed are released (they retire on a
            // heartbeat at or beyond the change) once a quorum of this
            // configuration committed past it: until then the old
            // configuration may need them to choose the change again.
            for i in 0..s.membership.leaving.len() {
                let peer = s.membership.leaving[i];
                s.out.send_now(peer, Heartbeat { ballot, commit });
            }
        }
        if heartbeat {
            // Members a pending change adds, to catch up before it.
            for (id, _) in self.pending.iter().flat_map(|p| p.joiners.iter()) {
                s.out.send_now(*id, Heartbeat { ballot, commit });
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| s.tick - p.since > u64::from(s.config.config_wait_ticks_max))
        {
            // Its new members never caught up: give it up (the operator
            // sees the configuration unchanged and may ask again).
            self.pending = None;
            s.counters.bump(Counter::ConfigChangesAbandoned);
        }
        self.retransmit(s);
        let recent = u64::from(s.config.election_ticks);
        let heard = 1 + self
            .peers
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                Some(*i) != s.membership.self_index && s.tick.saturating_sub(p.last_heard) <= recent
            })
            .count();
        heard >= s.membership.quorum
    }

    /// Sends again every in-flight Accept that has waited a retransmission
    /// timeout, to the peers that have not acknowledged it.
    pub(crate) fn retransmit(&mut self, s: &mut Shared) {
        let commit = s.learner.commit;
        let due = u64::from(s.config.retransmit_ticks);
        for (k, f) in self.inflight.iter_mut().enumerate() {
            if f.acks.count() >= s.membership.quorum || s.tick < f.sent_tick + due {
                continue;
            }
            f.sent_tick = s.tick;
            let slot = commit.plus(k as u64);
            let value = &s.acceptor.log.get(slot).expect("in-flight slot held").value;
            for (i, peer) in s.membership.members.iter().enumerate() {
                if Some(i) == s.membership.self_index || f.acks.contains(i) {
                    continue;
                }
                s.counters.bump(Counter::AcceptRetransmits);
                let accept = Accept {
                    ballot: self.ballot,
                    slot,
                    value: value.clone(),
                    commit,
                };
                s.out.send_now(*peer, accept);
            }
        }
    }

    /// Gives up leadership: queued commands were never proposed, so their
    /// clients can safely retry elsewhere.
    pub fn abandon(mut self, s: &mut Shared, hint: Option<ReplicaId>) {
        let replies = &mut s.out.replies;
        self.queue.abandon(|client, seq| {
            replies.push(ClientReply {
                client,
                seq,
                result: Err(ProposeError::NotLeader { hint }),
            })
        });
    }

    /// Whether a quorum of this configuration (this leader included) has
    /// durably committed every slot before the first one it governs: any
    /// quorum of it then holds a member that knows the change, even after
    /// crashes, so it needs the members the change removed no more.
    pub(crate) fn established(&self, s: &Shared) -> bool {
        // Durable commit points only, ours included: a member that forgot
        // the change after a crash would need the released ones.
        let me = usize::from(s.out.commit_durable() >= s.membership.from);
        let caught_up = self
            .peers
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                Some(*i) != s.membership.self_index
                    && p.reported.is_some_and(|r| r.commit >= s.membership.from)
            })
            .count();
        me + caught_up >= s.membership.quorum
    }

    /// The health of every other member, in member order.
    pub fn peer_health(&self, s: &Shared) -> Vec<PeerHealth> {
        s.membership
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != s.membership.self_index)
            .map(|(i, id)| {
                let p = &self.peers[i];
                PeerHealth {
                    id: *id,
                    heard_ticks_ago: s.tick.saturating_sub(p.last_heard),
                    commit: p.reported.map(|r| r.commit),
                    outstanding: self.inflight.iter().filter(|f| !f.acks.contains(i)).count()
                        as u32,
                }
            })
            .collect()
    }

    pub fn check_invariants(&self, s: &Shared) {
        let commit = s.learner.commit;
        assert_eq!(self.ballot.replica, s.config.id, "leading a foreign ballot");
        assert_eq!(
            self.ballot, s.acceptor.promised,
            "leader not promised to itself"
        );
        assert_eq!(self.next_slot, commit.plus(self.inflight.len() as u64));
        assert!(
            self.inflight.len() <= s.config.window_slots_max as usize,
            "window overrun"
        );
        assert!(self.self_acked <= self.next_slot);
        if self.recovery.is_empty() {
            assert!(
                self.next_slot >= self.recovery_end,
                "recovered slot never proposed"
            );
        } else {
            assert_eq!(
                self.next_slot.plus(self.recovery.len() as u64),
                self.recovery_end,
                "recovery values and their end disagree"
            );
        }
        for (k, f) in self.inflight.iter().enumerate() {
            let slot = commit.plus(k as u64);
            let e = s.acceptor.log.get(slot).expect("in-flight slot held");
            assert_eq!(e.ballot, self.ballot, "in-flight slot not ours");
            assert!(f.acks.within(s.membership.members.len()));
            assert!(
                f.acks.contains(s.me()) == (slot < self.self_acked)
                    || s.config.bug(PlantedBug::SelfAckBeforePersist),
                "self vote out of step with persistence"
            );
        }
        assert!(
            self.inflight
                .front()
                .is_none_or(|f| f.acks.count() < s.membership.quorum)
        );
        assert!(self.queue.commands <= s.config.queue_commands_max);
        assert!(self.queue.bytes <= s.config.queue_bytes_max);
        if let Some(slot) = self.config_slot
            && !s.config.bug(PlantedBug::ProposePastChange)
        {
            assert_eq!(
                slot.next(),
                self.next_slot,
                "a slot proposed after a configuration change"
            );
            assert!(slot >= commit, "a chosen change still marked in flight");
            assert!(self.recovery.is_empty());
        }
        assert_eq!(self.peers.len(), s.membership.members.len());
    }
}
