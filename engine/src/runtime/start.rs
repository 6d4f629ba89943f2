//! Starting a replica: checks the settings, recovers, binds the listener,
//! spawns the peer senders, the sync thread (WAL) and the core task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::core::{Ballot, DurableState, Replica};
use crate::instrumentation::{LabRef, Stage};
use crate::state_machine::{Executor, StateMachine};
use crate::storage::Storage;
use crate::transport::net::Network;

use super::answers::Clients;
use super::checkpointing::{Checkpointer, Checkpoints, FetchState, restore_checkpoint};
use super::persist::{Persist, sync_thread_main};
use super::status::{NodeStatus, Reporting};
use super::task::{AppRole, CoreTask, LabState, PeerTx, Peers, Scratch};
use super::{NodeConfig, NodeError, NodeHandle, conn, probe, spans};

/// Bytes a client frame holds besides its command (frame header, client
/// id, sequence numbers, lengths), rounded up.
const CLIENT_FRAME_OVERHEAD_BYTES: usize = 1024;

/// Runs a replica: binds its listener, starts the peer senders and the core.
/// `sync_thread`: run storage syncs on a thread of their own (for the WAL).
pub async fn start<S: StateMachine + Send + 'static>(
    cfg: NodeConfig,
    network: Network,
    storage: Box<dyn Storage + Send>,
    state: DurableState,
    sm: S,
    sync_thread: bool,
) -> Result<NodeHandle, NodeError> {
    if let Some(c) = &cfg.checkpoint {
        c.check(&cfg.core).map_err(NodeError::Settings)?;
    }
    // A client frame carries one command and its header.
    let command_frame_bytes = cfg.core.command_bytes_max as usize + CLIENT_FRAME_OVERHEAD_BYTES;
    if cfg.client_frame_bytes_max < command_frame_bytes
        || cfg.frame_bytes_max < cfg.client_frame_bytes_max
    {
        return Err(NodeError::Settings(format!(
            "client_frame_bytes_max ({}) must hold command_bytes_max ({}) plus {CLIENT_FRAME_OVERHEAD_BYTES} \
             bytes of header, and be at most frame_bytes_max ({})",
            cfg.client_frame_bytes_max, cfg.core.command_bytes_max, cfg.frame_bytes_max
        )));
    }
    if cfg.peer_connections_max == 0 || cfg.handshake_connections_max == 0 {
        return Err(NodeError::Settings(
            "peer_connections_max and handshake_connections_max must be at least 1".into(),
        ));
    }
    // A closed session's tombstone must outlive any stale copy a
    // superseded leader's window can hold (see `SessionLimits`).
    if cfg.sessions.closed_session_slots < 2 * u64::from(cfg.core.window_slots_max) {
        return Err(NodeError::Settings(format!(
            "window_slots_max ({}) must be at most {}: half of the slots a closed client session is remembered ({}), so a superseded leader's copy of its command is refused",
            cfg.core.window_slots_max,
            cfg.sessions.closed_session_slots / 2,
            cfg.sessions.closed_session_slots
        )));
    }
    let mut state = state;
    let mut executor = Executor::new(sm, cfg.sessions, state.log_start);
    let (checkpoint_slot, checkpoint_store) = restore_checkpoint(&cfg, &mut state, &mut executor)?;
    let replica = Replica::recover(cfg.core.clone(), state)?;
    let mut listener = network
        .bind(&cfg.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
    let listen = listener.local_addr();
    let (events_tx, events_rx) = mpsc::channel(cfg.event_queue_max);
    let (status_tx, status_rx) = watch::channel(NodeStatus {
        id: cfg.core.id,
        ..NodeStatus::default()
    });
    let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let lab_ref = cfg.lab.as_ref().map(|lab| LabRef {
        lab: lab.clone(),
        process: cfg.core.id.0,
    });
    let spawn = {
        let tasks = tasks.clone();
        move |f: tokio::task::JoinHandle<()>| {
            tasks.lock().expect("task list").push(f.abort_handle())
        }
    };
    // A sender task per peer.
    let mut peers = HashMap::new();
    let peer_frames_discarded = Arc::new(AtomicU64::new(0));
    for (id, addr) in &cfg.addresses {
        if *id == cfg.core.id {
            continue;
        }
        let (tx, rx) = mpsc::channel(cfg.peer_queue_frames_max);
        let connected = Arc::new(AtomicBool::new(false));
        peers.insert(
            *id,
            PeerTx {
                tx,
                connected: connected.clone(),
            },
        );
        let link = conn::PeerLink {
            network: network.clone(),
            cluster: cfg.core.cluster,
            me: cfg.core.id,
            peer: *id,
            addr: addr.clone(),
            frame_bytes_max: cfg.frame_bytes_max,
            discarded: peer_frames_discarded.clone(),
            connected,
        };
        spawn(tokio::spawn(conn::peer_sender(link, rx, lab_ref.clone())));
    }
    // The listener.
    let accept = conn::Server {
        cluster: cfg.core.cluster,
        id: cfg.core.id,
        members: cfg.addresses.clone(),
        limits: conn::ConnLimits {
            frame_bytes_max: cfg.frame_bytes_max,
            client_frame_bytes_max: cfg.client_frame_bytes_max,
            client_outstanding_max: cfg.client_outstanding_max,
            client_idle: cfg.client_idle,
        },
        permits: conn::Permits {
            clients: Arc::new(tokio::sync::Semaphore::new(cfg.client_connections_max)),
            peers: Arc::new(tokio::sync::Semaphore::new(cfg.peer_connections_max)),
            handshakes: Arc::new(conn::Handshakes::new(cfg.handshake_connections_max)),
        },
        events: events_tx.clone(),
        tasks: tasks.clone(),
        lab: lab_ref.clone(),
        checkpoints: checkpoint_store.clone(),
        gather_writes: network.gathers_writes(),
    };
    spawn(tokio::spawn(async move {
        let mut next_conn = 1u64;
        loop {
            match listener.accept().await {
                Ok((stream, origin)) => {
                    accept.serve(stream, origin, next_conn);
                    next_conn += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }));
    let flush_stage = storage.flush_name().and_then(Stage::from_name);
    let persist = if sync_thread {
        let (tx, rx) = std::sync::mpsc::channel();
        let events = events_tx.clone();
        let lab = lab_ref.clone().zip(flush_stage);
        let truncate = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(Mutex::new(storage.stats()));
        let (t, st) = (truncate.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("sync-{}", cfg.core.id))
            .spawn(move || sync_thread_main(storage, rx, events, lab, t, st))
            .expect("spawning the sync thread");
        Persist::Thread(tx, truncate, stats)
    } else {
        Persist::Inline(storage)
    };
    let probe = cfg
        .lab
        .clone()
        .map(|lab| probe::Probe::new(lab, cfg.core.id, cfg.core.members.len(), flush_stage));
    let checkpointer = cfg
        .checkpoint
        .clone()
        .zip(checkpoint_store)
        .map(|(c, store)| {
            let mut members = cfg.core.members.clone();
            members.sort_unstable();
            let place = members.iter().position(|m| *m == cfg.core.id).unwrap_or(0);
            let stagger = (place as u64, members.len().max(1) as u64);
            Checkpointer::start(
                c,
                store,
                checkpoint_slot,
                events_tx.clone(),
                cfg.core.id,
                stagger,
            )
        });
    let core = CoreTask {
        cluster: cfg.core.cluster,
        id: cfg.core.id,
        replica,
        executor,
        scratch: Scratch::default(),
        persist,
        peers: Peers {
            links: peers,
            addresses: cfg
                .addresses
                .iter()
                .map(|(i, a)| (i.0, a.clone()))
                .collect(),
            frames_dropped: 0,
            frames_discarded: peer_frames_discarded,
        },
        clients: Clients {
            conns: FxHashMap::default(),
            dirty: Vec::new(),
            pending: FxHashMap::default(),
            outstanding_max: cfg.client_outstanding_max,
            null_server: cfg.null_server,
            config_waiter: None,
        },
        checkpoints: Checkpoints {
            checkpointer,
            fetch: FetchState {
                network: network.clone(),
                frame_bytes_max: cfg.frame_bytes_max,
                in_flight: false,
                installed: 0,
                failed: 0,
                events: events_tx.clone(),
            },
        },
        report: Reporting {
            status: status_tx,
            last_published: (None, None, Ballot::ZERO),
            tick: cfg.tick,
            leaderless_ticks: 0,
        },
        app: AppRole::default(),
        lab: LabState {
            probe,
            burst_ns: 0,
            spans: spans::Spans::default(),
        },
    };
    let core = tokio::spawn(core.run(events_rx, cfg.tick, cfg.event_burst_max));
    Ok(NodeHandle {
        events: events_tx,
        status: status_rx,
        core,
        tasks,
        listen,
    })
}
