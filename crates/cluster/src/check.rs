//! `shoal table check`: every shard, replica and coordinator relation of a managed table read
//! back and compared with the catalog's record of the table (`shoal_ddl::verify`).

use std::collections::hash_map::{Entry, HashMap};

use serde::Serialize;

use crate::error::{ClusterError, PgContext};
use crate::resolve::resolve_relation;
use crate::Cluster;
use shoal_catalog::model::{self, TableKind};
use shoal_ddl::definition::{introspect, TableDef};
use shoal_ddl::verify::{actual, differences, expected, Holder};
use shoal_sql::QualifiedName;

#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub table: QualifiedName,
    /// Where each difference is (`coordinator`, `shard 102008 on node 2`, ...) and what it is.
    pub differences: Vec<(String, String)>,
    /// Relations that could not be read (an unreachable node), with the reason.
    pub unchecked: Vec<(String, String)>,
}

impl TableCheck {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty() && self.unchecked.is_empty()
    }
}

/// Checks one table (`Some`) or every managed table.
pub async fn check_tables(
    cluster: &Cluster,
    table: Option<&str>,
) -> Result<Vec<TableCheck>, ClusterError> {
    let tables = match table {
        Some(text) => {
            let relation = resolve_relation(cluster.client(), text).await?;
            vec![model::get_table_by_relid(cluster.client(), relation.relid)
                .await?
                .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?]
        }
        None => model::list_tables(cluster.client()).await?,
    };
    let nodes: HashMap<i32, model::Node> = model::list_nodes(cluster.client())
        .await?
        .into_iter()
        .map(|n| (n.node_id, n))
        .collect();
    let mut clients = HashMap::new();
    let mut out = Vec::new();
    for table in tables {
        let record: TableDef =
            serde_json::from_value(model::original_ddl(cluster.client(), table.table_id).await?)
                .map_err(|e| {
                    ClusterError::Unsupported(format!(
                        "the catalog's record of {} is unreadable: {e}",
                        table.name
                    ))
                })?;
        let mut check = TableCheck {
            table: table.name.clone(),
            differences: Vec::new(),
            unchecked: Vec::new(),
        };
        let on_coordinator = match table.kind {
            TableKind::Reference => Holder::ReferenceCoordinator,
            _ => Holder::ShardedCoordinator,
        };
        let coordinator_def = introspect(cluster.client(), table.relid).await?;
        for difference in differences(
            &expected(&record, on_coordinator),
            &actual(&coordinator_def, on_coordinator),
        ) {
            check.differences.push(("coordinator".into(), difference));
        }
        for placement in model::placements_of_table(cluster.client(), table.table_id).await? {
            let (holder, place) = match table.kind {
                TableKind::Reference => (
                    Holder::Replica,
                    format!("replica on node {}", placement.node_id),
                ),
                _ => (
                    Holder::Shard(placement.shard_id),
                    format!(
                        "shard {} ({}) on node {}",
                        placement.shard_id, placement.shard_table, placement.node_id
                    ),
                ),
            };
            let Some(node) = nodes.get(&placement.node_id) else {
                check
                    .unchecked
                    .push((place, "its node is not registered".into()));
                continue;
            };
            let client = match clients.entry(node.node_id) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    match cluster.node_client(node, "shoal table check").await {
                        Ok(client) => entry.insert(client),
                        Err(error) => {
                            check.unchecked.push((place, error.to_string()));
                            continue;
                        }
                    }
                }
            };
            let json: Option<serde_json::Value> = client
                .query_one(
                    "SELECT shoal_worker.describe_table(to_regclass($1))",
                    &[&placement.shard_table.quoted()],
                )
                .await
                .context(|| format!("reading {place}"))?
                .get(0);
            let Some(json) = json else {
                check
                    .differences
                    .push((place, "the table is missing".into()));
                continue;
            };
            let found: TableDef = serde_json::from_value(json).map_err(|e| {
                ClusterError::Unsupported(format!("the definition of {place} is unreadable: {e}"))
            })?;
            for difference in differences(&expected(&record, holder), &actual(&found, holder)) {
                check.differences.push((place.clone(), difference));
            }
        }
        out.push(check);
    }
    Ok(out)
}
