//! `quiver bench`: recall@k, queries per second and latency percentiles for each nprobe of a
//! sweep, against exact ground truth.
//!
//! Batch mode searches the queries in batches of `--batch-size` (default: all in one call),
//! `--repeat` times; QPS is the best repetition (as FAISS's bench script takes the best of 2),
//! and p50/p99 are over batch latencies. Single mode sends one query per call; QPS is the number
//! of queries over the total time and p50/p99 are per query.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use quiver_engine::backend::{Backend, PreparedIndex, QueryFilters, SearchParams};
use quiver_engine::io::read_all_f32;
use quiver_engine::EngineError;

use super::filtering::{exact_ground_truth, QueryFilterChoice};
use super::{open_index, BackendChoice};
use crate::output::read_int_rows;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Queries in batches (all at once by default).
    Batch,
    /// One query per call.
    Single,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index file made by `quiver build`.
    #[arg(long)]
    index: PathBuf,
    /// Query vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Exact ground truth (.ivecs), row i for query i, best first (e.g. from `quiver gt`).
    /// Not with a filter: filtered ground truth is computed from --base.
    #[arg(long, required_unless_present_any = ["filter", "filters"])]
    gt: Option<PathBuf>,
    /// Only points whose payload passes this filter (Qdrant's JSON syntax, docs/FILTERS.md);
    /// recall is measured against the exact filtered top-k, computed from --base.
    #[arg(long, conflicts_with = "gt")]
    filter: Option<String>,
    /// One filter per query: a file with one JSON filter per line, line i for query i.
    #[arg(long, conflicts_with_all = ["gt", "filter"])]
    filters: Option<PathBuf>,
    /// With a filter: the base vectors the index was built from (ids 0, 1, 2, … by row), for
    /// the exact filtered ground truth.
    #[arg(long, num_args = 1..)]
    base: Vec<PathBuf>,
    /// Neighbours per query; recall@k compares the k returned with the true top k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// nprobe values to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,128")]
    nprobe: Vec<usize>,
    /// Refine factor (k × R candidates re-ranked exactly).
    #[arg(long, default_value_t = 1)]
    refine_factor: usize,
    /// Batch or single-query mode.
    #[arg(long, value_enum, default_value = "batch")]
    mode: Mode,
    /// Queries per batch in batch mode (default: all).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Repetitions per nprobe in batch mode.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, threads: Option<usize>) -> anyhow::Result<()> {
    let (backend, prepared) = open_index(&a.index, a.backend)?;
    let index = prepared.index();
    let (qdim, queries) = read_all_f32(&a.queries)?;
    if qdim != index.dim() {
        return Err(EngineError::DimensionMismatch {
            expected: index.dim(),
            got: qdim,
        })
        .with_context(|| format!("queries {}", a.queries.display()));
    }
    let nq = queries.len() / qdim;
    let choice = QueryFilterChoice::load(a.filter.as_deref(), a.filters.as_deref(), nq, index)?;
    let fields = quiver_engine::backend::allow::field_indexes(index);
    let mut selectivity = None;
    let (gt_k, gt) = match (&choice, &a.gt) {
        (Some(choice), _) => {
            if a.base.is_empty() {
                bail!("a filtered bench needs --base (the base the index was built from) for its exact ground truth");
            }
            let t = Instant::now();
            let (ids, share) = exact_ground_truth(&a.base, index, &fields, choice, &queries, a.k)?;
            eprintln!(
                "exact filtered ground truth in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            selectivity = Some(share.iter().sum::<f64>() / nq.max(1) as f64);
            (a.k, ids.into_iter().map(|i| i as i32).collect::<Vec<i32>>())
        }
        (None, Some(path)) => {
            let (gt_k, gt) = read_int_rows(path)?;
            if gt_k < a.k {
                bail!(
                    "{}: ground truth has {gt_k} neighbours per query, fewer than k = {}",
                    path.display(),
                    a.k
                );
            }
            if gt.len() / gt_k < nq {
                bail!(
                    "{}: ground truth has {} rows for {nq} queries",
                    path.display(),
                    gt.len() / gt_k
                );
            }
            (gt_k, gt)
        }
        (None, None) => bail!("--gt is required without a filter"),
    };
    // One search call over queries `range`: filtered (the filters evaluated and the allow-sets
    // built inside the call, as a server does per batch) or not.
    let search = |range: std::ops::Range<usize>, params: &SearchParams| {
        let chunk = &queries[range.start * qdim..range.end * qdim];
        match &choice {
            Some(choice) => {
                let (sets, of_query) = choice.allow_sets(index, &fields, range);
                let filters = QueryFilters {
                    sets: &sets,
                    of_query: &of_query,
                };
                backend.search_filtered(&prepared, chunk, params, filters)
            }
            None => backend.search(&prepared, chunk, params),
        }
    };
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let threads = threads.unwrap_or_else(rayon::current_num_threads);
    let mode = match a.mode {
        Mode::Batch => "batch",
        Mode::Single => "single",
    };
    for &nprobe in &a.nprobe {
        SearchParams {
            k: a.k,
            nprobe,
            refine_factor: a.refine_factor,
        }
        .validate(index)?;
    }
    if !a.json {
        let filtered = match selectivity {
            Some(s) => format!(
                " | filtered, {:.2}% of points allowed on average",
                s * 100.0
            ),
            None => String::new(),
        };
        println!(
            "backend {} | mode {mode} | threads {threads} | k {} | refine_factor {} | {nq} queries{filtered}",
            backend.name(),
            a.k,
            a.refine_factor
        );
        println!(
            "{:>7} {:>9} {:>10} {:>10} {:>10}",
            "nprobe", "recall", "QPS", "p50_us", "p99_us"
        );
    }
    // Warm-up: caches, page faults of a mapped index, thread pool start.
    let warm = SearchParams {
        k: a.k,
        nprobe: a.nprobe[0],
        refine_factor: a.refine_factor,
    };
    search(0..nq.min(64), &warm)?;

    for &nprobe in &a.nprobe {
        let params = SearchParams {
            k: a.k,
            nprobe,
            refine_factor: a.refine_factor,
        };
        let mut latencies = Vec::new();
        let mut ids = Vec::new();
        let counted_from = backend.counters();
        let qps = match a.mode {
            Mode::Batch => {
                let batch = a.batch_size.unwrap_or(nq).max(1);
                let mut best = f64::INFINITY;
                for rep in 0..a.repeat {
                    let t0 = Instant::now();
                    let mut rep_ids = Vec::with_capacity(nq * a.k);
                    for first in (0..nq).step_by(batch) {
                        let t = Instant::now();
                        let res = search(first..(first + batch).min(nq), &params)?;
                        latencies.push(t.elapsed().as_secs_f64());
                        rep_ids.extend(res.ids);
                    }
                    best = best.min(t0.elapsed().as_secs_f64());
                    if rep == 0 {
                        ids = rep_ids;
                    }
                }
                nq as f64 / best
            }
            Mode::Single => {
                let t0 = Instant::now();
                for q in 0..nq {
                    let t = Instant::now();
                    let res = search(q..q + 1, &params)?;
                    latencies.push(t.elapsed().as_secs_f64());
                    ids.extend(res.ids);
                }
                nq as f64 / t0.elapsed().as_secs_f64()
            }
        };
        // What the device was asked per batch (GPU backends that count: the CUDA emulator,
        // wgpu), averaged over the measured batches.
        let device = match (counted_from, backend.counters()) {
            (Some(from), Some(to)) => {
                let c = to.since(&from);
                let batches = latencies.len().max(1) as f64;
                let per = |v: u64| v as f64 / batches;
                let mut m = serde_json::Map::new();
                for (name, v) in c.fields() {
                    m.insert(name.to_string(), serde_json::json!(per(v)));
                }
                let searched = match a.mode {
                    Mode::Batch => (nq * a.repeat) as f64,
                    Mode::Single => nq as f64,
                };
                m.insert(
                    "bus_bytes_per_query".into(),
                    serde_json::json!(c.bus_bytes() as f64 / searched),
                );
                Some(serde_json::Value::Object(m))
            }
            _ => None,
        };
        let recall = recall_at_k(&ids, &gt, gt_k, a.k, nq);
        let (p50, p99) = (
            percentile(&mut latencies, 50.0) * 1e6,
            percentile(&mut latencies, 99.0) * 1e6,
        );
        if a.json {
            let row = serde_json::json!({
                "backend": backend.name(), "mode": mode, "threads": threads, "nprobe": nprobe, "k": a.k,
                "refine_factor": a.refine_factor, "recall": recall, "qps": qps, "p50_us": p50, "p99_us": p99,
                "selectivity": selectivity,
                "device_per_batch": device,
            });
            println!("{row}");
        } else {
            println!("{nprobe:>7} {recall:>9.4} {qps:>10.0} {p50:>10.1} {p99:>10.1}");
        }
    }
    Ok(())
}

/// Share of the true top-k found among the k returned ids, over all queries. Truth entries of
/// -1 (a filter allowing fewer than k points) are not counted.
pub fn recall_at_k(ids: &[i64], gt: &[i32], gt_k: usize, k: usize, nq: usize) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for q in 0..nq {
        let truth = &gt[q * gt_k..q * gt_k + k];
        let got = &ids[q * k..(q + 1) * k];
        total += truth.iter().filter(|t| **t >= 0).count();
        found += truth
            .iter()
            .filter(|t| **t >= 0 && got.contains(&(**t as i64)))
            .count();
    }
    if total == 0 {
        return 1.0;
    }
    found as f64 / total as f64
}

/// The p-th percentile (nearest rank) of the samples, in the samples' unit.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_true_neighbours_found() {
        let gt = [1, 2, 3, 9, 4, 5, 6, 9];
        let ids = [2, 1, 7, 4, 6, 5];
        // k = 3: query 0 finds {1,2} of {1,2,3}; query 1 finds {4,5,6}.
        assert!((recall_at_k(&ids, &gt, 4, 3, 2) - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }
}
