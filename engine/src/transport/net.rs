//! Byte streams between replicas and clients: TCP, or an in-process network
//! of duplex pipes for embedded clusters (the same framing runs over both,
//! without sockets or system calls in-process).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::tls::Tls;
use super::wire::{Frame, FrameReader, HEADER_BYTES, WireError};
use crate::instrumentation::{LabRef, Mark, now_ns};

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// Bytes of each in-process pipe's buffer.
const PIPE_BYTES: usize = 1 << 20;
/// Most pending in-process connections per listener.
const INPROC_BACKLOG_MAX: usize = 1024;

/// The in-process network: listeners by name.
#[derive(Clone, Default)]
pub struct InProcNet {
    listeners: Arc<Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>>,
}

/// Where connections go.
#[derive(Clone)]
pub enum Network {
    Tcp,
    /// TCP with mutual TLS: every connection either way is authenticated
    /// with this identity and trust.
    Tls(Arc<Tls>),
    InProc(InProcNet),
}

/// Accepts connections.
pub enum Listener {
    Tcp(tokio::net::TcpListener, Option<Arc<Tls>>),
    InProc(mpsc::Receiver<DuplexStream>, String),
}

/// An accepted connection before its TLS handshake (if any): the
/// handshake runs in the connection's own task ([`Incoming::open`]), so a
/// slow or hostile one never holds up the accept loop.
pub enum Incoming {
    Ready(BoxStream),
    Tls(tokio::net::TcpStream, Arc<Tls>),
}

impl Incoming {
    /// The connected stream, after the TLS handshake where there is one.
    pub async fn open(self) -> io::Result<BoxStream> {
        match self {
            Incoming::Ready(s) => Ok(s),
            Incoming::Tls(tcp, tls) => Ok(Box::new(tls.accept(tcp).await?)),
        }
    }
}

impl Network {
    /// Whether a connection's writer, woken with a frame, first lets the
    /// other ready tasks run and takes what they queued into the same
    /// write ([`writer_task`]'s `gather`). On the in-process network the
    /// whole cluster shares one runtime, and gathering pays: `inproc-mem`'s
    /// p99 was 3.76 ms with it against 4.90 ms without (3 of 3 pairs), and
    /// the gate's runtime path measured 8,719-8,759 instructions per command
    /// with it (three counts) against 8,773-9,618 without (four). Over
    /// TCP (and TLS) each sender queues its pass before it yields, so,
    /// measured with replicas on the current-thread scheduler, waiting
    /// gathered nothing (0.040 writes per command at the load generator
    /// either way) and only delayed the write: `pipelined-nvm`'s
    /// `client.send` p50 fell from 41 to 8 µs without it, and the runs
    /// were faster in 3 of 3 pairs (RESULTS.md, issue 26, fourth session).
    pub fn gathers_writes(&self) -> bool {
        matches!(self, Network::InProc(_))
    }

    /// A fresh in-process network.
    pub fn inproc() -> Network {
        Network::InProc(InProcNet::default())
    }

    /// The TLS configuration connections of this network use, if any.
    fn tls(&self) -> Option<Arc<Tls>> {
        match self {
            Network::Tls(tls) => Some(tls.clone()),
            Network::Tcp | Network::InProc(_) => None,
        }
    }

    pub async fn bind(&self, addr: &str) -> io::Result<Listener> {
        match self {
            Network::Tcp | Network::Tls(_) => Ok(Listener::Tcp(
                tokio::net::TcpListener::bind(addr).await?,
                self.tls(),
            )),
            Network::InProc(net) => {
                let mut l = net.listeners.lock().expect("listener table");
                if l.get(addr).is_some_and(|tx| !tx.is_closed()) {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{addr} is in use"),
                    ));
                }
                let (tx, rx) = mpsc::channel(INPROC_BACKLOG_MAX);
                l.insert(addr.to_string(), tx);
                Ok(Listener::InProc(rx, addr.to_string()))
            }
        }
    }

    pub async fn connect(&self, addr: &str) -> io::Result<BoxStream> {
        match self {
            Network::Tcp | Network::Tls(_) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                match self.tls() {
                    Some(tls) => Ok(Box::new(tls.connect(addr, s).await?)),
                    None => Ok(Box::new(s)),
                }
            }
            Network::InProc(net) => {
                let tx = net
                    .listeners
                    .lock()
                    .expect("listener table")
                    .get(addr)
                    .cloned();
                let Some(tx) = tx else {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("nothing listens at {addr}"),
                    ));
                };
                let (a, b) = tokio::io::duplex(PIPE_BYTES);
                tx.send(b).await.map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("{addr} stopped listening"),
                    )
                })?;
                Ok(Box::new(a))
            }
        }
    }
}

impl Listener {
    /// The next connection and a description of its origin.
    pub async fn accept(&mut self) -> io::Result<(Incoming, String)> {
        match self {
            Listener::Tcp(l, tls) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let incoming = match tls {
                    Some(tls) => Incoming::Tls(s, tls.clone()),
                    None => Incoming::Ready(Box::new(s)),
                };
                Ok((incoming, peer.to_string()))
            }
            Listener::InProc(rx, name) => match rx.recv().await {
                Some(s) => Ok((
                    Incoming::Ready(Box::new(s)),
                    format!("in-process to {name}"),
                )),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "listener closed",
                )),
            },
        }
    }

    /// The bound address (TCP: with the real port).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l, _) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::InProc(_, name) => name.clone(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("closed by the other side")]
    Closed,
}

/// Bytes a frame stream reserves for its reads at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads frames from a stream into one growing buffer; frames are split off
/// it without copying.
pub struct FrameStream<R> {
    read: R,
    buf: BytesMut,
    reader: FrameReader,
}

impl<R: AsyncRead + Unpin> FrameStream<R> {
    pub fn new(read: R, reader: FrameReader) -> FrameStream<R> {
        FrameStream::with_buffer(read, reader, BytesMut::with_capacity(READ_CHUNK_BYTES))
    }

    /// Continues from bytes already read.
    pub fn with_buffer(read: R, reader: FrameReader, buf: BytesMut) -> FrameStream<R> {
        FrameStream { read, buf, reader }
    }

    /// Changes the largest frame accepted from now on (raised once a
    /// connection said who it is).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.reader.frame_bytes_max = bytes;
    }

    /// The next frame already buffered, without reading (`Ok(None)`: a read
    /// is needed).
    pub fn next_buffered(&mut self) -> Result<Option<(u16, Bytes)>, ConnError> {
        Ok(self.reader.next(&mut self.buf)?)
    }

    /// The next frame (kind, body). Cancel-safe: bytes read stay buffered.
    pub async fn next(&mut self) -> Result<(u16, Bytes), ConnError> {
        loop {
            if let Some(f) = self.reader.next(&mut self.buf)? {
                return Ok(f);
            }
            // Room for the largest frame accepted now, up to a read chunk:
            // a connection that has not said hello (4 KiB frames) buffers
            // a few KiB, not a chunk.
            let chunk = READ_CHUNK_BYTES.min(self.reader.frame_bytes_max + HEADER_BYTES);
            if self.buf.capacity() - self.buf.len() < chunk / 16 {
                self.buf.reserve(chunk);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }
}

/// Most frames written in one vectored write.
const WRITE_FRAMES_MAX: usize = 64;

/// Writes `frames` with as few system calls as possible: heads and payloads
/// go out as one vectored write, without copying payloads. The frames' lab
/// marks are appended to `marks` (record them once the write returned).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &mut VecDeque<Frame>,
    marks: &mut Vec<Mark>,
) -> io::Result<()> {
    let mut chunks: VecDeque<Bytes> = VecDeque::with_capacity(frames.len() * 2);
    for f in frames.drain(..) {
        marks.extend(f.marks);
        chunks.push_back(f.head);
        if !f.payload.is_empty() {
            chunks.push_back(f.payload);
        }
    }
    while !chunks.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks
                .iter()
                .take(2 * WRITE_FRAMES_MAX)
                .map(|c| IoSlice::new(c))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let mut left = n;
        while left > 0 {
            let front = chunks.front_mut().expect("wrote more than queued");
            if front.len() <= left {
                left -= front.len();
                chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    w.flush().await
}

/// Moves the frames already queued in `rx` into `batch`, up to `max` in it.
pub(crate) fn drain_into(rx: &mut mpsc::Receiver<Frame>, batch: &mut VecDeque<Frame>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(f) => batch.push_back(f),
            Err(_) => break,
        }
    }
}

/// Drains `rx` into `w` until either ends: batches whatever is queued into
/// one vectored write. With `gather`, it first lets the other ready tasks
/// run (a yield) and takes what they queued too
/// ([`Network::gathers_writes`] says when that pays). With a `lab`, the
/// marked frames' stages end when their write returns.
pub async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Frame>,
    lab: Option<LabRef>,
    gather: bool,
) -> io::Result<()> {
    let mut batch = VecDeque::new();
    let mut marks = Vec::new();
    while let Some(f) = rx.recv().await {
        batch.push_back(f);
        drain_into(&mut rx, &mut batch, WRITE_FRAMES_MAX);
        if gather && batch.len() < WRITE_FRAMES_MAX {
            tokio::task::yield_now().await;
            drain_into(&mut rx, &mut batch, WRITE_FRAMES_MAX);
        }
        write_frames(&mut w, &mut batch, &mut marks).await?;
        if !marks.is_empty() {
            if let Some(lab) = &lab {
                lab.record_marks(&marks, now_ns());
            }
            marks.clear();
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Ballot, ClusterId, Commit, Message, ReplicaId, Slot};
    use crate::transport::wire::encode_message;

    #[tokio::test(flavor = "current_thread")]
    async fn frames_cross_both_networks() {
        for net in [Network::inproc(), Network::Tcp] {
            let addr = match &net {
                Network::Tcp | Network::Tls(_) => "127.0.0.1:0",
                Network::InProc(_) => "replica-1",
            };
            let mut l = net.bind(addr).await.unwrap();
            let addr = l.local_addr();
            let client = tokio::spawn({
                let net = net.clone();
                async move {
                    let s = net.connect(&addr).await.unwrap();
                    let (_, w) = tokio::io::split(s);
                    let (tx, rx) = mpsc::channel(16);
                    for i in 0..10 {
                        let m = Message::Commit(Commit {
                            ballot: Ballot::new(1, ReplicaId(1)),
                            commit: Slot(i),
                        });
                        tx.send(encode_message(ClusterId(5), &m)).await.unwrap();
                    }
                    drop(tx);
                    writer_task(w, rx, None, false).await.unwrap();
                }
            });
            let (s, _) = l.accept().await.unwrap();
            let s = s.open().await.unwrap();
            let mut fs = FrameStream::new(
                s,
                FrameReader {
                    cluster: ClusterId(5),
                    frame_bytes_max: 1024,
                },
            );
            for i in 0..10 {
                let (k, body) = fs.next().await.unwrap();
                let Message::Commit(c) = crate::transport::wire::decode_message(k, body).unwrap()
                else {
                    panic!()
                };
                assert_eq!(c.commit, Slot(i));
            }
            assert!(matches!(fs.next().await, Err(ConnError::Closed)));
            client.await.unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_inproc_address_in_use_is_refused() {
        let net = Network::inproc();
        let _l = net.bind("a").await.unwrap();
        let err = net.bind("a").await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(net.connect("b").await.is_err());
    }
}
