//! Fuzz targets: every decoder that reads bytes from a socket or a disk,
//! each behind one `fn(&[u8])`.
//!
//! The same functions run two ways: under libFuzzer (`make fuzz`, the
//! `fuzz/` crate, coverage-guided for a bounded time each), and as a test
//! (`engine/tests/fuzz.rs`: the committed corpus plus seeded random
//! mutations, with an allocation bound). A target panics only when a
//! decoder breaks its contract: a panic, a hang (the harness's timeout),
//! more memory than the input justifies (the test's bound), or a recovered
//! log holding something that was never written.
//!
//! Checksums guard frames, records and checkpoints, so random bytes rarely
//! reach what lies behind them: `bodies` hands a body to the decoder of its
//! kind directly, `checkpoint` wraps the input in a valid file, and the
//! storage targets flip bits of a valid log.

use bytes::{Bytes, BytesMut};
use rand_core::SeedableRng;

use crate::core::{
    Ballot, Batch, BatchBuilder, ClientId, ClusterId, EntryWrite, Membership, PersistRequest,
    PersistToken, ReplicaId, Slot, Value,
};
use crate::kv::{KvOp, KvResult, KvStore};
use crate::sim::disk::{Medium, Opened};
use crate::state_machine::{Executor, SessionLimits};
use crate::storage::nvm::region::SimRegion;
use crate::storage::nvm::{AREA_OFFSET, NvmLog};
use crate::storage::{Backend, Storage};
use crate::transport::wire::{self, FrameReader, kind};

/// A fuzz target: takes any bytes; panics only on a broken contract.
pub type Target = fn(&[u8]);

/// Every target by name (the `fuzz/` crate has a binary per entry).
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("bodies", bodies),
    ("values", values),
    ("checkpoint", checkpoint),
    ("wal", wal),
    ("nvm", nvm),
];

const CLUSTER: ClusterId = ClusterId(7);
/// Frames larger than this are refused by the reader under fuzzing.
const FUZZ_FRAME_BYTES_MAX: usize = 1 << 20;

/// A byte stream from a socket: frames split off it and each decoded.
pub fn frames(data: &[u8]) {
    let reader = FrameReader {
        cluster: CLUSTER,
        frame_bytes_max: FUZZ_FRAME_BYTES_MAX,
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some((k, body))) = reader.next(&mut buf) {
        decode_body(k, body);
    }
}

/// A frame body of any kind (two bytes of kind, then the body), past the
/// frame checksum.
pub fn bodies(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let k = u16::from_le_bytes([data[0], data[1]]);
    decode_body(k, Bytes::copy_from_slice(&data[2..]));
}

/// Decodes `body` as the frame kind `k` says; errors are fine, panics are
/// not.
fn decode_body(k: u16, body: Bytes) {
    let _ = match k {
        kind::HELLO => wire::decode_hello(body).map(drop),
        kind::HELLO_ACK => wire::decode_hello_ack(body).map(drop),
        kind::REFUSED => wire::decode_refused(body).map(drop),
        kind::CHECKPOINT_FETCH => wire::decode_checkpoint_fetch(body).map(drop),
        kind::CHECKPOINT_CHUNK => wire::decode_checkpoint_chunk(body).map(drop),
        kind::CLIENT_REQUEST => wire::decode_client_request(body).map(|r| {
            let _ = KvOp::decode(&r.op);
        }),
        kind::CLIENT_REPLY => wire::decode_client_reply(body).map(|r| {
            let _ = KvResult::decode(&r.payload);
        }),
        kind::FAST_READ => wire::decode_fast_read(body).map(drop),
        kind::FAST_READ_REPLY => wire::decode_fast_read_reply(body).map(drop),
        kind::STATUS_REPLY => {
            let _ = serde_json::from_slice::<crate::runtime::StatusReport>(&body);
            Ok(())
        }
        kind::CONFIG_CHANGE => {
            let _ = serde_json::from_slice::<crate::runtime::admin::ConfigChangeRequest>(&body);
            Ok(())
        }
        k => wire::decode_message(k, body).map(drop),
    };
}

/// A log value and the operations in it: a record's kind byte, then its
/// payload (as storage and `Accept` messages carry them).
pub fn values(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let payload = Bytes::copy_from_slice(rest);
    if let Some(Value::Batch(b)) = crate::core::codec::decode_value(k, payload.clone()) {
        for c in b.iter() {
            let _ = KvOp::decode(c.op);
        }
    }
    if let Ok(b) = Batch::decode(payload.clone()) {
        assert_eq!(
            b.iter().count() as u32,
            b.len(),
            "a batch's count and its commands"
        );
    }
    let _ = Membership::decode(payload);
    let _ = KvOp::decode(rest);
    let _ = KvResult::decode(rest);
}

/// A checkpoint file: the raw bytes, and the input as the body of a valid
/// file restored into an executor (the snapshot decoder behind the
/// checksums).
pub fn checkpoint(data: &[u8]) {
    let path = std::path::Path::new("fuzz.checkpoint");
    let _ = crate::checkpoint::decode(data, CLUSTER, path);
    let block = 1 + data.first().map_or(0, |b| u32::from(*b)) * 64;
    let file = crate::checkpoint::encode(CLUSTER, ReplicaId(1), Slot(9), data, block);
    let (slot, _, body) =
        crate::checkpoint::decode(&file, CLUSTER, path).expect("a file just encoded decodes");
    assert_eq!((slot, body.as_slice()), (Slot(9), data));
    let mut ex = Executor::new(KvStore::new(), SessionLimits::default(), Slot(9));
    if ex.restore(&body).is_ok() {
        ex.check_invariants();
    }
    // The same bytes as a version 1 body (read by conversion): converted
    // or refused, never a panic; what converts restores or is refused.
    let v1 = crate::checkpoint::encode_version(
        crate::checkpoint::VERSION_1,
        CLUSTER,
        ReplicaId(1),
        Slot(9),
        data,
        block,
    );
    if let Ok((_, _, body)) = crate::checkpoint::decode(&v1, CLUSTER, path) {
        assert_eq!(body.len(), data.len() + 8, "a version 1 body gains a count");
        let mut ex = Executor::new(KvStore::new(), SessionLimits::default(), Slot(9));
        if ex.restore(&body).is_ok() {
            ex.check_invariants();
        }
    }
}

/// A WAL on a simulated disk with bits flipped where the input says.
pub fn wal(data: &[u8]) {
    storage(Backend::Wal, data);
}

/// An NVM log on a simulated region with bits flipped where the input says.
pub fn nvm(data: &[u8]) {
    storage(Backend::Nvm, data);
}

/// The NVM target's record area: room for `STORAGE_SLOTS` entries.
const FUZZ_NVM_AREA_BYTES: u64 = 64 * 1024;

/// Slots the storage targets write before corrupting.
const STORAGE_SLOTS: u64 = 24;

/// The value written at `slot` by the storage targets.
fn written(slot: u64) -> Value {
    let mut b = BatchBuilder::with_capacity(64);
    for i in 0..(slot % 3 + 1) {
        b.push(
            ClientId(slot),
            i + 1,
            0,
            format!("op {slot}.{i}").as_bytes(),
        );
    }
    Value::Batch(b.finish())
}

/// Writes `STORAGE_SLOTS` entries, flips the bits the input names (five
/// bytes each: a little-endian offset into the medium's bytes, a bit),
/// then opens the medium. Recovery may refuse or salvage; what it returns
/// must have been written.
fn storage(backend: Backend, data: &[u8]) {
    let (cluster, replica) = (CLUSTER, ReplicaId(1));
    let medium = match backend {
        // A small region: the simulator's 2 MiB one makes each run slow.
        Backend::Nvm => {
            let region = SimRegion::new(AREA_OFFSET + FUZZ_NVM_AREA_BYTES);
            Medium::Pm(
                NvmLog::format(region, cluster, replica)
                    .expect("formatting a simulated region")
                    .into_region(),
            )
        }
        _ => Medium::format(backend, cluster, replica),
    };
    let Opened::Clean(mut s, _) = medium.open(cluster, replica) else {
        panic!("a fresh medium opens");
    };
    let ballot = Ballot::new(3, ReplicaId(2));
    for (i, slots) in (1..=STORAGE_SLOTS)
        .collect::<Vec<_>>()
        .chunks(4)
        .enumerate()
    {
        let entries = slots
            .iter()
            .map(|&slot| EntryWrite {
                slot: Slot(slot),
                ballot,
                value: written(slot),
            })
            .collect();
        s.write(PersistRequest {
            token: PersistToken(i as u64 + 1),
            promised: Some(ballot),
            entries,
            commit: Some(Slot(slots[0])),
        })
        .expect("a simulated write");
        s.sync().expect("a simulated sync");
    }
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut medium = s.crash(&mut rng, None);
    for flip in data.chunks_exact(5) {
        let at = u32::from_le_bytes([flip[0], flip[1], flip[2], flip[3]]);
        medium.flip_durable_bit(u64::from(at), flip[4] % 8);
    }
    let state = match medium.open(cluster, replica) {
        Opened::Clean(_, state) | Opened::Salvaged(_, state, _) => state,
        Opened::Refused(..) => return,
    };
    assert!(
        state.promised <= ballot,
        "a promise never made: {:?}",
        state.promised
    );
    for e in &state.entries {
        assert!(
            (1..=STORAGE_SLOTS).contains(&e.slot.0)
                && e.ballot == ballot
                && e.value.fingerprint() == written(e.slot.0).fingerprint(),
            "recovered an entry never written: slot {:?} ballot {:?}",
            e.slot,
            e.ballot
        );
    }
    assert!(
        state.entries.windows(2).all(|w| w[0].slot < w[1].slot),
        "recovered entries out of order"
    );
}

/// Well-formed inputs for `target`: the corpus `make fuzz` starts from
/// (committed under `fuzz/corpus/`) and the test runs first.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::core::{Accept, Commit, Message, Prepare};
    use crate::transport::wire::{
        CheckpointChunk, CheckpointFetch, ClientRequest, FastRead, Hello, HelloAck, Role,
    };
    let ballot = Ballot::new(4, ReplicaId(2));
    let put = KvOp::Put {
        key: Bytes::from_static(b"key"),
        value: Bytes::from_static(b"value"),
    }
    .encode();
    let batch = match written(5) {
        Value::Batch(b) => b,
        _ => unreachable!("written() builds batches"),
    };
    let frames: Vec<wire::Frame> = vec![
        wire::encode_hello(CLUSTER, &Hello { role: Role::Client }),
        wire::encode_hello(
            CLUSTER,
            &Hello {
                role: Role::Peer(ReplicaId(3)),
            },
        ),
        wire::encode_hello_ack(
            CLUSTER,
            &HelloAck {
                replica: ReplicaId(1),
                members: vec![(ReplicaId(1), "127.0.0.1:7101".into())],
            },
        ),
        wire::encode_refused(CLUSTER, "this is cluster 7, not cluster 8"),
        wire::encode_message(
            CLUSTER,
            &Message::Prepare(Prepare {
                ballot,
                from: Slot(3),
            }),
        ),
        wire::encode_message(
            CLUSTER,
            &Message::Accept(Accept {
                ballot,
                slot: Slot(5),
                value: Value::Batch(batch.clone()),
                commit: Slot(4),
            }),
        ),
        wire::encode_message(
            CLUSTER,
            &Message::Commit(Commit {
                ballot,
                commit: Slot(5),
            }),
        ),
        wire::encode_client_request(
            CLUSTER,
            &ClientRequest {
                client: ClientId(9),
                seq: 1,
                ack_below: 0,
                op: put.clone(),
            },
        ),
        wire::encode_fast_read(
            CLUSTER,
            &FastRead {
                id: 1,
                min_applied: Slot(2),
                query: put.clone(),
            },
        ),
        wire::encode_checkpoint_fetch(CLUSTER, &CheckpointFetch { at_least: Slot(64) }),
        wire::encode_checkpoint_chunk(
            CLUSTER,
            &CheckpointChunk {
                slot: Slot(64),
                total: 10,
                offset: 0,
                data: Bytes::from_static(b"0123456789"),
            },
        ),
        wire::encode_status_request(CLUSTER),
        wire::encode_config_change(CLUSTER, Bytes::from_static(br#"{"members":[1,2,4]}"#)),
    ];
    match target {
        "frames" => {
            let all: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes().to_vec()).collect();
            let mut out: Vec<Vec<u8>> = frames.iter().map(|f| f.to_bytes().to_vec()).collect();
            out.push(all);
            out
        }
        "bodies" => frames
            .iter()
            .map(|f| {
                let bytes = f.to_bytes();
                let k = u16::from_le_bytes([bytes[18], bytes[19]]);
                let mut v = k.to_le_bytes().to_vec();
                v.extend_from_slice(&bytes[wire::HEADER_BYTES..]);
                v
            })
            .collect(),
        "values" => {
            let value = Value::Batch(batch);
            let (k, payload) = crate::core::codec::encode_value(&value);
            let mut v = vec![k];
            v.extend_from_slice(payload);
            let mut op = vec![0];
            op.extend_from_slice(&put);
            vec![v, op]
        }
        "checkpoint" => {
            let mut ex = Executor::new(KvStore::new(), SessionLimits::default(), Slot(1));
            let mut replies = Vec::new();
            ex.apply(
                &crate::core::Apply {
                    slot: Slot(1),
                    value: written(2),
                },
                &mut replies,
            );
            // A closed session: the snapshot holds a tombstone too.
            let mut b = BatchBuilder::with_capacity(64);
            b.push(ClientId(1), crate::state_machine::SESSION_CLOSE_SEQ, 0, b"");
            ex.apply(
                &crate::core::Apply {
                    slot: Slot(2),
                    value: Value::Batch(b.finish()),
                },
                &mut replies,
            );
            assert_eq!(ex.closed_sessions(), 1);
            let mut snap = Vec::new();
            ex.snapshot(&mut snap);
            vec![snap]
        }
        "wal" | "nvm" => vec![
            vec![],
            [100u32.to_le_bytes().as_slice(), &[3]].concat(),
            [
                5000u32.to_le_bytes().as_slice(),
                &[0],
                &7000u32.to_le_bytes(),
                &[7],
            ]
            .concat(),
        ],
        other => panic!("no fuzz target {other}"),
    }
}
