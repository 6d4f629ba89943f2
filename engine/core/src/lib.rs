//! `paxos-core` (`engine::core`): the sans-IO Multi-Paxos replica.
//!
//! **Architecture Invariant:** nothing in this module performs I/O, reads a
//! clock, spawns a thread or draws randomness other than from the seeded RNG
//! in [`Config::seed`]. Given the same inputs it produces the same outputs.
//!
//! Inputs: [`Replica::on_message`], [`Replica::on_client`],
//! [`Replica::on_tick`], [`Replica::on_persisted`],
//! [`Replica::on_storage_failed`], and from the driver's application and
//! operator: [`Replica::propose_config`], [`Replica::set_lead_vetoed`],
//! [`Replica::relinquish`], [`Replica::install_checkpoint`],
//! [`Replica::checkpoint_saved`]. Outputs: [`Replica::drain`] into an
//! [`Output`] (see `output.rs` for what a driver must do with each part).
//!
//! Files: `replica.rs` (shared state, dispatch, inputs), `membership.rs`
//! (the configuration in force), `acceptor.rs`, `candidate.rs` and
//! `leader.rs` (the roles' state), `proposer.rs` (their handlers),
//! `learner.rs` (commit, apply, catch-up, checkpoints), `views.rs`
//! (read-only views), `log.rs`, `message.rs`, `output.rs`, `value.rs`,
//! `codec.rs`, `config.rs`, `quorum.rs`, `counters.rs`, `types.rs`.
//!
//! A crate of its own, so the compiler keeps it apart: it depends on no
//! tokio, no I/O crate and no other part of the engine, and has no unsafe
//! code; `tests/tests/layers.rs` checks that its source names no clock,
//! file, socket, thread or process (std is still in reach). The simulator (`engine::sim`) and the runtime (`engine::runtime`)
//! both drive it; `engine` re-exports it as `engine::core`.

#![forbid(unsafe_code)]

mod acceptor;
mod candidate;
pub mod codec;
pub mod config;
pub mod counters;
mod leader;
mod learner;
pub mod log;
pub(crate) mod membership;
pub mod message;
pub mod output;
mod proposer;
pub mod quorum;
mod replica;
pub mod types;
pub mod value;
mod views;

pub use config::{Config, ConfigError, Membership, PlantedBug};
pub use counters::{Counter, Counters};
pub use leader::PeerHealth;
pub use log::{Entry, Log};
pub use message::*;
pub use output::{
    Apply, ClientReply, EntryWrite, FetchCheckpoint, Output, PersistRequest, ProposeError,
};
pub use replica::{DurableState, RELINQUISH_HOLD_ELECTIONS, Replica, RoleKind, Unprovable};
pub use types::{Ballot, ClientId, ClusterId, PersistToken, ReplicaId, Slot};
pub use value::{Batch, BatchBuilder, BatchDecodeError, Command, CommandRef, Value};

#[cfg(test)]
mod tests;
