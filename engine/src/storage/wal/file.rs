//! Files for the WAL: real ones ([`StdDir`]) and a simulated disk
//! ([`SimDir`]) whose unsynced writes are lost or torn at a crash, sector
//! by sector, for the crash harness and the simulator.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The unit a disk writes atomically.
pub const SECTOR_BYTES: u64 = 512;

/// One segment file.
pub trait WalFile {
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `offset` (within the preallocated length); not
    /// durable until `sync_data`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The directory holding the segments.
pub trait WalDir {
    type File: WalFile;

    /// Names of the files present.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Creates `name` with `len` zero bytes preallocated.
    fn create(&mut self, name: &str, len: u64) -> io::Result<Self::File>;

    fn open(&mut self, name: &str) -> io::Result<Self::File>;

    fn remove(&mut self, name: &str) -> io::Result<()>;

    /// Makes creations and removals durable (`fsync` of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;

    /// What to name in errors for `name` (its path).
    fn path_of(&self, name: &str) -> String;
}

/// A real directory.
pub struct StdDir {
    path: PathBuf,
}

impl StdDir {
    /// Uses `path`, creating it if needed.
    pub fn new(path: &Path) -> io::Result<StdDir> {
        std::fs::create_dir_all(path)?;
        Ok(StdDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A real segment file.
pub struct StdFile {
    file: std::fs::File,
    len: u64,
}

impl WalFile for StdFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl WalDir for StdDir {
    type File = StdFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            if let Ok(name) = e?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<StdFile> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))?;
        // Preallocate so appends do not allocate blocks (and so fdatasync has
        // no allocation metadata to write); fall back to a sparse file where
        // the file system cannot.
        // SAFETY: a valid open descriptor and in-range arguments.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if r != 0 {
            file.set_len(len)?;
        }
        Ok(StdFile { file, len })
    }

    fn open(&mut self, name: &str) -> io::Result<StdFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        let len = file.metadata()?.len();
        Ok(StdFile { file, len })
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }

    fn path_of(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

/// One operation on the simulated disk (the crash harness records them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Create(String, u64),
    Write(String, u64, Vec<u8>),
    Sync(String),
    Remove(String),
}

/// Which crash image to make of a [`SimDisk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCrash {
    /// Every unsynced sector keeps its old contents.
    None,
    /// Every unsynced sector holds its new contents.
    All,
    /// Each unsynced sector keeps old or new contents, drawn with this seed.
    Random(u64),
}

#[derive(Clone, Debug, Default)]
struct SimFileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    dirty: BTreeSet<u64>,
}

/// A simulated disk: files with durable and unsynced contents.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    files: BTreeMap<String, SimFileData>,
    /// Fault handle: the next sync fails with EIO (and its writes stay unsynced).
    fail_next_sync: bool,
    /// Recorded operations, when recording.
    pub trace: Option<Vec<DiskOp>>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Applies one recorded operation.
    pub fn apply(&mut self, op: &DiskOp) {
        match op {
            DiskOp::Create(name, len) => {
                let data = vec![0u8; *len as usize];
                self.files.insert(
                    name.clone(),
                    SimFileData {
                        durable: data.clone(),
                        current: data,
                        dirty: BTreeSet::new(),
                    },
                );
            }
            DiskOp::Write(name, off, bytes) => {
                let f = self.files.get_mut(name).expect("write to a missing file");
                let o = *off as usize;
                f.current[o..o + bytes.len()].copy_from_slice(bytes);
                if !bytes.is_empty() {
                    let first = off / SECTOR_BYTES;
                    let last = (off + bytes.len() as u64 - 1) / SECTOR_BYTES;
                    f.dirty.extend(first..=last);
                }
            }
            DiskOp::Sync(name) => {
                if let Some(f) = self.files.get_mut(name) {
                    for s in std::mem::take(&mut f.dirty) {
                        let (a, b) = sector_range(s, f.current.len());
                        f.durable[a..b].copy_from_slice(&f.current[a..b]);
                    }
                }
            }
            DiskOp::Remove(name) => {
                self.files.remove(name);
            }
        }
    }

    fn record(&mut self, op: DiskOp) {
        self.apply(&op);
        if let Some(t) = &mut self.trace {
            t.push(op);
        }
    }

    /// The disk as found after a crash now.
    pub fn crash_image(&self, which: DiskCrash) -> SimDisk {
        let mut state = match which {
            DiskCrash::Random(seed) => seed | 1,
            _ => 0,
        };
        let mut files = BTreeMap::new();
        for (name, f) in &self.files {
            let mut image = f.durable.clone();
            for s in &f.dirty {
                let keep_new = match which {
                    DiskCrash::None => false,
                    DiskCrash::All => true,
                    DiskCrash::Random(_) => {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state % 2 == 0
                    }
                };
                if keep_new {
                    let (a, b) = sector_range(*s, image.len());
                    image[a..b].copy_from_slice(&f.current[a..b]);
                }
            }
            files.insert(
                name.clone(),
                SimFileData {
                    durable: image.clone(),
                    current: image,
                    dirty: BTreeSet::new(),
                },
            );
        }
        SimDisk {
            files,
            fail_next_sync: false,
            trace: None,
        }
    }

    /// Flips bit `bit` of byte `offset` of `name`, durably (media corruption).
    pub fn flip_bit(&mut self, name: &str, offset: u64, bit: u8) {
        let f = self.files.get_mut(name).expect("corrupting a missing file");
        f.durable[offset as usize] ^= 1 << bit;
        f.current[offset as usize] ^= 1 << bit;
    }

    /// Names and durable lengths of the files.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.files
            .iter()
            .map(|(n, f)| (n.clone(), f.durable.len() as u64))
            .collect()
    }

    /// The durable bytes of `name`.
    pub fn durable(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|f| &f.durable[..])
    }

    /// Fault injection: the next sync fails with EIO.
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }
}

fn sector_range(s: u64, len: usize) -> (usize, usize) {
    let a = (s * SECTOR_BYTES) as usize;
    (a, (a + SECTOR_BYTES as usize).min(len))
}

/// A directory on a shared [`SimDisk`].
#[derive(Clone)]
pub struct SimDir {
    disk: Rc<RefCell<SimDisk>>,
}

impl SimDir {
    pub fn new(disk: Rc<RefCell<SimDisk>>) -> SimDir {
        SimDir { disk }
    }

    pub fn disk(&self) -> &Rc<RefCell<SimDisk>> {
        &self.disk
    }
}

/// A file on a [`SimDisk`].
pub struct SimFile {
    disk: Rc<RefCell<SimDisk>>,
    name: String,
    len: u64,
}

impl WalFile for SimFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let disk = self.disk.borrow();
        let f = disk
            .files
            .get(&self.name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let o = offset as usize;
        let src = f
            .current
            .get(o..o + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset + data.len() as u64 > self.len {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.disk
            .borrow_mut()
            .record(DiskOp::Write(self.name.clone(), offset, data.to_vec()));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if std::mem::take(&mut disk.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        disk.record(DiskOp::Sync(self.name.clone()));
        Ok(())
    }
}

impl WalDir for SimDir {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.disk.borrow().files.keys().cloned().collect())
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<SimFile> {
        let mut disk = self.disk.borrow_mut();
        if disk.files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        disk.record(DiskOp::Create(name.to_string(), len));
        Ok(SimFile {
            disk: self.disk.clone(),
            name: name.to_string(),
            len,
        })
    }

    fn open(&mut self, name: &str) -> io::Result<SimFile> {
        let len = match self.disk.borrow().files.get(name) {
            Some(f) => f.current.len() as u64,
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(SimFile {
            disk: self.disk.clone(),
            name: name.to_string(),
            len,
        })
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.disk
            .borrow_mut()
            .record(DiskOp::Remove(name.to_string()));
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn path_of(&self, name: &str) -> String {
        format!("simulated disk/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_sectors_are_lost_or_kept_one_by_one() {
        let disk = Rc::new(RefCell::new(SimDisk::new()));
        let mut dir = SimDir::new(disk.clone());
        let mut f = dir.create("a", 2048).unwrap();
        f.write_at(0, &[1; 1024]).unwrap();
        f.sync_data().unwrap();
        f.write_at(0, &[2; 1024]).unwrap();
        let d = disk.borrow();
        assert_eq!(d.crash_image(DiskCrash::None).durable("a").unwrap()[0], 1);
        assert_eq!(d.crash_image(DiskCrash::All).durable("a").unwrap()[600], 2);
        let mut mixed = false;
        for seed in 0..20 {
            let img = d.crash_image(DiskCrash::Random(seed));
            let bytes = img.durable("a").unwrap();
            assert!(
                bytes[..512].iter().all(|b| *b == bytes[0]),
                "a sector is atomic"
            );
            mixed |= bytes[0] != bytes[600];
        }
        assert!(mixed, "sectors tear independently");
    }

    #[test]
    fn a_failed_sync_reports_eio_and_syncs_nothing() {
        let disk = Rc::new(RefCell::new(SimDisk::new()));
        let mut dir = SimDir::new(disk.clone());
        let mut f = dir.create("a", 512).unwrap();
        f.write_at(0, &[1; 8]).unwrap();
        disk.borrow_mut().fail_next_sync();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(
            disk.borrow()
                .crash_image(DiskCrash::None)
                .durable("a")
                .unwrap()[0],
            0
        );
    }

    #[test]
    fn std_dir_round_trips() {
        let path = std::env::temp_dir().join(format!("wal-file-{}", std::process::id()));
        let mut dir = StdDir::new(&path).unwrap();
        let mut f = dir.create("seg", 4096).unwrap();
        assert_eq!(f.len(), 4096);
        f.write_at(100, b"abc").unwrap();
        f.sync_data().unwrap();
        dir.sync_dir().unwrap();
        let g = dir.open("seg").unwrap();
        let mut buf = [0u8; 3];
        g.read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        assert!(dir.create("seg", 10).is_err(), "never clobber a segment");
        assert_eq!(dir.list().unwrap(), vec!["seg".to_string()]);
        dir.remove("seg").unwrap();
        std::fs::remove_dir_all(&path).unwrap();
    }
}
