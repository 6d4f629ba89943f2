//! `engine::runtime`: runs a replica on tokio.
//!
//! **Architecture Invariant:** this is the only layer that uses tokio, reads
//! clocks for protocol timing, or does network I/O.
//!
//! Tasks and threads of one replica ([`start`]):
//! - the **core task** owns the [`Replica`], the [`Executor`] and (for
//!   `mem` and `nvm`) the storage. It takes a burst of events from one
//!   bounded queue, drains the core once (the batching and group-commit
//!   point), persists inline, sends, applies and answers. One task, no
//!   locks: every per-command step runs here.
//! - a **sync thread** for the `wal` only: `fdatasync` blocks for 0.1–4 ms,
//!   so the core hands it persist requests and gets back the durable token;
//!   requests that arrive during a sync are committed by the next one
//!   (group commit).
//! - the **listener** task, a **reader** task per inbound connection (peer
//!   or client) that decodes frames into events, a **writer** task per
//!   client connection and a **sender** task per peer (connect, handshake,
//!   reconnect with backoff, vectored writes of whatever is queued).
//!
//! Per command there are two hand-offs: reader → core queue, core → the
//! connection's writer queue. Everything in between is plain calls.

pub mod admin;
mod conn;
pub mod file;
mod probe;
mod spans;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::checkpoint::{CHECKPOINT_BYTES_MAX, CheckpointError, CheckpointStore};
use crate::core::{
    Apply, Ballot, ClientId, ClientReply, ClusterId, CommandRef, Config, Counter, Counters,
    DurableState, Envelope, FetchCheckpoint, Output, PersistToken, ProposeError, Replica,
    ReplicaId, RoleKind, Slot,
};
use crate::instrumentation::{Lab, LabRef, LocalRecorder, Stage, now_ns};
use crate::state_machine::{Executor, FrozenExecutor, SessionLimits, StateMachine};
use crate::storage::{Storage, StorageError, StorageStats};
use crate::transport::net::Network;
use crate::transport::wire::{
    self, ClientReplyFrame, ClientRequest, FastRead, FastReadReply, Frame, Status,
};

/// Bytes a client frame holds besides its command (frame header, client
/// id, sequence numbers, lengths), rounded up.
const CLIENT_FRAME_OVERHEAD_BYTES: usize = 1024;

/// Everything a replica process needs besides its storage.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The protocol core's configuration (cluster, id, members, bounds).
    pub core: Config,
    /// Every member's address, this replica's included.
    pub addresses: Vec<(ReplicaId, String)>,
    /// Where to listen (default: this replica's own address).
    pub listen: String,
    /// One logical tick of the core.
    pub tick: Duration,
    /// Largest frame accepted from anyone.
    pub frame_bytes_max: usize,
    /// Most frames queued to one peer; beyond it frames are dropped (the
    /// protocol retransmits).
    pub peer_queue_frames_max: usize,
    /// Most events queued to the core; readers wait when it is full.
    pub event_queue_max: usize,
    /// Most events the core takes before draining once; an event of client
    /// requests counts as many as it carries.
    pub event_burst_max: usize,
    /// Most client connections at once (beyond: refused).
    pub client_connections_max: usize,
    /// Most peer connections at once (beyond: refused). Each peer holds
    /// one, plus one per checkpoint transfer.
    pub peer_connections_max: usize,
    /// Most connections in their handshake (TLS and hello) at once; a new
    /// one beyond it evicts the oldest.
    pub handshake_connections_max: usize,
    /// Largest frame a client may send (peers: `frame_bytes_max`); bounds
    /// what one client connection buffers.
    pub client_frame_bytes_max: usize,
    /// A client connection that sends no complete frame for this long (up
    /// to twice this: checked lazily, without a timer per frame) is closed
    /// (the client library reconnects).
    pub client_idle: Duration,
    /// Most commands one client connection may have outstanding; beyond it
    /// the replica answers `Busy`.
    pub client_outstanding_max: usize,
    /// Session table bounds of the executor.
    pub sessions: SessionLimits,
    /// Where the lab's per-stage figures and trace go (`None`: nothing is
    /// measured, no clock is read per command).
    pub lab: Option<Arc<Lab>>,
    /// The lab's `null` server: answer every command at once from the
    /// state machine, without the log or replication (the ceiling of the
    /// transport and the load generator). Never for a real deployment.
    pub null_server: bool,
    /// Checkpoints and log truncation (`None`: neither; the log grows until
    /// it is full).
    pub checkpoint: Option<CheckpointConfig>,
}

/// When to checkpoint, and where.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// The directory of this replica's checkpoints.
    pub dir: std::path::PathBuf,
    /// Checkpoints kept; the log is truncated behind the oldest.
    pub retain: usize,
    /// Checkpoint once this many slots were applied since the last one.
    pub every_slots: u64,
    /// ... or once the applied slots since the last one carry this many
    /// payload bytes (so the log in memory, bounded by
    /// `log_retained_bytes_max`, always reaches back to a checkpoint) ...
    pub every_bytes: u64,
    /// ... or once this long passed, if anything was applied.
    pub every: Duration,
}

impl CheckpointConfig {
    /// The bounds a checkpoint configuration must keep with the core's.
    pub fn check(&self, core: &Config) -> Result<(), String> {
        if self.retain == 0 || self.every_slots == 0 || self.every_bytes == 0 {
            return Err("checkpoint retain, every_slots and every_bytes must be at least 1".into());
        }
        if self.every_bytes > core.log_retained_bytes_max / 2 {
            // The log in memory is compacted by bytes only below the newest
            // checkpoint: checkpoints must come well before it is full.
            return Err(format!(
                "checkpoint every_bytes ({}) must be at most half of log_retained_bytes_max ({}): \
                 the log in memory is compacted by bytes only below a checkpoint",
                self.every_bytes, core.log_retained_bytes_max
            ));
        }
        if self.every_slots >= core.log_retained_slots_max {
            // Otherwise a lagging replica may need slots between the
            // newest checkpoint and the leader's log start: nobody has them.
            return Err(format!(
                "checkpoint every_slots ({}) must be below log_retained_slots_max ({}): \
                 a replica that falls behind the log catches up from a checkpoint the log still reaches",
                self.every_slots, core.log_retained_slots_max
            ));
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Documented defaults around a core configuration.
    pub fn new(core: Config, addresses: Vec<(ReplicaId, String)>) -> NodeConfig {
        let listen = addresses
            .iter()
            .find(|(id, _)| *id == core.id)
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        NodeConfig {
            core,
            addresses,
            listen,
            tick: Duration::from_millis(10),
            frame_bytes_max: 16 * 1024 * 1024,
            peer_queue_frames_max: 64 * 1024,
            event_queue_max: 64 * 1024,
            event_burst_max: 1024,
            client_connections_max: 4096,
            peer_connections_max: 64,
            handshake_connections_max: 256,
            client_frame_bytes_max: 2 * 1024 * 1024,
            client_idle: Duration::from_secs(300),
            client_outstanding_max: 4096,
            sessions: SessionLimits::default(),
            lab: None,
            null_server: false,
            checkpoint: None,
        }
    }
}

/// How a node ended.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage failed, the replica stopped: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::core::ConfigError),
    #[error("invalid configuration: {0}")]
    Settings(String),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The log and the checkpoints do not fit together: slots would be lost.
    #[error("cannot start: {0}")]
    Recovery(String),
}

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

/// An event for the core task. `at`: when its frame was decoded (lab
/// clock; 0 without a lab).
pub(crate) enum Event {
    Peer {
        env: Envelope,
        at: u64,
    },
    /// Client requests read together on one connection (at most
    /// `conn::CLIENT_EVENT_REQUESTS_MAX`), and when they were read.
    Client {
        conn: u64,
        reqs: Vec<ClientRequest>,
        at: u64,
    },
    FastRead {
        conn: u64,
        read: FastRead,
    },
    /// A status request on a client connection.
    Status {
        conn: u64,
    },
    /// An operator's configuration change on a client connection.
    ConfigChange {
        conn: u64,
        req: admin::ConfigChangeRequest,
    },
    ConnOpen {
        conn: u64,
        tx: mpsc::Sender<Frame>,
    },
    ConnClosed {
        conn: u64,
    },
    Persisted(PersistToken),
    StorageFailed(StorageError),
    /// A checkpoint at `slot` is durable; the oldest one kept is `oldest`.
    CheckpointWritten {
        slot: Slot,
        oldest: Slot,
    },
    CheckpointFailed(CheckpointError),
    /// A checkpoint fetched from a peer is verified and durable here (or
    /// why not).
    CheckpointFetched(Result<Fetched, String>),
    Shutdown,
    /// The application gives up leadership (RSL's `RelinquishPrimary`).
    Relinquish,
}

impl Event {
    /// What the event counts against `event_burst_max`: its requests for a
    /// batch of client requests (one event carries every request of a
    /// read), 1 for any other.
    fn cost(&self) -> usize {
        match self {
            Event::Client { reqs, .. } => reqs.len().max(1),
            _ => 1,
        }
    }
}

/// A checkpoint fetched from a peer, kept in this replica's store.
pub(crate) struct Fetched {
    slot: Slot,
    body: Vec<u8>,
    bytes: u64,
    secs: f64,
    from: ReplicaId,
}

/// A running replica.
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    status: watch::Receiver<NodeStatus>,
    core: tokio::task::JoinHandle<Result<(), NodeError>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    listen: String,
}

impl NodeHandle {
    /// The address it listens on (for TCP port 0: the real port).
    pub fn listen_addr(&self) -> &str {
        &self.listen
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred`.
    pub async fn wait_for(&mut self, pred: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        loop {
            {
                let s = self.status.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if self.status.changed().await.is_err() {
                return self.status.borrow().clone();
            }
        }
    }

    /// Stops cleanly: the core syncs what it wrote and exits.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.events.send(Event::Shutdown).await;
        let r = self.core.await.unwrap_or(Ok(()));
        for t in self.tasks.lock().expect("task list").drain(..) {
            t.abort();
        }
        r
    }

    /// Gives up leadership (RSL's `RelinquishPrimary`): if this replica
    /// leads, it steps down, answers its queued commands `NotLeader`, and
    /// stands for nothing for three election timeouts, so another member
    /// takes over. Nothing chosen is lost. A no-op elsewhere.
    pub async fn relinquish_primary(&self) {
        let _ = self.events.send(Event::Relinquish).await;
    }

    /// Stops abruptly, as a crash would (no sync, connections cut).
    pub fn kill(self) {
        self.core.abort();
        for t in self.tasks.lock().expect("task list").drain(..) {
            t.abort();
        }
    }

    /// Waits for the node to end (a storage failure, or a shutdown).
    pub async fn join(self) -> Result<(), NodeError> {
        let r = self.core.await.unwrap_or(Ok(()));
        for t in self.tasks.lock().expect("task list").drain(..) {
            t.abort();
        }
        r
    }
}

/// Runs a replica: binds its listener, starts the peer senders and the core.
/// `sync_thread`: run storage syncs on a thread of their own (for the WAL).
pub async fn start<S: StateMachine + Send + 'static>(
    cfg: NodeConfig,
    network: Network,
    storage: Box<dyn Storage + Send>,
    state: DurableState,
    sm: S,
    sync_thread: bool,
) -> Result<NodeHandle, NodeError> {
    if let Some(c) = &cfg.checkpoint {
        c.check(&cfg.core).map_err(NodeError::Settings)?;
    }
    // A client frame carries one command and its header.
    let command_frame_bytes = cfg.core.command_bytes_max as usize + CLIENT_FRAME_OVERHEAD_BYTES;
    if cfg.client_frame_bytes_max < command_frame_bytes
        || cfg.frame_bytes_max < cfg.client_frame_bytes_max
    {
        return Err(NodeError::Settings(format!(
            "client_frame_bytes_max ({}) must hold command_bytes_max ({}) plus {CLIENT_FRAME_OVERHEAD_BYTES} \
             bytes of header, and be at most frame_bytes_max ({})",
            cfg.client_frame_bytes_max, cfg.core.command_bytes_max, cfg.frame_bytes_max
        )));
    }
    if cfg.peer_connections_max == 0 || cfg.handshake_connections_max == 0 {
        return Err(NodeError::Settings(
            "peer_connections_max and handshake_connections_max must be at least 1".into(),
        ));
    }
    // A closed session's tombstone must outlive any stale copy a
    // superseded leader's window can hold (see `SessionLimits`).
    if cfg.sessions.closed_session_slots < 2 * u64::from(cfg.core.window_slots_max) {
        return Err(NodeError::Settings(format!(
            "window_slots_max ({}) must be at most {}: half of the slots a closed client session is remembered ({}), so a superseded leader's copy of its command is refused",
            cfg.core.window_slots_max,
            cfg.sessions.closed_session_slots / 2,
            cfg.sessions.closed_session_slots
        )));
    }
    let mut state = state;
    let mut executor = Executor::new(sm, cfg.sessions, state.log_start);
    let (checkpoint_slot, checkpoint_store) = restore_checkpoint(&cfg, &mut state, &mut executor)?;
    let replica = Replica::recover(cfg.core.clone(), state)?;
    let mut listener = network
        .bind(&cfg.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
    let listen = listener.local_addr();
    let (events_tx, events_rx) = mpsc::channel(cfg.event_queue_max);
    let (status_tx, status_rx) = watch::channel(NodeStatus {
        id: cfg.core.id,
        ..NodeStatus::default()
    });
    let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let lab_ref = cfg.lab.as_ref().map(|lab| LabRef {
        lab: lab.clone(),
        process: cfg.core.id.0,
    });
    let spawn = {
        let tasks = tasks.clone();
        move |f: tokio::task::JoinHandle<()>| {
            tasks.lock().expect("task list").push(f.abort_handle())
        }
    };
    // A sender task per peer.
    let mut peers = HashMap::new();
    let peer_frames_discarded = Arc::new(AtomicU64::new(0));
    for (id, addr) in &cfg.addresses {
        if *id == cfg.core.id {
            continue;
        }
        let (tx, rx) = mpsc::channel(cfg.peer_queue_frames_max);
        let connected = Arc::new(AtomicBool::new(false));
        peers.insert(
            *id,
            PeerTx {
                tx,
                connected: connected.clone(),
            },
        );
        let link = conn::PeerLink {
            network: network.clone(),
            cluster: cfg.core.cluster,
            me: cfg.core.id,
            peer: *id,
            addr: addr.clone(),
            frame_bytes_max: cfg.frame_bytes_max,
            discarded: peer_frames_discarded.clone(),
            connected,
        };
        spawn(tokio::spawn(conn::peer_sender(link, rx, lab_ref.clone())));
    }
    // The listener.
    let accept = conn::Acceptor {
        cluster: cfg.core.cluster,
        id: cfg.core.id,
        members: cfg.addresses.clone(),
        frame_bytes_max: cfg.frame_bytes_max,
        client_outstanding_max: cfg.client_outstanding_max,
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.client_connections_max)),
        peer_connections: Arc::new(tokio::sync::Semaphore::new(cfg.peer_connections_max)),
        handshakes: Arc::new(conn::Handshakes::new(cfg.handshake_connections_max)),
        client_frame_bytes_max: cfg.client_frame_bytes_max,
        client_idle: cfg.client_idle,
        events: events_tx.clone(),
        tasks: tasks.clone(),
        lab: lab_ref.clone(),
        checkpoints: checkpoint_store.clone(),
    };
    spawn(tokio::spawn(async move {
        let mut next_conn = 1u64;
        loop {
            match listener.accept().await {
                Ok((stream, origin)) => {
                    accept.serve(stream, origin, next_conn);
                    next_conn += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }));
    let flush_stage = storage.flush_name().and_then(Stage::from_name);
    let persist = if sync_thread {
        let (tx, rx) = std::sync::mpsc::channel();
        let events = events_tx.clone();
        let lab = lab_ref.clone().zip(flush_stage);
        let truncate = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(Mutex::new(storage.stats()));
        let (t, st) = (truncate.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("sync-{}", cfg.core.id))
            .spawn(move || sync_thread_main(storage, rx, events, lab, t, st))
            .expect("spawning the sync thread");
        Persist::Thread(tx, truncate, stats)
    } else {
        Persist::Inline(storage)
    };
    let probe = cfg
        .lab
        .clone()
        .map(|lab| probe::Probe::new(lab, cfg.core.id, cfg.core.members.len(), flush_stage));
    let core = Core {
        cluster: cfg.core.cluster,
        id: cfg.core.id,
        replica,
        executor,
        addresses: cfg
            .addresses
            .iter()
            .map(|(i, a)| (i.0, a.clone()))
            .collect(),
        checkpointer: cfg
            .checkpoint
            .clone()
            .zip(checkpoint_store)
            .map(|(c, store)| {
                let mut members = cfg.core.members.clone();
                members.sort_unstable();
                let place = members.iter().position(|m| *m == cfg.core.id).unwrap_or(0);
                let stagger = (place as u64, members.len().max(1) as u64);
                Checkpointer::start(
                    c,
                    store,
                    checkpoint_slot,
                    events_tx.clone(),
                    cfg.core.id,
                    stagger,
                )
            }),
        out: Output::default(),
        replies: Vec::new(),
        persist,
        peers,
        conns: FxHashMap::default(),
        dirty: Vec::new(),
        pending: FxHashMap::default(),
        client_outstanding_max: cfg.client_outstanding_max,
        status: status_tx,
        peer_frames_dropped: 0,
        peer_frames_discarded,
        last_published: (None, None, Ballot::ZERO),
        probe,
        null_server: cfg.null_server,
        burst_ns: 0,
        fetch: FetchState {
            network: network.clone(),
            frame_bytes_max: cfg.frame_bytes_max,
            in_flight: false,
            installed: 0,
            failed: 0,
            events: events_tx.clone(),
        },
        config_waiter: None,
        app_primary: None,
        app_recovered: false,
        tick: cfg.tick,
        leaderless_ticks: 0,
        spans: spans::Spans::default(),
    };
    let core = tokio::spawn(core.run(events_rx, cfg.tick, cfg.event_burst_max));
    Ok(NodeHandle {
        events: events_tx,
        status: status_rx,
        core,
        tasks,
        listen,
    })
}

/// Runs storage syncs off the core: takes every request queued, writes
/// them, syncs once, reports the token. With a lab, each sync is timed
/// under the backend's flush stage.
fn sync_thread_main(
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

enum Persist {
    Inline(Box<dyn Storage + Send>),
    /// The WAL's sync thread, and the slot below which it truncates after
    /// its next sync.
    Thread(
        std::sync::mpsc::Sender<crate::core::PersistRequest>,
        Arc<AtomicU64>,
        Arc<Mutex<StorageStats>>,
    ),
}

/// Loads the newest good checkpoint into `executor` and cuts the recovered
/// log to start there; the checkpoint's slot (0: none) and the store.
fn restore_checkpoint<S: StateMachine>(
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
struct Checkpointer {
    cfg: CheckpointConfig,
    /// The store (also written by the checkpoint thread and by fetches:
    /// each writes files of its own slots).
    store: CheckpointStore,
    tx: std::sync::mpsc::SyncSender<(Slot, FrozenExecutor, tracing::Span)>,
    /// The newest durable checkpoint.
    newest: Slot,
    /// Applied slot at the last checkpoint taken (durable or in flight).
    taken: Slot,
    /// Payload bytes applied since then.
    bytes_since: u64,
    /// Slots counted as applied before the first checkpoint: see `start`.
    slots_credit: u64,
    taken_at: std::time::Instant,
    in_flight: bool,
    /// The application asked for a checkpoint not yet taken.
    requested: bool,
    written: u64,
    failed: u64,
}

impl Checkpointer {
    fn start(
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
    fn due(&self, applied: Slot, ticked: bool) -> bool {
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
fn lower_thread_priority() {
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
struct FetchState {
    network: Network,
    frame_bytes_max: usize,
    in_flight: bool,
    installed: u64,
    failed: u64,
    events: mpsc::Sender<Event>,
}

/// The core's end of a peer link.
struct PeerTx {
    tx: mpsc::Sender<Frame>,
    /// Set by the link's sender task while it holds a connection.
    connected: Arc<AtomicBool>,
}

/// Client connection state in the core.
struct ConnState {
    tx: mpsc::Sender<Frame>,
    outstanding: usize,
    /// Answers of this flush pass (command replies, Busy, fast reads),
    /// encoded back to back: sent as one frame when the pass ends. At most
    /// `client_outstanding_max` replies, plus the Busy answers and fast
    /// reads of the requests read in one burst.
    out: BytesMut,
    /// The lab stages that end when `out` is written.
    marks: wire::Marks,
}

impl ConnState {
    fn new(tx: mpsc::Sender<Frame>) -> ConnState {
        ConnState {
            tx,
            outstanding: 0,
            out: BytesMut::new(),
            marks: wire::Marks::new(),
        }
    }
}

/// Answer bytes a connection's buffer gets at a time: a pass's replies to
/// one connection mostly fit (a put's reply frame is 54 bytes: 24 of
/// header, 29 of fields, 1 of result), and what an idle connection keeps
/// stays small (`client_connections_max` 4,096: 16 MiB).
const REPLY_BUFFER_BYTES: usize = 4 * 1024;

/// Header and fixed fields of an answer frame, at most (room reserved
/// beside its payload).
const ANSWER_HEAD_BYTES_MAX: usize = 64;

/// Appends an answer to connection `conn`'s buffer: `encode` writes the
/// whole frame (of `payload_len` payload bytes); `dirty` lists the
/// connections with answers waiting; `mark` ends when the buffer is written.
fn queue_answer(
    c: &mut ConnState,
    conn: u64,
    dirty: &mut Vec<u64>,
    payload_len: usize,
    encode: impl FnOnce(&mut BytesMut),
    mark: Option<crate::instrumentation::Mark>,
) {
    if c.out.is_empty() {
        dirty.push(conn);
    }
    let need = ANSWER_HEAD_BYTES_MAX + payload_len;
    if c.out.capacity() - c.out.len() < need {
        c.out.reserve(REPLY_BUFFER_BYTES.max(need));
    }
    encode(&mut c.out);
    c.marks.extend(mark);
}

/// [`queue_answer`] of a command's reply.
fn queue_reply(
    c: &mut ConnState,
    conn: u64,
    dirty: &mut Vec<u64>,
    cluster: ClusterId,
    reply: &ClientReplyFrame,
    mark: Option<crate::instrumentation::Mark>,
) {
    let len = reply.payload.len();
    queue_answer(
        c,
        conn,
        dirty,
        len,
        |out| wire::encode_client_reply_into(out, cluster, reply),
        mark,
    );
}

struct Core<S> {
    cluster: ClusterId,
    id: ReplicaId,
    replica: Replica,
    executor: Executor<S>,
    out: Output,
    replies: Vec<ClientReply>,
    persist: Persist,
    peers: HashMap<ReplicaId, PeerTx>,
    conns: FxHashMap<u64, ConnState>,
    /// Connections with replies waiting for the end of the turn.
    dirty: Vec<u64>,
    /// Which connection waits for `(client, seq)`.
    pending: FxHashMap<(ClientId, u64), u64>,
    client_outstanding_max: usize,
    status: watch::Sender<NodeStatus>,
    peer_frames_dropped: u64,
    /// Counted by the peer senders.
    peer_frames_discarded: Arc<AtomicU64>,
    last_published: (Option<RoleKind>, Option<ReplicaId>, Ballot),
    probe: Option<probe::Probe>,
    null_server: bool,
    /// Lab clock at the start of the current burst (0 without a lab).
    burst_ns: u64,
    checkpointer: Option<Checkpointer>,
    /// The members and their addresses (for status reports).
    addresses: Vec<(u32, String)>,
    fetch: FetchState,
    /// The configuration change this leader will answer for.
    config_waiter: Option<admin::ConfigWaiter>,
    /// The ballot the application was last told this replica leads
    /// (`None`: told it is a secondary), and whether it was told the
    /// leadership recovered.
    app_primary: Option<Ballot>,
    app_recovered: bool,
    /// The tick's length (status figures in ms).
    tick: Duration,
    /// Ticks that passed with no leader known here (elections).
    leaderless_ticks: u64,
    /// The `tracing` spans of elections, checkpoints and fetches under way.
    spans: spans::Spans,
}

impl<S: StateMachine> Core<S> {
    async fn run(
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
                        self.leaderless_ticks += 1;
                    }
                    (None, true)
                }
            };
            let mut next = first;
            let mut taken = 0;
            if self.probe.is_some() {
                self.burst_ns = now_ns();
            }
            loop {
                if let Some(ev) = next.take() {
                    taken += ev.cost();
                    match ev {
                        Event::Shutdown => {
                            self.flush()?;
                            self.sync_now()?;
                            self.executor.state_machine_mut().shutdown();
                            self.publish(true);
                            if let Some(p) = &mut self.probe {
                                p.finish();
                            }
                            return Ok(());
                        }
                        Event::StorageFailed(e) => return Err(self.storage_failed(e)),
                        Event::CheckpointFetched(r) => {
                            // Whatever the core produced so far goes out
                            // (and is applied) before the state is replaced.
                            if let Err(e) = self.flush() {
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
            if let Err(e) = self.flush() {
                return Err(self.storage_failed(e));
            }
            self.notify_role();
            self.spans
                .catchup(self.replica.catchup_to(), self.replica.commit());
            self.maybe_checkpoint(ticked);
            self.check_config_waiter();
            self.publish(ticked);
            if let Some(p) = &mut self.probe {
                p.turn(self.burst_ns, now_ns(), self.executor.next_slot());
            }
        }
    }

    /// Storage failed: the replica stops for good (fail-stop) and says so.
    fn storage_failed(&mut self, e: StorageError) -> NodeError {
        self.replica.on_storage_failed();
        self.publish(true);
        tracing::error!(error = %e, "storage failed: the replica stops");
        NodeError::Storage(e)
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Peer { env, at } => {
                if let Some(p) = &mut self.probe {
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
                self.conns.insert(conn, ConnState::new(tx));
            }
            Event::ConnClosed { conn } => {
                self.conns.remove(&conn);
                self.pending.retain(|_, c| *c != conn);
                if self.config_waiter.as_ref().is_some_and(|w| w.conn == conn) {
                    // The change goes on; nobody waits for its answer.
                    self.config_waiter = None;
                }
            }
            Event::Persisted(t) => {
                if let Some(p) = &mut self.probe {
                    p.on_durable(t, now_ns());
                }
                self.replica.on_persisted(t)
            }
            Event::CheckpointWritten { slot, oldest } => self.checkpoint_written(slot, oldest),
            Event::CheckpointFailed(e) => {
                // Nothing acknowledged depends on a checkpoint: the log
                // keeps everything until the next one succeeds.
                tracing::error!(error = %e, "checkpoint failed; the log is kept");
                self.spans.checkpoint_done(Err("failed"));
                if let Some(c) = &mut self.checkpointer {
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

    fn on_client(&mut self, conn: u64, req: ClientRequest, at: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if self.null_server {
            let payload = self.executor.execute_unreplicated(&req.op);
            let reply = ClientReplyFrame {
                client: req.client,
                seq: req.seq,
                status: Status::Ok,
                slot: Slot::ZERO,
                hint: None,
                payload,
            };
            let mark = self
                .probe
                .as_ref()
                .map(|p| p.reply_mark(req.client.0, req.seq, Slot::ZERO, now_ns()));
            queue_reply(c, conn, &mut self.dirty, self.cluster, &reply, mark);
            return;
        }
        if c.outstanding >= self.client_outstanding_max {
            let reply = ClientReplyFrame {
                client: req.client,
                seq: req.seq,
                status: Status::Busy,
                slot: Slot::ZERO,
                hint: None,
                payload: Bytes::new(),
            };
            queue_reply(c, conn, &mut self.dirty, self.cluster, &reply, None);
            return;
        }
        if self.pending.insert((req.client, req.seq), conn).is_none() {
            c.outstanding += 1;
        }
        let before = self.replica.queued_commands();
        self.replica.on_client(CommandRef {
            client: req.client,
            seq: req.seq,
            ack_below: req.ack_below,
            op: &req.op,
        });
        if let Some(p) = &mut self.probe {
            let queued = self.replica.queued_commands() > before;
            p.on_client(req.client.0, req.seq, at, self.burst_ns, queued);
        }
    }

    fn on_fast_read(&mut self, conn: u64, read: FastRead) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let applied = self.executor.next_slot();
        let (status, payload) = if applied >= read.min_applied {
            let mut out = BytesMut::new();
            self.executor.query(&read.query, &mut out);
            (Status::Ok, out.freeze())
        } else {
            (Status::Stale, Bytes::new())
        };
        let reply = FastReadReply {
            id: read.id,
            status,
            applied,
            payload,
        };
        let cluster = self.cluster;
        queue_answer(
            c,
            conn,
            &mut self.dirty,
            reply.payload.len(),
            |out| wire::encode_fast_read_reply_into(out, cluster, &reply),
            None,
        );
    }

    /// Drains the core until it has nothing more to say: sends, persists
    /// (inline: then reports durability and drains again), applies, answers.
    fn flush(&mut self) -> Result<(), StorageError> {
        loop {
            let mut out = std::mem::take(&mut self.out);
            if let Some(p) = &mut self.probe {
                p.before_drain(&self.replica, now_ns());
            }
            self.replica.drain(&mut out);
            if out.is_empty() {
                self.out = out;
                self.send_replies();
                return Ok(());
            }
            if let Some(p) = &mut self.probe {
                p.after_drain(&self.replica, &out, now_ns());
            }
            for env in out.send.drain(..) {
                let Some(PeerTx { tx, .. }) = self.peers.get(&env.to) else {
                    continue;
                };
                let mut frame = wire::encode_message(self.cluster, &env.msg);
                if let Some(m) = self.probe.as_ref().and_then(|p| p.mark_for(&env.msg)) {
                    frame = frame.marked(m);
                }
                if tx.try_send(frame).is_err() {
                    self.peer_frames_dropped += 1;
                }
            }
            let mut durable = None;
            match &mut self.persist {
                Persist::Inline(storage) => {
                    if !out.persist.is_empty() {
                        for req in out.persist.drain(..) {
                            storage.write(req)?;
                        }
                        let start = if self.probe.is_some() { now_ns() } else { 0 };
                        let token = storage.sync()?;
                        if let Some(p) = &mut self.probe {
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
            let mut replies = std::mem::take(&mut self.replies);
            for r in out.replies.drain(..) {
                self.reply(r, Slot::ZERO);
            }
            for a in out.apply.drain(..) {
                self.apply(&a, &mut replies);
            }
            self.replies = replies;
            // Answered now, not after the next pass's persist: a storage
            // failure there must not hold back replies already due.
            self.send_replies();
            self.out = out;
            if let Some(t) = durable {
                self.replica.on_persisted(t);
            }
        }
    }

    fn apply(&mut self, a: &Apply, replies: &mut Vec<ClientReply>) {
        if let Some(p) = &mut self.probe {
            p.apply_started(a.slot);
        }
        self.executor.apply(a, replies);
        if let Some(c) = &mut self.checkpointer {
            c.bytes_since += a.value.payload_len() as u64;
        }
        let executed_ns = match &mut self.probe {
            Some(p) => p.applied(a.slot, now_ns()),
            None => 0,
        };
        for r in replies.drain(..) {
            self.reply_at(r, a.slot, executed_ns);
        }
    }

    /// Sends `r` to the connection waiting for it, if any.
    fn reply(&mut self, r: ClientReply, slot: Slot) {
        self.reply_at(r, slot, 0);
    }

    /// Sends `r`; with `executed_ns` (a result of the state machine), the
    /// lab's `leader.reply` runs from then until the frame is written.
    fn reply_at(&mut self, r: ClientReply, slot: Slot, executed_ns: u64) {
        let Some(conn) = self.pending.remove(&(r.client, r.seq)) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.outstanding = c.outstanding.saturating_sub(1);
        let (status, hint, payload) = match r.result {
            Ok(p) => (Status::Ok, None, p),
            Err(ProposeError::NotLeader { hint }) => (Status::NotLeader, hint, Bytes::new()),
            Err(ProposeError::Busy) => (Status::Busy, None, Bytes::new()),
            Err(ProposeError::Invalid(why)) => {
                (Status::Invalid, None, Bytes::from_static(why.as_bytes()))
            }
            Err(ProposeError::SessionExpired) => (Status::SessionExpired, None, Bytes::new()),
        };
        let reply = ClientReplyFrame {
            client: r.client,
            seq: r.seq,
            status,
            slot,
            hint,
            payload,
        };
        let mark = match &self.probe {
            Some(p) if executed_ns != 0 => Some(p.reply_mark(r.client.0, r.seq, slot, executed_ns)),
            _ => None,
        };
        queue_reply(c, conn, &mut self.dirty, self.cluster, &reply, mark);
    }

    /// Sends each connection the answers of this pass as one frame.
    fn send_replies(&mut self) {
        for conn in self.dirty.drain(..) {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            debug_assert!(!c.out.is_empty(), "listed with nothing to send");
            let frame = Frame::encoded(c.out.split().freeze(), std::mem::take(&mut c.marks));
            // The queue holds `client_outstanding_max` + 64 frames. It is
            // full only if the client stopped reading (or left): those
            // replies are dropped, and the client's retry, answered from
            // its session, gets them again.
            let _ = c.tx.try_send(frame);
        }
    }

    /// Tells the application what changed in its role since the last
    /// burst: secondary to primary (or a new term), primary to secondary,
    /// and the primary's recovery (every slot below its first fresh one
    /// executed).
    fn notify_role(&mut self) {
        let ballot = self.replica.leader_ballot();
        let sm = self.executor.state_machine_mut();
        if self.app_primary != ballot {
            if self.app_primary.is_some() {
                sm.became_secondary();
            }
            if ballot.is_some() {
                sm.became_primary();
            }
            self.app_primary = ballot;
            self.app_recovered = false;
        }
        if !self.app_recovered
            && let Some(end) = self.replica.recovery_end()
            && self.executor.next_slot() >= end
        {
            self.app_recovered = true;
            self.executor.state_machine_mut().primary_recovered();
        }
        debug_assert_eq!(self.app_primary, self.replica.leader_ballot());
    }

    /// Freezes the executor and hands it to the checkpoint thread when one
    /// is due. Freezing runs here, between commands (the state must not
    /// change under it); serializing, writing and `fsync` run on the thread.
    fn maybe_checkpoint(&mut self, ticked: bool) {
        let applied = self.executor.next_slot();
        let Some(c) = &mut self.checkpointer else {
            return;
        };
        if self.executor.take_checkpoint_request() {
            c.requested = true;
        }
        if !c.due(applied, ticked) {
            return;
        }
        let freezing = self.spans.checkpoint_started(applied);
        let frozen = self.executor.freeze();
        drop(freezing);
        let queued =
            c.tx.try_send((applied, frozen, self.spans.checkpoint()))
                .is_ok();
        self.spans.checkpoint_queued(queued);
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
    fn checkpoint_written(&mut self, slot: Slot, oldest: Slot) {
        let Some(c) = &mut self.checkpointer else {
            return;
        };
        c.in_flight = false;
        c.written += 1;
        c.newest = c.newest.max(slot);
        self.spans.checkpoint_done(Ok(()));
        tracing::debug!(slot = slot.0, oldest = oldest.0, "checkpoint written");
        self.replica.checkpoint_saved(slot);
        self.truncate_log(oldest);
    }

    /// Forgets the durable log below `slot` (a durable checkpoint covers it).
    fn truncate_log(&mut self, slot: Slot) {
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
    fn start_fetch(&mut self, f: FetchCheckpoint) {
        if self.fetch.in_flight {
            return;
        }
        let Some(store) = self.checkpointer.as_ref().map(|c| c.store.clone()) else {
            tracing::error!(
                peer = %f.from,
                "this replica is behind the leader's log and needs a checkpoint, but checkpoints are off"
            );
            return;
        };
        let Some(addr) = self
            .addresses
            .iter()
            .find(|(id, _)| *id == f.from.0)
            .map(|(_, a)| a.clone())
        else {
            return;
        };
        let link = conn::PeerLink {
            network: self.fetch.network.clone(),
            cluster: self.cluster,
            me: self.id,
            peer: f.from,
            addr,
            frame_bytes_max: self.fetch.frame_bytes_max,
            discarded: self.peer_frames_discarded.clone(),
            connected: Arc::new(AtomicBool::new(false)),
        };
        self.fetch.in_flight = true;
        if let Some(p) = &mut self.probe {
            p.fetch_started(now_ns());
        }
        tracing::info!(peer = %f.from, at_least = f.at_least.0, "behind the leader's log: fetching a checkpoint");
        self.spans.fetch_started(f.from.0, f.at_least);
        let events = self.fetch.events.clone();
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
    fn checkpoint_fetched(&mut self, r: Result<Fetched, String>) {
        self.fetch.in_flight = false;
        let f = match r {
            Ok(f) => f,
            Err(why) => {
                self.fetch.failed += 1;
                tracing::warn!(%why, "fetching a checkpoint failed; the next catch-up request retries");
                self.spans.fetch_done("failed");
                return;
            }
        };
        if self.replica.role() != RoleKind::Follower || f.slot <= self.replica.commit() {
            tracing::info!(slot = f.slot.0, "a fetched checkpoint is no longer needed");
            self.spans.fetch_done("not needed");
            return;
        }
        if let Err(e) = self.executor.restore(&f.body) {
            self.fetch.failed += 1;
            tracing::error!(error = %e, slot = f.slot.0, "a fetched checkpoint does not restore");
            self.spans.fetch_done("does not restore");
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
        self.fetch.installed += 1;
        if let Some(c) = &mut self.checkpointer {
            c.newest = c.newest.max(f.slot);
            c.taken = c.taken.max(f.slot);
            c.taken_at = std::time::Instant::now();
        }
        self.truncate_log(f.slot);
        if let Some(p) = &mut self.probe {
            p.fetch_installed(f.slot, now_ns());
        }
        self.spans.fetch_done("installed");
        tracing::info!(
            peer = %f.from,
            slot = f.slot.0,
            bytes = f.bytes,
            ms = f.secs * 1e3,
            mib_s = f.bytes as f64 / (1 << 20) as f64 / f.secs.max(1e-9),
            "installed a checkpoint from a peer"
        );
    }

    /// An operator asks for a configuration change: a leader asks its core
    /// and answers once the outcome is known ([`Self::check_config_waiter`]);
    /// anyone else answers at once.
    fn on_config_change(&mut self, conn: u64, req: admin::ConfigChangeRequest) {
        use admin::ConfigOutcome as O;
        let members: Vec<ReplicaId> = req.members.iter().map(|m| ReplicaId(*m)).collect();
        let unknown = members
            .iter()
            .find(|m| !self.addresses.iter().any(|(id, _)| *id == m.0));
        let (outcome, message) = if self.config_waiter.is_some() {
            (O::Busy, "a configuration change is in progress".to_string())
        } else if let Some(m) = unknown {
            (
                O::Invalid,
                format!(
                    "replica {} has no address in this replica's configuration file",
                    m.0
                ),
            )
        } else {
            match self.replica.propose_config(members) {
                Ok(m) => {
                    tracing::info!(epoch = m.epoch(), members = ?m.members(), "configuration change asked for");
                    self.config_waiter = Some(admin::ConfigWaiter {
                        conn,
                        epoch: m.epoch(),
                        abandoned: self.replica.counters().get(Counter::ConfigChangesAbandoned),
                    });
                    return;
                }
                Err(ProposeError::NotLeader { .. }) => (O::NotLeader, String::new()),
                Err(ProposeError::Busy) => (
                    O::Busy,
                    "a configuration change is asked for or in flight".to_string(),
                ),
                Err(ProposeError::Invalid(why)) => (O::Invalid, why.to_string()),
                Err(e) => (O::Invalid, e.to_string()),
            }
        };
        self.reply_config(conn, outcome, message);
    }

    /// Answers the waiting configuration change once it is in force, given
    /// up, or out of this replica's hands.
    fn check_config_waiter(&mut self) {
        use admin::ConfigOutcome as O;
        let Some(w) = &self.config_waiter else {
            return;
        };
        let r = &self.replica;
        let (outcome, message) = if r.membership().0 >= w.epoch {
            (O::Done, String::new())
        } else if r.counters().get(Counter::ConfigChangesAbandoned) > w.abandoned {
            (
                O::Abandoned,
                "the new members did not catch up in time; the configuration is unchanged"
                    .to_string(),
            )
        } else if !r.is_leader() {
            (
                O::Unknown,
                "this replica stopped leading before the change was chosen: it may still \
                 take effect (see the epoch in --status)"
                    .to_string(),
            )
        } else {
            return;
        };
        let conn = w.conn;
        self.config_waiter = None;
        if outcome == O::Done {
            tracing::info!(epoch = r.membership().0, members = ?r.membership().1, "configuration change in force");
        }
        self.reply_config(conn, outcome, message);
    }

    fn reply_config(&mut self, conn: u64, outcome: admin::ConfigOutcome, message: String) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let r = &self.replica;
        let reply = admin::ConfigChangeReply {
            outcome,
            leader: r.leader_hint().map(|l| l.0),
            epoch: r.membership().0,
            members: r.membership().1.iter().map(|m| m.0).collect(),
            message,
        };
        let json = serde_json::to_vec(&reply).expect("a reply serializes");
        let _ = c.tx.try_send(wire::encode_config_change_reply(
            self.cluster,
            Bytes::from(json),
        ));
    }

    /// Answers a status request with this replica's [`StatusReport`].
    fn on_status(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let r = &self.replica;
        let storage = self.storage_stats();
        let tick_ms = self.tick.as_secs_f64() * 1e3;
        let ms = |ticks: u64| (ticks as f64 * tick_ms) as u64;
        let health = r.peer_health();
        let ex = self.executor.stats();
        let ck = self.checkpointer.as_ref();
        let report = StatusReport {
            cluster: self.cluster.0,
            id: self.id.0,
            role: format!("{:?}", r.role()).to_lowercase(),
            leader: r.leader_hint().map(|l| l.0),
            promised: r.promised().to_string(),
            commit: r.commit().0,
            applied: self.executor.next_slot().0,
            members: self.addresses.clone(),
            epoch: r.membership().0,
            voters: r.membership().1.iter().map(|m| m.0).collect(),
            retired: r.is_retired(),
            departing: r.is_departing(),
            queued_commands: u64::from(r.queued_commands()),
            client_connections: self.conns.len(),
            commands_in_flight: self.pending.len(),
            peers: {
                let mut peers: Vec<PeerReport> = self
                    .peers
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
            leaderless_ms: ms(self.leaderless_ticks),
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
            peer_frames_dropped: self.peer_frames_dropped,
            peer_frames_discarded: self.peer_frames_discarded.load(AtomicOrdering::Relaxed),
            checkpoint: ck.map_or(0, |c| c.newest.0),
            log_start: r.log().start().0,
            log_bytes: r.log_bytes(),
            checkpoints_written: ck.map_or(0, |c| c.written),
            checkpoints_failed: ck.map_or(0, |c| c.failed),
            checkpoints_installed: self.fetch.installed,
            checkpoint_fetches_failed: self.fetch.failed,
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

    /// The storage figures (the sync thread's as of its last sync).
    fn storage_stats(&self) -> StorageStats {
        match &self.persist {
            Persist::Inline(s) => s.stats(),
            Persist::Thread(_, _, stats) => *stats.lock().expect("storage stats"),
        }
    }

    /// Makes everything written durable before exiting.
    fn sync_now(&mut self) -> Result<(), StorageError> {
        if let Persist::Inline(s) = &mut self.persist {
            s.sync()?;
        }
        Ok(())
    }

    fn publish(&mut self, always: bool) {
        let r = &self.replica;
        let key = (Some(r.role()), r.leader_hint(), r.promised());
        if !always && key == self.last_published {
            return;
        }
        if key.0 != self.last_published.0
            && let Some(role) = key.0
        {
            self.spans.role(role, key.2);
        }
        if key.0 != self.last_published.0 || key.1 != self.last_published.1 {
            match key.0 {
                Some(RoleKind::Leader) => {
                    tracing::info!(ballot = %key.2, commit = %r.commit(), "leading")
                }
                Some(RoleKind::Candidate) => tracing::debug!("standing for election"),
                _ => tracing::info!(leader = ?key.1, ballot = %key.2, "following"),
            }
        }
        self.last_published = key;
        let storage = self.storage_stats();
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
            peer_frames_dropped: self.peer_frames_dropped,
            peer_frames_discarded: self.peer_frames_discarded.load(AtomicOrdering::Relaxed),
            checkpoint: self.checkpointer.as_ref().map_or(Slot::ZERO, |c| c.newest),
            log_start: r.log().start(),
            log_bytes: r.log_bytes(),
            checkpoints_written: self.checkpointer.as_ref().map_or(0, |c| c.written),
            checkpoints_failed: self.checkpointer.as_ref().map_or(0, |c| c.failed),
            checkpoints_installed: self.fetch.installed,
            checkpoint_fetches_failed: self.fetch.failed,
        };
        self.status.send_replace(status);
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
