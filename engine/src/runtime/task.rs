//! The core task's loop: take a burst of events, hand each to the core or
//! to the concern it is for, then drain the core once and carry out what it
//! asks (send, persist, apply, answer), then the per-burst duties (the
//! application's role, checkpoints, configuration waiters, status).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::{Apply, Ballot, ClientReply, ClusterId, Output, Replica, ReplicaId, Slot};
use crate::instrumentation::now_ns;
use crate::state_machine::{Executor, StateMachine};
use crate::storage::StorageError;
use crate::transport::wire::{self, Frame};

use super::answers::{Clients, ConnState};
use super::checkpointing::Checkpoints;
use super::persist::Persist;
use super::status::Reporting;
use super::{Event, NodeError, probe, spans};

/// The core task: owns the protocol core, the executor and (inline) the
/// storage; every per-command step runs here, on one task, without locks.
/// Its state is grouped by concern; each group's code is in the module
/// named beside it.
pub(super) struct CoreTask<S> {
    pub(super) cluster: ClusterId,
    pub(super) id: ReplicaId,
    pub(super) replica: Replica,
    pub(super) executor: Executor<S>,
    /// Buffers reused from one pass to the next.
    pub(super) scratch: Scratch,
    /// Where persist requests go (persist.rs).
    pub(super) persist: Persist,
    /// The peer links (this file).
    pub(super) peers: Peers,
    /// Client connections and the answers owed them (answers.rs).
    pub(super) clients: Clients,
    /// Checkpoints taken and fetched (checkpointing.rs).
    pub(super) checkpoints: Checkpoints,
    /// What was published and how long there was no leader (status.rs).
    pub(super) report: Reporting,
    /// What the application was told of its role.
    pub(super) app: AppRole,
    /// The lab's probe and the `tracing` spans under way.
    pub(super) lab: LabState,
}

/// Buffers reused from one pass to the next.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) out: Output,
    pub(super) replies: Vec<ClientReply>,
}

/// The core's end of the peer links.
pub(super) struct Peers {
    pub(super) links: HashMap<ReplicaId, PeerTx>,
    /// The members and their addresses (for status reports and fetches).
    pub(super) addresses: Vec<(u32, String)>,
    /// Frames dropped here because a link's queue was full.
    pub(super) frames_dropped: u64,
    /// Counted by the peer senders.
    pub(super) frames_discarded: Arc<AtomicU64>,
}

/// The ballot the application was last told this replica leads (`None`:
/// told it is a secondary), and whether it was told the leadership
/// recovered.
#[derive(Default)]
pub(super) struct AppRole {
    pub(super) primary: Option<Ballot>,
    pub(super) recovered: bool,
}

/// The lab's probe (with a lab), the clock at the start of the current
/// burst (0 without a lab), and the `tracing` spans of elections,
/// checkpoints and fetches under way.
pub(super) struct LabState {
    pub(super) probe: Option<probe::Probe>,
    pub(super) burst_ns: u64,
    pub(super) spans: spans::Spans,
}

/// The core's end of a peer link.
pub(super) struct PeerTx {
    pub(super) tx: mpsc::Sender<Frame>,
    /// Set by the link's sender task while it holds a connection.
    pub(super) connected: Arc<AtomicBool>,
}

impl<S: StateMachine> CoreTask<S> {
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        tick: Duration,
        burst_max: usize,
    ) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.executor.state_machine_mut().became_secondary();
        loop {
            let (first, ticked) = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => (Some(ev), false),
                    // Every sender is gone: nothing can reach this replica.
                    None => return Ok(()),
                },
                _ = ticker.tick() => {
                    let veto = !self.executor.state_machine_mut().can_become_primary();
                    self.replica.set_lead_vetoed(veto);
                    self.replica.on_tick();
                    if self.replica.leader_hint().is_none() {
                        self.report.leaderless_ticks += 1;
                    }
                    (None, true)
                }
            };
            let mut next = first;
            let mut taken = 0;
            if self.lab.probe.is_some() {
                self.lab.burst_ns = now_ns();
            }
            loop {
                if let Some(ev) = next.take() {
                    taken += ev.cost();
                    match ev {
                        Event::Shutdown => {
                            self.carry_out()?;
                            self.persist.sync_now()?;
                            self.executor.state_machine_mut().shutdown();
                            self.publish(true);
                            if let Some(p) = &mut self.lab.probe {
                                p.finish();
                            }
                            return Ok(());
                        }
                        Event::StorageFailed(e) => return Err(self.storage_failed(e)),
                        Event::CheckpointFetched(r) => {
                            // Whatever the core produced so far goes out
                            // (and is applied) before the state is replaced.
                            if let Err(e) = self.carry_out() {
                                return Err(self.storage_failed(e));
                            }
                            self.checkpoint_fetched(r);
                        }
                        ev => self.handle(ev),
                    }
                }
                if taken >= burst_max {
                    break;
                }
                match events.try_recv() {
                    Ok(ev) => next = Some(ev),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.carry_out() {
                return Err(self.storage_failed(e));
            }
            self.notify_role();
            self.lab
                .spans
                .catchup(self.replica.catchup_to(), self.replica.commit());
            self.maybe_checkpoint(ticked);
            self.check_config_waiter();
            self.publish(ticked);
            if let Some(p) = &mut self.lab.probe {
                p.turn(self.lab.burst_ns, now_ns(), self.executor.next_slot());
            }
        }
    }

    /// Storage failed: the replica stops for good (fail-stop) and says so.
    pub(super) fn storage_failed(&mut self, e: StorageError) -> NodeError {
        self.replica.on_storage_failed();
        self.publish(true);
        tracing::error!(error = %e, "storage failed: the replica stops");
        NodeError::Storage(e)
    }

    pub(super) fn handle(&mut self, ev: Event) {
        match ev {
            Event::Peer { env, at } => {
                if let Some(p) = &mut self.lab.probe {
                    p.on_peer(&env.msg, at);
                }
                self.replica.on_message(env)
            }
            Event::Client { conn, reqs, at } => {
                for req in reqs {
                    self.on_client(conn, req, at);
                }
            }
            Event::FastRead { conn, read } => self.on_fast_read(conn, read),
            Event::Status { conn } => self.on_status(conn),
            Event::ConfigChange { conn, req } => self.on_config_change(conn, req),
            Event::Relinquish => {
                if self.replica.relinquish() {
                    tracing::info!("relinquished leadership");
                }
            }
            Event::ConnOpen { conn, tx } => {
                self.clients.conns.insert(conn, ConnState::new(tx));
            }
            Event::ConnClosed { conn } => {
                self.clients.conns.remove(&conn);
                self.clients.pending.retain(|_, c| *c != conn);
                if self
                    .clients
                    .config_waiter
                    .as_ref()
                    .is_some_and(|w| w.conn == conn)
                {
                    // The change goes on; nobody waits for its answer.
                    self.clients.config_waiter = None;
                }
            }
            Event::Persisted(t) => {
                if let Some(p) = &mut self.lab.probe {
                    p.on_durable(t, now_ns());
                }
                self.replica.on_persisted(t)
            }
            Event::CheckpointWritten { slot, oldest } => self.checkpoint_written(slot, oldest),
            Event::CheckpointFailed(e) => {
                // Nothing acknowledged depends on a checkpoint: the log
                // keeps everything until the next one succeeds.
                tracing::error!(error = %e, "checkpoint failed; the log is kept");
                self.lab.spans.checkpoint_done(Err("failed"));
                if let Some(c) = &mut self.checkpoints.checkpointer {
                    c.in_flight = false;
                    c.failed += 1;
                    c.taken = c.newest;
                }
            }
            Event::StorageFailed(_) | Event::Shutdown | Event::CheckpointFetched(_) => {
                unreachable!("handled by the loop")
            }
        }
    }

    /// Drains the core until it has nothing more to say: sends, persists
    /// (inline: then reports durability and drains again), applies, answers.
    pub(super) fn carry_out(&mut self) -> Result<(), StorageError> {
        loop {
            let mut out = std::mem::take(&mut self.scratch.out);
            if let Some(p) = &mut self.lab.probe {
                p.before_drain(&self.replica, now_ns());
            }
            self.replica.drain(&mut out);
            if out.is_empty() {
                self.scratch.out = out;
                self.send_replies();
                return Ok(());
            }
            if let Some(p) = &mut self.lab.probe {
                p.after_drain(&self.replica, &out, now_ns());
            }
            for env in out.send.drain(..) {
                let Some(PeerTx { tx, .. }) = self.peers.links.get(&env.to) else {
                    continue;
                };
                let mut frame = wire::encode_message(self.cluster, &env.msg);
                if let Some(m) = self.lab.probe.as_ref().and_then(|p| p.mark_for(&env.msg)) {
                    frame = frame.marked(m);
                }
                if tx.try_send(frame).is_err() {
                    self.peers.frames_dropped += 1;
                }
            }
            let mut durable = None;
            match &mut self.persist {
                Persist::Inline(storage) => {
                    if !out.persist.is_empty() {
                        for req in out.persist.drain(..) {
                            storage.write(req)?;
                        }
                        let start = if self.lab.probe.is_some() {
                            now_ns()
                        } else {
                            0
                        };
                        let token = storage.sync()?;
                        if let Some(p) = &mut self.lab.probe {
                            let end = now_ns();
                            p.flushed(start, end);
                            p.on_durable(token, end);
                        }
                        durable = Some(token);
                    }
                }
                Persist::Thread(tx, ..) => {
                    for req in out.persist.drain(..) {
                        // The thread is gone only after it reported a failure.
                        let _ = tx.send(req);
                    }
                }
            }
            if let Some(f) = out.fetch_checkpoint.take() {
                self.start_fetch(f);
            }
            let mut replies = std::mem::take(&mut self.scratch.replies);
            for r in out.replies.drain(..) {
                self.reply(r, Slot::ZERO);
            }
            for a in out.apply.drain(..) {
                self.apply(&a, &mut replies);
            }
            self.scratch.replies = replies;
            // Answered now, not after the next pass's persist: a storage
            // failure there must not hold back replies already due.
            self.send_replies();
            self.scratch.out = out;
            if let Some(t) = durable {
                self.replica.on_persisted(t);
            }
        }
    }

    pub(super) fn apply(&mut self, a: &Apply, replies: &mut Vec<ClientReply>) {
        if let Some(p) = &mut self.lab.probe {
            p.apply_started(a.slot);
        }
        self.executor.apply(a, replies);
        if let Some(c) = &mut self.checkpoints.checkpointer {
            c.bytes_since += a.value.payload_len() as u64;
        }
        let executed_ns = match &mut self.lab.probe {
            Some(p) => p.applied(a.slot, now_ns()),
            None => 0,
        };
        for r in replies.drain(..) {
            self.reply_at(r, a.slot, executed_ns);
        }
    }

    /// Tells the application what changed in its role since the last
    /// burst: secondary to primary (or a new term), primary to secondary,
    /// and the primary's recovery (every slot below its first fresh one
    /// executed).
    pub(super) fn notify_role(&mut self) {
        let ballot = self.replica.leader_ballot();
        let sm = self.executor.state_machine_mut();
        if self.app.primary != ballot {
            if self.app.primary.is_some() {
                sm.became_secondary();
            }
            if ballot.is_some() {
                sm.became_primary();
            }
            self.app.primary = ballot;
            self.app.recovered = false;
        }
        if !self.app.recovered
            && let Some(end) = self.replica.recovery_end()
            && self.executor.next_slot() >= end
        {
            self.app.recovered = true;
            self.executor.state_machine_mut().primary_recovered();
        }
        debug_assert_eq!(self.app.primary, self.replica.leader_ballot());
    }
}
