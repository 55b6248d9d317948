//! pgbench through Shoal's endpoint, through the coordinator, and on one plain server holding
//! the same rows, in one run: key lookups, a transaction on one shard group, a transaction on
//! two random orders (two workers half the time: two-phase commit through the endpoint), and
//! pgbench's built-in TPC-B (branches a reference table). Throughput and failed transactions,
//! next to Citus 13.2's figures on this machine (BRIEF.md).

use tokio::sync::watch;

use crate::moves::shoal_on;
use crate::queries::load_reference;
use shoal_catalog::ConnectParams;
use shoal_cluster::Colocate;
use shoal_testkit::TestCluster;

/// What one pgbench run reported.
pub struct Run {
    pub tps: f64,
    pub failed: u64,
}

/// Shoal's endpoint in the harness's process, on a free port, until dropped.
pub struct InProcess {
    pub port: u16,
    pub uri: String,
    _stop: watch::Sender<bool>,
}

impl InProcess {
    pub async fn start(
        pg: &TestCluster,
        options: shoal_endpoint::Options,
    ) -> anyhow::Result<InProcess> {
        let (stop, shutdown) = watch::channel(false);
        let params = ConnectParams::parse(&pg.coordinator_uri())?;
        let (endpoint, _duty) = shoal_endpoint::start(params, "127.0.0.1:0", options, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("the endpoint did not start: {e}"))?;
        let port = endpoint.address.port();
        Ok(InProcess {
            port,
            uri: shoal_local::postgres_uri(port, shoal_testkit::DBNAME),
            _stop: stop,
        })
    }
}

/// An anchor's tps and one plain server's measured alongside it.
type Anchor = (f64, f64);

/// The three scripts of the query benchmark: label, script (`:orders` set by `-D`), and
/// Citus's tps on this machine with one plain server's measured alongside (BRIEF.md).
const SCRIPTS: [(&str, &str, Option<Anchor>); 3] = [
    (
        "key lookup",
        "\\set id random(1, :orders)\nSELECT * FROM orders WHERE id = :id;\n",
        Some((3349.0, 20573.0)),
    ),
    (
        "one shard group: 2 updates, 1 select",
        "\\set id random(1, :orders)\nBEGIN;\n\
         UPDATE orders SET amount = amount + 1 WHERE id = :id;\n\
         UPDATE order_items SET qty = qty + 1 WHERE order_id = :id;\n\
         SELECT sum(qty) FROM order_items WHERE order_id = :id;\nEND;\n",
        Some((651.0, 3932.0)),
    ),
    (
        "two random orders (2PC when 2 workers)",
        "\\set a random(1, :orders)\n\\set b random(1, :orders)\nBEGIN;\n\
         UPDATE orders SET amount = amount - 1 WHERE id = :a;\n\
         UPDATE orders SET amount = amount + 1 WHERE id = :b;\nEND;\n",
        Some((1052.0, 5978.0)),
    ),
];

pub async fn run(orders: i64, seconds: u32, clients: u32) -> anyhow::Result<()> {
    let (single, pg, _cluster) = load_reference(orders).await?;
    let endpoint = InProcess::start(&pg, shoal_endpoint::Options::default()).await?;
    scripts(&single, &pg, &endpoint.uri, orders, seconds, clients).await?;
    tpc_b(seconds, clients).await?;
    Ok(())
}

/// The three scripts on the reference data set: one server, the coordinator, the endpoint.
pub async fn scripts(
    single: &TestCluster,
    pg: &TestCluster,
    through_endpoint: &str,
    orders: i64,
    seconds: u32,
    clients: u32,
) -> anyhow::Result<()> {
    let dir = single.run_dir().to_path_buf();
    println!(
        "pgbench, {clients} clients, {seconds} s each, simple protocol; tps (failed transactions)"
    );
    println!(
        "{:<40} {:>12} {:>18} {:>18} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "workload",
        "one server",
        "coordinator",
        "endpoint",
        "end/coor",
        "Citus",
        "coor/one",
        "end/one",
        "Citus/one"
    );
    for (label, script, citus) in SCRIPTS {
        let file = dir.join(format!(
            "{}.sql",
            label.split(':').next().unwrap_or("s").replace(' ', "_")
        ));
        std::fs::write(&file, script)?;
        let args = |uri: &str| -> Vec<String> {
            vec![
                "-n".into(),
                "-c".into(),
                clients.to_string(),
                "-j".into(),
                "2".into(),
                "-T".into(),
                seconds.to_string(),
                "-D".into(),
                format!("orders={orders}"),
                "-f".into(),
                file.display().to_string(),
                uri.to_string(),
            ]
        };
        let one = pgbench(&args(&single.coordinator_uri())).await?;
        let coordinator = pgbench(&args(&pg.coordinator_uri())).await?;
        let endpoint = pgbench(&args(through_endpoint)).await?;
        print_row(label, &one, &coordinator, &endpoint, citus);
    }
    Ok(())
}

/// pgbench's TPC-B on fresh servers (its own schema): one plain server, Shoal with branches a
/// reference table and accounts, tellers and history distributed (history with accounts).
async fn tpc_b(seconds: u32, clients: u32) -> anyhow::Result<()> {
    let single = TestCluster::start(0).await;
    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    for uri in [single.coordinator_uri(), pg.coordinator_uri()] {
        pgbench(&["-i".into(), "-s".into(), "4".into(), "-q".into(), uri]).await?;
    }
    shoal_cluster::reference_table(&cluster, "pgbench_branches").await?;
    shoal_cluster::distribute_table(
        &cluster,
        "pgbench_accounts",
        "aid",
        Some(32),
        Colocate::Default,
    )
    .await?;
    shoal_cluster::distribute_table(&cluster, "pgbench_tellers", "tid", Some(32), Colocate::None)
        .await?;
    shoal_cluster::distribute_table(
        &cluster,
        "pgbench_history",
        "aid",
        None,
        Colocate::With("pgbench_accounts".into()),
    )
    .await?;
    let endpoint = InProcess::start(&pg, shoal_endpoint::Options::default()).await?;
    let through_endpoint = endpoint.uri.clone();
    let args = |uri: &str| -> Vec<String> {
        vec![
            "-n".into(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            seconds.to_string(),
            "--failures-detailed".into(),
            uri.to_string(),
        ]
    };
    let one = pgbench(&args(&single.coordinator_uri())).await?;
    let coordinator = pgbench(&args(&pg.coordinator_uri())).await?;
    let endpoint = pgbench(&args(&through_endpoint)).await?;
    print_row(
        "built-in TPC-B, scale 4",
        &one,
        &coordinator,
        &endpoint,
        None,
    );
    Ok(())
}

fn print_row(label: &str, one: &Run, coordinator: &Run, endpoint: &Run, citus: Option<Anchor>) {
    let cell = |r: &Run| format!("{:.0} ({})", r.tps, r.failed);
    let (citus_tps, citus_share) = match citus {
        Some((tps, single)) => (format!("{tps:.0}"), format!("{:.3}", tps / single)),
        None => ("-".to_string(), "-".to_string()),
    };
    println!(
        "{label:<40} {:>12} {:>18} {:>18} {:>8.2}x {citus_tps:>7} {:>9.3} {:>9.3} {citus_share:>9}",
        cell(one),
        cell(coordinator),
        cell(endpoint),
        endpoint.tps / coordinator.tps,
        coordinator.tps / one.tps,
        endpoint.tps / one.tps,
    );
}

pub async fn pgbench(args: &[String]) -> anyhow::Result<Run> {
    let pgbench = shoal_testkit::binaries().bindir.join("pgbench");
    let out = tokio::process::Command::new(pgbench)
        .args(args)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "pgbench failed: {text}");
    let number = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Ok(Run {
        tps: number("tps = ").unwrap_or(0.0),
        failed: number("number of failed transactions:").unwrap_or(0.0) as u64,
    })
}
