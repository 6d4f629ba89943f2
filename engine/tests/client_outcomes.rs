//! What a failed call tells its caller: against a scripted fake replica
//! (the real handshake and frames, answers chosen by the test), a call
//! fails `Busy` or `NotLeader` only when no attempt can have executed,
//! `Timeout` when one went unanswered, `Unreachable` (naming every
//! address) when nothing was ever submitted; and `close` ends the session
//! with one close command only when nothing is owed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use engine::client::{Client, ClientError, ClientOptions};
use engine::core::{ClusterId, ReplicaId, Slot};
use engine::kv::{KvOp, KvResult};
use engine::state_machine::SESSION_CLOSE_SEQ;
use engine::transport::net::Network;
use engine::transport::wire::{self, ClientReplyFrame, FrameReader, HelloAck, Status, kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: ClusterId = ClusterId(61);

/// What the fake answers a request with (`None`: nothing, ever).
type Script = Box<dyn FnMut(u64) -> Option<Status> + Send>;

/// Requests the fake received: `(seq, ack_below)`.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

/// A fake replica: answers the handshake as replica 1 (its only member),
/// then each request as `script` says; `refuse` answers the handshake
/// with a refusal instead.
async fn fake(script: Script, refuse: bool) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let script = Arc::new(Mutex::new(script));
    let (a, s) = (addr.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (addr, seen, script) = (a.clone(), s.clone(), script.clone());
            tokio::spawn(async move {
                let reader = FrameReader {
                    cluster: CLUSTER,
                    frame_bytes_max: 1 << 20,
                };
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some((k, body))) = reader.next(&mut buf) {
                        let answer = match k {
                            kind::HELLO if refuse => {
                                wire::encode_refused(CLUSTER, "not this cluster (test)")
                            }
                            kind::HELLO => wire::encode_hello_ack(
                                CLUSTER,
                                &HelloAck {
                                    replica: ReplicaId(1),
                                    members: vec![(ReplicaId(1), addr.clone())],
                                },
                            ),
                            kind::CLIENT_REQUEST => {
                                let req = wire::decode_client_request(body).unwrap();
                                seen.lock().unwrap().push((req.seq, req.ack_below));
                                let status = (script.lock().unwrap())(req.seq);
                                let Some(status) = status else { continue };
                                let mut payload = BytesMut::new();
                                if status == Status::Ok {
                                    KvResult::Done.encode_into(&mut payload);
                                }
                                let payload = payload.freeze();
                                wire::encode_client_reply(
                                    CLUSTER,
                                    &ClientReplyFrame {
                                        client: req.client,
                                        seq: req.seq,
                                        status,
                                        slot: Slot(7),
                                        hint: None,
                                        payload,
                                    },
                                )
                            }
                            _ => continue,
                        };
                        if sock.write_all(&answer.to_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match sock.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Backoffs long against the fake's answers (well under a millisecond) and
/// ending on the deadline: no attempt is in flight when it passes, so the
/// outcome does not depend on timing.
fn options(deadline_ms: u64) -> ClientOptions {
    ClientOptions {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_millis(deadline_ms),
        busy_backoff: Duration::from_millis(150),
        ..ClientOptions::default()
    }
}

fn put() -> Bytes {
    KvOp::Put {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
    }
    .encode()
}

async fn client(addr: &str, deadline_ms: u64) -> Client {
    Client::connect(
        Network::Tcp,
        CLUSTER,
        vec![addr.to_string()],
        options(deadline_ms),
    )
    .await
    .expect("the fake answers the handshake")
}

#[tokio::test]
async fn busy_on_every_attempt_fails_busy_not_executed() {
    let (addr, seen) = fake(Box::new(|_| Some(Status::Busy)), false).await;
    let c = client(&addr, 300).await;
    assert_eq!(c.call(put()).await, Err(ClientError::Busy));
    assert!(
        seen.lock().unwrap().len() > 1,
        "the client resent after Busy"
    );
}

#[tokio::test]
async fn a_client_whose_every_call_was_refused_has_no_session_to_close() {
    let (addr, seen) = fake(Box::new(|_| Some(Status::Busy)), false).await;
    let c = client(&addr, 200).await;
    assert_eq!(c.call(put()).await, Err(ClientError::Busy));
    c.close().await;
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|(seq, _)| *seq != SESSION_CLOSE_SEQ)
    );
}

#[tokio::test]
async fn busy_then_an_unanswered_retry_is_a_timeout_of_unknown_outcome() {
    let mut first = true;
    let script = move |_| std::mem::take(&mut first).then_some(Status::Busy);
    let (addr, seen) = fake(Box::new(script), false).await;
    let c = client(&addr, 500).await;
    assert_eq!(c.call(put()).await, Err(ClientError::Timeout));
    assert!(seen.lock().unwrap().len() >= 2, "the retry was sent");
}

#[tokio::test]
async fn no_leader_anywhere_fails_not_leader_not_executed() {
    let (addr, _) = fake(Box::new(|_| Some(Status::NotLeader)), false).await;
    let c = client(&addr, 400).await;
    assert_eq!(
        c.call(put()).await,
        Err(ClientError::NotLeader { hint: None })
    );
}

#[tokio::test]
async fn silence_is_a_timeout() {
    let (addr, _) = fake(Box::new(|_| None), false).await;
    let c = client(&addr, 300).await;
    assert_eq!(c.call(put()).await, Err(ClientError::Timeout));
}

#[tokio::test]
async fn nobody_listening_is_unreachable_and_names_every_address() {
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let started = std::time::Instant::now();
    let e = Client::connect(Network::Tcp, CLUSTER, closed.clone(), options(300))
        .await
        .err()
        .expect("nobody listens");
    let ClientError::Unreachable(why) = e else {
        panic!("{e:?}")
    };
    for a in &closed {
        assert!(why.contains(a.as_str()), "{a} not named: {why}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{why}");
}

#[tokio::test]
async fn refused_by_every_replica_is_unreachable_at_once() {
    let (a, _) = fake(Box::new(|_| None), true).await;
    let (b, _) = fake(Box::new(|_| None), true).await;
    let started = std::time::Instant::now();
    let e = Client::connect(
        Network::Tcp,
        CLUSTER,
        vec![a.clone(), b.clone()],
        options(5_000),
    )
    .await
    .err()
    .expect("refused");
    let ClientError::Unreachable(why) = e else {
        panic!("{e:?}")
    };
    assert!(why.starts_with("refused by every replica"), "{why}");
    assert!(
        why.contains(&a) && why.contains(&b) && why.contains("not this cluster"),
        "{why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "retried a refusal: {why}"
    );
}

#[tokio::test]
async fn close_ends_an_answered_session_with_one_close_command() {
    let (addr, seen) = fake(Box::new(|_| Some(Status::Ok)), false).await;
    let c = client(&addr, 1_000).await;
    c.call(put()).await.unwrap();
    c.call(put()).await.unwrap();
    c.close().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(1, 1), (2, 2), (SESSION_CLOSE_SEQ, 0)]);
}

#[tokio::test]
async fn close_after_an_unknown_outcome_leaves_the_session() {
    let mut n = 0;
    // The second command is never answered: its outcome is unknown.
    let script = move |_| {
        n += 1;
        (n == 1).then_some(Status::Ok)
    };
    let (addr, seen) = fake(Box::new(script), false).await;
    let c = client(&addr, 300).await;
    c.call(put()).await.unwrap();
    assert_eq!(c.call(put()).await, Err(ClientError::Timeout));
    c.close().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(seq, _)| *seq != SESSION_CLOSE_SEQ),
        "closed a session that may still owe an answer: {seen:?}"
    );
    // A client that sent nothing has no session to end.
    let (addr, seen) = fake(Box::new(|_| Some(Status::Ok)), false).await;
    client(&addr, 300).await.close().await;
    assert!(seen.lock().unwrap().is_empty());
}
