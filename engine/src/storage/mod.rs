//! `engine::storage`: the durable log and stable state behind one trait.
//!
//! The core hands out [`PersistRequest`]s in token order; a driver writes
//! each one with [`Storage::write`] and makes a whole group durable with one
//! [`Storage::sync`] (group commit), then reports the token to the core.
//! Backends: [`mem::MemStorage`], the disk log [`wal::Wal`] and the NVM
//! log [`nvm::NvmLog`].
//!
//! **Architecture Invariant:** a backend never reports a token durable
//! unless every write of every request up to it would survive a crash, and
//! it never retries a failed flush as if it had succeeded: the error goes
//! to the driver, which stops the replica ([`crate::core::Replica::on_storage_failed`]).

pub mod mem;
pub mod nvm;
pub mod wal;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::{DurableState, PersistRequest, PersistToken, Slot};

/// `n` rounded up to a multiple of 8 (records are 8-byte aligned).
pub(crate) const fn pad8(n: u64) -> u64 {
    (n + 7) & !7
}

/// Which backend: named in configs (`mem`, `wal`, `nvm`), experiment specs
/// and the simulator's seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Mem,
    Wal,
    Nvm,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Mem => "mem",
            Backend::Wal => "wal",
            Backend::Nvm => "nvm",
        }
    }
}

/// An operating error of a storage backend. Every error names what it
/// concerns (`subject`: a file, a region) and what was being done (`verb`).
/// What an operator does about a replica whose log is gone (issue 21,
/// finding 6): never `--bootstrap` it under its old id as a voter, which
/// would forget what it promised.
pub const LOST_LOG_ADVICE: &str = "If this replica lost its log, it must not \
vote again under its id: remove it from the configuration (`replica --change` \
without it), then add it back as a new replica (`join = true` and \
`--bootstrap`, then `--change` with it). A brand-new cluster's replicas start \
with `--bootstrap`";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{verb} {subject}: {source}")]
    Io {
        subject: String,
        verb: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Bytes that were durable no longer verify: acknowledged data may be
    /// damaged, so recovery stops rather than guess.
    #[error("corrupt {subject}: {detail}")]
    Corrupt { subject: String, detail: String },
    /// No room for the write: the log must be truncated after a checkpoint.
    #[error("{subject} is full: {detail}")]
    Full { subject: String, detail: String },
    /// There is no log where one was expected. A replica that lost its
    /// durable state must not vote under its old identity (it may have made
    /// promises it no longer knows); it rejoins as a new member.
    #[error("{subject} holds no log: {detail}. {advice}", advice = LOST_LOG_ADVICE)]
    NotFormatted { subject: String, detail: String },
    /// The log belongs to another cluster or replica, or has an unknown format.
    #[error("{subject} is not this replica's log: {detail}")]
    Foreign { subject: String, detail: String },
    /// An earlier failure stopped this log; nothing more is accepted.
    #[error("{subject} stopped after an earlier failure")]
    Stopped { subject: String },
}

impl StorageError {
    pub(crate) fn io(
        subject: impl Into<String>,
        verb: &'static str,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            subject: subject.into(),
            verb,
            source,
        }
    }
}

/// What a backend's flushes cost so far (for the lab).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Flushes issued (`fdatasync` calls, NVM fence rounds).
    pub flushes: u64,
    /// Bytes written to the medium.
    pub bytes: u64,
    /// Cache lines (NVM) or pages (`msync`, WAL) flushed.
    pub units: u64,
    /// Time spent flushing, ns.
    pub flush_ns: u64,
    /// Group commits (`sync` calls that made something durable).
    pub commits: u64,
    /// Bytes of free log area handed back to the system (NVM: the whole
    /// pages of each range punched out of the emulated region's file,
    /// counted whether or not a page was ever written: an upper bound on
    /// the memory returned).
    pub discarded: u64,
}

/// A durable log of accepted entries plus the promised ballot.
///
/// Contract: requests are written in increasing token order; `sync` makes
/// every request written so far durable (or fails, after which nothing more
/// may be acknowledged); recovery returns the durable state with at most one
/// entry per slot (the last written), in slot order.
pub trait Storage {
    /// Stages `req`. Its writes are not durable until the next `sync`.
    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError>;

    /// Makes every staged request durable (one flush for all of them) and
    /// returns the highest durable token.
    fn sync(&mut self) -> Result<PersistToken, StorageError>;

    /// Reads back the durable state (at start-up). Tokens name the requests
    /// of one incarnation: after `recover` the core numbers from 1 again.
    fn recover(&mut self) -> Result<DurableState, StorageError>;

    /// Forgets durable entries below `slot`; a checkpoint covers them.
    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError>;

    /// Highest token known durable.
    fn durable_token(&self) -> PersistToken;

    /// The name of this backend's flush span (`nvm.flush`, `wal.fsync`);
    /// `None` for a backend that does not flush.
    fn flush_name(&self) -> Option<&'static str> {
        None
    }

    /// Flush statistics so far.
    fn stats(&self) -> StorageStats {
        StorageStats::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pad8_rounds_up_to_a_multiple_of_8() {
        assert_eq!(super::pad8(0), 0);
        assert_eq!(super::pad8(1), 8);
        assert_eq!(super::pad8(8), 8);
        assert_eq!(super::pad8(16), 16);
        assert_eq!(super::pad8(17), 24);
    }
}
