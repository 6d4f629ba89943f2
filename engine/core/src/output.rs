//! What the core asks its driver to do, and the outbox that enforces the
//! durability rules while producing it.
//!
//! A driver (the runtime, the simulator, a test) calls the core's input
//! handlers, then [`crate::Replica::drain`], and carries out the
//! [`Output`] in this order of obligations:
//!
//! - `persist`: write each request to storage, in token order; after a sync
//!   call `on_persisted(token)` with the highest durable token. Requests may be
//!   group-committed (one sync for many).
//! - `send`: send each envelope. They may go out at once: nothing here
//!   depends on an unfinished persist (such messages are held inside the
//!   core and appear here only after `on_persisted`).
//! - `apply`: apply each committed slot to the state machine, in order.
//! - `replies`: answer clients (refusals; results come from the executor).

use std::collections::VecDeque;

use bytes::Bytes;
use thiserror::Error;

use super::message::{Accepted, Envelope, Message, SendAfterPersist, SendNow};
use super::types::{Ballot, ClientId, ClusterId, PersistToken, ReplicaId, Slot};
use super::value::Value;

/// One accepted entry to write to the durable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryWrite {
    pub slot: Slot,
    pub ballot: Ballot,
    pub value: Value,
}

/// Writes that must become durable together before the messages that
/// depend on them go out. Storage applies the fields in this order:
/// `promised`, then `entries` in order, then `commit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistRequest {
    pub token: PersistToken,
    /// A new promised ballot (stable state), if it changed.
    pub promised: Option<Ballot>,
    /// Accepted entries, in the order they were accepted. A later write to
    /// the same slot replaces an earlier one.
    pub entries: Vec<EntryWrite>,
    /// Every slot below this is chosen and its entry holds the chosen value.
    /// Safe to lose for agreement (a replica learns the commit point again
    /// from a leader), but a heartbeat reply reports it only once durable:
    /// a leader releases removed members on it.
    pub commit: Option<Slot>,
}

/// A committed slot, handed over for execution exactly once, in slot order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Apply {
    pub slot: Slot,
    pub value: Value,
}

/// The follower is too far behind for the log: its driver should fetch a
/// checkpoint at `at_least` or beyond from `from` (off the replication
/// path), then call [`crate::Replica::install_checkpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchCheckpoint {
    pub from: ReplicaId,
    pub at_least: Slot,
}

/// Why a command was not (or will not be) executed for the client that sent it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica does not lead; try `hint` if known.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader { hint: Option<ReplicaId> },
    /// The leader's queue is full; retry later.
    #[error("busy: the leader's queue is full")]
    Busy,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The session has moved past this sequence number (its result was
    /// acknowledged or forgotten); the outcome is unknown to the replica.
    #[error("session expired for this sequence number")]
    SessionExpired,
}

/// An answer for one client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub client: ClientId,
    pub seq: u64,
    pub result: Result<Bytes, ProposeError>,
}

/// Everything one drain of the core produced. Buffers are swapped, not
/// reallocated: pass the same `Output` back after clearing it.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<Envelope>,
    pub persist: Vec<PersistRequest>,
    pub apply: Vec<Apply>,
    pub replies: Vec<ClientReply>,
    /// A checkpoint to fetch (at most one ask per drain).
    pub fetch_checkpoint: Option<FetchCheckpoint>,
}

impl Output {
    pub fn clear(&mut self) {
        self.send.clear();
        self.persist.clear();
        self.apply.clear();
        self.replies.clear();
        self.fetch_checkpoint = None;
    }

    pub fn is_empty(&self) -> bool {
        self.send.is_empty()
            && self.persist.is_empty()
            && self.apply.is_empty()
            && self.replies.is_empty()
            && self.fetch_checkpoint.is_none()
    }
}

/// Writes accumulated since the last drain; they become one request.
#[derive(Debug, Default)]
struct PendingWrites {
    promised: Option<Ballot>,
    entries: Vec<EntryWrite>,
    /// The commit point must be written even if nothing else is.
    commit: bool,
}

impl PendingWrites {
    fn is_empty(&self) -> bool {
        self.promised.is_none() && self.entries.is_empty() && !self.commit
    }
}

/// Collects the core's outputs and holds back messages until the writes
/// they report are durable.
#[derive(Debug)]
pub(crate) struct Outbox {
    cluster: ClusterId,
    from: ReplicaId,
    pub(crate) send: Vec<Envelope>,
    pub(crate) apply: Vec<Apply>,
    pub(crate) replies: Vec<ClientReply>,
    pub(crate) fetch_checkpoint: Option<FetchCheckpoint>,
    persist: Vec<PersistRequest>,
    pending: PendingWrites,
    /// Messages waiting for `token` to be durable, in token order.
    after_persist: VecDeque<(PersistToken, Envelope)>,
    /// The token the next issued request gets.
    /// Invariant: `durable < next_token`.
    next_token: PersistToken,
    /// Highest token reported durable.
    durable: PersistToken,
    /// Highest commit point already written as a hint.
    commit_written: Slot,
    /// Commit points written and not yet durable, by the token covering
    /// each (at most one per outstanding request).
    commit_unsynced: VecDeque<(PersistToken, Slot)>,
    /// Highest commit point known durable.
    commit_durable: Slot,
    /// Planted bug: hand out Promise/Accepted before their persist completes.
    reply_before_persist: bool,
    pub(crate) held_back: u64,
    pub(crate) requests: u64,
}

impl Outbox {
    pub(crate) fn new(cluster: ClusterId, from: ReplicaId, reply_before_persist: bool) -> Outbox {
        Outbox {
            cluster,
            from,
            send: Vec::new(),
            apply: Vec::new(),
            replies: Vec::new(),
            fetch_checkpoint: None,
            persist: Vec::new(),
            pending: PendingWrites::default(),
            after_persist: VecDeque::new(),
            next_token: PersistToken(1),
            durable: PersistToken(0),
            commit_written: Slot::ZERO,
            commit_unsynced: VecDeque::new(),
            commit_durable: Slot::ZERO,
            reply_before_persist,
            held_back: 0,
            requests: 0,
        }
    }

    fn envelope(&self, to: ReplicaId, msg: Message) -> Envelope {
        debug_assert_ne!(to, self.from, "message to self");
        Envelope {
            cluster: self.cluster,
            from: self.from,
            to,
            msg,
        }
    }

    /// Sends a message that claims nothing about durable state.
    #[inline]
    pub(crate) fn send_now<M: SendNow>(&mut self, to: ReplicaId, m: M) {
        let env = self.envelope(to, m.into());
        self.send.push(env);
    }

    /// Sends a message that reports acceptor state once everything written
    /// so far is durable.
    pub(crate) fn send_after_persist<M: SendAfterPersist>(&mut self, to: ReplicaId, m: M) {
        let env = self.envelope(to, m.into());
        let need = self.covering_token();
        if need <= self.durable || self.reply_before_persist {
            push_coalesced(&mut self.send, env);
            return;
        }
        self.held_back += 1;
        if let Some((t, last)) = self.after_persist.back_mut()
            && *t == need
            && coalesce(last, &env)
        {
            return;
        }
        self.after_persist.push_back((need, env));
    }

    /// The token that covers every write made so far.
    fn covering_token(&self) -> PersistToken {
        if self.pending.is_empty() {
            PersistToken(self.next_token.0 - 1)
        } else {
            self.next_token
        }
    }

    /// Writes a new promised ballot; returns the token that will cover it.
    pub(crate) fn write_promised(&mut self, ballot: Ballot) -> PersistToken {
        self.pending.promised = Some(ballot);
        self.next_token
    }

    /// Writes an accepted entry; returns the token that will cover it.
    #[inline]
    pub(crate) fn write_entry(&mut self, slot: Slot, ballot: Ballot, value: Value) -> PersistToken {
        self.pending.entries.push(EntryWrite {
            slot,
            ballot,
            value,
        });
        self.next_token
    }

    /// Writes the commit point `commit` unless it was written already (a
    /// request of its own if nothing else is written): a heartbeat reply
    /// reports the durable one, and a leader releases removed members on
    /// the strength of it.
    pub(crate) fn write_commit(&mut self, commit: Slot) {
        if commit > self.commit_written {
            self.pending.commit = true;
        }
    }

    /// Storage recovered the commit point `commit`: durable already.
    pub(crate) fn recovered_commit(&mut self, commit: Slot) {
        self.commit_written = self.commit_written.max(commit);
        self.commit_durable = self.commit_durable.max(commit);
    }

    /// The highest commit point storage made durable (a restart recovers
    /// at least this far).
    pub(crate) fn commit_durable(&self) -> Slot {
        self.commit_durable
    }

    /// Seals pending writes into one request, adding the commit point as a
    /// hint when it moved (a request of its own only after
    /// [`Outbox::write_commit`]).
    pub(crate) fn seal(&mut self, commit: Slot) {
        if self.pending.is_empty() {
            return;
        }
        let hint = (commit > self.commit_written).then_some(commit);
        if let Some(c) = hint {
            self.commit_written = c;
            self.commit_unsynced.push_back((self.next_token, c));
        }
        let pending = std::mem::take(&mut self.pending);
        self.persist.push(PersistRequest {
            token: self.next_token,
            promised: pending.promised,
            entries: pending.entries,
            commit: hint,
        });
        self.requests += 1;
        self.next_token = PersistToken(self.next_token.0 + 1);
    }

    /// Records that every request up to `token` is durable and releases the
    /// messages that waited for it.
    /// Precondition: `token` was issued and is not below the durable mark.
    pub(crate) fn persisted(&mut self, token: PersistToken) {
        assert!(
            token.0 < self.next_token.0,
            "persisted token {token:?} was never issued"
        );
        assert!(token >= self.durable, "persisted token went backwards");
        self.durable = token;
        while let Some(&(t, c)) = self.commit_unsynced.front() {
            if t > token {
                break;
            }
            self.commit_durable = c;
            self.commit_unsynced.pop_front();
        }
        while let Some((t, _)) = self.after_persist.front() {
            if *t > token {
                break;
            }
            let (_, env) = self.after_persist.pop_front().expect("front exists");
            push_coalesced(&mut self.send, env);
        }
        debug_assert!(self.after_persist.iter().all(|(t, _)| *t > self.durable));
    }

    /// Highest durable token.
    pub(crate) fn durable(&self) -> PersistToken {
        self.durable
    }

    /// Hands every output to `out` (swapping buffers, no allocation).
    pub(crate) fn drain(&mut self, out: &mut Output) {
        debug_assert!(out.is_empty(), "drain into a non-empty Output");
        std::mem::swap(&mut self.send, &mut out.send);
        std::mem::swap(&mut self.persist, &mut out.persist);
        std::mem::swap(&mut self.apply, &mut out.apply);
        std::mem::swap(&mut self.replies, &mut out.replies);
        out.fetch_checkpoint = self.fetch_checkpoint.take();
    }

    /// Drops everything not yet handed out (the replica stopped).
    pub(crate) fn discard(&mut self) {
        self.send.clear();
        self.persist.clear();
        self.apply.clear();
        self.replies.clear();
        self.fetch_checkpoint = None;
        self.pending = PendingWrites::default();
        self.after_persist.clear();
    }

    pub(crate) fn check_invariants(&self) {
        assert!(
            self.durable < self.next_token,
            "durable token beyond issued"
        );
        let mut last = PersistToken(0);
        for (t, env) in &self.after_persist {
            assert!(*t > self.durable, "held message already durable");
            assert!(
                *t <= self.next_token,
                "held message waits for an unissued token"
            );
            assert!(*t >= last, "held messages out of token order");
            assert!(
                matches!(env.msg, Message::Promise(_) | Message::Accepted(_)),
                "held message does not report durable state"
            );
            last = *t;
        }
    }
}

/// Pushes `env`, merging it into the previous message when both are
/// Accepted ranges from the same ballot to the same leader that touch.
fn push_coalesced(send: &mut Vec<Envelope>, env: Envelope) {
    if let Some(last) = send.last_mut()
        && coalesce(last, &env)
    {
        return;
    }
    send.push(env);
}

/// Extends `last` by `next` if both are contiguous Accepted ranges to the
/// same destination in the same ballot; returns whether it did.
fn coalesce(last: &mut Envelope, next: &Envelope) -> bool {
    if last.to != next.to {
        return false;
    }
    match (&mut last.msg, &next.msg) {
        (Message::Accepted(a), Message::Accepted(b))
            if a.ballot == b.ballot && a.end == b.first =>
        {
            a.end = b.end;
            true
        }
        _ => false,
    }
}

/// An Accepted for one slot.
pub(crate) fn accepted_one(ballot: Ballot, slot: Slot) -> Accepted {
    Accepted {
        ballot,
        first: slot,
        end: slot.next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Commit, Promise};

    fn outbox() -> Outbox {
        Outbox::new(ClusterId(7), ReplicaId(1), false)
    }

    #[test]
    fn durable_messages_wait_for_their_token() {
        let mut o = outbox();
        let b = Ballot::new(1, ReplicaId(2));
        let t = o.write_entry(Slot(0), b, Value::Noop);
        o.send_after_persist(ReplicaId(2), accepted_one(b, Slot(0)));
        o.send_now(
            ReplicaId(3),
            Commit {
                ballot: b,
                commit: Slot(0),
            },
        );
        assert_eq!(o.send.len(), 1, "only the Commit goes now");
        o.seal(Slot(0));
        assert_eq!(o.persist.len(), 1);
        assert_eq!(o.persist[0].token, t);
        o.persisted(t);
        assert_eq!(o.send.len(), 2);
        assert!(matches!(o.send[1].msg, Message::Accepted(_)));
        o.check_invariants();
    }

    #[test]
    fn nothing_pending_means_nothing_to_wait_for() {
        let mut o = outbox();
        let b = Ballot::new(1, ReplicaId(2));
        o.send_after_persist(
            ReplicaId(2),
            Promise {
                ballot: b,
                entries: vec![],
                commit: Slot(0),
                more: None,
            },
        );
        assert_eq!(o.send.len(), 1);
    }

    #[test]
    fn a_message_waits_for_an_issued_but_unfinished_request() {
        let mut o = outbox();
        let b = Ballot::new(1, ReplicaId(2));
        let t = o.write_promised(b);
        o.seal(Slot(0));
        // Nothing pending now, but request t is not durable yet.
        o.send_after_persist(ReplicaId(2), accepted_one(b, Slot(0)));
        assert!(o.send.is_empty());
        o.persisted(t);
        assert_eq!(o.send.len(), 1);
    }

    #[test]
    fn contiguous_accepteds_coalesce() {
        let mut o = outbox();
        let b = Ballot::new(1, ReplicaId(2));
        for s in 0..5 {
            o.write_entry(Slot(s), b, Value::Noop);
            o.send_after_persist(ReplicaId(2), accepted_one(b, Slot(s)));
        }
        o.seal(Slot(0));
        o.persisted(PersistToken(1));
        assert_eq!(o.send.len(), 1);
        assert_eq!(
            o.send[0].msg,
            Message::Accepted(Accepted {
                ballot: b,
                first: Slot(0),
                end: Slot(5)
            })
        );
    }

    #[test]
    fn commit_hint_rides_only_on_real_writes() {
        let mut o = outbox();
        o.seal(Slot(10));
        assert!(o.persist.is_empty(), "a commit hint alone is not a request");
        o.write_entry(Slot(10), Ballot::new(1, ReplicaId(1)), Value::Noop);
        o.seal(Slot(10));
        assert_eq!(o.persist[0].commit, Some(Slot(10)));
        o.write_entry(Slot(11), Ballot::new(1, ReplicaId(1)), Value::Noop);
        o.seal(Slot(10));
        assert_eq!(o.persist[1].commit, None, "unchanged hint is not rewritten");
    }

    #[test]
    #[should_panic(expected = "never issued")]
    fn persisting_an_unissued_token_panics() {
        let mut o = outbox();
        o.persisted(PersistToken(1));
    }
}
