//! The candidate: phase 1 of a candidacy (promises gathered, the
//! accepted values they report merged).

use std::collections::BTreeMap;

use super::counters::Counter;
use super::message::Prepare;
use super::quorum::QuorumSet;
use super::replica::Shared;
use super::types::{Ballot, PersistToken, Slot};
use super::value::Value;

#[derive(Debug)]
pub(crate) struct Candidate {
    pub ballot: Ballot,
    /// Our own promise, made only once the peers' promises and ours would
    /// form a quorum (so a candidacy that cannot win leaves the ballot of a
    /// working leader alone); we count ourselves once it is durable.
    pub(crate) self_token: Option<PersistToken>,
    /// The commit point the Prepares ask from.
    pub(crate) from: Slot,
    /// Whether our own report counts toward the quorum. Not when our log
    /// lost entries to corruption (`Shared::unprovable`): we cannot report
    /// what we accepted there, so a quorum of others must promise (their
    /// reports are complete; ours only adds entries we really accepted).
    /// Standing at all matters: the others may be unable to (a departing
    /// member, a joiner), and winning is how the lost slots get learned.
    pub(crate) self_counts: bool,
    /// Members whose promise is complete (every chunk received).
    pub(crate) promised: QuorumSet,
    /// Members that refused because they hear a live leader.
    pub(crate) refused: QuorumSet,
    /// Per member: the slot the last Prepare asked from (chunked promises).
    pub(crate) asked_from: Vec<Slot>,
    /// Highest-ballot accepted value reported per slot.
    pub(crate) merged: BTreeMap<Slot, (Ballot, Value)>,
    pub(crate) elapsed: u32,
    pub(crate) timeout: u32,
}

impl Candidate {
    /// Advances the candidacy timer; returns whether to start a new election.
    pub fn on_tick(&mut self, s: &mut Shared) -> bool {
        self.elapsed += 1;
        if self.elapsed >= self.timeout {
            return true;
        }
        if self.elapsed.is_multiple_of(s.config.retransmit_ticks) {
            for i in 0..s.membership.members.len() {
                let peer = s.membership.members[i];
                if Some(i) != s.membership.self_index && !self.promised.contains(i) {
                    s.counters.bump(Counter::PrepareRetransmits);
                    let from = self.asked_from[i];
                    s.out.send_now(
                        peer,
                        Prepare {
                            ballot: self.ballot,
                            from,
                        },
                    );
                }
            }
        }
        false
    }

    /// Counts our own promise once durable; returns whether we won.
    pub fn on_persisted(&mut self, s: &mut Shared) -> bool {
        if self.self_token.is_some_and(|t| s.out.durable() >= t) {
            self.promised.insert(s.me());
        }
        self.won(s)
    }

    /// A quorum promised, our own durable promise among them. Leading only
    /// once our own promise is durable means a ballot in which we proposed
    /// anything is never reused after a crash (the next candidacy picks a
    /// round above the durable promise), so one ballot never carries two
    /// values for a slot.
    pub(crate) fn won(&self, s: &Shared) -> bool {
        // (Our own promise is among them, so the subtraction cannot wrap.)
        self.promised.contains(s.me())
            && self.promised.count() - usize::from(!self.self_counts) >= s.membership.quorum
    }

    /// Promises our own ballot once it would complete a quorum, and adds
    /// what our own acceptor accepted to the merge.
    pub(crate) fn promise_self_when_due(&mut self, s: &mut Shared) {
        let with_ours = self.promised.count() + usize::from(self.self_counts);
        if self.self_token.is_some() || with_ours < s.membership.quorum {
            return;
        }
        self.self_token = Some(s.promise(self.ballot));
        for (slot, e) in s.acceptor.log.iter_from(self.from) {
            self.merge(slot, e.ballot, e.value.clone());
        }
    }

    pub(crate) fn merge(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        match self.merged.get(&slot) {
            Some((b, v)) if *b >= ballot => {
                // One value per slot per ballot: equal ballots carry equal values.
                debug_assert!(*b > ballot || *v == value, "two values in one ballot");
            }
            _ => {
                self.merged.insert(slot, (ballot, value));
            }
        }
    }

    pub fn check_invariants(&self, s: &Shared) {
        assert_eq!(
            self.ballot.replica, s.config.id,
            "candidate of a foreign ballot"
        );
        match self.self_token {
            Some(_) => assert_eq!(self.ballot, s.acceptor.promised, "self-promise lost"),
            None => assert!(self.ballot > s.acceptor.promised, "candidacy superseded"),
        }
        assert!(self.promised.within(s.membership.members.len()));
        assert!(!self.won(s), "won but still a candidate");
    }
}
