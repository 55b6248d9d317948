//! Background jobs: a job is a graph of tasks stored in the catalog (`shoal.job`, `shoal.task`,
//! `shoal.task_dependency`), run by executors in `shoal serve` (or in a command that runs a job
//! in the foreground), and resumed by any executor after a crash. The rebalancer and the drain
//! of a node are the jobs there are today.
//!
//! # Pure core
//! - [`state`]: task and job states, and the job's state as a function of its tasks'.
//! - [`retry`]: the retry schedule of a failed task (5 s, 20 s, then every 60 s, up to a count).
//! - [`schedule`]: which runnable tasks start now, under a global and a per-node limit.
//! - [`progress`]: a job's bytes done and left, and the time it probably still needs.
//!
//! # Shell
//! - [`store`]: the catalog rows and every change of state, each in one transaction that locks
//!   the job's row first and guarded by the task's owner.
//! - `run`: one attempt of one task (transfers, reference table copies, foreign keys).
//! - [`executor`]: the loop that claims, runs, heartbeats, records and takes over.
//! - [`rebalance`]: planning from the catalog with a stored strategy, and starting the job.
//!
//! # Invariants
//! - A task runs in at most one process at a time: it is claimed by an `UPDATE ... WHERE state =
//!   'runnable'`, and taken over only when its owner is gone (the owner's life lock is free, or
//!   its heartbeat is older than the lease); the transfer it runs also holds the shard group's
//!   advisory lock, so even a daemon that hangs past its lease cannot move a group twice.
//! - An attempt starts from the catalog alone: it settles an interrupted transfer of its shard
//!   group from the transfer's row and cleanup records, and counts a group already on its target
//!   as done.
//! - A job's state is always the function [`state::job_state`] of its tasks' states, written in
//!   the transaction that changed them.

mod error;
pub mod executor;
pub mod progress;
pub mod rebalance;
pub mod retry;
mod run;
pub mod schedule;
pub mod state;
pub mod store;

pub use error::JobError;
pub use executor::{run_executor, ExecutorConfig, DEFAULT_LEASE};
pub use retry::RetryPolicy;
pub use schedule::{Limits, DEFAULT_LIMITS};
pub use state::{JobState, TaskState};
pub use store::{DaemonKind, Job, JobKind, JobOptions, JobStatus, Outcome, Task};
