//! The client's task: owns the connection, sends commands and reads,
//! follows hints, retries, times out, and answers each call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::core::{ClientId, ClusterId, ReplicaId, Slot};
use crate::instrumentation::{LabRef, LocalRecorder, Mark, Stage, now_ns};
use crate::state_machine::SESSION_CLOSE_SEQ;
use crate::transport::net::{BoxStream, FrameStream, Network, writer_task};
use crate::transport::wire::{
    self, FastRead, Frame, FrameReader, Hello, Marks, Role, Status, kind,
};

use super::inflight::InFlight;
use super::{Call, ClientError, ClientOptions, Reply, Response};

/// Why the current target could not be reached.
pub(super) struct Unreached {
    /// The reason (without the address).
    pub(super) why: String,
    /// It answered, refusing this client (nothing will change that).
    pub(super) refused: bool,
}

pub(super) struct Conn {
    pub(super) tx: mpsc::Sender<Frame>,
    /// Requests encoded back to back, handed to the writer by
    /// [`Task::send_due`] (see [`REQUEST_FRAME_BYTES_MAX`]).
    pub(super) out: BytesMut,
    pub(super) frames: FrameStream<tokio::io::ReadHalf<BoxStream>>,
    pub(super) writer: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

pub(super) struct Command {
    pub(super) op: Bytes,
    pub(super) reply: Reply,
    /// When the call fails if unanswered.
    pub(super) deadline: Instant,
    /// Lab clock at the call (0 without a lab).
    pub(super) started_ns: u64,
    /// `client.send` was recorded (first attempt only).
    pub(super) marked: bool,
    /// When the current attempt was sent (`None`: waiting to be sent).
    pub(super) sent: Option<Instant>,
    /// Resend no earlier than this (after `Busy`).
    pub(super) resend_at: Option<Instant>,
    /// The last answer that refused the command without proposing it
    /// (`Busy`, `NotLeader`): the error if the deadline passes while no
    /// attempt is out and none was lost.
    pub(super) refused: Option<ClientError>,
    /// An attempt went unanswered (a lost connection, an attempt timeout):
    /// the command may have executed, so its failure is a `Timeout`.
    pub(super) maybe_executed: bool,
}

/// A frame of requests for the writer ends at the first request past this
/// many bytes.
pub(super) const REQUEST_FRAME_BYTES_MAX: usize = 64 * 1024;
/// The connection's request buffer grows by this much at a time.
pub(super) const REQUEST_BUFFER_BYTES: usize = 16 * 1024;
/// A request's header and fixed fields (client, seq, ack_below).
pub(super) const REQUEST_HEAD_BYTES_MAX: usize = wire::HEADER_BYTES + 24;

pub(super) struct Read {
    pub(super) query: Bytes,
    pub(super) min_applied: Option<Slot>,
    pub(super) reply: Reply,
    pub(super) started: Instant,
    pub(super) sent: bool,
}

pub(super) struct Task {
    pub(super) network: Network,
    pub(super) cluster: ClusterId,
    pub(super) id: ClientId,
    pub(super) options: ClientOptions,
    /// Where calls go, and what was learned trying.
    pub(super) routing: Routing,
    pub(super) conn: Option<Conn>,
    /// The session's numbering and what it has seen.
    pub(super) session: Session,
    /// Commands in flight, by seq.
    pub(super) commands: InFlight<Command>,
    /// Commands waiting to be sent or resent.
    pub(super) queue: SendQueue,
    pub(super) reads: Reads,
    pub(super) lab: TaskLab,
}

/// Where calls go: the addresses known, the members learned from the
/// handshake, the current target and the round's progress.
pub(super) struct Routing {
    pub(super) addresses: Vec<String>,
    pub(super) members: HashMap<ReplicaId, String>,
    pub(super) target: usize,
    /// The addresses (indices into `addresses`) this round has tried: a
    /// round ends when a command executes, or when every address known
    /// has been tried. A hint is followed only to an address not tried
    /// yet, so a replica that points at an address this client cannot
    /// reach (its own address book) does not hold the client between
    /// the two while the other addresses go untried.
    pub(super) tried: Vec<bool>,
    pub(super) reconnect_at: Instant,
    pub(super) failures: u32,
    /// Why each address could not be reached (keyed by address), since the
    /// last connection.
    pub(super) unreachable: BTreeMap<String, String>,
}

/// The client's session.
pub(super) struct Session {
    pub(super) next_seq: u64,
    /// Highest slot this session has seen executed.
    pub(super) slot: Slot,
    /// Some call failed with an unknown outcome: the session must not be
    /// closed (that command's retry could still be chosen).
    pub(super) unknown_outcome: bool,
    /// Some command executed (answered `Ok`): the replicas hold a session
    /// to close.
    pub(super) used: bool,
}

/// Commands waiting to be sent, oldest first (each in `commands`; stale
/// entries, answered meanwhile, are skipped), and those answered `Busy`,
/// waiting for their resend time.
#[derive(Default)]
pub(super) struct SendQueue {
    pub(super) unsent: VecDeque<u64>,
    pub(super) busy: Vec<u64>,
    /// The commands in the frame being built, and whether each was marked
    /// in it (scratch of [`Task::send_due`]).
    pub(super) sending: Vec<(u64, bool)>,
}

/// Fast reads in flight, by id, and the next id.
pub(super) struct Reads {
    pub(super) by_id: HashMap<u64, Read>,
    pub(super) next: u64,
}

/// The lab recorder of `client.recv` (`None` without a lab), and the lab
/// clock when the task last read its clock (0 without a lab): the calls
/// taken and the replies read in one pass share one reading.
pub(super) struct TaskLab {
    pub(super) rec: Option<LocalRecorder>,
    pub(super) now: u64,
}

impl Task {
    /// Connects to the current target and learns the membership, giving
    /// the connection and the handshake together `attempt_timeout` but
    /// nothing past `by` (a deadline); on a failure, records why against
    /// the address.
    pub(super) async fn open(&mut self, by: Instant) -> Result<(), Unreached> {
        let addr = self.routing.addresses[self.routing.target].clone();
        let limit = self
            .options
            .attempt_timeout
            .min(by.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let opened = self.try_open(&addr, limit).await;
        match &opened {
            Ok(()) => self.routing.unreachable.clear(),
            Err(u) => {
                self.routing.unreachable.insert(addr, u.why.clone());
            }
        }
        opened
    }

    /// Every address that could not be reached and why, on one line.
    pub(super) fn unreachable_summary(&self) -> String {
        let all: Vec<String> = self
            .routing
            .unreachable
            .iter()
            .map(|(addr, why)| format!("{addr}: {why}"))
            .collect();
        all.join("; ")
    }

    pub(super) async fn try_open(&mut self, addr: &str, limit: Duration) -> Result<(), Unreached> {
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
                    if !self.routing.addresses.contains(&a) {
                        self.routing.addresses.push(a.clone());
                    }
                    self.routing.members.insert(id, a);
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
        let gather = self.network.gathers_writes();
        let writer = tokio::spawn(async move {
            let _ = writer_task(w, rx, lab, gather).await;
        });
        self.conn = Some(Conn {
            tx,
            out: BytesMut::new(),
            frames,
            writer,
        });
        self.routing.failures = 0;
        // Everything in flight goes out again on the new connection.
        self.queue.unsent.clear();
        self.queue.busy.clear();
        for (seq, c) in self.commands.iter_mut() {
            c.sent = None;
            match c.resend_at {
                Some(_) => self.queue.busy.push(seq),
                None => self.queue.unsent.push_back(seq),
            }
        }
        for r in self.reads.by_id.values_mut() {
            r.sent = false;
        }
        Ok(())
    }

    /// Drops the connection and aims at `next` (if this round has not
    /// tried its address), else at the next address this round has not
    /// tried. Returns `true` when every address has been tried (a new
    /// round starts: the caller waits before it). Every attempt still out
    /// on the connection is lost: its command may have executed.
    pub(super) fn switch(&mut self, next: Option<ReplicaId>) -> bool {
        if self.conn.take().is_some() {
            for c in self.commands.values_mut() {
                if c.sent.take().is_some() {
                    c.maybe_executed = true;
                }
            }
        }
        let n = self.routing.addresses.len();
        self.routing.tried.resize(n, false);
        self.routing.tried[self.routing.target] = true;
        let hinted = next
            .and_then(|id| self.routing.members.get(&id))
            .and_then(|a| self.routing.addresses.iter().position(|x| x == a));
        let untried = (1..n)
            .map(|k| (self.routing.target + k) % n)
            .find(|&i| !self.routing.tried[i]);
        match hinted.filter(|&i| !self.routing.tried[i]).or(untried) {
            Some(i) => {
                self.routing.target = i;
                false
            }
            None => {
                // A new round starts at the hint, if any.
                self.end_round();
                self.routing.target = hinted.unwrap_or((self.routing.target + 1) % n);
                true
            }
        }
    }

    /// Every address may be tried again (a command executed, or all were
    /// tried).
    pub(super) fn end_round(&mut self) {
        self.routing.tried.clear();
    }

    /// The lowest seq not answered yet, once the session has had a command
    /// executed; before that, the first seq: commands that never ran (given
    /// up at their deadline, refused) leave no session in the replicas, and
    /// a replica refuses a session it does not hold whose client says it
    /// had answers (it takes it for one evicted from its table).
    pub(super) fn ack_below(&self) -> u64 {
        if !self.session.used {
            return crate::state_machine::FIRST_SEQ;
        }
        self.commands.first_seq().unwrap_or(self.session.next_seq)
    }

    /// Sends whatever is due on the current connection: O(commands due),
    /// not O(commands in flight).
    pub(super) fn send_due(&mut self, now: Instant) {
        let ack_below = self.ack_below();
        let Some(conn) = &mut self.conn else {
            return;
        };
        if !self.queue.busy.is_empty() {
            let commands = &mut self.commands;
            let unsent = &mut self.queue.unsent;
            self.queue.busy.retain(|seq| match commands.get_mut(*seq) {
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
        // Whole frames into the connection's buffer, handed to the writer
        // REQUEST_FRAME_BYTES_MAX at a time while its queue has room (this
        // task is its only sender: room seen here stays).
        while conn.tx.capacity() > 0 && !self.queue.unsent.is_empty() {
            let mut marks = Marks::new();
            while let Some(seq) = self.queue.unsent.front().copied() {
                if conn.out.len() >= REQUEST_FRAME_BYTES_MAX {
                    break;
                }
                self.queue.unsent.pop_front();
                let Some(c) = self.commands.get_mut(seq) else {
                    continue;
                };
                if c.sent.is_some() || now >= c.deadline {
                    // Sent already, or past its deadline: no new attempt,
                    // so a command refused until then fails refused, not
                    // unknown.
                    continue;
                }
                wire::make_room(
                    &mut conn.out,
                    REQUEST_HEAD_BYTES_MAX + c.op.len(),
                    REQUEST_BUFFER_BYTES,
                );
                wire::encode_client_request_into(
                    &mut conn.out,
                    self.cluster,
                    self.id,
                    seq,
                    ack_below,
                    &c.op,
                );
                let mark = c.started_ns != 0 && !c.marked;
                if mark {
                    c.marked = true;
                    let lab = self.options.lab.as_ref().expect("stamped with a lab");
                    marks.push(Mark {
                        stage: Stage::ClientSend,
                        start_ns: c.started_ns,
                        slot: 0,
                        flow: lab.flow_of(self.id.0, seq).unwrap_or(0),
                    });
                }
                c.sent = Some(now);
                self.queue.sending.push((seq, mark));
            }
            if conn.out.is_empty() {
                break;
            }
            let frame = Frame::encoded(conn.out.split().freeze(), marks);
            if conn.tx.try_send(frame).is_err() {
                // The writer is gone: none of these went out; they go
                // again, in order, on the next connection.
                for &(seq, marked) in self.queue.sending.iter().rev() {
                    if let Some(c) = self.commands.get_mut(seq) {
                        c.sent = None;
                        c.marked &= !marked;
                    }
                    self.queue.unsent.push_front(seq);
                }
                self.queue.sending.clear();
                break;
            }
            self.queue.sending.clear();
        }
        for (id, r) in self.reads.by_id.iter_mut() {
            if r.sent {
                continue;
            }
            let session = if self.session.slot == Slot::ZERO {
                Slot::ZERO
            } else {
                self.session.slot.next()
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

    pub(super) fn on_frame(&mut self, k: u16, body: Bytes, now: Instant) -> Result<(), String> {
        match k {
            kind::CLIENT_REPLY => {
                let r = wire::decode_client_reply(body).map_err(|e| e.to_string())?;
                if r.client != self.id {
                    return Ok(());
                }
                match r.status {
                    Status::Ok => {
                        if let Some(c) = self.commands.remove(r.seq) {
                            self.end_round();
                            self.session.used = true;
                            self.session.slot = self.session.slot.max(r.slot);
                            if let (Some(rec), Some(lab)) = (&mut self.lab.rec, &self.options.lab)
                                && c.started_ns != 0
                            {
                                let flow = lab.flow_of(self.id.0, r.seq).unwrap_or(0);
                                rec.span(
                                    Stage::ClientRecv,
                                    c.started_ns,
                                    self.lab.now,
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
                        if let Some(c) = self.commands.get_mut(r.seq) {
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
                        self.routing.reconnect_at = match r.hint {
                            Some(_) if !round_over => now,
                            _ => now + self.options.busy_backoff,
                        };
                    }
                    Status::Busy => {
                        if let Some(c) = self.commands.get_mut(r.seq) {
                            c.sent = None;
                            c.refused = Some(ClientError::Busy);
                            c.resend_at = Some(now + self.options.busy_backoff);
                            self.queue.busy.push(r.seq);
                        }
                    }
                    Status::SessionExpired => {
                        if let Some(c) = self.commands.remove(r.seq) {
                            self.session.unknown_outcome = true;
                            let _ = c.reply.send(Err(ClientError::SessionExpired));
                        }
                    }
                    Status::Invalid | Status::Stale => {
                        if let Some(c) = self.commands.remove(r.seq) {
                            let why = String::from_utf8_lossy(&r.payload).into_owned();
                            let _ = c.reply.send(Err(ClientError::Invalid(why)));
                        }
                    }
                }
            }
            kind::FAST_READ_REPLY => {
                let r = wire::decode_fast_read_reply(body).map_err(|e| e.to_string())?;
                if let Some(read) = self.reads.by_id.remove(&r.id) {
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
    pub(super) fn check_timers(&mut self, now: Instant) {
        let deadline = self.options.deadline;
        let expired: Vec<u64> = self
            .commands
            .iter()
            .filter(|(_, c)| now > c.deadline)
            .map(|(s, _)| s)
            .collect();
        for s in expired {
            let c = self.commands.remove(s).expect("listed");
            let e = if c.sent.is_some() || c.maybe_executed {
                self.session.unknown_outcome = true;
                ClientError::Timeout
            } else if let Some(refused) = c.refused {
                refused
            } else if self.routing.unreachable.is_empty() {
                ClientError::Unreachable("the command was never sent".into())
            } else {
                ClientError::Unreachable(self.unreachable_summary())
            };
            let _ = c.reply.send(Err(e));
        }
        let expired: Vec<u64> = self
            .reads
            .by_id
            .iter()
            .filter(|(_, r)| now.duration_since(r.started) > deadline)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            let r = self.reads.by_id.remove(&i).expect("listed");
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
            self.routing.reconnect_at = now;
        }
    }

    pub(super) fn on_call(&mut self, call: Call, now: Instant) {
        match call {
            Call::Command {
                op,
                deadline,
                reply,
            } => {
                let seq = self.session.next_seq;
                if !self.commands.has_room_for(seq) {
                    // The oldest command in flight is far behind the
                    // session's newest (refused again and again while
                    // later ones were answered): push back until it is
                    // answered or expires.
                    let _ = reply.send(Err(ClientError::Busy));
                    return;
                }
                self.session.next_seq += 1;
                self.submit(seq, op, deadline, reply);
            }
            Call::CloseSession { deadline, reply } => {
                // Only a session with commands, all answered: otherwise
                // there is nothing to end, or something it may still owe.
                let safe = self.commands.is_empty() && !self.session.unknown_outcome;
                if safe && self.session.used && deadline > now {
                    self.submit(SESSION_CLOSE_SEQ, Bytes::new(), deadline, reply);
                    debug_assert_eq!(self.ack_below(), SESSION_CLOSE_SEQ);
                } else {
                    let _ = reply.send(Ok(Response {
                        payload: Bytes::new(),
                        slot: self.session.slot,
                    }));
                }
            }
            Call::FastRead {
                query,
                min_applied,
                reply,
            } => {
                let id = self.reads.next;
                self.reads.next += 1;
                self.reads.by_id.insert(
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
    pub(super) fn submit(&mut self, seq: u64, op: Bytes, deadline: Instant, reply: Reply) {
        // A session's close is no call of the user's: not measured.
        let started_ns = if seq == SESSION_CLOSE_SEQ {
            0
        } else {
            self.lab.now
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
        self.queue.unsent.push_back(seq);
    }

    /// Reads the clock (and, with a lab, the lab's): once per wake, for
    /// everything the task does before it sleeps again (deadlines are
    /// coarse; the lab's stages share the reading).
    pub(super) fn clock(&mut self) -> Instant {
        if self.lab.rec.is_some() {
            self.lab.now = now_ns();
        }
        Instant::now()
    }

    /// Takes the calls already queued, up to `outstanding_max` in flight.
    pub(super) fn take_queued(&mut self, calls: &mut mpsc::Receiver<Call>, now: Instant) {
        while self.commands.len() + self.reads.by_id.len() < self.options.outstanding_max {
            match calls.try_recv() {
                Ok(call) => self.on_call(call, now),
                Err(_) => break,
            }
        }
    }

    pub(super) async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut now = self.clock();
        loop {
            if self.conn.is_none()
                && now >= self.routing.reconnect_at
                && !(self.commands.is_empty() && self.reads.by_id.is_empty() && !open)
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
                            .by_id
                            .values()
                            .map(|r| r.started + self.options.deadline),
                    )
                    .max()
                    .unwrap_or(now + self.options.attempt_timeout);
                let opened = self.open(by).await;
                now = self.clock();
                if let Err(Unreached { why, .. }) = opened {
                    self.routing.failures += 1;
                    tracing::debug!(client = self.id.0, %why, "cannot reach a replica");
                    self.switch(None);
                    let backoff = Duration::from_millis(5u64 << self.routing.failures.min(7));
                    self.routing.reconnect_at = now + backoff;
                }
            }
            self.send_due(now);
            if !open && self.commands.is_empty() && self.reads.by_id.is_empty() {
                if let (Some(rec), Some(lab)) = (&mut self.lab.rec, &self.options.lab) {
                    lab.merge(rec);
                }
                return;
            }
            let room = self.commands.len() + self.reads.by_id.len() < self.options.outstanding_max;
            tokio::select! {
                call = calls.recv(), if open && room => match call {
                    Some(call) => {
                        // Take every call already queued (up to the bound)
                        // before sending: one pass, one write for all.
                        now = self.clock();
                        self.on_call(call, now);
                        self.take_queued(&mut calls, now);
                        if self.commands.len() + self.reads.by_id.len() < self.options.outstanding_max {
                            // Callers woken by the same read of replies are
                            // queued behind this task (tokio runs the task
                            // woken last first): let them call, then take
                            // their calls too, for one write.
                            tokio::task::yield_now().await;
                            now = self.clock();
                            self.take_queued(&mut calls, now);
                        }
                    }
                    None => {
                        open = false;
                        // Fail what is still in flight: the owner is gone.
                        for (_, c) in self.commands.drain() {
                            let _ = c.reply.send(Err(ClientError::Closed("client closed".into())));
                        }
                        for (_, r) in std::mem::take(&mut self.reads.by_id) {
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
                            self.routing.reconnect_at = now;
                        }
                    }
                }
                _ = ticker.tick() => {
                    now = self.clock();
                    self.check_timers(now);
                    if let (Some(rec), Some(lab)) = (&mut self.lab.rec, &self.options.lab) {
                        rec.merge_if_due(lab, self.lab.now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
