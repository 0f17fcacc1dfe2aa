//! Backend test bodies shared by the GPU backends: each runs a search (or a stage) on a
//! backend and on the CPU reference and compares. `shaders/tests/backend.rs` runs them on
//! wgpu, `kernels/tests/backend.rs` on CUDA (included from here by path).
#![allow(dead_code)]

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, Neighbors, SearchParams};
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};

/// One index configuration.
pub struct Case {
    pub metric: Metric,
    pub bits: u32,
    pub m: usize,
    pub refine: RefineKind,
}

/// Every metric × code width × refine kind worth covering.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            metric: Metric::L2,
            bits: 8,
            m: 8,
            refine: RefineKind::None,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 8,
            m: 16,
            refine: RefineKind::F16,
        },
        Case {
            metric: Metric::Cosine,
            bits: 8,
            m: 8,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::L2,
            bits: 4,
            m: 16,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 32,
            refine: RefineKind::F16,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 16,
            refine: RefineKind::None,
        },
    ]
}

/// 4,000 clustered vectors of dimension 32 in 16 lists (rows of ≈ 2,000 entries at nprobe 8:
/// two top-k rounds), `deletes` removed; 40 queries.
pub fn build(c: &Case, deletes: &[u64]) -> (Arc<IvfPqIndex>, Vec<f32>) {
    let dim = 32;
    let g = ClusteredGaussian::new(dim, 12, 0.5, 11);
    let x = g.rows(0, 4000);
    let mut p = IndexParams::new(c.metric, dim, 16, c.m);
    p.pq_bits = c.bits;
    p.refine = c.refine;
    let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
    idx.add(&x, None, &NoProgress).expect("add");
    idx.delete(deletes);
    (Arc::new(idx), g.rows(4000, 40))
}

/// Whether two distances are the same up to float rounding: both infinite alike (padding),
/// or within 1e-5 relative.
pub fn same_distance(a: f32, b: f32) -> bool {
    a == b || (a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-5 * a.abs().max(1.0))
}

/// Exact parity up to ties of rows of `width` (id, distance) pairs, best first: at every
/// (row, rank) the distances agree to float rounding, and the ids are the same except where
/// the distance at that rank is tied (another rank of the row, or the row's last rank, has
/// the same distance to rounding: equally near points may come in either order, and the one
/// past the last rank is not seen).
pub fn assert_rows_match<T: PartialEq + std::fmt::Debug>(
    label: &str,
    width: usize,
    (want_ids, want_d): (&[T], &[f32]),
    (got_ids, got_d): (&[T], &[f32]),
) {
    assert_eq!(want_ids.len(), got_ids.len(), "{label}");
    assert_eq!(want_d.len(), got_d.len(), "{label}");
    let width = width.max(1);
    let mut swapped = 0;
    for (row, ((wi, wd), (gi, gd))) in want_ids
        .chunks(width)
        .zip(want_d.chunks(width))
        .zip(got_ids.chunks(width).zip(got_d.chunks(width)))
        .enumerate()
    {
        for r in 0..wi.len() {
            assert!(
                same_distance(wd[r], gd[r]),
                "{label}: row {row} rank {r}: distance {} ({:?}) vs {} ({:?})",
                wd[r],
                wi[r],
                gd[r],
                gi[r]
            );
            if wi[r] != gi[r] {
                let tied = r + 1 == wi.len()
                    || (0..wi.len()).any(|o| o != r && same_distance(wd[o], wd[r]));
                assert!(
                    tied,
                    "{label}: row {row} rank {r}: {:?} vs {:?} at an untied distance {}",
                    wi[r], gi[r], wd[r]
                );
                swapped += 1;
            }
        }
    }
    if swapped > 0 {
        eprintln!("{label}: {swapped} tied positions in another order");
    }
}

/// [`assert_rows_match`] on two searches' results.
pub fn assert_parity(label: &str, want: &Neighbors, got: &Neighbors) {
    assert_eq!(want.k, got.k, "{label}");
    assert_rows_match(
        label,
        want.k,
        (&want.ids, &want.distances),
        (&got.ids, &got.distances),
    );
}

/// The CPU reference's answer and `backend`'s to one search.
fn search_both<B: Backend>(
    backend: &B,
    idx: &Arc<IvfPqIndex>,
    q: &[f32],
    params: &SearchParams,
) -> (Neighbors, Neighbors) {
    let cpu = CpuBackend;
    let want = cpu
        .search(&cpu.prepare(idx.clone()).unwrap(), q, params)
        .unwrap();
    let got = backend
        .search(&backend.prepare(idx.clone()).unwrap(), q, params)
        .unwrap();
    (want, got)
}

/// Deletes after the upload: `refresh` with the index after deletes (the answers' own top
/// ids deleted, so they must go) searches like the CPU on that index, for every case. Returns
/// each case's (before, after) prepared pair for backend-specific checks.
pub fn deletes_after_prepare_match_the_cpu_reference<B: Backend>(
    backend: &B,
) -> Vec<(B::Prepared, B::Prepared)> {
    let cpu = CpuBackend;
    let mut pairs = Vec::new();
    for c in cases() {
        let (idx, q) = build(&c, &[]);
        let label = format!(
            "{} {} {}-bit {:?} refresh",
            backend.name(),
            c.metric,
            c.bits,
            c.refine
        );
        let params = SearchParams {
            k: 10,
            nprobe: 8,
            refine_factor: if c.refine == RefineKind::None { 1 } else { 8 },
        };
        let before = backend.prepare(idx.clone()).unwrap();
        let first = cpu
            .search(&cpu.prepare(idx.clone()).unwrap(), &q, &params)
            .unwrap();
        let gone: Vec<u64> = first.ids.chunks(10).map(|r| r[0] as u64).collect();
        let mut newer = (*idx).clone();
        assert!(newer.delete(&gone) > 0);
        let newer = Arc::new(newer);
        let after = backend.refresh(&before, newer.clone()).unwrap();
        let want = cpu
            .search(&cpu.prepare(newer.clone()).unwrap(), &q, &params)
            .unwrap();
        let got = backend.search(&after, &q, &params).unwrap();
        assert_parity(&label, &want, &got);
        assert!(
            got.ids.iter().all(|id| !gone.contains(&(*id as u64))),
            "{label}: a deleted id was returned"
        );
        // The version before the deletes still answers as before.
        let old = backend.search(&before, &q, &params).unwrap();
        assert_parity(&format!("{label} (old version)"), &first, &old);
        pairs.push((before, after));
    }
    pairs
}

/// Whole searches on `backend` equal the CPU's, deletes honoured, for every case and a few
/// (k, nprobe) pairs.
pub fn searches_match_the_cpu_reference<B: Backend>(backend: &B) {
    let deleted = [3u64, 4, 5, 1000, 2500];
    for c in cases() {
        let (idx, q) = build(&c, &deleted);
        let label = format!(
            "{} {} {}-bit {:?}",
            backend.name(),
            c.metric,
            c.bits,
            c.refine
        );
        let rf = if c.refine == RefineKind::None { 1 } else { 8 };
        for (k, nprobe) in [(10, 8), (1, 1), (70, 16)] {
            let params = SearchParams {
                k,
                nprobe,
                refine_factor: rf,
            };
            let (want, got) = search_both(backend, &idx, &q, &params);
            assert_parity(&format!("{label} k {k} nprobe {nprobe}"), &want, &got);
            assert!(
                got.ids.iter().all(|id| !deleted.contains(&(*id as u64))),
                "{label}"
            );
        }
    }
}

/// Wide codes: the scans' table paths for large M — 8-bit M = 64 (a 64 KiB table: CUDA stages
/// it in opted-in shared memory), 8-bit M = 256 (256 KiB: read from global memory on both
/// backends), 4-bit M = 264 (past WGSL's 4 KiB of staged table; the sums' 16-bit
/// accumulation is moved to 32 bits past 256 sub-quantizers) and 4-bit M = 10 (the GPU
/// layout's last quad of sub-quantizers padded) — match the CPU.
pub fn wide_codes_match_the_cpu_reference<B: Backend>(backend: &B) {
    for (metric, bits, dim, m) in [
        (Metric::L2, 8, 256, 64),
        (Metric::InnerProduct, 8, 256, 256),
        (Metric::InnerProduct, 4, 528, 264),
        (Metric::L2, 4, 30, 10),
    ] {
        let g = ClusteredGaussian::new(dim, 8, 0.5, 13);
        let x = g.rows(0, 2000);
        let mut p = IndexParams::new(metric, dim, 8, m);
        p.pq_bits = bits;
        let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
        idx.add(&x, None, &NoProgress).expect("add");
        let idx = Arc::new(idx);
        let q = g.rows(2000, 12);
        let params = SearchParams {
            k: 10,
            nprobe: 3,
            refine_factor: 1,
        };
        let (want, got) = search_both(backend, &idx, &q, &params);
        let label = format!("{} {metric} {bits}-bit M {m}", backend.name());
        assert_parity(&label, &want, &got);
    }
}

/// Many small lists: nlist 1,024 over 20,000 points, nprobe up to 512 (rows of ≈ 10,000
/// entries: several top-k rounds before refine; 12,288 scan items, so the 8-bit scan takes
/// several items per block, groups crossing from one query to the next), k up to 100 with
/// refine ×4, 8- and 4-bit, L2 and inner product: the same answers as the CPU, ids exact up
/// to ties.
pub fn many_lists_and_several_rounds_match_the_cpu_reference<B: Backend>(backend: &B) {
    let (dim, n) = (16, 20_000);
    let g = ClusteredGaussian::new(dim, 64, 0.5, 17);
    let x = g.rows(0, n);
    let q = g.rows(n, 24);
    for (metric, bits, m) in [
        (Metric::L2, 8, 8),
        (Metric::InnerProduct, 8, 16),
        (Metric::InnerProduct, 4, 16),
    ] {
        let mut p = IndexParams::new(metric, dim, 1024, m);
        p.pq_bits = bits;
        p.refine = RefineKind::F32;
        let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
        idx.add(&x, None, &NoProgress).expect("add");
        let idx = Arc::new(idx);
        for (k, nprobe) in [(10, 64), (100, 512)] {
            let params = SearchParams {
                k,
                nprobe,
                refine_factor: 4,
            };
            let (want, got) = search_both(backend, &idx, &q, &params);
            let label = format!(
                "{} {metric} {bits}-bit nlist 1024 k {k} nprobe {nprobe}",
                backend.name()
            );
            assert_parity(&label, &want, &got);
        }
    }
}

/// Tied coarse scores decide the probes as on the CPU: a quantizer of 16 distinct centroids,
/// each repeated 64 times (copy j of centroid c is list 16·j + c, so the copies of one
/// centroid lie in every 128-list span), every point in its centroid's first copy (the
/// assignment keeps a tie's lowest list). A query's best 64 lists all tie; the CPU probes the
/// lowest-numbered ones, and a backend that took other copies of a tie (another span's, say)
/// would scan empty lists and miss the points. Cosine, L2 and inner product; nprobe within
/// the CUDA backend's on-chip probe selection (40, 64) and beyond it (100); 300 queries
/// (several query tiles).
pub fn tied_centroids_probe_the_cpu_lists<B: Backend>(backend: &B) {
    let (dim, distinct, copies) = (16, 16, 64);
    let g = ClusteredGaussian::new(dim, distinct, 0.4, 29);
    let x = g.rows(0, 8000);
    let q = g.rows(8000, 300);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let mut small = IndexParams::new(metric, dim, distinct, 8);
        small.refine = RefineKind::F32;
        let base = IvfPqIndex::train(small.clone(), &x, &NoProgress).expect("train");
        let mut params = small;
        params.nlist = distinct * copies;
        let centroids: Vec<f32> = (0..copies)
            .flat_map(|_| base.centroids().iter().copied())
            .collect();
        let mut idx = IvfPqIndex::from_parts(params, centroids, base.pq().clone(), Vec::new());
        idx.add(&x, None, &NoProgress).expect("add");
        let filled = idx.lists().iter().filter(|l| !l.is_empty()).count();
        assert!(filled <= distinct, "{metric}: {filled} lists filled");
        let idx = Arc::new(idx);
        for nprobe in [40, 64, 100] {
            let params = SearchParams {
                k: 10,
                nprobe,
                refine_factor: 2,
            };
            let (want, got) = search_both(backend, &idx, &q, &params);
            let label = format!("{} {metric} tied centroids nprobe {nprobe}", backend.name());
            assert_parity(&label, &want, &got);
        }
    }
}

/// Batches searched at once from several threads on one prepared index (the CUDA backend
/// runs each on a stream of its own, two in turn, so they overlap on a GPU) give each batch's
/// own result, ids and distance bits, with different parameters per thread. On the CUDA
/// emulator every launch and copy completes when issued, so a missing wait between streams
/// cannot show there; this checks the host's bookkeeping (buffers, pinned staging, results
/// per call), and `scripts/gpu-check` runs it on a GPU, where the streams do overlap.
pub fn concurrent_batches_equal_each_alone<B: Backend>(backend: &B) {
    let c = Case {
        metric: Metric::L2,
        bits: 8,
        m: 8,
        refine: RefineKind::F16,
    };
    let (idx, q) = build(&c, &[]);
    let dim = idx.dim();
    let prepared = backend.prepare(idx.clone()).expect("prepare");
    let batches: Vec<(Vec<f32>, SearchParams)> = (0..4)
        .map(|t| {
            let rows = 20 + 7 * t;
            let q: Vec<f32> = q
                .iter()
                .cycle()
                .skip(t * dim)
                .take(rows * dim)
                .copied()
                .collect();
            let params = SearchParams {
                k: 5 + t,
                nprobe: 4 + 3 * t,
                refine_factor: 1 + t,
            };
            (q, params)
        })
        .collect();
    let alone: Vec<Neighbors> = batches
        .iter()
        .map(|(q, params)| backend.search(&prepared, q, params).expect("search"))
        .collect();
    let together: Vec<Neighbors> = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .iter()
            .map(|(q, params)| scope.spawn(|| backend.search(&prepared, q, params)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("search"))
            .collect()
    });
    for (t, (a, b)) in alone.iter().zip(&together).enumerate() {
        let label = format!("{} batch {t} of 4 at once", backend.name());
        assert_eq!(a.ids, b.ids, "{label}: ids");
        let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.distances), bits(&b.distances), "{label}: distances");
    }
}

/// Indexes sharing their quantizers (a collection's segments: one trained index, three parts
/// added to copies of it, each prepared from the first by `refresh`) searched as one batch
/// (`search_many`) give each index's own search, ids and distance bits. With `count` (a
/// backend whose counters only this test moves) the batch also crosses the bus once each
/// way: one upload of the queries' bytes and one download, whatever the number of indexes.
pub fn one_batch_over_segments_equals_each_search<B: Backend>(backend: &B, count: bool) {
    let dim = 32;
    let g = ClusteredGaussian::new(dim, 12, 0.5, 21);
    let x = g.rows(0, 6000);
    let q = g.rows(6000, 30);
    for (metric, bits, refine) in [
        (Metric::L2, 8, RefineKind::F16),
        (Metric::InnerProduct, 8, RefineKind::None),
        (Metric::Cosine, 4, RefineKind::F32),
    ] {
        let mut p = IndexParams::new(metric, dim, 16, 8);
        p.pq_bits = bits;
        p.refine = refine;
        let trained = IvfPqIndex::train(p, &x[..4000 * dim], &NoProgress).expect("train");
        let segs: Vec<Arc<IvfPqIndex>> = x
            .chunks(2000 * dim)
            .enumerate()
            .map(|(i, part)| {
                let mut s = trained.empty_like();
                let ids: Vec<u64> = (i as u64 * 2000..(i as u64 + 1) * 2000).collect();
                s.add(part, Some(&ids), &NoProgress).expect("add");
                Arc::new(s)
            })
            .collect();
        let mut prepared = vec![backend.prepare(segs[0].clone()).expect("prepare")];
        for s in &segs[1..] {
            let next = backend.refresh(&prepared[0], s.clone()).expect("refresh");
            prepared.push(next);
        }
        let refs: Vec<&B::Prepared> = prepared.iter().collect();
        let rf = if refine == RefineKind::None { 1 } else { 4 };
        let params = SearchParams {
            k: 10,
            nprobe: 6,
            refine_factor: rf,
        };
        let label = format!("{} {metric} {bits}-bit {refine:?}", backend.name());
        let before = backend.counters();
        let many = backend
            .search_many(&refs, &q, &params)
            .expect("search_many");
        let counted = backend.counters().zip(before).map(|(a, b)| a.since(&b));
        assert_eq!(many.len(), segs.len(), "{label}");
        for (i, (p, got)) in prepared.iter().zip(&many).enumerate() {
            let want = backend.search(p, &q, &params).expect("search");
            assert_eq!(want.ids, got.ids, "{label}: segment {i}");
            let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&want.distances),
                bits(&got.distances),
                "{label}: segment {i}"
            );
        }
        if let Some(c) = counted.filter(|_| count) {
            println!("{label}: {} segments in one batch: {c:?}", segs.len());
            assert_eq!(c.h2d_copies, 1, "{label}: one upload");
            assert_eq!(c.h2d_bytes, (q.len() * 4) as u64, "{label}: the queries");
            assert_eq!(c.d2h_copies, 1, "{label}: one download");
            assert_eq!(c.memsets, 0, "{label}");
        }
    }
}

/// Given the same probes and tables, the backend's scan selects the CPU scan's candidates.
pub fn scan_stage_selects_the_cpu_candidates<B: Backend>(backend: &B) {
    let cpu = CpuBackend;
    for c in cases() {
        let (idx, q) = build(&c, &[7, 8]);
        let cp = cpu.prepare(idx.clone()).unwrap();
        let bp = backend.prepare(idx.clone()).unwrap();
        let q = idx.prepare_queries(&q).unwrap().into_owned();
        let probes = cpu.coarse_search(&cp, &q, 6).unwrap();
        let tables = cpu.lookup_tables(&cp, &q).unwrap();
        let want = cpu.scan(&cp, &probes, &tables, 50).unwrap();
        let got = backend.scan(&bp, &probes, &tables, 50).unwrap();
        let label = format!("{} {} {}-bit scan", backend.name(), c.metric, c.bits);
        assert_rows_match(
            &label,
            want.per_query,
            (&want.slots, &want.scores),
            (&got.slots, &got.scores),
        );
    }
}

/// Coarse search and lookup tables of `backend` against the CPU's.
pub fn coarse_and_tables_match_the_cpu_reference<B: Backend>(backend: &B) {
    let cpu = CpuBackend;
    for c in cases() {
        let (idx, q) = build(&c, &[]);
        let cp = cpu.prepare(idx.clone()).unwrap();
        let bp = backend.prepare(idx.clone()).unwrap();
        let q = idx.prepare_queries(&q).unwrap().into_owned();
        let want = cpu.coarse_search(&cp, &q, 7).unwrap();
        let got = backend.coarse_search(&bp, &q, 7).unwrap();
        let label = format!("{} {} coarse", backend.name(), c.metric);
        assert_rows_match(
            &label,
            want.nprobe,
            (&want.lists, &want.scores),
            (&got.lists, &got.scores),
        );
        let want = cpu.lookup_tables(&cp, &q).unwrap();
        let got = backend.lookup_tables(&bp, &q).unwrap();
        for (a, b) in want.values.iter().zip(&got.values) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-5,
                "{a} vs {b}"
            );
        }
    }
}

/// A per-row selection under test: (scores, payloads, rows as (first, len), keep) → each
/// row's best `keep` (score, payload), best first.
pub type SelectRows<'a> =
    dyn Fn(&[f32], &[u64], &[(usize, usize)], usize) -> Vec<Vec<(f32, u64)>> + 'a;

/// The device top-k (WarpSelect-style) against the engine's host selection: keep from 1 to
/// beyond the device's largest, rows from empty to several rounds long, heavy ties (scores
/// drawn from a few values, tied entries ordered by payload), infinities, −0 and +0 (−0
/// first, the CPU's total order).
pub fn top_k_selects_the_cpu_rows(select: &SelectRows<'_>) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let lens = [0usize, 1, 31, 33, 64, 1000, 3125, 9000, 40_000];
    for keep in [0usize, 1, 10, 64, 100, 513, 1024, 1500, 2048, 2049] {
        for distinct in [4u64, 1 << 20] {
            let mut scores = Vec::new();
            let mut payloads = Vec::new();
            let mut spans = Vec::new();
            for &len in &lens {
                spans.push((scores.len(), len));
                for _ in 0..len {
                    let r = next();
                    let s = match r % 97 {
                        0 => f32::INFINITY,
                        1 => f32::NEG_INFINITY,
                        2 => -0.0,
                        3 => 0.0,
                        _ => (r >> 8) as f32 % distinct as f32 - distinct as f32 / 2.0,
                    };
                    scores.push(s);
                    payloads.push(next() >> (r % 3 * 16));
                }
            }
            let want: Vec<Vec<(f32, u64)>> =
                quiver_engine::topk::select_rows(&scores, |i| payloads[i], &spans, keep)
                    .into_iter()
                    .map(|row| row.into_iter().map(|e| (e.score, e.item)).collect())
                    .collect();
            let got = select(&scores, &payloads, &spans, keep);
            assert_eq!(got.len(), want.len(), "keep {keep}");
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.len(),
                    w.len(),
                    "keep {keep}, distinct {distinct}, row {r} of {}",
                    lens[r]
                );
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    assert!(
                        a.0.to_bits() == b.0.to_bits() && a.1 == b.1,
                        "keep {keep}, distinct {distinct}, row {r} of {}, entry {i}: {a:?} vs {b:?}",
                        lens[r]
                    );
                }
            }
        }
    }
}

/// How many bytes a resident batch's one download may hold: the backend's result buffer
/// (scores, then the payloads on the backend's alignment).
pub enum ResultBytes {
    /// `nq × k` scores padded to an even count, then `nq × k` payloads (CUDA).
    Exact,
    /// At least the 12 bytes a result takes, less than 256 bytes of alignment more (wgpu).
    Aligned,
}

/// The device-resident search's structure, counted by `backend.counters()` around one batch:
/// exactly one upload (the queries' bytes), one download (the results), no memsets, at most
/// 12 launches when the batch is one tile; results equal the CPU's. `n` points of dimension
/// 32, 8- and 4-bit codes, L2 / inner product / cosine, f32 / f16 / no refine. Skips when the
/// backend does not count (CUDA on NVIDIA's driver).
pub fn a_resident_batch_crosses_the_bus_once_each_way<B: Backend>(
    backend: &B,
    n: usize,
    one_tile: bool,
    results: ResultBytes,
) {
    if backend.counters().is_none() {
        eprintln!("skipped: {} does not count its device work", backend.name());
        return;
    }
    let (dim, nq) = (32, 64);
    let g = ClusteredGaussian::new(dim, 12, 0.5, 5);
    let x = g.rows(0, n);
    let q = g.rows(n, nq);
    for (metric, bits, refine, k, nprobe, rf) in [
        (Metric::L2, 8, RefineKind::F32, 10, 8, 10),
        (Metric::InnerProduct, 8, RefineKind::F16, 10, 16, 10),
        (Metric::Cosine, 8, RefineKind::None, 20, 4, 1),
        (Metric::L2, 8, RefineKind::F16, 1, 1, 1),
        (Metric::L2, 4, RefineKind::F16, 10, 8, 4),
        (Metric::InnerProduct, 4, RefineKind::None, 10, 8, 1),
    ] {
        let mut p = IndexParams::new(metric, dim, 32, 8);
        p.pq_bits = bits;
        p.refine = refine;
        let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
        idx.add(&x, None, &NoProgress).expect("add");
        let idx = Arc::new(idx);
        let params = SearchParams {
            k,
            nprobe,
            refine_factor: rf,
        };
        let prepared = backend.prepare(idx.clone()).expect("prepare");
        let before = backend.counters().expect("counts");
        let got = backend.search(&prepared, &q, &params).expect("search");
        let c = backend.counters().expect("counts").since(&before);
        let label = format!(
            "{} {metric} {bits}-bit {refine:?} k {k} nprobe {nprobe} refine ×{rf} n {n}",
            backend.name()
        );
        println!("{label}: {c:?}");
        let cpu = CpuBackend;
        let want = cpu
            .search(&cpu.prepare(idx.clone()).expect("cpu"), &q, &params)
            .expect("cpu search");
        assert_parity(&label, &want, &got);
        assert_eq!(c.h2d_copies, 1, "{label}: one upload (the queries)");
        assert_eq!(
            c.h2d_bytes,
            (nq * dim * 4) as u64,
            "{label}: the queries' bytes"
        );
        assert_eq!(c.d2h_copies, 1, "{label}: one download (the results)");
        match results {
            ResultBytes::Exact => {
                let bytes = ((nq * k).next_multiple_of(2) + 2 * nq * k) * 4;
                assert_eq!(c.d2h_bytes, bytes as u64, "{label}: the results' bytes");
            }
            ResultBytes::Aligned => {
                let bytes = (nq * k * 12) as u64;
                assert!(
                    c.d2h_bytes >= bytes && c.d2h_bytes < bytes + 256,
                    "{label}: {} bytes read back for {bytes} bytes of results",
                    c.d2h_bytes
                );
            }
        }
        assert_eq!(c.memsets, 0, "{label}: no buffer is cleared");
        if one_tile {
            assert!(c.launches <= 12, "{label}: {} launches", c.launches);
        }
    }
}

/// The issue's batch (#13): 1,024 queries on a 100k × 384 index (IVF1024), nprobe 128, k 10,
/// refine ×10, PQ48 and PQ96x4, inner product and L2: prints the counts of `search` and of
/// the staged stages (`run_stages`) beside it as table rows (docs/GPU.md), and holds the
/// resident path to the issue's budget: one upload, one download, ≤ 2 KB a query over the
/// bus, no memsets, and (`one_tile`) ≤ 12 launches. Minutes on the emulator or lavapipe.
pub fn the_issue_batch_at_100k<B: Backend>(backend: &B, one_tile: bool) {
    if backend.counters().is_none() {
        eprintln!("skipped: {} does not count its device work", backend.name());
        return;
    }
    let (dim, n, nq) = (384, 100_000, 1024);
    let g = ClusteredGaussian::new(dim, 1000, 0.5, 7);
    let x = g.rows(0, n);
    let q = g.rows(n, nq);
    let params = SearchParams {
        k: 10,
        nprobe: 128,
        refine_factor: 10,
    };
    for (metric, m, bits) in [
        (Metric::InnerProduct, 48, 8),
        (Metric::L2, 48, 8),
        (Metric::InnerProduct, 96, 4),
        (Metric::L2, 96, 4),
    ] {
        let mut p = IndexParams::new(metric, dim, 1024, m);
        p.pq_bits = bits;
        p.refine = RefineKind::F16;
        let mut idx = IvfPqIndex::train(p, &x[..50_000 * dim], &NoProgress).expect("train");
        idx.add(&x, None, &NoProgress).expect("add");
        let prepared = backend.prepare(Arc::new(idx)).expect("prepare");
        let before = backend.counters().expect("counts");
        let resident = backend.search(&prepared, &q, &params).expect("search");
        let c = backend.counters().expect("counts").since(&before);
        let before = backend.counters().expect("counts");
        let staged =
            quiver_engine::backend::run_stages(backend, &prepared, &q, &params).expect("staged");
        let s = backend.counters().expect("counts").since(&before);
        let label = format!("PQ{m}x{bits} {metric}");
        for (path, c) in [("search", c), ("staged", s)] {
            println!(
                "| {label} | {path} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                c.launches,
                c.h2d_copies,
                c.h2d_bytes,
                c.d2h_copies,
                c.d2h_bytes,
                c.memsets,
                c.allocs,
                c.bus_bytes() as f64 / nq as f64
            );
        }
        let same = resident
            .ids
            .iter()
            .zip(&staged.ids)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "{label}: {same} of {} ids the same on both paths",
            resident.ids.len()
        );
        assert_eq!(c.h2d_copies, 1, "{label}");
        assert_eq!(c.d2h_copies, 1, "{label}");
        assert!(
            c.bus_bytes() <= 2048 * nq as u64,
            "{label}: {} bytes",
            c.bus_bytes()
        );
        assert_eq!(c.memsets, 0, "{label}");
        if one_tile {
            assert!(c.launches <= 12, "{label}: {} launches", c.launches);
        }
    }
}

/// 4-bit codes: the device-resident search quantizes each (query, list) table on the device
/// with the CPU's float operations, so it gives the staged path's answers (tables quantized on
/// the host by `QuantizedTable::quantize`) bit for bit: ids and distances.
pub fn device_quantized_tables_equal_the_host_quantization<B: Backend>(backend: &B) {
    for c in cases().into_iter().filter(|c| c.bits == 4) {
        let (idx, q) = build(&c, &[7, 8, 9]);
        let prepared = backend.prepare(idx.clone()).expect("prepare");
        let rf = if c.refine == RefineKind::None { 1 } else { 4 };
        for (k, nprobe) in [(10, 8), (5, 16)] {
            let params = SearchParams {
                k,
                nprobe,
                refine_factor: rf,
            };
            let resident = backend.search(&prepared, &q, &params).expect("search");
            let staged = quiver_engine::backend::run_stages(backend, &prepared, &q, &params)
                .expect("staged");
            let label = format!(
                "{} {} 4-bit M{} {:?} k {k} nprobe {nprobe}",
                backend.name(),
                c.metric,
                c.m,
                c.refine
            );
            assert_eq!(resident.ids, staged.ids, "{label}");
            let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&resident.distances),
                bits(&staged.distances),
                "{label}"
            );
        }
    }
}

/// Filters of the parity test: nothing allowed, everything, ≈ 1% (`r` < 40), 10% (`g` = 3),
/// 50% (`g` < 5), an unindexed one, and two of the conditions evaluated value by value (geo,
/// full text, nested; datetime, values count), for payloads `{"g": i % 10, "r": i, "t":
/// "t{i % 3}", "loc": {"lon": i % 100 / 10, "lat": 0}, "w": "word{i % 4} other", "items":
/// [{"n": i % 5}] (none when i % 7 = 0), "d": "2024-01-{1 + i % 28}"}`.
pub const PARITY_FILTERS: [&str; 8] = [
    r#"{"must":[{"key":"g","match":{"value":42}}]}"#,
    "{}",
    r#"{"must":[{"key":"r","range":{"lt":40}}]}"#,
    r#"{"must":[{"key":"g","match":{"value":3}}]}"#,
    r#"{"must":[{"key":"g","range":{"lt":5}}]}"#,
    r#"{"should":[{"key":"t","match":{"value":"t1"}}],"must_not":[{"has_id":[1,2,3]}]}"#,
    r#"{"must":[{"key":"loc","geo_bounding_box":{"top_left":{"lon":-1,"lat":1},"bottom_right":{"lon":6.05,"lat":-1}}},{"key":"w","match":{"text":"WORD1"}}],"must_not":[{"nested":{"key":"items","filter":{"must":[{"key":"n","match":{"value":0}}]}}}]}"#,
    r#"{"must":[{"key":"d","datetime_range":{"gte":"2024-01-10T00:00:00Z"}},{"key":"items","values_count":{"gte":1}}]}"#,
];

/// [`build`] with payloads on every point (and the same deletes).
pub fn build_with_payloads(c: &Case, deletes: &[u64]) -> (Arc<IvfPqIndex>, Vec<f32>) {
    let dim = 32;
    let g = ClusteredGaussian::new(dim, 12, 0.5, 11);
    let x = g.rows(0, 4000);
    let mut p = IndexParams::new(c.metric, dim, 16, c.m);
    p.pq_bits = c.bits;
    p.refine = c.refine;
    let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
    let payloads: Vec<Vec<u8>> = (0..4000)
        .map(|i| {
            let items = if i % 7 == 0 {
                String::new()
            } else {
                format!(r#"{{"n":{}}}"#, i % 5)
            };
            quiver_engine::payload::encode_text(&format!(
                r#"{{"g":{},"r":{i},"t":"t{}","loc":{{"lon":{},"lat":0}},"w":"word{} other","items":[{items}],"d":"2024-01-{:02}"}}"#,
                i % 10,
                i % 3,
                (i % 100) as f64 / 10.0,
                i % 4,
                1 + i % 28
            ))
            .expect("payload")
        })
        .collect();
    idx.add_with_payloads(&x, None, &payloads, &NoProgress)
        .expect("add");
    idx.set_field_specs(vec![
        quiver_engine::payload::fields::FieldSpec::parse("g:integer").unwrap(),
        quiver_engine::payload::fields::FieldSpec::parse("r:integer").unwrap(),
    ]);
    idx.delete(deletes);
    (Arc::new(idx), g.rows(4000, 40))
}

/// Filtered searches, queries with different filters (and none) in one batch, give the CPU
/// reference's answers for every case: the planner's routes (empty, plain, exact, widened
/// IVF) on the backend's stages, with its scan skipping excluded entries. The scan stage
/// alone selects the CPU's candidates under the same allow-sets.
pub fn filtered_searches_match_the_cpu_reference<B: Backend>(backend: &B) {
    use quiver_engine::backend::allow::{allow_set, field_indexes};
    use quiver_engine::backend::{QueryFilters, NO_FILTER};
    use quiver_engine::payload::filter::Filter;
    let cpu = CpuBackend;
    let dead: Vec<u64> = (0..4000).step_by(13).collect();
    for c in cases() {
        let (idx, q) = build_with_payloads(&c, &dead);
        let fields = field_indexes(&idx);
        let sets: Vec<_> = PARITY_FILTERS
            .iter()
            .map(|f| allow_set(&idx, Some(&fields), &Filter::parse_text(f).unwrap()))
            .collect();
        assert_eq!(sets[0].allowed(), 0);
        assert_eq!(sets[1].allowed(), idx.len());
        // Query i: filter i % (filters + 1), the last being none.
        let n = PARITY_FILTERS.len() as u32;
        for s in &sets[6..] {
            assert!(
                s.allowed() > 0 && s.allowed() < idx.len(),
                "{}",
                s.allowed()
            );
        }
        let of_query: Vec<u32> = (0..40u32)
            .map(|i| {
                if i % (n + 1) == n {
                    NO_FILTER
                } else {
                    i % (n + 1)
                }
            })
            .collect();
        let filters = QueryFilters {
            sets: &sets,
            of_query: &of_query,
        };
        let label = format!(
            "{} {} {}-bit {:?} filtered",
            backend.name(),
            c.metric,
            c.bits,
            c.refine
        );
        let params = SearchParams {
            k: 10,
            nprobe: 4,
            refine_factor: if c.refine == RefineKind::None { 1 } else { 4 },
        };
        let cp = cpu.prepare(idx.clone()).unwrap();
        let bp = backend.prepare(idx.clone()).unwrap();
        let want = cpu.search_filtered(&cp, &q, &params, filters).unwrap();
        let got = backend.search_filtered(&bp, &q, &params, filters).unwrap();
        assert_parity(&label, &want, &got);
        for (i, row) in got.ids.chunks(10).enumerate() {
            if of_query[i] == 0 {
                assert!(
                    row.iter().all(|&id| id == -1),
                    "{label}: query {i} allows nothing"
                );
            }
            assert!(
                row.iter().all(|&id| id < 0 || !dead.contains(&(id as u64))),
                "{label}: a deleted id came back"
            );
        }
        // The scan stage alone, at a widened nprobe, under the same sets.
        let probes = cpu
            .coarse_search(&cp, &idx.prepare_queries(&q).unwrap(), 12)
            .unwrap();
        let tables = cpu
            .lookup_tables(&cp, &idx.prepare_queries(&q).unwrap())
            .unwrap();
        let keep = 40;
        let want = cpu
            .scan_filtered(&cp, &probes, &tables, keep, filters)
            .unwrap();
        let got = backend
            .scan_filtered(&bp, &probes, &tables, keep, filters)
            .unwrap();
        for (i, s) in got.slots.chunks(keep).enumerate() {
            if let Some(set) = filters.set_of(i) {
                assert!(
                    s.iter().all(|s| s.list == u32::MAX
                        || set.is_allowed(s.list as usize, s.offset as usize)),
                    "{label}: query {i}'s scan offered an excluded entry"
                );
            }
        }
        assert_rows_match(
            &format!("{label} scan stage"),
            keep,
            (&want.slots, &want.scores),
            (&got.slots, &got.scores),
        );
    }
}
