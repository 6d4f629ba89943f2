//! A persistent-memory region: stores are plain writes, durability comes
//! from an explicit flush of the touched cache lines and a fence.
//!
//! Two implementations:
//! - [`MmapRegion`]: a memory-mapped file (emulated PM, `/dev/shm` by
//!   default). Flushes use `clwb`, else `clflushopt`, else `clflush`, chosen
//!   by CPUID at start-up, then `sfence`; or `msync` of the dirty pages for a
//!   file on a real disk.
//! - [`SimRegion`]: the crash model of "PoWER Never Corrupts" (OSDI'25) for
//!   the crash harness and the simulator: a store stays outstanding until
//!   flushed and fenced, and at a crash every outstanding 8-byte chunk
//!   independently holds any value it had since it was last durable.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

/// Bytes per cache line (the unit of `clwb`).
pub const LINE_BYTES: u64 = 64;
/// Bytes per atomic store (the unit of tearing at a crash).
pub const CHUNK_BYTES: u64 = 8;

/// Byte-addressable memory that survives a crash once flushed and fenced.
pub trait PmRegion {
    /// Size in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset` (what the CPU sees now).
    fn read(&self, offset: u64, buf: &mut [u8]);

    /// Stores `data` at `offset`; not durable until flushed and fenced.
    fn write(&mut self, offset: u64, data: &[u8]);

    /// Starts writing back the cache lines covering `[offset, offset + len)`.
    fn flush(&mut self, offset: u64, len: u64);

    /// Waits until every flush issued so far is durable. Fails only in
    /// `msync` mode (an I/O error), after which nothing may be acknowledged.
    fn fence(&mut self) -> io::Result<()>;

    /// How flushes are done (recorded in run outputs).
    fn flush_mode(&self) -> FlushMode;

    /// What to name in errors (a path, "simulated region").
    fn subject(&self) -> String;

    /// The bytes `[offset, offset + len)` are free: nothing reads them
    /// again before writing them (a truncated part of the log, already
    /// durable as such). The region may return every whole page inside the
    /// range to the system, after which those pages read as zeros; it never
    /// touches a page only partly inside. Returns the bytes returned.
    /// Advisory: the default returns nothing, and a failure is only logged.
    fn discard(&mut self, offset: u64, len: u64) -> u64 {
        let _ = (offset, len);
        0
    }
}

/// How a [`MmapRegion`] makes stores durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushMode {
    /// `clwb` per line (keeps the line cached), then `sfence`.
    Clwb,
    /// `clflushopt` per line (evicts it), then `sfence`.
    ClflushOpt,
    /// `clflush` per line (serialized, evicts it).
    Clflush,
    /// `msync(MS_SYNC)` of the dirty pages: for a file on a real disk.
    Msync,
    /// The simulated region of the crash harness.
    Simulated,
}

impl FlushMode {
    /// The best cache-line flush this CPU has (CPUID leaf 7: EBX bit 24 is
    /// `clwb`, bit 23 `clflushopt`); `msync` off x86-64.
    pub fn detect() -> FlushMode {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: CPUID is available on every x86-64 CPU.
            #[allow(unused_unsafe)]
            let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            if leaf7.ebx & (1 << 24) != 0 {
                return FlushMode::Clwb;
            }
            if leaf7.ebx & (1 << 23) != 0 {
                return FlushMode::ClflushOpt;
            }
            FlushMode::Clflush
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            FlushMode::Msync
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlushMode::Clwb => "clwb",
            FlushMode::ClflushOpt => "clflushopt",
            FlushMode::Clflush => "clflush",
            FlushMode::Msync => "msync",
            FlushMode::Simulated => "simulated",
        }
    }
}

impl fmt::Display for FlushMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FlushMode, String> {
        Ok(match s {
            "auto" => FlushMode::detect(),
            "clwb" => FlushMode::Clwb,
            "clflushopt" => FlushMode::ClflushOpt,
            "clflush" => FlushMode::Clflush,
            "msync" => FlushMode::Msync,
            _ => {
                return Err(format!(
                    "unknown flush mode {s:?} (auto, clwb, clflushopt, clflush, msync)"
                ));
            }
        })
    }
}

/// Flushes one cache line. Hand-written because Rust 1.95 stable has no
/// intrinsics for `clwb`/`clflushopt`; the bytes are the instructions'
/// encodings with the address in `rax`, so no assembler feature flag is needed.
///
/// # Safety
/// `p` must point into memory mapped in this process (a flush of an
/// unmapped address faults) for the whole call.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn flush_line(mode: FlushMode, p: *const u8) {
    // SAFETY: the caller keeps `p` inside a live mapping; the instructions
    // only write back or evict the line holding it and change no register
    // or memory.
    unsafe {
        match mode {
            FlushMode::Clwb => {
                std::arch::asm!(".byte 0x66, 0x0f, 0xae, 0x30", in("rax") p, options(nostack, preserves_flags))
            }
            FlushMode::ClflushOpt => {
                std::arch::asm!(".byte 0x66, 0x0f, 0xae, 0x38", in("rax") p, options(nostack, preserves_flags))
            }
            FlushMode::Clflush => {
                std::arch::asm!(".byte 0x0f, 0xae, 0x38", in("rax") p, options(nostack, preserves_flags))
            }
            FlushMode::Msync | FlushMode::Simulated => {}
        }
    }
}

/// A memory-mapped file used as persistent memory.
pub struct MmapRegion {
    map: memmap2::MmapMut,
    /// Kept open to punch holes in ([`PmRegion::discard`]).
    file: std::fs::File,
    path: PathBuf,
    mode: FlushMode,
    /// The system's page size: the unit `discard` returns.
    page: u64,
    /// Cleared when the file system cannot punch holes.
    punch: bool,
    /// `msync` mode: ranges flushed since the last fence.
    msync_pending: Vec<(u64, u64)>,
}

impl MmapRegion {
    /// Maps `path`, creating it with `len` zero bytes if `create` and it
    /// does not exist. An existing file keeps its size.
    pub fn open(path: &Path, len: u64, create: bool, mode: FlushMode) -> io::Result<MmapRegion> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() == 0 {
            if !create {
                return Err(io::Error::new(io::ErrorKind::NotFound, "empty file"));
            }
            file.set_len(len)?;
            file.sync_all()?;
        }
        // SAFETY: the file is ours for the process's lifetime (the replica
        // holds it exclusively); nothing else truncates it while mapped.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        tracing::info!(path = %path.display(), len = map.len(), mode = %mode, "nvm region mapped");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(MmapRegion {
            map,
            file,
            path: path.to_path_buf(),
            mode,
            page: u64::try_from(page)
                .ok()
                .filter(|p| p.is_power_of_two())
                .unwrap_or(4096),
            punch: true,
            msync_pending: Vec::new(),
        })
    }
}

impl PmRegion for MmapRegion {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self.map[o..o + buf.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.map[o..o + data.len()].copy_from_slice(data);
    }

    fn flush(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        // The cache-line flushes below take raw addresses: a range outside
        // the mapping would be undefined behaviour, so it is a contract.
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.map.len() as u64),
            "flush of {offset}+{len} outside a mapping of {} bytes",
            self.map.len()
        );
        match self.mode {
            FlushMode::Msync | FlushMode::Simulated => self.msync_pending.push((offset, len)),
            #[cfg(target_arch = "x86_64")]
            mode => {
                let base = self.map.as_ptr();
                let mut line = offset & !(LINE_BYTES - 1);
                while line < offset + len {
                    // SAFETY: `line` is inside the mapping (offset+len <= len()),
                    // which `self.map` keeps alive for the call.
                    unsafe { flush_line(mode, base.add(line as usize)) };
                    line += LINE_BYTES;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => self.msync_pending.push((offset, len)),
        }
    }

    fn fence(&mut self) -> io::Result<()> {
        match self.mode {
            FlushMode::Msync | FlushMode::Simulated => {
                for (off, len) in self.msync_pending.drain(..) {
                    self.map.flush_range(off as usize, len as usize)?;
                }
                Ok(())
            }
            _ => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: sfence has no preconditions.
                unsafe {
                    std::arch::x86_64::_mm_sfence()
                };
                Ok(())
            }
        }
    }

    fn flush_mode(&self) -> FlushMode {
        self.mode
    }

    fn subject(&self) -> String {
        self.path.display().to_string()
    }

    /// Punches a hole (`FALLOC_FL_PUNCH_HOLE`, size kept) over the whole
    /// pages inside the range: tmpfs frees them and unmaps them from every
    /// mapping, so they leave the resident set; a later store faults in a
    /// zeroed page. Nothing in the range may be outstanding (the log calls
    /// this after the fence that made the range free).
    fn discard(&mut self, offset: u64, len: u64) -> u64 {
        let end = (offset + len).min(self.len()) & !(self.page - 1);
        let start = offset.next_multiple_of(self.page);
        if !self.punch || start >= end {
            return 0;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            loop {
                // SAFETY: fallocate changes only the file; the mapping
                // stays valid and reads the punched pages as zeros.
                let r = unsafe {
                    libc::fallocate(
                        self.file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        start as libc::off_t,
                        (end - start) as libc::off_t,
                    )
                };
                if r == 0 {
                    return end - start;
                }
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot return truncated log pages to the system; they stay resident");
                break;
            }
        }
        self.punch = false;
        0
    }
}

/// Which crash image to make from a [`SimRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashImage {
    /// Every outstanding chunk keeps its durable value.
    None,
    /// Every outstanding chunk holds its latest value.
    All,
    /// Each outstanding chunk holds one of its values, drawn with this seed.
    Random(u64),
}

/// Simulated persistent memory with the PoWER crash model.
#[derive(Clone, Debug)]
pub struct SimRegion {
    /// What reads see.
    current: Vec<u8>,
    /// The image as of the last fence.
    durable: Vec<u8>,
    /// Per outstanding chunk: every value it held since it was durable.
    outstanding: FxHashMap<u64, Vec<u64>>,
    /// Per chunk flushed since the last fence: how many of its values the
    /// flush covered.
    flushed: FxHashMap<u64, usize>,
    /// Test-only: make `fence` fail with EIO from now on.
    fail_fences: bool,
}

impl SimRegion {
    /// A zeroed region of `len` bytes (a multiple of 8).
    pub fn new(len: u64) -> SimRegion {
        assert_eq!(
            len % CHUNK_BYTES,
            0,
            "region length must be a multiple of 8"
        );
        SimRegion::from_image(vec![0; len as usize])
    }

    /// A region whose durable and visible contents are `image` (a machine
    /// restarting after a crash).
    pub fn from_image(image: Vec<u8>) -> SimRegion {
        SimRegion {
            durable: image.clone(),
            current: image,
            outstanding: FxHashMap::default(),
            flushed: FxHashMap::default(),
            fail_fences: false,
        }
    }

    fn chunk_value(buf: &[u8], chunk: u64) -> u64 {
        let o = (chunk * CHUNK_BYTES) as usize;
        u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"))
    }

    fn set_chunk(buf: &mut [u8], chunk: u64, v: u64) {
        let o = (chunk * CHUNK_BYTES) as usize;
        buf[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The contents after a crash now.
    pub fn crash_image(&self, which: CrashImage) -> Vec<u8> {
        let mut image = self.durable.clone();
        let mut state = match which {
            CrashImage::Random(seed) => seed | 1,
            _ => 0,
        };
        let mut chunks: Vec<_> = self.outstanding.iter().collect();
        chunks.sort_unstable_by_key(|(c, _)| **c);
        for (chunk, values) in chunks {
            let pick = match which {
                CrashImage::None => 0,
                CrashImage::All => values.len(),
                CrashImage::Random(_) => {
                    // xorshift: deterministic per seed, no RNG crate needed here.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % (values.len() as u64 + 1)) as usize
                }
            };
            if pick > 0 {
                Self::set_chunk(&mut image, *chunk, values[pick - 1]);
            }
        }
        image
    }

    /// Number of chunks with outstanding stores.
    pub fn outstanding_chunks(&self) -> usize {
        self.outstanding.len()
    }

    /// Flips bit `bit` of byte `offset` in the durable image and in what
    /// reads see (media corruption).
    pub fn flip_bit(&mut self, offset: u64, bit: u8) {
        self.durable[offset as usize] ^= 1 << bit;
        self.current[offset as usize] ^= 1 << bit;
    }

    /// The durable image.
    pub fn durable_image(&self) -> &[u8] {
        &self.durable
    }

    /// Fault injection: every later fence fails (a failed msync).
    pub fn fail_fences(&mut self) {
        self.fail_fences = true;
    }
}

impl PmRegion for SimRegion {
    fn len(&self) -> u64 {
        self.current.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self.current[o..o + buf.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let o = offset as usize;
        self.current[o..o + data.len()].copy_from_slice(data);
        let first = offset / CHUNK_BYTES;
        let last = (offset + data.len() as u64 - 1) / CHUNK_BYTES;
        for chunk in first..=last {
            let v = Self::chunk_value(&self.current, chunk);
            self.outstanding.entry(chunk).or_default().push(v);
        }
    }

    fn flush(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "flush of {offset}+{len} outside a region of {} bytes",
            self.len()
        );
        let first_line = offset / LINE_BYTES;
        let last_line = (offset + len - 1) / LINE_BYTES;
        for line in first_line..=last_line {
            let per_line = LINE_BYTES / CHUNK_BYTES;
            for chunk in line * per_line..(line + 1) * per_line {
                if let Some(values) = self.outstanding.get(&chunk) {
                    self.flushed.insert(chunk, values.len());
                }
            }
        }
    }

    fn fence(&mut self) -> io::Result<()> {
        if self.fail_fences {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for (chunk, n) in self.flushed.drain() {
            let values = self
                .outstanding
                .get_mut(&chunk)
                .expect("flushed chunk is outstanding");
            let v = values[n - 1];
            Self::set_chunk(&mut self.durable, chunk, v);
            values.drain(..n);
            if values.is_empty() {
                self.outstanding.remove(&chunk);
            }
        }
        Ok(())
    }

    fn flush_mode(&self) -> FlushMode {
        FlushMode::Simulated
    }

    fn subject(&self) -> String {
        "simulated region".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushed_and_fenced_stores_are_durable() {
        let mut r = SimRegion::new(256);
        r.write(0, &[1; 16]);
        r.write(64, &[2; 8]);
        r.flush(0, 16);
        assert_eq!(
            r.crash_image(CrashImage::None)[0],
            0,
            "flushed but not fenced"
        );
        r.fence().unwrap();
        let img = r.crash_image(CrashImage::None);
        assert_eq!(&img[..16], &[1; 16]);
        assert_eq!(img[64], 0, "never flushed");
        assert_eq!(r.crash_image(CrashImage::All)[64], 2);
        assert_eq!(r.outstanding_chunks(), 1);
    }

    #[test]
    fn a_crash_gives_each_chunk_one_of_its_values() {
        let mut r = SimRegion::new(64);
        for v in 1..=3u8 {
            r.write(0, &[v; 16]);
        }
        for seed in 0..50 {
            let img = r.crash_image(CrashImage::Random(seed));
            for chunk in 0..2 {
                let b = img[chunk * 8];
                assert!(b <= 3 && img[chunk * 8..chunk * 8 + 8].iter().all(|x| *x == b));
            }
        }
    }

    #[test]
    fn a_store_after_the_flush_stays_outstanding() {
        let mut r = SimRegion::new(64);
        r.write(0, &[1; 8]);
        r.flush(0, 8);
        r.write(0, &[2; 8]);
        r.fence().unwrap();
        assert_eq!(r.crash_image(CrashImage::None)[0], 1);
        assert_eq!(r.crash_image(CrashImage::All)[0], 2);
    }

    #[test]
    fn mmap_region_flushes_in_every_mode_this_cpu_has() {
        let dir = std::env::temp_dir().join(format!("pm-region-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut modes = vec![FlushMode::Msync, FlushMode::detect()];
        if FlushMode::detect() == FlushMode::Clwb {
            modes.push(FlushMode::ClflushOpt);
        }
        if FlushMode::detect() != FlushMode::Msync {
            modes.push(FlushMode::Clflush);
        }
        for mode in modes {
            let path = dir.join(mode.name());
            let mut r = MmapRegion::open(&path, 8192, true, mode).unwrap();
            r.write(100, b"hello");
            r.flush(100, 5);
            r.fence().unwrap();
            drop(r);
            let r = MmapRegion::open(&path, 8192, false, mode).unwrap();
            let mut buf = [0; 5];
            r.read(100, &mut buf);
            assert_eq!(&buf, b"hello", "{mode}");
        }
        assert!(MmapRegion::open(&dir.join("missing"), 8192, false, FlushMode::Msync).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
