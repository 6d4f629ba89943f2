//! `engine::kv`: the example application, a key-value store with put, get,
//! delete and compare-and-swap, and the simulator's and the lab's workload.
//!
//! Operation encoding (first byte is the tag, lengths little-endian u32):
//! - put:    `1, klen, key, value`
//! - get:    `2, key`
//! - delete: `3, key`
//! - cas:    `4, klen, key, has_expected (0|1), [elen, expected], new`
//!
//! Result encoding: `0` done, `1 value` found, `2` not found, `3` deleted,
//! `4` absent, `5` swapped, `6 current` mismatch (present), `7` mismatch
//! (absent), `255 reason` invalid.

mod store;
mod table;

pub use store::KvStore;

use bytes::{BufMut, Bytes, BytesMut};

use crate::state_machine::Reader;

/// A key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Get {
        key: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Sets `key` to `new` if its current value is `expected` (`None`: absent).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvResult {
    /// A put completed.
    Done,
    /// A get's answer.
    Value(Option<Bytes>),
    /// A delete's answer: whether the key existed.
    Deleted(bool),
    /// A cas's answer: swapped, or the current value that did not match.
    Cas(Result<(), Option<Bytes>>),
    /// The operation could not be decoded.
    Invalid(String),
}

const OP_PUT: u8 = 1;
const OP_GET: u8 = 2;
const OP_DELETE: u8 = 3;
const OP_CAS: u8 = 4;

impl KvOp {
    pub fn key(&self) -> &Bytes {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. } => key,
        }
    }

    /// Whether the operation leaves the state unchanged.
    pub fn is_read(&self) -> bool {
        matches!(self, KvOp::Get { .. })
    }

    /// The encoded operation's length (what `encode` allocates at once).
    pub fn encoded_len(&self) -> usize {
        match self {
            KvOp::Put { key, value } => 1 + 4 + key.len() + value.len(),
            KvOp::Get { key } | KvOp::Delete { key } => 1 + key.len(),
            KvOp::Cas { key, expected, new } => {
                1 + 4 + key.len() + 1 + expected.as_ref().map_or(0, |e| 4 + e.len()) + new.len()
            }
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        match self {
            KvOp::Put { key, value } => {
                b.put_u8(OP_PUT);
                put_len_prefixed(&mut b, key);
                b.put_slice(value);
            }
            KvOp::Get { key } => {
                b.put_u8(OP_GET);
                b.put_slice(key);
            }
            KvOp::Delete { key } => {
                b.put_u8(OP_DELETE);
                b.put_slice(key);
            }
            KvOp::Cas { key, expected, new } => {
                b.put_u8(OP_CAS);
                put_len_prefixed(&mut b, key);
                match expected {
                    Some(e) => {
                        b.put_u8(1);
                        put_len_prefixed(&mut b, e);
                    }
                    None => b.put_u8(0),
                }
                b.put_slice(new);
            }
        }
        debug_assert_eq!(b.len(), self.encoded_len());
        b.freeze()
    }

    /// Decodes an operation; `Err` names what is wrong.
    pub fn decode(op: &[u8]) -> Result<KvOp, &'static str> {
        let own = Bytes::copy_from_slice;
        Ok(match OpRef::decode(op)? {
            OpRef::Put { key, value } => KvOp::Put {
                key: own(key),
                value: own(value),
            },
            OpRef::Get { key } => KvOp::Get { key: own(key) },
            OpRef::Delete { key } => KvOp::Delete { key: own(key) },
            OpRef::Cas { key, expected, new } => KvOp::Cas {
                key: own(key),
                expected: expected.map(own),
                new: own(new),
            },
        })
    }

    fn as_ref(&self) -> OpRef<'_> {
        match self {
            KvOp::Put { key, value } => OpRef::Put { key, value },
            KvOp::Get { key } => OpRef::Get { key },
            KvOp::Delete { key } => OpRef::Delete { key },
            KvOp::Cas { key, expected, new } => OpRef::Cas {
                key,
                expected: expected.as_deref(),
                new,
            },
        }
    }
}

/// An operation decoded in place: slices of the command's bytes. The store
/// applies committed commands through it, so applying copies a key only
/// when it is new and a value only into the slot it overwrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: &'a [u8],
    },
}

impl<'a> OpRef<'a> {
    fn decode(op: &'a [u8]) -> Result<OpRef<'a>, &'static str> {
        let (&tag, rest) = op.split_first().ok_or("empty operation")?;
        let mut r = Reader(rest);
        let bad = |_| "truncated operation";
        Ok(match tag {
            OP_PUT => {
                let klen = r.u32().map_err(bad)?;
                let key = r.take(u64::from(klen)).map_err(bad)?;
                OpRef::Put { key, value: r.0 }
            }
            OP_GET => OpRef::Get { key: rest },
            OP_DELETE => OpRef::Delete { key: rest },
            OP_CAS => {
                let klen = r.u32().map_err(bad)?;
                let key = r.take(u64::from(klen)).map_err(bad)?;
                let expected = match r.take(1).map_err(bad)?[0] {
                    0 => None,
                    1 => {
                        let elen = r.u32().map_err(bad)?;
                        Some(r.take(u64::from(elen)).map_err(bad)?)
                    }
                    _ => return Err("bad cas flag"),
                };
                OpRef::Cas {
                    key,
                    expected,
                    new: r.0,
                }
            }
            _ => return Err("unknown operation"),
        })
    }
}

fn put_len_prefixed(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32_le(u32::try_from(bytes.len()).expect("key or value over 4 GiB"));
    b.put_slice(bytes);
}

impl KvResult {
    pub fn encode_into(&self, b: &mut BytesMut) {
        match self {
            KvResult::Done => b.put_u8(R_DONE),
            KvResult::Value(Some(v)) => {
                b.put_u8(R_FOUND);
                b.put_slice(v);
            }
            KvResult::Value(None) => b.put_u8(R_NOT_FOUND),
            KvResult::Deleted(true) => b.put_u8(R_DELETED),
            KvResult::Deleted(false) => b.put_u8(R_ABSENT),
            KvResult::Cas(Ok(())) => b.put_u8(R_SWAPPED),
            KvResult::Cas(Err(Some(cur))) => {
                b.put_u8(R_MISMATCH);
                b.put_slice(cur);
            }
            KvResult::Cas(Err(None)) => b.put_u8(R_MISMATCH_ABSENT),
            KvResult::Invalid(reason) => invalid(reason, b),
        }
    }

    pub fn decode(r: &[u8]) -> Result<KvResult, &'static str> {
        let (&tag, rest) = r.split_first().ok_or("empty result")?;
        let rest = || Bytes::copy_from_slice(rest);
        Ok(match tag {
            R_DONE => KvResult::Done,
            R_FOUND => KvResult::Value(Some(rest())),
            R_NOT_FOUND => KvResult::Value(None),
            R_DELETED => KvResult::Deleted(true),
            R_ABSENT => KvResult::Deleted(false),
            R_SWAPPED => KvResult::Cas(Ok(())),
            R_MISMATCH => KvResult::Cas(Err(Some(rest()))),
            R_MISMATCH_ABSENT => KvResult::Cas(Err(None)),
            R_INVALID => KvResult::Invalid(String::from_utf8_lossy(&rest()).into_owned()),
            _ => return Err("unknown result"),
        })
    }
}

/// A stored value keeps its allocation across overwrites unless it has
/// this many more bytes than the new value needs (then it is reallocated,
/// so one large value once does not pin its size forever).
const VALUE_SLACK_BYTES_MAX: usize = 256;

/// Result tags (see the module documentation).
const R_DONE: u8 = 0;
const R_FOUND: u8 = 1;
const R_NOT_FOUND: u8 = 2;
const R_DELETED: u8 = 3;
const R_ABSENT: u8 = 4;
const R_SWAPPED: u8 = 5;
const R_MISMATCH: u8 = 6;
const R_MISMATCH_ABSENT: u8 = 7;
const R_INVALID: u8 = 255;

fn invalid(reason: &str, out: &mut BytesMut) {
    out.put_u8(R_INVALID);
    out.put_slice(reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::store::*;
    use super::table::*;
    use super::*;
    use crate::state_machine::{SnapshotError, StateMachine};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The store without prefetch hints (`prefetches` left at its default).
    struct NoHints(KvStore);

    impl StateMachine for NoHints {
        fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
            self.0.apply(op, result)
        }
        fn query(&self, query: &[u8], result: &mut BytesMut) {
            self.0.query(query, result)
        }
        fn snapshot(&self, out: &mut Vec<u8>) {
            self.0.snapshot(out)
        }
        fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
            self.0.restore(snapshot)
        }
    }

    /// The executor's prefetch hints (a store over `PREFETCH_KEYS_MIN`
    /// keys) change nothing: the same batches, malformed operations among
    /// them, give the same replies and the same state with hints as
    /// without.
    #[test]
    fn prefetch_hints_change_no_result() {
        use crate::core::{Apply, BatchBuilder, ClientId, Slot, Value};
        use crate::state_machine::{Executor, SessionLimits};
        let limits = SessionLimits::default();
        let mut with = Executor::new(KvStore::new(), limits, Slot(0));
        let mut without = Executor::new(NoHints(KvStore::new()), limits, Slot(0));
        let keys = (PREFETCH_KEYS_MIN * 2) as u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut seq = [0u64; 8];
        let (mut replies_with, mut replies_without) = (Vec::new(), Vec::new());
        let mut hinted = false;
        for slot in 0..80u64 {
            let mut b = BatchBuilder::with_capacity(1 << 16);
            for i in 0..1_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = Bytes::from(format!("k{}", x % keys));
                let op = match (slot * 1_000 + i) % 11 {
                    // Malformed: truncated, empty, an unknown tag.
                    0 => Bytes::from_static(&[OP_PUT, 9, 0]),
                    1 => Bytes::new(),
                    2 => Bytes::from_static(&[0xee, 1, 2]),
                    3 => KvOp::Get { key }.encode(),
                    4 => KvOp::Delete { key }.encode(),
                    5 => KvOp::Cas {
                        key,
                        expected: None,
                        new: Bytes::from_static(b"c"),
                    }
                    .encode(),
                    _ => KvOp::Put {
                        key,
                        value: Bytes::from(vec![i as u8; 64]),
                    }
                    .encode(),
                };
                let c = (i % 8) as usize;
                seq[c] += 1;
                b.push(ClientId(c as u64 + 1), seq[c], seq[c], &op);
            }
            let a = Apply {
                slot: Slot(slot),
                value: Value::Batch(b.finish()),
            };
            hinted |= with.state_machine().prefetches();
            with.apply(&a, &mut replies_with);
            without.apply(&a, &mut replies_without);
        }
        assert!(hinted, "the store never reached the hints' threshold");
        assert_eq!(replies_with.len(), replies_without.len());
        for (a, b) in replies_with.iter().zip(&replies_without) {
            assert_eq!((a.client, a.seq), (b.client, b.seq));
            assert_eq!(a.result, b.result);
        }
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        with.snapshot(&mut sa);
        without.snapshot(&mut sb);
        assert_eq!(sa, sb);
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(0u8..4, 0..3).prop_map(Bytes::from)
    }

    fn arb_op() -> impl Strategy<Value = KvOp> {
        prop_oneof![
            (arb_bytes(), arb_bytes()).prop_map(|(key, value)| KvOp::Put { key, value }),
            arb_bytes().prop_map(|key| KvOp::Get { key }),
            arb_bytes().prop_map(|key| KvOp::Delete { key }),
            (arb_bytes(), prop::option::of(arb_bytes()), arb_bytes())
                .prop_map(|(key, expected, new)| KvOp::Cas { key, expected, new }),
        ]
    }

    /// The reference model: a BTreeMap.
    fn model_execute(m: &mut BTreeMap<Bytes, Bytes>, op: &KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                m.insert(key.clone(), value.clone());
                KvResult::Done
            }
            KvOp::Get { key } => KvResult::Value(m.get(key).cloned()),
            KvOp::Delete { key } => KvResult::Deleted(m.remove(key).is_some()),
            KvOp::Cas { key, expected, new } => {
                if m.get(key) == expected.as_ref() {
                    m.insert(key.clone(), new.clone());
                    KvResult::Cas(Ok(()))
                } else {
                    KvResult::Cas(Err(m.get(key).cloned()))
                }
            }
        }
    }

    proptest! {
        /// Ops and results survive encode/decode.
        #[test]
        fn codec_round_trips(op in arb_op()) {
            prop_assert_eq!(KvOp::decode(&op.encode()).unwrap(), op);
        }

        /// Arbitrary bytes never panic the decoders or the store.
        #[test]
        fn arbitrary_bytes_are_handled(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = KvOp::decode(&bytes);
            let _ = KvResult::decode(&bytes);
            let mut kv = KvStore::new();
            let mut out = BytesMut::new();
            kv.apply(&bytes, &mut out);
            prop_assert!(KvResult::decode(&out).is_ok());
        }

        /// The store agrees with the model on every result, through the
        /// byte-level state machine interface, and snapshots restore it exactly.
        #[test]
        fn store_matches_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut kv = KvStore::new();
            let mut model = BTreeMap::new();
            for op in &ops {
                let mut out = BytesMut::new();
                kv.apply(&op.encode(), &mut out);
                prop_assert_eq!(KvResult::decode(&out).unwrap(), model_execute(&mut model, op));
                if let KvOp::Get { .. } = op {
                    let mut q = BytesMut::new();
                    kv.query(&op.encode(), &mut q);
                    prop_assert_eq!(q, out);
                }
            }
            let owned = |(k, v): (&[u8], &[u8])| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
            let sorted: Vec<_> = kv.sorted().into_iter().map(owned).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(&sorted, &expected);
            let mut snap = vec![];
            kv.snapshot(&mut snap);
            let mut restored = KvStore::new();
            restored.restore(&snap).unwrap();
            let again: Vec<_> = restored.sorted().into_iter().map(owned).collect();
            prop_assert_eq!(again, expected);
        }
    }

    #[test]
    fn result_codec_round_trips() {
        for r in [
            KvResult::Done,
            KvResult::Value(Some(Bytes::from_static(b"v"))),
            KvResult::Value(None),
            KvResult::Deleted(true),
            KvResult::Deleted(false),
            KvResult::Cas(Ok(())),
            KvResult::Cas(Err(Some(Bytes::from_static(b"c")))),
            KvResult::Cas(Err(None)),
            KvResult::Invalid("x".into()),
        ] {
            let mut b = BytesMut::new();
            r.encode_into(&mut b);
            assert_eq!(KvResult::decode(&b).unwrap(), r);
        }
    }

    /// An overwrite reuses the stored value's allocation, unless that is
    /// much larger than the new value (then the memory is given back).
    #[test]
    fn overwrites_reuse_the_value_allocation_within_the_slack() {
        let mut kv = KvStore::new();
        let mut out = BytesMut::new();
        let put = |k: &[u8], v: &[u8]| {
            KvOp::Put {
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
            }
            .encode()
        };
        kv.apply(&put(b"k", &[1; 64]), &mut out);
        let first = kv.get(b"k").unwrap().as_ptr();
        kv.apply(&put(b"k", &[2; 60]), &mut out);
        assert_eq!(kv.get(b"k").unwrap().as_ptr(), first, "same allocation");
        assert_eq!(kv.get(b"k"), Some(&[2u8; 60][..]));
        kv.apply(&put(b"k", &[3; 10_000]), &mut out);
        kv.apply(&put(b"k", &[4; 8]), &mut out);
        let v = &kv.entry(hash_key(b"k"), b"k").expect("present").1;
        assert_eq!(v.as_slice(), &[4u8; 8][..]);
        assert!(
            v.capacity() <= 8 + VALUE_SLACK_BYTES_MAX,
            "capacity {}",
            v.capacity()
        );
        assert_eq!(&out[..], &[R_DONE; 4][..]);
    }

    proptest! {
        /// The prefix sort orders keys exactly as comparing them does.
        #[test]
        fn sorted_lists_keys_in_byte_order(
            keys in prop::collection::btree_set(prop::collection::vec(0u8..3, 0..20), 0..40)
        ) {
            let mut kv = KvStore::new();
            for k in &keys {
                kv.set(k, b"v");
            }
            let listed: Vec<&[u8]> = kv.sorted().into_iter().map(|(k, _)| k).collect();
            let expected: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            prop_assert_eq!(listed, expected);
        }
    }

    /// The keys and values of a snapshot, in its order.
    fn snapshot_entries(snap: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut r = Reader(snap);
        let n = r.u64().unwrap();
        let mut v = Vec::new();
        for _ in 0..n {
            let klen = r.u64().unwrap();
            let k = r.take(klen).unwrap().to_vec();
            let vlen = r.u64().unwrap();
            v.push((k, r.take(vlen).unwrap().to_vec()));
        }
        assert!(r.0.is_empty(), "trailing bytes");
        v
    }

    /// Entries in the snapshot order: by `order_of` their hash, then key.
    fn in_snapshot_order(entries: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let at = |k: &[u8]| (order_of(hash_key(k)), k.to_vec());
        entries.windows(2).all(|w| at(&w[0].0) < at(&w[1].0))
    }

    proptest! {
        /// A snapshot depends on the store's contents alone: stores that
        /// came to hold the same entries by different histories (another
        /// order, keys put and deleted, a restore) write the same bytes,
        /// in the snapshot order, each entry once.
        #[test]
        fn snapshots_depend_on_the_keys_alone(
            keys in prop::collection::btree_set(0u32..100_000, 0..3000),
            extra in prop::collection::vec(100_000u32..200_000, 0..500),
        ) {
            let key = |k: u32| format!("key-{k}").into_bytes();
            let mut a = KvStore::new();
            for &k in &keys {
                a.set(&key(k), &k.to_le_bytes());
            }
            let mut b = KvStore::new();
            for &k in &extra {
                b.set(&key(k), b"gone");
            }
            for &k in keys.iter().rev() {
                b.set(&key(k), b"first");
                b.set(&key(k), &k.to_le_bytes());
            }
            for &k in &extra {
                b.remove(&key(k));
            }
            let (mut sa, mut sb, mut sc) = (Vec::new(), Vec::new(), Vec::new());
            a.snapshot(&mut sa);
            b.snapshot(&mut sb);
            let mut c = KvStore::new();
            c.restore(&sa).unwrap();
            c.check_invariants();
            c.snapshot(&mut sc);
            prop_assert!(sa == sb, "another history, another snapshot");
            prop_assert!(sa == sc, "a restored store wrote another snapshot");
            let listed = snapshot_entries(&sa);
            prop_assert!(in_snapshot_order(&listed));
            let mut expected: Vec<(Vec<u8>, Vec<u8>)> =
                keys.iter().map(|&k| (key(k), k.to_le_bytes().to_vec())).collect();
            let mut got = listed.clone();
            expected.sort();
            got.sort();
            prop_assert_eq!(got, expected);
        }
    }

    /// A store restored from a snapshot (its entries in hash order) has
    /// the shape of one built by puts: no bucket chained, about as many
    /// buckets. Inserted in hash order one split at a time, the directory
    /// hit its bound and 86 buckets chained at 100,000 keys.
    #[test]
    fn a_restored_store_chains_no_bucket() {
        let mut kv = KvStore::new();
        for k in 0..100_000u32 {
            kv.set(format!("key-{k}").as_bytes(), &k.to_le_bytes());
        }
        let mut snap = Vec::new();
        kv.snapshot(&mut snap);
        let mut back = KvStore::new();
        back.restore(&snap).unwrap();
        back.check_invariants();
        let chained = back.buckets.iter().filter(|b| b.more.is_some()).count();
        assert_eq!(chained, 0, "chained buckets after a restore");
        let (built, restored) = (kv.buckets.len(), back.buckets.len());
        assert!(
            restored <= 2 * built,
            "{restored} buckets restored for {built} built"
        );
        // Built in hash order without the up-front directory, it chains:
        // what this test guards against.
        let mut slow = KvStore::new();
        for (k, v) in snapshot_entries(&snap) {
            slow.insert_new(hash_key(&k), &k, &v);
        }
        slow.check_invariants();
        assert!(
            slow.buckets.iter().any(|b| b.more.is_some()),
            "hash order without the directory sized up front chains (the hazard)"
        );
        let mut again = Vec::new();
        back.snapshot(&mut again);
        assert!(again == snap, "a restored store writes its snapshot again");
    }

    /// A bucket of depth 0 given three bucketfuls of keys (each key its
    /// own value), as one that cannot split holds them: chained.
    fn chained_bucket() -> (Bucket, Vec<Vec<u8>>) {
        let mut b = Bucket::new(0);
        let keys: Vec<Vec<u8>> = (0..3 * BUCKET_SLOTS)
            .map(|i| format!("k{i}").into_bytes())
            .collect();
        for k in &keys {
            b.insert(hash_key(k), (Key::from_slice(k), Val::from_slice(k)));
        }
        (b, keys)
    }

    /// A chained bucket (one that could not split) is written whole, in
    /// the snapshot order.
    #[test]
    fn a_chained_bucket_is_written_in_order() {
        let (b, keys) = chained_bucket();
        assert!(b.more.is_some(), "chained");
        let mut out = Vec::new();
        FrozenKv {
            buckets: vec![Arc::new(b)],
        }
        .write_into(&mut out);
        let listed = snapshot_entries(&out);
        assert!(in_snapshot_order(&listed));
        assert_eq!(listed.len(), keys.len());
        assert!(listed.iter().all(|(k, v)| k == v));
    }

    /// An operation over `keys` distinct keys, by number.
    fn numbered_op(kind: u8, key: u32, value: u32) -> Bytes {
        let key = Bytes::from(format!("key-{key}"));
        let value = Bytes::from(format!("value-{value}"));
        match kind % 8 {
            0..=4 => KvOp::Put { key, value },
            5 => KvOp::Delete { key },
            6 => KvOp::Get { key },
            _ => KvOp::Cas {
                key,
                expected: None,
                new: value,
            },
        }
        .encode()
    }

    proptest! {
        /// A frozen copy writes the snapshot of the moment it was frozen,
        /// whatever the store does after (buckets split, values
        /// overwritten, keys deleted), and the directory stays sound.
        #[test]
        fn a_frozen_copy_writes_the_state_it_was_frozen_at(
            ops in prop::collection::vec((any::<u8>(), 0u32..3000, any::<u32>()), 1..4000),
            freezes in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
        ) {
            let mut at: Vec<usize> = freezes.iter().map(|i| i.index(ops.len())).collect();
            at.sort_unstable();
            let mut kv = KvStore::new();
            let mut frozen = Vec::new();
            let mut out = BytesMut::new();
            for (i, &(kind, key, value)) in ops.iter().enumerate() {
                for _ in at.iter().filter(|&&a| a == i) {
                    let mut now = Vec::new();
                    kv.snapshot(&mut now);
                    frozen.push((kv.freeze(), now));
                }
                kv.apply(&numbered_op(kind, key, value), &mut out);
                out.clear();
            }
            kv.check_invariants();
            for (f, expected) in frozen {
                let mut written = Vec::new();
                f.write(&mut written);
                prop_assert!(written == expected, "a frozen copy changed");
            }
            // And the live store restores from its own snapshot.
            let mut snap = Vec::new();
            kv.snapshot(&mut snap);
            let mut back = KvStore::new();
            back.restore(&snap).unwrap();
            back.check_invariants();
            prop_assert_eq!(back.sorted(), kv.sorted());
        }
    }

    /// A write after a freeze copies the one bucket it changes; the rest
    /// stay shared with the frozen copy.
    #[test]
    fn a_write_after_a_freeze_copies_one_bucket() {
        let mut kv = KvStore::new();
        for k in 0..10_000 {
            kv.set(format!("key-{k}").as_bytes(), b"v");
        }
        kv.check_invariants();
        assert!(kv.buckets.len() > 300, "{} buckets", kv.buckets.len());
        assert!(
            kv.buckets.iter().all(|b| b.more.is_none()),
            "a bucket chained"
        );
        // A clone shares the buckets as a frozen copy does.
        let copy = kv.clone();
        let frozen = &copy.buckets;
        let shared = |kv: &KvStore| {
            kv.buckets
                .iter()
                .zip(frozen)
                .filter(|(a, b)| Arc::ptr_eq(a, b))
                .count()
        };
        assert_eq!(shared(&kv), frozen.len());
        kv.set(b"key-17", b"w");
        assert_eq!(shared(&kv), frozen.len() - 1);
        kv.set(b"key-17", b"x");
        assert_eq!(shared(&kv), frozen.len() - 1, "copied once");
        assert!(!kv.remove(b"absent"));
        kv.answer_get(b"key-18", &mut BytesMut::new());
        assert_eq!(shared(&kv), frozen.len() - 1, "reads copy nothing");
        kv.check_invariants();
        // Neither sees the other's writes, whichever writes first.
        assert_eq!(copy.get(b"key-17"), Some(&b"v"[..]));
        let mut copy = copy;
        copy.set(b"key-18", b"y");
        assert_eq!(kv.get(b"key-18"), Some(&b"v"[..]));
        assert_eq!(copy.get(b"key-18"), Some(&b"y"[..]));
        copy.check_invariants();
        kv.check_invariants();
    }

    /// A full bucket that cannot split (its directory at its bounds)
    /// chains another: every entry stays findable, removable and listed.
    #[test]
    fn a_full_bucket_chains_and_every_entry_stays_reachable() {
        let (mut b, keys) = chained_bucket();
        assert_eq!(b.len as usize, BUCKET_SLOTS);
        assert!(
            b.more.as_ref().is_some_and(|m| m.more.is_some()),
            "two links chained"
        );
        assert_eq!(b.count(), keys.len());
        assert_eq!(b.iter().count(), keys.len());
        for k in &keys {
            assert!(b.find(hash_key(k), k).is_some());
        }
        let last = &keys[keys.len() - 1];
        b.find_mut(hash_key(last), last).unwrap().1 = Val::from_slice(b"w");
        assert_eq!(&b.find(hash_key(last), last).unwrap().1[..], b"w");
        for k in keys.iter().step_by(2) {
            assert!(b.remove(hash_key(k), k).is_some());
            assert!(b.find(hash_key(k), k).is_none());
        }
        assert_eq!(b.count(), keys.len() / 2);
        // A removed slot of the first link is used again before the chain.
        let again = b"again".to_vec();
        b.insert(hash_key(&again), (Key::from_slice(&again), Val::new()));
        assert_eq!(b.len as usize, BUCKET_SLOTS / 2 + 1);
    }

    #[test]
    fn bad_snapshots_are_refused() {
        let mut kv = KvStore::new();
        kv.execute(KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        });
        let mut snap = vec![];
        kv.snapshot(&mut snap);
        let mut extra = snap.clone();
        extra.push(0);
        assert_eq!(
            KvStore::new().restore(&extra),
            Err(SnapshotError("trailing bytes"))
        );
        assert_eq!(
            KvStore::new().restore(&snap[..snap.len() - 1]),
            Err(SnapshotError("truncated"))
        );
    }
}
