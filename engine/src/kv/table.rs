//! The store's table: an extendible hash directory of buckets, each a
//! small array of entries found by a one-byte tag scan.

use std::hash::BuildHasher;

pub(super) type Key = smallvec::SmallVec<[u8; 16]>;
pub(super) type Val = smallvec::SmallVec<[u8; 64]>;
pub(super) type Entry = (Key, Val);

/// Entries in a bucket: a full bucket splits in two before it takes
/// another. A frozen copy's first write to a bucket copies that bucket:
/// this bounds the copy (about a microsecond at 64-byte values), whatever
/// the store's size.
pub(super) const BUCKET_SLOTS: usize = 32;

/// The directory never holds more than this many entries per bucket: keys
/// whose hashes agree on every directory bit (a flood of colliding keys)
/// stop splitting, and a full bucket that cannot split refuses nothing:
/// it chains an overflow bucket (`Bucket::more`).
pub(super) const DIR_ENTRIES_PER_BUCKET_MAX: usize = 64;

/// Directory bits are 32 (`dir_bits`): the directory stops there.
pub(super) const DIR_DEPTH_MAX: u32 = 32;

/// A key's hash.
pub(super) fn hash_key(key: &[u8]) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// The directory's view of a hash: the high half of a multiplicative mix,
/// so every bit depends on the whole hash.
pub(super) fn dir_bits(h: u64) -> usize {
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

/// An occupied slot's tag: the hash's top 7 bits, high bit set (0 is an
/// empty slot).
pub(super) fn tag_of(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

/// Asks the CPU to start loading the cache line holding `p` (a hint: it
/// changes nothing the program can see).
#[inline]
pub(super) fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing the program sees and never
        // faults, whatever the address; SSE, its target feature, is part
        // of every x86-64 build.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A bucket: the entries whose directory bits end in its pattern, in
/// slots found by their tags. The tags share the first cache line with
/// the header, so a lookup touches that line and the entry's.
#[derive(Debug)]
#[repr(C, align(64))]
pub(super) struct Bucket {
    pub(super) tags: [u8; BUCKET_SLOTS],
    /// How many low directory bits its entries share (its local depth).
    pub(super) depth: u32,
    pub(super) len: u32,
    /// Where entries go when this bucket is full and cannot split (the
    /// directory is at its bounds): a chain, so no put is ever refused.
    pub(super) more: Option<Box<Bucket>>,
    pub(super) entries: [Option<Entry>; BUCKET_SLOTS],
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

pub(super) fn copy_entry((k, v): &Entry) -> Entry {
    (Key::from_slice(k), Val::from_slice(v))
}

impl Bucket {
    pub(super) fn new(depth: u32) -> Bucket {
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
    pub(super) fn slots_tagged(&self, tag: u8) -> u32 {
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

    /// Starts loading the lines of the entries tagged like `h` in this
    /// bucket (reads the tags: call once they are likely in cache).
    #[inline]
    pub(super) fn prefetch_tagged(&self, h: u64) {
        let mut m = self.slots_tagged(tag_of(h));
        while m != 0 {
            // An entry (104 bytes) spans two or three lines: each of them.
            let e =
                (&self.entries[m.trailing_zeros() as usize] as *const Option<Entry>).cast::<u8>();
            let size = std::mem::size_of::<Option<Entry>>();
            let mut at = 0;
            while at < size {
                prefetch_line(e.wrapping_add(at));
                at += 64;
            }
            prefetch_line(e.wrapping_add(size - 1));
            m &= m - 1;
        }
    }

    /// Where `key` is: this bucket or one chained to it, and the slot.
    pub(super) fn find(&self, h: u64, key: &[u8]) -> Option<&Entry> {
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

    pub(super) fn find_mut(&mut self, h: u64, key: &[u8]) -> Option<&mut Entry> {
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
    pub(super) fn remove(&mut self, h: u64, key: &[u8]) -> Option<Entry> {
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
    pub(super) fn insert(&mut self, h: u64, e: Entry) {
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
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        std::iter::successors(Some(self), |b| b.more.as_deref())
            .flat_map(|b| b.entries.iter().flatten())
    }

    /// Entries in the chain.
    pub(super) fn count(&self) -> usize {
        std::iter::successors(Some(self), |b| b.more.as_deref())
            .map(|b| b.len as usize)
            .sum()
    }
}
