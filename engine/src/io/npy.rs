//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): a magic string, a
//! version, a header length and a Python-literal dict header
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (rows, dim), }` padded
//! with spaces and ending in `'\n'`, then the raw C-order data.
//!
//! Accepted: 2-D, C order, little-endian `<f4`, `<f2`, `|u1`, `<i4`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use half::slice::HalfFloatSliceExt;

use super::file::{Layout, VectorFile};
use super::{check_dim, ElementType, IoError};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Header size reserved by the writer (magic + version + length + dict),
/// a multiple of 64 as the format asks.
pub(super) const WRITE_HEADER_BYTES: usize = 128;

/// Refuse header dicts larger than this (garbage protection).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// Nesting limit of the literal parser (garbage protection).
const MAX_DEPTH: usize = 16;

/// The `descr` string written for an element type.
pub(super) fn descr(element: ElementType) -> &'static str {
    match element {
        ElementType::F32 => "<f4",
        ElementType::F16 => "<f2",
        ElementType::U8 => "|u1",
        ElementType::I32 => "<i4",
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::BadNpyHeader {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn parse_descr(path: &Path, d: &str) -> Result<ElementType, IoError> {
    match d {
        "<f4" => Ok(ElementType::F32),
        "<f2" => Ok(ElementType::F16),
        // Byte order is meaningless for one byte.
        "|u1" | "<u1" | ">u1" | "=u1" | "u1" => Ok(ElementType::U8),
        "<i4" => Ok(ElementType::I32),
        _ => {
            let reason = if d.starts_with('>') {
                "big-endian data is not supported; convert with arr.astype(arr.dtype.newbyteorder('<'))"
            } else {
                "supported are little-endian <f4 (float32), <f2 (float16), |u1 (uint8) and <i4 (int32)"
            };
            Err(IoError::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: d.to_string(),
                reason: reason.to_string(),
            })
        }
    }
}

/// What the header dict says.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NpyHeader {
    pub descr: PyValue,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
}

/// Parses the `.npy` preamble of a file of `file_len` bytes and checks that the
/// data section has exactly the size the shape says.
pub(super) fn probe(path: &Path, file: &File, file_len: u64) -> Result<Layout, IoError> {
    if file_len == 0 {
        return Err(IoError::Empty {
            path: path.to_path_buf(),
        });
    }
    let os = |e| IoError::os(path, e);
    let mut pre = [0u8; 12];
    let pre_len = (file_len.min(12)) as usize;
    file.read_exact_at(&mut pre[..pre_len], 0).map_err(os)?;
    let pre = &pre[..pre_len];
    if pre.len() < 6 || &pre[..6] != MAGIC {
        return Err(bad(path, "missing \\x93NUMPY magic (not a .npy file)"));
    }
    if pre.len() < 10 {
        return Err(bad(path, "file ends inside the preamble"));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, dict_offset) = match major {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        2 | 3 if pre.len() == 12 => (
            u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])),
            12u64,
        ),
        2 | 3 => return Err(bad(path, "file ends inside the header length")),
        _ => {
            return Err(bad(
                path,
                format!("unsupported format version {major}.{minor}"),
            ))
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(bad(
            path,
            format!("header length {header_len} is implausibly large"),
        ));
    }
    let data_offset = dict_offset + header_len;
    if data_offset > file_len {
        return Err(bad(
            path,
            format!("header length {header_len} runs past the end of the {file_len}-byte file"),
        ));
    }
    let mut raw = vec![0u8; header_len as usize];
    file.read_exact_at(&mut raw, dict_offset).map_err(os)?;
    let text =
        std::str::from_utf8(&raw).map_err(|_| bad(path, "header is not ASCII/UTF-8 text"))?;
    let header = parse_header(text).map_err(|reason| bad(path, reason))?;

    let element = match &header.descr {
        PyValue::Str(s) => parse_descr(path, s)?,
        other => {
            return Err(IoError::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: other.to_string(),
                reason: "structured dtypes are not supported".to_string(),
            })
        }
    };
    if header.fortran_order {
        return Err(IoError::FortranOrder {
            path: path.to_path_buf(),
        });
    }
    let &[rows, dim] = header.shape.as_slice() else {
        return Err(IoError::NotTwoDimensional {
            path: path.to_path_buf(),
            shape: header.shape.clone(),
        });
    };
    let dim = check_dim(path, i64::try_from(dim).unwrap_or(i64::MAX))?;
    let record_bytes = dim * element.size_bytes();
    let expected = rows
        .checked_mul(record_bytes as u64)
        .ok_or_else(|| bad(path, format!("shape ({rows}, {dim}) is too large")))?;
    let got = file_len - data_offset;
    if got < expected {
        let rb = record_bytes as u64;
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            record: got / rb,
            record_bytes: rb,
            present: got % rb,
        });
    }
    if got > expected {
        return Err(IoError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            got,
        });
    }
    if rows == 0 {
        return Err(IoError::Empty {
            path: path.to_path_buf(),
        });
    }
    let len = usize::try_from(rows)
        .map_err(|_| os(std::io::Error::other("too many rows for this platform")))?;
    Ok(Layout {
        element,
        dim,
        len,
        data_offset,
        record_bytes,
    })
}

/// Parses the header dict text: keys `descr`, `fortran_order`, `shape` in any
/// order, arbitrary spacing, trailing commas; nothing but whitespace after it.
pub(super) fn parse_header(text: &str) -> Result<NpyHeader, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(format!(
            "unexpected text after the header dict at byte {}",
            p.pos
        ));
    }
    let PyValue::Dict(items) = v else {
        return Err("header is not a dict".to_string());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in items {
        let PyValue::Str(k) = k else {
            return Err(format!("non-string key {k}"));
        };
        let slot_taken = match k.as_str() {
            "descr" => descr.replace(v).is_some(),
            "fortran_order" => match v {
                PyValue::Bool(b) => fortran.replace(b).is_some(),
                other => {
                    return Err(format!(
                        "'fortran_order' is {other}, expected True or False"
                    ))
                }
            },
            "shape" => match v {
                PyValue::Tuple(items) | PyValue::List(items) => {
                    let dims = items
                        .iter()
                        .map(|d| match d {
                            PyValue::Int(i) => u64::try_from(*i)
                                .map_err(|_| format!("shape entry {i} is negative or too large")),
                            other => Err(format!("shape entry {other} is not an integer")),
                        })
                        .collect::<Result<Vec<u64>, String>>()?;
                    shape.replace(dims).is_some()
                }
                other => return Err(format!("'shape' is {other}, expected a tuple")),
            },
            _ => return Err(format!("unexpected key '{k}'")),
        };
        if slot_taken {
            return Err(format!("duplicate key '{k}'"));
        }
    }
    Ok(NpyHeader {
        descr: descr.ok_or("missing 'descr' key")?,
        fortran_order: fortran.ok_or("missing 'fortran_order' key")?,
        shape: shape.ok_or("missing 'shape' key")?,
    })
}

/// The subset of Python literals a header may contain.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PyValue {
    Str(String),
    Bool(bool),
    Int(i128),
    None,
    Tuple(Vec<PyValue>),
    List(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

impl std::fmt::Display for PyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn seq(f: &mut std::fmt::Formatter<'_>, items: &[PyValue]) -> std::fmt::Result {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v}")?;
            }
            Ok(())
        }
        match self {
            PyValue::Str(s) => write!(f, "'{s}'"),
            PyValue::Bool(true) => f.write_str("True"),
            PyValue::Bool(false) => f.write_str("False"),
            PyValue::Int(i) => write!(f, "{i}"),
            PyValue::None => f.write_str("None"),
            PyValue::Tuple(v) => {
                f.write_str("(")?;
                seq(f, v)?;
                f.write_str(if v.len() == 1 { ",)" } else { ")" })
            }
            PyValue::List(v) => {
                f.write_str("[")?;
                seq(f, v)?;
                f.write_str("]")
            }
            PyValue::Dict(kv) => {
                f.write_str("{")?;
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        match self.peek() {
            Some(c) => Err(format!(
                "{what} at byte {} (found {:?})",
                self.pos, c as char
            )),
            None => Err(format!("{what} at end of header")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyValue, String> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(PyValue::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return self.err("expected ':'");
                    }
                    self.pos += 1;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                let mut saw_comma = false;
                loop {
                    self.ws();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        // `(x)` without a comma is just x in Python.
                        return Ok(match (open, items.len(), saw_comma) {
                            (b'(', 1, false) => items.pop().unwrap_or(PyValue::None),
                            (b'(', _, _) => PyValue::Tuple(items),
                            _ => PyValue::List(items),
                        });
                    }
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            saw_comma = true;
                        }
                        Some(c) if c == close => {}
                        _ => return self.err("expected ',' or closing bracket"),
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => return self.err("unterminated string"),
                        Some(c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            match self.peek() {
                                Some(c) => out.push(c),
                                None => return self.err("unterminated string"),
                            }
                            self.pos += 1;
                        }
                        Some(c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
                String::from_utf8(out)
                    .map(PyValue::Str)
                    .map_err(|_| "string is not UTF-8".to_string())
            }
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => {
                let start = self.pos;
                self.pos += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let n = digits
                    .parse::<i128>()
                    .map_err(|_| format!("bad integer {digits:?} at byte {start}"))?;
                // Python 2 long suffix, as old numpy wrote: (10L, 128L).
                if matches!(self.peek(), Some(b'L' | b'l')) {
                    self.pos += 1;
                }
                Ok(PyValue::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(PyValue::Bool(true)),
                    b"False" => Ok(PyValue::Bool(false)),
                    b"None" => Ok(PyValue::None),
                    w => Err(format!(
                        "unexpected word {:?} at byte {start}",
                        String::from_utf8_lossy(w)
                    )),
                }
            }
            _ => self.err("expected a value"),
        }
    }
}

/// The full preamble (exactly [`WRITE_HEADER_BYTES`] bytes, version 1.0) for
/// a `rows` x `dim` array of `element`.
pub(super) fn header_bytes(
    path: &Path,
    element: ElementType,
    rows: u64,
    dim: usize,
) -> Result<Vec<u8>, IoError> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}",
        descr(element)
    );
    let dict_len = WRITE_HEADER_BYTES - 10;
    if dict.len() + 1 > dict_len {
        return Err(bad(
            path,
            format!("header for shape ({rows}, {dim}) does not fit"),
        ));
    }
    let mut out = Vec::with_capacity(WRITE_HEADER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(WRITE_HEADER_BYTES - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

pub(super) fn read_f32(
    vf: &VectorFile,
    start: usize,
    count: usize,
    out: &mut Vec<f32>,
) -> Result<(), IoError> {
    let (offset, nbytes) = vf.byte_span(start, count)?;
    let old = out.len();
    let n = count * vf.layout.dim;
    match vf.layout.element {
        ElementType::F32 => {
            // Read straight into the output.
            out.resize(old + n, 0.0);
            let dst = &mut out[old..];
            vf.read_exact_at(bytemuck::cast_slice_mut(dst), offset)?;
            #[cfg(target_endian = "big")]
            for v in dst.iter_mut() {
                *v = f32::from_bits(u32::from_le(v.to_bits()));
            }
        }
        ElementType::F16 => {
            let mut buf = vec![half::f16::ZERO; n];
            vf.read_exact_at(bytemuck::cast_slice_mut(&mut buf), offset)?;
            #[cfg(target_endian = "big")]
            for v in buf.iter_mut() {
                *v = half::f16::from_bits(u16::from_le(v.to_bits()));
            }
            out.resize(old + n, 0.0);
            buf.convert_to_f32_slice(&mut out[old..]);
        }
        ElementType::U8 => {
            let mut buf = vec![0u8; nbytes];
            vf.read_exact_at(&mut buf, offset)?;
            out.extend(buf.iter().map(|&b| f32::from(b)));
        }
        ElementType::I32 => {
            let mut buf = vec![0i32; n];
            vf.read_exact_at(bytemuck::cast_slice_mut(&mut buf), offset)?;
            out.extend(buf.iter().map(|&v| i32::from_le(v) as f32));
        }
    }
    Ok(())
}

/// `<i4` only (the caller checked the element type).
pub(super) fn read_i32(
    vf: &VectorFile,
    start: usize,
    count: usize,
    out: &mut Vec<i32>,
) -> Result<(), IoError> {
    let (offset, _) = vf.byte_span(start, count)?;
    let old = out.len();
    out.resize(old + count * vf.layout.dim, 0);
    let dst = &mut out[old..];
    vf.read_exact_at(bytemuck::cast_slice_mut(dst), offset)?;
    #[cfg(target_endian = "big")]
    for v in dst.iter_mut() {
        *v = i32::from_le(*v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use super::{parse_header, PyValue};
    use proptest::prelude::*;
    use std::path::Path;

    /// A hand-made .npy file: version `major`, header dict `dict` (padded to
    /// a multiple of 64 and '\n'-terminated), then `data`.
    fn raw_npy(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let pre = if major == 1 { 10 } else { 12 };
        let mut h = dict.to_string();
        while !(pre + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY".to_vec();
        v.extend_from_slice(&[major, 0]);
        if major == 1 {
            v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        } else {
            v.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn open_err(path: &Path, bytes: &[u8]) -> IoError {
        std::fs::write(path, bytes).unwrap();
        let e = VectorFile::open(path).unwrap_err();
        assert_names(&e, path);
        e
    }

    #[test]
    fn header_parser_is_robust() {
        let want = |shape: Vec<u64>| super::NpyHeader {
            descr: PyValue::Str("<f4".into()),
            fortran_order: false,
            shape,
        };
        for text in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
            "{'shape':(3,4),'fortran_order':False,'descr':'<f4'}",
            "  { \"descr\" : \"<f4\" ,\n 'fortran_order' : False , 'shape' : ( 3 , 4 , ) , }  \n",
            "{'fortran_order': False, 'descr': '<f4', 'shape': (3L, 4L)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [3, 4]}",
        ] {
            assert_eq!(parse_header(text), Ok(want(vec![3, 4])), "{text}");
        }
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }"),
            Ok(want(vec![7]))
        );
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (), }"),
            Ok(want(vec![]))
        );
        for bad in [
            "",
            "{",
            "garbage",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (3, 4)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, -4)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)} x",
            "{'descr': '<f4' 'fortran_order': False, 'shape': (3, 4)}",
            "{'descr': '<f4, 'fortran_order': False, 'shape': (3, 4)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 99999999999999999999999999999999999999999)}",
            &"(".repeat(100_000),
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trip_every_element_type() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 5;
        let base = synth_f32(dim * 9, 2);
        let cases = [
            (ElementType::F32, base.clone()),
            (
                ElementType::F16,
                base.iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect(),
            ),
            (
                ElementType::U8,
                base.iter().map(|&v| ((v + 8.0) * 15.9).floor()).collect(),
            ),
            (
                ElementType::I32,
                base.iter()
                    .map(|&v| (v * 1e6).round())
                    .collect::<Vec<f32>>(),
            ),
        ];
        for (el, data) in cases {
            let p = dir.path().join(format!("x_{el}.npy"));
            write_f32(&p, dim, el, &data).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len(), 128 + data.len() * el.size_bytes());
            assert_eq!(bytes[127], b'\n');
            let f = VectorFile::open(&p).unwrap();
            assert_eq!(
                (f.format(), f.element_type(), f.dim(), f.len()),
                (FileFormat::Npy, el, dim, 9)
            );
            assert_eq!(read_all_f32(&p).unwrap(), (dim, data.clone()), "{el}");
            if el == ElementType::I32 {
                let ints: Vec<i32> = data.iter().map(|&v| v as i32).collect();
                assert_eq!(read_all_i32(&p).unwrap(), (dim, ints.clone()));
                let p2 = dir.path().join("ints.npy");
                write_i32(&p2, dim, &ints).unwrap();
                assert_eq!(std::fs::read(&p2).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn header_is_numpy_compatible() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.npy");
        write_f32(&p, 2, ElementType::F32, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 118);
        let text = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"),
            "{text}"
        );
        assert!(text.ends_with(" \n"));
    }

    #[test]
    fn reads_hand_made_v1_v2_v3() {
        let dir = tempfile::tempdir().unwrap();
        let data = [1.5f32, -2.0, 3.25, 4.0, 5.0, 6.0];
        for major in [1u8, 2, 3] {
            let p = dir.path().join(format!("v{major}.npy"));
            let dict = "{'shape': (2, 3), 'descr': '<f4', 'fortran_order': False,}";
            std::fs::write(&p, raw_npy(major, dict, &f32_bytes(&data))).unwrap();
            assert_eq!(read_all_f32(&p).unwrap(), (3, data.to_vec()));
        }
        let p = dir.path().join("u.npy");
        std::fs::write(
            &p,
            raw_npy(
                1,
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3)}",
                &[0, 7, 255],
            ),
        )
        .unwrap();
        assert_eq!(read_all_f32(&p).unwrap(), (3, vec![0.0, 7.0, 255.0]));
    }

    #[test]
    fn fortran_order_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        let e = open_err(
            &p,
            &raw_npy(
                1,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                &[0; 24],
            ),
        );
        assert!(matches!(e, IoError::FortranOrder { .. }), "{e}");
        assert!(e.to_string().contains("Fortran"), "{e}");
    }

    #[test]
    fn big_endian_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.npy");
        let e = open_err(
            &p,
            &raw_npy(
                1,
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                &[0; 24],
            ),
        );
        assert!(
            matches!(&e, IoError::UnsupportedDtype { dtype, .. } if dtype == ">f4"),
            "{e}"
        );
        assert!(e.to_string().contains("big-endian"), "{e}");
    }

    #[test]
    fn unsupported_dtypes_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npy");
        for d in ["<f8", "<i8", "<u2", "|b1", "=f4"] {
            let e = open_err(
                &p,
                &raw_npy(
                    1,
                    &format!("{{'descr': '{d}', 'fortran_order': False, 'shape': (1, 1), }}"),
                    &[0; 8],
                ),
            );
            assert!(
                matches!(&e, IoError::UnsupportedDtype { dtype, .. } if dtype == d),
                "{e}"
            );
            assert!(e.to_string().contains(d), "{e}");
        }
        let e = open_err(
            &p,
            &raw_npy(
                1,
                "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1, 1), }",
                &[0; 4],
            ),
        );
        assert!(matches!(e, IoError::UnsupportedDtype { .. }), "{e}");
    }

    #[test]
    fn non_2d_shapes_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npy");
        for (shape, want) in [
            ("(2, 3, 4)", vec![2u64, 3, 4]),
            ("(24,)", vec![24]),
            ("()", vec![]),
        ] {
            let e = open_err(
                &p,
                &raw_npy(
                    1,
                    &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
                    &[0; 96],
                ),
            );
            assert!(
                matches!(&e, IoError::NotTwoDimensional { shape, .. } if *shape == want),
                "{e}"
            );
            assert!(e.to_string().contains("2-D"), "{e}");
        }
    }

    #[test]
    fn truncated_and_overlong_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }";
        // 2 whole rows + 5 bytes of row 2.
        let e = open_err(&p, &raw_npy(1, dict, &[0; 29]));
        assert!(
            matches!(
                e,
                IoError::Truncated {
                    record: 2,
                    record_bytes: 12,
                    present: 5,
                    ..
                }
            ),
            "{e}"
        );
        let e = open_err(&p, &raw_npy(1, dict, &[0; 49]));
        assert!(
            matches!(
                e,
                IoError::TrailingBytes {
                    expected: 48,
                    got: 49,
                    ..
                }
            ),
            "{e}"
        );
        let e = open_err(
            &p,
            &raw_npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }",
                &[],
            ),
        );
        assert!(matches!(e, IoError::Empty { .. }), "{e}");
        let e = open_err(
            &p,
            &raw_npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }",
                &[],
            ),
        );
        assert!(matches!(e, IoError::InvalidDimension { dim: 0, .. }), "{e}");
        let e = open_err(&p, &raw_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 1048576), }", &[]));
        assert!(matches!(e, IoError::BadNpyHeader { .. }), "{e}");
    }

    #[test]
    fn garbage_headers_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.npy");
        let mut wrong_version = raw_npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }",
            &[0; 4],
        );
        wrong_version[6] = 9;
        let mut long_len = raw_npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }",
            &[0; 4],
        );
        long_len[8] = 0xff;
        long_len[9] = 0xff;
        let cases: Vec<Vec<u8>> = vec![
            b"not a numpy file at all, just some text".to_vec(),
            b"\x93NUMPY\x01".to_vec(),
            b"\x93NUMPY\x02\x00\x10".to_vec(),
            raw_npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1) @@@",
                &[0; 4],
            ),
            raw_npy(1, "hello", &[0; 4]),
            raw_npy(
                2,
                "{'descr': '<f4', 'fortran_order': Fals, 'shape': (1, 1), }",
                &[0; 4],
            ),
            raw_npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': 2}",
                &[0; 4],
            ),
            wrong_version,
            long_len,
            {
                let mut v = raw_npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }",
                    &[0; 4],
                );
                v[20] = 0xff; // not UTF-8
                v
            },
        ];
        for bytes in cases {
            let e = open_err(&p, &bytes);
            assert!(matches!(e, IoError::BadNpyHeader { .. }), "{e}");
            assert!(e.to_string().contains("malformed .npy header"), "{e}");
        }
        let e = open_err(&p, &[]);
        assert!(matches!(e, IoError::Empty { .. }), "{e}");
    }

    #[test]
    fn f16_overflow_is_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.npy");
        let e = write_f32(&p, 1, ElementType::F16, &[1.0, 70000.0]).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::ValueOutOfRange {
                    record: 1,
                    element: ElementType::F16,
                    ..
                }
            ),
            "{e}"
        );
        // Infinities and NaN pass through unchanged (value checks live elsewhere).
        write_f32(&p, 1, ElementType::F16, &[f32::INFINITY, f32::NAN, 65504.0]).unwrap();
        let (_, v) = read_all_f32(&p).unwrap();
        assert!(v[0].is_infinite() && v[1].is_nan() && v[2] == 65504.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn npy_f32_round_trip_prop(dim in 1usize..40, rows in 1usize..60, seed in any::<u64>(), split in 0usize..60) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p.npy");
            let data = synth_f32(dim * rows, seed);
            // Written in two pieces to exercise header rewrite at finish.
            let cut = split.min(rows) * dim;
            let mut w = VectorWriter::create(&p, dim, ElementType::F32).unwrap();
            w.write_f32(&data[..cut]).unwrap();
            w.write_f32(&data[cut..]).unwrap();
            w.finish().unwrap();
            let f = VectorFile::open(&p).unwrap();
            prop_assert_eq!((f.dim(), f.len()), (dim, rows));
            let mut back = Vec::new();
            f.read_f32(0, rows, &mut back).unwrap();
            prop_assert_eq!(back, data);
        }
    }
}
