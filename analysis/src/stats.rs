//! Noise estimates by bootstrap: resample what one run measured (its
//! seconds, its sampled durations) with replacement and see how much a
//! figure moves. Reported as a relative standard error.

use hdrhistogram::Histogram;

use crate::run::Interval;

/// Resamples per estimate.
const RESAMPLES: usize = 200;
/// Samples kept per stage for the quantile bootstrap (evenly strided).
const QUANTILE_SAMPLES_MAX: usize = 5000;

/// SplitMix64: tiny, seeded, so reports are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn rel_std(estimates: &[f64], value: f64) -> Option<f64> {
    if estimates.len() < 2 || value <= 0.0 {
        return None;
    }
    let m = estimates.iter().sum::<f64>() / estimates.len() as f64;
    let var = estimates.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (estimates.len() - 1) as f64;
    Some(var.sqrt() / value)
}

/// Relative standard error of the mean of `xs`.
pub fn bootstrap_mean_rel(xs: &[f64], rng: &mut Rng) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let value = xs.iter().sum::<f64>() / xs.len() as f64;
    let est: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..xs.len()).map(|_| xs[rng.below(xs.len())]).sum::<f64>() / xs.len() as f64)
        .collect();
    rel_std(&est, value)
}

/// Relative standard error of quantile `q` of the merged intervals,
/// resampling whole seconds (a stall stays within its second).
pub fn bootstrap_intervals_rel(intervals: &[Interval], q: f64, rng: &mut Rng) -> Option<f64> {
    if intervals.len() < 2 {
        return None;
    }
    let merge = |pick: &mut dyn FnMut() -> usize| -> Option<f64> {
        let mut h: Histogram<u64> = intervals[0].histogram.clone();
        h.reset();
        for _ in 0..intervals.len() {
            h.add(&intervals[pick()].histogram).ok()?;
        }
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64)
    };
    let value = {
        let mut i = 0;
        merge(&mut || {
            i += 1;
            i - 1
        })?
    };
    let est: Vec<f64> = (0..RESAMPLES / 2)
        .filter_map(|_| merge(&mut || rng.below(intervals.len())))
        .collect();
    rel_std(&est, value)
}

/// Relative standard error of quantile `q` of `samples`.
pub fn bootstrap_quantile_rel(samples: &[f64], q: f64, rng: &mut Rng) -> Option<f64> {
    if samples.len() < 20 {
        return None;
    }
    let stride = samples.len().div_ceil(QUANTILE_SAMPLES_MAX);
    let xs: Vec<f64> = samples.iter().step_by(stride).copied().collect();
    let quantile = |v: &mut Vec<f64>| -> f64 {
        let k = ((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
        *v.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    };
    let value = quantile(&mut xs.clone());
    let mut buf = Vec::with_capacity(xs.len());
    let est: Vec<f64> = (0..RESAMPLES / 2)
        .map(|_| {
            buf.clear();
            buf.extend((0..xs.len()).map(|_| xs[rng.below(xs.len())]));
            quantile(&mut buf)
        })
        .collect();
    rel_std(&est, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noise_of_a_steady_series_is_small_and_of_a_jumpy_one_large() {
        let mut rng = Rng::new(1);
        let steady: Vec<f64> = (0..10).map(|i| 100_000.0 + f64::from(i % 2)).collect();
        let jumpy: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 50_000.0 } else { 150_000.0 })
            .collect();
        let a = bootstrap_mean_rel(&steady, &mut rng).unwrap();
        let b = bootstrap_mean_rel(&jumpy, &mut rng).unwrap();
        assert!(a < 0.001, "{a}");
        assert!(b > 0.05 && b < 0.5, "{b}");
    }

    #[test]
    fn quantile_noise_shrinks_with_more_samples() {
        let mut rng = Rng::new(2);
        let few: Vec<f64> = (0..50).map(|i| f64::from(i * 37 % 100)).collect();
        let many: Vec<f64> = (0..5000).map(|i| f64::from(i * 37 % 100)).collect();
        let a = bootstrap_quantile_rel(&few, 0.5, &mut rng).unwrap();
        let b = bootstrap_quantile_rel(&many, 0.5, &mut rng).unwrap();
        assert!(b < a, "{b} !< {a}");
    }
}
