//! What can happen in a simulated cluster, and the queue's order.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::core::{ClientId, ClientReply, Envelope, PersistToken, Slot};
use crate::state_machine::FrozenExecutor;

use super::*;

#[derive(Debug)]
pub(super) enum Event {
    Tick {
        node: usize,
        incarnation: u32,
    },
    Deliver {
        env: Envelope,
    },
    Request {
        client: usize,
        /// The client's id when it sent this (a client that closed its
        /// session has a new one).
        id: ClientId,
        node: usize,
        seq: u64,
        ack_below: u64,
        op: Bytes,
    },
    Response {
        client: usize,
        node: usize,
        reply: ClientReply,
    },
    SyncDone {
        node: usize,
        incarnation: u32,
        token: PersistToken,
    },
    ClientStart {
        client: usize,
    },
    ClientRetry {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    Crash {
        node: usize,
        scheduled: bool,
    },
    Restart {
        node: usize,
    },
    PartitionStart,
    PartitionEnd {
        id: u64,
    },
    Heal,
    Reconfigure,
    /// The leader relinquishes, or a node's veto on leading flips.
    Leadership,
    /// A checkpoint node `node` took is durable (unless it crashed since).
    CheckpointDone {
        node: usize,
        incarnation: u32,
        slot: Slot,
        frozen: FrozenExecutor,
        chain: u64,
    },
    /// Node `node` asks node `from` for a checkpoint at or beyond `at_least`.
    CheckpointFetch {
        node: usize,
        incarnation: u32,
        from: usize,
        at_least: Slot,
    },
    /// The checkpoint node `node` fetched has arrived.
    CheckpointFetched {
        node: usize,
        incarnation: u32,
        ckpt: SimCheckpoint,
    },
}

impl Event {
    /// Fields that identify the event, folded into the trace hash.
    pub(super) fn identity(&self) -> (u8, u64, u64, u64) {
        match self {
            Event::Tick { node, incarnation } => (0, *node as u64, u64::from(*incarnation), 0),
            Event::Deliver { env } => {
                let m = &env.msg;
                let kind = m.kind().len() as u64 ^ (m.kind().as_bytes()[0] as u64) << 8;
                (
                    1,
                    u64::from(env.from.0) << 32 | u64::from(env.to.0),
                    kind,
                    m.ballot().round,
                )
            }
            Event::Request {
                client, node, seq, ..
            } => (2, *client as u64, *node as u64, *seq),
            Event::Response {
                client,
                node,
                reply,
            } => (3, *client as u64, *node as u64, reply.seq),
            Event::SyncDone { node, token, .. } => (4, *node as u64, token.0, 0),
            Event::ClientStart { client } => (5, *client as u64, 0, 0),
            Event::ClientRetry {
                client,
                seq,
                attempt,
            } => (6, *client as u64, *seq, u64::from(*attempt)),
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => (7, *client as u64, *seq, u64::from(*attempt)),
            Event::Crash { node, .. } => (8, *node as u64, 0, 0),
            Event::Restart { node } => (9, *node as u64, 0, 0),
            Event::PartitionStart => (10, 0, 0, 0),
            Event::PartitionEnd { id } => (11, *id, 0, 0),
            Event::Heal => (12, 0, 0, 0),
            Event::Reconfigure => (13, 0, 0, 0),
            Event::Leadership => (17, 0, 0, 0),
            Event::CheckpointDone { node, slot, .. } => (14, *node as u64, slot.0, 0),
            Event::CheckpointFetch { node, from, .. } => (15, *node as u64, *from as u64, 0),
            Event::CheckpointFetched { node, ckpt, .. } => (16, *node as u64, ckpt.slot.0, 0),
        }
    }
}

pub(super) struct Scheduled {
    pub(super) time: u64,
    pub(super) seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops the earliest.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}
