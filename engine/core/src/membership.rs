//! The live membership: the configuration in force at the commit point,
//! this replica's place in it, the members changes removed, and a
//! joiner's progress toward the change that adds it.
//!
//! Apart from [`Config`], which holds the static bounds and the bootstrap
//! configuration as given (`Config::members` is never changed after
//! start). Changes take effect here only ([`Shared::switch_membership`]),
//! and [`MembershipState::check_invariants`] states what always holds.

use super::config::{Config, Membership, PlantedBug};
use super::counters::Counter;
use super::replica::Shared;
use super::types::{ReplicaId, Slot};

/// Most removed members a leader keeps releasing (see
/// [`MembershipState::leaving`]).
pub const LEAVING_MAX: usize = super::config::MEMBERS_MAX;

/// The configuration in force and what this replica knows of changes.
#[derive(Debug)]
pub(crate) struct MembershipState {
    /// The configuration in force at the commit point.
    pub members: Vec<ReplicaId>,
    /// Votes needed in it.
    pub quorum: usize,
    /// Our index in it; `None` when not a member (a joiner that has not
    /// caught up to the change that added it, or a removed replica).
    pub self_index: Option<usize>,
    /// Its epoch (0: bootstrap).
    pub epoch: u64,
    /// The first slot it governs (at most: a configuration learned from a
    /// checkpoint or at restart counts from there). A leader releases the
    /// members the change removed once a quorum of its configuration has
    /// committed up to here.
    pub from: Slot,
    /// False while a joiner does not yet know the configuration at its
    /// commit point (it was told one, not shown it by its log).
    pub known: bool,
    /// Set when a committed configuration change took effect during the
    /// current input: the members before it, as far as known (a joiner's
    /// told list is not a configuration it was in: empty). The replica acts
    /// on it (re-election, retirement) before the input returns.
    pub switched: Option<Vec<ReplicaId>>,
    /// Members configuration changes removed and did not add back
    /// (ourselves excluded), oldest first, at most `LEAVING_MAX`. A leader
    /// keeps sending them heartbeats once its configuration is
    /// established, so one that missed the news catches up and retires.
    pub leaving: Vec<ReplicaId>,
    /// With `join`: the commit point of the first leader message since
    /// start (`None` before it). Changes chosen below it are history the
    /// joiner catches up through; see `switch_membership`.
    pub join_from: Option<Slot>,
    /// A departing replica released by a heartbeat whose commit point it
    /// had not reached: it retires on reaching it (see `released_by`).
    pub release_at: Option<Slot>,
    /// A joiner's `join_epoch`, until its log reaches that epoch. Until
    /// then removals it replays are history, not its own: it was added
    /// after them, so it does not retire on them.
    pub told: Option<u64>,
}

impl MembershipState {
    /// The membership at start: `recovered` (a checkpoint's configuration)
    /// or the bootstrap one, in force from `commit`.
    pub fn at_start(config: &Config, recovered: Option<&Membership>, commit: Slot) -> Self {
        let mut told = config.join.then_some(config.join_epoch);
        let (members, epoch) = match recovered {
            Some(m) => {
                let history = config.bug(PlantedBug::JoinerRetiresOnHistory);
                if told.is_some_and(|t| m.epoch() >= t) && (history || m.contains(config.id)) {
                    told = None;
                }
                (m.members().to_vec(), m.epoch())
            }
            None => (config.members.clone(), 0),
        };
        let mut leaving = Vec::new();
        if epoch > 0 {
            // A configuration from a checkpoint: whom earlier changes
            // removed is not known, so every known replica outside it.
            leaving = config
                .known_replicas
                .iter()
                .copied()
                .filter(|r| !members.contains(r) && *r != config.id)
                .take(LEAVING_MAX)
                .collect();
        }
        MembershipState {
            quorum: config.quorum_of(members.len()),
            self_index: members.iter().position(|m| *m == config.id),
            members,
            epoch,
            from: commit,
            known: !config.join || recovered.is_some(),
            switched: None,
            leaving,
            join_from: None,
            release_at: None,
            told,
        }
    }

    /// Position of `id` in the configuration (its bit in acknowledgement
    /// masks).
    #[inline]
    pub fn index_of(&self, id: ReplicaId) -> Option<usize> {
        self.members.iter().position(|m| *m == id)
    }

    /// Whether this replica may stand for election: it knows the
    /// configuration at its commit point and is in it, and, if it joins,
    /// that configuration is the one adding it or a later one. (A removed
    /// replica added back with its old disk restarts from a configuration
    /// that still lists it, from before its removal: it must not lead in it.)
    pub fn may_campaign(&self) -> bool {
        self.known && self.self_index.is_some() && self.told.is_none()
    }

    /// Whether this replica is out of the configuration and not joining
    /// it: removed, until released (see `Replica::is_departing`).
    pub fn departing(&self) -> bool {
        self.known && self.self_index.is_none() && self.told.is_none()
    }

    /// Panics unless every invariant holds (between inputs).
    pub fn check_invariants(&self, config: &Config) {
        assert!(
            self.switched.is_none(),
            "a configuration change not acted on"
        );
        assert!(!self.members.is_empty(), "an empty configuration");
        assert_eq!(self.quorum, config.quorum_of(self.members.len()));
        assert_eq!(self.self_index, self.index_of(config.id));
        assert!(self.leaving.len() <= LEAVING_MAX, "leaving unbounded");
        assert!(
            self.leaving
                .iter()
                .all(|r| *r != config.id && !self.members.contains(r)),
            "a member (or this replica) among the leaving"
        );
        if self.told.is_some() {
            assert!(config.join, "told an epoch without joining");
        }
        if !self.known {
            assert!(
                config.join,
                "a bootstrap member not knowing its configuration"
            );
        }
    }
}

impl Shared {
    /// Our member index. Precondition: a member (every candidate and leader is).
    #[inline]
    pub fn me(&self) -> usize {
        self.membership
            .self_index
            .expect("a candidate or leader is a member")
    }

    /// A committed configuration change takes effect: `m` governs every
    /// slot from the commit point on. `skipping`: epochs may be skipped (a
    /// checkpoint's configuration); otherwise `m` must be the next one.
    pub fn switch_membership(&mut self, m: &Membership, from: Slot, skipping: bool) {
        let ms = &mut self.membership;
        if ms.known && m.epoch() <= ms.epoch {
            // Stale: a change a leader of the old configuration accepted
            // after the slot a competing change took, which a later
            // leader's phase 1 recovered (it may have been chosen, so it is
            // proposed again). Every replica ignores it alike: the log
            // decides, and the executor does the same.
            assert!(!skipping, "a checkpoint's configuration is newer");
            self.counters.bump(Counter::ConfigChangesStale);
            return;
        }
        if ms.known && !skipping {
            assert_eq!(
                m.epoch(),
                ms.epoch + 1,
                "configuration epochs must follow one another"
            );
        }
        let mut old = std::mem::replace(&mut ms.members, m.members().to_vec());
        // Every member removed by this change or an earlier one and not
        // added back: one that missed its release under an earlier
        // configuration is released by a leader of a later one (issue 21,
        // finding 3). Bounded: the oldest beyond `LEAVING_MAX` are
        // forgotten (they can still be stopped by hand).
        let me = self.config.id;
        ms.leaving.retain(|r| !m.contains(*r));
        for r in old.iter().copied() {
            if !m.contains(r) && r != me && !ms.leaving.contains(&r) {
                ms.leaving.push(r);
            }
        }
        for r in self.config.known_replicas.iter().copied() {
            if !m.contains(r) && r != me && !ms.leaving.contains(&r) {
                ms.leaving.push(r);
            }
        }
        if ms.leaving.len() > LEAVING_MAX {
            let excess = ms.leaving.len() - LEAVING_MAX;
            ms.leaving.drain(..excess);
        }
        if !ms.known {
            old.clear();
        }
        ms.switched.get_or_insert(old);
        ms.epoch = m.epoch();
        ms.from = from;
        ms.known = true;
        let history = self.config.bug(PlantedBug::JoinerRetiresOnHistory);
        if ms.told.is_some_and(|t| m.epoch() >= t) && (history || m.contains(self.config.id)) {
            // The change that added this joiner (the first configuration
            // at or after `join_epoch` that lists it: changes before it,
            // learned by catch-up or a checkpoint, are history that does
            // not list it): from now on it is a member like any other, and
            // a later removal is its own.
            ms.told = None;
        }
        ms.self_index = ms.index_of(self.config.id);
        let before_start = ms.join_from.is_none_or(|f| from <= f);
        if self.config.join
            && ms.told.is_none()
            && ms.self_index.is_none()
            && before_start
            && !history
        {
            // Started with `join`: the operator is adding it (back). A
            // removal chosen before the first commit point a leader showed
            // it since it started (replayed from its own old log or learned
            // by catch-up) is history from before that, however earlier
            // configurations listed it: it waits for a later change to add
            // it, and does not retire. A removal chosen after is its own.
            ms.told = Some(m.epoch() + 1);
            self.counters.bump(Counter::JoinerRemovalsReplayed);
        }
        ms.quorum = self.config.quorum_of(ms.members.len());
        self.counters.bump(Counter::MembershipChanges);
    }

    /// A replica outside the configuration and not joining it said it is
    /// removed: released with the others once the configuration is
    /// established (see `Leader::on_tick`).
    pub fn note_leaving(&mut self, id: ReplicaId) {
        let ms = &mut self.membership;
        debug_assert!(ms.index_of(id).is_none());
        if id == self.config.id || ms.leaving.contains(&id) {
            self.counters.bump(Counter::IgnoreNotMember);
            return;
        }
        if ms.leaving.len() >= LEAVING_MAX {
            ms.leaving.remove(0);
        }
        ms.leaving.push(id);
        self.counters.bump(Counter::ReleasesNoted);
    }
}
