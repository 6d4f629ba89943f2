//! A sampled command's path through the cluster, cut into consecutive,
//! non-overlapping segments whose durations add up to its end-to-end
//! latency. The stages of DESIGN.md's table overlap on purpose (`p2a.send`,
//! `p2b.recv` and `leader.quorum` all start when a slot is sealed); the
//! path keeps only the part of each that delayed this command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The timestamps of one sampled command (ns, `CLOCK_MONOTONIC`, the same
/// clock in every process), earliest where several events exist (the
/// fastest follower, the first `Accepted`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTimes {
    /// The client called (start of `client.recv`).
    pub call: i64,
    /// The client got the answer.
    pub answered: i64,
    /// The request was written to the socket.
    pub sent: i64,
    /// The leader decoded it.
    pub queued: i64,
    /// The leader took it into a batch.
    pub taken: i64,
    /// Its slot was sealed.
    pub sealed: i64,
    /// Its slot committed.
    pub committed: i64,
    /// The leader's own accept was durable.
    pub leader_durable: i64,
    /// The fastest follower decoded the Accept.
    pub follower_got: i64,
    /// ... and made it durable.
    pub follower_durable: i64,
    /// The first Accepted reached the leader.
    pub first_accepted: i64,
    /// The leader executed the slot.
    pub applied: i64,
    /// The reply was written.
    pub replied: i64,
}

/// The segments of the path, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    ClientSend,
    NetRequest,
    LeaderQueue,
    LeaderBatch,
    AcceptTransit,
    FollowerPersist,
    AcceptedTransit,
    LeaderPersist,
    CommitWait,
    LeaderApply,
    LeaderReply,
    NetReply,
}

/// Whether a segment is waiting or working, by its nature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nature {
    /// Waiting in a queue, a socket or a scheduler.
    Queueing,
    /// Doing the work (a flush, executing) plus whatever wait is inside it:
    /// the report splits those with the flush figures.
    Service,
}

impl Segment {
    pub const ALL: [Segment; 12] = [
        Segment::ClientSend,
        Segment::NetRequest,
        Segment::LeaderQueue,
        Segment::LeaderBatch,
        Segment::AcceptTransit,
        Segment::FollowerPersist,
        Segment::AcceptedTransit,
        Segment::LeaderPersist,
        Segment::CommitWait,
        Segment::LeaderApply,
        Segment::LeaderReply,
        Segment::NetReply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Segment::ClientSend => "client.send",
            Segment::NetRequest => "net.request",
            Segment::LeaderQueue => "leader.queue",
            Segment::LeaderBatch => "leader.batch",
            Segment::AcceptTransit => "accept.transit",
            Segment::FollowerPersist => "follower.persist",
            Segment::AcceptedTransit => "accepted.transit",
            Segment::LeaderPersist => "leader.persist",
            Segment::CommitWait => "commit.wait",
            Segment::LeaderApply => "leader.apply",
            Segment::LeaderReply => "leader.reply",
            Segment::NetReply => "net.reply",
        }
    }

    pub fn from_name(n: &str) -> Option<Segment> {
        Segment::ALL.iter().copied().find(|s| s.name() == n)
    }

    /// What the segment covers, for reports.
    pub fn meaning(self) -> &'static str {
        match self {
            Segment::ClientSend => "client: call → request written",
            Segment::NetRequest => "request written → decoded at the leader (socket, reader task)",
            Segment::LeaderQueue => "decoded → taken into a batch by the core task",
            Segment::LeaderBatch => "taken → its slot sealed (batch filling, window full)",
            Segment::AcceptTransit => {
                "sealed → Accept decoded at the fastest follower (send queue, socket)"
            }
            Segment::FollowerPersist => "Accept decoded → durable at that follower",
            Segment::AcceptedTransit => "follower durable → its Accepted decoded at the leader",
            Segment::LeaderPersist => "sealed → durable at the leader (when the leader is last)",
            Segment::CommitWait => "majority durable → the core notices the commit",
            Segment::LeaderApply => "committed → executed",
            Segment::LeaderReply => "executed → reply written",
            Segment::NetReply => "reply written → the client has the answer",
        }
    }

    pub fn nature(self) -> Nature {
        match self {
            Segment::FollowerPersist | Segment::LeaderPersist | Segment::LeaderApply => {
                Nature::Service
            }
            _ => Nature::Queueing,
        }
    }

    /// The stage of DESIGN.md's table a segment is part of; `None` for
    /// the hand-offs between processes (socket, reader task, wake-up),
    /// which no stage covers alone.
    pub fn stage(self) -> Option<&'static str> {
        match self {
            Segment::ClientSend => Some("client.send"),
            Segment::NetRequest | Segment::NetReply => None,
            Segment::LeaderQueue => Some("leader.queue"),
            Segment::LeaderBatch => Some("leader.batch"),
            Segment::AcceptTransit => Some("p2a.send"),
            Segment::FollowerPersist => Some("follower.persist"),
            Segment::AcceptedTransit => Some("p2b.recv"),
            Segment::LeaderPersist => Some("leader.persist"),
            Segment::CommitWait => Some("leader.quorum"),
            Segment::LeaderApply => Some("leader.apply"),
            Segment::LeaderReply => Some("leader.reply"),
        }
    }
}

impl FlowTimes {
    /// End to end, ns.
    pub fn e2e(&self) -> i64 {
        self.answered - self.call
    }

    /// The path cut into segments (ns each, never negative). The commit
    /// needs the leader's own accept and the fastest follower's (three
    /// replicas: a majority of two): whichever came last is on the path.
    pub fn segments(&self) -> [(Segment, i64); 12] {
        let d = |a: i64, b: i64| (b - a).max(0);
        let follower_last = self.first_accepted >= self.leader_durable;
        let critical = self.first_accepted.max(self.leader_durable);
        let (at, fp, acc, lp) = if follower_last {
            (
                d(self.sealed, self.follower_got),
                d(self.follower_got, self.follower_durable),
                d(self.follower_durable, self.first_accepted),
                0,
            )
        } else {
            (0, 0, 0, d(self.sealed, self.leader_durable))
        };
        [
            (Segment::ClientSend, d(self.call, self.sent)),
            (Segment::NetRequest, d(self.sent, self.queued)),
            (Segment::LeaderQueue, d(self.queued, self.taken)),
            (Segment::LeaderBatch, d(self.taken, self.sealed)),
            (Segment::AcceptTransit, at),
            (Segment::FollowerPersist, fp),
            (Segment::AcceptedTransit, acc),
            (Segment::LeaderPersist, lp),
            (Segment::CommitWait, d(critical, self.committed)),
            (Segment::LeaderApply, d(self.committed, self.applied)),
            (Segment::LeaderReply, d(self.applied, self.replied)),
            (Segment::NetReply, d(self.replied, self.answered)),
        ]
    }
}

/// Where the time of commands around one latency quantile goes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Band {
    /// Which quantile ("p50", "p99").
    pub at: String,
    /// Sampled commands in the band.
    pub commands: usize,
    /// Their mean end-to-end latency, µs.
    pub e2e_us: f64,
    /// Mean µs per segment (path order is `Segment::ALL`).
    pub segments_us: BTreeMap<String, f64>,
    /// What the segments do not cover (clock skew between the client's
    /// events; should be ~0), µs.
    pub unaccounted_us: f64,
    /// The standard error of each segment's mean (its spread over the
    /// band's commands / √commands), µs: the band's own noise, which a
    /// comparison needs before it names a path change (a tail band of a
    /// few dozen commands, one of them behind a rare stall, is noisy).
    #[serde(default)]
    pub segments_se_us: BTreeMap<String, f64>,
    /// The same for the band's mean end to end, µs.
    #[serde(default)]
    pub e2e_se_us: f64,
}

impl Band {
    pub fn share(&self, seg: &str) -> f64 {
        if self.e2e_us <= 0.0 {
            return 0.0;
        }
        self.segments_us.get(seg).copied().unwrap_or(0.0) / self.e2e_us
    }

    /// The segment with the most time.
    pub fn dominant(&self) -> Option<(&str, f64)> {
        self.segments_us
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(n, v)| (n.as_str(), *v))
    }
}

/// The commands whose latency lies in quantile range `[lo, hi]`, averaged.
pub fn band(flows: &[FlowTimes], at: &str, lo: f64, hi: f64) -> Option<Band> {
    let mut e2e: Vec<i64> = flows.iter().map(FlowTimes::e2e).collect();
    if e2e.is_empty() {
        return None;
    }
    e2e.sort_unstable();
    let q = |p: f64| e2e[((p * (e2e.len() - 1) as f64).round() as usize).min(e2e.len() - 1)];
    let (lo_v, hi_v) = (q(lo), q(hi));
    let picked: Vec<&FlowTimes> = flows
        .iter()
        .filter(|f| (lo_v..=hi_v).contains(&f.e2e()))
        .collect();
    if picked.is_empty() {
        return None;
    }
    let n = picked.len() as f64;
    let mut segs: BTreeMap<String, f64> = BTreeMap::new();
    let mut squares: BTreeMap<String, f64> = BTreeMap::new();
    let (mut total, mut total_sq) = (0.0, 0.0);
    let mut covered = 0.0;
    for f in &picked {
        let e = f.e2e() as f64 / 1000.0;
        total += e;
        total_sq += e * e;
        for (s, v) in f.segments() {
            let us = v as f64 / 1000.0;
            *segs.entry(s.name().to_string()).or_default() += us;
            *squares.entry(s.name().to_string()).or_default() += us * us;
            covered += us;
        }
    }
    // The standard error of a mean from its sums: √(sample variance / n).
    let se = |sum: f64, sq: f64| {
        if n < 2.0 {
            return 0.0;
        }
        let var = ((sq - sum * sum / n) / (n - 1.0)).max(0.0);
        (var / n).sqrt()
    };
    let segments_se_us = segs
        .iter()
        .map(|(k, sum)| (k.clone(), se(*sum, squares[k])))
        .collect();
    for v in segs.values_mut() {
        *v /= n;
    }
    Some(Band {
        at: at.to_string(),
        commands: picked.len(),
        e2e_us: total / n,
        segments_us: segs,
        unaccounted_us: (total - covered) / n,
        segments_se_us,
        e2e_se_us: se(total, total_sq),
    })
}

/// The bands the reports use: around the median, and the slowest 1.5%
/// (enough sampled commands to average, still the tail).
pub fn standard_bands(flows: &[FlowTimes]) -> Vec<Band> {
    [("p50", 0.45, 0.55), ("p99", 0.985, 1.0)]
        .iter()
        .filter_map(|(at, lo, hi)| band(flows, at, *lo, *hi))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(base: i64, follower_persist: i64) -> FlowTimes {
        FlowTimes {
            call: base,
            sent: base + 10,
            queued: base + 30,
            taken: base + 40,
            sealed: base + 50,
            leader_durable: base + 60,
            follower_got: base + 70,
            follower_durable: base + 70 + follower_persist,
            first_accepted: base + 80 + follower_persist,
            committed: base + 85 + follower_persist,
            applied: base + 95 + follower_persist,
            replied: base + 100 + follower_persist,
            answered: base + 120 + follower_persist,
        }
    }

    #[test]
    fn segments_add_up_to_end_to_end() {
        for fp in [0, 5, 1000] {
            let f = flow(1_000, fp);
            let sum: i64 = f.segments().iter().map(|s| s.1).sum();
            assert_eq!(sum, f.e2e());
        }
        // The leader last: its persist is on the path, the follower's not.
        let mut f = flow(0, 0);
        f.leader_durable = f.first_accepted + 40;
        f.committed = f.leader_durable + 5;
        f.applied = f.committed + 10;
        f.replied = f.applied + 5;
        f.answered = f.replied + 20;
        let segs: BTreeMap<_, _> = f.segments().into_iter().collect();
        assert_eq!(segs[&Segment::FollowerPersist], 0);
        assert_eq!(segs[&Segment::LeaderPersist], f.leader_durable - f.sealed);
        assert_eq!(segs.values().sum::<i64>(), f.e2e());
    }

    #[test]
    fn the_tail_band_names_the_segment_that_made_it_slow() {
        // 990 fast commands and 10 whose follower persist took 1 ms.
        let mut flows: Vec<FlowTimes> = (0..990).map(|i| flow(i * 1000, 10)).collect();
        flows.extend((0..10).map(|i| flow(i * 1000, 1_000_000)));
        let bands = standard_bands(&flows);
        let p99 = bands.iter().find(|b| b.at == "p99").unwrap();
        assert_eq!(p99.dominant().unwrap().0, "follower.persist");
        assert!(p99.share("follower.persist") > 0.9);
        let p50 = bands.iter().find(|b| b.at == "p50").unwrap();
        assert_ne!(p50.dominant().unwrap().0, "follower.persist");
        assert!(p50.unaccounted_us.abs() < 1e-9);
    }
}
