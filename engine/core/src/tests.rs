//! Handler tests: feed one replica inputs, assert on the commands it emits.
//! Every ignore and retry counter is hit by at least one test here (the
//! counters are the coverage marks).

use super::*;

const CLUSTER: ClusterId = ClusterId(7);

fn ids(n: u32) -> Vec<ReplicaId> {
    (1..=n).map(ReplicaId).collect()
}

fn config(id: u32, n: u32) -> Config {
    let mut c = Config::new(CLUSTER, ReplicaId(id), ids(n));
    c.election_ticks = 10;
    c.heartbeat_ticks = 2;
    c.retransmit_ticks = 3;
    c.window_slots_max = 4;
    c.batch_commands_max = 3;
    c
}

fn replica(id: u32, n: u32) -> Replica {
    Replica::new(config(id, n)).unwrap()
}

fn env(from: u32, to: u32, msg: impl Into<Message>) -> Envelope {
    Envelope {
        cluster: CLUSTER,
        from: ReplicaId(from),
        to: ReplicaId(to),
        msg: msg.into(),
    }
}

fn drain(r: &mut Replica) -> Output {
    let mut out = Output::default();
    r.drain(&mut out);
    r.check_invariants();
    out
}

/// Drains and completes every persist at once; returns the combined output.
fn drain_persisted(r: &mut Replica) -> Output {
    let mut out = drain(r);
    while let Some(t) = out.persist.last().map(|p| p.token) {
        let persist = std::mem::take(&mut out.persist);
        r.on_persisted(t);
        let mut more = drain(r);
        out.send.append(&mut more.send);
        out.apply.append(&mut more.apply);
        out.replies.append(&mut more.replies);
        out.fetch_checkpoint = out.fetch_checkpoint.or(more.fetch_checkpoint);
        out.persist = more.persist;
        let _ = persist;
    }
    out
}

/// The leader commits `op` from client 1 as `seq` in slot `seq - 1`
/// (batches of one; replica 3 accepts).
fn commit_one(r: &mut Replica, b: Ballot, seq: u64, op: &[u8]) {
    r.on_client(cmd(1, seq, op));
    let out = drain(r);
    r.on_persisted(out.persist[0].token);
    r.on_message(env(
        3,
        1,
        Accepted {
            ballot: b,
            first: Slot(seq - 1),
            end: Slot(seq),
        },
    ));
    drain(r);
    assert_eq!(r.applied(), Slot(seq));
}

fn ballot(round: u64, id: u32) -> Ballot {
    Ballot::new(round, ReplicaId(id))
}

fn batch(tag: &str) -> Value {
    let mut b = BatchBuilder::with_capacity(16);
    b.push(ClientId(9), 1, 1, tag.as_bytes());
    Value::Batch(b.finish())
}

fn cmd(client: u64, seq: u64, op: &[u8]) -> CommandRef<'_> {
    CommandRef {
        client: ClientId(client),
        seq,
        ack_below: seq,
        op,
    }
}

fn sent<'a>(out: &'a Output, kind: &str) -> Vec<&'a Envelope> {
    out.send.iter().filter(|e| e.msg.kind() == kind).collect()
}

/// Makes replica 1 of 3 the leader of ballot (1, r1) with empty logs.
fn leader() -> Replica {
    let mut r = replica(1, 3);
    elect(&mut r);
    r
}

/// Ticks `r` until its election timeout makes it a candidate.
fn tick_until_candidate(r: &mut Replica) {
    while r.role() != RoleKind::Candidate {
        r.on_tick();
    }
}

fn elect(r: &mut Replica) {
    tick_until_candidate(r);
    let out = drain_persisted(r);
    let prepare = sent(&out, "prepare");
    assert_eq!(prepare.len(), 2);
    let Message::Prepare(p) = &prepare[0].msg else {
        unreachable!()
    };
    let b = p.ballot;
    let me = r.id().0;
    let peer = if me == 1 { 2 } else { 1 };
    r.on_message(env(
        peer,
        me,
        Promise {
            ballot: b,
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    drain_persisted(r);
    assert!(r.is_leader());
}

// ---- acceptor ----

#[test]
fn promise_goes_out_only_after_the_promise_is_durable() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Prepare {
            ballot: ballot(1, 1),
            from: Slot(0),
        },
    ));
    let out = drain(&mut r);
    assert!(
        out.send.is_empty(),
        "promise before persist: {:?}",
        out.send
    );
    assert_eq!(out.persist.len(), 1);
    assert_eq!(out.persist[0].promised, Some(ballot(1, 1)));
    r.on_persisted(out.persist[0].token);
    let out = drain(&mut r);
    let Message::Promise(p) = &out.send[0].msg else {
        panic!("{:?}", out.send)
    };
    assert_eq!(p.ballot, ballot(1, 1));
    assert_eq!(r.promised(), ballot(1, 1));
    assert!(r.counters().get(Counter::SendsAfterPersist) >= 1);
}

#[test]
fn promise_reports_accepted_values_in_chunks() {
    let mut c = config(2, 3);
    c.promise_bytes_max = 1;
    let mut r = Replica::new(c).unwrap();
    for s in 0..3 {
        r.on_message(env(
            1,
            2,
            Accept {
                ballot: ballot(1, 1),
                slot: Slot(s),
                value: batch("v"),
                commit: Slot(0),
            },
        ));
    }
    drain_persisted(&mut r);
    // The leader falls silent for an election timeout.
    for _ in 0..10 {
        r.on_tick();
    }
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(2, 3),
            from: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    let Message::Promise(p) = &sent(&out, "promise")[0].msg else {
        unreachable!()
    };
    assert_eq!(p.entries.len(), 1, "one entry per chunk at 1 byte");
    assert_eq!(p.more, Some(Slot(1)));
    // The candidate asks for the rest in the same ballot: no new promise write.
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(2, 3),
            from: Slot(2),
        },
    ));
    let out = drain(&mut r);
    assert!(out.persist.is_empty());
    let Message::Promise(p) = &sent(&out, "promise")[0].msg else {
        unreachable!()
    };
    assert_eq!(p.entries[0].slot, Slot(2));
    assert_eq!(p.more, None);
}

#[test]
fn stale_prepare_is_refused_with_the_promised_ballot() {
    let mut r = replica(2, 3);
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(5, 3),
            from: Slot(0),
        },
    ));
    drain_persisted(&mut r);
    r.on_message(env(
        1,
        2,
        Prepare {
            ballot: ballot(4, 1),
            from: Slot(0),
        },
    ));
    let out = drain(&mut r);
    let Message::Nack(n) = &out.send[0].msg else {
        panic!()
    };
    assert_eq!(
        (n.reason, n.promised),
        (NackReason::Superseded, ballot(5, 3))
    );
    assert_eq!(r.counters().get(Counter::IgnorePrepareStale), 1);
    assert_eq!(r.promised(), ballot(5, 3), "promise never decreases");
}

#[test]
fn lagging_candidate_is_refused_without_a_promise() {
    let mut c = config(2, 3);
    c.promise_lag_slots_max = 2;
    let mut r = Replica::new(c).unwrap();
    for s in 0..5 {
        r.on_message(env(
            1,
            2,
            Accept {
                ballot: ballot(1, 1),
                slot: Slot(s),
                value: batch("v"),
                commit: Slot(s + 1),
            },
        ));
    }
    drain_persisted(&mut r);
    assert_eq!(r.commit(), Slot(5));
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(2, 3),
            from: Slot(1),
        },
    ));
    let out = drain(&mut r);
    let Message::Nack(n) = &out.send[0].msg else {
        panic!()
    };
    assert_eq!(n.reason, NackReason::Lagging);
    assert_eq!(
        r.promised(),
        ballot(1, 1),
        "no promise to a lagging candidate"
    );
    assert_eq!(r.counters().get(Counter::IgnorePrepareLagging), 1);
}

#[test]
fn accept_is_acknowledged_after_persist_and_learns_commit() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain(&mut r);
    assert!(sent(&out, "accepted").is_empty());
    assert_eq!(out.persist[0].entries.len(), 1);
    r.on_persisted(out.persist[0].token);
    let out = drain(&mut r);
    assert_eq!(
        out.send[0].msg,
        Message::Accepted(Accepted {
            ballot: ballot(1, 1),
            first: Slot(0),
            end: Slot(1)
        })
    );
    assert_eq!(r.leader_hint(), Some(ReplicaId(1)));
    // The next Accept carries the commit point: slot 0 is applied.
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(1),
            value: batch("b"),
            commit: Slot(1),
        },
    ));
    let out = drain(&mut r);
    assert_eq!(out.apply.len(), 1);
    assert_eq!(out.apply[0].value, batch("a"));
    assert_eq!(
        out.persist[0].commit,
        Some(Slot(1)),
        "commit hint rides on the write"
    );
}

#[test]
fn stale_accept_is_refused() {
    let mut r = replica(2, 3);
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(2, 3),
            from: Slot(0),
        },
    ));
    drain_persisted(&mut r);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain(&mut r);
    assert!(matches!(out.send[0].msg, Message::Nack(_)));
    assert!(r.entry(Slot(0)).is_none());
    assert_eq!(r.counters().get(Counter::IgnoreAcceptStale), 1);
}

#[test]
fn accept_far_beyond_commit_is_dropped() {
    let mut c = config(2, 3);
    c.log_ahead_slots_max = 8;
    let mut r = Replica::new(c).unwrap();
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(8),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain(&mut r);
    assert!(out.persist.iter().all(|p| p.entries.is_empty()));
    assert!(sent(&out, "accepted").is_empty());
    assert_eq!(r.counters().get(Counter::IgnoreAcceptBeyondLogAhead), 1);
}

#[test]
fn a_second_value_in_one_ballot_is_refused() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    drain_persisted(&mut r);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("b"),
            commit: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    assert!(sent(&out, "accepted").is_empty());
    assert_eq!(r.entry(Slot(0)).unwrap().value, batch("a"));
    assert_eq!(r.counters().get(Counter::IgnoreAcceptConflict), 1);
    // The same value again is a retransmission: acknowledged again.
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    assert_eq!(sent(&out, "accepted").len(), 1);
}

#[test]
fn a_different_value_for_a_committed_slot_is_refused() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(1),
        },
    ));
    drain_persisted(&mut r);
    assert_eq!(r.commit(), Slot(1));
    r.on_message(env(
        3,
        2,
        Accept {
            ballot: ballot(2, 3),
            slot: Slot(0),
            value: Value::Noop,
            commit: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    assert!(sent(&out, "accepted").is_empty());
    assert_eq!(
        r.entry(Slot(0)).unwrap().value,
        batch("a"),
        "a committed slot is never overwritten"
    );
    assert_eq!(r.counters().get(Counter::IgnoreAcceptConflictsCommitted), 1);
    // The same value in a higher ballot is acknowledged.
    r.on_message(env(
        3,
        2,
        Accept {
            ballot: ballot(2, 3),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    assert_eq!(sent(&out, "accepted").len(), 1);
}

#[test]
fn recovery_promises_at_least_every_recovered_ballot_and_trusts_commit_only_over_entries() {
    let state = DurableState {
        promised: ballot(1, 1),
        log_start: Slot(0),
        entries: vec![
            EntryWrite {
                slot: Slot(0),
                ballot: ballot(3, 2),
                value: batch("a"),
            },
            EntryWrite {
                slot: Slot(2),
                ballot: ballot(3, 2),
                value: batch("c"),
            },
        ],
        commit: Slot(3),
        unprovable: None,
        membership: None,
    };
    let mut r = Replica::recover(config(1, 3), state).unwrap();
    assert_eq!(r.promised(), ballot(3, 2));
    assert_eq!(
        r.commit(),
        Slot(1),
        "slot 1 has no entry: commit stops before it"
    );
    let out = drain(&mut r);
    assert_eq!(out.apply.len(), 1);
}

// ---- proposer ----

/// Issue 21, finding 1: a salvaged log kept an older record of slot 0
/// (this replica's own proposal, never chosen) after the newer one, the
/// chosen value, was cut; the commit hint from before the corruption
/// still covers slot 0. The old value must not be applied as chosen.
#[test]
fn after_a_salvage_the_commit_hint_makes_nothing_chosen() {
    let state = DurableState {
        promised: ballot(2, 2),
        entries: vec![EntryWrite {
            slot: Slot(0),
            ballot: ballot(1, 1),
            value: batch("mine, never chosen"),
        }],
        commit: Slot(1),
        unprovable: Some(Unprovable {
            below: Slot(1),
            ballot: ballot(2, 2),
        }),
        ..DurableState::default()
    };
    let mut r = Replica::recover(config(1, 3), state).unwrap();
    assert_eq!(r.commit(), Slot(0));
    assert!(drain(&mut r).apply.is_empty(), "applied a salvaged record");
    // The leader's catch-up replaces it with the chosen value.
    let b = ballot(2, 2);
    let chosen = batch("chosen");
    r.on_message(env(
        2,
        1,
        Accept {
            ballot: b,
            slot: Slot(0),
            value: chosen.clone(),
            commit: Slot(1),
        },
    ));
    let out = drain_persisted(&mut r);
    assert_eq!(r.commit(), Slot(1));
    assert_eq!(out.apply.len(), 1);
    assert_eq!(out.apply[0].value, chosen);
    assert!(r.unprovable().is_none());
}

#[test]
fn election_adopts_the_highest_ballot_values_and_fills_holes() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r);
    assert_eq!(r.counters().get(Counter::ElectionsStarted), 1);
    let out = drain_persisted(&mut r);
    let Message::Prepare(p) = &sent(&out, "prepare")[0].msg else {
        unreachable!()
    };
    let b = p.ballot;
    assert_eq!(b.replica, ReplicaId(1));
    r.on_message(env(
        2,
        1,
        Promise {
            ballot: b,
            entries: vec![
                PromiseEntry {
                    slot: Slot(0),
                    ballot: ballot(0, 3),
                    value: batch("old"),
                },
                PromiseEntry {
                    slot: Slot(0),
                    ballot: ballot(0, 4),
                    value: batch("new"),
                },
                PromiseEntry {
                    slot: Slot(2),
                    ballot: ballot(0, 3),
                    value: batch("two"),
                },
            ],
            commit: Slot(0),
            more: None,
        },
    ));
    let out = drain(&mut r);
    r.on_persisted(out.persist[0].token);
    assert!(r.is_leader());
    assert_eq!(r.counters().get(Counter::ElectionsWon), 1);
    let out = drain(&mut r);
    let accepts: Vec<_> = sent(&out, "accept")
        .into_iter()
        .filter(|e| e.to == ReplicaId(2))
        .map(|e| match &e.msg {
            Message::Accept(a) => (a.slot, a.ballot, a.value.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        accepts,
        vec![
            (Slot(0), b, batch("new")),
            (Slot(1), b, Value::Noop),
            (Slot(2), b, batch("two"))
        ]
    );
}

#[test]
fn candidate_promises_itself_only_when_that_completes_a_quorum() {
    let mut r = replica(1, 5);
    tick_until_candidate(&mut r);
    let out = drain(&mut r);
    assert!(
        out.persist.is_empty(),
        "no self-promise before any peer promised"
    );
    let Message::Prepare(p) = &sent(&out, "prepare")[0].msg else {
        unreachable!()
    };
    let b = p.ballot;
    assert_eq!(r.promised(), Ballot::ZERO);
    let promise = |from| {
        env(
            from,
            1,
            Promise {
                ballot: b,
                entries: vec![],
                commit: Slot(0),
                more: None,
            },
        )
    };
    r.on_message(promise(2));
    assert!(
        drain(&mut r).persist.is_empty(),
        "2 of 5 with us: still no quorum"
    );
    r.on_message(promise(3));
    let out = drain(&mut r);
    assert_eq!(
        out.persist[0].promised,
        Some(b),
        "now our promise completes a quorum"
    );
    assert_eq!(
        r.role(),
        RoleKind::Candidate,
        "an unflushed own promise does not count"
    );
    r.on_persisted(out.persist[0].token);
    assert!(r.is_leader());
}

#[test]
fn a_candidate_leads_only_once_its_own_promise_is_durable() {
    // 5 replicas: three peers' promises are a quorum without us, but a
    // leader whose promise could be lost in a crash might reuse its ballot
    // after restart and propose a second value in it.
    let mut r = replica(1, 5);
    tick_until_candidate(&mut r);
    let b = c_ballot(&mut r);
    for from in 2..=4 {
        r.on_message(env(
            from,
            1,
            Promise {
                ballot: b,
                entries: vec![],
                commit: Slot(0),
                more: None,
            },
        ));
    }
    assert_eq!(r.role(), RoleKind::Candidate);
    let out = drain(&mut r);
    assert!(sent(&out, "accept").is_empty() && sent(&out, "heartbeat").is_empty());
    r.on_persisted(out.persist[0].token);
    assert!(r.is_leader());
}

#[test]
fn a_candidate_that_hears_the_leader_gives_up_without_disturbing_it() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r);
    drain(&mut r);
    // The old leader (ballot below the candidate's) is alive after all.
    r.on_message(env(
        2,
        1,
        Heartbeat {
            ballot: ballot(0, 2),
            commit: Slot(0),
        },
    ));
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.leader_hint(), Some(ReplicaId(2)));
    assert_eq!(r.counters().get(Counter::ElectionsAbandoned), 1);
    let out = drain_persisted(&mut r);
    assert_eq!(
        sent(&out, "heartbeat_reply").len(),
        1,
        "it follows, no Nack"
    );
}

#[test]
fn a_follower_that_hears_its_leader_refuses_new_ballots() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Heartbeat {
            ballot: ballot(1, 1),
            commit: Slot(0),
        },
    ));
    drain_persisted(&mut r);
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(2, 3),
            from: Slot(0),
        },
    ));
    let out = drain(&mut r);
    let Message::Nack(n) = &out.send[0].msg else {
        panic!("{:?}", out.send)
    };
    assert_eq!(
        (n.reason, n.promised),
        (NackReason::LeaderAlive, ballot(1, 1))
    );
    assert_eq!(r.counters().get(Counter::IgnorePrepareLeaderAlive), 1);
    // Once the leader is silent for an election timeout, the ballot is granted.
    for _ in 0..r.config().election_ticks {
        r.on_tick();
        if r.role() != RoleKind::Follower {
            break;
        }
    }
    r.on_message(env(
        3,
        2,
        Prepare {
            ballot: ballot(9, 3),
            from: Slot(0),
        },
    ));
    drain_persisted(&mut r);
    assert_eq!(r.promised(), ballot(9, 3));
    // A refused candidate gives up once the refusals leave it no quorum.
    let mut c = replica(3, 3);
    while c.role() != RoleKind::Candidate {
        c.on_tick();
    }
    let b = c.leader_hint();
    assert_eq!(b, None);
    let cb = c_ballot(&mut c);
    let alive = |from| {
        env(
            from,
            3,
            Nack {
                ballot: cb,
                reason: NackReason::LeaderAlive,
                promised: ballot(1, 1),
                commit: Slot(0),
            },
        )
    };
    c.on_message(alive(2));
    assert_eq!(
        c.role(),
        RoleKind::Candidate,
        "one refusal of two still leaves a quorum"
    );
    c.on_message(alive(1));
    assert_eq!(c.role(), RoleKind::Follower);
    assert_eq!(c.leader_hint(), Some(ReplicaId(1)));
    assert_eq!(c.counters().get(Counter::ElectionsLeaderAlive), 1);
}

fn c_ballot(c: &mut Replica) -> Ballot {
    let out = drain(c);
    match &sent(&out, "prepare")[0].msg {
        Message::Prepare(p) => p.ballot,
        _ => unreachable!(),
    }
}

#[test]
fn promises_are_checked_for_ballot_and_duplicates() {
    let mut r = replica(1, 5);
    tick_until_candidate(&mut r);
    let b = c_ballot(&mut r);
    r.on_message(env(
        2,
        1,
        Promise {
            ballot: ballot(0, 2),
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnorePromiseStale), 1);
    r.on_message(env(
        2,
        1,
        Promise {
            ballot: b,
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    r.on_message(env(
        2,
        1,
        Promise {
            ballot: b,
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnorePromiseDuplicate), 1);
    // A chunked promise makes the candidate ask for the rest.
    r.on_message(env(
        3,
        1,
        Promise {
            ballot: b,
            entries: vec![],
            commit: Slot(0),
            more: Some(Slot(4)),
        },
    ));
    let out = drain(&mut r);
    assert!(sent(&out, "prepare").iter().any(|e| e.to == ReplicaId(3)
        && e.msg
            == Message::Prepare(Prepare {
                ballot: b,
                from: Slot(4)
            })));
    assert_eq!(r.counters().get(Counter::PromiseChunks), 1);
    // Unanswered peers get the Prepare again.
    for _ in 0..3 {
        r.on_tick();
    }
    assert!(r.counters().get(Counter::PrepareRetransmits) >= 3);
}

#[test]
fn lagging_nack_ends_the_candidacy() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r);
    let b = c_ballot(&mut r);
    r.on_message(env(
        2,
        1,
        Nack {
            ballot: b,
            reason: NackReason::Lagging,
            promised: ballot(0, 0),
            commit: Slot(99),
        },
    ));
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.counters().get(Counter::ElectionsLagging), 1);
    r.on_message(env(
        2,
        1,
        Nack {
            ballot: b,
            reason: NackReason::Lagging,
            promised: ballot(0, 0),
            commit: Slot(99),
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnoreNackStale), 1);
}

#[test]
fn leader_batches_pipelines_and_commits_on_a_quorum() {
    let mut r = leader();
    let b = r.leader_ballot().unwrap();
    for seq in 1..=5 {
        r.on_client(cmd(1, seq, b"op"));
    }
    let out = drain(&mut r);
    let to2: Vec<_> = sent(&out, "accept")
        .into_iter()
        .filter(|e| e.to == ReplicaId(2))
        .collect();
    assert_eq!(to2.len(), 2, "5 commands, batches of 3: two slots");
    let Message::Accept(a0) = &to2[0].msg else {
        unreachable!()
    };
    assert_eq!(a0.value.command_count(), 3);
    assert_eq!(
        out.persist[0].entries.len(),
        2,
        "one persist for both slots (group commit)"
    );
    // A follower's vote alone is not enough before our own persist is durable...
    r.on_message(env(
        2,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(2),
        },
    ));
    assert_eq!(r.commit(), Slot(0));
    // ... but with it, both slots commit and apply in order.
    r.on_persisted(out.persist[0].token);
    assert_eq!(r.commit(), Slot(2));
    let out = drain(&mut r);
    assert_eq!(
        out.apply.iter().map(|a| a.slot).collect::<Vec<_>>(),
        vec![Slot(0), Slot(1)]
    );
    // The third vote arrives late.
    r.on_message(env(
        3,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(2),
        },
    ));
    assert_eq!(r.counters().get(Counter::AcceptedAfterCommit), 1);
    r.on_message(env(
        3,
        1,
        Accepted {
            ballot: b,
            first: Slot(5),
            end: Slot(6),
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnoreAcceptedOutsideWindow), 1);
    r.on_message(env(
        3,
        1,
        Accepted {
            ballot: ballot(0, 1),
            first: Slot(0),
            end: Slot(1),
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnoreAcceptedStale), 1);
}

#[test]
fn the_window_bounds_slots_in_flight() {
    let mut c = config(1, 3);
    c.window_slots_max = 2;
    c.batch_commands_max = 1;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    for seq in 1..=5 {
        r.on_client(cmd(1, seq, b"op"));
    }
    let out = drain(&mut r);
    assert_eq!(sent(&out, "accept").len(), 4, "2 slots x 2 peers");
    assert_eq!(r.queued_commands(), 3);
    r.on_persisted(out.persist[0].token);
    let b = r.leader_ballot().unwrap();
    r.on_message(env(
        2,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(1),
        },
    ));
    let out = drain(&mut r);
    assert_eq!(
        sent(&out, "accept").len(),
        2,
        "one slot freed, one more proposed"
    );
    assert_eq!(r.queued_commands(), 2);
}

#[test]
fn classic_mode_has_one_proposal_in_flight() {
    let mut r = Replica::new(config(1, 3).classic()).unwrap();
    elect(&mut r);
    for seq in 1..=3 {
        r.on_client(cmd(1, seq, b"op"));
    }
    let out = drain(&mut r);
    let accepts = sent(&out, "accept");
    assert_eq!(accepts.len(), 2, "one slot to two peers");
    let Message::Accept(a) = &accepts[0].msg else {
        unreachable!()
    };
    assert_eq!(a.value.command_count(), 1);
}

#[test]
fn a_full_queue_answers_busy() {
    let mut c = config(1, 3);
    c.queue_commands_max = 2;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    for seq in 1..=3 {
        r.on_client(cmd(1, seq, b"op"));
    }
    let out = drain(&mut r);
    assert_eq!(out.replies.len(), 1);
    assert_eq!(out.replies[0].result, Err(ProposeError::Busy));
    assert_eq!(r.counters().get(Counter::ClientBusy), 1);
}

#[test]
fn clients_are_redirected_and_bad_requests_refused() {
    let mut r = replica(2, 3);
    r.on_client(cmd(1, 1, b"op"));
    r.on_message(env(
        1,
        2,
        Heartbeat {
            ballot: ballot(1, 1),
            commit: Slot(0),
        },
    ));
    r.on_client(cmd(1, 2, b"op"));
    let mut big = config(2, 3);
    big.command_bytes_max = 2;
    let out = drain_persisted(&mut r);
    assert_eq!(
        out.replies[0].result,
        Err(ProposeError::NotLeader { hint: None })
    );
    assert_eq!(
        out.replies[1].result,
        Err(ProposeError::NotLeader {
            hint: Some(ReplicaId(1))
        })
    );
    assert_eq!(r.counters().get(Counter::ClientNotLeader), 2);
    let mut r = Replica::new(big).unwrap();
    r.on_client(cmd(1, 1, b"toolong"));
    r.on_client(CommandRef {
        client: ClientId(1),
        seq: 1,
        ack_below: 2,
        op: b"",
    });
    let out = drain(&mut r);
    assert!(
        out.replies
            .iter()
            .all(|r| matches!(r.result, Err(ProposeError::Invalid(_))))
    );
    assert_eq!(r.counters().get(Counter::ClientInvalid), 2);
}

/// A leader of a window of one slot holding command (1, 1) in flight and
/// (1, 2) queued behind it.
fn leader_with_one_proposed_and_one_queued() -> Replica {
    let mut c = config(1, 3);
    c.window_slots_max = 1;
    c.batch_commands_max = 1;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    r.on_client(cmd(1, 1, b"a"));
    r.on_client(cmd(1, 2, b"b"));
    drain(&mut r);
    r
}

#[test]
fn a_higher_ballot_makes_the_leader_step_down_and_release_its_queue() {
    let mut r = leader_with_one_proposed_and_one_queued();
    // A leader elected elsewhere in a higher ballot proposes to us.
    r.on_message(env(
        3,
        1,
        Accept {
            ballot: ballot(9, 3),
            slot: Slot(0),
            value: batch("x"),
            commit: Slot(0),
        },
    ));
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.leader_hint(), Some(ReplicaId(3)));
    assert_eq!(r.counters().get(Counter::StepDownsSuperseded), 1);
    let out = drain(&mut r);
    // The queued (never proposed) command is released; the proposed one is not.
    assert_eq!(out.replies.len(), 1);
    assert_eq!(out.replies[0].seq, 2);
    assert!(matches!(
        out.replies[0].result,
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn a_relinquishing_leader_steps_down_and_stands_for_nothing_during_its_hold_off() {
    let mut r = leader_with_one_proposed_and_one_queued();
    assert!(r.relinquish());
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.leader_hint(), None, "it follows nobody: others may lead");
    assert_eq!(r.counters().get(Counter::StepDownsRelinquished), 1);
    let out = drain(&mut r);
    // The queued command goes back to its client; the proposed one is left
    // to the next leader's phase 1.
    assert_eq!(out.replies.len(), 1);
    assert!(matches!(
        out.replies[0].result,
        Err(ProposeError::NotLeader { hint: None })
    ));
    // The hold-off is three election timeouts (30 ticks), more than the
    // longest timeout (2 * 10 ticks): no candidacy before it ends.
    assert_eq!(RELINQUISH_HOLD_ELECTIONS * 10, 30);
    for _ in 0..29 {
        r.on_tick();
        assert_eq!(r.role(), RoleKind::Follower);
        assert!(sent(&drain(&mut r), "prepare").is_empty());
    }
    assert!(r.counters().get(Counter::ElectionsSkippedHeld) >= 1);
    // After the hold-off it stands again.
    tick_until_candidate(&mut r);
    assert!(!r.relinquish(), "only a leader relinquishes");
}

#[test]
fn a_vetoed_replica_stands_for_nothing_but_votes_and_an_elected_one_keeps_leading() {
    let mut r = replica(2, 3);
    r.set_lead_vetoed(true);
    for _ in 0..100 {
        r.on_tick();
        assert_eq!(r.role(), RoleKind::Follower);
    }
    let out = drain(&mut r);
    assert!(sent(&out, "prepare").is_empty());
    assert!(r.counters().get(Counter::ElectionsSkippedHeld) >= 4);
    // It still grants its vote to another candidate.
    r.on_message(env(
        1,
        2,
        Prepare {
            ballot: ballot(5, 1),
            from: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    assert_eq!(sent(&out, "promise").len(), 1);
    // A veto arriving during a candidacy ends it.
    let mut c = replica(3, 3);
    tick_until_candidate(&mut c);
    drain(&mut c);
    c.set_lead_vetoed(true);
    assert_eq!(c.role(), RoleKind::Follower);
    // Lifted, it stands again.
    c.set_lead_vetoed(false);
    tick_until_candidate(&mut c);
    // A leader vetoed afterwards goes on leading (the veto is about
    // becoming primary; relinquish is how it stops).
    let mut l = leader();
    l.set_lead_vetoed(true);
    drain(&mut l);
    assert!(l.is_leader());
}

#[test]
fn a_superseded_nack_makes_the_leader_step_down() {
    let mut r = leader();
    let b = r.leader_ballot().unwrap();
    r.on_message(env(
        2,
        1,
        Nack {
            ballot: b,
            reason: NackReason::Superseded,
            promised: ballot(b.round + 1, 3),
            commit: Slot(0),
        },
    ));
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.leader_hint(), Some(ReplicaId(3)));
}

#[test]
fn leader_without_a_quorum_steps_down() {
    let mut r = leader();
    for _ in 0..=r.config().election_ticks {
        r.on_tick();
    }
    assert_eq!(r.role(), RoleKind::Follower);
    assert_eq!(r.counters().get(Counter::StepDownsNoQuorum), 1);
}

#[test]
fn heartbeats_keep_followers_and_the_leader_in_touch() {
    let mut r = leader();
    let b = r.leader_ballot().unwrap();
    for _ in 0..30 {
        r.on_tick();
        let out = drain(&mut r);
        for e in sent(&out, "heartbeat") {
            let from = e.to.0;
            r.on_message(env(
                from,
                1,
                HeartbeatReply {
                    ballot: b,
                    commit: Slot(0),
                },
            ));
        }
    }
    assert!(r.is_leader(), "replies keep the quorum check satisfied");
    r.on_message(env(
        2,
        1,
        HeartbeatReply {
            ballot: ballot(0, 2),
            commit: Slot(0),
        },
    ));
    assert_eq!(r.counters().get(Counter::IgnoreHeartbeatReplyStale), 1);
    // A follower answers a heartbeat and refuses a stale one.
    let mut f = replica(2, 3);
    f.on_message(env(
        1,
        2,
        Heartbeat {
            ballot: ballot(3, 1),
            commit: Slot(0),
        },
    ));
    let out = drain_persisted(&mut f);
    assert_eq!(sent(&out, "heartbeat_reply").len(), 1);
    f.on_message(env(
        3,
        2,
        Commit {
            ballot: ballot(2, 3),
            commit: Slot(0),
        },
    ));
    let out = drain(&mut f);
    assert_eq!(sent(&out, "nack").len(), 1);
    assert_eq!(f.counters().get(Counter::IgnoreCommitStale), 1);
}

#[test]
fn unacknowledged_accepts_are_retransmitted() {
    let mut r = leader();
    r.on_client(cmd(1, 1, b"op"));
    drain(&mut r);
    for _ in 0..3 {
        r.on_tick();
    }
    let out = drain(&mut r);
    assert_eq!(sent(&out, "accept").len(), 2);
    assert_eq!(r.counters().get(Counter::AcceptRetransmits), 2);
}

#[test]
fn a_follower_missing_chosen_values_catches_up_from_the_leader() {
    // The follower missed slots 0..3; the leader says 3 are chosen.
    let mut f = replica(2, 3);
    f.on_message(env(
        1,
        2,
        Commit {
            ballot: ballot(1, 1),
            commit: Slot(3),
        },
    ));
    let out = drain_persisted(&mut f);
    let req = sent(&out, "catchup_request");
    assert_eq!(
        req[0].msg,
        Message::CatchupRequest(CatchupRequest {
            ballot: ballot(1, 1),
            from: Slot(0),
            to: Slot(3)
        })
    );
    // Not asked again until due.
    f.on_message(env(
        1,
        2,
        Commit {
            ballot: ballot(1, 1),
            commit: Slot(3),
        },
    ));
    assert!(sent(&drain(&mut f), "catchup_request").is_empty());
    assert_eq!(f.counters().get(Counter::CatchupRequests), 1);

    // The leader serves chosen slots as Accepts in its ballot.
    let mut l = leader();
    let b = l.leader_ballot().unwrap();
    for seq in 1..=3 {
        commit_one(&mut l, b, seq, b"op");
    }
    assert_eq!(l.commit(), Slot(3));
    drain(&mut l);
    l.on_message(env(
        2,
        1,
        CatchupRequest {
            ballot: b,
            from: Slot(0),
            to: Slot(3),
        },
    ));
    let out = drain(&mut l);
    assert_eq!(sent(&out, "accept").len(), 3);
    assert_eq!(l.counters().get(Counter::CatchupSlotsServed), 3);
    l.on_message(env(
        2,
        1,
        CatchupRequest {
            ballot: ballot(0, 1),
            from: Slot(0),
            to: Slot(3),
        },
    ));
    assert_eq!(l.counters().get(Counter::IgnoreCatchupStale), 1);
}

#[test]
fn the_log_is_compacted_by_bytes_only_below_a_durable_checkpoint() {
    let mut c = config(1, 3);
    c.log_retained_bytes_max = 500;
    c.batch_commands_max = 1;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    let b = r.leader_ballot().unwrap();
    for seq in 1..=10 {
        commit_one(&mut r, b, seq, &[7; 100]);
    }
    let per_slot = r.entry(Slot(0)).unwrap().value.payload_len() as u64;
    assert!(per_slot >= 100);
    // No checkpoint yet: every slot stays, over the bound.
    assert_eq!(r.log().start(), Slot(0));
    assert_eq!(r.log_bytes(), 10 * per_slot);
    r.checkpoint_saved(Slot(3));
    commit_one(&mut r, b, 11, &[7; 100]);
    // Only the slots the checkpoint covers went.
    assert_eq!(r.log().start(), Slot(3));
    r.checkpoint_saved(Slot(11));
    commit_one(&mut r, b, 12, &[7; 100]);
    // Now down to 7/8 of the bound, from the oldest slot on.
    assert!(r.log_bytes() <= 500 - 500 / 8, "{} bytes", r.log_bytes());
    assert!(
        r.log_bytes() + per_slot > 500 - 500 / 8,
        "compacted more than needed"
    );
    assert_eq!(r.log().end(), Slot(12));
    r.check_invariants();
}

/// A checkpoint that lets thousands of slots go does not free them in one
/// round (one long stall of the replica's loop): each round forgets at
/// most `COMPACT_STEP_SLOTS_MAX` more than it applied, until the log is
/// within its bound again.
#[test]
fn compaction_is_spread_over_apply_rounds() {
    let step = crate::learner::COMPACT_STEP_SLOTS_MAX;
    let mut c = config(1, 3);
    c.log_retained_bytes_max = 1000;
    c.batch_commands_max = 1;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    let b = r.leader_ballot().unwrap();
    let slots = 3 * step;
    for seq in 1..=slots {
        commit_one(&mut r, b, seq, b"op");
    }
    assert_eq!(r.log().start(), Slot(0), "no checkpoint: every slot stays");
    r.checkpoint_saved(Slot(slots));
    commit_one(&mut r, b, slots + 1, b"op");
    assert_eq!(
        r.log().start(),
        Slot(step + 1),
        "one step, plus the slot applied"
    );
    commit_one(&mut r, b, slots + 2, b"op");
    assert_eq!(r.log().start(), Slot(2 * step + 2));
    commit_one(&mut r, b, slots + 3, b"op");
    assert!(r.log_bytes() <= 1000 - 1000 / 8, "{} bytes", r.log_bytes());
    r.check_invariants();
}

#[test]
#[should_panic(expected = "a checkpoint of unapplied slots")]
fn a_checkpoint_beyond_the_applied_slots_is_a_broken_contract() {
    let mut r = leader();
    r.checkpoint_saved(Slot(5));
}

#[test]
fn catchup_below_the_retained_log_needs_a_checkpoint() {
    let mut c = config(1, 3);
    c.log_retained_slots_max = 1;
    c.promise_lag_slots_max = 1;
    c.batch_commands_max = 1;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    let b = r.leader_ballot().unwrap();
    for seq in 1..=4 {
        commit_one(&mut r, b, seq, b"op");
    }
    drain(&mut r);
    assert!(r.log().start() > Slot(0), "applied slots were compacted");
    r.on_message(env(
        2,
        1,
        CatchupRequest {
            ballot: b,
            from: Slot(0),
            to: Slot(4),
        },
    ));
    assert_eq!(r.counters().get(Counter::CatchupNeedsCheckpoint), 1);
    let out = drain(&mut r);
    let needed = sent(&out, "checkpoint_needed");
    assert_eq!(needed.len(), 1);
    assert_eq!(needed[0].to, ReplicaId(2));
    assert_eq!(
        needed[0].msg,
        Message::CheckpointNeeded(CheckpointNeeded {
            ballot: b,
            log_start: r.log().start()
        })
    );
    assert!(
        sent(&out, "accept").is_empty(),
        "no slot it lacks is served"
    );
}

/// A follower of leader 1 whose commit point (0) is below what the leader
/// still holds.
fn follower_told_to_fetch(log_start: u64) -> (Replica, Ballot, Output) {
    let mut f = replica(2, 3);
    let b = ballot(3, 1);
    f.on_message(env(
        1,
        2,
        Heartbeat {
            ballot: b,
            commit: Slot(log_start + 2),
        },
    ));
    let out = drain_persisted(&mut f);
    assert_eq!(sent(&out, "catchup_request").len(), 1);
    f.on_message(env(
        1,
        2,
        CheckpointNeeded {
            ballot: b,
            log_start: Slot(log_start),
        },
    ));
    let out = drain(&mut f);
    (f, b, out)
}

#[test]
fn a_follower_behind_the_leaders_log_asks_for_a_checkpoint_and_continues_from_it() {
    let (mut f, b, out) = follower_told_to_fetch(5);
    assert_eq!(
        out.fetch_checkpoint,
        Some(FetchCheckpoint {
            from: ReplicaId(1),
            at_least: Slot(5)
        })
    );
    assert_eq!(f.counters().get(Counter::CheckpointFetches), 1);
    // An entry accepted beyond the checkpoint survives the install.
    f.on_message(env(
        1,
        2,
        Accept {
            ballot: b,
            slot: Slot(6),
            value: batch("six"),
            commit: Slot(0),
        },
    ));
    drain_persisted(&mut f);
    // Not beyond the commit point: refused, nothing changes.
    assert!(!f.install_checkpoint(Slot(0), None));
    assert!(f.install_checkpoint(Slot(6), None));
    f.check_invariants();
    assert_eq!(
        (f.log().start(), f.commit(), f.applied()),
        (Slot(6), Slot(6), Slot(6))
    );
    assert!(
        f.entry(Slot(6)).is_some(),
        "entries at the checkpoint slot stay"
    );
    assert!(!f.install_checkpoint(Slot(6), None), "installed twice");
    assert_eq!(f.counters().get(Counter::CheckpointsInstalled), 1);
    assert_eq!(f.counters().get(Counter::CheckpointInstallsRefused), 2);
    // The leader's commit point now applies slot 6 from the kept entry.
    f.on_message(env(
        1,
        2,
        Commit {
            ballot: b,
            commit: Slot(7),
        },
    ));
    let out = drain(&mut f);
    assert_eq!(out.apply.len(), 1);
    assert_eq!(out.apply[0].slot, Slot(6));
}

#[test]
fn a_stale_checkpoint_needed_is_ignored_and_a_leader_installs_nothing() {
    let (mut f, b, _) = follower_told_to_fetch(5);
    // Not from the leader of the promised ballot; not beyond the commit point.
    for (from, m) in [
        (
            3,
            CheckpointNeeded {
                ballot: ballot(2, 3),
                log_start: Slot(9),
            },
        ),
        (
            1,
            CheckpointNeeded {
                ballot: b,
                log_start: Slot(0),
            },
        ),
    ] {
        f.on_message(env(from, 2, m));
        assert_eq!(drain(&mut f).fetch_checkpoint, None);
    }
    assert_eq!(f.counters().get(Counter::IgnoreCheckpointNeededStale), 2);
    let mut l = leader();
    assert!(!l.install_checkpoint(Slot(10), None));
    assert_eq!(l.commit(), Slot(0));
}

// ---- dispatcher ----

#[test]
fn foreign_and_forged_messages_are_refused() {
    let mut r = replica(2, 3);
    let mut m = env(
        1,
        2,
        Prepare {
            ballot: ballot(1, 1),
            from: Slot(0),
        },
    );
    m.cluster = ClusterId(8);
    r.on_message(m);
    // A proposer's reply from outside the configuration counts for nothing.
    r.on_message(env(
        4,
        2,
        Promise {
            ballot: ballot(1, 2),
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    r.on_message(env(
        1,
        3,
        Prepare {
            ballot: ballot(1, 1),
            from: Slot(0),
        },
    ));
    r.on_message(env(
        1,
        2,
        Prepare {
            ballot: ballot(1, 3),
            from: Slot(0),
        },
    ));
    let out = drain(&mut r);
    assert!(out.is_empty());
    assert_eq!(r.promised(), Ballot::ZERO);
    assert_eq!(r.counters().get(Counter::IgnoreWrongCluster), 1);
    assert_eq!(r.counters().get(Counter::IgnoreNotMember), 2);
    assert_eq!(r.counters().get(Counter::IgnoreBallotNotSender), 1);
}

#[test]
fn a_storage_failure_stops_the_replica_for_good() {
    let mut r = replica(2, 3);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: batch("a"),
            commit: Slot(0),
        },
    ));
    let out = drain(&mut r);
    let token = out.persist[0].token;
    r.on_storage_failed();
    // A retry that "succeeds" must not release the acknowledgement.
    r.on_persisted(token);
    r.on_message(env(
        1,
        2,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(1),
            value: batch("b"),
            commit: Slot(0),
        },
    ));
    r.on_tick();
    r.on_client(cmd(1, 1, b"x"));
    let out = drain(&mut r);
    assert!(out.is_empty(), "a stopped replica emits nothing: {out:?}");
    assert!(r.is_stopped());
    assert_eq!(r.counters().get(Counter::IgnoreStopped), 4);
}

#[test]
fn a_single_replica_cluster_commits_alone() {
    let mut r = Replica::new(Config::new(CLUSTER, ReplicaId(1), ids(1))).unwrap();
    while !r.is_leader() {
        r.on_tick();
        drain_persisted(&mut r);
    }
    r.on_client(cmd(1, 1, b"op"));
    let out = drain_persisted(&mut r);
    assert_eq!(out.apply.len(), 1);
    assert!(out.send.is_empty());
}

// ---- configuration changes ----

fn membership(epoch: u64, members: &[u32]) -> Membership {
    Membership::new(epoch, members.iter().copied().map(ReplicaId).collect()).unwrap()
}

/// Leader `r`'s followers `ids` answer a heartbeat, caught up.
fn heartbeat_replies(r: &mut Replica, ids: &[u32]) {
    let ballot = r.leader_ballot().unwrap();
    for id in ids {
        let reply = HeartbeatReply {
            ballot,
            commit: r.commit(),
        };
        r.on_message(env(*id, r.id().0, reply));
    }
}

#[test]
fn a_leader_reports_each_members_contact_commit_and_unacknowledged_slots() {
    let mut r = leader();
    let b = r.leader_ballot().unwrap();
    r.on_client(cmd(1, 1, b"a"));
    drain(&mut r);
    let h = r.peer_health();
    assert_eq!(h.iter().map(|p| p.id.0).collect::<Vec<_>>(), vec![2, 3]);
    assert!(h.iter().all(|p| p.outstanding == 1 && p.commit.is_none()));
    r.on_message(env(
        2,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(1),
        },
    ));
    heartbeat_replies(&mut r, &[3]);
    for _ in 0..3 {
        r.on_tick();
    }
    drain(&mut r);
    let h = r.peer_health();
    assert_eq!((h[0].outstanding, h[0].heard_ticks_ago), (0, 3));
    assert_eq!((h[1].outstanding, h[1].commit), (1, Some(Slot(0))));
    assert_eq!(h[1].heard_ticks_ago, 3);
    // A follower reports how long ago it heard its leader instead.
    let mut f = replica(2, 3);
    assert_eq!(f.leader_heard_ticks_ago(), None);
    f.on_message(env(
        1,
        2,
        Commit {
            ballot: b,
            commit: Slot(0),
        },
    ));
    f.on_tick();
    assert_eq!(f.leader_heard_ticks_ago(), Some(1));
    assert!(f.peer_health().is_empty());
}

/// The leader's Accepts of `slot` in `out`, by destination.
fn accepts_of(out: &Output, slot: Slot) -> Vec<(ReplicaId, Value)> {
    out.send
        .iter()
        .filter_map(|e| match &e.msg {
            Message::Accept(a) if a.slot == slot => Some((e.to, a.value.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_configuration_change_is_a_barrier_and_the_leader_runs_phase_one_again_among_the_new_members() {
    let mut r = leader();
    // Not before a quorum of the new members has reported being caught up.
    r.propose_config(vec![ReplicaId(1), ReplicaId(2), ReplicaId(4)])
        .unwrap();
    assert!(accepts_of(&drain_persisted(&mut r), Slot(0)).is_empty());
    r = leader();
    heartbeat_replies(&mut r, &[2]);
    let m = r
        .propose_config(vec![ReplicaId(1), ReplicaId(2), ReplicaId(4)])
        .unwrap();
    assert_eq!(m, membership(1, &[1, 2, 4]));
    r.on_client(cmd(5, 1, b"after"));
    assert_eq!(
        r.propose_config(vec![ReplicaId(1)]),
        Err(ProposeError::Busy),
        "one change at a time"
    );
    let out = drain_persisted(&mut r);
    // The change goes to the old members and to the joining one (whose
    // vote does not count yet), and nothing follows it.
    let to: Vec<_> = accepts_of(&out, Slot(0))
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(to, vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)]);
    assert!(
        accepts_of(&out, Slot(1)).is_empty(),
        "proposed past an unchosen change"
    );
    assert_eq!(r.queued_commands(), 1);
    let b = r.leader_ballot().unwrap();
    r.on_message(env(
        2,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(1),
        },
    ));
    // Chosen: the new configuration governs slot 1 on.
    assert_eq!(
        r.membership(),
        (1, &[ReplicaId(1), ReplicaId(2), ReplicaId(4)][..])
    );
    assert_eq!(r.role(), RoleKind::Candidate);
    assert_eq!(r.counters().get(Counter::ElectionsAfterConfigChange), 1);
    let out = drain(&mut r);
    // The queued command was never proposed: its client retries.
    assert!(matches!(
        out.replies[0].result,
        Err(ProposeError::NotLeader { .. })
    ));
    let mut prepares: Vec<_> = sent(&out, "prepare").iter().map(|e| e.to).collect();
    prepares.sort();
    assert_eq!(prepares, vec![ReplicaId(2), ReplicaId(4)]);
    // Old and new members (the leaving and the joining one among them)
    // hear that the change is chosen.
    let mut told: Vec<_> = sent(&out, "commit").iter().map(|e| e.to).collect();
    told.sort();
    assert_eq!(told, vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)]);
    // Votes now count in the new configuration: 4's promise wins phase 1.
    let Message::Prepare(p) = &sent(&out, "prepare")[0].msg else {
        unreachable!()
    };
    let (nb, from) = (p.ballot, p.from);
    assert_eq!(from, Slot(1));
    drain_persisted(&mut r);
    r.on_message(env(
        3,
        1,
        Promise {
            ballot: nb,
            entries: vec![],
            commit: Slot(1),
            more: None,
        },
    ));
    assert_eq!(
        r.counters().get(Counter::IgnoreNotMember),
        1,
        "3 left the configuration"
    );
    r.on_message(env(
        4,
        1,
        Promise {
            ballot: nb,
            entries: vec![],
            commit: Slot(0),
            more: None,
        },
    ));
    drain_persisted(&mut r);
    assert!(r.is_leader());
    // Its status reports the members in force, not the bootstrap ones.
    let health: Vec<u32> = r.peer_health().iter().map(|h| h.id.0).collect();
    assert_eq!(health, vec![2, 4]);
    assert_eq!(
        r.config().members,
        vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]
    );
    // The removed member is released only once a quorum of the new
    // configuration has committed past the change: until then heartbeats
    // go to the members alone.
    let heartbeats_to = |r: &mut Replica| {
        let mut to = Vec::new();
        for _ in 0..2 {
            r.on_tick();
            to.extend(sent(&drain(r), "heartbeat").iter().map(|e| e.to.0));
        }
        to.sort();
        to.dedup();
        to
    };
    assert_eq!(heartbeats_to(&mut r), vec![2, 4]);
    heartbeat_replies(&mut r, &[4]);
    assert_eq!(heartbeats_to(&mut r), vec![2, 3, 4]);
}

/// Leader 1 of {1, 2, 3} has the change to {2, 3, 4} chosen in slot 0
/// (3 accepted it): it departs. Returns it and its ballot.
fn leader_removed_by_change() -> (Replica, Ballot) {
    let mut r = leader();
    heartbeat_replies(&mut r, &[2, 3]);
    r.propose_config(vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)])
        .unwrap();
    drain_persisted(&mut r);
    let b = r.leader_ballot().unwrap();
    r.on_message(env(
        3,
        1,
        Accepted {
            ballot: b,
            first: Slot(0),
            end: Slot(1),
        },
    ));
    (r, b)
}

#[test]
fn a_leader_the_change_removes_tells_everyone_and_departs_until_released() {
    let (mut r, _) = leader_removed_by_change();
    assert!(r.is_departing() && !r.is_retired());
    assert!(!r.is_leader());
    let out = drain(&mut r);
    let mut told: Vec<_> = sent(&out, "commit").iter().map(|e| e.to).collect();
    told.sort();
    assert_eq!(told, vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)]);
    // Departing, it never campaigns...
    for _ in 0..100 {
        r.on_tick();
        assert!(sent(&drain(&mut r), "prepare").is_empty());
    }
    // ... but still promises: a member of the old configuration that
    // missed the news may need its vote to choose the change again.
    r.on_message(env(
        2,
        1,
        Prepare {
            ballot: ballot(7, 2),
            from: Slot(0),
        },
    ));
    let out = drain_persisted(&mut r);
    let promise = sent(&out, "promise");
    assert_eq!(promise.len(), 1);
    let Message::Promise(p) = &promise[0].msg else {
        unreachable!()
    };
    assert!(
        matches!(p.entries.first(), Some(e) if e.slot == Slot(0) && matches!(e.value, Value::Config(_))),
        "{p:?}"
    );
    // A Commit, or a heartbeat below the change, does not release it.
    let nb = ballot(8, 2);
    r.on_message(env(
        2,
        1,
        Commit {
            ballot: nb,
            commit: Slot(1),
        },
    ));
    r.on_message(env(
        2,
        1,
        Heartbeat {
            ballot: nb,
            commit: Slot(0),
        },
    ));
    assert!(r.is_departing());
    // A heartbeat at or beyond the change does: it retires.
    r.on_message(env(
        2,
        1,
        Heartbeat {
            ballot: nb,
            commit: Slot(1),
        },
    ));
    assert!(r.is_retired() && !r.is_departing());
    assert_eq!(r.counters().get(Counter::Retired), 1);
    drain(&mut r);
    for _ in 0..10 {
        r.on_tick();
    }
    assert!(drain(&mut r).is_empty());
    assert!(r.counters().get(Counter::IgnoreStopped) >= 10);
}

/// Issue 21 (leaderless seeds 2111, 9142, 9767, 15851, 16036): the leader
/// a change removes hands over to members that may lack the change. While
/// departing it still serves catch-up in its ballot; with no leader heard
/// it asks the new members to release it; released at a commit point it
/// has not reached, it retires on reaching it, and a heartbeat below a
/// higher ballot it promised releases it too.
#[test]
fn a_departing_former_leader_serves_catch_up_asks_for_release_and_retires_once_caught_up() {
    let (mut r, b) = leader_removed_by_change();
    assert!(r.is_departing());
    drain(&mut r);
    // New member 4 lacks the change and asks its former leader.
    r.on_message(env(
        4,
        1,
        CatchupRequest {
            ballot: b,
            from: Slot(0),
            to: Slot(1),
        },
    ));
    let out = drain(&mut r);
    let served = accepts_of(&out, Slot(0));
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, ReplicaId(4));
    assert!(matches!(served[0].1, Value::Config(_)));
    assert_eq!(r.counters().get(Counter::CatchupServedAfterLeading), 1);
    // A request in another ballot is not ours to serve.
    r.on_message(env(
        4,
        1,
        CatchupRequest {
            ballot: ballot(9, 4),
            from: Slot(0),
            to: Slot(1),
        },
    ));
    assert!(sent(&drain(&mut r), "accept").is_empty());
    // No leader heard for an election timeout: it asks 2, 3 and 4.
    for _ in 0..20 {
        r.on_tick();
    }
    let mut asked: Vec<_> = sent(&drain(&mut r), "heartbeat_reply")
        .iter()
        .map(|e| e.to)
        .collect();
    asked.sort();
    asked.dedup();
    assert_eq!(asked, vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)]);
    assert!(r.counters().get(Counter::ReleasesAsked) >= 1);
    // Released by leader 2 at commit 3, two slots ahead: not yet.
    let nb = ballot(8, 2);
    r.on_message(env(
        2,
        1,
        Heartbeat {
            ballot: nb,
            commit: Slot(3),
        },
    ));
    assert!(r.is_departing() && !r.is_retired());
    drain_persisted(&mut r);
    for slot in 1..3 {
        let accept = Accept {
            ballot: nb,
            slot: Slot(slot),
            value: batch("x"),
            commit: Slot(3),
        };
        r.on_message(env(2, 1, accept));
        assert_eq!(r.is_retired(), slot == 2, "slot {slot}");
    }
    // A departing replica that promised a higher ballot than the leader
    // releasing it cannot learn from it: the heartbeat releases it.
    let mut d = replica(3, 3);
    let change = Value::Config(Box::new(membership(1, &[1, 2, 4])));
    d.on_message(env(
        1,
        3,
        Accept {
            ballot: ballot(1, 1),
            slot: Slot(0),
            value: change,
            commit: Slot(1),
        },
    ));
    for _ in 0..20 {
        d.on_tick();
    }
    d.on_message(env(
        2,
        3,
        Prepare {
            ballot: ballot(9, 2),
            from: Slot(1),
        },
    ));
    drain_persisted(&mut d);
    assert!(d.is_departing());
    assert_eq!(d.promised(), ballot(9, 2));
    // Behind that leader: a change on the way may add it back, so it
    // refuses (the leader re-elects above its promise to teach it)...
    d.on_message(env(
        1,
        3,
        Heartbeat {
            ballot: ballot(5, 1),
            commit: Slot(40),
        },
    ));
    assert!(!d.is_retired());
    assert_eq!(sent(&drain(&mut d), "nack").len(), 1);
    // ... caught up with it, the heartbeat releases it.
    d.on_message(env(
        1,
        3,
        Heartbeat {
            ballot: ballot(5, 1),
            commit: Slot(1),
        },
    ));
    assert!(d.is_retired());
}

/// Issue 21, finding 3: a member removed by an earlier change stays on
/// the leader's list to release across later changes, and a removed
/// replica the leader never knew of (it joined or led after the change)
/// is released once it asks.
#[test]
fn removed_members_stay_to_be_released_across_changes_and_can_ask() {
    let mut r = leader();
    heartbeat_replies(&mut r, &[2, 3]);
    // A replica this configuration never listed asks to be released.
    r.on_message(env(
        9,
        1,
        HeartbeatReply {
            ballot: ballot(4, 9),
            commit: Slot(0),
        },
    ));
    assert_eq!(r.counters().get(Counter::ReleasesNoted), 1);
    // Change {1,2,3} -> {1,2,4} (3 removed), then {1,2,4} -> {1,2,5}.
    for (members, epoch) in [(vec![1, 2, 4], 1u64), (vec![1, 2, 5], 2)] {
        let ids: Vec<_> = members.iter().copied().map(ReplicaId).collect();
        let joiner = *members.last().unwrap();
        r.propose_config(ids).unwrap();
        heartbeat_replies(&mut r, &[2]);
        let reply = HeartbeatReply {
            ballot: r.leader_ballot().unwrap(),
            commit: r.commit(),
        };
        r.on_message(env(joiner, 1, reply));
        drain_persisted(&mut r);
        let b = r.leader_ballot().unwrap();
        let slot = r.commit();
        r.on_message(env(
            2,
            1,
            Accepted {
                ballot: b,
                first: slot,
                end: slot.next(),
            },
        ));
        assert_eq!(r.membership().0, epoch);
        // Phase 1 again among the new members.
        assert_eq!(r.role(), RoleKind::Candidate);
        let out = drain_persisted(&mut r);
        let Message::Prepare(p) = &sent(&out, "prepare")[0].msg else {
            unreachable!()
        };
        let nb = p.ballot;
        for id in [2, joiner] {
            r.on_message(env(
                id,
                1,
                Promise {
                    ballot: nb,
                    entries: vec![],
                    commit: r.commit(),
                    more: None,
                },
            ));
        }
        drain_persisted(&mut r);
        assert!(r.is_leader());
    }
    // Established in {1,2,5}: the heartbeat goes to 3 (removed two changes
    // ago), 4 (removed by the last one) and 9 (asked).
    heartbeat_replies(&mut r, &[2, 5]);
    let mut to = Vec::new();
    for _ in 0..2 {
        r.on_tick();
        to.extend(sent(&drain(&mut r), "heartbeat").iter().map(|e| e.to));
    }
    for id in [3, 4, 9] {
        assert!(to.contains(&ReplicaId(id)), "no release for {id}: {to:?}");
    }
    // 3 promised a higher ballot and refuses: the leader steps down so
    // that the next one, above it, can teach and release it.
    let b = r.leader_ballot().unwrap();
    let nack = Nack {
        ballot: b,
        reason: NackReason::Superseded,
        promised: ballot(99, 2),
        commit: Slot(0),
    };
    r.on_message(env(3, 1, nack));
    assert!(!r.is_leader());
    assert_eq!(r.counters().get(Counter::StepDownsForRelease), 1);
}

/// A follower whose catch-up request (or its answer) was lost asks again
/// after a retransmission timeout, without a new message from the leader.
#[test]
fn an_unanswered_catch_up_request_is_sent_again_on_a_timer() {
    let mut r = replica(3, 3);
    let b = ballot(1, 1);
    r.on_message(env(
        1,
        3,
        Commit {
            ballot: b,
            commit: Slot(5),
        },
    ));
    assert_eq!(sent(&drain(&mut r), "catchup_request").len(), 1);
    let mut again = 0;
    for _ in 0..3 {
        r.on_tick();
        again += sent(&drain(&mut r), "catchup_request").len();
    }
    assert_eq!(again, 1);
    assert_eq!(r.counters().get(Counter::CatchupRetransmits), 1);
}

#[test]
fn phase_one_recovers_up_to_the_first_configuration_change_and_no_further() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r);
    let b = c_ballot(&mut r);
    // Slot 1 holds a change to {1, 2, 4}; slot 2 a value accepted in the new
    // configuration, which only its members can report on.
    let entries = vec![
        PromiseEntry {
            slot: Slot(0),
            ballot: ballot(1, 2),
            value: batch("a"),
        },
        PromiseEntry {
            slot: Slot(1),
            ballot: ballot(1, 2),
            value: Value::Config(Box::new(membership(1, &[1, 2, 4]))),
        },
        PromiseEntry {
            slot: Slot(2),
            ballot: ballot(1, 2),
            value: batch("c"),
        },
    ];
    r.on_message(env(
        2,
        1,
        Promise {
            ballot: b,
            entries,
            commit: Slot(0),
            more: None,
        },
    ));
    let out = drain_persisted(&mut r);
    assert!(r.is_leader());
    assert_eq!(r.recovery_end(), Some(Slot(2)));
    assert_eq!(accepts_of(&out, Slot(0)).len(), 2);
    assert!(matches!(accepts_of(&out, Slot(1))[0].1, Value::Config(_)));
    assert!(
        accepts_of(&out, Slot(2)).is_empty(),
        "recovered past the change"
    );
    // A client command waits behind the unchosen change.
    r.on_client(cmd(5, 1, b"x"));
    let out = drain_persisted(&mut r);
    assert!(out.send.iter().all(|e| e.msg.kind() != "accept"));
    assert_eq!(r.queued_commands(), 1);
    assert_eq!(
        r.propose_config(vec![ReplicaId(1)]),
        Err(ProposeError::Busy),
        "a recovered change is still under way"
    );
}

#[test]
fn a_joiner_stands_for_no_election_until_its_log_shows_it_a_member() {
    let mut c = config(4, 3);
    c.members = vec![ReplicaId(2), ReplicaId(3), ReplicaId(4)];
    c.join = true;
    let mut r = Replica::new(c).unwrap();
    assert!(!r.membership_known());
    for _ in 0..100 {
        r.on_tick();
    }
    assert!(sent(&drain(&mut r), "prepare").is_empty());
    assert!(r.counters().get(Counter::ElectionsSkippedNotMember) > 0);
    // Leader 1 of the old configuration {1, 2, 3} decided the change in
    // slot 0; the joiner learns it by catch-up and follows.
    let b = ballot(1, 1);
    let change = Value::Config(Box::new(membership(1, &[2, 3, 4])));
    r.on_message(env(
        1,
        4,
        Accept {
            ballot: b,
            slot: Slot(0),
            value: change,
            commit: Slot(0),
        },
    ));
    r.on_message(env(
        1,
        4,
        Commit {
            ballot: b,
            commit: Slot(1),
        },
    ));
    assert!(r.membership_known());
    assert_eq!(
        r.membership(),
        (1, &[ReplicaId(2), ReplicaId(3), ReplicaId(4)][..])
    );
    assert!(!r.is_retired());
    drain_persisted(&mut r);
    tick_until_candidate(&mut r);
    let mut to: Vec<_> = sent(&drain(&mut r), "prepare")
        .iter()
        .map(|e| e.to)
        .collect();
    to.sort();
    assert_eq!(to, vec![ReplicaId(2), ReplicaId(3)]);
}

/// A replica removed at epoch 2 and added back (join_epoch 3) with its old
/// disk restarts from a checkpoint of epoch 1, which still lists it: it
/// must not stand for election in that stale configuration (found by the
/// simulator with checkpoints on: such a replica led epoch 1 again, then
/// replayed its own removal while leading).
#[test]
fn a_replica_added_back_with_its_old_disk_does_not_campaign_in_its_old_configuration() {
    let mut c = config(3, 3);
    c.join = true;
    c.join_epoch = 3;
    let state = DurableState {
        membership: Some(membership(1, &[1, 2, 3])),
        ..DurableState::default()
    };
    let mut r = Replica::recover(c, state).unwrap();
    assert!(r.membership_known());
    assert_eq!(r.membership().0, 1);
    for _ in 0..100 {
        r.on_tick();
    }
    assert!(sent(&drain(&mut r), "prepare").is_empty());
    assert_eq!(r.role(), RoleKind::Follower);
    assert!(r.counters().get(Counter::ElectionsSkippedNotMember) > 0);
}

/// Chosen configuration changes `changes` in slots 0, 1, ... as a
/// leader of ballot `b` serves them by catch-up, then its heartbeat.
fn learn_changes(r: &mut Replica, from: u32, b: Ballot, changes: &[Membership]) {
    let to = r.id().0;
    let end = Slot(changes.len() as u64);
    for (i, m) in changes.iter().enumerate() {
        let accept = Accept {
            ballot: b,
            slot: Slot(i as u64),
            value: Value::Config(Box::new(m.clone())),
            commit: end,
        };
        r.on_message(env(from, to, accept));
    }
    r.on_message(env(
        from,
        to,
        Heartbeat {
            ballot: b,
            commit: end,
        },
    ));
    drain_persisted(r);
}

/// Issue 21, walk step BCD -> CDE: joiner 5, started as README says
/// (`join = true`, no `join_epoch`), catches up through the change
/// ABC -> BCD (epoch 1, which does not list it) before the change that
/// adds it. A leader's heartbeat past that change must not retire it:
/// the configuration that adds it is the first one listing it.
#[test]
fn a_joiner_catching_up_through_changes_that_do_not_list_it_neither_departs_nor_retires() {
    let mut c = config(5, 3);
    c.members = vec![ReplicaId(3), ReplicaId(4), ReplicaId(5)];
    c.join = true;
    let mut r = Replica::new(c).unwrap();
    let b = ballot(2, 2);
    learn_changes(&mut r, 2, b, &[membership(1, &[2, 3, 4])]);
    assert_eq!(r.commit(), Slot(1));
    assert_eq!(r.membership().0, 1);
    assert!(!r.is_departing(), "a joiner departs on history");
    assert!(!r.is_retired(), "a joiner retired on history");
    // Then the change that adds it: a member, free to stand.
    let mut r2 = {
        let mut c = config(5, 3);
        c.members = vec![ReplicaId(3), ReplicaId(4), ReplicaId(5)];
        c.join = true;
        Replica::new(c).unwrap()
    };
    learn_changes(
        &mut r2,
        2,
        b,
        &[membership(1, &[2, 3, 4]), membership(2, &[3, 4, 5])],
    );
    assert_eq!(r2.membership().0, 2);
    assert!(!r2.is_retired() && !r2.is_departing());
    // A removal chosen after it first heard from a leader is its own: it
    // departs, and a heartbeat past the change releases it.
    let remove = Accept {
        ballot: b,
        slot: Slot(2),
        value: Value::Config(Box::new(membership(3, &[3, 4, 6]))),
        commit: Slot(3),
    };
    r2.on_message(env(2, 5, remove));
    assert!(r2.is_departing(), "a joined replica ignored its removal");
    r2.on_message(env(
        2,
        5,
        Heartbeat {
            ballot: b,
            commit: Slot(3),
        },
    ));
    assert!(r2.is_retired());
    // Before that removal, a member: free to stand.
    let mut r3 = {
        let mut c = config(5, 3);
        c.members = vec![ReplicaId(3), ReplicaId(4), ReplicaId(5)];
        c.join = true;
        Replica::new(c).unwrap()
    };
    learn_changes(
        &mut r3,
        2,
        b,
        &[membership(1, &[2, 3, 4]), membership(2, &[3, 4, 5])],
    );
    tick_until_candidate(&mut r3);
    assert_eq!(r3.role(), RoleKind::Candidate);
}

/// Issue 21, walk step ADE -> ABE: replica 4, added long ago and
/// restarted with `join = true` still in its file, leads before it hears
/// any other leader; the removal it then learns is its own, not history.
#[test]
fn a_joined_replica_restarted_with_join_that_stands_departs_on_a_later_removal() {
    let mut c = config(5, 3);
    c.members = vec![ReplicaId(3), ReplicaId(4), ReplicaId(5)];
    c.join = true;
    let state = DurableState {
        promised: ballot(1, 3),
        entries: vec![EntryWrite {
            slot: Slot(0),
            ballot: ballot(1, 3),
            value: Value::Config(Box::new(membership(1, &[3, 4, 5]))),
        }],
        commit: Slot(1),
        ..DurableState::default()
    };
    let mut r = Replica::recover(c, state).unwrap();
    tick_until_candidate(&mut r);
    drain_persisted(&mut r);
    let b = ballot(9, 3);
    let remove = Accept {
        ballot: b,
        slot: Slot(1),
        value: Value::Config(Box::new(membership(2, &[3, 4, 6]))),
        commit: Slot(2),
    };
    r.on_message(env(3, 5, remove));
    assert!(r.is_departing(), "took its own removal for history");
}

/// Issue 21, walk step CDE -> ADE: replica 1, removed by ABC -> BCD and
/// restarted with `join = true` on its old disk as README says, is not
/// departing before any change is asked and survives the leader's
/// heartbeats; the change adding it back makes it a member. The same for
/// a replica added back a second time: its disk shows it added back
/// once and removed again.
#[test]
fn a_removed_replica_restarted_with_join_on_its_old_disk_waits_to_be_added_back() {
    let entries = |changes: &[Membership]| -> Vec<EntryWrite> {
        changes
            .iter()
            .enumerate()
            .map(|(i, m)| EntryWrite {
                slot: Slot(i as u64),
                ballot: ballot(1, 2),
                value: Value::Config(Box::new(m.clone())),
            })
            .collect()
    };
    let histories = [
        vec![membership(1, &[2, 3, 4])],
        vec![
            membership(1, &[2, 3, 4]),
            membership(2, &[1, 3, 4]),
            membership(3, &[2, 3, 4]),
        ],
    ];
    for history in histories {
        let n = history.len() as u64;
        let mut c = config(1, 3);
        c.members = vec![ReplicaId(1), ReplicaId(3), ReplicaId(4)];
        c.join = true;
        let state = DurableState {
            promised: ballot(1, 2),
            entries: entries(&history),
            commit: Slot(n),
            ..DurableState::default()
        };
        let mut r = Replica::recover(c, state).unwrap();
        assert_eq!(r.membership().0, n);
        assert!(!r.is_departing(), "departing before any change ({n})");
        let b = ballot(3, 3);
        r.on_message(env(
            3,
            1,
            Heartbeat {
                ballot: b,
                commit: Slot(n),
            },
        ));
        assert!(!r.is_retired(), "retired by a heartbeat ({n})");
        drain_persisted(&mut r);
        // The change that adds it back, chosen in slot n.
        let add = Accept {
            ballot: b,
            slot: Slot(n),
            value: Value::Config(Box::new(membership(n + 1, &[1, 3, 4]))),
            commit: Slot(n),
        };
        r.on_message(env(3, 1, add));
        r.on_message(env(
            3,
            1,
            Commit {
                ballot: b,
                commit: Slot(n + 1),
            },
        ));
        drain_persisted(&mut r);
        assert_eq!(r.membership().0, n + 1);
        assert!(!r.is_retired() && !r.is_departing());
        tick_until_candidate(&mut r);
        assert_eq!(r.role(), RoleKind::Candidate, "({n})");
    }
}

#[test]
fn a_follower_the_change_removes_retires_when_released_and_a_checkpoint_carries_the_configuration()
{
    let mut r = replica(3, 3);
    let b = ballot(1, 1);
    let change = Value::Config(Box::new(membership(1, &[1, 2, 4])));
    r.on_message(env(
        1,
        3,
        Accept {
            ballot: b,
            slot: Slot(0),
            value: change,
            commit: Slot(1),
        },
    ));
    assert!(r.is_departing());
    assert_eq!(r.counters().get(Counter::MembershipChanges), 1);
    r.on_message(env(
        2,
        3,
        Heartbeat {
            ballot: ballot(2, 2),
            commit: Slot(1),
        },
    ));
    assert!(r.is_retired());
    // A joiner that installs a checkpoint learns its configuration from it.
    let mut c = config(5, 3);
    c.members = vec![ReplicaId(1), ReplicaId(2), ReplicaId(5)];
    c.join = true;
    let mut j = Replica::new(c).unwrap();
    j.on_message(env(
        1,
        5,
        Heartbeat {
            ballot: b,
            commit: Slot(40),
        },
    ));
    drain(&mut j);
    assert!(j.install_checkpoint(Slot(30), Some(&membership(3, &[1, 2, 5]))));
    assert!(j.membership_known());
    assert_eq!(j.membership().0, 3);
}

#[test]
fn a_change_waits_for_its_joiners_to_catch_up_and_is_given_up_if_they_never_do() {
    let mut c = config(1, 3);
    c.config_wait_ticks_max = 30;
    let mut r = Replica::new(c).unwrap();
    elect(&mut r);
    r.propose_config(vec![ReplicaId(1), ReplicaId(4), ReplicaId(5)])
        .unwrap();
    // Neither joiner has reported: only the leader of {1, 4, 5} is caught up.
    for _ in 0..30 {
        r.on_tick();
        heartbeat_replies(&mut r, &[2]);
        let out = drain_persisted(&mut r);
        assert!(
            accepts_of(&out, Slot(0)).is_empty(),
            "proposed before a quorum caught up"
        );
    }
    r.on_tick();
    assert_eq!(r.counters().get(Counter::ConfigChangesAbandoned), 1);
    assert!(r.is_leader());
    // Asked again, joiner 4 reports caught up: with the leader, a quorum
    // of {1, 4, 5}; the change goes out (to 4 and 5 as well).
    r.propose_config(vec![ReplicaId(1), ReplicaId(4), ReplicaId(5)])
        .unwrap();
    assert!(accepts_of(&drain_persisted(&mut r), Slot(0)).is_empty());
    heartbeat_replies(&mut r, &[4]);
    let out = drain_persisted(&mut r);
    let mut to: Vec<_> = accepts_of(&out, Slot(0))
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    to.sort();
    assert_eq!(
        to,
        vec![ReplicaId(2), ReplicaId(3), ReplicaId(4), ReplicaId(5)]
    );
}
