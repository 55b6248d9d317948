//! `table undistribute`: every row of a hash-distributed table back in one plain coordinator
//! table with its original constraints and indexes, then its shards removed.

use std::collections::HashMap;

use crate::checks::lock_table;
use crate::cleanup::{begin_operation, end_operation, run_cleanup};
use crate::error::{ClusterError, PgContext};
use crate::locks;
use crate::reference;
use crate::resolve::resolve_relation;
use crate::switch::{copy_rows, move_owned_sequences};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, TableKind};
use shoal_ddl::definition::{restore_ddl, TableDef};
use shoal_sql::{quote_ident, QualifiedName};

/// Brings every row of a distributed table back into a plain coordinator table with its original
/// constraints and indexes, then removes the shards.
pub async fn undistribute_table(cluster: &Cluster, table: &str) -> Result<u64, ClusterError> {
    let relation = resolve_relation(cluster.client(), table).await?;
    let dist = model::get_table_by_relid(cluster.client(), relation.relid)
        .await?
        .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?;
    match dist.kind {
        TableKind::Reference => {
            reference::unreference(cluster, dist.relid).await?;
            return Ok(0);
        }
        TableKind::Schema => {
            return Err(ClusterError::Unsupported(format!(
                "{} belongs to distributed schema {}; tables of a distributed schema stay with it",
                dist.name,
                quote_ident(&dist.name.schema)
            )))
        }
        TableKind::Hash => {}
    }
    let original: TableDef =
        serde_json::from_value(model::original_ddl(cluster.client(), dist.table_id).await?)
            .map_err(|e| {
                ClusterError::Unsupported(format!(
                    "the catalog's record of {} is unreadable: {e}",
                    dist.name
                ))
            })?;
    // Keys of other distributed tables that point at its shards would block their removal.
    let referencing = cluster
        .client()
        .query_opt(
            "SELECT format('%I.%I', t.original_ddl->'name'->>'schema', t.original_ddl->'name'->>'name'),
                    c.value->>'name'
             FROM shoal.distributed_table t, jsonb_array_elements(t.original_ddl->'constraints') c
             WHERE t.table_id <> $1 AND c.value->'foreign_key'->'referenced' = $2",
            &[
                &dist.table_id,
                &serde_json::to_value(&original.name).expect("names serialise"),
            ],
        )
        .await?;
    if let Some(row) = referencing {
        return Err(ClusterError::Unsupported(format!(
            "{} is referenced by foreign key {} of distributed table {}; undistribute that table \
             first, or drop the key (`shoal ddl 'ALTER TABLE ... DROP CONSTRAINT ...'`)",
            dist.name,
            quote_ident(row.get::<_, &str>(1)),
            row.get::<_, &str>(0)
        )));
    }
    let placements = model::placements_of_table(cluster.client(), dist.table_id).await?;

    let operation_id = begin_operation(cluster).await?;
    let label = format!("shoal table undistribute {}", dist.name);
    let result = async {
        let mut coordinator = cluster.coordinator(&label).await?;
        let tx = coordinator.transaction().await?;
        locks::refuse_during_transfer(&tx, dist.colocation_id).await?;
        lock_table(&tx, &dist.name).await?;
        let local = QualifiedName::new(&dist.name.schema, format!("__shoal_local_{}", dist.relid));
        tx.batch_execute(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
             INCLUDING COMMENTS)",
            local.quoted(),
            dist.name.quoted()
        ))
        .await?;
        let rows = copy_rows(&tx, &dist.name, &local).await?;
        move_owned_sequences(&tx, dist.relid, &local).await?;
        tx.batch_execute(&format!(
            "DROP TABLE {};\nALTER TABLE {} RENAME TO {}",
            dist.name.quoted(),
            local.quoted(),
            quote_ident(&dist.name.name)
        ))
        .await?;
        let mut keep = HashMap::new();
        for (_, fk) in original.foreign_keys() {
            let target = match resolve_relation(&tx, &fk.referenced.quoted()).await {
                Ok(relation) => model::get_table_by_relid(&tx, relation.relid)
                    .await?
                    .is_none_or(|t| t.kind == TableKind::Reference),
                Err(_) => false,
            };
            keep.insert(fk.referenced.clone(), target);
        }
        for statement in restore_ddl(&original, &dist.name, |fk| {
            keep.get(&fk.referenced).copied().unwrap_or(false)
        }) {
            tx.batch_execute(&statement)
                .await
                .context(|| format!("restoring {statement}"))?;
        }
        for placement in &placements {
            model::insert_cleanup_record(
                &tx,
                operation_id,
                CleanupObject::ShardTable,
                Some(&placement.shard_table.schema),
                &placement.shard_table.name,
                placement.node_id,
                CleanupPolicy::DeferredOnSuccess,
            )
            .await?;
        }
        model::delete_table(&tx, dist.table_id).await?;
        model::delete_group_if_empty(&tx, dist.colocation_id).await?;
        tx.commit()
            .await
            .context(|| format!("undistributing {}", dist.name))?;
        Ok::<u64, ClusterError>(rows)
    }
    .await;
    if result.is_ok() {
        if let Ok(report) = run_cleanup(cluster, Some(operation_id)).await {
            for failure in report.failed {
                tracing::warn!(%failure, "shard left for `shoal cleanup`");
            }
        }
    }
    end_operation(cluster, operation_id).await;
    result
}
