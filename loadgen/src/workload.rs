//! What the load generator asks for: KV puts and gets over a key space,
//! keys drawn uniformly or from a Zipf distribution.

use bytes::{BufMut, Bytes, BytesMut};
#[cfg(test)]
use engine::kv::KvOp;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::spec::{Distribution, LoadSpec};

/// YCSB's Zipfian generator (Gray et al., "Quickly generating billion-record
/// synthetic databases", SIGMOD'94): O(n) set-up, O(1) per draw, ranks
/// 0..n with P(rank k) ∝ 1/(k+1)^θ. Hand-written: a dozen lines, and the
/// crates that offer Zipf sample by rejection, which costs more per draw.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(
            n >= 1 && theta > 0.0 && theta != 1.0,
            "zipf needs n >= 1 and θ ∉ {{0, 1}}"
        );
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let nf = n as f64;
        Zipf {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// A rank in `0..n` from a uniform `u` in `[0, 1)`.
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n as u64 - 1);
        }
        let r = self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (r as u64).min(self.n as u64 - 1)
    }
}

/// Draws operations for one client.
pub struct Workload {
    rng: Xoshiro256PlusPlus,
    keys: u64,
    zipf: Option<Zipf>,
    read_ratio: f64,
    value: Bytes,
    buf: BytesMut,
}

/// What a drawn operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Get,
}

impl Workload {
    /// `zipf`: shared set-up (computing ζ(n) once for all clients).
    pub fn new(spec: &LoadSpec, client: u32, zipf: Option<Zipf>) -> Workload {
        let mut value = BytesMut::with_capacity(spec.value_bytes);
        for i in 0..spec.value_bytes {
            value.put_u8(b'a' + (i % 26) as u8);
        }
        Workload {
            rng: Xoshiro256PlusPlus::seed_from_u64(spec.seed ^ (u64::from(client) << 32) ^ 0x5EED),
            keys: spec.keys,
            zipf: match spec.distribution {
                Distribution::Uniform => None,
                Distribution::Zipf => zipf,
            },
            read_ratio: spec.read_ratio,
            value: value.freeze(),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn next_key(&mut self) -> u64 {
        if self.zipf.is_some() {
            let u = self.uniform();
            self.zipf.as_ref().expect("checked").rank(u)
        } else {
            self.rng.next_u64() % self.keys
        }
    }

    /// The next operation, encoded for the KV store.
    pub fn next_op(&mut self) -> (OpKind, Bytes) {
        let kind = if self.read_ratio > 0.0 && self.uniform() < self.read_ratio {
            OpKind::Get
        } else {
            OpKind::Put
        };
        let key = self.next_key();
        if self.buf.capacity() < 256 + self.value.len() {
            self.buf = BytesMut::with_capacity(64 * 1024 + self.value.len());
        }
        let mut k = [0u8; 24];
        let key = format_key(key, &mut k);
        let klen = key.len();
        // The KV encoding (engine::kv), written straight into a shared
        // buffer: one allocation per 64 KiB of operations, not one each.
        match kind {
            OpKind::Put => {
                self.buf.put_u8(1);
                self.buf.put_u32_le(klen as u32);
                self.buf.put_slice(key);
                self.buf.put_slice(&self.value);
            }
            OpKind::Get => {
                self.buf.put_u8(2);
                self.buf.put_slice(key);
            }
        }
        (kind, self.buf.split().freeze())
    }
}

/// `k` and `key` in at least ten decimal digits (`format!("k{key:010}")`)
/// written into `buf`, without the formatting machinery (it was a visible
/// share of the load generator's time per call).
fn format_key(mut key: u64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    while key > 0 || buf.len() - i < 10 {
        i -= 1;
        buf[i] = b'0' + (key % 10) as u8;
        key /= 10;
    }
    i -= 1;
    buf[i] = b'k';
    &buf[i..]
}

/// The same operation as [`Workload::next_op`] encodes, built the slow way
/// (for the test that the two agree).
#[cfg(test)]
fn reference_op(kind: OpKind, key: u64, value: &Bytes) -> Bytes {
    let key = Bytes::from(format!("k{key:010}"));
    match kind {
        OpKind::Put => KvOp::Put {
            key,
            value: value.clone(),
        }
        .encode(),
        OpKind::Get => KvOp::Get { key }.encode(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_ops_match_the_kv_encoding() {
        let spec = LoadSpec {
            read_ratio: 0.5,
            value_bytes: 64,
            keys: 1000,
            ..LoadSpec::default()
        };
        let mut w = Workload::new(&spec, 1, None);
        let mut twin = Workload::new(&spec, 1, None);
        let (mut puts, mut gets) = (0, 0);
        for _ in 0..1000 {
            let (kind, op) = w.next_op();
            // Replay the same draws on the twin to know the key.
            let is_get = twin.uniform() < 0.5;
            assert_eq!(is_get, kind == OpKind::Get);
            let key = twin.next_key();
            assert_eq!(op, reference_op(kind, key, &w.value));
            assert!(KvOp::decode(&op).is_ok());
            match kind {
                OpKind::Put => puts += 1,
                OpKind::Get => gets += 1,
            }
        }
        assert!(
            (400..600).contains(&puts) && gets == 1000 - puts,
            "{puts} puts"
        );
    }

    #[test]
    fn keys_are_formatted_as_format_would() {
        let mut buf = [0u8; 24];
        for key in [
            0,
            7,
            42,
            9_999_999_999,
            10_000_000_000,
            123_456_789_012,
            u64::MAX,
        ] {
            assert_eq!(format_key(key, &mut buf), format!("k{key:010}").as_bytes());
        }
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut w = Workload::new(&LoadSpec::default(), 0, None);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            let u = w.uniform();
            counts[z.rank(u) as usize] += 1;
        }
        // Rank 0 is the most popular; the top 10 take a large share.
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        let top: u32 = counts[..10].iter().sum();
        assert!(top > 30_000, "top-10 share {top}");
        // Uniform spreads evenly.
        let mut u = [0u32; 10];
        for _ in 0..100_000 {
            u[(w.next_key() % 10) as usize] += 1;
        }
        assert!(u.iter().all(|c| (9_000..11_000).contains(c)), "{u:?}");
    }
}
