//! The simulated clients and the history they record: sessions, retries,
//! timeouts, closes, replies routed back.

use bytes::Bytes;
use rand_core::Rng;

use super::super::checker::{ViolationKind, violation};
use super::super::linearizability::HistoryOp;
use super::super::workload::encode_op;
use crate::core::{ClientId, ClientReply, ProposeError};
use crate::kv::{KvOp, KvResult};
use crate::state_machine::SESSION_CLOSE_SEQ;

use super::*;

pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) bytes: Bytes,
    pub(super) history: usize,
    pub(super) target: usize,
    pub(super) attempt: u32,
}

pub(super) struct SimClient {
    /// `index + 1`, plus the session's generation in the high 32 bits: a
    /// client that closed its session goes on as a new one.
    pub(super) id: ClientId,
    pub(super) generation: u32,
    /// Each session numbers its commands from 1, as `Client` does;
    /// attempt numbers are apart per session (`generation << 16`), so a
    /// stale timer of an earlier session's command matches nothing.
    pub(super) next_seq: u64,

    /// A session close is in flight: nothing else starts.
    pub(super) closing: bool,
    /// An operation ended with an unknown outcome: the session is never
    /// closed (as `Client::close`).
    pub(super) unknown: bool,
    /// An operation of this session was answered: there is a session to
    /// close.
    pub(super) session_used: bool,
    /// Operations still to start (`u32::MAX`: keep going).
    pub(super) remaining: u32,
    /// Operations in flight, oldest first (at most `client_outstanding_max`).
    pub(super) pending: Vec<Pending>,
    /// The replica the next attempt goes to.
    pub(super) guess: usize,
}

impl Sim {
    pub(super) fn client_start(&mut self, c: usize) {
        let client = &mut self.workload.clients[c];
        let full = client.pending.len() >= self.cfg.client_outstanding_max as usize;
        if full || client.remaining == 0 || client.closing {
            return;
        }

        let may_close = self.net.faults_on
            && client.pending.is_empty()
            && client.session_used
            && !client.unknown
            && client.generation < u32::from(u16::MAX);
        if may_close
            && self
                .sched
                .rng
                .next_u32()
                .is_multiple_of(SESSION_CLOSE_ONE_IN)
        {
            self.begin_close(c);
            return;
        }
        let client = &mut self.workload.clients[c];
        if client.remaining != u32::MAX {
            client.remaining -= 1;
        }
        let op = self
            .workload
            .generator
            .next(&mut self.workload.rng, client.id.0, client.next_seq);
        self.begin_op(c, op);
    }

    /// Client `c` ends its session: a close command, like any other until
    /// answered (then the client goes on under a new id).
    pub(super) fn begin_close(&mut self, c: usize) {
        let client = &mut self.workload.clients[c];
        debug_assert!(client.pending.is_empty() && !client.closing);
        client.closing = true;
        client.pending.push(Pending {
            seq: SESSION_CLOSE_SEQ,
            bytes: Bytes::new(),
            history: usize::MAX,
            target: client.guess,
            // Every close has seq 0: its attempts are numbered apart from
            // an earlier close's, whose timers may still fire.
            attempt: client.generation << 16,
        });
        self.send_attempt(c, SESSION_CLOSE_SEQ);
    }

    /// Client `c`'s close was answered: its session is over everywhere it
    /// will be applied; it starts afresh under a new id.
    pub(super) fn finish_close(&mut self, c: usize) {
        let client = &mut self.workload.clients[c];
        client.pending.retain(|p| p.seq != SESSION_CLOSE_SEQ);
        debug_assert!(client.pending.is_empty());
        client.closing = false;
        client.session_used = false;
        // Numbered from 1 again, as `Client` does (a replica refuses a
        // session it does not hold whose client says it had commands
        // answered).
        client.next_seq = 1;
        client.generation += 1;
        client.id = ClientId((u64::from(client.generation) << 32) | (c as u64 + 1));
        self.stats.sessions_closed += 1;
        for _ in 0..self.cfg.client_outstanding_max {
            let think = self.sched.rng.next_u64() % 300;
            self.schedule(think, Event::ClientStart { client: c });
        }
    }

    /// Starts `op` as client `c`'s next command.
    pub(super) fn begin_op(&mut self, c: usize, op: KvOp) {
        self.sched.stamp += 1;
        let client = &mut self.workload.clients[c];
        let seq = client.next_seq;
        client.next_seq += 1;
        let bytes = encode_op(client.id.0, seq, &op);
        self.history.push(HistoryOp {
            client: client.id.0,
            op,
            invoke: self.sched.stamp,
            response: None,
            witness: None,
        });
        self.workload.history_seq.push(seq);
        client.pending.push(Pending {
            seq,
            bytes,
            history: self.history.len() - 1,
            target: client.guess,
            attempt: client.generation << 16,
        });
        self.send_attempt(c, seq);
    }

    /// Sends (again) client `c`'s command `seq` to the replica it believes leads.
    pub(super) fn send_attempt(&mut self, c: usize, seq: u64) {
        let client = &mut self.workload.clients[c];
        let guess = client.guess;
        // Every answer below the oldest command in flight was received
        // (before any was, the first seq, as `Client` sends).
        let ack_below = if client.session_used {
            client.pending.first().map_or(seq, |p| p.seq)
        } else {
            crate::state_machine::FIRST_SEQ
        };
        let p = client
            .pending
            .iter_mut()
            .find(|p| p.seq == seq)
            .expect("attempt without an operation");
        p.attempt += 1;
        p.target = guess;
        let (op, attempt, id) = (p.bytes.clone(), p.attempt, client.id);
        self.schedule(
            CLIENT_TIMEOUT_US,
            Event::ClientTimeout {
                client: c,
                seq,
                attempt,
            },
        );
        let packet = ClientPacket {
            client: c,
            node: guess,
            request: true,
        };
        if self.drop_client_packet(packet) {
            return;
        }
        let copies = if self.net.faults_on && self.chance(self.cfg.faults.client_dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.between((20, 200));
            let op = op.clone();
            self.schedule(
                d,
                Event::Request {
                    client: c,
                    id,
                    node: guess,
                    seq,
                    ack_below,
                    op,
                },
            );
        }
    }

    pub(super) fn drop_client_packet(&mut self, packet: ClientPacket) -> bool {
        if let Some(f) = self.workload.filter.as_mut()
            && f(packet)
        {
            return true;
        }
        self.net.faults_on && self.chance(self.cfg.faults.client_drop_ppm)
    }

    /// A replica produced `reply`; only the replica the client's current
    /// attempt went to answers it (it holds the connection).
    pub(super) fn route_reply(&mut self, node: usize, reply: ClientReply) {
        let Some(c) = ((reply.client.0 & 0xffff_ffff) as usize).checked_sub(1) else {
            return;
        };
        let Some(client) = self.workload.clients.get(c) else {
            return;
        };
        if client.id != reply.client {
            // For a session the client closed: nobody listens.
            if reply.result == Err(ProposeError::SessionExpired) {
                self.stats.closed_session_refusals += 1;
            }
            return;
        }
        let for_us = client
            .pending
            .iter()
            .any(|p| p.seq == reply.seq && p.target == node);
        if !for_us
            || self.drop_client_packet(ClientPacket {
                client: c,
                node,
                request: false,
            })
        {
            return;
        }
        let d = self.between((20, 200));
        self.schedule(
            d,
            Event::Response {
                client: c,
                node,
                reply,
            },
        );
    }

    pub(super) fn client_response(&mut self, c: usize, node: usize, reply: ClientReply) {
        let n = self.nodes.len();
        let client = &mut self.workload.clients[c];
        if client.id != reply.client {
            // For a session closed since it was sent.
            return;
        }
        let Some(p) = client.pending.iter().find(|p| p.seq == reply.seq) else {
            return;
        };
        if p.target != node {
            return;
        }
        let (seq, attempt, h) = (p.seq, p.attempt, p.history);
        match reply.result {
            Ok(_) if seq == SESSION_CLOSE_SEQ => self.finish_close(c),
            Ok(bytes) => {
                let Ok(result) = KvResult::decode(&bytes) else {
                    let v = violation(
                        ViolationKind::Protocol,
                        format!("undecodable result {bytes:?}"),
                    );
                    self.set_violation(v);
                    return;
                };
                self.sched.stamp += 1;
                self.history[h].response = Some((self.sched.stamp, result));
                self.finish_op(c, seq, true);
            }
            Err(ProposeError::NotLeader { hint }) => {
                // No hint: probably an election; wait a little longer.
                let (guess, wait) = match hint {
                    Some(id) if (id.0 as usize) >= 1 && (id.0 as usize) <= n => {
                        (id.0 as usize - 1, 300)
                    }
                    _ => ((client.guess + 1) % n, 1_000),
                };
                client.guess = guess;
                let retry = Event::ClientRetry {
                    client: c,
                    seq,
                    attempt,
                };
                self.schedule(wait, retry);
            }
            Err(ProposeError::Busy) => {
                let retry = Event::ClientRetry {
                    client: c,
                    seq,
                    attempt,
                };
                self.schedule(2_000, retry);
            }
            Err(ProposeError::SessionExpired) => self.finish_op(c, seq, false),
            Err(ProposeError::Invalid(why)) => {
                let v = violation(
                    ViolationKind::Protocol,
                    format!("valid request refused: {why}"),
                );
                self.set_violation(v);
            }
        }
    }

    pub(super) fn finish_op(&mut self, c: usize, seq: u64, known: bool) {
        let client = &mut self.workload.clients[c];
        client.pending.retain(|p| p.seq != seq);
        if known {
            client.session_used = true;
            self.stats.ops_completed += 1;
        } else {
            client.unknown = true;
            self.stats.ops_unknown += 1;
        }
        if client.remaining > 0 {
            let think = self.sched.rng.next_u64() % 300;
            self.schedule(think, Event::ClientStart { client: c });
        }
    }

    /// Starts `op` as client `c`'s next command now (scripted scenarios).
    pub fn submit(&mut self, c: usize, op: KvOp) {
        self.begin_op(c, op);
    }

    /// Client `c` ends its session now (it must have nothing in flight);
    /// once answered, it goes on under a new id (scripted scenarios).
    pub fn close_session(&mut self, c: usize) {
        assert!(
            self.workload.clients[c].pending.is_empty(),
            "a close with commands in flight"
        );
        self.begin_close(c);
    }

    /// Client `c`'s current id (a new one after each closed session).
    pub fn client_id(&self, c: usize) -> ClientId {
        self.workload.clients[c].id
    }

    /// Whether client `c` has no operation in flight.
    pub fn client_idle(&self, c: usize) -> bool {
        self.workload.clients[c].pending.is_empty()
    }

    /// Points client `c`'s next attempt at node `i`.
    pub fn aim_client(&mut self, c: usize, i: usize) {
        self.workload.clients[c].guess = i;
    }

    /// Whether every client finished its owed operations.
    pub fn clients_done(&self) -> bool {
        self.workload
            .clients
            .iter()
            .all(|c| c.remaining == 0 && c.pending.is_empty())
    }
}
