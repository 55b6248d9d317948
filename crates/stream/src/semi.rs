//! Semi- and anti-joins: `EXISTS (SELECT ... FROM u WHERE c)`, `NOT EXISTS (...)` and
//! `x IN (SELECT y FROM u WHERE c)` among the top-level ANDs of WHERE, over one relation `u` (or
//! a subquery over one).
//!
//! Such a condition keeps a joined row r when its number of matches `m(r)` in `u` is above zero
//! (EXISTS, IN) or zero (NOT EXISTS): a factor `F(r) ∈ {0, 1}` of the row's multiplicity. With
//! `J` the rest of the query's rows before the condition and `ΔJ` their delta (the terms of any
//! join), the result changes by
//!
//! ```text
//!   Σ r ∈ ΔJ (signed):                      sign · F_old(r)
//! + Σ r ∈ J_new, some Δu row matching r:   F_new(r) − F_old(r)
//! ```
//!
//! where `F_new` counts matches in u's new state, and `F_old` in its old state, `m_new(r) − D(r)`
//! with `D(r)` the signed number of matches in Δu: u's old state itself is never read. Several
//! conditions multiply, so the second sum takes every changed one at once; an unchanged one is
//! the same before and after and stays the plain condition, which PostgreSQL can hash. An
//! `IN` is the EXISTS of its equality; as a conjunct of WHERE, its NULL (no match, a NULL
//! somewhere) filters like false. `NOT IN` is not this: one NULL in the subquery makes it NULL
//! for every row, so it is refused with the NOT EXISTS to write instead.

use pg_query::protobuf::{BoolExprType, SelectStmt, SubLinkType};
use pg_query::{Node, NodeEnum};
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{deparse_expr, string_value, RowExprCheck, RESERVED_PREFIX};
use crate::plan::{Differential, Source};
use crate::refresh::{from_where_with, qi, sign_column, source_item, DeltaRelations, DELTA_COLUMN};
use crate::subquery::{only_item, relation_of, subquery_source};

/// One `[NOT] EXISTS` or `IN` condition of WHERE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemiJoin {
    /// The relation (or subquery over one) the condition reads, under its name there.
    pub source: Source,
    /// NOT EXISTS: rows without a match are kept.
    pub anti: bool,
    /// The subquery's WHERE, deparsed; it may refer to the enclosing query's columns.
    pub condition: Option<String>,
    /// For `x IN (SELECT y ...)`: `x`, in the enclosing query's scope, and `y`, in the
    /// subquery's.
    pub key: Option<(String, String)>,
}

/// Splits the top-level ANDs of `where_clause` into semi-joins and the other conditions.
/// `range_names` are the enclosing query's FROM names, which the subqueries may refer to.
pub(crate) fn split_where<'a>(
    where_clause: &'a Node,
    range_names: &[String],
) -> Result<(Vec<&'a Node>, Vec<SemiJoin>), AnalyzeError> {
    let mut conjuncts = Vec::new();
    flatten_and(where_clause, &mut conjuncts);
    let mut rest = Vec::new();
    let mut semis = Vec::new();
    for c in conjuncts {
        match semi_join(c, range_names)? {
            Some(s) => semis.push(s),
            None => rest.push(c),
        }
    }
    Ok((rest, semis))
}

fn flatten_and<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match node.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::AndExpr as i32 => {
            for arg in &b.args {
                flatten_and(arg, out);
            }
        }
        _ => out.push(node),
    }
}

fn semi_join(c: &Node, range_names: &[String]) -> Result<Option<SemiJoin>, AnalyzeError> {
    let at = || Some(deparse_expr(c));
    let (link, negated) = match c.node.as_ref() {
        Some(NodeEnum::SubLink(s)) => (s, false),
        Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::NotExpr as i32 => {
            match b.args.as_slice() {
                [arg] => match arg.node.as_ref() {
                    Some(NodeEnum::SubLink(s)) => (s, true),
                    _ => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let Some(NodeEnum::SelectStmt(sub)) = link.subselect.as_deref().and_then(|s| s.node.as_ref())
    else {
        return Ok(None);
    };
    let is_in = link.sub_link_type == SubLinkType::AnySublink as i32
        && matches!(
            link.oper_name
                .iter()
                .filter_map(string_value)
                .collect::<Vec<_>>()
                .as_slice(),
            [] | ["="]
        );
    if link.sub_link_type == SubLinkType::ExistsSublink as i32 {
        let source = semi_source(sub, at)?;
        let condition = condition(sub, &source, range_names)?;
        return Ok(Some(SemiJoin {
            source,
            anti: negated,
            condition,
            key: None,
        }));
    }
    if !is_in {
        return Ok(None);
    }
    if negated {
        return Err(Unsupported::new("NOT IN (subquery) conditions", at())
            .hint(
                "write NOT EXISTS (SELECT ... WHERE inner = outer): NOT IN is NULL for every \
                 row once the subquery returns a NULL",
            )
            .into());
    }
    let Some(test) = link.testexpr.as_deref() else {
        return Ok(None);
    };
    if matches!(test.node.as_ref(), Some(NodeEnum::RowExpr(_))) {
        return Err(Unsupported::new("row comparisons with IN (subquery)", at())
            .hint("write EXISTS (SELECT ... WHERE a = x AND b = y)")
            .into());
    }
    let source = semi_source(sub, at)?;
    let [target] = sub.target_list.as_slice() else {
        return Err(AnalyzeError::Invalid(format!(
            "the subquery of `{}` must return one column",
            deparse_expr(c)
        )));
    };
    let Some(NodeEnum::ResTarget(rt)) = target.node.as_ref() else {
        return Ok(None);
    };
    let Some(inner) = rt.val.as_deref() else {
        return Ok(None);
    };
    RowExprCheck {
        range_names,
        place: "WHERE",
    }
    .check(test)?;
    let mut names = range_names.to_vec();
    names.push(source.range_name().to_string());
    RowExprCheck {
        range_names: &names,
        place: "an IN subquery",
    }
    .check(inner)?;
    let condition = condition(sub, &source, range_names)?;
    Ok(Some(SemiJoin {
        source,
        anti: false,
        condition,
        key: Some((deparse_expr(test), deparse_expr(inner))),
    }))
}

fn semi_source(sub: &SelectStmt, at: impl Fn() -> Option<String>) -> Result<Source, AnalyzeError> {
    let item = only_item(sub, true, &at)?;
    if let Some(NodeEnum::RangeSubselect(rs)) = item.node.as_ref() {
        return subquery_source(rs, item, format!("{RESERVED_PREFIX}subquery"));
    }
    let (relation, name) = relation_of(item, &at)?;
    let alias = (name != relation.name).then_some(name);
    Ok(Source {
        relation,
        alias,
        subquery: None,
    })
}

fn condition(
    sub: &SelectStmt,
    source: &Source,
    range_names: &[String],
) -> Result<Option<String>, AnalyzeError> {
    let Some(w) = sub.where_clause.as_deref() else {
        return Ok(None);
    };
    let mut names = range_names.to_vec();
    names.push(source.range_name().to_string());
    RowExprCheck {
        range_names: &names,
        place: "a subquery's WHERE",
    }
    .check(w)?;
    Ok(Some(deparse_expr(w)))
}

/// Semi-join `k`'s index among [`Differential::all_sources`].
fn index(d: &Differential, k: usize) -> usize {
    d.sources.len() + k
}

/// `SELECT <what> FROM` the rows of semi-join `k`'s relation, in its new state or its delta,
/// that match the enclosing row.
fn matching(d: &Differential, k: usize, what: &str, delta: Option<&DeltaRelations>) -> String {
    let s = &d.semi[k];
    let i = index(d, k);
    let item = source_item(&s.source, i, delta);
    let filter = s
        .condition
        .as_deref()
        .map(|c| format!(" WHERE ({c})"))
        .unwrap_or_default();
    match &s.key {
        None => format!("SELECT {what} FROM {item}{filter}"),
        // The inner value is taken out under a name of ours, so that the outer expression,
        // compared outside the subquery, keeps the enclosing query's scope.
        Some((outer, inner)) => {
            let sign = match delta {
                Some(_) => format!(", {}", qi(&sign_column(i))),
                None => String::new(),
            };
            format!(
                "SELECT {what} FROM (SELECT {inner} AS {v}{sign} FROM {item}{filter}) AS {q} \
                 WHERE {q}.{v} = ({outer})",
                v = qi("__shoal_v"),
                q = qi("__shoal_q"),
            )
        }
    }
}

/// The number of matches in the new state, or their signed number in the delta.
fn matches(d: &Differential, k: usize, delta: Option<&DeltaRelations>) -> String {
    let what = match delta {
        None => "count(*)".to_string(),
        Some(_) => format!("coalesce(sum({}), 0)", qi(&sign_column(index(d, k)))),
    };
    format!("({})", matching(d, k, &what, delta))
}

/// The comparison of a match count with zero that keeps a row.
fn holds(s: &SemiJoin, count: &str) -> String {
    let op = if s.anti { "=" } else { ">" };
    format!("{count} {op} 0")
}

/// Semi-join `k` in u's new state, as written.
fn in_new_state(d: &Differential, k: usize) -> String {
    let s = &d.semi[k];
    let item = source_item(&s.source, index(d, k), None);
    let filter = s
        .condition
        .as_deref()
        .map(|c| format!(" WHERE ({c})"))
        .unwrap_or_default();
    match &s.key {
        None => {
            let not = if s.anti { "NOT " } else { "" };
            format!("{not}EXISTS (SELECT 1 FROM {item}{filter})")
        }
        Some((outer, inner)) => format!("({outer}) IN (SELECT {inner} FROM {item}{filter})"),
    }
}

/// The semi-joins' conditions for a statement reading each source in the state `reads` gives:
/// where it gives a delta, the semi-join is tested in its old state.
pub(crate) fn conditions<'a>(
    d: &Differential,
    reads: &dyn Fn(usize) -> Option<&'a DeltaRelations>,
) -> Vec<String> {
    (0..d.semi.len())
        .map(|k| match reads(index(d, k)) {
            None => in_new_state(d, k),
            Some(delta) => holds(
                &d.semi[k],
                &format!("{} - {}", matches(d, k, None), matches(d, k, Some(delta))),
            ),
        })
        .collect()
}

/// The term for the rows whose semi-joins changed their verdict: the query's rows in the new
/// state that a changed semi-join relation's delta reaches, signed by the verdict's change.
pub(crate) fn verdict_term(
    d: &Differential,
    items: &[(String, String)],
    deltas: &[Option<&DeltaRelations>],
) -> Option<String> {
    let changed: Vec<usize> = (0..d.semi.len())
        .filter(|&k| deltas[index(d, k)].is_some())
        .collect();
    if changed.is_empty() {
        return None;
    }
    let n = |k: usize| qi(&format!("__shoal_n{}", k + 1));
    let dn = |k: usize| qi(&format!("__shoal_d{}", k + 1));
    let mut counts = Vec::new();
    let mut now = Vec::new();
    let mut before = Vec::new();
    for &k in &changed {
        let delta = deltas[index(d, k)];
        counts.push(format!("{} AS {}", matches(d, k, None), n(k)));
        counts.push(format!("{} AS {}", matches(d, k, delta), dn(k)));
        now.push(holds(&d.semi[k], &n(k)));
        before.push(holds(&d.semi[k], &format!("{} - {}", n(k), dn(k))));
    }
    let verdict = |c: &[String]| format!("(CASE WHEN {} THEN 1 ELSE 0 END)", c.join(" AND "));
    let sign = format!("{} - {}", verdict(&now), verdict(&before));
    let template = format!(
        "{}, LATERAL (SELECT {}) AS {}",
        d.from,
        counts.join(", "),
        qi("__shoal_semi")
    );
    let mut conds: Vec<String> = (0..d.semi.len())
        .filter(|k| !changed.contains(k))
        .map(|k| in_new_state(d, k))
        .collect();
    // A row no delta row matches keeps its verdict. An EXISTS on the (small) deltas is a
    // semi-join PostgreSQL can make before computing the counts.
    let reached: Vec<String> = changed
        .iter()
        .map(|&k| format!("EXISTS ({})", matching(d, k, "1", deltas[index(d, k)])))
        .collect();
    conds.push(reached.join(" OR "));
    conds.push(format!("{sign} <> 0"));
    let mut select: Vec<String> = items
        .iter()
        .map(|(name, expr)| format!("{expr} AS {}", qi(name)))
        .collect();
    select.push(format!("{sign} AS {}", qi(DELTA_COLUMN)));
    let from = from_where_with(d, &template, &|_| None, &conds);
    Some(format!("SELECT {} {from}", select.join(", ")))
}

/// Where semi-joins cannot go (the query shapes whose deltas they would change in other ways).
pub(crate) fn refuse_with(
    d_outer: bool,
    d_window: bool,
    semis: &[SemiJoin],
) -> Result<(), AnalyzeError> {
    if semis.is_empty() {
        return Ok(());
    }
    let place = if d_outer {
        "outer joins"
    } else if d_window {
        "window functions"
    } else {
        return Ok(());
    };
    Err(Unsupported::new(
        format!("EXISTS and IN subqueries together with {place}"),
        Some("WHERE ... EXISTS (...)".into()),
    )
    .into())
}
