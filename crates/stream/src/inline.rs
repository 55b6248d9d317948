//! Non-recursive common table expressions, inlined: each reference to a CTE in FROM (of the
//! query, of its subqueries in FROM and of its `EXISTS`/`IN` subqueries) becomes the CTE's query
//! as a subquery in FROM, under the reference's alias or the CTE's name. For a query without
//! side effects or volatile calls that is the same result (PostgreSQL itself inlines such a CTE
//! referenced once), and what the subquery then reads is analyzed as any subquery in FROM is.

use std::collections::HashMap;

use pg_query::protobuf::{Alias, CommonTableExpr, RangeSubselect, SelectStmt};
use pg_query::{Node, NodeEnum};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::node;

/// `sel` with its WITH clause inlined, or as it is without one.
pub(crate) fn inline_ctes(sel: &SelectStmt) -> Result<SelectStmt, AnalyzeError> {
    let Some(with) = &sel.with_clause else {
        return Ok(sel.clone());
    };
    let names: Vec<String> = with
        .ctes
        .iter()
        .filter_map(cte_of)
        .map(|c| c.ctename.clone())
        .collect();
    let at = || Some(format!("WITH {} AS (...)", names.join(", ")));
    if with.recursive {
        return Err(Unsupported::new("recursive common table expressions", at()).into());
    }
    let mut bodies: HashMap<String, (SelectStmt, Vec<Node>)> = HashMap::new();
    for item in &with.ctes {
        let Some(cte) = cte_of(item) else { continue };
        let Some(NodeEnum::SelectStmt(body)) =
            cte.ctequery.as_deref().and_then(|q| q.node.as_ref())
        else {
            // Every refresh would run it again.
            return Err(AnalyzeError::Invalid(format!(
                "a stream table's query cannot change data (WITH {} AS (...) is not a SELECT)",
                cte.ctename
            )));
        };
        // A CTE sees the ones before it.
        let mut body = (**body).clone();
        replace_in_select(&mut body, &bodies);
        bodies.insert(cte.ctename.clone(), (body, cte.aliascolnames.clone()));
    }
    let mut out = sel.clone();
    out.with_clause = None;
    replace_in_select(&mut out, &bodies);
    Ok(out)
}

fn cte_of(item: &Node) -> Option<&CommonTableExpr> {
    match item.node.as_ref()? {
        NodeEnum::CommonTableExpr(c) => Some(c),
        _ => None,
    }
}

type Bodies = HashMap<String, (SelectStmt, Vec<Node>)>;

/// Replaces the references to `bodies` in the FROM items of `sel` and of the subqueries it
/// reaches through FROM and WHERE. A subquery with a WITH of its own keeps it (its names would
/// shadow these): the analysis of that subquery refuses it.
fn replace_in_select(sel: &mut SelectStmt, bodies: &Bodies) {
    if bodies.is_empty() || sel.with_clause.is_some() {
        return;
    }
    for item in &mut sel.from_clause {
        replace_in_from(item, bodies);
    }
    if let Some(w) = sel.where_clause.as_deref_mut() {
        replace_in_condition(w, bodies);
    }
    for side in [sel.larg.as_deref_mut(), sel.rarg.as_deref_mut()]
        .into_iter()
        .flatten()
    {
        replace_in_select(side, bodies);
    }
}

fn replace_in_from(item: &mut Node, bodies: &Bodies) {
    let replacement = match item.node.as_mut() {
        Some(NodeEnum::RangeVar(rv)) if rv.schemaname.is_empty() => {
            bodies.get(&rv.relname).map(|(body, colnames)| {
                let mut alias = rv.alias.clone().unwrap_or(Alias {
                    aliasname: rv.relname.clone(),
                    colnames: Vec::new(),
                });
                if alias.colnames.is_empty() {
                    alias.colnames = colnames.clone();
                }
                node(NodeEnum::RangeSubselect(Box::new(RangeSubselect {
                    lateral: false,
                    subquery: Some(Box::new(node(NodeEnum::SelectStmt(Box::new(body.clone()))))),
                    alias: Some(alias),
                })))
            })
        }
        Some(NodeEnum::JoinExpr(j)) => {
            for side in [j.larg.as_deref_mut(), j.rarg.as_deref_mut()]
                .into_iter()
                .flatten()
            {
                replace_in_from(side, bodies);
            }
            if let Some(q) = j.quals.as_deref_mut() {
                replace_in_condition(q, bodies);
            }
            None
        }
        Some(NodeEnum::RangeSubselect(rs)) => {
            if let Some(NodeEnum::SelectStmt(s)) =
                rs.subquery.as_deref_mut().and_then(|q| q.node.as_mut())
            {
                replace_in_select(s, bodies);
            }
            None
        }
        _ => None,
    };
    if let Some(r) = replacement {
        *item = r;
    }
}

/// Subqueries under AND, OR and NOT of a condition.
fn replace_in_condition(cond: &mut Node, bodies: &Bodies) {
    match cond.node.as_mut() {
        Some(NodeEnum::BoolExpr(b)) => {
            for arg in &mut b.args {
                replace_in_condition(arg, bodies);
            }
        }
        Some(NodeEnum::SubLink(s)) => {
            if let Some(NodeEnum::SelectStmt(sub)) =
                s.subselect.as_deref_mut().and_then(|q| q.node.as_mut())
            {
                replace_in_select(sub, bodies);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::deparse_stmt;

    fn inlined(sql: &str) -> Result<String, AnalyzeError> {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().unwrap();
        let Some(NodeEnum::SelectStmt(sel)) = stmt.node.as_ref() else {
            panic!("not a select")
        };
        let out = inline_ctes(sel)?;
        deparse_stmt(&node(NodeEnum::SelectStmt(Box::new(out))))
    }

    #[test]
    fn references_become_subqueries_under_their_alias() {
        assert_eq!(
            inlined(
                "WITH big AS (SELECT id, amount FROM orders WHERE amount > 10), \
                 vip (cid) AS (SELECT b.id FROM big b WHERE b.amount > 90) \
                 SELECT x.id, v.cid FROM big x JOIN vip v ON v.cid = x.id \
                 WHERE EXISTS (SELECT 1 FROM big WHERE big.id = x.id)"
            )
            .unwrap(),
            "SELECT x.id, v.cid FROM (SELECT id, amount FROM orders WHERE amount > 10) x \
             JOIN (SELECT b.id FROM (SELECT id, amount FROM orders WHERE amount > 10) b \
             WHERE b.amount > 90) v(cid) ON v.cid = x.id WHERE EXISTS (SELECT 1 FROM \
             (SELECT id, amount FROM orders WHERE amount > 10) big WHERE big.id = x.id)"
        );
    }

    #[test]
    fn recursive_and_data_modifying_ctes_are_named() {
        let err = inlined("WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r").unwrap_err();
        assert!(
            err.to_string()
                .contains("recursive common table expressions"),
            "{err}"
        );
        let err = inlined("WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot change data (WITH d AS (...) is not a SELECT)"),
            "{err}"
        );
    }
}
