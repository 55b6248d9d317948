//! Stream tables on real clusters: exact results through random writes, shard moves, a worker
//! restart, crashes between storing changes and advancing a slot, and two daemons.

mod common;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use common::stream::assert_matches_query;
use common::Shoal;
use shoal_stream::runtime::{self, SchedulerConfig};

const STREAMS: &[(&str, &str, &str)] = &[
    ("s_filter", "SELECT id, customer_id, amount FROM orders WHERE amount > 50", "id, customer_id, amount"),
    (
        "s_agg",
        "SELECT customer_id, count(*) AS n, sum(amount) AS total, min(amount) AS lo, max(amount) AS hi \
         FROM orders GROUP BY customer_id",
        "customer_id, n, total, lo, hi",
    ),
    (
        "s_join",
        "SELECT p.category, count(*) AS n, sum(o.amount) AS total FROM orders o \
         JOIN products p ON p.id = o.product_id GROUP BY p.category",
        "category, n, total",
    ),
    (
        "s_join_alias",
        "SELECT j.category, j.customer_id, count(*) AS n, max(j.amount) AS hi \
         FROM (orders o JOIN products p ON p.id = o.product_id) AS j GROUP BY j.category, j.customer_id",
        "category, customer_id, n, hi",
    ),
    (
        "s_having",
        "SELECT customer_id, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer_id \
         HAVING count(*) > 200 AND max(amount) > 97",
        "customer_id, n, total",
    ),
    (
        "s_count_distinct",
        "SELECT p.category, count(DISTINCT o.customer_id) AS customers, \
         sum(DISTINCT o.amount) AS amounts FROM orders o JOIN products p ON p.id = o.product_id \
         GROUP BY p.category",
        "category, customers, amounts",
    ),
    (
        "s_filter_agg",
        "SELECT customer_id, count(*) FILTER (WHERE amount > 50) AS big, \
         sum(amount) FILTER (WHERE product_id < 10) AS s, max(amount) FILTER (WHERE amount < 90) AS hi \
         FROM orders GROUP BY customer_id",
        "customer_id, big, s, hi",
    ),
    (
        "s_left",
        "SELECT o.customer_id, count(*) AS n, count(p.id) AS matched FROM orders o \
         LEFT JOIN products p ON p.id = o.product_id AND p.category = 'c1' GROUP BY o.customer_id",
        "customer_id, n, matched",
    ),
    (
        "s_right",
        "SELECT p.category, o.customer_id FROM orders o RIGHT JOIN products p \
         ON o.product_id = p.id AND o.amount > 97",
        "category, customer_id",
    ),
    (
        "s_union_all",
        "SELECT customer_id, amount FROM orders WHERE amount > 90 UNION ALL \
         SELECT o.customer_id, p.id FROM orders o JOIN products p ON p.id = o.product_id \
         WHERE p.category = 'c2'",
        "customer_id, amount",
    ),
    (
        "s_bool_string_agg",
        "SELECT p.category, bool_and(o.amount > 2) AS all_big, bool_or(o.customer_id = 3) AS has_3, \
         string_agg(o.id::text, ',' ORDER BY o.id) FILTER (WHERE o.amount > 95) AS ids, \
         array_agg(DISTINCT o.customer_id ORDER BY o.customer_id) AS customers \
         FROM orders o JOIN products p ON p.id = o.product_id GROUP BY p.category",
        "category, all_big, has_3, ids, customers",
    ),
    (
        "s_subquery",
        "SELECT b.customer_id, count(*) AS n, sum(b.a2) AS total FROM \
         (SELECT customer_id, amount * 2 AS a2 FROM orders WHERE amount > 30) b GROUP BY b.customer_id",
        "customer_id, n, total",
    ),
    (
        "s_cte",
        "WITH cheap AS (SELECT id, category FROM products WHERE id < 12) \
         SELECT o.customer_id, c.category FROM orders o JOIN cheap c ON c.id = o.product_id \
         WHERE o.amount > 90",
        "customer_id, category",
    ),
    (
        "s_exists",
        "SELECT p.category, p.id FROM products p WHERE EXISTS \
         (SELECT 1 FROM orders o WHERE o.product_id = p.id AND o.amount > 98)",
        "category, id",
    ),
    (
        "s_not_exists",
        "SELECT o.customer_id, count(*) AS n FROM orders o WHERE NOT EXISTS \
         (SELECT 1 FROM products p WHERE p.id = o.product_id AND p.category = 'c1') \
         GROUP BY o.customer_id",
        "customer_id, n",
    ),
    (
        "s_in",
        "SELECT o.customer_id, o.amount FROM orders o WHERE o.product_id IN \
         (SELECT id FROM products WHERE category = 'c3') AND o.amount > 80",
        "customer_id, amount",
    ),
    (
        "s_window",
        "SELECT o.customer_id, o.amount, rank() OVER (PARTITION BY o.customer_id ORDER BY o.amount) AS r, \
         count(*) OVER (PARTITION BY o.customer_id) AS n, p.category \
         FROM orders o JOIN products p ON p.id = o.product_id WHERE o.amount > 80",
        "customer_id, amount, r, n, category",
    ),
];

async fn setup(shoal: &Shoal) {
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, category text);
         CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, product_id int, amount int);
         INSERT INTO products SELECT g, 'c' || (g % 4) FROM generate_series(1, 20) g;
         INSERT INTO orders SELECT g, g % 10, 1 + g % 20, g % 100 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "products"])
        .await
        .assert_ok();
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
    for (name, query, _) in STREAMS {
        let out = shoal
            .cli(&[
                "stream",
                "create",
                name,
                "--query",
                query,
                "--mode",
                "differential",
            ])
            .await;
        out.assert_ok();
    }
}

/// Random inserts, updates (of values, of the grouping key, of the join key) and deletes through
/// the coordinator, and changes to the reference table.
async fn random_writes(sql: &Client, rng: &mut StdRng, count: usize) {
    for _ in 0..count {
        let id: i64 = rng.gen_range(1..3000);
        let statement = match rng.gen_range(0..7) {
            0 | 1 => format!(
                "INSERT INTO orders VALUES ({id}, {}, {}, {}) ON CONFLICT DO NOTHING",
                rng.gen_range(0..10),
                rng.gen_range(1..21),
                rng.gen_range(0..100)
            ),
            2 => format!(
                "UPDATE orders SET amount = {} WHERE id = {id}",
                rng.gen_range(0..100)
            ),
            3 => format!(
                "UPDATE orders SET customer_id = {} WHERE id = {id}",
                rng.gen_range(0..10)
            ),
            4 => format!(
                "UPDATE orders SET product_id = {} WHERE id = {id}",
                rng.gen_range(1..21)
            ),
            5 => format!("DELETE FROM orders WHERE id = {id}"),
            _ => format!(
                "UPDATE products SET category = 'c{}' WHERE id = {}",
                rng.gen_range(0..5),
                rng.gen_range(1..21)
            ),
        };
        sql.batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
}

async fn assert_exact(sql: &Client, when: &str) {
    for (name, _, _) in STREAMS {
        assert_view_exact(sql, name, when).await;
    }
}

/// One of the test's stream tables equals its query recomputed.
async fn assert_view_exact(sql: &Client, name: &str, when: &str) {
    let (_, query, columns) = STREAMS
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("a stream table of the test");
    assert_matches_query(sql, name, query, columns, when).await;
}

async fn refresh_all(shoal: &Shoal) {
    for (name, _, _) in STREAMS {
        shoal.cli(&["stream", "refresh", name]).await.assert_ok();
    }
}

async fn last_modes(sql: &Client) -> Vec<String> {
    sql.query(
        "SELECT coalesce(last_refresh_mode, '') FROM shoal.stream_table ORDER BY stream_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn stream_tables_stay_exact_through_writes_moves_and_a_worker_restart() {
    let shoal = common::start(2).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    let mut rng = StdRng::seed_from_u64(7);
    assert_exact(&sql, "creation").await;

    random_writes(&sql, &mut rng, 200).await;
    refresh_all(&shoal).await;
    assert_exact(&sql, "random writes").await;
    assert_eq!(last_modes(&sql).await, vec!["differential"; STREAMS.len()]);

    // Moves under writes: no reinitialisation, exact results.
    let shards: Vec<(i64, i32)> = sql
        .query("SELECT shard_id, node_id FROM shoal.shards WHERE table_name = 'orders'::regclass ORDER BY shard_index", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // One move of each mode: both copy rows onto a worker whose changes are captured, and
    // neither copy may be taken for new rows.
    for ((shard, node), mode) in shards.iter().zip(["force_logical", "block_writes"]) {
        let target = if *node == 1 { "2" } else { "1" };
        let shard = shard.to_string();
        let mover = shoal.spawn_cli(
            &["shard", "move", &shard, "--to", target, "--mode", mode],
            &[],
        );
        random_writes(&sql, &mut rng, 100).await;
        let output = mover.await.unwrap();
        common::assert_success(&output);
        random_writes(&sql, &mut rng, 50).await;
        refresh_all(&shoal).await;
        assert_exact(&sql, &format!("moving shard {shard}")).await;
        assert_eq!(
            last_modes(&sql).await,
            vec!["differential"; STREAMS.len()],
            "a move never forces a full refresh"
        );
    }

    // A worker restart: capture from it fails while it is down, its changes arrive afterwards.
    random_writes(&sql, &mut rng, 50).await;
    shoal.pg.stop_worker(1);
    let cluster = &shoal.cluster;
    let config = SchedulerConfig::new("test".into());
    for _ in 0..6 {
        let _ = runtime::tick(cluster, &config).await;
    }
    let (failures, alert): (i32, bool) = {
        let row = sql
            .query_one(
                "SELECT consecutive_failures, alert FROM shoal.worker_slot WHERE node_id = 2",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        failures >= 5 && alert,
        "the unreachable worker is flagged ({failures}, {alert})"
    );
    // A full refresh captures every node first, and fails on it too; the flag stays up (that
    // failure used to clear it).
    let out = shoal
        .cli(&["stream", "refresh", STREAMS[0].0, "--full"])
        .await;
    assert!(
        !out.success && out.stderr.contains("node 2 cannot be read"),
        "{}",
        out.stderr
    );
    let row = sql
        .query_one(
            "SELECT consecutive_failures, alert FROM shoal.worker_slot WHERE node_id = 2",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, i32>(0) > failures);
    assert!(
        row.get::<_, bool>(1),
        "the flag stays up until a poll succeeds"
    );
    shoal.pg.start_worker(1);
    random_writes(&sql, &mut rng, 50).await;
    refresh_all(&shoal).await;
    assert_exact(&sql, "a worker restart").await;
    let alert: bool = sql
        .query_one("SELECT alert FROM shoal.worker_slot WHERE node_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!alert, "the flag clears once the worker is back");
}

/// A join with a reference table holds only the reference table while it refreshes: a write to
/// the distributed side left open does not stop it, and windows where the reference table
/// changed (which need every source held) still give exact results.
#[tokio::test]
async fn a_join_refresh_holds_only_its_reference_tables() {
    let shoal = common::start(2).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute("UPDATE orders SET amount = amount + 1 WHERE id <= 300")
        .await
        .unwrap();
    let mut writer = shoal.coordinator().await;
    let open = writer.transaction().await.unwrap();
    open.batch_execute("INSERT INTO orders VALUES (5000, 1, 1, 7)")
        .await
        .unwrap();
    // Holding every source would wait for the open write (and give up after ~20 s). The
    // LEFT JOIN too: its preserved side alone changed, so its rows are probed against the
    // reference table's state only.
    for name in ["s_join", "s_left"] {
        tokio::time::timeout(
            Duration::from_secs(10),
            shoal.cli(&["stream", "refresh", name]),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("{name}'s refresh does not wait for a write to the distributed table")
        })
        .assert_ok();
        assert_view_exact(&sql, name, "a refresh beside an open write").await;
    }
    open.commit().await.unwrap();
    shoal
        .cli(&["stream", "refresh", "s_left"])
        .await
        .assert_ok();
    assert_view_exact(&sql, "s_left", "after the open write committed").await;

    sql.batch_execute(
        "UPDATE products SET category = 'c9' WHERE id <= 3;
         UPDATE orders SET product_id = 2 WHERE id <= 50",
    )
    .await
    .unwrap();
    shoal
        .cli(&["stream", "refresh", "s_join"])
        .await
        .assert_ok();
    assert_view_exact(&sql, "s_join", "changes to both sides").await;
    sql.batch_execute("UPDATE products SET category = 'c1' WHERE id = 2")
        .await
        .unwrap();
    shoal
        .cli(&["stream", "refresh", "s_join"])
        .await
        .assert_ok();
    assert_view_exact(&sql, "s_join", "a change to the reference table alone").await;
    assert_eq!(
        last_modes(&sql).await[2],
        "differential",
        "no fallback to a full refresh"
    );
}

#[tokio::test]
async fn a_crash_between_storing_changes_and_advancing_the_slot_loses_and_doubles_nothing() {
    let shoal = common::start(2).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..3 {
        random_writes(&sql, &mut rng, 100).await;
        let out = shoal
            .cli_env(
                &["stream", "refresh", "s_agg"],
                &[("SHOAL_FAILPOINTS", "crash:after-capture-store")],
            )
            .await;
        assert!(!out.success, "the failpoint ends the process");
        let buffered: i64 = sql
            .query_one("SELECT count(*) FROM shoal.change_buffer", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            buffered > 0,
            "round {round}: changes were stored before the crash"
        );
        refresh_all(&shoal).await;
        assert_exact(&sql, &format!("a crash in round {round}")).await;
    }
}

#[tokio::test]
async fn two_daemons_never_refresh_one_stream_table_at_once() {
    let shoal = common::start(1).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    let stream_id: i32 = sql
        .query_one(
            "SELECT stream_id FROM shoal.stream_table WHERE relid = 's_agg'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let first = SchedulerConfig::new("daemon-a".into());
    let second = SchedulerConfig::new("daemon-b".into());
    assert!(runtime::acquire_lease(&shoal.cluster, stream_id, &first)
        .await
        .unwrap());
    assert!(
        !runtime::acquire_lease(&shoal.cluster, stream_id, &second)
            .await
            .unwrap(),
        "held by the first"
    );
    assert!(
        runtime::acquire_lease(&shoal.cluster, stream_id, &first)
            .await
            .unwrap(),
        "re-entrant for its holder"
    );
    runtime::release_lease(&shoal.cluster, stream_id, &first)
        .await
        .unwrap();
    assert!(runtime::acquire_lease(&shoal.cluster, stream_id, &second)
        .await
        .unwrap());
    runtime::release_lease(&shoal.cluster, stream_id, &second)
        .await
        .unwrap();

    // Two real daemons against one coordinator under writes: results stay exact.
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["serve", "--cleanup-interval", "5", "--listen", "off"])
            .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..5 {
        random_writes(&sql, &mut rng, 40).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Wait until both daemons' ticks have applied everything.
    let started = std::time::Instant::now();
    loop {
        let pending: i64 = sql
            .query_one(
                "SELECT count(*) FROM shoal.stream_table s
                 WHERE s.consumed_seq < coalesce((SELECT max(seq) FROM shoal.change_buffer), 0)
                    OR s.last_refresh_at < now() - interval '1 second' OR s.needs_reinit",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemons never caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = a.kill().await;
    let _ = b.kill().await;
    refresh_all(&shoal).await;
    assert_exact(&sql, "two daemons").await;
}

#[tokio::test]
async fn the_daemon_serves_metrics_and_status() {
    let shoal = common::start(1).await;
    setup(&shoal).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--listen", "off", "--http", &address])
        .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get = |path: &'static str| {
        let address = address.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut body = String::new();
            stream.read_to_string(&mut body).await.ok()?;
            Some(body)
        }
    };
    let started = std::time::Instant::now();
    let metrics = loop {
        if let Some(body) = get("/metrics").await {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the endpoint never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "shoal_capture_alert{node_id=\"1\"",
        "shoal_stream_last_refresh_ms{stream=\"s_agg\"}",
        "shoal_cleanup_records 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in {metrics}");
    }
    let status = get("/status").await.unwrap();
    let json = status.split("\r\n\r\n").nth(1).unwrap();
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(value["streams"].as_array().unwrap().len(), STREAMS.len());
    let _ = daemon.kill().await;
}

#[tokio::test]
async fn stream_tables_stay_exact_through_a_parallel_rebalance_and_a_worker_restart() {
    let mut shoal = common::start(2).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    let mut rng = StdRng::seed_from_u64(23);
    random_writes(&sql, &mut rng, 100).await;

    // A third worker, and a parallel rebalance onto it while writes go on.
    let address = shoal.pg.add_worker().await.host_port();
    shoal.cli(&["node", "add", &address]).await.assert_ok();
    let start = shoal
        .cli(&[
            "rebalance",
            "start",
            "--parallel-colocated",
            "--parallel-reference",
        ])
        .await;
    start.assert_ok();
    let waiter = shoal.spawn_cli(&["rebalance", "wait"], &[]);
    let writer = {
        let uri = shoal.pg.coordinator_uri();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let mut rng = StdRng::seed_from_u64(29);
            for _ in 0..6 {
                random_writes(&client, &mut rng, 40).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let waited = waiter.await.unwrap();
    writer.await.unwrap();
    common::assert_success(&waited);
    let on_new: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.shards WHERE node_id = 3 AND kind = 'hash'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(on_new > 0, "the rebalance moved shards to the new worker");
    refresh_all(&shoal).await;
    assert_exact(&sql, "a parallel rebalance").await;

    // One worker restarted while writes continue.
    shoal.pg.stop_worker(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    shoal.pg.start_worker(0);
    random_writes(&sql, &mut rng, 100).await;
    refresh_all(&shoal).await;
    assert_exact(&sql, "a worker restart after the rebalance").await;
}

/// Buffered changes are read back by column position and cast from their text: awkward names,
/// a dropped column, arrays, timestamps, numerics, NULLs and quotes come back exact.
#[tokio::test]
async fn awkward_names_and_types_come_back_exact() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        r#"CREATE SCHEMA "my schema";
           CREATE TABLE "my schema"."Order ""Items""" (
               "Item ID" bigint PRIMARY KEY, gone int, "Note" text, tags text[],
               at timestamptz, price numeric(10, 2));
           ALTER TABLE "my schema"."Order ""Items""" DROP COLUMN gone;
           INSERT INTO "my schema"."Order ""Items"""
           SELECT g, 'it''s "n' || g || E'"\n', ARRAY['a' || g % 3, NULL, 'b c'],
                  '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', g * 1.25
           FROM generate_series(1, 200) g;"#,
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            r#""my schema"."Order ""Items""""#,
            "--column",
            r#""Item ID""#,
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    let views = [
        (
            "awkward_rows",
            r#"SELECT "Item ID", "Note", tags, at, price FROM "my schema"."Order ""Items""" WHERE price > 10"#,
        ),
        (
            "awkward_sums",
            r#"SELECT tags[1] AS first_tag, count(*) AS n, sum(price) AS total, max(at) AS latest
               FROM "my schema"."Order ""Items""" GROUP BY tags[1]"#,
        ),
    ];
    for (name, query) in views {
        shoal
            .cli(&[
                "stream",
                "create",
                name,
                "--query",
                query,
                "--mode",
                "differential",
            ])
            .await
            .assert_ok();
    }
    sql.batch_execute(
        r#"UPDATE "my schema"."Order ""Items""" SET "Note" = NULL, price = price + 100 WHERE "Item ID" % 7 = 0;
           UPDATE "my schema"."Order ""Items""" SET tags = ARRAY['z''s', '{}'], at = NULL WHERE "Item ID" % 11 = 0;
           DELETE FROM "my schema"."Order ""Items""" WHERE "Item ID" % 13 = 0;
           INSERT INTO "my schema"."Order ""Items""" VALUES (1000, E'tab\there', '{}', now(), 0.01);"#,
    )
    .await
    .unwrap();
    for (name, query) in views {
        shoal.cli(&["stream", "refresh", name]).await.assert_ok();
        let columns = if name == "awkward_rows" {
            r#""Item ID", "Note", tags, at, price"#
        } else {
            "first_tag, n, total, latest"
        };
        assert_matches_query(&sql, name, query, columns, "awkward writes").await;
    }
    let modes: Vec<String> = last_modes(&sql).await;
    assert_eq!(modes, vec!["differential"; 2]);
}

/// `stream alter` changes the schedule and the mode (a new mode starts from a full refresh);
/// `stream drop` removes the view, its storage and its catalog rows, and the last one the
/// capture slots.
#[tokio::test]
async fn stream_tables_are_altered_and_dropped() {
    let shoal = common::start(2).await;
    setup(&shoal).await;
    let sql = shoal.coordinator().await;
    let settings = || async {
        let row = sql
            .query_one(
                "SELECT refresh_mode, needs_reinit, schedule_ms FROM shoal.stream_table
                 WHERE relid = 's_join'::regclass",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, String>(0),
            row.get::<_, bool>(1),
            row.get::<_, i32>(2),
        )
    };
    shoal
        .cli(&["stream", "alter", "s_join", "--mode", "full"])
        .await
        .assert_ok();
    assert!(matches!(settings().await, (mode, true, _) if mode == "full"));
    shoal
        .cli(&[
            "stream",
            "alter",
            "s_join",
            "--mode",
            "differential",
            "--schedule",
            "2s",
        ])
        .await
        .assert_ok();
    assert_eq!(settings().await, ("differential".to_string(), true, 2000));
    random_writes(&sql, &mut StdRng::seed_from_u64(3), 100).await;
    refresh_all(&shoal).await;
    assert_exact(&sql, "altering s_join").await;

    let storage = shoal.stream_storage("s_join").await;
    shoal.cli(&["stream", "drop", "s_join"]).await.assert_ok();
    let gone: bool = sql
        .query_one(
            "SELECT to_regclass('s_join') IS NULL AND to_regclass($1) IS NULL
                    AND (SELECT count(*) FROM shoal.stream_table) = $2",
            &[&storage, &(STREAMS.len() as i64 - 1)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        gone,
        "s_join, its storage {storage} and its catalog row are gone"
    );
    // count(DISTINCT) keeps a values table beside its storage. A storage made before values
    // tables existed lacks it: the next refresh creates it and refreshes in full.
    let values = format!(
        "{}_values_1",
        shoal.stream_storage("s_count_distinct").await
    );
    sql.batch_execute(&format!("DROP TABLE {values}"))
        .await
        .unwrap();
    random_writes(&sql, &mut StdRng::seed_from_u64(4), 100).await;
    shoal
        .cli(&["stream", "refresh", "s_count_distinct"])
        .await
        .assert_ok();
    assert_view_exact(
        &sql,
        "s_count_distinct",
        "after its values table was created again",
    )
    .await;
    let mode: String = sql
        .query_one(
            "SELECT last_refresh_mode FROM shoal.stream_table
             WHERE relid = 's_count_distinct'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "full", "the refresh that created {values} filled it");
    random_writes(&sql, &mut StdRng::seed_from_u64(5), 100).await;
    shoal
        .cli(&["stream", "refresh", "s_count_distinct"])
        .await
        .assert_ok();
    assert_view_exact(
        &sql,
        "s_count_distinct",
        "a differential refresh after that",
    )
    .await;

    for (name, _, _) in STREAMS.iter().filter(|(name, _, _)| *name != "s_join") {
        shoal.cli(&["stream", "drop", name]).await.assert_ok();
    }
    let left: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'shoal' AND c.relname ~ '^stream_[0-9]+(_values_[0-9]+)?$'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "dropping the stream tables drops their storage and values tables"
    );
    let slots: i64 = sql
        .query_one("SELECT count(*) FROM shoal.worker_slot", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 0,
        "the last stream table takes the capture slots with it"
    );
    for worker in &shoal.pg.workers {
        let left: i64 = worker
            .connect()
            .await
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'shoal_capture'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "no capture slot is left on a worker");
    }
}

/// DDL on a stream table's source: changes its query cannot see (a new column, an index) keep
/// it exact (stream queries name their columns: `*` is refused); changes it could see (a
/// column dropped, renamed or retyped, the table renamed or dropped) are refused, naming the
/// stream table.
#[tokio::test]
async fn ddl_on_a_stream_source_keeps_it_exact_or_is_refused() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE src (id bigint PRIMARY KEY, g int, v bigint);
         INSERT INTO src SELECT i, i % 7, i FROM generate_series(1, 1000) i;",
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "src",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    let totals = "SELECT g, count(*) AS n, sum(v) AS total FROM src GROUP BY g";
    shoal
        .cli(&[
            "stream",
            "create",
            "totals",
            "--mode",
            "differential",
            "--query",
            totals,
        ])
        .await
        .assert_ok();
    let refused = |statement: &'static str| {
        let sql = &sql;
        async move {
            let error = sql.batch_execute(statement).await.unwrap_err();
            error.as_db_error().unwrap().message().to_string()
        }
    };

    sql.batch_execute(
        "ALTER TABLE src ADD COLUMN w int DEFAULT 1;
         CREATE INDEX src_by_g ON src (g);
         INSERT INTO src SELECT i, i % 7, i, 2 FROM generate_series(1001, 1100) i;
         UPDATE src SET v = v + 1, w = 3 WHERE id % 10 = 0;
         DELETE FROM src WHERE id % 13 = 0;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["stream", "refresh", "totals"])
        .await
        .assert_ok();
    assert_matches_query(&sql, "totals", totals, "g, n, total", "adding a column").await;
    let mode: String = sql
        .query_one(
            "SELECT last_refresh_mode FROM shoal.stream_table WHERE relid = 'totals'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "differential");

    for statement in [
        "ALTER TABLE src DROP COLUMN w",
        "ALTER TABLE src RENAME COLUMN g TO grp",
        "ALTER TABLE src ALTER COLUMN v TYPE numeric",
        "ALTER TABLE src RENAME TO source",
        "DROP TABLE src",
    ] {
        let message = refused(statement).await;
        assert!(message.contains("totals"), "{statement}: {message}");
    }
    shoal.assert_definitions_match().await;
}
