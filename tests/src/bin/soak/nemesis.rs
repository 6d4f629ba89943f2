//! The soak's nemesis: one fault at a time (partitions, cuts, delays,
//! loss, crashes, pauses) and the failover figures read from the history.

use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, ClientOptions};
use engine::kv::KvOp;
use engine::transport::net::Network;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use system_tests::{End, LinkFault, ProcCluster, id};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FaultKind {
    Partition,
    /// Delay, jitter or loss: links slow or flaky, not cut.
    Degraded,
    Crash,
    Pause,
}

pub(super) struct Fault {
    pub(super) what: String,
    pub(super) kind: FaultKind,
    pub(super) at: Instant,
    /// The leader was cut off, crashed or paused: a failover follows.
    pub(super) leader: bool,
    /// Then: how long until a fresh client that does not know the old
    /// leader had a write acknowledged (the cluster's failover, apart
    /// from the workload clients' attempt timeout).
    pub(super) probe: Option<Duration>,
}

/// The nemesis: one fault at a time, held for 0.5–3 s, then healed (a
/// crashed replica restarted, a paused one resumed), then 0.5–2 s quiet.
pub(super) async fn nemesis(
    c: &mut ProcCluster,
    seed: u64,
    start: Instant,
    run: Duration,
) -> Vec<Fault> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let n = c.addresses.len();
    let end = Instant::now() + run;
    let mut faults = Vec::new();
    let ms = |rng: &mut Xoshiro256PlusPlus, lo: u64, hi: u64| {
        Duration::from_millis(lo + rng.next_u64() % (hi - lo))
    };
    while Instant::now() + Duration::from_secs(1) < end {
        let leader = current_leader(c).await;
        let pick = |rng: &mut Xoshiro256PlusPlus| (rng.next_u64() % n as u64) as usize;
        let other = |rng: &mut Xoshiro256PlusPlus, not: usize| {
            (not + 1 + (rng.next_u64() % (n as u64 - 1)) as usize) % n
        };
        let hold = ms(&mut rng, 500, 3000);
        let choice = rng.next_u64() % 11;
        let at = Instant::now();
        let mut crashed = None;
        let mut paused = None;
        let (what, kind, on_leader) = {
            let net = c.net();
            let blackhole = if rng.next_u64() % 2 == 0 {
                LinkFault::BLACKHOLE
            } else {
                LinkFault::REFUSE
            };
            match (choice, leader) {
                (0, Some(l)) => {
                    net.isolate(id(l).0, blackhole);
                    (
                        format!("isolate leader {}", id(l)),
                        FaultKind::Partition,
                        true,
                    )
                }
                (1, _) => {
                    let f = match leader {
                        Some(l) => other(&mut rng, l),
                        None => pick(&mut rng),
                    };
                    net.isolate(id(f).0, blackhole);
                    (
                        format!("isolate replica {}", id(f)),
                        FaultKind::Partition,
                        false,
                    )
                }
                (2, Some(l)) => {
                    net.mute(id(l).0, LinkFault::BLACKHOLE);
                    (
                        format!("one-way: leader {}'s messages dropped", id(l)),
                        FaultKind::Partition,
                        true,
                    )
                }
                (3, _) => {
                    // A minority and a majority (2/3 of 5; 1/2 of 3).
                    let mut ids: Vec<u32> = (0..n).map(|i| id(i).0).collect();
                    shuffle(&mut ids, &mut rng);
                    let (a, b) = ids.split_at(n / 2);
                    net.partition(&[a, b], blackhole);
                    let cut_leader = leader.is_some_and(|l| a.contains(&id(l).0));
                    (
                        format!("split {a:?} | {b:?}"),
                        FaultKind::Partition,
                        cut_leader,
                    )
                }
                (4, _) => {
                    // A bridge: two sides that cannot talk, one replica
                    // linked to both.
                    let mut ids: Vec<u32> = (0..n).map(|i| id(i).0).collect();
                    shuffle(&mut ids, &mut rng);
                    let bridge = ids[0];
                    let half = (n - 1) / 2;
                    let (a, b) = ids[1..].split_at(half);
                    net.partition(&[a, b], blackhole);
                    let cut_leader = leader.is_some_and(|l| id(l).0 != bridge);
                    (
                        format!("bridge {bridge} between {a:?} and {b:?}"),
                        FaultKind::Partition,
                        cut_leader,
                    )
                }
                (5, _) => {
                    let delay = ms(&mut rng, 5, 50);
                    let jitter = ms(&mut rng, 1, 50);
                    net.delay_all(delay, jitter);
                    (
                        format!("delay {delay:?} + jitter up to {jitter:?} on every link"),
                        FaultKind::Degraded,
                        false,
                    )
                }
                (6, _) => {
                    let from = pick(&mut rng);
                    for to in (0..n).filter(|&t| t != from) {
                        net.set(
                            End::Replica(id(from).0),
                            id(to).0,
                            LinkFault {
                                loss: 0.02,
                                ..LinkFault::OPEN
                            },
                        );
                    }
                    (
                        format!("lossy links from replica {}", id(from)),
                        FaultKind::Degraded,
                        false,
                    )
                }
                (7, Some(l)) => {
                    // Both fronts: a client that followed a hint reaches
                    // the leader at its peer address.
                    net.set(End::Clients, id(l).0, LinkFault::REFUSE);
                    net.set(End::ClientsAtPeerAddress, id(l).0, LinkFault::REFUSE);
                    (
                        format!("clients cut off from leader {}", id(l)),
                        FaultKind::Partition,
                        false,
                    )
                }
                (8, _) | (0 | 2 | 7, None) => {
                    let i = leader
                        .filter(|_| rng.next_u64() % 2 == 0)
                        .unwrap_or_else(|| pick(&mut rng));
                    crashed = Some(i);
                    (
                        format!("SIGKILL replica {}", id(i)),
                        FaultKind::Crash,
                        leader == Some(i),
                    )
                }
                _ => {
                    let i = leader
                        .filter(|_| rng.next_u64() % 2 == 0)
                        .unwrap_or_else(|| pick(&mut rng));
                    paused = Some(i);
                    (
                        format!("SIGSTOP replica {}", id(i)),
                        FaultKind::Pause,
                        leader == Some(i),
                    )
                }
            }
        };
        if let Some(i) = crashed {
            c.kill(i);
        }
        if let Some(i) = paused {
            c.signal(i, libc::SIGSTOP);
        }
        eprintln!(
            "soak: {:>6.1} s  {what} for {} ms",
            at.duration_since(start).as_secs_f64(),
            hold.as_millis()
        );
        let probe = match (on_leader, leader) {
            (true, Some(l)) => {
                let others = (0..n)
                    .filter(|&i| i != l)
                    .map(|i| c.net().client_address(id(i).0).to_string())
                    .collect();
                Some(tokio::spawn(failover_probe(
                    c.cluster,
                    others,
                    at,
                    faults.len(),
                )))
            }
            _ => None,
        };
        tokio::time::sleep(hold).await;
        c.net().heal();
        if let Some(i) = crashed {
            c.start(i, false);
        }
        if let Some(i) = paused {
            c.signal(i, libc::SIGCONT);
        }
        let probe = match probe {
            Some(p) => p.await.ok().flatten(),
            None => None,
        };
        faults.push(Fault {
            what,
            kind,
            at,
            leader: on_leader,
            probe,
        });
        tokio::time::sleep(ms(&mut rng, 500, 2000)).await;
    }
    c.net().heal();
    faults
}

/// A fresh client given every address but the old leader's writes once:
/// how long after `at` the write was acknowledged (`None`: not within its
/// deadline).
pub(super) async fn failover_probe(
    cluster: engine::core::ClusterId,
    addresses: Vec<String>,
    at: Instant,
    n: usize,
) -> Option<Duration> {
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let client = Client::connect(Network::Tcp, cluster, addresses, options)
        .await
        .ok()?;
    let op = KvOp::Put {
        key: Bytes::from_static(b"failover-probe"),
        value: Bytes::from(n.to_string()),
    };
    let r = client.call(op.encode()).await;
    let took = at.elapsed();
    client.disconnect().await;
    r.ok().map(|_| took)
}

pub(super) fn shuffle(v: &mut [u32], rng: &mut Xoshiro256PlusPlus) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// The replica whose status says it leads (asked directly, bypassing the
/// fault network); `None` if none answers so.
pub(super) async fn current_leader(c: &ProcCluster) -> Option<usize> {
    for (i, a) in c.addresses.iter().enumerate() {
        if let Ok(s) =
            engine::client::fetch_status(&Network::Tcp, c.cluster, a, Duration::from_millis(300))
                .await
            && s.role == "leader"
        {
            return Some(i);
        }
    }
    None
}

/// The longest time between `from` and `to` in which no operation
/// succeeded, and when it began.
pub(super) fn longest_gap(
    oks: &[(Instant, Instant, bool)],
    from: Instant,
    to: Instant,
) -> (Duration, Instant) {
    let mut done: Vec<Instant> = oks
        .iter()
        .map(|o| o.1)
        .filter(|&t| t >= from && t <= to)
        .collect();
    done.sort();
    let mut last = from;
    let mut longest = (Duration::ZERO, from);
    for t in done.into_iter().chain([to]) {
        if t.duration_since(last) > longest.0 {
            longest = (t.duration_since(last), last);
        }
        last = t;
    }
    longest
}

/// For each fault on the leader: from the fault to the first write
/// invoked after it that was acknowledged.
pub(super) fn failover_times<'a>(
    faults: &'a [Fault],
    oks: &[(Instant, Instant, bool)],
) -> Vec<(&'a str, Duration)> {
    faults
        .iter()
        .filter(|f| f.leader)
        .filter_map(|f| {
            oks.iter()
                .filter(|(invoked, _, write)| *write && *invoked >= f.at)
                .map(|(_, done, _)| done.duration_since(f.at))
                .min()
                .map(|t| (f.what.as_str(), t))
        })
        .collect()
}
