//! Helpers for system tests: replica processes on 127.0.0.1, each with its
//! own configuration file and NVM log, started, killed, stopped and
//! restarted like an operator would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use engine::client::{Client, ClientError, ClientOptions};
use engine::core::{ClientId, ClusterId, ReplicaId, Slot};
use engine::kv::{KvOp, KvResult};
use engine::sim::linearizability::{self, HistoryOp};
use engine::transport::net::Network;
use engine::transport::wire::{self, ClientRequest, FrameReader, Hello, Role, Status, kind};
pub use loadgen::faultnet::{Cut, End, FaultNet, LinkFault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `replica` binary next to this test binary (target/<profile>/replica).
pub fn replica_binary() -> PathBuf {
    built_binary("replica", "engine")
}

/// The `kv` binary next to this test binary (target/<profile>/kv).
pub fn kv_binary() -> PathBuf {
    built_binary("kv", "engine")
}

/// The `loadgen` binary next to this test binary (target/<profile>/loadgen).
pub fn loadgen_binary() -> PathBuf {
    built_binary("loadgen", "loadgen")
}

/// The `analysis` binary next to this test binary.
pub fn analysis_binary() -> PathBuf {
    built_binary("analysis", "analysis")
}

fn built_binary(name: &str, package: &str) -> PathBuf {
    // A test runs from target/<profile>/deps, a binary (soak) from
    // target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("the executable's directory");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p {package} --bin {name}`; `make test` does)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A cluster of replica processes.
pub struct ProcCluster {
    pub cluster: ClusterId,
    pub dir: PathBuf,
    pub addresses: Vec<String>,
    procs: Vec<Option<Child>>,
    /// Overrides of member addresses in the files (to misconfigure).
    pub member_addresses: Vec<String>,
    /// Applied slots each replica keeps in memory (`None`: the default).
    pub log_retained_slots_max: Option<u64>,
    /// Replicas outside the bootstrap configuration (`spare = true` in
    /// every file; started with `join = true`).
    pub spares: Vec<bool>,
    /// `[protocol] election_ticks` (`None`: 10, of 10 ms).
    pub election_ticks: Option<u32>,
    /// Extra command-line arguments of each replica.
    pub replica_args: Vec<Vec<String>>,
    /// `join` in each replica's file (`None`: `join = true` for spares
    /// only). README: a removed replica is added back with `join = true`;
    /// a joined one is set to `join = false` once added.
    pub join: Vec<Option<bool>>,
    /// Extra lines of every file's `[protocol]` section.
    pub protocol_extra: String,
    /// `worker_threads` in each replica's file (`None`: not written, the
    /// replica's default, tokio's current-thread scheduler).
    pub worker_threads: Vec<Option<usize>>,
    /// Keep the directory (logs, files) when dropped.
    keep: bool,
    /// `[storage] backend`: "nvm" (the default) or "wal".
    pub storage: &'static str,
    /// `[checkpoint] every_slots` (default 100).
    pub checkpoint_every_slots: u64,
    /// The fault network between the replicas (and between them and the
    /// clients), once [`ProcCluster::behind_faultnet`] put one there.
    pub net: Option<FaultNet>,
}

impl ProcCluster {
    /// Writes the configuration files of `n` replicas (not started).
    pub fn new(name: &str, cluster: u64, n: u32) -> ProcCluster {
        let dir = PathBuf::from(format!("/dev/shm/systest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test directory");
        let addresses: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        ProcCluster {
            cluster: ClusterId(cluster),
            dir,
            member_addresses: addresses.clone(),
            addresses,
            procs: (0..n).map(|_| None).collect(),
            log_retained_slots_max: None,
            spares: vec![false; n as usize],
            election_ticks: None,
            replica_args: vec![Vec::new(); n as usize],
            join: vec![None; n as usize],
            protocol_extra: String::new(),
            net: None,
            storage: "nvm",
            checkpoint_every_slots: 100,
            worker_threads: vec![None; n as usize],
            keep: false,
        }
    }

    /// Puts a fault network between the replicas (call before starting
    /// them): each file lists its peers at their peer fronts, clients are
    /// given the client fronts, and replicas listen where they did.
    pub async fn behind_faultnet(&mut self) -> &FaultNet {
        let replicas: Vec<(u32, String)> = self
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u32 + 1, a.clone()))
            .collect();
        let net = FaultNet::start(self.cluster, &replicas)
            .await
            .expect("a fault network");
        self.member_addresses = (0..self.addresses.len())
            .map(|i| net.peer_address(i as u32 + 1).to_string())
            .collect();
        self.net.insert(net)
    }

    /// Keeps the directory (logs and files) when the cluster is dropped.
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// The fault network (panics without one).
    pub fn net(&self) -> &FaultNet {
        self.net.as_ref().expect("behind_faultnet first")
    }

    /// The addresses clients are given: the client fronts behind a fault
    /// network, else where the replicas listen.
    pub fn client_addresses(&self) -> Vec<String> {
        match &self.net {
            Some(n) => n.client_addresses(),
            None => self.addresses.clone(),
        }
    }

    /// Where replica `i` keeps its checkpoints.
    pub fn checkpoint_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{}.checkpoints", i + 1))
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{}.toml", i + 1))
    }

    fn write_config(&self, i: usize) {
        let mut s = format!(
            "cluster_id = {}\nreplica_id = {}\nlisten = \"{}\"\njoin = {}\n\n",
            self.cluster.0,
            i + 1,
            self.addresses[i],
            self.join[i].unwrap_or(self.spares[i]),
        );
        if let Some(n) = self.worker_threads[i] {
            s.push_str(&format!("worker_threads = {n}\n\n"));
        }
        for (j, a) in self.member_addresses.iter().enumerate() {
            s.push_str(&format!(
                "[[members]]\nid = {}\naddress = \"{a}\"\nspare = {}\n\n",
                j + 1,
                self.spares[j],
            ));
        }
        s.push_str(&format!(
            "[storage]\nbackend = \"{}\"\npath = \"{}\"\nnvm_bytes = 67108864\n\n[protocol]\ntick_ms = 10\nelection_ticks = {}\nheartbeat_ticks = 2\n\n[checkpoint]\ndir = \"{}\"\nevery_slots = {}\n",
            self.storage,
            self.dir
                .join(format!("replica-{}.{}", i + 1, self.storage))
                .display(),
            self.election_ticks.unwrap_or(10),
            self.checkpoint_dir(i).display(),
            self.checkpoint_every_slots,
        ));
        if !self.protocol_extra.is_empty() {
            s = s.replace(
                "[protocol]\n",
                &format!("[protocol]\n{}\n", self.protocol_extra.trim_end()),
            );
        }
        if let Some(n) = self.log_retained_slots_max {
            s = s.replace(
                "[protocol]\n",
                &format!("[protocol]\nlog_retained_slots_max = {n}\n"),
            );
        }
        std::fs::write(self.config_path(i), s).expect("writing a configuration");
    }

    /// Starts replica `i` (0-based); `bootstrap` for its first start.
    pub fn start(&mut self, i: usize, bootstrap: bool) {
        self.write_config(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{}.log", i + 1)))
            .expect("log file");
        let mut cmd = Command::new(replica_binary());
        cmd.arg("--config").arg(self.config_path(i));
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        cmd.args(&self.replica_args[i]);
        // SAFETY: prctl in the child between fork and exec, async-signal
        // safe. A replica dies with the process that started it (a test
        // or a soak killed outright leaves no replica behind).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning a replica");
        self.procs[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.procs.len() {
            self.start(i, true);
        }
    }

    pub fn pid(&self, i: usize) -> i32 {
        self.procs[i].as_ref().expect("running").id() as i32
    }

    /// SIGKILL: no clean stop, no sync.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: i32) {
        // SAFETY: sending a signal to a child we spawned.
        let r = unsafe { libc::kill(self.pid(i), sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        self.signal(i, libc::SIGTERM);
        let mut c = self.procs[i].take().expect("running");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < end, "replica did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether replica `i` still runs.
    pub fn alive(&mut self, i: usize) -> bool {
        match &mut self.procs[i] {
            Some(c) => c.try_wait().expect("wait").is_none(),
            None => false,
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("replica-{}.log", i + 1))).unwrap_or_default()
    }

    pub async fn client(&self, options: ClientOptions) -> Client {
        Client::connect(Network::Tcp, self.cluster, self.client_addresses(), options)
            .await
            .expect("a client connects")
    }

    /// The replica that leads (asked of each replica directly), once one does.
    pub async fn leader(&self, within: Duration) -> usize {
        let end = Instant::now() + within;
        loop {
            for (i, a) in self.addresses.iter().enumerate() {
                if let Ok(Status::Ok) = probe(self.cluster, a).await {
                    return i;
                }
            }
            assert!(Instant::now() < end, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if !std::thread::panicking() && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("replica logs kept in {}", self.dir.display());
        }
    }
}

/// Sends one linearizable read to `addr` directly: `Ok` if it leads.
pub async fn probe(cluster: ClusterId, addr: &str) -> Result<Status, String> {
    let mut s = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| "timeout".to_string())?
    .map_err(|e| e.to_string())?;
    s.write_all(&wire::encode_hello(cluster, &Hello { role: Role::Client }).to_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let req = ClientRequest {
        client: ClientId(0xfeed_0000 + u64::from(std::process::id())),
        seq: 1,
        ack_below: 1,
        op: KvOp::Get {
            key: Bytes::from_static(b"probe"),
        }
        .encode(),
    };
    s.write_all(&wire::encode_client_request(cluster, &req).to_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let r = FrameReader {
        cluster,
        frame_bytes_max: 1 << 20,
    };
    let mut buf = BytesMut::new();
    let end = Instant::now() + Duration::from_millis(500);
    loop {
        while let Some((k, body)) = r.next(&mut buf).map_err(|e| e.to_string())? {
            if k == kind::CLIENT_REPLY {
                return Ok(wire::decode_client_reply(body)
                    .map_err(|e| e.to_string())?
                    .status);
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed".into()),
            Ok(Ok(_)) => {}
            Err(_) => return Err("timeout".into()),
        }
    }
}

pub fn put(k: &str, v: &str) -> Bytes {
    KvOp::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
    .encode()
}

pub fn get(k: &str) -> Bytes {
    KvOp::Get {
        key: Bytes::copy_from_slice(k.as_bytes()),
    }
    .encode()
}

pub fn decode(b: &Bytes) -> KvResult {
    KvResult::decode(b).expect("a KV result")
}

/// Calls until success (the client retries internally; this retries on a
/// timeout too), for setup steps.
pub async fn call_until_ok(c: &Client, op: Bytes) -> engine::client::Response {
    for _ in 0..20 {
        match c.call(op.clone()).await {
            Ok(r) => return r,
            Err(ClientError::Timeout) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no success after 20 attempts");
}

/// Waits until replica `i` has applied every slot below `target`: its fast
/// reads stop answering `Stale`.
pub async fn wait_caught_up(c: &ProcCluster, i: usize, target: Slot) {
    let only = Client::connect(
        Network::Tcp,
        c.cluster,
        vec![c.addresses[i].clone()],
        options(),
    )
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match only.fast_read_at_least(get("k0"), Some(target)).await {
            Ok(r) => {
                assert!(r.slot >= target);
                return;
            }
            Err(ClientError::Stale { .. }) | Err(ClientError::Timeout) => {
                assert!(
                    Instant::now() < end,
                    "replica {i} did not catch up:\n{}",
                    c.log(i)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Which replica id a 0-based index is.
pub fn id(i: usize) -> ReplicaId {
    ReplicaId(i as u32 + 1)
}

/// Client options of the system tests: 400 ms per attempt, 20 s in all.
pub fn options() -> ClientOptions {
    ClientOptions {
        attempt_timeout: Duration::from_millis(400),
        deadline: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// A recorded workload: `workers` clients doing puts and gets on 3 keys,
/// every operation kept for the linearizability check.
pub struct Workload {
    pub history: Arc<Mutex<Vec<HistoryOp>>>,
    /// Logical clock of invocations and responses.
    pub stamp: Arc<AtomicU64>,
    /// Highest slot of an acknowledged command.
    pub max_slot: Arc<AtomicU64>,
    pub acked_puts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Default for Workload {
    fn default() -> Self {
        Self::new()
    }
}

impl Workload {
    pub fn new() -> Workload {
        Workload {
            history: Arc::default(),
            stamp: Arc::default(),
            max_slot: Arc::default(),
            acked_puts: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// Starts `workers` clients of `ops` operations each (`u64::MAX`:
    /// until [`Workload::stop`]).
    pub async fn spawn(
        &self,
        c: &ProcCluster,
        workers: u64,
        ops: u64,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let client = c.client(options()).await;
            let (history, stamp, max_slot, acked, stop) = (
                self.history.clone(),
                self.stamp.clone(),
                self.max_slot.clone(),
                self.acked_puts.clone(),
                self.stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..ops {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("k{}", i % 3);
                    let (op, bytes) = if i % 3 != 2 {
                        let v = format!("w{w}-{i}");
                        (
                            KvOp::Put {
                                key: Bytes::from(key.clone()),
                                value: Bytes::from(v.clone()),
                            },
                            put(&key, &v),
                        )
                    } else {
                        (
                            KvOp::Get {
                                key: Bytes::from(key.clone()),
                            },
                            get(&key),
                        )
                    };
                    let is_read = op.is_read();
                    let invoke = stamp.fetch_add(1, Ordering::SeqCst);
                    let response = match client.call(bytes).await {
                        Ok(r) => {
                            max_slot.fetch_max(r.slot.0, Ordering::SeqCst);
                            if !is_read {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Some((stamp.fetch_add(1, Ordering::SeqCst), decode(&r.payload)))
                        }
                        // Unknown outcome: the checker lets it have happened or not.
                        Err(ClientError::Timeout) => None,
                        Err(e) => panic!("worker {w}: {e}"),
                    };
                    history.lock().unwrap().push(HistoryOp {
                        client: w,
                        op,
                        invoke,
                        response,
                        witness: None,
                    });
                }
            }));
        }
        tasks
    }

    /// Makes every worker stop after its current operation.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The highest acknowledged slot.
    pub fn slot(&self) -> u64 {
        self.max_slot.load(Ordering::SeqCst)
    }

    /// Reads every key at the end (so a lost acknowledged write shows) and
    /// checks the whole history.
    pub async fn check(&self, c: &ProcCluster) {
        let client = c.client(options()).await;
        for k in 0..3 {
            let key = format!("k{k}");
            let invoke = self.stamp.fetch_add(1, Ordering::SeqCst);
            let r = call_until_ok(&client, get(&key)).await;
            let response = Some((
                self.stamp.fetch_add(1, Ordering::SeqCst),
                decode(&r.payload),
            ));
            self.history.lock().unwrap().push(HistoryOp {
                client: 999,
                op: KvOp::Get {
                    key: Bytes::from(key),
                },
                invoke,
                response,
                witness: None,
            });
        }
        let h = self.history.lock().unwrap().clone();
        // A long history: the checker's search recurses per operation, so
        // it gets a stack to match.
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || {
                linearizability::check(&h).unwrap_or_else(|e| panic!("not linearizable: {e:?}"))
            })
            .expect("a checker thread")
            .join()
            .expect("the history is linearizable");
    }
}
