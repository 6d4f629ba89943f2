//! The crash-consistent NVM log (`design/nvm-log.md`), in the style of the
//! verified log of "PoWER Never Corrupts" (OSDI'25).
//!
//! Layout (little-endian, 8-byte aligned):
//!
//! | offset | what |
//! |---|---|
//! | 0 | superblock: magic, version, area offset and length, cluster, replica, CRC-64 |
//! | 256 | commit word: `COMMIT_A` or `COMMIT_B`, on its own cache line; selects the active metadata slot |
//! | 512, 640 | metadata slots A and B: seq, head, tail, promised ballot, log start, commit hint, slot end, CRC-64 |
//! | 4096 | the circular record area: virtual byte `p` lives at `4096 + p % area_len` |
//!
//! A record is a 40-byte header (payload length, kind, slot, ballot, CRC-64
//! over the record's virtual position, the header and the payload) and the
//! payload padded to 8 bytes. Binding the CRC to the position means a stale
//! record from an earlier lap never validates.
//!
//! Group commit: `write` appends records past the staged tail with no fence;
//! `sync` writes the new metadata into the *inactive* slot, flushes every
//! dirty line and fences, then flips the commit word, flushes it and fences.
//! Two fences per commit, however many records. Recovery trusts the slot the
//! commit word selects and verifies every record in `[head, tail)`: anything
//! bad there was durable before the commit point, so it is media corruption
//! and recovery returns `Corrupt` instead of truncating.
//!
//! Free space goes back to the system: once a truncation's commit is durable
//! (and at recovery), the whole pages of the area outside `[head, tail)` are
//! discarded ([`PmRegion::discard`]: a hole punched in a tmpfs file). They
//! read as zeros after that; nothing reads free space before writing it.

pub mod region;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use self::region::{FlushMode, LINE_BYTES, PmRegion};
use super::pad8;
use super::{Storage, StorageError, StorageStats};
use crate::core::codec::{decode_value, encode_value};
use crate::core::{
    Ballot, ClusterId, DurableState, EntryWrite, PersistRequest, PersistToken, ReplicaId, Slot,
    Unprovable, Value,
};

const MAGIC: u64 = u64::from_le_bytes(*b"PAXNVM01");
const VERSION: u32 = 1;
const SUPERBLOCK_OFFSET: u64 = 0;
const SUPERBLOCK_BYTES: usize = 56;
const COMMIT_WORD_OFFSET: u64 = 256;
/// The commit word's two legal values, 64 bits apart in Hamming distance.
pub const COMMIT_A: u64 = 0x5A5A_5A5A_5A5A_5A5A;
pub const COMMIT_B: u64 = !COMMIT_A;
const META_OFFSETS: [u64; 2] = [512, 640];
const META_BYTES: usize = 96;
/// Where the record area starts.
pub const AREA_OFFSET: u64 = 4096;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: u64 = 40;
/// A truncation also discards this much free space below the old head: the
/// page holding the old head was kept then (partly live), and pages are at
/// most 64 KiB.
const DISCARD_BEHIND_BYTES: u64 = 64 * 1024;
/// Bytes a truncation or a sync discards at most: punching touched tmpfs
/// pages costs ~0.2 ms per MiB here, inside the sync the core task waits
/// for, so a checkpoint's 32 MiB go back 512 KiB per sync (~0.1 ms each;
/// a loaded replica syncs thousands of times a second).
const DISCARD_STEP_BYTES_MAX: u64 = 512 << 10;

const _: () = assert!(META_OFFSETS[0] + META_BYTES as u64 <= META_OFFSETS[1]);
const _: () = assert!(META_OFFSETS[1] + META_BYTES as u64 <= AREA_OFFSET);
const _: () = assert!(
    COMMIT_WORD_OFFSET.is_multiple_of(LINE_BYTES) && META_OFFSETS[0].is_multiple_of(LINE_BYTES)
);

fn crc64(parts: &[&[u8]]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    for p in parts {
        d.write(p);
    }
    d.sum64()
}

/// Test-only breakages of the commit protocol; the crash harness must
/// catch each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmBug {
    /// Flip the commit word without first flushing the records and the
    /// new metadata.
    NoFlushBeforeCommitWord,
    /// Overwrite the active metadata slot in place instead of the inactive one.
    InPlaceActiveSlot,
}

/// The log's metadata: one of the two slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    seq: u64,
    /// Virtual position of the first live record.
    head: u64,
    /// Virtual position after the last record. Invariant:
    /// `head <= tail <= head + area_len`.
    tail: u64,
    promised: Ballot,
    /// Entries below this slot are truncated (covered by a checkpoint).
    log_start: Slot,
    /// Commit hint: slots below it are chosen and hold the chosen value.
    commit: Slot,
    /// One past the highest slot ever written (bounds what a salvaged log
    /// may have lost).
    slot_end: Slot,
    /// Set by a salvage and kept: entries below `unprovable_below`, in
    /// ballots up to `unprovable_ballot`, may have been lost.
    unprovable_below: Slot,
    unprovable_ballot: Ballot,
}

impl Meta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut b = [0u8; META_BYTES];
        let fields = [
            self.seq,
            self.head,
            self.tail,
            self.promised.round,
            u64::from(self.promised.replica.0),
            self.log_start.0,
            self.commit.0,
            self.slot_end.0,
            self.unprovable_below.0,
            self.unprovable_ballot.round,
            u64::from(self.unprovable_ballot.replica.0),
        ];
        for (i, f) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        let crc = crc64(&[&b[..88]]);
        b[88..96].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; META_BYTES]) -> Option<Meta> {
        let f = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if crc64(&[&b[..88]]) != f(11) {
            return None;
        }
        let replica = u32::try_from(f(4)).ok()?;
        let u_replica = u32::try_from(f(10)).ok()?;
        Some(Meta {
            seq: f(0),
            head: f(1),
            tail: f(2),
            promised: Ballot::new(f(3), ReplicaId(replica)),
            log_start: Slot(f(5)),
            commit: Slot(f(6)),
            slot_end: Slot(f(7)),
            unprovable_below: Slot(f(8)),
            unprovable_ballot: Ballot::new(f(9), ReplicaId(u_replica)),
        })
    }
}

/// A record read back from the area.
struct RecordRead {
    slot: Slot,
    ballot: Ballot,
    value: Value,
    /// Bytes the record occupies (header and padded payload).
    size: u64,
}

/// The NVM log over a region `R`.
pub struct NvmLog<R: PmRegion> {
    region: R,
    subject: String,
    area_len: u64,
    /// The committed metadata and which slot holds it.
    meta: Meta,
    active: usize,
    /// What the next commit writes: `meta` plus staged appends and updates.
    staged: Meta,
    /// Region ranges written since the last commit.
    dirty: Vec<(u64, u64)>,
    /// Every record in `[head, staged.tail)`: (virtual position, slot).
    index: VecDeque<(u64, Slot)>,
    written_token: PersistToken,
    durable_token: PersistToken,
    /// Set by a failed fence or a full log: nothing more is accepted.
    failed: bool,
    stats: StorageStats,
    /// Freed bytes below the committed head still to discard.
    discard_pending: u64,
    bug: Option<NvmBug>,
}

impl<R: PmRegion> NvmLog<R> {
    /// Formats `region` as an empty log of `cluster`/`replica`.
    pub fn format(
        mut region: R,
        cluster: ClusterId,
        replica: ReplicaId,
    ) -> Result<NvmLog<R>, StorageError> {
        let len = region.len();
        let subject = region.subject();
        if len <= AREA_OFFSET + 4 * RECORD_HEADER_BYTES || !len.is_multiple_of(8) {
            return Err(StorageError::Foreign {
                subject,
                detail: format!("a region of {len} bytes is too small for a log"),
            });
        }
        let area_len = len - AREA_OFFSET;
        let mut sb = [0u8; SUPERBLOCK_BYTES];
        sb[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        sb[8..12].copy_from_slice(&VERSION.to_le_bytes());
        sb[16..24].copy_from_slice(&AREA_OFFSET.to_le_bytes());
        sb[24..32].copy_from_slice(&area_len.to_le_bytes());
        sb[32..40].copy_from_slice(&cluster.0.to_le_bytes());
        sb[40..44].copy_from_slice(&replica.0.to_le_bytes());
        let crc = crc64(&[&sb[..48]]);
        sb[48..56].copy_from_slice(&crc.to_le_bytes());
        let meta = Meta::default();
        region.write(SUPERBLOCK_OFFSET, &sb);
        region.write(META_OFFSETS[0], &meta.encode());
        let mut log = NvmLog::new(region, subject, area_len);
        log.persist(&[
            (SUPERBLOCK_OFFSET, SUPERBLOCK_BYTES as u64),
            (META_OFFSETS[0], META_BYTES as u64),
        ])?;
        log.region
            .write(COMMIT_WORD_OFFSET, &COMMIT_A.to_le_bytes());
        log.persist(&[(COMMIT_WORD_OFFSET, 8)])?;
        Ok(log)
    }

    /// Opens a formatted region; call [`Storage::recover`] next.
    pub fn open(
        region: R,
        cluster: ClusterId,
        replica: ReplicaId,
    ) -> Result<NvmLog<R>, StorageError> {
        let subject = region.subject();
        let mut sb = [0u8; SUPERBLOCK_BYTES];
        if region.len() < AREA_OFFSET {
            return Err(StorageError::NotFormatted {
                subject,
                detail: "region smaller than the log header".into(),
            });
        }
        region.read(SUPERBLOCK_OFFSET, &mut sb);
        let f64_at = |o: usize| u64::from_le_bytes(sb[o..o + 8].try_into().expect("8 bytes"));
        if sb.iter().all(|b| *b == 0) {
            return Err(StorageError::NotFormatted {
                subject,
                detail: "no superblock (a wiped or never-formatted log)".into(),
            });
        }
        if crc64(&[&sb[..48]]) != f64_at(48) {
            return Err(StorageError::Corrupt {
                subject,
                detail: "superblock checksum mismatch".into(),
            });
        }
        let version = u32::from_le_bytes(sb[8..12].try_into().expect("4 bytes"));
        if f64_at(0) != MAGIC || version != VERSION {
            return Err(StorageError::Foreign {
                subject,
                detail: format!("not an NVM log of version {VERSION}"),
            });
        }
        let (area_offset, area_len) = (f64_at(16), f64_at(24));
        if area_offset != AREA_OFFSET || area_offset + area_len != region.len() {
            return Err(StorageError::Corrupt {
                subject,
                detail: format!(
                    "geometry {area_offset}+{area_len} does not match a region of {} bytes",
                    region.len()
                ),
            });
        }
        let (c, r) = (
            f64_at(32),
            u32::from_le_bytes(sb[40..44].try_into().expect("4 bytes")),
        );
        if c != cluster.0 || r != replica.0 {
            return Err(StorageError::Foreign {
                subject,
                detail: format!(
                    "belongs to cluster {c} replica {r}, not cluster {} replica {}",
                    cluster.0, replica.0
                ),
            });
        }
        Ok(NvmLog::new(region, subject, area_len))
    }

    fn new(region: R, subject: String, area_len: u64) -> NvmLog<R> {
        NvmLog {
            region,
            subject,
            area_len,
            meta: Meta::default(),
            active: 0,
            staged: Meta::default(),
            dirty: Vec::new(),
            index: VecDeque::new(),
            written_token: PersistToken(0),
            durable_token: PersistToken(0),
            failed: false,
            stats: StorageStats::default(),
            discard_pending: 0,
            bug: None,
        }
    }

    /// Test-only: plant a commit-protocol bug.
    pub fn plant_bug(&mut self, bug: NvmBug) {
        self.bug = Some(bug);
    }

    pub fn region(&self) -> &R {
        &self.region
    }

    pub fn region_mut(&mut self) -> &mut R {
        &mut self.region
    }

    pub fn into_region(self) -> R {
        self.region
    }

    /// How this log flushes (recorded in run outputs).
    pub fn flush_mode(&self) -> FlushMode {
        self.region.flush_mode()
    }

    /// Bytes of record area not in use.
    pub fn free_bytes(&self) -> u64 {
        self.area_len - (self.staged.tail - self.staged.head)
    }

    /// Discards up to `len` bytes of free area just below the committed head
    /// (never more than the free space, so never a live byte). Call only
    /// when the committed metadata is durable and nothing is staged.
    fn discard_below_head(&mut self, len: u64) {
        self.discard_free(len, len);
    }

    /// Discards the next step (at most `DISCARD_STEP_BYTES_MAX`) of the
    /// free bytes truncations left to give back, oldest first. Call only
    /// when the committed metadata is durable and nothing is staged.
    fn discard_step(&mut self) {
        if self.discard_pending == 0 {
            return;
        }
        // The tail may have reused the oldest freed bytes since.
        let free = self.area_len - (self.meta.tail - self.meta.head);
        self.discard_pending = self.discard_pending.min(free);
        let step = self.discard_pending.min(DISCARD_STEP_BYTES_MAX);
        self.discard_free(self.discard_pending, step);
        self.discard_pending -= step;
    }

    /// Discards `len` bytes of free area starting `below` bytes below the
    /// committed head (clamped to the free space: never a live byte).
    fn discard_free(&mut self, below: u64, len: u64) {
        // Appends staged but not committed are written already: live too.
        let free = self.area_len - (self.staged.tail.max(self.meta.tail) - self.meta.head);
        let below = below.min(free);
        let len = len.min(below);
        if len == 0 {
            return;
        }
        let start = (self.meta.head % self.area_len + self.area_len - below) % self.area_len;
        let first = len.min(self.area_len - start);
        let mut bytes = self.region.discard(AREA_OFFSET + start, first);
        if first < len {
            bytes += self.region.discard(AREA_OFFSET, len - first);
        }
        self.stats.discarded += bytes;
    }

    /// Writes `data` at virtual position `pos` of the circular area.
    fn area_write(&mut self, pos: u64, data: &[u8]) {
        let off = pos % self.area_len;
        let first = (data.len() as u64).min(self.area_len - off) as usize;
        self.region.write(AREA_OFFSET + off, &data[..first]);
        self.dirty.push((AREA_OFFSET + off, first as u64));
        if first < data.len() {
            self.region.write(AREA_OFFSET, &data[first..]);
            self.dirty.push((AREA_OFFSET, (data.len() - first) as u64));
        }
    }

    fn area_read(&self, pos: u64, buf: &mut [u8]) {
        let off = pos % self.area_len;
        let first = (buf.len() as u64).min(self.area_len - off) as usize;
        self.region.read(AREA_OFFSET + off, &mut buf[..first]);
        if first < buf.len() {
            self.region.read(AREA_OFFSET, &mut buf[first..]);
        }
    }

    /// Appends one entry record at the staged tail (no fence).
    fn append(&mut self, e: &EntryWrite) -> Result<(), StorageError> {
        let (kind, payload) = encode_value(&e.value);
        let size = RECORD_HEADER_BYTES + pad8(payload.len() as u64);
        if self.staged.tail + size - self.staged.head > self.area_len {
            self.failed = true;
            return Err(StorageError::Full {
                subject: self.subject.clone(),
                detail: format!(
                    "a {size}-byte record does not fit in {} free bytes: truncate after a checkpoint",
                    self.free_bytes()
                ),
            });
        }
        let pos = self.staged.tail;
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4] = kind;
        header[8..16].copy_from_slice(&e.slot.0.to_le_bytes());
        header[16..24].copy_from_slice(&e.ballot.round.to_le_bytes());
        header[24..28].copy_from_slice(&e.ballot.replica.0.to_le_bytes());
        let crc = crc64(&[&pos.to_le_bytes(), &header[..32], payload]);
        header[32..40].copy_from_slice(&crc.to_le_bytes());
        self.area_write(pos, &header);
        self.area_write(pos + RECORD_HEADER_BYTES, payload);
        let pad = (pad8(payload.len() as u64) - payload.len() as u64) as usize;
        if pad > 0 {
            self.area_write(
                pos + RECORD_HEADER_BYTES + payload.len() as u64,
                &[0u8; 8][..pad],
            );
        }
        self.staged.tail = pos + size;
        self.staged.slot_end = self.staged.slot_end.max(e.slot.next());
        self.index.push_back((pos, e.slot));
        Ok(())
    }

    /// Reads and verifies the record at `pos`, which must end by `tail`.
    fn read_record(&self, pos: u64, tail: u64) -> Result<RecordRead, String> {
        if pos + RECORD_HEADER_BYTES > tail {
            return Err(format!("record header at {pos} runs past the tail {tail}"));
        }
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        self.area_read(pos, &mut header);
        let len = u64::from(u32::from_le_bytes(
            header[0..4].try_into().expect("4 bytes"),
        ));
        let size = RECORD_HEADER_BYTES + pad8(len);
        if pos + size > tail {
            return Err(format!(
                "record at {pos} of {len} bytes runs past the tail {tail}"
            ));
        }
        let mut payload = vec![0u8; len as usize];
        self.area_read(pos + RECORD_HEADER_BYTES, &mut payload);
        let crc = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
        if crc64(&[&pos.to_le_bytes(), &header[..32], &payload]) != crc {
            return Err(format!("record at {pos}: checksum mismatch"));
        }
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        let replica = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
        let value = decode_value(header[4], Bytes::from(payload)).ok_or_else(|| {
            format!("record at {pos}: checksum matches but the value does not decode")
        })?;
        Ok(RecordRead {
            slot: Slot(u64_at(8)),
            ballot: Ballot::new(u64_at(16), ReplicaId(replica)),
            value,
            size,
        })
    }

    /// Flushes `ranges` and fences: the one place this log makes anything
    /// durable (the `nvm.flush` span).
    fn persist(&mut self, ranges: &[(u64, u64)]) -> Result<(), StorageError> {
        let mut lines = coalesce_lines(ranges);
        let bytes: u64 = ranges.iter().map(|(_, l)| l).sum();
        let units: u64 = lines.iter().map(|(a, b)| b - a).sum();
        let _span = tracing::trace_span!("nvm.flush", bytes, lines = units).entered();
        let start = Instant::now();
        // Whole lines, but not past the region: its length need only be a
        // multiple of 8, so the last line may be partial.
        let region_len = self.region.len();
        for (first, end) in lines.drain(..) {
            let (from, to) = (first * LINE_BYTES, (end * LINE_BYTES).min(region_len));
            self.region.flush(from, to - from);
        }
        let fenced = self.region.fence();
        self.stats.flushes += 1;
        self.stats.bytes += bytes;
        self.stats.units += units;
        self.stats.flush_ns += start.elapsed().as_nanos() as u64;
        fenced.map_err(|e| {
            self.failed = true;
            let verb = match self.region.flush_mode() {
                FlushMode::Msync => "msync",
                _ => "fence",
            };
            StorageError::io(self.subject.clone(), verb, e)
        })
    }

    /// Makes `staged` the committed metadata: write it to the inactive slot,
    /// flush it with every dirty line, fence; flip the commit word, flush,
    /// fence.
    fn commit(&mut self) -> Result<(), StorageError> {
        let mut next = self.staged;
        next.seq = self.meta.seq + 1;
        let target = match self.bug {
            Some(NvmBug::InPlaceActiveSlot) => self.active,
            _ => 1 - self.active,
        };
        self.region.write(META_OFFSETS[target], &next.encode());
        self.dirty.push((META_OFFSETS[target], META_BYTES as u64));
        let dirty = std::mem::take(&mut self.dirty);
        if self.bug != Some(NvmBug::NoFlushBeforeCommitWord) {
            self.persist(&dirty)?;
        }
        let word = if target == 0 { COMMIT_A } else { COMMIT_B };
        self.region.write(COMMIT_WORD_OFFSET, &word.to_le_bytes());
        self.persist(&[(COMMIT_WORD_OFFSET, 8)])?;
        self.active = target;
        self.meta = next;
        self.staged = next;
        self.stats.commits += 1;
        Ok(())
    }

    /// Reads the committed metadata and every record in `[head, tail)`.
    /// `Err(Ok(pos, state))` reports the first bad record at `pos` with what
    /// was read before it (for salvage).
    fn scan(&mut self) -> Result<DurableState, ScanError> {
        let mut word = [0u8; 8];
        self.region.read(COMMIT_WORD_OFFSET, &mut word);
        let active = match u64::from_le_bytes(word) {
            COMMIT_A => 0,
            COMMIT_B => 1,
            0 => {
                return Err(ScanError::Fatal(StorageError::NotFormatted {
                    subject: self.subject.clone(),
                    detail: "the commit word was never written (format did not complete)".into(),
                }));
            }
            w => {
                return Err(ScanError::Fatal(
                    self.corrupt(format!("commit word {w:#018x}")),
                ));
            }
        };
        let mut mb = [0u8; META_BYTES];
        self.region.read(META_OFFSETS[active], &mut mb);
        let Some(meta) = Meta::decode(&mb) else {
            return Err(ScanError::Fatal(
                self.corrupt(format!("metadata slot {active}: checksum mismatch")),
            ));
        };
        if meta.head > meta.tail
            || meta.tail - meta.head > self.area_len
            || meta.tail % 8 != 0
            || meta.head % 8 != 0
        {
            return Err(ScanError::Fatal(self.corrupt(format!(
                "metadata slot {active}: head {} tail {} do not fit an area of {}",
                meta.head, meta.tail, self.area_len
            ))));
        }
        let mut entries: BTreeMap<Slot, (Ballot, Value)> = BTreeMap::new();
        let mut index = VecDeque::new();
        let mut pos = meta.head;
        let mut bad = None;
        while pos < meta.tail {
            match self.read_record(pos, meta.tail) {
                Ok(r) => {
                    index.push_back((pos, r.slot));
                    if r.slot >= meta.log_start {
                        entries.insert(r.slot, (r.ballot, r.value));
                    }
                    pos += r.size;
                }
                Err(why) => {
                    bad = Some((pos, why));
                    break;
                }
            }
        }
        self.meta = meta;
        self.active = active;
        self.staged = meta;
        self.index = index;
        self.dirty.clear();
        self.written_token = PersistToken(0);
        self.durable_token = PersistToken(0);
        let state = DurableState {
            promised: meta.promised,
            log_start: meta.log_start,
            entries: entries
                .into_iter()
                .map(|(slot, (ballot, value))| EntryWrite {
                    slot,
                    ballot,
                    value,
                })
                .collect(),
            commit: meta.commit,
            unprovable: (meta.unprovable_below > Slot::ZERO).then_some(Unprovable {
                below: meta.unprovable_below,
                ballot: meta.unprovable_ballot,
            }),
            membership: None,
        };
        match bad {
            None => Ok(state),
            Some((pos, why)) => Err(ScanError::BadRecord {
                pos,
                why,
                state: Box::new(state),
            }),
        }
    }

    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt {
            subject: self.subject.clone(),
            detail,
        }
    }

    /// Recovery after `recover` returned `Corrupt` for a bad record: keeps
    /// the records before it, cuts the log there, and reports every slot
    /// the lost records may have held as unprovable (the replica must not
    /// promise until it has learned them from its peers). Metadata or
    /// superblock corruption cannot be salvaged.
    pub fn salvage(&mut self) -> Result<DurableState, StorageError> {
        match self.scan() {
            Ok(state) => Ok(state),
            Err(ScanError::Fatal(e)) => Err(e),
            Err(ScanError::BadRecord {
                pos,
                why,
                mut state,
            }) => {
                tracing::warn!(subject = %self.subject, %why, "salvaging the NVM log: records from {pos} on are dropped");
                self.staged.tail = pos;
                while self.index.back().is_some_and(|(p, _)| *p >= pos) {
                    self.index.pop_back();
                }
                // Remember the loss durably: a restart before the replica has
                // learned it all back must not forget it.
                self.staged.unprovable_below =
                    self.staged.unprovable_below.max(self.staged.slot_end);
                self.staged.unprovable_ballot =
                    self.staged.unprovable_ballot.max(self.staged.promised);
                self.commit()?;
                self.discard_below_head(self.area_len);
                state.unprovable = Some(Unprovable {
                    below: self.meta.unprovable_below,
                    ballot: self.meta.unprovable_ballot,
                });
                Ok(*state)
            }
        }
    }
}

enum ScanError {
    Fatal(StorageError),
    BadRecord {
        pos: u64,
        why: String,
        /// What precedes the bad record (boxed: the error stays small).
        state: Box<DurableState>,
    },
}

/// Cache lines `[first, end)` covering `ranges`, merged.
fn coalesce_lines(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut lines: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|(off, len)| (off / LINE_BYTES, (off + len - 1) / LINE_BYTES + 1))
        .collect();
    lines.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(lines.len());
    for (a, b) in lines {
        match out.last_mut() {
            Some((_, end)) if a <= *end => *end = (*end).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl<R: PmRegion> Storage for NvmLog<R> {
    fn flush_name(&self) -> Option<&'static str> {
        Some("nvm.flush")
    }

    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Stopped {
                subject: self.subject.clone(),
            });
        }
        assert!(
            req.token > self.written_token,
            "persist requests must arrive in token order"
        );
        for e in &req.entries {
            self.append(e)?;
        }
        if let Some(b) = req.promised {
            self.staged.promised = self.staged.promised.max(b);
        }
        if let Some(c) = req.commit {
            self.staged.commit = self.staged.commit.max(c);
        }
        self.written_token = req.token;
        Ok(())
    }

    fn sync(&mut self) -> Result<PersistToken, StorageError> {
        if self.failed {
            return Err(StorageError::Stopped {
                subject: self.subject.clone(),
            });
        }
        if self.written_token > self.durable_token {
            self.commit()?;
            self.durable_token = self.written_token;
        }
        self.discard_step();
        Ok(self.durable_token)
    }

    fn recover(&mut self) -> Result<DurableState, StorageError> {
        match self.scan() {
            Ok(state) => {
                // Free space touched before the restart (or before a crash
                // between a truncation's commit and its discard).
                self.discard_below_head(self.area_len);
                Ok(state)
            }
            Err(ScanError::Fatal(e)) => Err(e),
            Err(ScanError::BadRecord { why, .. }) => Err(self.corrupt(why)),
        }
    }

    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Stopped {
                subject: self.subject.clone(),
            });
        }
        if slot <= self.staged.log_start {
            return Ok(());
        }
        // The new head is the first record (in log order) of a slot at or
        // above `slot`; later records of lower slots stay, and recovery
        // ignores them (they are below the log start).
        let head = self
            .index
            .iter()
            .find(|(_, s)| *s >= slot)
            .map_or(self.staged.tail, |(p, _)| *p);
        while self.index.front().is_some_and(|(p, _)| *p < head) {
            self.index.pop_front();
        }
        let freed = head - self.staged.head;
        self.staged.head = head;
        self.staged.log_start = slot;
        self.commit()?;
        // Only now, with the new head durable, may the freed bytes read as
        // zeros: a crash before this point recovers the old head.
        // A step at a time (this one now, the rest on the next syncs).
        self.discard_pending =
            (self.discard_pending + freed + DISCARD_BEHIND_BYTES).min(self.area_len);
        self.discard_step();
        Ok(())
    }

    fn durable_token(&self) -> PersistToken {
        self.durable_token
    }

    fn stats(&self) -> StorageStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::region::{CrashImage, SimRegion};
    use super::*;
    use crate::core::{BatchBuilder, ClientId};

    fn value(n: usize) -> Value {
        let mut b = BatchBuilder::with_capacity(n);
        b.push(ClientId(1), 1, 1, &vec![7u8; n]);
        Value::Batch(b.finish())
    }

    fn req(token: u64, slots: std::ops::Range<u64>, size: usize) -> PersistRequest {
        PersistRequest {
            token: PersistToken(token),
            promised: Some(Ballot::new(token, ReplicaId(1))),
            entries: slots
                .map(|s| EntryWrite {
                    slot: Slot(s),
                    ballot: Ballot::new(token, ReplicaId(1)),
                    value: value(size),
                })
                .collect(),
            commit: Some(Slot(0)),
        }
    }

    fn fresh(len: u64) -> NvmLog<SimRegion> {
        NvmLog::format(SimRegion::new(len), ClusterId(1), ReplicaId(1)).unwrap()
    }

    fn reopen(log: NvmLog<SimRegion>, image: CrashImage) -> Result<DurableState, StorageError> {
        let region = SimRegion::from_image(log.region().crash_image(image));
        let mut log = NvmLog::open(region, ClusterId(1), ReplicaId(1))?;
        log.recover()
    }

    #[test]
    fn committed_records_survive_and_uncommitted_ones_do_not() {
        let mut log = fresh(16 * 1024);
        log.write(req(1, 0..3, 100)).unwrap();
        assert_eq!(log.sync().unwrap(), PersistToken(1));
        log.write(req(2, 3..5, 100)).unwrap();
        let state = reopen(log, CrashImage::All).unwrap();
        assert_eq!(state.entries.len(), 3, "the second request never committed");
        assert_eq!(state.promised, Ballot::new(1, ReplicaId(1)));
    }

    #[test]
    fn a_commit_costs_two_fences_however_many_records() {
        let mut log = fresh(64 * 1024);
        let before = log.stats().flushes;
        log.write(req(1, 0..50, 64)).unwrap();
        log.sync().unwrap();
        assert_eq!(log.stats().flushes - before, 2);
        assert!(log.stats().units > 50, "every dirty line was flushed");
    }

    #[test]
    fn the_area_wraps_and_truncation_frees_it() {
        let mut log = fresh(AREA_OFFSET + 2048);
        let mut token = 0;
        for round in 0..20u64 {
            token += 1;
            log.write(req(token, round * 4..round * 4 + 4, 100))
                .unwrap();
            log.sync().unwrap();
            log.truncate_below(Slot(round * 4 + 2)).unwrap();
        }
        let state = reopen(log, CrashImage::None).unwrap();
        assert_eq!(state.log_start, Slot(78));
        assert_eq!(
            state.entries.iter().map(|e| e.slot.0).collect::<Vec<_>>(),
            vec![78, 79]
        );
    }

    #[test]
    fn truncation_returns_the_pages_of_a_tmpfs_file_and_recovery_still_works() {
        use super::region::MmapRegion;
        use std::os::unix::fs::MetadataExt;
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("no /dev/shm: skipped");
            return;
        }
        let path = shm.join(format!("nvm-discard-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;
        let area = 1 << 20;
        let mode = FlushMode::detect();
        let open = |create| MmapRegion::open(&path, AREA_OFFSET + area, create, mode).unwrap();
        let mut log = NvmLog::format(open(true), ClusterId(1), ReplicaId(1)).unwrap();
        // About 600 KiB of records, then all but the last 10 truncated.
        log.write(req(1, 0..150, 4000)).unwrap();
        log.sync().unwrap();
        let full = allocated();
        assert!(full >= 150 * 4000, "{full}");
        log.truncate_below(Slot(140)).unwrap();
        // A step per truncation or sync (at most DISCARD_STEP_BYTES_MAX).
        let mut steps = 1;
        while log.discard_pending > 0 {
            log.sync().unwrap();
            steps += 1;
            assert!(steps < 100, "the discard never finishes");
        }
        let after = allocated();
        assert!(after + 500 * 1024 <= full, "allocated {full} -> {after}");
        assert!(log.stats().discarded >= 500 * 1024);
        assert!(
            after >= AREA_OFFSET + 10 * 4000,
            "live records keep their pages"
        );
        // The tail wraps into the punched pages (they come back zeroed).
        log.write(req(2, 150..350, 4000)).unwrap();
        log.sync().unwrap();
        assert!(log.meta.tail > area, "the area wrapped");
        // Garbage in free space (as a crash before a discard leaves it)
        // is neither read by recovery nor kept by it.
        let free_at = AREA_OFFSET + log.meta.tail % area + 4096;
        log.region_mut().write(free_at, &[0xAB; 32 * 1024]);
        log.region_mut().flush(free_at, 32 * 1024);
        log.region_mut().fence().unwrap();
        let live = log.meta.tail - log.meta.head;
        drop(log);
        let mut log = NvmLog::open(open(false), ClusterId(1), ReplicaId(1)).unwrap();
        let state = log.recover().unwrap();
        assert_eq!(state.log_start, Slot(140));
        assert_eq!(
            state.entries.iter().map(|e| e.slot.0).collect::<Vec<_>>(),
            (140..350).collect::<Vec<_>>()
        );
        let recovered = allocated();
        assert!(
            recovered <= AREA_OFFSET + live + 2 * 4096,
            "recovery discards free space: {recovered} allocated for {live} live bytes"
        );
        // And the log keeps working over the discarded pages.
        log.write(req(1, 350..380, 4000)).unwrap();
        log.sync().unwrap();
        log.truncate_below(Slot(370)).unwrap();
        drop(log);
        let mut log = NvmLog::open(open(false), ClusterId(1), ReplicaId(1)).unwrap();
        let state = log.recover().unwrap();
        assert_eq!(
            state.entries.iter().map(|e| e.slot.0).collect::<Vec<_>>(),
            (370..380).collect::<Vec<_>>()
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_log_stops_with_an_error_naming_it() {
        let mut log = fresh(AREA_OFFSET + 1024);
        log.write(req(1, 0..3, 100)).unwrap();
        let err = log.write(req(2, 3..20, 100)).unwrap_err();
        assert!(matches!(err, StorageError::Full { .. }), "{err}");
        assert!(err.to_string().contains("simulated region"));
        assert!(matches!(log.sync(), Err(StorageError::Stopped { .. })));
    }

    #[test]
    fn a_failed_fence_stops_the_log() {
        let mut log = fresh(16 * 1024);
        log.write(req(1, 0..1, 10)).unwrap();
        log.region_mut().fail_fences();
        let err = log.sync().unwrap_err();
        assert!(err.to_string().contains("fence simulated region"), "{err}");
        assert!(matches!(log.sync(), Err(StorageError::Stopped { .. })));
    }

    #[test]
    fn foreign_and_blank_regions_are_refused() {
        let log = fresh(16 * 1024);
        let image = log.region().durable_image().to_vec();
        let other = NvmLog::open(SimRegion::from_image(image), ClusterId(2), ReplicaId(1));
        assert!(matches!(other, Err(StorageError::Foreign { .. })));
        let blank = NvmLog::open(SimRegion::new(16 * 1024), ClusterId(1), ReplicaId(1));
        assert!(matches!(blank, Err(StorageError::NotFormatted { .. })));
    }

    #[test]
    fn a_corrupt_record_is_reported_and_can_be_salvaged() {
        let mut log = fresh(16 * 1024);
        log.write(req(1, 0..4, 100)).unwrap();
        log.sync().unwrap();
        // Flip a bit in the second record's payload.
        let second = log.index[1].0;
        log.region_mut()
            .flip_bit(AREA_OFFSET + second + RECORD_HEADER_BYTES + 3, 2);
        let err = log.recover().unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        let state = log.salvage().unwrap();
        assert_eq!(state.entries.len(), 1, "only the record before the bad one");
        let lost = Unprovable {
            below: Slot(4),
            ballot: Ballot::new(1, ReplicaId(1)),
        };
        assert_eq!(state.unprovable, Some(lost));
        // The salvaged log is consistent again and keeps working, and a
        // restart still knows what was lost.
        log.write(req(2, 1..2, 10)).unwrap();
        log.sync().unwrap();
        let state = log.recover().unwrap();
        assert_eq!(state.entries.len(), 2);
        assert_eq!(state.unprovable, Some(lost));
    }
}
