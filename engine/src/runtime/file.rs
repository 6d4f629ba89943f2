//! The replica's TOML configuration file.
//!
//! Every setting, its default and its meaning are in [`CONFIG_HELP`]
//! (printed by `replica --help`); [`EXAMPLE`] is a complete file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{NodeConfig, StorageSpec};
use crate::core::{ClusterId, Config, ReplicaId};
use crate::transport::net::Network;

/// What `--help` says about the file, setting by setting.
pub const CONFIG_HELP: &str = "\
CONFIGURATION FILE (TOML; unknown keys are errors)

  cluster_id = <u64>            required. Every message carries it; messages of
                                 other clusters are refused.
  replica_id = <u32>            required. This replica's id; must be listed
                                 in [[members]].
  listen = \"<host:port>\"        where to listen for peers and clients
                                 (default: this replica's member address).
  worker_threads = <n>          tokio worker threads (default 0: the replica's
                                 tasks run on the process's main thread, tokio's
                                 current-thread scheduler; n >= 1: a pool of n
                                 workers). The WAL's syncs and checkpoints have
                                 threads of their own either way.
  join = false                  this replica is not in the bootstrap
                                 configuration: it is (to be) added by a
                                 configuration change (`replica --change`),
                                 learns its configuration from the cluster and
                                 votes only once that change is chosen.
  join_epoch = 0                with join: the lowest epoch the change that
                                 adds it may have (0: the first configuration
                                 listing it after every removal it learns).
                                 Not needed to add a removed replica back.

  [[members]]                   one table per replica this one may talk to,
                                 itself included:
  id = <u32>                      its replica id
  address = \"<host:port>\"       where peers and clients reach it
  spare = false                   not in the bootstrap configuration: a
                                 replica that may be added later. The
                                 configuration in force is in the log and in
                                 checkpoints; this list is the address book.

  [storage]
  backend = \"nvm\"               mem | wal | nvm (default nvm).
                                 mem: volatile, tests and benchmarks only.
                                 wal: segment files on a disk, fdatasync.
                                 nvm: a memory-mapped log, cache-line flushes.
  path = \"<path>\"               nvm: the log file (default
                                 /dev/shm/paxos-<cluster>-<replica>.nvm);
                                 wal: the segment directory (default
                                 ./paxos-<cluster>-<replica>.wal).
  nvm_bytes = <n>               nvm: record area size (default 1 GiB).
  flush = \"auto\"                nvm: auto | clwb | clflushopt | clflush | msync
                                 (auto: the best the CPU has; msync for a file
                                 on a real disk).
  wal_segment_bytes = <n>       wal: segment size (default 64 MiB).

  [protocol]
  tick_ms = 10                  one logical tick.
  election_ticks = 10           election timeout: drawn from [t, 2t) ticks.
  heartbeat_ticks = 2           leader heartbeat period (< election_ticks / 2).
  retransmit_ticks = 4          resend unanswered Accepts / catch-up requests.
  window_slots_max = 256        slots in flight (1 = RSL classic: one proposal; at most 2048).
  batch_commands_max = 256      commands per slot (1 = no batching).
  batch_bytes_max = 262144      encoded bytes per slot.
  command_bytes_max = 1048576   largest client operation.
  queue_commands_max = 16384    commands waiting for a slot; then clients get Busy.
  queue_bytes_max = 67108864    bytes waiting for a slot.
  log_retained_slots_max = 65536  applied slots kept in memory for catch-up.
  log_retained_bytes_max = 134217728  payload bytes kept in memory; beyond, applied
                                 slots a checkpoint covers leave memory too.
  catchup_slots_max = 256       slots per catch-up answer.
  config_wait_ticks_max = 1000  ticks a configuration change waits for its
                                 new members to catch up before it is given up.

  [checkpoint]
  enabled = true                checkpoints and log truncation (default: on,
                                 except for backend mem).
  dir = \"<path>\"                where this replica's checkpoints go (default
                                 ./paxos-<cluster>-<replica>.checkpoints).
  every_slots = 50000           checkpoint after this many applied slots ...
  every_bytes = <1/4 of log_retained_bytes_max>  ... or applied payload bytes ...
  every_s = 60                  ... or this many seconds, if anything was applied.
  retain = 2                    checkpoints kept; the log is truncated behind
                                 the oldest (WAL segments deleted, NVM head moved).

  [limits]
  frame_bytes_max = 16777216    largest frame accepted.
  client_connections_max = 4096 client connections at once.
  client_outstanding_max = 4096 commands in flight per client connection.
  peer_queue_frames_max = 65536 frames queued per peer (beyond: dropped, resent).
  event_queue_max = 65536       events queued to the core (beyond: readers wait).
  peer_connections_max = 64     peer connections at once (beyond: refused).
  handshake_connections_max = 256  connections in their TLS handshake or before
                                 their hello; beyond, the oldest is evicted.
  client_frame_bytes_max = 2097152  largest frame from a client (what one
                                 client connection may buffer).
  client_idle_s = 300           a client connection with no complete frame
                                 for this long (up to twice it) is closed.

  [tls]                         mutual TLS on every connection (absent: plain TCP).
  cert = \"replica-1.pem\"        this replica's certificate chain (PEM, leaf first).
  key = \"replica-1.key\"         its private key (PEM).
  ca = [\"ca.pem\", \"ca-next.pem\"]  CAs a peer's chain may end at (several:
                                 rotate a CA without downtime).
  pinned_sha256 = [\"ab12...\"]   peer certificates trusted by fingerprint (RSL's
                                 thumbprints; list old and new to rotate).
  server_name = \"paxos.local\"   name a listener's certificate must carry (default:
                                 the host of the address connected to).
                                 Clients (kv, loadgen) need a certificate too.
";

/// A complete example (`replica --example-config`).
pub const EXAMPLE: &str = r#"cluster_id = 7
replica_id = 1

[[members]]
id = 1
address = "127.0.0.1:7101"

[[members]]
id = 2
address = "127.0.0.1:7102"

[[members]]
id = 3
address = "127.0.0.1:7103"

[storage]
backend = "nvm"
path = "/dev/shm/paxos-7-1.nvm"
nvm_bytes = 1073741824
flush = "auto"

[protocol]
tick_ms = 10
election_ticks = 10
heartbeat_ticks = 2
window_slots_max = 256
batch_commands_max = 256

[checkpoint]
dir = "paxos-7-1.checkpoints"
every_slots = 50000
every_s = 60
retain = 2
"#;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    pub cluster_id: u64,
    pub replica_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default = "default_workers")]
    pub worker_threads: usize,
    #[serde(default, skip_serializing_if = "is_false")]
    pub join: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub join_epoch: u64,
    pub members: Vec<Member>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub protocol: ProtocolSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Mutual TLS for every connection, inbound and outbound (absent:
    /// plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::transport::tls::TlsSettings>,
}

/// Checkpoints: absent keys take the documented defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_slots: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<usize>,
}

/// A replica's default tokio scheduler: 0, the current-thread one.
/// Against a pool of one worker on 2 cores it carried more in
/// `pipelined-nvm` in 12 of 14 pairs and cut `latency-curve`'s p99 at
/// 250K/s from 13.5-13.6 ms to 4.4-5.9 ms. By the lab's stages, frames
/// wait less to be read (`net.request` 94-111 -> 44-57 us at p50,
/// `accepted.transit` 78-93 -> 36-45 us) and replies less to be written
/// (100-113 -> 63-76 us), while the core's own waits grow (`leader.queue`
/// and `commit.wait` 1-2 -> 15-18 us). That fits how a pool worker
/// schedules: a task woken by the running task runs next (tokio's LIFO
/// slot), so the core task, woken by every reader, goes ahead of the
/// readers and writers already waiting. Figures: `experiments/RESULTS.md`,
/// issue 26, fourth session.
pub const WORKER_THREADS_DEFAULT: usize = 0;

fn default_workers() -> usize {
    WORKER_THREADS_DEFAULT
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u32,
    pub address: String,
    /// Not in the bootstrap configuration (an address for later).
    #[serde(default, skip_serializing_if = "is_false")]
    pub spare: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default = "default_nvm_bytes")]
    pub nvm_bytes: u64,
    #[serde(default = "default_flush")]
    pub flush: String,
    #[serde(default = "default_segment")]
    pub wal_segment_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: default_backend(),
            path: None,
            nvm_bytes: default_nvm_bytes(),
            flush: default_flush(),
            wal_segment_bytes: default_segment(),
        }
    }
}

fn default_backend() -> String {
    "nvm".into()
}
fn default_nvm_bytes() -> u64 {
    1 << 30
}
fn default_flush() -> String {
    "auto".into()
}
fn default_segment() -> u64 {
    64 << 20
}

/// Protocol settings; absent ones keep `Config::new`'s defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_ticks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ticks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmit_ticks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_slots_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_commands_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_bytes_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_bytes_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_commands_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_bytes_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retained_slots_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retained_bytes_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catchup_slots_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_wait_ticks_max: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_connections_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_outstanding_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_queue_frames_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_queue_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_connections_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_connections_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_frame_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_idle_s: Option<u64>,
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ReplicaFile {
    pub fn load(path: &Path) -> Result<ReplicaFile, ConfigFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: p.clone(),
            source,
        })?;
        ReplicaFile::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<ReplicaFile, ConfigFileError> {
        toml::from_str(text).map_err(|e| ConfigFileError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// The network this file's replica and its tools (`--status`,
    /// `--change`) use: TCP, with mutual TLS when `[tls]` is given.
    pub fn network(&self, path: &str) -> Result<Network, ConfigFileError> {
        match &self.tls {
            None => Ok(Network::Tcp),
            Some(t) => t
                .load()
                .map(|tls| Network::Tls(std::sync::Arc::new(tls)))
                .map_err(|e| ConfigFileError::Invalid {
                    path: path.to_string(),
                    message: format!("[tls]: {e}"),
                }),
        }
    }

    /// The ids of the bootstrap configuration: every listed replica but
    /// the spares.
    pub fn bootstrap_members(&self) -> impl Iterator<Item = u32> + '_ {
        self.members.iter().filter(|m| !m.spare).map(|m| m.id)
    }

    /// The runtime configuration and storage this file describes.
    pub fn resolve(&self, path: &str) -> Result<(NodeConfig, StorageSpec), ConfigFileError> {
        let invalid = |message: String| ConfigFileError::Invalid {
            path: path.to_string(),
            message,
        };
        let cluster = ClusterId(self.cluster_id);
        let id = ReplicaId(self.replica_id);
        let members: Vec<ReplicaId> = self.bootstrap_members().map(ReplicaId).collect();
        let addresses: Vec<(ReplicaId, String)> = self
            .members
            .iter()
            .map(|m| (ReplicaId(m.id), m.address.clone()))
            .collect();
        for (i, (a, _)) in addresses.iter().enumerate() {
            if addresses[..i].iter().any(|(b, _)| b == a) {
                return Err(invalid(format!(
                    "replica {} is listed twice in [[members]]",
                    a.0
                )));
            }
        }
        match self.members.iter().find(|m| m.id == id.0) {
            None => {
                return Err(invalid(format!(
                    "replica {} is not listed in [[members]] (its own address)",
                    id.0
                )));
            }
            Some(m) if m.spare && !self.join => {
                return Err(invalid(format!(
                    "replica {} is a spare: start it with `join = true` to be added \
                     by a configuration change",
                    id.0
                )));
            }
            Some(_) => {}
        }
        if self.join_epoch > 0 && !self.join {
            return Err(invalid(
                "join_epoch is for a replica with join = true".into(),
            ));
        }
        let mut core = Config::new(cluster, id, members);
        core.join = self.join;
        core.join_epoch = self.join_epoch;
        core.known_replicas = self.members.iter().map(|m| ReplicaId(m.id)).collect();
        let p = &self.protocol;
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = p.$f { core.$f = v; } )*};
        }
        set!(
            election_ticks,
            heartbeat_ticks,
            retransmit_ticks,
            window_slots_max,
            batch_commands_max,
            batch_bytes_max,
            command_bytes_max,
            queue_commands_max,
            queue_bytes_max,
            log_retained_slots_max,
            log_retained_bytes_max,
            catchup_slots_max,
            config_wait_ticks_max
        );
        core.fit_log_ahead_to_window();
        core.promise_lag_slots_max = core.promise_lag_slots_max.min(core.log_retained_slots_max);
        core.seed = u64::from(id.0) ^ std::process::id() as u64 ^ now_nanos();
        core.validate().map_err(|e| invalid(e.to_string()))?;
        let mut cfg = NodeConfig::new(core, addresses);
        if let Some(l) = &self.listen {
            cfg.listen = l.clone();
        }
        if cfg.listen.is_empty() {
            return Err(invalid(format!(
                "replica {id} has no member address and no listen address"
            )));
        }
        if let Some(t) = p.tick_ms {
            if t == 0 {
                return Err(invalid("tick_ms must be at least 1".into()));
            }
            cfg.tick = Duration::from_millis(t);
        }
        let l = &self.limits;
        macro_rules! lim {
            ($($f:ident),*) => {$( if let Some(v) = l.$f { if v == 0 { return Err(invalid(format!("{} must be at least 1", stringify!($f)))); } cfg.$f = v; } )*};
        }
        lim!(
            frame_bytes_max,
            client_connections_max,
            client_outstanding_max,
            peer_queue_frames_max,
            event_queue_max,
            peer_connections_max,
            handshake_connections_max,
            client_frame_bytes_max
        );
        if let Some(s) = l.client_idle_s {
            if s == 0 {
                return Err(invalid("client_idle_s must be at least 1".into()));
            }
            cfg.client_idle = Duration::from_secs(s);
        }
        let s = &self.storage;
        let spec = match s.backend.as_str() {
            "mem" => StorageSpec::Mem,
            "wal" => StorageSpec::Wal {
                dir: s
                    .path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("paxos-{}-{}.wal", cluster.0, id.0))),
                segment_bytes: s.wal_segment_bytes.max(4096),
            },
            "nvm" => StorageSpec::Nvm {
                path: s.path.clone().unwrap_or_else(|| {
                    PathBuf::from(format!("/dev/shm/paxos-{}-{}.nvm", cluster.0, id.0))
                }),
                bytes: s.nvm_bytes,
                flush: s.flush.parse().map_err(invalid)?,
            },
            other => {
                return Err(invalid(format!(
                    "unknown storage backend {other:?} (mem, wal or nvm)"
                )));
            }
        };
        if let StorageSpec::Nvm { bytes, .. } = spec
            && bytes < 64 * 1024
        {
            return Err(invalid("nvm_bytes must be at least 65536".into()));
        }
        let c = &self.checkpoint;
        if c.enabled.unwrap_or(spec != StorageSpec::Mem) {
            let retain = c.retain.unwrap_or(2);
            let every_slots = c.every_slots.unwrap_or(50_000);
            let ck = super::CheckpointConfig {
                dir: c.dir.clone().unwrap_or_else(|| {
                    PathBuf::from(format!("paxos-{}-{}.checkpoints", cluster.0, id.0))
                }),
                retain,
                every_slots,
                every_bytes: c.every_bytes.unwrap_or(cfg.core.log_retained_bytes_max / 4),
                every: Duration::from_secs(c.every_s.unwrap_or(60).max(1)),
            };
            ck.check(&cfg.core).map_err(invalid)?;
            cfg.checkpoint = Some(ck);
        }
        Ok((cfg, spec))
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why the file `text` does not resolve.
    fn refusal(text: &str) -> String {
        ReplicaFile::parse(text, "f")
            .unwrap()
            .resolve("f")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_example_is_valid() {
        let f = ReplicaFile::parse(EXAMPLE, "example").unwrap();
        let (cfg, spec) = f.resolve("example").unwrap();
        assert_eq!(cfg.core.id, ReplicaId(1));
        assert_eq!(cfg.listen, "127.0.0.1:7101");
        assert_eq!(spec.name(), "nvm");
        assert_eq!(cfg.core.members.len(), 3);
        // No `worker_threads`: the current-thread scheduler.
        assert_eq!(f.worker_threads, 0);
        let pool = ReplicaFile::parse(
            &EXAMPLE.replace("replica_id = 1", "replica_id = 1\nworker_threads = 2"),
            "f",
        )
        .unwrap();
        assert_eq!(pool.worker_threads, 2);
    }

    #[test]
    fn spares_are_addresses_and_a_joiner_starts_outside_the_configuration() {
        let four = EXAMPLE
            .replace("replica_id = 1", "replica_id = 4\njoin = true")
            .replace(
                "[storage]",
                "[[members]]\nid = 4\naddress = \"127.0.0.1:7104\"\nspare = true\n\n[storage]",
            );
        let (cfg, _) = ReplicaFile::parse(&four, "f")
            .unwrap()
            .resolve("f")
            .unwrap();
        assert_eq!(
            cfg.core.members,
            vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]
        );
        assert!(cfg.core.join);
        assert_eq!(cfg.addresses.len(), 4);
        assert_eq!(cfg.listen, "127.0.0.1:7104");
        // A member of the bootstrap configuration knows the spare's address.
        let member = four.replace("replica_id = 4\njoin = true", "replica_id = 2");
        let (cfg, _) = ReplicaFile::parse(&member, "f")
            .unwrap()
            .resolve("f")
            .unwrap();
        assert_eq!(cfg.core.members.len(), 3);
        assert!(!cfg.core.join);
        assert!(cfg.addresses.iter().any(|(id, _)| *id == ReplicaId(4)));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let unknown = format!("{EXAMPLE}\n[protocol2]\nx = 1\n");
        let e = ReplicaFile::parse(&unknown, "f").unwrap_err().to_string();
        assert!(e.contains("protocol2"), "{e}");
        let typo = EXAMPLE.replace("tick_ms", "tick_msec");
        let e = ReplicaFile::parse(&typo, "f").unwrap_err().to_string();
        assert!(e.contains("tick_msec"), "{e}");
        let not_member = EXAMPLE.replace("replica_id = 1", "replica_id = 9");
        let e = refusal(&not_member);
        assert!(e.contains("replica 9 is not listed in [[members]]"), "{e}");
        let twice = EXAMPLE.replace("id = 3\n", "id = 2\n");
        let e = refusal(&twice);
        assert!(e.contains("replica 2 is listed twice"), "{e}");
        // A spare runs only as a joiner.
        let spare = EXAMPLE.replace(
            "address = \"127.0.0.1:7101\"",
            "address = \"127.0.0.1:7101\"\nspare = true",
        );
        let e = refusal(&spare);
        assert!(e.contains("replica 1 is a spare"), "{e}");
        let epoch = EXAMPLE.replace("replica_id = 1", "replica_id = 1\njoin_epoch = 3");
        let e = refusal(&epoch);
        assert!(
            e.contains("join_epoch is for a replica with join = true"),
            "{e}"
        );
        let backend = EXAMPLE.replace("backend = \"nvm\"", "backend = \"tape\"");
        let e = refusal(&backend);
        assert!(e.contains("tape"), "{e}");
        let flush = EXAMPLE.replace("flush = \"auto\"", "flush = \"fast\"");
        let e = refusal(&flush);
        assert!(e.contains("unknown flush mode"), "{e}");
        // Checkpoints rarer than the retained log leave a lagging replica
        // nothing to catch up from.
        let rare = EXAMPLE.replace("every_slots = 50000", "every_slots = 70000");
        let e = refusal(&rare);
        assert!(
            e.contains("must be below log_retained_slots_max (65536)"),
            "{e}"
        );
        // So do checkpoints by bytes rarer than half the retained bytes.
        let rare = EXAMPLE.replace(
            "every_slots = 50000",
            "every_slots = 50000\nevery_bytes = 67108865",
        );
        let e = refusal(&rare);
        assert!(
            e.contains(
                "every_bytes (67108865) must be at most half of log_retained_bytes_max (134217728)"
            ),
            "{e}"
        );
        // A [tls] section is read when the network is built; a missing
        // file is named.
        let tls = format!(
            "{EXAMPLE}\n[tls]\ncert = \"/nonexistent/r1.pem\"\nkey = \"r1.key\"\nca = [\"ca.pem\"]\n"
        );
        let f = ReplicaFile::parse(&tls, "f").unwrap();
        assert!(matches!(
            f.network("f"),
            Err(ConfigFileError::Invalid { .. })
        ));
        let e = f.network("f").err().unwrap().to_string();
        assert!(
            e.contains("[tls]") && e.contains("/nonexistent/r1.pem"),
            "{e}"
        );
        let stray = format!("{tls}certificate = \"x\"\n");
        let e = ReplicaFile::parse(&stray, "f").unwrap_err().to_string();
        assert!(e.contains("certificate"), "{e}");
        assert!(matches!(
            ReplicaFile::parse(EXAMPLE, "f").unwrap().network("f"),
            Ok(Network::Tcp)
        ));
        let missing = ReplicaFile::load(Path::new("/nonexistent/replica.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read /nonexistent/replica.toml"),
            "{missing}"
        );
    }

    #[test]
    fn the_help_names_every_setting() {
        for key in [
            "cluster_id",
            "replica_id",
            "listen",
            "worker_threads",
            "join",
            "join_epoch",
            "members",
            "spare",
            "backend",
            "path",
            "nvm_bytes",
            "flush",
            "wal_segment_bytes",
            "tick_ms",
            "election_ticks",
            "heartbeat_ticks",
            "retransmit_ticks",
            "window_slots_max",
            "batch_commands_max",
            "batch_bytes_max",
            "command_bytes_max",
            "queue_commands_max",
            "queue_bytes_max",
            "log_retained_slots_max",
            "log_retained_bytes_max",
            "every_bytes",
            "catchup_slots_max",
            "config_wait_ticks_max",
            "frame_bytes_max",
            "client_connections_max",
            "client_outstanding_max",
            "peer_queue_frames_max",
            "event_queue_max",
            "peer_connections_max",
            "handshake_connections_max",
            "client_frame_bytes_max",
            "client_idle_s",
            "pinned_sha256",
            "server_name",
        ] {
            assert!(CONFIG_HELP.contains(key), "--help does not document {key}");
        }
    }
}
