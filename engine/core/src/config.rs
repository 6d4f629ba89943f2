//! Static configuration of one replica's core, with every bound named.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::types::{ClusterId, ReplicaId};

/// Most members a configuration may have (acknowledgements are a `u64` bitmask).
pub const MEMBERS_MAX: usize = 64;

/// Test-only protocol breakages. Each one violates a rule the checkers must
/// catch; the planted-bug tests turn them on and expect a reported violation.
/// A production configuration leaves `planted_bug` at `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Phase 2 quorum one smaller than a majority.
    QuorumTooSmall,
    /// A new leader ignores the values reported in promises and fills every
    /// open slot with a no-op.
    SkipAdoption,
    /// The leader counts its own vote before its own persist completes.
    SelfAckBeforePersist,
    /// Promise / Accepted go out before the state they report is durable.
    ReplyBeforePersist,
    /// The leader proposes past a configuration change not yet chosen
    /// (the slots after it belong to the new configuration).
    ProposePastChange,
    /// A new leader's recovery runs past the first configuration change
    /// it finds beyond its commit point.
    RecoverPastChange,
    /// Removed members are released before a quorum of the new
    /// configuration has committed past the change.
    ReleaseEarly,
    /// A joiner takes any configuration at or after its join epoch for
    /// the one adding it, and a removal it replays for its own.
    JoinerRetiresOnHistory,
}

/// Configuration of one replica's protocol core.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster: ClusterId,
    pub id: ReplicaId,
    /// Every voting member at start: the bootstrap configuration of a
    /// brand-new cluster, or (with `join`) the configuration this replica
    /// is told it was added to. A replica restarted from durable state
    /// takes the configuration its checkpoint and log say instead. Never
    /// changed after start: the configuration in force is
    /// [`Replica::membership`](crate::Replica::membership).
    pub members: Vec<ReplicaId>,
    /// A replica added by a configuration change: `id` need not be in
    /// `members`, and it stands for no election until its own log (or an
    /// installed checkpoint) tells it the configuration it is in.
    pub join: bool,
    /// With `join`: the lowest epoch the change that adds it may have
    /// (0: any). The replica is a joiner until it learns a configuration
    /// at or after this epoch that lists it. With 0, an id added back
    /// whose history lists it (its old disk behind its removal, or an
    /// empty log catching up) counts as a member of that old
    /// configuration until it replays its removal: it may stand there
    /// once (phase 1 recovers the change that removed it, and it goes
    /// back to waiting); setting this avoids even that.
    pub join_epoch: u64,
    /// Every replica id the driver knows an address for (the replica
    /// file's `[[members]]`, spares included; empty: only the
    /// configurations' members). Once a configuration change happened, a
    /// leader releases every known replica outside its configuration as
    /// well as those it saw removed: one that joined after a removal, or
    /// installed a checkpoint past it, does not know whom it removed.
    pub known_replicas: Vec<ReplicaId>,
    /// Most slots the leader has proposed but not yet committed. `1` is RSL's
    /// classic mode: one proposal in flight.
    pub window_slots_max: u32,
    /// Most commands sealed into one slot. `1` disables batching.
    pub batch_commands_max: u32,
    /// Most encoded bytes in one slot's batch (a single larger command still
    /// gets a slot of its own, up to `command_bytes_max`).
    pub batch_bytes_max: u32,
    /// Largest accepted client operation.
    pub command_bytes_max: u32,
    /// Most client commands waiting at the leader for a slot; beyond it
    /// clients get `Busy`.
    pub queue_commands_max: u32,
    /// Most encoded bytes waiting at the leader for a slot.
    pub queue_bytes_max: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: u32,
    /// Base election timeout in ticks; each wait is drawn from
    /// `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// Ticks before an unanswered Accept or catch-up request is sent again.
    pub retransmit_ticks: u32,
    /// An acceptor refuses to promise to a candidate whose commit point is
    /// more than this many slots behind its own.
    pub promise_lag_slots_max: u64,
    /// A follower accepts slots at most this far beyond its commit point.
    pub log_ahead_slots_max: u64,
    /// Applied slots kept in memory behind the apply point, for catch-up and
    /// promises. Older ones live only in storage (and checkpoints).
    pub log_retained_slots_max: u64,
    /// Payload bytes of the slots kept in memory. Above it, applied slots
    /// that a durable local checkpoint covers (see
    /// [`crate::Replica::checkpoint_saved`]) are forgotten too, however
    /// few: a log of large batches stays bounded in memory, not only in count.
    pub log_retained_bytes_max: u64,
    /// Most slots sent in answer to one catch-up request.
    pub catchup_slots_max: u64,
    /// Ticks a leader waits for the new members of a requested
    /// configuration change to catch up before giving the change up.
    pub config_wait_ticks_max: u32,
    /// Most payload bytes reported in one Promise message; a longer report
    /// is sent in chunks (at least one entry per chunk).
    pub promise_bytes_max: u64,
    /// Seed of the core's own RNG (election timeouts).
    pub seed: u64,
    /// Test-only: a protocol breakage to plant (see [`PlantedBug`]).
    pub planted_bug: Option<PlantedBug>,
    /// Test-only: one extra allocation and copy of every client command at
    /// the leader, a slowdown the regression gate must catch.
    pub planted_slowdown: bool,
}

/// A configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("replica {0} is not among the members")]
    NotAMember(ReplicaId),
    #[error("member {0} is listed twice")]
    DuplicateMember(ReplicaId),
    #[error("{0} members; between 1 and {MEMBERS_MAX} are supported")]
    MemberCount(usize),
    #[error("{name} must be at least {min} (is {value})")]
    TooSmall {
        name: &'static str,
        min: u64,
        value: u64,
    },
    #[error("{smaller} ({a}) must be below {larger} ({b})")]
    Order {
        smaller: &'static str,
        a: u64,
        larger: &'static str,
        b: u64,
    },
}

impl Config {
    /// A configuration with the documented defaults for `id` in `members`.
    pub fn new(cluster: ClusterId, id: ReplicaId, members: Vec<ReplicaId>) -> Config {
        Config {
            cluster,
            id,
            members,
            join: false,
            join_epoch: 0,
            known_replicas: Vec::new(),
            window_slots_max: 256,
            batch_commands_max: 256,
            batch_bytes_max: 256 * 1024,
            command_bytes_max: 1024 * 1024,
            queue_commands_max: 16 * 1024,
            queue_bytes_max: 64 * 1024 * 1024,
            heartbeat_ticks: 2,
            election_ticks: 10,
            retransmit_ticks: 4,
            promise_lag_slots_max: 1024,
            log_ahead_slots_max: 2048,
            log_retained_slots_max: 65536,
            log_retained_bytes_max: 128 * 1024 * 1024,
            catchup_slots_max: 256,
            config_wait_ticks_max: 1000,
            promise_bytes_max: 4 * 1024 * 1024,
            seed: u64::from(id.0),
            planted_bug: None,
            planted_slowdown: false,
        }
    }

    /// RSL's classic mode: one proposal in flight, one command per slot.
    pub fn classic(mut self) -> Config {
        self.window_slots_max = 1;
        self.batch_commands_max = 1;
        self
    }

    /// Checks every bound and every relation between bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_members(&self.members)?;
        if !self.join && !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        let at_least_one = [
            ("window_slots_max", u64::from(self.window_slots_max)),
            ("batch_commands_max", u64::from(self.batch_commands_max)),
            ("batch_bytes_max", u64::from(self.batch_bytes_max)),
            ("command_bytes_max", u64::from(self.command_bytes_max)),
            ("queue_commands_max", u64::from(self.queue_commands_max)),
            ("queue_bytes_max", self.queue_bytes_max),
            ("heartbeat_ticks", u64::from(self.heartbeat_ticks)),
            ("retransmit_ticks", u64::from(self.retransmit_ticks)),
            ("catchup_slots_max", self.catchup_slots_max),
            (
                "config_wait_ticks_max",
                u64::from(self.config_wait_ticks_max),
            ),
            ("promise_bytes_max", self.promise_bytes_max),
            ("log_retained_bytes_max", self.log_retained_bytes_max),
        ];
        for (name, value) in at_least_one {
            if value < 1 {
                return Err(ConfigError::TooSmall {
                    name,
                    min: 1,
                    value,
                });
            }
        }
        let ordered = [
            // Heartbeats must arrive well inside an election timeout.
            (
                "2 * heartbeat_ticks",
                2 * u64::from(self.heartbeat_ticks),
                "election_ticks",
                u64::from(self.election_ticks),
            ),
            // A follower must accept every slot the leader may have in flight.
            (
                "window_slots_max",
                u64::from(self.window_slots_max),
                "log_ahead_slots_max + 1",
                self.log_ahead_slots_max + 1,
            ),
            // A promise must be able to report every slot a candidate may ask for.
            (
                "promise_lag_slots_max",
                self.promise_lag_slots_max,
                "log_retained_slots_max + 1",
                self.log_retained_slots_max + 1,
            ),
            // A single command must fit in a queue.
            (
                "command_bytes_max",
                u64::from(self.command_bytes_max),
                "queue_bytes_max + 1",
                self.queue_bytes_max + 1,
            ),
        ];
        for (smaller, a, larger, b) in ordered {
            if a >= b {
                return Err(ConfigError::Order {
                    smaller,
                    a,
                    larger,
                    b,
                });
            }
        }
        Ok(())
    }

    /// Raises `log_ahead_slots_max` to `window_slots_max` if it is below:
    /// a follower must accept every slot a leader may have in flight (what
    /// `validate` requires). For drivers that set the window alone.
    pub fn fit_log_ahead_to_window(&mut self) {
        self.log_ahead_slots_max = self
            .log_ahead_slots_max
            .max(u64::from(self.window_slots_max));
    }

    /// Votes needed in the start configuration (`members`); the
    /// configuration in force may differ (see `membership.rs`).
    pub fn quorum(&self) -> usize {
        self.quorum_of(self.members.len())
    }

    /// Votes needed in a configuration of `n` members.
    pub(crate) fn quorum_of(&self, n: usize) -> usize {
        let majority = majority(n);
        if self.planted_bug == Some(PlantedBug::QuorumTooSmall) {
            return (majority - 1).max(1);
        }
        majority
    }

    /// Position of `id` in the start configuration (`members`).
    pub fn member_index(&self, id: ReplicaId) -> Option<usize> {
        self.members.iter().position(|m| *m == id)
    }

    pub(crate) fn bug(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
    }
}

/// Votes that make a majority of `n` members (any two such sets intersect).
pub const fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// A member list that can form a configuration: 1 to [`MEMBERS_MAX`]
/// replicas, none twice.
pub fn check_members(members: &[ReplicaId]) -> Result<(), ConfigError> {
    let n = members.len();
    if n == 0 || n > MEMBERS_MAX {
        return Err(ConfigError::MemberCount(n));
    }
    for (i, m) in members.iter().enumerate() {
        if members[..i].contains(m) {
            return Err(ConfigError::DuplicateMember(*m));
        }
    }
    Ok(())
}

/// A configuration of the replicated log (RSL's "configuration"): the
/// voting members, numbered by `epoch`. Epoch 0 is the bootstrap
/// configuration; each change chosen in a slot starts the next epoch at
/// the slot after it.
///
/// Kept with its encoding, which is what a log entry, a message and a
/// checkpoint carry: `epoch: u64, count: u32, id: u32 × count`
/// (little-endian).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    epoch: u64,
    members: Vec<ReplicaId>,
    bytes: Bytes,
}

/// Bytes of an encoded membership with `n` members.
const fn membership_bytes(n: usize) -> usize {
    12 + 4 * n
}

impl Membership {
    /// A configuration; refused when the member list cannot form one.
    pub fn new(epoch: u64, members: Vec<ReplicaId>) -> Result<Membership, ConfigError> {
        check_members(&members)?;
        let mut b = BytesMut::with_capacity(membership_bytes(members.len()));
        b.put_u64_le(epoch);
        b.put_u32_le(members.len() as u32);
        for m in &members {
            b.put_u32_le(m.0);
        }
        Ok(Membership {
            epoch,
            members,
            bytes: b.freeze(),
        })
    }

    /// Reads an encoded membership (from the network or a disk); `None`
    /// when the bytes are not exactly one valid configuration.
    pub fn decode(bytes: Bytes) -> Option<Membership> {
        let head = bytes.get(..12)?;
        let epoch = u64::from_le_bytes(head[..8].try_into().ok()?);
        let n = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
        if n > MEMBERS_MAX || bytes.len() != membership_bytes(n) {
            return None;
        }
        let members: Vec<ReplicaId> = bytes[12..]
            .chunks_exact(4)
            .map(|c| ReplicaId(u32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect();
        check_members(&members).ok()?;
        Some(Membership {
            epoch,
            members,
            bytes,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> &[ReplicaId] {
        &self.members
    }

    /// The encoded form.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn contains(&self, id: ReplicaId) -> bool {
        self.members.contains(&id)
    }

    /// Votes needed in this configuration.
    pub fn quorum(&self) -> usize {
        majority(self.members.len())
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "epoch {} {{", self.epoch)?;
        for (i, m) in self.members.iter().enumerate() {
            write!(f, "{}{}", if i > 0 { ", " } else { "" }, m.0)?;
        }
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Config {
        Config::new(
            ClusterId(1),
            ReplicaId(1),
            vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)],
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(three().validate(), Ok(()));
        assert_eq!(three().classic().validate(), Ok(()));
        assert_eq!(three().quorum(), 2);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut c = three();
        c.id = ReplicaId(9);
        assert_eq!(c.validate(), Err(ConfigError::NotAMember(ReplicaId(9))));
        let mut c = three();
        c.members.push(ReplicaId(2));
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateMember(ReplicaId(2)))
        );
        let mut c = three();
        c.window_slots_max = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooSmall {
                name: "window_slots_max",
                ..
            })
        ));
        let mut c = three();
        c.heartbeat_ticks = 5;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Order {
                larger: "election_ticks",
                ..
            })
        ));
        let mut c = three();
        c.window_slots_max = 5000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Order {
                smaller: "window_slots_max",
                ..
            })
        ));
        let mut c = three();
        c.members.clear();
        assert_eq!(c.validate(), Err(ConfigError::MemberCount(0)));
    }

    proptest::proptest! {
        /// A membership decodes to itself; any other bytes decode to a
        /// valid membership or to nothing, never a panic.
        #[test]
        fn membership_round_trips(epoch in 0u64.., ids in proptest::collection::btree_set(0u32..100, 1..10)) {
            let m = Membership::new(epoch, ids.into_iter().map(ReplicaId).collect()).unwrap();
            proptest::prop_assert_eq!(Membership::decode(m.bytes().clone()), Some(m.clone()));
            let b = m.bytes();
            proptest::prop_assert_eq!(Membership::decode(b.slice(..b.len() - 1)), None);
        }

        #[test]
        fn membership_decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Some(m) = Membership::decode(Bytes::from(bytes)) {
                proptest::prop_assert!(check_members(m.members()).is_ok());
            }
        }
    }

    #[test]
    fn a_membership_lists_each_member_once() {
        let r = ReplicaId;
        assert_eq!(
            Membership::new(1, vec![r(1), r(2), r(1)]),
            Err(ConfigError::DuplicateMember(r(1)))
        );
        assert_eq!(Membership::new(1, vec![]), Err(ConfigError::MemberCount(0)));
        let m = Membership::new(2, vec![r(2), r(3), r(4)]).unwrap();
        assert_eq!(m.to_string(), "epoch 2 {2, 3, 4}");
        assert_eq!(m.quorum(), 2);
        // A joiner need not be among the members it is told.
        let mut c = three();
        c.id = r(4);
        c.join = true;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn quorum_is_a_majority() {
        for n in 1..=9u32 {
            let members: Vec<_> = (1..=n).map(ReplicaId).collect();
            let c = Config::new(ClusterId(1), ReplicaId(1), members);
            assert_eq!(c.quorum(), n as usize / 2 + 1);
            // Any two quorums intersect.
            assert!(2 * c.quorum() > n as usize);
        }
    }
}
