//! The disk write-ahead log: preallocated segment files of checksummed
//! records, group commit with one `fdatasync` per batch, and recovery that
//! tells a torn tail (truncated) from corruption (reported).
//!
//! A segment `wal-<seq>.log` starts with a 64-byte header (magic, version,
//! seq, first batch id, cluster, replica, CRC32C) followed by records:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | header CRC32C over the segment seq, the record's offset and bytes 4..48 |
//! | 4..8 | payload CRC32C |
//! | 8..12 | payload length |
//! | 12 | kind: entry (batch / no-op), promise, commit, truncate, batch end, seal |
//! | 16..24 | batch id (one per group commit; never decreases along the log) |
//! | 24..44 | slot / ballot (or the promised ballot, commit point, log start) |
//! | 48.. | payload, padding (0xA5) to 8 bytes, an 8-byte trailer (0xA5…) |
//!
//! Stable state (promised ballot, commit hint, log start) is a record like
//! any other, so it is written atomically with the entries of its batch,
//! and it is written again at the start of every segment so that deleting
//! old segments never loses it. A sync appends a `BATCH_END` record, writes
//! the batch with one `pwrite` per segment touched and `fdatasync`s them.
//!
//! Recovery reads the segments in order and stops at the first invalid
//! record at `p`. It is a **torn tail** (truncated: the region from `p` is
//! zeroed) only if the record shows the mark of a write that never reached
//! the disk (a sector of it, from `p` on, still all zero: segments are
//! preallocated with zeros and kept zero past the end) **and** nothing
//! written after its batch was synced survives (no valid record of a later
//! batch anywhere after it). Otherwise it is **corruption**: `Corrupt`, never
//! a silent cut. Limits: a medium that zeroes a whole sector of the last
//! batch, or a payload with 512 aligned zero bytes that is then corrupted,
//! reads as a torn write.

pub mod file;
mod recover;

use std::collections::VecDeque;
use std::time::Instant;

use self::file::{SECTOR_BYTES, WalDir, WalFile};
use super::pad8;
use super::{Storage, StorageError, StorageStats};
use crate::core::codec::encode_value;
use crate::core::{
    Ballot, ClusterId, DurableState, PersistRequest, PersistToken, ReplicaId, Slot, Unprovable,
};

const MAGIC: u64 = u64::from_le_bytes(*b"PAXWAL01");
const VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: u64 = 48;
const TRAILER: u64 = 0xA5A5_A5A5_A5A5_A5A5;
const PAD: u8 = 0xA5;
/// Default size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

const KIND_PROMISE: u8 = 10;
const KIND_COMMIT: u8 = 11;
const KIND_TRUNCATE: u8 = 12;
const KIND_BATCH_END: u8 = 13;
const KIND_SEAL: u8 = 14;
const KIND_UNPROVABLE: u8 = 15;

/// Bytes a record with `payload` bytes occupies.
pub const fn record_bytes(payload: u64) -> u64 {
    RECORD_HEADER_BYTES + pad8(payload) + 8
}

/// A record without payload (stable state, batch end, seal).
const SMALL_RECORD_BYTES: u64 = record_bytes(0);

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn header_crc(seg: u64, offset: u64, rest: &[u8]) -> u32 {
    let mut pos = [0u8; 16];
    pos[..8].copy_from_slice(&seg.to_le_bytes());
    pos[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&pos), rest)
}

/// One record's fields.
#[derive(Clone, Copy, Debug)]
struct Fields {
    kind: u8,
    batch: u64,
    a: u64,
    b: u64,
    c: u32,
}

/// Appends the encoding of a record at `offset` of segment `seg` to `out`.
fn encode_record(out: &mut Vec<u8>, seg: u64, offset: u64, f: Fields, payload: &[u8]) {
    let mut h = [0u8; RECORD_HEADER_BYTES as usize];
    h[4..8].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12] = f.kind;
    h[16..24].copy_from_slice(&f.batch.to_le_bytes());
    h[24..32].copy_from_slice(&f.a.to_le_bytes());
    h[32..40].copy_from_slice(&f.b.to_le_bytes());
    h[40..44].copy_from_slice(&f.c.to_le_bytes());
    h[44..48].copy_from_slice(&[PAD; 4]);
    let hcrc = header_crc(seg, offset, &h[4..]);
    h[0..4].copy_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let pad = (pad8(payload.len() as u64) - payload.len() as u64) as usize;
    out.extend(std::iter::repeat_n(PAD, pad));
    out.extend_from_slice(&TRAILER.to_le_bytes());
}

/// A record read back.
struct Parsed {
    f: Fields,
    payload: std::ops::Range<usize>,
    size: u64,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The record at `p` if its header checksum holds: (fields, size).
fn parse_header(buf: &[u8], seg: u64, p: u64) -> Option<(Fields, u64)> {
    let h = buf.get(p as usize..(p + RECORD_HEADER_BYTES) as usize)?;
    if header_crc(seg, p, &h[4..]) != u32_at(h, 0) {
        return None;
    }
    let len = u64::from(u32_at(h, 8));
    let f = Fields {
        kind: h[12],
        batch: u64_at(h, 16),
        a: u64_at(h, 24),
        b: u64_at(h, 32),
        c: u32_at(h, 40),
    };
    Some((f, record_bytes(len)))
}

/// The whole record at `p` if it is valid: header, payload and trailer.
fn parse_record(buf: &[u8], seg: u64, p: u64) -> Option<Parsed> {
    let (f, size) = parse_header(buf, seg, p)?;
    let end = p.checked_add(size)?;
    if end > buf.len() as u64 {
        return None;
    }
    let h = &buf[p as usize..];
    let len = u32_at(h, 8) as usize;
    let start = (p + RECORD_HEADER_BYTES) as usize;
    let payload = start..start + len;
    if crc32c::crc32c(&buf[payload.clone()]) != u32_at(h, 4) {
        return None;
    }
    if u64_at(buf, (end - 8) as usize) != TRAILER {
        return None;
    }
    Some(Parsed { f, payload, size })
}

/// Whether the invalid record at `p` bears the mark of a write that never
/// reached the disk: some sector it covers is all zero from `p` on.
fn torn_signature(buf: &[u8], seg: u64, p: u64) -> bool {
    let end = match parse_header(buf, seg, p) {
        Some((_, size)) => p.saturating_add(size),
        None => p + RECORD_HEADER_BYTES,
    }
    .min(buf.len() as u64);
    if p >= buf.len() as u64 {
        return true;
    }
    let mut sector = p / SECTOR_BYTES;
    while sector * SECTOR_BYTES < end.max(p + 1) {
        let a = (sector * SECTOR_BYTES).max(p) as usize;
        let b = ((sector + 1) * SECTOR_BYTES).min(buf.len() as u64) as usize;
        if buf[a..b].iter().all(|x| *x == 0) {
            return true;
        }
        sector += 1;
    }
    false
}

/// Valid records at 8-byte offsets from `from` on (zero words skipped).
fn later_records(buf: &[u8], seg: u64, from: u64) -> impl Iterator<Item = (u64, Parsed)> + '_ {
    let mut q = from;
    std::iter::from_fn(move || {
        while q + RECORD_HEADER_BYTES <= buf.len() as u64 {
            let at = q;
            q += 8;
            if u64_at(buf, at as usize) == 0 {
                continue;
            }
            if let Some(r) = parse_record(buf, seg, at) {
                return Some((at, r));
            }
        }
        None
    })
}

struct SegmentHeader {
    seq: u64,
    first_batch: u64,
    cluster: u64,
    replica: u32,
}

fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.seq.to_le_bytes());
    b[24..32].copy_from_slice(&h.first_batch.to_le_bytes());
    b[32..40].copy_from_slice(&h.cluster.to_le_bytes());
    b[40..44].copy_from_slice(&h.replica.to_le_bytes());
    let crc = crc32c::crc32c(&b[..48]);
    b[48..52].copy_from_slice(&crc.to_le_bytes());
    b
}

enum HeaderRead {
    Valid(SegmentHeader),
    Zero,
    Bad(&'static str),
}

fn decode_segment_header(buf: &[u8]) -> HeaderRead {
    let Some(b) = buf.get(..SEGMENT_HEADER_BYTES as usize) else {
        return HeaderRead::Bad("segment shorter than its header");
    };
    if b.iter().all(|x| *x == 0) {
        return HeaderRead::Zero;
    }
    if crc32c::crc32c(&b[..48]) != u32_at(b, 48) {
        return HeaderRead::Bad("segment header checksum mismatch");
    }
    if u64_at(b, 0) != MAGIC || u32_at(b, 8) != VERSION {
        return HeaderRead::Bad("not a WAL segment of this version");
    }
    HeaderRead::Valid(SegmentHeader {
        seq: u64_at(b, 16),
        first_batch: u64_at(b, 24),
        cluster: u64_at(b, 32),
        replica: u32_at(b, 40),
    })
}

/// Test-only breakages; the WAL crash harness must catch each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalBug {
    /// `sync` writes the batch but skips `fdatasync`.
    SkipFdatasync,
    /// Recovery treats every invalid record as a torn tail (cuts silently).
    EveryInvalidRecordIsTorn,
}

/// A live segment.
struct Segment<F> {
    seq: u64,
    name: String,
    file: F,
    /// Highest entry slot it holds (for truncation).
    max_slot: Option<Slot>,
}

/// Bytes staged for one segment, not yet written.
struct Staged {
    seq: u64,
    offset: u64,
    bytes: Vec<u8>,
}

/// The write-ahead log in directory `D`.
pub struct Wal<D: WalDir> {
    dir: D,
    cluster: ClusterId,
    replica: ReplicaId,
    segment_bytes: u64,
    /// Live segments in order; the last one is written.
    segments: VecDeque<Segment<D::File>>,
    /// Next offset in the last segment (staged bytes included).
    write_off: u64,
    staged: Vec<Staged>,
    /// Id of the batch being staged.
    batch: u64,
    promised: Ballot,
    commit: Slot,
    log_start: Slot,
    slot_end: Slot,
    /// Set by a salvage and kept: what the log may have lost.
    unprovable: Option<Unprovable>,
    written_token: PersistToken,
    durable_token: PersistToken,
    failed: bool,
    stats: StorageStats,
    bug: Option<WalBug>,
}

/// Where and why recovery stopped early.
struct BadRecord {
    segment: usize,
    offset: u64,
    why: String,
    /// The batch the bad record belongs to (or the last one before it).
    batch: u64,
}

impl<D: WalDir> Wal<D> {
    /// Creates an empty log in `dir`; refuses a directory that already holds one.
    pub fn format(
        dir: D,
        cluster: ClusterId,
        replica: ReplicaId,
        segment_bytes: u64,
    ) -> Result<Wal<D>, StorageError> {
        let names = dir
            .list()
            .map_err(|e| StorageError::io(dir.path_of(""), "list", e))?;
        if names.iter().any(|n| parse_segment_name(n).is_some()) {
            return Err(StorageError::Foreign {
                subject: dir.path_of(""),
                detail: "already holds a log; refusing to overwrite it".into(),
            });
        }
        let mut wal = Wal::new(dir, cluster, replica, segment_bytes);
        wal.batch = 1;
        wal.start_segment(1, 0)?;
        wal.sync()?;
        Ok(wal)
    }

    /// Opens the log in `dir`; call [`Storage::recover`] next.
    pub fn open(dir: D, cluster: ClusterId, replica: ReplicaId, segment_bytes: u64) -> Wal<D> {
        Wal::new(dir, cluster, replica, segment_bytes)
    }

    fn new(dir: D, cluster: ClusterId, replica: ReplicaId, segment_bytes: u64) -> Wal<D> {
        assert!(
            segment_bytes >= SEGMENT_HEADER_BYTES + 8 * SMALL_RECORD_BYTES,
            "segments too small"
        );
        Wal {
            dir,
            cluster,
            replica,
            segment_bytes,
            segments: VecDeque::new(),
            write_off: 0,
            staged: Vec::new(),
            batch: 1,
            promised: Ballot::ZERO,
            commit: Slot::ZERO,
            log_start: Slot::ZERO,
            slot_end: Slot::ZERO,
            unprovable: None,
            written_token: PersistToken(0),
            durable_token: PersistToken(0),
            failed: false,
            stats: StorageStats::default(),
            bug: None,
        }
    }

    /// Test-only: plant a bug.
    pub fn plant_bug(&mut self, bug: WalBug) {
        self.bug = Some(bug);
    }

    pub fn dir(&self) -> &D {
        &self.dir
    }

    fn subject(&self) -> String {
        self.dir.path_of("")
    }

    fn fail(&mut self, name: &str, verb: &'static str, e: std::io::Error) -> StorageError {
        self.failed = true;
        StorageError::io(self.dir.path_of(name), verb, e)
    }

    /// Stages one record in the current segment, rolling to a new segment
    /// first if it does not fit (leaving room for the seal).
    fn stage(&mut self, f: Fields, payload: &[u8]) -> Result<(), StorageError> {
        let size = record_bytes(payload.len() as u64);
        let cur_len = self.segments.back().expect("a live segment").file.len();
        if self.write_off + size + SMALL_RECORD_BYTES > cur_len {
            self.roll(size)?;
        }
        self.stage_here(f, payload);
        Ok(())
    }

    fn stage_here(&mut self, f: Fields, payload: &[u8]) {
        let seq = self.segments.back().expect("a live segment").seq;
        let offset = self.write_off;
        if self.staged.last().is_none_or(|s| s.seq != seq) {
            self.staged.push(Staged {
                seq,
                offset,
                bytes: Vec::new(),
            });
        }
        let buf = &mut self.staged.last_mut().expect("just pushed").bytes;
        encode_record(buf, seq, offset, f, payload);
        self.write_off += record_bytes(payload.len() as u64);
    }

    fn small(&self, kind: u8, a: u64, b: u64, c: u32) -> Fields {
        Fields {
            kind,
            batch: self.batch,
            a,
            b,
            c,
        }
    }

    /// Seals the current segment and starts the next, big enough for a
    /// record of `need` bytes.
    fn roll(&mut self, need: u64) -> Result<(), StorageError> {
        let seal = self.small(KIND_SEAL, 0, 0, 0);
        self.stage_here(seal, &[]);
        let seq = self.segments.back().expect("a live segment").seq + 1;
        self.start_segment(seq, need)
    }

    /// Creates segment `seq` and stages its header and the stable state.
    fn start_segment(&mut self, seq: u64, need: u64) -> Result<(), StorageError> {
        let name = segment_name(seq);
        let len = self
            .segment_bytes
            .max(SEGMENT_HEADER_BYTES + 4 * SMALL_RECORD_BYTES + need);
        let len = len.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        let file = match self.dir.create(&name, len) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(&name, "create", e)),
        };
        if let Err(e) = self.dir.sync_dir() {
            return Err(self.fail("", "fsync directory", e));
        }
        self.segments.push_back(Segment {
            seq,
            name,
            file,
            max_slot: None,
        });
        let header = encode_segment_header(&SegmentHeader {
            seq,
            first_batch: self.batch,
            cluster: self.cluster.0,
            replica: self.replica.0,
        });
        self.staged.push(Staged {
            seq,
            offset: 0,
            bytes: header.to_vec(),
        });
        self.write_off = SEGMENT_HEADER_BYTES;
        // The stable state again, so older segments can be deleted.
        let p = self.small(
            KIND_PROMISE,
            self.promised.round,
            0,
            self.promised.replica.0,
        );
        self.stage_here(p, &[]);
        let c = self.small(KIND_COMMIT, self.commit.0, 0, 0);
        self.stage_here(c, &[]);
        let t = self.small(KIND_TRUNCATE, self.log_start.0, 0, 0);
        self.stage_here(t, &[]);
        if let Some(u) = self.unprovable {
            let r = self.small(
                KIND_UNPROVABLE,
                u.below.0,
                u.ballot.round,
                u.ballot.replica.0,
            );
            self.stage_here(r, &[]);
        }
        Ok(())
    }

    /// Writes the staged batch (ending it) and `fdatasync`s each file
    /// touched: the `wal.fsync` span.
    fn flush(&mut self) -> Result<(), StorageError> {
        // The batch end carries the promise too, so a salvage that loses a
        // promise record in this batch still learns it.
        let (round, replica) = (self.promised.round, self.promised.replica.0);
        let end = self.small(KIND_BATCH_END, self.slot_end.0, round, replica);
        self.stage(end, &[])?;
        let bytes: u64 = self.staged.iter().map(|s| s.bytes.len() as u64).sum();
        let pages = self
            .staged
            .iter()
            .map(|s| (s.offset + s.bytes.len() as u64).div_ceil(4096) - s.offset / 4096)
            .sum::<u64>();
        let _span = tracing::trace_span!("wal.fsync", bytes, pages).entered();
        let start = Instant::now();
        let staged = std::mem::take(&mut self.staged);
        for s in &staged {
            let i = self.index_of(s.seq);
            if let Err(e) = self.segments[i].file.write_at(s.offset, &s.bytes) {
                let name = self.segments[i].name.clone();
                return Err(self.fail(&name, "write", e));
            }
        }
        for s in staged
            .iter()
            .filter(|_| self.bug != Some(WalBug::SkipFdatasync))
        {
            let i = self.index_of(s.seq);
            if let Err(e) = self.segments[i].file.sync_data() {
                let name = self.segments[i].name.clone();
                return Err(self.fail(&name, "fdatasync", e));
            }
            self.stats.flushes += 1;
        }
        self.stats.bytes += bytes;
        self.stats.units += pages;
        self.stats.flush_ns += start.elapsed().as_nanos() as u64;
        self.stats.commits += 1;
        self.batch += 1;
        Ok(())
    }

    fn index_of(&self, seq: u64) -> usize {
        let first = self.segments.front().expect("a live segment").seq;
        (seq - first) as usize
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Stopped {
                subject: self.subject(),
            });
        }
        assert!(
            !self.segments.is_empty(),
            "format or recover before writing"
        );
        Ok(())
    }

    /// Recovery after `recover` returned `Corrupt`: keeps what precedes the
    /// first bad record, cuts the log there, and reports as unprovable every
    /// slot the dropped part may have held.
    pub fn salvage(&mut self) -> Result<DurableState, StorageError> {
        self.load(true)
    }

    /// Names of the live segments (oldest first).
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.iter().map(|s| s.name.clone()).collect()
    }
}

impl<D: WalDir> Storage for Wal<D> {
    fn flush_name(&self) -> Option<&'static str> {
        Some("wal.fsync")
    }

    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError> {
        self.check_usable()?;
        assert!(
            req.token > self.written_token,
            "persist requests must arrive in token order"
        );
        if let Some(p) = req.promised
            && p > self.promised
        {
            self.promised = p;
            let f = self.small(KIND_PROMISE, p.round, 0, p.replica.0);
            self.stage(f, &[])?;
        }
        for e in &req.entries {
            let (kind, payload) = encode_value(&e.value);
            let f = Fields {
                kind,
                batch: self.batch,
                a: e.slot.0,
                b: e.ballot.round,
                c: e.ballot.replica.0,
            };
            self.stage(f, payload)?;
            let seg = self.segments.back_mut().expect("a live segment");
            seg.max_slot = seg.max_slot.max(Some(e.slot));
            self.slot_end = self.slot_end.max(e.slot.next());
        }
        if let Some(c) = req.commit
            && c > self.commit
        {
            self.commit = c;
            let f = self.small(KIND_COMMIT, c.0, 0, 0);
            self.stage(f, &[])?;
        }
        self.written_token = req.token;
        Ok(())
    }

    fn sync(&mut self) -> Result<PersistToken, StorageError> {
        self.check_usable()?;
        if self.written_token > self.durable_token || !self.staged.is_empty() {
            self.flush()?;
            self.durable_token = self.written_token;
        }
        Ok(self.durable_token)
    }

    fn recover(&mut self) -> Result<DurableState, StorageError> {
        self.load(false)
    }

    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError> {
        self.check_usable()?;
        if slot <= self.log_start {
            return Ok(());
        }
        self.log_start = slot;
        let f = self.small(KIND_TRUNCATE, slot.0, 0, 0);
        self.stage(f, &[])?;
        // The new log start is durable before any segment goes.
        self.flush()?;
        self.durable_token = self.written_token;
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].max_slot.is_none_or(|m| m < slot) {
            let s = self.segments.pop_front().expect("checked");
            if let Err(e) = self.dir.remove(&s.name) {
                return Err(self.fail(&s.name, "remove", e));
            }
            removed = true;
        }
        if removed && let Err(e) = self.dir.sync_dir() {
            return Err(self.fail("", "fsync directory", e));
        }
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
    use crate::core::{EntryWrite, Value};
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::file::{DiskCrash, SimDir, SimDisk};
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
            commit: Some(Slot(token)),
        }
    }

    fn disk() -> Rc<RefCell<SimDisk>> {
        Rc::new(RefCell::new(SimDisk::new()))
    }

    fn fresh(d: &Rc<RefCell<SimDisk>>, seg: u64) -> Wal<SimDir> {
        Wal::format(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), seg).unwrap()
    }

    fn reopen(d: &Rc<RefCell<SimDisk>>, which: DiskCrash) -> Result<DurableState, StorageError> {
        let image = Rc::new(RefCell::new(d.borrow().crash_image(which)));
        Wal::open(SimDir::new(image), ClusterId(1), ReplicaId(1), 4096).recover()
    }

    #[test]
    fn synced_batches_survive_and_unsynced_ones_are_a_torn_tail() {
        let d = disk();
        let mut wal = fresh(&d, 4096);
        wal.write(req(1, 0..3, 100)).unwrap();
        wal.sync().unwrap();
        wal.write(req(2, 3..6, 100)).unwrap();
        let s = reopen(&d, DiskCrash::None).unwrap();
        assert_eq!(s.entries.len(), 3);
        assert_eq!(
            (s.promised, s.commit),
            (Ballot::new(1, ReplicaId(1)), Slot(1))
        );
    }

    #[test]
    fn one_fdatasync_per_batch_and_segments_roll() {
        let d = disk();
        let mut wal = fresh(&d, 2048);
        let before = wal.stats().flushes;
        wal.write(req(1, 0..2, 100)).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.stats().flushes - before, 1);
        for t in 2..20 {
            wal.write(req(t, t * 2..t * 2 + 2, 100)).unwrap();
            wal.sync().unwrap();
        }
        assert!(wal.segment_names().len() > 2, "{:?}", wal.segment_names());
        let s = reopen(&d, DiskCrash::None).unwrap();
        assert_eq!(s.entries.len(), 2 + 18 * 2);
        assert_eq!(s.promised, Ballot::new(19, ReplicaId(1)));
    }

    #[test]
    fn truncation_deletes_old_segments_and_keeps_stable_state() {
        let d = disk();
        let mut wal = fresh(&d, 2048);
        for t in 1..30 {
            wal.write(req(t, t * 2..t * 2 + 2, 100)).unwrap();
            wal.sync().unwrap();
        }
        let before = wal.segment_names().len();
        wal.truncate_below(Slot(50)).unwrap();
        assert!(wal.segment_names().len() < before);
        let s = reopen(&d, DiskCrash::None).unwrap();
        assert_eq!(s.log_start, Slot(50));
        assert_eq!(s.entries.first().map(|e| e.slot), Some(Slot(50)));
        assert_eq!(
            s.promised,
            Ballot::new(29, ReplicaId(1)),
            "promise survives deleted segments"
        );
    }

    #[test]
    fn middle_corruption_is_reported_and_a_corrupt_last_batch_too() {
        let d = disk();
        let mut wal = fresh(&d, 64 * 1024);
        for t in 1..5 {
            wal.write(req(t, t * 3..t * 3 + 3, 200)).unwrap();
            wal.sync().unwrap();
        }
        let name = wal.segment_names()[0].clone();
        // A bit flip inside the first batch's entries (synced long ago).
        let mut bad = d.borrow().crash_image(DiskCrash::None);
        bad.flip_bit(&name, SEGMENT_HEADER_BYTES + 4 * SMALL_RECORD_BYTES + 60, 3);
        let r = Wal::open(
            SimDir::new(Rc::new(RefCell::new(bad))),
            ClusterId(1),
            ReplicaId(1),
            4096,
        )
        .recover();
        assert!(matches!(r, Err(StorageError::Corrupt { .. })), "{r:?}");
        // A bit flip in the last synced batch: no zero sector, so not torn.
        let mut bad = d.borrow().crash_image(DiskCrash::None);
        let last_entry = wal.write_off - SMALL_RECORD_BYTES * 3 - 100;
        bad.flip_bit(&name, last_entry, 1);
        let r = Wal::open(
            SimDir::new(Rc::new(RefCell::new(bad))),
            ClusterId(1),
            ReplicaId(1),
            4096,
        )
        .recover();
        assert!(matches!(r, Err(StorageError::Corrupt { .. })), "{r:?}");
    }

    #[test]
    fn salvage_cuts_at_the_corruption_and_bounds_what_was_lost() {
        let d = disk();
        let mut wal = fresh(&d, 64 * 1024);
        for t in 1..5 {
            wal.write(req(t, t * 3..t * 3 + 3, 200)).unwrap();
            wal.sync().unwrap();
        }
        let name = wal.segment_names()[0].clone();
        d.borrow_mut()
            .flip_bit(&name, SEGMENT_HEADER_BYTES + 4 * SMALL_RECORD_BYTES + 60, 3);
        let mut wal = Wal::open(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), 4096);
        assert!(wal.recover().is_err());
        let s = wal.salvage().unwrap();
        assert!(s.entries.len() < 12);
        let lost = s.unprovable.unwrap();
        assert!(lost.below >= Slot(15), "{lost:?}");
        assert_eq!(
            s.promised,
            Ballot::new(4, ReplicaId(1)),
            "the promise is vouched for by a later batch end"
        );
        assert_eq!(lost.ballot, s.promised);
        wal.write(req(9, 20..21, 10)).unwrap();
        wal.sync().unwrap();
        let s = Wal::open(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), 4096)
            .recover()
            .unwrap();
        assert!(s.entries.iter().any(|e| e.slot == Slot(20)));
        assert_eq!(
            s.unprovable,
            Some(lost),
            "a restart still knows what was lost"
        );
    }

    #[test]
    fn a_failed_fdatasync_stops_the_log_and_names_the_file() {
        let d = disk();
        let mut wal = fresh(&d, 4096);
        wal.write(req(1, 0..1, 10)).unwrap();
        d.borrow_mut().fail_next_sync();
        let err = wal.sync().unwrap_err();
        assert!(
            err.to_string()
                .contains("fdatasync simulated disk/wal-0000000000000001.log"),
            "{err}"
        );
        assert!(matches!(wal.sync(), Err(StorageError::Stopped { .. })));
        assert!(matches!(
            wal.write(req(2, 1..2, 10)),
            Err(StorageError::Stopped { .. })
        ));
    }

    #[test]
    fn empty_foreign_and_gapped_directories_are_refused() {
        let d = disk();
        let r = Wal::open(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), 4096).recover();
        assert!(matches!(r, Err(StorageError::NotFormatted { .. })));
        let mut wal = fresh(&d, 2048);
        assert!(matches!(
            Wal::format(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), 2048),
            Err(StorageError::Foreign { .. })
        ));
        let r = Wal::open(SimDir::new(d.clone()), ClusterId(2), ReplicaId(1), 4096).recover();
        assert!(matches!(r, Err(StorageError::Foreign { .. })));
        for t in 1..30 {
            wal.write(req(t, t * 2..t * 2 + 2, 100)).unwrap();
            wal.sync().unwrap();
        }
        let middle = wal.segment_names()[1].clone();
        let mut dir = SimDir::new(d.clone());
        dir.remove(&middle).unwrap();
        let r = Wal::open(SimDir::new(d.clone()), ClusterId(1), ReplicaId(1), 4096).recover();
        assert!(matches!(r, Err(StorageError::Corrupt { .. })), "{r:?}");
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(0x1234)), Some(0x1234));
        assert_eq!(parse_segment_name("wal-12.log"), None);
        assert_eq!(parse_segment_name("other"), None);
    }
}
