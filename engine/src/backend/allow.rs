//! Allow-sets: the entries of an index a filtered query may return.
//!
//! An index's entries are numbered in list order (list 0's entries, then list 1's, …): these
//! *global slots* are the rows a payload filter is evaluated over ([`IndexRows`]), so a filter's
//! bitmap of rows is directly an allow-set. The set keeps, per list, one bit per entry that is
//! set where the entry may **not** be returned (not allowed, or deleted): the CPU scan checks
//! it in its loop exactly where it checks tombstones, and per-list counts of allowed entries
//! let the planner ([`super::planner`]) decide how far to widen a probe.

use roaring::RoaringBitmap;

use super::Slot;
use crate::index::IvfPqIndex;
use crate::payload::fields::{FieldIndexes, FieldSpec};
use crate::payload::filter::{Filter, Rows};

/// An index's entries as the rows of a payload filter, with its field indexes if any.
pub struct IndexRows<'a> {
    index: &'a IvfPqIndex,
    /// Global slot of each list's first entry, and the total at the end.
    starts: Vec<u32>,
    fields: Option<&'a FieldIndexes>,
}

impl<'a> IndexRows<'a> {
    /// The rows of `index`, with field indexes built over them (or none).
    pub fn new(index: &'a IvfPqIndex, fields: Option<&'a FieldIndexes>) -> Self {
        let mut starts = Vec::with_capacity(index.nlist() + 1);
        let mut at = 0u32;
        starts.push(0);
        for l in index.lists() {
            at += l.len() as u32;
            starts.push(at);
        }
        IndexRows {
            index,
            starts,
            fields,
        }
    }

    /// The (list, offset) of a global slot.
    #[inline]
    pub fn slot(&self, row: u32) -> Slot {
        let l = self.starts.partition_point(|&s| s <= row) - 1;
        Slot {
            list: l as u32,
            offset: row - self.starts[l],
        }
    }

    /// Every entry's stored payload, in row order (what field indexes are built from).
    pub fn payloads(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let index = self.index;
        index
            .lists()
            .iter()
            .flat_map(|l| (0..l.len()).map(move |i| l.payloads.get(i)))
    }

    /// True when the row's entry is deleted.
    pub fn is_deleted(&self, row: u32) -> bool {
        let s = self.slot(row);
        self.index.lists()[s.list as usize].is_deleted(s.offset as usize)
    }
}

impl Rows for IndexRows<'_> {
    fn len(&self) -> u32 {
        *self.starts.last().unwrap_or(&0)
    }
    fn payload(&self, row: u32) -> &[u8] {
        let s = self.slot(row);
        self.index.lists()[s.list as usize]
            .payloads
            .get(s.offset as usize)
    }
    fn id(&self, row: u32) -> u64 {
        let s = self.slot(row);
        self.index.lists()[s.list as usize].ids.as_slice()[s.offset as usize]
    }
    fn row_of(&self, id: u64) -> Option<u32> {
        let loc = self.index.location(id)?;
        Some(self.starts[loc.list as usize] + loc.slot)
    }
    fn fields(&self) -> Option<&FieldIndexes> {
        self.fields
    }
}

/// Field indexes over an index's payloads, for the fields it names
/// ([`IvfPqIndex::field_specs`]).
pub fn field_indexes(index: &IvfPqIndex) -> FieldIndexes {
    field_indexes_for(index, index.field_specs())
}

/// Field indexes over an index's payloads, for the given fields.
pub fn field_indexes_for(index: &IvfPqIndex, specs: &[FieldSpec]) -> FieldIndexes {
    let rows = IndexRows::new(index, None);
    FieldIndexes::build(specs, rows.len(), || rows.payloads())
}

/// The allow-set of a filter over an index, evaluated through `fields` where they index a key.
pub fn allow_set(index: &IvfPqIndex, fields: Option<&FieldIndexes>, filter: &Filter) -> AllowSet {
    AllowSet::new(index, &filter.evaluate(&IndexRows::new(index, fields)))
}

/// The entries of one index a query may return.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowSet {
    /// Per list, one bit per entry, set where the entry is excluded (not allowed or deleted);
    /// list `l`'s words are `excluded[word_starts[l]..word_starts[l + 1]]`.
    excluded: Vec<u64>,
    word_starts: Vec<usize>,
    /// Allowed live entries per list.
    per_list: Vec<u32>,
    allowed: usize,
}

impl AllowSet {
    /// The live entries of `index` whose global slot is in `rows` (a filter's result).
    pub fn new(index: &IvfPqIndex, rows: &RoaringBitmap) -> AllowSet {
        let lists = index.lists();
        let mut word_starts = Vec::with_capacity(lists.len() + 1);
        let mut words = 0usize;
        for l in lists {
            word_starts.push(words);
            words += l.len().div_ceil(64);
        }
        word_starts.push(words);
        let mut excluded = vec![u64::MAX; words];
        // Clear each allowed row's bit (bits past a list's end stay set: excluded).
        let mut starts = Vec::with_capacity(lists.len() + 1);
        let mut at = 0u32;
        for l in lists {
            starts.push(at);
            at += l.len() as u32;
        }
        starts.push(at);
        let mut l = 0usize;
        for row in rows.iter() {
            if row >= at {
                break;
            }
            while row >= starts[l + 1] {
                l += 1;
            }
            let i = (row - starts[l]) as usize;
            excluded[word_starts[l] + i / 64] &= !(1u64 << (i % 64));
        }
        let mut per_list = vec![0u32; lists.len()];
        let mut allowed = 0usize;
        for (l, list) in lists.iter().enumerate() {
            let n = list.len();
            let w = &mut excluded[word_starts[l]..word_starts[l + 1]];
            if let Some(dead) = list.tombstones() {
                w.iter_mut().zip(dead).for_each(|(a, d)| *a |= d);
            }
            let live_allowed: u32 = w
                .iter()
                .enumerate()
                .map(|(j, &x)| {
                    let valid = n.saturating_sub(j * 64).min(64);
                    let mask = if valid == 64 {
                        u64::MAX
                    } else {
                        (1u64 << valid) - 1
                    };
                    (!x & mask).count_ones()
                })
                .sum();
            per_list[l] = live_allowed;
            allowed += live_allowed as usize;
        }
        AllowSet {
            excluded,
            word_starts,
            per_list,
            allowed,
        }
    }

    /// Every live entry of `index`.
    pub fn all(index: &IvfPqIndex) -> AllowSet {
        let total: u32 = index.lists().iter().map(|l| l.len() as u32).sum();
        let mut rows = RoaringBitmap::new();
        rows.insert_range(0..total);
        AllowSet::new(index, &rows)
    }

    /// Number of allowed live entries.
    pub fn allowed(&self) -> usize {
        self.allowed
    }

    /// Allowed live entries in list `l`.
    #[inline]
    pub fn in_list(&self, l: usize) -> u32 {
        self.per_list[l]
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.per_list.len()
    }

    /// List `l`'s exclusion words (bit `i` of word `i / 64` set: entry `i` excluded).
    #[inline]
    pub fn excluded(&self, l: usize) -> &[u64] {
        &self.excluded[self.word_starts[l]..self.word_starts[l + 1]]
    }

    /// True when entry `i` of list `l` may be returned.
    #[inline]
    pub fn is_allowed(&self, l: usize, i: usize) -> bool {
        self.excluded(l)
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 0)
    }

    /// The allowed entries, in list order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.nlist()).flat_map(move |l| {
            let words = self.excluded(l);
            words.iter().enumerate().flat_map(move |(j, &w)| {
                let mut free = !w;
                std::iter::from_fn(move || {
                    if free == 0 {
                        return None;
                    }
                    let b = free.trailing_zeros() as usize;
                    free &= free - 1;
                    Some(j * 64 + b)
                })
                .map(move |i| Slot {
                    list: l as u32,
                    offset: i as u32,
                })
            })
        })
    }

    /// The device form: one bit per global slot, set where the entry is allowed (u32 words, the
    /// layout of [`super::tombstone_bitmap`]).
    pub fn global_bits(&self, index: &IvfPqIndex) -> Vec<u32> {
        let total: usize = index.lists().iter().map(|l| l.len()).sum();
        let mut bits = vec![0u32; total.div_ceil(32).max(1)];
        let mut g = 0usize;
        for (l, list) in index.lists().iter().enumerate() {
            for i in 0..list.len() {
                if self.is_allowed(l, i) {
                    bits[(g + i) / 32] |= 1 << ((g + i) % 32);
                }
            }
            g += list.len();
        }
        bits
    }
}

/// The device form of a batch's filters: the tombstone bitmap, then each allow-set's
/// exclusion bitmap (one bit per global slot, set where the entry is not allowed or deleted),
/// each [`super::tombstone_bitmap`]'s length; and per query the first word of its bitmap (0,
/// the tombstones, for a query without a set).
pub fn exclusion_bitmaps(
    index: &IvfPqIndex,
    filters: QueryFilters<'_>,
    nq: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut words = super::tombstone_bitmap(index);
    let w = words.len();
    for set in filters.sets {
        words.extend(set.global_bits(index).iter().map(|b| !b));
    }
    let offsets = (0..nq)
        .map(|q| match filters.of_query.get(q) {
            Some(&f) if (f as usize) < filters.sets.len() => ((f as usize + 1) * w) as u32,
            _ => 0,
        })
        .collect();
    (words, offsets)
}

/// The filters of a batch: distinct allow-sets, and which one each query uses.
#[derive(Debug, Clone, Copy)]
pub struct QueryFilters<'a> {
    /// The batch's distinct allow-sets (one per distinct filter).
    pub sets: &'a [AllowSet],
    /// Per query, an index into `sets`, or [`NO_FILTER`].
    pub of_query: &'a [u32],
}

/// A query without a filter.
pub const NO_FILTER: u32 = u32::MAX;

impl<'a> QueryFilters<'a> {
    /// Query `q`'s allow-set, if it has one.
    #[inline]
    pub fn set_of(&self, q: usize) -> Option<&'a AllowSet> {
        self.of_query
            .get(q)
            .and_then(|&f| self.sets.get(f as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::{IndexParams, Metric};

    #[test]
    fn sets_follow_rows_and_tombstones() {
        let dim = 8;
        let x: Vec<f32> = (0..400 * dim)
            .map(|i| ((i * 37 % 101) as f32).sin())
            .collect();
        let p = IndexParams::new(Metric::L2, dim, 4, 2);
        let mut index = IvfPqIndex::train(p, &x, &NoProgress).unwrap();
        let payloads: Vec<Vec<u8>> = (0..400)
            .map(|i| crate::payload::encode_text(&format!("{{\"n\":{i}}}")).unwrap())
            .collect();
        index
            .add_with_payloads(&x, None, &payloads, &NoProgress)
            .unwrap();
        index.delete(&[10, 11]);
        let rows = IndexRows::new(&index, None);
        let f = Filter::parse_text(r#"{"must":[{"key":"n","range":{"lt":100}}]}"#).unwrap();
        let hit = f.evaluate(&rows);
        assert_eq!(hit.len(), 100);
        let set = AllowSet::new(&index, &hit);
        assert_eq!(set.allowed(), 98);
        let mut ids: Vec<u64> = set
            .slots()
            .map(|s| index.lists()[s.list as usize].ids.as_slice()[s.offset as usize])
            .collect();
        ids.sort_unstable();
        let want: Vec<u64> = (0..100).filter(|i| *i != 10 && *i != 11).collect();
        assert_eq!(ids, want);
        assert_eq!((0..4).map(|l| set.in_list(l) as usize).sum::<usize>(), 98);
        let g = set.global_bits(&index);
        assert_eq!(g.iter().map(|w| w.count_ones()).sum::<u32>(), 98);
        for r in 0..rows.len() {
            let s = rows.slot(r);
            assert_eq!(rows.row_of(rows.id(r)).is_some(), !rows.is_deleted(r));
            assert_eq!(
                set.is_allowed(s.list as usize, s.offset as usize),
                hit.contains(r) && !rows.is_deleted(r)
            );
        }
        assert_eq!(AllowSet::all(&index).allowed(), 398);
        assert_eq!(AllowSet::new(&index, &RoaringBitmap::new()).allowed(), 0);
    }
}
