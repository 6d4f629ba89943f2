//! The dispatcher: routing of inputs, storage failure, views.

use super::*;

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
