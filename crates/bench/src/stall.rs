//! Write stall: pgbench sends single-row inserts at a steady rate through the coordinator (or
//! through Shoal's endpoint, `--endpoint`) into a one-shard table while that shard is moved back
//! and forth with force_logical; per-transaction latencies from pgbench's log are split into
//! before the moves and during them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::moves::{move_group, shoal_on};
use crate::percentile;
use shoal_testkit::TestCluster;
use shoal_transfer::Mode;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub async fn run(rate: u32, mb: u64, moves: usize, endpoint: bool) -> anyhow::Result<()> {
    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    let sql = pg.coordinator.connect().await;
    sql.batch_execute("CREATE TABLE stall (id bigserial PRIMARY KEY, v int, pad text)")
        .await?;
    shoal_cluster::distribute_table(
        &cluster,
        "stall",
        "id",
        Some(1),
        shoal_cluster::Colocate::None,
    )
    .await?;
    let (shard, shard_table, port, node): (i64, String, i32, i32) = {
        let row = sql
            .query_one(
                "SELECT shard_id, shard_table, port, node_id FROM shoal.shards",
                &[],
            )
            .await?;
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    let rows = (mb * 1024 * 1024 / 120).max(1000) as i64;
    let worker = pg
        .workers
        .iter()
        .find(|w| i32::from(w.port) == port)
        .expect("a worker");
    worker
        .connect()
        .await
        .execute(
            &format!("INSERT INTO {shard_table} SELECT g, 1, repeat('x', 80) FROM generate_series(1::bigint, $1) g"),
            &[&rows],
        )
        .await?;
    sql.execute("SELECT setval('stall_id_seq', $1)", &[&rows])
        .await?;

    let dir = std::env::temp_dir().join(format!("shoal-bench-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("insert.sql");
    // Through the endpoint the row names its key (a defaulted key is the coordinator's to
    // fill): random in a range where 10,000 rows collide with odds of about 1 in 10^5.
    std::fs::write(
        &script,
        if endpoint {
            "\\set id random(100000000000, 999999999999)\n\
             INSERT INTO stall (id, v, pad) VALUES (:id, 1, 'x');\n"
        } else {
            "INSERT INTO stall (v, pad) VALUES (1, 'x');\n"
        },
    )?;
    let in_process = if endpoint {
        Some(crate::endpoint::InProcess::start(&pg, shoal_endpoint::Options::default()).await?)
    } else {
        None
    };
    let port = in_process.as_ref().map_or(pg.coordinator.port, |e| e.port);
    let path = if endpoint {
        "Shoal's endpoint"
    } else {
        "the coordinator"
    };
    let duration = 4 + moves as u64 * 3 + 2;
    let pgbench = shoal_testkit::binaries().bindir.join("pgbench");
    let child = tokio::process::Command::new(&pgbench)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-n",
        ])
        .args([
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            &rate.to_string(),
            "-T",
            &duration.to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", dir.join("pgbench").display()))
        .arg("shoal")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pgbench")?;

    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut windows = Vec::new();
    let mut blocked = Vec::new();
    let mut at = node;
    for _ in 0..moves {
        let to = 3 - at;
        let start = now_us();
        let (_, stall) = move_group(&cluster, shard, to, Mode::ForceLogical).await?;
        windows.push((start, now_us()));
        blocked.push(stall);
        at = to;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let output = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if windows.last().is_some_and(|w| w.1 > now_us()) {
        bail!("the moves outlasted pgbench; lower --moves");
    }
    let processed = field(&stdout, "number of transactions actually processed:")
        .and_then(|s| {
            s.split('/')
                .next()
                .map(str::trim)
                .and_then(|n| n.parse::<i64>().ok())
        })
        .unwrap_or(0);
    let failed = field(&stdout, "number of failed transactions:")
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok())
        })
        .unwrap_or(0);
    let aborted = stderr.matches("aborted").count();

    let (mut before, mut during) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pgbench"))
        {
            read_log(&path, &windows, &mut before, &mut during)?;
        }
    }
    before.sort_by(f64::total_cmp);
    during.sort_by(f64::total_cmp);
    let count: i64 = sql
        .query_one("SELECT count(*) FROM stall", &[])
        .await?
        .get(0);
    let distinct: i64 = sql
        .query_one("SELECT count(DISTINCT id) FROM stall", &[])
        .await?
        .get(0);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "write stall: pgbench --rate {rate} -c 4, single-row INSERTs through {path} into a {mb} MB shard, \
         {moves} force_logical moves during the run"
    );
    println!(
        "before the moves: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        before.len(),
        percentile(&before, 50.0),
        percentile(&before, 99.0),
        before.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "during the moves: n={} p50={:.1} ms p99={:.1} ms (goal <= 10; Citus 27) max={:.1} ms (goal <= 40; Citus 48)",
        during.len(),
        percentile(&during, 50.0),
        percentile(&during, 99.0),
        during.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "writes blocked at each cutover (ms): {}",
        blocked
            .iter()
            .map(|b| format!("{b:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "errors: failed={failed} aborted_clients={aborted}; rows: {count} = {rows} initial + {processed} acknowledged ({}), duplicates: {}",
        if count == rows + processed { "none lost" } else { "MISMATCH" },
        count - distinct
    );
    Ok(())
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// pgbench log lines: `client tx latency_us script epoch_s epoch_us [lag]`; the epoch is when
/// the transaction completed. A transaction is "during" a move if it was in flight while one ran.
fn read_log(
    path: &Path,
    windows: &[(i64, i64)],
    before: &mut Vec<f64>,
    during: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let first_move = windows.first().map(|w| w.0).unwrap_or(i64::MAX);
    for line in std::fs::read_to_string(path)?.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 6 {
            continue;
        }
        let latency_us: i64 = parts[2].parse().unwrap_or(0);
        let end =
            parts[4].parse::<i64>().unwrap_or(0) * 1_000_000 + parts[5].parse::<i64>().unwrap_or(0);
        let start = end - latency_us;
        let ms = latency_us as f64 / 1000.0;
        if windows.iter().any(|(s, e)| start <= *e && end >= *s) {
            during.push(ms);
        } else if end < first_move {
            before.push(ms);
        }
    }
    Ok(())
}
