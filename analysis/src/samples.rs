//! The sampled stage events of a run (`stages.csv`), read with polars:
//! every sampled command's path cut into consecutive segments, and the
//! per-stage samples the comparison bootstraps its noise from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use polars::prelude::*;

use crate::path::{FlowTimes, Segment};

/// What the samples give.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Per stage: every sampled duration, µs.
    pub per_stage: BTreeMap<String, Vec<f64>>,
    /// Per sampled command whose path is complete: its timestamps.
    pub flows: Vec<FlowTimes>,
    /// Every core-task stall (`core.stall`, always traced), by start.
    pub stalls: Vec<Stall>,
}

pub use crate::figures::Stall;

fn schema() -> Schema {
    Schema::from_iter([
        Field::new("stage".into(), DataType::String),
        Field::new("process".into(), DataType::UInt32),
        Field::new("start_ns".into(), DataType::Int64),
        Field::new("dur_ns".into(), DataType::Int64),
        Field::new("slot".into(), DataType::UInt64),
        // Flow ids are 64-bit hashes: inferred, they would become floats.
        Field::new("flow".into(), DataType::UInt64),
    ])
}

/// Reads `stages.csv`.
pub fn read(path: &Path) -> Result<Samples> {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_schema(Some(Arc::new(schema())))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut s = Samples::default();
    // Per stage durations.
    {
        let stage = df.column("stage")?.str()?;
        let dur = df.column("dur_ns")?.i64()?;
        for (st, d) in stage.iter().zip(dur.iter()) {
            if let (Some(st), Some(d)) = (st, d) {
                s.per_stage
                    .entry(st.to_string())
                    .or_default()
                    .push(d as f64 / 1000.0);
            }
        }
    }
    // Stalls: always traced, whether or not a sampled command saw one.
    {
        let stage = df.column("stage")?.str()?;
        let process = df.column("process")?.u32()?;
        let start = df.column("start_ns")?.i64()?;
        let dur = df.column("dur_ns")?.i64()?;
        for i in 0..df.height() {
            if stage.get(i) == Some("core.stall")
                && let (Some(p), Some(st), Some(d)) = (process.get(i), start.get(i), dur.get(i))
            {
                s.stalls.push(Stall {
                    process: p,
                    start_ns: st,
                    end_ns: st + d,
                });
            }
        }
        s.stalls.sort_by_key(|s| s.start_ns);
    }
    // Per flow: the timestamps of its path, one row per sampled command.
    // (stage, column): the earliest value over the command's events (the
    // fastest follower, the first Accepted).
    const AT: [(&str, &str); 13] = [
        ("client.recv", "start_ns"),
        ("client.recv", "end_ns"),
        ("client.send", "end_ns"),
        ("leader.queue", "start_ns"),
        ("leader.queue", "end_ns"),
        ("leader.quorum", "start_ns"),
        ("leader.quorum", "end_ns"),
        ("leader.persist", "end_ns"),
        ("follower.persist", "start_ns"),
        ("follower.persist", "end_ns"),
        ("p2b.recv", "end_ns"),
        ("leader.apply", "end_ns"),
        ("leader.reply", "end_ns"),
    ];
    let names: Vec<String> = AT.iter().map(|(s, w)| format!("{s}/{w}")).collect();
    let wanted: Vec<Expr> = AT
        .iter()
        .zip(&names)
        .map(|((stage, what), name)| {
            col(*what)
                .filter(col("stage").eq(lit(*stage)))
                .min()
                .alias(name.as_str())
        })
        .collect();
    let per_flow = df
        .lazy()
        .filter(col("flow").neq(lit(0u64)))
        .with_column((col("start_ns") + col("dur_ns")).alias("end_ns"))
        .group_by([col("flow")])
        .agg(wanted)
        .drop_nulls(None)
        .collect()
        .map_err(|e| anyhow::anyhow!("grouping the sampled events by command: {e}"))?;
    let cols: Vec<Vec<Option<i64>>> = names
        .iter()
        .map(|n| -> Result<Vec<Option<i64>>> { Ok(per_flow.column(n)?.i64()?.iter().collect()) })
        .collect::<Result<_>>()?;
    for row in 0..per_flow.height() {
        let v = |i: usize| cols.get(i).and_then(|c| c[row]).unwrap_or(0);
        s.flows.push(FlowTimes {
            call: v(0),
            answered: v(1),
            sent: v(2),
            queued: v(3),
            taken: v(4),
            sealed: v(5),
            committed: v(6),
            leader_durable: v(7),
            follower_got: v(8),
            follower_durable: v(9),
            first_accepted: v(10),
            applied: v(11),
            replied: v(12),
        });
    }
    Ok(s)
}

/// The segment names in path order (for tables that list them all).
pub fn segment_names() -> Vec<&'static str> {
    Segment::ALL.iter().map(|s| s.name()).collect()
}
