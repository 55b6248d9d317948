//! Shoal's endpoint: applications connect to it like to the coordinator; statements one
//! shard group answers run on its node at the client's isolation level, transactions that
//! write on several servers commit with two-phase commit, everything else goes to the
//! coordinator.

mod common;

use common::endpoint::pgbench;

/// pgbench's schema with branches a reference table and accounts, tellers and history
/// distributed (history with accounts).
async fn pgbench_cluster(scale: &str) -> common::Shoal {
    let shoal = common::start(2).await;
    let init = pgbench(&shoal.pg.coordinator_uri(), &["-i", "-s", scale, "-q"]).await;
    assert!(init.output.contains("done"), "{}", init.output);
    shoal
        .cli(&["table", "reference", "pgbench_branches"])
        .await
        .assert_ok();
    for (table, column, colocate) in [
        ("pgbench_accounts", "aid", None),
        ("pgbench_tellers", "tid", None),
        ("pgbench_history", "aid", Some("pgbench_accounts")),
    ] {
        let mut args = vec![
            "table",
            "distribute",
            table,
            "--column",
            column,
            "--shards",
            "8",
        ];
        if let Some(with) = colocate {
            args.extend(["--colocate-with", with]);
        }
        shoal.cli(&args).await.assert_ok();
    }
    shoal
}

/// The sums pgbench's transactions keep equal, and the history's length.
async fn balances(sql: &tokio_postgres::Client) -> (i64, i64, i64, i64, i64) {
    let row = sql
        .query_one(
            "SELECT (SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts),
                    (SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers),
                    (SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches),
                    (SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history),
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[tokio::test]
async fn tpc_b_through_the_endpoint_fails_nothing_and_keeps_its_balances() {
    let shoal = pgbench_cluster("2").await;
    let endpoint = shoal.start_endpoint().await;
    let sql = shoal.coordinator().await;
    let mut acknowledged = 0;
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(
            &endpoint.uri,
            &["-c", "4", "-j", "2", "-t", "60", "--no-vacuum", "-M", mode],
        )
        .await;
        assert_eq!(run.processed, 240, "{mode}:\n{}", run.output);
        assert_eq!(run.failed, 0, "{mode}:\n{}", run.output);
        acknowledged += run.processed as i64;
        let (accounts, tellers, branches, history, rows) = balances(&sql).await;
        assert_eq!(accounts, history, "{mode}");
        assert_eq!(tellers, history, "{mode}");
        assert_eq!(branches, history, "{mode}");
        assert_eq!(rows, acknowledged, "{mode}");
    }
    let metrics = endpoint.metrics().await;
    // Five statements a transaction, all routed; the branch update joins each transaction on
    // the coordinator, so every transaction commits with two-phase commit.
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 5 * 720,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["shoal_endpoint_two_phase_commits_total"], 720,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["shoal_endpoint_statements_refused_total"], 0,
        "{metrics:?}"
    );
    // Nothing is left prepared anywhere.
    for server in shoal.pg.servers() {
        let client = server.connect().await;
        let prepared: i64 = client
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(prepared, 0);
    }
}

async fn prepared_anywhere(shoal: &common::Shoal) -> i64 {
    let mut total = 0;
    for server in shoal.pg.servers() {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&server.uri(), tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            if let Ok(row) = client
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await
            {
                total += row.get::<_, i64>(0);
            }
        }
    }
    total
}

#[tokio::test]
async fn a_commit_refused_on_either_node_leaves_nothing_anywhere() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE kinds (id int PRIMARY KEY); INSERT INTO kinds VALUES (1);
         CREATE TABLE items (id bigint PRIMARY KEY, kind int NOT NULL);
         INSERT INTO items SELECT g, 1 FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    shoal.distribute("items", "id", "4").await;
    shoal
        .cli(&[
            "ddl",
            "ALTER TABLE items ADD CONSTRAINT items_kind FOREIGN KEY (kind) REFERENCES kinds (id) \
             DEFERRABLE INITIALLY DEFERRED",
        ])
        .await
        .assert_ok();
    // One id on each worker; the rows go, the ids keep their shards.
    let by_worker = shoal.ids_by_worker("items").await;
    let (a, b) = (by_worker[0][0], by_worker[1][0]);
    sql.batch_execute("DELETE FROM items").await.unwrap();
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    // The key check runs when each node prepares: the first one to prepare fails, then the
    // second.
    for (first_kind, second_kind) in [(1, 999), (999, 1)] {
        app.batch_execute("BEGIN").await.unwrap();
        app.batch_execute(&format!("INSERT INTO items VALUES ({a}, {first_kind})"))
            .await
            .unwrap();
        app.batch_execute(&format!("INSERT INTO items VALUES ({b}, {second_kind})"))
            .await
            .unwrap();
        let error = app.batch_execute("COMMIT").await.unwrap_err();
        let db = error.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "23503", "{db:?}");
        let rows: i64 = sql
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "kinds {first_kind}, {second_kind}");
        assert_eq!(prepared_anywhere(&shoal).await, 0);
    }
    app.batch_execute("BEGIN").await.unwrap();
    for id in [a, b] {
        app.batch_execute(&format!("INSERT INTO items VALUES ({id}, 1)"))
            .await
            .unwrap();
    }
    app.batch_execute("COMMIT").await.unwrap();
    let rows: i64 = sql
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    assert!(endpoint.metrics().await["shoal_endpoint_two_phase_commits_total"] >= 3);
}

/// Clients moving one unit between two random accounts through the endpoint until `stop`;
/// they reconnect after errors. Returns how many transfers were acknowledged.
fn start_transfers(
    uri: String,
    accounts: i64,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    use std::sync::atomic::Ordering;
    (0..clients)
        .map(|seed| {
            let (uri, stop) = (uri.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed as u64);
                let mut acknowledged = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut client, connection)) =
                        tokio_postgres::connect(&uri, tokio_postgres::NoTls).await
                    else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    tokio::spawn(connection);
                    while !stop.load(Ordering::Relaxed) {
                        let from: i64 = rand::Rng::gen_range(&mut rng, 1..=accounts);
                        let to: i64 = rand::Rng::gen_range(&mut rng, 1..=accounts);
                        let result: Result<(), tokio_postgres::Error> = async {
                            let tx = client.transaction().await?;
                            tx.execute(
                                "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
                                &[&from],
                            )
                            .await?;
                            tx.execute(
                                "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                                &[&to],
                            )
                            .await?;
                            tx.commit().await
                        }
                        .await;
                        match result {
                            Ok(()) => acknowledged += 1,
                            Err(_) if client.is_closed() => break,
                            Err(_) => {}
                        }
                    }
                }
                acknowledged
            })
        })
        .collect()
}

async fn total_balance(shoal: &common::Shoal) -> i64 {
    shoal
        .coordinator()
        .await
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn crashes_of_a_worker_the_coordinator_and_the_endpoint_lose_no_transfer_half() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const ACCOUNTS: i64 = 200;
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(&format!(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g;"
        ))
        .await
        .unwrap();
    shoal.distribute("accounts", "id", "4").await;
    let (port, http_port) = (
        shoal_testkit::ports::reserve(),
        shoal_testkit::ports::reserve(),
    );
    let mut endpoint = shoal.start_endpoint_at(port, http_port).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let clients = start_transfers(endpoint.uri.clone(), ACCOUNTS, 4, stop.clone());
    let pause = Duration::from_millis(1500);

    tokio::time::sleep(pause).await;
    shoal.pg.workers[0].crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    shoal.pg.workers[0].restart();
    tokio::time::sleep(pause).await;
    shoal.pg.coordinator.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    shoal.pg.coordinator.restart();
    tokio::time::sleep(pause).await;
    endpoint.kill().await;
    endpoint = shoal.start_endpoint_at(port, http_port).await;
    tokio::time::sleep(pause).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await.unwrap();
    }
    assert!(
        acknowledged > 50,
        "only {acknowledged} transfers went through"
    );

    // Recovery (every 5 s) settles whatever the crashes left prepared.
    let mut left = prepared_anywhere(&shoal).await;
    for _ in 0..300 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = prepared_anywhere(&shoal).await;
    }
    assert_eq!(left, 0, "prepared transactions remain");
    assert_eq!(total_balance(&shoal).await, ACCOUNTS * 1000);
    let metrics = endpoint.metrics().await;
    assert!(
        metrics["shoal_endpoint_connections_total"] > 0,
        "{metrics:?}"
    );
}

#[tokio::test]
async fn a_parallel_rebalance_under_tpc_b_through_the_endpoint_fails_nothing() {
    let mut shoal = pgbench_cluster("1").await;
    let endpoint = shoal.start_endpoint().await;
    let address = shoal.pg.add_worker().await.host_port();
    shoal.cli(&["node", "add", &address]).await.assert_ok();
    // pgbench in short runs, one after the other, until the rebalance has finished.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (uri, stop) = (endpoint.uri.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut processed, mut failed, mut runs) = (0, 0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let args = [
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    "2",
                    "--no-vacuum",
                    "-M",
                    "prepared",
                    // A failed transaction's SQLSTATE and message, in the output kept below.
                    "--verbose-errors",
                ];
                let run = pgbench(&uri, &args).await;
                processed += run.processed;
                failed += run.failed;
                if run.failed > 0 || runs.is_empty() {
                    runs.push(run.output);
                }
            }
            (processed, failed, runs)
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    shoal
        .cli(&[
            "rebalance",
            "start",
            "--parallel-colocated",
            "--parallel-reference",
        ])
        .await
        .assert_ok();
    let out = shoal.cli(&["rebalance", "wait"]).await;
    assert!(out.success, "wait: {}{}", out.stdout, out.stderr);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (processed, failed, runs) = load.await.unwrap();
    assert_eq!(failed, 0, "{runs:?}");
    assert!(processed > 100, "{runs:?}");
    let sql = shoal.coordinator().await;
    let (accounts, tellers, branches, history, rows) = balances(&sql).await;
    assert_eq!(accounts, history);
    assert_eq!(tellers, history);
    assert_eq!(branches, history);
    assert_eq!(rows, processed as i64);
    let placed: i64 = sql
        .query_one(
            "SELECT count(DISTINCT node_id) FROM shoal.placement p JOIN shoal.shard s USING (shard_id)
             JOIN shoal.distributed_table t USING (table_id) WHERE t.kind = 'hash'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(placed, 3, "the new worker holds shards");
    assert_eq!(prepared_anywhere(&shoal).await, 0);
}

#[tokio::test]
async fn node_add_says_when_a_node_cannot_prepare_transactions() {
    let mut shoal = common::start(1).await;
    let worker = shoal.pg.add_worker().await;
    worker
        .connect()
        .await
        .batch_execute("ALTER SYSTEM SET max_prepared_transactions = 0")
        .await
        .unwrap();
    let address = worker.host_port();
    shoal.pg.workers.last().unwrap().crash();
    shoal.pg.workers.last().unwrap().restart();
    let out = shoal.cli(&["node", "add", &address]).await;
    out.assert_ok();
    assert!(
        out.stderr.contains("max_prepared_transactions = 0")
            && out.stderr.contains("postgresql.conf"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn create_index_concurrently_through_the_endpoint_builds_it_on_every_shard() {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(
            "CREATE SCHEMA \"my shop\";
             CREATE TABLE \"my shop\".\"Order \"\"Items\"\"\" (id bigint PRIMARY KEY, note text);
             INSERT INTO \"my shop\".\"Order \"\"Items\"\"\" SELECT g, 'n' || g FROM generate_series(1, 100) g;
             CREATE TABLE plain (id int, note text);",
        )
        .await
        .unwrap();
    shoal
        .distribute("\"my shop\".\"Order \"\"Items\"\"\"", "id", "4")
        .await;
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    app.batch_execute("SET search_path = \"my shop\", public")
        .await
        .unwrap();
    // Simple protocol, then extended (as a driver's execute sends it).
    app.batch_execute("CREATE INDEX CONCURRENTLY items_note ON \"Order \"\"Items\"\"\" (note)")
        .await
        .unwrap();
    app.execute("CREATE INDEX CONCURRENTLY plain_note ON plain (note)", &[])
        .await
        .unwrap();
    let indexes_on_shards = || async {
        let mut count = 0;
        for worker in &shoal.pg.workers {
            let n: i64 = worker
                .connect()
                .await
                .query_one(
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = 'my shop' AND indexname LIKE 'items_note%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            count += n;
        }
        count
    };
    assert_eq!(indexes_on_shards().await, 4);
    shoal.cli(&["table", "check"]).await.assert_ok();
    // Inside a transaction block it is the coordinator's, which refuses it as it would for a
    // client connected to it, and nothing changes.
    app.batch_execute("BEGIN").await.unwrap();
    let direct = shoal.coordinator().await;
    direct
        .batch_execute("SET search_path = \"my shop\", public; BEGIN")
        .await
        .unwrap();
    let expected = direct
        .batch_execute("DROP INDEX CONCURRENTLY items_note")
        .await
        .unwrap_err();
    let error = app
        .batch_execute("DROP INDEX CONCURRENTLY items_note")
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().message(),
        expected.as_db_error().unwrap().message()
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(indexes_on_shards().await, 4);
    app.execute("DROP INDEX CONCURRENTLY items_note", &[])
        .await
        .unwrap();
    assert_eq!(indexes_on_shards().await, 0);
    app.batch_execute("DROP INDEX CONCURRENTLY plain_note")
        .await
        .unwrap();
    shoal.cli(&["table", "check"]).await.assert_ok();
}

#[tokio::test]
async fn cancel_requests_reach_the_server_the_statement_runs_on() {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    shoal.distribute("t", "id", "4").await;
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    for sql in [
        "SELECT pg_sleep(30) FROM t WHERE id = 1",
        "SELECT pg_sleep(30)",
    ] {
        let token = app.cancel_token();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        });
        let started = std::time::Instant::now();
        let error = app.batch_execute(sql).await.unwrap_err();
        cancel.await.unwrap();
        assert_eq!(
            error.as_db_error().unwrap().code().code(),
            "57014",
            "{sql}: {error}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{sql}"
        );
        // The session goes on.
        app.batch_execute("SELECT 1").await.unwrap();
    }
    let metrics = endpoint.metrics().await;
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 1,
        "{metrics:?}"
    );
}

#[tokio::test]
async fn a_column_added_through_the_endpoint_gets_its_default_on_the_next_insert() {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    shoal.distribute("t", "id", "4").await;
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    app.batch_execute("INSERT INTO t VALUES (1, 1)")
        .await
        .unwrap();
    app.batch_execute("ALTER TABLE t ADD COLUMN flag text NOT NULL DEFAULT 'new'")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO t (id, v) VALUES (2, 2)")
        .await
        .unwrap();
    app.execute("INSERT INTO t (id, v) VALUES ($1, 3)", &[&3i64])
        .await
        .unwrap();
    let flags: Vec<String> = app
        .query("SELECT flag FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(flags, vec!["new", "new", "new"]);

    // A node's error keeps its SQLSTATE and message, without a position in a text the
    // client never sent.
    let error = app
        .batch_execute("SELECT nosuch FROM t WHERE id = 1")
        .await
        .unwrap_err();
    let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(db.code().code(), "42703", "{db:?}");
    assert!(db.position().is_none(), "{db:?}");

    // The check an INSERT that leaves columns out runs first on its node: it passes at the
    // version the endpoint read, and refuses (retryably) any other.
    let worker = shoal.pg.workers[0].connect().await;
    let shard: String = worker
        .query_one(
            "SELECT quote_ident(relname) FROM pg_class WHERE relname ~ '^t_[0-9]+$' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let check = |delta: i64| {
        format!(
            "SELECT shoal_worker.expect_tables(shoal_worker.tables_version() + {delta}, '{shard}')"
        )
    };
    worker.batch_execute(&check(0)).await.unwrap();
    let error = worker.batch_execute(&check(-1)).await.unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().code().code(),
        "40001",
        "{error}"
    );
    // Both protocols send it (a stand-in that always refuses shows it), and only for such
    // INSERTs.
    for worker in &shoal.pg.workers {
        worker
            .connect()
            .await
            .batch_execute(
                "CREATE OR REPLACE FUNCTION shoal_worker.expect_tables(known bigint, shard regclass)
                 RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'checked' USING ERRCODE = '40001'; END $$",
            )
            .await
            .unwrap();
    }
    let refused = |result: Result<u64, tokio_postgres::Error>| {
        let error = result.unwrap_err();
        assert_eq!(
            error
                .as_db_error()
                .unwrap_or_else(|| panic!("{error:?}"))
                .message(),
            "checked",
            "{error}"
        );
    };
    // (v has no default: leaving it out is the shard's NULL; flag's default keeps an INSERT
    // that leaves it out on the coordinator.)
    refused(
        app.execute("INSERT INTO t (id, flag) VALUES ($1, 'x')", &[&10i64])
            .await,
    );
    refused(
        app.batch_execute("INSERT INTO t (id, flag) VALUES (11, 'x')")
            .await
            .map(|()| 0),
    );
    app.batch_execute("BEGIN").await.unwrap();
    refused(
        app.execute("INSERT INTO t (id, flag) VALUES ($1, 'x')", &[&12i64])
            .await,
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    app.execute(
        "INSERT INTO t (id, v, flag) VALUES ($1, 1, 'named')",
        &[&13i64],
    )
    .await
    .unwrap();
    let count: i64 = app
        .query_one("SELECT count(*) FROM t WHERE id >= 10", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn clients_log_in_with_scram_and_keep_their_own_privileges() {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int, at timestamptz);
             INSERT INTO t SELECT g, g, '2026-01-01 12:00:00+00' FROM generate_series(1, 20) g;
             CREATE ROLE app LOGIN PASSWORD 'app s3cret';
             CREATE ROLE other LOGIN PASSWORD 'other';",
        )
        .await
        .unwrap();
    shoal.distribute("t", "id", "4").await;
    shoal
        .coordinator()
        .await
        .batch_execute("GRANT SELECT ON t TO app")
        .await
        .unwrap();
    // Shoal's own role (postgres) keeps trust; every other role needs its SCRAM password.
    shoal.pg.coordinator.require_passwords(None);
    let endpoint = shoal.start_endpoint().await;
    let uri = |user: &str, password: &str| {
        format!(
            "postgresql://{user}:{}@127.0.0.1:{}/{}",
            password.replace(' ', "%20"),
            endpoint.port,
            shoal_testkit::DBNAME
        )
    };
    let wrong = tokio_postgres::connect(&uri("app", "nope"), tokio_postgres::NoTls).await;
    let error = wrong.err().expect("a wrong password is refused");
    assert_eq!(
        error.as_db_error().unwrap().code().code(),
        "28P01",
        "{error}"
    );

    let (app, connection) =
        tokio_postgres::connect(&uri("app", "app s3cret"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let v: i32 = app
        .query_one("SELECT v FROM t WHERE id = $1", &[&7i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7);
    // Session settings reach the node that answers.
    app.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let at: String = app
        .query_one("SELECT at::text FROM t WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(at, "2026-01-01 21:00:00+09");
    // A write the role may not make is refused as the coordinator refuses it.
    let error = app
        .execute("UPDATE t SET v = 0 WHERE id = $1", &[&7i64])
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().code().code(),
        "42501",
        "{error}"
    );
    let (other, connection) =
        tokio_postgres::connect(&uri("other", "other"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let error = other
        .query_one("SELECT v FROM t WHERE id = 7", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().code().code(),
        "42501",
        "{error}"
    );
    let metrics = endpoint.metrics().await;
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 2,
        "{metrics:?}"
    );
}

#[tokio::test]
async fn stream_tables_see_every_transaction_committed_through_the_endpoint() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, g int NOT NULL DEFAULT 0);
         INSERT INTO accounts SELECT g, 1000, g % 5 FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    shoal.distribute("accounts", "id", "4").await;
    let query = "SELECT g, count(*) AS n, sum(balance) AS total FROM accounts GROUP BY g";
    shoal
        .cli(&[
            "stream",
            "create",
            "totals",
            "--mode",
            "differential",
            "--query",
            query,
        ])
        .await
        .assert_ok();
    let endpoint = shoal.start_endpoint().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = start_transfers(endpoint.uri.clone(), 200, 3, stop.clone());
    let app = endpoint.connect().await;
    let by_worker = shoal.ids_by_worker("accounts").await;
    // Rows on two nodes in one transaction, a rolled back one, and deletes, meanwhile.
    app.batch_execute("BEGIN").await.unwrap();
    for id in [by_worker[0][0], by_worker[1][0]] {
        app.execute(
            "UPDATE accounts SET balance = balance + 7, g = 9 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    }
    app.batch_execute("COMMIT").await.unwrap();
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(
        "UPDATE accounts SET balance = 0 WHERE id = $1",
        &[&by_worker[0][1]],
    )
    .await
    .unwrap();
    app.execute(
        "UPDATE accounts SET balance = 0 WHERE id = $1",
        &[&by_worker[1][1]],
    )
    .await
    .unwrap();
    app.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await.unwrap();
    }
    assert!(acknowledged > 20, "{acknowledged}");
    app.execute("DELETE FROM accounts WHERE id = $1", &[&by_worker[0][2]])
        .await
        .unwrap();
    shoal
        .cli(&["stream", "refresh", "totals"])
        .await
        .assert_ok();
    let rows = |sql: String| {
        let sql = sql.clone();
        let client = &app;
        async move {
            client
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{:?} {:?} {:?}",
                        r.get::<_, i32>(0),
                        r.get::<_, i64>(1),
                        r.get::<_, i64>(2)
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let expected = rows(format!(
        "SELECT g, n, total::bigint FROM ({query}) q ORDER BY g"
    ))
    .await;
    let stream = rows("SELECT g, n, total::bigint FROM totals ORDER BY g".to_string()).await;
    assert_eq!(stream, expected);
}

/// The rows of `sql` as text, by the simple protocol (`simple`) or the extended one.
async fn text_rows(client: &tokio_postgres::Client, sql: &str, simple: bool) -> Vec<String> {
    if simple {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
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
            .collect()
    } else {
        // Every output is cast to text by the query itself.
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| format!("{:?}", r.get::<_, Option<String>>(i)))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }
}

#[tokio::test]
async fn reads_split_across_the_nodes_answer_as_the_coordinator_does() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, qty int,
                              price double precision);
         CREATE TABLE items (order_id bigint, kind int, qty int);
         CREATE TABLE kinds (id int PRIMARY KEY, name text);
         INSERT INTO kinds SELECT g, 'k' || g FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    shoal.distribute("orders", "id", "8").await;
    shoal.colocate("items", "order_id", "orders").await;
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    // Each query as written (simple protocol) and with its outputs cast to text (extended).
    let queries = [
        ("SELECT count(*) FROM orders", "SELECT count(*)::text FROM orders"),
        (
            "SELECT count(amount), sum(amount), avg(amount), min(amount), max(amount) FROM orders",
            "SELECT count(amount)::text, sum(amount)::text, avg(amount)::text, min(amount)::text, max(amount)::text FROM orders",
        ),
        (
            "SELECT sum(qty), avg(qty), min(price), max(price) FROM orders WHERE qty > 3",
            "SELECT sum(qty)::text, avg(qty)::text, min(price)::text, max(price)::text FROM orders WHERE qty > 3",
        ),
        (
            "SELECT customer_id % 10, count(*), sum(qty) FROM orders GROUP BY 1 ORDER BY 1",
            "SELECT (customer_id % 10)::text, count(*)::text, sum(qty)::text FROM orders GROUP BY customer_id % 10 ORDER BY 1",
        ),
        (
            "SELECT customer_id AS c, avg(qty) AS a FROM orders GROUP BY customer_id ORDER BY a DESC NULLS LAST, c LIMIT 5",
            "SELECT customer_id::text AS c, avg(qty)::text AS a FROM orders GROUP BY customer_id ORDER BY 2 DESC NULLS LAST, 1 LIMIT 5",
        ),
        (
            "SELECT count(*) FROM orders WHERE amount > 50",
            "SELECT count(*)::text FROM orders WHERE amount > 50",
        ),
        // A sorted limit splits only when its outputs are not cast (the shards sort what the
        // merge sorts): by the simple protocol only here, its extended form being typed.
        (
            "SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 7 OFFSET 2",
            "",
        ),
        // Joins per shard pair and against the reference table's replicas.
        (
            "SELECT count(*), sum(i.qty) FROM orders o JOIN items i ON i.order_id = o.id",
            "SELECT count(*)::text, sum(i.qty)::text FROM orders o JOIN items i ON i.order_id = o.id",
        ),
        (
            "SELECT o.id, sum(i.qty) FROM orders o JOIN items i ON i.order_id = o.id \
             GROUP BY o.id ORDER BY 2 DESC NULLS LAST, 1 LIMIT 10 OFFSET 1",
            "SELECT o.id::text, sum(i.qty)::text FROM orders o JOIN items i ON i.order_id = o.id \
             GROUP BY o.id ORDER BY 2 DESC NULLS LAST, 1 LIMIT 10 OFFSET 1",
        ),
        (
            "SELECT count(*) FROM orders o JOIN kinds k ON k.id = o.customer_id WHERE k.name LIKE 'k1%'",
            "SELECT count(*)::text FROM orders o JOIN kinds k ON k.id = o.customer_id WHERE k.name LIKE 'k1%'",
        ),
        (
            "SELECT count(*), count(i.qty), avg(i.qty) FROM orders o LEFT JOIN items i ON i.order_id = o.id",
            "SELECT count(*)::text, count(i.qty)::text, avg(i.qty)::text FROM orders o LEFT JOIN items i ON i.order_id = o.id",
        ),
        (
            "SELECT customer_id % 10, count(*) FROM orders GROUP BY 1 HAVING count(*) > 3 AND min(qty) < 5 ORDER BY 1",
            "SELECT (customer_id % 10)::text, count(*)::text FROM orders GROUP BY customer_id % 10 HAVING count(*) > 3 AND min(qty) < 5 ORDER BY 1",
        ),
        (
            "SELECT o.customer_id % 3, count(DISTINCT o.id) FROM orders o JOIN items i ON i.order_id = o.id GROUP BY 1 ORDER BY 1",
            "SELECT (o.customer_id % 3)::text, count(DISTINCT o.id)::text FROM orders o JOIN items i ON i.order_id = o.id GROUP BY o.customer_id % 3 ORDER BY 1",
        ),
    ];
    // Empty, a few rows (most shards empty), then many with NULLs and repeated groups.
    for fill in [
        "",
        "INSERT INTO orders VALUES (1, 1, 10.5, 2, 1.25), (2, NULL, NULL, NULL, NULL), (3, 1, 99, 7, 3.5);
         INSERT INTO items VALUES (1, 1, 3), (1, 1, NULL), (3, 2, 4), (99, 1, 1)",
        "INSERT INTO orders SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 13 END,
                CASE WHEN g % 5 = 0 THEN NULL ELSE (g * 37 % 100)::numeric / 3 END,
                CASE WHEN g % 11 = 0 THEN NULL ELSE g % 9 END, g * 0.5
         FROM generate_series(10, 2000) g;
         INSERT INTO items SELECT g % 2100, g % 23, CASE WHEN g % 17 = 0 THEN NULL ELSE g % 7 END
         FROM generate_series(1, 5000) g",
    ] {
        if !fill.is_empty() {
            sql.batch_execute(fill).await.unwrap();
        }
        for (written, cast) in queries {
            for (query, simple) in [(written, true), (cast, false)] {
                if query.is_empty() {
                    continue;
                }
                let expected = text_rows(&sql, query, simple).await;
                let before = endpoint.metrics().await["shoal_endpoint_statements_scattered_total"];
                let got = text_rows(&app, query, simple).await;
                assert_eq!(got, expected, "{query} (simple: {simple}) after {fill:.30}");
                let after = endpoint.metrics().await["shoal_endpoint_statements_scattered_total"];
                assert_eq!(after, before + 1, "not split: {query} (simple: {simple})");
            }
        }
    }
    // A prepared statement's parameters (binary, NULL, text, declared or inferred types) go
    // to every node with its part.
    let like = "k1%".to_string();
    let no_customer: Option<i64> = None;
    let parameterized: [(&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>); 4] = [
        (
            "SELECT count(*)::text, sum(qty)::text FROM orders WHERE qty > $1 AND customer_id <> $2",
            vec![&3i32, &5i64],
        ),
        (
            "SELECT count(*)::text FROM orders o JOIN kinds k ON k.id = o.customer_id \
             WHERE k.name LIKE $1",
            vec![&like],
        ),
        (
            "SELECT (customer_id % 3)::text, count(*)::text FROM orders \
             WHERE customer_id IS DISTINCT FROM $1 GROUP BY customer_id % 3 ORDER BY 1",
            vec![&no_customer],
        ),
        (
            "SELECT o.id::text, sum(i.qty)::text FROM orders o JOIN items i ON i.order_id = o.id \
             AND i.kind < $1 GROUP BY o.id ORDER BY 2 DESC NULLS LAST, 1 LIMIT 4",
            vec![&9i32],
        ),
    ];
    let rows_of = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect()
    };
    for (query, values) in &parameterized {
        let expected = rows_of(sql.query(*query, values).await.unwrap());
        let before = endpoint.metrics().await["shoal_endpoint_statements_scattered_total"];
        let got = rows_of(app.query(*query, values).await.unwrap());
        assert_eq!(got, expected, "{query}");
        let after = endpoint.metrics().await["shoal_endpoint_statements_scattered_total"];
        assert_eq!(after, before + 1, "not split: {query}");
    }
    let typed = app
        .prepare_typed(
            "SELECT count(*)::text FROM orders WHERE qty > $1",
            &[tokio_postgres::types::Type::INT8],
        )
        .await
        .unwrap();
    assert_eq!(
        rows_of(app.query(&typed, &[&2i64]).await.unwrap()),
        rows_of(
            sql.query("SELECT count(*)::text FROM orders WHERE qty > 2", &[])
                .await
                .unwrap()
        )
    );

    // An answer too long for one merge (a group per order, no LIMIT) goes to the coordinator,
    // the nodes' partial answers dropped unread.
    sql.batch_execute(
        "INSERT INTO orders SELECT g, g % 13, g, g % 9, g FROM generate_series(3000, 60000) g",
    )
    .await
    .unwrap();
    let query = "SELECT id, count(*) FROM orders GROUP BY id ORDER BY id";
    let expected = text_rows(&sql, query, true).await;
    let before = endpoint.metrics().await;
    assert_eq!(text_rows(&app, query, true).await, expected);
    let after = endpoint.metrics().await;
    for (counter, more) in [
        ("shoal_endpoint_statements_scattered_total", 0),
        ("shoal_endpoint_statements_coordinator_total", 1),
    ] {
        assert_eq!(after[counter], before[counter] + more, "{counter}");
    }
}
