//! The replica's storage: opening (or formatting) a backend and
//! recovering it, and persisting the core's requests inline or on the
//! WAL's sync thread (group commit).

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::{ClusterId, DurableState, ReplicaId, Slot};
use crate::instrumentation::{LabRef, LocalRecorder, Stage, now_ns};
use crate::storage::{Storage, StorageError, StorageStats};

use super::Event;

/// Runs storage syncs off the core: takes every request queued, writes
/// them, syncs once, reports the token. With a lab, each sync is timed
/// under the backend's flush stage.
pub(super) fn sync_thread_main(
    mut storage: Box<dyn Storage + Send>,
    rx: std::sync::mpsc::Receiver<crate::core::PersistRequest>,
    events: mpsc::Sender<Event>,
    lab: Option<(LabRef, Stage)>,
    truncate: Arc<AtomicU64>,
    stats: Arc<Mutex<StorageStats>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut truncated = 0;
    let mut rec = lab
        .as_ref()
        .map(|(l, _)| LocalRecorder::new(&l.lab, l.process));
    loop {
        let req = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(req) => req,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: hand what was recorded to the lab.
                if let (Some(rec), Some((l, _))) = (&mut rec, &lab) {
                    rec.merge_if_due(&l.lab, now_ns());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut flow = 0;
        let mut note = |req: &crate::core::PersistRequest| {
            if let Some((l, _)) = &lab
                && flow == 0
                && l.lab.tracing()
            {
                flow = req
                    .entries
                    .iter()
                    .filter_map(|e| match &e.value {
                        crate::core::Value::Batch(b) => {
                            b.iter().find_map(|c| l.lab.flow_of(c.client.0, c.seq))
                        }
                        crate::core::Value::Noop | crate::core::Value::Config(_) => None,
                    })
                    .next()
                    .unwrap_or(0);
            }
        };
        note(&req);
        let mut r = storage.write(req);
        while r.is_ok() {
            match rx.try_recv() {
                Ok(more) => {
                    note(&more);
                    r = storage.write(more)
                }
                Err(_) => break,
            }
        }
        let start = if lab.is_some() { now_ns() } else { 0 };
        let synced = r.and_then(|()| storage.sync());
        if let (Some(rec), Some((l, stage))) = (&mut rec, &lab) {
            let end = now_ns();
            rec.span(*stage, start, end, 0, flow);
            rec.merge_if_due(&l.lab, end);
        }
        // A checkpoint made the log below this slot unnecessary.
        let below = truncate.load(AtomicOrdering::Relaxed);
        let synced = synced.and_then(|t| {
            if below > truncated {
                truncated = below;
                storage.truncate_below(Slot(below))?;
            }
            Ok(t)
        });
        *stats.lock().expect("storage stats") = storage.stats();
        let ev = match synced {
            Ok(t) => Event::Persisted(t),
            Err(e) => Event::StorageFailed(e),
        };
        let failed = matches!(ev, Event::StorageFailed(_));
        if events.blocking_send(ev).is_err() || failed {
            break;
        }
    }
    if let (Some(rec), Some((l, _))) = (&mut rec, &lab) {
        l.lab.merge(rec);
    }
}

pub(super) enum Persist {
    Inline(Box<dyn Storage + Send>),
    /// The WAL's sync thread, and the slot below which it truncates after
    /// its next sync.
    Thread(
        std::sync::mpsc::Sender<crate::core::PersistRequest>,
        Arc<AtomicU64>,
        Arc<Mutex<StorageStats>>,
    ),
}

impl Persist {
    /// The storage figures (the sync thread's as of its last sync).
    pub(super) fn stats(&self) -> StorageStats {
        match self {
            Persist::Inline(s) => s.stats(),
            Persist::Thread(_, _, stats) => *stats.lock().expect("storage stats"),
        }
    }

    /// Makes everything written durable (inline storage; the sync thread
    /// syncs what it was handed itself).
    pub(super) fn sync_now(&mut self) -> Result<(), StorageError> {
        if let Persist::Inline(s) = self {
            s.sync()?;
        }
        Ok(())
    }
}

/// Which storage a replica runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageSpec {
    /// In memory: volatile. A restarted process has lost everything, so it
    /// must come back as a new replica (`bootstrap`): for tests and benchmarks.
    Mem,
    /// Segment files in `dir` on a disk.
    Wal {
        dir: std::path::PathBuf,
        segment_bytes: u64,
    },
    /// A memory-mapped file of `bytes` (emulated NVM; `/dev/shm` by default).
    Nvm {
        path: std::path::PathBuf,
        bytes: u64,
        flush: crate::storage::nvm::region::FlushMode,
    },
}

impl StorageSpec {
    pub fn name(&self) -> &'static str {
        match self {
            StorageSpec::Mem => "mem",
            StorageSpec::Wal { .. } => "wal",
            StorageSpec::Nvm { .. } => "nvm",
        }
    }
}

/// An opened backend, what it recovered, and whether syncs need a thread.
pub struct OpenedStorage {
    pub storage: Box<dyn Storage + Send>,
    pub state: DurableState,
    pub sync_thread: bool,
    /// How it flushes (NVM: `clwb`, `clflushopt`, `clflush` or `msync`).
    pub flush_mode: Option<String>,
}

/// Opens (or with `bootstrap`, creates) a replica's storage and recovers it.
/// Without `bootstrap`, a missing log is an error: a replica that lost its
/// disk must not come back under its old identity. With `bootstrap`, an
/// existing log is an error too: never overwrite one.
pub fn open_storage(
    spec: &StorageSpec,
    cluster: ClusterId,
    replica: ReplicaId,
    bootstrap: bool,
) -> Result<OpenedStorage, StorageError> {
    use crate::storage::mem::MemStorage;
    use crate::storage::nvm::region::MmapRegion;
    use crate::storage::nvm::{AREA_OFFSET, NvmLog};
    use crate::storage::wal::Wal;
    use crate::storage::wal::file::StdDir;
    match spec {
        StorageSpec::Mem => {
            if !bootstrap {
                return Err(StorageError::NotFormatted {
                    subject: "mem storage".into(),
                    detail: "in-memory storage does not survive a restart".into(),
                });
            }
            let mut m = MemStorage::formatted();
            let state = m.recover()?;
            Ok(OpenedStorage {
                storage: Box::new(m),
                state,
                sync_thread: false,
                flush_mode: None,
            })
        }
        StorageSpec::Wal { dir, segment_bytes } => {
            let subject = dir.display().to_string();
            let d = StdDir::new(dir)
                .map_err(|e| StorageError::io(subject.clone(), "create directory", e))?;
            let mut wal = if bootstrap {
                Wal::format(d, cluster, replica, *segment_bytes)?
            } else {
                Wal::open(d, cluster, replica, *segment_bytes)
            };
            let state = wal.recover()?;
            Ok(OpenedStorage {
                storage: Box::new(wal),
                state,
                sync_thread: true,
                flush_mode: Some("fdatasync".into()),
            })
        }
        StorageSpec::Nvm { path, bytes, flush } => {
            let subject = path.display().to_string();
            let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
            if bootstrap && exists {
                return Err(StorageError::Foreign {
                    subject,
                    detail: "already holds a log; refusing to overwrite it".into(),
                });
            }
            if !bootstrap && !exists {
                return Err(StorageError::NotFormatted {
                    subject,
                    detail: "no log file here".into(),
                });
            }
            let region = MmapRegion::open(path, AREA_OFFSET + bytes, bootstrap, *flush)
                .map_err(|e| StorageError::io(subject.clone(), "map", e))?;
            let mut log = if bootstrap {
                NvmLog::format(region, cluster, replica)?
            } else {
                NvmLog::open(region, cluster, replica)?
            };
            tracing::info!(path = %subject, flush = %log.flush_mode(), "nvm log open");
            let flush_mode = Some(log.flush_mode().to_string());
            let state = log.recover()?;
            Ok(OpenedStorage {
                storage: Box::new(log),
                state,
                sync_thread: false,
                flush_mode,
            })
        }
    }
}
