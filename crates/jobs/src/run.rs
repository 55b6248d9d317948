//! Running one attempt of a task: the transfers and DDL its operation stands for.
//!
//! Every attempt starts from the catalog, never from what an earlier attempt remembered: it
//! first settles whatever an interrupted transfer of the same shard group left
//! ([`shoal_transfer::recover`]), then looks where the group is. A group already on its target
//! (the earlier attempt's cutover committed) makes the attempt done.

use tokio_postgres::GenericClient;

use crate::store::{set_task_operation, Outcome};
use shoal_catalog::model::{self, TableKind};
use shoal_catalog::ConnectParams;
use shoal_cluster::{reference, Cluster};
use shoal_ddl::definition::TableDef;
use shoal_rebalance::{Move, ReferenceCopy, TaskOp};
use shoal_transfer::{
    recover, CancelToken, Mode, Operation, Settled, Transfer, TransferError, TransferRequest,
    Tuning,
};

/// Runs one attempt of a task on a coordinator connection of its own, labelled with the job and
/// the task (and so are the transfers' connections to the nodes).
pub async fn run_task(
    params: ConnectParams,
    job_id: i64,
    task_id: i64,
    operation: TaskOp,
    mode: Mode,
    cancel: CancelToken,
) -> Outcome {
    let label = format!("shoal job={job_id} task={task_id}");
    let cluster = match Cluster::connect_labelled(params, &label).await {
        Ok(cluster) => cluster,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let runner = Runner {
        cluster: &cluster,
        task_id,
        cancel: &cancel,
    };
    let result = match &operation {
        TaskOp::Move(mv) => runner.move_group(mv, mode).await,
        TaskOp::CopyReferenceTable(copy) => runner.copy_reference(copy).await,
        TaskOp::CopyReferenceTables { copies } => {
            let mut notes = Vec::new();
            for copy in copies {
                match runner.copy_reference(copy).await {
                    Ok(note) => notes.push(note),
                    Err(error) => return outcome(Err(error), &cancel),
                }
            }
            let mut nodes: Vec<i32> = copies.iter().map(|c| c.node_id).collect();
            nodes.sort_unstable();
            nodes.dedup();
            runner
                .reference_foreign_keys(&nodes)
                .await
                .map(|keys| format!("{}; {keys}", notes.join("; ")))
        }
        TaskOp::CreateReferenceForeignKeys { nodes } => runner.reference_foreign_keys(nodes).await,
    };
    outcome(result, &cancel)
}

fn outcome(result: Result<String, TransferError>, cancel: &CancelToken) -> Outcome {
    match result {
        Ok(message) => Outcome::Done(message),
        Err(error @ TransferError::Busy { .. }) => Outcome::Busy(error.to_string()),
        Err(TransferError::Cancelled) if cancel.is_cancelled() => Outcome::Interrupted(
            "stopped; the transfer removed what it had built and the source stays in use"
                .to_string(),
        ),
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

struct Runner<'a> {
    cluster: &'a Cluster,
    task_id: i64,
    cancel: &'a CancelToken,
}

impl Runner<'_> {
    /// Where the shard is now, or `None` if it no longer exists.
    async fn placement(&self, shard_id: i64) -> Result<Vec<i32>, TransferError> {
        Ok(self
            .cluster
            .client()
            .query(
                "SELECT node_id FROM shoal.placement WHERE shard_id = $1 ORDER BY node_id",
                &[&shard_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Settles an interrupted transfer of the shard's group and says what it did.
    async fn settle(&self, shard_id: i64) -> Result<Option<String>, TransferError> {
        Ok(match recover(self.cluster, shard_id).await? {
            Settled::Nothing => None,
            Settled::RolledBack { operation_id } => Some(format!(
                "operation {operation_id} was interrupted before its switch and has been rolled back"
            )),
            Settled::Completed { operation_id } => Some(format!(
                "operation {operation_id} was interrupted after its switch and has been completed"
            )),
        })
    }

    async fn move_group(&self, mv: &Move, mode: Mode) -> Result<String, TransferError> {
        let exists: bool = self
            .cluster
            .client()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM shoal.shard WHERE shard_id = $1)",
                &[&mv.anchor_shard_id],
            )
            .await?
            .get(0);
        if !exists {
            return Ok(format!(
                "shard {} no longer exists (its table was undistributed); nothing to move",
                mv.anchor_shard_id
            ));
        }
        let settled = self.settle(mv.anchor_shard_id).await?;
        let with_note = |text: String| match &settled {
            Some(note) => format!("{note}; {text}"),
            None => text,
        };
        if self.placement(mv.anchor_shard_id).await? == [mv.to] {
            return Ok(with_note(format!("shard group is on node {}", mv.to)));
        }
        if self.cancel.is_cancelled() {
            return Err(TransferError::Cancelled);
        }
        let request = TransferRequest {
            shard_id: mv.anchor_shard_id,
            target: mv.to.to_string(),
            mode,
            operation: Operation::Move,
        };
        let transfer = Transfer::prepare(self.cluster, &request, Tuning::default()).await?;
        set_task_operation(self.cluster.client(), self.task_id, transfer.operation_id())
            .await
            .map_err(|e| TransferError::Refused(e.to_string()))?;
        let mut report = transfer.run(self.cancel.clone()).await?;
        let warnings = shoal_transfer::refresh_moved_statistics(self.cluster, &report).await;
        report.warnings.extend(warnings);
        let mut text = format!(
            "moved in {:.1} s by operation {} ({}), writes blocked {:.1} ms",
            report.elapsed_ms / 1000.0,
            report.operation_id,
            report.mode.as_str(),
            report.write_block_ms
        );
        for warning in &report.warnings {
            text.push_str("; warning: ");
            text.push_str(warning);
        }
        Ok(with_note(text))
    }

    /// Copies a reference table to a node, leaving its foreign keys to other reference tables
    /// for [`Runner::reference_foreign_keys`].
    async fn copy_reference(&self, copy: &ReferenceCopy) -> Result<String, TransferError> {
        let Some(row) = self
            .cluster
            .client()
            .query_opt(
                "SELECT s.shard_id FROM shoal.shard s JOIN shoal.distributed_table t USING (table_id)
                 WHERE t.table_id = $1 AND t.kind = 'reference' ORDER BY s.shard_index LIMIT 1",
                &[&copy.table_id],
            )
            .await?
        else {
            return Ok(format!(
                "table {} is no longer a reference table; nothing to copy",
                copy.table_id
            ));
        };
        let shard_id: i64 = row.get(0);
        let settled = self.settle(shard_id).await?;
        if self.placement(shard_id).await?.contains(&copy.node_id) {
            return Ok(format!(
                "{}reference table {} is on node {}",
                settled.map(|s| format!("{s}; ")).unwrap_or_default(),
                copy.table_id,
                copy.node_id
            ));
        }
        let request = TransferRequest {
            shard_id,
            target: copy.node_id.to_string(),
            mode: Mode::ForceLogical,
            operation: Operation::Copy,
        };
        let tuning = Tuning {
            defer_reference_foreign_keys: true,
            ..Tuning::default()
        };
        let transfer = Transfer::prepare(self.cluster, &request, tuning).await?;
        set_task_operation(self.cluster.client(), self.task_id, transfer.operation_id())
            .await
            .map_err(|e| TransferError::Refused(e.to_string()))?;
        let report = transfer.run(self.cancel.clone()).await?;
        Ok(format!(
            "copied reference table {} to node {} in {:.1} s",
            copy.table_id,
            copy.node_id,
            report.elapsed_ms / 1000.0
        ))
    }

    /// Creates, on each node, the foreign keys between the reference tables it holds.
    async fn reference_foreign_keys(&self, nodes: &[i32]) -> Result<String, TransferError> {
        let client = self.cluster.client();
        let tables: Vec<_> = model::list_tables(client)
            .await?
            .into_iter()
            .filter(|t| t.kind == TableKind::Reference)
            .collect();
        for node_id in nodes {
            let Some(node) = model::get_node(client, *node_id).await? else {
                continue;
            };
            let node_client = self
                .cluster
                .node_client(&node, &format!("{} foreign keys", self.cluster.label()))
                .await?;
            for table in &tables {
                let placed = model::placements_of_table(client, table.table_id)
                    .await?
                    .iter()
                    .any(|p| p.node_id == *node_id);
                if !placed {
                    continue;
                }
                let def = table_def(client, table.table_id, &table.name.to_string()).await?;
                reference::add_reference_foreign_keys(&node_client, &def).await?;
            }
        }
        Ok(format!(
            "foreign keys between reference tables on node(s) {}",
            nodes
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

async fn table_def(
    client: &impl GenericClient,
    table_id: i32,
    name: &str,
) -> Result<TableDef, TransferError> {
    serde_json::from_value(model::original_ddl(client, table_id).await?).map_err(|e| {
        TransferError::Refused(format!("the catalog's record of {name} is unreadable: {e}"))
    })
}
