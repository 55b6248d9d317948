//! The coordinator plans a colocated join to run on the workers, one remote query per shard
//! pair, with the same answer as when it joins itself.

mod common;

use tokio_postgres::Client;

const GROUPED_JOIN: &str =
    "SELECT o.id, sum(i.qty) FROM orders o JOIN items i ON i.order_id = o.id GROUP BY o.id";

async fn explain(sql: &Client, query: &str) -> String {
    sql.query(&format!("EXPLAIN (VERBOSE, COSTS OFF) {query}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn sorted_rows(sql: &Client, query: &str) -> Vec<String> {
    let mut rows: Vec<String> = sql
        .query(&format!("SELECT t::text FROM ({query}) t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn colocated_joins_run_on_the_workers() {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, amount int);
             INSERT INTO orders SELECT g, g % 100 FROM generate_series(1, 20000) g;
             CREATE TABLE items (order_id bigint, id int, qty int, PRIMARY KEY (order_id, id));
             INSERT INTO items SELECT (g + 1) / 2, g, g % 7 FROM generate_series(1, 40000) g;",
        )
        .await
        .unwrap();
    for args in [
        &[
            "table",
            "distribute",
            "orders",
            "--column",
            "id",
            "--shards",
            "8",
        ][..],
        &[
            "table",
            "distribute",
            "items",
            "--column",
            "order_id",
            "--colocate-with",
            "orders",
        ],
    ] {
        shoal.cli(args).await.assert_ok();
    }
    // The database's settings reach sessions opened after `shoal init`: one join per shard
    // pair on its node, all read at once.
    let sql = shoal.coordinator().await;
    let plan = explain(&sql, GROUPED_JOIN).await;
    assert!(
        plan.contains("Async Foreign Scan")
            && plan.contains("Relations: (public.orders_")
            && plan.contains("INNER JOIN (public.items_"),
        "the join is not pushed down:\n{plan}"
    );
    let pushed = sorted_rows(&sql, GROUPED_JOIN).await;
    assert_eq!(pushed.len(), 20000);
    // A session grouping by the distribution column may run the aggregate there too.
    let aggregating = shoal.coordinator().await;
    aggregating
        .batch_execute("SET enable_partitionwise_aggregate = on")
        .await
        .unwrap();
    let plan = explain(&aggregating, GROUPED_JOIN).await;
    assert!(
        plan.contains("Relations: Aggregate on ((public.orders_"),
        "the aggregate is not pushed down:\n{plan}"
    );
    assert_eq!(sorted_rows(&aggregating, GROUPED_JOIN).await, pushed);
    // Without the settings the coordinator joins, with the same answer.
    let local = shoal.coordinator().await;
    local
        .batch_execute("SET enable_partitionwise_join = off")
        .await
        .unwrap();
    assert!(!explain(&local, GROUPED_JOIN)
        .await
        .contains("INNER JOIN (public.items_"));
    assert_eq!(sorted_rows(&local, GROUPED_JOIN).await, pushed);

    // Servers made before the option get it from `shoal init`; an operator's own value stays.
    let server_options = || async {
        sql.query_one(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'shoal_node_1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Vec<String>>(0)
    };
    sql.batch_execute(
        "ALTER SERVER shoal_node_1 OPTIONS (DROP use_remote_estimate, DROP application_name)",
    )
    .await
    .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    let options = server_options().await;
    assert!(options.contains(&"use_remote_estimate=true".to_string()));
    // The name deadlock detection knows a coordinator session's node connections by.
    assert!(options.contains(&"application_name=shoal coordinator %p".to_string()));
    sql.batch_execute("ALTER SERVER shoal_node_1 OPTIONS (SET use_remote_estimate 'false')")
        .await
        .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    assert!(server_options()
        .await
        .contains(&"use_remote_estimate=false".to_string()));
}
