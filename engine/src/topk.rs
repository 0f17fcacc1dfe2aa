//! Bounded top-k selection: keeps the `k` entries with the lowest score seen so far.
//!
//! Ties are broken by the payload (lower first), so results are deterministic whatever the order
//! in which candidates arrive. This is the per-query selection of the CPU scan and refine; GPU
//! backends implement the same contract and are checked against it.

/// A scored entry; ordered by score, then payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored<T> {
    /// Lower is better.
    pub score: f32,
    /// What was scored (an id, or a location in an inverted list).
    pub item: T,
}

/// The score's position in `f32::total_cmp` order as an unsigned integer (a monotone map), so
/// that selection and sorting compare integers.
#[inline]
fn order_key(score: f32) -> u32 {
    // Negative: all bits flipped; otherwise the sign bit set. Branch-free.
    let b = score.to_bits();
    b ^ ((b as i32 >> 31) as u32 | 0x8000_0000)
}

/// Keeps the `k` best (lowest-score) entries.
///
/// Entries are appended (scores and payloads in two arrays) to a buffer of up to `2k`; when it
/// fills, the k-th best score is found by an integer selection over the scores' order keys,
/// the buffer is compacted to the best `k` (ties at the k-th score decided by payload) and the
/// entry threshold rises to that score. A push costs O(1) amortised (a binary heap costs
/// O(log k)), which matters when scans offer many candidates.
#[derive(Debug, Clone)]
pub struct TopK<T> {
    k: usize,
    scores: Vec<f32>,
    items: Vec<T>,
    threshold: f32,
    /// Scratch: order keys for the selection.
    select_keys: Vec<u32>,
    /// Scratch: `(order key << 32) | index` for sorting.
    keys: Vec<u64>,
    /// Scratch: payloads tied at the k-th score.
    ties: Vec<T>,
    /// The last sorted result.
    out: Vec<Scored<T>>,
}

impl<T: Copy + Ord> TopK<T> {
    /// An empty selection of at most `k` entries.
    pub fn new(k: usize) -> Self {
        let cap = (2 * k).min(1 << 17);
        TopK {
            k,
            scores: Vec::with_capacity(cap),
            items: Vec::with_capacity(cap),
            threshold: f32::INFINITY,
            select_keys: Vec::new(),
            keys: Vec::new(),
            ties: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The capacity `k`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of entries that would be returned now (at most k).
    pub fn len(&self) -> usize {
        self.scores.len().min(self.k)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Entries scoring above this cannot enter (infinity until k entries have been kept).
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offers an entry; keeps it if it may be among the k best.
    #[inline]
    pub fn push(&mut self, score: f32, item: T) {
        if self.k == 0 || score > self.threshold || score.is_nan() {
            return;
        }
        self.scores.push(score);
        self.items.push(item);
        if self.scores.len() >= 2 * self.k {
            self.compact();
        }
    }

    /// Keeps the best k of the buffer and raises the threshold to the k-th best score.
    fn compact(&mut self) {
        let k = self.k;
        let n = self.scores.len();
        if n > k {
            self.select_keys.clear();
            self.select_keys
                .extend(self.scores.iter().map(|&s| order_key(s)));
            let kth = *self.select_keys.select_nth_unstable(k - 1).1;
            // Keep everything strictly better than the k-th score, in place (written always,
            // kept by advancing: no unpredictable branch), and collect the payloads tied with
            // it; the lowest of those fill the remaining places.
            self.ties.clear();
            let mut kth_score = f32::NAN;
            let mut w = 0;
            for r in 0..n {
                let (score, item) = (self.scores[r], self.items[r]);
                let key = order_key(score);
                self.scores[w] = score;
                self.items[w] = item;
                w += (key < kth) as usize;
                if key == kth {
                    self.ties.push(item);
                    kth_score = score;
                }
            }
            let need = k - w;
            if self.ties.len() > need {
                self.ties.select_nth_unstable(need - 1);
            }
            self.scores.truncate(w);
            self.items.truncate(w);
            for &item in &self.ties[..need] {
                self.scores.push(kth_score);
                self.items.push(item);
            }
        }
        if self.scores.len() == k {
            self.threshold = self
                .scores
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }

    /// Clears the selection, keeping its allocation.
    pub fn clear(&mut self) {
        self.scores.clear();
        self.items.clear();
        self.threshold = f32::INFINITY;
    }

    /// Offers every entry of another selection.
    pub fn merge(&mut self, other: &TopK<T>) {
        for (&score, &item) in other.scores.iter().zip(&other.items) {
            self.push(score, item);
        }
    }

    /// The entries, best first.
    pub fn into_sorted(mut self) -> Vec<Scored<T>> {
        self.drain_sorted()
    }

    /// The entries, best first, into a buffer this selection keeps for the next call (call
    /// [`TopK::clear`] before reusing the selection).
    pub fn sorted(&mut self) -> &[Scored<T>] {
        if self.scores.len() > self.k {
            self.compact();
        }
        // Sort by (score, position) as integers, then order runs of equal scores by payload.
        self.keys.clear();
        self.keys.extend(
            self.scores
                .iter()
                .enumerate()
                .map(|(i, &s)| (order_key(s) as u64) << 32 | i as u64),
        );
        self.keys.sort_unstable();
        self.out.clear();
        self.out.extend(self.keys.iter().map(|&key| {
            let i = key as u32 as usize;
            Scored {
                score: self.scores[i],
                item: self.items[i],
            }
        }));
        let mut start = 0;
        while start < self.out.len() {
            let key = self.keys[start] >> 32;
            let mut end = start + 1;
            while end < self.out.len() && self.keys[end] >> 32 == key {
                end += 1;
            }
            if end - start > 1 {
                self.out[start..end].sort_unstable_by_key(|a| a.item);
            }
            start = end;
        }
        &self.out
    }

    /// The entries, best first, leaving this selection empty.
    pub fn drain_sorted(&mut self) -> Vec<Scored<T>> {
        self.sorted();
        let out = std::mem::take(&mut self.out);
        self.clear();
        out
    }
}

/// The shape of the GPU backends' WarpSelect-style top-k (`topk.wgsl`, `topk.cu`) for one
/// `keep`: the warp queue's length, each lane's thread-queue length and the chunk a warp reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarpSelectShape {
    /// Warp queue entries K: a power of two, at least `keep` (and 64, but for
    /// [`Self::for_passes`]).
    pub queue: usize,
    /// Thread-queue entries per lane T: `min(8, K / 32)`, so the 32·T staged entries fit the
    /// queue's tail when they are merged.
    pub thread_queue: usize,
    /// Entries of a row one warp selects from in a round (rows shrink by `chunk / keep` or
    /// more per round).
    pub chunk: usize,
}

impl WarpSelectShape {
    /// Lanes of a warp.
    pub const LANES: usize = 32;

    /// The shape for selecting `keep` entries per row (`keep ≥ 1`).
    pub fn for_keep(keep: usize) -> WarpSelectShape {
        let queue = keep.max(64).next_power_of_two();
        WarpSelectShape {
            queue,
            thread_queue: (queue / Self::LANES).min(8),
            chunk: (queue * 8).max(8192),
        }
    }

    /// The shape of queues held in shared memory across many short passes (the coarse
    /// selection's: 128 a block, each offered a tile's 128 lists, then finished): K a power of
    /// two, at least 32 and at least `keep`; T = 1, so a finish — nearly every pass ends in
    /// one — sorts 32 staged entries, not 32·T.
    pub fn for_passes(keep: usize) -> WarpSelectShape {
        let queue = keep.max(32).next_power_of_two();
        WarpSelectShape {
            queue,
            thread_queue: 1,
            chunk: (queue * 8).max(8192),
        }
    }

    /// Warps a first round over long rows aims at: an H100 keeps 32 one-warp blocks on each of
    /// its 132 SMs, and a lone warp's loop waits on memory at every step, so a batch's rows
    /// are cut until they fill the device.
    pub const SPREAD_WARPS: usize = 4096;

    /// The chunk of a first round over `rows` rows of `row_len` entries: [`Self::chunk`] or
    /// less, so that `rows × parts` reaches [`Self::SPREAD_WARPS`], but never below 8·K (each
    /// round still shrinks a row at least 8-fold). The coarse selection's rows (`nlist`
    /// scores) use it: 1,024 queries at nlist 16,384 and nprobe 32 read 4,096-entry chunks,
    /// 4 warps a row, where 8,192-entry chunks would leave 2 warps a row and half of an H100's
    /// warp slots idle.
    pub fn spread_chunk(&self, rows: usize, row_len: usize) -> usize {
        let parts = Self::SPREAD_WARPS.div_ceil(rows.max(1));
        row_len
            .div_ceil(parts)
            .next_power_of_two()
            .max(8 * self.queue)
            .min(self.chunk)
    }

    /// Workgroup (shared) memory a warp uses: the queue and the staging area, 12 bytes per
    /// entry (f32 score, two u32 payload words).
    pub fn shared_bytes(&self) -> usize {
        (self.queue + Self::LANES * self.thread_queue) * 12
    }
}

/// One chunk of a device top-k round: `len` entries from `src` sorted, the best `keep`
/// written at `dst` (the layout of `Chunk` in `shaders/wgsl/topk.wgsl` and `kernels/cuda/topk.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RoundChunk {
    /// First input entry.
    pub src: u32,
    /// Entries (at most the chunk size).
    pub len: u32,
    /// First output entry.
    pub dst: u32,
    /// Entries written: `min(keep, len)`.
    pub keep: u32,
}

/// Plans one round of the GPU backends' chunked top-k: rows given as (first entry, length)
/// are cut into chunks of at most `chunk` entries, each keeping its best `keep`; returns the
/// chunks and the rows' (first entry, length) in the round's output. With `keep <= chunk / 2`
/// every row at least halves, so rounds end when every row fits one chunk.
/// ([`WarpSelectShape::chunk`] is at least 8 × `keep`.)
pub fn plan_round(
    spans: &[(usize, usize)],
    keep: usize,
    chunk: usize,
) -> (Vec<RoundChunk>, Vec<(usize, usize)>) {
    let mut chunks = Vec::new();
    let mut out = Vec::with_capacity(spans.len());
    let mut dst = 0usize;
    for &(start, len) in spans {
        let row_start = dst;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk);
            let k = n.min(keep);
            chunks.push(RoundChunk {
                src: (start + off) as u32,
                len: n as u32,
                dst: dst as u32,
                keep: k as u32,
            });
            dst += k;
            off += n;
        }
        out.push((row_start, dst - row_start));
    }
    (chunks, out)
}

/// Each row's best `keep` entries (scores with 64-bit payloads `payload(i)`), best first: the
/// host selection the GPU backends fall back to for a large `keep`.
pub fn select_rows(
    scores: &[f32],
    payload: impl Fn(usize) -> u64,
    spans: &[(usize, usize)],
    keep: usize,
) -> Vec<Vec<Scored<u64>>> {
    let mut top = TopK::new(keep);
    spans
        .iter()
        .map(|&(start, n)| {
            top.clear();
            for (i, &score) in scores.iter().enumerate().skip(start).take(n) {
                top.push(score, payload(i));
            }
            top.sorted().to_vec()
        })
        .collect()
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

        /// Many ties (scores from a handful of values, including ±0 and ±∞), payloads in any
        /// order: the selection is still (score in `total_cmp` order, then payload).
        #[test]
        fn ties_and_signed_zeros_follow_total_order(
            picks in proptest::collection::vec((0usize..6, 0u64..1000), 0..300),
            k in 1usize..40,
        ) {
            let values = [-0.0f32, 0.0, 1.5, -2.0, f32::INFINITY, f32::NEG_INFINITY];
            let mut t = TopK::new(k);
            for &(v, item) in &picks {
                t.push(values[v], item);
            }
            let got: Vec<(u32, u64)> = t.sorted().iter().map(|e| (e.score.to_bits(), e.item)).collect();
            let mut want: Vec<(f32, u64)> = picks.iter().map(|&(v, i)| (values[v], i)).collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            let want: Vec<(u32, u64)> = want.iter().map(|&(s, i)| (s.to_bits(), i)).collect();
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
    fn threshold_only_rises_to_the_kth_best() {
        let mut t = TopK::new(2);
        assert_eq!(t.threshold(), f32::INFINITY);
        for (i, s) in [3.0, 1.0, 2.0, 5.0].into_iter().enumerate() {
            t.push(s, i as u32);
        }
        // After a compaction the threshold is the k-th best so far, never below it.
        assert_eq!(t.threshold(), 2.0);
        t.push(9.0, 9);
        assert_eq!(t.len(), 2);
        let got: Vec<u32> = t.into_sorted().iter().map(|e| e.item).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn merge_and_reuse_after_drain() {
        let mut a = TopK::new(3);
        let mut b = TopK::new(3);
        for i in 0..10u32 {
            a.push(i as f32, i);
            b.push(i as f32 + 0.5, i + 100);
        }
        a.merge(&b);
        let got: Vec<u32> = a.drain_sorted().iter().map(|e| e.item).collect();
        assert_eq!(got, vec![0, 100, 1]);
        assert!(a.is_empty() && a.threshold() == f32::INFINITY);
        a.push(7.0, 7);
        assert_eq!(a.drain_sorted().len(), 1);
    }

    #[test]
    fn sorted_in_place_matches_drain_and_reuses_after_clear() {
        let mut a = TopK::new(4);
        let mut b = TopK::new(4);
        for i in 0..50u32 {
            let s = ((i * 37) % 23) as f32;
            a.push(s, i);
            b.push(s, i);
        }
        let want = b.drain_sorted();
        assert_eq!(a.sorted(), &want[..]);
        a.clear();
        assert!(a.is_empty() && a.threshold() == f32::INFINITY);
        a.push(1.0, 1);
        assert_eq!(a.sorted().len(), 1);
    }

    #[test]
    fn rounds_halve_rows_and_cover_them() {
        let spans = [(0, 2500), (2500, 10), (2510, 0)];
        let (chunks, out) = plan_round(&spans, 100, 1024);
        assert_eq!(chunks.len(), 4);
        assert_eq!(out, vec![(0, 300), (300, 10), (310, 0)]);
        let covered: u32 = chunks.iter().map(|c| c.len).sum();
        assert_eq!(covered, 2510);
        let (_, again) = plan_round(&out, 100, 1024);
        assert_eq!(again, vec![(0, 100), (100, 10), (110, 0)]);
    }

    #[test]
    fn warp_select_shapes_fit_their_merge_and_shrink_rows() {
        for keep in [1, 10, 63, 64, 65, 100, 128, 500, 1024, 1025, 2048] {
            let s = WarpSelectShape::for_keep(keep);
            assert!(
                s.queue.is_power_of_two() && s.queue >= keep.max(64),
                "{keep}: {s:?}"
            );
            assert!(s.queue < 2 * keep.max(64), "{keep}: {s:?}");
            assert!((2..=8).contains(&s.thread_queue), "{keep}: {s:?}");
            assert!(
                WarpSelectShape::LANES * s.thread_queue <= s.queue,
                "{keep}: {s:?}"
            );
            assert!(s.chunk >= 8 * s.queue, "{keep}: {s:?}");
        }
        assert_eq!(WarpSelectShape::for_keep(1024).shared_bytes(), 15_360);
        assert_eq!(WarpSelectShape::for_keep(2048).shared_bytes(), 27_648);
    }

    #[test]
    fn host_rows_select_by_score_then_payload() {
        let scores = [3.0, 1.0, 2.0, 1.0, 5.0];
        let rows = select_rows(&scores, |i| 10 - i as u64, &[(0, 4), (4, 1)], 2);
        let items: Vec<Vec<u64>> = rows
            .iter()
            .map(|r| r.iter().map(|e| e.item).collect())
            .collect();
        assert_eq!(items, vec![vec![7, 9], vec![6]]);
    }
}
