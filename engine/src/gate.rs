//! `engine::gate`, the regression gate's workload (above the simulator and
//! the transport: it drives lockstep replicas through the wire codec): a fixed, seeded, single-threaded run of
//! everything a committed command costs in CPU outside the kernel and the
//! async runtime.
//!
//! Three replicas in lockstep, as [`crate::sim::lockstep`], but each with the
//! real NVM log (`msync` mode on a tmpfs file, so it runs under valgrind,
//! which does not know `clwb`), the real executor and KV store, and every
//! message and client request going through the wire codec: encoded into
//! frames, copied into the receiver's read buffer, split and decoded. Same
//! inputs, same instructions, allocations, messages, bytes and flushes:
//! figures the gate can compare exactly on a noisy shared machine.

use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use crate::core::{
    ClientId, ClientReply, ClusterId, CommandRef, Envelope, Output, Replica, ReplicaId, Slot,
};
use crate::kv::{KvOp, KvStore};
use crate::sim::lockstep::lockstep_config;
use crate::state_machine::{Executor, SessionLimits};
use crate::storage::Storage;
use crate::storage::nvm::NvmLog;
use crate::storage::nvm::region::{FlushMode, MmapRegion};
use crate::transport::wire::{self, ClientReplyFrame, ClientRequest, FrameReader, Status};

/// What the gate runs (the defaults are the gate's fixed workload).
#[derive(Clone, Debug)]
pub struct GateSpec {
    pub replicas: u32,
    /// Slots in flight.
    pub window: u32,
    /// Commands per slot.
    pub batch: u32,
    pub value_bytes: usize,
    /// Distinct keys written.
    pub keys: u64,
    /// Client sessions the commands come from.
    pub clients: u64,
    /// Commands measured (after one unmeasured warm-up round).
    pub commands: u64,
    /// Test-only: plant the slowdown of [`Config::planted_slowdown`].
    pub planted_slowdown: bool,
}

impl Default for GateSpec {
    fn default() -> GateSpec {
        GateSpec {
            replicas: 3,
            window: 8,
            batch: 64,
            value_bytes: 64,
            keys: 1000,
            clients: 8,
            commands: 32_768,
            planted_slowdown: false,
        }
    }
}

/// Deterministic figures of a measured run (totals; divide by `commands`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateCounts {
    pub commands: u64,
    pub messages: u64,
    /// Frame bytes between replicas.
    pub peer_bytes: u64,
    /// Request and reply frame bytes.
    pub client_bytes: u64,
    /// Storage flushes (fence rounds), all replicas.
    pub flushes: u64,
    /// Bytes written to the logs, all replicas.
    pub storage_bytes: u64,
    /// Group commits, all replicas.
    pub commits: u64,
}

struct Node {
    replica: Replica,
    storage: NvmLog<MmapRegion>,
    executor: Executor<KvStore>,
    /// The receive buffer of this replica's connections.
    inbox: BytesMut,
}

/// The running workload.
pub struct GateWorkload {
    spec: GateSpec,
    nodes: Vec<Node>,
    files: Vec<PathBuf>,
    out: Output,
    replies: Vec<ClientReply>,
    queue: VecDeque<Envelope>,
    /// Splits frames from the bytes a node or the clients received.
    reader: FrameReader,
    clients: GateClients,
    counts: GateCounts,
}

/// The clients' side: the bytes of their replies, their sessions, the
/// value they write, and the request frames of the measured rounds, built
/// before measuring (what the clients spend is not the cluster's cost).
struct GateClients {
    inbox: BytesMut,
    next_seq: Vec<u64>,
    next_key: u64,
    value: Bytes,
    prepared: VecDeque<BytesMut>,
}

const CLUSTER: ClusterId = ClusterId(0x6a7e);
const REGION_BYTES: u64 = 256 << 20;

impl GateWorkload {
    /// Formats the logs (files in `dir`), elects replica 1 and runs one
    /// unmeasured round.
    pub fn new(spec: GateSpec, dir: &std::path::Path) -> std::io::Result<GateWorkload> {
        let members: Vec<ReplicaId> = (1..=spec.replicas).map(ReplicaId).collect();
        let mut nodes = Vec::new();
        let mut files = Vec::new();
        for id in &members {
            let mut c = lockstep_config(CLUSTER, *id, &members, spec.window, spec.batch);
            c.planted_slowdown = spec.planted_slowdown;
            let path = dir.join(format!("gate-{}-{}.nvm", std::process::id(), id.0));
            let region = MmapRegion::open(&path, REGION_BYTES, true, FlushMode::Msync)?;
            files.push(path);
            let storage = NvmLog::format(region, CLUSTER, *id).map_err(std::io::Error::other)?;
            nodes.push(Node {
                replica: Replica::new(c).map_err(std::io::Error::other)?,
                storage,
                executor: Executor::new(KvStore::new(), SessionLimits::default(), Slot::ZERO),
                inbox: BytesMut::with_capacity(1 << 20),
            });
        }
        let mut w = GateWorkload {
            reader: FrameReader {
                cluster: CLUSTER,
                frame_bytes_max: 64 << 20,
            },
            clients: GateClients {
                inbox: BytesMut::with_capacity(1 << 20),
                next_seq: vec![1; spec.clients as usize],
                next_key: 0,
                value: Bytes::from(vec![0x5a; spec.value_bytes]),
                prepared: VecDeque::new(),
            },
            spec,
            nodes,
            files,
            out: Output::default(),
            replies: Vec::new(),
            queue: VecDeque::new(),
            counts: GateCounts::default(),
        };
        while !w.nodes[0].replica.is_leader() {
            w.nodes[0].replica.on_tick();
            w.settle();
        }
        w.round();
        let rounds = w.spec.commands.div_ceil(w.round_commands());
        for _ in 0..rounds {
            let f = w.requests();
            w.clients.prepared.push_back(f);
        }
        w.counts = GateCounts::default();
        Ok(w)
    }

    fn round_commands(&self) -> u64 {
        u64::from(self.spec.window) * u64::from(self.spec.batch)
    }

    /// The measured part: `spec.commands` commands, rounded up to whole
    /// rounds. The gate's instruction count covers this function only
    /// (`valgrind --toggle-collect=*gate_measured_rounds*`).
    #[inline(never)]
    pub fn gate_measured_rounds(&mut self) -> GateCounts {
        let rounds = self.spec.commands.div_ceil(self.round_commands());
        for _ in 0..rounds {
            self.round();
        }
        self.counts.clone()
    }

    /// One window of full batches, from request frames to reply frames.
    fn round(&mut self) {
        let n = self.round_commands();
        let target = self.counts.commands + n;
        let frames = match self.clients.prepared.pop_front() {
            Some(f) => f,
            None => self.requests(),
        };
        self.counts.client_bytes += frames.len() as u64;
        let leader = &mut self.nodes[0];
        leader.inbox.extend_from_slice(&frames);
        while let Some((kind, body)) = self.reader.next(&mut leader.inbox).expect("valid frames") {
            assert_eq!(kind, wire::kind::CLIENT_REQUEST);
            let req = wire::decode_client_request(body).expect("a request");
            leader.replica.on_client(CommandRef {
                client: req.client,
                seq: req.seq,
                ack_below: req.ack_below,
                op: &req.op,
            });
        }
        while self.counts.commands < target {
            assert!(self.settle(), "the gate's cluster stopped making progress");
        }
    }

    /// The request frames of one round, as the clients would write them.
    fn requests(&mut self) -> BytesMut {
        let n = self.round_commands();
        let mut frames = BytesMut::new();
        for _ in 0..n {
            let c = self.clients.next_key % self.spec.clients;
            let seq = self.clients.next_seq[c as usize];
            self.clients.next_seq[c as usize] += 1;
            let key = self.clients.next_key % self.spec.keys;
            self.clients.next_key += 1;
            let op = KvOp::Put {
                key: Bytes::from(format!("key{key:08}")),
                value: self.clients.value.clone(),
            }
            .encode();
            let f = wire::encode_client_request(
                CLUSTER,
                &ClientRequest {
                    client: ClientId(c + 1),
                    seq,
                    ack_below: seq,
                    op,
                },
            );
            frames.extend_from_slice(&f.head);
            frames.extend_from_slice(&f.payload);
        }
        frames
    }

    /// Drains every replica (persisting, applying, answering) and delivers
    /// every message until nothing moves; whether anything happened.
    fn settle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                loop {
                    let node = &mut self.nodes[i];
                    node.replica.drain(&mut self.out);
                    if self.out.is_empty() {
                        break;
                    }
                    moved = true;
                    let wrote = !self.out.persist.is_empty();
                    for req in self.out.persist.drain(..) {
                        node.storage.write(req).expect("the gate's log has room");
                    }
                    let token = wrote.then(|| node.storage.sync().expect("msync on tmpfs"));
                    for a in self.out.apply.drain(..) {
                        if i == 0 {
                            self.counts.commands += u64::from(a.value.command_count());
                        }
                        node.executor.apply(&a, &mut self.replies);
                    }
                    for r in self.replies.drain(..) {
                        if i != 0 {
                            continue; // followers hold no client connections
                        }
                        let f = wire::encode_client_reply(
                            CLUSTER,
                            &ClientReplyFrame {
                                client: r.client,
                                seq: r.seq,
                                status: if r.result.is_ok() {
                                    Status::Ok
                                } else {
                                    Status::Invalid
                                },
                                slot: Slot::ZERO,
                                hint: None,
                                payload: r.result.unwrap_or_default(),
                            },
                        );
                        self.counts.client_bytes += f.len() as u64;
                        self.clients.inbox.extend_from_slice(&f.head);
                        self.clients.inbox.extend_from_slice(&f.payload);
                    }
                    assert!(
                        self.out.replies.is_empty(),
                        "the gate's load is never refused"
                    );
                    self.queue.extend(self.out.send.drain(..));
                    self.out.clear();
                    match token {
                        Some(t) => node.replica.on_persisted(t),
                        None => break,
                    }
                }
            }
            self.deliver_replies();
            while let Some(env) = self.queue.pop_front() {
                moved = true;
                let to = (env.to.0 - 1) as usize;
                let f = wire::encode_message(CLUSTER, &env.msg);
                self.counts.messages += 1;
                self.counts.peer_bytes += f.len() as u64;
                let node = &mut self.nodes[to];
                node.inbox.extend_from_slice(&f.head);
                node.inbox.extend_from_slice(&f.payload);
                let (kind, body) = self
                    .reader
                    .next(&mut node.inbox)
                    .expect("a valid frame")
                    .expect("a whole frame");
                let msg = wire::decode_message(kind, body).expect("a message");
                node.replica.on_message(Envelope {
                    cluster: CLUSTER,
                    from: env.from,
                    to: env.to,
                    msg,
                });
            }
            if !moved {
                return any;
            }
            any = true;
        }
    }

    /// The client side: split and decode every reply.
    fn deliver_replies(&mut self) {
        while let Some((_, body)) = self
            .reader
            .next(&mut self.clients.inbox)
            .expect("valid reply frames")
        {
            let r = wire::decode_client_reply(body).expect("a reply");
            assert_eq!(r.status, Status::Ok, "every gate command succeeds");
        }
    }

    /// Storage figures so far (all replicas).
    pub fn storage_counts(&self) -> (u64, u64, u64) {
        self.nodes.iter().fold((0, 0, 0), |(f, b, c), n| {
            let s = n.storage.stats();
            (f + s.flushes, b + s.bytes, c + s.commits)
        })
    }

    /// Runs the measured rounds and returns every figure.
    pub fn run(&mut self) -> GateCounts {
        let (f0, b0, c0) = self.storage_counts();
        let mut c = self.gate_measured_rounds();
        let (f1, b1, c1) = self.storage_counts();
        c.flushes = f1 - f0;
        c.storage_bytes = b1 - b0;
        c.commits = c1 - c0;
        c
    }
}

impl Drop for GateWorkload {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(planted_slowdown: bool) -> GateCounts {
        let spec = GateSpec {
            commands: 2048,
            planted_slowdown,
            ..GateSpec::default()
        };
        GateWorkload::new(spec, &std::env::temp_dir())
            .unwrap()
            .run()
    }

    #[test]
    fn the_workload_is_deterministic_and_counts_every_command() {
        let a = small(false);
        assert_eq!(a, small(false));
        assert_eq!(a.commands, 2048);
        // Per slot: an Accept to each follower and an Accepted back (or
        // coalesced), so at least 2 messages per slot of 64 commands.
        assert!(a.messages >= 2 * 2048 / 64, "{a:?}");
        assert!(a.flushes > 0 && a.storage_bytes > 2048 * 64, "{a:?}");
        // Each request frame carries at least the value.
        assert!(a.client_bytes > 2048 * 64, "{a:?}");
    }

    #[test]
    fn the_planted_slowdown_changes_no_protocol_figure() {
        // It costs CPU and an allocation only; the deterministic protocol
        // figures stay put (the gate catches it by instructions and
        // allocations).
        assert_eq!(small(false), small(true));
    }
}
