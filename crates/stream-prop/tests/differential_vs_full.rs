//! A fixed number of random cases from a fixed seed: every differential refresh must equal the
//! query recomputed. `shoal-bench stream-property --cases N --seed S` runs many more.

use shoal_stream_prop::run;
use shoal_testkit::TestCluster;

const SEED: u64 = 0x5eed;
const CASES: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_refresh_equals_recomputation_on_random_cases() {
    let cluster = TestCluster::start(0).await;
    let client = cluster.coordinator.connect().await;
    let summary = run(&client, SEED, CASES, 3).await;
    let report: Vec<String> = summary.failures.iter().map(ToString::to_string).collect();
    assert!(report.is_empty(), "{}", report.join("\n\n"));
    assert_eq!(summary.run as u64, CASES);
    // The grammar aims at differential shapes: most cases must be compared, not skipped.
    assert!(
        summary.skipped * 4 < summary.run,
        "{} of {} cases skipped",
        summary.skipped,
        summary.run
    );
}
