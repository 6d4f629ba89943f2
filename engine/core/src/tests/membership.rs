//! Configuration changes: barriers, departures, releases, joiners.

use super::*;

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
