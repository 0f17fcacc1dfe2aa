//! `quiver build`: train an IVF-PQ index on a sample of the base, add the whole base in
//! streamed chunks, and save it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use quiver_engine::io::{ElementType, VectorFile, VectorSet};
use quiver_engine::kmeans::sample_rows;
use quiver_engine::payload::fields::FieldSpec;
use quiver_engine::{EngineError, IndexParams, IvfPqIndex, Metric, RefineKind};

use crate::progress_bar::TerminalProgress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base vectors (.fvecs, .bvecs, .npy); repeat for a base split over files (ids run on).
    #[arg(long, required = true, num_args = 1..)]
    base: Vec<PathBuf>,
    /// User ids, one per base vector (.ivecs or int32 .npy with one column); default 0, 1, 2, …
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Metric: l2, ip (inner product) or cosine.
    #[arg(long)]
    metric: Metric,
    /// Number of inverted lists.
    #[arg(long)]
    nlist: usize,
    /// PQ: `M` sub-quantizers with 8-bit codes, or `MxB` with B = 8 or 4 (`96x4`: 4-bit
    /// fast-scan codes). M must divide the dimension (and be even for 4 bits).
    #[arg(long, value_parser = parse_pq)]
    pq: (usize, u32),
    /// Raw vectors kept for exact refine: none, f16 or f32.
    #[arg(long, default_value = "none")]
    refine: RefineKind,
    /// Seed of the training sample and k-means.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Training vectors drawn from the base (default: max(256 × nlist, 65536), capped at the base size).
    #[arg(long)]
    train_sample: Option<usize>,
    /// Coarse k-means iterations.
    #[arg(long, default_value_t = 20)]
    kmeans_iters: usize,
    /// What PQ codes encode: `residual` (to the list centroid), `vector` (the vector itself;
    /// ip and cosine only) or `auto`: residual for 8-bit codes and for l2, the vector for
    /// 4-bit fast-scan with ip or cosine (FAISS's defaults).
    #[arg(long, default_value = "auto", value_parser = ["auto", "residual", "vector"])]
    codes_of: String,
    /// Payloads: a JSON Lines file with one JSON object per base row, in row order (`{}` for a
    /// row without one). Each is checked (an object, at most 64 KiB, nested at most 32 deep).
    #[arg(long)]
    payload: Option<PathBuf>,
    /// A payload field to index for filtered search, NAME:TYPE with TYPE keyword, integer,
    /// float or bool (e.g. `source:keyword`); repeat for more. Fields without an index can
    /// still be filtered on, slower.
    #[arg(long = "index-field", value_parser = FieldSpec::parse)]
    index_field: Vec<FieldSpec>,
    /// The index file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Reads a payload file a chunk of rows at a time.
struct PayloadReader {
    path: PathBuf,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line: usize,
}

impl PayloadReader {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening payload file {}", path.display()))?;
        Ok(PayloadReader {
            path: path.to_path_buf(),
            lines: std::io::BufReader::new(f).lines(),
            line: 0,
        })
    }

    /// The next `rows` payloads, stored form.
    fn next_rows(&mut self, rows: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(rows);
        while out.len() < rows {
            self.line += 1;
            let Some(line) = self.lines.next() else {
                bail!(
                    "{}: {} lines, fewer than the base's rows (one JSON object per base row)",
                    self.path.display(),
                    self.line - 1
                );
            };
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            let p = quiver_engine::payload::encode_text(line.trim())
                .with_context(|| format!("{} line {}", self.path.display(), self.line))?;
            out.push(p);
        }
        Ok(out)
    }

    /// Fails if lines remain (blank ones aside).
    fn finish(mut self, n: usize) -> anyhow::Result<()> {
        for line in self.lines.by_ref() {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            if !line.trim().is_empty() {
                bail!(
                    "{}: more lines than the base's {n} rows (one JSON object per base row)",
                    self.path.display()
                );
            }
        }
        Ok(())
    }
}

/// Rows per streamed chunk while adding.
const ADD_CHUNK: usize = 65_536;

pub fn run(a: Args) -> anyhow::Result<()> {
    let base = VectorSet::open(&a.base)?;
    let (n, dim) = (base.len(), base.dim());
    let mut params = IndexParams::new(a.metric, dim, a.nlist, a.pq.0);
    params.pq_bits = a.pq.1;
    params.refine = a.refine;
    params.seed = a.seed;
    params.kmeans_iterations = a.kmeans_iters;
    params.residual = match a.codes_of.as_str() {
        "residual" => Some(true),
        "vector" => Some(false),
        _ => None,
    };
    params.validate()?;
    if a.nlist > n {
        return Err(EngineError::TooFewTrainingVectors {
            clusters: a.nlist,
            points: n,
        }
        .into());
    }
    let ids_file = match &a.ids {
        Some(p) => {
            let f = VectorFile::open(p)?;
            if f.element_type() != ElementType::I32 || f.dim() != 1 {
                bail!("{}: ids must be one integer per row (.ivecs of dimension 1 or an N×1 int32 .npy)", p.display());
            }
            if f.len() != n {
                return Err(EngineError::IdCountMismatch {
                    ids: f.len(),
                    vectors: n,
                }
                .into());
            }
            Some(f)
        }
        None => None,
    };
    let mut payloads = match &a.payload {
        Some(p) => Some(PayloadReader::open(p)?),
        None => None,
    };
    let progress = TerminalProgress::new();
    let started = Instant::now();

    let train_n = a
        .train_sample
        .unwrap_or_else(|| params.default_train_sample())
        .min(n);
    if train_n < a.nlist {
        bail!(
            "--train-sample {train_n} is smaller than --nlist {}",
            a.nlist
        );
    }
    let rows = sample_rows(n, train_n, a.seed);
    let mut sample = Vec::with_capacity(train_n * dim);
    base.gather_f32(&rows, &mut sample)?;
    let mut index = IvfPqIndex::train(params, &sample, &progress).map_err(|e| at_rows(e, &rows))?;
    drop(sample);
    let trained = started.elapsed();
    eprintln!(
        "trained on {train_n} vectors in {:.1} s",
        trained.as_secs_f64()
    );

    let mut ids_buf = Vec::new();
    for chunk in base.chunks_f32(ADD_CHUNK) {
        let (start, vectors) = chunk?;
        let rows = vectors.len() / dim;
        let ids: Option<Vec<u64>> = match &ids_file {
            Some(f) => {
                ids_buf.clear();
                f.read_i32(start, rows, &mut ids_buf)?;
                let mut v = Vec::with_capacity(rows);
                for (r, &id) in ids_buf.iter().enumerate() {
                    if id < 0 {
                        return Err(EngineError::InvalidId {
                            id: id as i64,
                            row: start + r,
                        })
                        .with_context(|| format!("reading {}", f.path().display()));
                    }
                    v.push(id as u64);
                }
                Some(v)
            }
            None => None,
        };
        let rows_payloads = match &mut payloads {
            Some(r) => r.next_rows(rows)?,
            None => Vec::new(),
        };
        index
            .add_with_payloads(&vectors, ids.as_deref(), &rows_payloads, &progress)
            .map_err(|e| offset_rows(e, start))?;
    }
    if let Some(r) = payloads {
        r.finish(n)?;
    }
    index.set_field_specs(a.index_field.clone());
    let added = started.elapsed() - trained;
    eprintln!("added {n} vectors in {:.1} s", added.as_secs_f64());
    quiver_engine::persist::save(&index, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({} vectors, {} bytes per vector, {:.1} MiB) in {:.1} s total",
        a.out.display(),
        index.len(),
        index.bytes_per_vector(),
        size as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Parses `M` or `MxB`.
fn parse_pq(s: &str) -> Result<(usize, u32), String> {
    let (m, bits) = match s.split_once(['x', 'X']) {
        Some((m, b)) => (m, b),
        None => (s, "8"),
    };
    let m: usize = m
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected M or MxB, e.g. 48 or 96x4"))?;
    let bits: u32 = bits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected M or MxB, e.g. 48 or 96x4"))?;
    if bits != 8 && bits != 4 {
        return Err(format!(
            "{s:?}: codes of {bits} bits are not supported (8, or 4 for fast-scan)"
        ));
    }
    Ok((m, bits))
}

/// Maps a row number within a training sample to the base row.
fn at_rows(e: EngineError, rows: &[usize]) -> anyhow::Error {
    match e {
        EngineError::NonFinite {
            row,
            component,
            value,
        } if row < rows.len() => anyhow::Error::from(EngineError::NonFinite {
            row: rows[row],
            component,
            value,
        })
        .context("base vectors"),
        EngineError::ZeroVector { row } if row < rows.len() => {
            anyhow::Error::from(EngineError::ZeroVector { row: rows[row] }).context("base vectors")
        }
        e => e.into(),
    }
}

/// Maps a row number within a chunk to the base row.
fn offset_rows(e: EngineError, start: usize) -> anyhow::Error {
    match e {
        EngineError::NonFinite {
            row,
            component,
            value,
        } => anyhow::Error::from(EngineError::NonFinite {
            row: row + start,
            component,
            value,
        })
        .context("base vectors"),
        EngineError::ZeroVector { row } => {
            anyhow::Error::from(EngineError::ZeroVector { row: row + start })
                .context("base vectors")
        }
        e => e.into(),
    }
}
