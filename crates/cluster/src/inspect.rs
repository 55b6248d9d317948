//! Read-only views of the cluster for `table list` and `shard list`.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::ClusterError;
use crate::resolve::resolve_relation;
use crate::Cluster;
use shoal_catalog::model::{self, TableKind};
use shoal_sql::QualifiedName;

#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub table: QualifiedName,
    pub kind: TableKind,
    pub distribution_column: Option<String>,
    pub shard_count: i32,
    pub colocation_id: i32,
    pub nodes: Vec<i32>,
    pub size_bytes: Option<i64>,
}

pub async fn table_summaries(cluster: &Cluster) -> Result<Vec<TableSummary>, ClusterError> {
    let placements = model::all_placements(cluster.client()).await?;
    let mut out = Vec::new();
    for table in model::list_tables(cluster.client()).await? {
        let mine: Vec<_> = placements
            .iter()
            .filter(|p| p.table_id == table.table_id)
            .collect();
        let mut nodes: Vec<i32> = mine.iter().map(|p| p.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let sizes: Vec<i64> = mine.iter().filter_map(|p| p.size_bytes).collect();
        out.push(TableSummary {
            table: table.name,
            kind: table.kind,
            distribution_column: table.distribution_column,
            shard_count: table.shard_count,
            colocation_id: table.colocation_id,
            nodes,
            size_bytes: (!sizes.is_empty()).then(|| sizes.iter().sum()),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    pub table: QualifiedName,
    pub shard_id: i64,
    pub shard_index: i32,
    pub shard_table: QualifiedName,
    pub node_id: i32,
    pub node_address: String,
    pub size_bytes: Option<i64>,
}

/// Every placement (of one table, or all), with sizes measured now on each reachable node and
/// recorded in the catalog for the `shoal.shards` view.
pub async fn shard_rows(
    cluster: &Cluster,
    table: Option<&str>,
) -> Result<Vec<ShardRow>, ClusterError> {
    let tables = model::list_tables(cluster.client()).await?;
    let only = match table {
        Some(text) => {
            let relation = resolve_relation(cluster.client(), text).await?;
            let found = tables
                .iter()
                .find(|t| t.relid == relation.relid)
                .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?;
            Some(found.table_id)
        }
        None => None,
    };
    let nodes: HashMap<i32, _> = model::list_nodes(cluster.client())
        .await?
        .into_iter()
        .map(|n| (n.node_id, n))
        .collect();
    let mut placements: Vec<_> = model::all_placements(cluster.client())
        .await?
        .into_iter()
        .filter(|p| only.is_none_or(|id| id == p.table_id))
        .collect();

    let mut by_node: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in placements.iter().enumerate() {
        by_node.entry(p.node_id).or_default().push(i);
    }
    for (node_id, indexes) in by_node {
        let Some(node) = nodes.get(&node_id) else {
            continue;
        };
        let Ok(client) = cluster.node_client(node, "shoal shard list").await else {
            continue;
        };
        let names: Vec<String> = indexes
            .iter()
            .map(|&i| placements[i].shard_table.quoted())
            .collect();
        let Ok(rows) = client
            .query(
                "SELECT n.i::int, pg_total_relation_size(to_regclass(n.name))
                 FROM unnest($1::text[]) WITH ORDINALITY n(name, i)",
                &[&names],
            )
            .await
        else {
            continue;
        };
        for row in rows {
            let position = row.get::<_, i32>(0) as usize - 1;
            let Some(size) = row.get::<_, Option<i64>>(1) else {
                continue;
            };
            let placement = &mut placements[indexes[position]];
            placement.size_bytes = Some(size);
            model::record_size(cluster.client(), placement.shard_id, node_id, size).await?;
        }
    }

    let names: HashMap<i32, &QualifiedName> =
        tables.iter().map(|t| (t.table_id, &t.name)).collect();
    Ok(placements
        .into_iter()
        .filter_map(|p| {
            let table = (*names.get(&p.table_id)?).clone();
            Some(ShardRow {
                table,
                shard_id: p.shard_id,
                shard_index: p.shard_index,
                shard_table: p.shard_table,
                node_id: p.node_id,
                node_address: nodes
                    .get(&p.node_id)
                    .map(|n| n.address())
                    .unwrap_or_default(),
                size_bytes: p.size_bytes,
            })
        })
        .collect())
}
