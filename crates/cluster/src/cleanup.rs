//! Cleanup records and the operation locks that protect them.
//!
//! An operation holds a session-level advisory lock on its operation id while it runs. Cleanup
//! only acts on records of operations whose lock it can take, so it never removes what a running
//! operation is still building, and it is safe to run at any time, any number of times.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{pg_message, ClusterError, PgContext};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupRecord};
use shoal_sql::{quote_ident, QualifiedName};

/// First key of the two-key advisory locks that mark running operations.
pub(crate) const OPERATION_LOCK_CLASS: i32 = 0x5348_4f41;

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

/// Takes the lock of an operation whose process has ended, waiting up to `timeout` for a
/// cleanup that works on its records elsewhere. False if it is still held then.
pub async fn lock_ended_operation(
    cluster: &Cluster,
    operation_id: i64,
    timeout: std::time::Duration,
) -> Result<bool, ClusterError> {
    let started = std::time::Instant::now();
    loop {
        let locked: bool = cluster
            .client()
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
            )
            .await?
            .get(0);
        if locked || started.elapsed() >= timeout {
            return Ok(locked);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    operations.sort_unstable();
    operations.dedup();
    for operation_id in operations {
        if only_operation.is_some_and(|op| op != operation_id) {
            continue;
        }
        let listed = records
            .iter()
            .filter(|r| r.operation_id == operation_id)
            .count();
        let own: bool = cluster
            .client()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                                  AND pid = pg_backend_pid() AND objsubid = 2
                                  AND classid = $1::int::bigint::oid
                                  AND objid = ($2::int::bigint & 4294967295)::oid)",
                &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
            )
            .await?
            .get(0);
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
            report.skipped_running += listed;
            continue;
        }
        // Read again under the lock: the list above may predate another process removing these
        // objects and a new operation creating objects of the same names (a transfer retried
        // after a crash), which a stale record would then remove.
        let mut ours = model::cleanup_records_of(cluster.client(), operation_id).await?;
        if !own && !ours.is_empty() {
            // The operation's process is gone, but a statement it started may still run.
            let mut nodes: Vec<i32> = ours.iter().map(|r| r.node_id).collect();
            nodes.sort_unstable();
            nodes.dedup();
            if let Err(error) = end_orphaned_statements(cluster, operation_id, &nodes).await {
                report
                    .failed
                    .push(format!("operation {operation_id}: {error}"));
                end_operation(cluster, operation_id).await;
                continue;
            }
        }
        // Subscriptions first (they hold slots), then slots, publications, and tables last.
        ours.sort_by_key(|r| (removal_order(r.object_type), r.record_id));
        // One connection per node for all of the operation's records (a move has a dozen).
        let mut clients: HashMap<i32, Result<Option<Client>, String>> = HashMap::new();
        for record in &ours {
            let what = describe(record);
            match remove_object(cluster, record, &mut clients).await {
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

/// Ends what is left of an ended operation's sessions on the coordinator and on `nodes`. A
/// statement still running when its client died (a `CREATE SUBSCRIPTION`, say) would otherwise
/// finish after cleanup has looked for what it creates, leaving an object no record names. The
/// sessions are known by their label, which names the operation (`... op=<id> ...`).
pub async fn end_orphaned_statements(
    cluster: &Cluster,
    operation_id: i64,
    nodes: &[i32],
) -> Result<(), ClusterError> {
    let pattern = format!("% op={operation_id} %");
    let terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE application_name LIKE $1 AND pid <> pg_backend_pid()";
    let remaining = "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name LIKE $1 AND pid <> pg_backend_pid()";
    let mut clients = Vec::new();
    for node_id in nodes {
        let Some(node) = model::get_node(cluster.client(), *node_id).await? else {
            continue;
        };
        // An unreachable node runs nothing that could race with cleanup there now.
        if let Ok(client) = cluster
            .node_client(&node, &format!("shoal cleanup op {operation_id}"))
            .await
        {
            clients.push(client);
        }
    }
    let mut all: Vec<&Client> = clients.iter().collect();
    all.push(cluster.client());
    for client in all {
        client.query_one(terminate, &[&pattern]).await?;
        for _ in 0..100 {
            let left: i64 = client.query_one(remaining, &[&pattern]).await?.get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn removal_order(object: CleanupObject) -> u8 {
    match object {
        CleanupObject::Subscription => 0,
        CleanupObject::ReplicationSlot => 1,
        CleanupObject::ReplicationOrigin => 2,
        CleanupObject::Publication => 3,
        CleanupObject::ShardTable => 4,
    }
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

async fn remove_object(
    cluster: &Cluster,
    record: &CleanupRecord,
    clients: &mut HashMap<i32, Result<Option<Client>, String>>,
) -> Result<(), String> {
    let client = match clients.entry(record.node_id) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let client = match model::get_node(cluster.client(), record.node_id).await {
                Err(error) => Err(error.to_string()),
                // The node itself is gone, and its objects with it.
                Ok(None) => Ok(None),
                Ok(Some(node)) => cluster
                    .node_client(&node, &format!("shoal cleanup op {}", record.operation_id))
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string()),
            };
            entry.insert(client)
        }
    };
    match client {
        Err(error) => Err(error.clone()),
        Ok(None) => Ok(()),
        Ok(Some(client)) => drop_object(client, record)
            .await
            .map_err(|e| pg_message(&e)),
    }
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
            // CASCADE drops foreign keys that point at it from the other shards of its group,
            // which go with it.
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", table.quoted()))
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
        CleanupObject::Subscription => drop_subscription(client, &record.object_name).await,
        CleanupObject::ReplicationSlot => drop_slots(client, &record.object_name).await,
        CleanupObject::ReplicationOrigin => drop_origins(client, &record.object_name).await,
    }
}

/// Drops the replication origins whose names match `pattern`. An origin is held by the
/// session that copies under it and released when that session ends: a busy one is retried.
async fn drop_origins(client: &Client, pattern: &str) -> Result<(), tokio_postgres::Error> {
    // About five seconds of retries, then the error.
    const ATTEMPTS: u32 = 51;
    for attempt in 1.. {
        let dropped = client
            .execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
                 WHERE roname LIKE $1",
                &[&pattern],
            )
            .await;
        match dropped {
            Ok(_) => break,
            Err(error) if attempt >= ATTEMPTS => return Err(error),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Ok(())
}

/// Drops a subscription. `DROP SUBSCRIPTION` also drops its slots on the publisher; when the
/// publisher cannot be reached, the subscription is detached from its slot and dropped alone
/// (the slot has its own cleanup record).
async fn drop_subscription(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    let quoted = quote_ident(name);
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    if client
        .batch_execute(&format!("DROP SUBSCRIPTION {quoted}"))
        .await
        .is_ok()
    {
        return Ok(());
    }
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {quoted} DISABLE"))
        .await?;
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {quoted} SET (slot_name = NONE)"
        ))
        .await?;
    client
        .batch_execute(&format!("DROP SUBSCRIPTION {quoted}"))
        .await
}

/// Drops a replication slot, or every slot matching a `LIKE` pattern (the table-sync slots of a
/// subscription). A slot still held by a walsender whose subscriber is gone is freed first.
async fn drop_slots(client: &Client, pattern: &str) -> Result<(), tokio_postgres::Error> {
    for _ in 0..50 {
        client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name LIKE $1 AND active_pid IS NOT NULL",
                &[&pattern],
            )
            .await?;
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name LIKE $1 AND NOT active",
                &[&pattern],
            )
            .await;
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1",
                &[&pattern],
            )
            .await?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        if let Err(error) = dropped {
            tracing::debug!(%error, "slot busy, retrying");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&pattern],
        )
        .await
        .map(|_| ())
}

/// Looks on every reachable node for shard tables and replication objects that neither a
/// placement nor a cleanup record explains (left by a process that died before it could write
/// its records, or by manual changes), and records them for removal. Returns what it recorded.
///
/// Conservative on purpose: a table is only taken for a shard when its name is exactly the name
/// Shoal gave a known shard that has no placement on that node, and a replication object only
/// when it has the name of a transfer that is not running.
pub async fn scan(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let records = model::list_cleanup_records(cluster.client()).await?;
    let recorded = |node: i32, schema: Option<&str>, name: &str| {
        records.iter().any(|r| {
            r.node_id == node
                && r.object_name == name
                && (schema.is_none() || r.schema_name.as_deref() == schema)
        })
    };
    let shards = cluster
        .client()
        .query(
            "SELECT s.shard_id, s.schema_name, s.shard_name,
                    coalesce(array_agg(p.node_id) FILTER (WHERE p.node_id IS NOT NULL), '{}')
             FROM shoal.shard s LEFT JOIN shoal.placement p USING (shard_id)
             GROUP BY s.shard_id",
            &[],
        )
        .await?;
    let mut found = Vec::new();
    let mut operation_id = None;
    for node in model::list_nodes(cluster.client()).await? {
        let Ok(client) = cluster.node_client(&node, "shoal cleanup --scan").await else {
            continue;
        };
        let mut orphans: Vec<(CleanupObject, Option<String>, String)> = Vec::new();
        for row in &shards {
            let schema: String = row.get(1);
            let name: String = row.get(2);
            let placed: Vec<i32> = row.get(3);
            if placed.contains(&node.node_id) || recorded(node.node_id, Some(&schema), &name) {
                continue;
            }
            let exists: bool = client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&QualifiedName::new(&schema, &name).quoted()],
                )
                .await?
                .get(0);
            if exists {
                orphans.push((CleanupObject::ShardTable, Some(schema), name));
            }
        }
        let replication = client
            .query(
                "SELECT 'publication', pubname::text FROM pg_publication WHERE pubname LIKE 'shoal\\_move\\_%'
                 UNION ALL
                 SELECT 'subscription', subname::text FROM pg_subscription WHERE subname LIKE 'shoal\\_move\\_%'
                 UNION ALL
                 SELECT 'replication_slot', slot_name::text FROM pg_replication_slots
                 WHERE slot_name LIKE 'shoal\\_move\\_%'
                 UNION ALL
                 SELECT 'replication_origin', roname FROM pg_replication_origin
                 WHERE roname LIKE 'shoal\\_move\\_%'",
                &[],
            )
            .await?;
        for row in replication {
            let kind: String = row.get(0);
            let name: String = row.get(1);
            if recorded(node.node_id, None, &name) || transfer_running(cluster, &name).await? {
                continue;
            }
            let object = match kind.as_str() {
                "publication" => CleanupObject::Publication,
                "subscription" => CleanupObject::Subscription,
                "replication_origin" => CleanupObject::ReplicationOrigin,
                _ => CleanupObject::ReplicationSlot,
            };
            orphans.push((object, None, name));
        }
        for (object, schema, name) in orphans {
            let operation = match operation_id {
                Some(id) => id,
                None => {
                    let id = model::next_operation_id(cluster.client()).await?;
                    operation_id = Some(id);
                    id
                }
            };
            model::insert_cleanup_record(
                cluster.client(),
                operation,
                object,
                schema.as_deref(),
                &name,
                node.node_id,
                model::CleanupPolicy::Always,
            )
            .await?;
            let what = match &schema {
                Some(schema) => QualifiedName::new(schema, &name).to_string(),
                None => name.clone(),
            };
            found.push(format!(
                "{} {what} on node {}",
                object.as_str().replace('_', " "),
                node.node_id
            ));
        }
    }
    Ok(found)
}

/// Whether the transfer that a replication object is named after (`shoal_move_<op>`) is still
/// running: its process holds the operation lock.
async fn transfer_running(cluster: &Cluster, name: &str) -> Result<bool, ClusterError> {
    // `shoal_move_<operation>`, or `shoal_move_<operation>_<table>` for a copy's origins.
    let Some(operation_id) = name
        .strip_prefix("shoal_move_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|id| id.parse::<i64>().ok())
    else {
        return Ok(false);
    };
    let free: bool = cluster
        .client()
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&OPERATION_LOCK_CLASS, &(operation_id as i32)],
        )
        .await?
        .get(0);
    if free {
        end_operation(cluster, operation_id).await;
    }
    Ok(!free)
}
