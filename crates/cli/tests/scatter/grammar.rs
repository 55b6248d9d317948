//! Random queries over the test's schema, from a small grammar of the shapes the endpoint
//! splits or may split, kept as clauses so that a failing query can be shrunk clause by clause.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::data::{Kind, Table, ITEMS, ORDERS, PRODUCTS, REFUNDS};

/// What a query is made of, for the summary and for the list of shapes that must split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// Aggregates over one table, no GROUP BY.
    Aggregate,
    /// GROUP BY an expression (`customer_id % 3`).
    GroupByExpression,
    /// GROUP BY a column other than the distribution column.
    GroupByColumn,
    /// GROUP BY the distribution column.
    GroupByKey,
    /// `SELECT columns ... ORDER BY ... LIMIT k`, no aggregate.
    SortedLimit,
    /// Aggregates with HAVING.
    Having,
    /// `count(DISTINCT ...)` of the distribution column.
    DistinctKey,
    /// `count(DISTINCT ...)` of another column.
    DistinctOther,
    /// Two distributed tables colocated, joined on their distribution columns.
    ColocatedJoin,
    /// A distributed table joined to the reference table.
    ReferenceJoin,
    /// Two colocated tables and the reference table.
    ThreeWayJoin,
    /// Joins that must not run shard by shard as they are, or not simply: on columns other
    /// than the distribution columns, FULL and RIGHT joins, the reference table on the side
    /// an outer join keeps.
    OtherJoin,
}

/// How often each shape is drawn.
const WEIGHTS: &[(Shape, u32)] = &[
    (Shape::Aggregate, 12),
    (Shape::GroupByExpression, 12),
    (Shape::GroupByColumn, 10),
    (Shape::GroupByKey, 6),
    (Shape::SortedLimit, 12),
    (Shape::Having, 8),
    (Shape::DistinctKey, 4),
    (Shape::DistinctOther, 3),
    (Shape::ColocatedJoin, 10),
    (Shape::ReferenceJoin, 6),
    (Shape::ThreeWayJoin, 5),
    (Shape::OtherJoin, 6),
];

#[derive(Clone, Debug)]
pub struct Output {
    pub expr: String,
    pub alias: Option<String>,
    pub aggregate: bool,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub expr: String,
    /// Written as the position of the output it equals, when there is one.
    pub by_position: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum OrderStyle {
    Position,
    /// The output's alias (its expression when it has none).
    Name,
    Expression,
}

#[derive(Clone, Debug)]
pub struct Order {
    pub output: usize,
    pub style: OrderStyle,
    pub desc: bool,
    pub nulls: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub enum Pred {
    Atom(String),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
}

#[derive(Clone, Debug)]
pub struct Query {
    pub shape: Shape,
    pub from: String,
    pub outputs: Vec<Output>,
    pub filter: Option<Pred>,
    pub group: Vec<Group>,
    pub having: Option<String>,
    /// Empty, or every output once: ties are then identical rows, so a LIMIT is deterministic.
    pub order: Vec<Order>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// A relation of the FROM clause with the qualifier its columns are written with.
#[derive(Clone, Copy)]
struct Source {
    table: &'static Table,
    qualifier: &'static str,
}

impl Source {
    fn column(&self, name: &str) -> String {
        format!("{}{name}", self.qualifier)
    }
}

impl Pred {
    fn sql(&self) -> String {
        match self {
            Pred::Atom(atom) => atom.clone(),
            Pred::And(a, b) => format!("({} AND {})", a.sql(), b.sql()),
            Pred::Or(a, b) => format!("({} OR {})", a.sql(), b.sql()),
            Pred::Not(a) => format!("NOT {}", a.sql()),
        }
    }

    /// The predicate's parts, each a smaller predicate to try while shrinking.
    fn parts(&self) -> Vec<Pred> {
        match self {
            Pred::Atom(_) => Vec::new(),
            Pred::And(a, b) | Pred::Or(a, b) => vec![(**a).clone(), (**b).clone()],
            Pred::Not(a) => vec![(**a).clone()],
        }
    }
}

impl Query {
    pub fn sql(&self) -> String {
        let outputs: Vec<String> = self
            .outputs
            .iter()
            .map(|o| match &o.alias {
                Some(alias) => format!("{} AS {alias}", o.expr),
                None => o.expr.clone(),
            })
            .collect();
        let mut sql = format!("SELECT {} FROM {}", outputs.join(", "), self.from);
        if let Some(filter) = &self.filter {
            sql.push_str(&format!(" WHERE {}", filter.sql()));
        }
        if !self.group.is_empty() {
            let keys: Vec<String> = self
                .group
                .iter()
                .map(
                    |g| match self.outputs.iter().position(|o| o.expr == g.expr) {
                        Some(at) if g.by_position => (at + 1).to_string(),
                        _ => g.expr.clone(),
                    },
                )
                .collect();
            sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
        }
        if let Some(having) = &self.having {
            sql.push_str(&format!(" HAVING {having}"));
        }
        if !self.order.is_empty() {
            let keys: Vec<String> = self
                .order
                .iter()
                .map(|k| {
                    let output = &self.outputs[k.output];
                    let mut key = match (k.style, &output.alias) {
                        (OrderStyle::Position, _) => (k.output + 1).to_string(),
                        (OrderStyle::Name, Some(alias)) => alias.clone(),
                        _ => output.expr.clone(),
                    };
                    if k.desc {
                        key.push_str(" DESC");
                    }
                    if let Some(nulls) = k.nulls {
                        key.push_str(&format!(" NULLS {nulls}"));
                    }
                    key
                })
                .collect();
            sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
        }
        if let Some(limit) = self.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        if let Some(offset) = self.offset {
            sql.push_str(&format!(" OFFSET {offset}"));
        }
        sql
    }

    /// Whether the rows come in one order only (else they are compared as a multiset).
    pub fn ordered(&self) -> bool {
        !self.order.is_empty()
    }

    /// Smaller queries, each one clause (or part of one) fewer or plainer, for shrinking.
    pub fn simpler(&self) -> Vec<Query> {
        let mut out = Vec::new();
        let mut with = |change: &dyn Fn(&mut Query)| {
            let mut q = self.clone();
            change(&mut q);
            out.push(q);
        };
        if let Some(filter) = &self.filter {
            with(&|q| q.filter = None);
            for part in filter.parts() {
                with(&|q| q.filter = Some(part.clone()));
            }
        }
        if self.having.is_some() {
            with(&|q| q.having = None);
        }
        if self.offset.is_some() {
            with(&|q| q.offset = None);
        }
        // Rows without aggregates keep their LIMIT: a sorted limit without it is not one.
        if self.limit.is_some() && self.outputs.iter().any(|o| o.aggregate) {
            with(&|q| q.limit = None);
        }
        if !self.order.is_empty() && self.limit.is_none() && self.offset.is_none() {
            with(&|q| q.order.clear());
        }
        for i in 0..self.group.len() {
            with(&|q| {
                let gone = q.group.remove(i);
                q.drop_outputs(|o| o.expr == gone.expr && !o.aggregate);
            });
            if self.group[i].by_position {
                with(&|q| q.group[i].by_position = false);
            }
        }
        for i in 0..self.outputs.len() {
            if self.outputs.len() > 1 {
                with(&|q| {
                    let mut at = 0;
                    q.drop_outputs(|_| {
                        at += 1;
                        at - 1 == i
                    })
                });
            }
            if self.outputs[i].alias.is_some() {
                with(&|q| q.outputs[i].alias = None);
            }
        }
        for i in 0..self.order.len() {
            if !matches!(self.order[i].style, OrderStyle::Position) {
                with(&|q| q.order[i].style = OrderStyle::Position);
            }
            if self.order[i].desc || self.order[i].nulls.is_some() {
                with(&|q| {
                    q.order[i].desc = false;
                    q.order[i].nulls = None;
                });
            }
        }
        // A query keeps its outputs and its aggregates, else it would be another statement.
        let aggregates = self.outputs.iter().any(|o| o.aggregate);
        out.retain(|q| {
            !q.outputs.is_empty() && q.outputs.iter().any(|o| o.aggregate) == aggregates
        });
        out
    }

    /// Removes the outputs `gone` picks, with their ORDER BY keys.
    fn drop_outputs(&mut self, mut gone: impl FnMut(&Output) -> bool) {
        let mut kept = Vec::new();
        let mut renumber = Vec::new();
        for output in self.outputs.drain(..) {
            if gone(&output) {
                renumber.push(None);
            } else {
                renumber.push(Some(kept.len()));
                kept.push(output);
            }
        }
        self.outputs = kept;
        self.order.retain_mut(|k| match renumber[k.output] {
            Some(at) => {
                k.output = at;
                true
            }
            None => false,
        });
    }
}

/// A random query.
pub fn query(rng: &mut StdRng) -> Query {
    let shape = WEIGHTS
        .choose_weighted(rng, |(_, w)| *w)
        .map(|(s, _)| *s)
        .unwrap();
    match shape {
        Shape::SortedLimit => sorted_limit(rng),
        Shape::ColocatedJoin | Shape::ReferenceJoin | Shape::ThreeWayJoin | Shape::OtherJoin => {
            join(rng, shape)
        }
        _ => single(rng, shape),
    }
}

/// One table as written: bare, qualified by its name, or by an alias.
fn one_table(rng: &mut StdRng) -> (String, Source) {
    let table = *[&ORDERS, &ORDERS, &ORDERS, &ITEMS, &ITEMS, &REFUNDS]
        .choose(rng)
        .unwrap();
    match rng.gen_range(0..5) {
        0 => (
            format!("{} t", table.sql),
            Source {
                table,
                qualifier: "t.",
            },
        ),
        1 => (
            table.sql.to_string(),
            Source {
                table,
                qualifier: table.qualifier,
            },
        ),
        _ => (
            table.sql.to_string(),
            Source {
                table,
                qualifier: "",
            },
        ),
    }
}

fn single(rng: &mut StdRng, shape: Shape) -> Query {
    let (from, source) = one_table(rng);
    let sources = [source];
    let mut group = Vec::new();
    match shape {
        Shape::GroupByExpression => group.push(modulo(rng, &sources)),
        Shape::GroupByColumn => {
            group.push(source.column(source.table.non_key(rng).name));
            if rng.gen_bool(0.25) {
                group.push(modulo(rng, &sources));
            }
        }
        Shape::GroupByKey => {
            group.push(source.column(source.table.key));
            if rng.gen_bool(0.25) {
                group.push(source.column(source.table.non_key(rng).name));
            }
        }
        // HAVING always groups; count(DISTINCT) half the time.
        Shape::Having | Shape::DistinctKey | Shape::DistinctOther
            if shape == Shape::Having || rng.gen_bool(0.5) =>
        {
            group.push(match rng.gen_range(0..3) {
                0 => modulo(rng, &sources),
                1 => source.column(source.table.non_key(rng).name),
                _ => source.column(source.table.key),
            });
        }
        _ => {}
    }
    group.dedup();
    let mut outputs = aggregates(rng, &sources);
    if matches!(shape, Shape::DistinctKey | Shape::DistinctOther) {
        let column = if shape == Shape::DistinctKey {
            source.table.key
        } else {
            source.table.non_key(rng).name
        };
        let at = rng.gen_range(0..=outputs.len());
        outputs.insert(
            at,
            aggregate(format!("count(DISTINCT {})", source.column(column))),
        );
    }
    let having = (shape == Shape::Having).then(|| having(rng, source));
    finish(rng, shape, from, outputs, group, having, &sources)
}

fn join(rng: &mut StdRng, shape: Shape) -> Query {
    let o = Source {
        table: &ORDERS,
        qualifier: "o.",
    };
    let i = Source {
        table: &ITEMS,
        qualifier: "i.",
    };
    let r = Source {
        table: &REFUNDS,
        qualifier: "r.",
    };
    let p = Source {
        table: &PRODUCTS,
        qualifier: "p.",
    };
    let kind = *["JOIN", "LEFT JOIN"].choose(rng).unwrap();
    let (from, sources) = match shape {
        Shape::ColocatedJoin => match rng.gen_range(0..4) {
            0 => (
                format!("orders o {kind} {} r ON r.order_id = o.id", REFUNDS.sql),
                vec![o, r],
            ),
            1 => (
                "items i JOIN orders o ON o.id = i.order_id".to_string(),
                vec![o, i],
            ),
            _ => (
                format!("orders o {kind} items i ON i.order_id = o.id"),
                vec![o, i],
            ),
        },
        Shape::ReferenceJoin => (
            format!("items i {kind} products p ON p.id = i.product_id"),
            vec![i, p],
        ),
        Shape::ThreeWayJoin => (
            format!(
                "orders o JOIN items i ON i.order_id = o.id {kind} products p ON p.id = i.product_id"
            ),
            vec![o, i, p],
        ),
        _ => match rng.gen_range(0..6) {
            0 => (
                format!("orders o {kind} items i ON i.order_id = o.customer_id"),
                vec![o, i],
            ),
            1 => (
                "orders o FULL JOIN items i ON i.order_id = o.id".to_string(),
                vec![o, i],
            ),
            2 => (
                "items i RIGHT JOIN orders o ON o.id = i.order_id".to_string(),
                vec![o, i],
            ),
            3 => (
                "products p LEFT JOIN items i ON i.product_id = p.id".to_string(),
                vec![i, p],
            ),
            4 => (
                "items i RIGHT JOIN products p ON p.id = i.product_id".to_string(),
                vec![i, p],
            ),
            _ => (
                "items i FULL JOIN products p ON p.id = i.product_id".to_string(),
                vec![i, p],
            ),
        },
    };
    let mut query = if rng.gen_bool(0.15) {
        // Joined rows, sorted and limited.
        let mut outputs = vec![plain(sources[0].column(sources[0].table.key))];
        for _ in 0..rng.gen_range(1..3) {
            let source = sources[rng.gen_range(0..sources.len())];
            outputs.push(plain(source.column(source.table.non_key(rng).name)));
        }
        outputs.dedup_by(|a, b| a.expr == b.expr);
        let mut q = finish(rng, shape, from, outputs, Vec::new(), None, &sources);
        q.order = order_all(rng, &q.outputs);
        q.limit = Some(*[1, 5, 20].choose(rng).unwrap());
        q
    } else {
        let mut group = Vec::new();
        match rng.gen_range(0..5) {
            0 => {}
            1 => group.push(o.column("id")),
            2 if sources[0].qualifier != "o." => group.push(i.column("order_id")),
            2 => group.push(format!("o.customer_id % {}", rng.gen_range(2..8))),
            3 if sources.iter().any(|s| s.qualifier == "p.") => group.push(p.column("kind")),
            _ => group.push(modulo(rng, &sources)),
        }
        if sources[0].qualifier != "o." && group.first().is_some_and(|g| g == "o.id") {
            group[0] = i.column("order_id");
        }
        // The other side's distribution column, NULL in every shard where an outer join
        // keeps a row without a match.
        if sources[1].table.key == "order_id" && rng.gen_bool(0.15) {
            group = vec![sources[1].column("order_id")];
        }
        let outputs = aggregates(rng, &sources);
        let having = (!group.is_empty() && rng.gen_bool(0.2)).then(|| having(rng, sources[0]));
        finish(rng, shape, from, outputs, group, having, &sources)
    };
    if sources.iter().any(|s| s.qualifier == "p.") {
        let like = format!(
            "p.name LIKE {}",
            ["'red%'", "'%widget'", "'%g%'", "'W%'", "'%'"]
                .choose(rng)
                .unwrap()
        );
        query.filter = Some(match query.filter.take() {
            Some(rest) if rng.gen_bool(0.5) => {
                Pred::And(Box::new(Pred::Atom(like)), Box::new(rest))
            }
            _ => Pred::Atom(like),
        });
    }
    query
}

fn sorted_limit(rng: &mut StdRng) -> Query {
    let (from, source) = one_table(rng);
    let mut outputs = vec![plain(source.column(source.table.key))];
    for _ in 0..rng.gen_range(1..4) {
        let column = source.column(source.table.non_key(rng).name);
        if !outputs.iter().any(|o| o.expr == column) {
            outputs.push(plain(column));
        }
    }
    if rng.gen_bool(0.15) {
        outputs.push(plain(modulo(rng, &[source])));
    }
    outputs.shuffle(rng);
    let mut q = finish(
        rng,
        Shape::SortedLimit,
        from,
        outputs,
        Vec::new(),
        None,
        &[source],
    );
    q.order = order_all(rng, &q.outputs);
    q.limit = Some(*[1, 3, 10, 50, 500].choose(rng).unwrap());
    q
}

/// The clauses every shape shares: WHERE, ORDER BY, LIMIT, OFFSET, and the group keys among
/// the outputs.
fn finish(
    rng: &mut StdRng,
    shape: Shape,
    from: String,
    mut outputs: Vec<Output>,
    group: Vec<String>,
    having: Option<String>,
    sources: &[Source],
) -> Query {
    for key in group.iter().rev() {
        if rng.gen_bool(0.8) {
            let at = rng.gen_range(0..=outputs.len().min(1));
            outputs.insert(at, plain(key.clone()));
        }
    }
    for (n, output) in outputs.iter_mut().enumerate() {
        if rng.gen_bool(0.3) {
            output.alias = Some(format!("a{n}"));
        }
    }
    let group = group
        .into_iter()
        .map(|expr| Group {
            expr,
            by_position: rng.gen_bool(0.4),
        })
        .collect();
    let filter = rng.gen_bool(0.5).then(|| predicate(rng, sources, 2));
    let mut q = Query {
        shape,
        from,
        outputs,
        filter,
        group,
        having,
        order: Vec::new(),
        limit: None,
        offset: None,
    };
    if shape != Shape::SortedLimit {
        if rng.gen_bool(0.3) {
            q.limit = Some(*[0, 1, 3, 10, 100].choose(rng).unwrap());
        }
        if rng.gen_bool(0.15) {
            q.offset = Some(*[0, 1, 5].choose(rng).unwrap());
        }
        if q.limit.is_some() || q.offset.is_some() || rng.gen_bool(0.4) {
            q.order = order_all(rng, &q.outputs);
        }
    } else if rng.gen_bool(0.3) {
        q.offset = Some(*[1, 5].choose(rng).unwrap());
    }
    q
}

/// Every output once, in a random order and directions.
fn order_all(rng: &mut StdRng, outputs: &[Output]) -> Vec<Order> {
    let mut order: Vec<Order> = (0..outputs.len())
        .map(|output| Order {
            output,
            style: *[
                OrderStyle::Position,
                OrderStyle::Name,
                OrderStyle::Expression,
            ]
            .choose(rng)
            .unwrap(),
            desc: rng.gen_bool(0.4),
            nulls: *[None, None, Some("FIRST"), Some("LAST")]
                .choose(rng)
                .unwrap(),
        })
        .collect();
    order.shuffle(rng);
    order
}

fn plain(expr: String) -> Output {
    Output {
        expr,
        alias: None,
        aggregate: false,
    }
}

fn aggregate(expr: String) -> Output {
    Output {
        expr,
        alias: None,
        aggregate: true,
    }
}

/// One to four aggregates over the sources' columns. Sums and averages of double precision
/// are left out: their last digits depend on the order the rows are added in, which differs
/// between one scan and per-shard partials; their min and max are exact and are drawn.
fn aggregates(rng: &mut StdRng, sources: &[Source]) -> Vec<Output> {
    let mut out: Vec<Output> = Vec::new();
    for _ in 0..rng.gen_range(1..5) {
        let source = sources[rng.gen_range(0..sources.len())];
        let column = source.table.columns.choose(rng).unwrap();
        let argument = source.column(column.name);
        let functions: &[&str] = match column.kind {
            Kind::Int | Kind::BigInt | Kind::Numeric => &["count", "sum", "avg", "min", "max"],
            Kind::Text | Kind::Double => &["count", "min", "max"],
        };
        let (function, mut expr) = if rng.gen_bool(0.2) {
            ("count", "count(*)".to_string())
        } else {
            let function = *functions.choose(rng).unwrap();
            (function, format!("{function}({argument})"))
        };
        // A cast of an aggregate applies to the merged value.
        if rng.gen_bool(0.12) {
            let casts: &[&str] = match (function, column.kind) {
                ("count", _) | (_, Kind::Int | Kind::BigInt | Kind::Numeric) => {
                    &["text", "numeric(40, 3)", "double precision"]
                }
                (_, Kind::Text) => &["text", "varchar(2)"],
                (_, Kind::Double) => &["text", "numeric"],
            };
            expr = format!("{expr}::{}", casts.choose(rng).unwrap());
        }
        if !out.iter().any(|o| o.expr == expr) {
            out.push(aggregate(expr));
        }
    }
    out
}

/// `column % k` over an integer column other than the distribution column.
fn modulo(rng: &mut StdRng, sources: &[Source]) -> String {
    let source = sources[rng.gen_range(0..sources.len())];
    let integers: Vec<&str> = source
        .table
        .columns
        .iter()
        .filter(|c| matches!(c.kind, Kind::Int | Kind::BigInt) && c.name != source.table.key)
        .map(|c| c.name)
        .collect();
    let column = integers.choose(rng).copied().unwrap_or(source.table.key);
    format!("{} % {}", source.column(column), rng.gen_range(2..10))
}

fn having(rng: &mut StdRng, source: Source) -> String {
    let c = |name: &str| source.column(name);
    let numeric = source
        .table
        .columns
        .iter()
        .find(|c| c.kind == Kind::Numeric)
        .map_or("", |c| c.name);
    let options = [
        format!("count(*) > {}", rng.gen_range(0..4)),
        format!("sum({}) IS NOT NULL", c("qty")),
        format!("min({}) < {}", c(numeric), rng.gen_range(-50..100)),
        format!(
            "max({}) > {}",
            c(source.table.key),
            rng.gen_range(-100..5000)
        ),
        format!("avg({}) > {}", c("qty"), rng.gen_range(-3..5)),
        format!(
            "count({}) >= 1",
            c(source.table.columns.last().unwrap().name)
        ),
    ];
    options.choose(rng).unwrap().clone()
}

/// A WHERE over the sources' columns: comparisons, BETWEEN, IN, LIKE, IS [NOT] NULL, AND, OR,
/// NOT. No equality on a distribution column: that routes the statement to one shard instead
/// of splitting it.
fn predicate(rng: &mut StdRng, sources: &[Source], depth: u32) -> Pred {
    if depth > 0 && rng.gen_bool(0.35) {
        let a = Box::new(predicate(rng, sources, depth - 1));
        let b = Box::new(predicate(rng, sources, depth - 1));
        return match rng.gen_range(0..5) {
            0 | 1 => Pred::And(a, b),
            2 | 3 => Pred::Or(a, b),
            _ => Pred::Not(a),
        };
    }
    let source = sources[rng.gen_range(0..sources.len())];
    let column = source.table.columns.choose(rng).unwrap();
    let name = source.column(column.name);
    if rng.gen_bool(0.2) {
        let not = if rng.gen_bool(0.5) { " NOT" } else { "" };
        return Pred::Atom(format!("{name} IS{not} NULL"));
    }
    let key = column.name == source.table.key;
    if rng.gen_bool(0.15) {
        return Pred::Atom(match column.kind {
            Kind::Text => format!(
                "{name} LIKE {}",
                ["'a%'", "'%e'", "'_'", "'%'"].choose(rng).unwrap()
            ),
            Kind::Int | Kind::BigInt if !key => format!(
                "{name} IN ({}, {}, 7)",
                rng.gen_range(-5..20),
                rng.gen_range(-5..20)
            ),
            _ => {
                let low = rng.gen_range(-50..50);
                format!("{name} BETWEEN {low} AND {}", low + rng.gen_range(0..100))
            }
        });
    }
    let operators: &[&str] = if key {
        &["<", ">", "<=", ">="]
    } else {
        &["<", ">", "<=", ">=", "=", "<>"]
    };
    let operator = operators.choose(rng).unwrap();
    let value = match column.kind {
        Kind::Int | Kind::BigInt => rng.gen_range(-20..60).to_string(),
        Kind::Numeric => format!("{}.{}", rng.gen_range(-20..200), rng.gen_range(0..100)),
        Kind::Double => format!("{}", rng.gen_range(-100..100) as f64 / 4.0),
        Kind::Text => ["'a'", "'B'", "'apple'", "''", "'m'", "'red widget'"]
            .choose(rng)
            .unwrap()
            .to_string(),
    };
    Pred::Atom(format!("{name} {operator} {value}"))
}
