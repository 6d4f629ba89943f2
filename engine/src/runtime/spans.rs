//! The replica's own `tracing` spans of its rare, long operations:
//! elections, checkpoints (frozen on the core task, serialized and
//! written on a thread), catch-up of log slots and checkpoint fetches from a peer. Each lives from the moment
//! the core task sees the operation begin until it sees it end, so it is
//! held here rather than entered around code; every span is a root
//! (`parent: None`) so a subscriber that draws async slices (the replica's
//! `--chrome-trace`, `tracing-chrome` in its async style) gives each its
//! own track.
//!
//! These are INFO spans created a few times per checkpoint interval,
//! election or catch-up: nothing here runs per command (the catch-up check
//! is one `Option` per burst). Role changes and peer connections are
//! `tracing` events where they happen.

use tracing::Span;

use crate::core::{Ballot, RoleKind, Slot};

/// The spans in progress. Dropping one ends it.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    /// From this replica standing for election until it leads or follows.
    election: Option<Span>,
    /// From the snapshot being taken until the checkpoint is durable (or
    /// failed).
    checkpoint: Option<Span>,
    /// From asking a peer for a checkpoint until it is installed (or not).
    fetch: Option<Span>,
    /// While a follower's catch-up request for log slots is outstanding.
    catchup: Option<Span>,
}

impl Spans {
    /// The core's role (as published after a burst) is now `role`.
    pub fn role(&mut self, role: RoleKind, ballot: Ballot) {
        match role {
            RoleKind::Candidate => {
                if self.election.is_none() {
                    self.election = Some(tracing::info_span!(
                        parent: None,
                        "election",
                        ballot = %ballot,
                        outcome = tracing::field::Empty,
                        final_ballot = tracing::field::Empty,
                    ));
                }
            }
            RoleKind::Leader | RoleKind::Follower => {
                if let Some(span) = self.election.take() {
                    let outcome = if role == RoleKind::Leader {
                        "won"
                    } else {
                        "lost"
                    };
                    span.record("outcome", outcome);
                    span.record("final_ballot", tracing::field::display(ballot));
                }
            }
        }
    }

    /// A checkpoint of the state at `slot` is being taken: the returned
    /// guard covers freezing the state on the core task (drop it when
    /// done); the checkpoint thread serializes under [`Spans::checkpoint`].
    pub fn checkpoint_started(&mut self, slot: Slot) -> tracing::span::EnteredSpan {
        let span = tracing::info_span!(
            parent: None,
            "checkpoint",
            slot = slot.0,
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let freeze = tracing::info_span!(parent: &span, "checkpoint.freeze").entered();
        self.checkpoint = Some(span);
        freeze
    }

    /// The checkpoint in progress, for the thread that writes it.
    pub fn checkpoint(&self) -> Span {
        self.checkpoint.clone().unwrap_or_else(Span::none)
    }

    /// The frozen state is on its way to the writer thread (`queued`), or
    /// was not taken after all (the thread is busy).
    pub fn checkpoint_queued(&mut self, queued: bool) {
        if !queued && let Some(span) = self.checkpoint.take() {
            span.record("outcome", "dropped: the writer is busy");
        }
    }

    /// The checkpoint in flight is durable (`Ok`) or failed.
    pub fn checkpoint_done(&mut self, outcome: Result<(), &str>) {
        if let Some(span) = self.checkpoint.take() {
            span.record("outcome", outcome.err().unwrap_or("written"));
        }
    }

    /// After each burst: the end of the slots this follower's catch-up
    /// request asked for while its commit point is short of them (`None`:
    /// not catching up), and its commit point. A span covers each stretch
    /// of catching up (a retry or a wider ask extends it).
    pub fn catchup(&mut self, asked: Option<Slot>, commit: Slot) {
        match (asked, &self.catchup) {
            (Some(to), None) => {
                self.catchup = Some(tracing::info_span!(
                    parent: None,
                    "catchup.log",
                    from = commit.0,
                    to = to.0,
                    reached = tracing::field::Empty,
                ));
            }
            (None, Some(span)) => {
                span.record("reached", commit.0);
                self.catchup = None;
            }
            _ => {}
        }
    }

    /// This replica asks `peer` for a checkpoint of at least `at_least`.
    pub fn fetch_started(&mut self, peer: u32, at_least: Slot) {
        self.fetch = Some(tracing::info_span!(
            parent: None,
            "catchup.checkpoint",
            peer,
            at_least = at_least.0,
            outcome = tracing::field::Empty,
        ));
    }

    /// The fetch ended: installed, not needed, or failed (`outcome` says).
    pub fn fetch_done(&mut self, outcome: &str) {
        if let Some(span) = self.fetch.take() {
            span.record("outcome", outcome);
        }
    }
}
