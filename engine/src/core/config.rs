//! Static configuration of one replica's core, with every bound named.

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
}

/// Configuration of one replica's protocol core.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster: ClusterId,
    pub id: ReplicaId,
    /// Every voting member, `id` included.
    pub members: Vec<ReplicaId>,
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
    /// Most slots sent in answer to one catch-up request.
    pub catchup_slots_max: u64,
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
            catchup_slots_max: 256,
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
        let n = self.members.len();
        if n == 0 || n > MEMBERS_MAX {
            return Err(ConfigError::MemberCount(n));
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].contains(m) {
                return Err(ConfigError::DuplicateMember(*m));
            }
        }
        if !self.members.contains(&self.id) {
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
            ("promise_bytes_max", self.promise_bytes_max),
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

    /// Votes needed to choose a value or win an election.
    pub fn quorum(&self) -> usize {
        let majority = self.members.len() / 2 + 1;
        if self.planted_bug == Some(PlantedBug::QuorumTooSmall) {
            return (majority - 1).max(1);
        }
        majority
    }

    /// Position of `id` in `members` (its bit in acknowledgement masks).
    pub fn member_index(&self, id: ReplicaId) -> Option<usize> {
        self.members.iter().position(|m| *m == id)
    }

    pub(crate) fn bug(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
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
