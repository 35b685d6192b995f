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

#[cfg(test)]
mod tests {
    use super::*;

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
