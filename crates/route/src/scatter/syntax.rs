//! Reading the parts of a SELECT the split needs: output names, positions, constants, casts,
//! and expressions compared as written.

use pg_query::protobuf::{a_const, AConst, ColumnRef, FuncCall, ResTarget};
use pg_query::{Node, NodeEnum};
use serde_json::Value;

use super::refuse;
use crate::statement::NotRoutable;

/// ORDER BY as output positions, for the merge (and a top-k's partials).
pub(super) fn order_keys(
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
pub(super) fn type_sql(type_name: pg_query::protobuf::TypeName) -> Result<String, NotRoutable> {
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

/// `count(x)`, `sum(x)`... with the original's argument (or `*`).
pub(super) fn aggregate_call(call: &FuncCall, function: &str) -> Node {
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

pub(super) fn function_name(call: &FuncCall) -> Option<String> {
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
pub(super) fn output_name(target: &ResTarget) -> Result<String, NotRoutable> {
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
pub(super) fn output_reference(node: &Node, names: &[String]) -> Option<usize> {
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

pub(super) fn position(node: &Node) -> Option<usize> {
    integer(node).and_then(|n| usize::try_from(n).ok())
}

pub(super) fn integer(node: &Node) -> Option<i64> {
    match &node.node {
        Some(NodeEnum::AConst(AConst {
            val: Some(a_const::Val::Ival(i)),
            ..
        })) => Some(i64::from(i.ival)),
        _ => None,
    }
}

pub(super) fn is_null(node: &Node) -> bool {
    matches!(
        &node.node,
        Some(NodeEnum::AConst(AConst { isnull: true, .. }))
    )
}

/// Two expressions equal as written (locations aside).
pub(super) fn same(a: &Node, b: &Node) -> bool {
    strip(serde_json::to_value(a).unwrap_or_default())
        == strip(serde_json::to_value(b).unwrap_or_default())
}

pub(super) fn strip(value: Value) -> Value {
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
pub(super) fn contains_aggregate(node: &Node) -> bool {
    fn walk(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.contains_key("FuncCall") || map.values().any(walk),
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    walk(&serde_json::to_value(node).unwrap_or_default())
}
