//! The test's schema and its random rows: several rounds, from empty to thousands of rows with
//! NULLs in every nullable column, repeated values, one big group, negative and large numbers.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    BigInt,
    Numeric,
    Text,
    Double,
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

pub struct Table {
    /// The name as written in SQL.
    pub sql: &'static str,
    /// `name.`, to qualify its columns.
    pub qualifier: &'static str,
    /// The distribution column (the primary key of the reference table).
    pub key: &'static str,
    pub columns: &'static [Column],
}

impl Table {
    /// A column other than the key.
    pub fn non_key(&self, rng: &mut StdRng) -> &'static Column {
        let others: Vec<&'static Column> =
            self.columns.iter().filter(|c| c.name != self.key).collect();
        others.choose(rng).unwrap()
    }
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

pub static ORDERS: Table = Table {
    sql: "orders",
    qualifier: "orders.",
    key: "id",
    columns: &[
        column("id", Kind::BigInt),
        column("customer_id", Kind::BigInt),
        column("amount", Kind::Numeric),
        column("qty", Kind::Int),
        column("note", Kind::Text),
        column("price", Kind::Double),
    ],
};

pub static ITEMS: Table = Table {
    sql: "items",
    qualifier: "items.",
    key: "order_id",
    columns: &[
        column("order_id", Kind::BigInt),
        column("product_id", Kind::Int),
        column("qty", Kind::Int),
        column("price", Kind::Numeric),
    ],
};

/// Distributed and colocated with orders, and never filled: every shard is empty. Its name
/// needs quoting, so the split statements must quote what they rename.
pub static REFUNDS: Table = Table {
    sql: "\"Order Refunds\"",
    qualifier: "\"Order Refunds\".",
    key: "order_id",
    columns: &[
        column("order_id", Kind::BigInt),
        column("amount", Kind::Numeric),
        column("qty", Kind::Int),
        column("note", Kind::Text),
    ],
};

pub static PRODUCTS: Table = Table {
    sql: "products",
    qualifier: "products.",
    key: "id",
    columns: &[
        column("id", Kind::Int),
        column("name", Kind::Text),
        column("kind", Kind::Text),
    ],
};

pub const SCHEMA: &str = r#"
    CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, qty int,
                         note text, price double precision);
    CREATE TABLE items (order_id bigint, product_id int, qty int, price numeric);
    CREATE TABLE "Order Refunds" (order_id bigint, amount numeric, qty int, note text);
    CREATE TABLE products (id int PRIMARY KEY, name text, kind text);
"#;

/// A data set the queries run against.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub name: &'static str,
    orders: usize,
    /// Most rows in one group, most quantities NULL, one order with hundreds of items.
    skewed: bool,
}

pub const ROUNDS: &[Round] = &[
    Round {
        name: "empty",
        orders: 0,
        skewed: false,
    },
    Round {
        name: "a handful of rows",
        orders: 5,
        skewed: false,
    },
    Round {
        name: "thousands of rows",
        orders: 2500,
        skewed: false,
    },
    Round {
        name: "skewed",
        orders: 1500,
        skewed: true,
    },
];

/// `value` or NULL, NULL with probability `p`.
fn or_null(rng: &mut StdRng, p: f64, value: impl FnOnce(&mut StdRng) -> String) -> String {
    if rng.gen_bool(p) {
        "NULL".to_string()
    } else {
        value(rng)
    }
}

fn bigint(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..10) {
        0..=4 => rng.gen_range(1..5_000),
        5 | 6 => rng.gen_range(-5_000..0),
        7 => rng.gen_range(-(1 << 62)..(1 << 62)),
        8 => *[i64::MAX, i64::MIN, i64::MAX - 1, 0].choose(rng).unwrap(),
        _ => rng.gen_range(-3..3),
    }
}

fn int(rng: &mut StdRng) -> String {
    match rng.gen_range(0..20) {
        0 => i32::MAX.to_string(),
        1 => i32::MIN.to_string(),
        2..=9 => rng.gen_range(-5..20).to_string(),
        _ => rng.gen_range(-1_000..1_000).to_string(),
    }
}

/// Each value in one spelling only: equal numerics of different scales (`86`, `86.00`) are
/// one group, shown as whichever row PostgreSQL met first (min and max alike), which differs
/// between one scan and a merge of partials without either answer being wrong.
fn numeric(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "123456789012345678901234567890.123456789".to_string(),
        1 => "-0.000001".to_string(),
        2 | 3 => rng.gen_range(-100..100).to_string(),
        4 => format!("{}.5", rng.gen_range(0..10)),
        _ => {
            let mut cents = rng.gen_range(1..100);
            if cents % 10 == 0 {
                cents += 1;
            }
            format!("{}.{cents:02}", rng.gen_range(-200..200))
        }
    }
}

fn double(rng: &mut StdRng) -> String {
    let value: f64 = match rng.gen_range(0..10) {
        0 => *[1e300, -2.5e-300, 0.1, 1.0 / 3.0].choose(rng).unwrap(),
        1..=3 => rng.gen_range(-20..20) as f64 / 4.0,
        _ => rng.gen_range(-1000.0..1000.0),
    };
    // Rust's shortest round-trip form, which PostgreSQL reads back to the same double.
    format!("{value:e}")
}

fn text(rng: &mut StdRng, words: &[&str]) -> String {
    shoal_sql::quote_literal(words.choose(rng).unwrap())
}

const NOTES: &[&str] = &[
    "a", "b", "B", "apple", "Apple", "", "zeta", "O'Brien", "a b", "m",
];
const NAMES: &[&str] = &["red widget", "blue widget", "red gadget", "Widget", "gizmo"];

/// The statements that replace every table's rows with the round's.
pub fn fill(rng: &mut StdRng, round: Round) -> Vec<String> {
    let mut statements = vec![
        "DELETE FROM items".to_string(),
        "DELETE FROM orders".to_string(),
        "DELETE FROM products".to_string(),
    ];
    if round.orders == 0 {
        return statements;
    }
    let mut ids = BTreeSet::new();
    while ids.len() < round.orders {
        ids.insert(bigint(rng));
    }
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut orders = Vec::new();
    for id in &ids {
        let customer = or_null(rng, 0.1, |rng| {
            if round.skewed && rng.gen_bool(0.8) {
                "7".to_string()
            } else if rng.gen_bool(0.9) {
                rng.gen_range(-20..60).to_string()
            } else {
                bigint(rng).to_string()
            }
        });
        let amount = or_null(rng, 0.12, numeric);
        let qty = or_null(rng, if round.skewed { 0.6 } else { 0.1 }, int);
        let note = or_null(rng, 0.15, |rng| text(rng, NOTES));
        let price = or_null(rng, 0.1, double);
        orders.push(format!(
            "({id}, {customer}, {amount}, {qty}, {note}, {price})"
        ));
    }
    let mut items = Vec::new();
    let mut item = |rng: &mut StdRng, order: String| {
        let product = or_null(rng, 0.1, |rng| rng.gen_range(1..30).to_string());
        let qty = or_null(rng, 0.1, |rng| rng.gen_range(-5..20).to_string());
        let price = or_null(rng, 0.1, numeric);
        items.push(format!("({order}, {product}, {qty}, {price})"));
    };
    for id in &ids {
        if rng.gen_bool(0.6) {
            for _ in 0..rng.gen_range(1..4) {
                item(rng, id.to_string());
            }
        }
    }
    if round.skewed {
        let big = ids[rng.gen_range(0..ids.len())];
        for _ in 0..400 {
            item(rng, big.to_string());
        }
    }
    // Items of orders that do not exist, and items without an order.
    for _ in 0..(round.orders / 20).max(1) {
        let order = bigint(rng).to_string();
        item(rng, order);
    }
    item(rng, "NULL".to_string());
    let mut products = Vec::new();
    for id in 1..=25 {
        if round.orders > 10 && rng.gen_bool(0.8) || id <= 3 {
            let name = or_null(rng, 0.1, |rng| text(rng, NAMES));
            let kind = or_null(rng, 0.15, |rng| text(rng, &["tool", "toy"]));
            products.push(format!("({id}, {name}, {kind})"));
        }
    }
    for (table, rows) in [("orders", orders), ("items", items), ("products", products)] {
        for chunk in rows.chunks(500) {
            statements.push(format!("INSERT INTO {table} VALUES {}", chunk.join(", ")));
        }
    }
    statements
}
