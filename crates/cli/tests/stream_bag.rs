//! Stream tables show exactly their query's rows, duplicates included, in every mode and shape:
//! a view over the storage refreshes maintain. Readers need only SELECT on the stream table, and
//! `shoal init` moves stream tables of the layout before storage tables without losing anything.

mod common;

use tokio_postgres::Client;

use common::stream::{assert_matches_query, assert_same_bag};
use common::Shoal;

const AWKWARD: &str = r#""my app"."Order ""Items""""#;

/// A distributed table `a` and a reference table `b` whose join repeats rows: each row of `a`
/// meets four rows of `b`, and many rows of either are equal on the columns the queries read.
async fn setup(shoal: &Shoal) -> Client {
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        r#"CREATE SCHEMA "my app";
           CREATE TABLE a (id bigint PRIMARY KEY, i int, j int);
           CREATE TABLE b (id int PRIMARY KEY, i int, k int);
           INSERT INTO a SELECT g, g % 50, g % 3 FROM generate_series(1, 3000) g;
           INSERT INTO b SELECT g, g % 50, g % 4 FROM generate_series(1, 200) g;"#,
    )
    .await
    .unwrap();
    shoal.cli(&["table", "reference", "b"]).await.assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "a",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    sql
}

/// Inserts that add duplicates, updates that move rows between them, deletes that remove some,
/// on both sides of the join.
async fn reshuffle(sql: &Client) {
    sql.batch_execute(
        "INSERT INTO a SELECT 10000 + g, g % 50, g % 3 FROM generate_series(1, 400) g;
         UPDATE a SET j = j + 1 WHERE id % 7 = 0;
         UPDATE a SET i = (i + 1) % 50 WHERE id % 11 = 0;
         DELETE FROM a WHERE id % 13 = 0;
         INSERT INTO b SELECT 1000 + g, g % 50, 9 FROM generate_series(1, 30) g;
         UPDATE b SET k = 0 WHERE id % 9 = 0;
         DELETE FROM b WHERE id % 17 = 0;",
    )
    .await
    .unwrap();
}

struct Case {
    name: &'static str,
    mode: &'static str,
    query: &'static str,
    columns: &'static str,
    summed: &'static str,
    /// The mode its refreshes run in.
    refreshes: &'static str,
}

const BAG_ON: &str = "SELECT a.i, a.j, b.k FROM a JOIN b ON b.i = a.i";
const BAG_USING: &str = "SELECT i, a.j, b.k FROM a JOIN b USING (i)";
const BAG_USING_ALIAS: &str = "SELECT x.i, x.j, x.k FROM (a JOIN b USING (i)) AS x";
const GROUPED: &str =
    "SELECT a.j, count(*) AS n, sum(b.k) AS total FROM a JOIN b ON b.i = a.i GROUP BY a.j";
const DISTINCT: &str = "SELECT DISTINCT a.j, b.k FROM a JOIN b ON b.i = a.i";
const COUNT_DISTINCT: &str = "SELECT b.k, count(DISTINCT a.j) AS js, sum(DISTINCT a.i) AS si \
                              FROM a JOIN b ON b.i = a.i GROUP BY b.k";
const FILTERED: &str = "SELECT a.j, count(*) FILTER (WHERE b.k > 1) AS n, \
                        sum(a.i) FILTER (WHERE b.k = 0) AS s FROM a JOIN b ON b.i = a.i GROUP BY a.j";
/// Rows of `a` whose matches in `b` appear (k = 9) and go.
const LEFT: &str = "SELECT a.j, b.k FROM a LEFT JOIN b ON b.i = a.i AND (b.k = 9 OR b.id % 17 = 1)";
const FULL: &str = "SELECT a.i, b.k FROM a FULL JOIN b ON b.i = a.i AND a.j = 1 AND b.k = 0";
const UNION_ALL: &str = "SELECT a.j AS x, a.i AS y FROM a UNION ALL SELECT b.k, b.i FROM b";
const UNION: &str = "SELECT a.j AS x FROM a WHERE a.i < 20 UNION SELECT b.k FROM b";
/// Recomputed for the groups a change reaches, or kept as counts (bool_and, bool_or).
const BOOL_STRING: &str = "SELECT b.k, bool_and(a.j < 2) AS low, bool_or(a.i = 7) AS seven, \
                           string_agg(DISTINCT a.i::text, ',' ORDER BY a.i::text) AS i_list \
                           FROM a JOIN b ON b.i = a.i GROUP BY b.k";
/// Duplicate rows in every partition; reshuffling moves rows between partitions.
const WINDOW: &str = "SELECT a.i, b.k, count(*) OVER (PARTITION BY a.i) AS n, \
                      dense_rank() OVER (PARTITION BY a.i ORDER BY b.k) AS dr \
                      FROM a JOIN b ON b.i = a.i WHERE a.i < 10";
/// Groups near the bound: reshuffling moves some across it.
const HAVING: &str = "SELECT a.i, count(*) AS n FROM a JOIN b ON b.i = a.i GROUP BY a.i \
                      HAVING count(*) >= 240 AND max(b.k) > 0";
/// A subquery in FROM over the distributed table, joined: every row repeated.
const SUBQUERY: &str = "SELECT s.j, s.i2, b.k FROM (SELECT a.j, a.i * 2 AS i2, a.i FROM a \
                        WHERE a.j < 2) s JOIN b ON b.i = s.i";
/// A CTE read twice, its rows of `b` meeting each other.
const CTE: &str = "WITH nine AS (SELECT id, i, k FROM b WHERE k > 1) \
                   SELECT x.k, y.i FROM nine x JOIN nine y ON y.i = x.i";
/// Rows of `a` whose existence in `b` comes and goes (k = 9 rows are inserted, some deleted).
const EXISTS: &str = "SELECT a.i, a.j FROM a WHERE EXISTS \
                      (SELECT 1 FROM b WHERE b.i = a.i AND b.k = 9)";
const NOT_EXISTS_IN: &str = "SELECT b.i, b.k FROM b WHERE NOT EXISTS \
                             (SELECT 1 FROM a WHERE a.i = b.i AND a.j = 3) \
                             AND b.id IN (SELECT a.id FROM a WHERE a.j <> 1)";

const CASES: &[Case] = &[
    Case {
        name: AWKWARD,
        mode: "differential",
        query: BAG_ON,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "differential",
    },
    Case {
        name: "bag_full",
        mode: "full",
        query: BAG_ON,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "full",
    },
    Case {
        name: "bag_auto",
        mode: "auto",
        query: BAG_ON,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "differential",
    },
    Case {
        name: "bag_using_full",
        mode: "full",
        query: BAG_USING,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "full",
    },
    Case {
        name: "bag_using_auto",
        mode: "auto",
        query: BAG_USING,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "differential",
    },
    Case {
        name: "bag_using_alias",
        mode: "differential",
        query: BAG_USING_ALIAS,
        columns: "i, j, k",
        summed: "i + j + k",
        refreshes: "differential",
    },
    Case {
        name: "grouped_differential",
        mode: "differential",
        query: GROUPED,
        columns: "j, n, total",
        summed: "n + total",
        refreshes: "differential",
    },
    Case {
        name: "grouped_full",
        mode: "full",
        query: GROUPED,
        columns: "j, n, total",
        summed: "n + total",
        refreshes: "full",
    },
    Case {
        name: "grouped_auto",
        mode: "auto",
        query: GROUPED,
        columns: "j, n, total",
        summed: "n + total",
        refreshes: "differential",
    },
    Case {
        name: "distinct_differential",
        mode: "differential",
        query: DISTINCT,
        columns: "j, k",
        summed: "j + k",
        refreshes: "differential",
    },
    Case {
        name: "distinct_full",
        mode: "full",
        query: DISTINCT,
        columns: "j, k",
        summed: "j + k",
        refreshes: "full",
    },
    Case {
        name: "distinct_auto",
        mode: "auto",
        query: DISTINCT,
        columns: "j, k",
        summed: "j + k",
        refreshes: "differential",
    },
    Case {
        name: "having_differential",
        mode: "differential",
        query: HAVING,
        columns: "i, n",
        summed: "i + n",
        refreshes: "differential",
    },
    Case {
        name: "having_full",
        mode: "full",
        query: HAVING,
        columns: "i, n",
        summed: "i + n",
        refreshes: "full",
    },
    Case {
        name: "count_distinct_auto",
        mode: "auto",
        query: COUNT_DISTINCT,
        columns: "k, js, si",
        summed: "k + js + si",
        refreshes: "differential",
    },
    Case {
        name: "filtered_auto",
        mode: "auto",
        query: FILTERED,
        columns: "j, n, s",
        summed: "j + n + coalesce(s, 0)",
        refreshes: "differential",
    },
    Case {
        name: "left_differential",
        mode: "differential",
        query: LEFT,
        columns: "j, k",
        summed: "j + coalesce(k, 0)",
        refreshes: "differential",
    },
    Case {
        name: "full_join_auto",
        mode: "auto",
        query: FULL,
        columns: "i, k",
        summed: "coalesce(i, 0) + coalesce(k, 0)",
        refreshes: "differential",
    },
    Case {
        name: "union_all_auto",
        mode: "auto",
        query: UNION_ALL,
        columns: "x, y",
        summed: "x + y",
        refreshes: "differential",
    },
    Case {
        name: "bool_string_differential",
        mode: "differential",
        query: BOOL_STRING,
        columns: "k, low, seven, i_list",
        summed: "k + low::int + seven::int + length(i_list)",
        refreshes: "differential",
    },
    Case {
        name: "window_differential",
        mode: "differential",
        query: WINDOW,
        columns: "i, k, n, dr",
        summed: "i + k + n + dr",
        refreshes: "differential",
    },
    Case {
        name: "window_full",
        mode: "full",
        query: WINDOW,
        columns: "i, k, n, dr",
        summed: "i + k + n + dr",
        refreshes: "full",
    },
    Case {
        name: "subquery_differential",
        mode: "differential",
        query: SUBQUERY,
        columns: "j, i2, k",
        summed: "j + i2 + k",
        refreshes: "differential",
    },
    Case {
        name: "cte_differential",
        mode: "differential",
        query: CTE,
        columns: "k, i",
        summed: "k + i",
        refreshes: "differential",
    },
    Case {
        name: "exists_differential",
        mode: "differential",
        query: EXISTS,
        columns: "i, j",
        summed: "i + j",
        refreshes: "differential",
    },
    Case {
        name: "not_exists_in_differential",
        mode: "differential",
        query: NOT_EXISTS_IN,
        columns: "i, k",
        summed: "i + k",
        refreshes: "differential",
    },
    Case {
        name: "union_differential",
        mode: "differential",
        query: UNION,
        columns: "x",
        summed: "x",
        refreshes: "differential",
    },
];

async fn assert_all_exact(sql: &Client, when: &str) {
    for case in CASES {
        assert_same_bag(sql, case.name, case.query, case.columns, case.summed, when).await;
    }
}

async fn last_refresh_mode(sql: &Client, name: &str) -> String {
    sql.query_one(
        "SELECT last_refresh_mode FROM shoal.stream_table WHERE relid = to_regclass($1)",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn stream_tables_hold_their_querys_rows_with_their_multiplicities() {
    let shoal = common::start(2).await;
    let sql = setup(&shoal).await;
    for case in CASES {
        shoal
            .cli(&[
                "stream", "create", case.name, "--mode", case.mode, "--query", case.query,
            ])
            .await
            .assert_ok();
    }
    let rows: i64 = sql
        .query_one(&format!("SELECT count(*) FROM ({BAG_ON}) q"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 12_000);
    // The duplicates are stored once each, with their multiplicity, out of sight.
    let storage = shoal.stream_storage(AWKWARD).await;
    let stored: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {storage}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored < rows / 10, "{stored} stored rows for {rows}");
    let columns: Vec<String> = sql
        .query(&format!("SELECT * FROM {AWKWARD} LIMIT 1"), &[])
        .await
        .unwrap()[0]
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(columns, ["i", "j", "k"], "only the query's columns show");
    assert_all_exact(&sql, "create").await;

    reshuffle(&sql).await;
    for case in CASES {
        shoal
            .cli(&["stream", "refresh", case.name])
            .await
            .assert_ok();
        assert_eq!(
            last_refresh_mode(&sql, case.name).await,
            case.refreshes,
            "{}",
            case.name
        );
    }
    assert_all_exact(&sql, "inserts, updates and deletes").await;

    // Joins over a stream table see the query's rows too.
    assert_matches_query(
        &sql,
        &format!("(SELECT s.j, b.id FROM {AWKWARD} s JOIN b ON b.k = s.k) s"),
        &format!("SELECT q.j, b.id FROM ({BAG_ON}) q JOIN b ON b.k = q.k"),
        "j, id",
        "a join over it",
    )
    .await;

    shoal.cli(&["stream", "drop", AWKWARD]).await.assert_ok();
    let gone: bool = sql
        .query_one(
            "SELECT to_regclass($1) IS NULL AND to_regclass($2) IS NULL",
            &[&AWKWARD, &storage],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the stream table and its storage {storage} are gone");
}

/// The name users query is a view owned by the stream table's creator: SELECT on it is all a
/// reader needs, and the storage stays closed to them. Indexes go on the storage.
#[tokio::test]
async fn a_reader_needs_only_select_on_the_stream_table() {
    let shoal = common::start(1).await;
    let sql = setup(&shoal).await;
    shoal
        .cli(&[
            "stream",
            "create",
            AWKWARD,
            "--mode",
            "differential",
            "--query",
            BAG_ON,
        ])
        .await
        .assert_ok();
    let storage = shoal.stream_storage(AWKWARD).await;
    sql.batch_execute(&format!(
        r#"CREATE ROLE reader;
           GRANT USAGE ON SCHEMA "my app" TO reader;
           GRANT SELECT ON {AWKWARD} TO reader;"#
    ))
    .await
    .unwrap();
    sql.batch_execute("SET ROLE reader").await.unwrap();
    let rows: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {AWKWARD}"), &[])
        .await
        .unwrap()
        .get(0);
    let storage_read = sql
        .query_one(&format!("SELECT count(*) FROM {storage}"), &[])
        .await;
    sql.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(rows, 12_000);
    assert!(storage_read.is_err(), "the reader reads the storage");

    let refused = sql
        .batch_execute(&format!("CREATE INDEX ON {AWKWARD} (k)"))
        .await
        .unwrap_err();
    let refused = refused.as_db_error().unwrap();
    assert!(
        refused.detail().unwrap_or_default().contains("views"),
        "{refused:?}"
    );
    sql.batch_execute(&format!("CREATE INDEX by_k ON {storage} (k)"))
        .await
        .unwrap();
    reshuffle(&sql).await;
    shoal.cli(&["stream", "refresh", AWKWARD]).await.assert_ok();
    shoal
        .cli(&["stream", "refresh", AWKWARD, "--full"])
        .await
        .assert_ok();
    assert_same_bag(
        &sql,
        AWKWARD,
        BAG_ON,
        "i, j, k",
        "i + j + k",
        "an index on the storage",
    )
    .await;
    let listed = shoal.cli(&["stream", "list"]).await;
    assert!(listed.assert_ok().contains(&storage), "{}", listed.stdout);
}

/// Puts a stream table back into the layout before storage tables: its storage table at its
/// name, and a catalog at version 8 (no `storage_relid`).
async fn to_old_layout(sql: &Client, shoal: &Shoal, names: &[&str]) {
    for name in names {
        let storage = shoal.stream_storage(name).await;
        let row = sql
            .query_one(
                "SELECT n.nspname::text, c.relname::text, s.stream_id
                 FROM shoal.stream_table s JOIN pg_class c ON c.oid = s.relid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.relid = to_regclass($1)",
                &[name],
            )
            .await
            .unwrap();
        let (schema, relname, id): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        sql.batch_execute(&format!(
            "DROP VIEW {name};
             ALTER INDEX shoal.stream_{id}_shoal_key RENAME TO {index};
             ALTER TABLE {storage} RENAME TO {table};
             ALTER TABLE shoal.{table} SET SCHEMA {schema};
             UPDATE shoal.stream_table SET relid = storage_relid WHERE stream_id = {id};",
            index = quote(&format!("{relname}_shoal_key")),
            table = quote(&relname),
            schema = quote(&schema),
        ))
        .await
        .unwrap();
    }
    sql.batch_execute(
        "ALTER TABLE shoal.stream_table DROP COLUMN storage_relid;
         DELETE FROM shoal.catalog_version WHERE version = 9;",
    )
    .await
    .unwrap();
}

/// A relation's rows as one checksum; `expand` repeats each by its `__shoal_count`, as the
/// stream table of a query that keeps duplicates shows it.
async fn content(sql: &Client, relation: &str, columns: &str, expand: bool) -> String {
    let expand = if expand {
        " CROSS JOIN LATERAL generate_series(1, __shoal_count)"
    } else {
        ""
    };
    sql.query_one(
        &format!(
            "SELECT md5(string_agg(r::text, ',' ORDER BY r::text)) FROM
             (SELECT {columns} FROM {relation}{expand}) r"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Where a stream table's refreshes are: the changes applied, whether it starts over.
async fn refresh_state(sql: &Client, name: &str) -> (i64, bool) {
    let row = sql
        .query_one(
            "SELECT consumed_seq, needs_reinit FROM shoal.stream_table WHERE relid = to_regclass($1)",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn init_moves_stream_tables_of_the_old_layout_keeping_rows_and_refresh_state() {
    let shoal = common::start(2).await;
    let sql = setup(&shoal).await;
    for (name, query) in [(AWKWARD, BAG_ON), ("grouped", GROUPED)] {
        shoal
            .cli(&[
                "stream",
                "create",
                name,
                "--mode",
                "differential",
                "--query",
                query,
            ])
            .await
            .assert_ok();
    }
    reshuffle(&sql).await;
    shoal.cli(&["stream", "refresh", AWKWARD]).await.assert_ok();
    to_old_layout(&sql, &shoal, &[AWKWARD, "grouped"]).await;
    sql.batch_execute(&format!(
        "CREATE ROLE reader; GRANT USAGE ON SCHEMA \"my app\" TO reader;
         GRANT SELECT ON {AWKWARD} TO reader;
         CREATE VIEW over_grouped AS SELECT j, n FROM grouped;"
    ))
    .await
    .unwrap();
    // Changes not applied yet: `grouped` has not been refreshed since the writes.
    let streams = [
        (AWKWARD, "i, j, k", true),
        ("grouped", "j, n, total", false),
    ];
    let mut before = Vec::new();
    for (name, columns, bag) in streams {
        before.push((
            content(&sql, name, columns, bag).await,
            refresh_state(&sql, name).await,
        ));
    }
    assert!(
        before[0].1 .0 > 0,
        "a stream table that has applied changes"
    );

    let init = shoal.cli(&["init"]).await;
    let out = init.assert_ok();
    assert!(out.contains("catalog migrated from version 8"), "{out}");
    assert!(
        out.contains("stream table \"my app\".\"Order \"\"Items\"\"\" now shows its query's rows"),
        "{out}"
    );
    assert!(
        init.stderr.contains("view over_grouped read the old table"),
        "{}",
        init.stderr
    );

    for ((name, columns, bag), before) in streams.iter().zip(&before) {
        let storage = shoal.stream_storage(name).await;
        let after = (
            content(&sql, name, columns, false).await,
            refresh_state(&sql, name).await,
        );
        assert_eq!(
            &after, before,
            "{name} shows what its old table held, refreshed as far"
        );
        assert_eq!(
            content(&sql, &storage, columns, *bag).await,
            before.0,
            "{storage} holds {name}'s old rows"
        );
    }
    sql.batch_execute("SET ROLE reader").await.unwrap();
    let read = sql
        .query_one(&format!("SELECT count(*) FROM {AWKWARD}"), &[])
        .await;
    sql.batch_execute("RESET ROLE").await.unwrap();
    assert!(read.is_ok(), "the reader keeps reading: {read:?}");

    for name in [AWKWARD, "grouped"] {
        shoal.cli(&["stream", "refresh", name]).await.assert_ok();
        assert_eq!(
            last_refresh_mode(&sql, name).await,
            "differential",
            "{name}"
        );
    }
    assert_same_bag(&sql, AWKWARD, BAG_ON, "i, j, k", "i + j + k", "init").await;
    assert_same_bag(&sql, "grouped", GROUPED, "j, n, total", "n + total", "init").await;
    let again = shoal.cli(&["init"]).await;
    assert!(
        again.assert_ok().contains("catalog is up to date"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("now shows"), "{}", again.stdout);
}
