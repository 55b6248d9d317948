//! Unit tests of analysis and SQL generation; every generated statement is parsed back with
//! PostgreSQL's parser to prove it is valid SQL. The integration test checks what it computes.

use std::collections::HashMap;

use crate::{
    analyze, choose_mode, contents_sql, differential_refresh_sql, full_refresh_sql, probe_sql,
    storage_ddl, typed_columns, view_ddl, AggFunc, AnalyzeError, ColumnRole, ColumnType,
    DeltaRelations, GenerateError, Maintenance, Mode, QueryPlan, SourceRef,
};
use shoal_sql::QualifiedName;

pub(crate) fn plan(sql: &str) -> QueryPlan {
    analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) fn table() -> QualifiedName {
    QualifiedName::new("app", "St")
}

/// Parses SQL with PostgreSQL's parser; panics with the statement when it is not valid.
pub(crate) fn assert_parses(sql: &str) {
    if let Err(e) = pg_query::parse(sql, 0) {
        panic!("generated SQL does not parse: {e}\n{sql}");
    }
}

pub(crate) fn deltas_for(plan: &QueryPlan) -> HashMap<SourceRef, DeltaRelations> {
    plan.relations
        .iter()
        .map(|r| {
            (
                r.clone(),
                DeltaRelations {
                    deleted_sql: format!("(SELECT * FROM shoal_stream.del_{})", r.name),
                    inserted_sql: format!("shoal_stream.ins_{}", r.name),
                },
            )
        })
        .collect()
}

pub(crate) fn types_for(plan: &QueryPlan) -> Vec<ColumnType> {
    typed_columns(plan)
        .into_iter()
        .map(|n| ColumnType::new(n, "numeric"))
        .collect()
}

/// Generates every statement for a plan and checks each parses; returns the differential ones.
pub(crate) fn generate_all(plan: &QueryPlan) -> Vec<String> {
    assert_parses(&probe_sql(plan));
    for s in storage_ddl(plan, &table(), &types_for(plan)).unwrap() {
        assert_parses(&s);
    }
    for s in full_refresh_sql(plan, &table()) {
        assert_parses(&s);
    }
    assert_parses(&contents_sql(plan, &table()));
    assert_parses(&view_ddl(
        plan,
        &QualifiedName::new("my app", "V \"1\""),
        &table(),
    ));
    let stmts = differential_refresh_sql(plan, &table(), &deltas_for(plan)).unwrap();
    for s in &stmts {
        assert_parses(s);
    }
    // The refresh proper, then a merge into each values table.
    assert_eq!(stmts.len(), 2 + crate::values_tables(plan, &table()).len());
    assert_eq!(stmts[0], "SET LOCAL jit = off");
    // The refresh proper, first in what is returned.
    stmts[1..].to_vec()
}

pub(crate) fn unsupported(sql: &str) -> String {
    let p = plan(sql);
    let Maintenance::FullOnly(u) = &p.maintenance else {
        panic!("{sql} should be refused in differential mode");
    };
    // Full refresh still works for it.
    for s in full_refresh_sql(&p, &table()) {
        assert_parses(&s);
    }
    u.to_string()
}

// ---------------------------------------------------------------- analysis of supported shapes

#[test]
fn projection_and_filter() {
    let p = plan(
        "SELECT o.id, o.amount * 2 AS double, upper(note), note::varchar(10), 1 + 1 \
         FROM public.orders AS o WHERE o.amount > 10 AND note LIKE 'x%'",
    );
    assert_eq!(
        p.column_names(),
        ["id", "double", "upper", "note", "?column?"]
    );
    let d = p.differential().unwrap();
    assert_eq!(d.sources.len(), 1);
    assert_eq!(
        d.sources[0].relation,
        SourceRef::new(Some("public"), "orders")
    );
    assert_eq!(d.sources[0].range_name(), "o");
    assert_eq!(
        d.filter.as_deref(),
        Some("o.amount > 10 AND note LIKE 'x%'")
    );
    assert!(d.grouping.is_none() && !d.distinct);
    assert!(p.columns.iter().all(|c| c.role == ColumnRole::Plain));
    assert_eq!(p.columns[1].expr, "o.amount * 2");
    assert_eq!(p.relations, [SourceRef::new(Some("public"), "orders")]);
    assert_eq!(p.functions, ["upper"]);
}

#[test]
fn column_names_follow_postgres() {
    let p = plan(
        "SELECT \"Mixed\".\"Col\", count(*), coalesce(a, 0), CASE WHEN a THEN 1 END, \
         a::int, 1::int AS one_int, ROW(a, b) FROM t AS \"Mixed\" GROUP BY 1, 3, 4, 5, 7",
    );
    assert_eq!(
        p.column_names(),
        ["Col", "count", "coalesce", "case", "a", "one_int", "row"]
    );
    // A constant cast takes the type's name.
    assert_eq!(plan("SELECT 1::int FROM t").column_names(), ["int4"]);
}

#[test]
fn joins_on_and_comma() {
    let p = plan(
        "SELECT o.id, i.qty, p.name FROM orders o JOIN items i ON i.order_id = o.id \
         INNER JOIN products p ON p.id = i.product_id",
    );
    let d = p.differential().unwrap();
    let names: Vec<&str> = d.sources.iter().map(|s| s.range_name()).collect();
    assert_eq!(names, ["o", "i", "p"]);
    assert_eq!(
        d.from,
        "__shoal_src_1_ JOIN __shoal_src_2_ ON i.order_id = o.id \
         JOIN __shoal_src_3_ ON p.id = i.product_id"
    );

    let p = plan("SELECT o.id, i.qty FROM orders o, items i WHERE i.order_id = o.id");
    let d = p.differential().unwrap();
    assert_eq!(d.sources.len(), 2);
    assert_eq!(d.from, "__shoal_src_1_, __shoal_src_2_");
    assert_eq!(d.filter.as_deref(), Some("i.order_id = o.id"));

    // Unaliased tables are referred to by name.
    let p = plan("SELECT orders.id FROM orders CROSS JOIN items");
    let d = p.differential().unwrap();
    assert_eq!(d.sources[0].range_name(), "orders");
}

#[test]
fn grouping_and_aggregates() {
    let p = plan(
        "SELECT customer_id, count(*) AS n, count(amount) AS na, sum(amount) AS s, \
         avg(amount) AS a, min(amount) AS lo, max(amount) AS hi FROM orders GROUP BY customer_id",
    );
    let g = p.differential().unwrap().grouping.clone().unwrap();
    assert_eq!(g.keys.len(), 1);
    assert_eq!(g.keys[0].expr, "customer_id");
    assert_eq!(g.keys[0].column, Some(0));
    let funcs: Vec<AggFunc> = g.aggregates.iter().map(|a| a.func).collect();
    assert_eq!(
        funcs,
        [
            AggFunc::CountStar,
            AggFunc::Count,
            AggFunc::Sum,
            AggFunc::Avg,
            AggFunc::Min,
            AggFunc::Max
        ]
    );
    assert_eq!(g.aggregates[0].arg, None);
    assert_eq!(g.aggregates[2].arg.as_deref(), Some("amount"));
    assert_eq!(p.columns[0].role, ColumnRole::Key(0));
    assert_eq!(p.columns[3].role, ColumnRole::Aggregate(2));
}

#[test]
fn group_keys_by_position_alias_qualification_and_hidden() {
    let p = plan("SELECT o.customer_id AS c, sum(amount) AS s FROM orders o GROUP BY 1");
    assert_eq!(
        p.differential().unwrap().grouping.as_ref().unwrap().keys[0].column,
        Some(0)
    );
    let p = plan("SELECT lower(note) AS l, count(*) AS n FROM orders GROUP BY l");
    assert_eq!(
        p.differential().unwrap().grouping.as_ref().unwrap().keys[0].expr,
        "lower(note)"
    );
    // Qualified in one place, not in the other: the same column.
    let p = plan("SELECT customer_id, count(*) AS n FROM orders o GROUP BY o.customer_id");
    assert_eq!(p.columns[0].role, ColumnRole::Key(0));
    // A key not shown is kept hidden, and the probe returns its type too.
    let p = plan("SELECT sum(amount) AS total FROM orders GROUP BY customer_id, note");
    let g = p.differential().unwrap().grouping.clone().unwrap();
    assert_eq!(g.keys.len(), 2);
    assert!(g.keys.iter().all(|k| k.column.is_none()));
    assert_eq!(
        typed_columns(&p),
        ["total", "__shoal_key_1", "__shoal_key_2"]
    );
    assert!(probe_sql(&p).contains("customer_id AS \"__shoal_key_1\""));
}

#[test]
fn global_aggregate_and_distinct() {
    let p = plan("SELECT count(*) AS n, max(qty) AS m FROM items");
    let g = p.differential().unwrap().grouping.clone().unwrap();
    assert!(g.keys.is_empty());
    let p = plan("SELECT DISTINCT customer_id FROM orders");
    assert!(p.differential().unwrap().distinct);
}

// --------------------------------------------------------------------------- refused shapes

#[test]
fn refusals_name_the_unsupported_part() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT id, row_number() OVER (ORDER BY id) AS r FROM orders",
            "window functions without PARTITION BY are not supported in differential mode (at `row_number() OVER (ORDER BY id)`)",
        ),
        (
            "SELECT o.id FROM orders o LEFT JOIN items i ON i.order_id = o.id JOIN p ON p.id = o.id",
            "outer joins (LEFT JOIN) with other joins or inside them are not supported in \
             differential mode (at `orders o LEFT JOIN items i ON i.order_id = o.id`); an outer \
             join of two tables (or subqueries over one), alone in FROM, written with ON",
        ),
        (
            "SELECT o.id FROM orders o, items i FULL JOIN p ON true",
            "outer joins (FULL JOIN) with other joins",
        ),
        (
            "SELECT id FROM orders o LEFT JOIN items i USING (id)",
            "outer joins (LEFT JOIN) with USING, NATURAL or an alias",
        ),
        (
            "SELECT id FROM orders WHERE customer_id NOT IN (SELECT id FROM customers)",
            "NOT IN (subquery) conditions are not supported in differential mode (at `NOT customer_id IN (SELECT id FROM customers)`); write NOT EXISTS",
        ),
        (
            "SELECT id FROM orders o WHERE o.id = 1 OR EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)",
            "subqueries are not supported in differential mode (at `EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)`)",
        ),
        (
            "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM items i JOIN notes n ON n.id = i.id WHERE i.order_id = o.id)",
            "joins and nested subqueries in a subquery are not supported",
        ),
        (
            "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id LIMIT 1)",
            "ORDER BY, LIMIT and OFFSET in a subquery",
        ),
        (
            "SELECT id FROM orders o WHERE (o.id, o.customer_id) IN (SELECT order_id, id FROM items)",
            "row comparisons with IN (subquery)",
        ),
        (
            "SELECT o.id, count(*) OVER (PARTITION BY o.customer_id) AS n FROM orders o \
             WHERE EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)",
            "EXISTS and IN subqueries together with window functions",
        ),
        (
            "SELECT o.id FROM orders o LEFT JOIN items i ON i.order_id = o.id \
             WHERE EXISTS (SELECT 1 FROM notes n WHERE n.id = o.id)",
            "EXISTS and IN subqueries together with outer joins",
        ),
        (
            "SELECT id, (SELECT max(id) FROM items) AS m FROM orders",
            "subqueries are not supported",
        ),
        (
            "SELECT x.n FROM (SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id) x",
            "GROUP BY and HAVING in a subquery are not supported in differential mode (at `(SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id) x`); a subquery may filter and project one table",
        ),
        ("SELECT x.id FROM (SELECT DISTINCT id FROM orders) x", "DISTINCT in a subquery"),
        ("SELECT x.id FROM (SELECT o.id FROM orders o JOIN items i ON i.order_id = o.id) x", "joins and nested subqueries in a subquery"),
        ("SELECT x.id FROM LATERAL (SELECT id FROM orders) x", "LATERAL subqueries"),
        (
            "WITH big AS (SELECT * FROM orders) SELECT id FROM big",
            "`*` in a subquery are not supported in differential mode (at `(SELECT * FROM orders) big`); list the columns",
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r",
            "recursive common table expressions are not supported in differential mode (at `WITH r AS (...)`)",
        ),
        ("SELECT id FROM a INTERSECT SELECT id FROM b", "INTERSECT and EXCEPT are not supported in differential mode (at `INTERSECT`)"),
        ("SELECT id FROM a EXCEPT SELECT id FROM b", "(at `EXCEPT`)"),
        ("SELECT id FROM a UNION SELECT id FROM b UNION ALL SELECT id FROM c", "UNION mixed with UNION ALL are not supported in differential mode (at `UNION"),
        ("SELECT id FROM a UNION ALL SELECT max(id) FROM b", "grouped or DISTINCT branches of UNION are not supported in differential mode (at `SELECT max(id) FROM b`)"),
        ("SELECT id FROM a UNION ALL SELECT id FROM b ORDER BY 1", "ORDER BY, LIMIT and locking clauses around set operations"),
        (
            "SELECT o.id, count(*) AS n FROM orders o GROUP BY o.id HAVING o.note <> ''",
            "HAVING conditions on columns that are neither GROUP BY keys nor aggregated are not \
             supported in differential mode (at `o.note`); write the column as in GROUP BY, or \
             filter rows with WHERE",
        ),
        (
            "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id \
             HAVING count(*) > (SELECT 1)",
            "subqueries are not supported in differential mode (at `(SELECT 1)`)",
        ),
        (
            "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id \
             HAVING json_agg(note)::text <> ''",
            "aggregate functions other than count, sum, avg, min, max, bool_and, bool_or, every, string_agg and array_agg",
        ),
        (
            "SELECT customer_id FROM orders GROUP BY customer_id HAVING count(*) > random()",
            "volatile functions are not supported in differential mode (at `random()`)",
        ),
        ("SELECT id FROM orders ORDER BY id DESC", "ORDER BY clauses are not supported in differential mode (at `ORDER BY id`)"),
        ("SELECT id FROM orders LIMIT 10", "LIMIT and OFFSET clauses are not supported in differential mode (at `LIMIT 10`)"),
        ("SELECT id FROM orders OFFSET 3", "(at `OFFSET 3`)"),
        ("SELECT id, now() AS t FROM orders", "volatile functions are not supported in differential mode (at `now()`)"),
        ("SELECT id FROM orders WHERE random() < 0.5", "(at `random()`)"),
        ("SELECT id FROM orders WHERE created > current_date", "time- and session-dependent values are not supported in differential mode (at `current_date`)"),
        ("SELECT id FROM orders WHERE created > 'now'::timestamptz", "time-dependent literals"),
        ("SELECT id FROM orders WHERE amount > $1", "parameters are not supported"),
        (
            "SELECT customer_id, stddev(amount) AS sd FROM orders GROUP BY customer_id",
            "aggregate functions other than count, sum, avg, min, max, bool_and, bool_or, every, string_agg and array_agg are not supported in differential mode (at `stddev(amount)`)",
        ),
        ("SELECT jsonb_agg(DISTINCT note) AS n FROM orders", "(at `jsonb_agg(DISTINCT note)`)"),
        ("SELECT count(*) FILTER (WHERE random() > 0.5) AS n FROM orders", "volatile functions are not supported in differential mode (at `random()`)"),
        ("SELECT count(*) FILTER (WHERE id IN (SELECT 1)) AS n FROM orders", "subqueries are not supported"),
        ("SELECT sum(id ORDER BY id) AS ids FROM orders", "ordered aggregates are not supported in differential mode (at `sum(id ORDER BY id)`)"),
        ("SELECT sum(amount) / count(*) AS mean FROM orders", "expressions over aggregates are not supported in differential mode (at `sum(amount) / count(*)`)"),
        ("SELECT coalesce(sum(amount), 0) AS s FROM orders", "expressions over aggregates"),
        ("SELECT customer_id + 1 AS c, count(*) AS n FROM orders GROUP BY customer_id", "output expressions that are neither GROUP BY keys nor aggregates are not supported in differential mode (at `customer_id + 1`)"),
        ("SELECT DISTINCT ON (customer_id) customer_id, id FROM orders", "DISTINCT ON are not supported in differential mode (at `DISTINCT ON (customer_id)`)"),
        ("SELECT DISTINCT customer_id, count(*) AS n FROM orders GROUP BY customer_id", "DISTINCT together with GROUP BY"),
        ("SELECT customer_id, count(*) AS n FROM orders GROUP BY ROLLUP (customer_id)", "GROUPING SETS, ROLLUP and CUBE"),
        ("SELECT j.id FROM (a JOIN b ON a.id = b.id) AS j(x, y)", "column aliases in FROM"),
        ("SELECT a.id FROM a NATURAL JOIN b", "NATURAL joins"),
        ("SELECT g FROM generate_series(1, 10) g", "functions in FROM"),
        ("SELECT id FROM ONLY orders", "ONLY are not supported in differential mode (at `ONLY orders`)"),
        ("SELECT id FROM orders TABLESAMPLE SYSTEM (10)", "TABLESAMPLE"),
        ("SELECT 1 AS one", "queries without FROM"),
        ("SELECT public.orders.id FROM public.orders", "schema-qualified column references"),
        ("SELECT o FROM orders o", "whole-row references are not supported in differential mode (at `o`)"),
        ("SELECT id FROM orders FOR UPDATE", "row locking clauses"),
        ("VALUES (1, 2)", "VALUES lists"),
        ("SELECT id FROM orders o(a, b)", "column aliases in FROM"),
    ];
    for (sql, expected) in cases {
        let message = unsupported(sql);
        assert!(
            message.contains(expected),
            "{sql}\n  gives: {message}\n  expected to contain: {expected}"
        );
        // Auto falls back to full refresh with the reason; Differential refuses with it.
        let analysis = analyze(sql);
        let auto = choose_mode(&analysis, Mode::Auto).unwrap();
        assert_eq!(auto.mode, Mode::Full);
        assert_eq!(
            auto.reason,
            Some(format!("full refresh, because {message}"))
        );
        let err = choose_mode(&analysis, Mode::Differential).unwrap_err();
        assert_eq!(err.to_string(), message);
        assert!(err.allows_full_refresh());
        assert_eq!(choose_mode(&analysis, Mode::Full).unwrap().mode, Mode::Full);
    }
}

#[test]
fn invalid_queries_are_errors_in_every_mode() {
    let cases: &[(&str, &str)] = &[
        ("SELEC id FROM t", "does not parse"),
        ("SELECT 1 FROM a; SELECT 2 FROM b", "not 2 statements"),
        ("INSERT INTO t VALUES (1)", "not a InsertStmt"),
        (
            "SELECT * FROM orders",
            "`*` in the select list is not supported",
        ),
        (
            "SELECT o.*, i.qty FROM orders o JOIN items i ON true",
            "`o.*`",
        ),
        ("SELECT id, id FROM orders", "`id` appears more than once"),
        (
            "SELECT sum(a), sum(b) FROM t",
            "`sum` appears more than once",
        ),
        ("SELECT id AS __shoal_count FROM t", "reserved"),
        (
            "SELECT x.id FROM orders o",
            "`x.id` refers to `x`, which is not in the FROM clause",
        ),
        ("SELECT id INTO other FROM orders", "SELECT INTO"),
        ("SELECT a.id FROM t a, u a", "`a` is used more than once"),
    ];
    for (sql, expected) in cases {
        let err = analyze(sql).expect_err(sql);
        assert!(
            err.to_string().contains(expected),
            "{sql}\n  gives: {err}\n  expected to contain: {expected}"
        );
        assert!(!err.allows_full_refresh(), "{sql}");
        for mode in [Mode::Auto, Mode::Differential, Mode::Full] {
            assert_eq!(choose_mode(&Err(err.clone()), mode), Err(err.clone()));
        }
    }
}

#[test]
fn supported_queries_choose_differential() {
    let analysis = analyze("SELECT id FROM orders WHERE amount > 0");
    let auto = choose_mode(&analysis, Mode::Auto).unwrap();
    assert_eq!((auto.mode, auto.reason), (Mode::Differential, None));
    let full = choose_mode(&analysis, Mode::Full).unwrap();
    assert_eq!(full.mode, Mode::Full);
    assert_eq!("Differential".parse::<Mode>(), Ok(Mode::Differential));
    assert_eq!(Mode::Auto.to_string(), "auto");
    assert!("sometimes".parse::<Mode>().is_err());
}

#[test]
fn relations_include_subqueries_but_not_ctes() {
    let p = plan(
        "WITH c AS (SELECT id FROM customers) SELECT o.id FROM orders o \
         WHERE o.customer_id IN (SELECT id FROM c) AND EXISTS (SELECT 1 FROM s.flags f)",
    );
    let mut relations = p.relations.clone();
    relations.sort();
    assert_eq!(
        relations,
        [
            SourceRef::new(None, "customers"),
            SourceRef::new(None, "orders"),
            SourceRef::new(Some("s"), "flags"),
        ]
    );
}

// ------------------------------------------------------------------------------ generation

#[test]
fn storage_of_a_projection() {
    let p = plan("SELECT id, note FROM orders");
    let ddl = storage_ddl(
        &p,
        &table(),
        &[
            ColumnType::new("id", "bigint"),
            ColumnType::new("note", "text"),
        ],
    )
    .unwrap();
    assert_eq!(
        ddl[0],
        "CREATE TABLE \"app\".\"St\" (\"id\" bigint, \"note\" text, \"__shoal_count\" bigint NOT NULL, \
         \"__shoal_row_id\" bigint GENERATED ALWAYS AS (hash_record_extended(ROW(\"id\", \"note\"), 0)) STORED)"
    );
    assert_eq!(
        ddl[1],
        "CREATE INDEX \"St_shoal_key\" ON \"app\".\"St\" (\"__shoal_row_id\")"
    );
    for s in &ddl {
        assert_parses(s);
    }
}

#[test]
fn storage_of_an_aggregate() {
    let p = plan(
        "SELECT sum(amount) AS s, avg(qty) AS a, customer_id FROM orders GROUP BY customer_id, note",
    );
    let types = [
        ColumnType::new("s", "numeric"),
        ColumnType::new("a", "numeric"),
        ColumnType::new("customer_id", "bigint"),
        ColumnType::new("__shoal_key_2", "text"),
    ];
    let ddl = storage_ddl(&p, &table(), &types).unwrap();
    for part in [
        "\"__shoal_key_2\" text",
        "\"__shoal_nn_1\" bigint NOT NULL DEFAULT 0",
        "\"__shoal_nn_2\" bigint NOT NULL DEFAULT 0",
        "\"__shoal_sum_2\" numeric",
        "hash_record_extended(ROW(\"customer_id\", \"__shoal_key_2\"), 0)",
    ] {
        assert!(ddl[0].contains(part), "{part} missing from {}", ddl[0]);
    }
    assert_eq!(
        ddl[1],
        "CREATE UNIQUE INDEX \"St_shoal_key\" ON \"app\".\"St\" (\"__shoal_row_id\", \"customer_id\", \"__shoal_key_2\") NULLS NOT DISTINCT"
    );
    // A global aggregate is one row: no key, no index.
    let p = plan("SELECT count(*) AS n FROM orders");
    let ddl = storage_ddl(&p, &table(), &[ColumnType::new("n", "bigint")]).unwrap();
    assert_eq!(ddl.len(), 1);
    assert!(!ddl[0].contains("__shoal_row_id"));
}

#[test]
fn storage_checks_the_column_types_given() {
    let p = plan("SELECT id, note FROM orders");
    let err = storage_ddl(&p, &table(), &[ColumnType::new("id", "bigint")]).unwrap_err();
    assert!(matches!(err, GenerateError::ColumnTypes { .. }), "{err}");
}

#[test]
fn full_refresh_of_each_kind() {
    let p = plan("SELECT DISTINCT o.customer_id FROM orders o WHERE o.amount > 0");
    let stmts = full_refresh_sql(&p, &table());
    assert_eq!(stmts[0], "TRUNCATE \"app\".\"St\"");
    assert_eq!(
        stmts[1],
        "INSERT INTO \"app\".\"St\" (\"customer_id\", \"__shoal_count\") SELECT o.customer_id, count(*) \
         FROM \"orders\" AS \"o\" WHERE (o.amount > 0) GROUP BY 1"
    );
    let p = plan("SELECT customer_id, avg(amount) AS a FROM orders GROUP BY customer_id");
    let stmts = full_refresh_sql(&p, &table());
    assert_eq!(
        stmts[1],
        "INSERT INTO \"app\".\"St\" (\"customer_id\", \"a\", \"__shoal_nn_1\", \"__shoal_sum_1\", \"__shoal_count\") \
         SELECT customer_id, avg(amount), count(amount), sum(amount), count(*) FROM \"orders\" AS \"orders\" \
         GROUP BY customer_id"
    );
    // A full-only query runs as written, its columns renamed by position.
    let p = plan("SELECT id, rank() OVER (ORDER BY amount) FROM orders");
    let stmts = full_refresh_sql(&p, &table());
    assert_eq!(
        stmts[1],
        "INSERT INTO \"app\".\"St\" (\"id\", \"rank\", \"__shoal_count\") SELECT \"__shoal_q\".\"id\", \
         \"__shoal_q\".\"rank\", count(*) FROM (SELECT id, rank() OVER (ORDER BY amount) FROM orders) \
         AS \"__shoal_q\"(\"id\", \"rank\") GROUP BY 1, 2"
    );
}

#[test]
fn differential_projection() {
    let p = plan("SELECT o.id, o.amount * 2 AS d FROM orders o WHERE o.amount > 10");
    let stmts = generate_all(&p);
    assert_eq!(stmts.len(), 1);
    let s = &stmts[0];
    assert!(s.starts_with("WITH \"__shoal_d\" AS (SELECT o.id AS \"__shoal_k1\", o.amount * 2 AS \"__shoal_k2\", \"__shoal_sign1\" AS \"__shoal_delta\" FROM (SELECT \"__shoal_m\".*, -1 AS \"__shoal_sign1\" FROM (SELECT * FROM shoal_stream.del_orders) AS \"__shoal_m\" UNION ALL SELECT \"__shoal_p\".*, 1 AS \"__shoal_sign1\" FROM shoal_stream.ins_orders AS \"__shoal_p\") AS \"o\" WHERE (o.amount > 10))"), "{s}");
    assert!(
        s.contains("GROUP BY \"__shoal_k1\", \"__shoal_k2\" HAVING sum(\"__shoal_delta\") <> 0")
    );
    assert!(s.contains("MERGE INTO \"app\".\"St\" AS \"__shoal_t\" USING \"__shoal_s\" ON \"__shoal_t\".\"__shoal_row_id\" = \"__shoal_s\".\"__shoal_rid\" AND \"__shoal_t\".\"id\" IS NOT DISTINCT FROM \"__shoal_s\".\"__shoal_k1\""));
    assert!(s.contains("WHEN MATCHED AND \"__shoal_t\".\"__shoal_count\" + \"__shoal_s\".\"__shoal_dcount\" <= 0 THEN DELETE"));
    assert!(s.contains("WHEN NOT MATCHED AND \"__shoal_s\".\"__shoal_dcount\" > 0 THEN INSERT (\"id\", \"d\", \"__shoal_count\")"));
    assert!(
        contents_sql(&p, &table()).contains("generate_series(1, \"__shoal_t\".\"__shoal_count\")")
    );
}

#[test]
fn differential_distinct_reads_rows_once() {
    let p = plan("SELECT DISTINCT customer_id FROM orders");
    let stmts = generate_all(&p);
    assert!(stmts[0].contains("MERGE INTO"));
    assert!(!contents_sql(&p, &table()).contains("generate_series"));
}

#[test]
fn differential_join_uses_inclusion_exclusion() {
    let p = plan(
        "SELECT o.customer_id, i.qty, p.name FROM orders o JOIN items i ON i.order_id = o.id \
         JOIN products p ON p.id = i.product_id",
    );
    let stmts = generate_all(&p);
    let body = &stmts[0];
    // Three changed sources: 7 terms; pairs negative, the triple positive.
    assert_eq!(body.matches("SELECT o.customer_id AS").count(), 7);
    assert_eq!(
        body.matches("-1 * \"__shoal_sign1\" * \"__shoal_sign2\" AS")
            .count(),
        1
    );
    assert_eq!(
        body.matches("\"__shoal_sign1\" * \"__shoal_sign2\" * \"__shoal_sign3\" AS")
            .count(),
        1
    );
    assert!(body.contains(
        "FROM \"orders\" AS \"o\" JOIN \"items\" AS \"i\" ON i.order_id = o.id JOIN (SELECT"
    ));
    assert!(body.contains(") AS \"p\" ON p.id = i.product_id)"));

    // Only the changed source gets a delta: one term, others at their new state.
    let mut one = HashMap::new();
    one.insert(
        SourceRef::new(None, "items"),
        DeltaRelations {
            deleted_sql: "d".into(),
            inserted_sql: "i".into(),
        },
    );
    let stmts = differential_refresh_sql(&p, &table(), &one).unwrap();
    assert_parses(&stmts[1]);
    assert_eq!(stmts[1].matches("SELECT o.customer_id AS").count(), 1);
    assert!(stmts[1].contains("FROM \"orders\" AS \"o\" JOIN (SELECT"));
    assert!(stmts[1].contains(") AS \"i\" ON i.order_id = o.id JOIN \"products\" AS \"p\""));
}

#[test]
fn differential_self_join_shares_one_delta() {
    let p = plan("SELECT a.id AS a_id, b.id AS b_id FROM orders a JOIN orders b ON a.customer_id = b.customer_id");
    let stmts = generate_all(&p);
    assert_eq!(stmts[0].matches("SELECT a.id AS").count(), 3);
}

#[test]
fn differential_aggregate() {
    let p = plan(
        "SELECT customer_id, count(*) AS n, count(amount) AS na, sum(amount) AS s, \
         avg(amount) AS a, min(amount) AS lo, max(amount) AS hi FROM orders GROUP BY customer_id",
    );
    let stmts = generate_all(&p);
    let s = &stmts[0];
    for part in [
        // per-group deltas
        "sum(\"__shoal_delta\")::bigint AS \"__shoal_dcount\"",
        "sum(CASE WHEN \"__shoal_x2\" IS NOT NULL THEN \"__shoal_delta\" ELSE 0 END)::bigint AS \"__shoal_dnn2\"",
        "sum(\"__shoal_x3\" * \"__shoal_delta\") AS \"__shoal_dsum3\"",
        "min(\"__shoal_x5\") FILTER (WHERE \"__shoal_delta\" > 0) AS \"__shoal_ins5\"",
        "max(\"__shoal_x6\") FILTER (WHERE \"__shoal_delta\" < 0) AS \"__shoal_del6\"",
        // joined to the stored state by row id and key
        "LEFT JOIN \"app\".\"St\" AS \"__shoal_t\" ON \"__shoal_t\".\"__shoal_row_id\" = hash_record_extended(ROW(\"__shoal_g\".\"__shoal_k1\"), 0) AND \"__shoal_t\".\"customer_id\" IS NOT DISTINCT FROM \"__shoal_g\".\"__shoal_k1\"",
        // a sum whose inputs all vanish is NULL
        "CASE WHEN (COALESCE(\"__shoal_onn3\", 0) + \"__shoal_dnn3\") = 0 THEN NULL",
        // MIN/MAX rescans, plain-equality and NULL-safe branches
        "LEAST(\"__shoal_o5\", \"__shoal_ins5\")",
        "\"__shoal_del6\" >= GREATEST(\"__shoal_o6\", \"__shoal_ins6\")",
        "\"__shoal_r\" AS (SELECT customer_id AS \"__shoal_k1\", hash_record_extended(ROW(customer_id), 0) AS \"__shoal_rid\", min(amount) AS \"__shoal_m5\", max(amount) AS \"__shoal_m6\" FROM \"orders\" AS \"orders\" WHERE ((customer_id) = ANY (ARRAY(SELECT \"__shoal_n\".\"__shoal_k1\" FROM \"__shoal_n\" WHERE \"__shoal_n\".\"__shoal_rescan\" AND \"__shoal_n\".\"__shoal_k1\" IS NOT NULL)) AND (customer_id) IN (SELECT \"__shoal_n\".\"__shoal_k1\" FROM \"__shoal_n\" WHERE \"__shoal_n\".\"__shoal_rescan\" AND \"__shoal_n\".\"__shoal_k1\" IS NOT NULL)) AND ((SELECT bool_or(\"__shoal_n\".\"__shoal_rescan\" AND \"__shoal_n\".\"__shoal_k1\" IS NOT NULL) FROM \"__shoal_n\")) GROUP BY customer_id",
        "AND (customer_id) IS NOT DISTINCT FROM \"__shoal_n\".\"__shoal_k1\")",
        "WHEN MATCHED AND \"__shoal_s\".\"__shoal_ncount\" <= 0 THEN DELETE",
        "WHEN NOT MATCHED AND \"__shoal_s\".\"__shoal_ncount\" > 0 THEN INSERT",
    ] {
        assert!(s.contains(part), "missing {part}\nin {s}");
    }
}

#[test]
fn differential_aggregate_without_extremes_has_no_rescan() {
    let p = plan("SELECT customer_id, sum(amount) AS s FROM orders GROUP BY customer_id");
    let stmts = generate_all(&p);
    assert!(!stmts[0].contains("\"__shoal_r\""));
    assert!(!stmts[0].contains("bool_or"));
}

#[test]
fn differential_global_aggregate_keeps_its_row() {
    let p = plan("SELECT count(*) AS n, min(qty) AS lo FROM items WHERE qty > 0");
    let stmts = generate_all(&p);
    let s = &stmts[0];
    assert!(s.contains("FROM \"__shoal_d\" HAVING count(*) > 0"));
    assert!(s.contains("ON true"));
    assert!(!s.contains("THEN DELETE"));
    assert!(s.contains("WHEN NOT MATCHED THEN INSERT"));
}

#[test]
fn differential_hidden_keys_and_join_aggregate() {
    let p = plan(
        "SELECT sum(i.qty) AS q, max(o.amount) AS hi FROM orders o, items i \
         WHERE i.order_id = o.id GROUP BY o.customer_id, i.product_id",
    );
    let stmts = generate_all(&p);
    assert!(stmts[0].contains("INSERT (\"q\", \"hi\", \"__shoal_key_1\", \"__shoal_key_2\""));
}

#[test]
fn differential_group_by_without_aggregates() {
    let p = plan("SELECT customer_id, note FROM orders GROUP BY customer_id, note");
    let g = p.differential().unwrap().grouping.clone().unwrap();
    assert_eq!(g.keys.len(), 2);
    assert!(g.aggregates.is_empty());
    let stmts = generate_all(&p);
    assert!(
        stmts[0].contains("UPDATE SET \"__shoal_count\" = \"__shoal_s\".\"__shoal_ncount\" WHEN")
    );
}

#[test]
fn no_changes_no_statements() {
    let p = plan("SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id");
    assert!(differential_refresh_sql(&p, &table(), &HashMap::new())
        .unwrap()
        .is_empty());
}

#[test]
fn generation_errors() {
    let p = plan("SELECT id FROM orders");
    let mut other = HashMap::new();
    other.insert(
        SourceRef::new(Some("public"), "orders"),
        DeltaRelations {
            deleted_sql: "d".into(),
            inserted_sql: "i".into(),
        },
    );
    // Keys are relations as the query names them: `orders`, not `public.orders`.
    assert_eq!(
        differential_refresh_sql(&p, &table(), &other),
        Err(GenerateError::UnknownSource("\"public\".\"orders\"".into()))
    );
    let p = plan("SELECT id, lag(id) OVER () AS prev FROM orders");
    let err = differential_refresh_sql(&p, &table(), &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("window functions"), "{err}");
}

#[test]
fn awkward_names_are_quoted() {
    let p = plan(
        "SELECT \"T\".\"Odd \"\"Name\"\"\" AS \"Out Col\", count(*) AS \"N\" \
         FROM \"My Schema\".\"Tab\" AS \"T\" GROUP BY 1",
    );
    let stmts = generate_all(&p);
    assert!(
        stmts[0].contains(") AS \"T\" GROUP BY") || stmts[0].contains(") AS \"T\")"),
        "{}",
        stmts[0]
    );
    assert!(stmts[0].contains("\"__shoal_t\".\"Out Col\" IS NOT DISTINCT FROM"));
    let full = full_refresh_sql(&p, &table());
    assert!(full[1].contains("\"T\".\"Odd \"\"Name\"\"\""));
    assert!(full[1].contains("FROM \"My Schema\".\"Tab\" AS \"T\""));
}

#[test]
fn error_type_is_clonable_and_comparable() {
    let e = analyze("SELECT").unwrap_err();
    assert!(matches!(e, AnalyzeError::Invalid(_)), "{e}");
}

#[test]
fn every_name_a_column_could_go_by_is_collected() {
    let p = plan(
        r#"SELECT "Note", tags[1] AS first, upper(Label) FROM "my schema"."Order ""Items""" o
           JOIN dim d ON d.grp = o."Item ID" WHERE o.at > now() - interval '1 day'"#,
    );
    let names = p.referenced_columns.expect("no Unicode escapes");
    for expected in [
        "Note",
        "tags",
        "label",
        "Item ID",
        "grp",
        "at",
        "Order \"Items\"",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // String literals are not names.
    assert!(!names.iter().any(|n| n.contains("day")));
}
