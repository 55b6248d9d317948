//! A cluster of mixed PostgreSQL majors, as during a rolling upgrade: the coordinator and one
//! worker on the default version, the others on another (18 next to 15, 15 next to the others).

mod common;

use common::{fingerprint, Shoal};
use shoal_testkit::TestCluster;

async fn node_of(shoal: &Shoal, shard: i64) -> i32 {
    shoal
        .coordinator()
        .await
        .query_one(
            "SELECT node_id FROM shoal.shards WHERE shard_id = $1",
            &[&shard],
        )
        .await
        .unwrap()
        .get(0)
}

async fn version_of(shoal: &Shoal, node: i32) -> i32 {
    shoal
        .coordinator()
        .await
        .query_one(
            "SELECT server_version_num / 10000 FROM shoal.node WHERE node_id = $1",
            &[&node],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_cluster_of_mixed_majors_distributes_moves_rebalances_and_streams() {
    let other = shoal_testkit::other_major();
    let mut pg = TestCluster::start(1).await;
    pg.add_worker_from(other.clone()).await;
    let mut shoal = common::with_cluster(pg).await;
    assert_ne!(version_of(&shoal, 1).await, version_of(&shoal, 2).await);

    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE kinds (id int PRIMARY KEY, name text);
         INSERT INTO kinds SELECT g, 'k' || g FROM generate_series(0, 9) g;
         CREATE TABLE items (id bigint PRIMARY KEY, kind int REFERENCES kinds, v bigint);
         INSERT INTO items SELECT g, g % 10, g FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "items",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    let query = "SELECT i.kind, k.name, count(*) AS n, sum(i.v) AS total \
                 FROM items i JOIN kinds k ON k.id = i.kind GROUP BY i.kind, k.name";
    shoal
        .cli(&[
            "stream",
            "create",
            "per_kind",
            "--mode",
            "differential",
            "--query",
            query,
        ])
        .await
        .assert_ok();

    // Moves in both directions between the majors, one of each mode.
    let shards: Vec<i64> = sql
        .query(
            "SELECT shard_id FROM shoal.shards WHERE table_name = 'items'::regclass ORDER BY shard_index",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let content = fingerprint(&sql, "items").await;
    for (shard, mode) in [(shards[0], "force_logical"), (shards[1], "block_writes")] {
        let from = node_of(&shoal, shard).await;
        let to = if from == 1 { 2 } else { 1 };
        shoal
            .cli(&[
                "shard",
                "move",
                &shard.to_string(),
                "--to",
                &to.to_string(),
                "--mode",
                mode,
            ])
            .await
            .assert_ok();
        assert_eq!(node_of(&shoal, shard).await, to);
        assert_eq!(fingerprint(&sql, "items").await, content);
        let back = from.to_string();
        shoal
            .cli(&[
                "shard",
                "move",
                &shard.to_string(),
                "--to",
                &back,
                "--mode",
                mode,
            ])
            .await
            .assert_ok();
        assert_eq!(fingerprint(&sql, "items").await, content);
    }
    sql.batch_execute(
        "INSERT INTO items SELECT g, g % 10, g FROM generate_series(20001, 21000) g;
         UPDATE items SET v = v + 1 WHERE id % 7 = 0;
         DELETE FROM items WHERE id % 11 = 0;
         UPDATE kinds SET name = name || '!' WHERE id = 3;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["stream", "refresh", "per_kind"])
        .await
        .assert_ok();
    assert_stream_exact(&sql, query).await;

    // A third worker of the other major joins, and a rebalance fills it.
    shoal.pg.add_worker_from(other).await;
    let address = shoal.pg.workers.last().unwrap().host_port();
    shoal.cli(&["node", "add", &address]).await.assert_ok();
    shoal.cli(&["rebalance", "start"]).await.assert_ok();
    shoal.cli(&["rebalance", "wait"]).await.assert_ok();
    let on_new: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.shards WHERE node_id = 3 AND kind = 'hash'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(on_new > 0, "the rebalance moved shards to the new worker");
    let content = fingerprint(&sql, "items").await;
    sql.batch_execute("UPDATE items SET v = v * 2 WHERE id % 5 = 0")
        .await
        .unwrap();
    shoal
        .cli(&["stream", "refresh", "per_kind"])
        .await
        .assert_ok();
    assert_stream_exact(&sql, query).await;
    assert_ne!(fingerprint(&sql, "items").await, content);

    // DDL reaches shards and replicas of every major.
    sql.batch_execute(
        "ALTER TABLE items ADD COLUMN note text DEFAULT 'x';
         ALTER TABLE kinds ADD COLUMN weight int;",
    )
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    // Without stream tables no capture slot is kept; nothing else is left anywhere.
    shoal.cli(&["stream", "drop", "per_kind"]).await.assert_ok();
    shoal.assert_nothing_left_behind().await;
}

async fn assert_stream_exact(sql: &tokio_postgres::Client, query: &str) {
    for (a, b) in [
        (
            query.to_string(),
            "SELECT kind, name, n, total FROM per_kind".to_string(),
        ),
        (
            "SELECT kind, name, n, total FROM per_kind".to_string(),
            query.to_string(),
        ),
    ] {
        let n: i64 = sql
            .query_one(
                &format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) x"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the stream table differs from its query");
    }
}
