//! The long chaos run: `tsweep_tests::chaos` with more cells and faults than the CI test,
//! over one or more seeds. Prints each run's report and a table row for BENCHMARKS.md.
//!
//! `cargo run --release -p tsweep-tests --bin chaos-bench -- --runs 3 --faults 40`
//! (build the binaries first: `cargo build --release --bins`).

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tsweep_tests::chaos::{self, ChaosConfig};

#[derive(Parser)]
struct Args {
    /// First seed; run i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    runs: u64,
    #[arg(long, default_value_t = 20)]
    models: usize,
    #[arg(long, default_value_t = 10)]
    datasets: usize,
    #[arg(long, default_value_t = 20)]
    lrs: usize,
    /// Fake run time of a cell.
    #[arg(long, default_value_t = 300)]
    task_ms: u64,
    #[arg(long, default_value_t = 6)]
    workers: usize,
    #[arg(long, default_value_t = 4)]
    slots: u32,
    #[arg(long, default_value_t = 2)]
    proxied_workers: usize,
    #[arg(long, default_value_t = 0.2)]
    duplicate_probability: f64,
    #[arg(long, default_value_t = 3_000)]
    ttl_ms: u64,
    #[arg(long, default_value_t = 40)]
    faults: usize,
    #[arg(long, default_value_t = 4_000)]
    gap_ms: u64,
    /// Per run.
    #[arg(long, default_value_t = 1_800)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut failed = false;
    for run in 0..args.runs {
        let config = ChaosConfig {
            seed: args.seed + run,
            models: args.models,
            datasets: args.datasets,
            lrs: args.lrs,
            task_ms: args.task_ms,
            steps: 3,
            workers: args.workers,
            slots: args.slots,
            proxied_workers: args.proxied_workers,
            duplicate_probability: args.duplicate_probability,
            lease_ttl_ms: args.ttl_ms,
            reaper_interval_ms: 200,
            faults: args.faults,
            mean_gap_ms: args.gap_ms,
            timeout: Duration::from_secs(args.timeout_s),
        };
        eprintln!("{}", chaos::Schedule::generate(&config));
        let report = chaos::run(&config).await?;
        println!("{report}");
        failed |= !report.violations.is_empty();
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            report.seed,
            report.cells,
            report.faults(),
            report.duplicated_rpcs,
            report.lease_expiries,
            report.outages_recorded,
            report.violations.len(),
            report.elapsed.as_secs_f64()
        ));
    }
    println!("| seed | cells | faults injected | duplicated RPCs | lease expiries | outages recorded | violations | wall s |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if failed {
        anyhow::bail!("invariants violated");
    }
    Ok(())
}
