//! Connections: the handshake, inbound peer and client connections, and
//! outbound peer senders with reconnect and backoff.
//!
//! Bad input (garbage, a truncated or oversized frame, a bad checksum, the
//! wrong cluster or version, an unknown role) is logged and closes that
//! connection; the replica keeps serving everyone else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use super::Event;
use crate::checkpoint::CheckpointStore;
use crate::core::{ClusterId, Envelope, ReplicaId, Slot};
use crate::instrumentation::{LabRef, now_ns};
use crate::transport::net::{
    BoxStream, ConnError, FrameStream, Incoming, Network, drain_into, write_frames, writer_task,
};
use crate::transport::wire::{
    self, CheckpointChunk, CheckpointFetch, Frame, FrameReader, HEADER_BYTES, Hello, HelloAck,
    PROTOCOL_VERSION, Role, WireError, kind,
};

/// How long a new connection may take to finish its TLS handshake (if any)
/// and say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame read before a connection said who it is: a hello is a few
/// bytes, so an unauthenticated connection buffers little.
const HELLO_FRAME_BYTES_MAX: usize = 4096;
/// Peer reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connections still in their handshake (TLS and hello), at most
/// `max`: a new one beyond it evicts the oldest.
pub(crate) struct Handshakes {
    max: usize,
    pending: Mutex<std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>>,
}

impl Handshakes {
    pub fn new(max: usize) -> Handshakes {
        assert!(max > 0, "handshake_connections_max must be at least 1");
        Handshakes {
            max,
            pending: Mutex::default(),
        }
    }

    /// Registers connection `conn`; the returned notify fires if it is
    /// evicted.
    fn enter(&self, conn: u64) -> Arc<tokio::sync::Notify> {
        let mut pending = self.pending.lock().expect("handshake table");
        if pending.len() >= self.max
            && let Some((_, oldest)) = pending.pop_first()
        {
            // notify_one keeps the permit if the task is not waiting yet.
            oldest.notify_one();
        }
        let n = Arc::new(tokio::sync::Notify::new());
        pending.insert(conn, n.clone());
        assert!(pending.len() <= self.max);
        n
    }

    fn leave(&self, conn: u64) {
        self.pending.lock().expect("handshake table").remove(&conn);
    }
}

/// Serves inbound connections.
#[derive(Clone)]
pub(crate) struct Server {
    pub cluster: ClusterId,
    pub id: ReplicaId,
    pub members: Vec<(ReplicaId, String)>,
    pub limits: ConnLimits,
    pub permits: Permits,
    pub events: mpsc::Sender<Event>,
    pub tasks: Arc<Mutex<Vec<AbortHandle>>>,
    pub lab: Option<LabRef>,
    /// Where this replica's checkpoints are, to serve peers catching up.
    pub checkpoints: Option<CheckpointStore>,
    /// Client writers gather before writing (`Network::gathers_writes`).
    pub gather_writes: bool,
}

/// The bounds an inbound connection is held to.
#[derive(Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Largest frame a peer may send.
    pub frame_bytes_max: usize,
    /// Largest frame a client may send.
    pub client_frame_bytes_max: usize,
    /// Commands a client connection may have in the core at once.
    pub client_outstanding_max: usize,
    /// A client connection that sends no complete frame for this long (up
    /// to twice this: the deadline is checked lazily) is closed.
    pub client_idle: Duration,
}

/// The connection permits shared by every inbound connection.
#[derive(Clone)]
pub(crate) struct Permits {
    /// Client connections (`client_connections_max` permits).
    pub clients: Arc<Semaphore>,
    /// Peer connections (`peer_connections_max` permits).
    pub peers: Arc<Semaphore>,
    /// Connections still in their handshake.
    pub handshakes: Arc<Handshakes>,
}

impl Server {
    pub fn serve(&self, incoming: Incoming, origin: String, conn: u64) {
        let me = self.clone();
        let h = tokio::spawn(async move {
            if let Err(e) = me.serve_conn(incoming, conn).await {
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

    async fn serve_conn(&self, incoming: Incoming, conn: u64) -> Result<(), ConnError> {
        // The handshake (TLS, then hello) is bounded in time and in number:
        // when `handshake_connections_max` are pending, the oldest is
        // evicted (a slowloris cannot lock out connections that complete
        // their handshake promptly).
        let evicted = self.permits.handshakes.enter(conn);
        let greeted = tokio::select! {
            r = tokio::time::timeout(HELLO_TIMEOUT, self.greet(incoming)) => r.unwrap_or_else(|_| {
                Err(ConnError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no hello in time",
                )))
            }),
            () = evicted.notified() => Err(ConnError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "evicted: too many connections in their handshake, this one the oldest",
            ))),
        };
        self.permits.handshakes.leave(conn);
        let (hello, mut frames, mut w) = greeted?;
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
                    let why = format!("replica {from} is not a peer of replica {}", self.id);
                    return Err(self.refuse(&mut w, &why, "not a peer").await);
                }
                let Ok(_permit) = self.permits.peers.clone().try_acquire_owned() else {
                    let why = "too many peer connections";
                    return Err(self.refuse(&mut w, why, "peer connection limit").await);
                };
                frames.set_frame_bytes_max(self.limits.frame_bytes_max);
                w.write_all(&ack.to_bytes()).await?;
                loop {
                    let (k, body) = frames.next().await?;
                    if k == kind::CHECKPOINT_FETCH {
                        // A connection of its own, so replication is not
                        // stalled behind the transfer; closed after it.
                        let f = wire::decode_checkpoint_fetch(body)?;
                        return self.serve_checkpoint(&mut w, from, f.at_least).await;
                    }
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
                let Ok(_permit) = self.permits.clients.clone().try_acquire_owned() else {
                    let why = "too many client connections";
                    return Err(self.refuse(&mut w, why, "connection limit").await);
                };
                frames.set_frame_bytes_max(self.limits.client_frame_bytes_max);
                let (tx, rx) = mpsc::channel(self.limits.client_outstanding_max + 64);
                tx.try_send(ack).expect("a fresh queue has room");
                let lab = self.lab.clone();
                let gather = self.gather_writes;
                let writer = tokio::spawn(async move {
                    let _ = writer_task(w, rx, lab, gather).await;
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

    /// Tells the other side why its hello is refused (best effort); the
    /// error closing the connection.
    async fn refuse(
        &self,
        w: &mut tokio::io::WriteHalf<BoxStream>,
        why: &str,
        what: &'static str,
    ) -> ConnError {
        let f = wire::encode_refused(self.cluster, why);
        let _ = w.write_all(&f.to_bytes()).await;
        ConnError::Wire(WireError::Invalid("hello", what))
    }

    /// The TLS handshake (if any), then the first frame, which must be a
    /// hello of this cluster and protocol version.
    async fn greet(
        &self,
        incoming: Incoming,
    ) -> Result<
        (
            Hello,
            FrameStream<tokio::io::ReadHalf<BoxStream>>,
            tokio::io::WriteHalf<BoxStream>,
        ),
        ConnError,
    > {
        let stream = incoming.open().await?;
        let (mut r, mut w) = tokio::io::split(stream);
        // The first frame may come from another cluster or version: read its
        // header ourselves so the refusal can be sent in terms it decodes.
        let mut buf = BytesMut::with_capacity(4096);
        while buf.len() < HEADER_BYTES {
            if r.read_buf(&mut buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
        let h = wire::parse_header(&buf, HELLO_FRAME_BYTES_MAX)?;
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
                frame_bytes_max: HELLO_FRAME_BYTES_MAX,
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
        Ok((wire::decode_hello(body)?, fs, w))
    }

    /// Streams the newest checkpoint at or beyond `at_least` to `peer` in
    /// chunks of at most `CHECKPOINT_CHUNK_BYTES_MAX`; an empty chunk of
    /// total 0 when there is none.
    async fn serve_checkpoint(
        &self,
        w: &mut tokio::io::WriteHalf<BoxStream>,
        peer: ReplicaId,
        at_least: Slot,
    ) -> Result<(), ConnError> {
        let found = match self.checkpoints.clone() {
            Some(store) => tokio::task::spawn_blocking(move || store.newest_file(at_least))
                .await
                .map_err(|e| ConnError::Io(std::io::Error::other(e)))?
                .map_err(|e| ConnError::Io(std::io::Error::other(e)))?,
            None => None,
        };
        let Some((slot, file)) = found else {
            tracing::warn!(%peer, at_least = at_least.0, "a peer needs a checkpoint this replica does not have");
            let none = CheckpointChunk {
                slot: at_least,
                total: 0,
                offset: 0,
                data: bytes::Bytes::new(),
            };
            w.write_all(&wire::encode_checkpoint_chunk(self.cluster, &none).to_bytes())
                .await?;
            return Ok(());
        };
        let started = std::time::Instant::now();
        let file = bytes::Bytes::from(file);
        let total = file.len() as u64;
        let chunk = CHECKPOINT_CHUNK_BYTES_MAX.min(self.limits.frame_bytes_max - HEADER_BYTES - 64);
        let mut offset = 0;
        while offset < file.len() {
            let end = (offset + chunk).min(file.len());
            let c = CheckpointChunk {
                slot,
                total,
                offset: offset as u64,
                data: file.slice(offset..end),
            };
            let f = wire::encode_checkpoint_chunk(self.cluster, &c);
            w.write_all(&f.head).await?;
            w.write_all(&f.payload).await?;
            offset = end;
        }
        w.flush().await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            %peer,
            slot = slot.0,
            bytes = total,
            ms = secs * 1e3,
            mib_s = total as f64 / (1 << 20) as f64 / secs.max(1e-9),
            "served a checkpoint to a peer catching up"
        );
        Ok(())
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
        // The idle deadline is checked lazily: one timer per connection,
        // re-armed only when it fires after frames arrived, so no timer is
        // set per frame (a connection is closed after between `client_idle`
        // and twice that without a complete frame).
        let idle = tokio::time::sleep(self.limits.client_idle);
        tokio::pin!(idle);
        let (mut frames_seen, mut seen_when_armed) = (0u64, 0u64);
        loop {
            let frame = tokio::select! {
                biased;
                f = frames.next() => f,
                () = &mut idle => {
                    if frames_seen == seen_when_armed {
                        return Err(ConnError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no complete frame for {} s: closed as idle",
                                self.limits.client_idle.as_secs_f64()
                            ),
                        )));
                    }
                    seen_when_armed = frames_seen;
                    idle.as_mut().reset(tokio::time::Instant::now() + self.limits.client_idle);
                    continue;
                }
            };
            let (k, body) = frame?;
            frames_seen += 1;
            if k != kind::CLIENT_REQUEST {
                if !self.forward(conn, k, body).await? {
                    return Ok(());
                }
                continue;
            }
            // The requests already read go to the core as one event: one
            // queue operation and one wake for all of them, not one each.
            let at = self.stamp();
            let mut reqs = Vec::with_capacity(4);
            reqs.push(wire::decode_client_request(body)?);
            let mut other = None;
            while reqs.len() < CLIENT_EVENT_REQUESTS_MAX {
                match frames.next_buffered()? {
                    Some((kind::CLIENT_REQUEST, body)) => {
                        frames_seen += 1;
                        reqs.push(wire::decode_client_request(body)?);
                    }
                    Some(f) => {
                        frames_seen += 1;
                        other = Some(f);
                        break;
                    }
                    None => break,
                }
            }
            if self
                .events
                .send(Event::Client { conn, reqs, at })
                .await
                .is_err()
            {
                return Ok(());
            }
            if let Some((k, body)) = other
                && !self.forward(conn, k, body).await?
            {
                return Ok(());
            }
        }
    }

    /// Hands one frame other than a client request to the core; `false`:
    /// the core is gone.
    async fn forward(&self, conn: u64, k: u16, body: Bytes) -> Result<bool, ConnError> {
        let ev = match k {
            kind::FAST_READ => Event::FastRead {
                conn,
                read: wire::decode_fast_read(body)?,
            },
            kind::STATUS_REQUEST => Event::Status { conn },
            kind::CONFIG_CHANGE => Event::ConfigChange {
                conn,
                req: serde_json::from_slice(&body).map_err(|_| {
                    ConnError::Wire(WireError::BadValue("configuration change request"))
                })?,
            },
            other => return Err(ConnError::Wire(WireError::UnknownKind(other))),
        };
        Ok(self.events.send(ev).await.is_ok())
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
) -> Result<
    (
        FrameStream<tokio::io::ReadHalf<BoxStream>>,
        tokio::io::WriteHalf<BoxStream>,
    ),
    String,
> {
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
            Ok((frames, w))
        }
        kind::REFUSED => Err(format!(
            "refused: {}",
            wire::decode_refused(body).map_err(|e| e.to_string())?
        )),
        other => Err(format!("unexpected frame kind {other} in the handshake")),
    }
}

/// The largest piece of a checkpoint in one frame.
const CHECKPOINT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// How long a checkpoint transfer may wait for its next chunk.
const CHECKPOINT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches `link.peer`'s newest checkpoint at or beyond `at_least` over a
/// connection of its own: the file's bytes as the peer keeps them (the
/// caller verifies them), at most `bytes_max` of them.
pub(crate) async fn fetch_checkpoint(
    link: &PeerLink,
    at_least: Slot,
    bytes_max: u64,
) -> Result<(Slot, Vec<u8>), String> {
    let (mut frames, mut w) = connect_peer(
        &link.network,
        link.cluster,
        link.me,
        link.peer,
        &link.addr,
        link.frame_bytes_max,
    )
    .await?;
    let ask = wire::encode_checkpoint_fetch(link.cluster, &CheckpointFetch { at_least });
    w.write_all(&ask.to_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut file = Vec::new();
    loop {
        let (k, body) = tokio::time::timeout(CHECKPOINT_CHUNK_TIMEOUT, frames.next())
            .await
            .map_err(|_| "no checkpoint data in time".to_string())?
            .map_err(|e| e.to_string())?;
        if k != kind::CHECKPOINT_CHUNK {
            return Err(format!(
                "unexpected frame kind {k} during a checkpoint transfer"
            ));
        }
        let c = wire::decode_checkpoint_chunk(body).map_err(|e| e.to_string())?;
        if c.total == 0 {
            return Err(format!(
                "replica {} has no checkpoint at or beyond slot {}",
                link.peer, at_least.0
            ));
        }
        if c.total > bytes_max {
            return Err(format!(
                "the checkpoint is {} bytes, more than the limit of {bytes_max}",
                c.total
            ));
        }
        if c.slot < at_least || c.offset != file.len() as u64 {
            return Err(format!(
                "checkpoint chunk out of order (slot {}, offset {}, have {})",
                c.slot.0,
                c.offset,
                file.len()
            ));
        }
        file.extend_from_slice(&c.data);
        if file.len() as u64 == c.total {
            return Ok((c.slot, file));
        }
    }
}

/// Frames the peer sender takes from its queue for one vectored write.
const PEER_WRITE_FRAMES_MAX: usize = 256;

/// Most client requests one core event carries: the requests a client
/// connection's reader finds already read go to the core together. The
/// core's queue then holds at most `event_queue_max` times this many.
pub(crate) const CLIENT_EVENT_REQUESTS_MAX: usize = 64;

/// Who a peer sender is and where it connects.
#[derive(Clone)]
pub(crate) struct PeerLink {
    pub network: Network,
    pub cluster: ClusterId,
    pub me: ReplicaId,
    pub peer: ReplicaId,
    pub addr: String,
    pub frame_bytes_max: usize,
    /// Frames discarded because the peer was unreachable (shared by every
    /// link of this replica; reported in its status).
    pub discarded: Arc<AtomicU64>,
    /// Whether the link holds a connection now (reported in status).
    pub connected: Arc<AtomicBool>,
}

/// Keeps one connection to `peer` and writes whatever the core queues for
/// it; reconnects with exponential backoff. The bounded queue absorbs a
/// slow peer (the core drops, and the protocol retransmits, when it is
/// full); while the peer is unreachable its frames are discarded instead:
/// a replica that comes back is brought up to date by retransmission,
/// catch-up or a checkpoint, not by a backlog addressed to its previous
/// incarnation (which would hold up to the queue's bound of stale frames).
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
        discarded,
        connected,
    } = link;
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        match connect_peer(&network, cluster, me, peer, &addr, frame_bytes_max).await {
            Ok((_, mut w)) => {
                if failures > 0 {
                    tracing::info!(%peer, %addr, "connected to peer");
                }
                backoff = BACKOFF_MIN;
                failures = 0;
                connected.store(true, Ordering::Relaxed);
                let mut batch = VecDeque::new();
                let mut marks = Vec::new();
                loop {
                    let Some(f) = rx.recv().await else {
                        return;
                    };
                    batch.push_back(f);
                    drain_into(&mut rx, &mut batch, PEER_WRITE_FRAMES_MAX);
                    if let Err(e) = write_frames(&mut w, &mut batch, &mut marks).await {
                        tracing::info!(%peer, %addr, error = %e, "lost the connection to a peer");
                        connected.store(false, Ordering::Relaxed);
                        discarded.fetch_add(batch.len() as u64, Ordering::Relaxed);
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
        // Unreachable: discard what is queued and what arrives until the
        // next attempt.
        let next_attempt = tokio::time::sleep(backoff);
        tokio::pin!(next_attempt);
        loop {
            tokio::select! {
                () = &mut next_attempt => break,
                f = rx.recv() => match f {
                    Some(_) => {
                        discarded.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
