//! The rebalancer as a background job on real clusters: a worker added and the cluster
//! rebalanced (sequentially and in parallel) under writes checked key by key, a drain, a stop
//! in the middle, a task that keeps failing, and the daemon killed with SIGKILL at every status
//! of a running move, then restarted.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::process::Child;

use common::{rows_by_id, start_writers, Shoal, Workload};

/// Two colocated tables written to by the writers, a third colocated table with a foreign key
/// to a reference table (so moves create foreign keys), `shards` shard groups on two workers.
async fn shop(shoal: &Shoal, shards: u32) {
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        "CREATE TABLE p (id int PRIMARY KEY, name text);
         INSERT INTO p SELECT g, 'p' || g FROM generate_series(1, 50) g;
         CREATE TABLE t (id bigint PRIMARY KEY, v bigint);
         CREATE TABLE u (id bigint PRIMARY KEY, v bigint);
         CREATE TABLE w (id bigint PRIMARY KEY, pid int REFERENCES p, note text);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 10000) g;
         INSERT INTO u SELECT g, 0 FROM generate_series(1, 10000) g;
         INSERT INTO w SELECT g, 1 + g % 50, repeat('x', 40) FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    shoal.cli(&["table", "reference", "p"]).await.assert_ok();
    let shards = shards.to_string();
    for (table, colocate) in [("t", None), ("u", Some("t")), ("w", Some("t"))] {
        let mut args = vec!["table", "distribute", table, "--column", "id"];
        match colocate {
            Some(other) => args.extend(["--colocate-with", other]),
            None => args.extend(["--shards", shards.as_str()]),
        }
        shoal.cli(&args).await.assert_ok();
    }
}

/// Starts one more worker and registers it; returns its node id.
async fn add_worker(shoal: &mut Shoal) -> i32 {
    let address = shoal.pg.add_worker().await.host_port();
    let out = shoal.cli(&["node", "add", &address]).await;
    out.assert_ok();
    shoal
        .coordinator()
        .await
        .query_one("SELECT max(node_id) FROM shoal.node", &[])
        .await
        .unwrap()
        .get(0)
}

/// Shard groups of t per node id.
async fn groups_per_node(shoal: &Shoal) -> BTreeMap<i32, i64> {
    shoal
        .coordinator()
        .await
        .query(
            "SELECT n.node_id, count(s.shard_id) FROM shoal.node n
             LEFT JOIN shoal.shards s ON s.node_id = n.node_id AND s.table_name = 't'::regclass
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

struct Contents {
    t: BTreeMap<i64, i64>,
    u: BTreeMap<i64, i64>,
    w: (i64, String),
}

async fn contents(shoal: &Shoal) -> Contents {
    let sql = shoal.coordinator().await;
    Contents {
        t: rows_by_id(&sql, "SELECT id, v FROM t").await,
        u: rows_by_id(&sql, "SELECT id, v FROM u").await,
        w: common::fingerprint(&sql, "w").await,
    }
}

/// Stops the writers and checks every acknowledged write, through the coordinator and on the
/// workers themselves, and that w did not change.
async fn check_exact(shoal: &Shoal, before: Contents, writers: (Workload, Workload)) {
    let log_t = writers.0.finish().await;
    let log_u = writers.1.finish().await;
    assert!(
        log_t.errors.is_empty() && log_u.errors.is_empty(),
        "failed writes: {:?} {:?}",
        log_t.errors,
        log_u.errors
    );
    assert!(log_t.operations > 20, "the writers ran");
    let sql = shoal.coordinator().await;
    for (table, before, log) in [("t", before.t, log_t), ("u", before.u, log_u)] {
        let expected = log.applied_to(before);
        assert_eq!(
            rows_by_id(&sql, &format!("SELECT id, v FROM {table}")).await,
            expected,
            "{table} through the coordinator"
        );
        assert_eq!(
            shoal.content_on_workers(table).await,
            expected,
            "{table} on the workers"
        );
    }
    assert_eq!(
        common::fingerprint(&sql, "w").await,
        before.w,
        "w unchanged"
    );
}

fn writers(shoal: &Shoal) -> (Workload, Workload) {
    (
        start_writers(shoal.pg.coordinator_uri(), "t", 2, 100_000),
        start_writers(shoal.pg.coordinator_uri(), "u", 1, 100_000),
    )
}

/// The job id printed by `--json` commands.
fn job_id(out: &common::CliOutput) -> i64 {
    let value: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    value["job_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {value}"))
}

async fn job_state(shoal: &Shoal, job: i64) -> String {
    shoal
        .coordinator()
        .await
        .query_one("SELECT state FROM shoal.job WHERE job_id = $1", &[&job])
        .await
        .unwrap()
        .get(0)
}

/// Polls the job until it is in one of `states`.
async fn wait_for_job_state(shoal: &Shoal, job: i64, states: &[&str], timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let state = job_state(shoal, job).await;
        if states.contains(&state.as_str()) {
            return state;
        }
        assert!(
            started.elapsed() < timeout,
            "job {job} is still {state} after {timeout:?}: {}\n{}",
            shoal.cli(&["job", "show", &job.to_string()]).await.stdout,
            daemon_logs(shoal)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `shoal serve` with extra environment variables (failpoints), killed when dropped. Its log
/// goes to `serve-<n>.log` in the cluster's directory, shown by [`daemon_logs`].
fn daemon(shoal: &Shoal, env: &[(&str, &str)]) -> Child {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = std::fs::File::create(shoal.pg.run_dir().join(format!("serve-{n}.log"))).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
    command
        .args([
            "serve",
            "--cleanup-interval",
            "1",
            "--listen",
            "off",
            "--http",
            "off",
        ])
        .env("SHOAL_COORDINATOR", shoal.pg.coordinator_uri())
        .env("SHOAL_LOG", "info,tokio_postgres=warn")
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_FAILPOINTS")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("shoal serve starts")
}

/// The daemons' logs, for failure messages.
fn daemon_logs(shoal: &Shoal) -> String {
    let mut out = String::new();
    let mut logs: Vec<_> = std::fs::read_dir(shoal.pg.run_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("serve-")
        })
        .collect();
    logs.sort();
    for path in logs {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {}:\n", path.display()));
        out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
        out.push('\n');
    }
    for server in shoal.pg.servers() {
        let text = std::fs::read_to_string(&server.log_file).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
            .collect();
        out.push_str(&format!("--- errors of {}:\n", server.name));
        out.push_str(&errors[errors.len().saturating_sub(20)..].join("\n"));
        out.push('\n');
    }
    out
}

/// Waits until the daemon has registered (so commands see a live `shoal serve`).
async fn wait_registered(shoal: &Shoal, daemon: &Child) {
    let pid = daemon.id().expect("running") as i32;
    let sql = shoal.coordinator().await;
    let started = Instant::now();
    loop {
        let registered: i64 = sql
            .query_one(
                "SELECT count(*) FROM shoal.daemon WHERE pid = $1 AND stopped_at IS NULL",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if registered > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until some unfinished transfer is at `status`.
async fn wait_for_any_status(shoal: &Shoal, status: &str) {
    let sql = shoal.coordinator().await;
    let started = Instant::now();
    loop {
        let at: i64 = sql
            .query_one(
                "SELECT count(*) FROM shoal.transfer WHERE finished_at IS NULL AND status = $1",
                &[&status],
            )
            .await
            .unwrap()
            .get(0);
        if at > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no transfer reached {status}: {}\n{}",
            shoal.cli(&["rebalance", "status"]).await.stdout,
            daemon_logs(shoal)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every transfer finished, every job ended, and every foreign key of w's shards exists where
/// the shard lives.
async fn check_settled(shoal: &Shoal) {
    let sql = shoal.coordinator().await;
    let unfinished: i64 = sql
        .query_one(
            "SELECT count(*) FROM shoal.transfer WHERE finished_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfinished, 0, "unfinished transfers");
    let shards = sql
        .query(
            "SELECT shard_table, port FROM shoal.shards WHERE table_name = 'w'::regclass",
            &[],
        )
        .await
        .unwrap();
    for row in shards {
        let shard: String = row.get(0);
        let port: i32 = row.get(1);
        let worker = shoal
            .pg
            .workers
            .iter()
            .find(|w| i32::from(w.port) == port)
            .unwrap();
        let keys: i64 = worker
            .connect()
            .await
            .query_one(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1)
                 AND contype = 'f' AND convalidated",
                &[&shard],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(keys, 1, "the foreign key of {shard} on port {port}");
    }
}

async fn rebalance_under_writes(parallel: bool) {
    let mut shoal = common::start(2).await;
    shop(&shoal, 6).await;
    let node = add_worker(&mut shoal).await;
    // The new node lacks the reference table (as if it had been added while p was being
    // made one): the job copies it there before any shard of w, which refers to it, lands.
    let sql = shoal.coordinator().await;
    sql.execute(
        "DELETE FROM shoal.placement WHERE node_id = $1
           AND shard_id = (SELECT shard_id FROM shoal.shards WHERE table_name = 'p'::regclass
                           LIMIT 1)",
        &[&node],
    )
    .await
    .unwrap();
    let new_worker = shoal.pg.workers.last().unwrap().connect().await;
    new_worker.batch_execute("DROP TABLE p").await.unwrap();
    let before = contents(&shoal).await;

    let plan = shoal.cli(&["rebalance", "plan", "--json"]).await;
    let plan: serde_json::Value = serde_json::from_str(plan.assert_ok()).unwrap();
    assert_eq!(plan["reference_copies"].as_array().unwrap().len(), 1);
    let moves = plan["plan"]["moves"].as_array().unwrap();
    assert_eq!(
        moves.len(),
        2,
        "6 groups over 3 nodes: 2 move to the new one"
    );
    assert!(moves.iter().all(|m| m["to"] == node));

    let writers = writers(&shoal);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut args = vec!["rebalance", "start", "--json"];
    if parallel {
        args.extend(["--parallel-colocated", "--parallel-reference"]);
    }
    let started = shoal.cli(&args).await;
    let job = job_id(&started);
    assert!(
        started.stderr.contains("no `shoal serve` is running"),
        "warns that nothing runs the job: {}",
        started.stderr
    );
    // Sequential: run from `rebalance wait` (no daemon). Parallel: by `shoal serve`.
    let serve = parallel.then(|| daemon(&shoal, &[]));
    if let Some(serve) = &serve {
        wait_registered(&shoal, serve).await;
    }
    let out = shoal.cli(&["rebalance", "wait"]).await;
    assert!(out.success, "wait: {}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.contains("running job"),
        !parallel,
        "the foreground executor runs only without a daemon: {}",
        out.stderr
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_exact(&shoal, before, writers).await;
    drop(serve);

    assert_eq!(job_state(&shoal, job).await, "finished");
    let counts = groups_per_node(&shoal).await;
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    let status = shoal.cli(&["rebalance", "status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(status.assert_ok()).unwrap();
    assert_eq!(status["job_id"], job);
    assert_eq!(status["state"], "finished");
    assert_eq!(status["progress"]["bytes_left"], 0);

    let dependencies: Vec<usize> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["depends_on"].as_array().unwrap().len())
        .collect();
    // Sequential: copy, then the moves one after the other. Parallel: copy, foreign keys, then
    // both moves at once.
    let expected = if parallel {
        vec![0, 1, 1, 1]
    } else {
        vec![0, 1, 1]
    };
    assert_eq!(dependencies, expected, "the task graph of the flags");
    let (count, _) = common::fingerprint(&new_worker, "p").await;
    assert_eq!(count, 50, "the reference table is on the new node");
    // The progress view names the job and task of each transfer.
    let rows: i64 = shoal
        .coordinator()
        .await
        .query_one(
            "SELECT count(DISTINCT task_id) FROM shoal.rebalance_progress
             WHERE job_id = $1 AND status = 'Completed'",
            &[&job],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3, "two moves and a reference table copy");
    // Balanced now: nothing more to do.
    let again = shoal.cli(&["rebalance", "start"]).await;
    assert!(
        again.assert_ok().contains("nothing to move"),
        "{}",
        again.stdout
    );
    check_settled(&shoal).await;
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_new_worker_is_filled_by_a_sequential_rebalance_under_writes() {
    rebalance_under_writes(false).await;
}

#[tokio::test]
async fn a_new_worker_is_filled_by_a_parallel_rebalance_under_writes() {
    rebalance_under_writes(true).await;
}

#[tokio::test]
async fn a_drained_node_ends_empty_under_writes() {
    let shoal = common::start(3).await;
    shop(&shoal, 6).await;
    let before = contents(&shoal).await;
    let writers = writers(&shoal);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = shoal
        .cli(&["node", "drain", "1", "--parallel-colocated"])
        .await;
    assert!(out.success, "drain: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("finished"), "{}", out.stdout);
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_exact(&shoal, before, writers).await;
    let counts = groups_per_node(&shoal).await;
    assert_eq!(counts[&1], 0, "node 1 is empty: {counts:?}");
    assert_eq!(counts[&2] + counts[&3], 6);
    let sql = shoal.coordinator().await;
    let flag: bool = sql
        .query_one(
            "SELECT should_have_shards FROM shoal.node WHERE node_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!flag, "the drained node gets no new shards");
    let kind: String = sql
        .query_one(
            "SELECT kind FROM shoal.job ORDER BY job_id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "drain");
    // A rebalance keeps it empty; an unknown node changes nothing.
    let plan = shoal.cli(&["rebalance", "plan", "--json"]).await;
    let plan: serde_json::Value = serde_json::from_str(plan.assert_ok()).unwrap();
    assert!(plan["plan"]["moves"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["to"] != 1));
    let state = shoal.state().await;
    shoal
        .cli(&["node", "drain", "99"])
        .await
        .assert_error(&["no node 99"]);
    assert_eq!(shoal.state().await, state);
    // With node 3 closed to shards too, node 2's groups have nowhere to go: refused, and node 2
    // keeps taking shards.
    shoal
        .cli(&["node", "set", "3", "--should-have-shards", "false"])
        .await
        .assert_ok();
    shoal
        .cli(&["node", "drain", "2"])
        .await
        .assert_error(&["no active node that should have shards allows it"]);
    let flags: Vec<bool> = sql
        .query(
            "SELECT should_have_shards FROM shoal.node ORDER BY node_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(flags, vec![false, true, false]);
    assert_eq!(shoal.state().await, state);
    check_settled(&shoal).await;
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_stopped_rebalance_keeps_what_is_done_and_leaves_nothing_behind() {
    let mut shoal = common::start(2).await;
    shop(&shoal, 6).await;
    add_worker(&mut shoal).await;
    let before = contents(&shoal).await;
    let placements_before = groups_per_node(&shoal).await;
    let _serve = daemon(&shoal, &[("SHOAL_FAILPOINTS", "pause:Catching Up")]);
    let writers = writers(&shoal);
    let job = job_id(&shoal.cli(&["rebalance", "start", "--json"]).await);
    // A second rebalance is refused while this one runs, and changes nothing.
    shoal
        .cli(&["rebalance", "start"])
        .await
        .assert_error(&["still", "shoal rebalance stop"]);
    wait_for_any_status(&shoal, "Catching Up").await;
    let out = shoal.cli(&["rebalance", "stop"]).await;
    assert!(out.success, "stop: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    assert_eq!(job_state(&shoal, job).await, "cancelled");
    let tasks: Vec<String> = shoal
        .coordinator()
        .await
        .query(
            "SELECT state FROM shoal.task WHERE job_id = $1 ORDER BY position",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tasks, vec!["cancelled", "cancelled"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_exact(&shoal, before, writers).await;
    assert_eq!(groups_per_node(&shoal).await, placements_before);
    let wait = shoal.cli(&["rebalance", "wait"]).await;
    wait.assert_error(&["cancelled"]);
    check_settled(&shoal).await;
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_task_that_keeps_failing_is_retried_then_fails_the_job_with_its_error() {
    let mut shoal = common::start(2).await;
    shop(&shoal, 6).await;
    add_worker(&mut shoal).await;
    let state = groups_per_node(&shoal).await;
    let started = Instant::now();
    let out = shoal
        .cli(&["rebalance", "start", "--max-retries", "1", "--json"])
        .await;
    let job = job_id(&out);
    let serve = daemon(&shoal, &[("SHOAL_FAILPOINTS", "fail:Copying Data")]);
    let state_now = wait_for_job_state(&shoal, job, &["failed"], Duration::from_secs(60)).await;
    assert_eq!(state_now, "failed");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the retry waited its 5 s"
    );
    drop(serve);
    let status = shoal
        .cli(&["job", "show", &job.to_string(), "--json"])
        .await;
    let status: serde_json::Value = serde_json::from_str(status.assert_ok()).unwrap();
    let tasks = status["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["state"], "error");
    assert_eq!(tasks[0]["retry_count"], 1);
    assert!(tasks[0]["message"]
        .as_str()
        .unwrap()
        .contains("failpoint: failing at Copying Data"));
    assert_eq!(tasks[1]["state"], "unscheduled", "its dependant never runs");
    assert!(status["error"]
        .as_str()
        .unwrap()
        .contains("failpoint: failing at Copying Data"));
    assert_eq!(groups_per_node(&shoal).await, state, "nothing moved");
    shoal
        .cli(&["rebalance", "wait"])
        .await
        .assert_error(&["failed", "failpoint"]);
    shoal.assert_nothing_left_behind().await;
    // Once the problem is gone, a new rebalance does the work.
    let job = job_id(&shoal.cli(&["rebalance", "start", "--json"]).await);
    let out = shoal.cli(&["job", "wait", &job.to_string()]).await;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    check_settled(&shoal).await;
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn a_custom_strategy_is_added_checked_followed_and_removed() {
    let mut shoal = common::start(2).await;
    shop(&shoal, 6).await;
    let node = add_worker(&mut shoal).await;
    let colocation: i32 = shoal
        .coordinator()
        .await
        .query_one(
            "SELECT colocation_id FROM shoal.distributed_table WHERE relid = 't'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Bad definitions are refused and write nothing.
    let (colocation_text, node_text) = (colocation.to_string(), node.to_string());
    let disallow = format!("{colocation_text}:{node_text}");
    for (args, phrases) in [
        (
            vec!["--cost", "shard-count", "--capacity", "99=2"],
            vec!["node 99 does not exist"],
        ),
        (
            vec!["--cost", "shard-count", "--disallow", "999:1"],
            vec!["colocation group 999 does not exist"],
        ),
        (
            vec!["--cost", "shard-count", "--threshold=-1"],
            vec!["default_threshold is -1"],
        ),
        (
            vec![
                "--cost",
                "disk-size",
                "--threshold",
                "0.1",
                "--minimum-threshold",
                "0.5",
            ],
            vec!["minimum_threshold 0.5 is above default_threshold 0.1"],
        ),
        (
            vec!["--cost", "shard-count", "--base-cost-bytes", "5"],
            vec!["--base-cost-bytes applies to --cost disk-size only"],
        ),
    ] {
        let mut all = vec!["rebalance", "strategy", "add", "mine"];
        all.extend(args);
        shoal.cli(&all).await.assert_error(&phrases);
    }
    // Arguments clap rejects itself (with its usage hint after the error).
    let out = shoal
        .cli(&[
            "rebalance",
            "strategy",
            "add",
            "mine",
            "--cost",
            "shard-count",
            "--capacity",
            "1=0",
        ])
        .await;
    assert!(!out.success && out.stderr.contains("a capacity must be above 0"));
    let strategies = || async {
        let out = shoal.cli(&["rebalance", "strategies", "--json"]).await;
        let rows: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(strategies().await, vec!["by_disk_size", "by_shard_count"]);

    // Node 1 counts double; t's colocation group may not go to the new node.
    shoal
        .cli(&[
            "rebalance",
            "strategy",
            "add",
            "mine",
            "--cost",
            "shard-count",
            "--capacity",
            "1=2",
            "--disallow",
            &disallow,
        ])
        .await
        .assert_ok();
    shoal
        .cli(&[
            "rebalance",
            "strategy",
            "add",
            "mine",
            "--cost",
            "disk-size",
        ])
        .await
        .assert_error(&["a strategy of that name exists"]);
    let out = shoal
        .cli(&["rebalance", "plan", "--strategy", "mine", "--json"])
        .await;
    let plan: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    assert_eq!(plan["strategy"], "mine");
    let moves = plan["plan"]["moves"].as_array().unwrap();
    assert!(!moves.is_empty(), "node 1 can take more: {plan}");
    assert!(moves.iter().all(|m| m["to"] == 1 && m["to"] != node));
    let list = shoal.cli(&["rebalance", "strategies"]).await;
    assert!(list.assert_ok().contains("mine"));
    shoal
        .cli(&["rebalance", "plan", "--strategy", "nope"])
        .await
        .assert_error(&["no rebalance strategy is called nope", "by_shard_count"]);

    // The default: `plan` without --strategy follows it; it cannot be removed while it is.
    shoal
        .cli(&["rebalance", "strategy", "default", "mine"])
        .await
        .assert_ok();
    let out = shoal.cli(&["rebalance", "plan", "--json"]).await;
    let plan: serde_json::Value = serde_json::from_str(out.assert_ok()).unwrap();
    assert_eq!(plan["strategy"], "mine");
    shoal
        .cli(&["rebalance", "strategy", "remove", "mine"])
        .await
        .assert_error(&["it is the default strategy"]);
    shoal
        .cli(&["rebalance", "strategy", "default", "by_shard_count"])
        .await
        .assert_ok();
    shoal
        .cli(&["rebalance", "strategy", "remove", "mine"])
        .await
        .assert_ok();
    assert_eq!(strategies().await, vec!["by_disk_size", "by_shard_count"]);
    shoal
        .cli(&["rebalance", "strategy", "remove", "mine"])
        .await
        .assert_error(&["no rebalance strategy is called mine"]);
}

/// Kills the daemon with SIGKILL while moves pause at each status, restarts it, and checks that
/// the job finishes, the content is exact and nothing is left behind. Jobs alternate between
/// filling the third worker and draining it, with both parallel flags.
async fn killed_at(statuses: &[&str]) {
    let mut shoal = common::start(2).await;
    shop(&shoal, 6).await;
    let third = add_worker(&mut shoal).await.to_string();
    let before = contents(&shoal).await;
    let writers = writers(&shoal);
    for (round, status) in statuses.iter().enumerate() {
        let mut paused = daemon(&shoal, &[("SHOAL_FAILPOINTS", &format!("pause:{status}"))]);
        let out = if round % 2 == 0 {
            shoal
                .cli(&["node", "set", &third, "--should-have-shards", "true"])
                .await
                .assert_ok();
            shoal
                .cli(&[
                    "rebalance",
                    "start",
                    "--parallel-colocated",
                    "--parallel-reference",
                    "--json",
                ])
                .await
        } else {
            shoal
                .cli(&[
                    "node",
                    "drain",
                    &third,
                    "--parallel-colocated",
                    "--no-wait",
                    "--json",
                ])
                .await
        };
        let job = job_id(&out);
        wait_for_any_status(&shoal, status).await;
        paused.kill().await.unwrap();
        let _ = paused.wait().await;
        let restarted = daemon(&shoal, &[]);
        let state = wait_for_job_state(
            &shoal,
            job,
            &["finished", "failed", "cancelled"],
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(state, "finished", "job {job} after a kill at {status}");
        let resumed: i64 = shoal
            .coordinator()
            .await
            .query_one(
                "SELECT count(*) FROM shoal.task WHERE job_id = $1 AND message LIKE '%interrupted%'",
                &[&job],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            resumed >= 1,
            "a task of job {job} settled an interrupted move: {}",
            shoal.cli(&["job", "show", &job.to_string()]).await.stdout
        );
        let retried: i64 = shoal
            .coordinator()
            .await
            .query_one(
                "SELECT count(*) FROM shoal.task WHERE job_id = $1 AND retry_count > 0",
                &[&job],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            retried,
            0,
            "no attempt failed after the kill at {status}: {}\n{}",
            shoal.cli(&["job", "show", &job.to_string()]).await.stdout,
            daemon_logs(&shoal)
        );
        drop(restarted);
        let counts = groups_per_node(&shoal).await;
        let on_third = counts[&third.parse::<i32>().unwrap()];
        if round % 2 == 0 {
            assert!(on_third >= 1, "the third worker got groups: {counts:?}");
        } else {
            assert_eq!(on_third, 0, "the third worker was drained: {counts:?}");
        }
        check_settled(&shoal).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_exact(&shoal, before, writers).await;
    // Cleanup of old placements may still be due on the daemon's loop; run it once.
    shoal.cli(&["cleanup"]).await.assert_ok();
    shoal.assert_nothing_left_behind().await;
}

#[tokio::test]
async fn the_daemon_killed_before_the_switch_resumes_and_the_job_finishes_exactly() {
    killed_at(&[
        "Setting Up",
        "Copying Data",
        "Catching Up",
        "Creating Constraints",
    ])
    .await;
}

#[tokio::test]
async fn the_daemon_killed_at_and_after_the_switch_resumes_and_the_job_finishes_exactly() {
    killed_at(&["Final Catchup", "Creating Foreign Keys", "Completing"]).await;
}
