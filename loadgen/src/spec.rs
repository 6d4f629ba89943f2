//! An experiment's specification: `experiments/NAME.toml`.
//!
//! Every field has a default, so a spec says only what it changes; the
//! runner writes the resolved spec (every field) as the run's
//! `config.toml`. Unknown keys are errors: a typo must not silently run the
//! default experiment.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// One line saying what the experiment shows.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cluster: ClusterSpec,
    #[serde(default)]
    pub load: LoadSpec,
    #[serde(default)]
    pub trace: TraceSpec,
    #[serde(default)]
    pub profile: ProfileSpec,
    #[serde(default)]
    pub fault: FaultSpec,
}

/// A fault injected into a process-mode cluster during the measurement:
/// the replicas talk through the fault network (`loadgen::faultnet`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// When, in seconds after the warmup.
    pub at_s: f64,
    /// For how long, seconds; then every link heals.
    pub for_s: f64,
    /// How the cut links behave.
    pub cut: CutKind,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CutKind {
    /// Nothing moves and connections stay open: the senders learn nothing
    /// until their own timeouts, and what the proxy held is delivered when
    /// the link heals (as TCP would after a short partition).
    Blackhole,
    /// Connections are closed and new ones refused: the senders see the
    /// peer unreachable and discard what they would send it, so the cut
    /// replica catches up after the heal.
    Refuse,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            kind: FaultKind::None,
            at_s: 2.0,
            for_s: 2.0,
            cut: CutKind::Blackhole,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// No fault (and no fault network).
    None,
    /// The leader cut off from its peers both ways (a black hole); its
    /// clients still reach it.
    IsolateLeader,
    /// The leader's messages to its peers dropped; theirs to it arrive.
    MuteLeader,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every replica and the load generator in one process, over the
    /// in-process network (no sockets).
    Inproc,
    /// One `replica` process per replica, on loopback TCP.
    Process,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// The replicated engine.
    Paxos,
    /// One server that answers at once without the log or replication: the
    /// ceiling of the client path (transport and load generator).
    Null,
}

pub use engine::storage::Backend;

/// One backend for every replica, or one per replica.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StorageChoice {
    All(Backend),
    PerReplica(Vec<Backend>),
}

impl StorageChoice {
    pub fn of(&self, replica: u32) -> Backend {
        match self {
            StorageChoice::All(b) => *b,
            StorageChoice::PerReplica(v) => v[(replica - 1) as usize],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    pub mode: Mode,
    pub server: Server,
    pub replicas: u32,
    pub storage: StorageChoice,
    /// Slots in flight (1: RSL's one proposal at a time).
    pub window: u32,
    /// Commands per slot (1: no batching).
    pub batch_commands_max: u32,
    pub batch_bytes_max: u32,
    /// Commands waiting at the leader before clients are told `Busy`.
    pub queue_commands_max: u32,
    /// Tokio worker threads: of the whole process (inproc; default 2), of
    /// each replica (process; 0 = the current-thread scheduler; default
    /// the replica's own, `WORKER_THREADS_DEFAULT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// NVM: the flush instruction (auto | clwb | clflushopt | clflush | msync).
    pub nvm_flush: String,
    /// NVM: where the log files go (a tmpfs stands in for persistent memory).
    pub nvm_dir: PathBuf,
    /// NVM: bytes of each replica's log.
    pub nvm_bytes: u64,
    /// WAL: where segment directories go (a real disk; empty = the system
    /// temporary directory).
    pub wal_dir: PathBuf,
    pub tick_ms: u64,
    /// Commands one client connection may have in flight at a replica.
    pub client_outstanding_max: usize,
    /// Checkpoint (and truncate the log) every this many applied slots; 0:
    /// never (the log must then hold the whole run).
    pub checkpoint_every_slots: u64,
    /// Applied slots each replica keeps for catch-up (0: the replica's
    /// default); a replica further behind catches up by checkpoint.
    pub log_retained_slots_max: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            mode: Mode::Inproc,
            server: Server::Paxos,
            replicas: 3,
            storage: StorageChoice::All(Backend::Nvm),
            window: 256,
            batch_commands_max: 256,
            batch_bytes_max: 256 * 1024,
            queue_commands_max: 16 * 1024,
            worker_threads: None,
            nvm_flush: "auto".into(),
            nvm_dir: PathBuf::from("/dev/shm"),
            nvm_bytes: 1 << 30,
            wal_dir: PathBuf::new(),
            tick_ms: 10,
            client_outstanding_max: 4096,
            checkpoint_every_slots: 50_000,
            log_retained_slots_max: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// `clients` × `outstanding`: each finished call starts the next.
    Closed,
    /// A fixed arrival rate; latency is measured from each call's intended
    /// start (coordinated omission corrected).
    Open,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Reads go through the log (linearizable).
    Log,
    /// RSL's fast read at the connected replica (session consistency).
    Fast,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadSpec {
    pub mode: LoadMode,
    /// Client connections (one client library session each).
    pub clients: u32,
    /// Calls in flight per client (closed loop: always; open loop: at most).
    pub outstanding: u32,
    /// Open loop: offered operations per second, all clients together.
    pub rate: f64,
    /// Open loop: a sweep, one step per rate (each `warmup_s + duration_s`).
    pub rates: Vec<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub value_bytes: usize,
    /// Fraction of operations that are reads (gets); the rest are puts.
    pub read_ratio: f64,
    pub read_mode: ReadMode,
    pub keys: u64,
    pub distribution: Distribution,
    /// Zipf skew (0.99: YCSB's default).
    pub zipf_theta: f64,
    /// A call unanswered this long fails as a timeout.
    pub deadline_ms: u64,
    /// Seed of the key and operation choice.
    pub seed: u64,
    /// Tokio worker threads of the load generator in process mode (in
    /// process mode the replicas need the cores; inproc runs everything on
    /// `cluster.worker_threads`).
    pub threads: usize,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            mode: LoadMode::Closed,
            clients: 4,
            outstanding: 64,
            rate: 0.0,
            rates: Vec::new(),
            warmup_s: 1.0,
            duration_s: 5.0,
            value_bytes: 64,
            read_ratio: 0.0,
            read_mode: ReadMode::Log,
            keys: 100_000,
            distribution: Distribution::Uniform,
            zipf_theta: 0.99,
            deadline_ms: 10_000,
            seed: 1,
            threads: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSpec {
    /// Measure every stage (per-stage histograms) and write a trace of the
    /// sampled commands. Off: nothing is measured inside the engine.
    pub enabled: bool,
    /// Trace one command in N (a hash of the command id: the same commands
    /// on every replica).
    pub sample_every: u64,
    /// Most trace events kept per process.
    pub events_max: usize,
}

impl Default for TraceSpec {
    fn default() -> Self {
        TraceSpec {
            enabled: true,
            sample_every: 1024,
            events_max: 200_000,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileSpec {
    /// pprof the leader (process mode) or the whole process (inproc) and
    /// write `flamegraph.svg`.
    pub enabled: bool,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Spec::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Applies `--set section.key=value` overrides (TOML values).
    pub fn with_overrides(self, sets: &[String]) -> Result<Spec> {
        if sets.is_empty() {
            return Ok(self);
        }
        let mut v = toml::Value::try_from(&self)?;
        for s in sets {
            let (path, value) = s
                .split_once('=')
                .with_context(|| format!("--set {s}: expected section.key=value"))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("x = {value}"))
                .or_else(|_| toml::from_str::<toml::Table>(&format!("x = \"{value}\"")))
                .with_context(|| format!("--set {s}: not a TOML value"))?
                .remove("x")
                .expect("parsed");
            let mut at = &mut v;
            let keys: Vec<&str> = path.split('.').collect();
            for k in &keys[..keys.len() - 1] {
                at = at
                    .get_mut(*k)
                    .with_context(|| format!("--set {s}: no section {k}"))?;
            }
            let table = at
                .as_table_mut()
                .with_context(|| format!("--set {s}: not a section"))?;
            table.insert(keys[keys.len() - 1].to_string(), value);
        }
        let spec: Spec = v.try_into()?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        let c = &self.cluster;
        let l = &self.load;
        if c.server == Server::Paxos && !(1..=9).contains(&c.replicas) {
            bail!("cluster.replicas must be 1..=9, not {}", c.replicas);
        }
        if let StorageChoice::PerReplica(v) = &c.storage
            && v.len() != c.replicas as usize
        {
            bail!(
                "cluster.storage lists {} backends for {} replicas",
                v.len(),
                c.replicas
            );
        }
        if c.window == 0 || c.batch_commands_max == 0 {
            bail!("cluster.window and cluster.batch_commands_max must be at least 1");
        }
        if l.clients == 0 || l.outstanding == 0 {
            bail!("load.clients and load.outstanding must be at least 1");
        }
        if !(0.0..=1.0).contains(&l.read_ratio) {
            bail!("load.read_ratio must be within 0..=1");
        }
        if l.keys == 0 {
            bail!("load.keys must be at least 1");
        }
        if l.duration_s <= 0.0 || l.warmup_s < 0.0 {
            bail!("load.duration_s must be positive and load.warmup_s not negative");
        }
        if l.mode == LoadMode::Open {
            if l.rates.is_empty() && l.rate <= 0.0 {
                bail!("an open-loop load needs load.rate or load.rates");
            }
            if l.rates.iter().any(|r| *r <= 0.0) {
                bail!("load.rates must be positive");
            }
        } else if !l.rates.is_empty() {
            bail!("load.rates is for open-loop sweeps (load.mode = \"open\")");
        }
        let f = &self.fault;
        if f.kind != FaultKind::None {
            if c.mode != Mode::Process || c.server != Server::Paxos || c.replicas < 3 {
                bail!("a [fault] needs cluster.mode = \"process\" and 3 or more Paxos replicas");
            }
            if f.at_s < 0.0 || f.for_s <= 0.0 || f.at_s + f.for_s > l.duration_s {
                bail!("fault.at_s + fault.for_s must fall within load.duration_s");
            }
        }
        if self.trace.enabled && self.trace.events_max == 0 && self.trace.sample_every != 0 {
            bail!("trace.events_max must be positive when sampling");
        }
        Ok(())
    }

    /// The offered rates of an open-loop run, one per step.
    pub fn steps(&self) -> Vec<Option<f64>> {
        match self.load.mode {
            LoadMode::Closed => vec![None],
            LoadMode::Open if self.load.rates.is_empty() => vec![Some(self.load.rate)],
            LoadMode::Open => self.load.rates.iter().map(|r| Some(*r)).collect(),
        }
    }

    /// Replicas to start (the null server is one).
    pub fn replica_count(&self) -> u32 {
        match self.cluster.server {
            Server::Paxos => self.cluster.replicas,
            Server::Null => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_a_spec_leaves_out() {
        let s = Spec::parse("[load]\nclients = 2\n").unwrap();
        assert_eq!(s.load.clients, 2);
        assert_eq!(s.load.outstanding, 64);
        assert_eq!(s.cluster.replicas, 3);
        assert_eq!(s.cluster.storage, StorageChoice::All(Backend::Nvm));
        // The resolved spec round-trips.
        let text = toml::to_string(&s).unwrap();
        let back = Spec::parse(&text).unwrap();
        assert_eq!(back.load.clients, 2);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Spec::parse("[load]\nclient = 2\n").is_err());
        assert!(Spec::parse("[load]\nread_ratio = 2.0\n").is_err());
        assert!(Spec::parse("[load]\nmode = \"open\"\n").is_err());
        assert!(Spec::parse("[cluster]\nstorage = [\"nvm\"]\n").is_err());
        assert!(Spec::parse("[cluster]\nstorage = \"disk\"\n").is_err());
    }

    #[test]
    fn per_replica_storage_and_overrides() {
        let s = Spec::parse("[cluster]\nstorage = [\"nvm\", \"nvm\", \"wal\"]\n").unwrap();
        assert_eq!(s.cluster.storage.of(3), Backend::Wal);
        let s = s
            .with_overrides(&["load.clients=8".into(), "cluster.mode=process".into()])
            .unwrap();
        assert_eq!(s.load.clients, 8);
        assert_eq!(s.cluster.mode, Mode::Process);
        assert!(s.clone().with_overrides(&["load.nope=1".into()]).is_err());
        assert!(s.with_overrides(&["load.clients=0".into()]).is_err());
    }
}
