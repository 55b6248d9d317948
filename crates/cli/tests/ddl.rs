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
