//! The FROM clause of a differential query: its relations, join conditions and aliases, and the
//! clause itself with a slot per relation for the terms of a delta to fill.

use pg_query::protobuf::{Alias, JoinType, RangeVar};
use pg_query::{Node, NodeEnum};
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{deparse_from_item, kind_name, node, reserved, string_value, RESERVED_PREFIX};
use crate::plan::{Source, SourceRef};
use crate::subquery::subquery_source;

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
    /// Whether the item walked may be an outer join: only the whole FROM clause may be one.
    pub allow_outer: bool,
    pub outer: Option<OuterJoin>,
}

/// Which sides of an outer join keep their unmatched rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OuterKind {
    Left,
    Right,
    Full,
}

impl OuterKind {
    /// The indexes (0 left, 1 right) of the sources whose unmatched rows are kept.
    pub fn preserved(self) -> &'static [usize] {
        match self {
            OuterKind::Left => &[0],
            OuterKind::Right => &[1],
            OuterKind::Full => &[0, 1],
        }
    }
}

/// An outer join of two relations, the whole FROM clause: sources 0 (left) and 1 (right).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuterJoin {
    pub kind: OuterKind,
    /// The ON condition, deparsed.
    pub condition: String,
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
                subquery: None,
            };
            let mut slot = rv.clone();
            slot.schemaname = String::new();
            slot.relname = source_slot(parts.sources.len());
            slot.alias = None;
            parts.sources.push(source);
            Ok(node(NodeEnum::RangeVar(slot)))
        }
        Some(NodeEnum::JoinExpr(j)) => {
            let allow_outer = std::mem::take(&mut parts.allow_outer);
            if j.jointype != JoinType::JoinInner as i32 {
                let (name, kind) = match JoinType::try_from(j.jointype) {
                    Ok(JoinType::JoinLeft) => ("LEFT JOIN", Some(OuterKind::Left)),
                    Ok(JoinType::JoinRight) => ("RIGHT JOIN", Some(OuterKind::Right)),
                    Ok(JoinType::JoinFull) => ("FULL JOIN", Some(OuterKind::Full)),
                    _ => ("non-inner join", None),
                };
                let refuse = |why: &str| -> AnalyzeError {
                    Unsupported::new(format!("outer joins ({name}) {why}"), at())
                        .hint(
                            "an outer join of two tables (or subqueries over one), alone in \
                             FROM, written with ON",
                        )
                        .into()
                };
                let plain = |side: &Option<Box<Node>>| {
                    matches!(
                        side.as_deref().and_then(|s| s.node.as_ref()),
                        Some(NodeEnum::RangeVar(_) | NodeEnum::RangeSubselect(_))
                    )
                };
                let Some(kind) = kind else {
                    return Err(refuse("of this kind"));
                };
                if !allow_outer || !plain(&j.larg) || !plain(&j.rarg) {
                    return Err(refuse("with other joins or inside them"));
                }
                if j.is_natural || !j.using_clause.is_empty() || j.alias.is_some() {
                    // NULL-extended rows are made with `ON false`, which has no merged columns.
                    return Err(refuse("with USING, NATURAL or an alias"));
                }
                let Some(q) = j.quals.as_deref() else {
                    return Err(refuse("without ON"));
                };
                parts.outer = Some(OuterJoin {
                    kind,
                    condition: crate::expr::deparse_expr(q),
                });
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
        Some(NodeEnum::RangeSubselect(rs)) => {
            let fallback = format!("{RESERVED_PREFIX}subquery_{}", parts.sources.len() + 1);
            parts.sources.push(subquery_source(rs, item, fallback)?);
            Ok(node(NodeEnum::RangeVar(RangeVar {
                relname: source_slot(parts.sources.len() - 1),
                inh: true,
                relpersistence: "p".into(),
                ..RangeVar::default()
            })))
        }
        Some(NodeEnum::RangeFunction(_)) => Err(unsupported("functions in FROM", at())),
        Some(NodeEnum::RangeTableSample(_)) => Err(unsupported("TABLESAMPLE", at())),
        Some(other) => Err(unsupported(
            &format!("{} items in FROM", kind_name(other)),
            at(),
        )),
        None => Ok(item.clone()),
    }
}
