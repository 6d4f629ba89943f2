//! Protocol messages, one struct each, in Paxos words.
//!
//! Two marker traits put the durability rule of DESIGN.md into the types:
//! a message that reports acceptor state ([`Promise`], [`Accepted`]) is
//! [`SendAfterPersist`] and can only be queued behind the persist that makes
//! that state durable; every other message is [`SendNow`].

use super::types::{Ballot, ClusterId, ReplicaId, Slot};
use super::value::Value;

/// Phase 1a: a candidate asks for a promise for every slot from `from` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    pub ballot: Ballot,
    /// The candidate's commit point: it knows the chosen value of every
    /// slot below this and asks only about the rest.
    pub from: Slot,
}

/// One accepted value reported in a [`Promise`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromiseEntry {
    pub slot: Slot,
    pub ballot: Ballot,
    pub value: Value,
}

/// Phase 1b: an acceptor promises `ballot` and reports what it accepted.
/// Sent only after the promise and every reported entry are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    pub ballot: Ballot,
    /// Every slot at or beyond `Prepare::from` the acceptor has accepted, in slot order.
    pub entries: Vec<PromiseEntry>,
    /// The acceptor's commit point (for the candidate's information).
    pub commit: Slot,
    /// The report stopped early to stay within `promise_bytes_max`: ask
    /// again from this slot (same ballot) for the rest. `None`: complete.
    pub more: Option<Slot>,
}

/// Phase 2a: the leader of `ballot` asks acceptors to accept `value` in `slot`.
/// Also used to send chosen values to a follower that is catching up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    pub ballot: Ballot,
    pub slot: Slot,
    pub value: Value,
    /// The leader's commit point, piggybacked.
    pub commit: Slot,
}

/// Phase 2b: the acceptor accepted every slot in `[first, end)` at `ballot`.
/// Sent only after those entries are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub ballot: Ballot,
    pub first: Slot,
    pub end: Slot,
}

/// The leader's commit point, sent when no Accept is going out to carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub ballot: Ballot,
    pub commit: Slot,
}

/// Periodic liveness signal from the leader; answered by [`HeartbeatReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub ballot: Ballot,
    pub commit: Slot,
}

/// A follower's answer to a [`Heartbeat`]: it still follows `ballot`, and
/// how far it has committed (the leader's view of its lag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub ballot: Ballot,
    pub commit: Slot,
}

/// Why an acceptor refused a Prepare or an Accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// The acceptor has promised a higher ballot (`Nack::promised`).
    Superseded,
    /// The candidate is too far behind the acceptor's commit point to lead;
    /// an up-to-date replica should lead instead.
    Lagging,
    /// The acceptor lost accepted entries to corruption in the range asked
    /// about and cannot report them until it has learned them; ask others.
    Unprovable,
    /// The acceptor hears from a live leader (`Nack::promised` is its
    /// ballot): a replica cut off from that leader must not depose it.
    LeaderAlive,
}

/// A refusal of `ballot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The ballot being refused.
    pub ballot: Ballot,
    pub reason: NackReason,
    /// The acceptor's promised ballot.
    pub promised: Ballot,
    /// The acceptor's commit point.
    pub commit: Slot,
}

/// A follower that knows slots up to `to` are chosen but lacks their values
/// asks the leader of `ballot` for `[from, to)`; the leader answers with
/// [`Accept`]s of the chosen values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchupRequest {
    pub ballot: Ballot,
    pub from: Slot,
    pub to: Slot,
}

/// The leader of `ballot` no longer holds the slots a follower asked for:
/// its log starts at `log_start`. The follower fetches a checkpoint at or
/// beyond it (outside the protocol: [`crate::FetchCheckpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointNeeded {
    pub ballot: Ballot,
    pub log_start: Slot,
}

/// Every protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Prepare(Prepare),
    Promise(Promise),
    Accept(Accept),
    Accepted(Accepted),
    Commit(Commit),
    Heartbeat(Heartbeat),
    HeartbeatReply(HeartbeatReply),
    Nack(Nack),
    CatchupRequest(CatchupRequest),
    CheckpointNeeded(CheckpointNeeded),
}

impl Message {
    /// A short name for traces and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare(_) => "prepare",
            Message::Promise(_) => "promise",
            Message::Accept(_) => "accept",
            Message::Accepted(_) => "accepted",
            Message::Commit(_) => "commit",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatReply(_) => "heartbeat_reply",
            Message::Nack(_) => "nack",
            Message::CatchupRequest(_) => "catchup_request",
            Message::CheckpointNeeded(_) => "checkpoint_needed",
        }
    }

    /// The ballot the message is about.
    pub fn ballot(&self) -> Ballot {
        match self {
            Message::Prepare(m) => m.ballot,
            Message::Promise(m) => m.ballot,
            Message::Accept(m) => m.ballot,
            Message::Accepted(m) => m.ballot,
            Message::Commit(m) => m.ballot,
            Message::Heartbeat(m) => m.ballot,
            Message::HeartbeatReply(m) => m.ballot,
            Message::Nack(m) => m.ballot,
            Message::CatchupRequest(m) => m.ballot,
            Message::CheckpointNeeded(m) => m.ballot,
        }
    }
}

/// A message with its routing header. Every message carries the cluster id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub cluster: ClusterId,
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub msg: Message,
}

/// Messages that claim nothing about the sender's durable state: they may
/// be sent as soon as they are produced.
pub trait SendNow: Into<Message> {}

/// Messages that report acceptor state: they may be sent only once that
/// state is durable. The core queues them behind the persist that covers it.
pub trait SendAfterPersist: Into<Message> {}

macro_rules! message_from {
    ($($name:ident: $marker:ident),* $(,)?) => {$(
        impl From<$name> for Message {
            fn from(m: $name) -> Message {
                Message::$name(m)
            }
        }
        impl $marker for $name {}
    )*};
}

message_from!(
    Prepare: SendNow,
    Promise: SendAfterPersist,
    Accept: SendNow,
    Accepted: SendAfterPersist,
    Commit: SendNow,
    Heartbeat: SendNow,
    HeartbeatReply: SendNow,
    Nack: SendNow,
    CatchupRequest: SendNow,
    CheckpointNeeded: SendNow,
);
