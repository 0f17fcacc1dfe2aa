//! Criterion benchmarks of the hot kernels, at every SIMD level this CPU has: distances
//! (f32 and f16), the fast-scan block kernel, top-k selection, lookup tables, a whole batch
//! search on synthetic data for 8-bit and 4-bit codes, and coarse assignment (f32 / int8).
//!
//! `cargo bench --bench kernels` (add `-- fast_scan` to run one group). Throughputs are in
//! bytes or elements per second; compare levels within one run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, SearchParams};
use quiver_engine::i8panels::{I8Panels, Rule};
use quiver_engine::linalg::row_norms_sq;
use quiver_engine::panels::PackedPanels;
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::topk::TopK;
use quiver_engine::{fastscan, simd, IndexParams, IvfPqIndex, Metric, RefineKind};

fn distances(c: &mut Criterion) {
    let a = ClusteredGaussian::new(384, 1, 1.0, 1).rows(0, 1);
    let b = ClusteredGaussian::new(384, 1, 1.0, 2).rows(0, 1);
    let h: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
    let mut g = c.benchmark_group("dot_384_f32");
    g.throughput(Throughput::Bytes(384 * 8));
    for level in simd::available() {
        g.bench_with_input(
            BenchmarkId::from_parameter(level.name()),
            &level,
            |bch, &l| bch.iter(|| simd::dot_at(l, black_box(&a), black_box(&b))),
        );
    }
    g.finish();
    let mut g = c.benchmark_group("dot_384_f16");
    g.throughput(Throughput::Bytes(384 * 6));
    for level in simd::available() {
        g.bench_with_input(
            BenchmarkId::from_parameter(level.name()),
            &level,
            |bch, &l| bch.iter(|| simd::dot_f16_at(l, black_box(&a), black_box(&h))),
        );
    }
    g.finish();
}

fn fast_scan(c: &mut Criterion) {
    let m = 96;
    let block: Vec<u8> = (0..fastscan::block_bytes(m))
        .map(|i| (i * 37 % 251) as u8)
        .collect();
    let table: Vec<u8> = (0..m * 16).map(|i| (i * 11 % 256) as u8).collect();
    let mut out = [0u16; fastscan::BLOCK];
    let mut g = c.benchmark_group("fast_scan_block_m96");
    g.throughput(Throughput::Elements(fastscan::BLOCK as u64));
    for level in simd::available() {
        g.bench_with_input(
            BenchmarkId::from_parameter(level.name()),
            &level,
            |bch, &l| {
                bch.iter(|| {
                    fastscan::block_sums_at(
                        l,
                        black_box(&block),
                        black_box(&table),
                        &mut out,
                        black_box(m as u16 * 100),
                    )
                })
            },
        );
    }
    // Four queries over one block (the list-major scan's grouping), per block of 4 queries.
    let tables: Vec<Vec<u8>> = (0..4)
        .map(|q| (0..m * 16).map(|i| ((i + q) * 11 % 256) as u8).collect())
        .collect();
    let mut out4 = [[0u16; fastscan::BLOCK]; 4];
    g.throughput(Throughput::Elements(4 * fastscan::BLOCK as u64));
    for level in simd::available() {
        g.bench_with_input(
            BenchmarkId::new("4_queries", level.name()),
            &level,
            |bch, &l| {
                bch.iter(|| {
                    fastscan::block_sums_for::<4>(
                        l,
                        black_box(&block),
                        [&tables[0], &tables[1], &tables[2], &tables[3]],
                        &mut out4,
                        black_box([m as u16 * 100; 4]),
                    )
                })
            },
        );
    }
    g.finish();
}

fn top_k(c: &mut Criterion) {
    let scores: Vec<f32> = ClusteredGaussian::new(1, 1, 1.0, 3).rows(0, 10_000);
    let mut g = c.benchmark_group("topk_100_of_10000");
    g.throughput(Throughput::Elements(scores.len() as u64));
    g.bench_function("push", |bch| {
        bch.iter(|| {
            let mut t = TopK::new(100);
            for (i, &s) in scores.iter().enumerate() {
                if s <= t.threshold() {
                    t.push(s, i as u64);
                }
            }
            t.into_sorted().len()
        })
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let g = ClusteredGaussian::new(128, 64, 0.3, 4);
    let x = g.rows(0, 20_000);
    let queries = g.rows(20_000, 256);
    let mut grp = c.benchmark_group("search_20k_d128_batch256_nprobe8");
    grp.throughput(Throughput::Elements(256));
    grp.sample_size(10);
    for (bits, m) in [(8u32, 16usize), (4, 32)] {
        let mut p = IndexParams::new(Metric::L2, 128, 64, m);
        p.pq_bits = bits;
        p.refine = RefineKind::F16;
        let mut index = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
        index.add(&x, None, &NoProgress).expect("add");
        let prepared = CpuBackend.prepare(Arc::new(index)).expect("prepare");
        let params = SearchParams {
            k: 10,
            nprobe: 8,
            refine_factor: 4,
        };
        grp.bench_function(
            BenchmarkId::from_parameter(format!("pq{m}x{bits}")),
            |bch| {
                bch.iter(|| {
                    CpuBackend
                        .search(&prepared, black_box(&queries), &params)
                        .expect("search")
                })
            },
        );
    }
    grp.finish();
}

/// Assigning rows to their nearest coarse centroids (IVF1024, 384-d), side by side: the f32
/// packed GEMM with an argmin (what the coarse stage ran alone before) against the int8 VNNI
/// pass with its exact f32 recheck, for 1 and 8 probes (same answers; checked in the tests).
fn coarse_assign(c: &mut Criterion) {
    let (dim, n, rows) = (384, 1024, 256);
    let a = ClusteredGaussian::new(dim, 64, 0.5, 1).rows(0, rows);
    let b = ClusteredGaussian::new(dim, 64, 0.5, 2).rows(0, n);
    let norms = row_norms_sq(&b, dim);
    let panels = PackedPanels::pack(&b, n, dim);
    let mut g = c.benchmark_group("coarse_assign_256x1024x384");
    g.throughput(Throughput::Elements(rows as u64));
    let mut ip = vec![0f32; rows * n];
    let mut best = vec![0u32; rows];
    g.bench_function("f32_panels_argmin", |bch| {
        bch.iter(|| {
            if panels.mul(black_box(&a), rows, &mut ip) {
                for (r, row) in ip.chunks_exact(n).enumerate() {
                    let (mut s, mut j) = (f32::INFINITY, 0);
                    for (c, &v) in row.iter().enumerate() {
                        let d = norms[c] - 2.0 * v;
                        if d < s {
                            (s, j) = (d, c as u32);
                        }
                    }
                    best[r] = j;
                }
            }
        })
    });
    if let Some(p8) = I8Panels::pack(&b, n, dim) {
        for p in [1usize, 8] {
            let (mut lists, mut scores) = (vec![0u32; rows * p], vec![0f32; rows * p]);
            g.bench_with_input(BenchmarkId::new("int8_exact", p), &p, |bch, &p| {
                bch.iter(|| {
                    p8.nearest(
                        black_box(&a),
                        rows,
                        p,
                        Rule::L2,
                        &b,
                        &norms,
                        &mut lists,
                        &mut scores,
                    )
                })
            });
        }
    }
    g.finish();
}

/// PQ encoding (M 48 × 256 sub-centroids of 8 dims) of a 256-row block on this thread, as a
/// written batch is encoded.
fn pq_encode(c: &mut Criterion) {
    let (dim, rows) = (384, 256);
    let a = ClusteredGaussian::new(dim, 30, 0.5, 1).rows(0, rows);
    let pq = quiver_engine::pq::ProductQuantizer::from_parts(
        dim,
        48,
        8,
        ClusteredGaussian::new(8, 30, 0.5, 4).rows(0, 256 * 48),
    );
    let mut codes = vec![0u8; rows * 48];
    let mut g = c.benchmark_group("pq_encode_256x384_m48");
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("encode", |bch| {
        bch.iter(|| pq.encode(black_box(&a), &mut codes))
    });
    g.finish();
}

criterion_group!(
    benches,
    distances,
    fast_scan,
    top_k,
    search,
    coarse_assign,
    pq_encode
);
criterion_main!(benches);
