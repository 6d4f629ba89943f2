//! Checkpoints: restored at start, taken (the core freezes the executor, a
//! thread serializes and writes it), fetched from a peer when this replica
//! is behind the leader's log, installed, and the log truncated behind
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use tokio::sync::mpsc;

use crate::checkpoint::{CHECKPOINT_BYTES_MAX, CheckpointStore};
use crate::core::{DurableState, FetchCheckpoint, ReplicaId, RoleKind, Slot};
use crate::instrumentation::now_ns;
use crate::state_machine::{Executor, FrozenExecutor, StateMachine};

use crate::transport::net::Network;

use super::persist::Persist;
use super::task::CoreTask;
use super::{CheckpointConfig, Event, Fetched, NodeConfig, NodeError, conn};

/// Checkpoints taken here (with checkpoints on) and fetched from peers.
pub(super) struct Checkpoints {
    pub(super) checkpointer: Option<Checkpointer>,
    pub(super) fetch: FetchState,
}

/// Loads the newest good checkpoint into `executor` and cuts the recovered
/// log to start there; the checkpoint's slot (0: none) and the store.
pub(super) fn restore_checkpoint<S: StateMachine>(
    cfg: &NodeConfig,
    state: &mut DurableState,
    executor: &mut Executor<S>,
) -> Result<(Slot, Option<CheckpointStore>), NodeError> {
    let Some(ck) = &cfg.checkpoint else {
        if state.log_start > Slot::ZERO {
            return Err(NodeError::Recovery(format!(
                "the log starts at slot {} but checkpoints are off: slots below it would be lost",
                state.log_start.0
            )));
        }
        return Ok((Slot::ZERO, None));
    };
    let store = CheckpointStore::open(&ck.dir, cfg.core.cluster, cfg.core.id, ck.retain.max(1))?;
    let _restoring = tracing::info_span!(parent: None, "checkpoint.restore").entered();
    let (found, skipped) = store.load_newest()?;
    for e in &skipped {
        tracing::warn!(error = %e, "skipping a checkpoint that does not verify");
    }
    let Some((info, body)) = found else {
        if state.log_start > Slot::ZERO {
            return Err(NodeError::Recovery(format!(
                "the log starts at slot {} and no checkpoint in {} verifies: slots below it would be lost",
                state.log_start.0,
                ck.dir.display()
            )));
        }
        return Ok((Slot::ZERO, Some(store)));
    };
    executor
        .restore(&body)
        .map_err(|e| NodeError::Recovery(format!("checkpoint {}: {e}", info.path.display())))?;
    let c = executor.next_slot();
    if c != info.slot {
        return Err(NodeError::Recovery(format!(
            "checkpoint {} says slot {} but its state is at {}",
            info.path.display(),
            info.slot.0,
            c.0
        )));
    }
    if state.log_start > c {
        return Err(NodeError::Recovery(format!(
            "the log starts at slot {} beyond the newest checkpoint ({}): slots {}..{} would be lost",
            state.log_start.0, c.0, c.0, state.log_start.0
        )));
    }
    // Slots below the checkpoint are applied: the replica starts there.
    state.entries.retain(|e| e.slot >= c);
    state.log_start = c;
    state.commit = state.commit.max(c);
    state.membership = executor.membership().cloned();
    tracing::info!(slot = c.0, path = %info.path.display(), "restored a checkpoint");
    Ok((c, Some(store)))
}

/// Takes checkpoints: the core freezes the executor, a thread serializes
/// and writes it.
pub(super) struct Checkpointer {
    pub(super) cfg: CheckpointConfig,
    /// The store (also written by the checkpoint thread and by fetches:
    /// each writes files of its own slots).
    pub(super) store: CheckpointStore,
    pub(super) tx: std::sync::mpsc::SyncSender<(Slot, FrozenExecutor, tracing::Span)>,
    /// The newest durable checkpoint.
    pub(super) newest: Slot,
    /// Applied slot at the last checkpoint taken (durable or in flight).
    pub(super) taken: Slot,
    /// Payload bytes applied since then.
    pub(super) bytes_since: u64,
    /// Slots counted as applied before the first checkpoint: see `start`.
    pub(super) slots_credit: u64,
    pub(super) taken_at: std::time::Instant,
    pub(super) in_flight: bool,
    /// The application asked for a checkpoint not yet taken.
    pub(super) requested: bool,
    pub(super) written: u64,
    pub(super) failed: u64,
}

impl Checkpointer {
    pub(super) fn start(
        cfg: CheckpointConfig,
        store: CheckpointStore,
        newest: Slot,
        events: mpsc::Sender<Event>,
        id: ReplicaId,
        (place, members): (u64, u64),
    ) -> Checkpointer {
        // One checkpoint in flight: the queue holds at most one more.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Slot, FrozenExecutor, tracing::Span)>(1);
        let store_thread = store.clone();
        std::thread::Builder::new()
            .name(format!("checkpoint-{id}"))
            .spawn(move || {
                // A low priority: serializing a large state takes tens of
                // milliseconds of CPU, which should come from idle time,
                // not from the core tasks'.
                lower_thread_priority();
                // Kept from one checkpoint to the next: megabytes mapped,
                // faulted in and unmapped each time would contend with the
                // core task's own page faults and allocations.
                let (mut body, mut file) = (Vec::new(), Vec::new());
                while let Ok((slot, frozen, span)) = rx.recv() {
                    let serializing = tracing::info_span!(parent: &span, "checkpoint.serialize");
                    // Consumes the frozen copy: what it alone holds (the
                    // state the core has changed since) is freed here.
                    body.clear();
                    serializing.in_scope(|| frozen.write(&mut body));
                    span.record("bytes", body.len() as u64);
                    let ev = match store_thread.write_reusing(slot, &body, &mut file) {
                        Ok((_, oldest)) => Event::CheckpointWritten { slot, oldest },
                        Err(e) => Event::CheckpointFailed(e),
                    };
                    if events.blocking_send(ev).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the checkpoint thread");
        Checkpointer {
            // Staggered: the member at `place` of `members` (by id) takes
            // its first checkpoint that fraction of an interval early, and
            // keeps the offset, so the replicas of a cluster do not all
            // serialize, write and truncate at the same slot (a leader and
            // a follower busy at once slow every commit).
            bytes_since: cfg.every_bytes / members.max(1) * place,
            slots_credit: cfg.every_slots / members.max(1) * place,
            cfg,
            store: store.clone(),
            tx,
            newest,
            taken: newest,
            taken_at: std::time::Instant::now(),
            in_flight: false,
            requested: false,
            written: 0,
            failed: 0,
        }
    }

    /// Whether a checkpoint at `applied` is due. The clock is read only
    /// on a tick (`ticked`): a burst of commands pays no clock read, and
    /// the time trigger is as precise as the tick.
    pub(super) fn due(&self, applied: Slot, ticked: bool) -> bool {
        !self.in_flight
            && applied > self.taken
            && (self.requested
                || applied.since(self.taken) + self.slots_credit >= self.cfg.every_slots
                || self.bytes_since >= self.cfg.every_bytes
                || (ticked && self.taken_at.elapsed() >= self.cfg.every))
    }
}

/// Gives the calling thread a low scheduling priority (nice 10; on Linux
/// the nice value is per thread). Best effort: a failure leaves it at the
/// default priority.
pub(super) fn lower_thread_priority() {
    // Nice 10, not 19: a CPU-bound replica at saturation still gives the
    // thread about a tenth of a core (nice 19: 1.5%), so checkpoints keep
    // up and the log can be truncated behind them.
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; on Linux who = 0 is
        // the calling thread (elsewhere it would be the whole process).
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the checkpoint thread's priority");
        }
    }
}

/// Catch-up by checkpoint: at most one fetch at a time.
pub(super) struct FetchState {
    pub(super) network: Network,
    pub(super) frame_bytes_max: usize,
    pub(super) in_flight: bool,
    pub(super) installed: u64,
    pub(super) failed: u64,
    pub(super) events: mpsc::Sender<Event>,
}

impl<S: StateMachine> CoreTask<S> {
    /// Freezes the executor and hands it to the checkpoint thread when one
    /// is due. Freezing runs here, between commands (the state must not
    /// change under it); serializing, writing and `fsync` run on the thread.
    pub(super) fn maybe_checkpoint(&mut self, ticked: bool) {
        let applied = self.executor.next_slot();
        let Some(c) = &mut self.checkpoints.checkpointer else {
            return;
        };
        if self.executor.take_checkpoint_request() {
            c.requested = true;
        }
        if !c.due(applied, ticked) {
            return;
        }
        let freezing = self.lab.spans.checkpoint_started(applied);
        let frozen = self.executor.freeze();
        drop(freezing);
        let queued =
            c.tx.try_send((applied, frozen, self.lab.spans.checkpoint()))
                .is_ok();
        self.lab.spans.checkpoint_queued(queued);
        if queued {
            c.in_flight = true;
            c.requested = false;
            c.taken = applied;
            c.bytes_since = 0;
            c.slots_credit = 0;
            c.taken_at = std::time::Instant::now();
        }
    }

    /// A checkpoint is durable: the log below the oldest one kept goes.
    pub(super) fn checkpoint_written(&mut self, slot: Slot, oldest: Slot) {
        let Some(c) = &mut self.checkpoints.checkpointer else {
            return;
        };
        c.in_flight = false;
        c.written += 1;
        c.newest = c.newest.max(slot);
        self.lab.spans.checkpoint_done(Ok(()));
        tracing::debug!(slot = slot.0, oldest = oldest.0, "checkpoint written");
        self.replica.checkpoint_saved(slot);
        self.truncate_log(oldest);
    }

    /// Forgets the durable log below `slot` (a durable checkpoint covers it).
    pub(super) fn truncate_log(&mut self, slot: Slot) {
        let oldest = slot;
        match &mut self.persist {
            Persist::Inline(s) => {
                if let Err(e) = s.truncate_below(oldest) {
                    // Truncation is a storage write: a failure stops the
                    // replica like any other (the next flush reports it).
                    tracing::error!(error = %e, "truncating the log failed");
                    self.replica.on_storage_failed();
                }
            }
            Persist::Thread(_, below, _) => {
                below.fetch_max(oldest.0, AtomicOrdering::Relaxed);
            }
        }
    }

    /// The core asks for a checkpoint from a peer: fetch it on a task of
    /// its own (one at a time), keep it in the store, report back.
    pub(super) fn start_fetch(&mut self, f: FetchCheckpoint) {
        if self.checkpoints.fetch.in_flight {
            return;
        }
        let Some(store) = self
            .checkpoints
            .checkpointer
            .as_ref()
            .map(|c| c.store.clone())
        else {
            tracing::error!(
                peer = %f.from,
                "this replica is behind the leader's log and needs a checkpoint, but checkpoints are off"
            );
            return;
        };
        let Some(addr) = self
            .peers
            .addresses
            .iter()
            .find(|(id, _)| *id == f.from.0)
            .map(|(_, a)| a.clone())
        else {
            return;
        };
        let link = conn::PeerLink {
            network: self.checkpoints.fetch.network.clone(),
            cluster: self.cluster,
            me: self.id,
            peer: f.from,
            addr,
            frame_bytes_max: self.checkpoints.fetch.frame_bytes_max,
            discarded: self.peers.frames_discarded.clone(),
            connected: Arc::new(AtomicBool::new(false)),
        };
        self.checkpoints.fetch.in_flight = true;
        if let Some(p) = &mut self.lab.probe {
            p.fetch_started(now_ns());
        }
        tracing::info!(peer = %f.from, at_least = f.at_least.0, "behind the leader's log: fetching a checkpoint");
        self.lab.spans.fetch_started(f.from.0, f.at_least);
        let events = self.checkpoints.fetch.events.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = match conn::fetch_checkpoint(&link, f.at_least, CHECKPOINT_BYTES_MAX).await {
                Err(why) => Err(why),
                Ok((_, file)) => {
                    let bytes = file.len() as u64;
                    tokio::task::spawn_blocking(move || store.install_file(&file))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map(|(info, body)| Fetched {
                            slot: info.slot,
                            body,
                            bytes,
                            secs: started.elapsed().as_secs_f64(),
                            from: link.peer,
                        })
                }
            };
            let _ = events.send(Event::CheckpointFetched(r)).await;
        });
    }

    /// A fetched checkpoint is durable here: the state machine and the core
    /// continue from it, and the log below it goes. The core's output was
    /// flushed just before.
    pub(super) fn checkpoint_fetched(&mut self, r: Result<Fetched, String>) {
        self.checkpoints.fetch.in_flight = false;
        let f = match r {
            Ok(f) => f,
            Err(why) => {
                self.checkpoints.fetch.failed += 1;
                tracing::warn!(%why, "fetching a checkpoint failed; the next catch-up request retries");
                self.lab.spans.fetch_done("failed");
                return;
            }
        };
        if self.replica.role() != RoleKind::Follower || f.slot <= self.replica.commit() {
            tracing::info!(slot = f.slot.0, "a fetched checkpoint is no longer needed");
            self.lab.spans.fetch_done("not needed");
            return;
        }
        if let Err(e) = self.executor.restore(&f.body) {
            self.checkpoints.fetch.failed += 1;
            tracing::error!(error = %e, slot = f.slot.0, "a fetched checkpoint does not restore");
            self.lab.spans.fetch_done("does not restore");
            return;
        }
        assert_eq!(
            self.executor.next_slot(),
            f.slot,
            "a verified checkpoint's state is at its slot"
        );
        let installed = self
            .replica
            .install_checkpoint(f.slot, self.executor.membership());
        assert!(installed, "install preconditions were checked");
        self.checkpoints.fetch.installed += 1;
        if let Some(c) = &mut self.checkpoints.checkpointer {
            c.newest = c.newest.max(f.slot);
            c.taken = c.taken.max(f.slot);
            c.taken_at = std::time::Instant::now();
        }
        self.truncate_log(f.slot);
        if let Some(p) = &mut self.lab.probe {
            p.fetch_installed(f.slot, now_ns());
        }
        self.lab.spans.fetch_done("installed");
        tracing::info!(
            peer = %f.from,
            slot = f.slot.0,
            bytes = f.bytes,
            ms = f.secs * 1e3,
            mib_s = f.bytes as f64 / (1 << 20) as f64 / f.secs.max(1e-9),
            "installed a checkpoint from a peer"
        );
    }
}
