//! The WAL's crash harness: a simulated disk whose unsynced sectors are
//! lost or torn (each independently) at a crash.
//!
//! A random workload (batched appends with promises and commit hints,
//! truncations that delete segments, many segment rolls) runs on a
//! recording disk. Every prefix of the recorded disk operations is crashed
//! into several images and recovered. Recovery must give the state after
//! the last completed operation plus a prefix (in write order) of the one
//! in progress: a log keeps a prefix of what it was writing, never a hole,
//! never `Corrupt` when nothing was corrupted. A corruption pass flips
//! 1–7 bits of clean images: the true state or `Corrupt`, never another.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use engine::core::{
    Ballot, BatchBuilder, ClientId, ClusterId, DurableState, EntryWrite, PersistRequest,
    PersistToken, ReplicaId, Slot, Value,
};
use engine::storage::wal::file::{DiskCrash, DiskOp, SimDir, SimDisk};
use engine::storage::wal::{Wal, WalBug};
use engine::storage::{Storage, StorageError};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const CLUSTER: ClusterId = ClusterId(5);
const REPLICA: ReplicaId = ReplicaId(3);

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

/// One completed operation: where it ended in the trace, and every state a
/// crash during it may recover (a prefix of its writes; the last one is
/// the state after it).
struct Done {
    end: usize,
    states: Vec<DurableState>,
}

struct Run {
    trace: Vec<DiskOp>,
    done: Vec<Done>,
    segments_created: usize,
}

fn value(rng: &mut Xoshiro256PlusPlus) -> Value {
    if rng.next_u32().is_multiple_of(8) {
        return Value::Noop;
    }
    let mut b = BatchBuilder::with_capacity(64);
    for _ in 0..1 + rng.next_u32() % 3 {
        let len = (rng.next_u32() % 300) as usize;
        let op: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        b.push(ClientId(rng.next_u64() % 4), 1, 1, &op);
    }
    Value::Batch(b.finish())
}

fn record(seed: u64, segment_bytes: u64, ops: usize, bug: Option<WalBug>) -> Run {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let disk = Rc::new(RefCell::new(SimDisk::new()));
    disk.borrow_mut().trace = Some(Vec::new());
    let mut wal = Wal::format(SimDir::new(disk.clone()), CLUSTER, REPLICA, segment_bytes).unwrap();
    if let Some(b) = bug {
        wal.plant_bug(b);
    }
    let mut model = Model::default();
    let trace_len = |d: &Rc<RefCell<SimDisk>>| d.borrow().trace.as_ref().unwrap().len();
    let mut done = vec![Done {
        end: trace_len(&disk),
        states: vec![model.state()],
    }];
    let (mut token, mut next_slot, mut round) = (0u64, 0u64, 1u64);
    for _ in 0..ops {
        if rng.next_u32() % 8 == 0 {
            let to = Slot(next_slot.saturating_sub(rng.next_u64() % 8));
            let before = model.state();
            if to > model.log_start {
                model.log_start = to;
                model.entries.retain(|s, _| *s >= to);
            }
            wal.truncate_below(to).unwrap();
            done.push(Done {
                end: trace_len(&disk),
                states: vec![before, model.state()],
            });
            continue;
        }
        token += 1;
        if rng.next_u32() % 4 == 0 {
            round += 1;
        }
        let ballot = Ballot::new(round, ReplicaId(1 + rng.next_u32() % 3));
        let promised = (rng.next_u32() % 3 == 0).then_some(ballot);
        let mut entries = Vec::new();
        for _ in 0..rng.next_u32() % 5 {
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
        let commit =
            (rng.next_u32() % 2 == 0).then(|| Slot(next_slot.saturating_sub(rng.next_u64() % 3)));
        // The states a crash may leave: each prefix of the writes, in order.
        let mut states = vec![model.state()];
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
            states.push(model.state());
        }
        wal.write(PersistRequest {
            token: PersistToken(token),
            promised,
            entries,
            commit,
        })
        .unwrap();
        wal.sync().unwrap();
        done.push(Done {
            end: trace_len(&disk),
            states,
        });
    }
    let trace = disk.borrow().trace.clone().unwrap();
    let segments_created = trace
        .iter()
        .filter(|op| matches!(op, DiskOp::Create(..)))
        .count();
    Run {
        trace,
        done,
        segments_created,
    }
}

fn recover(disk: SimDisk, bug: Option<WalBug>) -> Result<DurableState, StorageError> {
    let mut wal = Wal::open(
        SimDir::new(Rc::new(RefCell::new(disk))),
        CLUSTER,
        REPLICA,
        4096,
    );
    if let Some(b) = bug {
        wal.plant_bug(b);
    }
    wal.recover()
}

/// Replays every prefix of `run`, crashing each into 8 images; returns
/// (images, first wrong recovery).
fn check_prefixes(run: &Run, seed: u64) -> (u64, Option<String>) {
    let mut images = 0;
    let mut disk = SimDisk::new();
    let mut k = 0;
    for (n, op) in run.trace.iter().enumerate() {
        disk.apply(op);
        while k + 1 < run.done.len() && run.done[k + 1].end <= n + 1 {
            k += 1;
        }
        if run.done[0].end > n + 1 {
            continue;
        }
        let last = run.done[k].states.last().unwrap();
        let next = run.done.get(k + 1).map(|d| &d.states);
        let mut which = vec![DiskCrash::None, DiskCrash::All];
        which.extend((0..6).map(|i| DiskCrash::Random(seed << 40 ^ (n as u64) << 8 ^ i)));
        for w in which {
            images += 1;
            let got = recover(disk.crash_image(w), None);
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
                    images,
                    Some(format!(
                        "seed {seed} prefix {n}/{} {w:?}: recovered {what}",
                        run.trace.len()
                    )),
                );
            }
        }
    }
    (images, None)
}

#[test]
fn every_crash_image_of_every_prefix_recovers_a_prefix_of_what_was_written() {
    let (mut images, mut segments) = (0u64, 0usize);
    for seed in 0..14 {
        let run = record(seed, 2048 + (seed % 3) * 1024, 70, None);
        segments += run.segments_created;
        let (n, wrong) = check_prefixes(&run, seed);
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
fn planted_bug_skipping_fdatasync_is_caught() {
    let run = record(21, 2048, 40, Some(WalBug::SkipFdatasync));
    let (_, wrong) = check_prefixes(&run, 21);
    assert!(
        wrong.is_some(),
        "acknowledging unsynced batches went unnoticed"
    );
}

#[test]
fn planted_bug_cutting_at_any_invalid_record_is_caught() {
    let (checked, _, wrong) = corruption_pass(200, 30, 10, Some(WalBug::EveryInvalidRecordIsTorn));
    assert!(
        wrong > 0,
        "silently truncating at corruption went unnoticed ({checked} images)"
    );
}

/// Flips 1-7 bits of clean images after completed ops; returns
/// (checked, reported corrupt, recovered a wrong state).
fn corruption_pass(seed: u64, ops: usize, per_op: u64, bug: Option<WalBug>) -> (u64, u64, u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + seed);
    let run = record(seed, 4096, ops, None);
    let (mut checked, mut detected, mut wrong) = (0u64, 0u64, 0u64);
    let mut disk = SimDisk::new();
    let mut k = 1;
    for (n, op) in run.trace.iter().enumerate() {
        disk.apply(op);
        if k >= run.done.len() || run.done[k].end != n + 1 {
            continue;
        }
        let truth = run.done[k].states.last().unwrap().clone();
        k += 1;
        let clean = disk.crash_image(DiskCrash::None);
        let files = clean.files();
        for _ in 0..per_op {
            let mut image = clean.clone();
            for _ in 0..1 + rng.next_u32() % 7 {
                let (name, len) = &files[rng.next_u64() as usize % files.len()];
                image.flip_bit(name, rng.next_u64() % len, (rng.next_u32() % 8) as u8);
            }
            checked += 1;
            match recover(image, bug) {
                Ok(s) if s == truth => {}
                Err(StorageError::Corrupt { .. }) => detected += 1,
                _ => wrong += 1,
            }
        }
    }
    (checked, detected, wrong)
}

#[test]
fn corrupted_images_recover_the_true_state_or_report_corruption() {
    let (mut checked, mut detected) = (0, 0);
    for seed in 100..104 {
        let (c, d, wrong) = corruption_pass(seed, 40, 25, None);
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
    assert!(detected > checked / 20);
}
