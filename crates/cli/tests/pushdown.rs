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

/// Two colocated tables, `orders` first: 20,000 orders of two items each, 8 shards.
async fn orders_and_items() -> common::Shoal {
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
    shoal
}

/// `use_remote_estimate` of each foreign partition of `table`, by shard index (None: not set
/// on the partition, the server's value applies).
async fn partition_estimates(sql: &Client, table: &str) -> Vec<Option<String>> {
    sql.query(
        "SELECT (SELECT split_part(o, '=', 2) FROM unnest(f.ftoptions) o
                 WHERE split_part(o, '=', 1) = 'use_remote_estimate')
         FROM shoal.shards s
         JOIN pg_foreign_table f ON f.ftrelid = s.shard_table::regclass
         WHERE s.table_name = to_regclass($1)
         ORDER BY s.shard_index",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn colocated_joins_run_on_the_workers() {
    let shoal = orders_and_items().await;
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
    sql.batch_execute("ALTER SERVER shoal_node_1 OPTIONS (DROP use_remote_estimate)")
        .await
        .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    assert!(server_options()
        .await
        .contains(&"use_remote_estimate=true".to_string()));
    sql.batch_execute("ALTER SERVER shoal_node_1 OPTIONS (SET use_remote_estimate 'false')")
        .await
        .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    assert!(server_options()
        .await
        .contains(&"use_remote_estimate=false".to_string()));
}

#[tokio::test]
async fn the_first_table_of_a_group_plans_on_local_estimates_through_moves_and_upgrades() {
    let shoal = orders_and_items().await;
    let sql = shoal.coordinator().await;
    let local = vec![Some("false".to_string()); 8];
    assert_eq!(partition_estimates(&sql, "orders").await, local);
    assert_eq!(partition_estimates(&sql, "items").await, vec![None; 8]);
    // A key lookup of the first table asks the node nothing at planning time, and the join
    // of the two is still costed by the nodes (the items side asks) and pushed down.
    let plan = explain(&sql, GROUPED_JOIN).await;
    assert!(
        plan.contains("INNER JOIN (public.items_"),
        "the join is not pushed down:\n{plan}"
    );

    // A move recreates the shard group's foreign tables with the same choice.
    let row = sql
        .query_one(
            "SELECT shard_id, node_id FROM shoal.shards WHERE table_name = 'orders'::regclass
             ORDER BY shard_index LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (shard, node): (i64, i32) = (row.get(0), row.get(1));
    let to = if node == 1 { "2" } else { "1" };
    shoal
        .cli(&["shard", "move", &shard.to_string(), "--to", to])
        .await
        .assert_ok();
    assert_eq!(partition_estimates(&sql, "orders").await, local);
    assert_eq!(partition_estimates(&sql, "items").await, vec![None; 8]);

    // Partitions made before the choice existed get it from `shoal init`; an operator's own
    // value stays.
    let first_two: Vec<String> = sql
        .query(
            "SELECT shard_table FROM shoal.shards WHERE table_name = 'orders'::regclass
             ORDER BY shard_index LIMIT 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    sql.batch_execute(&format!(
        "SET shoal.manage_ddl = off;
         ALTER FOREIGN TABLE {} OPTIONS (DROP use_remote_estimate);
         ALTER FOREIGN TABLE {} OPTIONS (SET use_remote_estimate 'true');
         RESET shoal.manage_ddl",
        first_two[0], first_two[1]
    ))
    .await
    .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    let mut expected = local.clone();
    expected[1] = Some("true".to_string());
    assert_eq!(partition_estimates(&sql, "orders").await, expected);
}
