//! `shoal demo`: a local cluster with two workers and a small shop on it, showing routing
//! through the coordinator and where rows live.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use tokio_postgres::Client;

use crate::args::DemoArgs;
use crate::commands::register_local_workers;
use crate::output::{human_bytes, print_table};
use shoal_catalog::model;
use shoal_cluster::{inspect, Cluster, Colocate};
use shoal_local::LocalCluster;

const SCHEMA_SQL: &str = "
CREATE TABLE products (
    id int PRIMARY KEY,
    name text NOT NULL,
    category text NOT NULL,
    price numeric(10, 2) NOT NULL
);
CREATE TABLE orders (
    id bigserial,
    customer_id bigint NOT NULL,
    product_id int NOT NULL REFERENCES products (id),
    quantity int NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id)
);
CREATE TABLE order_items (
    customer_id bigint NOT NULL,
    order_id bigint NOT NULL,
    line int NOT NULL,
    product_id int NOT NULL REFERENCES products (id),
    qty int NOT NULL,
    PRIMARY KEY (customer_id, order_id, line)
);
CREATE SCHEMA \"Tenant Acme\";
CREATE TABLE \"Tenant Acme\".users (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE \"Tenant Acme\".tickets (
    id serial PRIMARY KEY,
    user_id int NOT NULL REFERENCES \"Tenant Acme\".users (id),
    title text NOT NULL
);
INSERT INTO products
SELECT g, 'product ' || g, (ARRAY['books', 'garden', 'kitchen', 'music', 'toys'])[1 + g % 5],
       round((5 + (g * 37) % 200)::numeric, 2)
FROM generate_series(1, 100) g;
INSERT INTO orders (customer_id, product_id, quantity)
SELECT 1 + (g * 7919) % 500, 1 + g % 100, 1 + g % 4 FROM generate_series(1, 10000) g;
INSERT INTO order_items
SELECT o.customer_id, o.id, l, 1 + (o.id + l) % 100, l FROM orders o, generate_series(1, 2) l;
INSERT INTO \"Tenant Acme\".users (email) SELECT 'user' || g || '@acme.example' FROM generate_series(1, 50) g;
INSERT INTO \"Tenant Acme\".tickets (user_id, title)
SELECT 1 + g % 50, 'ticket ' || g FROM generate_series(1, 200) g;
";

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    step("Starting a local cluster: a coordinator and 2 workers");
    if args.dir.join(shoal_local::CLUSTER_FILE).exists() {
        let old = LocalCluster::open(&args.dir)?;
        old.down()?;
        std::fs::remove_dir_all(&args.dir).with_context(|| {
            format!("cannot remove the previous demo in {}", args.dir.display())
        })?;
    } else if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
        bail!(
            "{} exists and is not a Shoal demo directory; pass another --dir",
            args.dir.display()
        );
    }
    let report = LocalCluster::up(&args.dir, 2, args.port, "shoal").await?;
    println!("coordinator at {}", report.coordinator_uri);
    let cluster = register_local_workers(&report.coordinator_uri, &report.workers).await?;
    let sql = cluster.coordinator("shoal demo").await?;

    step("Creating a small shop on the coordinator, as plain PostgreSQL tables");
    sql.batch_execute(SCHEMA_SQL)
        .await
        .context("creating the demo tables")?;
    println!("products: 100 rows, orders: 10000 rows, order_items: 20000 rows, \"Tenant Acme\": 2 tables");

    step(
        "Distributing: products everywhere, orders and order_items by customer, one tenant schema",
    );
    shoal_cluster::reference_table(&cluster, "products").await?;
    println!("$ shoal table reference products");
    let orders = shoal_cluster::distribute_table(
        &cluster,
        "orders",
        "customer_id",
        Some(8),
        Colocate::Default,
    )
    .await?;
    println!(
        "$ shoal table distribute orders --column customer_id --shards 8   ({} rows moved)",
        orders.rows_moved
    );
    let items = shoal_cluster::distribute_table(
        &cluster,
        "order_items",
        "customer_id",
        None,
        Colocate::With("orders".into()),
    )
    .await?;
    println!("$ shoal table distribute order_items --column customer_id --colocate-with orders   ({} rows moved)", items.rows_moved);
    let tenant = shoal_cluster::distribute_schema(&cluster, "\"Tenant Acme\"").await?;
    println!(
        "$ shoal schema distribute '\"Tenant Acme\"'   (placed on node {})",
        tenant.node_id
    );

    step("Plain SQL through the coordinator");
    show(&sql, "SELECT count(*) FROM orders", "orders in all shards").await?;
    show(
        &sql,
        "SELECT p.category, sum(o.quantity * p.price) AS revenue FROM orders o JOIN products p ON p.id = o.product_id GROUP BY 1 ORDER BY 2 DESC",
        "revenue per category (distributed table joined with a reference table)",
    )
    .await?;
    show(
        &sql,
        "SELECT count(*) FROM orders o JOIN order_items i ON i.customer_id = o.customer_id AND i.order_id = o.id WHERE o.customer_id = 42",
        "a colocated join for one customer",
    )
    .await?;
    let plan = sql
        .query(
            "EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE customer_id = 42",
            &[],
        )
        .await?;
    println!("\nkey lookup plan: partition pruning sends it to one shard on one worker");
    for row in plan {
        println!("    {}", row.get::<_, String>(0));
    }

    let partition_node = partition_nodes(&cluster).await?;
    let inserted = sql
        .query_one(
            "INSERT INTO orders (customer_id, product_id, quantity) VALUES (4242, 7, 3)
             RETURNING id, tableoid::regclass::text",
            &[],
        )
        .await?;
    let shard: String = inserted.get(1);
    println!(
        "\nINSERT INTO orders (customer_id = 4242 ...) went to shard {shard} on {}",
        partition_node.get(&shard).cloned().unwrap_or_default()
    );
    sql.execute(
        "UPDATE orders SET quantity = 5 WHERE customer_id = 4242",
        &[],
    )
    .await?;
    let deleted = sql
        .execute("DELETE FROM orders WHERE customer_id = 4242", &[])
        .await?;
    println!("UPDATE and DELETE of customer 4242 are routed the same way ({deleted} row deleted)");

    step("Where the rows live");
    let counts = sql
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM orders GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    let mut per_node: BTreeMap<String, i64> = BTreeMap::new();
    for row in &counts {
        let node = partition_node
            .get(&row.get::<_, String>(0))
            .cloned()
            .unwrap_or_default();
        *per_node.entry(node).or_default() += row.get::<_, i64>(1);
    }
    let rows: Vec<Vec<String>> = per_node
        .iter()
        .map(|(node, n)| vec![node.clone(), n.to_string()])
        .collect();
    print_table(&["node", "orders rows"], &rows);
    println!();
    let shards = inspect::shard_rows(&cluster, None).await?;
    let mut by_table_node: BTreeMap<(String, String), (usize, i64)> = BTreeMap::new();
    for shard in &shards {
        let entry = by_table_node
            .entry((
                shard.table.to_string(),
                format!("{} ({})", shard.node_id, shard.node_address),
            ))
            .or_default();
        entry.0 += 1;
        entry.1 += shard.size_bytes.unwrap_or(0);
    }
    let rows: Vec<Vec<String>> = by_table_node
        .iter()
        .map(|((table, node), (count, size))| {
            vec![
                table.clone(),
                node.clone(),
                count.to_string(),
                human_bytes(Some(*size)),
            ]
        })
        .collect();
    print_table(&["table", "node", "shards", "size"], &rows);

    step("A stream table: revenue per category, kept up to date from every worker's changes");
    let stream_query =
        "SELECT p.category, count(*) AS orders, sum(o.quantity * p.price) AS revenue \
                        FROM orders o JOIN products p ON p.id = o.product_id GROUP BY p.category";
    let created = shoal_stream::runtime::create_stream(
        &cluster,
        "revenue_by_category",
        stream_query,
        &shoal_stream::runtime::StreamOptions {
            schedule: std::time::Duration::from_secs(1),
            mode: shoal_stream::Mode::Auto,
        },
    )
    .await?;
    println!(
        "$ shoal stream create revenue_by_category --query '...'   ({} refresh, {} rows)",
        created.refresh_mode,
        created.rows.unwrap_or(0)
    );
    show(
        &sql,
        "SELECT category, orders, revenue FROM revenue_by_category ORDER BY revenue DESC",
        "revenue_by_category",
    )
    .await?;
    sql.batch_execute(
        "INSERT INTO orders (customer_id, product_id, quantity)
         SELECT 1 + g % 500, 5, 10 FROM generate_series(1, 300) g;
         UPDATE products SET price = price * 2 WHERE category = 'toys';",
    )
    .await?;
    println!(
        "\n300 new orders of a books product, and toys' prices doubled (a reference table change)"
    );
    refresh_stream_table(&cluster).await?;
    show(
        &sql,
        "SELECT category, orders, revenue FROM revenue_by_category ORDER BY revenue DESC",
        "after one differential refresh",
    )
    .await?;
    check_stream(&sql, stream_query).await?;

    step("Moving a shard group online while the shop keeps writing");
    let moved = move_while_writing(&cluster, &report.coordinator_uri).await?;
    println!(
        "$ shoal shard move {} --to {}   ({} of orders and order_items, {:.2} s, writes blocked {:.1} ms)",
        moved.0, moved.1, moved.2, moved.3, moved.4
    );
    println!(
        "{} orders were written during the move; none lost: {}",
        moved.5, moved.6
    );
    refresh_stream_table(&cluster).await?;
    check_stream(&sql, stream_query).await?;

    step("A third worker, filled by a parallel rebalance that the daemon runs in the background");
    let mut daemon = add_worker_and_rebalance(&cluster, args, &report.coordinator_uri).await?;
    refresh_stream_table(&cluster).await?;
    check_stream(&sql, stream_query).await?;

    if args.stop {
        step("Stopping the demo cluster");
        daemon.stop();
        LocalCluster::open(&args.dir)?.down()?;
    } else {
        println!(
            "\nshoal serve keeps running in the background (pid {}, log {}); `kill {}` stops it",
            daemon.child.id(),
            daemon.log.display(),
            daemon.child.id()
        );
        step("Explore it yourself");
        println!("  psql {}", report.coordinator_uri);
        println!(
            "  . {}/shoal.env && shoal table list && shoal shard list --table orders",
            args.dir.display()
        );
        println!(
            "  shoal local down --dir {}    # when you are done",
            args.dir.display()
        );
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

async fn show(sql: &Client, query: &str, title: &str) -> anyhow::Result<()> {
    println!("\n{title}:\n  {query}");
    let rows = sql.simple_query(query).await?;
    let mut out = Vec::new();
    let mut headers: Vec<String> = Vec::new();
    for message in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            if headers.is_empty() {
                headers = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&header_refs, &out);
    Ok(())
}

/// Foreign partition name (as `regclass` prints it) to `node N (host:port)`.
async fn partition_nodes(cluster: &Cluster) -> anyhow::Result<HashMap<String, String>> {
    let nodes: HashMap<i32, String> = model::list_nodes(cluster.client())
        .await?
        .into_iter()
        .map(|n| (n.node_id, format!("node {} ({})", n.node_id, n.address())))
        .collect();
    let mut out = HashMap::new();
    for placement in model::all_placements(cluster.client()).await? {
        let printed: String = cluster
            .client()
            .query_one(
                "SELECT to_regclass($1)::text",
                &[&placement.shard_table.quoted()],
            )
            .await?
            .get::<_, Option<String>>(0)
            .unwrap_or_default();
        out.insert(
            printed,
            nodes.get(&placement.node_id).cloned().unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Moves one shard group of orders (with its order_items) to the other worker while a writer
/// inserts orders, and checks that every acknowledged insert is there afterwards.
/// Returns (shard, target node, size, seconds, ms blocked, rows written, all present).
async fn move_while_writing(
    cluster: &Cluster,
    uri: &str,
) -> anyhow::Result<(i64, i32, String, f64, f64, i64, bool)> {
    let row = cluster
        .client()
        .query_one(
            "SELECT shard_id, node_id FROM shoal.shards
             WHERE table_name = 'orders'::regclass ORDER BY shard_index LIMIT 1",
            &[],
        )
        .await?;
    let (shard, from): (i64, i32) = (row.get(0), row.get(1));
    let to: i32 = cluster
        .client()
        .query_one(
            "SELECT node_id FROM shoal.node WHERE node_id <> $1 ORDER BY node_id LIMIT 1",
            &[&from],
        )
        .await?
        .get(0);
    let before: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let uri = uri.to_string();
        tokio::spawn(async move {
            let params = shoal_catalog::ConnectParams::parse(&uri)?;
            let client = shoal_catalog::connect(&params, "shoal demo writer").await?;
            let insert = client
                .prepare(
                    "INSERT INTO orders (customer_id, product_id, quantity) VALUES ($1, $2, 1)",
                )
                .await?;
            let mut written = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                client
                    .execute(
                        &insert,
                        &[&(written % 500 + 1), &((written % 100 + 1) as i32)],
                    )
                    .await?;
                written += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok::<i64, anyhow::Error>(written)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let request = shoal_transfer::TransferRequest {
        shard_id: shard,
        target: to.to_string(),
        mode: shoal_transfer::Mode::Auto,
        operation: shoal_transfer::Operation::Move,
    };
    let transfer =
        shoal_transfer::Transfer::prepare(cluster, &request, shoal_transfer::Tuning::default())
            .await?;
    let report = transfer.run(shoal_transfer::CancelToken::default()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await??;
    let report = report?;
    let after: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    Ok((
        shard,
        to,
        human_bytes(Some(report.bytes)),
        report.elapsed_ms / 1000.0,
        report.write_block_ms,
        written,
        after == before + written,
    ))
}

/// What `shoal stream refresh revenue_by_category` does: capture every node's latest changes,
/// then apply them.
async fn refresh_stream_table(cluster: &Cluster) -> anyhow::Result<()> {
    shoal_stream::runtime::poll_all(cluster, 100_000, 5, true).await?;
    let id: i32 = cluster
        .client()
        .query_one(
            "SELECT stream_id FROM shoal.stream_table WHERE relid = 'revenue_by_category'::regclass",
            &[],
        )
        .await?
        .get(0);
    let report = shoal_stream::runtime::refresh_stream(cluster, id, false).await?;
    println!(
        "$ shoal stream refresh revenue_by_category   ({} refresh: {} row(s) changed in {:.1} ms)",
        report.mode, report.rows_changed, report.ms
    );
    Ok(())
}

/// Compares the stream table with its query recomputed, both ways.
async fn check_stream(sql: &Client, query: &str) -> anyhow::Result<()> {
    let stored = "SELECT category, orders, revenue FROM revenue_by_category";
    let differing: i64 = sql
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM (({query}) EXCEPT ALL ({stored})) a)
                      + (SELECT count(*) FROM (({stored}) EXCEPT ALL ({query})) b)"
            ),
            &[],
        )
        .await?
        .get(0);
    if differing != 0 {
        bail!("the stream table differs from its query in {differing} row(s)");
    }
    println!("revenue_by_category equals its query recomputed (EXCEPT ALL both ways is empty)");
    Ok(())
}

/// `shoal serve`, started by the demo.
struct DemoDaemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl DemoDaemon {
    /// SIGTERM, then wait: the daemon stops its duties cleanly.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let _ = self.child.wait();
        }
    }
}

/// Adds a third worker, starts `shoal serve`, and has it rebalance the shop in parallel while
/// this process shows progress; then shows where the shard groups are.
async fn add_worker_and_rebalance(
    cluster: &Cluster,
    args: &DemoArgs,
    uri: &str,
) -> anyhow::Result<DemoDaemon> {
    let mut local = LocalCluster::open(&args.dir)?;
    let server = local.add_worker().await?;
    println!(
        "$ shoal local add-worker --dir {}   (127.0.0.1:{})",
        args.dir.display(),
        server.port
    );
    register_local_workers(uri, &[("127.0.0.1".to_string(), server.port)]).await?;

    let log = args.dir.join("serve.log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "off", "--http", "off"])
        .env("SHOAL_COORDINATOR", uri)
        .env_remove("SHOAL_FAILPOINTS")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start shoal serve")?;
    let mut daemon = DemoDaemon { child, log };
    let started = std::time::Instant::now();
    loop {
        let live = shoal_jobs::store::live_daemons(cluster.client(), shoal_jobs::DEFAULT_LEASE)
            .await?
            .iter()
            .any(|d| d.pid == daemon.child.id() as i32);
        if live {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            daemon.stop();
            bail!(
                "shoal serve did not start within 20 s; see {}",
                daemon.log.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!(
        "$ shoal serve &   (pid {}, log {})",
        daemon.child.id(),
        daemon.log.display()
    );

    let options = shoal_jobs::JobOptions {
        parallel_colocated: true,
        parallel_reference: true,
        ..shoal_jobs::JobOptions::default()
    };
    let started = shoal_jobs::rebalance::start_rebalance(cluster, &options).await?;
    let Some(job_id) = started.job_id else {
        println!("the cluster is already balanced");
        return Ok(daemon);
    };
    let bytes: i64 = started.planned.tasks.iter().map(|t| t.bytes_total).sum();
    println!(
        "$ shoal rebalance start --parallel-colocated --parallel-reference   (job {job_id}: {} move(s), {})",
        started.planned.plan.moves.len(),
        human_bytes(Some(bytes))
    );
    for task in &started.planned.tasks {
        println!("    {}", task.description);
    }
    println!("$ shoal rebalance wait");
    crate::rebalance::wait_for_job(cluster, job_id, false).await?;

    let shards = inspect::shard_rows(cluster, None).await?;
    let mut per_node: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for shard in shards.iter().filter(|s| s.table.name == "orders") {
        per_node
            .entry(format!("{} ({})", shard.node_id, shard.node_address))
            .or_default()
            .0 += 1;
    }
    for shard in &shards {
        if let Some(entry) =
            per_node.get_mut(&format!("{} ({})", shard.node_id, shard.node_address))
        {
            entry.1 += shard.size_bytes.unwrap_or(0);
        }
    }
    println!();
    let rows: Vec<Vec<String>> = per_node
        .iter()
        .map(|(node, (groups, size))| {
            vec![node.clone(), groups.to_string(), human_bytes(Some(*size))]
        })
        .collect();
    print_table(
        &["node", "shard groups of orders", "size on the node"],
        &rows,
    );
    Ok(daemon)
}
