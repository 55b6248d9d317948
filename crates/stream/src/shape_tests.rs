//! Unit tests of the query shapes beyond inner joins and plain aggregates: USING and join
//! aliases, HAVING, DISTINCT aggregates, FILTER, outer joins, bool/string/array aggregates,
//! window functions; with their generated SQL.

use std::collections::HashMap;

use crate::tests::{generate_all, plan, table, types_for, unsupported};
use crate::{
    contents_sql, differential_refresh_sql, full_refresh_sql, probe_sql, storage_ddl,
    typed_columns, AggFunc, DeltaRelations, QueryPlan, SourceRef,
};

/// The aggregates of a grouped plan, as (function, argument).
fn aggregates_of(p: &QueryPlan) -> Vec<(AggFunc, Option<&str>)> {
    let g = p.differential().unwrap().grouping.as_ref().unwrap();
    g.aggregates
        .iter()
        .map(|a| (a.func, a.arg.as_deref()))
        .collect()
}

#[test]
fn joins_using_and_join_aliases_keep_their_scopes() {
    // The merged USING column, unqualified, and a USING alias.
    let p = plan(
        "SELECT id, u.qty, x.order_id FROM orders JOIN items AS u USING (id) \
         JOIN notes USING (order_id) AS x WHERE id > 0",
    );
    let d = p.differential().unwrap();
    assert_eq!(
        d.from,
        "__shoal_src_1_ JOIN __shoal_src_2_ USING (id) JOIN __shoal_src_3_ USING (order_id) AS x"
    );
    let stmts = generate_all(&p);
    // The term with only `items` changed: its delta in its place, the USING clauses kept.
    assert!(stmts[0].contains(
        "SELECT id AS \"__shoal_k1\", u.qty AS \"__shoal_k2\", x.order_id AS \"__shoal_k3\", \
         \"__shoal_sign2\" AS \"__shoal_delta\" FROM \"orders\" AS \"orders\" JOIN (SELECT \"__shoal_m\".*, \
         -1 AS \"__shoal_sign2\" FROM \"__shoal_old2\" AS \"__shoal_m\" UNION ALL \
         SELECT \"__shoal_p\".*, 1 AS \"__shoal_sign2\" FROM \"__shoal_new2\" AS \"__shoal_p\") AS \"u\" \
         USING (id) JOIN \"notes\" AS \"notes\" USING (order_id) AS x WHERE (id > 0)"
    ));

    // A join alias hides the names inside it: the signs are reached unqualified.
    let p = plan(
        "SELECT j.k, count(*) AS n FROM (orders o JOIN items i ON i.order_id = o.id) AS j \
         GROUP BY j.k",
    );
    let stmts = generate_all(&p);
    assert!(stmts[0].contains("-1 * \"__shoal_sign1\" * \"__shoal_sign2\" AS \"__shoal_delta\""));
    assert!(stmts[0].contains(
        "FROM (\"orders\" AS \"o\" JOIN (SELECT \"__shoal_m\".*, -1 AS \"__shoal_sign2\" FROM \
         \"__shoal_old2\" AS \"__shoal_m\" UNION ALL SELECT \"__shoal_p\".*, \
         1 AS \"__shoal_sign2\" FROM \"__shoal_new2\" AS \"__shoal_p\") AS \"i\" \
         ON i.order_id = o.id ) j UNION ALL"
    ));
    assert_eq!(
        unsupported("SELECT x FROM a NATURAL JOIN b"),
        "NATURAL joins are not supported in differential mode (at `a NATURAL JOIN b`); write \
         JOIN ... USING (...) with the columns"
    );
}

#[test]
fn having_is_applied_by_the_view_over_every_stored_group() {
    let p = plan(
        "SELECT o.customer_id, count(*) AS n FROM orders o GROUP BY o.customer_id \
         HAVING count(*) > 1 AND sum(o.amount) >= 10 AND customer_id IS NOT NULL",
    );
    let g = p.differential().unwrap().grouping.as_ref().unwrap();
    // count(*) is the output column n; the sum only HAVING uses is a hidden aggregate.
    assert_eq!(g.aggregates.len(), 2);
    assert_eq!(g.aggregates[1].func, AggFunc::Sum);
    assert_eq!(g.aggregates[1].column, None);
    assert_eq!(
        g.having.as_deref(),
        Some("__shoal_t.n > 1 AND __shoal_t.__shoal_agg_2 >= 10 AND __shoal_t.customer_id IS NOT NULL")
    );
    assert_eq!(typed_columns(&p), ["customer_id", "n", "__shoal_agg_2"]);
    assert!(probe_sql(&p).starts_with(
        "SELECT o.customer_id AS \"customer_id\", count(*) AS \"n\", sum(o.amount) AS \"__shoal_agg_2\" FROM"
    ));
    assert_eq!(
        contents_sql(&p, &table()),
        "SELECT \"__shoal_t\".\"customer_id\", \"__shoal_t\".\"n\" FROM \"app\".\"St\" AS \"__shoal_t\" \
         WHERE __shoal_t.n > 1 AND __shoal_t.__shoal_agg_2 >= 10 AND __shoal_t.customer_id IS NOT NULL"
    );
    let ddl = storage_ddl(&p, &table(), &types_for(&p)).unwrap();
    assert!(
        ddl[0].contains("\"__shoal_agg_2\" numeric, \"__shoal_nn_2\" bigint NOT NULL DEFAULT 0")
    );
    assert_eq!(
        full_refresh_sql(&p, &table())[1],
        "INSERT INTO \"app\".\"St\" (\"customer_id\", \"n\", \"__shoal_agg_2\", \"__shoal_nn_2\", \
         \"__shoal_count\") SELECT o.customer_id, count(*), sum(o.amount), count(o.amount), count(*) \
         FROM \"orders\" AS \"o\" GROUP BY o.customer_id"
    );
    let stmts = generate_all(&p);
    // The hidden aggregate is maintained like a visible one.
    assert!(stmts[0].contains("\"__shoal_agg_2\" = \"__shoal_s\".\"__shoal_n2\""));
    assert!(stmts[0].contains(
        "INSERT (\"customer_id\", \"n\", \"__shoal_agg_2\", \"__shoal_nn_2\", \"__shoal_count\")"
    ));

    // An aggregate written twice is stored once; a global aggregate's row stays, filtered.
    let p = plan("SELECT max(qty) AS hi FROM items HAVING max(qty) > 3 OR min(qty) IS NULL");
    let g = p.differential().unwrap().grouping.as_ref().unwrap();
    assert_eq!(g.aggregates.len(), 2);
    assert_eq!(
        g.having.as_deref(),
        Some("__shoal_t.hi > 3 OR __shoal_t.__shoal_agg_2 IS NULL")
    );
    generate_all(&p);
    // HAVING alone makes a query grouped.
    let p = plan("SELECT count(*) AS n FROM items HAVING sum(qty) > 0");
    assert!(p.differential().unwrap().grouping.is_some());
}

#[test]
fn distinct_aggregates_are_recomputed_for_the_groups_whose_values_changed() {
    let p = plan(
        "SELECT customer_id, count(DISTINCT note) AS notes, sum(DISTINCT amount) AS s, \
         avg(DISTINCT amount) AS a, min(DISTINCT amount) AS lo FROM orders GROUP BY customer_id",
    );
    let g = p.differential().unwrap().grouping.as_ref().unwrap();
    let funcs: Vec<AggFunc> = g.aggregates.iter().map(|a| a.func).collect();
    assert_eq!(
        funcs,
        [
            AggFunc::CountDistinct,
            AggFunc::SumDistinct,
            AggFunc::AvgDistinct,
            AggFunc::Min
        ]
    );
    // Nothing but the value is stored for them.
    let ddl = storage_ddl(&p, &table(), &types_for(&p)).unwrap();
    assert!(ddl[0].contains("\"lo\" numeric, \"__shoal_count\" bigint NOT NULL"));
    // count(DISTINCT) comes with a values table: each group's distinct values and their rows.
    let values = "\"app\".\"St_values_1\"";
    assert_eq!(
        ddl[2],
        format!(
            "CREATE TABLE {values} AS SELECT customer_id AS \"__shoal_k1\", note AS \"__shoal_value\", \
             count(*)::bigint AS \"__shoal_count\" FROM \"orders\" AS \"orders\" WHERE ((note) IS NOT NULL) \
             GROUP BY 1, 2 WITH NO DATA"
        )
    );
    let stmts = generate_all(&p);
    let s = &stmts[0];
    for part in [
        // The distinct count changes by the values that appear minus those that vanish, told
        // by the values table's counts before the refresh.
        "\"__shoal_dv1\" AS (SELECT \"__shoal_k1\", \"__shoal_x1\", sum(\"__shoal_delta\")::bigint AS \"__shoal_dc\", \
         hash_record_extended(ROW(\"__shoal_k1\", \"__shoal_x1\"), 0) AS \"__shoal_vrid\" FROM \"__shoal_d\" \
         WHERE \"__shoal_x1\" IS NOT NULL GROUP BY \"__shoal_k1\", \"__shoal_x1\" HAVING sum(\"__shoal_delta\") <> 0)",
        "sum(CASE WHEN \"__shoal_v\".\"__shoal_count\" IS NULL THEN 1 WHEN \"__shoal_v\".\"__shoal_count\" + \
         \"__shoal_dv1\".\"__shoal_dc\" <= 0 THEN -1 ELSE 0 END)::bigint AS \"__shoal_dd1\"",
        "COALESCE(\"__shoal_o1\", 0) + COALESCE(\"__shoal_dd1\", 0) AS \"__shoal_n1\"",
        // The other DISTINCT aggregates flag their group when a non-NULL value came or went,
        "count(\"__shoal_x2\") AS \"__shoal_touch2\"",
        "(COALESCE(\"__shoal_ocount\", 0) + \"__shoal_dcount\" > 0 AND (\"__shoal_touch2\" > 0 OR \
         \"__shoal_touch3\" > 0 OR (\"__shoal_del4\" IS NOT NULL",
        // and are recomputed from the sources with the extremes.
        "\"__shoal_r\" AS (SELECT customer_id AS \"__shoal_k1\", hash_record_extended(ROW(customer_id), 0) \
         AS \"__shoal_rid\", sum(DISTINCT amount) AS \"__shoal_m2\", \
         avg(DISTINCT amount) AS \"__shoal_m3\", min(amount) AS \"__shoal_m4\" FROM \"orders\" AS \"orders\" WHERE",
        "\"notes\" = \"__shoal_s\".\"__shoal_n1\"",
        "\"s\" = CASE WHEN \"__shoal_s\".\"__shoal_ncount\" <= 0 THEN NULL WHEN",
    ] {
        assert!(s.contains(part), "missing {part}\nin {s}");
    }
    // Then the values table takes the per-(group, value) deltas.
    for part in [
        format!("MERGE INTO {values} AS \"__shoal_v\" USING (SELECT \"__shoal_k1\", \"__shoal_x1\""),
        "WHEN MATCHED AND \"__shoal_v\".\"__shoal_count\" + \"__shoal_s\".\"__shoal_dc\" <= 0 THEN DELETE".into(),
        "WHEN NOT MATCHED AND \"__shoal_s\".\"__shoal_dc\" > 0 THEN INSERT (\"__shoal_k1\", \"__shoal_value\", \
         \"__shoal_count\") VALUES (\"__shoal_s\".\"__shoal_k1\", \"__shoal_s\".\"__shoal_x1\", \"__shoal_s\".\"__shoal_dc\")".into(),
    ] {
        assert!(stmts[1].contains(&part), "missing {part}\nin {}", stmts[1]);
    }
    // Without GROUP BY too; and in HAVING.
    generate_all(&plan("SELECT count(DISTINCT qty) AS n FROM items"));
    let p = plan("SELECT order_id FROM items GROUP BY order_id HAVING count(DISTINCT qty) > 1");
    assert_eq!(
        p.differential()
            .unwrap()
            .grouping
            .as_ref()
            .unwrap()
            .having
            .as_deref(),
        Some("__shoal_t.__shoal_agg_1 > 1")
    );
    assert!(probe_sql(&p).contains("count(DISTINCT qty) AS \"__shoal_agg_1\""));
}

#[test]
fn filter_clauses_fold_into_the_aggregates_argument() {
    let p = plan(
        "SELECT customer_id, count(*) FILTER (WHERE amount > 10) AS big, \
         sum(amount) FILTER (WHERE note LIKE 'n%') AS s, max(amount) FILTER (WHERE note = 'n1') AS hi, \
         count(DISTINCT note) FILTER (WHERE amount IS NOT NULL) AS notes \
         FROM orders GROUP BY customer_id HAVING avg(amount) FILTER (WHERE amount > 0) > 5",
    );
    let aggs = aggregates_of(&p);
    assert_eq!(
        aggs,
        [
            (AggFunc::Count, Some("CASE WHEN amount > 10 THEN 1 END")),
            (
                AggFunc::Sum,
                Some("CASE WHEN note LIKE 'n%' THEN amount END")
            ),
            (AggFunc::Max, Some("CASE WHEN note = 'n1' THEN amount END")),
            (
                AggFunc::CountDistinct,
                Some("CASE WHEN amount IS NOT NULL THEN note END")
            ),
            (AggFunc::Avg, Some("CASE WHEN amount > 0 THEN amount END")),
        ]
    );
    // The output columns keep the query's own text for full refreshes.
    assert_eq!(p.columns[1].expr, "count(*) FILTER (WHERE amount > 10)");
    let s = &generate_all(&p)[0];
    assert!(s.contains(
        "SELECT customer_id AS \"__shoal_k1\", CASE WHEN amount > 10 THEN 1 END AS \"__shoal_x1\", \
         CASE WHEN note LIKE 'n%' THEN amount END AS \"__shoal_x2\""
    ));
    assert!(s.contains("max(CASE WHEN note = 'n1' THEN amount END) AS \"__shoal_m3\""));
    assert!(
        probe_sql(&p).contains("avg(CASE WHEN amount > 0 THEN amount END) AS \"__shoal_agg_5\"")
    );
}

#[test]
fn outer_joins_add_the_unmatched_rows_of_their_preserved_sides() {
    let p = plan(
        "SELECT o.id, i.qty FROM orders o LEFT JOIN items i ON i.order_id = o.id WHERE o.id > 0",
    );
    let d = p.differential().unwrap();
    assert_eq!(
        d.from,
        "__shoal_src_1_ LEFT JOIN __shoal_src_2_ ON i.order_id = o.id"
    );
    assert_eq!(d.outer.as_ref().unwrap().condition, "i.order_id = o.id");
    let s = &generate_all(&p)[0];
    // Each delta is read out once, into a CTE every term shares.
    assert!(s.contains(
        "WITH \"__shoal_d\" AS (WITH \"__shoal_old1\" AS MATERIALIZED (SELECT * FROM (SELECT * FROM \
         shoal_stream.del_orders) AS \"__shoal_r\"), \"__shoal_new1\" AS MATERIALIZED (SELECT * FROM \
         shoal_stream.ins_orders AS \"__shoal_r\"), \"__shoal_old2\""
    ));
    let del_items = "(SELECT \"__shoal_m\".*, -1 AS \"__shoal_sign2\" FROM \"__shoal_old2\" AS \
                     \"__shoal_m\" UNION ALL SELECT \"__shoal_p\".*, 1 AS \"__shoal_sign2\" FROM \
                     \"__shoal_new2\" AS \"__shoal_p\")";
    for part in [
        // The matched rows: the inner join's three terms.
        "FROM \"orders\" AS \"o\" JOIN (SELECT".to_string(),
        // Orders a changed item matches: unmatched now minus unmatched before.
        format!(
            "SELECT o.id AS \"__shoal_k1\", i.qty AS \"__shoal_k2\", (CASE WHEN \"__shoal_matches\" = 0 \
             THEN 1 ELSE 0 END) - (CASE WHEN \"__shoal_matches\" - \"__shoal_dmatches\" = 0 THEN 1 \
             ELSE 0 END) AS \"__shoal_delta\" FROM \"orders\" AS \"o\" LEFT JOIN \"items\" AS \"i\" ON false \
             CROSS JOIN LATERAL (SELECT count(*) AS \"__shoal_matches\" FROM \"items\" AS \"i\" \
             WHERE (i.order_id = o.id)) AS \"__shoal_mm\" CROSS JOIN LATERAL (SELECT \
             coalesce(sum(\"__shoal_sign2\"), 0) AS \"__shoal_dmatches\" FROM {del_items} AS \"i\" \
             WHERE (i.order_id = o.id)) AS \"__shoal_dd\" WHERE (o.id > 0) AND (EXISTS (SELECT 1 FROM \
             {del_items} AS \"i\" WHERE (i.order_id = o.id)))"
        ),
        // Changed orders, unmatched before the window's item changes.
        "\"__shoal_sign1\" * (CASE WHEN \"__shoal_matches\" - \"__shoal_dmatches\" = 0 THEN 1 ELSE 0 END) \
         AS \"__shoal_delta\" FROM (SELECT"
            .to_string(),
    ] {
        assert!(s.contains(&part), "missing {part}\nin {s}");
    }
    // Only the orders changed: no term for matches that come and go.
    let mut one = HashMap::new();
    one.insert(
        SourceRef::new(None, "orders"),
        DeltaRelations {
            deleted_sql: "d".into(),
            inserted_sql: "i".into(),
        },
    );
    let s = &differential_refresh_sql(&p, &table(), &one).unwrap()[1];
    // The inner and the unmatched rows' terms share the orders' delta, read out once.
    assert!(s.contains(
        "WITH \"__shoal_d\" AS (WITH \"__shoal_old1\" AS MATERIALIZED (SELECT * FROM d AS \"__shoal_r\"), \
         \"__shoal_new1\" AS MATERIALIZED (SELECT * FROM i AS \"__shoal_r\") SELECT"
    ));
    assert!(
        s.contains(
            "i.qty AS \"__shoal_k2\", \"__shoal_sign1\" AS \"__shoal_delta\" FROM (SELECT \"__shoal_m\".*, \
             -1 AS \"__shoal_sign1\" FROM \"__shoal_old1\" AS \"__shoal_m\" UNION ALL SELECT \
             \"__shoal_p\".*, 1 AS \"__shoal_sign1\" FROM \"__shoal_new1\" AS \"__shoal_p\") AS \"o\" LEFT JOIN \
             \"items\" AS \"i\" ON false WHERE (o.id > 0) AND (NOT EXISTS (SELECT 1 FROM \"items\" \
             AS \"i\" WHERE (i.order_id = o.id)))"
        ),
        "{s}"
    );
    assert!(!s.contains("__shoal_matches"));

    // RIGHT keeps the right side's rows, FULL both.
    let p = plan("SELECT p.name FROM items i RIGHT JOIN products p ON p.id = i.product_id");
    let s = &generate_all(&p)[0];
    assert!(s.contains("FROM \"products\" AS \"p\" LEFT JOIN \"items\" AS \"i\" ON false"));
    let p = plan("SELECT p.name FROM items i FULL JOIN products p ON p.id = i.product_id");
    let s = &generate_all(&p)[0];
    assert!(s.contains("FROM \"products\" AS \"p\" LEFT JOIN \"items\" AS \"i\" ON false"));
    assert!(s.contains("FROM \"items\" AS \"i\" LEFT JOIN \"products\" AS \"p\" ON false"));
}

#[test]
fn union_all_sums_its_branches_deltas() {
    let p = plan(
        "SELECT o.id, o.note FROM orders o WHERE o.amount > 1 \
         UNION ALL SELECT i.order_id, p.name FROM items i JOIN products p ON p.id = i.product_id",
    );
    let d = p.differential().unwrap();
    let u = d.union.as_ref().unwrap();
    assert!(u.all && !d.distinct);
    assert_eq!(u.branches.len(), 2);
    assert_eq!(u.branches[1].exprs, ["i.order_id", "p.name"]);
    assert_eq!(
        u.bag_sql(),
        "(SELECT o.id, o.note FROM orders o WHERE o.amount > 1) UNION ALL \
         (SELECT i.order_id, p.name FROM items i JOIN products p ON p.id = i.product_id)"
    );
    assert_eq!(
        probe_sql(&p),
        format!(
            "SELECT * FROM ({}) AS \"__shoal_q\"(\"id\", \"note\") LIMIT 0",
            p.query
        )
    );
    assert!(full_refresh_sql(&p, &table())[1].starts_with(
        "INSERT INTO \"app\".\"St\" (\"id\", \"note\", \"__shoal_count\") SELECT \"__shoal_q\".\"id\", \
         \"__shoal_q\".\"note\", count(*) FROM ((SELECT o.id, o.note FROM orders o WHERE o.amount > 1) \
         UNION ALL (SELECT"
    ));
    let s = &generate_all(&p)[0];
    // The storage's own columns first, typing every branch's values as the stored rows are
    // (an integer in one branch, a numeric in another, hash and match alike); then one term
    // for the first branch, three for the join of the second, under one sum.
    assert!(s.starts_with(
        "WITH \"__shoal_d\" AS (SELECT \"__shoal_t\".\"id\" AS \"__shoal_k1\", \"__shoal_t\".\"note\" AS \
         \"__shoal_k2\", 0 AS \"__shoal_delta\" FROM \"app\".\"St\" AS \"__shoal_t\" WHERE false UNION ALL \
         SELECT o.id AS \"__shoal_k1\", o.note AS \"__shoal_k2\", \
         \"__shoal_sign1\" AS \"__shoal_delta\" FROM (SELECT"
    ));
    assert_eq!(
        s.matches("SELECT i.order_id AS \"__shoal_k1\", p.name AS \"__shoal_k2\"")
            .count(),
        3
    );
    // Only the first branch's source changed.
    let mut one = HashMap::new();
    one.insert(
        SourceRef::new(None, "orders"),
        DeltaRelations {
            deleted_sql: "d".into(),
            inserted_sql: "i".into(),
        },
    );
    let s = &differential_refresh_sql(&p, &table(), &one).unwrap()[1];
    assert!(!s.contains("i.order_id"));

    // UNION: the same bag, shown once per row.
    let p = plan("SELECT note FROM orders UNION SELECT name FROM products");
    assert!(p.differential().unwrap().distinct);
    assert!(!contents_sql(&p, &table()).contains("generate_series"));
    assert!(full_refresh_sql(&p, &table())[1]
        .contains("FROM ((SELECT note FROM orders) UNION ALL (SELECT name FROM products))"));
    generate_all(&p);
}

#[test]
fn bool_aggregates_keep_counts_of_their_deciding_inputs() {
    let p = plan(
        "SELECT customer_id, bool_and(amount > 10) AS all_big, every(note <> 'x') AS no_x, \
         bool_or(note = 'n1') FILTER (WHERE amount IS NOT NULL) AS any_n1 \
         FROM orders GROUP BY customer_id",
    );
    let g = p.differential().unwrap().grouping.as_ref().unwrap();
    let funcs: Vec<AggFunc> = g.aggregates.iter().map(|a| a.func).collect();
    assert_eq!(funcs, [AggFunc::BoolAnd, AggFunc::BoolAnd, AggFunc::BoolOr]);
    let ddl = storage_ddl(&p, &table(), &types_for(&p)).unwrap();
    assert!(
        ddl[0].contains(
            "\"__shoal_nn_1\" bigint NOT NULL DEFAULT 0, \"__shoal_hit_1\" bigint NOT NULL DEFAULT 0"
        ),
        "{}",
        ddl[0]
    );
    let full = &full_refresh_sql(&p, &table())[1];
    assert!(
        full.contains("count(*) FILTER (WHERE (amount > 10) IS FALSE)"),
        "{full}"
    );
    assert!(full.contains(
        "count(*) FILTER (WHERE (CASE WHEN amount IS NOT NULL THEN note = 'n1' END) IS TRUE)"
    ));
    let s = &generate_all(&p)[0];
    for part in [
        // per group: the change of the non-NULL and of the deciding inputs
        "sum(CASE WHEN \"__shoal_x1\" IS FALSE THEN \"__shoal_delta\" ELSE 0 END)::bigint AS \"__shoal_dhit1\"",
        "sum(CASE WHEN \"__shoal_x3\" IS TRUE THEN \"__shoal_delta\" ELSE 0 END)::bigint AS \"__shoal_dhit3\"",
        // the value from the counts: NULL without input
        "CASE WHEN (COALESCE(\"__shoal_onn1\", 0) + \"__shoal_dnn1\") = 0 THEN NULL ELSE \
         (COALESCE(\"__shoal_ohit1\", 0) + \"__shoal_dhit1\") = 0 END AS \"__shoal_n1\"",
        "(COALESCE(\"__shoal_ohit3\", 0) + \"__shoal_dhit3\") > 0 END AS \"__shoal_n3\"",
        "\"__shoal_hit_3\" = \"__shoal_s\".\"__shoal_nhit3\"",
    ] {
        assert!(s.contains(part), "missing {part}\nin {s}");
    }
    // No rescan: the counts are exact.
    assert!(!s.contains("\"__shoal_r\" AS"), "{s}");
    generate_all(&plan("SELECT bool_or(qty > 3) AS any FROM items"));
}

#[test]
fn string_and_array_aggregates_are_recomputed_as_written_for_changed_groups() {
    let p = plan(
        "SELECT customer_id, string_agg(note, ', ' ORDER BY note DESC) AS notes, \
         array_agg(DISTINCT amount) FILTER (WHERE amount > 0) AS amounts, count(*) AS n \
         FROM orders GROUP BY customer_id HAVING array_agg(id ORDER BY id) <> '{}'",
    );
    let aggs = aggregates_of(&p);
    // The whole call is kept: the FILTER cannot fold into array_agg, which keeps NULLs.
    assert_eq!(
        aggs,
        [
            (
                AggFunc::StringAgg,
                Some("string_agg(note, ', ' ORDER BY note DESC)")
            ),
            (
                AggFunc::ArrayAgg,
                Some("array_agg(DISTINCT amount) FILTER (WHERE amount > 0)")
            ),
            (AggFunc::CountStar, None),
            (AggFunc::ArrayAgg, Some("array_agg(id ORDER BY id)")),
        ]
    );
    let s = &generate_all(&p)[0];
    for part in [
        // Any row of a group coming or going flags it.
        "count(*) AS \"__shoal_touch1\"",
        "count(*) AS \"__shoal_touch2\"",
        "(\"__shoal_touch1\" > 0 OR \"__shoal_touch2\" > 0 OR \"__shoal_touch4\" > 0)",
        // and the flagged groups are recomputed with the calls as written
        "string_agg(note, ', ' ORDER BY note DESC) AS \"__shoal_m1\", array_agg(DISTINCT amount) \
         FILTER (WHERE amount > 0) AS \"__shoal_m2\", array_agg(id ORDER BY id) AS \"__shoal_m4\"",
        "\"notes\" = CASE WHEN \"__shoal_s\".\"__shoal_ncount\" <= 0 THEN NULL WHEN",
    ] {
        assert!(s.contains(part), "missing {part}\nin {s}");
    }
    // Nothing per row for them in the delta.
    assert!(!s.contains("__shoal_x1"), "{s}");
    assert!(probe_sql(&p).contains("array_agg(id ORDER BY id) AS \"__shoal_agg_4\""));
    generate_all(&plan(
        "SELECT string_agg(p.name, ',') AS names FROM items i JOIN products p ON p.id = i.product_id",
    ));
    for (sql, refusal) in [
        (
            "SELECT customer_id, string_agg(note, ',' ORDER BY random()) AS n FROM orders GROUP BY customer_id",
            "volatile functions are not supported in differential mode (at `random()`)",
        ),
        (
            "SELECT customer_id, array_agg(id) FILTER (WHERE now() > '2020-01-01') AS n FROM orders GROUP BY customer_id",
            "(at `now()`)",
        ),
        (
            "SELECT customer_id, array_agg(count(*)) AS n FROM orders GROUP BY customer_id",
            "",
        ),
    ] {
        match crate::analyze(sql) {
            Ok(p) => {
                let crate::Maintenance::FullOnly(u) = &p.maintenance else {
                    panic!("{sql} should be refused");
                };
                assert!(u.to_string().contains(refusal), "{sql}: {u}");
            }
            Err(e) => assert!(e.to_string().contains("cannot be nested"), "{sql}: {e}"),
        }
    }
}

#[test]
fn window_functions_are_recomputed_for_the_touched_partitions() {
    let p = plan(
        "SELECT o.id, o.customer_id, row_number() OVER w AS rn, \
         sum(o.amount) OVER (PARTITION BY o.customer_id) AS total, \
         lag(o.amount) OVER (w) AS prev FROM orders o WHERE o.amount > 0 \
         WINDOW w AS (PARTITION BY customer_id ORDER BY o.amount, o.id)",
    );
    let d = p.differential().unwrap();
    let w = d.window.as_ref().unwrap();
    assert_eq!(w.partition, ["customer_id"]);
    assert_eq!(
        w.clause.as_deref(),
        Some("WINDOW w AS (PARTITION BY customer_id ORDER BY o.amount, o.id)")
    );
    // Stored as a bag, with the partition key hidden and hashed for the lookup.
    assert_eq!(
        typed_columns(&p),
        ["id", "customer_id", "rn", "total", "prev", "__shoal_part_1"]
    );
    let ddl = storage_ddl(&p, &table(), &types_for(&p)).unwrap();
    assert!(ddl[0].contains(
        "\"__shoal_row_id\" bigint GENERATED ALWAYS AS (hash_record_extended(ROW(\"__shoal_part_1\"), 0)) STORED"
    ));
    assert!(ddl[1].starts_with("CREATE INDEX"));
    assert!(contents_sql(&p, &table()).contains("generate_series"));
    assert_eq!(
        full_refresh_sql(&p, &table())[1],
        "INSERT INTO \"app\".\"St\" (\"id\", \"customer_id\", \"rn\", \"total\", \"prev\", \"__shoal_part_1\", \
         \"__shoal_count\") SELECT \"__shoal_q\".\"id\", \"__shoal_q\".\"customer_id\", \"__shoal_q\".\"rn\", \
         \"__shoal_q\".\"total\", \"__shoal_q\".\"prev\", \"__shoal_q\".\"__shoal_part_1\", count(*) FROM \
         (SELECT o.id AS \"id\", o.customer_id AS \"customer_id\", row_number() OVER w AS \"rn\", \
         sum(o.amount) OVER (PARTITION BY o.customer_id) AS \"total\", lag(o.amount) OVER (w) AS \"prev\", \
         customer_id AS \"__shoal_part_1\" FROM \"orders\" AS \"o\" WHERE (o.amount > 0) \
         WINDOW w AS (PARTITION BY customer_id ORDER BY o.amount, o.id)) AS \"__shoal_q\" GROUP BY 1, 2, 3, 4, 5, 6"
    );
    let s = &generate_all(&p)[0];
    for part in [
        // the partition keys the delta's rows fall in
        "WITH \"__shoal_d\" AS (SELECT customer_id AS \"__shoal_k1\", \"__shoal_sign1\" AS \"__shoal_delta\" FROM",
        "\"__shoal_parts\" AS (SELECT DISTINCT \"__shoal_k1\", hash_record_extended(ROW(\"__shoal_k1\"), 0) \
         AS \"__shoal_rid\" FROM \"__shoal_d\")",
        // their stored rows deleted
        "\"__shoal_x\" AS (DELETE FROM \"app\".\"St\" AS \"__shoal_t\" USING \"__shoal_parts\" WHERE \
         \"__shoal_t\".\"__shoal_row_id\" = \"__shoal_parts\".\"__shoal_rid\" AND \
         \"__shoal_t\".\"__shoal_part_1\" IS NOT DISTINCT FROM \"__shoal_parts\".\"__shoal_k1\")",
        // and recomputed: plain keys by an array the workers get and the exact semi-join
        "WHERE (o.amount > 0) AND ((customer_id) = ANY (ARRAY(SELECT \"__shoal_parts\".\"__shoal_k1\" FROM \
         \"__shoal_parts\" WHERE \"__shoal_parts\".\"__shoal_k1\" IS NOT NULL))) AND ((customer_id) IN \
         (SELECT \"__shoal_parts\".\"__shoal_k1\" FROM \"__shoal_parts\" WHERE \"__shoal_parts\".\"__shoal_k1\" \
         IS NOT NULL))",
        // NULL keys null-safely, only when there are some
        "(SELECT bool_or(NOT (\"__shoal_parts\".\"__shoal_k1\" IS NOT NULL)) FROM \"__shoal_parts\")) \
         WINDOW w AS (PARTITION BY customer_id ORDER BY o.amount, o.id))",
    ] {
        assert!(s.contains(part), "missing {part}\nin {s}");
    }
    // Joins and outer joins: the partitions of every joined row a change reaches.
    generate_all(&plan(
        "SELECT p.name, i.qty, rank() OVER (PARTITION BY p.name, i.order_id ORDER BY i.qty) AS r \
         FROM items i LEFT JOIN products p ON p.id = i.product_id",
    ));
}

#[test]
fn window_functions_differential_mode_cannot_maintain_are_refused_by_name() {
    for (sql, refusal) in [
        (
            "SELECT id, row_number() OVER (ORDER BY id) AS rn FROM orders",
            "window functions without PARTITION BY are not supported in differential mode \
             (at `row_number() OVER (ORDER BY id)`); the whole result is one partition",
        ),
        (
            "SELECT id, rank() OVER (PARTITION BY note ORDER BY id) AS r, \
             sum(amount) OVER (PARTITION BY customer_id) AS s FROM orders",
            "window functions with different PARTITION BY are not supported in differential mode \
             (at `sum(amount) OVER (PARTITION BY customer_id)`)",
        ),
        (
            "SELECT id, 1 + row_number() OVER (PARTITION BY note) AS r FROM orders",
            "expressions over window functions",
        ),
        (
            "SELECT customer_id, count(*) AS n, rank() OVER (PARTITION BY customer_id) AS r \
             FROM orders GROUP BY customer_id",
            "window functions together with GROUP BY, aggregates or DISTINCT",
        ),
        (
            "SELECT id, sum(amount) OVER (PARTITION BY random() > 0.5) AS s FROM orders",
            "volatile functions",
        ),
        (
            "SELECT id, row_number() OVER (PARTITION BY note) AS r FROM orders \
             UNION ALL SELECT id, 1 FROM orders",
            "window functions in UNION branches",
        ),
    ] {
        let u = unsupported(sql);
        assert!(u.contains(refusal), "{sql}:\n{u}");
    }
}
