//! What a slot holds: a no-op or a batch of client commands.
//!
//! A batch is kept encoded in one `Bytes` from the moment the leader builds
//! it: the same buffer is persisted, sent to every follower and applied,
//! without re-encoding or copying. The leader copies each command once, from
//! the client's request into the batch being built.
//!
//! Encoding (little-endian): `count: u32`, then per command
//! `client: u64, seq: u64, ack_delta: u32, len: u32, op: [u8; len]`.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::types::ClientId;

/// Bytes of the batch header (the command count).
pub const BATCH_HEADER_BYTES: usize = 4;
/// Bytes of each command's header inside a batch.
pub const COMMAND_HEADER_BYTES: usize = 24;

/// A client command as submitted to the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub client: ClientId,
    /// Sequence number within the client session; a retry reuses it.
    pub seq: u64,
    /// The client has received answers for every `seq` below this, so the
    /// replicas may forget those results. Invariant: `ack_below <= seq`.
    pub ack_below: u64,
    /// The operation, opaque to the protocol.
    pub op: Bytes,
}

impl Command {
    /// Bytes this command occupies inside a batch.
    pub fn encoded_len(&self) -> usize {
        COMMAND_HEADER_BYTES + self.op.len()
    }
}

/// One command read out of a batch, borrowing the batch's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandRef<'a> {
    pub client: ClientId,
    pub seq: u64,
    pub ack_below: u64,
    pub op: &'a [u8],
}

/// A validated, encoded batch of commands. Cheap to clone (reference counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
    count: u32,
}

/// Why bytes are not a valid batch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchDecodeError {
    #[error("batch shorter than its header ({0} bytes)")]
    ShortHeader(usize),
    #[error("command {index} truncated at byte {offset} of {len}")]
    Truncated {
        index: u32,
        offset: usize,
        len: usize,
    },
    #[error("command {index} has ack_below beyond its seq")]
    AckBeyondSeq { index: u32 },
    #[error("{extra} trailing bytes after {count} commands")]
    Trailing { count: u32, extra: usize },
}

impl Batch {
    /// Validates `bytes` as an encoded batch. Every decoder of untrusted
    /// bytes (network, disk) goes through here; afterwards iteration cannot fail.
    pub fn decode(bytes: Bytes) -> Result<Batch, BatchDecodeError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchDecodeError::ShortHeader(bytes.len()));
        }
        let count = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let mut offset = BATCH_HEADER_BYTES;
        for index in 0..count {
            let truncated = BatchDecodeError::Truncated {
                index,
                offset,
                len: bytes.len(),
            };
            let Some(header) = bytes.get(offset..offset + COMMAND_HEADER_BYTES) else {
                return Err(truncated);
            };
            let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let ack_delta = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
            if u64::from(ack_delta) > seq {
                return Err(BatchDecodeError::AckBeyondSeq { index });
            }
            let op_len = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")) as usize;
            let end = offset + COMMAND_HEADER_BYTES + op_len;
            if end > bytes.len() {
                return Err(truncated);
            }
            offset = end;
        }
        if offset != bytes.len() {
            return Err(BatchDecodeError::Trailing {
                count,
                extra: bytes.len() - offset,
            });
        }
        Ok(Batch { bytes, count })
    }

    /// Number of commands in the batch.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded form (what is persisted and sent).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The commands in proposal order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            buf: &self.bytes[BATCH_HEADER_BYTES..],
            left: self.count,
        }
    }
}

/// Iterator over the commands of a [`Batch`].
pub struct BatchIter<'a> {
    buf: &'a [u8],
    left: u32,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = CommandRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<CommandRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The batch was validated by `decode` or built by `BatchBuilder`,
        // so these slices are in bounds.
        let h = &self.buf[..COMMAND_HEADER_BYTES];
        let client = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let ack_delta = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes")) as usize;
        let op = &self.buf[COMMAND_HEADER_BYTES..COMMAND_HEADER_BYTES + len];
        self.buf = &self.buf[COMMAND_HEADER_BYTES + len..];
        Some(CommandRef {
            client: ClientId(client),
            seq,
            ack_below: seq - u64::from(ack_delta),
            op,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Builds a batch by appending commands into one buffer.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
}

impl BatchBuilder {
    /// A builder whose buffer is sized for `bytes_hint` bytes of commands.
    pub fn with_capacity(bytes_hint: usize) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + bytes_hint);
        buf.put_u32_le(0);
        BatchBuilder { buf, count: 0 }
    }

    /// Appends one command. Precondition: `ack_below <= seq`.
    #[inline]
    pub fn push(&mut self, client: ClientId, seq: u64, ack_below: u64, op: &[u8]) {
        assert!(ack_below <= seq, "ack_below beyond seq");
        let ack_delta = u32::try_from(seq - ack_below).unwrap_or(u32::MAX);
        let op_len = u32::try_from(op.len()).expect("command larger than 4 GiB");
        self.buf.reserve(COMMAND_HEADER_BYTES + op.len());
        // The header in one copy.
        let mut h = [0u8; COMMAND_HEADER_BYTES];
        h[0..8].copy_from_slice(&client.0.to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..20].copy_from_slice(&ack_delta.to_le_bytes());
        h[20..24].copy_from_slice(&op_len.to_le_bytes());
        self.buf.put_slice(&h);
        self.buf.put_slice(op);
        self.count += 1;
    }

    /// Commands appended so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes so far, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Seals the batch. Postcondition: the result decodes to the same commands.
    pub fn finish(mut self) -> Batch {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        let batch = Batch {
            bytes: self.buf.freeze(),
            count: self.count,
        };
        debug_assert!(Batch::decode(batch.bytes.clone()).is_ok());
        batch
    }
}

/// The value chosen for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Fills a hole left by a previous leader; applies nothing.
    Noop,
    /// Client commands, applied in order.
    Batch(Batch),
    /// A configuration change: the new membership governs every slot
    /// after this one. (Boxed: rare, and every slot's `Value` stays the
    /// size of a batch handle.)
    Config(Box<super::config::Membership>),
}

impl Value {
    /// Bytes of the payload (zero for a no-op): what batch and message limits count.
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(b) => b.bytes.len(),
            Value::Config(m) => m.bytes().len(),
        }
    }

    /// Number of client commands carried.
    pub fn command_count(&self) -> u32 {
        match self {
            Value::Noop | Value::Config(_) => 0,
            Value::Batch(b) => b.len(),
        }
    }

    /// A 64-bit fingerprint of the value (for checkers and traces, not for
    /// integrity: storage uses CRCs).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        match self {
            Value::Noop => 0u8.hash(&mut h),
            Value::Batch(b) => {
                1u8.hash(&mut h);
                b.bytes.hash(&mut h);
            }
            Value::Config(m) => {
                2u8.hash(&mut h);
                m.bytes().hash(&mut h);
            }
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_commands() -> impl Strategy<Value = Vec<(u64, u64, u64, Vec<u8>)>> {
        prop::collection::vec(
            (
                any::<u64>(),
                0u64..1 << 40,
                0u64..1000,
                prop::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(|(c, s, d, op)| (c, s, s.saturating_sub(d), op)),
            0..20,
        )
    }

    proptest! {
        /// Building then decoding gives back exactly the commands pushed.
        #[test]
        fn batch_round_trip(cmds in arb_commands()) {
            let mut b = BatchBuilder::with_capacity(0);
            for (c, s, a, op) in &cmds {
                b.push(ClientId(*c), *s, *a, op);
            }
            let batch = b.finish();
            let again = Batch::decode(batch.bytes().clone()).unwrap();
            prop_assert_eq!(again.len() as usize, cmds.len());
            for (got, (c, s, a, op)) in again.iter().zip(&cmds) {
                prop_assert_eq!(got.client, ClientId(*c));
                prop_assert_eq!(got.seq, *s);
                prop_assert_eq!(got.ack_below, *a);
                prop_assert_eq!(got.op, &op[..]);
            }
        }

        /// Decoding arbitrary bytes never panics, and whatever decodes
        /// iterates without panicking over exactly `len` commands.
        #[test]
        fn decode_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(batch) = Batch::decode(Bytes::from(bytes)) {
                prop_assert_eq!(batch.iter().count(), batch.len() as usize);
            }
        }

        /// Any strict prefix of a non-empty encoded batch is refused.
        #[test]
        fn truncation_is_detected(cmds in arb_commands(), cut in any::<prop::sample::Index>()) {
            prop_assume!(!cmds.is_empty());
            let mut b = BatchBuilder::with_capacity(0);
            for (c, s, a, op) in &cmds {
                b.push(ClientId(*c), *s, *a, op);
            }
            let bytes = b.finish().bytes().clone();
            let at = cut.index(bytes.len());
            prop_assert!(Batch::decode(bytes.slice(..at)).is_err());
        }
    }

    #[test]
    fn decode_errors_are_specific() {
        assert_eq!(
            Batch::decode(Bytes::from_static(&[1, 0])),
            Err(BatchDecodeError::ShortHeader(2))
        );
        let mut extra = BatchBuilder::with_capacity(0).finish().bytes().to_vec();
        extra.push(7);
        assert_eq!(
            Batch::decode(Bytes::from(extra)),
            Err(BatchDecodeError::Trailing { count: 0, extra: 1 })
        );
        // ack_below above seq.
        let mut b = BytesMut::new();
        b.put_u32_le(1);
        b.put_u64_le(1);
        b.put_u64_le(2);
        b.put_u32_le(3);
        b.put_u32_le(0);
        assert_eq!(
            Batch::decode(b.freeze()),
            Err(BatchDecodeError::AckBeyondSeq { index: 0 })
        );
    }

    #[test]
    fn fingerprint_distinguishes_values() {
        let mut a = BatchBuilder::with_capacity(8);
        a.push(ClientId(1), 1, 1, b"x");
        let mut b = BatchBuilder::with_capacity(8);
        b.push(ClientId(1), 1, 1, b"y");
        let (a, b) = (Value::Batch(a.finish()), Value::Batch(b.finish()));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), Value::Noop.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
