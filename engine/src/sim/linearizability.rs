//! Linearizability of a key-value history (Wing & Gong's search with
//! memoization, as in Lowe's and porcupine's checkers), partitioned by key:
//! each key is an independent register, so each is checked alone.
//!
//! Operations whose outcome is unknown (the client never got an answer)
//! have no response: they may take effect at any point after their
//! invocation, or never, and their result is not checked (Knossos and
//! porcupine treat them the same way).
//!
//! The search is exponential in the number of overlapping operations, and a
//! pipelined workload under partitions overlaps a lot. So each operation may
//! carry a `witness`: its position in some proposed total order (the
//! simulator passes the order in which the replicas executed commands). A
//! witness that is sequentially legal and respects real time proves the
//! history linearizable on its own, whatever produced it; only when it fails
//! does the checker search.

use std::collections::BTreeMap;

use bytes::Bytes;
use rustc_hash::FxHashSet;

use crate::kv::{KvOp, KvResult};

/// One operation of the history. Times are any totally ordered stamps
/// (the simulator uses its event counter, so no two are equal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    pub client: u64,
    pub op: KvOp,
    pub invoke: u64,
    /// `None`: unknown outcome.
    pub response: Option<(u64, KvResult)>,
    /// Position in a proposed linearization (`None`: took no effect, as far
    /// as the proposer knows). Only a hint: it is verified, never trusted.
    pub witness: Option<u64>,
}

/// The first operation that could not be placed, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLinearizable {
    pub key: Bytes,
    pub ops: usize,
    pub detail: String,
}

/// Most search states explored per key before giving up (reported as a
/// failure to decide, never silently passed).
pub const SEARCH_STATES_MAX: usize = 1_000_000;

/// Checks the whole history, key by key.
pub fn check(history: &[HistoryOp]) -> Result<(), NotLinearizable> {
    let mut by_key: BTreeMap<&Bytes, Vec<&HistoryOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.op.key()).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_register(key, &ops)?;
    }
    Ok(())
}

/// Applies `op` to the register `state`; `None` if the recorded result
/// cannot be produced from `state`.
fn step(state: &Option<Bytes>, op: &HistoryOp) -> Option<Option<Bytes>> {
    let result = op.response.as_ref().map(|(_, r)| r);
    let (next, expected) = match &op.op {
        KvOp::Put { value, .. } => (Some(value.clone()), KvResult::Done),
        KvOp::Get { .. } => (state.clone(), KvResult::Value(state.clone())),
        KvOp::Delete { .. } => (None, KvResult::Deleted(state.is_some())),
        KvOp::Cas { expected, new, .. } => {
            if state == expected {
                (Some(new.clone()), KvResult::Cas(Ok(())))
            } else {
                (state.clone(), KvResult::Cas(Err(state.clone())))
            }
        }
    };
    match result {
        Some(r) if *r != expected => None,
        _ => Some(next),
    }
}

struct Search<'a> {
    ops: &'a [&'a HistoryOp],
    words: usize,
    seen: FxHashSet<(Vec<u64>, Option<Bytes>)>,
    states: usize,
}

impl Search<'_> {
    /// Can the not-yet-linearized ops (bits clear in `done`) be ordered
    /// from `state`?
    fn search(
        &mut self,
        done: &mut Vec<u64>,
        state: &Option<Bytes>,
        left_known: usize,
    ) -> Result<bool, ()> {
        if left_known == 0 {
            return Ok(true);
        }
        self.states += 1;
        if self.states > SEARCH_STATES_MAX {
            return Err(());
        }
        if !self.seen.insert((done.clone(), state.clone())) {
            return Ok(false);
        }
        // An op may go next only if it was invoked before every pending
        // known op returned.
        let bound = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_set(done, *i))
            .filter_map(|(_, o)| o.response.as_ref().map(|(t, _)| *t))
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if is_set(done, i) || op.invoke >= bound {
                continue;
            }
            if let Some(next) = step(state, op) {
                set(done, i, true);
                let known = usize::from(op.response.is_some());
                let ok = self.search(done, &next, left_known - known)?;
                set(done, i, false);
                if ok {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

/// Whether the ops with a witness, in witness order, form a legal
/// sequential history that respects real time, and every op that returned
/// is among them.
fn witness_holds(ops: &[&HistoryOp]) -> bool {
    if ops
        .iter()
        .any(|o| o.response.is_some() && o.witness.is_none())
    {
        return false;
    }
    let mut order: Vec<&&HistoryOp> = ops.iter().filter(|o| o.witness.is_some()).collect();
    order.sort_by_key(|o| o.witness);
    let mut state = None;
    // An op placed after another that was invoked after it returned breaks real time.
    let mut invoked_max = 0;
    for op in order {
        invoked_max = invoked_max.max(op.invoke);
        if let Some((t, _)) = &op.response
            && invoked_max > *t
        {
            return false;
        }
        match step(&state, op) {
            Some(next) => state = next,
            None => return false,
        }
    }
    true
}

fn check_register(key: &Bytes, ops: &[&HistoryOp]) -> Result<(), NotLinearizable> {
    if witness_holds(ops) {
        return Ok(());
    }
    let mut sorted: Vec<&HistoryOp> = ops.to_vec();
    sorted.sort_by_key(|o| o.invoke);
    let words = sorted.len().div_ceil(64).max(1);
    let mut search = Search {
        ops: &sorted,
        words,
        seen: FxHashSet::default(),
        states: 0,
    };
    let known = sorted.iter().filter(|o| o.response.is_some()).count();
    let mut done = vec![0u64; search.words];
    match search.search(&mut done, &None, known) {
        Ok(true) => Ok(()),
        Ok(false) => Err(NotLinearizable {
            key: key.clone(),
            ops: sorted.len(),
            detail: describe(&sorted),
        }),
        Err(()) => Err(NotLinearizable {
            key: key.clone(),
            ops: sorted.len(),
            detail: format!("search gave up after {SEARCH_STATES_MAX} states"),
        }),
    }
}

fn describe(ops: &[&HistoryOp]) -> String {
    let mut s = String::new();
    for o in ops.iter().take(40) {
        let resp = match &o.response {
            Some((t, r)) => format!("{t} -> {r:?}"),
            None => "unknown".into(),
        };
        s.push_str(&format!(
            "\n  c{} [{} .. {resp}] {:?}",
            o.client, o.invoke, o.op
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Bytes {
        Bytes::from_static(b"k")
    }
    fn v(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }
    fn put(client: u64, val: &'static str, invoke: u64, resp: Option<u64>) -> HistoryOp {
        HistoryOp {
            client,
            op: KvOp::Put {
                key: k(),
                value: v(val),
            },
            invoke,
            response: resp.map(|t| (t, KvResult::Done)),
            witness: None,
        }
    }
    fn get(client: u64, got: Option<&'static str>, invoke: u64, resp: u64) -> HistoryOp {
        HistoryOp {
            client,
            op: KvOp::Get { key: k() },
            invoke,
            response: Some((resp, KvResult::Value(got.map(v)))),
            witness: None,
        }
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            put(1, "a", 1, Some(2)),
            get(2, Some("a"), 3, 4),
            put(1, "b", 5, Some(6)),
            get(2, Some("b"), 7, 8),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // put(b) overlaps both reads: the order put(a), get=a, put(b), get=b
        // respects every real-time constraint.
        let h = vec![
            put(1, "a", 1, Some(2)),
            put(1, "b", 3, Some(10)),
            get(2, Some("b"), 4, 5),
            get(3, Some("a"), 4, 9),
        ];
        check(&h).unwrap();
    }

    /// Planted bug for the checker: a stale read after a completed write
    /// must be rejected.
    #[test]
    fn stale_read_is_caught() {
        let h = vec![
            put(1, "a", 1, Some(2)),
            put(1, "b", 3, Some(4)),
            get(2, Some("a"), 5, 6),
        ];
        let e = check(&h).unwrap_err();
        assert_eq!(e.key, k());
    }

    /// Planted bug: a value read that nobody wrote.
    #[test]
    fn phantom_value_is_caught() {
        let h = vec![put(1, "a", 1, Some(2)), get(2, Some("z"), 3, 4)];
        assert!(check(&h).is_err());
    }

    /// Planted bug: a write applied twice (lost update order) makes a read
    /// go back in time.
    #[test]
    fn non_monotonic_reads_are_caught() {
        let h = vec![
            put(1, "a", 1, Some(2)),
            put(2, "b", 3, Some(8)),
            get(3, Some("b"), 4, 5),
            get(3, Some("a"), 6, 7),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcome_may_or_may_not_have_happened() {
        // The put of b never answered: a read may see it ...
        let seen = vec![
            put(1, "a", 1, Some(2)),
            put(1, "b", 3, None),
            get(2, Some("b"), 5, 6),
        ];
        check(&seen).unwrap();
        // ... or not.
        let unseen = vec![
            put(1, "a", 1, Some(2)),
            put(1, "b", 3, None),
            get(2, Some("a"), 5, 6),
        ];
        check(&unseen).unwrap();
        // But not before it was invoked.
        let early = vec![
            put(1, "a", 1, Some(2)),
            get(2, Some("b"), 3, 4),
            put(1, "b", 5, None),
        ];
        assert!(check(&early).is_err());
    }

    #[test]
    fn cas_and_delete_follow_the_register() {
        let h = vec![
            HistoryOp {
                client: 1,
                op: KvOp::Cas {
                    key: k(),
                    expected: None,
                    new: v("x"),
                },
                invoke: 1,
                response: Some((2, KvResult::Cas(Ok(())))),
                witness: None,
            },
            HistoryOp {
                client: 2,
                op: KvOp::Cas {
                    key: k(),
                    expected: None,
                    new: v("y"),
                },
                invoke: 3,
                response: Some((4, KvResult::Cas(Err(Some(v("x")))))),
                witness: None,
            },
            HistoryOp {
                client: 2,
                op: KvOp::Delete { key: k() },
                invoke: 5,
                response: Some((6, KvResult::Deleted(true))),
                witness: None,
            },
            get(1, None, 7, 8),
        ];
        check(&h).unwrap();
        let mut bad = h.clone();
        bad[1].response = Some((4, KvResult::Cas(Ok(()))));
        assert!(check(&bad).is_err(), "two successful cas from absent");
    }

    fn with_witness(mut h: Vec<HistoryOp>, order: &[usize]) -> Vec<HistoryOp> {
        for (pos, i) in order.iter().enumerate() {
            h[*i].witness = Some(pos as u64);
        }
        h
    }

    #[test]
    fn a_valid_witness_is_accepted_and_a_wrong_one_falls_back_to_search() {
        let h = vec![
            put(1, "a", 1, Some(2)),
            put(1, "b", 3, Some(10)),
            get(2, Some("b"), 4, 5),
            get(3, Some("a"), 4, 9),
        ];
        let refs: Vec<&HistoryOp> = h.iter().collect();
        assert!(witness_holds(
            &with_witness(h.clone(), &[0, 3, 1, 2])
                .iter()
                .collect::<Vec<_>>()
        ));
        // Sequentially illegal: the read of a after put(b).
        let bad = with_witness(h.clone(), &[0, 1, 3, 2]);
        assert!(!witness_holds(&bad.iter().collect::<Vec<_>>()));
        // The search still finds the real order.
        check(&bad).unwrap();
        assert!(!witness_holds(&refs), "no witness at all");
    }

    /// Planted bug: a witness that orders an op before one that returned
    /// before it was invoked must be refused, even if sequentially legal.
    #[test]
    fn a_witness_that_breaks_real_time_is_refused() {
        // put(a) returns at 2; put(b) is invoked at 3. Witness: b, a, then get=a.
        let h = vec![
            put(1, "a", 1, Some(2)),
            put(2, "b", 3, Some(4)),
            get(3, Some("a"), 5, 6),
        ];
        let w = with_witness(h, &[1, 0, 2]);
        assert!(!witness_holds(&w.iter().collect::<Vec<_>>()));
        assert!(check(&w).is_err(), "the read of a after b is a stale read");
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![put(1, "a", 1, Some(2))];
        h.push(HistoryOp {
            client: 2,
            op: KvOp::Get { key: v("other") },
            invoke: 3,
            response: Some((4, KvResult::Value(None))),
            witness: None,
        });
        check(&h).unwrap();
    }
}
