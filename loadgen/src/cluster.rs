//! Starts the cluster an experiment runs against, and stops it.
//!
//! - **inproc**: [`EmbeddedCluster`] in this process; every replica shares
//!   this process's [`Lab`].
//! - **process**: one `replica` process per replica on loopback TCP. Each
//!   child dies with this process (`PR_SET_PDEATHSIG`), is killed when its
//!   handle is dropped (an error, Ctrl-C), and is stopped with SIGTERM at
//!   the end so it writes its lab figures. Storage made for the run
//!   (`/dev/shm` logs, WAL directories) is removed in every case.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use engine::client::{Client, ClientOptions};
use engine::core::{ClusterId, ReplicaId, RoleKind};
use engine::embedded::{EmbeddedCluster, EmbeddedOptions};
use engine::instrumentation::{Lab, LabFile, ProcessUsage};
use engine::kv::KvOp;
use engine::runtime::file::{
    CheckpointSection, LimitsSection, Member, ProtocolSection, ReplicaFile, StorageSection,
};
use engine::transport::net::Network;

use crate::spec::{Backend, FaultKind, Mode, Server, Spec};
use loadgen::faultnet::FaultNet;

/// What each process reported at the end.
#[derive(Clone, Debug)]
pub struct ProcessReport {
    pub id: u32,
    pub role: String,
    pub file: LabFile,
}

pub struct Cluster {
    pub cluster: ClusterId,
    pub network: Network,
    addresses: Vec<String>,
    kind: Kind,
    /// Storage created for this run, removed at the end.
    scratch: Vec<PathBuf>,
    /// Process mode with a `[fault]`: the fault network between the
    /// replicas (and the clients), and where the replicas listen.
    pub net: Option<(FaultNet, Vec<String>)>,
}

#[allow(clippy::large_enum_variant)]
enum Kind {
    InProc {
        cluster: Option<EmbeddedCluster>,
        lab: Option<Arc<Lab>>,
    },
    Process {
        children: Vec<Child>,
    },
}

struct Child {
    id: u32,
    proc: tokio::process::Child,
    lab_out: PathBuf,
    log: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Kind::Process { children } = &mut self.kind {
            for c in children.iter_mut() {
                let _ = c.proc.start_kill();
            }
        }
        for p in &self.scratch {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// The replica configuration file for `id` (process mode writes it; inproc
/// resolves the same file, so both modes run the same settings).
pub fn replica_file(
    spec: &Spec,
    id: u32,
    cluster: ClusterId,
    addresses: &[String],
    paths: ReplicaPaths,
) -> ReplicaFile {
    let ReplicaPaths {
        log: storage,
        checkpoints,
    } = paths;
    let c = &spec.cluster;
    let backend = match c.server {
        Server::Paxos => c.storage.of(id),
        Server::Null => Backend::Mem,
    };
    ReplicaFile {
        cluster_id: cluster.0,
        replica_id: id,
        listen: None,
        worker_threads: c
            .worker_threads
            .unwrap_or(engine::runtime::file::WORKER_THREADS_DEFAULT),
        join: false,
        join_epoch: 0,
        tls: None,
        members: addresses
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                id: i as u32 + 1,
                address: a.clone(),
                spare: false,
            })
            .collect(),
        checkpoint: CheckpointSection {
            enabled: Some(checkpoints.is_some()),
            dir: checkpoints,
            every_slots: Some(c.checkpoint_every_slots.max(1)),
            ..CheckpointSection::default()
        },
        storage: StorageSection {
            backend: backend.name().into(),
            path: storage,
            nvm_bytes: c.nvm_bytes,
            flush: c.nvm_flush.clone(),
            ..StorageSection::default()
        },
        protocol: ProtocolSection {
            tick_ms: Some(c.tick_ms),
            window_slots_max: Some(c.window),
            batch_commands_max: Some(c.batch_commands_max),
            batch_bytes_max: Some(c.batch_bytes_max),
            queue_commands_max: Some(c.queue_commands_max),
            log_retained_slots_max: (c.log_retained_slots_max > 0)
                .then_some(c.log_retained_slots_max),
            ..ProtocolSection::default()
        },
        limits: LimitsSection {
            client_outstanding_max: Some(c.client_outstanding_max),
            ..LimitsSection::default()
        },
    }
}

fn fresh_cluster_id() -> ClusterId {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    ClusterId((t ^ (u64::from(std::process::id()) << 32)) | 1)
}

/// Where a replica keeps its log and its checkpoints for a run.
#[derive(Clone, Debug, Default)]
pub struct ReplicaPaths {
    /// `None`: in memory.
    pub log: Option<PathBuf>,
    /// `None`: no checkpoints (`checkpoint_every_slots = 0`, or the null
    /// server).
    pub checkpoints: Option<PathBuf>,
}

/// Where replica `id` keeps its log and checkpoints for this run, in the
/// run's scratch directory. A replica on in-memory storage checkpoints
/// too (into `nvm_dir`, memory on Linux): without, its log, which stands
/// for a disk, keeps every slot of the run (inproc-mem grew 300 MB a
/// second, and faulting that memory in was a fifth of its CPU).
fn storage_path(
    spec: &Spec,
    run: &str,
    id: u32,
    scratch: &mut Vec<PathBuf>,
) -> Result<ReplicaPaths> {
    let backend = match spec.cluster.server {
        Server::Paxos => spec.cluster.storage.of(id),
        Server::Null => return Ok(ReplicaPaths::default()),
    };
    let checkpoints = spec.cluster.checkpoint_every_slots > 0;
    let base = match backend {
        Backend::Mem if !checkpoints => return Ok(ReplicaPaths::default()),
        Backend::Mem | Backend::Nvm => spec.cluster.nvm_dir.clone(),
        Backend::Wal if spec.cluster.wal_dir.as_os_str().is_empty() => std::env::temp_dir(),
        Backend::Wal => spec.cluster.wal_dir.clone(),
    };
    sweep_stale(&base);
    let dir = base.join(format!("paxos-lab-{run}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !scratch.contains(&dir) {
        scratch.push(dir.clone());
    }
    let log = match backend {
        Backend::Mem => None,
        Backend::Nvm => Some(dir.join(format!("r{id}.nvm"))),
        Backend::Wal => Some(dir.join(format!("r{id}.wal"))),
    };
    Ok(ReplicaPaths {
        log,
        checkpoints: checkpoints.then(|| dir.join(format!("r{id}.checkpoints"))),
    })
}

impl Cluster {
    /// Starts the cluster of `spec`; `lab`: this process's lab (inproc
    /// replicas record into it). `run` names the run (storage paths);
    /// `run_dir` receives process mode's configurations and logs.
    pub async fn start(
        spec: &Spec,
        run: &str,
        run_dir: &Path,
        lab: Option<Arc<Lab>>,
        replica_bin: &Path,
        profile: bool,
    ) -> Result<Cluster> {
        let cluster = fresh_cluster_id();
        let n = spec.replica_count();
        let mut scratch = Vec::new();
        match spec.cluster.mode {
            Mode::Inproc => {
                let addresses: Vec<String> = (1..=n)
                    .map(|i| format!("inproc://{}/replica-{i}", cluster.0))
                    .collect();
                let mut files = Vec::new();
                for id in 1..=n {
                    let path = storage_path(spec, run, id, &mut scratch)?;
                    files.push(replica_file(spec, id, cluster, &addresses, path));
                }
                let mut resolved = Vec::new();
                for f in &files {
                    let (mut cfg, storage) = f
                        .resolve("experiment spec")
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    cfg.lab = lab.clone();
                    cfg.null_server = spec.cluster.server == Server::Null;
                    resolved.push((cfg, storage));
                }
                let resolved = Arc::new(resolved);
                let mut opts = EmbeddedOptions::mem(cluster, n);
                let r = resolved.clone();
                opts.storage = Arc::new(move |id| r[(id.0 - 1) as usize].1.clone());
                let r = resolved.clone();
                opts.configure = Arc::new(move |cfg| {
                    let seed = cfg.core.seed;
                    *cfg = r[(cfg.core.id.0 - 1) as usize].0.clone();
                    cfg.core.seed = seed;
                });
                let c = EmbeddedCluster::start(opts)
                    .await
                    .context("starting the in-process cluster")?;
                Ok(Cluster {
                    cluster,
                    network: c.network.clone(),
                    addresses: c.addresses(),
                    kind: Kind::InProc {
                        cluster: Some(c),
                        lab,
                    },
                    scratch,
                    net: None,
                })
            }
            Mode::Process => {
                if !replica_bin.exists() {
                    bail!(
                        "no replica binary at {} (build it: cargo build --release -p engine --bin replica, \
                         or run through make experiment)",
                        replica_bin.display()
                    );
                }
                let listen = free_ports(n as usize)?;
                // With a fault to inject, peers and clients reach each
                // replica through the fault network's fronts.
                let net = if spec.fault.kind != FaultKind::None {
                    let replicas: Vec<(u32, String)> =
                        (1..=n).zip(listen.iter().cloned()).collect();
                    Some(FaultNet::start(cluster, &replicas).await?)
                } else {
                    None
                };
                let (peers, clients) = match &net {
                    Some(net) => (
                        (1..=n).map(|id| net.peer_address(id).to_string()).collect(),
                        net.client_addresses(),
                    ),
                    None => (listen.clone(), listen.clone()),
                };
                let mut c = Cluster {
                    cluster,
                    network: Network::Tcp,
                    addresses: clients,
                    kind: Kind::Process {
                        children: Vec::new(),
                    },
                    scratch,
                    net: net.map(|n| (n, listen.clone())),
                };
                for id in 1..=n {
                    let path = storage_path(spec, run, id, &mut c.scratch)?;
                    let mut file = replica_file(spec, id, cluster, &peers, path);
                    file.listen = Some(listen[(id - 1) as usize].clone());
                    let conf = run_dir.join(format!("replica-{id}.toml"));
                    std::fs::write(&conf, toml::to_string(&file)?)
                        .with_context(|| format!("cannot write {}", conf.display()))?;
                    let lab_out = run_dir.join(format!("lab-{id}.json"));
                    let log = run_dir.join(format!("replica-{id}.log"));
                    let mut cmd = tokio::process::Command::new(replica_bin);
                    cmd.arg("--config").arg(&conf).arg("--bootstrap");
                    if spec.trace.enabled {
                        cmd.arg("--lab-out")
                            .arg(&lab_out)
                            .arg("--lab-sample-every")
                            .arg(spec.trace.sample_every.to_string());
                    }
                    if profile {
                        cmd.arg("--profile-out")
                            .arg(run_dir.join(format!("flamegraph-{id}.svg")));
                    }
                    if spec.cluster.server == Server::Null {
                        cmd.arg("--null-server");
                    }
                    let logf = std::fs::File::create(&log)?;
                    cmd.stdout(std::process::Stdio::null())
                        .stderr(logf)
                        .env(
                            "RUST_LOG",
                            std::env::var("REPLICA_LOG").unwrap_or_else(|_| "info".into()),
                        )
                        .kill_on_drop(true);
                    // SAFETY: prctl in the child between fork and exec is
                    // async-signal-safe; it makes the child die with us.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let proc = cmd
                        .spawn()
                        .with_context(|| format!("cannot start {}", replica_bin.display()))?;
                    if let Kind::Process { children } = &mut c.kind {
                        children.push(Child {
                            id,
                            proc,
                            lab_out,
                            log,
                        });
                    }
                }
                Ok(c)
            }
        }
    }

    pub fn addresses(&self) -> Vec<String> {
        self.addresses.clone()
    }

    /// A client of this cluster.
    pub async fn client(&self, options: ClientOptions) -> Result<Client> {
        Client::connect(
            self.network.clone(),
            self.cluster,
            self.addresses(),
            options,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect a client: {e}"))
    }

    /// Waits until the cluster commits a write (a leader exists and
    /// replicates), failing with the replicas' logs if one died.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let client = loop {
            self.check_alive()?;
            match Client::connect(
                self.network.clone(),
                self.cluster,
                self.addresses(),
                ClientOptions {
                    deadline: Duration::from_secs(2),
                    ..ClientOptions::default()
                },
            )
            .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > end => {
                    bail!("no replica answered within {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let op = KvOp::Put {
            key: Bytes::from_static(b"__ready"),
            value: Bytes::from_static(b"1"),
        }
        .encode();
        loop {
            self.check_alive()?;
            match client.call(op.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() > end => {
                    bail!("the cluster committed nothing within {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        client.close().await;
        Ok(())
    }

    /// Watches the replica processes: sets `died` and `stop` as soon as one
    /// exits (a storage failure, a crash), so the load stops at once.
    pub fn watch(
        &self,
        died: Arc<std::sync::atomic::AtomicBool>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        use std::sync::atomic::Ordering;
        let Kind::Process { children } = &self.kind else {
            return None;
        };
        let pids: Vec<u32> = children.iter().filter_map(|c| c.proc.id()).collect();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let dead = pids.iter().any(|pid| {
                    // Gone, or a zombie waiting for us to reap it.
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map(|st| {
                            st.rsplit(')')
                                .next()
                                .is_some_and(|r| r.trim_start().starts_with('Z'))
                        })
                        .unwrap_or(true)
                });
                if dead {
                    died.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }))
    }

    /// Fails, with the end of its log, if a replica process exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Kind::Process { children } = &mut self.kind {
            for c in children.iter_mut() {
                if let Some(status) = c.proc.try_wait()? {
                    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    bail!(
                        "replica {} exited ({status}); the end of its log ({}):\n{}",
                        c.id,
                        c.log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        Ok(())
    }

    /// Returns a function that reads the CPU seconds (user + system) each
    /// process has used so far: this one (id 0: the load generator, and
    /// the replicas too in-process) and each replica process (from
    /// `/proc/<pid>/stat`; an exited child not yet reaped reads its final
    /// figure, a reaped one as absent).
    pub fn cpu_probe(&self) -> Box<dyn Fn() -> Vec<(u32, f64)> + Send + Sync> {
        let children: Vec<(u32, u32)> = match &self.kind {
            Kind::InProc { .. } => Vec::new(),
            Kind::Process { children } => children
                .iter()
                .filter_map(|c| c.proc.id().map(|pid| (c.id, pid)))
                .collect(),
        };
        Box::new(move || {
            let me = ProcessUsage::now();
            let mut out = vec![(0, me.user_s + me.sys_s)];
            for (id, pid) in &children {
                if let Some(s) = process_cpu_s(*pid) {
                    out.push((*id, s));
                }
            }
            out
        })
    }

    /// Returns a function that makes every replica forget its lab figures
    /// so far (the end of the warmup): SIGUSR1 to replica processes.
    pub fn figure_reset(&self) -> Box<dyn FnOnce() + Send> {
        match &self.kind {
            Kind::InProc { lab, .. } => {
                let lab = lab.clone();
                Box::new(move || {
                    if let Some(l) = lab {
                        l.reset();
                    }
                })
            }
            Kind::Process { children } => {
                let pids: Vec<u32> = children.iter().filter_map(|c| c.proc.id()).collect();
                Box::new(move || {
                    for pid in pids {
                        // SAFETY: signalling our own child by pid.
                        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
                    }
                })
            }
        }
    }

    /// The replica whose status says it leads, asked where each listens
    /// (past the fault network); `None` if none does.
    pub async fn leader_by_status(&self) -> Option<u32> {
        let listen = match &self.net {
            Some((_, listen)) => listen.clone(),
            None => self.addresses.clone(),
        };
        for (i, a) in listen.iter().enumerate() {
            if let Ok(s) = engine::client::fetch_status(
                &self.network,
                self.cluster,
                a,
                Duration::from_millis(500),
            )
            .await
                && s.role == "leader"
            {
                return Some(i as u32 + 1);
            }
        }
        None
    }

    /// The current leader, if known (inproc only; process mode learns it
    /// from the replicas' reports at the end).
    pub fn leader(&self) -> Option<u32> {
        match &self.kind {
            Kind::InProc {
                cluster: Some(c), ..
            } => (1..=self.addresses.len() as u32).find(|i| {
                c.status(ReplicaId(*i))
                    .is_some_and(|s| s.role == Some(RoleKind::Leader))
            }),
            _ => None,
        }
    }

    /// Stops every replica and collects what each reported.
    pub async fn stop(mut self) -> Result<Vec<ProcessReport>> {
        let mut reports = Vec::new();
        let leader = self.leader();
        match &mut self.kind {
            Kind::InProc { cluster, lab } => {
                if let Some(c) = cluster.take() {
                    c.shutdown().await;
                }
                // One lab for the whole process: split per replica by track.
                if let Some(lab) = lab {
                    let (hist, events) = lab.snapshot();
                    reports.push(ProcessReport {
                        id: 0,
                        role: "process".into(),
                        file: LabFile {
                            process: 0,
                            name: "in-process cluster".into(),
                            role: String::new(),
                            slots_proposed: 0,
                            histograms: hist.encode(),
                            events,
                            events_dropped: lab.dropped_events(),
                            usage: ProcessUsage::now(),
                            flush_mode: None,
                        },
                    });
                }
                for id in 1..=self.addresses.len() as u32 {
                    reports.push(ProcessReport {
                        id,
                        role: if Some(id) == leader {
                            "leader".into()
                        } else {
                            "follower".into()
                        },
                        file: LabFile {
                            process: id,
                            name: format!("replica {id}"),
                            ..LabFile::default()
                        },
                    });
                }
            }
            Kind::Process { children } => {
                for c in children.iter() {
                    if let Some(pid) = c.proc.id() {
                        // SAFETY: signalling our own child by pid.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                }
                for c in children.iter_mut() {
                    match tokio::time::timeout(Duration::from_secs(15), c.proc.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => {
                            eprintln!(
                                "loadgen: replica {} exited with {status} (log: {})",
                                c.id,
                                c.log.display()
                            )
                        }
                        Ok(Err(e)) => eprintln!("loadgen: waiting for replica {}: {e}", c.id),
                        Err(_) => {
                            eprintln!(
                                "loadgen: replica {} ignored SIGTERM for 15 s; killing it",
                                c.id
                            );
                            let _ = c.proc.kill().await;
                        }
                    }
                    let file = match std::fs::read(&c.lab_out) {
                        Ok(bytes) => serde_json::from_slice::<LabFile>(&bytes)
                            .with_context(|| format!("reading {}", c.lab_out.display()))?,
                        Err(_) => LabFile {
                            process: c.id,
                            name: format!("replica {}", c.id),
                            ..LabFile::default()
                        },
                    };
                    reports.push(ProcessReport {
                        id: c.id,
                        role: file.role.clone(),
                        file,
                    });
                }
            }
        }
        Ok(reports)
    }
}

/// Removes run storage left by a load generator that was killed outright
/// (`paxos-lab-RUN-PID` whose PID is gone): a SIGKILL leaves no chance to
/// clean up, and `/dev/shm` is memory.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("paxos-lab-") else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `n` loopback addresses with ports free right now.
fn free_ports(n: usize) -> Result<Vec<String>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("cannot find free loopback ports")?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?)
}

/// User + system CPU seconds process `pid` has used, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_s_of_stat(&stat)
}

/// The CPU seconds in a `/proc/<pid>/stat` line: after the command name
/// (in parentheses, which may hold spaces), field 3 is the state and
/// fields 14 and 15 are user and system time in clock ticks.
fn cpu_s_of_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    // SAFETY: sysconf reads no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((ticks(11)? + ticks(12)?) as f64 / hz)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_time() {
        // SAFETY: sysconf reads no memory of ours.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "4242 (replica (r1)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        let s = cpu_s_of_stat(line).unwrap();
        assert!((s - 300.0 / hz).abs() < 1e-9, "{s}");
        assert_eq!(cpu_s_of_stat("garbage"), None);
        // This process, read back: positive and at most what rusage says.
        let mine = process_cpu_s(std::process::id()).unwrap();
        let usage = ProcessUsage::now();
        assert!(
            mine >= 0.0 && mine <= usage.user_s + usage.sys_s + 0.05,
            "{mine}"
        );
    }
}
