//! The checks run during and after a run: durable before send, the
//! execution order, the final state, replays, releases, what is stuck.

use super::super::checker::{Violation, ViolationKind, violation};
use super::super::linearizability::{self};
use super::super::workload::SimKv;
use crate::core::{Apply, Ballot, ClientId, Envelope, Message, Slot, Value};
use crate::state_machine::Executor;

use super::*;

impl Sim {
    pub(super) fn set_violation(&mut self, v: Violation) {
        if self.checks.violation.is_none() {
            if self.cfg.trace {
                self.trace.lines.push(format!(
                    "{:>9} VIOLATION {:?}: {}",
                    self.sched.now, v.kind, v.detail
                ));
            }
            self.checks.violation = Some(v);
        }
    }

    /// A Promise or Accepted may leave only once what it reports is durable.
    pub(super) fn check_durable_before_send(
        &self,
        from: usize,
        env: &Envelope,
    ) -> Result<(), Violation> {
        let node = &self.nodes[from];
        let durable = |slot: Slot, ballot: Ballot| {
            node.seen
                .durable_entries
                .get(&slot)
                .is_some_and(|b| *b >= ballot)
        };
        let fail = |what: String| {
            Err(violation(
                ViolationKind::AckBeforeDurable,
                format!(
                    "node {from} sent {} to {} before {what} was durable",
                    env.msg.kind(),
                    env.to
                ),
            ))
        };
        match &env.msg {
            Message::Promise(p) => {
                if node.seen.durable_promised < p.ballot {
                    return fail(format!("its promise of {}", p.ballot));
                }
                for e in &p.entries {
                    if !durable(e.slot, e.ballot) {
                        return fail(format!("{} {}", e.slot, e.ballot));
                    }
                }
            }
            Message::Accepted(a) => {
                // A slot it has applied is chosen: the core acknowledges
                // a re-sent Accept for it below its log start without
                // storing it, and that vote cannot change what is chosen.
                let applied = node.executor.next_slot();
                for slot in a.first.0.max(applied.0)..a.end.0 {
                    if !durable(Slot(slot), a.ballot) {
                        return fail(format!("s{slot} {}", a.ballot));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The first time any replica applies a slot, its commands' first
    /// occurrences are executions: their order is the witness handed to the
    /// linearizability checker (verified there, not trusted).
    pub(super) fn record_execution_order(&mut self, value: &Value) {
        if let Value::Batch(b) = value {
            for cmd in b.iter() {
                let next = self.checks.execution_order.len() as u64;
                self.checks
                    .execution_order
                    .entry((cmd.client.0, cmd.seq))
                    .or_insert(next);
            }
        }
    }

    /// Checks that hold at the end of a run: the history is linearizable and
    /// every acknowledged command is in a chosen slot.
    pub fn check_final(&self) -> Result<(), Violation> {
        if let Some(v) = &self.checks.violation {
            return Err(v.clone());
        }
        for (client, seq) in self.acknowledged() {
            if !self.ledger.is_command_chosen(client, seq) {
                return Err(violation(
                    ViolationKind::LostAcknowledged,
                    format!(
                        "client {} seq {seq} acknowledged but never chosen",
                        client.0
                    ),
                ));
            }
        }
        self.check_state_replays()?;
        let mut history = self.history.clone();
        for (op, seq) in history.iter_mut().zip(&self.workload.history_seq) {
            op.witness = self.checks.execution_order.get(&(op.client, *seq)).copied();
        }
        linearizability::check(&history).map_err(|e| {
            violation(
                ViolationKind::Linearizability,
                format!("key {:?} ({} ops):{}", e.key, e.ops, e.detail),
            )
        })
    }

    /// Every running replica's state equals the chosen log replayed from
    /// genesis to its apply point, whatever checkpoints it took, restored
    /// or installed on the way.
    pub(super) fn check_state_replays(&self) -> Result<(), Violation> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.replica.is_none() {
                continue;
            }
            let upto = node.executor.next_slot().0 as usize;
            let mut replay =
                Executor::new(SimKv::default(), sim_session_limits(&self.cfg), Slot::ZERO);
            let mut replies = Vec::new();
            for (slot, value) in self.checks.applied_values[..upto].iter().enumerate() {
                let a = Apply {
                    slot: Slot(slot as u64),
                    value: value.clone(),
                };
                replay.apply(&a, &mut replies);
                replies.clear();
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            node.executor.snapshot(&mut a);
            replay.snapshot(&mut b);
            if a != b {
                return Err(violation(
                    ViolationKind::StateDiverged,
                    format!(
                        "node {i}'s state at slot {upto} differs from replaying the chosen log \
                         ({} checkpoints kept, {} restores, {} installs in the run)",
                        node.checkpoints.kept.len(),
                        self.stats.checkpoint_restores,
                        self.stats.checkpoint_installs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `(client, seq)` of every acknowledged operation. A client's n-th
    /// operation has seq n (each `begin_op` takes the next seq).
    pub(super) fn acknowledged(&self) -> Vec<(ClientId, u64)> {
        self.history
            .iter()
            .zip(&self.workload.history_seq)
            .filter(|(op, _)| op.response.is_some())
            .map(|(op, seq)| (ClientId(op.client), *seq))
            .collect()
    }

    /// Whether every member of the newest configuration any running
    /// replica knows is running, knows it, and has committed as far as the
    /// furthest replica; and whether every running replica outside it that
    /// was ever a member has retired. (A replica that cannot start, its
    /// disk wiped or unsalvageable, is the operator's to replace; a joiner
    /// whose change was never made stays a joiner.)
    pub(super) fn members_settled(&self) -> Result<(), String> {
        let running = || {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((i, n.replica.as_ref()?)))
        };
        let Some((epoch, members)) = running()
            .filter(|(_, r)| r.membership_known())
            .map(|(_, r)| r.membership())
            .max_by_key(|(e, _)| *e)
            .map(|(e, m)| (e, m.to_vec()))
        else {
            return Ok(());
        };
        let commit = running()
            .map(|(_, r)| r.commit())
            .max()
            .unwrap_or(Slot::ZERO);
        for id in &members {
            let i = self.index(*id);
            if self.nodes[i].refused.is_some() {
                continue;
            }
            let Some(r) = self.nodes[i].replica.as_ref() else {
                return Err(format!(" member n{i} of epoch {epoch} is down"));
            };
            if r.is_retired() || r.membership().0 != epoch || r.commit() < commit {
                return Err(format!(
                    " member n{i} of epoch {epoch} retired {} epoch {} commit {} (furthest {commit})",
                    r.is_retired(),
                    r.membership().0,
                    r.commit()
                ));
            }
        }
        for (i, r) in running() {
            if !members.contains(&r.id()) && r.is_departing() {
                return Err(format!(" n{i}, removed, never released"));
            }
        }
        Ok(())
    }

    /// Node `i` just retired: some configuration at or after the one it
    /// knows removed it must be established, a quorum of its members
    /// having durably committed past the change that made it.
    pub(super) fn check_release(&self, i: usize) -> Result<(), Violation> {
        let Some(r) = self.nodes[i].replica.as_ref() else {
            return Ok(());
        };
        let epoch = r.membership().0;
        let established = self
            .checks
            .config_epochs
            .iter()
            .filter(|(e, _)| **e >= epoch)
            .any(|(_, (slot, m))| {
                let durable = m
                    .members()
                    .iter()
                    .filter(|id| self.nodes[self.index(**id)].seen.durable_commit > *slot)
                    .count();
                durable >= m.quorum()
            });
        if established {
            return Ok(());
        }
        Err(violation(
            ViolationKind::PrematureRelease,
            format!(
                "node {i} retired at epoch {epoch} before any configuration since was established (durable commits: {:?})",
                self.nodes
                    .iter()
                    .map(|n| n.seen.durable_commit.0)
                    .collect::<Vec<_>>()
            ),
        ))
    }

    pub(super) fn stuck_report(&self) -> String {
        let mut s = format!("clients not done {}µs after heal;", self.cfg.liveness_us);
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.replica {
                Some(r) => s.push_str(&format!(
                    " n{i}:{:?} promised {} commit {} stopped {} retired {} epoch {} members {:?} known {};",
                    r.role(),
                    r.promised(),
                    r.commit(),
                    r.is_stopped(),
                    r.is_retired(),
                    r.membership().0,
                    r.membership().1.iter().map(|m| m.0 - 1).collect::<Vec<_>>(),
                    r.membership_known(),
                )),
                None => s.push_str(&format!(" n{i}:down;")),
            }
        }
        s
    }
}
