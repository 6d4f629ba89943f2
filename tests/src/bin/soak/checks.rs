//! The soak's check of every fast read against its session guarantee.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use engine::core::Slot;
use engine::kv::{KvOp, KvResult};
use engine::sim::linearizability::HistoryOp;

use super::*;

/// Fast reads against their session guarantee: answered at an applied
/// point past every slot the client had seen, with a value the log can
/// give the key below that point.
///
/// A reply's slot is an upper bound on where its command executed, not
/// the slot itself: a retried command answered from the session table
/// carries the slot of the copy that found it there. So the last mutation
/// below `applied` is not known exactly; a value is allowed if it was
/// written by
/// - an acknowledged mutation reported below `applied` that no other such
///   mutation follows in real time (none was invoked after it returned);
/// - an acknowledged mutation reported at or past `applied` but invoked
///   before the read returned (it may have executed below);
/// - an operation of unknown outcome (it may have executed anywhere);
/// - nothing (absent), when no acknowledged mutation is reported below.
pub(super) fn check_fast_reads(history: &[HistoryOp], reads: &[FastReadRecord]) -> Vec<String> {
    struct Key {
        /// Acknowledged mutations by reported slot: (slot, invoke,
        /// returned, value written).
        acked: Vec<(Slot, u64, u64, Option<Bytes>)>,
        /// Running maximum of `invoke` over `acked` in slot order.
        invoke_max: Vec<u64>,
        /// Values that operations of unknown outcome may have written.
        unknown: Vec<Option<Bytes>>,
        /// Where in `acked` each value was written.
        writers: HashMap<Option<Bytes>, Vec<usize>>,
    }
    let mut keys: BTreeMap<&Bytes, Key> = BTreeMap::new();
    for o in history {
        let k = keys.entry(o.op.key()).or_insert_with(|| Key {
            acked: Vec::new(),
            invoke_max: Vec::new(),
            unknown: Vec::new(),
            writers: HashMap::new(),
        });
        let e = Executed {
            op: o.op.clone(),
            slot: o.witness.map(Slot),
            result: o.response.as_ref().map(|(_, r)| r.clone()),
        };
        match (&o.response, e.slot) {
            (Some((returned, _)), Some(slot)) if mutates(&e) => {
                k.acked.push((slot, o.invoke, *returned, written(&o.op)));
            }
            (None, _) if !o.op.is_read() => k.unknown.push(written(&o.op)),
            _ => {}
        }
    }
    for k in keys.values_mut() {
        k.acked.sort_by_key(|a| a.0);
        let mut m = 0;
        k.invoke_max = k
            .acked
            .iter()
            .map(|a| {
                m = m.max(a.1);
                m
            })
            .collect();
        for (i, a) in k.acked.iter().enumerate() {
            k.writers.entry(a.3.clone()).or_default().push(i);
        }
    }
    let mut violations = Vec::new();
    for r in reads {
        if r.session > Slot::ZERO && r.applied <= r.session {
            violations.push(format!(
                "client {} read {:?} at applied {} though it had seen slot {}",
                r.client, r.key, r.applied.0, r.session.0
            ));
            continue;
        }
        let Some(k) = keys.get(&r.key) else {
            if r.value.is_some() {
                violations.push(format!(
                    "client {} read {:?} = {:?}, a key nothing wrote",
                    r.client, r.key, r.value
                ));
            }
            continue;
        };
        let below = k.acked.partition_point(|a| a.0 < r.applied);
        // The latest invocation among the mutations reported below.
        let last_invoke = below.checked_sub(1).map(|i| k.invoke_max[i]);
        let explained = k.unknown.contains(&r.value)
            || (below == 0 && r.value.is_none())
            || k.writers.get(&r.value).is_some_and(|at| {
                at.iter().any(|&i| {
                    let (_, invoke, returned, _) = &k.acked[i];
                    if i < below {
                        last_invoke.is_some_and(|x| *returned > x)
                    } else {
                        *invoke < r.returned
                    }
                })
            });
        if !explained {
            violations.push(format!(
                "client {} read {:?} = {:?} at applied {}: no write that can be the last below it wrote that",
                r.client, r.key, r.value, r.applied.0
            ));
        }
    }
    violations
}

/// Whether an executed operation changed its key.
pub(super) fn mutates(e: &Executed) -> bool {
    matches!(
        (&e.op, &e.result),
        (KvOp::Put { .. } | KvOp::Delete { .. }, _)
            | (KvOp::Cas { .. }, Some(KvResult::Cas(Ok(()))))
    )
}

/// The value an operation leaves if it changes its key.
pub(super) fn written(op: &KvOp) -> Option<Bytes> {
    match op {
        KvOp::Put { value, .. } => Some(value.clone()),
        KvOp::Cas { new, .. } => Some(new.clone()),
        _ => None,
    }
}
