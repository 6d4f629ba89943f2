//! Acceptor handlers: prepares, accepts, recovery of durable state.

use super::*;

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
