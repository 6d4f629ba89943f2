//! The named scenarios of `design/testing.md` (2–16; scenario 1,
//! the chaos swarm, is in `sim.rs`), each scripted on the simulator. Each
//! ends with the full set of checks (agreement, chosen-stays-chosen,
//! applied prefixes, exactly-once, linearizability, no acknowledged write
//! lost); where a planted bug breaks the rule a scenario is about, a second
//! test shows the scenario catches it.

use bytes::Bytes;
use engine::core::{
    Accept, Ballot, Counter, Envelope, Heartbeat, Message, PlantedBug, ReplicaId, RoleKind, Slot,
    Value,
};
use engine::kv::{KvOp, KvResult};
use engine::sim::{
    Backend, CLUSTER, ClientPacket, FaultPlan, Sim, SimConfig, Violation, ViolationKind,
};

fn scripted(replicas: u32, seed: u64) -> Sim {
    Sim::new(SimConfig::scripted(seed, replicas))
}

fn with_bug(replicas: u32, seed: u64, bug: Option<PlantedBug>) -> Sim {
    let mut cfg = SimConfig::scripted(seed, replicas);
    cfg.planted_bug = bug;
    Sim::new(cfg)
}

fn wait_leader(sim: &mut Sim) -> usize {
    let deadline = sim.now() + 1_000_000;
    assert!(
        sim.run_until(deadline, |s| s.leader().is_some()),
        "no leader: {:?}",
        sim.violation()
    );
    sim.leader().unwrap()
}

fn wait_new_leader(sim: &mut Sim, not: usize) -> usize {
    let deadline = sim.now() + 2_000_000;
    assert!(
        sim.run_until(deadline, |s| s.leader().is_some_and(|l| l != not)),
        "no new leader: {:?}",
        sim.violation()
    );
    sim.leader().unwrap()
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

/// Runs client `c`'s `op` to completion (retrying as clients do).
fn op(sim: &mut Sim, c: usize, op: KvOp) -> KvResult {
    sim.submit(c, op);
    let h = sim.history.len() - 1;
    let deadline = sim.now() + 3_000_000;
    assert!(
        sim.run_until(deadline, |s| s.client_idle(c)),
        "client {c} stuck: {:?}",
        sim.violation()
    );
    sim.history[h].response.clone().expect("answered").1
}

/// Ends a scenario: every check, including the end-of-run ones.
fn finish(sim: &mut Sim) -> Result<(), Violation> {
    sim.run_for(50_000);
    sim.check_final()
}

fn others(n: usize, not: usize) -> Vec<usize> {
    (0..n).filter(|i| *i != not).collect()
}

fn is(env: &Envelope, from: usize, to: usize, kind: &str) -> bool {
    env.from == ReplicaId(from as u32 + 1)
        && env.to == ReplicaId(to as u32 + 1)
        && env.msg.kind() == kind
}

// ---- 2: prior-ballot recovery ----

/// A value accepted by the leader and one follower (a majority) but known
/// chosen by nobody; the leader crashes. The new leader must adopt it.
fn prior_ballot_recovery(bug: Option<PlantedBug>) -> Result<Slot, Violation> {
    let mut sim = with_bug(3, 2, bug);
    let l = wait_leader(&mut sim);
    let f = others(3, l);
    assert_eq!(op(&mut sim, 0, put("k", "v0")), KvResult::Done);
    let slot = sim.replica(l).unwrap().commit();
    // Accepts to f[1] and f[0]'s votes are lost: only l and f[0] accept.
    let (l2, a, b) = (l, f[0], f[1]);
    sim.set_filter(Box::new(move |e| {
        is(e, l2, b, "accept") || is(e, a, l2, "accepted")
    }));
    sim.aim_client(1, l);
    sim.submit(1, put("k", "v1"));
    sim.run_for(3_000);
    let accepted = sim
        .replica(a)
        .unwrap()
        .entry(slot)
        .cloned()
        .expect("follower accepted");
    assert!(matches!(accepted.value, Value::Batch(_)));
    assert!(
        sim.ledger.chosen(slot).is_some(),
        "a durable majority exists"
    );
    assert_eq!(
        sim.replica(l).unwrap().commit(),
        slot,
        "but the leader does not know"
    );
    sim.crash(l);
    sim.clear_filter();
    wait_new_leader(&mut sim, l);
    let deadline = sim.now() + 3_000_000;
    sim.run_until(deadline, |s| s.client_idle(1));
    if let Some(v) = sim.violation() {
        return Err(v.clone());
    }
    assert_eq!(sim.ledger.chosen(slot), Some(accepted.value.fingerprint()));
    sim.restart(l);
    assert_eq!(
        op(&mut sim, 0, get("k")),
        KvResult::Value(Some(Bytes::from_static(b"v1")))
    );
    finish(&mut sim).map(|()| slot)
}

#[test]
fn scenario_02_prior_ballot_recovery() {
    prior_ballot_recovery(None).unwrap();
}

#[test]
fn scenario_02_catches_a_leader_that_skips_adoption() {
    let err = prior_ballot_recovery(Some(PlantedBug::SkipAdoption)).unwrap_err();
    assert_eq!(err.kind, ViolationKind::ChosenChanged, "{}", err.detail);
}

// ---- 3: pipeline hole ----

#[test]
fn scenario_03_pipeline_hole_is_filled_and_apply_never_skips() {
    let mut sim = scripted(3, 3);
    let l = wait_leader(&mut sim);
    assert_eq!(op(&mut sim, 0, put("a", "0")), KvResult::Done);
    let k = sim.replica(l).unwrap().commit();
    // Every Accept of slot k is lost; slot k+1 goes through.
    sim.set_filter(Box::new(
        move |e| matches!(&e.msg, Message::Accept(a) if a.slot == k),
    ));
    sim.aim_client(1, l);
    sim.aim_client(2, l);
    sim.submit(1, put("a", "1"));
    sim.run_for(300);
    sim.submit(2, put("b", "2"));
    let deadline = sim.now() + 100_000;
    assert!(sim.run_until(deadline, |s| s.ledger.chosen(k.next()).is_some()));
    assert_eq!(sim.ledger.chosen(k), None, "slot k is a hole");
    let f = others(3, l);
    for i in &f {
        assert!(
            sim.replica(*i).unwrap().applied() <= k,
            "a follower applied past the hole"
        );
    }
    sim.crash_with(l, Some(0));
    sim.clear_filter();
    wait_new_leader(&mut sim, l);
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(1) && s.client_idle(2)));
    // The only copy of slot k's value died with the leader: a no-op fills it.
    assert_eq!(sim.ledger.chosen(k), Some(Value::Noop.fingerprint()));
    for i in &f {
        assert!(sim.replica(*i).unwrap().applied() > k.next());
    }
    // Client 1's command was retried and applied once, in a later slot.
    sim.restart(l);
    assert_eq!(
        op(&mut sim, 0, get("a")),
        KvResult::Value(Some(Bytes::from_static(b"1")))
    );
    finish(&mut sim).unwrap();
}

// ---- 4: promise amnesia ----

/// Replicas crash right after acknowledging, losing every unsynced write.
/// Nothing they acknowledged may be lost, because nothing left before it
/// was durable.
fn promise_amnesia(bug: Option<PlantedBug>) -> Result<u64, Violation> {
    let mut sim = with_bug(3, 4, bug);
    let mut rng = 4u64;
    for round in 0..40 {
        for c in 0..4 {
            if sim.client_idle(c) {
                sim.submit(c, put(&format!("k{}", c % 2), &format!("{round}.{c}")));
            }
        }
        sim.run_for(2_000);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = (rng >> 33) as usize % 3;
        sim.crash_with(victim, Some(0));
        sim.run_for(1_000);
        sim.restart(victim);
        if let Some(v) = sim.violation() {
            return Err(v.clone());
        }
    }
    let deadline = sim.now() + 5_000_000;
    sim.run_until(deadline, |s| (0..4).all(|c| s.client_idle(c)));
    let acked = sim.history.iter().filter(|o| o.response.is_some()).count() as u64;
    finish(&mut sim).map(|()| acked)
}

#[test]
fn scenario_04_promise_amnesia() {
    // The cluster keeps serving through the crashes (30 with this seed).
    let acked = promise_amnesia(None).unwrap();
    assert!(acked >= 20, "only {acked} writes acknowledged");
}

#[test]
fn scenario_04_catches_replies_before_persist() {
    let err = promise_amnesia(Some(PlantedBug::ReplyBeforePersist)).unwrap_err();
    assert_eq!(err.kind, ViolationKind::AckBeforeDurable, "{}", err.detail);
}

// ---- 5: whole-cluster power loss ----

fn power_loss(backend: Backend, bug: Option<PlantedBug>) -> Result<u64, Violation> {
    let mut cfg = SimConfig::scripted(5, 3);
    cfg.backend = backend;
    cfg.planted_bug = bug;
    let mut sim = Sim::new(cfg);
    let mut acked = 0;
    for round in 0..6 {
        wait_leader(&mut sim);
        for i in 0..20 {
            let c = i % 4;
            if sim.client_idle(c) {
                sim.submit(c, put(&format!("k{}", i % 3), &format!("{round}.{i}")));
            }
            sim.run_for(700);
        }
        // Power fails everywhere at once: every unsynced write is lost.
        for n in 0..3 {
            sim.crash_with(n, Some(0));
        }
        if let Some(v) = sim.violation() {
            return Err(v.clone());
        }
        sim.run_for(2_000);
        for n in 0..3 {
            sim.restart(n);
        }
        acked = sim.history.iter().filter(|o| o.response.is_some()).count() as u64;
    }
    let deadline = sim.now() + 5_000_000;
    sim.run_until(deadline, |s| (0..4).all(|c| s.client_idle(c)));
    // Reads after recovery must see every acknowledged write.
    for k in 0..3 {
        op(&mut sim, 0, get(&format!("k{k}")));
    }
    finish(&mut sim).map(|()| acked)
}

#[test]
fn scenario_05_power_loss_keeps_every_acknowledged_write() {
    let acked = power_loss(Backend::Mem, None).unwrap();
    assert!(acked > 20, "only {acked} writes acknowledged");
}

#[test]
fn scenario_05_catches_a_leader_that_votes_before_its_flush() {
    let err = power_loss(Backend::Mem, Some(PlantedBug::SelfAckBeforePersist)).unwrap_err();
    assert_eq!(err.kind, ViolationKind::Agreement, "{}", err.detail);
}

// ---- 6: fsync fails ----

#[test]
fn scenario_06_failed_fsync_stops_the_replica_which_never_acknowledges() {
    let mut sim = scripted(3, 6);
    let l = wait_leader(&mut sim);
    let f = others(3, l)[0];
    assert_eq!(op(&mut sim, 0, put("k", "0")), KvResult::Done);
    // Count f's acknowledgements from the failure on.
    let acks = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = acks.clone();
    sim.set_filter(Box::new(move |e| {
        if e.from == ReplicaId(f as u32 + 1)
            && matches!(e.msg, Message::Accepted(_) | Message::Promise(_))
        {
            seen.set(seen.get() + 1);
        }
        false
    }));
    sim.nodes[f].disk.open.as_mut().unwrap().fail_next_sync();
    for i in 1..=10 {
        assert_eq!(
            op(&mut sim, i % 4, put("k", &i.to_string())),
            KvResult::Done
        );
    }
    let r = sim.replica(f).unwrap();
    assert!(r.is_stopped(), "the replica must stop on EIO");
    assert!(r.counters().get(Counter::IgnoreStopped) > 0);
    assert_eq!(acks.get(), 0, "a stopped replica acknowledged");
    // The retry "succeeds" (the lost writes are gone): still stopped, still silent.
    use engine::storage::Storage;
    sim.nodes[f].disk.open.as_mut().unwrap().sync().unwrap();
    sim.run_for(20_000);
    assert!(sim.replica(f).unwrap().is_stopped());
    assert_eq!(acks.get(), 0);
    // An operator restarts it: it recovers from what was durable and catches up.
    sim.clear_filter();
    sim.restart(f);
    assert_eq!(op(&mut sim, 0, put("k", "last")), KvResult::Done);
    let deadline = sim.now() + 1_000_000;
    let target = sim.replica(l).unwrap().commit();
    assert!(sim.run_until(deadline, |s| s.replica(f).unwrap().commit() >= target));
    finish(&mut sim).unwrap();
}

// ---- 11: stale leader read ----

#[test]
fn scenario_11_an_old_leader_in_a_minority_serves_no_stale_read() {
    let mut sim = scripted(3, 11);
    let old = wait_leader(&mut sim);
    assert_eq!(op(&mut sim, 0, put("k", "v1")), KvResult::Done);
    sim.isolate(old);
    // A client still talks to the old leader: its read cannot be answered
    // from the minority side.
    sim.aim_client(2, old);
    sim.submit(2, get("k"));
    let h = sim.history.len() - 1;
    let new = wait_new_leader(&mut sim, old);
    sim.aim_client(1, new);
    assert_eq!(op(&mut sim, 1, put("k", "v2")), KvResult::Done);
    sim.run_for(30_000);
    assert_ne!(
        sim.history[h].response.as_ref().map(|r| &r.1),
        Some(&KvResult::Value(Some(Bytes::from_static(b"v1")))),
        "the old leader answered a stale read"
    );
    sim.heal_network();
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(2)));
    finish(&mut sim).unwrap();
}

// ---- 12: partial connectivity ----

/// Runs client load for `us` and returns (elections won, ops completed) during it.
fn load(sim: &mut Sim, us: u64, clients: usize) -> (u64, u64) {
    let elections = |s: &Sim| -> u64 {
        (0..s.nodes.len())
            .filter_map(|i| s.replica(i))
            .map(|r| r.counters().get(Counter::ElectionsWon))
            .sum()
    };
    let before = (
        elections(sim),
        sim.history.iter().filter(|o| o.response.is_some()).count(),
    );
    let end = sim.now() + us;
    let mut i = 0u64;
    while sim.now() < end {
        for c in 0..clients {
            if sim.client_idle(c) {
                i += 1;
                sim.submit(c, put(&format!("k{}", i % 3), &i.to_string()));
            }
        }
        sim.run_for(500);
        assert!(sim.violation().is_none(), "{:?}", sim.violation());
    }
    let done = sim.history.iter().filter(|o| o.response.is_some()).count();
    (elections(sim) - before.0, (done - before.1) as u64)
}

#[test]
fn scenario_12_chained_partition_keeps_a_stable_leader() {
    // 3 replicas in a chain: the leader and one follower cannot talk.
    let mut sim = scripted(3, 12);
    let l = wait_leader(&mut sim);
    let f = others(3, l);
    sim.set_blocked(l, f[1], true);
    sim.set_blocked(f[1], l, true);
    load(&mut sim, 50_000, 4);
    let (elections, ops) = load(&mut sim, 400_000, 4);
    assert!(
        elections <= 1,
        "{elections} leader changes in a chain: no stable leader"
    );
    assert!(ops > 200, "only {ops} operations completed");
    sim.heal_network();
    load(&mut sim, 50_000, 4);
    finish(&mut sim).unwrap();
}

#[test]
fn scenario_12_one_way_links_keep_a_stable_leader() {
    for (seed, cut_from_leader) in [(120, true), (121, false)] {
        let mut sim = scripted(3, seed);
        let l = wait_leader(&mut sim);
        let f = others(3, l)[0];
        if cut_from_leader {
            sim.set_blocked(l, f, true);
        } else {
            sim.set_blocked(f, l, true);
        }
        load(&mut sim, 50_000, 4);
        let (elections, ops) = load(&mut sim, 400_000, 4);
        assert!(
            elections <= 1,
            "{elections} leader changes over a one-way link"
        );
        assert!(ops > 200, "only {ops} operations completed");
        sim.heal_network();
        finish(&mut sim).unwrap();
    }
}

#[test]
fn scenario_12_a_line_of_five_elects_a_leader_that_stays() {
    // 1 - 2 - 3 - 4 - 5: only neighbours talk. Nodes 2, 3 and 4 each reach a
    // quorum; a leader must emerge and stay.
    let mut sim = scripted(5, 125);
    for a in 0..5usize {
        for b in 0..5usize {
            if a.abs_diff(b) > 1 {
                sim.set_blocked(a, b, true);
            }
        }
    }
    let l = wait_leader(&mut sim);
    assert!((1..=3).contains(&l), "node {l} cannot reach a quorum");
    load(&mut sim, 100_000, 4);
    let (elections, ops) = load(&mut sim, 400_000, 4);
    assert!(elections <= 1, "{elections} leader changes along the line");
    assert!(ops > 100, "only {ops} operations completed");
    sim.heal_network();
    finish(&mut sim).unwrap();
}

// ---- 13: a higher ballot is not a grant ----

#[test]
fn scenario_13_a_leader_that_sees_a_higher_ballot_steps_down() {
    let mut sim = scripted(3, 13);
    let l = wait_leader(&mut sim);
    let f = others(3, l)[0];
    assert_eq!(op(&mut sim, 0, put("k", "1")), KvResult::Done);
    // A heartbeat of a far higher ballot, as from a leader elected elsewhere.
    let high = Ballot::new(100, ReplicaId(f as u32 + 1));
    let commit = sim.replica(l).unwrap().commit();
    sim.inject(
        Envelope {
            cluster: CLUSTER,
            from: high.replica,
            to: ReplicaId(l as u32 + 1),
            msg: Message::Heartbeat(Heartbeat {
                ballot: high,
                commit,
            }),
        },
        10,
    );
    sim.run_for(1_000);
    let r = sim.replica(l).unwrap();
    assert_eq!(r.role(), RoleKind::Follower, "the old leader kept leading");
    assert_eq!(r.promised(), high);
    assert!(r.counters().get(Counter::StepDownsSuperseded) >= 1);
    // It did not take the higher ballot as its own: nothing was proposed in it.
    assert!(
        r.log()
            .iter_from(Slot(0))
            .all(|(_, e)| e.ballot.round < 100)
    );
    // Nobody actually leads ballot 100: a real election goes above it.
    let new = wait_new_leader(&mut sim, usize::MAX);
    assert!(sim.replica(new).unwrap().leader_ballot().unwrap() > high);
    assert_eq!(
        op(&mut sim, 0, get("k")),
        KvResult::Value(Some(Bytes::from_static(b"1")))
    );
    finish(&mut sim).unwrap();
}

// ---- 14: retry exactly once ----

#[test]
fn scenario_14_a_retried_command_applies_exactly_once() {
    let mut cfg = SimConfig::scripted(14, 3);
    // Replayed packets: every other request is delivered twice.
    cfg.faults.client_dup_ppm = 500_000;
    let mut sim = Sim::new(cfg);
    let l = wait_leader(&mut sim);
    assert_eq!(op(&mut sim, 0, put("n", "0")), KvResult::Done);
    // The leader executes the next command but its answer is lost, then it
    // crashes: the client times out and retries at another replica.
    sim.set_client_filter(Box::new(move |p: ClientPacket| !p.request && p.node == l));
    sim.aim_client(1, l);
    sim.submit(
        1,
        KvOp::Cas {
            key: Bytes::from_static(b"n"),
            expected: Some(Bytes::from_static(b"0")),
            new: Bytes::from_static(b"1"),
        },
    );
    let h = sim.history.len() - 1;
    sim.run_for(5_000);
    assert!(sim.history[h].response.is_none(), "the answer was lost");
    sim.crash(l);
    sim.clear_client_filter();
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(1)));
    // Executed once: the retry gets the original answer, not a failed cas.
    assert_eq!(
        sim.history[h].response.as_ref().unwrap().1,
        KvResult::Cas(Ok(()))
    );
    sim.restart(l);
    for i in 0..20 {
        op(&mut sim, i % 4, put("m", &i.to_string()));
    }
    let dups: u64 = (0..3)
        .map(|i| sim.nodes[i].executor.stats().duplicates_answered)
        .sum();
    assert!(dups > 0, "no retry or replayed packet reached execution");
    finish(&mut sim).unwrap();
}

// ---- 16: cross-talk ----

#[test]
fn scenario_16_messages_from_another_cluster_are_refused() {
    let mut cfg = SimConfig::scripted(16, 3);
    cfg.faults = FaultPlan {
        crosstalk_ppm: 300_000,
        ..FaultPlan::none()
    };
    let mut sim = Sim::new(cfg);
    wait_leader(&mut sim);
    let (_, ops) = load(&mut sim, 200_000, 4);
    assert!(ops > 100);
    for i in 0..3 {
        let refused = sim
            .replica(i)
            .unwrap()
            .counters()
            .get(Counter::IgnoreWrongCluster);
        assert!(
            refused > 10,
            "replica {i} refused only {refused} foreign messages"
        );
    }
    finish(&mut sim).unwrap();
}

// ---- 7: torn tail and corruption ----

/// A slot chosen by the leader and one follower only; returns
/// (leader, the follower that has it, the one that does not, slot, value).
fn chosen_by_two(sim: &mut Sim) -> (usize, usize, usize, Slot, Value) {
    let l = wait_leader(sim);
    let f = others(3, l);
    assert_eq!(op(sim, 0, put("k", "before")), KvResult::Done);
    let slot = sim.replica(l).unwrap().commit();
    let (b, l2) = (f[1], l);
    sim.set_filter(Box::new(move |e| {
        is(e, l2, b, "accept") || is(e, l2, b, "commit") || is(e, l2, b, "heartbeat")
    }));
    sim.aim_client(1, l);
    assert_eq!(op(sim, 1, put("k", "only-two")), KvResult::Done);
    assert!(sim.ledger.chosen(slot).is_some());
    assert!(
        sim.replica(b).unwrap().entry(slot).is_none(),
        "the third replica missed it"
    );
    let value = sim
        .replica(f[0])
        .unwrap()
        .entry(slot)
        .unwrap()
        .value
        .clone();
    sim.clear_filter();
    (l, f[0], f[1], slot, value)
}

/// The follower that holds a chosen slot loses it to corruption while the
/// leader is down: with the third replica it could elect a leader that
/// never saw the slot. It must not: it salvages its log, refuses to promise
/// for what it lost, and recovers it once the old leader is back.
fn corrupt_minority(backend: Backend, bug: bool) -> Result<(), Violation> {
    let mut cfg = SimConfig::scripted(7, 3);
    cfg.backend = backend;
    cfg.forget_unprovable = bug;
    let mut sim = Sim::new(cfg);
    let (l, a, b, slot, value) = chosen_by_two(&mut sim);
    sim.crash(a);
    assert!(
        sim.corrupt_value(a, &value),
        "the chosen value is on the follower's disk"
    );
    sim.crash(l);
    sim.restart(a);
    // Clients keep writing to whoever might lead now.
    sim.aim_client(2, a);
    sim.aim_client(3, b);
    sim.submit(2, put("k", "after-a"));
    sim.submit(3, put("k", "after-b"));
    sim.run_for(300_000);
    if let Some(v) = sim.violation() {
        return Err(v.clone());
    }
    assert_eq!(
        sim.leader(),
        None,
        "a leader emerged without proof of the chosen slot"
    );
    let r = sim.replica(a).unwrap();
    assert!(r.unprovable().is_some_and(|u| u.below > slot));
    // It refused the other's candidacy, or stood itself without counting
    // its own report (and could not win: the old leader is down).
    let c = r.counters();
    assert!(c.get(Counter::IgnorePrepareUnprovable) + c.get(Counter::ElectionsUnprovable) > 0);
    assert_eq!(sim.stats.salvaged, 1);
    sim.restart(l);
    wait_leader(&mut sim);
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.replica(a).unwrap().unprovable().is_none()));
    assert_eq!(
        sim.replica(a)
            .unwrap()
            .counters()
            .get(Counter::UnprovableRepaired),
        1
    );
    assert_eq!(sim.ledger.chosen(slot), Some(value.fingerprint()));
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(2) && s.client_idle(3)));
    finish(&mut sim)
}

#[test]
fn scenario_07_a_corrupt_record_on_one_replica_is_detected_not_voted_and_repaired() {
    for backend in [Backend::Wal, Backend::Nvm] {
        corrupt_minority(backend, false).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
    }
}

#[test]
fn scenario_07_catches_a_replica_that_forgets_what_it_lost() {
    for backend in [Backend::Wal, Backend::Nvm] {
        let err =
            corrupt_minority(backend, true).expect_err("the lost slot was overwritten unnoticed");
        assert_eq!(
            err.kind,
            ViolationKind::ChosenChanged,
            "{backend:?}: {}",
            err.detail
        );
    }
}

#[test]
fn scenario_07_a_torn_tail_is_truncated_and_the_replica_catches_up() {
    for backend in [Backend::Wal, Backend::Nvm] {
        let mut cfg = SimConfig::scripted(70, 3);
        cfg.backend = backend;
        let mut sim = Sim::new(cfg);
        let l = wait_leader(&mut sim);
        let f = others(3, l)[0];
        // Crash a follower again and again in the middle of its writes
        // (while it holds unsynced entries); each crash tears what it had
        // not synced.
        for round in 0..30 {
            for c in 0..4 {
                if sim.client_idle(c) {
                    sim.submit(c, put(&format!("k{c}"), &round.to_string()));
                }
            }
            let deadline = sim.now() + 1_500;
            sim.run_until(deadline, |s| s.unsynced_entries(f) > 0);
            sim.crash(f);
            sim.run_for(500);
            sim.restart(f);
            assert!(
                sim.is_up(f),
                "{backend:?}: a torn tail must not stop the replica"
            );
        }
        assert!(
            sim.stats.unsynced_lost > 0,
            "{backend:?}: no crash tore a tail"
        );
        assert_eq!(
            sim.stats.salvaged, 0,
            "{backend:?}: a torn tail is not corruption"
        );
        let deadline = sim.now() + 3_000_000;
        let target = sim.replica(l).unwrap().commit();
        assert!(sim.run_until(deadline, |s| s.replica(f).unwrap().commit() >= target));
        finish(&mut sim).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
    }
}

// ---- 15: amnesiac rejoin ----

/// The follower that holds a chosen slot gets a blank disk while the leader
/// is down. It must not vote: it refuses to start on a blank log instead of
/// rejoining with promises it no longer knows.
fn wiped_minority(backend: Backend, bug: bool) -> Result<(), Violation> {
    let mut cfg = SimConfig::scripted(15, 3);
    cfg.backend = backend;
    cfg.amnesia_restart = bug;
    let mut sim = Sim::new(cfg);
    let (l, a, _b, slot, value) = chosen_by_two(&mut sim);
    sim.crash(a);
    sim.wipe_disk(a);
    sim.crash(l);
    sim.restart(a);
    sim.aim_client(2, a);
    sim.aim_client(3, _b);
    sim.submit(2, put("k", "after-a"));
    sim.submit(3, put("k", "after-b"));
    sim.run_for(300_000);
    if let Some(v) = sim.violation() {
        return Err(v.clone());
    }
    assert!(
        !sim.is_up(a),
        "a replica on a blank disk must not rejoin as a voter"
    );
    assert!(
        sim.nodes[a]
            .refused
            .as_ref()
            .is_some_and(|why| why.contains("holds no log"))
    );
    assert_eq!(sim.leader(), None);
    sim.restart(l);
    wait_leader(&mut sim);
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(2) && s.client_idle(3)));
    assert_eq!(sim.ledger.chosen(slot), Some(value.fingerprint()));
    finish(&mut sim)
}

#[test]
fn scenario_15_a_replica_with_a_wiped_disk_does_not_vote() {
    for backend in [Backend::Mem, Backend::Wal, Backend::Nvm] {
        wiped_minority(backend, false).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
    }
}

#[test]
fn scenario_15_catches_an_amnesiac_that_rejoins_as_new() {
    for backend in [Backend::Mem, Backend::Wal, Backend::Nvm] {
        let err = wiped_minority(backend, true).expect_err("the amnesiac voter went unnoticed");
        assert_eq!(
            err.kind,
            ViolationKind::ChosenChanged,
            "{backend:?}: {}",
            err.detail
        );
    }
}

// ---- 5 and 6 on the durable backends ----

#[test]
fn scenario_05_and_06_hold_on_every_backend() {
    for backend in [Backend::Wal, Backend::Nvm] {
        let acked = power_loss(backend, None).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
        assert!(acked > 20, "{backend:?}: only {acked} writes acknowledged");
        let mut cfg = SimConfig::scripted(56, 3);
        cfg.backend = backend;
        let mut sim = Sim::new(cfg);
        // A failed sync stops a replica for good on these backends too.
        let l = wait_leader(&mut sim);
        let f = others(3, l)[0];
        sim.nodes[f].disk.open.as_mut().unwrap().fail_next_sync();
        for i in 0..8 {
            op(&mut sim, i % 4, put("x", &i.to_string()));
        }
        assert!(sim.replica(f).unwrap().is_stopped(), "{backend:?}");
        finish(&mut sim).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
    }
}

// ---- 10: reconfiguration, and RSL's configuration walk ----

/// Keeps every idle client busy with a mix of writes and reads on three
/// keys for `us`.
fn mixed_load(sim: &mut Sim, us: u64, clients: usize, i: &mut u64) {
    let end = sim.now() + us;
    while sim.now() < end {
        for c in 0..clients {
            if sim.client_idle(c) {
                *i += 1;
                let key = format!("k{}", *i % 3);
                let next = if (*i).is_multiple_of(3) {
                    get(&key)
                } else {
                    put(&key, &i.to_string())
                };
                sim.submit(c, next);
            }
        }
        sim.run_for(500);
        assert!(sim.violation().is_none(), "{:?}", sim.violation());
    }
}

/// The configuration node `i` has in force, if it runs.
fn membership_of(sim: &Sim, i: usize) -> Option<(u64, Vec<usize>)> {
    let r = sim.replica(i)?;
    let (epoch, members) = r.membership();
    Some((epoch, members.iter().map(|m| m.0 as usize - 1).collect()))
}

/// Asks for a change to `target` until a leader takes it, keeping the
/// load going, then runs until every target member has it in force.
fn change_under_load(sim: &mut Sim, target: &[usize], epoch: u64, i: &mut u64) {
    let deadline = sim.now() + 3_000_000;
    while !sim.change_config(target) {
        assert!(
            sim.now() < deadline,
            "no leader took the change to {target:?}"
        );
        mixed_load(sim, 2_000, 4, i);
    }
    wait_in_force(sim, target, target, epoch, i);
}

/// Keeps the load going until nodes `at` have configuration `epoch` of
/// `target` in force and one of `target` leads.
fn wait_in_force(sim: &mut Sim, at: &[usize], target: &[usize], epoch: u64, i: &mut u64) {
    let deadline = sim.now() + 5_000_000;
    let done = |s: &Sim| {
        at.iter()
            .all(|m| membership_of(s, *m).is_some_and(|(e, ms)| e == epoch && ms == target))
            && s.leader().is_some_and(|l| target.contains(&l))
    };
    while !done(sim) {
        assert!(
            sim.now() < deadline,
            "change to {target:?} not in force: {:?}",
            (0..sim.nodes.len())
                .map(|n| membership_of(sim, n))
                .collect::<Vec<_>>()
        );
        mixed_load(sim, 2_000, 4, i);
    }
}

/// RSL's walk ABC → BCD → CDE → ADE while four clients read and write:
/// each step adds a replica (a fresh one, or A again with its old disk)
/// and removes one; every removed replica retires; every check holds,
/// linearizability included, and writes keep completing through it all.
fn configuration_walk(
    seed: u64,
    backend: Backend,
    faults: FaultPlan,
) -> Result<(u64, u64), Violation> {
    let mut cfg = SimConfig::scripted(seed, 5);
    cfg.bootstrap_members = 3;
    cfg.backend = backend;
    cfg.faults = faults;
    let mut sim = Sim::new(cfg);
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    wait_leader(&mut sim);
    let mut i = 0;
    mixed_load(&mut sim, 20_000, 4, &mut i);
    let steps = [
        (d, vec![b, c, d], a),
        (e, vec![c, d, e], b),
        (a, vec![a, d, e], c),
    ];
    let mut done_per_step = Vec::new();
    for (epoch, (joiner, target, leaving)) in steps.into_iter().enumerate() {
        let before = sim.history.iter().filter(|o| o.response.is_some()).count();
        sim.start_joiner(joiner, &target);
        change_under_load(&mut sim, &target, epoch as u64 + 1, &mut i);
        mixed_load(&mut sim, 100_000, 4, &mut i);
        let r = sim
            .replica(leaving)
            .expect("the leaving replica still runs");
        assert!(
            r.is_retired(),
            "node {leaving} was removed but did not retire"
        );
        let after = sim.history.iter().filter(|o| o.response.is_some()).count();
        done_per_step.push(after - before);
    }
    assert!(
        done_per_step.iter().all(|n| *n >= 20),
        "writes stalled during a step: {done_per_step:?}"
    );
    finish(&mut sim)?;
    let epoch = membership_of(&sim, a).unwrap().0;
    Ok((done_per_step.iter().sum::<usize>() as u64, epoch))
}

#[test]
fn rsl_configuration_walk_abc_bcd_cde_ade_under_load() {
    for (seed, backend) in [(10, Backend::Mem), (11, Backend::Wal), (12, Backend::Nvm)] {
        let (ops, epoch) = configuration_walk(seed, backend, FaultPlan::none()).unwrap();
        assert!(ops >= 300, "{ops} ops across the walk");
        assert_eq!(epoch, 3, "three changes in force");
    }
}

/// The same walk over a lossy network: messages dropped, duplicated and
/// reordered, client packets lost and duplicated.
#[test]
fn rsl_configuration_walk_over_a_lossy_network() {
    for seed in 20..26 {
        let mut f = FaultPlan::none();
        f.drop_ppm = 20_000;
        f.dup_ppm = 10_000;
        f.reorder_ppm = 50_000;
        f.reorder_us = 2_000;
        f.client_drop_ppm = 10_000;
        f.client_dup_ppm = 10_000;
        let (ops, _) = configuration_walk(seed, Backend::Wal, f)
            .unwrap_or_else(|v| panic!("seed {seed}: {v:?}"));
        assert!(ops >= 60, "seed {seed}: {ops} ops across the walk");
    }
}

/// Scenario 10: the leader proposes a change, gets it accepted by one
/// follower only (a majority with itself) and crashes before it is known
/// chosen. The next leader finds the change in phase 1, re-proposes it,
/// proposes nothing after it until it is chosen, then runs phase 1 again
/// among the new members. Meanwhile a second change is refused (one at a
/// time), and every check holds.
#[test]
fn scenario_10_a_change_racing_a_leader_change_completes_once() {
    let mut cfg = SimConfig::scripted(10, 4);
    cfg.bootstrap_members = 3;
    let mut sim = Sim::new(cfg);
    let l = wait_leader(&mut sim);
    let mut i = 0;
    mixed_load(&mut sim, 10_000, 4, &mut i);
    let f = others(3, l);
    let (keep, drop) = (f[0], f[1]);
    sim.start_joiner(3, &[l, keep, 3]);
    // The Accept of the change reaches `keep` only; `keep`'s vote and
    // everything else of the leader's is then cut off by its crash.
    sim.set_filter(Box::new(move |e| {
        is(e, l, drop, "accept") || is(e, keep, l, "accepted")
    }));
    assert!(sim.change_config(&[l, keep, 3]));
    assert!(
        !sim.change_config(&[l, keep, drop]),
        "a second change while one is in flight"
    );
    sim.run_for(3_000);
    sim.crash(l);
    sim.clear_filter();
    // The survivors elect a leader; it recovers the change and completes it.
    let target = [l, keep, 3];
    wait_in_force(&mut sim, &[keep, 3], &target, 1, &mut i);
    // `drop` left the configuration and retires once it hears.
    sim.restart(l);
    mixed_load(&mut sim, 50_000, 4, &mut i);
    assert!(sim.replica(drop).unwrap().is_retired());
    let new_leader = sim.leader().unwrap();
    assert!(target.contains(&new_leader));
    // It won phase 1 in a ballot above the one that chose the change: the
    // new configuration's phase 1 ran after the change, not before.
    let r = sim.replica(new_leader).unwrap();
    let chosen_in = (0..r.commit().0)
        .filter_map(|slot| r.entry(Slot(slot)))
        .find(|e| matches!(e.value, Value::Config(_)))
        .expect("the change is in the log")
        .ballot;
    assert!(r.leader_ballot().unwrap() > chosen_in);
    finish(&mut sim).unwrap();
}

/// A change removes its own leader and one more member (ABC → CDE, A
/// leading), and the leader crashes right after the change is chosen by
/// itself and B: C and the joiners D and E never heard that it was. A and
/// B depart instead of retiring at once, so C, still in ABC, is elected
/// with B's vote, chooses the change again and then leads CDE; B retires
/// once a leader of CDE releases it. (When removed replicas retired at
/// once, B stopped voting and C's configuration had no quorum left: 12 of
/// 2,000 chaos seeds that could remove leaders ended without one.)
#[test]
fn a_change_removing_its_leader_survives_the_leader_crashing_during_the_hand_off() {
    let mut cfg = SimConfig::scripted(31, 5);
    cfg.bootstrap_members = 3;
    let mut sim = Sim::new(cfg);
    let a = wait_leader(&mut sim);
    let f = others(3, a);
    let (b, c, d, e) = (f[0], f[1], 3, 4);
    let mut i = 0;
    mixed_load(&mut sim, 10_000, 4, &mut i);
    let mut target = vec![c, d, e];
    target.sort_unstable();
    sim.start_joiner(d, &target);
    sim.start_joiner(e, &target);
    let deadline = sim.now() + 3_000_000;
    while !sim.change_config(&target) {
        assert!(sim.now() < deadline, "the leader never took the change");
        mixed_load(&mut sim, 2_000, 4, &mut i);
    }
    // Once the change is proposed (its joiners caught up), nothing of the
    // leader's reaches C, D or E any more.
    let proposed = |s: &Sim| {
        let r = s.replica(a).unwrap();
        (r.commit().0..r.commit().0 + 64).any(|slot| {
            r.entry(Slot(slot))
                .is_some_and(|e| matches!(e.value, Value::Config(_)))
        })
    };
    let deadline = sim.now() + 3_000_000;
    assert!(
        sim.run_until(deadline, proposed),
        "the change was never proposed"
    );
    let cut: Vec<ReplicaId> = [c, d, e].iter().map(|n| ReplicaId(*n as u32 + 1)).collect();
    let leader_id = ReplicaId(a as u32 + 1);
    sim.set_filter(Box::new(move |env| {
        env.from == leader_id && cut.contains(&env.to)
    }));
    let deadline = sim.now() + 3_000_000;
    assert!(
        sim.run_until(deadline, |s| membership_of(s, a)
            .is_some_and(|(ep, _)| ep == 1)),
        "the change was not chosen by A and B"
    );
    assert!(
        membership_of(&sim, c).is_some_and(|(ep, _)| ep == 0),
        "C heard"
    );
    let ra = sim.replica(a).unwrap();
    assert!(ra.is_departing() && !ra.is_retired() && !ra.is_leader());
    sim.crash(a);
    sim.clear_filter();
    assert!(
        sim.run_until(sim.now() + 1_000_000, |s| membership_of(s, b)
            .is_some_and(|(ep, _)| ep == 1)),
        "B never learned the change"
    );
    assert!(sim.replica(b).unwrap().is_departing());
    // C leads ABC with B's vote, chooses the change again, then CDE runs.
    wait_in_force(&mut sim, &[c, d, e], &target, 1, &mut i);
    mixed_load(&mut sim, 100_000, 4, &mut i);
    assert!(sim.replica(b).unwrap().is_retired(), "B was never released");
    finish(&mut sim).unwrap();
}

// ---- 8: apply atomicity across checkpoints ----

/// Replicas checkpoint every 8 applied slots under load. A follower is
/// crashed while a checkpoint is being written (it is lost) and, in
/// alternate rounds, right after one became durable, and restarted each
/// time from its newest durable checkpoint plus its log. Every slot is
/// applied once (the executor's contract), and at the end every replica's
/// state equals the chosen log replayed from genesis.
fn apply_atomicity(backend: Backend, planted: bool) -> Result<(u64, u64), Violation> {
    let mut cfg = SimConfig::scripted(8, 3);
    cfg.backend = backend;
    cfg.checkpoint_every_slots = 8;
    cfg.truncate_before_checkpoint_durable = planted;
    let mut sim = Sim::new(cfg);
    let l = wait_leader(&mut sim);
    let f = others(3, l)[0];
    let mut i = 0;
    for round in 0..6 {
        let deadline = sim.now() + 3_000_000;
        while !sim.checkpoint_in_flight(f) {
            assert!(sim.now() < deadline, "no checkpoint taken");
            mixed_load(&mut sim, 100, 4, &mut i);
        }
        if round % 2 == 1 {
            while sim.checkpoint_in_flight(f) {
                sim.run_for(50);
            }
        }
        sim.crash(f);
        mixed_load(&mut sim, 5_000, 4, &mut i);
        sim.restart(f);
        if let Some(v) = sim.violation() {
            return Err(v.clone());
        }
        mixed_load(&mut sim, 20_000, 4, &mut i);
    }
    finish(&mut sim)?;
    Ok((sim.stats.checkpoints_taken, sim.stats.checkpoint_restores))
}

#[test]
fn scenario_08_a_crash_around_a_checkpoint_applies_each_slot_once() {
    for backend in [Backend::Mem, Backend::Wal, Backend::Nvm] {
        let (taken, restores) =
            apply_atomicity(backend, false).unwrap_or_else(|v| panic!("{backend:?}: {v:?}"));
        assert!(taken >= 6, "{backend:?}: {taken} checkpoints");
        assert!(restores >= 3, "{backend:?}: {restores} restarts from one");
    }
}

#[test]
fn scenario_08_catches_a_log_truncated_before_its_checkpoint_is_durable() {
    let v = apply_atomicity(Backend::Nvm, true).unwrap_err();
    assert_eq!(v.kind, ViolationKind::SlotsLost, "{v:?}");
}

#[test]
fn scenario_08_catches_a_state_that_diverges_from_the_log() {
    let mut cfg = SimConfig::scripted(8, 3);
    cfg.checkpoint_every_slots = 8;
    let mut sim = Sim::new(cfg);
    let l = wait_leader(&mut sim);
    let mut i = 0;
    mixed_load(&mut sim, 20_000, 4, &mut i);
    // Planted: one replica runs a command outside the log.
    let f = others(3, l)[0];
    let op = engine::sim::workload::encode_op(99, 1, &put("k0", "rogue"));
    sim.nodes[f].executor.execute_unreplicated(&op);
    let v = finish(&mut sim).unwrap_err();
    assert_eq!(v.kind, ViolationKind::StateDiverged, "{v:?}");
}

// ---- 9: checkpoint install racing a configuration change ----

/// A follower is cut off while the log moves far past what replicas keep
/// in memory (24 slots); a configuration change adding a spare is asked
/// for, which waits for a quorum of the new members to catch up. The
/// follower comes back and installs a checkpoint while the change is not
/// yet chosen; a stale Accept for a slot below its checkpoint is not
/// re-appended; the change completes and every check holds.
#[test]
fn scenario_09_a_checkpoint_install_races_a_configuration_change() {
    let mut cfg = SimConfig::scripted(9, 4);
    cfg.bootstrap_members = 3;
    cfg.checkpoint_every_slots = 8;
    let mut sim = Sim::new(cfg);
    let l = wait_leader(&mut sim);
    let lag = others(3, l)[0];
    let mut i = 0;
    mixed_load(&mut sim, 3_000, 4, &mut i);
    let stale_slot = Slot(2);
    let stale = sim
        .replica(l)
        .unwrap()
        .entry(stale_slot)
        .cloned()
        .expect("slot 2 accepted");
    sim.isolate(lag);
    let deadline = sim.now() + 5_000_000;
    while sim.replica(l).unwrap().commit() < Slot(200) {
        assert!(sim.now() < deadline, "the log did not move");
        mixed_load(&mut sim, 2_000, 4, &mut i);
    }
    let target = [0, 1, 2, 3];
    sim.start_joiner(3, &target);
    assert!(sim.change_config(&target));
    sim.heal_network();
    // The lagging follower installs a checkpoint before the change is chosen
    // (it needs a quorum of caught-up new members: the joiner or it).
    let deadline = sim.now() + 5_000_000;
    while sim.stats.checkpoint_installs == 0 {
        assert!(sim.now() < deadline, "nobody installed a checkpoint");
        mixed_load(&mut sim, 200, 4, &mut i);
    }
    let leader = sim.leader().expect("a leader");
    assert_eq!(
        membership_of(&sim, leader).unwrap().0,
        0,
        "the change was chosen before any install"
    );
    // A stale Accept from before the checkpoint arrives late.
    let r = sim.replica(lag).unwrap();
    assert!(r.log().start() > stale_slot, "{:?}", r.log().start());
    let ballot = stale.ballot;
    sim.inject(
        Envelope {
            cluster: CLUSTER,
            from: ballot.replica,
            to: ReplicaId(lag as u32 + 1),
            msg: Message::Accept(Accept {
                ballot,
                slot: stale_slot,
                value: stale.value.clone(),
                commit: Slot(0),
            }),
        },
        10,
    );
    // It is acknowledged, not stored: appending below the log start would
    // break `Log::put`'s contract (an assertion: this test would panic).
    sim.run_for(1_000);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    assert!(sim.replica(lag).unwrap().log().start() > stale_slot);
    // The change completes at every member.
    wait_in_force(&mut sim, &target, &target, 1, &mut i);
    mixed_load(&mut sim, 20_000, 4, &mut i);
    assert!(sim.stats.checkpoint_installs >= 1);
    finish(&mut sim).unwrap();
}

// ---- 17: a closed session's stale command ----

/// The one way an answered command comes back after its session closed: an
/// old leader accepted a copy of it (alone, in a slot beyond what the next
/// leader used); the client's retry was answered by that next leader, the
/// client closed its session there, and the next leader crashed; a third
/// leader adopts the old copy. The close's tombstone must refuse it (with
/// `forget_closed_sessions`, it executes a second time).
fn closed_session_stale_copy(forget: bool) -> Result<u64, Violation> {
    let mut cfg = SimConfig::scripted(17, 3);
    cfg.forget_closed_sessions = forget;
    let mut sim = Sim::new(cfg);
    let a = wait_leader(&mut sim);
    assert_eq!(op(&mut sim, 1, put("k", "v0")), KvResult::Done);
    // Client 0's stale command below is its session's first: a later one
    // (acknowledging earlier answers) would be refused anyway once the
    // session is gone (`Executor::check`), tombstone or not.
    let old_id = sim.client_id(0);
    // A's accepts go nowhere: three fillers, then client 0's command, in
    // four slots only A holds.
    let f = others(3, a);
    sim.set_filter(Box::new(move |e| {
        is(e, a, f[0], "accept") || is(e, a, f[1], "accept")
    }));
    for c in 1..=3 {
        sim.aim_client(c, a);
        sim.submit(c, put(&format!("filler{c}"), "x"));
        sim.run_for(200);
    }
    sim.aim_client(0, a);
    sim.submit(0, put("k", "v1"));
    let h = sim.history.len() - 1;
    sim.run_for(2_000);
    assert!(sim.history[h].response.is_none(), "nothing is chosen");
    // A is cut off; the fillers' clients reach nobody else for now.
    sim.isolate(a);
    sim.set_client_filter(Box::new(move |p: ClientPacket| {
        p.client != 0 && p.node != a
    }));
    let l = wait_new_leader(&mut sim, a);
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(0)));
    assert_eq!(sim.history[h].response.as_ref().unwrap().1, KvResult::Done);
    // The client closes its session at the new leader, which then crashes
    // having used two slots fewer than A holds.
    sim.aim_client(0, l);
    sim.close_session(0);
    let deadline = sim.now() + 3_000_000;
    assert!(sim.run_until(deadline, |s| s.client_idle(0)));
    assert_ne!(sim.client_id(0), old_id, "closed: a new session");
    sim.crash(l);
    sim.clear_filter();
    sim.heal_network();
    sim.clear_client_filter();
    // A and the last follower elect; the leader adopts A's slots, the
    // stale copy among them.
    let deadline = sim.now() + 3_000_000;
    let done = sim.run_until(deadline, |s| (1..=3).all(|c| s.client_idle(c)));
    if let Some(v) = sim.violation() {
        return Err(v.clone());
    }
    assert!(done, "the fillers' clients are stuck");
    sim.restart(l);
    assert_eq!(
        op(&mut sim, 0, get("k")),
        KvResult::Value(Some(Bytes::from_static(b"v1")))
    );
    finish(&mut sim)?;
    Ok(sim.stats.closed_session_refusals)
}

#[test]
fn scenario_17_a_stale_copy_of_a_closed_sessions_command_is_refused() {
    let refused = closed_session_stale_copy(false).unwrap();
    assert!(
        refused > 0,
        "the stale copy was never chosen: the scenario tests nothing"
    );
}

#[test]
fn scenario_17_catches_a_close_that_leaves_no_tombstone() {
    let v = closed_session_stale_copy(true).unwrap_err();
    assert_eq!(v.kind, ViolationKind::ExactlyOnce, "{v:?}");
}
