//! `quiver info`: parameters, counts, bytes per vector and file size of an index file.

use std::path::PathBuf;

use super::load_index;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index file.
    index: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let index = load_index(&a.index)?;
    let p = index.params();
    let size = std::fs::metadata(&a.index).map(|m| m.len()).unwrap_or(0);
    let sizes: Vec<usize> = index.lists().iter().map(|l| l.live_len()).collect();
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    let empty = sizes.iter().filter(|&&s| s == 0).count();
    println!("file            {}", a.index.display());
    println!("format version  {}", quiver_engine::persist::FORMAT_VERSION);
    println!("metric          {}", p.metric);
    println!("dimension       {}", p.dim);
    println!("vectors         {}", index.len());
    println!("nlist           {}", p.nlist);
    let layout = if p.pq_bits == 4 {
        ", fast-scan blocks of 32"
    } else {
        ""
    };
    println!(
        "pq              M = {}, {} bits, {} bytes per code{layout}",
        p.pq_m,
        p.pq_bits,
        index.pq().code_size()
    );
    println!("refine          {}", p.refine.name());
    println!(
        "codes of        {}",
        if p.by_residual() {
            "residual"
        } else {
            "vector"
        }
    );
    println!("seed            {}", p.seed);
    println!(
        "list sizes      min {min}, mean {:.1}, max {max}, {empty} empty",
        index.len() as f64 / p.nlist as f64
    );
    // A probe lands on a list with a chance that grows with its size: the expected list
    // probed holds Σs² / Σs entries (scripts/roofline.py's `--skew`).
    let total: f64 = sizes.iter().map(|&s| s as f64).sum();
    if total > 0.0 {
        let probed = sizes.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / total;
        let mean = total / sizes.len().max(1) as f64;
        println!(
            "list skew       {:.2} (a probed list holds {probed:.1} entries on average)",
            probed / mean
        );
    }
    println!(
        "bytes/vector    {} (id 8 + code {} + raw {})",
        index.bytes_per_vector(),
        index.pq().code_size(),
        p.dim * p.refine.bytes_per_component()
    );
    let with_payload: usize = index
        .lists()
        .iter()
        .map(|l| {
            (0..l.len())
                .filter(|&i| !l.is_deleted(i) && !l.payloads.get(i).is_empty())
                .count()
        })
        .sum();
    let payload_bytes: usize = index.lists().iter().map(|l| l.payloads.byte_len()).sum();
    println!("payloads        {with_payload} vectors carry one ({payload_bytes} bytes)");
    let fields: Vec<String> = index
        .field_specs()
        .iter()
        .map(|f| format!("{}:{}", f.key, f.kind.name()))
        .collect();
    println!(
        "indexed fields  {}",
        if fields.is_empty() {
            "none".to_string()
        } else {
            fields.join(", ")
        }
    );
    println!(
        "file size       {size} bytes ({:.2} MiB)",
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}
