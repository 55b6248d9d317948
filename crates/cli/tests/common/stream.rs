//! Checks of stream tables: what users read from one equals its query recomputed, as a bag.

use tokio_postgres::Client;

use super::Shoal;

/// `stream` (its visible `columns`) equals `query` as a bag: `EXCEPT ALL` both ways is empty.
pub async fn assert_matches_query(
    sql: &Client,
    name: &str,
    query: &str,
    columns: &str,
    when: &str,
) {
    for (a, b) in [
        (query.to_string(), format!("SELECT {columns} FROM {name}")),
        (format!("SELECT {columns} FROM {name}"), query.to_string()),
    ] {
        let n: i64 = sql
            .query_one(
                &format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) x"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{name} differs from its query after {when}");
    }
}

/// [`assert_matches_query`], and plain aggregates over `SELECT *` agree with the query's:
/// `count(*)` and the sum of `summed` (a numeric expression over its columns).
pub async fn assert_same_bag(
    sql: &Client,
    name: &str,
    query: &str,
    columns: &str,
    summed: &str,
    when: &str,
) {
    assert_matches_query(sql, name, query, columns, when).await;
    let aggregates = |from: String| {
        format!("SELECT count(*), coalesce(sum({summed}), 0)::bigint FROM ({from}) q")
    };
    let of_query = sql
        .query_one(&aggregates(query.to_string()), &[])
        .await
        .unwrap();
    let of_stream = sql
        .query_one(&aggregates(format!("SELECT * FROM {name}")), &[])
        .await
        .unwrap();
    assert_eq!(
        (of_stream.get::<_, i64>(0), of_stream.get::<_, i64>(1)),
        (of_query.get::<_, i64>(0), of_query.get::<_, i64>(1)),
        "count(*) and sum({summed}) of {name} differ from its query's after {when}"
    );
}

impl Shoal {
    /// The storage table behind a stream table, from the catalog.
    pub async fn stream_storage(&self, name: &str) -> String {
        self.coordinator()
            .await
            .query_one(
                "SELECT storage_relid::regclass::text FROM shoal.stream_table
                 WHERE relid = to_regclass($1)",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("no stream table {name}: {e}"))
            .get(0)
    }
}
