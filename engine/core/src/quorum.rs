//! A set of members (by index in the configuration) that voted for something.

use super::config::MEMBERS_MAX;

/// Members that promised or accepted, as a bitmask over member indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorumSet(u64);

const _: () = assert!(MEMBERS_MAX <= u64::BITS as usize);

impl QuorumSet {
    pub const EMPTY: QuorumSet = QuorumSet(0);

    /// Adds member `index`; returns whether it was new.
    #[inline]
    pub fn insert(&mut self, index: usize) -> bool {
        assert!(index < MEMBERS_MAX, "member index {index} out of range");
        let bit = 1u64 << index;
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }

    #[inline]
    pub fn contains(&self, index: usize) -> bool {
        index < MEMBERS_MAX && self.0 & (1u64 << index) != 0
    }

    /// Number of members in the set.
    #[inline]
    pub fn count(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether every member index is below `members`.
    pub fn within(&self, members: usize) -> bool {
        members >= MEMBERS_MAX || self.0 >> members == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The bitmask behaves like a set of indices.
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec(0usize..MEMBERS_MAX, 0..100)) {
            let mut q = QuorumSet::EMPTY;
            let mut model = BTreeSet::new();
            for i in ops {
                prop_assert_eq!(q.insert(i), model.insert(i));
                prop_assert_eq!(q.count(), model.len());
                prop_assert!(q.contains(i));
            }
            for i in 0..MEMBERS_MAX {
                prop_assert_eq!(q.contains(i), model.contains(&i));
            }
            let top = model.iter().next_back().map_or(0, |m| m + 1);
            prop_assert!(q.within(top));
            if top > 0 {
                prop_assert!(!q.within(top - 1));
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn index_beyond_members_max_panics() {
        let mut q = QuorumSet::EMPTY;
        q.insert(MEMBERS_MAX);
    }
}
