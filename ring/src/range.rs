//! Arithmetic on inclusive ranges of key hashes.

/// `range` without the parts covered by `keep` (all inclusive ranges of key hashes).
pub fn subtract(range: (u64, u64), keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![range];
    for &(ks, ke) in keep {
        out = out
            .into_iter()
            .flat_map(|(s, e)| {
                if ke < s || ks > e {
                    return vec![(s, e)];
                }
                let mut parts = Vec::new();
                if ks > s {
                    parts.push((s, ks - 1));
                }
                if ke < e {
                    parts.push((ke + 1, e));
                }
                parts
            })
            .collect();
    }
    out
}

/// The circle of key hashes cut after each of `cuts` (sorted, no repeats): the ranges
/// `(previous cut, cut]`, starting from 0, and the range after the last cut. A key belongs to
/// the first point at or after its hash, so every hash in one range has the same first point
/// (the range after the last cut wraps to the first, like the range up to it).
pub fn intervals(cuts: &[u64]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0u64;
    for &c in cuts {
        ranges.push((start, c));
        if c == u64::MAX {
            return ranges;
        }
        start = c + 1;
    }
    ranges.push((start, u64::MAX));
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_cover_the_circle_once() {
        assert_eq!(intervals(&[]), vec![(0, u64::MAX)]);
        assert_eq!(intervals(&[5, 9]), vec![(0, 5), (6, 9), (10, u64::MAX)]);
        assert_eq!(intervals(&[0, u64::MAX]), vec![(0, 0), (1, u64::MAX)]);
    }

    #[test]
    fn subtracting_ranges_keeps_what_is_outside() {
        assert_eq!(subtract((10, 20), &[]), vec![(10, 20)]);
        assert_eq!(subtract((10, 20), &[(0, 9), (21, 30)]), vec![(10, 20)]);
        assert_eq!(subtract((10, 20), &[(12, 14)]), vec![(10, 11), (15, 20)]);
        assert_eq!(subtract((10, 20), &[(5, 12), (18, 25)]), vec![(13, 17)]);
        assert_eq!(subtract((10, 20), &[(10, 20)]), vec![]);
        assert_eq!(
            subtract((0, u64::MAX), &[(0, 0), (u64::MAX, u64::MAX)]),
            vec![(1, u64::MAX - 1)]
        );
    }
}
