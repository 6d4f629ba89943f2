//! The replica: state shared by every role, the role itself, and the
//! dispatcher that routes inputs to the role files (`acceptor.rs`,
//! `proposer.rs`, `learner.rs`).

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::candidate::Candidate;
use super::config::{Config, ConfigError, Membership, PlantedBug};
use super::counters::{Counter, Counters};
use super::leader::Leader;
use super::learner::Learner;
use super::log::{Entry, Log};
use super::membership::MembershipState;
use super::message::{Commit, Envelope, HeartbeatReply, Message};
use super::output::{EntryWrite, Outbox, Output, ProposeError};
use super::types::{Ballot, PersistToken, ReplicaId, Slot};
use super::value::CommandRef;

/// What a replica found in durable storage at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    pub promised: Ballot,
    /// The first slot the log holds: slots below it were truncated behind a
    /// checkpoint. Zero when nothing was ever truncated.
    pub log_start: Slot,
    /// Accepted entries at or above `log_start`, one per slot, in
    /// increasing slot order (holes are slots never accepted).
    pub entries: Vec<EntryWrite>,
    /// Commit hint: every slot below it is chosen and its entry is the chosen value.
    pub commit: Slot,
    /// Set when storage salvaged a corrupt log: accepted entries may have
    /// been lost (see [`Unprovable`]).
    pub unprovable: Option<Unprovable>,
    /// The configuration in force at `log_start`, when a checkpoint says
    /// (`None`: the bootstrap configuration, `Config::members`, unless
    /// the replica joins).
    pub membership: Option<Membership>,
}

/// What a salvaged log may have lost: accepted entries below `below`, all
/// in ballots at most `ballot` (the promise at salvage time; an acceptor
/// never accepts above its promise).
///
/// Until repaired, the replica promises nothing that covers those slots and
/// stands for no election: it cannot report what it accepted there. It is
/// repaired once it has learned every slot below `below` as chosen (from a
/// leader, or by installing a checkpoint at or beyond it). Following a
/// leader above `ballot` is not enough: see `Replica::follow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unprovable {
    pub below: Slot,
    pub ballot: Ballot,
}

/// The acceptor's durable state, mirrored in memory.
#[derive(Debug)]
pub(crate) struct Acceptor {
    /// Invariant: never decreases; `promised >=` every entry's ballot.
    pub promised: Ballot,
    pub log: Log,
}

/// Election timeouts (of `Config::election_ticks`) a replica that
/// relinquished leadership waits before it may stand again: long enough for
/// the others, who stop hearing it after one timeout, to elect a leader.
pub const RELINQUISH_HOLD_ELECTIONS: u64 = 3;

/// State every role uses.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Static bounds and the bootstrap configuration, as given.
    pub config: Config,
    /// The configuration in force and what this replica knows of changes.
    pub membership: MembershipState,
    /// Logical time: number of `on_tick` calls.
    pub tick: u64,
    pub rng: Xoshiro256PlusPlus,
    pub acceptor: Acceptor,
    pub learner: Learner,
    pub out: Outbox,
    pub counters: Counters,
    /// Highest ballot round seen in any message (a new candidacy goes above it).
    pub round_seen: u64,
    /// Entries lost to corruption, until repaired (see [`Unprovable`]).
    pub unprovable: Option<Unprovable>,
    /// The application vetoes this replica's candidacies (RSL's
    /// `CanBecomePrimary` answered no). It keeps voting and following.
    pub lead_vetoed: bool,
    /// No candidacy before this tick: the replica relinquished leadership
    /// (RSL's `RelinquishPrimary`) and lets another member take over.
    pub hold_until: u64,
    /// A durable local checkpoint covers every slot below this (the log
    /// start at construction). Compaction by bytes stops here, so a replica
    /// told "checkpoint needed" finds the log continuing from a checkpoint.
    pub checkpointed: Slot,
}

impl Shared {
    /// Whether the application holds this replica back from standing: it
    /// vetoes candidacies, or leadership was relinquished less than the
    /// hold-off ago.
    pub fn campaign_held(&self) -> bool {
        self.lead_vetoed || self.tick < self.hold_until
    }

    /// A heartbeat reply in `ballot`: it reports the commit point only as
    /// far as it is durable (a leader releases removed members once a
    /// quorum reports one past the change, and a member that forgot the
    /// change after a crash would need them; issue 21, finding 3), and
    /// has the commit point written, so the next one reports it.
    pub fn heartbeat_reply(&mut self, ballot: Ballot) -> HeartbeatReply {
        self.out.write_commit(self.learner.commit);
        HeartbeatReply {
            ballot,
            commit: self.out.commit_durable(),
        }
    }

    /// Raises the promised ballot. Precondition: `ballot > promised`.
    pub fn promise(&mut self, ballot: Ballot) -> PersistToken {
        assert!(ballot > self.acceptor.promised, "promise must rise");
        self.acceptor.promised = ballot;
        self.round_seen = self.round_seen.max(ballot.round);
        self.out.write_promised(ballot)
    }

    /// A fresh randomized election timeout in `[election_ticks, 2 * election_ticks)`.
    pub fn election_timeout(&mut self) -> u32 {
        let base = self.config.election_ticks.max(1);
        base + (self.rng.next_u64() % u64::from(base)) as u32
    }
}

/// A follower: accepts what the leader of the promised ballot proposes.
#[derive(Debug)]
pub(crate) struct Follower {
    /// The replica whose ballot we follow, once heard from.
    pub leader: Option<ReplicaId>,
    pub election_elapsed: u32,
    pub election_timeout: u32,
    /// An outstanding catch-up request: slots `[from, to)` asked at `sent_tick`.
    pub catchup: Option<CatchupAsk>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CatchupAsk {
    pub to: Slot,
    pub sent_tick: u64,
    /// Whom it was asked of, in which ballot (asked again on a timer while
    /// that is still the promised ballot).
    pub leader: ReplicaId,
    pub ballot: Ballot,
}

impl Follower {
    pub fn new(leader: Option<ReplicaId>, election_timeout: u32) -> Follower {
        Follower {
            leader,
            election_elapsed: 0,
            election_timeout,
            catchup: None,
        }
    }
}

/// The replica's role.
#[derive(Debug)]
pub(crate) enum Role {
    Follower(Follower),
    Candidate(Candidate),
    Leader(Leader),
}

/// Which role a replica plays (for drivers and checkers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    Candidate,
    Leader,
}

/// One replica's protocol state machine: feed it inputs, drain its outputs.
/// It performs no I/O, reads no clock and is deterministic given its inputs
/// and `Config::seed`.
#[derive(Debug)]
pub struct Replica {
    pub(crate) s: Shared,
    pub(crate) role: Role,
    /// Set by `on_storage_failed`: the replica ignores every input from then on.
    pub(crate) stopped: bool,
    /// Set once a committed configuration change removed this replica: it
    /// ignores every input from then on (RSL: a removed replica stops).
    pub(crate) retired: bool,
}

impl Replica {
    /// A replica with empty durable state (a brand-new member).
    pub fn new(config: Config) -> Result<Replica, ConfigError> {
        Replica::recover(config, DurableState::default())
    }

    /// A replica restarted from what storage recovered.
    pub fn recover(config: Config, state: DurableState) -> Result<Replica, ConfigError> {
        config.validate()?;
        let start = state.log_start;
        let mut log = Log::new(start);
        for (i, e) in state.entries.iter().enumerate() {
            assert!(
                (i == 0 && e.slot >= start) || (i > 0 && e.slot > state.entries[i - 1].slot),
                "recovered entries out of slot order"
            );
            log.put(
                e.slot,
                Entry {
                    ballot: e.ballot,
                    value: e.value.clone(),
                },
            );
        }
        // Promising is durable before accepting, but a crash image may hold an
        // entry whose promise write was lost: promising more is always safe.
        let promised = state.promised.max(log.max_ballot());
        // Trust the commit hint only as far as the entries it covers exist,
        // and not at all after a salvage: a slot whose newer record (the
        // chosen value) was lost may still hold an older one, which the
        // hint would make chosen (issue 21, finding 1; simulator seed
        // 2537). Such a replica learns its log again from a leader.
        let hint = if state.unprovable.is_some() {
            start
        } else {
            state.commit
        };
        let mut commit = start;
        while commit < hint && log.get(commit).is_some() {
            commit = commit.next();
        }
        let membership = MembershipState::at_start(&config, state.membership.as_ref(), commit);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let timeout =
            config.election_ticks + (rng.next_u64() % u64::from(config.election_ticks)) as u32;
        let mut out = Outbox::new(
            config.cluster,
            config.id,
            config.bug(PlantedBug::ReplyBeforePersist),
        );
        out.recovered_commit(commit);
        let mut replica = Replica {
            s: Shared {
                membership,
                tick: 0,
                rng,
                acceptor: Acceptor { promised, log },
                learner: Learner::new(start, commit),
                out,
                counters: Counters::default(),
                round_seen: promised.round,
                unprovable: state.unprovable.filter(|u| u.below > commit),
                lead_vetoed: false,
                hold_until: 0,
                checkpointed: start,
                config,
            },
            role: Role::Follower(Follower::new(None, timeout)),
            stopped: false,
            retired: false,
        };
        replica.s.emit_applies();
        replica.s.membership.switched = None;

        // Restarted after a change that removed it (its checkpoint or its
        // log says so): it departs again (see `Replica::is_departing`),
        // unless started with `join` (see `Shared::switch_membership`).
        replica.check_invariants();
        Ok(replica)
    }

    /// A message from a peer.
    pub fn on_message(&mut self, env: Envelope) {
        if self.refuse_input() {
            return;
        }
        if env.cluster != self.s.config.cluster {
            self.s.counters.bump(Counter::IgnoreWrongCluster);
            return;
        }
        if env.to != self.s.config.id || env.from == self.s.config.id {
            self.s.counters.bump(Counter::IgnoreNotMember);
            return;
        }
        // Acceptor and learner messages are taken from any replica of the
        // cluster: with configuration changes, a sender outside our
        // configuration may lead a newer one we have not caught up with,
        // and accepting or promising is safe whoever asks (a leader counts
        // only its own configuration's votes; phase 1 stops at the first
        // change it finds, see `become_leader`). Replies to a proposer
        // count only from members of its configuration.
        let from_index = self.s.membership.index_of(env.from);
        let from = env.from;
        let owner_sends = matches!(
            env.msg,
            Message::Prepare(_) | Message::Accept(_) | Message::Commit(_) | Message::Heartbeat(_)
        );
        if owner_sends && env.msg.ballot().replica != from {
            // Only a ballot's owner proposes in it.
            self.s.counters.bump(Counter::IgnoreBallotNotSender);
            return;
        }
        self.s.round_seen = self.s.round_seen.max(env.msg.ballot().round);
        let before = self.monotone();
        match (env.msg, from_index) {
            (Message::Prepare(m), _) => self.on_prepare(from, m),
            (Message::Accept(m), _) => self.on_accept(from, m),
            (Message::Commit(m), _) => self.on_commit(from, m.ballot, m.commit, false),
            (Message::Heartbeat(m), _) => self.on_commit(from, m.ballot, m.commit, true),
            (Message::CatchupRequest(m), _) => self.on_catchup_request(from, m),
            (Message::CheckpointNeeded(m), _) => self.on_checkpoint_needed(from, m),
            (Message::Promise(m), Some(i)) => self.on_promise(from, i, m),
            (Message::Accepted(m), Some(i)) => self.on_accepted(i, m),
            (Message::HeartbeatReply(m), i) => self.on_heartbeat_reply(from, i, m),
            (Message::Nack(m), Some(i)) => self.on_nack(i, m),
            (Message::Nack(m), None) if self.s.membership.leaving.contains(&from) => {
                self.on_nack_from_leaving(m)
            }
            (_, None) => self.s.counters.bump(Counter::IgnoreNotMember),
        }
        self.after_membership_switch();
        self.retire_if_released();
        self.assert_monotone(before);
    }

    /// As leader: proposes a new configuration of `members` (RSL's
    /// `ChangeConfiguration`). It is proposed after any recovered values
    /// and before queued client commands, and nothing is proposed after it
    /// until it is chosen; from the slot after it the new members vote,
    /// and the leader runs phase 1 again among them (or retires if it is
    /// not one). One change at a time: `Busy` while one is under way.
    /// Returns the configuration that will be proposed.
    pub fn propose_config(&mut self, members: Vec<ReplicaId>) -> Result<Membership, ProposeError> {
        if self.refuse_input() {
            return Err(ProposeError::NotLeader { hint: None });
        }
        let hint = self.leader_hint();
        let Role::Leader(l) = &mut self.role else {
            return Err(ProposeError::NotLeader { hint });
        };
        let m = Membership::new(self.s.membership.epoch + 1, members).map_err(|_| {
            ProposeError::Invalid("a configuration lists 1 to 64 replicas, none twice")
        })?;
        l.queue_config(&mut self.s, m.clone())?;
        Ok(m)
    }

    /// Acts on a configuration change that took effect during this input:
    /// a leader tells the old and new members that it is chosen, then a
    /// member leader or candidate runs phase 1 again in the new
    /// configuration, and a replica the change removed retires.
    pub(crate) fn after_membership_switch(&mut self) {
        let Some(old) = self.s.membership.switched.take() else {
            return;
        };
        let me = self.s.config.id;
        if let Role::Leader(l) = &self.role {
            // The new configuration's leader will not write to leaving
            // members, and new members have heard nothing yet: tell both.
            let (ballot, commit) = (l.ballot, self.s.learner.commit);
            let s = &mut self.s;
            let joining = s.membership.members.iter().filter(|p| !old.contains(p));
            for peer in old.iter().chain(joining) {
                if *peer != me {
                    s.out.send_now(*peer, Commit { ballot, commit });
                }
            }
        }
        if self.s.membership.self_index.is_none() {
            // Removed (or a joiner replaying history): it neither leads nor
            // stands. A removed replica departs: it stays an acceptor and
            // learner, but no longer a proposer, until a leader of the new
            // configuration releases it (see `Replica::is_departing`).
            if !matches!(self.role, Role::Follower(_)) {
                self.become_follower(None);
            }
            return;
        }
        if matches!(self.role, Role::Leader(_) | Role::Candidate(_)) {
            if self.s.lead_vetoed {
                // Leading the new configuration is a new candidacy, and
                // the application vetoes those.
                self.s.counters.bump(Counter::ElectionsSkippedHeld);
                self.become_follower(None);
                return;
            }
            self.s.counters.bump(Counter::ElectionsAfterConfigChange);
            self.start_election();
        }
    }

    /// A departing replica is released: it stops.
    pub(crate) fn retire(&mut self) {
        debug_assert!(self.is_departing());
        self.become_follower(None);
        self.retired = true;
        self.s.counters.bump(Counter::Retired);
    }

    /// The values that never decrease: promised ballot, commit, applied.
    fn monotone(&self) -> (Ballot, Slot, Slot) {
        (
            self.s.acceptor.promised,
            self.s.learner.commit,
            self.s.learner.applied,
        )
    }

    /// Postcondition of every input: the promise, the commit point and the
    /// apply point never move backwards.
    fn assert_monotone(&self, before: (Ballot, Slot, Slot)) {
        let after = self.monotone();
        assert!(after.0 >= before.0, "promised ballot decreased");
        assert!(after.1 >= before.1, "commit point decreased");
        assert!(after.2 >= before.2, "apply point decreased");
    }

    /// A command from a client. Only the leader queues it; anyone else
    /// answers `NotLeader` with a hint.
    pub fn on_client(&mut self, cmd: CommandRef<'_>) {
        // A retired replica is a follower of nobody: it answers `NotLeader`
        // and the client tries elsewhere. Only a stopped one stays silent.
        if self.stopped {
            self.s.counters.bump(Counter::IgnoreStopped);
            return;
        }
        let result = if cmd.op.len() > self.s.config.command_bytes_max as usize {
            self.s.counters.bump(Counter::ClientInvalid);
            Err(ProposeError::Invalid(
                "command larger than command_bytes_max",
            ))
        } else if cmd.ack_below > cmd.seq {
            self.s.counters.bump(Counter::ClientInvalid);
            Err(ProposeError::Invalid("ack_below beyond seq"))
        } else {
            match &mut self.role {
                Role::Leader(l) => l.queue_client(&mut self.s, cmd),
                Role::Follower(f) => {
                    self.s.counters.bump(Counter::ClientNotLeader);
                    Err(ProposeError::NotLeader { hint: f.leader })
                }
                Role::Candidate(_) => {
                    self.s.counters.bump(Counter::ClientNotLeader);
                    Err(ProposeError::NotLeader { hint: None })
                }
            }
        };
        if let Err(e) = result {
            self.s.out.replies.push(super::output::ClientReply {
                client: cmd.client,
                seq: cmd.seq,
                result: Err(e),
            });
        }
    }

    /// The application's veto on leading (RSL's `CanBecomePrimary`): while
    /// `vetoed`, this replica starts no candidacy and a candidacy under way
    /// is given up; it goes on voting, accepting and, if it already leads,
    /// leading (use [`Replica::relinquish`] to stop). The driver sets it
    /// before each tick from the application's answer.
    pub fn set_lead_vetoed(&mut self, vetoed: bool) {
        if self.refuse_input() {
            return;
        }
        self.s.lead_vetoed = vetoed;
        if vetoed && matches!(self.role, Role::Candidate(_)) {
            self.s.counters.bump(Counter::ElectionsSkippedHeld);
            self.become_follower(None);
        }
        debug_assert!(!vetoed || !matches!(self.role, Role::Candidate(_)));
    }

    /// Gives up leadership (RSL's `RelinquishPrimary`): a leader steps down,
    /// answers its queued commands `NotLeader`, and starts no candidacy for
    /// [`RELINQUISH_HOLD_ELECTIONS`] election timeouts, so that another
    /// member, hearing no heartbeat, takes over. Returns whether this
    /// replica was leading. In-flight slots are not lost: the next leader's
    /// phase 1 recovers them.
    pub fn relinquish(&mut self) -> bool {
        if self.refuse_input() || !self.is_leader() {
            return false;
        }
        let hold = RELINQUISH_HOLD_ELECTIONS * u64::from(self.s.config.election_ticks);
        self.s.hold_until = self.s.tick + hold;
        self.s.counters.bump(Counter::StepDownsRelinquished);
        self.become_follower(None);
        debug_assert!(!self.is_leader());
        true
    }

    /// One unit of logical time passed.
    pub fn on_tick(&mut self) {
        if self.refuse_input() {
            return;
        }
        self.s.tick += 1;
        let before = self.monotone();
        match &mut self.role {
            Role::Follower(f) => {
                super::learner::retry_catchup(f, &mut self.s);
                f.election_elapsed += 1;
                if f.election_elapsed >= f.election_timeout {
                    if !self.s.membership.may_campaign() {
                        // A joiner that has not caught up to the change that
                        // added it: it does not know whose votes count.
                        self.s.counters.bump(Counter::ElectionsSkippedNotMember);
                        f.leader = None;
                        f.election_elapsed = 0;
                        if self.is_departing() {
                            // Removed, and no leader heard for a timeout:
                            // tell the members of the configuration that
                            // removed us, so that its leader releases us
                            // (one that joined after the change, or led
                            // after a later one, does not know to).
                            let s = &mut self.s;
                            let reply = s.heartbeat_reply(s.acceptor.promised);
                            for i in 0..s.membership.members.len() {
                                s.out.send_now(s.membership.members[i], reply.clone());
                            }
                            s.counters.bump(Counter::ReleasesAsked);
                        }
                    } else if self.s.campaign_held() {
                        // The application vetoes or relinquished: no
                        // candidacy; no leader heard either, so other
                        // candidates get its vote.
                        self.s.counters.bump(Counter::ElectionsSkippedHeld);
                        f.leader = None;
                        f.election_elapsed = 0;
                    } else {
                        // (A replica that lost entries to corruption stands
                        // too, but its own report does not count: see
                        // `Candidate::self_counts`.)
                        self.start_election();
                    }
                }
            }
            Role::Candidate(c) => {
                if c.on_tick(&mut self.s) {
                    if self.s.campaign_held() {
                        self.s.counters.bump(Counter::ElectionsSkippedHeld);
                        self.become_follower(None);
                    } else {
                        self.start_election();
                    }
                }
            }
            Role::Leader(l) => {
                if !l.on_tick(&mut self.s) {
                    self.s.counters.bump(Counter::StepDownsNoQuorum);
                    self.become_follower(None);
                }
            }
        }
        self.after_membership_switch();
        self.assert_monotone(before);
    }

    /// Storage made every request up to `token` durable.
    pub fn on_persisted(&mut self, token: PersistToken) {
        if self.refuse_input() {
            return;
        }
        let before = self.monotone();
        self.s.out.persisted(token);
        match &mut self.role {
            Role::Candidate(c) => {
                if c.on_persisted(&mut self.s) {
                    self.become_leader();
                }
            }
            Role::Leader(l) => l.on_persisted(&mut self.s),
            Role::Follower(_) => {}
        }
        self.after_membership_switch();
        self.assert_monotone(before);
    }

    /// Storage failed (a sync or write returned an error). The replica stops
    /// for good: it must not acknowledge anything after a failed flush, and
    /// a retry that "succeeds" proves nothing about the lost writes.
    pub fn on_storage_failed(&mut self) {
        self.stopped = true;
        self.s.out.discard();
    }

    /// Seals queued client commands into slots while the window allows (the
    /// batching point), seals pending writes into one persist request (group
    /// commit), and hands every output to `out`.
    pub fn drain(&mut self, out: &mut Output) {
        if self.stopped {
            return;
        }
        if let Role::Leader(l) = &mut self.role {
            l.propose_ready(&mut self.s);
        }
        let commit = self.s.learner.commit;
        self.s.out.seal(commit);
        self.s.counters.add(
            Counter::PersistRequests,
            std::mem::take(&mut self.s.out.requests),
        );
        self.s.counters.add(
            Counter::SendsAfterPersist,
            std::mem::take(&mut self.s.out.held_back),
        );
        self.s.out.drain(out);
    }

    fn refuse_input(&mut self) -> bool {
        let refuse = self.stopped || self.retired;
        if refuse {
            self.s.counters.bump(Counter::IgnoreStopped);
        }
        refuse
    }

    /// Becomes a follower of `leader` (or of nobody yet).
    pub(crate) fn become_follower(&mut self, leader: Option<ReplicaId>) {
        let timeout = self.s.election_timeout();
        let old = std::mem::replace(
            &mut self.role,
            Role::Follower(Follower::new(leader, timeout)),
        );
        if let Role::Leader(l) = old {
            l.abandon(&mut self.s, leader);
        }
    }

    /// After the promised ballot rose: a leader or candidate of a lower
    /// ballot steps down (a higher ballot is not a grant).
    pub(crate) fn step_down_if_superseded(&mut self, new_leader: Option<ReplicaId>) {
        let mine = match &self.role {
            Role::Leader(l) => l.ballot,
            Role::Candidate(c) => c.ballot,
            Role::Follower(_) => return,
        };
        if mine < self.s.acceptor.promised {
            self.s.counters.bump(Counter::StepDownsSuperseded);
            self.become_follower(new_leader);
        }
    }

    /// Checks every invariant of the replica; panics on a broken one.
    pub fn check_invariants(&self) {
        let s = &self.s;
        let a = &s.acceptor;
        a.log.check_invariants();
        assert!(a.promised >= a.log.max_ballot(), "accepted above promised");
        s.learner.check_invariants(&a.log);
        assert!(
            s.checkpointed <= s.learner.applied,
            "checkpointed unapplied slots"
        );
        s.out.check_invariants();
        s.membership.check_invariants(&s.config);
        if !matches!(self.role, Role::Follower(_)) {
            assert!(s.membership.may_campaign(), "a non-member leads or stands");
        }
        if self.retired {
            assert!(
                matches!(self.role, Role::Follower(_)),
                "a retired replica leads"
            );
        }
        if s.tick < s.hold_until {
            assert!(
                matches!(self.role, Role::Follower(_)),
                "stands for election during the hold-off after relinquishing"
            );
        }
        if s.lead_vetoed {
            assert!(
                !matches!(self.role, Role::Candidate(_)),
                "stands for election against the application's veto"
            );
        }
        match &self.role {
            Role::Follower(f) => {
                assert_ne!(f.leader, Some(s.config.id), "follower of itself");
            }
            Role::Candidate(c) => c.check_invariants(s),
            Role::Leader(l) => l.check_invariants(s),
        }
    }
}
