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
//! Where each concern lives: [`start`] (start.rs) wires the tasks; the
//! core task's loop is `task.rs`; client answers `answers.rs`; checkpoints
//! taken, fetched and installed `checkpointing.rs`; configuration changes
//! `reconfig.rs`; status reports `status.rs`; storage opening and the sync
//! thread `persist.rs`; connections `conn.rs`.
//!
//! Words for the core task's loop: a **turn** is one iteration; it takes a
//! **burst** of events (at most `event_burst_max` of cost) and then
//! carries out what the core asks in one or more **passes**, each a drain
//! of the core (`CoreTask::carry_out`).
//!
//! Per command there are two hand-offs: reader → core queue, core → the
//! connection's writer queue. Everything in between is plain calls.

pub mod admin;
mod answers;
mod checkpointing;
mod conn;
pub mod file;
mod persist;
mod probe;
mod reconfig;
mod spans;
mod start;
mod status;
mod task;

pub use persist::{OpenedStorage, StorageSpec, open_storage};
pub use start::start;
pub use status::{NodeStatus, PeerReport, StatusReport};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::checkpoint::CheckpointError;
use crate::core::{Config, Envelope, PersistToken, ReplicaId, Slot};
use crate::instrumentation::Lab;
use crate::state_machine::SessionLimits;
use crate::storage::StorageError;
use crate::transport::wire::{ClientRequest, FastRead, Frame};

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
