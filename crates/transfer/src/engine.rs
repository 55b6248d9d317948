//! The transfer itself: preparation (validation and locks), the steps of each mode, and what
//! happens on success, failure and cancellation.

use std::time::{Duration, Instant};

use futures_util::{pin_mut, SinkExt, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

use crate::cutover::{lock_with_retry, LockMode};
use crate::failpoint::{self, Failpoint};
use crate::group::{find_shard, foreign_key_target, load_group, ShardGroup};
use crate::recover::{settle_unfinished, try_group_lock, unlock_group};
use crate::status::{choose_mode, ChosenMode, Mode, Operation, Status};
use crate::{CancelToken, Context, TransferError};
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, Node, TableKind};
use shoal_cluster::cleanup::{begin_operation, end_operation, run_cleanup};
use shoal_cluster::{locks, privileges, reference, resolve_node, Cluster};
use shoal_ddl::definition::{
    foreign_key_ddl, has_replica_identity, shard_object_name, shard_table_phases, ShardTablePhases,
};
use shoal_sql::{quote_ident, quote_literal, QualifiedName};

#[derive(Debug, Clone)]
pub struct TransferRequest {
    pub shard_id: i64,
    /// Node id or `HOST:PORT`.
    pub target: String,
    pub mode: Mode,
    pub operation: Operation,
}

/// Which end of a transfer a measurement is of.
#[derive(Debug, Clone, Copy)]
enum Side {
    Source,
    Target,
}

/// Timeouts and intervals; the defaults suit production, tests may shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long the target may take to catch up before the cutover (not counting the copy).
    pub catch_up_timeout: Duration,
    /// How long one attempt to lock the shard group's coordinator tables may wait: writers queue
    /// behind a waiting lock request, so this bounds the extra stall a busy shard can see.
    pub cutover_lock_timeout: Duration,
    /// How many lock attempts before the transfer gives up.
    pub cutover_attempts: u32,
    /// How long the target may take to apply the last changes while writes are blocked.
    pub final_catch_up_timeout: Duration,
    pub poll_interval: Duration,
    /// A reference table copy leaves out the table's foreign keys to other reference tables
    /// (which may not be on the node yet); the caller creates them once every copy is done.
    pub defer_reference_foreign_keys: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            catch_up_timeout: Duration::from_secs(600),
            cutover_lock_timeout: Duration::from_millis(50),
            cutover_attempts: 600,
            final_catch_up_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            defer_reference_foreign_keys: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    pub operation_id: i64,
    /// The shard named in the request.
    pub anchor_shard_id: i64,
    pub operation: Operation,
    pub mode: Mode,
    pub mode_reason: Option<String>,
    pub tables: Vec<QualifiedName>,
    pub shard_ids: Vec<i64>,
    pub source: String,
    pub target: String,
    pub bytes: i64,
    /// How long writes to the group were blocked at the coordinator.
    pub write_block_ms: f64,
    pub elapsed_ms: f64,
    pub final_source_lsn: Option<String>,
    /// Problems after the switch (the move itself is done).
    pub warnings: Vec<String>,
}

/// A prepared transfer: validated, its locks taken and its catalog row written.
pub struct Transfer<'a> {
    cluster: &'a Cluster,
    operation_id: i64,
    operation: Operation,
    anchor_shard_id: i64,
    group: ShardGroup,
    source: Node,
    target: Node,
    mode: ChosenMode,
    tuning: Tuning,
    label: String,
    switched: bool,
    bytes: i64,
    write_block_ms: f64,
    final_source_lsn: Option<String>,
    warnings: Vec<String>,
    next_marker: std::sync::atomic::AtomicI64,
    /// A `block_writes` copy's writes on the target carry replication origins (see
    /// [`Transfer::copy_rows`]); without the right to create them (a managed service's admin
    /// role), and with no change capture to tell the copy from new writes, they do not.
    tag_origins: bool,
}

impl<'a> Transfer<'a> {
    /// Checks the request and takes the shard group's lock; nothing is created yet.
    pub async fn prepare(
        cluster: &'a Cluster,
        request: &TransferRequest,
        tuning: Tuning,
    ) -> Result<Transfer<'a>, TransferError> {
        let client = cluster.client();
        let (table, shard_index) = find_shard(client, request.shard_id).await?;
        let target = resolve_node(client, &request.target).await?;
        match (table.kind, request.operation) {
            (TableKind::Reference, Operation::Move) => {
                return Err(TransferError::Refused(format!(
                    "shard {} belongs to reference table {}, which is on every node; use `shoal shard copy` \
                     to add it to a node that lacks it",
                    request.shard_id, table.name
                )))
            }
            (TableKind::Hash | TableKind::Schema, Operation::Copy) => {
                return Err(TransferError::Refused(format!(
                    "shard {} belongs to {}, which keeps exactly one placement per shard; use \
                     `shoal shard move` to put it on another node",
                    request.shard_id, table.name
                )))
            }
            _ => {}
        }
        let mut group = load_group(client, &table, shard_index).await?;
        let placements = model::placements_of_table(client, table.table_id).await?;
        let source_id = match request.operation {
            Operation::Move => group.source_node,
            // A copy reads from the coordinator, which is authoritative for reference tables.
            Operation::Copy => placements
                .first()
                .map(|p| p.node_id)
                .unwrap_or(target.node_id),
        };
        let already_there = match request.operation {
            Operation::Move => group.source_node == target.node_id,
            Operation::Copy => placements.iter().any(|p| p.node_id == target.node_id),
        };
        if already_there {
            return Err(TransferError::Refused(format!(
                "shard {} is already on node {} ({})",
                request.shard_id,
                target.node_id,
                target.address()
            )));
        }
        if !target.is_active {
            return Err(TransferError::Refused(format!(
                "node {} ({}) is disabled; run `shoal node activate {}` first",
                target.node_id,
                target.address(),
                target.node_id
            )));
        }
        let source = model::get_node(client, source_id)
            .await?
            .ok_or_else(|| TransferError::Refused(format!("node {source_id} is not registered")))?;
        group.source_node = source.node_id;
        let without_identity: Vec<String> = group
            .members
            .iter()
            .filter(|m| !has_replica_identity(&m.def))
            .map(|m| m.table.name.to_string())
            .collect();
        let mode = match request.operation {
            Operation::Copy => {
                // A reference table's copy subscribes to the coordinator's publication.
                if let Some(why) =
                    privileges::logical_replication_refused(cluster, None, &target).await?
                {
                    return Err(TransferError::Refused(format!(
                        "a reference table is copied by logical replication, and {why}"
                    )));
                }
                ChosenMode {
                    mode: Mode::ForceLogical,
                    reason: None,
                }
            }
            Operation::Move => {
                let logical_refused = match request.mode {
                    Mode::BlockWrites => None,
                    _ => {
                        privileges::logical_replication_refused(cluster, Some(&source), &target)
                            .await?
                    }
                };
                choose_mode(request.mode, &without_identity, logical_refused.as_deref())
                    .map_err(TransferError::Refused)?
            }
        };

        let tag_origins =
            mode.mode == Mode::BlockWrites && origins_allowed(cluster, &target).await?;
        if mode.mode == Mode::BlockWrites
            && !tag_origins
            && shoal_cluster::capture::capture_active(cluster).await?
        {
            return Err(TransferError::Refused(format!(
                "a block_writes move tags the rows it copies with a replication origin, so that \
                 the stream tables' change capture on node {} does not take them for new \
                 writes, and this role may not create replication origins there; move with \
                 --mode force_logical, or GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), \
                 pg_replication_origin_drop(text), pg_replication_origin_session_setup(text), \
                 pg_replication_origin_session_reset() TO the role on that node",
                target.node_id
            )));
        }
        let operation_id = begin_operation(cluster).await?;
        if let Err(error) = take_group_locks(cluster, &group, request.shard_id).await {
            end_operation(cluster, operation_id).await;
            return Err(error);
        }
        // The definitions again, now that no DDL can change them until the transfer ends (DDL
        // takes the colocation group's lock exclusively): one committed since they were read
        // must reach the target.
        match load_group(client, &table, shard_index).await {
            Ok(fresh)
                if fresh.shard_ids() == group.shard_ids()
                    && (request.operation == Operation::Copy
                        || fresh.source_node == group.source_node) =>
            {
                group.members = fresh.members;
            }
            Ok(_) => {
                release_group_locks(cluster, &group).await;
                end_operation(cluster, operation_id).await;
                return Err(TransferError::Refused(format!(
                    "shard group of shard {} changed while the transfer was being prepared; \
                     run it again",
                    request.shard_id
                )));
            }
            Err(error) => {
                release_group_locks(cluster, &group).await;
                end_operation(cluster, operation_id).await;
                return Err(error);
            }
        }
        let inserted = client
            .execute(
                "INSERT INTO shoal.transfer (operation_id, operation, mode, colocation_id, shard_index,
                     anchor_shard_id, source_node, target_node, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &operation_id,
                    &request.operation.as_str(),
                    &mode.mode.as_str(),
                    &group.colocation_id,
                    &group.shard_index,
                    &request.shard_id,
                    &source.node_id,
                    &target.node_id,
                    &Status::NotStartedYet.as_str(),
                ],
            )
            .await;
        let prepared =
            match inserted {
                Ok(_) => {
                    for member in &group.members {
                        client
                        .execute(
                            "INSERT INTO shoal.transfer_shard (operation_id, shard_id, table_name)
                             VALUES ($1, $2, $3)",
                            &[&operation_id, &member.shard_id, &member.table.name.to_string()],
                        )
                        .await?;
                    }
                    Ok(())
                }
                Err(e) => Err(TransferError::from(e)),
            };
        if let Err(error) = prepared {
            release_group_locks(cluster, &group).await;
            end_operation(cluster, operation_id).await;
            return Err(error);
        }
        let label = format!(
            "{} {} op={operation_id} shard={}",
            cluster.label(),
            request.operation.as_str(),
            request.shard_id
        );
        Ok(Transfer {
            cluster,
            operation_id,
            operation: request.operation,
            anchor_shard_id: request.shard_id,
            group,
            source,
            target,
            mode,
            tuning,
            label,
            switched: false,
            bytes: 0,
            write_block_ms: 0.0,
            final_source_lsn: None,
            warnings: Vec::new(),
            next_marker: std::sync::atomic::AtomicI64::new(1),
            tag_origins,
        })
    }

    pub fn operation_id(&self) -> i64 {
        self.operation_id
    }

    pub fn mode(&self) -> &ChosenMode {
        &self.mode
    }

    pub fn group(&self) -> &ShardGroup {
        &self.group
    }

    pub fn source(&self) -> &Node {
        &self.source
    }

    pub fn target(&self) -> &Node {
        &self.target
    }

    /// Runs the transfer to its end. On failure or cancellation the source stays authoritative
    /// and every object the transfer created is removed (or left to `shoal cleanup` if a node
    /// cannot be reached).
    pub async fn run(mut self, cancel: CancelToken) -> Result<TransferReport, TransferError> {
        let started = Instant::now();
        let result = match (self.operation, self.mode.mode) {
            (Operation::Copy, _) => self.copy_reference(&cancel).await,
            (Operation::Move, Mode::BlockWrites) => self.move_blocking(&cancel).await,
            (Operation::Move, _) => self.move_logical(&cancel).await,
        };
        let outcome = match result {
            Ok(()) => {
                self.finish(Status::Completed, None).await;
                Ok(())
            }
            Err(error) if self.switched => {
                // The group already lives on the target: the transfer is done, with a warning.
                self.warnings.push(error.to_string());
                let report = run_cleanup(self.cluster, Some(self.operation_id)).await;
                if let Ok(report) = report {
                    self.warnings.extend(report.failed);
                }
                self.finish(Status::Completed, Some(self.warnings.join("; ")))
                    .await;
                Ok(())
            }
            Err(error) => {
                let error = match run_cleanup(self.cluster, Some(self.operation_id)).await {
                    Ok(report) if report.is_clean() => error,
                    Ok(report) => TransferError::Refused(format!(
                        "{error}; could not remove {} yet: run `shoal cleanup` once the node is back",
                        report.failed.join(", ")
                    )),
                    Err(cleanup) => TransferError::Refused(format!(
                        "{error}; cleanup failed too ({cleanup}): run `shoal cleanup`"
                    )),
                };
                self.finish(Status::Failed, Some(error.to_string())).await;
                Err(error)
            }
        };
        let _ = shoal_cluster::fence::lower(self.cluster.client(), self.operation_id).await;
        release_group_locks(self.cluster, &self.group).await;
        end_operation(self.cluster, self.operation_id).await;
        outcome?;
        Ok(TransferReport {
            operation_id: self.operation_id,
            anchor_shard_id: self.anchor_shard_id,
            operation: self.operation,
            mode: self.mode.mode,
            mode_reason: self.mode.reason.clone(),
            tables: self
                .group
                .members
                .iter()
                .map(|m| m.table.name.clone())
                .collect(),
            shard_ids: self.group.shard_ids(),
            source: self.source.address(),
            target: self.target.address(),
            bytes: self.bytes,
            write_block_ms: self.write_block_ms,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            final_source_lsn: self.final_source_lsn.clone(),
            warnings: self.warnings.clone(),
        })
    }

    async fn finish(&self, status: Status, error: Option<String>) {
        let result = self
            .cluster
            .client()
            .execute(
                "UPDATE shoal.transfer SET status = $2, error = $3, finished_at = now(),
                        updated_at = now(), waiting_for_pid = NULL
                 WHERE operation_id = $1",
                &[&self.operation_id, &status.as_str(), &error],
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(operation = self.operation_id, error = %e, "could not record the end of a transfer");
        }
    }

    async fn set_status(&self, status: Status, cancel: &CancelToken) -> Result<(), TransferError> {
        self.check_cancel(cancel).await?;
        tracing::info!(
            operation = self.operation_id,
            status = status.as_str(),
            "transfer"
        );
        self.cluster
            .client()
            .execute(
                "UPDATE shoal.transfer SET status = $2, updated_at = now() WHERE operation_id = $1",
                &[&self.operation_id, &status.as_str()],
            )
            .await?;
        self.failpoints(status, cancel).await
    }

    async fn failpoints(&self, status: Status, cancel: &CancelToken) -> Result<(), TransferError> {
        for point in failpoint::from_env() {
            match point {
                Failpoint::Fail { at } if at == status => {
                    return Err(TransferError::Refused(format!(
                        "failpoint: failing at {}",
                        status.as_str()
                    )))
                }
                Failpoint::Pause { at, for_ } if at == status => {
                    tracing::warn!(status = status.as_str(), "failpoint: pausing");
                    let started = Instant::now();
                    while for_.is_none_or(|d| started.elapsed() < d) {
                        self.check_cancel(cancel).await?;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Ctrl-C in this process, or `shoal shard cancel` from anywhere (through the catalog).
    pub(crate) async fn check_cancel(&self, cancel: &CancelToken) -> Result<(), TransferError> {
        if cancel.is_cancelled() {
            return Err(TransferError::Cancelled);
        }
        let requested: bool = self
            .cluster
            .client()
            .query_one(
                "SELECT cancel_requested FROM shoal.transfer WHERE operation_id = $1",
                &[&self.operation_id],
            )
            .await?
            .get(0);
        if requested {
            cancel.cancel();
            return Err(TransferError::Cancelled);
        }
        Ok(())
    }

    async fn record(
        &self,
        object: CleanupObject,
        schema: Option<&str>,
        name: &str,
        node: &Node,
        policy: CleanupPolicy,
    ) -> Result<(), TransferError> {
        model::insert_cleanup_record(
            self.cluster.client(),
            self.operation_id,
            object,
            schema,
            name,
            node.node_id,
            policy,
        )
        .await?;
        Ok(())
    }

    async fn connect(&self, node: &Node) -> Result<Client, TransferError> {
        Ok(self.cluster.node_client(node, &self.label).await?)
    }

    fn replication_name(&self) -> String {
        format!("shoal_move_{}", self.operation_id)
    }

    /// Creates the target's shard tables, with their primary key and replica identity when
    /// `with_identity` (a subscription's initial copy applies changes by them), else bare (the
    /// indexes are built once over the copied rows).
    async fn create_target_tables(
        &self,
        target: &Client,
        with_identity: bool,
    ) -> Result<(), TransferError> {
        for member in &self.group.members {
            self.record(
                CleanupObject::ShardTable,
                Some(&member.shard_table.schema),
                &member.shard_table.name,
                &self.target,
                CleanupPolicy::OnFailure,
            )
            .await?;
        }
        let mut ddl = vec!["BEGIN".to_string()];
        for member in &self.group.members {
            let phases =
                shard_table_phases(&member.def, &member.shard_table, Some(member.shard_id));
            ddl.extend(phases.create);
            if with_identity {
                ddl.extend(phases.identity);
            }
        }
        ddl.push("COMMIT".to_string());
        target
            .batch_execute(&ddl.join(";\n"))
            .await
            .context(|| format!("creating the shard tables on {}", self.target.address()))
    }

    /// One target connection per table of the group, for its copy and then its indexes (every
    /// connection costs the server a process start).
    async fn table_writers(&self) -> Result<Vec<Client>, TransferError> {
        let writers = self
            .group
            .members
            .iter()
            .map(|_| self.connect(&self.target));
        futures_util::future::try_join_all(writers).await
    }

    /// Runs one phase of the group's DDL on the target (see [`shard_table_phases`]), each table
    /// on its own connection of `writers`, so that the tables' indexes are built at once.
    async fn build_on_target(
        &self,
        writers: &[Client],
        phase: fn(ShardTablePhases) -> Vec<String>,
    ) -> Result<(), TransferError> {
        let builds = self
            .group
            .members
            .iter()
            .zip(writers)
            .map(|(member, writer)| async move {
                let statements = phase(shard_table_phases(
                    &member.def,
                    &member.shard_table,
                    Some(member.shard_id),
                ));
                if statements.is_empty() {
                    return Ok(());
                }
                writer
                    .batch_execute(&statements.join(";\n"))
                    .await
                    .context(|| format!("creating constraints on {}", member.shard_table))
            });
        futures_util::future::try_join_all(builds).await?;
        Ok(())
    }

    /// Foreign keys on the target, added `NOT VALID` (no long lock on a live table) and then
    /// validated (which does not block writes).
    async fn create_foreign_keys(&self, target: &Client) -> Result<(), TransferError> {
        create_group_foreign_keys(self.cluster, &self.group, target).await
    }

    /// Measures the group's tables on one side and records each size; returns the total.
    async fn measure(&self, side: Side, client: &Client) -> Result<i64, TransferError> {
        let record = match side {
            Side::Source => {
                "UPDATE shoal.transfer_shard SET source_size = $3 WHERE operation_id = $1 AND shard_id = $2"
            }
            Side::Target => {
                "UPDATE shoal.transfer_shard SET target_size = $3 WHERE operation_id = $1 AND shard_id = $2"
            }
        };
        let mut total = 0;
        for member in &self.group.members {
            let size: i64 = client
                .query_one(
                    "SELECT pg_table_size(to_regclass($1))",
                    &[&member.shard_table.quoted()],
                )
                .await?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0);
            total += size;
            self.cluster
                .client()
                .execute(record, &[&self.operation_id, &member.shard_id, &size])
                .await?;
        }
        Ok(total)
    }

    /// Measures the source tables (the total to copy).
    async fn measure_source(&mut self, source: &Client) -> Result<(), TransferError> {
        let total = self.measure(Side::Source, source).await?;
        self.cluster
            .client()
            .execute(
                "UPDATE shoal.transfer SET bytes_total = $2, bytes_done = 0 WHERE operation_id = $1",
                &[&self.operation_id, &total],
            )
            .await?;
        self.bytes = total;
        Ok(())
    }

    /// Records how much of each table the target holds now.
    async fn measure_target(&self, target: &Client) -> Result<(), TransferError> {
        self.measure(Side::Target, target).await?;
        self.cluster
            .client()
            .execute(
                "UPDATE shoal.transfer t SET bytes_done = (
                     SELECT coalesce(sum(least(coalesce(target_size, 0), coalesce(source_size, 0))), 0)
                     FROM shoal.transfer_shard s WHERE s.operation_id = t.operation_id),
                     updated_at = now()
                 WHERE operation_id = $1",
                &[&self.operation_id],
            )
            .await?;
        Ok(())
    }

    async fn record_lsns(
        &self,
        source_lsn: &str,
        target_lsn: Option<&str>,
    ) -> Result<(), TransferError> {
        self.cluster
            .client()
            .execute(
                "UPDATE shoal.transfer SET source_lsn = $2::text::pg_lsn,
                        target_lsn = $3::text::pg_lsn, updated_at = now()
                 WHERE operation_id = $1",
                &[&self.operation_id, &source_lsn, &target_lsn],
            )
            .await?;
        Ok(())
    }

    /// Stream tables capture changes from every node: the target must have its slot before
    /// the group's writes arrive there, so that none of them goes uncaptured.
    async fn ensure_capture_on_target(&self) -> Result<(), TransferError> {
        if shoal_cluster::capture::capture_active(self.cluster).await? {
            shoal_cluster::capture::ensure_node_slot(self.cluster, &self.target).await?;
        }
        Ok(())
    }

    async fn move_logical(&mut self, cancel: &CancelToken) -> Result<(), TransferError> {
        self.set_status(Status::SettingUp, cancel).await?;
        self.ensure_capture_on_target().await?;
        let source = self.connect(&self.source).await?;
        let target = self.connect(&self.target).await?;
        self.measure_source(&source).await?;
        self.create_target_tables(&target, true).await?;
        let name = self.replication_name();
        let marker = self.marker_table();
        for (node, client) in [(&self.source, &source), (&self.target, &target)] {
            self.record(
                CleanupObject::ShardTable,
                Some(&marker.schema),
                &marker.name,
                node,
                CleanupPolicy::Always,
            )
            .await?;
            client
                .batch_execute(&format!(
                    "CREATE TABLE {} (id bigint PRIMARY KEY)",
                    marker.quoted()
                ))
                .await
                .context(|| format!("creating the catch-up marker on {}", node.address()))?;
        }
        self.record(
            CleanupObject::Publication,
            None,
            &name,
            &self.source,
            CleanupPolicy::Always,
        )
        .await?;
        let mut tables: Vec<String> = self
            .group
            .members
            .iter()
            .map(|m| m.shard_table.quoted())
            .collect();
        tables.push(marker.quoted());
        source
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&name),
                tables.join(", ")
            ))
            .await
            .context(|| format!("creating the publication on {}", self.source.address()))?;
        self.record(
            CleanupObject::Subscription,
            None,
            &name,
            &self.target,
            CleanupPolicy::Always,
        )
        .await?;
        self.record(
            CleanupObject::ReplicationSlot,
            None,
            &name,
            &self.source,
            CleanupPolicy::Always,
        )
        .await?;
        let conninfo = self
            .cluster
            .params()
            .with_target(&self.source.host, self.source.port, &self.source.dbname)
            .libpq_string();
        target
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {0} CONNECTION {1} PUBLICATION {0}
                 WITH (copy_data = true, enabled = false)",
                quote_ident(&name),
                quote_literal(&conninfo)
            ))
            .await
            .context(|| format!("creating the subscription on {}", self.target.address()))?;
        // The table-sync slots are named after the subscription's oid, known only now, and the
        // subscriber's system identifier: several targets' subscriptions may share an oid, and
        // their sync slots on one source must not be taken for each other's. Recorded before
        // the subscription starts creating them.
        let row = target
            .query_one(
                "SELECT s.oid, c.system_identifier::text
                 FROM pg_subscription s, pg_control_system() c WHERE s.subname = $1",
                &[&name],
            )
            .await?;
        let (suboid, system): (u32, String) = (row.get(0), row.get(1));
        self.record(
            CleanupObject::ReplicationSlot,
            None,
            &format!("pg\\_{suboid}\\_sync\\_%\\_{system}"),
            &self.source,
            CleanupPolicy::Always,
        )
        .await?;
        target
            .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(&name)))
            .await
            .context(|| format!("starting the subscription on {}", self.target.address()))?;

        self.set_status(Status::CopyingData, cancel).await?;
        self.wait_for_initial_copy(&target, &name, cancel).await?;
        self.set_status(Status::CatchingUp, cancel).await?;
        self.catch_up(&source, &target, &name, cancel).await?;
        self.set_status(Status::CreatingConstraints, cancel).await?;
        let writers = self.table_writers().await?;
        self.build_on_target(&writers, |phases| phases.after_copy)
            .await?;
        self.measure_target(&target).await?;
        self.set_status(Status::FinalCatchup, cancel).await?;
        self.catch_up(&source, &target, &name, cancel).await?;
        self.cutover(&source, Some((&target, name.as_str())), None, cancel)
            .await?;
        self.set_status_after_switch(Status::CreatingForeignKeys)
            .await;
        self.create_foreign_keys(&target).await?;
        self.set_status_after_switch(Status::Completing).await;
        self.complete().await
    }

    async fn move_blocking(&mut self, cancel: &CancelToken) -> Result<(), TransferError> {
        self.set_status(Status::SettingUp, cancel).await?;
        self.ensure_capture_on_target().await?;
        let source = self.connect(&self.source).await?;
        let target = self.connect(&self.target).await?;
        self.measure_source(&source).await?;
        self.create_target_tables(&target, false).await?;
        let mut coordinator = self.cluster.coordinator(&self.label).await?;
        let tx = coordinator.transaction().await?;
        // Writes wait from here; reads go on until the switch.
        let partitions = self.partition_names();
        lock_with_retry(self, &tx, &partitions, LockMode::Exclusive, cancel).await?;
        let blocked_at = Instant::now();
        self.set_status(Status::CopyingData, cancel).await?;
        let writers = self.table_writers().await?;
        self.copy_rows(&target, &writers, cancel).await?;
        self.set_status(Status::CreatingConstraints, cancel).await?;
        self.build_on_target(&writers, |phases| {
            phases
                .identity
                .into_iter()
                .chain(phases.after_copy)
                .collect()
        })
        .await?;
        self.measure_target(&target).await?;
        self.set_status(Status::FinalCatchup, cancel).await?;
        self.cutover(&source, None, Some((tx, blocked_at)), cancel)
            .await?;
        self.set_status_after_switch(Status::CreatingForeignKeys)
            .await;
        self.create_foreign_keys(&target).await?;
        self.set_status_after_switch(Status::Completing).await;
        self.complete().await
    }

    /// Streams every table of the group from source to target with binary COPY, each on
    /// connections of its own (`writers` on the target).
    ///
    /// The target's writes carry replication origins of the transfer's own, so that change
    /// capture on the target (`only-local`) skips the copied rows as it skips what the
    /// subscription applies: they are not new changes, only the group arriving.
    async fn copy_rows(
        &self,
        target: &Client,
        writers: &[Client],
        cancel: &CancelToken,
    ) -> Result<(), TransferError> {
        let origin_prefix = format!("{}_", self.replication_name());
        if self.tag_origins {
            self.record(
                CleanupObject::ReplicationOrigin,
                None,
                &format!("{}%", origin_prefix.replace('_', "\\_")),
                &self.target,
                CleanupPolicy::Always,
            )
            .await?;
        }
        let tag_origins = self.tag_origins;
        let readers = self
            .group
            .members
            .iter()
            .map(|_| self.connect(&self.source));
        let readers = futures_util::future::try_join_all(readers).await?;
        let copies = self
            .group
            .members
            .iter()
            .zip(readers)
            .zip(writers)
            .enumerate()
            .map(|(i, ((member, source), writer))| {
                let origin = format!("{origin_prefix}{i}");
                async move {
                    if tag_origins {
                        writer
                            .execute("SELECT pg_replication_origin_create($1)", &[&origin])
                            .await
                            .context(|| {
                                format!("creating replication origin {origin} on the target")
                            })?;
                        writer
                            .execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
                            .await
                            .context(|| {
                                format!("using replication origin {origin} on the target")
                            })?;
                    }
                    let table = member.shard_table.quoted();
                    let reader = source
                        .copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
                        .await
                        .context(|| format!("reading {} from the source", member.shard_table))?;
                    let sink = writer
                        .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
                        .await
                        .context(|| format!("writing {} to the target", member.shard_table))?;
                    pin_mut!(reader, sink);
                    while let Some(chunk) = reader.next().await {
                        if cancel.is_cancelled() {
                            return Err(TransferError::Cancelled);
                        }
                        let chunk = chunk.context(|| format!("reading {}", member.shard_table))?;
                        sink.feed(chunk)
                            .await
                            .context(|| format!("writing {}", member.shard_table))?;
                    }
                    sink.finish()
                        .await
                        .context(|| format!("finishing the copy of {}", member.shard_table))?;
                    if tag_origins {
                        writer
                            .execute("SELECT pg_replication_origin_session_reset()", &[])
                            .await?;
                    }
                    Ok::<(), TransferError>(())
                }
            });
        let copies = futures_util::future::try_join_all(copies);
        pin_mut!(copies);
        // Progress and `shoal shard cancel` while the rows stream; dropping the copies on
        // cancel closes the readers' connections and fails the unfinished COPYs into the target.
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                result = &mut copies => {
                    result?;
                    return self.measure_target(target).await;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    self.check_cancel(cancel).await?;
                    ticks += 1;
                    if ticks.is_multiple_of(3) {
                        self.measure_target(target).await?;
                    }
                }
            }
        }
    }

    pub(crate) fn partition_names(&self) -> Vec<QualifiedName> {
        self.group
            .members
            .iter()
            .map(|m| m.partition.clone())
            .collect()
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        self.cluster
    }

    pub(crate) fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    pub(crate) fn operation_id_internal(&self) -> i64 {
        self.operation_id
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn group_ref(&self) -> &ShardGroup {
        &self.group
    }

    pub(crate) fn target_ref(&self) -> &Node {
        &self.target
    }

    pub(crate) fn source_ref(&self) -> &Node {
        &self.source
    }

    pub(crate) fn mark_switched(&mut self, write_block_ms: f64, final_source_lsn: String) {
        self.switched = true;
        self.write_block_ms = write_block_ms;
        self.final_source_lsn = Some(final_source_lsn);
    }

    /// After the switch the move cannot be undone; a cancel is no longer honoured and a
    /// failpoint can only pause.
    async fn set_status_after_switch(&self, status: Status) {
        let _ = self
            .cluster
            .client()
            .execute(
                "UPDATE shoal.transfer SET status = $2, updated_at = now() WHERE operation_id = $1",
                &[&self.operation_id, &status.as_str()],
            )
            .await;
        let _ = self.failpoints(status, &CancelToken::default()).await;
    }

    /// Removes the replication objects and the source's shard tables (their records were
    /// written by the cutover). A shard table still read by a long query stays for
    /// `shoal cleanup`.
    async fn complete(&mut self) -> Result<(), TransferError> {
        let report = run_cleanup(self.cluster, Some(self.operation_id)).await?;
        for failure in report.failed {
            self.warnings
                .push(format!("left for `shoal cleanup`: {failure}"));
        }
        Ok(())
    }

    async fn wait_for_initial_copy(
        &self,
        target: &Client,
        subscription: &str,
        cancel: &CancelToken,
    ) -> Result<(), TransferError> {
        // Every table of the group and the marker: the copy is done only when all of them
        // are ready, since the marker reaching the target says nothing about a table whose
        // own copy is still running.
        let mut names: Vec<String> = self
            .group
            .members
            .iter()
            .map(|m| m.shard_table.quoted())
            .collect();
        names.push(self.marker_table().quoted());
        let tables = names.len() as i64;
        let mut last_measure = Instant::now();
        // A `shoal shard cancel` is seen within a fifth of a second; reading the catalog at
        // every 20 ms poll would cost the coordinator more than the wait is worth.
        let mut last_cancel_check: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(TransferError::Cancelled);
            }
            if last_cancel_check.is_none_or(|at| at.elapsed() >= Duration::from_millis(200)) {
                self.check_cancel(cancel).await?;
                last_cancel_check = Some(Instant::now());
            }
            let row = target
                .query_one(
                    "SELECT count(*) FILTER (WHERE sr.srsubstate = 'r'
                                               AND sr.srrelid = ANY ($2::text[]::regclass[])),
                            coalesce((SELECT sync_error_count + apply_error_count
                                      FROM pg_stat_subscription_stats st
                                      WHERE st.subid = s.oid), 0)
                     FROM pg_subscription s
                     LEFT JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
                     WHERE s.subname = $1 GROUP BY s.oid",
                    &[&subscription, &names],
                )
                .await
                .context(|| format!("watching the copy on {}", self.target.address()))?;
            let ready: i64 = row.get(0);
            let errors: i64 = row.get(1);
            if errors > 0 {
                return Err(TransferError::Refused(format!(
                    "the subscription on {} reports errors while copying; see that server's log",
                    self.target.address()
                )));
            }
            if last_measure.elapsed() > Duration::from_millis(500) {
                self.measure_target(target).await?;
                last_measure = Instant::now();
            }
            if ready >= tables {
                self.measure_target(target).await?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The table through which a transfer knows how far the target has applied the source's
    /// changes: a row written to it on the source reaches the target after every change
    /// committed before it, because one apply worker applies commits in commit order.
    fn marker_table(&self) -> QualifiedName {
        let schema = self
            .group
            .members
            .first()
            .map(|m| m.shard_table.schema.clone())
            .unwrap_or_else(|| "public".into());
        QualifiedName::new(schema, self.replication_name())
    }

    /// Writes a marker row on the source, committed and flushed (synchronous commit, whatever the
    /// server's setting), and returns its id and the source's WAL position after it.
    pub(crate) async fn mark_source(
        &self,
        source: &Client,
    ) -> Result<(i64, String), TransferError> {
        let id = self
            .next_marker
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        source
            .batch_execute(&format!(
                "BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO {} VALUES ({id}); COMMIT",
                self.marker_table().quoted()
            ))
            .await
            .context(|| "writing the catch-up marker on the source".to_string())?;
        let lsn: String = source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        Ok((id, lsn))
    }

    pub(crate) async fn marker_reached(
        &self,
        target: &Client,
        id: i64,
    ) -> Result<bool, TransferError> {
        Ok(target
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1)",
                    self.marker_table().quoted()
                ),
                &[&id],
            )
            .await
            .context(|| "reading the catch-up marker on the target".to_string())?
            .get(0))
    }

    /// Waits until the target has applied every change the source committed before now.
    async fn catch_up(
        &self,
        source: &Client,
        target: &Client,
        subscription: &str,
        cancel: &CancelToken,
    ) -> Result<(), TransferError> {
        let (marker, lsn) = self.mark_source(source).await?;
        let started = Instant::now();
        let mut checks = 0u32;
        loop {
            let reached = self.marker_reached(target, marker).await?;
            checks += 1;
            if checks % 20 == 1 || reached {
                let target_lsn = applied_lsn(target, subscription).await?;
                self.record_lsns(&lsn, target_lsn.as_deref()).await?;
            }
            if !reached && checks % 20 == 1 {
                self.check_apply_errors(target, subscription).await?;
            }
            if reached {
                return Ok(());
            }
            if started.elapsed() > self.tuning.catch_up_timeout {
                return Err(TransferError::Timeout(format!(
                    "the target did not catch up with the source (at {lsn}) within {} s; \
                     the source may be writing faster than the target applies",
                    self.tuning.catch_up_timeout.as_secs()
                )));
            }
            if checks.is_multiple_of(10) {
                self.check_cancel(cancel).await?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Fails when the target's subscription reports an error: it retries the failing change
    /// forever, so waiting longer would not help.
    async fn check_apply_errors(
        &self,
        target: &Client,
        subscription: &str,
    ) -> Result<(), TransferError> {
        let errors: i64 = target
            .query_one(
                "SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::bigint
                 FROM pg_stat_subscription_stats WHERE subname = $1",
                &[&subscription],
            )
            .await
            .context(|| format!("watching the subscription on {}", self.target.address()))?
            .get(0);
        if errors > 0 {
            return Err(TransferError::Refused(format!(
                "the subscription on {} failed to apply a change from the source; \
                 see that server's log",
                self.target.address()
            )));
        }
        Ok(())
    }

    /// Copies a reference table to a node that lacks it: a replica, the node's subscription to
    /// the reference publication, the initial copy, foreign keys, the placement.
    async fn copy_reference(&mut self, cancel: &CancelToken) -> Result<(), TransferError> {
        self.set_status(Status::SettingUp, cancel).await?;
        let member = self.group.members.first().cloned().ok_or_else(|| {
            TransferError::Refused("the reference table has no shard".to_string())
        })?;
        let target = self.connect(&self.target).await?;
        reference::create_replica(
            self.cluster,
            &self.target,
            &target,
            &member.def,
            self.operation_id,
        )
        .await?;
        self.set_status(Status::CopyingData, cancel).await?;
        reference::subscribe(self.cluster, &self.target, &target).await?;
        reference::wait_synced(
            &self.target,
            &target,
            std::slice::from_ref(&member.shard_table),
        )
        .await?;
        self.measure_target(&target).await?;
        self.set_status(Status::CreatingForeignKeys, cancel).await?;
        if !self.tuning.defer_reference_foreign_keys {
            reference::add_reference_foreign_keys(&target, &member.def).await?;
        }
        self.set_status(Status::Completing, cancel).await?;
        let mut coordinator = self.cluster.coordinator(&self.label).await?;
        let tx = coordinator.transaction().await?;
        model::insert_placement(&tx, member.shard_id, self.target.node_id).await?;
        model::delete_cleanup_records(&tx, self.operation_id, CleanupPolicy::OnFailure).await?;
        tx.commit().await?;
        self.switched = true;
        Ok(())
    }
}

/// Creates the foreign keys of a shard group's tables on `target` (where the group lives now),
/// pointing at the group's own shards or at reference tables. Keys that already exist are left
/// alone, so a transfer settled after a crash can run this again.
pub(crate) async fn create_group_foreign_keys(
    cluster: &Cluster,
    group: &ShardGroup,
    target: &Client,
) -> Result<(), TransferError> {
    let references: Vec<QualifiedName> = model::list_tables(cluster.client())
        .await?
        .into_iter()
        .filter(|t| t.kind == TableKind::Reference)
        .map(|t| t.name)
        .collect();
    for member in &group.members {
        for (constraint, fk) in member.def.foreign_keys() {
            let Some(referenced) = foreign_key_target(group, fk, &references) else {
                continue;
            };
            let name = shard_object_name(&constraint.name, member.shard_id);
            // ADD and VALIDATE run in one implicit transaction, so a key that exists is valid.
            let exists: bool = target
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_constraint
                                    WHERE conrelid = to_regclass($1) AND conname = $2)",
                    &[&member.shard_table.quoted(), &name],
                )
                .await
                .context(|| format!("looking for foreign key {name} on the target"))?
                .get(0);
            if exists {
                continue;
            }
            target
                .batch_execute(&format!(
                    "{} NOT VALID;\nALTER TABLE {} VALIDATE CONSTRAINT {}",
                    foreign_key_ddl(
                        &member.shard_table,
                        constraint,
                        fk,
                        &referenced,
                        Some(member.shard_id)
                    ),
                    member.shard_table.quoted(),
                    quote_ident(&name)
                ))
                .await
                .context(|| {
                    format!(
                        "creating foreign key {} on {}",
                        constraint.name, member.shard_table
                    )
                })?;
        }
    }
    Ok(())
}

/// The source position the target's subscription last confirmed (for progress displays).
pub(crate) async fn applied_lsn(
    target: &Client,
    subscription: &str,
) -> Result<Option<String>, TransferError> {
    Ok(target
        .query_opt(
            "SELECT latest_end_lsn::text FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
            &[&subscription],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Takes the shard group's exclusive lock and the colocation group's shared lock on the catalog
/// session. A previous transfer of the same group whose process died is settled first (see
/// [`crate::recover`]).
/// Whether this role may create and use replication origins on `node` (by default only a
/// superuser may).
async fn origins_allowed(cluster: &Cluster, node: &Node) -> Result<bool, TransferError> {
    let client = cluster
        .node_client(node, &format!("{} checking privileges", cluster.label()))
        .await?;
    Ok(client
        .query_one(
            "SELECT bool_and(has_function_privilege(f, 'EXECUTE')) FROM unnest(ARRAY[
                 'pg_replication_origin_create(text)', 'pg_replication_origin_drop(text)',
                 'pg_replication_origin_session_setup(text)',
                 'pg_replication_origin_session_reset()']) f",
            &[],
        )
        .await?
        .get(0))
}

async fn take_group_locks(
    cluster: &Cluster,
    group: &ShardGroup,
    shard_id: i64,
) -> Result<(), TransferError> {
    try_group_lock(cluster, group, shard_id).await?;
    if let Err(error) = settle_unfinished(cluster, group).await {
        unlock_group(cluster, group).await;
        return Err(error);
    }
    cluster
        .client()
        .execute(
            "SELECT pg_advisory_lock_shared($1)",
            &[&locks::colocation_key(group.colocation_id)],
        )
        .await?;
    Ok(())
}

async fn release_group_locks(cluster: &Cluster, group: &ShardGroup) {
    let client = cluster.client();
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&locks::shard_group_key(
                group.colocation_id,
                group.shard_index,
            )],
        )
        .await;
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock_shared($1)",
            &[&locks::colocation_key(group.colocation_id)],
        )
        .await;
}

/// Asks a running transfer to stop (it notices within a moment and cleans up after itself).
/// When the process running it has died, cleans up after it here.
pub async fn request_cancel(cluster: &Cluster, operation_id: i64) -> Result<(), TransferError> {
    let client = cluster.client();
    let updated = client
        .execute(
            "UPDATE shoal.transfer SET cancel_requested = true
             WHERE operation_id = $1 AND finished_at IS NULL",
            &[&operation_id],
        )
        .await?;
    if updated == 0 {
        return Err(TransferError::Refused(format!(
            "no running transfer has operation id {operation_id}; see shoal.rebalance_progress"
        )));
    }
    Ok(())
}
