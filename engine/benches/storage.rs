//! Append + commit cost per record, by backend, record size and group size.
//!
//! One iteration writes a persist request of `group` entries of `size`
//! payload bytes and syncs it (one group commit). Backends: `mem`, `nvm`
//! with the CPU's cache-line flush (clwb here) on `/dev/shm`, `nvm` with
//! msync on `/dev/shm`, and the `wal` with fdatasync in the temp directory
//! (a real disk). Logs are truncated as they fill, as after checkpoints; that
//! cost is included, amortized.
//!
//! Criterion reports time per group commit; the table printed at the end
//! gives ns per record directly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::core::{
    Ballot, BatchBuilder, ClientId, ClusterId, EntryWrite, PersistRequest, PersistToken, ReplicaId,
    Slot, Value,
};
use engine::storage::mem::MemStorage;
use engine::storage::nvm::region::{FlushMode, MmapRegion};
use engine::storage::nvm::{AREA_OFFSET, NvmLog};
use engine::storage::wal::Wal;
use engine::storage::wal::file::StdDir;
use engine::storage::{Storage, StorageError};

const SIZES: [usize; 3] = [64, 1024, 4096];
const GROUPS: [u64; 3] = [1, 16, 256];
const NVM_AREA: u64 = 256 * 1024 * 1024;

/// A batch whose encoded form is `size` bytes.
fn value(size: usize) -> Value {
    let mut b = BatchBuilder::with_capacity(size);
    b.push(ClientId(1), 1, 1, &vec![0x5a; size.saturating_sub(28)]);
    Value::Batch(b.finish())
}

/// A backend under test and how to keep it from filling up.
struct Subject {
    log: Box<dyn Storage>,
    token: u64,
    slot: u64,
    /// Truncate every this many slots.
    truncate_every: u64,
    _cleanup: Option<PathBuf>,
}

impl Subject {
    fn commit(&mut self, group: u64, v: &Value) -> Result<(), StorageError> {
        self.token += 1;
        let entries = (0..group)
            .map(|i| EntryWrite {
                slot: Slot(self.slot + i),
                ballot: Ballot::new(1, ReplicaId(1)),
                value: v.clone(),
            })
            .collect();
        self.slot += group;
        self.log.write(PersistRequest {
            token: PersistToken(self.token),
            promised: None,
            entries,
            commit: None,
        })?;
        self.log.sync()?;
        if self.slot % self.truncate_every < group {
            self.log.truncate_below(Slot(self.slot))?;
        }
        Ok(())
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some(p) = &self._cleanup {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn scratch(name: &str, base: PathBuf) -> PathBuf {
    let p = base.join(format!("bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

fn subject(backend: &str, size: usize) -> Subject {
    let id = ReplicaId(1);
    let cluster = ClusterId(1);
    // Keep each log under ~64 MiB of live records.
    let truncate_every = (64 * 1024 * 1024 / (size as u64 + 64)).max(256);
    let (log, cleanup): (Box<dyn Storage>, Option<PathBuf>) = match backend {
        "mem" => (Box::new(MemStorage::formatted()), None),
        "nvm-clwb" | "nvm-msync" => {
            let mode = if backend == "nvm-msync" {
                FlushMode::Msync
            } else {
                FlushMode::detect()
            };
            let path = scratch(backend, PathBuf::from("/dev/shm"));
            let region = MmapRegion::open(&path, AREA_OFFSET + NVM_AREA, true, mode).unwrap();
            (
                Box::new(NvmLog::format(region, cluster, id).unwrap()),
                Some(path),
            )
        }
        "wal" => {
            let path = scratch("wal", std::env::temp_dir());
            let dir = StdDir::new(&path).unwrap();
            (
                Box::new(Wal::format(dir, cluster, id, 64 * 1024 * 1024).unwrap()),
                Some(path),
            )
        }
        _ => unreachable!(),
    };
    Subject {
        log,
        token: 0,
        slot: 0,
        truncate_every,
        _cleanup: cleanup,
    }
}

const BACKENDS: [&str; 4] = ["mem", "nvm-clwb", "nvm-msync", "wal"];

fn storage(c: &mut Criterion) {
    let mut table = Vec::new();
    for backend in BACKENDS {
        let mut group = c.benchmark_group(format!("append_commit_{backend}"));
        if backend == "wal" {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(3));
        } else {
            group.measurement_time(Duration::from_secs(2));
        }
        group.warm_up_time(Duration::from_millis(300));
        for size in SIZES {
            let v = value(size);
            for g in GROUPS {
                let mut s = subject(backend, size);
                group.throughput(Throughput::Elements(g));
                group.bench_with_input(BenchmarkId::new(format!("{size}B"), g), &g, |b, g| {
                    b.iter(|| s.commit(*g, &v).unwrap())
                });
                // The table: ns per record, measured directly.
                let start = Instant::now();
                let mut records = 0;
                let budget = if backend == "wal" { 1500 } else { 300 };
                while start.elapsed() < Duration::from_millis(budget) {
                    s.commit(g, &v).unwrap();
                    records += g;
                }
                let ns = start.elapsed().as_nanos() as f64 / records as f64;
                let flushes = s.log.stats().flushes;
                table.push((backend, size, g, ns, flushes));
            }
        }
        group.finish();
    }
    println!(
        "\nappend+commit, ns per record (flush mode on this CPU: {})",
        FlushMode::detect()
    );
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>12}",
        "backend", "size", "group 1", "group 16", "group 256"
    );
    for backend in BACKENDS {
        for size in SIZES {
            let row: Vec<String> = GROUPS
                .iter()
                .map(|g| {
                    let ns = table
                        .iter()
                        .find(|(b, s, gg, _, _)| *b == backend && *s == size && gg == g)
                        .map_or(0.0, |r| r.3);
                    format!("{ns:>12.0}")
                })
                .collect();
            println!("{backend:<10} {:>5}B {}", size, row.join(" "));
        }
    }
}

criterion_group!(benches, storage);
criterion_main!(benches);
