//! Fences between shard moves and Shoal's endpoints. An endpoint sends a shard group's
//! statements straight to its node, past the coordinator's locks, so a move's cutover also
//! raises a fence on the group: every live endpoint stops starting work there, waits for what
//! it runs there to end, and acknowledges; the move then locks, catches up and switches as
//! usual, and lowers the fence right after its commit, when the endpoints read the new
//! placement. An endpoint is live while it holds its advisory lock, a fence while its
//! operation holds its own.

use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;

use crate::cleanup::OPERATION_LOCK_CLASS;
use crate::error::ClusterError;

/// Advisory lock class of endpoint instances (`pg_advisory_lock(CLASS, instance)`).
pub const INSTANCE_LOCK_CLASS: i32 = 0x5348_4f45;

/// A fence as an endpoint sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fence {
    pub operation_id: i64,
    pub colocation_id: i32,
    pub shard_index: i32,
}

/// Raises the fence of `operation_id` on a shard group, valid for `ttl`.
pub async fn raise(
    client: &impl GenericClient,
    fence: Fence,
    ttl: Duration,
) -> Result<(), ClusterError> {
    client
        .execute(
            "DELETE FROM shoal.endpoint_fence_ack WHERE operation_id = $1",
            &[&fence.operation_id],
        )
        .await?;
    client
        .execute(
            "INSERT INTO shoal.endpoint_fence (operation_id, colocation_id, shard_index, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
             ON CONFLICT (operation_id, colocation_id, shard_index)
             DO UPDATE SET expires_at = EXCLUDED.expires_at",
            &[
                &fence.operation_id,
                &fence.colocation_id,
                &fence.shard_index,
                &(ttl.as_millis() as f64),
            ],
        )
        .await?;
    Ok(())
}

/// Waits until every live endpoint acknowledged the fence; `Ok(false)` after `timeout` (an
/// endpoint's transaction keeps using the group). Endpoints found dead are forgotten.
pub async fn wait_acknowledged(
    client: &impl GenericClient,
    operation_id: i64,
    timeout: Duration,
) -> Result<bool, ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<i32> = client
            .query(
                "SELECT i.instance FROM shoal.endpoint_instance i
                 WHERE NOT EXISTS (SELECT FROM shoal.endpoint_fence_ack a
                                   WHERE a.operation_id = $1 AND a.instance = i.instance)",
                &[&operation_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut waiting = false;
        for instance in pending {
            if is_alive(client, instance).await? {
                waiting = true;
            } else {
                client
                    .execute(
                        "DELETE FROM shoal.endpoint_instance WHERE instance = $1",
                        &[&instance],
                    )
                    .await?;
            }
        }
        if !waiting {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the endpoint `instance` still runs (holds its lock).
pub async fn is_alive(client: &impl GenericClient, instance: i32) -> Result<bool, ClusterError> {
    let acquired: bool = client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[&INSTANCE_LOCK_CLASS, &instance],
        )
        .await?
        .get(0);
    if acquired {
        client
            .execute(
                "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
                &[&INSTANCE_LOCK_CLASS, &instance],
            )
            .await?;
    }
    Ok(!acquired)
}

/// Lowers every fence of `operation_id`.
pub async fn lower(client: &impl GenericClient, operation_id: i64) -> Result<(), ClusterError> {
    client
        .execute(
            "DELETE FROM shoal.endpoint_fence WHERE operation_id = $1",
            &[&operation_id],
        )
        .await?;
    client
        .execute(
            "DELETE FROM shoal.endpoint_fence_ack WHERE operation_id = $1",
            &[&operation_id],
        )
        .await?;
    Ok(())
}

/// The fences raised now: those of operations still running (holding their lock), not
/// expired; with whether `instance` acknowledged each.
pub async fn raised(
    client: &impl GenericClient,
    instance: i32,
) -> Result<Vec<(Fence, bool)>, ClusterError> {
    Ok(client
        .query(
            "SELECT f.operation_id, f.colocation_id, f.shard_index,
                    EXISTS (SELECT FROM shoal.endpoint_fence_ack a
                            WHERE a.operation_id = f.operation_id AND a.instance = $2)
             FROM shoal.endpoint_fence f
             WHERE f.expires_at > now()
               AND EXISTS (SELECT FROM pg_catalog.pg_locks l
                           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                             AND l.classid = $1::int4::oid
                             AND l.objid = f.operation_id::int4::oid)",
            &[&OPERATION_LOCK_CLASS, &instance],
        )
        .await?
        .iter()
        .map(|r| {
            let fence = Fence {
                operation_id: r.get(0),
                colocation_id: r.get(1),
                shard_index: r.get(2),
            };
            (fence, r.get(3))
        })
        .collect())
}

pub async fn acknowledge(
    client: &impl GenericClient,
    operation_id: i64,
    instance: i32,
) -> Result<(), ClusterError> {
    client
        .execute(
            "INSERT INTO shoal.endpoint_fence_ack (operation_id, instance) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&operation_id, &instance],
        )
        .await?;
    Ok(())
}

/// Records a running endpoint (it holds its lock already).
pub async fn register_instance(
    client: &impl GenericClient,
    instance: i32,
    address: &str,
) -> Result<(), ClusterError> {
    client
        .execute(
            "INSERT INTO shoal.endpoint_instance (instance, address) VALUES ($1, $2)
             ON CONFLICT (instance) DO UPDATE SET address = EXCLUDED.address",
            &[&instance, &address],
        )
        .await?;
    Ok(())
}

pub async fn unregister_instance(
    client: &impl GenericClient,
    instance: i32,
) -> Result<(), ClusterError> {
    client
        .execute(
            "DELETE FROM shoal.endpoint_instance WHERE instance = $1",
            &[&instance],
        )
        .await?;
    Ok(())
}
