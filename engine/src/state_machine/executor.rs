//! The executor: applies chosen slots in order through the client
//! session table (exactly once per `(client, seq)`), answers, snapshots
//! and restores, and freezes a copy for checkpoints.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::core::{
    Apply, ClientId, ClientReply, CommandRef, Membership, ProposeError, Slot, Value,
};

use super::*;

/// How many commands ahead of the one executing the state machine is
/// told to start loading a command's state (`StateMachine::prefetch`):
/// the first step (far) and the second (near). About the memory
/// latency over a command's cost, so the lines arrive as they are needed.
const PREFETCH_FAR: usize = 8;
const PREFETCH_NEAR: usize = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Session {
    /// Every seq below `base` is closed: answered and acknowledged, or
    /// pushed out of the window. Invariant: every remembered result has
    /// `seq >= base` and `seq < base + session_window_max`.
    base: u64,
    /// Results of executed commands, sorted by seq.
    results: VecDeque<(u64, Bytes)>,
    /// Slot of the last command of this session (for LRU eviction).
    last_slot: u64,
}

impl Session {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        // A client's commands come in seq order: a new one is almost
        // always past the last result (no search).
        match self.results.back() {
            None => Err(0),
            Some(&(last, _)) if last < seq => Err(self.results.len()),
            Some(_) => self.results.binary_search_by_key(&seq, |(s, _)| *s),
        }
    }

    fn raise_base(&mut self, base: u64) {
        if base > self.base {
            self.base = base;
            while self.results.front().is_some_and(|(s, _)| *s < base) {
                self.results.pop_front();
            }
        }
    }
}

/// What the session table says about a command.
#[derive(Debug, PartialEq, Eq)]
enum Check<'a> {
    /// Not executed yet: its session, and where its result goes.
    New(&'a mut Session, usize),
    Duplicate(Bytes),
    /// Refused; `unknown`: its session is not in the table though the
    /// client had commands answered (an evicted session).
    Expired {
        unknown: bool,
    },
}

/// The session table's answer for `cmd`, starting its session if new.
fn check<'a>(
    sessions: &'a mut FxHashMap<ClientId, Session>,
    closed_clients: &FxHashSet<ClientId>,
    cmd: CommandRef<'_>,
) -> Check<'a> {
    // (No hashing per command while no session is closed or evicted.)
    if !closed_clients.is_empty() && closed_clients.contains(&cmd.client) {
        return Check::Expired { unknown: false };
    }
    // A session the table does not hold, from a client that says it
    // has had commands acknowledged (`ack_below` above the first seq),
    // was forgotten (evicted at the table's bound): its command may
    // have executed before, and its result is gone. Refused, never
    // executed again (issue 21, finding 5: client-chosen ids flooding
    // the table evicted a live session, whose retry then executed
    // twice). A new session starts with nothing acknowledged.
    let session = match sessions.entry(cmd.client) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(_) if cmd.ack_below > FIRST_SEQ => {
            return Check::Expired { unknown: true };
        }
        std::collections::hash_map::Entry::Vacant(v) => v.insert(Session {
            base: cmd.ack_below,
            ..Session::default()
        }),
    };
    session.raise_base(cmd.ack_below);
    if cmd.seq < session.base {
        return Check::Expired { unknown: false };
    }
    match session.find(cmd.seq) {
        Ok(i) => Check::Duplicate(session.results[i].1.clone()),
        Err(at) => Check::New(session, at),
    }
}

/// Records `cmd`'s result at `at`, where [`check`] found it goes.
fn record(
    session: &mut Session,
    at: usize,
    window: u32,
    slot: Slot,
    cmd: CommandRef<'_>,
    result: Bytes,
) {
    let window = u64::from(window);
    // Cheap in release too: `at` is where `cmd.seq` goes, and it is not
    // there yet (a command recorded twice would answer twice).
    let r = &session.results;
    assert!(
        at <= r.len() && (at == r.len() || r[at].0 > cmd.seq) && (at == 0 || r[at - 1].0 < cmd.seq),
        "recorded twice, or out of place"
    );
    if at == session.results.len() {
        session.results.push_back((cmd.seq, result));
    } else {
        session.results.insert(at, (cmd.seq, result));
    }
    session.last_slot = slot.0;
    if cmd.seq >= session.base + window {
        session.raise_base(cmd.seq + 1 - window);
    }
    debug_assert!(session.results.len() as u64 <= window);
}

/// Counters of the executor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    pub slots_applied: u64,
    pub commands_executed: u64,
    pub duplicates_answered: u64,
    pub expired_refused: u64,
    /// Of those, commands of a session the table does not hold from a
    /// client that had commands answered (an evicted session).
    pub sessions_unknown_refused: u64,
    pub sessions_evicted: u64,
    /// Sessions their clients closed.
    pub sessions_closed: u64,
    /// Closes that left the session open because `closed_sessions_max`
    /// tombstones were remembered.
    pub closes_deferred: u64,
}

/// Applies committed slots to a state machine with exactly-once sessions.
#[derive(Debug)]
pub struct Executor<S> {
    sm: S,
    limits: SessionLimits,
    sessions: FxHashMap<ClientId, Session>,
    /// Closed sessions, oldest first: `(slot of the close, client)`.
    /// Invariant: slots nondecreasing, at most `closed_sessions_max`,
    /// none older than `closed_session_slots`, the clients exactly
    /// `closed_clients` and none in `sessions`.
    closed: VecDeque<(u64, ClientId)>,
    closed_clients: FxHashSet<ClientId>,
    /// The next slot to apply. Invariant: slots are applied in order, once.
    next_slot: Slot,
    /// The last configuration change applied (`None`: the bootstrap
    /// configuration). Part of the replicated state: a checkpoint carries
    /// it, so a replica restored from one knows its configuration.
    membership: Option<Membership>,
    results: BytesMut,
    stats: ExecutorStats,
    /// The application asked for a checkpoint (cleared when taken).
    checkpoint_requested: bool,
}

/// Results are written into chunks of this size (one allocation per chunk).
pub(super) const RESULT_CHUNK_BYTES: usize = 64 * 1024;

/// Applies `op` to `sm` and returns its result, written into `results`
/// (a fresh chunk when the one in use runs low). A free function: the
/// executor calls it while it holds the command's session.
#[inline]
fn apply_op<S: StateMachine>(sm: &mut S, results: &mut BytesMut, op: &[u8]) -> Bytes {
    if results.capacity() - results.len() < RESULT_CHUNK_BYTES / 16 {
        *results = BytesMut::with_capacity(RESULT_CHUNK_BYTES);
    }
    debug_assert!(results.is_empty(), "every result taken whole");
    sm.apply(op, results);
    take_result(results)
}

/// The result `sm.apply` just wrote (all of `results`). A one-byte result
/// (a KV put's answer) is a static copy: no split of the buffer and no
/// reference count to move as it is recorded, answered and dropped (a
/// split, a clone and two drops were ~100 instructions a command on each
/// replica in the gate's runtime path).
fn take_result(results: &mut BytesMut) -> Bytes {
    if let [b] = results[..] {
        results.clear();
        return Bytes::from_static(std::slice::from_ref(&ONE_BYTE[usize::from(b)]));
    }
    results.split().freeze()
}

/// Every byte value, each the static result of that one byte.
static ONE_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

impl<S: StateMachine> Executor<S> {
    /// An executor that will apply from `next_slot` on.
    pub fn new(sm: S, limits: SessionLimits, next_slot: Slot) -> Executor<S> {
        assert!(limits.session_window_max >= 1 && limits.sessions_max >= 1);
        Executor {
            sm,
            limits,
            sessions: FxHashMap::default(),
            closed: VecDeque::new(),
            closed_clients: FxHashSet::default(),
            next_slot,
            membership: None,
            results: BytesMut::new(),
            stats: ExecutorStats::default(),
            checkpoint_requested: false,
        }
    }

    /// Applies one committed slot and appends a reply per command.
    /// Precondition: `a.slot` is the next slot.
    pub fn apply(&mut self, a: &Apply, replies: &mut Vec<ClientReply>) {
        assert_eq!(
            a.slot, self.next_slot,
            "slots must be applied in order, once"
        );
        match &a.value {
            Value::Batch(batch) => {
                // The state machine's prefetch hints run PREFETCH_FAR and
                // PREFETCH_NEAR commands ahead of the one executing: a
                // store larger than the cache then waits for its lines
                // several at a time, not one after another.
                let hints = self.sm.prefetches();
                let (mut far, mut near) = (batch.iter(), batch.iter());
                if hints {
                    for c in far.by_ref().take(PREFETCH_FAR) {
                        self.sm.prefetch(c.op, false);
                    }
                    for c in near.by_ref().take(PREFETCH_NEAR) {
                        self.sm.prefetch(c.op, true);
                    }
                }
                for cmd in batch.iter() {
                    if hints {
                        if let Some(c) = far.next() {
                            self.sm.prefetch(c.op, false);
                        }
                        if let Some(c) = near.next() {
                            self.sm.prefetch(c.op, true);
                        }
                    }
                    let result = if cmd.seq == SESSION_CLOSE_SEQ {
                        self.close_session(a.slot, cmd.client);
                        Ok(Bytes::new())
                    } else {
                        self.execute(a.slot, cmd)
                    };
                    replies.push(ClientReply {
                        client: cmd.client,
                        seq: cmd.seq,
                        result,
                    });
                }
            }
            Value::Config(m) => {
                // A stale change (its epoch already in force) is ignored,
                // as the core ignores it.
                if m.epoch() > self.membership.as_ref().map_or(0, |c| c.epoch()) {
                    self.sm.configuration_changed(m.epoch(), m.members());
                    self.membership = Some(Membership::clone(m));
                }
            }
            Value::Noop => {}
        }
        self.next_slot = a.slot.next();
        self.stats.slots_applied += 1;
        if self.sm.checkpoint_requested() {
            self.checkpoint_requested = true;
        }
        if self.sessions.len() > self.limits.sessions_max as usize {
            self.evict(a.slot);
        }
        self.forget_closed(a.slot);
    }

    /// Ends `client`'s session: its results go, and a tombstone refuses
    /// its commands for `closed_session_slots` (a retried close is
    /// answered the same, and changes nothing). With the tombstones at
    /// their bound, the session stays instead (as if never closed).
    fn close_session(&mut self, slot: Slot, client: ClientId) {
        if self.closed_clients.contains(&client) {
            return;
        }
        if self.closed.len() >= self.limits.closed_sessions_max as usize {
            self.stats.closes_deferred += 1;
            return;
        }
        self.sessions.remove(&client);
        self.closed_clients.insert(client);
        self.closed.push_back((slot.0, client));
        self.stats.sessions_closed += 1;
        debug_assert!(self.closed.len() <= self.limits.closed_sessions_max as usize);
    }

    /// Forgets the tombstones `closed_session_slots` old at `slot`
    /// (deterministic: by slot, as every replica applies the same slots).
    fn forget_closed(&mut self, slot: Slot) {
        while let Some(&(closed_at, client)) = self.closed.front() {
            if closed_at.saturating_add(self.limits.closed_session_slots) > slot.0 {
                break;
            }
            self.closed.pop_front();
            self.closed_clients.remove(&client);
        }
    }

    /// Runs `op` on the state machine outside the log and sessions: only
    /// for the lab's `null` server (the transport's ceiling), never for a
    /// replicated deployment.
    pub fn execute_unreplicated(&mut self, op: &[u8]) -> Bytes {
        apply_op(&mut self.sm, &mut self.results, op)
    }

    fn execute(&mut self, slot: Slot, cmd: CommandRef<'_>) -> Result<Bytes, ProposeError> {
        // One lookup of the session for the check and the record: the
        // state machine and the result buffer are other fields.
        let (session, at) = match check(&mut self.sessions, &self.closed_clients, cmd) {
            Check::New(session, at) => (session, at),
            Check::Duplicate(r) => {
                self.stats.duplicates_answered += 1;
                return Ok(r);
            }
            Check::Expired { unknown } => {
                self.stats.expired_refused += 1;
                self.stats.sessions_unknown_refused += u64::from(unknown);
                return Err(ProposeError::SessionExpired);
            }
        };
        let result = apply_op(&mut self.sm, &mut self.results, cmd.op);
        record(
            session,
            at,
            self.limits.session_window_max,
            slot,
            cmd,
            result.clone(),
        );
        self.stats.commands_executed += 1;
        Ok(result)
    }

    /// Forgets the least recently used sessions, down to 7/8 of the bound
    /// (deterministically: by last slot, then client id). Each leaves a
    /// tombstone while there is room for one, as a close does: an evicted
    /// client's retry of a command whose answer it lost (even its first,
    /// which the `ack_below` rule of `check` cannot tell from a new
    /// session's) is refused, not executed again, for
    /// `closed_session_slots`.
    fn evict(&mut self, slot: Slot) {
        let keep = (self.limits.sessions_max as usize * 7 / 8).max(1);
        let mut by_age: Vec<(u64, ClientId)> = self
            .sessions
            .iter()
            .map(|(c, s)| (s.last_slot, *c))
            .collect();
        by_age.sort_unstable();
        let n = by_age.len() - keep;
        for (_, c) in &by_age[..n] {
            self.sessions.remove(c);
            if self.closed.len() < self.limits.closed_sessions_max as usize
                && self.closed_clients.insert(*c)
            {
                self.closed.push_back((slot.0, *c));
            }
        }
        self.stats.sessions_evicted += n as u64;
    }

    /// Checks the session table: every remembered result lies in its
    /// session's window, sorted, and the table is within its bound.
    pub fn check_invariants(&self) {
        let window = u64::from(self.limits.session_window_max);
        assert!(
            self.sessions.len() <= self.limits.sessions_max as usize,
            "session table over its bound"
        );
        assert!(
            self.closed.len() <= self.limits.closed_sessions_max as usize
                && self.closed.len() == self.closed_clients.len(),
            "closed sessions over their bound or listed twice"
        );
        for (i, (slot, c)) in self.closed.iter().enumerate() {
            assert!(self.closed_clients.contains(c), "a tombstone not indexed");
            assert!(!self.sessions.contains_key(c), "a closed session is open");
            assert!(
                i == 0 || self.closed[i - 1].0 <= *slot,
                "tombstones out of order"
            );
            assert!(
                slot.saturating_add(self.limits.closed_session_slots) >= self.next_slot.0,
                "a tombstone outlived closed_session_slots"
            );
        }
        for s in self.sessions.values() {
            assert!(s.results.len() as u64 <= window, "session over its window");
            for (i, (seq, _)) in s.results.iter().enumerate() {
                assert!(
                    *seq >= s.base && *seq < s.base + window,
                    "result outside the window"
                );
                assert!(i == 0 || s.results[i - 1].0 < *seq, "results out of order");
            }
        }
    }

    /// A fast read against local state (possibly stale).
    pub fn query(&self, query: &[u8], result: &mut BytesMut) {
        self.sm.query(query, result);
    }

    /// The last configuration change applied (`None`: none since bootstrap).
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    pub fn next_slot(&self) -> Slot {
        self.next_slot
    }

    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The application, for the driver's notifications (which must not
    /// change the replicated state).
    pub fn state_machine_mut(&mut self) -> &mut S {
        &mut self.sm
    }

    /// Whether the application asked for a checkpoint since the last call.
    pub fn take_checkpoint_request(&mut self) -> bool {
        std::mem::take(&mut self.checkpoint_requested)
    }

    pub fn stats(&self) -> &ExecutorStats {
        &self.stats
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Closed sessions still remembered (tombstones).
    pub fn closed_sessions(&self) -> usize {
        self.closed.len()
    }

    /// Writes the executor's state: next slot, configuration, session
    /// table, closed sessions, application state.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        self.snapshot_head(out);
        self.sm.snapshot(out);
    }

    /// The executor's state frozen for a checkpoint written elsewhere
    /// (its `write` gives what [`Executor::snapshot`] gives now): the
    /// session table serialized, the application frozen.
    pub fn freeze(&self) -> FrozenExecutor {
        let mut head = Vec::new();
        self.snapshot_head(&mut head);
        FrozenExecutor {
            head,
            app: self.sm.freeze(),
        }
    }

    /// Everything of the snapshot but the application's state.
    fn snapshot_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.next_slot.0.to_le_bytes());
        match &self.membership {
            None => out.extend_from_slice(&0u64.to_le_bytes()),
            Some(m) => {
                out.extend_from_slice(&(m.bytes().len() as u64).to_le_bytes());
                out.extend_from_slice(m.bytes());
            }
        }
        let mut clients: Vec<_> = self.sessions.keys().copied().collect();
        clients.sort_unstable();
        out.extend_from_slice(&(clients.len() as u64).to_le_bytes());
        for c in clients {
            let s = &self.sessions[&c];
            for n in [c.0, s.base, s.last_slot, s.results.len() as u64] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            for (seq, r) in &s.results {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&(r.len() as u64).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
        out.extend_from_slice(&(self.closed.len() as u64).to_le_bytes());
        for (slot, c) in &self.closed {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&c.0.to_le_bytes());
        }
    }

    /// Replaces the executor's state with a snapshot written by `snapshot`.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader(snapshot);
        let next_slot = Slot(r.u64()?);
        let membership = match r.u64()? {
            0 => None,
            n => Some(
                Membership::decode(Bytes::copy_from_slice(r.take(n)?))
                    .ok_or(SnapshotError("bad configuration"))?,
            ),
        };
        let count = r.u64()?;
        if count > u64::from(self.limits.sessions_max) {
            return Err(SnapshotError("more sessions than the session table holds"));
        }
        let mut sessions = FxHashMap::default();
        for _ in 0..count {
            let client = ClientId(r.u64()?);
            let base = r.u64()?;
            let last_slot = r.u64()?;
            let n = r.u64()?;
            if n > u64::from(self.limits.session_window_max) {
                return Err(SnapshotError("session holds more results than the window"));
            }
            // What check_invariants requires, refused here: a checkpoint
            // comes from disk or from a peer, and a sound checksum does not
            // make its contents sound.
            let end = base
                .checked_add(u64::from(self.limits.session_window_max))
                .ok_or(SnapshotError(
                    "session window beyond the last sequence number",
                ))?;
            let mut results: VecDeque<(u64, Bytes)> = VecDeque::with_capacity(n as usize);
            for _ in 0..n {
                let seq = r.u64()?;
                let len = r.u64()?;
                if seq < base || seq >= end {
                    return Err(SnapshotError("session result outside its window"));
                }
                if results.back().is_some_and(|(last, _)| *last >= seq) {
                    return Err(SnapshotError("session results out of order"));
                }
                results.push_back((seq, Bytes::copy_from_slice(r.take(len)?)));
            }
            if sessions
                .insert(
                    client,
                    Session {
                        base,
                        results,
                        last_slot,
                    },
                )
                .is_some()
            {
                return Err(SnapshotError("client listed twice"));
            }
        }
        let count = r.u64()?;
        if count > u64::from(self.limits.closed_sessions_max) {
            return Err(SnapshotError("more closed sessions than the bound"));
        }
        let mut closed = VecDeque::with_capacity(count as usize);
        let mut closed_clients = FxHashSet::default();
        for _ in 0..count {
            let slot = r.u64()?;
            let client = ClientId(r.u64()?);
            if closed.back().is_some_and(|(last, _)| *last > slot) {
                return Err(SnapshotError("closed sessions out of order"));
            }
            if slot >= next_slot.0
                || slot.saturating_add(self.limits.closed_session_slots) < next_slot.0
            {
                return Err(SnapshotError("a closed session outside its slots"));
            }
            if !closed_clients.insert(client) || sessions.contains_key(&client) {
                return Err(SnapshotError("a closed session listed twice or open"));
            }
            closed.push_back((slot, client));
        }
        self.sm.restore(r.0)?;
        if let Some(m) = &membership {
            self.sm.configuration_changed(m.epoch(), m.members());
        }
        self.closed = closed;
        self.closed_clients = closed_clients;
        self.sessions = sessions;
        self.next_slot = next_slot;
        self.membership = membership;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::BatchBuilder;

    /// Appends each op to a log; the result is the log length. Records
    /// each configuration change it is told of: (epoch, ops before it).
    #[derive(Default, Debug)]
    struct Append(Vec<Vec<u8>>, Vec<(u64, usize)>);

    impl StateMachine for Append {
        fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
            self.0.push(op.to_vec());
            result.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        }
        fn query(&self, _: &[u8], result: &mut BytesMut) {
            result.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        }
        fn snapshot(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
            for op in &self.0 {
                out.extend_from_slice(&(op.len() as u64).to_le_bytes());
                out.extend_from_slice(op);
            }
        }
        fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
            let mut r = Reader(snapshot);
            let n = r.u64()?;
            let mut ops = vec![];
            for _ in 0..n {
                let len = r.u64()?;
                ops.push(r.take(len)?.to_vec());
            }
            self.0 = ops;
            Ok(())
        }
        fn configuration_changed(&mut self, epoch: u64, members: &[crate::core::ReplicaId]) {
            assert!(!members.is_empty());
            self.1.push((epoch, self.0.len()));
        }
    }

    /// What the executor asked of a state machine, in order.
    #[derive(Debug, PartialEq, Eq)]
    enum Asked {
        Far(Vec<u8>),
        Near(Vec<u8>),
        Apply(Vec<u8>),
    }

    /// Records every prefetch hint and apply; wants hints when `hints`.
    #[derive(Default)]
    struct Hinted {
        hints: bool,
        log: std::cell::RefCell<Vec<Asked>>,
    }

    impl StateMachine for Hinted {
        fn apply(&mut self, op: &[u8], _: &mut BytesMut) {
            self.log.get_mut().push(Asked::Apply(op.to_vec()));
        }
        fn query(&self, _: &[u8], _: &mut BytesMut) {}
        fn snapshot(&self, _: &mut Vec<u8>) {}
        fn restore(&mut self, _: &[u8]) -> Result<(), SnapshotError> {
            Ok(())
        }
        fn prefetch(&self, op: &[u8], near: bool) {
            self.log.borrow_mut().push(if near {
                Asked::Near(op.to_vec())
            } else {
                Asked::Far(op.to_vec())
            });
        }
        fn prefetches(&self) -> bool {
            self.hints
        }
    }

    /// Every command of a batch is hinted once far and once near, in
    /// order, `PREFETCH_FAR` and `PREFETCH_NEAR` commands ahead of the one
    /// applied (fewer at a batch's end), and then applied once, in order;
    /// a state machine that wants no hints gets none.
    #[test]
    fn prefetch_hints_run_ahead_of_every_command_once() {
        for n in [0u64, 1, 3, 4, 5, 8, 9, 20] {
            let cmds: Vec<(u64, u64, u64)> = (1..=n).map(|i| (i, 1, 1)).collect();
            let op = |i: u64| format!("{i}:1").into_bytes();
            for hints in [false, true] {
                let sm = Hinted {
                    hints,
                    ..Hinted::default()
                };
                let mut ex = Executor::new(sm, SessionLimits::default(), Slot(0));
                ex.apply(&slot(0, &cmds), &mut vec![]);
                let log = ex.state_machine().log.borrow();
                let applied: Vec<&Asked> = log
                    .iter()
                    .filter(|a| matches!(a, Asked::Apply(_)))
                    .collect();
                let want: Vec<Asked> = (1..=n).map(|i| Asked::Apply(op(i))).collect();
                assert_eq!(applied, want.iter().collect::<Vec<_>>(), "n {n}");
                if !hints {
                    assert_eq!(log.len(), n as usize, "hints not wanted, n {n}");
                    continue;
                }
                let (mut far, mut near, mut done) = (0u64, 0u64, 0u64);
                for a in log.iter() {
                    match a {
                        Asked::Far(o) => {
                            far += 1;
                            assert_eq!(*o, op(far), "far hints in order, n {n}");
                        }
                        Asked::Near(o) => {
                            near += 1;
                            assert_eq!(*o, op(near), "near hints in order, n {n}");
                        }
                        Asked::Apply(_) => {
                            done += 1;
                            let ahead = |d: usize| n.min(done + d as u64);
                            assert_eq!(far, ahead(PREFETCH_FAR), "far hints before {done}, n {n}");
                            assert_eq!(
                                near,
                                ahead(PREFETCH_NEAR),
                                "near hints before {done}, n {n}"
                            );
                        }
                    }
                }
                assert_eq!((far, near, done), (n, n, n), "n {n}");
            }
        }
    }

    /// Answers each op with the op itself.
    #[derive(Default)]
    struct Echo;

    impl StateMachine for Echo {
        fn apply(&mut self, op: &[u8], result: &mut BytesMut) {
            result.extend_from_slice(op);
        }
        fn query(&self, _: &[u8], _: &mut BytesMut) {}
        fn snapshot(&self, _: &mut Vec<u8>) {}
        fn restore(&mut self, _: &[u8]) -> Result<(), SnapshotError> {
            Ok(())
        }
    }

    /// Results of every length come back whole, one-byte ones (static
    /// copies) included, and a retry gets its command's result.
    #[test]
    fn results_of_every_length_are_answered_as_written() {
        let ops: Vec<Vec<u8>> = vec![
            vec![],
            vec![7],
            vec![1, 2],
            vec![255],
            vec![0],
            vec![9; 300],
        ];
        let mut ex = Executor::new(Echo, SessionLimits::default(), Slot(0));
        // Client 1's commands (seq, op) in one slot; their replies.
        let mut apply = |slot: u64, cmds: &[(u64, &[u8])]| {
            let mut b = BatchBuilder::with_capacity(64);
            for (seq, op) in cmds {
                b.push(ClientId(1), *seq, 1, op);
            }
            let mut replies = vec![];
            ex.apply(
                &Apply {
                    slot: Slot(slot),
                    value: Value::Batch(b.finish()),
                },
                &mut replies,
            );
            replies
        };
        let cmds: Vec<(u64, &[u8])> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| (i as u64 + 1, &op[..]))
            .collect();
        let replies = apply(0, &cmds);
        let got: Vec<Vec<u8>> = replies
            .iter()
            .map(|r| r.result.clone().unwrap().to_vec())
            .collect();
        assert_eq!(got, ops);
        // Seq 2's one-byte result, answered again to its retry.
        let again = apply(1, &[(2, &[8])]);
        assert_eq!(&again[0].result.clone().unwrap()[..], &[7]);
    }

    fn slot(slot: u64, cmds: &[(u64, u64, u64)]) -> Apply {
        let mut b = BatchBuilder::with_capacity(64);
        for (c, seq, ack) in cmds {
            b.push(ClientId(*c), *seq, *ack, format!("{c}:{seq}").as_bytes());
        }
        Apply {
            slot: Slot(slot),
            value: Value::Batch(b.finish()),
        }
    }

    #[test]
    fn a_retried_command_applies_once_and_gets_the_same_result() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        let mut replies = vec![];
        ex.apply(&slot(0, &[(1, 1, 1), (2, 1, 1)]), &mut replies);
        // The same (client 1, seq 1) proposed again by a new leader.
        ex.apply(&slot(1, &[(1, 1, 1), (1, 2, 1)]), &mut replies);
        assert_eq!(ex.state_machine().0.len(), 3);
        assert_eq!(replies[0].result, replies[2].result);
        assert_eq!(ex.stats().duplicates_answered, 1);
    }

    #[test]
    fn acknowledged_results_are_forgotten_and_late_retries_refused() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        let mut replies = vec![];
        ex.apply(&slot(0, &[(1, 1, 1), (1, 2, 1)]), &mut replies);
        // Client says it has every answer below 3.
        ex.apply(&slot(1, &[(1, 3, 3)]), &mut replies);
        replies.clear();
        ex.apply(&slot(2, &[(1, 1, 1)]), &mut replies);
        assert_eq!(replies[0].result, Err(ProposeError::SessionExpired));
        assert_eq!(ex.state_machine().0.len(), 3);
    }

    #[test]
    fn out_of_order_seqs_in_a_session_each_apply_once() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        let mut replies = vec![];
        ex.apply(&slot(0, &[(1, 5, 1), (1, 3, 1), (1, 4, 1)]), &mut replies);
        ex.apply(&slot(1, &[(1, 3, 1), (1, 5, 1)]), &mut replies);
        assert_eq!(ex.state_machine().0.len(), 3);
        assert_eq!(ex.stats().duplicates_answered, 2);
    }

    #[test]
    fn the_window_bounds_remembered_results() {
        let limits = SessionLimits {
            sessions_max: 10,
            session_window_max: 4,
            ..SessionLimits::default()
        };
        let mut ex = Executor::new(Append::default(), limits, Slot(0));
        let mut replies = vec![];
        for seq in 1..=10 {
            ex.apply(&slot(seq - 1, &[(1, seq, 1)]), &mut replies);
        }
        assert_eq!(ex.sessions[&ClientId(1)].results.len(), 4);
        replies.clear();
        ex.apply(&slot(10, &[(1, 6, 1)]), &mut replies);
        assert_eq!(replies[0].result, Err(ProposeError::SessionExpired));
        ex.apply(&slot(11, &[(1, 7, 1)]), &mut replies);
        assert!(replies[1].result.is_ok());
        assert_eq!(ex.stats().duplicates_answered, 1);
    }

    #[test]
    fn sessions_are_evicted_least_recently_used_first() {
        let limits = SessionLimits {
            sessions_max: 8,
            session_window_max: 4,
            ..SessionLimits::default()
        };
        let mut ex = Executor::new(Append::default(), limits, Slot(0));
        let mut replies = vec![];
        for c in 0..9 {
            ex.apply(&slot(c, &[(c, 1, 1)]), &mut replies);
        }
        assert_eq!(ex.sessions(), 7);
        assert!(!ex.sessions.contains_key(&ClientId(0)));
        assert!(ex.sessions.contains_key(&ClientId(8)));
        assert_eq!(ex.stats().sessions_evicted, 2);
    }

    /// Issue 21, finding 5: enough new client ids evict a live session;
    /// its retry of a command that executed (its answer lost) must not
    /// execute again, and nor may its next command (its session's results
    /// are gone): both are refused, as an expired session's are.
    #[test]
    fn an_evicted_session_is_refused_not_executed_again() {
        let limits = SessionLimits {
            sessions_max: 8,
            session_window_max: 4,
            ..SessionLimits::default()
        };
        let mut ex = Executor::new(Append::default(), limits, Slot(0));
        let mut replies = vec![];
        // Client 100 executes seq 1 and 2 (seq 1 acknowledged).
        ex.apply(&slot(0, &[(100, 1, 1)]), &mut replies);
        ex.apply(&slot(1, &[(100, 2, 2)]), &mut replies);
        let executed = ex.stats().commands_executed;
        for c in 0..9 {
            ex.apply(&slot(2 + c, &[(c, 1, 1)]), &mut replies);
        }
        assert!(!ex.sessions.contains_key(&ClientId(100)), "not evicted");
        replies.clear();
        // Its retry of seq 2 (answer lost), then its next command.
        ex.apply(&slot(11, &[(100, 2, 2)]), &mut replies);
        ex.apply(&slot(12, &[(100, 3, 2)]), &mut replies);
        assert_eq!(replies[0].result, Err(ProposeError::SessionExpired));
        assert_eq!(replies[1].result, Err(ProposeError::SessionExpired));
        assert_eq!(ex.stats().commands_executed, executed + 9);
        // A new session (nothing acknowledged) is served.
        ex.apply(&slot(13, &[(200, 1, 1)]), &mut replies);
        assert!(replies[2].result.is_ok());
    }

    #[test]
    fn a_configuration_change_is_kept_in_the_snapshot() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        assert_eq!(ex.membership(), None);
        let m = Membership::new(
            2,
            vec![crate::core::ReplicaId(3), crate::core::ReplicaId(4)],
        )
        .unwrap();
        ex.apply(&slot(0, &[(1, 1, 1)]), &mut vec![]);
        let change = Apply {
            slot: Slot(1),
            value: Value::Config(Box::new(m.clone())),
        };
        ex.apply(&change, &mut vec![]);
        assert_eq!(ex.membership(), Some(&m));
        // The application is told in order: after the command before it.
        assert_eq!(ex.state_machine().1, vec![(2, 1)]);
        let mut snap = vec![];
        ex.snapshot(&mut snap);
        let mut other = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        other.restore(&snap).unwrap();
        assert_eq!(other.membership(), Some(&m));
        assert_eq!(other.next_slot(), Slot(2));
        // A restored replica's application learns the configuration too.
        assert_eq!(other.state_machine().1, vec![(2, 1)]);
        // A damaged configuration is refused, not taken.
        snap[24] ^= 0xff; // the member count
        let mut bad = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        assert!(bad.restore(&snap).is_err());
    }

    #[test]
    fn snapshot_restore_round_trips_sessions_and_state() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        let mut replies = vec![];
        ex.apply(&slot(0, &[(1, 1, 1), (2, 7, 1)]), &mut replies);
        let mut snap = vec![];
        ex.snapshot(&mut snap);
        let mut other = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        other.restore(&snap).unwrap();
        assert_eq!(other.next_slot(), Slot(1));
        assert_eq!(other.sessions, ex.sessions);
        assert_eq!(other.state_machine().0, ex.state_machine().0);
        // A retry after restore is still answered from the session table.
        other.apply(&slot(1, &[(2, 7, 1)]), &mut replies);
        assert_eq!(other.stats().duplicates_answered, 1);
        for cut in 0..snap.len() {
            let mut e = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
            assert!(
                e.restore(&snap[..cut]).is_err(),
                "truncated snapshot at {cut} accepted"
            );
        }
    }

    const CLOSE: u64 = SESSION_CLOSE_SEQ;

    #[test]
    fn a_closed_session_leaves_the_table_and_its_stale_commands_are_refused() {
        let limits = SessionLimits {
            closed_session_slots: 10,
            ..SessionLimits::default()
        };
        let mut ex = Executor::new(Append::default(), limits, Slot(0));
        let mut replies = vec![];
        ex.apply(&slot(0, &[(1, 1, 1), (2, 1, 1)]), &mut replies);
        ex.apply(&slot(1, &[(1, CLOSE, 0)]), &mut replies);
        assert_eq!(replies[2].result, Ok(Bytes::new()));
        assert_eq!((ex.sessions(), ex.closed_sessions()), (1, 1));
        assert_eq!(ex.stats().sessions_closed, 1);
        // A stale copy of client 1's command, chosen after the close, is
        // refused: not executed again; a retried close changes nothing.
        replies.clear();
        ex.apply(&slot(2, &[(1, 1, 1), (1, CLOSE, 0)]), &mut replies);
        assert_eq!(replies[0].result, Err(ProposeError::SessionExpired));
        assert_eq!(replies[1].result, Ok(Bytes::new()));
        assert_eq!(ex.state_machine().0.len(), 2);
        assert_eq!((ex.sessions(), ex.closed_sessions()), (1, 1));
        ex.check_invariants();
        // Client 2's session is untouched: its retry is a duplicate.
        ex.apply(&slot(3, &[(2, 1, 1)]), &mut replies);
        assert_eq!(ex.stats().duplicates_answered, 1);
        // closed_session_slots after the close, the tombstone goes.
        for n in 4..11 {
            ex.apply(&slot(n, &[]), &mut replies);
            assert_eq!(ex.closed_sessions(), 1, "slot {n}");
        }
        ex.apply(&slot(11, &[]), &mut replies);
        assert_eq!(ex.closed_sessions(), 0);
        ex.check_invariants();
    }

    #[test]
    fn beyond_the_tombstone_bound_a_close_keeps_the_session() {
        let limits = SessionLimits {
            closed_sessions_max: 3,
            closed_session_slots: 6,
            ..SessionLimits::default()
        };
        let mut ex = Executor::new(Append::default(), limits, Slot(0));
        let mut replies = vec![];
        for c in 0..5 {
            ex.apply(&slot(c, &[(c, 1, 1), (c, CLOSE, 0)]), &mut replies);
            ex.check_invariants();
        }
        // Clients 0 to 2 closed; 3 and 4 keep their sessions (a stale
        // copy is then a duplicate, as before closes existed).
        assert_eq!((ex.sessions(), ex.closed_sessions()), (2, 3));
        assert_eq!(
            (ex.stats().sessions_closed, ex.stats().closes_deferred),
            (3, 2)
        );
        replies.clear();
        ex.apply(&slot(5, &[(0, 1, 1), (4, 1, 1)]), &mut replies);
        assert_eq!(replies[0].result, Err(ProposeError::SessionExpired));
        assert!(replies[1].result.is_ok());
        assert_eq!(ex.stats().duplicates_answered, 1);
        // Once tombstones expire, closes take effect again.
        ex.apply(&slot(6, &[]), &mut replies);
        assert_eq!(ex.closed_sessions(), 2);
        // (Client 4 closes; client 1's tombstone, from slot 1, goes.)
        ex.apply(&slot(7, &[(4, CLOSE, 0)]), &mut replies);
        assert_eq!((ex.sessions(), ex.closed_sessions()), (1, 2));
        assert_eq!(ex.stats().sessions_closed, 4);
        ex.check_invariants();
    }

    #[test]
    fn snapshot_restore_round_trips_closed_sessions() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        let mut replies = vec![];
        ex.apply(
            &slot(0, &[(1, 1, 1), (2, 1, 1), (1, CLOSE, 0)]),
            &mut replies,
        );
        ex.apply(&slot(1, &[(3, CLOSE, 0)]), &mut replies);
        let mut snap = vec![];
        ex.snapshot(&mut snap);
        let mut other = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        other.restore(&snap).unwrap();
        other.check_invariants();
        assert_eq!(other.closed, ex.closed);
        assert_eq!(other.closed_clients, ex.closed_clients);
        other.apply(&slot(2, &[(1, 2, 2)]), &mut replies);
        assert_eq!(
            replies.last().unwrap().result,
            Err(ProposeError::SessionExpired)
        );
        // A tombstone beyond the checkpoint's slot, or too old for it, is
        // refused: checksums do not make contents sound.
        let at = snap.len()
            - ex.state_machine()
                .0
                .iter()
                .map(|o| 8 + o.len())
                .sum::<usize>()
            - 8;
        let tombstones = at - 2 * 16;
        let mut future = snap.clone();
        future[tombstones + 16..tombstones + 24].copy_from_slice(&2u64.to_le_bytes());
        assert!(
            Executor::new(Append::default(), SessionLimits::default(), Slot(0))
                .restore(&future)
                .is_err()
        );
        let tight = SessionLimits {
            closed_session_slots: 1,
            ..SessionLimits::default()
        };
        assert!(
            Executor::new(Append::default(), tight, Slot(0))
                .restore(&snap)
                .is_err()
        );
    }

    proptest::proptest! {
        /// Commands of a few clients, retried, duplicated and closed in any
        /// order, with checkpoints taken and restored anywhere: the state
        /// (session table and tombstones included) is the same as without
        /// the checkpoints, no command executes twice, and nothing of a
        /// closed session executes while its tombstone lives.
        #[test]
        fn sessions_and_closes_survive_checkpoints_and_never_execute_twice(
            steps in proptest::collection::vec((0u64..4, 0u64..6, proptest::bool::ANY, 0u8..8), 1..120),
        ) {
            let limits = SessionLimits {
                sessions_max: 3,
                session_window_max: 4,
                closed_sessions_max: 2,
                closed_session_slots: 5,
            };
            let mut a = Executor::new(Append::default(), limits, Slot(0));
            let mut b = Executor::new(Append::default(), limits, Slot(0));
            let mut replies = vec![];
            // Step of each command's first execution; the last step at
            // which each client had neither a session nor a tombstone.
            let mut first_run = std::collections::HashMap::new();
            let mut lost_at = std::collections::HashMap::new();
            for (n, (client, seq, close, snap)) in steps.into_iter().enumerate() {
                let seq = if close { CLOSE } else { seq + 1 };
                let ack = if close { 0 } else { seq.saturating_sub(2).max(1) };
                let tombstoned = a.closed_clients.contains(&ClientId(client));
                let before = a.state_machine().0.len();
                let apply = slot(n as u64, &[(client, seq, ack)]);
                a.apply(&apply, &mut replies);
                b.apply(&apply, &mut replies);
                a.check_invariants();
                let ran = a.state_machine().0.len() > before;
                proptest::prop_assert!(!(ran && tombstoned), "a closed session's command ran");
                if ran {
                    // Again only if the session was forgotten (evicted, or
                    // its tombstone expired) since it first ran.
                    if let Some(first) = first_run.get(&(client, seq)) {
                        let forgotten = lost_at.get(&client).is_some_and(|l| l > first);
                        proptest::prop_assert!(forgotten, "({}, {}) ran twice", client, seq);
                    }
                    first_run.insert((client, seq), n);
                }
                for c in 0..4u64 {
                    let id = ClientId(c);
                    if !a.sessions.contains_key(&id) && !a.closed_clients.contains(&id) {
                        lost_at.insert(c, n);
                    }
                }
                if snap == 0 {
                    let mut bytes = vec![];
                    b.snapshot(&mut bytes);
                    let mut c = Executor::new(Append::default(), limits, Slot(0));
                    c.restore(&bytes).unwrap();
                    c.check_invariants();
                    b = c;
                }
            }
            let (mut x, mut y) = (vec![], vec![]);
            a.snapshot(&mut x);
            b.snapshot(&mut y);
            proptest::prop_assert_eq!(x, y);
        }
    }

    #[test]
    #[should_panic(expected = "in order")]
    fn applying_out_of_order_panics() {
        let mut ex = Executor::new(Append::default(), SessionLimits::default(), Slot(0));
        ex.apply(&slot(1, &[]), &mut vec![]);
    }
}
