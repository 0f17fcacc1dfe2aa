//! The index file: one versioned file holding an [`IvfPqIndex`].
//!
//! Layout (all integers little-endian), format version 2 (version 1, whose codes are always
//! residuals and whose PARAMS byte 20 is zero, still loads):
//! ```text
//! header   16 B   magic "QUIVERIX", format version u32, CRC32C of the previous 12 bytes u32
//! sections        each at a 64-byte aligned offset:
//!                 PARAMS (48 B), CENTROIDS (nlist·dim f32), CODEBOOK (M·ksub·dsub f32),
//!                 LIST_SIZES (nlist u64), IDS (n u64), CODES (per list: n·code_size
//!                 bytes, or whole 32-vector blocks for 4-bit fast-scan),
//!                 RAW (n·dim f16 or f32; only when the index keeps raw vectors),
//!                 PAYLOAD_OFFSETS ((n + 1) u64) and PAYLOAD_BYTES (each entry's stored JSON,
//!                 back to back in list order; both only when an entry has a payload)
//! table           per section 24 B: kind u32, CRC32C u32, offset u64, length u64
//! footer   32 B   table offset u64, section count u32, CRC32C of the table u32,
//!                 format version u32, reserved u32, magic "QVRFOOT1"
//! ```
//! Padding between sections is zero and checked, so every byte of a file is verified.
//! Lists are stored back to back in list order; deleted entries are dropped (compaction on
//! save). Files are written to a temporary name, fsynced and renamed. Loading checks the magic,
//! version, footer, table checksum, every section's bounds, size and CRC32C, and the parameters,
//! then memory-maps the IDS, CODES and RAW sections instead of copying them.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::EngineError;
use crate::index::{IndexParams, IvfPqIndex, RefineKind};
use crate::io::{AtomicFile, IoError};
use crate::list::{CodeLayout, InvertedList, RawVectors};
use crate::metric::Metric;
use crate::payload::column::PayloadColumn;
use crate::payload::fields::{FieldSpec, FieldType};
use crate::pq::ProductQuantizer;
use crate::storage::Storage;

#[cfg(target_endian = "big")]
compile_error!("the index file format is little-endian and mapped in place: big-endian hosts are not supported");

/// Magic at the start of every index file.
pub const MAGIC: &[u8; 8] = b"QUIVERIX";
/// Magic at the end of every index file.
pub const FOOTER_MAGIC: &[u8; 8] = b"QVRFOOT1";
/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
const SUPPORTED: &str = "1, 2";
/// PARAMS byte 20 (version 2): bit 0 set when codes encode the vectors, not residuals.
/// Version 1 files have zero there and residual codes.
const FLAG_NOT_RESIDUAL: u8 = 1;
const ALIGN: u64 = 64;
const HEADER_LEN: u64 = 16;
const FOOTER_LEN: u64 = 32;
const ENTRY_LEN: usize = 24;
const PARAMS_LEN: usize = 48;

/// Kinds of sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Params = 1,
    Centroids = 2,
    Codebook = 3,
    ListSizes = 4,
    Ids = 5,
    Codes = 6,
    Raw = 7,
    PayloadOffsets = 8,
    PayloadBytes = 9,
    Fields = 10,
}

impl Section {
    const ALL: [Section; 10] = [
        Section::Params,
        Section::Centroids,
        Section::Codebook,
        Section::ListSizes,
        Section::Ids,
        Section::Codes,
        Section::Raw,
        Section::PayloadOffsets,
        Section::PayloadBytes,
        Section::Fields,
    ];
    fn name(self) -> &'static str {
        match self {
            Section::Params => "PARAMS",
            Section::Centroids => "CENTROIDS",
            Section::Codebook => "CODEBOOK",
            Section::ListSizes => "LIST_SIZES",
            Section::Ids => "IDS",
            Section::Codes => "CODES",
            Section::Raw => "RAW",
            Section::PayloadOffsets => "PAYLOAD_OFFSETS",
            Section::PayloadBytes => "PAYLOAD_BYTES",
            Section::Fields => "FIELDS",
        }
    }
    fn from_kind(k: u32) -> Option<Section> {
        Section::ALL.into_iter().find(|s| *s as u32 == k)
    }
}

struct Entry {
    kind: u32,
    crc: u32,
    offset: u64,
    len: u64,
}

/// Writes sections with running offsets and checksums.
struct SectionWriter<'a> {
    out: &'a mut dyn Write,
    pos: u64,
    entries: Vec<Entry>,
    current: Option<(Section, u64, u32)>,
}

impl<'a> SectionWriter<'a> {
    fn begin(&mut self, s: Section) -> std::io::Result<()> {
        let pad = (ALIGN - self.pos % ALIGN) % ALIGN;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.pos += pad;
        self.current = Some((s, self.pos, 0));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        if let Some((_, _, crc)) = &mut self.current {
            *crc = crc32c::crc32c_append(*crc, bytes);
        }
        Ok(())
    }
    fn end(&mut self) {
        if let Some((s, start, crc)) = self.current.take() {
            self.entries.push(Entry {
                kind: s as u32,
                crc,
                offset: start,
                len: self.pos - start,
            });
        }
    }
    fn section(&mut self, s: Section, bytes: &[u8]) -> std::io::Result<()> {
        self.begin(s)?;
        self.write(bytes)?;
        self.end();
        Ok(())
    }
}

fn encode_params(index: &IvfPqIndex, total: u64) -> [u8; PARAMS_LEN] {
    let p = index.params();
    let mut b = [0u8; PARAMS_LEN];
    b[0] = p.metric.code();
    b[1] = p.refine.code();
    b[2] = index.layout().code();
    b[3] = p.pq_bits as u8;
    b[4..8].copy_from_slice(&(p.dim as u32).to_le_bytes());
    b[8..12].copy_from_slice(&(p.nlist as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(p.pq_m as u32).to_le_bytes());
    b[16..20].copy_from_slice(&(p.kmeans_iterations as u32).to_le_bytes());
    b[20] = FLAG_NOT_RESIDUAL * u8::from(!p.by_residual());
    b[24..32].copy_from_slice(&p.seed.to_le_bytes());
    b[32..40].copy_from_slice(&index.next_id().to_le_bytes());
    b[40..48].copy_from_slice(&total.to_le_bytes());
    b
}

/// Saves `index` to `path` atomically (temp file, fsync, rename), dropping deleted entries.
pub fn save(index: &IvfPqIndex, path: &Path) -> Result<(), EngineError> {
    let compacted;
    let index = if index.deleted_count() > 0 {
        let mut c = index.clone();
        c.compact();
        compacted = c;
        &compacted
    } else {
        index
    };
    let mut file = AtomicFile::create(path)?;
    let io = |e: std::io::Error| EngineError::Io(IoError::os(path, e));
    write_sections(index, file.writer()).map_err(io)?;
    file.commit()?;
    Ok(())
}

fn write_sections(index: &IvfPqIndex, out: &mut dyn Write) -> std::io::Result<()> {
    let total: u64 = index.lists().iter().map(|l| l.len() as u64).sum();
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&header)?;
    let mut w = SectionWriter {
        out,
        pos: HEADER_LEN,
        entries: Vec::new(),
        current: None,
    };
    w.section(Section::Params, &encode_params(index, total))?;
    w.section(Section::Centroids, bytemuck::cast_slice(index.centroids()))?;
    w.section(
        Section::Codebook,
        bytemuck::cast_slice(index.pq().centroids()),
    )?;
    let sizes: Vec<u64> = index.lists().iter().map(|l| l.len() as u64).collect();
    w.section(Section::ListSizes, bytemuck::cast_slice(&sizes))?;
    w.begin(Section::Ids)?;
    for l in index.lists() {
        w.write(bytemuck::cast_slice(l.ids.as_slice()))?;
    }
    w.end();
    w.begin(Section::Codes)?;
    for l in index.lists() {
        w.write(l.codes.as_slice())?;
    }
    w.end();
    if index.params().refine != RefineKind::None {
        w.begin(Section::Raw)?;
        for l in index.lists() {
            match &l.raw {
                RawVectors::None => {}
                RawVectors::F16(s) => w.write(bytemuck::cast_slice(s.as_slice()))?,
                RawVectors::F32(s) => w.write(bytemuck::cast_slice(s.as_slice()))?,
            }
        }
        w.end();
    }
    if index.has_payloads() {
        // Offsets of every entry's payload in PAYLOAD_BYTES (total + 1, from 0), then the bytes.
        w.begin(Section::PayloadOffsets)?;
        let mut at = 0u64;
        w.write(&at.to_le_bytes())?;
        for l in index.lists() {
            for i in 0..l.len() {
                at += l.payloads.get(i).len() as u64;
                w.write(&at.to_le_bytes())?;
            }
        }
        w.end();
        w.begin(Section::PayloadBytes)?;
        for l in index.lists() {
            for i in 0..l.len() {
                w.write(l.payloads.get(i))?;
            }
        }
        w.end();
    }
    if !index.field_specs().is_empty() {
        // Per field: type code u8, key length u32, key bytes.
        let mut f = Vec::new();
        for spec in index.field_specs() {
            f.push(spec.kind.code());
            f.extend_from_slice(&(spec.key.len() as u32).to_le_bytes());
            f.extend_from_slice(spec.key.as_bytes());
        }
        w.section(Section::Fields, &f)?;
    }
    let table_offset = w.pos;
    let mut table = Vec::with_capacity(w.entries.len() * ENTRY_LEN);
    for e in &w.entries {
        table.extend_from_slice(&e.kind.to_le_bytes());
        table.extend_from_slice(&e.crc.to_le_bytes());
        table.extend_from_slice(&e.offset.to_le_bytes());
        table.extend_from_slice(&e.len.to_le_bytes());
    }
    let count = w.entries.len() as u32;
    w.out.write_all(&table)?;
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer[0..8].copy_from_slice(&table_offset.to_le_bytes());
    footer[8..12].copy_from_slice(&count.to_le_bytes());
    footer[12..16].copy_from_slice(&crc32c::crc32c(&table).to_le_bytes());
    footer[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    footer[24..32].copy_from_slice(FOOTER_MAGIC);
    w.out.write_all(&footer)?;
    w.out.flush()
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Loads an index file, verifying every checksum; large sections are memory-mapped.
pub fn load(path: &Path) -> Result<IvfPqIndex, EngineError> {
    let file = File::open(path).map_err(|e| IoError::os(path, e))?;
    load_file(&file, path)
}

/// [`load`] of a file already open (`path` names it in errors): a caller that checked what
/// the open file is (a regular file inside an import folder) loads that same file, whatever
/// happens to the path meanwhile.
pub fn load_file(file: &File, path: &Path) -> Result<IvfPqIndex, EngineError> {
    let corrupt = |reason: String| EngineError::CorruptIndex {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: the map is read-only. Quiver replaces index files by rename, never in place, so
    // the mapped inode does not change under us; a file truncated by another program would
    // fault, which is the documented contract of memory-mapped indexes.
    let map = unsafe { Mmap::map(file) }.map_err(|e| IoError::os(path, e))?;
    let map = Arc::new(map);
    let b: &[u8] = &map;
    let len = b.len() as u64;
    if len < 8 || &b[..8] != MAGIC {
        return Err(corrupt("not a Quiver index file (bad magic)".into()));
    }
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt(format!("truncated: {len} bytes")));
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION && version != 1 {
        return Err(EngineError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
            supported: SUPPORTED,
        });
    }
    let (expected, actual) = (u32_at(b, 12), crc32c::crc32c(&b[..12]));
    if !crate::checksum::accepts(actual, expected) {
        return Err(EngineError::ChecksumMismatch {
            path: path.to_path_buf(),
            section: "HEADER",
            expected,
            actual,
        });
    }
    let footer = &b[(len - FOOTER_LEN) as usize..];
    if &footer[24..32] != FOOTER_MAGIC {
        return Err(corrupt("truncated or damaged: footer missing".into()));
    }
    if u32_at(footer, 16) != version || u32_at(footer, 20) != 0 {
        return Err(corrupt("damaged footer".into()));
    }
    let table_offset = u64_at(footer, 0);
    let count = u32_at(footer, 8) as u64;
    let table_end = table_offset
        .checked_add(count * ENTRY_LEN as u64)
        .filter(|&e| e == len - FOOTER_LEN);
    if table_end.is_none() || count > 64 {
        return Err(corrupt("section table out of bounds".into()));
    }
    let table = &b[table_offset as usize..(len - FOOTER_LEN) as usize];
    let (expected, actual) = (u32_at(footer, 12), crc32c::crc32c(table));
    if !crate::checksum::accepts(actual, expected) {
        return Err(EngineError::ChecksumMismatch {
            path: path.to_path_buf(),
            section: "TABLE",
            expected,
            actual,
        });
    }
    let mut sections: [Option<(u64, u64)>; 11] = [None; 11];
    let mut covered = HEADER_LEN;
    for e in table.chunks_exact(ENTRY_LEN) {
        let (kind, crc, offset, slen) = (u32_at(e, 0), u32_at(e, 4), u64_at(e, 8), u64_at(e, 16));
        let s = Section::from_kind(kind)
            .ok_or_else(|| corrupt(format!("unknown section kind {kind}")))?;
        if offset
            .checked_add(slen)
            .is_none_or(|end| end > table_offset)
            || offset < HEADER_LEN
        {
            return Err(corrupt(format!("section {} out of bounds", s.name())));
        }
        if offset < covered || b[covered as usize..offset as usize].iter().any(|&x| x != 0) {
            return Err(corrupt(format!(
                "damaged padding or overlapping section before {}",
                s.name()
            )));
        }
        covered = offset + slen;
        let bytes = &b[offset as usize..(offset + slen) as usize];
        let actual = crc32c::crc32c(bytes);
        if !crate::checksum::accepts(actual, crc) {
            return Err(EngineError::ChecksumMismatch {
                path: path.to_path_buf(),
                section: s.name(),
                expected: crc,
                actual,
            });
        }
        if sections[s as usize].replace((offset, slen)).is_some() {
            return Err(corrupt(format!("section {} appears twice", s.name())));
        }
    }
    if covered != table_offset {
        return Err(corrupt("unaccounted bytes before the section table".into()));
    }
    let get = |s: Section| {
        sections[s as usize].ok_or_else(|| corrupt(format!("section {} missing", s.name())))
    };
    let bytes_of = |s: Section| -> Result<&[u8], EngineError> {
        let (o, l) = get(s)?;
        Ok(&b[o as usize..(o + l) as usize])
    };

    // Parameters.
    let pb = bytes_of(Section::Params)?;
    if pb.len() != PARAMS_LEN {
        return Err(corrupt(format!(
            "PARAMS section has {} bytes, expected {PARAMS_LEN}",
            pb.len()
        )));
    }
    let metric = Metric::from_code(pb[0])
        .ok_or_else(|| corrupt(format!("unknown metric code {}", pb[0])))?;
    let refine = RefineKind::from_code(pb[1])
        .ok_or_else(|| corrupt(format!("unknown refine code {}", pb[1])))?;
    let layout = CodeLayout::from_code(pb[2])
        .ok_or_else(|| corrupt(format!("unknown code layout {}", pb[2])))?;
    let params = IndexParams {
        metric,
        dim: u32_at(pb, 4) as usize,
        nlist: u32_at(pb, 8) as usize,
        pq_m: u32_at(pb, 12) as usize,
        pq_bits: pb[3] as u32,
        refine,
        seed: u64_at(pb, 24),
        kmeans_iterations: u32_at(pb, 16) as usize,
        residual: Some(pb[20] & FLAG_NOT_RESIDUAL == 0),
    };
    if pb[20] & !FLAG_NOT_RESIDUAL != 0 || (version == 1 && pb[20] != 0) || pb[21..24] != [0; 3] {
        return Err(corrupt(format!("unknown parameter flags {:#04x}", pb[20])));
    }
    params
        .validate()
        .map_err(|e| corrupt(format!("invalid parameters: {e}")))?;
    if layout != CodeLayout::for_bits(params.pq_bits) {
        return Err(corrupt(format!(
            "code layout {} does not match {}-bit codes",
            pb[2], params.pq_bits
        )));
    }
    let next_id = u64_at(pb, 32);
    let total = u64_at(pb, 40);
    let (dim, nlist) = (params.dim, params.nlist);
    let dsub = dim / params.pq_m;
    let ksub = 1usize << params.pq_bits;
    let code_size = (params.pq_m * params.pq_bits as usize).div_ceil(8);

    let expect_len = |s: Section, want: u64| -> Result<(u64, u64), EngineError> {
        let (o, l) = get(s)?;
        if l != want {
            return Err(corrupt(format!(
                "section {} has {l} bytes, expected {want}",
                s.name()
            )));
        }
        Ok((o, l))
    };
    let f32s = |s: Section, count: usize| -> Result<Vec<f32>, EngineError> {
        let (o, l) = expect_len(s, count as u64 * 4)?;
        let bytes = &b[o as usize..(o + l) as usize];
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(corrupt(format!(
                "section {} holds non-finite values",
                s.name()
            )));
        }
        Ok(v)
    };
    let centroids = f32s(Section::Centroids, nlist * dim)?;
    let codebook = f32s(Section::Codebook, params.pq_m * ksub * dsub)?;
    let (so, _) = expect_len(Section::ListSizes, nlist as u64 * 8)?;
    let sizes: Vec<u64> = (0..nlist).map(|i| u64_at(b, so as usize + i * 8)).collect();
    let sum = sizes.iter().try_fold(0u64, |a, &s| a.checked_add(s));
    if sum != Some(total) {
        return Err(corrupt(format!(
            "list sizes add up to {sum:?}, the header says {total} vectors"
        )));
    }
    let total_bytes = |per: u64| {
        total
            .checked_mul(per)
            .ok_or_else(|| corrupt("vector count overflows".into()))
    };
    let (ids_off, _) = expect_len(Section::Ids, total_bytes(8)?)?;
    let codes_len: u64 = sizes
        .iter()
        .map(|&n| layout.bytes(n as usize, params.pq_m, code_size) as u64)
        .sum();
    let (codes_off, _) = expect_len(Section::Codes, codes_len)?;
    let raw_elem = refine.bytes_per_component() as u64;
    let raw_off = if refine != RefineKind::None {
        Some(expect_len(Section::Raw, total_bytes(dim as u64 * raw_elem)?)?.0)
    } else {
        if sections[Section::Raw as usize].is_some() {
            return Err(corrupt(
                "RAW section present in an index without raw vectors".into(),
            ));
        }
        None
    };

    let payloads = match (
        sections[Section::PayloadOffsets as usize],
        sections[Section::PayloadBytes as usize],
    ) {
        (None, None) => None,
        (Some(_), Some((bo, bl))) => {
            let (oo, _) = expect_len(Section::PayloadOffsets, total_bytes(8)? + 8)?;
            let offsets: &[u8] = &b[oo as usize..(oo + (total + 1) * 8) as usize];
            let at = |i: usize| u64_at(offsets, i * 8);
            let mut prev = 0;
            for i in 0..=total as usize {
                let o = at(i);
                if o < prev || (i == 0 && o != 0) || o > bl {
                    return Err(corrupt("payload offsets out of order or bounds".into()));
                }
                prev = o;
            }
            if prev != bl {
                return Err(corrupt(
                    "payload offsets do not end at the bytes' end".into(),
                ));
            }
            Some((oo, bo))
        }
        _ => return Err(corrupt("one of the two payload sections is missing".into())),
    };

    let mut lists = Vec::with_capacity(nlist);
    let mut start = 0u64;
    let mut code_start = 0usize;
    let misaligned = || corrupt("misaligned section".into());
    for &n in &sizes {
        let (s, nn) = (start as usize, n as usize);
        let ids = Storage::<u64>::mapped(map.clone(), ids_off as usize + s * 8, nn)
            .ok_or_else(misaligned)?;
        let code_bytes = layout.bytes(nn, params.pq_m, code_size);
        let codes = Storage::<u8>::mapped(map.clone(), codes_off as usize + code_start, code_bytes)
            .ok_or_else(misaligned)?;
        code_start += code_bytes;
        let raw = match (refine, raw_off) {
            (RefineKind::F16, Some(o)) => RawVectors::F16(
                Storage::mapped(map.clone(), o as usize + s * dim * 2, nn * dim)
                    .ok_or_else(misaligned)?,
            ),
            (RefineKind::F32, Some(o)) => RawVectors::F32(
                Storage::mapped(map.clone(), o as usize + s * dim * 4, nn * dim)
                    .ok_or_else(misaligned)?,
            ),
            _ => RawVectors::None,
        };
        let mut list = InvertedList::from_parts(ids, codes, raw);
        if let Some((oo, bo)) = payloads {
            let offsets = Storage::<u64>::mapped(map.clone(), oo as usize + s * 8, nn + 1)
                .ok_or_else(misaligned)?;
            let (first, last) = (offsets.as_slice()[0], offsets.as_slice()[nn]);
            let (Some(at), Some(len)) = (bo.checked_add(first), last.checked_sub(first)) else {
                return Err(corrupt("inconsistent payload offsets".into()));
            };
            let bytes = Storage::<u8>::mapped(map.clone(), at as usize, len as usize)
                .ok_or_else(misaligned)?;
            list.payloads = PayloadColumn::from_parts(offsets, bytes)
                .ok_or_else(|| corrupt("inconsistent payload offsets".into()))?;
        }
        lists.push(list);
        start += n;
    }
    let fields = match sections[Section::Fields as usize] {
        None => Vec::new(),
        Some(_) => parse_fields(bytes_of(Section::Fields)?).map_err(corrupt)?,
    };
    // Codes must index existing sub-centroids (always true for 8-bit; checked for future widths).
    let pq = ProductQuantizer::from_parts(dim, params.pq_m, params.pq_bits, codebook);
    let mut index = IvfPqIndex::from_parts(params, centroids, pq, lists);
    index.set_field_specs(fields);
    if index.len() as u64 != total {
        return Err(corrupt(format!(
            "{} distinct ids for {total} vectors: ids repeat",
            index.len()
        )));
    }
    // Results carry ids as i64 (-1 pads), so no stored id may be above i64::MAX.
    if index.next_id() > i64::MAX as u64 + 1 {
        return Err(corrupt(format!(
            "id {} is above the largest allowed, 2^63 - 1",
            index.next_id() - 1
        )));
    }
    if index.next_id() > next_id {
        return Err(corrupt(format!(
            "next id {next_id} is not above the largest id {}",
            index.next_id() - 1
        )));
    }
    Ok(index)
}

/// The FIELDS section: per field, type code u8, key length u32, key bytes.
fn parse_fields(mut b: &[u8]) -> Result<Vec<FieldSpec>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 5 {
            return Err("FIELDS section truncated".into());
        }
        let kind =
            FieldType::from_code(b[0]).ok_or_else(|| format!("unknown field type {}", b[0]))?;
        let n = u32_at(b, 1) as usize;
        let key = b
            .get(5..5 + n)
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| "FIELDS section: bad key".to_string())?;
        crate::payload::path::KeyPath::parse(key)?;
        out.push(FieldSpec {
            key: key.to_string(),
            kind,
        });
        b = &b[5 + n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, SearchParams};
    use crate::progress::NoProgress;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn small_index(refine: RefineKind, metric: Metric) -> (IvfPqIndex, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let dim = 16;
        let x: Vec<f32> = (0..600 * dim)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut p = IndexParams::new(metric, dim, 8, 4);
        p.refine = refine;
        let mut index = IvfPqIndex::train(p, &x, &NoProgress).unwrap();
        index.add(&x, None, &NoProgress).unwrap();
        (index, x)
    }

    fn search(index: IvfPqIndex, q: &[f32], rf: usize) -> crate::backend::Neighbors {
        let b = CpuBackend;
        let p = b.prepare(Arc::new(index)).unwrap();
        b.search(
            &p,
            q,
            &SearchParams {
                k: 5,
                nprobe: 3,
                refine_factor: rf,
            },
        )
        .unwrap()
    }

    /// Found by the `index_file` fuzz target: an index file holding an id above i64::MAX
    /// overflowed the next-id counter while loading (a panic in checked builds). Such ids are
    /// refused (results carry ids as i64), and the counter saturates.
    #[test]
    fn ids_above_i64_max_are_refused_at_load() {
        let (index, _) = small_index(RefineKind::None, Metric::L2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.qvr");
        save(&index, &path).unwrap();
        // Rewrite the first stored id to u64::MAX and fix the IDS section's checksum.
        let mut b = std::fs::read(&path).unwrap();
        let len = b.len();
        let footer = &b[len - FOOTER_LEN as usize..];
        let (table_off, count) = (u64_at(footer, 0) as usize, u32_at(footer, 8) as usize);
        let entry = (0..count)
            .map(|i| table_off + i * ENTRY_LEN)
            .find(|&e| u32_at(&b, e) == Section::Ids as u32)
            .unwrap();
        let (off, slen) = (
            u64_at(&b, entry + 8) as usize,
            u64_at(&b, entry + 16) as usize,
        );
        b[off..off + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&b[off..off + slen]);
        b[entry + 4..entry + 8].copy_from_slice(&crc.to_le_bytes());
        let table_crc = crc32c::crc32c(&b[table_off..len - FOOTER_LEN as usize]);
        b[len - FOOTER_LEN as usize + 12..len - FOOTER_LEN as usize + 16]
            .copy_from_slice(&table_crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("above the largest allowed"), "{e}");
    }

    /// An import checks the open file, then loads it: replacing the path in between (a
    /// symlink out of the import folder, another file) changes nothing.
    #[test]
    fn load_file_reads_the_open_file_not_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.qvr");
        let (index, _) = small_index(RefineKind::None, Metric::L2);
        save(&index, &path).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let loaded = load_file(&file, &path).unwrap();
        assert_eq!(loaded.len(), index.len());
        assert!(load(&path).is_err());
    }

    #[test]
    fn round_trip_gives_identical_results() {
        let dir = tempfile::tempdir().unwrap();
        for (refine, metric, rf) in [
            (RefineKind::None, Metric::L2, 1),
            (RefineKind::F16, Metric::InnerProduct, 4),
            (RefineKind::F32, Metric::Cosine, 2),
        ] {
            let (index, x) = small_index(refine, metric);
            let path = dir.path().join("i.qvr");
            save(&index, &path).unwrap();
            let loaded = load(&path).unwrap();
            assert_eq!(loaded.params(), index.params());
            assert_eq!(loaded.len(), index.len());
            let q = &x[..20 * 16];
            assert_eq!(search(index, q, rf), search(loaded, q, rf));
        }
        // 4-bit fast-scan, with deletions compacted on save.
        for metric in [Metric::L2, Metric::InnerProduct] {
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let x: Vec<f32> = (0..600 * 16).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut p = IndexParams::new(metric, 16, 8, 8);
            p.pq_bits = 4;
            p.refine = RefineKind::F16;
            let mut index = IvfPqIndex::train(p, &x, &NoProgress).unwrap();
            index.add(&x, None, &NoProgress).unwrap();
            index.delete(&[3, 4, 5]);
            let path = dir.path().join("i.qvr");
            save(&index, &path).unwrap();
            let loaded = load(&path).unwrap();
            assert_eq!(loaded.params(), index.params());
            assert_eq!(loaded.len(), index.len());
            let q = &x[..20 * 16];
            assert_eq!(search(index, q, 4), search(loaded, q, 4));
        }
    }

    #[test]
    fn deletes_are_compacted_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = small_index(RefineKind::F16, Metric::L2);
        assert_eq!(index.delete(&[0, 5, 7, 100_000]), 3);
        let path = dir.path().join("i.qvr");
        save(&index, &path).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.len(), 597);
        assert_eq!(loaded.deleted_count(), 0);
        assert!(!loaded.contains(5) && loaded.contains(6));
    }

    /// An index whose every third point carries a payload.
    fn with_payloads(refine: RefineKind) -> IvfPqIndex {
        let (index, x) = small_index(refine, Metric::L2);
        let mut out = index.empty_like();
        let payloads: Vec<Vec<u8>> = (0..600)
            .map(|i| {
                if i % 3 == 0 {
                    crate::payload::encode_text(&format!("{{\"i\":{i},\"s\":\"p{}\"}}", i % 7))
                        .unwrap()
                } else {
                    Vec::new()
                }
            })
            .collect();
        out.add_with_payloads(&x, None, &payloads, &NoProgress)
            .unwrap();
        out
    }

    #[test]
    fn payloads_round_trip_with_deletes_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = with_payloads(RefineKind::F16);
        index.delete(&[0, 1, 2, 3, 300]);
        let path = dir.path().join("p.qvr");
        save(&index, &path).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.len(), 595);
        assert_eq!(loaded.field_specs(), index.field_specs());
        for id in 0..600u64 {
            assert_eq!(loaded.payload(id), index.payload(id), "id {id}");
        }
        assert_eq!(loaded.payload(6), Some(&b"{\"i\":6,\"s\":\"p6\"}"[..]));
        assert_eq!(loaded.payload(7), Some(&b""[..]));
        // Mapped payloads stay readable after a write copies a list, and after a re-save.
        let mut again = loaded.clone();
        again.set_payload(7, b"{\"x\":1}");
        assert_eq!(again.payload(7), Some(&b"{\"x\":1}"[..]));
        assert_eq!(again.payload(6), loaded.payload(6));
        let path2 = dir.path().join("p2.qvr");
        save(&again, &path2).unwrap();
        let re = load(&path2).unwrap();
        for id in 4..600u64 {
            assert_eq!(re.payload(id), again.payload(id), "id {id}");
        }
        // No payloads, no payload sections.
        let (plain, _) = small_index(RefineKind::None, Metric::L2);
        save(&plain, &path).unwrap();
        assert!(!load(&path).unwrap().has_payloads());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = with_payloads(RefineKind::F16);
        let path = dir.path().join("i.qvr");
        save(&index, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.qvr");
        // Every byte of the header, params, table and footer, and a stride through the rest.
        let n = good.len();
        let positions: Vec<usize> = (0..200)
            .chain((200..n - 400).step_by(97))
            .chain(n - 400..n)
            .collect();
        for pos in positions {
            let mut b = good.clone();
            b[pos] ^= 0x40;
            std::fs::write(&bad, &b).unwrap();
            assert!(
                load(&bad).is_err(),
                "flipped byte at {pos} of {n} was accepted"
            );
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = small_index(RefineKind::None, Metric::L2);
        let path = dir.path().join("i.qvr");
        save(&index, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.qvr");
        for cut in [0, 7, 16, 100, good.len() / 2, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            let e = load(&bad).unwrap_err();
            assert!(
                matches!(e, EngineError::CorruptIndex { .. }),
                "cut at {cut}: {e}"
            );
        }
        std::fs::write(
            &bad,
            b"\x93NUMPY this is not an index at all, just some bytes",
        )
        .unwrap();
        assert!(load(&bad)
            .unwrap_err()
            .to_string()
            .contains("not a Quiver index"));
        let mut v3 = good.clone();
        v3[8] = 3;
        std::fs::write(&bad, &v3).unwrap();
        assert!(matches!(
            load(&bad),
            Err(EngineError::UnsupportedVersion { version: 3, .. })
        ));
        assert!(matches!(
            load(&dir.path().join("missing.qvr")),
            Err(EngineError::Io(_))
        ));
    }
}
