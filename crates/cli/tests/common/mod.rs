//! Shared helpers of the integration tests: a real cluster with Shoal initialised on it, the
//! `shoal` binary run against it, and checks that read the servers themselves.

#![allow(dead_code)]

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
    let pg = TestCluster::start(workers).await;
    let params = ConnectParams::parse(&pg.coordinator_uri()).unwrap();
    let mut client = shoal_catalog::connect(&params, "test").await.unwrap();
    shoal_catalog::init(&mut client).await.unwrap();
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
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'shoal')
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
