//! The acceptor's in-memory log: what it accepted, slot by slot.
//!
//! It holds a window `[start, end)` of slots; slots may be empty (holes) where
//! an Accept has not arrived. Older slots are compacted away once applied
//! (they remain in storage and, later, in checkpoints).

use std::collections::VecDeque;

use super::types::{Ballot, Slot};
use super::value::Value;

/// What an acceptor accepted in one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ballot: Ballot,
    pub value: Value,
}

/// Accepted entries by slot.
///
/// Invariant: the last held slot is not a hole (`end` is one past the
/// highest accepted slot, or `start` when empty).
#[derive(Clone, Debug, Default)]
pub struct Log {
    start: Slot,
    slots: VecDeque<Option<Entry>>,
}

impl Log {
    /// An empty log whose first slot is `start`.
    pub fn new(start: Slot) -> Log {
        Log {
            start,
            slots: VecDeque::new(),
        }
    }

    /// First slot held in memory.
    pub fn start(&self) -> Slot {
        self.start
    }

    /// One past the highest accepted slot held.
    pub fn end(&self) -> Slot {
        self.start.plus(self.slots.len() as u64)
    }

    /// The entry in `slot`, if held and not a hole.
    #[inline]
    pub fn get(&self, slot: Slot) -> Option<&Entry> {
        let i = slot.0.checked_sub(self.start.0)?;
        self.slots.get(i as usize)?.as_ref()
    }

    /// Stores `entry` in `slot`, replacing what was there.
    /// Precondition: `slot >= start`.
    #[inline]
    pub fn put(&mut self, slot: Slot, entry: Entry) {
        assert!(slot >= self.start, "put below the log start");
        let i = (slot.0 - self.start.0) as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(entry);
        debug_assert!(self.slots.back().is_some_and(|e| e.is_some()));
    }

    /// Forgets every slot below `slot` (they are applied and durable elsewhere).
    pub fn compact_below(&mut self, slot: Slot) {
        while self.start < slot && !self.slots.is_empty() {
            self.slots.pop_front();
            self.start = self.start.next();
        }
        if self.slots.is_empty() && self.start < slot {
            self.start = slot;
        }
    }

    /// Entries with their slots, from `from` on.
    pub fn iter_from(&self, from: Slot) -> impl Iterator<Item = (Slot, &Entry)> {
        let skip = from.since(self.start) as usize;
        let start = self.start;
        self.slots
            .iter()
            .enumerate()
            .skip(skip)
            .filter_map(move |(i, e)| e.as_ref().map(|e| (start.plus(i as u64), e)))
    }

    /// Number of slots held (holes included).
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Highest ballot of any held entry.
    pub fn max_ballot(&self) -> Ballot {
        self.slots
            .iter()
            .flatten()
            .map(|e| e.ballot)
            .max()
            .unwrap_or(Ballot::ZERO)
    }

    /// Checks the structural invariant (no trailing hole).
    pub fn check_invariants(&self) {
        if let Some(last) = self.slots.back() {
            assert!(last.is_some(), "log ends in a hole");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::ReplicaId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(round: u64) -> Entry {
        Entry {
            ballot: Ballot::new(round, ReplicaId(1)),
            value: Value::Noop,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u64, u64),
        Compact(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..40, 1u64..5).prop_map(|(s, r)| Op::Put(s, r)),
            1 => (0u64..40).prop_map(Op::Compact),
        ]
    }

    proptest! {
        /// The log agrees with a map model: puts at or above start are
        /// readable, compaction forgets exactly the slots below its point.
        #[test]
        fn log_matches_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut log = Log::new(Slot(0));
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(s, r) => {
                        if s >= log.start().0 {
                            log.put(Slot(s), entry(r));
                            model.insert(s, r);
                        }
                    }
                    Op::Compact(s) => {
                        log.compact_below(Slot(s));
                        model.retain(|k, _| *k >= s);
                        prop_assert!(log.start() >= Slot(s) || !log.is_empty());
                    }
                }
                log.check_invariants();
                for s in 0..45 {
                    let got = log.get(Slot(s)).map(|e| e.ballot.round);
                    prop_assert_eq!(got, model.get(&s).copied());
                }
                let end = model.keys().next_back().map_or(log.start().0, |k| k + 1);
                prop_assert_eq!(log.end().0, end.max(log.start().0));
                let listed: Vec<_> = log.iter_from(Slot(0)).map(|(s, e)| (s.0, e.ballot.round)).collect();
                let expected: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }

    #[test]
    #[should_panic(expected = "below the log start")]
    fn put_below_start_panics() {
        let mut log = Log::new(Slot(5));
        log.put(Slot(4), entry(1));
    }
}
