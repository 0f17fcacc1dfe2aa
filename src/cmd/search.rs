//! `quiver search`: search an index with a file of queries, streaming results to .ivecs
//! (and optionally distances to .fvecs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use quiver_engine::backend::{Backend, QueryFilters, SearchParams};
use quiver_engine::io::VectorFile;
use quiver_engine::EngineError;

use super::filtering::QueryFilterChoice;
use super::{open_index, BackendChoice};
use crate::output::ResultWriter;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index file made by `quiver build`.
    #[arg(long)]
    index: PathBuf,
    /// Query vectors (.fvecs, .bvecs, .npy).
    #[arg(long)]
    queries: PathBuf,
    /// Neighbours per query.
    #[arg(long)]
    k: usize,
    /// Lists probed per query.
    #[arg(long)]
    nprobe: usize,
    /// Re-rank k × R PQ candidates by exact distance (needs an index built with --refine f16|f32).
    #[arg(long, default_value_t = 1)]
    refine_factor: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Output ids (.ivecs or .npy), one row of k per query; -1 pads missing results.
    #[arg(long)]
    out: PathBuf,
    /// Output distances (.fvecs or .npy), in the metric's direction (see README).
    #[arg(long)]
    distances: Option<PathBuf>,
    /// Only points whose payload passes this filter (Qdrant's JSON syntax, docs/FILTERS.md),
    /// e.g. `{"must":[{"key":"source","match":{"value":"torch"}}]}`. Rows with fewer than k
    /// passing points are padded with -1.
    #[arg(long)]
    filter: Option<String>,
    /// One filter per query: a file with one JSON filter per line, line i for query i.
    #[arg(long)]
    filters: Option<PathBuf>,
}

/// Queries per search call.
const QUERY_CHUNK: usize = 4096;

pub fn run(a: Args) -> anyhow::Result<()> {
    let (backend, prepared) = open_index(&a.index, a.backend)?;
    let params = SearchParams {
        k: a.k,
        nprobe: a.nprobe,
        refine_factor: a.refine_factor,
    };
    params.validate(quiver_engine::backend::PreparedIndex::index(&prepared))?;
    let queries = VectorFile::open(&a.queries)?;
    let dim = quiver_engine::backend::PreparedIndex::index(&prepared).dim();
    if queries.dim() != dim {
        return Err(EngineError::DimensionMismatch {
            expected: dim,
            got: queries.dim(),
        })
        .with_context(|| format!("queries {}", a.queries.display()));
    }
    eprintln!("backend: {}", backend.name());
    let index = quiver_engine::backend::PreparedIndex::index(&prepared);
    let choice = QueryFilterChoice::load(
        a.filter.as_deref(),
        a.filters.as_deref(),
        queries.len(),
        index,
    )?;
    let fields = choice
        .as_ref()
        .map(|_| quiver_engine::backend::allow::field_indexes(index));
    let mut out = ResultWriter::create(&a.out, a.distances.as_deref(), a.k)?;
    let started = Instant::now();
    for chunk in queries.chunks_f32(QUERY_CHUNK) {
        let (start, q) = chunk?;
        let res = match (&choice, &fields) {
            (Some(choice), Some(fields)) => {
                let range = start..start + q.len() / dim;
                let (sets, of_query) = choice.allow_sets(index, fields, range);
                let filters = QueryFilters {
                    sets: &sets,
                    of_query: &of_query,
                };
                backend.search_filtered(&prepared, &q, &params, filters)
            }
            _ => backend.search(&prepared, &q, &params),
        };
        let res = res.map_err(|e| match e {
            EngineError::NonFinite {
                row,
                component,
                value,
            } => EngineError::NonFinite {
                row: row + start,
                component,
                value,
            },
            EngineError::ZeroVector { row } => EngineError::ZeroVector { row: row + start },
            e => e,
        });
        out.write(&res.with_context(|| format!("queries {}", a.queries.display()))?)?;
    }
    out.finish()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "searched {} queries in {:.3} s ({:.0} QPS)",
        queries.len(),
        secs,
        queries.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
