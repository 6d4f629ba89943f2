//! `Task::send_due`: the requests of a pass in frames of up to
//! `REQUEST_FRAME_BYTES_MAX`, and nothing taken for sent when the writer
//! is gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::client::ClientOptions;
use crate::transport::net::FrameStream;
use crate::transport::wire::{FrameReader, decode_client_request, kind};

const C: ClusterId = ClusterId(7);

/// A task connected to nothing: its writer's queue is `rx`.
fn task_with_writer() -> (Task, mpsc::Receiver<Frame>, tokio::io::DuplexStream) {
    let (tx, rx) = mpsc::channel(4);
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (r, _w) = tokio::io::split(Box::new(ours) as BoxStream);
    let reader = FrameReader {
        cluster: C,
        frame_bytes_max: 1 << 20,
    };
    let task = Task {
        network: Network::inproc(),
        cluster: C,
        id: ClientId(11),
        options: ClientOptions::default(),
        routing: Routing::new(vec!["a".into()]),
        conn: Some(Conn {
            tx,
            out: BytesMut::new(),
            frames: FrameStream::new(r, reader),
            writer: tokio::spawn(async {}),
        }),
        session: Session {
            next_seq: 1,
            slot: Slot::ZERO,
            unknown_outcome: false,
            used: false,
        },
        commands: InFlight::default(),
        queue: SendQueue::default(),
        reads: Reads {
            by_id: HashMap::new(),
            next: 1,
        },
        lab: TaskLab { rec: None, now: 0 },
    };
    (task, rx, theirs)
}

/// Submits commands with these operations, seqs 1, 2, ...
fn submit(
    task: &mut Task,
    ops: &[Bytes],
) -> Vec<oneshot::Receiver<Result<crate::client::Response, ClientError>>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    ops.iter()
        .map(|op| {
            let (reply, rx) = oneshot::channel();
            let seq = task.session.next_seq;
            task.session.next_seq += 1;
            task.submit(seq, op.clone(), deadline, reply);
            rx
        })
        .collect()
}

/// The requests in a frame the writer got: (seq, op).
fn requests(f: &Frame) -> Vec<(u64, Bytes)> {
    let mut buf = BytesMut::from(&f.to_bytes()[..]);
    let reader = FrameReader {
        cluster: C,
        frame_bytes_max: 1 << 20,
    };
    let mut out = Vec::new();
    while let Some((k, body)) = reader.next(&mut buf).unwrap() {
        assert_eq!(k, kind::CLIENT_REQUEST);
        let r = decode_client_request(body).unwrap();
        assert_eq!(r.client, ClientId(11));
        out.push((r.seq, r.op));
    }
    assert!(buf.is_empty(), "a frame ends on a whole request");
    out
}

#[tokio::test]
async fn a_frame_of_requests_ends_at_the_first_request_past_the_bound() {
    let (mut task, mut rx, _peer) = task_with_writer();
    let big = Bytes::from(vec![3u8; 30 * 1024]);
    let small = Bytes::from_static(b"op");
    let _replies = submit(
        &mut task,
        &[
            small.clone(),
            big.clone(),
            big.clone(),
            big.clone(),
            big.clone(),
        ],
    );
    task.send_due(Instant::now());
    let first = requests(&rx.try_recv().expect("a first frame"));
    let second = requests(&rx.try_recv().expect("a second frame"));
    assert!(rx.try_recv().is_err(), "two frames");
    // The bound ends a frame at the first request past it: 2 bytes, 30
    // and 30 KiB, then the 30 KiB request that crosses 64 KiB; the rest
    // in the next frame.
    let seqs = |v: &[(u64, Bytes)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    assert_eq!(seqs(&second), [5]);
    assert_eq!(first[0].1, small);
    assert!(first[1..].iter().chain(&second).all(|r| r.1 == big));
    assert!(task.queue.unsent.is_empty());
    assert!(task.commands.values().all(|c| c.sent.is_some()));
    // Sent once: a second pass sends nothing.
    task.send_due(Instant::now());
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn with_the_writer_gone_nothing_is_taken_for_sent() {
    let (mut task, rx, _peer) = task_with_writer();
    drop(rx);
    // The queue still shows room, so the pass builds a frame and finds
    // the writer gone only when it hands the frame over.
    assert!(task.conn.as_ref().unwrap().tx.capacity() > 0);
    let ops: Vec<Bytes> = (0..3).map(|i| Bytes::from(vec![i; 8])).collect();
    let _replies = submit(&mut task, &ops);
    task.send_due(Instant::now());
    assert_eq!(task.queue.unsent, [1, 2, 3], "still waiting, in order");
    assert!(
        task.commands
            .values()
            .all(|c| c.sent.is_none() && !c.maybe_executed)
    );
}

#[tokio::test]
async fn answered_and_expired_commands_are_skipped() {
    let (mut task, mut rx, _peer) = task_with_writer();
    let ops: Vec<Bytes> = (0..3).map(|i| Bytes::from(vec![i; 8])).collect();
    let _replies = submit(&mut task, &ops);
    // Seq 1 answered meanwhile; seq 3 past its deadline.
    task.commands.remove(1);
    task.commands.get_mut(3).unwrap().deadline = Instant::now();
    task.send_due(Instant::now() + Duration::from_millis(1));
    let sent = requests(&rx.try_recv().expect("a frame"));
    assert_eq!(sent.iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
    assert!(task.queue.unsent.is_empty());
    assert!(task.commands.get_mut(3).unwrap().sent.is_none());
}
