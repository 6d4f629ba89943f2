//! Safety checkers run after every simulator event.
//!
//! - [`Ledger`]: the ground truth of Paxos. A value is chosen in a slot once
//!   a majority of acceptors has *durably* accepted it in the same ballot
//!   (learned from storage, not from the protocol's own messages). Checks:
//!   one value per (slot, ballot); chosen stays chosen; every applied slot
//!   holds the chosen value (agreement).
//! - [`ApplyChains`]: every replica's applied sequence, folded into a hash
//!   chain per slot, must equal every other's (identical applied prefixes).
//! - Exactly-once is checked by the simulator's state machine wrapper
//!   (`workload::SimKv`), which sees every real execution.

use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHashSet};

use std::collections::BTreeMap;

use crate::core::config::majority;
use crate::core::{Ballot, ClientId, EntryWrite, Slot, Value};

/// A safety or liveness violation found by a checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub detail: String,
}

/// Which property broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// Two values in one (slot, ballot).
    BallotValueConflict,
    /// A different value became chosen in a slot that was already chosen.
    ChosenChanged,
    /// A replica applied a value that is not the chosen one (or nothing was chosen).
    Agreement,
    /// Two replicas applied different sequences.
    AppliedPrefix,
    /// A command was executed twice by one replica's state machine.
    ExactlyOnce,
    /// The client-visible history is not linearizable.
    Linearizability,
    /// A client was acknowledged but its command is in no chosen slot.
    LostAcknowledged,
    /// A replica invariant (contract) failed: the replica panicked.
    Invariant,
    /// A connected quorum did not finish the work within the bound.
    Liveness,
    /// A Promise or Accepted left a replica before the state it reports was durable.
    AckBeforeDurable,
    /// The simulator's own sanity (a reply nobody could have produced).
    Protocol,
    /// A replica's state differs from replaying the chosen log from
    /// genesis to its apply point (checkpoints taken, restored, installed).
    StateDiverged,
    /// A replica's durable log starts beyond its newest durable checkpoint:
    /// the slots between are lost to it.
    SlotsLost,
    /// A replica a configuration change removed retired before any
    /// configuration at or after that change was established (a quorum of
    /// its members durably committed past it): the old configuration may
    /// still need its vote.
    PrematureRelease,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::BallotValueConflict => "ballot-value-conflict",
            ViolationKind::ChosenChanged => "chosen-changed",
            ViolationKind::Agreement => "agreement",
            ViolationKind::AppliedPrefix => "applied-prefix",
            ViolationKind::ExactlyOnce => "exactly-once",
            ViolationKind::Linearizability => "linearizability",
            ViolationKind::LostAcknowledged => "lost-acknowledged",
            ViolationKind::Invariant => "invariant",
            ViolationKind::Liveness => "liveness",
            ViolationKind::AckBeforeDurable => "ack-before-durable",
            ViolationKind::Protocol => "protocol",
            ViolationKind::StateDiverged => "state-diverged",
            ViolationKind::SlotsLost => "slots-lost",
            ViolationKind::PrematureRelease => "premature-release",
        }
    }
}

pub(crate) fn violation(kind: ViolationKind, detail: String) -> Violation {
    Violation { kind, detail }
}

#[derive(Debug)]
struct Votes {
    fingerprint: u64,
    voters: u64,
    value: Value,
}

/// Chosen values, derived from durable accepts.
///
/// Which acceptors vote in a slot is the configuration in force there:
/// the bootstrap one, then, from the slot after each chosen configuration
/// change, its members (node `i` is replica `i + 1`).
#[derive(Debug, Default)]
pub struct Ledger {
    /// First slot of each configuration → its members as a node bitmask.
    configs: BTreeMap<Slot, u64>,
    /// Every chosen configuration change: slot → (epoch, members). A
    /// change whose epoch is not above the one in force at its slot is
    /// stale and governs nothing (as the replicas ignore it).
    changes: BTreeMap<Slot, (u64, u64)>,
    votes: FxHashMap<(Slot, Ballot), Votes>,
    /// Slot → fingerprint of the chosen value.
    chosen: FxHashMap<Slot, u64>,
    /// Every `(client, seq)` in a chosen slot.
    chosen_commands: FxHashSet<(ClientId, u64)>,
    commands_chosen: u64,
}

impl Ledger {
    /// A ledger whose bootstrap configuration is the nodes in `members` (a bitmask).
    pub fn new(members: u64) -> Ledger {
        Ledger {
            configs: BTreeMap::from([(Slot::ZERO, members)]),
            ..Ledger::default()
        }
    }

    /// The voting members of `slot`'s configuration (a node bitmask).
    fn members_of(&self, slot: Slot) -> u64 {
        *self
            .configs
            .range(..=slot)
            .next_back()
            .expect("the bootstrap configuration starts at slot 0")
            .1
    }

    /// Whether `voters` include a majority of `slot`'s configuration.
    fn is_quorum(&self, slot: Slot, voters: u64) -> bool {
        let members = self.members_of(slot);
        (voters & members).count_ones() as usize >= majority(members.count_ones() as usize)
    }

    /// Acceptor `node` made `e` durable.
    pub fn on_durable_accept(&mut self, node: usize, e: &EntryWrite) -> Result<(), Violation> {
        let fp = e.value.fingerprint();
        let votes = self.votes.entry((e.slot, e.ballot)).or_insert(Votes {
            fingerprint: fp,
            voters: 0,
            value: e.value.clone(),
        });
        if votes.fingerprint != fp {
            return Err(violation(
                ViolationKind::BallotValueConflict,
                format!(
                    "{} {}: two values ({:x} and {fp:x})",
                    e.slot, e.ballot, votes.fingerprint
                ),
            ));
        }
        votes.voters |= 1 << node;
        let voters = votes.voters;
        if self.is_quorum(e.slot, voters) {
            self.choose(e.slot, e.ballot, fp, &e.value)?;
        }
        Ok(())
    }

    /// `value` (fingerprint `fp`) is chosen in `slot`, by a quorum in `ballot`.
    fn choose(
        &mut self,
        slot: Slot,
        ballot: Ballot,
        fp: u64,
        value: &Value,
    ) -> Result<(), Violation> {
        match self.chosen.entry(slot) {
            Entry::Occupied(o) if *o.get() != fp => Err(violation(
                ViolationKind::ChosenChanged,
                format!("{slot} chosen {:x}, now {fp:x} in {ballot}", o.get()),
            )),
            Entry::Occupied(_) => Ok(()),
            Entry::Vacant(v) => {
                v.insert(fp);
                match value {
                    Value::Batch(b) => {
                        self.commands_chosen += u64::from(b.len());
                        for c in b.iter() {
                            self.chosen_commands.insert((c.client, c.seq));
                        }
                        Ok(())
                    }
                    Value::Config(m) => self.configuration_chosen(slot, m),
                    Value::Noop => Ok(()),
                }
            }
        }
    }

    /// A configuration change chosen in `slot` governs the slots after it;
    /// votes already cast there are counted again in it.
    fn configuration_chosen(
        &mut self,
        slot: Slot,
        m: &crate::core::Membership,
    ) -> Result<(), Violation> {
        let mask = m
            .members()
            .iter()
            .fold(0u64, |mask, id| mask | 1 << (id.0 - 1));
        self.changes.insert(slot, (m.epoch(), mask));
        // Slots after it decided before it was: counted in the
        // configuration then known, which this change may replace (a
        // leader pipelined past a slot another ballot's change then took;
        // simulator seed 29524). Undecided again, they are counted anew
        // below in the configuration that governs them.
        let undecided: Vec<(Slot, u64)> = self
            .chosen
            .iter()
            .filter(|(s, _)| **s > slot)
            .map(|(s, fp)| (*s, *fp))
            .collect();
        for (s, fp) in undecided {
            self.chosen.remove(&s);
            self.changes.remove(&s);
            let value = self
                .votes
                .iter()
                .find(|((vs, _), v)| *vs == s && v.fingerprint == fp)
                .map(|(_, v)| v.value.clone());
            if let Some(Value::Batch(b)) = value {
                self.commands_chosen -= u64::from(b.len());
                for c in b.iter() {
                    self.chosen_commands.remove(&(c.client, c.seq));
                }
            }
        }
        let bootstrap = self.configs[&Slot::ZERO];
        self.configs = BTreeMap::from([(Slot::ZERO, bootstrap)]);
        let mut epoch = 0;
        for (s, (e, mask)) in &self.changes {
            if *e > epoch {
                epoch = *e;
                self.configs.insert(s.next(), *mask);
            }
        }
        let later: Vec<_> = self
            .votes
            .iter()
            .filter(|((s, _), v)| *s > slot && self.is_quorum(*s, v.voters))
            .map(|((s, b), v)| (*s, *b, v.fingerprint, v.value.clone()))
            .collect();
        for (s, b, fp, value) in later {
            self.choose(s, b, fp, &value)?;
        }
        Ok(())
    }

    /// Replica `node` applies `value` in `slot`: it must be the chosen value.
    pub fn check_applied(&self, node: usize, slot: Slot, value: &Value) -> Result<(), Violation> {
        let fp = value.fingerprint();
        match self.chosen.get(&slot) {
            Some(c) if *c == fp => Ok(()),
            Some(c) => Err(violation(
                ViolationKind::Agreement,
                format!("node {node} applied {fp:x} in {slot}, chosen is {c:x}"),
            )),
            None => Err(violation(
                ViolationKind::Agreement,
                format!("node {node} applied {fp:x} in {slot}, nothing chosen there"),
            )),
        }
    }

    /// Fingerprint of the value chosen in `slot`, if one is.
    pub fn chosen(&self, slot: Slot) -> Option<u64> {
        self.chosen.get(&slot).copied()
    }

    pub fn is_command_chosen(&self, client: ClientId, seq: u64) -> bool {
        self.chosen_commands.contains(&(client, seq))
    }

    /// Commands in chosen slots (no-ops count zero).
    pub fn commands_chosen(&self) -> u64 {
        self.commands_chosen
    }

    pub fn slots_chosen(&self) -> usize {
        self.chosen.len()
    }
}

/// Hash chains of applied slots.
#[derive(Debug, Default)]
pub struct ApplyChains {
    /// Chain value after applying each slot, as first seen.
    by_slot: Vec<u64>,
}

impl ApplyChains {
    /// Extends `chain` (a replica's running value) by `slot`/`value` and
    /// checks it against every other replica's. Returns whether this is the
    /// first replica to apply `slot`.
    pub fn extend(
        &mut self,
        node: usize,
        chain: &mut u64,
        slot: Slot,
        value: &Value,
    ) -> Result<bool, Violation> {
        let mut h = std::hash::DefaultHasher::new();
        (*chain, slot.0, value.fingerprint()).hash(&mut h);
        *chain = h.finish();
        let i = slot.0 as usize;
        if i == self.by_slot.len() {
            self.by_slot.push(*chain);
            return Ok(true);
        } else if i > self.by_slot.len() {
            return Err(violation(
                ViolationKind::AppliedPrefix,
                format!(
                    "node {node} applied {slot} before slot {}",
                    self.by_slot.len()
                ),
            ));
        } else if self.by_slot[i] != *chain {
            return Err(violation(
                ViolationKind::AppliedPrefix,
                format!("node {node} applied prefix through {slot} differs"),
            ));
        }
        Ok(false)
    }

    /// Slots applied by at least one replica.
    pub fn len(&self) -> usize {
        self.by_slot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_slot.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BatchBuilder, ReplicaId};

    fn value(tag: u8) -> Value {
        let mut b = BatchBuilder::with_capacity(8);
        b.push(ClientId(u64::from(tag)), 1, 1, &[tag]);
        Value::Batch(b.finish())
    }

    fn write(slot: u64, round: u64, v: &Value) -> EntryWrite {
        EntryWrite {
            slot: Slot(slot),
            ballot: Ballot::new(round, ReplicaId(1)),
            value: v.clone(),
        }
    }

    #[test]
    fn a_majority_of_durable_accepts_chooses() {
        let mut l = Ledger::new(0b111);
        let a = value(1);
        l.on_durable_accept(0, &write(0, 1, &a)).unwrap();
        assert!(
            l.check_applied(0, Slot(0), &a).is_err(),
            "one vote is not a choice"
        );
        l.on_durable_accept(1, &write(0, 1, &a)).unwrap();
        l.check_applied(2, Slot(0), &a).unwrap();
        assert!(l.is_command_chosen(ClientId(1), 1));
        assert_eq!(l.commands_chosen(), 1);
    }

    /// Planted bug for the checker itself: a second value chosen in a
    /// higher ballot must be reported.
    #[test]
    fn a_changed_choice_is_caught() {
        let mut l = Ledger::new(0b111);
        let (a, b) = (value(1), value(2));
        l.on_durable_accept(0, &write(0, 1, &a)).unwrap();
        l.on_durable_accept(1, &write(0, 1, &a)).unwrap();
        l.on_durable_accept(1, &write(0, 2, &b)).unwrap();
        let err = l.on_durable_accept(2, &write(0, 2, &b)).unwrap_err();
        assert_eq!(err.kind, ViolationKind::ChosenChanged);
    }

    /// After a chosen change, only the new members' votes count.
    #[test]
    fn votes_count_in_the_configuration_of_their_slot() {
        let mut l = Ledger::new(0b111);
        let change = Value::Config(Box::new(
            crate::core::Membership::new(1, vec![ReplicaId(3), ReplicaId(4), ReplicaId(5)])
                .unwrap(),
        ));
        let a = value(1);
        // Slot 1 gets votes from nodes 0 and 1 before the change is chosen:
        // a majority of the old members, but none of the new ones but 2.
        l.on_durable_accept(0, &write(1, 1, &a)).unwrap();
        l.on_durable_accept(1, &write(1, 1, &a)).unwrap();
        assert!(
            l.check_applied(0, Slot(1), &a).is_ok(),
            "chosen under {{0, 1, 2}}"
        );
        let mut l = Ledger::new(0b111);
        l.on_durable_accept(0, &write(0, 1, &change)).unwrap();
        l.on_durable_accept(1, &write(0, 1, &change)).unwrap();
        l.on_durable_accept(0, &write(1, 1, &a)).unwrap();
        l.on_durable_accept(1, &write(1, 1, &a)).unwrap();
        assert!(
            l.check_applied(0, Slot(1), &a).is_err(),
            "old members chose in the new configuration"
        );
        l.on_durable_accept(3, &write(1, 1, &a)).unwrap();
        assert!(l.check_applied(0, Slot(1), &a).is_err());
        l.on_durable_accept(2, &write(1, 1, &a)).unwrap();
        l.check_applied(0, Slot(1), &a).unwrap();
    }

    /// Issue 21, seed 29524: slot 1 reached a quorum of the members known
    /// then, but slot 0 turned out to hold a change; slot 1 belongs to the
    /// new configuration, whose quorum decides another value there. Not
    /// a chosen value changed: slot 1 was never decided.
    #[test]
    fn a_slot_decided_before_an_earlier_change_is_counted_again_in_it() {
        let mut l = Ledger::new(0b111);
        let change = Value::Config(Box::new(
            crate::core::Membership::new(1, vec![ReplicaId(1), ReplicaId(3), ReplicaId(5)])
                .unwrap(),
        ));
        let (y, z) = (value(1), value(2));
        l.on_durable_accept(1, &write(1, 2, &y)).unwrap();
        l.on_durable_accept(2, &write(1, 2, &y)).unwrap();
        l.check_applied(0, Slot(1), &y).unwrap();
        l.on_durable_accept(0, &write(0, 4, &change)).unwrap();
        l.on_durable_accept(1, &write(0, 4, &change)).unwrap();
        assert!(l.check_applied(0, Slot(1), &y).is_err(), "still chosen");
        l.on_durable_accept(0, &write(1, 5, &z)).unwrap();
        l.on_durable_accept(4, &write(1, 5, &z)).unwrap();
        l.check_applied(0, Slot(1), &z).unwrap();
        // A value chosen in the slot's own configuration still may not change.
        let err = l
            .on_durable_accept(2, &write(1, 6, &y))
            .and_then(|()| l.on_durable_accept(4, &write(1, 6, &y)));
        assert_eq!(err.unwrap_err().kind, ViolationKind::ChosenChanged);
    }

    #[test]
    fn two_values_in_one_ballot_are_caught() {
        let mut l = Ledger::new(0b111);
        l.on_durable_accept(0, &write(0, 1, &value(1))).unwrap();
        let err = l.on_durable_accept(1, &write(0, 1, &value(2))).unwrap_err();
        assert_eq!(err.kind, ViolationKind::BallotValueConflict);
    }

    #[test]
    fn applying_a_different_value_is_caught() {
        let mut l = Ledger::new(0b1);
        l.on_durable_accept(0, &write(0, 1, &value(1))).unwrap();
        let err = l.check_applied(1, Slot(0), &value(2)).unwrap_err();
        assert_eq!(err.kind, ViolationKind::Agreement);
    }

    #[test]
    fn diverging_applied_prefixes_are_caught() {
        let mut chains = ApplyChains::default();
        let (mut a, mut b) = (0, 0);
        chains.extend(0, &mut a, Slot(0), &value(1)).unwrap();
        chains.extend(1, &mut b, Slot(0), &value(1)).unwrap();
        chains.extend(0, &mut a, Slot(1), &value(2)).unwrap();
        let err = chains.extend(1, &mut b, Slot(1), &value(3)).unwrap_err();
        assert_eq!(err.kind, ViolationKind::AppliedPrefix);
        let mut c = 0;
        let err = chains.extend(2, &mut c, Slot(5), &value(1)).unwrap_err();
        assert_eq!(err.kind, ViolationKind::AppliedPrefix);
    }
}
