//! Read-only views of a replica for drivers, checkers and status (and
//! `checkpoint_saved`, the one driver report that is not a protocol input).

use super::config::Config;
use super::counters::Counters;
use super::log::{Entry, Log};
use super::replica::{Replica, Role, RoleKind, Unprovable};
use super::types::{Ballot, ReplicaId, Slot};

impl Replica {
    pub fn id(&self) -> ReplicaId {
        self.s.config.id
    }

    pub fn config(&self) -> &Config {
        &self.s.config
    }

    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower(_) => RoleKind::Follower,
            Role::Candidate(_) => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// Whether this replica leads (it may not know yet that it was superseded).
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The replica this one believes leads (itself when leading).
    pub fn leader_hint(&self) -> Option<ReplicaId> {
        match &self.role {
            Role::Follower(f) => f.leader,
            Role::Candidate(_) => None,
            Role::Leader(_) => Some(self.s.config.id),
        }
    }

    /// The ballot this replica leads, if it leads.
    pub fn leader_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Leader(l) => Some(l.ballot),
            _ => None,
        }
    }

    pub fn promised(&self) -> Ballot {
        self.s.acceptor.promised
    }

    /// Every slot below this is known chosen.
    pub fn commit(&self) -> Slot {
        self.s.learner.commit
    }

    /// Every slot below this was handed out for apply.
    pub fn applied(&self) -> Slot {
        self.s.learner.applied
    }

    /// The driver made a checkpoint of every slot below `slot` durable
    /// locally: applied slots below it may leave memory when the log holds
    /// more than `log_retained_bytes_max` (by count they leave anyway, past
    /// `log_retained_slots_max`). Precondition: `slot` was applied.
    pub fn checkpoint_saved(&mut self, slot: Slot) {
        assert!(
            slot <= self.s.learner.applied,
            "a checkpoint of unapplied slots"
        );
        self.s.checkpointed = self.s.checkpointed.max(slot);
    }

    /// Payload bytes of the log held in memory.
    pub fn log_bytes(&self) -> u64 {
        self.s.acceptor.log.bytes()
    }

    /// The accepted entry in `slot`, if held in memory.
    pub fn entry(&self, slot: Slot) -> Option<&Entry> {
        self.s.acceptor.log.get(slot)
    }

    pub fn log(&self) -> &Log {
        &self.s.acceptor.log
    }

    pub fn counters(&self) -> &Counters {
        &self.s.counters
    }

    pub fn tick(&self) -> u64 {
        self.s.tick
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a committed configuration change removed this replica (it
    /// then ignores every input; its driver may shut it down).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Whether a committed configuration change removed this replica and
    /// it has not been released yet. It goes on accepting, promising and
    /// learning (acceptor and learner messages are taken from any replica)
    /// but stands for nothing: while the new configuration's members may
    /// not all know the change was chosen, the old configuration may need
    /// its vote to choose the change again (a leader of the old
    /// configuration re-proposes it, and nothing after it). A leader of the
    /// new configuration releases it with a heartbeat once a quorum of its
    /// members has committed past the change; a heartbeat carrying a commit
    /// point at or beyond `membership.from` comes from no one else. Released,
    /// it retires.
    pub fn is_departing(&self) -> bool {
        !self.retired && self.s.membership.departing()
    }

    /// The configuration in force at the commit point: its epoch and members.
    pub fn membership(&self) -> (u64, &[ReplicaId]) {
        (self.s.membership.epoch, &self.s.membership.members)
    }

    /// False while a joiner has not yet learned the configuration it is in.
    pub fn membership_known(&self) -> bool {
        self.s.membership.known
    }

    /// Entries this replica may have lost to corruption, until repaired.
    pub fn unprovable(&self) -> Option<Unprovable> {
        self.s.unprovable
    }

    /// As leader: the slot after the last value recovered by phase 1 (the
    /// leader's recovery is over once the commit point reaches it).
    pub fn recovery_end(&self) -> Option<Slot> {
        match &self.role {
            Role::Leader(l) => Some(l.recovery_end),
            _ => None,
        }
    }

    /// As leader: the health of every other member (empty elsewhere).
    pub fn peer_health(&self) -> Vec<super::leader::PeerHealth> {
        match &self.role {
            Role::Leader(l) => l.peer_health(&self.s),
            _ => Vec::new(),
        }
    }

    /// As follower: ticks since the leader was last heard from (a
    /// candidate or a follower that knows no leader: `None`).
    pub fn leader_heard_ticks_ago(&self) -> Option<u64> {
        match &self.role {
            Role::Follower(f) if f.leader.is_some() => Some(u64::from(f.election_elapsed)),
            _ => None,
        }
    }

    /// As follower: the end of the range its outstanding catch-up request
    /// asked for, while its commit point is short of it (`None` otherwise).
    pub fn catchup_to(&self) -> Option<Slot> {
        match &self.role {
            Role::Follower(f) => f
                .catchup
                .map(|a| a.to)
                .filter(|to| *to > self.s.learner.commit),
            _ => None,
        }
    }

    /// Client commands waiting at the leader for a slot (0 elsewhere).
    pub fn queued_commands(&self) -> u32 {
        match &self.role {
            Role::Leader(l) => l.queued_commands(),
            _ => 0,
        }
    }
}
