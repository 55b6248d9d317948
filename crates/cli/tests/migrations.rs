//! A real migration tool, Alembic (from PyPI, installed by the test the first time), runs an
//! application's migrations against the coordinator: what the coordinator takes straight from
//! the tool, and, for what PostgreSQL refuses on distributed tables (foreign keys, CREATE INDEX
//! CONCURRENTLY), the SQL Alembic writes in offline mode run by `shoal ddl`. The application's
//! queries are checked after every step.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_postgres::Client;

use common::Shoal;

/// Alembic and psycopg2, installed once under Cargo's scratch directory for tests.
fn python_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-tools");
    let ready = dir.join(".installed");
    if ready.exists() {
        return dir;
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&dir)
        .args(["alembic==1.*", "psycopg2-binary==2.9.*"])
        .status()
        .expect("python3 runs (install it: apt-get install python3 python3-pip)");
    assert!(
        status.success(),
        "could not install Alembic: run `python3 -m pip install --target {} alembic psycopg2-binary`",
        dir.display()
    );
    std::fs::write(&ready, "").unwrap();
    dir
}

const ENV_PY: &str = r#"
from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
"#;

const SCRIPT_MAKO: &str = "";

/// The application's migrations, as its developers would write them.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "r1",
        r#"
def upgrade():
    op.create_table("kinds", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
    op.create_table(
        "shop_orders",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.BigInteger),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "shop_lines",
        sa.Column("order_id", sa.BigInteger, primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("qty", sa.Integer),
    )
"#,
    ),
    (
        "r2",
        r#"
def upgrade():
    op.add_column("shop_orders", sa.Column("status", sa.Text, nullable=False, server_default="new"))
    op.add_column("shop_lines", sa.Column("kind_id", sa.Integer))
    op.alter_column("shop_orders", "note", new_column_name="memo")
    op.drop_column("shop_lines", "qty")
    op.create_index("ix_orders_status", "shop_orders", ["status"])
"#,
    ),
    (
        "r3",
        r#"
def upgrade():
    op.create_foreign_key("fk_lines_order", "shop_lines", "shop_orders", ["order_id"], ["id"], ondelete="CASCADE")
    op.create_foreign_key("fk_lines_kind", "shop_lines", "kinds", ["kind_id"], ["id"])
    with op.get_context().autocommit_block():
        op.create_index("ix_lines_kind", "shop_lines", ["kind_id"], postgresql_concurrently=True)
"#,
    ),
    (
        "r4",
        r#"
def upgrade():
    op.drop_table("shop_lines")
"#,
    ),
];

/// An Alembic project pointing at the cluster's coordinator.
fn project(shoal: &Shoal) -> PathBuf {
    project_at(shoal, shoal.pg.coordinator.port, MIGRATIONS)
}

/// An Alembic project with `migrations`, pointing at `port` on 127.0.0.1.
fn project_at(shoal: &Shoal, port: u16, migrations: &[(&str, &str)]) -> PathBuf {
    let dir = shoal.pg.run_dir().join(format!("alembic-{port}"));
    std::fs::create_dir_all(dir.join("versions")).unwrap();
    std::fs::write(
        dir.join("alembic.ini"),
        format!(
            "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = postgresql+psycopg2://postgres@127.0.0.1:{}/{}\n",
            port,
            shoal_testkit::DBNAME
        ),
    )
    .unwrap();
    std::fs::write(dir.join("env.py"), ENV_PY).unwrap();
    std::fs::write(dir.join("script.py.mako"), SCRIPT_MAKO).unwrap();
    let mut previous = "None".to_string();
    for (revision, body) in migrations {
        std::fs::write(
            dir.join("versions").join(format!("{revision}.py")),
            format!(
                "from alembic import op\nimport sqlalchemy as sa\n\nrevision = {revision:?}\n\
                 down_revision = {previous}\n{body}"
            ),
        )
        .unwrap();
        previous = format!("{revision:?}");
    }
    dir
}

/// Runs `alembic ARGS` in the project; returns its standard output.
fn alembic(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("python3")
        .args(["-m", "alembic", "-c"])
        .arg(dir.join("alembic.ini"))
        .args(args)
        .env("PYTHONPATH", python_tools())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "alembic {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `alembic ARGS` expecting a failure; returns its standard error.
fn alembic_fails(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("python3")
        .args(["-m", "alembic", "-c"])
        .arg(dir.join("alembic.ini"))
        .args(args)
        .env("PYTHONPATH", python_tools())
        .output()
        .expect("python3 runs");
    assert!(
        !output.status.success(),
        "alembic {args:?} should have failed"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn scalar(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn alembic_migrations_run_against_the_coordinator() {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    let dir = project(&shoal);

    alembic(&dir, &["upgrade", "r1"]);
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    for (table, column, colocate) in [
        ("shop_orders", "id", None),
        ("shop_lines", "order_id", Some("shop_orders")),
    ] {
        let mut args = vec![
            "table",
            "distribute",
            table,
            "--column",
            column,
            "--shards",
            "4",
        ];
        if let Some(other) = colocate {
            args.extend(["--colocate-with", other]);
        }
        shoal.cli(&args).await.assert_ok();
    }
    sql.batch_execute(
        "INSERT INTO kinds VALUES (1, 'book'), (2, 'pen');
         INSERT INTO shop_orders VALUES (1, 10, 'first'), (2, 20, 'second');
         INSERT INTO shop_lines VALUES (1, 1, 3), (1, 2, 4), (2, 1, 5);",
    )
    .await
    .unwrap();

    // Columns added, renamed and dropped, an index: straight from the tool.
    alembic(&dir, &["upgrade", "r2"]);
    shoal.assert_definitions_match().await;
    sql.batch_execute(
        "INSERT INTO shop_orders (id, customer_id, memo) VALUES (3, 30, 'third');
         INSERT INTO shop_lines (order_id, line, kind_id) VALUES (3, 1, 2);",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM shop_orders WHERE status = 'new' AND memo IS NOT NULL"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM shop_orders o JOIN shop_lines l ON l.order_id = o.id"
        )
        .await,
        4
    );

    // Foreign keys and CREATE INDEX CONCURRENTLY: PostgreSQL refuses them on the coordinator,
    // before anything changes; the same migration's SQL goes through `shoal ddl`.
    let before = shoal.definitions().await;
    let error = alembic_fails(&dir, &["upgrade", "r3"]);
    assert!(
        error.contains("foreign key to distributed table shop_lines")
            && error.contains("shoal ddl"),
        "{error}"
    );
    assert_eq!(shoal.definitions().await, before);
    let script = alembic(&dir, &["upgrade", "r2:r3", "--sql"]);
    let mut ddl = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["ddl", "--file", "-"])
        .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    ddl.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .await
        .unwrap();
    let output = ddl.wait_with_output().await.unwrap();
    common::assert_success(&output);
    assert!(alembic(&dir, &["current"]).contains("r3"));
    shoal.assert_definitions_match().await;
    for bad in [
        "INSERT INTO shop_lines (order_id, line) VALUES (99, 1)",
        "INSERT INTO shop_lines (order_id, line, kind_id) VALUES (1, 9, 99)",
    ] {
        assert!(
            sql.batch_execute(bad).await.is_err(),
            "{bad} must break a key"
        );
    }
    sql.batch_execute("DELETE FROM shop_orders WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM shop_lines WHERE order_id = 1").await,
        0,
        "the key's cascade ran on the shards"
    );

    // A table dropped by a migration leaves nothing on the nodes.
    alembic(&dir, &["upgrade", "r4"]);
    assert!(alembic(&dir, &["current"]).contains("r4"));
    assert_eq!(scalar(&sql, "SELECT count(*) FROM shop_orders").await, 2);
    shoal.assert_definitions_match().await;
    shoal.assert_nothing_left_behind().await;
}

/// Through Shoal's endpoint the same tool runs what the coordinator refuses on a distributed
/// table among these: an index built concurrently (and dropped so), which the endpoint builds on
/// every shard.
const ENDPOINT_MIGRATIONS: &[(&str, &str)] = &[
    MIGRATIONS[0],
    MIGRATIONS[1],
    (
        "r3",
        r#"
def upgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_lines_line", "shop_lines", ["line"], postgresql_concurrently=True)
        op.drop_index("ix_orders_status", "shop_orders", postgresql_concurrently=True)
"#,
    ),
];

#[tokio::test]
async fn alembic_migrations_run_through_the_endpoint_unchanged() {
    let shoal = common::start(2).await;
    let endpoint = shoal.start_endpoint().await;
    let dir = project_at(&shoal, endpoint.port, ENDPOINT_MIGRATIONS);
    alembic(&dir, &["upgrade", "r1"]);
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "shop_orders",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "table",
            "distribute",
            "shop_lines",
            "--column",
            "order_id",
            "--colocate-with",
            "shop_orders",
        ])
        .await
        .assert_ok();
    let app = endpoint.connect().await;
    app.batch_execute(
        "INSERT INTO shop_orders VALUES (1, 10, 'first'); INSERT INTO shop_lines VALUES (1, 1, 3);",
    )
    .await
    .unwrap();
    alembic(&dir, &["upgrade", "r2"]);
    alembic(&dir, &["upgrade", "r3"]);
    assert!(alembic(&dir, &["current"]).contains("r3"));
    shoal.assert_definitions_match().await;
    let mut on_shards = 0;
    for worker in &shoal.pg.workers {
        on_shards += scalar(
            &worker.connect().await,
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'ix_lines_line%'",
        )
        .await;
    }
    assert_eq!(on_shards, 4, "the index is on every shard of shop_lines");
    app.batch_execute("INSERT INTO shop_orders (id, customer_id, memo) VALUES (2, 20, 'second')")
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM shop_orders WHERE status = 'new'"
        )
        .await,
        2
    );
}
