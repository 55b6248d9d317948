//! HAVING in a differential query. Every group stays in the storage with its aggregate state, as
//! without HAVING; the condition, rewritten over the stored columns (group keys and aggregates,
//! those it needs beyond the select list kept hidden), is applied by the view. So a group that
//! stops passing HAVING and passes it again later needs nothing but its state, which its deltas
//! keep exact.

use pg_query::{Node, NodeEnum};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{
    classify_call, contains_aggregate, deparse_expr, is_aggregate_call, node, row_parts, Call,
    RowExprCheck,
};
use crate::plan::{hidden_agg, Aggregate};

/// The alias of the storage table in the view (and in [`crate::contents_sql`]).
pub(crate) const STORED_ROW: &str = "__shoal_t";

pub(crate) struct Having<'a> {
    /// The GROUP BY expressions, and the stored column of each.
    pub key_nodes: &'a [&'a Node],
    pub key_columns: Vec<String>,
    /// The output column names (an aggregate in the select list is stored under its name).
    pub names: &'a [String],
    pub arg_check: &'a RowExprCheck<'a>,
}

impl Having<'_> {
    /// The condition over the stored row [`STORED_ROW`], as SQL text; adds to `aggregates` the
    /// ones it uses that the select list does not have.
    pub fn rewrite(
        &self,
        condition: &Node,
        aggregates: &mut Vec<Aggregate>,
    ) -> Result<String, AnalyzeError> {
        // First with every stored value a NULL, to check what remains like any row expression
        // (no subqueries, volatile functions, ...), then for real.
        let checked = self.map(condition, aggregates, false)?;
        RowExprCheck {
            range_names: &[],
            place: "HAVING",
        }
        .check(&checked)?;
        Ok(deparse_expr(&self.map(condition, aggregates, true)?))
    }

    fn stored(&self, column: &str, real: bool) -> Node {
        if real {
            column_ref(&[STORED_ROW, column])
        } else {
            null()
        }
    }

    fn map(&self, n: &Node, aggs: &mut Vec<Aggregate>, real: bool) -> Result<Node, AnalyzeError> {
        if let Some(k) = self
            .key_nodes
            .iter()
            .position(|k| crate::expr::same_expr(k, n))
        {
            return Ok(self.stored(&self.key_columns[k], real));
        }
        let Some(inner) = n.node.as_ref() else {
            return Ok(n.clone());
        };
        let mut m = |x: &Node| self.map(x, aggs, real);
        let out =
            match inner {
                NodeEnum::FuncCall(f) if f.over.is_none() && is_aggregate_call(f) => {
                    let Call::Aggregate(func, arg) = classify_call(n)? else {
                        unreachable!("an aggregate call classifies as one")
                    };
                    for part in arg.iter().flat_map(|a| row_parts(func, a)) {
                        if contains_aggregate(part) {
                            return Err(AnalyzeError::Invalid(format!(
                                "aggregate calls cannot be nested (at `{}`)",
                                deparse_expr(n)
                            )));
                        }
                        self.arg_check.check(part)?;
                    }
                    let arg = arg.as_deref().map(deparse_expr);
                    let j = match aggs.iter().position(|a| a.func == func && a.arg == arg) {
                        Some(j) => j,
                        None => {
                            aggs.push(Aggregate {
                                func,
                                arg,
                                column: None,
                            });
                            aggs.len() - 1
                        }
                    };
                    let column = match aggs[j].column {
                        Some(c) => self.names[c].clone(),
                        None => hidden_agg(j),
                    };
                    return Ok(self.stored(&column, real));
                }
                NodeEnum::ColumnRef(_) => return Err(Unsupported::new(
                    "HAVING conditions on columns that are neither GROUP BY keys nor aggregated",
                    Some(deparse_expr(n)),
                )
                .hint("write the column as in GROUP BY, or filter rows with WHERE")
                .into()),
                NodeEnum::FuncCall(f) => {
                    let mut f = f.clone();
                    f.args = f.args.iter().map(&mut m).collect::<Result<_, _>>()?;
                    NodeEnum::FuncCall(f)
                }
                NodeEnum::AExpr(e) => {
                    let mut e = e.clone();
                    e.lexpr = opt(&e.lexpr, &mut m)?;
                    e.rexpr = opt(&e.rexpr, &mut m)?;
                    NodeEnum::AExpr(e)
                }
                NodeEnum::BoolExpr(b) => {
                    let mut b = b.clone();
                    b.args = all(&b.args, &mut m)?;
                    NodeEnum::BoolExpr(b)
                }
                NodeEnum::NullTest(t) => {
                    let mut t = t.clone();
                    t.arg = opt(&t.arg, &mut m)?;
                    NodeEnum::NullTest(t)
                }
                NodeEnum::BooleanTest(t) => {
                    let mut t = t.clone();
                    t.arg = opt(&t.arg, &mut m)?;
                    NodeEnum::BooleanTest(t)
                }
                NodeEnum::CaseExpr(c) => {
                    let mut c = c.clone();
                    c.arg = opt(&c.arg, &mut m)?;
                    c.args = all(&c.args, &mut m)?;
                    c.defresult = opt(&c.defresult, &mut m)?;
                    NodeEnum::CaseExpr(c)
                }
                NodeEnum::CaseWhen(w) => {
                    let mut w = w.clone();
                    w.expr = opt(&w.expr, &mut m)?;
                    w.result = opt(&w.result, &mut m)?;
                    NodeEnum::CaseWhen(w)
                }
                NodeEnum::CoalesceExpr(c) => {
                    let mut c = c.clone();
                    c.args = all(&c.args, &mut m)?;
                    NodeEnum::CoalesceExpr(c)
                }
                NodeEnum::MinMaxExpr(x) => {
                    let mut x = x.clone();
                    x.args = all(&x.args, &mut m)?;
                    NodeEnum::MinMaxExpr(x)
                }
                NodeEnum::List(l) => {
                    let mut l = l.clone();
                    l.items = all(&l.items, &mut m)?;
                    NodeEnum::List(l)
                }
                NodeEnum::RowExpr(r) => {
                    let mut r = r.clone();
                    r.args = all(&r.args, &mut m)?;
                    NodeEnum::RowExpr(r)
                }
                NodeEnum::TypeCast(t) => {
                    let mut t = t.clone();
                    t.arg = opt(&t.arg, &mut m)?;
                    NodeEnum::TypeCast(t)
                }
                NodeEnum::CollateClause(c) => {
                    let mut c = c.clone();
                    c.arg = opt(&c.arg, &mut m)?;
                    NodeEnum::CollateClause(c)
                }
                // Anything else is kept as it is, for the check to judge.
                _ => return Ok(n.clone()),
            };
        Ok(node(out))
    }
}

fn opt(
    n: &Option<Box<Node>>,
    m: &mut impl FnMut(&Node) -> Result<Node, AnalyzeError>,
) -> Result<Option<Box<Node>>, AnalyzeError> {
    n.as_deref().map(|x| m(x).map(Box::new)).transpose()
}

fn all(
    ns: &[Node],
    m: &mut impl FnMut(&Node) -> Result<Node, AnalyzeError>,
) -> Result<Vec<Node>, AnalyzeError> {
    ns.iter().map(m).collect()
}

fn column_ref(parts: &[&str]) -> Node {
    use pg_query::protobuf::{ColumnRef, String as PgString};
    node(NodeEnum::ColumnRef(ColumnRef {
        fields: parts
            .iter()
            .map(|p| {
                node(NodeEnum::String(PgString {
                    sval: (*p).to_string(),
                }))
            })
            .collect(),
        location: 0,
    }))
}

fn null() -> Node {
    use pg_query::protobuf::AConst;
    node(NodeEnum::AConst(AConst {
        isnull: true,
        location: 0,
        val: None,
    }))
}
