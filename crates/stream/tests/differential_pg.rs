//! Differential refresh against a real PostgreSQL: random inserts, updates and deletes on small
//! tables, changes captured by triggers into plain tables, the generated SQL applied, and every
//! stream table compared with its query recomputed (`EXCEPT ALL` both ways) after every round.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use shoal_sql::QualifiedName;
use shoal_stream::{
    analyze, contents_sql, differential_refresh_sql, full_refresh_sql, probe_sql, storage_ddl,
    typed_columns, ColumnType, DeltaRelations, QueryPlan, SourceRef,
};
use shoal_testkit::TestCluster;

const SOURCES: [&str; 3] = ["orders", "items", "products"];

/// The stream tables under test, each exercising a supported shape.
const QUERIES: &[(&str, &str)] = &[
    (
        "st_filter",
        "SELECT o.id, o.customer_id, o.amount * 2 AS double_amount FROM orders o \
         WHERE o.amount > 50 AND o.note LIKE 'n%'",
    ),
    (
        "st_bag",
        "SELECT customer_id, note FROM orders WHERE amount IS NOT NULL",
    ),
    ("st_distinct", "SELECT DISTINCT customer_id, note FROM orders"),
    (
        "st_agg",
        "SELECT customer_id, count(*) AS n, count(amount) AS n_amount, sum(amount) AS total, \
         avg(amount) AS mean, min(amount) AS lo, max(amount) AS hi FROM orders GROUP BY customer_id",
    ),
    (
        "st_global",
        "SELECT count(*) AS n, sum(qty) AS q, avg(qty) AS mean, min(qty) AS lo, max(qty) AS hi \
         FROM items WHERE qty > 1",
    ),
    (
        "st_hidden_key",
        "SELECT sum(amount) AS total, max(note) AS last_note FROM orders GROUP BY customer_id, note",
    ),
    (
        "st_join",
        "SELECT o.customer_id, i.qty, p.name FROM orders o JOIN items i ON i.order_id = o.id \
         JOIN products p ON p.id = i.product_id WHERE i.qty > 0",
    ),
    (
        "st_join_agg",
        "SELECT o.customer_id, p.name, count(*) AS n, sum(i.qty) AS q, min(i.qty) AS lo, \
         max(o.amount) AS hi FROM orders o, items i, products p \
         WHERE i.order_id = o.id AND p.id = i.product_id GROUP BY o.customer_id, p.name",
    ),
    (
        "st_groups_only",
        "SELECT customer_id, note FROM orders GROUP BY customer_id, note",
    ),
    (
        "st_distinct_join",
        "SELECT DISTINCT o.customer_id, p.name FROM orders o JOIN items i ON i.order_id = o.id \
         JOIN products p ON p.id = i.product_id",
    ),
    (
        "st_using",
        "SELECT id, o.customer_id, i.qty FROM orders o JOIN items i USING (id) WHERE i.qty > 1",
    ),
    (
        "st_using_bag",
        "SELECT customer_id, note, qty FROM orders JOIN items USING (id) JOIN products p \
         ON p.id = items.product_id",
    ),
    (
        "st_join_alias",
        "SELECT x.customer_id, count(*) AS n, sum(x.qty) AS q, max(x.qty) AS hi, min(x.id) AS lo \
         FROM (orders JOIN items USING (id)) AS x GROUP BY x.customer_id",
    ),
    (
        "st_using_alias",
        "SELECT u.id, note FROM orders JOIN items USING (id) AS u WHERE qty < 5",
    ),
    (
        "st_subquery",
        "SELECT b.customer_id, sum(b.double) AS s, count(*) AS n FROM \
         (SELECT o.customer_id, o.amount * 2 AS double FROM orders o WHERE o.amount > 10) b \
         GROUP BY b.customer_id",
    ),
    (
        "st_subquery_join",
        "SELECT b.customer_id, i.qty, b.n FROM (SELECT id, customer_id, note AS n FROM orders \
         WHERE amount > 20) AS b (oid) JOIN items i ON i.order_id = b.oid",
    ),
    (
        "st_cte_twice",
        "WITH big AS (SELECT id, customer_id, note FROM orders WHERE amount > 30) \
         SELECT x.customer_id, y.note FROM big x JOIN big y ON y.customer_id = x.customer_id \
         AND y.id <> x.id",
    ),
    (
        "st_exists",
        "SELECT o.customer_id, count(*) AS n FROM orders o WHERE o.amount > 5 AND \
         EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id AND i.qty > 2) GROUP BY o.customer_id",
    ),
    (
        "st_not_exists",
        "SELECT o.id, o.note FROM orders o WHERE NOT EXISTS \
         (SELECT 1 FROM items WHERE items.order_id = o.id)",
    ),
    (
        "st_in",
        "SELECT i.id, i.qty FROM items i WHERE i.product_id IN \
         (SELECT p.id FROM products p WHERE p.name LIKE 'p1%') \
         AND order_id IN (SELECT id FROM orders WHERE amount > 40)",
    ),
    (
        "st_exists_join",
        "SELECT o.customer_id, p.name FROM orders o JOIN items i ON i.order_id = o.id \
         JOIN products p ON p.id = i.product_id \
         WHERE NOT EXISTS (SELECT 1 FROM items j WHERE j.order_id = o.id AND j.qty > i.qty)",
    ),
    (
        "st_exists_cte",
        "WITH few AS (SELECT order_id, qty FROM items WHERE qty < 3) \
         SELECT DISTINCT o.customer_id FROM orders o \
         WHERE EXISTS (SELECT 1 FROM few f WHERE f.order_id = o.id)",
    ),
    (
        "st_having",
        "SELECT customer_id, count(*) AS n, sum(amount) AS total FROM orders \
         GROUP BY customer_id HAVING count(*) > 6 AND min(amount) < 30",
    ),
    (
        "st_having_join",
        "SELECT p.name, sum(i.qty) AS q FROM items i JOIN products p ON p.id = i.product_id \
         GROUP BY p.name HAVING sum(i.qty) > 40 OR count(*) < 15",
    ),
    (
        "st_having_global",
        "SELECT count(*) AS n FROM orders HAVING avg(amount) > 50",
    ),
    (
        "st_distinct_agg",
        "SELECT customer_id, count(DISTINCT note) AS notes, sum(DISTINCT amount) AS s, \
         avg(DISTINCT amount) AS a, count(*) AS n FROM orders GROUP BY customer_id",
    ),
    (
        "st_distinct_agg_join",
        "SELECT p.name, count(DISTINCT i.order_id) AS orders FROM items i \
         JOIN products p ON p.id = i.product_id GROUP BY p.name HAVING count(DISTINCT i.qty) > 4",
    ),
    (
        "st_distinct_global",
        "SELECT count(DISTINCT customer_id) AS c, avg(DISTINCT amount) AS a FROM orders \
         WHERE amount > 100",
    ),
    (
        "st_filter_agg",
        "SELECT customer_id, count(*) FILTER (WHERE amount > 50) AS big, \
         count(note) FILTER (WHERE note = 'n1') AS n1, sum(amount) FILTER (WHERE note <> 'n0') AS s, \
         avg(amount) FILTER (WHERE amount < 90) AS a, min(amount) FILTER (WHERE note = 'n2') AS lo, \
         count(DISTINCT note) FILTER (WHERE amount > 20) AS notes FROM orders GROUP BY customer_id",
    ),
    (
        "st_filter_global",
        "SELECT count(*) FILTER (WHERE i.qty > 3) AS n, max(p.name) FILTER (WHERE i.qty = 0) AS hi \
         FROM items i JOIN products p ON p.id = i.product_id",
    ),
    (
        "st_left",
        "SELECT o.customer_id, i.qty FROM orders o LEFT JOIN items i ON i.order_id = o.id \
         AND i.qty > 1",
    ),
    (
        "st_left_agg",
        "SELECT o.customer_id, count(*) AS n, count(i.id) AS matched, sum(i.qty) AS q, \
         max(i.qty) AS hi FROM orders o LEFT JOIN items i ON i.order_id = o.id \
         WHERE o.amount IS NOT NULL GROUP BY o.customer_id",
    ),
    (
        "st_right",
        "SELECT p.name, i.qty FROM items i RIGHT JOIN products p ON p.id = i.product_id \
         AND i.qty < 3",
    ),
    (
        "st_full",
        "SELECT o.customer_id, i.product_id FROM orders o FULL JOIN items i \
         ON i.order_id = o.id AND o.note <> 'n0'",
    ),
    (
        "st_left_self",
        "SELECT a.id, b.amount FROM orders a LEFT JOIN orders b \
         ON b.customer_id = a.customer_id AND b.id > a.id + 20",
    ),
    (
        "st_union_all",
        "SELECT customer_id, note FROM orders WHERE amount > 30 \
         UNION ALL SELECT i.order_id, p.name FROM items i JOIN products p ON p.id = i.product_id \
         UNION ALL SELECT customer_id, note FROM orders",
    ),
    (
        "st_union",
        "SELECT customer_id AS c FROM orders UNION SELECT order_id FROM items WHERE qty > 4",
    ),
    (
        "st_self_join",
        "SELECT a.id AS a_id, b.id AS b_id FROM orders a JOIN orders b \
         ON a.customer_id = b.customer_id AND a.id < b.id",
    ),
    (
        "st_bool_agg",
        "SELECT customer_id, bool_and(amount > 40) AS all_big, bool_or(note = 'n1') AS any_n1, \
         every(amount IS NOT NULL) FILTER (WHERE note <> 'n2') AS all_set FROM orders \
         GROUP BY customer_id",
    ),
    // Ordered within the call, so that a recomputation gives the same text and arrays.
    (
        "st_string_agg",
        "SELECT customer_id, string_agg(note, ',' ORDER BY note, id) AS notes, \
         array_agg(amount ORDER BY amount, id) AS amounts, count(*) AS n FROM orders \
         GROUP BY customer_id",
    ),
    (
        "st_string_agg_join",
        "SELECT p.name, string_agg(DISTINCT i.qty::text, '/' ORDER BY i.qty::text) \
         FILTER (WHERE i.qty > 0) AS qtys, bool_or(i.qty > 5) AS big FROM items i \
         JOIN products p ON p.id = i.product_id GROUP BY p.name \
         HAVING array_agg(i.order_id ORDER BY i.order_id, i.id) <> '{}' AND bool_and(i.qty < 7)",
    ),
    (
        "st_array_global",
        "SELECT array_agg(qty ORDER BY qty, order_id, id) AS qtys, bool_and(qty > 3) AS big \
         FROM items WHERE qty > 2",
    ),
    (
        "st_window",
        "SELECT o.id, o.customer_id, row_number() OVER w AS rn, \
         rank() OVER (PARTITION BY o.customer_id ORDER BY o.amount) AS r, \
         sum(o.amount) OVER (PARTITION BY o.customer_id) AS total, lag(o.amount) OVER w AS prev \
         FROM orders o WHERE o.note <> 'n2' \
         WINDOW w AS (PARTITION BY o.customer_id ORDER BY o.amount, o.id)",
    ),
    // Duplicate rows, and partitions that move when a product is renamed.
    (
        "st_window_join",
        "SELECT p.name, i.qty, count(*) OVER (PARTITION BY p.name) AS n, \
         dense_rank() OVER (PARTITION BY p.name ORDER BY i.qty) AS dr, \
         max(i.qty) OVER (PARTITION BY p.name) AS hi, avg(i.qty) OVER (PARTITION BY p.name) AS mean \
         FROM items i JOIN products p ON p.id = i.product_id",
    ),
    (
        "st_window_left",
        "SELECT o.customer_id, i.qty, row_number() OVER (PARTITION BY o.customer_id, o.note \
         ORDER BY i.qty, i.id, o.id) AS rn, lead(i.qty) OVER (PARTITION BY o.customer_id, o.note \
         ORDER BY i.qty, i.id, o.id) AS next FROM orders o LEFT JOIN items i ON i.order_id = o.id",
    ),
];

async fn exec(client: &Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}\nfailed: {e:?}");
    }
}

async fn count(client: &Client, sql: &str) -> i64 {
    match client.query_one(sql, &[]).await {
        Ok(row) => row.get(0),
        Err(e) => panic!("{sql}\nfailed: {e:?}"),
    }
}

async fn setup_sources(client: &Client) {
    exec(
        client,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, note text);
         CREATE TABLE items (id bigint, order_id bigint, product_id int, qty int,
                             PRIMARY KEY (order_id, id));
         CREATE TABLE products (id int PRIMARY KEY, name text);
         CREATE SCHEMA capture;",
    )
    .await;
    // Change capture stand-in: old rows to capture.del_<t>, new rows to capture.ins_<t>.
    for t in SOURCES {
        exec(
            client,
            &format!(
                "CREATE TABLE capture.del_{t} (LIKE {t});
                 CREATE TABLE capture.ins_{t} (LIKE {t});
                 CREATE FUNCTION capture.{t}_fn() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF TG_OP IN ('DELETE', 'UPDATE') THEN
                     INSERT INTO capture.del_{t} SELECT (OLD).*;
                   END IF;
                   IF TG_OP IN ('INSERT', 'UPDATE') THEN
                     INSERT INTO capture.ins_{t} SELECT (NEW).*;
                   END IF;
                   RETURN NULL;
                 END $$;
                 CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON {t}
                   FOR EACH ROW EXECUTE FUNCTION capture.{t}_fn();"
            ),
        )
        .await;
    }
    exec(
        client,
        "INSERT INTO products SELECT g, 'p' || (g % 4) FROM generate_series(1, 8) g;
         INSERT INTO orders SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 5 END,
                CASE WHEN g % 11 = 0 THEN NULL ELSE (g * 7 % 100)::numeric + 0.5 END,
                'n' || (g % 3)
           FROM generate_series(1, 40) g;
         INSERT INTO items SELECT g, g % 45 + 1, g % 9 + 1, g % 6 FROM generate_series(1, 80) g;",
    )
    .await;
}

/// Creates the stream table from its plan, the way the scheduler will: probe the column types,
/// create the storage, fill it by a full refresh.
async fn create_stream_table(client: &Client, plan: &QueryPlan, table: &QualifiedName) {
    let probe = format!("probe_{}", table.name);
    exec(
        client,
        &format!("CREATE TEMP TABLE {probe} AS {}", probe_sql(plan)),
    )
    .await;
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&probe],
        )
        .await
        .unwrap();
    let types: Vec<ColumnType> = rows
        .iter()
        .map(|r| ColumnType::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    assert_eq!(
        types.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        typed_columns(plan)
    );
    for stmt in storage_ddl(plan, table, &types).unwrap() {
        exec(client, &stmt).await;
    }
    refresh(client, &full_refresh_sql(plan, table)).await;
}

async fn refresh(client: &Client, stmts: &[String]) {
    exec(client, &format!("BEGIN; {}; COMMIT", stmts.join(";\n"))).await;
}

/// Asserts the stream table holds exactly the query's result, duplicates included.
async fn assert_matches(client: &Client, plan: &QueryPlan, table: &QualifiedName, when: &str) {
    let contents = contents_sql(plan, table);
    let extra = count(
        client,
        &format!(
            "SELECT count(*) FROM (({contents}) EXCEPT ALL ({})) x",
            plan.query
        ),
    )
    .await;
    let missing = count(
        client,
        &format!(
            "SELECT count(*) FROM (({}) EXCEPT ALL ({contents})) x",
            plan.query
        ),
    )
    .await;
    if extra != 0 || missing != 0 {
        let dump = client
            .query(&format!("SELECT t::text FROM {} t", table.quoted()), &[])
            .await
            .unwrap();
        let stored: Vec<String> = dump.iter().map(|r| r.get(0)).collect();
        panic!(
            "{} after {when}: {extra} rows too many, {missing} missing\nstored: {stored:#?}",
            table.name
        );
    }
    // Every stored row stands for at least one result row; no zero-count leftovers.
    let empty = count(
        client,
        &format!(
            "SELECT count(*) FROM {} WHERE __shoal_count <= 0",
            table.quoted()
        ),
    )
    .await;
    let global = plan
        .differential()
        .and_then(|d| d.grouping.as_ref())
        .is_some_and(|g| g.keys.is_empty());
    if !global {
        assert_eq!(
            empty, 0,
            "{}: rows with a zero count after {when}",
            table.name
        );
    }
}

async fn max_id(client: &Client, table: &str) -> i64 {
    count(client, &format!("SELECT coalesce(max(id), 0) FROM {table}")).await
}

/// One random change to one source table.
async fn random_change(client: &Client, rng: &mut StdRng) {
    let customer = |rng: &mut StdRng| -> String {
        if rng.gen_ratio(1, 8) {
            "NULL".into()
        } else {
            rng.gen_range(0..6).to_string()
        }
    };
    let amount = |rng: &mut StdRng| -> String {
        if rng.gen_ratio(1, 8) {
            "NULL".into()
        } else {
            format!("{}.{}", rng.gen_range(0..120), rng.gen_range(0..10))
        }
    };
    let sql = match rng.gen_range(0..12) {
        0 | 1 => {
            let id = max_id(client, "orders").await + 1;
            format!(
                "INSERT INTO orders VALUES ({id}, {}, {}, 'n{}')",
                customer(rng),
                amount(rng),
                rng.gen_range(0..3)
            )
        }
        2 => format!(
            "UPDATE orders SET amount = {} WHERE id % 9 = {}",
            amount(rng),
            rng.gen_range(0..9)
        ),
        // Moves orders between groups and changes the self-join and join partners.
        3 => format!(
            "UPDATE orders SET customer_id = {} WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
            customer(rng)
        ),
        4 => "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)"
            .to_string(),
        // Deletes the extreme of a group: MIN/MAX must be recomputed from the sources.
        5 => "DELETE FROM orders WHERE id IN (SELECT DISTINCT ON (customer_id) id FROM orders \
              WHERE amount IS NOT NULL ORDER BY customer_id, amount DESC LIMIT 2)"
            .to_string(),
        6 => {
            let id = max_id(client, "items").await + 1;
            format!(
                "INSERT INTO items VALUES ({id}, {}, {}, {})",
                rng.gen_range(1..50),
                rng.gen_range(1..10),
                rng.gen_range(0..8)
            )
        }
        7 => format!(
            "UPDATE items SET qty = {} WHERE id = (SELECT id FROM items ORDER BY random() LIMIT 1)",
            rng.gen_range(0..8)
        ),
        // Changes the join key.
        8 => format!(
            "UPDATE items SET order_id = {} WHERE id = (SELECT id FROM items ORDER BY random() LIMIT 1)",
            rng.gen_range(1..50)
        ),
        9 => "DELETE FROM items WHERE qty = (SELECT max(qty) FROM items) \
              AND id IN (SELECT id FROM items ORDER BY random() LIMIT 3)"
            .to_string(),
        10 => format!(
            "UPDATE products SET name = 'p{}' WHERE id = {}",
            rng.gen_range(0..5),
            rng.gen_range(1..10)
        ),
        // An update that changes nothing visible, and one row changed twice in a window.
        _ => format!(
            "UPDATE orders SET note = note WHERE id % 4 = {0};
             UPDATE orders SET amount = amount + 1 WHERE id % 13 = {0};
             UPDATE orders SET amount = amount - 1 WHERE id % 13 = {0}",
            rng.gen_range(0..4)
        ),
    };
    exec(client, &sql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_refresh_equals_recomputation() {
    let cluster = TestCluster::start(0).await;
    let client = cluster.coordinator.connect().await;
    setup_sources(&client).await;

    let mut tables = Vec::new();
    for (name, sql) in QUERIES {
        let plan = analyze(sql).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            plan.differential().is_some(),
            "{name}: {:?}",
            plan.maintenance
        );
        let table = QualifiedName::new("public", *name);
        create_stream_table(&client, &plan, &table).await;
        assert_matches(&client, &plan, &table, "the initial full refresh").await;
        tables.push((plan, table));
    }
    exec(
        &client,
        "TRUNCATE capture.del_orders, capture.ins_orders, capture.del_items, capture.ins_items, \
         capture.del_products, capture.ins_products",
    )
    .await;

    let deltas: HashMap<SourceRef, DeltaRelations> = SOURCES
        .iter()
        .map(|t| {
            (
                SourceRef::new(None, t),
                DeltaRelations {
                    deleted_sql: format!("capture.del_{t}"),
                    inserted_sql: format!("(SELECT * FROM capture.ins_{t})"),
                },
            )
        })
        .collect();

    // SHOAL_STREAM_SEED replays another random history.
    let seed = std::env::var("SHOAL_STREAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x50a1_u64);
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..100 {
        let changes = rng.gen_range(1..8);
        for _ in 0..changes {
            random_change(&client, &mut rng).await;
        }
        // Only sources with captured changes get delta terms.
        let mut changed = HashMap::new();
        for t in SOURCES {
            let n = count(
                &client,
                &format!(
                    "SELECT (SELECT count(*) FROM capture.del_{t}) + (SELECT count(*) FROM capture.ins_{t})"
                ),
            )
            .await;
            if n > 0 {
                let key = SourceRef::new(None, t);
                changed.insert(key.clone(), deltas[&key].clone());
            }
        }
        for (plan, table) in &tables {
            let mine: HashMap<SourceRef, DeltaRelations> = changed
                .iter()
                .filter(|(k, _)| plan.relations.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let stmts = differential_refresh_sql(plan, table, &mine).unwrap();
            assert_eq!(stmts.is_empty(), mine.is_empty());
            if !stmts.is_empty() {
                refresh(&client, &stmts).await;
            }
            assert_matches(
                &client,
                plan,
                table,
                &format!("round {round} (seed {seed})"),
            )
            .await;
        }
        exec(
            &client,
            "TRUNCATE capture.del_orders, capture.ins_orders, capture.del_items, \
             capture.ins_items, capture.del_products, capture.ins_products",
        )
        .await;
    }

    // A full refresh over a differentially maintained table gives the same content.
    for (plan, table) in &tables {
        refresh(&client, &full_refresh_sql(plan, table)).await;
        assert_matches(&client, plan, table, "the final full refresh").await;
    }
}
