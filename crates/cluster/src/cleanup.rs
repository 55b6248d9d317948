//! Cleanup records and the operation locks that protect them.
//!
//! An operation holds a session-level advisory lock on its operation id while it runs. Cleanup
//! only acts on records of operations whose lock it can take, so it never removes what a running
//! operation is still building, and it is safe to run at any time, any number of times.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{pg_message, ClusterError, PgContext};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupRecord};
use shoal_sql::{quote_ident, QualifiedName};

/// First key of the two-key advisory locks that mark running operations.
const OPERATION_LOCK_CLASS: i32 = 0x5348_4f41;

/// Starts an operation: allocates its id and takes its lock on the catalog session.
pub async fn begin_operation(cluster: &Cluster) -> Result<i64, ClusterError> {
    let operation_id = model::next_operation_id(cluster.client()).await?;
    cluster
        .client()
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
        )
        .await
        .context(|| "taking the operation lock".to_string())?;
    Ok(operation_id)
}

pub async fn end_operation(cluster: &Cluster, operation_id: i64) {
    let _ = cluster
        .client()
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
        )
        .await;
}

#[derive(Debug, Default, Serialize)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    /// Records of operations still running elsewhere, left alone.
    pub skipped_running: usize,
    /// Records whose object could not be removed now (node unreachable, object in use).
    pub failed: Vec<String>,
}

impl CleanupReport {
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Removes the objects named by cleanup records (of one operation, or all) and forgets the
/// records. Safe to repeat: objects already gone are skipped.
pub async fn run_cleanup(
    cluster: &Cluster,
    only_operation: Option<i64>,
) -> Result<CleanupReport, ClusterError> {
    let mut report = CleanupReport::default();
    let records = model::list_cleanup_records(cluster.client()).await?;
    let mut operations: Vec<i64> = records.iter().map(|r| r.operation_id).collect();
    operations.dedup();
    for operation_id in operations {
        if only_operation.is_some_and(|op| op != operation_id) {
            continue;
        }
        let ours: Vec<&CleanupRecord> = records
            .iter()
            .filter(|r| r.operation_id == operation_id)
            .collect();
        // Re-entrant within one session, so an operation can clean up after itself.
        let locked: bool = cluster
            .client()
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
            )
            .await?
            .get(0);
        if !locked {
            report.skipped_running += ours.len();
            continue;
        }
        for record in ours {
            let what = describe(record);
            match remove_object(cluster, record).await {
                Ok(()) => {
                    model::delete_cleanup_record(cluster.client(), record.record_id).await?;
                    tracing::info!(object = %what, "removed");
                    report.removed.push(what);
                }
                Err(reason) => {
                    tracing::warn!(object = %what, %reason, "could not remove");
                    report.failed.push(format!("{what}: {reason}"));
                }
            }
        }
        end_operation(cluster, operation_id).await;
    }
    Ok(report)
}

fn describe(record: &CleanupRecord) -> String {
    let name = match &record.schema_name {
        Some(schema) => QualifiedName::new(schema, &record.object_name).to_string(),
        None => record.object_name.clone(),
    };
    format!(
        "{} {name} on node {}",
        record.object_type.as_str().replace('_', " "),
        record.node_id
    )
}

async fn remove_object(cluster: &Cluster, record: &CleanupRecord) -> Result<(), String> {
    let Some(node) = model::get_node(cluster.client(), record.node_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(()); // the node itself is gone, and its objects with it
    };
    let client = cluster
        .node_client(&node, &format!("shoal cleanup op {}", record.operation_id))
        .await
        .map_err(|e| e.to_string())?;
    drop_object(&client, record)
        .await
        .map_err(|e| pg_message(&e))
}

async fn drop_object(client: &Client, record: &CleanupRecord) -> Result<(), tokio_postgres::Error> {
    // A short lock timeout: a read still running on an old shard finishes first, and the
    // record is retried on the next run instead of queueing writers behind us.
    client.batch_execute("SET lock_timeout = '2s'").await?;
    match record.object_type {
        CleanupObject::ShardTable => {
            let table = QualifiedName::new(
                record
                    .schema_name
                    .clone()
                    .unwrap_or_else(|| "public".into()),
                &record.object_name,
            );
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", table.quoted()))
                .await
        }
        CleanupObject::Publication => {
            client
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    quote_ident(&record.object_name)
                ))
                .await
        }
        CleanupObject::Subscription => {
            client
                .batch_execute(&format!(
                    "DROP SUBSCRIPTION IF EXISTS {}",
                    quote_ident(&record.object_name)
                ))
                .await
        }
        CleanupObject::ReplicationSlot => client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[&record.object_name],
            )
            .await
            .map(|_| ()),
    }
}
