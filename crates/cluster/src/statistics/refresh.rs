//! Carries out [`super::plan_table`]: reads what the nodes and the coordinator have, analyzes
//! shards on their nodes (every node at once), and gives the coordinator's relations new
//! statistics by the coordinator's [`Method`].

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use futures_util::future::join_all;
use serde::Serialize;
use tokio_postgres::Client;

use super::restore::{read_statistics, restore_shard, NodeStatistics};
use super::{
    node_analysis, plan_table, CoordinatorRelation, Method, NodeAnalysis, NodeShard,
    ShardObservation, TableObservation, TablePlan, TEXT_FORMAT_SETTINGS,
};
use crate::error::{ClusterError, PgContext};
use crate::layout;
use crate::resolve::resolve_relation;
use crate::Cluster;
use shoal_catalog::model::{self, DistributedTable, Node, ShardPlacement, TableKind};
use shoal_sql::QualifiedName;

/// Which statistics to look at.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Tables by name as in SQL; empty: every hash-distributed and distributed schema's table.
    pub tables: Vec<String>,
    /// Only these shards, and not the tables' own statistics (a move changes where a shard's
    /// rows are, not what they are).
    pub shards: Vec<i64>,
    /// Refresh whatever the counters say.
    pub force: bool,
}

impl Scope {
    pub fn shards(shards: Vec<i64>) -> Scope {
        Scope {
            shards,
            ..Scope::default()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: QualifiedName,
    pub shards: usize,
    /// Shards analyzed on their nodes.
    pub analyzed_on_nodes: usize,
    /// Shards whose coordinator relations got new statistics.
    pub refreshed: usize,
    /// The table's own statistics were refreshed.
    pub table_refreshed: bool,
    /// Shards left as they were because their node could not be read.
    pub unreachable: Vec<i64>,
    pub errors: Vec<String>,
    pub elapsed_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatisticsReport {
    pub method: Method,
    pub tables: Vec<TableReport>,
    pub elapsed_ms: f64,
}

impl StatisticsReport {
    pub fn errors(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|t| t.errors.iter().map(move |e| format!("{}: {e}", t.table)))
            .collect()
    }
}

/// One shard as the refresh sees it.
pub(super) struct Shard {
    pub(super) placement: ShardPlacement,
    /// The shard's partitioned table on the coordinator.
    pub(super) middle: QualifiedName,
}

struct Table {
    table: DistributedTable,
    shards: Vec<Shard>,
}

/// After tables were distributed: their new foreign tables have no statistics and their shards
/// were just written, so the nodes analyze them and the coordinator takes theirs. The tables
/// are distributed either way: a failure is a warning, and `shoal analyze` retries.
pub(crate) async fn refresh_after_distributing(cluster: &Cluster, tables: Vec<QualifiedName>) {
    let scope = Scope {
        tables: tables.iter().map(QualifiedName::quoted).collect(),
        ..Scope::default()
    };
    for warning in refresh_or_warnings(cluster, &scope).await {
        tracing::warn!(%warning, "statistics after distributing");
    }
}

/// [`refresh`] as the last step of another operation, which stands whatever happens here: what
/// went wrong, as warnings that say how to retry.
pub async fn refresh_or_warnings(cluster: &Cluster, scope: &Scope) -> Vec<String> {
    let errors = match refresh(cluster, scope, |_| {}).await {
        Ok(report) => report.errors(),
        Err(error) => vec![error.to_string()],
    };
    errors
        .into_iter()
        .map(|e| format!("statistics not refreshed: {e} (run `shoal analyze`)"))
        .collect()
}

/// Refreshes the statistics in `scope` that went stale; `progress` hears of each table done.
pub async fn refresh(
    cluster: &Cluster,
    scope: &Scope,
    mut progress: impl FnMut(&TableReport),
) -> Result<StatisticsReport, ClusterError> {
    let started = Instant::now();
    let version: i32 = cluster
        .client()
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let method = Method::for_version(version);
    let tables = load_tables(cluster, scope).await?;
    let nodes: HashMap<i32, Node> = model::list_nodes(cluster.client())
        .await?
        .into_iter()
        .map(|n| (n.node_id, n))
        .collect();

    // Every node at once: what it has of its shards, analyzing those that need it (step 1).
    let mut on_node: BTreeMap<i32, Vec<QualifiedName>> = BTreeMap::new();
    for table in &tables {
        for shard in &table.shards {
            on_node
                .entry(shard.placement.node_id)
                .or_default()
                .push(shard.placement.shard_table.clone());
        }
    }
    let label = format!("{} statistics", cluster.label());
    let observed = join_all(on_node.into_iter().map(|(node_id, names)| {
        let node = nodes.get(&node_id).cloned();
        let label = label.clone();
        async move {
            let result = match node {
                Some(node) => analyze_on_node(cluster, &node, &label, &names, scope.force).await,
                None => Err(ClusterError::UnknownNode(node_id.to_string())),
            };
            (node_id, result)
        }
    }))
    .await;
    let mut node_clients: HashMap<i32, (Client, i32)> = HashMap::new();
    let mut node_shards: HashMap<(i32, QualifiedName), (NodeAnalysis, NodeShard)> = HashMap::new();
    let mut node_errors: HashMap<i32, String> = HashMap::new();
    for (node_id, result) in observed {
        match result {
            Ok((client, node_version, shards)) => {
                node_clients.insert(node_id, (client, node_version));
                for (name, analysis, shard) in shards {
                    node_shards.insert((node_id, name), (analysis, shard));
                }
            }
            Err(error) => {
                tracing::warn!(node_id, %error, "statistics: node not read");
                node_errors.insert(node_id, error.to_string());
            }
        }
    }

    // Step 2, planned against what the coordinator has.
    let coordinator = cluster.coordinator(&label).await?;
    coordinator
        .batch_execute(&format!("{TEXT_FORMAT_SETTINGS}; SET lock_timeout = '10s'"))
        .await?;
    let mut plans = Vec::new();
    for table in &tables {
        let observation = observe_coordinator(&coordinator, table, &node_shards, scope).await?;
        plans.push(plan_table(&observation, method, scope.force));
    }

    // Every node at once: the statistics the coordinator will copy.
    let mut reads: BTreeMap<i32, Vec<QualifiedName>> = BTreeMap::new();
    if method == Method::Restore {
        for (table, plan) in tables.iter().zip(&plans) {
            for action in &plan.shards {
                let shard = shard_of(table, action.shard_id);
                reads
                    .entry(shard.placement.node_id)
                    .or_default()
                    .push(shard.placement.shard_table.clone());
            }
        }
    }
    let done = join_all(reads.into_iter().map(|(node_id, read)| {
        let client = node_clients.get(&node_id);
        async move {
            let Some((client, node_version)) = client else {
                return (node_id, Err("not reachable".to_string()));
            };
            let result = read_statistics(client, *node_version, &read).await;
            (node_id, result.map_err(|e| e.to_string()))
        }
    }))
    .await;
    let mut copied: HashMap<(i32, QualifiedName), NodeStatistics> = HashMap::new();
    for (node_id, result) in done {
        match result {
            Ok(statistics) => {
                for (name, stats) in statistics {
                    copied.insert((node_id, name), stats);
                }
            }
            Err(error) => {
                node_errors.insert(node_id, error);
            }
        }
    }

    let mut reports = Vec::new();
    for (table, plan) in tables.iter().zip(&plans) {
        let table_started = Instant::now();
        let mut report = TableReport {
            table: table.table.name.clone(),
            shards: table.shards.len(),
            analyzed_on_nodes: table
                .shards
                .iter()
                .filter(|s| {
                    node_shards
                        .get(&(s.placement.node_id, s.placement.shard_table.clone()))
                        .is_some_and(|(analysis, _)| *analysis != NodeAnalysis::None)
                })
                .count(),
            refreshed: 0,
            table_refreshed: false,
            unreachable: plan.unreachable.clone(),
            errors: Vec::new(),
            elapsed_ms: 0.0,
        };
        if !plan.is_empty() {
            apply_plan(
                &coordinator,
                method,
                table,
                plan,
                &copied,
                &node_errors,
                &mut report,
            )
            .await;
        }
        report.elapsed_ms = table_started.elapsed().as_secs_f64() * 1000.0;
        progress(&report);
        reports.push(report);
    }
    Ok(StatisticsReport {
        method,
        tables: reports,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

fn shard_of(table: &Table, shard_id: i64) -> &Shard {
    table
        .shards
        .iter()
        .find(|s| s.placement.shard_id == shard_id)
        .expect("planned from the table's own shards")
}

async fn load_tables(cluster: &Cluster, scope: &Scope) -> Result<Vec<Table>, ClusterError> {
    let all = model::list_tables(cluster.client()).await?;
    let mut wanted: Option<Vec<u32>> = None;
    if !scope.tables.is_empty() {
        let mut relids = Vec::new();
        for text in &scope.tables {
            let relation = resolve_relation(cluster.client(), text).await?;
            match all.iter().find(|t| t.relid == relation.relid) {
                Some(t) if t.kind != TableKind::Reference => relids.push(t.relid),
                Some(t) => {
                    return Err(ClusterError::Unsupported(format!(
                        "{} is a reference table: a real table on the coordinator, which \
                         autovacuum analyzes; run ANALYZE {} for it",
                        t.name, t.name
                    )))
                }
                None => return Err(ClusterError::NotDistributed(relation.name.to_string())),
            }
        }
        wanted = Some(relids);
    }
    let mut placements: HashMap<i32, Vec<ShardPlacement>> = HashMap::new();
    for placement in model::all_placements(cluster.client()).await? {
        if scope.shards.is_empty() || scope.shards.contains(&placement.shard_id) {
            placements
                .entry(placement.table_id)
                .or_default()
                .push(placement);
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| t.kind != TableKind::Reference)
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.relid)))
        .filter_map(|table| {
            let shards: Vec<Shard> = placements
                .remove(&table.table_id)?
                .into_iter()
                .map(|placement| Shard {
                    middle: match table.kind {
                        TableKind::Schema => table.name.clone(),
                        _ => layout::shard_partition(&placement.shard_table),
                    },
                    placement,
                })
                .collect();
            Some(Table { table, shards })
        })
        .collect())
}

pub(super) fn split(names: &[QualifiedName]) -> (Vec<String>, Vec<String>) {
    names
        .iter()
        .map(|n| (n.schema.clone(), n.name.clone()))
        .unzip()
}

/// A node's connection, its version, and what it reports of `names` once it analyzed those
/// that needed it (all in one local `ANALYZE`).
async fn analyze_on_node(
    cluster: &Cluster,
    node: &Node,
    label: &str,
    names: &[QualifiedName],
    force: bool,
) -> Result<(Client, i32, Vec<(QualifiedName, NodeAnalysis, NodeShard)>), ClusterError> {
    let client = cluster.node_client(node, label).await?;
    client.batch_execute(TEXT_FORMAT_SETTINGS).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let before = observe_node(&client, node, names).await?;
    let analyses: Vec<(QualifiedName, NodeAnalysis)> = before
        .iter()
        .map(|(name, shard)| (name.clone(), node_analysis(shard, force)))
        .collect();
    let analyze: Vec<String> = analyses
        .iter()
        .filter(|(_, analysis)| *analysis != NodeAnalysis::None)
        .map(|(name, _)| name.quoted())
        .collect();
    if analyze.is_empty() {
        let shards = analyses
            .into_iter()
            .zip(before)
            .map(|((name, analysis), (_, shard))| (name, analysis, shard))
            .collect();
        return Ok((client, version, shards));
    }
    client
        .batch_execute(&format!("ANALYZE {}", analyze.join(", ")))
        .await
        .context(|| format!("analyzing shards on node {}", node.address()))?;
    let mut after: HashMap<QualifiedName, NodeShard> = observe_node(&client, node, names)
        .await?
        .into_iter()
        .collect();
    let shards = analyses
        .into_iter()
        .filter_map(|(name, analysis)| {
            let shard = after.remove(&name)?;
            Some((name, analysis, shard))
        })
        .collect();
    Ok((client, version, shards))
}

async fn observe_node(
    client: &Client,
    node: &Node,
    names: &[QualifiedName],
) -> Result<Vec<(QualifiedName, NodeShard)>, ClusterError> {
    let (schemas, tables) = split(names);
    let rows = client
        .query(
            "SELECT t.schema_name, t.table_name, c.reltuples::float8, c.relpages,
                    coalesce(s.n_live_tup, 0), coalesce(s.n_mod_since_analyze, 0),
                    coalesce(s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL, false)
             FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name)
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
             LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid",
            &[&schemas, &tables],
        )
        .await
        .context(|| format!("reading shard statistics on node {}", node.address()))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                NodeShard {
                    reltuples: row.get(2),
                    relpages: row.get(3),
                    live_rows: row.get(4),
                    modified_since_analyze: row.get(5),
                    analyzed: row.get(6),
                },
            )
        })
        .collect())
}

async fn observe_coordinator(
    coordinator: &Client,
    table: &Table,
    node_shards: &HashMap<(i32, QualifiedName), (NodeAnalysis, NodeShard)>,
    scope: &Scope,
) -> Result<TableObservation, ClusterError> {
    // Every relation of the table, each with whether its statistics are the inherited kind.
    let mut names = vec![table.table.name.quoted()];
    let mut inherited = vec![true];
    for shard in &table.shards {
        names.push(shard.placement.shard_table.quoted());
        inherited.push(false);
        names.push(shard.middle.quoted());
        inherited.push(true);
    }
    let rows = coordinator
        .query(
            "SELECT t.i::int, coalesce(c.reltuples::float8, -1), coalesce(c.relpages, 0),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_stats s
                            WHERE s.schemaname = n.nspname AND s.tablename = c.relname
                              AND s.inherited = t.inherited)
             FROM unnest($1::text[], $2::boolean[]) WITH ORDINALITY AS t(name, inherited, i)
             LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(t.name)
             LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            &[&names, &inherited],
        )
        .await
        .context(|| {
            format!(
                "reading the coordinator's statistics of {}",
                table.table.name
            )
        })?;
    let mut relations = vec![CoordinatorRelation::NONE; names.len()];
    for row in rows {
        let i = row.get::<_, i32>(0) as usize - 1;
        relations[i] = CoordinatorRelation {
            reltuples: row.get(1),
            relpages: row.get(2),
            has_columns: row.get(3),
        };
    }
    Ok(TableObservation {
        has_parent_level: table.table.kind == TableKind::Hash && scope.shards.is_empty(),
        parent: relations[0],
        shards: table
            .shards
            .iter()
            .enumerate()
            .map(|(i, shard)| {
                let node = node_shards
                    .get(&(shard.placement.node_id, shard.placement.shard_table.clone()));
                ShardObservation {
                    shard_id: shard.placement.shard_id,
                    analysis: node.map_or(NodeAnalysis::None, |(analysis, _)| *analysis),
                    node: node.map(|(_, shard)| shard.clone()),
                    leaf: relations[1 + 2 * i],
                    middle: relations[2 + 2 * i],
                }
            })
            .collect(),
    })
}

async fn apply_plan(
    coordinator: &Client,
    method: Method,
    table: &Table,
    plan: &TablePlan,
    copied: &HashMap<(i32, QualifiedName), NodeStatistics>,
    node_errors: &HashMap<i32, String>,
    report: &mut TableReport,
) {
    for action in &plan.shards {
        let shard = shard_of(table, action.shard_id);
        let node_id = shard.placement.node_id;
        if let Some(error) = node_errors.get(&node_id) {
            report.errors.push(format!(
                "shard {}: node {node_id}: {error}",
                action.shard_id
            ));
            continue;
        }
        let result = match method {
            Method::Restore => match copied.get(&(node_id, shard.placement.shard_table.clone())) {
                Some(stats) => restore_shard(coordinator, shard, action, stats).await,
                None => Err(ClusterError::Unsupported(format!(
                    "the node has no table {}",
                    shard.placement.shard_table
                ))),
            },
            // One ANALYZE of the shard's partitioned table does its foreign table too.
            _ if action.middle => analyze(coordinator, &shard.middle, false).await,
            _ => analyze(coordinator, &shard.placement.shard_table, false).await,
        };
        match result {
            Ok(()) => report.refreshed += 1,
            Err(error) => report
                .errors
                .push(format!("shard {}: {error}", action.shard_id)),
        }
    }
    let parent = if plan.whole_table {
        Some(analyze(coordinator, &table.table.name, false).await)
    } else if plan.parent {
        Some(analyze(coordinator, &table.table.name, true).await)
    } else {
        None
    };
    match parent {
        Some(Ok(())) => {
            report.table_refreshed = true;
            if plan.whole_table {
                report.refreshed = table.shards.len();
            }
        }
        Some(Err(error)) => report.errors.push(error.to_string()),
        None => {}
    }
}

/// `ANALYZE`, or with `only` (PostgreSQL 18) `ANALYZE ONLY`: the table's own statistics, from
/// a sample over its partitions, without analyzing each of them.
async fn analyze(
    coordinator: &Client,
    relation: &QualifiedName,
    only: bool,
) -> Result<(), ClusterError> {
    let only = if only { "ONLY " } else { "" };
    coordinator
        .batch_execute(&format!("ANALYZE {only}{}", relation.quoted()))
        .await
        .context(|| format!("ANALYZE {only}{relation}"))
}
