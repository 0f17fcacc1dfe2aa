//! Bounded top-k selection: keeps the `k` entries with the lowest score seen so far.
//!
//! Ties are broken by the payload (lower first), so results are deterministic whatever the order
//! in which candidates arrive. This is the per-query selection of the CPU scan and refine; GPU
//! backends implement the same contract and are checked against it.

use std::cmp::Ordering;

/// A scored entry; ordered by score, then payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored<T> {
    /// Lower is better.
    pub score: f32,
    /// What was scored (an id, or a location in an inverted list).
    pub item: T,
}

impl<T: Ord> Scored<T> {
    #[inline]
    fn cmp_key(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| self.item.cmp(&other.item))
    }
}

/// Keeps the `k` best (lowest-score) entries, as a binary max-heap on the score.
#[derive(Debug, Clone)]
pub struct TopK<T> {
    k: usize,
    heap: Vec<Scored<T>>,
}

impl<T: Copy + Ord> TopK<T> {
    /// An empty selection of at most `k` entries.
    pub fn new(k: usize) -> Self {
        TopK { k, heap: Vec::with_capacity(k.min(1 << 16)) }
    }

    /// The capacity `k`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The score an entry must beat to enter (infinity while not full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap[0].score
        }
    }

    /// Offers an entry; keeps it if it is among the k best so far.
    #[inline]
    pub fn push(&mut self, score: f32, item: T) {
        if self.k == 0 {
            return;
        }
        let e = Scored { score, item };
        if self.heap.len() < self.k {
            self.heap.push(e);
            self.sift_up(self.heap.len() - 1);
        } else if e.cmp_key(&self.heap[0]) == Ordering::Less {
            self.heap[0] = e;
            self.sift_down(0);
        }
    }

    /// Clears the selection, keeping its allocation.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Offers every entry of another selection.
    pub fn merge(&mut self, other: &TopK<T>) {
        for e in &other.heap {
            self.push(e.score, e.item);
        }
    }

    /// The entries, best first.
    pub fn into_sorted(mut self) -> Vec<Scored<T>> {
        self.heap.sort_unstable_by(|a, b| a.cmp_key(b));
        self.heap
    }

    /// The entries, best first, leaving this selection empty.
    pub fn drain_sorted(&mut self) -> Vec<Scored<T>> {
        let mut v = std::mem::take(&mut self.heap);
        v.sort_unstable_by(|a, b| a.cmp_key(b));
        v
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].cmp_key(&self.heap[parent]) == Ordering::Greater {
                self.heap.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut largest = i;
            if l < n && self.heap[l].cmp_key(&self.heap[largest]) == Ordering::Greater {
                largest = l;
            }
            if r < n && self.heap[r].cmp_key(&self.heap[largest]) == Ordering::Greater {
                largest = r;
            }
            if largest == i {
                break;
            }
            self.heap.swap(i, largest);
            i = largest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_the_k_smallest_in_order(scores in proptest::collection::vec(-1e6f32..1e6, 0..300), k in 0usize..40) {
            let mut t = TopK::new(k);
            for (i, s) in scores.iter().enumerate() {
                t.push(*s, i as u32);
            }
            let got: Vec<(f32, u32)> = t.into_sorted().iter().map(|e| (e.score, e.item)).collect();
            let mut want: Vec<(f32, u32)> = scores.iter().enumerate().map(|(i, s)| (*s, i as u32)).collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn ties_prefer_lower_items_whatever_the_arrival_order() {
        let mut a = TopK::new(2);
        let mut b = TopK::new(2);
        for i in [5u32, 1, 3, 2] {
            a.push(1.0, i);
        }
        for i in [2u32, 3, 1, 5] {
            b.push(1.0, i);
        }
        let ia: Vec<u32> = a.into_sorted().iter().map(|e| e.item).collect();
        let ib: Vec<u32> = b.into_sorted().iter().map(|e| e.item).collect();
        assert_eq!(ia, vec![1, 2]);
        assert_eq!(ia, ib);
    }

    #[test]
    fn threshold_is_infinite_until_full() {
        let mut t = TopK::new(2);
        assert_eq!(t.threshold(), f32::INFINITY);
        t.push(3.0, 0u32);
        assert_eq!(t.threshold(), f32::INFINITY);
        t.push(1.0, 1);
        assert_eq!(t.threshold(), 3.0);
        t.push(2.0, 2);
        assert_eq!(t.threshold(), 2.0);
    }
}
