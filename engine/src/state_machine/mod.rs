//! `engine::state_machine`: the application boundary.
//!
//! The core hands out committed slots in order ([`Apply`]); the
//! [`Executor`] runs each command through the application's
//! [`StateMachine`] exactly once per `(client, seq)`, using a replicated
//! session table, and produces the client replies. Like the core, it is
//! deterministic and performs no I/O: every replica that applies the same
//! slots reaches the same state, session table included.

mod executor;

pub use executor::{Executor, ExecutorStats};

use bytes::BytesMut;
use thiserror::Error;

use crate::core::ReplicaId;

/// The replicated application: RSL's `RSLStateMachine`, with the same
/// callbacks.
///
/// # Concurrency
///
/// A replica calls every method from one task (its core task), one call
/// at a time, never concurrently with another: an application needs no
/// locking against itself. (RSL runs `ExecuteReplicatedRequest` and the
/// notifications on one thread, `ExecuteFastReadRequest` possibly on
/// another; here fast reads run on the same task, between slots, so a
/// fast read never sees a half-applied command.) The methods run on the
/// replica's critical path: a slow one slows the replica.
///
/// # Checkpoints
///
/// A checkpoint is taken in two parts. On the core task, between two
/// commands, [`StateMachine::freeze`] returns a frozen copy of the state;
/// a thread of its own then serializes it ([`Frozen::write`]), checksums,
/// writes and `fsync`s the file while the replica goes on executing
/// commands. The library records which slot the copy covers. `freeze`
/// must be cheap, because the replica commits nothing while it runs: an
/// application with a large state shares it with the copy (copy-on-write,
/// or a persistent structure) as [`crate::kv::KvStore`] does, whose
/// freeze copies a pointer per ~20 keys and whose first write to a shared
/// bucket copies that bucket alone. The default `freeze` serializes the
/// whole state on the spot with [`StateMachine::snapshot`]: correct, and a
/// pause of the core as long as the serialization.
///
/// # Determinism
///
/// `apply`, `snapshot` and `restore` define the replicated state and must
/// be deterministic. The notifications report this replica's local view
/// (who leads, when) and differ between replicas: they must not change
/// what `apply` computes, or replicas diverge.
pub trait StateMachine {
    /// Executes one committed command and writes its result into `result`
    /// (RSL's `ExecuteReplicatedRequest`). Must be deterministic: the same
    /// commands in the same order give the same state and results on
    /// every replica.
    fn apply(&mut self, op: &[u8], result: &mut BytesMut);

    /// A hint before a batch is applied: `op` comes a few commands from
    /// now, so the state it touches can start loading into the cache
    /// while the commands before it execute. Called twice per command:
    /// first with `near == false` (load what a lookup reads first: the
    /// KV store's bucket header), then, a few commands later, with `near
    /// == true` (load what the first step's lines lead to: the entry).
    /// Must not change state; the default does nothing. Asked only when
    /// [`StateMachine::prefetches`] says so (once per batch).
    fn prefetch(&self, op: &[u8], near: bool) {
        let _ = (op, near);
    }

    /// Whether [`StateMachine::prefetch`] is worth its calls now (a state
    /// that fits the cache gains nothing from them). Default: no.
    fn prefetches(&self) -> bool {
        false
    }

    /// Answers a read from local state without replication (a fast read,
    /// possibly stale; RSL's `ExecuteFastReadRequest`). Must not change
    /// state.
    fn query(&self, query: &[u8], result: &mut BytesMut);

    /// Writes the whole state (RSL's `SaveState`).
    fn snapshot(&self, out: &mut Vec<u8>);

    /// A frozen copy of the whole state as it is now, which another
    /// thread serializes later: its [`Frozen::write`] must write exactly
    /// what `snapshot` writes now, however the state changes meanwhile.
    /// See "Checkpoints" above; the default serializes now.
    fn freeze(&self) -> Box<dyn Frozen> {
        let mut bytes = Vec::new();
        self.snapshot(&mut bytes);
        Box::new(bytes)
    }

    /// Replaces the whole state with a snapshot (RSL's `LoadState`). An
    /// error makes the replica fall back to an older checkpoint, or to
    /// replaying the log from its start.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;

    /// Asked after each applied slot: whether the application wants a
    /// checkpoint now (RSL's `saveState` out-parameter), in addition to
    /// the size and time triggers. Taken as soon as the previous one is
    /// written; a replica configured without checkpoints ignores it.
    fn checkpoint_requested(&mut self) -> bool {
        false
    }

    /// This replica became the primary (leader). Slots chosen under an
    /// earlier primary may not all be executed yet: see
    /// [`StateMachine::primary_recovered`].
    fn became_primary(&mut self) {}

    /// The primary has executed every slot chosen before its election
    /// (RSL's "primary recovered"): its state now reflects every
    /// acknowledged write, and a command it executes next is newer than
    /// all of them. Called once per term, after `became_primary`.
    fn primary_recovered(&mut self) {}

    /// This replica is a secondary (a follower or a candidate): called at
    /// start and whenever it stops being the primary.
    fn became_secondary(&mut self) {}

    /// A configuration change took effect at this point of the command
    /// stream (between the commands before and after it), or a
    /// checkpoint carrying one was restored: `epoch` and the voting
    /// members from now on (RSL's `NotifyConfigurationChanged`).
    fn configuration_changed(&mut self, epoch: u64, members: &[ReplicaId]) {
        let _ = (epoch, members);
    }

    /// The replica is shutting down cleanly (RSL's `ShutDown`); nothing is
    /// called after it. Not called on a crash or a storage failure.
    fn shutdown(&mut self) {}

    /// Whether this replica may stand for primary (RSL's
    /// `CanBecomePrimary`), asked on each tick. While it answers no, the
    /// replica starts no candidacy and gives up one under way, but goes on
    /// voting and following; a replica that already leads goes on leading
    /// (see [`crate::runtime::NodeHandle::relinquish_primary`]).
    fn can_become_primary(&mut self) -> bool {
        true
    }
}

/// A boxed state machine is one (the embedded cluster's custom state
/// machines; the runtime itself is generic and pays no indirection).
impl<T: StateMachine + ?Sized> StateMachine for Box<T> {
    fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
        (**self).apply(op, result)
    }
    fn query(&self, query: &[u8], result: &mut BytesMut) {
        (**self).query(query, result)
    }
    fn snapshot(&self, out: &mut Vec<u8>) {
        (**self).snapshot(out)
    }
    fn freeze(&self) -> Box<dyn Frozen> {
        (**self).freeze()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        (**self).restore(snapshot)
    }
    fn checkpoint_requested(&mut self) -> bool {
        (**self).checkpoint_requested()
    }
    fn became_primary(&mut self) {
        (**self).became_primary()
    }
    fn primary_recovered(&mut self) {
        (**self).primary_recovered()
    }
    fn became_secondary(&mut self) {
        (**self).became_secondary()
    }
    fn configuration_changed(&mut self, epoch: u64, members: &[ReplicaId]) {
        (**self).configuration_changed(epoch, members)
    }
    fn shutdown(&mut self) {
        (**self).shutdown()
    }
    fn can_become_primary(&mut self) -> bool {
        (**self).can_become_primary()
    }
}

/// A frozen copy of a state machine's state ([`StateMachine::freeze`]),
/// serialized on the checkpoint thread.
pub trait Frozen: Send {
    /// Appends the snapshot of the state as it was when frozen. Consumes
    /// the copy, so that it can let go of each part of the state it shares
    /// as soon as that part is read.
    fn write(self: Box<Self>, out: &mut Vec<u8>);
}

/// A state serialized when frozen (the default `freeze`).
impl Frozen for Vec<u8> {
    fn write(self: Box<Self>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self);
    }
}

/// The executor frozen for a checkpoint: its own part serialized (the
/// session table is bounded by [`SessionLimits`]), the application's
/// frozen.
pub struct FrozenExecutor {
    head: Vec<u8>,
    app: Box<dyn Frozen>,
}

impl FrozenExecutor {
    /// The checkpoint body: what [`Executor::snapshot`] wrote when frozen.
    pub fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        self.app.write(out);
    }

    /// The checkpoint body, in a vector of its own.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

impl std::fmt::Debug for FrozenExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenExecutor")
            .field("head_bytes", &self.head.len())
            .finish_non_exhaustive()
    }
}

/// A snapshot that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad snapshot: {0}")]
pub struct SnapshotError(pub &'static str);

/// The sequence number of a session close: a command with this seq ends
/// its client's session (its operation is ignored; the answer is empty).
/// A client sends it when it is done, with nothing in flight and no
/// command of unknown outcome: then its session holds nothing it will ask
/// for again, and the table does not keep it until it is evicted (a
/// command-line client that runs once per invocation would otherwise
/// leave one session per invocation in every checkpoint).
pub const SESSION_CLOSE_SEQ: u64 = 0;

/// A session's first command sequence number (a client numbers its
/// commands 1, 2, ...; `ack_below` is the lowest it has not had answered).
pub const FIRST_SEQ: u64 = 1;

/// Bounds of the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most client sessions remembered; beyond it the least recently used
    /// are forgotten (a forgotten client's old retries could apply again, so
    /// keep this well above the number of live clients).
    pub sessions_max: u32,
    /// Most results remembered per session: a client must not have more
    /// than this many commands outstanding.
    pub session_window_max: u32,
    /// Most closed sessions remembered (tombstones, 16 bytes each in a
    /// checkpoint: 64 KiB at most). A close while this many are remembered
    /// changes nothing: the session stays in the table (to its LRU bound),
    /// so no tombstone is ever forgotten early.
    pub closed_sessions_max: u32,
    /// Slots a closed session is remembered after its close: a command of
    /// a closed session is refused (`SessionExpired`), not executed, while
    /// it is. A stale copy of a command answered before the close (an
    /// attempt a superseded leader accepted) can be chosen only within
    /// that leader's window past its commit point, which is at most the
    /// close's slot: `runtime::start` refuses a `window_slots_max` above
    /// half of this. A request delayed longer than this inside a replica or
    /// the network (a process stopped with it unread) can still execute
    /// after the close, as it could before once the session was evicted.
    /// Must be the same on every replica (it shapes the replicated state).
    pub closed_session_slots: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            sessions_max: 65_536,
            session_window_max: 4096,
            closed_sessions_max: 4096,
            closed_session_slots: 4096,
        }
    }
}

/// An executor snapshot of checkpoint version 1 (no closed sessions) in
/// this version's layout: the same bytes with an empty tombstone section
/// after the session table. Fails on a body that does not parse as far.
pub(crate) fn snapshot_from_version_1(body: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    let mut r = Reader(body);
    r.u64()?; // next slot
    let membership = r.u64()?;
    r.take(membership)?;
    for _ in 0..r.u64()? {
        let (_client, _base, _last_slot, results) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        for _ in 0..results {
            r.u64()?; // seq
            let len = r.u64()?;
            r.take(len)?;
        }
    }
    let sessions_end = body.len() - r.0.len();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&body[..sessions_end]);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&body[sessions_end..]);
    Ok(out)
}

/// A bounds-checked reader over snapshot bytes.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], SnapshotError> {
        let n = usize::try_from(n).map_err(|_| SnapshotError("length overflow"))?;
        if n > self.0.len() {
            return Err(SnapshotError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}
