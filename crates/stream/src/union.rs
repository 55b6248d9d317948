//! UNION ALL and UNION of projections. The result of `b₁ UNION ALL … UNION ALL bₙ` is the bag
//! sum of its branches, so its delta is the sum of theirs: each branch's terms, over its own
//! sources, project its rows onto the shared columns, and the stored multiplicity of a row is
//! its count in the union. `UNION` is the same bag shown once per row, as DISTINCT is.

use pg_query::protobuf::{SelectStmt, SetOperation};
use pg_query::NodeEnum;
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{deparse_stmt, node};
use crate::plan::{Differential, OutputColumn};

/// The branches of a UNION \[ALL\] query, each one a projection maintained like a query of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Union {
    /// False for UNION, which shows each row once.
    pub all: bool,
    pub branches: Vec<UnionBranch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnionBranch {
    pub differential: Differential,
    /// The branch's select-list expressions, deparsed, in output column order.
    pub exprs: Vec<String>,
    /// The branch as SQL: the union of all of them with UNION ALL is the stored bag.
    pub sql: String,
}

impl Union {
    /// The query with every UNION made UNION ALL: its rows, counted, are what is stored.
    pub fn bag_sql(&self) -> String {
        let branches: Vec<String> = self
            .branches
            .iter()
            .map(|b| format!("({})", b.sql))
            .collect();
        branches.join(" UNION ALL ")
    }
}

/// The branches of a tree of UNIONs, left to right, refusing other set operations and a mix of
/// UNION and UNION ALL (whose result is no one bag's).
fn branches<'a>(
    sel: &'a SelectStmt,
    all: &mut Option<bool>,
    out: &mut Vec<&'a SelectStmt>,
) -> Result<(), AnalyzeError> {
    if sel.op == SetOperation::SetopNone as i32 {
        out.push(sel);
        return Ok(());
    }
    let op = match SetOperation::try_from(sel.op) {
        Ok(SetOperation::SetopUnion) => "UNION",
        Ok(SetOperation::SetopIntersect) => "INTERSECT",
        _ => "EXCEPT",
    };
    if op != "UNION" {
        return Err(Unsupported::new("INTERSECT and EXCEPT", Some(op.into())).into());
    }
    if *all.get_or_insert(sel.all) != sel.all {
        return Err(Unsupported::new(
            "UNION mixed with UNION ALL",
            Some(if sel.all { "UNION ALL" } else { "UNION" }.into()),
        )
        .hint("use one kind in a stream table, or a stream table per kind")
        .into());
    }
    for side in [&sel.larg, &sel.rarg] {
        match side.as_deref() {
            Some(s) => branches(s, all, out)?,
            None => return Err(AnalyzeError::Invalid("a set operation lacks a side".into())),
        }
    }
    Ok(())
}

/// Analyzes a UNION [ALL] query: each branch with `analyze_branch`, which must give a
/// projection (no GROUP BY, aggregates or DISTINCT, which would count rows differently).
pub(crate) fn analyze_union(
    sel: &SelectStmt,
    names: &[String],
    analyze_branch: impl Fn(
        &SelectStmt,
        &[String],
    ) -> Result<(Differential, Vec<OutputColumn>), AnalyzeError>,
) -> Result<(Differential, Vec<OutputColumn>, Union), AnalyzeError> {
    let mut all = None;
    let mut selects = Vec::new();
    branches(sel, &mut all, &mut selects)?;
    let mut out = Vec::new();
    let mut first_columns = None;
    for s in selects {
        let sql = deparse_stmt(&node(NodeEnum::SelectStmt(Box::new(s.clone()))))?;
        let (d, columns) = analyze_branch(s, names)?;
        if d.window.is_some() {
            return Err(Unsupported::new("window functions in UNION branches", Some(sql)).into());
        }
        if d.grouping.is_some() || d.distinct {
            return Err(
                Unsupported::new("grouped or DISTINCT branches of UNION", Some(sql))
                    .hint("make each branch a plain SELECT; UNION itself removes duplicates")
                    .into(),
            );
        }
        if columns.len() != names.len() {
            return Err(AnalyzeError::Invalid(format!(
                "each UNION branch must have {} columns (at `{sql}`)",
                names.len()
            )));
        }
        let exprs = columns.iter().map(|c| c.expr.clone()).collect();
        first_columns.get_or_insert(columns);
        out.push(UnionBranch {
            differential: d,
            exprs,
            sql,
        });
    }
    let union = Union {
        all: all.unwrap_or(true),
        branches: out,
    };
    let mut first = union.branches[0].differential.clone();
    first.distinct = !union.all;
    Ok((first, first_columns.unwrap_or_default(), union))
}
