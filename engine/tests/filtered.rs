//! Filtered search on the CPU backend (run under every `QUIVER_SIMD` level by scripts/test):
//! results hold only allowed, live points; the exact route equals brute force over the allowed
//! points; the widened IVF route finds the filtered neighbours; a filter allowing nothing gives
//! padding and one allowing everything gives the unfiltered search.

use std::sync::Arc;

use quiver_engine::backend::allow::IndexRows;
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::planner::{plan_and_search, Route};
use quiver_engine::backend::{AllowSet, Backend, QueryFilters, SearchParams, NO_FILTER};
use quiver_engine::bruteforce::ExactSearch;
use quiver_engine::payload::filter::Filter;
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};

const N: usize = 6000;
const DIM: usize = 32;

struct Fixture {
    index: Arc<IvfPqIndex>,
    base: Vec<f32>,
    queries: Vec<f32>,
}

fn fixture(metric: Metric, bits: u32, m: usize, refine: RefineKind) -> Fixture {
    let g = ClusteredGaussian::new(DIM, 16, 0.5, 5);
    let base = g.rows(0, N);
    let mut p = IndexParams::new(metric, DIM, 32, m);
    p.pq_bits = bits;
    p.refine = refine;
    let mut index = IvfPqIndex::train(p, &base, &NoProgress).unwrap();
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            quiver_engine::payload::encode_text(&format!(
                r#"{{"g":{},"r":{i},"tag":"t{}"}}"#,
                i % 10,
                i % 3
            ))
            .unwrap()
        })
        .collect();
    index
        .add_with_payloads(&base, None, &payloads, &NoProgress)
        .unwrap();
    // Deleted points must never come back, filtered or not.
    let dead: Vec<u64> = (0..N as u64).step_by(17).collect();
    index.delete(&dead);
    Fixture {
        index: Arc::new(index),
        base,
        queries: g.rows(N, 30),
    }
}

fn allow(f: &Fixture, filter: &str) -> AllowSet {
    let filter = Filter::parse_text(filter).unwrap();
    let rows = IndexRows::new(&f.index, None);
    AllowSet::new(&f.index, &filter.evaluate(&rows))
}

/// Exact filtered top-k (ids) per query: brute force over the allowed live points.
fn truth(f: &Fixture, set_filter: &str, k: usize) -> Vec<Vec<i64>> {
    let filter = Filter::parse_text(set_filter).unwrap();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for id in 0..N as u64 {
        let Some(p) = f.index.payload(id) else {
            continue; // deleted
        };
        if filter.matches(id, &quiver_engine::payload::decode(p)) {
            rows.extend_from_slice(&f.base[id as usize * DIM..(id as usize + 1) * DIM]);
            ids.push(id);
        }
    }
    // Cosine compares normalised vectors (ExactSearch normalises the queries only).
    let rows = quiver_engine::index::prepare_vectors(f.index.metric(), DIM, &rows).unwrap();
    let mut exact = ExactSearch::new(f.index.metric(), DIM, &f.queries, k).unwrap();
    exact.add_rows(&rows, &ids);
    let n = exact.finish();
    (0..n.len()).map(|q| n.ids_of(q).to_vec()).collect()
}

fn recall(got: &[i64], want: &[i64]) -> f64 {
    let want: Vec<i64> = want.iter().copied().filter(|&i| i >= 0).collect();
    if want.is_empty() {
        return 1.0;
    }
    got.iter().filter(|i| want.contains(i)).count() as f64 / want.len() as f64
}

fn params(refine: RefineKind) -> SearchParams {
    SearchParams {
        k: 10,
        nprobe: 4,
        refine_factor: if refine == RefineKind::None { 1 } else { 4 },
    }
}

const FILTERS: [&str; 4] = [
    r#"{"must":[{"key":"r","range":{"lt":60}}]}"#,   // 1%
    r#"{"must":[{"key":"g","match":{"value":3}}]}"#, // 10%
    r#"{"should":[{"key":"tag","match":{"any":["t0","t1"]}}]}"#, // 67%
    r#"{"must_not":[{"key":"g","match":{"any":[0,1,2,3,4]}}]}"#, // 50%
];

#[test]
#[allow(clippy::needless_range_loop)]
fn filtered_results_are_allowed_live_and_near_exact() {
    let b = CpuBackend;
    for (metric, bits, m, refine) in [
        (Metric::L2, 8, 8, RefineKind::None),
        (Metric::InnerProduct, 8, 16, RefineKind::F16),
        (Metric::Cosine, 8, 8, RefineKind::F32),
        (Metric::L2, 4, 16, RefineKind::F32),
        (Metric::InnerProduct, 4, 16, RefineKind::None),
    ] {
        let f = fixture(metric, bits, m, refine);
        let prepared = b.prepare(f.index.clone()).unwrap();
        let sets: Vec<AllowSet> = FILTERS.iter().map(|s| allow(&f, s)).collect();
        // Query q uses filter q % 4: every filter shares the batch.
        let of_query: Vec<u32> = (0..30).map(|q| q % 4).collect();
        let filters = QueryFilters {
            sets: &sets,
            of_query: &of_query,
        };
        let p = params(refine);
        let (got, stats) = plan_and_search(&b, &prepared, &f.queries, &p, filters).unwrap();
        let truths: Vec<Vec<Vec<i64>>> = FILTERS.iter().map(|s| truth(&f, s, 10)).collect();
        let mut sum = [0f64; 4];
        for q in 0..30 {
            let fi = q % 4;
            let filter = Filter::parse_text(FILTERS[fi]).unwrap();
            for &id in got.ids_of(q).iter().filter(|&&i| i >= 0) {
                let payload = f.index.payload(id as u64).expect("a live id");
                assert!(
                    filter.matches(id as u64, &quiver_engine::payload::decode(payload)),
                    "{metric:?}/{bits}: id {id} does not pass filter {fi}"
                );
            }
            sum[fi] += recall(got.ids_of(q), &truths[fi][q]);
        }
        let label = format!("{metric:?} {bits}-bit m{m} {refine:?}");
        // The bar: the unfiltered search's own recall at these parameters (PQ-only indexes rank
        // by approximate scores), at most 0.9, less a margin.
        let plain = b.search(&prepared, &f.queries, &p).unwrap();
        let all = truth(&f, "{}", 10);
        let plain_recall = (0..30)
            .map(|q| recall(plain.ids_of(q), &all[q]))
            .sum::<f64>()
            / 30.0;
        let bar = plain_recall.min(0.9) - 0.1;
        for (fi, s) in sum.iter().enumerate() {
            let r = s / 30.0 * 4.0;
            assert!(
                r >= bar,
                "{label}: filter {fi} recall {r:.3}, unfiltered {plain_recall:.3} ({stats:?})"
            );
        }
        if refine != RefineKind::None {
            // The 1% filter is answered exactly.
            assert!(
                stats.routes[Route::Exact as usize] > 0,
                "{label}: {stats:?}"
            );
        }
        assert!(stats.routes[Route::Ivf as usize] > 0, "{label}: {stats:?}");
        assert!(stats.nprobes.iter().all(|&n| n >= p.nprobe), "{stats:?}");
    }
}

#[test]
fn exact_route_equals_brute_force_over_the_allowed_points() {
    let b = CpuBackend;
    let f = fixture(Metric::L2, 8, 8, RefineKind::F32);
    let prepared = b.prepare(f.index.clone()).unwrap();
    let sets = [allow(&f, FILTERS[0])];
    let of_query = vec![0u32; 30];
    let filters = QueryFilters {
        sets: &sets,
        of_query: &of_query,
    };
    let (got, stats) =
        plan_and_search(&b, &prepared, &f.queries, &params(RefineKind::F32), filters).unwrap();
    assert_eq!(stats.routes[Route::Exact as usize], 30);
    let want = truth(&f, FILTERS[0], 10);
    for (q, w) in want.iter().enumerate() {
        assert_eq!(got.ids_of(q), &w[..], "query {q}");
    }
}

#[test]
fn nothing_allowed_pads_and_everything_allowed_is_the_plain_search() {
    let b = CpuBackend;
    for refine in [RefineKind::F16, RefineKind::None] {
        let f = fixture(Metric::InnerProduct, 4, 16, refine);
        let prepared = b.prepare(f.index.clone()).unwrap();
        let sets = [
            allow(&f, r#"{"must":[{"key":"g","match":{"value":42}}]}"#),
            allow(&f, "{}"),
        ];
        assert_eq!(sets[0].allowed(), 0);
        let p = params(refine);
        let plain = b.search(&prepared, &f.queries, &p).unwrap();
        // Alternate: nothing, everything, no filter.
        let of_query: Vec<u32> = (0..30).map(|q| [0, 1, NO_FILTER][q as usize % 3]).collect();
        let got = b
            .search_filtered(
                &prepared,
                &f.queries,
                &p,
                QueryFilters {
                    sets: &sets,
                    of_query: &of_query,
                },
            )
            .unwrap();
        for q in 0..30 {
            if q % 3 == 0 {
                assert!(got.ids_of(q).iter().all(|&i| i == -1));
            } else {
                assert_eq!(got.ids_of(q), plain.ids_of(q), "query {q}");
                assert_eq!(got.distances_of(q), plain.distances_of(q), "query {q}");
            }
        }
    }
}

#[test]
fn a_query_alone_or_in_a_mixed_batch_gets_the_same_answer() {
    let b = CpuBackend;
    let f = fixture(Metric::L2, 4, 16, RefineKind::F16);
    let prepared = b.prepare(f.index.clone()).unwrap();
    let sets: Vec<AllowSet> = FILTERS.iter().map(|s| allow(&f, s)).collect();
    let of_query: Vec<u32> = (0..30)
        .map(|q| (q * 7 % 5) as u32)
        .map(|x| if x == 4 { NO_FILTER } else { x })
        .collect();
    let p = params(RefineKind::F16);
    let together = b
        .search_filtered(
            &prepared,
            &f.queries,
            &p,
            QueryFilters {
                sets: &sets,
                of_query: &of_query,
            },
        )
        .unwrap();
    for q in 0..30 {
        let one = b
            .search_filtered(
                &prepared,
                &f.queries[q * DIM..(q + 1) * DIM],
                &p,
                QueryFilters {
                    sets: &sets,
                    of_query: &of_query[q..q + 1],
                },
            )
            .unwrap();
        assert_eq!(one.ids_of(0), together.ids_of(q), "query {q}");
    }
}

#[test]
fn bad_filter_choices_are_errors() {
    let b = CpuBackend;
    let f = fixture(Metric::L2, 8, 8, RefineKind::None);
    let prepared = b.prepare(f.index.clone()).unwrap();
    let sets = [allow(&f, "{}")];
    let e = b
        .search_filtered(
            &prepared,
            &f.queries,
            &params(RefineKind::None),
            QueryFilters {
                sets: &sets,
                of_query: &[0, 0],
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("filter"), "{e}");
}

/// A filter allowing every entry of a sparse index (3 points over 32 lists, as a store
/// segment holding a few edited points is) finds all of them at nprobe 1: the plain search
/// would open one list and miss the points in the others.
#[test]
fn everything_allowed_in_a_sparse_index_finds_every_allowed_point() {
    let b = CpuBackend;
    let g = ClusteredGaussian::new(DIM, 16, 0.5, 5);
    let train = g.rows(0, N);
    for refine in [RefineKind::F16, RefineKind::None] {
        let mut p = IndexParams::new(Metric::L2, DIM, 32, 8);
        p.refine = refine;
        let mut index = IvfPqIndex::train(p, &train, &NoProgress).unwrap();
        // Three points from far-apart clusters.
        let rows: Vec<f32> = [0usize, 2000, 4000]
            .iter()
            .flat_map(|&r| train[r * DIM..(r + 1) * DIM].to_vec())
            .collect();
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|_| quiver_engine::payload::encode_text(r#"{"new":true}"#).unwrap())
            .collect();
        index
            .add_with_payloads(&rows, None, &payloads, &NoProgress)
            .unwrap();
        let index = Arc::new(index);
        let filter =
            Filter::parse_text(r#"{"must":[{"key":"new","match":{"value":true}}]}"#).unwrap();
        let set = AllowSet::new(&index, &filter.evaluate(&IndexRows::new(&index, None)));
        assert_eq!(set.allowed(), 3);
        let prepared = b.prepare(index.clone()).unwrap();
        let p = SearchParams {
            k: 10,
            nprobe: 1,
            ..params(refine)
        };
        let sets = [set];
        let of_query = [0u32; 3];
        let (got, stats) = plan_and_search(
            &b,
            &prepared,
            &rows,
            &p,
            QueryFilters {
                sets: &sets,
                of_query: &of_query,
            },
        )
        .unwrap();
        let want = if refine == RefineKind::None {
            Route::Ivf
        } else {
            Route::Exact
        };
        assert_eq!(stats.routes[want as usize], 3, "{refine:?}: {stats:?}");
        for q in 0..3 {
            let mut ids: Vec<i64> = got.ids_of(q).iter().copied().filter(|&i| i >= 0).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![0, 1, 2], "{refine:?} query {q}");
            assert_eq!(
                got.ids_of(q)[0],
                q as i64,
                "{refine:?} query {q}: nearest is itself"
            );
        }
    }
}
