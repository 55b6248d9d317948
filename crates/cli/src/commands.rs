//! One function per command: read arguments, call the library, print the result.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::args::{
    Cli, Command, LocalCommand, NodeCommand, SchemaCommand, ShardCommand, TableCommand,
};
use crate::config::coordinator_uri;
use crate::output::{human_bytes, print_json, print_table};
use shoal_catalog::{model, ConnectParams};
use shoal_cluster::nodes::{self, AddNode};
use shoal_cluster::{cleanup, inspect, Cluster, Colocate};
use shoal_local::LocalCluster;
use shoal_transfer::{Mode, Operation};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let coordinator = || coordinator_uri(cli.coordinator.as_deref(), cli.config.as_deref());
    match cli.command {
        Command::Init => init(&coordinator()?).await,
        Command::Ddl(args) => ddl(&coordinator()?, &args).await,
        Command::Explain(args) => {
            crate::explain::run(&connect(&coordinator()?).await?, &args).await
        }
        Command::Analyze(args) => crate::analyze::run(&connect(&coordinator()?).await?, args).await,
        Command::Local(command) => local(command).await,
        Command::Demo(args) => crate::demo::run(&args).await,
        Command::Stream(command) => {
            crate::stream::run(&connect(&coordinator()?).await?, command).await
        }
        Command::Serve(args) => {
            let params = ConnectParams::parse(&coordinator()?)?;
            // Fail early, with the usual message, if the coordinator is unusable.
            Cluster::connect(params.clone()).await?;
            crate::serve::run(params, &args).await
        }
        Command::Rebalance(command) => {
            crate::rebalance::run(&connect(&coordinator()?).await?, command).await
        }
        Command::Job(command) => crate::jobs::run(&connect(&coordinator()?).await?, command).await,
        Command::Node(command) => node(&connect(&coordinator()?).await?, command).await,
        Command::Table(command) => table(&connect(&coordinator()?).await?, command).await,
        Command::Shard(command) => shard(&connect(&coordinator()?).await?, command).await,
        Command::Schema(command) => schema(&connect(&coordinator()?).await?, command).await,
        Command::Cleanup(args) => {
            let cluster = connect(&coordinator()?).await?;
            let scanned = if args.scan {
                cleanup::scan(&cluster).await?
            } else {
                Vec::new()
            };
            let report = cleanup::run_cleanup(&cluster, None).await?;
            if args.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    found_by_scan: &'a [String],
                    #[serde(flatten)]
                    report: &'a cleanup::CleanupReport,
                }
                return print_json(&Out {
                    found_by_scan: &scanned,
                    report: &report,
                });
            }
            for found in &scanned {
                println!("found {found}");
            }
            for removed in &report.removed {
                println!("removed {removed}");
            }
            if report.skipped_running > 0 {
                println!(
                    "left {} record(s) of operations still running",
                    report.skipped_running
                );
            }
            if !report.is_clean() {
                anyhow::bail!(
                    "could not remove {}; run `shoal cleanup` again later",
                    report.failed.join(", ")
                );
            }
            if report.removed.is_empty() {
                println!("nothing to clean up");
            }
            Ok(())
        }
    }
}

pub async fn connect(uri: &str) -> anyhow::Result<Cluster> {
    let params = ConnectParams::parse(uri)?;
    Ok(Cluster::connect(params).await?)
}

pub async fn init(uri: &str) -> anyhow::Result<()> {
    let params = ConnectParams::parse(uri)?;
    let report = shoal_cluster::init_cluster(&params, "shoal init").await?;
    if report.from_version == report.to_version {
        println!("catalog is up to date (version {})", report.to_version);
    } else {
        println!(
            "catalog migrated from version {} to {}",
            report.from_version, report.to_version
        );
    }
    print_init_warnings(&report);
    crate::stream::upgrade_layouts(&Cluster::connect(params).await?).await
}

async fn ddl(uri: &str, args: &crate::args::DdlArgs) -> anyhow::Result<()> {
    let sql = match (&args.sql, &args.file) {
        (Some(sql), _) if sql == "-" => std::io::read_to_string(std::io::stdin())?,
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give the statements, or --file"),
    };
    let params = ConnectParams::parse(uri)?;
    // Checks the catalog's version, with the usual message.
    let cluster = Cluster::connect(params.clone()).await?;
    drop(cluster);
    let mut client = shoal_catalog::connect(&params, "shoal ddl").await?;
    let applied = shoal_ddl::apply(&params, &mut client, &sql).await?;
    if args.json.json {
        return print_json(&applied);
    }
    for item in &applied {
        match item.route {
            "coordinator" => println!(
                "{}: done (on the coordinator, which carried it to the shards)",
                item.statement
            ),
            "shards concurrently" => println!(
                "{}: done on {} shard(s), concurrently",
                item.statement, item.shards
            ),
            _ => println!("{}: done on {} shard(s)", item.statement, item.shards),
        }
    }
    Ok(())
}

/// What `init` could not set up (DDL propagation, planner settings), and what to do about it.
fn print_init_warnings(report: &shoal_cluster::ClusterInit) {
    if let Some(reason) = &report.ddl_triggers_refused {
        eprintln!(
            "warning: plain-SQL DDL on distributed tables is not propagated: the event triggers \
             could not be created ({reason}); change distributed and reference tables with \
             `shoal ddl`, or run `shoal init` once as a role that may create event triggers (a \
             superuser, or the service's admin role where it may)"
        );
    }
    for (address, reason) in &report.unprepared_nodes {
        eprintln!(
            "warning: node {address} is not prepared for DDL ({reason}); DDL on its shards is \
             refused until `shoal init` runs again with it reachable"
        );
    }
    if let Some(reason) = &report.planner_settings_refused {
        eprintln!(
            "warning: the coordinator database's planner settings could not be set ({reason}); \
             colocated joins and grouped aggregates then run on the coordinator: run `shoal \
             init` as the database's owner"
        );
    }
}

/// Initialises the catalog of a local cluster and registers the workers not registered yet.
pub async fn register_local_workers(
    uri: &str,
    workers: &[(String, u16)],
) -> anyhow::Result<Cluster> {
    let params = ConnectParams::parse(uri)?;
    let report = shoal_cluster::init_cluster(&params, "shoal local").await?;
    print_init_warnings(&report);
    let cluster = Cluster::connect(params).await?;
    crate::stream::upgrade_layouts(&cluster).await?;
    let known = model::list_nodes(cluster.client()).await?;
    for (host, port) in workers {
        if known.iter().any(|n| &n.host == host && n.port == *port) {
            continue;
        }
        let address = format!("{host}:{port}");
        let node = nodes::add_node(
            &cluster,
            &AddNode {
                address: &address,
                dbname: None,
                should_have_shards: true,
            },
        )
        .await
        .with_context(|| format!("registering worker {address}"))?;
        println!("registered node {} at {}", node.node_id, node.address());
    }
    Ok(cluster)
}

async fn local(command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Up {
            dir,
            workers,
            port,
            dbname,
        } => {
            let report = LocalCluster::up(&dir.dir, workers.into(), port, &dbname).await?;
            for note in &report.notes {
                println!("note: {note}");
            }
            if report.created {
                println!(
                    "created a coordinator and {} worker(s) in {}",
                    report.workers.len(),
                    dir.dir.display()
                );
            } else if report.started.is_empty() {
                println!("every server in {} is already running", dir.dir.display());
            } else {
                println!("started {}", report.started.join(", "));
            }
            register_local_workers(&report.coordinator_uri, &report.workers).await?;
            print_connect_hint(&dir.dir, &report.coordinator_uri);
            Ok(())
        }
        LocalCommand::Down { dir } => {
            let cluster = LocalCluster::open(&dir.dir)?;
            let stopped = cluster.down()?;
            if stopped.is_empty() {
                println!("nothing was running");
            } else {
                println!("stopped {}", stopped.join(", "));
            }
            Ok(())
        }
        LocalCommand::Status { dir, json } => {
            let cluster = LocalCluster::open(&dir.dir)?;
            let status = cluster.status();
            if json.json {
                return print_json(&status);
            }
            let rows: Vec<Vec<String>> = status
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        format!("{:?}", s.role).to_lowercase(),
                        format!("127.0.0.1:{}", s.port),
                        if s.running { "running" } else { "stopped" }.to_string(),
                        s.data_dir.display().to_string(),
                    ]
                })
                .collect();
            print_table(
                &["server", "role", "address", "state", "data directory"],
                &rows,
            );
            println!("\ncoordinator: {}", cluster.coordinator_uri());
            Ok(())
        }
        LocalCommand::AddWorker { dir } => {
            let mut cluster = LocalCluster::open(&dir.dir)?;
            let server = cluster.add_worker().await?;
            println!("started {} on 127.0.0.1:{}", server.name, server.port);
            register_local_workers(
                &cluster.coordinator_uri(),
                &[("127.0.0.1".to_string(), server.port)],
            )
            .await?;
            Ok(())
        }
    }
}

fn print_connect_hint(dir: &Path, uri: &str) {
    println!("\ncoordinator: {uri}");
    println!("  psql {uri}");
    println!(
        "  . {}/shoal.env    # sets SHOAL_COORDINATOR for the shoal commands",
        dir.display()
    );
}

async fn node(cluster: &Cluster, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Add {
            address,
            dbname,
            no_shards,
        } => {
            let node = nodes::add_node(
                cluster,
                &AddNode {
                    address: &address,
                    dbname: dbname.as_deref(),
                    should_have_shards: !no_shards,
                },
            )
            .await?;
            println!(
                "registered node {} at {} (database {})",
                node.node_id,
                node.address(),
                node.dbname
            );
            if let Some(warning) = nodes::endpoint_warning(cluster, &node).await? {
                eprintln!("warning: {warning}");
            }
        }
        NodeCommand::List(json) => {
            let nodes = model::list_nodes(cluster.client()).await?;
            let counts: std::collections::HashMap<i32, i64> =
                model::shard_counts_by_node(cluster.client())
                    .await?
                    .into_iter()
                    .collect();
            if json.json {
                #[derive(Serialize)]
                struct NodeOut<'a> {
                    #[serde(flatten)]
                    node: &'a model::Node,
                    shards: i64,
                }
                let out: Vec<_> = nodes
                    .iter()
                    .map(|n| NodeOut {
                        node: n,
                        shards: counts.get(&n.node_id).copied().unwrap_or(0),
                    })
                    .collect();
                return print_json(&out);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node_id.to_string(),
                        n.address(),
                        n.dbname.clone(),
                        if n.is_active { "active" } else { "disabled" }.to_string(),
                        if n.should_have_shards { "yes" } else { "no" }.to_string(),
                        counts.get(&n.node_id).copied().unwrap_or(0).to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "id",
                    "address",
                    "database",
                    "state",
                    "shards allowed",
                    "shards",
                ],
                &rows,
            );
        }
        NodeCommand::Remove { node } => {
            let node = nodes::remove_node(cluster, &node).await?;
            println!("removed node {} at {}", node.node_id, node.address());
        }
        NodeCommand::Disable { node } => {
            let node = nodes::set_node_flags(cluster, &node, Some(false), None).await?;
            println!(
                "node {} at {} is disabled: it gets no new shards",
                node.node_id,
                node.address()
            );
        }
        NodeCommand::Activate { node } => {
            let node = nodes::set_node_flags(cluster, &node, Some(true), None).await?;
            println!("node {} at {} is active", node.node_id, node.address());
        }
        NodeCommand::Drain(args) => crate::rebalance::drain(cluster, args).await?,
        NodeCommand::Set {
            node,
            should_have_shards,
        } => {
            let node =
                nodes::set_node_flags(cluster, &node, None, Some(should_have_shards)).await?;
            println!(
                "node {} at {}: should have shards = {}",
                node.node_id,
                node.address(),
                node.should_have_shards
            );
        }
    }
    Ok(())
}

async fn table(cluster: &Cluster, command: TableCommand) -> anyhow::Result<()> {
    match command {
        TableCommand::Distribute {
            table,
            column,
            shards,
            colocate_with,
            with_referencing,
        } => {
            let shards = match shards {
                Some(n) if !(1..=4096).contains(&n) => {
                    return Err(shoal_cluster::ClusterError::ShardCountOutOfRange(n).into())
                }
                other => other.map(|n| n as i32),
            };
            let colocate = match colocate_with.as_deref() {
                None => Colocate::Default,
                Some("none") => Colocate::None,
                Some(other) => Colocate::With(other.to_string()),
            };
            let reports = shoal_cluster::distribute_tables(
                cluster,
                &shoal_cluster::DistributeRequest {
                    table: &table,
                    column: &column,
                    shard_count: shards,
                    colocate,
                    with_referencing,
                },
            )
            .await?;
            for report in reports {
                let nodes: std::collections::BTreeSet<i32> =
                    report.shards.iter().map(|s| s.1).collect();
                println!(
                    "distributed {} by {} into {} shards on {} node(s) (colocation group {}); moved {} row(s)",
                    report.table,
                    report.distribution_column,
                    report.shard_count,
                    nodes.len(),
                    report.colocation_id,
                    report.rows_moved
                );
            }
        }
        TableCommand::Undistribute { table } => {
            let rows = shoal_cluster::undistribute_table(cluster, &table).await?;
            println!("{table} is a plain coordinator table again ({rows} row(s) brought back)");
        }
        TableCommand::Reference { table } => {
            let nodes = shoal_cluster::reference_table(cluster, &table).await?;
            println!(
                "{table} is a reference table, replicated to {} node(s)",
                nodes.len()
            );
        }
        TableCommand::Check { table, json } => {
            let checks = shoal_cluster::check::check_tables(cluster, table.as_deref()).await?;
            let clean = checks.iter().all(|c| c.is_clean());
            if json.json {
                print_json(&checks)?;
            } else {
                for check in &checks {
                    if check.is_clean() {
                        println!("{}: every shard matches the catalog", check.table);
                    }
                    for (place, difference) in &check.differences {
                        println!("{}: {place}: {difference}", check.table);
                    }
                    for (place, reason) in &check.unchecked {
                        println!("{}: {place}: not checked ({reason})", check.table);
                    }
                }
            }
            if !clean {
                anyhow::bail!(
                    "some shards differ from the catalog's record or could not be read (listed above)"
                );
            }
        }
        TableCommand::List(json) => {
            // Measure shard sizes on the nodes first, so the sizes listed are current.
            inspect::shard_rows(cluster, None).await?;
            let tables = inspect::table_summaries(cluster).await?;
            if json.json {
                return print_json(&tables);
            }
            let rows: Vec<Vec<String>> = tables
                .iter()
                .map(|t| {
                    vec![
                        t.table.to_string(),
                        t.kind.as_str().to_string(),
                        t.distribution_column.clone().unwrap_or_else(|| "-".into()),
                        t.shard_count.to_string(),
                        t.colocation_id.to_string(),
                        t.nodes
                            .iter()
                            .map(i32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        human_bytes(t.size_bytes),
                    ]
                })
                .collect();
            print_table(
                &[
                    "table",
                    "kind",
                    "column",
                    "shards",
                    "colocation",
                    "nodes",
                    "size",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

async fn shard_list(cluster: &Cluster, table: Option<&str>, json: bool) -> anyhow::Result<()> {
    let rows = inspect::shard_rows(cluster, table).await?;
    if json {
        return print_json(&rows);
    }
    let text: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.table.to_string(),
                r.shard_id.to_string(),
                r.shard_index.to_string(),
                r.shard_table.to_string(),
                format!("{} ({})", r.node_id, r.node_address),
                human_bytes(r.size_bytes),
            ]
        })
        .collect();
    print_table(
        &["table", "shard", "index", "shard table", "node", "size"],
        &text,
    );
    Ok(())
}

async fn shard(cluster: &Cluster, command: ShardCommand) -> anyhow::Result<()> {
    match command {
        ShardCommand::List { table, json } => {
            shard_list(cluster, table.as_deref(), json.json).await
        }
        ShardCommand::Move {
            shard,
            transfer,
            mode,
        } => {
            crate::transfer::run(
                cluster,
                shard,
                Operation::Move,
                crate::transfer::mode(mode),
                &transfer,
            )
            .await
        }
        ShardCommand::Copy { shard, transfer } => {
            crate::transfer::run(
                cluster,
                shard,
                Operation::Copy,
                Mode::ForceLogical,
                &transfer,
            )
            .await
        }
        ShardCommand::Cancel { operation } => crate::transfer::cancel(cluster, operation).await,
    }
}

async fn schema(cluster: &Cluster, command: SchemaCommand) -> anyhow::Result<()> {
    let (report, json) = match command {
        SchemaCommand::Move {
            schema,
            transfer,
            mode,
        } => {
            let shard = crate::transfer::schema_anchor(cluster, &schema).await?;
            return crate::transfer::run(
                cluster,
                shard,
                Operation::Move,
                crate::transfer::mode(mode),
                &transfer,
            )
            .await;
        }
        SchemaCommand::Distribute { schema, json } => (
            shoal_cluster::distribute_schema(cluster, &schema).await?,
            json.json,
        ),
        SchemaCommand::Sync { schema, json } => (
            shoal_cluster::sync_schema(cluster, &schema).await?,
            json.json,
        ),
    };
    if json {
        return print_json(&report);
    }
    let names: Vec<String> = report.tables.iter().map(ToString::to_string).collect();
    println!(
        "schema {}: {} table(s) placed on node {} ({}){}; moved {} row(s)",
        report.schema,
        names.len(),
        report.node_id,
        report.node_address,
        if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        },
        report.rows_moved
    );
    Ok(())
}
