//! A fault-injecting network between replica processes: a TCP proxy in
//! front of each replica, whose links the caller cuts, delays and heals
//! while the cluster runs. The system tests, `soak` and the
//! `partition-leader` experiment use it.
//!
//! Each replica gets two fronts: a *peer front*, the address the other
//! replicas' files list for it (their address book), and a *client
//! front*, the address clients are given. A connection on the peer front
//! says who it is in its first frame (the hello: `Peer(i)` or `Client`),
//! which the proxy reads to put it on its link. Every connection belongs
//! to one directed link, from the endpoint that opened it (replica `i`,
//! or the clients) to the replica it reaches, and that link's fault
//! governs the connection's bytes in both directions: a replica's
//! messages to a peer travel on a connection it opens (the answers on it
//! are a handshake and checkpoint chunks it asked for), so cutting `i → j`
//! drops `i`'s messages to `j` while `j`'s to `i`, on `j`'s own
//! connection, still arrive. That is the one-way cut of the issue that
//! asked for this module.
//!
//! Faults, per link:
//! - `Blackhole`: nothing moves, connections stay open (a routing black
//!   hole: the sender learns nothing until its own timeouts; bytes held
//!   by the proxy are delivered, late, when the link heals, as TCP would
//!   after a short partition). A connection opened meanwhile is accepted
//!   and held without reaching the replica.
//! - `Refuse`: connections on the link are closed, new ones closed on
//!   accept (a crashed host, a firewall's reject).
//! - delay and jitter: each chunk of bytes is released `delay` plus a
//!   uniform `0..jitter` after it was read, never before the chunk ahead
//!   of it (TCP keeps order).
//! - loss: each chunk resets its connection with this probability (over
//!   TCP a lost segment is a delay; a lossy path shows as resets and
//!   reconnects).
//!
//! Plain TCP only: under TLS the hello is not readable, so peer and
//! client connections could not be told apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use engine::core::ClusterId;
use engine::transport::wire::{self, FrameReader, Role, kind};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Largest chunk a pump reads at once.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Chunks read but not yet written, per direction of a connection (with
/// `CHUNK_BYTES_MAX`: at most 4 MiB held per direction).
const PUMP_CHUNKS_MAX: usize = 64;
/// Connections open through one front at once; more are closed on accept.
const FRONT_CONNECTIONS_MAX: usize = 1024;
/// How long a new connection on a peer front may take to send its hello.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// Where a connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Replica(u32),
    /// Any client on a client front (every client shares one link to
    /// each replica).
    Clients,
    /// Any client on a peer front: one that followed a replica's address
    /// book (a hint, the members a handshake lists). Refuse it to model
    /// peer addresses clients cannot reach.
    ClientsAtPeerAddress,
}

/// Whether a link passes bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cut {
    #[default]
    Open,
    Blackhole,
    Refuse,
}

/// The fault of one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    pub cut: Cut,
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability per chunk that the chunk resets its connection.
    pub loss: f64,
}

impl LinkFault {
    pub const OPEN: LinkFault = LinkFault {
        cut: Cut::Open,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
    };
    pub const BLACKHOLE: LinkFault = LinkFault {
        cut: Cut::Blackhole,
        ..LinkFault::OPEN
    };
    pub const REFUSE: LinkFault = LinkFault {
        cut: Cut::Refuse,
        ..LinkFault::OPEN
    };
}

/// Counters of what the proxy did.
#[derive(Default, Debug)]
pub struct FaultCounters {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub resets: AtomicU64,
    pub bytes: AtomicU64,
}

struct Inner {
    cluster: ClusterId,
    links: HashMap<(End, u32), watch::Sender<LinkFault>>,
    tasks: Mutex<Vec<AbortHandle>>,
    counters: FaultCounters,
    seed: AtomicU64,
}

/// The proxies of one cluster. Dropping it stops every proxy and closes
/// every connection through it.
pub struct FaultNet {
    inner: Arc<Inner>,
    ids: Vec<u32>,
    peer_fronts: Vec<String>,
    client_fronts: Vec<String>,
}

impl FaultNet {
    /// Starts a peer front and a client front (on 127.0.0.1, ephemeral
    /// ports) for each `(replica id, address it listens on)`.
    pub async fn start(cluster: ClusterId, replicas: &[(u32, String)]) -> Result<FaultNet> {
        let ids: Vec<u32> = replicas.iter().map(|(id, _)| *id).collect();
        let mut links = HashMap::new();
        for &to in &ids {
            for from in [End::Clients, End::ClientsAtPeerAddress] {
                links.insert((from, to), watch::channel(LinkFault::OPEN).0);
            }
            for &from in &ids {
                if from != to {
                    links.insert((End::Replica(from), to), watch::channel(LinkFault::OPEN).0);
                }
            }
        }
        let inner = Arc::new(Inner {
            cluster,
            links,
            tasks: Mutex::default(),
            counters: FaultCounters::default(),
            seed: AtomicU64::new(0x5eed_f417),
        });
        let mut peer_fronts = Vec::new();
        let mut client_fronts = Vec::new();
        for (id, target) in replicas {
            for peer_front in [true, false] {
                let l = TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("binding a fault proxy")?;
                let addr = l.local_addr()?.to_string();
                if peer_front {
                    peer_fronts.push(addr);
                } else {
                    client_fronts.push(addr);
                }
                let front = Front {
                    inner: inner.clone(),
                    to: *id,
                    target: target.clone(),
                    peer_front,
                    open: Arc::new(tokio::sync::Semaphore::new(FRONT_CONNECTIONS_MAX)),
                };
                let h = tokio::spawn(front.accept(l));
                inner
                    .tasks
                    .lock()
                    .expect("task list")
                    .push(h.abort_handle());
            }
        }
        Ok(FaultNet {
            inner,
            ids,
            peer_fronts,
            client_fronts,
        })
    }

    /// The address replica `id`'s peers list for it.
    pub fn peer_address(&self, id: u32) -> &str {
        &self.peer_fronts[self.index(id)]
    }

    /// The address clients reach replica `id` at.
    pub fn client_address(&self, id: u32) -> &str {
        &self.client_fronts[self.index(id)]
    }

    /// Every client front, in replica order.
    pub fn client_addresses(&self) -> Vec<String> {
        self.client_fronts.clone()
    }

    fn index(&self, id: u32) -> usize {
        self.ids
            .iter()
            .position(|&x| x == id)
            .unwrap_or_else(|| panic!("replica {id} is not behind this fault network"))
    }

    pub fn counters(&self) -> &FaultCounters {
        &self.inner.counters
    }

    /// Sets the fault of the link `from → to`.
    pub fn set(&self, from: End, to: u32, fault: LinkFault) {
        assert!(
            from != End::Replica(to),
            "a replica has no link to itself ({to})"
        );
        let link = self
            .inner
            .links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link {from:?} -> {to}"));
        link.send_replace(fault);
    }

    /// The fault of the link `from → to`.
    pub fn get(&self, from: End, to: u32) -> LinkFault {
        *self.inner.links[&(from, to)].borrow()
    }

    /// Every link open, without delay or loss.
    pub fn heal(&self) {
        for l in self.inner.links.values() {
            l.send_replace(LinkFault::OPEN);
        }
    }

    /// Cuts replica `id` off from its peers, both ways (its clients still
    /// reach it).
    pub fn isolate(&self, id: u32, fault: LinkFault) {
        for &other in self.ids.iter().filter(|&&o| o != id) {
            self.set(End::Replica(id), other, fault);
            self.set(End::Replica(other), id, fault);
        }
    }

    /// Splits the replicas into `groups`: links between groups get
    /// `fault`, links within a group are open. A replica in no group
    /// stays linked to everyone: with two groups, a bridge.
    pub fn partition(&self, groups: &[&[u32]], fault: LinkFault) {
        let group_of = |id: u32| groups.iter().position(|g| g.contains(&id));
        for &a in &self.ids {
            for &b in self.ids.iter().filter(|&&b| b != a) {
                let f = match (group_of(a), group_of(b)) {
                    (Some(x), Some(y)) if x != y => fault,
                    _ => LinkFault::OPEN,
                };
                self.set(End::Replica(a), b, f);
            }
        }
    }

    /// Cuts `from`'s messages to every other replica; theirs to it arrive.
    pub fn mute(&self, from: u32, fault: LinkFault) {
        for &to in self.ids.iter().filter(|&&o| o != from) {
            self.set(End::Replica(from), to, fault);
        }
    }

    /// Sets the fault of every client link (of `from`: `Clients` or
    /// `ClientsAtPeerAddress`) to the replicas.
    pub fn clients(&self, from: End, fault: LinkFault) {
        assert!(matches!(from, End::Clients | End::ClientsAtPeerAddress));
        for &to in &self.ids {
            self.set(from, to, fault);
        }
    }

    /// Sets every replica-to-replica link's delay and jitter.
    pub fn delay_all(&self, delay: Duration, jitter: Duration) {
        for (&(from, _), l) in &self.inner.links {
            if let End::Replica(_) = from {
                l.send_modify(|f| {
                    f.delay = delay;
                    f.jitter = jitter;
                });
            }
        }
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        for t in self.inner.tasks.lock().expect("task list").drain(..) {
            t.abort();
        }
    }
}

#[derive(Clone)]
struct Front {
    inner: Arc<Inner>,
    to: u32,
    target: String,
    peer_front: bool,
    open: Arc<tokio::sync::Semaphore>,
}

impl Front {
    async fn accept(self, l: TcpListener) {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = self.open.clone().try_acquire_owned() else {
                self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let me = self.clone();
            let h = tokio::spawn(async move {
                me.serve(s).await;
                drop(permit);
            });
            let mut tasks = self.inner.tasks.lock().expect("task list");
            tasks.retain(|t| !t.is_finished());
            tasks.push(h.abort_handle());
        }
    }

    /// Puts connection `s` on its link and pumps it until either side
    /// closes or the link refuses.
    async fn serve(&self, mut s: TcpStream) {
        let _ = s.set_nodelay(true);
        let (from, first) = if self.peer_front {
            match tokio::time::timeout(HELLO_WAIT, self.hello(&mut s)).await {
                Ok(Some(v)) => v,
                _ => return,
            }
        } else {
            (End::Clients, Bytes::new())
        };
        let Some(link) = self.inner.links.get(&(from, self.to)) else {
            // A replica this network does not front (or itself): no link.
            return;
        };
        let mut fault = link.subscribe();
        // Held, not connected through, while the link is a black hole.
        if !wait_passable(&mut fault).await {
            self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(up) = TcpStream::connect(&self.target).await else {
            return;
        };
        let _ = up.set_nodelay(true);
        self.inner
            .counters
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let seed = self.inner.seed.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        let (dr, dw) = s.into_split();
        let (ur, uw) = up.into_split();
        let inner = &self.inner;
        // Either direction ending (a close, a refusal, a loss) ends both.
        tokio::select! {
            () = pump(dr, uw, first, link.subscribe(), seed, inner) => {}
            () = pump(ur, dw, Bytes::new(), link.subscribe(), seed ^ 1, inner) => {}
        }
    }

    /// Reads the connection's first frame: who it is, and the bytes read
    /// (to forward). `None` if it sends no frame the proxy can read (it is
    /// then closed: a replica would close it too).
    async fn hello(&self, s: &mut TcpStream) -> Option<(End, Bytes)> {
        let reader = FrameReader {
            cluster: self.inner.cluster,
            frame_bytes_max: 4096,
        };
        let mut raw = BytesMut::new();
        loop {
            if s.read_buf(&mut raw).await.ok()? == 0 {
                return None;
            }
            let mut probe = raw.clone();
            match reader.next(&mut probe) {
                Ok(Some((kind::HELLO, body))) => {
                    let end = match wire::decode_hello(body).ok()?.role {
                        Role::Peer(id) => End::Replica(id.0),
                        Role::Client => End::ClientsAtPeerAddress,
                    };
                    return Some((end, raw.freeze()));
                }
                Ok(None) => continue,
                _ => return None,
            }
        }
    }
}

/// Waits until the link is not a black hole: `false` if it refuses.
async fn wait_passable(fault: &mut watch::Receiver<LinkFault>) -> bool {
    loop {
        match fault.borrow_and_update().cut {
            Cut::Open => return true,
            Cut::Refuse => return false,
            Cut::Blackhole => {}
        }
        if fault.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies `src` to `dst` under the link's fault, starting with `first`
/// (bytes already read). Returns when either side closes, the link
/// refuses, or a chunk is lost.
async fn pump(
    mut src: tokio::net::tcp::OwnedReadHalf,
    mut dst: tokio::net::tcp::OwnedWriteHalf,
    first: Bytes,
    mut fault: watch::Receiver<LinkFault>,
    seed: u64,
    inner: &Inner,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(PUMP_CHUNKS_MAX);
    let mut writer_fault = fault.clone();
    let write = async move {
        while let Some((release, chunk)) = rx.recv().await {
            // Only a real delay sleeps: tokio's timer rounds a deadline up
            // to its next millisecond tick, which made every hop through
            // an undelayed link ~1 ms (p2b.recv 2.6 ms in partition-leader).
            if release > Instant::now() {
                tokio::time::sleep_until(release).await;
            }
            // Bytes already read wait out a black hole here.
            if !wait_passable(&mut writer_fault).await {
                return;
            }
            if dst.write_all(&chunk).await.is_err() {
                return;
            }
            inner
                .counters
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    let read = async move {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut last = Instant::now();
        let mut pending = (!first.is_empty()).then_some(first);
        loop {
            if !wait_passable(&mut fault).await {
                return;
            }
            let chunk = match pending.take() {
                Some(c) => c,
                None => {
                    let mut buf = BytesMut::with_capacity(CHUNK_BYTES_MAX);
                    tokio::select! {
                        r = src.read_buf(&mut buf) => match r {
                            Ok(0) | Err(_) => return,
                            Ok(_) => buf.freeze(),
                        },
                        // A change of fault (a refusal, a black hole)
                        // applies at once, not at the next byte.
                        c = fault.changed() => {
                            if c.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let f = *fault.borrow();
            if f.loss > 0.0 && unit(&mut rng) < f.loss {
                inner.counters.resets.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let jitter = f.jitter.mul_f64(unit(&mut rng));
            last = last.max(Instant::now() + f.delay + jitter);
            if tx.send((last, chunk)).await.is_err() {
                return;
            }
        }
    };
    // The pump ends with the writer: when its side fails, the link
    // refuses, or the reader has stopped (dropping `tx`) and what it read
    // has been written.
    tokio::select! {
        () = write => {}
        () = async { read.await; std::future::pending::<()>().await } => {}
    }
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
