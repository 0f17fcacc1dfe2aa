//! `quiver`: the command-line front end of the Quiver engine.
//!
//! Each sub-command lives in `cmd/`; this file parses arguments, sets the thread pool and
//! turns errors into a message and a non-zero exit. It holds no engine logic.

mod cmd;
mod output;
mod progress_bar;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Quiver: IVF-PQ approximate nearest-neighbour search.
#[derive(Parser, Debug)]
#[command(name = "quiver", version, about, propagate_version = true)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an IVF-PQ index on vectors and add them.
    Build(cmd::build::Args),
    /// Search an index with a file of queries.
    Search(cmd::search::Args),
    /// Measure recall, throughput and latency over a sweep of nprobe.
    Bench(cmd::bench::Args),
    /// Exact ground truth by brute force.
    Gt(cmd::gt::Args),
    /// Re-rank candidate lists by exact distance.
    Rerank(cmd::rerank::Args),
    /// Describe an index file.
    Info(cmd::info::Args),
    /// Generate a synthetic data set (clustered Gaussian).
    Synth(cmd::synth::Args),
    /// Run the gRPC search service.
    Serve(Box<cmd::serve::Args>),
    /// List the GPU adapters the wgpu backend can use.
    Devices(cmd::devices::Args),
    /// Drive a running server with concurrent searches; report QPS, latency, errors, recall.
    Loadgen(cmd::loadgen::Args),
}

fn main() -> ExitCode {
    // Test builds only: fault-injection points configured by FAILPOINTS (see Cargo.toml).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(t) = cli.threads {
        anyhow::ensure!(t >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    match cli.command {
        Command::Build(a) => cmd::build::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Bench(a) => cmd::bench::run(a, cli.threads),
        Command::Gt(a) => cmd::gt::run(a),
        Command::Rerank(a) => cmd::rerank::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::Devices(a) => cmd::devices::run(a),
    }
}
