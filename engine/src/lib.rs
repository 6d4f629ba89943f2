//! A Multi-Paxos replicated state machine engine.
//!
//! Layers (each depends only on those above it):
//! - [`core`]: the sans-IO protocol (ballots, phases, pipelining, batching);
//! - [`storage`]: durable log and stable state behind one trait;
//! - [`state_machine`]: in-order execution with exactly-once client sessions;
//! - [`checkpoint`]: checkpoint files (checksummed blocks) and retention;
//! - [`kv`]: the example key-value state machine;
//! - [`sim`]: the deterministic simulator with fault injection and checkers;
//! - [`transport`]: frames, codecs, TCP and in-process networks;
//! - [`runtime`]: a replica on tokio; [`client`]: the client library;
//!   [`embedded`]: N replicas in one process.

// Every unsafe block says why it is sound (`// SAFETY:`); clippy enforces it.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod checkpoint;
pub mod client;
/// The sans-IO protocol, a crate of its own (`engine/core`).
pub use paxos_core as core;
pub mod embedded;
pub mod fuzz;
pub mod gate;
pub mod instrumentation;
pub mod kv;
pub mod runtime;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod transport;
