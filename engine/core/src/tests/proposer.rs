//! Proposer handlers: candidacies, leadership, batching and the window,
//! catch-up, checkpoints.

use super::*;

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
