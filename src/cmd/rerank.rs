//! `quiver rerank`: a batch re-ranking job. For each query, exact distances to its candidate
//! ids (one .ivecs row per query; -1 is padding), keeping the best k. Queries and candidates
//! are streamed in chunks; candidate vectors are read from the base by positioned reads.

use std::path::PathBuf;

use anyhow::{bail, Context};
use quiver_engine::bruteforce::rerank;
use quiver_engine::io::{ElementType, VectorFile, VectorSet};
use quiver_engine::progress::Progress;
use quiver_engine::{EngineError, Metric};

use crate::output::ResultWriter;
use crate::progress_bar::TerminalProgress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Query vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Candidate ids (.ivecs or int32 .npy), one row per query; -1 entries are padding.
    #[arg(long)]
    candidates: PathBuf,
    /// Base vectors the ids refer to (row numbers); repeat for a split base.
    #[arg(long, required = true, num_args = 1..)]
    base: Vec<PathBuf>,
    /// Metric: l2, ip or cosine.
    #[arg(long)]
    metric: Metric,
    /// Neighbours kept per query.
    #[arg(long)]
    k: usize,
    /// Output ids (.ivecs).
    #[arg(long)]
    out: PathBuf,
    /// Output distances (.fvecs).
    #[arg(long)]
    distances: Option<PathBuf>,
}

/// Queries per streamed chunk.
const CHUNK: usize = 256;

pub fn run(a: Args) -> anyhow::Result<()> {
    let queries = VectorFile::open(&a.queries)?;
    let cands = VectorFile::open(&a.candidates)?;
    let base = VectorSet::open(&a.base)?;
    if cands.element_type() != ElementType::I32 {
        bail!(
            "{}: candidates must be integer ids (.ivecs or int32 .npy)",
            a.candidates.display()
        );
    }
    if queries.dim() != base.dim() {
        return Err(EngineError::DimensionMismatch {
            expected: base.dim(),
            got: queries.dim(),
        })
        .with_context(|| format!("queries {}", a.queries.display()));
    }
    if cands.len() != queries.len() {
        bail!(
            "{}: {} candidate rows for {} queries",
            a.candidates.display(),
            cands.len(),
            queries.len()
        );
    }
    if a.k == 0 || a.k > quiver_engine::backend::MAX_K {
        return Err(EngineError::KOutOfRange {
            k: a.k,
            max: quiver_engine::backend::MAX_K,
        }
        .into());
    }
    let (dim, per) = (queries.dim(), cands.dim());
    let mut out = ResultWriter::create(&a.out, a.distances.as_deref(), a.k)?;
    let progress = TerminalProgress::new();
    progress.stage("re-ranking", queries.len() as u64);
    let (mut q, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..queries.len()).step_by(CHUNK) {
        let n = CHUNK.min(queries.len() - start);
        q.clear();
        c.clear();
        v.clear();
        queries.read_f32(start, n, &mut q)?;
        cands.read_i32(start, n, &mut c)?;
        let mut rows = Vec::with_capacity(c.len());
        for (j, &id) in c.iter().enumerate() {
            if id >= 0 && id as usize >= base.len() {
                bail!(
                    "{}: row {}: candidate id {id} is outside the base ({} vectors)",
                    a.candidates.display(),
                    start + j / per,
                    base.len()
                );
            }
            rows.push(id.max(0) as usize);
        }
        base.gather_f32(&rows, &mut v)?;
        let ids: Vec<i64> = c.iter().map(|&x| x as i64).collect();
        let res = rerank(a.metric, dim, &q, &ids, &v, a.k).map_err(|e| match e {
            EngineError::NonFinite {
                row,
                component,
                value,
            } if ids.iter().all(|&i| i as usize != row) => EngineError::NonFinite {
                row: row + start,
                component,
                value,
            },
            e => e,
        });
        out.write(&res.context("re-ranking")?)?;
        progress.advance(n as u64);
    }
    progress.finish_stage();
    out.finish()?;
    eprintln!(
        "re-ranked {} queries ({per} candidates each) into {}",
        queries.len(),
        a.out.display()
    );
    Ok(())
}
