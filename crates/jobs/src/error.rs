use thiserror::Error;

use shoal_catalog::CatalogError;
use shoal_cluster::{pg_message, ClusterError};
use shoal_rebalance::PlanError;
use shoal_transfer::TransferError;

/// Errors of jobs and of the rebalancer's commands. Each says what to do next.
#[derive(Debug, Error)]
pub enum JobError {
    #[error(
        "job {job_id} ({kind}) is still {state}; follow it with `shoal rebalance wait`, or stop \
         it with `shoal rebalance stop`"
    )]
    AlreadyRunning {
        job_id: i64,
        kind: String,
        state: String,
    },
    #[error("no job {0} exists; see `shoal job list`")]
    UnknownJob(i64),
    #[error("no rebalance or drain job has run yet; start one with `shoal rebalance start`")]
    NoRebalanceJob,
    #[error("no rebalance strategy is called {name}; the strategies are: {available}")]
    UnknownStrategy { name: String, available: String },
    #[error("rebalance strategy {name} is unreadable: {reason}; fix its row in shoal.rebalance_strategy")]
    BadStrategy { name: String, reason: String },
    #[error("the catalog's record of {what} is unreadable: {reason}")]
    BadCatalog { what: String, reason: String },
    #[error("cannot plan: {0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Transfer(#[from] TransferError),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{context}: {message}")]
    Postgres { context: String, message: String },
}

impl From<tokio_postgres::Error> for JobError {
    fn from(error: tokio_postgres::Error) -> Self {
        JobError::Postgres {
            context: "query failed".into(),
            message: pg_message(&error),
        }
    }
}
