//! Shoal's endpoint in tests: `shoal serve` listening on a free port, and pgbench through it.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_postgres::Client;

use super::Shoal;

/// A running `shoal serve` without its endpoint; killed when dropped.
pub struct Daemon {
    _child: Child,
    http_port: u16,
}

impl Daemon {
    /// The daemon's metrics without labels, by name.
    pub async fn metrics(&self) -> std::collections::HashMap<String, u64> {
        metrics(self.http_port).await
    }
}

/// The metrics without labels that `/metrics` on `http_port` shows, by name.
async fn metrics(http_port: u16) -> std::collections::HashMap<String, u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .expect("the HTTP endpoint answers");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("shoal_") && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A running `shoal serve` with its PostgreSQL endpoint; killed when dropped.
pub struct Endpoint {
    pub child: Child,
    pub port: u16,
    pub http_port: u16,
    pub uri: String,
}

impl Shoal {
    /// `shoal table distribute TABLE --column COLUMN --shards SHARDS`, which must succeed.
    pub async fn distribute(&self, table: &str, column: &str, shards: &str) {
        self.cli(&[
            "table",
            "distribute",
            table,
            "--column",
            column,
            "--shards",
            shards,
        ])
        .await
        .assert_ok();
    }

    /// `shoal table distribute TABLE --column COLUMN --colocate-with WITH`, which must succeed.
    pub async fn colocate(&self, table: &str, column: &str, with: &str) {
        self.cli(&[
            "table",
            "distribute",
            table,
            "--column",
            column,
            "--colocate-with",
            with,
        ])
        .await
        .assert_ok();
    }

    /// Starts `shoal serve` with its endpoint on a free port and waits until it accepts.
    pub async fn start_endpoint(&self) -> Endpoint {
        let port = shoal_testkit::ports::reserve();
        let http_port = shoal_testkit::ports::reserve();
        self.start_endpoint_at(port, http_port).await
    }

    /// Starts `shoal serve` with its endpoint on `port` (and HTTP on `http_port`).
    pub async fn start_endpoint_at(&self, port: u16, http_port: u16) -> Endpoint {
        let mut child = self.spawn_serve(&format!("127.0.0.1:{port}"), http_port);
        let coordinator = url::Url::parse(&self.pg.coordinator_uri()).unwrap();
        let mut uri = coordinator.clone();
        uri.set_port(Some(port)).unwrap();
        wait_for_port(&mut child, port, "the endpoint").await;
        // `shoal serve` binds its HTTP port after the endpoint's: metrics read at once must
        // find it.
        wait_for_port(&mut child, http_port, "the HTTP endpoint").await;
        Endpoint {
            child,
            port,
            http_port,
            uri: uri.to_string(),
        }
    }
}

/// Waits until `shoal serve` (`child`) accepts on `port`, where it serves `what`.
async fn wait_for_port(child: &mut Child, port: u16, what: &str) {
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("shoal serve exited: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not start listening on {port}");
}

impl Shoal {
    /// `shoal serve --listen LISTEN --http 127.0.0.1:HTTP_PORT` for this cluster.
    fn spawn_serve(&self, listen: &str, http_port: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "serve",
                "--http",
                &format!("127.0.0.1:{http_port}"),
                "--listen",
                listen,
            ])
            .env("SHOAL_COORDINATOR", self.pg.coordinator_uri())
            .env_remove("SHOAL_CONFIG")
            .env("SHOAL_LOG", "shoal_endpoint=debug,shoal_cluster=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("shoal serve starts")
    }

    /// Starts `shoal serve` without its endpoint (`--listen off`) and waits until its HTTP
    /// endpoint accepts: its duties run from then on.
    pub async fn start_daemon(&self) -> Daemon {
        let http_port = shoal_testkit::ports::reserve();
        let mut child = self.spawn_serve("off", http_port);
        wait_for_port(&mut child, http_port, "the HTTP endpoint").await;
        Daemon {
            _child: child,
            http_port,
        }
    }

    /// The ids of `table` (distributed by `id`) each worker holds.
    pub async fn ids_by_worker(&self, table: &str) -> Vec<Vec<i64>> {
        let mut by_worker = Vec::new();
        for worker in &self.pg.workers {
            let client = worker.connect().await;
            let shards: Vec<String> = client
                .query(
                    "SELECT quote_ident(relname) FROM pg_class
                     WHERE relname ~ ('^' || $1 || '_[0-9]+$') AND relkind = 'r'",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut ids = Vec::new();
            for shard in shards {
                for row in client
                    .query(&format!("SELECT id FROM {shard}"), &[])
                    .await
                    .unwrap()
                {
                    ids.push(row.get::<_, i64>(0));
                }
            }
            ids.sort();
            by_worker.push(ids);
        }
        by_worker
    }
}

impl Endpoint {
    pub async fn connect(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.uri, tokio_postgres::NoTls)
            .await
            .expect("connect through the endpoint");
        tokio::spawn(connection);
        client
    }

    /// The daemon's metrics without labels (the endpoint's among them), by name.
    pub async fn metrics(&self) -> std::collections::HashMap<String, u64> {
        metrics(self.http_port).await
    }

    /// Kills the process at once with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// What a pgbench run reported.
#[derive(Debug)]
pub struct PgbenchRun {
    pub processed: u64,
    pub failed: u64,
    pub output: String,
}

/// Runs pgbench with `args` against `uri`; panics with its output if it failed.
pub async fn pgbench(uri: &str, args: &[&str]) -> PgbenchRun {
    let pgbench = shoal_testkit::binaries().program("pgbench");
    let output = Command::new(&pgbench)
        .args(args)
        .arg(uri)
        .output()
        .await
        .expect("pgbench runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pgbench failed:\n{text}");
    let number = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| {
                rest.trim()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    PgbenchRun {
        processed: number("number of transactions actually processed:"),
        failed: number("number of failed transactions:"),
        output: text,
    }
}
