//! Distributed, reference and schema tables on real clusters.

mod common;

use std::time::{Duration, Instant};

use common::{fingerprint, relations, relkind};

const ORDERS: &str = "
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, note text);
INSERT INTO orders SELECT g, g % 97, g * 1.5, 'note ' || g FROM generate_series(1, 2000) g;";

#[tokio::test]
async fn distributing_keeps_every_row_and_routes_writes_to_the_right_worker() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(ORDERS).await.unwrap();
    let before = fingerprint(&sql, "orders").await;

    let out = shoal
        .cli(&[
            "table",
            "distribute",
            "orders",
            "--column",
            "id",
            "--shards",
            "8",
        ])
        .await;
    assert!(
        out.assert_ok().contains("moved 2000 row(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(relkind(&sql, "orders").await, "p");
    assert_eq!(fingerprint(&sql, "orders").await, before);

    // Every row sits in exactly one shard, and the shards add up to the table.
    let shards = sql
        .query(
            "SELECT shard_table, port FROM shoal.shards WHERE table_name = 'orders'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(shards.len(), 8);
    let mut total = 0;
    for row in &shards {
        let shard: String = row.get(0);
        let worker = shoal.worker(shoal.worker_of_shard(&shard).await).await;
        total += worker
            .query_one(&format!("SELECT count(*) FROM {shard}"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    assert_eq!(total, 2000);

    // A write through the coordinator lands in the shard PostgreSQL routes it to, on that
    // shard's worker, and nowhere else.
    let shard: String = sql
        .query_one(
            "INSERT INTO orders VALUES (5001, 7, 10, 'new') RETURNING tableoid::regclass::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let home = shoal.worker_of_shard(&format!("public.{shard}")).await;
    let on_worker = |i: usize, query: String| {
        let shoal = &shoal;
        async move { shoal.worker(i).await.query(&query, &[]).await.unwrap() }
    };
    let found = on_worker(
        home,
        format!("SELECT amount::text, note FROM {shard} WHERE id = 5001"),
    )
    .await;
    assert_eq!(found.len(), 1);
    let other = 1 - home;
    let other_tables: Vec<String> = shoal
        .worker(other)
        .await
        .query("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE tablename LIKE 'orders\\_%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in &other_tables {
        assert!(
            on_worker(other, format!("SELECT 1 FROM {table} WHERE id = 5001"))
                .await
                .is_empty()
        );
    }

    sql.execute("UPDATE orders SET note = 'updated' WHERE id = 5001", &[])
        .await
        .unwrap();
    let found = on_worker(home, format!("SELECT note FROM {shard} WHERE id = 5001")).await;
    assert_eq!(found[0].get::<_, String>(0), "updated");
    sql.execute("DELETE FROM orders WHERE id = 5001", &[])
        .await
        .unwrap();
    assert!(
        on_worker(home, format!("SELECT 1 FROM {shard} WHERE id = 5001"))
            .await
            .is_empty()
    );

    // The primary key is enforced on the shard.
    let duplicate = sql
        .execute("INSERT INTO orders VALUES (1, 1, 1, 'dup')", &[])
        .await;
    assert!(duplicate.is_err(), "a duplicate key must be refused");

    let listed = shoal
        .cli(&["shard", "list", "--table", "orders", "--json"])
        .await;
    let json: serde_json::Value = serde_json::from_str(listed.assert_ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 8);
    assert!(json[0]["size_bytes"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn colocated_tables_share_nodes_shard_by_shard() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE a (k bigint, v int); CREATE TABLE b (k bigint, w int);
         CREATE TABLE c (k bigint); CREATE TABLE d (k int);
         INSERT INTO a SELECT g, g FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "distribute", "a", "--column", "k", "--shards", "6"])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "b",
            "--column",
            "k",
            "--colocate-with",
            "a",
        ])
        .await
        .assert_ok();
    // Same shard count and type: the default group, colocated without being asked.
    shoal
        .cli(&["table", "distribute", "c", "--column", "k", "--shards", "6"])
        .await
        .assert_ok();
    // --colocate-with none: a group of its own.
    shoal
        .cli(&[
            "table",
            "distribute",
            "d",
            "--column",
            "k",
            "--shards",
            "6",
            "--colocate-with",
            "none",
        ])
        .await
        .assert_ok();

    let groups = sql
        .query(
            "SELECT relid::regclass::text, colocation_id FROM shoal.distributed_table ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let group = |name: &str| {
        groups
            .iter()
            .find(|r| r.get::<_, String>(0) == name)
            .unwrap()
            .get::<_, i32>(1)
    };
    assert_eq!(group("a"), group("b"));
    assert_eq!(group("a"), group("c"));
    assert_ne!(group("a"), group("d"));

    let mismatched: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.shards x JOIN shoal.shards y USING (shard_index)
             WHERE x.table_name = 'a'::regclass AND y.table_name IN ('b'::regclass, 'c'::regclass)
               AND x.node_id <> y.node_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
    let nodes: i64 = sql
        .query_one(
            "SELECT count(DISTINCT node_id) FROM shoal.shards WHERE table_name = 'a'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 2, "shards spread over both workers");

    // A colocated join gives the same answer as before distribution.
    let joined: i64 = sql
        .query_one(
            "SELECT count(*) FROM a JOIN b USING (k) WHERE a.v = b.w",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, 100);
}

#[tokio::test]
async fn reference_tables_are_on_every_worker_and_foreign_keys_to_them_hold() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, name text);
         INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 50) g;
         CREATE TABLE sales (id bigint PRIMARY KEY, product_id int REFERENCES products (id), qty int);
         INSERT INTO sales SELECT g, 1 + g % 50, g FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let before = fingerprint(&sql, "products").await;
    let out = shoal.cli(&["table", "reference", "products"]).await;
    assert!(out.assert_ok().contains("2 node(s)"), "{}", out.stdout);
    for i in 0..2 {
        assert_eq!(
            fingerprint(&shoal.worker(i).await, "products").await,
            before
        );
    }

    // Writes on the coordinator reach every worker.
    sql.execute("INSERT INTO products VALUES (51, 'p51')", &[])
        .await
        .unwrap();
    sql.execute("UPDATE products SET name = 'renamed' WHERE id = 1", &[])
        .await
        .unwrap();
    let expected = fingerprint(&sql, "products").await;
    for i in 0..2 {
        let worker = shoal.worker(i).await;
        let started = Instant::now();
        while fingerprint(&worker, "products").await != expected {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "worker {i} never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    shoal
        .cli(&[
            "table",
            "distribute",
            "sales",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    assert_eq!(fingerprint(&sql, "sales").await.0, 300);
    // The foreign key lives on the shards: an unknown product is refused by the worker.
    let refused = sql
        .execute("INSERT INTO sales VALUES (1000, 999, 1)", &[])
        .await;
    let message = format!("{:?}", refused.expect_err("foreign key must hold"));
    assert!(message.contains("foreign key"), "{message}");
    sql.execute("INSERT INTO sales VALUES (1000, 51, 1)", &[])
        .await
        .unwrap();

    // While a shard references it, the reference table stays.
    shoal
        .cli(&["table", "undistribute", "products"])
        .await
        .assert_error(&["foreign key"]);
    shoal
        .cli(&["table", "undistribute", "sales"])
        .await
        .assert_ok();
    shoal
        .cli(&["table", "undistribute", "products"])
        .await
        .assert_ok();
    for i in 0..2 {
        assert!(!relations(&shoal.worker(i).await).await.contains("products"));
    }
    assert_eq!(relkind(&sql, "products").await, "r");
    // The restored foreign key on the coordinator works again.
    assert!(sql
        .execute("INSERT INTO sales VALUES (2000, 999, 1)", &[])
        .await
        .is_err());
}

#[tokio::test]
async fn a_distributed_schema_lives_on_one_node_and_syncs_new_tables() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    // Give worker one shards first, so the schema goes to the emptier worker two.
    sql.batch_execute(
        "CREATE TABLE filler (k int); SELECT 1;
         CREATE SCHEMA \"Tenant A\";
         CREATE TABLE \"Tenant A\".users (id serial PRIMARY KEY, email text UNIQUE);
         CREATE TABLE \"Tenant A\".tickets (id serial PRIMARY KEY,
             user_id int REFERENCES \"Tenant A\".users (id), title text);
         INSERT INTO \"Tenant A\".users (email) SELECT 'u' || g FROM generate_series(1, 20) g;
         INSERT INTO \"Tenant A\".tickets (user_id, title) SELECT 1 + g % 20, 't' || g FROM generate_series(1, 60) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "filler",
            "--column",
            "k",
            "--shards",
            "1",
        ])
        .await
        .assert_ok();
    let users = fingerprint(&sql, "\"Tenant A\".users").await;
    let tickets = fingerprint(&sql, "\"Tenant A\".tickets").await;

    let out = shoal
        .cli(&["schema", "distribute", "\"Tenant A\"", "--json"])
        .await;
    let report: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    assert_eq!(report["tables"].as_array().unwrap().len(), 2);
    assert_eq!(relkind(&sql, "\"Tenant A\".users").await, "p");
    assert_eq!(fingerprint(&sql, "\"Tenant A\".users").await, users);
    assert_eq!(fingerprint(&sql, "\"Tenant A\".tickets").await, tickets);
    let filler_node: i32 = sql
        .query_one(
            "SELECT node_id FROM shoal.shards WHERE table_name = 'filler'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        report["node_id"].as_i64().unwrap() as i32,
        filler_node,
        "the emptier node"
    );

    // Defaults (serial) still work through the foreign table; the foreign key is enforced on
    // the node.
    sql.execute("INSERT INTO \"Tenant A\".users (email) VALUES ('new')", &[])
        .await
        .unwrap();
    assert!(sql
        .execute(
            "INSERT INTO \"Tenant A\".tickets (user_id, title) VALUES (999, 'x')",
            &[]
        )
        .await
        .is_err());

    sql.batch_execute("CREATE TABLE \"Tenant A\".notes (id int PRIMARY KEY, body text); INSERT INTO \"Tenant A\".notes VALUES (1, 'hello')")
        .await
        .unwrap();
    shoal
        .cli(&["schema", "sync", "\"Tenant A\""])
        .await
        .assert_ok();
    let nodes: i64 = sql
        .query_one(
            "SELECT count(DISTINCT node_id) FROM shoal.shards s JOIN shoal.distributed_table t
             ON t.relid = s.table_name::oid WHERE t.kind = 'schema'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 1, "every table of the schema on one node");
    assert_eq!(fingerprint(&sql, "\"Tenant A\".notes").await.0, 1);
    shoal
        .cli(&["schema", "distribute", "\"Tenant A\""])
        .await
        .assert_error(&["already distributed"]);
}

#[tokio::test]
async fn undistribute_brings_every_row_back() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL CHECK (kind <> ''), at timestamptz DEFAULT now());
         CREATE INDEX events_kind ON events (kind);
         INSERT INTO events (kind) SELECT 'k' || (g % 7) FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let before = fingerprint(&sql, "events").await;
    shoal
        .cli(&["table", "distribute", "events", "--column", "id"])
        .await
        .assert_ok();
    sql.execute("INSERT INTO events (kind) VALUES ('after')", &[])
        .await
        .unwrap();
    sql.execute("DELETE FROM events WHERE kind = 'after'", &[])
        .await
        .unwrap();
    assert_eq!(fingerprint(&sql, "events").await, before);

    let out = shoal.cli(&["table", "undistribute", "events"]).await;
    assert!(out.assert_ok().contains("500 row(s)"), "{}", out.stdout);
    assert_eq!(relkind(&sql, "events").await, "r");
    assert_eq!(fingerprint(&sql, "events").await, before);
    // Constraints, indexes and the sequence came back.
    let indexes: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 2);
    assert!(sql
        .execute("INSERT INTO events (id, kind) VALUES (1, 'dup')", &[])
        .await
        .is_err());
    assert!(sql
        .execute("INSERT INTO events (kind) VALUES ('')", &[])
        .await
        .is_err());
    sql.execute("INSERT INTO events (kind) VALUES ('next')", &[])
        .await
        .unwrap();
    // Nothing is left on the workers or in the catalog.
    for i in 0..2 {
        assert_eq!(relations(&shoal.worker(i).await).await, "");
    }
    let catalog: i64 = sql
        .query_one("SELECT count(*) FROM shoal.shard", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(catalog, 0);
}

#[tokio::test]
async fn awkward_identifiers_work_everywhere() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE SCHEMA \"my schema\";
         CREATE TABLE \"my schema\".\"Order \"\"Items\"\"\" (\"Kunden Nr\" bigint, \"größe\" text, \"select\" int,
             PRIMARY KEY (\"Kunden Nr\", \"select\"));
         INSERT INTO \"my schema\".\"Order \"\"Items\"\"\" SELECT g % 10, 'ä' || g, g FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    let table = "\"my schema\".\"Order \"\"Items\"\"\"";
    let before = fingerprint(&sql, table).await;
    shoal
        .cli(&[
            "table",
            "distribute",
            table,
            "--column",
            "\"Kunden Nr\"",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    assert_eq!(fingerprint(&sql, table).await, before);
    sql.execute(&format!("INSERT INTO {table} VALUES (3, 'ö', 1000)"), &[])
        .await
        .unwrap();
    let listed = shoal.cli(&["table", "list"]).await;
    assert!(
        listed
            .assert_ok()
            .contains("\"my schema\".\"Order \"\"Items\"\"\""),
        "{}",
        listed.stdout
    );
    shoal
        .cli(&["table", "undistribute", table])
        .await
        .assert_ok();
    assert_eq!(fingerprint(&sql, table).await.0, 201);
}

/// pgbench's own schema with its foreign keys: branches and tellers become reference tables,
/// accounts and history are distributed together by aid, and every key stays enforced.
#[tokio::test]
async fn pgbench_with_foreign_keys_is_sharded_with_its_keys() {
    let shoal = common::start(2).await;
    let pgbench = shoal_testkit::binaries().program("pgbench");
    let init = tokio::process::Command::new(&pgbench)
        .args(["-i", "-s", "1", "--foreign-keys", "-q"])
        .arg(shoal.pg.coordinator_uri())
        .output()
        .await
        .unwrap();
    common::assert_success(&init);
    let sql = shoal.coordinator().await;
    let accounts = fingerprint(&sql, "pgbench_accounts").await;

    for table in ["pgbench_branches", "pgbench_tellers"] {
        shoal.cli(&["table", "reference", table]).await.assert_ok();
    }
    shoal
        .cli(&["table", "distribute", "pgbench_accounts", "--column", "aid"])
        .await
        .assert_error(&["pgbench_history", "--with-referencing"]);
    let out = shoal
        .cli(&[
            "table",
            "distribute",
            "pgbench_accounts",
            "--column",
            "aid",
            "--shards",
            "4",
            "--with-referencing",
        ])
        .await;
    assert!(
        out.assert_ok()
            .contains("distributed public.pgbench_history by aid"),
        "{}",
        out.stdout
    );
    assert_eq!(fingerprint(&sql, "pgbench_accounts").await, accounts);
    shoal.assert_definitions_match().await;

    // The keys hold on the shards: to the colocated accounts and to the reference tables.
    sql.batch_execute("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 7, 5)")
        .await
        .unwrap();
    for (bad, key) in [
        ("(1, 1, 999999, 5)", "pgbench_history_aid_fkey"),
        ("(1, 99, 7, 5)", "pgbench_history_bid_fkey"),
    ] {
        let error = sql
            .batch_execute(&format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES {bad}"
            ))
            .await
            .unwrap_err();
        let message = error.as_db_error().unwrap().message().to_string();
        assert!(message.contains(key), "{message}");
    }
    // pgbench's own workload runs on it, and every transaction it counts as done is there.
    // (Some fail: postgres_fdw runs the shards' side at REPEATABLE READ, so a key check that
    // meets a teller row the replication just updated is a serialization failure; that is the
    // coordinator path's limit, not DDL's.)
    let run = tokio::process::Command::new(&pgbench)
        .args(["-t", "40", "-c", "1", "--no-vacuum"])
        .arg(shoal.pg.coordinator_uri())
        .output()
        .await
        .unwrap();
    common::assert_success(&run);
    let report = String::from_utf8_lossy(&run.stdout);
    let processed: i64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report}"));
    assert!(processed > 20, "{report}");
    let history: i64 = sql
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 1 + processed, "{report}");
    shoal
        .cli(&["table", "undistribute", "pgbench_accounts"])
        .await
        .assert_error(&["pgbench_history_aid_fkey", "undistribute that table first"]);
}
