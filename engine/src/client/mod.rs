//! `engine::client`: the client library.
//!
//! A [`Client`] connects to any replica, learns every member's address from
//! the handshake, and keeps many calls in flight on one connection. Each
//! call is a command of the client's session `(client id, seq)`; a retry
//! reuses the seq, so the command executes once however often it is sent.
//! The client follows `NotLeader` hints, resends after `Busy`, moves to
//! another replica when an attempt times out or the connection drops, and
//! fails a call with a typed error only when its deadline passes. The error
//! says whether the command may have executed: [`ClientError::Timeout`]
//! when some attempt went unanswered (its outcome is unknown), the last
//! refusal (`Busy`, `NotLeader`) or [`ClientError::Unreachable`] when no
//! attempt can have executed.
//!
//! [`Client::close`] ends the session in the replicated session table (a
//! close command, [`crate::state_machine::SESSION_CLOSE_SEQ`]) when no
//! command is in flight or of unknown outcome, so short-lived clients
//! (one `kv` invocation each) leave nothing behind.
//!
//! Reads: a KV get sent with [`Client::call`] goes through the log and is
//! linearizable. [`Client::fast_read`] is RSL's fast read: answered from
//! the connected replica's local state if it has applied every slot this
//! client has seen (session consistency), else `Stale`.

mod admin;
mod inflight;
mod task;

pub use admin::{change_config, fetch_status};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::core::{ClientId, ClusterId, ReplicaId, Slot};
use crate::instrumentation::{Lab, LocalRecorder};
use crate::transport::net::Network;

use task::{Task, Unreached};
/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one attempt waits for an answer before the client tries
    /// another replica.
    pub attempt_timeout: Duration,
    /// How long a call may take in all before it fails with `Timeout`.
    pub deadline: Duration,
    /// Most calls in flight; further calls wait.
    pub outstanding_max: usize,
    /// Wait before resending a command answered `Busy`, or `NotLeader`
    /// with no leader known (an election under way).
    pub busy_backoff: Duration,
    pub frame_bytes_max: usize,
    /// Where `client.send` and `client.recv` are recorded (the load
    /// generator's process track, 0); `None`: not measured.
    pub lab: Option<Arc<Lab>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            outstanding_max: 1024,
            busy_backoff: Duration::from_millis(5),
            frame_bytes_max: 16 * 1024 * 1024,
            lab: None,
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    /// The replica does not lead (the client follows hints itself; this is
    /// returned only where no retry is possible).
    #[error("not the leader (hint: {hint:?})")]
    NotLeader { hint: Option<ReplicaId> },
    /// The cluster is overloaded (returned only if the deadline passes while busy).
    #[error("busy")]
    Busy,
    /// No answer within the deadline: the command may or may not have executed.
    #[error("timed out (the command may or may not have executed)")]
    Timeout,
    /// The client was closed.
    #[error("closed: {0}")]
    Closed(String),
    /// No replica could be reached, or every one refused this client (a
    /// wrong cluster id, TLS): nothing was submitted. The message names
    /// every address tried and why.
    #[error("no replica reachable: {0}")]
    Unreachable(String),
    /// A fast read at a replica that has not caught up with this session.
    #[error("stale: the replica has applied only up to {applied}")]
    Stale { applied: Slot },
    /// The session moved past this command (its outcome is unknown).
    #[error("session expired")]
    SessionExpired,
    /// The replica refused the request as malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub payload: Bytes,
    /// For a command: the slot it executed in. For a fast read: the
    /// replica's apply point.
    pub slot: Slot,
}

type Reply = oneshot::Sender<Result<Response, ClientError>>;

enum Call {
    Command {
        op: Bytes,
        deadline: Instant,
        reply: Reply,
    },
    /// End the session (if it is safe to: see [`Client::close`]).
    CloseSession { deadline: Instant, reply: Reply },
    FastRead {
        query: Bytes,
        min_applied: Option<Slot>,
        reply: Reply,
    },
}

/// A connection to a cluster. Cheap to share by reference across tasks.
pub struct Client {
    calls: mpsc::Sender<Call>,
    id: ClientId,
    /// The options' `deadline` (for [`Client::call`]).
    deadline: Duration,
    /// The options' `attempt_timeout` (for [`Client::close`]).
    attempt_timeout: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl task::Routing {
    /// Nothing learned yet: `addresses` to try, the first one first.
    fn new(addresses: Vec<String>) -> task::Routing {
        task::Routing {
            addresses,
            members: HashMap::new(),
            target: 0,
            tried: Vec::new(),
            reconnect_at: Instant::now(),
            failures: 0,
            unreachable: BTreeMap::new(),
        }
    }
}

impl Client {
    /// Connects to one of `addresses` (any replica will do).
    pub async fn connect(
        network: Network,
        cluster: ClusterId,
        addresses: Vec<String>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if addresses.is_empty() {
            return Err(ClientError::Unreachable("no replica addresses".into()));
        }
        let id = ClientId(fresh_id());
        let mut task = Task {
            network,
            cluster,
            id,
            routing: task::Routing::new(addresses),
            conn: None,
            session: task::Session {
                next_seq: 1,
                slot: Slot::ZERO,
                unknown_outcome: false,
                used: false,
            },
            commands: inflight::InFlight::default(),
            queue: task::SendQueue::default(),
            reads: task::Reads {
                by_id: HashMap::new(),
                next: 1,
            },
            lab: task::TaskLab {
                rec: options.lab.as_ref().map(|lab| LocalRecorder::new(lab, 0)),
                now: 0,
            },
            options,
        };
        // Reach some replica before returning, so a bad address list or a
        // foreign cluster fails here with its reason: rounds over every
        // address until one answers, every one refuses (no round can do
        // better), or the deadline passes.
        let deadline = Instant::now() + task.options.deadline;
        'rounds: loop {
            let mut refused = 0;
            for _ in 0..task.routing.addresses.len() {
                match task.open(deadline).await {
                    Ok(()) => break 'rounds,
                    Err(Unreached { refused: r, .. }) => {
                        refused += usize::from(r);
                        task.routing.target =
                            (task.routing.target + 1) % task.routing.addresses.len();
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
            }
            if refused == task.routing.addresses.len() {
                return Err(ClientError::Unreachable(format!(
                    "refused by every replica: {}",
                    task.unreachable_summary()
                )));
            }
            if Instant::now() > deadline {
                return Err(ClientError::Unreachable(format!(
                    "none answered within {:?}: {}",
                    task.options.deadline,
                    task.unreachable_summary()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (tx, rx) = mpsc::channel(task.options.outstanding_max);
        let (deadline, attempt_timeout) = (task.options.deadline, task.options.attempt_timeout);
        let task = tokio::spawn(task.run(rx));
        Ok(Client {
            calls: tx,
            id,
            deadline,
            attempt_timeout,
            task,
        })
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Submits a command and waits for its result, for at most the
    /// options' `deadline`.
    pub async fn call(&self, op: Bytes) -> Result<Response, ClientError> {
        self.call_until(op, Instant::now() + self.deadline).await
    }

    /// Submits a command and waits for its result until `deadline`.
    pub async fn call_until(&self, op: Bytes, deadline: Instant) -> Result<Response, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call::Command {
                op,
                deadline,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("client closed".into()))?;
        rx.await
            .unwrap_or(Err(ClientError::Closed("client closed".into())))
    }

    /// A read from the connected replica's local state, refused as `Stale`
    /// if it has not applied every command this client has seen.
    pub async fn fast_read(&self, query: Bytes) -> Result<Response, ClientError> {
        self.fast_read_at_least(query, None).await
    }

    /// A fast read that the replica answers only if it has applied every
    /// slot below `min_applied` (RSL's minimum sequence number); `None`:
    /// what this client's session has seen.
    pub async fn fast_read_at_least(
        &self,
        query: Bytes,
        min_applied: Option<Slot>,
    ) -> Result<Response, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call::FastRead {
                query,
                min_applied,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("client closed".into()))?;
        rx.await
            .unwrap_or(Err(ClientError::Closed("client closed".into())))
    }

    /// Ends the session and closes the connection; calls in flight fail
    /// with `Closed`.
    ///
    /// The session is ended in the replicated session table (a close
    /// command through the log, waiting at most the options'
    /// `attempt_timeout` for it) only when it is safe to forget: no
    /// command in flight and none whose outcome is unknown (a `Timeout`:
    /// its retry could still be chosen; the replicas' tombstone of a
    /// closed session covers stale copies of answered commands only).
    /// Otherwise the session stays until the table evicts it.
    pub async fn close(self) {
        let deadline = Instant::now() + self.attempt_timeout;
        self.close_until(deadline).await
    }

    /// [`Client::close`], waiting for the session's end until `deadline`.
    pub async fn close_until(self, deadline: Instant) {
        let (tx, rx) = oneshot::channel();
        if self
            .calls
            .send(Call::CloseSession {
                deadline,
                reply: tx,
            })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        drop(self.calls);
        let _ = self.task.await;
    }

    /// Closes the connection without ending the session (a client that
    /// will be replaced by one of the same id, or tests).
    pub async fn disconnect(self) {
        drop(self.calls);
        let _ = self.task.await;
    }
}

/// A per-process, per-call unique id: time, process id and a counter mixed.
fn fresh_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer: spread the bits.
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    x.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        let a: std::collections::HashSet<u64> = (0..1000).map(|_| fresh_id()).collect();
        assert_eq!(a.len(), 1000);
    }
}
