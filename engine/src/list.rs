//! Inverted lists: for each coarse centroid, the ids, PQ codes and (optionally) raw vectors of
//! the vectors assigned to it, plus tombstones for deleted entries.
//!
//! Entries are addressed by their offset in the list; a deleted entry keeps its slot (and is
//! skipped by scans) until the index is compacted, which saving does.

use half::f16;

use crate::payload::column::PayloadColumn;
use crate::storage::Storage;

/// How PQ codes are laid out inside a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeLayout {
    /// `code_size` bytes per vector, vector after vector (8-bit PQ).
    Flat,
    /// 4-bit codes in blocks of 32 vectors for fast-scan (see [`crate::fastscan`]).
    Packed4x32,
}

impl CodeLayout {
    /// Stable code used in index files.
    pub fn code(self) -> u8 {
        match self {
            CodeLayout::Flat => 0,
            CodeLayout::Packed4x32 => 1,
        }
    }
    /// Inverse of [`CodeLayout::code`].
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(CodeLayout::Flat),
            1 => Some(CodeLayout::Packed4x32),
            _ => None,
        }
    }
    /// The layout of codes with `nbits` bits.
    pub fn for_bits(nbits: u32) -> Self {
        if nbits == 4 {
            CodeLayout::Packed4x32
        } else {
            CodeLayout::Flat
        }
    }
    /// Bytes of `n` codes of `m` sub-quantizers (`code_size` bytes each when flat).
    pub fn bytes(self, n: usize, m: usize, code_size: usize) -> usize {
        match self {
            CodeLayout::Flat => n * code_size,
            CodeLayout::Packed4x32 => crate::fastscan::list_bytes(n, m),
        }
    }
}

/// Raw vectors kept for exact re-ranking, in list order.
#[derive(Debug, Clone, Default)]
pub enum RawVectors {
    /// None kept.
    #[default]
    None,
    /// Half precision.
    F16(Storage<f16>),
    /// Single precision.
    F32(Storage<f32>),
}

impl RawVectors {
    /// The stored values as bytes, entry after entry (2 bytes a value for f16, 4 for f32;
    /// empty when none are kept).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RawVectors::None => &[],
            RawVectors::F16(s) => bytemuck::cast_slice(s.as_slice()),
            RawVectors::F32(s) => bytemuck::cast_slice(s.as_slice()),
        }
    }
}

/// One inverted list.
#[derive(Debug, Clone, Default)]
pub struct InvertedList {
    /// User ids, one per entry.
    pub ids: Storage<u64>,
    /// PQ codes, `code_size` bytes per entry.
    pub codes: Storage<u8>,
    /// Raw vectors, `dim` values per entry, if the index keeps them.
    pub raw: RawVectors,
    /// Payloads (stored JSON), one per entry; empty when no entry has one.
    pub payloads: PayloadColumn,
    deleted: Option<Vec<u64>>,
    deleted_count: usize,
}

impl InvertedList {
    /// A list from stored parts, with no tombstones.
    pub fn from_parts(ids: Storage<u64>, codes: Storage<u8>, raw: RawVectors) -> Self {
        InvertedList {
            ids,
            codes,
            raw,
            payloads: PayloadColumn::default(),
            deleted: None,
            deleted_count: 0,
        }
    }

    /// Number of slots, deleted ones included.
    #[inline]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the list has no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of entries not deleted.
    pub fn live_len(&self) -> usize {
        self.len() - self.deleted_count
    }

    /// Number of tombstones.
    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    /// The tombstone bitmap (bit `i` of word `i / 64`), if any entry is deleted.
    #[inline]
    pub fn tombstones(&self) -> Option<&[u64]> {
        self.deleted.as_deref()
    }

    /// True when slot `i` is deleted.
    #[inline]
    pub fn is_deleted(&self, i: usize) -> bool {
        match &self.deleted {
            Some(bits) => bits[i / 64] >> (i % 64) & 1 == 1,
            None => false,
        }
    }

    /// Marks slot `i` deleted; returns false if it already was.
    pub fn mark_deleted(&mut self, i: usize) -> bool {
        let words = self.len().div_ceil(64);
        let bits = self.deleted.get_or_insert_with(|| vec![0; words]);
        if bits.len() < words {
            bits.resize(words, 0);
        }
        let (w, b) = (i / 64, i % 64);
        if bits[w] >> b & 1 == 1 {
            return false;
        }
        bits[w] |= 1 << b;
        self.deleted_count += 1;
        true
    }

    /// Appends one entry: `code` is the vector's `code_size` bytes (4-bit codes two per byte,
    /// low nibble first), stored in the given layout. `raw` must match the list's raw-vector
    /// kind (ignored when none).
    pub fn push(&mut self, id: u64, code: &[u8], raw: &[f32], layout: CodeLayout) {
        self.push_with_payload(id, code, raw, &[], layout);
    }

    /// [`InvertedList::push`] with the entry's stored payload (empty: none).
    pub fn push_with_payload(
        &mut self,
        id: u64,
        code: &[u8],
        raw: &[f32],
        payload: &[u8],
        layout: CodeLayout,
    ) {
        let slot = self.ids.len();
        self.payloads.push(slot, payload);
        self.ids.to_mut().push(id);
        match layout {
            CodeLayout::Flat => self.codes.to_mut().extend_from_slice(code),
            CodeLayout::Packed4x32 => {
                let nibbles: Vec<u8> = code.iter().flat_map(|b| [b & 0x0F, b >> 4]).collect();
                crate::fastscan::set_codes(self.codes.to_mut(), slot, &nibbles);
            }
        }
        match &mut self.raw {
            RawVectors::None => {}
            RawVectors::F16(s) => {
                // The slice conversion uses F16C when the CPU has it (element-wise does not).
                let v = s.to_mut();
                let at = v.len();
                v.resize(at + raw.len(), f16::ZERO);
                half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut v[at..], raw);
            }
            RawVectors::F32(s) => s.to_mut().extend_from_slice(raw),
        }
        if let Some(bits) = &mut self.deleted {
            bits.resize(self.ids.len().div_ceil(64), 0);
        }
    }

    /// Appends the live entries of `src` as stored: ids, codes and raw values copied run by
    /// run, with no decoding (a segment merge). Calls `placed(id, slot)` for each entry in
    /// order. Returns false, appending nothing, when this cannot copy bytes as they are
    /// (4-bit packed codes, or raw vectors of another kind): the caller pushes entry by entry.
    pub fn append_live(
        &mut self,
        src: &InvertedList,
        code_size: usize,
        dim: usize,
        layout: CodeLayout,
        mut placed: impl FnMut(u64, u32),
    ) -> bool {
        let same_raw = matches!(
            (&self.raw, &src.raw),
            (RawVectors::None, RawVectors::None)
                | (RawVectors::F16(_), RawVectors::F16(_))
                | (RawVectors::F32(_), RawVectors::F32(_))
        );
        if layout != CodeLayout::Flat || !same_raw {
            return false;
        }
        let n = src.len();
        let mut a = 0;
        while a < n {
            if src.is_deleted(a) {
                a += 1;
                continue;
            }
            let mut b = a + 1;
            while b < n && !src.is_deleted(b) {
                b += 1;
            }
            let first = self.ids.len();
            for i in a..b {
                self.payloads.push(first + (i - a), src.payloads.get(i));
            }
            let ids = &src.ids.as_slice()[a..b];
            self.ids.to_mut().extend_from_slice(ids);
            self.codes
                .to_mut()
                .extend_from_slice(&src.codes.as_slice()[a * code_size..b * code_size]);
            match (&mut self.raw, &src.raw) {
                (RawVectors::F16(d), RawVectors::F16(s)) => d
                    .to_mut()
                    .extend_from_slice(&s.as_slice()[a * dim..b * dim]),
                (RawVectors::F32(d), RawVectors::F32(s)) => d
                    .to_mut()
                    .extend_from_slice(&s.as_slice()[a * dim..b * dim]),
                _ => {}
            }
            for (k, &id) in ids.iter().enumerate() {
                placed(id, (first + k) as u32);
            }
            a = b;
        }
        if let Some(bits) = &mut self.deleted {
            bits.resize(self.ids.len().div_ceil(64), 0);
        }
        true
    }

    /// Copies the raw vector of slot `i` into `out` (`dim` values). Returns false if the list
    /// keeps no raw vectors.
    #[inline]
    pub fn raw_vector(&self, i: usize, out: &mut [f32]) -> bool {
        let dim = out.len();
        match &self.raw {
            RawVectors::None => false,
            RawVectors::F16(s) => {
                let src = &s.as_slice()[i * dim..(i + 1) * dim];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, out);
                true
            }
            RawVectors::F32(s) => {
                out.copy_from_slice(&s.as_slice()[i * dim..(i + 1) * dim]);
                true
            }
        }
    }

    /// Exact score (lower is better) of slot `i`'s raw vector against a prepared query, read
    /// in place (f16 widened on the fly). `None` if the list keeps no raw vectors.
    #[inline]
    pub fn raw_score(&self, i: usize, query: &[f32], metric: crate::Metric) -> Option<f32> {
        let dim = query.len();
        let ip = metric.is_inner_product();
        match &self.raw {
            RawVectors::None => None,
            RawVectors::F16(s) => {
                let v = &s.as_slice()[i * dim..(i + 1) * dim];
                Some(if ip {
                    -crate::simd::dot_f16(query, v)
                } else {
                    crate::simd::l2_sq_f16(query, v)
                })
            }
            RawVectors::F32(s) => {
                let v = &s.as_slice()[i * dim..(i + 1) * dim];
                Some(if ip {
                    -crate::simd::dot(query, v)
                } else {
                    crate::simd::l2_sq(query, v)
                })
            }
        }
    }

    /// Slot `i`'s code as `code_size` bytes (4-bit codes two per byte, low nibble first).
    pub fn code(&self, i: usize, code_size: usize, layout: CodeLayout) -> Vec<u8> {
        match layout {
            CodeLayout::Flat => self.codes.as_slice()[i * code_size..(i + 1) * code_size].to_vec(),
            CodeLayout::Packed4x32 => {
                let mut nibbles = vec![0u8; code_size * 2];
                crate::fastscan::get_codes(self.codes.as_slice(), i, code_size * 2, &mut nibbles);
                nibbles.chunks_exact(2).map(|p| p[0] | p[1] << 4).collect()
            }
        }
    }

    /// Hints the CPU to start loading slot `i`'s raw vector (`dim` values) into cache, so a
    /// refine that walks scattered candidates overlaps their memory latency.
    #[inline]
    pub fn prefetch_raw(&self, i: usize, dim: usize) {
        let bytes: &[u8] = match &self.raw {
            RawVectors::None => return,
            RawVectors::F16(s) => {
                bytemuck::cast_slice(s.as_slice().get(i * dim..(i + 1) * dim).unwrap_or(&[]))
            }
            RawVectors::F32(s) => {
                bytemuck::cast_slice(s.as_slice().get(i * dim..(i + 1) * dim).unwrap_or(&[]))
            }
        };
        #[cfg(target_arch = "x86_64")]
        for line in bytes.chunks(64) {
            // SAFETY: a prefetch is a hint on an address inside a live slice; it never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T2 }>(
                    line.as_ptr() as *const i8
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bytes;
    }

    /// A copy without the deleted entries (what is saved).
    pub fn compacted(&self, code_size: usize, dim: usize, layout: CodeLayout) -> InvertedList {
        if self.deleted_count == 0 {
            let mut l =
                InvertedList::from_parts(self.ids.clone(), self.codes.clone(), self.raw.clone());
            l.payloads = self.payloads.clone();
            return l;
        }
        let keep: Vec<usize> = (0..self.len()).filter(|&i| !self.is_deleted(i)).collect();
        let ids: Vec<u64> = keep.iter().map(|&i| self.ids.as_slice()[i]).collect();
        let codes: Vec<u8> = match layout {
            CodeLayout::Flat => {
                let src = self.codes.as_slice();
                keep.iter()
                    .flat_map(|&i| &src[i * code_size..(i + 1) * code_size])
                    .copied()
                    .collect()
            }
            CodeLayout::Packed4x32 => {
                let m = code_size * 2;
                let mut packed = Vec::new();
                let mut nibbles = vec![0u8; m];
                for (new, &old) in keep.iter().enumerate() {
                    crate::fastscan::get_codes(self.codes.as_slice(), old, m, &mut nibbles);
                    crate::fastscan::set_codes(&mut packed, new, &nibbles);
                }
                packed
            }
        };
        let raw = match &self.raw {
            RawVectors::None => RawVectors::None,
            RawVectors::F16(s) => {
                let src = s.as_slice();
                RawVectors::F16(
                    keep.iter()
                        .flat_map(|&i| &src[i * dim..(i + 1) * dim])
                        .copied()
                        .collect::<Vec<_>>()
                        .into(),
                )
            }
            RawVectors::F32(s) => {
                let src = s.as_slice();
                RawVectors::F32(
                    keep.iter()
                        .flat_map(|&i| &src[i * dim..(i + 1) * dim])
                        .copied()
                        .collect::<Vec<_>>()
                        .into(),
                )
            }
        };
        let mut list = InvertedList::from_parts(ids.into(), codes.into(), raw);
        if !self.payloads.is_empty() {
            list.payloads = PayloadColumn::from_entries(keep.iter().map(|&i| self.payloads.get(i)));
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_delete_compact() {
        let mut l = InvertedList::from_parts(
            Storage::default(),
            Storage::default(),
            RawVectors::F16(Storage::default()),
        );
        for i in 0..130u64 {
            l.push(i * 10, &[i as u8, 1], &[i as f32, 0.5], CodeLayout::Flat);
        }
        assert!(l.mark_deleted(3));
        assert!(!l.mark_deleted(3));
        assert!(l.mark_deleted(129));
        assert_eq!(l.live_len(), 128);
        assert!(l.is_deleted(129) && !l.is_deleted(128));
        l.push(9999, &[7, 7], &[1.0, 2.0], CodeLayout::Flat);
        assert!(!l.is_deleted(130));
        let c = l.compacted(2, 2, CodeLayout::Flat);
        assert_eq!(c.len(), 129);
        assert_eq!(c.ids.as_slice()[3], 40);
        assert_eq!(&c.codes.as_slice()[6..8], &[4, 1]);
        let mut v = [0.0; 2];
        assert!(c.raw_vector(128, &mut v));
        assert_eq!(v, [1.0, 2.0]);
    }

    #[test]
    fn packed_layout_push_delete_compact() {
        let mut l = InvertedList::default();
        for i in 0..70u64 {
            l.push(i, &[(i % 256) as u8, 0x5A], &[], CodeLayout::Packed4x32);
        }
        assert_eq!(l.codes.len(), crate::fastscan::list_bytes(70, 4));
        assert_eq!(l.code(37, 2, CodeLayout::Packed4x32), vec![37, 0x5A]);
        l.mark_deleted(0);
        l.mark_deleted(40);
        let c = l.compacted(2, 0, CodeLayout::Packed4x32);
        assert_eq!(c.len(), 68);
        assert_eq!(c.code(0, 2, CodeLayout::Packed4x32), vec![1, 0x5A]);
        assert_eq!(c.code(39, 2, CodeLayout::Packed4x32), vec![41, 0x5A]);
        assert_eq!(c.codes.len(), crate::fastscan::list_bytes(68, 4));
    }
}
