//! In-memory storage that keeps written-but-unsynced requests apart from
//! durable state, so a simulated crash can lose (or keep part of) them.

use std::collections::BTreeMap;

use super::{Storage, StorageError};
use crate::core::{Ballot, DurableState, EntryWrite, PersistRequest, PersistToken, Slot, Value};

/// One atomic write inside a request: the unit a crash keeps or loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Promised,
    Entry(usize),
    Commit,
}

/// What survives a crash: everything durable, plus the first `kept_ops`
/// atomic writes of the unsynced requests (a log is written in order, so a
/// crash keeps a prefix of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashKeep {
    pub kept_ops: usize,
}

#[derive(Debug, Default, Clone)]
struct State {
    promised: Ballot,
    log_start: Slot,
    entries: BTreeMap<Slot, (Ballot, Value)>,
    commit: Slot,
}

impl State {
    fn apply<'r>(&mut self, req: &'r PersistRequest, op: Op) -> Option<&'r EntryWrite> {
        match op {
            Op::Promised => {
                let b = req.promised.expect("op exists");
                self.promised = self.promised.max(b);
                None
            }
            Op::Entry(i) => {
                let e = &req.entries[i];
                if e.slot < self.log_start {
                    // Below a truncation made while it was staged: gone, as
                    // the WAL and the NVM log drop it at recovery.
                    return None;
                }
                self.entries.insert(e.slot, (e.ballot, e.value.clone()));
                Some(e)
            }
            Op::Commit => {
                self.commit = self.commit.max(req.commit.expect("op exists"));
                None
            }
        }
    }
}

fn ops(req: &PersistRequest) -> impl Iterator<Item = Op> + '_ {
    req.promised
        .map(|_| Op::Promised)
        .into_iter()
        .chain((0..req.entries.len()).map(Op::Entry))
        .chain(req.commit.map(|_| Op::Commit))
}

/// Storage held in memory: the `mem` backend and the simulator's disk.
#[derive(Debug, Default)]
pub struct MemStorage {
    /// A blank store (`new`) holds no log; `formatted` marks one created
    /// for a replica, so a wiped store is told apart from an empty log.
    formatted: bool,
    durable: State,
    durable_token: PersistToken,
    /// Written, not yet synced, in token order.
    pending: Vec<PersistRequest>,
    /// Fault handle: the next sync fails (and, like a real failed fsync,
    /// loses what was pending).
    fail_next_sync: bool,
    syncs: u64,
}

impl MemStorage {
    /// A blank store: `recover` reports `NotFormatted` (a wiped disk).
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// An empty log, formatted for a replica.
    pub fn formatted() -> MemStorage {
        MemStorage {
            formatted: true,
            ..MemStorage::default()
        }
    }

    /// Fault injection: make the next sync fail with EIO.
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Number of successful syncs (the simulator reports it).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Makes pending requests up to `token` durable, reporting each entry
    /// as it becomes durable (one staged below a truncation is dropped,
    /// not reported).
    pub fn sync_upto(
        &mut self,
        token: PersistToken,
        mut on_entry: impl FnMut(&EntryWrite),
    ) -> Result<PersistToken, StorageError> {
        if std::mem::take(&mut self.fail_next_sync) {
            self.pending.clear();
            return Err(StorageError::Io {
                subject: "mem storage".into(),
                verb: "sync",
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        let n = self.pending.iter().take_while(|r| r.token <= token).count();
        for req in self.pending.drain(..n) {
            for op in ops(&req).collect::<Vec<_>>() {
                if let Some(e) = self.durable.apply(&req, op) {
                    on_entry(e);
                }
            }
            self.durable_token = req.token;
        }
        self.syncs += 1;
        Ok(self.durable_token)
    }

    /// The durable promised ballot (for checkers).
    pub fn durable_promised(&self) -> Ballot {
        self.durable.promised
    }

    /// The durable entry of `slot`, if any (for checkers).
    pub fn durable_entry(&self, slot: Slot) -> Option<(Ballot, &Value)> {
        self.durable.entries.get(&slot).map(|(b, v)| (*b, v))
    }

    /// Number of atomic writes staged but not durable.
    pub fn pending_ops(&self) -> usize {
        self.pending.iter().map(|r| ops(r).count()).sum()
    }

    /// Highest token staged (durable or not).
    pub fn written_token(&self) -> PersistToken {
        self.pending.last().map_or(self.durable_token, |r| r.token)
    }

    /// A crash: unsynced writes are lost except the first `keep.kept_ops`,
    /// which reached the medium. Reports each surviving entry.
    pub fn crash(&mut self, keep: CrashKeep, mut on_entry: impl FnMut(&EntryWrite)) {
        let mut left = keep.kept_ops;
        for req in std::mem::take(&mut self.pending) {
            for op in ops(&req).collect::<Vec<_>>() {
                if left == 0 {
                    break;
                }
                left -= 1;
                if let Some(e) = self.durable.apply(&req, op) {
                    on_entry(e);
                }
            }
        }
        self.fail_next_sync = false;
    }
}

impl Storage for MemStorage {
    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError> {
        assert!(
            req.token > self.written_token(),
            "persist requests must arrive in token order"
        );
        self.pending.push(req);
        Ok(())
    }

    fn sync(&mut self) -> Result<PersistToken, StorageError> {
        let token = self.written_token();
        self.sync_upto(token, |_| {})
    }

    fn recover(&mut self) -> Result<DurableState, StorageError> {
        assert!(
            self.pending.is_empty(),
            "recover with unsynced writes staged"
        );
        if !self.formatted {
            return Err(StorageError::NotFormatted {
                subject: "mem storage".into(),
                detail: "a blank store (never formatted, or wiped)".into(),
            });
        }
        // A new incarnation numbers its requests from 1 again.
        self.durable_token = PersistToken(0);
        let d = &self.durable;
        Ok(DurableState {
            promised: d.promised,
            log_start: d.log_start,
            entries: d
                .entries
                .iter()
                .map(|(slot, (ballot, value))| EntryWrite {
                    slot: *slot,
                    ballot: *ballot,
                    value: value.clone(),
                })
                .collect(),
            commit: d.commit,
            unprovable: None,
            membership: None,
        })
    }

    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError> {
        self.durable.entries = self.durable.entries.split_off(&slot);
        self.durable.log_start = self.durable.log_start.max(slot);
        Ok(())
    }

    fn durable_token(&self) -> PersistToken {
        self.durable_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReplicaId;

    fn req(token: u64, slot: u64, round: u64) -> PersistRequest {
        PersistRequest {
            token: PersistToken(token),
            promised: Some(Ballot::new(round, ReplicaId(1))),
            entries: vec![EntryWrite {
                slot: Slot(slot),
                ballot: Ballot::new(round, ReplicaId(1)),
                value: Value::Noop,
            }],
            commit: Some(Slot(slot)),
        }
    }

    #[test]
    fn only_synced_writes_survive_a_crash() {
        let mut m = MemStorage::formatted();
        m.write(req(1, 0, 1)).unwrap();
        assert_eq!(m.sync().unwrap(), PersistToken(1));
        m.write(req(2, 1, 2)).unwrap();
        m.crash(CrashKeep { kept_ops: 0 }, |_| {});
        let d = m.recover().unwrap();
        assert_eq!(d.entries.len(), 1);
        assert_eq!(d.promised, Ballot::new(1, ReplicaId(1)));
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_unsynced_writes() {
        let mut m = MemStorage::formatted();
        m.write(req(1, 0, 1)).unwrap();
        m.write(req(2, 1, 2)).unwrap();
        assert_eq!(m.pending_ops(), 6);
        let mut survived = vec![];
        m.crash(CrashKeep { kept_ops: 4 }, |e| survived.push(e.slot));
        // promised(1), entry 0, commit 0, promised(2): the second entry is lost.
        assert_eq!(survived, vec![Slot(0)]);
        let d = m.recover().unwrap();
        assert_eq!(d.promised, Ballot::new(2, ReplicaId(1)));
        assert_eq!(d.entries.len(), 1);
    }

    #[test]
    fn a_failed_sync_loses_pending_and_reports_eio() {
        let mut m = MemStorage::formatted();
        m.write(req(1, 0, 1)).unwrap();
        m.fail_next_sync();
        let err = m.sync().unwrap_err();
        assert!(err.to_string().contains("sync mem storage"), "{err}");
        // The retry "succeeds", but the write is gone: nothing durable.
        assert_eq!(m.sync().unwrap(), PersistToken(0));
        assert!(m.recover().unwrap().entries.is_empty());
    }

    #[test]
    fn sync_upto_leaves_later_requests_pending() {
        let mut m = MemStorage::formatted();
        m.write(req(1, 0, 1)).unwrap();
        m.write(req(2, 1, 1)).unwrap();
        let mut seen = vec![];
        assert_eq!(
            m.sync_upto(PersistToken(1), |e| seen.push(e.slot)).unwrap(),
            PersistToken(1)
        );
        assert_eq!(seen, vec![Slot(0)]);
        assert_eq!(m.pending_ops(), 3);
        m.truncate_below(Slot(1)).unwrap();
        m.sync().unwrap();
        let d = m.recover().unwrap();
        assert_eq!(
            d.entries.iter().map(|e| e.slot).collect::<Vec<_>>(),
            vec![Slot(1)]
        );
        assert_eq!(d.log_start, Slot(1));
    }

    #[test]
    fn a_blank_store_is_not_an_empty_log() {
        let mut m = MemStorage::new();
        assert!(matches!(
            m.recover(),
            Err(StorageError::NotFormatted { .. })
        ));
        assert!(
            MemStorage::formatted()
                .recover()
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    #[should_panic(expected = "token order")]
    fn out_of_order_writes_panic() {
        let mut m = MemStorage::formatted();
        m.write(req(2, 0, 1)).unwrap();
        m.write(req(1, 0, 1)).unwrap();
    }
}
