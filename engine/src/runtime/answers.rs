//! Client answers: commands and fast reads from client connections into
//! the core, replies encoded straight into each connection's buffer, one
//! frame per connection per pass.

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::core::{ClientId, ClientReply, ClusterId, CommandRef, ProposeError, Slot};
use crate::instrumentation::now_ns;
use crate::state_machine::StateMachine;
use crate::transport::wire::{
    self, ClientReplyFrame, ClientRequest, FastRead, FastReadReply, Frame, Status,
};

use super::task::CoreTask;

/// Client connections in the core, and the answers owed them.
pub(super) struct Clients {
    pub(super) conns: FxHashMap<u64, ConnState>,
    /// Connections with replies waiting for the end of the turn.
    pub(super) dirty: Vec<u64>,
    /// Which connection waits for `(client, seq)`.
    pub(super) pending: FxHashMap<(ClientId, u64), u64>,
    pub(super) outstanding_max: usize,
    /// Answer commands unreplicated (the lab's `null` server).
    pub(super) null_server: bool,
    /// The configuration change this leader will answer for (reconfig.rs).
    pub(super) config_waiter: Option<super::admin::ConfigWaiter>,
}

/// Client connection state in the core.
pub(super) struct ConnState {
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) outstanding: usize,
    /// Answers of this flush pass (command replies, Busy, fast reads),
    /// encoded back to back: sent as one frame when the pass ends. At most
    /// `client_outstanding_max` replies, plus the Busy answers and fast
    /// reads of the requests read in one burst.
    pub(super) out: BytesMut,
    /// The lab stages that end when `out` is written.
    pub(super) marks: wire::Marks,
}

impl ConnState {
    pub(super) fn new(tx: mpsc::Sender<Frame>) -> ConnState {
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
pub(super) const REPLY_BUFFER_BYTES: usize = 4 * 1024;

/// Header and fixed fields of an answer frame, at most (room reserved
/// beside its payload).
pub(super) const ANSWER_HEAD_BYTES_MAX: usize = 64;

/// Appends an answer to connection `conn`'s buffer: `encode` writes the
/// whole frame (of `payload_len` payload bytes); `dirty` lists the
/// connections with answers waiting; `mark` ends when the buffer is written.
pub(super) fn queue_answer(
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
    wire::make_room(
        &mut c.out,
        ANSWER_HEAD_BYTES_MAX + payload_len,
        REPLY_BUFFER_BYTES,
    );
    encode(&mut c.out);
    c.marks.extend(mark);
}

/// [`queue_answer`] of a command's reply.
pub(super) fn queue_reply(
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

impl<S: StateMachine> CoreTask<S> {
    pub(super) fn on_client(&mut self, conn: u64, req: ClientRequest, at: u64) {
        let Some(c) = self.clients.conns.get_mut(&conn) else {
            return;
        };
        if self.clients.null_server {
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
                .lab
                .probe
                .as_ref()
                .map(|p| p.reply_mark(req.client.0, req.seq, Slot::ZERO, now_ns()));
            queue_reply(c, conn, &mut self.clients.dirty, self.cluster, &reply, mark);
            return;
        }
        if c.outstanding >= self.clients.outstanding_max {
            let reply = ClientReplyFrame {
                client: req.client,
                seq: req.seq,
                status: Status::Busy,
                slot: Slot::ZERO,
                hint: None,
                payload: Bytes::new(),
            };
            queue_reply(c, conn, &mut self.clients.dirty, self.cluster, &reply, None);
            return;
        }
        if self
            .clients
            .pending
            .insert((req.client, req.seq), conn)
            .is_none()
        {
            c.outstanding += 1;
        }
        let before = self.replica.queued_commands();
        self.replica.on_client(CommandRef {
            client: req.client,
            seq: req.seq,
            ack_below: req.ack_below,
            op: &req.op,
        });
        if let Some(p) = &mut self.lab.probe {
            let queued = self.replica.queued_commands() > before;
            p.on_client(req.client.0, req.seq, at, self.lab.burst_ns, queued);
        }
    }

    pub(super) fn on_fast_read(&mut self, conn: u64, read: FastRead) {
        let Some(c) = self.clients.conns.get_mut(&conn) else {
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
            &mut self.clients.dirty,
            reply.payload.len(),
            |out| wire::encode_fast_read_reply_into(out, cluster, &reply),
            None,
        );
    }

    /// Sends `r` to the connection waiting for it, if any.
    pub(super) fn reply(&mut self, r: ClientReply, slot: Slot) {
        self.reply_at(r, slot, 0);
    }

    /// Sends `r`; with `executed_ns` (a result of the state machine), the
    /// lab's `leader.reply` runs from then until the frame is written.
    pub(super) fn reply_at(&mut self, r: ClientReply, slot: Slot, executed_ns: u64) {
        let Some(conn) = self.clients.pending.remove(&(r.client, r.seq)) else {
            return;
        };
        let Some(c) = self.clients.conns.get_mut(&conn) else {
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
        let mark = match &self.lab.probe {
            Some(p) if executed_ns != 0 => Some(p.reply_mark(r.client.0, r.seq, slot, executed_ns)),
            _ => None,
        };
        queue_reply(c, conn, &mut self.clients.dirty, self.cluster, &reply, mark);
    }

    /// Sends each connection the answers of this pass as one frame.
    pub(super) fn send_replies(&mut self) {
        for conn in self.clients.dirty.drain(..) {
            let Some(c) = self.clients.conns.get_mut(&conn) else {
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
}
