//! `shoal-bench stream-property`: many more cases of the stream tables' property test than the
//! test suite runs (`crates/stream-prop`), on one plain server the harness starts.

use std::time::Instant;

use shoal_testkit::TestCluster;

/// Failing cases shrunk and shown before the run stops looking.
const MAX_FAILURES: usize = 5;

pub async fn run(cases: u64, seed: u64) -> anyhow::Result<()> {
    let cluster = TestCluster::start(0).await;
    let client = cluster.coordinator.connect().await;
    let started = Instant::now();
    println!("stream property test: {cases} cases from seed {seed}");
    let summary = shoal_stream_prop::run(&client, seed, cases, MAX_FAILURES).await;
    println!(
        "{} cases run, {} skipped (not maintained differentially), {} failed, in {:.1} s",
        summary.run,
        summary.skipped,
        summary.failures.len(),
        started.elapsed().as_secs_f64()
    );
    for found in &summary.failures {
        println!("\n{found}");
    }
    if summary.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} case(s) failed", summary.failures.len())
    }
}
