//! The simulator's storage: one of the real backends over a simulated
//! medium, with the medium's own crash model.
//!
//! - `mem`: `MemStorage`; a crash keeps a random prefix of unsynced writes.
//! - `wal`: the WAL over a `SimDisk`; a crash keeps or loses each unsynced
//!   512-byte sector independently (torn writes).
//! - `nvm`: the NVM log over a `SimRegion`; a crash gives each outstanding
//!   8-byte chunk any value it held since it was durable.

use std::cell::RefCell;
use std::rc::Rc;

use rand_core::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::core::{ClusterId, DurableState, PersistRequest, PersistToken, ReplicaId, Slot};
use crate::storage::mem::{CrashKeep, MemStorage};
use crate::storage::nvm::region::{CrashImage, SimRegion};
use crate::storage::nvm::{AREA_OFFSET, NvmLog};
use crate::storage::wal::Wal;
use crate::storage::wal::file::{DiskCrash, SimDir, SimDisk};
use crate::storage::{Storage, StorageError, StorageStats};

/// Which backend a simulated run uses.
pub use crate::storage::Backend;

/// WAL segment size in the simulator (small, so segments roll).
pub const SIM_SEGMENT_BYTES: u64 = 32 * 1024;
/// NVM record area in the simulator (enough for a run: nothing truncates yet).
pub const SIM_NVM_AREA_BYTES: u64 = 2 * 1024 * 1024;

/// What survives a replica's death: the medium alone.
pub enum Medium {
    Mem(MemStorage),
    Disk(Rc<RefCell<SimDisk>>),
    Pm(SimRegion),
}

/// An open backend.
pub enum SimStorage {
    Mem(MemStorage),
    Wal(Box<Wal<SimDir>>),
    Nvm(Box<NvmLog<SimRegion>>),
}

/// How opening a medium went.
pub enum Opened {
    /// Recovered cleanly.
    Clean(SimStorage, DurableState),
    /// Recovery found corruption; the log was salvaged and the state says
    /// what may have been lost.
    Salvaged(SimStorage, DurableState, StorageError),
    /// The medium cannot host this replica (wiped, unsalvageable).
    Refused(Medium, StorageError),
}

impl Medium {
    /// A formatted, empty medium.
    pub fn format(backend: Backend, cluster: ClusterId, replica: ReplicaId) -> Medium {
        match backend {
            Backend::Mem => Medium::Mem(MemStorage::formatted()),
            Backend::Wal => {
                let disk = Rc::new(RefCell::new(SimDisk::new()));
                Wal::format(
                    SimDir::new(disk.clone()),
                    cluster,
                    replica,
                    SIM_SEGMENT_BYTES,
                )
                .expect("formatting a simulated disk");
                Medium::Disk(disk)
            }
            Backend::Nvm => {
                let region = SimRegion::new(AREA_OFFSET + SIM_NVM_AREA_BYTES);
                let log = NvmLog::format(region, cluster, replica)
                    .expect("formatting a simulated region");
                Medium::Pm(log.into_region())
            }
        }
    }

    /// Opens the medium and recovers; salvages a corrupt log.
    pub fn open(self, cluster: ClusterId, replica: ReplicaId) -> Opened {
        match self {
            Medium::Mem(mut m) => match m.recover() {
                Ok(state) => Opened::Clean(SimStorage::Mem(m), state),
                Err(e) => Opened::Refused(Medium::Mem(m), e),
            },
            Medium::Disk(disk) => {
                let mut wal = Wal::open(
                    SimDir::new(disk.clone()),
                    cluster,
                    replica,
                    SIM_SEGMENT_BYTES,
                );
                match wal.recover() {
                    Ok(state) => Opened::Clean(SimStorage::Wal(Box::new(wal)), state),
                    Err(e @ StorageError::Corrupt { .. }) => match wal.salvage() {
                        Ok(state) => Opened::Salvaged(SimStorage::Wal(Box::new(wal)), state, e),
                        Err(e) => Opened::Refused(Medium::Disk(disk), e),
                    },
                    Err(e) => Opened::Refused(Medium::Disk(disk), e),
                }
            }
            Medium::Pm(region) => {
                let image = region.durable_image().to_vec();
                let mut log = match NvmLog::open(region, cluster, replica) {
                    Ok(log) => log,
                    Err(e) => return Opened::Refused(Medium::Pm(SimRegion::from_image(image)), e),
                };
                match log.recover() {
                    Ok(state) => Opened::Clean(SimStorage::Nvm(Box::new(log)), state),
                    Err(e @ StorageError::Corrupt { .. }) => match log.salvage() {
                        Ok(state) => Opened::Salvaged(SimStorage::Nvm(Box::new(log)), state, e),
                        Err(e) => Opened::Refused(Medium::Pm(log.into_region()), e),
                    },
                    Err(e) => Opened::Refused(Medium::Pm(log.into_region()), e),
                }
            }
        }
    }

    /// Flips one random bit of durable, live data (a record on the medium).
    /// Returns whether anything was there to corrupt.
    pub fn corrupt(&mut self, rng: &mut Xoshiro256PlusPlus) -> bool {
        match self {
            Medium::Mem(_) => false,
            Medium::Disk(disk) => {
                let mut d = disk.borrow_mut();
                let files = d.files();
                if files.is_empty() {
                    return false;
                }
                // Aim at the written part of a segment (past its header).
                let (name, _) = &files[rng.next_u64() as usize % files.len()];
                let used = written_len(d.durable(name).expect("listed")) as u64;
                if used <= 64 {
                    return false;
                }
                let at = 64 + rng.next_u64() % (used - 64);
                let bit = (rng.next_u32() % 8) as u8;
                let name = name.clone();
                d.flip_bit(&name, at, bit);
                true
            }
            Medium::Pm(region) => {
                let image = region.durable_image();
                let used = written_len(&image[AREA_OFFSET as usize..]) as u64;
                if used == 0 {
                    return false;
                }
                let at = AREA_OFFSET + rng.next_u64() % used;
                region.flip_bit(at, (rng.next_u32() % 8) as u8);
                true
            }
        }
    }

    /// Flips bit `bit` of the durable byte at `at`, counted over the
    /// medium's written bytes (WAL: every file's bytes up to its last
    /// non-zero one, in name order; NVM: the header and the record area up
    /// to its last non-zero byte), modulo their number. The fuzz targets'
    /// corruption.
    pub fn flip_durable_bit(&mut self, at: u64, bit: u8) {
        match self {
            Medium::Mem(_) => {}
            Medium::Disk(disk) => {
                let mut d = disk.borrow_mut();
                let mut files: Vec<(String, u64)> = d
                    .files()
                    .into_iter()
                    .map(|(name, _)| {
                        let n = written_len(d.durable(&name).expect("listed")) as u64;
                        (name, n)
                    })
                    .collect();
                files.sort();
                let total: u64 = files.iter().map(|(_, n)| n).sum();
                if total == 0 {
                    return;
                }
                let mut at = at % total;
                for (name, n) in files {
                    if at < n {
                        d.flip_bit(&name, at, bit % 8);
                        return;
                    }
                    at -= n;
                }
            }
            Medium::Pm(region) => {
                let total = written_len(region.durable_image()) as u64;
                if total > 0 {
                    region.flip_bit(at % total, bit % 8);
                }
            }
        }
    }

    /// Flips a bit in the middle of the first durable occurrence of
    /// `pattern` (a record's payload): targeted media corruption. Returns
    /// whether the pattern was found.
    pub fn corrupt_pattern(&mut self, pattern: &[u8]) -> bool {
        let find = |hay: &[u8]| hay.windows(pattern.len()).position(|w| w == pattern);
        match self {
            Medium::Mem(_) => false,
            Medium::Disk(disk) => {
                let mut d = disk.borrow_mut();
                for (name, _) in d.files() {
                    if let Some(at) = find(d.durable(&name).expect("listed")) {
                        d.flip_bit(&name, (at + pattern.len() / 2) as u64, 0);
                        return true;
                    }
                }
                false
            }
            Medium::Pm(region) => match find(region.durable_image()) {
                Some(at) => {
                    region.flip_bit((at + pattern.len() / 2) as u64, 0);
                    true
                }
                None => false,
            },
        }
    }

    /// The disk is replaced by a blank one.
    pub fn wipe(&mut self) {
        *self = match self {
            Medium::Mem(_) => Medium::Mem(MemStorage::new()),
            Medium::Disk(_) => Medium::Disk(Rc::new(RefCell::new(SimDisk::new()))),
            Medium::Pm(r) => Medium::Pm(SimRegion::new(
                crate::storage::nvm::region::PmRegion::len(r),
            )),
        };
    }
}

/// Bytes of `bytes` up to its last non-zero one: what a medium holds that
/// was ever written (media start zeroed).
fn written_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

impl SimStorage {
    /// The replica died: what its medium holds afterwards, with unsynced
    /// writes lost or torn per the medium's model. `kept` fixes how many
    /// unsynced `mem` writes survive (others: drawn from `rng`).
    pub fn crash(self, rng: &mut Xoshiro256PlusPlus, kept: Option<usize>) -> Medium {
        match self {
            SimStorage::Mem(mut m) => {
                let pending = m.pending_ops();
                let kept_ops = match kept {
                    Some(k) => k.min(pending),
                    None => match rng.next_u32() % 3 {
                        0 => 0,
                        1 => pending,
                        _ => rng.next_u64() as usize % (pending + 1),
                    },
                };
                m.crash(CrashKeep { kept_ops }, |_| {});
                Medium::Mem(m)
            }
            SimStorage::Wal(wal) => {
                let disk = wal.dir().disk().clone();
                let which = match kept {
                    Some(0) => DiskCrash::None,
                    Some(_) => DiskCrash::All,
                    None => DiskCrash::Random(rng.next_u64()),
                };
                let image = disk.borrow().crash_image(which);
                Medium::Disk(Rc::new(RefCell::new(image)))
            }
            SimStorage::Nvm(log) => {
                let which = match kept {
                    Some(0) => CrashImage::None,
                    Some(_) => CrashImage::All,
                    None => CrashImage::Random(rng.next_u64()),
                };
                Medium::Pm(SimRegion::from_image(log.region().crash_image(which)))
            }
        }
    }

    /// Fault injection: the next sync fails with EIO.
    pub fn fail_next_sync(&mut self) {
        match self {
            SimStorage::Mem(m) => m.fail_next_sync(),
            SimStorage::Wal(w) => w.dir().disk().borrow_mut().fail_next_sync(),
            SimStorage::Nvm(n) => n.region_mut().fail_fences(),
        }
    }

    fn inner(&mut self) -> &mut dyn Storage {
        match self {
            SimStorage::Mem(m) => m,
            SimStorage::Wal(w) => w.as_mut(),
            SimStorage::Nvm(n) => n.as_mut(),
        }
    }
}

impl Storage for SimStorage {
    fn write(&mut self, req: PersistRequest) -> Result<(), StorageError> {
        self.inner().write(req)
    }

    fn sync(&mut self) -> Result<PersistToken, StorageError> {
        self.inner().sync()
    }

    fn recover(&mut self) -> Result<DurableState, StorageError> {
        self.inner().recover()
    }

    fn truncate_below(&mut self, slot: Slot) -> Result<(), StorageError> {
        self.inner().truncate_below(slot)
    }

    fn durable_token(&self) -> PersistToken {
        match self {
            SimStorage::Mem(m) => m.durable_token(),
            SimStorage::Wal(w) => w.durable_token(),
            SimStorage::Nvm(n) => n.durable_token(),
        }
    }

    fn stats(&self) -> StorageStats {
        match self {
            SimStorage::Mem(m) => m.stats(),
            SimStorage::Wal(w) => w.stats(),
            SimStorage::Nvm(n) => n.stats(),
        }
    }
}
