//! Bad input: each case fails with one line that names the problem and what to do, exits
//! non-zero, and changes nothing on any server.

mod common;

use common::{fingerprint, relations, relkind};

const SETUP: &str = "
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, spot point);
INSERT INTO orders SELECT g, g % 10, g, point(g, g) FROM generate_series(1, 300) g;
CREATE TABLE items (id bigint, order_id bigint);
CREATE TABLE texts (k text);
CREATE TABLE uniq (a bigint, b bigint UNIQUE);
CREATE TABLE plain (x int);
CREATE SCHEMA tenant;
CREATE TABLE tenant.t (id int PRIMARY KEY);";

#[tokio::test]
async fn bad_input_fails_cleanly_and_changes_nothing() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(SETUP).await.unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "items",
            "--column",
            "order_id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    shoal
        .cli(&["schema", "distribute", "tenant"])
        .await
        .assert_ok();
    let orders_before = fingerprint(&sql, "orders").await;
    let worker = shoal.pg.workers[0].host_port();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["table", "distribute", "nosuch", "--column", "id"],
            vec!["nosuch", "does not exist"],
        ),
        (
            vec!["table", "distribute", "orders", "--column", "nosuch"],
            vec!["no column \"nosuch\"", "\"id\", \"customer_id\""],
        ),
        (
            // SQL rules: an unquoted name folds to lower case; quotes keep it exact.
            vec!["table", "distribute", "orders", "--column", "\"ID\""],
            vec!["no column \"ID\"", "quote one with capitals"],
        ),
        (
            vec!["table", "distribute", "orders", "--column", "a.b"],
            vec!["a.b is not a column name"],
        ),
        (
            vec!["table", "distribute", "items", "--column", "id"],
            vec!["already distributed", "undistribute"],
        ),
        (
            vec![
                "table",
                "distribute",
                "orders",
                "--column",
                "id",
                "--shards",
                "0",
            ],
            vec!["out of range", "1 to 4096"],
        ),
        (
            vec![
                "table",
                "distribute",
                "orders",
                "--column",
                "id",
                "--shards",
                "5000",
            ],
            vec!["out of range"],
        ),
        (
            vec![
                "table",
                "distribute",
                "orders",
                "--column",
                "id",
                "--shards",
                "8",
                "--colocate-with",
                "items",
            ],
            vec!["cannot colocate", "4 shards"],
        ),
        (
            vec![
                "table",
                "distribute",
                "texts",
                "--column",
                "k",
                "--colocate-with",
                "items",
            ],
            vec!["cannot colocate", "type"],
        ),
        (
            vec![
                "table",
                "distribute",
                "orders",
                "--column",
                "id",
                "--colocate-with",
                "plain",
            ],
            vec!["not distributed"],
        ),
        (
            vec!["table", "distribute", "orders", "--column", "spot"],
            vec!["cannot be hashed", "another column"],
        ),
        (
            vec!["table", "distribute", "uniq", "--column", "a"],
            vec!["does not include the distribution column"],
        ),
        (
            vec!["table", "distribute", "tenant.t", "--column", "id"],
            vec!["already distributed"],
        ),
        (
            vec!["table", "undistribute", "plain"],
            vec!["not distributed"],
        ),
        (
            vec!["table", "reference", "plain"],
            vec!["no primary key", "REPLICA IDENTITY FULL"],
        ),
        (
            vec!["schema", "distribute", "nosuch"],
            vec!["schema nosuch does not exist"],
        ),
        (vec!["schema", "sync", "public"], vec!["not distributed"]),
        (vec!["node", "remove", "99"], vec!["no node 99"]),
        (
            vec!["node", "disable", "127.0.0.1:1"],
            vec!["no node 127.0.0.1:1"],
        ),
        (
            vec!["node", "add", "127.0.0.1:1"],
            vec!["cannot reach node 127.0.0.1:1"],
        ),
        (
            vec!["node", "add", "no-port"],
            vec!["invalid node address", "HOST:PORT"],
        ),
        (vec!["node", "add", &worker], vec!["already registered"]),
        (
            vec!["node", "remove", "1"],
            vec!["still holds", "drain it first"],
        ),
    ];
    for (args, phrases) in cases {
        let before = shoal.state().await;
        let out = shoal.cli(&args).await;
        out.assert_error(&phrases);
        assert_eq!(
            shoal.state().await,
            before,
            "`shoal {}` changed something",
            args.join(" ")
        );
    }
    assert_eq!(fingerprint(&sql, "orders").await, orders_before);
    assert_eq!(relkind(&sql, "orders").await, "r");

    // No coordinator at all: told how to give one.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["table", "list"])
        .env_remove("SHOAL_COORDINATOR")
        .env_remove("SHOAL_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHOAL_COORDINATOR"));
}

#[tokio::test]
async fn a_node_without_logical_wal_is_refused() {
    let mut shoal = common::start(1).await;
    let extra = shoal.pg.add_worker().await.host_port();
    let index = shoal.pg.workers.len() - 1;
    shoal
        .worker(index)
        .await
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await
        .unwrap();
    shoal.pg.stop_worker(index);
    shoal.pg.start_worker(index);
    let before = shoal.state().await;
    shoal
        .cli(&["node", "add", &extra])
        .await
        .assert_error(&["wal_level = replica", "wal_level = logical"]);
    assert_eq!(shoal.state().await, before);
}

#[tokio::test]
async fn a_worker_lost_mid_way_leaves_the_table_as_it_was() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let before = fingerprint(&sql, "orders").await;
    let worker_one_before = relations(&shoal.worker(0).await).await;
    // Worker two is gone: shards are created on worker one first, then the operation fails.
    shoal.pg.stop_worker(1);
    let out = shoal
        .cli(&[
            "table",
            "distribute",
            "orders",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await;
    out.assert_error(&["cannot reach node"]);
    assert_eq!(relkind(&sql, "orders").await, "r");
    assert_eq!(fingerprint(&sql, "orders").await, before);
    assert_eq!(
        relations(&shoal.worker(0).await).await,
        worker_one_before,
        "shards on worker one removed"
    );
    let records: i64 = sql
        .query_one("SELECT count(*) FROM shoal.cleanup_record", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(records, 0);
    let tables: i64 = sql
        .query_one("SELECT count(*) FROM shoal.distributed_table", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);

    // Once the worker is back, the same command works.
    shoal.pg.start_worker(1);
    shoal
        .cli(&[
            "table",
            "distribute",
            "orders",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    assert_eq!(fingerprint(&sql, "orders").await, before);
    shoal.cli(&["cleanup"]).await.assert_ok();
}

#[tokio::test]
async fn nodes_can_be_listed_flagged_and_removed() {
    let mut shoal = common::start(1).await;
    let extra = shoal.pg.add_worker().await.host_port();
    let out = shoal.cli(&["node", "add", &extra, "--no-shards"]).await;
    assert!(
        out.assert_ok().contains("registered node 2"),
        "{}",
        out.stdout
    );
    let listed: serde_json::Value =
        serde_json::from_str(shoal.cli(&["node", "list", "--json"]).await.assert_ok()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["should_have_shards"], false);

    // No shards go to a node that should not have them, nor to a disabled one.
    let sql = shoal.coordinator().await;
    sql.batch_execute("CREATE TABLE t (k int); CREATE TABLE u (k int)")
        .await
        .unwrap();
    shoal
        .cli(&["table", "distribute", "t", "--column", "k", "--shards", "4"])
        .await
        .assert_ok();
    let on_two: i64 = sql
        .query_one("SELECT count(*) FROM shoal.shards WHERE node_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_two, 0);
    shoal
        .cli(&["node", "set", "2", "--should-have-shards", "true"])
        .await
        .assert_ok();
    shoal.cli(&["node", "disable", "1"]).await.assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "u",
            "--column",
            "k",
            "--shards",
            "2",
            "--colocate-with",
            "none",
        ])
        .await
        .assert_ok();
    let u_nodes: Vec<i32> = sql
        .query(
            "SELECT DISTINCT node_id FROM shoal.shards WHERE table_name = 'u'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(u_nodes, vec![2]);
    shoal.cli(&["node", "activate", "1"]).await.assert_ok();

    shoal.cli(&["table", "undistribute", "u"]).await.assert_ok();
    let out = shoal.cli(&["node", "remove", &extra]).await;
    assert!(out.assert_ok().contains("removed node 2"), "{}", out.stdout);
    let servers: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'shoal_node_2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(servers, 0);
}
