//! Rebalance of the reference data set from two workers to three: sequential vs both parallel
//! flags, the same cluster and data, alternating within each run, each job run by an executor
//! (`shoal-jobs`) from start to finish. Between two measured jobs the third worker is drained
//! again (not measured), so every measured job makes the same moves.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::median;
use crate::moves::shoal_on;
use shoal_cluster::nodes::{self, AddNode};
use shoal_cluster::{Cluster, Colocate};
use shoal_jobs::rebalance::{self, Started};
use shoal_jobs::store;
use shoal_jobs::{run_executor, DaemonKind, ExecutorConfig, JobOptions, JobState, Limits};
use shoal_testkit::TestCluster;

/// The reference data set's `orders` table and rows (`../shared/bench/reference-dataset.sql`),
/// with the number of orders as a parameter (2,000,000 at scale 1).
pub fn orders_sql(orders: i64) -> String {
    format!(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, note text);
         INSERT INTO orders
         SELECT g, g % 100000, ((g * 7919) % 100000) / 100.0,
                left(md5(g::text) || md5((g + 1)::text), 60)
         FROM generate_series(1::bigint, {orders}) g;"
    )
}

/// The whole reference data set of BRIEF.md, with the number of orders as a parameter.
pub fn dataset_sql(orders: i64) -> String {
    format!(
        "{}
         CREATE TABLE order_items (id bigint, order_id bigint, qty int, PRIMARY KEY (order_id, id));
         CREATE TABLE products (id int PRIMARY KEY, name text);
         INSERT INTO products
         SELECT g, 'product-' || g || '-' || md5(g::text) FROM generate_series(1, 100000) g;
         INSERT INTO order_items
         SELECT g, ((g - 1) / 2) + 1, (g % 10) + 1 FROM generate_series(1::bigint, {items}) g;",
        orders_sql(orders),
        items = orders * 2
    )
}

/// A finished job: wall time from planning to the end, moves, planned bytes, and the share of
/// the machine's CPU time that was busy meanwhile (every process, servers included).
struct Measured {
    seconds: f64,
    moves: usize,
    bytes: i64,
    busy: f64,
    /// CPU seconds of this process: Shoal's own share (the executor and the copies it relays).
    own_cpu: f64,
}

/// CPU seconds this process has used so far (`/proc/self/stat`, user + system).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; the fields counted from after it are fixed.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the state (field 3) comes first here.
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // Linux reports them in clock ticks of 1/100 s.
    (field(14) + field(15)) as f64 / 100.0
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (`/proc/stat`).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total.saturating_sub(idle), total)
}

/// Runs a started job with an executor of its own until it ends.
async fn run_job(
    cluster: &Cluster,
    started: Started,
    limits: Limits,
    since: Instant,
    ticks: (u64, u64),
    own_cpu_before: f64,
) -> anyhow::Result<Measured> {
    let Some(job_id) = started.job_id else {
        anyhow::bail!("the planner found nothing to move");
    };
    let (stop, mut stopped) = watch::channel(false);
    let config = ExecutorConfig {
        limits,
        only_job: Some(job_id),
        poll: Duration::from_millis(100),
        ..ExecutorConfig::new(DaemonKind::Foreground)
    };
    let executor = tokio::spawn(run_executor(cluster.params().clone(), config, async move {
        let _ = stopped.changed().await;
    }));
    let state = loop {
        let job = store::get_job(cluster.client(), job_id).await?;
        if job.state.is_final() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = since.elapsed().as_secs_f64();
    let (busy, total) = cpu_ticks();
    let busy = (busy - ticks.0) as f64 / (total - ticks.1).max(1) as f64;
    let own_cpu = own_cpu_seconds() - own_cpu_before;
    let _ = stop.send(true);
    executor.await?;
    anyhow::ensure!(
        state.state == JobState::Finished,
        "job {job_id} {}: {}",
        state.state,
        state.error.unwrap_or_default()
    );
    Ok(Measured {
        seconds,
        moves: started.planned.plan.moves.len(),
        bytes: started
            .planned
            .plan
            .moves
            .iter()
            .map(|m| m.size_bytes)
            .sum(),
        busy,
        own_cpu,
    })
}

async fn rebalance(cluster: &Cluster, parallel: bool, limits: Limits) -> anyhow::Result<Measured> {
    let (since, ticks, own) = (Instant::now(), cpu_ticks(), own_cpu_seconds());
    let options = JobOptions {
        parallel_colocated: parallel,
        parallel_reference: parallel,
        ..JobOptions::default()
    };
    let started = rebalance::start_rebalance(cluster, &options).await?;
    run_job(cluster, started, limits, since, ticks, own).await
}

/// Empties the third worker again and lets it take shards, so the next rebalance repeats the
/// same moves.
async fn restore(cluster: &Cluster, node: i32, limits: Limits) -> anyhow::Result<()> {
    let options = JobOptions {
        parallel_colocated: true,
        ..JobOptions::default()
    };
    let started = rebalance::drain_node(cluster, &node.to_string(), &options).await?;
    run_job(
        cluster,
        started,
        limits,
        Instant::now(),
        cpu_ticks(),
        own_cpu_seconds(),
    )
    .await?;
    nodes::set_node_flags(cluster, &node.to_string(), None, Some(true)).await?;
    Ok(())
}

async fn row_counts(cluster: &Cluster) -> anyhow::Result<(i64, i64, i64)> {
    let row = cluster
        .client()
        .query_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items),
                    (SELECT count(*) FROM products)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

pub async fn run(runs: usize, scale: f64, limits: Limits) -> anyhow::Result<()> {
    let mut pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    let orders = (2_000_000.0 * scale).round().max(1000.0) as i64;
    let load = Instant::now();
    let sql = pg.coordinator.connect().await;
    sql.batch_execute(&dataset_sql(orders)).await?;
    shoal_cluster::reference_table(&cluster, "products").await?;
    shoal_cluster::distribute_table(&cluster, "orders", "id", Some(32), Colocate::Default).await?;
    shoal_cluster::distribute_table(
        &cluster,
        "order_items",
        "order_id",
        None,
        Colocate::With("orders".into()),
    )
    .await?;
    for worker in &pg.workers {
        worker
            .connect()
            .await
            .batch_execute("VACUUM ANALYZE")
            .await?;
    }
    let address = pg.add_worker().await.host_port();
    let third = nodes::add_node(
        &cluster,
        &AddNode {
            address: &address,
            dbname: None,
            should_have_shards: true,
        },
    )
    .await?
    .node_id;
    let counts = row_counts(&cluster).await?;
    eprintln!(
        "loaded {orders} orders, {} order items, {} products in 32 shard groups on 2 workers in {:.0} s; added worker {third}",
        counts.1,
        counts.2,
        load.elapsed().as_secs_f64()
    );

    let (mut sequential, mut parallel, mut ratios) = (vec![], vec![], vec![]);
    let mut busy: Vec<(f64, f64)> = vec![];
    let (mut moves, mut bytes) = (0, 0);
    for run in 0..runs {
        let seq = rebalance(&cluster, false, limits).await?;
        restore(&cluster, third, limits).await?;
        let par = rebalance(&cluster, true, limits).await?;
        restore(&cluster, third, limits).await?;
        anyhow::ensure!(
            row_counts(&cluster).await? == counts,
            "the row counts changed"
        );
        anyhow::ensure!(
            seq.moves == par.moves,
            "the two jobs planned different moves"
        );
        eprintln!(
            "run {}: {} moves, {:.0} MiB: sequential {:.2} s (CPU {:.0}% busy, Shoal {:.2} s), \
             parallel {:.2} s (CPU {:.0}% busy, Shoal {:.2} s), ratio {:.2}",
            run + 1,
            seq.moves,
            seq.bytes as f64 / 1048576.0,
            seq.seconds,
            seq.busy * 100.0,
            seq.own_cpu,
            par.seconds,
            par.busy * 100.0,
            par.own_cpu,
            par.seconds / seq.seconds
        );
        busy.push((seq.busy, par.busy));
        (moves, bytes) = (seq.moves, seq.bytes);
        ratios.push(par.seconds / seq.seconds);
        sequential.push(seq.seconds);
        parallel.push(par.seconds);
    }
    let (seq, par, ratio) = (
        median(&mut sequential),
        median(&mut parallel),
        median(&mut ratios),
    );
    println!(
        "rebalance 2 -> 3 workers: {moves} moves, {:.0} MiB planned, {runs} runs, medians; parallel = \
         both flags, at most {} tasks at once and {} per node",
        bytes as f64 / 1048576.0,
        limits.max_parallel,
        limits.max_parallel_per_node
    );
    let anchors = (0.9..=1.1).contains(&scale);
    println!(
        "sequential:  {seq:.2} s{}",
        if anchors {
            " (goal <= 20 s; Citus 13.2: 72.6 s, 20.1 s with wal_retrieve_retry_interval = 100ms)"
        } else {
            ""
        }
    );
    println!(
        "parallel:    {par:.2} s{}",
        if anchors {
            " (goal <= 10 s; Citus 13.2 with 4 executors: 28.1 s, 12.6 s with 100ms)"
        } else {
            ""
        }
    );
    println!("ratio parallel / sequential, per run: {ratio:.2} (goal <= 0.6)");
    let mut seq_busy: Vec<f64> = busy.iter().map(|b| b.0).collect();
    let mut par_busy: Vec<f64> = busy.iter().map(|b| b.1).collect();
    let (seq_busy, par_busy) = (median(&mut seq_busy), median(&mut par_busy));
    println!(
        "CPU of the whole machine ({} cores) busy: {:.0}% during the sequential job, {:.0}% during \
         the parallel one; the same work at full use would give a ratio of {:.2}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        seq_busy * 100.0,
        par_busy * 100.0,
        seq_busy
    );
    Ok(())
}
