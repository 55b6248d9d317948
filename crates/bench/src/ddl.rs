//! DDL on the reference data set's `orders` (2,000,000 rows, 32 shards on two workers) against
//! the same statement on a plain table of the same rows on one server, in one run: ADD COLUMN
//! with a constant default, CREATE INDEX through the coordinator, CREATE INDEX CONCURRENTLY
//! through `shoal ddl` (the coordinator refuses it). Each change is undone (not measured)
//! before the next run.

use std::time::Instant;

use tokio_postgres::Client;

use crate::median;
use crate::moves::shoal_on;
use crate::rebalance::orders_sql;
use shoal_catalog::ConnectParams;
use shoal_testkit::TestCluster;

/// Statement measured, and the one that undoes it.
const STATEMENTS: &[(&str, &str, &str)] = &[
    (
        "ADD COLUMN ... DEFAULT 7",
        "ALTER TABLE orders ADD COLUMN flag int DEFAULT 7",
        "ALTER TABLE orders DROP COLUMN flag",
    ),
    (
        "CREATE INDEX",
        "CREATE INDEX orders_by_customer ON orders (customer_id)",
        "DROP INDEX orders_by_customer",
    ),
    (
        "CREATE INDEX CONCURRENTLY",
        "CREATE INDEX CONCURRENTLY orders_by_amount ON orders (amount)",
        "DROP INDEX orders_by_amount",
    ),
];

pub async fn run(orders: i64, runs: usize) -> anyhow::Result<()> {
    let single = TestCluster::start(0).await;
    let plain = single.coordinator.connect().await;
    plain.batch_execute(&orders_sql(orders)).await?;
    plain.batch_execute("VACUUM ANALYZE orders").await?;

    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    let sql = pg.coordinator.connect().await;
    sql.batch_execute(&orders_sql(orders)).await?;
    shoal_cluster::distribute_table(
        &cluster,
        "orders",
        "id",
        Some(32),
        shoal_cluster::Colocate::Default,
    )
    .await?;
    for worker in &pg.workers {
        worker
            .connect()
            .await
            .batch_execute("VACUUM ANALYZE")
            .await?;
    }
    let params = ConnectParams::parse(&pg.coordinator_uri())?;

    println!(
        "DDL on orders ({orders} rows; Shoal: 32 shards on 2 workers), medians of {runs} runs"
    );
    println!(
        "{:<28} {:>14} {:>12} {:>8}",
        "statement", "one server", "Shoal", "ratio"
    );
    for (label, statement, undo) in STATEMENTS {
        let mut one = Vec::new();
        let mut shoal = Vec::new();
        for _ in 0..runs {
            one.push(timed(&plain, statement).await?);
            plain.batch_execute(undo).await?;
            let started = Instant::now();
            if statement.contains("CONCURRENTLY") {
                let mut client = shoal_catalog::connect(&params, "shoal-bench ddl").await?;
                shoal_ddl::apply(&params, &mut client, statement).await?;
            } else {
                sql.batch_execute(statement).await?;
            }
            shoal.push(started.elapsed().as_secs_f64());
            let mut client = shoal_catalog::connect(&params, "shoal-bench ddl").await?;
            shoal_ddl::apply(&params, &mut client, undo).await?;
        }
        let (one, shoal) = (median(&mut one), median(&mut shoal));
        println!(
            "{label:<28} {:>12.3} s {:>10.3} s {:>7.2}x",
            one,
            shoal,
            shoal / one
        );
    }
    Ok(())
}

async fn timed(client: &Client, statement: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    client.batch_execute(statement).await?;
    Ok(started.elapsed().as_secs_f64())
}
