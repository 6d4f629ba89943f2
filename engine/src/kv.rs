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

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

use crate::state_machine::{Frozen, Reader, SnapshotError, StateMachine};

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

type Key = smallvec::SmallVec<[u8; 16]>;
type Val = smallvec::SmallVec<[u8; 64]>;
type Entry = (Key, Val);

/// Entries in a bucket: a full bucket splits in two before it takes
/// another. A frozen copy's first write to a bucket copies that bucket:
/// this bounds the copy (about a microsecond at 64-byte values), whatever
/// the store's size.
const BUCKET_SLOTS: usize = 32;

/// The directory never holds more than this many entries per bucket: keys
/// whose hashes agree on every directory bit (a flood of colliding keys)
/// stop splitting, and a full bucket that cannot split refuses nothing:
/// it chains an overflow bucket (`Bucket::more`).
const DIR_ENTRIES_PER_BUCKET_MAX: usize = 64;

/// Directory bits are 32 (`dir_bits`): the directory stops there.
const DIR_DEPTH_MAX: u32 = 32;

/// A key's hash.
fn hash_key(key: &[u8]) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// The directory's view of a hash: the high half of a multiplicative mix,
/// so every bit depends on the whole hash.
fn dir_bits(h: u64) -> usize {
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

/// An occupied slot's tag: the hash's top 7 bits, high bit set (0 is an
/// empty slot).
fn tag_of(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

/// A bucket: the entries whose directory bits end in its pattern, in
/// slots found by their tags. The tags share the first cache line with
/// the header, so a lookup touches that line and the entry's.
#[derive(Debug)]
#[repr(C, align(64))]
struct Bucket {
    tags: [u8; BUCKET_SLOTS],
    /// How many low directory bits its entries share (its local depth).
    depth: u32,
    len: u32,
    /// Where entries go when this bucket is full and cannot split (the
    /// directory is at its bounds): a chain, so no put is ever refused.
    more: Option<Box<Bucket>>,
    entries: [Option<Entry>; BUCKET_SLOTS],
}

/// A bucket's copy (the first write after a freeze): keys and values by
/// `from_slice`, a `memcpy` each; smallvec's own `clone` collects them a
/// byte at a time.
impl Clone for Bucket {
    fn clone(&self) -> Bucket {
        Bucket {
            tags: self.tags,
            depth: self.depth,
            len: self.len,
            more: self.more.clone(),
            entries: std::array::from_fn(|i| self.entries[i].as_ref().map(copy_entry)),
        }
    }
}

fn copy_entry((k, v): &Entry) -> Entry {
    (Key::from_slice(k), Val::from_slice(v))
}

impl Bucket {
    fn new(depth: u32) -> Bucket {
        Bucket {
            tags: [0; BUCKET_SLOTS],
            depth,
            len: 0,
            more: None,
            entries: std::array::from_fn(|_| None),
        }
    }

    /// Slots whose tag is `tag`, as bits: two SSE2 compares on x86-64
    /// (left to the auto-vectorizer, the loop compiled to a scalar one in
    /// some callers: the gate's instructions per command moved by 1%).
    #[inline]
    fn slots_tagged(&self, tag: u8) -> u32 {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            use std::arch::x86_64::{
                _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set_epi64x, _mm_set1_epi8,
            };
            let word = |i: usize| {
                i64::from_le_bytes(self.tags[8 * i..8 * i + 8].try_into().expect("8 bytes"))
            };
            // SAFETY: these read no memory (values only), and SSE2, their
            // one target feature, is enabled for this build (the cfg).
            let (low, high) = unsafe {
                let want = _mm_set1_epi8(tag as i8);
                (
                    _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_set_epi64x(word(1), word(0)), want)),
                    _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_set_epi64x(word(3), word(2)), want)),
                )
            };
            (low as u32 & 0xFFFF) | ((high as u32 & 0xFFFF) << 16)
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            self.tags
                .iter()
                .enumerate()
                .fold(0, |m, (i, &t)| m | (u32::from(t == tag) << i))
        }
    }

    /// Where `key` is: this bucket or one chained to it, and the slot.
    fn find(&self, h: u64, key: &[u8]) -> Option<&Entry> {
        let tag = tag_of(h);
        let mut b = self;
        loop {
            let mut m = b.slots_tagged(tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if let Some(e) = &b.entries[i]
                    && e.0[..] == *key
                {
                    return Some(e);
                }
                m &= m - 1;
            }
            b = b.more.as_deref()?;
        }
    }

    fn find_mut(&mut self, h: u64, key: &[u8]) -> Option<&mut Entry> {
        let tag = tag_of(h);
        let mut b = self;
        loop {
            let mut m = b.slots_tagged(tag);
            let mut hit = None;
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if b.entries[i].as_ref().is_some_and(|e| e.0[..] == *key) {
                    hit = Some(i);
                    break;
                }
                m &= m - 1;
            }
            if let Some(i) = hit {
                return b.entries[i].as_mut();
            }
            b = b.more.as_deref_mut()?;
        }
    }

    /// Takes `key` out.
    fn remove(&mut self, h: u64, key: &[u8]) -> Option<Entry> {
        let tag = tag_of(h);
        let mut m = self.slots_tagged(tag);
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            if self.entries[i].as_ref().is_some_and(|e| e.0[..] == *key) {
                self.tags[i] = 0;
                self.len -= 1;
                return self.entries[i].take();
            }
            m &= m - 1;
        }
        self.more.as_mut()?.remove(h, key)
    }

    /// Adds an entry (its key absent) in the first free slot of the chain.
    fn insert(&mut self, h: u64, e: Entry) {
        if self.len as usize == BUCKET_SLOTS {
            let depth = self.depth;
            return self
                .more
                .get_or_insert_with(|| Box::new(Bucket::new(depth)))
                .insert(h, e);
        }
        let i = self.slots_tagged(0).trailing_zeros() as usize;
        debug_assert!(self.entries[i].is_none());
        self.tags[i] = tag_of(h);
        self.entries[i] = Some(e);
        self.len += 1;
    }

    /// Every entry of the chain.
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        std::iter::successors(Some(self), |b| b.more.as_deref())
            .flat_map(|b| b.entries.iter().flatten())
    }

    /// Entries in the chain.
    fn count(&self) -> usize {
        std::iter::successors(Some(self), |b| b.more.as_deref())
            .map(|b| b.len as usize)
            .sum()
    }
}

/// The key-value store: extendible hashing over copy-on-write buckets.
///
/// The directory maps a hash's low directory bits to a bucket; a full
/// bucket splits in two by one more bit, doubling the directory when it
/// is as deep as the directory. Buckets are shared (`Arc`) with frozen
/// copies taken for checkpoints ([`StateMachine::freeze`]): freezing
/// copies the list of bucket pointers (one per ~20 keys), and the first
/// write to a bucket a frozen copy shares copies that bucket alone. So a
/// checkpoint pauses the core task for tens of microseconds at 100,000
/// keys, and the checkpoint thread serializes the frozen buckets while
/// commands go on executing. Hand-written: the store's lookups are most of
/// a command's state-machine cost, and a persistent map (a HAMT, as in
/// `imbl`) walks several nodes per lookup, and hashbrown tables behind an
/// `Arc` add a cache miss (the table header) to each; here a lookup reads
/// the directory, the bucket's first line (tags) and the entry's line.
///
/// Keys and values are owned by the store (not slices of the log's batch
/// buffers, which they would keep alive): a put of a key already present
/// copies the value into the slot it replaces, so the steady state of a
/// write-heavy load allocates nothing (outside a checkpoint's copies).
///
/// A write to a bucket this store copied or made since the last freeze
/// skips `Arc::make_mut`'s atomic check (`owned`): that check reads the
/// reference count, a cache line of its own (the `kv` bench's loop at
/// 100,000 keys: 266 ns per put before this, 235 after, separate runs).
#[derive(Debug)]
pub struct KvStore {
    /// The bucket (an index into `buckets`) of every value of the low
    /// directory bits; its length is a power of two, 2^depth.
    dir: Vec<u32>,
    buckets: Vec<Arc<Bucket>>,
    /// Per bucket, the `generation` in which this store made it (created,
    /// split or copied it). Invariant: a bucket made in the current
    /// generation has no other `Arc` than `buckets`' own whenever `&mut
    /// self` exists, because only a freeze or a clone hands out others that
    /// outlive a `&self` call, and both start a generation (`snapshot`'s
    /// are dropped before it returns).
    owned: Vec<u64>,
    /// Freezes and clones so far.
    generation: AtomicU64,
    len: usize,
}

/// A clone shares the buckets, copy-on-write, like a frozen copy.
impl Clone for KvStore {
    fn clone(&self) -> KvStore {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        KvStore {
            dir: self.dir.clone(),
            buckets: self.buckets.clone(),
            owned: self.owned.clone(),
            generation: AtomicU64::new(generation),
            len: self.len,
        }
    }
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore {
            dir: vec![0],
            buckets: vec![Arc::new(Bucket::new(0))],
            owned: vec![0],
            generation: AtomicU64::new(0),
            len: 0,
        }
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entry(hash_key(key), key).map(|e| e.1.as_slice())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Executes a decoded operation.
    pub fn execute(&mut self, op: KvOp) -> KvResult {
        let mut out = BytesMut::new();
        self.execute_ref(op.as_ref(), &mut out);
        KvResult::decode(&out).expect("the store writes well-formed results")
    }

    /// The index in `buckets` of hash `h`'s bucket.
    fn bucket_of(&self, h: u64) -> usize {
        self.dir[dir_bits(h) & (self.dir.len() - 1)] as usize
    }

    fn entry(&self, h: u64, key: &[u8]) -> Option<&Entry> {
        self.buckets[self.bucket_of(h)].find(h, key)
    }

    /// Hash `h`'s bucket, to change: copied first if a frozen copy
    /// shares it.
    fn bucket_mut(&mut self, h: u64) -> &mut Bucket {
        let b = self.bucket_of(h);
        let generation = *self.generation.get_mut();
        if self.owned[b] == generation {
            let ptr = Arc::as_ptr(&self.buckets[b]).cast_mut();
            // SAFETY: made in this generation, so `self.buckets[b]` is the
            // only `Arc` to the bucket (the invariant of `owned`) and no
            // `Weak` exists (none is ever made): nothing else can read or
            // write it, and `&mut self` holds off every other borrow of it
            // through this store for the returned lifetime.
            return unsafe { &mut *ptr };
        }
        self.owned[b] = generation;
        Arc::make_mut(&mut self.buckets[b])
    }

    /// Executes `op` and writes its encoded result to `out`.
    fn execute_ref(&mut self, op: OpRef<'_>, out: &mut BytesMut) {
        match op {
            OpRef::Put { key, value } => {
                self.set(key, value);
                out.put_u8(R_DONE);
            }
            OpRef::Get { key } => self.answer_get(key, out),
            OpRef::Delete { key } => out.put_u8(if self.remove(key) {
                R_DELETED
            } else {
                R_ABSENT
            }),
            OpRef::Cas { key, expected, new } => {
                let h = hash_key(key);
                match self.entry(h, key) {
                    Some(cur) if expected == Some(cur.1.as_slice()) => {
                        let e = self.bucket_mut(h).find_mut(h, key).expect("present");
                        overwrite(&mut e.1, new);
                        out.put_u8(R_SWAPPED);
                    }
                    Some(cur) => {
                        out.put_u8(R_MISMATCH);
                        out.put_slice(&cur.1);
                    }
                    None if expected.is_none() => {
                        self.insert_new(h, key, new);
                        out.put_u8(R_SWAPPED);
                    }
                    None => out.put_u8(R_MISMATCH_ABSENT),
                }
            }
        }
    }

    fn answer_get(&self, key: &[u8], out: &mut BytesMut) {
        match self.get(key) {
            Some(v) => {
                out.put_u8(R_FOUND);
                out.put_slice(v);
            }
            None => out.put_u8(R_NOT_FOUND),
        }
    }

    /// Sets `key` to `value`, reusing the present value's allocation.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        let h = hash_key(key);
        if let Some(e) = self.bucket_mut(h).find_mut(h, key) {
            overwrite(&mut e.1, value);
        } else {
            self.insert_new(h, key, value);
        }
    }

    /// Removes `key`; whether it was there. A bucket is copied for a
    /// frozen copy only when something is removed from it.
    fn remove(&mut self, key: &[u8]) -> bool {
        let h = hash_key(key);
        if self.entry(h, key).is_none() {
            return false;
        }
        let removed = self.bucket_mut(h).remove(h, key);
        debug_assert!(removed.is_some());
        self.len -= 1;
        true
    }

    /// Adds `key`, which is absent (precondition), splitting its bucket
    /// first when it is full.
    fn insert_new(&mut self, h: u64, key: &[u8], value: &[u8]) {
        debug_assert!(self.entry(h, key).is_none(), "insert_new of a present key");
        if self.buckets[self.bucket_of(h)].len as usize == BUCKET_SLOTS {
            self.split(h);
        }
        self.bucket_mut(h)
            .insert(h, (Key::from_slice(key), Val::from_slice(value)));
        self.len += 1;
    }

    /// Splits hash `h`'s bucket by its next directory bit, doubling the
    /// directory if the bucket is as deep as it. Does nothing when the
    /// directory is at its bounds (the bucket then chains). Moves at most
    /// one bucket's entries (plus its chain).
    fn split(&mut self, h: u64) {
        let bits = dir_bits(h);
        let old = self.bucket_of(h);
        let depth = self.buckets[old].depth;
        if 1usize << depth == self.dir.len() {
            if depth >= DIR_DEPTH_MAX
                || self.dir.len() >= DIR_ENTRIES_PER_BUCKET_MAX * self.buckets.len()
            {
                return;
            }
            // The new half maps each pattern to the bucket its low half does.
            self.dir.extend_from_within(..);
        }
        let bit = 1usize << depth;
        let (mut stay, mut go) = (Bucket::new(depth + 1), Bucket::new(depth + 1));
        let mut place = |e: Entry| {
            let eh = hash_key(&e.0);
            let to = if dir_bits(eh) & bit == 0 {
                &mut stay
            } else {
                &mut go
            };
            to.insert(eh, e);
        };
        match Arc::get_mut(&mut self.buckets[old]) {
            Some(b) => {
                let mut chain = Some(std::mem::replace(b, Bucket::new(0)));
                while let Some(mut b) = chain {
                    b.entries
                        .iter_mut()
                        .filter_map(Option::take)
                        .for_each(&mut place);
                    chain = b.more.take().map(|m| *m);
                }
            }
            // A frozen copy holds it: it keeps the old bucket.
            None => self.buckets[old]
                .iter()
                .map(copy_entry)
                .for_each(&mut place),
        }
        let new = u32::try_from(self.buckets.len()).expect("under 2^32 buckets");
        let generation = *self.generation.get_mut();
        self.buckets[old] = Arc::new(stay);
        self.owned[old] = generation;
        self.buckets.push(Arc::new(go));
        self.owned.push(generation);
        // Every directory entry with the old pattern and the new bit set.
        let first = (bits & (bit - 1)) | bit;
        for i in (first..self.dir.len()).step_by(bit << 1) {
            debug_assert_eq!(self.dir[i] as usize, old);
            self.dir[i] = new;
        }
    }

    /// Entries sorted by key (the canonical order of snapshots).
    pub fn sorted(&self) -> Vec<(&[u8], &[u8])> {
        sorted_entries(&self.buckets)
    }

    /// The directory and buckets agree: the directory is 2^depth long;
    /// a bucket of depth d is named by 2^(depth - d) entries, all ending
    /// in its pattern; each entry lies in the bucket its hash names, under
    /// its tag; `len` counts them. O(size): for tests.
    pub fn check_invariants(&self) {
        assert!(self.dir.len().is_power_of_two(), "directory length");
        let depth = self.dir.len().trailing_zeros();
        let mut named = vec![0usize; self.buckets.len()];
        let mut pattern = vec![None; self.buckets.len()];
        for (i, &b) in self.dir.iter().enumerate() {
            let b = b as usize;
            let d = self.buckets[b].depth;
            assert!(d <= depth, "bucket {b} deeper than the directory");
            named[b] += 1;
            let p = i & ((1 << d) - 1);
            assert_eq!(*pattern[b].get_or_insert(p), p, "bucket {b}'s pattern");
        }
        let mut len = 0;
        for (b, bucket) in self.buckets.iter().enumerate() {
            assert_eq!(named[b], 1 << (depth - bucket.depth), "bucket {b}'s names");
            let mut link = Some(&**bucket);
            while let Some(l) = link {
                let mut used = 0;
                for (i, e) in l.entries.iter().enumerate() {
                    match e {
                        Some(e) => {
                            let h = hash_key(&e.0);
                            assert_eq!(l.tags[i], tag_of(h), "tag of slot {i}");
                            assert_eq!(self.bucket_of(h), b, "entry in bucket {b}");
                            used += 1;
                        }
                        None => assert_eq!(l.tags[i], 0, "tag of empty slot {i}"),
                    }
                }
                assert_eq!(used, l.len as usize, "bucket {b}'s len");
                link = l.more.as_deref();
            }
            len += bucket.count();
        }
        assert_eq!(len, self.len, "len");
        assert_eq!(self.owned.len(), self.buckets.len(), "owned");
        let generation = self.generation.load(Ordering::Relaxed);
        for (b, bucket) in self.buckets.iter().enumerate() {
            assert!(self.owned[b] <= generation, "bucket {b} made in the future");
            if self.owned[b] == generation {
                assert_eq!(Arc::strong_count(bucket), 1, "bucket {b} shared but owned");
            }
        }
    }
}

/// Entries sorted by key, from a list of buckets, as snapshots list them
/// (by each key's first 16 bytes as one integer, then by the whole key:
/// the comparisons read the vector, not the keys scattered over memory).
fn sorted_entries(buckets: &[Arc<Bucket>]) -> Vec<(&[u8], &[u8])> {
    let n = buckets.iter().map(|b| b.count()).sum();
    let mut v: Vec<(u128, &[u8], &[u8])> = Vec::with_capacity(n);
    for b in buckets {
        v.extend(b.iter().map(|(k, val)| (key_prefix(k), &k[..], &val[..])));
    }
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// A frozen store: the buckets as they were, shared with the live store
/// until it writes to them.
struct FrozenKv {
    buckets: Vec<Arc<Bucket>>,
}

impl Frozen for FrozenKv {
    /// Copies each bucket's entries out and lets the bucket go at once,
    /// then sorts and writes. The live store copies a bucket on its first
    /// write only while a frozen copy still holds it: holding each for the
    /// microsecond of its copy rather than for the whole serialization (a
    /// sort of every key, ~15 ms at 100,000 keys) keeps those copies few.
    fn write(self: Box<Self>, out: &mut Vec<u8>) {
        thread_local! {
            /// The copy's buffers, kept for the thread's next checkpoint
            /// (megabytes mapped and unmapped each time would contend with
            /// the core task's page faults).
            static SCRATCH: RefCell<(Vec<u8>, Vec<IndexEntry>)> =
                const { RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with_borrow_mut(|(flat, index)| (*self).write_with(flat, index, out));
    }
}

/// A copied entry: its key's prefix, where it starts in the copy, its
/// key's and value's lengths.
type IndexEntry = (u128, usize, usize, usize);

impl FrozenKv {
    /// [`Frozen::write`], with the entries copied into `flat` (keys and
    /// values back to back) and listed in `index`.
    fn write_with(self, flat: &mut Vec<u8>, index: &mut Vec<IndexEntry>, out: &mut Vec<u8>) {
        flat.clear();
        index.clear();
        for b in self.buckets {
            for (k, v) in b.iter() {
                index.push((key_prefix(k), flat.len(), k.len(), v.len()));
                flat.extend_from_slice(k);
                flat.extend_from_slice(v);
            }
        }
        let key = |&(_, at, klen, _): &IndexEntry| &flat[at..at + klen];
        index.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key(a).cmp(key(b))));
        out.extend_from_slice(&(index.len() as u64).to_le_bytes());
        for &(_, at, klen, vlen) in index.iter() {
            out.extend_from_slice(&(klen as u64).to_le_bytes());
            out.extend_from_slice(&flat[at..at + klen]);
            out.extend_from_slice(&(vlen as u64).to_le_bytes());
            out.extend_from_slice(&flat[at + klen..at + klen + vlen]);
        }
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
        match OpRef::decode(op) {
            Ok(op) => self.execute_ref(op, result),
            Err(e) => invalid(e, result),
        }
    }

    fn query(&self, query: &[u8], result: &mut BytesMut) {
        match OpRef::decode(query) {
            Ok(OpRef::Get { key }) => self.answer_get(key, result),
            Ok(_) => invalid("only get is a query", result),
            Err(e) => invalid(e, result),
        }
    }

    /// The frozen copy's serialization, on the spot (one serializer of
    /// the layout: the entry count, then each entry in key order). The
    /// copy's extra `Arc`s live only inside this call, which holds `&self`:
    /// no write can reach a bucket meanwhile, so no generation starts.
    fn snapshot(&self, out: &mut Vec<u8>) {
        Box::new(FrozenKv {
            buckets: self.buckets.clone(),
        })
        .write(out);
    }

    /// The bucket pointers: 34–43 µs for 92,764 keys (`cargo bench -p
    /// engine --bench kv`).
    fn freeze(&self) -> Box<dyn Frozen> {
        // A new generation: every bucket is shared from here on.
        self.generation.fetch_add(1, Ordering::Relaxed);
        Box::new(FrozenKv {
            buckets: self.buckets.clone(),
        })
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader(snapshot);
        let n = r.u64()?;
        let mut store = KvStore::new();
        for _ in 0..n {
            let klen = r.u64()?;
            let k = r.take(klen)?;
            let vlen = r.u64()?;
            let v = r.take(vlen)?;
            let h = hash_key(k);
            if store.entry(h, k).is_some() {
                return Err(SnapshotError("duplicate key"));
            }
            store.insert_new(h, k, v);
        }
        if !r.0.is_empty() {
            return Err(SnapshotError("trailing bytes"));
        }
        *self = store;
        Ok(())
    }
}

/// Replaces a stored value in its allocation, unless that is more than
/// [`VALUE_SLACK_BYTES_MAX`] larger than needed (then it is given back).
fn overwrite(v: &mut Val, value: &[u8]) {
    if v.capacity() <= value.len() + VALUE_SLACK_BYTES_MAX {
        v.clear();
        v.extend_from_slice(value);
    } else {
        *v = Val::from_slice(value);
    }
    debug_assert_eq!(v.as_slice(), value);
}

/// A key's first 16 bytes, zero-padded, as a big-endian integer: ordered
/// like the keys wherever two prefixes differ (a key that ends early pads
/// with zeros, and is a prefix of the other: it sorts first either way).
fn key_prefix(k: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = k.len().min(16);
    b[..n].copy_from_slice(&k[..n]);
    u128::from_be_bytes(b)
}

fn invalid(reason: &str, out: &mut BytesMut) {
    out.put_u8(R_INVALID);
    out.put_slice(reason.as_bytes());
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
        fn snapshots_list_keys_in_byte_order(
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
        let mut b = Bucket::new(0);
        let keys: Vec<Vec<u8>> = (0..3 * BUCKET_SLOTS)
            .map(|i| format!("k{i}").into_bytes())
            .collect();
        for k in &keys {
            b.insert(hash_key(k), (Key::from_slice(k), Val::from_slice(b"v")));
        }
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
