//! The rebalancer wired to the catalog: reads nodes, shard groups and their sizes, plans with a
//! strategy stored in `shoal.rebalance_strategy`, and stores the plan's task graph as a job for
//! the executor.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::error::JobError;
use crate::store::{self, create_job, JobKind, JobOptions, NewTask};
use shoal_catalog::model::{self, DistributedTable, Node, ShardPlacement, TableKind};
use shoal_cluster::{inspect, nodes, resolve_node, Cluster};
use shoal_rebalance::{
    build_task_graph, plan, CostKind, CustomStrategy, GraphOptions, NodeState, Plan, PlanOptions,
    ReferenceCopy, ShardGroup, Strategy, TaskOp, TaskSpec,
};

type Result<T> = std::result::Result<T, JobError>;

/// A row of `shoal.rebalance_strategy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyRow {
    pub name: String,
    pub is_default: bool,
    pub cost: serde_json::Value,
    pub capacity_overrides: serde_json::Value,
    pub disallowed: serde_json::Value,
    pub default_threshold: f64,
    pub minimum_threshold: f64,
    pub improvement_threshold: f64,
}

/// The planner's strategy for a stored row. A row that says exactly what a built-in strategy
/// does is that built-in (so plans name it plainly); anything else is a custom strategy.
pub fn strategy_from_row(row: &StrategyRow) -> Result<Strategy> {
    let bad = |reason: String| JobError::BadStrategy {
        name: row.name.clone(),
        reason,
    };
    let cost: CostKind = serde_json::from_value(row.cost.clone())
        .map_err(|e| bad(format!("cost: {e} (expected {{\"kind\": \"shard_count\"}} or {{\"kind\": \"disk_size\", \"base_cost_bytes\": N}})")))?;
    let capacity_overrides: Vec<(i32, f64)> =
        serde_json::from_value(row.capacity_overrides.clone()).map_err(|e| {
            bad(format!(
                "capacity_overrides: {e} (expected [[node_id, capacity], ...])"
            ))
        })?;
    let disallowed: Vec<(i32, i32)> =
        serde_json::from_value(row.disallowed.clone()).map_err(|e| {
            bad(format!(
                "disallowed: {e} (expected [[colocation_id, node_id], ...])"
            ))
        })?;
    let custom = CustomStrategy {
        name: row.name.clone(),
        cost,
        capacity_overrides: capacity_overrides.into_iter().collect(),
        disallowed: disallowed.into_iter().collect(),
        default_threshold: row.default_threshold,
        minimum_threshold: row.minimum_threshold,
        improvement_threshold: row.improvement_threshold,
    };
    let strategy = match Strategy::builtin(&row.name) {
        Some(builtin)
            if custom.capacity_overrides.is_empty()
                && custom.disallowed.is_empty()
                && custom.cost == builtin.cost_kind()
                && custom.default_threshold == builtin.default_threshold()
                && custom.minimum_threshold == builtin.minimum_threshold()
                && custom.improvement_threshold == builtin.improvement_threshold() =>
        {
            builtin
        }
        _ => Strategy::Custom(custom),
    };
    strategy.validate().map_err(|e| bad(e.to_string()))?;
    Ok(strategy)
}

pub async fn list_strategies(client: &impl GenericClient) -> Result<Vec<StrategyRow>> {
    Ok(client
        .query(
            "SELECT name, is_default, cost, capacity_overrides, disallowed, default_threshold,
                    minimum_threshold, improvement_threshold
             FROM shoal.rebalance_strategy ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| StrategyRow {
            name: r.get(0),
            is_default: r.get(1),
            cost: r.get(2),
            capacity_overrides: r.get(3),
            disallowed: r.get(4),
            default_threshold: r.get(5),
            minimum_threshold: r.get(6),
            improvement_threshold: r.get(7),
        })
        .collect())
}

/// Stores a new strategy. It is checked as the planner would read it, and every node and
/// colocation group it names must exist, before anything is written; with `is_default` set it
/// becomes the default in the same transaction.
pub async fn add_strategy(client: &mut Client, row: &StrategyRow) -> Result<()> {
    let bad = |reason: String| JobError::BadStrategy {
        name: row.name.clone(),
        reason,
    };
    if row.name.trim().is_empty() {
        return Err(bad("the name is empty".into()));
    }
    // A built-in's definition names no node and no colocation group.
    let (nodes, groups): (Vec<i32>, Vec<i32>) = match strategy_from_row(row)? {
        Strategy::Custom(custom) => (
            custom
                .capacity_overrides
                .keys()
                .copied()
                .chain(custom.disallowed.iter().map(|(_, node)| *node))
                .collect(),
            custom.disallowed.iter().map(|(group, _)| *group).collect(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let missing = client
        .query_one(
            "SELECT (SELECT min(n) FROM unnest($1::int[]) n
                     WHERE NOT EXISTS (SELECT 1 FROM shoal.node x WHERE x.node_id = n)),
                    (SELECT min(g) FROM unnest($2::int[]) g
                     WHERE NOT EXISTS (SELECT 1 FROM shoal.colocation_group c WHERE c.colocation_id = g))",
            &[&nodes, &groups],
        )
        .await?;
    if let Some(node) = missing.get::<_, Option<i32>>(0) {
        return Err(bad(format!(
            "node {node} does not exist (see `shoal node list`)"
        )));
    }
    if let Some(group) = missing.get::<_, Option<i32>>(1) {
        return Err(bad(format!(
            "colocation group {group} does not exist (see `shoal table list`)"
        )));
    }
    let tx = client.transaction().await?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM shoal.rebalance_strategy WHERE name = $1)",
            &[&row.name],
        )
        .await?
        .get(0);
    if exists {
        return Err(JobError::BadStrategy {
            name: row.name.clone(),
            reason: "a strategy of that name exists; remove it first \
                     (`shoal rebalance strategy remove`) or choose another name"
                .into(),
        });
    }
    if row.is_default {
        tx.execute(
            "UPDATE shoal.rebalance_strategy SET is_default = false WHERE is_default",
            &[],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO shoal.rebalance_strategy (name, is_default, cost, capacity_overrides,
                disallowed, default_threshold, minimum_threshold, improvement_threshold)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &row.name,
            &row.is_default,
            &row.cost,
            &row.capacity_overrides,
            &row.disallowed,
            &row.default_threshold,
            &row.minimum_threshold,
            &row.improvement_threshold,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes a strategy; the default one stays until another is made the default.
pub async fn remove_strategy(client: &impl GenericClient, name: &str) -> Result<()> {
    let rows = list_strategies(client).await?;
    let Some(row) = rows.iter().find(|r| r.name == name) else {
        return Err(unknown_strategy(name, &rows));
    };
    if row.is_default {
        return Err(JobError::BadStrategy {
            name: name.to_string(),
            reason: "it is the default strategy; make another one the default first \
                     (`shoal rebalance strategy default NAME`)"
                .into(),
        });
    }
    client
        .execute(
            "DELETE FROM shoal.rebalance_strategy WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(())
}

/// Makes a strategy the one `rebalance plan|start` and `node drain` use when none is named.
pub async fn set_default_strategy(client: &mut Client, name: &str) -> Result<()> {
    let rows = list_strategies(&*client).await?;
    if !rows.iter().any(|r| r.name == name) {
        return Err(unknown_strategy(name, &rows));
    }
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE shoal.rebalance_strategy SET is_default = false WHERE is_default AND name <> $1",
        &[&name],
    )
    .await?;
    tx.execute(
        "UPDATE shoal.rebalance_strategy SET is_default = true WHERE name = $1",
        &[&name],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn unknown_strategy(name: &str, rows: &[StrategyRow]) -> JobError {
    JobError::UnknownStrategy {
        name: name.to_string(),
        available: rows
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The strategy of that name, or the default one.
pub async fn load_strategy(client: &impl GenericClient, name: Option<&str>) -> Result<Strategy> {
    let rows = list_strategies(client).await?;
    let found = match name {
        Some(name) => rows.iter().find(|r| r.name == name),
        None => rows.iter().find(|r| r.is_default),
    };
    match (found, name) {
        (Some(row), _) => strategy_from_row(row),
        // No default row (someone removed it): by_shard_count, as on a fresh catalog.
        (None, None) => Ok(Strategy::ByShardCount),
        (None, Some(name)) => Err(unknown_strategy(name, &rows)),
    }
}

/// The shard groups of the hash-distributed tables and distributed schemas: every shard of one
/// index in one colocation group, named by the shard of the group's first table.
pub fn shard_groups(tables: &[DistributedTable], placements: &[ShardPlacement]) -> Vec<ShardGroup> {
    let table_of: BTreeMap<i32, &DistributedTable> =
        tables.iter().map(|t| (t.table_id, t)).collect();
    // (colocation, index) -> (table id of the anchor, anchor shard, node, size)
    let mut groups: BTreeMap<(i32, i32), (i32, i64, i32, i64)> = BTreeMap::new();
    for placement in placements {
        let Some(table) = table_of.get(&placement.table_id) else {
            continue;
        };
        if table.kind == TableKind::Reference {
            continue;
        }
        let size = placement.size_bytes.unwrap_or(0).max(0);
        groups
            .entry((table.colocation_id, placement.shard_index))
            .and_modify(|group| {
                group.3 += size;
                if table.table_id < group.0 {
                    group.0 = table.table_id;
                    group.1 = placement.shard_id;
                    group.2 = placement.node_id;
                }
            })
            .or_insert((table.table_id, placement.shard_id, placement.node_id, size));
    }
    groups
        .into_iter()
        .map(
            |((colocation_id, shard_index), (_, anchor, node_id, size_bytes))| ShardGroup {
                colocation_id,
                shard_index,
                anchor_shard_id: anchor,
                node_id,
                size_bytes,
            },
        )
        .collect()
}

/// The reference tables that nodes able to take shards lack (shards there may have foreign keys
/// to them).
pub fn reference_copies(
    tables: &[DistributedTable],
    placements: &[ShardPlacement],
    nodes: &[Node],
) -> Vec<ReferenceCopy> {
    let mut copies = Vec::new();
    for table in tables.iter().filter(|t| t.kind == TableKind::Reference) {
        let placed: BTreeSet<i32> = placements
            .iter()
            .filter(|p| p.table_id == table.table_id)
            .map(|p| p.node_id)
            .collect();
        for node in nodes.iter().filter(|n| n.accepts_shards()) {
            if !placed.contains(&node.node_id) {
                copies.push(ReferenceCopy {
                    table_id: table.table_id,
                    node_id: node.node_id,
                });
            }
        }
    }
    copies
}

/// A task of a planned job, as it will be stored.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTask {
    #[serde(flatten)]
    pub spec: TaskSpec,
    pub description: String,
    pub bytes_total: i64,
}

/// What a rebalance would do now.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRebalance {
    pub strategy: String,
    pub plan: Plan,
    pub reference_copies: Vec<ReferenceCopy>,
    pub tasks: Vec<PlannedTask>,
}

/// Measures the shard sizes on the nodes, then plans with the requested strategy and builds the
/// task graph. Changes nothing but the recorded sizes.
pub async fn plan_rebalance(cluster: &Cluster, options: &JobOptions) -> Result<PlannedRebalance> {
    inspect::shard_rows(cluster, None).await?;
    let client = cluster.client();
    let strategy = load_strategy(client, options.strategy.as_deref()).await?;
    let nodes = model::list_nodes(client).await?;
    let tables = model::list_tables(client).await?;
    let placements = model::all_placements(client).await?;
    let node_states: Vec<NodeState> = nodes
        .iter()
        .map(|n| NodeState {
            node_id: n.node_id,
            is_active: n.is_active,
            should_have_shards: n.should_have_shards,
            capacity: 1.0,
        })
        .collect();
    let groups = shard_groups(&tables, &placements);
    let copies = reference_copies(&tables, &placements, &nodes);
    let plan_options = PlanOptions {
        strategy: strategy.clone(),
        threshold: options.threshold,
        improvement_threshold: options.improvement_threshold,
        drain_only: options.drain_only,
        max_moves: options.max_moves,
    };
    let plan = plan(&node_states, &groups, &plan_options)?;
    let specs = build_task_graph(
        &plan,
        &copies,
        &GraphOptions {
            parallel_colocated: options.parallel_colocated,
            parallel_reference: options.parallel_reference,
        },
    );
    let mut names: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut sorted: Vec<&DistributedTable> = tables.iter().collect();
    sorted.sort_by_key(|t| t.table_id);
    for table in &sorted {
        names
            .entry(table.colocation_id)
            .or_default()
            .push(table.name.to_string());
    }
    let table_name = |table_id: i32| {
        tables
            .iter()
            .find(|t| t.table_id == table_id)
            .map(|t| t.name.to_string())
            .unwrap_or_else(|| format!("table {table_id}"))
    };
    let reference_size = |table_id: i32| {
        placements
            .iter()
            .filter(|p| p.table_id == table_id)
            .filter_map(|p| p.size_bytes)
            .max()
            .unwrap_or(0)
    };
    let list = |nodes: &[i32]| {
        nodes
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tasks = specs
        .into_iter()
        .map(|spec| {
            let (description, bytes_total) = match &spec.op {
                TaskOp::Move(mv) => (
                    format!(
                        "move shard {} ({}) from node {} to node {}",
                        mv.anchor_shard_id,
                        names
                            .get(&mv.colocation_id)
                            .map(|n| n.join(", "))
                            .unwrap_or_default(),
                        mv.from,
                        mv.to
                    ),
                    mv.size_bytes,
                ),
                TaskOp::CopyReferenceTable(copy) => (
                    format!(
                        "copy reference table {} to node {}",
                        table_name(copy.table_id),
                        copy.node_id
                    ),
                    reference_size(copy.table_id),
                ),
                TaskOp::CopyReferenceTables { copies } => (
                    format!(
                        "copy reference tables {} to the nodes that lack them",
                        copies
                            .iter()
                            .map(|c| format!("{} to node {}", table_name(c.table_id), c.node_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    copies.iter().map(|c| reference_size(c.table_id)).sum(),
                ),
                TaskOp::CreateReferenceForeignKeys { nodes } => (
                    format!(
                        "create the foreign keys between reference tables on node(s) {}",
                        list(nodes)
                    ),
                    0,
                ),
            };
            PlannedTask {
                spec,
                description,
                bytes_total,
            }
        })
        .collect();
    Ok(PlannedRebalance {
        strategy: strategy.name().to_string(),
        plan,
        reference_copies: copies,
        tasks,
    })
}

/// A job started by [`start_rebalance`] or [`drain_node`]: `job_id` is `None` when there was
/// nothing to do.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub job_id: Option<i64>,
    #[serde(flatten)]
    pub planned: PlannedRebalance,
}

/// Refuses early (before anything changes) while another rebalance or drain is unfinished.
async fn refuse_if_busy(client: &impl GenericClient) -> Result<()> {
    if let Some(job) = store::current_rebalance_job(client).await? {
        if !job.state.is_final() {
            return Err(JobError::AlreadyRunning {
                job_id: job.job_id,
                kind: job.kind,
                state: job.state.to_string(),
            });
        }
    }
    Ok(())
}

/// Plans a rebalance and stores it as a job for the executor.
pub async fn start_rebalance(cluster: &Cluster, options: &JobOptions) -> Result<Started> {
    refuse_if_busy(cluster.client()).await?;
    let kind = if options.drain_only {
        "drain the nodes that should not have shards"
    } else {
        "rebalance"
    };
    let flags = [
        (options.parallel_colocated, ", parallel colocated"),
        (options.parallel_reference, ", parallel reference"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, text)| *text)
    .collect::<String>();
    start(cluster, JobKind::Rebalance, options, |planned| {
        format!("{kind} by {}{flags}", planned.strategy)
    })
    .await
}

/// Marks a node as one that should have no shards and starts a job that moves every shard group
/// off it.
pub async fn drain_node(cluster: &Cluster, node: &str, options: &JobOptions) -> Result<Started> {
    let target = resolve_node(cluster.client(), node).await?;
    refuse_if_busy(cluster.client()).await?;
    nodes::set_node_flags(cluster, &target.node_id.to_string(), None, Some(false)).await?;
    let options = JobOptions {
        drain_only: true,
        drain_node: Some(target.node_id),
        ..options.clone()
    };
    let description = format!("drain node {} ({})", target.node_id, target.address());
    let started = start(cluster, JobKind::Drain, &options, |_| description).await;
    if started.is_err() && target.should_have_shards {
        // Refused (no node can take its shards, say): the node is as it was.
        nodes::set_node_flags(cluster, &target.node_id.to_string(), None, Some(true)).await?;
    }
    started
}

async fn start(
    cluster: &Cluster,
    kind: JobKind,
    options: &JobOptions,
    describe: impl FnOnce(&PlannedRebalance) -> String,
) -> Result<Started> {
    let planned = plan_rebalance(cluster, options).await?;
    let description = describe(&planned);
    if planned.tasks.is_empty() {
        return Ok(Started {
            job_id: None,
            planned,
        });
    }
    let plan = serde_json::to_value(&planned.plan).map_err(|e| JobError::BadCatalog {
        what: "the plan".into(),
        reason: e.to_string(),
    })?;
    let tasks: Vec<NewTask> = planned
        .tasks
        .iter()
        .map(|t| NewTask {
            spec: &t.spec,
            description: t.description.clone(),
            bytes_total: t.bytes_total,
        })
        .collect();
    let mut client = cluster
        .coordinator(&format!("shoal {}", kind.as_str()))
        .await?;
    let job_id = create_job(&mut client, kind, &description, options, &plan, &tasks).await?;
    Ok(Started {
        job_id: Some(job_id),
        planned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sql::QualifiedName;

    fn table(table_id: i32, colocation_id: i32, kind: TableKind) -> DistributedTable {
        DistributedTable {
            table_id,
            relid: 0,
            name: QualifiedName::new("public", format!("t{table_id}")),
            kind,
            distribution_column: None,
            colocation_id,
            shard_count: 2,
        }
    }

    fn placement(shard_id: i64, table_id: i32, index: i32, node: i32, size: i64) -> ShardPlacement {
        ShardPlacement {
            shard_id,
            table_id,
            shard_index: index,
            shard_table: QualifiedName::new("public", format!("s{shard_id}")),
            node_id: node,
            size_bytes: Some(size),
        }
    }

    fn node(node_id: i32, should_have_shards: bool) -> Node {
        Node {
            node_id,
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "db".into(),
            username: "u".into(),
            is_active: true,
            should_have_shards,
            server_version_num: 150000,
            fdw_server: format!("shoal_node_{node_id}"),
        }
    }

    #[test]
    fn groups_sum_colocated_shards_and_are_named_by_the_first_table() {
        let tables = [
            table(5, 1, TableKind::Hash),
            table(3, 1, TableKind::Hash),
            table(7, 2, TableKind::Reference),
        ];
        let placements = [
            placement(11, 5, 0, 1, 100),
            placement(10, 3, 0, 1, 50),
            placement(13, 5, 1, 2, 10),
            placement(12, 3, 1, 2, 20),
            placement(20, 7, 0, 1, 999),
            placement(20, 7, 0, 2, 999),
        ];
        let groups = shard_groups(&tables, &placements);
        assert_eq!(
            groups,
            vec![
                ShardGroup {
                    colocation_id: 1,
                    shard_index: 0,
                    anchor_shard_id: 10,
                    node_id: 1,
                    size_bytes: 150
                },
                ShardGroup {
                    colocation_id: 1,
                    shard_index: 1,
                    anchor_shard_id: 12,
                    node_id: 2,
                    size_bytes: 30
                },
            ]
        );
    }

    #[test]
    fn reference_tables_go_to_nodes_that_take_shards_and_lack_them() {
        let tables = [
            table(7, 2, TableKind::Reference),
            table(3, 1, TableKind::Hash),
        ];
        let placements = [placement(20, 7, 0, 1, 8), placement(10, 3, 0, 1, 8)];
        let nodes = [node(1, true), node(2, true), node(3, false)];
        assert_eq!(
            reference_copies(&tables, &placements, &nodes),
            vec![ReferenceCopy {
                table_id: 7,
                node_id: 2
            }]
        );
    }

    fn row(name: &str, cost: serde_json::Value, thresholds: (f64, f64, f64)) -> StrategyRow {
        StrategyRow {
            name: name.to_string(),
            is_default: false,
            cost,
            capacity_overrides: serde_json::json!([]),
            disallowed: serde_json::json!([]),
            default_threshold: thresholds.0,
            minimum_threshold: thresholds.1,
            improvement_threshold: thresholds.2,
        }
    }

    #[test]
    fn the_stored_built_in_rows_are_the_built_in_strategies() {
        // As the catalog migration inserts them.
        let count = row(
            "by_shard_count",
            serde_json::json!({"kind": "shard_count"}),
            (0.0, 0.0, 0.0),
        );
        assert_eq!(strategy_from_row(&count).unwrap(), Strategy::ByShardCount);
        let disk = row(
            "by_disk_size",
            serde_json::json!({"kind": "disk_size", "base_cost_bytes": 104857600}),
            (0.1, 0.01, 0.5),
        );
        assert_eq!(strategy_from_row(&disk).unwrap(), Strategy::by_disk_size());
    }

    #[test]
    fn other_rows_are_custom_strategies_and_bad_ones_are_refused() {
        let mut custom = row(
            "by_disk_size",
            serde_json::json!({"kind": "disk_size", "base_cost_bytes": 0}),
            (0.2, 0.05, 0.5),
        );
        custom.capacity_overrides = serde_json::json!([[3, 2.0]]);
        custom.disallowed = serde_json::json!([[1, 2]]);
        let Strategy::Custom(strategy) = strategy_from_row(&custom).unwrap() else {
            panic!("a changed built-in row is a custom strategy");
        };
        assert_eq!(strategy.capacity_overrides.get(&3), Some(&2.0));
        assert!(strategy.disallowed.contains(&(1, 2)));
        assert_eq!(strategy.cost, CostKind::DiskSize { base_cost_bytes: 0 });

        let unknown_cost = row("x", serde_json::json!({"kind": "bananas"}), (0.0, 0.0, 0.0));
        assert!(strategy_from_row(&unknown_cost)
            .unwrap_err()
            .to_string()
            .contains("cost"));
        let mut bad_pairs = row(
            "x",
            serde_json::json!({"kind": "shard_count"}),
            (0.0, 0.0, 0.0),
        );
        bad_pairs.disallowed = serde_json::json!({"1": 2});
        assert!(strategy_from_row(&bad_pairs).is_err());
        let inverted = row(
            "x",
            serde_json::json!({"kind": "shard_count"}),
            (0.1, 0.2, 0.0),
        );
        assert!(strategy_from_row(&inverted)
            .unwrap_err()
            .to_string()
            .contains("minimum_threshold"));
    }
}
