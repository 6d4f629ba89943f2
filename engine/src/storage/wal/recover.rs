//! Recovery of the WAL, in named steps ([`Wal::load`]): read the segments,
//! scan their records up to the first invalid one, decide whether it is a
//! torn tail or corruption (or, salvaging, bound what was lost), cut the
//! log there, and adopt the durable state found.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::file::{WalDir, WalFile};
use super::{
    BadRecord, HeaderRead, KIND_BATCH_END, KIND_COMMIT, KIND_PROMISE, KIND_SEAL, KIND_TRUNCATE,
    KIND_UNPROVABLE, SEGMENT_HEADER_BYTES, Segment, Wal, WalBug, decode_segment_header,
    later_records, parse_record, parse_segment_name, segment_name, torn_signature,
};
use crate::core::codec::{KIND_BATCH, KIND_CONFIG, KIND_NOOP, decode_value};
use crate::core::{
    Ballot, DurableState, EntryWrite, PersistToken, ReplicaId, Slot, Unprovable, Value,
};
use crate::storage::StorageError;

/// The segments on disk, in order, each read whole.
struct Segments<F> {
    seqs: Vec<u64>,
    files: Vec<(String, F)>,
    bufs: Vec<Vec<u8>>,
}

/// Where a scan stopped: the end of the log (segment, offset), or a bad
/// record (torn tail ruled out).
enum Stop {
    End(usize, u64),
    Bad(BadRecord),
}

/// What a scan of the records found.
struct Scan {
    promised: Ballot,
    commit: Slot,
    log_start: Slot,
    slot_end: Slot,
    unprovable: Option<Unprovable>,
    entries: BTreeMap<Slot, (Ballot, Value)>,
    /// Highest entry slot of each segment (for truncation).
    max_slots: Vec<Option<Slot>>,
    /// Highest batch id seen anywhere, valid part or not.
    max_batch: u64,
}

impl<D: WalDir> Wal<D> {
    /// Reads every segment; on the first invalid record decides torn tail
    /// or corruption. With `salvage`, corruption cuts the log there and
    /// reports what may have been lost instead of failing.
    pub(super) fn load(&mut self, salvage: bool) -> Result<DurableState, StorageError> {
        let segs = self.read_segments()?;
        let (mut scan, stop) = self.scan(&segs)?;
        let (end_seg, end_off, lost) = match stop {
            Stop::End(s, o) => (s, o, None),
            Stop::Bad(b) => {
                let bound = self.salvage_bound(&segs, &b, &mut scan, salvage)?;
                (b.segment, b.offset.max(SEGMENT_HEADER_BYTES), Some(bound))
            }
        };
        let max_slots = std::mem::take(&mut scan.max_slots);
        let Segments { seqs, files, bufs } = segs;
        self.reopen_at(files, &bufs, &seqs, end_seg, end_off, max_slots)?;
        self.adopt(&scan, lost)?;
        Ok(DurableState {
            promised: scan.promised,
            log_start: scan.log_start,
            entries: scan
                .entries
                .into_iter()
                .filter(|(slot, _)| *slot >= scan.log_start)
                .map(|(slot, (ballot, value))| EntryWrite {
                    slot,
                    ballot,
                    value,
                })
                .collect(),
            commit: scan.commit,
            unprovable: self.unprovable,
            membership: None,
        })
    }

    /// Step 1: the segment files, in sequence order without a gap, read.
    fn read_segments(&mut self) -> Result<Segments<D::File>, StorageError> {
        let subject = self.subject();
        let listed = self
            .dir
            .list()
            .map_err(|e| StorageError::io(subject.clone(), "list", e))?;
        let mut seqs: Vec<u64> = listed
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        seqs.sort_unstable();
        if seqs.is_empty() {
            return Err(StorageError::NotFormatted {
                subject,
                detail: "no WAL segments (a wiped or never-formatted log)".into(),
            });
        }
        if let Some(w) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(StorageError::Corrupt {
                subject,
                detail: format!("segment {} is missing after {}", w[0] + 1, w[0]),
            });
        }
        let mut files = Vec::new();
        let mut bufs = Vec::new();
        for seq in &seqs {
            let name = segment_name(*seq);
            let file = self
                .dir
                .open(&name)
                .map_err(|e| StorageError::io(self.dir.path_of(&name), "open", e))?;
            let mut buf = vec![0u8; file.len() as usize];
            file.read_at(0, &mut buf)
                .map_err(|e| StorageError::io(self.dir.path_of(&name), "read", e))?;
            files.push((name, file));
            bufs.push(buf);
        }
        Ok(Segments { seqs, files, bufs })
    }

    /// Step 2: every valid record in order, to the first invalid one (or a
    /// bad segment header): the state they hold and where the scan stopped.
    /// A foreign or never-formatted log is an error here.
    fn scan(&self, segs: &Segments<D::File>) -> Result<(Scan, Stop), StorageError> {
        let Segments { seqs, files, bufs } = segs;
        let mut s = Scan {
            promised: Ballot::ZERO,
            commit: Slot::ZERO,
            log_start: Slot::ZERO,
            slot_end: Slot::ZERO,
            unprovable: None,
            entries: BTreeMap::new(),
            max_slots: vec![None; seqs.len()],
            max_batch: 0,
        };
        // The batch of the last valid record, and whether it was a batch end.
        let (mut batch, mut ended) = (0u64, false);
        'segments: for (i, buf) in bufs.iter().enumerate() {
            let seq = seqs[i];
            let mut p = SEGMENT_HEADER_BYTES;
            match decode_segment_header(buf) {
                HeaderRead::Valid(h) if h.seq != seq => {
                    let why = format!("header names segment {}", h.seq);
                    let bad = BadRecord {
                        segment: i,
                        offset: 0,
                        why,
                        batch,
                    };
                    return Ok((s, Stop::Bad(bad)));
                }
                HeaderRead::Valid(h) => {
                    if h.cluster != self.cluster.0 || h.replica != self.replica.0 {
                        return Err(StorageError::Foreign {
                            subject: self.dir.path_of(&files[i].0),
                            detail: format!(
                                "belongs to cluster {} replica {}, not cluster {} replica {}",
                                h.cluster, h.replica, self.cluster.0, self.replica.0
                            ),
                        });
                    }
                    if h.first_batch > batch {
                        batch = h.first_batch;
                        ended = false;
                    }
                    s.max_batch = s.max_batch.max(h.first_batch);
                }
                HeaderRead::Zero if seqs.len() == 1 => {
                    return Err(StorageError::NotFormatted {
                        subject: self.dir.path_of(&files[i].0),
                        detail: "the first segment was never written (format did not complete)"
                            .into(),
                    });
                }
                // A segment created by a batch that may not have reached the
                // disk: decided below like any invalid record.
                HeaderRead::Zero => p = 0,
                HeaderRead::Bad(why) => {
                    let bad = BadRecord {
                        segment: i,
                        offset: 0,
                        why: why.into(),
                        batch,
                    };
                    return Ok((s, Stop::Bad(bad)));
                }
            }
            loop {
                let rec = if p == 0 {
                    None
                } else {
                    parse_record(buf, seq, p).filter(|r| r.f.batch >= batch)
                };
                let Some(r) = rec else {
                    let stop = self.torn_or_corrupt(segs, i, p, batch, ended, &mut s.max_batch);
                    return Ok((s, stop));
                };
                let f = r.f;
                batch = f.batch;
                s.max_batch = s.max_batch.max(batch);
                ended = false;
                match f.kind {
                    KIND_BATCH | KIND_NOOP | KIND_CONFIG => {
                        let payload = Bytes::copy_from_slice(&buf[r.payload.clone()]);
                        let Some(value) = decode_value(f.kind, payload) else {
                            let bad = BadRecord {
                                segment: i,
                                offset: p,
                                why: format!("entry at offset {p} does not decode"),
                                batch,
                            };
                            return Ok((s, Stop::Bad(bad)));
                        };
                        let slot = Slot(f.a);
                        let replica = ReplicaId(f.c);
                        s.entries.insert(slot, (Ballot::new(f.b, replica), value));
                        s.max_slots[i] = s.max_slots[i].max(Some(slot));
                        s.slot_end = s.slot_end.max(slot.next());
                    }
                    KIND_PROMISE => s.promised = s.promised.max(Ballot::new(f.a, ReplicaId(f.c))),
                    KIND_COMMIT => s.commit = s.commit.max(Slot(f.a)),
                    KIND_TRUNCATE => s.log_start = s.log_start.max(Slot(f.a)),
                    KIND_UNPROVABLE => {
                        let u = Unprovable {
                            below: Slot(f.a),
                            ballot: Ballot::new(f.b, ReplicaId(f.c)),
                        };
                        s.unprovable = Some(s.unprovable.map_or(u, |o| Unprovable {
                            below: o.below.max(u.below),
                            ballot: o.ballot.max(u.ballot),
                        }));
                    }
                    KIND_BATCH_END => {
                        ended = true;
                        s.slot_end = s.slot_end.max(Slot(f.a));
                        s.promised = s.promised.max(Ballot::new(f.b, ReplicaId(f.c)));
                    }
                    KIND_SEAL => continue 'segments,
                    k => {
                        let bad = BadRecord {
                            segment: i,
                            offset: p,
                            why: format!("unknown record kind {k} at offset {p}"),
                            batch,
                        };
                        return Ok((s, Stop::Bad(bad)));
                    }
                }
                p += r.size;
            }
        }
        unreachable!("the scan ends at an invalid record: zeros follow the last one")
    }

    /// Step 3: the first invalid record, at offset `p` of segment `i`, after
    /// batch `batch` (`ended`: its batch end was read): the end of the log
    /// if it is a torn write and nothing synced after it survives, else a
    /// bad record. Raises `max_batch` to every batch id found after it.
    fn torn_or_corrupt(
        &self,
        segs: &Segments<D::File>,
        i: usize,
        p: u64,
        batch: u64,
        ended: bool,
        max_batch: &mut u64,
    ) -> Stop {
        let Segments { seqs, bufs, .. } = segs;
        let (buf, seq) = (&bufs[i], seqs[i]);
        let in_batch = if ended { batch + 1 } else { batch };
        let later = later_records(buf, seq, p + 8)
            .map(|(_, r)| r.f.batch)
            .chain(bufs[i + 1..].iter().enumerate().flat_map(|(k, b)| {
                let s = seqs[i + 1 + k];
                let first = match decode_segment_header(b) {
                    HeaderRead::Valid(h) => Some(h.first_batch),
                    _ => None,
                };
                first
                    .into_iter()
                    .chain(later_records(b, s, SEGMENT_HEADER_BYTES).map(|(_, r)| r.f.batch))
            }))
            .max();
        *max_batch = (*max_batch).max(later.unwrap_or(0));
        let synced_after = later.is_some_and(|b| b > in_batch);
        let torn = torn_signature(buf, seq, p);
        if self.bug == Some(WalBug::EveryInvalidRecordIsTorn) {
            Stop::End(i, p)
        } else if synced_after || !torn {
            Stop::Bad(BadRecord {
                segment: i,
                offset: p,
                why: if synced_after {
                    format!("invalid record at offset {p}, followed by data synced after it")
                } else {
                    format!("invalid record at offset {p} that is not a torn write")
                },
                batch: in_batch,
            })
        } else {
            Stop::End(i, p)
        }
    }

    /// Step 4, on a bad record: `Corrupt` unless salvaging. Salvaging, the
    /// bound on the slots the dropped part may have held (batch ends and
    /// entries still readable after the bad record), with the promise as
    /// of a later batch end raised into `scan`. Without such a batch end
    /// the lost record may have been a promise nothing else vouches for:
    /// then there is nothing safe to start from.
    fn salvage_bound(
        &self,
        segs: &Segments<D::File>,
        b: &BadRecord,
        scan: &mut Scan,
        salvage: bool,
    ) -> Result<Slot, StorageError> {
        let subject = self.dir.path_of(&segs.files[b.segment].0);
        if !salvage {
            return Err(StorageError::Corrupt {
                subject,
                detail: b.why.clone(),
            });
        }
        tracing::warn!(%subject, why = %b.why, "salvaging the WAL: everything from here on is dropped");
        let mut bound = scan.slot_end;
        let mut vouched = false;
        for (k, buf) in segs.bufs.iter().enumerate().skip(b.segment) {
            let from = if k == b.segment {
                b.offset + 8
            } else {
                SEGMENT_HEADER_BYTES
            };
            for (_, r) in later_records(buf, segs.seqs[k], from) {
                let ballot = Ballot::new(r.f.b, ReplicaId(r.f.c));
                match r.f.kind {
                    KIND_BATCH | KIND_NOOP | KIND_CONFIG => bound = bound.max(Slot(r.f.a).next()),
                    KIND_BATCH_END => {
                        bound = bound.max(Slot(r.f.a));
                        scan.promised = scan.promised.max(ballot);
                        vouched |= r.f.batch >= b.batch;
                    }
                    KIND_PROMISE => {
                        scan.promised = scan.promised.max(Ballot::new(r.f.a, ReplicaId(r.f.c)))
                    }
                    _ => {}
                }
                scan.max_batch = scan.max_batch.max(r.f.batch);
            }
        }
        if !vouched {
            return Err(StorageError::Corrupt {
                subject,
                detail: format!(
                    "{}; unsalvageable: no later batch end vouches for the promise",
                    b.why
                ),
            });
        }
        Ok(bound)
    }

    /// Step 5: makes the log end at `offset` of segment `seg`: later
    /// segments are deleted and the rest of that segment is zeroed, so the
    /// next recovery finds zeros past the end again.
    fn reopen_at(
        &mut self,
        files: Vec<(String, D::File)>,
        bufs: &[Vec<u8>],
        seqs: &[u64],
        seg: usize,
        offset: u64,
        max_slots: Vec<Option<Slot>>,
    ) -> Result<(), StorageError> {
        // A zero header means the segment never got written: resume in the
        // previous one, over its seal.
        let (seg, offset) = if offset == 0 && seg > 0 {
            let prev = &bufs[seg - 1];
            let seal = later_records(prev, seqs[seg - 1], SEGMENT_HEADER_BYTES)
                .filter(|(_, r)| r.f.kind == KIND_SEAL)
                .map(|(o, _)| o)
                .last()
                .unwrap_or(prev.len() as u64);
            (seg - 1, seal)
        } else {
            (seg, offset)
        };
        self.segments.clear();
        for (i, ((name, file), max_slot)) in files.into_iter().zip(max_slots).enumerate() {
            if i <= seg {
                self.segments.push_back(Segment {
                    seq: seqs[i],
                    name,
                    file,
                    max_slot,
                });
            } else {
                self.dir
                    .remove(&name)
                    .map_err(|e| StorageError::io(self.dir.path_of(&name), "remove", e))?;
            }
        }
        if seqs.len() > seg + 1 {
            self.dir
                .sync_dir()
                .map_err(|e| StorageError::io(self.subject(), "fsync directory", e))?;
        }
        let buf = &bufs[seg];
        let dirty_end = buf
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i as u64 + 1);
        let cur = self.segments.back_mut().expect("kept a segment");
        if dirty_end > offset {
            let zeros = vec![0u8; (dirty_end - offset) as usize];
            let name = cur.name.clone();
            let r = cur
                .file
                .write_at(offset, &zeros)
                .and_then(|()| cur.file.sync_data());
            r.map_err(|e| StorageError::io(self.dir.path_of(&name), "zero the torn tail of", e))?;
        }
        self.write_off = offset;
        Ok(())
    }

    /// Step 6: the log continues from what the scan found. A salvage's
    /// loss (`lost`: slots below it may have been dropped) is made durable
    /// first, with the promise learned: a restart before the replica has
    /// repaired it must not forget it.
    fn adopt(&mut self, scan: &Scan, lost: Option<Slot>) -> Result<(), StorageError> {
        let (promised, unprovable) = (scan.promised, scan.unprovable);
        self.batch = scan.max_batch + 1;
        self.promised = promised;
        self.commit = scan.commit;
        self.log_start = scan.log_start;
        self.slot_end = scan.slot_end;
        self.unprovable = unprovable;
        self.written_token = PersistToken(0);
        self.durable_token = PersistToken(0);
        if let Some(bound) = lost {
            let u = Unprovable {
                below: bound.max(unprovable.map_or(Slot::ZERO, |u| u.below)),
                ballot: promised.max(unprovable.map_or(Ballot::ZERO, |u| u.ballot)),
            };
            self.unprovable = Some(u);
            let p = self.small(KIND_PROMISE, promised.round, 0, promised.replica.0);
            self.stage(p, &[])?;
            let r = self.small(
                KIND_UNPROVABLE,
                u.below.0,
                u.ballot.round,
                u.ballot.replica.0,
            );
            self.stage(r, &[])?;
            self.flush()?;
        }
        Ok(())
    }
}
