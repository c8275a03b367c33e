//! What the benchmark harnesses (`src/bin/*_bench.rs`) share in summarising their samples.

/// The `p`-quantile (0.0 to 1.0) of `samples` by nearest rank; NaN when there are none.
#[must_use]
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a sample of at most tens of thousands"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_taken_from_the_sorted_samples() {
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert!((percentile(&samples, 0.0) - 1.0).abs() < f64::EPSILON);
        assert!((percentile(&samples, 0.5) - 3.0).abs() < f64::EPSILON);
        assert!((percentile(&samples, 1.0) - 5.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
