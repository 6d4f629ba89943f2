//! The core task's lab probe: turns what the core task already sees (events
//! with their decode times, the core's outputs, durability reports) into the
//! per-stage durations of DESIGN.md's "One write, stage by stage".
//!
//! **Architecture Invariant:** the probe only observes. It never changes
//! what the replica does, and a probe that loses track (it cannot, short of
//! a bug: see `check`) costs figures, never safety.
//!
//! Cost per command, with the lab on: one histogram record at queueing
//! (`leader.queue`), one FIFO push and pop (to date the batch a command
//! opened), one record at reply. Everything else is per slot, per message
//! or per flush. Sampled commands (a hash of `(client, seq)`) also get trace
//! intervals; with tracing off nothing iterates a batch.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::core::{
    Ballot, Message, Output, PersistToken, Replica, ReplicaId, RoleKind, Slot, Value,
};
use crate::instrumentation::{Lab, LocalRecorder, Mark, STALL_NS_MIN, Stage};

/// A slot this replica proposed as leader.
#[derive(Debug)]
struct SlotTrack {
    slot: Slot,
    sealed_ns: u64,
    /// When the commit point passed it (0: not yet).
    committed_ns: u64,
    applied: bool,
    /// Accepted (2b) messages recorded for it.
    p2b: u32,
    /// Sampled commands in it (empty unless tracing).
    flows: Vec<u64>,
}

/// A persist request handed to storage, awaiting durability.
#[derive(Debug)]
struct PersistTrack {
    token: PersistToken,
    handed_ns: u64,
    /// Slots proposed by this leader that it carries, with their sampled
    /// commands (the slot may commit, on the followers' votes, and be
    /// forgotten before the leader's own write is durable).
    leader_slots: Vec<(Slot, Vec<u64>)>,
    /// Accepts (from a leader) it makes durable: slot, decode time, flows.
    accepts: Vec<(Slot, u64, Vec<u64>)>,
}

/// Most persist requests tracked at once; beyond it the oldest are dropped
/// from the figures (storage that far behind has stopped the replica anyway).
const PERSISTS_TRACKED_MAX: usize = 64 * 1024;
/// Most slots tracked at once. A slot stays tracked after it is applied
/// until every follower's Accepted arrived (so a slow follower's `p2b.recv`
/// is counted too); a follower that never answers costs this bound.
const SLOTS_TRACKED_MAX: usize = 64 * 1024;

pub(crate) struct Probe {
    lab: Arc<Lab>,
    rec: LocalRecorder,
    tracing: bool,
    /// What is in flight through this replica's stages.
    track: Track,
    /// Episodes under way: elections, recovery, catch-up, fetches, applies.
    episodes: Episodes,
    /// The flush stage of this replica's storage (`None`: it has no flush).
    flush_stage: Option<Stage>,
    /// Followers (members less this replica).
    peers: u32,
}

/// What is in flight through the stages, in order.
#[derive(Default)]
struct Track {
    /// Take times of the client commands queued at the leader, in queue order
    /// (the core's client queue is FIFO, and batches leave it in order).
    queued: VecDeque<u64>,
    /// Slots proposed by this leader and not yet applied, in slot order.
    slots: VecDeque<SlotTrack>,
    persists: VecDeque<PersistTrack>,
    /// Accepts decoded in this burst and not yet written: slot → (time, flows).
    accepts: FxHashMap<Slot, (u64, Vec<u64>)>,
    /// A sampled command made durable by the persists of the last drain.
    drain_flow: u64,
}

/// Episodes under way, each timed from its start.
#[derive(Default)]
struct Episodes {
    /// The role and ballot seen at the last drain.
    role: Option<(RoleKind, Ballot)>,
    election_start_ns: u64,
    /// Leading since, until the recovered slots are committed.
    recovering: Option<(u64, Slot)>,
    /// Commit time of the slot being applied.
    apply_start_ns: u64,
    /// A catch-up request outstanding: sent at, up to which slot.
    catchup: Option<(u64, Slot)>,
    /// A checkpoint fetch under way since.
    fetch_start_ns: Option<u64>,
}

impl Probe {
    pub fn new(lab: Arc<Lab>, id: ReplicaId, members: usize, flush_stage: Option<Stage>) -> Probe {
        let rec = LocalRecorder::new(&lab, id.0);
        Probe {
            tracing: lab.tracing(),
            lab,
            rec,
            track: Track::default(),
            episodes: Episodes::default(),
            flush_stage,
            peers: members.saturating_sub(1) as u32,
        }
    }

    /// A peer message decoded at `at`, before the core handles it.
    pub fn on_peer(&mut self, msg: &Message, at: u64) {
        match msg {
            Message::Accept(a) => {
                let flows = if self.tracing {
                    all_flows(&self.lab, &a.value)
                } else {
                    Vec::new()
                };
                self.track.accepts.insert(a.slot, (at, flows));
            }
            Message::Accepted(a) => {
                let Some(front) = self.track.slots.front() else {
                    return;
                };
                let base = front.slot;
                let from = a.first.max(base).since(base) as usize;
                let to = (a.end.since(base) as usize).min(self.track.slots.len());
                for t in self.track.slots.range_mut(from.min(to)..to) {
                    if t.p2b < self.peers {
                        t.p2b += 1;
                        span_flows(
                            &mut self.rec,
                            Stage::P2bRecv,
                            t.sealed_ns,
                            at,
                            t.slot,
                            &t.flows,
                        );
                    }
                }
                self.forget_done();
            }
            Message::Promise(_) => {
                if matches!(self.episodes.role, Some((RoleKind::Candidate, _))) {
                    self.rec
                        .span(Stage::P1bRecv, self.episodes.election_start_ns, at, 0, 0);
                }
            }
            _ => {}
        }
    }

    /// A client command taken by the core at `now` (decoded at `at`);
    /// `queued`: it joined the leader's batch queue.
    pub fn on_client(&mut self, client: u64, seq: u64, at: u64, now: u64, queued: bool) {
        if !queued {
            return;
        }
        self.track.queued.push_back(now);
        let flow = if self.tracing {
            self.lab.flow_of(client, seq).unwrap_or(0)
        } else {
            0
        };
        self.rec.span(Stage::LeaderQueue, at, now, 0, flow);
    }

    /// Before the core drains: notices elections and changes of leadership.
    pub fn before_drain(&mut self, r: &Replica, now: u64) {
        let seen = (r.role(), r.promised());
        if self.episodes.role == Some(seen) {
            return;
        }
        let was_leader = matches!(self.episodes.role, Some((RoleKind::Leader, _)));
        if was_leader || seen.0 != RoleKind::Leader {
            // Leadership lost (or never held): whatever was queued was
            // abandoned by the core.
            self.track.queued.clear();
            self.track.slots.clear();
            self.episodes.recovering = None;
        }
        match seen.0 {
            RoleKind::Candidate => self.episodes.election_start_ns = now,
            RoleKind::Leader => {
                self.episodes.election_start_ns = 0;
                self.track.queued.clear();
                self.track.slots.clear();
                let end = r.recovery_end().expect("a leader has a recovery end");
                self.episodes.recovering = Some((now, end));
            }
            // The election is over (or never seen: a candidacy that began
            // and ended within one burst, whose Prepares still go out).
            RoleKind::Follower => self.episodes.election_start_ns = 0,
        }
        self.episodes.role = Some(seen);
    }

    /// After a drain at `now`: dates the proposals and persists in `out`,
    /// and the commits it learned. Returns nothing: marks for the sends are
    /// asked per message ([`Probe::mark_for`]).
    pub fn after_drain(&mut self, r: &Replica, out: &Output, now: u64) {
        let leading = match self.episodes.role {
            Some((RoleKind::Leader, b)) => Some(b),
            _ => None,
        };
        self.track.drain_flow = 0;
        for req in &out.persist {
            let mut track = PersistTrack {
                token: req.token,
                handed_ns: now,
                leader_slots: Vec::new(),
                accepts: Vec::new(),
            };
            for e in &req.entries {
                if Some(e.ballot) == leading
                    && self.track.slots.back().is_none_or(|t| t.slot < e.slot)
                {
                    let flows = self.sealed(r, e.slot, &e.value, now);
                    track.leader_slots.push((e.slot, flows));
                } else if let Some((at, flows)) = self.track.accepts.remove(&e.slot) {
                    track.accepts.push((e.slot, at, flows));
                }
            }
            if self.track.drain_flow == 0 && self.tracing {
                self.track.drain_flow = track
                    .leader_slots
                    .iter()
                    .filter_map(|s| s.1.first().copied())
                    .chain(track.accepts.iter().filter_map(|a| a.2.first().copied()))
                    .next()
                    .unwrap_or(0);
            }
            if !track.leader_slots.is_empty() || !track.accepts.is_empty() {
                if self.track.persists.len() >= PERSISTS_TRACKED_MAX {
                    self.track.persists.pop_front();
                }
                self.track.persists.push_back(track);
            }
        }
        self.track.accepts.clear();
        // Commits.
        let commit = r.commit();
        // Catch-up, from the follower's outstanding request: a range ends
        // when the commit point reaches it; one asked for while none is
        // open starts a span (a retry or a wider ask extends the open one).
        if let Some((since, to)) = self.episodes.catchup
            && commit >= to
        {
            self.rec.span(Stage::CatchupSlots, since, now, to.0, 0);
            self.episodes.catchup = None;
        }
        if let Some(asked) = r.catchup_to() {
            match &mut self.episodes.catchup {
                Some((_, to)) => *to = (*to).max(asked),
                None => self.episodes.catchup = Some((now, asked)),
            }
        }
        for t in self.track.slots.iter_mut() {
            if t.slot >= commit {
                break;
            }
            if t.committed_ns == 0 {
                t.committed_ns = now;
                span_flows(
                    &mut self.rec,
                    Stage::LeaderQuorum,
                    t.sealed_ns,
                    now,
                    t.slot,
                    &t.flows,
                );
            }
        }
        if let Some((since, end)) = self.episodes.recovering
            && commit >= end
        {
            self.rec.span(Stage::LeaderRecover, since, now, end.0, 0);
            self.episodes.recovering = None;
        }
        self.check(r);
    }

    /// A checkpoint fetch started at `now`.
    pub fn fetch_started(&mut self, now: u64) {
        self.episodes.fetch_start_ns = Some(now);
    }

    /// The fetched checkpoint of every slot below `slot` was installed at
    /// `now` (a failed or unneeded fetch records nothing: the next one
    /// starts afresh). Slots asked for below it need no more catching up.
    pub fn fetch_installed(&mut self, slot: Slot, now: u64) {
        if let Some(since) = self.episodes.fetch_start_ns.take() {
            self.rec
                .span(Stage::CatchupCheckpoint, since, now, slot.0, 0);
        }
        if self.episodes.catchup.is_some_and(|(_, to)| to <= slot) {
            self.episodes.catchup = None;
        }
    }

    /// A slot proposed by this leader in the drain at `now`; returns its
    /// sampled commands.
    fn sealed(&mut self, r: &Replica, slot: Slot, value: &Value, now: u64) -> Vec<u64> {
        let recovered = r.recovery_end().is_some_and(|end| slot < end);
        let mut flows = Vec::new();
        if !recovered {
            let n = value.command_count() as usize;
            let first = self.track.queued.front().copied();
            // The FIFO holds exactly the queued commands (see `check`).
            for _ in 0..n.min(self.track.queued.len()) {
                self.track.queued.pop_front();
            }
            if let (Some(opened), true) = (first, n > 0) {
                if self.tracing {
                    flows = all_flows(&self.lab, value);
                }
                span_flows(&mut self.rec, Stage::LeaderBatch, opened, now, slot, &flows);
            }
        }
        if self.track.slots.len() >= SLOTS_TRACKED_MAX {
            self.track.slots.pop_front();
        }
        self.track.slots.push_back(SlotTrack {
            slot,
            sealed_ns: now,
            committed_ns: 0,
            applied: false,
            p2b: 0,
            flows: flows.clone(),
        });
        flows
    }

    /// The mark to put on the frame carrying `msg` (the stage that ends
    /// when it is written).
    pub fn mark_for(&self, msg: &Message) -> Option<Mark> {
        match msg {
            Message::Accept(a) => {
                let t = self.track(a.slot)?;
                // Only the first send: a retransmission is not `p2a.send`.
                (t.committed_ns == 0).then(|| Mark {
                    stage: Stage::P2aSend,
                    start_ns: t.sealed_ns,
                    slot: a.slot.0,
                    flow: t.flows.first().copied().unwrap_or(0),
                })
            }
            // Only while the start of the election is known.
            Message::Prepare(_) => (self.episodes.election_start_ns != 0).then_some(Mark {
                stage: Stage::P1aSend,
                start_ns: self.episodes.election_start_ns,
                slot: 0,
                flow: 0,
            }),
            _ => None,
        }
    }

    fn track(&self, slot: Slot) -> Option<&SlotTrack> {
        track_in(&self.track.slots, slot)
    }

    /// An inline flush of the last drain's persists ran from `start` to `end`.
    pub fn flushed(&mut self, start: u64, end: u64) {
        if let Some(stage) = self.flush_stage {
            self.rec.span(stage, start, end, 0, self.track.drain_flow);
        }
    }

    /// Storage reports every request up to `token` durable at `now`.
    pub fn on_durable(&mut self, token: PersistToken, now: u64) {
        while self
            .track
            .persists
            .front()
            .is_some_and(|p| p.token <= token)
        {
            let p = self.track.persists.pop_front().expect("checked");
            for (s, flows) in &p.leader_slots {
                span_flows(
                    &mut self.rec,
                    Stage::LeaderPersist,
                    p.handed_ns,
                    now,
                    *s,
                    flows,
                );
            }
            for (slot, at, flows) in &p.accepts {
                span_flows(
                    &mut self.rec,
                    Stage::FollowerPersist,
                    *at,
                    now,
                    *slot,
                    flows,
                );
            }
        }
    }

    /// Slot `slot` is about to be applied (committed at the last drain).
    pub fn apply_started(&mut self, slot: Slot) {
        self.episodes.apply_start_ns = self.track(slot).map_or(0, |t| t.committed_ns);
    }

    /// Slot `slot` was applied at `now`; returns the reply mark's start.
    pub fn applied(&mut self, slot: Slot, now: u64) -> u64 {
        if self.episodes.apply_start_ns != 0 {
            let start = self.episodes.apply_start_ns;
            let flows = track_in(&self.track.slots, slot).map_or(&[][..], |t| &t.flows[..]);
            span_flows(&mut self.rec, Stage::LeaderApply, start, now, slot, flows);
            self.episodes.apply_start_ns = 0;
        }
        if let Some(front) = self.track.slots.front()
            && slot >= front.slot
        {
            let i = slot.since(front.slot) as usize;
            if let Some(t) = self.track.slots.get_mut(i) {
                t.applied = true;
            }
        }
        self.forget_done();
        now
    }

    /// Drops the oldest slots once applied and acknowledged by every follower.
    fn forget_done(&mut self) {
        while self
            .track
            .slots
            .front()
            .is_some_and(|t| t.applied && t.p2b >= self.peers)
        {
            self.track.slots.pop_front();
        }
    }

    /// The mark for a reply to `(client, seq)` executed at `executed_ns`.
    #[inline]
    pub fn reply_mark(&self, client: u64, seq: u64, slot: Slot, executed_ns: u64) -> Mark {
        Mark {
            stage: Stage::LeaderReply,
            start_ns: executed_ns,
            slot: slot.0,
            flow: if self.tracing {
                self.lab.flow_of(client, seq).unwrap_or(0)
            } else {
                0
            },
        }
    }

    /// Merges into the lab now and then (called once per burst).
    pub fn tick(&mut self, now: u64) {
        self.rec.merge_if_due(&self.lab, now);
    }

    /// A turn of the core task ran from `start` to `end`: a stall if it
    /// was long ([`STALL_NS_MIN`]), recorded and always traced.
    pub fn turn(&mut self, start: u64, end: u64, applied: Slot) {
        if end.saturating_sub(start) >= STALL_NS_MIN {
            self.rec.span(Stage::CoreStall, start, end, applied.0, 0);
        }
        self.tick(end);
    }

    /// Merges everything (at exit).
    pub fn finish(&mut self) {
        self.lab.merge(&mut self.rec);
    }

    /// The probe's own consistency: its FIFO mirrors the core's client queue.
    fn check(&mut self, r: &Replica) {
        let want = r.queued_commands() as usize;
        if self.track.queued.len() != want {
            debug_assert!(
                false,
                "lab probe lost track of the client queue: {} dated, {want} queued",
                self.track.queued.len()
            );
            // Release builds: re-align (figures for a few commands skew,
            // nothing else).
            while self.track.queued.len() > want {
                self.track.queued.pop_front();
            }
        }
    }
}

/// The slot's track, if this leader proposed it and has not applied it.
fn track_in(slots: &VecDeque<SlotTrack>, slot: Slot) -> Option<&SlotTrack> {
    let base = slots.front()?.slot;
    if slot < base {
        return None;
    }
    slots.get(slot.since(base) as usize)
}

/// Records one duration; traces it once per sampled command it concerns.
fn span_flows(
    rec: &mut LocalRecorder,
    stage: Stage,
    start: u64,
    end: u64,
    slot: Slot,
    flows: &[u64],
) {
    match flows {
        [] => rec.span(stage, start, end, slot.0, 0),
        [first, rest @ ..] => {
            rec.span(stage, start, end, slot.0, *first);
            for f in rest {
                rec.event(stage, start, end.saturating_sub(start), slot.0, *f);
            }
        }
    }
}

/// Every sampled command's flow in `value`.
fn all_flows(lab: &Lab, value: &Value) -> Vec<u64> {
    match value {
        Value::Batch(b) => b
            .iter()
            .filter_map(|c| lab.flow_of(c.client.0, c.seq))
            .collect(),
        Value::Noop | Value::Config(_) => Vec::new(),
    }
}
