//! A set of disjoint byte ranges `[start, end)`: which parts of an open file were written
//! since its last commit.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end, disjoint and not touching.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Adds `[start, end)`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        // A range starting before `start` that reaches it.
        if let Some((&ps, &pe)) = self.map.range(..=start).next_back()
            && pe >= start
        {
            s = ps;
            e = e.max(pe);
            self.map.remove(&ps);
        }
        // Ranges starting inside [s, e].
        let inside: Vec<u64> = self.map.range(s..=e).map(|(&k, _)| k).collect();
        for k in inside {
            if let Some(v) = self.map.remove(&k) {
                e = e.max(v);
            }
        }
        self.map.insert(s, e);
    }

    /// Removes `[start, end)`, splitting ranges that straddle it.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let touched: Vec<(u64, u64)> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(_, e)| **e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touched {
            self.map.remove(&s);
            if s < start {
                self.map.insert(s, start);
            }
            if e > end {
                self.map.insert(end, e);
            }
        }
    }

    /// Whether any byte of `[start, end)` is in the set.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end && self.map.range(..end).next_back().is_some_and(|(_, e)| *e > start)
    }

    /// The range holding `at`, if any.
    pub fn containing(&self, at: u64) -> Option<(u64, u64)> {
        self.map.range(..=at).next_back().filter(|(_, e)| **e > at).map(|(&s, &e)| (s, e))
    }

    /// The first range starting at or after `at`.
    pub fn next_from(&self, at: u64) -> Option<(u64, u64)> {
        self.map.range(at..).next().map(|(&s, &e)| (s, e))
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &RangeSet) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    #[test]
    fn inserts_merge_overlapping_and_adjacent_ranges() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(set(&r), vec![(10, 20), (30, 40)]);
        r.insert(20, 25);
        assert_eq!(set(&r), vec![(10, 25), (30, 40)]);
        r.insert(5, 35);
        assert_eq!(set(&r), vec![(5, 40)]);
        r.insert(50, 50);
        assert_eq!(set(&r), vec![(5, 40)]);
    }

    #[test]
    fn removes_split_straddling_ranges() {
        let mut r = RangeSet::default();
        r.insert(0, 100);
        r.remove(40, 60);
        assert_eq!(set(&r), vec![(0, 40), (60, 100)]);
        r.remove(30, 70);
        assert_eq!(set(&r), vec![(0, 30), (70, 100)]);
        r.remove(0, 1000);
        assert!(r.is_empty());
    }

    #[test]
    fn queries_answer_overlap_and_containment() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        assert!(r.overlaps(0, 11));
        assert!(!r.overlaps(0, 10));
        assert!(!r.overlaps(20, 30));
        assert!(r.overlaps(19, 30));
        assert_eq!(r.containing(10), Some((10, 20)));
        assert_eq!(r.containing(20), None);
        assert_eq!(r.next_from(11), None);
        assert_eq!(r.next_from(5), Some((10, 20)));
    }

    #[test]
    fn random_operations_match_a_bitmap() {
        let mut x: u64 = 7;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut r = RangeSet::default();
        let mut bits = [false; 256];
        for _ in 0..5000 {
            let a = next() % 256;
            let b = (a + next() % 40).min(256);
            if next() % 3 == 0 {
                r.remove(a, b);
                bits[a as usize..b as usize].iter_mut().for_each(|v| *v = false);
            } else {
                r.insert(a, b);
                bits[a as usize..b as usize].iter_mut().for_each(|v| *v = true);
            }
            for i in 0..256u64 {
                assert_eq!(r.containing(i).is_some(), bits[i as usize], "byte {i}");
            }
            let ranges = set(&r);
            for w in ranges.windows(2) {
                assert!(w[0].1 < w[1].0, "ranges must be disjoint and not touch: {ranges:?}");
            }
        }
    }
}
