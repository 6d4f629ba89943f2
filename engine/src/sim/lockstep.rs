//! A fault-free cluster stepped in lockstep with zero latency: every
//! message is delivered at once and every persist completes at once. It
//! measures what the protocol core itself costs per committed command
//! (the criterion benchmark, and later instruction counts for the gate).

use std::collections::VecDeque;

use crate::core::{ClientId, ClusterId, CommandRef, Config, Envelope, Output, Replica, ReplicaId};

/// The configuration of replica `id` in a lockstep cluster (here and the
/// gate's): `window` slots of up to `batch` commands, a short in-memory
/// log as a long-running replica keeps, and replica 1 timing out first so
/// that it wins the first election.
pub(crate) fn lockstep_config(
    cluster: ClusterId,
    id: ReplicaId,
    members: &[ReplicaId],
    window: u32,
    batch: u32,
) -> Config {
    let mut c = Config::new(cluster, id, members.to_vec());
    c.window_slots_max = window;
    c.batch_commands_max = batch;
    c.fit_log_ahead_to_window();
    c.log_retained_slots_max = 1024;
    c.promise_lag_slots_max = 1024;
    c.election_ticks = if id.0 == 1 { 3 } else { 1000 };
    c.heartbeat_ticks = 1;
    c
}

/// `n` replicas of which replica 1 leads, stepped until quiet.
pub struct Lockstep {
    replicas: Vec<Replica>,
    out: Output,
    queue: VecDeque<Envelope>,
    next_seq: u64,
    op: Vec<u8>,
    batch: u32,
    window: u32,
    committed_commands: u64,
}

impl Lockstep {
    /// A cluster of `n` replicas with `window` slots in flight and up to
    /// `batch` commands of `op_bytes` each per slot; replica 1 is elected.
    pub fn new(n: u32, window: u32, batch: u32, op_bytes: usize) -> Lockstep {
        let members: Vec<ReplicaId> = (1..=n).map(ReplicaId).collect();
        let replicas = members
            .iter()
            .map(|id| {
                Replica::new(lockstep_config(ClusterId(1), *id, &members, window, batch))
                    .expect("valid config")
            })
            .collect();
        let mut l = Lockstep {
            replicas,
            out: Output::default(),
            queue: VecDeque::new(),
            next_seq: 1,
            op: vec![0x42; op_bytes],
            batch,
            window,
            committed_commands: 0,
        };
        while !l.replicas[0].is_leader() {
            l.replicas[0].on_tick();
            l.settle();
        }
        l
    }

    /// Submits one window's worth of full batches and steps until every
    /// command is committed at the leader.
    pub fn round(&mut self) {
        let n = u64::from(self.window) * u64::from(self.batch);
        let target = self.committed_commands + n;
        for _ in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.replicas[0].on_client(CommandRef {
                client: ClientId(1),
                seq,
                ack_below: seq,
                op: &self.op,
            });
        }
        while self.committed_commands < target {
            assert!(self.settle(), "the cluster stopped making progress");
        }
    }

    /// Commands per round.
    pub fn round_commands(&self) -> u64 {
        u64::from(self.window) * u64::from(self.batch)
    }

    /// Drains every replica and delivers every message until nothing moves;
    /// returns whether anything happened.
    pub fn settle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut moved = false;
            for i in 0..self.replicas.len() {
                loop {
                    self.replicas[i].drain(&mut self.out);
                    if self.out.is_empty() {
                        break;
                    }
                    moved = true;
                    self.queue.extend(self.out.send.drain(..));
                    if i == 0 {
                        self.committed_commands += self
                            .out
                            .apply
                            .iter()
                            .map(|a| u64::from(a.value.command_count()))
                            .sum::<u64>();
                    }
                    let token = self.out.persist.last().map(|p| p.token);
                    self.out.clear();
                    match token {
                        Some(t) => self.replicas[i].on_persisted(t),
                        None => break,
                    }
                }
            }
            while let Some(env) = self.queue.pop_front() {
                moved = true;
                let to = (env.to.0 - 1) as usize;
                self.replicas[to].on_message(env);
            }
            if !moved {
                return any;
            }
            any = true;
        }
    }

    pub fn committed_commands(&self) -> u64 {
        self.committed_commands
    }

    pub fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_commit_every_command_with_one_slot_per_batch() {
        for (window, batch) in [(1, 1), (4, 16), (8, 256)] {
            let mut l = Lockstep::new(3, window, batch, 64);
            let slots_before = l.replica(0).commit();
            for _ in 0..3 {
                l.round();
            }
            assert_eq!(
                l.committed_commands(),
                3 * u64::from(window) * u64::from(batch)
            );
            let slots = l.replica(0).commit().since(slots_before);
            assert_eq!(slots, 3 * u64::from(window), "one slot per full batch");
            for i in 0..3 {
                l.replica(i).check_invariants();
            }
        }
    }
}
