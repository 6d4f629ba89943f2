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
/// Invariants: the last held slot is not a hole (`end` is one past the
/// highest accepted slot, or `start` when empty); `bytes` is the payload
/// bytes of the held entries.
#[derive(Clone, Debug, Default)]
pub struct Log {
    start: Slot,
    slots: VecDeque<Option<Entry>>,
    bytes: u64,
}

/// Logs up to this many slots recount their bytes in `check_invariants`
/// (the simulator's logs; a production log is not walked per step).
const RECOUNT_SLOTS_MAX: usize = 4096;

fn payload(e: &Option<Entry>) -> u64 {
    e.as_ref().map_or(0, |e| e.value.payload_len() as u64)
}

impl Log {
    /// An empty log whose first slot is `start`.
    pub fn new(start: Slot) -> Log {
        Log {
            start,
            slots: VecDeque::new(),
            bytes: 0,
        }
    }

    /// First slot held in memory.
    pub fn start(&self) -> Slot {
        self.start
    }

    /// Payload bytes of the entries held.
    pub fn bytes(&self) -> u64 {
        self.bytes
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
        self.bytes += entry.value.payload_len() as u64;
        self.bytes -= payload(&self.slots[i]);
        self.slots[i] = Some(entry);
        debug_assert!(self.slots.back().is_some_and(|e| e.is_some()));
    }

    /// Forgets every slot below `slot` (they are applied and durable elsewhere).
    pub fn compact_below(&mut self, slot: Slot) {
        while self.start < slot
            && let Some(e) = self.slots.pop_front()
        {
            self.bytes -= payload(&e);
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

    /// Forgets slots from the start, below `below`, until the entries
    /// held come to at most `bytes_max` payload bytes (or `below` is reached).
    pub fn compact_to_bytes(&mut self, bytes_max: u64, below: Slot) {
        while self.bytes > bytes_max
            && self.start < below
            && let Some(e) = self.slots.pop_front()
        {
            self.bytes -= payload(&e);
            self.start = self.start.next();
        }
        // Postcondition: within the bound, or nothing below `below` is left.
        assert!(self.bytes <= bytes_max || self.start >= below || self.slots.is_empty());
    }

    /// Checks the structural invariant (no trailing hole) and, for small
    /// logs, the byte count.
    pub fn check_invariants(&self) {
        if let Some(last) = self.slots.back() {
            assert!(last.is_some(), "log ends in a hole");
        }
        if self.slots.len() <= RECOUNT_SLOTS_MAX {
            let bytes: u64 = self.slots.iter().map(payload).sum();
            assert_eq!(self.bytes, bytes, "log byte count drifted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ReplicaId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(round: u64) -> Entry {
        Entry {
            ballot: Ballot::new(round, ReplicaId(1)),
            value: Value::Noop,
        }
    }

    /// An entry whose batch is a command of `op_len` bytes (`round` even:
    /// a no-op, no bytes).
    fn sized(round: u64, op_len: usize) -> Entry {
        if round.is_multiple_of(2) {
            return entry(round);
        }
        let mut b = crate::value::BatchBuilder::with_capacity(64 + op_len);
        b.push(crate::types::ClientId(1), 1, 0, &vec![0; op_len]);
        Entry {
            ballot: Ballot::new(round, ReplicaId(1)),
            value: Value::Batch(b.finish()),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u64, u64, usize),
        Compact(u64),
        CompactBytes(u64, u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..40, 1u64..5, 0usize..100).prop_map(|(s, r, n)| Op::Put(s, r, n)),
            1 => (0u64..40).prop_map(Op::Compact),
            1 => (0u64..2000, 0u64..45).prop_map(|(b, s)| Op::CompactBytes(b, s)),
        ]
    }

    proptest! {
        /// The log agrees with a map model: puts at or above start are
        /// readable, compaction forgets exactly the slots below its point,
        /// compaction by bytes the fewest oldest slots below its limit that
        /// bring the payload within the bound, and the byte count is exact.
        #[test]
        fn log_matches_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut log = Log::new(Slot(0));
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut sizes: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(s, r, n) => {
                        if s >= log.start().0 {
                            let e = sized(r, n);
                            sizes.insert(s, e.value.payload_len() as u64);
                            log.put(Slot(s), e);
                            model.insert(s, r);
                        }
                    }
                    Op::Compact(s) => {
                        log.compact_below(Slot(s));
                        model.retain(|k, _| *k >= s);
                        sizes.retain(|k, _| *k >= s);
                        prop_assert!(log.start() >= Slot(s) || !log.is_empty());
                    }
                    Op::CompactBytes(max, below) => {
                        let start = log.start();
                        log.compact_to_bytes(max, Slot(below));
                        // The model: drop slots from the start while over.
                        let mut at = start.0;
                        while sizes.values().sum::<u64>() > max && at < below && at < log.end().0.max(start.0) {
                            model.remove(&at);
                            sizes.remove(&at);
                            at += 1;
                        }
                        prop_assert_eq!(log.start().0, at.max(start.0));
                    }
                }
                prop_assert_eq!(log.bytes(), sizes.values().sum::<u64>());
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
