//! The codec of the protocol's messages between replicas.

use bytes::{Buf, BufMut, Bytes};

use crate::core::codec::{decode_value, encode_value};
use crate::core::{
    Accept, Accepted, CatchupRequest, CheckpointNeeded, ClusterId, Commit, Heartbeat,
    HeartbeatReply, Message, Nack, NackReason, Prepare, Promise, PromiseEntry, Slot, Value,
};

use super::*;

/// Encodes a peer message.
pub fn encode_message(cluster: ClusterId, m: &Message) -> Frame {
    match m {
        Message::Prepare(p) => frame(cluster, kind::PREPARE, Bytes::new(), |b| {
            put_ballot(b, p.ballot);
            b.put_u64_le(p.from.0);
        }),
        Message::Promise(p) => frame(cluster, kind::PROMISE, Bytes::new(), |b| {
            put_ballot(b, p.ballot);
            b.put_u64_le(p.commit.0);
            b.put_u64_le(p.more.map_or(u64::MAX, |s| s.0));
            b.put_u32_le(p.entries.len() as u32);
            for e in &p.entries {
                b.put_u64_le(e.slot.0);
                put_ballot(b, e.ballot);
                let (k, payload) = encode_value(&e.value);
                b.put_u8(k);
                b.put_u32_le(payload.len() as u32);
                b.put_slice(payload);
            }
        }),
        Message::Accept(a) => {
            let payload = match &a.value {
                Value::Noop => Bytes::new(),
                Value::Batch(batch) => batch.bytes().clone(),
                Value::Config(m) => m.bytes().clone(),
            };
            let (k, _) = encode_value(&a.value);
            frame(cluster, kind::ACCEPT, payload, |b| {
                put_ballot(b, a.ballot);
                b.put_u64_le(a.slot.0);
                b.put_u64_le(a.commit.0);
                b.put_u8(k);
            })
        }
        Message::Accepted(a) => frame(cluster, kind::ACCEPTED, Bytes::new(), |b| {
            put_ballot(b, a.ballot);
            b.put_u64_le(a.first.0);
            b.put_u64_le(a.end.0);
        }),
        Message::Commit(c) => frame(cluster, kind::COMMIT, Bytes::new(), |b| {
            put_ballot(b, c.ballot);
            b.put_u64_le(c.commit.0);
        }),
        Message::Heartbeat(c) => frame(cluster, kind::HEARTBEAT, Bytes::new(), |b| {
            put_ballot(b, c.ballot);
            b.put_u64_le(c.commit.0);
        }),
        Message::HeartbeatReply(c) => frame(cluster, kind::HEARTBEAT_REPLY, Bytes::new(), |b| {
            put_ballot(b, c.ballot);
            b.put_u64_le(c.commit.0);
        }),
        Message::Nack(n) => frame(cluster, kind::NACK, Bytes::new(), |b| {
            put_ballot(b, n.ballot);
            b.put_u8(match n.reason {
                NackReason::Superseded => 0,
                NackReason::Lagging => 1,
                NackReason::Unprovable => 2,
                NackReason::LeaderAlive => 3,
            });
            put_ballot(b, n.promised);
            b.put_u64_le(n.commit.0);
        }),
        Message::CatchupRequest(c) => frame(cluster, kind::CATCHUP_REQUEST, Bytes::new(), |b| {
            put_ballot(b, c.ballot);
            b.put_u64_le(c.from.0);
            b.put_u64_le(c.to.0);
        }),
        Message::CheckpointNeeded(c) => {
            frame(cluster, kind::CHECKPOINT_NEEDED, Bytes::new(), |b| {
                put_ballot(b, c.ballot);
                b.put_u64_le(c.log_start.0);
            })
        }
    }
}

/// Decodes a peer message body of frame kind `k`.
pub fn decode_message(k: u16, body: Bytes) -> Result<Message, WireError> {
    let what = "peer message";
    let mut r = Body { b: body, what };
    let m = match k {
        kind::PREPARE => Message::Prepare(Prepare {
            ballot: r.ballot()?,
            from: r.slot()?,
        }),
        kind::PROMISE => {
            let ballot = r.ballot()?;
            let commit = r.slot()?;
            let more = match r.u64()? {
                u64::MAX => None,
                s => Some(Slot(s)),
            };
            let n = r.u32()? as usize;
            // Each entry takes at least 25 bytes: bound the allocation.
            if n > r.b.remaining() / 25 {
                return Err(WireError::Truncated("promise entries"));
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let slot = r.slot()?;
                let ballot = r.ballot()?;
                let vk = r.u8()?;
                let len = r.u32()? as usize;
                let value = r.value(vk, len)?;
                entries.push(PromiseEntry {
                    slot,
                    ballot,
                    value,
                });
            }
            Message::Promise(Promise {
                ballot,
                entries,
                commit,
                more,
            })
        }
        kind::ACCEPT => {
            let ballot = r.ballot()?;
            let slot = r.slot()?;
            let commit = r.slot()?;
            let vk = r.u8()?;
            let payload = r.rest();
            let value = decode_value(vk, payload).ok_or(WireError::BadValue("accept"))?;
            Message::Accept(Accept {
                ballot,
                slot,
                value,
                commit,
            })
        }
        kind::ACCEPTED => {
            let ballot = r.ballot()?;
            let (first, end) = (r.slot()?, r.slot()?);
            if first > end {
                return Err(WireError::Invalid(
                    "accepted",
                    "range ends before it starts",
                ));
            }
            Message::Accepted(Accepted { ballot, first, end })
        }
        kind::COMMIT => Message::Commit(Commit {
            ballot: r.ballot()?,
            commit: r.slot()?,
        }),
        kind::HEARTBEAT => Message::Heartbeat(Heartbeat {
            ballot: r.ballot()?,
            commit: r.slot()?,
        }),
        kind::HEARTBEAT_REPLY => Message::HeartbeatReply(HeartbeatReply {
            ballot: r.ballot()?,
            commit: r.slot()?,
        }),
        kind::NACK => {
            let ballot = r.ballot()?;
            let reason = match r.u8()? {
                0 => NackReason::Superseded,
                1 => NackReason::Lagging,
                2 => NackReason::Unprovable,
                3 => NackReason::LeaderAlive,
                _ => return Err(WireError::Invalid("nack", "unknown reason")),
            };
            Message::Nack(Nack {
                ballot,
                reason,
                promised: r.ballot()?,
                commit: r.slot()?,
            })
        }
        kind::CATCHUP_REQUEST => Message::CatchupRequest(CatchupRequest {
            ballot: r.ballot()?,
            from: r.slot()?,
            to: r.slot()?,
        }),
        kind::CHECKPOINT_NEEDED => Message::CheckpointNeeded(CheckpointNeeded {
            ballot: r.ballot()?,
            log_start: r.slot()?,
        }),
        other => return Err(WireError::UnknownKind(other)),
    };
    r.end()?;
    Ok(m)
}
