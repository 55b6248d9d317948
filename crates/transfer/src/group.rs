//! The shard group a transfer moves: every shard of one index in one colocation group (or every
//! table of a distributed schema), read from the catalog.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use crate::TransferError;
use shoal_catalog::model::{self, DistributedTable, TableKind};
use shoal_cluster::layout;
use shoal_ddl::definition::{ForeignKeyDef, TableDef};
use shoal_sql::QualifiedName;

#[derive(Debug, Clone)]
pub struct Member {
    pub table: DistributedTable,
    /// The table's definition as recorded when it was distributed.
    pub def: TableDef,
    pub shard_id: i64,
    /// The shard table on the nodes, and the coordinator's foreign table of the same name.
    pub shard_table: QualifiedName,
    /// The coordinator's partitioned table whose one partition points at the placement.
    pub partition: QualifiedName,
}

#[derive(Debug, Clone)]
pub struct ShardGroup {
    pub colocation_id: i32,
    pub shard_index: i32,
    pub kind: TableKind,
    pub source_node: i32,
    /// Ordered by table id, the fixed order every lock is taken in.
    pub members: Vec<Member>,
}

impl ShardGroup {
    pub fn shard_ids(&self) -> Vec<i64> {
        self.members.iter().map(|m| m.shard_id).collect()
    }

    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|m| m.table.name.to_string())
            .collect();
        names.join(", ")
    }
}

/// The shard, its table, and (for reference tables) nothing more: see [`load_group`].
pub async fn find_shard(
    client: &impl GenericClient,
    shard_id: i64,
) -> Result<(DistributedTable, i32), TransferError> {
    let row = client
        .query_opt(
            "SELECT table_id, shard_index FROM shoal.shard WHERE shard_id = $1",
            &[&shard_id],
        )
        .await?
        .ok_or_else(|| {
            TransferError::Refused(format!(
                "no shard {shard_id} exists; see `shoal shard list`"
            ))
        })?;
    let table_id: i32 = row.get(0);
    let table = model::list_tables(client)
        .await?
        .into_iter()
        .find(|t| t.table_id == table_id)
        .ok_or_else(|| TransferError::Refused(format!("shard {shard_id} has no table")))?;
    Ok((table, row.get(1)))
}

pub async fn load_group(
    client: &impl GenericClient,
    table: &DistributedTable,
    shard_index: i32,
) -> Result<ShardGroup, TransferError> {
    if table.kind == TableKind::Reference {
        return load_reference(client, table).await;
    }
    let mut members = Vec::new();
    let mut nodes = BTreeMap::new();
    for other in model::tables_in_group(client, table.colocation_id).await? {
        let def: TableDef = serde_json::from_value(
            model::original_ddl(client, other.table_id).await?,
        )
        .map_err(|e| {
            TransferError::Refused(format!(
                "the catalog's record of {} is unreadable: {e}",
                other.name
            ))
        })?;
        for placement in model::placements_of_table(client, other.table_id).await? {
            if placement.shard_index != shard_index {
                continue;
            }
            *nodes.entry(placement.node_id).or_insert(0) += 1;
            let partition = match other.kind {
                TableKind::Schema => other.name.clone(),
                _ => layout::shard_partition(&placement.shard_table),
            };
            members.push(Member {
                table: other.clone(),
                def: def.clone(),
                shard_id: placement.shard_id,
                shard_table: placement.shard_table,
                partition,
            });
        }
    }
    let source_node = match (nodes.len(), nodes.keys().next()) {
        (1, Some(node)) => *node,
        _ => {
            return Err(TransferError::Refused(format!(
                "the shards of index {shard_index} in colocation group {} are not on one node ({nodes:?}); \
                 run `shoal shard list` to inspect them",
                table.colocation_id
            )))
        }
    };
    members.sort_by_key(|m| m.table.table_id);
    Ok(ShardGroup {
        colocation_id: table.colocation_id,
        shard_index,
        kind: table.kind,
        source_node,
        members,
    })
}

/// Where a foreign key of a member points on the target node: a member of the same group (its
/// shard moves along), or a reference table (present on every node). `None`: neither, so it is
/// not recreated (distribution refuses such keys, so this only happens after manual changes).
pub fn foreign_key_target(
    group: &ShardGroup,
    fk: &ForeignKeyDef,
    reference_tables: &[QualifiedName],
) -> Option<QualifiedName> {
    if let Some(member) = group.members.iter().find(|m| m.def.name == fk.referenced) {
        return Some(member.shard_table.clone());
    }
    reference_tables
        .contains(&fk.referenced)
        .then(|| fk.referenced.clone())
}

/// A reference table is its own group (all reference tables share one colocation group, but
/// each is copied on its own); its "source" is any node that has it.
async fn load_reference(
    client: &impl GenericClient,
    table: &DistributedTable,
) -> Result<ShardGroup, TransferError> {
    let def: TableDef = serde_json::from_value(model::original_ddl(client, table.table_id).await?)
        .map_err(|e| {
            TransferError::Refused(format!(
                "the catalog's record of {} is unreadable: {e}",
                table.name
            ))
        })?;
    let placements = model::placements_of_table(client, table.table_id).await?;
    let first = placements.first().ok_or_else(|| {
        TransferError::Refused(format!("reference table {} has no placement", table.name))
    })?;
    Ok(ShardGroup {
        colocation_id: table.colocation_id,
        shard_index: first.shard_index,
        kind: TableKind::Reference,
        source_node: first.node_id,
        members: vec![Member {
            table: table.clone(),
            def,
            shard_id: first.shard_id,
            shard_table: first.shard_table.clone(),
            partition: table.name.clone(),
        }],
    })
}
