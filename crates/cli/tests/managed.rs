//! Shoal as a managed service's admin role: not a superuser, only what the services give their
//! admin user (CREATEDB, CREATEROLE, REPLICATION, pg_create_subscription on 16 and newer, its
//! own database, USAGE on postgres_fdw), logging in with a SCRAM password.

mod common;

use common::{fingerprint, CliOutput};
use shoal_catalog::ConnectParams;
use shoal_local::PgBinaries;
use shoal_testkit::{Certificates, TestCluster, TestServer};

const ADMIN: &str = "shoal_admin";
/// With a space, a quote and a percent sign, which every layer must carry intact.
const PASSWORD: &str = "s3cret 'pa%ss";

fn admin_uri(server: &TestServer, tls: Option<&Certificates>) -> String {
    let encoded = url::form_urlencoded::byte_serialize(PASSWORD.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    let mut uri = format!(
        "postgresql://{ADMIN}:{encoded}@127.0.0.1:{}/{}",
        server.port,
        shoal_testkit::DBNAME
    );
    if let Some(certificates) = tls {
        uri.push_str(&format!(
            "?sslmode=verify-full&sslrootcert={}",
            certificates.ca_cert.display()
        ));
    }
    uri
}

/// What a managed service gives its admin user, set up by the superuser.
async fn grant_admin(server: &TestServer) {
    let sql = server.connect().await;
    sql.batch_execute(&format!(
        "CREATE ROLE {ADMIN} LOGIN PASSWORD '{}' CREATEDB CREATEROLE REPLICATION;
         ALTER DATABASE {db} OWNER TO {ADMIN};
         CREATE EXTENSION IF NOT EXISTS postgres_fdw;
         GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {ADMIN};",
        PASSWORD.replace('\'', "''"),
        db = shoal_testkit::DBNAME
    ))
    .await
    .unwrap();
    if server.bins.major >= 16 {
        sql.batch_execute(&format!("GRANT pg_create_subscription TO {ADMIN}"))
            .await
            .unwrap();
    }
}

struct Managed {
    pg: TestCluster,
    certificates: Option<Certificates>,
    /// What `shoal` gets as `SHOAL_COORDINATOR`.
    uri: String,
    /// Environment for `shoal` beyond it.
    env: Vec<(String, String)>,
    outputs: Vec<String>,
}

impl Managed {
    async fn start(bins: PgBinaries, tls: bool) -> Managed {
        let pg = TestCluster::start_from(2, bins).await;
        let certificates = tls.then(|| Certificates::make(&pg.run_dir().join("tls")));
        for server in pg.servers() {
            grant_admin(server).await;
        }
        pg.require_passwords(certificates.as_ref());
        let uri = admin_uri(&pg.coordinator, certificates.as_ref());
        Managed {
            pg,
            certificates,
            uri,
            env: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Runs `shoal` as the admin role, most verbose, and keeps what it printed.
    async fn cli(&mut self, args: &[&str]) -> CliOutput {
        let uri = self.uri.clone();
        let mut args = args.to_vec();
        args.push("-vv");
        self.cli_at(&uri, &args).await
    }

    /// Runs `shoal` with another coordinator URI, at the default verbosity.
    async fn cli_at(&mut self, uri: &str, args: &[&str]) -> CliOutput {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_COORDINATOR", uri)
            .env_remove("PGPASSWORD")
            .env_remove("SHOAL_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .await
            .expect("the shoal binary runs");
        let out = CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.outputs
            .push(format!("{args:?}\n{}{}", out.stdout, out.stderr));
        out
    }

    /// The admin role's own session on the coordinator, with the password and TLS `shoal` uses.
    async fn admin(&self) -> tokio_postgres::Client {
        let uri = admin_uri(&self.pg.coordinator, self.certificates.as_ref());
        let params = ConnectParams::parse(&uri).unwrap();
        shoal_catalog::connect(&params, "test admin").await.unwrap()
    }

    /// The password reached no output, and the catalog holds it nowhere.
    async fn assert_password_kept_secret(&self) {
        for output in &self.outputs {
            assert!(!output.contains(PASSWORD), "the password leaked: {output}");
            assert!(!output.contains("s3cret"), "the password leaked: {output}");
        }
        let superuser = self.pg.coordinator.connect().await;
        let tables: Vec<String> = superuser
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'shoal'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for table in tables {
            let rows: Option<String> = superuser
                .query_one(
                    &format!("SELECT string_agg(t::text, ' ') FROM {table} t"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let rows = rows.unwrap_or_default();
            assert!(
                !rows.contains("s3cret"),
                "{table} holds the password: {rows}"
            );
        }
    }

    /// Every session of the admin role on the workers (the coordinator's postgres_fdw
    /// connections among them, opened by the admin's queries) is encrypted.
    async fn assert_admin_sessions_encrypted(&self) {
        for worker in &self.pg.workers {
            let sql = worker.connect().await;
            let row = sql
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE s.ssl)
                     FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                     WHERE a.usename = 'shoal_admin'",
                    &[],
                )
                .await
                .unwrap();
            let (sessions, encrypted): (i64, i64) = (row.get(0), row.get(1));
            assert!(
                sessions > 0,
                "the admin role has sessions on {}",
                worker.name
            );
            assert_eq!(
                sessions, encrypted,
                "unencrypted sessions on {}",
                worker.name
            );
        }
    }

    /// A differential stream table `per_kind` over `items`, refreshed after `change`: the
    /// number of rows it counts.
    async fn stream_per_kind(&mut self, admin: &tokio_postgres::Client, change: &str) -> i64 {
        self.cli(&[
            "stream",
            "create",
            "per_kind",
            "--mode",
            "differential",
            "--query",
            "SELECT kind, count(*) AS n FROM items GROUP BY kind",
        ])
        .await
        .assert_ok();
        admin.batch_execute(change).await.unwrap();
        self.cli(&["stream", "refresh", "per_kind"])
            .await
            .assert_ok();
        admin
            .query_one("SELECT sum(n)::bigint FROM per_kind", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// With TLS, the servers verify each other's certificates too.
    fn verify_between_servers(&mut self) {
        if let Some(certificates) = &self.certificates {
            self.env = vec![
                ("SHOAL_SERVER_SSLMODE".into(), "verify-full".into()),
                (
                    "SHOAL_SERVER_SSLROOTCERT".into(),
                    certificates.ca_cert.display().to_string(),
                ),
            ];
        }
    }

    /// `init`, every worker added, and `items` (5000 rows) distributed over 4 shards.
    async fn distribute_items(&mut self) -> tokio_postgres::Client {
        self.cli(&["init"]).await.assert_ok();
        for i in 0..self.pg.workers.len() {
            let address = self.pg.workers[i].host_port();
            self.cli(&["node", "add", &address]).await.assert_ok();
        }
        let admin = self.admin().await;
        admin
            .batch_execute(
                "CREATE TABLE items (id bigint PRIMARY KEY, kind int, v bigint);
                 INSERT INTO items SELECT g, g % 10, g FROM generate_series(1, 5000) g;",
            )
            .await
            .unwrap();
        self.distribute_items_table().await;
        admin
    }

    async fn distribute_items_table(&mut self) {
        self.cli(&[
            "table",
            "distribute",
            "items",
            "--column",
            "id",
            "--shards",
            "4",
        ])
        .await
        .assert_ok();
    }

    /// Moves the first shard of `items` to the other worker with `mode`; the content stays.
    async fn move_first_shard(&mut self, admin: &tokio_postgres::Client, mode: &str) {
        let content = fingerprint(admin, "items").await;
        let row = admin
            .query_one(
                "SELECT shard_id, node_id FROM shoal.shards WHERE table_name = 'items'::regclass ORDER BY shard_index LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        let (shard, node): (i64, i32) = (row.get(0), row.get(1));
        let to = if node == 1 { "2" } else { "1" };
        self.cli(&[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            to,
            "--mode",
            mode,
        ])
        .await
        .assert_ok();
        assert_eq!(fingerprint(admin, "items").await, content);
    }
}

/// The coordinator's planner statistics of a distributed table, made by the admin role (its
/// owner, no superuser): after distribute and after a move, every foreign table has its
/// shard's row count and column statistics; `shoal analyze --force` redoes them all.
#[tokio::test]
async fn a_managed_admin_role_keeps_planner_statistics() {
    let mut managed = Managed::start(shoal_testkit::binaries().clone(), false).await;
    let admin = managed.distribute_items().await;
    let assert_statistics = |admin: tokio_postgres::Client| async move {
        let rows = admin
            .query(
                "SELECT s.shard_table, c.reltuples,
                        (SELECT count(*) FROM pg_stats p
                         WHERE p.schemaname = 'public' AND p.tablename = c.relname
                           AND NOT p.inherited)
                 FROM shoal.shards s JOIN pg_class c ON c.oid = to_regclass(s.shard_table)
                 WHERE s.table_name = 'items'::regclass",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 4);
        for row in rows {
            let (shard, reltuples, columns): (String, f32, i64) =
                (row.get(0), row.get(1), row.get(2));
            let count: i64 = admin
                .query_one(&format!("SELECT count(*) FROM {shard}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(reltuples, count as f32, "{shard}");
            assert_eq!(columns, 3, "{shard}");
        }
        admin
    };
    let admin = assert_statistics(admin).await;
    managed.move_first_shard(&admin, "block_writes").await;
    let admin = assert_statistics(admin).await;
    let analyzed = managed.cli(&["analyze", "--force", "--json"]).await;
    let report: serde_json::Value = serde_json::from_str(analyzed.assert_ok()).unwrap();
    assert_eq!(report["tables"][0]["refreshed"], 4, "{report}");
    assert_eq!(report["tables"][0]["table_refreshed"], true, "{report}");
    assert_statistics(admin).await;
}

/// Binaries on which the admin role may create subscriptions (16 and newer).
fn managed_binaries() -> PgBinaries {
    match shoal_testkit::binaries() {
        bins if bins.major >= 16 => bins.clone(),
        _ => shoal_testkit::binaries_of(18),
    }
}

/// Over TLS (verify-full, for Shoal and between the servers) where the binaries have it.
#[tokio::test]
async fn a_managed_admin_role_runs_the_whole_flow_on_16_and_newer() {
    let bins = managed_binaries();
    let tls = shoal_testkit::supports_tls(&bins);
    let mut managed = Managed::start(bins, tls).await;
    managed.verify_between_servers();
    let init = managed.cli(&["init"]).await;
    init.assert_ok();
    assert!(
        init.stderr.contains("event triggers could not be created")
            && init.stderr.contains("shoal ddl"),
        "{}",
        init.stderr
    );
    for i in 0..2 {
        let address = managed.pg.workers[i].host_port();
        managed.cli(&["node", "add", &address]).await.assert_ok();
    }
    let admin = managed.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE kinds (id int PRIMARY KEY, name text);
             INSERT INTO kinds SELECT g, 'k' || g FROM generate_series(0, 9) g;
             CREATE TABLE items (id bigint PRIMARY KEY, kind int REFERENCES kinds, v bigint);
             INSERT INTO items SELECT g, g % 10, g FROM generate_series(1, 5000) g;
             CREATE SCHEMA tenant;
             CREATE TABLE tenant.users (id int PRIMARY KEY, name text);",
        )
        .await
        .unwrap();
    managed
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    managed.distribute_items_table().await;
    managed
        .cli(&["schema", "distribute", "tenant"])
        .await
        .assert_ok();
    let content = fingerprint(&admin, "items").await;
    managed.move_first_shard(&admin, "force_logical").await;
    managed.move_first_shard(&admin, "block_writes").await;
    let tenant_node: i32 = admin
        .query_one(
            "SELECT node_id FROM shoal.shards WHERE table_name = 'tenant.users'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let other = if tenant_node == 1 { "2" } else { "1" };
    managed
        .cli(&["schema", "move", "tenant", "--to", other])
        .await
        .assert_ok();
    // A third worker, prepared the same way, filled by a rebalance.
    let bins = managed.pg.workers[0].bins.clone();
    let worker = managed.pg.add_worker_from(bins).await;
    grant_admin(worker).await;
    worker.require_passwords(managed.certificates.as_ref());
    let address = worker.host_port();
    managed.cli(&["node", "add", &address]).await.assert_ok();
    managed.cli(&["rebalance", "start"]).await.assert_ok();
    managed.cli(&["rebalance", "wait"]).await.assert_ok();
    let moved: i64 = admin
        .query_one(
            "SELECT count(*) FROM shoal.shards WHERE node_id = 3 AND kind = 'hash'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(moved > 0, "the rebalance filled the new worker");
    assert_eq!(fingerprint(&admin, "items").await, content);
    if managed.certificates.is_some() {
        managed.assert_admin_sessions_encrypted().await;
    }
    let rows = managed
        .stream_per_kind(
            &admin,
            "INSERT INTO items SELECT g, g % 10, g FROM generate_series(5001, 5100) g",
        )
        .await;
    assert_eq!(rows, 5100);
    // Without event triggers DDL on distributed tables goes through shoal ddl.
    managed
        .cli(&["ddl", "ALTER TABLE items ADD COLUMN note text DEFAULT 'x'"])
        .await
        .assert_ok();
    managed.cli(&["table", "check"]).await.assert_ok();
    managed
        .cli(&["stream", "drop", "per_kind"])
        .await
        .assert_ok();
    managed.cli(&["cleanup"]).await.assert_ok();

    managed.assert_password_kept_secret().await;
}

/// PostgreSQL 15 lets only superusers create subscriptions: the admin role still distributes
/// tables, moves them with block_writes, keeps stream tables and changes tables, and hears, up
/// front and naming PostgreSQL 15, that reference tables and online moves need more.
#[tokio::test]
async fn a_managed_admin_role_on_15_is_told_what_needs_a_superuser() {
    let mut managed = Managed::start(shoal_testkit::binaries_of(15), false).await;
    managed.cli(&["init"]).await.assert_ok();
    for i in 0..2 {
        let address = managed.pg.workers[i].host_port();
        let added = managed.cli(&["node", "add", &address]).await;
        added.assert_ok();
        assert!(
            added
                .stderr
                .contains("PostgreSQL 15 lets only superusers create subscriptions"),
            "{}",
            added.stderr
        );
    }
    let admin = managed.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE kinds (id int PRIMARY KEY, name text);
             CREATE TABLE items (id bigint PRIMARY KEY, kind int, v bigint);
             INSERT INTO items SELECT g, g % 10, g FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    managed
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_error(&[
            "PostgreSQL 15 lets only superusers create subscriptions",
            "block_writes",
        ]);
    let tables: i64 = admin
        .query_one("SELECT count(*) FROM shoal.distributed_table", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the refused reference table changed nothing");
    managed.distribute_items_table().await;
    let content = fingerprint(&admin, "items").await;
    let (shard, node): (i64, i32) = {
        let row = admin
            .query_one(
                "SELECT shard_id, node_id FROM shoal.shards WHERE table_name = 'items'::regclass ORDER BY shard_index LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let to = if node == 1 { "2" } else { "1" };
    managed
        .cli(&[
            "shard",
            "move",
            &shard.to_string(),
            "--to",
            to,
            "--mode",
            "force_logical",
        ])
        .await
        .assert_error(&["PostgreSQL 15 lets only superusers", "--mode block_writes"]);
    let moved = managed
        .cli(&["shard", "move", &shard.to_string(), "--to", to, "--json"])
        .await;
    let report: serde_json::Value = serde_json::from_str(moved.assert_ok()).unwrap();
    assert_eq!(report["mode"], "block_writes");
    assert_eq!(fingerprint(&admin, "items").await, content);
    let rows = managed
        .stream_per_kind(&admin, "DELETE FROM items WHERE id <= 100")
        .await;
    assert_eq!(rows, 4900);
    managed
        .cli(&["ddl", "ALTER TABLE items ADD COLUMN note text"])
        .await
        .assert_ok();
    managed.cli(&["table", "check"]).await.assert_ok();
}

/// Servers that take TLS connections only: Shoal verifies the coordinator's and the nodes'
/// certificates (verify-full) and has the servers verify each other's (postgres_fdw, the
/// subscriptions of reference tables and online moves); a wrong CA or no TLS fails with advice
/// and without the password.
#[tokio::test]
async fn tls_verify_full_for_shoal_and_between_the_servers() {
    let mut managed = Managed::start(shoal_testkit::tls_binaries(), true).await;
    let ca = managed.certificates.clone().unwrap().ca_cert;
    let other = Certificates::make(&managed.pg.run_dir().join("other-ca"));
    let wrong_ca = managed.uri.replace(
        &ca.display().to_string(),
        &other.ca_cert.display().to_string(),
    );
    let refused = managed.cli_at(&wrong_ca, &["node", "list"]).await;
    refused.assert_error(&["cannot connect", "certificate", "sslrootcert"]);
    // require encrypts without verifying: the wrong CA does not matter, and the connection
    // gets as far as the (not yet created) catalog.
    let unverified = wrong_ca.replace("sslmode=verify-full", "sslmode=require");
    let connected = managed.cli_at(&unverified, &["node", "list"]).await;
    connected.assert_error(&["run `shoal init` first"]);
    let plain = managed
        .uri
        .replace("sslmode=verify-full", "sslmode=disable");
    let refused = managed.cli_at(&plain, &["node", "list"]).await;
    refused.assert_error(&["pg_hba.conf", "sslmode"]);

    managed.verify_between_servers();
    let admin = managed.distribute_items().await;
    admin
        .batch_execute(
            "CREATE TABLE kinds (id int PRIMARY KEY, name text);
             INSERT INTO kinds SELECT g, 'k' || g FROM generate_series(0, 9) g;",
        )
        .await
        .unwrap();
    managed
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    managed.move_first_shard(&admin, "force_logical").await;
    let joined: i64 = admin
        .query_one(
            "SELECT count(*) FROM items JOIN kinds ON kinds.id = items.kind",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, 5000);

    let superuser = managed.pg.coordinator.connect().await;
    let options: Vec<Vec<String>> = superuser
        .query(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname LIKE 'shoal_node_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(options.len(), 2);
    for server in options {
        assert!(
            server.contains(&"sslmode=verify-full".to_string()),
            "{server:?}"
        );
    }
    managed.assert_admin_sessions_encrypted().await;
    managed.cli(&["cleanup"]).await.assert_ok();
    managed.assert_password_kept_secret().await;
}

/// No password in the URI or the environment: Shoal reads the password file, as libpq does,
/// each server's own line, and the postgres_fdw mappings get each node's password.
#[tokio::test]
async fn passwords_from_a_password_file_one_per_server() {
    let mut managed = Managed::start(managed_binaries(), false).await;
    let mut lines = String::new();
    for (i, server) in managed.pg.servers().enumerate() {
        let password = format!("{PASSWORD}{i}");
        server
            .connect()
            .await
            .batch_execute(&format!(
                "ALTER ROLE {ADMIN} PASSWORD '{}'",
                password.replace('\'', "''")
            ))
            .await
            .unwrap();
        lines.push_str(&format!(
            "127.0.0.1:{}:*:{ADMIN}:{}\n",
            server.port,
            password.replace('\\', "\\\\").replace(':', "\\:")
        ));
    }
    let file = managed.pg.run_dir().join("pgpass");
    std::fs::write(&file, lines).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    managed.uri = format!(
        "postgresql://{ADMIN}@127.0.0.1:{}/{}",
        managed.pg.coordinator.port,
        shoal_testkit::DBNAME
    );
    let no_password = managed.cli(&["node", "list"]).await;
    assert!(!no_password.success);
    assert!(
        no_password.stderr.contains("password file"),
        "{}",
        no_password.stderr
    );
    managed.env = vec![("PGPASSFILE".into(), file.display().to_string())];
    // The admin's session needs the coordinator's password in its URI.
    let coordinator_password = format!("{PASSWORD}0");
    let admin_params = ConnectParams::parse(&format!(
        "host=127.0.0.1 port={} dbname={} user={ADMIN} password='{}'",
        managed.pg.coordinator.port,
        shoal_testkit::DBNAME,
        coordinator_password
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
    ))
    .unwrap();
    managed.cli(&["init"]).await.assert_ok();
    for i in 0..2 {
        let address = managed.pg.workers[i].host_port();
        managed.cli(&["node", "add", &address]).await.assert_ok();
    }
    let admin = shoal_catalog::connect(&admin_params, "test admin")
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, kind int, v bigint);
             INSERT INTO items SELECT g, g % 10, g FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    managed
        .cli(&["table", "distribute", "items", "--column", "id"])
        .await
        .assert_ok();
    managed.move_first_shard(&admin, "force_logical").await;
    managed.move_first_shard(&admin, "block_writes").await;
    managed.assert_password_kept_secret().await;
}
