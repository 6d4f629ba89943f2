//! One crash and conformance harness for every storage backend: `mem`,
//! `wal` and `nvm` (`design/nvm-log.md` for the NVM log).
//!
//! A random workload (batched appends with promises and commit hints,
//! re-accepted slots, truncations; segment rolls on the WAL, wrap-arounds
//! of a small area on NVM) runs on a medium that records every operation.
//! Then every prefix of the recorded operations is replayed, crashed into
//! several images and recovered. Recovery must give the state after the
//! last completed operation, or a state the operation in progress may
//! leave: any prefix of its writes in order (`wal`, `mem`), or its whole
//! effect (`nvm`: one commit word makes a sync atomic). Never anything
//! else, never an error when nothing was corrupted. A corruption pass
//! flips 1–7 bits of clean images (`wal`, `nvm`): recovery gives the true
//! state or `Corrupt`, never a different state. Each backend's planted
//! bugs must be caught.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use engine::core::{
    Ballot, BatchBuilder, ClientId, ClusterId, DurableState, EntryWrite, PersistRequest,
    PersistToken, ReplicaId, Slot, Value,
};
use engine::storage::mem::{CrashKeep, MemStorage};
use engine::storage::nvm::region::{CrashImage, FlushMode, PmRegion, SimRegion};
use engine::storage::nvm::{AREA_OFFSET, NvmBug, NvmLog, RECORD_HEADER_BYTES};
use engine::storage::wal::file::{DiskCrash, DiskOp, SimDir, SimDisk};
use engine::storage::wal::{Wal, WalBug};
use engine::storage::{Storage, StorageError};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const CLUSTER: ClusterId = ClusterId(9);
const REPLICA: ReplicaId = ReplicaId(2);

// ---- the model and the workload, shared by every backend ----

/// The abstract state: what recovery must return.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    promised: Ballot,
    log_start: Slot,
    commit: Slot,
    entries: BTreeMap<Slot, (Ballot, Value)>,
}

impl Model {
    fn state(&self) -> DurableState {
        DurableState {
            promised: self.promised,
            log_start: self.log_start,
            entries: self
                .entries
                .iter()
                .map(|(slot, (ballot, value))| EntryWrite {
                    slot: *slot,
                    ballot: *ballot,
                    value: value.clone(),
                })
                .collect(),
            commit: self.commit,
            unprovable: None,
            membership: None,
        }
    }
}

/// The shape of a workload.
#[derive(Clone, Copy)]
struct Shape {
    ops: usize,
    /// One operation in this many truncates.
    truncate_one_in: u32,
    /// Entries per batch: `entries_min..=entries_max`.
    entries_min: u32,
    entries_max: u32,
    value_bytes_max: u32,
}

fn value(rng: &mut Xoshiro256PlusPlus, bytes_max: u32) -> Value {
    if rng.next_u32().is_multiple_of(8) {
        return Value::Noop;
    }
    let mut b = BatchBuilder::with_capacity(64);
    for _ in 0..1 + rng.next_u32() % 3 {
        let len = (rng.next_u32() % bytes_max) as usize;
        let op: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        b.push(ClientId(rng.next_u64() % 4), 1, 1, &op);
    }
    Value::Batch(b.finish())
}

/// One completed operation: where it ended in the trace, and every state a
/// crash during it may recover besides the one before it (the last is the
/// state after it).
struct Done {
    end: usize,
    states: Vec<DurableState>,
}

/// A recorded run: the medium's operations and the completed workload
/// operations along them (the first is the freshly formatted log).
struct Run<Op> {
    trace: Vec<Op>,
    done: Vec<Done>,
    /// Record bytes written to a bounded log (NVM: wrap-arounds).
    bounded_bytes: u64,
}

// ---- the backends ----

/// A backend on a recording medium.
trait Backend {
    type Log: Storage;
    /// One recorded medium operation.
    type Op: Clone;
    /// The medium the operations are replayed on.
    type Medium;
    /// A crash image of it.
    type Image: Clone;
    type Bug: Copy;
    /// A sync is atomic: a crash during one recovers the state before or
    /// after it, never a prefix of its writes.
    const ATOMIC_SYNC: bool;
    /// What holds the recording.
    type Recorder;
    /// A formatted log on a recording medium, and the recording.
    fn format(seed: u64, bug: Option<Self::Bug>) -> (Self::Log, Self::Recorder);
    /// The operations recorded so far.
    fn recorded(r: &Self::Recorder) -> usize;
    fn trace(r: &Self::Recorder) -> Vec<Self::Op>;
    /// Bytes the log can still take (`None`: unbounded for the workload).
    fn free_bytes(_log: &Self::Log) -> Option<u64> {
        None
    }
    fn new_medium(seed: u64) -> Self::Medium;
    fn replay(m: &mut Self::Medium, op: &Self::Op);
    /// Image `which`: 0 keeps nothing outstanding, 1 keeps everything,
    /// other values a random mix.
    fn crash(m: &Self::Medium, which: u64) -> Self::Image;
    fn recover(image: Self::Image, bug: Option<Self::Bug>) -> Result<DurableState, StorageError>;
    /// `clean` with 1–7 bits flipped (`None`: the backend has no bytes).
    fn corrupt(clean: &Self::Image, rng: &mut Xoshiro256PlusPlus) -> Option<Self::Image>;
}

/// Runs a random workload of `shape` on a recording medium.
fn record<B: Backend>(seed: u64, shape: Shape, bug: Option<B::Bug>) -> Run<B::Op> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (mut log, trace) = B::format(seed, bug);
    let len = |t: &B::Recorder| B::recorded(t);
    let mut model = Model::default();
    let mut done = vec![Done {
        end: len(&trace),
        states: vec![model.state()],
    }];
    let (mut token, mut next_slot, mut round) = (0u64, 0u64, 1u64);
    let mut bounded_bytes = 0;
    for _ in 0..shape.ops {
        if rng.next_u32().is_multiple_of(shape.truncate_one_in) {
            // Truncate behind the newest slots (a checkpoint covered them).
            let to = Slot(next_slot.saturating_sub(rng.next_u64() % 8));
            if to > model.log_start {
                log.truncate_below(to).unwrap();
                model.log_start = to;
                model.entries.retain(|s, _| *s >= to);
                done.push(Done {
                    end: len(&trace),
                    states: vec![model.state()],
                });
            }
            continue;
        }
        // A batch of appends (new slots, or a slot re-accepted in a higher
        // ballot), maybe a new promise and a commit hint, then a sync.
        token += 1;
        if rng.next_u32().is_multiple_of(4) {
            round += 1;
        }
        let ballot = Ballot::new(round, ReplicaId(1 + rng.next_u32() % 3));
        let promised = rng.next_u32().is_multiple_of(3).then_some(ballot);
        let mut entries = Vec::new();
        let n = shape.entries_min + rng.next_u32() % (shape.entries_max - shape.entries_min + 1);
        for _ in 0..n {
            // A re-accepted slot may lie below the log start after a
            // truncation: every backend must drop it.
            let slot = if next_slot > 0 && rng.next_u32().is_multiple_of(4) {
                Slot(next_slot - 1 - rng.next_u64() % next_slot.min(3))
            } else {
                next_slot += 1;
                Slot(next_slot - 1)
            };
            entries.push(EntryWrite {
                slot,
                ballot,
                value: value(&mut rng, shape.value_bytes_max),
            });
        }
        let commit = rng
            .next_u32()
            .is_multiple_of(2)
            .then(|| Slot(next_slot.saturating_sub(rng.next_u64() % 3)));
        if let Some(free) = B::free_bytes(&log) {
            let need: u64 = entries
                .iter()
                .map(|e| RECORD_HEADER_BYTES + (e.value.payload_len() as u64).div_ceil(8) * 8)
                .sum();
            if need > free {
                // Make room first, as the replica would after a checkpoint.
                let to = Slot(next_slot);
                log.truncate_below(to).unwrap();
                model.log_start = to;
                model.entries.clear();
                done.push(Done {
                    end: len(&trace),
                    states: vec![model.state()],
                });
                if B::free_bytes(&log).is_some_and(|f| need > f) {
                    continue;
                }
            }
            bounded_bytes += need;
        }
        // The states a crash may leave: each prefix of the writes, in order
        // (promise, entries, commit), unless a sync is atomic.
        let mut states = Vec::new();
        if let Some(p) = promised
            && p > model.promised
        {
            model.promised = p;
            states.push(model.state());
        }
        for e in &entries {
            if e.slot >= model.log_start {
                model.entries.insert(e.slot, (e.ballot, e.value.clone()));
            }
            states.push(model.state());
        }
        if let Some(c) = commit
            && c > model.commit
        {
            model.commit = c;
        }
        states.push(model.state());
        if B::ATOMIC_SYNC {
            states = vec![model.state()];
        }
        log.write(PersistRequest {
            token: PersistToken(token),
            promised,
            entries,
            commit,
        })
        .unwrap();
        log.sync().unwrap();
        done.push(Done {
            end: len(&trace),
            states,
        });
    }
    Run {
        trace: B::trace(&trace),
        done,
        bounded_bytes,
    }
}

/// Replays every prefix of `run` and recovers `images` crash images of
/// each (plus the keep-nothing and keep-everything ones): (images checked,
/// the first wrong recovery).
fn check_prefixes<B: Backend>(
    run: &Run<B::Op>,
    images: u64,
    seed: u64,
    bug: Option<B::Bug>,
) -> (u64, Option<String>) {
    let mut medium = B::new_medium(seed);
    let mut checked = 0;
    let mut k = 0; // the last completed operation
    for (n, op) in run.trace.iter().enumerate() {
        B::replay(&mut medium, op);
        while k + 1 < run.done.len() && run.done[k + 1].end <= n + 1 {
            k += 1;
        }
        // Before the format completed there is no log to recover.
        if run.done[0].end > n + 1 {
            continue;
        }
        let last = run.done[k].states.last().expect("a state");
        let next = run.done.get(k + 1).map(|d| &d.states);
        for i in 0..2 + images {
            let which = if i < 2 {
                i
            } else {
                seed << 40 ^ (n as u64) << 8 ^ i
            };
            checked += 1;
            let got = B::recover(B::crash(&medium, which), bug);
            let ok = match &got {
                Ok(s) => s == last || next.is_some_and(|states| states.contains(s)),
                Err(_) => false,
            };
            if !ok {
                let what = match got {
                    Ok(s) => format!(
                        "{} entries, promised {}, commit {}",
                        s.entries.len(),
                        s.promised,
                        s.commit
                    ),
                    Err(e) => e.to_string(),
                };
                return (
                    checked,
                    Some(format!(
                        "seed {seed} prefix {n}/{} image {which}: recovered {what}",
                        run.trace.len()
                    )),
                );
            }
        }
    }
    (checked, None)
}

/// Flips bits of clean images after completed operations: (checked,
/// reported corrupt, recovered a wrong state).
fn corruption_pass<B: Backend>(
    run: &Run<B::Op>,
    seed: u64,
    per_op: u64,
    bug: Option<B::Bug>,
) -> (u64, u64, u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + seed);
    let mut medium = B::new_medium(seed);
    let (mut checked, mut detected, mut wrong) = (0, 0, 0);
    let mut k = 1;
    for (n, op) in run.trace.iter().enumerate() {
        B::replay(&mut medium, op);
        if k >= run.done.len() || run.done[k].end != n + 1 {
            continue;
        }
        let truth = run.done[k].states.last().expect("a state").clone();
        k += 1;
        let clean = B::crash(&medium, 0);
        for _ in 0..per_op {
            let Some(image) = B::corrupt(&clean, &mut rng) else {
                return (0, 0, 0);
            };
            checked += 1;
            match B::recover(image, bug) {
                Ok(s) if s == truth => {}
                Err(StorageError::Corrupt { .. }) => detected += 1,
                _ => wrong += 1,
            }
        }
    }
    (checked, detected, wrong)
}

/// `mem`: requests staged and synced in order; a crash keeps the durable
/// state and a prefix of the staged writes. Its recording is the storage
/// calls themselves.
struct Mem;

#[derive(Clone, Debug)]
enum MemOp {
    Write(PersistRequest),
    Sync,
    Truncate(Slot),
}

/// A planted bug of the `mem` recording: `sync` reports the token durable
/// without making anything durable.
#[derive(Clone, Copy, Debug)]
struct MemSkipsSync;

/// `MemStorage` behind a recorder of its calls.
struct RecordingMem {
    inner: MemStorage,
    trace: Rc<RefCell<Vec<MemOp>>>,
    bug: Option<MemSkipsSync>,
}

impl Storage for RecordingMem {
    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError> {
        self.trace.borrow_mut().push(MemOp::Write(req.clone()));
        self.inner.write(req)
    }
    fn sync(&mut self) -> Result<PersistToken, StorageError> {
        if self.bug.is_some() {
            return Ok(self.inner.written_token());
        }
        self.trace.borrow_mut().push(MemOp::Sync);
        self.inner.sync()
    }
    fn recover(&mut self) -> Result<DurableState, StorageError> {
        self.inner.recover()
    }
    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError> {
        self.trace.borrow_mut().push(MemOp::Truncate(slot));
        self.inner.truncate_below(slot)
    }
    fn durable_token(&self) -> PersistToken {
        self.inner.durable_token()
    }
}

/// A mem medium: the calls so far (a `MemStorage` is rebuilt from them).
#[derive(Clone, Default)]
struct MemCalls {
    ops: Vec<MemOp>,
    /// Atomic writes kept of those staged (`usize::MAX`: all).
    kept: usize,
}

impl Backend for Mem {
    type Log = RecordingMem;
    type Op = MemOp;
    type Medium = MemCalls;
    type Image = MemCalls;
    type Bug = MemSkipsSync;
    type Recorder = Rc<RefCell<Vec<MemOp>>>;
    const ATOMIC_SYNC: bool = false;
    fn recorded(r: &Self::Recorder) -> usize {
        r.borrow().len()
    }
    fn trace(r: &Self::Recorder) -> Vec<MemOp> {
        r.borrow().clone()
    }
    fn format(_seed: u64, bug: Option<MemSkipsSync>) -> (RecordingMem, Self::Recorder) {
        let trace = Rc::new(RefCell::new(Vec::new()));
        let log = RecordingMem {
            inner: MemStorage::formatted(),
            trace: trace.clone(),
            bug,
        };
        (log, trace)
    }
    fn new_medium(_seed: u64) -> MemCalls {
        MemCalls::default()
    }
    fn replay(m: &mut MemCalls, op: &MemOp) {
        m.ops.push(op.clone());
    }
    fn crash(m: &MemCalls, which: u64) -> MemCalls {
        let kept = match which {
            0 => 0,
            1 => usize::MAX,
            r => (r % 7) as usize,
        };
        MemCalls {
            ops: m.ops.clone(),
            kept,
        }
    }
    fn recover(image: MemCalls, _bug: Option<MemSkipsSync>) -> Result<DurableState, StorageError> {
        let mut s = MemStorage::formatted();
        for op in image.ops {
            match op {
                MemOp::Write(r) => s.write(r)?,
                MemOp::Sync => {
                    s.sync()?;
                }
                MemOp::Truncate(slot) => s.truncate_below(slot)?,
            }
        }
        s.crash(
            CrashKeep {
                kept_ops: image.kept,
            },
            |_| {},
        );
        s.recover()
    }
    fn corrupt(_clean: &MemCalls, _rng: &mut Xoshiro256PlusPlus) -> Option<MemCalls> {
        None
    }
}

/// `wal`: a simulated disk whose unsynced sectors are lost or torn (each
/// independently) at a crash.
struct WalDisk;

const WAL_SEGMENT_BYTES: [u64; 3] = [2048, 3072, 4096];

impl Backend for WalDisk {
    type Log = Wal<SimDir>;
    type Op = DiskOp;
    type Medium = SimDisk;
    type Image = SimDisk;
    type Bug = WalBug;
    /// The recording disk (it keeps its own trace).
    type Recorder = Rc<RefCell<SimDisk>>;
    const ATOMIC_SYNC: bool = false;
    fn recorded(r: &Self::Recorder) -> usize {
        r.borrow().trace.as_ref().map_or(0, Vec::len)
    }
    fn trace(r: &Self::Recorder) -> Vec<DiskOp> {
        r.borrow().trace.clone().unwrap_or_default()
    }
    fn format(seed: u64, bug: Option<WalBug>) -> (Wal<SimDir>, Self::Recorder) {
        let disk = Rc::new(RefCell::new(SimDisk::new()));
        disk.borrow_mut().trace = Some(Vec::new());
        let segment = WAL_SEGMENT_BYTES[(seed % 3) as usize];
        let mut wal = Wal::format(SimDir::new(disk.clone()), CLUSTER, REPLICA, segment).unwrap();
        if let Some(b) = bug {
            wal.plant_bug(b);
        }
        (wal, disk)
    }
    fn new_medium(_seed: u64) -> SimDisk {
        SimDisk::new()
    }
    fn replay(m: &mut SimDisk, op: &DiskOp) {
        m.apply(op);
    }
    fn crash(m: &SimDisk, which: u64) -> SimDisk {
        m.crash_image(match which {
            0 => DiskCrash::None,
            1 => DiskCrash::All,
            r => DiskCrash::Random(r),
        })
    }
    fn recover(image: SimDisk, bug: Option<WalBug>) -> Result<DurableState, StorageError> {
        let mut wal = Wal::open(
            SimDir::new(Rc::new(RefCell::new(image))),
            CLUSTER,
            REPLICA,
            4096,
        );
        if let Some(b) = bug {
            wal.plant_bug(b);
        }
        wal.recover()
    }
    fn corrupt(clean: &SimDisk, rng: &mut Xoshiro256PlusPlus) -> Option<SimDisk> {
        let files = clean.files();
        let mut image = clean.clone();
        for _ in 0..1 + rng.next_u32() % 7 {
            let (name, len) = &files[rng.next_u64() as usize % files.len()];
            image.flip_bit(name, rng.next_u64() % len, (rng.next_u32() % 8) as u8);
        }
        Some(image)
    }
}

/// `nvm`: a simulated region whose outstanding 8-byte chunks each keep
/// their old or new value at a crash.
struct Nvm;

/// Area bytes of the NVM log (small, so runs wrap around many times; the
/// last ends mid cache line: the region's length need only be a multiple
/// of 8).
const NVM_AREA_BYTES: [u64; 3] = [1536, 2048, 2504];

#[derive(Clone, Debug)]
enum RegionOp {
    Write(u64, Vec<u8>),
    Flush(u64, u64),
    Fence,
}

/// A simulated region that records every operation.
struct Recording {
    inner: SimRegion,
    trace: Rc<RefCell<Vec<RegionOp>>>,
}

impl PmRegion for Recording {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) {
        self.inner.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.trace
            .borrow_mut()
            .push(RegionOp::Write(offset, data.to_vec()));
        self.inner.write(offset, data)
    }
    fn flush(&mut self, offset: u64, len: u64) {
        self.trace.borrow_mut().push(RegionOp::Flush(offset, len));
        self.inner.flush(offset, len)
    }
    fn fence(&mut self) -> std::io::Result<()> {
        self.trace.borrow_mut().push(RegionOp::Fence);
        self.inner.fence()
    }
    fn flush_mode(&self) -> FlushMode {
        FlushMode::Simulated
    }
    fn subject(&self) -> String {
        "recording region".into()
    }
}

impl Backend for Nvm {
    type Log = NvmLog<Recording>;
    type Op = RegionOp;
    type Medium = SimRegion;
    type Image = Vec<u8>;
    type Bug = NvmBug;
    type Recorder = Rc<RefCell<Vec<RegionOp>>>;
    const ATOMIC_SYNC: bool = true;
    fn recorded(r: &Self::Recorder) -> usize {
        r.borrow().len()
    }
    fn trace(r: &Self::Recorder) -> Vec<RegionOp> {
        r.borrow().clone()
    }
    fn format(seed: u64, bug: Option<NvmBug>) -> (NvmLog<Recording>, Self::Recorder) {
        let trace = Rc::new(RefCell::new(Vec::new()));
        let region = Recording {
            inner: SimRegion::new(AREA_OFFSET + NVM_AREA_BYTES[(seed % 3) as usize]),
            trace: trace.clone(),
        };
        let mut log = NvmLog::format(region, CLUSTER, REPLICA).unwrap();
        if let Some(b) = bug {
            log.plant_bug(b);
        }
        (log, trace)
    }
    fn free_bytes(log: &NvmLog<Recording>) -> Option<u64> {
        Some(log.free_bytes())
    }
    fn new_medium(seed: u64) -> SimRegion {
        SimRegion::new(AREA_OFFSET + NVM_AREA_BYTES[(seed % 3) as usize])
    }
    fn replay(m: &mut SimRegion, op: &RegionOp) {
        match op {
            RegionOp::Write(o, d) => m.write(*o, d),
            RegionOp::Flush(o, l) => m.flush(*o, *l),
            RegionOp::Fence => m.fence().unwrap(),
        }
    }
    fn crash(m: &SimRegion, which: u64) -> Vec<u8> {
        m.crash_image(match which {
            0 => CrashImage::None,
            1 => CrashImage::All,
            r => CrashImage::Random(r),
        })
    }
    fn recover(image: Vec<u8>, _bug: Option<NvmBug>) -> Result<DurableState, StorageError> {
        let mut log = NvmLog::open(SimRegion::from_image(image), CLUSTER, REPLICA)?;
        log.recover()
    }
    fn corrupt(clean: &Vec<u8>, rng: &mut Xoshiro256PlusPlus) -> Option<Vec<u8>> {
        let mut image = clean.clone();
        // Half the time aim at the metadata and the start of the area.
        let span = if rng.next_u32().is_multiple_of(2) {
            AREA_OFFSET + 512
        } else {
            image.len() as u64
        };
        for _ in 0..1 + rng.next_u32() % 7 {
            let at = (rng.next_u64() % span.min(image.len() as u64)) as usize;
            image[at] ^= 1 << (rng.next_u32() % 8);
        }
        Some(image)
    }
}

// ---- the tests: every backend through the same checks ----

const MEM: Shape = Shape {
    ops: 80,
    truncate_one_in: 8,
    entries_min: 0,
    entries_max: 4,
    value_bytes_max: 64,
};
const WAL: Shape = Shape {
    ops: 70,
    truncate_one_in: 8,
    entries_min: 0,
    entries_max: 4,
    value_bytes_max: 300,
};
const NVM: Shape = Shape {
    ops: 120,
    truncate_one_in: 5,
    entries_min: 1,
    entries_max: 4,
    value_bytes_max: 120,
};

#[test]
fn mem_every_crash_of_every_prefix_recovers_a_prefix_of_what_was_written() {
    let mut images = 0;
    for seed in 0..10 {
        let run = record::<Mem>(seed, MEM, None);
        let (n, wrong) = check_prefixes::<Mem>(&run, 6, seed, None);
        assert_eq!(wrong, None);
        images += n;
    }
    println!("{images} mem crash images, 0 wrong recoveries");
    assert!(images > 5_000, "only {images} images");
}

#[test]
fn mem_planted_bug_acknowledging_without_a_sync_is_caught() {
    let clean = record::<Mem>(21, MEM, None);
    assert_eq!(
        check_prefixes::<Mem>(&clean, 6, 21, None).1,
        None,
        "the seed passes without the bug"
    );
    let run = record::<Mem>(21, MEM, Some(MemSkipsSync));
    let (_, wrong) = check_prefixes::<Mem>(&run, 6, 21, None);
    assert!(
        wrong.is_some(),
        "acknowledging unsynced writes went unnoticed"
    );
}

#[test]
fn wal_every_crash_image_of_every_prefix_recovers_a_prefix_of_what_was_written() {
    let (mut images, mut segments) = (0u64, 0usize);
    for seed in 0..14 {
        let run = record::<WalDisk>(seed, WAL, None);
        segments += run
            .trace
            .iter()
            .filter(|op| matches!(op, DiskOp::Create(..)))
            .count();
        let (n, wrong) = check_prefixes::<WalDisk>(&run, 6, seed, None);
        assert_eq!(wrong, None);
        images += n;
    }
    println!("{images} WAL crash images, {segments} segments, 0 wrong recoveries");
    assert!(
        images > 20_000 && segments > 50,
        "{images} images, {segments} segments"
    );
}

#[test]
fn wal_planted_bug_skipping_fdatasync_is_caught() {
    let clean = record::<WalDisk>(21, Shape { ops: 40, ..WAL }, None);
    assert_eq!(
        check_prefixes::<WalDisk>(&clean, 6, 21, None).1,
        None,
        "the seed passes without the bug"
    );
    let run = record::<WalDisk>(21, Shape { ops: 40, ..WAL }, Some(WalBug::SkipFdatasync));
    let (_, wrong) = check_prefixes::<WalDisk>(&run, 6, 21, None);
    assert!(
        wrong.is_some(),
        "acknowledging unsynced batches went unnoticed"
    );
}

#[test]
fn wal_corrupted_images_recover_the_true_state_or_report_corruption() {
    let (mut checked, mut detected) = (0, 0);
    for seed in 100..104 {
        let run = record::<WalDisk>(seed, Shape { ops: 40, ..WAL }, None);
        let (c, d, wrong) = corruption_pass::<WalDisk>(&run, seed, 25, None);
        assert_eq!(
            wrong, 0,
            "seed {seed}: a corrupted image recovered another state"
        );
        checked += c;
        detected += d;
    }
    println!(
        "{checked} corrupted WAL images, {detected} reported corrupt, the rest intact, 0 wrong"
    );
    assert!(
        checked > 1_000 && detected > checked / 20,
        "{detected} of {checked}"
    );
}

#[test]
fn wal_planted_bug_cutting_at_any_invalid_record_is_caught() {
    let run = record::<WalDisk>(200, Shape { ops: 30, ..WAL }, None);
    assert_eq!(
        corruption_pass::<WalDisk>(&run, 200, 10, None).2,
        0,
        "the seed passes without the bug"
    );
    let (checked, _, wrong) =
        corruption_pass::<WalDisk>(&run, 200, 10, Some(WalBug::EveryInvalidRecordIsTorn));
    assert!(
        wrong > 0,
        "silently truncating at corruption went unnoticed ({checked} images)"
    );
}

#[test]
fn nvm_every_crash_image_of_every_prefix_recovers_a_completed_state() {
    let (mut images, mut wraps) = (0, 0);
    for seed in 0..12 {
        let run = record::<Nvm>(seed, NVM, None);
        wraps += run.bounded_bytes / NVM_AREA_BYTES[(seed % 3) as usize];
        let (n, wrong) = check_prefixes::<Nvm>(&run, 4, seed, None);
        assert_eq!(wrong, None);
        images += n;
    }
    println!("{images} NVM crash images, {wraps} wrap-arounds, 0 wrong recoveries");
    assert!(images >= 100_000, "only {images} crash images");
    assert!(wraps >= 50, "only {wraps} wrap-arounds");
}

#[test]
fn nvm_corrupted_images_recover_the_true_state_or_report_corruption() {
    let (mut checked, mut detected) = (0, 0);
    for seed in 100..106 {
        let run = record::<Nvm>(seed, Shape { ops: 80, ..NVM }, None);
        let (c, d, wrong) = corruption_pass::<Nvm>(&run, seed, 40, None);
        assert_eq!(
            wrong, 0,
            "seed {seed}: {wrong} corrupted images recovered a different state"
        );
        checked += c;
        detected += d;
    }
    println!(
        "{checked} corrupted NVM images, {detected} reported corrupt, the rest intact, 0 wrong"
    );
    assert!(
        detected > checked / 10,
        "the pass hardly hit the log ({detected} of {checked})"
    );
}

#[test]
fn nvm_planted_bug_no_flush_before_the_commit_word_is_caught() {
    let run = record::<Nvm>(
        7,
        Shape { ops: 60, ..NVM },
        Some(NvmBug::NoFlushBeforeCommitWord),
    );
    let (_, wrong) = check_prefixes::<Nvm>(&run, 4, 7, None);
    assert!(
        wrong.is_some(),
        "the harness missed a commit word flipped before its records were durable"
    );
}

#[test]
fn nvm_planted_bug_in_place_update_of_the_active_slot_is_caught() {
    let run = record::<Nvm>(8, Shape { ops: 60, ..NVM }, Some(NvmBug::InPlaceActiveSlot));
    let (_, wrong) = check_prefixes::<Nvm>(&run, 4, 8, None);
    assert!(
        wrong.is_some(),
        "the harness missed a torn in-place metadata update"
    );
}

#[test]
fn the_harness_sees_what_each_backend_writes() {
    // A recorded run replays to the state the workload ended with, so the
    // harness checks the real write sequence of each backend.
    fn replays<B: Backend>(shape: Shape) {
        let run = record::<B>(3, shape, None);
        let mut m = B::new_medium(3);
        for op in &run.trace {
            B::replay(&mut m, op);
        }
        let last = run
            .done
            .last()
            .expect("ops")
            .states
            .last()
            .expect("a state");
        // A completed sync leaves nothing outstanding: keeping nothing and
        // keeping everything recover the same, final state.
        assert_eq!(&B::recover(B::crash(&m, 0), None).unwrap(), last);
        assert_eq!(&B::recover(B::crash(&m, 1), None).unwrap(), last);
        assert!(run.done.len() > shape.ops / 2, "most operations completed");
    }
    replays::<Mem>(MEM);
    replays::<WalDisk>(WAL);
    replays::<Nvm>(Shape { ops: 40, ..NVM });
    let run = record::<Nvm>(3, Shape { ops: 40, ..NVM }, None);
    let mut region = Nvm::new_medium(3);
    for op in &run.trace {
        Nvm::replay(&mut region, op);
    }
    assert_eq!(
        region.outstanding_chunks(),
        0,
        "a completed sync leaves nothing outstanding"
    );
}
