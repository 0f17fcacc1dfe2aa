//! `quiver synth`: write a seeded synthetic data set (clustered Gaussian base and queries) for
//! trying Quiver and for scaling runs; pair it with `quiver gt` for ground truth.

use std::path::PathBuf;

use anyhow::bail;
use quiver_engine::io::{ElementType, VectorWriter};
use quiver_engine::progress::Progress;
use quiver_engine::synth::ClusteredGaussian;

use crate::progress_bar::TerminalProgress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base vectors to generate.
    #[arg(long)]
    n: usize,
    /// Dimension.
    #[arg(long)]
    dim: usize,
    /// Query vectors to generate (drawn from the same mixture, disjoint from the base).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Gaussian clusters in the mixture.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Standard deviation of each cluster (centres are uniform in [-1, 1]^dim).
    #[arg(long, default_value_t = 0.25)]
    spread: f32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output base file (.fvecs or .npy).
    #[arg(long)]
    out_base: PathBuf,
    /// Output query file (.fvecs or .npy).
    #[arg(long)]
    out_queries: PathBuf,
}

const CHUNK: usize = 65_536;

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.n == 0 || a.dim == 0 || a.clusters == 0 {
        bail!("--n, --dim and --clusters must be at least 1");
    }
    if !(a.spread.is_finite() && a.spread >= 0.0) {
        bail!("--spread must be a finite, non-negative number");
    }
    let g = ClusteredGaussian::new(a.dim, a.clusters, a.spread, a.seed);
    let progress = TerminalProgress::new();
    progress.stage("generating", (a.n + a.queries) as u64);
    let mut w = VectorWriter::create(&a.out_base, a.dim, ElementType::F32)?;
    for start in (0..a.n).step_by(CHUNK) {
        let count = CHUNK.min(a.n - start);
        w.write_f32(&g.rows(start, count))?;
        progress.advance(count as u64);
    }
    w.finish()?;
    // Queries are rows after the base: same distribution, never equal to a base vector.
    let mut w = VectorWriter::create(&a.out_queries, a.dim, ElementType::F32)?;
    w.write_f32(&g.rows(a.n, a.queries))?;
    w.finish()?;
    progress.finish_stage();
    eprintln!(
        "wrote {} base and {} query vectors of dimension {}",
        a.n, a.queries, a.dim
    );
    Ok(())
}
