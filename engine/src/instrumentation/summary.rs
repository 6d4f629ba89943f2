//! `summary.json`: the figures of one run. `loadgen` writes it (with its
//! typed spec as `config`), `analysis` reads it back (with `config` as
//! JSON); one definition keeps the two from drifting apart.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Quantiles of a latency histogram, in microseconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Quantiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Quantiles {
    /// `p50 | p90 | p99 | p99.9 | max` as cells of a Markdown table row.
    pub fn cells(&self) -> String {
        [self.p50, self.p90, self.p99, self.p999, self.max]
            .map(fmt_us)
            .join(" | ")
    }

    /// The quantiles of `h`, recorded in nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// One step of a run (an open-loop sweep has one per offered rate).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunStep {
    pub offered_ops_s: Option<f64>,
    /// Open loop: calls due that were never sent (the cluster fell behind).
    pub unsent: u64,
    pub throughput_ops_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub window_s: f64,
    pub latency_us: Quantiles,
    /// Open loop: how late the load generator's own timer sent the calls
    /// that were not yet due when a worker took them (not in `latency_us`,
    /// which runs from the send for those; a call a busy worker took when
    /// already due runs from its intended start).
    pub send_lag_us: Quantiles,
    /// CPU of every process within this step's measurement over the
    /// commands it committed, µs (0: not measured).
    pub cpu_us_per_command: f64,
}

/// CPU and memory of one process of a run.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunProcess {
    pub name: String,
    pub role: String,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub rss_max_mib: f64,
    /// Peak anonymous memory (heap); 0: not sampled.
    pub anon_max_mib: f64,
    /// Peak shared-memory pages (the emulated NVM file); 0: not sampled.
    pub shmem_max_mib: f64,
    pub flush_mode: Option<String>,
    /// User + system CPU seconds within the measurement (from the end of
    /// the warmup to the end of the load; 0: not measured).
    pub cpu_measured_s: f64,
    /// That over the commands the measurement committed, µs.
    pub cpu_us_per_command: f64,
}

/// `summary.json`. `C` is the resolved experiment spec: `loadgen`'s own
/// type when written, JSON when read by tools that don't know it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(bound(
    serialize = "C: Serialize",
    deserialize = "C: serde::de::DeserializeOwned + Default"
))]
pub struct RunSummary<C = serde_json::Value> {
    pub experiment: String,
    pub run_id: String,
    pub description: String,
    /// Successful operations per second over the measurement window(s).
    pub throughput_ops_s: f64,
    /// End-to-end latency of successful operations, µs.
    pub latency_us: Quantiles,
    pub ops: u64,
    /// User + system CPU of every process within the measurement over the
    /// commands it committed, µs (0: not measured). Each process's share
    /// is in `processes`.
    pub cpu_us_per_command: f64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub window_s: f64,
    /// Open-loop sweeps: one entry per offered rate.
    pub steps: Vec<RunStep>,
    /// Per stage (DESIGN.md's names), µs; empty when tracing is off.
    pub stages: BTreeMap<String, Quantiles>,
    /// The leader at the end (0: unknown).
    pub leader: u32,
    /// CPU and memory per process (the load generator included).
    pub processes: Vec<RunProcess>,
    /// Peak resident memory of any replica process, MiB (process mode).
    pub replica_rss_max_mib: Option<f64>,
    pub trace: Option<String>,
    pub trace_events: usize,
    pub trace_events_dropped: u64,
    pub flamegraph: Option<String>,
    /// Stopped early by Ctrl-C: the figures cover less than asked.
    pub interrupted: bool,
    /// Seconds the load generator process ran (the span of the CPU figures
    /// in `processes`, warmup and start-up included).
    pub wall_s: f64,
    /// Cores of this machine.
    pub cores: usize,
    /// The fault the run injected (`[fault]`) and what the clients saw.
    pub fault: Option<RunFault>,
    pub config: C,
}

/// An injected fault and the availability around it. Times in seconds
/// after the measurement began.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunFault {
    pub what: String,
    /// When the fault began, and for how long it held.
    pub at_s: f64,
    pub for_s: f64,
    /// The longest time no call succeeded, ms, and when it began.
    pub unavailable_ms: f64,
    pub unavailable_from_s: f64,
    /// From the fault to the first success of a call started after it
    /// (the failover as a client sees it), ms.
    pub first_ok_after_ms: Option<f64>,
    /// Per second of the measurement: (start s, successful ops/s, p99 µs).
    pub per_second: Vec<(f64, f64, f64)>,
}

/// A duration in microseconds for people: `0.4 µs`, `87 µs`, `1.25 ms`,
/// `2.10 s`.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_in_microseconds_and_ordered() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for ns in [1_000u64, 2_000, 3_000, 1_000_000] {
            h.record(ns).unwrap();
        }
        let q = Quantiles::of(&h);
        assert_eq!(q.count, 4);
        assert!((q.p50 - 2.0).abs() < 0.01, "{q:?}");
        assert!((q.max - 1000.0).abs() < 1.0, "{q:?}");
        assert!(q.p50 <= q.p90 && q.p90 <= q.p99 && q.p99 <= q.max);
        assert_eq!(
            q.cells(),
            format!(
                "2.0 µs | {} | {} | {} | {}",
                fmt_us(q.p90),
                fmt_us(q.p99),
                fmt_us(q.p999),
                fmt_us(q.max)
            )
        );
        assert_eq!(
            Quantiles::of(&Histogram::new(3).unwrap()),
            Quantiles::default()
        );
    }

    #[test]
    fn a_written_summary_reads_back_with_its_config_as_json() {
        #[derive(Serialize)]
        struct Spec {
            window: u32,
        }
        let s = RunSummary {
            experiment: "x".into(),
            throughput_ops_s: 12.5,
            config: Some(Spec { window: 7 }),
            ..RunSummary::default()
        };
        let back: RunSummary = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back.experiment, "x");
        assert_eq!(back.throughput_ops_s, 12.5);
        assert_eq!(back.config["window"], 7);
        // Fields a reader knows but an older writer lacked default.
        let old: RunSummary = serde_json::from_str(r#"{"experiment":"y"}"#).unwrap();
        assert_eq!(old.cores, 0);
        assert!(old.config.is_null());
    }

    #[test]
    fn durations_print_in_the_unit_that_fits() {
        assert_eq!(fmt_us(0.42), "0.4 µs");
        assert_eq!(fmt_us(87.4), "87 µs");
        assert_eq!(fmt_us(1250.0), "1.25 ms");
        assert_eq!(fmt_us(2_100_000.0), "2.10 s");
    }
}
