//! The NVM log's crash harness (`design/nvm-log.md`).
//!
//! A random workload (batched appends, commits, promised-ballot updates,
//! truncations, many wrap-arounds of a small area) runs on a recording
//! region. Then every prefix of the recorded region operations is replayed,
//! crashed into several images (nothing outstanding survives, everything
//! survives, random mixes per 8-byte chunk), and recovered: recovery must
//! give exactly the state after the last completed operation, or after the
//! one in progress; never anything else, never `Corrupt`. A corruption pass
//! flips 1–7 bits of clean images: recovery gives the true state or
//! `Corrupt`, never a different state. Two planted bugs must be caught.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use engine::core::{
    Ballot, BatchBuilder, ClientId, ClusterId, DurableState, EntryWrite, PersistRequest,
    PersistToken, ReplicaId, Slot, Value,
};
use engine::storage::nvm::region::{CrashImage, FlushMode, PmRegion, SimRegion};
use engine::storage::nvm::{AREA_OFFSET, NvmBug, NvmLog, RECORD_HEADER_BYTES};
use engine::storage::{Storage, StorageError};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

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

const CLUSTER: ClusterId = ClusterId(9);
const REPLICA: ReplicaId = ReplicaId(2);

/// The recorded run: region operations, and after how many of them each
/// workload operation completed (with the model state it produced).
struct Run {
    region_len: u64,
    trace: Vec<RegionOp>,
    /// (trace length when the op completed, model after it); the first is
    /// the freshly formatted log.
    done: Vec<(usize, Model)>,
    wraps: u64,
}

fn value(rng: &mut Xoshiro256PlusPlus) -> Value {
    if rng.next_u32().is_multiple_of(8) {
        return Value::Noop;
    }
    let mut b = BatchBuilder::with_capacity(64);
    for _ in 0..1 + rng.next_u32() % 3 {
        let len = (rng.next_u32() % 120) as usize;
        let op: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        b.push(ClientId(rng.next_u64() % 4), 1, 1, &op);
    }
    Value::Batch(b.finish())
}

/// Runs a random workload on a recording region.
fn record(seed: u64, area: u64, ops: usize, bug: Option<NvmBug>) -> Run {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let trace = Rc::new(RefCell::new(Vec::new()));
    let region = Recording {
        inner: SimRegion::new(AREA_OFFSET + area),
        trace: trace.clone(),
    };
    let mut log = NvmLog::format(region, CLUSTER, REPLICA).unwrap();
    if let Some(b) = bug {
        log.plant_bug(b);
    }
    let mut model = Model::default();
    let mut done = vec![(trace.borrow().len(), model.clone())];
    let (mut token, mut next_slot, mut round) = (0u64, 0u64, 1u64);
    let mut written = 0u64;
    for _ in 0..ops {
        let r = rng.next_u32() % 10;
        if r < 2 {
            // Truncate behind the newest slots (a checkpoint covered them).
            let keep = rng.next_u64() % 6;
            let to = Slot(next_slot.saturating_sub(keep));
            if to > model.log_start {
                log.truncate_below(to).unwrap();
                model.log_start = to;
                model.entries.retain(|s, _| *s >= to);
            }
        } else {
            // A batch of appends (new slots, or a slot re-accepted in a
            // higher ballot), maybe a new promise and a commit hint, then sync.
            token += 1;
            if rng.next_u32() % 4 == 0 {
                round += 1;
            }
            let ballot = Ballot::new(round, ReplicaId(1 + rng.next_u32() % 3));
            let mut entries = Vec::new();
            for _ in 0..1 + rng.next_u32() % 4 {
                let slot = if next_slot > 0 && rng.next_u32() % 4 == 0 {
                    Slot(next_slot - 1 - rng.next_u64() % next_slot.min(3))
                } else {
                    next_slot += 1;
                    Slot(next_slot - 1)
                };
                entries.push(EntryWrite {
                    slot,
                    ballot,
                    value: value(&mut rng),
                });
            }
            let need: u64 = entries
                .iter()
                .map(|e| RECORD_HEADER_BYTES + (e.value.payload_len() as u64).div_ceil(8) * 8)
                .sum();
            if need > log.free_bytes() {
                // Make room first, as the replica would after a checkpoint.
                let to = Slot(next_slot);
                log.truncate_below(to).unwrap();
                model.log_start = to;
                model.entries.clear();
                done.push((trace.borrow().len(), model.clone()));
                if need > log.free_bytes() {
                    continue;
                }
            }
            written += need;
            let promised = (rng.next_u32() % 3 == 0).then_some(ballot);
            let commit = (rng.next_u32() % 2 == 0)
                .then(|| Slot(next_slot.saturating_sub(rng.next_u64() % 3)));
            for e in &entries {
                if e.slot >= model.log_start {
                    model.entries.insert(e.slot, (e.ballot, e.value.clone()));
                }
            }
            if let Some(p) = promised {
                model.promised = model.promised.max(p);
            }
            if let Some(c) = commit {
                model.commit = model.commit.max(c);
            }
            log.write(PersistRequest {
                token: PersistToken(token),
                promised,
                entries,
                commit,
            })
            .unwrap();
            log.sync().unwrap();
        }
        done.push((trace.borrow().len(), model.clone()));
    }
    let trace = trace.borrow().clone();
    Run {
        region_len: AREA_OFFSET + area,
        trace,
        done,
        wraps: written / area,
    }
}

/// Recovers an image: `Ok(state)`, or the error.
fn recover(image: Vec<u8>) -> Result<DurableState, StorageError> {
    let mut log = NvmLog::open(SimRegion::from_image(image), CLUSTER, REPLICA)?;
    log.recover()
}

#[derive(Default, Debug)]
struct Tally {
    images: u64,
    wrong: u64,
    first_wrong: Option<String>,
}

/// Replays every prefix of the run and checks `images_per_prefix` random
/// crash images (plus the none/all extremes) of each.
fn check_prefixes(run: &Run, images_per_prefix: u64, seed: u64) -> Tally {
    let mut region = SimRegion::new(run.region_len);
    let mut tally = Tally::default();
    let mut k = 0; // index of the last completed op in run.done
    for (n, op) in run.trace.iter().enumerate() {
        match op {
            RegionOp::Write(o, d) => region.write(*o, d),
            RegionOp::Flush(o, l) => region.flush(*o, *l),
            RegionOp::Fence => region.fence().unwrap(),
        }
        while k + 1 < run.done.len() && run.done[k + 1].0 <= n + 1 {
            k += 1;
        }
        let last = &run.done[k].1;
        let next = run.done.get(k + 1).map(|(_, m)| m);
        // Before the format completed there is no log to recover.
        if run.done[0].0 > n + 1 {
            continue;
        }
        let mut images = vec![CrashImage::None, CrashImage::All];
        images.extend(
            (0..images_per_prefix).map(|i| CrashImage::Random(seed ^ (n as u64) << 16 ^ i)),
        );
        for which in images {
            tally.images += 1;
            let got = recover(region.crash_image(which));
            let ok = match &got {
                Ok(s) => *s == last.state() || next.is_some_and(|m| *s == m.state()),
                Err(_) => false,
            };
            if !ok {
                tally.wrong += 1;
                if tally.first_wrong.is_none() {
                    let what = match got {
                        Ok(s) => format!(
                            "a state with {} entries, promised {}",
                            s.entries.len(),
                            s.promised
                        ),
                        Err(e) => e.to_string(),
                    };
                    tally.first_wrong =
                        Some(format!("prefix {n}/{} {which:?}: {what}", run.trace.len()));
                }
            }
        }
    }
    tally
}

/// Flips 1-7 bits of clean images (after completed ops): recovery must give
/// the true state or `Corrupt`.
fn corruption_pass(run: &Run, seed: u64, flips_per_image: u64) -> (u64, u64, u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut region = SimRegion::new(run.region_len);
    let (mut checked, mut detected, mut wrong) = (0, 0, 0);
    let mut k = 1;
    for (n, op) in run.trace.iter().enumerate() {
        match op {
            RegionOp::Write(o, d) => region.write(*o, d),
            RegionOp::Flush(o, l) => region.flush(*o, *l),
            RegionOp::Fence => region.fence().unwrap(),
        }
        if k < run.done.len() && run.done[k].0 == n + 1 {
            let truth = run.done[k].1.state();
            k += 1;
            let clean = region.crash_image(CrashImage::None);
            for _ in 0..flips_per_image {
                let mut image = clean.clone();
                // Half the time aim at the live part of the log.
                let bits = 1 + rng.next_u32() % 7;
                let span = if rng.next_u32() % 2 == 0 {
                    AREA_OFFSET + 512
                } else {
                    image.len() as u64
                };
                for _ in 0..bits {
                    let at = (rng.next_u64() % span.min(image.len() as u64)) as usize;
                    image[at] ^= 1 << (rng.next_u32() % 8);
                }
                checked += 1;
                match recover(image) {
                    Ok(s) if s == truth => {}
                    Err(StorageError::Corrupt { .. }) => detected += 1,
                    _ => wrong += 1,
                }
            }
        }
    }
    (checked, detected, wrong)
}

#[test]
fn every_crash_image_of_every_prefix_recovers_to_a_completed_state() {
    let mut images = 0;
    let mut wraps = 0;
    for seed in 0..12 {
        let run = record(seed, 1536 + (seed % 3) * 512, 120, None);
        wraps += run.wraps;
        let t = check_prefixes(&run, 4, seed);
        assert_eq!(
            t.wrong,
            0,
            "seed {seed}: {}",
            t.first_wrong.unwrap_or_default()
        );
        images += t.images;
    }
    println!("{images} crash images, {wraps} wrap-arounds, 0 wrong recoveries");
    assert!(images >= 100_000, "only {images} crash images");
    assert!(wraps >= 50, "only {wraps} wrap-arounds");
}

#[test]
fn corrupted_images_recover_the_true_state_or_report_corruption() {
    let (mut checked, mut detected) = (0, 0);
    for seed in 0..6 {
        let run = record(100 + seed, 2048, 80, None);
        let (c, d, wrong) = corruption_pass(&run, seed, 40);
        assert_eq!(
            wrong, 0,
            "seed {seed}: {wrong} corrupted images recovered a different state"
        );
        checked += c;
        detected += d;
    }
    println!("{checked} corrupted images, {detected} reported corrupt, the rest intact, 0 wrong");
    assert!(
        detected > checked / 10,
        "the pass hardly hit the log ({detected} of {checked})"
    );
}

#[test]
fn planted_bug_no_flush_before_the_commit_word_is_caught() {
    let run = record(7, 2048, 60, Some(NvmBug::NoFlushBeforeCommitWord));
    let t = check_prefixes(&run, 4, 7);
    assert!(
        t.wrong > 0,
        "the harness missed a commit word flipped before its records were durable"
    );
}

#[test]
fn planted_bug_in_place_update_of_the_active_slot_is_caught() {
    let run = record(8, 2048, 60, Some(NvmBug::InPlaceActiveSlot));
    let t = check_prefixes(&run, 4, 8);
    assert!(
        t.wrong > 0,
        "the harness missed a torn in-place metadata update"
    );
}

#[test]
fn the_harness_sees_what_a_real_region_writes() {
    // Sanity: a recorded run replays to the same recovered state as the log
    // itself sees, so the harness checks the real write sequence.
    let run = record(3, 2048, 40, None);
    let mut region = SimRegion::new(run.region_len);
    for op in &run.trace {
        match op {
            RegionOp::Write(o, d) => region.write(*o, d),
            RegionOp::Flush(o, l) => region.flush(*o, *l),
            RegionOp::Fence => region.fence().unwrap(),
        }
    }
    assert_eq!(
        region.outstanding_chunks(),
        0,
        "a completed sync leaves nothing outstanding"
    );
    let state = recover(region.crash_image(CrashImage::None)).unwrap();
    assert_eq!(state, run.done.last().unwrap().1.state());
    let _ = Bytes::new();
}
