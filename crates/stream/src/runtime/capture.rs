//! Reading every capture point's slot into `shoal.change_buffer`, exactly once.
//!
//! Per node: peek the slot (changes are not consumed yet), keep the changes to shard tables of
//! captured sources, store them together with the node's new frontier in one coordinator
//! transaction, and only then advance the slot. A crash in between re-reads transactions at or
//! below the frontier, which are skipped.

use std::collections::HashMap;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::Client;

use crate::decode::{self, ChangeKind};
use crate::runtime::StreamError;
use shoal_catalog::model::{self, Node};
use shoal_cluster::capture::{COORDINATOR_NODE, SLOT_NAME};
use shoal_cluster::{pg_message, Cluster};

/// Serialises writes to the change buffer, so that committed rows are always a prefix of the
/// sequence: a refresh that reads up to the highest committed sequence number never skips a row
/// that commits later with a lower one.
const BUFFER_LOCK: i64 = 0x5348_4f41_4c00_00b0;

/// A poll that stores at least this many changes refreshes the buffer's planner statistics.
const ANALYZE_AFTER: u64 = 5_000;

/// First key of the per-node advisory lock that gives one process at a time a node's slot.
const SLOT_LOCK_CLASS: i32 = 0x5343_4150;

/// Parses `X/Y` (both hexadecimal) into a comparable number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// `(schema, shard table)` to `(table id, shard id)`.
type ShardsByName = HashMap<(String, String), (i32, i64)>;

/// Which captured table and shard a decoded `schema.name` is.
///
/// Shard tables are matched by name on any worker, not only where the catalog places them now:
/// after a move, the source's last changes of the moved shards are still read from the source
/// (and must be kept) while the catalog already places the shards on the target.
///
/// Only hash and schema tables are decoded from the workers' slots: reference tables are written
/// on the coordinator and captured there by a trigger (their node copies are replicas whose
/// changes carry an origin and are never decoded).
#[derive(Debug, Default)]
pub struct ShardMap {
    shards: ShardsByName,
    /// Per captured table: its columns' attribute numbers on the coordinator, by name, and the
    /// highest one (the length of its buffered value arrays).
    columns: HashMap<i32, (HashMap<String, usize>, usize)>,
}

impl ShardMap {
    pub async fn load(client: &Client) -> Result<ShardMap, StreamError> {
        let rows = client
            .query(
                "SELECT DISTINCT t.table_id, s.shard_id, s.schema_name, s.shard_name
                 FROM shoal.stream_source ss
                 JOIN shoal.distributed_table t USING (table_id)
                 JOIN shoal.shard s ON s.table_id = t.table_id
                 WHERE t.kind <> 'reference'",
                &[],
            )
            .await?;
        let shards = rows
            .iter()
            .map(|row| ((row.get(2), row.get(3)), (row.get(0), row.get(1))))
            .collect();
        let rows = client
            .query(
                "SELECT t.table_id, a.attname::text, a.attnum::int
                 FROM shoal.distributed_table t
                 JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE t.kind <> 'reference'
                   AND t.table_id IN (SELECT table_id FROM shoal.stream_source)",
                &[],
            )
            .await?;
        let mut columns: HashMap<i32, (HashMap<String, usize>, usize)> = HashMap::new();
        for row in &rows {
            let attnum = usize::try_from(row.get::<_, i32>(2)).unwrap_or(0);
            let (positions, len) = columns.entry(row.get(0)).or_default();
            positions.insert(row.get(1), attnum);
            *len = (*len).max(attnum);
        }
        Ok(ShardMap { shards, columns })
    }

    fn lookup(&self, schema: &str, table: &str) -> Option<(i32, i64)> {
        self.shards
            .get(&(schema.to_string(), table.to_string()))
            .copied()
    }

    /// A decoded row as the buffer stores it for `table_id`.
    fn values(&self, table_id: i32, row: &decode::Row) -> Vec<Option<String>> {
        match self.columns.get(&table_id) {
            Some((positions, len)) => decode::row_values(row, positions, *len),
            None => Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct PollReport {
    pub changes: u64,
    pub failed_nodes: Vec<(i32, String)>,
}

/// Polls every capture point once (up to `limit` changes each).
/// With `flush`, a node whose slot another process is reading is waited for rather than skipped,
/// so that every change committed on a node before the call is read.
pub async fn poll_all(
    cluster: &Cluster,
    limit: i32,
    retry_ticks: i32,
    flush: bool,
) -> Result<PollReport, StreamError> {
    let slots = cluster
        .client()
        .query(
            "SELECT node_id FROM shoal.worker_slot ORDER BY node_id",
            &[],
        )
        .await?;
    let map = ShardMap::load(cluster.client()).await?;
    let nodes: HashMap<i32, Node> = model::list_nodes(cluster.client())
        .await?
        .into_iter()
        .map(|n| (n.node_id, n))
        .collect();
    let mut report = PollReport {
        changes: move_reference_changes(cluster).await?,
        ..PollReport::default()
    };
    // Nodes are read side by side: each has its own connections, and the buffer lock orders
    // their stores.
    let polls = slots.iter().filter_map(|row| {
        let node_id: i32 = row.get(0);
        let node = nodes.get(&node_id)?.clone();
        let map = &map;
        Some(async move {
            let result = match cluster.node_client(&node, "shoal capture").await {
                Ok(client) => poll_node(cluster, node_id, &client, map, limit, flush).await,
                Err(error) => Err(StreamError::Cluster(error)),
            };
            (node_id, result)
        })
    });
    for (node_id, result) in futures_util::future::join_all(polls).await {
        match result {
            Ok(n) => report.changes += n,
            Err(error) => {
                let message = error.to_string();
                record_failure(cluster, node_id, &message, retry_ticks).await?;
                report.failed_nodes.push((node_id, message));
            }
        }
    }
    if report.changes >= ANALYZE_AFTER {
        // Refreshes read the newest slice of the buffer; with statistics from before it was
        // stored, the planner expects a handful of rows and joins them by nested loops (twice
        // as slow at 20,000 rows), and autovacuum would notice only a minute later. Only the
        // columns refreshes filter on are analyzed: the value arrays would make it 3-4x dearer.
        cluster
            .client()
            .batch_execute("ANALYZE shoal.change_buffer (table_id, seq, node_id, shard_id)")
            .await?;
    }
    Ok(report)
}

/// Moves the reference tables' changes, written by their capture trigger in the writing
/// transactions, into the change buffer. Only committed rows are seen, and a row's later change
/// commits after its earlier one, so no change of a row is moved before the one it follows.
pub(crate) async fn move_reference_changes(cluster: &Cluster) -> Result<u64, StreamError> {
    let mut coordinator = cluster.coordinator("shoal capture").await?;
    let tx = coordinator.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BUFFER_LOCK])
        .await?;
    let moved = tx
        .execute(
            "WITH moved AS (DELETE FROM shoal.reference_change RETURNING *)
             INSERT INTO shoal.change_buffer (table_id, shard_id, node_id, commit_lsn, old_row, new_row)
             SELECT table_id, shard_id, $1, pg_current_wal_lsn(), old_row, new_row FROM moved",
            &[&COORDINATOR_NODE],
        )
        .await?;
    tx.commit().await?;
    Ok(moved)
}

/// A node that cannot be read is skipped; its frontier stays where it is, and after
/// `retry_ticks` failures in a row it is flagged. The flag stays up until a poll of the node
/// succeeds, whoever fails meanwhile (a refresh's own capture counts its failures without a
/// threshold of its own: `i32::MAX`).
async fn record_failure(
    cluster: &Cluster,
    node_id: i32,
    message: &str,
    retry_ticks: i32,
) -> Result<(), StreamError> {
    let row = cluster
        .client()
        .query_one(
            "UPDATE shoal.worker_slot SET consecutive_failures = consecutive_failures + 1,
                    last_error = $2, alert = alert OR consecutive_failures + 1 >= $3
             WHERE node_id = $1 RETURNING consecutive_failures, alert",
            &[&node_id, &message, &retry_ticks],
        )
        .await?;
    let failures: i32 = row.get(0);
    if row.get::<_, bool>(1) {
        tracing::warn!(
            node_id,
            failures,
            error = message,
            "capture point unreachable; stream tables lag behind it"
        );
    } else {
        tracing::info!(
            node_id,
            failures,
            error = message,
            "capture point unreachable; retrying next tick"
        );
    }
    Ok(())
}

/// Reads one node's slot into the buffer. Returns the number of changes stored.
pub async fn poll_node(
    cluster: &Cluster,
    node_id: i32,
    node: &Client,
    map: &ShardMap,
    limit: i32,
    flush: bool,
) -> Result<u64, StreamError> {
    // One reader per slot at a time (PostgreSQL refuses a second one): a daemon that finds the
    // node taken skips it this tick; a refresh that needs every change waits its turn. The lock
    // belongs to this connection and goes with it.
    let mut coordinator = cluster.coordinator("shoal capture").await?;
    if flush {
        coordinator
            .execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&SLOT_LOCK_CLASS, &node_id],
            )
            .await?;
    } else {
        let free: bool = coordinator
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&SLOT_LOCK_CLASS, &node_id],
            )
            .await?
            .get(0);
        if !free {
            return Ok(0);
        }
    }
    // Decoding reads only flushed WAL, and waits for the rest: under asynchronous commit a
    // transaction is visible (and acknowledged) before the walwriter flushes it, up to
    // `wal_writer_delay` (200 ms by default) later, and a peek would sit that long (most of a
    // tick's time under steady writes). One small synchronous commit is far cheaper, and it
    // also puts every change committed before the call within reach of the peek.
    let unflushed: bool = node
        .query_one(
            "SELECT pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()",
            &[],
        )
        .await
        .map_err(|e| StreamError::Capture(format!("reading node {node_id}: {}", pg_message(&e))))?
        .get(0);
    if flush || unflushed {
        node.batch_execute(shoal_cluster::capture::FLUSH_WAL_SQL)
            .await
            .map_err(|e| {
                StreamError::Capture(format!("flushing node {node_id}: {}", pg_message(&e)))
            })?;
    }
    // Everything committed and flushed before this position is in the peek below, unless the
    // peek stops at `limit`: then the frontier can move up to here even without a transaction
    // of ours (a shard move's barrier waits on it).
    let flushed: String = node
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(|e| StreamError::Capture(format!("reading node {node_id}: {}", pg_message(&e))))?
        .get(0);
    let rows: Vec<(String, String)> = node
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2,
                 'include-xids', '0', 'skip-empty-xacts', '1', 'only-local', '1')",
            &[&SLOT_NAME, &limit],
        )
        .await
        .map_err(|e| {
            StreamError::Capture(format!(
                "reading the slot of node {node_id}: {}",
                pg_message(&e)
            ))
        })?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let complete = rows.len() < usize::try_from(limit).unwrap_or(usize::MAX);
    let transactions =
        decode::transactions(&rows).map_err(|e| StreamError::Capture(e.to_string()))?;
    let last_commit = transactions.last().map(|t| t.commit_lsn.clone());
    let last_lsn = match (&last_commit, complete) {
        (Some(commit), false) => commit.clone(),
        (Some(commit), true) if parse_lsn(commit) > parse_lsn(&flushed) => commit.clone(),
        (_, true) => flushed.clone(),
        (None, false) => {
            mark_polled(cluster, node_id).await?;
            return Ok(0);
        }
    };

    let tx = coordinator.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BUFFER_LOCK])
        .await?;
    let frontier: String = tx
        .query_one(
            "SELECT frontier::text FROM shoal.worker_slot WHERE node_id = $1 FOR UPDATE",
            &[&node_id],
        )
        .await?
        .get(0);
    let frontier = parse_lsn(&frontier).unwrap_or(0);
    let mut rows = Vec::new();
    let mut truncated = Vec::new();
    for txn in &transactions {
        let commit_lsn = parse_lsn(&txn.commit_lsn).unwrap_or(0);
        if commit_lsn <= frontier {
            continue; // stored before a crash; the slot was not advanced yet
        }
        for change in &txn.changes {
            let Some((table_id, shard_id)) = map.lookup(&change.schema, &change.table) else {
                continue;
            };
            if change.kind == ChangeKind::Truncate {
                truncated.push(table_id);
                continue;
            }
            let old = change.old.as_ref().map(|old| map.values(table_id, old));
            let new = change.new.as_ref().map(|new| {
                map.values(
                    table_id,
                    &decode::complete_new_row(change.old.as_ref(), new),
                )
            });
            rows.push((table_id, shard_id, PgLsn::from(commit_lsn), old, new));
        }
    }
    let stored = rows.len() as u64;
    if stored > 0 {
        store_changes(&tx, node_id, &rows).await?;
    }
    if !truncated.is_empty() {
        // A TRUNCATE carries no rows: the stream tables over it start again from a full refresh.
        tx.execute(
            "UPDATE shoal.stream_table SET needs_reinit = true WHERE stream_id IN (
                 SELECT stream_id FROM shoal.stream_source WHERE table_id = ANY ($1))",
            &[&truncated],
        )
        .await?;
    }
    tx.execute(
        "UPDATE shoal.worker_slot SET frontier = greatest(frontier, $2::text::pg_lsn), last_poll_at = now(),
                consecutive_failures = 0, alert = false, last_error = NULL
         WHERE node_id = $1",
        &[&node_id, &last_lsn],
    )
    .await?;
    tx.commit().await?;
    if stored > 0 {
        crash_point("after-capture-store");
    }
    node.execute(
        "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
        &[&SLOT_NAME, &last_lsn],
    )
    .await
    .map_err(|e| {
        StreamError::Capture(format!(
            "advancing the slot of node {node_id}: {}",
            pg_message(&e)
        ))
    })?;
    Ok(stored)
}

/// One buffered change: table, shard, commit LSN, old and new values.
type BufferedChange = (
    i32,
    i64,
    PgLsn,
    Option<Vec<Option<String>>>,
    Option<Vec<Option<String>>>,
);

/// Appends changes to the buffer with a binary `COPY`: no statement per row, and arrays of
/// texts cost the coordinator next to nothing to parse (JSON objects cost it several times more).
async fn store_changes(
    tx: &tokio_postgres::Transaction<'_>,
    node_id: i32,
    rows: &[BufferedChange],
) -> Result<(), StreamError> {
    let sink = tx
        .copy_in(
            "COPY shoal.change_buffer (table_id, shard_id, node_id, commit_lsn, old_values, new_values)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT4,
            Type::INT8,
            Type::INT4,
            Type::PG_LSN,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
        ],
    );
    futures_util::pin_mut!(writer);
    for (table_id, shard_id, commit_lsn, old, new) in rows {
        writer
            .as_mut()
            .write(&[table_id, shard_id, &node_id, commit_lsn, old, new])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn mark_polled(cluster: &Cluster, node_id: i32) -> Result<(), StreamError> {
    cluster
        .client()
        .execute(
            "UPDATE shoal.worker_slot SET last_poll_at = now(), consecutive_failures = 0, alert = false,
                    last_error = NULL WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
    Ok(())
}

/// Fault injection for crash tests: `SHOAL_FAILPOINTS=crash:after-capture-store` ends the process
/// at once (as a SIGKILL would) between storing changes and advancing the slot.
fn crash_point(name: &str) {
    if std::env::var("SHOAL_FAILPOINTS")
        .is_ok_and(|v| v.split(';').any(|p| p.trim() == format!("crash:{name}")))
    {
        eprintln!("failpoint: crashing at {name}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert!(parse_lsn("1/0").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert!(parse_lsn("0/1A2B0").unwrap() > parse_lsn("0/9FFF").unwrap());
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
