//! Connections: the handshake, inbound peer and client connections, and
//! outbound peer senders with reconnect and backoff.
//!
//! Bad input (garbage, a truncated or oversized frame, a bad checksum, the
//! wrong cluster or version, an unknown role) is logged and closes that
//! connection; the replica keeps serving everyone else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use super::Event;
use crate::core::{ClusterId, Envelope, ReplicaId};
use crate::instrumentation::{LabRef, now_ns};
use crate::transport::net::{
    BoxStream, ConnError, FrameStream, Network, write_frames, writer_task,
};
use crate::transport::wire::{
    self, Frame, FrameReader, HEADER_BYTES, Hello, HelloAck, PROTOCOL_VERSION, Role, WireError,
    kind,
};

/// How long a new connection may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Peer reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves inbound connections.
#[derive(Clone)]
pub(crate) struct Acceptor {
    pub cluster: ClusterId,
    pub id: ReplicaId,
    pub members: Vec<(ReplicaId, String)>,
    pub frame_bytes_max: usize,
    pub client_outstanding_max: usize,
    pub connections: Arc<Semaphore>,
    pub events: mpsc::Sender<Event>,
    pub tasks: Arc<Mutex<Vec<AbortHandle>>>,
    pub lab: Option<LabRef>,
}

impl Acceptor {
    pub fn serve(&self, stream: BoxStream, origin: String, conn: u64) {
        let me = self.clone();
        let h = tokio::spawn(async move {
            if let Err(e) = me.serve_conn(stream, conn).await {
                match e {
                    ConnError::Closed => tracing::debug!(%origin, "connection closed"),
                    e => tracing::warn!(%origin, error = %e, "connection dropped"),
                }
            }
        });
        let mut tasks = self.tasks.lock().expect("task list");
        tasks.retain(|t| !t.is_finished());
        tasks.push(h.abort_handle());
    }

    async fn serve_conn(&self, stream: BoxStream, conn: u64) -> Result<(), ConnError> {
        let (mut r, mut w) = tokio::io::split(stream);
        // The first frame may come from another cluster or version: read its
        // header ourselves so the refusal can be sent in terms it decodes.
        let mut buf = BytesMut::with_capacity(4096);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            while buf.len() < HEADER_BYTES {
                if r.read_buf(&mut buf).await? == 0 {
                    return Err(ConnError::Closed);
                }
            }
            let h = wire::parse_header(&buf, self.frame_bytes_max)?;
            let refusal = if h.cluster != self.cluster {
                Some(format!(
                    "this is cluster {}, not cluster {}",
                    self.cluster.0, h.cluster.0
                ))
            } else if h.version != PROTOCOL_VERSION {
                Some(format!(
                    "this replica speaks protocol version {PROTOCOL_VERSION}, not {}",
                    h.version
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                let f = wire::encode_refused(h.cluster, &reason);
                let _ = w.write_all(&f.to_bytes()).await;
                return Err(ConnError::Wire(if h.cluster != self.cluster {
                    WireError::WrongCluster {
                        got: h.cluster.0,
                        expected: self.cluster.0,
                    }
                } else {
                    WireError::WrongVersion {
                        got: h.version,
                        expected: PROTOCOL_VERSION,
                    }
                }));
            }
            let mut fs = FrameStream::with_buffer(
                r,
                FrameReader {
                    cluster: self.cluster,
                    frame_bytes_max: self.frame_bytes_max,
                },
                buf,
            );
            let (k, body) = fs.next().await?;
            if k != kind::HELLO {
                return Err(ConnError::Wire(WireError::Invalid(
                    "connection",
                    "did not start with hello",
                )));
            }
            Ok((wire::decode_hello(body)?, fs))
        })
        .await
        .map_err(|_| {
            ConnError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no hello in time",
            ))
        })?;
        let (hello, mut frames) = hello?;
        let ack = wire::encode_hello_ack(
            self.cluster,
            &HelloAck {
                replica: self.id,
                members: self.members.clone(),
            },
        );
        match hello.role {
            Role::Peer(from) => {
                let member = self.members.iter().any(|(id, _)| *id == from);
                if !member || from == self.id {
                    let f = wire::encode_refused(
                        self.cluster,
                        &format!("replica {from} is not a peer of replica {}", self.id),
                    );
                    let _ = w.write_all(&f.to_bytes()).await;
                    return Err(ConnError::Wire(WireError::Invalid("hello", "not a peer")));
                }
                w.write_all(&ack.to_bytes()).await?;
                loop {
                    let (k, body) = frames.next().await?;
                    let msg = wire::decode_message(k, body)?;
                    let at = self.stamp();
                    let env = Envelope {
                        cluster: self.cluster,
                        from,
                        to: self.id,
                        msg,
                    };
                    if self.events.send(Event::Peer { env, at }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Role::Client => {
                let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
                    let f = wire::encode_refused(self.cluster, "too many client connections");
                    let _ = w.write_all(&f.to_bytes()).await;
                    return Err(ConnError::Wire(WireError::Invalid(
                        "hello",
                        "connection limit",
                    )));
                };
                let (tx, rx) = mpsc::channel(self.client_outstanding_max + 64);
                tx.try_send(ack).expect("a fresh queue has room");
                let lab = self.lab.clone();
                let writer = tokio::spawn(async move {
                    let _ = writer_task(w, rx, lab).await;
                });
                self.tasks
                    .lock()
                    .expect("task list")
                    .push(writer.abort_handle());
                if self
                    .events
                    .send(Event::ConnOpen { conn, tx })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let result = self.client_loop(&mut frames, conn).await;
                let _ = self.events.send(Event::ConnClosed { conn }).await;
                result
            }
        }
    }

    /// The lab clock when a lab is on (the decode time of a frame).
    #[inline]
    fn stamp(&self) -> u64 {
        if self.lab.is_some() { now_ns() } else { 0 }
    }

    async fn client_loop(
        &self,
        frames: &mut FrameStream<tokio::io::ReadHalf<BoxStream>>,
        conn: u64,
    ) -> Result<(), ConnError> {
        loop {
            let (k, body) = frames.next().await?;
            let ev = match k {
                kind::CLIENT_REQUEST => Event::Client {
                    conn,
                    req: wire::decode_client_request(body)?,
                    at: self.stamp(),
                },
                kind::FAST_READ => Event::FastRead {
                    conn,
                    read: wire::decode_fast_read(body)?,
                },
                kind::STATUS_REQUEST => Event::Status { conn },
                other => return Err(ConnError::Wire(WireError::UnknownKind(other))),
            };
            if self.events.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Connects to a peer and introduces this replica; the peer's refusal
/// (wrong cluster, not a member) comes back as an error naming the reason.
async fn connect_peer(
    network: &Network,
    cluster: ClusterId,
    me: ReplicaId,
    peer: ReplicaId,
    addr: &str,
    frame_bytes_max: usize,
) -> Result<tokio::io::WriteHalf<BoxStream>, String> {
    let stream = tokio::time::timeout(Duration::from_secs(1), network.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (r, mut w) = tokio::io::split(stream);
    let hello = wire::encode_hello(
        cluster,
        &Hello {
            role: Role::Peer(me),
        },
    );
    w.write_all(&hello.to_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut frames = FrameStream::new(
        r,
        FrameReader {
            cluster,
            frame_bytes_max,
        },
    );
    let (k, body) = tokio::time::timeout(HELLO_TIMEOUT, frames.next())
        .await
        .map_err(|_| "no handshake answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    match k {
        kind::HELLO_ACK => {
            let ack = wire::decode_hello_ack(body).map_err(|e| e.to_string())?;
            if ack.replica != peer {
                return Err(format!(
                    "{addr} answers as replica {}, expected {peer}",
                    ack.replica
                ));
            }
            Ok(w)
        }
        kind::REFUSED => Err(format!(
            "refused: {}",
            wire::decode_refused(body).map_err(|e| e.to_string())?
        )),
        other => Err(format!("unexpected frame kind {other} in the handshake")),
    }
}

/// Frames the peer sender takes from its queue for one vectored write.
const PEER_WRITE_FRAMES_MAX: usize = 256;

/// Who a peer sender is and where it connects.
pub(crate) struct PeerLink {
    pub network: Network,
    pub cluster: ClusterId,
    pub me: ReplicaId,
    pub peer: ReplicaId,
    pub addr: String,
    pub frame_bytes_max: usize,
}

/// Keeps one connection to `peer` and writes whatever the core queues for
/// it; reconnects with exponential backoff. Frames queued while the peer
/// is unreachable wait in the bounded queue (the core drops, and the
/// protocol retransmits, when it is full).
pub(crate) async fn peer_sender(
    link: PeerLink,
    mut rx: mpsc::Receiver<Frame>,
    lab: Option<LabRef>,
) {
    let PeerLink {
        network,
        cluster,
        me,
        peer,
        addr,
        frame_bytes_max,
    } = link;
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        match connect_peer(&network, cluster, me, peer, &addr, frame_bytes_max).await {
            Ok(mut w) => {
                if failures > 0 {
                    tracing::info!(%peer, %addr, "connected to peer");
                }
                backoff = BACKOFF_MIN;
                failures = 0;
                let mut batch = VecDeque::new();
                let mut marks = Vec::new();
                loop {
                    let Some(f) = rx.recv().await else {
                        return;
                    };
                    batch.push_back(f);
                    while batch.len() < PEER_WRITE_FRAMES_MAX {
                        match rx.try_recv() {
                            Ok(f) => batch.push_back(f),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = write_frames(&mut w, &mut batch, &mut marks).await {
                        tracing::info!(%peer, %addr, error = %e, "lost the connection to a peer");
                        batch.clear();
                        marks.clear();
                        break;
                    }
                    if !marks.is_empty() {
                        if let Some(lab) = &lab {
                            lab.record_marks(&marks, now_ns());
                        }
                        marks.clear();
                    }
                }
            }
            Err(why) => {
                failures += 1;
                if why.starts_with("refused") {
                    tracing::error!(%peer, %addr, %why, "a peer refused this replica");
                } else if failures == 1 || failures.is_power_of_two() {
                    tracing::debug!(%peer, %addr, %why, failures, "cannot reach a peer");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
