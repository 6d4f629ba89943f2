//! Small value types of the protocol: identities, ballots, slots, tokens.
//!
//! Wire and state integers are sized (`u32`, `u64`), never `usize`.

use std::fmt;

/// Identity of a cluster. Every message carries it; a message from another
/// cluster is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

/// Identity of one replica inside a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u32);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Identity of a client session. Together with a sequence number it names a
/// command exactly once across retries and leader changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// A position in the replicated log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u64);

impl Slot {
    pub const ZERO: Slot = Slot(0);

    /// The slot after this one.
    #[inline]
    pub fn next(self) -> Slot {
        Slot(self.0 + 1)
    }

    /// `self + n`.
    #[inline]
    pub fn plus(self, n: u64) -> Slot {
        Slot(self.0 + n)
    }

    /// Number of slots in `[from, self)`; zero if `from >= self`.
    #[inline]
    pub fn since(self, from: Slot) -> u64 {
        self.0.saturating_sub(from.0)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A Paxos ballot: totally ordered by `(round, replica)`, so two proposers
/// never share a ballot.
///
/// Invariant: only replica `replica` proposes in ballot `(round, replica)`,
/// and it proposes at most one value per slot in that ballot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ballot {
    pub round: u64,
    pub replica: ReplicaId,
}

impl Ballot {
    /// The ballot below every real ballot; nothing is ever proposed in it.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        replica: ReplicaId(0),
    };

    pub fn new(round: u64, replica: ReplicaId) -> Ballot {
        Ballot { round, replica }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}.{}", self.round, self.replica.0)
    }
}

/// Names one persist request handed to storage. Tokens are issued in
/// increasing order and storage makes them durable in that order, so
/// "token `t` is durable" means every request up to `t` is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersistToken(pub u64);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Ballot order is lexicographic on (round, replica), total and
        /// consistent with equality.
        #[test]
        fn ballot_order_is_lexicographic(r1 in 0u64..5, p1 in 0u32..5, r2 in 0u64..5, p2 in 0u32..5) {
            let a = Ballot::new(r1, ReplicaId(p1));
            let b = Ballot::new(r2, ReplicaId(p2));
            prop_assert_eq!(a.cmp(&b), (r1, p1).cmp(&(r2, p2)));
            prop_assert_eq!(a == b, r1 == r2 && p1 == p2);
            prop_assert!(Ballot::ZERO <= a);
        }

        #[test]
        fn ballots_of_distinct_replicas_never_tie(r in 0u64..1000, p1 in 0u32..64, p2 in 0u32..64) {
            prop_assume!(p1 != p2);
            prop_assert_ne!(Ballot::new(r, ReplicaId(p1)), Ballot::new(r, ReplicaId(p2)));
        }
    }

    #[test]
    fn slot_arithmetic() {
        assert_eq!(Slot(3).next(), Slot(4));
        assert_eq!(Slot(3).plus(5), Slot(8));
        assert_eq!(Slot(8).since(Slot(3)), 5);
        assert_eq!(Slot(3).since(Slot(8)), 0);
    }
}
