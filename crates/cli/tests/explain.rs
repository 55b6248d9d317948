//! `shoal explain`: a query's path through the endpoint and through the coordinator, by node.

mod common;

use serde_json::Value;

async fn explained(shoal: &common::Shoal, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend(args);
    let out = shoal.cli(&all).await;
    serde_json::from_str(out.assert_ok()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// (node, remote queries, rows shipped) per node of the coordinator's plan.
fn by_node(explained: &Value, rows: &str) -> Vec<(i64, u64, f64)> {
    explained["coordinator"]["on_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["node"].as_i64().expect("a node Shoal knows"),
                w["remote_queries"].as_u64().unwrap(),
                w[rows].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn explain_shows_each_paths_work_by_node() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE SCHEMA \"my app\";
         CREATE TABLE \"my app\".\"Order \"\"Items\"\"\" (id bigint PRIMARY KEY, qty int);
         INSERT INTO \"my app\".\"Order \"\"Items\"\"\" SELECT g, g % 5 FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let table = "\"my app\".\"Order \"\"Items\"\"\"";
    shoal.distribute(table, "id", "8").await;

    // Split: both nodes answer for their shards, and through the coordinator each ships rows.
    let count = format!("SELECT count(*), sum(qty) FROM {table}");
    let e = explained(&shoal, &["--analyze", &count]).await;
    assert_eq!(e["endpoint"]["path"], "split", "{e}");
    let parts = e["endpoint"]["nodes"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    let statements: u64 = parts
        .iter()
        .map(|p| p["shard_statements"].as_u64().unwrap())
        .sum();
    assert_eq!(statements, 8);
    let work = by_node(&e, "rows_actual");
    assert_eq!(work.iter().map(|w| w.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(work.iter().map(|w| w.1).sum::<u64>(), 8);
    // PostgreSQL pushes no aggregate across partitions: every row is shipped.
    assert_eq!(work.iter().map(|w| w.2).sum::<f64>(), 1000.0);
    assert!(e["coordinator"]["on_coordinator"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k[0].as_str().unwrap().contains("Aggregate")));

    // Routed: the node that holds the key's shard.
    let lookup = format!("SELECT * FROM {table} WHERE id = 42");
    let e = explained(&shoal, &[&lookup]).await;
    assert_eq!(e["endpoint"]["path"], "routed", "{e}");
    let node = e["endpoint"]["node"].as_i64().unwrap();
    let work = by_node(&e, "rows_estimated");
    assert_eq!(work.len(), 1, "{e}");
    assert_eq!(work[0].0, node, "both paths reach the same node");

    // Neither: the reasons, and with --analyze a write changes nothing.
    let delete = format!("DELETE FROM {table} WHERE qty = 1");
    let e = explained(&shoal, &["--analyze", &delete]).await;
    assert_eq!(e["endpoint"]["path"], "coordinator", "{e}");
    assert!(e["endpoint"]["not_routed"]
        .as_str()
        .unwrap()
        .contains("pinned"));
    let left: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1000);

    // The human form says the same.
    let out = shoal.cli(&["explain", &count]).await;
    let text = out.assert_ok();
    assert!(text.contains("split across 2 nodes"), "{text}");
    assert!(text.contains("node 1 (127.0.0.1:"), "{text}");
    assert!(text.contains("rows estimated"), "{text}");

    // A statement the endpoint refuses: its explanation, and the coordinator's own refusal.
    let upsert = format!("INSERT INTO {table} VALUES (1, 1), (2, 2) ON CONFLICT (id) DO NOTHING");
    let e = explained(&shoal, &[&upsert]).await;
    assert_eq!(e["endpoint"]["path"], "refused", "{e}");
    assert!(e["endpoint"]["reason"]
        .as_str()
        .unwrap()
        .contains("one shard group"));
    assert!(e["coordinator_error"]
        .as_str()
        .unwrap()
        .contains("ON CONFLICT"));
    let text = shoal.cli(&["explain", &upsert]).await;
    let text = text.assert_ok();
    assert!(text.contains("refused before anything runs"), "{text}");
    assert!(text.contains("PostgreSQL refuses it"), "{text}");

    // A query the coordinator refuses: its error, nothing else.
    shoal
        .cli(&["explain", "SELECT nope FROM nowhere"])
        .await
        .assert_error(&["could not explain", "nowhere"]);
}
