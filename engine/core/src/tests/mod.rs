//! Handler tests: feed one replica inputs, assert on the commands it emits.
//! Every ignore and retry counter is hit by at least one test here (the
//! counters are the coverage marks). This file holds the helpers; each
//! file beside it tests one part of the core: `acceptor.rs`,
//! `proposer.rs` (candidates and leaders), `dispatcher.rs` (routing,
//! storage failure, status views), `membership.rs` (configuration
//! changes).

mod acceptor;
mod dispatcher;
mod membership;
mod proposer;

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

fn c_ballot(c: &mut Replica) -> Ballot {
    let out = drain(c);
    match &sent(&out, "prepare")[0].msg {
        Message::Prepare(p) => p.ballot,
        _ => unreachable!(),
    }
}
