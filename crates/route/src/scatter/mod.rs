//! Reads over every shard, split in two: each node answers for its shards (one partial row
//! per shard and group), and PostgreSQL merges the partials, so the final values have exactly
//! its types, rounding and output (counts and sums added, minima of minima, averages as the sum
//! of sums over the sum of counts).
//!
//! Shapes taken, over one distributed table or a join that runs shard by shard (colocated
//! tables joined on their distribution columns, reference tables by their replicas on the
//! nodes; see `statement::shardwise`), with any WHERE the nodes answer alike:
//!
//! - grouping expressions and `count`, `sum`, `min`, `max`, `avg` of one argument (or
//!   `count(*)`), DISTINCT only over a distribution column (its values never span shards),
//!   with HAVING over the merged values;
//! - grouping by a distribution column: every group is whole on one shard, so each shard
//!   answers the query as written (any aggregate, HAVING) and the merge only sorts and limits;
//! - a sorted limit without aggregates: each shard's first rows, merged.
//!
//! ORDER BY (positions, output names, or output expressions) and constant LIMIT/OFFSET apply
//! to the merged rows. Parameters may appear in WHERE and FROM, which every shard's statement
//! keeps as written. Anything else is the coordinator's.

mod having;
mod syntax;
#[cfg(test)]
mod tests;

use pg_query::protobuf::{FuncCall, ResTarget};
use pg_query::{Node, NodeEnum};

use crate::statement::{NotRoutable, Shardwise};
use crate::topology::Topology;
use shoal_sql::{quote_ident, QualifiedName};
use syntax::{
    aggregate_call, contains_aggregate, function_name, integer, is_null, order_keys, output_name,
    position, same, type_sql,
};

/// A split read: the statement for each node, and how to merge what they return.
#[derive(Debug, Clone)]
pub struct Scatter {
    /// Per node, the statement of each of its shards (see [`Scatter::per_node`]).
    pub shard_statements: Vec<(i32, Vec<String>)>,
    /// Partial columns, in order: the grouping expressions, then the partial aggregates.
    pub partial_columns: usize,
    /// The merging statement, over `{partials}` (a relation `p(c0, c1, ...)` of typed rows).
    pub merge: String,
    /// The relations it reads, for the caller's privilege check.
    pub tables: Vec<QualifiedName>,
    /// Whether the shards' statements take the client's parameters (`$1`, ... in WHERE or
    /// FROM): then they run by the extended protocol with the client's values.
    pub parameters: bool,
}

/// An output column of the query.
enum Output {
    /// Partial column `i` as it is (a grouping expression, a sorted limit's column, or a
    /// whole group's final value).
    Column(usize),
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

impl Merge {
    /// The merged value, over the partials `p`.
    fn sql(&self) -> String {
        let column = |i: &usize| format!("p.c{i}");
        match self {
            Merge::Count(i) => format!("sum({})::bigint", column(i)),
            // `{tN}`: the partial column's type, known once the nodes answered.
            Merge::Sum(i) => format!("sum({})::{{t{i}}}", column(i)),
            Merge::Min(i) => format!("min({})", column(i)),
            Merge::Max(i) => format!("max({})", column(i)),
            Merge::Avg { sum, count } => {
                format!("(sum({}) / nullif(sum({}), 0))", column(sum), column(count))
            }
        }
    }
}

fn refuse<T>(reason: &str) -> Result<T, NotRoutable> {
    Err(NotRoutable(reason.to_string()))
}

/// The partial columns an aggregate needs (added to `partials`), and how they merge.
fn split_aggregate(
    call: &FuncCall,
    from: &Shardwise,
    partials: &mut Vec<Node>,
) -> Result<Merge, NotRoutable> {
    let name = function_name(call).ok_or_else(|| NotRoutable("unknown function".into()))?;
    if call.agg_filter.is_some()
        || !call.agg_order.is_empty()
        || call.over.is_some()
        || call.agg_within_group
        || call.func_variadic
        || (!call.agg_star && call.args.len() != 1)
        || call.args.iter().any(contains_aggregate)
    {
        return refuse("an aggregate's form is not split across shards");
    }
    // Distinct values of a distribution column are distinct across shards too.
    if call.agg_distinct && !call.args.iter().all(|a| from.is_row_key(a)) {
        return refuse("an aggregate of distinct values other than a distribution column's");
    }
    let mut add = |function: &str| {
        partials.push(aggregate_call(call, function));
        partials.len() - 1
    };
    Ok(match name.as_str() {
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
    })
}

/// Plans `sql` as a read split across shards.
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
        || !select.window_clause.is_empty()
        || !select.locking_clause.is_empty()
        || select.into_clause.is_some()
        || !select.values_lists.is_empty()
        || select.group_distinct
    {
        return refuse("its shape is not split across shards");
    }
    // Nothing nested, nothing the nodes answer differently. Parameters only where every
    // shard's statement carries them as written (the nodes get the client's values), never in
    // what the merge computes.
    let json = serde_json::to_value(raw.stmt.as_deref()).unwrap_or_default();
    let has_parameter = |nodes: &[&Node]| {
        nodes
            .iter()
            .any(|n| serde_json::to_string(n).is_ok_and(|text| text.contains("\"ParamRef\"")))
    };
    let merged: Vec<&Node> = select
        .target_list
        .iter()
        .chain(&select.group_clause)
        .chain(&select.sort_clause)
        .chain(select.having_clause.as_deref())
        .chain(select.limit_count.as_deref())
        .chain(select.limit_offset.as_deref())
        .collect();
    if has_parameter(&merged) {
        return refuse("it has parameters outside WHERE and FROM");
    }
    let from = Shardwise::of(&select, topology)?;
    crate::statement::scan_for_scatter(&json, topology, from.relation_count())?;

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
    let names: Vec<String> = targets.iter().map(output_name).collect::<Result<_, _>>()?;
    let order = order_keys(&select, &targets, &names)?;
    let limit = |n: &Option<Box<Node>>| -> Result<Option<i64>, NotRoutable> {
        match n.as_deref() {
            None => Ok(None),
            Some(node) if is_null(node) => Ok(None),
            Some(node) => integer(node)
                .map(Some)
                .ok_or_else(|| NotRoutable("a LIMIT or OFFSET that is not a constant".into())),
        }
    };
    let (limit_count, limit_offset) = (limit(&select.limit_count)?, limit(&select.limit_offset)?);
    // Each shard's first LIMIT + OFFSET rows hold the merged first LIMIT (after OFFSET).
    let shard_limit = limit_count.map(|l| l + limit_offset.unwrap_or(0));

    let whole_groups = groups.iter().any(|g| from.is_row_key(g));
    let top_k = groups.is_empty()
        && order.is_some()
        && limit_count.is_some()
        && targets
            .iter()
            .all(|t| t.val.as_deref().is_some_and(|v| !contains_aggregate(v)));

    let mut partials: Vec<Node> = Vec::new();
    let mut outputs = Vec::new();
    // A cast of an output applies to its merged value.
    let mut casts: Vec<Option<String>> = Vec::new();
    let mut having = None;
    if whole_groups || top_k {
        // The shards compute the outputs as written; the merge sorts and limits them.
        for target in &targets {
            let written = target
                .val
                .as_deref()
                .ok_or_else(|| NotRoutable("empty output".into()))?;
            if top_k && matches!(written.node, Some(NodeEnum::TypeCast(_))) {
                // The shards would sort the value before the cast, the merge after it.
                return refuse("a sorted limit of cast outputs");
            }
            partials.push(written.clone());
            outputs.push(Output::Column(partials.len() - 1));
            casts.push(None);
        }
    } else {
        if groups.is_empty()
            && !targets
                .iter()
                .any(|t| t.val.as_deref().is_some_and(contains_aggregate))
        {
            return refuse("it reads rows of every shard, without an aggregate or a sorted LIMIT");
        }
        partials.extend(groups.iter().cloned());
        for target in &targets {
            let written = target
                .val
                .as_deref()
                .ok_or_else(|| NotRoutable("empty output".into()))?;
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
                outputs.push(Output::Column(i));
                continue;
            }
            let Some(NodeEnum::FuncCall(call)) = &value.node else {
                return refuse("an output is neither grouped nor an aggregate");
            };
            outputs.push(Output::Aggregate(split_aggregate(
                call,
                &from,
                &mut partials,
            )?));
        }
        if !outputs.iter().any(|o| matches!(o, Output::Aggregate(_))) {
            return refuse("it aggregates nothing");
        }
        if let Some(condition) = select.having_clause.as_deref() {
            having = Some(having::merged(condition, &groups, |call| {
                Ok(split_aggregate(call, &from, &mut partials)?.sql())
            })?);
        }
    }

    // Each shard's partial statement, one per node over its shards.
    let mut partial = select.clone();
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
    if !whole_groups {
        partial.group_clause = groups.clone();
        partial.having_clause = None;
    }
    partial.sort_clause = Vec::new();
    partial.limit_count = None;
    partial.limit_offset = None;
    partial.limit_option = pg_query::protobuf::LimitOption::Default as i32;
    let partial = NodeEnum::SelectStmt(Box::new(partial));
    let mut per_node: Vec<(i32, Vec<String>)> = Vec::new();
    for (index, node) in from.shard_nodes() {
        let mut sql = from.for_shard(&partial, index)?;
        if let (true, Some(limit), Some(keys)) = (whole_groups || top_k, shard_limit, &order) {
            sql = format!("({sql} ORDER BY {keys} LIMIT {limit})");
        }
        match per_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, list)) => list.push(sql),
            None => per_node.push((node, vec![sql])),
        }
    }

    // The merge, over the partials.
    let finals: Vec<String> = outputs
        .iter()
        .zip(&names)
        .zip(&casts)
        .map(|((output, name), cast)| {
            let expression = match output {
                Output::Column(i) => format!("p.c{i}"),
                Output::Aggregate(merge) => merge.sql(),
            };
            match cast {
                Some(ty) => format!("({expression})::{ty} AS {}", quote_ident(name)),
                None => format!("{expression} AS {}", quote_ident(name)),
            }
        })
        .collect();
    let mut merge = format!("SELECT {} FROM {{partials}}", finals.join(", "));
    if !groups.is_empty() && !whole_groups {
        let keys: Vec<String> = (0..groups.len()).map(|i| format!("p.c{i}")).collect();
        merge.push_str(&format!(" GROUP BY {}", keys.join(", ")));
    }
    if let Some(condition) = having {
        merge.push_str(&format!(" HAVING {condition}"));
    }
    if let Some(keys) = &order {
        merge.push_str(&format!(" ORDER BY {keys}"));
    }
    if let Some(n) = limit_count {
        merge.push_str(&format!(" LIMIT {n}"));
    }
    if let Some(n) = limit_offset {
        merge.push_str(&format!(" OFFSET {n}"));
    }
    Ok(Scatter {
        shard_statements: per_node,
        partial_columns: partials.len(),
        merge,
        tables: from.tables(),
        parameters: json.to_string().contains("\"ParamRef\""),
    })
}

impl Scatter {
    /// Per node, one statement over all its shards: their partials, UNION ALL.
    pub fn per_node(&self) -> Vec<(i32, String)> {
        self.per_connection(1)
    }

    /// Per node, up to `connections` statements that share its shards between them as evenly
    /// as shard counts allow (contiguous runs, none empty), for that many connections to run
    /// at once: a node with several cores answers in a fraction of one connection's time.
    pub fn per_connection(&self, connections: usize) -> Vec<(i32, String)> {
        let mut statements = Vec::new();
        for (node, parts) in &self.shard_statements {
            let count = connections.clamp(1, parts.len().max(1));
            let (base, extra) = (parts.len() / count, parts.len() % count);
            let mut start = 0;
            for i in 0..count {
                let end = start + base + usize::from(i < extra);
                statements.push((*node, parts[start..end].join(" UNION ALL ")));
                start = end;
            }
        }
        statements
    }

    /// The merging statement for people to read: the partial rows named as such, and each
    /// type the nodes' answer fixes as `<type of cN>`.
    pub fn merge_shown(&self) -> String {
        let columns: Vec<String> = (0..self.partial_columns).map(|i| format!("c{i}")).collect();
        let mut sql = self.merge.replace(
            "{partials}",
            &format!("<the nodes' rows> p({})", columns.join(", ")),
        );
        for i in 0..self.partial_columns {
            sql = sql.replace(&format!("{{t{i}}}"), &format!("<type of c{i}>"));
        }
        sql
    }

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
