//! Medians and quartiles of per-round ratios, as `ab-bench` computes them
//! (Python's `statistics.median` and `statistics.quantiles(n=4)`, whose
//! default method is "exclusive").

/// The median of `xs` (the mean of the middle two for an even count);
/// `None` for no values.
///
/// ```
/// use apikey_cache_benches::compare::stats::median;
///
/// assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
/// assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
/// assert_eq!(median(&[]), None);
/// ```
pub fn median(xs: &[f64]) -> Option<f64> {
    let s = sorted(xs);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// The first and third quartiles of `xs` by the "exclusive" method
/// (positions `(n + 1) × k / 4`, linear interpolation), Python's default.
/// With fewer than two values both are that value (or `None` for none).
///
/// ```
/// use apikey_cache_benches::compare::stats::quartiles;
///
/// // Python: statistics.quantiles([1, 2, 3, 4, 5, 6, 7, 8], n=4) == [2.25, 4.5, 6.75]
/// assert_eq!(quartiles(&[8.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), Some((2.25, 6.75)));
/// assert_eq!(quartiles(&[1.5]), Some((1.5, 1.5)));
/// ```
pub fn quartiles(xs: &[f64]) -> Option<(f64, f64)> {
    let s = sorted(xs);
    match s.len() {
        0 => None,
        1 => Some((s[0], s[0])),
        _ => Some((quantile_exclusive(&s, 1), quantile_exclusive(&s, 3))),
    }
}

/// The `i`-th of the 3 cut points into quarters, as Python's
/// `statistics.quantiles(data, n=4, method="exclusive")[i - 1]`.
fn quantile_exclusive(sorted: &[f64], i: usize) -> f64 {
    const N: usize = 4;
    let ld = sorted.len();
    let m = ld + 1;
    let j = (i * m / N).clamp(1, ld - 1);
    // Exact integer arithmetic, like Python's: may be outside 0..N when
    // `j` was clamped, which extrapolates as Python does.
    let delta = (i * m) as f64 - (j * N) as f64;
    (sorted[j - 1] * (N as f64 - delta) + sorted[j] * delta) / N as f64
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// The median and quartiles of per-round ratios `a[r] / b[r]`, over the
/// rounds in which both are known and `b[r]` is not zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The median ratio.
    pub median: f64,
    /// The first quartile.
    pub q1: f64,
    /// The third quartile.
    pub q3: f64,
}

impl Ratio {
    /// Pairs round by round (`a[r]` with `b[r]`); `None` when no round has
    /// both.
    ///
    /// ```
    /// use apikey_cache_benches::compare::stats::Ratio;
    ///
    /// let ours = [Some(90.0), Some(100.0), None, Some(50.0)];
    /// let base = [Some(100.0), Some(100.0), Some(100.0), Some(100.0)];
    /// let r = Ratio::per_round(&ours, &base).unwrap();
    /// assert_eq!(r.median, 0.9);
    /// ```
    pub fn per_round(a: &[Option<f64>], b: &[Option<f64>]) -> Option<Self> {
        let ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .filter_map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) if *b != 0.0 => Some(a / b),
                _ => None,
            })
            .collect();
        let median = median(&ratios)?;
        let (q1, q3) = quartiles(&ratios)?;
        Some(Self { median, q1, q3 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from CPython 3.11: `statistics.quantiles(xs, n=4)`.
    #[test]
    fn quartiles_match_python() {
        let cases: &[(&[f64], (f64, f64))] = &[
            (&[1.0, 2.0], (0.75, 2.25)),
            (&[1.0, 2.0, 3.0], (1.0, 3.0)),
            (&[1.0, 2.0, 3.0, 4.0], (1.25, 3.75)),
            (&[1.0, 2.0, 3.0, 4.0, 5.0], (1.5, 4.5)),
            (
                &[0.9, 1.1, 1.0, 0.95, 1.05, 1.2, 0.8, 1.0],
                (0.9125, 1.0875),
            ),
        ];
        for (xs, (q1, q3)) in cases {
            let (a, b) = quartiles(xs).unwrap_or_default();
            assert!(
                (a - q1).abs() < 1e-12 && (b - q3).abs() < 1e-12,
                "{xs:?}: {a} {b}"
            );
        }
    }

    #[test]
    fn per_round_ratios_pair_rounds_not_medians() {
        // The median of ratios differs from the ratio of medians: a slow
        // round slows both cases, and the pairing cancels it.
        let ours = [Some(45.0), Some(95.0), Some(96.0)];
        let base = [Some(50.0), Some(100.0), Some(100.0)];
        let r = Ratio::per_round(&ours, &base).unwrap_or(Ratio {
            median: 0.0,
            q1: 0.0,
            q3: 0.0,
        });
        assert!((r.median - 0.95).abs() < 1e-12);
        assert!((r.q1 - 0.9).abs() < 1e-12, "{r:?}");
        assert!((r.q3 - 0.96).abs() < 1e-12, "{r:?}");
        assert_eq!(Ratio::per_round(&[Some(1.0)], &[Some(0.0)]), None);
        assert_eq!(Ratio::per_round(&[None], &[Some(1.0)]), None);
    }
}
