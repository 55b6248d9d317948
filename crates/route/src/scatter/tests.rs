use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::*;
use crate::topology::{Distribution, Placement, Shard, Table};
use crate::KeyType;

fn topology() -> Topology {
    let name = |t: &str| QualifiedName::new("public", t);
    let orders = Table {
        columns: vec!["id".into(), "customer_id".into(), "amount".into()],
        with_defaults: Vec::new(),
        placement: Placement::Distributed(Distribution {
            key: Some(("id".into(), KeyType::Int8)),
            colocation: 1,
            shards: (0..4)
                .map(|i| Shard {
                    node: 1 + (i % 2),
                    table: name(&format!("orders_{}", 100 + i)),
                    shard_id: 100 + i64::from(i),
                })
                .collect(),
        }),
    };
    let distributed = |columns: &[&str], key: &str, colocation: i64, stem: &str| Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        with_defaults: Vec::new(),
        placement: Placement::Distributed(Distribution {
            key: Some((key.into(), KeyType::Int8)),
            colocation,
            shards: (0..4)
                .map(|i| Shard {
                    node: 1 + (i % 2),
                    table: name(&format!("{stem}_{}", 200 + i)),
                    shard_id: 200 + i64::from(i),
                })
                .collect(),
        }),
    };
    let items = distributed(&["id", "order_id", "kind", "qty"], "order_id", 1, "items");
    let people = distributed(&["id", "name"], "id", 2, "people");
    let kinds = Table {
        columns: vec!["id".into()],
        with_defaults: Vec::new(),
        placement: Placement::Reference {
            replica: name("kinds"),
        },
    };
    Topology {
        search_path: vec!["public".into()],
        tables: Arc::new(HashMap::from([
            (name("orders"), orders),
            (name("kinds"), kinds),
            (name("items"), items),
            (name("people"), people),
        ])),
        builtin_functions: Arc::new(
            ["count", "sum", "avg", "min", "max", "lower", "string_agg"]
                .into_iter()
                .map(String::from)
                .collect::<HashSet<_>>(),
        ),
        node_versions: Arc::default(),
    }
}

#[test]
fn a_count_is_counted_per_shard_on_each_node_and_summed() {
    let scatter = plan_scatter("SELECT count(*) FROM orders", &topology()).unwrap();
    assert_eq!(scatter.per_node().len(), 2);
    let (node, sql) = &scatter.per_node()[0];
    assert_eq!(*node, 1);
    assert_eq!(
        sql,
        "SELECT count(*) AS c0 FROM public.orders_100 orders UNION ALL \
         SELECT count(*) AS c0 FROM public.orders_102 orders"
    );
    assert_eq!(
        scatter.merge,
        "SELECT sum(p.c0)::bigint AS \"count\" FROM {partials}"
    );
    assert_eq!(
        scatter.merge_sql(
            &["bigint".into()],
            &[vec![Some("3".into())], vec![Some("4".into())]]
        ),
        "SELECT sum(p.c0)::bigint AS \"count\" FROM (VALUES ('3'::bigint), ('4'::bigint)) p(c0)"
    );
    assert_eq!(scatter.tables, [QualifiedName::new("public", "orders")]);
}

#[test]
fn groups_are_merged_with_their_aggregates() {
    let scatter = plan_scatter(
        "SELECT customer_id % 100, count(*), sum(amount) FROM orders WHERE amount > 5 GROUP BY 1",
        &topology(),
    )
    .unwrap();
    assert!(scatter.per_node()[1].1.starts_with(
        "SELECT customer_id % 100 AS c0, count(*) AS c1, sum(amount) AS c2 FROM public.orders_101 \
         orders WHERE amount > 5 GROUP BY customer_id % 100 UNION ALL"
    ), "{}", scatter.per_node()[1].1);
    assert_eq!(
        scatter.merge,
        "SELECT p.c0 AS \"?column?\", sum(p.c1)::bigint AS \"count\", sum(p.c2)::{t2} AS \"sum\" \
         FROM {partials} GROUP BY p.c0"
    );
    let types = ["integer".to_string(), "bigint".into(), "numeric".into()];
    assert_eq!(
        scatter.merge_sql(&types, &[]),
        "SELECT p.c0 AS \"?column?\", sum(p.c1)::bigint AS \"count\", sum(p.c2)::numeric AS \"sum\" \
         FROM (SELECT NULL::integer, NULL::bigint, NULL::numeric WHERE false) p(c0, c1, c2) \
         GROUP BY p.c0"
    );
}

#[test]
fn averages_divide_the_summed_sums_and_order_and_limit_apply_to_the_merge() {
    let scatter = plan_scatter(
        "SELECT customer_id AS c, avg(amount) AS a, max(id) FROM orders o GROUP BY customer_id \
         ORDER BY a DESC NULLS LAST, max(id), 1 LIMIT 5 OFFSET 2",
        &topology(),
    )
    .unwrap();
    assert!(
        scatter.per_node()[0].1.starts_with(
            "SELECT customer_id AS c0, sum(amount) AS c1, count(amount) AS c2, max(id) AS c3 \
             FROM public.orders_100 o GROUP BY customer_id"
        ),
        "{}",
        scatter.per_node()[0].1
    );
    assert_eq!(
        scatter.merge,
        "SELECT p.c0 AS \"c\", (sum(p.c1) / nullif(sum(p.c2), 0)) AS \"a\", max(p.c3) AS \"max\" \
         FROM {partials} GROUP BY p.c0 ORDER BY 2 DESC NULLS LAST, 3, 1 LIMIT 5 OFFSET 2"
    );
}

#[test]
fn a_cast_output_casts_the_merged_value_and_keeps_its_name() {
    let scatter = plan_scatter(
        "SELECT count(*)::text, avg(amount)::numeric(10, 2) AS a FROM orders",
        &topology(),
    )
    .unwrap();
    assert_eq!(
        scatter.merge,
        "SELECT (sum(p.c0)::bigint)::text AS \"count\", \
         ((sum(p.c1) / nullif(sum(p.c2), 0)))::numeric(10, 2) AS \"a\" FROM {partials}"
    );
}

#[test]
fn a_sorted_limit_takes_each_shards_first_rows_and_merges_them() {
    let scatter = plan_scatter(
        "SELECT id, amount AS a FROM orders WHERE amount > 1 ORDER BY a DESC, id LIMIT 10 OFFSET 2",
        &topology(),
    )
    .unwrap();
    assert!(
        scatter.per_node()[0].1.starts_with(
            "(SELECT id AS c0, amount AS c1 FROM public.orders_100 orders WHERE amount > 1 \
             ORDER BY 2 DESC, 1 LIMIT 12) UNION ALL (SELECT"
        ),
        "{}",
        scatter.per_node()[0].1
    );
    assert_eq!(
        scatter.merge,
        "SELECT p.c0 AS \"id\", p.c1 AS \"a\" FROM {partials} ORDER BY 2 DESC, 1 LIMIT 10 OFFSET 2"
    );
    assert!(plan_scatter(
        "SELECT id::text FROM orders ORDER BY 1 LIMIT 3",
        &topology()
    )
    .is_err());
    assert!(plan_scatter("SELECT id FROM orders ORDER BY amount LIMIT 3", &topology()).is_err());
}

#[test]
fn what_cannot_be_split_stays_with_the_coordinator() {
    for sql in [
        "SELECT count(DISTINCT customer_id) FROM orders",
        "SELECT customer_id, count(*) FROM orders GROUP BY customer_id HAVING lower(min(customer_id::text)) > 'a'",
        "SELECT customer_id, count(*) FROM orders GROUP BY customer_id HAVING max(amount) > amount",
        // Joins that pair rows of different shards, or NULL-extend reference rows per shard.
        "SELECT count(*) FROM orders o JOIN items i ON i.id = o.id",
        "SELECT count(*) FROM orders o, items i WHERE o.customer_id = i.order_id",
        "SELECT count(*) FROM orders o JOIN people p ON p.id = o.id",
        "SELECT count(*) FROM kinds k LEFT JOIN orders o ON o.customer_id = k.id",
        "SELECT count(*) FROM orders o LEFT JOIN items i ON i.qty = o.amount WHERE i.order_id = o.id",
        "SELECT i.order_id, count(*) FROM orders o LEFT JOIN items i ON i.order_id = o.id \
         GROUP BY i.order_id HAVING count(DISTINCT o.customer_id) > 1",
        "SELECT count(DISTINCT i.order_id) FROM orders o FULL JOIN items i ON i.order_id = o.id",
        "SELECT count(*) FROM kinds",
        "SELECT id, count(*) FROM orders GROUP BY customer_id",
        "SELECT count(*) FROM orders WHERE id IN (SELECT id FROM orders)",
        "SELECT string_agg(id::text, ',') FROM orders",
        "SELECT id FROM orders",
        "SELECT count(*) FROM orders LIMIT $1",
        "SELECT sum(amount) OVER () FROM orders",
    ] {
        assert!(plan_scatter(sql, &topology()).is_err(), "{sql}");
    }
}

#[test]
fn a_colocated_join_runs_per_shard_pair_and_a_reference_join_against_the_replica() {
    let scatter = plan_scatter(
        "SELECT count(*), sum(i.qty) FROM orders o JOIN items i ON i.order_id = o.id \
         JOIN kinds k ON k.id = i.kind WHERE k.id > 2",
        &topology(),
    )
    .unwrap();
    assert_eq!(
        scatter.per_node()[1].1,
        "SELECT count(*) AS c0, sum(i.qty) AS c1 FROM public.orders_101 o \
         JOIN public.items_201 i ON i.order_id = o.id JOIN public.kinds k ON k.id = i.kind \
         WHERE k.id > 2 UNION ALL SELECT count(*) AS c0, sum(i.qty) AS c1 FROM public.orders_103 o \
         JOIN public.items_203 i ON i.order_id = o.id JOIN public.kinds k ON k.id = i.kind \
         WHERE k.id > 2"
    );
    assert_eq!(
        scatter.tables,
        [
            QualifiedName::new("public", "items"),
            QualifiedName::new("public", "kinds"),
            QualifiedName::new("public", "orders"),
        ]
    );
    // Keys equated in WHERE, USING, or an outer join's own ON.
    for sql in [
        "SELECT count(*) FROM orders, items WHERE items.order_id = orders.id",
        "SELECT count(*) FROM orders o LEFT JOIN items i ON o.id = i.order_id AND i.qty > 1",
        "SELECT count(*) FROM orders o FULL JOIN items i ON o.id = i.order_id",
        "SELECT count(*) FROM orders o LEFT JOIN kinds k ON k.id = o.customer_id",
    ] {
        assert!(plan_scatter(sql, &topology()).is_ok(), "{sql}");
    }
}

#[test]
fn grouping_by_the_distribution_column_runs_whole_groups_on_the_shards() {
    let scatter = plan_scatter(
        "SELECT o.id, sum(i.qty), string_agg(i.kind::text, ',') FROM orders o \
         JOIN items i ON i.order_id = o.id GROUP BY o.id HAVING count(*) > 1 \
         ORDER BY 2 DESC, 1 LIMIT 10 OFFSET 5",
        &topology(),
    )
    .unwrap();
    assert!(
        scatter.per_node()[0].1.starts_with(
            "(SELECT o.id AS c0, sum(i.qty) AS c1, string_agg(i.kind::text, ',') AS c2 \
             FROM public.orders_100 o JOIN public.items_200 i ON i.order_id = o.id \
             GROUP BY o.id HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 15) UNION ALL ("
        ),
        "{}",
        scatter.per_node()[0].1
    );
    assert_eq!(
        scatter.merge,
        "SELECT p.c0 AS \"id\", p.c1 AS \"sum\", p.c2 AS \"string_agg\" FROM {partials} \
         ORDER BY 2 DESC, 1 LIMIT 10 OFFSET 5"
    );
}

#[test]
fn having_filters_the_merged_groups_and_distinct_keys_count_per_shard() {
    let scatter = plan_scatter(
        "SELECT customer_id, count(DISTINCT id) FROM orders GROUP BY customer_id \
         HAVING sum(amount) > 10 AND customer_id IS NOT NULL OR max(amount) IN (1, 2)",
        &topology(),
    )
    .unwrap();
    assert!(
        scatter.per_node()[0].1.starts_with(
            "SELECT customer_id AS c0, count(DISTINCT id) AS c1, sum(amount) AS c2, \
             max(amount) AS c3 FROM public.orders_100 orders GROUP BY customer_id UNION ALL"
        ),
        "{}",
        scatter.per_node()[0].1
    );
    assert_eq!(
        scatter.merge,
        "SELECT p.c0 AS \"customer_id\", sum(p.c1)::bigint AS \"count\" FROM {partials} \
         GROUP BY p.c0 HAVING ((sum(p.c2)::{t2}) > 10 AND (p.c0) IS NOT NULL) OR (max(p.c3)) IN (1, 2)"
    );
}

#[test]
fn a_nodes_shards_are_shared_out_over_its_connections() {
    let scatter = Scatter {
        shard_statements: vec![
            (1, (0..5).map(|i| format!("SELECT {i}")).collect()),
            (2, vec!["SELECT 9".into()]),
        ],
        partial_columns: 1,
        merge: "SELECT p.c0 FROM {partials}".into(),
        tables: Vec::new(),
        parameters: false,
    };
    let shown = |connections| -> Vec<(i32, String)> { scatter.per_connection(connections) };
    assert_eq!(
        shown(2),
        [
            (
                1,
                "SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2".to_string()
            ),
            (1, "SELECT 3 UNION ALL SELECT 4".to_string()),
            (2, "SELECT 9".to_string()),
        ]
    );
    // Never more connections than shards, never an empty statement.
    assert_eq!(shown(8).len(), 6);
    assert_eq!(shown(0), scatter.per_node());
    assert_eq!(scatter.per_node()[0].1.matches("UNION ALL").count(), 4);
}

#[test]
fn parameters_split_where_every_shard_keeps_them() {
    let scatter = plan_scatter(
        "SELECT customer_id, count(*) FROM orders WHERE amount > $1 AND id <> $2 GROUP BY 1",
        &topology(),
    )
    .unwrap();
    assert!(scatter.parameters);
    assert!(
        scatter.per_node()[0].1.starts_with(
            "SELECT customer_id AS c0, count(*) AS c1 FROM public.orders_100 orders \
                          WHERE amount > $1 AND id <> $2 GROUP BY customer_id UNION ALL"
        ),
        "{}",
        scatter.per_node()[0].1
    );
    assert!(
        !plan_scatter("SELECT count(*) FROM orders", &topology())
            .unwrap()
            .parameters
    );
    for sql in [
        "SELECT count(*) + $1 FROM orders",
        "SELECT customer_id, count(*) FROM orders GROUP BY 1 HAVING count(*) > $1",
        "SELECT id FROM orders ORDER BY amount LIMIT $1",
        "SELECT customer_id % $1, count(*) FROM orders GROUP BY 1",
    ] {
        let refused = plan_scatter(sql, &topology()).unwrap_err();
        assert!(refused.0.contains("parameters"), "{sql}: {refused:?}");
    }
}
