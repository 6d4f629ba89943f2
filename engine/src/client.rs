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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::core::{ClientId, ClusterId, ReplicaId, Slot};
use crate::instrumentation::{Lab, LabRef, LocalRecorder, Mark, Stage, now_ns};
use crate::state_machine::SESSION_CLOSE_SEQ;
use crate::transport::net::{BoxStream, FrameStream, Network, writer_task};
use crate::transport::wire::{
    self, ClientRequest, FastRead, Frame, FrameReader, Hello, Role, Status, kind,
};

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
            addresses,
            members: HashMap::new(),
            target: 0,
            tried: Vec::new(),
            conn: None,
            reconnect_at: Instant::now(),
            failures: 0,
            next_seq: 1,
            commands: BTreeMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            session_slot: Slot::ZERO,
            unknown_outcome: false,
            session_used: false,
            unreachable: BTreeMap::new(),
            unsent: VecDeque::new(),
            busy: Vec::new(),
            rec: options.lab.as_ref().map(|lab| LocalRecorder::new(lab, 0)),
            lab_now: 0,
            options,
        };
        // Reach some replica before returning, so a bad address list or a
        // foreign cluster fails here with its reason: rounds over every
        // address until one answers, every one refuses (no round can do
        // better), or the deadline passes.
        let deadline = Instant::now() + task.options.deadline;
        'rounds: loop {
            let mut refused = 0;
            for _ in 0..task.addresses.len() {
                match task.open(deadline).await {
                    Ok(()) => break 'rounds,
                    Err(Unreached { refused: r, .. }) => {
                        refused += usize::from(r);
                        task.target = (task.target + 1) % task.addresses.len();
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
            }
            if refused == task.addresses.len() {
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

/// Why the current target could not be reached.
struct Unreached {
    /// The reason (without the address).
    why: String,
    /// It answered, refusing this client (nothing will change that).
    refused: bool,
}

struct Conn {
    tx: mpsc::Sender<Frame>,
    frames: FrameStream<tokio::io::ReadHalf<BoxStream>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

struct Command {
    op: Bytes,
    reply: Reply,
    /// When the call fails if unanswered.
    deadline: Instant,
    /// Lab clock at the call (0 without a lab).
    started_ns: u64,
    /// `client.send` was recorded (first attempt only).
    marked: bool,
    /// When the current attempt was sent (`None`: waiting to be sent).
    sent: Option<Instant>,
    /// Resend no earlier than this (after `Busy`).
    resend_at: Option<Instant>,
    /// The last answer that refused the command without proposing it
    /// (`Busy`, `NotLeader`): the error if the deadline passes while no
    /// attempt is out and none was lost.
    refused: Option<ClientError>,
    /// An attempt went unanswered (a lost connection, an attempt timeout):
    /// the command may have executed, so its failure is a `Timeout`.
    maybe_executed: bool,
}

struct Read {
    query: Bytes,
    min_applied: Option<Slot>,
    reply: Reply,
    started: Instant,
    sent: bool,
}

struct Task {
    network: Network,
    cluster: ClusterId,
    id: ClientId,
    addresses: Vec<String>,
    members: HashMap<ReplicaId, String>,
    target: usize,
    /// The addresses (indices into `addresses`) this round has tried: a
    /// round ends when a command executes, or when every address known
    /// has been tried. A hint is followed only to an address not tried
    /// yet, so a replica that points at an address this client cannot
    /// reach (its own address book) does not hold the client between
    /// the two while the other addresses go untried.
    tried: Vec<bool>,
    conn: Option<Conn>,
    reconnect_at: Instant,
    failures: u32,
    next_seq: u64,
    commands: BTreeMap<u64, Command>,
    reads: HashMap<u64, Read>,
    next_read: u64,
    /// Highest slot this session has seen executed.
    session_slot: Slot,
    /// Some call failed with an unknown outcome: the session must not be
    /// closed (that command's retry could still be chosen).
    unknown_outcome: bool,
    /// Some command executed (answered `Ok`): the replicas hold a session
    /// to close.
    session_used: bool,
    /// Why each address could not be reached (keyed by address), since the
    /// last connection.
    unreachable: BTreeMap<String, String>,
    /// Commands waiting to be sent, oldest first (each in `commands`;
    /// stale entries, answered meanwhile, are skipped).
    unsent: VecDeque<u64>,
    /// Commands answered `Busy`, waiting for their resend time.
    busy: Vec<u64>,
    /// The lab recorder of `client.recv` (`None` without a lab).
    rec: Option<LocalRecorder>,
    /// The lab clock when the task last read its clock (0 without a lab):
    /// the calls taken and the replies read in one pass share one reading.
    lab_now: u64,
    options: ClientOptions,
}

impl Task {
    /// Connects to the current target and learns the membership, giving
    /// the connection and the handshake together `attempt_timeout` but
    /// nothing past `by` (a deadline); on a failure, records why against
    /// the address.
    async fn open(&mut self, by: Instant) -> Result<(), Unreached> {
        let addr = self.addresses[self.target].clone();
        let limit = self
            .options
            .attempt_timeout
            .min(by.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let opened = self.try_open(&addr, limit).await;
        match &opened {
            Ok(()) => self.unreachable.clear(),
            Err(u) => {
                self.unreachable.insert(addr, u.why.clone());
            }
        }
        opened
    }

    /// Every address that could not be reached and why, on one line.
    fn unreachable_summary(&self) -> String {
        let all: Vec<String> = self
            .unreachable
            .iter()
            .map(|(addr, why)| format!("{addr}: {why}"))
            .collect();
        all.join("; ")
    }

    async fn try_open(&mut self, addr: &str, limit: Duration) -> Result<(), Unreached> {
        let down = |why: String| Unreached {
            why,
            refused: false,
        };
        let by = tokio::time::Instant::now() + limit;
        let stream = tokio::time::timeout_at(by, self.network.connect(addr))
            .await
            .map_err(|_| down("connecting timed out".into()))?
            .map_err(|e| Unreached {
                // A TLS failure here (an untrusted certificate) is the
                // replica's answer, not its absence: it will not change.
                refused: e.kind() == std::io::ErrorKind::PermissionDenied,
                why: e.to_string(),
            })?;
        let (r, mut w) = tokio::io::split(stream);
        use tokio::io::AsyncWriteExt;
        let hello = wire::encode_hello(self.cluster, &Hello { role: Role::Client });
        w.write_all(&hello.to_bytes())
            .await
            .map_err(|e| down(e.to_string()))?;
        let mut frames = FrameStream::new(
            r,
            FrameReader {
                cluster: self.cluster,
                frame_bytes_max: self.options.frame_bytes_max,
            },
        );
        let (k, body) = tokio::time::timeout_at(by, frames.next())
            .await
            .map_err(|_| down("no handshake answer".into()))?
            .map_err(|e| down(e.to_string()))?;
        match k {
            kind::HELLO_ACK => {
                let ack = wire::decode_hello_ack(body).map_err(|e| down(e.to_string()))?;
                for (id, a) in ack.members {
                    if !self.addresses.contains(&a) {
                        self.addresses.push(a.clone());
                    }
                    self.members.insert(id, a);
                }
            }
            kind::REFUSED => {
                let why = wire::decode_refused(body).unwrap_or_default();
                return Err(Unreached {
                    why: format!("refused: {why}"),
                    refused: true,
                });
            }
            other => return Err(down(format!("unexpected frame kind {other}"))),
        }
        let (tx, rx) = mpsc::channel(self.options.outstanding_max + 64);
        let lab = self.options.lab.as_ref().map(|lab| LabRef {
            lab: lab.clone(),
            process: 0,
        });
        let writer = tokio::spawn(async move {
            let _ = writer_task(w, rx, lab).await;
        });
        self.conn = Some(Conn { tx, frames, writer });
        self.failures = 0;
        // Everything in flight goes out again on the new connection.
        self.unsent.clear();
        self.busy.clear();
        for (seq, c) in self.commands.iter_mut() {
            c.sent = None;
            match c.resend_at {
                Some(_) => self.busy.push(*seq),
                None => self.unsent.push_back(*seq),
            }
        }
        for r in self.reads.values_mut() {
            r.sent = false;
        }
        Ok(())
    }

    /// Drops the connection and aims at `next` (if this round has not
    /// tried its address), else at the next address this round has not
    /// tried. Returns `true` when every address has been tried (a new
    /// round starts: the caller waits before it). Every attempt still out
    /// on the connection is lost: its command may have executed.
    fn switch(&mut self, next: Option<ReplicaId>) -> bool {
        if self.conn.take().is_some() {
            for c in self.commands.values_mut() {
                if c.sent.take().is_some() {
                    c.maybe_executed = true;
                }
            }
        }
        let n = self.addresses.len();
        self.tried.resize(n, false);
        self.tried[self.target] = true;
        let hinted = next
            .and_then(|id| self.members.get(&id))
            .and_then(|a| self.addresses.iter().position(|x| x == a));
        let untried = (1..n)
            .map(|k| (self.target + k) % n)
            .find(|&i| !self.tried[i]);
        match hinted.filter(|&i| !self.tried[i]).or(untried) {
            Some(i) => {
                self.target = i;
                false
            }
            None => {
                // A new round starts at the hint, if any.
                self.end_round();
                self.target = hinted.unwrap_or((self.target + 1) % n);
                true
            }
        }
    }

    /// Every address may be tried again (a command executed, or all were
    /// tried).
    fn end_round(&mut self) {
        self.tried.clear();
    }

    /// The lowest seq not answered yet, once the session has had a command
    /// executed; before that, the first seq: commands that never ran (given
    /// up at their deadline, refused) leave no session in the replicas, and
    /// a replica refuses a session it does not hold whose client says it
    /// had answers (it takes it for one evicted from its table).
    fn ack_below(&self) -> u64 {
        if !self.session_used {
            return crate::state_machine::FIRST_SEQ;
        }
        self.commands
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq)
    }

    /// Sends whatever is due on the current connection: O(commands due),
    /// not O(commands in flight).
    fn send_due(&mut self, now: Instant) {
        let ack_below = self.ack_below();
        let Some(conn) = &self.conn else {
            return;
        };
        if !self.busy.is_empty() {
            let commands = &mut self.commands;
            let unsent = &mut self.unsent;
            self.busy.retain(|seq| match commands.get_mut(seq) {
                Some(c) if c.resend_at.is_some_and(|t| t > now) => true,
                // Past its deadline: no new attempt (it fails as refused).
                Some(c) if now >= c.deadline => false,
                Some(c) => {
                    c.resend_at = None;
                    unsent.push_back(*seq);
                    false
                }
                None => false,
            });
        }
        while let Some(seq) = self.unsent.front().copied() {
            let Some(c) = self.commands.get_mut(&seq) else {
                self.unsent.pop_front();
                continue;
            };
            if c.sent.is_some() || now >= c.deadline {
                // Sent already, or past its deadline: no new attempt, so a
                // command refused until then fails refused, not unknown.
                self.unsent.pop_front();
                continue;
            }
            let req = ClientRequest {
                client: self.id,
                seq,
                ack_below,
                op: c.op.clone(),
            };
            let mut frame = wire::encode_client_request(self.cluster, &req);
            if c.started_ns != 0 && !c.marked {
                c.marked = true;
                let lab = self.options.lab.as_ref().expect("stamped with a lab");
                frame = frame.marked(Mark {
                    stage: Stage::ClientSend,
                    start_ns: c.started_ns,
                    slot: 0,
                    flow: lab.flow_of(self.id.0, seq).unwrap_or(0),
                });
            }
            if conn.tx.try_send(frame).is_err() {
                // The writer's queue is full: the rest waits for room.
                break;
            }
            c.sent = Some(now);
            self.unsent.pop_front();
        }
        for (id, r) in self.reads.iter_mut() {
            if r.sent {
                continue;
            }
            let session = if self.session_slot == Slot::ZERO {
                Slot::ZERO
            } else {
                self.session_slot.next()
            };
            let fr = FastRead {
                id: *id,
                min_applied: r.min_applied.unwrap_or(session),
                query: r.query.clone(),
            };
            if conn
                .tx
                .try_send(wire::encode_fast_read(self.cluster, &fr))
                .is_ok()
            {
                r.sent = true;
            }
        }
    }

    fn on_frame(&mut self, k: u16, body: Bytes, now: Instant) -> Result<(), String> {
        match k {
            kind::CLIENT_REPLY => {
                let r = wire::decode_client_reply(body).map_err(|e| e.to_string())?;
                if r.client != self.id {
                    return Ok(());
                }
                match r.status {
                    Status::Ok => {
                        if let Some(c) = self.commands.remove(&r.seq) {
                            self.end_round();
                            self.session_used = true;
                            self.session_slot = self.session_slot.max(r.slot);
                            if let (Some(rec), Some(lab)) = (&mut self.rec, &self.options.lab)
                                && c.started_ns != 0
                            {
                                let flow = lab.flow_of(self.id.0, r.seq).unwrap_or(0);
                                rec.span(
                                    Stage::ClientRecv,
                                    c.started_ns,
                                    self.lab_now,
                                    r.slot.0,
                                    flow,
                                );
                            }
                            let _ = c.reply.send(Ok(Response {
                                payload: r.payload,
                                slot: r.slot,
                            }));
                        }
                    }
                    Status::NotLeader => {
                        if let Some(c) = self.commands.get_mut(&r.seq) {
                            // Refused before proposing: this attempt did
                            // not execute.
                            c.sent = None;
                            c.refused = Some(ClientError::NotLeader { hint: r.hint });
                        } else {
                            return Ok(());
                        }
                        // Every command goes to the leader: move there (with
                        // no leader known, an election: after a pause).
                        let round_over = self.switch(r.hint);
                        self.reconnect_at = match r.hint {
                            Some(_) if !round_over => now,
                            _ => now + self.options.busy_backoff,
                        };
                    }
                    Status::Busy => {
                        if let Some(c) = self.commands.get_mut(&r.seq) {
                            c.sent = None;
                            c.refused = Some(ClientError::Busy);
                            c.resend_at = Some(now + self.options.busy_backoff);
                            self.busy.push(r.seq);
                        }
                    }
                    Status::SessionExpired => {
                        if let Some(c) = self.commands.remove(&r.seq) {
                            self.unknown_outcome = true;
                            let _ = c.reply.send(Err(ClientError::SessionExpired));
                        }
                    }
                    Status::Invalid | Status::Stale => {
                        if let Some(c) = self.commands.remove(&r.seq) {
                            let why = String::from_utf8_lossy(&r.payload).into_owned();
                            let _ = c.reply.send(Err(ClientError::Invalid(why)));
                        }
                    }
                }
            }
            kind::FAST_READ_REPLY => {
                let r = wire::decode_fast_read_reply(body).map_err(|e| e.to_string())?;
                if let Some(read) = self.reads.remove(&r.id) {
                    let result = match r.status {
                        Status::Ok => Ok(Response {
                            payload: r.payload,
                            slot: r.applied,
                        }),
                        Status::Stale => Err(ClientError::Stale { applied: r.applied }),
                        _ => Err(ClientError::Invalid(
                            String::from_utf8_lossy(&r.payload).into_owned(),
                        )),
                    };
                    let _ = read.reply.send(result);
                }
            }
            other => return Err(format!("unexpected frame kind {other}")),
        }
        Ok(())
    }

    /// Timeouts: an attempt unanswered too long moves the client to another
    /// replica; a call past its deadline fails.
    fn check_timers(&mut self, now: Instant) {
        let deadline = self.options.deadline;
        let expired: Vec<u64> = self
            .commands
            .iter()
            .filter(|(_, c)| now > c.deadline)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            let c = self.commands.remove(&s).expect("listed");
            let e = if c.sent.is_some() || c.maybe_executed {
                self.unknown_outcome = true;
                ClientError::Timeout
            } else if let Some(refused) = c.refused {
                refused
            } else if self.unreachable.is_empty() {
                ClientError::Unreachable("the command was never sent".into())
            } else {
                ClientError::Unreachable(self.unreachable_summary())
            };
            let _ = c.reply.send(Err(e));
        }
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| now.duration_since(r.started) > deadline)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            let r = self.reads.remove(&i).expect("listed");
            let _ = r.reply.send(Err(ClientError::Timeout));
        }
        let stuck = self.commands.values().any(|c| {
            c.sent
                .is_some_and(|t| now.duration_since(t) > self.options.attempt_timeout)
        });
        if stuck && self.conn.is_some() {
            tracing::debug!(
                client = self.id.0,
                "no answer in time: trying another replica"
            );
            self.switch(None);
            self.reconnect_at = now;
        }
    }

    fn on_call(&mut self, call: Call, now: Instant) {
        match call {
            Call::Command {
                op,
                deadline,
                reply,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.submit(seq, op, deadline, reply);
            }
            Call::CloseSession { deadline, reply } => {
                // Only a session with commands, all answered: otherwise
                // there is nothing to end, or something it may still owe.
                let safe = self.commands.is_empty() && !self.unknown_outcome;
                if safe && self.session_used && deadline > now {
                    self.submit(SESSION_CLOSE_SEQ, Bytes::new(), deadline, reply);
                    debug_assert_eq!(self.ack_below(), SESSION_CLOSE_SEQ);
                } else {
                    let _ = reply.send(Ok(Response {
                        payload: Bytes::new(),
                        slot: self.session_slot,
                    }));
                }
            }
            Call::FastRead {
                query,
                min_applied,
                reply,
            } => {
                let id = self.next_read;
                self.next_read += 1;
                self.reads.insert(
                    id,
                    Read {
                        query,
                        min_applied,
                        reply,
                        started: now,
                        sent: false,
                    },
                );
            }
        }
    }

    /// Queues command `seq` to be sent.
    fn submit(&mut self, seq: u64, op: Bytes, deadline: Instant, reply: Reply) {
        // A session's close is no call of the user's: not measured.
        let started_ns = if seq == SESSION_CLOSE_SEQ {
            0
        } else {
            self.lab_now
        };
        let fresh = self
            .commands
            .insert(
                seq,
                Command {
                    op,
                    reply,
                    deadline,
                    started_ns,
                    marked: false,
                    sent: None,
                    resend_at: None,
                    refused: None,
                    maybe_executed: false,
                },
            )
            .is_none();
        assert!(fresh, "a seq is submitted once");
        self.unsent.push_back(seq);
    }

    /// Reads the clock (and, with a lab, the lab's): once per wake, for
    /// everything the task does before it sleeps again (deadlines are
    /// coarse; the lab's stages share the reading).
    fn clock(&mut self) -> Instant {
        if self.rec.is_some() {
            self.lab_now = now_ns();
        }
        Instant::now()
    }

    /// Takes the calls already queued, up to `outstanding_max` in flight.
    fn take_queued(&mut self, calls: &mut mpsc::Receiver<Call>, now: Instant) {
        while self.commands.len() + self.reads.len() < self.options.outstanding_max {
            match calls.try_recv() {
                Ok(call) => self.on_call(call, now),
                Err(_) => break,
            }
        }
    }

    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut now = self.clock();
        loop {
            if self.conn.is_none()
                && now >= self.reconnect_at
                && !(self.commands.is_empty() && self.reads.is_empty() && !open)
            {
                // Not past the last deadline of what waits to be sent (a lone
                // command's: `kv --timeout`); with many in flight, an
                // attempt_timeout as ever.
                let by = self
                    .commands
                    .values()
                    .map(|c| c.deadline)
                    .chain(
                        self.reads
                            .values()
                            .map(|r| r.started + self.options.deadline),
                    )
                    .max()
                    .unwrap_or(now + self.options.attempt_timeout);
                let opened = self.open(by).await;
                now = self.clock();
                if let Err(Unreached { why, .. }) = opened {
                    self.failures += 1;
                    tracing::debug!(client = self.id.0, %why, "cannot reach a replica");
                    self.switch(None);
                    let backoff = Duration::from_millis(5u64 << self.failures.min(7));
                    self.reconnect_at = now + backoff;
                }
            }
            self.send_due(now);
            if !open && self.commands.is_empty() && self.reads.is_empty() {
                if let (Some(rec), Some(lab)) = (&mut self.rec, &self.options.lab) {
                    lab.merge(rec);
                }
                return;
            }
            let room = self.commands.len() + self.reads.len() < self.options.outstanding_max;
            tokio::select! {
                call = calls.recv(), if open && room => match call {
                    Some(call) => {
                        // Take every call already queued (up to the bound)
                        // before sending: one pass, one write for all.
                        now = self.clock();
                        self.on_call(call, now);
                        self.take_queued(&mut calls, now);
                        if self.commands.len() + self.reads.len() < self.options.outstanding_max {
                            // Callers woken by the same read of replies are
                            // queued behind this task (tokio runs the task
                            // woken last first): let them call, then take
                            // their calls too, for one write (see
                            // `writer_task`).
                            tokio::task::yield_now().await;
                            now = self.clock();
                            self.take_queued(&mut calls, now);
                        }
                    }
                    None => {
                        open = false;
                        // Fail what is still in flight: the owner is gone.
                        for (_, c) in std::mem::take(&mut self.commands) {
                            let _ = c.reply.send(Err(ClientError::Closed("client closed".into())));
                        }
                        for (_, r) in std::mem::take(&mut self.reads) {
                            let _ = r.reply.send(Err(ClientError::Closed("client closed".into())));
                        }
                    }
                },
                frame = async { self.conn.as_mut().expect("guarded").frames.next().await }, if self.conn.is_some() => {
                    match frame {
                        Ok((k, body)) => {
                            now = self.clock();
                            let mut next = Some((k, body));
                            // Every frame already read, in one pass.
                            while let Some((k, body)) = next.take() {
                                if let Err(why) = self.on_frame(k, body, now) {
                                    tracing::warn!(client = self.id.0, %why, "bad frame from a replica");
                                    self.switch(None);
                                    break;
                                }
                                next = match self.conn.as_mut().map(|c| c.frames.next_buffered()) {
                                    Some(Ok(f)) => f,
                                    Some(Err(e)) => {
                                        tracing::warn!(client = self.id.0, error = %e, "bad frame from a replica");
                                        self.switch(None);
                                        None
                                    }
                                    None => None,
                                };
                            }
                        }
                        Err(e) => {
                            tracing::debug!(client = self.id.0, error = %e, "connection lost");
                            now = self.clock();
                            self.switch(None);
                            self.reconnect_at = now;
                        }
                    }
                }
                _ = ticker.tick() => {
                    now = self.clock();
                    self.check_timers(now);
                    if let (Some(rec), Some(lab)) = (&mut self.rec, &self.options.lab) {
                        rec.merge_if_due(lab, self.lab_now);
                    }
                }
            }
        }
    }
}

/// Asks the replica at `addr` for its status (`replica --status`): a client
/// handshake, one `STATUS_REQUEST`, the JSON of its `StatusReport`.
pub async fn fetch_status(
    network: &Network,
    cluster: ClusterId,
    addr: &str,
    timeout: Duration,
) -> Result<crate::runtime::StatusReport, ClientError> {
    let body = admin_request(
        network,
        cluster,
        addr,
        wire::encode_status_request(cluster),
        kind::STATUS_REPLY,
        timeout,
    )
    .await?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Invalid(format!("{addr}: bad status: {e}")))
}

/// Asks the cluster to change its voting members to `members`
/// (`replica --change`): finds the leader among `addresses` (following
/// its hints), retries while it is busy with another change, and returns
/// the leader's answer once the change is in force, given up, invalid, or
/// of unknown outcome (a leader change in between). A change waits for
/// its new members to catch up, so `timeout` should allow for that.
pub async fn change_config(
    network: &Network,
    cluster: ClusterId,
    addresses: &[(u32, String)],
    members: &[u32],
    timeout: Duration,
) -> Result<crate::runtime::admin::ConfigChangeReply, ClientError> {
    use crate::runtime::admin::{ConfigChangeReply, ConfigChangeRequest, ConfigOutcome};
    if addresses.is_empty() {
        return Err(ClientError::Invalid("no replica addresses".into()));
    }
    let request = serde_json::to_vec(&ConfigChangeRequest {
        members: members.to_vec(),
    })
    .expect("a request serializes");
    let request = Bytes::from(request);
    let deadline = Instant::now() + timeout;
    let mut target = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        let addr = &addresses[target].1;
        let frame = wire::encode_config_change(cluster, request.clone());
        let answer = admin_request(
            network,
            cluster,
            addr,
            frame,
            kind::CONFIG_CHANGE_REPLY,
            left,
        )
        .await;
        let pause = match answer {
            Ok(body) => {
                let reply: ConfigChangeReply = serde_json::from_slice(&body).map_err(|e| {
                    ClientError::Invalid(format!("{addr}: bad configuration change reply: {e}"))
                })?;
                match reply.outcome {
                    ConfigOutcome::NotLeader => {
                        let hinted = reply
                            .leader
                            .and_then(|l| addresses.iter().position(|(id, _)| *id == l));
                        target = match hinted {
                            Some(i) if i != target => i,
                            _ => (target + 1) % addresses.len(),
                        };
                        Duration::from_millis(50)
                    }
                    // Another change first: ask the same leader again.
                    ConfigOutcome::Busy => Duration::from_millis(100),
                    _ => return Ok(reply),
                }
            }
            Err(ClientError::Timeout) => return Err(ClientError::Timeout),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "configuration change: trying another replica");
                target = (target + 1) % addresses.len();
                Duration::from_millis(50)
            }
        };
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// One operator request on a client connection of its own: the handshake,
/// `request`, and the body of the first frame of kind `reply`.
async fn admin_request(
    network: &Network,
    cluster: ClusterId,
    addr: &str,
    request: wire::Frame,
    reply: u16,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    use tokio::io::AsyncWriteExt;
    let closed = |why: String| ClientError::Closed(format!("{addr}: {why}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, network.connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| closed(e.to_string()))?;
    let (r, mut w) = tokio::io::split(stream);
    let hello = wire::encode_hello(cluster, &Hello { role: Role::Client });
    w.write_all(&hello.to_bytes())
        .await
        .map_err(|e| closed(e.to_string()))?;
    w.write_all(&request.to_bytes())
        .await
        .map_err(|e| closed(e.to_string()))?;
    let mut frames = FrameStream::new(
        r,
        FrameReader {
            cluster,
            frame_bytes_max: 16 << 20,
        },
    );
    loop {
        let (k, body) = tokio::time::timeout_at(deadline, frames.next())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| closed(e.to_string()))?;
        match k {
            kind::HELLO_ACK => continue,
            kind::REFUSED => {
                return Err(ClientError::Invalid(format!(
                    "refused by {addr}: {}",
                    wire::decode_refused(body).unwrap_or_default()
                )));
            }
            k if k == reply => return Ok(body),
            other => return Err(closed(format!("unexpected frame kind {other}"))),
        }
    }
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
