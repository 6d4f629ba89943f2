//! Core cost per committed command: 3 replicas stepped in memory with no
//! I/O (zero-latency delivery, persists complete at once), 64-byte
//! commands, at batch sizes 1, 16 and 256.
//!
//! Criterion reports time per round (one full window of full batches) and
//! the element throughput (commands per second); the line printed after
//! each group gives ns per committed command directly.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::sim::lockstep::Lockstep;

const WINDOW: u32 = 8;

fn core_per_command(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_3_replicas");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for batch in [1u32, 16, 256] {
        let mut cluster = Lockstep::new(3, WINDOW, batch, 64);
        group.throughput(Throughput::Elements(cluster.round_commands()));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, _| {
            b.iter(|| cluster.round())
        });
    }
    group.finish();
    // A direct figure for the note: ns per committed command.
    for batch in [1u32, 16, 256] {
        let mut cluster = Lockstep::new(3, WINDOW, batch, 64);
        for _ in 0..10 {
            cluster.round();
        }
        let before = cluster.committed_commands();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            cluster.round();
        }
        let n = cluster.committed_commands() - before;
        println!(
            "core_3_replicas batch {batch:>3}: {:>7.1} ns per committed command ({n} commands)",
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }
}

criterion_group!(benches, core_per_command);
criterion_main!(benches);
