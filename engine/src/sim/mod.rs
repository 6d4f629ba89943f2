//! `engine::sim`: the deterministic simulator.
//!
//! Whole clusters of [`crate::core::Replica`]s run in simulated time over a
//! network and disks that fail as the seed says: message loss, duplication,
//! delay and reordering, one- and two-way partitions, clogged links,
//! crashes that lose unsynced writes (keeping a random prefix: a torn tail),
//! failed fsyncs, and messages from another cluster. Checkers run after
//! every event (see [`checker`]); the client history is checked for
//! linearizability at the end ([`linearizability`]).
//!
//! One root seed derives every random choice, so a seed replays exactly:
//! `make sim SEED=s` prints its event trace, and running a seed twice gives
//! the same trace hash.
//!
//! **Architecture Invariant:** the simulator reads no clock and spawns no
//! thread per run; `run_seeds` only spreads independent seeds over threads.

pub mod checker;
mod cluster;
mod config;
pub mod disk;
pub mod linearizability;
pub mod lockstep;
pub mod workload;

pub use checker::{Violation, ViolationKind};
pub use cluster::{
    CLIENT_TIMEOUT_US, CLUSTER, ClientFilter, ClientPacket, FOREIGN_CLUSTER, MessageFilter,
    SeedReport, Sim, SimStats, TICK_US,
};
pub use config::{FaultPlan, SimConfig};
pub use disk::Backend;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use crate::core::PlantedBug;

std::thread_local! {
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs a panic hook that records a panic's message for the simulator
/// instead of printing it, on threads running seeds; other threads keep the
/// default behaviour.
pub fn capture_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let capturing = PANIC_MESSAGE.with(|m| m.borrow().is_some());
            if capturing {
                let msg = match info.payload().downcast_ref::<&str>() {
                    Some(s) => s.to_string(),
                    None => match info.payload().downcast_ref::<String>() {
                        Some(s) => s.clone(),
                        None => "panic".to_string(),
                    },
                };
                let at = info
                    .location()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs one seeded run to the end. A panic inside a replica (a broken
/// contract) is reported as an `Invariant` violation, not propagated.
pub fn run(cfg: SimConfig) -> SeedReport {
    capture_panics();
    let seed = cfg.seed;
    PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(String::new()));
    let result = catch_unwind(AssertUnwindSafe(|| Sim::new(cfg).run_to_end()));
    let message = PANIC_MESSAGE
        .with(|m| m.borrow_mut().take())
        .unwrap_or_default();
    match result {
        Ok(report) => report,
        Err(_) => SeedReport {
            seed,
            violation: Some(Violation {
                kind: ViolationKind::Invariant,
                detail: message,
            }),
            commands_committed: 0,
            slots_chosen: 0,
            sim_time_us: 0,
            trace_hash: 0,
            trace: Vec::new(),
            stats: SimStats::default(),
        },
    }
}

/// A planted bug: in the protocol core, or in how the simulated replicas
/// treat their storage. Each must make the simulator report a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    Core(PlantedBug),
    /// A replica that salvaged a corrupt log starts as if nothing was lost.
    ForgetUnprovable,
    /// A replica whose disk was wiped restarts on a blank log, as if new.
    AmnesiaRestart,
}

impl Bug {
    pub const NAMES: &'static [&'static str] = &[
        "quorum-too-small",
        "skip-adoption",
        "self-ack-before-persist",
        "reply-before-persist",
        "forget-unprovable",
        "amnesia-restart",
        "propose-past-change",
        "recover-past-change",
        "release-early",
        "joiner-retires-on-history",
    ];

    pub fn parse(name: &str) -> Option<Bug> {
        Some(match name {
            "quorum-too-small" => Bug::Core(PlantedBug::QuorumTooSmall),
            "skip-adoption" => Bug::Core(PlantedBug::SkipAdoption),
            "self-ack-before-persist" => Bug::Core(PlantedBug::SelfAckBeforePersist),
            "reply-before-persist" => Bug::Core(PlantedBug::ReplyBeforePersist),
            "forget-unprovable" => Bug::ForgetUnprovable,
            "amnesia-restart" => Bug::AmnesiaRestart,
            "propose-past-change" => Bug::Core(PlantedBug::ProposePastChange),
            "recover-past-change" => Bug::Core(PlantedBug::RecoverPastChange),
            "release-early" => Bug::Core(PlantedBug::ReleaseEarly),
            "joiner-retires-on-history" => Bug::Core(PlantedBug::JoinerRetiresOnHistory),
            _ => return None,
        })
    }

    /// Turns the bug on in `cfg`.
    pub fn plant(self, cfg: &mut SimConfig) {
        match self {
            Bug::Core(b) => cfg.planted_bug = Some(b),
            Bug::ForgetUnprovable => cfg.forget_unprovable = true,
            Bug::AmnesiaRestart => cfg.amnesia_restart = true,
        }
    }
}

/// Runs the seeded configuration of `seed`, optionally with a planted bug.
pub fn run_seed(seed: u64, bug: Option<Bug>, trace: bool) -> SeedReport {
    let mut cfg = SimConfig::from_seed(seed);
    if let Some(b) = bug {
        b.plant(&mut cfg);
    }
    cfg.trace = trace;
    run(cfg)
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub violations: Vec<(u64, Violation)>,
    pub commands_committed: u64,
    pub stats: SimStats,
}

impl Summary {
    fn add(&mut self, r: SeedReport) {
        self.seeds += 1;
        self.commands_committed += r.commands_committed;
        self.stats.merge(&r.stats);
        if let Some(v) = r.violation {
            self.violations.push((r.seed, v));
        }
    }

    /// The line `make sim` ends with.
    pub fn line(&self) -> String {
        format!(
            "sim: {} seeds, {} violations, {} commands committed",
            self.seeds,
            self.violations.len(),
            self.commands_committed
        )
    }
}

/// Runs seeds `seeds` over `threads` threads (each seed is independent and
/// deterministic, so the totals do not depend on the thread count).
pub fn run_seeds(seeds: std::ops::Range<u64>, bug: Option<Bug>, threads: usize) -> Summary {
    let threads = threads.max(1) as u64;
    let parts: Vec<Summary> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    let mut s = Summary::default();
                    for seed in seeds.filter(|s| s % threads == t) {
                        s.add(run_seed(seed, bug, false));
                    }
                    s
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("seed thread"))
            .collect()
    });
    let mut total = Summary::default();
    for p in parts {
        total.seeds += p.seeds;
        total.commands_committed += p.commands_committed;
        total.violations.extend(p.violations);
        total.stats.merge(&p.stats);
    }
    total.violations.sort_by_key(|(s, _)| *s);
    total
}
