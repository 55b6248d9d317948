//! Unit tests of subqueries in FROM, inlined CTEs and semi-joins, with their generated SQL.

use crate::tests::{deltas_for, generate_all, plan, table, unsupported};
use crate::{differential_refresh_sql, Source, SourceRef, Subquery};

#[test]
fn a_subquery_in_from_maps_its_relations_delta_through_its_select() {
    let p =
        plan("SELECT b.id, b.a2 FROM (SELECT id, amount * 2 AS a2 FROM orders WHERE amount > 1) b");
    let d = p.differential().unwrap();
    assert_eq!(
        d.sources,
        [Source {
            relation: SourceRef::new(None, "orders"),
            alias: Some("b".into()),
            subquery: Some(Subquery {
                select: "id AS \"id\", amount * 2 AS \"a2\"".into(),
                inner_name: "orders".into(),
                filter: Some("amount > 1".into()),
            }),
        }]
    );
    let stmts = generate_all(&p);
    // The delta, with its sign, goes through the subquery's own SELECT and WHERE.
    assert!(stmts[0].contains(
        "FROM (SELECT id AS \"id\", amount * 2 AS \"a2\", \"__shoal_sign1\" FROM (SELECT \
         \"__shoal_m\".*, -1 AS \"__shoal_sign1\" FROM (SELECT * FROM shoal_stream.del_orders) \
         AS \"__shoal_m\" UNION ALL SELECT \"__shoal_p\".*, 1 AS \"__shoal_sign1\" FROM \
         shoal_stream.ins_orders AS \"__shoal_p\") AS \"orders\" WHERE amount > 1) AS \"b\""
    ));
}

#[test]
fn column_aliases_of_a_subquery_rename_its_columns() {
    let p = plan(
        "SELECT s.k, count(*) AS n FROM (SELECT o.customer_id, o.note FROM orders o) AS s (k) \
         GROUP BY s.k",
    );
    let q = p.differential().unwrap().sources[0]
        .subquery
        .clone()
        .unwrap();
    assert_eq!(q.select, "o.customer_id AS \"k\", o.note AS \"note\"");
    assert_eq!(q.inner_name, "o");
}

#[test]
fn a_cte_read_twice_is_two_subqueries() {
    let p = plan(
        "WITH big AS (SELECT id, customer_id FROM orders WHERE amount > 30) \
         SELECT x.id, y.id AS other FROM big x JOIN big y ON y.customer_id = x.customer_id",
    );
    let d = p.differential().unwrap();
    assert_eq!(d.sources.len(), 2);
    assert_eq!(
        d.from,
        "__shoal_src_1_ JOIN __shoal_src_2_ ON y.customer_id = x.customer_id"
    );
    for (s, alias) in d.sources.iter().zip(["x", "y"]) {
        assert_eq!(s.relation, SourceRef::new(None, "orders"));
        assert_eq!(s.alias.as_deref(), Some(alias));
        assert_eq!(
            s.subquery.as_ref().unwrap().filter.as_deref(),
            Some("amount > 30")
        );
    }
    // The relations read are the CTE's, not the CTE's name.
    assert_eq!(p.relations, [SourceRef::new(None, "orders")]);
    generate_all(&p);
}

#[test]
fn exists_is_tested_in_the_old_state_for_changed_rows_and_flips_for_reached_ones() {
    let p = plan(
        "SELECT o.id FROM orders o WHERE o.amount > 1 AND \
         EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)",
    );
    let d = p.differential().unwrap();
    assert_eq!(d.filter.as_deref(), Some("(o.amount > 1)"));
    assert_eq!(d.semi.len(), 1);
    assert_eq!(d.semi[0].condition.as_deref(), Some("i.order_id = o.id"));
    assert!(!d.semi[0].anti);
    let stmts = generate_all(&p);
    let new_delta = "(SELECT \"__shoal_m\".*, -1 AS \"__shoal_sign2\" FROM \"__shoal_old2\" AS \
                     \"__shoal_m\" UNION ALL SELECT \"__shoal_p\".*, 1 AS \"__shoal_sign2\" FROM \
                     \"__shoal_new2\" AS \"__shoal_p\") AS \"i\"";
    // Changed orders rows: matches now minus the delta's matches, the old state's count.
    assert!(stmts[0].contains(&format!(
        "WHERE ((o.amount > 1)) AND ((SELECT count(*) FROM \"items\" AS \"i\" WHERE \
         (i.order_id = o.id)) - (SELECT coalesce(sum(\"__shoal_sign2\"), 0) FROM {new_delta} \
         WHERE (i.order_id = o.id)) > 0)"
    )));
    // Orders rows a changed item reaches: signed by the change of their verdict.
    assert!(stmts[0].contains(
        "(CASE WHEN \"__shoal_n1\" > 0 THEN 1 ELSE 0 END) - (CASE WHEN \"__shoal_n1\" - \
         \"__shoal_d1\" > 0 THEN 1 ELSE 0 END) AS \"__shoal_delta\" FROM \"orders\" AS \"o\", \
         LATERAL (SELECT (SELECT count(*) FROM \"items\" AS \"i\" WHERE (i.order_id = o.id)) AS \
         \"__shoal_n1\""
    ));
    assert!(stmts[0].contains(&format!(
        "AND (EXISTS (SELECT 1 FROM {new_delta} WHERE (i.order_id = o.id)))"
    )));
}

#[test]
fn an_unchanged_semi_join_stays_the_plain_condition() {
    let p = plan(
        "SELECT o.id FROM orders o WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)",
    );
    let d = p.differential().unwrap();
    assert!(d.semi[0].anti);
    let mut deltas = deltas_for(&p);
    deltas.retain(|r, _| r.name == "orders");
    let stmts = differential_refresh_sql(&p, &table(), &deltas).unwrap();
    assert!(stmts[1].contains(
        "AS \"o\" WHERE (NOT EXISTS (SELECT 1 FROM \"items\" AS \"i\" WHERE (i.order_id = o.id)))"
    ));
    assert!(!stmts[1].contains("LATERAL"));
}

#[test]
fn in_compares_outside_the_subquery_scope() {
    let p =
        plan("SELECT o.id FROM orders o WHERE customer_id IN (SELECT id FROM customers WHERE vip)");
    let s = &p.differential().unwrap().semi[0];
    assert_eq!(s.key, Some(("customer_id".into(), "id".into())));
    let stmts = generate_all(&p);
    // `customer_id` is compared where it means the orders column, even if customers had one.
    assert!(stmts[0].contains(
        "(SELECT count(*) FROM (SELECT id AS \"__shoal_v\" FROM \"customers\" AS \"customers\" \
         WHERE (vip)) AS \"__shoal_q\" WHERE \"__shoal_q\".\"__shoal_v\" = (customer_id))"
    ));
}

#[test]
fn semi_joins_through_ctes_and_joins_generate_valid_sql() {
    for sql in [
        "WITH few AS (SELECT order_id FROM items WHERE qty < 3) SELECT DISTINCT o.customer_id \
         FROM orders o WHERE EXISTS (SELECT 1 FROM few f WHERE f.order_id = o.id)",
        "SELECT o.customer_id, count(*) AS n, min(i.qty) AS lo FROM orders o JOIN items i \
         ON i.order_id = o.id WHERE NOT EXISTS (SELECT 1 FROM items j WHERE j.order_id = o.id \
         AND j.qty > i.qty) AND o.id IN (SELECT order_id FROM notes) GROUP BY o.customer_id",
        "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.id = a.id) UNION ALL \
         SELECT id FROM c",
    ] {
        let p = plan(sql);
        assert!(p.differential().is_some(), "{sql}");
        generate_all(&p);
    }
    assert!(unsupported(
        "SELECT id FROM orders o WHERE EXISTS (SELECT count(*) FROM items i WHERE i.order_id = o.id)"
    )
    .contains("aggregates in a subquery"));
}
