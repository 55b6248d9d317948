//! `analyze`: from the defining query's parse tree to a [`QueryPlan`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use pg_query::protobuf::{KeywordKind, SelectStmt, SetOperation, Token};
use pg_query::{NodeEnum, NodeRef};
use serde::{Deserialize, Serialize};

use crate::error::{AnalyzeError, Unsupported};
use crate::expr::{
    deparse_expr, deparse_stmt, figure_colname, kind_name, name_parts, reserved, AggFunc,
    RESERVED_PREFIX,
};
use crate::from::OuterJoin;
use crate::refresh::DeltaRelations;
use crate::semi::SemiJoin;
use crate::union::Union;
use crate::window::Window;
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

/// One FROM item of a differential query: a relation and the name the query refers to it by,
/// or a subquery over one relation, by its alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub relation: SourceRef,
    pub alias: Option<String>,
    /// Present when the item is a subquery in FROM (or an inlined CTE) that filters and
    /// projects `relation`: its delta is the relation's delta through the same SELECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subquery: Option<Subquery>,
}

/// A subquery in FROM over one relation, without grouping, DISTINCT, windows or limits: a
/// row-by-row filter and projection, so it maps a signed delta row by row too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subquery {
    /// The select list, each expression with its output name (`o.amount * 2 AS "double"`).
    pub select: String,
    /// The name the subquery's own expressions give the relation (its alias, or its name).
    pub inner_name: String,
    /// Its WHERE clause, deparsed.
    pub filter: Option<String>,
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
    /// `__shoal_agg_<j + 1>` (j its index).
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
    /// deparsed with source `i` and its alias as the slot `source_slot(i)`, so that
    /// each term of a delta can put a relation or a delta there and unqualified references to
    /// merged USING columns keep their meaning.
    pub from: String,
    /// Present when FROM is an outer join of two relations (sources 0 and 1).
    pub outer: Option<OuterJoin>,
    /// The `EXISTS`, `NOT EXISTS` and `IN (subquery)` conditions among the top-level ANDs of
    /// WHERE (`filter` holds the others). Semi-join `k` is source `sources.len() + k` for sign
    /// columns and deltas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub semi: Vec<SemiJoin>,
    /// Present for a UNION \[ALL\] of projections: then the fields above are its first branch's
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
// One per stream table, built once per refresh: its size does not matter.
#[allow(clippy::large_enum_variant)]
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

impl Differential {
    /// The joined sources, then the semi-joins' sources, in the order of their indexes.
    pub fn all_sources(&self) -> impl Iterator<Item = &Source> {
        self.sources
            .iter()
            .chain(self.semi.iter().map(|s| &s.source))
    }

    /// The delta of each source of [`Differential::all_sources`] that changed.
    pub(crate) fn deltas_of<'a>(
        &self,
        deltas: &'a HashMap<SourceRef, DeltaRelations>,
    ) -> Vec<Option<&'a DeltaRelations>> {
        self.all_sources()
            .map(|s| deltas.get(&s.relation))
            .collect()
    }
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

    let (maintenance, columns) = match crate::analysis::differential(sel, &names) {
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
