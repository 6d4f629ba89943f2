//! `paxos-core` (`engine::core`): the sans-IO Multi-Paxos replica.
//!
//! **Architecture Invariant:** nothing in this module performs I/O, reads a
//! clock, spawns a thread or draws randomness other than from the seeded RNG
//! in [`Config::seed`]. Given the same inputs it produces the same outputs.
//!
//! Inputs: [`Replica::on_message`], [`Replica::on_client`],
//! [`Replica::on_tick`], [`Replica::on_persisted`],
//! [`Replica::on_storage_failed`]. Outputs: [`Replica::drain`] into an
//! [`Output`] (see `output.rs` for what a driver must do with each part).
//!
//! A crate of its own so the rule is the compiler's: it depends on no
//! tokio, no I/O crate and no other part of the engine, and has no unsafe
//! code. The simulator (`engine::sim`) and the runtime (`engine::runtime`)
//! both drive it; `engine` re-exports it as `engine::core`.

#![forbid(unsafe_code)]

mod acceptor;
pub mod codec;
pub mod config;
pub mod counters;
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

pub use config::{Config, ConfigError, Membership, PlantedBug};
pub use counters::{Counter, Counters};
pub use log::{Entry, Log};
pub use message::*;
pub use output::{
    Apply, ClientReply, EntryWrite, FetchCheckpoint, Output, PersistRequest, ProposeError,
};
pub use proposer::PeerHealth;
pub use replica::{DurableState, RELINQUISH_HOLD_ELECTIONS, Replica, RoleKind, Unprovable};
pub use types::{Ballot, ClientId, ClusterId, PersistToken, ReplicaId, Slot};
pub use value::{Batch, BatchBuilder, BatchDecodeError, Command, CommandRef, Value};

#[cfg(test)]
mod tests;
