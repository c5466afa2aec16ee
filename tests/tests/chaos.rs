//! The seeded short chaos run (a long one: `cargo run --release -p tsweep-tests --bin
//! chaos-bench`): thousands of fake cells on a real cluster under kill -9 of workers, the
//! coordinator and redis-server, SIGSTOP of workers and children, a slow Redis and
//! duplicated RPCs, then every invariant of `tsweep_tests::chaos`. A failure prints the
//! seed and the schedule; `TSWEEP_CHAOS_SEED=<seed>` repeats the schedule.

use std::collections::BTreeSet;
use std::time::Duration;

use tsweep_tests::chaos::{self, seed_from_env, ChaosConfig, Schedule};

/// Sized for CI on a 2-core machine: 2,000 grid cells (and 100 finals) in under 3 minutes.
fn ci_config() -> ChaosConfig {
    ChaosConfig {
        seed: seed_from_env(2019),
        models: 10,
        datasets: 10,
        lrs: 20,
        task_ms: 150,
        steps: 3,
        workers: 5,
        slots: 4,
        proxied_workers: 2,
        duplicate_probability: 0.2,
        lease_ttl_ms: 3_000,
        reaper_interval_ms: 200,
        faults: 10,
        mean_gap_ms: 3_000,
        timeout: Duration::from_secs(170),
    }
}

#[test]
fn the_schedule_is_a_function_of_the_seed_and_the_ci_one_has_every_fault() {
    let config = ci_config();
    let a = Schedule::generate(&config);
    let b = Schedule::generate(&config);
    assert_eq!(a.faults, b.faults);
    let other = Schedule::generate(&ChaosConfig { seed: config.seed + 1, ..config.clone() });
    assert_ne!(a.faults, other.faults);
    if std::env::var("TSWEEP_CHAOS_SEED").is_err() {
        let kinds: BTreeSet<&str> = a.faults.iter().map(|(_, f)| f.kind()).collect();
        assert_eq!(kinds.len(), 6, "the CI seed covers every kind of fault:\n{a}");
    }
    for (_, fault) in &a.faults {
        if let chaos::Fault::KillCoordinator { down_ms } | chaos::Fault::KillRedis { down_ms } = fault {
            assert!(*down_ms <= 3 * config.lease_ttl_ms);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_schedule_of_faults_breaks_no_promise() -> anyhow::Result<()> {
    let config = ci_config();
    assert!(config.grid_cells() >= 2_000);
    let schedule = Schedule::generate(&config);
    eprintln!("{schedule}");
    let report = chaos::run(&config).await?;
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.faults() >= config.faults * 3 / 4, "too few faults landed before the sweep ended: {report}");
    assert!(report.duplicated_rpcs > 0, "{report}");
    Ok(())
}
