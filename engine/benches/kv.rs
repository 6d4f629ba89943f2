//! The example state machine's cost per applied put: `KvStore::apply` of
//! 64-byte puts over 1,000 keys (the table stays in cache) and 100,000 keys
//! (the lab's key space: every put misses the cache), keys drawn uniformly
//! and encoded as the load generator does (`k` and ten digits).
//!
//! Criterion reports time per put (one element); the line printed after the
//! group gives ns per put directly.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::kv::{KvOp, KvStore};
use engine::state_machine::StateMachine;

/// Puts prepared per key space (drawn in a fixed order, replayed cyclically).
const OPS: usize = 1 << 18;

fn puts(keys: u64) -> Vec<Bytes> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..OPS)
        .map(|_| {
            // xorshift64: a fixed, uniform-enough sequence of keys.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut key = Vec::with_capacity(11);
            write!(key, "k{:010}", x % keys).expect("write to a Vec");
            KvOp::Put {
                key: key.into(),
                value: Bytes::from(vec![7u8; 64]),
            }
            .encode()
        })
        .collect()
}

/// A store holding every key of the space, and a result buffer.
fn filled(ops: &[Bytes]) -> (KvStore, BytesMut) {
    let mut kv = KvStore::new();
    let mut out = BytesMut::with_capacity(1 << 20);
    for op in ops {
        apply(&mut kv, &mut out, op);
    }
    (kv, out)
}

fn apply(kv: &mut KvStore, out: &mut BytesMut, op: &[u8]) {
    if out.capacity() < 64 {
        *out = BytesMut::with_capacity(1 << 20);
    }
    kv.apply(op, out);
    drop(out.split());
}

fn kv_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_put");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(300));
    group.throughput(Throughput::Elements(1));
    for keys in [1_000u64, 100_000] {
        let ops = puts(keys);
        let (mut kv, mut out) = filled(&ops);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("keys", keys), &keys, |b, _| {
            b.iter(|| {
                apply(&mut kv, &mut out, &ops[i % OPS]);
                i += 1;
            })
        });
    }
    group.finish();
    for keys in [1_000u64, 100_000] {
        let ops = puts(keys);
        let (mut kv, mut out) = filled(&ops);
        let start = Instant::now();
        for op in ops.iter().cycle().take(4 * OPS) {
            apply(&mut kv, &mut out, op);
        }
        println!(
            "kv_put keys {keys:>6}: {:>6.1} ns per put",
            start.elapsed().as_nanos() as f64 / (4 * OPS) as f64
        );
        // As the executor applies a batch: each put told 8 and 4 puts
        // ahead (`StateMachine::prefetch`).
        let start = Instant::now();
        let n = 4 * OPS;
        for i in 0..n {
            kv.prefetch(&ops[(i + 8) % OPS], false);
            kv.prefetch(&ops[(i + 4) % OPS], true);
            apply(&mut kv, &mut out, &ops[i % OPS]);
        }
        println!(
            "kv_put keys {keys:>6}: {:>6.1} ns per put, prefetched",
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }
}

/// A snapshot (what a checkpoint serializes, on its own thread) of a
/// store of 100,000 keys with 64-byte values.
fn kv_snapshot(c: &mut Criterion) {
    let ops = puts(100_000);
    let (kv, _) = filled(&ops);
    let mut group = c.benchmark_group("kv_snapshot");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("keys", kv.len()), |b| {
        b.iter(|| {
            let mut out = Vec::new();
            kv.snapshot(&mut out);
            out
        })
    });
    group.finish();
    let start = Instant::now();
    let mut out = Vec::new();
    for _ in 0..10 {
        out.clear();
        kv.snapshot(&mut out);
    }
    println!(
        "kv_snapshot keys {}: {:.2} ms per snapshot ({} bytes)",
        kv.len(),
        start.elapsed().as_secs_f64() * 100.0,
        out.len()
    );
}

/// What a checkpoint costs the core's loop: freezing a store of 100,000
/// keys, and the first batch of 256 puts after it (each may copy the
/// bucket it writes, which the frozen copy still holds).
fn kv_freeze(c: &mut Criterion) {
    let ops = puts(100_000);
    let (mut kv, mut out) = filled(&ops);
    let mut group = c.benchmark_group("kv_freeze");
    group.bench_function(BenchmarkId::new("keys", kv.len()), |b| {
        b.iter(|| kv.freeze())
    });
    group.finish();
    let rounds = 200;
    let (mut freeze, mut batch) = (Duration::ZERO, Duration::ZERO);
    for r in 0..rounds {
        let start = Instant::now();
        let frozen = kv.freeze();
        freeze += start.elapsed();
        let start = Instant::now();
        for op in &ops[r * 256..(r + 1) * 256] {
            apply(&mut kv, &mut out, op);
        }
        batch += start.elapsed();
        drop(frozen);
    }
    println!(
        "kv_freeze keys {}: {:.1} us per freeze; the 256 puts after it {:.1} us",
        kv.len(),
        freeze.as_secs_f64() * 1e6 / rounds as f64,
        batch.as_secs_f64() * 1e6 / rounds as f64,
    );
}

criterion_group!(benches, kv_put, kv_snapshot, kv_freeze);
criterion_main!(benches);
