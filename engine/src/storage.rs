//! Copy-on-write typed storage: either an owned `Vec<T>` or a range of a memory-mapped index
//! file.
//!
//! Owned data is shared (`Arc`), so cloning a list (to mark a tombstone in a new version of an
//! index) copies no vectors; the first write to shared data copies it (`Arc::make_mut`).
//!
//! Loading an index maps its large sections (ids, codes, raw vectors) instead of copying them,
//! so start-up costs one checksum pass and pages are shared with the OS cache. The first write
//! to a mapped list copies that list alone into memory.

use std::fmt;
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::Mmap;

/// Elements of type `T`, owned or borrowed from a shared memory map.
pub enum Storage<T: Pod> {
    /// Owned in memory, shared between clones until one of them writes.
    Owned(Arc<Vec<T>>),
    /// A byte range of a memory map; validated at construction to be aligned and sized for `T`.
    Mapped {
        /// The mapped file.
        map: Arc<Mmap>,
        /// Byte offset of the first element.
        offset: usize,
        /// Number of elements.
        len: usize,
    },
}

impl<T: Pod> Storage<T> {
    /// Borrows `len` elements at byte `offset` of `map`; `None` if out of bounds or misaligned.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        let slice = map.get(offset..end)?;
        bytemuck::try_cast_slice::<u8, T>(slice).ok()?;
        Some(Storage::Mapped { map, offset, len })
    }

    /// The elements.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * std::mem::size_of::<T>()];
                // Alignment and size were checked in `mapped`.
                bytemuck::cast_slice(bytes)
            }
        }
    }

    /// Mutable access, copying mapped data into memory first.
    ///
    /// A copy (of mapped data, or of a vector shared with another version) gets room to grow
    /// by half again, so the appends that usually follow do not copy it a second time.
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        let shared = match self {
            Storage::Mapped { .. } => true,
            Storage::Owned(v) => Arc::get_mut(v).is_none(),
        };
        if shared {
            let src = self.as_slice();
            let mut copy = Vec::with_capacity(src.len() + src.len() / 2 + 16);
            copy.extend_from_slice(src);
            *self = Storage::Owned(Arc::new(copy));
        }
        match self {
            Storage::Owned(v) => Arc::get_mut(v).expect("unique after the copy above"),
            Storage::Mapped { .. } => unreachable!("converted to owned above"),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the data lives in a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }
}

impl<T: Pod> Default for Storage<T> {
    fn default() -> Self {
        Storage::Owned(Arc::new(Vec::new()))
    }
}

impl<T: Pod> Clone for Storage<T> {
    fn clone(&self) -> Self {
        match self {
            Storage::Owned(v) => Storage::Owned(Arc::clone(v)),
            Storage::Mapped { map, offset, len } => Storage::Mapped {
                map: map.clone(),
                offset: *offset,
                len: *len,
            },
        }
    }
}

impl<T: Pod> fmt::Debug for Storage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Storage({kind}, {} elements)", self.len())
    }
}

impl<T: Pod> From<Vec<T>> for Storage<T> {
    fn from(v: Vec<T>) -> Self {
        Storage::Owned(Arc::new(v))
    }
}
