//! The coordinator's planner statistics of a distributed table stay true: after distribute,
//! after a move, after bulk writes on the shards (`shoal analyze`, and `shoal serve`'s loop),
//! for a table with a quoted name in a schema with a space.

mod common;

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use common::Shoal;

const TABLE: &str = r#""my s"."Order ""Items""""#;
const LINES: &str = r#""my s".lines"#;
const ROWS: i64 = 20000;
const CUSTOMERS: i64 = 2000;

/// One shard of `TABLE`: its id, index, quoted shard table, node and worker index.
struct ShardInfo {
    shard_id: i64,
    index: i32,
    table: String,
    node_id: i32,
    worker: usize,
}

async fn shards(shoal: &Shoal, table: &str) -> Vec<ShardInfo> {
    let sql = shoal.coordinator().await;
    let rows = sql
        .query(
            "SELECT shard_id, shard_index, shard_table, node_id FROM shoal.shards
             WHERE table_name = to_regclass($1) ORDER BY shard_index",
            &[&table],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for row in rows {
        let table: String = row.get(2);
        out.push(ShardInfo {
            shard_id: row.get(0),
            index: row.get(1),
            worker: shoal.worker_of_shard(&table).await,
            table,
            node_id: row.get(3),
        });
    }
    out
}

async fn reltuples(sql: &Client, relation: &str) -> f32 {
    sql.query_one(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
        &[&relation],
    )
    .await
    .unwrap()
    .get(0)
}

/// Column statistics of a relation: `name n_distinct null_frac`, by column.
async fn column_stats(sql: &Client, relation: &str, inherited: bool) -> Vec<String> {
    sql.query(
        "SELECT format('%s %s %s', s.attname, s.n_distinct, s.null_frac)
         FROM pg_stats s
         JOIN pg_class c ON c.relname = s.tablename
         JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
         WHERE c.oid = to_regclass($1) AND s.inherited = $2 ORDER BY s.attname",
        &[&relation, &inherited],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The shard's partitioned table on the coordinator (`<shard>_shard`).
fn middle(shard_table: &str) -> String {
    format!("{}_shard\"", shard_table.trim_end_matches('"'))
}

/// Every shard's foreign table and partitioned table on the coordinator have the shard's row
/// count and column statistics as its node has them, and the table `total` rows (what it had
/// when it was last refreshed).
async fn assert_statistics_true(shoal: &Shoal, total: i64) {
    let sql = shoal.coordinator().await;
    for shard in shards(shoal, TABLE).await {
        let node = shoal.worker(shard.worker).await;
        let count: i64 = node
            .query_one(&format!("SELECT count(*) FROM {}", shard.table), &[])
            .await
            .unwrap()
            .get(0);
        // Shards this small are analyzed whole, so every count is exact.
        assert_eq!(reltuples(&node, &shard.table).await, count as f32);
        assert_eq!(
            reltuples(&sql, &shard.table).await,
            count as f32,
            "the foreign table of shard {}",
            shard.shard_id
        );
        assert_eq!(
            reltuples(&sql, &middle(&shard.table)).await,
            count as f32,
            "the partitioned table of shard {}",
            shard.shard_id
        );
        let on_node = column_stats(&node, &shard.table, false).await;
        assert_eq!(on_node.len(), 4, "{on_node:?}");
        assert_eq!(column_stats(&sql, &shard.table, false).await, on_node);
        assert_eq!(
            column_stats(&sql, &middle(&shard.table), true).await,
            on_node
        );
    }
    assert_eq!(reltuples(&sql, TABLE).await, total as f32);
    assert_eq!(column_stats(&sql, TABLE, true).await.len(), 4);
}

/// Adds `rows` rows of new customers to one shard, on its node, and makes the node's counters
/// show them at once (they are otherwise flushed up to a second later).
async fn grow_shard(shoal: &Shoal, shard: &ShardInfo, rows: i64, first_key: i64) {
    let sql = shoal.coordinator().await;
    let keys: Vec<i64> = sql
        .query_one(
            "SELECT array_agg(g) FROM (SELECT g FROM generate_series($1::bigint, $1 + 1000000) g
             WHERE satisfies_hash_partition(to_regclass($2)::oid, 4, $3, g) LIMIT $4) k",
            &[&first_key, &TABLE, &shard.index, &rows],
        )
        .await
        .unwrap()
        .get(0);
    let node = shoal.worker(shard.worker).await;
    node.execute(
        &format!(
            "INSERT INTO {} (id, \"customer id\", status, note)
             SELECT k, k, 'new', NULL FROM unnest($1::bigint[]) k",
            shard.table
        ),
        &[&keys],
    )
    .await
    .unwrap();
    node.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

/// Waits until no session but the autovacuum's is left on any worker: the writes of sessions
/// that ended are in the nodes' counters then (a backend flushes its counters before it leaves
/// pg_stat_activity, a live one up to seconds after its writes), so the next look at them is
/// final.
async fn quiesce(shoal: &Shoal) {
    for i in 0..shoal.pg.workers.len() {
        let node = shoal.worker(i).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let others: i64 = node
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()
                       AND (backend_type = 'client backend'
                            OR backend_type LIKE 'logical replication%worker')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if others == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "sessions linger on worker {i}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `shoal analyze` once the nodes' counters are final, so that a run after it has nothing to
/// do (writes counted after an analysis they were part of look like new ones, once).
async fn settle(shoal: &Shoal) {
    quiesce(shoal).await;
    shoal.cli(&["analyze"]).await.assert_ok();
    quiesce(shoal).await;
}

async fn estimated_rows(sql: &Client, query: &str) -> f64 {
    let plan: serde_json::Value = sql
        .query_one(&format!("EXPLAIN (FORMAT JSON) {query}"), &[])
        .await
        .unwrap()
        .get(0);
    plan[0]["Plan"]["Plan Rows"].as_f64().unwrap()
}

/// `TABLE` (20,000 rows, 4 shards) and `LINES` colocated with it, both distributed.
async fn create_tables(shoal: &Shoal) {
    let sql = shoal.coordinator().await;
    sql.batch_execute(&format!(
        "CREATE SCHEMA \"my s\";
         CREATE TABLE {TABLE} (id bigint, \"customer id\" bigint, status text, note text,
                               PRIMARY KEY (\"customer id\", id));
         INSERT INTO {TABLE}
         SELECT g, g % {CUSTOMERS}, (ARRAY['new', 'paid', 'sent'])[1 + g % 3],
                CASE WHEN g % 4 = 0 THEN NULL ELSE 'n' || g % 50 END
         FROM generate_series(1, {ROWS}) g;
         CREATE TABLE {LINES} (\"customer id\" bigint, order_id bigint, qty int);
         INSERT INTO {LINES} SELECT g % {CUSTOMERS}, g, g % 7 FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            TABLE,
            "--column",
            "\"customer id\"",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            LINES,
            "--column",
            "\"customer id\"",
            "--colocate-with",
            TABLE,
        ])
        .await
        .assert_ok();
}

#[tokio::test]
async fn coordinator_statistics_follow_distribute_moves_and_writes() {
    let shoal = common::start(2).await;
    create_tables(&shoal).await;
    assert_statistics_true(&shoal, ROWS).await;

    // The table's own statistics reach the planner: without them it guesses 200 groups.
    let sql = shoal.coordinator().await;
    let groups = estimated_rows(
        &sql,
        &format!("SELECT \"customer id\", count(*) FROM {TABLE} GROUP BY 1"),
    )
    .await;
    assert!(
        (CUSTOMERS as f64 / 2.0..=CUSTOMERS as f64 * 2.0).contains(&groups),
        "estimated {groups} groups of {CUSTOMERS}"
    );
    // The colocated join still runs on the nodes, one remote join per shard pair.
    let plan: Vec<String> = sql
        .query(
            &format!(
                "EXPLAIN (VERBOSE, COSTS OFF) SELECT o.status, sum(l.qty) FROM {TABLE} o
                 JOIN {LINES} l ON l.\"customer id\" = o.\"customer id\" AND l.order_id = o.id
                 GROUP BY o.status"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let remote_joins = plan
        .iter()
        .filter(|l| l.contains("Remote SQL") && l.contains(" JOIN "))
        .count();
    assert_eq!(remote_joins, 4, "{}", plan.join("\n"));

    drop(sql);

    // Nothing changed: nothing to do.
    settle(&shoal).await;
    let report: serde_json::Value =
        serde_json::from_str(shoal.cli(&["analyze", "--json"]).await.assert_ok()).unwrap();
    for table in report["tables"].as_array().unwrap() {
        assert_eq!(table["refreshed"], 0, "{report}");
        assert_eq!(table["table_refreshed"], false, "{report}");
    }

    // A move's cutover makes a new foreign table: it gets the shard's statistics too.
    let first = &shards(&shoal, TABLE).await[0];
    let to = if first.node_id == 1 { "2" } else { "1" };
    shoal
        .cli(&["shard", "move", &first.shard_id.to_string(), "--to", to])
        .await
        .assert_ok();
    assert_statistics_true(&shoal, ROWS).await;
    settle(&shoal).await;

    // 1,000 rows more in one shard (of about 5,000), written on its node: that shard is
    // refreshed, the others are left alone, and so is the table (5% more rows).
    let all = shards(&shoal, TABLE).await;
    grow_shard(&shoal, &all[0], 1000, 1_000_000).await;
    let analyzed = shoal.cli(&["analyze", TABLE, "--json"]).await;
    let report: serde_json::Value = serde_json::from_str(analyzed.assert_ok()).unwrap();
    let table = &report["tables"][0];
    assert_eq!(table["refreshed"], 1, "{report}");
    assert_eq!(table["table_refreshed"], false, "{report}");
    assert_statistics_true(&shoal, ROWS).await;
    quiesce(&shoal).await;

    // `shoal serve` notices writes by itself, and the table's (5,000 of 21,000 rows).
    let added = 4000;
    let sql = shoal.coordinator().await;
    grow_shard(&shoal, &all[1], added, 2_000_000).await;
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "serve",
            "--statistics-interval",
            "1",
            "--listen",
            "off",
            "--http",
            "off",
        ])
        .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_LOG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let count: i64 = shoal
        .worker(all[1].worker)
        .await
        .query_one(&format!("SELECT count(*) FROM {}", all[1].table), &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while reltuples(&sql, &all[1].table).await != count as f32
        || reltuples(&sql, TABLE).await != (ROWS + 1000 + added) as f32
    {
        assert!(
            Instant::now() < deadline,
            "shoal serve did not refresh the grown shard and its table within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
    assert_statistics_true(&shoal, ROWS + 1000 + added).await;

    // Refusals name what to do.
    shoal
        .cli(&["analyze", "no_such_table"])
        .await
        .assert_error(&["does not exist"]);
}

/// Nodes of another major than the coordinator's (a rolling upgrade): their statistics reach
/// the coordinator as well (on 18, copied from a 15 node's `pg_stats`).
#[tokio::test]
async fn statistics_come_from_nodes_of_another_major() {
    let mut pg = shoal_testkit::TestCluster::start(1).await;
    pg.add_worker_from(shoal_testkit::other_major()).await;
    let shoal = common::with_cluster(pg).await;
    create_tables(&shoal).await;
    assert_statistics_true(&shoal, ROWS).await;
    let report: serde_json::Value = serde_json::from_str(
        shoal
            .cli(&["analyze", "--force", "--json"])
            .await
            .assert_ok(),
    )
    .unwrap();
    assert_eq!(
        report["tables"][0]["errors"],
        serde_json::json!([]),
        "{report}"
    );
    assert_statistics_true(&shoal, ROWS).await;
}
