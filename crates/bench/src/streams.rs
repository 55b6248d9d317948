//! Stream tables: differential vs full refresh at several change rates, a refresh with nothing
//! to do, capture throughput, and freshness under steady writes.

use std::time::{Duration, Instant};

use crate::median;
use crate::moves::shoal_on;
use shoal_cluster::Cluster;
use shoal_stream::runtime::{self, SchedulerConfig, StreamOptions};
use shoal_stream::Mode;
use shoal_testkit::TestCluster;

const QUERIES: &[(&str, &str)] = &[
    // Keeps half the rows: the full refresh rewrites them all.
    ("st_filter", "SELECT id, grp, val FROM src WHERE val % 2 = 0"),
    // Keeps 1% of the rows: the full refresh is cheap, so the ratio is low.
    ("st_filter_1pct", "SELECT id, grp, val FROM src WHERE val < 1000"),
    ("st_aggregate", "SELECT grp, count(*) AS n, sum(val) AS total FROM src GROUP BY grp"),
    (
        "st_join",
        "SELECT d.label, count(*) AS n, sum(s.val) AS total FROM src s JOIN dim d ON d.grp = s.grp GROUP BY d.label",
    ),
    // Half the rows unmatched: their NULL-extended rows form one group.
    (
        "st_left_join",
        "SELECT d.label, count(*) AS n, sum(s.val) AS total FROM src s \
         LEFT JOIN dim d ON d.grp = s.grp AND d.grp < 500 GROUP BY d.label",
    ),
    (
        "st_having",
        "SELECT grp, count(*) AS n, sum(val) AS total FROM src GROUP BY grp \
         HAVING sum(val) > 50000 * count(*)",
    ),
    // Recomputes the groups whose values changed, found by the index on grp.
    ("st_count_distinct", "SELECT grp, count(DISTINCT val) AS vals FROM src GROUP BY grp"),
    (
        "st_union_all",
        "SELECT id, val FROM src WHERE val % 3 = 0 UNION ALL SELECT id, grp FROM src WHERE grp < 100",
    ),
];

/// `src` (rows, two shards, filled on the workers directly) and `dim` (a reference table).
async fn setup(pg: &TestCluster, cluster: &Cluster, rows: i64) -> anyhow::Result<()> {
    let sql = pg.coordinator.connect().await;
    sql.batch_execute(
        "CREATE TABLE src (id bigint PRIMARY KEY, grp int, val int, pad text);
         CREATE INDEX src_grp ON src (grp);
         CREATE TABLE dim (grp int PRIMARY KEY, label text);
         INSERT INTO dim SELECT g, 'label ' || (g % 50) FROM generate_series(0, 999) g;",
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the tables: {}", shoal_cluster::pg_message(&e)))?;
    shoal_cluster::reference_table(cluster, "dim").await?;
    shoal_cluster::distribute_table(cluster, "src", "id", Some(2), shoal_cluster::Colocate::None)
        .await?;
    let shards = sql
        .query("SELECT shard_table, shard_index, port FROM shoal.shards WHERE table_name = 'src'::regclass", &[])
        .await
        .map_err(|e| anyhow::anyhow!("listing shards: {}", shoal_cluster::pg_message(&e)))?;
    for shard in shards {
        let (table, index, port): (String, i32, i32) = (shard.get(0), shard.get(1), shard.get(2));
        let worker = pg
            .workers
            .iter()
            .find(|w| i32::from(w.port) == port)
            .expect("a worker");
        let client = worker.connect().await;
        // A partitioned table of the same shape on the worker tells which rows hash to this
        // shard, exactly as the coordinator routes them.
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS bench_hash (id bigint) PARTITION BY HASH (id);",
            )
            .await?;
        client
            .execute(
                &format!(
                    "INSERT INTO {table} SELECT g, (g % 1000)::int, (g % 100000)::int, repeat('x', 40)
                     FROM generate_series(1::bigint, $1) g
                     WHERE satisfies_hash_partition('bench_hash'::regclass, 2, $2, g)"
                ),
                &[&rows, &index],
            )
            .await
            .map_err(|e| anyhow::anyhow!("filling {table}: {}", shoal_cluster::pg_message(&e)))?;
        client
            .batch_execute("DROP TABLE bench_hash")
            .await
            .map_err(|e| anyhow::anyhow!("{}", shoal_cluster::pg_message(&e)))?;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .map_err(|e| anyhow::anyhow!("{}", shoal_cluster::pg_message(&e)))?;
    }
    Ok(())
}

async fn stream_id(cluster: &Cluster, name: &str) -> anyhow::Result<i32> {
    Ok(cluster
        .client()
        .query_one(
            "SELECT stream_id FROM shoal.stream_table WHERE relid = to_regclass($1)",
            &[&name],
        )
        .await?
        .get(0))
}

pub async fn run(rows: i64) -> anyhow::Result<()> {
    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    eprintln!("loading {rows} rows...");
    setup(&pg, &cluster, rows).await?;
    let sql = pg.coordinator.connect().await;
    let options = StreamOptions {
        schedule: Duration::from_secs(3600),
        mode: Mode::Differential,
    };
    for (name, query) in QUERIES {
        runtime::create_stream(&cluster, name, query, &options).await?;
    }
    println!(
        "source: {rows} rows in 2 shards on 2 workers, a 1,000-row reference table; medians of 3"
    );

    // Full refresh: the same work whatever changed.
    let mut full = Vec::new();
    for (name, _) in QUERIES {
        let id = stream_id(&cluster, name).await?;
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(runtime::refresh_stream(&cluster, id, true).await?.ms);
        }
        full.push(median(&mut times));
    }

    println!("| change | view | full refresh | differential | speed-up (goal >= 20x at 1%) |");
    for fraction in [0.001_f64, 0.01, 0.1] {
        let modulus = (1.0 / fraction).round() as i64;
        for (i, (name, _)) in QUERIES.iter().enumerate() {
            let id = stream_id(&cluster, name).await?;
            let mut times = Vec::new();
            for round in 0..3 {
                // A different slice of rows each round, changed through the coordinator.
                sql.execute(
                    "UPDATE src SET val = val + 1 WHERE id % $1 = $2",
                    &[&modulus, &(round as i64)],
                )
                .await?;
                runtime::poll_all(&cluster, 1_000_000, 5, true).await?;
                times.push(runtime::refresh_stream(&cluster, id, false).await?.ms);
                // Keep the other views level, untimed.
                for (other, _) in QUERIES {
                    let other_id = stream_id(&cluster, other).await?;
                    if other_id != id {
                        runtime::refresh_stream(&cluster, other_id, false).await?;
                    }
                }
            }
            let differential = median(&mut times);
            println!(
                "| {:.1}% | {name} | {:.0} ms | {:.1} ms | {:.1}x |",
                fraction * 100.0,
                full[i],
                differential,
                full[i] / differential
            );
        }
    }

    // A refresh with nothing to apply.
    let id = stream_id(&cluster, "st_aggregate").await?;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(runtime::refresh_stream(&cluster, id, false).await?.ms);
    }
    println!(
        "refresh with no change (st_aggregate, median of 20): {:.1} ms (goal <= 5 ms)",
        median(&mut idle)
    );

    // Capture throughput: changes made first, then read into the coordinator as fast as it goes.
    let changed = (rows / 5).min(200_000);
    sql.execute("UPDATE src SET val = val + 1 WHERE id <= $1", &[&changed])
        .await?;
    let started = Instant::now();
    let mut captured = 0;
    loop {
        let report = runtime::poll_all(&cluster, 50_000, 5, true).await?;
        captured += report.changes;
        if report.changes == 0 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "capture: {captured} changes in {seconds:.2} s = {:.0} changes/s (goal >= 50,000)",
        captured as f64 / seconds
    );
    for (name, _) in QUERIES {
        let id = stream_id(&cluster, name).await?;
        runtime::refresh_stream(&cluster, id, false).await?;
    }

    // The earlier rounds left dead rows (updated sources, applied buffer rows) whose vacuuming
    // would otherwise land in the middle of the freshness measurement: settle them first.
    for server in std::iter::once(&pg.coordinator).chain(pg.workers.iter()) {
        let client = server.connect().await;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .map_err(|e| anyhow::anyhow!("{}", shoal_cluster::pg_message(&e)))?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| anyhow::anyhow!("{}", shoal_cluster::pg_message(&e)))?;
    }
    freshness(&pg, &cluster).await
}

/// Commit-to-visible lag of a 1 s stream table while inserts arrive at 5,000 rows/s.
async fn freshness(pg: &TestCluster, cluster: &Cluster) -> anyhow::Result<()> {
    let sql = pg.coordinator.connect().await;
    sql.batch_execute("CREATE TABLE fresh (id bigint PRIMARY KEY, v int)")
        .await?;
    shoal_cluster::distribute_table(
        cluster,
        "fresh",
        "id",
        Some(2),
        shoal_cluster::Colocate::None,
    )
    .await?;
    let options = StreamOptions {
        schedule: Duration::from_secs(1),
        mode: Mode::Differential,
    };
    runtime::create_stream(
        cluster,
        "st_fresh",
        "SELECT id, v FROM fresh WHERE v >= 0",
        &options,
    )
    .await?;
    let params = cluster.params().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = {
        let stop = stop.clone();
        let params = params.clone();
        tokio::spawn(async move {
            let cluster = Cluster::connect(params).await?;
            let config = SchedulerConfig::new("bench".into());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                runtime::tick(&cluster, &config).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    // The writer: 50 rows every 10 ms; each batch's commit time is remembered.
    let writer = {
        let stop = stop.clone();
        let uri = pg.coordinator_uri();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let mut commits = Vec::new();
            let mut next = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                client
                    .execute(
                        "INSERT INTO fresh SELECT g, 1 FROM generate_series($1::bigint, $1 + 49) g",
                        &[&next],
                    )
                    .await?;
                commits.push((next + 49, Instant::now()));
                next += 50;
            }
            Ok::<Vec<(i64, Instant)>, anyhow::Error>(commits)
        })
    };
    // The watcher: how far the stream table has got, every 20 ms.
    let mut seen: Vec<(Instant, i64)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let max: Option<i64> = sql
            .query_one("SELECT max(id) FROM st_fresh", &[])
            .await?
            .get(0);
        seen.push((Instant::now(), max.unwrap_or(-1)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let commits = writer.await??;
    scheduler.await??;
    let mut lags: Vec<f64> = commits
        .iter()
        .filter_map(|(id, at)| {
            seen.iter()
                .find(|(_, max)| max >= id)
                .map(|(when, _)| when.duration_since(*at).as_secs_f64())
        })
        .collect();
    let rate = commits.len() as f64 * 50.0 / started.elapsed().as_secs_f64();
    lags.sort_by(f64::total_cmp);
    println!(
        "freshness at a 1 s schedule under {rate:.0} inserts/s: p50 {:.2} s, p99 {:.2} s (goal <= 2 s), max {:.2} s, {} of {} batches seen",
        crate::percentile(&lags, 50.0),
        crate::percentile(&lags, 99.0),
        lags.last().copied().unwrap_or(f64::NAN),
        lags.len(),
        commits.len()
    );
    Ok(())
}
