//! Partitions between live replica processes (issue 23): a fault proxy in
//! front of every replica (`loadgen::faultnet`) cuts links while the
//! processes run, and the clients stay on links of their own.
//!
//! Failover bound, as in `cluster.rs`: with `tick_ms = 10` and
//! `election_ticks = 10` a new leader serves within 2 s of the cut.

use std::time::{Duration, Instant};

use engine::client::{Client, ClientError, ClientOptions};
use engine::core::Slot;
use engine::kv::KvResult;
use engine::transport::net::Network;
use engine::transport::wire::Status;
use system_tests::{
    End, LinkFault, ProcCluster, call_until_ok, decode, get, id, options, probe, put,
    wait_caught_up,
};

const FAILOVER_BOUND: Duration = Duration::from_secs(2);

/// The replicas that lead now, asked of each directly (not through the
/// fault network): a leader answers a linearizable read.
async fn leaders(c: &ProcCluster) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, a) in c.addresses.iter().enumerate() {
        if let Ok(Status::Ok) = probe(c.cluster, a).await {
            out.push(i);
        }
    }
    out
}

/// The one leader, once exactly one replica leads and another than `not`.
async fn new_leader(c: &ProcCluster, not: usize, within: Duration) -> usize {
    let end = Instant::now() + within;
    loop {
        let l = leaders(c).await;
        if let [one] = l[..]
            && one != not
        {
            return one;
        }
        assert!(
            Instant::now() < end,
            "no single new leader within {within:?} (leading: {l:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client_of(c: &ProcCluster, replicas: &[usize], o: ClientOptions) -> Client {
    let addresses = replicas
        .iter()
        .map(|&i| c.net().client_address(id(i).0).to_string())
        .collect();
    Client::connect(Network::Tcp, c.cluster, addresses, o)
        .await
        .expect("a client connects")
}

async fn status(c: &ProcCluster, i: usize) -> engine::runtime::StatusReport {
    engine::client::fetch_status(
        &Network::Tcp,
        c.cluster,
        &c.addresses[i],
        Duration::from_secs(2),
    )
    .await
    .expect("status")
}

/// The flaw the issue found: the old leader's messages to the followers
/// are dropped (theirs to it arrive), and its address book points clients
/// at addresses they cannot reach. A client told the old leader first
/// must try every address it knows, not bounce between the old leader
/// and the hinted address until its deadline. Then the cut resolves to
/// one leader, which stays the leader, and the old one catches up after
/// the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_from_the_leader_resolves_to_one_leader_that_clients_find() {
    let mut c = ProcCluster::new("oneway", 31, 3);
    c.behind_faultnet().await;
    c.start_all();
    let old = c.leader(Duration::from_secs(5)).await;
    let net = c.net();
    // Clients cannot reach the replicas' peer addresses.
    net.clients(End::ClientsAtPeerAddress, LinkFault::REFUSE);
    // The old leader first in the client's list, as `kv --replicas` given
    // it first.
    let order: Vec<usize> = [old, (old + 1) % 3, (old + 2) % 3].to_vec();
    let client = client_of(
        &c,
        &order,
        ClientOptions {
            attempt_timeout: Duration::from_millis(400),
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .await;
    call_until_ok(&client, put("k", "before")).await;

    net.mute(id(old).0, LinkFault::BLACKHOLE);
    let cut = Instant::now();
    // The client that was writing to the old leader: every write
    // completes, the first within the failover bound.
    let mut first = None;
    let mut last_slot = Slot::ZERO;
    for n in 0..20 {
        let r = client
            .call(put("k", &format!("v{n}")))
            .await
            .unwrap_or_else(|e| panic!("write {n} after the cut: {e}\n{}", c.log(old)));
        first.get_or_insert(cut.elapsed());
        last_slot = last_slot.max(r.slot);
    }
    let first = first.unwrap();
    eprintln!("one-way cut: the first write was acknowledged {first:?} after the cut");
    assert!(first < FAILOVER_BOUND, "{first:?}");

    // One leader, not the old one, and it stays the only one.
    let new = new_leader(&c, old, FAILOVER_BOUND).await;
    // A client told the old leader first, then the follower, then the new
    // leader: the old one refuses at once (`NotLeader`, hinting at the new
    // leader's peer address, which clients cannot reach), and the client
    // must go on to the addresses it was given rather than back to the old
    // leader (which it did before: it bounced between the two until its
    // deadline).
    let follower = 3 - old - new;
    let late = client_of(
        &c,
        &[old, follower, new],
        ClientOptions {
            attempt_timeout: Duration::from_millis(400),
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .await;
    let asked = Instant::now();
    let r = late
        .call(put("late", "1"))
        .await
        .unwrap_or_else(|e| panic!("a client told the old leader first: {e}"));
    let took = asked.elapsed();
    eprintln!("one-way cut: a new client told the old leader first wrote in {took:?}");
    assert!(took < FAILOVER_BOUND, "{took:?}");
    last_slot = last_slot.max(r.slot);
    for _ in 0..10 {
        assert_eq!(
            leaders(&c).await,
            vec![new],
            "leadership moved under the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status(&c, old).await;
    assert_ne!(
        s.role, "leader",
        "the old leader still claims to lead: {s:?}"
    );

    // Healed: still one leader, and the old one applies what was written.
    net.heal();
    wait_caught_up(&c, old, last_slot.next()).await;
    let r = call_until_ok(&client, get("k")).await;
    assert_eq!(decode(&r.payload), KvResult::Value(Some("v19".into())));
    assert_eq!(leaders(&c).await.len(), 1);
}

/// A leader cut off from both followers while its own clients keep
/// writing to it: it acknowledges nothing, its clients get `NotLeader` or
/// a timeout (unknown outcome), the majority elects a new leader within
/// the bound and serves other clients, and after the heal the old leader
/// follows the new one and catches up. None of its unacknowledged writes
/// takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_follows_after_the_heal() {
    let mut c = ProcCluster::new("isolate", 32, 3);
    c.behind_faultnet().await;
    c.start_all();
    let old = c.leader(Duration::from_secs(5)).await;
    let others = [(old + 1) % 3, (old + 2) % 3];
    let net = c.net();
    // A client that knows only the old leader (its hints lead nowhere),
    // and one that knows only the others.
    net.clients(End::ClientsAtPeerAddress, LinkFault::REFUSE);
    let quick = ClientOptions {
        attempt_timeout: Duration::from_millis(300),
        deadline: Duration::from_millis(900),
        ..ClientOptions::default()
    };
    let stranded = client_of(&c, &[old], quick.clone()).await;
    let majority = client_of(&c, &others, options()).await;
    call_until_ok(&stranded, put("s", "before")).await;

    net.isolate(id(old).0, LinkFault::BLACKHOLE);
    let cut = Instant::now();
    let writer = tokio::spawn(async move {
        let (mut refused, mut unknown) = (0, 0);
        let mut n = 0;
        while cut.elapsed() < Duration::from_millis(2500) {
            match stranded.call(put("s", &format!("minority-{n}"))).await {
                Ok(r) => panic!(
                    "write {n} acknowledged by a minority leader at slot {}",
                    r.slot.0
                ),
                Err(ClientError::NotLeader { .. }) => refused += 1,
                Err(ClientError::Timeout) => unknown += 1,
                Err(e) => panic!("write {n}: {e}"),
            }
            n += 1;
        }
        (refused, unknown)
    });
    // The majority side serves within the bound.
    let r = call_until_ok(&majority, put("m", "after")).await;
    let failover = cut.elapsed();
    eprintln!("isolated leader: the majority acknowledged a write {failover:?} after the cut");
    assert!(failover < FAILOVER_BOUND, "{failover:?}");
    let new = new_leader(&c, old, FAILOVER_BOUND).await;
    assert!(others.contains(&new));
    let (refused, unknown) = writer.await.unwrap();
    eprintln!("the stranded client: {refused} refused (NotLeader), {unknown} unknown outcomes");
    assert!(refused + unknown > 0);

    net.heal();
    let mut last = r.slot;
    for n in 0..5 {
        last = last.max(
            call_until_ok(&majority, put("m", &format!("healed-{n}")))
                .await
                .slot,
        );
    }
    wait_caught_up(&c, old, last.next()).await;
    let s = status(&c, old).await;
    assert_eq!(
        s.leader,
        Some(id(new).0),
        "the old leader follows the new one: {s:?}"
    );
    assert_eq!(leaders(&c).await, vec![new]);
    // Nothing the minority leader took took effect.
    let r = call_until_ok(&majority, get("s")).await;
    assert_eq!(decode(&r.payload), KvResult::Value(Some("before".into())));
}

/// A follower partitioned away and back catches up by log; partitioned
/// again while the others write past what their logs keep, it catches up
/// by checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_catches_up_by_log_then_by_checkpoint() {
    let mut c = ProcCluster::new("fpart", 33, 3);
    c.log_retained_slots_max = Some(200);
    c.behind_faultnet().await;
    c.start_all();
    let leader = c.leader(Duration::from_secs(5)).await;
    let f = (leader + 1) % 3;
    let client = client_of(&c, &[leader, (leader + 2) % 3], options()).await;
    let write = |n: u64, tag: &'static str| {
        let client = &client;
        async move {
            let mut last = Slot::ZERO;
            for k in 0..n {
                last = last.max(
                    call_until_ok(client, put(&format!("k{}", k % 7), tag))
                        .await
                        .slot,
                );
            }
            last
        }
    };
    write(20, "warm").await;
    let net = c.net();

    // Away for a few slots: back by log.
    net.isolate(id(f).0, LinkFault::BLACKHOLE);
    let last = write(50, "by-log").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        status(&c, f).await.applied < last.0,
        "the partition did not hold it back"
    );
    net.heal();
    wait_caught_up(&c, f, last.next()).await;
    let s = status(&c, f).await;
    assert_eq!(
        s.checkpoints_installed, 0,
        "caught up by log, not checkpoint: {s:?}"
    );

    // Away past the retained log (200 slots; a checkpoint every 100):
    // back by checkpoint. Refused, so its connections break at once.
    net.isolate(id(f).0, LinkFault::REFUSE);
    let last = write(600, "by-checkpoint").await;
    net.heal();
    wait_caught_up(&c, f, last.next()).await;
    let s = status(&c, f).await;
    assert_eq!(s.checkpoints_installed, 1, "{s:?}\n{}", c.log(f));
    // And it follows the log again.
    let last = write(30, "after").await;
    wait_caught_up(&c, f, last.next()).await;
}
