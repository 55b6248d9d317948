//! Planner statistics of the reference data set's `orders` (2,000,000 rows, 32 shards on two
//! workers) on the coordinator: a plain `ANALYZE orders` there against Shoal's refresh
//! (`shoal analyze`: the nodes analyze their shards, the coordinator takes the shards'
//! statistics by its version's method), forced, with nothing changed, and with one shard
//! changed by 20%.

use std::time::Instant;

use crate::median;
use crate::moves::shoal_on;
use crate::rebalance::orders_sql;
use shoal_cluster::statistics::{self, Scope};
use shoal_testkit::TestCluster;

pub async fn run(orders: i64, runs: usize) -> anyhow::Result<()> {
    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    let sql = pg.coordinator.connect().await;
    sql.batch_execute(&orders_sql(orders)).await?;
    let started = Instant::now();
    shoal_cluster::distribute_table(
        &cluster,
        "orders",
        "id",
        Some(32),
        shoal_cluster::Colocate::Default,
    )
    .await?;
    let distributed = started.elapsed().as_secs_f64();
    let method = statistics::refresh(&cluster, &Scope::default(), |_| {})
        .await?
        .method;
    let scope = Scope {
        tables: vec!["orders".into()],
        ..Scope::default()
    };
    let forced = Scope {
        force: true,
        ..scope.clone()
    };
    let shard: (String, u16) = {
        let row = sql
            .query_one(
                "SELECT shard_table, port FROM shoal.shards
                 WHERE table_name = 'orders'::regclass ORDER BY shard_index LIMIT 1",
                &[],
            )
            .await?;
        (row.get(0), row.get::<_, i32>(1) as u16)
    };
    let node = pg
        .workers
        .iter()
        .find(|w| w.port == shard.1)
        .expect("a worker holds it")
        .connect()
        .await;

    let (mut plain, mut shoal, mut idle, mut changed) = (vec![], vec![], vec![], vec![]);
    let mut on_coordinator = vec![];
    for _ in 0..runs {
        let started = Instant::now();
        sql.batch_execute("ANALYZE orders").await?;
        plain.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let report = statistics::refresh(&cluster, &forced, |_| {}).await?;
        shoal.push(started.elapsed().as_secs_f64());
        on_coordinator.push(report.tables[0].elapsed_ms / 1000.0);

        let started = Instant::now();
        statistics::refresh(&cluster, &scope, |_| {}).await?;
        idle.push(started.elapsed().as_secs_f64());

        node.batch_execute(&format!(
            "UPDATE {} SET amount = amount + 1 WHERE id % 5 = 0; SELECT pg_stat_force_next_flush()",
            shard.0
        ))
        .await?;
        let started = Instant::now();
        let report = statistics::refresh(&cluster, &scope, |_| {}).await?;
        changed.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            report.tables[0].refreshed >= 1,
            "the changed shard was not refreshed"
        );
    }
    println!(
        "statistics of orders ({orders} rows, 32 shards on 2 workers, PostgreSQL {}): method {:?}, \
         medians of {runs} runs; distribute itself (with its refresh) took {distributed:.2} s",
        pg.coordinator.bins.major, method
    );
    println!("{:<44} {:>10}", "what", "seconds");
    for (label, values) in [
        ("ANALYZE orders on the coordinator", &mut plain),
        ("shoal analyze --force (every shard)", &mut shoal),
        ("  of which the coordinator's part", &mut on_coordinator),
        ("shoal analyze, nothing changed", &mut idle),
        ("shoal analyze, one shard 20% updated", &mut changed),
    ] {
        println!("{label:<44} {:>10.3}", median(values));
    }
    Ok(())
}
