//! `engine::instrumentation`: the lab's vocabulary and its recorders.
//!
//! **Architecture Invariant:** no protocol logic here, and nothing here is
//! called by `engine::core`.
//!
//! Costs decide the shape (see `design/lab.md`): a span per command is not
//! affordable at hundreds of thousands of commands per second, so
//! - every stage duration goes into a per-task HdrHistogram (a few ns per
//!   record), merged into the shared [`Lab`] now and then;
//! - trace events are kept only for *sampled* commands (chosen by a hash of
//!   `(client, seq)`, so every replica samples the same commands and their
//!   flows connect) and for flushes, into a bounded buffer, and written as a
//!   Chrome JSON trace (Perfetto opens it) after the run.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds ([`now_ns`]): comparable across
//! the processes of one machine, so one trace holds every replica.

pub mod profile;
pub mod summary;

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

macro_rules! stages {
    ($($(#[doc = $doc:literal])* $v:ident => $name:literal,)*) => {
        /// A stage of a command's life (DESIGN.md, "One write, stage by stage").
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(usize)]
        pub enum Stage { $($(#[doc = $doc])* $v,)* }

        impl Stage {
            pub const ALL: &'static [Stage] = &[$(Stage::$v,)*];
            /// The names of [`Stage::ALL`], in the same (DESIGN.md's table) order.
            pub const NAMES: &'static [&'static str] = &[$($name,)*];

            /// The name used in spans, traces, result columns and reports.
            pub fn name(self) -> &'static str {
                match self { $(Stage::$v => $name,)* }
            }

            pub fn from_name(s: &str) -> Option<Stage> {
                match s { $($name => Some(Stage::$v),)* _ => None }
            }

            /// Emits `e` as a `tracing` event named after its stage (target
            /// `lab`, level TRACE): off unless a subscriber asks for it.
            fn emit(e: &TraceEvent) {
                match e.stage {
                    $(Stage::$v => tracing::trace!(
                        name: $name,
                        target: "lab",
                        process = e.process,
                        start_ns = e.start_ns,
                        dur_ns = e.dur_ns,
                        slot = e.slot,
                        flow = e.flow
                    ),)*
                }
            }
        }
    };
}

stages! {
    /// Client: call → request written to the socket.
    ClientSend => "client.send",
    /// Leader: request decoded → taken into a batch.
    LeaderQueue => "leader.queue",
    /// Leader: batch opened (its first command arrived) → sealed into a slot.
    LeaderBatch => "leader.batch",
    /// Leader: slot handed to storage → durable on the leader.
    LeaderPersist => "leader.persist",
    /// Any replica: one NVM flush (lines flushed and fenced).
    NvmFlush => "nvm.flush",
    /// Any replica: one WAL fdatasync.
    WalFsync => "wal.fsync",
    /// Leader: slot sealed → Accept written to a follower's socket.
    P2aSend => "p2a.send",
    /// Follower: Accept decoded → accepted value durable.
    FollowerPersist => "follower.persist",
    /// Leader: slot sealed → an Accepted for it decoded.
    P2bRecv => "p2b.recv",
    /// Leader: slot sealed → a majority durable (committed).
    LeaderQuorum => "leader.quorum",
    /// Leader: committed → state machine executed.
    LeaderApply => "leader.apply",
    /// Leader: executed → reply written.
    LeaderReply => "leader.reply",
    /// Client: call → answer (end to end).
    ClientRecv => "client.recv",
    /// Candidate: Prepare sent (election started) → written to a peer.
    P1aSend => "p1a.send",
    /// Candidate: election started → a Promise decoded.
    P1bRecv => "p1b.recv",
    /// New leader: elected → every recovered slot committed.
    LeaderRecover => "leader.recover",
    /// Lagging follower: catch-up request sent → every slot it asked for
    /// committed here (slot: the end of the range; one span per request,
    /// so consecutive spans show progress and slots per second).
    CatchupSlots => "catchup.slots",
    /// Follower behind the leader's log: checkpoint fetch started →
    /// checkpoint installed (slot: the checkpoint's; its size and MiB/s
    /// are logged with it).
    CatchupCheckpoint => "catchup.checkpoint",
    /// Any replica: one turn of the core task (a burst of events, carrying
    /// out its outputs, applying, a checkpoint's freeze, storage syncs and
    /// truncation) that took [`STALL_NS_MIN`] or longer: while it runs the
    /// replica answers nothing. Slot: the applied slot at its end.
    CoreStall => "core.stall",
}

/// A core-task turn this long or longer is a stall ([`Stage::CoreStall`]):
/// half the longest the replica may hold every command it has back (1 ms;
/// ordinary busy turns run to a few hundred microseconds).
pub const STALL_NS_MIN: u64 = 500_000;

impl Stage {
    /// Leader change is rare and matters: its stages are always traced
    /// (when tracing is on), not only for sampled commands.
    #[inline]
    pub fn always_traced(self) -> bool {
        matches!(
            self,
            Stage::P1aSend
                | Stage::P1bRecv
                | Stage::LeaderRecover
                | Stage::CatchupSlots
                | Stage::CatchupCheckpoint
                | Stage::CoreStall
        )
    }

    /// Stages only a lagging replica, or a stalled core, produces: a run
    /// without one has none of them (every other stage occurs in every run).
    #[inline]
    pub fn occasional(self) -> bool {
        matches!(
            self,
            Stage::CatchupSlots | Stage::CatchupCheckpoint | Stage::CoreStall
        )
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process of a
/// machine, unlike `Instant`, whose origin is private).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether command `(client, seq)` is traced, one in `every` (0: none).
/// The same on every replica and client.
#[inline]
pub fn sampled(client: u64, seq: u64, every: u64) -> bool {
    every != 0 && (flow_id(client, seq) >> 1).is_multiple_of(every)
}

/// The flow id of command `(client, seq)` in traces.
#[inline]
pub fn flow_id(client: u64, seq: u64) -> u64 {
    let mut x = client ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x | 1
}

/// Longest duration a histogram holds (longer ones are clamped): 100 s.
const HIGHEST_NS: u64 = 100_000_000_000;
/// Significant digits kept: 2 (1% resolution) keeps one histogram at 32 KB.
const SIGFIG: u8 = 2;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).expect("valid bounds")
}

/// A histogram per stage, in nanoseconds; a stage's histogram exists once
/// something was recorded for it (a connection writer holds one, not 16).
#[derive(Clone, Debug)]
pub struct StageHistograms {
    h: Vec<Option<Histogram<u64>>>,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            h: vec![None; Stage::ALL.len()],
        }
    }
}

impl StageHistograms {
    #[inline]
    pub fn record(&mut self, stage: Stage, ns: u64) {
        let h = self.h[stage as usize].get_or_insert_with(new_histogram);
        let _ = h.record(ns.clamp(1, HIGHEST_NS));
    }

    pub fn merge(&mut self, other: &StageHistograms) {
        for (a, b) in self.h.iter_mut().zip(&other.h) {
            if let Some(b) = b
                && !b.is_empty()
            {
                let _ = a.get_or_insert_with(new_histogram).add(b);
            }
        }
    }

    /// The stage's histogram, if anything was recorded for it.
    pub fn get(&self, stage: Stage) -> Option<&Histogram<u64>> {
        self.h[stage as usize].as_ref().filter(|h| !h.is_empty())
    }

    /// How many durations were recorded for `stage`.
    pub fn count(&self, stage: Stage) -> u64 {
        self.get(stage).map_or(0, |h| h.len())
    }

    pub fn clear(&mut self) {
        for h in self.h.iter_mut().flatten() {
            h.reset();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.h.iter().flatten().all(|h| h.is_empty())
    }

    /// Every recorded stage's histogram, V2 + deflate, base64 (for files).
    pub fn encode(&self) -> Vec<(String, String)> {
        use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
        let mut out = Vec::new();
        for s in Stage::ALL {
            let Some(h) = self.get(*s) else { continue };
            let mut buf = Vec::new();
            V2DeflateSerializer::new()
                .serialize(h, &mut buf)
                .expect("serializing to memory");
            out.push((s.name().to_string(), base64_encode(&buf)));
        }
        out
    }

    /// Reads what `encode` wrote (unknown stages are skipped).
    pub fn decode(parts: &[(String, String)]) -> Result<StageHistograms, String> {
        use hdrhistogram::serialization::Deserializer;
        let mut h = StageHistograms::default();
        for (name, b64) in parts {
            let Some(stage) = Stage::from_name(name) else {
                continue;
            };
            let bytes = base64_decode(b64).ok_or("bad base64")?;
            let mut d = Deserializer::new();
            let read: Histogram<u64> = d
                .deserialize(&mut &bytes[..])
                .map_err(|e| format!("{name}: {e:?}"))?;
            h.h[stage as usize]
                .get_or_insert_with(new_histogram)
                .add(&read)
                .map_err(|e| format!("{name}: {e:?}"))?;
        }
        Ok(h)
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// One traced interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub stage: Stage,
    /// The process track: a replica id, or 0 for the load generator.
    pub process: u32,
    pub start_ns: u64,
    pub dur_ns: u64,
    /// The slot concerned (0: none).
    pub slot: u64,
    /// The sampled command's flow id (0: not part of a flow).
    pub flow: u64,
}

impl serde::Serialize for TraceEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            self.stage.name(),
            self.process,
            self.start_ns,
            self.dur_ns,
            self.slot,
            self.flow,
        )
            .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for TraceEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, process, start_ns, dur_ns, slot, flow): (String, u32, u64, u64, u64, u64) =
            serde::Deserialize::deserialize(d)?;
        let stage = Stage::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown stage {name}")))?;
        Ok(TraceEvent {
            stage,
            process,
            start_ns,
            dur_ns,
            slot,
            flow,
        })
    }
}

/// A stage that ends when a frame is written: the writer records it
/// (`p2a.send`, `p1a.send`, `leader.reply`, `client.send`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub stage: Stage,
    pub start_ns: u64,
    pub slot: u64,
    /// Non-zero: a sampled command; the write is traced as part of its flow.
    pub flow: u64,
}

/// Where a task records: the shared lab and the process track it writes to.
#[derive(Clone, Debug)]
pub struct LabRef {
    pub lab: std::sync::Arc<Lab>,
    pub process: u32,
}

impl LabRef {
    /// Records the marks of frames whose write just ended at `end_ns` (one
    /// lock per write, not per frame).
    pub fn record_marks(&self, marks: &[Mark], end_ns: u64) {
        if marks.is_empty() {
            return;
        }
        let mut inner = self.lab.inner.lock().expect("lab");
        for m in marks {
            let dur_ns = end_ns.saturating_sub(m.start_ns);
            inner.hist.record(m.stage, dur_ns);
            if (m.flow != 0 || m.stage.always_traced()) && self.lab.tracing() {
                let e = TraceEvent {
                    stage: m.stage,
                    process: self.process,
                    start_ns: m.start_ns,
                    dur_ns,
                    slot: m.slot,
                    flow: m.flow,
                };
                Stage::emit(&e);
                inner.push_event(e, self.lab.trace_events_max, &self.lab.dropped);
            }
        }
    }
}

#[derive(Debug, Default)]
struct LabInner {
    hist: StageHistograms,
    events: Vec<TraceEvent>,
}

impl LabInner {
    fn push_event(&mut self, e: TraceEvent, max: usize, dropped: &AtomicU64) {
        if self.events.len() < max {
            self.events.push(e);
        } else {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one process records for a run: per-stage histograms of every
/// command, batch and flush, and the trace of the sampled ones.
#[derive(Debug)]
pub struct Lab {
    inner: Mutex<LabInner>,
    /// One command in `sample_every` is traced; 0: no trace (histograms only).
    pub sample_every: u64,
    /// Most trace events kept; later ones are counted and dropped.
    pub trace_events_max: usize,
    dropped: AtomicU64,
}

/// Default bound on the trace buffer: ~100 bytes each in memory, ~150 in JSON.
pub const TRACE_EVENTS_MAX: usize = 500_000;

impl Lab {
    pub fn new(sample_every: u64, trace_events_max: usize) -> Lab {
        Lab {
            inner: Mutex::new(LabInner::default()),
            sample_every,
            trace_events_max,
            dropped: AtomicU64::new(0),
        }
    }

    /// Histograms only, no trace.
    pub fn untraced() -> Lab {
        Lab::new(0, 0)
    }

    pub fn tracing(&self) -> bool {
        self.sample_every != 0
    }

    /// Whether command `(client, seq)` is traced; its flow id if so.
    #[inline]
    pub fn flow_of(&self, client: u64, seq: u64) -> Option<u64> {
        sampled(client, seq, self.sample_every).then(|| flow_id(client, seq))
    }

    /// Adds a task's local recordings and empties them.
    pub fn merge(&self, local: &mut LocalRecorder) {
        if local.pending == 0 && local.events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("lab");
        if !local.hist.is_empty() {
            inner.hist.merge(&local.hist);
            local.hist.clear();
        }
        for e in local.events.drain(..) {
            inner.push_event(e, self.trace_events_max, &self.dropped);
        }
        local.pending = 0;
    }

    /// Forgets the steady-state figures recorded so far (the end of a
    /// warmup); leader-change stages are kept (they are events of the run,
    /// and the start-up election happens before any warmup ends). Tasks
    /// merge what they hold at most [`MERGE_INTERVAL_NS`] later, so up to
    /// that much from before the reset can still arrive.
    pub fn reset(&self) {
        let mut inner = self.inner.lock().expect("lab");
        for s in Stage::ALL.iter().filter(|s| !s.always_traced()) {
            if let Some(h) = &mut inner.hist.h[*s as usize] {
                h.reset();
            }
        }
        inner.events.retain(|e| e.stage.always_traced());
        self.dropped.store(0, Ordering::Relaxed);
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> (StageHistograms, Vec<TraceEvent>) {
        let inner = self.inner.lock().expect("lab");
        (inner.hist.clone(), inner.events.clone())
    }

    /// Trace events dropped because the buffer was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A busy task's own recorder (no lock per record), merged into the
/// [`Lab`] every [`MERGE_EVERY`] records or [`MERGE_INTERVAL_NS`].
#[derive(Debug)]
pub struct LocalRecorder {
    pub hist: StageHistograms,
    pub events: Vec<TraceEvent>,
    pub process: u32,
    tracing: bool,
    pending: usize,
    last_merge_ns: u64,
}

/// Recordings a task keeps before merging.
pub const MERGE_EVERY: usize = 4096;
/// Longest a task keeps recordings before merging: 100 ms.
pub const MERGE_INTERVAL_NS: u64 = 100_000_000;

impl LocalRecorder {
    pub fn new(lab: &Lab, process: u32) -> LocalRecorder {
        LocalRecorder {
            hist: StageHistograms::default(),
            events: Vec::new(),
            process,
            tracing: lab.tracing(),
            pending: 0,
            last_merge_ns: now_ns(),
        }
    }

    #[inline]
    pub fn record(&mut self, stage: Stage, ns: u64) {
        self.hist.record(stage, ns);
        self.pending += 1;
    }

    /// Records the duration and, for a sampled command (`flow != 0`) or a
    /// stage of leader change, the interval too.
    #[inline]
    pub fn span(&mut self, stage: Stage, start_ns: u64, end_ns: u64, slot: u64, flow: u64) {
        let dur_ns = end_ns.saturating_sub(start_ns);
        self.record(stage, dur_ns);
        if (flow != 0 || stage.always_traced()) && self.tracing {
            self.event(stage, start_ns, dur_ns, slot, flow);
        }
    }

    /// Adds a trace interval without recording a duration.
    pub fn event(&mut self, stage: Stage, start_ns: u64, dur_ns: u64, slot: u64, flow: u64) {
        let e = TraceEvent {
            stage,
            process: self.process,
            start_ns,
            dur_ns,
            slot,
            flow,
        };
        Stage::emit(&e);
        self.events.push(e);
    }

    /// Merges into `lab` if enough was recorded or enough time passed.
    #[inline]
    pub fn merge_if_due(&mut self, lab: &Lab, now_ns: u64) {
        if self.pending >= MERGE_EVERY
            || (self.pending > 0 || !self.events.is_empty())
                && now_ns.saturating_sub(self.last_merge_ns) >= MERGE_INTERVAL_NS
        {
            lab.merge(self);
            self.last_merge_ns = now_ns;
        }
    }
}

/// CPU time and peak memory of this process so far.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcessUsage {
    pub user_s: f64,
    pub sys_s: f64,
    /// Peak resident memory (the kernel's high-water mark): heap and
    /// stacks, and the pages of mapped files, the emulated NVM log included.
    pub max_rss_mib: f64,
    /// Peak anonymous memory (heap and stacks), sampled by
    /// [`sample_memory`]; 0 when no sampler ran.
    pub max_anon_mib: f64,
    /// Peak shared-memory pages mapped (the emulated NVM file on /dev/shm:
    /// the persistent memory device's pages, not the process's heap).
    pub max_shmem_mib: f64,
}

/// Peaks seen by the memory sampler, in KiB.
static ANON_MAX_KIB: AtomicU64 = AtomicU64::new(0);
static SHMEM_MAX_KIB: AtomicU64 = AtomicU64::new(0);

/// Period of the memory sampler.
pub const MEMORY_SAMPLE_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// Starts (once per process) a thread that reads `/proc/self/status` every
/// [`MEMORY_SAMPLE_PERIOD`] and keeps the peaks of `RssAnon` and `RssShmem`
/// (the kernel keeps a high-water mark of their sum only). A no-op where
/// the file is missing.
pub fn sample_memory() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        if read_memory().is_none() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("memory-sampler".into())
            .spawn(|| {
                while read_memory().is_some() {
                    std::thread::sleep(MEMORY_SAMPLE_PERIOD);
                }
            });
    });
}

/// Reads `RssAnon` and `RssShmem` now and raises the peaks.
fn read_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let (anon, shmem) = parse_status(&status)?;
    ANON_MAX_KIB.fetch_max(anon, Ordering::Relaxed);
    SHMEM_MAX_KIB.fetch_max(shmem, Ordering::Relaxed);
    Some((anon, shmem))
}

/// `RssAnon` and `RssShmem` in KiB from a `/proc/PID/status` text.
fn parse_status(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("RssAnon:")?, field("RssShmem:")?))
}

impl ProcessUsage {
    pub fn now() -> ProcessUsage {
        // SAFETY: rusage is plain integers: all zeros is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct it is given, which outlives the call.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        // One more sample, so a short run has one at its end.
        let sampled = ANON_MAX_KIB.load(Ordering::Relaxed) > 0 && read_memory().is_some();
        let mib = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1024.0;
        ProcessUsage {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
            max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
            max_anon_mib: if sampled { mib(&ANON_MAX_KIB) } else { 0.0 },
            max_shmem_mib: if sampled { mib(&SHMEM_MAX_KIB) } else { 0.0 },
        }
    }
}

/// What a replica process leaves for the experiment runner at exit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LabFile {
    pub process: u32,
    pub name: String,
    /// Its role when it stopped ("leader", "follower", "candidate").
    pub role: String,
    /// Slots it proposed as leader over the run.
    pub slots_proposed: u64,
    pub histograms: Vec<(String, String)>,
    pub events: Vec<TraceEvent>,
    pub events_dropped: u64,
    pub usage: ProcessUsage,
    /// The storage flush mode (e.g. "clwb"), if it has one.
    pub flush_mode: Option<String>,
}

/// Writes `events` as a Chrome JSON trace (Perfetto opens it): a process
/// track per replica and one for the load generator, a thread track per
/// stage (with lanes where sampled commands overlap), and a flow per
/// sampled command linking its slices across processes in time order.
pub fn write_chrome_trace(
    events: &[TraceEvent],
    process_names: &[(u32, String)],
    mut out: impl Write,
) -> io::Result<()> {
    let mut sorted: Vec<&TraceEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.start_ns, e.process, e.stage));
    let origin = sorted.first().map_or(0, |e| e.start_ns);
    let us = |ns: u64| (ns.saturating_sub(origin)) as f64 / 1000.0;
    // Lanes: per (process, stage), the first lane free at the event's start.
    let mut lanes: HashMap<(u32, Stage), Vec<u64>> = HashMap::new();
    let mut placed = Vec::with_capacity(sorted.len());
    let mut threads: HashMap<(u32, u32), String> = HashMap::new();
    for e in &sorted {
        let l = lanes.entry((e.process, e.stage)).or_default();
        let lane = match l.iter().position(|end| *end <= e.start_ns) {
            Some(i) => i,
            None => {
                l.push(0);
                l.len() - 1
            }
        };
        l[lane] = e.start_ns + e.dur_ns.max(1);
        let tid = (e.stage as u32) * 100 + lane as u32;
        threads.entry((e.process, tid)).or_insert_with(|| {
            if lane == 0 {
                e.stage.name().to_string()
            } else {
                format!("{} #{lane}", e.stage.name())
            }
        });
        placed.push((*e, tid));
    }
    write!(out, "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    let mut first = true;
    let mut sep = |out: &mut dyn Write| -> io::Result<()> {
        if !first {
            out.write_all(b",\n")?;
        }
        first = false;
        Ok(())
    };
    for (pid, name) in process_names {
        sep(&mut out)?;
        write!(
            out,
            "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{pid},\"tid\":0,\"args\":{{\"name\":{}}}}}",
            json_str(name)
        )?;
        sep(&mut out)?;
        write!(
            out,
            "{{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":{pid},\"tid\":0,\"args\":{{\"sort_index\":{pid}}}}}"
        )?;
    }
    let mut thread_list: Vec<_> = threads.into_iter().collect();
    thread_list.sort();
    for ((pid, tid), name) in thread_list {
        sep(&mut out)?;
        write!(
            out,
            "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{pid},\"tid\":{tid},\"args\":{{\"name\":{}}}}}",
            json_str(&name)
        )?;
    }
    // Flows: the slices of each sampled command in time order; the
    // end-to-end client.recv slice closes the flow at its end.
    let mut flows: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (e, _)) in placed.iter().enumerate() {
        if e.flow != 0 {
            flows.entry(e.flow).or_default().push(i);
        }
    }
    let flow_ts = |e: &TraceEvent| {
        if e.stage == Stage::ClientRecv {
            (e.start_ns + e.dur_ns).saturating_sub(1)
        } else {
            e.start_ns
        }
    };
    let mut flow_phase = vec![None; placed.len()];
    for idx in flows.values_mut() {
        idx.sort_by_key(|i| flow_ts(placed[*i].0));
        if idx.len() < 2 {
            continue;
        }
        for (k, i) in idx.iter().enumerate() {
            flow_phase[*i] = Some(if k == 0 {
                "s"
            } else if k == idx.len() - 1 {
                "f"
            } else {
                "t"
            });
        }
    }
    for (i, (e, tid)) in placed.iter().enumerate() {
        sep(&mut out)?;
        write!(
            out,
            "{{\"ph\":\"X\",\"name\":\"{}\",\"cat\":\"stage\",\"pid\":{},\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"slot\":{},\"flow\":{}}}}}",
            e.stage.name(),
            e.process,
            us(e.start_ns),
            e.dur_ns as f64 / 1000.0,
            e.slot,
            e.flow
        )?;
        if let Some(ph) = flow_phase[i] {
            sep(&mut out)?;
            let bp = if ph == "f" { ",\"bp\":\"e\"" } else { "" };
            write!(
                out,
                "{{\"ph\":\"{ph}\",\"name\":\"command\",\"cat\":\"flow\",\"id\":{},\"pid\":{},\"tid\":{tid},\"ts\":{:.3}{bp}}}",
                e.flow,
                e.process,
                us(flow_ts(e))
            )?;
        }
    }
    write!(out, "]}}")?;
    out.flush()
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_memory_sampler_reads_anon_and_shmem_and_keeps_peaks() {
        let status = "Name:\tx\nVmHWM:\t  81976 kB\nRssAnon:\t   49652 kB\nRssFile:\t    5620 kB\nRssShmem:\t   23172 kB\n";
        assert_eq!(parse_status(status), Some((49652, 23172)));
        assert_eq!(parse_status("RssAnon: 1 kB\n"), None);
        sample_memory();
        // A 64 MiB heap allocation, touched, then given back (an mmap'd
        // block is unmapped on free) before anyone asks: only the sampler
        // thread can have seen it.
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        std::thread::sleep(4 * MEMORY_SAMPLE_PERIOD);
        drop(big);
        let u = ProcessUsage::now();
        assert!(u.max_anon_mib >= 64.0, "the sampler missed the peak: {u:?}");
        assert!(u.max_rss_mib >= u.max_anon_mib * 0.9, "{u:?}");
    }
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_design() {
        let names: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        for n in [
            "client.send",
            "leader.queue",
            "leader.batch",
            "leader.persist",
            "nvm.flush",
            "wal.fsync",
            "p2a.send",
            "follower.persist",
            "p2b.recv",
            "leader.quorum",
            "leader.apply",
            "leader.reply",
            "client.recv",
            "p1a.send",
            "p1b.recv",
            "leader.recover",
        ] {
            assert!(names.contains(&n), "{n} missing");
            assert_eq!(Stage::from_name(n).unwrap().name(), n);
        }
    }

    #[test]
    fn histograms_survive_encoding() {
        let mut h = StageHistograms::default();
        for i in 1..1000 {
            h.record(Stage::LeaderQuorum, i * 1000);
        }
        let back = StageHistograms::decode(&h.encode()).unwrap();
        assert_eq!(back.count(Stage::LeaderQuorum), 999);
        assert_eq!(
            back.get(Stage::LeaderQuorum)
                .unwrap()
                .value_at_quantile(0.5),
            h.get(Stage::LeaderQuorum).unwrap().value_at_quantile(0.5)
        );
        // Stages with nothing recorded are absent, not empty histograms.
        assert!(back.get(Stage::LeaderApply).is_none());
        assert_eq!(h.encode().len(), 1);
    }

    #[test]
    fn sampling_is_the_same_everywhere_and_about_one_in_n() {
        let n = (0..100_000u64).filter(|s| sampled(7, *s, 100)).count();
        assert!((700..1300).contains(&n), "{n}");
        assert_eq!(sampled(7, 42, 100), sampled(7, 42, 100));
        assert!(!sampled(7, 42, 0));
    }

    #[test]
    fn the_trace_is_chrome_json_with_lanes_and_flows() {
        let ev = |stage, process, start_ns, dur_ns, flow| TraceEvent {
            stage,
            process,
            start_ns,
            dur_ns,
            slot: 1,
            flow,
        };
        let events = vec![
            ev(Stage::ClientSend, 0, 1_000, 500, 9),
            ev(Stage::LeaderQueue, 1, 2_000, 3_000, 9),
            ev(Stage::LeaderQueue, 1, 2_500, 3_000, 11),
            ev(Stage::FollowerPersist, 2, 4_000, 1_000, 9),
            ev(Stage::ClientRecv, 0, 1_000, 9_000, 9),
        ];
        let mut out = Vec::new();
        write_chrome_trace(
            &events,
            &[
                (0, "loadgen".into()),
                (1, "replica 1".into()),
                (2, "replica 2".into()),
            ],
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let evs = v["traceEvents"].as_array().unwrap();
        let slices: Vec<_> = evs.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 5);
        // The two overlapping leader.queue slices are on different lanes.
        let tids: Vec<_> = slices
            .iter()
            .filter(|e| e["name"] == "leader.queue")
            .map(|e| e["tid"].as_u64().unwrap())
            .collect();
        assert_ne!(tids[0], tids[1]);
        let mut flow: Vec<_> = evs
            .iter()
            .filter(|e| e["cat"] == "flow")
            .map(|e| {
                (
                    e["ts"].as_f64().unwrap(),
                    e["ph"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        flow.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let phases: Vec<_> = flow.into_iter().map(|(_, p)| p).collect();
        assert_eq!(phases, vec!["s", "t", "t", "f"]);
        // The flow ends on the end-to-end slice.
        let last = evs
            .iter()
            .rev()
            .find(|e| e["cat"] == "flow" && e["ph"] == "f")
            .unwrap();
        assert_eq!(last["pid"], 0);
        assert!(
            evs.iter()
                .any(|e| e["name"] == "process_name" && e["args"]["name"] == "replica 2")
        );
    }
}
