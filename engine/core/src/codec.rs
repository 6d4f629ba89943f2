//! A value's encoded form: a kind byte and the batch's (or membership's)
//! encoded bytes as the payload. What the WAL and the NVM log store in a
//! record and what the wire carries in an accept, so one definition below
//! both; every decoder validates through [`Batch::decode`].

use bytes::Bytes;

use crate::{Batch, Membership, Value};

/// Record kind of an entry holding a batch.
pub const KIND_BATCH: u8 = 1;
/// Record kind of an entry holding a no-op (empty payload).
pub const KIND_NOOP: u8 = 2;
/// Record kind of an entry holding a configuration change.
pub const KIND_CONFIG: u8 = 3;

/// The record kind and payload of `value`.
pub fn encode_value(value: &Value) -> (u8, &[u8]) {
    match value {
        Value::Noop => (KIND_NOOP, &[]),
        Value::Batch(b) => (KIND_BATCH, b.bytes()),
        Value::Config(m) => (KIND_CONFIG, m.bytes()),
    }
}

/// The value of an entry record; `None` if kind and payload do not form one.
pub fn decode_value(kind: u8, payload: Bytes) -> Option<Value> {
    match kind {
        KIND_NOOP if payload.is_empty() => Some(Value::Noop),
        KIND_BATCH => Batch::decode(payload).ok().map(Value::Batch),
        KIND_CONFIG => Membership::decode(payload).map(|m| Value::Config(Box::new(m))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, ClientId, ReplicaId};

    #[test]
    fn values_round_trip_and_bad_payloads_are_refused() {
        let mut b = BatchBuilder::with_capacity(8);
        b.push(ClientId(1), 2, 2, b"op");
        let config = Membership::new(3, vec![ReplicaId(2)]).unwrap();
        for v in [
            Value::Noop,
            Value::Batch(b.finish()),
            Value::Config(Box::new(config)),
        ] {
            let (kind, payload) = encode_value(&v);
            assert_eq!(decode_value(kind, Bytes::copy_from_slice(payload)), Some(v));
        }
        assert_eq!(decode_value(KIND_NOOP, Bytes::from_static(b"x")), None);
        assert_eq!(decode_value(KIND_BATCH, Bytes::from_static(b"xyz")), None);
        assert_eq!(decode_value(KIND_CONFIG, Bytes::from_static(b"xyz")), None);
        assert_eq!(decode_value(9, Bytes::new()), None);
    }
}
