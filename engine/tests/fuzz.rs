//! Every fuzz target, briefly, as a test: the committed corpus
//! (`fuzz/corpus/<target>/`), the generated seeds, then seeded random
//! mutations of them. A panic fails the test; so does a call that
//! allocates more than `ALLOC_BYTES_MAX_PER_INPUT_BYTE` per input byte
//! plus `ALLOC_BYTES_BASE` (a decoder trusting a length field).
//! `make fuzz` runs the same targets under libFuzzer, coverage-guided.
//! A seed that changed without its corpus file fails
//! `the_committed_corpus_holds_every_generated_seed`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Counts, per thread, bytes allocated and not freed, and their peak
/// since the last reset (per thread: tests run in parallel).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = LIVE.try_with(|l| {
                l.set(l.get() + layout.size() as isize);
                let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
            });
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a call may allocate beyond what is live before it: the storage
/// targets build a whole simulated medium (a 2 MiB NVM region, WAL
/// segments, and copies of its image), the rest a few buffers.
const ALLOC_BYTES_BASE: usize = 16 << 20;
const ALLOC_BYTES_MAX_PER_INPUT_BYTE: usize = 64;
/// Random mutations per target (the corpus and seeds run first).
const MUTATIONS: usize = 5000;
/// Largest mutated input.
const INPUT_BYTES_MAX: usize = 64 * 1024;

fn run(name: &str, target: fn(&[u8]), input: &[u8]) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let r = std::panic::catch_unwind(|| target(input));
    let used = (PEAK.with(Cell::get) - before).max(0) as usize;
    if r.is_err() {
        let path = std::env::temp_dir().join(format!("fuzz-{name}-crash.bin"));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked on a {}-byte input, saved in {} \
             (replay under libFuzzer: make fuzz, then fuzz/target/<host>/release/{name} {})",
            input.len(),
            path.display(),
            path.display()
        );
    }
    let bound = ALLOC_BYTES_BASE + ALLOC_BYTES_MAX_PER_INPUT_BYTE * input.len();
    assert!(
        used <= bound,
        "fuzz target {name} allocated {used} bytes for a {}-byte input (bound {bound})",
        input.len()
    );
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            out.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    out
}

/// One random edit: flip, set, insert, delete, duplicate a range, or splice
/// in an interesting integer.
fn mutate(rng: &mut Xoshiro256PlusPlus, input: &mut Vec<u8>) {
    let pick = |rng: &mut Xoshiro256PlusPlus, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    match rng.next_u32() % 6 {
        0 if !input.is_empty() => {
            let i = pick(rng, input.len());
            input[i] ^= 1 << (rng.next_u32() % 8);
        }
        1 if !input.is_empty() => {
            let i = pick(rng, input.len());
            input[i] = rng.next_u32() as u8;
        }
        2 => {
            let i = pick(rng, input.len() + 1);
            input.insert(i, rng.next_u32() as u8);
        }
        3 if !input.is_empty() => {
            let i = pick(rng, input.len());
            let n = pick(rng, input.len() - i) + 1;
            input.drain(i..i + n);
        }
        4 if !input.is_empty() => {
            let i = pick(rng, input.len());
            let n = pick(rng, (input.len() - i).min(64)) + 1;
            let copy: Vec<u8> = input[i..i + n].to_vec();
            let at = pick(rng, input.len() + 1);
            input.splice(at..at, copy);
        }
        _ if input.len() >= 8 => {
            let interesting = [
                0u64,
                1,
                0x7f,
                0xff,
                0xffff,
                0x7fff_ffff,
                u32::MAX as u64,
                u64::MAX,
            ];
            let v = interesting[pick(rng, interesting.len())];
            let width = [1usize, 2, 4, 8][pick(rng, 4)];
            let i = pick(rng, input.len() - width + 1);
            input[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        _ => input.push(rng.next_u32() as u8),
    }
    input.truncate(INPUT_BYTES_MAX);
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_random_mutations() {
    for &(name, target) in engine::fuzz::TARGETS {
        let mut pool = corpus(name);
        let committed = pool.len();
        assert!(committed > 0, "no committed corpus for fuzz target {name}");
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../fuzz/fuzz_targets/{name}.rs"));
        assert!(bin.exists(), "no libFuzzer binary for fuzz target {name}");
        pool.extend(engine::fuzz::seeds(name));
        for input in &pool {
            run(name, target, input);
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xf022 ^ name.len() as u64);
        let mutations = if name == "wal" || name == "nvm" {
            MUTATIONS / 5
        } else {
            MUTATIONS
        };
        for _ in 0..mutations {
            let mut input = pool[rng.next_u64() as usize % pool.len()].clone();
            for _ in 0..1 + rng.next_u32() % 4 {
                mutate(&mut rng, &mut input);
            }
            run(name, target, &input);
        }
        println!("{name}: {committed} corpus files, {mutations} mutations");
    }
}

/// The checkers catch what they are for: a target that panics, and one
/// that trusts a length field.
#[test]
fn the_harness_catches_a_panic_and_an_unbounded_allocation() {
    let panics = std::panic::catch_unwind(|| run("planted", |d| assert!(d.len() < 3), b"abcd"));
    assert!(panics.is_err(), "a panicking target went unnoticed");
    let greedy = std::panic::catch_unwind(|| {
        run(
            "planted",
            |d| {
                let n = u32::from_le_bytes(d[..4].try_into().unwrap()) as usize;
                std::hint::black_box(Vec::<u8>::with_capacity(n));
            },
            &(64u32 << 20).to_le_bytes(),
        )
    });
    assert!(
        greedy.is_err(),
        "an allocation of 64 MiB for 4 bytes went unnoticed"
    );
}

/// The committed corpus holds every generated seed, so `make fuzz` starts
/// from them: a change to `engine::fuzz::seeds` without a new corpus fails
/// here. `FUZZ_WRITE_SEEDS=1 cargo test -p engine --test fuzz` writes the
/// missing ones (then commit them).
#[test]
fn the_committed_corpus_holds_every_generated_seed() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for &(name, _) in engine::fuzz::TARGETS {
        let committed = corpus(name);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        for (i, seed) in engine::fuzz::seeds(name).iter().enumerate() {
            if committed.contains(seed) {
                continue;
            }
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
            } else {
                panic!(
                    "seed {i} of fuzz target {name} is not in {}: run \
                     FUZZ_WRITE_SEEDS=1 cargo test -p engine --test fuzz and commit it",
                    dir.display()
                );
            }
        }
    }
}
