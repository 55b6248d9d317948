//! Shard transfers: moving a shard group to another node (or copying a reference table to a
//! node that lacks it) while the application keeps writing through the coordinator.
//!
//! One engine serves moves and copies, in two modes:
//! - `force_logical`: empty target tables (primary key and replica identity only), a publication
//!   on the source and a subscription on the target that copies the rows and then streams every
//!   change; the other indexes and constraints once the copy is done; a catch-up; then the
//!   cutover: the shard's partitioned tables on the coordinator are locked (one shard group,
//!   nothing else), the source's WAL is flushed and its position recorded, the target confirms it
//!   has applied everything up to there, the coordinator's foreign tables are repointed at the
//!   target, and the catalog is updated, all in one coordinator transaction.
//! - `block_writes`: writes to the group wait (reads go on) while the rows are streamed with
//!   binary COPY, then the same switch.
//!
//! Every object the transfer creates is named by a cleanup record first; a failed or cancelled
//! transfer leaves the source authoritative and removes what it built. The source's shard tables
//! are removed once the move committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use shoal_catalog::CatalogError;
use shoal_cluster::{pg_message, ClusterError};

mod cutover;
mod engine;
pub mod failpoint;
mod group;
mod recover;
mod status;

pub use engine::{request_cancel, Transfer, TransferReport, TransferRequest, Tuning};
pub use group::{Member, ShardGroup};
pub use recover::{recover, Settled};
pub use status::{choose_mode, ChosenMode, Mode, Operation, Status};

#[derive(Debug, Error)]
pub enum TransferError {
    #[error("{0}")]
    Refused(String),
    #[error(
        "shard {shard_id} is already being transferred by operation {operation_id} ({status}); \
         wait for it, or cancel it with `shoal shard cancel {operation_id}`"
    )]
    Busy {
        shard_id: i64,
        operation_id: i64,
        status: String,
    },
    #[error(
        "the transfer was cancelled; the source placement stays in use and nothing was left behind"
    )]
    Cancelled,
    #[error("{0}")]
    Timeout(String),
    #[error("{context}: {message}")]
    Postgres { context: String, message: String },
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

impl From<tokio_postgres::Error> for TransferError {
    fn from(error: tokio_postgres::Error) -> Self {
        TransferError::Postgres {
            context: "query failed".into(),
            message: pg_message(&error),
        }
    }
}

pub(crate) trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, TransferError>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, TransferError> {
        self.map_err(|e| TransferError::Postgres {
            context: context(),
            message: pg_message(&e),
        })
    }
}

/// Set from another task (Ctrl-C) to stop a transfer at its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// After a move: the moved shards' new foreign tables on the coordinator get statistics (the
/// cutover made them without any; see `shoal_cluster::statistics`). Apart from the transfer, so
/// that the move's own time and locks do not include it; a failure leaves a warning only (the
/// next `shoal analyze` or pass of `shoal serve` retries). Returns the warnings.
pub async fn refresh_moved_statistics(
    cluster: &shoal_cluster::Cluster,
    report: &TransferReport,
) -> Vec<String> {
    if report.operation != Operation::Move {
        return Vec::new();
    }
    let scope = shoal_cluster::statistics::Scope::shards(report.shard_ids.clone());
    shoal_cluster::statistics::refresh_or_warnings(cluster, &scope).await
}

/// One row of `shoal.transfer`, for progress displays.
#[derive(Debug, Clone, Serialize)]
pub struct TransferState {
    pub operation_id: i64,
    pub status: String,
    pub error: Option<String>,
    pub bytes_total: Option<i64>,
    pub bytes_done: Option<i64>,
    pub waiting_for_pid: Option<i32>,
    pub write_block_ms: Option<f64>,
    pub finished: bool,
}

pub async fn transfer_state(
    client: &impl tokio_postgres::GenericClient,
    operation_id: i64,
) -> Result<Option<TransferState>, TransferError> {
    let row = client
        .query_opt(
            "SELECT status, error, bytes_total, bytes_done, waiting_for_pid, write_block_ms,
                    finished_at IS NOT NULL
             FROM shoal.transfer WHERE operation_id = $1",
            &[&operation_id],
        )
        .await?;
    Ok(row.map(|r| TransferState {
        operation_id,
        status: r.get(0),
        error: r.get(1),
        bytes_total: r.get(2),
        bytes_done: r.get(3),
        waiting_for_pid: r.get(4),
        write_block_ms: r.get(5),
        finished: r.get(6),
    }))
}
