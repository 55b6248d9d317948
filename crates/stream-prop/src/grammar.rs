//! Random stream queries over two small tables, `t` and `u`, from a grammar of the shapes
//! stream tables maintain differentially, and their one-step simplifications for shrinking.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// The tables every case runs on. Their types differ on purpose (`u.id` is bigint, `n` is
/// numeric beside the integer `k`), so that joins and unions mix integer and numeric values.
pub const SCHEMA: &str = "CREATE TABLE t (id int, k int, n numeric, s text);\n\
                          CREATE TABLE u (id bigint, k int, n numeric, s text);";

pub const TABLES: [&str; 2] = ["t", "u"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

/// The FROM clause: `t x`, `u x`, `t x <join> u y` on `k` or by USING (id), or a subquery over
/// one table (written in FROM, or as a CTE `w`) that filters it and computes a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    One(&'static str),
    Join { kind: JoinKind, using: bool },
    Sub { table: &'static str, cte: bool },
}

/// The subquery of [`From::Sub`]: the table's columns, `n` computed, some rows left out.
fn sub_select(table: &str) -> String {
    format!("SELECT id, k, n * 2 + k AS n, s FROM {table} WHERE k IS DISTINCT FROM 2")
}

impl From {
    fn sql(&self) -> String {
        match self {
            From::One(t) => format!("{t} x"),
            From::Sub { cte: true, .. } => "w x".to_string(),
            From::Sub { table, cte: false } => format!("({}) x", sub_select(table)),
            From::Join { kind, using } => {
                let op = match kind {
                    JoinKind::Inner => "JOIN",
                    JoinKind::Left => "LEFT JOIN",
                    JoinKind::Right => "RIGHT JOIN",
                    JoinKind::Full => "FULL JOIN",
                };
                let on = if *using { "USING (id)" } else { "ON x.k = y.k" };
                format!("t x {op} u y {on}")
            }
        }
    }

    /// Columns of each kind reachable in this FROM: (numbers, texts).
    fn columns(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        match self {
            From::One(_) | From::Sub { .. } => (vec!["x.id", "x.k", "x.n"], vec!["x.s"]),
            From::Join { using, .. } => {
                let mut nums = vec!["x.id", "x.k", "x.n", "y.id", "y.k", "y.n"];
                if *using {
                    nums.push("id");
                }
                (nums, vec!["x.s", "y.s"])
            }
        }
    }

    /// An ORDER BY list that orders the joined rows completely, for deterministic windows.
    fn row_order(&self) -> &'static str {
        match self {
            From::One(_) | From::Sub { .. } => "x.id, x.k, x.n, x.s",
            From::Join { .. } => "x.id, x.k, x.n, x.s, y.id, y.k, y.n, y.s",
        }
    }

    /// The WITH clause the query starts with, for a CTE.
    fn with_clause(&self) -> String {
        match self {
            From::Sub { table, cte: true } => format!("WITH w AS ({}) ", sub_select(table)),
            _ => String::new(),
        }
    }

    fn is_outer(&self) -> bool {
        matches!(self, From::Join { kind, .. } if *kind != JoinKind::Inner)
    }
}

/// What the query computes over its FROM and WHERE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Project {
        distinct: bool,
        items: Vec<String>,
    },
    Group {
        keys: Vec<String>,
        /// Output items: keys (as written) and aggregate calls.
        items: Vec<String>,
        having: Option<String>,
    },
    Window {
        partition: String,
        items: Vec<String>,
    },
}

/// One SELECT: a whole query, or a branch of a UNION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Select {
    pub from: From,
    pub filter: Option<String>,
    /// An `EXISTS`, `NOT EXISTS` or `IN (subquery)` condition ANDed to the filter.
    pub semi: Option<String>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Select(Select),
    /// Branches of one width; `all` is UNION ALL.
    Union {
        all: bool,
        branches: Vec<Select>,
    },
}

impl Select {
    pub fn sql(&self) -> String {
        let conditions: Vec<&str> = self
            .filter
            .iter()
            .chain(&self.semi)
            .map(String::as_str)
            .collect();
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let from = self.from.sql();
        let with = self.from.with_clause();
        let select = match &self.body {
            Body::Project { distinct, items } => format!(
                "SELECT {}{} FROM {from}{filter}",
                if *distinct { "DISTINCT " } else { "" },
                aliased(items)
            ),
            Body::Group {
                keys,
                items,
                having,
            } => {
                let mut sql = format!("SELECT {} FROM {from}{filter}", aliased(items));
                if !keys.is_empty() {
                    sql += &format!(" GROUP BY {}", keys.join(", "));
                }
                if let Some(h) = having {
                    sql += &format!(" HAVING {h}");
                }
                sql
            }
            Body::Window { items, .. } => {
                format!("SELECT {} FROM {from}{filter}", aliased(items))
            }
        };
        format!("{with}{select}")
    }
}

/// The items with names of their own (`c1`, `c2`, ...): a stream table needs distinct column
/// names, which two tables' `id` would not give.
fn aliased(items: &[String]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| format!("{item} AS c{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Query {
    pub fn sql(&self) -> String {
        match self {
            Query::Select(s) => s.sql(),
            Query::Union { all, branches } => {
                let op = if *all { " UNION ALL " } else { " UNION " };
                let parts: Vec<String> = branches.iter().map(Select::sql).collect();
                parts.join(op)
            }
        }
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    *items.choose(rng).expect("a non-empty choice")
}

fn gen_from(rng: &mut StdRng) -> From {
    match rng.gen_range(0..7) {
        0 | 1 => From::One(pick(rng, &TABLES)),
        6 => From::Sub {
            table: pick(rng, &TABLES),
            cte: rng.gen_bool(0.5),
        },
        2 => From::Join {
            kind: JoinKind::Inner,
            using: true,
        },
        3 => From::Join {
            kind: JoinKind::Inner,
            using: false,
        },
        _ => From::Join {
            kind: pick(rng, &[JoinKind::Left, JoinKind::Right, JoinKind::Full]),
            using: false,
        },
    }
}

fn gen_condition(rng: &mut StdRng, from: &From) -> String {
    let (nums, texts) = from.columns();
    match rng.gen_range(0..5) {
        0 => format!("{} > {}", pick(rng, &nums), rng.gen_range(0..3)),
        1 => format!("{} IS NOT NULL", pick(rng, &nums)),
        2 => format!("{} IS NULL", pick(rng, &nums)),
        3 => format!("{} <> 'a'", pick(rng, &texts)),
        _ => format!("({} = 1 OR {} = 'b')", pick(rng, &nums), pick(rng, &texts)),
    }
}

/// A semi- or anti-join of the row `x` with the other table, `z`, correlated or not.
fn gen_semi(rng: &mut StdRng) -> String {
    let other = pick(rng, &TABLES);
    let extra = match rng.gen_range(0..3) {
        0 => " AND z.n > 1",
        1 => " AND z.s <> 'a'",
        _ => "",
    };
    match rng.gen_range(0..4) {
        0 => format!("EXISTS (SELECT 1 FROM {other} z WHERE z.k = x.k{extra})"),
        1 => format!("NOT EXISTS (SELECT 1 FROM {other} z WHERE z.id = x.id{extra})"),
        2 => format!("x.k IN (SELECT z.k FROM {other} z WHERE z.id IS NOT NULL{extra})"),
        _ => format!("NOT EXISTS (SELECT 1 FROM {other} z WHERE z.k = x.id{extra})"),
    }
}

fn gen_scalar(rng: &mut StdRng, from: &From) -> String {
    let (nums, texts) = from.columns();
    match rng.gen_range(0..6) {
        0 => format!("{} + 1", pick(rng, &nums)),
        1 => format!("coalesce({}, 'z')", pick(rng, &texts)),
        2 | 3 => pick(rng, &texts).to_string(),
        _ => pick(rng, &nums).to_string(),
    }
}

fn gen_aggregate(rng: &mut StdRng, from: &From) -> String {
    let (nums, texts) = from.columns();
    let num = pick(rng, &nums);
    let text = pick(rng, &texts);
    let call = match rng.gen_range(0..12) {
        0 => "count(*)".to_string(),
        1 => format!("count({num})"),
        2 => format!("sum({num})"),
        3 => format!("avg({num})"),
        4 => format!("min({num})"),
        5 => format!("max({text})"),
        6 => format!("count(DISTINCT {num})"),
        7 => format!("bool_and({num} > 1)"),
        8 => format!("bool_or({text} = 'a')"),
        // Ordered by the value itself, so a recomputation gives equal text and arrays.
        9 => format!("string_agg({text}, ',' ORDER BY {text})"),
        10 => format!("array_agg({num} ORDER BY {num})"),
        _ => format!("max({num})"),
    };
    if rng.gen_ratio(1, 4) {
        format!("{call} FILTER (WHERE {})", gen_condition(rng, from))
    } else {
        call
    }
}

fn gen_select(rng: &mut StdRng, from: From) -> Select {
    let filter = rng.gen_ratio(1, 2).then(|| gen_condition(rng, &from));
    let (nums, texts) = from.columns();
    let body = match rng.gen_range(0..3) {
        0 => Body::Project {
            distinct: rng.gen_ratio(1, 3),
            items: (0..rng.gen_range(1..4))
                .map(|_| gen_scalar(rng, &from))
                .collect(),
        },
        1 => {
            let mut keys: Vec<String> = Vec::new();
            for _ in 0..rng.gen_range(0..3) {
                let key = if rng.gen_ratio(1, 3) {
                    pick(rng, &texts)
                } else {
                    pick(rng, &nums)
                };
                if !keys.iter().any(|k| k == key) {
                    keys.push(key.to_string());
                }
            }
            let mut items: Vec<String> = keys
                .iter()
                .filter(|_| rng.gen_ratio(3, 4))
                .cloned()
                .collect();
            for _ in 0..rng.gen_range(1..4) {
                items.push(gen_aggregate(rng, &from));
            }
            let having =
                (!keys.is_empty() && rng.gen_ratio(1, 4)).then(|| match rng.gen_range(0..3) {
                    0 => "count(*) > 1".to_string(),
                    1 => format!("sum({}) IS NOT NULL", pick(rng, &nums)),
                    _ => format!("min({}) <> 'b'", pick(rng, &texts)),
                });
            Body::Group {
                keys,
                items,
                having,
            }
        }
        _ => {
            let partition = pick(rng, &nums).to_string();
            let mut items = vec![partition.clone(), gen_scalar(rng, &from)];
            let order = from.row_order();
            for _ in 0..rng.gen_range(1..3) {
                let num = pick(rng, &nums);
                items.push(match rng.gen_range(0..4) {
                    0 => format!("row_number() OVER (PARTITION BY {partition} ORDER BY {order})"),
                    1 => format!("sum({num}) OVER (PARTITION BY {partition})"),
                    2 => format!("count(*) OVER (PARTITION BY {partition})"),
                    _ => format!("rank() OVER (PARTITION BY {partition} ORDER BY {num})"),
                });
            }
            Body::Window { partition, items }
        }
    };
    // Semi-joins go with projections and groups over inner joins.
    let semi = (!from.is_outer() && !matches!(body, Body::Window { .. }) && rng.gen_ratio(1, 4))
        .then(|| gen_semi(rng));
    Select {
        from,
        filter,
        semi,
        body,
    }
}

/// A random query of the grammar.
pub fn gen_query(rng: &mut StdRng) -> Query {
    if rng.gen_ratio(1, 5) {
        let width = rng.gen_range(1..3);
        // Per output column: a number (any of int, bigint, numeric) or a text.
        let kinds: Vec<bool> = (0..width).map(|_| rng.gen_ratio(2, 3)).collect();
        let branches = (0..rng.gen_range(2..4))
            .map(|_| {
                let from = From::One(pick(rng, &TABLES));
                let (nums, texts) = from.columns();
                let items = kinds
                    .iter()
                    .map(|&num| {
                        if num {
                            pick(rng, &nums).to_string()
                        } else {
                            pick(rng, &texts).to_string()
                        }
                    })
                    .collect();
                Select {
                    filter: rng.gen_ratio(1, 2).then(|| gen_condition(rng, &from)),
                    semi: None,
                    from,
                    body: Body::Project {
                        distinct: false,
                        items,
                    },
                }
            })
            .collect();
        return Query::Union {
            all: rng.gen_bool(0.5),
            branches,
        };
    }
    let from = gen_from(rng);
    Query::Select(gen_select(rng, from))
}

/// Simpler variants of a SELECT, each one step smaller.
fn simplify_select(s: &Select) -> Vec<Select> {
    let mut out = Vec::new();
    let with = |body: Body| Select { body, ..s.clone() };
    if s.filter.is_some() {
        out.push(Select {
            filter: None,
            ..s.clone()
        });
    }
    if s.semi.is_some() {
        out.push(Select {
            semi: None,
            ..s.clone()
        });
    }
    if let From::Sub { table, .. } = s.from {
        out.push(Select {
            from: From::One(table),
            ..s.clone()
        });
    }
    if let From::Join { kind, using } = s.from {
        if kind != JoinKind::Inner {
            out.push(Select {
                from: From::Join {
                    kind: JoinKind::Inner,
                    using,
                },
                ..s.clone()
            });
        }
    }
    match &s.body {
        Body::Project { distinct, items } => {
            if *distinct {
                out.push(with(Body::Project {
                    distinct: false,
                    items: items.clone(),
                }));
            }
            for i in 0..items.len() {
                if items.len() > 1 {
                    let mut fewer = items.clone();
                    fewer.remove(i);
                    out.push(with(Body::Project {
                        distinct: *distinct,
                        items: fewer,
                    }));
                }
            }
        }
        Body::Group {
            keys,
            items,
            having,
        } => {
            if having.is_some() {
                out.push(with(Body::Group {
                    keys: keys.clone(),
                    items: items.clone(),
                    having: None,
                }));
            }
            for i in 0..items.len() {
                if items.len() > 1 {
                    let mut fewer = items.clone();
                    fewer.remove(i);
                    out.push(with(Body::Group {
                        keys: keys.clone(),
                        items: fewer,
                        having: having.clone(),
                    }));
                }
            }
            for (i, key) in keys.iter().enumerate() {
                // A key that is also selected cannot go alone.
                if !items.contains(key) {
                    let mut fewer = keys.clone();
                    fewer.remove(i);
                    out.push(with(Body::Group {
                        keys: fewer,
                        items: items.clone(),
                        having: having.clone(),
                    }));
                }
            }
        }
        Body::Window { partition, items } => {
            for i in 0..items.len() {
                if items.len() > 1 {
                    let mut fewer = items.clone();
                    fewer.remove(i);
                    out.push(with(Body::Window {
                        partition: partition.clone(),
                        items: fewer,
                    }));
                }
            }
        }
    }
    out
}

/// Simpler variants of a query, each one step smaller: for shrinking.
pub fn simplify(q: &Query) -> Vec<Query> {
    match q {
        Query::Select(s) => simplify_select(s).into_iter().map(Query::Select).collect(),
        Query::Union { all, branches } => {
            let mut out = Vec::new();
            for i in 0..branches.len() {
                if branches.len() > 1 {
                    let mut fewer = branches.clone();
                    fewer.remove(i);
                    out.push(Query::Union {
                        all: *all,
                        branches: fewer,
                    });
                }
                if branches[i].filter.is_some() {
                    let mut b = branches.clone();
                    b[i].filter = None;
                    out.push(Query::Union {
                        all: *all,
                        branches: b,
                    });
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_seed_gives_the_same_query() {
        let a = gen_query(&mut StdRng::seed_from_u64(7)).sql();
        let b = gen_query(&mut StdRng::seed_from_u64(7)).sql();
        assert_eq!(a, b);
    }

    #[test]
    fn queries_parse_and_cover_the_shapes() {
        let mut rng = StdRng::seed_from_u64(1);
        let sqls: Vec<String> = (0..400).map(|_| gen_query(&mut rng).sql()).collect();
        for sql in &sqls {
            pg_query_parse(sql);
        }
        for needle in [
            "USING (id)",
            "LEFT JOIN",
            "RIGHT JOIN",
            "FULL JOIN",
            "GROUP BY",
            "HAVING",
            "FILTER (WHERE",
            "DISTINCT",
            "count(DISTINCT",
            "string_agg(",
            "array_agg(",
            "bool_and(",
            " UNION ALL ",
            " UNION SELECT",
            "OVER (PARTITION BY",
            "WITH w AS (",
            "FROM (SELECT id, k",
            " AND EXISTS (",
            "NOT EXISTS (",
            " IN (SELECT z.k",
        ] {
            assert!(sqls.iter().any(|s| s.contains(needle)), "no {needle}");
        }
    }

    fn pg_query_parse(sql: &str) {
        // The analyzer parses with pg_query; an error other than a refusal is a grammar bug.
        if let Err(shoal_stream::AnalyzeError::Invalid(e)) = shoal_stream::analyze(sql) {
            panic!("{sql}: {e}");
        }
    }

    #[test]
    fn simplification_shrinks_a_grouped_join() {
        let q = Query::Select(Select {
            from: From::Join {
                kind: JoinKind::Left,
                using: false,
            },
            filter: Some("x.k > 1".into()),
            semi: None,
            body: Body::Group {
                keys: vec!["x.k".into()],
                items: vec!["x.k".into(), "count(*)".into()],
                having: Some("count(*) > 1".into()),
            },
        });
        let sqls: Vec<String> = simplify(&q).iter().map(Query::sql).collect();
        assert_eq!(
            sqls,
            [
                "SELECT x.k AS c1, count(*) AS c2 FROM t x LEFT JOIN u y ON x.k = y.k GROUP BY x.k HAVING count(*) > 1",
                "SELECT x.k AS c1, count(*) AS c2 FROM t x JOIN u y ON x.k = y.k WHERE x.k > 1 GROUP BY x.k HAVING count(*) > 1",
                "SELECT x.k AS c1, count(*) AS c2 FROM t x LEFT JOIN u y ON x.k = y.k WHERE x.k > 1 GROUP BY x.k",
                "SELECT count(*) AS c1 FROM t x LEFT JOIN u y ON x.k = y.k WHERE x.k > 1 GROUP BY x.k HAVING count(*) > 1",
                "SELECT x.k AS c1 FROM t x LEFT JOIN u y ON x.k = y.k WHERE x.k > 1 GROUP BY x.k HAVING count(*) > 1",
            ]
        );
    }
}
