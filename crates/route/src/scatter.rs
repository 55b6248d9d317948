//! Aggregates over every shard of a distributed table, split in two: each node aggregates its
//! shards (one partial row per shard and group), and PostgreSQL merges the partials, so the
//! final values have exactly its types, rounding and output (counts and sums added, minima of
//! minima, averages as the sum of sums over the sum of counts).
//!
//! Shapes taken: `SELECT` from one distributed table, any WHERE the nodes answer alike,
//! grouping expressions and `count`, `sum`, `min`, `max`, `avg` of one argument (or
//! `count(*)`), with ORDER BY (positions, output names, or output expressions) and constant
//! LIMIT/OFFSET applied to the merged rows. Anything else is the coordinator's.

use pg_query::protobuf::{a_const, AConst, ColumnRef, FuncCall, RangeVar, ResTarget};
use pg_query::{Node, NodeEnum};
use serde_json::Value;

use crate::statement::NotRoutable;
use crate::topology::{Placement, Topology};
use shoal_sql::{quote_ident, QualifiedName};

/// A split aggregate: the statement for each node, and how to merge what they return.
#[derive(Debug, Clone)]
pub struct Scatter {
    /// Per node, one statement over all its shards (their partials, UNION ALL).
    pub per_node: Vec<(i32, String)>,
    /// Partial columns, in order: the grouping expressions, then the partial aggregates.
    pub partial_columns: usize,
    /// The merging statement, over `{partials}` (a relation `p(c0, c1, ...)` of typed rows).
    pub merge: String,
    /// The relation it reads, for the caller's privilege check.
    pub table: QualifiedName,
}

/// An output column of the query.
enum Output {
    /// Grouping expression number `i` (partial column `ci`).
    Group(usize),
    /// An aggregate merged from partial columns.
    Aggregate(Merge),
}

enum Merge {
    /// `sum` of the partial counts, back to bigint.
    Count(usize),
    /// `sum` of the partial sums, in the partials' type.
    Sum(usize),
    Min(usize),
    Max(usize),
    /// Sum of the sums over the sum of the counts.
    Avg {
        sum: usize,
        count: usize,
    },
}

fn refuse<T>(reason: &str) -> Result<T, NotRoutable> {
    Err(NotRoutable(reason.to_string()))
}

/// Plans `sql` as a split aggregate.
pub fn plan_scatter(sql: &str, topology: &Topology) -> Result<Scatter, NotRoutable> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| NotRoutable(format!("parse: {e}")))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return refuse("it is not one statement");
    };
    let Some(NodeEnum::SelectStmt(select)) = raw.stmt.as_ref().and_then(|s| s.node.clone()) else {
        return refuse("only SELECT is split across shards");
    };
    let select = *select;
    if select.op != pg_query::protobuf::SetOperation::SetopNone as i32
        || select.with_clause.is_some()
        || !select.distinct_clause.is_empty()
        || select.having_clause.is_some()
        || !select.window_clause.is_empty()
        || !select.locking_clause.is_empty()
        || select.into_clause.is_some()
        || !select.values_lists.is_empty()
        || select.group_distinct
    {
        return refuse("its shape is not split across shards");
    }
    // Nothing nested, nothing the nodes answer differently, no parameters.
    let json = serde_json::to_value(raw.stmt.as_deref()).unwrap_or_default();
    if json.to_string().contains("\"ParamRef\"") {
        return refuse("it has parameters");
    }
    crate::statement::scan_for_scatter(&json, topology)?;
    let [from] = select.from_clause.as_slice() else {
        return refuse("it reads more than one relation");
    };
    let Some(NodeEnum::RangeVar(range)) = &from.node else {
        return refuse("it reads something other than a table");
    };
    let Some((table, entry)) = topology.resolve(&range.schemaname, &range.relname) else {
        return refuse("it reads a table Shoal does not know");
    };
    let Placement::Distributed(distribution) = &entry.placement else {
        return refuse("its table is not distributed");
    };
    let visible = range
        .alias
        .as_ref()
        .map_or_else(|| range.relname.clone(), |a| a.aliasname.clone());

    // Grouping expressions: as written, or by output position.
    let targets: Vec<ResTarget> = select
        .target_list
        .iter()
        .map(|n| match &n.node {
            Some(NodeEnum::ResTarget(t)) => Ok((**t).clone()),
            _ => refuse("it has an unreadable output"),
        })
        .collect::<Result<_, _>>()?;
    let mut groups: Vec<Node> = Vec::new();
    for item in &select.group_clause {
        let expression = match position(item) {
            Some(p) => targets
                .get(p.wrapping_sub(1))
                .and_then(|t| t.val.as_deref().cloned())
                .ok_or_else(|| NotRoutable("GROUP BY position out of range".into()))?,
            None => item.clone(),
        };
        if contains_aggregate(&expression) {
            return refuse("it groups by an aggregate");
        }
        groups.push(expression);
    }

    // Outputs, and the partial columns behind them.
    let mut partials: Vec<Node> = groups.clone();
    let mut outputs = Vec::new();
    let mut names = Vec::new();
    // A cast of an output applies to its merged value.
    let mut casts: Vec<Option<String>> = Vec::new();
    // No aggregate, no grouping, a sorted limit: each shard's first rows, merged (top-k).
    let top_k = groups.is_empty()
        && !select.sort_clause.is_empty()
        && select
            .limit_count
            .as_deref()
            .is_some_and(|l| integer(l).is_some())
        && targets
            .iter()
            .all(|t| t.val.as_deref().is_some_and(|v| !contains_aggregate(v)));
    for target in &targets {
        let written = target
            .val
            .as_deref()
            .ok_or_else(|| NotRoutable("empty output".into()))?;
        if top_k {
            if matches!(written.node, Some(NodeEnum::TypeCast(_))) {
                // The shards would sort the value before the cast, the merge after it.
                return refuse("a sorted limit of cast outputs");
            }
            names.push(output_name(target)?);
            casts.push(None);
            partials.push(written.clone());
            outputs.push(Output::Group(partials.len() - 1));
            continue;
        }
        names.push(output_name(target)?);
        let value = match &written.node {
            Some(NodeEnum::TypeCast(cast)) => {
                let type_name = cast
                    .type_name
                    .clone()
                    .ok_or_else(|| NotRoutable("a cast".into()))?;
                casts.push(Some(type_sql(type_name)?));
                cast.arg
                    .as_deref()
                    .ok_or_else(|| NotRoutable("a cast".into()))?
            }
            _ => {
                casts.push(None);
                written
            }
        };
        if let Some(i) = groups.iter().position(|g| same(g, value)) {
            outputs.push(Output::Group(i));
            continue;
        }
        let Some(NodeEnum::FuncCall(call)) = &value.node else {
            return refuse("an output is neither grouped nor an aggregate");
        };
        let name = function_name(call).ok_or_else(|| NotRoutable("unknown function".into()))?;
        if call.agg_distinct
            || call.agg_filter.is_some()
            || !call.agg_order.is_empty()
            || call.over.is_some()
            || call.agg_within_group
            || call.func_variadic
            || (!call.agg_star && call.args.len() != 1)
            || call.args.iter().any(contains_aggregate)
        {
            return refuse("an aggregate's form is not split across shards");
        }
        let mut add = |function: &str| {
            partials.push(aggregate_call(call, function));
            partials.len() - 1
        };
        let merge = match name.as_str() {
            "count" => Merge::Count(add("count")),
            "sum" => Merge::Sum(add("sum")),
            "min" => Merge::Min(add("min")),
            "max" => Merge::Max(add("max")),
            "avg" if !call.agg_star => {
                let sum = add("sum");
                let count = add("count");
                Merge::Avg { sum, count }
            }
            _ => return refuse("an aggregate other than count, sum, min, max, avg"),
        };
        outputs.push(Output::Aggregate(merge));
    }
    if !top_k && !outputs.iter().any(|o| matches!(o, Output::Aggregate(_))) {
        return refuse("it aggregates nothing");
    }
    let order = order_keys(&select, &targets, &names)?;
    // A top-k's shards return their first LIMIT + OFFSET rows.
    let shard_limit = if top_k {
        let value = |n: &Option<Box<Node>>| n.as_deref().and_then(integer).unwrap_or(0);
        Some(value(&select.limit_count) + value(&select.limit_offset))
    } else {
        None
    };

    // Each shard's partial statement, one per node over its shards.
    let mut per_node: Vec<(i32, Vec<String>)> = Vec::new();
    for shard in &distribution.shards {
        let mut partial = select.clone();
        let mut relation = range_of(from).clone();
        relation.schemaname = shard.table.schema.clone();
        relation.relname = shard.table.name.clone();
        relation.alias = Some(pg_query::protobuf::Alias {
            aliasname: visible.clone(),
            colnames: Vec::new(),
        });
        partial.from_clause = vec![Node {
            node: Some(NodeEnum::RangeVar(relation)),
        }];
        partial.target_list = partials
            .iter()
            .enumerate()
            .map(|(i, expression)| Node {
                node: Some(NodeEnum::ResTarget(Box::new(ResTarget {
                    name: format!("c{i}"),
                    indirection: Vec::new(),
                    val: Some(Box::new(expression.clone())),
                    location: -1,
                }))),
            })
            .collect();
        partial.group_clause = groups.clone();
        partial.sort_clause = Vec::new();
        partial.limit_count = None;
        partial.limit_offset = None;
        partial.limit_option = pg_query::protobuf::LimitOption::Default as i32;
        let mut sql = NodeEnum::SelectStmt(Box::new(partial))
            .deparse(Default::default())
            .map_err(|e| NotRoutable(format!("could not write the partial statement: {e}")))?;
        if let (Some(limit), Some(keys)) = (shard_limit, &order) {
            sql = format!("({sql} ORDER BY {keys} LIMIT {limit})");
        }
        match per_node.iter_mut().find(|(n, _)| *n == shard.node) {
            Some((_, list)) => list.push(sql),
            None => per_node.push((shard.node, vec![sql])),
        }
    }
    let per_node = per_node
        .into_iter()
        .map(|(node, parts)| (node, parts.join(" UNION ALL ")))
        .collect();

    // The merge, over the partials.
    let column = |i: usize| format!("p.c{i}");
    let finals: Vec<String> = outputs
        .iter()
        .zip(&names)
        .zip(&casts)
        .map(|((output, name), cast)| {
            let expression = match output {
                Output::Group(i) => column(*i),
                Output::Aggregate(Merge::Count(i)) => format!("sum({})::bigint", column(*i)),
                // `{tN}`: the partial column's type, known once the nodes answered.
                Output::Aggregate(Merge::Sum(i)) => format!("sum({})::{{t{i}}}", column(*i)),
                Output::Aggregate(Merge::Min(i)) => format!("min({})", column(*i)),
                Output::Aggregate(Merge::Max(i)) => format!("max({})", column(*i)),
                Output::Aggregate(Merge::Avg { sum, count }) => format!(
                    "(sum({}) / nullif(sum({}), 0))",
                    column(*sum),
                    column(*count)
                ),
            };
            match cast {
                Some(ty) => format!("({expression})::{ty} AS {}", quote_ident(name)),
                None => format!("{expression} AS {}", quote_ident(name)),
            }
        })
        .collect();
    let mut merge = format!("SELECT {} FROM {{partials}}", finals.join(", "));
    if !groups.is_empty() {
        let keys: Vec<String> = (0..groups.len()).map(column).collect();
        merge.push_str(&format!(" GROUP BY {}", keys.join(", ")));
    }
    if let Some(keys) = &order {
        merge.push_str(&format!(" ORDER BY {keys}"));
    }
    for (clause, value) in [
        ("LIMIT", &select.limit_count),
        ("OFFSET", &select.limit_offset),
    ] {
        if let Some(node) = value.as_deref() {
            match integer(node) {
                Some(n) => merge.push_str(&format!(" {clause} {n}")),
                None if is_null(node) => {}
                None => return refuse("a LIMIT or OFFSET that is not a constant"),
            }
        }
    }
    Ok(Scatter {
        per_node,
        partial_columns: partials.len(),
        merge,
        table,
    })
}

impl Scatter {
    /// The merging statement over these partial rows (text values, or NULL), typed by the
    /// type names of the partial columns.
    pub fn merge_sql(&self, types: &[String], rows: &[Vec<Option<String>>]) -> String {
        let columns: Vec<String> = (0..self.partial_columns).map(|i| format!("c{i}")).collect();
        let typed = |i: usize, value: &Option<String>| match value {
            Some(text) => format!("{}::{}", shoal_sql::quote_literal(text), types[i]),
            None => format!("NULL::{}", types[i]),
        };
        let source = if rows.is_empty() {
            let nulls: Vec<String> = (0..self.partial_columns).map(|i| typed(i, &None)).collect();
            format!("(SELECT {} WHERE false)", nulls.join(", "))
        } else {
            let values: Vec<String> = rows
                .iter()
                .map(|row| {
                    let cells: Vec<String> =
                        row.iter().enumerate().map(|(i, v)| typed(i, v)).collect();
                    format!("({})", cells.join(", "))
                })
                .collect();
            format!("(VALUES {})", values.join(", "))
        };
        let mut sql = self
            .merge
            .replace("{partials}", &format!("{source} p({})", columns.join(", ")));
        for (i, ty) in types.iter().enumerate() {
            sql = sql.replace(&format!("{{t{i}}}"), ty);
        }
        sql
    }
}

/// ORDER BY as output positions, for the merge (and a top-k's partials).
fn order_keys(
    select: &pg_query::protobuf::SelectStmt,
    targets: &[ResTarget],
    names: &[String],
) -> Result<Option<String>, NotRoutable> {
    if select.sort_clause.is_empty() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for item in &select.sort_clause {
        let Some(NodeEnum::SortBy(sort)) = &item.node else {
            return refuse("an unreadable ORDER BY");
        };
        if !sort.use_op.is_empty() {
            return refuse("ORDER BY ... USING");
        }
        let node = sort
            .node
            .as_deref()
            .ok_or_else(|| NotRoutable("empty ORDER BY".into()))?;
        let at = match position(node) {
            Some(p) if p >= 1 && p <= targets.len() => p,
            Some(_) => return refuse("ORDER BY position out of range"),
            None => match output_reference(node, names) {
                Some(p) => p,
                None => targets
                    .iter()
                    .position(|t| t.val.as_deref().is_some_and(|v| same(v, node)))
                    .map(|p| p + 1)
                    .ok_or_else(|| NotRoutable("ORDER BY something not in the output".into()))?,
            },
        };
        let direction = match sort.sortby_dir {
            2 => " ASC",
            3 => " DESC",
            _ => "",
        };
        let nulls = match sort.sortby_nulls {
            2 => " NULLS FIRST",
            3 => " NULLS LAST",
            _ => "",
        };
        keys.push(format!("{at}{direction}{nulls}"));
    }
    Ok(Some(keys.join(", ")))
}

/// A type name as written (deparsed through a cast of NULL).
fn type_sql(type_name: pg_query::protobuf::TypeName) -> Result<String, NotRoutable> {
    let cast = pg_query::protobuf::TypeCast {
        arg: Some(Box::new(Node {
            node: Some(NodeEnum::AConst(AConst {
                isnull: true,
                location: -1,
                val: None,
            })),
        })),
        type_name: Some(type_name),
        location: -1,
    };
    let statement = pg_query::protobuf::SelectStmt {
        target_list: vec![Node {
            node: Some(NodeEnum::ResTarget(Box::new(ResTarget {
                name: String::new(),
                indirection: Vec::new(),
                val: Some(Box::new(Node {
                    node: Some(NodeEnum::TypeCast(Box::new(cast))),
                })),
                location: -1,
            }))),
        }],
        limit_option: pg_query::protobuf::LimitOption::Default as i32,
        op: pg_query::protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let sql = NodeEnum::SelectStmt(Box::new(statement))
        .deparse(Default::default())
        .map_err(|e| NotRoutable(format!("could not write a cast: {e}")))?;
    sql.strip_prefix("SELECT NULL::")
        .map(String::from)
        .ok_or_else(|| NotRoutable("an unreadable cast".into()))
}

fn range_of(node: &Node) -> &RangeVar {
    match &node.node {
        Some(NodeEnum::RangeVar(range)) => range,
        _ => unreachable!("checked above"),
    }
}

/// `count(x)`, `sum(x)`... with the original's argument (or `*`).
fn aggregate_call(call: &FuncCall, function: &str) -> Node {
    let mut partial = call.clone();
    partial.funcname = vec![Node {
        node: Some(NodeEnum::String(pg_query::protobuf::String {
            sval: function.to_string(),
        })),
    }];
    Node {
        node: Some(NodeEnum::FuncCall(Box::new(partial))),
    }
}

fn function_name(call: &FuncCall) -> Option<String> {
    let names: Vec<&str> = call
        .funcname
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        ["pg_catalog", name] | [name] => Some(name.to_string()),
        _ => None,
    }
}

/// The column name PostgreSQL gives an output: its alias, a column's name, a function's name,
/// else `?column?` for operators.
fn output_name(target: &ResTarget) -> Result<String, NotRoutable> {
    if !target.name.is_empty() {
        return Ok(target.name.clone());
    }
    match target.val.as_deref().and_then(|v| v.node.as_ref()) {
        Some(NodeEnum::ColumnRef(ColumnRef { fields, .. })) => {
            match fields.last().and_then(|f| f.node.as_ref()) {
                Some(NodeEnum::String(s)) => Ok(s.sval.clone()),
                _ => refuse("an output named by a star"),
            }
        }
        Some(NodeEnum::FuncCall(call)) => {
            function_name(call).ok_or_else(|| NotRoutable("unnamed output".into()))
        }
        Some(NodeEnum::AExpr(_)) => Ok("?column?".to_string()),
        // A cast takes its argument's name, or else its type's.
        Some(NodeEnum::TypeCast(cast)) => {
            let inner = ResTarget {
                name: String::new(),
                indirection: Vec::new(),
                val: cast.arg.clone(),
                location: -1,
            };
            match cast.arg.as_deref().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::ColumnRef(_)) | Some(NodeEnum::FuncCall(_)) => output_name(&inner),
                _ => cast
                    .type_name
                    .as_ref()
                    .and_then(|t| t.names.last())
                    .and_then(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| NotRoutable("an unnamed cast".into())),
            }
        }
        _ => refuse("an output whose name is not known here"),
    }
}

/// An ORDER BY naming an output column (its alias or name).
fn output_reference(node: &Node, names: &[String]) -> Option<usize> {
    let Some(NodeEnum::ColumnRef(ColumnRef { fields, .. })) = &node.node else {
        return None;
    };
    let [field] = fields.as_slice() else {
        return None;
    };
    let Some(NodeEnum::String(s)) = &field.node else {
        return None;
    };
    let matches: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == s.sval)
        .map(|(i, _)| i + 1)
        .collect();
    match matches.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

fn position(node: &Node) -> Option<usize> {
    integer(node).and_then(|n| usize::try_from(n).ok())
}

fn integer(node: &Node) -> Option<i64> {
    match &node.node {
        Some(NodeEnum::AConst(AConst {
            val: Some(a_const::Val::Ival(i)),
            ..
        })) => Some(i64::from(i.ival)),
        _ => None,
    }
}

fn is_null(node: &Node) -> bool {
    matches!(
        &node.node,
        Some(NodeEnum::AConst(AConst { isnull: true, .. }))
    )
}

/// Two expressions equal as written (locations aside).
fn same(a: &Node, b: &Node) -> bool {
    strip(serde_json::to_value(a).unwrap_or_default())
        == strip(serde_json::to_value(b).unwrap_or_default())
}

fn strip(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "location")
                .map(|(k, v)| (k, strip(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
        other => other,
    }
}

/// Whether an expression holds a function call: telling an aggregate from a plain function
/// needs the catalog, so any call counts.
fn contains_aggregate(node: &Node) -> bool {
    fn walk(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.contains_key("FuncCall") || map.values().any(walk),
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    walk(&serde_json::to_value(node).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use super::*;
    use crate::topology::{Distribution, Shard, Table};
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
                    })
                    .collect(),
            }),
        };
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
            ])),
            builtin_functions: Arc::new(
                ["count", "sum", "avg", "min", "max", "lower"]
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
        assert_eq!(scatter.per_node.len(), 2);
        let (node, sql) = &scatter.per_node[0];
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
            scatter.merge_sql(&["bigint".into()], &[vec![Some("3".into())], vec![Some("4".into())]]),
            "SELECT sum(p.c0)::bigint AS \"count\" FROM (VALUES ('3'::bigint), ('4'::bigint)) p(c0)"
        );
        assert_eq!(scatter.table, QualifiedName::new("public", "orders"));
    }

    #[test]
    fn groups_are_merged_with_their_aggregates() {
        let scatter = plan_scatter(
            "SELECT customer_id % 100, count(*), sum(amount) FROM orders WHERE amount > 5 GROUP BY 1",
            &topology(),
        )
        .unwrap();
        assert!(scatter.per_node[1].1.starts_with(
            "SELECT customer_id % 100 AS c0, count(*) AS c1, sum(amount) AS c2 FROM public.orders_101 \
             orders WHERE amount > 5 GROUP BY customer_id % 100 UNION ALL"
        ), "{}", scatter.per_node[1].1);
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
            scatter.per_node[0].1.starts_with(
                "SELECT customer_id AS c0, sum(amount) AS c1, count(amount) AS c2, max(id) AS c3 \
                 FROM public.orders_100 o GROUP BY customer_id"
            ),
            "{}",
            scatter.per_node[0].1
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
            scatter.per_node[0].1.starts_with(
                "(SELECT id AS c0, amount AS c1 FROM public.orders_100 orders WHERE amount > 1 \
                 ORDER BY 2 DESC, 1 LIMIT 12) UNION ALL (SELECT"
            ),
            "{}",
            scatter.per_node[0].1
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
        assert!(
            plan_scatter("SELECT id FROM orders ORDER BY amount LIMIT 3", &topology()).is_err()
        );
    }

    #[test]
    fn what_cannot_be_split_stays_with_the_coordinator() {
        for sql in [
            "SELECT count(DISTINCT customer_id) FROM orders",
            "SELECT customer_id, count(*) FROM orders GROUP BY customer_id HAVING count(*) > 1",
            "SELECT count(*) FROM orders o JOIN kinds k ON k.id = o.customer_id",
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
}
