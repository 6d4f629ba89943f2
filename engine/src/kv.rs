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

use bytes::{BufMut, Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::state_machine::{Reader, SnapshotError, StateMachine};

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

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
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
        b.freeze()
    }

    /// Decodes an operation; `Err` names what is wrong.
    pub fn decode(op: &[u8]) -> Result<KvOp, &'static str> {
        let (&tag, rest) = op.split_first().ok_or("empty operation")?;
        let mut r = Reader(rest);
        let bad = |_| "truncated operation";
        Ok(match tag {
            OP_PUT => {
                let klen = r.u32().map_err(bad)?;
                let key = r.take(u64::from(klen)).map_err(bad)?;
                KvOp::Put {
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(r.0),
                }
            }
            OP_GET => KvOp::Get {
                key: Bytes::copy_from_slice(rest),
            },
            OP_DELETE => KvOp::Delete {
                key: Bytes::copy_from_slice(rest),
            },
            OP_CAS => {
                let klen = r.u32().map_err(bad)?;
                let key = Bytes::copy_from_slice(r.take(u64::from(klen)).map_err(bad)?);
                let expected = match r.take(1).map_err(bad)?[0] {
                    0 => None,
                    1 => {
                        let elen = r.u32().map_err(bad)?;
                        Some(Bytes::copy_from_slice(
                            r.take(u64::from(elen)).map_err(bad)?,
                        ))
                    }
                    _ => return Err("bad cas flag"),
                };
                KvOp::Cas {
                    key,
                    expected,
                    new: Bytes::copy_from_slice(r.0),
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
            KvResult::Done => b.put_u8(0),
            KvResult::Value(Some(v)) => {
                b.put_u8(1);
                b.put_slice(v);
            }
            KvResult::Value(None) => b.put_u8(2),
            KvResult::Deleted(true) => b.put_u8(3),
            KvResult::Deleted(false) => b.put_u8(4),
            KvResult::Cas(Ok(())) => b.put_u8(5),
            KvResult::Cas(Err(Some(cur))) => {
                b.put_u8(6);
                b.put_slice(cur);
            }
            KvResult::Cas(Err(None)) => b.put_u8(7),
            KvResult::Invalid(reason) => {
                b.put_u8(255);
                b.put_slice(reason.as_bytes());
            }
        }
    }

    pub fn decode(r: &[u8]) -> Result<KvResult, &'static str> {
        let (&tag, rest) = r.split_first().ok_or("empty result")?;
        let rest = || Bytes::copy_from_slice(rest);
        Ok(match tag {
            0 => KvResult::Done,
            1 => KvResult::Value(Some(rest())),
            2 => KvResult::Value(None),
            3 => KvResult::Deleted(true),
            4 => KvResult::Deleted(false),
            5 => KvResult::Cas(Ok(())),
            6 => KvResult::Cas(Err(Some(rest()))),
            7 => KvResult::Cas(Err(None)),
            255 => KvResult::Invalid(String::from_utf8_lossy(&rest()).into_owned()),
            _ => return Err("unknown result"),
        })
    }
}

/// The key-value store.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    map: FxHashMap<Bytes, Bytes>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Executes a decoded operation.
    pub fn execute(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                self.map.insert(key, value);
                KvResult::Done
            }
            KvOp::Get { key } => KvResult::Value(self.map.get(&key).cloned()),
            KvOp::Delete { key } => KvResult::Deleted(self.map.remove(&key).is_some()),
            KvOp::Cas { key, expected, new } => {
                let current = self.map.get(&key);
                if current == expected.as_ref() {
                    self.map.insert(key, new);
                    KvResult::Cas(Ok(()))
                } else {
                    KvResult::Cas(Err(current.cloned()))
                }
            }
        }
    }

    /// Entries sorted by key (the canonical order of snapshots).
    pub fn sorted(&self) -> Vec<(&Bytes, &Bytes)> {
        let mut v: Vec<_> = self.map.iter().collect();
        v.sort_unstable();
        v
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
        let r = match KvOp::decode(op) {
            Ok(op) => self.execute(op),
            Err(e) => KvResult::Invalid(e.to_string()),
        };
        r.encode_into(result);
    }

    fn query(&self, query: &[u8], result: &mut BytesMut) {
        let r = match KvOp::decode(query) {
            Ok(KvOp::Get { key }) => KvResult::Value(self.map.get(&key).cloned()),
            Ok(_) => KvResult::Invalid("only get is a query".into()),
            Err(e) => KvResult::Invalid(e.to_string()),
        };
        r.encode_into(result);
    }

    fn snapshot(&self, out: &mut Vec<u8>) {
        let entries = self.sorted();
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader(snapshot);
        let n = r.u64()?;
        let mut map = FxHashMap::default();
        for _ in 0..n {
            let klen = r.u64()?;
            let k = Bytes::copy_from_slice(r.take(klen)?);
            let vlen = r.u64()?;
            let v = Bytes::copy_from_slice(r.take(vlen)?);
            if map.insert(k, v).is_some() {
                return Err(SnapshotError("duplicate key"));
            }
        }
        if !r.0.is_empty() {
            return Err(SnapshotError("trailing bytes"));
        }
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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
            let sorted: Vec<_> = kv.sorted().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(&sorted, &expected);
            let mut snap = vec![];
            kv.snapshot(&mut snap);
            let mut restored = KvStore::new();
            restored.restore(&snap).unwrap();
            let again: Vec<_> = restored.sorted().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
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
