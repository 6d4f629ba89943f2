//! Configuration changes asked for by an operator (`replica --change`):
//! a leader proposes and answers once the outcome is known; anyone else
//! answers at once.

use bytes::Bytes;

use crate::core::{Counter, ProposeError, ReplicaId};
use crate::state_machine::StateMachine;
use crate::transport::wire::{self};

use super::admin;
use super::task::CoreTask;

impl<S: StateMachine> CoreTask<S> {
    /// An operator asks for a configuration change: a leader asks its core
    /// and answers once the outcome is known ([`Self::check_config_waiter`]);
    /// anyone else answers at once.
    pub(super) fn on_config_change(&mut self, conn: u64, req: admin::ConfigChangeRequest) {
        use admin::ConfigOutcome as O;
        let members: Vec<ReplicaId> = req.members.iter().map(|m| ReplicaId(*m)).collect();
        let unknown = members
            .iter()
            .find(|m| !self.peers.addresses.iter().any(|(id, _)| *id == m.0));
        let (outcome, message) = if self.clients.config_waiter.is_some() {
            (O::Busy, "a configuration change is in progress".to_string())
        } else if let Some(m) = unknown {
            (
                O::Invalid,
                format!(
                    "replica {} has no address in this replica's configuration file",
                    m.0
                ),
            )
        } else {
            match self.replica.propose_config(members) {
                Ok(m) => {
                    tracing::info!(epoch = m.epoch(), members = ?m.members(), "configuration change asked for");
                    self.clients.config_waiter = Some(admin::ConfigWaiter {
                        conn,
                        epoch: m.epoch(),
                        abandoned: self.replica.counters().get(Counter::ConfigChangesAbandoned),
                    });
                    return;
                }
                Err(ProposeError::NotLeader { .. }) => (O::NotLeader, String::new()),
                Err(ProposeError::Busy) => (
                    O::Busy,
                    "a configuration change is asked for or in flight".to_string(),
                ),
                Err(ProposeError::Invalid(why)) => (O::Invalid, why.to_string()),
                Err(e) => (O::Invalid, e.to_string()),
            }
        };
        self.reply_config(conn, outcome, message);
    }

    /// Answers the waiting configuration change once it is in force, given
    /// up, or out of this replica's hands.
    pub(super) fn check_config_waiter(&mut self) {
        use admin::ConfigOutcome as O;
        let Some(w) = &self.clients.config_waiter else {
            return;
        };
        let r = &self.replica;
        let (outcome, message) = if r.membership().0 >= w.epoch {
            (O::Done, String::new())
        } else if r.counters().get(Counter::ConfigChangesAbandoned) > w.abandoned {
            (
                O::Abandoned,
                "the new members did not catch up in time; the configuration is unchanged"
                    .to_string(),
            )
        } else if !r.is_leader() {
            (
                O::Unknown,
                "this replica stopped leading before the change was chosen: it may still \
                 take effect (see the epoch in --status)"
                    .to_string(),
            )
        } else {
            return;
        };
        let conn = w.conn;
        self.clients.config_waiter = None;
        if outcome == O::Done {
            tracing::info!(epoch = r.membership().0, members = ?r.membership().1, "configuration change in force");
        }
        self.reply_config(conn, outcome, message);
    }

    pub(super) fn reply_config(
        &mut self,
        conn: u64,
        outcome: admin::ConfigOutcome,
        message: String,
    ) {
        let Some(c) = self.clients.conns.get(&conn) else {
            return;
        };
        let r = &self.replica;
        let reply = admin::ConfigChangeReply {
            outcome,
            leader: r.leader_hint().map(|l| l.0),
            epoch: r.membership().0,
            members: r.membership().1.iter().map(|m| m.0).collect(),
            message,
        };
        let json = serde_json::to_vec(&reply).expect("a reply serializes");
        let _ = c.tx.try_send(wire::encode_config_change_reply(
            self.cluster,
            Bytes::from(json),
        ));
    }
}
