//! The cutover: the only moment writes to the shard group wait.
//!
//! Locks are taken on the shard group's own partitioned tables on the coordinator (see
//! `shoal_cluster::layout`), in one fixed order, each attempt bounded by a short lock timeout
//! and retried, so the cutover never queues for long behind a long transaction (and writers
//! never queue for long behind the cutover). Then the source's WAL is flushed and its position
//! recorded, the target confirms it has applied everything up to that position, the foreign
//! tables are repointed and the catalog updated, in one transaction.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::engine::{applied_lsn, Transfer};
use crate::{CancelToken, Context, TransferError};
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy};
use shoal_cluster::{fence, layout};
use shoal_sql::QualifiedName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Blocks writes, lets reads through (block_writes copies under it).
    Exclusive,
    /// Needed to detach a partition; blocks reads of the shard too, briefly.
    AccessExclusive,
}

impl LockMode {
    fn sql(self) -> &'static str {
        match self {
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }
}

/// Locks `tables` in relid order inside `tx`, retrying after each lock timeout. Returns when the
/// successful attempt started: from then on writers to these tables wait.
pub async fn lock_with_retry(
    transfer: &Transfer<'_>,
    tx: &Transaction<'_>,
    tables: &[QualifiedName],
    mode: LockMode,
    cancel: &CancelToken,
) -> Result<Instant, TransferError> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let ordered: Vec<String> = tx
        .query(
            "SELECT n.name FROM unnest($1::text[]) n(name) ORDER BY to_regclass(n.name)::oid",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tuning = transfer.tuning().clone();
    fence_endpoints(transfer, cancel).await?;
    let lock = format!("LOCK TABLE {} IN {} MODE", ordered.join(", "), mode.sql());
    let mut backoff = Duration::from_millis(10);
    for attempt in 1..=tuning.cutover_attempts {
        transfer.check_cancel(cancel).await?;
        tx.batch_execute(&format!(
            "SAVEPOINT shoal_lock; SET LOCAL lock_timeout = '{}ms'",
            tuning.cutover_lock_timeout.as_millis().max(1)
        ))
        .await?;
        let started = Instant::now();
        match tx.batch_execute(&lock).await {
            Ok(()) => {
                tx.batch_execute("SET LOCAL lock_timeout = 0; RELEASE SAVEPOINT shoal_lock")
                    .await?;
                set_waiting_for(transfer, None).await;
                return Ok(started);
            }
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT shoal_lock").await?;
                let holder = lock_holder(transfer.cluster().client(), &names).await;
                tracing::info!(attempt, ?holder, "shard group busy at cutover; retrying");
                set_waiting_for(transfer, holder).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(error) => return Err(error).context(|| format!("locking {}", ordered.join(", "))),
        }
    }
    Err(TransferError::Timeout(format!(
        "could not lock the shard group on the coordinator after {} attempts: a long transaction \
         keeps using it (see the waiting_for_pid column of shoal.transfer); try again later",
        tuning.cutover_attempts
    )))
}

/// Shoal's endpoints send the group's statements to its node directly: they must stop before
/// the group is locked here, and have finished what they run there (see `shoal_cluster::fence`).
/// Like the locks, each attempt is short: an endpoint transaction that keeps the group busy
/// gets the fence lowered again (its statements, and everyone's, flow on) and a later retry.
async fn fence_endpoints(
    transfer: &Transfer<'_>,
    cancel: &CancelToken,
) -> Result<(), TransferError> {
    let group = transfer.group_ref();
    let operation_id = transfer.operation_id_internal();
    let client = transfer.cluster().client();
    let fence = fence::Fence {
        operation_id,
        colocation_id: group.colocation_id,
        shard_index: group.shard_index,
    };
    let tuning = transfer.tuning().clone();
    let mut backoff = Duration::from_millis(10);
    for attempt in 1..=tuning.cutover_attempts {
        transfer.check_cancel(cancel).await?;
        fence::raise(client, fence, FENCE_TTL).await?;
        if fence::wait_acknowledged(client, operation_id, tuning.cutover_lock_timeout).await? {
            return Ok(());
        }
        fence::lower(client, operation_id).await?;
        tracing::info!(
            attempt,
            "an endpoint transaction keeps the shard group busy at cutover; retrying"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    Err(TransferError::Timeout(format!(
        "a transaction through Shoal's endpoint kept using the shard group at each of {} cutover \
         attempts; try again later",
        tuning.cutover_attempts
    )))
}

/// How long a fence holds if its move vanished without lowering it and its lock lingers.
const FENCE_TTL: Duration = Duration::from_secs(3600);

async fn lock_holder(client: &Client, names: &[String]) -> Option<i32> {
    client
        .query_opt(
            "SELECT l.pid FROM pg_locks l
             WHERE l.relation = ANY (SELECT to_regclass(n)::oid FROM unnest($1::text[]) n)
               AND l.granted AND l.pid <> pg_backend_pid()
             ORDER BY l.pid LIMIT 1",
            &[&names],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

async fn set_waiting_for(transfer: &Transfer<'_>, pid: Option<i32>) {
    let _ = transfer
        .cluster()
        .client()
        .execute(
            "UPDATE shoal.transfer SET waiting_for_pid = $2, updated_at = now() WHERE operation_id = $1",
            &[&transfer.operation_id_internal(), &pid],
        )
        .await;
}

/// Flushes the source's WAL (see `FLUSH_WAL_SQL`) and returns the flushed position: every write that reached the source
/// before the lock is at or before it.
async fn flush_source(source: &Client) -> Result<String, TransferError> {
    source
        .batch_execute(shoal_cluster::capture::FLUSH_WAL_SQL)
        .await
        .context(|| "flushing the source's WAL".to_string())?;
    Ok(source
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await?
        .get(0))
}

impl<'a> Transfer<'a> {
    /// Switches the group to the target. `logical`: the target's client and subscription, to wait
    /// for the final catch-up. `held`: the transaction that already blocks writes (block_writes).
    pub(crate) async fn cutover(
        &mut self,
        source: &Client,
        logical: Option<(&Client, &str)>,
        held: Option<(Transaction<'_>, Instant)>,
        cancel: &CancelToken,
    ) -> Result<(), TransferError> {
        let partitions = self.partition_names();
        let (write_block_ms, lsn) = match held {
            Some((tx, blocked_at)) => {
                self.prepare_switch(&tx).await?;
                lock_with_retry(self, &tx, &partitions, LockMode::AccessExclusive, cancel).await?;
                let lsn = flush_source(source).await?;
                self.switch(&tx, &lsn, None).await?;
                tx.commit()
                    .await
                    .context(|| "committing the cutover".to_string())?;
                let _ = fence::lower(self.cluster().client(), self.operation_id_internal()).await;
                (blocked_at.elapsed().as_secs_f64() * 1000.0, lsn)
            }
            None => {
                let (target, subscription) = logical.expect("a logical cutover has a subscription");
                let mut coordinator = self.cluster().coordinator(self.label()).await?;
                let tx = coordinator.transaction().await?;
                self.prepare_switch(&tx).await?;
                let blocked_at =
                    lock_with_retry(self, &tx, &partitions, LockMode::AccessExclusive, cancel)
                        .await?;
                let (marker, lsn) = self.mark_source(source).await?;
                let marked = blocked_at.elapsed();
                let deadline = Instant::now() + self.tuning().final_catch_up_timeout;
                while !self.marker_reached(target, marker).await? {
                    if Instant::now() > deadline {
                        return Err(TransferError::Timeout(format!(
                            "the target did not apply the last changes (up to {lsn}) within {} s \
                             while writes were blocked; writes resume on the source",
                            self.tuning().final_catch_up_timeout.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let caught_up = blocked_at.elapsed();
                let target_lsn = applied_lsn(target, subscription).await?;
                self.switch(&tx, &lsn, target_lsn.as_deref()).await?;
                let switched = blocked_at.elapsed();
                tx.commit()
                    .await
                    .context(|| "committing the cutover".to_string())?;
                let _ = fence::lower(self.cluster().client(), self.operation_id_internal()).await;
                tracing::debug!(
                    marked_ms = marked.as_secs_f64() * 1000.0,
                    caught_up_ms = caught_up.as_secs_f64() * 1000.0,
                    switched_ms = switched.as_secs_f64() * 1000.0,
                    "cutover timings"
                );
                (blocked_at.elapsed().as_secs_f64() * 1000.0, lsn)
            }
        };
        self.mark_switched(write_block_ms, lsn);
        self.cluster()
            .client()
            .execute(
                "UPDATE shoal.transfer SET write_block_ms = $2 WHERE operation_id = $1",
                &[&self.operation_id_internal(), &write_block_ms],
            )
            .await?;
        tracing::info!(
            operation = self.operation_id_internal(),
            write_block_ms,
            "cutover committed"
        );
        Ok(())
    }

    /// The catalog half of the switch, written in the cutover's transaction before its locks are
    /// taken (so it costs the blocked writers nothing): the placements move to the target, the
    /// source's shard tables get deferred cleanup records, and the target's on-failure records
    /// go. None of it is visible until the transaction commits with the repointed tables.
    async fn prepare_switch(&self, tx: &Transaction<'_>) -> Result<(), TransferError> {
        let target = self.target_ref().clone();
        let source = self.source_ref().clone();
        let operation_id = self.operation_id_internal();
        for member in &self.group_ref().members {
            model::insert_cleanup_record(
                tx,
                operation_id,
                CleanupObject::ShardTable,
                Some(&member.shard_table.schema),
                &member.shard_table.name,
                source.node_id,
                CleanupPolicy::DeferredOnSuccess,
            )
            .await?;
        }
        let shard_ids = self.group_ref().shard_ids();
        tx.execute(
            "UPDATE shoal.placement SET node_id = $1, size_bytes = NULL, size_measured_at = NULL
             WHERE shard_id = ANY ($2) AND node_id = $3",
            &[&target.node_id, &shard_ids, &source.node_id],
        )
        .await?;
        model::delete_cleanup_records(tx, operation_id, CleanupPolicy::OnFailure).await?;
        Ok(())
    }

    /// Repoints the coordinator's foreign tables at the target, all in one round trip (writes
    /// wait while this runs): dropping a partition detaches it, and the new foreign table is
    /// created as the shard's only partition.
    async fn switch(
        &self,
        tx: &Transaction<'_>,
        final_lsn: &str,
        target_lsn: Option<&str>,
    ) -> Result<(), TransferError> {
        let target = self.target_ref().clone();
        let ddl: Vec<String> = self
            .group_ref()
            .members
            .iter()
            .map(|member| {
                format!(
                    "DROP FOREIGN TABLE {leaf};\n{create}",
                    leaf = member.shard_table.quoted(),
                    create = layout::placement_ddl(
                        &member.partition,
                        &member.shard_table,
                        &target.fdw_server
                    )
                )
            })
            .collect();
        tx.batch_execute(&ddl.join(";\n"))
            .await
            .context(|| format!("repointing the shard group at {}", target.address()))?;
        tx.execute(
            "UPDATE shoal.transfer SET final_source_lsn = $2::text::pg_lsn,
                    target_lsn = coalesce($3::text::pg_lsn, target_lsn), cutover_at = now(),
                    updated_at = now()
             WHERE operation_id = $1",
            &[&self.operation_id_internal(), &final_lsn, &target_lsn],
        )
        .await?;
        Ok(())
    }
}
