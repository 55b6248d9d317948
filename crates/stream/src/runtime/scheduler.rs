//! The scheduler tick, a duty of `shoal serve`: follow the topology, capture every node's
//! changes, and refresh the stream tables that are due, each under a lease so that two daemons
//! never refresh one stream table at once.

use std::time::Duration;

use serde::Serialize;

use crate::runtime::capture::poll_all;
use crate::runtime::manage::StreamError;
use crate::runtime::refresh::refresh_stream;
use crate::topology::{diff_workers, needs_reinit, LiveWorker, WorkerSlot};
use shoal_catalog::model;
use shoal_cluster::capture::{self, COORDINATOR_NODE};
use shoal_cluster::Cluster;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Who holds leases taken by this daemon (host, pid, start).
    pub holder: String,
    pub lease: Duration,
    /// Changes read from one node per poll.
    pub poll_limit: i32,
    /// Consecutive failed polls before a node is flagged.
    pub retry_ticks: i32,
}

impl SchedulerConfig {
    pub fn new(holder: String) -> SchedulerConfig {
        SchedulerConfig {
            holder,
            lease: Duration::from_secs(10),
            poll_limit: 20_000,
            retry_ticks: 5,
        }
    }
}

/// The most applied buffer rows one tick deletes (ticks come about five times a second, so this
/// keeps up with far more changes than capture stores).
const GC_BATCH: i64 = 20_000;

/// How far ahead a tick waits for a stream table to fall due: a little more than the interval
/// between ticks of `shoal serve` (200 ms).
const DUE_LOOKAHEAD_MS: f64 = 250.0;

#[derive(Debug, Default, Clone, Serialize)]
pub struct TickReport {
    pub changes_captured: u64,
    pub refreshed: Vec<i32>,
    pub failed_nodes: Vec<i32>,
}

pub async fn tick(cluster: &Cluster, config: &SchedulerConfig) -> Result<TickReport, StreamError> {
    let mut report = TickReport::default();
    let streams: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM shoal.stream_table", &[])
        .await?
        .get(0);
    if streams == 0 {
        return Ok(report);
    }
    follow_topology(cluster).await?;
    // A stream table falling due before the next tick is waited for here rather than left to
    // that tick: its refreshes then come every `schedule`, not up to a tick interval later.
    let soonest_ms: Option<f64> = cluster
        .client()
        .query_one(
            "SELECT min(extract(epoch FROM last_refresh_at + schedule_ms * interval '1 millisecond'
                                           - clock_timestamp()) * 1000)::float8
             FROM shoal.stream_table WHERE NOT needs_reinit AND last_refresh_at IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if let Some(ms) = soonest_ms.filter(|ms| *ms > 0.0 && *ms <= DUE_LOOKAHEAD_MS) {
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    }
    let due: Vec<i32> = cluster
        .client()
        .query(
            "SELECT stream_id FROM shoal.stream_table
             WHERE needs_reinit OR last_refresh_at IS NULL
                OR last_refresh_at + schedule_ms * interval '1 millisecond' <= now()
             ORDER BY stream_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let polled = poll_all(cluster, config.poll_limit, config.retry_ticks, false).await?;
    report.changes_captured = polled.changes;
    report.failed_nodes = polled.failed_nodes.iter().map(|(n, _)| *n).collect();
    for stream_id in due {
        if !acquire_lease(cluster, stream_id, config).await? {
            continue;
        }
        let refresh = refresh_stream(cluster, stream_id, false);
        let extend = keep_lease(cluster, stream_id, config);
        let result = tokio::select! {
            result = refresh => result,
            never = extend => match never {},
        };
        match result {
            Ok(_) => report.refreshed.push(stream_id),
            Err(error) => {
                tracing::warn!(stream_id, %error, "refresh failed; will retry");
                let _ = cluster
                    .client()
                    .execute(
                        "UPDATE shoal.stream_table SET last_error = $2 WHERE stream_id = $1",
                        &[&stream_id, &error.to_string()],
                    )
                    .await;
            }
        }
        release_lease(cluster, stream_id, config).await?;
    }
    // Buffer rows every stream table has applied are not needed any more. At most
    // `GC_BATCH` of them go per tick: after a burst, deleting them all at once would hold up the
    // next refreshes (a tick deleting 400,000 rows took most of a second).
    cluster
        .client()
        .execute(
            "DELETE FROM shoal.change_buffer
             WHERE seq <= least((SELECT min(consumed_seq) FROM shoal.stream_table),
                                (SELECT min(seq) FROM shoal.change_buffer) + $1)",
            &[&GC_BATCH],
        )
        .await?;
    Ok(report)
}

/// Compares the active workers with the recorded capture points: new workers get their slot,
/// gone ones are forgotten, and a change deltas cannot follow marks every stream table for a
/// consistent full refresh.
async fn follow_topology(cluster: &Cluster) -> Result<(), StreamError> {
    let nodes = model::list_nodes(cluster.client()).await?;
    let live: Vec<LiveWorker> = nodes
        .iter()
        .filter(|n| n.is_active)
        .map(|n| LiveWorker {
            node_id: n.node_id,
            host: n.host.clone(),
            port: n.port,
        })
        .collect();
    let recorded: Vec<WorkerSlot> = cluster
        .client()
        .query(
            "SELECT node_id, host, port, slot_name FROM shoal.worker_slot WHERE node_id <> $1",
            &[&COORDINATOR_NODE],
        )
        .await?
        .iter()
        .map(|r| WorkerSlot {
            node_id: r.get(0),
            host: r.get(1),
            port: r.get::<_, i32>(2) as u16,
            slot_name: r.get(3),
        })
        .collect();
    let change = diff_workers(&recorded, &live);
    if change.added.is_empty() && change.removed.is_empty() && change.moved.is_empty() {
        return Ok(());
    }
    tracing::info!(?change, "capture topology changed");
    for gone in &change.removed {
        capture::forget_node_slot(cluster, None, gone.node_id).await?;
    }
    for (old, _) in &change.moved {
        capture::forget_node_slot(cluster, None, old.node_id).await?;
    }
    let to_add: Vec<i32> = change
        .added
        .iter()
        .map(|w| w.node_id)
        .chain(change.moved.iter().map(|(_, new)| new.node_id))
        .collect();
    for node_id in to_add {
        if let Some(node) = nodes.iter().find(|n| n.node_id == node_id) {
            capture::ensure_node_slot(cluster, node).await?;
        }
    }
    if needs_reinit(&change) {
        cluster
            .client()
            .execute("UPDATE shoal.stream_table SET needs_reinit = true", &[])
            .await?;
    }
    Ok(())
}

/// Takes a stream table's lease for `config.holder`, if it is free, expired, or already ours.
pub async fn acquire_lease(
    cluster: &Cluster,
    stream_id: i32,
    config: &SchedulerConfig,
) -> Result<bool, StreamError> {
    let ttl = config.lease.as_millis() as f64;
    let row = cluster
        .client()
        .query_opt(
            "INSERT INTO shoal.lease (key, holder, acquired_at, expires_at)
             VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond')
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at,
                 expires_at = excluded.expires_at
             WHERE shoal.lease.expires_at < now() OR shoal.lease.holder = excluded.holder
             RETURNING holder",
            &[&format!("stream:{stream_id}"), &config.holder, &ttl],
        )
        .await?;
    Ok(row.is_some())
}

/// Extends the lease every half lease while the refresh runs; never returns.
async fn keep_lease(
    cluster: &Cluster,
    stream_id: i32,
    config: &SchedulerConfig,
) -> std::convert::Infallible {
    let ttl = config.lease.as_millis() as f64;
    loop {
        tokio::time::sleep(config.lease / 2).await;
        let _ = cluster
            .client()
            .execute(
                "UPDATE shoal.lease SET expires_at = now() + $3 * interval '1 millisecond'
                 WHERE key = $1 AND holder = $2",
                &[&format!("stream:{stream_id}"), &config.holder, &ttl],
            )
            .await;
    }
}

pub async fn release_lease(
    cluster: &Cluster,
    stream_id: i32,
    config: &SchedulerConfig,
) -> Result<(), StreamError> {
    cluster
        .client()
        .execute(
            "DELETE FROM shoal.lease WHERE key = $1 AND holder = $2",
            &[&format!("stream:{stream_id}"), &config.holder],
        )
        .await?;
    Ok(())
}
