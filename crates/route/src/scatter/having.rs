//! HAVING over merged groups: the condition as written, with each aggregate replaced by its
//! merged value and each grouping expression by its partial column, so the merge filters the
//! same groups the coordinator would.

use pg_query::protobuf::{ColumnRef, FuncCall, SelectStmt};
use pg_query::{Node, NodeEnum};

use super::refuse;
use super::syntax::{function_name, same};
use crate::statement::NotRoutable;

const MERGEABLE: [&str; 5] = ["count", "sum", "min", "max", "avg"];

/// The merge's HAVING condition for `condition`; `aggregate` gives an aggregate's merged value
/// (adding the partial columns it needs).
pub(super) fn merged(
    condition: &Node,
    groups: &[Node],
    mut aggregate: impl FnMut(&FuncCall) -> Result<String, NotRoutable>,
) -> Result<String, NotRoutable> {
    let mut substitutes = Vec::new();
    let mut replace = |node: &Node| -> Result<Option<Node>, NotRoutable> {
        let merged = if let Some(i) = groups.iter().position(|g| same(g, node)) {
            format!("p.c{i}")
        } else if let Some(NodeEnum::FuncCall(call)) = &node.node {
            match function_name(call) {
                Some(name) if MERGEABLE.contains(&name.as_str()) => aggregate(call)?,
                _ => return refuse("HAVING calls a function other than an aggregate"),
            }
        } else {
            return Ok(None);
        };
        substitutes.push(merged);
        Ok(Some(placeholder(substitutes.len() - 1)))
    };
    let rewritten = substitute(condition, &mut replace)?;
    let statement = SelectStmt {
        where_clause: Some(Box::new(rewritten)),
        limit_option: pg_query::protobuf::LimitOption::Default as i32,
        op: pg_query::protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let sql = NodeEnum::SelectStmt(Box::new(statement))
        .deparse(Default::default())
        .map_err(|e| NotRoutable(format!("could not write HAVING: {e}")))?;
    let mut sql = sql
        .strip_prefix("SELECT WHERE ")
        .ok_or_else(|| NotRoutable("an unreadable HAVING".into()))?
        .to_string();
    // Last first, so `__shoal_h1_` is not taken for the start of `__shoal_h12_`.
    for (i, merged) in substitutes.iter().enumerate().rev() {
        sql = sql.replace(&placeholder_name(i), &format!("({merged})"));
    }
    Ok(sql)
}

fn placeholder_name(i: usize) -> String {
    format!("__shoal_h{i}_")
}

fn placeholder(i: usize) -> Node {
    Node {
        node: Some(NodeEnum::ColumnRef(ColumnRef {
            fields: vec![Node {
                node: Some(NodeEnum::String(pg_query::protobuf::String {
                    sval: placeholder_name(i),
                })),
            }],
            location: -1,
        })),
    }
}

/// `node` with what `replace` replaces; refuses columns that are not grouped and any node kind
/// not known to hold only constants and operators.
fn substitute(
    node: &Node,
    replace: &mut impl FnMut(&Node) -> Result<Option<Node>, NotRoutable>,
) -> Result<Node, NotRoutable> {
    if let Some(replaced) = replace(node)? {
        return Ok(replaced);
    }
    let mut walk = |child: &mut Option<Box<Node>>| -> Result<(), NotRoutable> {
        if let Some(inner) = child.as_deref() {
            *child = Some(Box::new(substitute(inner, replace)?));
        }
        Ok(())
    };
    let mut node = node.clone();
    match node.node.as_mut() {
        Some(NodeEnum::AConst(_)) => {}
        Some(NodeEnum::AExpr(expr)) => {
            walk(&mut expr.lexpr)?;
            walk(&mut expr.rexpr)?;
        }
        Some(NodeEnum::BoolExpr(expr)) => {
            for arg in &mut expr.args {
                *arg = substitute(arg, replace)?;
            }
        }
        Some(NodeEnum::NullTest(test)) => walk(&mut test.arg)?,
        Some(NodeEnum::BooleanTest(test)) => walk(&mut test.arg)?,
        Some(NodeEnum::TypeCast(cast)) => walk(&mut cast.arg)?,
        Some(NodeEnum::List(list)) => {
            for item in &mut list.items {
                *item = substitute(item, replace)?;
            }
        }
        Some(NodeEnum::ColumnRef(_)) => return refuse("HAVING reads a column that is not grouped"),
        _ => return refuse("HAVING has an expression not split across shards"),
    }
    Ok(node)
}
