//! The endpoint's split reads answer as the coordinator does: random data (NULLs, empty shards,
//! repeated values, one big group, extreme numbers) and random queries of the shapes the
//! endpoint splits or may split, each compared with the coordinator's own answer to the same
//! SQL, in text by the simple protocol and, every other query, in binary by the extended one.
//! `SHOAL_PROP_SEED` picks the seed, `SHOAL_PROP_CASES` the number of queries.

mod common;
#[path = "scatter/data.rs"]
mod data;
#[path = "scatter/grammar.rs"]
mod grammar;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use common::endpoint::Endpoint;
use data::{Round, ROUNDS};
use grammar::{Query, Shape};

/// The shapes the endpoint splits today: every query of these must have been split. The
/// others may be split or left to the coordinator; move a shape here once the planner splits
/// it.
const MUST_SPLIT: &[Shape] = &[
    Shape::Aggregate,
    Shape::GroupByExpression,
    Shape::GroupByColumn,
    Shape::GroupByKey,
    Shape::SortedLimit,
    Shape::Having,
    Shape::DistinctKey,
    Shape::ColocatedJoin,
    Shape::ReferenceJoin,
    Shape::ThreeWayJoin,
];

const DEFAULT_SEED: u64 = 0x5ca7_7e12;
const DEFAULT_CASES: usize = 400;
/// Failures shrunk and reported in full; the rest are counted.
const REPORTED: usize = 5;
const SCATTERED: &str = "shoal_endpoint_statements_scattered_total";

/// What a server answered: the output names (and types, by the extended protocol) and the
/// rows, in text by the simple protocol, in binary by the extended one.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Rows {
        columns: Vec<String>,
        rows: Vec<String>,
    },
    Error(String),
}

/// How a query is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    /// Text results.
    Simple,
    /// Prepared, with binary results: the merge must produce exactly the described types.
    Extended,
}

fn error_text(error: tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

async fn answer(client: &Client, sql: &str, ordered: bool, protocol: Protocol) -> Answer {
    let (columns, mut rows) = match protocol {
        Protocol::Simple => match simple(client, sql).await {
            Ok(answer) => answer,
            Err(error) => return Answer::Error(error_text(error)),
        },
        Protocol::Extended => {
            let prepared = match client.prepare(sql).await {
                Ok(statement) => client.query(&statement, &[]).await.map(|r| (statement, r)),
                Err(error) => Err(error),
            };
            match prepared {
                Ok((statement, rows)) => extended(&statement, &rows),
                Err(error) => return Answer::Error(error_text(error)),
            }
        }
    };
    if !ordered {
        rows.sort();
    }
    Answer::Rows { columns, rows }
}

async fn simple(
    client: &Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<String>), tokio_postgres::Error> {
    let (mut columns, mut rows) = (Vec::new(), Vec::new());
    for message in client.simple_query(sql).await? {
        match message {
            SimpleQueryMessage::RowDescription(description) => {
                columns = description.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| format!("{:?}", row.get(i)))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => {}
        }
    }
    Ok((columns, rows))
}

/// Rows of the extended protocol: the described names and types, values as sent.
fn extended(
    statement: &tokio_postgres::Statement,
    rows: &[tokio_postgres::Row],
) -> (Vec<String>, Vec<String>) {
    let columns = statement
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.type_()))
        .collect();
    let rows = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.try_get::<_, Binary>(i) {
                    Ok(value) => format!("{:?}", value.0),
                    // Bytes that are not of the described type.
                    Err(error) => format!("undecodable ({error})"),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    (columns, rows)
}

/// A value in binary of any type: readable for a few, else its bytes in hex (numeric's
/// bytes hold its scale, so equal bytes are the same output).
struct Binary(Option<String>);

impl<'a> FromSql<'a> for Binary {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match *ty {
            Type::INT2 => i16::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::FLOAT8 => format!("{:?}", f64::from_sql(ty, raw)?),
            Type::TEXT => format!("{:?}", String::from_sql(ty, raw)?),
            _ => raw.iter().map(|b| format!("{b:02x}")).collect(),
        };
        Ok(Binary(Some(text)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Binary(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl std::fmt::Display for Answer {
    /// The first rows, each cut short, for a failure message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Error(error) => write!(f, "error {error}"),
            Answer::Rows { columns, rows } => {
                write!(f, "{} row(s) [{}]", rows.len(), columns.join("|"))?;
                for row in rows.iter().take(12) {
                    let cut: String = row.chars().take(160).collect();
                    write!(f, "\n      {cut}")?;
                }
                if rows.len() > 12 {
                    write!(f, "\n      ...")?;
                }
                Ok(())
            }
        }
    }
}

/// One query through both paths.
struct Outcome {
    expected: Answer,
    got: Answer,
    split: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    /// The endpoint's answer is not the coordinator's.
    WrongAnswer,
    /// A query of a shape that must split went to the coordinator.
    NotSplit,
    /// The coordinator refused the query: the grammar wrote something it should not.
    Refused,
}

impl Outcome {
    fn failure(&self, must_split: bool) -> Option<Failure> {
        if matches!(self.expected, Answer::Error(_)) {
            Some(Failure::Refused)
        } else if self.got != self.expected {
            Some(Failure::WrongAnswer)
        } else if must_split && !self.split {
            Some(Failure::NotSplit)
        } else {
            None
        }
    }
}

struct Runner<'a> {
    coordinator: &'a Client,
    app: &'a Client,
    endpoint: &'a Endpoint,
    /// The endpoint's count of split statements after the last query.
    scattered: u64,
}

impl Runner<'_> {
    async fn scattered(&self) -> u64 {
        self.endpoint
            .metrics()
            .await
            .get(SCATTERED)
            .copied()
            .unwrap_or(0)
    }

    async fn run(&mut self, query: &Query, protocol: Protocol) -> Outcome {
        let sql = query.sql();
        let expected = answer(self.coordinator, &sql, query.ordered(), protocol).await;
        let got = answer(self.app, &sql, query.ordered(), protocol).await;
        let now = self.scattered().await;
        let split = now > self.scattered;
        self.scattered = now;
        Outcome {
            expected,
            got,
            split,
        }
    }

    /// Drops clauses while the query still fails the same way.
    async fn shrink(
        &mut self,
        mut query: Query,
        protocol: Protocol,
        failure: Failure,
    ) -> (Query, Outcome) {
        let must_split = MUST_SPLIT.contains(&query.shape);
        let mut outcome = self.run(&query, protocol).await;
        let mut tries = 0;
        'smaller: loop {
            for candidate in query.simpler() {
                tries += 1;
                if tries > 200 {
                    break 'smaller;
                }
                let tried = self.run(&candidate, protocol).await;
                if tried.failure(must_split) == Some(failure) {
                    query = candidate;
                    outcome = tried;
                    continue 'smaller;
                }
            }
            break;
        }
        (query, outcome)
    }
}

/// Waits until every node's copy of the reference table holds the coordinator's rows: the
/// nodes answer joins with it from their replicas.
async fn wait_for_replicas(shoal: &common::Shoal) {
    let coordinator = shoal.coordinator().await;
    let expected = common::fingerprint(&coordinator, "products").await;
    let started = std::time::Instant::now();
    for i in 0..shoal.pg.workers.len() {
        let worker = shoal.worker(i).await;
        loop {
            let found = common::fingerprint(&worker, "products").await;
            if found == expected {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "worker {i}'s products are {found:?}, not {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test]
async fn split_queries_answer_as_the_coordinator_on_random_data() {
    let seed: u64 = env_number("SHOAL_PROP_SEED", DEFAULT_SEED);
    let cases: usize = env_number("SHOAL_PROP_CASES", DEFAULT_CASES);
    let mut rng = StdRng::seed_from_u64(seed);

    let shoal = common::start(2).await;
    let coordinator = shoal.coordinator().await;
    coordinator.batch_execute(data::SCHEMA).await.unwrap();
    // Eight shards: a handful of rows leaves most of them empty.
    shoal.distribute("orders", "id", "8").await;
    for table in ["items", r#""Order Refunds""#] {
        shoal.colocate(table, "order_id", "orders").await;
    }
    shoal
        .cli(&["table", "reference", "products"])
        .await
        .assert_ok();
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    let mut runner = Runner {
        coordinator: &coordinator,
        app: &app,
        endpoint: &endpoint,
        scattered: 0,
    };
    runner.scattered = runner.scattered().await;

    let version: String = coordinator
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .unwrap()
        .get(0);
    let started = std::time::Instant::now();
    let mut summary: BTreeMap<Shape, (usize, usize)> = BTreeMap::new();
    let (mut failed, mut reports, mut rounds) = (0, Vec::new(), Vec::new());
    let per_round = cases.div_ceil(ROUNDS.len());
    for round in ROUNDS {
        for statement in data::fill(&mut rng, *round) {
            coordinator
                .batch_execute(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement:.200}: {e}"));
        }
        wait_for_replicas(&shoal).await;
        let round_started = std::time::Instant::now();
        for n in 0..per_round {
            let query = grammar::query(&mut rng);
            // Every query as text, every other one in binary too.
            let protocols: &[Protocol] = if n % 2 == 0 {
                &[Protocol::Simple]
            } else {
                &[Protocol::Simple, Protocol::Extended]
            };
            for &protocol in protocols {
                let outcome = runner.run(&query, protocol).await;
                let counts = summary.entry(query.shape).or_default();
                counts.0 += 1;
                counts.1 += usize::from(outcome.split);
                if let Some(failure) = outcome.failure(MUST_SPLIT.contains(&query.shape)) {
                    failed += 1;
                    // Shrunk now, on the round's data.
                    if reports.len() < REPORTED {
                        let failing = (*round, query.clone(), protocol, failure);
                        reports.push(report(&mut runner, failing).await);
                    }
                }
            }
        }
        rounds.push(format!("{} {:.1?}", round.name, round_started.elapsed()));
    }

    let (run, split) = summary
        .values()
        .fold((0, 0), |(r, s), (run, split)| (r + run, s + split));
    eprintln!(
        "seed {seed}, PostgreSQL {version}: {run} statements in {:.1?} ({}), {split} split by \
         the endpoint",
        started.elapsed(),
        rounds.join(", ")
    );
    for (shape, (run, split)) in &summary {
        let must = if MUST_SPLIT.contains(shape) {
            " (must split)"
        } else {
            ""
        };
        eprintln!("  {shape:?}{must}: {run} run, {split} split");
    }
    assert!(
        failed == 0,
        "{failed} of {run} statements failed (seed {seed}: rerun with SHOAL_PROP_SEED={seed} \
         SHOAL_PROP_CASES={cases}); the first, shrunk:{}",
        reports.concat()
    );
}

/// A failure, its query shrunk, for the test's message.
async fn report(
    runner: &mut Runner<'_>,
    (round, query, protocol, failure): (Round, Query, Protocol, Failure),
) -> String {
    let (shrunk, outcome) = runner.shrink(query.clone(), protocol, failure).await;
    format!(
        "\n\n{failure:?} in the round {:?}, shape {:?}, {protocol:?} protocol\n  query:  {}\n  shrunk: {}\n  \
         split by the endpoint: {}\n  coordinator: {}\n  endpoint:    {}{}",
        round.name,
        query.shape,
        query.sql(),
        shrunk.sql(),
        outcome.split,
        outcome.expected,
        outcome.got,
        difference(&outcome.expected, &outcome.got),
    )
}

/// The rows one answer has and the other lacks (the first few of each).
fn difference(expected: &Answer, got: &Answer) -> String {
    let (Answer::Rows { rows: a, .. }, Answer::Rows { rows: b, .. }) = (expected, got) else {
        return String::new();
    };
    let lacking = |from: &[String], other: &[String]| -> Vec<String> {
        let mut other: Vec<&String> = other.iter().collect();
        from.iter()
            .filter(|row| match other.iter().position(|o| o == row) {
                Some(at) => {
                    other.swap_remove(at);
                    false
                }
                None => true,
            })
            .map(|row| row.chars().take(160).collect())
            .collect()
    };
    let (missing, extra) = (lacking(a, b), lacking(b, a));
    if missing.is_empty() && extra.is_empty() {
        return if a == b {
            String::new()
        } else {
            "\n  (the same rows in another order)".to_string()
        };
    }
    let mut out = String::new();
    for (label, rows) in [
        ("only the coordinator's", missing),
        ("only the endpoint's", extra),
    ] {
        out.push_str(&format!("\n  {label}: {} row(s)", rows.len()));
        for row in rows.iter().take(8) {
            out.push_str(&format!("\n      {row}"));
        }
    }
    out
}

/// Two workers and `orders (id, qty)` with ids 1 to `rows` (`qty` is `id % 10`), distributed
/// by id into 8 shards; with a connection to the coordinator.
async fn orders_on_two_workers(rows: i64) -> (common::Shoal, Client) {
    let shoal = common::start(2).await;
    let coordinator = shoal.coordinator().await;
    coordinator
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, qty int);
             INSERT INTO orders SELECT g, g % 10 FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    shoal.distribute("orders", "id", "8").await;
    (shoal, coordinator)
}

/// A split read in a transaction block on its participants runs on the transaction's own
/// connections, so it sees the transaction's writes (the coordinator could not), joining the
/// nodes it has not reached yet; what it cannot do fails the transaction as PostgreSQL's
/// errors do, and leaves nothing behind.
#[tokio::test]
async fn split_reads_in_a_transaction_block_see_its_own_writes() {
    let (shoal, coordinator) = orders_on_two_workers(1000).await;
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    let totals = "SELECT count(*), sum(qty) FROM orders";
    let scattered = || async { endpoint.metrics().await[SCATTERED] };
    let simple_row = |messages: Vec<SimpleQueryMessage>| -> Vec<Option<String>> {
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(String::from))
                        .collect(),
                ),
                _ => None,
            })
            .expect("a row")
    };
    let before = simple_row(coordinator.simple_query(totals).await.unwrap());
    assert_eq!(before, [Some("1000".into()), Some("4500".into())]);

    for commit in [false, true] {
        let split = scattered().await;
        app.batch_execute("BEGIN").await.unwrap();
        app.batch_execute("UPDATE orders SET qty = qty + 100 WHERE id = 1")
            .await
            .unwrap();
        // Simple protocol: the update is seen; then a row on whichever node, seen too.
        assert_eq!(
            simple_row(app.simple_query(totals).await.unwrap()),
            [Some("1000".into()), Some("4600".into())]
        );
        app.batch_execute("INSERT INTO orders VALUES (5000, 7)")
            .await
            .unwrap();
        // Extended protocol, with a parameter.
        let row = app
            .query_one(
                "SELECT count(*)::text, sum(qty)::text FROM orders WHERE qty >= $1",
                &[&0i32],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("1001".to_string(), "4607".to_string())
        );
        assert_eq!(scattered().await, split + 2, "both reads were split");
        app.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        let after = simple_row(coordinator.simple_query(totals).await.unwrap());
        let expected = if commit {
            [Some("1001".into()), Some("4607".into())]
        } else {
            [Some("1000".into()), Some("4500".into())]
        };
        assert_eq!(
            after,
            expected,
            "after {}",
            if commit { "COMMIT" } else { "ROLLBACK" }
        );
    }

    // An answer too long for one merge cannot go to the coordinator from here: the
    // transaction fails with a clear error, and its writes go with it.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("UPDATE orders SET qty = 0 WHERE id = 2")
        .await
        .unwrap();
    coordinator
        .batch_execute("INSERT INTO orders SELECT g, 1 FROM generate_series(10000, 60000) g")
        .await
        .unwrap();
    let error = app
        .simple_query("SELECT id, count(*) FROM orders GROUP BY id")
        .await
        .unwrap_err();
    let error = error.as_db_error().expect("a server error");
    assert_eq!(error.code().code(), "54000", "{error}");
    assert!(error
        .hint()
        .is_some_and(|h| h.contains("outside the transaction block")));
    let aborted = app.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(aborted.code().map(|c| c.code()), Some("25P02"));
    app.batch_execute("ROLLBACK").await.unwrap();
    let qty: i32 = coordinator
        .query_one("SELECT qty FROM orders WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(qty, 2, "the failed transaction's update is gone");

    // A REPEATABLE READ transaction reads one server's snapshot: a split read needing another
    // is refused before anything runs there.
    app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    app.batch_execute("UPDATE orders SET qty = 0 WHERE id = 3")
        .await
        .unwrap();
    let refused = app.simple_query(totals).await.unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("0A000"), "{refused}");
    app.batch_execute("ROLLBACK").await.unwrap();
    let qty: i32 = coordinator
        .query_one("SELECT qty FROM orders WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(qty, 3);

    // A BEGIN among several statements of one query string opens the block on the
    // coordinator: what follows goes there too (split reads and key-routed writes alike), so
    // a ROLLBACK undoes all of it.
    app.batch_execute("BEGIN; UPDATE orders SET qty = 0 WHERE id = 4")
        .await
        .unwrap();
    app.batch_execute("UPDATE orders SET qty = 0 WHERE id = 5")
        .await
        .unwrap();
    let seen = simple_row(
        app.simple_query("SELECT count(*) FROM orders WHERE qty = 0")
            .await
            .unwrap(),
    );
    let committed = simple_row(
        coordinator
            .simple_query("SELECT count(*) FROM orders WHERE qty = 0")
            .await
            .unwrap(),
    );
    let (seen, committed): (i64, i64) = (
        seen[0].as_deref().unwrap().parse().unwrap(),
        committed[0].as_deref().unwrap().parse().unwrap(),
    );
    assert_eq!(seen, committed + 2, "the block sees both of its updates");
    app.batch_execute("ROLLBACK").await.unwrap();
    let zeroed: i64 = coordinator
        .query_one(
            "SELECT count(*) FROM orders WHERE id IN (4, 5) AND qty = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(zeroed, 0, "ROLLBACK undid both updates");
}

/// A split read's parts run without parallel workers on the nodes (the split already runs
/// several parts on each node at once), and a statement routed to one node afterwards gets the
/// node's own setting back on the pooled connection the parts used: here a database-level
/// one, read back from the nodes' statement logs per backend.
#[tokio::test]
async fn split_reads_run_without_parallel_workers_and_give_the_setting_back() {
    let shoal = orders_on_two_workers(200).await.0;
    let mut log_start = Vec::new();
    for (i, worker) in shoal.pg.workers.iter().enumerate() {
        shoal
            .worker(i)
            .await
            .batch_execute(
                "ALTER DATABASE shoal SET max_parallel_workers_per_gather = 3;
                 ALTER DATABASE shoal SET log_statement = 'all';",
            )
            .await
            .unwrap();
        log_start.push(std::fs::metadata(&worker.log_file).unwrap().len() as usize);
    }
    let endpoint = shoal.start_endpoint().await;
    let app = endpoint.connect().await;
    let scattered = || async { endpoint.metrics().await[SCATTERED] };
    for round in 0..3 {
        let split = scattered().await;
        let counted: i64 = app
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            scattered().await,
            split + 1,
            "round {round}: the read was split"
        );
        assert_eq!(counted, 200, "round {round}");
        // Every key, so pooled connections of both nodes answer one.
        for id in 1..=16i64 {
            let qty: i32 = app
                .query_one("SELECT qty FROM orders WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(i64::from(qty), id % 10);
        }
    }
    // Per backend, the setting its last set_config gave it, seen at each statement.
    let (mut parts, mut routed) = (0, 0);
    for (worker, start) in shoal.pg.workers.iter().zip(log_start) {
        let log = std::fs::read_to_string(&worker.log_file).unwrap();
        let mut setting: BTreeMap<String, &str> = BTreeMap::new();
        for line in log[start..].lines() {
            let Some(pid) = line
                .split_once(" [")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(pid, _)| pid.to_string())
            else {
                continue;
            };
            if line.contains("set_config('max_parallel_workers_per_gather', '0'") {
                setting.insert(pid, "0");
            } else if line
                .contains("set_config('max_parallel_workers_per_gather', (SELECT reset_val")
            {
                setting.insert(pid, "reset");
            } else if line.contains("count(*)") && line.contains("public.orders_") {
                parts += 1;
                assert_eq!(
                    setting.get(&pid),
                    Some(&"0"),
                    "a split part ran with parallel workers: {line}"
                );
            } else if line.contains("execute") && line.contains("qty FROM public.orders_") {
                routed += 1;
                assert_ne!(
                    setting.get(&pid),
                    Some(&"0"),
                    "a routed statement kept the split's setting: {line}"
                );
            }
        }
    }
    assert!(parts >= 3 && routed == 48, "parts {parts}, routed {routed}");
}
