//! The wire format: length-prefixed frames and the codec of every message.
//!
//! A frame is a 24-byte header and a body:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `PXW1` |
//! | 4..8 | body length (bounded by the receiver's `frame_bytes_max`) |
//! | 8..16 | cluster id |
//! | 16..18 | protocol version |
//! | 18..20 | frame kind |
//! | 20..24 | CRC32C over bytes 4..20 and the body |
//!
//! Bodies are little-endian fixed fields; a value's payload is the tail of
//! the body, so a received `Accept` keeps a slice of the frame's buffer
//! (no copy) and an encoded one sends the batch's own `Bytes` (no copy).
//! Every decoder checks every length against what is left and returns a
//! [`WireError`]; arbitrary bytes never panic (property-tested).

mod client;
mod crc;
mod peer;

pub use client::*;
pub use peer::*;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::core::codec::decode_value;
use crate::core::{Ballot, ClusterId, ReplicaId, Slot, Value};

pub const MAGIC: u32 = u32::from_le_bytes(*b"PXW1");
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 24;

/// Frame kinds.
pub mod kind {
    pub const HELLO: u16 = 1;
    pub const HELLO_ACK: u16 = 2;
    pub const REFUSED: u16 = 3;
    pub const PREPARE: u16 = 10;
    pub const PROMISE: u16 = 11;
    pub const ACCEPT: u16 = 12;
    pub const ACCEPTED: u16 = 13;
    pub const COMMIT: u16 = 14;
    pub const HEARTBEAT: u16 = 15;
    pub const HEARTBEAT_REPLY: u16 = 16;
    pub const NACK: u16 = 17;
    pub const CATCHUP_REQUEST: u16 = 18;
    pub const CHECKPOINT_NEEDED: u16 = 19;
    /// On a peer connection of its own: send me your newest checkpoint at
    /// or beyond a slot ([`super::CheckpointFetch`]).
    pub const CHECKPOINT_FETCH: u16 = 20;
    /// One piece of a checkpoint file ([`super::CheckpointChunk`]); an
    /// empty one with `total == 0` says there is none to give.
    pub const CHECKPOINT_CHUNK: u16 = 21;
    pub const CLIENT_REQUEST: u16 = 30;
    pub const CLIENT_REPLY: u16 = 31;
    pub const FAST_READ: u16 = 32;
    pub const FAST_READ_REPLY: u16 = 33;
    /// A status request (from a client connection; empty body).
    pub const STATUS_REQUEST: u16 = 34;
    /// The replica's status as JSON (`runtime::StatusReport`).
    pub const STATUS_REPLY: u16 = 35;
    /// An operator asks for a configuration change (from a client
    /// connection; JSON `runtime::ConfigChangeRequest`).
    pub const CONFIG_CHANGE: u16 = 36;
    /// Its outcome (JSON `runtime::ConfigChangeReply`).
    pub const CONFIG_CHANGE_REPLY: u16 = 37;
}

/// Why bytes are not a valid frame or message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {0:#010x}: not this protocol")]
    Magic(u32),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame from cluster {got}, this is cluster {expected}")]
    WrongCluster { got: u64, expected: u64 },
    #[error("protocol version {got}, this build speaks {expected}")]
    WrongVersion { got: u16, expected: u16 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("{0} truncated")]
    Truncated(&'static str),
    #[error("{0} has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("{0} holds an invalid value")]
    BadValue(&'static str),
    #[error("{0}: {1}")]
    Invalid(&'static str, &'static str),
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub cluster: ClusterId,
    pub version: u16,
    pub kind: u16,
    pub crc: u32,
}

/// Parses the header at the front of `buf` (which holds at least
/// `HEADER_BYTES`), checking the magic and the length bound.
pub fn parse_header(buf: &[u8], frame_bytes_max: usize) -> Result<Header, WireError> {
    let mut b = &buf[..HEADER_BYTES];
    let magic = b.get_u32_le();
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let len = b.get_u32_le() as usize;
    if len > frame_bytes_max {
        return Err(WireError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    Ok(Header {
        len,
        cluster: ClusterId(b.get_u64_le()),
        version: b.get_u16_le(),
        kind: b.get_u16_le(),
        crc: b.get_u32_le(),
    })
}

/// Checks a received frame's checksum, cluster and version.
pub fn check_frame(
    raw_header: &[u8],
    h: &Header,
    body: &[u8],
    cluster: ClusterId,
) -> Result<(), WireError> {
    let crc = crc::crc32c_append(crc::crc32c(&raw_header[4..20]), body);
    if crc != h.crc {
        return Err(WireError::Checksum);
    }
    if h.cluster != cluster {
        return Err(WireError::WrongCluster {
            got: h.cluster.0,
            expected: cluster.0,
        });
    }
    if h.version != PROTOCOL_VERSION {
        return Err(WireError::WrongVersion {
            got: h.version,
            expected: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// An encoded frame: the header and fixed fields, then an optional payload
/// sent as is (a batch's own buffer).
#[derive(Clone, Debug)]
pub struct Frame {
    pub head: Bytes,
    pub payload: Bytes,
    /// Lab stages that end when this frame is written (not sent); one per
    /// frame (inline: no allocation per marked frame), or one per reply or
    /// request when `head` holds several coalesced ones.
    pub marks: Marks,
}

/// The marks of one frame.
pub type Marks = smallvec::SmallVec<[crate::instrumentation::Mark; 1]>;

impl Frame {
    /// The same frame, recording `mark` when its write completes.
    pub fn marked(mut self, mark: crate::instrumentation::Mark) -> Frame {
        self.marks.push(mark);
        self
    }

    /// Frames already encoded back to back (see [`encode_client_reply_into`]
    /// and [`encode_client_request_into`]) sent as one, with the stages
    /// that end when they are written.
    pub fn encoded(bytes: Bytes, marks: Marks) -> Frame {
        Frame {
            head: bytes,
            payload: Bytes::new(),
            marks,
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame in one buffer (for tests and small writes).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(&self.head);
        b.put_slice(&self.payload);
        b.freeze()
    }
}

/// Builds a frame: `body` writes the fixed fields; `payload` follows them.
fn frame(cluster: ClusterId, kind: u16, payload: Bytes, body: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut b = BytesMut::with_capacity(64);
    put_head(&mut b, cluster, kind, &payload, body);
    Frame {
        head: b.freeze(),
        payload,
        marks: Marks::new(),
    }
}

/// Appends a frame's header and fixed fields to `b` (the checksum covers
/// `payload`, which the caller sends after them).
fn put_head(
    b: &mut BytesMut,
    cluster: ClusterId,
    kind: u16,
    payload: &[u8],
    body: impl FnOnce(&mut BytesMut),
) {
    let at = b.len();
    // The header in one copy (length and checksum filled in below).
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..16].copy_from_slice(&cluster.0.to_le_bytes());
    h[16..18].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h[18..20].copy_from_slice(&kind.to_le_bytes());
    put_fixed(b, h);
    body(b);
    let f = &mut b[at..];
    let len = f.len() - HEADER_BYTES + payload.len();
    f[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc::crc32c_append(
        crc::crc32c_append(crc::crc32c(&f[4..20]), &f[HEADER_BYTES..]),
        payload,
    );
    f[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `bytes`, whose size is known at compile time, inlined: bytes'
/// `put_slice` (which every `put_u64_le` goes through) is an out-of-line
/// call and a `memcpy` of unknown length, ~37 instructions a call in the
/// gate's runtime path, for what is here one or two stores.
#[inline(always)]
pub(crate) fn put_fixed<const N: usize>(b: &mut BytesMut, bytes: [u8; N]) {
    b.reserve(N);
    let len = b.len();
    for (d, s) in b.spare_capacity_mut()[..N].iter_mut().zip(bytes) {
        d.write(s);
    }
    // SAFETY: the N bytes past `len` are initialized: `reserve` made room
    // for them and the loop just wrote each.
    unsafe { b.set_len(len + N) };
}

/// Makes room for `need` more bytes in `out`, `chunk` at a time at least:
/// a buffer that collects many frames grows per chunk, not per frame.
#[inline]
pub(crate) fn make_room(out: &mut BytesMut, need: usize, chunk: usize) {
    if out.capacity() - out.len() < need {
        out.reserve(chunk.max(need));
    }
}

fn put_ballot(b: &mut BytesMut, x: Ballot) {
    b.put_u64_le(x.round);
    b.put_u32_le(x.replica.0);
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s.as_bytes());
}

/// A cursor over a received body.
struct Body {
    b: Bytes,
    what: &'static str,
}

impl Body {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.b.remaining() < n {
            Err(WireError::Truncated(self.what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.b.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.b.get_u64_le())
    }
    fn ballot(&mut self) -> Result<Ballot, WireError> {
        Ok(Ballot::new(self.u64()?, ReplicaId(self.u32()?)))
    }
    fn slot(&mut self) -> Result<Slot, WireError> {
        Ok(Slot(self.u64()?))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Invalid(self.what, "not UTF-8"))
    }
    fn value(&mut self, kind: u8, len: usize) -> Result<Value, WireError> {
        let payload = self.bytes(len)?;
        decode_value(kind, payload).ok_or(WireError::BadValue(self.what))
    }
    fn rest(&mut self) -> Bytes {
        self.b.split_to(self.b.remaining())
    }
    fn end(self) -> Result<(), WireError> {
        if self.b.has_remaining() {
            Err(WireError::Trailing(self.what, self.b.remaining()))
        } else {
            Ok(())
        }
    }
}

/// Splits complete frames off the front of a receive buffer.
#[derive(Debug)]
pub struct FrameReader {
    pub cluster: ClusterId,
    pub frame_bytes_max: usize,
}

impl FrameReader {
    /// The next complete frame in `buf` as (kind, body), `Ok(None)` if more
    /// bytes are needed, or the reason the stream is bad (close it).
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<(u16, Bytes)>, WireError> {
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let h = parse_header(buf, self.frame_bytes_max)?;
        if buf.len() < HEADER_BYTES + h.len {
            buf.reserve(HEADER_BYTES + h.len - buf.len());
            return Ok(None);
        }
        let raw = buf.split_to(HEADER_BYTES + h.len).freeze();
        let body = raw.slice(HEADER_BYTES..);
        check_frame(&raw[..HEADER_BYTES], &h, &body, self.cluster)?;
        Ok(Some((h.kind, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::*;
    use proptest::prelude::*;

    const C: ClusterId = ClusterId(42);

    fn batch(tag: u8) -> Value {
        let mut b = BatchBuilder::with_capacity(16);
        b.push(ClientId(3), 4, 4, &[tag; 10]);
        Value::Batch(b.finish())
    }

    fn read_one(f: &Frame) -> (u16, Bytes) {
        let mut buf = BytesMut::from(&f.to_bytes()[..]);
        let r = FrameReader {
            cluster: C,
            frame_bytes_max: 1 << 20,
        };
        let got = r.next(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        got
    }

    fn round_trip(m: Message) {
        let (k, body) = read_one(&encode_message(C, &m));
        assert_eq!(decode_message(k, body).unwrap(), m);
    }

    fn b(r: u64, p: u32) -> Ballot {
        Ballot::new(r, ReplicaId(p))
    }

    #[test]
    fn every_peer_message_round_trips() {
        round_trip(Message::Prepare(Prepare {
            ballot: b(3, 1),
            from: Slot(9),
        }));
        round_trip(Message::Promise(Promise {
            ballot: b(3, 1),
            entries: vec![
                PromiseEntry {
                    slot: Slot(1),
                    ballot: b(2, 2),
                    value: batch(1),
                },
                PromiseEntry {
                    slot: Slot(2),
                    ballot: b(2, 2),
                    value: Value::Noop,
                },
            ],
            commit: Slot(1),
            more: Some(Slot(3)),
        }));
        round_trip(Message::Accept(Accept {
            ballot: b(3, 1),
            slot: Slot(5),
            value: batch(2),
            commit: Slot(4),
        }));
        round_trip(Message::Accept(Accept {
            ballot: b(3, 1),
            slot: Slot(5),
            value: Value::Noop,
            commit: Slot(4),
        }));
        round_trip(Message::Accepted(Accepted {
            ballot: b(3, 1),
            first: Slot(5),
            end: Slot(9),
        }));
        round_trip(Message::Commit(Commit {
            ballot: b(3, 1),
            commit: Slot(7),
        }));
        round_trip(Message::Heartbeat(Heartbeat {
            ballot: b(3, 1),
            commit: Slot(7),
        }));
        round_trip(Message::HeartbeatReply(HeartbeatReply {
            ballot: b(3, 1),
            commit: Slot(7),
        }));
        for reason in [
            NackReason::Superseded,
            NackReason::Lagging,
            NackReason::Unprovable,
            NackReason::LeaderAlive,
        ] {
            round_trip(Message::Nack(Nack {
                ballot: b(3, 1),
                reason,
                promised: b(4, 2),
                commit: Slot(1),
            }));
        }
        round_trip(Message::CatchupRequest(CatchupRequest {
            ballot: b(3, 1),
            from: Slot(1),
            to: Slot(9),
        }));
        round_trip(Message::CheckpointNeeded(CheckpointNeeded {
            ballot: b(3, 1),
            log_start: Slot(4096),
        }));
    }

    #[test]
    fn checkpoint_frames_round_trip_and_a_chunk_beyond_its_file_is_refused() {
        let f = CheckpointFetch { at_least: Slot(77) };
        let (k, body) = read_one(&encode_checkpoint_fetch(C, &f));
        assert_eq!(k, kind::CHECKPOINT_FETCH);
        assert_eq!(decode_checkpoint_fetch(body).unwrap(), f);
        let c = CheckpointChunk {
            slot: Slot(80),
            total: 10,
            offset: 4,
            data: Bytes::from_static(b"abcdef"),
        };
        let (k, body) = read_one(&encode_checkpoint_chunk(C, &c));
        assert_eq!(k, kind::CHECKPOINT_CHUNK);
        assert_eq!(decode_checkpoint_chunk(body).unwrap(), c);
        let beyond = CheckpointChunk { offset: 5, ..c };
        let (_, body) = read_one(&encode_checkpoint_chunk(C, &beyond));
        assert!(decode_checkpoint_chunk(body).is_err());
    }

    #[test]
    fn an_accept_keeps_the_batch_buffer_without_copying() {
        let v = batch(7);
        let f = encode_message(
            C,
            &Message::Accept(Accept {
                ballot: b(1, 1),
                slot: Slot(0),
                value: v.clone(),
                commit: Slot(0),
            }),
        );
        let Value::Batch(sent) = &v else {
            unreachable!()
        };
        assert_eq!(
            f.payload.as_ptr(),
            sent.bytes().as_ptr(),
            "sent from the batch's own buffer"
        );
        let raw = f.to_bytes();
        let mut buf = BytesMut::from(&raw[..]);
        let base = buf.as_ptr() as usize;
        let r = FrameReader {
            cluster: C,
            frame_bytes_max: 1 << 20,
        };
        let (k, body) = r.next(&mut buf).unwrap().unwrap();
        let Message::Accept(a) = decode_message(k, body).unwrap() else {
            unreachable!()
        };
        let Value::Batch(got) = &a.value else {
            unreachable!()
        };
        let p = got.bytes().as_ptr() as usize;
        assert!(
            p >= base && p < base + raw.len(),
            "decoded in place, from the receive buffer"
        );
    }

    #[test]
    fn answers_appended_to_one_buffer_are_the_frames_encoded_alone() {
        let mut out = BytesMut::new();
        let mut alone = BytesMut::new();
        let replies: Vec<ClientReplyFrame> = (0..3u64)
            .map(|i| ClientReplyFrame {
                client: ClientId(9),
                seq: i + 1,
                status: Status::Ok,
                slot: Slot(10 + i),
                hint: None,
                payload: Bytes::from(vec![i as u8; i as usize * 5]),
            })
            .collect();
        let reads: Vec<FastReadReply> = (0..3u64)
            .map(|i| FastReadReply {
                id: i,
                status: Status::Ok,
                applied: Slot(20 + i),
                payload: Bytes::from(vec![7u8; i as usize * 3]),
            })
            .collect();
        for (r, fr) in replies.iter().zip(&reads) {
            encode_client_reply_into(&mut out, C, r);
            alone.put_slice(&encode_client_reply(C, r).to_bytes());
            encode_fast_read_reply_into(&mut out, C, fr);
            alone.put_slice(&encode_fast_read_reply(C, fr).to_bytes());
        }
        assert_eq!(out, alone);
        let reader = FrameReader {
            cluster: C,
            frame_bytes_max: 1 << 20,
        };
        for (r, fr) in replies.iter().zip(&reads) {
            let (k, body) = reader.next(&mut out).unwrap().expect("a whole frame");
            assert_eq!(k, kind::CLIENT_REPLY);
            assert_eq!(&decode_client_reply(body).unwrap(), r);
            let (k, body) = reader.next(&mut out).unwrap().expect("a whole frame");
            assert_eq!(k, kind::FAST_READ_REPLY);
            assert_eq!(&decode_fast_read_reply(body).unwrap(), fr);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn client_frames_round_trip() {
        let req = ClientRequest {
            client: ClientId(9),
            seq: 5,
            ack_below: 3,
            op: Bytes::from_static(b"op"),
        };
        let (k, body) = read_one(&encode_client_request(C, &req));
        assert_eq!(k, kind::CLIENT_REQUEST);
        assert_eq!(decode_client_request(body).unwrap(), req);
        // Appended back to back, the same bytes, each frame whole.
        let mut out = BytesMut::new();
        encode_client_request_into(&mut out, C, req.client, req.seq, req.ack_below, &req.op);
        let second = ClientRequest {
            seq: 6,
            ack_below: 4,
            op: Bytes::from(vec![7u8; 300]),
            ..req.clone()
        };
        encode_client_request_into(
            &mut out,
            C,
            second.client,
            second.seq,
            second.ack_below,
            &second.op,
        );
        let mut both = BytesMut::from(&encode_client_request(C, &req).to_bytes()[..]);
        both.extend_from_slice(&encode_client_request(C, &second).to_bytes());
        assert_eq!(&out[..], &both[..]);
        let mut frames = out.clone();
        let reader = FrameReader {
            cluster: C,
            frame_bytes_max: 1 << 20,
        };
        let (_, b1) = reader.next(&mut frames).unwrap().unwrap();
        let (_, b2) = reader.next(&mut frames).unwrap().unwrap();
        assert!(frames.is_empty());
        assert_eq!(decode_client_request(b1).unwrap(), req);
        assert_eq!(decode_client_request(b2).unwrap(), second);
        let rep = ClientReplyFrame {
            client: ClientId(9),
            seq: 5,
            status: Status::NotLeader,
            slot: Slot(3),
            hint: Some(ReplicaId(2)),
            payload: Bytes::from_static(b"pay"),
        };
        let (_, body) = read_one(&encode_client_reply(C, &rep));
        // The fixed fields' layout, byte for byte: client, seq, status,
        // slot, hint (little-endian), then the payload.
        let mut golden = vec![9, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0];
        golden.push(1); // NotLeader
        golden.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        golden.extend_from_slice(b"pay");
        assert_eq!(&body[..], &golden[..]);
        let mut into = BytesMut::new();
        encode_client_reply_into(&mut into, C, &rep);
        assert_eq!(&into[..], &encode_client_reply(C, &rep).to_bytes()[..]);
        assert_eq!(decode_client_reply(body).unwrap(), rep);
        let fr = FastRead {
            id: 1,
            min_applied: Slot(4),
            query: Bytes::from_static(b"q"),
        };
        let (_, body) = read_one(&encode_fast_read(C, &fr));
        assert_eq!(decode_fast_read(body).unwrap(), fr);
        let frr = FastReadReply {
            id: 1,
            status: Status::Stale,
            applied: Slot(2),
            payload: Bytes::new(),
        };
        let (_, body) = read_one(&encode_fast_read_reply(C, &frr));
        assert_eq!(decode_fast_read_reply(body).unwrap(), frr);
        let hello = Hello {
            role: Role::Peer(ReplicaId(3)),
        };
        let (_, body) = read_one(&encode_hello(C, &hello));
        assert_eq!(decode_hello(body).unwrap(), hello);
        let ack = HelloAck {
            replica: ReplicaId(1),
            members: vec![(ReplicaId(1), "127.0.0.1:1".into())],
        };
        let (_, body) = read_one(&encode_hello_ack(C, &ack));
        assert_eq!(decode_hello_ack(body).unwrap(), ack);
        let (_, body) = read_one(&encode_refused(C, "no"));
        assert_eq!(decode_refused(body).unwrap(), "no");
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let f = encode_message(
            C,
            &Message::Commit(Commit {
                ballot: b(1, 1),
                commit: Slot(1),
            }),
        )
        .to_bytes();
        let r = FrameReader {
            cluster: C,
            frame_bytes_max: 1 << 20,
        };
        // A flipped byte in the body.
        let mut bad = f.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            r.next(&mut BytesMut::from(&bad[..])),
            Err(WireError::Checksum)
        );
        // Another cluster.
        let other = FrameReader {
            cluster: ClusterId(7),
            frame_bytes_max: 1 << 20,
        };
        assert!(matches!(
            other.next(&mut BytesMut::from(&f[..])),
            Err(WireError::WrongCluster {
                got: 42,
                expected: 7
            })
        ));
        // An oversized length.
        let small = FrameReader {
            cluster: C,
            frame_bytes_max: 8,
        };
        assert!(matches!(
            small.next(&mut BytesMut::from(&f[..])),
            Err(WireError::TooLarge { .. })
        ));
        // Garbage.
        assert!(matches!(
            r.next(&mut BytesMut::from(
                &b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n"[..]
            )),
            Err(WireError::Magic(_))
        ));
        // A truncated frame waits for more bytes.
        assert_eq!(r.next(&mut BytesMut::from(&f[..f.len() - 1])), Ok(None));
        // Another version.
        let mut v2 = f.to_vec();
        v2[16] = 9;
        let crc = crc::crc32c_append(crc::crc32c(&v2[4..20]), &v2[HEADER_BYTES..]);
        v2[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            r.next(&mut BytesMut::from(&v2[..])),
            Err(WireError::WrongVersion { got: 9, .. })
        ));
    }

    proptest! {
        /// No byte sequence makes a decoder panic or allocate beyond its input.
        #[test]
        fn decoders_never_panic(k in 0u16..40, body in prop::collection::vec(any::<u8>(), 0..300)) {
            let body = Bytes::from(body);
            let _ = decode_message(k, body.clone());
            let _ = decode_hello(body.clone());
            let _ = decode_hello_ack(body.clone());
            let _ = decode_refused(body.clone());
            let _ = decode_client_request(body.clone());
            let _ = decode_client_reply(body.clone());
            let _ = decode_fast_read(body.clone());
            let _ = decode_fast_read_reply(body);
        }

        #[test]
        fn frame_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let r = FrameReader { cluster: C, frame_bytes_max: 1 << 16 };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = r.next(&mut buf) {}
        }
    }
}
