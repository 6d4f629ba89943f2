//! Drives load through the client library and measures it.
//!
//! Each client (one connection, one session) runs `outstanding` workers.
//! - **Closed loop**: a worker starts its next call when the last one ends.
//! - **Open loop**: calls are due at fixed intended times (`rate` per second
//!   over all clients, the clients interleaved); a free worker takes the
//!   next due call. A call already due when a worker takes it (no worker
//!   was free: the cluster is behind) runs from its intended time, so a
//!   stall is charged to every call it delayed (coordinated omission
//!   corrected, as wrk2 does). A call not yet due waits on tokio's
//!   millisecond timer, which wakes up to 1 ms early (the call then goes
//!   out at once) or late; its latency runs from when it went out, and how
//!   late that was is the generator's own `send_lag`, reported apart.
//!
//! Only calls that start inside the measurement window (after the warmup)
//! count. Latencies go into per-client HdrHistograms, collected each second
//! into an interval log.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::client::{Client, ClientError};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::spec::{LoadMode, LoadSpec, ReadMode};
use crate::workload::{OpKind, Workload, Zipf};

/// Latencies are kept in nanoseconds, 3 significant digits, up to 100 s.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// What one step (a closed-loop run, or one rate of a sweep) measured.
pub struct StepResult {
    /// Offered rate (open loop), ops/s.
    pub offered: Option<f64>,
    /// Calls that succeeded, started in the window.
    pub ops: u64,
    /// Calls that failed, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: calls due before the end that were never sent (every
    /// worker was busy until the step ended: the cluster fell behind).
    pub unsent: u64,
    /// The measurement window, seconds.
    pub window_s: f64,
    /// End-to-end latency of the successful calls, ns.
    pub latency: Histogram<u64>,
    /// Open loop: lateness of the generator's timer, ns (see `run_step`).
    pub send_lag: Histogram<u64>,
    /// Per-second histograms: (seconds since the step began, length, histogram).
    pub intervals: Vec<(f64, f64, Histogram<u64>)>,
}

impl StepResult {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.window_s
    }
}

/// When calls succeed, around an injected fault: the longest stretch of
/// the measurement without a success, and the first success of a call
/// started after the cut. Times are ns after `base` (the step's start).
pub struct Availability {
    base: Instant,
    last_ok_ns: AtomicU64,
    /// Length of the longest stretch so far (the fast check), and its
    /// (start, length) under the lock.
    gap_len_ns: AtomicU64,
    gap: Mutex<(u64, u64)>,
    /// When the fault began (`u64::MAX`: not yet).
    cut_ns: AtomicU64,
    first_ok_after_cut_ns: AtomicU64,
}

/// What [`Availability`] measured, seconds and milliseconds after the
/// measurement began.
#[derive(Clone, Copy, Debug, Default)]
pub struct AvailabilityFigures {
    pub unavailable_ms: f64,
    pub unavailable_from_s: f64,
    pub cut_s: Option<f64>,
    pub first_ok_after_cut_ms: Option<f64>,
}

impl Availability {
    pub fn new() -> Arc<Availability> {
        Arc::new(Availability {
            base: Instant::now(),
            last_ok_ns: AtomicU64::new(u64::MAX),
            gap_len_ns: AtomicU64::new(0),
            gap: Mutex::new((0, 0)),
            cut_ns: AtomicU64::new(u64::MAX),
            first_ok_after_cut_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// When the step began.
    pub fn started(&self) -> Instant {
        self.base
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The measurement begins (the first success is measured from here).
    fn begin(&self, at: Instant) {
        let _ = self.last_ok_ns.compare_exchange(
            u64::MAX,
            self.ns(at),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The fault begins now.
    pub fn cut(&self) {
        self.cut_ns
            .store(self.ns(Instant::now()), Ordering::Relaxed);
    }

    /// A call started at `started` succeeded at `done`.
    fn ok(&self, started: Instant, done: Instant) {
        let (s, d) = (self.ns(started), self.ns(done));
        let prev = self.last_ok_ns.fetch_max(d, Ordering::Relaxed);
        if prev != u64::MAX && d > prev && d - prev > self.gap_len_ns.load(Ordering::Relaxed) {
            let mut g = self.gap.lock().expect("gap");
            if d - prev > g.1 {
                *g = (prev, d - prev);
                self.gap_len_ns.store(d - prev, Ordering::Relaxed);
            }
        }
        if s >= self.cut_ns.load(Ordering::Relaxed) {
            self.first_ok_after_cut_ns.fetch_min(d, Ordering::Relaxed);
        }
    }

    /// The figures, relative to `measured_from` (the end of the warmup).
    pub fn figures(&self, measured_from: Instant) -> AvailabilityFigures {
        let m = self.ns(measured_from) as f64;
        let (from, len) = *self.gap.lock().expect("gap");
        let cut = self.cut_ns.load(Ordering::Relaxed);
        let first = self.first_ok_after_cut_ns.load(Ordering::Relaxed);
        AvailabilityFigures {
            unavailable_ms: len as f64 / 1e6,
            unavailable_from_s: if len == 0 {
                0.0
            } else {
                (from as f64 - m) / 1e9
            },
            cut_s: (cut != u64::MAX).then(|| (cut as f64 - m) / 1e9),
            first_ok_after_cut_ms: (cut != u64::MAX && first != u64::MAX)
                .then(|| (first - cut) as f64 / 1e6),
        }
    }
}

/// One client's tallies, shared by its workers.
struct Tally {
    interval: Histogram<u64>,
    send_lag: Histogram<u64>,
    ops: u64,
    errors: BTreeMap<String, u64>,
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::NotLeader { .. } => "not_leader",
        ClientError::Busy => "busy",
        ClientError::Timeout => "timeout",
        ClientError::Closed(_) => "closed",
        ClientError::Unreachable(_) => "unreachable",
        ClientError::Stale { .. } => "stale",
        ClientError::SessionExpired => "session_expired",
        ClientError::Invalid(_) => "invalid",
    }
}

/// Runs one step against `clients`. `stop` ends it early (Ctrl-C).
pub async fn run_step(
    clients: &[Arc<Client>],
    spec: &LoadSpec,
    offered: Option<f64>,
    label: &str,
    stop: Arc<AtomicBool>,
    on_measure: Option<Box<dyn FnOnce() + Send>>,
    availability: Option<Arc<Availability>>,
) -> StepResult {
    let zipf = (spec.distribution == crate::spec::Distribution::Zipf)
        .then(|| Zipf::new(spec.keys, spec.zipf_theta));
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(spec.warmup_s);
    let end = warm_end + Duration::from_secs_f64(spec.duration_s);
    let completed = Arc::new(AtomicU64::new(0));
    if let Some(a) = &availability {
        a.begin(warm_end);
    }
    // A call counts when it starts inside the window, so none may start
    // there before the figures are reset: one that reached the leader
    // before the reset would be counted by the client but not by the
    // stages. Workers past the warmup wait for `measuring` (the reset is a
    // spawned task, which a busy machine may run late).
    let (measuring_tx, measuring) = tokio::sync::watch::channel(on_measure.is_none());
    let measure = on_measure.map(|f| {
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_end.into()).await;
            f();
            let _ = measuring_tx.send(true);
        })
    });
    let tallies: Vec<Arc<Mutex<Tally>>> = clients
        .iter()
        .map(|_| {
            Arc::new(Mutex::new(Tally {
                interval: latency_histogram(),
                send_lag: latency_histogram(),
                ops: 0,
                errors: BTreeMap::new(),
            }))
        })
        .collect();
    // Open loop: each client's share of the rate, as an interval between
    // intended starts, and a ticket counter its workers draw from. Client
    // `ci` starts `ci / clients` of an interval late, so the clients' calls
    // interleave (one every 1/rate) rather than all falling due together.
    let interval = offered.map(|r| Duration::from_secs_f64(clients.len() as f64 / r));
    let mut workers = Vec::new();
    for (ci, client) in clients.iter().enumerate() {
        let tickets = Arc::new(AtomicU64::new(0));
        let start = start
            + interval.map_or(Duration::ZERO, |iv| {
                iv.mul_f64(ci as f64 / clients.len() as f64)
            });
        let workload = Arc::new(Mutex::new(Workload::new(spec, ci as u32, zipf.clone())));
        for _ in 0..spec.outstanding {
            let client = client.clone();
            let tally = tallies[ci].clone();
            let tickets = tickets.clone();
            let workload = workload.clone();
            let completed = completed.clone();
            let stop = stop.clone();
            let read_mode = spec.read_mode;
            let mode = spec.mode;
            let mut measuring = measuring.clone();
            let availability = availability.clone();
            workers.push(tokio::spawn(async move {
                // Once seen, the reset stays done: no channel read per call.
                let mut reset_seen = *measuring.borrow();
                loop {
                    let (mut intended, now) = match (mode, interval) {
                        (LoadMode::Open, Some(iv)) => {
                            let k = tickets.fetch_add(1, Ordering::Relaxed);
                            (start + iv.mul_f64(k as f64), Instant::now())
                        }
                        // Closed loop: intended now. The same reading is
                        // the call's start (two clock reads per call, not
                        // four), taken after the last call's bookkeeping,
                        // which is not the cluster's time.
                        _ => {
                            let t = Instant::now();
                            (t, t)
                        }
                    };
                    // Open loop: calls still due when the window is over were
                    // never sent (the cluster could not take them); they are
                    // counted as `unsent`, not run late.
                    if intended >= end || now >= end || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Not yet due: the worker waits on tokio's timer (a
                    // millisecond wheel: it wakes up to 1 ms early, and a
                    // busy or idle machine wakes it late). How late it sends
                    // is the generator's, not the cluster's: reported apart
                    // (`send_lag`), and latency runs from the send. A call
                    // already due when taken (every worker was busy: the
                    // cluster is behind) runs from its intended start.
                    let waited = mode == LoadMode::Open && intended > now;
                    if intended > now + Duration::from_millis(1) {
                        tokio::time::sleep_until((intended - Duration::from_millis(1)).into())
                            .await;
                    }
                    if !reset_seen && intended >= warm_end {
                        // Err: the reset task was aborted (stopped early).
                        let _ = measuring.wait_for(|m| *m).await;
                        reset_seen = true;
                        if mode == LoadMode::Closed {
                            // The wait is not the call's.
                            intended = Instant::now();
                        }
                    }
                    let (kind, op) = workload.lock().expect("workload").next_op();
                    let sent = match mode {
                        LoadMode::Open => Instant::now(),
                        LoadMode::Closed => intended,
                    };
                    let r = match (kind, read_mode) {
                        (OpKind::Get, ReadMode::Fast) => client.fast_read(op).await,
                        _ => client.call(op).await,
                    };
                    let done = Instant::now();
                    completed.fetch_add(1, Ordering::Relaxed);
                    if intended < warm_end {
                        continue;
                    }
                    let from = if waited { sent } else { intended.min(sent) };
                    let mut t = tally.lock().expect("tally");
                    if waited {
                        let lag = sent.saturating_duration_since(intended).as_nanos() as u64;
                        let _ = t.send_lag.record(lag.clamp(1, 100_000_000_000));
                    }
                    match r {
                        Ok(_) => {
                            t.ops += 1;
                            if let Some(a) = &availability {
                                a.ok(from, done);
                            }
                            let ns = done.duration_since(from).as_nanos() as u64;
                            let _ = t.interval.record(ns.clamp(1, 100_000_000_000));
                        }
                        Err(e) => *t.errors.entry(error_kind(&e).to_string()).or_default() += 1,
                    }
                }
            }));
        }
    }
    // Collect a histogram per second; show progress on a terminal.
    let bar = progress_bar(label, spec.warmup_s + spec.duration_s);
    let mut total = latency_histogram();
    let mut intervals = Vec::new();
    let mut last_collect = Instant::now();
    // Intervals end on whole seconds from the start (the 250 ms ticks are
    // scheduled from it), not a second after the last collection, which
    // drifted by a tick each time (1.0 s, 2.25 s, 3.5 s, ...).
    let mut next_collect = last_collect + Duration::from_secs(1);
    let mut last_count = 0u64;
    let mut last_tick = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let all_done = async {
        for w in workers {
            let _ = w.await;
        }
    };
    tokio::pin!(all_done);
    loop {
        let finished = tokio::select! {
            () = &mut all_done => true,
            _ = tick.tick() => false,
        };
        let now = Instant::now();
        let count = completed.load(Ordering::Relaxed);
        let rate =
            (count - last_count) as f64 / now.duration_since(last_tick).as_secs_f64().max(1e-3);
        last_count = count;
        last_tick = now;
        let phase = if now < warm_end { "warmup" } else { "measure" };
        bar.set_position((now.duration_since(start).as_secs_f64() * 1000.0) as u64);
        bar.set_message(format!("{phase}  {:>10.0} ops/s", rate));
        if finished || now + Duration::from_millis(5) >= next_collect {
            while next_collect <= now + Duration::from_millis(5) {
                next_collect += Duration::from_secs(1);
            }
            let mut h = latency_histogram();
            for t in &tallies {
                let mut t = t.lock().expect("tally");
                h.add(&t.interval).expect("same bounds");
                t.interval.reset();
            }
            let since = last_collect.duration_since(start).as_secs_f64();
            let len = now.duration_since(last_collect).as_secs_f64();
            total.add(&h).expect("same bounds");
            // A second without a success is kept when availability is
            // measured (it is the outage).
            if !h.is_empty() || availability.is_some() {
                intervals.push((since, len, h));
            }
            last_collect = now;
        }
        if finished {
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(m) = measure {
        // Stopped early, before the warmup ended: nothing to reset.
        m.abort();
    }
    let mut ops = 0;
    let mut errors = BTreeMap::new();
    let mut send_lag = latency_histogram();
    for t in &tallies {
        let t = t.lock().expect("tally");
        ops += t.ops;
        send_lag.add(&t.send_lag).expect("same bounds");
        for (k, v) in &t.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    let stopped_at = Instant::now().min(end);
    let window_s = if stopped_at > warm_end {
        stopped_at.duration_since(warm_end).as_secs_f64()
    } else {
        spec.duration_s
    };
    let unsent = match (spec.mode, interval) {
        (LoadMode::Open, Some(iv)) => {
            let per_client =
                (end.duration_since(start).as_secs_f64() / iv.as_secs_f64()).ceil() as u64;
            (per_client * clients.len() as u64).saturating_sub(completed.load(Ordering::Relaxed))
        }
        _ => 0,
    };
    StepResult {
        offered,
        ops,
        unsent,
        errors,
        window_s,
        latency: total,
        send_lag,
        intervals,
    }
}

fn progress_bar(label: &str, total_s: f64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((total_s * 1000.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed:>3} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}
