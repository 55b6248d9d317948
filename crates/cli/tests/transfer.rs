//! Shard moves and copies on real clusters, under writes that are checked key by key.

mod common;

use std::time::Duration;

use common::{fingerprint, rows_by_id, start_writers, Shoal};

/// Two colocated tables with rows, distributed over two workers with two shards, so every
/// other write lands in the moving shard group.
async fn two_colocated_tables(shoal: &Shoal) {
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, v bigint);
         CREATE TABLE u (id bigint PRIMARY KEY, v bigint);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 20000) g;
         INSERT INTO u SELECT g, 0 FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "t",
            "--column",
            "id",
            "--shards",
            "2",
        ])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "u",
            "--column",
            "id",
            "--colocate-with",
            "t",
        ])
        .await
        .assert_ok();
}

async fn shard_of(shoal: &Shoal, table: &str, index: i32) -> (i64, i32) {
    let row = shoal
        .coordinator()
        .await
        .query_one(
            "SELECT shard_id, node_id FROM shoal.shards WHERE table_name = to_regclass($1) AND shard_index = $2",
            &[&table, &index],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Moves shard group 0 of t and u to the other worker under writes and checks every key.
/// `failpoints`: a `SHOAL_FAILPOINTS` value for the move, to hold it at some status while the
/// writers go on.
async fn move_under_writes(mode: &str, failpoints: &str) {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let sql = shoal.coordinator().await;
    let before_t = rows_by_id(&sql, "SELECT id, v FROM t").await;
    let before_u = rows_by_id(&sql, "SELECT id, v FROM u").await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let target = if node == 1 { "2" } else { "1" };

    let writers_t = start_writers(shoal.pg.coordinator_uri(), "t", 2, 100_000);
    let writers_u = start_writers(shoal.pg.coordinator_uri(), "u", 1, 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = shoal
        .cli_env(
            &[
                "shard",
                "move",
                &shard.to_string(),
                "--to",
                target,
                "--mode",
                mode,
                "--json",
            ],
            &[("SHOAL_FAILPOINTS", failpoints)],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log_t = writers_t.finish().await;
    let log_u = writers_u.finish().await;
    let report: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    assert_eq!(report["mode"], mode);
    assert_eq!(
        report["shard_ids"].as_array().unwrap().len(),
        2,
        "the colocated shard moves along"
    );
    assert!(
        log_t.errors.is_empty() && log_u.errors.is_empty(),
        "failed writes: {:?} {:?}",
        log_t.errors,
        log_u.errors
    );
    assert!(
        log_t.operations > 50,
        "the writers ran ({} operations)",
        log_t.operations
    );

    for (table, before, log) in [("t", before_t, log_t), ("u", before_u, log_u)] {
        let expected = log.applied_to(before);
        assert_eq!(
            rows_by_id(&sql, &format!("SELECT id, v FROM {table}")).await,
            expected,
            "{table} through the coordinator"
        );
        assert_eq!(
            shoal.content_on_workers(table).await,
            expected,
            "{table} on the workers"
        );
    }
    let (_, moved_to) = shard_of(&shoal, "t", 0).await;
    assert_eq!(moved_to.to_string(), target);
    let (_, u_node) = shard_of(&shoal, "u", 0).await;
    assert_eq!(u_node, moved_to);
    let status: String = sql
        .query_one(
            "SELECT status FROM shoal.transfer ORDER BY operation_id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Completed");
    let lsn: Option<String> = sql
        .query_one(
            "SELECT final_source_lsn::text FROM shoal.transfer ORDER BY operation_id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(lsn.is_some(), "the cutover LSN is recorded");
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_logical_move_loses_and_duplicates_nothing_under_writes() {
    move_under_writes("force_logical", "").await;
}

#[tokio::test]
async fn a_logical_move_held_while_copying_loses_and_duplicates_nothing() {
    // Writes go on for a second and a half while the move is at "Copying Data": each must
    // reach the target once, whether the initial copy saw it or the stream brought it.
    move_under_writes("force_logical", "pause:Copying Data:1500").await;
}

#[tokio::test]
async fn a_block_writes_move_loses_and_duplicates_nothing_under_writes() {
    move_under_writes("block_writes", "").await;
}

#[tokio::test]
async fn a_distributed_schema_moves_with_its_tables() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE SCHEMA tenant;
         CREATE TABLE tenant.accounts (id bigint PRIMARY KEY, v bigint);
         CREATE TABLE tenant.notes (id bigint PRIMARY KEY, account bigint REFERENCES tenant.accounts (id), body text);
         INSERT INTO tenant.accounts SELECT g, 0 FROM generate_series(1, 1000) g;
         INSERT INTO tenant.notes SELECT g, g, 'n' FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(
        shoal
            .cli(&["schema", "distribute", "tenant", "--json"])
            .await
            .assert_ok(),
    )
    .unwrap();
    let from = report["node_id"].as_i64().unwrap();
    let to = if from == 1 { "2" } else { "1" };
    let before = rows_by_id(&sql, "SELECT id, v FROM tenant.accounts").await;
    let notes = fingerprint(&sql, "tenant.notes").await;
    let writers = start_writers(shoal.pg.coordinator_uri(), "tenant.accounts", 2, 100_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    shoal
        .cli(&["schema", "move", "tenant", "--to", to])
        .await
        .assert_ok();
    let log = writers.finish().await;
    assert!(log.errors.is_empty(), "{:?}", log.errors);
    let expected = log.applied_to(before);
    assert_eq!(
        rows_by_id(&sql, "SELECT id, v FROM tenant.accounts").await,
        expected
    );
    assert_eq!(fingerprint(&sql, "tenant.notes").await, notes);
    let nodes: Vec<i32> = sql
        .query(
            "SELECT DISTINCT node_id FROM shoal.shards WHERE kind = 'schema'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nodes, vec![to.parse::<i32>().unwrap()]);
    // The foreign key between the schema's tables came along.
    assert!(sql
        .execute("INSERT INTO tenant.notes VALUES (5000, 999999, 'x')", &[])
        .await
        .is_err());
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_reference_table_is_copied_onto_a_new_node() {
    let mut shoal = common::start(1).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, name text);
         INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "products"])
        .await
        .assert_ok();
    let shard: i64 = sql
        .query_one(
            "SELECT shard_id FROM shoal.shards WHERE table_name = 'products'::regclass LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A node registered before the reference table existed would lack it; register one by hand
    // without copying, as `node add` would have done before the table was a reference table.
    let address = shoal.pg.add_worker().await.host_port();
    let out = shoal.cli(&["node", "add", &address]).await;
    out.assert_ok();
    // `node add` already copies reference tables: copying again is refused, clearly.
    shoal
        .cli(&["shard", "copy", &shard.to_string(), "--to", &address])
        .await
        .assert_error(&["already on node"]);
    // Drop the new node's copy (as if it never had one) and copy it with `shard copy`.
    let new_worker = shoal.worker(1).await;
    sql.execute(
        "DELETE FROM shoal.placement WHERE shard_id = $1 AND node_id = 2",
        &[&shard],
    )
    .await
    .unwrap();
    new_worker
        .batch_execute("DROP SUBSCRIPTION shoal_reference_2")
        .await
        .unwrap();
    new_worker
        .batch_execute("DROP TABLE products")
        .await
        .unwrap();
    let out = shoal
        .cli(&["shard", "copy", &shard.to_string(), "--to", &address])
        .await;
    assert!(out.assert_ok().contains("copy of shard"), "{}", out.stdout);
    let expected = fingerprint(&sql, "products").await;
    assert_eq!(fingerprint(&new_worker, "products").await, expected);
    sql.execute("UPDATE products SET name = 'changed' WHERE id = 1", &[])
        .await
        .unwrap();
    let expected = fingerprint(&sql, "products").await;
    let started = std::time::Instant::now();
    while fingerprint(&new_worker, "products").await != expected {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copy does not follow writes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A shard of a hash table has one placement: copying it is refused.
    sql.batch_execute("CREATE TABLE h (id int PRIMARY KEY)")
        .await
        .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "h",
            "--column",
            "id",
            "--shards",
            "1",
        ])
        .await
        .assert_ok();
    let hash_shard: i64 = sql
        .query_one(
            "SELECT shard_id FROM shoal.shards WHERE table_name = 'h'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    shoal
        .cli(&["shard", "copy", &hash_shard.to_string(), "--to", "1"])
        .await
        .assert_error(&["shard move"]);
    shoal
        .cli(&["shard", "move", &shard.to_string(), "--to", "1"])
        .await
        .assert_error(&["shard copy"]);
}

#[tokio::test]
async fn auto_mode_blocks_writes_for_a_table_without_replica_identity() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute("CREATE TABLE logs (k bigint, msg text); INSERT INTO logs SELECT g, 'm' FROM generate_series(1, 1000) g;")
        .await
        .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "logs",
            "--column",
            "k",
            "--shards",
            "1",
        ])
        .await
        .assert_ok();
    let (shard, node) = shard_of(&shoal, "logs", 0).await;
    let target = if node == 1 { "2" } else { "1" };
    shoal
        .cli(&[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            target,
            "--mode",
            "force_logical",
        ])
        .await
        .assert_error(&["no primary key or replica identity", "block_writes"]);
    let before = fingerprint(&sql, "logs").await;
    let out = shoal
        .cli(&["shard", "move", &shard.to_string(), "--to", target])
        .await;
    out.assert_ok();
    assert!(out.stderr.contains("using block_writes"), "{}", out.stderr);
    assert_eq!(fingerprint(&sql, "logs").await, before);
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_second_move_of_the_same_shard_is_refused_at_once() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let (colocated, _) = shard_of(&shoal, "u", 0).await;
    let target = if node == 1 { "2" } else { "1" };
    let first = shoal.spawn_cli(
        &["shard", "move", &shard.to_string(), "--to", target],
        &[("SHOAL_FAILPOINTS", "pause:Copying Data:3000")],
    );
    let operation = shoal.wait_for_status(shard, "Copying Data").await;
    // The colocated shard is in the same group: refused too, naming the running operation.
    for id in [shard, colocated] {
        shoal
            .cli(&["shard", "move", &id.to_string(), "--to", target])
            .await
            .assert_error(&[
                "already being transferred",
                &format!("operation {operation}"),
            ]);
    }
    let output = first.await.unwrap();
    common::assert_success(&output);
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn two_groups_of_one_colocation_group_move_at_once() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, v bigint);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "t",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    let before = rows_by_id(&sql, "SELECT id, v FROM t").await;
    let (a, node_a) = shard_of(&shoal, "t", 0).await;
    let (b, node_b) = shard_of(&shoal, "t", 2).await;
    assert_eq!(node_a, node_b, "round robin puts index 0 and 2 together");
    let target = if node_a == 1 { "2" } else { "1" };
    let pause = [("SHOAL_FAILPOINTS", "pause:Catching Up:1000")];
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let first_args = ["shard", "move", a_text.as_str(), "--to", target];
    let second_args = ["shard", "move", b_text.as_str(), "--to", target];
    let (first, second) = tokio::join!(
        shoal.cli_env(&first_args, &pause),
        shoal.cli_env(&second_args, &pause)
    );
    first.assert_ok();
    second.assert_ok();
    // They overlapped: each one's run covers the other's start.
    let overlap: bool = sql
        .query_one(
            "SELECT x.started_at < y.finished_at AND y.started_at < x.finished_at
             FROM shoal.transfer x, shoal.transfer y WHERE x.anchor_shard_id = $1 AND y.anchor_shard_id = $2",
            &[&a, &b],
        )
        .await
        .unwrap()
        .get(0);
    assert!(overlap, "the two moves ran at the same time");
    assert_eq!(rows_by_id(&sql, "SELECT id, v FROM t").await, before);
    assert_eq!(shoal.content_on_workers("t").await, before);
    // While a move runs, the colocation group's tables cannot change.
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn the_target_stopping_mid_copy_fails_the_move_and_cleanup_leaves_nothing() {
    // Three workers: the table lives on the first two, the move goes to the third.
    let shoal = common::start(3).await;
    shoal
        .cli(&["node", "set", "3", "--should-have-shards", "false"])
        .await
        .assert_ok();
    two_colocated_tables(&shoal).await;
    shoal
        .cli(&["node", "set", "3", "--should-have-shards", "true"])
        .await
        .assert_ok();
    let sql = shoal.coordinator().await;
    let before = rows_by_id(&sql, "SELECT id, v FROM t").await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let target_index = 2;
    let target = "3".to_string();
    let mover = shoal.spawn_cli(
        &["shard", "move", &shard.to_string(), "--to", &target],
        &[("SHOAL_FAILPOINTS", "pause:Copying Data:1500")],
    );
    shoal.wait_for_status(shard, "Copying Data").await;
    shoal.pg.stop_worker(target_index);
    let output = mover.await.unwrap();
    assert!(!output.status.success(), "the move must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("shoal cleanup"),
        "says how to finish the cleanup: {stderr}"
    );
    // The source stays authoritative and writable.
    let (_, still) = shard_of(&shoal, "t", 0).await;
    assert_eq!(still, node);
    assert_eq!(rows_by_id(&sql, "SELECT id, v FROM t").await, before);
    sql.execute("UPDATE t SET v = 7 WHERE id = 1", &[])
        .await
        .unwrap();
    // Once the target is back, cleanup removes what the move had built there.
    shoal.pg.start_worker(target_index);
    shoal.cli(&["cleanup"]).await.assert_ok();
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_cancel_at_any_status_leaves_the_source_in_charge_and_nothing_behind() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let sql = shoal.coordinator().await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let target = if node == 1 { "2" } else { "1" };
    for status in [
        "Setting Up",
        "Copying Data",
        "Catching Up",
        "Creating Constraints",
        "Final Catchup",
    ] {
        let before = rows_by_id(&sql, "SELECT id, v FROM t").await;
        let failpoint = format!("pause:{status}");
        let mover = shoal.spawn_cli(
            &["shard", "move", &shard.to_string(), "--to", target],
            &[("SHOAL_FAILPOINTS", failpoint.as_str())],
        );
        let operation = shoal.wait_for_status(shard, status).await;
        let out = shoal
            .cli(&["shard", "cancel", &operation.to_string()])
            .await;
        assert!(out.assert_ok().contains("Failed"), "{}", out.stdout);
        let output = mover.await.unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("cancelled"));
        let (_, still) = shard_of(&shoal, "t", 0).await;
        assert_eq!(still, node, "cancelled at {status}: the source stays");
        assert_eq!(rows_by_id(&sql, "SELECT id, v FROM t").await, before);
        shoal.assert_nothing_left_behind().await;
    }
}

#[tokio::test]
async fn the_cutover_waits_for_a_long_transaction_and_says_which() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let target = if node == 1 { "2" } else { "1" };
    // A long transaction holds the shard: the cutover retries instead of queueing writers.
    let reader = shoal.coordinator().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM t WHERE id = 1")
        .await
        .unwrap();
    let pid: i32 = reader
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mover = shoal.spawn_cli(&["shard", "move", &shard.to_string(), "--to", target], &[]);
    shoal.wait_for_status(shard, "Final Catchup").await;
    let sql = shoal.coordinator().await;
    let started = std::time::Instant::now();
    loop {
        let waiting: Option<i32> = sql
            .query_one(
                "SELECT waiting_for_pid FROM shoal.transfer WHERE anchor_shard_id = $1",
                &[&shard],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == Some(pid) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the status never named pid {pid}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other shards stay writable meanwhile.
    let (other, _) = shard_of(&shoal, "t", 1).await;
    let _ = other;
    sql.execute("INSERT INTO t VALUES (-1, 1)", &[])
        .await
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    let output = mover.await.unwrap();
    common::assert_success(&output);
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_move_waits_for_the_slowest_table_of_the_group() {
    // One big and one tiny table: the tiny one (and the catch-up marker) is copied long before
    // the big one, which must not let the move go on early.
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, v bigint, pad text);
         CREATE TABLE tiny (id bigint PRIMARY KEY, v bigint);
         INSERT INTO tiny SELECT g, g FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "big",
            "--column",
            "id",
            "--shards",
            "1",
        ])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "tiny",
            "--column",
            "id",
            "--colocate-with",
            "big",
        ])
        .await
        .assert_ok();
    let (shard, node) = shard_of(&shoal, "big", 0).await;
    // Filled on the worker directly, so that the copy is what takes time.
    let worker = shoal.worker((node - 1) as usize).await;
    let shard_table: String = sql
        .query_one(
            "SELECT shard_table FROM shoal.shards WHERE shard_id = $1",
            &[&shard],
        )
        .await
        .unwrap()
        .get(0);
    worker
        .batch_execute(&format!(
            "INSERT INTO {shard_table} SELECT g, g, repeat('x', 100) FROM generate_series(1, 400000) g"
        ))
        .await
        .unwrap();
    let big = fingerprint(&sql, "big").await;
    let tiny = fingerprint(&sql, "tiny").await;
    let target = if node == 1 { "2" } else { "1" };
    shoal
        .cli(&["shard", "move", &shard.to_string(), "--to", target])
        .await
        .assert_ok();
    assert_eq!(fingerprint(&sql, "big").await, big);
    assert_eq!(fingerprint(&sql, "tiny").await, tiny);
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn the_colocation_group_cannot_change_during_a_move_and_no_wait_returns_at_once() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let target = if node == 1 { "2" } else { "1" };
    let started = std::time::Instant::now();
    let out = shoal
        .cli_env(
            &[
                "shard",
                "move",
                &shard.to_string(),
                "--to",
                target,
                "--no-wait",
            ],
            &[("SHOAL_FAILPOINTS", "pause:Catching Up:2500")],
        )
        .await;
    assert!(
        out.assert_ok().contains("started in the background"),
        "{}",
        out.stdout
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "--no-wait returns before the move ends"
    );
    shoal.wait_for_status(shard, "Catching Up").await;
    shoal
        .cli(&[
            "table",
            "distribute",
            "w",
            "--column",
            "id",
            "--colocate-with",
            "t",
        ])
        .await
        .assert_error(&["shard transfer is running"]);
    shoal
        .cli(&["table", "undistribute", "u"])
        .await
        .assert_error(&["shard transfer is running"]);
    shoal.wait_for_status(shard, "Completed").await;
    shoal
        .cli(&[
            "table",
            "distribute",
            "w",
            "--column",
            "id",
            "--colocate-with",
            "t",
        ])
        .await
        .assert_ok();
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn cleanup_scan_finds_what_no_record_explains() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let sql = shoal.coordinator().await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let shard_table: String = sql
        .query_one(
            "SELECT shard_table FROM shoal.shards WHERE shard_id = $1",
            &[&shard],
        )
        .await
        .unwrap()
        .get(0);
    // Leftovers of a process that died before writing its records: a copy of the shard on the
    // other worker, and a transfer's publication on its own worker.
    let other = shoal.worker(if node == 1 { 1 } else { 0 }).await;
    other
        .batch_execute(&format!(
            "CREATE TABLE {shard_table} (id bigint PRIMARY KEY, v bigint)"
        ))
        .await
        .unwrap();
    shoal
        .worker((node - 1) as usize)
        .await
        .batch_execute("CREATE PUBLICATION shoal_move_9999")
        .await
        .unwrap();
    let out = shoal.cli(&["cleanup"]).await;
    assert!(
        out.assert_ok().contains("nothing to clean up"),
        "without --scan: {}",
        out.stdout
    );
    let out = shoal.cli(&["cleanup", "--scan", "--json"]).await;
    let report: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    assert_eq!(
        report["found_by_scan"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert_eq!(report["removed"].as_array().unwrap().len(), 2, "{report}");
    // The real shard is untouched.
    assert_eq!(fingerprint(&sql, "t").await.0, 20000);
    shoal.assert_nothing_left_behind().await;
    let again = shoal.cli(&["cleanup", "--scan", "--json"]).await;
    let report: serde_json::Value = serde_json::from_str(again.assert_ok()).unwrap();
    assert!(
        report["found_by_scan"].as_array().unwrap().is_empty(),
        "idempotent: {report}"
    );
}

#[tokio::test]
async fn a_source_shard_still_being_read_is_removed_later_by_the_daemon() {
    let shoal = common::start(2).await;
    two_colocated_tables(&shoal).await;
    let sql = shoal.coordinator().await;
    let (shard, node) = shard_of(&shoal, "t", 0).await;
    let shard_table: String = sql
        .query_one(
            "SELECT shard_table FROM shoal.shards WHERE shard_id = $1",
            &[&shard],
        )
        .await
        .unwrap()
        .get(0);
    // A long read on the source shard, directly on the worker.
    let reader = shoal.worker((node - 1) as usize).await;
    reader
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM {shard_table}"))
        .await
        .unwrap();
    let target = if node == 1 { "2" } else { "1" };
    let out = shoal
        .cli(&["shard", "move", &shard.to_string(), "--to", target])
        .await;
    assert!(
        out.assert_ok().contains("left for `shoal cleanup`"),
        "{}",
        out.stdout
    );
    let records: i64 = sql
        .query_one("SELECT count(*) FROM shoal.cleanup_record", &[])
        .await
        .unwrap()
        .get(0);
    assert!(records >= 1, "the source shard waits for cleanup");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--cleanup-interval", "1", "--listen", "off"])
        .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.batch_execute("COMMIT").await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let records: i64 = sql
            .query_one("SELECT count(*) FROM shoal.cleanup_record", &[])
            .await
            .unwrap()
            .get(0);
        if records == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = daemon.kill().await;
    shoal.assert_nothing_left_behind().await;
}
