//! Status: the JSON report a status request gets (`replica --status`),
//! and the [`NodeStatus`] watch the embedding process reads.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::core::{Ballot, Counter, Counters, ReplicaId, RoleKind, Slot};
use crate::state_machine::StateMachine;
use crate::storage::StorageStats;
use crate::transport::wire::{self};

use super::task::CoreTask;

/// What a replica answers to a status request (JSON on the wire;
/// `replica --status` prints it).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StatusReport {
    pub cluster: u64,
    pub id: u32,
    pub role: String,
    pub leader: Option<u32>,
    pub promised: String,
    pub commit: u64,
    pub applied: u64,
    /// Every replica this one has an address for (its file's address book).
    pub members: Vec<(u32, String)>,
    /// The configuration in force here: its epoch (0: the bootstrap one)
    /// and voting members.
    pub epoch: u64,
    pub voters: Vec<u32>,
    /// A configuration change removed this replica: it serves nobody.
    pub retired: bool,
    /// Removed but not yet released: it still votes (for the old
    /// configuration, should it need to choose the change again) and
    /// exits once a leader of the new configuration releases it.
    pub departing: bool,
    /// Commands waiting at this leader for a slot.
    pub queued_commands: u64,
    pub client_connections: usize,
    pub commands_in_flight: usize,
    /// Every other replica this one has an address for, by id.
    pub peers: Vec<PeerReport>,
    /// A follower: how long ago it last heard its leader, ms.
    pub leader_heard_ms_ago: Option<u64>,
    /// Time spent with no leader known here (elections), ms.
    pub leaderless_ms: u64,
    pub elections_started: u64,
    pub elections_won: u64,
    /// Slots applied and commands executed since start (a retried command
    /// answered from the session table counts as a duplicate instead).
    pub slots_applied: u64,
    pub commands_executed: u64,
    pub duplicates_answered: u64,
    /// Client sessions in the replicated session table, and closed ones
    /// still remembered (tombstones); sessions their clients closed since
    /// start.
    #[serde(default)]
    pub sessions: u64,
    #[serde(default)]
    pub closed_sessions: u64,
    #[serde(default)]
    pub sessions_closed: u64,
    /// Closes that left their session open: `closed_sessions_max`
    /// tombstones were remembered (closes faster than it per
    /// `closed_session_slots` slots).
    #[serde(default)]
    pub closes_deferred: u64,
    /// Log write requests issued (each a group of entries and/or a ballot).
    pub log_writes: u64,
    /// Frames to peers dropped because a peer's queue was full.
    pub peer_frames_dropped: u64,
    /// Frames to peers discarded because the peer was unreachable.
    pub peer_frames_discarded: u64,
    pub checkpoint: u64,
    /// The log held in memory: its first slot and payload bytes (bounded by
    /// `log_retained_slots_max` and `log_retained_bytes_max`).
    pub log_start: u64,
    pub log_bytes: u64,
    pub checkpoints_written: u64,
    pub checkpoints_failed: u64,
    /// Checkpoints installed from a peer (catch-up), and failed fetches.
    pub checkpoints_installed: u64,
    pub checkpoint_fetches_failed: u64,
    /// Storage figures: flushes (`fdatasync` calls, NVM fence rounds),
    /// bytes written, group commits, time spent flushing.
    pub storage_flushes: u64,
    pub storage_bytes: u64,
    pub storage_commits: u64,
    pub storage_flush_ms: f64,
    /// NVM: bytes of free log area punched out of the file (pages never
    /// written count too: an upper bound on the memory returned).
    #[serde(default)]
    pub storage_discarded_bytes: u64,
    pub stopped: bool,
}

/// One peer link as the reporting replica sees it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PeerReport {
    pub id: u32,
    /// The link to it holds a connection.
    pub connected: bool,
    /// Frames waiting to be written to it (a slow or unreachable peer).
    pub queued_frames: usize,
    /// Seen by a leader only (the leader tracks its members): how long ago
    /// it was last heard from, ms; the commit point of its last heartbeat
    /// reply and how far that is behind the leader's; proposed slots it
    /// has not acknowledged.
    pub heard_ms_ago: Option<u64>,
    pub commit: Option<u64>,
    pub lag_slots: Option<u64>,
    pub outstanding_slots: Option<u32>,
}

/// What a node reports about itself.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub id: ReplicaId,
    pub role: Option<RoleKind>,
    pub leader: Option<ReplicaId>,
    pub promised: Ballot,
    pub commit: Slot,
    pub applied: Slot,
    pub stopped: bool,
    /// A configuration change removed this replica.
    pub retired: bool,
    /// The configuration in force: epoch and voting members.
    pub epoch: u64,
    pub members: Vec<ReplicaId>,
    pub counters: Counters,
    pub storage: StorageStats,
    /// Frames dropped because a peer's queue was full.
    pub peer_frames_dropped: u64,
    /// Frames discarded because the peer was unreachable.
    pub peer_frames_discarded: u64,
    /// The newest durable checkpoint (every slot below it is in it).
    pub checkpoint: Slot,
    /// The log held in memory: its first slot and its payload bytes.
    pub log_start: Slot,
    pub log_bytes: u64,
    /// Checkpoints written since start, and failed attempts.
    pub checkpoints_written: u64,
    pub checkpoints_failed: u64,
    /// Checkpoints installed from a peer (catch-up), and failed fetches.
    pub checkpoints_installed: u64,
    pub checkpoint_fetches_failed: u64,
}

/// What the status watch was last given, and figures for reports.
pub(super) struct Reporting {
    pub(super) status: watch::Sender<NodeStatus>,
    pub(super) last_published: (Option<RoleKind>, Option<ReplicaId>, Ballot),
    /// The tick's length (status figures in ms).
    pub(super) tick: Duration,
    /// Ticks that passed with no leader known here (elections).
    pub(super) leaderless_ticks: u64,
}

impl<S: StateMachine> CoreTask<S> {
    /// Answers a status request with this replica's [`StatusReport`].
    pub(super) fn on_status(&mut self, conn: u64) {
        let Some(c) = self.clients.conns.get(&conn) else {
            return;
        };
        let r = &self.replica;
        let storage = self.persist.stats();
        let tick_ms = self.report.tick.as_secs_f64() * 1e3;
        let ms = |ticks: u64| (ticks as f64 * tick_ms) as u64;
        let health = r.peer_health();
        let ex = self.executor.stats();
        let ck = self.checkpoints.checkpointer.as_ref();
        let report = StatusReport {
            cluster: self.cluster.0,
            id: self.id.0,
            role: format!("{:?}", r.role()).to_lowercase(),
            leader: r.leader_hint().map(|l| l.0),
            promised: r.promised().to_string(),
            commit: r.commit().0,
            applied: self.executor.next_slot().0,
            members: self.peers.addresses.clone(),
            epoch: r.membership().0,
            voters: r.membership().1.iter().map(|m| m.0).collect(),
            retired: r.is_retired(),
            departing: r.is_departing(),
            queued_commands: u64::from(r.queued_commands()),
            client_connections: self.clients.conns.len(),
            commands_in_flight: self.clients.pending.len(),
            peers: {
                let mut peers: Vec<PeerReport> = self
                    .peers
                    .links
                    .iter()
                    .map(|(id, p)| {
                        let h = health.iter().find(|h| h.id == *id);
                        PeerReport {
                            id: id.0,
                            connected: p.connected.load(AtomicOrdering::Relaxed),
                            queued_frames: p.tx.max_capacity() - p.tx.capacity(),
                            heard_ms_ago: h.map(|h| ms(h.heard_ticks_ago)),
                            commit: h.and_then(|h| h.commit).map(|c| c.0),
                            lag_slots: h
                                .and_then(|h| h.commit)
                                .map(|c| r.commit().0.saturating_sub(c.0)),
                            outstanding_slots: h.map(|h| h.outstanding),
                        }
                    })
                    .collect();
                peers.sort_by_key(|p| p.id);
                peers
            },
            leader_heard_ms_ago: r.leader_heard_ticks_ago().map(ms),
            leaderless_ms: ms(self.report.leaderless_ticks),
            elections_started: r.counters().get(Counter::ElectionsStarted),
            elections_won: r.counters().get(Counter::ElectionsWon),
            slots_applied: ex.slots_applied,
            commands_executed: ex.commands_executed,
            duplicates_answered: ex.duplicates_answered,
            sessions: self.executor.sessions() as u64,
            closed_sessions: self.executor.closed_sessions() as u64,
            sessions_closed: ex.sessions_closed,
            closes_deferred: ex.closes_deferred,
            log_writes: r.counters().get(Counter::PersistRequests),
            peer_frames_dropped: self.peers.frames_dropped,
            peer_frames_discarded: self.peers.frames_discarded.load(AtomicOrdering::Relaxed),
            checkpoint: ck.map_or(0, |c| c.newest.0),
            log_start: r.log().start().0,
            log_bytes: r.log_bytes(),
            checkpoints_written: ck.map_or(0, |c| c.written),
            checkpoints_failed: ck.map_or(0, |c| c.failed),
            checkpoints_installed: self.checkpoints.fetch.installed,
            checkpoint_fetches_failed: self.checkpoints.fetch.failed,
            storage_flushes: storage.flushes,
            storage_bytes: storage.bytes,
            storage_commits: storage.commits,
            storage_flush_ms: storage.flush_ns as f64 / 1e6,
            storage_discarded_bytes: storage.discarded,
            stopped: r.is_stopped(),
        };
        let json = serde_json::to_vec(&report).expect("a status serializes");
        let _ =
            c.tx.try_send(wire::encode_status_reply(self.cluster, Bytes::from(json)));
    }

    pub(super) fn publish(&mut self, always: bool) {
        let r = &self.replica;
        let key = (Some(r.role()), r.leader_hint(), r.promised());
        if !always && key == self.report.last_published {
            return;
        }
        if key.0 != self.report.last_published.0
            && let Some(role) = key.0
        {
            self.lab.spans.role(role, key.2);
        }
        if key.0 != self.report.last_published.0 || key.1 != self.report.last_published.1 {
            match key.0 {
                Some(RoleKind::Leader) => {
                    tracing::info!(ballot = %key.2, commit = %r.commit(), "leading")
                }
                Some(RoleKind::Candidate) => tracing::debug!("standing for election"),
                _ => tracing::info!(leader = ?key.1, ballot = %key.2, "following"),
            }
        }
        self.report.last_published = key;
        let storage = self.persist.stats();
        let status = NodeStatus {
            id: self.id,
            role: Some(r.role()),
            leader: r.leader_hint(),
            promised: r.promised(),
            commit: r.commit(),
            applied: self.executor.next_slot(),
            stopped: r.is_stopped(),
            retired: r.is_retired(),
            epoch: r.membership().0,
            members: r.membership().1.to_vec(),
            counters: r.counters().clone(),
            storage,
            peer_frames_dropped: self.peers.frames_dropped,
            peer_frames_discarded: self.peers.frames_discarded.load(AtomicOrdering::Relaxed),
            checkpoint: self
                .checkpoints
                .checkpointer
                .as_ref()
                .map_or(Slot::ZERO, |c| c.newest),
            log_start: r.log().start(),
            log_bytes: r.log_bytes(),
            checkpoints_written: self
                .checkpoints
                .checkpointer
                .as_ref()
                .map_or(0, |c| c.written),
            checkpoints_failed: self
                .checkpoints
                .checkpointer
                .as_ref()
                .map_or(0, |c| c.failed),
            checkpoints_installed: self.checkpoints.fetch.installed,
            checkpoint_fetches_failed: self.checkpoints.fetch.failed,
        };
        self.report.status.send_replace(status);
    }
}
