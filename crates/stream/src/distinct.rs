//! `count(DISTINCT x)` kept exactly from deltas. For each such aggregate of a grouped query a
//! *values table* beside the storage table (`shoal.stream_<id>_values_<n>`) holds every group's
//! distinct non-NULL values with the number of rows that have each. A delta changes the distinct
//! count of a group by the values that appear (no rows before, some after) minus those that
//! vanish (some before, none after), which the values table tells without reading the sources:
//! a refresh costs what its delta costs, where recomputing the touched groups from the sources
//! reads all their rows through the nodes.
//!
//! A refresh first merges the storage table, reading the values table's old counts, then merges
//! the per-(group, value) deltas into the values table; a full refresh fills both.

use crate::expr::AggFunc;
use crate::plan::{Differential, Grouping, QueryPlan};
use crate::refresh::{
    delta_terms, from_where, k, qc, qi, row_hash, x, DeltaRelations, COUNT_COLUMN, DELTA_COLUMN,
    ROW_ID_COLUMN,
};
use shoal_sql::{derived_name, QualifiedName};

/// The value column of a values table.
const VALUE_COLUMN: &str = "__shoal_value";

/// The values table of aggregate `j` of the stream table stored in `storage`.
pub fn values_table(storage: &QualifiedName, j: usize) -> QualifiedName {
    QualifiedName::new(
        &storage.schema,
        derived_name(&storage.name, &format!("values_{}", j + 1)),
    )
}

/// The aggregates kept by a values table, by index.
pub(crate) fn counted(g: &Grouping) -> impl Iterator<Item = usize> + '_ {
    g.aggregates
        .iter()
        .enumerate()
        .filter(|(_, a)| a.func == AggFunc::CountDistinct)
        .map(|(j, _)| j)
}

/// The values tables a stream table's storage comes with.
pub fn values_tables(plan: &QueryPlan, storage: &QualifiedName) -> Vec<QualifiedName> {
    values_ddl_by_table(plan, storage)
        .into_iter()
        .map(|(table, _)| table)
        .collect()
}

fn arg(g: &Grouping, j: usize) -> &str {
    g.aggregates[j].arg.as_deref().unwrap_or("NULL")
}

fn key_columns(g: &Grouping) -> Vec<String> {
    (0..g.keys.len()).map(|i| qi(&k(i))).collect()
}

/// The columns a values table is looked up by: its group key columns and its value.
fn lookup_columns(g: &Grouping) -> Vec<String> {
    let mut cols = key_columns(g);
    cols.push(qi(VALUE_COLUMN));
    cols
}

/// The query over the sources' new state that a values table holds the result of.
fn values_query(d: &Differential, g: &Grouping, j: usize, extra: &str) -> String {
    let mut items: Vec<String> = g
        .keys
        .iter()
        .enumerate()
        .map(|(i, key)| format!("{} AS {}", key.expr, qi(&k(i))))
        .collect();
    let value = arg(g, j);
    items.push(format!("{value} AS {}", qi(VALUE_COLUMN)));
    items.push(format!("count(*)::bigint AS {}", qi(COUNT_COLUMN)));
    let positions: Vec<String> = (1..=g.keys.len() + 1).map(|p| p.to_string()).collect();
    format!(
        "SELECT {} {} GROUP BY {}{extra}",
        items.join(", "),
        from_where(d, &[format!("({value}) IS NOT NULL")]),
        positions.join(", ")
    )
}

/// The values tables' DDL: created empty from their query (so their columns have the types of
/// the group keys and the argument), with the row hash refreshes look them up by.
pub(crate) fn values_ddl(d: &Differential, g: &Grouping, storage: &QualifiedName) -> Vec<String> {
    counted(g)
        .flat_map(|j| one_values_ddl(d, g, storage, j))
        .collect()
}

/// Each values table of a stream table with the statements that create it: for a storage made
/// before values tables were, which gets them at its next refresh (a full one, to fill them).
pub fn values_ddl_by_table(
    plan: &QueryPlan,
    storage: &QualifiedName,
) -> Vec<(QualifiedName, Vec<String>)> {
    let Some(d) = plan.differential().filter(|d| d.union.is_none()) else {
        return Vec::new();
    };
    let Some(g) = &d.grouping else {
        return Vec::new();
    };
    counted(g)
        .map(|j| (values_table(storage, j), one_values_ddl(d, g, storage, j)))
        .collect()
}

fn one_values_ddl(
    d: &Differential,
    g: &Grouping,
    storage: &QualifiedName,
    j: usize,
) -> Vec<String> {
    let mut stmts = Vec::new();
    {
        let table = values_table(storage, j);
        stmts.push(format!(
            "CREATE TABLE {} AS {} WITH NO DATA",
            table.quoted(),
            values_query(d, g, j, "")
        ));
        stmts.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL, ADD COLUMN {r} bigint \
             GENERATED ALWAYS AS ({h}) STORED",
            t = table.quoted(),
            c = qi(COUNT_COLUMN),
            r = qi(ROW_ID_COLUMN),
            h = row_hash(&lookup_columns(g)),
        ));
        stmts.push(format!(
            "CREATE INDEX {} ON {} ({})",
            qi(&crate::layout::key_index(&table.name)),
            table.quoted(),
            qi(ROW_ID_COLUMN)
        ));
    }
    stmts
}

/// A full refresh of the values tables.
pub(crate) fn values_fill(d: &Differential, g: &Grouping, storage: &QualifiedName) -> Vec<String> {
    let mut stmts = Vec::new();
    for j in counted(g) {
        let table = values_table(storage, j);
        let mut cols = lookup_columns(g);
        cols.push(qi(COUNT_COLUMN));
        stmts.push(format!("TRUNCATE {}", table.quoted()));
        stmts.push(format!(
            "INSERT INTO {} ({}) {}",
            table.quoted(),
            cols.join(", "),
            values_query(d, g, j, "")
        ));
    }
    stmts
}

/// `ON` of a values table row (`__shoal_v`) with a per-(group, value) delta row `alias` that
/// has the key columns, the value as `value`, and its lookup hash as `rid`.
fn values_on(g: &Grouping, alias: &str, value: &str, rid: &str) -> String {
    let mut on = vec![format!(
        "{} = {}",
        qc("__shoal_v", ROW_ID_COLUMN),
        qc(alias, rid)
    )];
    for i in 0..g.keys.len() {
        on.push(format!(
            "{} IS NOT DISTINCT FROM {}",
            qc("__shoal_v", &k(i)),
            qc(alias, &k(i))
        ));
    }
    on.push(format!(
        "{} = {}",
        qc("__shoal_v", VALUE_COLUMN),
        qc(alias, value)
    ));
    on.join(" AND ")
}

/// `SELECT keys, value, summed delta, lookup hash FROM "__shoal_d"` for aggregate `j`: the
/// per-(group, value) deltas that change a row count.
fn value_deltas(g: &Grouping, j: usize) -> String {
    let mut ks = key_columns(g);
    let xj = qi(&x(j));
    let delta = qi(DELTA_COLUMN);
    let mut hashed = ks.clone();
    hashed.push(xj.clone());
    let hash = row_hash(&hashed);
    ks.push(xj.clone());
    format!(
        "SELECT {ks}, sum({delta})::bigint AS {dc}, {hash} AS {rid} FROM {d} \
         WHERE {xj} IS NOT NULL GROUP BY {ks} HAVING sum({delta}) <> 0",
        ks = ks.join(", "),
        dc = qi("__shoal_dc"),
        rid = qi("__shoal_vrid"),
        d = qi("__shoal_d"),
    )
}

/// The CTEs, over the refresh's `"__shoal_d"`, giving per group the change of aggregate `j`'s
/// distinct count (`"__shoal_dd<n>"` in `"__shoal_cv<n>"`, with the group's row hash as
/// `"__shoal_rid"`), from the values table's counts before the refresh.
pub(crate) fn count_change_ctes(g: &Grouping, j: usize, storage: &QualifiedName) -> Vec<String> {
    let n = j + 1;
    let dv = qi(&format!("__shoal_dv{n}"));
    let dv_name = format!("__shoal_dv{n}");
    let old = qc("__shoal_v", COUNT_COLUMN);
    let dc = qc(&dv_name, "__shoal_dc");
    let dv_keys: Vec<String> = (0..g.keys.len()).map(|i| qc(&dv_name, &k(i))).collect();
    let mut items = dv_keys.clone();
    items.push(format!(
        "sum(CASE WHEN {old} IS NULL THEN 1 WHEN {old} + {dc} <= 0 THEN -1 ELSE 0 END)::bigint \
         AS {}",
        qi(&format!("__shoal_dd{n}"))
    ));
    items.push(format!("{} AS {}", row_hash(&dv_keys), qi("__shoal_rid")));
    let group_by = if dv_keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", dv_keys.join(", "))
    };
    vec![
        format!("{dv} AS ({})", value_deltas(g, j)),
        format!(
            "{} AS (SELECT {} FROM {dv} LEFT JOIN {} AS {} ON {}{group_by})",
            qi(&format!("__shoal_cv{n}")),
            items.join(", "),
            values_table(storage, j).quoted(),
            qi("__shoal_v"),
            values_on(g, &dv_name, &x(j), "__shoal_vrid"),
        ),
    ]
}

/// The merges of the refresh's per-(group, value) deltas into the values tables, after the
/// storage table's merge has read their old counts.
pub(crate) fn values_merges(
    d: &Differential,
    g: &Grouping,
    storage: &QualifiedName,
    deltas: &[Option<&DeltaRelations>],
) -> Vec<String> {
    let mut stmts = Vec::new();
    for j in counted(g) {
        let mut items: Vec<(String, String)> = g
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| (k(i), key.expr.clone()))
            .collect();
        items.push((x(j), arg(g, j).to_string()));
        let Some(terms) = delta_terms(d, &items, deltas) else {
            continue;
        };
        let s = |col: &str| qc("__shoal_s", col);
        let mut cols = lookup_columns(g);
        cols.push(qi(COUNT_COLUMN));
        let mut vals: Vec<String> = (0..g.keys.len()).map(|i| s(&k(i))).collect();
        vals.push(s(&x(j)));
        vals.push(s("__shoal_dc"));
        stmts.push(format!(
            "WITH {dcte} AS ({terms}) MERGE INTO {table} AS {v} USING ({deltas}) AS {salias} \
             ON {on} \
             WHEN MATCHED AND {count} + {dc} <= 0 THEN DELETE \
             WHEN MATCHED THEN UPDATE SET {count_col} = {count} + {dc} \
             WHEN NOT MATCHED AND {dc} > 0 THEN INSERT ({cols}) VALUES ({vals})",
            dcte = qi("__shoal_d"),
            table = values_table(storage, j).quoted(),
            v = qi("__shoal_v"),
            deltas = value_deltas(g, j),
            salias = qi("__shoal_s"),
            on = values_on(g, "__shoal_s", &x(j), "__shoal_vrid"),
            count = qc("__shoal_v", COUNT_COLUMN),
            count_col = qi(COUNT_COLUMN),
            dc = s("__shoal_dc"),
            cols = cols.join(", "),
            vals = vals.join(", "),
        ));
    }
    stmts
}
