//! Window functions, recomputed for the partitions a change touches. When every window function
//! of a query shares one PARTITION BY, each partition's rows depend on that partition's joined
//! rows alone, and a WHERE on the partition key removes whole partitions before any window is
//! computed. So a refresh finds the partition keys of the delta's rows (deleted and inserted,
//! from the same inclusion–exclusion terms as any join, outer joins included), deletes the
//! stored rows of those partitions, and inserts the query's rows restricted to them, read from
//! the sources' new state. The stored rows carry their partition key in hidden columns
//! (`__shoal_part_<i>`) and a row id hashing it, so the delete finds a partition by index.
//! Without PARTITION BY the whole result is one partition: that is a full refresh, left to full
//! mode.

use std::collections::HashMap;

use pg_query::protobuf::{SelectStmt, WindowDef};
use pg_query::{Node, NodeEnum, NodeRef};
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{deparse_expr, deparse_stmt, node, same_expr, RowExprCheck};
use crate::plan::{ColumnRole, Differential, OutputColumn, QueryPlan};
use crate::refresh::{
    delta_terms, from_where, k, qc, qi, row_hash, DeltaRelations, COUNT_COLUMN, ROW_ID_COLUMN,
};
use shoal_sql::QualifiedName;

/// The window functions of a differential query: their shared partition key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The PARTITION BY expressions every window function shares, deparsed.
    pub partition: Vec<String>,
    /// The query's WINDOW clause (`WINDOW w AS (...)`), deparsed, when it has one: the select
    /// list may name its windows.
    pub clause: Option<String>,
}

/// The stored column of partition key `i`.
pub(crate) fn hidden_part(i: usize) -> String {
    format!("__shoal_part_{}", i + 1)
}

/// The call and its window, when the node is a window function call.
fn window_call(node: &Node) -> Option<(&pg_query::protobuf::FuncCall, &WindowDef)> {
    match node.node.as_ref() {
        Some(NodeEnum::FuncCall(f)) => f.over.as_deref().map(|over| (f.as_ref(), over)),
        _ => None,
    }
}

fn contains_window(node: &Node) -> bool {
    node.node.as_ref().is_some_and(|n| {
        n.nodes()
            .iter()
            .any(|(r, ..)| matches!(r, NodeRef::FuncCall(f) if f.over.is_some()))
    })
}

/// The PARTITION BY of a window, following references to the WINDOW clause (`OVER w`,
/// `OVER (w ORDER BY ...)`); PostgreSQL allows no PARTITION BY in a window that copies another.
fn partition_of<'a>(
    over: &'a WindowDef,
    named: &HashMap<&str, &'a WindowDef>,
) -> Result<&'a [Node], AnalyzeError> {
    let only_a_name = over.refname.is_empty()
        && over.partition_clause.is_empty()
        && over.order_clause.is_empty()
        && !over.name.is_empty();
    let mut def = over;
    let mut base = if only_a_name {
        &over.name
    } else {
        &over.refname
    };
    for _ in 0..=named.len() {
        if !def.partition_clause.is_empty() || base.is_empty() {
            return Ok(&def.partition_clause);
        }
        def = named.get(base.as_str()).ok_or_else(|| {
            AnalyzeError::Invalid(format!("the window `{base}` is not defined in WINDOW"))
        })?;
        base = &def.refname;
    }
    Err(AnalyzeError::Invalid(
        "the WINDOW clause's windows refer to each other in a cycle".into(),
    ))
}

/// The WINDOW clause as SQL text: deparsed after a constant select list and cut from it.
fn deparse_clause(sel: &SelectStmt) -> Result<Option<String>, AnalyzeError> {
    if sel.window_clause.is_empty() {
        return Ok(None);
    }
    let parsed = pg_query::parse("SELECT 1", 0).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let Some(NodeEnum::SelectStmt(base)) = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(|s| s.node.as_ref())
    else {
        return Err(AnalyzeError::Invalid("`SELECT 1` did not parse".into()));
    };
    let mut stmt = base.clone();
    stmt.window_clause = sel.window_clause.clone();
    let text = deparse_stmt(&node(NodeEnum::SelectStmt(stmt)))?;
    Ok(text.strip_prefix("SELECT 1 ").map(str::to_string))
}

/// The window part of a query's analysis: None without window functions; otherwise the shared
/// partition key, with the output columns (all [`ColumnRole::Plain`]) pushed to `columns`.
/// `grouped_or_distinct` tells whether the query also has GROUP BY, aggregates or DISTINCT.
pub(crate) fn analyze_window(
    sel: &SelectStmt,
    targets: &[&Node],
    names: &[String],
    range_names: &[String],
    grouped_or_distinct: bool,
    columns: &mut Vec<OutputColumn>,
) -> Result<Option<Window>, AnalyzeError> {
    let calls: Vec<&Node> = targets
        .iter()
        .copied()
        .filter(|t| window_call(t).is_some())
        .collect();
    if calls.is_empty() && !targets.iter().any(|t| contains_window(t)) {
        return Ok(None);
    }
    let at = |n: &Node| Some(deparse_expr(n));
    if grouped_or_distinct {
        return Err(Unsupported::new(
            "window functions together with GROUP BY, aggregates or DISTINCT",
            calls.first().and_then(|c| at(c)),
        )
        .hint("make the grouped query a stream table of its own")
        .into());
    }
    let row_check = |place: &'static str| RowExprCheck { range_names, place };
    let check_def = |def: &WindowDef| -> Result<(), AnalyzeError> {
        for key in &def.partition_clause {
            row_check("PARTITION BY").check(key)?;
        }
        for sort in &def.order_clause {
            match sort.node.as_ref() {
                Some(NodeEnum::SortBy(sb)) => sb
                    .node
                    .as_deref()
                    .map_or(Ok(()), |n| row_check("window ORDER BY").check(n))?,
                _ => row_check("window ORDER BY").check(sort)?,
            }
        }
        for offset in [&def.start_offset, &def.end_offset].into_iter().flatten() {
            row_check("window frames").check(offset)?;
        }
        Ok(())
    };
    let mut named = HashMap::new();
    for def in &sel.window_clause {
        if let Some(NodeEnum::WindowDef(w)) = def.node.as_ref() {
            check_def(w)?;
            named.insert(w.name.as_str(), w.as_ref());
        }
    }
    let mut partition: Option<Vec<&Node>> = None;
    for (target, name) in targets.iter().zip(names) {
        let Some((f, over)) = window_call(target) else {
            if contains_window(target) {
                return Err(
                    Unsupported::new("expressions over window functions", at(target))
                        .hint("select the window function itself and compute over it when reading")
                        .into(),
                );
            }
            row_check("the select list").check(target)?;
            columns.push(plain(name, target));
            continue;
        };
        let check = row_check("window function arguments");
        for arg in f.args.iter().chain(f.agg_filter.as_deref()) {
            check.check(arg)?;
        }
        check_def(over)?;
        let keys = partition_of(over, &named)?;
        if keys.is_empty() {
            return Err(
                Unsupported::new("window functions without PARTITION BY", at(target))
                    .hint(
                        "the whole result is one partition, so every change recomputes all of it: \
                     use full refresh, or partition the window",
                    )
                    .into(),
            );
        }
        match &partition {
            None => partition = Some(keys.iter().collect()),
            Some(first) => {
                let same = first.len() == keys.len()
                    && keys.iter().all(|k| first.iter().any(|f| same_expr(f, k)));
                if !same {
                    return Err(Unsupported::new(
                        "window functions with different PARTITION BY",
                        at(target),
                    )
                    .hint("give every window of the query the same PARTITION BY")
                    .into());
                }
            }
        }
        columns.push(plain(name, target));
    }
    let partition = partition.unwrap_or_default();
    Ok(Some(Window {
        partition: partition.iter().map(|k| deparse_expr(k)).collect(),
        clause: deparse_clause(sel)?,
    }))
}

fn plain(name: &str, target: &Node) -> OutputColumn {
    OutputColumn {
        name: name.to_string(),
        expr: deparse_expr(target),
        role: ColumnRole::Plain,
    }
}

/// The query's select list and partition key, named as stored (`"name"`, `__shoal_part_<i>`).
fn stored_items(plan: &QueryPlan, w: &Window) -> Vec<String> {
    let mut items: Vec<String> = plan
        .columns
        .iter()
        .map(|c| format!("{} AS {}", c.expr, qi(&c.name)))
        .collect();
    for (i, e) in w.partition.iter().enumerate() {
        items.push(format!("{e} AS {}", qi(&hidden_part(i))));
    }
    items
}

/// The stored columns, in the order of [`stored_items`].
fn stored_columns(plan: &QueryPlan, w: &Window) -> Vec<String> {
    let mut cols: Vec<String> = plan.columns.iter().map(|c| qi(&c.name)).collect();
    cols.extend((0..w.partition.len()).map(|i| qi(&hidden_part(i))));
    cols
}

/// The query over the sources, its rows restricted by `extra` (conditions on a joined row).
pub(crate) fn window_select(
    plan: &QueryPlan,
    d: &Differential,
    w: &Window,
    extra: &[String],
) -> String {
    let clause = w
        .clause
        .as_deref()
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    format!(
        "SELECT {} {}{clause}",
        stored_items(plan, w).join(", "),
        from_where(d, extra)
    )
}

/// `INSERT` of `select`'s rows, each distinct one once with its multiplicity.
fn insert_counted(plan: &QueryPlan, w: &Window, table: &QualifiedName, select: &str) -> String {
    let cols = stored_columns(plan, w);
    let positions: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
    let q: Vec<String> = cols
        .iter()
        .map(|c| format!("{}.{c}", qi("__shoal_q")))
        .collect();
    format!(
        "INSERT INTO {} ({}, {}) SELECT {}, count(*) FROM ({select}) AS {} GROUP BY {}",
        table.quoted(),
        cols.join(", "),
        qi(COUNT_COLUMN),
        q.join(", "),
        qi("__shoal_q"),
        positions.join(", ")
    )
}

/// The full refresh's insert: the query's rows with their partition keys, counted.
pub(crate) fn window_full_insert(
    plan: &QueryPlan,
    d: &Differential,
    w: &Window,
    table: &QualifiedName,
) -> String {
    insert_counted(plan, w, table, &window_select(plan, d, w, &[]))
}

/// The differential refresh: one statement that finds the touched partitions from the delta,
/// deletes their stored rows and inserts their rows recomputed from the sources' new state.
pub(crate) fn window_refresh(
    plan: &QueryPlan,
    d: &Differential,
    w: &Window,
    table: &QualifiedName,
    deltas: &[Option<&DeltaRelations>],
) -> Option<String> {
    let items: Vec<(String, String)> = w
        .partition
        .iter()
        .enumerate()
        .map(|(i, e)| (k(i), e.clone()))
        .collect();
    let terms = delta_terms(d, &items, deltas)?;
    let n = w.partition.len();
    let p = qi("__shoal_parts");
    let ks: Vec<String> = (0..n).map(|i| qi(&k(i))).collect();
    let pk: Vec<String> = (0..n).map(|i| qc("__shoal_parts", &k(i))).collect();
    let nonnull: Vec<String> = pk.iter().map(|k| format!("{k} IS NOT NULL")).collect();
    let nonnull = nonnull.join(" AND ");
    let t = |col: &str| qc("__shoal_t", col);
    let mut on = vec![format!(
        "{} = {}",
        t(ROW_ID_COLUMN),
        qc("__shoal_parts", "__shoal_rid")
    )];
    for (i, key) in pk.iter().enumerate() {
        on.push(format!("{} IS NOT DISTINCT FROM {key}", t(&hidden_part(i))));
    }
    // The touched partitions with plain key values, in one pass: each key compared with the
    // array of their values (a parameter postgres_fdw sends to the workers, so they read only
    // those partitions) and the exact semi-join on the whole key.
    let mut plain: Vec<String> = w
        .partition
        .iter()
        .zip(&pk)
        .map(|(e, key)| format!("({e}) = ANY (ARRAY(SELECT {key} FROM {p} WHERE {nonnull}))"))
        .collect();
    plain.push(format!(
        "({}) IN (SELECT {} FROM {p} WHERE {nonnull})",
        w.partition.join(", "),
        pk.join(", ")
    ));
    plain.push(format!("(SELECT bool_or({nonnull}) FROM {p})"));
    // Partitions with a NULL key need IS NOT DISTINCT FROM; the uncorrelated bool_or skips
    // the scan when there is none.
    let null_match: Vec<String> = w
        .partition
        .iter()
        .zip(&pk)
        .map(|(e, key)| format!("({e}) IS NOT DISTINCT FROM {key}"))
        .collect();
    let nulls = [
        format!(
            "EXISTS (SELECT 1 FROM {p} WHERE NOT ({nonnull}) AND {})",
            null_match.join(" AND ")
        ),
        format!("(SELECT bool_or(NOT ({nonnull})) FROM {p})"),
    ];
    let select = format!(
        "({}) UNION ALL ({})",
        window_select(plan, d, w, &plain),
        window_select(plan, d, w, &nulls)
    );
    Some(format!(
        "WITH {d} AS ({terms}), \
         {p} AS (SELECT DISTINCT {ks}, {hash} AS {rid} FROM {d}), \
         {x} AS (DELETE FROM {table} AS {talias} USING {p} WHERE {on}) \
         {insert}",
        d = qi("__shoal_d"),
        ks = ks.join(", "),
        hash = row_hash(&ks),
        rid = qi("__shoal_rid"),
        x = qi("__shoal_x"),
        table = table.quoted(),
        talias = qi("__shoal_t"),
        on = on.join(" AND "),
        insert = insert_counted(plan, w, table, &select),
    ))
}
