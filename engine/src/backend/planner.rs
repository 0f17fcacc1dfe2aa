//! The filtered-search planner: decides, per query, how a search under an allow-set runs, so
//! that recall holds at any selectivity without the caller tuning anything.
//!
//! - **No filter**, or a filter allowing every live entry of an index dense enough for
//!   `nprobe` lists to hold the refine candidates: the ordinary search.
//! - **Nothing allowed**: no results (padding).
//! - **Exact**: when the index keeps raw vectors and reading the allowed entries' raw vectors
//!   costs no more bytes than the widened IVF scan would (estimated below), every allowed entry
//!   is a candidate and the refine stage ranks them exactly (recall 1 but for f16 rounding).
//! - **Widened IVF**: the coarse stage ranks up to [`MAX_WIDE_PROBES`] lists; the query probes
//!   lists in that order until they hold `(1 + 2s)` times as many *allowed* entries as an
//!   unfiltered search scans (`nprobe × live / nlist`, `s` the share allowed; at least the
//!   refine candidates: [`target_seen`]). The count is exact, not a
//!   selectivity guess: the allow-set knows how many allowed entries each list holds. The
//!   result is rounded up to a step of a ×1.5 ladder from `nprobe`, and queries of one step
//!   share one scan (with their own allow-sets, checked inside the scan loop).
//!
//! The IVF cost estimate for the exact/IVF choice assumes allowed entries spread evenly
//! (`target × live / allowed` entries scanned); a filter correlated with the query needs
//! fewer, so the estimate leans to exact search, which is never less accurate.

use super::allow::{AllowSet, QueryFilters};
use super::{
    Backend, Candidates, LookupTables, Neighbors, PreparedIndex, Probes, SearchParams, Slot,
};
use crate::error::EngineError;
use crate::index::{IvfPqIndex, RefineKind};

/// Most lists the coarse stage ranks for a widened probe.
pub const MAX_WIDE_PROBES: usize = 4096;
/// Queries per refine call of the exact route (bounds the candidate buffers).
const EXACT_CHUNK: usize = 64;

/// How one query of a filtered batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No filter (or one allowing every live entry): the ordinary search.
    Unfiltered,
    /// The filter allows nothing.
    Empty,
    /// Every allowed entry ranked exactly.
    Exact,
    /// The IVF scan, nprobe widened.
    Ivf,
}

/// What a filtered batch did, query by query (for tests, logs and metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanStats {
    /// Queries per route: unfiltered, empty, exact, IVF.
    pub routes: [usize; 4],
    /// Lists probed by each IVF-route query, in batch order.
    pub nprobes: Vec<usize>,
}

/// Allowed entries a filtered IVF query must see: `(1 + 2s)` times what an unfiltered search
/// scans (`nprobe × live / nlist`), `s` the share of live entries allowed; at least the refine
/// candidates. The filtered neighbours of a broad filter sit among many disallowed points, so
/// the scan must see more of them to rank as well as an unfiltered one (on MiniLM at 50%: recall
/// 0.94 at 1×, 0.97 at 2×); a selective filter's widened probe already spans many lists (at 10%:
/// 0.98 at 1×). docs/BENCHMARKS.md has the measurements.
pub fn target_seen(index: &IvfPqIndex, params: &SearchParams, allowed: usize) -> usize {
    let live = index.len().max(1) as f64;
    let per_list = live / index.nlist().max(1) as f64;
    let unfiltered = params.nprobe as f64 * per_list;
    let share = (allowed as f64 / live).min(1.0);
    (((1.0 + 2.0 * share) * unfiltered).ceil() as usize).max(params.candidates())
}

/// The route of a query with allow-set `set` (see the module documentation).
pub fn route(index: &IvfPqIndex, params: &SearchParams, set: Option<&AllowSet>) -> Route {
    let Some(set) = set else {
        return Route::Unfiltered;
    };
    let (allowed, live) = (set.allowed(), index.len());
    if allowed == 0 {
        return Route::Empty;
    }
    // A filter allowing every live entry is the plain search, unless the index is too sparse
    // for `nprobe` lists to hold the candidates (a segment of a few edited points spread over
    // hundreds of lists): then the plain search would miss allowed entries in lists it never
    // opens, and the filter's own routes below find them all.
    let per_list = live as f64 / index.nlist().max(1) as f64;
    let sparse = (params.nprobe as f64 * per_list) < params.candidates() as f64;
    if allowed >= live && !sparse {
        return Route::Unfiltered;
    }
    let raw = index.params().refine.bytes_per_component();
    if index.params().refine == RefineKind::None {
        return Route::Ivf;
    }
    let row = (index.dim() * raw) as f64;
    let exact = allowed as f64 * row;
    let scanned = (target_seen(index, params, allowed) as f64 * live as f64 / allowed as f64)
        .min(live as f64);
    let ivf = scanned * index.pq().code_size() as f64 + params.candidates() as f64 * row;
    if exact <= ivf {
        Route::Exact
    } else {
        Route::Ivf
    }
}

/// Lists a widened IVF query probes: from `nprobe` on, until the lists (best first, from
/// `ranked`) hold `target` allowed entries; then rounded up the ladder (at most `ranked.len()`).
pub fn widened_nprobe(set: &AllowSet, ranked: &[u32], nprobe: usize, target: usize) -> usize {
    let mut seen = 0usize;
    let mut j = 0;
    while j < ranked.len() && (j < nprobe || seen < target) {
        seen += set.in_list(ranked[j] as usize) as usize;
        j += 1;
    }
    let mut step = nprobe.max(1);
    while step < j {
        step = (step * 3).div_ceil(2);
    }
    step.min(ranked.len())
}

fn gather(rows: &[f32], dim: usize, which: &[usize]) -> Vec<f32> {
    which
        .iter()
        .flat_map(|&q| &rows[q * dim..(q + 1) * dim])
        .copied()
        .collect()
}

fn scatter(out: &mut Neighbors, which: &[usize], part: &Neighbors) {
    let k = out.k;
    for (i, &q) in which.iter().enumerate() {
        out.ids[q * k..(q + 1) * k].copy_from_slice(part.ids_of(i));
        out.distances[q * k..(q + 1) * k].copy_from_slice(part.distances_of(i));
    }
}

/// [`Backend::search_filtered`]'s default: plans each query and runs the routes with the
/// backend's stages.
pub fn search_filtered<B: Backend + ?Sized>(
    backend: &B,
    prepared: &B::Prepared,
    queries: &[f32],
    params: &SearchParams,
    filters: QueryFilters<'_>,
) -> Result<Neighbors, EngineError> {
    plan_and_search(backend, prepared, queries, params, filters).map(|(n, _)| n)
}

/// [`search_filtered`], also saying what it did.
pub fn plan_and_search<B: Backend + ?Sized>(
    backend: &B,
    prepared: &B::Prepared,
    queries: &[f32],
    params: &SearchParams,
    filters: QueryFilters<'_>,
) -> Result<(Neighbors, PlanStats), EngineError> {
    let index = prepared.index();
    params.validate(index)?;
    let normalised = index.prepare_queries(queries)?;
    let dim = index.dim();
    let nq = normalised.len() / dim;
    if filters.of_query.len() != nq {
        return Err(EngineError::InvalidParameter {
            name: "filters",
            reason: format!("{} filter choices for {nq} queries", filters.of_query.len()),
        });
    }
    if let Some(s) = filters.sets.iter().find(|s| s.nlist() != index.nlist()) {
        return Err(EngineError::InvalidParameter {
            name: "filters",
            reason: format!(
                "an allow-set built for {} lists, the index has {}",
                s.nlist(),
                index.nlist()
            ),
        });
    }
    let k = params.k;
    let mut out = Neighbors {
        k,
        ids: vec![-1; nq * k],
        distances: vec![Neighbors::padding_distance(index.metric()); nq * k],
    };
    let mut stats = PlanStats::default();
    let mut by_route: [Vec<usize>; 4] = Default::default();
    for q in 0..nq {
        let r = route(index, params, filters.set_of(q));
        by_route[r as usize].push(q);
    }
    for (i, v) in by_route.iter().enumerate() {
        stats.routes[i] = v.len();
    }
    let [unfiltered, _, exact, ivf] = &by_route;

    if !unfiltered.is_empty() {
        // The raw queries: exactly what an unfiltered search of them returns.
        let part = backend.search(prepared, &gather(queries, dim, unfiltered), params)?;
        scatter(&mut out, unfiltered, &part);
    }

    for chunk in exact.chunks(EXACT_CHUNK) {
        let per = chunk
            .iter()
            .map(|&q| filters.set_of(q).map_or(0, |s| s.allowed()))
            .max()
            .unwrap_or(0);
        let mut slots = vec![Slot::NONE; chunk.len() * per];
        for (i, &q) in chunk.iter().enumerate() {
            if let Some(set) = filters.set_of(q) {
                for (j, s) in set.slots().enumerate() {
                    slots[i * per + j] = s;
                }
            }
        }
        let candidates = Candidates {
            per_query: per,
            scores: vec![0.0; slots.len()],
            slots,
        };
        let part = backend.refine(prepared, &gather(&normalised, dim, chunk), &candidates, k)?;
        scatter(&mut out, chunk, &part);
    }

    let tile = backend.max_batch(prepared).max(1);
    let wide = index.nlist().min(MAX_WIDE_PROBES.max(params.nprobe));
    for chunk in ivf.chunks(tile) {
        let tile_queries = gather(&normalised, dim, chunk);
        let ranked = backend.coarse_search(prepared, &tile_queries, wide)?;
        let tables = backend.lookup_tables(prepared, &tile_queries)?;
        let steps: Vec<usize> = chunk
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let set = filters.set_of(q).expect("IVF-route queries have a set");
                // Never more than the set allows: once every allowed entry's list is
                // scanned, wider probes find nothing new.
                let target = target_seen(index, params, set.allowed()).min(set.allowed());
                widened_nprobe(
                    set,
                    &ranked.lists[i * wide..(i + 1) * wide],
                    params.nprobe,
                    target,
                )
            })
            .collect();
        stats.nprobes.extend(&steps);
        let mut distinct = steps.clone();
        distinct.sort_unstable();
        distinct.dedup();
        for step in distinct {
            let members: Vec<usize> = (0..chunk.len()).filter(|&i| steps[i] == step).collect();
            let probes = Probes {
                nprobe: step,
                lists: members
                    .iter()
                    .flat_map(|&i| &ranked.lists[i * wide..i * wide + step])
                    .copied()
                    .collect(),
                scores: members
                    .iter()
                    .flat_map(|&i| &ranked.scores[i * wide..i * wide + step])
                    .copied()
                    .collect(),
            };
            let n = tables.m * tables.ksub;
            let sub_tables = LookupTables {
                m: tables.m,
                ksub: tables.ksub,
                values: members
                    .iter()
                    .flat_map(|&i| &tables.values[i * n..(i + 1) * n])
                    .copied()
                    .collect(),
            };
            let of_query: Vec<u32> = members
                .iter()
                .map(|&i| filters.of_query[chunk[i]])
                .collect();
            let sub_filters = QueryFilters {
                sets: filters.sets,
                of_query: &of_query,
            };
            let candidates = backend.scan_filtered(
                prepared,
                &probes,
                &sub_tables,
                params.candidates(),
                sub_filters,
            )?;
            let member_queries: Vec<usize> = members.iter().map(|&i| chunk[i]).collect();
            let part = backend.refine(
                prepared,
                &gather(&normalised, dim, &member_queries),
                &candidates,
                k,
            )?;
            scatter(&mut out, &member_queries, &part);
        }
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_stops_at_the_target_and_rounds_up_the_ladder() {
        // 8 lists; the set allows 10 entries in lists 2 and 5 only.
        let dim = 4;
        let x: Vec<f32> = (0..800 * dim)
            .map(|i| ((i * 7919 % 1013) as f32).cos())
            .collect();
        let p = crate::IndexParams::new(crate::Metric::L2, dim, 8, 2);
        let mut index = IvfPqIndex::train(p, &x, &crate::progress::NoProgress).unwrap();
        index.add(&x, None, &crate::progress::NoProgress).unwrap();
        let mut allowed = roaring::RoaringBitmap::new();
        for l in [2usize, 5] {
            let start: u32 = index.lists()[..l].iter().map(|x| x.len() as u32).sum();
            allowed.insert_range(start..start + 10);
        }
        let set = AllowSet::new(&index, &allowed);
        assert_eq!(set.allowed(), 20);
        let ranked = [0u32, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(widened_nprobe(&set, &ranked, 1, 5), 3);
        // Needs 6 lists; the ladder from 1 runs 1, 2, 3, 5, 8.
        assert_eq!(widened_nprobe(&set, &ranked, 1, 15), 8);
        assert_eq!(widened_nprobe(&set, &ranked, 2, 1000), 8);
        assert_eq!(widened_nprobe(&set, &ranked, 4, 5), 4);
    }
}
