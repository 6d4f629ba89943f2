//! Counters of everything the core ignores, retries or decides.
//!
//! Every ignored input has a reason here (never a silent `_ => {}`), and
//! every counter doubles as a coverage mark: a test hits each ignore and
//! retry path and asserts its counter moved.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident => $text:literal,)*) => {
        /// One thing the core counts.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter {
            $($(#[doc = $doc])* $name,)*
        }

        impl Counter {
            /// Every counter, in declaration order.
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The counter's name in reports (snake case).
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$name => $text,)*
                }
            }
        }
    };
}

counters! {
    /// A message from another cluster was refused.
    IgnoreWrongCluster => "ignore_wrong_cluster",
    /// A message from a replica that is not a member, or addressed elsewhere.
    IgnoreNotMember => "ignore_not_member",
    /// A Prepare, Accept, Commit or Heartbeat whose ballot belongs to another replica.
    IgnoreBallotNotSender => "ignore_ballot_not_sender",
    /// Input arrived after the replica stopped on a storage failure.
    IgnoreStopped => "ignore_stopped",
    /// A Prepare below the promised ballot (answered with a Nack).
    IgnorePrepareStale => "ignore_prepare_stale",
    /// A Prepare from a candidate too far behind (answered with a Nack).
    IgnorePrepareLagging => "ignore_prepare_lagging",
    /// A Prepare covering slots this replica lost to corruption (answered with a Nack).
    IgnorePrepareUnprovable => "ignore_prepare_unprovable",
    /// A Prepare while a live leader is heard from (answered with a Nack).
    IgnorePrepareLeaderAlive => "ignore_prepare_leader_alive",
    /// An Accept below the promised ballot (answered with a Nack).
    IgnoreAcceptStale => "ignore_accept_stale",
    /// An Accept too far beyond this replica's commit point (dropped; retransmitted later).
    IgnoreAcceptBeyondLogAhead => "ignore_accept_beyond_log_ahead",
    /// An Accept with the ballot of an accepted entry but a different value (refused).
    IgnoreAcceptConflict => "ignore_accept_conflict",
    /// An Accept whose value differs from the one committed in its slot (refused).
    IgnoreAcceptConflictsCommitted => "ignore_accept_conflicts_committed",
    /// A Promise while not a candidate for its ballot.
    IgnorePromiseStale => "ignore_promise_stale",
    /// A second Promise from the same acceptor.
    IgnorePromiseDuplicate => "ignore_promise_duplicate",
    /// An Accepted while not leading its ballot.
    IgnoreAcceptedStale => "ignore_accepted_stale",
    /// An Accepted for slots this leader never proposed (beyond its next slot).
    IgnoreAcceptedOutsideWindow => "ignore_accepted_outside_window",
    /// An Accepted that arrived after its slots were committed (the normal
    /// fate of the votes beyond a quorum).
    AcceptedAfterCommit => "accepted_after_commit",
    /// A Nack for a ballot this replica no longer runs.
    IgnoreNackStale => "ignore_nack_stale",
    /// A Commit or Heartbeat from a leader below the promised ballot (answered with a Nack).
    IgnoreCommitStale => "ignore_commit_stale",
    /// A HeartbeatReply while not leading its ballot.
    IgnoreHeartbeatReplyStale => "ignore_heartbeat_reply_stale",
    /// A catch-up request while not leading its ballot.
    IgnoreCatchupStale => "ignore_catchup_stale",
    /// A catch-up request served by the former leader of its ballot (it
    /// stepped down or departs; see `Replica::on_catchup_request`).
    CatchupServedAfterLeading => "catchup_served_after_leading",
    /// A departing replica that heard no leader for a timeout asked the
    /// members of its configuration to release it.
    ReleasesAsked => "releases_asked",
    /// A leader stepped down so that the next one, above the promise of a
    /// removed member it releases, can teach and release it.
    StepDownsForRelease => "step_downs_for_release",
    /// A leader learned of a removed replica it did not know to release.
    ReleasesNoted => "releases_noted",
    /// A replica started with `join` learned a change that removes it:
    /// history from before it was added (back); it waits to be added.
    JoinerRemovalsReplayed => "joiner_removals_replayed",
    /// Catch-up requests sent again on a timer (no answer, and no message
    /// from the leader came to prompt one).
    CatchupRetransmits => "catchup_retransmits",
    /// A catch-up request for slots no longer in memory (answered with
    /// CheckpointNeeded).
    CatchupNeedsCheckpoint => "catchup_needs_checkpoint",
    /// A CheckpointNeeded not from the leader of the promised ballot, or
    /// about slots this replica has already committed.
    IgnoreCheckpointNeededStale => "ignore_checkpoint_needed_stale",
    /// A client request at a replica that is not the leader (answered NotLeader).
    ClientNotLeader => "client_not_leader",
    /// A client request refused because the queue is full (answered Busy).
    ClientBusy => "client_busy",
    /// A malformed client request (answered Invalid).
    ClientInvalid => "client_invalid",
    /// Client commands queued at the leader.
    ClientQueued => "client_queued",
    /// Slots proposed by this replica as leader.
    SlotsProposed => "slots_proposed",
    /// Slots this replica learned were chosen.
    SlotsCommitted => "slots_committed",
    /// Accepts sent again because no quorum answered in time.
    AcceptRetransmits => "accept_retransmits",
    /// Prepares sent again because a promise did not arrive in time.
    PrepareRetransmits => "prepare_retransmits",
    /// Further Prepares sent for the next chunk of a long promise.
    PromiseChunks => "promise_chunks",
    /// Catch-up requests sent.
    CatchupRequests => "catchup_requests",
    /// Slots sent to followers in answer to catch-up requests.
    CatchupSlotsServed => "catchup_slots_served",
    /// Checkpoint fetches asked of the driver (a follower behind the log).
    CheckpointFetches => "checkpoint_fetches",
    /// Times the in-memory log was compacted by bytes (below a checkpoint).
    LogCompactedByBytes => "log_compacted_by_bytes",
    /// Checkpoints installed from a peer.
    CheckpointsInstalled => "checkpoints_installed",
    /// Checkpoints offered for installation that were not beyond the commit
    /// point (the log caught up meanwhile), or arrived while not following.
    CheckpointInstallsRefused => "checkpoint_installs_refused",
    /// Elections started.
    ElectionsStarted => "elections_started",
    /// Elections given up because an acceptor said this replica lags.
    ElectionsLagging => "elections_lagging",
    /// Elections given up because an acceptor still hears a live leader.
    ElectionsLeaderAlive => "elections_leader_alive",
    /// Elections given up on hearing from the leader of the promised ballot.
    ElectionsAbandoned => "elections_abandoned",
    /// Candidacies of a replica that lost entries to corruption: its own
    /// report does not count, so a quorum of others must promise.
    ElectionsUnprovable => "elections_unprovable",
    /// Election timeouts passed without a candidacy: a joiner not yet
    /// caught up to the change that added it.
    ElectionsSkippedNotMember => "elections_skipped_not_member",
    /// Election timeouts passed (or candidacies given up) without a
    /// candidacy: the application vetoes leading, or leadership was
    /// relinquished less than the hold-off ago.
    ElectionsSkippedHeld => "elections_skipped_held",
    /// Phase 1 run again by a leader or candidate because a configuration
    /// change took effect.
    ElectionsAfterConfigChange => "elections_after_config_change",
    /// Configuration changes proposed by this replica as leader.
    ConfigChangesProposed => "config_changes_proposed",
    /// Requested configuration changes given up because their new members
    /// did not catch up within `config_wait_ticks_max`.
    ConfigChangesAbandoned => "config_changes_abandoned",
    /// Chosen configuration changes ignored because their epoch was
    /// already in force (a stale change from a lost leader, recovered).
    ConfigChangesStale => "config_changes_stale",
    /// Configuration changes that took effect here (committed).
    MembershipChanges => "membership_changes",
    /// Times this replica was removed by a configuration change and stopped.
    Retired => "retired",
    /// A replica that lost entries to corruption learned them all back.
    UnprovableRepaired => "unprovable_repaired",
    /// Elections won.
    ElectionsWon => "elections_won",
    /// Leadership or candidacy given up on seeing a higher ballot.
    StepDownsSuperseded => "step_downs_superseded",
    /// Leadership given up because no quorum was heard from in an election timeout.
    StepDownsNoQuorum => "step_downs_no_quorum",
    /// Leadership given up because the application asked (relinquish).
    StepDownsRelinquished => "step_downs_relinquished",
    /// Persist requests issued.
    PersistRequests => "persist_requests",
    /// Messages held back until a persist completed.
    SendsAfterPersist => "sends_after_persist",
}

/// The values of every [`Counter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; Counter::ALL.len()])
    }
}

impl Counters {
    #[inline]
    pub fn bump(&mut self, c: Counter) {
        self.0[c as usize] += 1;
    }

    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.0[c as usize] += n;
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// `(name, value)` for every counter, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn bump_add_merge() {
        let mut a = Counters::default();
        a.bump(Counter::ClientBusy);
        a.add(Counter::SlotsProposed, 3);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.get(Counter::ClientBusy), 2);
        assert_eq!(b.get(Counter::SlotsProposed), 6);
        assert_eq!(b.iter().filter(|(_, v)| *v > 0).count(), 2);
    }
}
