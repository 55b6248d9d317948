//! Subqueries in FROM that filter and project one relation (`(SELECT o.id, o.amount * 2 AS a2
//! FROM orders o WHERE o.amount > 10) AS big`): a source like the relation itself, whose rows
//! are the relation's rows one by one, so its signed delta is the relation's delta through the
//! same SELECT, the sign passed along. Anything else in FROM parentheses (grouping, DISTINCT,
//! windows, limits, joins) changes rows in groups and is refused, naming what it has.

use pg_query::protobuf::{RangeSubselect, SelectStmt, SetOperation};
use pg_query::{Node, NodeEnum, NodeRef};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{
    contains_aggregate, deparse_expr, deparse_from_item, figure_colname, reserved, string_value,
    RowExprCheck, RESERVED_PREFIX,
};
use crate::plan::{Source, SourceRef, Subquery};
use crate::refresh::qi;

/// The source of a subquery in FROM, named `fallback_name` when it has no alias.
pub(crate) fn subquery_source(
    rs: &RangeSubselect,
    item: &Node,
    fallback_name: String,
) -> Result<Source, AnalyzeError> {
    let at = || Some(deparse_from_item(item));
    if rs.lateral {
        return Err(Unsupported::new("LATERAL subqueries", at()).into());
    }
    let Some(NodeEnum::SelectStmt(sel)) = rs.subquery.as_deref().and_then(|q| q.node.as_ref())
    else {
        return Err(Unsupported::new("subqueries in FROM of this kind", at()).into());
    };
    let (relation, inner_name) = relation_of(only_item(sel, false, at)?, at)?;
    let targets: Vec<&Node> = sel
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
            _ => None,
        })
        .collect();
    let inner = [inner_name.clone()];
    outer_references(sel, &inner, at)?;
    let star = |t: &&Node| {
        matches!(t.node.as_ref(), Some(NodeEnum::ColumnRef(c))
            if c.fields.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_)))))
    };
    if targets.iter().any(star) {
        // Its columns are the table's, which the analysis of the query text cannot list.
        return Err(Unsupported::new("`*` in a subquery", at())
            .hint("list the columns")
            .into());
    }
    let check = RowExprCheck {
        range_names: &inner,
        place: "a subquery in FROM",
    };
    for t in &targets {
        check.check(t)?;
    }
    let filter = sel
        .where_clause
        .as_deref()
        .map(|w| check.check(w).map(|()| deparse_expr(w)))
        .transpose()?;
    let (alias, colnames) = match &rs.alias {
        Some(a) => {
            if a.aliasname.starts_with(RESERVED_PREFIX) {
                return Err(reserved(&a.aliasname));
            }
            let names: Vec<String> = a
                .colnames
                .iter()
                .filter_map(string_value)
                .map(str::to_string)
                .collect();
            (a.aliasname.clone(), names)
        }
        None => (fallback_name, Vec::new()),
    };
    if colnames.len() > targets.len() {
        return Err(AnalyzeError::Invalid(format!(
            "`{alias}` names {} columns but its subquery has {}",
            colnames.len(),
            targets.len()
        )));
    }
    let mut select = Vec::new();
    for (i, (t, rt)) in targets.iter().zip(&sel.target_list).enumerate() {
        let given = match rt.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) if !r.name.is_empty() => Some(r.name.clone()),
            _ => None,
        };
        let name = colnames
            .get(i)
            .cloned()
            .or(given)
            .or_else(|| figure_colname(t))
            .unwrap_or_else(|| "?column?".into());
        if name.starts_with(RESERVED_PREFIX) {
            return Err(reserved(&name));
        }
        select.push(format!("{} AS {}", deparse_expr(t), qi(&name)));
    }
    Ok(Source {
        relation,
        alias: Some(alias),
        subquery: Some(Subquery {
            select: select.join(", "),
            inner_name,
            filter,
        }),
    })
}

/// The one FROM item of a subquery that filters and projects it; what else the subquery has is
/// refused by name. DISTINCT is let through where it makes no difference (`EXISTS`, `IN`).
pub(crate) fn only_item(
    sel: &SelectStmt,
    distinct_ok: bool,
    at: impl Fn() -> Option<String>,
) -> Result<&Node, AnalyzeError> {
    let refuse = |what: &str| -> AnalyzeError {
        Unsupported::new(format!("{what} in a subquery"), at())
            .hint(
                "a subquery may filter and project one table; write joins, grouping and \
                 DISTINCT in the query around it",
            )
            .into()
    };
    if sel.op != SetOperation::SetopNone as i32 {
        return Err(refuse("set operations"));
    }
    if sel.with_clause.is_some() {
        return Err(refuse("WITH"));
    }
    if !sel.distinct_clause.is_empty() && !distinct_ok {
        return Err(refuse("DISTINCT"));
    }
    if !sel.group_clause.is_empty() || sel.having_clause.is_some() {
        return Err(refuse("GROUP BY and HAVING"));
    }
    let mut targets = sel
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
            _ => None,
        });
    if targets.any(contains_aggregate) {
        return Err(refuse("aggregates"));
    }
    if !sel.window_clause.is_empty() {
        return Err(refuse("window functions"));
    }
    if !sel.sort_clause.is_empty() || sel.limit_count.is_some() || sel.limit_offset.is_some() {
        return Err(refuse("ORDER BY, LIMIT and OFFSET"));
    }
    if !sel.locking_clause.is_empty() || !sel.values_lists.is_empty() {
        return Err(refuse("locking clauses and VALUES"));
    }
    match sel.from_clause.as_slice() {
        [item] => Ok(item),
        [] => Err(refuse("no FROM")),
        _ => Err(refuse("several tables")),
    }
}

/// The relation of a plain FROM item and the name the query gives it.
pub(crate) fn relation_of(
    item: &Node,
    at: impl Fn() -> Option<String>,
) -> Result<(SourceRef, String), AnalyzeError> {
    let Some(NodeEnum::RangeVar(rv)) = item.node.as_ref() else {
        return Err(
            Unsupported::new("joins and nested subqueries in a subquery", at())
                .hint("write the join in the query around it")
                .into(),
        );
    };
    if !rv.inh {
        return Err(Unsupported::new("ONLY", at()).into());
    }
    if !rv.catalogname.is_empty() {
        return Err(Unsupported::new("database-qualified table names", at()).into());
    }
    if rv.relname.starts_with(RESERVED_PREFIX) {
        return Err(reserved(&rv.relname));
    }
    let name = match &rv.alias {
        Some(a) if !a.colnames.is_empty() => {
            return Err(Unsupported::new("column aliases in FROM", at()).into())
        }
        Some(a) if a.aliasname.starts_with(RESERVED_PREFIX) => return Err(reserved(&a.aliasname)),
        Some(a) => a.aliasname.clone(),
        None => rv.relname.clone(),
    };
    let relation = SourceRef::new(
        (!rv.schemaname.is_empty()).then_some(rv.schemaname.as_str()),
        &rv.relname,
    );
    Ok((relation, name))
}

/// Qualified column references of `sel` to names outside it: in a subquery in FROM within an
/// `EXISTS`, that is a correlation the delta of one relation cannot carry.
fn outer_references(
    sel: &SelectStmt,
    inner: &[String],
    at: impl Fn() -> Option<String>,
) -> Result<(), AnalyzeError> {
    let mut exprs: Vec<&Node> = sel.target_list.iter().collect();
    exprs.extend(sel.where_clause.as_deref());
    for e in exprs.iter().filter_map(|e| e.node.as_ref()) {
        for (n, ..) in e.nodes() {
            if let NodeRef::ColumnRef(c) = n {
                let parts: Vec<&str> = c.fields.iter().filter_map(string_value).collect();
                if let [qualifier, _] = parts.as_slice() {
                    if !inner.iter().any(|r| r == qualifier) {
                        return Err(Unsupported::new(
                            "references to the enclosing query from a subquery in FROM",
                            at(),
                        )
                        .into());
                    }
                }
            }
        }
    }
    Ok(())
}
