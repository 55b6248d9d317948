//! DDL through plain SQL on the coordinator: propagated to every shard and replica inside the
//! statement's transaction, or refused before anything changes.

mod common;

use tokio_postgres::Client;

use common::{fingerprint, Shoal};

/// A distributed table with awkward names: schema `my shop`, table `Order "Items"`, 8 shards.
const ITEMS: &str = r#"
CREATE SCHEMA "my shop";
CREATE TABLE "my shop"."Order ""Items""" ("Id" bigint PRIMARY KEY, k int, v text);
INSERT INTO "my shop"."Order ""Items""" SELECT g, g % 10, 'v' || g FROM generate_series(1, 500) g;"#;
const ITEMS_NAME: &str = r#""my shop"."Order ""Items""""#;

async fn with_items() -> (Shoal, Client) {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(ITEMS).await.unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            ITEMS_NAME,
            "--column",
            r#""Id""#,
            "--shards",
            "8",
        ])
        .await
        .assert_ok();
    (shoal, sql)
}

/// Runs a statement that must fail and returns PostgreSQL's message with its hint.
async fn refused(sql: &Client, statement: &str) -> String {
    let error = sql
        .batch_execute(statement)
        .await
        .expect_err(&format!("{statement} must be refused"));
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{statement}: {error}"));
    format!("{} {}", db.message(), db.hint().unwrap_or(""))
}

fn assert_mentions(text: &str, phrases: &[&str]) {
    for phrase in phrases {
        assert!(text.contains(phrase), "{phrase:?} is not in: {text}");
    }
}

#[tokio::test]
async fn column_changes_reach_every_shard_and_queries_keep_working() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;

    sql.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN w int DEFAULT 7"))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;
    let row = sql
        .query_one(&format!("SELECT count(*), min(w), max(w) FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, Option<i32>>(1),
            row.get::<_, Option<i32>>(2)
        ),
        (500, Some(7), Some(7))
    );
    sql.batch_execute(&format!(
        "INSERT INTO {t} (\"Id\", k, v) VALUES (501, 1, 'new')"
    ))
    .await
    .unwrap();
    let w: i32 = sql
        .query_one(&format!("SELECT w FROM {t} WHERE \"Id\" = 501"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(w, 7, "the coordinator fills the default of new rows");

    // NOT NULL with a default, and a volatile default: every existing row gets its own value.
    sql.batch_execute(&format!(
        "ALTER TABLE {t} ADD COLUMN n text NOT NULL DEFAULT 'none';
         ALTER TABLE {t} ADD COLUMN r float8 NOT NULL DEFAULT random()"
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let row = sql
        .query_one(
            &format!("SELECT count(DISTINCT r), count(*) FILTER (WHERE n = 'none') FROM {t}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (501, 501));

    // Rename: the shards' column follows, so queries naming the new name work.
    sql.batch_execute(&format!(r#"ALTER TABLE {t} RENAME COLUMN k TO "Kind""#))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;
    let sum: i64 = sql
        .query_one(&format!(r#"SELECT sum("Kind")::bigint FROM {t}"#), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, (1..=500).map(|g| g % 10).sum::<i64>() + 1);

    // Type change (without USING: PostgreSQL refuses USING over foreign tables), defaults and
    // not-null changes, and a drop.
    sql.batch_execute(&format!(
        r#"ALTER TABLE {t} ALTER COLUMN "Kind" TYPE bigint;
           ALTER TABLE {t} ALTER COLUMN w SET DEFAULT 8;
           ALTER TABLE {t} ALTER COLUMN v SET NOT NULL;
           ALTER TABLE {t} ALTER COLUMN n DROP DEFAULT;
           ALTER TABLE {t} ALTER COLUMN n DROP NOT NULL;
           ALTER TABLE {t} DROP COLUMN r"#
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    sql.batch_execute(&format!(
        r#"INSERT INTO {t} ("Id", "Kind", v) VALUES (502, 5000000000, 'x')"#
    ))
    .await
    .unwrap();
    let row = sql
        .query_one(
            &format!(r#"SELECT "Kind", w, n FROM {t} WHERE "Id" = 502"#),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5_000_000_000);
    assert_eq!(row.get::<_, i32>(1), 8);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    let null_v = refused(
        &sql,
        &format!(r#"INSERT INTO {t} ("Id", v) VALUES (503, NULL)"#),
    )
    .await;
    assert_mentions(&null_v, &["null value"]);

    // Keywords inside constants, quoted names and comments are not what the statement does.
    sql.batch_execute(&format!(
        r#"ALTER TABLE {t} ADD COLUMN "unique" text DEFAULT 'primary key; references' /* using */"#
    ))
    .await
    .unwrap();
    sql.batch_execute(&format!(r#"ALTER TABLE {t} DROP COLUMN "unique""#))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;

    // SELECT * and COPY see the same columns on every shard.
    let columns = sql
        .query(&format!("SELECT * FROM {t} ORDER BY \"Id\" LIMIT 1"), &[])
        .await
        .unwrap()[0]
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect::<Vec<_>>();
    assert_eq!(columns, ["Id", "Kind", "v", "w", "n"]);
    let history: i64 = sql
        .query_one("SELECT count(*) FROM shoal.ddl_change", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        history >= 8,
        "every propagated statement is recorded: {history}"
    );
}

#[tokio::test]
async fn check_constraints_and_indexes_reach_every_shard() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;

    // A check the rows break is refused by the shards, and nothing changes anywhere.
    let before = shoal.definitions().await;
    let error = refused(
        &sql,
        &format!("ALTER TABLE {t} ADD CONSTRAINT small CHECK (k < 5)"),
    )
    .await;
    assert_mentions(&error, &["violated by some row", "nothing was changed"]);
    assert_eq!(shoal.definitions().await, before);

    sql.batch_execute(&format!(
        "ALTER TABLE {t} ADD CONSTRAINT k_range CHECK (k >= 0);
         ALTER TABLE {t} ADD CONSTRAINT later CHECK (k < 100) NOT VALID"
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let error = refused(&sql, &format!("INSERT INTO {t} VALUES (900, -1, 'neg')")).await;
    assert_mentions(&error, &["k_range"]);
    sql.batch_execute(&format!(
        "ALTER TABLE {t} VALIDATE CONSTRAINT later;
         ALTER TABLE {t} RENAME CONSTRAINT later TO k_below_100"
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    sql.batch_execute(&format!("ALTER TABLE {t} DROP CONSTRAINT k_range"))
        .await
        .unwrap();
    sql.batch_execute(&format!("INSERT INTO {t} VALUES (900, -1, 'neg')"))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;

    sql.batch_execute(&format!(
        r#"CREATE INDEX "by v" ON {t} (v);
           CREATE INDEX ON {t} (lower(v)) WHERE k > 2"#
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let worker = shoal.worker(0).await;
    let on_shards: i64 = worker
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'my shop' AND indexname LIKE 'by v\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_shards, 4, "each of the worker's 4 shards has the index");
    sql.batch_execute(
        r#"ALTER INDEX "my shop"."by v" RENAME TO "by value";
           DROP INDEX "my shop"."Order ""Items""_lower_idx""#,
    )
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    // The planner of each shard uses its index.
    let plan: String = worker
        .query_one(
            r#"SELECT string_agg(indexname, ',') FROM pg_indexes
               WHERE schemaname = 'my shop' AND indexname LIKE 'by value\_%'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan.split(',').count(), 4, "{plan}");
}

#[tokio::test]
async fn ddl_in_a_rolled_back_transaction_is_rolled_back_everywhere() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    let before = shoal.definitions().await;
    let content = fingerprint(&sql, t).await;

    sql.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE {t} ADD COLUMN w int DEFAULT 1;
         CREATE INDEX ON {t} (k);
         ALTER TABLE {t} RENAME COLUMN v TO value;
         ROLLBACK"
    ))
    .await
    .unwrap();
    assert_eq!(shoal.definitions().await, before);

    // A savepoint rolled back takes its part of the change with it; the rest commits. The
    // column added earlier in the transaction can be filled in it (the shards see it too).
    sql.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE {t} ADD COLUMN w int;
         UPDATE {t} SET w = k * 2;
         SAVEPOINT s;
         ALTER TABLE {t} ADD COLUMN dropped_again int;
         ROLLBACK TO SAVEPOINT s;
         COMMIT"
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let row = sql
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE w = k * 2), count(*) FROM {t}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (500, 500));
    assert_eq!(
        fingerprint(&sql, &format!("(SELECT \"Id\", k, v FROM {t})")).await,
        content
    );
    let error = refused(&sql, &format!("SELECT dropped_again FROM {t}")).await;
    assert_mentions(&error, &["does not exist"]);
}

#[tokio::test]
async fn a_worker_down_refuses_ddl_and_nothing_changes() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    let before = shoal.definitions().await;
    shoal.pg.stop_worker(1);
    let error = refused(&sql, &format!("ALTER TABLE {t} ADD COLUMN w int")).await;
    assert_mentions(&error, &["node 2", "nothing was changed on any node"]);
    shoal.pg.start_worker(1);
    assert_eq!(shoal.definitions().await, before);
    sql.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN w int"))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;
}

#[tokio::test]
async fn statements_that_would_break_the_table_are_refused_before_anything_changes() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    let before = shoal.definitions().await;
    let shard: String = sql
        .query_one(
            &format!("SELECT shard_table FROM shoal.shards WHERE table_name = '{t}'::regclass ORDER BY shard_id LIMIT 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let partition = shard.trim_end_matches('"').to_string() + "_shard\"";

    for (statement, phrases) in [
        (
            format!("ALTER TABLE {t} DETACH PARTITION {partition}"),
            vec!["partitions of distributed table", "undistribute"],
        ),
        (
            format!("DROP TABLE {partition}"),
            vec!["is a shard of distributed table"],
        ),
        (
            format!("DROP FOREIGN TABLE {shard}"),
            vec!["is a shard of distributed table"],
        ),
        (
            format!("ALTER FOREIGN TABLE {shard} OPTIONS (SET table_name 'elsewhere')"),
            vec!["is part of distributed table", "change"],
        ),
        (
            format!("ALTER TABLE {t} ADD COLUMN s bigserial"),
            vec!["sequence does not exist", "SET DEFAULT"],
        ),
        (
            format!("CREATE INDEX CONCURRENTLY ON {t} (k)"),
            vec!["concurrently", "shoal ddl"],
        ),
        (
            format!(
                r#"CREATE TABLE "my shop".extra PARTITION OF {t} FOR VALUES WITH (MODULUS 8, REMAINDER 0)"#
            ),
            vec!["would overlap"],
        ),
        // PostgreSQL's own refusals on a partitioned table over foreign tables.
        (
            format!(r#"ALTER TABLE {t} ALTER COLUMN "Id" TYPE int"#),
            vec!["partition key"],
        ),
        (
            format!("ALTER TABLE {t} ADD COLUMN g int GENERATED ALWAYS AS IDENTITY"),
            vec!["identity"],
        ),
        (
            format!("ALTER TABLE {t} ADD UNIQUE (\"Id\", k)"),
            vec!["unique"],
        ),
    ] {
        let error = refused(&sql, &statement).await;
        assert_mentions(&error, &phrases);
    }
    assert_eq!(shoal.definitions().await, before);
    shoal.assert_definitions_match().await;
}

/// The first shard of a table and the node it is on.
async fn first_shard(sql: &Client, table: &str) -> (i64, i32) {
    let row = sql
        .query_one(
            "SELECT shard_id, node_id FROM shoal.shards WHERE table_name = to_regclass($1)
             ORDER BY shard_index LIMIT 1",
            &[&table],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn other_node(node: i32) -> &'static str {
    if node == 1 {
        "2"
    } else {
        "1"
    }
}

#[tokio::test]
async fn renamed_tables_keep_working_and_moves_build_the_new_definition() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute(&format!(
        r#"ALTER TABLE {t} ADD COLUMN w int NOT NULL DEFAULT 3;
           ALTER TABLE {t} ADD CONSTRAINT w_positive CHECK (w > 0);
           CREATE INDEX by_w ON {t} (w);
           ALTER TABLE {t} RENAME COLUMN "Id" TO ident;
           ALTER TABLE {t} RENAME TO "Items 2";
           ALTER TABLE "my shop"."Items 2" SET SCHEMA public"#
    ))
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let moved = r#"public."Items 2""#;
    let column: String = sql
        .query_one(
            "SELECT distribution_column FROM shoal.distributed_table WHERE relid = to_regclass($1)",
            &[&moved],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        column, "ident",
        "the distribution column follows its rename"
    );
    let before = fingerprint(&sql, moved).await;

    // Both kinds of move rebuild the shard from the record: it has the new columns, the
    // renamed key and the check, and the rows come along.
    for mode in ["force_logical", "block_writes"] {
        let (shard, node) = first_shard(&sql, moved).await;
        shoal
            .cli(&[
                "shard",
                "move",
                &shard.to_string(),
                "--to",
                other_node(node),
                "--mode",
                mode,
            ])
            .await
            .assert_ok();
        shoal.assert_definitions_match().await;
        assert_eq!(fingerprint(&sql, moved).await, before);
    }
    sql.batch_execute(&format!(
        "INSERT INTO {moved} (ident, k, v) VALUES (10000, 1, 'after')"
    ))
    .await
    .unwrap();
    let error = refused(
        &sql,
        &format!("INSERT INTO {moved} (ident, k, v, w) VALUES (10001, 1, 'x', 0)"),
    )
    .await;
    assert_mentions(&error, &["w_positive"]);
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn ddl_that_meets_a_running_move_is_refused_until_the_move_ends() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    let (shard, node) = first_shard(&sql, t).await;
    let mover = shoal.spawn_cli(
        &[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            other_node(node),
        ],
        &[("SHOAL_FAILPOINTS", "pause:Copying Data:2000")],
    );
    let operation = shoal.wait_for_status(shard, "Copying Data").await;
    let before = shoal.definitions().await;
    let error = refused(&sql, &format!("ALTER TABLE {t} ADD COLUMN w int")).await;
    assert_mentions(&error, &["being moved", "rebalance_progress"]);
    let error = refused(&sql, &format!("DROP TABLE {t}")).await;
    assert_mentions(&error, &["being moved"]);
    assert_eq!(shoal.definitions().await, before);
    common::assert_success(&mover.await.unwrap());
    let status: String = sql
        .query_one(
            "SELECT status FROM shoal.transfer WHERE operation_id = $1",
            &[&operation],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Completed");
    sql.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN w int"))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;
}

#[tokio::test]
async fn drop_table_removes_every_shard_even_from_a_node_that_is_down() {
    let (shoal, sql) = with_items().await;
    sql.batch_execute(
        "CREATE TABLE plain_drop (id int PRIMARY KEY);
         CREATE TABLE late_drop (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    for table in ["plain_drop", "late_drop"] {
        shoal
            .cli(&[
                "table",
                "distribute",
                table,
                "--column",
                "id",
                "--shards",
                "4",
            ])
            .await
            .assert_ok();
    }
    sql.batch_execute(&format!("DROP TABLE plain_drop, {ITEMS_NAME}"))
        .await
        .unwrap();
    shoal.assert_nothing_left_behind().await;
    let tables: i64 = sql
        .query_one("SELECT count(*) FROM shoal.distributed_table", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "only late_drop is left in the catalog");

    // With a node down the drop goes on; that node's shards wait in cleanup records.
    shoal.pg.stop_worker(1);
    sql.batch_execute("DROP TABLE late_drop").await.unwrap();
    let waiting: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.cleanup_record WHERE node_id = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2, "late_drop's two shards on node 2");
    shoal.pg.start_worker(1);
    shoal.cli(&["cleanup"]).await.assert_ok();
    shoal.assert_nothing_left_behind().await;

    // A distributed schema dropped with CASCADE takes its shards and its group along.
    sql.batch_execute(
        "CREATE SCHEMA tenant;
         CREATE TABLE tenant.users (id int PRIMARY KEY);
         CREATE TABLE tenant.notes (id int PRIMARY KEY, user_id int REFERENCES tenant.users);",
    )
    .await
    .unwrap();
    shoal
        .cli(&["schema", "distribute", "tenant"])
        .await
        .assert_ok();
    sql.batch_execute("DROP SCHEMA tenant CASCADE")
        .await
        .unwrap();
    shoal.assert_nothing_left_behind().await;
    let groups: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.colocation_group WHERE kind <> 'reference'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(groups, 0);
}

/// Waits until every node's replica of a reference table has `rows` rows.
async fn wait_for_replicas(shoal: &Shoal, table: &str, rows: i64) {
    let started = std::time::Instant::now();
    for i in 0..shoal.pg.workers.len() {
        let worker = shoal.worker(i).await;
        loop {
            let found: i64 = worker
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0);
            if found == rows {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "worker {i} has {found} rows of {table}, not {rows}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn reference_table_ddl_keeps_replication_running() {
    let (shoal, sql) = with_items().await;
    sql.batch_execute(
        "CREATE TABLE kinds (id int PRIMARY KEY, name text);
         INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(0, 9) g;",
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    let mut rows = 10;
    // Each change, then a row written in the new shape (table and name column) that every
    // replica must receive.
    for (statement, table, name) in [
        (
            "ALTER TABLE kinds ADD COLUMN weight numeric NOT NULL DEFAULT 1.5",
            "kinds",
            "name",
        ),
        (
            "ALTER TABLE kinds RENAME COLUMN name TO label",
            "kinds",
            "label",
        ),
        (
            "CREATE INDEX kinds_by_label ON kinds (label)",
            "kinds",
            "label",
        ),
        (
            "ALTER TABLE kinds ADD CONSTRAINT one_label UNIQUE (label)",
            "kinds",
            "label",
        ),
        (
            "ALTER TABLE kinds ALTER COLUMN weight TYPE float8",
            "kinds",
            "label",
        ),
        ("ALTER TABLE kinds DROP COLUMN weight", "kinds", "label"),
        (
            "ALTER TABLE kinds RENAME TO categories",
            "categories",
            "label",
        ),
    ] {
        sql.batch_execute(statement).await.unwrap();
        shoal.assert_definitions_match().await;
        sql.batch_execute(&format!(
            "INSERT INTO {table} (id, {name}) VALUES ({rows}, 'l{rows}')"
        ))
        .await
        .unwrap();
        rows += 1;
        wait_for_replicas(&shoal, table, rows).await;
    }
    // Shards may reference it; then it cannot be dropped from under them.
    shoal.ddl_ok(&format!(
                r#"ALTER TABLE {ITEMS_NAME} ADD CONSTRAINT k_category FOREIGN KEY (k) REFERENCES categories (id)"#
            )).await;
    let error = refused(&sql, "DROP TABLE categories").await;
    assert_mentions(&error, &["k_category"]);
    sql.batch_execute(&format!("DROP TABLE {ITEMS_NAME}; DROP TABLE categories"))
        .await
        .unwrap();
    shoal.assert_nothing_left_behind().await;
    for i in 0..2 {
        let gone: Option<String> = shoal
            .worker(i)
            .await
            .query_one("SELECT to_regclass('categories')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(gone, None, "the replica on worker {i} is dropped");
    }
}

#[tokio::test]
async fn keys_and_unique_indexes_the_coordinator_refuses_go_through_shoal_ddl() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute(
        r#"CREATE TABLE "my shop".lines ("Id" bigint, line int, qty int);
           INSERT INTO "my shop".lines SELECT g, 1, g FROM generate_series(1, 500) g;"#,
    )
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            r#""my shop".lines"#,
            "--column",
            r#""Id""#,
            "--colocate-with",
            t,
        ])
        .await
        .assert_ok();

    // PostgreSQL itself refuses these on the coordinator; the refusal changes nothing.
    let error = refused(
        &sql,
        r#"ALTER TABLE "my shop".lines ADD PRIMARY KEY ("Id", line)"#,
    )
    .await;
    assert_mentions(&error, &["primary key", "shoal ddl"]);

    let out = shoal
        .cli(&[
            "ddl",
            r#"ALTER TABLE "my shop".lines ADD PRIMARY KEY ("Id", line);
               ALTER TABLE "my shop".lines ADD CONSTRAINT line_item FOREIGN KEY ("Id")
                   REFERENCES "my shop"."Order ""Items""" ("Id") ON DELETE CASCADE NOT VALID;
               ALTER TABLE "my shop".lines ADD COLUMN note text"#,
        ])
        .await;
    assert_mentions(
        out.assert_ok(),
        &["done on 8 shard(s)", "carried it to the shards"],
    );
    shoal.assert_definitions_match().await;
    let error = refused(
        &sql,
        r#"INSERT INTO "my shop".lines VALUES (1, 1, 5, 'dup')"#,
    )
    .await;
    assert_mentions(&error, &["duplicate key"]);
    let error = refused(
        &sql,
        r#"INSERT INTO "my shop".lines VALUES (9999, 1, 5, 'orphan')"#,
    )
    .await;
    assert_mentions(&error, &["line_item"]);
    shoal
        .ddl_ok(r#"ALTER TABLE "my shop".lines VALIDATE CONSTRAINT line_item"#)
        .await;
    // The key's cascade runs on each shard: the item and its lines go together.
    sql.batch_execute(&format!(r#"DELETE FROM {t} WHERE "Id" = 7"#))
        .await
        .unwrap();
    let lines: i64 = sql
        .query_one(
            r#"SELECT count(*) FROM "my shop".lines WHERE "Id" = 7"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lines, 0);

    // Unique indexes including the distribution column, and their drop.
    shoal
        .ddl_ok(r#"CREATE UNIQUE INDEX qty_once ON "my shop".lines ("Id", qty)"#)
        .await;
    let error = refused(
        &sql,
        r#"INSERT INTO "my shop".lines VALUES (1, 2, 1, 'same qty')"#,
    )
    .await;
    assert_mentions(&error, &["qty_once"]);
    shoal
        .cli(&["ddl", r#"CREATE UNIQUE INDEX bad ON "my shop".lines (qty)"#])
        .await
        .assert_error(&["must include its distribution column"]);
    shoal.ddl_ok(r#"DROP INDEX "my shop".qty_once; ALTER TABLE "my shop".lines DROP CONSTRAINT line_item"#).await;
    sql.batch_execute(r#"INSERT INTO "my shop".lines VALUES (9999, 1, 1, 'no key now')"#)
        .await
        .unwrap();

    // A table whose shards carry a key moves with it.
    let (shard, node) = first_shard(&sql, r#""my shop".lines"#).await;
    shoal
        .cli(&[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            other_node(node),
        ])
        .await
        .assert_ok();
    shoal.assert_definitions_match().await;
}

#[tokio::test]
async fn indexes_are_built_concurrently_on_every_shard_while_writes_go_on() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    let error = refused(&sql, &format!("CREATE INDEX CONCURRENTLY by_k ON {t} (k)")).await;
    assert_mentions(&error, &["shoal ddl"]);

    let writer_uri = shoal.pg.coordinator_uri();
    let writes = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&writer_uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut written = 0;
        for id in 10_000..10_300 {
            client
                .execute(
                    r#"INSERT INTO "my shop"."Order ""Items""" VALUES ($1, 1, 'during')"#,
                    &[&(id as i64)],
                )
                .await
                .unwrap();
            written += 1;
        }
        written
    });
    shoal
        .cli(&["ddl", &format!("CREATE INDEX CONCURRENTLY by_k ON {t} (k)")])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "ddl",
            &format!(r#"CREATE UNIQUE INDEX CONCURRENTLY one_v ON {t} (v, "Id")"#),
        ])
        .await
        .assert_ok();
    assert_eq!(writes.await.unwrap(), 300);
    shoal.assert_definitions_match().await;
    let coordinator_index: Option<String> = sql
        .query_one(r#"SELECT to_regclass('"my shop".by_k')::text"#, &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        coordinator_index.is_some(),
        "the coordinator has the plain index too"
    );

    // A build that fails on the shards (a division by zero in the key) leaves no index, not
    // even an invalid one, anywhere.
    let before = shoal.definitions().await;
    shoal
        .cli(&[
            "ddl",
            &format!("CREATE INDEX CONCURRENTLY broken ON {t} ((1 / (k - 5)))"),
        ])
        .await
        .assert_error(&["division by zero"]);
    assert_eq!(shoal.definitions().await, before);

    shoal
        .cli(&["ddl", r#"DROP INDEX CONCURRENTLY "my shop".by_k"#])
        .await
        .assert_ok();
    shoal
        .ddl_ok(r#"DROP INDEX CONCURRENTLY "my shop".one_v"#)
        .await;
    let left: i64 = shoal
        .worker(0)
        .await
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'by\\_k%' OR indexname LIKE 'one\\_v%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn truncate_comments_and_grants_work_as_on_a_plain_table() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute(&format!(
        "COMMENT ON TABLE {t} IS 'items of orders';
         COMMENT ON COLUMN {t}.v IS 'what it is';
         CREATE ROLE reader LOGIN;
         GRANT USAGE ON SCHEMA \"my shop\" TO reader;
         GRANT SELECT, INSERT ON {t} TO reader;"
    ))
    .await
    .unwrap();
    let comment: String = sql
        .query_one(
            &format!("SELECT obj_description('{t}'::regclass, 'pg_class')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, "items of orders");
    shoal.assert_definitions_match().await;

    // Another role needs only its GRANT: the coordinator checks it, the shared user mapping
    // reaches the shards.
    let uri = shoal.pg.coordinator_uri().replace("postgres@", "reader@");
    let (reader, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let count: i64 = reader
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 500);
    reader
        .batch_execute(&format!("INSERT INTO {t} VALUES (501, 1, 'by reader')"))
        .await
        .unwrap();
    let error = refused(&reader, &format!("DELETE FROM {t}")).await;
    assert_mentions(&error, &["permission denied"]);
    let error = refused(&reader, "SELECT * FROM shoal.distributed_table").await;
    assert_mentions(&error, &["permission denied"]);
    sql.batch_execute(&format!("REVOKE SELECT ON {t} FROM reader"))
        .await
        .unwrap();
    let error = refused(&reader, &format!("SELECT count(*) FROM {t}")).await;
    assert_mentions(&error, &["permission denied"]);

    sql.batch_execute(&format!("TRUNCATE {t}")).await.unwrap();
    let count: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    let shards = sql
        .query(
            "SELECT shard_table FROM shoal.shards WHERE table_name = to_regclass($1)",
            &[&t],
        )
        .await
        .unwrap();
    for row in shards {
        let shard: String = row.get(0);
        let worker = shoal.worker(shoal.worker_of_shard(&shard).await).await;
        let left: i64 = worker
            .query_one(&format!("SELECT count(*) FROM {shard}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{shard} still has rows");
    }
    // Inheriting from a distributed table is refused by PostgreSQL itself.
    let error = refused(&sql, &format!("CREATE TABLE child () INHERITS ({t})")).await;
    assert_mentions(&error, &["partitioned table"]);
}

#[tokio::test]
async fn tables_of_a_distributed_schema_take_ddl_and_new_ones_join_the_schema() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        r#"CREATE SCHEMA "Tenant A";
           CREATE TABLE "Tenant A".users (id int PRIMARY KEY, name text);
           INSERT INTO "Tenant A".users SELECT g, 'u' || g FROM generate_series(1, 50) g;"#,
    )
    .await
    .unwrap();
    shoal
        .cli(&["schema", "distribute", r#""Tenant A""#])
        .await
        .assert_ok();
    sql.batch_execute(
        r#"ALTER TABLE "Tenant A".users ADD COLUMN email text DEFAULT 'none';
           CREATE INDEX users_by_email ON "Tenant A".users (email);
           CREATE TABLE "Tenant A".notes (id bigserial PRIMARY KEY, user_id int NOT NULL,
                                          body text CHECK (body <> ''));
           CREATE INDEX notes_by_user ON "Tenant A".notes (user_id);
           INSERT INTO "Tenant A".notes (user_id, body) SELECT g % 50 + 1, 'n' || g FROM generate_series(1, 100) g;
           CREATE TABLE "Tenant A".summary AS SELECT user_id, count(*) AS n FROM "Tenant A".notes GROUP BY user_id;"#,
    )
    .await
    .unwrap();
    shoal.assert_definitions_match().await;
    let placed: Vec<(String, String)> = sql
        .query(
            r#"SELECT table_name::text, kind FROM shoal.shards
               WHERE table_name::text LIKE '"Tenant A".%' ORDER BY 1"#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        placed,
        [
            (r#""Tenant A".notes"#.to_string(), "schema".to_string()),
            (r#""Tenant A".summary"#.to_string(), "schema".to_string()),
            (r#""Tenant A".users"#.to_string(), "schema".to_string()),
        ]
    );
    let nodes: i64 = sql
        .query_one(
            r#"SELECT count(DISTINCT node_id) FROM shoal.shards WHERE table_name::text LIKE '"Tenant A".%'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 1, "the schema's tables stay together");
    let row = sql
        .query_one(
            r#"SELECT (SELECT count(*) FROM "Tenant A".notes), (SELECT sum(n) FROM "Tenant A".summary)::bigint,
                      (SELECT count(*) FROM "Tenant A".users WHERE email = 'none')"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (100, 100, 50)
    );
    // The sequence of a serial column keeps numbering new rows.
    let id: i64 = sql
        .query_one(
            r#"INSERT INTO "Tenant A".notes (user_id, body) VALUES (1, 'more') RETURNING id"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 101);
    let error = refused(
        &sql,
        r#"INSERT INTO "Tenant A".notes (user_id, body) VALUES (1, '')"#,
    )
    .await;
    assert_mentions(&error, &["check constraint"]);
    // The schema moves whole, each table with its definition.
    let node: i32 = sql
        .query_one(
            r#"SELECT node_id FROM shoal.shards WHERE table_name = '"Tenant A".users'::regclass"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    shoal
        .cli(&["schema", "move", r#""Tenant A""#, "--to", other_node(node)])
        .await
        .assert_ok();
    shoal.assert_definitions_match().await;
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_column_type_changes_with_using_through_shoal_ddl() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute(&format!(
        "ALTER TABLE {t} ADD CONSTRAINT v_named CHECK (v LIKE 'v%');
         CREATE INDEX by_v ON {t} (v)"
    ))
    .await
    .unwrap();
    // The coordinator cannot take USING (its partitions are foreign tables).
    let before = shoal.definitions().await;
    let error = refused(
        &sql,
        &format!("ALTER TABLE {t} ALTER COLUMN v TYPE int USING substr(v, 2)::int"),
    )
    .await;
    assert_mentions(&error, &["USING over foreign tables", "shoal ddl"]);
    assert_eq!(shoal.definitions().await, before);

    shoal
        .ddl_ok(&format!(
            "ALTER TABLE {t} DROP CONSTRAINT v_named;
                 ALTER TABLE {t} ALTER COLUMN v TYPE int USING substr(v, 2)::int;
                 ALTER TABLE {t} ADD CONSTRAINT v_matches_id CHECK (v = \"Id\")"
        ))
        .await;
    let wrong: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {t} WHERE v <> \"Id\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "every row converted with the expression");
    sql.batch_execute(&format!("INSERT INTO {t} VALUES (501, 1, 501)"))
        .await
        .unwrap();
    let (shard, node) = first_shard(&sql, t).await;
    shoal
        .cli(&[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            other_node(node),
        ])
        .await
        .assert_ok();
    shoal.assert_definitions_match().await;
    shoal
        .cli(&[
            "ddl",
            &format!("ALTER TABLE {t} ALTER COLUMN \"Id\" TYPE text USING \"Id\"::text"),
        ])
        .await
        .assert_error(&["distribution column"]);
}

/// A catalog from before DDL propagation: records without attribute numbers, plain indexes on
/// the shards only, no event triggers, and the shards of a table dropped back then still on
/// the nodes. `shoal init` upgrades it, and DDL works from then on.
#[tokio::test]
async fn init_upgrades_a_cluster_distributed_before_ddl_propagation() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute(&format!(
        "CREATE INDEX by_k ON {t} (k);
         CREATE TABLE gone (id int PRIMARY KEY);"
    ))
    .await
    .unwrap();
    shoal
        .cli(&[
            "table",
            "distribute",
            "gone",
            "--column",
            "id",
            "--shards",
            "2",
        ])
        .await
        .assert_ok();
    let record_query = format!(
        "SELECT original_ddl::text FROM shoal.distributed_table WHERE relid = '{t}'::regclass"
    );
    let before: String = sql.query_one(&record_query, &[]).await.unwrap().get(0);
    sql.batch_execute(
        r#"SET shoal.manage_ddl = off;
           UPDATE shoal.distributed_table SET original_ddl = jsonb_set(original_ddl, '{columns}',
               (SELECT jsonb_agg(c - 'attnum') FROM jsonb_array_elements(original_ddl->'columns') c));
           DROP INDEX "my shop".by_k;
           DROP TABLE gone;
           DROP EVENT TRIGGER shoal_ddl_command_start;
           DROP EVENT TRIGGER shoal_ddl_command_end;
           DROP EVENT TRIGGER shoal_sql_drop;
           RESET shoal.manage_ddl;"#,
    )
    .await
    .unwrap();
    shoal.cli(&["init"]).await.assert_ok();
    let triggers: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'shoal%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 3);
    let left: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.cleanup_record WHERE object_name LIKE 'gone%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 2,
        "the dropped table's shards are recorded for cleanup"
    );
    shoal.cli(&["cleanup"]).await.assert_ok();
    shoal.assert_nothing_left_behind().await;
    shoal.assert_definitions_match().await;
    let after: String = sql.query_one(&record_query, &[]).await.unwrap().get(0);
    assert_eq!(
        after, before,
        "the upgraded record is what DDL propagation would have written"
    );
    sql.batch_execute(&format!("ALTER TABLE {t} RENAME COLUMN k TO kind"))
        .await
        .unwrap();
    shoal.assert_definitions_match().await;
}

/// The nodes' parts of a statement commit just before the coordinator's own commit
/// (postgres_fdw has no two-phase commit), and a coordinator commit can still fail after them:
/// here a SERIALIZABLE transaction's commit-time serialization check. The nodes are then ahead
/// of the coordinator, and `shoal table check` says where and how.
#[tokio::test]
async fn a_commit_failing_after_the_nodes_leaves_a_difference_that_table_check_reports() {
    let (shoal, sql) = with_items().await;
    let t = ITEMS_NAME;
    sql.batch_execute("CREATE TABLE skew_a (x int); CREATE TABLE skew_b (x int);")
        .await
        .unwrap();
    let other = shoal.coordinator().await;
    // Write skew: each reads what the other writes; the second to commit fails, at COMMIT.
    other
        .batch_execute(
            "BEGIN ISOLATION LEVEL SERIALIZABLE;
             SELECT count(*) FROM skew_a; INSERT INTO skew_b VALUES (1);",
        )
        .await
        .unwrap();
    sql.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL SERIALIZABLE;
         SELECT count(*) FROM skew_b; INSERT INTO skew_a VALUES (1);
         ALTER TABLE {t} ADD COLUMN w int;"
    ))
    .await
    .unwrap();
    other.batch_execute("COMMIT").await.unwrap();
    let error = refused(&sql, "COMMIT").await;
    assert_mentions(&error, &["could not serialize"]);
    let out = shoal.cli(&["table", "check", t]).await;
    out.assert_error(&["differ from the catalog"]);
    for node in [1, 2] {
        assert!(
            out.stdout.contains(&format!(
                "on node {node}: columns are (Id bigint not null, k integer, v text, w integer)"
            )),
            "{}",
            out.stdout
        );
    }
}
