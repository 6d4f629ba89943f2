//! The simulated network and the fault schedule: latency, partitions,
//! blocked links, filters, reconfigurations, leadership changes, the heal.

use rand_core::Rng;

use crate::core::{Envelope, ReplicaId};

use super::*;

impl Sim {
    pub(super) fn latency(&mut self, from: usize) -> u64 {
        let f = &self.cfg.faults;
        let (base, reorder_ppm, reorder_us) = (f.delay_us, f.reorder_ppm, f.reorder_us);
        let mut d = self.between(base);
        if self.net.faults_on {
            if self.chance(reorder_ppm) {
                d += self.sched.rng.next_u64() % (reorder_us + 1);
            }
            d += self.net.clog_us.get(from).copied().unwrap_or(0);
        }
        d
    }

    pub(super) fn send_peer(&mut self, env: Envelope) {
        self.stats.messages += 1;
        let (from, to) = (self.index(env.from), self.index(env.to));
        if let Err(v) = self.check_durable_before_send(from, &env) {
            self.set_violation(v);
        }
        if let Some(f) = self.net.filter.as_mut()
            && f(&env)
        {
            self.stats.messages_dropped += 1;
            return;
        }
        if self.net.faults_on {
            let f = &self.cfg.faults;
            let (drop, dup, xtalk) = (f.drop_ppm, f.dup_ppm, f.crosstalk_ppm);
            if self.net.blocked[from][to] || self.chance(drop) {
                self.stats.messages_dropped += 1;
                return;
            }
            if self.chance(dup) {
                let d = self.latency(from);
                self.schedule(d, Event::Deliver { env: env.clone() });
            }
            if self.chance(xtalk) {
                let mut foreign = env.clone();
                foreign.cluster = FOREIGN_CLUSTER;
                let d = self.latency(from);
                self.schedule(d, Event::Deliver { env: foreign });
            }
        }
        let d = self.latency(from);
        self.schedule(d, Event::Deliver { env });
    }

    pub(super) fn partition_start(&mut self) {
        if !self.recur(self.cfg.faults.partition_mean_us, Event::PartitionStart) {
            return;
        }
        self.heal_network();
        self.stats.partitions += 1;
        self.net.partition_id += 1;
        let n = self.nodes.len();
        match self.sched.rng.next_u32() % 4 {
            0 => {
                // Split in two.
                let side: Vec<bool> = (0..n)
                    .map(|_| self.sched.rng.next_u32().is_multiple_of(2))
                    .collect();
                for a in 0..n {
                    for b in 0..n {
                        self.net.blocked[a][b] = side[a] != side[b];
                    }
                }
            }
            1 => {
                // Some one-way links.
                for _ in 0..1 + self.sched.rng.next_u32() % n as u32 {
                    let a = self.sched.rng.next_u64() as usize % n;
                    let b = self.sched.rng.next_u64() as usize % n;
                    self.net.blocked[a][b] = true;
                }
            }
            2 => {
                // Isolate one node, often the leader.
                let victim = match self.leader() {
                    Some(l) if self.sched.rng.next_u32().is_multiple_of(2) => l,
                    _ => self.sched.rng.next_u64() as usize % n,
                };
                self.isolate(victim);
            }
            _ => {
                // Clog one node's outgoing links.
                let victim = self.sched.rng.next_u64() as usize % n;
                self.net.clog_us[victim] = 2_000 + self.sched.rng.next_u64() % 20_000;
            }
        }
        let d = self.between(self.cfg.faults.partition_us);
        let id = self.net.partition_id;
        self.schedule(d, Event::PartitionEnd { id });
    }

    /// Blocks every link to and from node `i`.
    pub fn isolate(&mut self, i: usize) {
        let n = self.nodes.len();
        for j in 0..n {
            self.net.blocked[i][j] = j != i;
            self.net.blocked[j][i] = j != i;
        }
        self.net.faults_on = true;
    }

    /// Blocks (or unblocks) the one-way link `from → to`.
    pub fn set_blocked(&mut self, from: usize, to: usize, blocked: bool) {
        self.net.blocked[from][to] = blocked;
        if blocked {
            self.net.faults_on = true;
        }
    }

    /// Removes every partition and clog.
    pub fn heal_network(&mut self) {
        for row in &mut self.net.blocked {
            row.fill(false);
        }
        self.net.clog_us.fill(0);
    }

    /// Drops every peer message for which `filter` returns true.
    pub fn set_filter(&mut self, filter: MessageFilter) {
        self.net.filter = Some(filter);
    }

    pub fn clear_filter(&mut self) {
        self.net.filter = None;
    }

    /// Drops every client packet for which `filter` returns true.
    pub fn set_client_filter(&mut self, filter: ClientFilter) {
        self.workload.filter = Some(filter);
    }

    pub fn clear_client_filter(&mut self) {
        self.workload.filter = None;
    }

    /// Delivers a crafted message after `delay_us` (a forged or foreign peer).
    pub fn inject(&mut self, env: Envelope, delay_us: u64) {
        self.schedule(delay_us, Event::Deliver { env });
    }

    /// A random configuration change during the fault phase: three
    /// distinct nodes; those not running as members start as joiners.
    pub(super) fn reconfigure(&mut self) {
        if !self.recur(self.cfg.faults.reconfig_mean_us, Event::Reconfigure) {
            return;
        }
        let n = self.nodes.len();
        let Some(leader) = self.leader() else {
            return;
        };
        // Half the changes may remove the leader, checkpoints on or off: a
        // removed leader (and every removed member) departs, voting on
        // until a leader of the new configuration releases it, so a crash
        // during the hand-off cannot leave the new members not knowing the
        // change with no old quorum left to choose it again; and it serves
        // catch-up in its ballot to members that lack the change.
        let mut target: Vec<usize> = Vec::with_capacity(3);
        if self.sched.rng.next_u32().is_multiple_of(2) {
            target.push(leader);
        }
        while target.len() < 3 {
            let m = self.sched.rng.next_u64() as usize % n;
            if !target.contains(&m) {
                target.push(m);
            }
        }
        target.sort_unstable();
        let in_force: Vec<ReplicaId> = self
            .replica(leader)
            .map(|r| r.membership().1.to_vec())
            .unwrap_or_default();
        for &m in &target {
            // A removed replica comes back as a joiner, departing or
            // retired alike (as an operator restarts it with `join`): a
            // departing one left as it is would take the new leader's
            // heartbeats for its release and retire. Removed as the
            // leader (and `--status`) says, whatever the replica itself
            // has learned yet.
            let outside = self.nodes[m].dormant
                || !in_force.contains(&self.members[m])
                || self.nodes[m]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.is_retired() || r.is_departing());
            if outside {
                self.start_joiner(m, &target);
            }
        }
        if self.change_config(&target) {
            self.stats.reconfigurations += 1;
        }
    }

    /// A random leadership event during the fault phase: the leader
    /// relinquishes (and holds off for three election timeouts), or a
    /// node's veto on leading flips (a minority of nodes vetoed at most).
    pub(super) fn leadership_event(&mut self) {
        if !self.recur(self.cfg.faults.leadership_mean_us, Event::Leadership) {
            return;
        }
        if self.sched.rng.next_u32().is_multiple_of(2) {
            if let Some(leader) = self.leader() {
                self.with_replica(leader, |r| {
                    r.relinquish();
                });
            }
            return;
        }
        let n = self.nodes.len();
        let i = self.sched.rng.next_u64() as usize % n;
        let vetoed = self.nodes.iter().filter(|n| n.vetoed).count();
        if self.nodes[i].vetoed || vetoed < (self.cfg.voters() - 1) / 2 {
            self.nodes[i].vetoed = !self.nodes[i].vetoed;
        }
    }

    /// End of the safety phase: faults stop, partitions heal, every
    /// crashed or stopped replica restarts, and each client owes
    /// `liveness_ops` more operations.
    pub(super) fn heal(&mut self) {
        self.net.faults_on = false;
        self.heal_network();
        for n in &mut self.nodes {
            n.vetoed = false;
        }
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        for c in 0..self.workload.clients.len() {
            self.workload.clients[c].remaining = self.cfg.liveness_ops;
            let free =
                self.cfg.client_outstanding_max as usize - self.workload.clients[c].pending.len();
            for _ in 0..free {
                self.schedule(1, Event::ClientStart { client: c });
            }
        }
    }
}
