//! Operator requests on client connections: configuration changes
//! (`replica --change`, [`crate::client::change_config`]).
//!
//! A request names the new voting members. The leader asks its core to
//! change (`Replica::propose_config`: proposed once a quorum of the new
//! members has caught up, one change at a time) and answers once the new
//! configuration is in force here, or once it is known not to be.

use serde::{Deserialize, Serialize};

/// Change the voting members to `members` (replica ids).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChangeRequest {
    pub members: Vec<u32>,
}

/// How a configuration change request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigOutcome {
    /// The new configuration is chosen and in force.
    Done,
    /// This replica does not lead: ask `leader` (if known).
    NotLeader,
    /// A change is already asked for or in flight: ask again later.
    Busy,
    /// The members cannot form a configuration (see the message).
    Invalid,
    /// The new members did not catch up in time; nothing changed.
    Abandoned,
    /// This replica stopped leading before the change was chosen: it may
    /// or may not take effect (the status shows the epoch in force).
    Unknown,
}

/// The answer to a [`ConfigChangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChangeReply {
    pub outcome: ConfigOutcome,
    /// The leader as the answering replica knows it.
    pub leader: Option<u32>,
    /// The configuration in force at the answering replica.
    pub epoch: u64,
    pub members: Vec<u32>,
    pub message: String,
}

impl ConfigChangeReply {
    /// Whether asking again (elsewhere or later) may succeed.
    pub fn retry(&self) -> bool {
        matches!(self.outcome, ConfigOutcome::NotLeader | ConfigOutcome::Busy)
    }
}

/// The one configuration change this leader is answering for.
pub(crate) struct ConfigWaiter {
    /// The connection that asked.
    pub conn: u64,
    /// The epoch the change creates.
    pub epoch: u64,
    /// `config_changes_abandoned` when it was asked (a rise means this one).
    pub abandoned: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_as_json_and_say_when_to_retry() {
        let r = ConfigChangeReply {
            outcome: ConfigOutcome::NotLeader,
            leader: Some(3),
            epoch: 2,
            members: vec![1, 2, 3],
            message: String::new(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"not_leader\""), "{json}");
        assert_eq!(serde_json::from_str::<ConfigChangeReply>(&json).unwrap(), r);
        assert!(r.retry());
        for o in [
            ConfigOutcome::Done,
            ConfigOutcome::Invalid,
            ConfigOutcome::Abandoned,
            ConfigOutcome::Unknown,
        ] {
            assert!(
                !ConfigChangeReply {
                    outcome: o,
                    ..r.clone()
                }
                .retry()
            );
        }
    }
}
