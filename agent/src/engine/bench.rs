//! `burnwatch bench-engine`: the SLO engine's cost at scale, measured on
//! the release binary (run by `cargo xtask bench`, recorded in
//! BENCHMARKS.md). Speed targets are checked here, not by timed tests.

use std::time::Instant;

use anyhow::{Context, Result};

use super::{Engine, SloConfig, SloId, StateStore};

/// Builds `series` (slo, tenant) series with an hour of per-minute traffic,
/// then times one evaluation, one snapshot pass, a checkpoint save and a
/// restore. Prints `key=value` lines.
pub fn run(series: usize) -> Result<()> {
    let yaml = "slos:\n  - { name: a, service: s, objective: 99.9 }\n";
    let config: SloConfig = serde_saphyr::from_str(yaml).context("bench config")?;
    let slos = config.validate().context("bench config")?;
    let mut engine = Engine::new(slos.clone());
    let start = 1_700_000_000u64;
    let tenants: Vec<String> = (0..series).map(|i| format!("tenant-{i}")).collect();
    for minute in 0..60u64 {
        for (i, t) in tenants.iter().enumerate() {
            let bad = u64::from((i as u64 + minute).is_multiple_of(13));
            engine.record(start + minute * 60, SloId(0), t, 6_000, bad)?;
        }
    }
    let now = start + 3_600;
    let t = Instant::now();
    let transitions = engine.evaluate(now).len();
    let evaluate = t.elapsed();
    // Steady state: the next second's evaluation.
    let t = Instant::now();
    engine.evaluate(now + 1);
    let evaluate_steady = t.elapsed();
    let t = Instant::now();
    let n = engine.snapshots(now + 1).count();
    let snapshot = t.elapsed();

    let dir = std::env::temp_dir().join(format!("burnwatch-bench-engine-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StateStore::open(&dir)?;
    let t = Instant::now();
    store.save(&engine, now)?;
    let save = t.elapsed();
    let file = std::fs::metadata(dir.join("state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut restored = Engine::new(slos);
    let t = Instant::now();
    let report = store.restore(&mut restored, now + 60)?;
    let restore = t.elapsed();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    println!("series={series}");
    println!(
        "bytes_per_series={}",
        engine.approx_memory_bytes() / series.max(1)
    );
    println!("evaluate_first_ms={:.1}", evaluate.as_secs_f64() * 1e3);
    println!("evaluate_transitions={transitions}");
    println!(
        "evaluate_steady_ms={:.1}",
        evaluate_steady.as_secs_f64() * 1e3
    );
    println!("snapshot_ms={:.1}", snapshot.as_secs_f64() * 1e3);
    println!("snapshot_series={n}");
    println!("checkpoint_save_ms={:.0}", save.as_secs_f64() * 1e3);
    println!("checkpoint_restore_ms={:.0}", restore.as_secs_f64() * 1e3);
    println!("checkpoint_file_mib={:.1}", file as f64 / 1_048_576.0);
    println!("restored_series={}", report.restored_series);
    Ok(())
}
