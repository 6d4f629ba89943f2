//! The client's commands in flight, by seq: a ring indexed by `seq -
//! base`, since a session's seqs are handed out one after another and
//! answered roughly in order. Lookups, inserts and removals are O(1) and
//! move no command; a `BTreeMap` moved whole commands within its nodes on
//! every insert and remove (issue 26: a tenth of the client task's
//! instructions in the gate's runtime path). The session's close
//! (`SESSION_CLOSE_SEQ`, 0) sits apart, first in seq order.

use std::collections::VecDeque;

use crate::state_machine::SESSION_CLOSE_SEQ;

/// Commands (any `T`) by seq, in seq order.
#[derive(Debug)]
pub(super) struct InFlight<T> {
    /// The close command, if one is in flight.
    close: Option<T>,
    /// Seq `base + i` at `ring[i]`. Invariant: empty, or both ends are
    /// `Some`.
    ring: VecDeque<Option<T>>,
    base: u64,
    /// `Some` entries in `ring`.
    len: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> InFlight<T> {
        InFlight {
            close: None,
            ring: VecDeque::new(),
            base: 0,
            len: 0,
        }
    }
}

/// Most seqs a ring spans, from its oldest command to its newest: the
/// ring holds a slot (an `Option<T>`) for each. It spans about the calls
/// in flight, unless its oldest command stays unanswered (refused `Busy`
/// again and again, say) while later ones are answered; then the client
/// refuses new calls (`Busy`) until that one is answered or expires (see
/// [`InFlight::has_room_for`]), so the ring stays within this bound (at
/// most ~150 MiB of slots for a client's commands).
pub(super) const SPAN_MAX: u64 = 1 << 20;

impl<T> InFlight<T> {
    pub(super) fn len(&self) -> usize {
        self.len + usize::from(self.close.is_some())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest seq in flight.
    pub(super) fn first_seq(&self) -> Option<u64> {
        if self.close.is_some() {
            Some(SESSION_CLOSE_SEQ)
        } else if self.len > 0 {
            Some(self.base)
        } else {
            None
        }
    }

    /// Whether command `seq` (a fresh one: above every seq in flight)
    /// would keep the ring within `SPAN_MAX`.
    pub(super) fn has_room_for(&self, seq: u64) -> bool {
        self.len == 0 || seq.saturating_sub(self.base) < SPAN_MAX
    }

    /// Adds command `seq`; the one it replaces, if any. Precondition
    /// (asserted): `seq` is not below the oldest command in flight, and
    /// `has_room_for(seq)`.
    pub(super) fn insert(&mut self, seq: u64, value: T) -> Option<T> {
        if seq == SESSION_CLOSE_SEQ {
            return self.close.replace(value);
        }
        if self.len == 0 {
            self.ring.clear();
            self.base = seq;
        }
        assert!(
            seq >= self.base && seq - self.base < SPAN_MAX,
            "seq {seq} out of the ring's span from {}",
            self.base
        );
        let i = (seq - self.base) as usize;
        while self.ring.len() <= i {
            self.ring.push_back(None);
        }
        let old = self.ring[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        debug_assert!(self.ends_taken());
        old
    }

    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        if seq == SESSION_CLOSE_SEQ {
            return self.close.as_mut();
        }
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.ring.get_mut(i)?.as_mut()
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<T> {
        if seq == SESSION_CLOSE_SEQ {
            return self.close.take();
        }
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let v = self.ring.get_mut(i)?.take()?;
        self.len -= 1;
        while self.ring.front().is_some_and(Option::is_none) {
            self.ring.pop_front();
            self.base += 1;
        }
        while self.ring.back().is_some_and(Option::is_none) {
            self.ring.pop_back();
        }
        debug_assert!(self.ends_taken());
        Some(v)
    }

    /// `(seq, command)` in seq order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        self.close.iter().map(|c| (SESSION_CLOSE_SEQ, c)).chain(
            self.ring
                .iter()
                .enumerate()
                .filter_map(move |(i, c)| c.as_ref().map(|c| (base + i as u64, c))),
        )
    }

    /// `(seq, command)` in seq order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        let base = self.base;
        self.close.iter_mut().map(|c| (SESSION_CLOSE_SEQ, c)).chain(
            self.ring
                .iter_mut()
                .enumerate()
                .filter_map(move |(i, c)| c.as_mut().map(|c| (base + i as u64, c))),
        )
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, c)| c)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.iter_mut().map(|(_, c)| c)
    }

    /// Empties it: `(seq, command)` in seq order.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u64, T)> {
        let taken = std::mem::take(self);
        let base = taken.base;
        taken
            .close
            .into_iter()
            .map(|c| (SESSION_CLOSE_SEQ, c))
            .chain(
                taken
                    .ring
                    .into_iter()
                    .enumerate()
                    .filter_map(move |(i, c)| c.map(|c| (base + i as u64, c))),
            )
    }

    /// The invariant's O(1) part: the ring's ends are taken (or it is
    /// empty, with nothing counted).
    fn ends_taken(&self) -> bool {
        self.ring.front().is_none_or(Option::is_some)
            && self.ring.back().is_none_or(Option::is_some)
            && (self.len == 0) == self.ring.is_empty()
    }

    /// The whole invariant (O(span): for tests): the count is right too.
    #[cfg(test)]
    fn check(&self) -> bool {
        self.ends_taken() && self.len == self.ring.iter().filter(|c| c.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert the next fresh seq (or the close, when `close`).
        Insert {
            close: bool,
        },
        Remove(u64),
        Get(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Insert { close: false }),
            1 => Just(Op::Insert { close: true }),
            3 => (0u64..40).prop_map(Op::Remove),
            1 => (0u64..40).prop_map(Op::Get),
        ]
    }

    proptest! {
        /// The same answers, lengths and order as a `BTreeMap` under any
        /// mix of fresh inserts (as a session hands out seqs), a close,
        /// removals in any order and lookups.
        #[test]
        fn behaves_as_an_ordered_map(ops in prop::collection::vec(arb_op(), 0..200)) {
            let mut m = InFlight::default();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Insert { close: true } => {
                        prop_assert_eq!(m.insert(SESSION_CLOSE_SEQ, 0), model.insert(SESSION_CLOSE_SEQ, 0));
                    }
                    Op::Insert { close: false } => {
                        prop_assert_eq!(m.insert(next, next), model.insert(next, next));
                        next += 1;
                    }
                    Op::Remove(k) => {
                        let k = if k == 0 { 0 } else { next.saturating_sub(k) };
                        prop_assert_eq!(m.remove(k), model.remove(&k));
                    }
                    Op::Get(k) => {
                        let k = next.saturating_sub(k);
                        prop_assert_eq!(m.get_mut(k).copied(), model.get(&k).copied());
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert_eq!(m.first_seq(), model.keys().next().copied());
                let got: Vec<(u64, u64)> = m.iter().map(|(k, v)| (k, *v)).collect();
                let want: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(got, want);
                prop_assert!(m.check());
            }
            let drained: Vec<(u64, u64)> = m.drain().collect();
            prop_assert_eq!(drained, model.into_iter().collect::<Vec<_>>());
            prop_assert!(m.is_empty());
        }
    }

    #[test]
    fn room_ends_at_the_span_bound() {
        let mut m = InFlight::default();
        assert!(m.has_room_for(7 + SPAN_MAX));
        m.insert(7, ());
        assert!(m.has_room_for(6 + SPAN_MAX));
        assert!(!m.has_room_for(7 + SPAN_MAX));
        m.remove(7);
        assert!(m.has_room_for(7 + SPAN_MAX));
    }

    #[test]
    #[should_panic(expected = "out of the ring's span")]
    fn a_seq_below_the_oldest_in_flight_is_refused() {
        let mut m = InFlight::default();
        m.insert(5, ());
        m.insert(4, ());
    }
}
