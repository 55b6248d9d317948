//! Expression-level helpers over pg_query parse trees: deparsing, output column naming, and the
//! whitelist check of what a row-level expression may contain in differential mode.

use pg_query::protobuf::{
    self, a_const, AExprKind, LimitOption, MinMaxOp, ResTarget, SelectStmt, SetOperation,
    SqlValueFunctionOp, SubLinkType,
};
use pg_query::{Node, NodeEnum};

use crate::error::{AnalyzeError, Unsupported};

/// Prefix of every column, alias and CTE name Shoal generates; users may not use it.
pub(crate) const RESERVED_PREFIX: &str = "__shoal_";

/// The aggregates differential mode maintains.
const SUPPORTED_AGGREGATES: [&str; 10] = [
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
];

/// What the refusal of another aggregate says differential mode does maintain.
const SUPPORTED_LIST: &str =
    "count, sum, avg, min, max, bool_and, bool_or, every, string_agg and array_agg";

/// Built-in aggregates that differential mode refuses; a user-defined aggregate cannot be told
/// from a function by name, so the caller's catalog check of `QueryPlan::functions` covers those.
const OTHER_AGGREGATES: &[&str] = &[
    "any_value",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "json_agg",
    "json_agg_strict",
    "json_object_agg",
    "json_object_agg_strict",
    "json_object_agg_unique",
    "json_object_agg_unique_strict",
    "jsonb_agg",
    "jsonb_agg_strict",
    "jsonb_object_agg",
    "jsonb_object_agg_strict",
    "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "range_intersect_agg",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var_pop",
    "var_samp",
    "variance",
    "xmlagg",
];

/// Built-in functions whose result changes between calls or sessions: a delta computed with them
/// would not match a recomputation. User-defined ones are left to the caller's catalog check.
const VOLATILE_FUNCTIONS: &[&str] = &[
    "clock_timestamp",
    "current_setting",
    "currval",
    "gen_random_uuid",
    "lastval",
    "nextval",
    "now",
    "pg_backend_pid",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_sleep",
    "random",
    "random_normal",
    "setseed",
    "setval",
    "statement_timestamp",
    "timeofday",
    "transaction_timestamp",
    "txid_current",
    "txid_current_if_assigned",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
];

/// String literals that PostgreSQL turns into the current time when cast to a date/time type.
const TIME_LITERALS: [&str; 5] = ["now", "today", "tomorrow", "yesterday", "epoch"];

pub(crate) fn kind_name(node: &NodeEnum) -> String {
    let debug = format!("{node:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// A one-target `SELECT` around an expression; pg_query deparses statements, not expressions.
fn select_of(target: Node) -> Node {
    let stmt = SelectStmt {
        target_list: vec![target],
        op: SetOperation::SetopNone as i32,
        limit_option: LimitOption::Default as i32,
        ..Default::default()
    };
    node(NodeEnum::SelectStmt(Box::new(stmt)))
}

fn res_target(val: &Node) -> Node {
    node(NodeEnum::ResTarget(Box::new(ResTarget {
        name: String::new(),
        indirection: Vec::new(),
        val: Some(Box::new(val.clone())),
        location: 0,
    })))
}

/// A FROM item (a table or a join tree) as SQL text.
pub(crate) fn deparse_from_item(item: &Node) -> String {
    deparse_from_list(std::slice::from_ref(item))
}

/// A FROM list as SQL text, items separated by commas.
pub(crate) fn deparse_from_list(items: &[Node]) -> String {
    let item = items.first().cloned().unwrap_or_default();
    let stmt = SelectStmt {
        from_clause: items.to_vec(),
        op: SetOperation::SetopNone as i32,
        limit_option: LimitOption::Default as i32,
        ..Default::default()
    };
    match node(NodeEnum::SelectStmt(Box::new(stmt))).deparse(Default::default()) {
        Ok(text) => text
            .strip_prefix("SELECT FROM ")
            .map(str::to_string)
            .unwrap_or(text),
        Err(_) => format!("<{}>", item.node.as_ref().map_or("?".into(), kind_name)),
    }
}

pub(crate) fn node(inner: NodeEnum) -> Node {
    Node { node: Some(inner) }
}

/// The expression as SQL text, normalized by PostgreSQL's own deparser (keeps identifiers quoted
/// where they need it, drops comments).
pub(crate) fn deparse_expr(node: &Node) -> String {
    match select_of(res_target(node)).deparse(Default::default()) {
        Ok(text) => text
            .strip_prefix("SELECT ")
            .map(str::to_string)
            .unwrap_or(text),
        // Only trees that came out of the parser are deparsed, so this is not expected; the
        // debug form still names the node in an error message.
        Err(_) => format!("<{}>", node.node.as_ref().map_or("?".into(), kind_name)),
    }
}

/// A whole statement (or FROM item, etc.) as SQL text.
pub(crate) fn deparse_stmt(node: &Node) -> Result<String, AnalyzeError> {
    node.deparse(Default::default())
        .map_err(|e| AnalyzeError::Invalid(format!("the query cannot be deparsed: {e}")))
}

pub(crate) fn string_value(node: &Node) -> Option<&str> {
    match node.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// The name parts of a qualified name list (function or type names).
pub(crate) fn name_parts(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(string_value)
        .map(str::to_string)
        .collect()
}

/// The name PostgreSQL gives an output column without an alias (its `FigureColname`), or None
/// for `?column?`.
pub(crate) fn figure_colname(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::ColumnRef(c) => c.fields.last().and_then(string_value).map(str::to_string),
        NodeEnum::AIndirection(i) => i
            .indirection
            .iter()
            .rev()
            .find_map(string_value)
            .map(str::to_string)
            .or_else(|| i.arg.as_deref().and_then(figure_colname)),
        NodeEnum::FuncCall(f) => name_parts(&f.funcname).pop(),
        NodeEnum::AExpr(e) if e.kind == AExprKind::AexprNullif as i32 => Some("nullif".into()),
        NodeEnum::TypeCast(t) => t.arg.as_deref().and_then(figure_colname).or_else(|| {
            t.type_name
                .as_ref()
                .and_then(|n| name_parts(&n.names).pop())
        }),
        NodeEnum::CollateClause(c) => c.arg.as_deref().and_then(figure_colname),
        NodeEnum::GroupingFunc(_) => Some("grouping".into()),
        NodeEnum::SubLink(s) => match SubLinkType::try_from(s.sub_link_type) {
            Ok(SubLinkType::ExistsSublink) => Some("exists".into()),
            Ok(SubLinkType::ArraySublink) => Some("array".into()),
            Ok(SubLinkType::ExprSublink) => match s.subselect.as_deref()?.node.as_ref()? {
                NodeEnum::SelectStmt(sel) => match sel.target_list.first()?.node.as_ref()? {
                    NodeEnum::ResTarget(rt) if !rt.name.is_empty() => Some(rt.name.clone()),
                    NodeEnum::ResTarget(rt) => rt.val.as_deref().and_then(figure_colname),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        },
        NodeEnum::CaseExpr(_) => Some("case".into()),
        NodeEnum::AArrayExpr(_) => Some("array".into()),
        NodeEnum::RowExpr(_) => Some("row".into()),
        NodeEnum::CoalesceExpr(_) => Some("coalesce".into()),
        NodeEnum::MinMaxExpr(m) => Some(
            if m.op == MinMaxOp::IsGreatest as i32 {
                "greatest"
            } else {
                "least"
            }
            .into(),
        ),
        NodeEnum::SqlvalueFunction(f) => sql_value_function_name(f.op).map(str::to_string),
        NodeEnum::XmlExpr(_) | NodeEnum::XmlSerialize(_) => Some("xmlexpr".into()),
        _ => None,
    }
}

fn sql_value_function_name(op: i32) -> Option<&'static str> {
    use SqlValueFunctionOp as Op;
    Some(match Op::try_from(op).ok()? {
        Op::SvfopCurrentDate => "current_date",
        Op::SvfopCurrentTime | Op::SvfopCurrentTimeN => "current_time",
        Op::SvfopCurrentTimestamp | Op::SvfopCurrentTimestampN => "current_timestamp",
        Op::SvfopLocaltime | Op::SvfopLocaltimeN => "localtime",
        Op::SvfopLocaltimestamp | Op::SvfopLocaltimestampN => "localtimestamp",
        Op::SvfopCurrentRole => "current_role",
        Op::SvfopCurrentUser => "current_user",
        Op::SvfopUser => "user",
        Op::SvfopSessionUser => "session_user",
        Op::SvfopCurrentCatalog => "current_catalog",
        Op::SvfopCurrentSchema => "current_schema",
        Op::SqlvalueFunctionOpUndefined => return None,
    })
}

/// An aggregate call differential mode can maintain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AggFunc {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// `count(DISTINCT x)`: kept from the count of rows of each (group, value) in a values
    /// table (`distinct.rs`). `sum(DISTINCT x)`, `avg(DISTINCT x)`: recomputed for the groups
    /// whose deltas have a non-NULL `x` (`min`/`max` with DISTINCT are the plain ones).
    CountDistinct,
    SumDistinct,
    AvgDistinct,
    /// `bool_and(x)` (and `every(x)`) and `bool_or(x)`: kept as the count of non-NULL inputs
    /// and of the inputs that decide (false ones for AND, true ones for OR), which deltas
    /// update exactly.
    BoolAnd,
    BoolOr,
    /// `string_agg(...)` and `array_agg(...)`: no inverse, recomputed for the groups with
    /// changed rows. Their [`crate::Aggregate::arg`] is the whole call as written (arguments,
    /// DISTINCT, ORDER BY, FILTER), which the recomputation repeats.
    StringAgg,
    ArrayAgg,
}

impl AggFunc {
    /// True for the aggregates a delta cannot always update, recomputed from the sources' new
    /// state for the groups that need it.
    pub fn rescans(self) -> bool {
        matches!(
            self,
            AggFunc::Min
                | AggFunc::Max
                | AggFunc::SumDistinct
                | AggFunc::AvgDistinct
                | AggFunc::StringAgg
                | AggFunc::ArrayAgg
        )
    }

    /// True for the aggregates whose argument is their whole call ([`AggFunc::StringAgg`]).
    pub(crate) fn whole_call(self) -> bool {
        matches!(self, AggFunc::StringAgg | AggFunc::ArrayAgg)
    }

    /// The call on `arg` (`*` for count(*)).
    pub(crate) fn call(self, arg: &str) -> String {
        if self.whole_call() {
            return arg.to_string();
        }
        let (name, distinct) = match self {
            AggFunc::CountStar | AggFunc::Count => ("count", ""),
            AggFunc::Sum => ("sum", ""),
            AggFunc::Avg => ("avg", ""),
            AggFunc::Min => ("min", ""),
            AggFunc::Max => ("max", ""),
            AggFunc::CountDistinct => ("count", "DISTINCT "),
            AggFunc::SumDistinct => ("sum", "DISTINCT "),
            AggFunc::AvgDistinct => ("avg", "DISTINCT "),
            AggFunc::BoolAnd => ("bool_and", ""),
            AggFunc::BoolOr => ("bool_or", ""),
            AggFunc::StringAgg | AggFunc::ArrayAgg => unreachable!("a whole call"),
        };
        format!("{name}({distinct}{arg})")
    }
}

/// How a function call is to be treated.
pub(crate) enum Call {
    /// A supported aggregate with its argument (None for `count(*)`). A FILTER is folded into
    /// the argument: `sum(x) FILTER (WHERE c)` is `sum(CASE WHEN c THEN x END)`, and
    /// `count(*) FILTER (WHERE c)` is `count(CASE WHEN c THEN 1 END)`, which are equal (the
    /// aggregates skip NULLs, and have the same value over no rows), so deltas fold it in.
    Aggregate(AggFunc, Option<Box<Node>>),
    /// Anything else; aggregates are refused by [`RowExprCheck`].
    Other,
}

fn is_catalog_or_unqualified(parts: &[String]) -> bool {
    parts.len() == 1 || (parts.len() == 2 && parts[0] == "pg_catalog")
}

/// True when the call is an aggregate PostgreSQL knows by name (supported or not), or has
/// aggregate-only syntax (`*`, DISTINCT, ORDER BY, FILTER, WITHIN GROUP).
pub(crate) fn is_aggregate_call(f: &protobuf::FuncCall) -> bool {
    if f.over.is_some() {
        return false;
    }
    let parts = name_parts(&f.funcname);
    let name = parts.last().map(String::as_str).unwrap_or("");
    let known = is_catalog_or_unqualified(&parts)
        && (SUPPORTED_AGGREGATES.contains(&name) || OTHER_AGGREGATES.contains(&name));
    known
        || f.agg_star
        || f.agg_distinct
        || !f.agg_order.is_empty()
        || f.agg_filter.is_some()
        || f.agg_within_group
}

/// Classifies a top-level aggregate call, refusing the forms differential mode cannot maintain.
pub(crate) fn classify_call(node: &Node) -> Result<Call, AnalyzeError> {
    let Some(NodeEnum::FuncCall(f)) = node.node.as_ref() else {
        return Ok(Call::Other);
    };
    if !is_aggregate_call(f) {
        return Ok(Call::Other);
    }
    let at = || Some(deparse_expr(node));
    let parts = name_parts(&f.funcname);
    let name = parts.last().map(String::as_str).unwrap_or("");
    if !is_catalog_or_unqualified(&parts) || !SUPPORTED_AGGREGATES.contains(&name) {
        return Err(Unsupported::new(
            format!("aggregate functions other than {SUPPORTED_LIST}"),
            at(),
        )
        .into());
    }
    if f.func_variadic {
        return Err(Unsupported::new("VARIADIC aggregate arguments", at()).into());
    }
    if matches!(name, "string_agg" | "array_agg") {
        // Recomputed per group as written, ORDER BY, DISTINCT and FILTER included: a FILTER
        // cannot be folded into array_agg's argument, which keeps NULLs.
        let func = match (name, f.args.len(), f.agg_star || f.agg_within_group) {
            ("string_agg", 2, false) => AggFunc::StringAgg,
            ("array_agg", 1, false) => AggFunc::ArrayAgg,
            _ => {
                return Err(AnalyzeError::Invalid(format!(
                    "`{}` is not a valid call of the aggregate {name}",
                    deparse_expr(node)
                )))
            }
        };
        if f.args
            .iter()
            .any(|a| matches!(a.node, Some(NodeEnum::NamedArgExpr(_))))
        {
            return Err(Unsupported::new("named aggregate arguments", at()).into());
        }
        return Ok(Call::Aggregate(func, Some(Box::new(node.clone()))));
    }
    if !f.agg_order.is_empty() || f.agg_within_group {
        return Err(Unsupported::new("ordered aggregates", at()).into());
    }
    let filtered = |arg: &str| -> Result<Option<Node>, AnalyzeError> {
        match f.agg_filter.as_deref() {
            Some(condition) => {
                let case = format!("CASE WHEN ({}) THEN ({arg}) END", deparse_expr(condition));
                parse_expr(&case).map(Some)
            }
            None => Ok(None),
        }
    };
    let func = match (name, f.agg_star, f.args.len(), f.agg_distinct) {
        ("count", true, 0, false) => {
            return Ok(match filtered("1")? {
                Some(case) => Call::Aggregate(AggFunc::Count, Some(Box::new(case))),
                None => Call::Aggregate(AggFunc::CountStar, None),
            })
        }
        ("count", false, 1, false) => AggFunc::Count,
        ("sum", false, 1, false) => AggFunc::Sum,
        ("avg", false, 1, false) => AggFunc::Avg,
        ("count", false, 1, true) => AggFunc::CountDistinct,
        ("sum", false, 1, true) => AggFunc::SumDistinct,
        ("avg", false, 1, true) => AggFunc::AvgDistinct,
        ("min", false, 1, _) => AggFunc::Min,
        ("max", false, 1, _) => AggFunc::Max,
        // One distinct value decides as well as all of them.
        ("bool_and" | "every", false, 1, _) => AggFunc::BoolAnd,
        ("bool_or", false, 1, _) => AggFunc::BoolOr,
        _ => {
            return Err(AnalyzeError::Invalid(format!(
                "`{}` is not a valid call of the aggregate {name}",
                deparse_expr(node)
            )))
        }
    };
    let arg = &f.args[0];
    if matches!(arg.node, Some(NodeEnum::NamedArgExpr(_))) {
        return Err(Unsupported::new("named aggregate arguments", at()).into());
    }
    let arg = filtered(&deparse_expr(arg))?.unwrap_or_else(|| arg.clone());
    Ok(Call::Aggregate(func, Some(Box::new(arg))))
}

/// The expressions of an aggregate call [`classify_call`] returned that are evaluated per row,
/// to check as row-level: the argument, or for a whole call its arguments, ORDER BY keys and
/// FILTER.
pub(crate) fn row_parts(func: AggFunc, arg: &Node) -> Vec<&Node> {
    match arg.node.as_ref() {
        Some(NodeEnum::FuncCall(f)) if func.whole_call() => {
            let mut parts: Vec<&Node> = f.args.iter().collect();
            for sort in &f.agg_order {
                match sort.node.as_ref() {
                    Some(NodeEnum::SortBy(sb)) => parts.extend(sb.node.as_deref()),
                    _ => parts.push(sort),
                }
            }
            parts.extend(f.agg_filter.as_deref());
            parts
        }
        _ => vec![arg],
    }
}

/// An expression parsed from SQL text (one made here from deparsed parts).
fn parse_expr(sql: &str) -> Result<Node, AnalyzeError> {
    let parsed = pg_query::parse(&format!("SELECT {sql}"), 0)
        .map_err(|e| AnalyzeError::Invalid(format!("`{sql}` does not parse: {e}")))?;
    let target = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(|s| match s.node.as_ref() {
            Some(NodeEnum::SelectStmt(sel)) => sel.target_list.first().cloned(),
            _ => None,
        });
    match target.and_then(|t| t.node) {
        Some(NodeEnum::ResTarget(rt)) => rt.val.map(|v| *v),
        _ => None,
    }
    .ok_or_else(|| AnalyzeError::Invalid(format!("`{sql}` is not an expression")))
}

/// Checks that an expression is row-level (depends only on the columns of one joined row) and
/// deterministic, so its value in a delta row equals its value in a recomputation.
pub(crate) struct RowExprCheck<'a> {
    /// Range names (aliases, or relation names) of the FROM items.
    pub range_names: &'a [String],
    /// Where the expression sits, for messages ("WHERE", "the select list").
    pub place: &'a str,
}

impl RowExprCheck<'_> {
    pub(crate) fn check(&self, node: &Node) -> Result<(), AnalyzeError> {
        let Some(inner) = node.node.as_ref() else {
            return Ok(());
        };
        let at = || Some(deparse_expr(node));
        match inner {
            NodeEnum::ColumnRef(c) => self.column_ref(c, node),
            NodeEnum::AConst(_) => Ok(()),
            NodeEnum::ParamRef(_) => Err(Unsupported::new("parameters", at()).into()),
            NodeEnum::AExpr(e) => {
                self.opt(&e.lexpr)?;
                self.opt(&e.rexpr)
            }
            NodeEnum::List(l) => self.all(&l.items),
            NodeEnum::BoolExpr(b) => self.all(&b.args),
            NodeEnum::NullTest(n) => self.opt(&n.arg),
            NodeEnum::BooleanTest(b) => self.opt(&b.arg),
            NodeEnum::CaseExpr(c) => {
                self.opt(&c.arg)?;
                self.all(&c.args)?;
                self.opt(&c.defresult)
            }
            NodeEnum::CaseWhen(w) => {
                self.opt(&w.expr)?;
                self.opt(&w.result)
            }
            NodeEnum::CoalesceExpr(c) => self.all(&c.args),
            NodeEnum::MinMaxExpr(m) => self.all(&m.args),
            NodeEnum::RowExpr(r) => self.all(&r.args),
            NodeEnum::AArrayExpr(a) => self.all(&a.elements),
            NodeEnum::CollateClause(c) => self.opt(&c.arg),
            NodeEnum::NamedArgExpr(n) => self.opt(&n.arg),
            NodeEnum::AIndirection(i) => {
                self.opt(&i.arg)?;
                self.all(&i.indirection)
            }
            NodeEnum::AIndices(i) => {
                self.opt(&i.lidx)?;
                self.opt(&i.uidx)
            }
            NodeEnum::String(_) | NodeEnum::AStar(_) => Ok(()),
            NodeEnum::TypeCast(t) => {
                if let Some(NodeEnum::AConst(c)) = t.arg.as_deref().and_then(|a| a.node.as_ref()) {
                    if let Some(a_const::Val::Sval(s)) = &c.val {
                        let word = s.sval.trim().to_ascii_lowercase();
                        if TIME_LITERALS.contains(&word.as_str()) {
                            return Err(Unsupported::new("time-dependent literals", at())
                                .hint("the value would be frozen at each refresh")
                                .into());
                        }
                    }
                }
                self.opt(&t.arg)
            }
            NodeEnum::FuncCall(f) => {
                if f.over.is_some() {
                    return Err(Unsupported::new("window functions", at()).into());
                }
                if is_aggregate_call(f) {
                    return Err(Unsupported::new(
                        format!("aggregate functions in {}", self.place),
                        at(),
                    )
                    .into());
                }
                let parts = name_parts(&f.funcname);
                let name = parts.last().map(String::as_str).unwrap_or("");
                if is_catalog_or_unqualified(&parts) && VOLATILE_FUNCTIONS.contains(&name) {
                    return Err(Unsupported::new("volatile functions", at())
                        .hint("their value differs between the refresh and a recomputation")
                        .into());
                }
                self.all(&f.args)
            }
            NodeEnum::SqlvalueFunction(_) => {
                Err(Unsupported::new("time- and session-dependent values", at()).into())
            }
            NodeEnum::SubLink(_) => Err(Unsupported::new("subqueries", at()).into()),
            NodeEnum::GroupingFunc(_) => Err(Unsupported::new("GROUPING() calls", at()).into()),
            other => {
                Err(Unsupported::new(format!("{} expressions", kind_name(other)), at()).into())
            }
        }
    }

    fn opt(&self, node: &Option<Box<Node>>) -> Result<(), AnalyzeError> {
        match node {
            Some(n) => self.check(n),
            None => Ok(()),
        }
    }

    fn all(&self, nodes: &[Node]) -> Result<(), AnalyzeError> {
        nodes.iter().try_for_each(|n| self.check(n))
    }

    fn column_ref(&self, c: &protobuf::ColumnRef, node: &Node) -> Result<(), AnalyzeError> {
        let text = deparse_expr(node);
        if c.fields
            .iter()
            .any(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
        {
            return Err(AnalyzeError::Invalid(format!(
                "`{text}` is not supported in a stream table's query: list the columns"
            )));
        }
        let parts: Vec<&str> = c.fields.iter().filter_map(string_value).collect();
        if parts.iter().any(|p| p.starts_with(RESERVED_PREFIX)) {
            return Err(reserved(&text));
        }
        match parts.as_slice() {
            [name] if self.range_names.iter().any(|r| r == name) => {
                Err(Unsupported::new("whole-row references", Some(text))
                    .hint("qualify the column (`t.col`) if it is a column named like a table")
                    .into())
            }
            [_] => Ok(()),
            [qualifier, _] if self.range_names.iter().any(|r| r == qualifier) => Ok(()),
            [qualifier, _] => Err(AnalyzeError::Invalid(format!(
                "`{text}` refers to `{qualifier}`, which is not in the FROM clause"
            ))),
            _ => Err(
                Unsupported::new("schema-qualified column references", Some(text))
                    .hint("refer to columns through the table's name or alias")
                    .into(),
            ),
        }
    }
}

pub(crate) fn reserved(text: &str) -> AnalyzeError {
    AnalyzeError::Invalid(format!(
        "`{text}`: names starting with `{RESERVED_PREFIX}` are reserved for Shoal's hidden columns"
    ))
}

/// True when the expression contains an aggregate call anywhere (outside subqueries, which are
/// refused separately).
pub(crate) fn contains_aggregate(node: &Node) -> bool {
    let Some(inner) = node.node.as_ref() else {
        return false;
    };
    let any = |nodes: &[Node]| nodes.iter().any(contains_aggregate);
    let opt = |n: &Option<Box<Node>>| n.as_deref().is_some_and(contains_aggregate);
    match inner {
        NodeEnum::FuncCall(f) => (f.over.is_none() && is_aggregate_call(f)) || any(&f.args),
        NodeEnum::AExpr(e) => opt(&e.lexpr) || opt(&e.rexpr),
        NodeEnum::List(l) => any(&l.items),
        NodeEnum::BoolExpr(b) => any(&b.args),
        NodeEnum::NullTest(n) => opt(&n.arg),
        NodeEnum::BooleanTest(b) => opt(&b.arg),
        NodeEnum::CaseExpr(c) => opt(&c.arg) || any(&c.args) || opt(&c.defresult),
        NodeEnum::CaseWhen(w) => opt(&w.expr) || opt(&w.result),
        NodeEnum::CoalesceExpr(c) => any(&c.args),
        NodeEnum::MinMaxExpr(m) => any(&m.args),
        NodeEnum::RowExpr(r) => any(&r.args),
        NodeEnum::AArrayExpr(a) => any(&a.elements),
        NodeEnum::CollateClause(c) => opt(&c.arg),
        NodeEnum::TypeCast(t) => opt(&t.arg),
        NodeEnum::NamedArgExpr(n) => opt(&n.arg),
        NodeEnum::AIndirection(i) => opt(&i.arg) || any(&i.indirection),
        _ => false,
    }
}

/// Two group-by or output expressions that PostgreSQL resolves to the same thing. Column
/// references also match when one is qualified and the other is not (`o.k` and `k`): an
/// unqualified name is only valid when exactly one FROM item has that column.
pub(crate) fn same_expr(a: &Node, b: &Node) -> bool {
    if let (Some(NodeEnum::ColumnRef(x)), Some(NodeEnum::ColumnRef(y))) =
        (a.node.as_ref(), b.node.as_ref())
    {
        let xs: Vec<&str> = x.fields.iter().filter_map(string_value).collect();
        let ys: Vec<&str> = y.fields.iter().filter_map(string_value).collect();
        return xs == ys || ((xs.len() == 1 || ys.len() == 1) && xs.last() == ys.last());
    }
    deparse_expr(a) == deparse_expr(b)
}
