//! `quiver gt`: exact top-k ground truth by brute force over a streamed base (blocked SGEMM,
//! multi-threaded).

use std::path::PathBuf;

use anyhow::Context;
use quiver_engine::bruteforce::ExactSearch;
use quiver_engine::io::{read_all_f32, VectorSet};
use quiver_engine::progress::Progress;
use quiver_engine::{EngineError, Metric};

use crate::output::ResultWriter;
use crate::progress_bar::TerminalProgress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base vectors; repeat for a base split over files (ids run on).
    #[arg(long, required = true, num_args = 1..)]
    base: Vec<PathBuf>,
    /// Query vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Metric: l2, ip or cosine.
    #[arg(long)]
    metric: Metric,
    /// Neighbours per query.
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Output ids (.ivecs), best first, ties by lower id.
    #[arg(long)]
    out: PathBuf,
    /// Output distances (.fvecs).
    #[arg(long)]
    distances: Option<PathBuf>,
}

/// Base rows per streamed chunk.
const BASE_CHUNK: usize = 32_768;

pub fn run(a: Args) -> anyhow::Result<()> {
    let base = VectorSet::open(&a.base)?;
    let (qdim, queries) = read_all_f32(&a.queries)?;
    if qdim != base.dim() {
        return Err(EngineError::DimensionMismatch {
            expected: base.dim(),
            got: qdim,
        })
        .with_context(|| {
            format!(
                "queries {} against base {}",
                a.queries.display(),
                a.base[0].display()
            )
        });
    }
    let mut search = ExactSearch::new(a.metric, qdim, &queries, a.k)
        .with_context(|| format!("queries {}", a.queries.display()))?;
    let progress = TerminalProgress::new();
    progress.stage("ground truth", base.len() as u64);
    for chunk in base.chunks_f32(BASE_CHUNK) {
        let (start, rows) = chunk?;
        search
            .add_chunk(&rows, start as u64)
            .context("base vectors")?;
        progress.advance((rows.len() / qdim) as u64);
    }
    progress.finish_stage();
    let res = search.finish();
    let mut out = ResultWriter::create(&a.out, a.distances.as_deref(), a.k)?;
    out.write(&res)?;
    out.finish()?;
    eprintln!(
        "exact top-{} of {} queries over {} vectors written to {}",
        a.k,
        queries.len() / qdim,
        base.len(),
        a.out.display()
    );
    Ok(())
}
