//! SQL generation: the stream table's storage, full refresh, differential refresh. `table` is
//! always the storage table ([`crate::storage_table`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::aggregate;
use crate::distinct;
use crate::error::GenerateError;
use crate::expr::AggFunc;
use crate::from::source_slot;
use crate::layout::key_index;
use crate::outer;
use crate::plan::{
    hidden_agg, hidden_key, Aggregate, Differential, Grouping, Maintenance, QueryPlan, Source,
    SourceRef,
};
use crate::semi;
use crate::union::Union;
use crate::window::{self, hidden_part, window_full_insert, window_select};
use shoal_sql::{quote_ident, QualifiedName};

/// Multiplicity of a stored row: how many rows of the query result it stands for (for a group,
/// how many joined source rows fall into it).
pub const COUNT_COLUMN: &str = "__shoal_count";
/// Hash of the row key (all visible columns, or the group key): what refreshes look rows up by.
pub const ROW_ID_COLUMN: &str = "__shoal_row_id";
/// +1 for an inserted row, -1 for a deleted row, in delta relations.
pub const DELTA_COLUMN: &str = "__shoal_delta";

/// The changes of one source relation in the refresh window, as SQL relation expressions with
/// exactly the relation's columns (names and types): a table name or `(SELECT ...)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRelations {
    /// Old versions of deleted and updated rows.
    pub deleted_sql: String,
    /// New versions of inserted and updated rows.
    pub inserted_sql: String,
}

/// The SQL type of one column of [`typed_columns`], e.g. from `format_type(atttypid, atttypmod)`
/// of the [`probe_sql`] result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnType {
    pub name: String,
    pub sql_type: String,
}

impl ColumnType {
    pub fn new(name: impl Into<String>, sql_type: impl Into<String>) -> Self {
        ColumnType {
            name: name.into(),
            sql_type: sql_type.into(),
        }
    }
}

pub(crate) fn qi(name: &str) -> String {
    quote_ident(name)
}

/// `"alias"."column"`
pub(crate) fn qc(alias: &str, column: &str) -> String {
    format!("{}.{}", qi(alias), qi(column))
}

pub(crate) fn hidden_nn(j: usize) -> String {
    format!("__shoal_nn_{}", j + 1)
}

pub(crate) fn hidden_sum(j: usize) -> String {
    format!("__shoal_sum_{}", j + 1)
}

pub(crate) fn needs_nn(func: AggFunc) -> bool {
    matches!(
        func,
        AggFunc::Sum | AggFunc::Avg | AggFunc::BoolAnd | AggFunc::BoolOr
    )
}

/// The hidden count of the inputs that decide a `bool_and` (false ones) or `bool_or` (true ones).
pub(crate) fn hidden_hit(j: usize) -> String {
    format!("__shoal_hit_{}", j + 1)
}

/// The condition on an input that [`hidden_hit`] counts, if the aggregate keeps one.
pub(crate) fn hit_test(func: AggFunc) -> Option<&'static str> {
    match func {
        AggFunc::BoolAnd => Some("IS FALSE"),
        AggFunc::BoolOr => Some("IS TRUE"),
        _ => None,
    }
}

/// The stored column holding aggregate `j`: its output column, or a hidden one.
pub(crate) fn agg_column(plan: &QueryPlan, g: &Grouping, j: usize) -> String {
    match g.aggregates[j].column {
        Some(c) => plan.columns[c].name.clone(),
        None => hidden_agg(j),
    }
}

/// The aggregate call, as SQL over the query's FROM.
pub(crate) fn agg_call(a: &Aggregate) -> String {
    a.func.call(a.arg.as_deref().unwrap_or("*"))
}

/// The stored column holding group key `i`: its first output column, or a hidden one.
pub(crate) fn key_column(plan: &QueryPlan, g: &Grouping, i: usize) -> String {
    match g.keys[i].column {
        Some(c) => plan.columns[c].name.clone(),
        None => hidden_key(i),
    }
}

/// The stored columns the row id hashes: the group key, or every visible column.
fn row_key_columns(plan: &QueryPlan, d: &Differential) -> Vec<String> {
    if let Some(w) = &d.window {
        // A partition's rows are found together.
        return (0..w.partition.len()).map(hidden_part).collect();
    }
    match &d.grouping {
        Some(g) => (0..g.keys.len()).map(|i| key_column(plan, g, i)).collect(),
        None => plan.column_names(),
    }
}

fn is_global(d: &Differential) -> bool {
    d.grouping.as_ref().is_some_and(|g| g.keys.is_empty())
}

/// The columns whose SQL types [`storage_ddl`] needs, in order: the visible columns, then hidden
/// group keys (GROUP BY expressions not in the select list), then hidden aggregates (those only
/// HAVING uses).
pub fn typed_columns(plan: &QueryPlan) -> Vec<String> {
    let mut names = plan.column_names();
    if let Some(g) = plan.differential().and_then(|d| d.grouping.as_ref()) {
        names.extend(
            g.keys
                .iter()
                .enumerate()
                .filter(|(_, k)| k.column.is_none())
                .map(|(i, _)| hidden_key(i)),
        );
        names.extend(hidden_aggregates(g).map(hidden_agg));
    }
    if let Some(w) = plan.differential().and_then(|d| d.window.as_ref()) {
        names.extend((0..w.partition.len()).map(hidden_part));
    }
    names
}

/// The aggregates only HAVING uses, by index.
pub(crate) fn hidden_aggregates(g: &Grouping) -> impl Iterator<Item = usize> + '_ {
    g.aggregates
        .iter()
        .enumerate()
        .filter(|(_, a)| a.column.is_none())
        .map(|(j, _)| j)
}

/// A query returning no rows whose columns are [`typed_columns`]: run it (or `CREATE TEMP TABLE
/// ... AS` it) to learn the types.
pub fn probe_sql(plan: &QueryPlan) -> String {
    let Some(d) = plan.differential().filter(|d| d.union.is_none()) else {
        return format!(
            "SELECT * FROM ({}) AS {} LIMIT 0",
            plan.query,
            full_only_alias(plan)
        );
    };
    if let Some(w) = &d.window {
        return format!("{} LIMIT 0", window_select(plan, d, w, &[]));
    }
    let mut items: Vec<String> = plan
        .columns
        .iter()
        .map(|c| format!("{} AS {}", c.expr, qi(&c.name)))
        .collect();
    let mut group_by = String::new();
    if let Some(g) = &d.grouping {
        for (i, k) in g.keys.iter().enumerate() {
            if k.column.is_none() {
                items.push(format!("{} AS {}", k.expr, qi(&hidden_key(i))));
            }
        }
        for j in hidden_aggregates(g) {
            items.push(format!(
                "{} AS {}",
                agg_call(&g.aggregates[j]),
                qi(&hidden_agg(j))
            ));
        }
        group_by = group_by_clause(g);
    }
    format!(
        "SELECT {} {}{} LIMIT 0",
        items.join(", "),
        from_where(d, &[]),
        group_by
    )
}

fn group_by_clause(g: &Grouping) -> String {
    if g.keys.is_empty() {
        String::new()
    } else {
        let keys: Vec<&str> = g.keys.iter().map(|k| k.expr.as_str()).collect();
        format!(" GROUP BY {}", keys.join(", "))
    }
}

/// `AS "__shoal_q"("a", "b")`: renames a full-only query's columns by position, so they are
/// reachable whatever PostgreSQL would have called them.
fn full_only_alias(plan: &QueryPlan) -> String {
    let cols: Vec<String> = plan.columns.iter().map(|c| qi(&c.name)).collect();
    format!("{}({})", qi("__shoal_q"), cols.join(", "))
}

/// The storage table's DDL: visible columns, hidden state, and the index refreshes look rows up
/// by. `column_types` gives the types of [`typed_columns`], in that order. Users read it through
/// the view of [`crate::view_ddl`].
pub fn storage_ddl(
    plan: &QueryPlan,
    table: &QualifiedName,
    column_types: &[ColumnType],
) -> Result<Vec<String>, GenerateError> {
    let expected = typed_columns(plan);
    let got: Vec<String> = column_types.iter().map(|c| c.name.clone()).collect();
    if expected != got {
        return Err(GenerateError::ColumnTypes { expected, got });
    }
    let type_of = |name: &str| {
        column_types
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.sql_type.clone())
            .unwrap_or_default()
    };
    let mut defs: Vec<String> = column_types
        .iter()
        .map(|c| format!("{} {}", qi(&c.name), c.sql_type))
        .collect();
    let mut stmts = Vec::new();
    let Some(d) = plan.differential() else {
        defs.push(format!("{} bigint NOT NULL", qi(COUNT_COLUMN)));
        stmts.push(format!(
            "CREATE TABLE {} ({})",
            table.quoted(),
            defs.join(", ")
        ));
        return Ok(stmts);
    };
    if let Some(g) = &d.grouping {
        for (j, a) in g.aggregates.iter().enumerate() {
            if needs_nn(a.func) {
                defs.push(format!("{} bigint NOT NULL DEFAULT 0", qi(&hidden_nn(j))));
            }
            if a.func == AggFunc::Avg {
                // The running sum has the average's type: numeric for integer and numeric
                // input, double precision for floats, interval for intervals.
                let avg_type = type_of(&agg_column(plan, g, j));
                defs.push(format!("{} {avg_type}", qi(&hidden_sum(j))));
            }
            if hit_test(a.func).is_some() {
                defs.push(format!("{} bigint NOT NULL DEFAULT 0", qi(&hidden_hit(j))));
            }
        }
    }
    defs.push(format!("{} bigint NOT NULL", qi(COUNT_COLUMN)));
    let key_cols = row_key_columns(plan, d);
    if !is_global(d) {
        let row: Vec<String> = key_cols.iter().map(|c| qi(c)).collect();
        defs.push(format!(
            "{} bigint GENERATED ALWAYS AS ({}) STORED",
            qi(ROW_ID_COLUMN),
            row_hash(&row)
        ));
    }
    stmts.push(format!(
        "CREATE TABLE {} ({})",
        table.quoted(),
        defs.join(", ")
    ));
    if !is_global(d) {
        let index = qi(&key_index(&table.name));
        if d.grouping.is_some() {
            // One row per group. NULL keys are one group each, as in GROUP BY.
            let mut cols = vec![qi(ROW_ID_COLUMN)];
            cols.extend(key_cols.iter().map(|c| qi(c)));
            stmts.push(format!(
                "CREATE UNIQUE INDEX {index} ON {} ({}) NULLS NOT DISTINCT",
                table.quoted(),
                cols.join(", ")
            ));
        } else {
            // Without grouping the key is the whole row, which may be too wide or of a type
            // without a btree class for a unique index; refreshes keep rows unique anyway.
            stmts.push(format!(
                "CREATE INDEX {index} ON {} ({})",
                table.quoted(),
                qi(ROW_ID_COLUMN)
            ));
        }
    }
    if let Some(g) = d.grouping.as_ref().filter(|_| d.union.is_none()) {
        stmts.extend(distinct::values_ddl(d, g, table));
    }
    Ok(stmts)
}

/// The names of the storage table's columns, in the order of [`storage_ddl`].
pub fn storage_columns(plan: &QueryPlan) -> Vec<String> {
    let mut names = typed_columns(plan);
    if let Some(d) = plan.differential() {
        if let Some(g) = &d.grouping {
            for (j, a) in g.aggregates.iter().enumerate() {
                if needs_nn(a.func) {
                    names.push(hidden_nn(j));
                }
                if a.func == AggFunc::Avg {
                    names.push(hidden_sum(j));
                }
                if hit_test(a.func).is_some() {
                    names.push(hidden_hit(j));
                }
            }
        }
        names.push(COUNT_COLUMN.to_string());
        if !is_global(d) {
            names.push(ROW_ID_COLUMN.to_string());
        }
    } else {
        names.push(COUNT_COLUMN.to_string());
    }
    names
}

/// A hash of a row of values that agrees with their equality operators (1.0 and 1.00 hash the
/// same), computed by the types' own hash functions.
pub(crate) fn row_hash(values: &[String]) -> String {
    format!("hash_record_extended(ROW({}), 0)", values.join(", "))
}

/// FROM and WHERE of the query with every source, and every semi-join, in its new state.
pub(crate) fn from_where(d: &Differential, extra: &[String]) -> String {
    from_where_in(d, &d.from, |_| None, extra)
}

/// FROM and WHERE of the query over another FROM template with the same slots, each source
/// `i` of [`Differential::all_sources`] read in the state `reads(i)` gives: None for its new
/// state, Some(delta) for its signed delta. A semi-join given a delta is tested in its old state
/// (see `semi.rs`).
pub(crate) fn from_where_in<'a>(
    d: &Differential,
    template: &str,
    reads: impl Fn(usize) -> Option<&'a DeltaRelations>,
    extra: &[String],
) -> String {
    let mut conds = semi::conditions(d, &reads);
    conds.extend(extra.iter().cloned());
    from_where_with(d, template, &reads, &conds)
}

/// [`from_where_in`] with the semi-joins' conditions left to the caller, in `conds`.
pub(crate) fn from_where_with<'a>(
    d: &Differential,
    template: &str,
    reads: &dyn Fn(usize) -> Option<&'a DeltaRelations>,
    conds: &[String],
) -> String {
    let from = fill_slots(template, |i| source_item(&d.sources[i], i, reads(i)));
    let conds: Vec<String> = d
        .filter
        .iter()
        .chain(conds.iter())
        .map(|c| format!("({c})"))
        .collect();
    if conds.is_empty() {
        format!("FROM {from}")
    } else {
        format!("FROM {from} WHERE {}", conds.join(" AND "))
    }
}

/// Source `i` as a FROM item under its name, in its new state or as its signed delta; a
/// subquery source is its SELECT over either, passing the delta's sign along.
pub(crate) fn source_item(s: &Source, i: usize, delta: Option<&DeltaRelations>) -> String {
    let relation = match delta {
        Some(delta) => signed_delta(delta, i),
        None => s.relation.sql(),
    };
    match &s.subquery {
        None => format!("{relation} AS {}", qi(s.range_name())),
        Some(q) => {
            let sign = match delta {
                Some(_) => format!(", {}", qi(&sign_column(i))),
                None => String::new(),
            };
            let filter = q
                .filter
                .as_deref()
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default();
            format!(
                "(SELECT {}{sign} FROM {relation} AS {}{filter}) AS {}",
                q.select,
                qi(&q.inner_name),
                qi(s.range_name())
            )
        }
    }
}

/// Replaces every slot `__shoal_src_<n>_` of `template` by `fill(n - 1)`, in one pass, so that
/// text put in is never taken for a slot.
fn fill_slots(template: &str, fill: impl Fn(usize) -> String) -> String {
    let marker = "__shoal_src_";
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at]);
        let tail = &rest[at + marker.len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match (
            tail[..digits].parse::<usize>(),
            tail[digits..].starts_with('_'),
        ) {
            (Ok(n), true)
                if n > 0 && source_slot(n - 1) == rest[at..at + marker.len() + digits + 1] =>
            {
                out.push_str(&fill(n - 1));
                rest = &tail[digits + 1..];
            }
            _ => {
                out.push_str(marker);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The statements of a full refresh, to run in one transaction.
pub fn full_refresh_sql(plan: &QueryPlan, table: &QualifiedName) -> Vec<String> {
    let truncate = format!("TRUNCATE {}", table.quoted());
    let union = plan.differential().and_then(|d| d.union.as_ref());
    let Some(d) = plan.differential().filter(|_| union.is_none()) else {
        // Counted over the query as it is, or, for a UNION, over its branches' bag.
        let query = union.map_or_else(|| plan.query.clone(), |u| u.bag_sql());
        let cols: Vec<String> = plan.columns.iter().map(|c| qi(&c.name)).collect();
        let positions: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
        let select: Vec<String> = plan
            .columns
            .iter()
            .map(|c| qc("__shoal_q", &c.name))
            .collect();
        let insert = format!(
            "INSERT INTO {} ({}, {}) SELECT {}, count(*) FROM ({}) AS {} GROUP BY {}",
            table.quoted(),
            cols.join(", "),
            qi(COUNT_COLUMN),
            select.join(", "),
            query,
            full_only_alias(plan),
            positions.join(", ")
        );
        return vec![truncate, insert];
    };
    let insert = match (&d.grouping, &d.window) {
        (_, Some(w)) => window_full_insert(plan, d, w, table),
        (None, None) => {
            let cols: Vec<String> = plan.columns.iter().map(|c| qi(&c.name)).collect();
            let exprs: Vec<&str> = plan.columns.iter().map(|c| c.expr.as_str()).collect();
            let positions: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
            format!(
                "INSERT INTO {} ({}, {}) SELECT {}, count(*) {} GROUP BY {}",
                table.quoted(),
                cols.join(", "),
                qi(COUNT_COLUMN),
                exprs.join(", "),
                from_where(d, &[]),
                positions.join(", ")
            )
        }
        (Some(g), None) => {
            let mut cols = Vec::new();
            let mut vals = Vec::new();
            for c in &plan.columns {
                cols.push(qi(&c.name));
                vals.push(c.expr.clone());
            }
            for (i, k) in g.keys.iter().enumerate() {
                if k.column.is_none() {
                    cols.push(qi(&hidden_key(i)));
                    vals.push(k.expr.clone());
                }
            }
            for j in hidden_aggregates(g) {
                cols.push(qi(&hidden_agg(j)));
                vals.push(agg_call(&g.aggregates[j]));
            }
            for (j, a) in g.aggregates.iter().enumerate() {
                let arg = a.arg.as_deref().unwrap_or("*");
                if needs_nn(a.func) {
                    cols.push(qi(&hidden_nn(j)));
                    vals.push(format!("count({arg})"));
                }
                if a.func == AggFunc::Avg {
                    cols.push(qi(&hidden_sum(j)));
                    vals.push(format!("sum({arg})"));
                }
                if let Some(test) = hit_test(a.func) {
                    cols.push(qi(&hidden_hit(j)));
                    vals.push(format!("count(*) FILTER (WHERE ({arg}) {test})"));
                }
            }
            cols.push(qi(COUNT_COLUMN));
            vals.push("count(*)".into());
            let insert = format!(
                "INSERT INTO {} ({}) SELECT {} {}{}",
                table.quoted(),
                cols.join(", "),
                vals.join(", "),
                from_where(d, &[]),
                group_by_clause(g)
            );
            let mut stmts = vec![truncate, insert];
            stmts.extend(distinct::values_fill(d, g, table));
            return stmts;
        }
    };
    vec![truncate, insert]
}

/// The sign column of source `i`'s delta: named apart from every other source's, so that it is
/// reachable unqualified, even through a join alias that hides the source's own name.
pub(crate) fn sign_column(i: usize) -> String {
    format!("__shoal_sign{}", i + 1)
}

/// The signed union of source `i`'s deleted (-1) and inserted (+1) rows.
pub(crate) fn signed_delta(delta: &DeltaRelations, i: usize) -> String {
    format!(
        "(SELECT {m}.*, -1 AS {d} FROM {del} AS {m} UNION ALL SELECT {p}.*, 1 AS {d} FROM {ins} AS {p})",
        m = qi("__shoal_m"),
        p = qi("__shoal_p"),
        d = qi(&sign_column(i)),
        del = delta.deleted_sql,
        ins = delta.inserted_sql,
    )
}

/// The delta of the join-filter-project part, as `UNION ALL` of inclusion-exclusion terms: for
/// every non-empty set S of changed sources, the join with the sources in S replaced by their
/// signed deltas and the others at their new state, with sign (-1)^(|S|+1). `items` are
/// (internal name, expression) pairs computed per joined row. None when nothing changed.
///
/// Where several terms read the deltas (two changed sources, an outer join's unmatched rows),
/// each delta is read out of the change buffer once, into a CTE the terms share: decoding the
/// buffer's rows is most of what reading a delta costs.
pub(crate) fn delta_terms(
    d: &Differential,
    items: &[(String, String)],
    deltas: &[Option<&DeltaRelations>],
) -> Option<String> {
    let terms = delta_term_list(d, items, deltas)?;
    if terms.len() == 1 {
        return terms.into_iter().next();
    }
    let name = |side: &str, i: usize| qi(&format!("__shoal_{side}{}", i + 1));
    let shared: Vec<Option<DeltaRelations>> = (0..deltas.len())
        .map(|i| {
            deltas[i].map(|_| DeltaRelations {
                deleted_sql: name("old", i),
                inserted_sql: name("new", i),
            })
        })
        .collect();
    let mut ctes = Vec::new();
    for (i, delta) in deltas.iter().enumerate() {
        if let Some(delta) = delta {
            for (side, rel) in [("old", &delta.deleted_sql), ("new", &delta.inserted_sql)] {
                ctes.push(format!(
                    "{} AS MATERIALIZED (SELECT * FROM {rel} AS {})",
                    name(side, i),
                    qi("__shoal_r")
                ));
            }
        }
    }
    let shared: Vec<Option<&DeltaRelations>> = shared.iter().map(Option::as_ref).collect();
    let terms = delta_term_list(d, items, &shared)?;
    Some(format!(
        "WITH {} {}",
        ctes.join(", "),
        terms.join(" UNION ALL ")
    ))
}

fn delta_term_list(
    d: &Differential,
    items: &[(String, String)],
    deltas: &[Option<&DeltaRelations>],
) -> Option<Vec<String>> {
    let changed: Vec<usize> = (0..d.sources.len())
        .filter(|&i| deltas[i].is_some())
        .collect();
    let semi_verdicts = semi::verdict_term(d, items, deltas);
    if changed.is_empty() && semi_verdicts.is_none() {
        return None;
    }
    let mut terms = Vec::new();
    for mask in 1u64..(1u64 << changed.len()) {
        let subset: Vec<usize> = changed
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, &i)| i)
            .collect();
        let mut sign: Vec<String> = subset.iter().map(|&i| qi(&sign_column(i))).collect();
        if subset.len() & 1 == 0 {
            sign.insert(0, "-1".into());
        }
        let mut select: Vec<String> = items
            .iter()
            .map(|(name, expr)| format!("{expr} AS {}", qi(name)))
            .collect();
        select.push(format!("{} AS {}", sign.join(" * "), qi(DELTA_COLUMN)));
        // An outer join's matched rows are its inner join's; the unmatched ones come after.
        let inner = d.outer.as_ref().map(outer::inner_from);
        let from = from_where_in(
            d,
            inner.as_deref().unwrap_or(&d.from),
            |i| match deltas[i] {
                // A changed semi-join is tested in its old state in every term.
                Some(delta) if subset.contains(&i) || i >= d.sources.len() => Some(delta),
                _ => None,
            },
            &[],
        );
        terms.push(format!("SELECT {} {from}", select.join(", ")));
    }
    if let Some(o) = &d.outer {
        terms.extend(outer::anti_terms(d, o, items, deltas));
    }
    terms.extend(semi_verdicts);
    Some(terms)
}

/// The statements of a differential refresh, to run in one transaction after the changes are in
/// place and before they are discarded. `deltas` holds the sources that changed in the window,
/// keyed as the query names them ([`QueryPlan::relations`]); no statement at all when empty.
pub fn differential_refresh_sql(
    plan: &QueryPlan,
    table: &QualifiedName,
    deltas: &HashMap<SourceRef, DeltaRelations>,
) -> Result<Vec<String>, GenerateError> {
    let d = match &plan.maintenance {
        Maintenance::Differential(d) => d,
        Maintenance::FullOnly(u) => return Err(GenerateError::NotDifferential(u.clone())),
    };
    let branches: Vec<&Differential> = match &d.union {
        Some(u) => u.branches.iter().map(|b| &b.differential).collect(),
        None => vec![d],
    };
    for r in deltas.keys() {
        if !branches
            .iter()
            .any(|b| b.all_sources().any(|s| &s.relation == r))
        {
            return Err(GenerateError::UnknownSource(r.to_string()));
        }
    }
    let per_source: Vec<Option<&DeltaRelations>> = d.deltas_of(deltas);
    let mut stmts: Vec<String> = match (&d.grouping, &d.window) {
        (_, Some(w)) => window::window_refresh(plan, d, w, table, &per_source)
            .into_iter()
            .collect(),
        (None, None) => projection_merge(plan, d.union.as_ref(), &branches, table, deltas)
            .into_iter()
            .collect(),
        (Some(g), None) => aggregate::aggregate_merge(plan, d, g, table, &per_source)
            .into_iter()
            .chain(distinct::values_merges(d, g, table, &per_source))
            .collect(),
    };
    if stmts.is_empty() {
        return Ok(stmts);
    }
    // Delta queries are small but their plans can look costly (rescan branches that usually do
    // not run), and JIT compilation would then cost more than the refresh itself.
    stmts.insert(0, "SET LOCAL jit = off".to_string());
    Ok(stmts)
}

pub(crate) fn k(i: usize) -> String {
    format!("__shoal_k{}", i + 1)
}

pub(crate) fn x(j: usize) -> String {
    format!("__shoal_x{}", j + 1)
}

/// Without grouping: sum the signed rows per distinct row, then add the sums to the stored
/// multiplicities, deleting rows whose multiplicity reaches zero.
/// For a UNION, the terms of every branch with changed sources, each projecting its own
/// expressions onto the shared columns.
fn projection_merge(
    plan: &QueryPlan,
    union: Option<&Union>,
    branches: &[&Differential],
    table: &QualifiedName,
    deltas: &HashMap<SourceRef, DeltaRelations>,
) -> Option<String> {
    let mut all_terms = Vec::new();
    for (b, d) in branches.iter().enumerate() {
        let exprs: Vec<String> = match union {
            Some(u) => u.branches[b].exprs.clone(),
            None => plan.columns.iter().map(|c| c.expr.clone()).collect(),
        };
        let items: Vec<(String, String)> = exprs
            .into_iter()
            .enumerate()
            .map(|(i, e)| (k(i), e))
            .collect();
        let per_source: Vec<Option<&DeltaRelations>> = d.deltas_of(deltas);
        // A branch whose terms share their deltas in a WITH of their own is one parenthesized
        // query of the union.
        all_terms.extend(delta_terms(d, &items, &per_source).map(|t| {
            if branches.len() > 1 && t.starts_with("WITH ") {
                format!("({t})")
            } else {
                t
            }
        }));
    }
    if all_terms.is_empty() {
        return None;
    }
    if union.is_some() {
        // The branches' columns may differ in type (integer in one, numeric in another), and
        // the stored rows have the union's: an empty first branch of the storage's own columns
        // gives every delta value that type, so that 1 and 1.0 hash and match alike.
        let typed: Vec<String> = plan
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS {}", qc("__shoal_t", &c.name), qi(&k(i))))
            .collect();
        all_terms.insert(
            0,
            format!(
                "SELECT {}, 0 AS {} FROM {} AS {} WHERE false",
                typed.join(", "),
                qi(DELTA_COLUMN),
                table.quoted(),
                qi("__shoal_t")
            ),
        );
    }
    let terms = all_terms.join(" UNION ALL ");
    let n = plan.columns.len();
    let ks: Vec<String> = (0..n).map(|i| qi(&k(i))).collect();
    let s = |col: &str| qc("__shoal_s", col);
    let t = |col: &str| qc("__shoal_t", col);
    let mut on = vec![format!("{} = {}", t(ROW_ID_COLUMN), s("__shoal_rid"))];
    for (i, c) in plan.columns.iter().enumerate() {
        on.push(format!("{} IS NOT DISTINCT FROM {}", t(&c.name), s(&k(i))));
    }
    let cols: Vec<String> = plan.columns.iter().map(|c| qi(&c.name)).collect();
    let vals: Vec<String> = (0..n).map(|i| s(&k(i))).collect();
    Some(format!(
        "WITH {dcte} AS ({terms}), \
         {scte} AS (SELECT {ks}, sum({delta})::bigint AS {dcount}, {hash} AS {rid} \
         FROM {dcte} GROUP BY {ks} HAVING sum({delta}) <> 0) \
         MERGE INTO {table} AS {talias} USING {scte} ON {on} \
         WHEN MATCHED AND {tcount} + {sdcount} <= 0 THEN DELETE \
         WHEN MATCHED THEN UPDATE SET {count} = {tcount} + {sdcount} \
         WHEN NOT MATCHED AND {sdcount} > 0 THEN INSERT ({cols}, {count}) VALUES ({vals}, {sdcount})",
        dcte = qi("__shoal_d"),
        scte = qi("__shoal_s"),
        talias = qi("__shoal_t"),
        ks = ks.join(", "),
        delta = qi(DELTA_COLUMN),
        dcount = qi("__shoal_dcount"),
        hash = row_hash(&ks),
        rid = qi("__shoal_rid"),
        table = table.quoted(),
        on = on.join(" AND "),
        tcount = t(COUNT_COLUMN),
        sdcount = s("__shoal_dcount"),
        count = qi(COUNT_COLUMN),
        cols = cols.join(", "),
        vals = vals.join(", "),
    ))
}

/// The storage table's content as the query's result (a bag): the visible columns, rows repeated
/// by their multiplicity where the query keeps duplicates. The body of the view users query.
pub fn contents_sql(plan: &QueryPlan, table: &QualifiedName) -> String {
    let cols: Vec<String> = plan
        .columns
        .iter()
        .map(|c| qc("__shoal_t", &c.name))
        .collect();
    let bag = match plan.differential() {
        Some(d) => d.grouping.is_none() && !d.distinct,
        None => true,
    };
    if bag {
        format!(
            "SELECT {} FROM {} AS {} CROSS JOIN LATERAL generate_series(1, {}) AS {}",
            cols.join(", "),
            table.quoted(),
            qi("__shoal_t"),
            qc("__shoal_t", COUNT_COLUMN),
            qi("__shoal_i")
        )
    } else {
        let having = plan
            .differential()
            .and_then(|d| d.grouping.as_ref())
            .and_then(|g| g.having.as_deref())
            .map(|h| format!(" WHERE {h}"))
            .unwrap_or_default();
        format!(
            "SELECT {} FROM {} AS {}{having}",
            cols.join(", "),
            table.quoted(),
            qi("__shoal_t")
        )
    }
}
