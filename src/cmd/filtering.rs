//! Filters on the command line (`--filter JSON`, `--filters FILE`): parsed and checked against
//! the index's indexed fields, turned into allow-sets per batch, and the exact filtered ground
//! truth `quiver bench` measures recall against.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use quiver_engine::backend::allow::{allow_set, IndexRows};
use quiver_engine::backend::AllowSet;
use quiver_engine::bruteforce::ExactSearch;
use quiver_engine::io::VectorSet;
use quiver_engine::payload::fields::FieldIndexes;
use quiver_engine::payload::filter::{Filter, Rows};
use quiver_engine::IvfPqIndex;

/// The filters of a query file: the distinct filters, and which one each query uses.
pub struct QueryFilterChoice {
    /// Distinct filters.
    pub filters: Vec<Filter>,
    /// Per query, an index into `filters`.
    pub of_query: Vec<u32>,
}

impl QueryFilterChoice {
    /// From `--filter` (every query) or `--filters` (one JSON filter per line, per query);
    /// `None` when neither is given.
    pub fn load(
        filter: Option<&str>,
        filters_file: Option<&Path>,
        nq: usize,
        index: &IvfPqIndex,
    ) -> anyhow::Result<Option<QueryFilterChoice>> {
        let check = |f: Filter, what: &dyn Fn() -> String| -> anyhow::Result<Filter> {
            f.check_fields(index.field_specs())
                .map_err(anyhow::Error::from)
                .with_context(what)?;
            Ok(f)
        };
        match (filter, filters_file) {
            (Some(_), Some(_)) => bail!("give --filter or --filters, not both"),
            (None, None) => Ok(None),
            (Some(text), None) => {
                let f = Filter::parse_text(text).context("--filter")?;
                let f = check(f, &|| "--filter".to_string())?;
                Ok(Some(QueryFilterChoice {
                    filters: vec![f],
                    of_query: vec![0; nq],
                }))
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                if lines.len() != nq {
                    bail!(
                        "{}: {} filters for {nq} queries (one JSON filter per query, per line)",
                        path.display(),
                        lines.len()
                    );
                }
                let mut distinct: Vec<&str> = Vec::new();
                let mut filters = Vec::new();
                let mut of_query = Vec::with_capacity(nq);
                for (i, line) in lines.iter().enumerate() {
                    let line = line.trim();
                    let at = match distinct.iter().position(|d| *d == line) {
                        Some(at) => at,
                        None => {
                            let what = || format!("{} line {}", path.display(), i + 1);
                            let f = Filter::parse_text(line)
                                .map_err(anyhow::Error::from)
                                .with_context(what)?;
                            filters.push(check(f, &what)?);
                            distinct.push(line);
                            distinct.len() - 1
                        }
                    };
                    of_query.push(at as u32);
                }
                Ok(Some(QueryFilterChoice { filters, of_query }))
            }
        }
    }

    /// The allow-sets of queries `range` (only the filters they use are evaluated) and each
    /// query's set among them.
    pub fn allow_sets(
        &self,
        index: &IvfPqIndex,
        fields: &FieldIndexes,
        range: std::ops::Range<usize>,
    ) -> (Vec<AllowSet>, Vec<u32>) {
        let mut local: Vec<(u32, u32)> = Vec::new();
        let mut sets = Vec::new();
        let mut of_query = Vec::with_capacity(range.len());
        for q in range {
            let f = self.of_query[q];
            let at = match local.iter().find(|(g, _)| *g == f) {
                Some(&(_, at)) => at,
                None => {
                    sets.push(allow_set(index, Some(fields), &self.filters[f as usize]));
                    local.push((f, sets.len() as u32 - 1));
                    sets.len() as u32 - 1
                }
            };
            of_query.push(at);
        }
        (sets, of_query)
    }
}

/// Exact filtered top-k per query (ids, -1 past the allowed points) over the base vectors the
/// index was built from (base row i is id i), the filters evaluated on the index's payloads.
/// Also returns each query's share of points allowed.
pub fn exact_ground_truth(
    base: &[PathBuf],
    index: &IvfPqIndex,
    fields: &FieldIndexes,
    choice: &QueryFilterChoice,
    queries: &[f32],
    k: usize,
) -> anyhow::Result<(Vec<i64>, Vec<f64>)> {
    let base = VectorSet::open(base)?;
    let dim = index.dim();
    if base.dim() != dim {
        bail!("--base has dimension {}, the index {dim}", base.dim());
    }
    let nq = queries.len() / dim;
    let rows = IndexRows::new(index, Some(fields));
    let mut out = vec![-1i64; nq * k];
    let mut share = vec![0f64; nq];
    let live = index.len().max(1) as f64;
    for (fi, filter) in choice.filters.iter().enumerate() {
        let members: Vec<usize> = (0..nq)
            .filter(|&q| choice.of_query[q] == fi as u32)
            .collect();
        if members.is_empty() {
            continue;
        }
        let hit = filter.evaluate(&rows);
        let mut ids: Vec<u64> = hit
            .iter()
            .filter(|&r| !rows.is_deleted(r))
            .map(|r| rows.id(r))
            .collect();
        ids.sort_unstable();
        if let Some(&bad) = ids.iter().find(|&&id| id >= base.len() as u64) {
            bail!(
                "the index holds id {bad}, beyond the base's {} rows: --base must be the base \
                 the index was built from, with ids 0, 1, 2, …",
                base.len()
            );
        }
        let which: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
        let mut vectors = Vec::with_capacity(which.len() * dim);
        base.gather_f32(&which, &mut vectors)?;
        let vectors = quiver_engine::index::prepare_vectors(index.metric(), dim, &vectors)?;
        let q: Vec<f32> = members
            .iter()
            .flat_map(|&m| &queries[m * dim..(m + 1) * dim])
            .copied()
            .collect();
        let mut exact = ExactSearch::new(index.metric(), dim, &q, k)?;
        exact.add_rows(&vectors, &ids);
        let found = exact.finish();
        for (i, &m) in members.iter().enumerate() {
            out[m * k..(m + 1) * k].copy_from_slice(found.ids_of(i));
            share[m] = ids.len() as f64 / live;
        }
    }
    Ok((out, share))
}
