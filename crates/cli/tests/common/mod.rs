//! Shared helpers of the integration tests: a real cluster with Shoal initialised on it, the
//! `shoal` binary run against it, and checks that read the servers themselves.

#![allow(dead_code)]

pub mod endpoint;
pub mod stream;

use std::process::Output;

use tokio_postgres::Client;

use shoal_catalog::ConnectParams;
use shoal_cluster::nodes::{self, AddNode};
use shoal_cluster::Cluster;
use shoal_testkit::TestCluster;

pub struct Shoal {
    pub pg: TestCluster,
    pub cluster: Cluster,
}

/// A coordinator and `workers` workers, with the catalog created and the workers registered.
pub async fn start(workers: usize) -> Shoal {
    with_cluster(TestCluster::start(workers).await).await
}

/// Shoal on servers already started (of mixed versions, say): the catalog created and every
/// worker registered.
#[allow(dead_code)]
pub async fn with_cluster(pg: TestCluster) -> Shoal {
    let params = ConnectParams::parse(&pg.coordinator_uri()).unwrap();
    shoal_cluster::init_cluster(&params, "test").await.unwrap();
    let cluster = Cluster::connect(params).await.unwrap();
    for worker in &pg.workers {
        let address = worker.host_port();
        nodes::add_node(
            &cluster,
            &AddNode {
                address: &address,
                dbname: None,
                should_have_shards: true,
            },
        )
        .await
        .unwrap();
    }
    Shoal { pg, cluster }
}

pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts a failure with a one-line error that contains every one of `phrases`.
    pub fn assert_error(&self, phrases: &[&str]) {
        assert!(
            !self.success,
            "expected a failure, got success: {}",
            self.stdout
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got: {}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "error line: {}", lines[0]);
        for phrase in phrases {
            assert!(
                lines[0].contains(phrase),
                "error line lacks {phrase:?}: {}",
                lines[0]
            );
        }
    }

    pub fn assert_ok(&self) -> &str {
        assert!(self.success, "shoal failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }
}

impl Shoal {
    /// Runs the `shoal` binary against this cluster's coordinator.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let output: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_COORDINATOR", self.pg.coordinator_uri())
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_LOG")
            .output()
            .await
            .expect("the shoal binary runs");
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub async fn coordinator(&self) -> Client {
        self.pg.coordinator.connect().await
    }

    pub async fn worker(&self, i: usize) -> Client {
        self.pg.workers[i].connect().await
    }

    /// Everything an operation could change: the catalog's rows and every user relation on
    /// every server. Equal before and after an operation that must change nothing.
    pub async fn state(&self) -> Vec<String> {
        let mut state = Vec::new();
        let coordinator = self.coordinator().await;
        let row = coordinator
            .query_one(
                "SELECT format('nodes=%s groups=%s tables=%s shards=%s placements=%s cleanup=%s',
                    (SELECT count(*) FROM shoal.node), (SELECT count(*) FROM shoal.colocation_group),
                    (SELECT count(*) FROM shoal.distributed_table), (SELECT count(*) FROM shoal.shard),
                    (SELECT count(*) FROM shoal.placement), (SELECT count(*) FROM shoal.cleanup_record))",
                &[],
            )
            .await
            .unwrap();
        state.push(row.get(0));
        for server in self.pg.servers() {
            if !server.is_running() {
                continue;
            }
            let client = server.connect().await;
            state.push(format!("{}: {}", server.name, relations(&client).await));
        }
        state
    }

    /// Which worker index holds a shard, from the catalog.
    pub async fn worker_of_shard(&self, shard_table: &str) -> usize {
        let coordinator = self.coordinator().await;
        let port: i32 = coordinator
            .query_one(
                "SELECT port FROM shoal.shards WHERE shard_table = $1 LIMIT 1",
                &[&shard_table],
            )
            .await
            .unwrap_or_else(|e| panic!("no placement of {shard_table}: {e}"))
            .get(0);
        self.pg
            .workers
            .iter()
            .position(|w| i32::from(w.port) == port)
            .expect("a known worker")
    }
}

/// User relations of a database: `schema.name:relkind`, sorted.
pub async fn relations(client: &Client) -> String {
    client
        .query_one(
            "SELECT coalesce(string_agg(format('%s.%s:%s', n.nspname, c.relname, c.relkind), ' '
                                        ORDER BY n.nspname, c.relname), '')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'shoal', 'shoal_worker')
               AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Row count and an order-independent checksum of a table's content.
pub async fn fingerprint(client: &Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
                 FROM {table} t"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e:?}"));
    (row.get(0), row.get(1))
}

/// The relkind of a coordinator relation (`r` plain, `p` partitioned, `f` foreign).
pub async fn relkind(client: &Client, table: &str) -> String {
    client
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// Writers that keep changing a table through the coordinator and remember every acknowledged
/// change, so the table's final content can be checked exactly.
pub struct Workload {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<WriterLog>>,
}

#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged state per key: `Some(v)` present with value v, `None` deleted.
    pub state: std::collections::BTreeMap<i64, Option<i64>>,
    pub errors: Vec<String>,
    pub operations: u64,
}

/// `table` must have columns `(id bigint PRIMARY KEY, v bigint)`. Each writer owns its keys
/// (`key_base + writer * 1_000_000 + n`), so the expected content per key is unambiguous.
pub fn start_writers(uri: String, table: &str, writers: usize, key_base: i64) -> Workload {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = (0..writers)
        .map(|w| {
            let uri = uri.clone();
            let table = table.to_string();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut log = WriterLog::default();
                let (client, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let insert = client
                    .prepare(&format!("INSERT INTO {table} (id, v) VALUES ($1, $2)"))
                    .await
                    .unwrap();
                let update = client
                    .prepare(&format!("UPDATE {table} SET v = $2 WHERE id = $1"))
                    .await
                    .unwrap();
                let delete = client
                    .prepare(&format!("DELETE FROM {table} WHERE id = $1"))
                    .await
                    .unwrap();
                let mut next = key_base + w as i64 * 1_000_000;
                let mut live: Vec<i64> = Vec::new();
                let mut seed: u64 = 0x9e37_79b9 ^ (w as u64 + 1);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let choice = seed % 10;
                    let result = if choice < 5 || live.is_empty() {
                        next += 1;
                        client
                            .execute(&insert, &[&next, &1i64])
                            .await
                            .map(|_| (next, Some(1)))
                    } else if choice < 8 {
                        let key = live[(seed as usize / 10) % live.len()];
                        let value = log.state[&key].unwrap_or(0) + 1;
                        client.execute(&update, &[&key, &value]).await.map(|n| {
                            if n != 1 {
                                log.errors.push(format!("UPDATE of {key} changed {n} rows"));
                            }
                            (key, Some(value))
                        })
                    } else {
                        let index = (seed as usize / 10) % live.len();
                        let key = live.swap_remove(index);
                        client.execute(&delete, &[&key]).await.map(|n| {
                            if n != 1 {
                                log.errors.push(format!("DELETE of {key} changed {n} rows"));
                            }
                            (key, None)
                        })
                    };
                    match result {
                        Ok((key, value)) => {
                            if value.is_some() && !live.contains(&key) {
                                live.push(key);
                            }
                            log.state.insert(key, value);
                            log.operations += 1;
                        }
                        Err(e) => log.errors.push(format!("{e:?}")),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                log
            })
        })
        .collect();
    Workload { stop, handles }
}

impl Workload {
    /// Stops the writers and returns the merged acknowledged state (and every error).
    pub async fn finish(self) -> WriterLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut merged = WriterLog::default();
        for handle in self.handles {
            let log = handle.await.unwrap();
            merged.state.extend(log.state);
            merged.errors.extend(log.errors);
            merged.operations += log.operations;
        }
        merged
    }
}

impl WriterLog {
    /// The content the acknowledged changes imply for a table that held `before`.
    pub fn applied_to(
        &self,
        mut before: std::collections::BTreeMap<i64, i64>,
    ) -> std::collections::BTreeMap<i64, i64> {
        for (key, value) in &self.state {
            match value {
                Some(v) => before.insert(*key, *v),
                None => before.remove(key),
            };
        }
        before
    }
}

/// `(id, v)` rows of a query as a map, failing on a duplicate id.
pub async fn rows_by_id(client: &Client, query: &str) -> std::collections::BTreeMap<i64, i64> {
    let mut out = std::collections::BTreeMap::new();
    for row in client
        .query(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e:?}"))
    {
        let id: i64 = row.get(0);
        assert!(
            out.insert(id, row.get::<_, i64>(1)).is_none(),
            "id {id} appears twice in {query}"
        );
    }
    out
}

impl Shoal {
    /// The content of a distributed table read shard by shard from the workers themselves (not
    /// through the coordinator), failing on a key present in two shards.
    pub async fn content_on_workers(&self, table: &str) -> std::collections::BTreeMap<i64, i64> {
        let coordinator = self.coordinator().await;
        let shards = coordinator
            .query(
                "SELECT shard_table, port FROM shoal.shards WHERE table_name = to_regclass($1)",
                &[&table],
            )
            .await
            .unwrap();
        let mut all = std::collections::BTreeMap::new();
        for row in shards {
            let shard: String = row.get(0);
            let port: i32 = row.get(1);
            let worker = self
                .pg
                .workers
                .iter()
                .find(|w| i32::from(w.port) == port)
                .unwrap();
            let client = worker.connect().await;
            for (id, v) in rows_by_id(&client, &format!("SELECT id, v FROM {shard}")).await {
                assert!(all.insert(id, v).is_none(), "id {id} is in two shards");
            }
        }
        all
    }

    /// Asserts that no transfer left anything behind: no cleanup records, no replication objects
    /// of transfers on any worker, and no shard table a placement does not explain.
    pub async fn assert_nothing_left_behind(&self) {
        let coordinator = self.coordinator().await;
        let records: i64 = coordinator
            .query_one("SELECT count(*) FROM shoal.cleanup_record", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(records, 0, "cleanup records remain");
        for (i, worker) in self.pg.workers.iter().enumerate() {
            if !worker.is_running() {
                continue;
            }
            let client = worker.connect().await;
            let replication: i64 = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'shoal_move%')
                          + (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'shoal_move%')
                          + (SELECT count(*) FROM pg_replication_slots WHERE slot_name NOT LIKE 'shoal_reference%')
                          + (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'shoal_move%')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(replication, 0, "replication objects left on worker {i}");
            let port = i32::from(worker.port);
            let expected: Vec<String> = coordinator
                .query(
                    "SELECT shard_table FROM shoal.shards WHERE port = $1 AND kind <> 'reference' ORDER BY 1",
                    &[&port],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let present: Vec<String> = client
                .query(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind = 'r' AND c.relname ~ '_[0-9]+$'
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(present, expected, "shard tables on worker {i}");
        }
    }

    /// Waits until a transfer of the given shard reaches `status` (polling the catalog).
    pub async fn wait_for_status(&self, shard: i64, status: &str) -> i64 {
        let coordinator = self.coordinator().await;
        let started = std::time::Instant::now();
        loop {
            let row = coordinator
                .query_opt(
                    "SELECT operation_id, status FROM shoal.transfer WHERE anchor_shard_id = $1
                     ORDER BY operation_id DESC LIMIT 1",
                    &[&shard],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                if row.get::<_, String>(1) == status {
                    return row.get(0);
                }
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "never reached {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Starts the `shoal` binary in the background (with extra environment variables, such as
    /// failpoints); the handle gives its output once it ends.
    pub fn spawn_cli(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<Output> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        command
            .args(args)
            .env("SHOAL_COORDINATOR", self.pg.coordinator_uri())
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        tokio::spawn(async move { command.output().await.expect("the shoal binary runs") })
    }

    /// Runs the `shoal` binary with extra environment variables (failpoints).
    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        command
            .args(args)
            .env("SHOAL_COORDINATOR", self.pg.coordinator_uri())
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().await.expect("the shoal binary runs");
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A `shoal` process that must have succeeded; its stderr tells why it did not.
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Shoal {
    /// Asserts that every managed table's shards, replicas and coordinator relation are what
    /// the catalog's record of it says (`shoal table check`).
    pub async fn assert_definitions_match(&self) {
        let checks = shoal_cluster::check::check_tables(&self.cluster, None)
            .await
            .unwrap();
        for check in checks {
            assert!(check.is_clean(), "{check:#?}");
        }
    }

    /// Runs `shoal ddl SQL`, which must succeed and leave every definition as its record says.
    pub async fn ddl_ok(&self, sql: &str) {
        self.cli(&["ddl", sql]).await.assert_ok();
        self.assert_definitions_match().await;
    }

    /// Every table definition Shoal keeps or built: the catalog's records and what every
    /// coordinator relation, shard and replica is made of. Equal before and after a statement
    /// that must change nothing.
    pub async fn definitions(&self) -> Vec<String> {
        let describe_all = |schema: &'static str| {
            format!(
                "SELECT coalesce(string_agg({schema}.describe_table(c.oid)::text, E'\\n'
                                            ORDER BY n.nspname, c.relname), '')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'f')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'shoal', 'shoal_worker')
                   AND n.nspname NOT LIKE 'pg_toast%'"
            )
        };
        let coordinator = self.coordinator().await;
        let mut out = vec![
            coordinator
                .query_one(
                    "SELECT coalesce(string_agg(original_ddl::text, E'\\n' ORDER BY table_id), '')
                     FROM shoal.distributed_table",
                    &[],
                )
                .await
                .unwrap()
                .get(0),
            coordinator
                .query_one(&describe_all("shoal"), &[])
                .await
                .unwrap()
                .get(0),
        ];
        for worker in &self.pg.workers {
            if worker.is_running() {
                let client = worker.connect().await;
                out.push(
                    client
                        .query_one(&describe_all("shoal_worker"), &[])
                        .await
                        .unwrap()
                        .get(0),
                );
            }
        }
        out
    }
}
