//! The FROM clause of a differential query: its relations, join conditions and aliases, and the
//! clause itself with a slot per relation for the terms of a delta to fill.

use pg_query::protobuf::{Alias, JoinType};
use pg_query::{Node, NodeEnum};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{deparse_from_item, kind_name, node, reserved, string_value, RESERVED_PREFIX};
use crate::plan::{Source, SourceRef};

fn unsupported(feature: &str, at: Option<String>) -> AnalyzeError {
    Unsupported::new(feature, at).into()
}

/// The slot of source `i` in [`Differential::from`]; `__shoal_` names are the user's to avoid.
pub(crate) fn source_slot(i: usize) -> String {
    format!("{RESERVED_PREFIX}src_{}_", i + 1)
}

/// What [`collect_from`] gathers from the FROM clause.
#[derive(Default)]
pub(crate) struct FromParts<'a> {
    pub sources: Vec<Source>,
    /// `JOIN ... ON` conditions, to check.
    pub quals: Vec<&'a Node>,
    /// Names of join aliases (`(a JOIN b ON ...) AS j`, `JOIN b USING (i) AS j`).
    pub join_aliases: Vec<String>,
}

fn alias_name(alias: &Alias, at: impl Fn() -> Option<String>) -> Result<String, AnalyzeError> {
    if !alias.colnames.is_empty() {
        // They rename by position, and a delta reads back only the columns the query names.
        return Err(unsupported("column aliases in FROM", at()));
    }
    if alias.aliasname.starts_with(RESERVED_PREFIX) {
        return Err(reserved(&alias.aliasname));
    }
    Ok(alias.aliasname.clone())
}

/// Walks a FROM item of inner joins: collects its relations and join conditions, and returns it
/// with each relation and its alias replaced by its slot ([`source_slot`]).
pub(crate) fn collect_from<'a>(
    item: &'a Node,
    parts: &mut FromParts<'a>,
) -> Result<Node, AnalyzeError> {
    let at = || Some(deparse_from_item(item));
    match item.node.as_ref() {
        Some(NodeEnum::RangeVar(rv)) => {
            if !rv.inh {
                return Err(unsupported("ONLY", at()));
            }
            if !rv.catalogname.is_empty() {
                return Err(unsupported("database-qualified table names", at()));
            }
            let alias = rv.alias.as_ref().map(|a| alias_name(a, at)).transpose()?;
            if rv.relname.starts_with(RESERVED_PREFIX) {
                return Err(reserved(&deparse_from_item(item)));
            }
            let source = Source {
                relation: SourceRef::new(
                    (!rv.schemaname.is_empty()).then_some(rv.schemaname.as_str()),
                    &rv.relname,
                ),
                alias,
            };
            let mut slot = rv.clone();
            slot.schemaname = String::new();
            slot.relname = source_slot(parts.sources.len());
            slot.alias = None;
            parts.sources.push(source);
            Ok(node(NodeEnum::RangeVar(slot)))
        }
        Some(NodeEnum::JoinExpr(j)) => {
            if j.jointype != JoinType::JoinInner as i32 {
                let kind = match JoinType::try_from(j.jointype) {
                    Ok(JoinType::JoinLeft) => "LEFT JOIN",
                    Ok(JoinType::JoinRight) => "RIGHT JOIN",
                    Ok(JoinType::JoinFull) => "FULL JOIN",
                    _ => "non-inner join",
                };
                return Err(Unsupported::new(format!("outer joins ({kind})"), at()).into());
            }
            if j.is_natural {
                // The columns it joins on depend on the tables' definitions, not on the query.
                return Err(Unsupported::new("NATURAL joins", at())
                    .hint("write JOIN ... USING (...) with the columns")
                    .into());
            }
            for name in j.using_clause.iter().filter_map(string_value) {
                if name.starts_with(RESERVED_PREFIX) {
                    return Err(reserved(name));
                }
            }
            let mut rewritten = j.clone();
            if let Some(a) = &j.join_using_alias {
                parts.join_aliases.push(alias_name(a, at)?);
            }
            if let Some(a) = &j.alias {
                parts.join_aliases.push(alias_name(a, at)?);
            }
            if let Some(l) = j.larg.as_deref() {
                rewritten.larg = Some(Box::new(collect_from(l, parts)?));
            }
            if let Some(r) = j.rarg.as_deref() {
                rewritten.rarg = Some(Box::new(collect_from(r, parts)?));
            }
            if let Some(q) = j.quals.as_deref() {
                parts.quals.push(q);
            }
            Ok(node(NodeEnum::JoinExpr(rewritten)))
        }
        Some(NodeEnum::RangeSubselect(_)) => Err(unsupported("subqueries in FROM", at())),
        Some(NodeEnum::RangeFunction(_)) => Err(unsupported("functions in FROM", at())),
        Some(NodeEnum::RangeTableSample(_)) => Err(unsupported("TABLESAMPLE", at())),
        Some(other) => Err(unsupported(
            &format!("{} items in FROM", kind_name(other)),
            at(),
        )),
        None => Ok(item.clone()),
    }
}
