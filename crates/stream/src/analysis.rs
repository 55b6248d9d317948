//! The differential analysis of one SELECT: what refreshes need to maintain it from deltas, or
//! the reason (an [`Unsupported`]) that only full refresh can.

use std::collections::HashSet;

use pg_query::protobuf::{a_const, SelectStmt, SetOperation};
use pg_query::{Node, NodeEnum};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{
    classify_call, contains_aggregate, deparse_expr, deparse_from_list, reserved, row_parts,
    same_expr, string_value, Call, RowExprCheck,
};
use crate::from::{collect_from, source_slot, FromParts};
use crate::having::Having;
use crate::inline::inline_ctes;
use crate::plan::{
    hidden_key, Aggregate, ColumnRole, Differential, GroupKey, Grouping, OutputColumn, Source,
};
use crate::semi;
use crate::union::analyze_union;
use crate::window::analyze_window;

fn unsupported(feature: &str, at: Option<String>) -> AnalyzeError {
    Unsupported::new(feature, at).into()
}

/// The differential analysis proper; `Err(Unsupported)` sends the query to full refresh.
pub(crate) fn differential(
    sel: &SelectStmt,
    names: &[String],
) -> Result<(Differential, Vec<OutputColumn>), AnalyzeError> {
    let inlined;
    let sel = if sel.with_clause.is_some() {
        inlined = inline_ctes(sel)?;
        &inlined
    } else {
        sel
    };
    if sel.op != SetOperation::SetopNone as i32 {
        if !sel.sort_clause.is_empty()
            || sel.limit_count.is_some()
            || sel.limit_offset.is_some()
            || !sel.locking_clause.is_empty()
        {
            return Err(unsupported(
                "ORDER BY, LIMIT and locking clauses around set operations",
                Some("... UNION ...".into()),
            ));
        }
        let (d, columns, union) = analyze_union(sel, names, differential)?;
        return Ok((
            Differential {
                union: Some(union),
                ..d
            },
            columns,
        ));
    }
    if !sel.values_lists.is_empty() {
        return Err(unsupported("VALUES lists", Some("VALUES (...)".into())));
    }
    if !sel.sort_clause.is_empty() {
        let keys: Vec<String> = sel
            .sort_clause
            .iter()
            .filter_map(|s| match s.node.as_ref() {
                Some(NodeEnum::SortBy(sb)) => sb.node.as_deref().map(deparse_expr),
                _ => None,
            })
            .collect();
        return Err(Unsupported::new(
            "ORDER BY clauses",
            Some(format!("ORDER BY {}", keys.join(", "))),
        )
        .hint("a table has no order: order when reading the stream table")
        .into());
    }
    if let Some(limit) = sel.limit_count.as_deref().or(sel.limit_offset.as_deref()) {
        let word = if sel.limit_count.is_some() {
            "LIMIT"
        } else {
            "OFFSET"
        };
        return Err(unsupported(
            "LIMIT and OFFSET clauses",
            Some(format!("{word} {}", deparse_expr(limit))),
        ));
    }
    if !sel.locking_clause.is_empty() {
        return Err(unsupported(
            "row locking clauses",
            Some("FOR UPDATE/SHARE".into()),
        ));
    }
    if sel.group_distinct {
        return Err(unsupported("GROUP BY DISTINCT", None));
    }
    let distinct = match sel.distinct_clause.as_slice() {
        [] => false,
        // Plain DISTINCT is a list holding one empty node; DISTINCT ON lists expressions.
        [only] if only.node.is_none() => true,
        exprs => {
            let on: Vec<String> = exprs.iter().map(deparse_expr).collect();
            return Err(unsupported(
                "DISTINCT ON",
                Some(format!("DISTINCT ON ({})", on.join(", "))),
            ));
        }
    };
    if sel.from_clause.is_empty() {
        return Err(unsupported("queries without FROM", None));
    }

    let mut parts = FromParts {
        allow_outer: sel.from_clause.len() == 1,
        ..FromParts::default()
    };
    let mut template = Vec::new();
    for item in &sel.from_clause {
        template.push(collect_from(item, &mut parts)?);
    }
    let from = deparse_from_list(&template);
    for i in 0..parts.sources.len() {
        if from.matches(&source_slot(i)).count() != 1 {
            return Err(reserved(&source_slot(i)));
        }
    }
    let FromParts {
        sources,
        quals,
        join_aliases,
        outer,
        ..
    } = parts;
    let mut range_names: Vec<String> = sources
        .iter()
        .map(|s: &Source| s.range_name().to_string())
        .collect();
    let mut seen = HashSet::new();
    for name in &range_names {
        if !seen.insert(name) {
            return Err(AnalyzeError::Invalid(format!(
                "the table name `{name}` is used more than once in FROM; give each an alias"
            )));
        }
    }
    range_names.extend(join_aliases);
    let join_check = RowExprCheck {
        range_names: &range_names,
        place: "JOIN conditions",
    };
    for q in quals {
        join_check.check(q)?;
    }
    let (conditions, semi) = match sel.where_clause.as_deref() {
        Some(w) => semi::split_where(w, &range_names)?,
        None => (Vec::new(), Vec::new()),
    };
    let where_check = RowExprCheck {
        range_names: &range_names,
        place: "WHERE",
    };
    for c in &conditions {
        where_check.check(c)?;
    }
    let filter = match (sel.where_clause.as_deref(), semi.is_empty()) {
        (Some(w), true) => Some(deparse_expr(w)),
        _ if conditions.is_empty() => None,
        _ => Some(
            conditions
                .iter()
                .map(|c| format!("({})", deparse_expr(c)))
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    };

    let targets: Vec<&Node> = sel
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
            _ => None,
        })
        .collect();
    let grouped = !sel.group_clause.is_empty()
        || sel.having_clause.is_some()
        || targets.iter().any(|t| contains_aggregate(t));
    if distinct && grouped {
        return Err(unsupported(
            "DISTINCT together with GROUP BY or aggregates",
            Some("SELECT DISTINCT".into()),
        ));
    }
    let select_check = RowExprCheck {
        range_names: &range_names,
        place: "the select list",
    };
    let mut columns = Vec::new();
    let window = analyze_window(
        sel,
        &targets,
        names,
        &range_names,
        distinct || grouped,
        &mut columns,
    )?;
    semi::refuse_with(outer.is_some(), window.is_some(), &semi)?;
    let grouping = if window.is_some() {
        None
    } else if !grouped {
        for (target, name) in targets.iter().zip(names) {
            select_check.check(target)?;
            columns.push(OutputColumn {
                name: name.clone(),
                expr: deparse_expr(target),
                role: ColumnRole::Plain,
            });
        }
        None
    } else {
        Some(grouping(sel, &targets, names, &range_names, &mut columns)?)
    };
    Ok((
        Differential {
            sources,
            from,
            outer,
            semi,
            union: None,
            filter,
            distinct,
            grouping,
            window,
        },
        columns,
    ))
}

fn grouping(
    sel: &SelectStmt,
    targets: &[&Node],
    names: &[String],
    range_names: &[String],
    columns: &mut Vec<OutputColumn>,
) -> Result<Grouping, AnalyzeError> {
    let key_check = RowExprCheck {
        range_names,
        place: "GROUP BY",
    };
    let mut key_nodes: Vec<&Node> = Vec::new();
    for item in &sel.group_clause {
        let key = match item.node.as_ref() {
            Some(NodeEnum::GroupingSet(_)) => {
                return Err(unsupported(
                    "GROUPING SETS, ROLLUP and CUBE",
                    Some(deparse_expr(item)),
                ))
            }
            // GROUP BY 2 means the second output column.
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(a_const::Val::Ival(i)) => {
                    let pos = usize::try_from(i.ival).unwrap_or(0);
                    *targets.get(pos.wrapping_sub(1)).ok_or_else(|| {
                        AnalyzeError::Invalid(format!(
                            "GROUP BY position {} is not in the select list",
                            i.ival
                        ))
                    })?
                }
                _ => item,
            },
            // GROUP BY an output alias (when the target is not simply that column).
            Some(NodeEnum::ColumnRef(c)) if c.fields.len() == 1 => {
                let name = c.fields.first().and_then(string_value).unwrap_or("");
                match names.iter().position(|n| n == name) {
                    Some(i) if !same_expr(targets[i], item) => targets[i],
                    _ => item,
                }
            }
            _ => item,
        };
        if contains_aggregate(key) {
            return Err(AnalyzeError::Invalid(format!(
                "aggregates are not allowed in GROUP BY (at `{}`)",
                deparse_expr(key)
            )));
        }
        key_check.check(key)?;
        if !key_nodes.iter().any(|k| same_expr(k, key)) {
            key_nodes.push(key);
        }
    }
    let mut keys: Vec<GroupKey> = key_nodes
        .iter()
        .map(|k| GroupKey {
            expr: deparse_expr(k),
            column: None,
        })
        .collect();
    let arg_check = RowExprCheck {
        range_names,
        place: "aggregate arguments",
    };
    let mut aggregates = Vec::new();
    for (i, (target, name)) in targets.iter().zip(names).enumerate() {
        let role = match classify_call(target)? {
            Call::Aggregate(func, arg) => {
                for part in arg.iter().flat_map(|a| row_parts(func, a)) {
                    if contains_aggregate(part) {
                        return Err(AnalyzeError::Invalid(format!(
                            "aggregate calls cannot be nested (at `{}`)",
                            deparse_expr(target)
                        )));
                    }
                    arg_check.check(part)?;
                }
                aggregates.push(Aggregate {
                    func,
                    arg: arg.as_deref().map(deparse_expr),
                    column: Some(i),
                });
                ColumnRole::Aggregate(aggregates.len() - 1)
            }
            Call::Other => {
                if contains_aggregate(target) {
                    return Err(Unsupported::new(
                        "expressions over aggregates",
                        Some(deparse_expr(target)),
                    )
                    .hint("select the aggregate itself and compute over it when reading")
                    .into());
                }
                let Some(k) = key_nodes.iter().position(|k| same_expr(k, target)) else {
                    return Err(Unsupported::new(
                        "output expressions that are neither GROUP BY keys nor aggregates",
                        Some(deparse_expr(target)),
                    )
                    .hint("add the expression to GROUP BY, written the same way")
                    .into());
                };
                if keys[k].column.is_none() {
                    keys[k].column = Some(i);
                }
                ColumnRole::Key(k)
            }
        };
        columns.push(OutputColumn {
            name: name.clone(),
            expr: deparse_expr(target),
            role,
        });
    }
    let having = match sel.having_clause.as_deref() {
        Some(condition) => {
            let key_columns = keys
                .iter()
                .enumerate()
                .map(|(i, k)| k.column.map_or_else(|| hidden_key(i), |c| names[c].clone()))
                .collect();
            let rewriter = Having {
                key_nodes: &key_nodes,
                key_columns,
                names,
                arg_check: &arg_check,
            };
            Some(rewriter.rewrite(condition, &mut aggregates)?)
        }
        None => None,
    };
    Ok(Grouping {
        keys,
        aggregates,
        having,
    })
}
