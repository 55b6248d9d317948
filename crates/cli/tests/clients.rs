//! Drivers other than libpq's tools through Shoal's endpoint: psycopg (Python, from PyPI) and
//! node-postgres (`pg`, from npm) run a small shop's queries and transactions: key lookups
//! and writes with bound parameters, a transfer between two nodes, a rollback, a savepoint,
//! a constraint error with its SQLSTATE, a query only the coordinator answers, COPY.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shop both applications use: accounts distributed over two workers, kinds a reference
/// table; with two accounts (above 10) on different workers.
async fn shop() -> (common::Shoal, String, String) {
    let shoal = common::start(2).await;
    shoal
        .coordinator()
        .await
        .batch_execute(
            "CREATE TABLE kinds (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO kinds VALUES (1, 'cash'), (2, 'card');
             CREATE TABLE accounts (id bigint PRIMARY KEY, kind int NOT NULL, balance numeric NOT NULL,
                                    note text);
             INSERT INTO accounts SELECT g, 1 + g % 2, 100, 'n' || g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    shoal.distribute("accounts", "id", "4").await;
    let by_worker = shoal.ids_by_worker("accounts").await;
    let pick = |ids: &[i64]| ids.iter().find(|id| **id > 10).unwrap().to_string();
    let (a, b) = (pick(&by_worker[0]), pick(&by_worker[1]));
    (shoal, a, b)
}

/// Installs `packages` with `install` into a directory under Cargo's scratch space, once.
fn tools(name: &str, install: impl FnOnce(&Path) -> std::process::ExitStatus) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let ready = dir.join(".installed");
    if !ready.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            install(&dir).success(),
            "could not install {name} into {}",
            dir.display()
        );
        std::fs::write(&ready, "").unwrap();
    }
    dir
}

/// What both applications print, line by line, when everything behaves as on PostgreSQL.
const EXPECTED: &[&str] = &[
    "lookup 7 100 n7 card",
    "inserted 1001",
    "transfer ok",
    "rolled back 100",
    "savepoint 101",
    "unique 23505",
    "aborted 25P02",
    "count 101",
    "copied 3",
    "sum 10104",
];

fn check(output: std::process::Output, driver: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{driver} failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, EXPECTED, "{driver}:\n{stderr}");
}

const PSYCOPG_APP: &str = r#"
import sys, psycopg
uri, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with psycopg.connect(uri) as conn:
    conn.autocommit = True
    row = conn.execute(
        "SELECT a.id, a.balance, a.note, k.name FROM accounts a JOIN kinds k ON k.id = a.kind "
        "WHERE a.id = %s", (7,)).fetchone()
    print("lookup", row[0], int(row[1]), row[2], row[3])
    conn.execute("INSERT INTO accounts (id, kind, balance, note) VALUES (%s, %s, %s, %s)",
                 (1001, 1, 100, "new"))
    print("inserted", conn.execute("SELECT id FROM accounts WHERE id = %s", (1001,)).fetchone()[0])
    with conn.transaction():
        conn.execute("UPDATE accounts SET balance = balance - 5 WHERE id = %s", (a,))
        conn.execute("UPDATE accounts SET balance = balance + 5 WHERE id = %s", (b,))
    print("transfer ok")
    try:
        with conn.transaction():
            conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (3,))
            raise RuntimeError("undo")
    except RuntimeError:
        pass
    print("rolled back", int(conn.execute("SELECT balance FROM accounts WHERE id = 3").fetchone()[0]))
    with conn.transaction():
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (4,))
        try:
            with conn.transaction():
                conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id = %s", (4,))
                raise RuntimeError("inner")
        except RuntimeError:
            pass
    print("savepoint", int(conn.execute("SELECT balance FROM accounts WHERE id = %s", (4,)).fetchone()[0]))
    try:
        conn.execute("INSERT INTO accounts (id, kind, balance) VALUES (%s, 1, 0)", (5,))
    except psycopg.errors.UniqueViolation as e:
        print("unique", e.sqlstate)
    conn.autocommit = False
    try:
        conn.execute("INSERT INTO accounts (id, kind, balance) VALUES (%s, 1, 0)", (6,))
    except psycopg.Error:
        pass
    try:
        conn.execute("SELECT 1 FROM accounts WHERE id = %s", (6,))
    except psycopg.Error as e:
        print("aborted", e.sqlstate)
    conn.rollback()
    conn.autocommit = True
    print("count", conn.execute("SELECT count(*) FROM accounts").fetchone()[0])
    with conn.cursor() as cur:
        with cur.copy("COPY accounts (id, kind, balance) FROM STDIN") as copy:
            for i in (2001, 2002, 2003):
                copy.write_row((i, 2, 1))
    print("copied", conn.execute("SELECT count(*) FROM accounts WHERE id > 2000").fetchone()[0])
    print("sum", int(conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]))
"#;

#[tokio::test]
async fn psycopg_runs_a_shop_through_the_endpoint() {
    let dir = tools("psycopg", |dir| {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(dir)
            .arg("psycopg[binary]==3.*")
            .status()
            .expect("python3 runs (install it: apt-get install python3 python3-pip)")
    });
    let (shoal, a, b) = shop().await;
    let endpoint = shoal.start_endpoint().await;
    let output = tokio::process::Command::new("python3")
        .args(["-c", PSYCOPG_APP, &endpoint.uri, &a, &b])
        .env("PYTHONPATH", &dir)
        .output()
        .await
        .unwrap();
    check(output, "psycopg");
    let metrics = endpoint.metrics().await;
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 10,
        "{metrics:?}"
    );
    assert!(
        metrics["shoal_endpoint_two_phase_commits_total"] >= 1,
        "{metrics:?}"
    );
}

const NODE_APP: &str = r#"
const { Client } = require('pg');
(async () => {
  const [uri, a, b] = process.argv.slice(-3);
  const client = new Client({ connectionString: uri });
  await client.connect();
  const q = (text, values) => client.query(text, values);
  let r = await q("SELECT a.id, a.balance, a.note, k.name FROM accounts a JOIN kinds k ON k.id = a.kind WHERE a.id = $1", [7]);
  console.log("lookup", r.rows[0].id, Number(r.rows[0].balance), r.rows[0].note, r.rows[0].name);
  await q("INSERT INTO accounts (id, kind, balance, note) VALUES ($1, $2, $3, $4)", [1001, 1, 100, "new"]);
  r = await client.query({ name: "by_id", text: "SELECT id FROM accounts WHERE id = $1", values: [1001] });
  console.log("inserted", r.rows[0].id);
  await q("BEGIN");
  await q("UPDATE accounts SET balance = balance - 5 WHERE id = $1", [Number(a)]);
  await q("UPDATE accounts SET balance = balance + 5 WHERE id = $1", [Number(b)]);
  await q("COMMIT");
  console.log("transfer ok");
  await q("BEGIN");
  await q("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [3]);
  await q("ROLLBACK");
  r = await client.query({ name: "by_id_balance", text: "SELECT balance FROM accounts WHERE id = $1", values: [3] });
  console.log("rolled back", Number(r.rows[0].balance));
  await q("BEGIN");
  await q("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [4]);
  await q("SAVEPOINT inner_work");
  await q("UPDATE accounts SET balance = balance + 100 WHERE id = $1", [4]);
  await q("ROLLBACK TO SAVEPOINT inner_work");
  await q("COMMIT");
  r = await client.query({ name: "by_id_balance", text: "SELECT balance FROM accounts WHERE id = $1", values: [4] });
  console.log("savepoint", Number(r.rows[0].balance));
  try { await q("INSERT INTO accounts (id, kind, balance) VALUES ($1, 1, 0)", [5]); }
  catch (e) { console.log("unique", e.code); }
  await q("BEGIN");
  try { await q("INSERT INTO accounts (id, kind, balance) VALUES ($1, 1, 0)", [6]); } catch (e) {}
  try { await q("SELECT 1 FROM accounts WHERE id = $1", [6]); }
  catch (e) { console.log("aborted", e.code); }
  await q("ROLLBACK");
  r = await q("SELECT count(*)::int AS n FROM accounts");
  console.log("count", r.rows[0].n);
  await q("INSERT INTO accounts (id, kind, balance) VALUES (2001, 2, 1), (2002, 2, 1), (2003, 2, 1)");
  r = await q("SELECT count(*)::int AS n FROM accounts WHERE id > 2000");
  console.log("copied", r.rows[0].n);
  r = await q("SELECT sum(balance)::int AS s FROM accounts");
  console.log("sum", r.rows[0].s);
  await client.end();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test]
async fn node_postgres_runs_a_shop_through_the_endpoint() {
    let dir = tools("node-pg", |dir| {
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .arg("pg@8")
            .status()
            .expect("npm runs (install Node.js and npm: apt-get install nodejs npm)")
    });
    let (shoal, a, b) = shop().await;
    let endpoint = shoal.start_endpoint().await;
    let output = tokio::process::Command::new("node")
        .args(["-e", NODE_APP, &endpoint.uri, &a, &b])
        .env("NODE_PATH", dir.join("node_modules"))
        .output()
        .await
        .unwrap();
    check(output, "node-postgres");
    let metrics = endpoint.metrics().await;
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 10,
        "{metrics:?}"
    );
    assert!(
        metrics["shoal_endpoint_two_phase_commits_total"] >= 1,
        "{metrics:?}"
    );
}
