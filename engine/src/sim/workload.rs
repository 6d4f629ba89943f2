//! The simulator's workload: KV operations tagged with a nonce, and a state
//! machine wrapper that catches any command executed twice.

use bytes::{BufMut, Bytes, BytesMut};
use rand_core::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rustc_hash::FxHashSet;

use crate::kv::{KvOp, KvStore};
use crate::state_machine::{Frozen, SnapshotError, StateMachine};

/// Bytes of the nonce `(client, seq)` in front of every simulated operation.
const NONCE_BYTES: usize = 16;

/// Encodes `op` behind the nonce that names its command.
pub fn encode_op(client: u64, seq: u64, op: &KvOp) -> Bytes {
    let body = op.encode();
    let mut b = BytesMut::with_capacity(NONCE_BYTES + body.len());
    b.put_u64_le(client);
    b.put_u64_le(seq);
    b.put_slice(&body);
    b.freeze()
}

/// The KV store, plus a record of every command it really executed.
#[derive(Debug, Default)]
pub struct SimKv {
    pub kv: KvStore,
    executed: FxHashSet<(u64, u64)>,
    /// The first command executed twice, if any.
    pub duplicate: Option<(u64, u64)>,
}

impl StateMachine for SimKv {
    fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
        assert!(op.len() >= NONCE_BYTES, "simulated op without nonce");
        let client = u64::from_le_bytes(op[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(op[8..16].try_into().expect("8 bytes"));
        if !self.executed.insert((client, seq)) && self.duplicate.is_none() {
            self.duplicate = Some((client, seq));
        }
        self.kv.apply(&op[NONCE_BYTES..], result);
    }

    fn query(&self, query: &[u8], result: &mut BytesMut) {
        self.kv.query(query, result);
    }

    /// The KV state, then the executed record (so a replica restored from
    /// a checkpoint still detects a command executed twice across it).
    fn snapshot(&self, out: &mut Vec<u8>) {
        self.freeze().write(out);
    }

    /// The KV store frozen as the runtime freezes it (the checkpoint is
    /// serialized when the simulated write completes, after later
    /// commands executed); the executed record copied now.
    fn freeze(&self) -> Box<dyn Frozen> {
        Box::new(FrozenSimKv {
            kv: self.kv.freeze(),
            executed: self.sorted_executed(),
        })
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let bad = || SnapshotError("simulated KV snapshot truncated");
        let len = u64::from_le_bytes(snapshot.get(..8).ok_or_else(bad)?.try_into().expect("8"));
        let kv = snapshot
            .get(8..8usize.saturating_add(len as usize))
            .ok_or_else(bad)?;
        let rest = &snapshot[8 + kv.len()..];
        if !rest.len().is_multiple_of(16) {
            return Err(bad());
        }
        self.kv.restore(kv)?;
        self.executed = rest
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8")),
                    u64::from_le_bytes(c[8..].try_into().expect("8")),
                )
            })
            .collect();
        self.duplicate = None;
        Ok(())
    }
}

impl SimKv {
    fn sorted_executed(&self) -> Vec<(u64, u64)> {
        let mut executed: Vec<_> = self.executed.iter().copied().collect();
        executed.sort_unstable();
        executed
    }
}

/// A frozen [`SimKv`]: the layout of its `snapshot`.
struct FrozenSimKv {
    kv: Box<dyn Frozen>,
    executed: Vec<(u64, u64)>,
}

impl Frozen for FrozenSimKv {
    fn write(self: Box<Self>, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; 8]);
        self.kv.write(out);
        let kv_len = (out.len() - at - 8) as u64;
        out[at..at + 8].copy_from_slice(&kv_len.to_le_bytes());
        for (c, s) in &self.executed {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
}

/// Draws random operations over a small key space, so clients contend.
#[derive(Debug)]
pub struct OpGenerator {
    keys: u32,
}

impl OpGenerator {
    pub fn new(keys: u32) -> OpGenerator {
        assert!(keys > 0);
        OpGenerator { keys }
    }

    /// The next operation of `client`'s command `seq`; written values are
    /// unique so a read tells which write it saw.
    pub fn next(&self, rng: &mut Xoshiro256PlusPlus, client: u64, seq: u64) -> KvOp {
        let key = Bytes::from(format!("k{}", rng.next_u32() % self.keys));
        let value = || Bytes::from(format!("c{client}s{seq}"));
        match rng.next_u32() % 10 {
            0..=3 => KvOp::Put {
                key,
                value: value(),
            },
            4..=6 => KvOp::Get { key },
            7 => KvOp::Delete { key },
            _ => {
                // Expect either absence or a plausible earlier value.
                let expected = match rng.next_u32() % 3 {
                    0 => None,
                    _ => {
                        let c = rng.next_u64() % 4;
                        let s = seq.saturating_sub(rng.next_u64() % 4).max(1);
                        Some(Bytes::from(format!("c{c}s{s}")))
                    }
                };
                KvOp::Cas {
                    key,
                    expected,
                    new: value(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn a_second_execution_is_recorded() {
        let mut kv = SimKv::default();
        let op = encode_op(
            1,
            1,
            &KvOp::Get {
                key: Bytes::from_static(b"k"),
            },
        );
        let mut out = BytesMut::new();
        kv.apply(&op, &mut out);
        assert_eq!(kv.duplicate, None);
        kv.apply(&op, &mut out);
        assert_eq!(kv.duplicate, Some((1, 1)));
    }

    #[test]
    fn generator_is_deterministic() {
        let g = OpGenerator::new(3);
        let mut a = Xoshiro256PlusPlus::seed_from_u64(9);
        let mut b = Xoshiro256PlusPlus::seed_from_u64(9);
        for seq in 1..50 {
            assert_eq!(g.next(&mut a, 1, seq), g.next(&mut b, 1, seq));
        }
    }
}
