//! `engine::embedded`: N replicas in one process, over an in-process
//! network (the lab's default and the end-to-end tests). The same runtime,
//! transport framing and client library as separate processes, without
//! sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, ClientOptions};
use crate::core::{ClusterId, Config, ReplicaId, RoleKind};
use crate::kv::KvStore;
use crate::runtime::{self, NodeConfig, NodeError, NodeHandle, NodeStatus, StorageSpec};
use crate::state_machine::StateMachine;
use crate::storage::StorageError;
use crate::transport::net::Network;

/// Storage of replica `id` (mem, or a path per replica).
pub type StorageFn = Arc<dyn Fn(ReplicaId) -> StorageSpec + Send + Sync>;
/// Adjusts each replica's configuration.
pub type ConfigureFn = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;
/// Makes replica `id`'s state machine (each start and restart).
pub type StateMachineFn = Arc<dyn Fn(ReplicaId) -> Box<dyn StateMachine + Send> + Send + Sync>;

/// How to build the embedded cluster.
#[derive(Clone)]
pub struct EmbeddedOptions {
    pub cluster: ClusterId,
    pub replicas: u32,
    pub storage: StorageFn,
    pub configure: ConfigureFn,
    /// The application (`None`: the key-value store, unboxed).
    pub state_machine: Option<StateMachineFn>,
}

impl EmbeddedOptions {
    /// `replicas` replicas on in-memory storage with the default configuration.
    pub fn mem(cluster: ClusterId, replicas: u32) -> EmbeddedOptions {
        EmbeddedOptions {
            cluster,
            replicas,
            storage: Arc::new(|_| StorageSpec::Mem),
            configure: Arc::new(|_| {}),
            state_machine: None,
        }
    }
}

/// Why the embedded cluster could not do something.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A running embedded cluster.
pub struct EmbeddedCluster {
    pub network: Network,
    options: EmbeddedOptions,
    addresses: Vec<(ReplicaId, String)>,
    nodes: Vec<Option<NodeHandle>>,
}

impl EmbeddedCluster {
    /// Starts every replica (bootstrapping its storage).
    pub async fn start(options: EmbeddedOptions) -> Result<EmbeddedCluster, EmbeddedError> {
        let addresses: Vec<(ReplicaId, String)> = (1..=options.replicas)
            .map(|i| {
                (
                    ReplicaId(i),
                    format!("inproc://{}/replica-{i}", options.cluster.0),
                )
            })
            .collect();
        let mut c = EmbeddedCluster {
            network: Network::inproc(),
            options,
            addresses,
            nodes: Vec::new(),
        };
        for i in 1..=c.options.replicas {
            let node = c.launch(ReplicaId(i), true).await?;
            c.nodes.push(Some(node));
        }
        Ok(c)
    }

    async fn launch(&self, id: ReplicaId, bootstrap: bool) -> Result<NodeHandle, EmbeddedError> {
        let members: Vec<ReplicaId> = self.addresses.iter().map(|(id, _)| *id).collect();
        let mut cfg = NodeConfig::new(
            Config::new(self.options.cluster, id, members),
            self.addresses.clone(),
        );
        cfg.core.seed = u64::from(id.0) ^ fresh_seed();
        (self.options.configure)(&mut cfg);
        let spec = (self.options.storage)(id);
        let opened = runtime::open_storage(&spec, self.options.cluster, id, bootstrap)?;
        let (mut storage, mut state) = (Some(opened.storage), Some(opened.state));
        // A killed replica's listener goes away when its task is dropped,
        // which may take a scheduling round.
        for attempt in 0.. {
            let (net, st, durable) = (
                self.network.clone(),
                storage.take().expect("once"),
                state.take().expect("once"),
            );
            let sync = opened.sync_thread;
            let r = match &self.options.state_machine {
                None => runtime::start(cfg.clone(), net, st, durable, KvStore::new(), sync).await,
                Some(make) => runtime::start(cfg.clone(), net, st, durable, make(id), sync).await,
            };
            match r {
                Err(NodeError::Listen { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && attempt < 100 =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let again = runtime::open_storage(&spec, self.options.cluster, id, false)?;
                    storage = Some(again.storage);
                    state = Some(again.state);
                }
                r => return Ok(r?),
            }
        }
        unreachable!("the loop returns")
    }

    /// Every replica's address.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses.iter().map(|(_, a)| a.clone()).collect()
    }

    pub fn cluster(&self) -> ClusterId {
        self.options.cluster
    }

    /// A client connected to the cluster.
    pub async fn client(&self, options: ClientOptions) -> Result<Client, ClientError> {
        Client::connect(
            self.network.clone(),
            self.options.cluster,
            self.addresses(),
            options,
        )
        .await
    }

    /// The status of replica `id`, if it runs.
    pub fn status(&self, id: ReplicaId) -> Option<NodeStatus> {
        self.nodes[(id.0 - 1) as usize].as_ref().map(|n| n.status())
    }

    /// The leader, once one is known within `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<ReplicaId> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            for n in self.nodes.iter().flatten() {
                let s = n.status();
                if s.role == Some(RoleKind::Leader) {
                    return Some(s.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Asks replica `id` to give up leadership (a no-op unless it leads).
    pub async fn relinquish_primary(&self, id: ReplicaId) {
        if let Some(n) = &self.nodes[(id.0 - 1) as usize] {
            n.relinquish_primary().await;
        }
    }

    /// Stops replica `id` cleanly (it syncs and tells its application).
    pub async fn stop(&mut self, id: ReplicaId) -> Result<(), NodeError> {
        match self.nodes[(id.0 - 1) as usize].take() {
            Some(n) => n.shutdown().await,
            None => Ok(()),
        }
    }

    /// Stops replica `id` abruptly (its unsynced writes are as a crash leaves them).
    pub fn kill(&mut self, id: ReplicaId) {
        if let Some(n) = self.nodes[(id.0 - 1) as usize].take() {
            n.kill();
        }
    }

    /// Restarts replica `id` from its storage.
    pub async fn restart(&mut self, id: ReplicaId) -> Result<(), EmbeddedError> {
        // The killed tasks release the listener name once aborted.
        tokio::task::yield_now().await;
        let node = self.launch(id, false).await?;
        self.nodes[(id.0 - 1) as usize] = Some(node);
        Ok(())
    }

    /// Stops every replica cleanly.
    pub async fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                let _ = n.shutdown().await;
            }
        }
    }
}

fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
}
