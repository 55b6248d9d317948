//! The query set of the reference data set (2 workers, 32 shards) through the coordinator,
//! against the same rows on one plain server started alongside, in one run: medians in
//! milliseconds, the ratio Shoal / one server, and Citus 13.2's figure measured on this machine
//! (BRIEF.md) with its own ratio to the one server measured alongside it, for comparison, and
//! the same through Shoal's endpoint (aggregates split across the nodes there); then pgbench
//! key lookups (4 clients) on all three.

use std::time::Instant;

use tokio_postgres::Client;

use crate::median;
use crate::moves::shoal_on;
use crate::rebalance::dataset_sql;
use shoal_cluster::Colocate;
use shoal_testkit::TestCluster;

/// Label, query, and the anchor's medians in ms (BRIEF.md): Citus, and one plain server
/// measured with it. The machine's speed changes from run to run, so a goal "within 1.5x of
/// Citus" is read both on the times and on the ratios to one server of each run.
const QUERIES: &[(&str, &str, f64, f64)] = &[
    ("Q1 count(*)", "SELECT count(*) FROM orders", 144.0, 141.0),
    (
        "Q2 sum, avg",
        "SELECT sum(amount), avg(amount) FROM orders",
        334.0,
        363.0,
    ),
    (
        "Q3 GROUP BY customer_id % 100",
        "SELECT customer_id % 100, count(*), sum(amount) FROM orders GROUP BY 1",
        504.0,
        504.0,
    ),
    (
        "Q4 colocated join, count",
        "SELECT count(*), sum(i.qty) FROM orders o JOIN order_items i ON i.order_id = o.id",
        1197.0,
        1883.0,
    ),
    (
        "Q5 join GROUP BY o.id LIMIT",
        "SELECT o.id, sum(i.qty) FROM orders o JOIN order_items i ON i.order_id = o.id \
         GROUP BY o.id ORDER BY 2 DESC, 1 LIMIT 10",
        2699.0,
        2932.0,
    ),
    (
        "Q6 key lookup",
        "SELECT * FROM orders WHERE id = 12345",
        0.96,
        0.13,
    ),
    (
        "Q7 join of one key",
        "SELECT o.id, i.id, i.qty FROM orders o JOIN order_items i ON i.order_id = o.id \
         WHERE o.id = 12345",
        1.97,
        0.16,
    ),
    (
        "Q8 reference join, LIKE",
        "SELECT count(*) FROM orders o JOIN products p ON p.id = o.customer_id \
         WHERE p.name LIKE 'product-1%'",
        838.0,
        354.0,
    ),
    (
        "Q9 selective count",
        "SELECT count(*) FROM orders WHERE amount > 990",
        394.0,
        232.0,
    ),
    (
        "Q10 ORDER BY LIMIT",
        "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 10",
        519.0,
        447.0,
    ),
];

pub async fn run(
    orders: i64,
    runs: usize,
    only: Option<String>,
    scatter_connections: usize,
) -> anyhow::Result<()> {
    let (single, pg, _cluster) = load_reference(orders).await?;
    let plain = single.coordinator.connect().await;
    let sql = pg.coordinator.connect().await;
    let options = shoal_endpoint::Options {
        scatter_connections,
    };
    let endpoint = crate::endpoint::InProcess::start(&pg, options).await?;
    let (app, connection) = tokio_postgres::connect(&endpoint.uri, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    println!(
        "Queries on the reference data set ({orders} orders), medians of {runs} runs, ms; \
         the endpoint splits reads over {scatter_connections} connection(s) per node"
    );
    println!(
        "{:<30} {:>11} {:>11} {:>8} {:>11} {:>8} {:>10} {:>8}",
        "query", "one server", "coordinator", "ratio", "endpoint", "ratio", "Citus", "ratio"
    );
    for (label, query, citus, citus_single) in QUERIES {
        if only.as_deref().is_some_and(|o| !label.starts_with(o)) {
            continue;
        }
        // Both must answer alike, and a first run warms the caches.
        let (expected, got) = (answer(&plain, query).await?, answer(&sql, query).await?);
        anyhow::ensure!(
            expected == got,
            "{label}: the coordinator's answer differs from one server's"
        );
        // Through the endpoint as written (a wrapping subquery would take another path).
        anyhow::ensure!(
            simple_answer(&plain, query).await? == simple_answer(&app, query).await?,
            "{label}: the endpoint's answer differs from one server's"
        );
        let (mut one, mut shoal, mut through) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            one.push(timed_ms(&plain, query).await?);
            shoal.push(timed_ms(&sql, query).await?);
            through.push(timed_ms(&app, query).await?);
        }
        let (one, shoal, through) = (median(&mut one), median(&mut shoal), median(&mut through));
        println!(
            "{label:<30} {one:>11.2} {shoal:>11.2} {:>7.2}x {through:>11.2} {:>7.2}x {citus:>10.2} \
             {:>7.2}x",
            shoal / one,
            through / one,
            citus / citus_single
        );
    }
    if only.is_none() {
        crate::endpoint::scripts(&single, &pg, &endpoint.uri, orders, 10, 4).await?;
    }
    Ok(())
}

/// The reference data set on one plain server and on Shoal with 2 workers (32 shards),
/// vacuumed and analysed.
pub async fn load_reference(
    orders: i64,
) -> anyhow::Result<(TestCluster, TestCluster, shoal_cluster::Cluster)> {
    let load = Instant::now();
    let single = TestCluster::start(0).await;
    let plain = single.coordinator.connect().await;
    plain.batch_execute(&dataset_sql(orders)).await?;
    plain.batch_execute("VACUUM ANALYZE").await?;

    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
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
    sql.batch_execute("ANALYZE products").await?;
    eprintln!(
        "loaded {orders} orders, {} order items, 100000 products (one server, and Shoal on 2 \
         workers, 32 shards) in {:.0} s",
        orders * 2,
        load.elapsed().as_secs_f64()
    );
    Ok((single, pg, cluster))
}

/// The query's rows by the simple protocol, as text, sorted.
async fn simple_answer(client: &Client, query: &str) -> anyhow::Result<Vec<String>> {
    let mut rows: Vec<String> = client
        .simple_query(query)
        .await?
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| format!("{:?}", row.get(i)))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    Ok(rows)
}

/// The query's rows as text, sorted (the grouped query has no order).
async fn answer(client: &Client, query: &str) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(&format!("SELECT t::text FROM ({query}) t"), &[])
        .await?;
    let mut rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    rows.sort();
    Ok(rows)
}

async fn timed_ms(client: &Client, query: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    client.query(query, &[]).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
