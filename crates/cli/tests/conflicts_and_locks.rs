//! `INSERT ... ON CONFLICT`, `FOR UPDATE SKIP LOCKED / NOWAIT` and `MERGE` on a distributed
//! table through the endpoint: what one shard group answers runs on its node as on one server
//! (a constraint named in ON CONFLICT is the shard's); what the coordinator would run
//! otherwise fails at once, explained, changing nothing, and ends the transaction block as
//! any error does.

mod common;

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// `"Key Values"` (k, v) with 10 rows of v = 'a', distributed by k into 4 shards, and an
/// endpoint in front.
async fn key_values() -> (common::Shoal, common::endpoint::Endpoint) {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(
            r#"CREATE TABLE "Key Values" (k bigint CONSTRAINT "KV key" PRIMARY KEY, v text);
               INSERT INTO "Key Values" SELECT g, 'a' FROM generate_series(1, 10) g;"#,
        )
        .await
        .unwrap();
    shoal.distribute(r#""Key Values""#, "k", "4").await;
    let endpoint = shoal.start_endpoint().await;
    (shoal, endpoint)
}

async fn values(client: &Client) -> Vec<(i64, String)> {
    client
        .query(r#"SELECT k, v FROM "Key Values" ORDER BY k"#, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Asserts `error` is the endpoint's explanation containing `words`.
fn assert_explained(error: &tokio_postgres::Error, words: &str) {
    assert_eq!(
        error.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{error:?}"
    );
    let db = error.as_db_error().expect("a server error");
    assert!(db.message().contains(words), "{db:?}");
    assert!(db.message().contains(r#"public."Key Values""#), "{db:?}");
    assert!(db.hint().is_some_and(|h| !h.is_empty()), "{db:?}");
}

#[tokio::test]
async fn upserts_of_one_shard_group_run_on_its_node_and_others_are_explained() {
    let (shoal, endpoint) = key_values().await;
    let client = endpoint.connect().await;
    let before = values(&client).await;
    // Rows of several shards: neither protocol lets the coordinator answer its misleading
    // "no unique or exclusion constraint".
    let several = r#"INSERT INTO "Key Values" VALUES (1, 'x'), (2, 'x'), (3, 'x'), (4, 'x')
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v"#;
    let error = client.simple_query(several).await.unwrap_err();
    assert_explained(&error, "ON CONFLICT");
    let error = client.execute(several, &[]).await.unwrap_err();
    assert_explained(&error, "ON CONFLICT");
    assert_eq!(values(&client).await, before);
    // One row: on its node, by the column or by the constraint's name.
    let one = client
        .query(
            r#"INSERT INTO "Key Values" VALUES ($1, 'b') ON CONFLICT (k)
               DO UPDATE SET v = excluded.v RETURNING v"#,
            &[&3i64],
        )
        .await
        .unwrap();
    assert_eq!(one[0].get::<_, String>(0), "b");
    let named = client
        .simple_query(
            r#"INSERT INTO "Key Values" VALUES (4, 'c') ON CONFLICT ON CONSTRAINT "KV key"
               DO UPDATE SET v = excluded.v || '!' RETURNING v"#,
        )
        .await
        .unwrap();
    let returned: Vec<&str> = named
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(returned, ["c!"]);
    // Without a conflict target postgres_fdw does it on the coordinator too.
    client
        .batch_execute(
            r#"INSERT INTO "Key Values" VALUES (1, 'z'), (2, 'z'), (11, 'new') ON CONFLICT DO NOTHING"#,
        )
        .await
        .unwrap();
    let after = values(&shoal.coordinator().await).await;
    assert_eq!(after[2], (3, "b".to_string()));
    assert_eq!(after[3], (4, "c!".to_string()));
    assert_eq!(after[0], (1, "a".to_string()));
    assert_eq!(after.last(), Some(&(11, "new".to_string())));
    // MERGE into the table is explained too.
    let error = client
        .simple_query(
            r#"MERGE INTO "Key Values" t USING (VALUES (1, 'm')) s (k, v) ON t.k = s.k
               WHEN MATCHED THEN UPDATE SET v = s.v"#,
        )
        .await
        .unwrap_err();
    assert_explained(&error, "MERGE");
}

#[tokio::test]
async fn skip_locked_and_nowait_work_on_one_shard_and_are_explained_across_shards() {
    let (_shoal, endpoint) = key_values().await;
    let holder = endpoint.connect().await;
    holder
        .batch_execute(r#"BEGIN; SELECT * FROM "Key Values" WHERE k = 5 FOR UPDATE"#)
        .await
        .unwrap();
    let client = endpoint.connect().await;
    let within = Duration::from_secs(5);
    // On one shard: skipped, or refused at once, as on one server.
    let skipped = tokio::time::timeout(
        within,
        client.query(
            r#"SELECT k FROM "Key Values" WHERE k = $1 FOR UPDATE SKIP LOCKED"#,
            &[&5i64],
        ),
    )
    .await
    .expect("SKIP LOCKED does not wait")
    .unwrap();
    assert!(skipped.is_empty());
    let error = tokio::time::timeout(
        within,
        client.simple_query(r#"SELECT k FROM "Key Values" WHERE k = 5 FOR UPDATE NOWAIT"#),
    )
    .await
    .expect("NOWAIT does not wait")
    .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "{error:?}"
    );
    // Across shards the coordinator would wait for row 5: explained instead, and the
    // transaction block it ran in has failed, as after any error.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(r#"SELECT count(*) FROM "Key Values""#)
        .await
        .unwrap();
    let queue = r#"SELECT k FROM "Key Values" WHERE v = 'a' ORDER BY k LIMIT 1
                   FOR UPDATE SKIP LOCKED"#;
    let error = tokio::time::timeout(within, client.query(queue, &[]))
        .await
        .expect("refused at once")
        .unwrap_err();
    assert_explained(&error, "SKIP LOCKED");
    let aborted = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        aborted.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{aborted:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
}
