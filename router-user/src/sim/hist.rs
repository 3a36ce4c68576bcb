//! Fixed-bucket histogram with Prometheus semantics (`le` buckets, sum, count).

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Box<[f64]>,
    /// Non-cumulative counts; the last slot is the `+Inf` overflow.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `bounds` must be increasing (the engines' own bucket lists are).
    pub fn new(bounds: &[f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Self {
            bounds: bounds.into(),
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Records `n` observations of the same value in O(log buckets).
    pub fn observe_n(&mut self, value: f64, n: u64) {
        if n == 0 {
            return;
        }
        let slot = self.bounds.partition_point(|&bound| bound < value);
        self.counts[slot] += n;
        self.sum += value * n as f64;
        self.count += n;
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Cumulative counts, one per bound and a final one for `+Inf` (equal to [`Self::count`]).
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |total, &n| {
            *total += n;
            Some(*total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_le_and_cumulative() {
        let mut hist = Histogram::new(&[0.1, 1.0]);
        hist.observe(0.1);
        hist.observe(0.5);
        hist.observe_n(3.0, 2);
        assert_eq!(hist.cumulative().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(hist.count(), 4);
        assert!((hist.sum() - 6.6).abs() < 1e-9);
        hist.observe_n(1.0, 0);
        assert_eq!(hist.count(), 4);
    }
}
