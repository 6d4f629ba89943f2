//! The lab's analysis: reads run directories that `loadgen` wrote and
//! turns them into reports (where the time goes, the bottleneck),
//! comparisons against baselines with a noise estimate, plots, and the
//! regression gate's verdict.
//!
//! polars (feature `polars`, on by default) reads the sampled stage events;
//! the gate ([`gate`]) needs none of it and builds without it.

pub mod compare;
pub mod figures;
pub mod gate;
pub mod path;
pub mod plot;
pub mod profile;
pub mod report;
pub mod run;
#[cfg(feature = "polars")]
pub mod samples;
pub mod stats;
