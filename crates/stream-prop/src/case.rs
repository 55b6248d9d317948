//! A case: a query, the rows the tables start with, and batches of changes applied between
//! refreshes; its random generation, its one-step shrinks, and its SQL for a developer to paste.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::grammar::{gen_query, simplify, Query, SCHEMA, TABLES};

/// One row change. Rows have no key: an update or delete touches every row with the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        table: &'static str,
        values: [String; 4],
    },
    Update {
        table: &'static str,
        id: i64,
        column: &'static str,
        value: String,
    },
    Delete {
        table: &'static str,
        id: i64,
    },
}

impl Change {
    pub fn sql(&self) -> String {
        match self {
            Change::Insert { table, values } => {
                format!("INSERT INTO {table} VALUES ({})", values.join(", "))
            }
            Change::Update {
                table,
                id,
                column,
                value,
            } => format!("UPDATE {table} SET {column} = {value} WHERE id = {id}"),
            Change::Delete { table, id } => format!("DELETE FROM {table} WHERE id = {id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub query: Query,
    /// Rows inserted before the stream table is created.
    pub initial: Vec<Change>,
    /// Each batch is applied, then the stream table is refreshed differentially and compared.
    pub batches: Vec<Vec<Change>>,
}

// Small domains, so that NULLs, duplicates and equal values of different types are common.
fn value(rng: &mut StdRng, column: &str) -> String {
    if rng.gen_ratio(1, 5) {
        return "NULL".into();
    }
    match column {
        "id" => rng.gen_range(1..6).to_string(),
        "k" => rng.gen_range(0..3).to_string(),
        "n" => ["1", "1.0", "2.5", "0", "2"]
            .choose(rng)
            .unwrap()
            .to_string(),
        _ => ["'a'", "'b'", "'c'"].choose(rng).unwrap().to_string(),
    }
}

fn insert(rng: &mut StdRng) -> Change {
    Change::Insert {
        table: TABLES.choose(rng).unwrap(),
        values: ["id", "k", "n", "s"].map(|c| value(rng, c)),
    }
}

fn change(rng: &mut StdRng) -> Change {
    let table = *TABLES.choose(rng).unwrap();
    let id = rng.gen_range(1..6);
    match rng.gen_range(0..5) {
        0 | 1 => insert(rng),
        2 => Change::Delete { table, id },
        // Moves rows between groups and partitions, and changes join keys (k, or id for USING).
        _ => {
            let column = *["id", "k", "n", "s"].choose(rng).unwrap();
            Change::Update {
                table,
                id,
                column,
                value: value(rng, column),
            }
        }
    }
}

/// A random case.
pub fn gen_case(rng: &mut StdRng) -> Case {
    let query = gen_query(rng);
    let initial = (0..rng.gen_range(0..9)).map(|_| insert(rng)).collect();
    let batches = (0..rng.gen_range(1..5))
        .map(|_| (0..rng.gen_range(1..5)).map(|_| change(rng)).collect())
        .collect();
    Case {
        query,
        initial,
        batches,
    }
}

/// Smaller variants of a case, each one step from it, most effective first: whole batches
/// dropped, then single rows, then the query simplified.
pub fn shrinks(case: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    for i in 0..case.batches.len() {
        let mut c = case.clone();
        c.batches.remove(i);
        out.push(c);
    }
    // Two batches merged into one refresh.
    for i in 1..case.batches.len() {
        let mut c = case.clone();
        let next = c.batches.remove(i);
        c.batches[i - 1].extend(next);
        out.push(c);
    }
    for i in 0..case.initial.len() {
        let mut c = case.clone();
        c.initial.remove(i);
        out.push(c);
    }
    for (b, batch) in case.batches.iter().enumerate() {
        for i in 0..batch.len() {
            let mut c = case.clone();
            c.batches[b].remove(i);
            out.push(c);
        }
    }
    for q in simplify(&case.query) {
        out.push(Case {
            query: q,
            ..case.clone()
        });
    }
    out
}

/// A measure that every shrink lowers, so shrinking ends.
pub fn size(case: &Case) -> usize {
    case.initial.len()
        + case.batches.len()
        + case.batches.iter().map(Vec::len).sum::<usize>()
        + case.query.sql().len()
}

/// The case as SQL to paste: schema, rows, the query, then each batch.
pub fn script(case: &Case) -> String {
    let mut out = format!("{SCHEMA}\n");
    for c in &case.initial {
        out += &format!("{};\n", c.sql());
    }
    out += &format!("-- the stream table's query:\n{};\n", case.query.sql());
    for (i, batch) in case.batches.iter().enumerate() {
        out += &format!("-- batch {} (then a differential refresh):\n", i + 1);
        for c in batch {
            out += &format!("{};\n", c.sql());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_shrink_is_smaller() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let case = gen_case(&mut rng);
            for s in shrinks(&case) {
                assert!(
                    size(&s) < size(&case),
                    "{}\nnot smaller than\n{}",
                    script(&s),
                    script(&case)
                );
            }
        }
    }

    #[test]
    fn script_shows_schema_rows_query_and_batches() {
        let case = Case {
            query: gen_query(&mut StdRng::seed_from_u64(5)),
            initial: vec![Change::Insert {
                table: "t",
                values: ["1".into(), "NULL".into(), "1.0".into(), "'a'".into()],
            }],
            batches: vec![vec![
                Change::Update {
                    table: "t",
                    id: 1,
                    column: "k",
                    value: "2".into(),
                },
                Change::Delete { table: "u", id: 3 },
            ]],
        };
        let expected = format!(
            "{SCHEMA}\nINSERT INTO t VALUES (1, NULL, 1.0, 'a');\n-- the stream table's query:\n{};\n\
             -- batch 1 (then a differential refresh):\nUPDATE t SET k = 2 WHERE id = 1;\n\
             DELETE FROM u WHERE id = 3;\n",
            case.query.sql()
        );
        assert_eq!(script(&case), expected);
    }
}
