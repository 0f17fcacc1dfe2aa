//! One inverted list's payloads, entry by entry: stored JSON bytes back to back and the offset
//! of each entry's bytes (owned, or a window of a memory-mapped index file).
//!
//! A list whose entries have no payloads stores nothing: the column is empty until the first
//! entry with a payload arrives, and earlier entries then get empty payloads.

use crate::storage::Storage;

/// Payloads of one list's entries.
#[derive(Debug, Clone, Default)]
pub struct PayloadColumn {
    /// `len + 1` offsets into `bytes` (relative to `offsets[0]`), or none at all.
    offsets: Storage<u64>,
    bytes: Storage<u8>,
}

impl PayloadColumn {
    /// A column from stored parts: `offsets` holds `len + 1` non-decreasing offsets, the first
    /// of which is where `bytes` starts. `None` when they are inconsistent.
    pub fn from_parts(offsets: Storage<u64>, bytes: Storage<u8>) -> Option<Self> {
        let o = offsets.as_slice();
        if let (Some(&first), Some(&last)) = (o.first(), o.last()) {
            if o.windows(2).any(|w| w[0] > w[1]) || last - first != bytes.len() as u64 {
                return None;
            }
        } else if !bytes.is_empty() {
            return None;
        }
        Some(PayloadColumn { offsets, bytes })
    }

    /// True when no entry has a payload stored (the column holds nothing).
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Entry `i`'s payload bytes (empty: none).
    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let o = self.offsets.as_slice();
        match (o.first(), o.get(i), o.get(i + 1)) {
            (Some(&base), Some(&a), Some(&b)) => {
                &self.bytes.as_slice()[(a - base) as usize..(b - base) as usize]
            }
            _ => &[],
        }
    }

    /// Appends entry `len`'s payload (the list had `len` entries before).
    pub fn push(&mut self, len: usize, payload: &[u8]) {
        if self.offsets.is_empty() {
            if payload.is_empty() {
                return;
            }
            *self.offsets.to_mut() = vec![0; len + 1];
            *self.bytes.to_mut() = Vec::new();
        }
        self.rebase();
        self.bytes.to_mut().extend_from_slice(payload);
        let end = self.bytes.len() as u64;
        self.offsets.to_mut().push(end);
    }

    /// Replaces entry `i`'s payload (of a list with `len` entries).
    pub fn set(&mut self, len: usize, i: usize, payload: &[u8]) {
        if self.offsets.is_empty() {
            if payload.is_empty() {
                return;
            }
            *self.offsets.to_mut() = vec![0; len + 1];
            *self.bytes.to_mut() = Vec::new();
        }
        let entries: Vec<Vec<u8>> = (0..len)
            .map(|j| {
                if j == i {
                    payload.to_vec()
                } else {
                    self.get(j).to_vec()
                }
            })
            .collect();
        *self = PayloadColumn::from_entries(entries.iter().map(|e| e.as_slice()));
    }

    /// A column holding the given entries' payloads.
    pub fn from_entries<'a>(entries: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut offsets = vec![0u64];
        let mut bytes = Vec::new();
        for e in entries {
            bytes.extend_from_slice(e);
            offsets.push(bytes.len() as u64);
        }
        if bytes.is_empty() {
            return PayloadColumn::default();
        }
        PayloadColumn {
            offsets: offsets.into(),
            bytes: bytes.into(),
        }
    }

    /// Makes offsets relative to zero (a mapped window's start at some file offset) before
    /// an owned append.
    fn rebase(&mut self) {
        let base = self.offsets.as_slice().first().copied().unwrap_or(0);
        if base != 0 {
            let v: Vec<u64> = self.offsets.as_slice().iter().map(|o| o - base).collect();
            *self.offsets.to_mut() = v;
        }
    }

    /// Bytes held (for memory accounting).
    pub fn byte_len(&self) -> usize {
        self.bytes.len() + self.offsets.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_push_set_and_read_back() {
        let mut c = PayloadColumn::default();
        c.push(0, b"");
        assert!(c.is_empty());
        c.push(1, b"{\"a\":1}");
        c.push(2, b"");
        c.push(3, b"{\"b\":2}");
        assert_eq!(c.get(0), b"");
        assert_eq!(c.get(1), b"{\"a\":1}");
        assert_eq!(c.get(2), b"");
        assert_eq!(c.get(3), b"{\"b\":2}");
        assert_eq!(c.get(4), b"");
        c.set(4, 2, b"{\"c\":3}");
        assert_eq!(c.get(2), b"{\"c\":3}");
        assert_eq!(c.get(3), b"{\"b\":2}");
        // A window that starts at a non-zero offset, as mapped from a file.
        let w = PayloadColumn::from_parts(vec![10u64, 12, 15].into(), b"abcde".to_vec().into())
            .unwrap();
        assert_eq!(w.get(0), b"ab");
        assert_eq!(w.get(1), b"cde");
        let mut w2 = w.clone();
        w2.push(2, b"f");
        assert_eq!(w2.get(2), b"f");
        assert_eq!(w2.get(0), b"ab");
        assert!(PayloadColumn::from_parts(vec![0u64, 3].into(), b"ab".to_vec().into()).is_none());
        assert!(PayloadColumn::from_parts(vec![2u64, 1].into(), Vec::new().into()).is_none());
    }
}
