//! The store: the table behind the [`StateMachine`] interface, with
//! copy-on-write buckets for checkpoints (frozen while the core goes on).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};

use crate::state_machine::{Frozen, Reader, SnapshotError, StateMachine};

use super::table::*;
use super::*;

/// Below this many keys the table fits the cache: no prefetch hints
/// (`cargo bench -p engine --bench kv`: at 1,000 keys they cost 14 ns of
/// a 35 ns put; at 100,000 they cut a put from 146 ns to 66).
pub(super) const PREFETCH_KEYS_MIN: usize = 16_384;

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
    pub(super) dir: Vec<u32>,
    pub(super) buckets: Vec<Arc<Bucket>>,
    /// Per bucket, the `generation` in which this store made it (created,
    /// split or copied it). Invariant: a bucket made in the current
    /// generation has no other `Arc` than `buckets`' own whenever `&mut
    /// self` exists, because only a freeze or a clone hands out others that
    /// outlive a `&self` call, and both start a generation (`snapshot`'s
    /// are dropped before it returns).
    pub(super) owned: Vec<u64>,
    /// Freezes and clones so far.
    pub(super) generation: AtomicU64,
    pub(super) len: usize,
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

    /// An empty store whose directory is `depth` bits deep, a bucket per
    /// entry (for about `BUCKET_SLOTS << depth` keys).
    pub(super) fn with_depth(depth: u32) -> KvStore {
        assert!(depth < DIR_DEPTH_MAX);
        let n = 1usize << depth;
        KvStore {
            dir: (0..n).map(|i| i as u32).collect(),
            buckets: (0..n).map(|_| Arc::new(Bucket::new(depth))).collect(),
            owned: vec![0; n],
            generation: AtomicU64::new(0),
            len: 0,
        }
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
    pub(super) fn bucket_of(&self, h: u64) -> usize {
        self.dir[dir_bits(h) & (self.dir.len() - 1)] as usize
    }

    pub(super) fn entry(&self, h: u64, key: &[u8]) -> Option<&Entry> {
        self.buckets[self.bucket_of(h)].find(h, key)
    }

    /// Hash `h`'s bucket, to change: copied first if a frozen copy
    /// shares it.
    pub(super) fn bucket_mut(&mut self, h: u64) -> &mut Bucket {
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
    pub(super) fn execute_ref(&mut self, op: OpRef<'_>, out: &mut BytesMut) {
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

    pub(super) fn answer_get(&self, key: &[u8], out: &mut BytesMut) {
        match self.get(key) {
            Some(v) => {
                out.put_u8(R_FOUND);
                out.put_slice(v);
            }
            None => out.put_u8(R_NOT_FOUND),
        }
    }

    /// Sets `key` to `value`, reusing the present value's allocation.
    pub(super) fn set(&mut self, key: &[u8], value: &[u8]) {
        let h = hash_key(key);
        if let Some(e) = self.bucket_mut(h).find_mut(h, key) {
            overwrite(&mut e.1, value);
        } else {
            self.insert_new(h, key, value);
        }
    }

    /// Removes `key`; whether it was there. A bucket is copied for a
    /// frozen copy only when something is removed from it.
    pub(super) fn remove(&mut self, key: &[u8]) -> bool {
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
    pub(super) fn insert_new(&mut self, h: u64, key: &[u8], value: &[u8]) {
        debug_assert!(self.entry(h, key).is_none(), "insert_new of a present key");
        // Splits until the key's bucket has room or the directory is at its
        // bounds: one split may move nothing (keys that agree on the next
        // bit, as keys arriving in hash order do: a restore's).
        while self.buckets[self.bucket_of(h)].len as usize == BUCKET_SLOTS && self.split(h) {}
        self.bucket_mut(h)
            .insert(h, (Key::from_slice(key), Val::from_slice(value)));
        self.len += 1;
    }

    /// Splits hash `h`'s bucket by its next directory bit, doubling the
    /// directory if the bucket is as deep as it; whether it split. Does
    /// nothing when the directory is at its bounds (the bucket then
    /// chains). Moves at most one bucket's entries (plus its chain).
    pub(super) fn split(&mut self, h: u64) -> bool {
        let bits = dir_bits(h);
        let old = self.bucket_of(h);
        let depth = self.buckets[old].depth;
        if 1usize << depth == self.dir.len() {
            if depth >= DIR_DEPTH_MAX
                || self.dir.len() >= DIR_ENTRIES_PER_BUCKET_MAX * self.buckets.len()
            {
                return false;
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
        true
    }

    /// Entries sorted by key (for tests and tools: snapshots list them in
    /// hash order, [`order_of`]).
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

/// Entries sorted by key, from a list of buckets (by each key's first 16
/// bytes as one integer, then by the whole key: the comparisons read the
/// vector, not the keys scattered over memory).
pub(super) fn sorted_entries(buckets: &[Arc<Bucket>]) -> Vec<(&[u8], &[u8])> {
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
pub(super) struct FrozenKv {
    pub(super) buckets: Vec<Arc<Bucket>>,
}

impl Frozen for FrozenKv {
    fn write(self: Box<Self>, out: &mut Vec<u8>) {
        (*self).write_into(out);
    }
}

/// A snapshot's order: by the bits of a key's hash that the directory
/// reads (`dir_bits`), lowest bit first (so as the 32-bit reversal of
/// those bits), then by the key. Within a build (the order follows the
/// hash function, `rustc_hash`'s, which differs between 32- and 64-bit
/// targets and may between its versions) it depends on the set of keys
/// alone, not on how the table came to hold them (its splits, its slots),
/// so equal stores write equal snapshots; a restore reads any order. A
/// bucket's keys are one contiguous run of it (they share their low
/// `depth` bits), so the snapshot is written a bucket at a time, each
/// bucket's few entries sorted on their own: no sort of every key (at
/// 100,000 keys that sort, over a copy of every entry, was most of a
/// checkpoint's ~15 ms: `cargo bench -p engine --bench kv`).
pub(super) fn order_of(h: u64) -> u32 {
    (dir_bits(h) as u32).reverse_bits()
}

/// The deepest directory a restore sizes up front (2^24 entries, asked for
/// by a count of 2^31 keys or more), so a hostile count allocates at most
/// that; a larger store's directory grows by splitting as keys arrive.
const RESTORE_DEPTH_MAX: u32 = 24;

/// Where bucket `b`'s run starts in the snapshot order (`None`: empty).
fn run_start(b: &Bucket) -> Option<u32> {
    let first = b.iter().next()?;
    let low = if b.depth >= 32 {
        u32::MAX
    } else {
        (1u32 << b.depth) - 1
    };
    Some((dir_bits(hash_key(&first.0)) as u32 & low).reverse_bits())
}

impl FrozenKv {
    /// [`Frozen::write`]: the entry count, then each entry (key length,
    /// key, value length, value) in the snapshot order ([`order_of`]).
    ///
    /// Each bucket is let go as soon as its entries are written: the live
    /// store copies a bucket on its first write only while a frozen copy
    /// still holds it. A bucket is held from the freeze until its turn
    /// (the whole pass is ~4 ms at 100,000 keys; the copy-then-sort writer
    /// before it let every bucket go after a ~2–3 ms copy pass, then
    /// sorted for ~10 ms more).
    pub(super) fn write_into(self, out: &mut Vec<u8>) {
        let mut runs: Vec<(u32, Arc<Bucket>)> = self
            .buckets
            .into_iter()
            .filter_map(|b| Some((run_start(&b)?, b)))
            .collect();
        runs.sort_unstable_by_key(|r| r.0);
        // No reserve from an estimate (the first entry's size times the
        // count asked for ~100 GiB when that entry held a 1 MiB value):
        // `out` grows by doubling, and the checkpoint thread reuses it, so
        // only a checkpoint larger than any before grows it. The count
        // goes in front once the entries are written.
        let count_at = out.len();
        out.extend_from_slice(&[0; 8]);
        let mut written = 0u64;
        for (_, b) in runs {
            let mut run: smallvec::SmallVec<[(u32, &Entry); 2 * BUCKET_SLOTS]> =
                b.iter().map(|e| (order_of(hash_key(&e.0)), e)).collect();
            run.sort_unstable_by(|x, y| x.0.cmp(&y.0).then_with(|| x.1.0.cmp(&y.1.0)));
            for (_, (k, v)) in &run {
                out.extend_from_slice(&(k.len() as u64).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                out.extend_from_slice(v);
            }
            written += run.len() as u64;
        }
        out[count_at..count_at + 8].copy_from_slice(&written.to_le_bytes());
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
        match OpRef::decode(op) {
            Ok(op) => self.execute_ref(op, result),
            Err(e) => invalid(e, result),
        }
    }

    /// The far step loads the key's bucket header (its tags), the near
    /// step the lines of the entries whose tag matches. At 100,000 keys
    /// every put otherwise waits for two cache misses in turn
    /// (`cargo bench -p engine --bench kv`: figures in its output).
    fn prefetch(&self, op: &[u8], near: bool) {
        let key = match OpRef::decode(op) {
            Ok(OpRef::Put { key, .. } | OpRef::Get { key } | OpRef::Delete { key }) => key,
            Ok(OpRef::Cas { key, .. }) => key,
            Err(_) => return,
        };
        let h = hash_key(key);
        let bucket = &self.buckets[self.bucket_of(h)];
        if near {
            bucket.prefetch_tagged(h);
        } else {
            prefetch_line(Arc::as_ptr(bucket));
        }
    }

    fn prefetches(&self) -> bool {
        self.len >= PREFETCH_KEYS_MIN
    }

    fn query(&self, query: &[u8], result: &mut BytesMut) {
        match OpRef::decode(query) {
            Ok(OpRef::Get { key }) => self.answer_get(key, result),
            Ok(_) => invalid("only get is a query", result),
            Err(e) => invalid(e, result),
        }
    }

    /// The frozen copy's serialization, on the spot (one serializer of
    /// the layout: the entry count, then each entry in the order of
    /// [`order_of`]). The
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
        // The directory sized up front, two bits short of the entries
        // (each takes 16 bytes at least, so a count the snapshot cannot
        // hold sizes nothing, and a count it does not bear out allocates at
        // most ~2x the snapshot). The entries come in hash order: from one
        // bucket, splitting moves nothing for ten rounds and the
        // directory's bound then chains buckets (86 at 100,000 keys); two
        // bits short, splits find room to double (six under the bound).
        let fit = n.min((snapshot.len() as u64).saturating_sub(8) / 16) / BUCKET_SLOTS as u64;
        let depth = fit
            .checked_ilog2()
            .map_or(0, |d| d.saturating_sub(2).min(RESTORE_DEPTH_MAX));
        let mut store = KvStore::with_depth(depth);
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
pub(super) fn overwrite(v: &mut Val, value: &[u8]) {
    if v.len() == value.len() && v.capacity() <= value.len() + VALUE_SLACK_BYTES_MAX {
        // The common case (a value of the same size): one copy.
        v.copy_from_slice(value);
    } else if v.capacity() <= value.len() + VALUE_SLACK_BYTES_MAX {
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
pub(super) fn key_prefix(k: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = k.len().min(16);
    b[..n].copy_from_slice(&k[..n]);
    u128::from_be_bytes(b)
}
