//! `analyze`: from the defining query's parse tree to a [`QueryPlan`].

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use pg_query::protobuf::{a_const, KeywordKind, SelectStmt, SetOperation, Token};
use pg_query::{Node, NodeEnum, NodeRef};
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{
    classify_call, contains_aggregate, deparse_expr, deparse_from_list, deparse_stmt,
    figure_colname, kind_name, name_parts, reserved, row_parts, same_expr, string_value, AggFunc,
    Call, RowExprCheck, RESERVED_PREFIX,
};
use crate::from::{collect_from, source_slot, FromParts, OuterJoin};
use crate::having::Having;
use crate::union::{analyze_union, Union};
use crate::window::{analyze_window, Window};
use shoal_sql::quote_ident;

/// A relation as the defining query names it: schema-qualified or not, unquoted parts exactly as
/// PostgreSQL folded them. Resolving it (search_path) is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRef {
    pub schema: Option<String>,
    pub name: String,
}

impl SourceRef {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        SourceRef {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The relation as SQL text, every part quoted.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

/// One FROM item of a differential query: a relation and the name the query refers to it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub relation: SourceRef,
    pub alias: Option<String>,
}

impl Source {
    /// The name column references qualify with: the alias, or else the relation's name.
    pub fn range_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.relation.name)
    }
}

/// What an output column of a grouped query is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnRole {
    /// A column of a query without GROUP BY or aggregates.
    Plain,
    /// The value of GROUP BY key `i` (index into [`Grouping::keys`]).
    Key(usize),
    /// The value of aggregate `j` (index into [`Grouping::aggregates`]).
    Aggregate(usize),
}

/// A visible column of the stream table, in select-list order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputColumn {
    /// The name PostgreSQL gives the column (alias, column name, function name or `?column?`).
    pub name: String,
    /// The select-list expression, deparsed.
    pub expr: String,
    pub role: ColumnRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKey {
    /// The GROUP BY expression, deparsed.
    pub expr: String,
    /// The output column showing it, if any; otherwise the key is kept in a hidden column.
    pub column: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub func: AggFunc,
    /// The argument, deparsed; None for `count(*)`.
    pub arg: Option<String>,
    /// The output column holding its value; None for one only HAVING uses, stored hidden as
    /// [`hidden_agg`].
    pub column: Option<usize>,
}

/// The stored column of GROUP BY key `i` when no output column shows it.
pub(crate) fn hidden_key(i: usize) -> String {
    format!("__shoal_key_{}", i + 1)
}

/// The stored column of aggregate `j` when no output column shows it.
pub(crate) fn hidden_agg(j: usize) -> String {
    format!("__shoal_agg_{}", j + 1)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grouping {
    /// Empty for an aggregate without GROUP BY (one row, always present).
    pub keys: Vec<GroupKey>,
    pub aggregates: Vec<Aggregate>,
    /// The HAVING condition over the stored row (`"__shoal_t"`'s keys and aggregates), which the
    /// view applies: every group is stored, whether it passes or not.
    pub having: Option<String>,
}

/// The shape of a query that differential refresh maintains: an inner join of relations,
/// filtered, then projected (optionally DISTINCT, or with window functions) or grouped and
/// aggregated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differential {
    pub sources: Vec<Source>,
    /// The FROM clause as written (joins with their ON or USING conditions, join aliases),
    /// deparsed with source `i` and its alias as the slot [`source_slot`]`(i)`, so that
    /// each term of a delta can put a relation or a delta there and unqualified references to
    /// merged USING columns keep their meaning.
    pub from: String,
    /// Present when FROM is an outer join of two relations (sources 0 and 1).
    pub outer: Option<OuterJoin>,
    /// Present for a UNION [ALL] of projections: then the fields above are its first branch's
    /// (with `distinct` for UNION), and refreshes go by the branches.
    pub union: Option<Union>,
    /// The WHERE clause, deparsed.
    pub filter: Option<String>,
    pub distinct: bool,
    /// Present when the query has GROUP BY or aggregates.
    pub grouping: Option<Grouping>,
    /// Present when the select list has window functions (then `grouping` is None).
    pub window: Option<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Maintenance {
    Differential(Differential),
    /// Only full refresh can maintain the query, for this reason.
    FullOnly(Unsupported),
}

/// Everything the generators need to know about a defining query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryPlan {
    /// The defining query as PostgreSQL's deparser writes it (no comments, no semicolon).
    pub query: String,
    /// The visible columns of the stream table.
    pub columns: Vec<OutputColumn>,
    /// Every relation the query reads, anywhere (also in subqueries), each once.
    pub relations: Vec<SourceRef>,
    /// Every function the query calls, as written (`lower`, `myschema.f`), so the caller can
    /// check their volatility in `pg_proc`: only a few built-in volatile ones are known here.
    pub functions: Vec<String>,
    /// Every name the query's text could use for a column, or None when that cannot be told
    /// (Unicode-escaped identifiers). A differential query has no `*`, whole-row reference,
    /// `NATURAL` join or column alias list (its `USING` columns are named), so every source
    /// column it reads is named here (with function
    /// names, keywords and aliases as harmless extras): reading a source's changes back, the
    /// other columns can be left out.
    pub referenced_columns: Option<Vec<String>>,
    pub maintenance: Maintenance,
}

impl QueryPlan {
    pub fn differential(&self) -> Option<&Differential> {
        match &self.maintenance {
            Maintenance::Differential(d) => Some(d),
            Maintenance::FullOnly(_) => None,
        }
    }

    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

/// How a stream table is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Differential when the query allows it, else full.
    Auto,
    Differential,
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Differential => "differential",
            Mode::Full => "full",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "differential" | "incremental" => Ok(Mode::Differential),
            "full" => Ok(Mode::Full),
            other => Err(format!(
                "unknown refresh mode `{other}` (expected auto, differential or full)"
            )),
        }
    }
}

/// The mode a stream table will actually use; never [`Mode::Auto`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenMode {
    pub mode: Mode,
    /// Why Auto fell back to full refresh: "full refresh, because ...".
    pub reason: Option<String>,
}

/// Decides the refresh mode from an analysis and the mode the user asked for. Differential on a
/// full-only query is an error naming the unsupported part; Auto falls back to full with a reason.
pub fn choose_mode(
    analysis: &Result<QueryPlan, AnalyzeError>,
    requested: Mode,
) -> Result<ChosenMode, AnalyzeError> {
    let plan = analysis.as_ref().map_err(Clone::clone)?;
    match (requested, &plan.maintenance) {
        (Mode::Full, _) => Ok(ChosenMode {
            mode: Mode::Full,
            reason: None,
        }),
        (Mode::Auto | Mode::Differential, Maintenance::Differential(_)) => Ok(ChosenMode {
            mode: Mode::Differential,
            reason: None,
        }),
        (Mode::Differential, Maintenance::FullOnly(u)) => Err(AnalyzeError::Unsupported(u.clone())),
        (Mode::Auto, Maintenance::FullOnly(u)) => Ok(ChosenMode {
            mode: Mode::Full,
            reason: Some(format!("full refresh, because {u}")),
        }),
    }
}

/// Parses and analyzes a defining query. `Err` means the query cannot define a stream table at
/// all (does not parse, is not one SELECT, has `*` or clashing column names); a query that only
/// full refresh can maintain is `Ok` with [`Maintenance::FullOnly`].
pub fn analyze(sql: &str) -> Result<QueryPlan, AnalyzeError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(AnalyzeError::NotASelect(format!(
            "{} statements",
            stmts.len()
        )));
    }
    let stmt = stmts[0]
        .stmt
        .as_deref()
        .ok_or_else(|| AnalyzeError::NotASelect("an empty statement".into()))?;
    let Some(NodeEnum::SelectStmt(sel)) = stmt.node.as_ref() else {
        let kind = stmt.node.as_ref().map_or("nothing".into(), kind_name);
        return Err(AnalyzeError::NotASelect(format!("a {kind}")));
    };
    if sel.into_clause.is_some() {
        return Err(AnalyzeError::Invalid(
            "SELECT INTO creates a table; give the query without INTO".into(),
        ));
    }
    let query = deparse_stmt(stmt)?;
    let names = output_names(sel)?;

    let cte_names: HashSet<&str> = parsed.cte_names.iter().map(String::as_str).collect();
    let mut relations = Vec::new();
    let mut functions = Vec::new();
    let referenced_columns = names_in_text(sql)?;
    for (node, _, _, _) in parsed.protobuf.nodes() {
        match node {
            NodeRef::RangeVar(rv) => {
                if rv.schemaname.is_empty() && cte_names.contains(rv.relname.as_str()) {
                    continue;
                }
                let r = SourceRef::new(
                    (!rv.schemaname.is_empty()).then_some(rv.schemaname.as_str()),
                    &rv.relname,
                );
                if !relations.contains(&r) {
                    relations.push(r);
                }
            }
            NodeRef::FuncCall(f) => {
                let name = name_parts(&f.funcname).join(".");
                if !functions.contains(&name) {
                    functions.push(name);
                }
            }
            _ => {}
        }
    }

    let (maintenance, columns) = match differential(sel, &names) {
        Ok((d, columns)) => (Maintenance::Differential(d), columns),
        Err(AnalyzeError::Unsupported(u)) => {
            let exprs = top_level_exprs(sel);
            let columns = names
                .iter()
                .enumerate()
                .map(|(i, name)| OutputColumn {
                    name: name.clone(),
                    expr: exprs.get(i).cloned().unwrap_or_default(),
                    role: ColumnRole::Plain,
                })
                .collect();
            (Maintenance::FullOnly(u), columns)
        }
        Err(other) => return Err(other),
    };
    Ok(QueryPlan {
        query,
        columns,
        relations,
        functions,
        referenced_columns,
        maintenance,
    })
}

/// Every identifier in `sql` (quoted ones unquoted, bare ones folded to lower case as PostgreSQL
/// folds them) and every keyword (a column may be named like an unreserved one), each once. Made
/// by PostgreSQL's own lexer rather than from the parse tree, so that no expression form can hide
/// a column. None when an identifier is Unicode-escaped (`U&"..."`).
fn names_in_text(sql: &str) -> Result<Option<Vec<String>>, AnalyzeError> {
    let scanned = pg_query::scan(sql).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    for token in &scanned.tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end))
        else {
            continue;
        };
        let Some(text) = sql.get(start..end) else {
            continue;
        };
        if text.starts_with("U&") || text.starts_with("u&") {
            return Ok(None);
        }
        let is_ident = token.token == Token::Ident as i32;
        let is_keyword = token.keyword_kind != KeywordKind::NoKeyword as i32;
        if !is_ident && !is_keyword {
            continue;
        }
        let name = if let Some(quoted) = text.strip_prefix('"') {
            quoted
                .strip_suffix('"')
                .unwrap_or(quoted)
                .replace("\"\"", "\"")
        } else {
            text.to_ascii_lowercase()
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Some(names))
}

/// The SELECT whose target list names a set operation's columns: the leftmost one.
fn leftmost(sel: &SelectStmt) -> &SelectStmt {
    let mut s = sel;
    while s.op != SetOperation::SetopNone as i32 {
        match s.larg.as_deref() {
            Some(l) => s = l,
            None => break,
        }
    }
    s
}

fn top_level_exprs(sel: &SelectStmt) -> Vec<String> {
    leftmost(sel)
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref().map(deparse_expr),
            _ => None,
        })
        .collect()
}

/// The output column names, as PostgreSQL would name them; refuses what a table cannot hold.
fn output_names(sel: &SelectStmt) -> Result<Vec<String>, AnalyzeError> {
    let s = leftmost(sel);
    let mut names = Vec::new();
    if let Some(first) = s.values_lists.first() {
        let width = match first.node.as_ref() {
            Some(NodeEnum::List(l)) => l.items.len(),
            _ => 0,
        };
        names.extend((1..=width).map(|i| format!("column{i}")));
    }
    for target in &s.target_list {
        let Some(NodeEnum::ResTarget(rt)) = target.node.as_ref() else {
            continue;
        };
        let val = rt.val.as_deref();
        if let Some(Some(NodeEnum::ColumnRef(c))) = val.map(|v| v.node.as_ref()) {
            if c.fields
                .iter()
                .any(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
            {
                return Err(AnalyzeError::Invalid(format!(
                    "`{}` in the select list is not supported: list the columns, so the stream \
                     table's columns do not depend on the source tables' definitions",
                    val.map(deparse_expr).unwrap_or_default()
                )));
            }
        }
        let name = if rt.name.is_empty() {
            val.and_then(figure_colname)
                .unwrap_or_else(|| "?column?".to_string())
        } else {
            rt.name.clone()
        };
        names.push(name);
    }
    if names.is_empty() {
        return Err(AnalyzeError::Invalid(
            "the query has no output columns".into(),
        ));
    }
    let mut seen = HashSet::new();
    for name in &names {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(reserved(name));
        }
        if !seen.insert(name.as_str()) {
            return Err(AnalyzeError::Invalid(format!(
                "the output column name `{name}` appears more than once; give the columns \
                 distinct aliases (AS ...)"
            )));
        }
    }
    Ok(names)
}

fn unsupported(feature: &str, at: Option<String>) -> AnalyzeError {
    Unsupported::new(feature, at).into()
}

/// The differential analysis proper; `Err(Unsupported)` sends the query to full refresh.
fn differential(
    sel: &SelectStmt,
    names: &[String],
) -> Result<(Differential, Vec<OutputColumn>), AnalyzeError> {
    if sel.op != SetOperation::SetopNone as i32 {
        if !sel.sort_clause.is_empty()
            || sel.limit_count.is_some()
            || sel.limit_offset.is_some()
            || sel.with_clause.is_some()
            || !sel.locking_clause.is_empty()
        {
            return Err(unsupported(
                "ORDER BY, LIMIT, WITH and locking clauses around set operations",
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
    if let Some(with) = &sel.with_clause {
        let ctes: Vec<String> = with
            .ctes
            .iter()
            .filter_map(|c| match c.node.as_ref() {
                Some(NodeEnum::CommonTableExpr(cte)) => Some(cte.ctename.clone()),
                _ => None,
            })
            .collect();
        return Err(unsupported(
            "common table expressions",
            Some(format!("WITH {} AS (...)", ctes.join(", "))),
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
    let filter = match sel.where_clause.as_deref() {
        Some(w) => {
            RowExprCheck {
                range_names: &range_names,
                place: "WHERE",
            }
            .check(w)?;
            Some(deparse_expr(w))
        }
        None => None,
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
