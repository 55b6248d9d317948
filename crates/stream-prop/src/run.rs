//! Running cases against a real PostgreSQL: the pure core's full and differential refresh SQL
//! applied to one plain server, changes captured by triggers, and the stream table compared
//! with its query recomputed after every batch; then shrinking a failure.

use std::collections::HashMap;
use std::fmt;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_postgres::Client;

use crate::case::{gen_case, script, shrinks, size, Case};
use crate::grammar::{SCHEMA, TABLES};
use shoal_sql::QualifiedName;
use shoal_stream::{
    analyze, contents_sql, differential_refresh_sql, full_refresh_sql, probe_sql, storage_ddl,
    ColumnType, DeltaRelations, QueryPlan, SourceRef,
};

/// The schema every case runs in, dropped and recreated per case.
const SCHEMA_NAME: &str = "prop";

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The analyzer does not maintain the query differentially: nothing to compare.
    Skipped,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where: "create", "the initial full refresh", "batch 2", ...
    pub stage: String,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.stage, self.message)
    }
}

fn fail(stage: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed(Failure {
        stage: stage.into(),
        message: message.into(),
    })
}

async fn exec(client: &Client, sql: &str) -> Result<(), String> {
    client.batch_execute(sql).await.map_err(|e| {
        let detail = e
            .as_db_error()
            .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
            .unwrap_or_else(|| e.to_string());
        format!("{detail}\nin: {sql}")
    })
}

async fn count(client: &Client, sql: &str) -> Result<i64, String> {
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| format!("{e:?}\nin: {sql}"))
}

/// Drops and recreates the tables and their change capture: old rows go to `del_<t>`, new ones
/// to `ins_<t>`.
async fn setup(client: &Client) -> Result<(), String> {
    exec(
        client,
        &format!(
            "SET client_min_messages = warning; DROP SCHEMA IF EXISTS {SCHEMA_NAME} CASCADE; \
             CREATE SCHEMA {SCHEMA_NAME}; SET search_path = {SCHEMA_NAME}; {SCHEMA}"
        ),
    )
    .await?;
    for t in TABLES {
        exec(
            client,
            &format!(
                "CREATE TABLE del_{t} (LIKE {t});
                 CREATE TABLE ins_{t} (LIKE {t});
                 CREATE FUNCTION {t}_capture() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF TG_OP IN ('DELETE', 'UPDATE') THEN INSERT INTO del_{t} SELECT (OLD).*; END IF;
                   IF TG_OP IN ('INSERT', 'UPDATE') THEN INSERT INTO ins_{t} SELECT (NEW).*; END IF;
                   RETURN NULL;
                 END $$;
                 CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON {t}
                   FOR EACH ROW EXECUTE FUNCTION {t}_capture();"
            ),
        )
        .await?;
    }
    Ok(())
}

async fn truncate_changes(client: &Client) -> Result<(), String> {
    exec(client, "TRUNCATE del_t, ins_t, del_u, ins_u").await
}

/// Probes the column types, creates the storage and fills it by a full refresh, as the
/// scheduler does.
async fn create(client: &Client, plan: &QueryPlan, table: &QualifiedName) -> Result<(), String> {
    exec(
        client,
        &format!("CREATE TABLE probe AS {}", probe_sql(plan)),
    )
    .await?;
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'probe'::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let types: Vec<ColumnType> = rows
        .iter()
        .map(|r| ColumnType::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    for stmt in storage_ddl(plan, table, &types).map_err(|e| e.to_string())? {
        exec(client, &stmt).await?;
    }
    refresh(client, &full_refresh_sql(plan, table)).await
}

async fn refresh(client: &Client, stmts: &[String]) -> Result<(), String> {
    let result = exec(client, &format!("BEGIN; {}; COMMIT", stmts.join(";\n"))).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The stream table's visible contents against the query recomputed, as bags.
async fn compare(client: &Client, plan: &QueryPlan, table: &QualifiedName) -> Result<(), String> {
    let contents = contents_sql(plan, table);
    let extra = count(
        client,
        &format!(
            "SELECT count(*) FROM (({contents}) EXCEPT ALL ({})) x",
            plan.query
        ),
    )
    .await?;
    let missing = count(
        client,
        &format!(
            "SELECT count(*) FROM (({}) EXCEPT ALL ({contents})) x",
            plan.query
        ),
    )
    .await?;
    if extra == 0 && missing == 0 {
        return Ok(());
    }
    let rows = |sql: String| async move {
        client
            .query(&format!("SELECT r::text FROM ({sql}) r"), &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    Err(format!(
        "{extra} rows too many, {missing} missing\nstream table: {:?}\nquery:        {:?}",
        rows(contents.clone()).await,
        rows(plan.query.clone()).await
    ))
}

/// Runs one case on a fresh schema.
pub async fn run_case(client: &Client, case: &Case) -> Outcome {
    let sql = case.query.sql();
    let plan = match analyze(&sql) {
        Ok(plan) if plan.differential().is_some() => plan,
        _ => return Outcome::Skipped,
    };
    if let Err(e) = setup(client).await {
        return fail("setup", e);
    }
    for c in &case.initial {
        if let Err(e) = exec(client, &c.sql()).await {
            return fail("setup", e);
        }
    }
    let table = QualifiedName::new(SCHEMA_NAME, "st");
    if let Err(e) = truncate_changes(client).await {
        return fail("setup", e);
    }
    if let Err(e) = create(client, &plan, &table).await {
        return fail("create", e);
    }
    if let Err(e) = compare(client, &plan, &table).await {
        return fail("the initial full refresh", e);
    }
    for (i, batch) in case.batches.iter().enumerate() {
        let stage = format!("batch {}", i + 1);
        for c in batch {
            if let Err(e) = exec(client, &c.sql()).await {
                return fail("setup", e);
            }
        }
        // Only sources with captured changes get delta terms.
        let mut deltas = HashMap::new();
        for t in TABLES {
            let n = count(
                client,
                &format!("SELECT (SELECT count(*) FROM del_{t}) + (SELECT count(*) FROM ins_{t})"),
            )
            .await;
            match n {
                Ok(0) => {}
                Ok(_) => {
                    let source = SourceRef::new(None, t);
                    if plan.relations.contains(&source) {
                        deltas.insert(
                            source,
                            DeltaRelations {
                                deleted_sql: format!("{SCHEMA_NAME}.del_{t}"),
                                inserted_sql: format!("(SELECT * FROM {SCHEMA_NAME}.ins_{t})"),
                            },
                        );
                    }
                }
                Err(e) => return fail("setup", e),
            }
        }
        let stmts = match differential_refresh_sql(&plan, &table, &deltas) {
            Ok(s) => s,
            Err(e) => return fail(&stage, format!("generating the refresh: {e}")),
        };
        if !stmts.is_empty() {
            if let Err(e) = refresh(client, &stmts).await {
                return fail(&stage, e);
            }
        }
        if let Err(e) = compare(client, &plan, &table).await {
            return fail(&stage, e);
        }
        if let Err(e) = truncate_changes(client).await {
            return fail("setup", e);
        }
    }
    Outcome::Passed
}

/// Shrinks a failing case: takes the first one-step shrink that still fails, until none does.
pub async fn shrink(client: &Client, case: Case, failure: Failure) -> (Case, Failure) {
    let (mut case, mut failure) = (case, failure);
    'outer: loop {
        for candidate in shrinks(&case) {
            debug_assert!(size(&candidate) < size(&case));
            if let Outcome::Failed(f) = run_case(client, &candidate).await {
                case = candidate;
                failure = f;
                continue 'outer;
            }
        }
        return (case, failure);
    }
}

/// A failure found, shrunk, with the seed that reproduces the case.
#[derive(Debug, Clone)]
pub struct Found {
    pub seed: u64,
    pub case: Case,
    pub failure: Failure,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} fails {}\n-- minimal case:\n{}",
            self.seed,
            self.failure,
            script(&self.case)
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub run: usize,
    pub skipped: usize,
    pub failures: Vec<Found>,
}

/// The case of one seed: case `i` of a run from seed `s` is the case of seed `s + i`.
pub fn case_of(seed: u64) -> Case {
    gen_case(&mut StdRng::seed_from_u64(seed))
}

/// Runs `cases` cases from `seed`, shrinking each failure (up to `max_failures` of them, after
/// which the run stops).
pub async fn run(client: &Client, seed: u64, cases: u64, max_failures: usize) -> Summary {
    let mut summary = Summary::default();
    for i in 0..cases {
        let case_seed = seed.wrapping_add(i);
        let case = case_of(case_seed);
        summary.run += 1;
        match run_case(client, &case).await {
            Outcome::Passed => {}
            Outcome::Skipped => summary.skipped += 1,
            Outcome::Failed(failure) => {
                let (case, failure) = shrink(client, case, failure).await;
                summary.failures.push(Found {
                    seed: case_seed,
                    case,
                    failure,
                });
                if summary.failures.len() >= max_failures {
                    break;
                }
            }
        }
    }
    summary
}
