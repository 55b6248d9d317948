//! Transfers whose process ended before they did (a crash, `kill -9`, a lost connection).
//!
//! Such a transfer leaves its `shoal.transfer` row unfinished and its cleanup records in place;
//! its locks went with its sessions. Whoever next takes the shard group's lock settles it, from
//! the catalog alone: the cleanup records say what was built, and `cutover_at` (for a copy, the
//! new placement) says whether the switch committed. Before the switch the source is still
//! authoritative, so everything built is removed; after it the target is, so the steps that
//! follow the switch (foreign keys, removal of the old placement) are finished instead.

use std::time::Duration;

use serde::Serialize;

use crate::engine::create_group_foreign_keys;
use crate::group::{find_shard, load_group, ShardGroup};
use crate::status::Status;
use crate::{Context, TransferError};
use shoal_catalog::model::{self, TableKind};
use shoal_cluster::cleanup::{
    end_operation, end_orphaned_statements, lock_ended_operation, run_cleanup,
};
use shoal_cluster::{locks, reference, Cluster};

/// What [`recover`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Settled {
    /// No unfinished transfer of the group.
    Nothing,
    /// The switch had not committed: what the transfer built is gone and the source stays.
    RolledBack { operation_id: i64 },
    /// The switch had committed: the group lives on the target, and what was left of the
    /// transfer after the switch has been done now.
    Completed { operation_id: i64 },
}

/// Settles an unfinished transfer of the shard group of `shard_id` whose process has ended.
/// Fails with [`TransferError::Busy`] while a live process still runs it. Safe to call at any
/// time, by any process, any number of times.
pub async fn recover(cluster: &Cluster, shard_id: i64) -> Result<Settled, TransferError> {
    let (table, shard_index) = find_shard(cluster.client(), shard_id).await?;
    let group = load_group(cluster.client(), &table, shard_index).await?;
    try_group_lock(cluster, &group, shard_id).await?;
    let result = settle_unfinished(cluster, &group).await;
    unlock_group(cluster, &group).await;
    result
}

/// Takes the shard group's exclusive advisory lock on the catalog session, or says who holds it.
pub(crate) async fn try_group_lock(
    cluster: &Cluster,
    group: &ShardGroup,
    shard_id: i64,
) -> Result<(), TransferError> {
    let client = cluster.client();
    let key = locks::shard_group_key(group.colocation_id, group.shard_index);
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0);
    if locked {
        return Ok(());
    }
    let unfinished = client
        .query_opt(
            "SELECT operation_id, status FROM shoal.transfer
             WHERE colocation_id = $1 AND shard_index = $2 AND finished_at IS NULL",
            &[&group.colocation_id, &group.shard_index],
        )
        .await?;
    let (operation_id, status) = unfinished
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .unwrap_or((0, "starting".to_string()));
    Err(TransferError::Busy {
        shard_id,
        operation_id,
        status,
    })
}

pub(crate) async fn unlock_group(cluster: &Cluster, group: &ShardGroup) {
    let _ = cluster
        .client()
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&locks::shard_group_key(
                group.colocation_id,
                group.shard_index,
            )],
        )
        .await;
}

/// With the shard group's lock held (so no live process runs a transfer of it): settles the
/// group's unfinished transfer, if any.
pub(crate) async fn settle_unfinished(
    cluster: &Cluster,
    group: &ShardGroup,
) -> Result<Settled, TransferError> {
    let client = cluster.client();
    let Some(row) = client
        .query_opt(
            "SELECT t.operation_id, t.operation, t.target_node, t.source_node,
                    t.cutover_at IS NOT NULL
                    OR (t.operation = 'copy' AND EXISTS (
                        SELECT 1 FROM shoal.placement p
                        WHERE p.shard_id = t.anchor_shard_id AND p.node_id = t.target_node))
             FROM shoal.transfer t
             WHERE t.colocation_id = $1 AND t.shard_index = $2 AND t.finished_at IS NULL",
            &[&group.colocation_id, &group.shard_index],
        )
        .await?
    else {
        return Ok(Settled::Nothing);
    };
    let operation_id: i64 = row.get(0);
    let operation: String = row.get(1);
    let target_node: i32 = row.get(2);
    let source_node: i32 = row.get(3);
    let switched: bool = row.get(4);
    tracing::warn!(
        operation_id,
        switched,
        "an earlier transfer of this shard group was interrupted; settling it"
    );
    end_orphaned_statements(cluster, operation_id, &[source_node, target_node]).await?;
    // Held across the cleanup: nobody else (the cleanup loop) works on these records meanwhile,
    // so once they are gone they are gone for good.
    if !lock_ended_operation(cluster, operation_id, Duration::from_secs(30)).await? {
        return Err(TransferError::Busy {
            shard_id: group.members.first().map(|m| m.shard_id).unwrap_or(0),
            operation_id,
            status: "being cleaned up by another process".to_string(),
        });
    }
    let report = run_cleanup(cluster, Some(operation_id)).await;
    let left = model::cleanup_records_of(client, operation_id).await;
    end_operation(cluster, operation_id).await;
    let report = report?;
    if !report.is_clean() || !left?.is_empty() {
        return Err(TransferError::Refused(format!(
            "operation {operation_id} was interrupted and what it left cannot be removed yet ({}); \
             run `shoal cleanup` once the node is back",
            report.failed.join(", ")
        )));
    }
    let mut note = "interrupted: the process running it ended".to_string();
    if switched {
        if let Some(target) = model::get_node(client, target_node).await? {
            let target_client = cluster
                .node_client(
                    &target,
                    &format!("{} recover op={operation_id}", cluster.label()),
                )
                .await?;
            if operation == "copy" || group.kind == TableKind::Reference {
                // A copy's keys point at other reference tables, which may be missing on the node
                // when copies were told to defer them; whoever deferred them creates them.
                for member in &group.members {
                    if let Err(error) =
                        reference::add_reference_foreign_keys(&target_client, &member.def).await
                    {
                        tracing::warn!(%error, "foreign keys of a recovered copy left for later");
                    }
                }
            } else {
                create_group_foreign_keys(cluster, group, &target_client).await?;
            }
        }
        note = "interrupted after its switch, which had committed; finished by recovery".into();
    }
    let status = if switched {
        Status::Completed
    } else {
        Status::Failed
    };
    client
        .execute(
            "UPDATE shoal.transfer SET status = $2, error = $3, finished_at = now(),
                    updated_at = now(), waiting_for_pid = NULL
             WHERE operation_id = $1",
            &[&operation_id, &status.as_str(), &note],
        )
        .await
        .context(|| format!("recording the end of operation {operation_id}"))?;
    Ok(if switched {
        Settled::Completed { operation_id }
    } else {
        Settled::RolledBack { operation_id }
    })
}
