//! The frames a client (and an operator's tool) exchanges with a replica:
//! the handshake, commands and replies, fast reads, status, configuration
//! changes, and checkpoint transfer between replicas.

use bytes::{BufMut, Bytes, BytesMut};

use crate::core::{ClientId, ClusterId, ReplicaId, Slot};

use super::*;

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Peer(ReplicaId),
    Client,
}

/// The first frame on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: Role,
}

/// The server's answer to a Hello: who it is and how to reach every member
/// (so a client connected to any replica can follow leader hints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    pub replica: ReplicaId,
    pub members: Vec<(ReplicaId, String)>,
}

pub fn encode_hello(cluster: ClusterId, h: &Hello) -> Frame {
    frame(cluster, kind::HELLO, Bytes::new(), |b| match h.role {
        Role::Peer(id) => {
            b.put_u8(1);
            b.put_u32_le(id.0);
        }
        Role::Client => {
            b.put_u8(2);
            b.put_u32_le(0);
        }
    })
}

pub fn decode_hello(body: Bytes) -> Result<Hello, WireError> {
    let mut r = Body {
        b: body,
        what: "hello",
    };
    let role = match (r.u8()?, r.u32()?) {
        (1, id) => Role::Peer(ReplicaId(id)),
        (2, _) => Role::Client,
        _ => return Err(WireError::Invalid("hello", "unknown role")),
    };
    r.end()?;
    Ok(Hello { role })
}

pub fn encode_hello_ack(cluster: ClusterId, a: &HelloAck) -> Frame {
    frame(cluster, kind::HELLO_ACK, Bytes::new(), |b| {
        b.put_u32_le(a.replica.0);
        b.put_u32_le(a.members.len() as u32);
        for (id, addr) in &a.members {
            b.put_u32_le(id.0);
            put_str(b, addr);
        }
    })
}

pub fn decode_hello_ack(body: Bytes) -> Result<HelloAck, WireError> {
    let mut r = Body {
        b: body,
        what: "hello ack",
    };
    let replica = ReplicaId(r.u32()?);
    let n = r.u32()? as usize;
    if n > 64 {
        return Err(WireError::Invalid("hello ack", "too many members"));
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push((ReplicaId(r.u32()?), r.str()?));
    }
    r.end()?;
    Ok(HelloAck { replica, members })
}

pub fn encode_refused(cluster: ClusterId, reason: &str) -> Frame {
    frame(cluster, kind::REFUSED, Bytes::new(), |b| put_str(b, reason))
}

pub fn decode_refused(body: Bytes) -> Result<String, WireError> {
    let mut r = Body {
        b: body,
        what: "refusal",
    };
    let s = r.str()?;
    r.end()?;
    Ok(s)
}

/// A client's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub client: ClientId,
    pub seq: u64,
    pub ack_below: u64,
    pub op: Bytes,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Executed (or answered from the session table); `payload` is the result.
    Ok,
    /// Not the leader; `hint` names the leader if known (0: unknown).
    NotLeader,
    Busy,
    /// Malformed; `payload` says why.
    Invalid,
    SessionExpired,
    /// A fast read at a replica that has not applied `min_applied` yet.
    Stale,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotLeader => 1,
            Status::Busy => 2,
            Status::Invalid => 3,
            Status::SessionExpired => 4,
            Status::Stale => 5,
        }
    }

    fn from_code(c: u8) -> Option<Status> {
        Some(match c {
            0 => Status::Ok,
            1 => Status::NotLeader,
            2 => Status::Busy,
            3 => Status::Invalid,
            4 => Status::SessionExpired,
            5 => Status::Stale,
            _ => return None,
        })
    }
}

/// The answer to a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReplyFrame {
    pub client: ClientId,
    pub seq: u64,
    pub status: Status,
    /// The slot the command executed in (for session-consistent fast reads).
    pub slot: Slot,
    /// With `NotLeader`: the leader if known.
    pub hint: Option<ReplicaId>,
    pub payload: Bytes,
}

/// A read answered from a replica's local state if it has applied every
/// slot below `min_applied` (RSL's fast read: session consistency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastRead {
    pub id: u64,
    pub min_applied: Slot,
    pub query: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastReadReply {
    pub id: u64,
    pub status: Status,
    /// The replica's apply point when it answered.
    pub applied: Slot,
    pub payload: Bytes,
}

pub fn encode_client_request(cluster: ClusterId, r: &ClientRequest) -> Frame {
    frame(cluster, kind::CLIENT_REQUEST, r.op.clone(), |b| {
        put_client_request_fields(b, r.client, r.seq, r.ack_below)
    })
}

/// Appends a whole request frame to `out` (a client sends the requests of
/// one pass in one buffer, not two allocations and a queued frame each);
/// the same bytes as [`encode_client_request`].
pub fn encode_client_request_into(
    out: &mut BytesMut,
    cluster: ClusterId,
    client: ClientId,
    seq: u64,
    ack_below: u64,
    op: &[u8],
) {
    put_frame(out, cluster, kind::CLIENT_REQUEST, op, |b| {
        put_client_request_fields(b, client, seq, ack_below)
    });
}

fn put_client_request_fields(b: &mut BytesMut, client: ClientId, seq: u64, ack_below: u64) {
    let mut f = [0u8; 24];
    f[0..8].copy_from_slice(&client.0.to_le_bytes());
    f[8..16].copy_from_slice(&seq.to_le_bytes());
    f[16..24].copy_from_slice(&ack_below.to_le_bytes());
    put_fixed(b, f);
}

pub fn decode_client_request(body: Bytes) -> Result<ClientRequest, WireError> {
    let mut r = Body {
        b: body,
        what: "client request",
    };
    let client = ClientId(r.u64()?);
    let seq = r.u64()?;
    let ack_below = r.u64()?;
    if ack_below > seq {
        return Err(WireError::Invalid("client request", "ack_below beyond seq"));
    }
    Ok(ClientRequest {
        client,
        seq,
        ack_below,
        op: r.rest(),
    })
}

pub fn encode_client_reply(cluster: ClusterId, r: &ClientReplyFrame) -> Frame {
    frame(cluster, kind::CLIENT_REPLY, r.payload.clone(), |b| {
        put_client_reply_fields(b, r)
    })
}

/// Appends a whole frame to `out`, payload included (a copy: for the
/// small answers a replica sends a connection in one buffer per turn).
fn put_frame(
    out: &mut BytesMut,
    cluster: ClusterId,
    kind: u16,
    payload: &[u8],
    body: impl FnOnce(&mut BytesMut),
) {
    put_head(out, cluster, kind, payload, body);
    out.put_slice(payload);
}

/// Appends the whole reply frame to `out`: a leader answers the replies of
/// one turn to a connection in one buffer, not an allocation and a queued
/// frame each.
pub fn encode_client_reply_into(out: &mut BytesMut, cluster: ClusterId, r: &ClientReplyFrame) {
    put_frame(out, cluster, kind::CLIENT_REPLY, &r.payload, |b| {
        put_client_reply_fields(b, r)
    });
}

fn put_client_reply_fields(b: &mut BytesMut, r: &ClientReplyFrame) {
    let mut f = [0u8; 29];
    f[0..8].copy_from_slice(&r.client.0.to_le_bytes());
    f[8..16].copy_from_slice(&r.seq.to_le_bytes());
    f[16] = r.status.code();
    f[17..25].copy_from_slice(&r.slot.0.to_le_bytes());
    f[25..29].copy_from_slice(&r.hint.map_or(0, |h| h.0).to_le_bytes());
    put_fixed(b, f);
}

pub fn decode_client_reply(body: Bytes) -> Result<ClientReplyFrame, WireError> {
    let mut r = Body {
        b: body,
        what: "client reply",
    };
    let client = ClientId(r.u64()?);
    let seq = r.u64()?;
    let status =
        Status::from_code(r.u8()?).ok_or(WireError::Invalid("client reply", "unknown status"))?;
    let slot = r.slot()?;
    let hint = match r.u32()? {
        0 => None,
        h => Some(ReplicaId(h)),
    };
    Ok(ClientReplyFrame {
        client,
        seq,
        status,
        slot,
        hint,
        payload: r.rest(),
    })
}

/// A status request.
pub fn encode_status_request(cluster: ClusterId) -> Frame {
    frame(cluster, kind::STATUS_REQUEST, Bytes::new(), |_| {})
}

/// A status reply carrying `json`.
pub fn encode_status_reply(cluster: ClusterId, json: Bytes) -> Frame {
    frame(cluster, kind::STATUS_REPLY, json, |_| {})
}

/// A configuration change request carrying `json`.
pub fn encode_config_change(cluster: ClusterId, json: Bytes) -> Frame {
    frame(cluster, kind::CONFIG_CHANGE, json, |_| {})
}

/// A configuration change's outcome carrying `json`.
pub fn encode_config_change_reply(cluster: ClusterId, json: Bytes) -> Frame {
    frame(cluster, kind::CONFIG_CHANGE_REPLY, json, |_| {})
}

/// A replica asks a peer for its newest checkpoint at or beyond `at_least`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointFetch {
    pub at_least: Slot,
}

/// Bytes `[offset, offset + data.len())` of a checkpoint file of `total`
/// bytes holding every slot below `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointChunk {
    pub slot: Slot,
    pub total: u64,
    pub offset: u64,
    pub data: Bytes,
}

pub fn encode_checkpoint_fetch(cluster: ClusterId, f: &CheckpointFetch) -> Frame {
    frame(cluster, kind::CHECKPOINT_FETCH, Bytes::new(), |b| {
        b.put_u64_le(f.at_least.0)
    })
}

pub fn decode_checkpoint_fetch(body: Bytes) -> Result<CheckpointFetch, WireError> {
    let mut r = Body {
        b: body,
        what: "checkpoint fetch",
    };
    let f = CheckpointFetch {
        at_least: r.slot()?,
    };
    r.end()?;
    Ok(f)
}

pub fn encode_checkpoint_chunk(cluster: ClusterId, c: &CheckpointChunk) -> Frame {
    frame(cluster, kind::CHECKPOINT_CHUNK, c.data.clone(), |b| {
        b.put_u64_le(c.slot.0);
        b.put_u64_le(c.total);
        b.put_u64_le(c.offset);
    })
}

pub fn decode_checkpoint_chunk(body: Bytes) -> Result<CheckpointChunk, WireError> {
    let mut r = Body {
        b: body,
        what: "checkpoint chunk",
    };
    let slot = r.slot()?;
    let total = r.u64()?;
    let offset = r.u64()?;
    let data = r.rest();
    if offset
        .checked_add(data.len() as u64)
        .is_none_or(|end| end > total)
    {
        return Err(WireError::Invalid(
            "checkpoint chunk",
            "extends beyond the file",
        ));
    }
    Ok(CheckpointChunk {
        slot,
        total,
        offset,
        data,
    })
}

pub fn encode_fast_read(cluster: ClusterId, r: &FastRead) -> Frame {
    frame(cluster, kind::FAST_READ, r.query.clone(), |b| {
        b.put_u64_le(r.id);
        b.put_u64_le(r.min_applied.0);
    })
}

pub fn decode_fast_read(body: Bytes) -> Result<FastRead, WireError> {
    let mut r = Body {
        b: body,
        what: "fast read",
    };
    Ok(FastRead {
        id: r.u64()?,
        min_applied: r.slot()?,
        query: r.rest(),
    })
}

pub fn encode_fast_read_reply(cluster: ClusterId, r: &FastReadReply) -> Frame {
    frame(cluster, kind::FAST_READ_REPLY, r.payload.clone(), |b| {
        put_fast_read_reply_fields(b, r)
    })
}

/// Appends the whole fast-read reply frame to `out` (see
/// [`encode_client_reply_into`]).
pub fn encode_fast_read_reply_into(out: &mut BytesMut, cluster: ClusterId, r: &FastReadReply) {
    put_frame(out, cluster, kind::FAST_READ_REPLY, &r.payload, |b| {
        put_fast_read_reply_fields(b, r)
    });
}

fn put_fast_read_reply_fields(b: &mut BytesMut, r: &FastReadReply) {
    b.put_u64_le(r.id);
    b.put_u8(r.status.code());
    b.put_u64_le(r.applied.0);
}

pub fn decode_fast_read_reply(body: Bytes) -> Result<FastReadReply, WireError> {
    let mut r = Body {
        b: body,
        what: "fast read reply",
    };
    let id = r.u64()?;
    let status = Status::from_code(r.u8()?)
        .ok_or(WireError::Invalid("fast read reply", "unknown status"))?;
    Ok(FastReadReply {
        id,
        status,
        applied: r.slot()?,
        payload: r.rest(),
    })
}
